"""Thin wrappers that run `ip`, `iptables`, `conntrack` and `sysctl` inside a network namespace.

Every helper takes the namespace name first and raises :class:`CommandError` (with the command
line and its stderr) when the tool fails, so a broken lab says what broke. Nothing here keeps
state; the :class:`~sfu.natlab.topology.Lab` owns what it creates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REQUIRED_TOOLS = ("ip", "iptables", "iptables-restore", "iptables-save", "conntrack", "sysctl")


class LabError(RuntimeError):
    """The lab could not be built or driven."""


class LabUnavailable(LabError):
    """This machine cannot run the lab (not root, or a tool or kernel feature is missing)."""


class CommandError(LabError):
    """A lab command exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"`{' '.join(self.argv)}` failed (exit {returncode}): {self.stderr}")


def require_lab(extra_tools: Sequence[str] = ()) -> None:
    """Raise LabUnavailable unless we are root and every needed tool is on PATH."""
    if os.geteuid() != 0:
        raise LabUnavailable("the NAT lab needs root (network namespaces and iptables)")
    missing = [t for t in (*REQUIRED_TOOLS, *extra_tools) if shutil.which(t) is None]
    if missing:
        raise LabUnavailable(
            f"the NAT lab needs {', '.join(missing)} on PATH (Debian packages: iproute2 "
            "iptables conntrack procps, coturn for turnserver)"
        )


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """The command line that runs argv inside namespace ns (or as is when ns is None)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run(argv: Sequence[str], *, stdin: str | None = None, timeout: float = 15.0) -> str:
    """Run argv, return its stdout; raise CommandError on a non-zero exit."""
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise LabUnavailable(f"{argv[0]} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(argv)}` did not finish in {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr)
    return proc.stdout


def ip(ns: str | None, *args: str) -> str:
    """`ip -n NS ARGS...`."""
    return run(["ip", *(["-n", ns] if ns else []), *args])


def iptables(ns: str, *args: str) -> str:
    """`iptables ARGS...` inside ns (use `-t nat` etc. in args)."""
    return run(ns_argv(ns, ["iptables", "-w", *args]))


def iptables_restore(ns: str, rules: str) -> None:
    """Load a whole iptables-save style ruleset atomically (replaces the named tables)."""
    run(ns_argv(ns, ["iptables-restore", "-w"]), stdin=rules)


def rule_counters(ns: str, table: str = "filter") -> list[tuple[int, str]]:
    """(packets, rule) for every rule of a table, rule as `-A CHAIN ...` text."""
    out = run(ns_argv(ns, ["iptables-save", "-c", "-t", table]))
    rows: list[tuple[int, str]] = []
    for line in out.splitlines():
        if line.startswith("[") and "] -A " in line:
            counts, rule = line.split("] ", 1)
            rows.append((int(counts[1:].split(":")[0]), rule))
    return rows


def rule_packets(ns: str, table: str, rule: str) -> int:
    """Packet count of the one rule whose text equals `rule` (as iptables-save prints it)."""
    for packets, text in rule_counters(ns, table):
        if text == rule:
            return packets
    raise LabError(f"no rule {rule!r} in table {table} of {ns}")


def conntrack(ns: str, *args: str) -> str:
    """`conntrack ARGS...` inside ns; stdout only (the summary line goes to stderr)."""
    return run(ns_argv(ns, ["conntrack", *args]))


def sysctl(ns: str, settings: Mapping[str, str | int]) -> None:
    """Set sysctls (dotted names, e.g. `net.ipv4.ip_forward`) inside ns."""
    run(ns_argv(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]))


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in ip(None, "netns", "list").splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    """PIDs of the processes living in ns."""
    try:
        out = run(["ip", "netns", "pids", ns])
    except CommandError:
        return []
    return [int(p) for p in out.split()]


def kill_pid(pid: int, grace: float = 2.0) -> None:
    """SIGTERM one PID, then SIGKILL it if it is still there after `grace` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def _alive(pid: int) -> bool:
    """Running and not a zombie (never reaps: a Popen owner must still get its status)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def delete_namespace(ns: str) -> None:
    """Kill every process inside ns (by PID), then delete it. Missing ns is fine."""
    for pid in namespace_pids(ns):
        kill_pid(pid)
    try:
        ip(None, "netns", "del", ns)
    except CommandError:
        if ns in list_namespaces():
            raise


def cleanup_stale(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with prefix (and its processes); return them.

    Use the exact prefix of a lab that died without cleaning up (`Lab.prefix`, printed in
    errors): other labs on the machine have other prefixes and are left alone.
    """
    if len(prefix) < 3:
        raise ValueError(f"prefix {prefix!r} is too broad; pass a lab's own prefix")
    gone = [ns for ns in list_namespaces() if ns.startswith(prefix)]
    for ns in gone:
        delete_namespace(ns)
    return gone


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll predicate every 10 ms until true; raise LabError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(0.01)


_PEER_SCRIPT = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print(json.dumps({"bound": s.getsockname()}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "send":
        s.sendto(bytes.fromhex(cmd["data"]), tuple(cmd["to"]))
        print(json.dumps({"sent": True}), flush=True)
    elif cmd["op"] == "recv":
        s.settimeout(cmd["timeout"])
        try:
            data, addr = s.recvfrom(65535)
            print(json.dumps({"data": data.hex(), "from": addr}), flush=True)
        except socket.timeout:
            print(json.dumps({"timeout": True}), flush=True)
"""


class UdpPeer:
    """A UDP socket living in a namespace, driven line by line from this process.

    Each call returns only after the helper process did the work, so tests can order sends
    across namespaces without sleeping.
    """

    def __init__(
        self,
        popen_factory: Callable[..., subprocess.Popen[str]],
        ns: str,
        port: int,
        bind_ip: str = "0.0.0.0",
    ) -> None:
        self.ns = ns
        self._proc = popen_factory(
            ns,
            [sys.executable, "-c", _PEER_SCRIPT, bind_ip, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        bound = self._reply()["bound"]
        self.addr: tuple[str, int] = (bound[0], int(bound[1]))

    @property
    def pid(self) -> int:
        """PID of the helper process."""
        return self._proc.pid

    def send(self, to: tuple[str, int], data: bytes) -> None:
        """Send one datagram from this socket to `to`."""
        self._call({"op": "send", "to": list(to), "data": data.hex()})

    def recv(self, timeout: float = 1.0) -> tuple[bytes, tuple[str, int]] | None:
        """Next datagram and its source address, or None after timeout seconds."""
        reply = self._call({"op": "recv", "timeout": timeout})
        if reply.get("timeout"):
            return None
        src = reply["from"]
        return bytes.fromhex(reply["data"]), (src[0], int(src[1]))

    def close(self) -> None:
        """Stop the helper process."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> UdpPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(cmd) + "\n")
        self._proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise LabError(f"UDP peer in {self.ns} exited (status {self._proc.returncode})")
        reply: dict[str, Any] = json.loads(line)
        return reply
