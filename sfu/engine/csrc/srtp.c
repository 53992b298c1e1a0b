/*
 * SRTP / SRTCP over OpenSSL libcrypto, written from RFC 3711 and RFC 7714. See srtp.h.
 *
 * Packet layouts produced here:
 *   SRTP  AES-CM:  header | AES-CTR(payload) | HMAC-SHA1(header|payload|ROC)[0..10)
 *   SRTP  GCM:     header | GCM(payload, aad=header) | tag16
 *   SRTCP AES-CM:  hdr8 | AES-CTR(rest) | E|index | HMAC-SHA1(all before)[0..10)
 *   SRTCP GCM:     hdr8 | GCM(rest, aad=hdr8|E|index) | tag16 | E|index
 *
 * HMAC-SHA1 runs on precomputed inner/outer SHA1 states (OpenSSL's low-level SHA1 API, deprecated
 * but present in 3.x): OpenSSL 3.0 allocates twice per EVP_MAC_init/EVP_DigestInit, and this path
 * is also ~0.35 us faster per 1,200-byte packet. Builds without the deprecated API, or with
 * -DSFU_SRTP_USE_EVP_MAC, use EVP_MAC instead; both give the same bytes.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "srtp.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/sha.h>

#if !defined(OPENSSL_NO_DEPRECATED_3_0) && !defined(SFU_SRTP_USE_EVP_MAC)
#define SFU_SRTP_LOWLEVEL_SHA1 1
#endif

#define TAG_HMAC_80 10u
#define TAG_GCM 16u
#define SHA1_LEN 20u
#define SHA1_BLOCK 64u
#define SESSION_KEY_LEN 16u
#define SALT_BUF_LEN 14u
#define SRTCP_TRAILER_LEN 4u
#define SRTCP_E_BIT 0x80000000u
#define SRTCP_INDEX_MAX 0x7FFFFFFFu
#define RTP_MIN_HEADER 12u
#define RTCP_HEADER 8u
#define INDEX_LIMIT ((uint64_t)1 << 48)
/* EVP update lengths are ints; no UDP datagram comes anywhere near this. */
#define MAX_PACKET ((size_t)INT_MAX - 64u)
#define INITIAL_SLOTS 8u

/* Labels of RFC 3711 4.3.2 (SRTCP adds 3). */
#define LABEL_ENCRYPTION 0u
#define LABEL_AUTH 1u
#define LABEL_SALT 2u
#define LABEL_RTCP_OFFSET 3u

/*
 * Sliding replay window: `top` is the highest index accepted, bit i of (lo, hi) is set when
 * index top - i was accepted (lo holds bits 0..63, hi bits 64..127).
 */
typedef struct {
    uint64_t top;
    uint64_t lo;
    uint64_t hi;
} replay_win;

typedef struct {
    uint32_t ssrc;
    uint32_t used;
    replay_win rtp;  /* 48-bit packet index ROC << 16 | SEQ */
    replay_win rtcp; /* 31-bit SRTCP index; outbound: top is the last index sent */
} stream;

/* HMAC-SHA1 keyed once (AES-CM profile only). */
typedef struct {
#ifdef SFU_SRTP_LOWLEVEL_SHA1
    SHA_CTX inner; /* state after absorbing key XOR ipad */
    SHA_CTX outer; /* state after absorbing key XOR opad */
#else
    EVP_MAC_CTX *ctx;
#endif
} hmac_key;

typedef struct {
    EVP_CIPHER_CTX *cipher; /* keyed once; only the IV changes per packet */
    hmac_key mac;
    uint8_t salt[SALT_BUF_LEN];
} session_keys;

struct sfu_srtp_ctx {
    int profile;
    int direction;
    int allow_repeat_tx;
    size_t tag_len;
    session_keys rtp;
    session_keys rtcp;
    stream *slots;
    uint32_t mask;
    uint32_t count;
};

/* ---- byte helpers ---- */

static uint16_t load16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static uint32_t load32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void store32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* XOR the low `n` bytes of v, big-endian, into p[0..n). */
static void xor_be(uint8_t *p, uint64_t v, unsigned n) {
    unsigned i;
    for (i = 0; i < n; i++) {
        p[n - 1 - i] ^= (uint8_t)(v >> (8 * i));
    }
}

/* ---- replay window ---- */

