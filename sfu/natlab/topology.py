"""The lab's topology: a Docker host, an "internet" router with coturn, and NATed clients.

::

    container 172.17.0.2 --docker0-- dockerhost 198.51.100.1 --- internet 198.51.100.254
                                                                   |  192.0.2.1 (coturn)
                                                                   |  203.0.113.254 (bridge)
            client 203.0.113.1x (open / filtered)  ----------------+
            client 172.20.i.2 -- router 203.0.113.1x (home / masquerade / symmetric)

Every address is from the documentation ranges or 172.16/12, inside namespaces the lab made;
no namespace has a route to anything outside the lab. Namespace names start with a prefix
unique to the lab (`sl<pid%10000><n>_`), so labs can coexist and `cleanup_stale` can find
the leftovers of one that died.
"""

from __future__ import annotations

import atexit
import enum
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from . import netns
from .coturn import Coturn, CoturnSpec
from .netns import CommandError, LabError, LabUnavailable, UdpPeer

HOST_IP = "198.51.100.1"
MACVLAN_IP = "198.51.100.2"
INTERNET_HOST_SIDE_IP = "198.51.100.254"
INTERNET_CLIENT_SIDE_IP = "203.0.113.254"
SERVICE_IP = "192.0.2.1"
DOCKER_BRIDGE_IP = "172.17.0.1"
CONTAINER_IP = "172.17.0.2"
DOCKER_SUBNET = "172.17.0.0/16"
STUN_PORT = 3478
_CLIENT_BASE = 10  # client i's public address is 203.0.113.(10 + i)
_MAX_CLIENTS = 200
_LAB_RANGES = tuple(
    ipaddress.IPv4Network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "172.16.0.0/12")
)
_PREFIX_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"


class ServerMode(enum.Enum):
    """Where the server runs."""

    BRIDGE = "bridge"  # in a container on Docker's default bridge (MASQUERADE + DNAT)
    HOST_NETWORK = "host"  # directly on the host, which has the public address
    MACVLAN = "macvlan"  # in a container with its own public address (198.51.100.2)


class ClientKind(enum.Enum):
    """What stands between a client and the internet."""

    OPEN = "open"  # public address, no filter
    FILTERED = "filtered"  # public address, INPUT accepts only ESTABLISHED,RELATED UDP
    HOME = "home"  # behind MASQUERADE with a router firewall dropping NEW inbound UDP
    MASQUERADE = "masquerade"  # behind a bare Linux MASQUERADE, no firewall
    SYMMETRIC = "symmetric"  # behind MASQUERADE --random-fully

    @property
    def natted(self) -> bool:
        """True when the client has a private address behind its own router namespace."""
        return self in (ClientKind.HOME, ClientKind.MASQUERADE, ClientKind.SYMMETRIC)


PortSpec = int | tuple[int, int] | str


@dataclass
class LabSpec:
    """What to build.

    published: (host port or range, container port or range) pairs, BRIDGE mode only.
    host_input_firewall: the host's INPUT drops NEW UDP (in HOST_NETWORK mode that also
    blocks unsolicited traffic to the server itself). netem_delay_ms: one-way delay added
    in both directions of every client's link (needs tc and the kernel's netem).
    """

    server_mode: ServerMode = ServerMode.BRIDGE
    published: list[tuple[PortSpec, PortSpec]] = field(default_factory=list)
    host_input_firewall: bool = False
    clients: list[ClientKind] = field(default_factory=lambda: [ClientKind.OPEN])
    coturn: CoturnSpec | None = None
    netem_delay_ms: int = 0


@dataclass(frozen=True)
class ClientHost:
    """One client: its namespace and own address, and what the internet sees of it."""

    ns: str
    ip: str
    kind: ClientKind = ClientKind.OPEN
    public_ip: str = ""
    router_ns: str | None = None


def parse_ports(value: PortSpec) -> tuple[int, int]:
    """A port or range as (first, last): 20000, (20000, 20100) or "20000-20100"."""
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, tuple):
        lo, hi = value
    else:
        parts = value.split("-")
        if len(parts) > 2:
            raise ValueError(f"bad port range {value!r}")
        lo, hi = int(parts[0]), int(parts[-1])
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"bad port range {value!r}")
    return lo, hi


