"""Learning the SSRCs of simulcast streams from their MID/RID header extensions (RFC 8852),
on both engines: ``expect_rids`` arms a transport, and each new SSRC without a producer whose
first packets name a MID, RID or repaired RID is reported once to the listener."""

from __future__ import annotations

import asyncio
import random
import struct

import pylibsrtp
import pytest

from sfu.engine.base import (
    STREAM_REPORTS,
    ControlKind,
    ControlPacket,
    ProducerSpec,
    SdesExtensionIds,
    StreamAnnouncement,
)
from sfu.engine.rtpext import sdes_extensions
from tests.engine.test_engine_diff import Peer, Rig, new_engine, rtp
from tests.engine.test_engine_diff import rig as rig

IDS = SdesExtensionIds(mid=1, rid=2, repaired_rid=3)


def one_byte(*elements: tuple[int, bytes], pad: int = 0) -> bytes:
    body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements) + bytes(pad)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def two_byte(*elements: tuple[int, bytes], pad: int = 0) -> bytes:
    body = bytes(pad) + b"".join(bytes([i, len(v)]) + v for i, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0x1000, len(body) // 4) + body


def rtp_ext(ssrc: int, seq: int, ext: bytes, payload: bytes = b"\x10" * 20) -> bytes:
    """An RTP packet with the X bit and the extension block ``ext``."""
    return struct.pack("!BBHII", 0x90, 96, seq, seq * 3000, ssrc) + ext + payload


class Listened:
    def __init__(self) -> None:
        self.got: list[StreamAnnouncement] = []

    def __call__(self, a: StreamAnnouncement) -> None:
        self.got.append(a)


async def settle(rig: Rig, tid: int, n: int) -> None:
    """Wait until ``n`` packets came in, then for the control batch to reach the loop."""
    await rig.until_in(tid, n)
    await asyncio.sleep(0.05)  # the batch goes through call_soon_threadsafe / the ctl fd


async def test_one_and_two_byte_forms_are_reported_once(rig: Rig) -> None:
    e, heard = rig.engine, Listened()
    pub = rig.publisher(1)
    e.expect_rids(1, IDS, heard)
    pub.send_rtp(rig.addr, rtp_ext(0xA1, 1, one_byte((1, b"0"), (2, b"q"))))
    pub.send_rtp(rig.addr, rtp_ext(0xA1, 2, one_byte((1, b"0"), (2, b"q"))))  # same SSRC
    pub.send_rtp(rig.addr, rtp_ext(0xA2, 1, two_byte((2, b"h"), (1, b"0"), pad=3)))
    pub.send_rtp(rig.addr, rtp_ext(0xA3, 1, one_byte((3, b"f"), (1, b"video"), pad=2)))
    await settle(rig, 1, 4)
    assert heard.got == [
        StreamAnnouncement(1, 0xA1, "0", "q", ""),
        StreamAnnouncement(1, 0xA2, "0", "h", ""),
        StreamAnnouncement(1, 0xA3, "video", "", "f"),  # RTX of the "f" layer
    ]
    assert not [p for p in rig.control if p.kind is ControlKind.STREAM]  # not to deliver
    st = rig.stats(1)
    assert st.packets_in == 4 and set(st.inbound) == {0xA1, 0xA2, 0xA3}


async def test_producers_and_unarmed_transports_are_not_reported(rig: Rig) -> None:
    e, heard = rig.engine, Listened()
    pub, other = rig.publisher(1), rig.publisher(2)
    e.add_producer(ProducerSpec(1, 0xB1, "video", 90000))
    e.expect_rids(1, IDS, heard)
    pub.send_rtp(rig.addr, rtp_ext(0xB1, 1, one_byte((2, b"q"))))  # has a producer
    other.send_rtp(rig.addr, rtp_ext(0xB2, 1, one_byte((2, b"q"))))  # not armed
    pub.send_rtp(rig.addr, rtp_ext(0xB3, 1, one_byte((4, b"x"))))  # no wanted id
    pub.send_rtp(rig.addr, rtp(0xB4, 1, 0, b"plain"))  # no extension at all
    pub.send(rig.addr, rtp_ext(0xB5, 1, one_byte((2, b"q"))) + bytes(10))  # SRTP auth fails
    await settle(rig, 1, 3)
    await rig.until(lambda: rig.stats(1).srtp_errors == 1)
    assert heard.got == []
    # the SSRC that had no extension is still reported when one shows up later
    pub.send_rtp(rig.addr, rtp_ext(0xB4, 2, one_byte((2, b"h"))))
    await settle(rig, 1, 4)
    assert heard.got == [StreamAnnouncement(1, 0xB4, "", "h", "")]


GARBAGE = [
    struct.pack("!HH", 0xBEDE, 200) + b"\x10q",  # claims more than the packet has
    struct.pack("!HH", 0xBEDE, 1) + b"\x2f" + b"q" * 3,  # element longer than the block
    struct.pack("!HH", 0x1234, 1) + b"\x20q\x00\x00",  # unknown profile
    one_byte((2, b"q\x00")),  # not printable
    one_byte((2, b" q")),  # space
    struct.pack("!HH", 0xBEDE, 1) + b"\xf0\x20q\x00",  # id 15: stop before the rid
    struct.pack("!HH", 0x1000, 1) + b"\x02\x09qq",  # two-byte length past the end
    two_byte((2, b"r" * 33)),  # longer than SDES_MAX
    struct.pack("!HH", 0xBEDE, 0),  # empty block
]


@pytest.mark.parametrize("form", range(len(GARBAGE)))
def test_reference_parser_rejects_garbage(form: int) -> None:
    found = sdes_extensions(rtp_ext(1, 1, GARBAGE[form], b""), (1, 2, 3))
    assert found is None or found == ("", "", "")


async def test_garbage_extensions_report_nothing(rig: Rig) -> None:
    e, heard = rig.engine, Listened()
    pub = rig.publisher(1)
    e.expect_rids(1, IDS, heard)
    sent = 0
    for i, ext in enumerate(GARBAGE):
        sent += send_if_protectable(pub, rig, rtp_ext(0xC0 + i, 1, ext, b""))
    sent += send_if_protectable(pub, rig, struct.pack("!BBHII", 0x90, 96, 1, 0, 0xCF))
    pub.send_rtp(rig.addr, rtp_ext(0xD0, 1, one_byte((2, b"ok"))))
    assert sent >= len(GARBAGE) - 2
    await settle(rig, 1, sent + 1)
    assert heard.got == [StreamAnnouncement(1, 0xD0, "", "ok", "")]


def send_if_protectable(pub: Peer, rig: Rig, packet: bytes) -> int:
    """libsrtp refuses to protect some malformed headers (it reads the extension length)."""
    try:
        pub.send_rtp(rig.addr, packet)
    except pylibsrtp.Error:
        return 0
    return 1


async def test_reports_are_limited_per_arming(rig: Rig) -> None:
    e, heard = rig.engine, Listened()
    pub = rig.publisher(1)
    e.expect_rids(1, IDS, heard)
    flood = STREAM_REPORTS + 8
    for i in range(flood):
        pub.send_rtp(rig.addr, rtp_ext(0x1000 + i, 1, one_byte((2, b"q"))))
    await settle(rig, 1, flood)
    assert [a.ssrc for a in heard.got] == [0x1000 + i for i in range(STREAM_REPORTS)]
    e.expect_rids(1, IDS, heard)  # re-armed: the next new SSRCs are reported again
    for i in range(flood, flood + 2):
        pub.send_rtp(rig.addr, rtp_ext(0x1000 + i, 1, one_byte((2, b"h"))))
    await settle(rig, 1, flood + 2)
    assert [a.ssrc for a in heard.got[STREAM_REPORTS:]] == [0x1000 + flood, 0x1001 + flood]


async def test_remove_transport_forgets_the_listener(rig: Rig) -> None:
    e, heard = rig.engine, Listened()
    pub = rig.publisher(1)
    e.expect_rids(1, IDS, heard)
    e.remove_transport(1)
    e.bind(1, rig.socket_id, pub.addr)
    e.set_srtp(1, pub.params)
    pub.send_rtp(rig.addr, rtp_ext(0xE1, 1, one_byte((2, b"q"))))
    await settle(rig, 1, 1)
    assert heard.got == []


def test_announcement_round_trip() -> None:
    a = StreamAnnouncement(7, 0xDEADBEEF, "1", "hi", "")
    packet = ControlPacket(ControlKind.STREAM, 1, ("127.0.0.1", 5), a.encode(), 7)
    assert StreamAnnouncement.decode(packet) == a
    with pytest.raises(ValueError):
        StreamAnnouncement.decode(ControlPacket(ControlKind.RTCP, 1, ("127.0.0.1", 5), b"", 7))


def _value(rng: random.Random, longest: int) -> bytes:
    if rng.random() < 0.8:  # mostly a plausible token
        return bytes(rng.choice(b"abcqhf0123-_") for _ in range(rng.randrange(1, longest + 1)))
    return rng.randbytes(rng.randrange(1, longest + 1))


def _random_block(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        elems = [(rng.randrange(1, 16), _value(rng, 16)) for _ in range(rng.randrange(1, 4))]
        block = one_byte(*elems, pad=rng.randrange(3))
    else:
        elems = [(rng.randrange(1, 6), _value(rng, 40)) for _ in range(rng.randrange(1, 4))]
        block = two_byte(*elems, pad=rng.randrange(3))
    if rng.random() < 0.3:  # corrupt a byte now and then
        pos = rng.randrange(len(block))
        block = block[:pos] + bytes([rng.randrange(256)]) + block[pos + 1 :]
    return block


async def test_engines_agree_on_random_extensions() -> None:
    """The C parser and the reference agree on random (often malformed) extension blocks."""
    rng = random.Random(11)
    blocks = [_random_block(rng) for _ in range(STREAM_REPORTS * 2)]
    results = []
    for name in ("python", "cython"):
        engine = new_engine(name)
        r = Rig(engine, random.Random(7))
        info = engine.open_socket("127.0.0.1", 0)
        r.socket_id, r.addr = info.socket_id, info.local_addr
        engine.start(r.control.extend)
        try:
            heard = Listened()
            pub = r.publisher(1)
            sent = 0
            for chunk in range(2):
                engine.expect_rids(1, SdesExtensionIds(1, 2, 3), heard)
                part = blocks[chunk * STREAM_REPORTS : (chunk + 1) * STREAM_REPORTS]
                for i, block in enumerate(part):
                    sent += send_if_protectable(pub, r, rtp_ext(0x100 + chunk * 1000 + i, 1, block))
                await settle(r, 1, sent)
            results.append(heard.got)
        finally:
            engine.stop()
            for p in r.peers:
                p.sock.close()
    assert results[0] == results[1]
    assert len(results[0]) > STREAM_REPORTS // 2  # the test exercises reports, not only rejections
    for a in results[0]:
        i = (a.ssrc - 0x100) % 1000 + (a.ssrc - 0x100) // 1000 * STREAM_REPORTS
        packet = rtp_ext(a.ssrc, 1, blocks[i])
        assert sdes_extensions(packet, (1, 2, 3)) == (a.mid, a.rid, a.repaired_rid)
