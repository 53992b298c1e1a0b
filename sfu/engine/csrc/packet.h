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
