// Compiled by `tsc --noEmit` only: the public surface, used as a frontend would.
import {
  ApiError, connect, decodeFrame, DeltaDecoder, openSession, operator,
  type AgentStatus, type FrameDetail, type State, type SwarmEvent,
} from "../src/index.js";

const sceau = await openSession("http://127.0.0.1:8000", { durationMs: 2000 });
const client = connect("wss://atom.example/ws/swarm", { session: sceau, fps: 30 });
connect("wss://atom.example/ws/swarm", { session: sceau.session, api: sceau.api });
const stop = client.on("frame", ({ seq, t, positions }: FrameDetail) => {
  const x: number = positions[0] + seq + t;
  void x;
});
client.on("state", ({ state, reason, code }) => {
  const s: State = state;
  if (code === "origin_not_allowed") console.log("set CORS_ORIGINS");
  console.log(s, reason.length);
});
client.on("hello", (hello) => console.log(hello.spheres.map((s) => s.color), hello.roster[0]?.status));
// The events are a discriminated union: each name narrows to its own fields.
function describe(event: SwarmEvent): string {
  switch (event.event) {
    case "agent.status": { const s: AgentStatus = event.status; return `${event.agent} ${s}`; }
    case "agent.frequency": return `${event.agent} ${event.frequency.toFixed(1)} Hz`;
    case "swarm.dispersal": return `${event.level} ${event.sphere ?? "all"} ${event.count}`;
    case "swarm.regroup": return `${event.count} home (${event.command_id})`;
    case "safeguard": return `${event.state} ${event.reason} ${event.at}`;
  }
}
client.on("event", (event) => console.log(describe(event)));
// @ts-expect-error a status is one of three words, not any string
const wrong: AgentStatus = "sleeping";
void wrong;
const positions: Float32Array = client.interpolate();
const later: Float32Array = client.interpolate(client.serverNow() + 0.1, 0.05);
const decoder = new DeltaDecoder();
const frame = decodeFrame(new ArrayBuffer(16), decoder);
console.log(positions.length, later.length, frame.seq, client.stats.bytes, client.hello?.fps);

const ops = operator("http://127.0.0.1:8000", "token");
try {
  const done = await ops.disperse("partial", { sphere: "transport", idempotencyKey: "k1" });
  const n: number = done.dispersed;
  const agent = await ops.retune(3, 440);
  console.log(n, agent.position.x, (await ops.regroup()).regrouped, (await ops.audit({ limit: 10 })).chain.verified);
  const reset = await ops.reset();
  console.log(reset.state, reset.approvals ?? 0);
} catch (error) {
  if (error instanceof ApiError && error.code === "brise_circuit_open") console.log(error.retryAfter ?? 1);
}
stop();
client.close();
