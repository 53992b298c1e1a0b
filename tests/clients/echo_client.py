"""An aiortc echo-test client, run as a script (often inside a network namespace).

usage: python echo_client.py WS_URL [--seconds N] [--frames N] [--no-audio] [--trickle]

Connects to the server's signaling WebSocket, attaches the echo test, offers audio and video
(aiortc's synthetic tracks), and counts the frames it gets back decoded. Prints one JSON object:
{"ok": bool, "video_frames": n, "audio_frames": n, "ice_state": ..., "answer_to_connected": s,
 "candidates_in_answer": n, "trickled": n, "error": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp


async def run(
    url: str,
    seconds: float,
    want_frames: int,
    audio: bool,
    bad_fingerprint: bool = False,
    vanish: bool = False,
    server_offers: bool = False,
    loss: float = 0.0,
    toggle: bool = False,
    stun: str | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"ok": False, "video_frames": 0, "audio_frames": 0, "trickled": 0}
    ice_servers = [RTCIceServer(urls=stun)] if stun else []
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
    pc.addTrack(VideoStreamTrack())
    if audio:
        pc.addTrack(AudioStreamTrack())
    done = asyncio.Event()
    hangup = asyncio.Event()
    connected_at: list[float] = []

    async def consume(track: Any, key: str) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            result[key] += 1
            if result["video_frames"] >= want_frames and (
                not audio or result["audio_frames"] >= want_frames
            ):
                done.set()

    consumers: list[asyncio.Future[None]] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        consumers.append(asyncio.ensure_future(consume(track, f"{track.kind}_frames")))

    @pc.on("iceconnectionstatechange")
    def on_ice() -> None:
        result["ice_state"] = pc.iceConnectionState
        if pc.iceConnectionState in ("connected", "completed") and not connected_at:
            connected_at.append(time.monotonic())

    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        ids = iter(range(1, 1_000_000))
        pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

        async def request(frame: dict[str, Any]) -> dict[str, Any]:
            rid = next(ids)
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            pending[rid] = fut
            await ws.send_str(json.dumps({**frame, "id": rid}))
            reply = await asyncio.wait_for(fut, 10)
            if reply["type"] == "error":
                raise RuntimeError(f"{frame['type']}: {reply['code']} {reply['reason']}")
            return reply["data"]

        async def reader() -> None:
            async for msg in ws:
                frame = json.loads(msg.data)
                if frame["type"] in ("ack", "error") and frame.get("id") in pending:
                    pending.pop(frame["id"]).set_result(frame)
                elif frame["type"] == "event" and frame["event"] == "candidate":
                    c = frame["candidate"]
                    result["trickled"] += 1
                    if c is None:
                        await pc.addIceCandidate(None)  # type: ignore[arg-type]
                    else:
                        cand: RTCIceCandidate = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                        cand.sdpMid = c.get("sdpMid")
                        cand.sdpMLineIndex = c.get("sdpMLineIndex")
                        await pc.addIceCandidate(cand)
                elif frame["type"] == "event" and frame["event"] == "hangup":
                    result["hangup"] = frame.get("reason")
                    hangup.set()

        read_task = asyncio.ensure_future(reader())
        try:
            handle = (await request({"type": "attach", "app": "echotest"}))["handle"]
            if loss:  # random inbound loss in this namespace (media only: signaling is TCP)
                rule = [
                    "-p",
                    "udp",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    str(loss),
                    "-j",
                    "DROP",
                ]
                subprocess.run(["iptables", "-I", "INPUT", *rule], check=True)
            if server_offers:
                # the server offers (ICE controlling, DTLS actpass); we answer
                offer = await request(
                    {"type": "message", "handle": handle, "body": {"offer": True}}
                )
                result["candidates_in_offer"] = offer["sdp"].count("a=candidate:")
                result["server_candidates"] = _candidate_lines(offer["sdp"])
                await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                answered = time.monotonic()
                await request({"type": "answer", "handle": handle, "sdp": pc.localDescription.sdp})
            else:
                await pc.setLocalDescription(await pc.createOffer())
                offer_sdp = pc.localDescription.sdp
                if bad_fingerprint:  # announce a certificate we do not have: DTLS must fail
                    offer_sdp = re.sub(
                        r"(a=fingerprint:\S+ )[0-9A-F:]{5}", r"\g<1>00:00", offer_sdp
                    )
                answer = await request({"type": "offer", "handle": handle, "sdp": offer_sdp})
                result["candidates_in_answer"] = answer["sdp"].count("a=candidate:")
                result["server_candidates"] = _candidate_lines(answer["sdp"])
                answered = time.monotonic()
                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            if bad_fingerprint:
                await asyncio.wait_for(hangup.wait(), 30)
                result["ok"] = not done.is_set()
                return result
            try:
                await asyncio.wait_for(done.wait(), seconds)
            except TimeoutError:
                result["error"] = "timed out waiting for echoed frames"
            if connected_at:
                result["answer_to_connected"] = round(connected_at[0] - answered, 4)
            if vanish and done.is_set():
                # drop every UDP packet of this namespace: to the server, the peer is gone
                for chain in ("INPUT", "OUTPUT"):
                    subprocess.run(["iptables", "-I", chain, "-p", "udp", "-j", "DROP"], check=True)
                gone = time.monotonic()
                await asyncio.wait_for(hangup.wait(), 60)
                result["vanish_to_hangup"] = round(time.monotonic() - gone, 2)
                result["ok"] = True
                return result
            stats_url = (
                url.replace("ws", "http", 1).rsplit("/ws", 1)[0] + f"/api/sessions/{handle}/stats"
            )
            if toggle and done.is_set():
                result["toggle"] = await _toggle(request, http, handle, stats_url)
            stats = await request({"type": "message", "handle": handle, "body": {"video": True}})
            result["message_reply"] = stats
            result["handle"] = handle
            async with http.get(stats_url) as resp:
                result["server_stats"] = await resp.json()
            result["ok"] = done.is_set()
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            await pc.close()
            read_task.cancel()
    return result


async def _toggle(
    request: Any, http: aiohttp.ClientSession, handle: str, stats_url: str
) -> dict[str, Any]:
    """Audio echo off, then on: how many audio packets the server sent in each second."""

    async def audio_out() -> int:
        async with http.get(stats_url) as resp:
            stats = await resp.json()
        peer = stats["peer"]
        audio_ssrc = next(n["send_ssrc"] for n in peer["negotiated"] if n["kind"] == "audio")
        return int(peer["media"]["outbound"][str(audio_ssrc)]["packets"])

    out: dict[str, Any] = {}
    await request({"type": "message", "handle": handle, "body": {"audio": False}})
    await asyncio.sleep(0.2)
    a = await audio_out()
    await asyncio.sleep(1.0)
    out["while_off"] = await audio_out() - a
    await request({"type": "message", "handle": handle, "body": {"audio": True, "bitrate": 300000}})
    a = await audio_out()
    await asyncio.sleep(1.0)
    out["while_on"] = await audio_out() - a
    return out


def _candidate_lines(sdp: str) -> list[str]:
    """The server's candidates in its SDP ("foundation component transport ... typ T ...")."""
    return [
        line[len("a=candidate:") :] for line in sdp.splitlines() if line.startswith("a=candidate:")
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument(
        "--bad-fingerprint", action="store_true", help="announce a wrong DTLS fingerprint"
    )
    ap.add_argument(
        "--vanish", action="store_true", help="after the echo works, drop all UDP (root, own netns)"
    )
    ap.add_argument("--server-offers", action="store_true", help="ask the server to offer")
    ap.add_argument(
        "--loss", type=float, default=0.0, help="random inbound UDP loss (0..1, iptables)"
    )
    ap.add_argument("--toggle", action="store_true", help="switch the audio echo off and on")
    ap.add_argument("--stun", help="a STUN server for our own srflx candidates (stun:IP:PORT)")
    args = ap.parse_args()
    res = asyncio.run(
        run(
            args.url,
            args.seconds,
            args.frames,
            not args.no_audio,
            bad_fingerprint=args.bad_fingerprint,
            vanish=args.vanish,
            server_offers=args.server_offers,
            loss=args.loss,
            toggle=args.toggle,
            stun=args.stun,
        )
    )
    print(json.dumps(res), flush=True)
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
