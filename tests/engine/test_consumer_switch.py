"""Seamless source switches (``switch_consumer``) on both engines, and one scenario compared.

Real UDP sockets on 127.0.0.1 with the rig of tests/engine/test_engine_diff.py: a publisher
sends two or three simulcast-like layers (SSRCs on one transport, VP8 payloads) and a
subscriber checks, packet by packet, that the old layer keeps flowing until a keyframe of the
new one starts, that the switch happens exactly at that packet, and what continuity and NACK
look like around it. Packets of one publisher socket are handled in order, so the order of
what comes out is deterministic.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from sfu.engine.base import ConsumerSpec, ProducerSpec
from tests.engine.test_engine_diff import (
    ENGINES,
    Peer,
    Rig,
    StreamStats,
    header,
    new_engine,
    rtp,
)
from tests.engine.test_engine_diff import rig as _rig

rig = _rig  # the fixture: both engines

PUB, SUB = 1, 2
Q, H, F = 0xA0, 0xA1, 0xA2
OUT = 0x5150


def vp8(keyframe: bool, start: bool = True, tag: int = 0) -> bytes:
    """A VP8 payload (descriptor with a 15-bit picture id, then the payload header) and a tag
    byte that names the packet in assertions."""
    b0 = 0x80 | (0x10 if start else 0)
    return bytes([b0, 0x80, 0x80, 0x05, 0 if keyframe else 1, tag])


class Layers:
    """The publisher's layers: per-SSRC sequence numbers and 30 fps timestamps."""

    def __init__(self, rig: Rig, pub: Peer) -> None:
        self.rig, self.pub = rig, pub
        self.seq = {Q: 100, H: 20_000, F: 65_530}
        self.ts = {Q: 1_000, H: 5_000_000, F: 4_000_000_000}
        self.sent: dict[int, bytes] = {}  # tag -> plain packet

    def send(self, ssrc: int, tag: int, keyframe: bool = False, start: bool = True) -> None:
        seq, ts = self.seq[ssrc] & 0xFFFF, self.ts[ssrc] & 0xFFFFFFFF
        packet = rtp(ssrc, seq, ts, vp8(keyframe, start, tag))
        self.seq[ssrc] += 1
        self.ts[ssrc] += 3000
        self.sent[tag] = packet
        self.pub.send_rtp(self.rig.addr, packet)


def tags(packets: list[bytes]) -> list[int]:
    return [p[-1] for p in packets]


def setup(rig: Rig, layers: tuple[int, ...] = (Q, H), gate: str = "vp8") -> Layers:
    e = rig.engine
    pub = rig.publisher(PUB)
    for ssrc in layers:
        e.add_producer(ProducerSpec(PUB, ssrc, "video", 90000))
    e.add_consumer(ConsumerSpec(1, PUB, Q, SUB, OUT, 90000, cache_size=64, keyframe_gate=gate))
    return Layers(rig, pub)


async def test_old_layer_flows_until_the_new_keyframe(rig: Rig) -> None:
    e = rig.engine
    sub = rig.subscriber(SUB)
    lay = setup(rig)
    lay.send(Q, 1, keyframe=True)
    lay.send(Q, 2)
    assert tags(await sub.recv_rtp(2)) == [1, 2]
    assert e.switch_consumer(1, PUB, H, 90000) is True
    assert e.consumer_source(1) == (PUB, Q)  # pending: still on q
    lay.send(H, 10)  # a delta frame of h: not forwarded
    lay.send(Q, 3)  # q keeps flowing
    lay.send(H, 11, keyframe=True, start=False)  # inside a keyframe, not its start: no
    lay.send(Q, 4)
    lay.send(H, 12, keyframe=True)  # the switch, exactly here
    lay.send(Q, 5)  # q is no longer forwarded
    lay.send(H, 13)
    got = await sub.recv_rtp(4)
    assert tags(got) == [3, 4, 12, 13]
    assert e.consumer_source(1) == (PUB, H)
    assert {header(p).ssrc for p in got} == {OUT}
    seqs = [header(p).seq for p in got]
    assert seqs == [102, 103, 104, 105]  # continuous with what q sent (100, 101)
    assert header(got[3]).ts - header(got[2]).ts == 3000  # h's own spacing after the switch
    assert 0 < header(got[2]).ts - header(got[1]).ts < 90000  # forward, by the elapsed time
    await asyncio.sleep(0.05)
    assert sub.pending() == 0
    assert rig.stats(SUB).outbound[OUT].packets == 6


