"""``sfu bench``: the plan format, the report, the C tools on loopback, and the --quick smoke run.

The smoke run needs root (network namespaces) and checks the JSON's shape and sanity, never a
performance threshold: the figures belong in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfu.bench.build import build_tools
from sfu.bench.plan import PLAIN, SCENARIOS, build_plan, parse_plan
from sfu.bench.report import (
    BenchReport,
    MemoryResult,
    TargetResult,
    Trial,
    WatchersResult,
    format_table,
    percentile,
)
from sfu.engine.base import SrtpProfile

ROOT = Path(__file__).resolve().parents[2]


def _have_toolchain() -> bool:
    return shutil.which("cc") is not None and Path("/usr/include/openssl/evp.h").exists()


# -- plan -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_plan_shape(name: str) -> None:
    s = SCENARIOS[name]
    plan = build_plan(
        s, SrtpProfile.AEAD_AES_128_GCM, ("198.51.100.1", 5000), "198.51.100.2", 20000
    )
    assert len(plan.streams) == 2 * s.publishers
    assert len(plan.consumers) == s.consumers
    dst = [c.dst_ssrc for c in plan.consumers]
    assert len(set(dst)) == len(dst)
    assert all(c.src_tid != c.dst_tid for c in plan.consumers)
    assert all(len(t.keys.up_salt) == 12 for t in plan.transports)
    # every receiver gets every stream it does not publish
    for t in plan.transports:
        got = {c.src_ssrc for c in plan.consumers if c.dst_tid == t.tid}
        own = {st.ssrc for st in plan.streams if st.tid == t.tid}
        if s.room or not own:
            assert got == {st.ssrc for st in plan.streams} - own


def test_plan_round_trip() -> None:
    plan = build_plan(
        SCENARIOS["room-10x10"],
        SrtpProfile.AES_CM_128_HMAC_SHA1_80,
        ("198.51.100.1", 5000),
        "198.51.100.2",
        20000,
    )
    again = parse_plan(plan.dump())
    assert again == plan
    with pytest.raises(ValueError, match="plan line 2"):
        parse_plan("profile 1\nbogus 1 2\n")


# -- report ---------------------------------------------------------------------------------------


def _trial(expected: int, on_time: int, cpu: float, out: int, p99: float) -> Trial:
    return Trial(
        video_pps=1000,
        seconds=2.0,
        sent=expected // 10,
        expected=expected,
        received_on_time=on_time,
        received=on_time,
        gaps=expected - on_time,
        late=0,
        auth_failures=0,
        replayed=0,
        unknown=0,
        bad_payload=0,
        send_errors=0,
        behind_ticks=0,
        loadgen_cpu_s=0.2,
        samples=100,
        p50_us=p99 / 4,
        p90_us=p99 / 2,
        p99_us=p99,
        p999_us=p99,
        max_us=p99,
        server_cpu_s=cpu,
        server_out=out,
        machine_busy_s=cpu + 0.5,
    )


def test_report_ratios_and_targets() -> None:
    def result(target: str, cpu: float, p99: float) -> TargetResult:
        r = TargetResult("fanout-10", "AEAD_AES_128_GCM", target, target, 1, 10, 20, 10)
        r.best = _trial(200_000, 200_000, cpu, 200_000, p99)
        r.half = _trial(100_000, 100_000, cpu / 2, 100_000, p99)
        r.ref_trials = [r.half, _trial(100_000, 100_000, cpu, 100_000, p99), r.half]
        r.trials = [r.best, _trial(300_000, 290_000, 1.0, 290_000, p99)]
        return r

    report = BenchReport({"nproc": 2}, "cython", True, {})
    report.results = [result("engine", 0.9, 1500.0), result("floor", 0.8, 1000.0)]
    report.memory = [
        MemoryResult(
            "fanout-200",
            "AEAD_AES_128_GCM",
            "cython",
            subscribers=200,
            consumers=400,
            rss_base=10 << 20,
            rss_first=11 << 20,
            rss_half=14 << 20,
            half_subscribers=100,
            rss_full=16 << 20,
            video_packets=600,
        )
    ]
    assert not report.results[0].trials[1].passed  # 3.3% loss
    assert report.results[0].best is not None and report.results[0].best.passed
    (ratio,) = report.ratios()
    assert ratio.cpu_ratio == pytest.approx(0.9 / 0.8)
    assert ratio.p99_ratio == pytest.approx(1.5)
    targets = {t["name"]: t for t in report.targets()}
    assert targets["cpu_per_packet_ratio"]["met"] is True
    assert targets["p99_us_at_half_max"]["met"] is True
    assert targets["bytes_per_subscriber_excl_cache"]["worst"] == pytest.approx(5 * 2**20 / 199)
    data = json.loads(report.dumps())
    assert data["results"][0]["cpu_us_per_pkt_max"] == pytest.approx(4.5)
    assert data["memory"][0]["per_subscriber_bytes"] == pytest.approx(6 * 2**20 / 200)
    assert data["memory"][0]["per_subscriber_marginal_bytes"] == pytest.approx(2 * 2**20 / 100)
    assert data["memory"][0]["per_subscriber_marginal_bytes"] == pytest.approx(2 * 2**20 / 100)


def test_watchers_result_figures() -> None:
    w = WatchersResult(watchers=4, connected=4, window_s=2.0, published=400, received=1590)
    w.expected, w.lost = 1595, 5
    w.server_cpu_s, w.server_out = 0.1, 1600
    w.rss_before, w.rss_after = 50 << 20, (50 << 20) + 4 * 100 * 1024
    w.connect_ms = [10.0, 20.0, 30.0, 40.0]
    assert w.loss == pytest.approx(5 / 1595)
    assert w.delivered == pytest.approx(1590 / 1600)
    assert w.out_pps == 800 and w.server_cores == pytest.approx(0.05)
    assert w.cpu_us_per_pkt == pytest.approx(62.5)
    assert w.rss_per_watcher == 100 * 1024
    data = w.to_json()
    assert data["connect_ms_p50"] == 20.0 and data["connect_ms_p95"] == 40.0
    assert data["server_cpu_percent"] == pytest.approx(5.0)
    assert percentile([], 0.5) is None and percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    report = BenchReport({"nproc": 2}, "cython", True, {}, watchers=[w])
    table = format_table(report)
    assert "| 4 | 4 | 20 / 40 |" in table and "| 62.50 |" in table
    assert json.loads(report.dumps())["watchers"][0]["delivered"] == pytest.approx(1590 / 1600)


# -- the C tools, on loopback (no namespaces needed) ---------------------------------------------


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not _have_toolchain():
        pytest.skip("needs cc and libssl-dev")
    return build_tools(tmp_path_factory.mktemp("bench-bin"))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                stream.close()


def _spawn(argv: list[str], started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    started.append(p)
    return p


def _ask(p: subprocess.Popen[str], line: str | None = None) -> dict[str, Any]:
    assert p.stdin is not None and p.stdout is not None
    if line is not None:
        p.stdin.write(line + "\n")
        p.stdin.flush()
    reply: dict[str, Any] = json.loads(p.stdout.readline())
    return reply


@pytest.mark.parametrize("profile", [PLAIN, *SrtpProfile])
def test_floor_and_loadgen_on_loopback(
    tools: Any, procs: list[subprocess.Popen[str]], tmp_path: Path, profile: int
) -> None:
    port = 30000 + os.getpid() % 5000 + 100 * (profile % 8)
    plan = build_plan(SCENARIOS["fanout-10"], profile, ("127.0.0.1", port), "127.0.0.1", port + 1)
    path = plan.write(tmp_path / "plan")
    floor = _spawn([str(tools.floor), str(path)], procs)
    assert _ask(floor)["ready"]
    load = _spawn([str(tools.loadgen), str(path), "-s", "4"], procs)
    assert _ask(load)["consumers"] == 20
    assert _ask(load, "trial 500 0.3 50") == {"event": "started"}
    r = _ask(load)
    assert r["sent"] > 150 and r["expected"] == 10 * r["sent"]
    assert r["received"] == r["expected"]
    assert r["gaps"] == 0 and r["auth_failures"] == 0 and r["bad_payload"] == 0
    assert r["samples"] > 0 and 0 < r["p50_us"] <= r["p99_us"]
    stats = _ask(floor, "stats")
    assert stats["out"] == r["expected"] and stats["srtp_errors"] == 0


# -- the smoke run --------------------------------------------------------------------------------


@pytest.mark.netns
@pytest.mark.slow
def test_bench_quick(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    if not _have_toolchain():
        pytest.skip("needs cc and libssl-dev")
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfu", "bench", "--quick", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "half max" in stderr  # the progress display
    assert "| scenario |" in stdout  # the table
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["engine"] in ("python", "cython")
    assert data["machine"]["nproc"] >= 1 and data["machine"]["kernel"]
    results = data["results"]
    profiles = {p.name for p in SrtpProfile}
    for target in ("engine", "floor"):
        assert {r["profile"] for r in results if r["target"] == target} == profiles
    for r in results:
        assert r["error"] == "", r["error"]
        assert r["server_counters"]["srtp_errors"] == 0
        assert r["max_out_pps"] > 0
        assert r["cpu_us_per_pkt_max"] > 0 and r["cpu_us_per_pkt_ref"] > 0
        assert r["loss_at_max"] is not None and 0 <= r["loss_at_max"] < 0.001
        assert r["loss_at_half"] is not None and r["p99_us"] >= r["p50_us"] > 0
        for trial in r["trials"]:
            assert trial["server_out"] > 0 and trial["sent"] > 0
            assert trial["auth_failures"] == 0 and trial["bad_payload"] == 0
            assert 0 <= trial["loss"] <= 1
    assert len(data["ratios"]) == 2
    for ratio in data["ratios"]:
        assert ratio["cpu_ratio"] > 0 and ratio["cpu_ratio_max"] > 0
        assert ratio["max_rate_ratio"] > 0 and ratio["p99_ratio"] > 0
    assert {m["profile"] for m in data["memory"]} == profiles
    for m in data["memory"]:
        assert m["rss_full"] > 0 and m["subscribers"] == 10 and m["consumers"] == 20
        assert m["half_subscribers"] == 5 and m["per_subscriber_marginal_bytes"] is not None
    assert {t["name"] for t in data["targets"]} == {
        "cpu_per_packet_ratio",
        "p99_us_at_half_max",
        "bytes_per_subscriber_excl_cache",
    }
    # the mountpoint scenario: the real sfu serve, RTP in, WHEP watchers out
    assert "| watchers | connected |" in stdout and "watchers sfu 5:" in stderr
    (w,) = data["watchers"]
    assert w["error"] == "", w["error"]
    assert w["watchers"] == w["connected"] == w["viewers"] == 5 and w["failed"] == 0
    assert w["consent_alive"] == 5 and w["silent"] == 0
    assert w["published"] > 0 and w["received"] > 0 and w["server_out"] > 0
    assert 0 <= w["loss"] < 0.02 and w["delivered"] > 0.9
    assert w["auth_failures"] == 0 and w["bad_payload"] == 0 and w["samples"] > 0
    assert w["server_cpu_s"] > 0 and w["cpu_us_per_pkt"] > 0 and w["server_cpu_percent"] > 0
    assert w["rss_after"] > 0 and w["rss_before"] > 0
    assert len(w["connect_ms"]) == 5 and w["connect_ms_p95"] >= w["connect_ms_p50"] > 0
    assert len(w["first_media_ms"]) == 5 and w["first_media_ms_p50"] > 0
    assert w["p99_us"] >= w["p50_us"] > 0
    prefix = f"sfub{proc.pid % 100000}"  # topology.BenchNet's names
    assert not any(name.startswith(prefix) for name in _namespaces())  # cleaned up


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
