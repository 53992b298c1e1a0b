"""An aiortc room participant, run as a script (often inside a network namespace).

usage: python room_client.py WS_URL --room R --name N [--token T] [--frames N] [--expect K]
                             [--after-leave K] [--hold] [--leave] [--no-publish] [--seconds S]

Joins room R on its own handle and publishes audio and video (aiortc's synthetic tracks), then
subscribes on a second handle: the server offers one PeerConnection with every other publisher's
tracks and re-offers as they come and go. Frames are counted decoded, per remote participant
(the `streams` list of each offer says which mid is whose).

Phase "frames": K other participants each gave --frames video and audio frames. With
--after-leave K, phase "after_leave": K `left` events came, then the re-offer without them, then
--frames more video frames from each remaining participant. Each phase done prints
{"ready": phase}; with --hold the client then stays, still publishing, until its stdin closes.
It ends with a `leave` request (--leave) or by just closing the WebSocket, and prints one JSON
object: {"ok", "participant", "frames": {id: {"display", "video", "audio"}},
"frames_after_leave", "offers", "events", "left", "streams", "streams_after_leave",
"received", "server_stats", "publisher_stats", "error"}. A refused join prints
{"ok": false, "error": {"code", "reason"}}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class Signaling:
    """Requests with ids, replies matched, events queued per handle."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 1
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.listeners: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}
        self.frames_out = 0

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send_str(json.dumps({**frame, "id": rid}))
        reply = await asyncio.wait_for(fut, 15)
        if reply["type"] == "error":
            raise Refused(reply["code"], reply["reason"])
        data: dict[str, Any] = reply["data"]
        return data

    async def read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data)
            if frame["type"] in ("ack", "error") and frame.get("id") in self.pending:
                self.pending.pop(frame["id"]).set_result(frame)
            elif frame["type"] == "event":
                listener = self.listeners.get(frame["handle"])
                if listener is not None:
                    await listener(frame)


async def add_candidate(pc: RTCPeerConnection, c: dict[str, Any] | None) -> None:
    if c is None or not c.get("candidate"):
        await pc.addIceCandidate(None)
        return
    cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
    cand.sdpMid = c.get("sdpMid")
    cand.sdpMLineIndex = c.get("sdpMLineIndex")
    await pc.addIceCandidate(cand)


