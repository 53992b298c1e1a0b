"""The watch application, WHIP and WHEP over a real in-process server (HTTP and WebSocket on
127.0.0.1): requests, replies, offers and answers, refusals with their codes.

No media flows here (tests/e2e/test_streaming.py does that): aiortc writes the client SDP, with
its candidates taken out so that no connectivity check leaves for a non-loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from sfu.config import MediaConfig, StreamingConfig
from sfu.server import HttpSettings, ServerSettings, SfuServer
from sfu.webrtc.server import MediaSettings

KEY = "watch-admin"
ADMIN = {"Authorization": f"Bearer {KEY}"}
SDP = {"Content-Type": "application/sdp"}


def without_candidates(sdp: str) -> str:
    lines = [x for x in sdp.splitlines() if not x.startswith("a=candidate:")]
    return "\r\n".join(lines) + "\r\n"


def test_source(
    mp_id: int, pattern: str = "smpte", codec: str = "VP8", **extra: Any
) -> dict[str, Any]:
    video = {"type": "test", "pattern": pattern, "width": 64, "height": 48, "fps": 10}
    return {
        "id": mp_id,
        "media": [
            {"codec": codec, "source": video},
            {"codec": "opus", "source": {"type": "test"}},
        ],
        **extra,
    }


test_source.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
async def server() -> AsyncIterator[SfuServer]:
    media = MediaSettings(
        MediaConfig(listen=(ipaddress.ip_address("127.0.0.1"),), port=0, include_loopback=True)
    )
    srv = SfuServer(
        ServerSettings(
            http=HttpSettings(listen=(("127.0.0.1", 0),)),
            media=media,
            streaming=StreamingConfig(
                admin_key=KEY, db_path=":memory:", rtp_port_min=29400, rtp_port_max=29419
            ),
        )
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def http(server: SfuServer) -> AsyncIterator[Http]:
    host, port = server.http_addresses[0]
    async with aiohttp.ClientSession() as session:
        yield Http(session, f"http://{host}:{port}")


@dataclass
class Http:
    session: aiohttp.ClientSession
    base: str

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if isinstance(body, str):
            kwargs["data"] = body
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            text = await resp.text()
            try:
                doc: Any = json.loads(text)
            except ValueError:
                doc = text
            return resp.status, doc, resp.headers

    async def create(self, body: dict[str, Any]) -> None:
        status, doc, _ = await self.call("POST", "/api/mountpoints", body, ADMIN)
        assert status == 201, doc


@dataclass
class Ws:
    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 1
    handle: str = ""

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        rid, self.next_id = self.next_id, self.next_id + 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send_str(json.dumps({**frame, "id": rid}))
        return await asyncio.wait_for(fut, 10)

    async def message(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request({"type": "message", "handle": self.handle, "body": body})

    async def read(self) -> None:
        async for msg in self.ws:
            frame = json.loads(msg.data)
            if frame["type"] in ("ack", "error") and frame.get("id") in self.pending:
                self.pending.pop(frame["id"]).set_result(frame)
            elif frame["type"] == "event":
                self.events.append(frame)

    async def event(
        self, name: str, status: str | None = None, timeout: float = 5
    ) -> dict[str, Any]:
        """The first event ``name`` (an ``app`` one with result ``status``, if given)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for e in self.events:
                result = e.get("data", {}).get("result", {})
                if e["event"] == name and (status is None or result.get("status") == status):
                    self.events.remove(e)
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {name} event in {self.events}")


def error_of(reply: dict[str, Any]) -> tuple[int, str]:
    assert reply["type"] == "error", reply
    return reply["code"], reply["reason"]


async def answer_for(offer: str) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc, without_candidates(pc.localDescription.sdp)


