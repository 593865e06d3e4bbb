"""The wire format of L'Essaim (CONTRACT.md §4 and §4.1), as pure functions: no I/O, no clock.

A binary message is a 16-byte little-endian header followed by its payload::

    offset  type  field
    0       u8    version = 1
    1       u8    encoding: 1 = f32, 2 = q16, 3 = delta, 4 = keyframe (ENCODING_IDS)
    2       u16   agent count N
    4       u32   frame sequence number (+1 per tick, wraps)
    8       f64   server time, Unix seconds, when the frame was composed
    16      ...   f32, q16: x, y, z per agent in agent-id order (f32, or
                  i16 = round(coord / Q16_RANGE × 32767));
                  keyframe: N × 3 i16 of this frame, then N × 3 i16 of the frame before it;
                  delta: u8 w, then 3N w-bit integers packed least-significant bit first,
                  zigzag(q − (2·prev − prev2)) for each coordinate.

A :class:`Frame` is composed once per tick and encoded to f32 at once; its q16 integers, the q16
and JSON encodings are made lazily, at most once per frame, and only if some subscriber asks.
The delta encoding belongs to a stream rather than to a frame (it depends on the frames sent
before): :class:`DeltaStream` is the server's side, made once per tick for every subscriber of a
group, and :class:`DeltaDecoder` the client's (``atom watch``, the tests).

Where a frame's keyframe comes from: the second block of a keyframe is the frame the *stream* sent
before it (or the frame itself when there is none), so that a subscriber that resets on it
decodes the stream's very next delta, shared with everyone else: a newcomer, or a subscriber the
newest-wins rule made skip a frame, rejoins the common bytes after a single keyframe.
"""

from __future__ import annotations

import json
import struct
from typing import Final, Literal, get_args

import numpy as np

from .errors import MalformedFrame

VERSION: Final = 1
HEADER: Final = struct.Struct("<BBHId")
# What a subscriber may ask for (``?encoding=``); ``delta`` streams keyframes and delta frames.
Encoding = Literal["f32", "q16", "json", "delta"]
ENCODINGS: Final[tuple[Encoding, ...]] = get_args(Encoding)
# The u8 at offset 1 of every binary message.
ENCODING_IDS: Final = {"f32": 1, "q16": 2, "delta": 3, "keyframe": 4}
# Every coordinate the engine produces stays inside ±Q16_RANGE (centres within 20, orbits within
# 6, dispersal within 26): the q16 step is Q16_RANGE / 32767 ≈ 2 mm of a 64 m world.
Q16_RANGE: Final = 64.0
Q16_MAX: Final = 32767
SEQ_MOD: Final = 2**32
# q16 values lie in ±32767, so a residual against 2·prev − prev2 lies in ±131068 and its zigzag
# below 2**18: no delta frame ever needs more than 18 bits a value.
MAX_DELTA_BITS: Final = 18


def _header(encoding: str, seq: int, t: float, n: int) -> bytes:
    return HEADER.pack(VERSION, ENCODING_IDS[encoding], n, seq % SEQ_MOD, t)


def quantize(positions: np.ndarray) -> np.ndarray:
    """The q16 integers of ``positions`` (N, 3): round(coord / Q16_RANGE × 32767), clipped."""
    scaled = np.rint(np.asarray(positions, dtype=np.float64) * (Q16_MAX / Q16_RANGE))
    return np.clip(scaled, -Q16_MAX, Q16_MAX).astype("<i2")


def dequantize(q: np.ndarray) -> np.ndarray:
    """Coordinates (float32) of q16 integers, as every decoder of the project computes them."""
    return q.astype(np.float32) * np.float32(Q16_RANGE / Q16_MAX)


def encode_f32(seq: int, t: float, positions: np.ndarray) -> bytes:
    pos = np.ascontiguousarray(positions, dtype="<f4")
    return _header("f32", seq, t, len(pos)) + pos.tobytes()


def encode_q16(seq: int, t: float, positions: np.ndarray) -> bytes:
    return encode_q16_ints(seq, t, quantize(positions))