async def test_retarget_cancel_and_removed_target(rig: Rig) -> None:
    e = rig.engine
    sub = rig.subscriber(SUB)
    lay = setup(rig, (Q, H, F))
    lay.send(Q, 1, keyframe=True)
    assert tags(await sub.recv_rtp(1)) == [1]
    assert e.switch_consumer(1, PUB, H, 90000)
    assert e.switch_consumer(1, PUB, F, 90000)  # a second switch replaces the target
    lay.send(H, 10, keyframe=True)  # h is no longer the target
    lay.send(Q, 2)
    lay.send(F, 20, keyframe=True)
    lay.send(F, 21)
    assert tags(await sub.recv_rtp(3)) == [2, 20, 21]
    assert e.consumer_source(1) == (PUB, F)

    assert e.switch_consumer(1, PUB, H, 90000)
    assert e.switch_consumer(1, PUB, F, 90000)  # back to the current source: cancelled
    lay.send(H, 11, keyframe=True)
    lay.send(F, 22)
    assert tags(await sub.recv_rtp(1)) == [22]
    assert e.consumer_source(1) == (PUB, F)

    assert e.switch_consumer(1, PUB, Q, 90000)
    e.remove_producer(PUB, Q)  # the target's producer goes: cancelled
    lay.send(Q, 3, keyframe=True)
    lay.send(F, 23)
    assert tags(await sub.recv_rtp(1)) == [23]
    assert e.consumer_source(1) == (PUB, F)
    await rig.until(lambda: rig.stats(PUB).unrouted >= 2)  # h 11 and q 3 went nowhere

    assert e.switch_consumer(99, PUB, Q, 90000) is False
    assert e.consumer_source(99) is None
    await asyncio.sleep(0.05)
    assert sub.pending() == 0


async def test_removed_target_transport_cancels(rig: Rig) -> None:
    e = rig.engine
    sub = rig.subscriber(SUB)
    lay = setup(rig)
    other = rig.publisher(3)
    e.add_producer(ProducerSpec(3, 0xC0, "video", 90000))
    lay.send(Q, 1, keyframe=True)
    assert tags(await sub.recv_rtp(1)) == [1]
    assert e.switch_consumer(1, 3, 0xC0, 90000)
    e.remove_transport(3)
    other.send_rtp(rig.addr, rtp(0xC0, 1, 1, vp8(True, tag=30)))  # unknown now: dropped
    lay.send(Q, 2)
    assert tags(await sub.recv_rtp(1)) == [2]
    assert e.consumer_source(1) == (PUB, Q)
    # and a new switch still works afterwards
    assert e.switch_consumer(1, PUB, H, 90000)
    lay.send(H, 10, keyframe=True)
    assert tags(await sub.recv_rtp(1)) == [10]
    await rig.until(lambda: e.stats().dropped_unknown == 1)
    assert sub.pending() == 0


