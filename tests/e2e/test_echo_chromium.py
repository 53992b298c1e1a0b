"""The echo test with a real browser: headless Chromium (fake camera) gets its own video back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.browser.harness import chromium, echo_stats, echo_url, needs_chromium, wait_for
from tests.support import link, need_netns, netns, sfu_process

pytestmark = [pytest.mark.browser, pytest.mark.netns, pytest.mark.slow, needs_chromium()]


async def test_chromium_echo_across_two_namespaces() -> None:
    need_netns()
    base = "http://198.51.100.1:8080"
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        with sfu_process(srv, "--http-listen", "0.0.0.0:8080", "--media-port", "40000"):
            async with chromium(netns=cli, page_host=base) as browser:
                page = await browser.open(echo_url(base))
                await page.click("#start")
                await wait_for(page, "window.sfuDemo.state === 'connected'", timeout=15)
                await wait_for(
                    page,
                    "async () => (await window.sfuDemo.stats()).inbound.video?.framesDecoded > 30",
                    timeout=20,
                )
                stats = await echo_stats(page)
                assert stats.frames_decoded > 30
                pair = stats.selected_pair
                assert pair is not None
                assert pair["remote"]["address"] == "198.51.100.1"
                assert pair["remote"]["port"] == 40000
                # the bitrate cap reaches the browser as REMB: its encoder slows down
                before = await _video_send_rate(page)
                reply = await page.evaluate("sfuDemo.setBitrate(100000)")
                assert reply["bitrate"] == 100000
                await asyncio.sleep(3)
                capped = await _video_send_rate(page)
                assert capped < 160_000 < before, (before, capped)
                reply = await page.evaluate("sfuDemo.setAudio(false)")
                assert reply["audio"] is False
                # our receiver reports give the browser an RTT for what it sends, our sender
                # reports give it remote-outbound statistics for what it receives
                reports = await page.evaluate(
                    """async () => {
                        const r = await window.sfuDemo.pc.getStats(); const out = {};
                        r.forEach(s => { if (s.type.startsWith('remote-')) out[s.type + ':' + s.kind] = s; });
                        return out; }"""
                )
                rin = reports.get("remote-inbound-rtp:video")
                assert rin is not None and rin.get("roundTripTime", 0) > 0, reports
                assert "packetsLost" in rin
                rout = reports.get("remote-outbound-rtp:video")
                assert rout is not None and rout["packetsSent"] > 0, reports
                assert browser.errors == []


async def _video_send_rate(page: Any) -> float:
    """Bits per second the browser's video sender put out over one second."""
    js = """async () => {
        const r = await window.sfuDemo.pc.getStats();
        let b = 0; r.forEach(s => { if (s.type === 'outbound-rtp' && s.kind === 'video') b += s.bytesSent; });
        return b; }"""
    a = await page.evaluate(js)
    await asyncio.sleep(1.0)
    return float((await page.evaluate(js)) - a) * 8
