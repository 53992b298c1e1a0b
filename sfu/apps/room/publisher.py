"""A participant's own handle: in the room from ``join`` to ``leave``, publishing when it offers.

The client offers its audio and video (sendonly); the server answers recvonly and adds one
engine producer per track. Keyframe requests and bandwidth estimates from the subscribers reach
the publisher through here, as PLI and REMB on its PeerConnection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from sfu.apps.base import AppContext, AppError
from sfu.apps.room.feedback import BitrateEstimates, KeyframeGate
from sfu.apps.room.model import RoomError, Source, Track
from sfu.engine.base import ProducerSpec
from sfu.rtp import rtcp
from sfu.sdp.description import RemoteMedia
from sfu.webrtc.peer import Peer

if TYPE_CHECKING:
    from sfu.apps.room.app import RoomApp

PUBLISHED_KINDS = ("audio", "video")


class PublisherSession:
    def __init__(self, app: RoomApp, ctx: AppContext, room: str, participant_id: str) -> None:
        self.app = app
        self.ctx = ctx
        self.room = room
        self.participant_id = participant_id
        self.peer: Peer | None = None
        self.tracks: tuple[Track, ...] = ()
        self.keyframes = KeyframeGate()
        self.estimates = BitrateEstimates()
        self._generation = 0
        self._pli_timer: asyncio.TimerHandle | None = None
        self._remb_task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("keyframe_requests", "plis_sent", "rembs_out"), 0
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.room, self.participant_id)

    @property
    def publishing(self) -> bool:
        return self.peer is not None and not self.peer.closed

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, sdp: str) -> str:
        """Answer the client's offer (recvonly) and announce its tracks; returns the answer."""
        self.app.rooms.check_publish(self.room, self.participant_id)
        if self.publishing:
            raise AppError(409, "already publishing: unpublish first")
        self._generation += 1
        generation = self._generation
        peer = Peer(
            self.ctx,
            on_rtcp=lambda packets: None,  # publishers send reports only; the Peer reads them
            on_connected=lambda: None,
            on_closed=lambda reason: self._on_closed(generation, reason),
        )
        limit = self.app.rooms.policy.max_tracks
        taken: list[str] = []

        def recv(m: RemoteMedia) -> bool:
            if m.kind not in PUBLISHED_KINDS or len(taken) >= limit:
                return False
            taken.append(m.mid)
            return True

        answer = peer.accept_offer(sdp, send=lambda m: False, recv=recv)
        assert peer.transport is not None
        tid = peer.transport.id
        tracks = tuple(
            Track(m.mid, m.kind, m.codec, Source(tid, m.recv_ssrcs[0]), m.extensions)
            for m in peer.media
            if m.codec is not None and m.recv_ssrcs and m.direction in ("recvonly", "sendrecv")
        )
        try:
            events = self.app.rooms.publish(self.room, self.participant_id, tracks)
        except RoomError as exc:
            self._generation += 1  # the closing peer is not the published one
            peer.close("refused")
            if exc.code == 422:
                raise RoomError(
                    422,
                    "nothing to publish: the offer must send audio or video with a=ssrc "
                    "(rid-only simulcast is not supported)",
                ) from None
            raise
        engine = self.ctx.server.engine
        for t in tracks:
            engine.add_producer(ProducerSpec(tid, t.source.ssrc, t.kind, t.codec.clock_rate))
        self.peer, self.tracks = peer, tracks
        self._remb_task = self.ctx.loop.create_task(self._remb_loop())
        self.app.dispatch(events)
        return answer

    def unpublish(self, reason: str) -> None:
        if self.peer is not None:
            self.peer.close(reason)  # -> _on_closed

    def _on_closed(self, generation: int, reason: str) -> None:
        if generation != self._generation:
            return
        self._generation += 1
        self.ctx.emit("hangup", {"reason": reason})
        self.tracks = ()
        self._stop_timers()
        self.keyframes = KeyframeGate()
        self.estimates = BitrateEstimates()
        self.app.dispatch(self.app.rooms.unpublish(self.room, self.participant_id))

    def _stop_timers(self) -> None:
        if self._pli_timer is not None:
            self._pli_timer.cancel()
            self._pli_timer = None
        if self._remb_task is not None:
            self._remb_task.cancel()
            self._remb_task = None

    def close(self, reason: str) -> None:
        self.unpublish(reason)
        self._stop_timers()

    # -- feedback from subscribers ---------------------------------------------------------------

    def request_keyframe(self, source: Source) -> None:
        """A subscriber needs a keyframe of ``source`` (rate-limited, deferred if too soon)."""
        if not self._owns(source):
            return
        self.counters["keyframe_requests"] += 1
        if self.keyframes.request(source.ssrc, self.app.monotonic()):
            self._send_pli(source.ssrc)
        self._arm_pli_timer()

    def _owns(self, source: Source) -> bool:
        return any(t.source == source for t in self.tracks)

    def _send_pli(self, ssrc: int) -> None:
        peer = self.peer
        if peer is None or not peer.connected:
            return  # its encoder starts with a keyframe once connected
        self.counters["plis_sent"] += 1
        peer.send_rtcp(rtcp.pli(peer.rtcp_ssrc, ssrc))

    def _arm_pli_timer(self) -> None:
        deadline = self.keyframes.next_deadline()
        if deadline is None or self._pli_timer is not None:
            return
        delay = max(0.0, deadline - self.app.monotonic())
        self._pli_timer = self.ctx.loop.call_later(delay, self._on_pli_timer)

    def _on_pli_timer(self) -> None:
        self._pli_timer = None
        for ssrc in self.keyframes.due(self.app.monotonic()):
            self._send_pli(ssrc)
        self._arm_pli_timer()

    def on_estimate(self, subscriber: Hashable, bitrate: int) -> None:
        """A subscriber's share of its REMB for this publisher's video."""
        value = self.estimates.update(subscriber, bitrate, self.app.monotonic())
        if value is not None:
            self._send_remb(value)

    def forget_subscriber(self, subscriber: Hashable) -> None:
        self.estimates.remove(subscriber)

    def _send_remb(self, bitrate: int) -> None:
        peer = self.peer
        video = [t.source.ssrc for t in self.tracks if t.kind == "video"]
        if peer is None or not peer.connected or not video:
            return
        self.counters["rembs_out"] += 1
        peer.send_rtcp(rtcp.remb(peer.rtcp_ssrc, bitrate, video))

    async def _remb_loop(self) -> None:
        while True:
            await asyncio.sleep(self.estimates.refresh / 2)  # due() says when a second passed
            value = self.estimates.due(self.app.monotonic())
            if value is not None:
                self._send_remb(value)

    def stats(self) -> dict[str, Any]:
        now = self.app.monotonic()
        out: dict[str, Any] = {
            "tracks": [
                {**t.describe(), "ssrc": t.source.ssrc, "transport": t.source.transport_id}
                for t in self.tracks
            ],
            "rtcp": dict(self.counters),
            "remb_minimum": self.estimates.minimum(now),
        }
        if self.peer is not None:
            out["peer"] = self.peer.stats()
        return out
