"""Handshakes against independent peers: the ``openssl`` and GnuTLS command line tools.

``openssl s_server``/``s_client`` are linked to the system libssl (not the OpenSSL inside
the ``cryptography`` wheel that pyOpenSSL uses); ``gnutls-serv``/``gnutls-cli`` (Debian
package gnutls-bin, skipped when absent) are a wholly separate DTLS stack, and gnutls-serv
also makes our client go through a HelloVerifyRequest cookie exchange. The peer's
certificate is made by ``openssl req``. The tools print the exported DTLS-SRTP keying
material, which we compare with our keys. Traffic stays on 127.0.0.1; real time drives the
sessions here.
"""

from __future__ import annotations

import re
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sfu.dtls import (
    ApplicationData,
    Certificate,
    DtlsRole,
    DtlsSession,
    DtlsState,
    Fingerprint,
    SrtpKeys,
    SrtpProfile,
    compute_fingerprint,
)

from . import events

OPENSSL = shutil.which("openssl")
GNUTLS_SERV = shutil.which("gnutls-serv")
GNUTLS_CLI = shutil.which("gnutls-cli")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl command line tool not found")
needs_gnutls = pytest.mark.skipif(
    GNUTLS_SERV is None or GNUTLS_CLI is None, reason="gnutls-bin not installed"
)
# GnuTLS 3.7 knows no AEAD SRTP profile.
GNUTLS_CM_80 = "SRTP_AES128_CM_HMAC_SHA1_80"

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def openssl_identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Fingerprint]:
    """A P-256 certificate made by the openssl CLI: (cert.pem, key.pem, its fingerprint)."""
    assert OPENSSL is not None
    folder = tmp_path_factory.mktemp("openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=p"),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    return cert, key, compute_fingerprint(der)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Pipe:
    """Collects a subprocess's output without blocking."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.text = ""

    def read_available(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while select.select([stdout], [], [], 0)[0]:
            chunk = stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read_available()
            if match := re.search(pattern, self.text):
                return match
            time.sleep(0.01)
        raise AssertionError(f"{pattern!r} not seen in openssl output:\n{self.text}")


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test, killed at the end whatever happens."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)  # reaps it and closes its pipes


def _start(spawn: list[subprocess.Popen[bytes]], args: list[str]) -> _Pipe:
    process = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    spawn.append(process)
    return _Pipe(process)


def _exchange(session: DtlsSession, sock: socket.socket, peer: tuple[str, int]) -> None:
    """Run the session over the socket until it leaves CONNECTING."""
    end = time.monotonic() + TIMEOUT
    while session.state in (DtlsState.NEW, DtlsState.CONNECTING) and time.monotonic() < end:
        for datagram in session.datagrams_to_send():
            sock.sendto(datagram, peer)
        if select.select([sock], [], [], 0.05)[0]:
            data, _ = sock.recvfrom(4096)
            session.receive(data, time.monotonic())
        timer = session.get_timer()
        if timer is not None and time.monotonic() >= timer:
            session.handle_timer(time.monotonic())
    for datagram in session.datagrams_to_send():
        sock.sendto(datagram, peer)


def _material(pipe: _Pipe) -> bytes:
    """Exported keying material as printed by openssl s_* or gnutls-cli."""
    match = pipe.wait_for(r"(?:Keying|Key) material: ([0-9A-Fa-f]+)")
    return bytes.fromhex(match.group(1))


def _collect_application_data(session: DtlsSession, sock: socket.socket, expected: bytes) -> bytes:
    received = b""
    end = time.monotonic() + TIMEOUT
    while expected not in received and time.monotonic() < end:
        if select.select([sock], [], [], 0.05)[0]:
            session.receive(sock.recv(4096), time.monotonic())
            for event in events(session):
                if isinstance(event, ApplicationData):
                    received += event.data
    return received


def _as_client_server(keys: SrtpKeys, role: DtlsRole) -> bytes:
    """Our keys laid out as RFC 5764 exporter output."""
    if role is DtlsRole.CLIENT:
        return keys.local_key + keys.remote_key + keys.local_salt + keys.remote_salt
    return keys.remote_key + keys.local_key + keys.remote_salt + keys.local_salt


def _srtp_args(profile: SrtpProfile) -> list[str]:
    length = 2 * (profile.key_len + profile.salt_len)
    return [
        *("-use_srtp", profile.openssl_name),
        *("-keymatexport", "EXTRACTOR-dtls_srtp", "-keymatexportlen", str(length)),
    ]


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_our_client_against_openssl_s_server(
    openssl_identity: tuple[Path, Path, Fingerprint],
    spawn: list[subprocess.Popen[bytes]],
    profile: SrtpProfile,
) -> None:
    cert_pem, key_pem, peer_fingerprint = openssl_identity
    port = _free_udp_port()
    assert OPENSSL is not None
    server = _start(
        spawn,
        [
            *(OPENSSL, "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}", "-naccept", "1"),
            *("-cert", str(cert_pem), "-key", str(key_pem), "-verify", "1", "-mtu", "1200"),
            *_srtp_args(profile),
        ],
    )
    server.wait_for("ACCEPT")
    ours = Certificate.generate()
    session = DtlsSession(ours, DtlsRole.CLIENT, [peer_fingerprint])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        session.start(time.monotonic())
        _exchange(session, sock, ("127.0.0.1", port))
        assert session.state is DtlsState.CONNECTED, events(session)
        assert session.srtp_keys is not None and session.srtp_keys.profile is profile
        assert _material(server) == _as_client_server(session.srtp_keys, DtlsRole.CLIENT)
        assert f"profile={profile.openssl_name}" in server.text
        # openssl saw our certificate and echoes application data we send.
        assert ours.x509.subject.rfc4514_string().removeprefix("CN=") in server.text
        session.send_application_data(b"hello from sfu\n")
        for datagram in session.datagrams_to_send():
            sock.sendto(datagram, ("127.0.0.1", port))
        server.wait_for("hello from sfu")
        session.close()
        for datagram in session.datagrams_to_send():
            sock.sendto(datagram, ("127.0.0.1", port))
        server.wait_for("CONNECTION CLOSED|shutting down SSL")


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_our_server_against_openssl_s_client(
    openssl_identity: tuple[Path, Path, Fingerprint],
    spawn: list[subprocess.Popen[bytes]],
    profile: SrtpProfile,
) -> None:
    cert_pem, key_pem, peer_fingerprint = openssl_identity
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert OPENSSL is not None
        client = _start(
            spawn,
            [
                *(OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}"),
                *("-mtu", "1200", "-cert", str(cert_pem), "-key", str(key_pem)),
                *_srtp_args(profile),
            ],
        )
        ready = select.select([sock], [], [], TIMEOUT)[0]
        assert ready, client.text
        hello, peer = sock.recvfrom(4096)
        session = DtlsSession(Certificate.generate(), DtlsRole.SERVER, [peer_fingerprint])
        session.receive(hello, time.monotonic())
        _exchange(session, sock, peer)
        assert session.state is DtlsState.CONNECTED, events(session)
        assert session.srtp_keys is not None and session.srtp_keys.profile is profile
        assert _material(client) == _as_client_server(session.srtp_keys, DtlsRole.SERVER)
        # Application data from openssl's stdin reaches us as an event.
        assert client.process.stdin is not None
        client.process.stdin.write(b"ping from openssl\n")
        client.process.stdin.flush()
        received = _collect_application_data(session, sock, b"ping from openssl\n")
        assert received == b"ping from openssl\n"


@needs_gnutls
def test_our_client_against_gnutls_serv(
    openssl_identity: tuple[Path, Path, Fingerprint],
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    """gnutls-serv answers with a HelloVerifyRequest first, then echoes what we send."""
    cert_pem, key_pem, peer_fingerprint = openssl_identity
    assert GNUTLS_SERV is not None
    port = _free_udp_port()
    server = _start(
        spawn,
        [
            *(GNUTLS_SERV, "--udp", "--echo", "-p", str(port), "--srtp-profiles", GNUTLS_CM_80),
            *("--x509certfile", str(cert_pem), "--x509keyfile", str(key_pem)),
        ],
    )
    server.wait_for("Echo Server listening")
    session = DtlsSession(Certificate.generate(), DtlsRole.CLIENT, [peer_fingerprint])
    peer = ("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        session.start(time.monotonic())
        _exchange(session, sock, peer)
        assert session.state is DtlsState.CONNECTED, events(session)
        assert session.srtp_keys is not None
        assert session.srtp_keys.profile is SrtpProfile.AES_CM_128_HMAC_SHA1_80
        events(session)
        session.send_application_data(b"echo me\n")
        for datagram in session.datagrams_to_send():
            sock.sendto(datagram, peer)
        assert _collect_application_data(session, sock, b"echo me\n") == b"echo me\n"


@needs_gnutls
def test_our_server_against_gnutls_cli(
    openssl_identity: tuple[Path, Path, Fingerprint],
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    cert_pem, key_pem, peer_fingerprint = openssl_identity
    assert GNUTLS_CLI is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        client = _start(
            spawn,
            [
                *(GNUTLS_CLI, "--udp", "--insecure", "-p", str(port)),
                *("--srtp-profiles", GNUTLS_CM_80),
                *("--x509certfile", str(cert_pem), "--x509keyfile", str(key_pem)),
                *("--keymatexport", "EXTRACTOR-dtls_srtp", "--keymatexportsize", "60"),
                "127.0.0.1",
            ],
        )
        ready = select.select([sock], [], [], TIMEOUT)[0]
        assert ready, client.text
        hello, peer = sock.recvfrom(4096)
        session = DtlsSession(Certificate.generate(), DtlsRole.SERVER, [peer_fingerprint])
        session.receive(hello, time.monotonic())
        _exchange(session, sock, peer)
        assert session.state is DtlsState.CONNECTED, events(session)
        assert session.srtp_keys is not None
        assert session.srtp_keys.profile is SrtpProfile.AES_CM_128_HMAC_SHA1_80
        assert _material(client) == _as_client_server(session.srtp_keys, DtlsRole.SERVER)
        assert client.process.stdin is not None
        client.process.stdin.write(b"ping from gnutls\n")
        client.process.stdin.flush()
        received = _collect_application_data(session, sock, b"ping from gnutls\n")
        assert received == b"ping from gnutls\n"
