"""Mountpoint sources feeding a watcher through the real engine, in-process, on 127.0.0.1.

The registry builds sources through the media hub; a :class:`~sfu.streaming.viewer.Viewer`
routes them to a "watcher" transport whose destination is a UDP socket here holding the SRTP
keys (as in tests/engine). What the watcher receives is depayloaded and decoded with PyAV.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc.codecs.h264 import h264_depayload
from aiortc.codecs.vpx import vp8_depayload

from sfu.apps.streaming import watch_sections
from sfu.dtls.certificate import Certificate
from sfu.engine.base import ControlPacket, IngestEngine
from sfu.engine.keyframe import starts_keyframe
from sfu.streaming.hub import MediaHub
from sfu.streaming.model import ErrorCode, Mountpoint, StreamingError, parse_mountpoint
from sfu.streaming.registry import Credentials, MountpointRegistry
from sfu.streaming.store import MountpointStore
from sfu.streaming.viewer import Route, Viewer
from sfu.webrtc.server import MediaSettings, WebRtcServer
from sfu.webrtc.transport import TransportConfig
from tests.engine.test_engine_diff import AES_CM, ENGINES, Peer, header, new_engine, rtp
from tests.streaming import make_media_file
from tests.streaming.test_media_engine import vp8

PORT_MIN, PORT_MAX = 29300, 29319
WATCHER_TID = 9000
ADMIN = Credentials()


@dataclass
class Rig:
    engine: IngestEngine
    hub: MediaHub
    registry: MountpointRegistry
    socket_id: int
    watcher: Peer
    control: list[ControlPacket] = field(default_factory=list)
    viewers: list[Viewer] = field(default_factory=list)

    async def create(self, body: dict[str, Any]) -> Mountpoint:
        return await self.registry.create(parse_mountpoint(body), ADMIN)

    def view(self, mp: Mountpoint) -> Viewer:
        """A watcher of ``mp``: its sections as the server offers them, all accepted."""
        routes = [Route(m, i) for i, m in enumerate(watch_sections(mp))]
        viewer = Viewer(self.hub, self.engine, WATCHER_TID, mp, routes)
        self.viewers.append(viewer)
        return viewer

    async def receive(
        self, until: Callable[[list[bytes]], bool], timeout: float = 5
    ) -> list[bytes]:
        """Unprotected RTP the watcher got, until ``until(packets)`` holds."""
        loop = asyncio.get_running_loop()
        got: list[bytes] = []

        async def collect() -> None:
            while not until(got):
                data = await loop.sock_recv(self.watcher.sock, 4096)
                if data[1] & 0x7F < 72 or data[1] & 0x7F > 79:  # not RTCP
                    got.append(self.watcher.rx.unprotect(data))

        await asyncio.wait_for(collect(), timeout)
        return got


@pytest.fixture(params=ENGINES)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    engine = new_engine(request.param)
    assert isinstance(engine, IngestEngine)
    webrtc = WebRtcServer(engine, MediaSettings())
    hub = MediaHub(engine, webrtc, Certificate.generate(), TransportConfig())
    registry = MountpointRegistry(
        store=MountpointStore(":memory:"),
        rtp_port_min=PORT_MIN,
        rtp_port_max=PORT_MAX,
        source_factory=hub.make_source,
    )
    info = engine.open_socket("127.0.0.1", 0)
    r = Rig(engine, hub, registry, info.socket_id, Peer(AES_CM, random.Random(3)))
    engine.start(r.control.extend)
    engine.set_destination(WATCHER_TID, info.socket_id, r.watcher.addr)  # the watcher is ready
    engine.set_srtp(WATCHER_TID, r.watcher.params)
    try:
        yield r
    finally:
        for viewer in r.viewers:
            viewer.close()
        await registry.close()
        engine.stop()
        r.watcher.sock.close()


def frames_of(packets: list[bytes], ssrc: int) -> list[tuple[int, bytes]]:
    """VP8 frames (timestamp, data) reassembled from one SSRC's packets, in order."""
    out: list[tuple[int, bytes]] = []
    for p in packets:
        h = header(p)
        if h.ssrc != ssrc:
            continue
        data = vp8_depayload(p[12:])
        if out and out[-1][0] == h.ts:
            out[-1] = (h.ts, out[-1][1] + data)
        else:
            out.append((h.ts, data))
    return out