async def test_watch_pause_resume_switch_stop(server: SfuServer, http: Http) -> None:
    await http.create(test_source(1))
    await http.create(test_source(2, "black"))
    await http.create(test_source(3, codec="H264"))
    await http.create(test_source(4, pin="1234"))
    await http.create(test_source(5, enabled=False))
    host, port = server.http_addresses[0]
    pcs: list[RTCPeerConnection] = []
    async with http.session.ws_connect(f"ws://{host}:{port}/ws") as raw:
        ws = Ws(raw)
        reader = asyncio.ensure_future(ws.read())
        try:
            ws.handle = (await ws.request({"type": "attach", "app": "streaming"}))["data"]["handle"]
            listed = (await ws.message({"request": "list"}))["data"]
            assert [m["id"] for m in listed["list"]] == [1, 2, 3, 4, 5]
            info = (await ws.message({"request": "info", "id": 4}))["data"]["info"]
            assert info["pin_required"] is True and "pin" not in info

            refusals = [
                await ws.message({"request": "dance"}),
                await ws.message({"request": "watch"}),
                await ws.message({"request": "watch", "id": "1"}),
                await ws.message({"request": "watch", "id": 99}),
                await ws.message({"request": "watch", "id": 4}),
                await ws.message({"request": "watch", "id": 4, "pin": "0000"}),
                await ws.message({"request": "watch", "id": 5}),
                await ws.message({"request": "pause"}),
                await ws.message({"request": "start", "sdp": "v=0"}),
                await ws.request({"type": "offer", "handle": ws.handle, "sdp": "v=0"}),
            ]
            codes = [error_of(r)[0] for r in refusals]
            assert codes == [401, 401, 401, 404, 403, 403, 409, 409, 409, 409]
            assert "needs a pin" in error_of(refusals[4])[1]

            watch = (await ws.message({"request": "watch", "id": 1}))["data"]
            assert watch["type"] == "offer" and watch["id"] == 1
            assert watch["result"]["status"] == "preparing"
            sdp = watch["sdp"]
            assert sdp.count("a=sendonly") == 2 and "a=extmap" not in sdp
            assert "a=rtpmap:96 VP8/90000" in sdp and "a=rtpmap:111 opus/48000/2" in sdp
            assert "a=mid:0" in sdp and "a=mid:1" in sdp and sdp.count("a=ssrc:") == 4
            again = await ws.message({"request": "watch", "id": 2})
            assert error_of(again)[0] == 409
            pc, answer = await answer_for(sdp)
            pcs.append(pc)
            assert (await ws.request({"type": "answer", "handle": ws.handle, "sdp": answer}))[
                "type"
            ] == "ack"
            stats = await (
                await http.session.get(f"{http.base}/api/sessions/{ws.handle}/stats")
            ).json()
            assert stats["mountpoint"] == 1 and len(stats["viewer"]["consumers"]) == 2
            assert (await http.call("GET", "/api/mountpoints/1"))[1]["viewers"] == 1

            assert (await ws.message({"request": "pause"}))["data"]["result"]["status"] == "paused"
            assert (await ws.message({"request": "resume"}))["data"]["result"][
                "status"
            ] == "started"
            code, reason = error_of(await ws.message({"request": "switch", "id": 3}))
            assert code == 409 and "H264" in reason
            assert error_of(await ws.message({"request": "switch", "id": 4}))[0] == 403
            switched = (await ws.message({"request": "switch", "id": 2}))["data"]
            assert switched["id"] == 2 and switched["result"]["status"] == "switched"
            assert (await http.call("GET", "/api/mountpoints/1"))[1]["viewers"] == 0
            assert (await http.call("GET", "/api/mountpoints/2"))[1]["viewers"] == 1
            switched = (await ws.message({"request": "switch", "id": 4, "pin": "1234"}))["data"]
            assert switched["id"] == 4

            # kicked by the owner: an event, then the PeerConnection is closed
            status, kicked, _ = await http.call("POST", "/api/mountpoints/4/kick", None, ADMIN)
            assert (status, kicked) == (200, {"kicked": 1})
            event = await ws.event("app", "kicked")
            assert event["data"]["result"] == {"status": "kicked", "reason": "kicked"}
            assert "kicked" in (await ws.event("hangup"))["reason"]

            # watch again on the same handle, then stop
            watch = (await ws.message({"request": "watch", "id": 1}))["data"]
            pc, answer = await answer_for(watch["sdp"])
            pcs.append(pc)
            started = await ws.message({"request": "start", "sdp": answer})
            assert started["data"]["result"]["status"] == "starting"
            stopped = (await ws.message({"request": "stop"}))["data"]
            assert stopped["result"]["status"] == "stopped"
            assert (await http.call("GET", "/api/mountpoints/1"))[1]["viewers"] == 0
            assert error_of(await ws.message({"request": "resume"}))[0] == 409
        finally:
            reader.cancel()
            for pc in pcs:
                await pc.close()


