"""Debian's coturn (`turnserver`) as the lab's STUN/TURN server, run inside a namespace.

One process per :class:`Coturn`, started with every option on the command line (no config
file), its log and pid files in a work directory, stopped by its own PID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import LabError, LabUnavailable, ns_argv

PopenFactory = Callable[..., "subprocess.Popen[str]"]


DEFAULT_USER = ("natlab", "natlab-pass")


@dataclass(frozen=True)
class CoturnSpec:
    """What the lab's coturn offers.

    users: static long-term credentials (username, password); None means DEFAULT_USER unless
    shared_secret is set. shared_secret: the TURN REST API scheme (`rest_credentials`).
    coturn cannot mix the two (the secret overrides static users), so giving both is an
    error; with neither (users=()), TURN runs without authentication.
    """

    users: tuple[tuple[str, str], ...] | None = None
    shared_secret: str | None = None
    realm: str = "natlab.test"
    address: str = "192.0.2.1"
    port: int = 3478
    relay_address: str | None = None
    min_port: int = 49160
    max_port: int = 49260
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.users and self.shared_secret:
            raise ValueError(
                "coturn cannot mix static users with a REST shared secret (the secret wins)"
            )
        if not 0 < self.min_port <= self.max_port < 65536:
            raise ValueError("bad relay port range")

    @property
    def static_users(self) -> tuple[tuple[str, str], ...]:
        """The static users coturn is started with."""
        if self.users is None:
            return () if self.shared_secret else (DEFAULT_USER,)
        return self.users


def rest_credentials(secret: str, name: str, ttl: int, now: float) -> tuple[str, str]:
    """TURN REST API credentials: username `expiry:name`, password b64(HMAC-SHA1(secret, user))."""
    username = f"{int(now) + ttl}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def turnserver_argv(spec: CoturnSpec, workdir: Path) -> list[str]:
    """The `turnserver` command line for spec, writing its files under workdir."""
    argv = [
        "turnserver",
        "-n",
        "--listening-ip", spec.address,
        "--relay-ip", spec.relay_address or spec.address,
        "--listening-port", str(spec.port),
        "--min-port", str(spec.min_port),
        "--max-port", str(spec.max_port),
        "--realm", spec.realm,
        "--userdb", str(workdir / "turndb"),
        "--log-file", str(workdir / "turnserver.log"),
        "--pidfile", str(workdir / "turnserver.pid"),
        "--simple-log",
        "--no-stdout-log",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--fingerprint",
    ]  # fmt: skip
    if spec.verbose:
        argv.append("--verbose")
    if spec.shared_secret:
        argv += ["--use-auth-secret", "--static-auth-secret", spec.shared_secret]
    elif spec.static_users:
        argv.append("--lt-cred-mech")
        for user, password in spec.static_users:
            argv += ["--user", f"{user}:{password}"]
    else:
        argv.append("--no-auth")
    return argv


class Coturn:
    """A running turnserver in namespace `ns`; `stop()` ends it by PID."""

    def __init__(
        self,
        ns: str,
        spec: CoturnSpec,
        workdir: Path,
        popen_factory: PopenFactory | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        if shutil.which("turnserver") is None:
            raise LabUnavailable("turnserver not found (Debian: apt-get install coturn)")
        self.ns = ns
        self.spec = spec
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        argv = turnserver_argv(spec, workdir)
        self._proc = (popen_factory or _popen_in)(
            ns,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """PID of the turnserver process (`ip netns exec` execs it in place)."""
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        """Where turnserver writes its log."""
        return self.workdir / "turnserver.log"

    @property
    def server(self) -> tuple[str, int]:
        """(address, port) for STUN and TURN over UDP."""
        return self.spec.address, self.spec.port

    @property
    def urls(self) -> list[str]:
        """ICE server URLs (RFC 7064/7065) for this server."""
        host, port = self.server
        return [f"stun:{host}:{port}", f"turn:{host}:{port}?transport=udp"]

    def credentials(self) -> tuple[str, str] | None:
        """The first static (username, password), or None."""
        users = self.spec.static_users
        return users[0] if users else None

    def rest_credentials(self, name: str, ttl: int, now: float) -> tuple[str, str]:
        """REST API credentials valid for ttl seconds after now (needs a shared_secret)."""
        if not self.spec.shared_secret:
            raise LabError("this coturn has no shared_secret")
        return rest_credentials(self.spec.shared_secret, name, ttl, now)

    def log_text(self) -> str:
        """The log so far (empty if not written yet)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        """True while the process has not exited."""
        return self._proc.poll() is None

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after grace seconds; idempotent."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr is not None:
            self._proc.stderr.close()

    def _wait_ready(self, timeout: float) -> None:
        needle = _proc_net_udp_key(self.spec.address, self.spec.port)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read() if self._proc.stderr else ""
                raise LabError(
                    f"turnserver exited with {self._proc.returncode}: {err.strip()}\n"
                    f"{_tail(self.log_text())}"
                )
            if _listening(self.pid, needle):
                return
            if time.monotonic() > deadline:
                raise LabError(
                    f"turnserver not listening on {self.spec.address}:{self.spec.port} after "
                    f"{timeout:.0f} s\n{_tail(self.log_text())}"
                )
            time.sleep(0.02)


def _popen_in(ns: str, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = subprocess.Popen(ns_argv(ns, argv), **popen_kw)
    return proc


def _proc_net_udp_key(address: str, port: int) -> str:
    """The local-address column /proc/net/udp shows for address:port (little-endian hex)."""
    packed = ipaddress.IPv4Address(address).packed
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def _listening(pid: int, key: str) -> bool:
    """Is there a UDP socket bound to key in the namespace of pid?"""
    try:
        with open(f"/proc/{pid}/net/udp", encoding="ascii") as f:
            lines: Sequence[str] = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == key for line in lines if line.strip())


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.splitlines()[-lines:])
