"""Certificate generation and SDP fingerprints."""

from __future__ import annotations

import datetime
import re

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import crypto

from sfu.dtls import (
    Certificate,
    Fingerprint,
    compute_fingerprint,
    parse_fingerprint,
    verify_fingerprint,
)

NOW = datetime.datetime(2026, 1, 15, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def cert() -> Certificate:
    return Certificate.generate(now=NOW)


def test_generate_self_signed_p256(cert: Certificate) -> None:
    x509 = cert.x509
    assert isinstance(cert.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(cert.private_key.curve, ec.SECP256R1)
    assert x509.issuer == x509.subject
    assert x509.not_valid_before_utc == NOW - datetime.timedelta(days=30)
    assert x509.not_valid_after_utc == NOW + datetime.timedelta(days=30)
    public = x509.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert x509.signature_hash_algorithm is not None
    public.verify(
        x509.signature, x509.tbs_certificate_bytes, ec.ECDSA(x509.signature_hash_algorithm)
    )


def test_each_certificate_is_unique(cert: Certificate) -> None:
    other = Certificate.generate(now=NOW)
    assert other.x509.serial_number != cert.x509.serial_number
    assert other.x509.subject != cert.x509.subject
    assert other.fingerprint() != cert.fingerprint()


def test_fingerprints_format(cert: Certificate) -> None:
    (fp,) = cert.fingerprints()
    assert fp.algorithm == "sha-256"
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fp.value)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(cert.der)
    assert fp.value == digest.finalize().hex(":").upper()
    assert str(fp) == f"sha-256 {fp.value}"
    assert len(cert.fingerprint("sha-512").value) == 64 * 3 - 1


def test_to_pyopenssl(cert: Certificate) -> None:
    x509, key = cert.to_pyopenssl()
    assert isinstance(x509, crypto.X509) and isinstance(key, crypto.PKey)
    assert crypto.dump_certificate(crypto.FILETYPE_ASN1, x509) == cert.der


def test_parse_fingerprint_round_trip(cert: Certificate) -> None:
    fp = cert.fingerprint()
    assert parse_fingerprint(str(fp)) == fp
    assert parse_fingerprint(f"SHA-256  {fp.value.lower()} ") == fp
    sha1 = compute_fingerprint(cert.der, "sha-1")
    assert parse_fingerprint(str(sha1)) == sha1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("md5 AB:CD", "unsupported fingerprint algorithm 'md5'"),
        ("sha-3 AB:CD", "unsupported fingerprint algorithm 'sha-3'"),
        ("", "malformed fingerprint"),
        ("sha-256", "malformed fingerprint"),
        ("sha-256 AB:CD extra", "malformed fingerprint"),
        ("sha-256 AB:CD", "malformed fingerprint"),  # too short
        ("sha-256 " + ":".join(["ZZ"] * 32), "malformed fingerprint"),
        ("sha-256 " + ":".join(["ABC"] * 32), "malformed fingerprint"),
        ("sha-256 " + "AB" * 32, "malformed fingerprint"),
    ],
)
def test_parse_fingerprint_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_fingerprint(value)


def test_verify_fingerprint(cert: Certificate) -> None:
    other = Certificate.generate(now=NOW)
    assert verify_fingerprint(cert.der, cert.fingerprints())
    assert verify_fingerprint(cert.der, [other.fingerprint(), cert.fingerprint()])
    assert not verify_fingerprint(cert.der, other.fingerprints())
    assert not verify_fingerprint(cert.der, [])
    lower = Fingerprint("SHA-256", cert.fingerprint().value.lower())
    assert verify_fingerprint(cert.der, [lower])
    assert not verify_fingerprint(cert.der, [Fingerprint("md5", "AB")])


def test_verify_uses_strongest_offered_hash(cert: Certificate) -> None:
    """RFC 8122 5: only fingerprints of the strongest offered hash function count."""
    good_256 = cert.fingerprint("sha-256")
    bad_512 = Certificate.generate(now=NOW).fingerprint("sha-512")
    assert not verify_fingerprint(cert.der, [good_256, bad_512])
    assert verify_fingerprint(cert.der, [good_256, cert.fingerprint("sha-512")])
    # Unsupported algorithms are ignored rather than chosen.
    assert verify_fingerprint(cert.der, [Fingerprint("sha3-512", "AB"), good_256])
