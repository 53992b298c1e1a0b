"""The lab's scripted WebRTC client (aiortc), run inside a client namespace by `sfu natlab`.

One process serves many runs: it prints ``{"ready": true}``, then reads one JSON request per
line on stdin and prints one JSON result per line (``python -m sfu.natlab.client``). A run:

- connects to the signaling WebSocket (through the lab's delaying proxy), attaches the echo test;
- ``server-offers``: asks the server to offer (``{"offer": true}``), answers with every candidate
  in the SDP (aiortc gathers before answering, like a non-trickling answerer);
- ``client-offers``: offers audio with NO candidate in the SDP and trickles them, as Chromium
  does: by default once the answer has arrived (``trickle_after = "answer"``, what the demo
  page does), or right after the offer (``"offer"``);
- applies the server's trickled candidates as they come;
- succeeds when ICE and DTLS are up and ``frames`` echoed audio frames came back.

It reports the time from the answer (sent or received) to ICE connected, both sides' view of
the selected pair, the server's candidate types, and the server's ICE diagnosis on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

FLOWS = ("server-offers", "client-offers")


@dataclass(frozen=True)
class RunRequest:
    """One run of the client (the JSON request line, field by field)."""

    url: str
    flow: str = "server-offers"
    stun: list[str] = field(default_factory=list)
    timeout: float = 5.0
    frames: int = 5
    trickle_after: str = "answer"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRequest:
        req = cls(**data)
        if req.flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}")
        if req.trickle_after not in ("answer", "offer"):
            raise ValueError("trickle_after must be 'answer' or 'offer'")
        return req


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """The SDP without candidate lines, and the first media section's candidates (trickle form)."""
    kept: list[str] = []
    found: list[dict[str, Any]] = []
    section = -1
    mids: dict[int, str] = {}
    for line in sdp.splitlines():
        if line.startswith("m="):
            section += 1
        elif line.startswith("a=mid:"):
            mids[section] = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            if section == 0:
                found.append({"candidate": line[2:], "sdpMLineIndex": 0})
            continue
        if line == "a=end-of-candidates":
            continue
        kept.append(line)
    for cand in found:
        cand["sdpMid"] = mids.get(0, "0")
    return "\r\n".join(kept) + "\r\n", found


def candidate_type(line: str) -> str:
    """``typ`` of an SDP candidate line ("host", "srflx", "prflx", "relay"), or "?"."""
    fields = line.split()
    for i, word in enumerate(fields[:-1]):
        if word == "typ":
            return fields[i + 1]
    return "?"


