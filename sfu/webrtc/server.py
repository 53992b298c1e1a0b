"""WebRtcServer: the single UDP port shared by every transport, and who gets each datagram.

The engine owns the sockets and hands control datagrams over in batches. Routing, in order:

1. the engine already knows the 5-tuple (``packet.transport_id``);
2. the (socket, remote address) pair was bound by a transport (a valid STUN check came from it);
3. an unbound STUN request is routed by the local ufrag in its USERNAME ("local:remote").

Before that, datagrams from the servers the WebRtcServer itself talks to are taken out: answers
to the start-up STUN probes (by transaction id, see :mod:`sfu.webrtc.gather`) and everything
from a TURN server we hold an allocation with (see :mod:`sfu.webrtc.turn`). What a TURN server
relays comes back unwrapped with ``relay`` set and is routed like the rest, under the relay's
socket key.

Anything else (unknown sources that are not valid STUN for a known ufrag) is dropped and counted,
without allocating anything.

Candidates: host candidates (with the 1:1 announce rules) from :meth:`WebRtcServer.open`; after
:meth:`WebRtcServer.gather`, also server-reflexive ones (STUN), ``public = "auto"`` announce
rules resolved, and one relay candidate per TURN allocation.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import ifaddr

from sfu.config import (
    AnnounceMode,
    AnnounceRule,
    Config,
    HostPort,
    MediaConfig,
    MediaMode,
    TurnServer,
    is_private_address,
)
from sfu.engine.base import Addr, ControlKind, ControlPacket, Engine, SocketInfo
from sfu.ice.candidate import (
    Candidate,
    CandidateType,
    candidate_foundation,
    candidate_priority,
    format_addr,
)
from sfu.ice.stun import stun_username
from sfu.webrtc.gather import BindingProbes, MappedAddress, resolve, route_source, srflx_candidates
from sfu.webrtc.transport import WebRtcTransport
from sfu.webrtc.turn import RelayKey, SocketKey, TurnRelays

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaSettings:
    """What the WebRtcServer needs from the configuration."""

    media: MediaConfig = field(default_factory=MediaConfig)
    announce: Sequence[AnnounceRule] = ()
    announce_private: bool = True
    stun_servers: Sequence[HostPort] = ()
    turn: Sequence[TurnServer] = ()

    @classmethod
    def from_config(cls, config: Config) -> MediaSettings:
        return cls(
            config.media,
            config.announce,
            config.announce_private,
            config.ice.stun_servers,
            config.ice.turn,
        )


@dataclass
class ServerCounters:
    dropped_unroutable: int = 0
    stun_unknown_ufrag: int = 0
    routed: int = 0
    ice_rejected_closed: int = 0  # STUN refused by agents of transports since closed
    relayed_routed: int = 0  # of ``routed``: arrived through a TURN relay


@dataclass
class _Listener:
    info: SocketInfo
    addresses: list[str] = field(default_factory=list)  # host addresses served by this socket


def interface_addresses(media: MediaConfig, family: int) -> list[str]:
    """Addresses of the machine's interfaces that host candidates may use (filters applied)."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        if not media.interface_allowed(adapter.nice_name):
            continue
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                if family != socket.AF_INET6:
                    continue
                addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                    ip.ip[0]
                )
                if addr.is_link_local:
                    continue
            else:
                if family != socket.AF_INET:
                    continue
                addr = ipaddress.IPv4Address(ip.ip)
            if addr.is_loopback and not media.include_loopback:
                continue
            if not media.address_allowed(addr):
                continue
            if str(addr) not in out:
                out.append(str(addr))
    return out


