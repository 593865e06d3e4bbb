"""The wire format of L'Essaim (CONTRACT.md §4), as pure functions: no I/O, no clock.

A binary frame is a 16-byte little-endian header followed by N × 3 coordinates::

    offset  type  field
    0       u8    version = 1
    1       u8    encoding: 1 = f32, 2 = q16
    2       u16   agent count N
    4       u32   frame sequence number (+1 per tick, wraps)
    8       f64   server time, Unix seconds, when the frame was composed
    16      ...   x, y, z per agent in agent-id order (f32, or i16 = round(coord / Q16_RANGE × 32767))

A :class:`Frame` is composed once per tick and encoded to f32 at once; the q16 and JSON encodings
are made lazily, at most once per frame, and only if some subscriber asks for them.
"""

from __future__ import annotations

import json
import struct
from typing import Final, Literal

import numpy as np

VERSION: Final = 1
HEADER: Final = struct.Struct("<BBHId")
ENCODING_IDS: Final = {"f32": 1, "q16": 2}
ENCODINGS: Final = ("f32", "q16", "json")
# Every coordinate the engine produces stays inside ±Q16_RANGE (centres within 20, orbits within
# 6, dispersal within 26): the q16 step is Q16_RANGE / 32767 ≈ 2 mm of a 64 m world.
Q16_RANGE: Final = 64.0
SEQ_MOD: Final = 2**32

Encoding = Literal["f32", "q16", "json"]


def encode_f32(seq: int, t: float, positions: np.ndarray) -> bytes:
    pos = np.ascontiguousarray(positions, dtype="<f4")
    return HEADER.pack(VERSION, 1, len(pos), seq % SEQ_MOD, t) + pos.tobytes()


def encode_q16(seq: int, t: float, positions: np.ndarray) -> bytes:
    scaled = np.rint(np.asarray(positions, dtype=np.float64) * (32767.0 / Q16_RANGE))
    q = np.clip(scaled, -32767, 32767).astype("<i2")
    return HEADER.pack(VERSION, 2, len(q), seq % SEQ_MOD, t) + q.tobytes()


def encode_json(seq: int, t: float, positions: np.ndarray) -> str:
    rounded = np.round(np.asarray(positions, dtype=np.float64), 4).tolist()
    return json.dumps({"type": "frame", "seq": seq % SEQ_MOD, "t": t, "positions": rounded},
                      separators=(",", ":"))


def decode_binary(data: bytes) -> tuple[int, float, np.ndarray]:
    """Parse a binary frame into ``(seq, t, positions)``; positions come back as float32 (N, 3).

    Raises ValueError on a frame that is not version 1 or whose length disagrees with N.
    """
    if len(data) < HEADER.size:
        raise ValueError(f"frame of {len(data)} bytes is shorter than its header")
    version, encoding, n, seq, t = HEADER.unpack_from(data)
    if version != VERSION or encoding not in (1, 2):
        raise ValueError(f"unknown frame version {version} / encoding {encoding}")
    dtype, scale = ("<f4", 1.0) if encoding == 1 else ("<i2", Q16_RANGE / 32767.0)
    expected = HEADER.size + n * 3 * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise ValueError(f"frame of {len(data)} bytes, expected {expected} for {n} agents")
    coords = np.frombuffer(data, dtype=dtype, offset=HEADER.size).reshape(n, 3)
    return seq, t, (coords.astype(np.float32) * np.float32(scale)) if encoding == 2 else coords


class Frame:
    """One composed tick. ``f32`` is the canonical encoding; the others are made on demand, once.

    ``cache`` is free for the broadcaster to keep per-frame artefacts (pre-built WebSocket frames)
    so that they, too, are made once per tick whatever the number of subscribers.
    """

    __slots__ = ("seq", "t", "f32", "_positions", "_encoded", "cache")

    def __init__(self, seq: int, t: float, f32: bytes) -> None:
        self.seq = seq % SEQ_MOD
        self.t = t
        self.f32 = f32
        self._positions: np.ndarray | None = None   # decoded from f32 on first use
        self._encoded: dict[str, bytes | str] = {"f32": f32}
        self.cache: dict[object, object] = {}

    @classmethod
    def compose(cls, seq: int, t: float, positions: np.ndarray) -> Frame:
        # The frame keeps only its bytes: ``positions`` is the engine's live buffer, and the lazy
        # encodings must see this tick's values, read back from the immutable f32 bytes.
        return cls(seq, t, encode_f32(seq, t, positions))

    @classmethod
    def from_bytes(cls, data: bytes) -> Frame:
        """Rebuild a frame from its f32 bytes (as the Redis bus carries it) without re-encoding."""
        seq, t, _ = decode_binary(data)
        return cls(seq, t, bytes(data))

    @property
    def positions(self) -> np.ndarray:
        if self._positions is None:
            self._positions = decode_binary(self.f32)[2]
        return self._positions

    @property
    def agent_count(self) -> int:
        return HEADER.unpack_from(self.f32)[2]

    def encoded(self, encoding: str) -> bytes | str:
        try:
            return self._encoded[encoding]
        except KeyError:
            pass
        if encoding == "q16":
            data: bytes | str = encode_q16(self.seq, self.t, self.positions)
        elif encoding == "json":
            data = encode_json(self.seq, self.t, self.positions)
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        self._encoded[encoding] = data
        return data
