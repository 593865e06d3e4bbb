// The SDK against a real `atom serve` (started here on free ports): every encoding decoded, a
// keyframe after the server dropped frames, interpolation of a 20 fps stream against 60 fps truth.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import WebSocket from "ws";

import { DeltaDecoder, Q16_RANGE, connect, decodeFrame, decodeQ16 } from "../src/index.js";
import { next, startAtom, until } from "./atom.js";

let atom;
before(async () => {
  // Stalled subscribers are not cut off during the drop test; sessions are not needed here.
  atom = await startAtom({ WS_REQUIRE_SESSION: "false", WS_STALL_TIMEOUT_S: "120" });
});
after(async () => { await atom.stop(); });

/** A plain `ws` subscriber keeping every q16 frame by seq: the truth the others must match. */
async function q16Truth(fps = 60) {
  const frames = new Map();
  const ws = new WebSocket(`${atom.ws}?encoding=q16&fps=${fps}`);
  ws.binaryType = "arraybuffer";
  ws.on("message", (data, isBinary) => {
    if (!isBinary) return;
    const frame = decodeQ16(data);
    frames.set(frame.seq, frame);
  });
  await new Promise((ok, fail) => { ws.once("open", ok); ws.once("error", fail); });
  return { frames, close: () => ws.close() };
}

