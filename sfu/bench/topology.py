"""The bench's network: a server namespace and a load namespace joined by one veth pair.

Addresses come from TEST-NET-2 (198.51.100.0/24): the server is .1, the load side .2. Every
process the bench starts lives in one of the two namespaces and is tracked by PID; leaving the
``with`` block (normally, on an error or on Ctrl-C) stops them and deletes both namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfu.natlab import netns

SERVER_IP = "198.51.100.1"
LOAD_IP = "198.51.100.2"
PREFIX_LEN = 24


class BenchError(RuntimeError):
    """The bench could not run a step."""


class BenchUnavailable(BenchError):
    """This machine cannot run the bench (not root, or a tool is missing)."""


def require_bench() -> None:
    """Raise BenchUnavailable unless we are root with ``ip`` and a C compiler."""
    if os.geteuid() != 0:
        raise BenchUnavailable("needs root: it builds network namespaces (run it with sudo)")
    for tool, package in (("ip", "iproute2"), ("cc", "gcc")):
        if shutil.which(tool) is None:
            raise BenchUnavailable(f"needs `{tool}` on PATH (Debian package {package})")
    if not Path("/usr/include/openssl/evp.h").exists():
        raise BenchUnavailable("needs the OpenSSL headers (Debian package libssl-dev)")


def _setup_child(cpu: int | None, nice: int) -> Callable[[], None] | None:
    if cpu is None and not nice:
        return None

    def setup() -> None:  # runs in the child before exec: every thread it makes inherits it
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if nice:
            os.nice(nice)

    return setup


class LineProcess:
    """A child process spoken to in lines: commands on stdin, one JSON object per reply line."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        name: str,
        env: dict[str, str] | None = None,
        cpu: int | None = None,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the runner only; it stops us by PID
            preexec_fn=_setup_child(cpu, nice),
        )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise BenchError(f"{self.name} exited: {self.stderr_tail()}") from exc

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line (other lines are skipped)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            if b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                if line.startswith(b"{"):
                    reply: dict[str, Any] = json.loads(line)
                    return reply
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name} did not answer in {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise BenchError(
                        f"{self.name} exited (status {self.proc.returncode}): {self.stderr_tail()}"
                    )
                self._buf += chunk

    def request(self, line: str, timeout: float = 10.0) -> dict[str, Any]:
        self.send(line)
        return self.read(timeout)

    def stderr_tail(self, limit: int = 2000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-limit:].strip() or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Ask politely (quit / end of input), then stop it by PID."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                netns.kill_pid(self.proc.pid, grace=2.0)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=2)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()
        self._log.close()


class BenchNet:
    """Two namespaces (server, load) and a veth pair; the processes started in them."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or f"{os.getpid() % 100000}"
        self.prefix = f"sfub{tag}"
        self.server_ns = f"{self.prefix}srv"
        self.load_ns = f"{self.prefix}load"
        self.server_ip = SERVER_IP
        self.load_ip = LOAD_IP
        self.server_dev = f"{self.prefix}a"  # the veth end in the server namespace
        self.load_dev = f"{self.prefix}b"
        self._procs: list[LineProcess] = []

    def __enter__(self) -> BenchNet:
        try:
            self._build()
        except netns.LabError as exc:
            self.close()
            raise BenchError(f"could not build the bench network: {exc}") from exc
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for ns in (self.server_ns, self.load_ns):
            netns.ip(None, "netns", "add", ns)
            netns.ip(ns, "link", "set", "lo", "up")
        a, b = self.server_dev, self.load_dev
        netns.ip(
            None,
            "link",
            "add",
            a,
            "netns",
            self.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            self.load_ns,
        )
        netns.ip(self.server_ns, "addr", "add", f"{self.server_ip}/{PREFIX_LEN}", "dev", a)
        netns.ip(self.load_ns, "addr", "add", f"{self.load_ip}/{PREFIX_LEN}", "dev", b)
        netns.ip(self.server_ns, "link", "set", a, "up")
        netns.ip(self.load_ns, "link", "set", b, "up")

    def start(
        self,
        ns: str,
        argv: Sequence[str],
        log_path: Path,
        name: str,
        env: dict[str, str] | None = None,
        cpu: int | None = None,
        nice: int = 0,
    ) -> LineProcess:
        """Start argv inside ns (``ip netns exec`` execs it: the PID is the program's own),
        pinned to ``cpu`` when given, with ``nice`` added to its niceness."""
        proc = LineProcess(netns.ns_argv(ns, argv), log_path, name, env, cpu, nice)
        self._procs.append(proc)
        return proc

    def stop(self, proc: LineProcess) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        while self._procs:
            with contextlib.suppress(Exception):
                self._procs.pop().stop()
        for ns in (self.server_ns, self.load_ns):
            with contextlib.suppress(netns.LabError):
                netns.delete_namespace(ns)
