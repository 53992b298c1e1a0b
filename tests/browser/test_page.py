"""The demo pages in headless Chromium, and the harness that drives it.

Page tests serve web/ from an in-process aiohttp app on 127.0.0.1 with a fake signaling
endpoint that records frames. Namespace tests prove the browser runs where the harness says,
that Chromium's host candidates are plain IPs, and that the page completes a real echo session
against the reference aiortc backend (so the lead's end-to-end test starts from a known-good page).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from sfu.natlab.browser import parse_disabled_features, playwright_disabled_features

from .harness import (
    CHROMIUM,
    MDNS_FEATURE,
    WEB_DIR,
    Chromium,
    chromium,
    chromium_args,
    echo_stats,
    echo_url,
    launch,
    linked_netns,
    needs_chromium,
    needs_netns,
    serve_static_in_netns,
    split_candidates,
    start_reference_echo,
    stop_process,
    temp_netns,
    wait_for,
)

GATHER_DATACHANNEL_JS = """async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.createDataChannel("probe");
  const candidates = [];
  const done = new Promise((resolve) => {
    pc.onicecandidate = (e) => e.candidate && e.candidate.candidate
      ? candidates.push(e.candidate.candidate) : resolve();
  });
  await pc.setLocalDescription(await pc.createOffer());
  await done;
  pc.close();
  return candidates;
}"""


# ---------------------------------------------------------------------------------------------
# A fake signaling endpoint and the static site


@dataclass
class FakeSignaling:
    """Records every frame; acks everything at once except `offer`, which the test answers."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    offer: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    ws: web.WebSocketResponse | None = None

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            async with self.changed:
                self.frames.append(frame)
                self.changed.notify_all()
            kind = frame.get("type")
            if kind == "offer":
                self.offer.set()
            elif kind == "attach":
                await self.ack(frame, {"handle": "h-1"})
            elif kind == "message":
                await self.ack(frame, {"result": "ok"})
            else:
                await self.ack(frame, {})
        self.closed.set()
        return ws

    async def ack(self, frame: dict[str, Any], data: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_json({"type": "ack", "id": frame["id"], "data": data})

    async def error(self, frame: dict[str, Any], code: int, reason: str) -> None:
        assert self.ws is not None
        await self.ws.send_json(
            {"type": "error", "id": frame["id"], "code": code, "reason": reason}
        )

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    async def wait_frame(self, kind: str, count: int = 1, timeout: float = 5.0) -> None:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: len(self.of_type(kind)) >= count), timeout
            )


@dataclass
class Site:
    base: str
    fake: FakeSignaling

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws"


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    fake = FakeSignaling()
    app = web.Application()
    app.router.add_get("/ws", fake.handler)
    app.router.add_static("/", WEB_DIR)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield Site(f"http://127.0.0.1:{port}", fake)
    finally:
        await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Chromium]:
    async with chromium() as b:
        yield b


# ---------------------------------------------------------------------------------------------
# Flags (no browser)


def test_parse_disabled_features_skips_comments_and_conditionals() -> None:
    js = """
    var other = ["NotThis"];
    disabledFeatures = (assistantMode) => [
      // See https://example.invalid/[issue] "quoted"
      "FeatureA",
      /* "NotAComment" ] */ 'FeatureB',
      process.env.X ? "" : "FeatureC",
      assistantMode ? "Feature_D" : "",
    ].filter(Boolean);
    enabledFeatures = ["Enabled"];
    """
    assert parse_disabled_features(js) == ["FeatureA", "FeatureB", "FeatureC", "Feature_D"]
    assert parse_disabled_features("nothing here") == []


def test_playwright_list_is_found_in_the_installed_driver() -> None:
    pytest.importorskip("playwright")
    names = playwright_disabled_features()
    assert names and MDNS_FEATURE not in names


def test_chromium_args_for_a_remote_page_host() -> None:
    pytest.importorskip("playwright")
    args = chromium_args("http://10.0.0.1:8080/echotest.html", loopback=True)
    assert "--use-fake-device-for-media-stream" in args
    assert "--use-fake-ui-for-media-stream" in args
    assert "--unsafely-treat-insecure-origin-as-secure=http://10.0.0.1:8080" in args
    assert "--allow-loopback-in-peer-connection" in args
    rules = next(a for a in args if a.startswith("--host-resolver-rules="))
    assert rules.endswith(
        "MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1 , EXCLUDE 10.0.0.1"
    )
    assert args[-1].startswith("--disable-features=")
    assert args[-1].endswith("," + MDNS_FEATURE)

    local = chromium_args("127.0.0.1:9000", grant_media=False)
    assert not any(a.startswith("--unsafely-treat-insecure-origin") for a in local)
    assert "--use-fake-ui-for-media-stream" not in local
    assert "--allow-loopback-in-peer-connection" not in local


