"""Scenarios and the plan file every bench process reads (format: ``csrc/plan.h``).

A :class:`Plan` names the server's port, one load-side port per transport, the SRTP keys of
each direction, the publisher streams and the consumers. The runner writes it once per scenario
and profile; the engine-side server, the floor and the load generator all read the same file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sfu.engine.base import SrtpProfile

PLAIN = 0  # plan profile value: RTP without SRTP (the plain floor)
VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000
NACK_CACHE = 512  # packets, for video producers and consumers (as the echo test asks)


@dataclass(frozen=True, slots=True)
class Scenario:
    """``publishers`` each send video and audio; in a room every publisher also receives the
    others, otherwise ``subscribers`` receive-only transports receive every publisher."""

    name: str
    publishers: int
    subscribers: int = 0
    room: bool = False

    @property
    def fanout(self) -> int:
        """Copies out per packet in."""
        return self.publishers - 1 if self.room else self.subscribers

    @property
    def receivers(self) -> int:
        return self.publishers if self.room else self.subscribers

    @property
    def consumers(self) -> int:
        return 2 * self.publishers * self.fanout


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("fanout-10", 1, 10),
        Scenario("fanout-50", 1, 50),
        Scenario("fanout-200", 1, 200),
        Scenario("room-10x10", 10, room=True),
    )
}


@dataclass(frozen=True, slots=True)
class Keys:
    """``up`` protects load -> server (the server's remote keys), ``down`` server -> load."""

    up_key: bytes
    up_salt: bytes
    down_key: bytes
    down_salt: bytes


@dataclass(frozen=True, slots=True)
class PlanTransport:
    tid: int
    port: int
    keys: Keys


@dataclass(frozen=True, slots=True)
class PlanStream:
    tid: int
    ssrc: int
    kind: str  # "video" | "audio"


@dataclass(frozen=True, slots=True)
class PlanConsumer:
    cid: int
    src_tid: int
    src_ssrc: int
    dst_tid: int
    dst_ssrc: int
    kind: str


@dataclass(slots=True)
class Plan:
    profile: int  # PLAIN or an SrtpProfile value
    server: tuple[str, int]
    load_ip: str
    transports: list[PlanTransport] = field(default_factory=list)
    streams: list[PlanStream] = field(default_factory=list)
    consumers: list[PlanConsumer] = field(default_factory=list)

    def dump(self) -> str:
        salt = _salt_len(self.profile)
        lines = [
            "# sfu bench plan",
            f"profile {self.profile}",
            f"server {self.server[0]} {self.server[1]}",
            f"load {self.load_ip}",
        ]
        for t in self.transports:
            k = t.keys
            assert len(k.up_salt) == len(k.down_salt) == salt
            lines.append(
                f"transport {t.tid} {t.port} {k.up_key.hex()} {k.up_salt.hex()} "
                f"{k.down_key.hex()} {k.down_salt.hex()}"
            )
        lines += [f"stream {s.tid} {s.ssrc} {s.kind}" for s in self.streams]
        lines += [
            f"consumer {c.cid} {c.src_tid} {c.src_ssrc} {c.dst_tid} {c.dst_ssrc} {c.kind}"
            for c in self.consumers
        ]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        path.write_text(self.dump())
        return path


def _salt_len(profile: int) -> int:
    return 12 if profile == SrtpProfile.AEAD_AES_128_GCM else 14


def parse_plan(text: str) -> Plan:
    """Read a plan written by :meth:`Plan.dump` (raises ValueError on a bad line)."""
    plan = Plan(profile=-1, server=("", 0), load_ip="")
    for n, raw in enumerate(text.splitlines(), 1):
        f = raw.split("#", 1)[0].split()
        if not f:
            continue
        try:
            if f[0] == "profile":
                plan.profile = int(f[1])
            elif f[0] == "server":
                plan.server = (f[1], int(f[2]))
            elif f[0] == "load":
                plan.load_ip = f[1]
            elif f[0] == "transport":
                keys = Keys(*(bytes.fromhex(x) for x in f[3:7]))
                plan.transports.append(PlanTransport(int(f[1]), int(f[2]), keys))
            elif f[0] == "stream":
                plan.streams.append(PlanStream(int(f[1]), int(f[2]), f[3]))
            elif f[0] == "consumer":
                c = PlanConsumer(int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5]), f[6])
                plan.consumers.append(c)
            else:
                raise ValueError(f[0])
        except (IndexError, ValueError) as exc:
            raise ValueError(f"plan line {n}: {raw!r}") from exc
    return plan


def build_plan(
    scenario: Scenario, profile: int, server: tuple[str, int], load_ip: str, base_port: int
) -> Plan:
    """Transports 1..N (publishers first), fresh random keys, unique SSRCs."""
    salt = _salt_len(profile)

    def keys() -> Keys:
        return Keys(os.urandom(16), os.urandom(salt), os.urandom(16), os.urandom(salt))

    plan = Plan(profile, server, load_ip)
    n_transports = scenario.publishers + (0 if scenario.room else scenario.subscribers)
    for i in range(n_transports):
        plan.transports.append(PlanTransport(i + 1, base_port + i, keys()))
    for p in range(scenario.publishers):
        tid = p + 1
        plan.streams.append(PlanStream(tid, 0x10000 + 2 * tid, "video"))
        plan.streams.append(PlanStream(tid, 0x10000 + 2 * tid + 1, "audio"))
    if scenario.room:
        receivers = [t.tid for t in plan.transports]
    else:
        receivers = [t.tid for t in plan.transports[scenario.publishers :]]
    cid = 0
    for s in plan.streams:
        for dst in receivers:
            if dst == s.tid:
                continue
            cid += 1
            plan.consumers.append(PlanConsumer(cid, s.tid, s.ssrc, dst, 0x1000000 + cid, s.kind))
    return plan
