/*
 * The forwarding engine in C: sockets, routing tables, and the receive / unprotect / fan-out /
 * protect / send loop of sfu.engine.cengine.CEngine (same behaviour as sfu.engine.pyengine).
 *
 * Threads. sfu_engine_run() is the loop; it runs in one thread (which holds no GIL) until
 * sfu_engine_request_stop(). Every other function may be called from any one other thread
 * (the event loop). One mutex guards the tables, SRTP contexts and counters: the loop holds it
 * while it receives and processes a batch, and releases it while sendmmsg() runs, marking itself
 * "busy" so that sfu_engine_close_socket() waits before it closes a descriptor still in use.
 * Control datagrams (STUN, DTLS, TURN, decrypted RTCP) go into a bounded queue (drop and count
 * when full) guarded by a second mutex; sfu_engine_ctl_fd() becomes readable when it has entries.
 *
 * Memory. Buffers are allocated once per engine; tables allocate only when a transport, stream,
 * consumer or binding is added (or a new SSRC shows up on a bound transport). Nothing is
 * allocated per packet once NACK cache slots have been filled once.
 *
 * NACK cache. Per producer, not per consumer: each producer with a consumer asking for a cache
 * keeps the last N plaintext packets (N = the largest consumer cache_size, at least the
 * producer's own), and each consumer keeps, per output sequence number, a 12-byte reference
 * (producer serial, output timestamp and payload type). retransmit() rebuilds the packet and
 * protects it again with the same index (allow_repeat_tx gives the same bytes). So a subscriber
 * costs 12 bytes per cached packet instead of a full protected copy (512 x ~1.2 kB = 600 kB),
 * which keeps a video subscriber well under 64 KiB; the publisher pays for one plaintext copy.
 * Limit: a packet more than SFU_SRTP_REPLAY_WINDOW (128) indices behind the newest one sent on
 * that SSRC cannot be protected again (libsrtp's sender replay check) and is reported not found.
 * After a source switch (sfu_engine_switch_consumer) the log serves what was sent from the
 * current source and from the one before the last switch (entries carry a source generation).
 *
 * Return codes are 0 or a negative errno (-ENOMEM, -EEXIST, -ENOENT, -EINVAL, -EMFILE, -EBADF).
 */
#ifndef SFU_ENGINE_ENGINE_H
#define SFU_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SFU_ENGINE_RECV_SIZE 2048 /* largest datagram kept (longer ones are truncated) */
#define SFU_ENGINE_BATCH 64       /* datagrams per recvmmsg */
#define SFU_ENGINE_OUT_SLOTS 1024 /* protected packets queued for sendmmsg */
#define SFU_ENGINE_CTL_CAP 1024   /* control datagrams waiting for Python */
#define SFU_ENGINE_MAX_SOCKETS 4096 /* port-range mode: one socket per transport and family */

/* Keyframe gates of a consumer (sfu.engine.base.KEYFRAME_CODECS, in order). */
#define SFU_GATE_NONE 0
#define SFU_GATE_VP8 1
#define SFU_GATE_VP9 2
#define SFU_GATE_H264 3

/* Values of sfu.engine.base.ControlKind. */
#define SFU_CTL_STUN 1
#define SFU_CTL_DTLS 2
#define SFU_CTL_RTCP 3
#define SFU_CTL_TURN 4
#define SFU_CTL_STREAM 5 /* a new SSRC announced by its MID/RID header extensions */

/* STREAM reports a transport may make per sfu_engine_expect_rids call (a flood of new SSRCs
 * cannot fill the control queue). */
#define SFU_ENGINE_STREAM_REPORTS 32

typedef struct sfu_engine sfu_engine;

/* A normalized UDP address: the key of bindings (zero-filled, no padding). */
typedef struct {
    uint16_t family; /* AF_INET or AF_INET6 */
    uint16_t port;   /* host byte order */
    uint32_t scope;  /* IPv6 scope id */
    uint8_t ip[16];  /* IPv4: first 4 bytes */
} sfu_addr;

