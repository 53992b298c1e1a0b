/*
 * watchrx: the watchers bench's receiver. The Python client (sfu/bench/watchload.py) does each
 * watcher's signaling, ICE and DTLS, then hands the watcher's UDP socket and SRTP keys over a
 * SOCK_SEQPACKET control socket; from then on every datagram of that socket is read here:
 * RTP is counted per stream (sequence numbers: expected, lost), one packet in SAMPLE_EVERY per
 * watcher is decrypted with the watcher's keys (auth, the publisher's payload trailer, one-way
 * delay), RTCP is counted, and STUN (consent freshness) goes back to the client, which answers
 * it with the watcher's ICE agent.
 *
 *   usage: watchrx CONTROL_FD
 *
 * Control messages (text; "add" carries the socket as SCM_RIGHTS):
 *   in:  add IDX PROFILE KEY_HEX SALT_HEX | reset | report | quit
 *   out: stun IDX IP PORT HEX | ok | report {JSON}
 * "reset" starts a measurement window; "report" describes the window so far.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "srtp.h"

#define MAX_WATCHERS 4096
#define SLOTS 4 /* SSRCs tracked per watcher (video and audio, and room to spare) */
#define BATCH 32
#define BUF 2048
#define SAMPLE_EVERY 16
#define MAX_SAMPLES (1 << 20)
#define TRAILER 20

struct slot {
    uint32_t ssrc;
    int used, valid;
    int video;
    int64_t base, highest;
    uint64_t count;
};

struct watcher {
    int fd;
    sfu_srtp_ctx *ctx;
    struct slot slots[SLOTS];
    uint64_t total_rtp; /* since added: picks the samples */
    uint64_t first_ns;  /* first RTP packet ever */
    uint64_t rtp, bytes, rtcp, stun, dtls, other, auth, replay, bad_payload, samples;
};

