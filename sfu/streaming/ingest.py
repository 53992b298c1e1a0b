"""RTP into the engine: ingest sockets for RTP mountpoints and for the Python-side sources.

An :class:`IngestPoint` is one engine socket whose every datagram belongs to one transport
(whatever the sender's address: ffmpeg sends from an ephemeral port), with one producer under
a fixed SSRC (see :class:`~sfu.engine.base.IngestSpec`). :class:`RtpStreamSource` opens one
per media entry on the entry's port -- unicast, or a multicast group joined on an interface --
with the entry's SRTP keys if it has some. :class:`LocalFeeder` gives the file and test sources
ingest points on 127.0.0.1 and a socket to send their RTP to them.

Keyframes: nobody can be asked for one on plain RTP, and the server does not cache them (it
never parses more than the first bytes of a payload). A new watcher's video starts at the next
keyframe the sender makes (the engine's keyframe gate holds the packets before it), so the
sender should make them regularly: ffmpeg's ``-g 30`` at 30 frames/s is one a second.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
from dataclasses import dataclass
from typing import Any

import ifaddr

from sfu.engine.base import IngestSpec, ProducerSpec, SrtpParameters
from sfu.engine.base import SrtpProfile as EngineProfile
from sfu.streaming.hub import Feed, MediaHub, StreamSource
from sfu.streaming.model import MediaEntry, Mountpoint, RtpSource, Srtp, SrtpProfile
from sfu.streaming.source import SourceError

__all__ = ["IngestPoint", "LocalFeeder", "RtpStreamSource", "multicast_socket", "srtp_parameters"]

_SALT = {SrtpProfile.AES_CM_128_HMAC_SHA1_80: 14, SrtpProfile.AEAD_AES_128_GCM: 12}
_SOCKET_BUFFER = 4 << 20


@dataclass(frozen=True)
class IngestPoint:
    """One ingest socket, its transport and the producer's SSRC."""

    socket_id: int
    transport_id: int
    ssrc: int
    address: tuple[str, int]

    def feed(self, entry: MediaEntry, payload_type: int | None = None) -> Feed:
        pt = entry.payload_type if payload_type is None else payload_type
        return Feed(self.transport_id, self.ssrc, pt, entry.clock_rate)


def srtp_parameters(srtp: Srtp) -> SrtpParameters:
    """SDES keys of an RTP source as the engine takes them (SourceError for a profile the engine
    lacks)."""
    salt_len = _SALT.get(srtp.profile)
    if salt_len is None:
        supported = ", ".join(p.value for p in _SALT)
        raise SourceError(f"SRTP profile {srtp.profile.value} is not supported (use {supported})")
    master, salt = srtp.key[:16], srtp.key[16 : 16 + salt_len]
    profile = EngineProfile[srtp.profile.value]
    return SrtpParameters(profile, master, salt, master, salt)


def _iface_index_and_address(iface: str | None, family: int) -> tuple[int, str | None]:
    """(interface index, an address of it in ``family``) for a name or an address."""
    if iface is None:
        return 0, None
    try:
        ip = ipaddress.ip_address(iface.split("%")[0])
    except ValueError:
        ip = None
    for adapter in ifaddr.get_adapters():
        addresses = [a.ip if isinstance(a.ip, str) else a.ip[0] for a in adapter.ips]
        if adapter.nice_name == iface or adapter.name == iface or str(ip) in addresses:
            mine = [a for a in addresses if (":" in a) == (family == socket.AF_INET6)]
            return int(adapter.index or 0), (mine[0] if mine else None)
    raise SourceError(f"no interface {iface!r} on this server")


