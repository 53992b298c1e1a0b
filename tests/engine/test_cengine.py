"""The C engine alone: demux against the Python reference, fuzzing at full rate, lifecycle leaks,
the bounded control queue, table churn and mutations racing the loop.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from pylibsrtp import Policy, Session

from sfu.engine.base import (
    Addr,
    ConsumerSpec,
    ControlPacket,
    ProducerSpec,
    RelayPath,
    SrtpParameters,
    SrtpProfile,
)
from sfu.rtp.demux import classify

_cengine = pytest.importorskip("sfu.engine._cengine", reason="the C engine is not built")
from sfu.engine.cengine import CEngine  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def keys(rng: random.Random, profile: SrtpProfile) -> tuple[SrtpParameters, Session, Session]:
    """Engine-side parameters and the peer's (tx, rx) libsrtp sessions."""
    ck, cs = rng.randbytes(16), rng.randbytes(profile.salt_len)
    sk, ss = rng.randbytes(16), rng.randbytes(profile.salt_len)
    lib = (
        Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        if profile is SrtpProfile.AES_CM_128_HMAC_SHA1_80
        else Policy.SRTP_PROFILE_AEAD_AES_128_GCM
    )
    tx = Session(Policy(key=ck + cs, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=lib))
    rx = Session(Policy(key=sk + ss, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=lib))
    return SrtpParameters(profile, sk, ss, ck, cs), tx, rx


def rtp_packet(rng: random.Random, ssrc: int, seq: int) -> bytes:
    """A valid RTP packet with random CSRCs, extension, padding, payload type and marker."""
    csrcs = rng.choice([0, 0, 1, 15])
    ext = rng.choice([None, None, 0, 2])
    pad = rng.choice([0, 0, 0, 3])
    first = 0x80 | csrcs | (0x10 if ext is not None else 0) | (0x20 if pad else 0)
    out = struct.pack("!BBHII", first, rng.randrange(256), seq, rng.getrandbits(32), ssrc)
    out += rng.randbytes(4 * csrcs)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, ext) + rng.randbytes(4 * ext)
    out += rng.randbytes(rng.randrange(0, 1100))
    if pad:
        out += bytes(pad - 1) + bytes([pad])
    return out


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)) :]
        elif op == 2:
            b += rng.randbytes(rng.randrange(1, 64))
        elif b:
            b[0] = rng.choice([0, 1, 0x17, 0x40, 0x4F, 0x7F, 0x80, 0x90, 0xBF, 0xC0])
    return bytes(b)


def test_demux_matches_the_python_reference() -> None:
    rng = random.Random(1)
    samples = [b"", b"\x00", b"\x80", b"\x80\xc8"]
    for first in range(256):
        for second in (0, 96, 191, 192, 200, 223, 224, 255):
            for length in (2, 7, 8, 11, 12, 19, 20, 40):
                samples.append(bytes([first, second]) + bytes(length - 2))
    samples += [rng.randbytes(rng.randrange(0, 64)) for _ in range(20000)]
    for data in samples:
        assert _cengine.classify(data) == classify(data), data[:4]