static int replay_check(const replay_win *w, uint64_t idx) {
    uint64_t d;
    if (idx > w->top) {
        return SFU_SRTP_OK;
    }
    d = w->top - idx;
    if (d >= SFU_SRTP_REPLAY_WINDOW) {
        return SFU_SRTP_ERR_REPLAY_OLD;
    }
    if (d < 64 ? (w->lo >> d) & 1u : (w->hi >> (d - 64)) & 1u) {
        return SFU_SRTP_ERR_REPLAY_DUP;
    }
    return SFU_SRTP_OK;
}

static void replay_commit(replay_win *w, uint64_t idx) {
    uint64_t d;
    if (idx > w->top) {
        d = idx - w->top;
        if (d >= SFU_SRTP_REPLAY_WINDOW) {
            w->lo = 0;
            w->hi = 0;
        } else if (d >= 64) {
            w->hi = w->lo << (d - 64);
            w->lo = 0;
        } else {
            w->hi = (w->hi << d) | (w->lo >> (64 - d));
            w->lo <<= d;
        }
        w->lo |= 1u;
        w->top = idx;
        return;
    }
    d = w->top - idx;
    if (d < 64) {
        w->lo |= (uint64_t)1 << d;
    } else {
        w->hi |= (uint64_t)1 << (d - 64);
    }
}

/*
 * RFC 3711 3.3.1: guess the ROC of `seq` from the highest index seen. A guess below ROC 0 is
 * taken as ROC 0 (a fresh stream starts at index 0, so early packets are never "before" it).
 */
static uint64_t estimate_index(uint64_t top, uint16_t seq) {
    uint64_t roc = top >> 16;
    uint32_t s_l = (uint32_t)(top & 0xFFFFu);
    if (s_l < 32768u) {
        if ((uint32_t)seq > s_l + 32768u && roc > 0) {
            roc--;
        }
    } else if (s_l - 32768u > (uint32_t)seq) {
        roc++;
    }
    return (roc << 16) | seq;
}

/* ---- stream table: open addressing, linear probing, load factor <= 1/2 ---- */

static uint32_t hash_ssrc(uint32_t x) {
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

static stream *find_stream(const sfu_srtp_ctx *c, uint32_t ssrc) {
    uint32_t i = hash_ssrc(ssrc) & c->mask;
    for (;;) {
        stream *s = &c->slots[i];
        if (!s->used) {
            return NULL;
        }
        if (s->ssrc == ssrc) {
            return s;
        }
        i = (i + 1) & c->mask;
    }
}

static void place_stream(stream *slots, uint32_t mask, const stream *src) {
    uint32_t i = hash_ssrc(src->ssrc) & mask;
    while (slots[i].used) {
        i = (i + 1) & mask;
    }
    slots[i] = *src;
}

static int grow_table(sfu_srtp_ctx *c) {
    uint32_t old_size = c->mask + 1;
    uint32_t new_mask = old_size * 2 - 1;
    stream *fresh = calloc((size_t)old_size * 2, sizeof(stream));
    uint32_t i;
    if (fresh == NULL) {
        return 0;
    }
    for (i = 0; i < old_size; i++) {
        if (c->slots[i].used) {
            place_stream(fresh, new_mask, &c->slots[i]);
        }
    }
    free(c->slots);
    c->slots = fresh;
    c->mask = new_mask;
    return 1;
}

/* Add a stream that is known to be absent; NULL when full or out of memory. */
static stream *insert_stream(sfu_srtp_ctx *c, const stream *init) {
    if (c->count >= SFU_SRTP_MAX_STREAMS) {
        return NULL;
    }
    if ((c->count + 1) * 2 > c->mask + 1 && !grow_table(c)) {
        return NULL;
    }
    place_stream(c->slots, c->mask, init);
    c->count++;
    return find_stream(c, init->ssrc);
}

static void fresh_stream(stream *s, uint32_t ssrc) {
    memset(s, 0, sizeof(*s));
    s->ssrc = ssrc;
    s->used = 1;
}

int sfu_srtp_remove_stream(sfu_srtp_ctx *c, uint32_t ssrc) {
    stream *s = find_stream(c, ssrc);
    uint32_t i, j;
    if (s == NULL) {
        return 0;
    }
    /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
    i = (uint32_t)(s - c->slots);
    j = i;
    for (;;) {
        uint32_t home;
        int keep;
        j = (j + 1) & c->mask;
        if (!c->slots[j].used) {
            break;
        }
        home = hash_ssrc(c->slots[j].ssrc) & c->mask;
        keep = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!keep) {
            c->slots[i] = c->slots[j];
            i = j;
        }
    }
    memset(&c->slots[i], 0, sizeof(stream));
    c->count--;
    return 1;
}

