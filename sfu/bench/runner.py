"""``sfu bench``: run every scenario and profile against the engine and the floor in one go.

For each scenario and SRTP profile the runner writes a plan and, for the engine and then for the
floor, starts the server in the server namespace and a load generator in the load namespace:

1. a warm-up (packets come back, decrypt, and carry our payload, or the target fails);
2. a search for the highest output rate with under 0.1% loss: grow from the CPU headroom seen,
   then bisect; each trial reads the server's CPU time (/proc/PID/stat) and its packets-out
   counter before and after;
3. a longer trial at half that rate (latency);
4. with both sessions still up, alternating engine / floor trials at the engine's half rate:
   CPU per packet and latency compared at the same load on the same machine moments.

Then the memory probe (the largest fan-out): a fresh engine with publishers only (NACK caches
filled), then with every subscriber, RSS after each step.

Last, the mountpoint scenario (:mod:`sfu.bench.watchers`): the real ``sfu serve``, one RTP-fed
mountpoint and N WHEP watchers, for each count in ``watchers``; with ``janus``, Janus from
Debian right after each, under the same load (Janus/sfu ratios in the report).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sfu
from sfu.bench import janus, procfs, watchers
from sfu.bench.build import CFLAGS, Tools, build_tools
from sfu.bench.plan import NACK_CACHE, PLAIN, SCENARIOS, Plan, Scenario, build_plan
from sfu.bench.report import BenchReport, MemoryResult, TargetResult, Trial, WatchersResult
from sfu.bench.server import cython_available
from sfu.bench.topology import BenchError, BenchNet, BenchUnavailable, LineProcess, require_bench
from sfu.bench.watchers import WatchersOptions, run_watchers
from sfu.engine.base import SrtpProfile

Progress = Callable[[str], None]

SERVER_PORT = 5000
LOAD_BASE_PORT = 20000
AUDIO_PPS = 50.0
WARMUP_OUT_PPS = 10_000.0
NOISY_CORES = 0.25  # CPU used by neither server nor load during a trial: retry a failure once


@dataclass(slots=True)
class BenchOptions:
    """What to run; :meth:`quick_mode` gives the CI smoke settings."""

    engine: str = "auto"  # auto | python | cython
    scenarios: Sequence[str] = tuple(SCENARIOS)
    profiles: Sequence[SrtpProfile] = tuple(SrtpProfile)
    floor: bool = True
    plain_floor: bool = True
    memory: bool = True
    quick: bool = False
    trial_s: float = 2.0
    half_s: float = 3.0
    ref_s: float = 2.0  # each of the alternating engine / floor trials at the same rate
    ref_pairs: int = 3
    warmup_s: float = 0.5
    max_trials: int = 8
    grace_ms: float = 100.0
    rx_threads: int = 1
    poll_us: int = 100  # load-side receive polling period (0: block in epoll_wait)
    pin: bool = True  # server on one CPU, load generator on another (when there are two)
    nice: int = 0  # niceness added to server and load generator (-10: ahead of other work)
    sample_every: int = 16
    watchers: Sequence[int] = (200,)  # mountpoint scenario: watcher counts (empty: skip it)
    watch_window_s: float = 10.0
    watch_settle_s: float = 2.0
    watch_concurrency: int = 10
    janus: bool = False  # also run the mountpoint scenario against Janus, right after sfu
    janus_event_loops: int = 1  # Janus's event_loops (0: its default, a thread per handle)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick_mode(cls, engine: str = "auto") -> BenchOptions:
        return cls(
            engine=engine,
            scenarios=("fanout-10",),
            plain_floor=False,
            quick=True,
            trial_s=0.4,
            half_s=0.5,
            ref_s=0.4,
            ref_pairs=1,
            warmup_s=0.3,
            max_trials=3,
            watchers=(5,),
            watch_window_s=2.0,
            watch_settle_s=1.0,
        )


def resolve_engine(choice: str) -> str:
    if choice == "python":
        return "python"
    if cython_available():
        return "cython"
    if choice == "cython":
        raise BenchUnavailable("the Cython engine (sfu.engine.cengine) is not built")
    return "python"


def profile_name(profile: int) -> str:
    return "plain" if profile == PLAIN else SrtpProfile(profile).name


def video_pps_for(out_pps: float, s: Scenario) -> float:
    """Video packets/s per publisher that give ``out_pps`` copies out (audio at 50 pps on top)."""
    return max(1.0, out_pps / (s.fanout * s.publishers) - AUDIO_PPS)


class _Session:
    """One server process and one load generator, started for one target and plan."""

    def __init__(
        self,
        net: BenchNet,
        work: Path,
        server_argv: list[str],
        tools: Tools,
        plan_path: Path,
        opts: BenchOptions,
        tag: str,
    ) -> None:
        self.net, self.opts = net, opts
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        server_cpu, load_cpu = _cpus(opts.pin)
        self.server: LineProcess = net.start(
            net.server_ns,
            server_argv,
            work / f"{tag}-server.log",
            f"server ({tag})",
            env,
            server_cpu,
            opts.nice,
        )
        ready = self.server.read(timeout=60)
        self.server_name = str(ready.get("engine", "?"))
        load_argv = [
            str(tools.loadgen),
            str(plan_path),
            "-r",
            str(opts.rx_threads),
            "-s",
            str(opts.sample_every),
            "-p",
            str(opts.poll_us),
        ]
        self.load: LineProcess = net.start(
            net.load_ns,
            load_argv,
            work / f"{tag}-load.log",
            f"load generator ({tag})",
            None,
            load_cpu,
            opts.nice,
        )
        self.load.read(timeout=30)

    def trial(self, video_pps: float, seconds: float) -> Trial:
        s0 = self.server.request("stats")
        u0s, u0l = procfs.udp_counters(self.server.pid), procfs.udp_counters(self.load.pid)
        c0, b0, w0 = procfs.cpu_seconds(self.server.pid), procfs.busy_seconds(), time.monotonic()
        self.load.send(f"trial {video_pps:.3f} {seconds:.3f} {self.opts.grace_ms:.0f}")
        self.load.read(timeout=10)  # {"event": "started"}
        reply = self.load.read(timeout=seconds + 30)
        c1, b1, w1 = procfs.cpu_seconds(self.server.pid), procfs.busy_seconds(), time.monotonic()
        s1 = self.server.request("stats")
        u1s, u1l = procfs.udp_counters(self.server.pid), procfs.udp_counters(self.load.pid)
        t = Trial.from_loadgen(reply)
        t.server_cpu_s = c1 - c0
        t.machine_busy_s = b1 - b0
        t.wall_s = w1 - w0
        t.server_out = int(s1["out"]) - int(s0["out"])
        t.drops_server = u1s.get("RcvbufErrors", 0) - u0s.get("RcvbufErrors", 0)
        t.drops_load = u1l.get("RcvbufErrors", 0) - u0l.get("RcvbufErrors", 0)
        return t

    def counters(self) -> dict[str, int]:
        """The server's error counters: SRTP failures, unrouted packets (and the floor's
        send errors); all zero in a sound run."""
        is_engine = self.server_name != "floor"
        reply = self.server.request("errors" if is_engine else "stats")
        keys = ("srtp_errors", "unrouted", "send_errors")
        return {k: int(reply[k]) for k in keys if k in reply}

    def close(self) -> None:
        self.net.stop(self.load)
        self.net.stop(self.server)


def _cpus(pin: bool) -> tuple[int | None, int | None]:
    """(server CPU, load CPU): the last two CPUs we may run on, or no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    if not pin or len(allowed) < 2:
        return None, None
    return allowed[-1], allowed[-2]


