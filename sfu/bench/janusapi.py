"""A small client of the Janus HTTP API for the watchers bench (asyncio, aiohttp).

One Janus session holds every watcher: each watcher is a handle attached to
``janus.plugin.streaming``. Requests are POSTs to the session or the handle; Janus answers
``success`` (synchronous plugin requests), or ``ack`` and later an ``event`` with the same
transaction. Events come through one long poll (``GET /janus/SESSION?maxev=N``), which also keeps
the session alive; :class:`JanusSession` runs it as a task and routes each event to whoever waits
for its transaction, and the rest (``webrtcup``, ``hangup``, ``media`` ...) to a per-handle list.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import defaultdict
from typing import Any

import aiohttp

__all__ = ["STREAMING", "JanusError", "JanusSession"]

STREAMING = "janus.plugin.streaming"
_POLL_EVENTS = 50


class JanusError(RuntimeError):
    """Janus answered with an error, or not as expected."""


def _transaction() -> str:
    return secrets.token_hex(8)


class JanusSession:
    """One Janus session and its long poll; create with :meth:`create`."""

    def __init__(self, http: aiohttp.ClientSession, url: str, session_id: int) -> None:
        self.http = http
        self.url = url.rstrip("/")
        self.session_id = session_id
        self.notices: dict[int, list[dict[str, Any]]] = defaultdict(list)  # by handle
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self.poll_errors = 0

    @classmethod
    async def create(cls, http: aiohttp.ClientSession, url: str) -> JanusSession:
        reply = await _post(http, url.rstrip("/"), {"janus": "create"})
        session = cls(http, url, int(reply["data"]["id"]))
        session._poller = asyncio.get_running_loop().create_task(session._poll())
        return session

    async def attach(self, plugin: str = STREAMING) -> int:
        """A new handle on ``plugin``."""
        reply = await _post(self.http, self._path(), {"janus": "attach", "plugin": plugin})
        return int(reply["data"]["id"])

    async def request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request: the plugin's data from the ``success`` reply."""
        reply = await _post(self.http, self._path(handle), {"janus": "message", "body": body})
        if reply.get("janus") != "success":
            raise JanusError(f"{body.get('request')}: expected success, got {reply}")
        data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return data

    async def message(
        self,
        handle: int,
        body: dict[str, Any],
        jsep: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """An asynchronous plugin request: the ``event`` it leads to (with its ``jsep``)."""
        transaction = _transaction()
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = waiter
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        try:
            reply = await _post(self.http, self._path(handle), msg, transaction)
            if reply.get("janus") == "event":  # answered at once
                event = reply
            else:
                event = await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiting.pop(transaction, None)
        data = event.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{body.get('request')}: {data['error']}")
        return event

    async def trickle_completed(self, handle: int) -> None:
        """Tell Janus the watcher has no more candidates (they were all in its SDP)."""
        await _post(
            self.http, self._path(handle), {"janus": "trickle", "candidate": {"completed": True}}
        )

    async def close(self) -> None:
        """Stop the long poll and destroy the session (every handle goes with it)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        with contextlib.suppress(aiohttp.ClientError, OSError, JanusError, TimeoutError):
            await _post(self.http, self._path(), {"janus": "destroy"})

    # -- internals -----------------------------------------------------------

    def _path(self, handle: int | None = None) -> str:
        base = f"{self.url}/{self.session_id}"
        return f"{base}/{handle}" if handle is not None else base

    async def _poll(self) -> None:
        while True:
            try:
                async with self.http.get(
                    f"{self._path()}?maxev={_POLL_EVENTS}&rid={secrets.randbits(32)}",
                    timeout=aiohttp.ClientTimeout(total=90),
                ) as r:
                    body = await r.json(content_type=None)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                self.poll_errors += 1
                await asyncio.sleep(0.2)
                continue
            for event in body if isinstance(body, list) else [body]:
                self._route(event)

    def _route(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        waiter = self._waiting.get(str(event.get("transaction", "")))
        if kind == "event" and waiter is not None and not waiter.done():
            waiter.set_result(event)
            return
        sender = event.get("sender")
        if isinstance(sender, int):
            self.notices[sender].append(event)


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    msg: dict[str, Any],
    transaction: str | None = None,
) -> dict[str, Any]:
    msg = {**msg, "transaction": transaction or _transaction()}
    async with http.post(url, json=msg) as r:
        reply: dict[str, Any] = await r.json(content_type=None)
    if reply.get("janus") == "error":
        error = reply.get("error", {})
        raise JanusError(f"{msg['janus']}: {error.get('code')} {error.get('reason')}")
    return reply
