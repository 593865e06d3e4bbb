// The wire format of L'Essaim (CONTRACT.md §4 and §4.1): standalone decoders, no I/O.
//
// Every binary message starts with a 16-byte little-endian header:
//   u8 version = 1 | u8 encoding (1 f32, 2 q16, 3 delta, 4 keyframe) | u16 N | u32 seq | f64 t
// then f32: N×3 float32; q16: N×3 int16 (coord = q × Q16_RANGE / 32767); keyframe: N×3 int16 of
// this frame, then N×3 int16 of the frame before it; delta: u8 w, then 3N w-bit integers packed
// least-significant bit first, each zigzag(q − (2·prev − prev2)).
//
// These decoders are the project's only JavaScript decoders: the SDK's client and the viewer
// page both use them.

export const VERSION = 1;
export const HEADER_BYTES = 16;
export const ENCODING_IDS = Object.freeze({ f32: 1, q16: 2, delta: 3, keyframe: 4 });
export const Q16_RANGE = 64;
export const Q16_MAX = 32767;
export const MAX_DELTA_BITS = 18;
// q × SCALE in double is exact (16 × 24 bits), so rounding it to float32 gives what numpy's
// float32 multiply gives: the same coordinates as the Python decoder, to the bit.
const SCALE = Math.fround(Q16_RANGE / Q16_MAX);

/** Raised for a message that cannot be decoded; `message` says what is wrong. */
export class FrameError extends Error {
  constructor(message) {
    super(message);
    this.name = "FrameError";
  }
}

function bytesOf(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new FrameError(`a binary frame must be an ArrayBuffer or a typed array, not ${typeof data}`);
}

