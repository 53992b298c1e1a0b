/*
 * The load generator of `sfu bench`: publishers and subscribers of one plan (see plan.h).
 *
 * One sender thread paces every publisher stream (video at the trial's rate, audio at 50
 * packets/s) on a 1 ms tick: each packet is built from a template, stamped with CLOCK_MONOTONIC
 * and a per-stream counter in the payload, protected with our C SRTP (unless the plan is plain)
 * and sent with sendmmsg in batches of at most 16 per socket. Receiver threads (several
 * subscriber sockets each, epoll + recvmmsg) track the RTP sequence of every stream they get
 * (gaps = loss, reordered/late counted apart), and decrypt one packet in SAMPLE of each stream
 * to check it and to take its one-way delay: kernel receive time (SO_TIMESTAMPNS, converted to
 * the monotonic clock) minus the send time in the payload.
 *
 * Usage: loadgen PLAN [-r RX_THREADS] [-s SAMPLE] [-t TICK_US] [-p POLL_US (0: block)]
 * Commands on stdin, one JSON line out per command:
 *   trial VIDEO_PPS SECONDS GRACE_MS   prints {"event": "started"} when sending starts, then the
 *                                      result once the trial's packets have drained
 *   quit
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "plan.h"
#include "srtp.h"

#define BUF_SIZE 1536
#define RX_BATCH 64
#define TX_BATCH 16
#define VIDEO_SIZE 1200     /* RTP packet, header included */
#define AUDIO_SIZE (12 + 160)
#define AUDIO_PPS 50.0
#define MAX_RX_THREADS 8
#define LAT_CAP (1u << 19)
#define SSRC_SLOTS 32768u
#define MAGIC 0x53465542u /* "SFUB" */
#define IDLE_POLL_NS 5000000u

typedef struct {
    int fd;
    sfu_srtp_ctx *tx; /* protects what we publish */
    sfu_srtp_ctx *rx; /* unprotects samples of what we receive */
    int n_pub;
    int pub[PLAN_MAX_STREAMS];
} lg_transport;

typedef struct {
    int tidx;
    uint32_t ssrc;
    int video;
    int consumers;
    uint16_t seq;
    uint64_t counter;
    uint64_t sent_trial;
} pub_stream;

typedef struct {
    uint32_t ssrc;
    int tidx;
    int have;
    uint16_t next_seq;
    uint32_t until_sample;
} sub_stream;

typedef struct {
    pthread_t th;
    int epfd;
    /* written by the thread only, read by the control thread */
    uint64_t received;
    uint64_t gaps;
    uint64_t late;
    uint64_t auth_failures;
    uint64_t replayed;
    uint64_t unknown;
    uint64_t bad_payload;
    pthread_mutex_t mu; /* guards lat, n_lat, recording */
    int64_t *lat;
    size_t n_lat;
    int recording;
    int64_t clock_offset; /* realtime - monotonic, ns */
} rx_thread;

static plan *P;
static lg_transport *T;
static pub_stream *S;
static sub_stream *U;
static int n_sub;
static int32_t ssrc_table[SSRC_SLOTS];
static rx_thread RX[MAX_RX_THREADS];
static int n_rx = 2;
static uint32_t sample_every = 16;
static uint64_t tick_ns = 1000000;
static uint64_t poll_ns = 100000;
static int trial_active;
static int srtp_on;
static uint8_t video_tpl[VIDEO_SIZE];
static uint8_t audio_tpl[AUDIO_SIZE];

/* sender state */
enum { S_IDLE, S_RUN, S_STOP, S_EXIT };
static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_cv = PTHREAD_COND_INITIALIZER;
static int s_state = S_IDLE;
static double s_video_pps;
static uint64_t s_elapsed_ns;
static uint64_t s_send_errors;
static uint64_t s_behind_ticks;

