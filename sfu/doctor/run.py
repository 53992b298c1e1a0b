"""Running the probe on the event loop: the driver, the sockets, and one diagnosis per socket.

The media socket is a :class:`MediaLink`: a socket of the doctor's own (:class:`SocketLink`, for
``sfu doctor`` run alone) or the running server's engine socket (:mod:`sfu.doctor.live`). The
fresh socket of the race probe is always the doctor's own, bound next to the media socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import ifaddr

from sfu.config import AnnounceRule, Config, HostPort, MediaConfig, MediaMode, TurnServer
from sfu.doctor.facts import Context, derive_facts
from sfu.doctor.probe import AnnouncedSpec, NatProbe, Observations, ProbePlan, Role
from sfu.doctor.report import Diagnosis, Report
from sfu.engine.base import Addr
from sfu.webrtc.gather import resolve, route_source

log = logging.getLogger(__name__)

Receiver = Callable[[bytes, Addr], bool]  # True: the datagram was the probe's


@dataclass(frozen=True)
class DoctorSettings:
    """The part of the configuration the doctor reads."""

    media: MediaConfig = field(default_factory=MediaConfig)
    announce: tuple[AnnounceRule, ...] = ()
    stun_servers: tuple[HostPort, ...] = ()
    turn: tuple[TurnServer, ...] = ()
    early_checks: bool = True

    @classmethod
    def from_config(cls, config: Config) -> DoctorSettings:
        return cls(
            config.media,
            tuple(config.announce),
            tuple(config.ice.stun_servers),
            tuple(config.ice.turn),
            config.ice.early_checks,
        )

    @property
    def media_port(self) -> int:
        """The port the media socket uses (the first of the range in port-range mode)."""
        media = self.media
        return media.port if media.mode is MediaMode.SINGLE_PORT else media.port_min


class MediaLink(Protocol):
    """The media socket, whoever owns it."""

    @property
    def family(self) -> int: ...

    @property
    def local_addr(self) -> Addr: ...

    def send(self, addr: Addr, data: bytes) -> None: ...

    def set_receiver(self, receiver: Receiver | None) -> None: ...


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.receiver: Receiver | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.receiver is not None:
            self.receiver(data, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:  # ICMP errors: the probe times out
        pass


class SocketLink:
    """A UDP socket of the doctor's own."""

    def __init__(self, transport: asyncio.DatagramTransport, protocol: _Endpoint) -> None:
        self._transport = transport
        self._protocol = protocol
        sock = transport.get_extra_info("socket")
        self.family: int = int(sock.family)
        name = sock.getsockname()
        self.local_addr: Addr = (str(name[0]), int(name[1]))

    @classmethod
    async def open(cls, host: str, port: int) -> SocketLink:
        """Bind ``host:port`` (port 0: any). Raises OSError."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(_Endpoint, sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(transport, protocol)

    def send(self, addr: Addr, data: bytes) -> None:
        self._transport.sendto(data, addr)

    def set_receiver(self, receiver: Receiver | None) -> None:
        self._protocol.receiver = receiver

    def close(self) -> None:
        self._transport.close()


class ProbeDriver:
    """Runs a :class:`NatProbe` on the event loop: sends what it returns, keeps one timer, and
    stops it at the time bound."""

    def __init__(self, probe: NatProbe, links: dict[Role, MediaLink]) -> None:
        self.probe = probe
        self._links = links
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._deadline = 0.0

    async def run(self, budget: float) -> Observations:
        self._deadline = self._loop.time() + budget
        for role, link in self._links.items():
            link.set_receiver(self._receiver(role))
        try:
            self._pump()
            await self._done
        finally:
            for link in self._links.values():
                link.set_receiver(None)
            if self._timer is not None:
                self._timer.cancel()
            if not self.probe.done:
                self.probe.stop(self._loop.time())
        return self.probe.observations()

    def _receiver(self, role: Role) -> Receiver:
        def receive(data: bytes, addr: Addr) -> bool:
            if not self.probe.receive(role, data, addr, self._loop.time()):
                return False
            self._pump()
            return True

        return receive

    def _pump(self) -> None:
        now = self._loop.time()
        for role, addr, data in self.probe.datagrams_to_send(now):
            link = self._links.get(role)
            if link is None:
                continue
            try:
                link.send(addr, data)
            except OSError as exc:  # unreachable network: the step times out
                log.debug("doctor: send to %s failed: %s", addr, exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.probe.done:
            if not self._done.done():
                self._done.set_result(None)
            return
        at = min(self.probe.get_timer() or self._deadline, self._deadline)
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        if now >= self._deadline:
            self.probe.stop(now)
        else:
            self.probe.handle_timer(now)
        self._pump()


def announced_specs(
    settings: DoctorSettings, local_ips: Sequence[str], local_port: int
) -> tuple[AnnouncedSpec, ...]:
    """What the announce rules advertise for a media socket on ``local_port`` serving
    ``local_ips`` (the same rules as the WebRtcServer: ``auto`` takes STUN's address, and STUN's
    port unless the rule gives one)."""
    media = settings.media
    out: list[AnnouncedSpec] = []
    ips = [ipaddress.ip_address(a) for a in local_ips]
    in_range = media.port_min <= local_port <= media.port_max
    for rule in settings.announce:
        if not any(rule.matches(ip) for ip in ips):
            continue
        port: int | None
        if media.mode is MediaMode.PORT_RANGE and rule.public_port_min is not None:
            if not in_range:
                continue
            port = rule.map_port(local_port, media)
        elif media.mode is MediaMode.SINGLE_PORT and rule.public_port is not None:
            port = rule.public_port
        else:
            port = None if rule.auto else local_port
        ip = None if rule.public is None else str(rule.public)
        spec = AnnouncedSpec(rule.to_text(media), ip, port)
        if spec not in out:
            out.append(spec)
    return tuple(out)


def local_ips() -> frozenset[str]:
    """Every address of this host's interfaces."""
    out: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            with contextlib.suppress(ValueError):
                out.add(str(ipaddress.ip_address(raw)))
    return frozenset(out)


