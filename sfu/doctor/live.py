"""The doctor inside the running server: probes leave from the engine's own media socket.

:class:`EngineTap` is an :class:`~sfu.engine.base.Engine` that forwards everything to the real
engine. It remembers the sockets opened before the engine starts (the media sockets) and, while a
diagnosis runs, takes the answers to the doctor's STUN transactions out of the control batches
before the WebRtcServer sees them (they would be dropped as unroutable). When no diagnosis runs a
batch goes through untouched.

:class:`LiveDoctor` runs one diagnosis at a time, reuses a recent report, and logs the start-up
verdict.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from sfu.config import MediaMode
from sfu.doctor.report import Diagnosis, Report
from sfu.doctor.run import DoctorSettings, Receiver, diagnose_socket, stun_servers_for
from sfu.doctor.verdict import Level
from sfu.engine.base import (
    Addr,
    ConsumerSpec,
    ControlKind,
    ControlPacket,
    Deliver,
    Engine,
    EngineStats,
    ProducerSpec,
    RelayPath,
    SocketInfo,
    SrtpParameters,
    TransportStats,
)
from sfu.ice.candidate import format_addr
from sfu.webrtc.server import MediaSettings

log = logging.getLogger(__name__)

Listener = Callable[[ControlPacket], bool]


class EngineTap:
    """An engine wrapper that lets the doctor use the media sockets (see the module doc)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self._media: list[SocketInfo] = []
        self._started = False
        self._deliver: Deliver | None = None
        self._listener: Listener | None = None

    @property
    def media_sockets(self) -> list[SocketInfo]:
        """The sockets opened before the engine started (the WebRtcServer's listeners)."""
        return list(self._media)

    def listen(self, listener: Listener | None) -> None:
        """While set, unbound STUN packets go to ``listener`` first; True means it took one."""
        self._listener = listener

    def _on_batch(self, batch: list[ControlPacket]) -> None:
        deliver, listener = self._deliver, self._listener
        if deliver is None:
            return
        if listener is not None:
            batch = [
                p
                for p in batch
                if not (p.kind is ControlKind.STUN and p.relay is None and listener(p))
            ]
            if not batch:
                return
        deliver(batch)

    # -- the Engine interface -------------------------------------------------------------------

    def open_socket(self, host: str, port: int) -> SocketInfo:
        info = self.inner.open_socket(host, port)
        if not self._started:
            self._media.append(info)
        return info

    def close_socket(self, socket_id: int) -> None:
        self.inner.close_socket(socket_id)
        self._media = [s for s in self._media if s.socket_id != socket_id]

    def start(self, deliver: Deliver) -> None:
        self._started = True
        self._deliver = deliver
        self.inner.start(self._on_batch)

    def stop(self) -> None:
        self.inner.stop()

    def send(self, socket_id: int, addr: Addr, data: bytes) -> None:
        self.inner.send(socket_id, addr, data)

    def bind(self, transport_id: int, socket_id: int, addr: Addr) -> None:
        self.inner.bind(transport_id, socket_id, addr)

    def set_destination(
        self, transport_id: int, socket_id: int, addr: Addr, relay: RelayPath | None = None
    ) -> None:
        self.inner.set_destination(transport_id, socket_id, addr, relay)

    def bind_channel(self, socket_id: int, server: Addr, channel: int, peer: Addr) -> None:
        self.inner.bind_channel(socket_id, server, channel, peer)

    def unbind_channel(self, socket_id: int, server: Addr, channel: int) -> None:
        self.inner.unbind_channel(socket_id, server, channel)

    def set_srtp(self, transport_id: int, params: SrtpParameters) -> None:
        self.inner.set_srtp(transport_id, params)

    def remove_transport(self, transport_id: int) -> None:
        self.inner.remove_transport(transport_id)

    def add_producer(self, spec: ProducerSpec) -> None:
        self.inner.add_producer(spec)

    def remove_producer(self, transport_id: int, ssrc: int) -> None:
        self.inner.remove_producer(transport_id, ssrc)

    def add_consumer(self, spec: ConsumerSpec) -> None:
        self.inner.add_consumer(spec)

    def remove_consumer(self, consumer_id: int) -> None:
        self.inner.remove_consumer(consumer_id)

    def pause_consumer(self, consumer_id: int, paused: bool) -> None:
        self.inner.pause_consumer(consumer_id, paused)

    def send_rtcp(self, transport_id: int, packet: bytes) -> None:
        self.inner.send_rtcp(transport_id, packet)

    def retransmit(self, consumer_id: int, seqs: Sequence[int]) -> int:
        return self.inner.retransmit(consumer_id, seqs)

    def transport_stats(self, transport_id: int) -> TransportStats | None:
        return self.inner.transport_stats(transport_id)

    def stats(self) -> EngineStats:
        return self.inner.stats()


