"""Helpers for tests that build their own hosts in network namespaces and run real processes."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def need_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (ip)")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def netns(tag: str) -> Iterator[str]:
    """A fresh network namespace with lo up, deleted afterwards."""
    name = f"sfut{os.getpid() % 10000}{tag}{secrets.token_hex(2)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def add_address(ns: str, cidr: str) -> None:
    """A non-loopback address inside ``ns`` (on a veth pair whose both ends stay in ``ns``;
    this kernel has no dummy interfaces). WebRTC clients such as aiortc skip loopback."""
    ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    ip("-n", ns, "addr", "add", cidr, "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0p", "up")
    ip("-n", ns, "link", "set", "eth0", "up")


def link(ns_a: str, cidr_a: str, ns_b: str, cidr_b: str) -> None:
    """A veth pair between two namespaces, addressed and up."""
    tag = secrets.token_hex(3)
    a, b = f"va{tag}", f"vb{tag}"
    ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
    for ns, cidr, dev in ((ns_a, cidr_a, a), (ns_b, cidr_b, b)):
        extra = ["nodad"] if ":" in cidr else []  # an IPv6 address is usable at once
        ip("-n", ns, "addr", "add", cidr, "dev", dev, *extra)
    ip("-n", ns_a, "link", "set", a, "up")
    ip("-n", ns_b, "link", "set", b, "up")


def in_ns(ns: str | None, argv: list[str]) -> list[str]:
    return (["ip", "netns", "exec", ns] if ns else []) + argv


@contextlib.contextmanager
def sfu_process(
    ns: str | None, *args: str, timeout: float = 20.0
) -> Iterator[subprocess.Popen[str]]:
    """`sfu serve` in a namespace; waits until it says it is serving; stopped by PID afterwards."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log_path = Path(f"/tmp/sfu-test-{os.getpid()}-{secrets.token_hex(3)}.log")
    log = log_path.open("w+")
    proc = subprocess.Popen(
        in_ns(ns, [sys.executable, "-m", "sfu", "serve", *args]),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            text = log_path.read_text()
            if "sfu serving" in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sfu did not start (exit {proc.poll()}):\n{text}")
            time.sleep(0.05)
        proc.log_path = log_path  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        with contextlib.suppress(OSError):
            log_path.unlink()


def run_json(ns: str | None, argv: list[str], timeout: float = 60.0) -> dict[str, object]:
    """Run a client script (in a namespace), return the JSON object it prints last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        in_ns(ns, argv), capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(
            f"client printed no result (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    result: dict[str, object] = json.loads(lines[-1])
    result["_stderr"] = out.stderr[-4000:]
    return result


def http_get_json(ns: str | None, url: str) -> dict[str, object]:
    """GET a JSON document from inside a namespace."""
    code = f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    out = subprocess.run(
        in_ns(ns, [sys.executable, "-c", code]), capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        raise AssertionError(f"GET {url} failed: {out.stderr}")
    result: dict[str, object] = json.loads(out.stdout)
    return result
