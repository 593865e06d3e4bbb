from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from atom_actors.protocol import Q16_RANGE, Frame, decode_binary, encode_q16


def positions(n: int = 350) -> np.ndarray:
    return np.random.default_rng(1).uniform(-50, 50, (n, 3)).astype(np.float32)


def test_f32_layout_is_the_contract():
    pos = positions()
    frame = Frame.compose(41, 1_700_000_000.25, pos)
    data = frame.f32
    assert len(data) == 16 + 350 * 12 == 4216
    assert struct.unpack_from("<BBHId", data) == (1, 1, 350, 41, 1_700_000_000.25)
    assert np.array_equal(np.frombuffer(data, "<f4", offset=16).reshape(350, 3), pos)


def test_seq_wraps_at_32_bits():
    assert decode_binary(Frame.compose(2**32 + 5, 0.0, positions(3)).f32)[0] == 5


def test_q16_is_within_one_step_of_f32():
    pos = positions()
    frame = Frame.compose(1, 2.0, pos)
    data = frame.encoded("q16")
    assert struct.unpack_from("<BBH", data) == (1, 2, 350) and len(data) == 16 + 350 * 6
    _, _, decoded = decode_binary(data)
    assert np.max(np.abs(decoded - pos)) <= Q16_RANGE / 32767


def test_q16_clips_out_of_range_coordinates():
    _, _, decoded = decode_binary(encode_q16(0, 0.0, np.array([[1e6, -1e6, 0.0]])))
    assert decoded[0, 0] == pytest.approx(Q16_RANGE) and decoded[0, 1] == pytest.approx(-Q16_RANGE)


def test_json_frame():
    pos = positions(4)
    message = json.loads(Frame.compose(9, 3.5, pos).encoded("json"))
    assert message["type"] == "frame" and message["seq"] == 9 and message["t"] == 3.5
    assert np.allclose(message["positions"], pos, atol=1e-4)


def test_other_encodings_are_made_once_and_only_when_asked():
    frame = Frame.compose(1, 0.0, positions())
    assert set(frame._encoded) == {"f32"}
    assert frame.encoded("q16") is frame.encoded("q16")
    assert set(frame._encoded) == {"f32", "q16"}


def test_from_bytes_keeps_the_bytes_and_decodes_lazily():
    original = Frame.compose(7, 1.0, positions())
    copy = Frame.from_bytes(original.f32)
    assert copy.f32 == original.f32 and copy.seq == 7
    assert np.array_equal(copy.positions, original.positions)


@pytest.mark.parametrize("data", [b"", b"\x02" + bytes(15), Frame.compose(1, 0.0, positions(2)).f32[:-1]])
def test_decode_rejects_malformed_frames(data):
    with pytest.raises(ValueError):
        decode_binary(data)