async def _offer(
    video: str | None = "VP8", audio: bool = True, send: bool = True
) -> tuple[RTCPeerConnection, str]:
    """An aiortc offer (sending for WHIP, receiving for WHEP), candidates taken out."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if video is not None:
        if send:
            t = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        else:
            t = pc.addTransceiver("video", direction="recvonly")
        capabilities = t.receiver.getCapabilities("video")
        assert capabilities is not None
        caps = [c for c in capabilities.codecs if c.mimeType == f"video/{video}"]
        t.setCodecPreferences(caps)
    if audio:
        if send:
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        else:
            pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, without_candidates(pc.localDescription.sdp)


async def test_whip_http(http: Http) -> None:
    token = {**SDP, "Authorization": "Bearer sesame"}
    await http.create(
        {
            "id": 11,
            "media": [
                {"codec": "VP8", "source": {"type": "whip", "token": "sesame"}},
                {"codec": "opus", "source": {"type": "whip", "token": "sesame"}},
            ],
        }
    )
    await http.create(test_source(12))
    pc, offer = await _offer()
    pcs = [pc]
    try:
        cases = {
            "no token": ("POST", "/whip/11", offer, SDP),
            "wrong token": ("POST", "/whip/11", offer, {**SDP, "Authorization": "Bearer nope"}),
            "json": ("POST", "/whip/11", offer, {"Authorization": "Bearer sesame"}),
            "not sdp": ("POST", "/whip/11", "hello", token),
            "no media": (
                "POST",
                "/whip/11",
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
                token,
            ),
            "too large": ("POST", "/whip/11", "v=0\r\n" + "a=x\r\n" * 20000, token),
            "bad id": ("POST", "/whip/x1", offer, token),
            "not whip": ("POST", "/whip/12", offer, token),
            "unknown": ("POST", "/whip/13", offer, token),
        }
        got = {}
        for name, (method, path, body, headers) in cases.items():
            status, doc, _ = await http.call(method, path, body, headers)
            got[name] = (status, doc["error"]["code"])
        assert got == {
            "no token": (401, "unauthorized"),
            "wrong token": (403, "forbidden"),
            "json": (415, "unsupported_media_type"),
            "not sdp": (400, "bad_sdp"),
            "no media": (400, "bad_sdp"),
            "too large": (413, "too_large"),
            "bad id": (404, "not_found"),
            "not whip": (409, "conflict"),
            "unknown": (404, "not_found"),
        }
        status, _, headers = await http.call("OPTIONS", "/whip/11")
        assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]

        status, answer, headers = await http.call("POST", "/whip/11", offer, token)
        assert status == 201, answer
        location = headers["Location"]
        assert location.startswith("/whip/11/") and headers["Content-Type"] == "application/sdp"
        assert headers["Access-Control-Allow-Origin"] == "*"
        assert answer.count("a=recvonly") == 2 and "VP8/90000" in answer and "H264" not in answer
        assert "a=candidate:" in answer and "a=end-of-candidates" in answer
        pc2, offer2 = await _offer()
        pcs.append(pc2)
        status, doc, _ = await http.call("POST", "/whip/11", offer2, token)
        assert (status, doc["error"]["code"]) == (409, "conflict")
        info = (await http.call("GET", "/api/mountpoints/11", None, ADMIN))[1]
        assert info["stats"]["publisher"]["resource"] in location

        frag = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
        frag_type = {
            "Content-Type": "application/trickle-ice-sdpfrag",
            "Authorization": "Bearer sesame",
        }
        assert (await http.call("PATCH", location, frag, token))[0] == 415
        assert (await http.call("PATCH", location, frag, frag_type))[0] == 204
        assert (await http.call("PATCH", "/whip/11/nope", frag, frag_type))[0] == 404
        assert (await http.call("DELETE", "/whip/11/nope", None, token))[0] == 404
        assert (await http.call("DELETE", location, None, {}))[0] == 401
        assert (await http.call("DELETE", location, None, token))[0] == 200
        info = (await http.call("GET", "/api/mountpoints/11", None, ADMIN))[1]
        assert info["stats"]["publisher"] is None and info["stats"]["publishes"] == 1
        # the next publisher is welcome; one sending only H.264 is not
        assert (await http.call("POST", "/whip/11", offer2, token))[0] == 201
        await http.call("POST", "/api/mountpoints/11/disable", None, ADMIN)
        status, doc, _ = await http.call("POST", "/whip/11", offer2, token)
        assert (status, doc["error"]["code"]) == (409, "disabled")
        await http.call("POST", "/api/mountpoints/11/enable", None, ADMIN)
        pc3, h264 = await _offer("H264", audio=False)
        pcs.append(pc3)
        status, doc, _ = await http.call("POST", "/whip/11", h264, token)
        assert status == 400 and "no supported codec" in doc["error"]["reason"]
    finally:
        for pc in pcs:
            await pc.close()


async def test_whep_http(http: Http) -> None:
    await http.create(test_source(21, pin="pin21"))
    pin = {**SDP, "Authorization": "Bearer pin21"}
    pcs = []
    try:
        pc, offer = await _offer(send=False)
        pcs.append(pc)
        status, doc, headers = await http.call("POST", "/whep/21", offer, SDP)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        status, doc, _ = await http.call(
            "POST", "/whep/21", offer, {**SDP, "Authorization": "Bearer x"}
        )
        assert (status, doc["error"]["code"]) == (403, "forbidden")
        assert (await http.call("POST", "/whep/22", offer, pin))[0] == 404
        assert (await http.call("POST", "/whep/21", "v=0\r\n", pin))[0] == 400
        assert (await http.call("GET", "/api/mountpoints/21"))[1]["viewers"] == 0  # refused: gone

        status, answer, headers = await http.call("POST", "/whep/21", offer, pin)
        assert status == 201, answer
        location = headers["Location"]
        assert answer.count("a=sendonly") == 2 and "a=candidate:" in answer
        assert (await http.call("GET", "/api/mountpoints/21"))[1]["viewers"] == 1
        assert (await http.call("DELETE", location))[0] == 200
        assert (await http.call("DELETE", location))[0] == 404
        assert (await http.call("GET", "/api/mountpoints/21"))[1]["viewers"] == 0

        audio_only_pc, audio_only = await _offer(video=None, send=False)
        pcs.append(audio_only_pc)
        status, answer, headers = await http.call("POST", "/whep/21", audio_only, pin)
        assert status == 201 and answer.count("a=sendonly") == 1 and "opus" in answer
        status, _, _ = await http.call("DELETE", "/api/mountpoints/21", None, ADMIN)
        assert status == 200  # the player is kicked with it
        assert (await http.call("DELETE", headers["Location"]))[0] == 404
        h264_pc, h264 = await _offer("H264", audio=False, send=False)
        pcs.append(h264_pc)
        await http.create(test_source(23))
        status, doc, _ = await http.call("POST", "/whep/23", h264, SDP)
        assert status == 400 and "no supported codec" in doc["error"]["reason"]
    finally:
        for pc in pcs:
            await pc.close()