size_t sfu_srtp_stream_count(const sfu_srtp_ctx *c) { return c->count; }

/* ---- HMAC-SHA1 (RFC 2104) with a 20-byte key ---- */

#ifdef SFU_SRTP_LOWLEVEL_SHA1
static int hmac_setup(hmac_key *h, const uint8_t key[SHA1_LEN]) {
    uint8_t pad[SHA1_BLOCK];
    unsigned i;
    int ok;
    memset(pad, 0x36, sizeof(pad));
    for (i = 0; i < SHA1_LEN; i++) {
        pad[i] ^= key[i];
    }
    ok = SHA1_Init(&h->inner) == 1 && SHA1_Update(&h->inner, pad, sizeof(pad)) == 1;
    for (i = 0; i < SHA1_BLOCK; i++) {
        pad[i] ^= 0x36 ^ 0x5C;
    }
    ok = ok && SHA1_Init(&h->outer) == 1 && SHA1_Update(&h->outer, pad, sizeof(pad)) == 1;
    OPENSSL_cleanse(pad, sizeof(pad));
    return ok;
}

static void hmac_free(hmac_key *h) { OPENSSL_cleanse(h, sizeof(*h)); }

/* HMAC over data (and the 4-byte `extra` when non-NULL), full 20-byte output. */
static int hmac_sha1(const hmac_key *h, const uint8_t *data, size_t n, const uint8_t *extra,
                     uint8_t out[SHA1_LEN]) {
    SHA_CTX work = h->inner;
    int ok = SHA1_Update(&work, data, n) == 1 &&
             (extra == NULL || SHA1_Update(&work, extra, 4) == 1) && SHA1_Final(out, &work) == 1;
    work = h->outer;
    ok = ok && SHA1_Update(&work, out, SHA1_LEN) == 1 && SHA1_Final(out, &work) == 1;
    return ok ? SFU_SRTP_OK : SFU_SRTP_ERR_CRYPTO;
}
#else
static int hmac_setup(hmac_key *h, const uint8_t key[SHA1_LEN]) {
    char digest[] = "SHA1";
    OSSL_PARAM params[2];
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) {
        return 0;
    }
    h->ctx = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac);
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
    params[1] = OSSL_PARAM_construct_end();
    return h->ctx != NULL && EVP_MAC_init(h->ctx, key, SHA1_LEN, params) == 1;
}

static void hmac_free(hmac_key *h) {
    EVP_MAC_CTX_free(h->ctx);
    h->ctx = NULL;
}

/* HMAC over data (and the 4-byte `extra` when non-NULL), full 20-byte output. */
static int hmac_sha1(const hmac_key *h, const uint8_t *data, size_t n, const uint8_t *extra,
                     uint8_t out[SHA1_LEN]) {
    size_t outl = 0;
    if (EVP_MAC_init(h->ctx, NULL, 0, NULL) != 1 || EVP_MAC_update(h->ctx, data, n) != 1 ||
        (extra != NULL && EVP_MAC_update(h->ctx, extra, 4) != 1) ||
        EVP_MAC_final(h->ctx, out, &outl, SHA1_LEN) != 1 || outl != SHA1_LEN) {
        return SFU_SRTP_ERR_CRYPTO;
    }
    return SFU_SRTP_OK;
}
#endif

/* ---- key derivation (RFC 3711 4.3.1 / 4.3.3, kdr = 0) ---- */

static int derive(const uint8_t *master_key, const uint8_t salt14[SALT_BUF_LEN], unsigned label,
                  uint8_t *out, size_t n) {
    static const uint8_t zeros[SHA1_LEN] = {0};
    uint8_t iv[16] = {0};
    int outl = 0;
    int ok;
    EVP_CIPHER_CTX *kdf = EVP_CIPHER_CTX_new();
    if (kdf == NULL || n > sizeof(zeros)) {
        EVP_CIPHER_CTX_free(kdf);
        return 0;
    }
    /* x = key_id XOR master_salt, key_id = label || 48 zero bits; IV = x * 2^16. */
    memcpy(iv, salt14, SALT_BUF_LEN);
    iv[7] ^= (uint8_t)label;
    ok = EVP_EncryptInit_ex2(kdf, EVP_aes_128_ctr(), master_key, iv, NULL) == 1 &&
         EVP_EncryptUpdate(kdf, out, &outl, zeros, (int)n) == 1 && (size_t)outl == n;
    EVP_CIPHER_CTX_free(kdf);
    return ok;
}

