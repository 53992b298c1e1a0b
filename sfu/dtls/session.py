"""A sans-IO DTLS 1.2 endpoint for DTLS-SRTP (RFC 5764), over pyOpenSSL memory BIOs.

Bytes and a clock go in (``receive``, ``handle_timer``); datagrams (``datagrams_to_send``)
and typed events (``next_event``) come out. Nothing here touches a socket.

One caveat about time: OpenSSL keeps its own retransmission timer on the wall clock and
cannot be told the time. ``get_timer()`` maps that timer onto the caller's clock, and
``handle_timer(now)`` asks OpenSSL to retransmit; OpenSSL only does so once its own timer
(1 s, doubling) has really expired, otherwise the timer is simply re-armed. The handshake
deadline, on the other hand, runs entirely on the caller's clock.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from OpenSSL import SSL, crypto

from sfu.dtls.certificate import Certificate, Fingerprint, compute_fingerprint, verify_fingerprint
from sfu.dtls.events import (
    ApplicationData,
    DtlsClosed,
    DtlsEvent,
    DtlsFailed,
    HandshakeCompleted,
)
from sfu.rtp.srtp import SrtpProfile

DTLS1_2_VERSION: Final = 0xFEFD  # not exported by pyOpenSSL
EXPORTER_LABEL: Final = b"EXTRACTOR-dtls_srtp"  # RFC 5764 section 4.2
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_MTU: Final = 1200
MIN_MTU: Final = 256  # OpenSSL refuses smaller ones and the handshake then fails

# ECDHE only; ECDSA first (our certificate is P-256), RSA kept for peers with RSA certificates.
_CIPHERS: Final = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-RSA-AES256-SHA",
    ]
)

_RECORD_HEADER_LEN: Final = 13  # type(1) version(2) epoch(2) sequence(6) length(2)
_MAX_RECORD_BODY: Final = 16384 + 2048  # RFC 6347 4.1 / RFC 5246 6.2.3
_RECORD_TYPES: Final = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, data
_RECORD_VERSIONS: Final = frozenset({0xFEFF, 0xFEFD})  # DTLS 1.0 (early ClientHello), 1.2
_BIO_CHUNK: Final = 65536

_VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


class DtlsRole(Enum):
    """Our DTLS role; SDP ``a=setup:active`` means client, ``passive`` means server."""

    CLIENT = "client"
    SERVER = "server"


class DtlsState(Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class SrtpKeys:
    """SRTP master keys from the handshake.

    ``local_*`` protect what we send; ``remote_*`` unprotect what we receive. For
    pylibsrtp, the policy key is ``key + salt``.
    """

    profile: SrtpProfile
    local_key: bytes = field(repr=False)
    local_salt: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)
    remote_salt: bytes = field(repr=False)

    @classmethod
    def from_keying_material(
        cls, profile: SrtpProfile, material: bytes, role: DtlsRole
    ) -> SrtpKeys:
        """Split exporter output laid out as in RFC 5764 section 4.2:
        client_key | server_key | client_salt | server_salt."""
        k, s = profile.key_len, profile.salt_len
        if len(material) != 2 * (k + s):
            raise ValueError(f"expected {2 * (k + s)} bytes of keying material")
        client_key, server_key = material[:k], material[k : 2 * k]
        client_salt, server_salt = material[2 * k : 2 * k + s], material[2 * k + s :]
        if role is DtlsRole.CLIENT:
            return cls(profile, client_key, client_salt, server_key, server_salt)
        return cls(profile, server_key, server_salt, client_key, client_salt)


class DtlsSession:
    """One DTLS-SRTP association, client or server, with no I/O of its own.

    The handshake deadline runs from ``start()`` for a client and from the first
    received record for a server (which waits for the ClientHello).
    """

    def __init__(
        self,
        certificate: Certificate,
        role: DtlsRole,
        remote_fingerprints: list[Fingerprint],
        profiles: Sequence[SrtpProfile] = (
            SrtpProfile.AEAD_AES_128_GCM,
            SrtpProfile.AES_CM_128_HMAC_SHA1_80,
        ),
        mtu: int = DEFAULT_MTU,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if not remote_fingerprints:
            raise ValueError("at least one remote fingerprint is required")
        if not profiles:
            raise ValueError("at least one SRTP profile is required")
        if mtu < MIN_MTU:
            raise ValueError(f"mtu must be at least {MIN_MTU} bytes (OpenSSL's DTLS minimum)")
        self.role = role
        self.state = DtlsState.NEW
        self.srtp_keys: SrtpKeys | None = None
        self.remote_certificate_der: bytes | None = None
        self.datagrams_dropped = 0  # unparseable or arriving in the wrong state
        self.retransmissions = 0  # flights resent by handle_timer

        self._remote_fingerprints = list(remote_fingerprints)
        self._mtu = mtu
        self._handshake_timeout = handshake_timeout
        self._deadline: float | None = None
        self._retransmit_at: float | None = None
        self._events: deque[DtlsEvent] = deque()
        self._outgoing: list[bytes] = []

        self._fingerprint_error: str | None = None
        # The verify callback holds the session weakly: no reference cycle through OpenSSL.
        verify = _weak_verify_callback(weakref.ref(self))
        self._conn = SSL.Connection(_make_context(certificate, profiles, verify), None)
        self._conn.set_ciphertext_mtu(mtu)
        if role is DtlsRole.CLIENT:
            self._conn.set_connect_state()
        else:
            self._conn.set_accept_state()

    # -- inputs --------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the handshake: a client sends its ClientHello, a server waits."""
        if self.state is not DtlsState.NEW:
            return
        self.state = DtlsState.CONNECTING
        if self.role is DtlsRole.CLIENT:
            self._deadline = now + self._handshake_timeout
            self._drive_handshake(now)

    def receive(self, data: bytes, now: float) -> None:
        """Feed one datagram of DTLS records (first byte 20..63) from the peer.

        Never raises: junk is counted in ``datagrams_dropped``, a fatal protocol error
        fails the session with a reason.
        """
        if self.state is DtlsState.NEW and self.role is DtlsRole.SERVER:
            self.start(now)
        if self.state not in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            self.datagrams_dropped += 1
            return
        if _split_records(data) is None:
            self.datagrams_dropped += 1
            return
        if self.state is DtlsState.CONNECTING and self._deadline is None:
            self._deadline = now + self._handshake_timeout
        try:
            self._conn.bio_write(data)
        except SSL.Error:
            self.datagrams_dropped += 1
            return
        if self.state is DtlsState.CONNECTING:
            self._drive_handshake(now)
        else:
            self._read_application_data()
            self._flush()

    def handle_timer(self, now: float) -> None:
        """Enforce the handshake deadline and let OpenSSL retransmit its last flight."""
        if self.state not in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            return
        if self.state is DtlsState.CONNECTING and self._deadline is not None:
            if now >= self._deadline:
                self._fail(f"DTLS handshake timed out after {self._handshake_timeout:g} s")
                return
        if self._retransmit_at is None or now < self._retransmit_at:
            return
        try:
            if self._conn.DTLSv1_handle_timeout():
                self.retransmissions += 1
        except SSL.Error as exc:
            self._fail(f"DTLS handshake failed on retransmission: {_describe(exc)}")
        self._flush()
        self._update_timer(now)

    def send_application_data(self, data: bytes) -> None:
        """Send application data (not used by media; here for completeness and tests)."""
        if self.state is not DtlsState.CONNECTED:
            raise ConnectionError(f"DTLS session is {self.state.value}, not connected")
        try:
            self._conn.send(data)
        except SSL.Error as exc:
            self._fail(f"DTLS send failed: {_describe(exc)}")
        self._flush()

    def close(self) -> None:
        """Close the session; a connected session sends close_notify first."""
        if self.state is DtlsState.CONNECTED:
            self._shutdown()
        if self.state is not DtlsState.FAILED:
            self.state = DtlsState.CLOSED
        self._deadline = self._retransmit_at = None

    # -- outputs -------------------------------------------------------------

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams to send to the peer, each at most ``mtu`` bytes (unless one record
        alone is larger, which OpenSSL avoids for handshake messages)."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next be called, on the caller's clock."""
        if self.state not in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            return None
        timers = [t for t in (self._deadline, self._retransmit_at) if t is not None]
        return min(timers) if timers else None

    def next_event(self) -> DtlsEvent | None:
        return self._events.popleft() if self._events else None

    # -- internals -----------------------------------------------------------

    def _drive_handshake(self, now: float) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self._fail("peer closed the connection during the DTLS handshake")
        except SSL.Error as exc:
            self._fail(self._fingerprint_error or f"DTLS handshake failed: {_describe(exc)}")
        else:
            self._complete_handshake()
        self._flush()
        self._update_timer(now)

    def _complete_handshake(self) -> None:
        peer = self._conn.get_peer_certificate()
        if peer is None:
            self._fail("peer presented no certificate")
            self._shutdown()
            return
        # DER straight from OpenSSL: a strict parser could reject what OpenSSL accepted.
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, peer)
        mismatch = self._check_fingerprint(der)
        if mismatch is not None:  # normally caught earlier by the verify callback
            self._fail(mismatch)
            self._shutdown()
            return
        name = self._conn.get_selected_srtp_profile().decode("ascii", "replace")
        if not name:
            self._fail("peer did not negotiate an SRTP profile (use_srtp)")
            self._shutdown()
            return
        profile = SrtpProfile.from_openssl_name(name)
        material = self._conn.export_keying_material(
            EXPORTER_LABEL, 2 * (profile.key_len + profile.salt_len)
        )
        self.srtp_keys = SrtpKeys.from_keying_material(profile, material, self.role)
        self.remote_certificate_der = der
        self.state = DtlsState.CONNECTED
        self._deadline = None
        self._events.append(HandshakeCompleted(self.srtp_keys, der))
        self._read_application_data()

    def _check_fingerprint(self, der: bytes) -> str | None:
        """None if the certificate matches the SDP fingerprints, else the failure reason."""
        if verify_fingerprint(der, self._remote_fingerprints):
            return None
        expected = ", ".join(str(fp) for fp in self._remote_fingerprints)
        actual = compute_fingerprint(der)
        return f"fingerprint mismatch: peer certificate is {actual}, SDP has {expected}"

    def _verify_peer_certificate(self, cert: crypto.X509, depth: int) -> bool:
        """OpenSSL verify callback: self-signed is fine, but the leaf must match the SDP
        fingerprint. Rejecting here makes OpenSSL send an alert to the peer, so neither
        side derives keys. Must not raise: pyOpenSSL would re-raise out of do_handshake."""
        if depth != 0:
            return True
        try:
            der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        except Exception as exc:  # anything here means "reject"
            self._fingerprint_error = f"unreadable peer certificate: {exc}"
            return False
        self._fingerprint_error = self._check_fingerprint(der)
        return self._fingerprint_error is None

    def _read_application_data(self) -> None:
        while self.state is DtlsState.CONNECTED:
            try:
                data = self._conn.recv(_BIO_CHUNK)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self._shutdown()
                self.state = DtlsState.CLOSED
                self._deadline = self._retransmit_at = None
                self._events.append(DtlsClosed())
                return
            except SSL.Error as exc:
                self._fail(f"DTLS connection failed: {_describe(exc)}")
                return
            if data:
                self._events.append(ApplicationData(data))

    def _shutdown(self) -> None:
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass
        self._flush()

    def _fail(self, reason: str) -> None:
        self.state = DtlsState.FAILED
        self._deadline = self._retransmit_at = None
        self._events.append(DtlsFailed(reason))

    def _update_timer(self, now: float) -> None:
        if self.state not in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            self._retransmit_at = None
            return
        timeout = self._conn.DTLSv1_get_timeout()
        self._retransmit_at = None if timeout is None else now + timeout

    def _flush(self) -> None:
        """Move what OpenSSL wrote into datagrams, packing whole records up to the MTU.

        The memory BIO is a byte stream: reading it blindly could cut a record in two.
        """
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(_BIO_CHUNK))
            except SSL.Error:
                break
        if not chunks:
            return
        pending = b"".join(chunks)
        records = _split_records(pending)
        if records is None:  # cannot happen with OpenSSL output; send it as it is
            self._outgoing.append(pending)
            return
        self._outgoing.extend(_pack(records, self._mtu))


