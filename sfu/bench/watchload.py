"""The watchers bench's load client: many watchers of one mountpoint, in one process.

``python -m sfu.bench.watchload --url URL --key KEY --bind IP --rx WATCHRX`` runs in the load
namespace against ``sfu serve`` (WHEP: each watcher offers); with ``--janus ID`` instead, the URL
is a Janus API root and the watchers watch Janus's streaming mountpoint ID (one Janus session,
one handle per watcher, Janus offers: :mod:`sfu.bench.janusapi`).
Each watcher has its own UDP socket and a :class:`~sfu.bench.watcher.WatcherCore`
(ICE + DTLS on the project's sans-IO cores); once DTLS is done its socket and SRTP keys go to
the C receiver (``csrc/watchrx.c``, started here, spoken to over a SOCK_SEQPACKET pair), so
Python never touches the media. STUN that reaches the receiver comes back here and goes through
the watcher's ICE agent: consent freshness keeps working both ways.

Commands on stdin, one JSON line answered for each on stdout:

* ``create`` -- wait for the server, create an ``rtp`` mountpoint (VP8 + Opus) with the admin
  key: ``{"mountpoint": id, "ports": [video, audio]}`` (Janus: open the session and check that
  the configured mountpoint is listed; ``ports`` is empty, the runner wrote them);
* ``connect N`` -- connect N watchers (``--concurrency`` at a time), with
  ``{"event": "progress", ...}`` lines on the way and ``{"event": "connected", ...}`` at the end;
* ``reset`` -- start a measurement window in the receiver; ``report`` -- the receiver's figures
  for the window, with the server's ``/api/stats`` and the mountpoint's ingest counters (for
  sfu; for Janus the hangups it announced);
* ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sfu.bench.janusapi import JanusError, JanusSession
from sfu.bench.watcher import WatcherConnected, WatcherCore, WatcherFailed, WatcherMode
from sfu.dtls.certificate import Certificate
from sfu.rtp.srtp import SrtpProfile

__all__ = ["MOUNTPOINT_BODY", "main"]

MOUNTPOINT_BODY: dict[str, Any] = {
    "name": "sfu bench watchers",
    "media": [
        {"mid": "v", "codec": "VP8", "source": {"type": "rtp", "port": 0}},
        {"mid": "a", "codec": "opus", "source": {"type": "rtp", "port": 0}},
    ],
}
CONNECT_TIMEOUT = 20.0
_INFO_SKIP = ("plugins", "transports", "events", "loggers", "transaction", "janus", "log-path")
RCVBUF = 1 << 20


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


@dataclass(eq=False)
class _Watcher:
    """One watcher: its socket, its core, its timer; ``rx_index`` once handed off."""

    core: WatcherCore
    sock: socket.socket
    started_ns: int
    done: asyncio.Future[WatcherConnected | WatcherFailed]
    timer: asyncio.TimerHandle | None = None
    rx_index: int | None = None
    connected_ns: int = 0
    resource: str | None = None


@dataclass
class _Counts:
    connected: int = 0
    failed: int = 0
    connect_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    profiles: dict[str, int] = field(default_factory=dict)


class LoadClient:
    """The watchers and the receiver; see the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {args.key}"}
        self.loop = asyncio.get_running_loop()
        self.certificate = Certificate.generate()
        self.watchers: list[_Watcher] = []
        self.handed: list[_Watcher] = []  # by receiver index
        self.mountpoint: int | None = None
        self.janus_id: int | None = args.janus
        self.janus: JanusSession | None = None
        self.profiles = tuple(SrtpProfile[p] for p in args.profile) if args.profile else None
        self._pending_rx: asyncio.Future[str] | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ctl = ours
        self.rx = subprocess.Popen(
            [args.rx, str(theirs.fileno())], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL
        )
        theirs.close()
        self.ctl.setblocking(False)
        self.loop.add_reader(self.ctl.fileno(), self._on_rx_message)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(4, args.concurrency) + 2),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def close(self) -> None:
        for w in self.watchers:
            if w.timer is not None:
                w.timer.cancel()
            w.core.close()
            w.sock.close()
        if self.janus is not None:
            await self.janus.close()
        self.loop.remove_reader(self.ctl.fileno())
        try:
            self.ctl.send(b"quit")
        except OSError:
            pass
        self.ctl.close()
        try:
            self.rx.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.rx.kill()
            self.rx.wait()
        await self.http.close()

    # -- commands ------------------------------------------------------------

    async def command(self, line: str) -> dict[str, Any] | None:
        words = line.split()
        if not words:
            return None
        if words[0] == "create":
            return await self.create()
        if words[0] == "connect":
            return await self.connect(int(words[1]))
        if words[0] == "reset":
            await self._rx_request(b"reset")
            return {"reset": True, "server": await self._server_stats()}
        if words[0] == "report":
            return await self.report()
        return {"error": f"unknown command {line.strip()!r}"}

    async def create(self) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        health = f"{self.url}/info" if self.janus_id is not None else f"{self.url}/healthz"
        while True:
            try:
                async with self.http.get(health) as r:
                    if r.status == 200:
                        break
            except (aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                return {"error": f"the server at {self.url} did not come up in 60 s"}
            await asyncio.sleep(0.2)
        if self.janus_id is not None:
            return await self._janus_open(self.janus_id)
        async with self.http.post(
            f"{self.url}/api/mountpoints", json=MOUNTPOINT_BODY, headers=self.headers
        ) as r:
            body = await r.json()
            if r.status != 201:
                return {"error": f"create: HTTP {r.status}: {body}"}
        self.mountpoint = int(body["id"])
        ports = [int(m["source"]["port"]) for m in body["media"]]
        return {"mountpoint": self.mountpoint, "ports": ports, "state": body.get("state")}

    async def _janus_open(self, mountpoint: int) -> dict[str, Any]:
        self.janus = await JanusSession.create(self.http, self.url)
        handle = await self.janus.attach()
        listed = await self.janus.request(handle, {"request": "list"})
        ids = [int(m["id"]) for m in listed.get("list", [])]
        if mountpoint not in ids:
            return {"error": f"Janus has no mountpoint {mountpoint} (it lists {ids})"}
        async with self.http.get(f"{self.url}/info") as r:
            info = await r.json(content_type=None)
        keep = {k: v for k, v in info.items() if k not in _INFO_SKIP}
        return {"mountpoint": mountpoint, "ports": [], "info": keep}

    async def connect(self, n: int) -> dict[str, Any]:
        counts = _Counts()
        sem = asyncio.Semaphore(self.args.concurrency)
        last = [0.0]

        def progress(final: bool = False) -> None:
            now = time.monotonic()
            if final or now - last[0] >= 0.5:
                last[0] = now
                _emit(
                    {
                        "event": "progress",
                        "connected": counts.connected,
                        "failed": counts.failed,
                        "total": n,
                    }
                )

        async def one() -> None:
            async with sem:
                outcome = await self._connect_one()
            if isinstance(outcome, str):
                counts.failed += 1
                if len(counts.errors) < 5:
                    counts.errors.append(outcome)
            else:
                counts.connected += 1
                counts.connect_ms.append(outcome[0])
                counts.profiles[outcome[1]] = counts.profiles.get(outcome[1], 0) + 1
            progress()

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        progress(final=True)
        return {
            "event": "connected",
            "connected": counts.connected,
            "failed": counts.failed,
            "seconds": time.monotonic() - started,
            "connect_ms": counts.connect_ms,
            "errors": counts.errors,
            "profiles": counts.profiles,
        }

    async def report(self) -> dict[str, Any]:
        text = await self._rx_request(b"report")
        rx: dict[str, Any] = json.loads(text.split(" ", 1)[1])
        firsts = rx.pop("first_ns")
        rx["first_media_ms"] = [
            (f - w.started_ns) / 1e6 for f, w in zip(firsts, self.handed, strict=False) if f
        ]
        rx["consent_alive"] = sum(1 for w in self.handed if w.core.state.value == "connected")
        out: dict[str, Any] = {"rx": rx, "server": await self._server_stats()}
        if self.janus is not None:
            notices = [e for events in self.janus.notices.values() for e in events]
            out["hangups"] = sum(1 for e in notices if e.get("janus") == "hangup")
            out["poll_errors"] = self.janus.poll_errors
        elif self.mountpoint is not None:
            async with self.http.get(
                f"{self.url}/api/mountpoints/{self.mountpoint}", headers=self.headers
            ) as r:
                info = await r.json()
            out["viewers"] = info.get("viewers")
            out["ingest"] = info.get("stats", {}).get("media", [])
        return out

    # -- one watcher ---------------------------------------------------------

    async def _connect_one(self) -> tuple[float, str] | str:
        """Connect one watcher: (connect ms, SRTP profile) or why it failed."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((self.args.bind, 0))
        sock.setblocking(False)
        kwargs: dict[str, Any] = {"profiles": self.profiles} if self.profiles else {}
        if self.janus is not None:
            kwargs["mode"] = WatcherMode.ANSWER
        core = WatcherCore(self.certificate, sock.getsockname(), **kwargs)
        w = _Watcher(core, sock, time.monotonic_ns(), self.loop.create_future())
        self.watchers.append(w)
        self.loop.add_reader(sock.fileno(), self._on_datagram, w)
        try:
            if self.janus is not None:
                await self._signal_janus(self.janus, w)
            else:
                await self._signal_whep(w)
            outcome = await asyncio.wait_for(asyncio.shield(w.done), CONNECT_TIMEOUT)
        except (
            aiohttp.ClientError,
            OSError,
            RuntimeError,
            TimeoutError,
            KeyError,
            ValueError,
        ) as exc:
            self.loop.remove_reader(sock.fileno())
            core.close()
            return f"{type(exc).__name__}: {exc}"
        if isinstance(outcome, WatcherFailed):
            self.loop.remove_reader(sock.fileno())
            return outcome.reason
        self._hand_off(w, outcome)
        return (w.connected_ns - w.started_ns) / 1e6, outcome.keys.profile.name

    async def _signal_whep(self, w: _Watcher) -> None:
        """POST the watcher's offer to /whep/{id}, apply the answer."""
        async with self.http.post(
            f"{self.url}/whep/{self.mountpoint}",
            data=w.core.offer(),
            headers={"Content-Type": "application/sdp"},
        ) as r:
            answer = await r.text()
            if r.status != 201:
                raise RuntimeError(f"WHEP: HTTP {r.status}: {answer[:200]}")
            w.resource = r.headers.get("Location")
        w.core.accept_answer(answer, time.monotonic())
        self._service(w)

    async def _signal_janus(self, janus: JanusSession, w: _Watcher) -> None:
        """Attach a handle, ``watch`` (Janus offers), answer with ``start``, end trickling.
        JanusError is a RuntimeError: the caller counts it as a failed watcher."""
        assert self.janus_id is not None
        handle = await janus.attach()
        w.resource = str(handle)
        event = await janus.message(handle, {"request": "watch", "id": self.janus_id})
        offer = event.get("jsep", {})
        if offer.get("type") != "offer":
            raise JanusError(f"watch: no offer in {event}")
        answer = w.core.accept_offer(str(offer["sdp"]), time.monotonic())
        self._service(w)
        if answer is None:
            return  # the core failed: w.done carries why
        await janus.message(handle, {"request": "start"}, {"type": "answer", "sdp": answer})
        await janus.trickle_completed(handle)

    def _hand_off(self, w: _Watcher, connected: WatcherConnected) -> None:
        """The socket and the keys that decrypt the server's packets go to the receiver."""
        self.loop.remove_reader(w.sock.fileno())
        keys = connected.keys
        w.rx_index = len(self.handed)
        msg = (
            f"add {w.rx_index} {int(keys.profile)} {keys.remote_key.hex()} {keys.remote_salt.hex()}"
        )
        socket.send_fds(self.ctl, [msg.encode()], [w.sock.fileno()])
        self.handed.append(w)

    def _on_datagram(self, w: _Watcher) -> None:
        for _ in range(64):
            try:
                data, addr = w.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            w.core.receive_datagram(data, addr, time.monotonic())
        self._service(w)

    def _service(self, w: _Watcher) -> None:
        """Send what the core has, pass its events on, re-arm its timer."""
        now = time.monotonic()
        for addr, data in w.core.datagrams_to_send(now):
            try:
                w.sock.sendto(data, addr)
            except OSError:
                pass
        while (event := w.core.next_event()) is not None:
            if isinstance(event, WatcherConnected):
                w.connected_ns = time.monotonic_ns()
            if not w.done.done():
                w.done.set_result(event)
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        at = w.core.get_timer()
        if at is not None:
            w.timer = self.loop.call_at(max(at, now), self._on_timer, w)

    def _on_timer(self, w: _Watcher) -> None:
        w.timer = None
        w.core.handle_timer(time.monotonic())
        self._service(w)

    # -- the receiver --------------------------------------------------------

    def _on_rx_message(self) -> None:
        while True:
            try:
                data = self.ctl.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self.loop.remove_reader(self.ctl.fileno())
                return
            text = data.decode()
            if text.startswith("stun "):
                _, idx, ip, port, hexdata = text.split(" ", 4)
                w = self.handed[int(idx)]
                w.core.receive_datagram(bytes.fromhex(hexdata), (ip, int(port)), time.monotonic())
                self._service(w)
            elif self._pending_rx is not None and not self._pending_rx.done():
                self._pending_rx.set_result(text)

    async def _rx_request(self, msg: bytes) -> str:
        self._pending_rx = self.loop.create_future()
        self.ctl.send(msg)
        return await asyncio.wait_for(self._pending_rx, 10)

    async def _server_stats(self) -> dict[str, Any]:
        if self.janus_id is not None:
            return {}
        async with self.http.get(f"{self.url}/api/stats") as r:
            stats: dict[str, Any] = await r.json()
        return stats


async def _serve(args: argparse.Namespace) -> int:
    client = LoadClient(args)
    _emit({"ready": True, "pid": os.getpid(), "rx_pid": client.rx.pid})
    try:
        while True:
            line = await client.loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            try:
                reply = await client.command(line)
            except Exception as exc:  # reported to the runner, which fails the step
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            if reply is not None:
                _emit(reply)
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfu.bench.watchload")
    parser.add_argument("--url", required=True, help="the server, http://HOST:PORT")
    parser.add_argument("--key", default="", help="the streaming admin key (sfu)")
    parser.add_argument(
        "--janus", type=int, metavar="ID", help="watch Janus's streaming mountpoint ID at --url"
    )
    parser.add_argument("--bind", required=True, help="local address of the watchers' sockets")
    parser.add_argument("--rx", required=True, help="the watchrx binary")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument(
        "--profile", action="append", choices=[p.name for p in SrtpProfile], help="offer only"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(args))
    return uvloop.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
