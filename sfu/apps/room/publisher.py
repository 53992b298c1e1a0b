"""A participant's own handle: in the room from ``join`` to ``leave``, publishing when it offers.

The client offers its audio and video (sendonly); the server answers recvonly and adds one
engine producer per track. Keyframe requests and bandwidth estimates from the subscribers reach
the publisher through here, as PLI and REMB on its PeerConnection.

Simulcast (``a=simulcast:send`` with ``a=rid`` and no SSRCs): the answer receives the same RIDs;
the engine reports each new SSRC with its MID/RID header extensions (``expect_rids``) and the
session adds a producer per layer as it learns them, measures each layer's bitrate from the
engine's counters, and tells the subscribers (``RoomApp.layers_changed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from sfu.apps.base import AppContext, AppError
from sfu.apps.room.feedback import BitrateEstimates, KeyframeGate
from sfu.apps.room.model import RoomError, Source, Track
from sfu.apps.room.simulcast import LayerRates
from sfu.engine.base import ProducerSpec, SdesExtensionIds, StreamAnnouncement
from sfu.rtp import rtcp
from sfu.sdp.capabilities import DEFAULT_CAPABILITIES
from sfu.sdp.description import RemoteMedia
from sfu.sdp.negotiate import (
    RRID_URI,
    SIMULCAST_EXTENSIONS,
    add_simulcast_answer,
    simulcast_offers,
    with_simulcast_extensions,
)
from sfu.webrtc.peer import Peer

if TYPE_CHECKING:
    from sfu.apps.room.app import RoomApp

PUBLISHED_KINDS = ("audio", "video")
# Simulcast publishers: the initial send estimate asked for in the answer, and the least REMB
# sent upstream, enough for three layers of 720p (libwebrtc: about 0.15 + 0.5 + 1.7 Mbit/s).
SIMULCAST_START_KBPS = 2500
SIMULCAST_REMB_FLOOR = SIMULCAST_START_KBPS * 1000


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
        self.layers: dict[str, dict[str, int]] = {}  # simulcast: mid -> rid -> learned SSRC
        self.rates = LayerRates()
        self._flowing: dict[str, frozenset[str]] | None = None  # flowing layers at last sample
        self.counters: dict[str, int] = dict.fromkeys(
            ("keyframe_requests", "plis_sent", "rembs_out", "streams_learned"), 0
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

        offers = simulcast_offers(sdp)
        caps = with_simulcast_extensions(DEFAULT_CAPABILITIES) if offers else DEFAULT_CAPABILITIES
        answer = peer.accept_offer(sdp, send=lambda m: False, recv=recv, caps=caps)
        assert peer.transport is not None
        tid = peer.transport.id
        receiving = [
            m for m in peer.media if m.codec is not None and m.direction in ("recvonly", "sendrecv")
        ]
        simulcast = {
            m.mid: offers[m.mid].rids for m in receiving if m.kind == "video" and m.mid in offers
        }
        answer = add_simulcast_answer(
            answer, {mid: offers[mid] for mid in simulcast}, SIMULCAST_START_KBPS
        )
        tracks = tuple(
            Track(m.mid, m.kind, m.codec, Source(tid, 0), m.extensions, simulcast[m.mid])
            if m.mid in simulcast
            else Track(m.mid, m.kind, m.codec, Source(tid, m.recv_ssrcs[0]), m.extensions)
            for m in receiving
            if m.codec is not None and (m.recv_ssrcs or m.mid in simulcast)
        )
        try:
            events = self.app.rooms.publish(self.room, self.participant_id, tracks)
        except RoomError as exc:
            self._generation += 1  # the closing peer is not the published one
            peer.close("refused")
            if exc.code == 422:
                raise RoomError(
                    422,
                    "nothing to publish: the offer must send audio or video with a=ssrc, "
                    "or video with a=simulcast:send and a=rid",
                ) from None
            raise
        engine = self.ctx.server.engine
        for t in tracks:
            if not t.simulcast:
                engine.add_producer(ProducerSpec(tid, t.source.ssrc, t.kind, t.codec.clock_rate))
        self.peer, self.tracks = peer, tracks
        self.layers = {t.mid: {} for t in tracks if t.simulcast}
        if self.layers:
            self.estimates = BitrateEstimates(highest=True)
            ids = dict((uri, i) for m in receiving for i, uri in m.extensions)
            mid_uri, rid_uri, _ = SIMULCAST_EXTENSIONS
            engine.expect_rids(
                tid,
                SdesExtensionIds(ids.get(mid_uri, 0), ids.get(rid_uri, 0), ids.get(RRID_URI, 0)),
                lambda a: self._on_stream(generation, a),
            )
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
        self.layers = {}
        self.rates = LayerRates()
        self._flowing = None
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

    # -- simulcast layers ------------------------------------------------------------------------

    def _on_stream(self, generation: int, a: StreamAnnouncement) -> None:
        """The engine saw a new SSRC naming a MID/RID: a layer of a simulcast track."""
        if generation != self._generation or a.repaired_rid or not a.rid:
            return  # RTX is not negotiated (the answer offers no rtx payload type)
        track = self._simulcast_track(a.mid, a.rid)
        if track is None:
            return
        layers = self.layers[track.mid]
        old = layers.get(a.rid)
        if old == a.ssrc:
            return
        engine = self.ctx.server.engine
        if old is not None:  # the sender restarted the layer on a new SSRC
            engine.remove_producer(track.source.transport_id, old)
            self.rates.forget(old)
        layers[a.rid] = a.ssrc
        self.counters["streams_learned"] += 1
        engine.add_producer(
            ProducerSpec(track.source.transport_id, a.ssrc, track.kind, track.codec.clock_rate)
        )
        self.app.layers_changed(self.room, self.participant_id)

    def _simulcast_track(self, mid: str, rid: str) -> Track | None:
        candidates = [t for t in self.tracks if t.simulcast and rid in t.rids]
        if mid:
            candidates = [t for t in candidates if t.mid == mid]
        return candidates[0] if len(candidates) == 1 else None

    def layer_bitrates(self, mid: str) -> dict[str, int | None]:
        """The learned layers of a simulcast track that are flowing: RID -> measured bitrate
        (None: not yet). A layer the publisher stopped sending is left out, so subscribers on it
        (or switching to it) move to another one instead of waiting for it forever."""
        now = self.app.monotonic()
        return {
            rid: self.rates.rate(ssrc)
            for rid, ssrc in self.layers.get(mid, {}).items()
            if not self.rates.idle(ssrc, now)
        }

    def layer_ssrc(self, mid: str, rid: str) -> int | None:
        return self.layers.get(mid, {}).get(rid)

    def _sample_rates(self) -> None:
        peer = self.peer
        if not self.layers or peer is None or peer.transport is None:
            return
        stats = self.ctx.server.engine.transport_stats(peer.transport.id)
        if stats is None:
            return
        now = self.app.monotonic()
        for layers in self.layers.values():
            for ssrc in layers.values():
                inbound = stats.inbound.get(ssrc)
                if inbound is not None:
                    self.rates.sample(ssrc, inbound.bytes, now)
        flowing = {mid: frozenset(self.layer_bitrates(mid)) for mid in self.layers}
        if flowing != self._flowing:
            changed = self._flowing is not None
            self._flowing = flowing
            if changed:  # a layer stopped or came back: subscribers re-choose
                self.app.layers_changed(self.room, self.participant_id)

    # -- feedback from subscribers ---------------------------------------------------------------

    def request_keyframe(self, source: Source, ssrc: int | None = None) -> None:
        """A subscriber needs a keyframe of ``source`` (of its layer ``ssrc`` for simulcast;
        rate-limited, deferred if too soon)."""
        if not self._owns(source):
            return
        target = source.ssrc if ssrc is None else ssrc
        if ssrc is not None and not any(ssrc in layers.values() for layers in self.layers.values()):
            return
        if target == 0:
            return  # a simulcast layer not learned yet: its first frames are a keyframe
        self.counters["keyframe_requests"] += 1
        if self.keyframes.request(target, self.app.monotonic()):
            self._send_pli(target)
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
        video = [t.source.ssrc for t in self.tracks if t.kind == "video" and not t.simulcast]
        for mid, layers in self.layers.items():
            video += list(layers.values())
            bitrate = max(SIMULCAST_REMB_FLOOR, bitrate + self._lower_layers_rate(mid))
        if peer is None or not peer.connected or not video:
            return
        self.counters["rembs_out"] += 1
        peer.send_rtcp(rtcp.remb(peer.rtcp_ssrc, bitrate, video))

    def _lower_layers_rate(self, mid: str) -> int:
        """What a simulcast track's layers below its highest learned one measure: the encoder
        needs that much on top of the best subscriber's estimate to keep every layer."""
        rates = self.layer_bitrates(mid)
        track = next((t for t in self.tracks if t.mid == mid), None)
        if track is None or not rates:
            return 0
        learned = [r for r in track.rids if r in rates]
        return sum(rates[r] or 0 for r in learned[:-1])

    async def _remb_loop(self) -> None:
        while True:
            await asyncio.sleep(self.estimates.refresh / 2)  # due() says when a second passed
            self._sample_rates()
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
        if self.layers:
            out["simulcast"] = {
                mid: {
                    rid: {"ssrc": ssrc, "bitrate": self.rates.rate(ssrc)}
                    for rid, ssrc in layers.items()
                }
                for mid, layers in self.layers.items()
            }
        if self.peer is not None:
            out["peer"] = self.peer.stats()
        return out