static struct watcher W[MAX_WATCHERS];
static int n_watchers;
static int ctl = -1;
static uint32_t *lat_us;
static size_t n_lat;
static uint64_t window_start;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static int unhex(const char *s, uint8_t *out, size_t n) {
    if (strlen(s) != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static void reply(const char *msg, size_t len) {
    if (send(ctl, msg, len, 0) < 0) perror("watchrx: control send");
}

static void reset_window(void) {
    for (int i = 0; i < n_watchers; i++) {
        struct watcher *w = &W[i];
        for (int s = 0; s < SLOTS; s++) {
            w->slots[s].valid = 0;
            w->slots[s].count = 0;
        }
        w->rtp = w->bytes = w->rtcp = w->stun = w->dtls = w->other = 0;
        w->auth = w->replay = w->bad_payload = w->samples = 0;
    }
    n_lat = 0;
    window_start = now_ns();
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void report(void) {
    size_t cap = 4096 + (size_t)n_watchers * 48, len = 0;
    char *out = malloc(cap);
    if (!out) return;
    uint64_t rtp = 0, bytes = 0, rtcp = 0, stun = 0, dtls = 0, other = 0, auth = 0, replay = 0;
    uint64_t bad = 0, samples = 0, min_rtp = UINT64_MAX, max_rtp = 0, silent = 0;
    int64_t expected[2] = {0, 0}, received[2] = {0, 0};
    for (int i = 0; i < n_watchers; i++) {
        struct watcher *w = &W[i];
        rtp += w->rtp; bytes += w->bytes; rtcp += w->rtcp; stun += w->stun; dtls += w->dtls;
        other += w->other; auth += w->auth; replay += w->replay; bad += w->bad_payload;
        samples += w->samples;
        if (w->rtp < min_rtp) min_rtp = w->rtp;
        if (w->rtp > max_rtp) max_rtp = w->rtp;
        if (w->rtp == 0) silent++;
        for (int s = 0; s < SLOTS; s++) {
            struct slot *sl = &w->slots[s];
            if (!sl->valid) continue;
            expected[sl->video] += sl->highest - sl->base + 1;
            received[sl->video] += (int64_t)sl->count;
        }
    }
    if (n_watchers == 0) min_rtp = 0;
    qsort(lat_us, n_lat, sizeof *lat_us, cmp_u32);
    uint32_t p50 = n_lat ? lat_us[n_lat / 2] : 0;
    uint32_t p99 = n_lat ? lat_us[(n_lat * 99) / 100] : 0;
    uint32_t mx = n_lat ? lat_us[n_lat - 1] : 0;
    int64_t lost_v = expected[1] - received[1], lost_a = expected[0] - received[0];
    len += (size_t)snprintf(
        out + len, cap - len,
        "report {\"watchers\": %d, \"window_s\": %.6f, \"rtp\": %llu, \"bytes\": %llu, "
        "\"rtcp\": %llu, \"stun\": %llu, \"dtls\": %llu, \"other\": %llu, "
        "\"video_expected\": %lld, \"video_lost\": %lld, \"audio_expected\": %lld, "
        "\"audio_lost\": %lld, \"silent\": %llu, \"min_rtp\": %llu, \"max_rtp\": %llu, "
        "\"auth_failures\": %llu, \"replayed\": %llu, \"bad_payload\": %llu, "
        "\"samples\": %llu, \"p50_us\": %u, \"p99_us\": %u, \"max_us\": %u, \"first_ns\": [",
        n_watchers, (double)(now_ns() - window_start) / 1e9, (unsigned long long)rtp,
        (unsigned long long)bytes, (unsigned long long)rtcp, (unsigned long long)stun,
        (unsigned long long)dtls, (unsigned long long)other, (long long)expected[1],
        (long long)(lost_v > 0 ? lost_v : 0), (long long)expected[0],
        (long long)(lost_a > 0 ? lost_a : 0), (unsigned long long)silent,
        (unsigned long long)min_rtp, (unsigned long long)max_rtp, (unsigned long long)auth,
        (unsigned long long)replay, (unsigned long long)bad, (unsigned long long)samples, p50,
        p99, mx);
    for (int i = 0; i < n_watchers && len + 32 < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%llu", i ? ", " : "",
                                (unsigned long long)W[i].first_ns);
    len += (size_t)snprintf(out + len, cap - len, "]}");
    reply(out, len);
    free(out);
}

static void on_rtp(struct watcher *w, uint8_t *pkt, size_t len, uint64_t t) {
    if (len < 12) { w->other++; return; }
    uint32_t ssrc = ((uint32_t)pkt[8] << 24) | ((uint32_t)pkt[9] << 16) |
                    ((uint32_t)pkt[10] << 8) | pkt[11];
    uint16_t seq = (uint16_t)((pkt[2] << 8) | pkt[3]);
    struct slot *sl = NULL;
    for (int s = 0; s < SLOTS && !sl; s++)
        if (w->slots[s].used && w->slots[s].ssrc == ssrc) sl = &w->slots[s];
    for (int s = 0; s < SLOTS && !sl; s++)
        if (!w->slots[s].used) {
            sl = &w->slots[s];
            sl->used = 1;
            sl->ssrc = ssrc;
            sl->video = (pkt[1] & 0x7f) != 111;
        }
    if (!sl) { w->other++; return; }
    w->rtp++;
    w->bytes += len;
    if (!w->first_ns) w->first_ns = t;
    if (!sl->valid) {
        sl->valid = 1;
        sl->base = sl->highest = seq;
    } else {
        int64_t ext = sl->highest + (int16_t)(seq - (uint16_t)(sl->highest & 0xffff));
        if (ext > sl->highest) sl->highest = ext;
        if (ext < sl->base) sl->base = ext;
    }
    sl->count++;
    if (w->total_rtp++ % SAMPLE_EVERY) return;
    uint8_t scratch[BUF];
    size_t n = len;
    memcpy(scratch, pkt, len);
    int rc = sfu_srtp_unprotect(w->ctx, scratch, &n);
    if (rc == SFU_SRTP_ERR_REPLAY_OLD || rc == SFU_SRTP_ERR_REPLAY_DUP) { w->replay++; return; }
    if (rc != SFU_SRTP_OK) { w->auth++; return; }
    if (n < 12 + TRAILER || memcmp(scratch + n - TRAILER, "SFUW", 4) != 0) {
        w->bad_payload++;
        return;
    }
    w->samples++;
    uint64_t sent = get64(scratch + n - 8);
    if (n_lat < MAX_SAMPLES && t > sent) lat_us[n_lat++] = (uint32_t)((t - sent) / 1000);
}

static void forward_stun(int idx, const uint8_t *pkt, size_t len, struct sockaddr_in *from) {
    char msg[BUF * 2 + 96];
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &from->sin_addr, ip, sizeof ip);
    int off = snprintf(msg, sizeof msg, "stun %d %s %d ", idx, ip, ntohs(from->sin_port));
    for (size_t i = 0; i < len && off + 3 < (int)sizeof msg; i++)
        off += snprintf(msg + off, sizeof msg - (size_t)off, "%02x", pkt[i]);
    reply(msg, (size_t)off);
}

static void on_readable(int idx) {
    static uint8_t bufs[BATCH][BUF];
    static struct sockaddr_in from[BATCH];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = BUF;
        memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    struct watcher *w = &W[idx];
    int got = recvmmsg(w->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (got <= 0) return;
    uint64_t t = now_ns();
    for (int i = 0; i < got; i++) {
        uint8_t *p = bufs[i];
        size_t len = msgs[i].msg_len;
        if (len == 0) { w->other++; continue; }
        if (p[0] < 4) {
            w->stun++;
            forward_stun(idx, p, len, &from[i]);
        } else if (p[0] >= 20 && p[0] <= 63) {
            w->dtls++;
        } else if (p[0] >= 128 && p[0] <= 191) {
            if (len >= 2 && p[1] >= 192 && p[1] <= 223)
                w->rtcp++;
            else
                on_rtp(w, p, len, t);
        } else {
            w->other++;
        }
    }
}

static int on_control(int ep) {
    char msg[1024];
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {msg, sizeof msg - 1};
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t n = recvmsg(ctl, &mh, 0);
    if (n <= 0) return -1;
    msg[n] = 0;
    int fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
    if (strncmp(msg, "add ", 4) == 0) {
        int idx, profile;
        char key_hex[80], salt_hex[80];
        uint8_t key[16], salt[14];
        size_t salt_len;
        if (sscanf(msg + 4, "%d %d %79s %79s", &idx, &profile, key_hex, salt_hex) != 4 ||
            idx != n_watchers || idx >= MAX_WATCHERS || fd < 0) {
            fprintf(stderr, "watchrx: bad add: %s (fd %d)\n", msg, fd);
            if (fd >= 0) close(fd);
            return 0;
        }
        salt_len = profile == SFU_SRTP_PROFILE_AEAD_AES_128_GCM ? 12 : 14;
        if (unhex(key_hex, key, 16) || unhex(salt_hex, salt, salt_len)) {
            fprintf(stderr, "watchrx: bad keys: %s\n", msg);
            close(fd);
            return 0;
        }
        struct watcher *w = &W[n_watchers];
        memset(w, 0, sizeof *w);
        w->fd = fd;
        w->ctx = sfu_srtp_ctx_new(profile, key, salt, SFU_SRTP_INBOUND);
        if (!w->ctx) {
            fprintf(stderr, "watchrx: no SRTP context for profile %d\n", profile);
            close(fd);
            return 0;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)n_watchers};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) perror("watchrx: epoll_ctl");
        n_watchers++;
    } else if (strcmp(msg, "reset") == 0) {
        reset_window();
        reply("ok", 2);
    } else if (strcmp(msg, "report") == 0) {
        report();
    } else if (strcmp(msg, "quit") == 0) {
        return -1;
    } else {
        fprintf(stderr, "watchrx: unknown command %s\n", msg);
        if (fd >= 0) close(fd);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: watchrx CONTROL_FD\n");
        return 2;
    }
    ctl = atoi(argv[1]);
    lat_us = malloc(sizeof *lat_us * MAX_SAMPLES);
    int ep = epoll_create1(0);
    if (!lat_us || ep < 0) {
        perror("watchrx");
        return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ctl, &ev) < 0) {
        perror("watchrx: control fd");
        return 1;
    }
    reset_window();
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("watchrx: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u32 == UINT32_MAX) {
                if (on_control(ep) < 0) return 0;
            } else {
                on_readable((int)evs[i].data.u32);
            }
        }
    }
}
