/*
 * Datagram parsing for the forwarding engine: RFC 7983 demux, RTP header fields, TURN
 * ChannelData framing (RFC 8656 section 12). Pure functions over bytes; nothing allocates.
 */
#ifndef SFU_ENGINE_PACKET_H
#define SFU_ENGINE_PACKET_H

#include <stddef.h>
#include <stdint.h>

/* Same values as sfu.rtp.demux.PacketKind. */
#define SFU_PKT_STUN 0
#define SFU_PKT_ZRTP 1
#define SFU_PKT_DTLS 2
#define SFU_PKT_TURN_CHANNEL 3
#define SFU_PKT_RTP 4
#define SFU_PKT_RTCP 5
#define SFU_PKT_UNKNOWN 6

#define SFU_RTP_HEADER 12u
#define SFU_CHANNEL_HEADER 4u

/*
 * RFC 7983 section 7, by the first byte (the table is in sfu/rtp/demux.py, which this mirrors):
 * 0..3 STUN (>= 20 bytes), 16..19 ZRTP, 20..63 DTLS, 64..79 TURN ChannelData, 128..191 RTP, or
 * RTCP when byte 1 is 192..223 (>= 8 bytes; RTP needs >= 12). Everything else is UNKNOWN.
 */
static inline int sfu_classify(const uint8_t *p, size_t n) {
    uint8_t b;
    if (n == 0) {
        return SFU_PKT_UNKNOWN;
    }
    b = p[0];
    if (b <= 3) {
        return n >= 20 ? SFU_PKT_STUN : SFU_PKT_UNKNOWN;
    }
    if (b >= 16 && b <= 19) {
        return SFU_PKT_ZRTP;
    }
    if (b >= 20 && b <= 63) {
        return SFU_PKT_DTLS;
    }
    if (b >= 64 && b <= 79) {
        return SFU_PKT_TURN_CHANNEL;
    }
    if (b >= 128 && b <= 191) {
        if (n >= 2 && p[1] >= 192 && p[1] <= 223) {
            return n >= 8 ? SFU_PKT_RTCP : SFU_PKT_UNKNOWN;
        }
        return n >= SFU_RTP_HEADER ? SFU_PKT_RTP : SFU_PKT_UNKNOWN;
    }
    return SFU_PKT_UNKNOWN;
}

static inline uint16_t sfu_load16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t sfu_load32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void sfu_store16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void sfu_store32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/*
 * Rewrite the fixed RTP header in place (n >= 12 assumed): payload type (marker kept),
 * sequence number, timestamp, SSRC.
 */
static inline void sfu_rtp_rewrite(uint8_t *p, uint8_t pt, uint16_t seq, uint32_t ts,
                                   uint32_t ssrc) {
    p[1] = (uint8_t)((p[1] & 0x80u) | (pt & 0x7Fu));
    sfu_store16(p + 2, seq);
    sfu_store32(p + 4, ts);
    sfu_store32(p + 8, ssrc);
}

/*
 * The payload of an RTP packet: its offset (after CSRCs and the header extension) and length
 * (padding removed). Returns 0, or -1 when the header is malformed.
 */
static inline int sfu_rtp_payload(const uint8_t *p, size_t n, size_t *off, size_t *len) {
    size_t o, end = n;
    if (n < SFU_RTP_HEADER || (p[0] >> 6) != 2) {
        return -1;
    }
    o = SFU_RTP_HEADER + 4u * (p[0] & 0x0Fu);
    if (p[0] & 0x10u) {
        if (n < o + 4) {
            return -1;
        }
        o += 4u + 4u * sfu_load16(p + o + 2);
    }
    if (p[0] & 0x20u) {
        if (p[n - 1] == 0 || p[n - 1] > n) {
            return -1;
        }
        end = n - p[n - 1];
    }
    if (o > end) {
        return -1;
    }
    *off = o;
    *len = end - o;
    return 0;
}

static inline int sfu_vp8_key_start(const uint8_t *d, size_t n) {
    size_t i = 1;
    if (n == 0 || !(d[0] & 0x10u) || (d[0] & 0x07u)) {
        return 0; /* S=1 and PID=0 */
    }
    if (d[0] & 0x80u) { /* X */
        uint8_t b1;
        if (n < 2) {
            return 0;
        }
        b1 = d[1];
        i = 2;
        if (b1 & 0x80u) { /* I: picture id, 7 or 15 bits */
            if (n <= i) {
                return 0;
            }
            i += (d[i] & 0x80u) ? 2 : 1;
        }
        if (b1 & 0x40u) { /* L */
            i++;
        }
        if (b1 & 0x30u) { /* T or K */
            i++;
        }
    }
    return n > i && !(d[i] & 0x01u); /* P=0: a key frame */
}

static inline int sfu_vp9_key_start(const uint8_t *d, size_t n) {
    size_t i = 1;
    if (n == 0 || !(d[0] & 0x08u) || (d[0] & 0x40u)) {
        return 0; /* B=1 and P=0 */
    }
    if (!(d[0] & 0x20u)) {
        return 1; /* no layer indices */
    }
    if (d[0] & 0x80u) { /* I */
        if (n <= i) {
            return 0;
        }
        i += (d[i] & 0x80u) ? 2 : 1;
    }
    return n > i && ((d[i] >> 1) & 0x07u) == 0; /* spatial layer 0 */
}

