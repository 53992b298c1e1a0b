"""A participant's subscription: ONE server-offered PeerConnection carrying every other
publisher's tracks, renegotiated as publishers come and go.

Each accepted m-section gets an engine consumer from the publisher's producer to this transport
under the SSRC announced in the offer. RTCP from the subscriber is turned into work upstream:
PLI/FIR into a keyframe request to the publisher, NACK into a retransmission from the
consumer's cache, REMB into per-publisher bandwidth estimates.

A simulcast feed's consumer forwards one layer at a time, chosen by a
:class:`~sfu.apps.room.simulcast.LayerSelector` from the subscriber's ``configure`` request and
its share of the REMB. The first layer gets an engine consumer gated until a keyframe (there is
nothing to show before it). A switch then moves that consumer with ``engine.switch_consumer``:
the engine keeps forwarding the old layer until a keyframe of the new one starts and changes
source at that packet (sequence numbers and timestamps continue), so the picture never freezes.
The publisher is asked for a keyframe of the new layer, again every ``SWITCH_PLI_RETRY``
seconds while the switch waits for it; the subscriber is told with a ``layer`` event.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiortc import rtp as artp

from sfu.apps.base import AppContext, AppError
from sfu.apps.room.feedback import remb_shares
from sfu.apps.room.layout import SubscriberLayout
from sfu.apps.room.model import Feed, RoomError
from sfu.apps.room.simulcast import LayerSelector, SwitchRetries
from sfu.engine.base import KEYFRAME_CODECS, ConsumerSpec
from sfu.rtp import rtcp
from sfu.webrtc.peer import Peer

if TYPE_CHECKING:
    from sfu.apps.room.app import RoomApp

NACK_CACHE = 512


@dataclass(frozen=True)
class Consumer:
    consumer_id: int
    mid: str
    feed: Feed
    dst_ssrc: int
    src_ssrc: int = 0  # simulcast: the SSRC of the chosen layer (forwarded, or switched to)

    @property
    def kind(self) -> str:
        return self.feed.track.kind

    @property
    def layer_ssrc(self) -> int | None:
        """The SSRC keyframes are asked of (None: the track's own)."""
        return self.src_ssrc if self.feed.track.simulcast else None


@dataclass
class SimulcastLink:
    """A subscriber section fed by a simulcast track: where its consumer writes, and which
    layer it forwards (``selector.current``; no consumer until a layer is known)."""

    feed: Feed
    selector: LayerSelector
    dst_transport: int
    dst_ssrc: int
    payload_type_map: tuple[tuple[int, int], ...]


def fir_ssrcs(fci: bytes) -> list[int]:
    """The media SSRCs a FIR asks keyframes of (RFC 5104 4.3.1: 8-byte entries)."""
    return [struct.unpack_from("!I", fci, i)[0] for i in range(0, len(fci) - 7, 8)]


class SubscriberSession:
    def __init__(self, app: RoomApp, ctx: AppContext, room: str, participant_id: str) -> None:
        self.app = app
        self.ctx = ctx
        self.room = room
        self.participant_id = participant_id
        self.layout = SubscriberLayout()
        self.peer: Peer | None = None
        self.consumers: dict[str, Consumer] = {}  # by mid
        self.simulcast: dict[str, SimulcastLink] = {}  # by mid
        self.closed = False
        self._dirty = False
        self.offers = 0
        self.switches = SwitchRetries()  # layer switches waiting for their keyframe
        self._switch_timer: asyncio.TimerHandle | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "keyframe_requests_in",
                "nacks_in",
                "nack_seqs",
                "retransmitted",
                "rembs_in",
                "layer_switches",
                "switch_plis",
            ),
            0,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.room, self.participant_id, "subscriber")

    # -- negotiation ------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """The first offer (None when there is nothing to receive yet) for the subscribe reply."""
        sdp = self._next_offer()
        return {"type": "offer", "sdp": sdp, "streams": self.layout.streams()}

    def refresh(self) -> None:
        """The room's tracks changed: re-offer, or remember to once the pending answer is in."""
        if self.closed:
            return
        if self.peer is not None and self.peer.offer_pending:
            self._dirty = True
            return
        sdp = self._next_offer()
        if sdp is not None:
            self.ctx.emit("offer", {"sdp": sdp, "streams": self.layout.streams()})

    def _next_offer(self) -> str | None:
        change = self.layout.update(self.app.rooms.feeds_for(self.room, self.participant_id))
        if change is None:
            return None
        for slot in change.removed:
            self._drop_consumer(slot.mid)
        if self.peer is None:
            self.peer = Peer(
                self.ctx,
                on_rtcp=self._on_rtcp,
                on_connected=self._on_connected,
                on_closed=self._on_closed,
            )
        self.offers += 1
        return self.peer.offer(self.layout.media())

    def accept_answer(self, sdp: str) -> None:
        peer = self.peer
        if peer is None or not peer.offer_pending:
            raise AppError(409, "no offer is waiting for an answer")
        peer.accept_answer(sdp)
        self._sync_consumers()
        if self._dirty:
            self._dirty = False
            self.refresh()

    def _sync_consumers(self) -> None:
        """Consumers for exactly the sections the answer accepted and whose feed still exists."""
        peer = self.peer
        if peer is None or peer.closed or peer.transport is None:
            return
        negotiated = {m.mid: m for m in peer.media}
        current = {f.key for f in self.app.rooms.feeds_for(self.room, self.participant_id)}
        for slot in self.layout.slots:
            m = negotiated.get(slot.mid)
            feed = slot.feed
            wanted = (
                feed is not None
                and feed.key in current
                and m is not None
                and m.send_ssrc is not None
                and m.codec is not None
            )
            if not wanted:
                self._drop_consumer(slot.mid)
                continue
            assert feed is not None and m is not None and m.codec is not None
            assert m.send_ssrc is not None
            if slot.mid in self.consumers or slot.mid in self.simulcast:
                continue
            track = feed.track
            pt_in, pt_out = track.codec.payload_type, m.codec.payload_type
            if track.simulcast:
                self.simulcast[slot.mid] = SimulcastLink(
                    feed,
                    LayerSelector(track.rids),
                    peer.transport.id,
                    m.send_ssrc,
                    ((pt_in, pt_out),) if pt_in != pt_out else (),
                )
                self._apply_layer(slot.mid)
                continue
            cid = self.ctx.server.next_consumer_id()
            self.ctx.server.engine.add_consumer(
                ConsumerSpec(
                    consumer_id=cid,
                    src_transport=track.source.transport_id,
                    src_ssrc=track.source.ssrc,
                    dst_transport=peer.transport.id,
                    dst_ssrc=m.send_ssrc,
                    clock_rate=track.codec.clock_rate,
                    cache_size=NACK_CACHE if track.kind == "video" else 0,
                    payload_type_map=((pt_in, pt_out),) if pt_in != pt_out else (),
                )
            )
            consumer = Consumer(cid, slot.mid, feed, m.send_ssrc)
            self.consumers[slot.mid] = consumer
            if consumer.kind == "video" and peer.connected:
                self.app.request_keyframe(self.room, feed)

    def _drop_consumer(self, mid: str) -> None:
        self.switches.done(mid)
        self.simulcast.pop(mid, None)
        consumer = self.consumers.pop(mid, None)
        if consumer is not None:
            self.ctx.server.engine.remove_consumer(consumer.consumer_id)

    # -- simulcast --------------------------------------------------------------------------------

    def configure(self, mid: str, layer: str | int) -> dict[str, Any]:
        """The ``configure`` request: the highest layer wanted for section ``mid``, or "auto"."""
        link = self.simulcast.get(mid)
        if link is None:
            raise RoomError(404, f"no simulcast stream on mid '{mid[:16]}'")
        try:
            requested = link.selector.request(layer)
        except ValueError as exc:
            raise RoomError(400, str(exc)) from None
        self._apply_layer(mid, "request")
        return {"mid": mid, "layer": requested, "current": link.selector.current}

    def layers_changed(self, participant_id: str) -> None:
        """A publisher learned (or lost) layers: re-evaluate the sections it feeds."""
        for mid, link in list(self.simulcast.items()):
            if link.feed.participant_id == participant_id:
                self._apply_layer(mid, "available")

    def _apply_layer(self, mid: str, reason: str = "available") -> None:
        link = self.simulcast.get(mid)
        peer = self.peer
        if link is None or peer is None or peer.closed:
            return
        publisher = self.app.publishers.get((self.room, link.feed.participant_id))
        track = link.feed.track
        available = publisher.layer_bitrates(track.mid) if publisher is not None else {}
        rid = link.selector.update(available, self.app.monotonic())
        current = self.consumers.get(mid)
        engine = self.ctx.server.engine
        # what the engine consumer forwards now (None: none, or it went with its producer)
        before = engine.consumer_source(current.consumer_id) if current is not None else None
        if rid is None:
            rid = link.selector.current
            if rid is None or publisher is None or current is None:
                return
            if publisher.layer_ssrc(track.mid, rid) == current.src_ssrc and before is not None:
                return  # same layer, same SSRC, still forwarded: nothing to do
            reason = "restarted"
        ssrc = publisher.layer_ssrc(track.mid, rid) if publisher is not None else None
        if ssrc is None:
            return
        target = (track.source.transport_id, ssrc)
        if current is not None:
            self.counters["layer_switches"] += 1
        if before is not None and current is not None:
            # seamless: the engine forwards the old layer until the new one's keyframe
            cid = current.consumer_id
            engine.switch_consumer(cid, target[0], ssrc, track.codec.clock_rate)
        else:
            if current is not None:
                engine.remove_consumer(current.consumer_id)  # gone with its producer already
            cid = self.ctx.server.next_consumer_id()
            codec = track.codec.name.lower()
            engine.add_consumer(
                ConsumerSpec(
                    consumer_id=cid,
                    src_transport=target[0],
                    src_ssrc=ssrc,
                    dst_transport=link.dst_transport,
                    dst_ssrc=link.dst_ssrc,
                    clock_rate=track.codec.clock_rate,
                    cache_size=NACK_CACHE,
                    payload_type_map=link.payload_type_map,
                    keyframe_gate=codec if codec in KEYFRAME_CODECS else "",
                )
            )
        self.consumers[mid] = Consumer(cid, mid, link.feed, link.dst_ssrc, ssrc)
        if before != target and peer.connected:
            self.app.request_keyframe(self.room, link.feed, ssrc)
        if before is not None and engine.consumer_source(cid) != target:
            self.switches.start(mid, self.app.monotonic())
            self._arm_switch_timer()
        else:
            self.switches.done(mid)
        self.ctx.emit(
            "app",
            {
                "data": {
                    "room": self.room,
                    "event": "layer",
                    "mid": mid,
                    "layer": rid,
                    "requested": link.selector.requested,
                    "reason": reason,
                }
            },
        )

    def _arm_switch_timer(self) -> None:
        deadline = self.switches.next_deadline()
        if deadline is None or self._switch_timer is not None or self.closed:
            return
        delay = max(0.0, deadline - self.app.monotonic())
        self._switch_timer = self.ctx.loop.call_later(delay, self._on_switch_timer)

    def _on_switch_timer(self) -> None:
        self._switch_timer = None
        self.check_switches()

    def check_switches(self) -> None:
        """Ask again for the keyframe of each layer a switch has waited for too long."""
        if self.closed:
            return
        engine = self.ctx.server.engine
        for mid in self.switches.due(self.app.monotonic()):
            consumer = self.consumers.get(mid)
            if consumer is None or mid not in self.simulcast:
                self.switches.done(mid)
                continue
            source = engine.consumer_source(consumer.consumer_id)
            if source is None or source == (
                consumer.feed.track.source.transport_id,
                consumer.src_ssrc,
            ):
                self.switches.done(mid)  # switched (or gone)
                continue
            self.counters["switch_plis"] += 1  # (the publisher sends it once it is connected)
            self.app.request_keyframe(self.room, consumer.feed, consumer.src_ssrc)
        self._arm_switch_timer()

    def add_remote_candidate(self, candidate: dict[str, Any] | None) -> None:
        if self.peer is None or self.peer.transport is None:
            raise AppError(409, "a candidate arrived before the server's offer")
        self.peer.add_remote_candidate(candidate)

    # -- lifecycle ------------------------------------------------------------------------------

    def _on_connected(self) -> None:
        for consumer in self.consumers.values():
            if consumer.kind == "video":
                self.app.request_keyframe(self.room, consumer.feed, consumer.layer_ssrc)

    def close(self, reason: str) -> None:
        if self.peer is not None and not self.peer.closed:
            self.peer.close(reason)  # -> _on_closed
        else:
            self._on_closed(reason)

    def _on_closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._switch_timer is not None:
            self._switch_timer.cancel()
            self._switch_timer = None
        self.consumers.clear()  # the engine dropped them with the transport
        self.simulcast.clear()
        self.ctx.emit("hangup", {"reason": reason})
        self.app.subscription_ended(self)

    # -- RTCP from the subscriber ---------------------------------------------------------------

    def _on_rtcp(self, packets: list[rtcp.RtcpItem]) -> None:
        by_dst = {c.dst_ssrc: c for c in self.consumers.values()}
        for p in packets:
            if isinstance(p, artp.RtcpPsfbPacket):
                if p.fmt == artp.RTCP_PSFB_PLI:
                    self._keyframe(by_dst.get(p.media_ssrc))
                elif p.fmt == artp.RTCP_PSFB_FIR:
                    for ssrc in fir_ssrcs(p.fci) or [p.media_ssrc]:
                        self._keyframe(by_dst.get(ssrc))
                elif rtcp.is_remb(p):
                    self._on_remb(p.fci, by_dst)
            elif isinstance(p, artp.RtcpRtpfbPacket) and p.fmt == artp.RTCP_RTPFB_NACK:
                self.counters["nacks_in"] += 1
                self.counters["nack_seqs"] += len(p.lost)
                target = by_dst.get(p.media_ssrc)
                if target is not None:
                    found = self.ctx.server.engine.retransmit(target.consumer_id, p.lost)
                    self.counters["retransmitted"] += found

    def _keyframe(self, consumer: Consumer | None) -> None:
        self.counters["keyframe_requests_in"] += 1
        if consumer is not None and consumer.kind == "video":
            self.app.request_keyframe(self.room, consumer.feed, consumer.layer_ssrc)

    def _on_remb(self, fci: bytes, by_dst: dict[int, Consumer]) -> None:
        try:
            bitrate, ssrcs = artp.unpack_remb_fci(fci)
        except ValueError:
            return
        self.counters["rembs_in"] += 1
        owners: dict[int, Hashable] = {
            ssrc: c.feed.participant_id for ssrc, c in by_dst.items() if c.kind == "video"
        }
        for participant_id, share in remb_shares(bitrate, ssrcs, owners).items():
            self.app.on_estimate(self.room, str(participant_id), self.key, share)
        # each simulcast section gets its share of the estimate to choose its layer
        by_mid: dict[Hashable, Hashable] = {
            ssrc: c.mid for ssrc, c in by_dst.items() if c.mid in self.simulcast
        }
        if self.simulcast:
            covered = {s: owners[s] for s in ssrcs if s in owners}
            shares = remb_shares(bitrate, list(covered), {s: by_mid.get(s, "") for s in covered})
            for mid, link in self.simulcast.items():
                if mid in shares:
                    link.selector.set_estimate(shares[mid])
                    self._apply_layer(mid, "bandwidth")

    def _forwarding(self, consumer: Consumer) -> int | None:
        """The SSRC the engine forwards for ``consumer`` now (the old layer while a switch
        waits for the new one's keyframe)."""
        source = self.ctx.server.engine.consumer_source(consumer.consumer_id)
        return None if source is None else source[1]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "offers": self.offers,
            "offer_pending": bool(self.peer and self.peer.offer_pending),
            "streams": self.layout.streams(),
            "consumers": [
                {
                    "mid": c.mid,
                    "kind": c.kind,
                    "participant": c.feed.participant_id,
                    "dst_ssrc": c.dst_ssrc,
                    "src_ssrc": c.src_ssrc or c.feed.track.source.ssrc,
                    **(
                        {
                            "layer": self.simulcast[c.mid].selector.current,
                            "requested": self.simulcast[c.mid].selector.requested,
                            "estimate": self.simulcast[c.mid].selector.estimate,
                            "forwarding_ssrc": self._forwarding(c),
                        }
                        if c.mid in self.simulcast
                        else {}
                    ),
                }
                for c in self.consumers.values()
            ],
            "rtcp": dict(self.counters),
        }
        if self.peer is not None:
            out["peer"] = self.peer.stats()
        return out
