"""SRTP protection profiles: one definition for the DTLS handshake and the engine."""

from __future__ import annotations

import enum


class SrtpProfile(enum.IntEnum):
    """DTLS-SRTP protection profiles, valued by their IANA identifiers (RFC 5764, RFC 7714)."""

    AES_CM_128_HMAC_SHA1_80 = 0x0001
    AEAD_AES_128_GCM = 0x0007

    @property
    def key_len(self) -> int:
        return 16

    @property
    def salt_len(self) -> int:
        return 14 if self is SrtpProfile.AES_CM_128_HMAC_SHA1_80 else 12

    @property
    def openssl_name(self) -> str:
        if self is SrtpProfile.AES_CM_128_HMAC_SHA1_80:
            return "SRTP_AES128_CM_SHA1_80"
        return "SRTP_AEAD_AES_128_GCM"

    @classmethod
    def from_openssl_name(cls, name: str) -> SrtpProfile:
        for profile in cls:
            if profile.openssl_name == name:
                return profile
        raise ValueError(f"unknown SRTP profile {name!r}")