class EngineLink:
    """One engine media socket as a :class:`~sfu.doctor.run.MediaLink`."""

    def __init__(self, tap: EngineTap, info: SocketInfo) -> None:
        self._tap = tap
        self._info = info
        self.receiver: Receiver | None = None

    @property
    def family(self) -> int:
        return self._info.family

    @property
    def local_addr(self) -> Addr:
        return self._info.local_addr

    @property
    def socket_id(self) -> int:
        return self._info.socket_id

    def send(self, addr: Addr, data: bytes) -> None:
        self._tap.send(self._info.socket_id, addr, data)

    def set_receiver(self, receiver: Receiver | None) -> None:
        self.receiver = receiver


class LiveDoctor:
    """Diagnoses through the running server's media sockets, one run at a time.

    A report younger than ``reuse`` seconds is returned again (``fresh=True`` forces a run).
    """

    def __init__(self, tap: EngineTap, settings: DoctorSettings, *, reuse: float = 10.0) -> None:
        self.tap = tap
        self.settings = settings
        self.reuse = reuse
        self._lock = asyncio.Lock()
        self._last: tuple[float, Report] | None = None

    async def diagnose(self, budget: float = 2.0, *, fresh: bool = False) -> Report:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if not fresh and self._last is not None and now - self._last[0] < self.reuse:
                return self._last[1]
            try:  # name resolution is outside the probe's own time bound
                report = await asyncio.wait_for(self._run(budget), budget + 3.0)
            except TimeoutError:
                report = Report((), (f"the diagnosis took longer than {budget + 3.0:.0f} s",))
            self._last = (asyncio.get_running_loop().time(), report)
            return report

    async def _run(self, budget: float) -> Report:
        links: list[EngineLink] = []
        for info in self.tap.media_sockets:
            if not self.settings.stun_servers or await stun_servers_for(self.settings, info.family):
                links.append(EngineLink(self.tap, info))
        links.sort(key=lambda lk: lk.family != socket.AF_INET)  # IPv4 first: the main verdict
        if not self.settings.stun_servers:
            links = links[:1]  # nothing to probe with: one diagnosis says so
        by_socket = {lk.socket_id: lk for lk in links}

        def listener(packet: ControlPacket) -> bool:
            link = by_socket.get(packet.socket_id)
            if link is None or link.receiver is None:
                return False
            return link.receiver(packet.data, packet.addr)

        self.tap.listen(listener)
        try:
            results = await asyncio.gather(
                *(self._one(link, budget) for link in links),
                return_exceptions=True,
            )
        finally:
            self.tap.listen(None)
        diagnoses: list[Diagnosis] = []
        notes: list[str] = []
        for link, result in zip(links, results, strict=True):
            if isinstance(result, BaseException):
                notes.append(f"media socket {format_addr(link.local_addr)}: probe failed: {result}")
            else:
                diagnoses.append(result)
        if not links:
            notes.append("no media socket of a family the STUN servers resolve to")
        return Report(tuple(diagnoses), tuple(notes))

    async def _one(self, link: EngineLink, budget: float) -> Diagnosis:
        notes = []
        if self.settings.media.mode is MediaMode.PORT_RANGE:
            notes.append(
                f"port-range mode: probed from the service socket (port {link.local_addr[1]}); "
                "`sfu doctor` with the server stopped probes the first port of the range"
            )
        return await diagnose_socket(
            link, self.settings, budget, notes=notes, media_port=link.local_addr[1]
        )

    async def log_startup(self, budget: float = 2.0) -> None:
        """Run once after start-up and log the verdict in one line (never raises)."""
        try:
            report = await self.diagnose(budget, fresh=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("doctor: the start-up diagnosis failed")
            return
        verdict = report.verdict
        level = logging.WARNING if verdict.level is Level.ACTION else logging.INFO
        log.log(level, "doctor (%s): %s", verdict.level.value, verdict.line)


def doctor_settings(media: MediaSettings, early_checks: bool) -> DoctorSettings:
    """The doctor's settings from the running server's media settings."""
    return DoctorSettings(
        media=media.media,
        announce=tuple(media.announce),
        stun_servers=tuple(media.stun_servers),
        turn=tuple(media.turn),
        early_checks=early_checks,
    )