static inline int sfu_h264_is_key_nal(uint8_t header) {
    uint8_t t = header & 0x1Fu;
    return t == 5 || t == 7; /* IDR slice, SPS */
}

static inline int sfu_h264_key_start(const uint8_t *d, size_t n) {
    uint8_t t;
    size_t i;
    if (n == 0) {
        return 0;
    }
    t = d[0] & 0x1Fu;
    if (t >= 1 && t <= 23) {
        return sfu_h264_is_key_nal(d[0]);
    }
    if (t == 24) { /* STAP-A */
        for (i = 1; i + 2 <= n;) {
            size_t size = sfu_load16(d + i);
            i += 2;
            if (size && i < n && sfu_h264_is_key_nal(d[i])) {
                return 1;
            }
            i += size;
        }
        return 0;
    }
    if (t == 28) { /* FU-A: the first fragment */
        return n >= 2 && (d[1] & 0x80u) && sfu_h264_is_key_nal(d[1]);
    }
    return 0;
}

/*
 * Whether an RTP packet starts a keyframe (gate: 1 VP8, 2 VP9, 3 H.264, the SFU_GATE_* values);
 * the rules are sfu/engine/keyframe.py's.
 */
static inline int sfu_keyframe_start(int gate, const uint8_t *p, size_t n) {
    size_t off, len;
    if (sfu_rtp_payload(p, n, &off, &len) != 0) {
        return 0;
    }
    switch (gate) {
    case 1:
        return sfu_vp8_key_start(p + off, len);
    case 2:
        return sfu_vp9_key_start(p + off, len);
    case 3:
        return sfu_h264_key_start(p + off, len);
    default:
        return 0;
    }
}

/*
 * RFC 8285 header extensions: finds the elements with ids want[0..2] (0 = not wanted) in the
 * one-byte (0xBEDE) or two-byte (0x100X) form. val[i]/vlen[i] point into the packet (vlen 0:
 * absent). Returns 0, or -1 when there is no extension block or it is malformed (then nothing
 * is reported). Values are only accepted when 1..SFU_SDES_MAX bytes of printable ASCII
 * (0x21..0x7E), as MID and RID tokens are; anything else counts as absent.
 */
#define SFU_SDES_MAX 32u

static inline int sfu_sdes_ok(const uint8_t *v, size_t n) {
    size_t i;
    if (n == 0 || n > SFU_SDES_MAX) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (v[i] < 0x21 || v[i] > 0x7E) {
            return 0;
        }
    }
    return 1;
}

static inline int sfu_rtp_sdes_ext(const uint8_t *p, size_t n, const int want[3],
                                   const uint8_t *val[3], size_t vlen[3]) {
    size_t o, end;
    uint16_t profile;
    int two_byte, k;
    for (k = 0; k < 3; k++) {
        val[k] = NULL;
        vlen[k] = 0;
    }
    if (n < SFU_RTP_HEADER || (p[0] >> 6) != 2 || !(p[0] & 0x10u)) {
        return -1;
    }
    o = SFU_RTP_HEADER + 4u * (p[0] & 0x0Fu);
    if (n < o + 4) {
        return -1;
    }
    profile = sfu_load16(p + o);
    end = o + 4u + 4u * sfu_load16(p + o + 2);
    if (end > n) {
        return -1;
    }
    if (profile == 0xBEDEu) {
        two_byte = 0;
    } else if ((profile & 0xFFF0u) == 0x1000u) {
        two_byte = 1;
    } else {
        return -1;
    }
    o += 4;
    while (o < end) {
        unsigned id;
        size_t len;
        if ((two_byte ? p[o] : p[o] >> 4) == 0) { /* padding (id 0) */
            o++;
            continue;
        }
        if (two_byte) {
            if (o + 2 > end) {
                return -1;
            }
            id = p[o];
            len = p[o + 1];
            o += 2;
        } else {
            id = p[o] >> 4;
            len = (size_t)(p[o] & 0x0Fu) + 1u;
            if (id == 15) {
                break; /* reserved: stop */
            }
            o += 1;
        }
        if (o + len > end) {
            return -1;
        }
        for (k = 0; k < 3; k++) {
            if (want[k] > 0 && (unsigned)want[k] == id && vlen[k] == 0 &&
                sfu_sdes_ok(p + o, len)) {
                val[k] = p + o;
                vlen[k] = len;
            }
        }
        o += len;
    }
    return 0;
}

/*
 * ChannelData: channel (2) | length (2) | data (length) [| padding]. Returns the data length, or
 * -1 when the datagram is shorter than the header plus the claimed length (RFC 8656 12.5: drop).
 */
static inline long sfu_channel_data_len(const uint8_t *p, size_t n) {
    uint16_t len;
    if (n < SFU_CHANNEL_HEADER) {
        return -1;
    }
    len = sfu_load16(p + 2);
    if ((size_t)len + SFU_CHANNEL_HEADER > n) {
        return -1;
    }
    return (long)len;
}

static inline void sfu_channel_header(uint8_t *p, uint16_t channel, uint16_t len) {
    sfu_store16(p, channel);
    sfu_store16(p + 2, len);
}

#endif /* SFU_ENGINE_PACKET_H */