static int setup_keys(session_keys *k, int profile, int direction, const uint8_t *master_key,
                      const uint8_t salt14[SALT_BUF_LEN], unsigned label_base) {
    uint8_t enc_key[SESSION_KEY_LEN];
    uint8_t auth_key[SHA1_LEN];
    int gcm = profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM;
    size_t salt_len = gcm ? SFU_SRTP_GCM_SALT_LEN : SFU_SRTP_AES_CM_SALT_LEN;
    int ok = 0;

    if (!derive(master_key, salt14, label_base + LABEL_ENCRYPTION, enc_key, sizeof(enc_key)) ||
        !derive(master_key, salt14, label_base + LABEL_SALT, k->salt, salt_len)) {
        goto done;
    }
    k->cipher = EVP_CIPHER_CTX_new();
    if (k->cipher == NULL) {
        goto done;
    }
    if (gcm) {
        int enc = direction == SFU_SRTP_OUTBOUND;
        if (EVP_CipherInit_ex2(k->cipher, EVP_aes_128_gcm(), enc_key, NULL, enc, NULL) != 1) {
            goto done;
        }
    } else if (EVP_EncryptInit_ex2(k->cipher, EVP_aes_128_ctr(), enc_key, NULL, NULL) != 1 ||
               !derive(master_key, salt14, label_base + LABEL_AUTH, auth_key, sizeof(auth_key)) ||
               !hmac_setup(&k->mac, auth_key)) {
        goto done;
    }
    ok = 1;
done:
    OPENSSL_cleanse(enc_key, sizeof(enc_key));
    OPENSSL_cleanse(auth_key, sizeof(auth_key));
    return ok;
}

static void free_keys(session_keys *k) {
    EVP_CIPHER_CTX_free(k->cipher);
    hmac_free(&k->mac);
    OPENSSL_cleanse(k->salt, sizeof(k->salt));
}