static inline void bump(uint64_t *c, uint64_t n) { __atomic_store_n(c, *c + n, __ATOMIC_RELAXED); }
static inline uint64_t load(const uint64_t *c) { return __atomic_load_n(c, __ATOMIC_RELAXED); }

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
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
static void put64le(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64le(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t ssrc_hash(uint32_t ssrc) { return (ssrc * 2654435761u) & (SSRC_SLOTS - 1); }

static int ssrc_lookup(uint32_t ssrc) {
    for (uint32_t h = ssrc_hash(ssrc);; h = (h + 1) & (SSRC_SLOTS - 1)) {
        int32_t i = ssrc_table[h];
        if (i < 0) return -1;
        if (U[i].ssrc == ssrc) return i;
    }
}

static void ssrc_insert(uint32_t ssrc, int idx) {
    uint32_t h = ssrc_hash(ssrc);
    while (ssrc_table[h] >= 0) h = (h + 1) & (SSRC_SLOTS - 1);
    ssrc_table[h] = idx;
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* realtime - monotonic, from the tightest of a few bracketing reads */
static int64_t clock_offset(void) {
    int64_t best = 0;
    uint64_t best_span = UINT64_MAX;
    for (int i = 0; i < 9; i++) {
        struct timespec a, r, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        clock_gettime(CLOCK_REALTIME, &r);
        clock_gettime(CLOCK_MONOTONIC, &b);
        uint64_t an = (uint64_t)a.tv_sec * 1000000000u + (uint64_t)a.tv_nsec;
        uint64_t bn = (uint64_t)b.tv_sec * 1000000000u + (uint64_t)b.tv_nsec;
        int64_t rn = (int64_t)r.tv_sec * 1000000000 + r.tv_nsec;
        if (bn - an < best_span) {
            best_span = bn - an;
            best = rn - (int64_t)(an + (bn - an) / 2);
        }
    }
    return best;
}

/* ---------------------------------------------------------------- sender */

static void send_batch(int fd, struct mmsghdr *msgs, int n) {
    int done = 0;
    while (done < n) {
        int r = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            bump(&s_send_errors, 1);
            done++;
            continue;
        }
        done += r;
    }
}

static void build(pub_stream *s, uint8_t *buf, size_t *len, uint64_t elapsed_ns) {
    size_t size = s->video ? VIDEO_SIZE : AUDIO_SIZE;
    memcpy(buf, s->video ? video_tpl : audio_tpl, size);
    put16(buf + 2, s->seq++);
    uint32_t rate = s->video ? 90000 : 48000;
    put32(buf + 4, (uint32_t)(elapsed_ns / 1000u * rate / 1000000u));
    put32(buf + 8, s->ssrc);
    put32(buf + 12, MAGIC);
    put64le(buf + 16, plan_now_ns());
    put64le(buf + 24, s->counter++);
    *len = size;
    if (srtp_on) {
        int rc = sfu_srtp_protect(T[s->tidx].tx, buf, len, BUF_SIZE);
        if (rc != SFU_SRTP_OK) {
            fprintf(stderr, "loadgen: protect: %s\n", sfu_srtp_strerror(rc));
            exit(3);
        }
    }
}

static void *sender(void *arg) {
    (void)arg;
    static uint8_t bufs[TX_BATCH][BUF_SIZE];
    struct mmsghdr msgs[TX_BATCH];
    struct iovec iov[TX_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < TX_BATCH; i++) {
        iov[i].iov_base = bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    for (;;) {
        pthread_mutex_lock(&s_mu);
        while (s_state == S_IDLE || s_state == S_STOP) pthread_cond_wait(&s_cv, &s_mu);
        int state = s_state;
        double vpps = s_video_pps;
        pthread_mutex_unlock(&s_mu);
        if (state == S_EXIT) return NULL;
        for (int i = 0; i < P->n_streams; i++) S[i].sent_trial = 0;
        uint64_t t0 = plan_now_ns();
        uint64_t next = t0;
        uint64_t el = 0;
        while (__atomic_load_n(&s_state, __ATOMIC_ACQUIRE) == S_RUN) {
            uint64_t now = plan_now_ns();
            el = now - t0;
            for (int t = 0; t < P->n_transports; t++) {
                lg_transport *tr = &T[t];
                int n = 0;
                for (int k = 0; k < tr->n_pub; k++) {
                    pub_stream *s = &S[tr->pub[k]];
                    double rate = s->video ? vpps : AUDIO_PPS;
                    uint64_t due = (uint64_t)((double)el * rate / 1e9) + 1;
                    while (s->sent_trial < due) {
                        size_t len;
                        build(s, bufs[n], &len, el);
                        iov[n].iov_len = len;
                        s->sent_trial++;
                        if (++n == TX_BATCH) {
                            send_batch(tr->fd, msgs, n);
                            n = 0;
                        }
                    }
                }
                if (n) send_batch(tr->fd, msgs, n);
            }
            next += tick_ns;
            now = plan_now_ns();
            if (next <= now) {
                bump(&s_behind_ticks, 1);
                next = now;
            } else {
                struct timespec ts = {(time_t)(next / 1000000000u), (long)(next % 1000000000u)};
                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
                }
            }
        }
        pthread_mutex_lock(&s_mu);
        s_elapsed_ns = el;
        if (s_state == S_STOP) s_state = S_IDLE;
        pthread_cond_broadcast(&s_cv);
        pthread_mutex_unlock(&s_mu);
    }
}

/* ---------------------------------------------------------------- receivers */

static void on_packet(rx_thread *rx, int tidx, uint8_t *buf, size_t len, int64_t rx_real) {
    if (len < 12) {
        bump(&rx->unknown, 1);
        return;
    }
    int i = ssrc_lookup(get32(buf + 8));
    if (i < 0 || U[i].tidx != tidx) {
        bump(&rx->unknown, 1);
        return;
    }
    sub_stream *u = &U[i];
    uint16_t seq = (uint16_t)(buf[2] << 8 | buf[3]);
    if (!u->have) {
        u->have = 1;
        u->next_seq = (uint16_t)(seq + 1);
    } else {
        int16_t d = (int16_t)(seq - u->next_seq);
        if (d >= 0) {
            if (d) bump(&rx->gaps, (uint64_t)d);
            u->next_seq = (uint16_t)(seq + 1);
        } else {
            bump(&rx->late, 1);
        }
    }
    bump(&rx->received, 1);
    if (u->until_sample > 1) {
        u->until_sample--;
        return;
    }
    u->until_sample = sample_every;
    static __thread uint8_t scratch[BUF_SIZE];
    memcpy(scratch, buf, len);
    if (srtp_on) {
        int rc = sfu_srtp_unprotect(T[tidx].rx, scratch, &len);
        if (rc == SFU_SRTP_ERR_REPLAY_OLD || rc == SFU_SRTP_ERR_REPLAY_DUP) {
            bump(&rx->replayed, 1);
            return;
        }
        if (rc != SFU_SRTP_OK) {
            bump(&rx->auth_failures, 1);
            return;
        }
    }
    if (len < 32 || get32(scratch + 12) != MAGIC) {
        bump(&rx->bad_payload, 1);
        return;
    }
    uint64_t sent = get64le(scratch + 16);
    pthread_mutex_lock(&rx->mu);
    if (rx->recording && rx->n_lat < LAT_CAP) {
        int64_t rx_mono = rx_real - rx->clock_offset;
        rx->lat[rx->n_lat++] = rx_mono - (int64_t)sent;
    }
    pthread_mutex_unlock(&rx->mu);
}

static void *receiver(void *arg) {
    rx_thread *rx = arg;
    static __thread uint8_t bufs[RX_BATCH][BUF_SIZE];
    static __thread char ctrl[RX_BATCH][CMSG_SPACE(sizeof(struct timespec))];
    struct mmsghdr msgs[RX_BATCH];
    struct iovec iov[RX_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < RX_BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = BUF_SIZE;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct epoll_event evs[64];
    for (;;) {
        /* Polling (timeout 0, then a short sleep) rather than blocking in epoll_wait: with no
         * waiter, the server's sends do not have to wake this thread (a cross-CPU wake-up the
         * server would pay for, which a remote client would not cost it). The kernel receive
         * timestamp keeps the delay exact whatever the polling period. */
        int ne = epoll_wait(rx->epfd, evs, 64, poll_ns ? 0 : 200);
        if (ne == 0 && poll_ns) {
            /* between trials, poll slowly: an idle generator should cost nothing */
            sleep_ns(__atomic_load_n(&trial_active, __ATOMIC_RELAXED) ? poll_ns : IDLE_POLL_NS);
            continue;
        }
        for (int e = 0; e < ne; e++) {
            int tidx = (int)evs[e].data.u32;
            int fd = T[tidx].fd;
            for (;;) {
                for (int i = 0; i < RX_BATCH; i++) {
                    msgs[i].msg_hdr.msg_control = ctrl[i];
                    msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i];
                }
                int n = recvmmsg(fd, msgs, RX_BATCH, MSG_DONTWAIT, NULL);
                if (n <= 0) break;
                struct timespec now;
                clock_gettime(CLOCK_REALTIME, &now);
                int64_t fallback = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
                for (int i = 0; i < n; i++) {
                    int64_t t = fallback;
                    struct msghdr *h = &msgs[i].msg_hdr;
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                            struct timespec ts;
                            memcpy(&ts, CMSG_DATA(c), sizeof ts);
                            t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
                        }
                    }
                    on_packet(rx, tidx, bufs[i], msgs[i].msg_len, t);
                }
                if (n < RX_BATCH) break;
            }
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- control */

typedef struct {
    uint64_t received, gaps, late, auth_failures, replayed, unknown, bad_payload;
} rx_totals;

static rx_totals totals(void) {
    rx_totals t = {0};
    for (int i = 0; i < n_rx; i++) {
        t.received += load(&RX[i].received);
        t.gaps += load(&RX[i].gaps);
        t.late += load(&RX[i].late);
        t.auth_failures += load(&RX[i].auth_failures);
        t.replayed += load(&RX[i].replayed);
        t.unknown += load(&RX[i].unknown);
        t.bad_payload += load(&RX[i].bad_payload);
    }
    return t;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(const int64_t *v, size_t n, double q) {
    if (n == 0) return -1.0;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0;
}

static void trial(double vpps, double seconds, double grace_ms) {
    __atomic_store_n(&trial_active, 1, __ATOMIC_RELAXED);
    rx_totals base = totals();
    int64_t off = clock_offset();
    for (int i = 0; i < n_rx; i++) {
        pthread_mutex_lock(&RX[i].mu);
        RX[i].n_lat = 0;
        RX[i].recording = 1;
        RX[i].clock_offset = off;
        pthread_mutex_unlock(&RX[i].mu);
    }
    uint64_t errors0 = load(&s_send_errors);
    uint64_t behind0 = load(&s_behind_ticks);
    double cpu0 = cpu_seconds();

    pthread_mutex_lock(&s_mu);
    s_video_pps = vpps;
    __atomic_store_n(&s_state, S_RUN, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&s_cv);
    pthread_mutex_unlock(&s_mu);
    printf("{\"event\": \"started\"}\n");
    fflush(stdout);

    sleep_ns((uint64_t)(seconds * 1e9));
    pthread_mutex_lock(&s_mu);
    __atomic_store_n(&s_state, S_STOP, __ATOMIC_RELEASE);
    while (s_state != S_IDLE) pthread_cond_wait(&s_cv, &s_mu);
    double elapsed = (double)s_elapsed_ns / 1e9;
    pthread_mutex_unlock(&s_mu);

    sleep_ns((uint64_t)(grace_ms * 1e6));
    rx_totals on_time = totals();
    /* drain: wait until nothing has arrived for 50 ms (at most 3 s) */
    uint64_t last = on_time.received;
    int still = 0;
    for (int i = 0; i < 300 && still < 5; i++) {
        sleep_ns(10000000);
        uint64_t r = totals().received;
        still = r == last ? still + 1 : 0;
        last = r;
    }
    rx_totals end = totals();
    double cpu1 = cpu_seconds();
    __atomic_store_n(&trial_active, 0, __ATOMIC_RELAXED);

    size_t n_lat = 0;
    for (int i = 0; i < n_rx; i++) n_lat += RX[i].n_lat;
    int64_t *lat = malloc((n_lat + 1) * sizeof *lat);
    size_t k = 0;
    for (int i = 0; i < n_rx; i++) {
        pthread_mutex_lock(&RX[i].mu);
        RX[i].recording = 0;
        memcpy(lat + k, RX[i].lat, RX[i].n_lat * sizeof *lat);
        k += RX[i].n_lat;
        pthread_mutex_unlock(&RX[i].mu);
    }
    n_lat = k;
    qsort(lat, n_lat, sizeof *lat, cmp_i64);

    uint64_t sent = 0, expected = 0;
    for (int i = 0; i < P->n_streams; i++) {
        sent += S[i].sent_trial;
        expected += S[i].sent_trial * (uint64_t)S[i].consumers;
    }
    printf("{\"video_pps\": %.3f, \"seconds\": %.6f, \"sent\": %llu, \"expected\": %llu, "
           "\"received_on_time\": %llu, \"received\": %llu, \"gaps\": %llu, \"late\": %llu, "
           "\"auth_failures\": %llu, \"replayed\": %llu, \"unknown\": %llu, \"bad_payload\": %llu, "
           "\"send_errors\": %llu, \"behind_ticks\": %llu, \"loadgen_cpu_s\": %.6f, "
           "\"samples\": %zu, \"p50_us\": %.3f, \"p90_us\": %.3f, \"p99_us\": %.3f, "
           "\"p999_us\": %.3f, \"max_us\": %.3f}\n",
           vpps, elapsed, (unsigned long long)sent, (unsigned long long)expected,
           (unsigned long long)(on_time.received - base.received),
           (unsigned long long)(end.received - base.received),
           (unsigned long long)(end.gaps - base.gaps), (unsigned long long)(end.late - base.late),
           (unsigned long long)(end.auth_failures - base.auth_failures),
           (unsigned long long)(end.replayed - base.replayed),
           (unsigned long long)(end.unknown - base.unknown),
           (unsigned long long)(end.bad_payload - base.bad_payload),
           (unsigned long long)(load(&s_send_errors) - errors0),
           (unsigned long long)(load(&s_behind_ticks) - behind0), cpu1 - cpu0, n_lat,
           pct_us(lat, n_lat, 0.50), pct_us(lat, n_lat, 0.90), pct_us(lat, n_lat, 0.99),
           pct_us(lat, n_lat, 0.999), n_lat ? (double)lat[n_lat - 1] / 1000.0 : -1.0);
    fflush(stdout);
    free(lat);
}

/* ---------------------------------------------------------------- setup */

static int open_socket(int port, const struct sockaddr_in *server) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) return -1;
    int size = 4 << 20, on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, P->load_ip, &a.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        connect(fd, (const struct sockaddr *)server, sizeof *server) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void templates(void) {
    memset(video_tpl, 0xA5, sizeof video_tpl);
    memset(audio_tpl, 0x5A, sizeof audio_tpl);
    video_tpl[0] = 0x80;
    video_tpl[1] = 96;
    audio_tpl[0] = 0x80;
    audio_tpl[1] = 111;
}

static int setup(void) {
    srtp_on = P->profile != 0;
    T = calloc((size_t)P->n_transports, sizeof *T);
    S = calloc((size_t)P->n_streams + 1, sizeof *S);
    U = calloc((size_t)P->n_consumers + 1, sizeof *U);
    if (!T || !S || !U) return -1;
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)P->server_port)};
    if (inet_pton(AF_INET, P->server_ip, &server.sin_addr) != 1) return -1;
    for (int i = 0; i < P->n_transports; i++) {
        const plan_transport *pt = &P->transports[i];
        T[i].fd = open_socket(pt->port, &server);
        if (T[i].fd < 0) {
            perror("loadgen: socket");
            return -1;
        }
        if (srtp_on) {
            T[i].tx = sfu_srtp_ctx_new(P->profile, pt->up_key, pt->up_salt, SFU_SRTP_OUTBOUND);
            T[i].rx = sfu_srtp_ctx_new(P->profile, pt->down_key, pt->down_salt, SFU_SRTP_INBOUND);
            if (!T[i].tx || !T[i].rx) return -1;
        }
    }
    for (int i = 0; i < P->n_streams; i++) {
        const plan_stream *ps = &P->streams[i];
        S[i] = (pub_stream){.tidx = ps->tidx,
                            .ssrc = ps->ssrc,
                            .video = ps->kind == PLAN_KIND_VIDEO,
                            .consumers = ps->consumers,
                            .seq = (uint16_t)(ps->ssrc * 7u)};
        T[ps->tidx].pub[T[ps->tidx].n_pub++] = i;
    }
    memset(ssrc_table, 0xFF, sizeof ssrc_table);
    for (int i = 0; i < P->n_consumers; i++) {
        const plan_consumer *pc = &P->consumers[i];
        U[i] = (sub_stream){.ssrc = pc->dst_ssrc, .tidx = pc->dst_tidx, .until_sample = 1 + (uint32_t)i % sample_every};
        ssrc_insert(pc->dst_ssrc, i);
        n_sub++;
    }
    for (int r = 0; r < n_rx; r++) {
        RX[r].epfd = epoll_create1(0);
        RX[r].lat = malloc(LAT_CAP * sizeof(int64_t));
        pthread_mutex_init(&RX[r].mu, NULL);
        if (RX[r].epfd < 0 || !RX[r].lat) return -1;
    }
    /* every transport that receives goes to a receiver thread, round robin */
    int next = 0;
    for (int i = 0; i < P->n_transports; i++) {
        int receives = 0;
        for (int c = 0; c < P->n_consumers && !receives; c++) receives = P->consumers[c].dst_tidx == i;
        if (!receives) continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(RX[next].epfd, EPOLL_CTL_ADD, T[i].fd, &ev) != 0) return -1;
        next = (next + 1) % n_rx;
    }
    templates();
    return 0;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-r") == 0 && i + 1 < argc)
            n_rx = atoi(argv[++i]);
        else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            sample_every = (uint32_t)atoi(argv[++i]);
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            tick_ns = (uint64_t)atoi(argv[++i]) * 1000u;
        else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
            poll_ns = (uint64_t)atoi(argv[++i]) * 1000u;
        else
            path = argv[i];
    }
    if (!path || n_rx < 1 || n_rx > MAX_RX_THREADS || sample_every < 1 || tick_ns < 1000) {
        fprintf(stderr, "usage: %s PLAN [-r RX_THREADS] [-s SAMPLE] [-t TICK_US] [-p POLL_US]\n",
                argv[0]);
        return 2;
    }
    P = calloc(1, sizeof *P);
    if (!P || plan_load(P, path) != 0 || setup() != 0) {
        fprintf(stderr, "loadgen: cannot set up from %s\n", path);
        return 2;
    }
    pthread_t tx;
    pthread_create(&tx, NULL, sender, NULL);
    for (int r = 0; r < n_rx; r++) pthread_create(&RX[r].th, NULL, receiver, &RX[r]);
    printf("{\"ready\": true, \"pid\": %d, \"transports\": %d, \"streams\": %d, \"consumers\": %d}\n",
           (int)getpid(), P->n_transports, P->n_streams, n_sub);
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        double v, s, g;
        if (sscanf(line, "trial %lf %lf %lf", &v, &s, &g) == 3) {
            trial(v, s, g);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            printf("{\"error\": \"unknown command\"}\n");
            fflush(stdout);
        }
    }
    _exit(0);
}
