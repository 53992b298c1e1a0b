/*
 * The floor: the least a forwarding server of the same shape can do, as a reference for the
 * engine's cost. One thread: recvmmsg (batch 64), find the transport by source address, (SRTP:
 * unprotect once), then per consumer copy the packet, rewrite SSRC / sequence / timestamp,
 * (SRTP: protect with the consumer transport's key) and queue it; sendmmsg the queue after each
 * receive batch (or when it holds 1,024 packets). No RTCP, no NACK cache, no statistics beyond
 * counters: anything the engine does beyond this is overhead the ratio shows.
 *
 * Usage: floor PLAN. Reads commands on stdin: "stats" prints one JSON line of counters,
 * "quit" (or end of input) exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "plan.h"
#include "srtp.h"

#define BATCH 64
#define OUT_SLOTS 1024
#define BUF_SIZE 2048
#define MAX_ROUTE 1024

typedef struct {
    int dst_tidx;
    uint32_t dst_ssrc;
    uint16_t seq_offset;
    uint32_t ts_offset;
} route_out;

typedef struct {
    int tidx;
    uint32_t ssrc;
    int n;
    route_out *outs;
} route;

typedef struct {
    struct sockaddr_in addr;
    sfu_srtp_ctx *rx; /* unprotects what this transport sends us */
    sfu_srtp_ctx *tx; /* protects what we send it */
} transport;

static struct {
    uint64_t in;
    uint64_t out;
    uint64_t srtp_errors;
    uint64_t unrouted;
    uint64_t send_errors;
} counters;

static plan *P;
static transport *T;
static route *R;
static int n_routes;
static int srtp_on;

static inline void count(uint64_t *c, uint64_t n) {
    __atomic_store_n(c, *c + n, __ATOMIC_RELAXED);
}

static void *control_thread(void *arg) {
    (void)arg;
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "stats", 5) == 0) {
            printf("{\"in\": %llu, \"out\": %llu, \"srtp_errors\": %llu, \"unrouted\": %llu, "
                   "\"send_errors\": %llu}\n",
                   (unsigned long long)__atomic_load_n(&counters.in, __ATOMIC_RELAXED),
                   (unsigned long long)__atomic_load_n(&counters.out, __ATOMIC_RELAXED),
                   (unsigned long long)__atomic_load_n(&counters.srtp_errors, __ATOMIC_RELAXED),
                   (unsigned long long)__atomic_load_n(&counters.unrouted, __ATOMIC_RELAXED),
                   (unsigned long long)__atomic_load_n(&counters.send_errors, __ATOMIC_RELAXED));
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    _exit(0);
    return NULL;
}

static int find_transport(const struct sockaddr_in *from) {
    /* The load side has one address and a port per transport; a linear scan is per input
     * packet only (not per output) and the transports are few. */
    for (int i = 0; i < P->n_transports; i++)
        if (T[i].addr.sin_port == from->sin_port && T[i].addr.sin_addr.s_addr == from->sin_addr.s_addr)
            return i;
    return -1;
}

static route *find_route(int tidx, uint32_t ssrc) {
    for (int i = 0; i < n_routes; i++)
        if (R[i].tidx == tidx && R[i].ssrc == ssrc) return &R[i];
    return NULL;
}

static int setup(void) {
    T = calloc((size_t)P->n_transports, sizeof *T);
    R = calloc((size_t)P->n_streams + 1, sizeof *R);
    if (!T || !R) return -1;
    srtp_on = P->profile != 0;
    for (int i = 0; i < P->n_transports; i++) {
        const plan_transport *pt = &P->transports[i];
        T[i].addr.sin_family = AF_INET;
        T[i].addr.sin_port = htons((uint16_t)pt->port);
        if (inet_pton(AF_INET, P->load_ip, &T[i].addr.sin_addr) != 1) return -1;
        if (srtp_on) {
            T[i].rx = sfu_srtp_ctx_new(P->profile, pt->up_key, pt->up_salt, SFU_SRTP_INBOUND);
            T[i].tx = sfu_srtp_ctx_new(P->profile, pt->down_key, pt->down_salt, SFU_SRTP_OUTBOUND);
            if (!T[i].rx || !T[i].tx) return -1;
        }
    }
    for (int s = 0; s < P->n_streams; s++) {
        route *r = &R[n_routes++];
        r->tidx = P->streams[s].tidx;
        r->ssrc = P->streams[s].ssrc;
        r->outs = calloc((size_t)P->streams[s].consumers + 1, sizeof *r->outs);
        if (!r->outs) return -1;
        for (int c = 0; c < P->n_consumers; c++) {
            const plan_consumer *pc = &P->consumers[c];
            if (pc->src_tidx == r->tidx && pc->src_ssrc == r->ssrc) {
                route_out *o = &r->outs[r->n++];
                o->dst_tidx = pc->dst_tidx;
                o->dst_ssrc = pc->dst_ssrc;
            }
        }
    }
    return 0;
}

