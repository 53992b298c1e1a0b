"""The "one mountpoint to N watchers" scenario of ``sfu bench``: the real ``sfu serve`` end to end.

In the bench's two namespaces:

1. ``sfu serve`` in the server namespace (pinned like the bench server), with an admin key and
   an in-memory mountpoint store;
2. the load client (``python -m sfu.bench.watchload``) in the load namespace creates an ``rtp``
   mountpoint (VP8 + Opus) through the REST API;
3. the C publisher (``csrc/rtppub.c``) feeds it plain RTP: ~1.5 Mbit/s of video in 1,200-byte
   packets at 30 frames/s with a key frame every second, and 50 audio packets/s;
4. the client connects N WHEP watchers (signaling, ICE, DTLS-SRTP on the project's sans-IO
   cores), ``concurrency`` at a time, and hands each socket and its keys to the C receiver;
5. after a settling pause, one measurement window: the server's CPU time (/proc/PID/stat) and
   packets-out counter, what the watchers received (sequence-number loss, decrypted samples,
   one-way delay), the server's RSS before the first watcher and after the window.

The same run with ``target="janus"`` measures Janus from Debian instead (:mod:`sfu.bench.janus`):
started in the same namespace on the same CPU with a generated configuration whose streaming
mountpoint listens where the publisher sends; the watchers answer Janus's offers. Its packets
out come from the server namespace's UDP counters (/proc/PID/net/snmp), which the sfu run
records too, so the two are compared on the same counter.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfu.bench import janus, procfs
from sfu.bench.build import Tools
from sfu.bench.report import WatchersResult, percentile
from sfu.bench.topology import BenchError, BenchNet, LineProcess
from sfu.natlab import netns

Progress = Callable[[str], None]

HTTP_PORT = 8080
MEDIA_PORT = 40000
ADMIN_KEY = "sfu-bench-admin-key"
VIDEO_PPS = 156.0  # x 1,200 bytes = 1.5 Mbit/s
AUDIO_PPS = 50.0
FPS = 30
KEY_EVERY = 30  # frames: one key frame a second (a new watcher's video starts at one)
TARGETS = ("sfu", "janus")
JANUS_HTTP_PORT = 8088
JANUS_PORTS = (50004, 50002)  # video, audio: where Janus's mountpoint listens
JANUS_MOUNTPOINT = 1
VIDEO_PT = 96  # what rtppub.c sends
AUDIO_PT = 111


@dataclass(slots=True)
class WatchersOptions:
    window_s: float = 10.0
    settle_s: float = 2.0  # after the last watcher connected, before the window
    concurrency: int = 10  # watchers connecting at once
    server_cpu: int | None = None
    load_cpu: int | None = None
    nice: int = 0
    engine: str = "cython"
    janus_event_loops: int = 1


def janus_setup(net: BenchNet, opts: WatchersOptions) -> janus.JanusSetup:
    """The Janus configuration the bench uses in ``net``."""
    return janus.JanusSetup(
        ip=net.server_ip,
        device=net.server_dev,
        http_port=JANUS_HTTP_PORT,
        video_port=JANUS_PORTS[0],
        audio_port=JANUS_PORTS[1],
        video_pt=VIDEO_PT,
        audio_pt=AUDIO_PT,
        mountpoint=JANUS_MOUNTPOINT,
        event_loops=opts.janus_event_loops,
    )


def _server_env(engine: str, pythonpath: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    env.update(PYTHONPATH=pythonpath, SFU_ENGINE=engine)
    return env


def run_watchers(
    net: BenchNet,
    work: Path,
    tools: Tools,
    n: int,
    opts: WatchersOptions,
    pythonpath: str,
    say: Progress,
    target: str = "sfu",
) -> WatchersResult:
    """Run the scenario for ``n`` watchers against ``target`` (``sfu`` or ``janus``); a failure
    is kept in ``result.error``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}")
    result = WatchersResult(watchers=n, concurrency=opts.concurrency, target=target)
    tag = f"{target} {n}"
    procs: list[LineProcess] = []
    server: LineProcess | None = None
    try:
        if target == "janus":
            server, target_args = _start_janus(net, work, n, opts)
        else:
            server, target_args = _start_sfu(net, work, n, opts, pythonpath)
        client = net.start(
            net.load_ns,
            [
                sys.executable,
                "-m",
                "sfu.bench.watchload",
                *target_args,
                "--bind",
                net.load_ip,
                "--rx",
                str(tools.watchrx),
                "--concurrency",
                str(opts.concurrency),
            ],
            work / f"watchers-{target}-{n}-client.log",
            f"watch client ({tag} watchers)",
            {**os.environ, "PYTHONPATH": pythonpath},
            opts.load_cpu,
            opts.nice,
        )
        procs.append(client)
        ready = client.read(timeout=60)
        load_pids = [int(ready["pid"]), int(ready["rx_pid"])]
        created = _ok(client.request("create", timeout=90), "creating the mountpoint", server)
        video_port, audio_port = created["ports"] or JANUS_PORTS
        result.server_info = dict(created.get("info") or {})
        say(
            f"watchers {tag}: mountpoint {created['mountpoint']} (RTP ports {video_port}, "
            f"{audio_port})"
        )
        pub = net.start(
            net.load_ns,
            [
                str(tools.rtppub),
                net.server_ip,
                str(video_port),
                str(audio_port),
                str(VIDEO_PPS),
                str(AUDIO_PPS),
                str(FPS),
                str(KEY_EVERY),
            ],
            work / f"watchers-{target}-{n}-publisher.log",
            "RTP publisher",
            None,
            opts.load_cpu,
            opts.nice,
        )
        procs.append(pub)
        pub.read(timeout=10)
        load_pids.append(pub.pid)
        time.sleep(1.0)
        result.rss_before = procfs.rss_bytes(server.pid)
        _connect(client, n, result, say, tag)
        if result.connected == 0:
            raise BenchError(f"no watcher connected: {'; '.join(result.connect_errors)}")
        time.sleep(opts.settle_s)
        _measure(server, client, pub, load_pids, opts.window_s, result)
        result.rss_after = procfs.rss_bytes(server.pid)
        say(
            f"watchers {tag}: {result.out_pps:,.0f} packets out/s, server "
            f"{100 * result.server_cores:.1f}% of a core ({result.cpu_us_per_pkt:.2f} us/pkt), "
            f"loss {100 * result.loss:.3f}%, delivered {100 * result.delivered:.2f}%, "
            f"{result.rss_per_watcher / 1024:.1f} KiB/watcher"
        )
    except BenchError as exc:
        result.error = str(exc)
        say(f"watchers {tag}: FAILED: {exc}")
    finally:
        for proc in reversed(procs):
            net.stop(proc)
        if server is not None:
            netns.kill_pid(server.pid, grace=5.0)  # both stop cleanly on SIGTERM
            net.stop(server)
    return result


