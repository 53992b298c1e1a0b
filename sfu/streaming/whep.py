"""WHEP playback: a player pulls a mountpoint over HTTP + WebRTC (the WHIP conventions, reversed).

    POST    /whep/{id}              SDP offer, receive-only -> 201, Location, SDP answer
    PATCH   /whep/{id}/{resource}   trickled candidates -> 204
    DELETE  /whep/{id}/{resource}   the player stops -> 200
    OPTIONS /whep/...               CORS preflight -> 204

The player offers; each of its receiving m-sections gets the first media entry of its kind and
codec not taken yet (the answer only accepts the mountpoint's codecs). A mountpoint with a pin
wants it as ``Authorization: Bearer <pin>``. A WHEP session is a registry watcher like a
WebSocket one: counted in ``viewers``, kicked on destroy or kick, its consumers following the
mountpoint's feeds (:class:`~sfu.streaming.viewer.Viewer`).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Final

from aiohttp import web

from sfu.apps.base import AppError
from sfu.rtp import rtcp
from sfu.streaming.hub import MediaHub
from sfu.streaming.model import Mountpoint, StreamingError
from sfu.streaming.registry import MountpointRegistry
from sfu.streaming.trickle import CandidateCollector, parse_sdpfrag
from sfu.streaming.viewer import Route, Viewer
from sfu.streaming.whip import (
    SDP,
    SDPFRAG,
    bearer_token,
    cors,
    from_app,
    from_streaming,
    http_error,
    json_errors,
    mountpoint_id,
    preflight,
    read_body,
)
from sfu.streaming.whipsource import ANSWER_GRACE, entry_caps, match_sections
from sfu.webrtc.peer import Peer

__all__ = ["WHEP_PREFIX", "WhepSession", "setup_whep_routes"]

log = logging.getLogger(__name__)

WHEP_PREFIX: Final = "/whep"


class WhepSession:
    """One WHEP player: a PeerConnection the player offered, and its viewer."""

    def __init__(self, service: _Whep, mountpoint: Mountpoint, resource: str) -> None:
        self.service = service
        self.mountpoint = mountpoint
        self.resource = resource
        self.collector = CandidateCollector(f"WHEP mountpoint {mountpoint.id} {resource}")
        self.peer = Peer(
            service.hub.context(self.collector.name, self.collector),
            on_rtcp=self._on_rtcp,
            on_connected=self._on_connected,
            on_closed=self._on_closed,
        )
        self.viewer: Viewer | None = None
        self.closed = False

    async def start(self, offer: str) -> str:
        """Answer the player's offer (AppError when nothing in it can be served)."""
        media = self.mountpoint.media
        answer = self.peer.accept_offer(
            offer, send=lambda m: True, recv=lambda m: False, caps=entry_caps(media)
        )
        sections = match_sections(media, self.peer.media, sending=True)
        routes = [Route(m, i) for i, m in enumerate(sections) if m is not None]
        if not routes:
            wanted = ", ".join(f"{m.kind.value} {m.codec.value}" for m in media)
            raise AppError(422, f"the offer receives none of the mountpoint's media ({wanted})")
        assert self.peer.transport is not None
        self.viewer = Viewer(
            self.service.hub,
            self.service.hub.webrtc.engine,
            self.peer.transport.id,
            self.mountpoint,
            routes,
        )
        timeout = self.service.hub.transport_config.withhold_timeout + ANSWER_GRACE
        return await self.collector.answer(answer, timeout)

    def kick(self, reason: str) -> None:
        """The registry detached this player (mountpoint destroyed, kicked)."""
        self.close(f"kicked: {reason}", detach=False)

    def close(self, reason: str, *, detach: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if self.viewer is not None:
            self.viewer.close()
        if detach:
            self.service.registry.detach(self.mountpoint.id, self)
        self.service.sessions.pop(self.resource, None)
        if not self.peer.closed:
            self.peer.close(reason)

    def _on_connected(self) -> None:
        if self.viewer is not None:
            self.viewer.on_connected()

    def _on_rtcp(self, packets: list[rtcp.RtcpItem]) -> None:
        if self.viewer is not None:
            self.viewer.on_rtcp(packets)

    def _on_closed(self, reason: str) -> None:
        log.info("WHEP session %s closed: %s", self.resource, reason)
        self.close(reason)

    def stats(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "mountpoint": self.mountpoint.id,
            "viewer": self.viewer.stats() if self.viewer else None,
            "peer": self.peer.stats(),
        }


class _Whep:
    def __init__(self, registry: MountpointRegistry, hub: MediaHub) -> None:
        self.registry = registry
        self.hub = hub
        self.sessions: dict[str, WhepSession] = {}

    def _session(self, request: web.Request) -> WhepSession:
        mp_id = mountpoint_id(request)
        resource = request.match_info["resource"]
        session = self.sessions.get(resource)
        if session is None or session.mountpoint.id != mp_id:
            raise http_error(404, "not_found", f"no WHEP session {resource[:40]!r}")
        return session

    async def play(self, request: web.Request) -> web.StreamResponse:
        mp_id = mountpoint_id(request)
        pin = bearer_token(request)
        resource = secrets.token_urlsafe(12)
        try:
            mp = self.registry.get(mp_id)
            session = WhepSession(self, mp, resource)
            self.registry.attach(mp_id, session, pin)  # the pin, before the body is read
        except StreamingError as e:
            raise from_streaming(e) from None
        self.sessions[resource] = session
        try:
            answer = await session.start(await read_body(request, SDP))
        except AppError as e:
            session.close("refused")
            raise from_app(e) from None
        except BaseException:
            session.close("refused")
            raise
        location = f"{WHEP_PREFIX}/{mp_id}/{resource}"
        response = web.Response(
            status=201, body=answer.encode(), content_type=SDP, headers={"Location": location}
        )
        return cors(response)

    async def patch(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        _, candidates = parse_sdpfrag(await read_body(request, SDPFRAG))
        try:
            for candidate in candidates:
                session.peer.add_remote_candidate(candidate)
        except AppError as e:
            raise http_error(400, "bad_candidate", e.reason) from None
        return cors(web.Response(status=204))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        session.close("the player ended the session")
        return cors(web.json_response({"deleted": session.resource}))


def setup_whep_routes(app: web.Application, registry: MountpointRegistry, hub: MediaHub) -> None:
    """Add the WHEP routes to ``app`` (before any catch-all static route)."""
    whep = _Whep(registry, hub)
    app.router.add_post(WHEP_PREFIX + "/{id}", json_errors(whep.play))
    app.router.add_route("OPTIONS", WHEP_PREFIX + "/{id}", preflight)
    item = WHEP_PREFIX + "/{id}/{resource}"
    app.router.add_patch(item, json_errors(whep.patch))
    app.router.add_delete(item, json_errors(whep.delete))
    app.router.add_route("OPTIONS", item, preflight)