function sameInts(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

test("every encoding decodes, and delta equals q16 bit for bit", async () => {
  const truth = await q16Truth();
  const got = { f32: new Map(), json: new Map(), delta: new Map() };
  const clients = Object.keys(got).map((encoding) => {
    const client = connect(atom.ws, { encoding, WebSocket });
    const decoder = new DeltaDecoder();
    // The delta stream checked twice: through the client, and through a decoder of our own fed
    // the same raw messages (the standalone decoder on its own).
    client.on("hello", () => {
      assert.equal(client.hello.encoding, encoding);
      client.socket.addEventListener("message", (m) => {
        if (encoding === "delta" && typeof m.data !== "string") got.delta.set(new DataView(m.data).getUint32(4, true), Int16Array.from(decoder.decode(m.data).q));
      });
    });
    client.on("frame", ({ seq, positions }) => { if (encoding !== "delta") got[encoding].set(seq, Float32Array.from(positions)); });
    return client;
  });
  const deltaClient = clients[2];
  const viaClient = new Map();
  deltaClient.on("frame", ({ seq, positions }) => viaClient.set(seq, Float32Array.from(positions)));
  await until(() => Object.values(got).every((m) => m.size >= 90) && viaClient.size >= 90, 20_000, "90 frames of each");
  for (const client of clients) client.close();
  truth.close();

  assert.equal(deltaClient.stats.keyframes, 1, "one keyframe, then deltas");
  assert.ok(deltaClient.stats.bytes / deltaClient.stats.frames < 1200, `mean ${deltaClient.stats.bytes / deltaClient.stats.frames} B a frame`);
  let compared = 0;
  for (const [seq, q] of got.delta) {
    const exact = truth.frames.get(seq);
    if (!exact) continue;
    assert.ok(sameInts(q, exact.q), `delta frame ${seq} differs from q16`);
    assert.ok(sameInts(viaClient.get(seq), exact.positions), `the client's positions of ${seq} differ`);
    compared++;
  }
  assert.ok(compared >= 80, `compared ${compared}`);
  const step = Q16_RANGE / 32767;
  for (const [seq, f32] of got.f32) {
    const exact = truth.frames.get(seq);
    if (!exact) continue;
    for (let i = 0; i < f32.length; i++) assert.ok(Math.abs(f32[i] - exact.positions[i]) <= step, `f32 ${seq}`);
    const json = got.json.get(seq);
    if (json) for (let i = 0; i < f32.length; i++) assert.ok(Math.abs(json[i] - f32[i]) <= 1e-4 + 1e-6, `json ${seq}`);
  }
});

test("a subscriber whose frames were dropped gets a keyframe and decodes on exactly", async () => {
  const truth = await q16Truth();
  const client = connect(atom.ws, { WebSocket });
  await next(client, "hello");
  await next(client, "frame");
  // Stop reading (the `ws` package's own socket: test-only) until the server's buffers are full
  // and it has replaced a queued frame: its /metrics counts the drop.
  const dropped = async () => {
    const response = await fetch(`${atom.api}/metrics`);
    const match = /^atom_frames_dropped_total (\S+)$/m.exec(await response.text());
    return match ? Number(match[1]) : 0;
  };
  const before = await dropped();
  client.socket._socket.pause();
  // A total dispersal makes the deltas bigger, so the buffers fill sooner.
  const token = atom.operatorToken;   // a command is an operator's, not a viewer's
  await atom.request("POST", "/api/v1/swarm/disperse", { token, body: { level: "total" } });
  await until(async () => (await dropped()) > before, 60_000, "the server to drop a frame");
  const frames = [];
  client.on("frame", ({ seq, positions, keyframe }) => frames.push({ seq, keyframe, positions: Float32Array.from(positions) }));
  client.socket._socket.resume();
  await until(() => frames.some((f) => f.keyframe) && frames.length > 30 + frames.findIndex((f) => f.keyframe), 20_000, "a keyframe and frames after it");
  client.close();
  truth.close();
  assert.equal(client.state, "closed");
  assert.ok(client.stats.keyframes >= 2, "the first keyframe, and one after the drop");
  const gaps = frames.slice(1).map((f, i) => (f.seq - frames[i].seq) >>> 0);
  assert.ok(Math.max(...gaps) > 1, "frames were skipped");
  let compared = 0;
  for (const frame of frames) {
    const exact = truth.frames.get(frame.seq);
    if (!exact) continue;
    assert.ok(sameInts(frame.positions, exact.positions), `frame ${frame.seq} after the drop differs from q16`);
    compared++;
  }
  assert.ok(compared >= 30, `compared ${compared}`);
  await atom.request("POST", "/api/v1/swarm/regroup", { token });
});

test("interpolating a 20 fps stream stays within 1 % of the swarm's radius of the 60 fps truth", async () => {
  const truth = await q16Truth();
  const slow = connect(atom.ws, { fps: 20, WebSocket });
  const hello = await next(slow, "hello");
  assert.equal(hello.fps, 20);
  assert.ok(Math.abs(slow.delay - 2.5 / 20) < 1e-9, "the default delay: 2.5 frame intervals");
  const errors = [];
  let radius = 0;
  let previousT = null;
  slow.on("frame", ({ t }) => {
    // Now the client holds the frames either side of every truth frame since its previous one:
    // ask it for each of them, as a renderer at 60 fps would (render time = t + delay).
    if (previousT !== null) {
      for (const exact of truth.frames.values()) {
        if (exact.t <= previousT || exact.t >= t) continue;
        const p = slow.interpolate(exact.t + slow.delay);
        const center = [0, 1, 2].map((c) => exact.positions.reduce((s, v, i) => (i % 3 === c ? s + v : s), 0) / exact.n);
        let r2 = 0, err = 0;
        for (let i = 0; i < exact.n; i++) {
          const d = [0, 1, 2].map((c) => exact.positions[3 * i + c] - center[c]);
          r2 += d[0] ** 2 + d[1] ** 2 + d[2] ** 2;
          err += Math.hypot(p[3 * i] - exact.positions[3 * i], p[3 * i + 1] - exact.positions[3 * i + 1], p[3 * i + 2] - exact.positions[3 * i + 2]);
        }
        radius = Math.max(radius, Math.sqrt(r2 / exact.n));
        errors.push(err / exact.n);
      }
    }
    previousT = t;
  });
  await until(() => errors.length >= 120, 20_000, "120 interpolated truth frames");
  slow.close();
  truth.close();
  const mean = errors.reduce((a, b) => a + b, 0) / errors.length;
  const worst = Math.max(...errors);
  console.log(`# interpolation at 20 fps: mean error ${mean.toFixed(4)}, worst frame ${worst.toFixed(4)}, swarm radius ${radius.toFixed(2)} (world units)`);
  assert.ok(radius > 5, `radius ${radius}`);
  assert.ok(mean < 0.01 * radius, `mean error ${mean} >= 1 % of ${radius}`);
  // (The worst single frame is not held to it: a frame's server time is when it was composed,
  // and on a busy machine that lags its positions' deadline by up to a tick or two, which at a
  // dispersal's speed is a visible error of the stamp, not of the interpolation.)
});
