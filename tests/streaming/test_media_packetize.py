"""Packetizers: what they write is read back by aiortc's depayloaders and PyAV's decoders, and
starts keyframes exactly where the engine's keyframe rule says."""

from __future__ import annotations

import fractions
import struct
from typing import Any

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import h264_depayload
from aiortc.codecs.vpx import vp8_depayload

from sfu.engine.keyframe import rtp_payload, starts_keyframe
from sfu.streaming.model import Codec
from sfu.streaming.packetize import (
    EncodedFrame,
    Packetizer,
    avcc_to_annexb,
    parse_avcc,
    split_annexb,
)
from sfu.streaming.trickle import add_candidates, parse_sdpfrag


def header(packet: bytes) -> tuple[bool, int, int, int, int]:
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    assert b0 == 0x80
    return bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc


def encode(codec: str, frames: int = 6, size: tuple[int, int] = (160, 120)) -> list[av.Packet]:
    """Real encoded packets (moving noise, so frames are large enough to split)."""
    ctx: Any = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = size
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.gop_size = 3
    ctx.bit_rate = 3_000_000
    if codec == "libx264":
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency"}
    rng = np.random.default_rng(1)
    out: list[av.Packet] = []
    for i in range(frames):
        img = rng.integers(0, 255, (size[1], size[0], 3), np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += ctx.encode(frame)
    out += ctx.encode(None)
    return out


def test_vp8_round_trip_and_keyframes() -> None:
    p = Packetizer(Codec.VP8, 96, 0x1234, seq=65534, picture_id=0x7FFF, max_payload=500)
    decoder = av.CodecContext.create("vp8", "r")
    decoded = 0
    seqs: list[int] = []
    for n, packet in enumerate(encode("libvpx")):
        data = bytes(packet)
        rtp = p.packetize(EncodedFrame(data, 3000 * n, packet.is_keyframe))
        assert len(rtp) > 1  # split: 500-byte payloads
        heads = [header(x) for x in rtp]
        assert [h[0] for h in heads] == [False] * (len(rtp) - 1) + [True]  # marker on the last
        assert {h[1:2] + h[3:] for h in heads} == {(96, 3000 * n, 0x1234)}
        seqs += [h[2] for h in heads]
        assert all(len(x) <= 12 + 500 for x in rtp)
        assert b"".join(vp8_depayload(x[12:]) for x in rtp) == data
        firsts = [starts_keyframe("vp8", x) for x in rtp]
        assert firsts == [packet.is_keyframe] + [False] * (len(rtp) - 1)
        decoded += len(decoder.decode(av.Packet(data)))
    assert seqs == [(65534 + i) & 0xFFFF for i in range(len(seqs))]  # wraps
    assert decoded >= 5
    assert p.frames == 6 and p.packets == len(seqs)
    assert p.picture_id == 5  # 15 bits, wrapped


def test_vp9_descriptor() -> None:
    p = Packetizer(Codec.VP9, 98, 1, max_payload=400)
    packets = encode("libvpx-vp9")
    key = next(x for x in packets if x.is_keyframe)
    rtp = p.packetize(EncodedFrame(bytes(key), 0, True, 160, 120))
    first = rtp_payload(rtp[0])
    assert first is not None
    assert first[0] & 0xC8 == 0x88  # I, not P, B
    assert first[0] & 0x02  # V: the scalability structure
    ss = first[3:8]
    assert ss == struct.pack("!BHH", 0x10, 160, 120)
    last = rtp_payload(rtp[-1])
    assert last is not None and last[0] & 0x04  # E
    assert [starts_keyframe("vp9", x) for x in rtp] == [True] + [False] * (len(rtp) - 1)
    body = b"".join((rtp_payload(x) or b"")[3 + (5 if i == 0 else 0) :] for i, x in enumerate(rtp))
    assert body == bytes(key)
    delta = next(x for x in packets if not x.is_keyframe)
    rtp = p.packetize(EncodedFrame(bytes(delta), 3000, False))
    assert all((rtp_payload(x) or b"\0")[0] & 0x40 for x in rtp)  # P on inter frames
    assert not any(starts_keyframe("vp9", x) for x in rtp)


def test_h264_single_nal_and_fu_a() -> None:
    p = Packetizer(Codec.H264, 102, 7, max_payload=600)
    decoder = av.CodecContext.create("h264", "r")
    decoded = 0
    for n, packet in enumerate(encode("libx264")):
        data = bytes(packet)
        nals = split_annexb(data)
        rtp = p.packetize(EncodedFrame(data, 3000 * n, packet.is_keyframe))
        # aiortc's depayloader gives Annex B back: the same NAL units
        rebuilt = b"".join(h264_depayload(x[12:]) for x in rtp)
        assert split_annexb(rebuilt) == nals
        assert any(len(x) - 12 > 2 and x[12] & 0x1F == 28 for x in rtp)  # some FU-A
        assert any(starts_keyframe("h264", x) for x in rtp) == packet.is_keyframe
        decoded += len(decoder.decode(av.Packet(rebuilt)))
    assert decoded >= 4


def test_opus_one_packet_per_frame() -> None:
    p = Packetizer(Codec.OPUS, 111, 9, seq=10)
    rtp = p.packetize(EncodedFrame(b"\xfc" + bytes(60), 960 * 3))
    assert len(rtp) == 1 and header(rtp[0]) == (False, 111, 10, 2880, 9)
    assert rtp[0][12:] == b"\xfc" + bytes(60)
    assert p.packetize(EncodedFrame(b"", 0)) == []
    big_ts = p.packetize(EncodedFrame(b"x", 2**32 + 5))
    assert header(big_ts[0])[3] == 5  # timestamps wrap at 32 bits


def test_annexb_and_avcc() -> None:
    stream = b"\x00\x00\x00\x01\x67\x42\x00\x00\x01\x68\xce\x00\x00\x00\x01\x65\x88\x00"
    assert split_annexb(stream) == [b"\x67\x42", b"\x68\xce", b"\x65\x88"]
    assert split_annexb(b"") == []
    avcc = bytes([1, 0x42, 0, 0x1F, 0xFF, 0xE1, 0, 2, 0x67, 0x42, 1, 0, 2, 0x68, 0xCE])
    config = parse_avcc(avcc)
    assert config.length_size == 4 and config.parameter_sets == (b"\x67\x42", b"\x68\xce")
    access_unit = struct.pack("!I", 2) + b"\x65\x88" + struct.pack("!I", 3) + b"\x06\x05\x01"
    key = avcc_to_annexb(access_unit, config, keyframe=True)
    assert split_annexb(key) == [b"\x67\x42", b"\x68\xce", b"\x65\x88", b"\x06\x05\x01"]
    delta = avcc_to_annexb(access_unit, config, keyframe=False)
    assert split_annexb(delta) == [b"\x65\x88", b"\x06\x05\x01"]
    assert avcc_to_annexb(struct.pack("!I", 99) + b"x", config, False) == b""  # truncated
    for bad in (b"", bytes([0, 1, 2, 3, 4, 5, 6]), avcc[:9]):
        with pytest.raises(ValueError):
            parse_avcc(bad)


def test_candidates_go_into_the_answer() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 X 96\r\na=mid:0\r\n"
    sdp += "m=audio 9 X 111\r\na=mid:1\r\n"
    out = add_candidates(sdp, ["candidate:1 1 udp 1 10.0.0.1 4000 typ host"], end=True)
    lines = out.split("\r\n")
    at = lines.index("a=candidate:1 1 udp 1 10.0.0.1 4000 typ host")
    assert lines[at - 1] == "a=mid:0" and lines[at + 1] == "a=end-of-candidates"
    assert lines[at + 2].startswith("m=audio") and out.endswith("\r\n")
    assert add_candidates("v=0\r\n", ["candidate:x"], True) == "v=0\r\n"
    ufrag, cands = parse_sdpfrag(
        "a=ice-ufrag:abcd\r\na=ice-pwd:x\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 1 10.0.0.2 5000 typ host\r\na=end-of-candidates\r\n"
    )
    assert ufrag == "abcd"
    assert cands == [
        {
            "candidate": "candidate:1 1 udp 1 10.0.0.2 5000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": None,
        },
        None,
    ]
