"""A watcher's consumers: a mountpoint's feeds routed to the sending sections of its
PeerConnection, followed as they change, switched to another mountpoint, paused and resumed.

Each sending m-section gets one engine consumer from the feed of its media entry, writing the
section's SSRC and payload type. When a feed changes (a source restarted, a WHIP publisher came
back) or the watcher switches mountpoint, the consumer is replaced by one from the new feed on
the same SSRC: the engine keeps the sequence numbers and timestamps continuous, and a video
consumer's keyframe gate holds it until the new feed's next keyframe, which is requested at
once. The PeerConnection itself never changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiortc import rtp as artp

from sfu.engine.base import ConsumerSpec, Engine
from sfu.rtp import rtcp
from sfu.sdp.negotiate import NegotiatedMedia
from sfu.streaming.hub import NACK_CACHE, Feed, MediaHub
from sfu.streaming.model import Codec, MediaEntry, Mountpoint

__all__ = ["Route", "Viewer", "compatible"]

log = logging.getLogger(__name__)

_GATES: Final = {Codec.VP8: "vp8", Codec.VP9: "vp9", Codec.H264: "h264"}


def compatible(current: Mountpoint, other: Mountpoint) -> str | None:
    """Why a watcher of ``current`` cannot switch to ``other`` without renegotiating (None: it
    can): the same number of media, each of the same kind, codec and fmtp."""
    if len(current.media) != len(other.media):
        return (
            f"mountpoint {other.id} has {len(other.media)} media, "
            f"mountpoint {current.id} {len(current.media)}"
        )
    for i, (a, b) in enumerate(zip(current.media, other.media, strict=True)):
        if (a.kind, a.codec, a.fmtp) != (b.kind, b.codec, b.fmtp):
            return (
                f"media {i}: {b.codec.value} ({b.fmtp or 'no fmtp'}) on mountpoint {other.id}, "
                f"{a.codec.value} ({a.fmtp or 'no fmtp'}) on mountpoint {current.id}"
            )
    return None


@dataclass(frozen=True)
class Route:
    """A sending m-section and the media entry (by index) it carries."""

    section: NegotiatedMedia
    entry: int


@dataclass
class _Consumer:
    consumer_id: int
    feed: Feed
    route: Route


class Viewer:
    """The consumers of one watcher (see the module)."""

    def __init__(
        self,
        hub: MediaHub,
        engine: Engine,
        transport_id: int,
        mountpoint: Mountpoint,
        routes: Sequence[Route],
        on_feeds: Callable[[bool], None] = lambda live: None,
    ) -> None:
        self.hub = hub
        self.engine = engine  # the engine the watcher's transport lives on
        self.transport_id = transport_id
        self.mountpoint = mountpoint
        self.routes = list(routes)
        self.paused = False
        self.closed = False
        self.connected = False
        self.switches = 0
        self._on_feeds = on_feeds
        self._consumers: dict[int, _Consumer] = {}  # by section index
        self._unlisten = hub.listen(mountpoint.id, self._sync)
        self._live: bool | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("keyframe_requests_in", "nacks_in", "nack_seqs", "retransmitted", "resyncs"), 0
        )
        self._sync()

    # -- routing ---------------------------------------------------------------------------

    def _entry(self, route: Route) -> MediaEntry:
        return self.mountpoint.media[route.entry]

    def _sync(self) -> None:
        """Consumers for exactly the routes whose feed exists now."""
        if self.closed:
            return
        feeds = self.hub.feeds(self.mountpoint.id)
        for route in self.routes:
            index = route.section.index
            feed = feeds[route.entry] if route.entry < len(feeds) else None
            current = self._consumers.get(index)
            if current is not None and current.feed == feed:
                continue
            if current is not None:
                self.engine.remove_consumer(current.consumer_id)
                del self._consumers[index]
            if feed is not None:
                self._add(route, feed)
        live = any(c is not None for c in feeds)
        if live != self._live:
            self._live = live
            self._on_feeds(live)

    def _add(self, route: Route, feed: Feed) -> None:
        m = route.section
        if m.codec is None or m.send_ssrc is None:
            return
        entry = self._entry(route)
        cid = self.hub.next_consumer_id()
        video = entry.kind.value == "video"
        pt_out = m.codec.payload_type
        self.engine.add_consumer(
            ConsumerSpec(
                consumer_id=cid,
                src_transport=feed.transport_id,
                src_ssrc=feed.ssrc,
                dst_transport=self.transport_id,
                dst_ssrc=m.send_ssrc,
                clock_rate=feed.clock_rate,
                cache_size=NACK_CACHE if video else 0,
                payload_type_map=((feed.payload_type, pt_out),)
                if feed.payload_type != pt_out
                else (),
                keyframe_gate=_GATES.get(entry.codec, ""),
            )
        )
        if self.paused:
            self.engine.pause_consumer(cid, True)
        self._consumers[m.index] = _Consumer(cid, feed, route)
        self.counters["resyncs"] += 1
        if video and self.connected and not self.paused:
            self.hub.request_keyframe(self.mountpoint.id, route.entry)

    def _drop_all(self) -> None:
        for c in self._consumers.values():
            self.engine.remove_consumer(c.consumer_id)
        self._consumers.clear()

    # -- what the watcher asks -------------------------------------------------------------

    def on_connected(self) -> None:
        """ICE and DTLS are up: ask for keyframes (the gates wait for one)."""
        self.connected = True
        self._request_keyframes()

    def switch(self, mountpoint: Mountpoint, routes: Sequence[Route] | None = None) -> None:
        """Watch ``mountpoint`` instead (checked :func:`compatible` by the caller)."""
        self._unlisten()
        self._drop_all()
        self.mountpoint = mountpoint
        if routes is not None:
            self.routes = list(routes)
        self.switches += 1
        self._live = None
        self._unlisten = self.hub.listen(mountpoint.id, self._sync)
        self._sync()

    def pause(self) -> None:
        self.paused = True
        for c in self._consumers.values():
            self.engine.pause_consumer(c.consumer_id, True)

    def resume(self) -> None:
        self.paused = False
        for c in self._consumers.values():
            self.engine.pause_consumer(c.consumer_id, False)  # the gate closes again
        self._request_keyframes()

    def close(self) -> None:
        """Stop following the mountpoint; remove the consumers (if the transport still lives,
        else the engine dropped them with it)."""
        if self.closed:
            return
        self.closed = True
        self._unlisten()
        self._drop_all()

    def _request_keyframes(self) -> None:
        for c in self._consumers.values():
            if self._entry(c.route).kind.value == "video":
                self.hub.request_keyframe(self.mountpoint.id, c.route.entry)

    # -- RTCP from the watcher -------------------------------------------------------------

    def on_rtcp(self, packets: list[rtcp.RtcpItem]) -> None:
        by_ssrc = {c.route.section.send_ssrc: c for c in self._consumers.values()}
        for p in packets:
            if isinstance(p, artp.RtcpPsfbPacket) and p.fmt in (
                artp.RTCP_PSFB_PLI,
                artp.RTCP_PSFB_FIR,
            ):
                self.counters["keyframe_requests_in"] += 1
                target = by_ssrc.get(p.media_ssrc)
                if target is None and p.fmt == artp.RTCP_PSFB_FIR:
                    self._request_keyframes()  # FIR names its SSRCs in the FCI
                elif target is not None and not self.paused:
                    self.hub.request_keyframe(self.mountpoint.id, target.route.entry)
            elif isinstance(p, artp.RtcpRtpfbPacket) and p.fmt == artp.RTCP_RTPFB_NACK:
                self.counters["nacks_in"] += 1
                self.counters["nack_seqs"] += len(p.lost)
                target = by_ssrc.get(p.media_ssrc)
                if target is not None:
                    found = self.engine.retransmit(target.consumer_id, p.lost)
                    self.counters["retransmitted"] += found

    def stats(self) -> dict[str, Any]:
        return {
            "mountpoint": self.mountpoint.id,
            "paused": self.paused,
            "switches": self.switches,
            "consumers": [
                {
                    "mid": c.route.section.mid,
                    "entry": c.route.entry,
                    "src_transport": c.feed.transport_id,
                    "src_ssrc": c.feed.ssrc,
                    "dst_ssrc": c.route.section.send_ssrc,
                }
                for c in self._consumers.values()
            ],
            "rtcp": dict(self.counters),
        }