static uint8_t in_bufs[BATCH][BUF_SIZE];
static struct sockaddr_in in_addrs[BATCH];
static struct mmsghdr in_msgs[BATCH];
static struct iovec in_iov[BATCH];
static uint8_t out_bufs[OUT_SLOTS][BUF_SIZE];
static struct mmsghdr out_msgs[OUT_SLOTS];
static struct iovec out_iov[OUT_SLOTS];

static void flush(int fd, int n) {
    int done = 0;
    while (done < n) {
        int r = sendmmsg(fd, out_msgs + done, (unsigned)(n - done), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            count(&counters.send_errors, 1);
            done++; /* skip the packet that failed */
            continue;
        }
        done += r;
        count(&counters.out, (uint64_t)r);
    }
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int run(int fd) {
    for (int i = 0; i < BATCH; i++) {
        in_iov[i].iov_base = in_bufs[i];
        in_iov[i].iov_len = BUF_SIZE;
        in_msgs[i].msg_hdr.msg_iov = &in_iov[i];
        in_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    for (int i = 0; i < OUT_SLOTS; i++) {
        out_iov[i].iov_base = out_bufs[i];
        out_msgs[i].msg_hdr.msg_iov = &out_iov[i];
        out_msgs[i].msg_hdr.msg_iovlen = 1;
        out_msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    }
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            in_msgs[i].msg_hdr.msg_name = &in_addrs[i];
            in_msgs[i].msg_hdr.msg_namelen = sizeof in_addrs[i];
        }
        int n = recvmmsg(fd, in_msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        count(&counters.in, (uint64_t)n);
        int nout = 0;
        for (int i = 0; i < n; i++) {
            uint8_t *pkt = in_bufs[i];
            size_t len = in_msgs[i].msg_len;
            if (len < 12 || pkt[0] < 128 || pkt[0] > 191 || (pkt[1] >= 192 && pkt[1] <= 223))
                continue; /* not RTP (the load sends no RTCP) */
            int tidx = find_transport(&in_addrs[i]);
            if (tidx < 0) {
                count(&counters.unrouted, 1);
                continue;
            }
            if (srtp_on && sfu_srtp_unprotect(T[tidx].rx, pkt, &len) != SFU_SRTP_OK) {
                count(&counters.srtp_errors, 1);
                continue;
            }
            route *r = find_route(tidx, get32(pkt + 8));
            if (!r) {
                count(&counters.unrouted, 1);
                continue;
            }
            uint16_t seq = (uint16_t)(pkt[2] << 8 | pkt[3]);
            uint32_t ts = get32(pkt + 4);
            for (int k = 0; k < r->n; k++) {
                route_out *o = &r->outs[k];
                if (nout == OUT_SLOTS) {
                    flush(fd, nout);
                    nout = 0;
                }
                uint8_t *out = out_bufs[nout];
                memcpy(out, pkt, len);
                uint16_t oseq = (uint16_t)(seq + o->seq_offset);
                out[2] = (uint8_t)(oseq >> 8);
                out[3] = (uint8_t)oseq;
                put32(out + 4, ts + o->ts_offset);
                put32(out + 8, o->dst_ssrc);
                size_t olen = len;
                if (srtp_on && sfu_srtp_protect(T[o->dst_tidx].tx, out, &olen, BUF_SIZE) != SFU_SRTP_OK) {
                    count(&counters.srtp_errors, 1);
                    continue;
                }
                out_iov[nout].iov_len = olen;
                out_msgs[nout].msg_hdr.msg_name = &T[o->dst_tidx].addr;
                nout++;
            }
        }
        if (nout) flush(fd, nout);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PLAN\n", argv[0]);
        return 2;
    }
    P = calloc(1, sizeof *P);
    if (!P || plan_load(P, argv[1]) != 0 || setup() != 0) {
        fprintf(stderr, "floor: cannot set up from %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 4 << 20; /* as the engines ask */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)P->server_port)};
    if (inet_pton(AF_INET, P->server_ip, &addr.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("floor: bind");
        return 2;
    }
    pthread_t th;
    pthread_create(&th, NULL, control_thread, NULL);
    printf("{\"ready\": true, \"engine\": \"floor\", \"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    return run(fd);
}
