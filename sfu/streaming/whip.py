"""WHIP ingest (RFC 9725): a publisher pushes a ``whip`` mountpoint's media over HTTP + WebRTC.

    POST    /whip/{id}              SDP offer (application/sdp) -> 201, Location, SDP answer
    PATCH   /whip/{id}/{resource}   trickled candidates (application/trickle-ice-sdpfrag) -> 204
    DELETE  /whip/{id}/{resource}   the publisher stops -> 200
    OPTIONS /whip/...               CORS preflight -> 204

Authorization: ``Bearer <token>`` when the mountpoint's whip source has a token (missing: 401
with ``WWW-Authenticate: Bearer``; wrong: 403), checked before the body is read. One publisher
at a time (409 while one is connected). The answer carries the server's candidates (no
server-side trickle). Errors are ``{"error": {"code", "reason"}}`` with a 4xx status.

The helpers here (reading an SDP body, bearer tokens, CORS) serve WHEP too (:mod:`whep`).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

from sfu.apps.base import AppError
from sfu.streaming.hub import MediaHub
from sfu.streaming.model import MAX_ID, ErrorCode, SourceType, StreamingError, WhipSource
from sfu.streaming.registry import MountpointRegistry
from sfu.streaming.trickle import parse_sdpfrag
from sfu.streaming.whipsource import WhipStreamSource

__all__ = [
    "MAX_SDP_BYTES",
    "WHIP_PREFIX",
    "HttpError",
    "bearer_token",
    "check_token",
    "cors",
    "from_app",
    "from_streaming",
    "http_error",
    "json_errors",
    "mountpoint_id",
    "preflight",
    "read_body",
    "setup_whip_routes",
]

log = logging.getLogger(__name__)

WHIP_PREFIX: Final = "/whip"
MAX_SDP_BYTES: Final = 64 * 1024
SDP: Final = "application/sdp"
SDPFRAG: Final = "application/trickle-ice-sdpfrag"
_ID: Final = re.compile(r"[0-9]{1,16}")
_CORS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(_CORS)
    return response


class HttpError(Exception):
    """A refused WHIP/WHEP request: status, code, reason (the JSON body), extra headers."""

    def __init__(
        self, status: int, code: str, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        body = {"error": {"code": self.code, "reason": self.reason}}
        response = web.json_response(body, status=self.status, headers=self.headers)
        cors(response)
        return response


def http_error(status: int, code: str, reason: str) -> HttpError:
    return HttpError(status, code, reason)


def _unauthorized(reason: str) -> HttpError:
    return HttpError(401, "unauthorized", reason, {"WWW-Authenticate": "Bearer"})


def from_streaming(e: StreamingError) -> HttpError:
    if e.code is ErrorCode.UNAUTHORIZED:
        return _unauthorized(e.reason)
    return HttpError(e.status, e.code.value, e.reason)


def from_app(e: AppError) -> HttpError:
    """A refused offer: 409 stays (a conflict of state); anything else is a bad request."""
    if e.code == 409:
        return HttpError(409, "conflict", e.reason)
    return HttpError(400, "bad_sdp", e.reason)


def json_errors(handler: Handler) -> Handler:
    """``handler`` with every HttpError (and any bug, as a 500) turned into a JSON response."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as e:
            return e.response()
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return HttpError(500, "internal", "internal error (logged by the server)").response()

    return wrapped


