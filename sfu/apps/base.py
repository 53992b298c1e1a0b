"""The small interface between the core and its applications (echo test, streaming, rooms).

Like Janus's plugin.h, but in Python terms: the signaling layer owns connections and handles; an
:class:`Application` creates one :class:`AppHandle` per attached handle; the handle gets an
:class:`AppContext` through which it reaches the server (WebRTC transports, the engine) and sends
events to its client. One method per signaling request a handle can receive.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfu.dtls.certificate import Certificate
from sfu.webrtc.server import WebRtcServer
from sfu.webrtc.transport import TransportConfig


class AppError(Exception):
    """A request the application refuses; becomes a signaling error with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class AppContext:
    """What the core gives a handle."""

    handle_id: str
    server: WebRtcServer
    certificate: Certificate
    transport_config: TransportConfig
    loop: asyncio.AbstractEventLoop
    emit: Callable[[str, dict[str, Any]], None]  # (event name, fields) to the client


class AppHandle:
    """One attached handle of an application."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    async def on_offer(self, sdp: str) -> str:
        """The client offers; return the answer SDP."""
        raise AppError(409, "this application does not accept offers")

    async def on_answer(self, sdp: str) -> None:
        raise AppError(409, "no offer is pending")

    def on_candidate(self, candidate: dict[str, Any] | None) -> None:
        raise AppError(409, "no PeerConnection to add a candidate to")

    async def on_message(self, body: dict[str, Any]) -> dict[str, Any]:
        raise AppError(400, "this application takes no messages")

    def hangup(self, reason: str) -> None:
        """Close the PeerConnection but keep the handle."""

    def close(self) -> None:
        """The handle is detached or its connection closed."""
        self.hangup("detached")

    def stats(self) -> dict[str, Any]:
        return {}


class Application(abc.ABC):
    name: str

    @abc.abstractmethod
    def create_handle(self, ctx: AppContext) -> AppHandle: ...
