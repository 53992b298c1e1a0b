"""The engines' streaming additions, on both engines: ingest sockets and the keyframe gate.

Real UDP sockets on 127.0.0.1, as in tests/engine/test_engine_diff.py (whose rig this reuses):
plain RTP (or SDES-keyed SRTP) sent from ephemeral ports to an ingest socket comes out to WebRTC
subscribers under the fixed SSRC; the keyframe gate holds video until a keyframe starts. The C
keyframe rule is compared with the Python reference on crafted and random packets.
"""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from sfu.engine.base import (
    ConsumerSpec,
    IngestEngine,
    IngestSpec,
    ProducerSpec,
    SrtpParameters,
    StreamStats,
)
from sfu.engine.keyframe import rtp_payload, starts_keyframe
from tests.engine.test_engine_diff import (
    AES_CM,
    ENGINES,
    GCM,
    Profile,
    Rig,
    header,
    new_engine,
    rig,  # noqa: F401  (the fixture)
    rtp,
    stun,
)

INGEST_TID = 50
INGEST_SSRC = 0x1E5


class Sender:
    """An RTP sender outside WebRTC (ffmpeg's role): a socket on an ephemeral port."""

    def __init__(self, srtp: Session | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.srtp = srtp

    def send(self, to: tuple[str, int], packet: bytes) -> None:
        self.sock.sendto(self.srtp.protect(packet) if self.srtp else packet, to)

    def close(self) -> None:
        self.sock.close()


def ingest_socket(r: Rig, srtp: SrtpParameters | None = None) -> tuple[str, int]:
    """An ingest socket (adopted: the caller built it) routed to transport INGEST_TID."""
    engine = r.engine
    assert isinstance(engine, IngestEngine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    info = engine.adopt_socket(sock)
    engine.add_ingest(IngestSpec(INGEST_TID, info.socket_id, INGEST_SSRC, srtp))
    return info.local_addr


def vp8(keyframe: bool, start: bool = True, picture_id: int = 5) -> bytes:
    """A VP8 payload: descriptor (X, I with a 15-bit picture id) and a payload header byte."""
    b0 = 0x80 | (0x10 if start else 0)
    return bytes([b0, 0x80, 0x80 | (picture_id >> 8), picture_id & 0xFF, 0 if keyframe else 1])


async def test_ingest_from_any_address_gets_the_fixed_ssrc(rig: Rig) -> None:  # noqa: F811
    e = rig.engine
    addr = ingest_socket(rig)
    sub = rig.subscriber(2)
    e.add_producer(ProducerSpec(INGEST_TID, INGEST_SSRC, "audio", 48000))
    e.add_consumer(ConsumerSpec(1, INGEST_TID, INGEST_SSRC, 2, 0xABC, 48000, 0, ((97, 111),)))
    a, b = Sender(), Sender()
    try:
        for k in range(5):
            a.send(addr, rtp(0x1234, 100 + k, 960 * k, b"a%d" % k, pt=97))
        got = await sub.recv_rtp(5)
        assert [header(p).ssrc for p in got] == [0xABC] * 5
        assert [header(p).pt for p in got] == [111] * 5
        assert [p[12:] for p in got] == [b"a%d" % k for k in range(5)]
        # another sender (a restarted ffmpeg: new port, SSRC, sequence, timestamps)
        for k in range(5):
            b.send(addr, rtp(0x9999, 40_000 + k, 7_000_000 + 960 * k, b"b", pt=97))
        later = [header(p) for p in await sub.recv_rtp(5)]
        assert [h.seq for h in later] == [105 + k for k in range(5)]  # continues
        assert later[0].ts > header(got[-1]).ts
        a.send(addr, struct.pack("!BBHI", 0x80, 200, 1, 0x1234))  # an RTCP SR: counted
        a.send(addr, stun(3))  # not RTP: dropped
        await rig.until(lambda: e.stats().dropped_unknown == 1)
        await rig.until(lambda: rig.stats(INGEST_TID).rtcp_in == 1)
        st = rig.stats(INGEST_TID)
        assert (st.packets_in, st.srtp_errors, set(st.inbound)) == (10, 0, {INGEST_SSRC})
        # the stream's statistics are the current sender's
        inbound = st.inbound[INGEST_SSRC]
        assert (inbound.packets, inbound.base_seq, inbound.highest_seq) == (5, 40_000, 40_004)
        assert rig.control == []  # nothing of an ingest socket reaches Python
        e.remove_transport(INGEST_TID)  # the socket stays open, its datagrams are unknown now
        a.send(addr, rtp(0x1234, 200, 0, b"late"))
        await rig.until(lambda: e.stats().dropped_unknown == 2)
        assert sub.pending() == 0
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("profile", [AES_CM, GCM], ids=["aes_cm", "gcm"])
async def test_ingest_with_sdes_keys(rig: Rig, profile: Profile) -> None:  # noqa: F811
    key = rig.rng.randbytes(16 + profile.ours.salt_len)
    master, salt = key[:16], key[16:]
    sdes = SrtpParameters(profile.ours, master, salt, master, salt)
    addr = ingest_socket(rig, sdes)
    sub = rig.subscriber(2)
    rig.engine.add_consumer(ConsumerSpec(1, INGEST_TID, INGEST_SSRC, 2, 0xD, 90000))
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp)
    sender = Sender(Session(policy))
    try:
        for k in range(3):
            sender.send(addr, rtp(0x77, k, 3000 * k, b"secret"))
        sender.srtp = None
        sender.send(addr, rtp(0x77, 3, 9000, b"plain: refused"))
        got = await sub.recv_rtp(3)
        assert [p[12:] for p in got] == [b"secret"] * 3
        await rig.until(lambda: rig.stats(INGEST_TID).srtp_errors == 1)
        assert rig.stats(INGEST_TID).packets_in == 3
    finally:
        sender.close()


async def test_keyframe_gate(rig: Rig) -> None:  # noqa: F811
    e = rig.engine
    pub, sub = rig.publisher(1), rig.subscriber(2)
    e.add_producer(ProducerSpec(1, 0x10, "video", 90000))
    e.add_consumer(ConsumerSpec(1, 1, 0x10, 2, 0x20, 90000, keyframe_gate="vp8"))
    e.add_consumer(ConsumerSpec(2, 1, 0x10, 2, 0x21, 90000))  # no gate
    with pytest.raises(ValueError):
        e.add_consumer(ConsumerSpec(3, 1, 0x10, 2, 0x22, 90000, keyframe_gate="av1"))
    frames = [
        vp8(keyframe=False),  # 0: delta: held back by the gate
        vp8(keyframe=True, start=False),  # 1: the middle of a key frame: still held
        vp8(keyframe=True),  # 2: a key frame starts: forwarded from here on
        vp8(keyframe=False, start=False),  # 3
        vp8(keyframe=False),  # 4
    ]
    for k, payload in enumerate(frames):
        pub.send_rtp(rig.addr, rtp(0x10, 10 + k, 3000 * k, payload))
    got = await sub.recv_rtp(5 + 3)
    gated = [header(p).seq for p in got if header(p).ssrc == 0x20]
    assert gated == [12, 13, 14]  # the source's numbers: nothing was sent before
    assert len([p for p in got if header(p).ssrc == 0x21]) == 5
    e.pause_consumer(1, True)
    e.pause_consumer(1, False)  # resumed: waits for the next key frame again
    pub.send_rtp(rig.addr, rtp(0x10, 15, 15000, vp8(keyframe=False)))
    pub.send_rtp(rig.addr, rtp(0x10, 16, 18000, vp8(keyframe=True)))
    later = [header(p) for p in await sub.recv_rtp(3)]
    assert [(h.ssrc, h.seq) for h in later if h.ssrc == 0x20] == [(0x20, 15)]  # continuous


async def test_new_sender_closes_the_gate(rig: Rig) -> None:  # noqa: F811
    addr = ingest_socket(rig)
    sub = rig.subscriber(2)
    rig.engine.add_consumer(
        ConsumerSpec(1, INGEST_TID, INGEST_SSRC, 2, 0x30, 90000, keyframe_gate="vp8")
    )
    a, b = Sender(), Sender()
    try:
        a.send(addr, rtp(1, 1, 0, vp8(keyframe=True)))
        a.send(addr, rtp(1, 2, 3000, vp8(keyframe=False)))
        b.send(addr, rtp(2, 900, 50, vp8(keyframe=False)))  # new sender, mid-stream: held
        b.send(addr, rtp(2, 901, 3050, vp8(keyframe=True)))
        got = [header(p) for p in await sub.recv_rtp(3)]
        assert [h.seq for h in got] == [1, 2, 3]
        await rig.until(lambda: rig.stats(INGEST_TID).packets_in == 4)
        assert sub.pending() == 0
    finally:
        a.close()
        b.close()


async def test_add_ingest_needs_a_socket(rig: Rig) -> None:  # noqa: F811
    engine = rig.engine
    assert isinstance(engine, IngestEngine)
    with pytest.raises(KeyError):
        engine.add_ingest(IngestSpec(9, 4242, 1))


# -- both engines, one scenario ------------------------------------------------------------------


async def _scenario(name: str) -> dict[str, Any]:
    engine = new_engine(name)
    r = Rig(engine, random.Random(5))
    info = engine.open_socket("127.0.0.1", 0)
    r.socket_id, r.addr = info.socket_id, info.local_addr
    engine.start(r.control.extend)
    senders = [Sender(), Sender()]
    try:
        addr = ingest_socket(r)
        subs = [r.subscriber(2), r.subscriber(3)]
        engine.add_producer(ProducerSpec(INGEST_TID, INGEST_SSRC, "video", 90000, 16))
        engine.add_consumer(
            ConsumerSpec(1, INGEST_TID, INGEST_SSRC, 2, 0xA, 90000, 16, keyframe_gate="vp8")
        )
        engine.add_consumer(ConsumerSpec(2, INGEST_TID, INGEST_SSRC, 3, 0xB, 90000))
        plan = [(0, False), (0, True), (0, False), (1, False), (1, True), (1, False)]
        for k, (who, key) in enumerate(plan):
            ssrc = 0x100 + who
            senders[who].send(addr, rtp(ssrc, 1000 * who + k, 3000 * k, vp8(key) + bytes(k)))
        first = [subs[0].rx.unprotect(d) for d in await subs[0].recv(4)]
        second = [subs[1].rx.unprotect(d) for d in await subs[1].recv(6)]
        found = engine.retransmit(1, [header(first[1]).seq])
        await subs[0].recv(1)
        st = r.stats(INGEST_TID)
        return {
            "first": [(header(p).seq, header(p).ssrc, p[12:]) for p in first],
            "second": [(header(p).seq, header(p).ssrc, p[12:]) for p in second],
            "found": found,
            "ingest": (st.packets_in, st.bytes_in, st.unrouted, st.rtcp_in, st.srtp_errors),
            "inbound": {k: _steady(v) for k, v in st.inbound.items()},
            "control": list(r.control),
        }
    finally:
        engine.stop()
        for s in senders:
            s.close()
        for p in r.peers:
            p.sock.close()


def _steady(s: StreamStats) -> StreamStats:
    return StreamStats(s.ssrc, s.packets, s.bytes, s.highest_seq, s.base_seq, 0.0, s.lost)


async def test_engines_agree_on_ingest() -> None:
    reference = await _scenario("python")
    compiled = await _scenario("cython")
    assert compiled == reference
    assert [seq for seq, _, _ in reference["first"]] == [1, 2, 3, 4]
    assert reference["found"] == 1


# -- the keyframe rule in C and in Python --------------------------------------------------------


def _packets() -> list[tuple[str, bytes]]:
    """Crafted RTP packets of every shape the rules look at, then random ones."""
    rng = random.Random(11)
    payloads: list[tuple[str, bytes]] = [
        ("vp8", vp8(True)),
        ("vp8", vp8(False)),
        ("vp8", vp8(True, start=False)),
        ("vp8", bytes([0x10, 0x00])),  # no X: key
        ("vp8", bytes([0x90, 0x60, 0x00, 0x00, 0x00])),  # L and T/K bytes
        ("vp8", bytes([0x90, 0x80, 0x05, 0x00])),  # 7-bit picture id
        ("vp8", bytes([0x11, 0x00])),  # partition 1
        ("vp8", bytes([0x90, 0x80])),  # truncated
        ("vp9", bytes([0x88])),  # B, not P
        ("vp9", bytes([0xC8, 0x80, 0x01])),  # P: inter
        ("vp9", bytes([0xA8, 0x81, 0x02, 0x00])),  # I (15 bit) L, SID 0
        ("vp9", bytes([0xA8, 0x01, 0x02])),  # I (7 bit) L, SID 1
        ("vp9", bytes([0x80, 0x01])),  # not B
        ("h264", bytes([0x65, 0x88])),  # IDR
        ("h264", bytes([0x67, 0x42])),  # SPS
        ("h264", bytes([0x41, 0x9A])),  # non-IDR slice
        ("h264", bytes([0x18, 0x00, 0x02, 0x68, 0xCE, 0x00, 0x02, 0x67, 0x42])),  # STAP-A PPS, SPS
        ("h264", bytes([0x18, 0x00, 0x02, 0x68, 0xCE, 0x00, 0x09])),  # STAP-A, overrun
        ("h264", bytes([0x7C, 0x85, 0x00])),  # FU-A start of an IDR
        ("h264", bytes([0x7C, 0x05, 0x00])),  # FU-A middle
        ("h264", bytes([0x7C])),  # FU-A truncated
    ]
    out = [(codec, rtp(1, 2, 3, p)) for codec, p in payloads]
    for codec, p in payloads[:3]:
        # with CSRCs, a header extension, padding
        csrc = bytes([0x82]) + rtp(1, 2, 3, b"")[1:] + bytes(8)
        out.append((codec, csrc + p))
        ext = bytes([0x90]) + rtp(1, 2, 3, b"")[1:] + b"\xbe\xde\x00\x01" + bytes(4)
        out.append((codec, ext + p))
        out.append((codec, bytes([0xA0]) + rtp(1, 2, 3, b"")[1:] + p + b"\x00\x00\x03"))
    out.append(("vp8", bytes([0xA0]) + rtp(1, 2, 3, b"")[1:] + vp8(True) + b"\x00"))  # pad 0
    out.append(("vp8", bytes([0x90]) + rtp(1, 2, 3, b"")[1:] + b"\xbe\xde\x00\x09"))  # ext overrun
    for _ in range(3000):
        codec = rng.choice(["vp8", "vp9", "h264"])
        head = bytes([rng.choice([0x80, 0x80, 0x90, 0xA0, 0x81])]) + rng.randbytes(11)
        out.append((codec, head + rng.randbytes(rng.randrange(0, 12))))
    return out


def test_keyframe_rule_matches_in_c_and_python() -> None:
    cengine = pytest.importorskip("sfu.engine._cengine", reason="the C engine is not built")
    cases = _packets()
    results = [starts_keyframe(codec, packet) for codec, packet in cases]
    assert results == [cengine.starts_keyframe(codec, packet) for codec, packet in cases]
    crafted = results[:21]
    assert crafted == [
        *(True, False, False, True, True, True, False, False),
        *(True, False, True, False, False),
        *(True, True, False, True, False, True, False, False),
    ]
    assert sum(results) > 20  # the random ones are not all refused


def test_rtp_payload() -> None:
    assert rtp_payload(rtp(1, 2, 3, b"abc")) == b"abc"
    assert rtp_payload(b"\x80" + bytes(10)) is None
    assert rtp_payload(bytes([0x40]) + bytes(11)) is None  # version 1
    assert rtp_payload(bytes([0xA0]) + rtp(1, 2, 3, b"")[1:] + b"xy\x00\x00\x03") == b"xy"
    with pytest.raises(ValueError):
        starts_keyframe("av1", rtp(1, 2, 3, b""))


@pytest.mark.parametrize("name", ENGINES)
def test_both_engines_are_ingest_engines(name: str) -> None:
    engine = new_engine(name)
    try:
        assert isinstance(engine, IngestEngine)
    finally:
        engine.stop()
