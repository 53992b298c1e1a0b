"""The engine side of ``sfu bench``: an engine configured from a plan, driven over stdin/stdout.

Run as ``python -m sfu.bench.server PLAN [--engine auto|python|cython] [--defer-consumers]``
inside the server namespace. It opens the plan's UDP port through the engine and sets up every
transport directly through the :class:`~sfu.engine.base.Engine` interface (``bind``,
``set_destination``, ``set_srtp`` with the plan's keys: no ICE or DTLS), then the producers and
consumers. It prints one JSON line ``{"ready": true, ...}`` and answers commands, one JSON line
each: ``stats`` (engine counters), ``errors`` (summed transport counters), ``consumers`` (add the
consumers held back by ``--defer-consumers``; ``subscribers N``: those of the next N subscribers),
``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from sfu.bench.plan import AUDIO_CLOCK, NACK_CACHE, PLAIN, VIDEO_CLOCK, Plan, parse_plan
from sfu.engine.base import (
    ConsumerSpec,
    ControlPacket,
    Engine,
    ProducerSpec,
    SrtpParameters,
    SrtpProfile,
)

ENGINES = ("auto", "python", "cython")


def cython_available() -> bool:
    """Whether the Cython engine module imports (it is built)."""
    try:
        importlib.import_module("sfu.engine.cengine")
    except ImportError:
        return False
    return True


def make_engine(name: str) -> Engine:
    """``python``: the reference engine; ``cython``: the compiled one; ``auto``: compiled if built."""
    if name in ("cython", "auto"):
        try:
            module = importlib.import_module("sfu.engine.cengine")
        except ImportError:
            if name == "cython":
                raise
        else:
            engine: Engine = module.CEngine()
            return engine
    from sfu.engine.pyengine import PyEngine

    return PyEngine()


def engine_name(engine: Engine) -> str:
    return str(getattr(engine, "name", type(engine).__name__))


def _clock(kind: str) -> int:
    return VIDEO_CLOCK if kind == "video" else AUDIO_CLOCK


def _cache(kind: str) -> int:
    return NACK_CACHE if kind == "video" else 0


class BenchServer:
    """An engine set up from a plan."""

    def __init__(self, engine: Engine, plan: Plan) -> None:
        if plan.profile == PLAIN:
            raise ValueError("the engine needs an SRTP profile (plain RTP is for the floor)")
        self.engine = engine
        self.plan = plan
        self.control_packets = 0
        self._pending: list[ConsumerSpec] = []

    def configure(self, defer_consumers: bool) -> None:
        plan, engine = self.plan, self.engine
        sock = engine.open_socket(*plan.server)
        profile = SrtpProfile(plan.profile)
        for t in plan.transports:
            addr = (plan.load_ip, t.port)
            engine.bind(t.tid, sock.socket_id, addr)
            engine.set_destination(t.tid, sock.socket_id, addr)
            k = t.keys
            engine.set_srtp(
                t.tid, SrtpParameters(profile, k.down_key, k.down_salt, k.up_key, k.up_salt)
            )
        for s in plan.streams:
            engine.add_producer(
                ProducerSpec(s.tid, s.ssrc, s.kind, _clock(s.kind), cache_size=_cache(s.kind))
            )
        specs = [
            ConsumerSpec(
                consumer_id=c.cid,
                src_transport=c.src_tid,
                src_ssrc=c.src_ssrc,
                dst_transport=c.dst_tid,
                dst_ssrc=c.dst_ssrc,
                clock_rate=_clock(c.kind),
                cache_size=_cache(c.kind),
            )
            for c in plan.consumers
        ]
        if defer_consumers:
            self._pending = specs
        else:
            for spec in specs:
                engine.add_consumer(spec)

    def add_deferred(self, subscribers: int | None = None) -> int:
        """Add the held-back consumers of the next ``subscribers`` destination transports
        (all of them when None); returns how many consumers were added."""
        dsts = list(dict.fromkeys(spec.dst_transport for spec in self._pending))
        chosen = set(dsts if subscribers is None else dsts[:subscribers])
        now = [spec for spec in self._pending if spec.dst_transport in chosen]
        self._pending = [spec for spec in self._pending if spec.dst_transport not in chosen]
        for spec in now:
            self.engine.add_consumer(spec)
        return len(now)

    def deliver(self, batch: list[ControlPacket]) -> None:
        self.control_packets += len(batch)

    def command(self, line: str) -> dict[str, Any]:
        cmd = line.strip()
        if cmd == "stats":
            s = self.engine.stats()
            return {
                "in": s.datagrams_in,
                "out": s.datagrams_out,
                "dropped": s.dropped_unknown,
                "control": s.control_delivered,
            }
        if cmd == "errors":
            totals = {"srtp_errors": 0, "unrouted": 0, "packets_in": 0, "packets_out": 0}
            for t in self.plan.transports:
                ts = self.engine.transport_stats(t.tid)
                if ts is not None:
                    totals["srtp_errors"] += ts.srtp_errors
                    totals["unrouted"] += ts.unrouted
                    totals["packets_in"] += ts.packets_in
                    totals["packets_out"] += ts.packets_out
            return totals
        if cmd == "consumers":
            return {"consumers": self.add_deferred()}
        if cmd.startswith("subscribers "):
            return {"consumers": self.add_deferred(int(cmd.split()[1]))}
        return {"error": f"unknown command {cmd!r}"}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(plan_path: Path, engine_choice: str, defer_consumers: bool) -> int:
    plan = parse_plan(plan_path.read_text())
    engine = make_engine(engine_choice)
    server = BenchServer(engine, plan)
    server.configure(defer_consumers)
    engine.start(server.deliver)
    loop = asyncio.get_running_loop()
    _emit(
        {
            "ready": True,
            "engine": engine_name(engine),
            "pid": os.getpid(),
            "consumers": 0 if defer_consumers else len(plan.consumers),
        }
    )
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            _emit(server.command(line))
    finally:
        engine.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfu.bench.server")
    parser.add_argument("plan", type=Path)
    parser.add_argument("--engine", choices=ENGINES, default="auto")
    parser.add_argument("--defer-consumers", action="store_true")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args.plan, args.engine, args.defer_consumers))
    return uvloop.run(serve(args.plan, args.engine, args.defer_consumers))


if __name__ == "__main__":
    sys.exit(main())
