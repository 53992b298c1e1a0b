"""The server's DTLS certificate and SDP ``a=fingerprint`` handling (RFC 8122)."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

# SDP hash function names (RFC 8122, IANA "Hash Function Textual Names") we can check.
_HASHES: Final[Mapping[str, hashes.HashAlgorithm]] = MappingProxyType(
    {
        "sha-1": hashes.SHA1(),
        "sha-224": hashes.SHA224(),
        "sha-256": hashes.SHA256(),
        "sha-384": hashes.SHA384(),
        "sha-512": hashes.SHA512(),
    }
)
DEFAULT_VALIDITY: Final = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Fingerprint:
    """A certificate fingerprint as written in SDP: ``sha-256 AB:CD:...``."""

    algorithm: str  # lower-case hash function name, e.g. "sha-256"
    value: str  # upper-case hex pairs joined by ":"

    def __str__(self) -> str:
        return f"{self.algorithm} {self.value}"


def compute_fingerprint(der_cert: bytes, algorithm: str = "sha-256") -> Fingerprint:
    """Fingerprint of a DER-encoded certificate with the given SDP hash function name."""
    algorithm = algorithm.lower()
    algo = _HASHES.get(algorithm)
    if algo is None:
        raise ValueError(f"unsupported fingerprint algorithm {algorithm!r}")
    digest = hashes.Hash(algo)
    digest.update(der_cert)
    return Fingerprint(algorithm, digest.finalize().hex(":").upper())


def parse_fingerprint(sdp_value: str) -> Fingerprint:
    """Parse the value of an ``a=fingerprint`` attribute, e.g. ``"sha-256 AB:CD:..."``.

    Raises ValueError for unknown hash functions and malformed hex.
    """
    parts = sdp_value.split()
    if len(parts) != 2:
        raise ValueError(f"malformed fingerprint {sdp_value!r}: expected '<hash-func> <hex pairs>'")
    algorithm = parts[0].lower()
    algo = _HASHES.get(algorithm)
    if algo is None:
        raise ValueError(f"unsupported fingerprint algorithm {algorithm!r}")
    octets = parts[1].split(":")
    if len(octets) != algo.digest_size or not all(_is_hex_octet(o) for o in octets):
        raise ValueError(
            f"malformed fingerprint {sdp_value!r}: expected {algo.digest_size} "
            f"colon-separated hex pairs for {algorithm}"
        )
    return Fingerprint(algorithm, parts[1].upper())


def _is_hex_octet(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def verify_fingerprint(der_cert: bytes, expected: list[Fingerprint]) -> bool:
    """True if the certificate matches the expected fingerprints.

    As RFC 8122 section 5 asks, only the fingerprints using the strongest hash function
    offered (among those we support) are considered; any one of them may match.
    """
    usable = [fp for fp in expected if fp.algorithm.lower() in _HASHES]
    if not usable:
        return False
    strongest = max((fp.algorithm.lower() for fp in usable), key=lambda a: _HASHES[a].digest_size)
    actual = compute_fingerprint(der_cert, strongest).value
    return any(fp.algorithm.lower() == strongest and fp.value.upper() == actual for fp in usable)


class Certificate:
    """A self-signed ECDSA P-256 certificate and its key.

    A server generates one at start-up and shares it between all its DTLS sessions.
    """

    def __init__(self, cert: x509.Certificate, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = private_key
        self._der = cert.public_bytes(serialization.Encoding.DER)

    @classmethod
    def generate(
        cls,
        *,
        validity: datetime.timedelta = DEFAULT_VALIDITY,
        now: datetime.datetime | None = None,
    ) -> Certificate:
        """A new key and certificate valid from ``now - validity`` to ``now + validity``."""
        if now is None:
            now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(8))])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - validity)
            .not_valid_after(now + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def x509(self) -> x509.Certificate:
        return self._cert

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    @property
    def der(self) -> bytes:
        return self._der

    def fingerprint(self, algorithm: str = "sha-256") -> Fingerprint:
        return compute_fingerprint(self._der, algorithm)

    def fingerprints(self) -> list[Fingerprint]:
        """The fingerprints to announce in SDP (sha-256 only, as browsers do)."""
        return [self.fingerprint("sha-256")]

    def to_pyopenssl(self) -> tuple[crypto.X509, crypto.PKey]:
        """The certificate and key as pyOpenSSL objects, for ``SSL.Context``."""
        return crypto.X509.from_cryptography(self._cert), crypto.PKey.from_cryptography_key(
            self._key
        )