def _weak_verify_callback(session_ref: weakref.ref[DtlsSession]) -> _VerifyCallback:
    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        session = session_ref()
        return session is not None and session._verify_peer_certificate(cert, depth)

    return verify


def _make_context(
    certificate: Certificate, profiles: Sequence[SrtpProfile], verify: _VerifyCallback
) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION
    )
    ctx.set_cipher_list(_CIPHERS)
    ctx.use_certificate(certificate.x509)  # cryptography objects: pyOpenSSL >= 24.3
    ctx.use_privatekey(certificate.private_key)
    # Peers use self-signed certificates: no chain validation, only the SDP fingerprint.
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    ctx.set_tlsext_use_srtp(":".join(p.openssl_name for p in profiles).encode("ascii"))
    return ctx


def _split_records(data: bytes) -> list[bytes] | None:
    """Split a datagram into DTLS records, or None if it is not a clean sequence of them."""
    records = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _RECORD_HEADER_LEN:
            return None
        content_type = data[offset]
        version = int.from_bytes(data[offset + 1 : offset + 3], "big")
        length = int.from_bytes(data[offset + 11 : offset + 13], "big")
        end = offset + _RECORD_HEADER_LEN + length
        if (
            content_type not in _RECORD_TYPES
            or version not in _RECORD_VERSIONS
            or length > _MAX_RECORD_BODY
            or end > len(data)
        ):
            return None
        records.append(data[offset:end])
        offset = end
    return records or None


def _pack(records: list[bytes], mtu: int) -> list[bytes]:
    """Greedily coalesce whole records into datagrams of at most ``mtu`` bytes."""
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


def _describe(exc: SSL.Error) -> str:
    """OpenSSL's reason strings from an SSL.Error, e.g. 'sslv3 alert bad certificate'."""
    reasons = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return "; ".join(reasons) or repr(exc)