typedef struct {
    int kind; /* SFU_CTL_* */
    int socket_id;
    int has_relay;
    uint32_t len;
    int64_t transport_id; /* 0: not bound */
    sfu_addr addr;
    sfu_addr relay;
    uint8_t data[SFU_ENGINE_RECV_SIZE];
} sfu_ctl_entry;

typedef struct {
    uint64_t datagrams_in;
    uint64_t datagrams_out;
    uint64_t dropped_unknown;
    uint64_t control_delivered;
    uint64_t control_dropped; /* control queue full */
    uint64_t send_errors;     /* sendmmsg/sendto failures other than "peer unreachable" */
} sfu_engine_counters;

typedef struct {
    uint64_t packets_in;
    uint64_t bytes_in;
    uint64_t packets_out;
    uint64_t bytes_out;
    uint64_t rtcp_in;
    uint64_t rtcp_out;
    uint64_t srtp_errors;
    uint64_t unrouted;
} sfu_transport_counters;

typedef struct {
    uint32_t ssrc;
    uint32_t last_rtp_ts;
    uint64_t packets;
    uint64_t bytes;
    int64_t highest_seq;
    int64_t base_seq;
    int64_t lost;
    double jitter;
    double last_send_time;
    uint64_t retransmitted;
} sfu_stream_counters;

typedef struct {
    int64_t consumer_id;
    int64_t src_transport;
    int64_t dst_transport;
    uint32_t src_ssrc;
    uint32_t dst_ssrc;
    uint32_t clock_rate;
    uint32_t cache_size;
    uint8_t pt_map[128]; /* out PT per in PT */
    int keyframe_gate;   /* SFU_GATE_*: nothing forwarded until a keyframe starts */
} sfu_consumer_spec;

/* Addresses: numeric host ("1.2.3.4", "::1", "fe80::1%eth0" or "%3") and port. */
int sfu_addr_parse(sfu_addr *out, const char *host, long port);
/* Writes the host part (no port) NUL-terminated; cap >= 64 is always enough. */
int sfu_addr_format(const sfu_addr *a, char *buf, size_t cap);

sfu_engine *sfu_engine_new(void);
/* Closes every descriptor still open and frees everything (the loop must have returned). */
void sfu_engine_free(sfu_engine *e);

/* The loop: returns 0 after sfu_engine_request_stop(), -errno if epoll fails. */
int sfu_engine_run(sfu_engine *e);
void sfu_engine_request_stop(sfu_engine *e);
/* After the loop returned: close the sockets, epoll and wake-up descriptors (the control
 * eventfd stays open until sfu_engine_free). Idempotent. */
void sfu_engine_shutdown(sfu_engine *e);

/* Takes ownership of a bound, non-blocking UDP socket; returns its id (> 0) or -errno. */
int sfu_engine_add_socket(sfu_engine *e, int fd, int family);
int sfu_engine_close_socket(sfu_engine *e, int socket_id);
/* Raw datagram; returns 1 if sent, 0 if not (unknown socket, send error). */
int sfu_engine_send(sfu_engine *e, int socket_id, const sfu_addr *to, const uint8_t *data,
                    size_t len);

int sfu_engine_bind(sfu_engine *e, int64_t transport_id, int socket_id, const sfu_addr *addr);
/* relay NULL: direct; else ChannelData on `channel` to the TURN server `relay`. */
int sfu_engine_set_destination(sfu_engine *e, int64_t transport_id, int socket_id,
                               const sfu_addr *addr, const sfu_addr *relay, int channel);
int sfu_engine_bind_channel(sfu_engine *e, int socket_id, const sfu_addr *server, int channel,
                            const sfu_addr *peer);
int sfu_engine_unbind_channel(sfu_engine *e, int socket_id, const sfu_addr *server,
                              int channel);
/* profile: SFU_SRTP_PROFILE_*; local keys protect, remote keys unprotect. */
int sfu_engine_set_srtp(sfu_engine *e, int64_t transport_id, int profile,
                        const uint8_t *local_key, const uint8_t *local_salt,
                        const uint8_t *remote_key, const uint8_t *remote_salt);