/** The 16-byte header: {version, encoding, n, seq, t}. Throws FrameError when too short or unknown. */
export function decodeHeader(data) {
  const bytes = bytesOf(data);
  if (bytes.byteLength < HEADER_BYTES) {
    throw new FrameError(`frame of ${bytes.byteLength} bytes is shorter than its ${HEADER_BYTES}-byte header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const version = view.getUint8(0);
  const encoding = view.getUint8(1);
  if (version !== VERSION || encoding < 1 || encoding > 4) {
    throw new FrameError(`unknown frame version ${version} / encoding ${encoding}`);
  }
  return { version, encoding, n: view.getUint16(2, true), seq: view.getUint32(4, true), t: view.getFloat64(8, true) };
}

function expectLength(bytes, expected, kind, n) {
  if (bytes.byteLength !== expected) {
    throw new FrameError(`${kind} of ${bytes.byteLength} bytes, expected ${expected} for ${n} agents`);
  }
}

// Typed-array views need aligned offsets; a message inside a larger buffer may not be aligned.
function int16s(bytes, offset, count) {
  const start = bytes.byteOffset + offset;
  if (start % 2 === 0) return new Int16Array(bytes.buffer, start, count);
  return new Int16Array(bytes.slice(offset, offset + count * 2).buffer);
}

/** Coordinates (float32) of q16 integers, into `out` if given. */
export function dequantize(q, out = new Float32Array(q.length)) {
  for (let i = 0; i < q.length; i++) out[i] = q[i] * SCALE;
  return out;
}

/** An f32 frame: {seq, t, n, positions: Float32Array of N×3}. */
export function decodeF32(data) {
  const bytes = bytesOf(data);
  const h = decodeHeader(bytes);
  if (h.encoding !== ENCODING_IDS.f32) throw new FrameError(`encoding ${h.encoding} is not f32 (1)`);
  expectLength(bytes, HEADER_BYTES + h.n * 12, "f32 frame", h.n);
  const start = bytes.byteOffset + HEADER_BYTES;
  const positions = start % 4 === 0
    ? new Float32Array(bytes.buffer, start, h.n * 3).slice()
    : new Float32Array(bytes.slice(HEADER_BYTES).buffer);
  return { seq: h.seq, t: h.t, n: h.n, positions };
}

/** A q16 frame: {seq, t, n, q: Int16Array, positions: Float32Array}. */
export function decodeQ16(data) {
  const bytes = bytesOf(data);
  const h = decodeHeader(bytes);
  if (h.encoding !== ENCODING_IDS.q16) throw new FrameError(`encoding ${h.encoding} is not q16 (2)`);
  expectLength(bytes, HEADER_BYTES + h.n * 6, "q16 frame", h.n);
  const q = int16s(bytes, HEADER_BYTES, h.n * 3).slice();
  return { seq: h.seq, t: h.t, n: h.n, q, positions: dequantize(q) };
}

/** A keyframe alone: {seq, t, n, q, before, positions}; `before` is what a client's prev2 becomes. */
export function decodeKeyframe(data) {
  const bytes = bytesOf(data);
  const h = decodeHeader(bytes);
  if (h.encoding !== ENCODING_IDS.keyframe) throw new FrameError(`encoding ${h.encoding} is not a keyframe (4)`);
  expectLength(bytes, HEADER_BYTES + h.n * 12, "keyframe", h.n);
  const both = int16s(bytes, HEADER_BYTES, h.n * 6);
  const q = both.slice(0, h.n * 3);
  return { seq: h.seq, t: h.t, n: h.n, q, before: both.slice(h.n * 3), positions: dequantize(q) };
}

/** A JSON frame (text, or its parsed object): {seq, t, n, positions: Float32Array}. */
export function decodeJson(message) {
  let frame = message;
  if (typeof message === "string") {
    try {
      frame = JSON.parse(message);
    } catch (err) {
      throw new FrameError(`a JSON frame that is not JSON: ${err.message}`);
    }
  }
  if (!frame || frame.type !== "frame" || !Array.isArray(frame.positions)) {
    throw new FrameError("not a JSON frame: expected {type: 'frame', seq, t, positions}");
  }
  const n = frame.positions.length;
  const positions = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    const p = frame.positions[i];
    if (!Array.isArray(p) || p.length !== 3) throw new FrameError(`JSON frame: position ${i} is not [x, y, z]`);
    positions[3 * i] = p[0];
    positions[3 * i + 1] = p[1];
    positions[3 * i + 2] = p[2];
  }
  return { seq: frame.seq, t: frame.t, n, positions };
}

/**
 * A client's side of one delta stream (§4.1): keeps `prev` and `prev2` (Int16Array) and decodes
 * keyframes and delta frames in order. `decode` returns {seq, t, n, q, keyframe}; `q` is this
 * decoder's own array (valid until the next decode: copy it to keep it). A message that cannot be
 * decoded throws FrameError and leaves the chain as it was.
 */
export class DeltaDecoder {
  constructor() {
    this.prev = null;
    this.prev2 = null;
    this.keyframes = 0;
  }

  reset() {
    this.prev = null;
    this.prev2 = null;
  }

  decode(data) {
    const bytes = bytesOf(data);
    const h = decodeHeader(bytes);
    const n3 = h.n * 3;
    if (h.encoding === ENCODING_IDS.keyframe) {
      expectLength(bytes, HEADER_BYTES + h.n * 12, "keyframe", h.n);
      const both = int16s(bytes, HEADER_BYTES, n3 * 2);
      this.prev = both.slice(0, n3);
      this.prev2 = both.slice(n3);
      this.keyframes += 1;
      return { seq: h.seq, t: h.t, n: h.n, q: this.prev, keyframe: true };
    }
    if (h.encoding !== ENCODING_IDS.delta) {
      throw new FrameError(`encoding ${h.encoding} in a delta stream: expected 3 (delta) or 4 (keyframe)`);
    }
    if (bytes.byteLength < HEADER_BYTES + 1) throw new FrameError(`delta frame of ${bytes.byteLength} bytes has no w byte`);
    const w = bytes[HEADER_BYTES];
    if (w > MAX_DELTA_BITS) throw new FrameError(`delta frame with w = ${w}: at most ${MAX_DELTA_BITS} bits a value`);
    expectLength(bytes, HEADER_BYTES + 1 + Math.ceil((n3 * w) / 8), `delta frame (w = ${w})`, h.n);
    const prev = this.prev, prev2 = this.prev2;
    if (prev === null || prev2 === null) throw new FrameError("delta frame before any keyframe: nothing to add it to");
    if (prev.length !== n3) throw new FrameError(`delta frame for ${h.n} agents after a keyframe of ${prev.length / 3}`);
    // First into a scratch array, so that a bad frame leaves the chain intact.
    const next = this._scratch && this._scratch.length === n3 ? this._scratch : new Int16Array(n3);
    const mask = w === 0 ? 0 : (1 << w) - 1;
    let acc = 0, bits = 0, at = HEADER_BYTES + 1, bad = false;
    for (let i = 0; i < n3; i++) {
      while (bits < w) {            // at most 17 + 8 bits held: fits a 32-bit integer
        acc |= bytes[at++] << bits;
        bits += 8;
      }
      const u = acc & mask;
      acc >>>= w;
      bits -= w;
      const q = 2 * prev[i] - prev2[i] + ((u >>> 1) ^ -(u & 1));
      if (q > Q16_MAX || q < -Q16_MAX) bad = true;
      next[i] = q;
    }
    if (bad) throw new FrameError("delta frame decodes outside the q16 range: wrong chain or corrupt data");
    this._scratch = prev2;          // the oldest array is free again
    this.prev2 = prev;
    this.prev = next;
    return { seq: h.seq, t: h.t, n: h.n, q: next, keyframe: false };
  }
}

/**
 * Any message of a stream, by its kind: binary (f32, q16, keyframe, delta through `delta`, a
 * DeltaDecoder) or a JSON frame's text. Returns {seq, t, n, positions: Float32Array, q?} with
 * positions written into `out` when given (and of the right length).
 */
export function decodeFrame(data, delta = null, out = null) {
  if (typeof data === "string") return decodeJson(data);
  const h = decodeHeader(data);
  if (h.encoding === ENCODING_IDS.f32) return decodeF32(data);
  if (h.encoding === ENCODING_IDS.q16) return decodeQ16(data);
  if (delta === null) {
    if (h.encoding === ENCODING_IDS.keyframe) return decodeKeyframe(data);
    throw new FrameError("a delta frame cannot be decoded alone: give the stream's DeltaDecoder");
  }
  const frame = delta.decode(data);
  const positions = out !== null && out.length === frame.q.length ? out : new Float32Array(frame.q.length);
  return { seq: frame.seq, t: frame.t, n: frame.n, q: frame.q, keyframe: frame.keyframe, positions: dequantize(frame.q, positions) };
}