def multicast_socket(group: str, port: int, iface: str | None) -> socket.socket:
    """A UDP socket bound to ``group``:``port`` that joined the group on ``iface`` (a name or
    an address; None: the kernel's choice)."""
    ip = ipaddress.ip_address(group)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    index, address = _iface_index_and_address(iface, family)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((group, port, 0, index))
            mreq6 = ip.packed + struct.pack("@I", index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
        else:
            sock.bind((group, port))
            local = socket.inet_aton(address) if address else bytes(4)
            mreqn = ip.packed + local + struct.pack("@i", index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    except OSError as e:
        sock.close()
        raise SourceError(f"cannot join {group} port {port}: {e.strerror or e}") from None
    return sock


class _Ingests:
    """Ingest points of one source: opened together, closed together."""

    def __init__(self, hub: MediaHub) -> None:
        self.hub = hub
        self.points: list[IngestPoint] = []

    def open(
        self,
        entry: MediaEntry,
        *,
        host: str,
        port: int,
        sock: socket.socket | None = None,
        srtp: SrtpParameters | None = None,
    ) -> IngestPoint:
        engine = self.hub.engine
        info = engine.adopt_socket(sock) if sock is not None else engine.open_socket(host, port)
        tid = self.hub.webrtc.next_transport_id()
        ssrc = secrets.randbits(32) or 1
        try:
            engine.add_ingest(IngestSpec(tid, info.socket_id, ssrc, srtp))
            engine.add_producer(ProducerSpec(tid, ssrc, entry.kind.value, entry.clock_rate))
        except Exception:
            engine.remove_transport(tid)
            engine.close_socket(info.socket_id)
            raise
        point = IngestPoint(info.socket_id, tid, ssrc, info.local_addr)
        self.points.append(point)
        return point

    def close(self) -> None:
        engine = self.hub.engine
        for point in self.points:
            engine.remove_transport(point.transport_id)
            engine.close_socket(point.socket_id)
        self.points.clear()

    def stats(self) -> list[dict[str, Any]]:
        out = []
        for point in self.points:
            s = self.hub.engine.transport_stats(point.transport_id)
            entry: dict[str, Any] = {"address": list(point.address), "ssrc": point.ssrc}
            if s is not None:
                inbound = s.inbound.get(point.ssrc)
                entry.update(
                    packets=s.packets_in,
                    bytes=s.bytes_in,
                    rtcp=s.rtcp_in,
                    srtp_errors=s.srtp_errors,
                    lost=inbound.lost if inbound else 0,
                    jitter=round(inbound.jitter, 1) if inbound else 0.0,
                )
            out.append(entry)
        return out


class RtpStreamSource(StreamSource):
    """RTP (or SRTP) sent to the ports of an ``rtp`` mountpoint."""

    type_name = "rtp"

    def __init__(self, hub: MediaHub, mountpoint: Mountpoint) -> None:
        super().__init__(hub, mountpoint)
        self._ingests = _Ingests(hub)

    async def _start(self) -> None:
        feeds: list[Feed | None] = []
        try:
            for entry in self.mountpoint.media:
                src = entry.source
                assert isinstance(src, RtpSource)
                srtp = srtp_parameters(src.srtp) if src.srtp is not None else None
                sock = None
                if src.multicast is not None:
                    sock = multicast_socket(str(src.multicast), src.port, src.iface)
                host = str(src.host) if src.host is not None else "0.0.0.0"
                point = self._ingests.open(entry, host=host, port=src.port, sock=sock, srtp=srtp)
                feeds.append(point.feed(entry))
        except BaseException:
            self._ingests.close()
            raise
        self._set_feeds(feeds)

    async def _stop(self) -> None:
        self._ingests.close()
        self._set_feeds([None] * len(self.mountpoint.media))

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "media": self._ingests.stats()}


class LocalFeeder:
    """Ingest points on 127.0.0.1 for a Python source, and the socket that feeds them.

    ``send`` may be called from the source's own thread: it only writes to a UDP socket.
    """

    def __init__(self, hub: MediaHub) -> None:
        self._ingests = _Ingests(hub)
        self._sock: socket.socket | None = None
        self._addresses: tuple[tuple[str, int], ...] = ()  # replaced whole: read by the thread
        self.sent = 0
        self.send_errors = 0

    def open(self, media: tuple[MediaEntry, ...]) -> list[Feed]:
        """One ingest point per media entry; their feeds."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
        self._sock = sock
        try:
            feeds = [self._ingests.open(e, host="127.0.0.1", port=0).feed(e) for e in media]
        except BaseException:
            self.close()
            raise
        self._addresses = tuple(p.address for p in self._ingests.points)
        return feeds

    @property
    def points(self) -> list[IngestPoint]:
        return list(self._ingests.points)

    def send(self, index: int, packets: list[bytes]) -> None:
        sock, addresses = self._sock, self._addresses
        if sock is None or index >= len(addresses):
            return
        address = addresses[index]
        for packet in packets:
            try:
                sock.sendto(packet, address)
                self.sent += 1
            except OSError:
                self.send_errors += 1

    def close(self) -> None:
        self._addresses = ()
        self._ingests.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def stats(self) -> list[dict[str, Any]]:
        return self._ingests.stats()
