"""The echo test (like Janus's EchoTest): the peer gets back what it sends, forwarded, not decoded.

The browser offers; the server answers sendrecv and, for every audio/video stream the browser
sends, adds a consumer in the engine that routes the stream back to the same transport under a
server-chosen SSRC. Messages switch the audio or video echo on and off (the consumer is paused)
and cap the video bitrate: the cap is sent to the browser as REMB, the way Janus does it.
Keyframe requests (PLI/FIR) about the echoed stream become PLIs to the browser's own stream;
NACKs are served from the consumer's retransmission cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiortc import rtp as artp

from sfu.apps.base import AppContext, AppError, AppHandle, Application
from sfu.engine.base import ConsumerSpec, ProducerSpec
from sfu.rtp import rtcp
from sfu.webrtc.peer import Peer

log = logging.getLogger(__name__)

NACK_CACHE = 512
PLI_MIN_INTERVAL = 0.5
REMB_INTERVAL = 1.0


@dataclass
class _Echo:
    kind: str
    src_ssrc: int
    dst_ssrc: int
    consumer_id: int


class EchoTestHandle(AppHandle):
    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self.peer: Peer | None = None
        self.audio = True
        self.video = True
        self.bitrate = 0  # 0 = no cap
        self._echoes: list[_Echo] = []
        self._last_pli = 0.0
        self._last_remb_in: int | None = None
        self._remb_task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "keyframe_requests_in",
                "plis_sent",
                "nacks_in",
                "nack_seqs",
                "retransmitted",
                "rembs_in",
                "rembs_out",
            ),
            0,
        )

    async def on_offer(self, sdp: str) -> str:
        if self.peer is not None and not self.peer.closed:
            raise AppError(409, "a PeerConnection is already up: hang up first")
        peer = self._new_peer()
        answer = peer.accept_offer(sdp, send=lambda m: True, recv=lambda m: True)
        self.peer = peer  # only once accepted: a refused offer leaves no state behind
        self._setup_routes()
        return answer

    async def _server_offer(self) -> dict[str, Any]:
        """An extension over Janus's echo test: the server offers, the client answers."""
        if self.peer is not None and not self.peer.closed:
            raise AppError(409, "a PeerConnection is already up: hang up first")
        peer = self._new_peer()
        offer = peer.create_offer(["audio", "video"])
        self.peer = peer
        return {"result": "ok", "type": "offer", "sdp": offer}

    async def on_answer(self, sdp: str) -> None:
        if self.peer is None or self.peer.closed:
            raise AppError(409, 'no offer is pending: send {"offer": true} first')
        self.peer.accept_answer(sdp)
        self._setup_routes()

    def on_candidate(self, candidate: dict[str, Any] | None) -> None:
        if self.peer is None:
            raise AppError(409, "a candidate arrived before the offer")
        self.peer.add_remote_candidate(candidate)

    def _new_peer(self) -> Peer:
        return Peer(
            self.ctx,
            on_rtcp=self._on_rtcp,
            on_connected=self._on_connected,
            on_closed=self._on_closed,
        )

    async def on_message(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("offer") is True and set(body) == {"offer"}:
            return await self._server_offer()
        known = {"audio", "video", "bitrate"}
        unknown = set(body) - known
        if unknown:
            raise AppError(401, f"unknown echo test field(s): {', '.join(sorted(unknown))}")
        for key in ("audio", "video"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise AppError(401, f"{key} must be true or false")
                setattr(self, key, body[key])
        if "bitrate" in body:
            value = body["bitrate"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AppError(
                    401, "bitrate must be a non-negative integer (bits per second, 0 = no cap)"
                )
            self.bitrate = value
            self._send_remb()
        self._apply_pause()
        return {"result": "ok", "audio": self.audio, "video": self.video, "bitrate": self.bitrate}

    def hangup(self, reason: str) -> None:
        if self.peer is not None:
            self.peer.close(reason)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "app": "echotest",
            "audio": self.audio,
            "video": self.video,
            "bitrate": self.bitrate,
            "rtcp": dict(self.counters),
        }
        if self.peer is not None:
            out["peer"] = self.peer.stats()
        return out

    # -- routes ---------------------------------------------------------------------------------

    def _setup_routes(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        engine = self.ctx.server.engine
        tid = self.peer.transport.id
        for m in self.peer.media:
            if m.codec is None or m.send_ssrc is None or not m.recv_ssrcs:
                continue
            src = m.recv_ssrcs[0]
            engine.add_producer(ProducerSpec(tid, src, m.kind, m.codec.clock_rate))
            cid = self.ctx.server.next_consumer_id()
            engine.add_consumer(
                ConsumerSpec(
                    consumer_id=cid,
                    src_transport=tid,
                    src_ssrc=src,
                    dst_transport=tid,
                    dst_ssrc=m.send_ssrc,
                    clock_rate=m.codec.clock_rate,
                    cache_size=NACK_CACHE if m.kind == "video" else 0,
                )
            )
            self._echoes.append(_Echo(m.kind, src, m.send_ssrc, cid))
        self._apply_pause()

    def _apply_pause(self) -> None:
        engine = self.ctx.server.engine
        for e in self._echoes:
            on = self.audio if e.kind == "audio" else self.video
            engine.pause_consumer(e.consumer_id, not on)

    # -- RTCP -----------------------------------------------------------------------------------

    def _on_connected(self) -> None:
        self.ctx.emit("app", {"data": {"echotest": "event", "result": "ok", "webrtc": "up"}})
        if self._remb_task is None:
            self._remb_task = self.ctx.loop.create_task(self._remb_loop())

    def _on_closed(self, reason: str) -> None:
        if self._remb_task is not None:
            self._remb_task.cancel()
            self._remb_task = None
        self._echoes.clear()
        self.ctx.emit("hangup", {"reason": reason})

    def _on_rtcp(self, packets: list[rtcp.RtcpItem]) -> None:
        if self.peer is None:
            return
        by_dst = {e.dst_ssrc: e for e in self._echoes}
        for p in packets:
            if isinstance(p, artp.RtcpPsfbPacket):
                if p.fmt in (artp.RTCP_PSFB_PLI, artp.RTCP_PSFB_FIR):
                    self.counters["keyframe_requests_in"] += 1
                    target = by_dst.get(p.media_ssrc)
                    if target is None and p.fmt == artp.RTCP_PSFB_FIR:
                        target = next((e for e in self._echoes if e.kind == "video"), None)
                    if target is not None:
                        self._request_keyframe(target.src_ssrc)
                elif rtcp.is_remb(p):
                    self.counters["rembs_in"] += 1
                    bitrate, _ = artp.unpack_remb_fci(p.fci)
                    self._last_remb_in = bitrate
                    self._send_remb()
            elif isinstance(p, artp.RtcpRtpfbPacket) and p.fmt == artp.RTCP_RTPFB_NACK:
                target = by_dst.get(p.media_ssrc)
                self.counters["nacks_in"] += 1
                self.counters["nack_seqs"] += len(p.lost)
                if target is not None:
                    found = self.ctx.server.engine.retransmit(target.consumer_id, p.lost)
                    self.counters["retransmitted"] += found

    def _request_keyframe(self, src_ssrc: int) -> None:
        now = time.monotonic()
        if now - self._last_pli < PLI_MIN_INTERVAL or self.peer is None:
            return
        self._last_pli = now
        self.counters["plis_sent"] += 1
        self.peer.send_rtcp(rtcp.pli(self.peer._reporter.sender_ssrc, src_ssrc))

    def _send_remb(self) -> None:
        """Tell the browser how fast to send: its own estimate, capped by the configured bitrate."""
        if self.peer is None or self.peer.transport is None:
            return
        video = [e.src_ssrc for e in self._echoes if e.kind == "video"]
        if not video:
            return
        value = self._last_remb_in
        if self.bitrate:
            value = min(value, self.bitrate) if value else self.bitrate
        if not value:
            return
        self.counters["rembs_out"] += 1
        self.peer.send_rtcp(rtcp.remb(self.peer._reporter.sender_ssrc, value, video))

    async def _remb_loop(self) -> None:
        while True:
            await asyncio.sleep(REMB_INTERVAL)
            if self.bitrate:
                self._send_remb()


class EchoTest(Application):
    name = "echotest"

    def create_handle(self, ctx: AppContext) -> AppHandle:
        return EchoTestHandle(ctx)
