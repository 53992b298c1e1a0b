"""Headless Chromium for WebRTC tests: Debian's /usr/bin/chromium driven by Playwright (async).

Never run ``playwright install``: the harness launches the system Chromium with the flags a WebRTC
test needs (fake camera and microphone granted without a prompt, no outside DNS or background
traffic, mDNS candidate hiding off) in a fresh profile, optionally inside a network namespace.

End-to-end echo test against the real server (server at 10.0.0.1:8080 inside namespace "srv",
browser inside namespace "cli")::

    import pytest
    from tests.browser.harness import (
        chromium, echo_stats, echo_url, needs_chromium, needs_netns, wait_for,
    )

    pytestmark = [pytest.mark.browser, pytest.mark.netns, needs_chromium(), needs_netns()]

    async def test_echo() -> None:
        base = "http://10.0.0.1:8080"          # linked_netns() builds such a pair, see below
        async with chromium(netns="cli", page_host=base) as browser:
            page = await browser.open(echo_url(base, ice=[]))   # ?ice=[] is the default
            await page.click("#start")
            await wait_for(page, "window.sfuDemo.state === 'connected'", timeout=10)
            await wait_for(page, "async () => (await window.sfuDemo.stats())"
                                 ".inbound.video?.framesDecoded >= 30", timeout=10)
            stats = await echo_stats(page)
            assert stats.selected_pair["remote"]["address"] == "10.0.0.1"
            reply = await page.evaluate("sfuDemo.setBitrate(256000)")  # the ack data
            assert browser.errors == []     # console errors + uncaught exceptions, all pages

Pieces:

- ``launch(netns=None, page_host="127.0.0.1", loopback=False)`` -> ``Chromium`` (also an async
  context manager; ``chromium(...)`` is the same as one). ``netns`` runs the browser inside that
  namespace through a generated wrapper script; ``page_host`` ("host", "host:port" or an
  ``http://host:port`` origin) is excluded from the DNS block and, if it is not localhost,
  treated as a secure origin so getUserMedia works over plain http; ``loopback=True`` lets
  ICE use 127.0.0.1 (needed in a namespace that has only ``lo``).
- ``Chromium.open(url)`` / ``new_page()``; ``Chromium.errors`` collects console errors and
  uncaught page errors of every page; ``close()`` stops the demo in each page first (so the
  server is not left sending to a dead peer) and removes the temporary profile.
- ``wait_for(page, js_predicate, timeout)``: an expression or an (async) function string;
  on timeout raises AssertionError with the page state, stats and last signaling frames.
- ``echo_stats(page)`` -> ``EchoStats`` (frames decoded, ICE state, selected pair, raw stats()).
- ``echo_url(base, ws=None, ice=None, policy=None, autostart=False)`` builds the page URL.
- ``launch(grant_media=False)`` drops ``--use-fake-ui-for-media-stream`` (getUserMedia is then
  refused; note that the grant alone also makes Chromium show host IPs in candidates).
- ``needs_chromium()`` / ``needs_netns()`` (skip marks); ``temp_netns()`` (lo only);
  ``linked_netns()`` -> ``NetnsPair(server, client, server_ip, client_ip)`` joined by a veth,
  nothing routed outside; ``spawn_in_netns()`` / ``stop_process()`` (by PID);
  ``serve_static_in_netns()`` serves ``web/`` from inside a namespace.
- ``start_reference_echo(netns, host)`` (or ``python -m tests.browser.harness echo-server --host
  H --port P``) runs a *reference* echo backend -- aiortc, which decodes and re-encodes -- that
  speaks docs/signaling.md (server candidates trickled after the answer) and serves ``web/``;
  it prints ``listening on H:P`` once ready. Useful to tell page bugs from server bugs.

Page contract (web/echotest.html): ``<body data-state>`` is one of idle, starting, negotiating,
connected (pc.connectionState), disconnected, failed, hangup, error, stopped; ``window.sfuDemo``
has ``state``, ``pc``, ``handle``, ``log`` (signaling frames), ``options``, ``stats()``,
``start()``, ``stop()``, ``setAudio(bool)``, ``setVideo(bool)``, ``setBitrate(bps)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import pytest

from sfu.natlab.browser import missing_reason as chromium_missing_reason
from sfu.natlab.browser import playwright_disabled_features

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, ConsoleMessage, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
LOCAL_HOSTS = ("localhost", "127.0.0.1")
MDNS_FEATURE = "WebRtcHideLocalIpsWithMdns"

FAKE_UI = "--use-fake-ui-for-media-stream"
BASE_ARGS = (
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
)


# ---------------------------------------------------------------------------------------------
# Availability and skips


def netns_missing_reason() -> str | None:
    """Why a network-namespace test cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not found"
    return None


