"""`sfu serve`: HTTP + WebSocket signaling on one TCP port, media on one UDP port, state in memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from sfu.apps.echotest import EchoTest
from sfu.apps.room import RoomApp, RoomPolicy
from sfu.apps.streaming import StreamingApp
from sfu.config import Config, MediaMode, RoomsConfig, StreamingConfig
from sfu.doctor.live import LiveDoctor, doctor_settings
from sfu.dtls.certificate import Certificate
from sfu.engine.base import IngestEngine
from sfu.ice.agent import IceConfig
from sfu.signaling.connection import Core, SignalingConnection
from sfu.streaming.api import setup_routes as setup_mountpoint_routes
from sfu.streaming.hub import MediaHub
from sfu.streaming.lazystore import open_store
from sfu.streaming.registry import MountpointRegistry
from sfu.streaming.whep import setup_whep_routes
from sfu.streaming.whip import setup_whip_routes
from sfu.webrtc.server import MediaSettings, WebRtcServer
from sfu.webrtc.transport import TransportConfig

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@dataclass(frozen=True)
class HttpSettings:
    listen: Sequence[tuple[str, int]] = (("0.0.0.0", 8080),)
    tls_cert: str | None = None
    tls_key: str | None = None
    web_dir: Path = WEB_DIR


@dataclass(frozen=True)
class ServerSettings:
    http: HttpSettings = field(default_factory=HttpSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    transport: TransportConfig = field(default_factory=TransportConfig)
    streaming: StreamingConfig = field(default_factory=lambda: StreamingConfig(db_path=":memory:"))
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    max_frame_bytes: int = 256 * 1024
    max_sessions: int = 10000


def settings_from_config(config: Config) -> ServerSettings:
    """Map the validated configuration onto what the server's parts take."""
    http = HttpSettings(
        listen=tuple((hp.host, hp.port) for hp in config.http.listen),
        tls_cert=str(config.http.tls_cert) if config.http.tls_cert else None,
        tls_key=str(config.http.tls_key) if config.http.tls_key else None,
        web_dir=config.http.static_dir or WEB_DIR,
    )
    ice = IceConfig(
        early_checks=config.ice.early_checks,
        consent_timeout=config.ice.consent_timeout,
        failure_timeout=config.ice.failure_timeout,
    )
    transport = TransportConfig(
        early_checks=config.ice.early_checks,
        withhold_timeout=config.ice.withhold_timeout_ms / 1000.0,
        ice=ice,
    )
    return ServerSettings(
        http=http,
        media=MediaSettings.from_config(config),
        transport=transport,
        streaming=config.streaming,
        rooms=config.rooms,
        max_frame_bytes=config.limits.max_ws_message_bytes,
        max_sessions=config.limits.max_sessions or 1_000_000,
    )


def run(config: Config) -> Coroutine[Any, Any, None]:
    """Entry point of `sfu serve` (the CLI runs the returned coroutine)."""
    return serve_forever(settings_from_config(config))


def make_engine() -> IngestEngine:
    """The C engine when it is built, else the reference engine.

    ``SFU_ENGINE=python`` or ``SFU_ENGINE=cython`` forces one (``cython`` fails if not built).
    """
    choice = os.environ.get("SFU_ENGINE", "").strip().lower() or "auto"
    if choice not in ("auto", "python", "cython"):
        raise SystemExit(f"SFU_ENGINE={choice!r}: expected 'python' or 'cython'")
    if choice != "python":
        try:
            from sfu.engine.cengine import CEngine
        except ImportError as exc:
            if choice == "cython":
                raise SystemExit(
                    f"SFU_ENGINE=cython, but the C engine is not built: {exc}"
                ) from exc
            log.warning("the C engine is not built (%s); using the reference engine", exc)
        else:
            return CEngine()
    from sfu.engine.pyengine import PyEngine

    return PyEngine()


