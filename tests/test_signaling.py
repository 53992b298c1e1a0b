"""Bad input on the signaling WebSocket: every kind gets a clear error and the connection lives on."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfu.config import MediaConfig
from sfu.server import HttpSettings, ServerSettings, SfuServer
from sfu.webrtc.server import MediaSettings

CHROME_LIKE_OFFER = (Path(__file__).parent / "data" / "chrome_offer.sdp").read_text()


@pytest.fixture
async def server() -> AsyncIterator[SfuServer]:
    settings = ServerSettings(
        http=HttpSettings(listen=(("127.0.0.1", 0),)),
        media=MediaSettings(
            MediaConfig(listen=(ipaddress.IPv4Address("127.0.0.1"),), port=0, include_loopback=True)
        ),
        max_frame_bytes=4096 * 16,
    )
    srv = SfuServer(settings)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._id = 0

    async def raw(self, text: str) -> dict[str, Any]:
        await self.ws.send_str(text)
        return await self._reply()

    async def _reply(self) -> dict[str, Any]:
        while True:
            msg = await self.ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            frame: dict[str, Any] = json.loads(msg.data)
            if frame["type"] == "event":
                self.events.append(frame)
                continue
            return frame

    async def req(self, **frame: Any) -> dict[str, Any]:
        self._id += 1
        reply = await self.raw(json.dumps({"id": self._id, **frame}))
        assert reply["id"] == self._id
        return reply


@pytest.fixture
async def client(server: SfuServer) -> AsyncIterator[Client]:
    host, port = server.http_addresses[0]
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://{host}:{port}/ws") as ws:
        yield Client(ws)


def _err(reply: dict[str, Any], code: int, *words: str) -> None:
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    for w in words:
        assert w in reply["reason"], reply


async def test_malformed_frames_get_errors_and_the_connection_survives(client: Client) -> None:
    _err(await client.raw("{not json"), 400, "not JSON")
    _err(await client.raw("[1, 2]"), 400, "JSON object")
    _err(await client.raw('"text"'), 400)
    _err(await client.raw("{}"), 401, "'type'")
    _err(await client.req(type=7), 401, "'type' must be a str")
    _err(await client.req(type="fly"), 405, "unknown request type")
    _err(await client.req(type="attach"), 401, "'app'")
    _err(await client.req(type="attach", app="nope"), 406, "echotest")
    await client.ws.send_bytes(b"\x00\x01")
    _err(await client._reply(), 400, "binary")
    assert (await client.req(type="keepalive"))["type"] == "ack"


async def test_out_of_order_and_unknown_handles(client: Client) -> None:
    _err(await client.req(type="offer", handle="zzz", sdp="v=0"), 404, "no handle")
    h = (await client.req(type="attach", app="echotest"))["data"]["handle"]
    _err(await client.req(type="candidate", handle=h, candidate=None), 409, "before")
    _err(await client.req(type="answer", handle=h, sdp=CHROME_LIKE_OFFER), 409)
    _err(await client.req(type="message", handle=h), 401, "'body'")
    _err(await client.req(type="message", handle=h, body={"audio": "yes"}), 401, "audio")
    _err(await client.req(type="message", handle=h, body={"colour": 1}), 401, "colour")
    _err(await client.req(type="candidate", handle=h), 401, "candidate")
    assert (await client.req(type="detach", handle=h))["type"] == "ack"
    _err(await client.req(type="hangup", handle=h), 404)


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        ("", "empty"),
        ("hello", "v=0"),
        ("v=0\r\nm=audio x\r\n", "malformed"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no media"),
        (CHROME_LIKE_OFFER.replace("a=ice-pwd:abcdefghijklmnopqrstuvwx\n", ""), "ice-pwd"),
        (CHROME_LIKE_OFFER.replace("a=fingerprint:sha-256", "a=fingerprint:md5"), "fingerprint"),
        (
            "\n".join(line for line in CHROME_LIKE_OFFER.splitlines() if "fingerprint" not in line),
            "fingerprint",
        ),
        (
            CHROME_LIKE_OFFER.replace("opus/48000/2", "G722/8000").replace(
                "VP8/90000", "H261/90000"
            ),
            "no usable media",
        ),
        (CHROME_LIKE_OFFER.replace("a=rtcp-mux\n", ""), "rtcp-mux"),
    ],
)
async def test_invalid_sdp_is_refused_with_a_reason(client: Client, sdp: str, words: str) -> None:
    h = (await client.req(type="attach", app="echotest"))["data"]["handle"]
    _err(await client.req(type="offer", handle=h, sdp=sdp), 422, words)
    # the handle is still usable afterwards
    reply = await client.req(type="offer", handle=h, sdp=CHROME_LIKE_OFFER)
    assert reply["type"] == "ack", reply


async def test_valid_trickled_offer_is_answered(client: Client, server: SfuServer) -> None:
    h = (await client.req(type="attach", app="echotest"))["data"]["handle"]
    reply = await client.req(type="offer", handle=h, sdp=CHROME_LIKE_OFFER)
    answer = reply["data"]["sdp"]
    assert reply["data"]["type"] == "answer"
    assert "a=setup:active" in answer
    assert "a=rtpmap:111 opus/48000/2" in answer and "a=rtpmap:96 VP8/90000" in answer
    assert "rtx" not in answer and "transport-cc" not in answer
    assert "a=candidate:" not in answer  # withheld: the offer revealed no candidate yet
    # a trickled candidate arrives: the server's early check leaves, then its candidates follow
    port = server.webrtc.local_addresses[0][1]
    cand = {
        "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }
    assert (await client.req(type="candidate", handle=h, candidate=cand))["type"] == "ack"
    assert (await client.req(type="keepalive"))["type"] == "ack"
    trickled = [e["candidate"] for e in client.events if e["event"] == "candidate"]
    assert trickled[-1] is None
    assert any(c and f"127.0.0.1 {port} typ host" in c["candidate"] for c in trickled)
    _err(
        await client.req(type="candidate", handle=h, candidate={"candidate": "candidate:junk"}),
        422,
        "candidate",
    )


async def test_bad_candidate_lines_do_not_break_the_session(client: Client) -> None:
    h = (await client.req(type="attach", app="echotest"))["data"]["handle"]
    await client.req(type="offer", handle=h, sdp=CHROME_LIKE_OFFER)
    for junk in (
        "candidate:",
        "candidate:1 1 udp x 1.2.3.4 5 typ host",
        "candidate:1 1 udp 1 1.2.3.4 99999 typ host",
        "a" * 2000,
    ):
        _err(await client.req(type="candidate", handle=h, candidate={"candidate": junk}), 422)
    assert (await client.req(type="candidate", handle=h, candidate={"candidate": ""}))[
        "type"
    ] == "ack"


async def test_oversized_frame_is_refused(client: Client) -> None:
    await client.ws.send_str(json.dumps({"type": "keepalive", "pad": "x" * 100_000}))
    msg = await client.ws.receive(timeout=5)
    # aiohttp closes the socket with 1009 (message too big) before the handler sees it
    assert msg.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
    )
