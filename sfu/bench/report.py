"""Results of ``sfu bench``: trials, per-target figures, engine/floor ratios, the table and JSON."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

LOSS_LIMIT = 0.001  # "the highest output rate with under 0.1% loss"
TARGET_CPU_RATIO = 1.3
TARGET_P99_US = 2000.0
TARGET_BYTES_PER_SUBSCRIBER = 64 * 1024


@dataclass(slots=True)
class Trial:
    """One run of the load at a fixed rate, as the load generator and /proc saw it."""

    video_pps: float  # per publisher (audio: 50 pps per publisher on top)
    seconds: float
    sent: int  # packets the publishers sent
    expected: int  # copies the subscribers should get
    received_on_time: int  # by the end of the trial + grace
    received: int  # after draining
    gaps: int
    late: int
    auth_failures: int
    replayed: int
    unknown: int  # datagrams with an SSRC the subscriber did not expect
    bad_payload: int  # decrypted fine but not our payload
    send_errors: int
    behind_ticks: int
    loadgen_cpu_s: float
    samples: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    server_cpu_s: float = 0.0
    server_out: int = 0  # datagrams the server sent (its own counter)
    drops_server: int = 0  # UDP receive-buffer drops in the server namespace
    drops_load: int = 0  # same in the load namespace (subscriber sockets)
    machine_busy_s: float = 0.0  # CPU time of the whole machine (every process, softirqs)
    wall_s: float = 0.0  # the interval the CPU times cover (trial, grace and drain)

    @property
    def loss(self) -> float:
        if self.expected <= 0:
            return 0.0
        return max(0.0, 1.0 - self.received_on_time / self.expected)

    @property
    def passed(self) -> bool:
        return self.expected > 0 and self.loss < LOSS_LIMIT

    @property
    def offered_out_pps(self) -> float:
        return self.expected / self.seconds if self.seconds > 0 else 0.0

    @property
    def out_pps(self) -> float:
        return self.server_out / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_pkt(self) -> float:
        return self.server_cpu_s / self.server_out * 1e6 if self.server_out > 0 else 0.0

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def loadgen_cores(self) -> float:
        return self.loadgen_cpu_s / self.seconds if self.seconds > 0 else 0.0

    @property
    def other_cores(self) -> float:
        """Busy cores not accounted to the server or the load generator: kernel threads
        (ksoftirqd), the runner, and anything else running on the machine (noise)."""
        if self.wall_s <= 0:
            return 0.0
        other = self.machine_busy_s - self.server_cpu_s - self.loadgen_cpu_s
        return max(0.0, other / self.wall_s)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            loss=self.loss,
            passed=self.passed,
            offered_out_pps=self.offered_out_pps,
            out_pps=self.out_pps,
            cpu_us_per_pkt=self.cpu_us_per_pkt,
            server_cores=self.server_cores,
            loadgen_cores=self.loadgen_cores,
            other_cores=self.other_cores,
        )
        return out

    @classmethod
    def from_loadgen(cls, reply: dict[str, Any]) -> Trial:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in reply.items() if k in names})


@dataclass(slots=True)
class TargetResult:
    """One server (engine, floor, plain floor) under one scenario and profile."""

    scenario: str
    profile: str  # SRTP profile name, or "plain"
    target: str  # "engine" | "floor"
    server: str  # engine name ("cython", "python") or "floor"
    publishers: int
    receivers: int
    consumers: int
    fanout: int
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None  # the highest passing trial of the search
    half: Trial | None = None  # at half of best's rate: latency
    ref_trials: list[Trial] = field(default_factory=list)  # at the rate shared with the engine
    server_counters: dict[str, int] = field(default_factory=dict)  # srtp_errors, unrouted, ...
    limit: str = ""  # what limited the search: "server", "load", "budget", "none"
    error: str = ""

    @property
    def ref(self) -> Trial | None:
        """The median (by CPU per packet) of the reference trials."""
        trials = sorted(self.ref_trials, key=lambda t: t.cpu_us_per_pkt)
        return trials[(len(trials) - 1) // 2] if trials else None

    @property
    def latency_trials(self) -> list[Trial]:
        """Trials at the reference rate (the engine's half maximum): the half-rate trial when
        it ran at that rate, and the alternating reference trials."""
        trials = list(self.ref_trials)
        if self.half is not None and all(self.half is not t for t in trials):
            if not trials or abs(self.half.video_pps - trials[0].video_pps) < 1e-3:
                trials.insert(0, self.half)
        return trials or ([self.half] if self.half else [])

    @property
    def p50_us(self) -> float | None:
        """Median over :attr:`latency_trials` of each trial's p50 one-way delay."""
        values = [t.p50_us for t in self.latency_trials if t.samples]
        return statistics.median(values) if values else None

    @property
    def p99_us(self) -> float | None:
        """Median over :attr:`latency_trials` of each trial's p99: one trial disturbed by other
        work on the machine does not decide it."""
        values = [t.p99_us for t in self.latency_trials if t.samples]
        return statistics.median(values) if values else None

    @property
    def max_out_pps(self) -> float:
        return self.best.out_pps if self.best else 0.0

    def cpu_at(self, which: str) -> float:
        trial = {"max": self.best, "half": self.half, "ref": self.ref}[which]
        return trial.cpu_us_per_pkt if trial else 0.0

    def to_json(self) -> dict[str, Any]:
        def t(x: Trial | None) -> dict[str, Any] | None:
            return x.to_json() if x else None

        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "target": self.target,
            "server": self.server,
            "publishers": self.publishers,
            "receivers": self.receivers,
            "consumers": self.consumers,
            "fanout": self.fanout,
            "max_out_pps": self.max_out_pps,
            "cpu_us_per_pkt_max": self.cpu_at("max"),
            "cpu_us_per_pkt_half": self.cpu_at("half"),
            "cpu_us_per_pkt_ref": self.cpu_at("ref"),
            "ref_out_pps": self.ref.offered_out_pps if self.ref else 0.0,
            "loss_at_max": self.best.loss if self.best else None,
            "loss_at_half": self.half.loss if self.half else None,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "latency_trials": len(self.latency_trials),
            "p50_us_own_half": self.half.p50_us if self.half else None,
            "p99_us_own_half": self.half.p99_us if self.half else None,
            "limit": self.limit,
            "error": self.error,
            "server_counters": self.server_counters,
            "best": t(self.best),
            "half": t(self.half),
            "ref": t(self.ref),
            "ref_trials": [x.to_json() for x in self.ref_trials],
            "trials": [x.to_json() for x in self.trials],
        }


