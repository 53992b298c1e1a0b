"""A reverse proxy that delays every signaling frame: the lab's "Internet" between client and server.

The race the lab shows only appears when signaling is slower than a client's first connectivity
check, as it is on real networks; in the lab, TCP is instant. The proxy sits where Docker's
userland proxy sits (on the Docker host, in front of the published HTTP port) and forwards:

- ``/d/<ms>/<path>`` WebSocket upgrades: each text frame is delayed by ``<ms>`` milliseconds in
  each direction, order kept (the frame is sent at its arrival time plus the delay);
- any other GET (pages, ``/api/...``, and ``/d/<ms>/...`` too): passed through undelayed.

Run as ``python -m sfu.natlab.proxy --listen IP:PORT --upstream http://IP:PORT``; it prints
``proxy listening on IP:PORT`` once ready and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, web

MAX_DELAY_MS = 10_000
_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Content-Length",
        "Content-Encoding",
        "Upgrade",
        "Host",
    )
)


@dataclass(frozen=True)
class ProxyRoute:
    """What a request path asks for: a delay and the upstream path."""

    delay: float
    path: str


def parse_route(path: str) -> ProxyRoute:
    """``/d/50/ws`` -> (0.05 s, ``/ws``); any other path -> (0, path). ValueError if bad."""
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[0] == "" and parts[1] == "d":
        ms = int(parts[2])
        if not 0 <= ms <= MAX_DELAY_MS:
            raise ValueError(f"delay {ms} ms is not in 0..{MAX_DELAY_MS}")
        return ProxyRoute(ms / 1000.0, "/" + (parts[3] if len(parts) > 3 else ""))
    return ProxyRoute(0.0, path)


class DelayLine:
    """Frames out in order, each no earlier than its arrival time plus ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._queue: asyncio.Queue[tuple[float, WSMsgType, str | bytes] | None] = asyncio.Queue()

    def put(self, kind: WSMsgType, data: str | bytes) -> None:
        self._queue.put_nowait((time.monotonic() + self.delay, kind, data))

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def drain_to(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        """Send every frame when due until close() is called or the socket closes."""
        while (item := await self._queue.get()) is not None:
            due, kind, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if ws.closed:
                return
            if kind is WSMsgType.TEXT:
                assert isinstance(data, str)
                await ws.send_str(data)
            else:
                assert isinstance(data, bytes)
                await ws.send_bytes(data)


class DelayProxy:
    """The aiohttp application; one upstream HTTP session shared by all requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            route = parse_route(request.path)
        except ValueError as exc:
            return web.Response(status=400, text=str(exc))
        target = (
            self.upstream
            + route.path
            + (f"?{request.query_string}" if request.query_string else "")
        )
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, target, route.delay)
        return await self._http(request, target)

    async def _http(self, request: web.Request, target: str) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            async with self._session.get(target, headers=headers, allow_redirects=False) as up:
                body = await up.read()
                out = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS}
                return web.Response(status=up.status, body=body, headers=out)
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"upstream: {exc}")

    async def _websocket(
        self, request: web.Request, target: str, delay: float
    ) -> web.StreamResponse:
        assert self._session is not None
        down = web.WebSocketResponse(max_msg_size=0)
        await down.prepare(request)
        try:
            up = await self._session.ws_connect(target.replace("http", "ws", 1), max_msg_size=0)
        except aiohttp.ClientError:
            await down.close(code=1011, message=b"upstream unreachable")
            return down
        to_up, to_down = DelayLine(delay), DelayLine(delay)
        tasks = [
            asyncio.ensure_future(_pump(down, to_up)),
            asyncio.ensure_future(_pump(up, to_down)),
            asyncio.ensure_future(to_up.drain_to(up)),
            asyncio.ensure_future(to_down.drain_to(down)),
        ]
        try:
            # either side closing ends both, after what is already in flight was delivered
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            to_up.close()
            to_down.close()
            await asyncio.wait(tasks[2:], timeout=delay + 1.0)
        finally:
            for task in tasks:
                task.cancel()
            await up.close()
            await down.close()
        return down


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, line: DelayLine
) -> None:
    async for msg in src:
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            line.put(msg.type, msg.data)
        elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.ERROR):
            return


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(listen: tuple[str, int], upstream: str) -> None:
    """Serve until SIGTERM/SIGINT."""
    runner = web.AppRunner(DelayProxy(upstream).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, listen[0], listen[1])
    await site.start()
    bound = runner.addresses[0]
    print(f"proxy listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m sfu.natlab.proxy", description=__doc__)
    ap.add_argument("--listen", default="0.0.0.0:8000", help="IP:PORT to listen on")
    ap.add_argument("--upstream", required=True, help="http://IP:PORT of the server")
    args = ap.parse_args(argv)
    asyncio.run(serve(_host_port(args.listen), args.upstream))


if __name__ == "__main__":
    main()
