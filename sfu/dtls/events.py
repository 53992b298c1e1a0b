"""Events a DtlsSession reports through ``next_event()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.dtls.session import SrtpKeys


class DtlsEvent:
    """Base class of all DTLS session events."""


@dataclass(frozen=True)
class HandshakeCompleted(DtlsEvent):
    """The handshake finished and the peer's certificate matched its SDP fingerprint."""

    keys: SrtpKeys
    remote_certificate_der: bytes = field(repr=False)


@dataclass(frozen=True)
class DtlsFailed(DtlsEvent):
    """The session failed for good (handshake error, timeout, fingerprint mismatch)."""

    reason: str


@dataclass(frozen=True)
class DtlsClosed(DtlsEvent):
    """The peer closed the session with close_notify."""


@dataclass(frozen=True)
class ApplicationData(DtlsEvent):
    """Application data received after the handshake (data channels would use this)."""

    data: bytes