int sfu_engine_remove_transport(sfu_engine *e, int64_t transport_id);
/*
 * Ingest (streaming mountpoints): every datagram on `socket_id` belongs to the transport,
 * whatever its source address. RTP is plain unless sfu_engine_set_srtp gave the transport keys
 * (SDES); its SSRC is rewritten to `ssrc`, and a change of the sender's own SSRC re-synchronises
 * the stream's consumers. RTCP is counted and dropped, anything else counted as unknown.
 * sfu_engine_remove_transport undoes it. -ENOENT: unknown socket.
 */
int sfu_engine_add_ingest(sfu_engine *e, int64_t transport_id, int socket_id, uint32_t ssrc);
/*
 * Unannounced streams (simulcast with RID, RFC 8852): once called, an unprotected RTP packet
 * of the transport whose SSRC has no producer and was not reported yet is looked at for the
 * header extensions with these ids (RFC 8285, one- or two-byte form; 0 = not negotiated).
 * If it carries a MID, RID or repaired RID, one SFU_CTL_STREAM entry is queued for the SSRC
 * (data: SSRC (4, network order), then MID, RID and repaired RID each as a length byte and
 * that many bytes). At most SFU_ENGINE_STREAM_REPORTS per call; calling again re-arms.
 */
int sfu_engine_expect_rids(sfu_engine *e, int64_t transport_id, int mid_id, int rid_id,
                           int rrid_id);

int sfu_engine_add_producer(sfu_engine *e, int64_t transport_id, uint32_t ssrc,
                            uint32_t clock_rate, uint32_t cache_size);
int sfu_engine_remove_producer(sfu_engine *e, int64_t transport_id, uint32_t ssrc);
int sfu_engine_add_consumer(sfu_engine *e, const sfu_consumer_spec *spec);
int sfu_engine_remove_consumer(sfu_engine *e, int64_t consumer_id);
int sfu_engine_pause_consumer(sfu_engine *e, int64_t consumer_id, int paused);
/*
 * Source switch: the consumer keeps forwarding its source until a packet of (src_transport,
 * src_ssrc) starts a keyframe of its gate codec while it can be forwarded (not paused, the
 * destination ready); from that packet on it forwards the new source (output continuity kept,
 * clock_rate taken). A new call replaces the target; the current source cancels; removing
 * the target's producer or transport cancels. Without a gate codec: at once. -ENOENT: unknown.
 */
int sfu_engine_switch_consumer(sfu_engine *e, int64_t consumer_id, int64_t src_transport,
                               uint32_t src_ssrc, uint32_t clock_rate);
/* The (transport, SSRC) the consumer forwards now; -ENOENT: unknown consumer. */
int sfu_engine_consumer_source(sfu_engine *e, int64_t consumer_id, int64_t *src_transport,
                               uint32_t *src_ssrc);

int sfu_engine_send_rtcp(sfu_engine *e, int64_t transport_id, const uint8_t *data, size_t len);
/* Returns how many of the (output) sequence numbers were found and resent. */
int sfu_engine_retransmit(sfu_engine *e, int64_t consumer_id, const uint16_t *seqs, size_t n);

void sfu_engine_get_counters(sfu_engine *e, sfu_engine_counters *out);
/*
 * Copies one transport's counters and up to *_cap stream counters of each direction; *in_n and
 * *out_n receive the full counts (call again with more room if larger). -ENOENT if unknown.
 */
int sfu_engine_transport_stats(sfu_engine *e, int64_t transport_id, sfu_transport_counters *t,
                               sfu_stream_counters *in, size_t in_cap, size_t *in_n,
                               sfu_stream_counters *out, size_t out_cap, size_t *out_n);

/* Control queue: readable fd (eventfd; read it to re-arm), then take / read / release. */
int sfu_engine_ctl_fd(const sfu_engine *e);
void sfu_engine_ctl_clear_fd(sfu_engine *e);
/* Number of entries available; *first is the index of the first one. */
size_t sfu_engine_ctl_take(sfu_engine *e, size_t *first);
const sfu_ctl_entry *sfu_engine_ctl_entry(const sfu_engine *e, size_t index);
void sfu_engine_ctl_release(sfu_engine *e, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* SFU_ENGINE_ENGINE_H */