sfu_srtp_ctx *sfu_srtp_ctx_new(int profile, const uint8_t *master_key,
                               const uint8_t *master_salt, int direction) {
    uint8_t salt14[SALT_BUF_LEN] = {0};
    sfu_srtp_ctx *c;
    int ok;

    if ((profile != SFU_SRTP_PROFILE_AES_CM_128_HMAC_SHA1_80 &&
         profile != SFU_SRTP_PROFILE_AEAD_AES_128_GCM) ||
        (direction != SFU_SRTP_OUTBOUND && direction != SFU_SRTP_INBOUND) ||
        master_key == NULL || master_salt == NULL) {
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->profile = profile;
    c->direction = direction;
    /* A 96-bit GCM master salt enters the KDF multiplied by 2^16 (RFC 7714 errata 4938). */
    if (profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM) {
        c->tag_len = TAG_GCM;
        memcpy(salt14, master_salt, SFU_SRTP_GCM_SALT_LEN);
    } else {
        c->tag_len = TAG_HMAC_80;
        memcpy(salt14, master_salt, SFU_SRTP_AES_CM_SALT_LEN);
    }
    c->slots = calloc(INITIAL_SLOTS, sizeof(stream));
    c->mask = INITIAL_SLOTS - 1;
    ok = c->slots != NULL &&
         setup_keys(&c->rtp, profile, direction, master_key, salt14, 0) &&
         setup_keys(&c->rtcp, profile, direction, master_key, salt14, LABEL_RTCP_OFFSET);
    OPENSSL_cleanse(salt14, sizeof(salt14));
    if (!ok) {
        sfu_srtp_ctx_free(c);
        return NULL;
    }
    return c;
}

void sfu_srtp_ctx_free(sfu_srtp_ctx *c) {
    if (c == NULL) {
        return;
    }
    free_keys(&c->rtp);
    free_keys(&c->rtcp);
    free(c->slots);
    free(c);
}

void sfu_srtp_set_allow_repeat_tx(sfu_srtp_ctx *c, int allow) { c->allow_repeat_tx = allow != 0; }

size_t sfu_srtp_rtp_overhead(const sfu_srtp_ctx *c) { return c->tag_len; }

size_t sfu_srtp_rtcp_overhead(const sfu_srtp_ctx *c) { return c->tag_len + SRTCP_TRAILER_LEN; }

/* ---- primitives ---- */

/* AES-CM IV (RFC 3711 4.1.1): salt * 2^16 XOR SSRC * 2^64 XOR index * 2^16. */
static void cm_iv(uint8_t iv[16], const uint8_t *salt, uint32_t ssrc, uint64_t index) {
    memcpy(iv, salt, SALT_BUF_LEN);
    iv[14] = 0;
    iv[15] = 0;
    xor_be(iv + 4, ssrc, 4);
    xor_be(iv + 8, index, 6);
}

/* GCM IV (RFC 7714 8.1 / 9.1): salt XOR 00 00 | SSRC | 32-bit high | 16-bit low. */
static void gcm_iv(uint8_t iv[12], const uint8_t *salt, uint32_t ssrc, uint32_t high,
                   uint16_t low) {
    memcpy(iv, salt, SFU_SRTP_GCM_SALT_LEN);
    xor_be(iv + 2, ssrc, 4);
    xor_be(iv + 6, high, 4);
    xor_be(iv + 10, low, 2);
}

static int ctr_xor(EVP_CIPHER_CTX *cipher, const uint8_t iv[16], uint8_t *data, size_t n) {
    int outl = 0;
    if (EVP_EncryptInit_ex2(cipher, NULL, NULL, iv, NULL) != 1) {
        return SFU_SRTP_ERR_CRYPTO;
    }
    if (n > 0 && EVP_EncryptUpdate(cipher, data, &outl, data, (int)n) != 1) {
        return SFU_SRTP_ERR_CRYPTO;
    }
    return SFU_SRTP_OK;
}

/* GCM seal in place: aad1|aad2 authenticated, data encrypted, tag written to `tag`. */
static int gcm_seal(EVP_CIPHER_CTX *cipher, const uint8_t iv[12], const uint8_t *aad1,
                    size_t aad1_len, const uint8_t *aad2, size_t aad2_len, uint8_t *data,
                    size_t n, uint8_t *tag) {
    int outl = 0;
    uint8_t sink[16];
    if (EVP_EncryptInit_ex2(cipher, NULL, NULL, iv, NULL) != 1 ||
        EVP_EncryptUpdate(cipher, NULL, &outl, aad1, (int)aad1_len) != 1 ||
        (aad2_len > 0 && EVP_EncryptUpdate(cipher, NULL, &outl, aad2, (int)aad2_len) != 1) ||
        (n > 0 && EVP_EncryptUpdate(cipher, data, &outl, data, (int)n) != 1) ||
        EVP_EncryptFinal_ex(cipher, sink, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(cipher, EVP_CTRL_AEAD_GET_TAG, (int)TAG_GCM, tag) != 1) {
        return SFU_SRTP_ERR_CRYPTO;
    }
    return SFU_SRTP_OK;
}

/* GCM open in place; SFU_SRTP_ERR_AUTH when the tag does not verify. */
static int gcm_open(EVP_CIPHER_CTX *cipher, const uint8_t iv[12], const uint8_t *aad1,
                    size_t aad1_len, const uint8_t *aad2, size_t aad2_len, uint8_t *data,
                    size_t n, const uint8_t *tag) {
    int outl = 0;
    uint8_t sink[16];
    uint8_t tag_copy[TAG_GCM];
    memcpy(tag_copy, tag, TAG_GCM);
    if (EVP_DecryptInit_ex2(cipher, NULL, NULL, iv, NULL) != 1 ||
        EVP_DecryptUpdate(cipher, NULL, &outl, aad1, (int)aad1_len) != 1 ||
        (aad2_len > 0 && EVP_DecryptUpdate(cipher, NULL, &outl, aad2, (int)aad2_len) != 1) ||
        (n > 0 && EVP_DecryptUpdate(cipher, data, &outl, data, (int)n) != 1) ||
        EVP_CIPHER_CTX_ctrl(cipher, EVP_CTRL_AEAD_SET_TAG, (int)TAG_GCM, tag_copy) != 1) {
        return SFU_SRTP_ERR_CRYPTO;
    }
    if (EVP_DecryptFinal_ex(cipher, sink, &outl) != 1) {
        return SFU_SRTP_ERR_AUTH;
    }
    return SFU_SRTP_OK;
}

/* RTP header length (fixed part, CSRCs, extension) or 0 when it does not fit in `limit`. */
static size_t rtp_header_len(const uint8_t *buf, size_t limit) {
    size_t h;
    if (limit < RTP_MIN_HEADER || (buf[0] >> 6) != 2) {
        return 0;
    }
    h = RTP_MIN_HEADER + 4u * (buf[0] & 0x0Fu);
    if (buf[0] & 0x10u) {
        if (h + 4 > limit) {
            return 0;
        }
        h += 4 + 4u * (size_t)load16(buf + h + 2);
    }
    return h <= limit ? h : 0;
}

/* ---- SRTP ---- */

static int seal_rtp(sfu_srtp_ctx *c, uint8_t *buf, size_t h, size_t n, uint32_t ssrc,
                    uint64_t index) {
    if (c->profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM) {
        uint8_t iv[12];
        gcm_iv(iv, c->rtp.salt, ssrc, (uint32_t)(index >> 16), (uint16_t)index);
        return gcm_seal(c->rtp.cipher, iv, buf, h, NULL, 0, buf + h, n - h, buf + n);
    } else {
        uint8_t iv[16], roc[4], mac[SHA1_LEN];
        int rc;
        cm_iv(iv, c->rtp.salt, ssrc, index);
        rc = ctr_xor(c->rtp.cipher, iv, buf + h, n - h);
        if (rc != SFU_SRTP_OK) {
            return rc;
        }
        store32(roc, (uint32_t)(index >> 16));
        rc = hmac_sha1(&c->rtp.mac, buf, n, roc, mac);
        if (rc == SFU_SRTP_OK) {
            memcpy(buf + n, mac, TAG_HMAC_80);
        }
        return rc;
    }
}

/* `n` excludes the tag, which starts at buf + n. */
static int open_rtp(sfu_srtp_ctx *c, uint8_t *buf, size_t h, size_t n, uint32_t ssrc,
                    uint64_t index) {
    if (c->profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM) {
        uint8_t iv[12];
        gcm_iv(iv, c->rtp.salt, ssrc, (uint32_t)(index >> 16), (uint16_t)index);
        return gcm_open(c->rtp.cipher, iv, buf, h, NULL, 0, buf + h, n - h, buf + n);
    } else {
        uint8_t iv[16], roc[4], mac[SHA1_LEN];
        int rc;
        store32(roc, (uint32_t)(index >> 16));
        rc = hmac_sha1(&c->rtp.mac, buf, n, roc, mac);
        if (rc != SFU_SRTP_OK) {
            return rc;
        }
        if (CRYPTO_memcmp(mac, buf + n, TAG_HMAC_80) != 0) {
            return SFU_SRTP_ERR_AUTH;
        }
        cm_iv(iv, c->rtp.salt, ssrc, index);
        return ctr_xor(c->rtp.cipher, iv, buf + h, n - h);
    }
}

int sfu_srtp_protect(sfu_srtp_ctx *c, uint8_t *buf, size_t *len, size_t cap) {
    size_t n = *len;
    size_t h;
    uint32_t ssrc;
    uint64_t index;
    stream *s;
    int rc;

    if (c->direction != SFU_SRTP_OUTBOUND) {
        return SFU_SRTP_ERR_DIRECTION;
    }
    if (n > MAX_PACKET || (h = rtp_header_len(buf, n)) == 0) {
        return SFU_SRTP_ERR_MALFORMED;
    }
    if (cap < n || cap - n < c->tag_len) {
        return SFU_SRTP_ERR_NOSPACE;
    }
    ssrc = load32(buf + 8);
    s = find_stream(c, ssrc);
    if (s == NULL) {
        stream init;
        fresh_stream(&init, ssrc);
        s = insert_stream(c, &init);
        if (s == NULL) {
            return SFU_SRTP_ERR_STREAM_LIMIT;
        }
    }
    /* The sender estimates too, so reordered packets around a wrap keep the right ROC. */
    index = estimate_index(s->rtp.top, load16(buf + 2));
    if (index >= INDEX_LIMIT) {
        return SFU_SRTP_ERR_INDEX_EXHAUSTED;
    }
    rc = replay_check(&s->rtp, index);
    if (rc == SFU_SRTP_ERR_REPLAY_DUP && c->allow_repeat_tx) {
        rc = SFU_SRTP_OK;
    }
    if (rc == SFU_SRTP_OK) {
        rc = seal_rtp(c, buf, h, n, ssrc, index);
    }
    if (rc == SFU_SRTP_OK) {
        replay_commit(&s->rtp, index);
        *len = n + c->tag_len;
    }
    return rc;
}

int sfu_srtp_unprotect(sfu_srtp_ctx *c, uint8_t *buf, size_t *len) {
    size_t n = *len;
    size_t body, h;
    uint32_t ssrc;
    uint64_t index;
    stream provisional;
    stream *s;
    int rc;

    if (c->direction != SFU_SRTP_INBOUND) {
        return SFU_SRTP_ERR_DIRECTION;
    }
    if (n > MAX_PACKET || n < RTP_MIN_HEADER + c->tag_len) {
        return SFU_SRTP_ERR_MALFORMED;
    }
    body = n - c->tag_len;
    if ((h = rtp_header_len(buf, body)) == 0) {
        return SFU_SRTP_ERR_MALFORMED;
    }
    ssrc = load32(buf + 8);
    s = find_stream(c, ssrc);
    if (s == NULL) {
        /* A new SSRC gets a table entry only once a packet of it authenticates. */
        fresh_stream(&provisional, ssrc);
    }
    index = estimate_index(s ? s->rtp.top : 0, load16(buf + 2));
    if (index >= INDEX_LIMIT) {
        return SFU_SRTP_ERR_INDEX_EXHAUSTED;
    }
    rc = replay_check(s ? &s->rtp : &provisional.rtp, index);
    if (rc == SFU_SRTP_OK) {
        rc = open_rtp(c, buf, h, body, ssrc, index);
    }
    if (rc != SFU_SRTP_OK) {
        return rc;
    }
    if (s == NULL && (s = insert_stream(c, &provisional)) == NULL) {
        return SFU_SRTP_ERR_STREAM_LIMIT;
    }
    replay_commit(&s->rtp, index);
    *len = body;
    return SFU_SRTP_OK;
}

/* ---- SRTCP ---- */

int sfu_srtp_protect_rtcp(sfu_srtp_ctx *c, uint8_t *buf, size_t *len, size_t cap) {
    size_t n = *len;
    size_t overhead = c->tag_len + SRTCP_TRAILER_LEN;
    uint32_t ssrc, index;
    stream *s;
    int rc;

    if (c->direction != SFU_SRTP_OUTBOUND) {
        return SFU_SRTP_ERR_DIRECTION;
    }
    if (n > MAX_PACKET || n < RTCP_HEADER || (buf[0] >> 6) != 2) {
        return SFU_SRTP_ERR_MALFORMED;
    }
    if (cap < n || cap - n < overhead) {
        return SFU_SRTP_ERR_NOSPACE;
    }
    ssrc = load32(buf + 4);
    s = find_stream(c, ssrc);
    if (s == NULL) {
        stream init;
        fresh_stream(&init, ssrc);
        s = insert_stream(c, &init);
        if (s == NULL) {
            return SFU_SRTP_ERR_STREAM_LIMIT;
        }
    }
    if (s->rtcp.top >= SRTCP_INDEX_MAX) {
        return SFU_SRTP_ERR_INDEX_EXHAUSTED;
    }
    index = (uint32_t)s->rtcp.top + 1;
    if (c->profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM) {
        uint8_t iv[12];
        uint8_t *trailer = buf + n + TAG_GCM;
        store32(trailer, SRTCP_E_BIT | index);
        gcm_iv(iv, c->rtcp.salt, ssrc, 0, 0);
        xor_be(iv + 8, index, 4);
        rc = gcm_seal(c->rtcp.cipher, iv, buf, RTCP_HEADER, trailer, SRTCP_TRAILER_LEN,
                      buf + RTCP_HEADER, n - RTCP_HEADER, buf + n);
    } else {
        uint8_t iv[16], mac[SHA1_LEN];
        cm_iv(iv, c->rtcp.salt, ssrc, index);
        rc = ctr_xor(c->rtcp.cipher, iv, buf + RTCP_HEADER, n - RTCP_HEADER);
        if (rc == SFU_SRTP_OK) {
            store32(buf + n, SRTCP_E_BIT | index);
            rc = hmac_sha1(&c->rtcp.mac, buf, n + SRTCP_TRAILER_LEN, NULL, mac);
        }
        if (rc == SFU_SRTP_OK) {
            memcpy(buf + n + SRTCP_TRAILER_LEN, mac, TAG_HMAC_80);
        }
    }
    if (rc == SFU_SRTP_OK) {
        s->rtcp.top = index;
        *len = n + overhead;
    }
    return rc;
}

int sfu_srtp_unprotect_rtcp(sfu_srtp_ctx *c, uint8_t *buf, size_t *len) {
    size_t n = *len;
    size_t overhead = c->tag_len + SRTCP_TRAILER_LEN;
    size_t plain; /* length of the RTCP packet without trailer and tag */
    uint32_t ssrc, e_index, index;
    int encrypted;
    stream provisional;
    stream *s;
    int rc;

    if (c->direction != SFU_SRTP_INBOUND) {
        return SFU_SRTP_ERR_DIRECTION;
    }
    if (n > MAX_PACKET || n < RTCP_HEADER + overhead || (buf[0] >> 6) != 2) {
        return SFU_SRTP_ERR_MALFORMED;
    }
    plain = n - overhead;
    ssrc = load32(buf + 4);
    if (c->profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM) {
        e_index = load32(buf + n - SRTCP_TRAILER_LEN); /* tag, then E|index */
    } else {
        e_index = load32(buf + plain); /* E|index, then tag */
    }
    encrypted = (e_index & SRTCP_E_BIT) != 0;
    index = e_index & SRTCP_INDEX_MAX;

    s = find_stream(c, ssrc);
    if (s == NULL) {
        fresh_stream(&provisional, ssrc);
    }
    rc = replay_check(s ? &s->rtcp : &provisional.rtcp, index);
    if (rc != SFU_SRTP_OK) {
        return rc;
    }
    if (c->profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM) {
        uint8_t iv[12], trailer[SRTCP_TRAILER_LEN];
        memcpy(trailer, buf + n - SRTCP_TRAILER_LEN, SRTCP_TRAILER_LEN);
        gcm_iv(iv, c->rtcp.salt, ssrc, 0, 0);
        xor_be(iv + 8, index, 4);
        if (encrypted) {
            rc = gcm_open(c->rtcp.cipher, iv, buf, RTCP_HEADER, trailer, SRTCP_TRAILER_LEN,
                          buf + RTCP_HEADER, plain - RTCP_HEADER, buf + plain);
        } else {
            /* E = 0: the whole packet is associated data, nothing is encrypted. */
            rc = gcm_open(c->rtcp.cipher, iv, buf, plain, trailer, SRTCP_TRAILER_LEN, buf, 0,
                          buf + plain);
        }
    } else {
        uint8_t mac[SHA1_LEN];
        size_t authed = plain + SRTCP_TRAILER_LEN;
        rc = hmac_sha1(&c->rtcp.mac, buf, authed, NULL, mac);
        if (rc == SFU_SRTP_OK && CRYPTO_memcmp(mac, buf + authed, TAG_HMAC_80) != 0) {
            rc = SFU_SRTP_ERR_AUTH;
        }
        if (rc == SFU_SRTP_OK && encrypted) {
            uint8_t iv[16];
            cm_iv(iv, c->rtcp.salt, ssrc, index);
            rc = ctr_xor(c->rtcp.cipher, iv, buf + RTCP_HEADER, plain - RTCP_HEADER);
        }
    }
    if (rc != SFU_SRTP_OK) {
        return rc;
    }
    if (s == NULL && (s = insert_stream(c, &provisional)) == NULL) {
        return SFU_SRTP_ERR_STREAM_LIMIT;
    }
    replay_commit(&s->rtcp, index);
    *len = plain;
    return SFU_SRTP_OK;
}

const char *sfu_srtp_strerror(int code) {
    switch (code) {
    case SFU_SRTP_OK:
        return "ok";
    case SFU_SRTP_ERR_AUTH:
        return "authentication failed";
    case SFU_SRTP_ERR_REPLAY_OLD:
        return "replayed packet (older than the window)";
    case SFU_SRTP_ERR_REPLAY_DUP:
        return "replayed packet (duplicate)";
    case SFU_SRTP_ERR_MALFORMED:
        return "malformed packet";
    case SFU_SRTP_ERR_NOSPACE:
        return "buffer too small for the trailer";
    case SFU_SRTP_ERR_DIRECTION:
        return "wrong direction for this context";
    case SFU_SRTP_ERR_STREAM_LIMIT:
        return "too many streams";
    case SFU_SRTP_ERR_INDEX_EXHAUSTED:
        return "packet index exhausted, rekey needed";
    case SFU_SRTP_ERR_CRYPTO:
        return "crypto library failure";
    default:
        return "unknown error";
    }
}
