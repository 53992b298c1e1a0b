/*
 * The bench plan, shared by the load generator (loadgen.c) and the floor (floor.c).
 *
 * The runner (sfu/bench/plan.py) writes one plan per scenario and profile; the engine-side bench
 * server reads the same file, so every process agrees on ports, SSRCs and SRTP keys. Text, one
 * record per line, fields separated by spaces ("#" starts a comment):
 *
 *   profile P                  0 = plain RTP (floor only), 1 = AES_CM_128_HMAC_SHA1_80, 7 = GCM
 *   server IP PORT             the one UDP port of the server
 *   load IP                    the load side's address (every transport has its own port on it)
 *   transport TID PORT UPKEY UPSALT DOWNKEY DOWNSALT
 *                              up = load -> server (server unprotects), down = server -> load
 *   stream TID SSRC KIND       a publisher stream on transport TID (KIND: video | audio)
 *   consumer CID SRC_TID SRC_SSRC DST_TID DST_SSRC KIND
 *
 * Keys and salts are hex. DST_SSRC values are unique in a plan.
 */
#ifndef SFU_BENCH_PLAN_H
#define SFU_BENCH_PLAN_H

#include <stddef.h>
#include <stdint.h>

#define PLAN_MAX_TRANSPORTS 1024
#define PLAN_MAX_STREAMS 256
#define PLAN_MAX_CONSUMERS 8192

#define PLAN_KIND_VIDEO 1
#define PLAN_KIND_AUDIO 2

typedef struct {
    int64_t tid;
    int port;
    uint8_t up_key[16];
    uint8_t up_salt[14];
    uint8_t down_key[16];
    uint8_t down_salt[14];
} plan_transport;

typedef struct {
    int tidx; /* index into transports */
    uint32_t ssrc;
    int kind;
    int consumers; /* how many consumers read this stream */
} plan_stream;

typedef struct {
    int64_t cid;
    int src_tidx;
    uint32_t src_ssrc;
    int dst_tidx;
    uint32_t dst_ssrc;
    int kind;
} plan_consumer;

typedef struct {
    int profile;
    char server_ip[64];
    int server_port;
    char load_ip[64];
    int n_transports;
    int n_streams;
    int n_consumers;
    plan_transport transports[PLAN_MAX_TRANSPORTS];
    plan_stream streams[PLAN_MAX_STREAMS];
    plan_consumer consumers[PLAN_MAX_CONSUMERS];
} plan;

/* Parse a plan file; returns 0, or -1 after printing the problem to stderr. */
int plan_load(plan *p, const char *path);

/* Index of a transport by id, -1 if absent. */
int plan_transport_index(const plan *p, int64_t tid);

/* Salt length of the plan's profile (14 for AES-CM and plain, 12 for GCM). */
size_t plan_salt_len(const plan *p);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t plan_now_ns(void);

#endif /* SFU_BENCH_PLAN_H */
