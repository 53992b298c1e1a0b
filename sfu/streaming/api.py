"""The mountpoints' REST API (aiohttp): one small handler per operation, JSON errors only.

``setup_routes(app, registry)`` adds, next to the server's other routes:

    GET    /api/openapi.json                 the OpenAPI 3.1 document
    GET    /api/mountpoints                  list (private ones only with the admin key)
    POST   /api/mountpoints                  create
    GET    /api/mountpoints/{id}             info
    PATCH  /api/mountpoints/{id}             edit
    DELETE /api/mountpoints/{id}             destroy
    POST   /api/mountpoints/{id}/enable      enable
    POST   /api/mountpoints/{id}/disable     disable
    POST   /api/mountpoints/{id}/kick        kick every watcher

The admin key comes in ``Authorization: Bearer <key>`` (or ``X-Admin-Key: <key>``), a
mountpoint's secret in ``X-Mountpoint-Secret``. Every failure under these paths, including an
unknown path, a wrong method or an oversized body, is ``{"error": {"code", "reason"}}`` with a 4xx
status (5xx only for a failing database or a bug). docs/streaming.md is the user's guide.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from sfu.streaming.model import (
    MAX_ID,
    ErrorCode,
    StreamingError,
    parse_mountpoint,
    parse_patch,
)
from sfu.streaming.openapi import build_openapi
from sfu.streaming.registry import Credentials, MountpointRegistry

__all__ = ["ADMIN_HEADER", "API_PREFIX", "MAX_BODY_BYTES", "SECRET_HEADER", "setup_routes"]

log = logging.getLogger(__name__)

API_PREFIX: Final = "/api/mountpoints"
OPENAPI_PATH: Final = "/api/openapi.json"
ADMIN_HEADER: Final = "X-Admin-Key"
SECRET_HEADER: Final = "X-Mountpoint-Secret"
MAX_BODY_BYTES: Final = 64 * 1024
_ID: Final = re.compile(r"[0-9]{1,16}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup_routes(app: web.Application, registry: MountpointRegistry) -> None:
    """Add the mountpoints' routes and their JSON-error middleware to ``app`` (not yet started).

    The admin key is the registry's (``MountpointRegistry(admin_key=...)``), so the REST API
    and the WebSocket application check the same one.
    """
    api = _Api(registry)
    app.middlewares.append(_json_errors)
    app.router.add_get(OPENAPI_PATH, api.openapi)
    app.router.add_get(API_PREFIX, api.list)
    app.router.add_post(API_PREFIX, api.create)
    app.router.add_get(API_PREFIX + "/{id}", api.info)
    app.router.add_patch(API_PREFIX + "/{id}", api.edit)
    app.router.add_delete(API_PREFIX + "/{id}", api.destroy)
    app.router.add_post(API_PREFIX + "/{id}/enable", api.enable)
    app.router.add_post(API_PREFIX + "/{id}/disable", api.disable)
    app.router.add_post(API_PREFIX + "/{id}/kick", api.kick)


def _ours(path: str) -> bool:
    return path in (OPENAPI_PATH, API_PREFIX) or path.startswith(API_PREFIX + "/")


def _error(err: StreamingError, status: int | None = None) -> web.Response:
    return web.json_response(err.to_json(), status=status or err.status)


_HTTP_CODES: Final = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.TOO_LARGE,
}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under the API's paths, every failure becomes a JSON error body."""
    if not _ours(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except StreamingError as e:
        return _error(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, ErrorCode.BAD_JSON)
        reason = {
            404: f"no such API path {request.path[:100]!r}",
            405: f"{request.method} is not allowed on {request.path[:100]!r}",
            413: f"the body is larger than {MAX_BODY_BYTES} bytes",
        }.get(e.status, e.reason)
        response = _error(StreamingError(code, reason), e.status)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except Exception:
        log.exception("mountpoints API: %s %s failed", request.method, request.path)
        return _error(StreamingError(ErrorCode.INTERNAL, "internal error (logged by the server)"))


def _credentials(request: web.Request) -> Credentials:
    admin: str | None = None
    auth = request.headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise StreamingError(
                ErrorCode.UNAUTHORIZED, "the Authorization header must be 'Bearer <admin key>'"
            )
        admin = value.strip()
    else:
        admin = request.headers.get(ADMIN_HEADER)
    return Credentials(admin_key=admin, secret=request.headers.get(SECRET_HEADER))


def _mountpoint_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not _ID.fullmatch(text) or int(text) > MAX_ID or int(text) == 0:
        raise StreamingError(
            ErrorCode.NOT_FOUND, f"no mountpoint {text[:40]!r}: ids are 1-{MAX_ID}"
        )
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate field {key[:40]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _json_body(request: web.Request) -> Any:
    """The request's JSON value, or a 400/413/415 StreamingError saying what is wrong."""
    if request.content_type.startswith("multipart/"):  # anything else is read as JSON (curl -d)
        raise StreamingError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"the body must be application/json, not {request.content_type[:60]!r}",
        )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise StreamingError(ErrorCode.TOO_LARGE, f"the body is larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise StreamingError(ErrorCode.TOO_LARGE, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise StreamingError(ErrorCode.BAD_JSON, "the body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StreamingError(
            ErrorCode.BAD_JSON, f"the body is not UTF-8 (byte {e.start})"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        reason = f"the body is not JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        raise StreamingError(ErrorCode.BAD_JSON, reason) from None
    except ValueError as e:  # duplicate field, NaN, an integer of more than 4300 digits
        raise StreamingError(ErrorCode.BAD_JSON, f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise StreamingError(ErrorCode.BAD_JSON, "the body is nested too deeply") from None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


class _Api:
    def __init__(self, registry: MountpointRegistry) -> None:
        self.registry = registry
        self._openapi: dict[str, Any] | None = None

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = build_openapi()
        return _json(self._openapi)

    async def list(self, request: web.Request) -> web.Response:
        return _json({"mountpoints": self.registry.list(_credentials(request))})

    async def create(self, request: web.Request) -> web.Response:
        creds = _credentials(request)
        self.registry.authorize_create(creds)  # before reading: no hints for the unauthorized
        spec = parse_mountpoint(await _json_body(request))
        mp = await self.registry.create(spec, creds)
        location = f"{API_PREFIX}/{mp.id}"
        return _json(self.registry.describe(mp.id, admin=True), 201, {"Location": location})

    async def info(self, request: web.Request) -> web.Response:
        return _json(self.registry.info(_mountpoint_id(request), _credentials(request)))

    async def edit(self, request: web.Request) -> web.Response:
        mp_id, creds = _mountpoint_id(request), _credentials(request)
        self.registry.authorize_change(mp_id, creds)
        patch = parse_patch(await _json_body(request))
        await self.registry.edit(mp_id, patch, creds)
        return _json(self.registry.describe(mp_id, admin=True))

    async def destroy(self, request: web.Request) -> web.Response:
        mp = await self.registry.destroy(_mountpoint_id(request), _credentials(request))
        return _json({"destroyed": mp.id})

    async def enable(self, request: web.Request) -> web.Response:
        mp = await self.registry.enable(_mountpoint_id(request), _credentials(request))
        return _json(self.registry.describe(mp.id, admin=True))

    async def disable(self, request: web.Request) -> web.Response:
        mp = await self.registry.disable(_mountpoint_id(request), _credentials(request))
        return _json(self.registry.describe(mp.id, admin=True))

    async def kick(self, request: web.Request) -> web.Response:
        mp_id = _mountpoint_id(request)
        kicked = self.registry.kick_all(mp_id, _credentials(request))
        return _json({"kicked": kicked})
