# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin Python binding of csrc/srtp.c (SRTP/SRTCP over OpenSSL libcrypto).

For tests and Python-side use; the media engine cimports ``sfu.engine.csrc.srtp`` directly.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from sfu.engine.csrc.srtp cimport (
    SFU_SRTP_AES_CM_SALT_LEN,
    SFU_SRTP_ERR_AUTH,
    SFU_SRTP_ERR_CRYPTO,
    SFU_SRTP_ERR_DIRECTION,
    SFU_SRTP_ERR_INDEX_EXHAUSTED,
    SFU_SRTP_ERR_MALFORMED,
    SFU_SRTP_ERR_NOSPACE,
    SFU_SRTP_ERR_REPLAY_DUP,
    SFU_SRTP_ERR_REPLAY_OLD,
    SFU_SRTP_ERR_STREAM_LIMIT,
    SFU_SRTP_GCM_SALT_LEN,
    SFU_SRTP_INBOUND,
    SFU_SRTP_MASTER_KEY_LEN,
    SFU_SRTP_MAX_STREAMS,
    SFU_SRTP_MAX_TRAILER,
    SFU_SRTP_OK,
    SFU_SRTP_OUTBOUND,
    SFU_SRTP_PROFILE_AEAD_AES_128_GCM,
    SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80,
    SFU_SRTP_REPLAY_WINDOW,
    sfu_srtp_ctx,
    sfu_srtp_ctx_free,
    sfu_srtp_ctx_new,
    sfu_srtp_protect,
    sfu_srtp_protect_rtcp,
    sfu_srtp_remove_stream,
    sfu_srtp_rtcp_overhead,
    sfu_srtp_rtp_overhead,
    sfu_srtp_set_allow_repeat_tx,
    sfu_srtp_stream_count,
    sfu_srtp_strerror,
    sfu_srtp_unprotect,
    sfu_srtp_unprotect_rtcp,
)

PROFILE_AES_CM_128_HMAC_SHA1_80 = SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80
PROFILE_AEAD_AES_128_GCM = SFU_SRTP_PROFILE_AEAD_AES_128_GCM

SRTP_OK = SFU_SRTP_OK
SRTP_ERR_AUTH = SFU_SRTP_ERR_AUTH
SRTP_ERR_REPLAY_OLD = SFU_SRTP_ERR_REPLAY_OLD
SRTP_ERR_REPLAY_DUP = SFU_SRTP_ERR_REPLAY_DUP
SRTP_ERR_MALFORMED = SFU_SRTP_ERR_MALFORMED
SRTP_ERR_NOSPACE = SFU_SRTP_ERR_NOSPACE
SRTP_ERR_DIRECTION = SFU_SRTP_ERR_DIRECTION
SRTP_ERR_STREAM_LIMIT = SFU_SRTP_ERR_STREAM_LIMIT
SRTP_ERR_INDEX_EXHAUSTED = SFU_SRTP_ERR_INDEX_EXHAUSTED
SRTP_ERR_CRYPTO = SFU_SRTP_ERR_CRYPTO

MASTER_KEY_LEN = SFU_SRTP_MASTER_KEY_LEN
REPLAY_WINDOW = SFU_SRTP_REPLAY_WINDOW
MAX_STREAMS = SFU_SRTP_MAX_STREAMS

cdef enum _Op:
    _OP_PROTECT
    _OP_UNPROTECT
    _OP_PROTECT_RTCP
    _OP_UNPROTECT_RTCP


