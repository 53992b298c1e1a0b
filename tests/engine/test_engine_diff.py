"""The same scenarios on both engines (PyEngine, the reference, and CEngine, the C loop).

Real UDP sockets on 127.0.0.1: "publisher" sockets send SRTP protected by libsrtp (pylibsrtp)
with known keys, "subscriber" sockets are consumer destinations and unprotect with libsrtp.
Each test runs once per engine and asserts the outcomes; ``test_engines_agree`` also runs one
scenario on both and compares everything deterministic they report.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from sfu.engine.base import (
    Addr,
    ConsumerSpec,
    ControlKind,
    ControlPacket,
    Engine,
    ProducerSpec,
    RelayPath,
    SrtpParameters,
    SrtpProfile,
    StreamStats,
    TransportStats,
)
from sfu.engine.pyengine import PyEngine

ENGINES = ["python", "cython"]
TIMEOUT = 3.0


def new_engine(name: str) -> Engine:
    if name == "python":
        return PyEngine()
    cengine = pytest.importorskip("sfu.engine.cengine", reason="the C engine is not built")
    engine: Engine = cengine.CEngine()
    return engine


@dataclass(frozen=True)
class Profile:
    ours: SrtpProfile
    libsrtp: int


AES_CM = Profile(SrtpProfile.AES_CM_128_HMAC_SHA1_80, Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
GCM = Profile(SrtpProfile.AEAD_AES_128_GCM, Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
PROFILES = pytest.mark.parametrize("profile", [AES_CM, GCM], ids=["aes_cm", "gcm"])


def rtp(ssrc: int, seq: int, ts: int, payload: bytes, pt: int = 96, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload


@dataclass(frozen=True)
class Header:
    marker: bool
    pt: int
    seq: int
    ts: int
    ssrc: int


def header(packet: bytes) -> Header:
    _, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    return Header(bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc)


def stun(tag: int) -> bytes:
    """A STUN binding request shape (RFC 7983: first byte 0..3, at least 20 bytes)."""
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + bytes([tag]) * 12


def rtcp_rr(ssrc: int) -> bytes:
    """An empty receiver report (PT 201)."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def channel_data(channel: int, data: bytes) -> bytes:
    return struct.pack("!HH", channel, len(data)) + data


def _policy(key: bytes, ssrc_type: int, profile: int) -> Policy:
    return Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)