def test_split_candidates_moves_server_candidates_out_of_the_answer() -> None:
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n"
    )
    stripped, candidates = split_candidates(sdp)
    assert "candidate" not in stripped
    assert candidates == [
        {
            "candidate": "candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
    ]


# ---------------------------------------------------------------------------------------------
# Pages in the default namespace (127.0.0.1 only)


def _recording_launcher(directory: Path) -> tuple[Path, Path]:
    """A launcher that writes its argv (one per line) to a file, then runs Chromium."""
    argv_file = directory / "argv"
    script = directory / "chromium-recording"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{argv_file}"\nexec "{CHROMIUM}" "$@"\n')
    script.chmod(0o755)
    return script, argv_file


@pytest.mark.browser
@needs_chromium()
async def test_flags_reach_chromium_and_pages_load_clean(site: Site, tmp_path: Path) -> None:
    launcher, argv_file = _recording_launcher(tmp_path)
    async with await launch(executable=launcher) as browser:
        argv = argv_file.read_text().splitlines()
        disables = [
            a.split("=", 1)[1].split(",") for a in argv if a.startswith("--disable-features=")
        ]
        assert len(disables) >= 2, "Playwright passes its own list first"
        last = disables[-1]
        assert MDNS_FEATURE in last
        assert all(set(earlier) <= set(last) for earlier in disables[:-1])
        for flag in (
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--disable-quic",
            "--no-first-run",
            "--headless",
        ):
            assert flag in argv
        assert any(a.startswith("--user-data-dir=") for a in argv)

        page = await browser.open(site.base + "/index.html")
        assert await page.title() == "sfu demos"
        await page.click("#link-echotest")
        await wait_for(page, "document.body.dataset.state === 'idle'", timeout=5)
        assert page.url == site.base + "/echotest.html"
        assert await page.is_enabled("#start")
        assert not await page.is_enabled("#stop")
        assert not await page.is_enabled("#echo-audio")
        api = await page.evaluate(
            "() => ({state: sfuDemo.state, pc: sfuDemo.pc, stats: typeof sfuDemo.stats,"
            " ice: sfuDemo.options.iceServers})"
        )
        assert api == {"state": "idle", "pc": None, "stats": "function", "ice": []}
        stats = await echo_stats(page)
        assert (stats.page_state, stats.frames_decoded, stats.selected_pair) == ("idle", 0, None)

        ice = [{"urls": "turn:127.0.0.1:9", "username": "u", "credential": "p"}]
        await page.goto(echo_url(site.base, ice=ice, policy="relay"))
        await wait_for(page, "document.body.dataset.state === 'idle'", timeout=5)
        options = await page.evaluate("sfuDemo.options")
        assert (options["iceServers"], options["policy"]) == (ice, "relay")
        assert options["ws"] == site.ws
        assert browser.errors == []
        assert site.fake.frames == [], "nothing is signaled before Start"


@pytest.mark.browser
@needs_chromium()
async def test_start_attaches_offers_gathers_and_handles_an_error(
    site: Site, browser: Chromium
) -> None:
    fake = site.fake
    page = await browser.open(echo_url(site.base, ws=site.ws))
    await wait_for(page, "document.body.dataset.state === 'idle'", timeout=5)
    await page.click("#start")

    await asyncio.wait_for(fake.offer.wait(), 10)
    attach, offer = fake.frames[:2]
    assert attach == {"type": "attach", "id": attach["id"], "app": "echotest"}
    assert offer["type"] == "offer" and offer["handle"] == "h-1"
    assert "m=audio" in offer["sdp"] and "m=video" in offer["sdp"]
    assert await page.get_attribute("body", "data-state") == "negotiating"
    tracks = await page.evaluate(
        "document.getElementById('local-video').srcObject.getTracks()"
        ".map((t) => `${t.kind}:${t.readyState}`).sort()"
    )
    assert tracks == ["audio:live", "video:live"]

    # Gathering completes while the offer is pending; candidates wait for the answer.
    await wait_for(page, "sfuDemo.pc.iceGatheringState === 'complete'", timeout=10)
    local = (await echo_stats(page)).raw["localCandidates"]
    assert local[-1] is None and local[:-1], local
    assert all(" typ " in c and ".local " not in c for c in local[:-1])
    assert await page.locator("#local-candidates li").count() == len(local)
    assert fake.of_type("candidate") == []

    # Echo controls work as soon as the handle exists.
    await page.click("#echo-audio")
    await page.select_option("#echo-bitrate", "256000")
    await fake.wait_frame("message", 2)
    assert [m["body"] for m in fake.of_type("message")] == [{"audio": False}, {"bitrate": 256000}]
    assert all(m["handle"] == "h-1" for m in fake.of_type("message"))
    await wait_for(page, "document.getElementById('echo-result').textContent.includes('ok')")

    await fake.error(offer, 422, "invalid_sdp")
    await wait_for(page, "document.body.dataset.state === 'error'", timeout=5)
    assert "invalid_sdp" in await page.inner_text("#error")
    await fake.wait_frame("detach")
    await asyncio.wait_for(fake.closed.wait(), 5)
    assert fake.of_type("candidate") == []
    assert await page.evaluate("sfuDemo.pc.signalingState") == "closed"
    assert await page.is_enabled("#start")
    assert len(browser.errors) == 1 and "invalid_sdp" in browser.errors[0]


# ---------------------------------------------------------------------------------------------
# Network namespaces


@pytest.mark.browser
@pytest.mark.netns
@needs_chromium()
@needs_netns()
async def test_browser_runs_inside_the_namespace() -> None:
    async def elsewhere(_: web.Request) -> web.Response:
        return web.Response(text="<title>root namespace</title>", content_type="text/html")

    decoy = web.Application()
    decoy.router.add_get("/{tail:.*}", elsewhere)
    runner = web.AppRunner(decoy)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        with temp_netns() as ns:
            server, served_port = await serve_static_in_netns(ns, port=port)
            try:
                assert served_port == port
                async with chromium(netns=ns, loopback=True) as browser:
                    page = await browser.open(f"http://127.0.0.1:{port}/echotest.html")
                    assert await page.title() == "sfu echo test"
                    await wait_for(page, "document.body.dataset.state === 'idle'", timeout=5)
                    assert browser.errors == []
            finally:
                await stop_process(server)
            assert server.returncode is not None
    finally:
        await runner.cleanup()


@pytest.mark.browser
@pytest.mark.netns
@needs_chromium()
@needs_netns()
async def test_host_candidates_are_addresses_not_mdns_names() -> None:
    """Without a media grant Chromium would hide host IPs behind mDNS; the harness flag stops it."""
    with linked_netns() as net:
        server, port = await serve_static_in_netns(net.server, host=net.server_ip)
        base = f"http://{net.server_ip}:{port}"
        try:
            async with chromium(netns=net.client, page_host=base, grant_media=False) as browser:
                page = await browser.open(base + "/index.html")
                candidates = await page.evaluate(GATHER_DATACHANNEL_JS)
        finally:
            await stop_process(server)
    assert candidates
    assert all(f" {net.client_ip} " in c for c in candidates), candidates


@pytest.mark.browser
@pytest.mark.netns
@needs_chromium()
@needs_netns()
async def test_echo_session_with_the_reference_backend() -> None:
    with linked_netns() as net:
        server, port = await start_reference_echo(net.server, net.server_ip)
        base = f"http://{net.server_ip}:{port}"
        try:
            async with chromium(netns=net.client, page_host=base) as browser:
                page = await browser.open(echo_url(base))
                await wait_for(page, "document.body.dataset.state === 'idle'", timeout=5)
                await page.click("#start")
                await wait_for(page, "sfuDemo.state === 'connected'", timeout=10)
                await wait_for(
                    page,
                    "async () => ((await sfuDemo.stats()).inbound.video?.framesDecoded ?? 0) >= 10",
                    timeout=15,
                )
                stats = await echo_stats(page)
                assert stats.frames_decoded >= 10
                assert stats.ice_state in ("connected", "completed")
                pair = stats.selected_pair
                assert pair is not None and pair["state"] == "succeeded"
                assert pair["local"]["address"] == net.client_ip
                assert pair["remote"]["address"] == net.server_ip
                assert pair["currentRoundTripTime"] is not None
                raw = stats.raw
                assert raw["remoteCandidatesDone"] and raw["localGatheringDone"]
                assert any(net.server_ip in c for c in raw["remoteCandidates"] if c)

                log = await page.evaluate("sfuDemo.log.map((e) => [e.dir, e.frame])")
                sent = [f for d, f in log if d == "out"]
                trickled = [f["candidate"] for f in sent if f["type"] == "candidate"]
                assert trickled[-1] is None and trickled[:-1]
                assert [f["type"] for f in sent[:2]] == ["attach", "offer"]
                assert await page.inner_text("#webrtcup") == "yes"

                assert await page.evaluate("sfuDemo.setVideo(false)") == {"result": "ok"}
                await page.click("#stop")
                await wait_for(page, "sfuDemo.state === 'stopped'", timeout=5)
                assert await page.evaluate("sfuDemo.pc.connectionState") == "closed"
                assert browser.errors == []
        finally:
            await stop_process(server)