@dataclass(slots=True)
class MemoryResult:
    """RSS of the engine process: before any traffic, with the first subscriber (the
    publishers' NACK caches then fill), with half the subscribers, and with all of them
    (each after traffic)."""

    scenario: str
    profile: str
    server: str
    subscribers: int
    consumers: int
    rss_base: int
    rss_first: int  # one subscriber: publisher caches filled
    rss_half: int  # half_subscribers subscribers
    half_subscribers: int
    rss_full: int
    video_packets: int  # sent per video stream in each traffic step

    @property
    def per_subscriber(self) -> float:
        return (self.rss_full - self.rss_base) / self.subscribers if self.subscribers else 0.0

    @property
    def per_subscriber_excl_cache(self) -> float:
        """Without the per-publisher retransmission cache: from the first subscriber's step
        (the caches are full by then) to the last."""
        if self.subscribers < 2:
            return 0.0
        return (self.rss_full - self.rss_first) / (self.subscribers - 1)

    @property
    def per_subscriber_marginal(self) -> float:
        """What each of the second half of the subscribers added: one-time allocations (tables,
        buffers made on first use) left out."""
        n = self.subscribers - self.half_subscribers
        return (self.rss_full - self.rss_half) / n if n > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            per_subscriber_bytes=self.per_subscriber,
            per_subscriber_excl_cache_bytes=self.per_subscriber_excl_cache,
            per_subscriber_marginal_bytes=self.per_subscriber_marginal,
        )
        return out


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(slots=True)
class WatchersResult:
    """One mountpoint fed by RTP, N watchers through the real ``sfu serve`` (WHEP) or Janus:
    what the watchers received in a measurement window, what the server spent, how they
    connected."""

    watchers: int  # asked for
    target: str = "sfu"  # "sfu" | "janus"
    connected: int = 0
    failed: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_wall_s: float = 0.0  # all of them, at ``concurrency`` at a time
    concurrency: int = 0
    connect_ms: list[float] = field(default_factory=list)  # first request (WHEP POST, Janus
    # attach) to DTLS done
    first_media_ms: list[float] = field(default_factory=list)  # WHEP POST to first RTP
    profiles: dict[str, int] = field(default_factory=dict)
    viewers: int = 0  # as the mountpoint counts them at the end of the window
    window_s: float = 0.0
    published: int = 0  # packets the publisher sent during the window (video + audio)
    ingest_lost: int = 0  # the mountpoint's own loss counter, both media
    received: int = 0  # RTP packets the watchers got in the window
    expected: int = 0  # from each stream's sequence numbers
    lost: int = 0
    silent: int = 0  # watchers that got nothing in the window
    consent_alive: int = 0  # watchers whose ICE agent still holds consent at the end
    auth_failures: int = 0
    bad_payload: int = 0
    samples: int = 0
    p50_us: float = 0.0  # one-way delay publisher -> watcher of the decrypted samples
    p99_us: float = 0.0
    server_cpu_s: float = 0.0
    server_out: int = 0  # datagrams the server sent in the window (sfu: engine counter)
    server_in: int = 0
    udp_out: int = 0  # UDP datagrams the server namespace sent in the window (both targets)
    hangups: int = 0  # Janus: PeerConnections it announced as hung up
    server_info: dict[str, Any] = field(default_factory=dict)  # Janus: its /info settings
    server_rcvbuf_errors: int = 0  # UDP receive-buffer drops in the server namespace (ingest)
    server_sndbuf_errors: int = 0
    load_cpu_s: float = 0.0  # client, receiver and publisher
    machine_busy_s: float = 0.0
    rss_before: int = 0  # server RSS with the mountpoint fed, before any watcher
    rss_after: int = 0  # after the window
    error: str = ""

    @property
    def loss(self) -> float:
        return self.lost / self.expected if self.expected > 0 else 0.0

    @property
    def delivered(self) -> float:
        """Packets received / (packets published x watchers connected), in the window."""
        want = self.published * self.connected
        return self.received / want if want > 0 else 0.0

    @property
    def out_pps(self) -> float:
        return self.server_out / self.window_s if self.window_s > 0 else 0.0

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_us_per_pkt(self) -> float:
        return self.server_cpu_s / self.server_out * 1e6 if self.server_out > 0 else 0.0

    @property
    def cpu_us_per_udp_out(self) -> float:
        """Server CPU per UDP datagram its namespace sent: the same counter for both targets."""
        return self.server_cpu_s / self.udp_out * 1e6 if self.udp_out > 0 else 0.0

    @property
    def rss_per_watcher(self) -> float:
        if self.connected <= 0 or self.rss_after <= 0:
            return 0.0
        return (self.rss_after - self.rss_before) / self.connected

    @property
    def other_cores(self) -> float:
        if self.window_s <= 0:
            return 0.0
        other = self.machine_busy_s - self.server_cpu_s - self.load_cpu_s
        return max(0.0, other / self.window_s)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            loss=self.loss,
            delivered=self.delivered,
            out_pps=self.out_pps,
            server_cores=self.server_cores,
            server_cpu_percent=100 * self.server_cores,
            cpu_us_per_pkt=self.cpu_us_per_pkt,
            cpu_us_per_udp_out=self.cpu_us_per_udp_out,
            rss_per_watcher_bytes=self.rss_per_watcher,
            load_cores=self.load_cpu_s / self.window_s if self.window_s > 0 else 0.0,
            other_cores=self.other_cores,
            connect_ms_p50=percentile(self.connect_ms, 0.5),
            connect_ms_p95=percentile(self.connect_ms, 0.95),
            first_media_ms_p50=percentile(self.first_media_ms, 0.5),
            first_media_ms_p95=percentile(self.first_media_ms, 0.95),
        )
        return out


