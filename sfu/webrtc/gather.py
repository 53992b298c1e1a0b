"""Server-reflexive addresses from STUN, asked from the media sockets themselves at start-up.

:class:`BindingProbes` is sans-IO: one STUN Binding request per (media socket, STUN server),
each retransmitted (3 tries, 1.4 s until giving up, by default), answered by the mapped address the
server saw. The WebRtcServer sends the datagrams from the engine's sockets (so the NAT mapping
learned is the one of the media port itself) and routes the answers back by transaction id.

:func:`srflx_candidates` turns what was learned into server-reflexive candidates; the
``announce`` rules with ``public = "auto"`` use the same results (see the WebRtcServer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aioice.stun import Class, Message, Method

from sfu.engine.base import Addr
from sfu.ice.candidate import Candidate, CandidateType, candidate_foundation, candidate_priority
from sfu.ice.stun import parse_stun


@dataclass(frozen=True)
class MappedAddress:
    """What one STUN server told one media socket: ``mapped`` is None when it failed."""

    socket_id: int
    server: Addr
    mapped: Addr | None
    error: str | None = None


@dataclass(eq=False)
class _Probe:
    socket_id: int
    server: Addr
    txid: bytes
    data: bytes
    deadline: float
    rto: float
    sent: int = 1


class BindingProbes:
    """STUN Binding transactions toward several servers from several sockets (sans-IO)."""

    def __init__(self, *, rto: float = 0.2, tries: int = 3) -> None:
        self._rto = rto
        self._tries = tries
        self._pending: dict[bytes, _Probe] = {}
        self._outbox: list[tuple[int, Addr, bytes]] = []
        self.results: list[MappedAddress] = []

    def add(self, socket_id: int, server: Addr, now: float) -> None:
        """Ask ``server`` from ``socket_id`` (the first request leaves with the next drain)."""
        msg = Message(Method.BINDING, Class.REQUEST)
        msg.add_fingerprint()
        data = bytes(msg)
        probe = _Probe(socket_id, server, msg.transaction_id, data, now + self._rto, self._rto)
        self._pending[probe.txid] = probe
        self._outbox.append((socket_id, server, data))

    @property
    def finished(self) -> bool:
        """True when every probe got an answer or gave up."""
        return not self._pending

    def owns(self, data: bytes) -> bool:
        """Cheap test: is this a STUN response to one of our pending requests?"""
        return len(data) >= 20 and data[8:20] in self._pending

    def receive(self, data: bytes, socket_id: int, addr: Addr, now: float) -> bool:
        """Handle a datagram; True if it answered one of our probes."""
        if not self.owns(data):
            return False
        probe = self._pending[data[8:20]]
        if probe.socket_id != socket_id or _norm(addr) != _norm(probe.server):
            return False
        msg = parse_stun(data)
        if msg is None or msg.message_method != Method.BINDING:
            return False
        if msg.message_class == Class.RESPONSE:
            mapped = msg.attributes.get("XOR-MAPPED-ADDRESS") or msg.attributes.get(
                "MAPPED-ADDRESS"
            )
            if not isinstance(mapped, tuple):
                result = MappedAddress(socket_id, probe.server, None, "answer without address")
            else:
                result = MappedAddress(socket_id, probe.server, _norm(mapped))
        elif msg.message_class == Class.ERROR:
            code = msg.attributes.get("ERROR-CODE", (0, "error"))
            result = MappedAddress(socket_id, probe.server, None, f"error {code[0]} {code[1]}")
        else:
            return False
        del self._pending[probe.txid]
        self.results.append(result)
        return True

    def datagrams_to_send(self, now: float) -> list[tuple[int, Addr, bytes]]:
        """(socket_id, server, data) to send now."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> None:
        """Retransmit (the RTO doubles) or give up after the last try."""
        for probe in [p for p in self._pending.values() if p.deadline <= now]:
            if probe.sent < self._tries:
                probe.sent += 1
                probe.rto *= 2
                probe.deadline = now + probe.rto
                self._outbox.append((probe.socket_id, probe.server, probe.data))
                continue
            del self._pending[probe.txid]
            error = f"no answer after {probe.sent} tries"
            self.results.append(MappedAddress(probe.socket_id, probe.server, None, error))


def srflx_candidates(
    learned: Iterable[tuple[MappedAddress, str, int]],
    offered: Iterable[Addr],
    first_local_pref: int = 65535,
) -> list[tuple[Candidate, int]]:
    """Server-reflexive candidates from ``(result, base ip, base port)``, one per mapped address.

    A mapped address equal to an address already ``offered`` (a host candidate, or an
    announced one) is skipped: the peer would check the same address twice. The foundation
    follows RFC 8445 5.1.1.3 (type, base IP, STUN server IP, transport).
    """
    seen = {_norm(a) for a in offered}
    out: list[tuple[Candidate, int]] = []
    pref = first_local_pref
    for result, base_ip, base_port in learned:
        if result.mapped is None or result.mapped in seen:
            continue
        seen.add(result.mapped)
        cand = Candidate(
            foundation=candidate_foundation(CandidateType.SRFLX, base_ip, "udp", result.server[0]),
            component=1,
            transport="udp",
            priority=candidate_priority(CandidateType.SRFLX, pref, 1),
            host=result.mapped[0],
            port=result.mapped[1],
            type=CandidateType.SRFLX,
            related_address=base_ip,
            related_port=base_port,
        )
        out.append((cand, result.socket_id))
        pref = max(0, pref - 1)
    return out


def route_source(family: int, destination: str, candidates: Sequence[str]) -> str | None:
    """The local address the kernel would send from toward ``destination`` (no packet leaves:
    a connected UDP socket is only a route lookup), if it is one of ``candidates``; else the
    first candidate."""
    chosen: str | None = None
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((destination, 9))
        chosen = str(ipaddress.ip_address(s.getsockname()[0]))
    if chosen is not None and chosen in candidates:
        return chosen
    return candidates[0] if candidates else chosen


async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[tuple[int, Addr]]:
    """(family, (ip, port)) for ``host``; an IP literal needs no resolver. [] when unresolvable."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (str(ip), port))]
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return []
    out: list[tuple[int, Addr]] = []
    for family, _, _, _, sockaddr in infos:
        item = (int(family), (str(sockaddr[0]), int(sockaddr[1])))
        if item not in out:
            out.append(item)
    return out


def _norm(addr: tuple[object, ...]) -> Addr:
    return (str(ipaddress.ip_address(str(addr[0]))), int(str(addr[1])))
