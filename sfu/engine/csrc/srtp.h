/*
 * SRTP / SRTCP (RFC 3711, RFC 7714) over OpenSSL libcrypto.
 *
 * Profiles: AES_CM_128_HMAC_SHA1_80 and AEAD_AES_128_GCM, key derivation rate 0, no MKI.
 * A context holds the session keys of one direction and one stream per SSRC ("SSRC any": a
 * stream is created by the first packet of a new SSRC; on receive only once it authenticates).
 *
 * Threading: no global mutable state; a context may be used by one thread at a time.
 * Memory: nothing is allocated per packet; the stream table grows only when a new SSRC appears.
 * Buffers: protect works in place and needs `cap >= *len + overhead` (see
 * sfu_srtp_rtp_overhead / sfu_srtp_rtcp_overhead, at most SFU_SRTP_MAX_TRAILER).
 * On error `*len` is unchanged; the buffer content is unspecified after a failed AEAD unprotect
 * (GCM decrypts in place before the tag check) and untouched otherwise.
 *
 * All symbols carry the sfu_srtp_ / SFU_SRTP_ prefix so that libsrtp can live in the same process.
 */
#ifndef SFU_ENGINE_SRTP_H
#define SFU_ENGINE_SRTP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Protection profiles (values of the DTLS-SRTP protection profile registry). */
#define SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80 1
#define SFU_SRTP_PROFILE_AEAD_AES_128_GCM 7

/* Context direction. */
#define SFU_SRTP_OUTBOUND 1
#define SFU_SRTP_INBOUND 2

/* Master key / salt sizes. */
#define SFU_SRTP_MASTER_KEY_LEN 16
#define SFU_SRTP_AES_CM_SALT_LEN 14
#define SFU_SRTP_GCM_SALT_LEN 12

/* Largest number of bytes protect appends (GCM SRTCP: 16-byte tag + 4-byte E|index). */
#define SFU_SRTP_MAX_TRAILER 20

/* Replay window size, in packets, for SRTP and SRTCP. */
#define SFU_SRTP_REPLAY_WINDOW 128

/* Most SSRCs (streams) one context will track. */
#define SFU_SRTP_MAX_STREAMS 16384

/* Return codes. */
#define SFU_SRTP_OK 0
#define SFU_SRTP_ERR_AUTH 1            /* authentication tag mismatch */
#define SFU_SRTP_ERR_REPLAY_OLD 2      /* index older than the replay window */
#define SFU_SRTP_ERR_REPLAY_DUP 3      /* index already seen inside the window */
#define SFU_SRTP_ERR_MALFORMED 4       /* too short, bad version, bad CSRC/extension length */
#define SFU_SRTP_ERR_NOSPACE 5         /* buffer capacity too small for the trailer */
#define SFU_SRTP_ERR_DIRECTION 6       /* protect on an inbound context or vice versa */
#define SFU_SRTP_ERR_STREAM_LIMIT 7    /* too many SSRCs, or out of memory adding one */
#define SFU_SRTP_ERR_INDEX_EXHAUSTED 8 /* 2^48 SRTP / 2^31 SRTCP packets sent: rekey */
#define SFU_SRTP_ERR_CRYPTO 9          /* OpenSSL reported a failure */

typedef struct sfu_srtp_ctx sfu_srtp_ctx;

/*
 * Create a context. master_key is 16 bytes; master_salt is 14 bytes (AES-CM) or 12 bytes (GCM).
 * Returns NULL on an unknown profile/direction or when OpenSSL/malloc fails.
 */
sfu_srtp_ctx *sfu_srtp_ctx_new(int profile, const uint8_t *master_key,
                               const uint8_t *master_salt, int direction);
void sfu_srtp_ctx_free(sfu_srtp_ctx *ctx);

/*
 * Outbound only: let protect re-send an RTP index already sent (a plain NACK retransmission of
 * the same packet gives the same bytes); off by default, as in libsrtp (allow_repeat_tx).
 */
void sfu_srtp_set_allow_repeat_tx(sfu_srtp_ctx *ctx, int allow);

/* Bytes appended by protect / removed by unprotect. */
size_t sfu_srtp_rtp_overhead(const sfu_srtp_ctx *ctx);
size_t sfu_srtp_rtcp_overhead(const sfu_srtp_ctx *ctx);

/* RTP: in place; protect grows *len by the tag, unprotect shrinks it. */
int sfu_srtp_protect(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len, size_t cap);
int sfu_srtp_unprotect(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len);

/* RTCP: in place; protect appends E|index and the tag (always encrypts). */
int sfu_srtp_protect_rtcp(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len, size_t cap);
int sfu_srtp_unprotect_rtcp(sfu_srtp_ctx *ctx, uint8_t *buf, size_t *len);

/* Forget the stream state of one SSRC (returns 1 if it existed). */
int sfu_srtp_remove_stream(sfu_srtp_ctx *ctx, uint32_t ssrc);

/* Number of SSRCs currently tracked. */
size_t sfu_srtp_stream_count(const sfu_srtp_ctx *ctx);

/* Static, human-readable name of a return code. */
const char *sfu_srtp_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif /* SFU_ENGINE_SRTP_H */
