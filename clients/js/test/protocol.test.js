// The decoders on hand-made messages (no server): layouts bit for bit, and malformed input.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DeltaDecoder, FrameError, backoffDelay, decodeF32, decodeFrame, decodeHeader, decodeJson,
  decodeKeyframe, decodeQ16, interpolateFrames,
} from "../src/index.js";

function header(encoding, n, seq, t, extra) {
  const bytes = new Uint8Array(16 + extra);
  const view = new DataView(bytes.buffer);
  view.setUint8(0, 1);
  view.setUint8(1, encoding);
  view.setUint16(2, n, true);
  view.setUint32(4, seq, true);
  view.setFloat64(8, t, true);
  return bytes;
}

function keyframe(seq, q, before) {
  const bytes = header(4, q.length / 3, seq, 1.5, q.length * 4);
  new Int16Array(bytes.buffer, 16, q.length).set(q);
  new Int16Array(bytes.buffer, 16 + q.length * 2, q.length).set(before);
  return bytes;
}

// CONTRACT §4.1 written out bit by bit: zigzag, w bits a value, least-significant bit first.
function delta(seq, q, prev, prev2) {
  const values = Array.from(q, (v, i) => {
    const r = v - (2 * prev[i] - prev2[i]);
    return r >= 0 ? 2 * r : -2 * r - 1;
  });
  const w = Math.max(0, ...values.map((v) => (v === 0 ? 0 : Math.floor(Math.log2(v)) + 1)));
  const bytes = header(3, q.length / 3, seq, 2.5, 1 + Math.ceil((values.length * w) / 8));
  bytes[16] = w;
  let bit = 0;
  for (const value of values) {
    for (let k = 0; k < w; k++, bit++) if ((value >> k) & 1) bytes[17 + (bit >> 3)] |= 1 << (bit & 7);
  }
  return bytes;
}

