"""The doctor inside the running server: probes leave from the server's own media sockets.

The WebRtcServer lends its media sockets (:class:`DoctorHost`): the doctor sends from them, and
while a diagnosis runs a hook takes the answers to its STUN transactions out of the control
batches before routing (they would be dropped as unroutable). :class:`LiveDoctor` runs one
diagnosis at a time, reuses a recent report, and logs the start-up verdict.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from sfu.config import MediaMode
from sfu.doctor.report import Diagnosis, Report
from sfu.doctor.run import DoctorSettings, Receiver, diagnose_socket, stun_servers_for
from sfu.doctor.verdict import Level
from sfu.engine.base import (
    Addr,
    ControlPacket,
    SocketInfo,
)
from sfu.ice.candidate import format_addr
from sfu.webrtc.server import MediaSettings

log = logging.getLogger(__name__)


class DoctorHost(Protocol):
    """What the live doctor needs from the WebRtcServer: its media sockets, a way to send from
    them, and a hook that sees unbound STUN before routing does."""

    @property
    def media_sockets(self) -> list[SocketInfo]: ...

    def send_raw(self, socket_id: int, addr: Addr, data: bytes) -> None: ...

    def listen_stun(self, listener: Callable[[ControlPacket], bool] | None) -> None: ...


class EngineLink:
    """One engine media socket as a :class:`~sfu.doctor.run.MediaLink`."""

    def __init__(self, host: DoctorHost, info: SocketInfo) -> None:
        self._host = host
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
        self._host.send_raw(self._info.socket_id, addr, data)

    def set_receiver(self, receiver: Receiver | None) -> None:
        self.receiver = receiver


class LiveDoctor:
    """Diagnoses through the running server's media sockets, one run at a time.

    A report younger than ``reuse`` seconds is returned again (``fresh=True`` forces a run).
    """

    def __init__(self, host: DoctorHost, settings: DoctorSettings, *, reuse: float = 10.0) -> None:
        self.host = host
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
        for info in self.host.media_sockets:
            if not self.settings.stun_servers or await stun_servers_for(self.settings, info.family):
                links.append(EngineLink(self.host, info))
        links.sort(key=lambda lk: lk.family != socket.AF_INET)  # IPv4 first: the main verdict
        if not self.settings.stun_servers:
            links = links[:1]  # nothing to probe with: one diagnosis says so
        by_socket = {lk.socket_id: lk for lk in links}

        def listener(packet: ControlPacket) -> bool:
            link = by_socket.get(packet.socket_id)
            if link is None or link.receiver is None:
                return False
            return link.receiver(packet.data, packet.addr)

        self.host.listen_stun(listener)
        try:
            results = await asyncio.gather(
                *(self._one(link, budget) for link in links),
                return_exceptions=True,
            )
        finally:
            self.host.listen_stun(None)
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