async def test_rtp_source_follows_disable_and_enable(rig: Rig) -> None:
    mp = await rig.create(
        {"id": 5, "media": [{"mid": "v", "codec": "VP8", "source": {"type": "rtp"}}]}
    )
    port = mp.media[0].source.port  # type: ignore[union-attr]
    assert PORT_MIN <= port <= PORT_MAX
    viewer = rig.view(mp)
    section = viewer.routes[0].section
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for k in range(4):  # a delta frame first: held back by the keyframe gate
            sender.sendto(rtp(0xAB, 10 + k, 3000 * k, vp8(keyframe=k == 1)), ("127.0.0.1", port))
        got = await rig.receive(lambda g: len(g) >= 3)
        heads = [header(p) for p in got]
        assert {(h.ssrc, h.pt) for h in heads} == {(section.send_ssrc, 96)}
        assert [h.seq for h in heads] == [11, 12, 13] and starts_keyframe("vp8", got[0])
        info = rig.registry.describe(5, admin=True)
        assert info["stats"]["media"][0]["packets"] == 4

        await rig.registry.disable(5, ADMIN)
        assert rig.hub.feeds(5) == () and viewer.stats()["consumers"] == []
        await rig.registry.enable(5, ADMIN)  # a new source, a new ingest transport
        assert viewer.stats()["consumers"][0]["src_transport"] == rig.hub.feeds(5)[0].transport_id  # type: ignore[union-attr]
        for k in range(3):
            sender.sendto(
                rtp(0xCD, 900 + k, 50 + 3000 * k, vp8(keyframe=k == 0)), ("127.0.0.1", port)
            )
        later = [header(p) for p in await rig.receive(lambda g: len(g) >= 3)]
        assert [h.seq for h in later] == [14, 15, 16]  # the watcher's sequence goes on
    finally:
        sender.close()


async def test_srtp_profiles_the_engine_lacks_are_refused(rig: Rig) -> None:
    key = base64.b64encode(bytes(30)).decode()
    body = {
        "media": [
            {
                "codec": "opus",
                "source": {
                    "type": "rtp",
                    "srtp": {"profile": "AES_CM_128_HMAC_SHA1_32", "key": key},
                },
            }
        ]
    }
    with pytest.raises(StreamingError) as err:
        await rig.create(body)
    assert err.value.code is ErrorCode.SOURCE_FAILED
    assert "AES_CM_128_HMAC_SHA1_32 is not supported" in err.value.reason
    assert rig.registry.mountpoints() == [] and rig.registry.ports.in_use() == {}


async def test_test_source_is_decodable_and_makes_keyframes_on_request(rig: Rig) -> None:
    video = {"type": "test", "pattern": "testsrc", "width": 96, "height": 64, "fps": 30}
    mp = await rig.create(
        {
            "id": 6,
            "media": [
                {"codec": "VP8", "source": video},
                {"codec": "opus", "source": {"type": "test", "tone_hz": 1000}},
            ],
        }
    )
    viewer = rig.view(mp)
    viewer.on_connected()  # asks for a keyframe
    vssrc = viewer.routes[0].section.send_ssrc
    assert vssrc is not None

    started = asyncio.get_running_loop().time()
    got = await rig.receive(lambda g: len(frames_of(g, vssrc)) >= 10)
    assert starts_keyframe("vp8", next(p for p in got if header(p).ssrc == vssrc))
    # the first keyframe, and maybe the one on_connected asked for if it came a frame late
    keyframes = rig.registry.describe(6, admin=True)["stats"]["media"][0]["keyframes"]
    assert keyframes in (1, 2)
    # a keyframe on request (at most one every 0.5 s; the encoder's own interval is 2 s)
    await asyncio.sleep(0.6)
    rig.hub.request_keyframe(6, 0)

    def keyframe(g: list[bytes]) -> bool:
        return any(header(p).ssrc == vssrc and starts_keyframe("vp8", p) for p in g)

    more = await rig.receive(keyframe)
    assert asyncio.get_running_loop().time() - started < 1.9
    stats = rig.registry.describe(6, admin=True)["stats"]["media"][0]
    assert stats["keyframes"] == keyframes + 1
    got += more + await rig.receive(lambda g: len(frames_of(got + more + g, vssrc)) >= 40)
    decoder = av.CodecContext.create("vp8", "r")
    pictures = [f for _, data in frames_of(got, vssrc) for f in decoder.decode(av.Packet(data))]
    assert len(pictures) >= 40 and (pictures[0].width, pictures[0].height) == (96, 64)
    audio = [p for p in got if header(p).ssrc != vssrc]
    assert len(audio) >= 40 and {header(p).pt for p in audio} == {111}
    opus = av.CodecContext.create("opus", "r")
    samples = sum(f.samples for p in audio[:10] for f in opus.decode(av.Packet(p[12:])))
    assert samples == 10 * 960


async def test_file_source_loops_with_continuous_timestamps(rig: Rig, tmp_path: Path) -> None:
    clip = make_media_file(tmp_path / "clip.webm")  # 5 frames at 10 frames/s, 0.2 s of audio
    src = {"type": "file", "path": str(clip)}
    mp = await rig.create(
        {"id": 7, "media": [{"codec": "VP8", "source": src}, {"codec": "opus", "source": src}]}
    )
    viewer = rig.view(mp)
    vssrc = viewer.routes[0].section.send_ssrc
    assert vssrc is not None
    got = await rig.receive(lambda g: len(frames_of(g, vssrc)) >= 12)
    stamps = [ts for ts, _ in frames_of(got, vssrc)]
    steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(stamps)]
    assert all(0 < s <= 2 * 9000 for s in steps), steps  # 10 frames/s, gaps at loops < 2 frames
    stats = rig.registry.describe(7, admin=True)["stats"]
    assert stats["loops"] >= 2 and stats["finished"] is False and stats["error"] is None


