"""One signaling connection: parses frames, dispatches each request type to its own handler."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sfu.apps.base import AppContext, AppError, AppHandle, Application
from sfu.dtls.certificate import Certificate
from sfu.signaling.protocol import ErrorCode, RequestId, SignalingError, ack, error, event, require
from sfu.webrtc.server import WebRtcServer
from sfu.webrtc.transport import TransportConfig

log = logging.getLogger(__name__)

Frame = dict[str, Any]


@dataclass
class Core:
    """What every connection shares: the WebRTC server, the certificate, the applications."""

    server: WebRtcServer
    certificate: Certificate
    transport_config: TransportConfig
    applications: dict[str, Application]
    max_frame_bytes: int = 256 * 1024
    max_handles: int = 10000
    handles: dict[str, AppHandle] = field(
        default_factory=dict
    )  # every live handle, for the stats API


class SignalingConnection:
    """Serves one WebSocket: ``handle_text`` returns the reply frame; events go out via ``send``."""

    def __init__(self, core: Core, send: Callable[[Frame], None], loop: Any) -> None:
        self.core = core
        self._send = send
        self._loop = loop
        self.handles: dict[str, AppHandle] = {}
        self._counter = itertools.count(1)
        self.id = secrets.token_hex(4)
        self._handlers: dict[str, Callable[[Frame], Awaitable[dict[str, Any]]]] = {
            "attach": self._attach,
            "offer": self._offer,
            "answer": self._answer,
            "candidate": self._candidate,
            "message": self._message,
            "hangup": self._hangup,
            "detach": self._detach,
            "keepalive": self._keepalive,
        }

    async def handle_text(self, text: str) -> Frame:
        request_id: RequestId = None
        try:
            if len(text) > self.core.max_frame_bytes:
                raise SignalingError(
                    ErrorCode.LIMIT, f"frame larger than {self.core.max_frame_bytes} bytes"
                )
            try:
                msg = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise SignalingError(ErrorCode.BAD_JSON, f"not JSON: {exc}") from None
            if not isinstance(msg, dict):
                raise SignalingError(ErrorCode.BAD_JSON, "a frame must be a JSON object")
            rid = msg.get("id")
            if isinstance(rid, str | int) and not isinstance(rid, bool):
                request_id = rid
            kind = require(msg, "type", str)
            handler = self._handlers.get(kind)
            if handler is None:
                raise SignalingError(ErrorCode.UNKNOWN_TYPE, f"unknown request type '{kind[:64]}'")
            return ack(request_id, await handler(msg))
        except SignalingError as exc:
            return error(request_id, exc.code, exc.reason)
        except AppError as exc:
            return error(request_id, exc.code, exc.reason)
        except Exception:
            log.exception("internal error handling a signaling frame")
            return error(request_id, ErrorCode.INTERNAL, "internal error (logged by the server)")

    def close(self) -> None:
        for hid in list(self.handles):
            self._drop(hid, "signaling connection closed")

    # -- one handler per request type ---------------------------------------------------------------

    async def _attach(self, msg: Frame) -> dict[str, Any]:
        name = require(msg, "app", str)
        app = self.core.applications.get(name)
        if app is None:
            known = ", ".join(sorted(self.core.applications))
            raise SignalingError(
                ErrorCode.UNKNOWN_APP, f"unknown app '{name[:64]}' (known: {known})"
            )
        if len(self.core.handles) >= self.core.max_handles:
            raise SignalingError(ErrorCode.LIMIT, "too many sessions on this server")
        hid = f"{self.id}-{next(self._counter)}"
        ctx = AppContext(
            handle_id=hid,
            server=self.core.server,
            certificate=self.core.certificate,
            transport_config=self.core.transport_config,
            loop=self._loop,
            emit=functools.partial(self._emit, hid),
        )
        handle = app.create_handle(ctx)
        self.handles[hid] = handle
        self.core.handles[hid] = handle
        return {"handle": hid}

    async def _offer(self, msg: Frame) -> dict[str, Any]:
        handle = self._handle(msg)
        sdp = require(msg, "sdp", str)
        answer = await handle.on_offer(sdp)
        return {"type": "answer", "sdp": answer}

    async def _answer(self, msg: Frame) -> dict[str, Any]:
        handle = self._handle(msg)
        await handle.on_answer(require(msg, "sdp", str))
        return {}

    async def _candidate(self, msg: Frame) -> dict[str, Any]:
        handle = self._handle(msg)
        if "candidate" not in msg:
            raise SignalingError(
                ErrorCode.MISSING_FIELD, "'candidate' is required (null = end-of-candidates)"
            )
        cand = msg["candidate"]
        if cand is not None and not isinstance(cand, dict):
            raise SignalingError(ErrorCode.MISSING_FIELD, "'candidate' must be an object or null")
        handle.on_candidate(cand)
        return {}

    async def _message(self, msg: Frame) -> dict[str, Any]:
        handle = self._handle(msg)
        return await handle.on_message(require(msg, "body", dict))

    async def _hangup(self, msg: Frame) -> dict[str, Any]:
        self._handle(msg).hangup("hangup requested")
        return {}

    async def _detach(self, msg: Frame) -> dict[str, Any]:
        hid = require(msg, "handle", str)
        self._handle(msg)
        self._drop(hid, "detached")
        return {}

    async def _keepalive(self, msg: Frame) -> dict[str, Any]:
        return {}

    # -- helpers --------------------------------------------------------------------------------

    def _handle(self, msg: Frame) -> AppHandle:
        hid = require(msg, "handle", str)
        handle = self.handles.get(hid)
        if handle is None:
            raise SignalingError(
                ErrorCode.NO_SUCH_HANDLE, f"no handle '{hid[:64]}' on this connection"
            )
        return handle

    def _drop(self, hid: str, reason: str) -> None:
        handle = self.handles.pop(hid, None)
        self.core.handles.pop(hid, None)
        if handle is not None:
            try:
                handle.close()
            except Exception:
                log.exception("closing handle %s", hid)

    def _emit(self, hid: str, name: str, fields: dict[str, Any]) -> None:
        if hid in self.handles:
            self._send(event(hid, name, fields))