async def test_nack_served_across_the_switch(rig: Rig) -> None:
    e = rig.engine
    sub = rig.subscriber(SUB)
    lay = setup(rig)
    lay.send(Q, 1, keyframe=True)
    lay.send(Q, 2)
    before = await sub.recv(2)
    e.switch_consumer(1, PUB, H, 90000)
    lay.send(H, 10, keyframe=True)
    lay.send(H, 11)
    after = await sub.recv(2)
    by_seq = {header(d).seq: d for d in before + after}  # the RTP header is in the clear
    assert sorted(by_seq) == [100, 101, 102, 103]
    # what q sent before the switch and what h sent after it: the same bytes again
    assert e.retransmit(1, [101, 102, 103, 9]) == 3
    assert await sub.recv(3) == [by_seq[101], by_seq[102], by_seq[103]]
    # a second switch: the source before the last one is forgotten, the last one served
    e.switch_consumer(1, PUB, Q, 90000)
    lay.send(Q, 3, keyframe=True)
    (third,) = await sub.recv(1)
    assert header(third).seq == 104
    assert e.retransmit(1, [103, 104]) == 2
    assert await sub.recv(2) == [by_seq[103], third]
    assert e.retransmit(1, [101]) == 0  # sent from q two switches ago: not kept
    assert rig.stats(SUB).outbound[OUT].retransmitted == 5


async def test_paused_consumer_switches_at_a_keyframe_it_forwards(rig: Rig) -> None:
    e = rig.engine
    sub = rig.subscriber(SUB)
    lay = setup(rig)
    lay.send(Q, 1, keyframe=True)
    assert tags(await sub.recv_rtp(1)) == [1]
    e.switch_consumer(1, PUB, H, 90000)
    e.pause_consumer(1, True)
    lay.send(H, 10, keyframe=True)  # paused: not forwarded, so no switch
    await rig.until(lambda: rig.stats(PUB).packets_in == 2)
    assert e.consumer_source(1) == (PUB, Q)
    e.pause_consumer(1, False)  # the gate closes again on resume
    lay.send(Q, 2)  # a delta of q: held by the gate
    lay.send(H, 11, keyframe=True)  # opens the gate and switches
    lay.send(H, 12)
    assert tags(await sub.recv_rtp(2)) == [11, 12]
    assert e.consumer_source(1) == (PUB, H)


async def test_without_a_keyframe_codec_the_switch_is_immediate(rig: Rig) -> None:
    e = rig.engine
    sub = rig.subscriber(SUB)
    lay = setup(rig, gate="")
    lay.send(Q, 1)
    assert tags(await sub.recv_rtp(1)) == [1]
    assert e.switch_consumer(1, PUB, H, 48000)
    assert e.consumer_source(1) == (PUB, H)
    lay.send(Q, 2)
    lay.send(H, 10)  # a delta: forwarded, nothing to wait for
    got = await sub.recv_rtp(1)
    assert tags(got) == [10] and header(got[0]).seq == 101


async def test_switch_churn_under_load(rig: Rig) -> None:
    """Layers flood while the control side switches, cancels and removes at random: nothing
    breaks, and the consumer ends on the source it was last told to take."""
    rng = random.Random(3)
    e = rig.engine
    rig.subscriber(SUB)
    lay = setup(rig, (Q, H, F))
    stop = threading.Event()

    def flood() -> None:  # fresh packets (SRTP rejects replays), keyframes now and then
        k = 0
        while not stop.is_set():
            for ssrc in (Q, H, F):
                packet = rtp(ssrc, k & 0xFFFF, 3000 * k, vp8(k % 7 == 0, tag=k & 0xFF))
                lay.pub.sock.sendto(lay.pub.tx.protect(packet), rig.addr)
            k += 1
            time.sleep(0.0005)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        cid, extra = 1, 1000
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            op = rng.random()
            ssrc = rng.choice((Q, H, F, 0xDEAD))
            if op < 0.6:
                e.switch_consumer(cid, PUB, ssrc, 90000)
            elif op < 0.7:
                e.pause_consumer(cid, rng.random() < 0.5)
            elif op < 0.8:
                e.retransmit(cid, range(0, 65536, 4099))
            elif op < 0.9:
                e.remove_consumer(cid)
                cid += 1
                first = rng.choice((Q, H, F))
                e.add_consumer(ConsumerSpec(cid, PUB, first, SUB, OUT, 90000, 32, (), "vp8"))
            else:
                extra += 1
                e.add_consumer(ConsumerSpec(extra, PUB, ssrc, SUB, OUT + 1, 90000, 8))
                e.switch_consumer(extra, PUB, rng.choice((Q, H, F)), 90000)
                if ssrc == 0xDEAD:
                    e.remove_producer(PUB, ssrc)
                e.remove_consumer(extra)
            await asyncio.sleep(0)
        e.pause_consumer(cid, False)
        e.switch_consumer(cid, PUB, H, 90000)
        await rig.until(lambda: e.consumer_source(cid) == (PUB, H))
    finally:
        stop.set()
        flooder.join()
    assert rig.stats(SUB).packets_out > 0