def encode_q16_ints(seq: int, t: float, q: np.ndarray) -> bytes:
    return _header("q16", seq, t, len(q)) + np.ascontiguousarray(q, dtype="<i2").tobytes()


def encode_json(seq: int, t: float, positions: np.ndarray) -> str:
    rounded = np.round(np.asarray(positions, dtype=np.float64), 4).tolist()
    return json.dumps({"type": "frame", "seq": seq % SEQ_MOD, "t": t, "positions": rounded},
                      separators=(",", ":"))


# -- the delta stream (§4.1) ----------------------------------------------------------------------

def zigzag_residuals(q: np.ndarray, prev: np.ndarray, prev2: np.ndarray) -> np.ndarray:
    """zigzag(q − (2·prev − prev2)) of every coordinate, flat in agent-id order x, y, z (uint32)."""
    r = q.astype(np.int32) - (2 * prev.astype(np.int32) - prev2.astype(np.int32))
    return ((r << 1) ^ (r >> 31)).astype(np.uint32).ravel()


def pack_bits(values: np.ndarray, w: int) -> bytes:
    """``values`` (uint32, each below 2**w) as w-bit integers, least-significant bit first, value
    after value: ⌈len·w / 8⌉ bytes, the last one padded with zero bits."""
    if w == 0:
        return b""
    # Each value's 32 bits, LSB first; keep the low w of each; pack the rows one after the other.
    bits = np.unpackbits(values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1,
                         bitorder="little")
    return np.packbits(bits[:, :w], bitorder="little").tobytes()


def unpack_bits(data: bytes | memoryview, count: int, w: int) -> np.ndarray:
    """The inverse of :func:`pack_bits`: ``count`` w-bit integers (uint32)."""
    if w == 0:
        return np.zeros(count, dtype=np.uint32)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little",
                         count=count * w).reshape(count, w)
    wide = np.zeros((count, 32), dtype=np.uint8)
    wide[:, :w] = bits
    return np.packbits(wide, axis=1, bitorder="little").view("<u4").ravel()


def encode_delta(seq: int, t: float, q: np.ndarray, prev: np.ndarray, prev2: np.ndarray) -> bytes:
    """A delta frame (encoding 3) of ``q`` against a client holding ``prev`` and ``prev2``."""
    values = zigzag_residuals(q, prev, prev2)
    w = int(values.max()).bit_length() if values.size else 0
    return _header("delta", seq, t, len(q)) + bytes((w,)) + pack_bits(values, w)


def encode_keyframe(seq: int, t: float, q: np.ndarray, before: np.ndarray) -> bytes:
    """A keyframe (encoding 4): ``q``, then ``before`` (what the client's ``prev2`` becomes)."""
    return (_header("keyframe", seq, t, len(q)) + np.ascontiguousarray(q, dtype="<i2").tobytes()
            + np.ascontiguousarray(before, dtype="<i2").tobytes())


class DeltaStream:
    """The server's side of one delta stream: the frames it sent, and per frame its delta (made
    once, for every subscriber in step) and, on demand, its keyframe (made at most once).

    Pure: :meth:`advance` takes the next frame the stream sends, whatever its seq (a decimated
    stream, a skipped tick or an engine failover's seq jump are just a bigger residual).
    """

    __slots__ = ("prev", "prev2", "_frame", "_before", "_keyframe")

    def __init__(self) -> None:
        self.prev: np.ndarray | None = None
        self.prev2: np.ndarray | None = None
        self._frame: Frame | None = None
        self._before: np.ndarray | None = None
        self._keyframe: bytes | None = None

    def advance(self, frame: Frame) -> bytes:
        """The delta frame of ``frame``, which becomes the newest of the chain."""
        q = frame.q16
        if self.prev is None or self.prev2 is None or self.prev.shape != q.shape:
            prev = prev2 = q   # nothing sent yet (or another swarm size): only keyframes serve
        else:
            prev, prev2 = self.prev, self.prev2
        self._frame, self._before, self._keyframe = frame, prev, None
        self.prev2, self.prev = prev, q
        return encode_delta(frame.seq, frame.t, q, prev, prev2)

    def keyframe(self) -> bytes:
        """The keyframe of the newest frame: after it, the client decodes the next delta."""
        if self._keyframe is None:
            if self._frame is None or self._before is None:
                raise RuntimeError("DeltaStream.keyframe() before any frame")
            self._keyframe = encode_keyframe(self._frame.seq, self._frame.t, self._frame.q16,
                                             self._before)
        return self._keyframe

    def reset(self) -> None:
        """Forget the chain (nobody follows this stream any more)."""
        self.prev = self.prev2 = self._frame = self._before = None
        self._keyframe = None


