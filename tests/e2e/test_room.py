"""Rooms end to end: the real server, aiortc participants and Chromium pages (docs/rooms.md).

The server runs in its own namespace, the clients in another one joined by a veth; every
participant publishes and decodes what the others publish, through one subscriber
PeerConnection that the server renegotiates as participants come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from sfu.auth.tokens import mint_token
from sfu.config import MediaConfig
from sfu.server import HttpSettings, ServerSettings, SfuServer
from sfu.webrtc.server import MediaSettings
from tests.browser.harness import launch, needs_chromium, wait_for
from tests.support import ROOT, in_ns, link, need_netns, netns, sfu_process

CLIENT = [sys.executable, str(ROOT / "tests" / "clients" / "room_client.py")]
SERVER_IP, CLIENT_IP = "198.51.100.1", "198.51.100.2"
WS = f"ws://{SERVER_IP}:8080/ws"
SECRET = "room-secret-0123456789abcdef-0123456789"


@dataclass
class Lab:
    """The server's namespace running `sfu serve`, and a linked namespace for the clients."""

    clients: str
    server: subprocess.Popen[str]

    def server_log(self) -> str:
        path: Path = self.server.log_path  # type: ignore[attr-defined]
        return path.read_text()

    def check_server_log(self) -> None:
        """Whatever the clients sent, the server logged no traceback (no 500)."""
        log = self.server_log()
        assert "Traceback" not in log and "internal error" not in log, log[-6000:]


@contextlib.contextmanager
def lab(**env: str) -> Iterator[Lab]:
    need_netns()
    with (
        netns("srv") as srv,
        netns("cli") as cli,
        pytest.MonkeyPatch.context() as mp,
    ):
        for key, value in env.items():
            mp.setenv(key, value)
        link(srv, f"{SERVER_IP}/24", cli, f"{CLIENT_IP}/24")
        with sfu_process(srv, "--http-listen", "0.0.0.0:8080", "--media-port", "40000") as proc:
            yield Lab(cli, proc)


