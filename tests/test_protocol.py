from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from atom_actors.errors import MalformedFrame
from atom_actors.protocol import (ENCODING_IDS, ENCODINGS, Q16_RANGE, DeltaDecoder, DeltaStream,
                                  Frame, decode_binary, dequantize, encode_delta, encode_keyframe,
                                  encode_q16, pack_bits, unpack_bits, zigzag_residuals)


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


# -- the delta stream (CONTRACT §4.1) ---------------------------------------------------------------

def reference_pack(values: list[int], w: int) -> bytes:
    """§4.1's packing written out bit by bit: w bits a value, least-significant bit first, value
    after value, the last byte padded with zeros."""
    out = bytearray((len(values) * w + 7) // 8)
    bit = 0
    for value in values:
        for k in range(w):
            if value >> k & 1:
                out[bit // 8] |= 1 << (bit % 8)
            bit += 1
    return bytes(out)


def walk(frames: int, n: int = 350, step: int = 40, seed: int = 3) -> list[np.ndarray]:
    """q16 frames of a random walk with momentum, kept inside the q16 range."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-20000, 20000, (n, 3))
    v = np.zeros_like(q)
    out = []
    for _ in range(frames):
        v = v + rng.integers(-step, step + 1, (n, 3))
        q = np.clip(q + v, -32767, 32767)
        out.append(q.astype("<i2"))
    return out


@pytest.mark.parametrize("r, z", [(0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4), (32767, 65534),
                                  (-32767, 65533)])
def test_zigzag_is_the_contracts(r, z):
    zero = np.zeros((1, 3), "<i2")
    assert list(zigzag_residuals(np.full((1, 3), r, "<i2"), zero, zero)) == [z] * 3


def test_the_largest_residuals_fit_in_18_bits():
    """q, prev and prev2 at opposite ends of the q16 range: |r| = 32767 + 2 × 32767 + 32767."""
    a, b = np.full((1, 3), 32767, "<i2"), np.full((1, 3), -32767, "<i2")
    assert list(zigzag_residuals(a, b, a)) == [262136] * 3     # r = 131068
    assert list(zigzag_residuals(b, a, b)) == [262135] * 3     # r = −131068
    assert encode_delta(0, 0.0, a, b, a)[16] == 18


@pytest.mark.parametrize("w", [1, 3, 7, 8, 13, 18])
def test_bit_packing_matches_the_contract_bit_for_bit(w):
    rng = np.random.default_rng(w)
    values = rng.integers(0, 2**w, 3 * 7).astype(np.uint32)
    packed = pack_bits(values, w)
    assert packed == reference_pack([int(v) for v in values], w)
    assert len(packed) == (3 * 7 * w + 7) // 8
    assert np.array_equal(unpack_bits(packed, len(values), w), values)


def test_delta_frame_layout():
    q0, q1, q2 = (np.array([[i + k, -i, 2 * i] for i in range(4)], "<i2") for k in (0, 1, 3))
    data = encode_delta(7, 2.5, q2, q1, q0)
    assert struct.unpack_from("<BBHId", data) == (1, 3, 4, 7, 2.5)
    residual = (q2.astype(int) - (2 * q1.astype(int) - q0)).ravel()   # 1 for x, 0 for y and z
    zz = [2 * int(r) if r >= 0 else -2 * int(r) - 1 for r in residual]
    w = max(zz).bit_length()
    assert data[16] == w and data[17:] == reference_pack(zz, w)


def test_keyframe_layout():
    q, before = walk(2, n=5)
    data = encode_keyframe(2**32 - 1, 9.0, q, before)
    assert struct.unpack_from("<BBHId", data) == (1, 4, 5, 2**32 - 1, 9.0)
    assert data[16:] == q.tobytes() + before.tobytes()
    seq, t, positions = decode_binary(data)   # a keyframe stands alone
    assert seq == 2**32 - 1 and np.array_equal(positions, dequantize(q))


def test_a_still_swarm_costs_one_byte_a_frame():
    q = walk(1)[0]
    data = encode_delta(1, 0.0, q, q, q)
    assert data[16] == 0 and len(data) == 17


def test_delta_stream_decodes_exactly_and_keyframes_are_made_once_and_lazily():
    stream, decoder = DeltaStream(), DeltaDecoder()
    frames = [Frame.compose(seq, seq / 60, dequantize(q)) for seq, q in enumerate(walk(40))]
    late = DeltaDecoder()
    for k, frame in enumerate(frames):
        delta = stream.advance(frame)
        if k == 0:
            _, _, got = decoder.decode(stream.keyframe())
        else:
            _, _, got = decoder.decode(delta)
        assert np.array_equal(got, frame.q16), k
        if k == 25:
            # A newcomer mid-stream: one keyframe, then the very deltas everyone else gets.
            key = stream.keyframe()
            assert stream.keyframe() is key
            assert key[16 + 350 * 6:] == frames[24].q16.tobytes(), "its prev2: the frame before"
            late.decode(key)
        elif k > 25:
            assert np.array_equal(late.decode(delta)[2], frame.q16)
    assert decoder.keyframes == 1 and late.keyframes == 1


def test_delta_stream_across_a_seq_jump_and_a_teleport():
    """An engine failover: a seq jump and, at worst, positions anywhere (w up to 18)."""
    stream, decoder = DeltaStream(), DeltaDecoder()
    a, b = walk(3, seed=1), walk(3, seed=2)
    extremes = np.where(np.arange(350 * 3).reshape(350, 3) % 2, 32767, -32767).astype("<i2")
    qs = [*a, extremes, -extremes, *b]
    seqs = [2**32 - 2, 2**32 - 1, 0, 5000, 5001, 5002, 5003, 5004]
    for k, (seq, q) in enumerate(zip(seqs, qs)):
        delta = stream.advance(Frame.compose(seq, 0.0, dequantize(q)))
        got_seq, _, got = decoder.decode(stream.keyframe() if k == 0 else delta)
        assert got_seq == seq and np.array_equal(got, q)
        assert delta[16] <= 18


def test_delta_over_a_real_swarms_motion_is_small():
    """On smooth motion most residuals are tiny: a few bits a coordinate."""
    stream = DeltaStream()
    t = np.arange(60) / 60
    sizes = []
    for k in range(60):
        angle = t[k] * 2.0 + np.arange(350)[:, None] * 0.1
        pos = np.concatenate([10 * np.cos(angle), 10 * np.sin(angle), np.cos(angle) * 3], axis=1)
        sizes.append(len(stream.advance(Frame.compose(k, t[k], pos))))
    assert max(sizes[2:]) < 700, sizes


def valid_stream() -> tuple[bytes, bytes]:
    stream = DeltaStream()
    q0, q1 = walk(2, n=4)
    stream.advance(Frame.compose(0, 0.0, dequantize(q0)))
    key = stream.keyframe()
    return key, stream.advance(Frame.compose(1, 0.0, dequantize(q1)))


@pytest.mark.parametrize("mangle, message", [
    (lambda key, delta: delta[:10], "shorter than its 16-byte header"),
    (lambda key, delta: delta[:16], "has no w byte"),
    (lambda key, delta: delta[:-1], "expected"),
    (lambda key, delta: delta + b"\x00", "expected"),
    (lambda key, delta: delta[:16] + bytes([19]) + delta[17:], "at most 18 bits"),
    (lambda key, delta: delta[:16] + bytes([200]) + delta[17:], "at most 18 bits"),
    (lambda key, delta: key[:-2], "keyframe of"),
    (lambda key, delta: delta[:1] + b"\x07" + delta[2:], "unknown frame version 1 / encoding 7"),
    (lambda key, delta: b"\x02" + delta[1:], "unknown frame version 2"),
    (lambda key, delta: delta[:1] + b"\x02" + delta[2:], "encoding 2 in a delta stream"),
])
def test_the_delta_decoder_refuses_malformed_messages_clearly(mangle, message):
    key, delta = valid_stream()
    decoder = DeltaDecoder()
    decoder.decode(key)
    with pytest.raises(MalformedFrame, match=message):
        decoder.decode(mangle(key, delta))
    decoder.decode(delta)   # the chain survived the bad message


def test_a_delta_needs_a_keyframe_first_and_decode_binary_says_so():
    key, delta = valid_stream()
    with pytest.raises(MalformedFrame, match="before any keyframe"):
        DeltaDecoder().decode(delta)
    with pytest.raises(ValueError, match="DeltaDecoder"):
        decode_binary(delta)


def test_a_delta_for_another_swarm_size_is_refused():
    key, _ = valid_stream()
    decoder = DeltaDecoder()
    decoder.decode(key)
    stream = DeltaStream()
    q = walk(1, n=5)[0]
    with pytest.raises(MalformedFrame, match="for 5 agents after a keyframe of 4"):
        decoder.decode(stream.advance(Frame.compose(0, 0.0, dequantize(q))))


def test_encoders_write_their_encoding_ids():
    frame = Frame.compose(1, 0.0, positions(2))
    assert frame.f32[1] == ENCODING_IDS["f32"] and frame.encoded("q16")[1] == ENCODING_IDS["q16"]
    assert set(ENCODINGS) == {"f32", "q16", "json", "delta"}
    with pytest.raises(ValueError):
        frame.encoded("delta")
    with pytest.raises(MalformedFrame):
        Frame.from_bytes(frame.encoded("q16"))
