"""Types of the compiled SRTP binding (sfu/engine/_srtp.pyx)."""

from typing import Final

PROFILE_AES_CM_128_HMAC_SHA1_80: Final[int]
PROFILE_AEAD_AES_128_GCM: Final[int]

SRTP_OK: Final[int]
SRTP_ERR_AUTH: Final[int]
SRTP_ERR_REPLAY_OLD: Final[int]
SRTP_ERR_REPLAY_DUP: Final[int]
SRTP_ERR_MALFORMED: Final[int]
SRTP_ERR_NOSPACE: Final[int]
SRTP_ERR_DIRECTION: Final[int]
SRTP_ERR_STREAM_LIMIT: Final[int]
SRTP_ERR_INDEX_EXHAUSTED: Final[int]
SRTP_ERR_CRYPTO: Final[int]

MASTER_KEY_LEN: Final[int]
REPLAY_WINDOW: Final[int]
MAX_STREAMS: Final[int]

class SrtpError(Exception):
    """An SRTP operation failed; ``code`` is one of the SRTP_ERR_* constants."""

    code: int
    message: str
    def __init__(self, code: int, message: str) -> None: ...

def master_salt_len(profile: int) -> int:
    """Master salt length in bytes for a profile."""

class SrtpSession:
    """One direction of SRTP+SRTCP for any number of SSRCs (libsrtp's "SSRC any")."""

    @property
    def profile(self) -> int: ...
    @property
    def outbound(self) -> bool: ...
    @property
    def stream_count(self) -> int: ...
    @property
    def rtp_overhead(self) -> int: ...
    @property
    def rtcp_overhead(self) -> int: ...
    def __init__(
        self,
        profile: int,
        master_key: bytes,
        master_salt: bytes,
        outbound: bool,
        *,
        allow_repeat_tx: bool = False,
    ) -> None: ...
    def protect(self, packet: bytes) -> bytes: ...
    def unprotect(self, packet: bytes) -> bytes: ...
    def protect_rtcp(self, packet: bytes) -> bytes: ...
    def unprotect_rtcp(self, packet: bytes) -> bytes: ...
    def protect_into(self, buf: bytearray, length: int) -> int: ...
    def protect_rtcp_into(self, buf: bytearray, length: int) -> int: ...
    def remove_stream(self, ssrc: int) -> bool: ...

def bench_protect(profile: int, size: int, count: int) -> float:
    """Seconds to protect `count` RTP packets of `size` bytes in a loop without the GIL."""