function walk(frames, n, seed = 1) {
  let state = seed;
  const random = () => ((state = (state * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const q = Array.from({ length: n * 3 }, () => Math.round(random() * 40000 - 20000));
  const v = q.map(() => 0);
  const out = [];
  for (let k = 0; k < frames; k++) {
    for (let i = 0; i < q.length; i++) {
      v[i] += Math.round(random() * 80 - 40);
      q[i] = Math.max(-32767, Math.min(32767, q[i] + v[i]));
    }
    out.push(Int16Array.from(q));
  }
  return out;
}

test("a keyframe then deltas decode to the very integers encoded", () => {
  const frames = walk(30, 350);
  const decoder = new DeltaDecoder();
  let got = decoder.decode(keyframe(0, frames[1], frames[0]));
  assert.deepEqual(got.q, frames[1]);
  assert.equal(got.keyframe, true);
  for (let k = 2; k < frames.length; k++) {
    got = decoder.decode(delta(k, frames[k], frames[k - 1], frames[k - 2]));
    assert.deepEqual(got.q, frames[k], `frame ${k}`);
    assert.equal(got.seq, k);
  }
  assert.equal(decoder.keyframes, 1);
});

test("the extremes of the q16 range need 18 bits and decode", () => {
  const a = new Int16Array(6).fill(32767), b = new Int16Array(6).fill(-32767);
  const decoder = new DeltaDecoder();
  decoder.decode(keyframe(0, b, a));
  const message = delta(1, a, b, a);
  assert.equal(message[16], 18);
  assert.deepEqual(decoder.decode(message).q, a);
});

test("a still swarm costs one byte a frame", () => {
  const q = walk(1, 4)[0];
  const decoder = new DeltaDecoder();
  decoder.decode(keyframe(0, q, q));
  const message = delta(1, q, q, q);
  assert.equal(message.byteLength, 17);
  assert.deepEqual(decoder.decode(message).q, q);
});

test("f32, q16, keyframe and JSON frames decode alone", () => {
  const f32 = header(1, 2, 7, 3.25, 24);
  new Float32Array(f32.buffer, 16, 6).set([1, 2, 3, -4, 5.5, 6]);
  assert.deepEqual(Array.from(decodeF32(f32).positions), [1, 2, 3, -4, 5.5, 6]);
  assert.deepEqual(decodeHeader(f32), { version: 1, encoding: 1, n: 2, seq: 7, t: 3.25 });
  const q16 = header(2, 1, 8, 0, 6);
  new Int16Array(q16.buffer, 16, 3).set([32767, -32767, 0]);
  assert.deepEqual(Array.from(decodeQ16(q16).positions), [64, -64, 0]);
  const key = decodeKeyframe(keyframe(9, Int16Array.of(1, 2, 3), Int16Array.of(4, 5, 6)));
  assert.deepEqual([...key.q, ...key.before], [1, 2, 3, 4, 5, 6]);
  const json = decodeJson('{"type":"frame","seq":3,"t":1.5,"positions":[[1,2,3],[4,5,6]]}');
  assert.equal(json.n, 2);
  assert.deepEqual(Array.from(json.positions), [1, 2, 3, 4, 5, 6]);
  // One message inside a bigger buffer, at an odd offset: still decoded.
  const padded = new Uint8Array(q16.byteLength + 1);
  padded.set(q16, 1);
  assert.deepEqual(Array.from(decodeFrame(padded.subarray(1)).positions), [64, -64, 0]);
});

test("malformed input throws a FrameError that says what is wrong", () => {
  const [q0, q1, q2] = walk(3, 4);
  const good = delta(2, q2, q1, q0);
  const cases = [
    [good.slice(0, 10), /shorter than its 16-byte header/],
    [good.slice(0, 16), /has no w byte/],
    [good.slice(0, -1), /expected/],
    [Uint8Array.from([...good, 0]), /expected/],
    [Uint8Array.from(good, (b, i) => (i === 16 ? 19 : b)), /at most 18 bits/],
    [Uint8Array.from(good, (b, i) => (i === 1 ? 7 : b)), /unknown frame version 1 \/ encoding 7/],
    [Uint8Array.from(good, (b, i) => (i === 0 ? 2 : b)), /unknown frame version 2/],
    [Uint8Array.from(good, (b, i) => (i === 1 ? 2 : b)), /encoding 2 in a delta stream/],
    [keyframe(0, q1, q0).slice(0, -2), /keyframe of/],
  ];
  const decoder = new DeltaDecoder();
  decoder.decode(keyframe(1, q1, q0));
  for (const [message, reason] of cases) {
    assert.throws(() => decoder.decode(message), (err) => err instanceof FrameError && reason.test(err.message), String(reason));
  }
  assert.deepEqual(decoder.decode(good).q, q2, "the chain survived the bad messages");
  assert.throws(() => new DeltaDecoder().decode(good), /before any keyframe/);
  assert.throws(() => decodeFrame(good), /cannot be decoded alone/);
  assert.throws(() => decodeJson("{nope"), FrameError);
  assert.throws(() => decodeJson('{"type":"frame","positions":[[1,2]]}'), /position 0/);
});

test("backoff: full jitter under a ceiling doubling from 0.5 s to 10 s", () => {
  const ceilings = [0, 1, 2, 3, 4, 5, 6, 30, 1000].map((a) => backoffDelay(a, undefined, () => 0.999999));
  assert.deepEqual(ceilings.map((c) => Math.round(c)), [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000]);
  assert.equal(backoffDelay(3, undefined, () => 0), 0);
  assert.equal(backoffDelay(1, { initialMs: 100, maxMs: 150 }, () => 0.5), 75);
});

test("interpolation is linear between frames and clamps at both ends", () => {
  const history = [
    { t: 10, positions: Float32Array.of(0, 0, 0) },
    { t: 10.05, positions: Float32Array.of(1, 2, -4) },
    { t: 10.1, positions: Float32Array.of(3, 2, -4) },
  ];
  const at = (t) => Array.from(interpolateFrames(history, t)).map((v) => Math.round(v * 1000) / 1000);
  assert.deepEqual(at(10.025), [0.5, 1, -2]);
  assert.deepEqual(at(10.075), [2, 2, -4]);
  assert.deepEqual(at(9), [0, 0, 0]);
  assert.deepEqual(at(11), [3, 2, -4]);
  assert.equal(interpolateFrames([], 1), null);
});