class Participant:
    """A room_client.py process: its {"ready": phase} lines as they come, its result at the end."""

    def __init__(self, ns: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            in_ns(ns, [*CLIENT, WS, *args]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_ready(self, phase: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {phase!r} within {timeout} s: {self.out}") from None
            if line is None:
                raise AssertionError(f"exited before {phase!r}: {self.result()}")
            if line.startswith("{") and json.loads(line).get("ready") == phase:
                return

    def release(self) -> None:
        """Close its stdin: a holding client leaves."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def result(self, timeout: float = 60) -> dict[str, Any]:
        self.release()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.05)  # let the reader threads finish
        lines = [line for line in self.out if line.startswith('{"ok"')]
        assert lines, (
            f"no result (exit {self.proc.returncode}):\n{''.join(self.out)}\n"
            + "".join(self.err)[-3000:]
        )
        result: dict[str, Any] = json.loads(lines[-1])
        result["_stderr"] = "".join(self.err)[-3000:]
        return result


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    keep = ("ok", "error", "participant", "frames", "frames_after_leave", "offers", "events")
    return {k: result.get(k) for k in keep} | {"stderr": result.get("_stderr", "")[-1500:]}


# -- aiortc participants ----------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.slow
def test_three_participants_decode_each_other_and_survive_a_leave() -> None:
    with lab() as net:
        stay = ["--room", "r3", "--expect", "2", "--after-leave", "1", "--hold", "--leave"]
        alice = Participant(net.clients, *stay, "--name", "alice")
        bob = Participant(net.clients, *stay, "--name", "bob")
        carol = Participant(net.clients, "--room", "r3", "--expect", "2", "--hold", "--leave")
        for p in (alice, bob, carol):
            p.wait_ready("frames")  # everyone decoded both others
        carol.release()  # carol leaves
        for p in (alice, bob):
            p.wait_ready("after_leave")  # re-offered without carol, still decoding each other
        results = {"carol": carol.result(), "alice": alice.result(), "bob": bob.result()}
        net.check_server_log()
    for name, r in results.items():
        assert r["ok"], (name, _brief(r))
    ids = {name: r["participant"] for name, r in results.items()}
    for name, r in results.items():
        others = {ids[n] for n in ids if n != name}
        assert set(r["frames"]) >= others, (name, _brief(r))
        for pid in others:
            assert r["frames"][pid]["video"] >= 30, (name, pid, _brief(r))
            assert r["frames"][pid]["audio"] >= 30, (name, pid, _brief(r))
        assert r["leave"] == {"result": "ok"}
    for name, peer in (("alice", "bob"), ("bob", "alice")):
        r = results[name]
        assert r["left"][0] == ids["carol"], _brief(r)
        assert r["frames_after_leave"][ids[peer]]["video"] >= 30, _brief(r)
        assert ids["carol"] not in r["frames_after_leave"], _brief(r)
        assert r["offers"] >= 2
        # after the re-offer carol's two sections are still there, inactive
        streams = r["streams_after_leave"]
        assert len(streams) == 4, streams
        assert {s["participant"] for s in streams if s["active"]} == {ids[peer]}, streams
        assert sum(not s["active"] for s in streams) == 2, streams
        stats = r["server_stats"]
        assert stats["role"] == "subscriber" and stats["offers"] >= 2
        assert {c["participant"] for c in stats["consumers"]} == {ids[peer]}
        media = stats["peer"]["media"]
        assert media["srtp_errors"] == 0 and media["packets_out"] > 0
        assert r["publisher_stats"]["rtcp"]["plis_sent"] >= 1


@pytest.mark.netns
@pytest.mark.slow
def test_tokens_refuse_with_the_reason_and_admit_with_permissions() -> None:
    def token(identity: str, room: str = "t", secret: str = SECRET) -> str:
        return mint_token(secret, identity=identity, room=room, ttl=600)

    with lab(SFU_ROOMS_TOKEN_SECRET=SECRET) as net:
        common = ["--room", "t", "--hold"]
        other_secret = "not-the-secret-0123456789abcdef-xyz"
        refused = {
            "missing": Participant(net.clients, *common),
            "wrong secret": Participant(
                net.clients, *common, "--token", token("eve", secret=other_secret)
            ),
            "other room": Participant(net.clients, *common, "--token", token("eve", room="o")),
        }
        alice = Participant(net.clients, *common, "--name", "alice", "--token", token("alice"))
        bob = Participant(net.clients, *common, "--name", "bob", "--token", token("bob"))
        alice.wait_ready("frames")
        bob.wait_ready("frames")
        results = {name: p.result() for name, p in refused.items()}
        admitted = [alice.result(), bob.result()]
        net.check_server_log()
    reasons = {name: r["error"] for name, r in results.items()}
    assert all(not r["ok"] for r in results.values()), reasons
    assert reasons["missing"] == {"code": 403, "reason": "a token is required"}
    assert reasons["wrong secret"]["code"] == 403
    assert "signature is wrong" in reasons["wrong secret"]["reason"]
    assert reasons["other room"] == {"code": 403, "reason": "the token is for room 'o'"}
    for r in admitted:
        assert r["ok"], _brief(r)
        assert r["join"]["participant"]["identity"] in ("alice", "bob")
        (frames,) = r["frames"].values()
        assert frames["video"] >= 30 and frames["audio"] >= 30


@pytest.mark.netns
@pytest.mark.slow
def test_nacks_under_loss_are_served_from_the_consumer_cache() -> None:
    with lab() as net:
        # 5 % of what reaches the clients' namespace is lost (media and RTCP; signaling is TCP)
        rule = ["-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.05"]
        subprocess.run(
            in_ns(net.clients, ["iptables", "-I", "INPUT", *rule, "-j", "DROP"]), check=True
        )
        common = ["--room", "lossy", "--frames", "60", "--hold"]
        alice = Participant(net.clients, *common, "--name", "alice")
        bob = Participant(net.clients, *common, "--name", "bob")
        alice.wait_ready("frames")
        bob.wait_ready("frames")
        results = [alice.result(), bob.result()]
        net.check_server_log()
    for r in results:
        assert r["ok"], _brief(r)
        rtcp = r["server_stats"]["rtcp"]
        assert rtcp["nacks_in"] > 0 and rtcp["retransmitted"] > 0, rtcp


# -- the WebSocket: malformed room requests get 4xx, never 500 -------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[SfuServer]:
    settings = ServerSettings(
        http=HttpSettings(listen=(("127.0.0.1", 0),)),
        media=MediaSettings(
            MediaConfig(listen=(ipaddress.IPv4Address("127.0.0.1"),), port=0, include_loopback=True)
        ),
    )
    srv = SfuServer(settings)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def test_malformed_room_requests_get_4xx_and_the_connection_lives(server: SfuServer) -> None:
    host, port = server.http_addresses[0]
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://{host}:{port}/ws") as ws:
        ids = iter(range(1, 1000))

        async def req(**frame: Any) -> dict[str, Any]:
            rid = next(ids)
            await ws.send_str(json.dumps({"id": rid, **frame}))
            while True:
                reply: dict[str, Any] = json.loads((await ws.receive(timeout=10)).data)
                if reply.get("id") == rid:
                    return reply

        handle = (await req(type="attach", app="room"))["data"]["handle"]
        bodies: list[Any] = [
            {},
            {"request": None},
            {"request": "join"},
            {"request": "join", "room": {"a": 1}},
            {"request": "join", "room": ""},
            {"request": "join", "room": "x" * 10_000},
            {"request": "join", "room": "r", "display": 12},
            {"request": "join", "room": "r", "token": ["t"]},
            {"request": "join", "room": "r", "extra": True},
            {"request": "subscribe", "room": "r", "participant": "ghost"},
            {"request": "subscribe", "participant": None, "room": "r"},
            {"request": "unpublish"},
            {"request": "leave"},
            {"request": "\u0000"},
            {"request": ["join"]},
        ]
        codes = []
        for body in bodies:
            reply = await req(type="message", handle=handle, body=body)
            assert reply["type"] == "error", (body, reply)
            assert reply["reason"], reply
            codes.append(reply["code"])
        assert all(400 <= c < 500 for c in codes), list(zip(bodies, codes, strict=True))
        assert codes[:3] == [401, 401, 401]
        for frame in (
            {"type": "answer", "handle": handle, "sdp": "v=0"},
            {"type": "offer", "handle": handle, "sdp": "garbage"},
            {"type": "candidate", "handle": handle, "candidate": None},
        ):
            reply = await req(**frame)
            assert reply["type"] == "error" and reply["code"] == 409, reply
        # the handle still works: join, then a broken offer is a 422
        joined = await req(type="message", handle=handle, body={"request": "join", "room": "r"})
        assert joined["type"] == "ack" and joined["data"]["participants"] == []
        reply = await req(type="offer", handle=handle, sdp="v=0\r\nm=audio")
        assert reply["type"] == "error" and reply["code"] == 422, reply
        stats = await http.get(f"http://{host}:{port}/api/sessions/{handle}/stats")
        assert (await stats.json())["role"] == "publisher"


# -- Chromium -------------------------------------------------------------------------------------


def room_url(base: str, **query: str) -> str:
    return f"{base}/room.html?" + urlencode({"autostart": "1", "room": "web", **query})


@pytest.mark.browser
@pytest.mark.netns
@pytest.mark.slow
@needs_chromium()
async def test_two_chromiums_publish_and_decode_each_other() -> None:
    base = f"http://{SERVER_IP}:8080"
    decoded = """async (who) => Object.values((await window.sfuDemo.stats()).remote)
        .some(r => r.display === who && r.framesDecoded > 30)"""
    with lab() as net:
        # two browsers, launched side by side
        one, two = await asyncio.gather(*(launch(net.clients, base) for _ in range(2)))
        async with one, two:
            alice = await one.open(room_url(base, name="alice"))
            await wait_for(alice, "window.sfuDemo.state === 'joined'", timeout=15)
            bob = await two.open(room_url(base, name="bob"))
            await wait_for(bob, "window.sfuDemo.state === 'joined'", timeout=15)
            await wait_for(bob, f"() => ({decoded})('alice')", timeout=25)
            await wait_for(alice, f"() => ({decoded})('bob')", timeout=25)
            stats = await bob.evaluate("window.sfuDemo.stats()")
            (remote,) = stats["remote"].values()
            assert remote["display"] == "alice" and remote["framesDecoded"] > 30
            assert sorted(remote["kinds"]) == ["audio", "video"]
            # REMB: each Chromium's estimate, per publisher the minimum, back to the publisher
            await wait_for(bob, REMB_RELAYED, timeout=10)
            captions = await bob.locator("figure.remote figcaption").all_text_contents()
            assert captions == ["alice"]
            # alice subscribed before bob published: her PeerConnection was renegotiated
            assert (await alice.evaluate("window.sfuDemo.stats()"))["offers"] >= 1
            # alice leaves: bob is re-offered without her and her video goes away
            await alice.evaluate("window.sfuDemo.stop()")
            await wait_for(bob, "document.querySelectorAll('figure.remote').length === 0", 10)
            stats = await bob.evaluate("window.sfuDemo.stats()")
            assert stats["streams"] and not any(s["active"] for s in stats["streams"])
            assert stats["state"] == "joined"
            assert one.errors == [] and two.errors == []
        net.check_server_log()


# Every Chromium sent REMB as a subscriber, and every publisher got the minimum back (read from
# the server's stats API by the page itself: same origin, no subprocess in the namespace).
REMB_RELAYED = """async () => {
    const get = async (path) => (await fetch(path)).json();
    const stats = await Promise.all((await get("/api/sessions")).sessions
        .map((s) => get(`/api/sessions/${s.handle}/stats`)));
    const subs = stats.filter((s) => s.role === "subscriber");
    const pubs = stats.filter((s) => s.role === "publisher");
    return subs.length === 2 && pubs.length === 2
        && subs.every((s) => s.rtcp.rembs_in > 0)
        && pubs.every((p) => p.rtcp.rembs_out > 0 && p.remb_minimum > 0);
}"""
