"""Streaming mountpoints end to end: real senders, real watchers, the real server process.

Two network namespaces joined by a veth: the server (``sfu serve``) in one; ffmpeg, aiortc
clients and headless Chromium in the other. The aiortc clients are this module run as a
script (``python -m tests.e2e.test_streaming watch|whip|whep|rest ...``), each printing one
JSON line per result.

- ffmpeg sends VP8 + Opus over RTP into a mountpoint, Chromium watches it (web/watch.html);
- a file mountpoint (a WebM made here with PyAV) is watched by aiortc over the WebSocket;
- aiortc pushes over WHIP, Chromium watches; WHIP refuses missing or wrong tokens, malformed
  bodies, a second publisher;
- an aiortc watcher switches between two test mountpoints on the same PeerConnection and keeps
  decoding (the picture changes: colour bars, then black);
- a permanent mountpoint survives a restart of the server process and plays over WHEP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, link, need_netns, netns, sfu_process

pytestmark = [pytest.mark.netns, pytest.mark.slow]

KEY = "e2e-admin-key"
SRV, CLI = "198.51.100.1", "198.51.100.2"
BASE = f"http://{SRV}:8080"
WS = f"ws://{SRV}:8080/ws"
SCRIPT = [sys.executable, "-m", "tests.e2e.test_streaming"]
ADMIN = {"Authorization": f"Bearer {KEY}"}


# ---------------------------------------------------------------------------------------------
# Test helpers


def serve(ns: str, *extra: str) -> Any:
    return sfu_process(
        ns,
        *("--http-listen", "0.0.0.0:8080", "--media-port", "40000"),
        *("--streaming-admin-key", KEY, "--streaming-rtp-port-min", "21000"),
        *("--streaming-rtp-port-max", "21099"),
        *extra,
    )


def client(ns: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run one client of this module in ``ns``; its last JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        ["ip", "netns", "exec", ns, *SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"client {args[:1]} printed nothing:\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["_stderr"] = out.stderr[-3000:]
    return result


Request = tuple[str, str, Any, dict[str, str] | None]  # method, path, body, headers


def rest_many(ns: str, requests: list[Request]) -> list[dict[str, Any]]:
    """HTTP requests from ``ns``, in order, in one process: [{"status", "headers", "body"}]
    (a body is parsed when it is JSON; a str body is sent as it is, anything else as JSON)."""
    batch = [
        {"method": m, "url": BASE + path, "body": body, "headers": headers or {}}
        for m, path, body, headers in requests
    ]
    results: list[dict[str, Any]] = client(ns, "rest", json.dumps(batch), timeout=30)["results"]
    return results


def rest(
    ns: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """One HTTP request from ``ns`` (see :func:`rest_many`)."""
    return rest_many(ns, [(method, path, body, headers)])[0]


@contextlib.contextmanager
def background(ns: str, argv: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """A process in ``ns`` (stdout to ``log``), stopped by PID afterwards."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_line(
    log: Path, prefix: str, proc: subprocess.Popen[str], timeout: float
) -> dict[str, Any]:
    """The first JSON line of ``log`` that starts with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(prefix):
                result: dict[str, Any] = json.loads(line)
                return result
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {prefix!r} line (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def make_webm(path: Path, seconds: float = 2.0) -> Path:
    """A small VP8 + Opus WebM: a moving bar on grey, a tone."""
    import av
    import numpy as np

    fps, w, h = 30, 320, 240
    with av.open(str(path), "w") as out:
        v = out.add_stream("libvpx", rate=fps)
        assert isinstance(v, av.VideoStream)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.bit_rate = 400_000
        v.codec_context.gop_size = fps
        a = out.add_stream("libopus", rate=48000)
        assert isinstance(a, av.AudioStream)
        a.layout = "mono"
        for i in range(int(seconds * fps)):
            img = np.full((h, w, 3), 128, np.uint8)
            x = (i * 8) % (w - 20)
            img[:, x : x + 20] = (250, 40, 40)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = fractions.Fraction(1, fps)
            for packet in v.encode(frame):
                out.mux(packet)
        for i in range(int(seconds * 50)):
            t = np.arange(i * 960, (i + 1) * 960) / 48000
            samples = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            aframe.sample_rate = 48000
            aframe.pts = i * 960
            for packet in a.encode(aframe):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        for packet in a.encode():
            out.mux(packet)
    return path


def test_mountpoint(mp_id: int, pattern: str = "smpte", **extra: Any) -> dict[str, Any]:
    video = {"type": "test", "pattern": pattern, "width": 320, "height": 240, "fps": 30}
    return {
        "id": mp_id,
        "name": f"test {pattern}",
        "media": [
            {"mid": "v", "codec": "VP8", "source": video},
            {"mid": "a", "codec": "opus", "source": {"type": "test", "tone_hz": 440}},
        ],
        **extra,
    }


test_mountpoint.__test__ = False  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# The tests


def test_file_mountpoint_watched_by_aiortc(tmp_path: Path) -> None:
    need_netns()
    clip = make_webm(tmp_path / "clip.webm", seconds=1.5)
    body = {
        "id": 31,
        "name": "clip",
        "media": [
            {"codec": "VP8", "source": {"type": "file", "path": str(clip)}},
            {"codec": "opus", "source": {"type": "file", "path": str(clip)}},
        ],
    }
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, f"{SRV}/24", cli, f"{CLI}/24")
        with serve(srv):
            created = rest(cli, "POST", "/api/mountpoints", body, ADMIN)
            assert created["status"] == 201, created
            # 75 frames: the 1.5 s file plays more than twice
            result = client(cli, "watch", WS, "--id", "31", "--frames", "75", "--seconds", "30")
            info = rest(cli, "GET", "/api/mountpoints/31", headers=ADMIN)["body"]
    assert result["ok"], result
    assert result["video_frames"] >= 75 and result["audio_frames"] > 50
    assert result["watch_reply"]["type"] == "offer"
    assert any(e.get("result", {}).get("status") == "started" for e in result["events"])
    assert info["stats"]["loops"] >= 1, info
    viewer = result["server_stats"]["viewer"]
    assert viewer["mountpoint"] == 31 and len(viewer["consumers"]) == 2


def test_switch_between_mountpoints_keeps_the_peer_connection() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, f"{SRV}/24", cli, f"{CLI}/24")
        with serve(srv):
            h264 = test_mountpoint(43)
            h264["media"][0]["codec"] = "H264"
            bodies = [test_mountpoint(41, "smpte"), test_mountpoint(42, "black"), h264]
            created = rest_many(cli, [("POST", "/api/mountpoints", b, ADMIN) for b in bodies])
            assert [r["status"] for r in created] == [201, 201, 201]
            result = client(
                cli,
                *("watch", WS, "--id", "41", "--frames", "40", "--seconds", "40"),
                *("--switch", "42", "--refused-switch", "43"),
            )
    assert result["ok"], result
    assert (
        result["refused_switch"]["code"] == 409
        and "cannot switch" in result["refused_switch"]["reason"]
    )
    assert result["switch_reply"]["id"] == 42
    assert result["frames_after_switch"] >= 40
    assert result["peer_connections"] == 1 and result["transports"] == 1
    # colour bars (mean luma ~100) before, black (luma 16) after: the new mountpoint is decoded
    assert result["luma_before"] > 60 and result["luma_after"] < 30, result
    assert result["server_stats"]["viewer"]["switches"] == 1
    assert result["viewers"] == {"41": 0, "42": 1}
    print(json.dumps({k: v for k, v in result.items() if k != "server_stats"})[:1500])


def test_permanent_mountpoint_survives_a_restart_and_plays_over_whep(tmp_path: Path) -> None:
    need_netns()
    db = tmp_path / "mountpoints.db"
    body = test_mountpoint(51, permanent=True, pin="4321")
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, f"{SRV}/24", cli, f"{CLI}/24")
        with serve(srv, "--streaming-db", str(db)):
            created = rest_many(
                cli,
                [
                    ("POST", "/api/mountpoints", body, ADMIN),
                    ("POST", "/api/mountpoints", test_mountpoint(52), ADMIN),
                ],
            )
            assert [r["status"] for r in created] == [201, 201]
        assert db.exists()
        with serve(srv, "--streaming-db", str(db)):
            pin = {"Content-Type": "application/sdp", "Authorization": "Bearer 4321"}
            got, gone, no_pin, junk, wrong_type = rest_many(
                cli,
                [
                    ("GET", "/api/mountpoints/51", None, ADMIN),
                    ("GET", "/api/mountpoints/52", None, None),
                    # WHEP: the pin as bearer token; malformed and unauthorized offers refused
                    ("POST", "/whep/51", "v=0\r\n", {"Content-Type": "application/sdp"}),
                    ("POST", "/whep/51", "hello", pin),
                    ("POST", "/whep/51", "v=0", {"Authorization": "Bearer 4321"}),
                ],
            )
            played = client(cli, "whep", f"{BASE}/whep/51", "--token", "4321", "--frames", "30")
    assert got["status"] == 200 and got["body"]["permanent"] is True, got
    assert got["body"]["state"] == "running" and got["body"]["pin"] == "4321"
    assert gone["status"] == 404
    assert no_pin["status"] == 401 and no_pin["headers"].get("WWW-Authenticate") == "Bearer"
    assert junk["status"] == 400 and junk["body"]["error"]["code"] == "bad_sdp"
    assert wrong_type["status"] == 415
    assert played["ok"], played
    assert played["status"] == 201 and played["location"].startswith("/whep/51/")
    assert played["video_frames"] >= 30 and played["deleted"] == 200


# -- with Chromium ------------------------------------------------------------------------------


async def _chromium_decodes(
    cli: str, mp_id: int, frames: int = 30, switch_to: int | None = None
) -> dict[str, Any]:
    """web/watch.html in Chromium (in ``cli``) watches ``mp_id``: its stats once ``frames``
    video frames are decoded; then, with ``switch_to``, what the switch button did."""
    from tests.browser.harness import chromium, wait_for

    async with chromium(netns=cli, page_host=BASE) as browser:
        page = await browser.open(f"{BASE}/watch.html?id={mp_id}&autostart=1")
        await wait_for(page, "window.sfuDemo.state === 'connected'", timeout=15)
        await wait_for(
            page,
            f"async () => (await window.sfuDemo.stats()).inbound.video?.framesDecoded > {frames}",
            timeout=20,
        )
        stats: dict[str, Any] = await page.evaluate("window.sfuDemo.stats()")
        listed = await page.evaluate("window.sfuDemo.mountpoints.map(m => m.id)")
        stats["listed"] = listed
        stats["info"] = await page.evaluate(
            """([id, key]) => fetch(`/api/mountpoints/${id}`,
                 {headers: {Authorization: `Bearer ${key}`}}).then(r => r.json())""",
            [mp_id, KEY],
        )
        if switch_to is not None:
            pc = await page.evaluate("window.sfuDemo.pc !== null")
            button = page.locator(f'tr[data-id="{switch_to}"] button.switch')
            await button.click()
            await wait_for(page, f"window.sfuDemo.watching === {switch_to}", timeout=10)
            before = stats["inbound"]["video"]["framesDecoded"]
            await wait_for(
                page,
                f"""async () => {{ const v = (await window.sfuDemo.stats()).inbound.video;
                    return v.framesDecoded > {before + frames} && v.frameWidth === 320; }}""",
                timeout=20,
            )
            switched = await page.evaluate("window.sfuDemo.stats()")
            same = await page.evaluate("window.sfuDemo.pc.connectionState")
            stats["switched"] = {**switched, "had_pc": pc, "connection": same}
        stats["errors"] = list(browser.errors)
        return stats


def _needs_chromium() -> None:
    from tests.browser.harness import chromium_missing_reason

    reason = chromium_missing_reason()
    if reason is not None:
        pytest.skip(reason)


async def test_ffmpeg_rtp_watched_by_chromium(tmp_path: Path) -> None:
    need_netns()
    _needs_chromium()
    body = {
        "id": 61,
        "name": "ffmpeg",
        "media": [
            {"codec": "VP8", "source": {"type": "rtp", "port": 21010}},
            {"codec": "opus", "source": {"type": "rtp", "port": 21012}},
        ],
    }
    ffmpeg = [
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-re"),
        *("-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
        *("-t", "60", "-map", "0:v", "-c:v", "libvpx", "-deadline", "realtime"),
        *("-cpu-used", "8", "-b:v", "400k", "-g", "30", "-payload_type", "96"),
        *("-f", "rtp", f"rtp://{SRV}:21010"),
        *("-t", "60", "-map", "1:a", "-c:a", "libopus", "-ac", "2", "-payload_type", "111"),
        *("-f", "rtp", f"rtp://{SRV}:21012"),
    ]
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, f"{SRV}/24", cli, f"{CLI}/24")
        with serve(srv):
            assert rest(cli, "POST", "/api/mountpoints", body, ADMIN)["status"] == 201
            with background(cli, ffmpeg, tmp_path / "ffmpeg.log"):
                stats = await _chromium_decodes(cli, 61)
    info = stats["info"]
    assert stats["inbound"]["video"]["framesDecoded"] > 30, stats
    assert stats["inbound"]["video"]["frameWidth"] == 320
    assert stats["inbound"]["audio"]["packetsReceived"] > 0
    assert stats["listed"] == [61] and stats["errors"] == []
    media = info["stats"]["media"]
    assert all(m["packets"] > 0 and m["srtp_errors"] == 0 for m in media), info
    assert info["viewers"] == 1


async def test_whip_push_from_aiortc_watched_by_chromium(tmp_path: Path) -> None:
    need_netns()
    _needs_chromium()
    body = {
        "id": 71,
        "name": "whip",
        "media": [
            {"codec": "VP8", "source": {"type": "whip", "token": "push-token"}},
            {"codec": "opus", "source": {"type": "whip", "token": "push-token"}},
        ],
    }
    sdp = {"Content-Type": "application/sdp"}
    good = {**sdp, "Authorization": "Bearer push-token"}
    log = tmp_path / "whip.log"
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, f"{SRV}/24", cli, f"{CLI}/24")
        with serve(srv):
            cases: dict[str, Request] = {
                "no token": ("POST", "/whip/71", "v=0\r\n", sdp),
                "wrong token": (
                    "POST",
                    "/whip/71",
                    "v=0\r\n",
                    {**sdp, "Authorization": "Bearer x"},
                ),
                "not bearer": (
                    "POST",
                    "/whip/71",
                    "v=0\r\n",
                    {**sdp, "Authorization": "Basic eA=="},
                ),
                "junk": ("POST", "/whip/71", "not an offer", good),
                "no media": ("POST", "/whip/71", "v=0\r\ns=-\r\nt=0 0\r\n", good),
                "form": ("POST", "/whip/71", "a=b", {"Authorization": "Bearer push-token"}),
                "not whip": ("POST", "/whip/72", "v=0\r\n", good),
                "no such": ("POST", "/whip/79", "v=0\r\n", good),
            }
            creates: list[Request] = [
                ("POST", "/api/mountpoints", body, ADMIN),
                ("POST", "/api/mountpoints", test_mountpoint(72), ADMIN),
            ]
            replies = rest_many(cli, creates + list(cases.values()))
            assert [r["status"] for r in replies[:2]] == [201, 201]
            refusals = dict(zip(cases, replies[2:], strict=True))
            argv = [*SCRIPT, "whip", f"{BASE}/whip/71", "--token", "push-token"]
            with background(cli, argv, log) as publisher:
                pushed = wait_line(log, '{"whip"', publisher, 30)
                second = client(cli, "whip", f"{BASE}/whip/71", "--token", "push-token")
                stats = await _chromium_decodes(cli, 71, switch_to=72)
            info = stats["info"]
            after = rest(cli, "GET", "/api/mountpoints/71", headers=ADMIN)["body"]
    statuses = {k: (v["status"], v["body"]["error"]["code"]) for k, v in refusals.items()}
    assert statuses == {
        "no token": (401, "unauthorized"),
        "wrong token": (403, "forbidden"),
        "not bearer": (401, "unauthorized"),
        "junk": (400, "bad_sdp"),
        "no media": (400, "bad_sdp"),
        "form": (415, "unsupported_media_type"),
        "not whip": (409, "conflict"),
        "no such": (404, "not_found"),
    }
    assert refusals["no token"]["headers"]["WWW-Authenticate"] == "Bearer"
    assert pushed["status"] == 201 and pushed["location"].startswith("/whip/71/"), pushed
    assert pushed["candidates_in_answer"] > 0
    assert second["status"] == 409, second
    assert stats["inbound"]["video"]["framesDecoded"] > 30, stats
    assert stats["inbound"]["video"]["frameWidth"] == 640, stats  # aiortc's picture
    assert stats["errors"] == [], stats["errors"]
    # the page's switch button: the test source (320 wide) on the same PeerConnection
    switched = stats["switched"]
    assert switched["watching"] == 72 and switched["connection"] == "connected", switched
    assert switched["inbound"]["video"]["ssrc"] == stats["inbound"]["video"]["ssrc"], switched
    # continuity: a gap in the sequence numbers would count as thousands of packets lost
    assert switched["inbound"]["video"]["packetsLost"] <= 50, switched
    assert info["stats"]["publisher"]["connected"] is True, info
    assert info["stats"]["publisher"]["resource"] in pushed["location"]
    assert after["stats"]["publisher"] is None, (after, log.read_text())  # DELETEd
    assert after["stats"]["publishes"] == 1
    final = [json.loads(x) for x in log.read_text().splitlines() if x.startswith('{"whip"')][-1]
    assert final["deleted"] == 200, final


# ---------------------------------------------------------------------------------------------
# The clients (run in the client namespace)


async def _watch(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp
    import numpy as np
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.sdp import candidate_from_sdp

    result: dict[str, Any] = {"ok": False, "video_frames": 0, "audio_frames": 0, "events": []}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    lumas: list[float] = []
    progress = asyncio.Event()

    async def consume(track: Any) -> None:
        key = f"{track.kind}_frames"
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            result[key] += 1
            if track.kind == "video":
                lumas.append(float(np.asarray(frame.to_ndarray(format="gray")).mean()))
                progress.set()

    tasks: list[asyncio.Future[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))

    async def frames(n: int) -> None:
        while result["video_frames"] < n:
            progress.clear()
            await progress.wait()

    async with aiohttp.ClientSession() as http, http.ws_connect(args.url) as ws:
        ids = iter(range(1, 1_000_000))
        pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

        async def request(frame: dict[str, Any]) -> dict[str, Any]:
            rid = next(ids)
            fut = asyncio.get_running_loop().create_future()
            pending[rid] = fut
            await ws.send_str(json.dumps({**frame, "id": rid}))
            reply: dict[str, Any] = await asyncio.wait_for(fut, 10)
            return reply

        async def reader() -> None:
            async for msg in ws:
                frame = json.loads(msg.data)
                if frame["type"] in ("ack", "error") and frame.get("id") in pending:
                    pending.pop(frame["id"]).set_result(frame)
                elif frame["type"] == "event" and frame["event"] == "candidate":
                    c = frame["candidate"]
                    if c is None:
                        await pc.addIceCandidate(None)
                    else:
                        cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                        cand.sdpMid, cand.sdpMLineIndex = c.get("sdpMid"), c.get("sdpMLineIndex")
                        await pc.addIceCandidate(cand)
                elif frame["type"] == "event" and frame["event"] == "app":
                    result["events"].append(frame["data"])

        read_task = asyncio.ensure_future(reader())
        try:
            handle = (await request({"type": "attach", "app": "streaming"}))["data"]["handle"]

            async def message(body: dict[str, Any]) -> dict[str, Any]:
                return await request({"type": "message", "handle": handle, "body": body})

            listed = await message({"request": "list"})
            result["listed"] = [m["id"] for m in listed["data"]["list"]]
            watch = {"request": "watch", "id": args.id, **({"pin": args.pin} if args.pin else {})}
            reply = await message(watch)
            if reply["type"] != "ack":
                result["error"] = reply
                return result
            offer = reply["data"]
            result["watch_reply"] = {k: v for k, v in offer.items() if k != "sdp"}
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            answered = await request(
                {"type": "answer", "handle": handle, "sdp": pc.localDescription.sdp}
            )
            assert answered["type"] == "ack", answered
            await asyncio.wait_for(frames(args.frames), args.seconds)
            result["luma_before"] = sum(lumas[-5:]) / 5
            if args.refused_switch:
                refused = await message({"request": "switch", "id": args.refused_switch})
                result["refused_switch"] = refused
            if args.switch:
                switched = await message({"request": "switch", "id": args.switch})
                result["switch_reply"] = switched.get("data", switched)
                at = result["video_frames"]
                await asyncio.wait_for(frames(at + args.frames), args.seconds)
                result["frames_after_switch"] = result["video_frames"] - at
                result["luma_after"] = sum(lumas[-5:]) / 5
            result["peer_connections"] = 1
            result["transports"] = len({id(t.sender.transport) for t in pc.getTransceivers()})
            stats_url = args.url.replace("ws", "http", 1).rsplit("/ws", 1)[0]
            async with http.get(f"{stats_url}/api/sessions/{handle}/stats") as resp:
                result["server_stats"] = await resp.json()
            for mp_id in {args.id, args.switch or args.id}:
                async with http.get(f"{stats_url}/api/mountpoints/{mp_id}") as resp:
                    result.setdefault("viewers", {})[str(mp_id)] = (await resp.json())["viewers"]
            result["stopped"] = (await message({"request": "stop"}))["data"]
            result["ok"] = True
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await pc.close()
            read_task.cancel()
    return result


async def _whip(args: argparse.Namespace) -> dict[str, Any]:
    """Publish aiortc's synthetic audio and video over WHIP; print the POST's outcome at once
    (``{"whip": ...}``), then keep publishing until SIGTERM or ``--seconds``, then DELETE."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(VideoStreamTrack())
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    out: dict[str, Any] = {"whip": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(args.url, data=pc.localDescription.sdp, headers=headers) as resp:
            out["status"] = resp.status
            out["location"] = resp.headers.get("Location")
            answer = await resp.text()
        if out["status"] != 201:
            out["body"] = answer
            print(json.dumps(out), flush=True)
            await pc.close()
            return out
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        out["candidates_in_answer"] = answer.count("a=candidate:")
        print(json.dumps(out), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.seconds)
        out["ice"] = pc.iceConnectionState
        base = args.url.split("/whip/")[0]
        async with http.delete(base + str(out["location"]), headers=headers) as resp:
            out["deleted"] = resp.status
    await pc.close()
    out["ok"] = True
    return out


async def _whep(args: argparse.Namespace) -> dict[str, Any]:
    """Play a mountpoint over WHEP with aiortc: count decoded frames, then DELETE."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    result: dict[str, Any] = {"ok": False, "video_frames": 0, "audio_frames": 0}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    enough = asyncio.Event()

    async def consume(track: Any) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            result[f"{track.kind}_frames"] += 1
            if result["video_frames"] >= args.frames:
                enough.set()

    tasks: list[asyncio.Future[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    async with aiohttp.ClientSession() as http:
        async with http.post(args.url, data=pc.localDescription.sdp, headers=headers) as resp:
            result["status"] = resp.status
            result["location"] = resp.headers.get("Location")
            answer = await resp.text()
        if result["status"] != 201:
            result["body"] = answer
            await pc.close()
            return result
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        try:
            await asyncio.wait_for(enough.wait(), args.seconds)
            result["ok"] = True
        except TimeoutError:
            result["error"] = "timed out waiting for frames"
        base = args.url.split("/whep/")[0]
        async with http.delete(base + str(result["location"])) as resp:
            result["deleted"] = resp.status
    await pc.close()
    return result


async def _rest(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    results = []
    async with aiohttp.ClientSession() as http:
        for r in json.loads(args.batch):
            headers = dict(r["headers"])
            body = r["body"]
            if body is not None and not isinstance(body, str):
                body = json.dumps(body)
                headers.setdefault("Content-Type", "application/json")
            data = body.encode() if body is not None else None
            async with http.request(r["method"], r["url"], data=data, headers=headers) as resp:
                text = await resp.text()
                try:
                    doc: Any = json.loads(text)
                except ValueError:
                    doc = text
                results.append({"status": resp.status, "headers": dict(resp.headers), "body": doc})
    return {"results": results}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.test_streaming")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="watch a mountpoint over the WebSocket (aiortc)")
    w.add_argument("url")
    w.add_argument("--id", type=int, required=True)
    w.add_argument("--pin")
    w.add_argument("--frames", type=int, default=30)
    w.add_argument("--seconds", type=float, default=20)
    w.add_argument("--switch", type=int)
    w.add_argument("--refused-switch", type=int)
    p = sub.add_parser("whip", help="publish over WHIP (aiortc)")
    p.add_argument("url")
    p.add_argument("--token")
    p.add_argument("--seconds", type=float, default=60)
    e = sub.add_parser("whep", help="play over WHEP (aiortc)")
    e.add_argument("url")
    e.add_argument("--token")
    e.add_argument("--frames", type=int, default=30)
    e.add_argument("--seconds", type=float, default=20)
    r = sub.add_parser("rest", help="HTTP requests: a JSON list of {method, url, body, headers}")
    r.add_argument("batch")
    args = parser.parse_args()
    run = {"watch": _watch, "whip": _whip, "whep": _whep, "rest": _rest}[args.command]
    print(json.dumps(asyncio.run(run(args)), default=str), flush=True)


if __name__ == "__main__":
    main()