class _Signaling:
    """Request/reply over the WebSocket, with server events handed to a callback."""

    def __init__(self, ws: Any, on_event: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.ws = ws
        self._on_event = on_event
        self._ids = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        return await self.reply(frame, await self.start(frame), timeout)

    async def start(self, frame: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a request now; the returned future gets its reply frame."""
        self._ids += 1
        rid = self._ids
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.ws.send_str(json.dumps({**frame, "id": rid}))
        return fut

    @staticmethod
    async def reply(
        frame: dict[str, Any], fut: asyncio.Future[dict[str, Any]], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The data of a started request's reply (raises on an error reply)."""
        reply = await asyncio.wait_for(fut, timeout)
        if reply["type"] == "error":
            raise RuntimeError(f"{frame['type']}: {reply.get('code')} {reply.get('reason')}")
        data: dict[str, Any] = reply.get("data") or {}
        return data

    async def send(self, frame: dict[str, Any]) -> None:
        """A request whose reply nobody waits for (trickled candidates)."""
        self._ids += 1
        await self.ws.send_str(json.dumps({**frame, "id": self._ids}))

    async def _read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data)
            if frame.get("type") in ("ack", "error") and frame.get("id") in self._pending:
                self._pending.pop(frame["id"]).set_result(frame)
            elif frame.get("type") == "event":
                await self._on_event(frame)


async def run_once(req: RunRequest) -> dict[str, Any]:
    """One session against the server; never raises (errors go into the result)."""
    import aiohttp
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack
    from aiortc.sdp import candidate_from_sdp

    result: dict[str, Any] = {
        "ok": False,
        "flow": req.flow,
        "frames": 0,
        "server_candidates": [],
        "client_candidates": [],
        "answer_to_connected": None,
        "error": None,
    }
    ice = [RTCIceServer(urls=f"stun:{s}") for s in req.stun]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    connected = asyncio.Event()
    enough = asyncio.Event()
    marks: dict[str, float] = {}
    consumers: list[asyncio.Future[None]] = []
    remote_set = asyncio.Event()  # trickled candidates wait for the remote description

    @pc.on("iceconnectionstatechange")
    def on_ice() -> None:
        state = pc.iceConnectionState
        result["ice_state"] = state
        if state in ("connected", "completed") and "ice" not in marks:
            marks["ice"] = time.monotonic()
            connected.set()

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def consume() -> None:
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                result["frames"] += 1
                if result["frames"] >= req.frames:
                    enough.set()

        if track.kind == "audio":
            consumers.append(asyncio.ensure_future(consume()))

    async def on_event(frame: dict[str, Any]) -> None:
        if frame.get("event") == "candidate":
            cand = frame.get("candidate")
            if not cand or not cand.get("candidate"):
                result["server_end_of_candidates"] = True
                return
            line = str(cand["candidate"])
            result["server_candidates"].append(candidate_type(line))
            parsed = candidate_from_sdp(line.split(":", 1)[1])
            parsed.sdpMid = cand.get("sdpMid")
            parsed.sdpMLineIndex = cand.get("sdpMLineIndex")
            await remote_set.wait()
            await pc.addIceCandidate(parsed)
        elif frame.get("event") == "hangup":
            result["hangup"] = frame.get("reason")

    async def trickle(sig: _Signaling, handle: str, cands: list[dict[str, Any]]) -> None:
        for cand in cands:
            await sig.send({"type": "candidate", "handle": handle, "candidate": cand})
        await sig.send({"type": "candidate", "handle": handle, "candidate": None})

    start = time.monotonic()
    base = req.url.replace("ws", "http", 1).rsplit("/ws", 1)[0]
    async with aiohttp.ClientSession() as http:
        sig: _Signaling | None = None
        try:
            ws = await http.ws_connect(req.url)
            sig = _Signaling(ws, on_event)
            handle = (await sig.request({"type": "attach", "app": "echotest"}))["handle"]
            result["handle"] = handle
            if req.flow == "server-offers":
                offer = await sig.request(
                    {"type": "message", "handle": handle, "body": {"offer": True}}
                )
                in_sdp = split_candidates(offer["sdp"])[1]
                result["candidates_in_offer"] = len(in_sdp)
                result["server_candidates"] += [candidate_type(c["candidate"]) for c in in_sdp]
                await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
                remote_set.set()
                pc.addTrack(AudioStreamTrack())
                await pc.setLocalDescription(await pc.createAnswer())
                sdp = pc.localDescription.sdp
                result["client_candidates"] = [
                    candidate_type(c["candidate"]) for c in split_candidates(sdp)[1]
                ]
                marks["answer"] = time.monotonic()
                await sig.request({"type": "answer", "handle": handle, "sdp": sdp})
            else:
                pc.addTrack(AudioStreamTrack())
                await pc.setLocalDescription(await pc.createOffer())
                sdp, cands = split_candidates(pc.localDescription.sdp)
                result["client_candidates"] = [candidate_type(c["candidate"]) for c in cands]
                frame = {"type": "offer", "handle": handle, "sdp": sdp}
                pending = await sig.start(frame)
                if req.trickle_after == "offer":
                    await trickle(sig, handle, cands)
                answer = await sig.reply(frame, pending)
                marks["answer"] = time.monotonic()
                in_sdp = split_candidates(answer["sdp"])[1]
                result["candidates_in_answer"] = len(in_sdp)
                result["server_candidates"] += [candidate_type(c["candidate"]) for c in in_sdp]
                if req.trickle_after == "answer":
                    await trickle(sig, handle, cands)
                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
                remote_set.set()
            remaining = req.timeout - (time.monotonic() - marks["answer"])
            try:
                await asyncio.wait_for(_both(connected, enough), max(0.1, remaining))
            except TimeoutError:
                result["error"] = (
                    "ICE not connected" if not connected.is_set() else "no echoed audio"
                ) + f" {req.timeout:g} s after the answer"
            if "ice" in marks:
                result["answer_to_connected"] = round(marks["ice"] - marks["answer"], 4)
            result["client_pair"] = _client_pair(pc)
            result["server"] = await _server_view(http, base, handle)
            result["ok"] = connected.is_set() and enough.is_set()
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            result["elapsed"] = round(time.monotonic() - start, 3)
            for task in consumers:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 3.0)
            if sig is not None:
                sig.reader.cancel()
                with contextlib.suppress(Exception):
                    await sig.ws.close()
    return result


async def _both(a: asyncio.Event, b: asyncio.Event) -> None:
    await a.wait()
    await b.wait()


def _client_pair(pc: Any) -> dict[str, Any] | None:
    """aiortc's nominated pair (private attributes: best effort, None if they moved)."""
    try:
        transport = pc.getTransceivers()[0].sender.transport.transport
        pair = transport._connection._nominated.get(1)
    except (AttributeError, IndexError):
        return None
    if pair is None:
        return None

    def cand(c: Any) -> dict[str, Any]:
        return {"type": c.type, "address": c.host, "port": c.port}

    return {"local": cand(pair.local_candidate), "remote": cand(pair.remote_candidate)}


async def _server_view(http: Any, base: str, handle: str) -> dict[str, Any] | None:
    """The server's own stats of this session: selected pair, ICE state, diagnosis."""
    try:
        async with http.get(f"{base}/api/sessions/{handle}/stats") as resp:
            stats = await resp.json()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    peer = stats.get("peer") or {}
    return {
        "state": peer.get("state"),
        "ice_state": peer.get("ice_state"),
        "selected_pair": peer.get("selected_pair"),
        "diagnosis": peer.get("diagnosis"),
    }


async def serve_requests() -> None:
    """The agent loop: one JSON request per stdin line, one JSON result per stdout line."""
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if not line.strip():
            continue
        try:
            req = RunRequest.from_json(json.loads(line))
        except (ValueError, TypeError) as exc:
            print(json.dumps({"ok": False, "error": f"bad request: {exc}"}), flush=True)
            continue
        res = await run_once(req)
        print(json.dumps(res, default=str), flush=True)


def main() -> None:
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(serve_requests())


if __name__ == "__main__":
    main()