class SfuServer:
    """The whole server: build with settings, ``await start()``, ``await stop()``."""

    def __init__(self, settings: ServerSettings, engine: IngestEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine()
        self.webrtc = WebRtcServer(self.engine, settings.media)
        self.doctor = LiveDoctor(
            self.webrtc, doctor_settings(settings.media, settings.transport.early_checks)
        )
        self._doctor_task: asyncio.Task[None] | None = None
        self.core = Core(
            server=self.webrtc,
            certificate=Certificate.generate(),
            transport_config=settings.transport,
            applications={
                "echotest": EchoTest(),
                "room": RoomApp(
                    RoomPolicy(
                        token_secret=settings.rooms.token_secret,
                        create_rooms=settings.rooms.auto_create,
                    )
                ),
            },
            max_frame_bytes=settings.max_frame_bytes,
            max_handles=settings.max_sessions,
        )
        self._setup_streaming()
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.http_addresses: list[tuple[str, int]] = []
        self._connections: set[web.WebSocketResponse] = set()

    def _setup_streaming(self) -> None:
        """Mountpoints: the registry (REST API, persistence), the media hub, the watch app."""
        cfg = self.settings.streaming
        media = self.settings.media.media
        reserved = (
            range(media.port_min, media.port_max + 1)
            if media.mode is MediaMode.PORT_RANGE
            else (media.port,)
        )
        self.hub = MediaHub(
            self.engine, self.webrtc, self.core.certificate, self.settings.transport
        )
        self.registry = MountpointRegistry(
            admin_key=cfg.admin_key,
            store=open_store(cfg.db_path),
            rtp_port_min=cfg.rtp_port_min,
            rtp_port_max=cfg.rtp_port_max,
            reserved_ports=reserved,
            source_factory=self.hub.make_source,
        )
        self.core.applications["streaming"] = StreamingApp(self.registry, self.hub)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self.webrtc.open()
        self.webrtc.start()
        await self.webrtc.gather()  # STUN srflx, TURN relays: before any transport exists
        await self.registry.start()  # permanent mountpoints back, their sources started
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        ssl_ctx = None
        if self.settings.http.tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.settings.http.tls_cert, self.settings.http.tls_key)
        for host, port in self.settings.http.listen:
            site = web.TCPSite(self._runner, host, port, ssl_context=ssl_ctx)
            await site.start()
            server = getattr(site, "_server", None)
            for sock in getattr(server, "sockets", []) or []:
                name = sock.getsockname()
                self.http_addresses.append((name[0], name[1]))
        log.info(
            "sfu serving HTTP%s on %s, media UDP on %s",
            "S" if ssl_ctx else "",
            ", ".join(f"{h}:{p}" for h, p in self.http_addresses),
            ", ".join(f"{h}:{p}" for h, p in self.webrtc.local_addresses),
        )
        # one log line with the NAT verdict within ~2 s; serving does not wait for it
        self._doctor_task = asyncio.get_running_loop().create_task(self.doctor.log_startup(2.0))

    async def stop(self) -> None:
        if self._doctor_task is not None:
            self._doctor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._doctor_task
        for ws in list(self._connections):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.registry.close()
        if self.registry.store is not None:
            self.registry.store.close()
        self.webrtc.close()

    # -- HTTP -------------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/doctor", self._doctor)
        app.router.add_get("/api/sessions", self._sessions)
        app.router.add_get("/api/sessions/{handle}/stats", self._session_stats)
        setup_mountpoint_routes(app, self.registry)
        setup_whip_routes(app, self.registry, self.hub)
        setup_whep_routes(app, self.registry, self.hub)
        web_dir = self.settings.http.web_dir
        if web_dir.is_dir():
            app.router.add_get("/", self._index)
            app.router.add_static("/", web_dir, show_index=False)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.settings.http.web_dir / "index.html")

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "sessions": len(self.core.handles)})

    async def _stats(self, request: web.Request) -> web.Response:
        """Server-wide counters: what was received, routed, dropped, and why."""
        return web.json_response(
            {
                "engine": type(self.engine).__name__,
                "engine_counters": asdict(self.engine.stats()),
                "mux": asdict(self.webrtc.counters),
                "transports": len(self.webrtc.transports),
                "sessions": len(self.core.handles),
                "ice_rejected": self.webrtc.counters.ice_rejected_closed
                + sum(t.ice_rejected() for t in self.webrtc.transports),
            }
        )

    async def _doctor(self, request: web.Request) -> web.Response:
        """The NAT diagnosis through the media sockets (docs/doctor.md); ``?fresh=1`` re-probes."""
        report = await self.doctor.diagnose(2.0, fresh=request.query.get("fresh") == "1")
        return web.json_response(report.to_dict())

    async def _sessions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "sessions": [
                    {"handle": hid, "app": type(h).__name__} for hid, h in self.core.handles.items()
                ]
            }
        )

    async def _session_stats(self, request: web.Request) -> web.Response:
        hid = request.match_info["handle"]
        handle = self.core.handles.get(hid)
        if handle is None:
            return web.json_response({"error": f"no session '{hid[:64]}'"}, status=404)
        return web.json_response(handle.stats(), dumps=_dumps)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=self.settings.max_frame_bytes)
        await ws.prepare(request)
        self._connections.add(ws)
        loop = asyncio.get_running_loop()

        tasks: set[asyncio.Task[None]] = set()

        def send(frame: dict[str, Any]) -> None:
            if not ws.closed:
                task = loop.create_task(_safe_send(ws, frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        conn = SignalingConnection(self.core, send, loop)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    reply = await conn.handle_text(msg.data)
                    await _safe_send(ws, reply)
                elif msg.type == WSMsgType.BINARY:
                    await _safe_send(
                        ws,
                        {
                            "type": "error",
                            "id": None,
                            "code": 400,
                            "reason": "binary frames are not accepted",
                        },
                    )
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            conn.close()
            self._connections.discard(ws)
        return ws


async def _safe_send(ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(_dumps(frame))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


async def serve_forever(settings: ServerSettings) -> None:
    server = SfuServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