class SrtpError(Exception):
    """An SRTP operation failed; ``code`` is one of the SRTP_ERR_* constants."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


def master_salt_len(int profile) -> int:
    """Master salt length in bytes for a profile."""
    if profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM:
        return SFU_SRTP_GCM_SALT_LEN
    if profile == SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80:
        return SFU_SRTP_AES_CM_SALT_LEN
    raise ValueError(f"unsupported SRTP profile {profile}")


cdef object _error(int rc):
    return SrtpError(rc, sfu_srtp_strerror(rc).decode("ascii"))


cdef class SrtpSession:
    """One direction of SRTP+SRTCP for any number of SSRCs (libsrtp's "SSRC any")."""

    cdef sfu_srtp_ctx *_ctx
    cdef uint8_t *_buf
    cdef size_t _cap
    cdef readonly int profile
    cdef readonly bint outbound

    def __cinit__(
        self,
        int profile,
        bytes master_key not None,
        bytes master_salt not None,
        bint outbound,
        *,
        bint allow_repeat_tx=False,
    ):
        if len(master_key) != SFU_SRTP_MASTER_KEY_LEN:
            raise ValueError(f"master key must be {SFU_SRTP_MASTER_KEY_LEN} bytes")
        if len(master_salt) != master_salt_len(profile):
            raise ValueError(f"master salt must be {master_salt_len(profile)} bytes")
        self.profile = profile
        self.outbound = outbound
        self._cap = 2048
        self._buf = <uint8_t *>malloc(self._cap)
        if self._buf == NULL:
            raise MemoryError()
        self._ctx = sfu_srtp_ctx_new(
            profile,
            <const uint8_t *>PyBytes_AS_STRING(master_key),
            <const uint8_t *>PyBytes_AS_STRING(master_salt),
            SFU_SRTP_OUTBOUND if outbound else SFU_SRTP_INBOUND,
        )
        if self._ctx == NULL:
            raise MemoryError("sfu_srtp_ctx_new failed")
        sfu_srtp_set_allow_repeat_tx(self._ctx, allow_repeat_tx)

    def __dealloc__(self):
        if self._ctx != NULL:
            sfu_srtp_ctx_free(self._ctx)
            self._ctx = NULL
        free(self._buf)
        self._buf = NULL

    cdef bytes _apply(self, bytes data, _Op op):
        cdef size_t n = <size_t>len(data)
        cdef size_t length = n
        cdef size_t need = n + SFU_SRTP_MAX_TRAILER
        cdef uint8_t *grown
        cdef int rc
        if need > self._cap:
            grown = <uint8_t *>realloc(self._buf, need)
            if grown == NULL:
                raise MemoryError()
            self._buf = grown
            self._cap = need
        memcpy(self._buf, PyBytes_AS_STRING(data), n)
        if op == _OP_PROTECT:
            rc = sfu_srtp_protect(self._ctx, self._buf, &length, self._cap)
        elif op == _OP_UNPROTECT:
            rc = sfu_srtp_unprotect(self._ctx, self._buf, &length)
        elif op == _OP_PROTECT_RTCP:
            rc = sfu_srtp_protect_rtcp(self._ctx, self._buf, &length, self._cap)
        else:
            rc = sfu_srtp_unprotect_rtcp(self._ctx, self._buf, &length)
        if rc != SFU_SRTP_OK:
            raise _error(rc)
        return PyBytes_FromStringAndSize(<char *>self._buf, <Py_ssize_t>length)

    def protect(self, bytes packet not None) -> bytes:
        """Encrypt and authenticate an RTP packet."""
        return self._apply(packet, _OP_PROTECT)

    def unprotect(self, bytes packet not None) -> bytes:
        """Verify and decrypt an SRTP packet."""
        return self._apply(packet, _OP_UNPROTECT)

    def protect_rtcp(self, bytes packet not None) -> bytes:
        """Encrypt and authenticate an RTCP (compound) packet."""
        return self._apply(packet, _OP_PROTECT_RTCP)

    def unprotect_rtcp(self, bytes packet not None) -> bytes:
        """Verify and decrypt an SRTCP packet."""
        return self._apply(packet, _OP_UNPROTECT_RTCP)

    def protect_into(self, bytearray buf not None, Py_ssize_t length) -> int:
        """Protect the RTP packet in buf[:length] in place; the capacity is len(buf).

        Returns the protected length.
        """
        return self._apply_into(buf, length, False)

    def protect_rtcp_into(self, bytearray buf not None, Py_ssize_t length) -> int:
        """Protect the RTCP packet in buf[:length] in place; the capacity is len(buf)."""
        return self._apply_into(buf, length, True)

    cdef Py_ssize_t _apply_into(self, bytearray buf, Py_ssize_t length, bint rtcp) except -1:
        cdef uint8_t[::1] view = buf
        cdef size_t n = <size_t>length
        cdef int rc
        if length < 0 or length > view.shape[0]:
            raise ValueError("length must be within the buffer")
        if view.shape[0] == 0:
            raise _error(SFU_SRTP_ERR_MALFORMED)
        if rtcp:
            rc = sfu_srtp_protect_rtcp(self._ctx, &view[0], &n, <size_t>view.shape[0])
        else:
            rc = sfu_srtp_protect(self._ctx, &view[0], &n, <size_t>view.shape[0])
        if rc != SFU_SRTP_OK:
            raise _error(rc)
        return <Py_ssize_t>n

    def remove_stream(self, unsigned int ssrc) -> bool:
        """Forget one SSRC's state; True if it was known."""
        return sfu_srtp_remove_stream(self._ctx, ssrc) == 1

    @property
    def stream_count(self) -> int:
        """Number of SSRCs with state in this session."""
        return sfu_srtp_stream_count(self._ctx)

    @property
    def rtp_overhead(self) -> int:
        """Bytes protect() adds to an RTP packet."""
        return sfu_srtp_rtp_overhead(self._ctx)

    @property
    def rtcp_overhead(self) -> int:
        """Bytes protect_rtcp() adds to an RTCP packet."""
        return sfu_srtp_rtcp_overhead(self._ctx)


cdef double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int _bench_protect_loop(
    sfu_srtp_ctx *ctx, uint8_t *buf, size_t size, size_t cap, long count
) noexcept nogil:
    cdef long i
    cdef size_t length
    cdef int rc = SFU_SRTP_OK
    for i in range(count):
        buf[2] = <uint8_t>((i >> 8) & 0xFF)
        buf[3] = <uint8_t>(i & 0xFF)
        length = size
        rc = sfu_srtp_protect(ctx, buf, &length, cap)
        if rc != SFU_SRTP_OK:
            break
    return rc


def bench_protect(int profile, Py_ssize_t size, long count) -> float:
    """Protect `count` RTP packets of `size` bytes in one buffer without the GIL.

    Returns the elapsed seconds (monotonic clock) of the loop alone.
    """
    cdef size_t cap = <size_t>size + SFU_SRTP_MAX_TRAILER
    cdef uint8_t *buf
    cdef sfu_srtp_ctx *ctx
    cdef double start, elapsed
    cdef int rc
    if size < 12:
        raise ValueError("size must be at least an RTP header (12 bytes)")
    key = bytes(range(1, 1 + SFU_SRTP_MASTER_KEY_LEN))
    salt = bytes(range(100, 100 + master_salt_len(profile)))
    ctx = sfu_srtp_ctx_new(
        profile,
        <const uint8_t *>PyBytes_AS_STRING(key),
        <const uint8_t *>PyBytes_AS_STRING(salt),
        SFU_SRTP_OUTBOUND,
    )
    if ctx == NULL:
        raise MemoryError("sfu_srtp_ctx_new failed")
    buf = <uint8_t *>malloc(cap)
    if buf == NULL:
        sfu_srtp_ctx_free(ctx)
        raise MemoryError()
    memset(buf, 0xA5, cap)
    buf[0] = 0x80
    buf[1] = 96
    buf[8] = 0x12
    buf[9] = 0x34
    buf[10] = 0x56
    buf[11] = 0x78
    with nogil:
        start = _now()
        rc = _bench_protect_loop(ctx, buf, <size_t>size, cap, count)
        elapsed = _now() - start
    free(buf)
    sfu_srtp_ctx_free(ctx)
    if rc != SFU_SRTP_OK:
        raise _error(rc)
    return elapsed
