"""Peer: the server side of one PeerConnection (a transport plus what was negotiated on it).

It turns SDP and trickled candidates into calls on a :class:`WebRtcTransport`, turns the
transport's events into signaling events, sends periodic RTCP reports from the engine's
statistics, and hands parsed RTCP feedback to the application.

Both JSEP directions: the peer offers (:meth:`Peer.accept_offer`), or the server offers
(:meth:`Peer.offer`, then :meth:`Peer.accept_answer`). The server may re-offer on the same
transport as often as it likes, one offer outstanding at a time: the ICE credentials, DTLS
certificate and role stay, the ``o=`` session version goes up, earlier m-sections keep their
place (see docs/rooms.md, "Renegotiation rules").
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiortc import rtp as artp

from sfu.apps.base import AppContext, AppError
from sfu.ice.agent import IceRole
from sfu.ice.candidate import Candidate
from sfu.rtp.rtcp import (
    InboundStream,
    OutboundStream,
    RtcpError,
    RtcpItem,
    RtcpReporter,
    parse_rtcp,
    rtt_from_report,
)
from sfu.sdp.capabilities import DEFAULT_CAPABILITIES, RouterCapabilities
from sfu.sdp.description import RemoteDescription, RemoteMedia, SdpError, parse_description
from sfu.sdp.negotiate import (
    LocalParameters,
    NegotiatedMedia,
    answer_media,
    apply_answer,
    check_reoffer,
    offer_media,
    write_description,
)
from sfu.webrtc.transport import (
    IceStateEvent,
    LocalCandidate,
    RtcpReceived,
    TransportClosed,
    TransportConnected,
    TransportEvent,
    TransportState,
    WebRtcTransport,
)

log = logging.getLogger(__name__)

RTCP_INTERVAL = 1.0


class Peer:
    def __init__(
        self,
        ctx: AppContext,
        *,
        on_rtcp: Callable[[list[RtcpItem]], None],
        on_connected: Callable[[], None] = lambda: None,
        on_closed: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.ctx = ctx
        self._on_rtcp = on_rtcp
        self._on_connected = on_connected
        self._on_closed = on_closed
        self.transport: WebRtcTransport | None = None
        self.remote: RemoteDescription | None = None
        self.media: list[NegotiatedMedia] = []
        self._sdp_built = False
        self._pending_candidates: list[Candidate | None] = []
        self._reporter = RtcpReporter(sender_ssrc=secrets.randbits(32) or 1)
        self._report_task: asyncio.Task[None] | None = None
        self._clock_rates: dict[int, int] = {}
        self.rtt: float | None = None
        self.closed = False
        self._offered: list[NegotiatedMedia] | None = None  # the server offer awaiting an answer
        self._session_id = secrets.randbits(62)
        self._session_version = 0

    # -- negotiation ------------------------------------------------------------------------------

    def accept_offer(
        self,
        sdp: str,
        *,
        send: Callable[[RemoteMedia], bool],
        recv: Callable[[RemoteMedia], bool],
        caps: RouterCapabilities = DEFAULT_CAPABILITIES,
    ) -> str:
        """The peer offers: negotiate (codecs from ``caps``), start ICE (controlled), return
        the answer."""
        if self.transport is not None:
            raise AppError(409, "renegotiation is not supported yet: hang up first")
        try:
            remote = parse_description(sdp, "offer")
            media = answer_media(remote, send=send, recv=recv, caps=caps)
        except SdpError as exc:
            raise AppError(422, str(exc)) from None
        self.remote, self.media = remote, media
        transport = self._new_transport(IceRole.CONTROLLED)
        self._apply_remote(remote)
        return self._build_sdp(transport)

    def create_offer(self, kinds: list[str], direction: str = "sendrecv") -> str:
        """The server offers one section per kind (see :meth:`offer`)."""
        if self.transport is not None:
            raise AppError(409, "a PeerConnection is already up: hang up first")
        return self.offer(offer_media(kinds, direction=direction))

    def offer(self, media: list[NegotiatedMedia]) -> str:
        """The server offers ``media``.

        The first offer creates the transport (ICE controlling, DTLS actpass); its candidates
        stay withheld until the peer's answer or trickle reveals where to send first. Later
        offers renegotiate on the same transport: ``media`` must keep every section offered
        before at its index (it may append sections and make others inactive).
        """
        if self.closed:
            raise AppError(409, "the PeerConnection is closed")
        if self._offered is not None:
            raise AppError(409, "an offer is already waiting for its answer")
        if not media:
            raise AppError(409, "nothing to offer")
        transport = self.transport
        if transport is not None:
            try:
                check_reoffer(self.media, media)
            except SdpError as exc:
                raise AppError(409, f"cannot renegotiate: {exc}") from None
        self._offered = list(media)
        if transport is None:
            self.media = list(media)
            transport = self._new_transport(IceRole.CONTROLLING)
            transport.reveal_if_not_withholding()
        return self._build_sdp(transport, self._offered)

    @property
    def offer_pending(self) -> bool:
        """A server offer awaits its answer."""
        return self._offered is not None

    def accept_answer(self, sdp: str) -> None:
        """Apply the answer to the outstanding server offer (the first one or a re-offer)."""
        if self.transport is None or self._offered is None or self.closed:
            raise AppError(409, "no server offer is waiting for an answer")
        try:
            remote = parse_description(sdp, "answer")
            media = apply_answer(self._offered, remote)
            before = self.remote
            if before is not None:
                if (remote.ice_ufrag, remote.ice_pwd) != (before.ice_ufrag, before.ice_pwd):
                    raise SdpError("the answer changes the ICE credentials (no ICE restart)")
                if set(remote.fingerprints) != set(before.fingerprints):
                    raise SdpError("the answer changes the DTLS fingerprint (no new DTLS session)")
        except SdpError as exc:
            raise AppError(422, str(exc)) from None
        first = self.remote is None
        self._offered = None
        self.remote, self.media = remote, media
        if first:
            self._apply_remote(remote)
        else:
            self._note_clock_rates()

    def _new_transport(self, role: IceRole) -> WebRtcTransport:
        server = self.ctx.server
        transport = WebRtcTransport(
            server.next_transport_id(),
            server,
            self.ctx.certificate,
            self.ctx.transport_config,
            self._on_transport_event,
            ice_role=role,
            loop=self.ctx.loop,
        )
        server.register(transport)
        self.transport = transport
        self._report_task = self.ctx.loop.create_task(self._report_loop())
        return transport

    def _note_clock_rates(self) -> None:
        for m in self.media:
            if m.codec is not None:
                for ssrc in m.recv_ssrcs:
                    self._clock_rates[ssrc] = m.codec.clock_rate
                if m.send_ssrc is not None:
                    self._clock_rates[m.send_ssrc] = m.codec.clock_rate

    def _apply_remote(self, remote: RemoteDescription) -> None:
        transport = self.transport
        assert transport is not None
        self._note_clock_rates()
        transport.set_remote(
            remote.ice_ufrag, remote.ice_pwd, list(remote.fingerprints), remote.setup
        )
        for _mid, line in remote.candidates:
            try:
                self._add_candidate_line(line)
            except AppError as exc:  # one bad line in an SDP does not sink the session
                log.info("ignoring a candidate in the SDP: %s", exc.reason)
        if remote.end_of_candidates:
            transport.add_remote_candidate(None)

    def _build_sdp(
        self, transport: WebRtcTransport, media: list[NegotiatedMedia] | None = None
    ) -> str:
        """Our description; every one of this peer shares the session id, the version grows."""
        self._session_version += 1
        text = write_description(
            self.media if media is None else media,
            LocalParameters(
                ice_ufrag=transport.ice_ufrag,
                ice_pwd=transport.ice_pwd,
                fingerprints=transport.fingerprints,
                setup=transport.local_setup,
                candidates=[
                    "candidate:" + c.to_sdp() for c in self._pending_candidates if c is not None
                ],
                end_of_candidates=None in self._pending_candidates,
                session_id=self._session_id,
                session_version=self._session_version,
            ),
        )
        self._pending_candidates.clear()
        self._sdp_built = True
        return text

    def add_remote_candidate(self, candidate: dict[str, Any] | None) -> None:
        if self.transport is None:
            raise AppError(409, "a candidate arrived before any SDP")
        if candidate is None or not candidate.get("candidate"):
            self.transport.add_remote_candidate(None)
            return
        line = candidate.get("candidate")
        if not isinstance(line, str):
            raise AppError(401, "candidate.candidate must be a string")
        self._add_candidate_line(line)

    def _add_candidate_line(self, line: str) -> None:
        assert self.transport is not None
        try:
            cand = Candidate.from_sdp(line)
        except ValueError as exc:
            raise AppError(422, f"bad candidate: {exc}") from None
        self.transport.add_remote_candidate(cand)

    # -- transport events -------------------------------------------------------------------------

    def _on_transport_event(self, ev: TransportEvent) -> None:
        if isinstance(ev, LocalCandidate):
            if not self._sdp_built:
                self._pending_candidates.append(ev.candidate)
                return
            mid = next((m.mid for m in self.media if not m.rejected), "0")
            index = next((m.index for m in self.media if not m.rejected), 0)
            payload = (
                None
                if ev.candidate is None
                else {
                    "candidate": "candidate:" + ev.candidate.to_sdp(),
                    "sdpMid": mid,
                    "sdpMLineIndex": index,
                }
            )
            self.ctx.emit("candidate", {"candidate": payload})
        elif isinstance(ev, IceStateEvent):
            self.ctx.emit("ice", {"state": ev.state.value, "reason": ev.reason})
        elif isinstance(ev, TransportConnected):
            self.ctx.emit("webrtcup", {})
            self._on_connected()
        elif isinstance(ev, RtcpReceived):
            self._handle_rtcp(ev.data)
        elif isinstance(ev, TransportClosed):
            self._closed(ev.reason)

    def _handle_rtcp(self, data: bytes) -> None:
        try:
            packets = parse_rtcp(data)
        except RtcpError:
            return
        now, wall = time.monotonic(), time.time()
        for p in packets:
            if isinstance(p, artp.RtcpSrPacket):
                self._reporter.on_sender_report(p, now)
            if isinstance(p, artp.RtcpSrPacket | artp.RtcpRrPacket):
                for block in p.reports:
                    rtt = rtt_from_report(block, wall)
                    if rtt is not None:
                        self.rtt = rtt
        self._on_rtcp(packets)

    async def _report_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(RTCP_INTERVAL)
            t = self.transport
            if t is None or self.closed:
                return
            s = self.ctx.server.engine.transport_stats(t.id)
            if s is None or t.srtp_profile is None:
                continue
            outbound = [
                OutboundStream(
                    o.ssrc,
                    o.packets,
                    o.bytes,
                    o.last_rtp_ts,
                    o.last_send_time,
                    self._clock_rates.get(o.ssrc, 90000),
                )
                for o in s.outbound.values()
            ]
            inbound = [
                InboundStream(i.ssrc, i.packets, i.highest_seq, i.base_seq, i.jitter)
                for i in s.inbound.values()
            ]
            t.send_rtcp(self._reporter.build(outbound, inbound, time.monotonic(), time.time()))

    def send_rtcp(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.send_rtcp(data)

    @property
    def rtcp_ssrc(self) -> int:
        """The SSRC the server's own RTCP (reports, PLI, REMB) is sent from on this peer."""
        return self._reporter.sender_ssrc

    @property
    def connected(self) -> bool:
        """ICE and DTLS are up: media flows."""
        t = self.transport
        return t is not None and not self.closed and t.state is TransportState.CONNECTED

    # -- teardown ---------------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close(reason)  # emits TransportClosed -> _closed
        self._closed(reason)

    def _closed(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self._report_task is not None:
            self._report_task.cancel()
        self._on_closed(reason)

    def stats(self) -> dict[str, Any]:
        if self.transport is None:
            return {"state": "new"}
        out = self.transport.stats()
        out["rtt"] = self.rtt
        out["media"] = out.get("media")
        out["negotiated"] = [
            {
                "mid": m.mid,
                "kind": m.kind,
                "direction": m.direction,
                "codec": m.codec.name if m.codec else None,
                "recv_ssrcs": list(m.recv_ssrcs),
                "send_ssrc": m.send_ssrc,
                "rejected": m.rejected_reason,
            }
            for m in self.media
        ]
        return out