def _pythonpath() -> str:
    root = str(Path(sfu.__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{old}" if old else root


def _describe(t: Trial) -> str:
    return (
        f"{t.offered_out_pps:>9,.0f} pps out offered, {t.out_pps:>9,.0f} sent, "
        f"loss {t.loss * 100:6.3f}%, {t.cpu_us_per_pkt:6.2f} us CPU/pkt, "
        f"server {t.server_cores:.2f} cores, load {t.loadgen_cores:.2f}, "
        f"other {t.other_cores:.2f}"
    )


@dataclass(frozen=True, slots=True)
class _Env:
    """What every step of one bench run shares."""

    net: BenchNet
    work: Path
    tools: Tools
    engine: str  # "cython" | "python"


class Runner:
    """Runs the matrix of :class:`BenchOptions` inside a :class:`BenchNet`."""

    def __init__(self, opts: BenchOptions, progress: Progress | None = None) -> None:
        self.opts = opts
        self._progress = progress or (lambda line: None)
        self._t0 = time.monotonic()

    def say(self, line: str) -> None:
        self._progress(f"[{time.monotonic() - self._t0:6.1f}s] {line}")

    def run(self) -> BenchReport:
        opts = self.opts
        require_bench()
        if opts.janus and opts.watchers:
            why = janus.janus_available()
            if why is not None:
                raise BenchUnavailable(f"--janus: {why}")
        engine = resolve_engine(opts.engine)
        scenarios = [SCENARIOS[name] for name in opts.scenarios]
        report = BenchReport(
            machine={**procfs.machine(), "python": sys.version.split()[0]},
            engine=engine,
            quick=opts.quick,
            settings=self._settings(scenarios),
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            notes=list(opts.notes),
        )
        memory_scenario = max(scenarios, key=lambda s: 0 if s.room else s.receivers, default=None)
        with tempfile.TemporaryDirectory(prefix="sfu-bench-") as tmp, BenchNet() as net:
            work = Path(tmp)
            self.say(f"building the load generator and the floor in {work}")
            env = _Env(net, work, build_tools(work / "bin"), engine)
            self.say(
                f"namespaces {net.server_ns} ({net.server_ip}) <-> {net.load_ns} "
                f"({net.load_ip}); engine: {engine}"
            )
            for scenario in scenarios:
                for profile in opts.profiles:
                    engine_result = self._pair(env, scenario, profile, report)
                    if opts.memory and scenario is memory_scenario:
                        m = self._memory(env, scenario, profile, engine_result)
                        if m is not None:
                            report.memory.append(m)
                if opts.plain_floor and opts.floor:
                    plan = self._plan(env, scenario, PLAIN, shift=0)
                    result, session = self._open(env, scenario, plan, "floor")
                    if session is not None:
                        self._finish(result, session)
                    result.ref_trials = [result.half] if result.half else []
                    report.results.append(result)
            for n in opts.watchers:
                report.watchers.append(self._watchers(env, n, "sfu"))
                if opts.janus:
                    report.watchers.append(self._watchers(env, n, "janus"))
        report.seconds = time.monotonic() - self._t0
        return report

    def _settings(self, scenarios: list[Scenario]) -> dict[str, object]:
        opts = self.opts
        return {
            "trial_s": opts.trial_s,
            "half_s": opts.half_s,
            "ref_s": opts.ref_s,
            "ref_pairs": opts.ref_pairs,
            "max_trials": opts.max_trials,
            "grace_ms": opts.grace_ms,
            "loss_limit": 0.001,
            "video_bytes": 1200,
            "audio_bytes": 172,
            "audio_pps_per_publisher": AUDIO_PPS,
            "nack_cache_packets": NACK_CACHE,
            "c_flags": list(CFLAGS),
            "sample_every": opts.sample_every,
            "loadgen_rx_threads": opts.rx_threads,
            "loadgen_poll_us": opts.poll_us,
            "nice": opts.nice,
            "pinned": dict(zip(("server_cpu", "load_cpu"), _cpus(opts.pin), strict=True)),
            "scenarios": [s.name for s in scenarios],
            "profiles": [p.name for p in opts.profiles],
            "watchers": {
                "counts": list(opts.watchers),
                "window_s": opts.watch_window_s,
                "settle_s": opts.watch_settle_s,
                "concurrency": opts.watch_concurrency,
                "video_pps": watchers.VIDEO_PPS,
                "video_bytes": 1200,
                "audio_pps": watchers.AUDIO_PPS,
                "audio_bytes": 172,
                "fps": watchers.FPS,
                "keyframe_every_frames": watchers.KEY_EVERY,
                "janus": self._janus_settings() if opts.janus else None,
            },
        }

    def _janus_settings(self) -> dict[str, object]:
        return {
            "version": janus.janus_version(),
            "event_loops": self.opts.janus_event_loops or "default (one thread per handle)",
            "min_nack_queue_ms": "default",
            "ice": "full ICE (libnice), host candidate on the server veth only, no STUN/TURN",
            "transport": "HTTP long poll, one session, one handle per watcher",
            "answer": "VP8 + Opus recvonly, no RTX, no header extensions",
        }

    def _watchers(self, env: _Env, n: int, target: str) -> WatchersResult:
        server_cpu, load_cpu = _cpus(self.opts.pin)
        wopts = WatchersOptions(
            window_s=self.opts.watch_window_s,
            settle_s=self.opts.watch_settle_s,
            concurrency=self.opts.watch_concurrency,
            server_cpu=server_cpu,
            load_cpu=load_cpu,
            nice=self.opts.nice,
            engine=env.engine,
            janus_event_loops=self.opts.janus_event_loops,
        )
        what = "sfu serve, WHEP" if target == "sfu" else f"Janus {janus.janus_version()}, HTTP API"
        self.say(f"watchers {target} {n}: {what}, one mountpoint, {n} watchers")
        return run_watchers(env.net, env.work, env.tools, n, wopts, _pythonpath(), self.say, target)

    def _plan(self, env: _Env, scenario: Scenario, profile: int, shift: int) -> tuple[Plan, Path]:
        """A fresh plan; ``shift`` moves its ports so two servers and generators can coexist."""
        plan = build_plan(
            scenario,
            profile,
            (env.net.server_ip, SERVER_PORT + shift),
            env.net.load_ip,
            LOAD_BASE_PORT + 1000 * shift,
        )
        name = f"{scenario.name}-{profile_name(profile)}-{shift}.plan"
        return plan, plan.write(env.work / name)

    def _pair(
        self, env: _Env, scenario: Scenario, profile: SrtpProfile, report: BenchReport
    ) -> TargetResult:
        """Engine, then floor, each searched on its own; then CPU per packet compared at the
        engine's half rate in alternating trials (engine, floor, engine, ...), so that both
        see the same machine at nearly the same time."""
        e, e_session = self._open(env, scenario, self._plan(env, scenario, profile, 0), "engine")
        report.results.append(e)
        f: TargetResult | None = None
        f_session: _Session | None = None
        try:
            if self.opts.floor:
                f, f_session = self._open(
                    env, scenario, self._plan(env, scenario, profile, 1), "floor"
                )
                report.results.append(f)
            if e_session is not None and e.half is not None:
                if f is not None and f_session is not None:
                    self._paired_ref(e, e_session, f, f_session, e.half.video_pps)
                else:
                    e.ref_trials = [e.half]
        except BenchError as exc:
            self.say(f"{scenario.name} {profile.name}: reference trials FAILED: {exc}")
        finally:
            for result, session in ((e, e_session), (f, f_session)):
                if session is not None:
                    assert result is not None
                    self._finish(result, session)
        return e

    def _finish(self, result: TargetResult, session: _Session) -> None:
        try:
            result.server_counters = session.counters()
        except BenchError as exc:
            self.say(f"{result.scenario} {result.profile} {result.server}: no counters: {exc}")
        finally:
            session.close()

    def _paired_ref(
        self, e: TargetResult, es: _Session, f: TargetResult, fs: _Session, video_pps: float
    ) -> None:
        for i in range(self.opts.ref_pairs):
            for result, session in ((e, es), (f, fs)):
                t = session.trial(video_pps, self.opts.ref_s)
                result.ref_trials.append(t)
                self.say(f"{result.scenario} {result.profile} {result.server}: "
                         f"ref {i + 1}     {_describe(t)}")  # fmt: skip

    def _open(
        self, env: _Env, scenario: Scenario, plan_and_path: tuple[Plan, Path], target: str
    ) -> tuple[TargetResult, _Session | None]:
        """Start a server of ``target`` and its load generator and measure it; the session is
        returned open (None after a failure) for the paired reference trials."""
        plan, path = plan_and_path
        pname = profile_name(plan.profile)
        result = TargetResult(
            scenario=scenario.name,
            profile=pname,
            target=target,
            server="?",
            publishers=scenario.publishers,
            receivers=scenario.receivers,
            consumers=scenario.consumers,
            fanout=scenario.fanout,
        )
        if target == "engine":
            argv = [sys.executable, "-m", "sfu.bench.server", str(path), "--engine", env.engine]
        else:
            argv = [str(env.tools.floor), str(path)]
        label = f"{scenario.name} {pname} {target}"
        session: _Session | None = None
        try:
            session = _Session(env.net, env.work, argv, env.tools, path, self.opts, label)
            result.server = session.server_name
            label = f"{scenario.name} {pname} {session.server_name}"
            self._measure(session, scenario, result, label)
        except BenchError as exc:
            result.error = str(exc).splitlines()[0][:200]
            self.say(f"{label}: FAILED: {exc}")
            if session is not None:
                session.close()
            return result, None
        return result, session

    def _measure(
        self, session: _Session, scenario: Scenario, result: TargetResult, label: str
    ) -> None:
        opts = self.opts
        warm = session.trial(video_pps_for(WARMUP_OUT_PPS, scenario), opts.warmup_s)
        self.say(f"{label}: warm-up   {_describe(warm)}")
        if warm.received == 0:
            raise BenchError(f"nothing came back from the server (server sent {warm.server_out})")
        if warm.auth_failures or warm.bad_payload:
            raise BenchError(
                f"subscribers could not decrypt what the server sent "
                f"({warm.auth_failures} auth failures, {warm.bad_payload} bad payloads)"
            )
        lo: float | None = None  # highest passing offered rate
        hi: float | None = None  # lowest failing offered rate
        first_fail: Trial | None = None
        rate = warm.offered_out_pps * _growth(warm, 8.0)
        for i in range(opts.max_trials):
            t = session.trial(video_pps_for(rate, scenario), opts.trial_s)
            result.trials.append(t)
            self.say(f"{label}: trial {i + 1}   {_describe(t)}")
            if not t.passed and t.other_cores > NOISY_CORES:
                # something else ran on the machine meanwhile: give the rate a second chance
                t = session.trial(video_pps_for(rate, scenario), opts.trial_s)
                result.trials.append(t)
                self.say(f"{label}: again     {_describe(t)}")
            if t.passed:
                if result.best is None or t.offered_out_pps > result.best.offered_out_pps:
                    result.best = t
                lo = max(lo or 0.0, t.offered_out_pps)
            elif hi is None or t.offered_out_pps < hi:
                hi, first_fail = t.offered_out_pps, t
            if hi is None:
                rate = t.offered_out_pps * _growth(t, 3.0)
            elif lo is None:
                rate = t.offered_out_pps * 0.5
            elif hi / lo <= 1.06:
                break
            else:
                rate = math.sqrt(lo * hi)
        for _ in range(3):  # nothing passed (a noisy machine?): halve a few more times
            if result.best is not None:
                break
            rate = min(t.offered_out_pps for t in result.trials) * 0.5
            t = session.trial(video_pps_for(rate, scenario), opts.trial_s)
            result.trials.append(t)
            self.say(f"{label}: lower     {_describe(t)}")
            if t.passed:
                result.best = t
        result.limit = _limit(first_fail)
        if result.best is None:
            raise BenchError("no rate passed with under 0.1% loss")
        half_video = video_pps_for(result.best.offered_out_pps / 2, scenario)
        result.half = h = session.trial(half_video, opts.half_s)
        self.say(
            f"{label}: half max  {_describe(h)}, p50 {h.p50_us:.0f} us, p99 {h.p99_us:.0f} us "
            f"({h.samples} samples)"
        )

    # -- memory ---------------------------------------------------------------------------------

    def _memory(
        self, env: _Env, scenario: Scenario, profile: SrtpProfile, measured: TargetResult
    ) -> MemoryResult | None:
        """RSS of a fresh engine: before traffic; with one subscriber after traffic (the
        publishers' NACK caches are filled once a consumer asks for them); with half the
        subscribers; with all of them (each after traffic)."""
        plan, path = self._plan(env, scenario, profile, 0)
        pname = profile_name(plan.profile)
        label = f"{scenario.name} {pname} memory"
        video = measured.half.video_pps if measured.half else video_pps_for(2000, scenario)
        seconds = 1.0 if self.opts.quick else min(6.0, max(1.0, (NACK_CACHE + 100) / video))
        argv = [sys.executable, "-m", "sfu.bench.server", str(path), "--engine", env.engine,
                "--defer-consumers"]  # fmt: skip
        session: _Session | None = None
        try:
            session = _Session(env.net, env.work, argv, env.tools, path, self.opts, label)
            pid = session.server.pid
            rss: list[int] = [procfs.rss_bytes(pid)]
            half = max(2, scenario.receivers // 2)
            added = 0
            t: Trial | None = None
            for step in ("subscribers 1", f"subscribers {half - 1}", "consumers"):
                added += int(session.server.request(step)["consumers"])
                t = session.trial(video, seconds)
                rss.append(procfs.rss_bytes(pid))
            if t is None or t.received == 0:
                raise BenchError("nothing forwarded during the memory probe")
            m = MemoryResult(
                scenario=scenario.name,
                profile=pname,
                server=session.server_name,
                subscribers=scenario.receivers,
                consumers=added,
                rss_base=rss[0],
                rss_first=rss[1],
                rss_half=rss[2],
                half_subscribers=half,
                rss_full=rss[3],
                video_packets=int(video * t.seconds),
            )
            self.say(
                f"{label}: RSS " + " -> ".join(f"{x / 2**20:.1f}" for x in rss) + " MiB "
                f"(0, 1, {half}, {m.subscribers} subscribers): "
                f"{m.per_subscriber / 1024:.1f} KiB/subscriber, "
                f"{m.per_subscriber_excl_cache / 1024:.1f} KiB without the publisher cache, "
                f"{m.per_subscriber_marginal / 1024:.1f} KiB for each of the last "
                f"{m.subscribers - half}"
            )
            return m
        except BenchError as exc:
            self.say(f"{label}: FAILED: {exc}")
            return None
        finally:
            if session is not None:
                session.close()


def _growth(t: Trial, most: float) -> float:
    """How much to raise the rate after a passing trial: from the server's CPU headroom."""
    cores = t.server_cores
    return min(most, max(1.25, 0.95 / cores)) if cores > 0 else 2.0


def _limit(first_fail: Trial | None) -> str:
    """What stopped the search: "budget" (no failing rate found), "load" (subscriber sockets of
    the load generator overflowed), or "server" (its socket overflowed, or a backlog built up)."""
    if first_fail is None:
        return "budget"
    if first_fail.drops_load > first_fail.drops_server:
        return "load"
    return "server"


def run_bench(opts: BenchOptions, progress: Progress | None = None) -> BenchReport:
    """Run the bench (root needed) and return its report."""
    return Runner(opts, progress).run()