def _start_sfu(
    net: BenchNet, work: Path, n: int, opts: WatchersOptions, pythonpath: str
) -> tuple[LineProcess, list[str]]:
    """``sfu serve`` in the server namespace; the load client's arguments for it."""
    server = net.start(
        net.server_ns,
        [
            sys.executable,
            "-m",
            "sfu",
            "serve",
            "--http-listen",
            f"{net.server_ip}:{HTTP_PORT}",
            "--media-listen",
            net.server_ip,
            "--media-port",
            str(MEDIA_PORT),
            "--streaming-admin-key",
            ADMIN_KEY,
            "--streaming-db",
            ":memory:",
            "--log-level",
            "warning",
        ],
        work / f"watchers-sfu-{n}-server.log",
        f"sfu serve ({n} watchers)",
        _server_env(opts.engine, pythonpath),
        opts.server_cpu,
        opts.nice,
    )
    url = f"http://{net.server_ip}:{HTTP_PORT}"
    return server, ["--url", url, "--key", ADMIN_KEY]


def _start_janus(
    net: BenchNet, work: Path, n: int, opts: WatchersOptions
) -> tuple[LineProcess, list[str]]:
    """Janus in the server namespace on a fresh configuration; the load client's arguments."""
    setup = janus_setup(net, opts)
    folder = work / f"janus-{n}"
    janus.write_config(folder, setup)
    log = work / f"watchers-janus-{n}-server.log"
    server = net.start(
        net.server_ns,
        [*janus.janus_argv(folder), "-N", "-L", str(log)],
        work / f"watchers-janus-{n}-server.stderr",
        f"janus ({n} watchers)",
        None,
        opts.server_cpu,
        opts.nice,
    )
    server.log_path = log  # error messages quote Janus's own log (its stderr stays empty)
    return server, ["--url", setup.url, "--janus", str(setup.mountpoint)]