class DeltaDecoder:
    """A client's side of one delta stream (§4.1): keeps ``prev`` and ``prev2``.

    :meth:`decode` takes every binary message of the stream in order and returns ``(seq, t, q)``
    with ``q`` the (N, 3) q16 integers of the frame, exactly the q16 frame of that seq. Raises
    :class:`~atom_actors.errors.MalformedFrame` on a message it cannot decode (and then keeps its
    chain as it was).
    """

    def __init__(self) -> None:
        self.prev: np.ndarray | None = None
        self.prev2: np.ndarray | None = None
        self.keyframes = 0

    def decode(self, data: bytes | bytearray | memoryview) -> tuple[int, float, np.ndarray]:
        encoding, n, seq, t = _read_header(data)
        if encoding == ENCODING_IDS["keyframe"]:
            _expect_length(data, HEADER.size + 12 * n, "keyframe", n)
            blocks = np.frombuffer(data, dtype="<i2", offset=HEADER.size).reshape(2, n, 3)
            self.prev, self.prev2 = blocks[0].copy(), blocks[1].copy()
            self.keyframes += 1
            return seq, t, self.prev
        if encoding != ENCODING_IDS["delta"]:
            raise MalformedFrame(f"encoding {encoding} in a delta stream: expected 3 (delta) "
                                 "or 4 (keyframe)")
        if len(data) < HEADER.size + 1:
            raise MalformedFrame(f"delta frame of {len(data)} bytes has no w byte")
        w = data[HEADER.size]
        if w > MAX_DELTA_BITS:
            raise MalformedFrame(f"delta frame with w = {w}: at most {MAX_DELTA_BITS} bits a value")
        _expect_length(data, HEADER.size + 1 + (3 * n * w + 7) // 8, f"delta frame (w = {w})", n)
        if self.prev is None or self.prev2 is None:
            raise MalformedFrame("delta frame before any keyframe: nothing to add it to")
        if self.prev.shape[0] != n:
            raise MalformedFrame(f"delta frame for {n} agents after a keyframe of "
                                 f"{self.prev.shape[0]}")
        u = unpack_bits(memoryview(data)[HEADER.size + 1:], 3 * n, w).astype(np.int32)
        r = ((u >> 1) ^ -(u & 1)).reshape(n, 3)
        q = 2 * self.prev.astype(np.int32) - self.prev2 + r
        if q.min(initial=0) < -Q16_MAX or q.max(initial=0) > Q16_MAX:
            raise MalformedFrame("delta frame decodes outside the q16 range: wrong chain or "
                                 "corrupt data")
        self.prev2, self.prev = self.prev, q.astype("<i2")
        return seq, t, self.prev


def _read_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, float]:
    if len(data) < HEADER.size:
        raise MalformedFrame(f"frame of {len(data)} bytes is shorter than its {HEADER.size}-byte "
                             "header")
    version, encoding, n, seq, t = HEADER.unpack_from(data)
    if version != VERSION or encoding not in ENCODING_IDS.values():
        raise MalformedFrame(f"unknown frame version {version} / encoding {encoding}")
    return encoding, n, seq, t


def _expect_length(data: bytes | bytearray | memoryview, expected: int, kind: str, n: int) -> None:
    if len(data) != expected:
        raise MalformedFrame(f"{kind} of {len(data)} bytes, expected {expected} for {n} agents")


