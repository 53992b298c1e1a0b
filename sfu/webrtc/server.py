"""WebRtcServer: the single UDP port shared by every transport, and who gets each datagram.

The engine owns the sockets and hands control datagrams over in batches. Routing, in order:

1. the engine already knows the 5-tuple (``packet.transport_id``);
2. the (socket, remote address) pair was bound by a transport (a valid STUN check came from it);
3. an unbound STUN request is routed by the local ufrag in its USERNAME ("local:remote").

Anything else (unknown sources that are not valid STUN for a known ufrag) is dropped and counted,
without allocating anything.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import ifaddr

from sfu.config import AnnounceMode, AnnounceRule, Config, MediaConfig, is_private_address
from sfu.engine.base import Addr, ControlKind, ControlPacket, Engine, SocketInfo
from sfu.ice.candidate import Candidate, CandidateType, candidate_foundation, candidate_priority
from sfu.ice.stun import stun_username
from sfu.webrtc.transport import WebRtcTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaSettings:
    """What the WebRtcServer needs from the configuration."""

    media: MediaConfig = field(default_factory=MediaConfig)
    announce: Sequence[AnnounceRule] = ()
    announce_private: bool = True

    @classmethod
    def from_config(cls, config: Config) -> MediaSettings:
        return cls(config.media, config.announce, config.announce_private)


@dataclass
class ServerCounters:
    dropped_unroutable: int = 0
    stun_unknown_ufrag: int = 0
    routed: int = 0
    ice_rejected_closed: int = 0  # STUN refused by agents of transports since closed


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
        self._bound: dict[tuple[int, Addr], WebRtcTransport] = {}
        self._ids = itertools.count(1)
        self._candidates: list[tuple[Candidate, int]] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Bind the media port on every listen address the kernel supports."""
        media = self.settings.media
        errors = []
        for ip in media.listen:
            host = str(ip)
            try:
                info = self.engine.open_socket(host, media.port)
            except OSError as exc:
                errors.append(f"{host}:{media.port}: {exc.strerror or exc}")
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
        if not self._candidates:
            log.warning("no host candidate: check [media] interfaces/cidrs/include_loopback")

    def start(self) -> None:
        self.engine.start(self.deliver)

    def close(self) -> None:
        for t in list(self._by_id.values()):
            t.close("server shutting down")
        self.engine.stop()

    @property
    def local_addresses(self) -> list[Addr]:
        return [lst.info.local_addr for lst in self._listeners]

    # -- candidates -------------------------------------------------------------------------------

    def _build_candidates(self) -> list[tuple[Candidate, int]]:
        """Host candidates per listener address, with the 1:1 announce rules applied.

        Every matching rule adds a candidate with its public address and mapped port; a matching
        "replace" rule drops the private one; ``announce_private = false`` drops every private
        address left. Announced candidates get the higher local preference.
        """
        announced: list[tuple[str, int, int]] = []
        private: list[tuple[str, int, int]] = []
        for listener in self._listeners:
            port = listener.info.local_addr[1]
            sid = listener.info.socket_id
            for address in listener.addresses:
                ip = ipaddress.ip_address(address)
                rules = [r for r in self.settings.announce if r.matches(ip)]
                replace = False
                for rule in rules:
                    if rule.auto:
                        log.warning(
                            "announce rule %s: 'auto' is not supported yet, skipped", rule.to_text()
                        )
                        continue
                    announced.append(
                        (str(rule.public), rule.map_port(port, self.settings.media), sid)
                    )
                    replace = replace or rule.mode is AnnounceMode.REPLACE
                if replace:
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

    def local_candidates(self) -> list[tuple[Candidate, int]]:
        return list(self._candidates)

    # -- transports -------------------------------------------------------------------------------

    def next_transport_id(self) -> int:
        return next(self._ids)

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

    def bind_address(self, transport: WebRtcTransport, socket_id: int, addr: Addr) -> None:
        key = (socket_id, addr)
        if self._bound.get(key) is not transport:
            self._bound[key] = transport
            self.engine.bind(transport.id, socket_id, addr)

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
        t = self._by_id.get(packet.transport_id) if packet.transport_id else None
        if t is None:
            t = self._bound.get((packet.socket_id, packet.addr))
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
        t.handle_control(packet)