class WebRtcServer:
    """Owns the listening sockets (through the engine) and the transports that use them."""

    def __init__(self, engine: Engine, settings: MediaSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.counters = ServerCounters()
        self._listeners: list[_Listener] = []
        self._by_id: dict[int, WebRtcTransport] = {}
        self._by_ufrag: dict[str, WebRtcTransport] = {}
        self._bound: dict[tuple[SocketKey, Addr], WebRtcTransport] = {}
        self._ids = itertools.count(1)
        self._consumer_ids = itertools.count(1)
        self._candidates: list[tuple[Candidate, int]] = []
        self._relays = TurnRelays(engine, self._route)
        self._probes: BindingProbes | None = None
        self._probes_done: asyncio.Future[None] | None = None
        self._probe_timer: asyncio.TimerHandle | None = None
        self._learned: list[MappedAddress] | None = None  # None until gather() ran
        self._stun_listener: Callable[[ControlPacket], bool] | None = None
        self._range_cursor = 0
        self._ports_in_use: set[int] = set()
        self._transport_sockets: dict[int, tuple[int, list[_Listener]]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Bind the media port on every listen address the kernel supports."""
        media = self.settings.media
        errors = []
        # single-port: the shared media port. Port range: a service socket per address on an
        # ephemeral port (STUN probes and the TURN allocation); each transport gets its own port.
        port = media.port if not self.range_mode else 0
        for ip in media.listen:
            host = str(ip)
            try:
                info = self.engine.open_socket(host, port)
            except OSError as exc:
                errors.append(f"{host}:{port}: {exc.strerror or exc}")
                continue
            listener = _Listener(info)
            if ip.is_unspecified:
                listener.addresses = interface_addresses(media, info.family)
            else:
                listener.addresses = [host]
            self._listeners.append(listener)
            log.info(
                "media socket %s:%d serves %s",
                host,
                info.local_addr[1],
                ", ".join(listener.addresses) or "no address",
            )
        if not self._listeners:
            raise OSError("could not open any media socket: " + "; ".join(errors))
        for err in errors:
            log.info("media socket not opened (family unavailable?): %s", err)
        self._candidates = self._build_candidates()
        if not self._candidates and not self.range_mode:
            log.warning("no host candidate: check [media] interfaces/cidrs/include_loopback")
        if self.range_mode:
            log.info(
                "port-range mode: one port per transport from %d-%d", media.port_min, media.port_max
            )

    def start(self) -> None:
        self.engine.start(self.deliver)

    async def gather(self) -> None:
        """Learn server-reflexive addresses (STUN) and allocate relays (TURN), then rebuild the
        candidates. Call after :meth:`start` (answers come through the engine), before serving:
        transports take the candidates that exist when they are created."""
        await asyncio.gather(
            self._gather_stun(),
            self._relays.allocate([lst.info for lst in self._listeners], self.settings.turn),
        )
        self._candidates = self._build_candidates()
        for cand, _ in self._candidates + self._relay_candidates():
            log.debug("candidate %s", cand.to_sdp())

    def close(self) -> None:
        for t in list(self._by_id.values()):
            t.close("server shutting down")
        self._relays.close()
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        self.engine.stop()

    # -- STUN at start-up ---------------------------------------------------------------------------

    async def _gather_stun(self) -> None:
        loop = asyncio.get_running_loop()
        probes = BindingProbes()
        now = time.monotonic()
        order: dict[tuple[int, Addr], int] = {}  # results are kept in configuration order
        for server in self.settings.stun_servers:
            addrs = await resolve(loop, server.host, server.port)
            if not addrs:
                log.warning("STUN %s: cannot resolve %s, skipped", server, server.host)
            for listener in self._listeners:
                for family, addr in addrs:
                    if family == listener.info.family:
                        order.setdefault((listener.info.socket_id, addr), len(order))
                        probes.add(listener.info.socket_id, addr, now)
                        break
        self._learned = []
        if probes.finished:
            return
        self._probes = probes
        self._probes_done = loop.create_future()
        self._pump_probes()
        try:
            await self._probes_done
        finally:
            self._probes = None
            if self._probe_timer is not None:
                self._probe_timer.cancel()
                self._probe_timer = None
        self._learned = sorted(probes.results, key=lambda r: order[(r.socket_id, r.server)])
        for lst in self._listeners:
            mine = [r for r in self._learned if r.socket_id == lst.info.socket_id]
            local = format_addr(lst.info.local_addr)
            for r in mine:
                if r.mapped is not None:
                    log.info("srflx %s via STUN %s", format_addr(r.mapped), format_addr(r.server))
                else:
                    log.warning(
                        "STUN %s from %s: %s", format_addr(r.server), local, r.error or "failed"
                    )

    def _pump_probes(self) -> None:
        probes = self._probes
        if probes is None:
            return
        now = time.monotonic()
        for socket_id, addr, data in probes.datagrams_to_send(now):
            self.engine.send(socket_id, addr, data)
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        at = probes.get_timer()
        if probes.finished or at is None:
            if self._probes_done is not None and not self._probes_done.done():
                self._probes_done.set_result(None)
            return
        loop = asyncio.get_running_loop()
        self._probe_timer = loop.call_later(max(0.0, at - now), self._on_probe_timer)

    def _on_probe_timer(self) -> None:
        self._probe_timer = None
        if self._probes is not None:
            self._probes.handle_timer(time.monotonic())
            self._pump_probes()

    def _mapped(self, socket_id: int) -> Addr | None:
        """The first address a STUN server reported for this socket (servers in config order)."""
        for r in self._learned or ():
            if r.socket_id == socket_id and r.mapped is not None:
                return r.mapped
        return None

    @property
    def media_sockets(self) -> list[SocketInfo]:
        """The shared media sockets (in port-range mode: the service sockets)."""
        return [lst.info for lst in self._listeners]

    def send_raw(self, socket_id: int, addr: Addr, data: bytes) -> None:
        """Send a datagram from a media socket (the doctor's probes)."""
        self.engine.send(socket_id, addr, data)

    def listen_stun(self, listener: Callable[[ControlPacket], bool] | None) -> None:
        """While set, unbound STUN datagrams go to ``listener`` first; True means it took one."""
        self._stun_listener = listener

    @property
    def local_addresses(self) -> list[Addr]:
        return [lst.info.local_addr for lst in self._listeners]

    # -- candidates -------------------------------------------------------------------------------

    def _build_candidates(
        self, listeners: list[_Listener] | None = None
    ) -> list[tuple[Candidate, int]]:
        """Host candidates per listener address, with the 1:1 announce rules applied, then the
        server-reflexive candidates learned by :meth:`gather`.

        Every matching rule adds a candidate with its public address and mapped port; a matching
        "replace" rule drops the private one; ``announce_private = false`` drops every private
        address left. Announced candidates get the higher local preference. A ``public = "auto"``
        rule uses the address STUN reported for the socket (port: the rule's, else STUN's); when
        STUN gave nothing the rule is skipped with a warning (the private candidate then stays).
        """
        announced: list[tuple[str, int, int]] = []
        private: list[tuple[str, int, int]] = []
        gathered = self._learned is not None
        if listeners is None:
            if self.range_mode:  # the service sockets carry no media: no host candidates
                return []
            listeners = self._listeners
        service = {lst.info.family: lst.info.socket_id for lst in self._listeners}
        for listener in listeners:
            port = listener.info.local_addr[1]
            sid = listener.info.socket_id
            # a per-transport socket learns the public address from its family's service socket
            mapped = self._mapped(sid) or self._mapped(service.get(listener.info.family, -1))
            if mapped is not None and self.range_mode:
                mapped = (mapped[0], port)  # port-preserving NAT assumed; see docs/configuration.md
            for address in listener.addresses:
                ip = ipaddress.ip_address(address)
                rules = [r for r in self.settings.announce if r.matches(ip)]
                replaced = False
                for rule in rules:
                    if rule.auto:
                        if mapped is None:
                            if gathered:
                                log.warning(
                                    "announce rule %s: no address learned from STUN for %s "
                                    "(%s), rule skipped",
                                    rule.to_text(),
                                    address,
                                    "no [ice] stun_servers"
                                    if not self.settings.stun_servers
                                    else "STUN failed",
                                )
                            continue
                        public, public_port = mapped[0], self._auto_port(rule, port, mapped[1])
                    else:
                        public = str(rule.public)
                        public_port = rule.map_port(port, self.settings.media)
                    announced.append((public, public_port, sid))
                    replaced = replaced or rule.mode is AnnounceMode.REPLACE
                if replaced:
                    continue
                if not self.settings.announce_private and is_private_address(ip):
                    continue
                private.append((address, port, sid))
        out: list[tuple[Candidate, int]] = []
        seen: set[tuple[str, int]] = set()
        pref = 65535
        for host, port, sid in announced + private:
            if (host, port) in seen:
                continue
            seen.add((host, port))
            out.append((self._host_candidate(host, port, pref), sid))
            pref -= 1
        if self.range_mode:
            return out
        return out + self._srflx(seen)

    def _auto_port(self, rule: AnnounceRule, local_port: int, learned_port: int) -> int:
        media = self.settings.media
        if media.mode is MediaMode.SINGLE_PORT and rule.public_port is not None:
            return rule.public_port
        if media.mode is MediaMode.PORT_RANGE and rule.public_port_min is not None:
            return rule.map_port(local_port, media)
        return learned_port

    def _srflx(self, offered: set[tuple[str, int]]) -> list[tuple[Candidate, int]]:
        learned: list[tuple[MappedAddress, str, int]] = []
        by_id = {lst.info.socket_id: lst for lst in self._listeners}
        for r in self._learned or ():
            listener = by_id.get(r.socket_id)
            if r.mapped is None or listener is None:
                continue
            if not self.settings.announce_private and is_private_address(
                ipaddress.ip_address(r.mapped[0])
            ):
                continue
            base = route_source(listener.info.family, r.server[0], listener.addresses)
            base = base or listener.info.local_addr[0]
            learned.append((r, base, listener.info.local_addr[1]))
        out = srflx_candidates(learned, offered)
        if not self.settings.announce_private:  # do not reveal a private base in raddr
            out = [
                (replace(c, related_address=_any_address(c.host), related_port=0), sid)
                if c.related_address and is_private_address(ipaddress.ip_address(c.related_address))
                else (c, sid)
                for c, sid in out
            ]
        return out

    def _relay_candidates(self) -> list[tuple[Candidate, RelayKey]]:
        out = self._relays.candidates()
        if not self.settings.announce_private:
            out = [(c, k) for c, k in out if not is_private_address(ipaddress.ip_address(c.host))]
        return out

    @staticmethod
    def _host_candidate(address: str, port: int, local_pref: int) -> Candidate:
        return Candidate(
            foundation=candidate_foundation(CandidateType.HOST, address, "udp"),
            component=1,
            transport="udp",
            priority=candidate_priority(CandidateType.HOST, local_pref, 1),
            host=address,
            port=port,
            type=CandidateType.HOST,
        )

    @property
    def withhold_candidates(self) -> bool:
        """Whether transports withhold their candidates until their first check has left.

        Sending first matters twice: a NAT in front of us that maps flows by their first packet
        (Docker's MASQUERADE: the race) and a stateful firewall in front of us that drops new
        inbound UDP (the peer's first check is lost and ICE waits for a retransmission, ~500 ms
        in the lab). Neither applies to an address reached through an explicit announce rule:
        that is a published port, and inbound traffic goes through DNAT and Docker's ACCEPT
        rule. So withholding is off only when every host candidate comes from such a rule;
        it saves the peer a signaling round trip there (lab: 145 ms -> 23-58 ms).
        """
        if not any(not r.auto for r in self.settings.announce):
            return True
        if self.range_mode:
            return False
        announced = {(str(r.public)) for r in self.settings.announce if not r.auto}
        return any(
            c.host not in announced for c, _ in self._candidates if c.type is CandidateType.HOST
        )

    @property
    def range_mode(self) -> bool:
        return self.settings.media.mode is MediaMode.PORT_RANGE

    def local_candidates(self, transport_id: int = 0) -> list[tuple[Candidate, SocketKey]]:
        """Candidates for a new transport: host, srflx, then relay (allocations alive now).
        In port-range mode the transport's own sockets are opened here (one port, every family)."""
        out: list[tuple[Candidate, SocketKey]] = []
        if self.range_mode:
            out += self._build_candidates(self._open_transport_sockets(transport_id))
        else:
            out += self._candidates
        out += self._relay_candidates()
        return out

    def _open_transport_sockets(self, transport_id: int) -> list[_Listener]:
        """Bind the next free port of the range on every listen address (raises OSError when the
        range is exhausted)."""
        media = self.settings.media
        count = media.port_max - media.port_min + 1
        for _ in range(count):
            port = media.port_min + self._range_cursor % count
            self._range_cursor += 1
            if port in self._ports_in_use:
                continue
            opened: list[_Listener] = []
            try:
                for service in self._listeners:
                    host = service.info.local_addr[0]
                    info = self.engine.open_socket(host, port)
                    opened.append(_Listener(info, list(service.addresses)))
            except OSError:
                for lst in opened:
                    self.engine.close_socket(lst.info.socket_id)
                continue
            self._ports_in_use.add(port)
            self._transport_sockets[transport_id] = (port, opened)
            return opened
        raise OSError(f"no free media port in {media.port_min}-{media.port_max}")

    def _close_transport_sockets(self, transport_id: int) -> None:
        entry = self._transport_sockets.pop(transport_id, None)
        if entry is None:
            return
        port, listeners = entry
        for lst in listeners:
            self.engine.close_socket(lst.info.socket_id)
        self._ports_in_use.discard(port)

    def transport_port(self, transport_id: int) -> int | None:
        entry = self._transport_sockets.get(transport_id)
        return entry[0] if entry else None

    def relay_stats(self) -> list[dict[str, object]]:
        return self._relays.stats()

    # -- transports -------------------------------------------------------------------------------

    def next_transport_id(self) -> int:
        return next(self._ids)

    def next_consumer_id(self) -> int:
        """Engine consumer ids are unique per server, whichever application creates them."""
        return next(self._consumer_ids)

    def register(self, transport: WebRtcTransport) -> None:
        self._by_id[transport.id] = transport
        self._by_ufrag[transport.ice_ufrag] = transport

    def unregister(self, transport: WebRtcTransport) -> None:
        if self._by_id.pop(transport.id, None) is not None:
            self.counters.ice_rejected_closed += transport.ice_rejected()
        if self._by_ufrag.get(transport.ice_ufrag) is transport:
            del self._by_ufrag[transport.ice_ufrag]
        for key in [k for k, t in self._bound.items() if t is transport]:
            del self._bound[key]
        self._relays.release(transport.id)
        self._close_transport_sockets(transport.id)

    def bind_address(self, transport: WebRtcTransport, socket_key: SocketKey, addr: Addr) -> None:
        """Datagrams from ``addr`` on ``socket_key`` (a socket id, or a relay) go to ``transport``."""
        key = (socket_key, addr)
        if self._bound.get(key) is not transport:
            self._bound[key] = transport
            self.engine.bind(transport.id, _socket_id(socket_key), addr)

    def send_datagram(
        self, transport: WebRtcTransport, socket_key: SocketKey, addr: Addr, data: bytes
    ) -> None:
        """Send an ICE or DTLS datagram for a transport (through the TURN client for relays)."""
        if isinstance(socket_key, RelayKey):
            self._relays.send(transport.id, socket_key, addr, data)
        else:
            self.engine.send(socket_key, addr, data)

    def set_media_destination(
        self, transport: WebRtcTransport, socket_key: SocketKey, addr: Addr
    ) -> None:
        """The selected pair changed: media goes to ``addr`` from ``socket_key``. Through a relay
        the engine is told once the TURN channel to the peer is bound (ChannelData)."""
        if isinstance(socket_key, RelayKey):
            self._relays.set_destination(transport.id, socket_key, addr)
        else:
            self._relays.set_destination(transport.id, None, addr)
            self.engine.set_destination(transport.id, socket_key, addr)

    def transport(self, transport_id: int) -> WebRtcTransport | None:
        return self._by_id.get(transport_id)

    @property
    def transports(self) -> list[WebRtcTransport]:
        return list(self._by_id.values())

    # -- datagrams from the engine ----------------------------------------------------------------

    def deliver(self, batch: list[ControlPacket]) -> None:
        for packet in batch:
            try:
                self._route(packet)
            except Exception:  # one bad datagram never takes the loop down
                log.exception("dropping a %s datagram from %s", packet.kind.name, packet.addr)

    def _route(self, packet: ControlPacket) -> None:
        if packet.relay is None and not packet.transport_id:
            listener = self._stun_listener
            if listener is not None and packet.kind is ControlKind.STUN and listener(packet):
                return
            probes = self._probes
            if (
                probes is not None
                and packet.kind is ControlKind.STUN
                and probes.receive(packet.data, packet.socket_id, packet.addr, time.monotonic())
            ):
                self._pump_probes()
                return
            if self._relays.owns(packet.socket_id, packet.addr):
                self._relays.handle(packet)  # relayed STUN/DTLS comes back here with relay set
                return
        key: SocketKey = packet.socket_id
        if packet.relay is not None:
            key = RelayKey(packet.socket_id, packet.relay)
        t = self._by_id.get(packet.transport_id) if packet.transport_id else None
        if t is None:
            t = self._bound.get((key, packet.addr))
        if t is None and packet.kind is ControlKind.STUN:
            username = stun_username(packet.data)
            if username is not None:
                t = self._by_ufrag.get(username.split(":", 1)[0])
                if t is None:
                    self.counters.stun_unknown_ufrag += 1
        if t is None:
            self.counters.dropped_unroutable += 1
            return
        self.counters.routed += 1
        if packet.relay is not None:
            self.counters.relayed_routed += 1
        t.handle_control(packet)


def _socket_id(key: SocketKey) -> int:
    return key.socket_id if isinstance(key, RelayKey) else key


def _any_address(host: str) -> str:
    return "::" if ":" in host else "0.0.0.0"