class Peer:
    """A client: one UDP socket and its libsrtp sessions (its keys are the engine's remote keys)."""

    def __init__(self, profile: Profile, rng: random.Random, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        name = self.sock.getsockname()
        self.addr: Addr = (name[0], name[1])
        salt_len = profile.ours.salt_len
        ck, cs = rng.randbytes(16), rng.randbytes(salt_len)
        sk, ss = rng.randbytes(16), rng.randbytes(salt_len)
        self.params = SrtpParameters(profile.ours, sk, ss, ck, cs)
        self.tx = Session(_policy(ck + cs, Policy.SSRC_ANY_OUTBOUND, profile.libsrtp))
        self.rx = Session(_policy(sk + ss, Policy.SSRC_ANY_INBOUND, profile.libsrtp))

    def send(self, to: Addr, data: bytes) -> None:
        self.sock.sendto(data, to)

    def send_rtp(self, to: Addr, packet: bytes) -> bytes:
        data = self.tx.protect(packet)
        self.sock.sendto(data, to)
        return data

    async def recv(self, count: int, timeout: float = TIMEOUT) -> list[bytes]:
        loop = asyncio.get_running_loop()
        out: list[bytes] = []

        async def collect() -> None:
            while len(out) < count:
                out.append(await loop.sock_recv(self.sock, 4096))

        try:
            await asyncio.wait_for(collect(), timeout)
        except TimeoutError:
            raise AssertionError(f"received {len(out)} of {count} datagrams") from None
        return out

    async def recv_rtp(self, count: int) -> list[bytes]:
        return [self.rx.unprotect(d) for d in await self.recv(count)]

    def pending(self) -> int:
        """Datagrams waiting in the socket (read and discarded)."""
        n = 0
        while True:
            try:
                self.sock.recv(4096)
            except BlockingIOError:
                return n
            n += 1


@dataclass
class Rig:
    """One engine with one socket on 127.0.0.1, the peers around it, what it delivered."""

    engine: Engine
    rng: random.Random
    socket_id: int = 0
    addr: Addr = ("", 0)
    control: list[ControlPacket] = field(default_factory=list)
    peers: list[Peer] = field(default_factory=list)

    host: str = "127.0.0.1"

    def peer(self, profile: Profile = AES_CM) -> Peer:
        p = Peer(profile, self.rng, self.host)
        self.peers.append(p)
        return p

    def publisher(self, tid: int, profile: Profile = AES_CM) -> Peer:
        p = self.peer(profile)
        self.engine.bind(tid, self.socket_id, p.addr)
        self.engine.set_srtp(tid, p.params)
        return p

    def subscriber(self, tid: int, profile: Profile = AES_CM) -> Peer:
        p = self.peer(profile)
        self.engine.set_destination(tid, self.socket_id, p.addr)
        self.engine.set_srtp(tid, p.params)
        return p

    def stats(self, tid: int) -> TransportStats:
        s = self.engine.transport_stats(tid)
        assert s is not None
        return s

    async def until(self, what: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Wait for the engine thread to have done something (polls; this is network I/O)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not what():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting for the engine")
            await asyncio.sleep(0.002)

    async def until_in(self, tid: int, packets: int) -> None:
        await self.until(lambda: self.stats(tid).packets_in >= packets)

    async def until_datagrams(self, count: int) -> None:
        await self.until(lambda: self.engine.stats().datagrams_in >= count)


@pytest.fixture(params=ENGINES)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    engine = new_engine(request.param)
    r = Rig(engine, random.Random(7))
    info = engine.open_socket("127.0.0.1", 0)
    r.socket_id, r.addr = info.socket_id, info.local_addr
    engine.start(r.control.extend)
    try:
        yield r
    finally:
        engine.stop()
        for p in r.peers:
            p.sock.close()


# -- media ---------------------------------------------------------------------------------------


@PROFILES
async def test_fan_out_rewrites_and_counts(rig: Rig, profile: Profile) -> None:
    e = rig.engine
    pub = rig.publisher(1, profile)
    subs = [rig.subscriber(10 + i, profile) for i in range(3)]
    e.add_producer(ProducerSpec(1, 0x1111, "video", 90000))
    for i, _ in enumerate(subs):
        pt_map = ((96, 100),) if i == 1 else ()
        e.add_consumer(
            ConsumerSpec(i + 1, 1, 0x1111, 10 + i, 0x5000 + i, 90000, payload_type_map=pt_map)
        )
    sent = []
    for n in range(20):
        payload = rig.rng.randbytes(rig.rng.choice([0, 1, 160, 1188]))
        sent.append(rtp(0x1111, 1000 + n, 90_000 + 3000 * n, payload, marker=n % 5 == 4))
    wire = [pub.send_rtp(rig.addr, p) for p in sent]

    for i, sub in enumerate(subs):
        datagrams = await sub.recv(20)
        got = [sub.rx.unprotect(d) for d in datagrams]
        for orig, out in zip(sent, got, strict=True):
            h, o = header(orig), header(out)
            assert out[12:] == orig[12:]
            assert o == replace(h, ssrc=0x5000 + i, pt=100 if i == 1 else 96)
        st = rig.stats(10 + i)
        assert (st.packets_out, st.bytes_out) == (20, sum(map(len, datagrams)))
        assert st.srtp_errors == 0
        out_stats = st.outbound[0x5000 + i]
        assert out_stats.packets == 20
        assert out_stats.bytes == sum(len(p) - 12 for p in sent)
        assert out_stats.last_rtp_ts == 90_000 + 3000 * 19

    st = rig.stats(1)
    assert (st.packets_in, st.bytes_in, st.unrouted) == (20, sum(map(len, wire)), 0)
    inbound = st.inbound[0x1111]
    assert (inbound.packets, inbound.bytes) == (20, sum(map(len, sent)))
    assert (inbound.base_seq, inbound.highest_seq, inbound.lost) == (1000, 1019, 0)
    es = e.stats()
    assert (es.datagrams_in, es.datagrams_out, es.dropped_unknown) == (20, 60, 0)


async def test_pause_resume_keeps_sequence_and_timestamp(rig: Rig) -> None:
    e = rig.engine
    pub, sub = rig.publisher(1), rig.subscriber(2)
    e.add_producer(ProducerSpec(1, 0xA, "audio", 48000))
    e.add_consumer(ConsumerSpec(5, 1, 0xA, 2, 0xB, 48000))

    def burst(first_seq: int, first_ts: int, count: int) -> list[bytes]:
        return [
            rtp(0xA, (first_seq + k) & 0xFFFF, first_ts + 960 * k, bytes([k]) * 50)
            for k in range(count)
        ]

    for p in burst(65530, 1_000_000, 10):  # wraps the source sequence number
        pub.send_rtp(rig.addr, p)
    first = [header(p) for p in await sub.recv_rtp(10)]
    assert [h.seq for h in first] == [(65530 + k) & 0xFFFF for k in range(10)]

    e.pause_consumer(5, True)
    for p in burst(4, 1_009_600, 10):
        pub.send_rtp(rig.addr, p)
    await rig.until_in(1, 20)
    e.pause_consumer(5, False)
    # the source jumps (a new encoder run): the output must not
    resumed = burst(30_000, 7_000_000, 10)
    for p in resumed:
        pub.send_rtp(rig.addr, p)
    got = await sub.recv_rtp(10)
    hs = [header(p) for p in got]
    assert [p[12:] for p in got] == [p[12:] for p in resumed]
    assert [h.seq for h in hs] == [(first[-1].seq + 1 + k) & 0xFFFF for k in range(10)]
    assert hs[0].ts > first[-1].ts  # monotonic across the pause (elapsed wall time, >= 1)
    assert hs[0].ts - first[-1].ts < 48000 * 5
    assert [h.ts - hs[0].ts for h in hs] == [960 * k for k in range(10)]
    assert rig.stats(2).outbound[0xB].packets == 20
    assert sub.pending() == 0


async def test_source_switch_keeps_sequence(rig: Rig) -> None:
    e = rig.engine
    pub_a, pub_b, sub = rig.publisher(1), rig.publisher(2), rig.subscriber(3)
    e.add_producer(ProducerSpec(1, 0xAAAA, "video", 90000))
    e.add_producer(ProducerSpec(2, 0xBBBB, "video", 90000))
    e.add_consumer(ConsumerSpec(1, 1, 0xAAAA, 3, 0x5555, 90000))
    for k in range(10):
        pub_a.send_rtp(rig.addr, rtp(0xAAAA, 100 + k, 5000 + 3000 * k, b"A" * 20))
    a = [header(p) for p in await sub.recv_rtp(10)]

    e.remove_consumer(1)
    e.add_consumer(ConsumerSpec(2, 2, 0xBBBB, 3, 0x5555, 90000))
    for k in range(10):
        pub_b.send_rtp(rig.addr, rtp(0xBBBB, 40_000 + k, 77 + 3000 * k, b"B" * 20))
    got = await sub.recv_rtp(10)
    b = [header(p) for p in got]
    assert all(p[12:] == b"B" * 20 for p in got)
    assert {h.ssrc for h in a + b} == {0x5555}
    assert [h.seq for h in a + b] == list(range(100, 120))
    assert b[0].ts > a[-1].ts
    assert rig.stats(3).srtp_errors == 0


@PROFILES
async def test_retransmit_resends_what_was_nacked(rig: Rig, profile: Profile) -> None:
    e = rig.engine
    pub, sub = rig.publisher(1, profile), rig.subscriber(2, profile)
    e.add_producer(ProducerSpec(1, 0x77, "video", 90000))
    e.add_consumer(ConsumerSpec(9, 1, 0x77, 2, 0x88, 90000, cache_size=64))
    e.add_consumer(ConsumerSpec(10, 1, 0x77, 2, 0x99, 90000))  # no cache
    for k in range(30):
        pub.send_rtp(rig.addr, rtp(0x77, 500 + k, 3000 * k, rig.rng.randbytes(300)))
    datagrams = await sub.recv(60)
    by_seq = {header(d).seq: d for d in datagrams if header(d).ssrc == 0x88}  # header is clear
    assert e.retransmit(9, [503, 510, 9999]) == 2
    again = await sub.recv(2)
    assert again == [by_seq[503], by_seq[510]]  # the same bytes (same SRTP index)
    assert e.retransmit(10, [503]) == 0
    assert e.retransmit(12345, [503]) == 0
    assert rig.stats(2).outbound[0x88].retransmitted == 2
    await rig.until(lambda: e.stats().datagrams_out == 62)


# -- control path --------------------------------------------------------------------------------


async def test_control_datagrams_are_handed_over(rig: Rig) -> None:
    e = rig.engine
    bound, stranger = rig.publisher(4), rig.peer()
    stranger.send(rig.addr, stun(1))
    await rig.until(lambda: len(rig.control) == 1)
    bound.send(rig.addr, stun(2))
    await rig.until(lambda: len(rig.control) == 2)
    bound.send(rig.addr, b"\x16\xfe\xfd" + bytes(40))  # DTLS
    await rig.until(lambda: len(rig.control) == 3)
    stranger.send(rig.addr, channel_data(0x4000, b"x" * 8))  # TURN, no channel bound
    await rig.until(lambda: len(rig.control) == 4)
    stranger.send(rig.addr, b"\x11" + bytes(30))  # ZRTP: dropped
    stranger.send(rig.addr, rtp(1, 2, 3, b"p"))  # RTP from nobody: dropped
    await rig.until_datagrams(6)
    sid = rig.socket_id
    assert rig.control == [
        ControlPacket(ControlKind.STUN, sid, stranger.addr, stun(1), 0),
        ControlPacket(ControlKind.STUN, sid, bound.addr, stun(2), 4),
        ControlPacket(ControlKind.DTLS, sid, bound.addr, b"\x16\xfe\xfd" + bytes(40), 4),
        ControlPacket(ControlKind.TURN, sid, stranger.addr, channel_data(0x4000, b"x" * 8), 0),
    ]
    await rig.until(lambda: e.stats().dropped_unknown == 2)
    assert e.stats().control_delivered == 4


@PROFILES
async def test_rtcp_in_decrypted_and_out_protected(rig: Rig, profile: Profile) -> None:
    e = rig.engine
    peer = rig.publisher(3, profile)
    e.set_destination(3, rig.socket_id, peer.addr)
    report = rtcp_rr(0xDEAD) + struct.pack("!BBHI", 0x81, 206, 2, 0xDEAD) + struct.pack("!I", 7)
    peer.send(rig.addr, peer.tx.protect_rtcp(report))
    await rig.until(lambda: len(rig.control) == 1)
    assert rig.control == [ControlPacket(ControlKind.RTCP, rig.socket_id, peer.addr, report, 3)]
    e.send_rtcp(3, rtcp_rr(0xBEEF))
    e.send_rtcp(99, rtcp_rr(0xBEEF))  # unknown transport: nothing
    (data,) = await peer.recv(1)
    assert peer.rx.unprotect_rtcp(data) == rtcp_rr(0xBEEF)
    st = rig.stats(3)
    assert (st.rtcp_in, st.rtcp_out, st.srtp_errors) == (1, 1, 0)


async def test_errors_and_garbage_are_counted(rig: Rig) -> None:
    e = rig.engine
    pub, sub = rig.publisher(1), rig.subscriber(2)
    e.add_producer(ProducerSpec(1, 0x10, "video", 90000))
    e.add_consumer(ConsumerSpec(1, 1, 0x10, 2, 0x20, 90000))
    good = pub.tx.protect(rtp(0x10, 1, 0, b"ok" * 10))
    tampered = bytearray(pub.tx.protect(rtp(0x10, 2, 0, b"ok" * 10)))
    tampered[15] ^= 1
    pub.send(rig.addr, bytes(tampered))
    pub.send(rig.addr, good[:11])  # too short for RTP: unknown
    pub.send(rig.addr, bytes([0x80, 0x60]) + bytes(11))  # RTP shape, not SRTP
    for first in (0x05, 0x50, 0xC0, 0xFF):
        pub.send(rig.addr, bytes([first]) + bytes(40))
    pub.send(rig.addr, b"")
    pub.send_rtp(rig.addr, rtp(0x33, 1, 0, b"nobody listens"))  # authenticated, unrouted
    pub.send(rig.addr, good)
    await sub.recv(1)
    await rig.until_datagrams(10)
    st = rig.stats(1)
    assert (st.packets_in, st.srtp_errors, st.unrouted) == (2, 2, 1)
    assert set(st.inbound) == {0x10, 0x33}
    assert e.stats().dropped_unknown == 6
    assert rig.stats(2).packets_out == 1


async def test_removals_stop_forwarding(rig: Rig) -> None:
    e = rig.engine
    pub, sub = rig.publisher(1), rig.subscriber(2)
    e.add_producer(ProducerSpec(1, 0x10, "video", 90000))
    e.add_consumer(ConsumerSpec(1, 1, 0x10, 2, 0x20, 90000))
    with pytest.raises(ValueError):
        e.add_consumer(ConsumerSpec(1, 1, 0x10, 2, 0x21, 90000))
    pub.send_rtp(rig.addr, rtp(0x10, 1, 0, b"1"))
    await sub.recv(1)
    e.remove_producer(1, 0x10)  # takes its consumers along
    pub.send_rtp(rig.addr, rtp(0x10, 2, 0, b"2"))
    await rig.until(lambda: rig.stats(1).unrouted == 1)
    e.add_consumer(ConsumerSpec(2, 1, 0x10, 2, 0x20, 90000))
    e.remove_transport(2)  # the destination: its consumers go too
    assert e.transport_stats(2) is None
    pub.send_rtp(rig.addr, rtp(0x10, 3, 0, b"3"))
    await rig.until(lambda: rig.stats(1).unrouted == 2)
    e.remove_transport(1)  # the source: its bindings go, later media is unknown
    pub.send_rtp(rig.addr, rtp(0x10, 4, 0, b"4"))
    await rig.until(lambda: e.stats().dropped_unknown == 1)
    assert sub.pending() == 0


@pytest.mark.parametrize("name", ENGINES)
async def test_ipv6(name: str) -> None:
    engine = new_engine(name)
    try:
        info = engine.open_socket("::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    r = Rig(engine, random.Random(6), info.socket_id, info.local_addr, host="::1")
    engine.start(r.control.extend)
    try:
        assert info.family == socket.AF_INET6 and info.local_addr[0] == "::1"
        pub, sub = r.publisher(1, GCM), r.subscriber(2, GCM)
        engine.add_consumer(ConsumerSpec(1, 1, 0x66, 2, 0x67, 90000))
        pub.send_rtp(r.addr, rtp(0x66, 1, 2, b"six"))
        (got,) = await sub.recv_rtp(1)
        assert got[12:] == b"six" and header(got).ssrc == 0x67
        pub.send(r.addr, stun(9))
        await r.until(lambda: len(r.control) == 1)
        assert r.control == [ControlPacket(ControlKind.STUN, info.socket_id, pub.addr, stun(9), 1)]
        engine.send(info.socket_id, sub.addr, b"raw")
        assert await sub.recv(1) == [b"raw"]
    finally:
        engine.stop()
        for p in r.peers:
            p.sock.close()


# -- TURN channels -------------------------------------------------------------------------------


async def test_turn_channels_in_and_out(rig: Rig) -> None:
    e = rig.engine
    turn = rig.peer()  # plays the TURN server
    sid = rig.socket_id
    peer_a: Addr = ("203.0.113.5", 7000)  # the publisher as the TURN server relays it
    peer_b: Addr = ("203.0.113.9", 9000)
    pub_keys = rig.peer()  # only its keys are used; its datagrams go through `turn`
    e.bind_channel(sid, turn.addr, 0x4001, peer_a)
    e.bind(1, sid, peer_a)
    e.set_srtp(1, pub_keys.params)
    direct = rig.subscriber(2)
    relayed = rig.peer()
    e.set_destination(3, sid, peer_b, RelayPath(turn.addr, 0x4002))
    e.set_srtp(3, relayed.params)
    e.add_producer(ProducerSpec(1, 0x42, "audio", 48000))
    e.add_consumer(ConsumerSpec(1, 1, 0x42, 2, 0x43, 48000))
    e.add_consumer(ConsumerSpec(2, 1, 0x42, 3, 0x44, 48000, cache_size=8))

    packet = rtp(0x42, 9, 960, b"relayed media")
    turn.send(rig.addr, channel_data(0x4001, pub_keys.tx.protect(packet)) + b"\0\0\0")  # padded
    (out,) = await direct.recv_rtp(1)
    assert out[12:] == b"relayed media" and header(out).ssrc == 0x43
    (wrapped,) = await turn.recv(1)
    channel, length = struct.unpack_from("!HH", wrapped)
    assert (channel, length) == (0x4002, len(wrapped) - 4)
    out = relayed.rx.unprotect(wrapped[4:])
    assert out[12:] == b"relayed media" and header(out).ssrc == 0x44
    assert e.retransmit(2, [9]) == 1
    (again,) = await turn.recv(1)
    assert again == wrapped

    turn.send(rig.addr, channel_data(0x4001, stun(5)))
    turn.send(rig.addr, channel_data(0x4001, b"\x17" + bytes(20))[:10])  # truncated: dropped
    turn.send(rig.addr, channel_data(0x4003, stun(6)))  # unbound channel: raw TURN
    await rig.until(lambda: len(rig.control) == 2)
    assert rig.control == [
        ControlPacket(ControlKind.STUN, sid, peer_a, stun(5), 1, turn.addr),
        ControlPacket(ControlKind.TURN, sid, turn.addr, channel_data(0x4003, stun(6)), 0),
    ]
    e.unbind_channel(sid, turn.addr, 0x4001)
    turn.send(rig.addr, channel_data(0x4001, stun(7)))
    await rig.until(lambda: len(rig.control) == 3)
    assert rig.control[2].kind is ControlKind.TURN
    assert e.stats().dropped_unknown == 1
    e.send_rtcp(3, rtcp_rr(1))
    (wrapped,) = await turn.recv(1)
    assert relayed.rx.unprotect_rtcp(wrapped[4:]) == rtcp_rr(1)


# -- both engines, one scenario ------------------------------------------------------------------


async def _scenario(name: str) -> dict[str, Any]:
    """Loss, reordering, duplicates, pause, PT map, NACK: everything deterministic, recorded."""
    engine = new_engine(name)
    r = Rig(engine, random.Random(99))
    info = engine.open_socket("127.0.0.1", 0)
    r.socket_id, r.addr = info.socket_id, info.local_addr
    engine.start(r.control.extend)
    try:
        pub = r.publisher(1, GCM)
        subs = [r.subscriber(2, GCM), r.subscriber(3, AES_CM)]
        engine.add_producer(ProducerSpec(1, 0xF00D, "video", 90000))
        engine.add_consumer(ConsumerSpec(1, 1, 0xF00D, 2, 0xA1, 90000, 32, ((96, 98),)))
        engine.add_consumer(ConsumerSpec(2, 1, 0xF00D, 3, 0xA2, 90000))
        order = [0, 1, 2, 4, 3, 5, 5, 8, 9, 7, 12, 13, 14, 15]  # reordered, a duplicate, gaps
        packets = {k: rtp(0xF00D, 65500 + k, 3000 * k, r.rng.randbytes(200 + k)) for k in order}
        for k in order:
            pub.send(r.addr, pub.tx.protect(packets[k]) if k != 5 else b"")  # no replay noise
        await r.until_datagrams(len(order))
        engine.pause_consumer(2, True)
        for k in range(16, 20):
            pub.send_rtp(r.addr, rtp(0xF00D, 65500 + k, 3000 * k, bytes(10)))
        await r.until_in(1, len(order) - 2 + 4)
        engine.pause_consumer(2, False)
        pub.send_rtp(r.addr, rtp(0xF00D, 65520, 60000, bytes(10)))
        n_first = len(order) - 2 + 4 + 1
        got_first = [subs[0].rx.unprotect(d) for d in await subs[0].recv(n_first)]
        got_second = [subs[1].rx.unprotect(d) for d in await subs[1].recv(len(order) - 2 + 1)]
        found = engine.retransmit(1, [header(got_first[3]).seq, 1234])
        await subs[0].recv(1)
        record: dict[str, Any] = {
            "first": [(header(p).pt, header(p).seq, header(p).ssrc, p[12:]) for p in got_first],
            "second": [(header(p).seq, header(p).ssrc, p[12:]) for p in got_second],
            "found": found,
            "control": list(r.control),
        }
        for tid in (1, 2, 3):
            st = r.stats(tid)
            record[f"t{tid}"] = replace(
                st,
                inbound={k: _steady(v) for k, v in st.inbound.items()},
                outbound={k: _steady(v) for k, v in st.outbound.items()},
            )
        return record
    finally:
        engine.stop()
        for p in r.peers:
            p.sock.close()


def _steady(s: StreamStats) -> StreamStats:
    """Without what depends on wall-clock time (jitter, send times, timestamps after a pause)."""
    return replace(s, jitter=0.0, last_send_time=0.0, last_rtp_ts=0)


async def test_engines_agree() -> None:
    reference = await _scenario("python")
    compiled = await _scenario("cython")
    assert compiled == reference
    assert reference["found"] == 1
    assert reference["t1"].inbound[0xF00D].lost == 4  # 6, 10, 11 never came; 5 came as junk