def needs_chromium() -> pytest.MarkDecorator:
    """A skip mark for tests that drive headless Chromium."""
    reason = chromium_missing_reason()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def needs_netns() -> pytest.MarkDecorator:
    """A skip mark for tests that create network namespaces."""
    reason = netns_missing_reason()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# ---------------------------------------------------------------------------------------------
# Flags


def split_page_host(page_host: str) -> tuple[str, str]:
    """("host", "host[:port]") from "host", "host:port" or "http://host:port/..."."""
    netloc = urlsplit(page_host).netloc if "://" in page_host else page_host.strip("/")
    host = urlsplit(f"//{netloc}").hostname or netloc
    return host, netloc


def chromium_args(
    page_host: str = "127.0.0.1",
    *,
    loopback: bool = False,
    grant_media: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command-line flags for a WebRTC test browser (Playwright adds --headless etc.).

    ``grant_media`` answers getUserMedia prompts with "allow" (``--use-fake-ui-for-media-stream``;
    it also makes Chromium expose host IPs in candidates without a getUserMedia call).
    """
    host, netloc = split_page_host(page_host)
    rules = ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1"]
    if host not in LOCAL_HOSTS:
        rules.append(f"EXCLUDE {host}")
    args = [*BASE_ARGS, "--host-resolver-rules=" + " , ".join(rules)]
    if grant_media:
        args.append(FAKE_UI)
    if host not in LOCAL_HOSTS:
        args.append(f"--unsafely-treat-insecure-origin-as-secure=http://{netloc}")
    if loopback:
        args.append("--allow-loopback-in-peer-connection")
    args.extend(extra)
    features = [*playwright_disabled_features(), MDNS_FEATURE]
    args.append("--disable-features=" + ",".join(dict.fromkeys(features)))
    return args


def write_netns_wrapper(directory: Path, netns: str, executable: Path = CHROMIUM) -> Path:
    """A script that runs ``executable`` inside ``netns`` (Playwright launches what it is given)."""
    ip = shutil.which("ip") or "ip"
    script = directory / "chromium-in-netns"
    script.write_text(f'#!/bin/sh\nexec {ip} netns exec "{netns}" "{executable}" "$@"\n')
    script.chmod(0o755)
    return script


# ---------------------------------------------------------------------------------------------
# The browser


@dataclass
class Chromium:
    """A running headless Chromium (one persistent context on a temporary profile)."""

    playwright: Playwright
    context: BrowserContext
    workdir: Path
    netns: str | None = None
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _fresh: list[Page] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._fresh.extend(self.context.pages)
        for page in self.context.pages:
            self._watch(page)
        self.context.on("page", self._watch)

    def _watch(self, page: Page) -> None:
        def on_console(message: ConsoleMessage) -> None:
            line = f"{message.type}: {message.text} ({page.url})"
            self.console.append(line)
            if message.type == "error":
                self.errors.append(line)

        def on_error(error: Exception) -> None:
            self.errors.append(f"pageerror: {error} ({page.url})")

        page.on("console", on_console)
        page.on("pageerror", on_error)

    async def new_page(self) -> Page:
        """A page (the initial blank tab first, then new ones)."""
        if self._fresh:
            return self._fresh.pop()
        return await self.context.new_page()

    async def open(self, url: str) -> Page:
        """A page navigated to ``url``."""
        page = await self.new_page()
        await page.goto(url)
        return page

    async def close(self) -> None:
        """Stops the demo in every page, closes the browser, removes the profile."""
        try:
            for page in self.context.pages:
                with contextlib.suppress(Exception):
                    stop = page.evaluate("() => window.sfuDemo && window.sfuDemo.stop()")
                    await asyncio.wait_for(stop, 3.0)
            with contextlib.suppress(Exception):
                await self.context.close()
        finally:
            await self.playwright.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> Chromium:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def launch(
    netns: str | None = None,
    page_host: str = "127.0.0.1",
    loopback: bool = False,
    *,
    grant_media: bool = True,
    headless: bool = True,
    extra_args: Sequence[str] = (),
    executable: Path = CHROMIUM,
    timeout: float = 30.0,
) -> Chromium:
    """Starts headless Chromium on a fresh profile, inside ``netns`` if given."""
    from playwright.async_api import async_playwright

    workdir = Path(tempfile.mkdtemp(prefix="sfu-chromium-"))
    launcher = executable if netns is None else write_netns_wrapper(workdir, netns, executable)
    args = chromium_args(page_host, loopback=loopback, grant_media=grant_media, extra=extra_args)
    playwright = await async_playwright().start()
    try:
        context = await playwright.chromium.launch_persistent_context(
            str(workdir / "profile"),
            executable_path=str(launcher),
            headless=headless,
            args=args,
            ignore_https_errors=True,
            timeout=timeout * 1000,
        )
    except BaseException:
        await playwright.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Chromium(playwright, context, workdir, netns)


@contextlib.asynccontextmanager
async def chromium(
    netns: str | None = None,
    page_host: str = "127.0.0.1",
    loopback: bool = False,
    **kwargs: Any,
) -> AsyncIterator[Chromium]:
    """``async with chromium(...) as browser:`` -- launch() and close()."""
    browser = await launch(netns, page_host, loopback, **kwargs)
    try:
        yield browser
    finally:
        await browser.close()


# ---------------------------------------------------------------------------------------------
# Page helpers


def echo_url(
    base: str,
    *,
    ws: str | None = None,
    ice: list[dict[str, Any]] | None = None,
    policy: str | None = None,
    autostart: bool = False,
) -> str:
    """The echo test page URL under ``base`` (e.g. "http://10.0.0.1:8080")."""
    query: dict[str, str] = {}
    if ws is not None:
        query["ws"] = ws
    if ice is not None:
        query["ice"] = json.dumps(ice)
    if policy is not None:
        query["policy"] = policy
    if autostart:
        query["autostart"] = "1"
    url = base.rstrip("/") + "/echotest.html"
    return f"{url}?{urlencode(query)}" if query else url


_DESCRIBE_JS = """async () => {
  const out = {url: location.href, dataState: document.body?.dataset.state ?? null};
  const demo = window.sfuDemo;
  if (demo) {
    try { out.stats = await demo.stats(); } catch (e) { out.statsError = String(e); }
    out.lastFrames = (demo.log || []).slice(-8).map((e) => ({dir: e.dir, frame: e.frame}));
  }
  return out;
}"""


async def describe_page(page: Page) -> dict[str, Any]:
    """The page's state, stats and last signaling frames (for failure messages)."""
    try:
        result: dict[str, Any] = await page.evaluate(_DESCRIBE_JS)
    except Exception as exc:
        return {"error": f"cannot evaluate: {exc}"}
    for entry in result.get("lastFrames", []):
        frame = entry.get("frame", {})
        data = frame.get("data") if isinstance(frame.get("data"), dict) else {}
        for holder in (frame, data):
            if isinstance(holder.get("sdp"), str):
                holder["sdp"] = f"<sdp {len(holder['sdp'])} bytes>"
    return result


async def wait_for(
    page: Page, js_predicate: str, timeout: float = 10.0, arg: Any = None, interval: float = 0.1
) -> Any:
    """Polls a JS expression or (async) function until its value is truthy; returns the value.

    Async predicates are awaited (Playwright's wait_for_function would take the Promise itself
    as truthy). Raises AssertionError describing the page (state, stats, recent frames) on
    timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = await page.evaluate(js_predicate, arg)
            last_error = None
            if value:
                return value
        except Exception as exc:  # navigation in progress, sfuDemo not defined yet...
            last_error = exc
        if loop.time() >= deadline:
            break
        await asyncio.sleep(interval)
    state = await describe_page(page)
    error = f" (last error: {last_error})" if last_error else ""
    raise AssertionError(
        f"timed out after {timeout} s waiting for {js_predicate!r}{error}; page: "
        + json.dumps(state, indent=1, default=str)
    )


@dataclass(frozen=True)
class EchoStats:
    """What an echo test asserts: media decoded, ICE state, the pair ICE selected."""

    frames_decoded: int
    ice_state: str | None
    connection_state: str | None
    selected_pair: dict[str, Any] | None
    page_state: str
    raw: dict[str, Any]


async def echo_stats(page: Page) -> EchoStats:
    """Reads ``window.sfuDemo.stats()`` of the echo test page."""
    raw: dict[str, Any] = await page.evaluate("() => window.sfuDemo.stats()")
    video = raw.get("inbound", {}).get("video") or {}
    return EchoStats(
        frames_decoded=int(video.get("framesDecoded", 0)),
        ice_state=raw.get("iceConnectionState"),
        connection_state=raw.get("connectionState"),
        selected_pair=raw.get("selectedPair"),
        page_state=str(raw.get("state")),
        raw=raw,
    )


# ---------------------------------------------------------------------------------------------
# Network namespaces and processes in them


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def temp_netns(prefix: str = "sfub") -> Iterator[str]:
    """A new network namespace with ``lo`` up; deleted on exit."""
    name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth link (one /24, default routes over it)."""

    server: str
    client: str
    server_ip: str
    client_ip: str


@contextlib.contextmanager
def linked_netns(subnet: str = "10.213.0") -> Iterator[NetnsPair]:
    """A server and a client namespace on ``<subnet>.1`` and ``<subnet>.2``; deleted on exit.

    Nothing leaves them: the only routes are over the veth between the two.
    """
    with temp_netns("sfus") as server, temp_netns("sfuc") as client:
        tag = secrets.token_hex(3)
        veth_s, veth_c = f"vs{tag}", f"vc{tag}"
        _ip("link", "add", veth_s, "netns", server, "type", "veth", "peer", veth_c, "netns", client)
        pair = NetnsPair(server, client, f"{subnet}.1", f"{subnet}.2")
        for ns, dev, ip in ((server, veth_s, pair.server_ip), (client, veth_c, pair.client_ip)):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "route", "add", "default", "dev", dev)
        yield pair


