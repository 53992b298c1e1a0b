"""dtls: a sans-IO DTLS-SRTP session and the server certificate."""

from sfu.dtls.certificate import (
    Certificate,
    Fingerprint,
    compute_fingerprint,
    parse_fingerprint,
    verify_fingerprint,
)
from sfu.dtls.events import (
    ApplicationData,
    DtlsClosed,
    DtlsEvent,
    DtlsFailed,
    HandshakeCompleted,
)
from sfu.dtls.session import DtlsRole, DtlsSession, DtlsState, SrtpKeys, SrtpProfile

__all__ = [
    "ApplicationData",
    "Certificate",
    "DtlsClosed",
    "DtlsEvent",
    "DtlsFailed",
    "DtlsRole",
    "DtlsSession",
    "DtlsState",
    "Fingerprint",
    "HandshakeCompleted",
    "SrtpKeys",
    "SrtpProfile",
    "compute_fingerprint",
    "parse_fingerprint",
    "verify_fingerprint",
]
