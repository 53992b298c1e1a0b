"""Simulcast end to end: a Chromium publisher sends three rid layers (q, h, f of a 1280x720
fake camera) and a Chromium subscriber switches between them with ``configure`` requests,
on the same receiving track, without a new PeerConnection (docs/rooms.md, "Simulcast").

The switches are seamless: the server keeps forwarding the old layer until a keyframe of the new
one starts, so the subscriber's decoder never stops. A sampler in bob's page reads
``framesDecoded`` every 100 ms during each switch and the test asserts it never stood still
for more than half a second."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from playwright.async_api import Page

from tests.browser.harness import launch, needs_chromium, wait_for
from tests.e2e.test_room import SERVER_IP, lab, room_url

# every layer of alice's simulcast video learned by the server (its stats API, same origin)
LAYERS_LEARNED = """async () => {
    const get = async (path) => (await fetch(path)).json();
    const stats = await Promise.all((await get("/api/sessions")).sessions
        .map((s) => get(`/api/sessions/${s.handle}/stats`)));
    const pub = stats.find((s) => s.role === "publisher" && s.simulcast);
    if (!pub) return false;
    const layers = Object.values(pub.simulcast)[0];
    return ["q", "h", "f"].every((rid) => layers[rid] && layers[rid].bitrate > 0);
}"""


# the server's view of every session, for a failure message
DUMP = """async () => {
    const get = async (path) => (await fetch(path)).json();
    const stats = await Promise.all((await get("/api/sessions")).sessions
        .map((s) => get(`/api/sessions/${s.handle}/stats`)));
    return JSON.stringify(stats.map((s) => [s.role, s.simulcast, s.tracks, s.rtcp, s.consumers]));
}"""


async def video(page: Page) -> dict[str, Any]:
    stats = await page.evaluate("window.sfuDemo.stats()")
    entries = list(stats["video"].items())
    assert len(entries) == 1, stats["video"]
    mid, entry = entries[0]
    return {"mid": mid, "offers": stats["offers"], **entry}


# sampling of bob's decoder in the page: [time (ms), framesDecoded, frameWidth] every 100 ms
START_SAMPLING = """(mid) => {
    window.__samples = [];
    window.__sampler = setInterval(async () => {
        const v = (await window.sfuDemo.stats()).video[mid];
        window.__samples.push([performance.now(), v ? v.framesDecoded : 0, v ? v.frameWidth : 0]);
    }, 100);
}"""
STOP_SAMPLING = "() => { clearInterval(window.__sampler); return window.__samples; }"
MAX_STALL = 0.5  # seconds without a newly decoded frame that count as a freeze


def longest_stall(samples: list[list[float]]) -> float:
    """The longest time (s) between two samples where framesDecoded went up (or from the first
    sample to the first increase, or from the last increase to the last sample)."""
    assert len(samples) >= 10, samples
    last_change = samples[0][0]
    longest = 0.0
    for prev, cur in itertools.pairwise(samples):
        if cur[1] > prev[1]:
            longest = max(longest, (cur[0] - last_change) / 1000)
            last_change = cur[0]
    return max(longest, (samples[-1][0] - last_change) / 1000)


async def switch_to(page: Page, mid: str, layer: str, width: int, before: dict[str, Any]) -> None:
    """Ask for ``layer``, then wait for frames of ``width`` decoded on the same track; the
    decoder must not stall meanwhile."""
    await page.evaluate(START_SAMPLING, mid)
    await asyncio.sleep(0.3)  # a few samples of the old layer first
    reply = await page.evaluate(f"window.sfuDemo.configure({mid!r}, {layer!r})")
    assert reply["layer"] == layer, reply
    await wait_for(
        page,
        f"""async () => {{
            const v = (await window.sfuDemo.stats()).video[{mid!r}];
            return v && v.frameWidth === {width} && v.layer === {layer!r};
        }}""",
        timeout=15,
    )
    start = await video(page)
    await asyncio.sleep(1.0)
    samples = await page.evaluate(STOP_SAMPLING)
    stall = longest_stall(samples)
    widths = [int(s[2]) for s in samples]
    assert stall <= MAX_STALL, f"the picture froze for {stall:.2f} s: {samples}"
    assert widths[-1] == width and widths[0] != width, widths  # one switch, sampled through
    after = await video(page)
    assert after["frameWidth"] == width, after
    assert after["framesDecoded"] > start["framesDecoded"] + 5, (start, after)  # still decoding
    assert after["trackIdentifier"] == before["trackIdentifier"]  # the same receiving track
    assert after["offers"] == before["offers"]  # no renegotiation


@pytest.mark.browser
@pytest.mark.netns
@pytest.mark.slow
@needs_chromium()
async def test_chromium_simulcast_layers_switch_on_request() -> None:
    base = f"http://{SERVER_IP}:8080"
    with lab() as net:
        async with await launch(net.clients, base) as browser:
            alice = await browser.open(room_url(base, name="alice", simulcast="1"))
            await wait_for(alice, "window.sfuDemo.state === 'joined'", timeout=15)
            bob = await browser.open(room_url(base, name="bob", publish="0"))
            await wait_for(bob, "window.sfuDemo.state === 'joined'", timeout=15)
            await wait_for(
                bob,
                "async () => Object.values((await window.sfuDemo.stats()).video)"
                ".some((v) => v.framesDecoded > 10)",
                timeout=20,
            )
            try:
                await wait_for(bob, LAYERS_LEARNED, timeout=20)
            except AssertionError:
                sessions = await bob.evaluate(DUMP)
                sent = (await alice.evaluate("window.sfuDemo.stats()"))["publishing"]
                raise AssertionError(
                    f"layers not learned: {sessions}; alice sends {sent}"
                ) from None
            before = await video(bob)
            stats = await bob.evaluate("window.sfuDemo.stats()")
            (stream,) = [s for s in stats["streams"] if s["kind"] == "video"]
            assert stream["layers"] == ["q", "h", "f"]
            mid = before["mid"]
            await switch_to(bob, mid, "q", 320, before)
            await switch_to(bob, mid, "f", 1280, before)
            await switch_to(bob, mid, "h", 640, before)
            # the selector in bob's page knows the layer too
            label = await bob.locator(f'[data-layer-of="{mid}"]').text_content()
            assert label == "receiving h"
            assert browser.errors == []
        net.check_server_log()
