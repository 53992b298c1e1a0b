"""Headless Chromium as a lab client: the echo test page, run inside a client namespace.

Debian's /usr/bin/chromium driven by Playwright's async API (never ``playwright install``),
with the flags a WebRTC test needs (fake camera and microphone granted, no outside DNS or
background traffic, mDNS candidate hiding off) on a fresh profile. The page (web/echotest.html)
offers with no candidate and trickles Chromium's candidates once the answer has arrived; an init
script records when the answer is applied and when ICE connects, in the page's own clock.
Same flags as tests/browser/harness.py, kept here so `sfu natlab` needs no tests directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

CHROMIUM = Path("/usr/bin/chromium")
MDNS_FEATURE = "WebRtcHideLocalIpsWithMdns"
BASE_ARGS = (
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
)
_FEATURE_NAME = re.compile(r"[A-Za-z0-9_]+")
_JS_TOKEN = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|\[|\]", re.S)
_DISABLED_FEATURES = re.compile(r"\bdisabledFeatures\s*=\s*(?:\([^)]*\)\s*=>\s*)?\[")

# Timestamps (performance.now(), ms) of the answer being applied and of ICE state changes.
_INIT_SCRIPT = """(() => {
  const Native = window.RTCPeerConnection;
  if (!Native) return;
  const marks = {answer: null, ice: []};
  window.__natlab = marks;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("iceconnectionstatechange",
        () => marks.ice.push([performance.now(), this.iceConnectionState]));
    }
    setRemoteDescription(desc) {
      if (desc && desc.type === "answer" && marks.answer === null) marks.answer = performance.now();
      return super.setRemoteDescription(desc);
    }
    setLocalDescription(desc) {  // the page answers a server offer
      if (desc && desc.type === "answer" && marks.answer === null) marks.answer = performance.now();
      return super.setLocalDescription(desc);
    }
  };
})();"""

_RESULT_JS = """async () => {
  const demo = window.sfuDemo, marks = window.__natlab || {ice: []};
  const stats = demo ? await demo.stats() : {};
  let server = null;
  if (stats.handle) {
    try {
      const r = await fetch(`/api/sessions/${stats.handle}/stats`);
      server = (await r.json()).peer || null;
    } catch (e) { server = {error: String(e)}; }
  }
  const hit = marks.ice.find(([, s]) => s === "connected" || s === "completed");
  return {
    state: stats.state, ice: stats.iceConnectionState,
    frames: stats.inbound?.video?.framesDecoded ?? 0,
    pair: stats.selectedPair, remoteCandidates: stats.remoteCandidates || [],
    localCandidates: stats.localCandidates || [],
    answer: marks.answer, connected: hit ? hit[0] : null,
    server: server && {state: server.state, ice_state: server.ice_state,
                       selected_pair: server.selected_pair, diagnosis: server.diagnosis},
  };
}"""


def missing_reason(executable: Path = CHROMIUM) -> str | None:
    """Why Chromium cannot run here, or None."""
    if not os.access(executable, os.X_OK):
        return f"{executable} not found (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    return None


def parse_disabled_features(js: str) -> list[str]:
    """Feature names of the first ``disabledFeatures = [...]`` array in Playwright's JS."""
    start = _DISABLED_FEATURES.search(js)
    if start is None:
        return []
    names: list[str] = []
    depth = 1
    for token in _JS_TOKEN.finditer(js, start.end()):
        text = token.group()
        if text == "[":
            depth += 1
        elif text == "]":
            depth -= 1
            if depth == 0:
                return names
        elif text[0] in "\"'" and _FEATURE_NAME.fullmatch(text[1:-1]):
            names.append(text[1:-1])
    return []


def playwright_disabled_features() -> list[str]:
    """Playwright's own --disable-features list (Chromium honours only the last such flag)."""
    spec = importlib.util.find_spec("playwright")
    if spec is None or spec.origin is None:
        raise RuntimeError("playwright is not installed")
    lib = Path(spec.origin).parent / "driver" / "package" / "lib"
    for path in (lib / "server" / "chromium" / "chromiumSwitches.js", lib / "coreBundle.js"):
        if path.is_file():
            names = parse_disabled_features(path.read_text(encoding="utf-8", errors="replace"))
            if names:
                return names
    raise RuntimeError(f"cannot find Playwright's disabledFeatures list under {lib}")