@dataclass(slots=True)
class WatchersRatio:
    """Janus / sfu for one watcher count, both measured in the same bench run."""

    watchers: int
    cpu_us_per_pkt: float  # server CPU per UDP datagram out (namespace counter for both)
    server_cores: float  # CPU share over the window
    rss_per_watcher: float
    connect_ms_p50: float


def watchers_ratios(results: list[WatchersResult]) -> list[WatchersRatio]:
    """Janus / sfu for every watcher count both targets ran for without an error."""
    ok = {(w.target, w.watchers): w for w in results if not w.error and w.connected}
    out: list[WatchersRatio] = []
    for (target, n), j in ok.items():
        s = ok.get(("sfu", n))
        if target != "janus" or s is None:
            continue
        out.append(
            WatchersRatio(
                n,
                _div(j.cpu_us_per_udp_out, s.cpu_us_per_udp_out),
                _div(j.server_cores, s.server_cores),
                _div(j.rss_per_watcher, s.rss_per_watcher),
                _div(percentile(j.connect_ms, 0.5) or 0.0, percentile(s.connect_ms, 0.5) or 0.0),
            )
        )
    return out


@dataclass(slots=True)
class Ratio:
    scenario: str
    profile: str
    cpu_ratio: float  # engine / floor CPU per packet out at the same rate (the target's)
    cpu_ratio_max: float  # same, each at its highest passing rate
    max_rate_ratio: float  # engine / floor highest output rate
    p99_ratio: float  # engine / floor p99 at the reference rate