def _ok(reply: dict[str, Any], what: str, server: LineProcess) -> dict[str, Any]:
    if "error" in reply:
        raise BenchError(f"{what}: {reply['error']} (server log: {server.stderr_tail(800)})")
    return reply


def _connect(client: LineProcess, n: int, result: WatchersResult, say: Progress, tag: str) -> None:
    client.send(f"connect {n}")
    deadline = time.monotonic() + 120 + n * 0.5
    while True:
        reply = client.read(timeout=max(1.0, deadline - time.monotonic()))
        if reply.get("event") == "progress":
            say(f"watchers {tag}: {reply['connected']}/{n} connected, {reply['failed']} failed")
            continue
        if "error" in reply:
            raise BenchError(f"connecting watchers: {reply['error']}")
        break
    result.connected = int(reply["connected"])
    result.failed = int(reply["failed"])
    result.connect_errors = list(reply["errors"])
    result.connect_wall_s = float(reply["seconds"])
    result.connect_ms = [float(x) for x in reply["connect_ms"]]
    result.profiles = dict(reply["profiles"])
    p50, p95 = percentile(result.connect_ms, 0.5), percentile(result.connect_ms, 0.95)
    say(
        f"watchers {tag}: {result.connected} connected, {result.failed} failed in "
        f"{result.connect_wall_s:.1f} s; connect p50 {p50 or 0:.0f} ms, p95 {p95 or 0:.0f} ms"
    )


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += procfs.cpu_seconds(pid)
        except OSError:
            pass
    return total


def _measure(
    server: LineProcess,
    client: LineProcess,
    pub: LineProcess,
    load_pids: list[int],
    window_s: float,
    result: WatchersResult,
) -> None:
    s0 = _ok(client.request("reset"), "starting the window", server)["server"]
    p0 = pub.request("stats")
    u0 = procfs.udp_counters(server.pid)
    c0, l0, b0 = procfs.cpu_seconds(server.pid), _cpu(load_pids), procfs.busy_seconds()
    w0 = time.monotonic()
    time.sleep(window_s)
    report = _ok(client.request("report", timeout=30), "reading the receiver", server)
    c1, l1, b1 = procfs.cpu_seconds(server.pid), _cpu(load_pids), procfs.busy_seconds()
    u1 = procfs.udp_counters(server.pid)
    p1 = pub.request("stats")
    w1 = time.monotonic()
    rx, s1 = report["rx"], report["server"]
    result.window_s = float(rx["window_s"]) or (w1 - w0)
    result.server_cpu_s = c1 - c0
    result.load_cpu_s = l1 - l0
    result.machine_busy_s = (b1 - b0) * result.window_s / (w1 - w0)
    result.udp_out = u1.get("OutDatagrams", 0) - u0.get("OutDatagrams", 0)
    result.server_rcvbuf_errors = u1.get("RcvbufErrors", 0) - u0.get("RcvbufErrors", 0)
    result.server_sndbuf_errors = u1.get("SndbufErrors", 0) - u0.get("SndbufErrors", 0)
    if "engine_counters" in s1:  # sfu: its engine's own counters
        result.server_out = int(s1["engine_counters"]["datagrams_out"]) - int(
            s0["engine_counters"]["datagrams_out"]
        )
        result.server_in = int(s1["engine_counters"]["datagrams_in"]) - int(
            s0["engine_counters"]["datagrams_in"]
        )
    else:  # Janus has no such counter: everything the server namespace sent
        result.server_out = result.udp_out
    result.published = (int(p1["video"]) + int(p1["audio"])) - (int(p0["video"]) + int(p0["audio"]))
    result.received = int(rx["rtp"])
    result.expected = int(rx["video_expected"]) + int(rx["audio_expected"])
    result.lost = int(rx["video_lost"]) + int(rx["audio_lost"])
    result.silent = int(rx["silent"])
    result.auth_failures = int(rx["auth_failures"])
    result.bad_payload = int(rx["bad_payload"])
    result.samples = int(rx["samples"])
    result.p50_us = float(rx["p50_us"])
    result.p99_us = float(rx["p99_us"])
    result.first_media_ms = [float(x) for x in rx["first_media_ms"]]
    result.consent_alive = int(rx["consent_alive"])
    result.viewers = int(report.get("viewers") or 0)
    result.ingest_lost = sum(int(m.get("lost", 0)) for m in report.get("ingest", []))
    result.hangups = int(report.get("hangups") or 0)