def chromium_args(page_netloc: str) -> list[str]:
    """Flags for a WebRTC lab browser whose page is served from http://page_netloc."""
    host = page_netloc.rsplit(":", 1)[0]
    rules = ["MAP * ~NOTFOUND", "EXCLUDE localhost", "EXCLUDE 127.0.0.1", f"EXCLUDE {host}"]
    features = [*playwright_disabled_features(), MDNS_FEATURE]
    return [
        *BASE_ARGS,
        "--host-resolver-rules=" + " , ".join(rules),
        f"--unsafely-treat-insecure-origin-as-secure=http://{page_netloc}",
        "--disable-features=" + ",".join(dict.fromkeys(features)),
    ]


def page_url(
    base: str, ws: str, ice_servers: list[dict[str, Any]], server_offers: bool = False
) -> str:
    """The echo test page under base, with its signaling URL and ICE servers; with
    ``server_offers`` the server offers and the page answers (``flow=server``)."""
    params = {"ws": ws, "ice": json.dumps(ice_servers), "autostart": "1"}
    if server_offers:
        params["flow"] = "server"
    query = urlencode(params)
    return f"{base.rstrip('/')}/echotest.html?{query}"


@dataclass
class LabBrowser:
    """One Chromium in a namespace; ``run()`` loads the page afresh for every run."""

    netns: str
    page_netloc: str
    _pw: Any = None
    _context: Any = None
    _workdir: Path | None = None

    async def start(self, timeout: float = 30.0) -> None:
        from playwright.async_api import async_playwright

        self._workdir = Path(tempfile.mkdtemp(prefix="natlab-chromium-"))
        wrapper = self._workdir / "chromium-in-netns"
        ip = shutil.which("ip") or "ip"
        wrapper.write_text(f'#!/bin/sh\nexec {ip} netns exec "{self.netns}" "{CHROMIUM}" "$@"\n')
        wrapper.chmod(0o755)
        self._pw = await async_playwright().start()
        try:
            self._context = await self._pw.chromium.launch_persistent_context(
                str(self._workdir / "profile"),
                executable_path=str(wrapper),
                headless=True,
                args=chromium_args(self.page_netloc),
                timeout=timeout * 1000,
            )
            await self._context.add_init_script(_INIT_SCRIPT)
        except BaseException:
            await self.close()
            raise

    async def run(self, url: str, timeout: float, frames: int = 10) -> dict[str, Any]:
        """Load the page (autostart), wait for ICE + media, return the run's result."""
        assert self._context is not None
        page = await self._context.new_page()
        result: dict[str, Any] = {"ok": False, "answer_to_connected": None, "error": None}
        try:
            await page.goto(url)
            loop = asyncio.get_running_loop()
            deadline: float | None = None
            hard = loop.time() + timeout + 10.0  # page load, getUserMedia, gathering
            raw: dict[str, Any] = {}
            while True:
                raw = await page.evaluate(_RESULT_JS)
                if raw.get("answer") is not None and deadline is None:
                    deadline = loop.time() + timeout
                if raw.get("state") == "connected" and raw.get("frames", 0) >= frames:
                    result["ok"] = True
                    break
                if raw.get("state") in ("failed", "error", "hangup"):
                    result["error"] = f"page state {raw.get('state')}"
                    break
                now = loop.time()
                if (deadline is not None and now > deadline) or now > hard:
                    result["error"] = (
                        "ICE not connected" if raw.get("connected") is None else "no echoed video"
                    ) + f" {timeout:g} s after the answer"
                    break
                await asyncio.sleep(0.05)
            if raw.get("answer") is not None and raw.get("connected") is not None:
                result["answer_to_connected"] = round((raw["connected"] - raw["answer"]) / 1000, 4)
            result["frames"] = raw.get("frames", 0)
            result["ice_state"] = raw.get("ice")
            pair = raw.get("pair") or None
            if pair:
                result["client_pair"] = {
                    side: {"type": (pair.get(side) or {}).get("type")}
                    for side in ("local", "remote")
                }
            result["server_candidates"] = [_typ(c) for c in raw.get("remoteCandidates", []) if c]
            result["client_candidates"] = [_typ(c) for c in raw.get("localCandidates", []) if c]
            result["server"] = raw.get("server")
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    page.evaluate("() => window.sfuDemo && window.sfuDemo.stop()"), 3.0
                )
            with contextlib.suppress(Exception):
                await page.close()
        return result

    async def close(self) -> None:
        try:
            if self._context is not None:
                with contextlib.suppress(Exception):
                    await self._context.close()
        finally:
            if self._pw is not None:
                await self._pw.stop()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._context = self._pw = self._workdir = None


def _typ(line: str) -> str:
    fields = line.split()
    return fields[fields.index("typ") + 1] if "typ" in fields[:-1] else "?"
