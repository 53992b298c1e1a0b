"""Throws bad input at a running server: garbage datagrams, forged STUN, junk DTLS/RTP/RTCP, bad
signaling frames. Run as a script (often inside a network namespace) while a real client uses
the server, to show the others keep their media.

usage: python chaos.py WS_URL MEDIA_HOST MEDIA_PORT [--seconds N]
Prints one JSON object with what it sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from aioice import stun

OFFER = (Path(__file__).resolve().parent.parent / "data" / "chrome_offer.sdp").read_text()


def binding(username: str, key: bytes | None, fingerprint: bool = True) -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 12345
    msg.attributes["ICE-CONTROLLING"] = random.getrandbits(64)
    if key is not None:
        msg.add_message_integrity(key)
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


async def run(url: str, host: str, port: int, seconds: float) -> dict[str, Any]:
    sent: dict[str, int] = {}
    rng = random.Random(7)

    def count(kind: str) -> None:
        sent[kind] = sent.get(kind, 0) + 1

    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:

        async def req(frame: str) -> dict[str, Any]:
            await ws.send_str(frame)
            while True:
                reply: dict[str, Any] = json.loads((await ws.receive(timeout=10)).data)
                if reply["type"] != "event":
                    return reply

        for junk in (
            "{",
            "[]",
            "null",
            '{"type": 5}',
            '{"type": "offer"}',
            '{"type":"zap","id":1}',
        ):
            assert (await req(junk))["type"] == "error"
            count("bad signaling frames")
        handle = (await req(json.dumps({"type": "attach", "app": "echotest", "id": 1})))["data"][
            "handle"
        ]
        answer = (
            await req(json.dumps({"type": "offer", "handle": handle, "sdp": OFFER, "id": 2}))
        )["data"]["sdp"]
        server_ufrag = next(
            line.split(":", 1)[1] for line in answer.splitlines() if line.startswith("a=ice-ufrag:")
        )

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.sendto(os.urandom(rng.randint(0, 1400)), (host, port))
            count("random datagrams")
            sock.sendto(binding(f"{server_ufrag}:abcd", b"wrong-password"), (host, port))
            count("stun with wrong integrity")
            sock.sendto(binding(f"{server_ufrag}:abcd", None), (host, port))
            count("stun without integrity")
            sock.sendto(binding("nobody:abcd", b"x"), (host, port))
            count("stun for unknown ufrag")
            sock.sendto(binding(f"{server_ufrag}:abcd", b"x")[: rng.randint(1, 40)], (host, port))
            count("truncated stun")
            sock.sendto(bytes([0x16, 0xFE, 0xFD]) + os.urandom(rng.randint(0, 300)), (host, port))
            count("junk dtls")
            sock.sendto(
                bytes([0x80, rng.randint(0, 127)]) + os.urandom(rng.randint(10, 1200)), (host, port)
            )
            count("junk rtp")
            sock.sendto(bytes([0x80, 200]) + os.urandom(rng.randint(6, 100)), (host, port))
            count("junk rtcp")
            sock.sendto(bytes([0x40, 0x00]) + os.urandom(rng.randint(2, 100)), (host, port))
            count("junk turn channel data")
            await asyncio.sleep(0.002)
        sock.close()
        alive = (await req(json.dumps({"type": "keepalive", "id": 3})))["type"] == "ack"
    return {"ok": alive, "sent": sent}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--seconds", type=float, default=4)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.host, args.port, args.seconds))), flush=True)


if __name__ == "__main__":
    main()
