# Declarations of csrc/srtp.h for Cython modules (cimport sfu.engine.csrc.srtp).
# Every function is safe to call without the GIL; a context is used by one thread at a time.
from libc.stdint cimport uint8_t, uint32_t


cdef extern from "srtp.h" nogil:
    int SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80
    int SFU_SRTP_PROFILE_AEAD_AES_128_GCM

    int SFU_SRTP_OUTBOUND
    int SFU_SRTP_INBOUND

    int SFU_SRTP_MASTER_KEY_LEN
    int SFU_SRTP_AES_CM_SALT_LEN
    int SFU_SRTP_GCM_SALT_LEN
    int SFU_SRTP_MAX_TRAILER
    int SFU_SRTP_REPLAY_WINDOW
    int SFU_SRTP_MAX_STREAMS

    int SFU_SRTP_OK
    int SFU_SRTP_ERR_AUTH
    int SFU_SRTP_ERR_REPLAY_OLD
    int SFU_SRTP_ERR_REPLAY_DUP
    int SFU_SRTP_ERR_MALFORMED
    int SFU_SRTP_ERR_NOSPACE
    int SFU_SRTP_ERR_DIRECTION
    int SFU_SRTP_ERR_STREAM_LIMIT
    int SFU_SRTP_ERR_INDEX_EXHAUSTED
    int SFU_SRTP_ERR_CRYPTO

    ctypedef struct sfu_srtp_ctx:
        pass

    sfu_srtp_ctx *sfu_srtp_ctx_new(
        int profile, const uint8_t *master_key, const uint8_t *master_salt, int direction
    )
    void sfu_srtp_ctx_free(sfu_srtp_ctx *ctx)

    void sfu_srtp_set_allow_repeat_tx(sfu_srtp_ctx *ctx, int allow)
    size_t sfu_srtp_rtp_overhead(const sfu_srtp_ctx *ctx)
    size_t sfu_srtp_rtcp_overhead(const sfu_srtp_ctx *ctx)

    int sfu_srtp_protect(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len, size_t cap)
    int sfu_srtp_unprotect(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len)
    int sfu_srtp_protect_rtcp(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len, size_t cap)
    int sfu_srtp_unprotect_rtcp(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len)

    int sfu_srtp_remove_stream(sfu_srtp_ctx *ctx, uint32_t ssrc)
    size_t sfu_srtp_stream_count(const sfu_srtp_ctx *ctx)
    const char *sfu_srtp_strerror(int code)
