"""The streaming application: watch mountpoints over the WebSocket protocol, as with Janus's
Streaming plugin (docs/streaming.md, "Watching").

Requests (``message`` bodies, field ``request``):

- ``list``: the public mountpoints; ``info`` (``id``, ``secret``?): one mountpoint;
- ``watch`` (``id``, ``pin``?): the server offers (send-only, one m-section per media entry, in
  order, with the entry's codec and payload type); the reply carries ``{"type": "offer", "sdp"}``
  and the client answers with an ``answer`` request (or ``start`` with ``sdp``);
- ``pause`` / ``resume``: stop and restart forwarding (video restarts at a keyframe);
- ``switch`` (``id``, ``pin``?): watch another mountpoint with the same kinds, codecs and fmtp on
  the same PeerConnection: the consumers are re-pointed, sequence numbers and timestamps go on,
  video waits for (and asks for) the new mountpoint's keyframe;
- ``stop``: close the PeerConnection (the handle stays).

Events (``app`` events, ``data`` = ``{"streaming": "event", "result": {...}}``): ``status``
``started`` (media can flow), ``source`` with ``live`` (the mountpoint's source has media or not),
``kicked`` with the reason (destroyed, kicked, disabled...), ``stopped``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from sfu.apps.base import AppContext, AppError, AppHandle, Application
from sfu.rtp import rtcp
from sfu.sdp.description import RemoteCodec
from sfu.sdp.negotiate import NegotiatedMedia, offer_section
from sfu.signaling.protocol import ErrorCode
from sfu.streaming.hub import MediaHub
from sfu.streaming.model import Codec, MediaEntry, Mountpoint, StreamingError
from sfu.streaming.model import ErrorCode as MpError
from sfu.streaming.registry import Credentials, MountpointRegistry
from sfu.streaming.viewer import Route, Viewer, compatible
from sfu.webrtc.peer import Peer

__all__ = ["StreamingApp", "StreamingHandle", "offer_codec", "watch_sections"]

log = logging.getLogger(__name__)

_REQUESTS = ("list", "info", "watch", "start", "pause", "resume", "switch", "stop")
_DEFAULT_FMTP = {
    Codec.OPUS: {"minptime": "10", "useinbandfec": "1"},
    Codec.H264: {
        "level-asymmetry-allowed": "1",
        "packetization-mode": "1",
        "profile-level-id": "42e01f",
    },
}
_VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir")


def offer_codec(entry: MediaEntry) -> RemoteCodec:
    """How the server offers a media entry: its codec, payload type and fmtp (or defaults)."""
    params = dict(_DEFAULT_FMTP.get(entry.codec, {}))
    if entry.fmtp:
        params = {}
        for item in entry.fmtp.split(";"):
            key, _, value = item.strip().partition("=")
            params[key] = value
    video = entry.kind.value == "video"
    return RemoteCodec(
        entry.payload_type,
        entry.codec.value if entry.codec is not Codec.OPUS else "opus",
        entry.clock_rate,
        2 if entry.codec is Codec.OPUS else None,
        params,
        _VIDEO_FEEDBACK if video else (),
    )


def watch_sections(
    mountpoint: Mountpoint, new_ssrc: Callable[[], int] = lambda: secrets.randbits(32) or 1
) -> list[NegotiatedMedia]:
    """The send-only m-sections offered to a watcher: one per media entry, in order."""
    sections = []
    for i, entry in enumerate(mountpoint.media):
        ssrc = new_ssrc()
        sections.append(
            offer_section(
                i,
                entry.kind.value,
                offer_codec(entry),
                mid=entry.mid,
                direction="sendonly",
                send_ssrc=ssrc,
                msid=f"mountpoint {entry.kind.value}-{entry.mid}",
                cname="sfu-streaming",
            )
        )
    return sections


def _app_error(e: StreamingError) -> AppError:
    code = {
        MpError.NOT_FOUND: 404,
        MpError.UNAUTHORIZED: ErrorCode.UNAUTHORIZED,
        MpError.FORBIDDEN: ErrorCode.UNAUTHORIZED,
        MpError.INVALID: ErrorCode.MISSING_FIELD,
    }.get(e.code, ErrorCode.WRONG_STATE)
    return AppError(int(code), e.reason)


def _result(status: str, **extra: Any) -> dict[str, Any]:
    return {"streaming": "event", "result": {"status": status, **extra}}


class StreamingHandle(AppHandle):
    """One attached handle: at most one mountpoint watched, on one PeerConnection."""

    def __init__(self, ctx: AppContext, app: StreamingApp) -> None:
        super().__init__(ctx)
        self.app = app
        self.peer: Peer | None = None
        self.viewer: Viewer | None = None
        self.mountpoint: Mountpoint | None = None  # watched (or being offered)
        self._sections: list[NegotiatedMedia] = []

    # -- registry watcher -------------------------------------------------------------------

    def kick(self, reason: str) -> None:
        """The registry detached us (destroyed, kicked): tell the client, close the peer."""
        self.mountpoint = None
        self.ctx.emit("app", {"data": _result("kicked", reason=reason)})
        self._close_peer(f"kicked: {reason}")

    # -- requests ---------------------------------------------------------------------------

    async def on_message(self, body: dict[str, Any]) -> dict[str, Any]:
        request = body.get("request")
        if not isinstance(request, str) or request not in _REQUESTS:
            raise AppError(
                ErrorCode.MISSING_FIELD,
                f"'request' must be one of {', '.join(_REQUESTS)} (got {str(request)[:40]!r})",
            )
        try:
            if request == "list":
                return {"streaming": "list", "list": self.app.registry.list(Credentials())}
            if request == "info":
                secret = _optional_str(body, "secret")
                info = self.app.registry.info(_id(body), Credentials(secret=secret))
                return {"streaming": "info", "info": info}
            if request == "watch":
                return self._watch(_id(body), _optional_str(body, "pin"))
            if request == "start":
                await self.on_answer(_sdp(body))
                return _result("starting")
            if request == "switch":
                return self._switch(_id(body), _optional_str(body, "pin"))
            viewer = self._viewer()
            if request == "pause":
                viewer.pause()
                return _result("paused")
            if request == "resume":
                viewer.resume()
                return _result("started")
            self._detach()
            self._close_peer("stopped by the client")
            return _result("stopped")
        except StreamingError as e:
            raise _app_error(e) from None

    def _watch(self, mp_id: int, pin: str | None) -> dict[str, Any]:
        if self.peer is not None and not self.peer.closed:
            raise AppError(ErrorCode.WRONG_STATE, "already watching: stop, or switch")
        registry = self.app.registry
        mp = registry.attach(mp_id, self, pin)
        try:
            peer = Peer(
                self.ctx,
                on_rtcp=self._on_rtcp,
                on_connected=self._on_connected,
                on_closed=self._on_closed,
            )
            sections = watch_sections(mp)
            sdp = peer.offer(sections)
        except BaseException:
            registry.detach(mp_id, self)
            raise
        self.peer, self.mountpoint, self._sections = peer, mp, sections
        return {**_result("preparing"), "id": mp.id, "type": "offer", "sdp": sdp}

    async def on_answer(self, sdp: str) -> None:
        peer, mp = self.peer, self.mountpoint
        if peer is None or peer.closed or mp is None or not peer.offer_pending:
            raise AppError(ErrorCode.WRONG_STATE, 'no offer is pending: send {"request": "watch"}')
        peer.accept_answer(sdp)
        assert peer.transport is not None
        sending = {m.index: m for m in peer.media if m.send_ssrc is not None and m.codec}
        routes = [Route(sending[i], i) for i in range(len(mp.media)) if i in sending]
        if not routes:
            self._close_peer("the answer accepts none of the media")
            raise AppError(ErrorCode.INVALID_SDP, "the answer accepts none of the media")
        self.viewer = Viewer(
            self.app.hub,
            self.ctx.server.engine,
            peer.transport.id,
            mp,
            routes,
            on_feeds=self._on_feeds,
        )
        if peer.connected:
            self.viewer.on_connected()

    def _switch(self, mp_id: int, pin: str | None) -> dict[str, Any]:
        viewer, current = self._viewer(), self.mountpoint
        assert current is not None
        if mp_id == current.id:
            return {**_result("switched"), "id": mp_id}
        registry = self.app.registry
        other = registry.get(mp_id)
        why = compatible(current, other)
        if why is not None:
            raise AppError(ErrorCode.WRONG_STATE, f"cannot switch: {why}")
        registry.attach(mp_id, self, pin)
        registry.detach(current.id, self)
        self.mountpoint = other
        viewer.switch(other)
        return {**_result("switched"), "id": mp_id}

    def on_candidate(self, candidate: dict[str, Any] | None) -> None:
        if self.peer is None:
            raise AppError(ErrorCode.WRONG_STATE, "a candidate arrived before the server's offer")
        self.peer.add_remote_candidate(candidate)

    async def on_offer(self, sdp: str) -> str:
        raise AppError(ErrorCode.WRONG_STATE, 'the server offers here: send {"request": "watch"}')

    # -- peer events ------------------------------------------------------------------------

    def _viewer(self) -> Viewer:
        if self.viewer is None or self.viewer.closed or self.mountpoint is None:
            raise AppError(ErrorCode.WRONG_STATE, "not watching anything")
        return self.viewer

    def _on_connected(self) -> None:
        if self.viewer is not None:
            self.viewer.on_connected()
        self.ctx.emit("app", {"data": _result("started")})

    def _on_feeds(self, live: bool) -> None:
        self.ctx.emit("app", {"data": {"streaming": "event", "result": {"source": {"live": live}}}})

    def _on_rtcp(self, packets: list[rtcp.RtcpItem]) -> None:
        if self.viewer is not None:
            self.viewer.on_rtcp(packets)

    def _on_closed(self, reason: str) -> None:
        if self.viewer is not None:
            self.viewer.close()
        self._detach()
        self.ctx.emit("hangup", {"reason": reason})

    def _detach(self) -> None:
        if self.mountpoint is not None:
            self.app.registry.detach(self.mountpoint.id, self)
            self.mountpoint = None

    def _close_peer(self, reason: str) -> None:
        if self.viewer is not None:
            self.viewer.close()
        if self.peer is not None and not self.peer.closed:
            self.peer.close(reason)  # -> _on_closed

    def hangup(self, reason: str) -> None:
        self._detach()
        self._close_peer(reason)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "app": "streaming",
            "mountpoint": self.mountpoint.id if self.mountpoint else None,
        }
        if self.viewer is not None:
            out["viewer"] = self.viewer.stats()
        if self.peer is not None:
            out["peer"] = self.peer.stats()
        return out


def _id(body: dict[str, Any]) -> int:
    value = body.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AppError(ErrorCode.MISSING_FIELD, "'id' must be a mountpoint id (an integer > 0)")
    return value


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise AppError(ErrorCode.MISSING_FIELD, f"'{key}' must be a string")
    return value


def _sdp(body: dict[str, Any]) -> str:
    value = body.get("sdp")
    if not isinstance(value, str):
        raise AppError(ErrorCode.MISSING_FIELD, "'sdp' (the answer) must be a string")
    return value


class StreamingApp(Application):
    """The ``streaming`` application: watchers of the registry's mountpoints."""

    name = "streaming"

    def __init__(self, registry: MountpointRegistry, hub: MediaHub) -> None:
        self.registry = registry
        self.hub = hub

    def create_handle(self, ctx: AppContext) -> AppHandle:
        return StreamingHandle(ctx, self)
