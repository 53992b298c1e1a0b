/*
 * Internal state of the forwarding engine, shared by engine.c (tables, control API) and
 * loop.c (the data path). Everything here is guarded by sfu_engine.lock unless noted.
 */
#ifndef SFU_ENGINE_ENGINE_INT_H
#define SFU_ENGINE_ENGINE_INT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "engine.h"
#include "hmap.h"
#include "srtp.h"

/* Output slot: ChannelData header room, the largest datagram, the SRTP trailer, rounded up. */
#define OUT_HEADROOM 4u
#define OUT_BUF_SIZE 2112u
#define CACHE_SLOT_MIN 1280u
#define DEFAULT_CLOCK_RATE 90000u
#define ENGINE_WAKE_TAG UINT64_MAX /* epoll data of the wake-up eventfd */

typedef struct consumer consumer;

/* One plaintext packet of a producer's NACK ring. */
typedef struct {
    uint32_t serial; /* 0: empty */
    uint32_t len;
    uint32_t cap;
    uint8_t *data;
} cache_slot;

/* What a consumer sent under one output sequence number (NACK log). */
typedef struct {
    uint32_t serial; /* producer ring serial; 0: nothing */
    uint32_t out_ts;
    uint16_t out_seq;
    uint8_t out_pt;
    uint8_t gen; /* the consumer's source generation it came from (consumer.gen); 0: nothing */
} log_entry;

/* An inbound stream, keyed by (transport id, SSRC): producer, statistics, route, NACK ring. */
typedef struct istream {
    int64_t transport_id;
    uint32_t ssrc;
    int has_producer;
    int announced; /* reported as a STREAM control entry */
    int has_stats; /* listed in the transport (inbound statistics) */
    uint32_t refs; /* consumers whose previous source (prev_src) this is */
    uint32_t clock_rate;
    uint32_t producer_cache;
    struct istream *next_in_transport;
    /* statistics (RFC 3550 A.1 / A.8) */
    uint64_t packets;
    uint64_t bytes;
    int64_t highest_seq;
    int64_t base_seq;
    int64_t lost;
    double jitter;
    int have_prev;
    int64_t prev_arrival;
    uint32_t prev_ts;
    /* consumers, in the order they were added; also those waiting to switch to this stream */
    consumer **cons;
    uint32_t ncons;
    uint32_t capcons;
    /* NACK ring */
    cache_slot *ring;
    uint32_t ring_size;
    uint32_t serial;
} istream;

/* An outbound stream (transport, SSRC): statistics and the continuity state shared by every
 * consumer writing this SSRC, so that a source switch or a pause continues the sequence. */
typedef struct ostream {
    uint32_t ssrc;
    uint32_t last_rtp_ts;
    uint64_t packets;
    uint64_t bytes;
    double last_send_time;
    uint64_t retransmitted;
    int64_t last_out_seq; /* -1: nothing sent yet */
    uint32_t last_out_ts;
    double last_out_time;
    struct ostream *next;
} ostream;

typedef struct transport {
    int64_t id;
    sfu_srtp_ctx *rx;
    sfu_srtp_ctx *tx;
    int has_dest;
    int dest_socket;
    int has_relay;
    uint16_t channel;
    struct sockaddr_storage dest_sa; /* the peer, or the TURN server when relayed */
    socklen_t dest_salen;
    sfu_transport_counters c;
    istream *in_head;
    istream *in_tail;
    ostream *out_head;
    ostream *out_tail;
    int ingest;           /* an ingest transport (sfu_engine_add_ingest) */
    uint32_t ingest_ssrc; /* the SSRC its RTP gets */
    int has_sender;
    uint32_t sender_ssrc; /* the last SSRC its sender used */
    int sdes_ext[3];      /* MID, RID, repaired RID extension ids (sfu_engine_expect_rids) */
    int expect_rids;
    uint32_t stream_reports; /* STREAM reports left */
} transport;

