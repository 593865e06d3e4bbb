// Compiled by `tsc --noEmit` only: the public surface, used as a frontend would.
import { connect, decodeFrame, DeltaDecoder, type FrameDetail, type State } from "../src/index.js";

const client = connect("wss://atom.example/ws/swarm", { session: "v1.token", fps: 30 });
const stop = client.on("frame", ({ seq, t, positions }: FrameDetail) => {
  const x: number = positions[0] + seq + t;
  void x;
});
client.on("state", ({ state, reason }) => {
  const s: State = state;
  console.log(s, reason.length);
});
client.on("hello", (hello) => console.log(hello.spheres.map((s) => s.color), hello.roster[0]?.status));
client.on("event", (event) => console.log(event.event));
const positions: Float32Array = client.interpolate();
const later: Float32Array = client.interpolate(client.serverNow() + 0.1, 0.05);
const decoder = new DeltaDecoder();
const frame = decodeFrame(new ArrayBuffer(16), decoder);
console.log(positions.length, later.length, frame.seq, client.stats.bytes, client.hello?.fps);
stop();
client.close();