def published_pairs(published: Sequence[tuple[PortSpec, PortSpec]]) -> list[tuple[int, int]]:
    """Expand published mappings into (host port, container port) pairs, one per port."""
    pairs: list[tuple[int, int]] = []
    for host_spec, ctr_spec in published:
        hlo, hhi = parse_ports(host_spec)
        clo, chi = parse_ports(ctr_spec)
        if hhi - hlo != chi - clo:
            raise ValueError(f"host range {host_spec!r} and container range {ctr_spec!r} differ")
        pairs += [(hlo + i, clo + i) for i in range(hhi - hlo + 1)]
    return pairs


def input_firewall_rules() -> list[str]:
    """Host INPUT rules that drop unsolicited UDP before conntrack confirms an entry."""
    return ["-A INPUT -i lo -j ACCEPT", "-A INPUT -p udp -m conntrack --ctstate NEW -j DROP"]


def docker_ruleset(pairs: Sequence[tuple[int, int]], input_firewall: bool = False) -> str:
    """iptables-restore input equal to what dockerd installs for one container on docker0.

    One DNAT (nat DOCKER), one ACCEPT (filter DOCKER) and one hairpin MASQUERADE per
    published UDP port, as Docker does them (it expands ranges port by port).
    """
    ctr = f"{CONTAINER_IP}/32"
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        f"-A POSTROUTING -s {DOCKER_SUBNET} ! -o docker0 -j MASQUERADE",
    ]
    nat += [
        f"-A POSTROUTING -s {ctr} -d {ctr} -p udp -m udp --dport {cport} -j MASQUERADE"
        for _, cport in pairs
    ]
    nat.append("-A DOCKER -i docker0 -j RETURN")
    nat += [
        f"-A DOCKER ! -i docker0 -p udp -m udp --dport {hport} "
        f"-j DNAT --to-destination {CONTAINER_IP}:{cport}"
        for hport, cport in pairs
    ]
    nat.append("COMMIT")
    flt = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        ":DOCKER-ISOLATION-STAGE-1 - [0:0]",
        ":DOCKER-ISOLATION-STAGE-2 - [0:0]",
        ":DOCKER-USER - [0:0]",
        *(input_firewall_rules() if input_firewall else []),
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
        "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -o docker0 -j DOCKER",
        "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
        "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
    ]
    flt += [
        f"-A DOCKER -d {ctr} ! -i docker0 -o docker0 -p udp -m udp --dport {cport} -j ACCEPT"
        for _, cport in pairs
    ]
    flt += [
        "-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
        "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
        "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
        "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
        "-A DOCKER-USER -j RETURN",
        "COMMIT",
    ]
    return "\n".join(nat + flt) + "\n"


def client_router_ruleset(kind: ClientKind, lan: str) -> str:
    """iptables-restore input for a client's router (wan/lan interfaces)."""
    masq = f"-A POSTROUTING -s {lan} -o wan -j MASQUERADE"
    if kind is ClientKind.SYMMETRIC:
        masq += " --random-fully"
    rules = ["*nat", masq, "COMMIT"]
    if kind is ClientKind.HOME:
        rules += [
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD DROP [0:0]",
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A INPUT -i wan -p udp -m conntrack --ctstate NEW -j DROP",
            "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A FORWARD -i lan -o wan -j ACCEPT",
            "-A FORWARD -i wan -p udp -m conntrack --ctstate NEW -j DROP",
            "COMMIT",
        ]
    return "\n".join(rules) + "\n"


FILTERED_CLIENT_RULES = (
    "*filter\n"
    ":INPUT ACCEPT [0:0]\n"
    "-A INPUT -i lo -j ACCEPT\n"
    "-A INPUT -p udp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    "-A INPUT -p udp -j DROP\n"
    "COMMIT\n"
)


def _check_lab_address(address: str) -> None:
    ip = ipaddress.IPv4Address(address)
    if not any(ip in net for net in _LAB_RANGES):
        raise ValueError(f"{address} is outside the lab's address ranges")