def decode_binary(data: bytes | bytearray | memoryview) -> tuple[int, float, np.ndarray]:
    """Parse a self-contained binary frame (f32, q16 or a keyframe) into ``(seq, t, positions)``;
    positions come back as float32 (N, 3).

    Raises :class:`~atom_actors.errors.MalformedFrame` (a ValueError) on a frame that is not
    version 1, whose length disagrees with N, or that is a delta frame (which needs its stream:
    :class:`DeltaDecoder`).
    """
    encoding, n, seq, t = _read_header(data)
    if encoding == ENCODING_IDS["f32"]:
        _expect_length(data, HEADER.size + 12 * n, "f32 frame", n)
        return seq, t, np.frombuffer(data, dtype="<f4", offset=HEADER.size).reshape(n, 3)
    if encoding == ENCODING_IDS["q16"]:
        _expect_length(data, HEADER.size + 6 * n, "q16 frame", n)
    elif encoding == ENCODING_IDS["keyframe"]:
        _expect_length(data, HEADER.size + 12 * n, "keyframe", n)
    else:
        raise MalformedFrame("a delta frame cannot be decoded alone: feed the stream to a "
                             "DeltaDecoder")
    return seq, t, dequantize(np.frombuffer(data, dtype="<i2", offset=HEADER.size, count=3 * n)
                              .reshape(n, 3))


class Frame:
    """One composed tick. ``f32`` is the canonical encoding; the others are made on demand, once.

    ``cache`` is free for the broadcaster to keep per-frame artefacts (pre-built WebSocket frames)
    so that they, too, are made once per tick whatever the number of subscribers.
    """

    __slots__ = ("seq", "t", "f32", "_positions", "_q16", "_encoded", "cache")

    def __init__(self, seq: int, t: float, f32: bytes) -> None:
        self.seq = seq % SEQ_MOD
        self.t = t
        self.f32 = f32
        self._positions: np.ndarray | None = None   # decoded from f32 on first use
        self._q16: np.ndarray | None = None         # quantized from those on first use
        self._encoded: dict[str, bytes | str] = {"f32": f32}
        self.cache: dict[object, object] = {}

    @classmethod
    def compose(cls, seq: int, t: float, positions: np.ndarray) -> Frame:
        # The frame keeps only its bytes: ``positions`` is the engine's live buffer, and the lazy
        # encodings must see this tick's values, read back from the immutable f32 bytes.
        return cls(seq, t, encode_f32(seq, t, positions))

    @classmethod
    def from_bytes(cls, data: bytes) -> Frame:
        """Rebuild a frame from its f32 bytes (as the Redis bus carries it) without re-encoding.

        Every encoding derives from those bytes alone, so a ``ws`` process fed through Redis
        sends exactly what the engine's own process would."""
        if data[1:2] != bytes((ENCODING_IDS["f32"],)):
            raise MalformedFrame("a frame on the bus must be f32")
        seq, t, _ = decode_binary(data)
        return cls(seq, t, bytes(data))

    @property
    def positions(self) -> np.ndarray:
        if self._positions is None:
            self._positions = decode_binary(self.f32)[2]
        return self._positions

    @property
    def q16(self) -> np.ndarray:
        """The (N, 3) q16 integers of this frame: the q16 and delta encodings share them."""
        if self._q16 is None:
            self._q16 = quantize(self.positions)
        return self._q16

    @property
    def agent_count(self) -> int:
        return HEADER.unpack_from(self.f32)[2]

    def encoded(self, encoding: Encoding) -> bytes | str:
        """This frame alone in ``encoding`` (``delta`` is a stream's: see :class:`DeltaStream`)."""
        try:
            return self._encoded[encoding]
        except KeyError:
            pass
        if encoding == "q16":
            data: bytes | str = encode_q16_ints(self.seq, self.t, self.q16)
        elif encoding == "json":
            data = encode_json(self.seq, self.t, self.positions)
        else:
            raise ValueError(f"no per-frame encoding {encoding!r}")
        self._encoded[encoding] = data
        return data