async def test_fuzz_at_full_rate_without_crash_or_growth(sockets: list[socket.socket]) -> None:
    rng = random.Random(2024)
    engine = CEngine()
    info = engine.open_socket("127.0.0.1", 0)
    sid, target = info.socket_id, info.local_addr
    delivered = [0]

    def deliver(batch: list[ControlPacket]) -> None:
        delivered[0] += len(batch)

    engine.start(deliver)
    try:
        senders = [udp() for _ in range(4)]
        sockets.extend(senders)
        sub = udp()
        sub.setblocking(False)
        sockets.append(sub)
        sessions = []
        for i, (s, profile) in enumerate(
            zip(
                senders[:2],
                [SrtpProfile.AES_CM_128_HMAC_SHA1_80, SrtpProfile.AEAD_AES_128_GCM],
                strict=True,
            )
        ):
            params, tx, _ = keys(rng, profile)
            engine.bind(i + 1, sid, s.getsockname())
            engine.set_srtp(i + 1, params)
            engine.add_producer(ProducerSpec(i + 1, 1000 + i, "video", 90000, cache_size=64))
            sessions.append((s, tx, 1000 + i))
        # senders[2] is a TURN server relaying a peer bound to transport 3
        relay_peer: Addr = ("192.0.2.77", 4000)
        engine.bind_channel(sid, senders[2].getsockname(), 0x4000, relay_peer)
        params3, tx3, _ = keys(rng, SrtpProfile.AES_CM_128_HMAC_SHA1_80)
        engine.bind(3, sid, relay_peer)
        engine.set_srtp(3, params3)
        sub_params, _, sub_rx = keys(rng, SrtpProfile.AEAD_AES_128_GCM)
        engine.set_destination(10, sid, sub.getsockname())
        engine.set_srtp(10, sub_params)
        engine.set_destination(11, sid, ("192.0.2.99", 9), RelayPath(senders[3].getsockname(), 1))
        engine.set_srtp(11, sub_params)
        for cid, (src, ssrc) in enumerate([(1, 1000), (2, 1001), (3, 1002)]):
            engine.add_consumer(ConsumerSpec(cid + 1, src, ssrc, 10, 50 + cid, 90000, 32))
            engine.add_consumer(ConsumerSpec(cid + 11, src, ssrc, 11, 60 + cid, 90000, 16))

        # a corpus: valid SRTP/SRTCP/STUN/DTLS/ChannelData, then mutations and noise
        corpus: list[tuple[int, bytes]] = []
        seq = 0
        for _ in range(1500):
            k = rng.randrange(2)
            s, tx, ssrc = sessions[k]
            seq += 1
            valid = tx.protect(rtp_packet(rng, rng.choice([ssrc, ssrc, 7]), seq & 0xFFFF))
            corpus.append((k, valid))
            corpus.append((k, mutate(rng, valid)))
            corpus.append((k, tx.protect_rtcp(struct.pack("!BBHI", 0x80, 201, 1, ssrc))))
            wrapped = tx3.protect(rtp_packet(rng, 1002, seq & 0xFFFF))
            corpus.append((2, struct.pack("!HH", 0x4000, len(wrapped)) + wrapped))
            corpus.append((2, mutate(rng, struct.pack("!HH", 0x4000, len(wrapped)) + wrapped)))
            corpus.append((3, rng.randbytes(rng.randrange(0, 200))))
            corpus.append((3, bytes([rng.randrange(4)]) + rng.randbytes(rng.randrange(19, 80))))
            corpus.append((rng.randrange(4), mutate(rng, b"\x16\xfe\xfd" + rng.randbytes(60))))

        def blast(rounds: int) -> int:
            n = 0
            for r in range(rounds):
                for k, data in corpus:
                    senders[k].sendto(data, target)
                    n += 1
                    if n % 256 == 0:
                        _drain(sub)
                if r % 2:
                    rng.shuffle(corpus)
            return n

        sent = blast(2)  # warm up: tables, caches, allocator
        await asyncio.sleep(0.05)
        gc.collect()
        before = rss()
        sent += blast(7)
        await asyncio.sleep(0.1)
        gc.collect()
        grown = rss() - before
        assert sent >= 100_000
        assert grown < 4 << 20, f"RSS grew by {grown} bytes"

        # still forwarding correctly
        _drain(sub)
        s, tx, ssrc = sessions[0]
        probe = struct.pack("!BBHII", 0x80, 96, (seq + 10) & 0xFFFF, 1, ssrc) + b"probe"
        deadline = time.monotonic() + 3
        got = None
        while got is None and time.monotonic() < deadline:
            s.sendto(tx.protect(probe), target)
            await asyncio.sleep(0.02)
            for data in _drain(sub):
                plain = sub_rx.unprotect(data)
                if plain.endswith(b"probe"):
                    got = plain
                    break
            probe = (
                probe[:2]
                + struct.pack("!H", (struct.unpack_from("!H", probe, 2)[0] + 1))
                + probe[4:]
            )
        assert got is not None
        stats = engine.stats()
        assert stats.datagrams_in > sent // 2
        assert stats.dropped_unknown > 0 and delivered[0] > 0
        t1 = engine.transport_stats(1)
        assert t1 is not None and t1.srtp_errors > 0 and t1.packets_in > 0
    finally:
        engine.stop()


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