# -- both engines, one scenario ------------------------------------------------------------------


async def _scenario(name: str) -> dict[str, Any]:
    engine = new_engine(name)
    r = Rig(engine, random.Random(11))
    info = engine.open_socket("127.0.0.1", 0)
    r.socket_id, r.addr = info.socket_id, info.local_addr
    engine.start(r.control.extend)
    try:
        sub = r.subscriber(SUB)
        lay = setup(r, (Q, H, F))
        engine.add_consumer(ConsumerSpec(2, PUB, Q, SUB, OUT + 1, 90000))  # a plain one too
        plan: list[tuple[str, Any]] = [
            ("send", (Q, 1, True)),
            ("send", (Q, 2, False)),
            ("switch", H),
            ("send", (H, 10, False)),
            ("send", (Q, 3, False)),
            ("switch", F),
            ("send", (H, 11, True)),
            ("send", (F, 20, True)),
            ("send", (Q, 4, False)),
            ("send", (F, 21, False)),
            ("switch", Q),
            ("switch", F),
            ("send", (Q, 5, True)),
            ("send", (F, 22, False)),
            ("switch", H),
            ("send", (H, 12, True)),
            ("send", (H, 13, False)),
        ]
        outputs = sent = 0
        results = []
        for what, arg in plan:
            if what == "switch":
                await r.until_in(PUB, sent)  # what was sent before is handled before
                results.append(engine.switch_consumer(1, PUB, arg, 90000))
                continue
            ssrc, tag, key = arg
            lay.send(ssrc, tag, key)
            sent += 1
            outputs += 1 if ssrc == Q else 0
        got = [sub.rx.unprotect(d) for d in await sub.recv(8 + outputs)]
        mine = [p for p in got if header(p).ssrc == OUT]
        found = engine.retransmit(1, [header(p).seq for p in mine])
        await sub.recv(found)
        st = r.stats(SUB)
        return {
            "forwarded": [(header(p).seq, header(p).pt, p[12:]) for p in mine],
            "plain": [(header(p).seq, p[-1]) for p in got if header(p).ssrc == OUT + 1],
            "found": found,
            "results": results,
            "source": engine.consumer_source(1),
            "outbound": {k: _steady(v) for k, v in st.outbound.items()},
            "pub": (r.stats(PUB).packets_in, r.stats(PUB).unrouted),
        }
    finally:
        engine.stop()
        for p in r.peers:
            p.sock.close()


def _steady(s: StreamStats) -> StreamStats:
    return StreamStats(s.ssrc, s.packets, s.bytes, retransmitted=s.retransmitted)


async def test_engines_agree_on_switches() -> None:
    reference = await _scenario("python")
    compiled = await _scenario("cython")
    assert compiled == reference
    assert [p[2][-1] for p in reference["forwarded"]] == [1, 2, 3, 20, 21, 22, 12, 13]
    assert [f[0] for f in reference["forwarded"]] == list(range(100, 108))
    assert reference["source"] == (PUB, H)
    assert reference["found"] == 5  # what f and h sent: q's packets were two switches ago


@pytest.mark.parametrize("name", ENGINES)
def test_engine_has_the_switch_surface(name: str) -> None:
    engine = new_engine(name)
    assert callable(engine.switch_consumer) and callable(engine.consumer_source)