class Participant:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.result: dict[str, Any] = {
            "ok": False,
            "frames": {},
            "frames_after_leave": {},
            "offers": 0,
            "events": [],
            "left": [],
        }
        self.pub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        # max-bundle: with aiortc's default (balanced), a second section of one kind in the same
        # offer stays on the first one's pre-BUNDLE transport and never gets a packet
        self.sub = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.owner: dict[str, dict[str, Any]] = {}  # mid -> stream entry of the last offer
        self.changed = asyncio.Event()
        self.offer_lock = asyncio.Lock()
        self.after_leave_from: float | None = None  # when the re-offer after the leave applied
        self.tasks: list[asyncio.Future[None]] = []

    # -- counting -------------------------------------------------------------------------------

    def _count(self, mid: str, kind: str) -> None:
        entry = self.owner.get(mid)
        if entry is None or not entry["active"]:
            return
        pid = entry["participant"]
        frames = self.result["frames"].setdefault(
            pid, {"display": entry["display"], "video": 0, "audio": 0}
        )
        frames[kind] += 1
        if self.after_leave_from is not None:
            after = self.result["frames_after_leave"].setdefault(pid, {"video": 0, "audio": 0})
            after[kind] += 1
        self.changed.set()

    async def _consume(self, track: MediaStreamTrack, mid: str) -> None:
        while True:
            try:
                await track.recv()
            except Exception:
                return
            self._count(mid, track.kind)

    # -- the subscriber PeerConnection ------------------------------------------------------------

    async def apply_offer(self, sub_handle: str, sig: Signaling, sdp: str, streams: Any) -> None:
        async with self.offer_lock:
            self.result["offers"] += 1
            await self.sub.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await self.sub.setLocalDescription(await self.sub.createAnswer())
            await sig.request(
                {"type": "answer", "handle": sub_handle, "sdp": self.sub.localDescription.sdp}
            )
            self.owner = {s["mid"]: s for s in streams}
            self.result["streams"] = streams
            self._check_after_leave()
            self.changed.set()

    def _check_after_leave(self) -> None:
        """Start counting "after the leave" once the applied offer carries nobody who left."""
        if not self.result["left"] or self.after_leave_from is not None:
            return
        gone = set(self.result["left"])
        if not any(s["active"] and s["participant"] in gone for s in self.owner.values()):
            self.after_leave_from = time.monotonic()
            self.result["streams_after_leave"] = list(self.owner.values())

    def _on_track(self, track: MediaStreamTrack) -> None:
        mid = next((t.mid for t in self.sub.getTransceivers() if t.receiver.track is track), None)
        if mid is not None:
            self.tasks.append(asyncio.ensure_future(self._consume(track, mid)))

    async def _receiver_stats(self) -> dict[str, Any]:
        """Per mid: packets and frames the subscriber PeerConnection's receivers saw."""
        out: dict[str, Any] = {}
        for t in self.sub.getTransceivers():
            report = await t.receiver.getStats()
            inbound = [s for s in report.values() if s.type == "inbound-rtp"]
            out[str(t.mid)] = {
                "kind": t.kind,
                "direction": t.currentDirection,
                "ssrcs": [s.ssrc for s in inbound],
                "packets": sum(s.packetsReceived for s in inbound),
            }
        return out

    # -- conditions -----------------------------------------------------------------------------

    def _enough(self, counts: dict[str, dict[str, Any]], kinds: tuple[str, ...]) -> int:
        want = self.args.frames
        return sum(1 for c in counts.values() if all(c.get(k, 0) >= want for k in kinds))

    async def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(what)
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    # -- the whole run --------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        self.sub.on("track", self._on_track)
        async with aiohttp.ClientSession() as http, http.ws_connect(args.url) as ws:
            sig = Signaling(ws)
            reader = asyncio.ensure_future(sig.read())
            try:
                await self._session(sig, http)
            except Refused as exc:
                self.result["error"] = {"code": exc.code, "reason": exc.reason}
            except Exception as exc:
                self.result["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                self.result["received"] = await self._receiver_stats()
                for t in self.tasks:
                    t.cancel()
                await self.pub.close()
                await self.sub.close()
                reader.cancel()
        return self.result

    async def _session(self, sig: Signaling, http: aiohttp.ClientSession) -> None:
        args = self.args
        pub_handle = (await sig.request({"type": "attach", "app": "room"}))["handle"]

        async def on_pub_event(frame: dict[str, Any]) -> None:
            if frame["event"] == "candidate":
                await add_candidate(self.pub, frame["candidate"])
            elif frame["event"] == "app":
                data = frame["data"]
                self.result["events"].append(data["event"])
                if data["event"] == "left":
                    self.result["left"].append(data["participant"]["id"])
                    if not self.offer_lock.locked():
                        self._check_after_leave()
                    self.changed.set()

        sig.listeners[pub_handle] = on_pub_event
        body: dict[str, Any] = {"request": "join", "room": args.room, "display": args.name}
        if args.token:
            body["token"] = args.token
        joined = await sig.request({"type": "message", "handle": pub_handle, "body": body})
        me = joined["participant"]["id"]
        self.result["participant"] = me
        self.result["join"] = joined
        if not args.no_publish:
            self.pub.addTransceiver(VideoStreamTrack(), direction="sendonly")
            self.pub.addTransceiver(AudioStreamTrack(), direction="sendonly")
            await self.pub.setLocalDescription(await self.pub.createOffer())
            answer = await sig.request(
                {"type": "offer", "handle": pub_handle, "sdp": self.pub.localDescription.sdp}
            )
            await self.pub.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

        sub_handle = (await sig.request({"type": "attach", "app": "room"}))["handle"]

        async def on_sub_event(frame: dict[str, Any]) -> None:
            if frame["event"] == "candidate":
                await add_candidate(self.sub, frame["candidate"])
            elif frame["event"] == "offer":
                self.tasks.append(
                    asyncio.ensure_future(
                        self.apply_offer(sub_handle, sig, frame["sdp"], frame["streams"])
                    )
                )

        sig.listeners[sub_handle] = on_sub_event
        body = {"request": "subscribe", "room": args.room, "participant": me}
        if args.token:
            body["token"] = args.token
        sub = await sig.request({"type": "message", "handle": sub_handle, "body": body})
        if sub.get("sdp"):
            await self.apply_offer(sub_handle, sig, sub["sdp"], sub["streams"])

        started = time.monotonic()
        await self.wait_until(
            lambda: self._enough(self.result["frames"], ("video", "audio")) >= args.expect,
            args.seconds,
            f"frames from {args.expect} participant(s)",
        )
        self.result["first_frames_after"] = round(time.monotonic() - started, 2)
        if not args.after_leave:
            await self.snapshot(http, sub_handle, pub_handle)
        await self.ready("frames", final=not args.after_leave)
        if args.after_leave:
            await self.wait_until(
                lambda: (
                    len(self.result["left"]) >= args.after_leave
                    and self.after_leave_from is not None
                ),
                args.seconds,
                f"{args.after_leave} participant(s) leaving and the re-offer",
            )
            remaining = args.expect - args.after_leave
            await self.wait_until(
                lambda: self._enough(self.result["frames_after_leave"], ("video",)) >= remaining,
                args.seconds,
                f"frames from {remaining} participant(s) after the leave",
            )
            await self.snapshot(http, sub_handle, pub_handle)
            await self.ready("after_leave", final=True)
        if args.leave:
            leave = {"type": "message", "handle": pub_handle, "body": {"request": "leave"}}
            self.result["leave"] = await sig.request(leave)
        self.result["ok"] = True

    async def snapshot(self, http: aiohttp.ClientSession, sub_handle: str, pub_handle: str) -> None:
        """The server's view of both handles, now (before anyone may leave)."""
        base = self.args.url.replace("ws", "http", 1).rsplit("/ws", 1)[0]
        async with http.get(f"{base}/api/sessions/{sub_handle}/stats") as resp:
            self.result["server_stats"] = await resp.json()
        async with http.get(f"{base}/api/sessions/{pub_handle}/stats") as resp:
            self.result["publisher_stats"] = await resp.json()

    async def ready(self, phase: str, *, final: bool) -> None:
        """Say a phase is done; with --hold, stay after the last one until stdin closes (the
        test decides when everyone has seen enough of everyone)."""
        print(json.dumps({"ready": phase}), flush=True)
        if final and self.args.hold:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--room", default="demo")
    ap.add_argument("--name", default="aiortc")
    ap.add_argument("--token")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--expect", type=int, default=1, help="other publishers to decode")
    ap.add_argument("--after-leave", type=int, default=0, help="leaves to see, then re-count")
    ap.add_argument("--hold", action="store_true", help="when done, stay until stdin closes")
    ap.add_argument("--leave", action="store_true", help="end with a leave request")
    ap.add_argument("--no-publish", action="store_true")
    ap.add_argument("--seconds", type=float, default=40)
    args = ap.parse_args()
    result = asyncio.run(Participant(args).run())
    print(json.dumps(result, default=str), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