async def test_start_stop_200_times_leaks_nothing() -> None:
    def cycle() -> None:
        engine = CEngine()
        info = engine.open_socket("127.0.0.1", 0)
        engine.set_srtp(
            1, SrtpParameters(SrtpProfile.AEAD_AES_128_GCM, *[bytes(16), bytes(12)] * 2)
        )
        engine.add_consumer(ConsumerSpec(1, 1, 5, 2, 6, 90000, cache_size=512))
        engine.start(lambda batch: None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00\x01" + bytes(18), info.local_addr)
        engine.stop()

    for _ in range(20):
        cycle()
    gc.collect()
    fds, before = open_fds(), rss()
    for _ in range(200):
        cycle()
    gc.collect()
    assert open_fds() == fds
    assert rss() - before < 2 << 20
    assert not [t for t in threading.enumerate() if t.name == "sfu-engine"]


async def test_control_queue_is_bounded_and_counts_drops(sockets: list[socket.socket]) -> None:
    engine = CEngine()
    info = engine.open_socket("127.0.0.1", 0)
    got: list[ControlPacket] = []
    engine.start(got.extend)
    try:
        s = udp()
        sockets.append(s)
        burst = _cengine.CTL_CAPACITY * 3
        for i in range(burst):  # the event loop is busy: nobody drains the queue meanwhile
            s.sendto(struct.pack("!HHI", 1, 0, i) + bytes(16), info.local_addr)
        deadline = time.monotonic() + 3
        while engine.stats().datagrams_in < burst and time.monotonic() < deadline:
            time.sleep(0.005)
        await asyncio.sleep(0.05)
        dropped = engine.counters().control_dropped
        assert engine.stats().datagrams_in == burst
        assert len(got) == _cengine.CTL_CAPACITY
        assert dropped == burst - _cengine.CTL_CAPACITY
        assert [struct.unpack_from("!I", p.data, 4)[0] for p in got] == list(range(len(got)))
        s.sendto(b"\x00\x01" + bytes(18), info.local_addr)  # the queue drains and recovers
        deadline = time.monotonic() + 3
        while len(got) == _cengine.CTL_CAPACITY and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert len(got) == _cengine.CTL_CAPACITY + 1
        assert engine.stats().control_delivered == len(got)
    finally:
        engine.stop()


async def test_table_churn(sockets: list[socket.socket]) -> None:
    """Thousands of transports, bindings and consumers added and removed in random order; the
    maps must then hold exactly what is live (checked through the public surface)."""
    rng = random.Random(5)
    engine = CEngine()
    info = engine.open_socket("127.0.0.1", 0)
    got: list[ControlPacket] = []
    engine.start(got.extend)
    try:
        live: dict[int, tuple[int, int]] = {}
        for cid in range(1, 3001):
            src, dst = rng.randrange(1, 400), rng.randrange(400, 800)
            engine.bind(src, info.socket_id, (f"10.0.{src // 250}.{src % 250}", 1000 + cid))
            engine.add_consumer(ConsumerSpec(cid, src, src * 7, dst, cid, 90000, cid % 3))
            live[cid] = (src, dst)
        # real senders on 127.0.0.x, each bound with fake neighbours around it
        real = []
        for i in range(150):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.0.{2 + i}", 0))
            sockets.append(s)
            real.append(s)
            engine.bind(10_000 + i, info.socket_id, s.getsockname())
            for j in range(5):
                engine.bind(10_000 + i, info.socket_id, (f"10.9.{i}.{j}", 7))
        for cid in rng.sample(sorted(live), 1500):
            engine.remove_consumer(cid)
            del live[cid]
        for tid in rng.sample(range(1, 800), 300):
            engine.remove_transport(tid)
            live = {c: sd for c, sd in live.items() if tid not in sd}
        gone = set(rng.sample(range(150), 60))
        for i in gone:
            engine.remove_transport(10_000 + i)
        for cid in range(1, 3001):
            engine.pause_consumer(cid, cid % 2 == 0)

        for cid in range(1, 3001):  # the consumer map holds exactly the live ids
            if cid in live:
                with pytest.raises(ValueError):
                    engine.add_consumer(ConsumerSpec(cid, 1, 1, 2, 2, 90000))
            else:
                engine.add_consumer(ConsumerSpec(cid, 1, 1, 2, 2, 90000))
                engine.remove_consumer(cid)
        outbound = 0
        for tid in range(400, 800):
            st = engine.transport_stats(tid)
            if st is not None:
                outbound += len(st.outbound)
        assert outbound >= len(live)

        # the binding map attributes each real sender to its transport, or to none
        for i, s in enumerate(real):
            s.sendto(struct.pack("!HHI", 1, 0, i) + bytes(16), info.local_addr)
        deadline = time.monotonic() + 3
        while len(got) < len(real) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        by_index = {struct.unpack_from("!I", p.data, 4)[0]: p.transport_id for p in got}
        assert by_index == {i: 0 if i in gone else 10_000 + i for i in range(len(real))}

        # a fresh route through the churned tables still forwards
        pub, sub = udp(), udp()
        sockets += [pub, sub]
        sub.settimeout(3)
        params, tx, _ = keys(rng, SrtpProfile.AES_CM_128_HMAC_SHA1_80)
        engine.bind(5000, info.socket_id, pub.getsockname())
        engine.set_srtp(5000, params)
        engine.set_destination(5001, info.socket_id, sub.getsockname())
        engine.set_srtp(5001, params)
        engine.add_consumer(ConsumerSpec(9999, 5000, 42, 5001, 43, 90000))
        pub.sendto(tx.protect(struct.pack("!BBHII", 0x80, 96, 1, 1, 42) + b"x"), info.local_addr)
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, sub.recv, 4096)
        assert struct.unpack_from("!I", data, 8)[0] == 43
    finally:
        engine.stop()