struct consumer {
    int64_t id;
    int64_t src_transport;
    int64_t dst_transport;
    uint32_t src_ssrc;
    uint32_t dst_ssrc;
    uint32_t clock_rate;
    uint32_t cache_size;
    uint8_t pt_map[128];
    int gate;    /* SFU_GATE_* */
    int waiting; /* gate closed until a keyframe starts */
    int paused;
    int synced;
    uint16_t seq_offset;
    uint32_t ts_offset;
    transport *dst;
    ostream *out;
    istream *src;
    log_entry *log;
    /* source switch: the pending target (listed in target->cons too), taken at its keyframe */
    istream *target;
    uint32_t target_clock;
    /* the source before the last switch, so that NACKs of what it sent are still served */
    istream *prev_src;
    uint8_t gen; /* generation of src in the NACK log (1..255) */
    uint8_t prev_gen;
};

typedef struct {
    int id; /* 0: free */
    int fd;
    int family;
    int64_t ingest; /* transport owning every datagram of the socket; 0: none */
} esock;

typedef struct {
    int fd;
    socklen_t salen;
    size_t len;
    uint8_t *buf;  /* the slot's own OUT_BUF_SIZE bytes */
    uint8_t *data; /* what to send: buf + OUT_HEADROOM, or buf when ChannelData-wrapped */
    struct sockaddr_storage sa;
} outslot;

/* Keys (zero-filled before use). */
typedef struct {
    int64_t socket_id;
    sfu_addr addr;
} bind_key;

typedef struct {
    int64_t socket_id;
    sfu_addr server;
    int64_t channel;
} chan_key;

typedef struct {
    int64_t transport_id;
    int64_t ssrc;
} stream_key;

typedef struct {
    sfu_addr peer;
} chan_bind;

struct sfu_engine {
    pthread_mutex_t lock;
    pthread_cond_t idle; /* signalled when busy drops to 0 */
    int busy;            /* the loop is sending with the lock released */
    atomic_int stopping;
    int epfd;
    int wakefd;
    int ctlfd;
    esock socks[SFU_ENGINE_MAX_SOCKETS];
    int next_socket_id;

    sfu_hmap transports; /* int64 id -> transport* */
    sfu_hmap consumers;  /* int64 id -> consumer* */
    sfu_hmap streams;    /* stream_key -> istream* */
    sfu_hmap bindings;   /* bind_key -> transport* */
    sfu_hmap channels;   /* chan_key -> chan_bind* */

    sfu_engine_counters c; /* control_* fields unused: see ctl_delivered / ctl_dropped */

    /* receive batch (loop thread) */
    struct mmsghdr *rmsg;
    struct iovec *riov;
    struct sockaddr_storage *rsa;
    uint8_t *rbuf;

    /* send queue (loop thread) */
    outslot *out;
    struct mmsghdr *omsg;
    struct iovec *oiov;
    uint8_t *obuf;
    int nout;
    int ctl_new; /* control entries pushed since the last signal */

    /* scratch buffer for the control API (under lock) */
    uint8_t *scratch;

    /* control queue */
    pthread_mutex_t ctl_lock;
    sfu_ctl_entry *ctl;
    size_t ctl_head;
    size_t ctl_count;
    uint64_t ctl_delivered;
    uint64_t ctl_dropped;
};

/* engine.c */
esock *engine_socket(sfu_engine *e, int socket_id);
transport *engine_binding(sfu_engine *e, int socket_id, const sfu_addr *addr);
const chan_bind *engine_channel(sfu_engine *e, int socket_id, const sfu_addr *server,
                                uint16_t channel);
istream *engine_stream(sfu_engine *e, int64_t transport_id, uint32_t ssrc, int create);
void engine_stream_track(transport *t, istream *s);
int addr_from_sockaddr(sfu_addr *a, const struct sockaddr *sa);
socklen_t addr_to_sockaddr(const sfu_addr *a, struct sockaddr_storage *ss);
double engine_now(void);

/* Move a consumer to its target (lock held): it leaves its source's list, stays in the
 * target's, and continues its output from there (loop.c calls it at the target's keyframe). */
void engine_complete_switch(sfu_engine *e, consumer *c);

/* loop.c: send one protected packet to the transport's destination, wrapped as ChannelData
 * when relayed (data needs OUT_HEADROOM writable bytes before it); lock held; 1 if sent. */
int engine_send_to_dest(sfu_engine *e, transport *t, uint8_t *data, size_t len);

#endif /* SFU_ENGINE_ENGINE_INT_H */
