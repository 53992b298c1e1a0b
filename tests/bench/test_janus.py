"""Janus as the watchers bench's second target: its generated configuration, the Janus/sfu
ratios, and a smoke run of the real Janus from Debian in the bench's namespaces (3 watchers that
answer its offers, ICE + DTLS-SRTP, media counted by the C receiver)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sfu.bench.build import build_tools
from sfu.bench.janus import JanusSetup, janus_available, janus_version, write_config
from sfu.bench.report import BenchReport, WatchersResult, format_table, watchers_ratios
from sfu.bench.topology import BenchNet
from sfu.bench.watchers import AUDIO_PT, VIDEO_PT, WatchersOptions, run_watchers

ROOT = Path(__file__).resolve().parents[2]
SETUP = JanusSetup(
    ip="198.51.100.1",
    device="sfubXa",
    http_port=8088,
    video_port=50004,
    audio_port=50002,
    video_pt=VIDEO_PT,
    audio_pt=AUDIO_PT,
)


def test_config_keeps_only_streaming_and_http(tmp_path: Path) -> None:
    libs = tmp_path / "lib"
    for sub, names in {
        "plugins": ["libjanus_streaming.so", "libjanus_videoroom.so", "libjanus_sip.so"],
        "transports": ["libjanus_http.so", "libjanus_websockets.so"],
        "events": ["libjanus_sampleevh.so"],
        "loggers": ["libjanus_jsonlog.so"],
    }.items():
        (libs / sub).mkdir(parents=True)
        for name in names:
            (libs / sub / name).write_bytes(b"")
    conf = tmp_path / "conf"
    write_config(conf, SETUP, libs)
    core = (conf / "janus.jcfg").read_text()
    assert 'disable = "libjanus_sip.so,libjanus_videoroom.so"' in core
    assert 'disable = "libjanus_websockets.so"' in core
    assert 'disable = "libjanus_sampleevh.so"' in core and 'disable = "libjanus_jsonlog.so"' in core
    assert 'ice_enforce_list = "sfubXa"' in core and "stun" not in core and "turn" not in core
    assert "event_loops = 1" in core and f'configs_folder = "{conf}"' in core
    http = (conf / "janus.transport.http.jcfg").read_text()
    assert 'ip = "198.51.100.1"' in http and "port = 8088" in http
    streaming = (conf / "janus.plugin.streaming.jcfg").read_text()
    assert "port = 50004" in streaming and f"pt = {VIDEO_PT}" in streaming
    assert "port = 50002" in streaming and f"pt = {AUDIO_PT}" in streaming
    assert SETUP.url == "http://198.51.100.1:8088/janus"


def test_ratios_pair_janus_with_sfu_of_the_same_count() -> None:
    def result(target: str, n: int, cpu_s: float, udp_out: int) -> WatchersResult:
        w = WatchersResult(watchers=n, target=target, connected=n, window_s=2.0)
        w.server_cpu_s, w.udp_out, w.server_out = cpu_s, udp_out, udp_out
        w.rss_before, w.rss_after = 1 << 20, (1 << 20) + n * 1024
        w.connect_ms = [10.0] if target == "sfu" else [40.0]
        return w

    sfu, jan = result("sfu", 50, 0.1, 10_000), result("janus", 50, 0.25, 10_000)
    lone = result("janus", 100, 0.5, 20_000)  # no sfu run of 100: no ratio
    (ratio,) = watchers_ratios([sfu, jan, lone])
    assert ratio.watchers == 50 and ratio.cpu_us_per_pkt == pytest.approx(2.5)
    assert ratio.server_cores == pytest.approx(2.5) and ratio.rss_per_watcher == 1.0
    assert ratio.connect_ms_p50 == 4.0
    table = format_table(BenchReport({}, "cython", False, {}, watchers=[sfu, jan, lone]))
    assert "| janus | 50 | 50 |" in table and "| 50 | 2.50 | 2.50 | 1.00 | 4.00 |" in table


@pytest.mark.netns
@pytest.mark.slow
def test_real_janus_serves_three_watchers(tmp_path: Path) -> None:
    why = janus_available()
    if why is not None:
        pytest.skip(why)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    if shutil.which("cc") is None or not Path("/usr/include/openssl/evp.h").exists():
        pytest.skip("needs cc and libssl-dev")
    assert janus_version() != "unknown"
    tools = build_tools(tmp_path / "bin")
    opts = WatchersOptions(window_s=2.0, settle_s=0.5, concurrency=3)
    lines: list[str] = []
    with BenchNet(f"j{os.getpid() % 10000}") as net:
        w = run_watchers(net, tmp_path, tools, 3, opts, str(ROOT), lines.append, "janus")
    assert w.error == "", f"{w.error}\n" + "\n".join(lines)
    assert w.target == "janus" and w.connected == 3 and w.failed == 0
    info = w.server_info  # what Janus says it runs with: the generated configuration
    assert info["version_string"] == janus_version() and info["static-event-loops"] == 1
    assert info["event_handlers"] is False and info["ice-lite"] is False
    assert w.profiles and sum(w.profiles.values()) == 3
    assert w.received > 0 and w.silent == 0 and w.samples > 0
    assert w.auth_failures == 0 and w.bad_payload == 0  # Janus's SRTP, our keys, our payload
    assert w.consent_alive == 3 and w.hangups == 0
    assert w.udp_out >= w.received and w.server_cpu_s > 0 and w.cpu_us_per_pkt > 0
    assert 0 <= w.loss < 0.02 and len(w.connect_ms) == 3
