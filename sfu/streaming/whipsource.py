"""The ``whip`` source: one WHIP publisher (RFC 9725) at a time pushes a mountpoint's media.

The HTTP side is :mod:`sfu.streaming.whip`; this is the media side. A publisher's offer is
answered receive-only with only the mountpoint's codecs (so a browser offering VP8, VP9 and
H.264 sends the one the mountpoint forwards), no header extensions (watchers get none), and
its streams become the mountpoint's feeds: each media entry takes the first offered section of
its kind and codec not taken yet, its primary SSRC (the offer must list SSRCs; simulcast is not
taken). When the publisher goes (DELETE, ICE failure, consent lost), the feeds are empty until
the next one comes; watchers stay and get the new publisher's media, continuity kept.

Keyframes: a watcher's request becomes a PLI to the publisher, at most one every 0.5 s per
stream.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

from sfu.apps.base import AppError
from sfu.engine.base import ProducerSpec
from sfu.rtp import rtcp
from sfu.sdp.capabilities import VIDEO_FEEDBACK, CodecCapability, RouterCapabilities
from sfu.sdp.negotiate import NegotiatedMedia
from sfu.streaming.hub import Feed, MediaHub, StreamSource
from sfu.streaming.model import Codec, MediaEntry, Mountpoint, WhipSource
from sfu.streaming.trickle import CandidateCollector
from sfu.webrtc.peer import Peer

__all__ = ["WhipStreamSource", "entry_caps", "match_sections"]

log = logging.getLogger(__name__)

PLI_MIN_INTERVAL: Final = 0.5
ANSWER_GRACE: Final = 0.5  # seconds beyond the withholding timeout to wait for our candidates


def entry_caps(media: tuple[MediaEntry, ...]) -> RouterCapabilities:
    """What a peer may send or receive for these media entries: their codecs only."""
    codecs = []
    for entry in media:
        match = (("packetization-mode", "1"),) if entry.codec is Codec.H264 else ()
        codecs.append(
            CodecCapability(
                entry.kind.value,
                entry.codec.value,
                entry.clock_rate,
                2 if entry.codec is Codec.OPUS else None,
                match_params=match,
                feedback=VIDEO_FEEDBACK if entry.kind.value == "video" else (),
            )
        )
    return RouterCapabilities(codecs=tuple(dict.fromkeys(codecs)), header_extensions={})


def match_sections(
    media: tuple[MediaEntry, ...], sections: list[NegotiatedMedia], *, sending: bool
) -> list[NegotiatedMedia | None]:
    """For each media entry, the first negotiated section of its kind and codec not taken by an
    earlier entry that carries something in the wanted direction (None: no such section)."""
    taken: set[int] = set()
    out: list[NegotiatedMedia | None] = []
    for entry in media:
        found = None
        for m in sections:
            if m.index in taken or m.codec is None or m.kind != entry.kind.value:
                continue
            if m.codec.name.lower() != entry.codec.value.lower():
                continue
            if (m.send_ssrc is None) if sending else not m.recv_ssrcs:
                continue
            found = m
            taken.add(m.index)
            break
        out.append(found)
    return out


@dataclass
class _Publisher:
    resource: str
    peer: Peer
    created: float = field(default_factory=time.time)
    connected: bool = False
    last_pli: dict[int, float] = field(default_factory=dict)
    plis: int = 0


class WhipStreamSource(StreamSource):
    """Media pushed by a WHIP publisher."""

    type_name = "whip"

    def __init__(self, hub: MediaHub, mountpoint: Mountpoint) -> None:
        super().__init__(hub, mountpoint)
        self.publisher: _Publisher | None = None
        self.publishes = 0

    @property
    def token(self) -> str | None:
        src = self.mountpoint.media[0].source
        return src.token if isinstance(src, WhipSource) else None

    async def _start(self) -> None:
        pass  # nothing to open: the media comes when a publisher does

    async def _stop(self) -> None:
        self.unpublish(None, "mountpoint stopped")

    async def publish(self, offer: str) -> tuple[str, str]:
        """Take a publisher's SDP offer: (resource id, SDP answer with the server's
        candidates). AppError when refused."""
        if self.publisher is not None:
            raise AppError(409, f"mountpoint {self.mountpoint.id} already has a WHIP publisher")
        if not self.running:
            raise AppError(409, f"mountpoint {self.mountpoint.id} is not running")
        resource = secrets.token_urlsafe(12)
        collector = CandidateCollector(f"WHIP mountpoint {self.mountpoint.id} {resource}")
        ctx = self.hub.context(collector.name, collector)
        holder: list[_Publisher] = []
        peer = Peer(
            ctx,
            on_rtcp=lambda packets: None,
            on_connected=lambda: self._on_connected(holder),
            on_closed=lambda reason: self._on_closed(holder, reason),
        )
        media = self.mountpoint.media
        answer = peer.accept_offer(
            offer, send=lambda m: False, recv=lambda m: True, caps=entry_caps(media)
        )
        sections = match_sections(media, peer.media, sending=False)
        if not any(sections):
            peer.close("nothing the mountpoint takes")
            wanted = ", ".join(f"{m.kind.value} {m.codec.value}" for m in media)
            raise AppError(422, f"the offer sends none of the mountpoint's media ({wanted})")
        publisher = _Publisher(resource, peer)
        holder.append(publisher)
        self.publisher = publisher
        self.publishes += 1
        assert peer.transport is not None
        tid = peer.transport.id
        feeds: list[Feed | None] = []
        for entry, m in zip(media, sections, strict=True):
            if m is None or m.codec is None:
                feeds.append(None)
                continue
            ssrc = m.recv_ssrcs[0]
            self.hub.engine.add_producer(ProducerSpec(tid, ssrc, m.kind, m.codec.clock_rate))
            feeds.append(Feed(tid, ssrc, m.codec.payload_type, entry.clock_rate))
        self._set_feeds(feeds)
        log.info("mountpoint %d: WHIP publisher %s", self.mountpoint.id, resource)
        timeout = self.hub.transport_config.withhold_timeout + ANSWER_GRACE
        return resource, await collector.answer(answer, timeout)

    def unpublish(self, resource: str | None, reason: str = "publisher left") -> bool:
        """End the publisher (``resource`` None: whoever it is); False when there is none."""
        publisher = self.publisher
        if publisher is None or (resource is not None and resource != publisher.resource):
            return False
        publisher.peer.close(reason)  # -> _on_closed
        return True

    def add_candidate(self, resource: str, candidate: dict[str, Any] | None) -> bool:
        publisher = self.publisher
        if publisher is None or publisher.resource != resource:
            return False
        publisher.peer.add_remote_candidate(candidate)
        return True

    def _on_connected(self, holder: list[_Publisher]) -> None:
        if holder:
            holder[0].connected = True
            for index, feed in enumerate(self._feeds):  # watchers may be waiting already
                if feed is not None:
                    self.request_keyframe(index)

    def _on_closed(self, holder: list[_Publisher], reason: str) -> None:
        if not holder or self.publisher is not holder[0]:
            return
        self.publisher = None
        log.info("mountpoint %d: WHIP publisher gone (%s)", self.mountpoint.id, reason)
        self._set_feeds([None] * len(self.mountpoint.media))

    def request_keyframe(self, index: int) -> None:
        publisher = self.publisher
        if publisher is None or not publisher.connected or not 0 <= index < len(self._feeds):
            return
        feed = self._feeds[index]
        if feed is None or self.mountpoint.media[index].codec is Codec.OPUS:
            return
        now = time.monotonic()
        if now - publisher.last_pli.get(feed.ssrc, -1e9) < PLI_MIN_INTERVAL:
            return
        publisher.last_pli[feed.ssrc] = now
        publisher.plis += 1
        publisher.peer.send_rtcp(rtcp.pli(publisher.peer.rtcp_ssrc, feed.ssrc))

    def stats(self) -> dict[str, Any]:
        out = {**super().stats(), "publishes": self.publishes, "publisher": None}
        p = self.publisher
        if p is not None:
            peer = p.peer.stats()
            out["publisher"] = {
                "resource": p.resource,
                "since": p.created,
                "connected": p.connected,
                "plis": p.plis,
                "state": peer.get("state"),
                "media": peer.get("media"),
            }
        return out