class Lab:
    """Builds the topology on enter, tears every namespace and process down on exit.

    Teardown also runs at interpreter exit and on SIGINT/SIGTERM (handlers are chained to
    the previous ones and restored on close). `workdir` keeps coturn's files; when not given
    a temporary directory is made and removed on close.
    """

    def __init__(self, spec: LabSpec | None = None, *, workdir: Path | None = None) -> None:
        self.spec = spec or LabSpec()
        self.prefix = ""
        self._pairs = published_pairs(self.spec.published)
        if self._pairs and self.spec.server_mode is not ServerMode.BRIDGE:
            raise ValueError("published ports need ServerMode.BRIDGE")
        if len(self.spec.clients) > _MAX_CLIENTS:
            raise ValueError(f"at most {_MAX_CLIENTS} clients")
        if self.spec.coturn is not None:
            _check_lab_address(self.spec.coturn.address)
            _check_lab_address(self.spec.coturn.relay_address or self.spec.coturn.address)
        self._given_workdir = workdir
        self.workdir: Path | None = workdir
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._clients: list[ClientHost] = []
        self._coturn: Coturn | None = None
        self._prev_handlers: dict[int, Any] = {}
        self._started = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as err:  # the body's exception matters more
            warnings.warn(f"lab cleanup failed: {err}", RuntimeWarning, stacklevel=2)

    def start(self) -> None:
        """Build everything; on any failure tear down what was built and re-raise."""
        if self._started:
            raise LabError("a Lab can be started once")
        self._started = True
        extra = ["tc"] if self.spec.netem_delay_ms else []
        if self.spec.coturn is not None:
            extra.append("turnserver")
        netns.require_lab(extra)
        atexit.register(self.close)
        self._install_signal_handlers()
        try:
            self._build()
        except BaseException:
            try:
                self.close()
            except Exception as err:
                warnings.warn(f"lab cleanup failed: {err}", RuntimeWarning, stacklevel=2)
            raise

    def close(self) -> None:
        """Stop every process the lab started and delete its namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._restore_signal_handlers()
        errors: list[str] = []
        if self._coturn is not None:
            self._coturn.stop()
        for proc in reversed(self._procs):
            _stop_process(proc)
        for ns in reversed(self._namespaces):
            try:
                netns.delete_namespace(ns)
            except LabError as err:
                errors.append(str(err))
            else:
                self._namespaces.remove(ns)
        if self._given_workdir is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise LabError(f"lab {self.prefix} cleanup: " + "; ".join(errors))

    # -- what the lab offers ------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created, in creation order."""
        return list(self._namespaces)

    @property
    def internet_ns(self) -> str:
        """The router between host, clients and coturn."""
        return self.prefix + "inet"

    @property
    def host_ns(self) -> str:
        """The Docker host (the server itself in HOST_NETWORK mode)."""
        return self.prefix + "host"

    @property
    def container_ns(self) -> str | None:
        """The container, or None in HOST_NETWORK mode."""
        if self.spec.server_mode is ServerMode.HOST_NETWORK:
            return None
        return self.prefix + "ctr"

    @property
    def server_ns(self) -> str:
        """Where the server under test runs."""
        return self.container_ns or self.host_ns

    @property
    def server_ip(self) -> str:
        """The server's own address (the container's in BRIDGE mode)."""
        return {
            ServerMode.BRIDGE: CONTAINER_IP,
            ServerMode.HOST_NETWORK: HOST_IP,
            ServerMode.MACVLAN: MACVLAN_IP,
        }[self.spec.server_mode]

    @property
    def public_ip(self) -> str:
        """The address clients reach the server at (the Docker host's, or the macvlan one)."""
        return MACVLAN_IP if self.spec.server_mode is ServerMode.MACVLAN else HOST_IP

    @property
    def host_ip(self) -> str:
        """The Docker host's public address."""
        return HOST_IP

    @property
    def clients(self) -> list[ClientHost]:
        """All clients, in LabSpec.clients order."""
        return list(self._clients)

    def client(self, kind: ClientKind, index: int = 0) -> ClientHost:
        """The index-th client of that kind."""
        matching = [c for c in self._clients if c.kind is kind]
        if index >= len(matching):
            raise LabError(f"lab has {len(matching)} {kind.value} client(s), asked for #{index}")
        return matching[index]

    @property
    def turn(self) -> Coturn | None:
        """The running coturn, if the spec asked for one."""
        return self._coturn

    @property
    def stun_server(self) -> tuple[str, int]:
        """(address, port) of coturn's STUN service."""
        if self._coturn is None:
            raise LabError("this lab runs no coturn (LabSpec.coturn is None)")
        return self._coturn.server

    def exec(self, ns: str, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[Any]:
        """Start argv inside one of the lab's namespaces; the lab stops it on close."""
        self._check_ns(ns)
        proc: subprocess.Popen[Any] = subprocess.Popen(netns.ns_argv(ns, argv), **popen_kw)
        self._procs.append(proc)
        return proc

    def udp_peer(self, ns: str, port: int = 0, bind_ip: str = "0.0.0.0") -> UdpPeer:
        """A UDP socket bound in ns, driven from here (see netns.UdpPeer)."""
        return UdpPeer(self.exec, ns, port, bind_ip)

    def conntrack(self, ns: str, proto: str | None = "udp") -> str:
        """The conntrack table of ns (`conntrack -L [-p proto]`)."""
        self._check_ns(ns)
        return netns.conntrack(ns, "-L", *(["-p", proto] if proto else []))

    def flush_conntrack(self, ns: str) -> None:
        """Forget every tracked flow in ns."""
        self._check_ns(ns)
        netns.conntrack(ns, "-F")

    def rule_packets(self, ns: str, table: str, rule: str) -> int:
        """Packets matched so far by one iptables rule (text as iptables-save prints it)."""
        self._check_ns(ns)
        return netns.rule_packets(ns, table, rule)

    # -- building ----------------------------------------------------------------------------

    def _build(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="natlab-"))
        self._reserve_prefix()
        self._build_internet()
        self._build_server_side()
        for index, kind in enumerate(self.spec.clients):
            self._clients.append(self._build_client(index, kind))
        if self.spec.coturn is not None:
            self._coturn = Coturn(
                self.internet_ns, self.spec.coturn, self.workdir / "coturn", self.exec
            )

    def _reserve_prefix(self) -> None:
        """Pick `sl<pid%10000><n>_` unused by any namespace; creating `inet` claims it."""
        existing = netns.list_namespaces()
        base = f"sl{os.getpid() % 10000:04d}"
        for char in _PREFIX_CHARS:
            prefix = f"{base}{char}_"
            if any(ns.startswith(prefix) for ns in existing):
                continue
            self.prefix = prefix
            try:
                self._add_ns("inet")
            except CommandError as err:
                if "exists" in err.stderr:
                    continue
                if "not permitted" in err.stderr or "denied" in err.stderr:
                    raise LabUnavailable(f"cannot create network namespaces: {err}") from err
                raise
            return
        raise LabError(f"no free lab prefix for {base}*: run cleanup_stale on old ones")

    def _add_ns(self, role: str) -> str:
        name = self.prefix + role
        netns.ip(None, "netns", "add", name)
        self._namespaces.append(name)
        netns.ip(name, "link", "set", "lo", "up")
        netns.sysctl(
            name, {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
        )
        return name

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        netns.ip(ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)

    def _up(self, ns: str, *devs: str) -> None:
        for dev in devs:
            netns.ip(ns, "link", "set", dev, "up")

    def _addr(self, ns: str, cidr: str, dev: str) -> None:
        netns.ip(ns, "addr", "add", cidr, "dev", dev)

    def _default_route(self, ns: str, via: str) -> None:
        netns.ip(ns, "route", "add", "default", "via", via)

    def _build_internet(self) -> None:
        inet = self.internet_ns
        netns.sysctl(inet, {"net.ipv4.ip_forward": 1})
        netns.ip(inet, "link", "add", "cl0", "type", "bridge")
        self._addr(inet, f"{INTERNET_CLIENT_SIDE_IP}/24", "cl0")
        # coturn's address lives on a veth pair kept inside the router (no dummy needed)
        self._veth(inet, "svc0", inet, "svc1")
        self._addr(inet, f"{SERVICE_IP}/24", "svc0")
        if self.spec.coturn is not None:
            for extra in {self.spec.coturn.address, self.spec.coturn.relay_address}:
                if extra and extra != SERVICE_IP:
                    self._addr(inet, f"{extra}/32", "svc0")
        self._up(inet, "cl0", "svc0", "svc1")

    def _build_server_side(self) -> None:
        inet, host = self.internet_ns, self._add_ns("host")
        self._veth(inet, "toh", host, "eth0")
        self._addr(inet, f"{INTERNET_HOST_SIDE_IP}/24", "toh")
        self._addr(host, f"{HOST_IP}/24", "eth0")
        self._up(inet, "toh")
        self._up(host, "eth0")
        self._default_route(host, INTERNET_HOST_SIDE_IP)
        mode = self.spec.server_mode
        if mode is ServerMode.BRIDGE:
            ctr = self._add_ns("ctr")
            netns.sysctl(host, {"net.ipv4.ip_forward": 1})
            netns.ip(host, "link", "add", "docker0", "type", "bridge")
            self._addr(host, f"{DOCKER_BRIDGE_IP}/16", "docker0")
            self._veth(host, "vethctr", ctr, "eth0")
            netns.ip(host, "link", "set", "vethctr", "master", "docker0")
            self._up(host, "docker0", "vethctr")
            self._addr(ctr, f"{CONTAINER_IP}/16", "eth0")
            self._up(ctr, "eth0")
            self._default_route(ctr, DOCKER_BRIDGE_IP)
            netns.iptables_restore(host, docker_ruleset(self._pairs, self.spec.host_input_firewall))
            return
        if mode is ServerMode.MACVLAN:
            ctr = self._add_ns("ctr")
            netns.ip(
                host, "link", "add", "mv0", "link", "eth0", "type", "macvlan", "mode", "bridge"
            )
            netns.ip(host, "link", "set", "mv0", "netns", ctr)
            netns.ip(ctr, "link", "set", "mv0", "name", "eth0")
            self._addr(ctr, f"{MACVLAN_IP}/24", "eth0")
            self._up(ctr, "eth0")
            self._default_route(ctr, INTERNET_HOST_SIDE_IP)
        if self.spec.host_input_firewall:
            rules = ["*filter", ":INPUT ACCEPT [0:0]", *input_firewall_rules(), "COMMIT"]
            netns.iptables_restore(host, "\n".join(rules) + "\n")

    def _build_client(self, index: int, kind: ClientKind) -> ClientHost:
        inet = self.internet_ns
        public = f"203.0.113.{_CLIENT_BASE + index}"
        port = f"p{index}"
        if not kind.natted:
            client = self._add_ns(f"c{index}")
            self._veth(inet, port, client, "eth0")
            netns.ip(inet, "link", "set", port, "master", "cl0")
            self._up(inet, port)
            self._addr(client, f"{public}/24", "eth0")
            self._up(client, "eth0")
            self._default_route(client, INTERNET_CLIENT_SIDE_IP)
            if kind is ClientKind.FILTERED:
                netns.iptables_restore(client, FILTERED_CLIENT_RULES)
            self._netem(inet, port, client, "eth0")
            return ClientHost(client, public, kind, public, None)
        router = self._add_ns(f"r{index}")
        client = self._add_ns(f"c{index}")
        lan = f"172.20.{index}.0/24"
        self._veth(inet, port, router, "wan")
        netns.ip(inet, "link", "set", port, "master", "cl0")
        self._up(inet, port)
        self._addr(router, f"{public}/24", "wan")
        self._veth(router, "lan", client, "eth0")
        self._addr(router, f"172.20.{index}.1/24", "lan")
        self._addr(client, f"172.20.{index}.2/24", "eth0")
        self._up(router, "wan", "lan")
        self._up(client, "eth0")
        self._default_route(router, INTERNET_CLIENT_SIDE_IP)
        self._default_route(client, f"172.20.{index}.1")
        netns.sysctl(router, {"net.ipv4.ip_forward": 1})
        netns.iptables_restore(router, client_router_ruleset(kind, lan))
        self._netem(inet, port, router, "wan")
        return ClientHost(client, f"172.20.{index}.2", kind, public, router)

    def _netem(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str) -> None:
        """Delay both directions of one client link by netem_delay_ms."""
        delay = self.spec.netem_delay_ms
        if not delay:
            return
        for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
            argv = ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay}ms"]
            try:
                netns.run(netns.ns_argv(ns, argv))
            except CommandError as err:
                raise LabUnavailable(f"tc netem does not work here: {err}") from err

    def _check_ns(self, ns: str) -> None:
        if self._closed:
            raise LabError(f"lab {self.prefix!r} is closed")
        if ns not in self._namespaces:
            raise LabError(f"{ns!r} is not a namespace of lab {self.prefix!r}")

    # -- signals -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._prev_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in self._prev_handlers.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        prev = self._prev_handlers.get(signum)
        try:
            self.close()
        finally:
            if callable(prev):
                prev(signum, frame)
            elif prev != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)


def cleanup_stale(prefix: str) -> list[str]:
    """Delete the namespaces (and their processes) of a lab that died; see netns.cleanup_stale."""
    return netns.cleanup_stale(prefix)


def _stop_process(proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