async def spawn_in_netns(
    netns: str | None, argv: Sequence[str], *, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """Starts ``argv`` (inside ``netns`` if given); stdout is a pipe, stderr is discarded.

    ``ip netns exec`` execs the command, so the process id is the command's own.
    """
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return await asyncio.create_subprocess_exec(
        *prefix,
        *argv,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def read_line_matching(
    proc: asyncio.subprocess.Process, pattern: str, timeout: float = 10.0
) -> re.Match[str]:
    """Reads the process's stdout until a line matches ``pattern``."""
    assert proc.stdout is not None
    regex = re.compile(pattern)

    async def scan() -> re.Match[str]:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if match := regex.search(line.decode(errors="replace")):
                return match
        raise RuntimeError(f"process {proc.pid} exited before printing {pattern!r}")

    return await asyncio.wait_for(scan(), timeout)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit in time."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()


async def serve_static_in_netns(
    netns: str | None, directory: Path = WEB_DIR, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.subprocess.Process, int]:
    """A static file server for ``directory`` inside ``netns``; returns (process, port).

    (Not ``python -m http.server``: it reverse-resolves its address, which stalls for seconds
    in a namespace with no DNS.)
    """
    return await _start_cli(netns, "static", host, port, directory)


async def start_reference_echo(
    netns: str | None, host: str, port: int = 0, web_dir: Path = WEB_DIR
) -> tuple[asyncio.subprocess.Process, int]:
    """Starts the reference echo backend (see module doc); returns (process, port)."""
    return await _start_cli(netns, "echo-server", host, port, web_dir)


async def _start_cli(
    netns: str | None, command: str, host: str, port: int, web_dir: Path
) -> tuple[asyncio.subprocess.Process, int]:
    root = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-u", "-m", "tests.browser.harness", command]
    argv += ["--host", host, "--port", str(port), "--web", str(web_dir)]
    proc = await spawn_in_netns(netns, argv, cwd=root)
    try:
        match = await read_line_matching(proc, r"listening on .*:(\d+)", timeout=20.0)
    except BaseException:
        await stop_process(proc)
        raise
    return proc, int(match.group(1))


# ---------------------------------------------------------------------------------------------
# Reference echo backend (aiortc): signaling.md over aiohttp, server candidates trickled


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """Removes candidate lines from an SDP; returns it and the first section's candidates."""
    kept: list[str] = []
    candidates: list[dict[str, Any]] = []
    section = -1
    mid: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            section += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
            for candidate in candidates:
                if candidate["sdpMLineIndex"] == section:
                    candidate["sdpMid"] = mid
        if line.startswith("a=candidate:"):
            if section == 0:
                candidates.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": 0})
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n", candidates


class _ReferenceEchoConnection:
    """One WebSocket of the reference backend: handles, each with an aiortc echo peer."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.peers: dict[str, Any] = {}
        self.counter = 0
        self.after_reply: list[Callable[[], Awaitable[None]]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_json(frame)

    async def event(self, handle: str, name: str, **fields: Any) -> None:
        await self.send({"type": "event", "handle": handle, "event": name, **fields})

    async def handle(self, frame: dict[str, Any]) -> dict[str, Any]:
        kind = frame.get("type")
        if kind == "keepalive":
            return {}
        if kind == "attach":
            if frame.get("app") != "echotest":
                raise _Refused(406, "unknown_app")
            self.counter += 1
            self.peers[f"h{self.counter}"] = None
            return {"handle": f"h{self.counter}"}
        handle = str(frame.get("handle"))
        if handle not in self.peers:
            raise _Refused(404, "no_such_handle")
        if kind == "offer":
            return await self.offer(handle, str(frame["sdp"]))
        if kind == "candidate":
            await self.candidate(handle, frame.get("candidate"))
            return {}
        if kind == "message":
            await self.event(handle, "app", data={"result": "ok"})
            return {"result": "ok"}
        if kind in ("hangup", "detach"):
            await self.close_peer(handle)
            if kind == "detach":
                del self.peers[handle]
            return {}
        raise _Refused(405, "unknown_type")

    async def offer(self, handle: str, sdp: str) -> dict[str, Any]:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        await self.close_peer(handle)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers[handle] = pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            pc.addTrack(track)

        @pc.on("iceconnectionstatechange")
        async def on_ice() -> None:
            await self.event(handle, "ice", state=pc.iceConnectionState)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                await self.event(handle, "webrtcup")

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer, candidates = split_candidates(pc.localDescription.sdp)

        async def trickle() -> None:
            for candidate in candidates:
                await self.event(handle, "candidate", candidate=candidate)
            await self.event(handle, "candidate", candidate=None)

        self.after_reply.append(trickle)
        return {"type": "answer", "sdp": answer}

    async def candidate(self, handle: str, candidate: dict[str, Any] | None) -> None:
        from aiortc.sdp import candidate_from_sdp

        pc = self.peers[handle]
        if pc is None:
            raise _Refused(409, "wrong_state")
        if not candidate or not candidate.get("candidate"):
            await pc.addIceCandidate(None)
            return
        parsed = candidate_from_sdp(str(candidate["candidate"]).split(":", 1)[1])
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await pc.addIceCandidate(parsed)

    async def close_peer(self, handle: str) -> None:
        pc = self.peers.get(handle)
        self.peers[handle] = None
        if pc is not None:
            await pc.close()

    async def close(self) -> None:
        for handle in list(self.peers):
            await self.close_peer(handle)


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _serve(host: str, port: int, web_dir: Path, echo: bool) -> None:
    """Serves ``web_dir`` (and, with ``echo``, the reference backend at /ws) until SIGTERM."""
    from aiohttp import WSMsgType, web

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = _ReferenceEchoConnection(ws)
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(message.data)
                try:
                    data = await connection.handle(frame)
                except _Refused as refused:
                    await connection.send(
                        {
                            "type": "error",
                            "id": frame.get("id"),
                            "code": refused.code,
                            "reason": refused.reason,
                        }
                    )
                except Exception as exc:
                    await connection.send(
                        {"type": "error", "id": frame.get("id"), "code": 500, "reason": str(exc)}
                    )
                else:
                    await connection.send({"type": "ack", "id": frame.get("id"), "data": data})
                while connection.after_reply:
                    await connection.after_reply.pop(0)()
        finally:
            await connection.close()
        return ws

    app = web.Application()
    if echo:
        app.router.add_get("/ws", websocket)
    app.router.add_static("/", web_dir)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``echo-server`` (reference echo backend + web/) or ``static`` (web/ only)."""
    parser = argparse.ArgumentParser(prog="python -m tests.browser.harness")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("echo-server", "reference aiortc echo backend + web/"), ("static", "web/")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=0)
        command.add_argument("--web", type=Path, default=WEB_DIR)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.web, echo=args.command == "echo-server"))


if __name__ == "__main__":
    main()