async def test_mutations_race_the_loop(sockets: list[socket.socket]) -> None:
    """A publisher floods while the control side rewires everything as fast as it can."""
    rng = random.Random(9)
    engine = CEngine()
    info = engine.open_socket("127.0.0.1", 0)
    engine.start(lambda batch: None)
    stop = threading.Event()
    pub = udp()
    subs = [udp() for _ in range(4)]
    sockets += [pub, *subs]
    params, tx, _ = keys(rng, SrtpProfile.AEAD_AES_128_GCM)
    packets = [
        tx.protect(struct.pack("!BBHII", 0x80, 96, i, i * 90, 77) + bytes(1000))
        for i in range(3000)
    ]

    def flood() -> None:
        while not stop.is_set():
            for p in packets:
                pub.sendto(p, info.local_addr)

    flooder = threading.Thread(target=flood)
    try:
        engine.bind(1, info.socket_id, pub.getsockname())
        engine.set_srtp(1, params)
        engine.add_producer(ProducerSpec(1, 77, "video", 90000))
        flooder.start()
        deadline = time.monotonic() + 1.0
        cid = 0
        extra: list[int] = []
        while time.monotonic() < deadline:
            for i, s in enumerate(subs):
                tid = 100 + i
                engine.set_destination(tid, info.socket_id, s.getsockname())
                engine.set_srtp(tid, params)
                cid += 1
                engine.add_consumer(ConsumerSpec(cid, 1, 77, tid, 500 + i, 90000, 64))
                engine.pause_consumer(cid, rng.random() < 0.3)
                engine.retransmit(cid, range(0, 3000, 97))
            engine.send_rtcp(100, struct.pack("!BBHI", 0x80, 201, 1, 1))
            engine.transport_stats(1)
            engine.transport_stats(100)
            if len(extra) < 8 and rng.random() < 0.2:
                extra.append(engine.open_socket("127.0.0.1", 0).socket_id)
            if extra and rng.random() < 0.2:
                engine.close_socket(extra.pop())
            for tid in range(100, 104):
                if rng.random() < 0.5:
                    engine.remove_transport(tid)
            await asyncio.sleep(0)
        stats = engine.stats()
        assert stats.datagrams_in > 1000 and stats.datagrams_out > 100
    finally:
        stop.set()
        if flooder.is_alive():
            flooder.join()
        engine.stop()