async def test_a_file_played_once_finishes(rig: Rig, tmp_path: Path) -> None:
    clip = make_media_file(tmp_path / "once.webm", audio=None)
    await rig.create(
        {
            "id": 8,
            "media": [
                {"codec": "VP8", "source": {"type": "file", "path": str(clip), "loop": False}}
            ],
        }
    )
    for _ in range(100):
        stats = rig.registry.describe(8, admin=True)["stats"]
        if stats["finished"]:
            break
        await asyncio.sleep(0.05)
    assert stats["finished"] and stats["loops"] == 0
    assert stats["media"][0]["frames"] == 5


async def test_feeds_reach_listeners_and_streams_stop_with_the_mountpoint(rig: Rig) -> None:
    seen: list[tuple[Any, ...]] = []
    unlisten = rig.hub.listen(9, lambda: seen.append(rig.hub.feeds(9)))
    mp = await rig.create({"id": 9, "media": [{"codec": "opus", "source": {"type": "test"}}]})
    assert len(seen) == 1 and seen[0][0] is not None
    ingest = seen[0][0].transport_id
    assert rig.engine.transport_stats(ingest) is not None
    await rig.registry.destroy(mp.id, ADMIN)
    assert seen[-1] == ()
    assert rig.engine.transport_stats(ingest) is None  # the ingest transport is gone
    unlisten()
    await rig.create({"id": 9, "media": [{"codec": "opus", "source": {"type": "test"}}]})
    assert len(seen) == 2


async def test_h264_mp4_file_is_decodable(rig: Rig, tmp_path: Path) -> None:
    """MP4 keeps H.264 as AVCC with the parameter sets in avcC: what goes out is Annex B with
    SPS and PPS in front of the keyframe, which a decoder that never saw the file can read."""
    clip = make_media_file(tmp_path / "clip.mp4", video="libx264", audio=None)
    mp = await rig.create(
        {"id": 10, "media": [{"codec": "H264", "source": {"type": "file", "path": str(clip)}}]}
    )
    viewer = rig.view(mp)
    vssrc = viewer.routes[0].section.send_ssrc
    got = await rig.receive(lambda g: sum(header(p).marker for p in g) >= 5)
    assert starts_keyframe("h264", got[0]) and all(header(p).ssrc == vssrc for p in got)
    decoder = av.CodecContext.create("h264", "r")
    pictures = []
    unit = b""
    for p in got:
        unit += h264_depayload(p[12:])  # an FU-A continuation is just data: glue a whole unit
        if header(p).marker:
            pictures += decoder.decode(av.Packet(unit))
            unit = b""
    pictures += decoder.decode(None)
    assert len(pictures) >= 4 and (pictures[0].width, pictures[0].height) == (64, 48)


# -- multicast (in a network namespace: multicast must not leave this machine) -----------------


async def _multicast_main() -> dict[str, Any]:
    """Inside a namespace with eth0 on 10.77.0.1/24: an RTP mountpoint on a multicast group
    joined on eth0 gets what a sender multicasts there."""
    from sfu.engine.pyengine import PyEngine

    engine = PyEngine()
    hub = MediaHub(
        engine, WebRtcServer(engine, MediaSettings()), Certificate.generate(), TransportConfig()
    )
    registry = MountpointRegistry(
        rtp_port_min=PORT_MIN, rtp_port_max=PORT_MAX, source_factory=hub.make_source
    )
    engine.start(lambda batch: None)
    out: dict[str, Any] = {}
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        source = {"type": "rtp", "port": 29450, "multicast": "239.7.7.7", "iface": "eth0"}
        await registry.create(
            parse_mountpoint({"id": 3, "media": [{"codec": "opus", "source": source}]}), ADMIN
        )
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.77.0.1"))
        for k in range(5):
            sender.sendto(rtp(0x42, k, 960 * k, b"m", pt=111), ("239.7.7.7", 29450))
        await asyncio.sleep(0.3)
        out["stats"] = registry.describe(3, admin=True)["stats"]
        bad = {"type": "rtp", "port": 29451, "multicast": "239.7.7.8", "iface": "nope0"}
        try:
            await registry.create(
                parse_mountpoint({"id": 4, "media": [{"codec": "opus", "source": bad}]}), ADMIN
            )
        except StreamingError as e:
            out["refused"] = e.reason
    finally:
        sender.close()
        await registry.close()
        engine.stop()
    return out


def test_multicast_ingest() -> None:
    from tests.support import add_address, need_netns, netns, run_json

    need_netns()
    with netns("mc") as ns:
        add_address(ns, "10.77.0.1/24")
        result = run_json(ns, [sys.executable, "-m", "tests.streaming.test_media_sources"], 30)
    assert result["stats"]["media"][0]["packets"] == 5, result
    assert "no interface 'nope0'" in result["refused"]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_multicast_main())), flush=True)