def serving_addresses(settings: DoctorSettings, bound_ip: str, family: int) -> list[str]:
    """The addresses a media socket bound to ``bound_ip`` serves (the announce rules match them)."""
    if not ipaddress.ip_address(bound_ip).is_unspecified:
        return [bound_ip]
    from sfu.webrtc.server import interface_addresses  # the server's own filters

    return interface_addresses(settings.media, family)


async def _resolve_all(hosts: Sequence[tuple[str, int]], family: int) -> list[Addr]:
    loop = asyncio.get_running_loop()
    out: list[Addr] = []
    for host, port in hosts:
        for fam, addr in await resolve(loop, host, port):
            if fam == family and addr not in out:
                out.append(addr)
                break
    return out


async def stun_servers_for(settings: DoctorSettings, family: int) -> list[Addr]:
    """The configured STUN servers that resolve to ``family`` (first address of each)."""
    return await _resolve_all([(s.host, s.port) for s in settings.stun_servers], family)


async def diagnose_socket(
    media: MediaLink,
    settings: DoctorSettings,
    budget: float,
    *,
    notes: Sequence[str] = (),
    media_port: int | None = None,
    rto: float = 0.1,
) -> Diagnosis:
    """Probe through ``media`` (plus a fresh socket of our own) and judge. ``media_port`` is the
    port the media socket should have (default: the configured one)."""
    family = media.family
    servers = await stun_servers_for(settings, family)
    turn = await _resolve_all([(t.host, t.port) for t in settings.turn], family)
    bound_ip = media.local_addr[0]
    expected_port = settings.media_port if media_port is None else media_port
    ephemeral = expected_port != 0 and media.local_addr[1] != expected_port
    serving = serving_addresses(settings, bound_ip, family)
    fresh: SocketLink | None = None
    extra = list(notes)
    try:
        fresh = await SocketLink.open(bound_ip, 0)
    except OSError as exc:
        extra.append(f"no fresh socket for the race probe: {exc.strerror or exc}")
    plan = ProbePlan(
        media_port=media.local_addr[1],
        servers=tuple(servers),
        fresh_port=fresh.local_addr[1] if fresh is not None else None,
        # from another port than the media port, announced addresses lead elsewhere: not checked
        announced=() if ephemeral else announced_specs(settings, serving, media.local_addr[1]),
        avoid=frozenset(servers) | frozenset(turn),
    )
    links: dict[Role, MediaLink] = {Role.MEDIA: media}
    if fresh is not None:
        links[Role.FRESH] = fresh
    loop = asyncio.get_running_loop()
    try:
        probe = NatProbe(plan, loop.time(), rto=rto)
        obs = await ProbeDriver(probe, links).run(budget)
    finally:
        if fresh is not None:
            fresh.close()
    local_ip = bound_ip
    if ipaddress.ip_address(bound_ip).is_unspecified:
        toward = obs.primary[0] if obs.primary else (servers[0][0] if servers else None)
        if toward is not None:
            local_ip = route_source(family, toward, []) or bound_ip
    if settings.stun_servers and not servers:
        extra.append(f"no STUN server resolves to an {_family_name(family)} address")
    ctx = Context(
        local_ips=local_ips(),
        media_local=(local_ip, media.local_addr[1]),
        media_port=expected_port,
        stun_configured=len(settings.stun_servers),
        turn_configured=bool(settings.turn),
        early_checks=settings.early_checks,
        notes=tuple(extra),
    )
    return Diagnosis.of(derive_facts(obs, ctx), obs.results)


def _family_name(family: int) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


async def open_media_socket(host: str, port: int) -> tuple[SocketLink, str | None]:
    """Bind the media port, or an ephemeral port (with a note) when it is taken."""
    try:
        return await SocketLink.open(host, port), None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    link = await SocketLink.open(host, 0)
    note = (
        f"UDP {host}:{port} is in use (is the server running?): probed from port "
        f"{link.local_addr[1]} instead"
    )
    return link, note


async def diagnose_standalone(settings: DoctorSettings, budget: float = 5.0) -> Report:
    """``sfu doctor``: probe from sockets of our own on the media port (one per address family
    that has a STUN server), one after the other."""
    diagnoses: list[Diagnosis] = []
    notes: list[str] = []
    for ip in settings.media.listen:
        host = str(ip)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        if settings.stun_servers and not await stun_servers_for(settings, family):
            continue  # no STUN server of this family: nothing to learn here
        try:
            link, note = await open_media_socket(host, settings.media_port)
        except OSError as exc:
            notes.append(f"cannot bind {host}:{settings.media_port}: {exc.strerror or exc}")
            continue
        try:
            diagnoses.append(
                await diagnose_socket(link, settings, budget, notes=[note] if note else [])
            )
        finally:
            link.close()
        if not settings.stun_servers:
            break  # one socket is enough to say there is nothing to probe with
    return Report(tuple(diagnoses), tuple(notes))
