"""Micro-benchmark of SRTP protect: the C path (nogil loop) against pylibsrtp called from Python.

Run ``python -m sfu.engine.srtp_bench``; figures are microseconds per 1,200-byte packet.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Callable

from sfu.engine import _srtp

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": _srtp.PROFILE_AES_CM_128_HMAC_SHA1_80,
    "AEAD_AES_128_GCM": _srtp.PROFILE_AEAD_AES_128_GCM,
}


def measure(profile: int, size: int = 1200, count: int = 200_000) -> float:
    """Microseconds per protect of a `size`-byte RTP packet (C loop, one buffer, GIL released)."""
    return _srtp.bench_protect(profile, size, count) / count * 1e6


def _per_call_us(protect: Callable[[bytes], bytes], size: int, count: int) -> float:
    packet = bytearray(b"\xa5" * size)
    struct.pack_into("!BBHII", packet, 0, 0x80, 96, 0, 0, 0x12345678)
    start = time.perf_counter()
    for i in range(count):
        struct.pack_into("!H", packet, 2, i & 0xFFFF)
        protect(bytes(packet))
    return (time.perf_counter() - start) / count * 1e6


def _key(profile: int) -> tuple[bytes, bytes]:
    return bytes(range(1, 17)), bytes(range(100, 100 + _srtp.master_salt_len(profile)))


def measure_wrapper(profile: int, size: int = 1200, count: int = 50_000) -> float:
    """Microseconds per ``SrtpSession.protect`` from Python (includes making the bytes)."""
    key, salt = _key(profile)
    session = _srtp.SrtpSession(profile, key, salt, True)
    return _per_call_us(session.protect, size, count)


def measure_pylibsrtp(profile: int, size: int = 1200, count: int = 50_000) -> float:
    """Microseconds per pylibsrtp ``Session.protect`` from Python (includes making the bytes)."""
    from pylibsrtp import Policy, Session

    policy_profile = {
        _srtp.PROFILE_AES_CM_128_HMAC_SHA1_80: Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
        _srtp.PROFILE_AEAD_AES_128_GCM: Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    }[profile]
    key, salt = _key(profile)
    session = Session(
        Policy(key=key + salt, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=policy_profile)
    )
    return _per_call_us(session.protect, size, count)


def main(rounds: int = 5) -> None:
    """Print medians over `rounds` runs for both profiles."""
    print("us per 1200-byte protect: C nogil loop | SrtpSession from Python | pylibsrtp")
    for name, profile in PROFILES.items():
        c_loop = statistics.median(measure(profile) for _ in range(rounds))
        wrapper = statistics.median(measure_wrapper(profile) for _ in range(rounds))
        ref = statistics.median(measure_pylibsrtp(profile) for _ in range(rounds))
        print(f"{name:26s} {c_loop:6.3f} | {wrapper:6.3f} | {ref:6.3f}")


if __name__ == "__main__":
    main()