def mountpoint_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not _ID.fullmatch(text) or not 0 < int(text) <= MAX_ID:
        raise http_error(404, "not_found", f"no mountpoint {text[:40]!r}: ids are 1-{MAX_ID}")
    return int(text)


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of the Authorization header (None without one; 401 when malformed)."""
    auth = request.headers.get("Authorization")
    if auth is None:
        return None
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def check_token(expected: str | None, given: str | None, what: str) -> None:
    """Nothing when no token is needed or the right one came; else 401 (none) or 403 (wrong)."""
    if expected is None:
        return
    if given is None:
        raise _unauthorized(f"{what} needs 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
        raise http_error(403, "forbidden", f"wrong token for {what}")


async def read_body(request: web.Request, content_type: str) -> str:
    """The request's text body of ``content_type`` (415, 413 or 400 with a reason otherwise)."""
    if request.content_type != content_type:
        raise http_error(
            415,
            "unsupported_media_type",
            f"the body must be {content_type}, not {request.content_type[:60]!r}",
        )
    if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
        raise http_error(413, "too_large", f"the body is larger than {MAX_SDP_BYTES} bytes")
    raw = await request.content.read(MAX_SDP_BYTES + 1)
    if len(raw) > MAX_SDP_BYTES:
        raise http_error(413, "too_large", f"the body is larger than {MAX_SDP_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise http_error(400, "bad_sdp", f"the body is not UTF-8 (byte {e.start})") from None
    if content_type == SDP and not text.lstrip().startswith("v=0"):
        raise http_error(400, "bad_sdp", "the body is not an SDP offer (it must start with v=0)")
    return text


async def preflight(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=204)
    response.headers.update(
        {
            "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Max-Age": "600",
        }
    )
    return cors(response)


class _Whip:
    def __init__(self, registry: MountpointRegistry, hub: MediaHub) -> None:
        self.registry = registry
        self.hub = hub

    def _source(self, request: web.Request) -> tuple[int, WhipStreamSource]:
        """The mountpoint's running WHIP source, its token checked (before any body is read)."""
        mp_id = mountpoint_id(request)
        try:
            mp = self.registry.get(mp_id)
        except StreamingError as e:
            raise from_streaming(e) from None
        if mp.source_type is not SourceType.WHIP:
            raise http_error(
                409, "conflict", f"mountpoint {mp_id} is fed by {mp.source_type.value}, not WHIP"
            )
        first = mp.media[0].source
        expected = first.token if isinstance(first, WhipSource) else None
        check_token(expected, bearer_token(request), f"WHIP mountpoint {mp_id}")
        source = self.hub.source(mp_id)
        if not isinstance(source, WhipStreamSource):
            raise http_error(409, "disabled", f"mountpoint {mp_id} is disabled")
        return mp_id, source

    async def publish(self, request: web.Request) -> web.StreamResponse:
        mp_id, source = self._source(request)
        offer = await read_body(request, SDP)
        try:
            resource, answer = await source.publish(offer)
        except AppError as e:
            raise from_app(e) from None
        location = f"{WHIP_PREFIX}/{mp_id}/{resource}"
        response = web.Response(
            status=201, body=answer.encode(), content_type=SDP, headers={"Location": location}
        )
        return cors(response)

    async def patch(self, request: web.Request) -> web.StreamResponse:
        _, source = self._source(request)
        resource = request.match_info["resource"]
        text = await read_body(request, SDPFRAG)
        _, candidates = parse_sdpfrag(text)
        try:
            for candidate in candidates:
                if not source.add_candidate(resource, candidate):
                    raise http_error(404, "not_found", f"no WHIP session {resource[:40]!r}")
        except AppError as e:
            raise http_error(400, "bad_candidate", e.reason) from None
        return cors(web.Response(status=204))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        _, source = self._source(request)
        resource = request.match_info["resource"]
        if not source.unpublish(resource, "the publisher ended the session"):
            raise http_error(404, "not_found", f"no WHIP session {resource[:40]!r}")
        return cors(web.json_response({"deleted": resource}))


def setup_whip_routes(app: web.Application, registry: MountpointRegistry, hub: MediaHub) -> None:
    """Add the WHIP routes to ``app`` (before any catch-all static route)."""
    whip = _Whip(registry, hub)
    app.router.add_post(WHIP_PREFIX + "/{id}", json_errors(whip.publish))
    app.router.add_route("OPTIONS", WHIP_PREFIX + "/{id}", preflight)
    item = WHIP_PREFIX + "/{id}/{resource}"
    app.router.add_patch(item, json_errors(whip.patch))
    app.router.add_delete(item, json_errors(whip.delete))
    app.router.add_route("OPTIONS", item, preflight)