@dataclass(slots=True)
class BenchReport:
    machine: dict[str, Any]
    engine: str
    quick: bool
    settings: dict[str, Any]
    results: list[TargetResult] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    watchers: list[WatchersResult] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def find(self, scenario: str, profile: str, target: str) -> TargetResult | None:
        for r in self.results:
            if (r.scenario, r.profile, r.target) == (scenario, profile, target):
                return r
        return None

    def ratios(self) -> list[Ratio]:
        out: list[Ratio] = []
        for e in self.results:
            if e.target != "engine":
                continue
            f = self.find(e.scenario, e.profile, "floor")
            if f is None:
                continue
            out.append(
                Ratio(
                    e.scenario,
                    e.profile,
                    _div(e.cpu_at("ref"), f.cpu_at("ref")),
                    _div(e.cpu_at("max"), f.cpu_at("max")),
                    _div(e.max_out_pps, f.max_out_pps),
                    _div(e.p99_us or 0.0, f.p99_us or 0.0),
                )
            )
        return out

    def targets(self) -> list[dict[str, Any]]:
        """The issue's targets, each with the worst value seen and whether it is met."""
        ratios = [r.cpu_ratio for r in self.ratios() if r.cpu_ratio > 0]
        p99s = [r.p99_us for r in self.results if r.target == "engine" and r.p99_us is not None]
        mem = [m.per_subscriber_excl_cache for m in self.memory]

        def row(name: str, limit: float, values: list[float]) -> dict[str, Any]:
            worst = max(values) if values else None
            met = None if worst is None else worst <= limit
            return {"name": name, "limit": limit, "worst": worst, "met": met}

        return [
            row("cpu_per_packet_ratio", TARGET_CPU_RATIO, ratios),
            row("p99_us_at_half_max", TARGET_P99_US, p99s),
            row("bytes_per_subscriber_excl_cache", TARGET_BYTES_PER_SUBSCRIBER, mem),
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "started": self.started,
            "seconds": self.seconds,
            "quick": self.quick,
            "engine": self.engine,
            "machine": self.machine,
            "settings": self.settings,
            "results": [r.to_json() for r in self.results],
            "ratios": [asdict(r) for r in self.ratios()],
            "memory": [m.to_json() for m in self.memory],
            "watchers": [w.to_json() for w in self.watchers],
            "watchers_ratios": [asdict(r) for r in watchers_ratios(self.watchers)],
            "targets": self.targets(),
            "notes": self.notes,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _div(a: float, b: float) -> float:
    return a / b if a > 0 and b > 0 else 0.0


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None or value <= 0 else format(value, fmt)


PROFILE_SHORT = {"AES_CM_128_HMAC_SHA1_80": "AES-CM", "AEAD_AES_128_GCM": "GCM", "plain": "plain"}


def format_watchers(results: list[WatchersResult]) -> str:
    """The mountpoint-to-watchers table (markdown), and Janus / sfu ratios when both ran."""
    lines = [
        "| server | watchers | connected | connect ms p50 / p95 | first media ms p50 / p95 "
        "| packets out/s | server CPU % of a core | us CPU/pkt out | loss % | delivered % "
        "| delay us p50 / p99 | server RSS KiB/watcher | other cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in results:
        if w.error and not w.connected:
            lines.append(f"| {w.target} | {w.watchers} | 0 | {w.error} |" + " |" * 9)
            continue

        def pair(values: list[float], fmt: str) -> str:
            a, b = percentile(values, 0.5), percentile(values, 0.95)
            return "-" if a is None or b is None else f"{a:{fmt}} / {b:{fmt}}"

        lines.append(
            f"| {w.target} | {w.watchers} | {w.connected} | {pair(w.connect_ms, '.0f')} "
            f"| {pair(w.first_media_ms, '.0f')} | {w.out_pps:,.0f} "
            f"| {100 * w.server_cores:.1f} | {_f(w.cpu_us_per_pkt, '.2f')} "
            f"| {100 * w.loss:.3f} | {100 * w.delivered:.2f} "
            f"| {w.p50_us:.0f} / {w.p99_us:.0f} | {w.rss_per_watcher / 1024:.1f} "
            f"| {w.other_cores:.2f} |"
        )
    ratios = watchers_ratios(results)
    if ratios:
        lines += [
            "",
            "| watchers | Janus/sfu us CPU per UDP datagram out | CPU share | RSS per watcher "
            "| connect p50 |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in ratios:
            lines.append(
                f"| {r.watchers} | {_f(r.cpu_us_per_pkt, '.2f')} | {_f(r.server_cores, '.2f')} "
                f"| {_f(r.rss_per_watcher, '.2f')} | {_f(r.connect_ms_p50, '.2f')} |"
            )
    return "\n".join(lines)


def format_table(report: BenchReport) -> str:
    """The per-target table, the ratios, memory and targets, as aligned text (markdown-ready)."""
    if not report.results and report.watchers:
        return format_watchers(report.watchers)
    lines = [
        "| scenario | profile | server | max out pps | us CPU/pkt @max | us CPU/pkt @ref "
        "| ref out pps | p50 us @ref | p99 us @ref | server cores @max | load cores @max "
        "| other cores @max | limit |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.results:
        b = r.best
        lines.append(
            f"| {r.scenario} | {PROFILE_SHORT.get(r.profile, r.profile)} | {r.server} "
            f"| {_f(r.max_out_pps, ',.0f')} | {_f(r.cpu_at('max'), '.2f')} "
            f"| {_f(r.cpu_at('ref'), '.2f')} "
            f"| {_f(r.ref.offered_out_pps if r.ref else None, ',.0f')} "
            f"| {_f(r.p50_us, '.0f')} | {_f(r.p99_us, '.0f')} "
            f"| {_f(b.server_cores if b else None, '.2f')} "
            f"| {_f(b.loadgen_cores if b else None, '.2f')} "
            f"| {_f(b.other_cores if b else None, '.2f')} | {r.error or r.limit} |"
        )
    ratios = report.ratios()
    if ratios:
        lines += [
            "",
            "| scenario | profile | CPU/pkt engine/floor @ref | @max | max rate engine/floor "
            "| p99 engine/floor |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for x in ratios:
            lines.append(
                f"| {x.scenario} | {PROFILE_SHORT.get(x.profile, x.profile)} "
                f"| {_f(x.cpu_ratio, '.2f')} | {_f(x.cpu_ratio_max, '.2f')} "
                f"| {_f(x.max_rate_ratio, '.2f')} | {_f(x.p99_ratio, '.2f')} |"
            )
    if report.memory:
        lines += [
            "",
            "| memory | profile | server | subscribers | KiB/subscriber | KiB/subscriber "
            "excl. publisher cache | KiB per added subscriber (last half) |",
            "|---|---|---|---:|---:|---:|---:|",
        ]
        for m in report.memory:
            lines.append(
                f"| {m.scenario} | {PROFILE_SHORT.get(m.profile, m.profile)} | {m.server} "
                f"| {m.subscribers} | {m.per_subscriber / 1024:.1f} "
                f"| {m.per_subscriber_excl_cache / 1024:.1f} "
                f"| {m.per_subscriber_marginal / 1024:.1f} |"
            )
    lines += ["", "| target | limit | worst | met |", "|---|---:|---:|---|"]
    for t in report.targets():
        met = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
        worst = "-" if t["worst"] is None else f"{t['worst']:,.2f}"
        lines.append(f"| {t['name']} | {t['limit']:,} | {worst} | {met} |")
    if report.watchers:
        lines += ["", format_watchers(report.watchers)]
    return "\n".join(lines)
