/*
 * The forwarding engine's data path (see engine.h): epoll over the sockets, recvmmsg batches,
 * RFC 7983 demux, SRTP unprotect, statistics, fan-out with header rewriting, SRTP protect into
 * the send queue, sendmmsg. Control datagrams are copied to the control queue.
 */
#include "engine_int.h"
#include "packet.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MAX_EVENTS 16
#define ROUNDS 4 /* recv batches per socket before the others get a turn */

/* ---- sending ---- */

/* Peer-side failures that say nothing about us (PyEngine ignores the same ones). */
static int peer_error(int err) {
    return err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH;
}

static int would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS; }

/* Send the queue, grouped by descriptor, in order. The caller holds the lock or is "busy". */
static void send_queue(sfu_engine *e, uint64_t *sent, uint64_t *errors) {
    int n = e->nout, start = 0, i;
    for (;;) {
        int fd = -1, cnt = 0, off = 0, retried = 0;
        for (i = start; i < n; i++) {
            if (e->out[i].fd >= 0) {
                fd = e->out[i].fd;
                start = i;
                break;
            }
        }
        if (fd < 0) {
            break;
        }
        for (i = start; i < n; i++) {
            outslot *o = &e->out[i];
            struct msghdr *h;
            if (o->fd != fd) {
                continue;
            }
            e->oiov[cnt].iov_base = o->data;
            e->oiov[cnt].iov_len = o->len;
            h = &e->omsg[cnt].msg_hdr;
            h->msg_name = &o->sa;
            h->msg_namelen = o->salen;
            h->msg_iov = &e->oiov[cnt];
            h->msg_iovlen = 1;
            h->msg_control = NULL;
            h->msg_controllen = 0;
            h->msg_flags = 0;
            o->fd = -1;
            cnt++;
        }
        while (off < cnt) {
            int r = sendmmsg(fd, e->omsg + off, (unsigned)(cnt - off), MSG_DONTWAIT);
            int err;
            if (r > 0) {
                *sent += (uint64_t)r;
                off += r;
                continue;
            }
            err = r < 0 ? errno : EIO;
            if (err == EINTR) {
                continue;
            }
            if (would_block(err)) {
                struct pollfd p = {fd, POLLOUT, 0};
                if (!retried && poll(&p, 1, 1) > 0) {
                    retried = 1;
                    continue;
                }
                *errors += (uint64_t)(cnt - off);
                break;
            }
            if (!peer_error(err)) {
                (*errors)++;
            }
            off++; /* skip the datagram that failed, send the rest */
        }
    }
    e->nout = 0;
}

/* Flush while holding the lock (the queue is full in the middle of a fan-out). */
static void flush_locked(sfu_engine *e) {
    uint64_t sent = 0, errors = 0;
    send_queue(e, &sent, &errors);
    e->c.datagrams_out += sent;
    e->c.send_errors += errors;
}

/* Flush with the lock released; descriptors stay open because close waits while busy. */
static void flush(sfu_engine *e) {
    uint64_t sent = 0, errors = 0;
    if (e->nout == 0) {
        return;
    }
    e->busy = 1;
    pthread_mutex_unlock(&e->lock);
    send_queue(e, &sent, &errors);
    pthread_mutex_lock(&e->lock);
    e->busy = 0;
    e->c.datagrams_out += sent;
    e->c.send_errors += errors;
    pthread_cond_broadcast(&e->idle);
}

int engine_send_to_dest(sfu_engine *e, transport *t, uint8_t *data, size_t len) {
    esock *s = engine_socket(e, t->dest_socket);
    if (s == NULL) {
        return 0;
    }
    if (t->has_relay) {
        data -= SFU_CHANNEL_HEADER;
        sfu_channel_header(data, t->channel, (uint16_t)len);
        len += SFU_CHANNEL_HEADER;
    }
    if (sendto(s->fd, data, len, MSG_DONTWAIT, (struct sockaddr *)&t->dest_sa, t->dest_salen) <
        0) {
        if (!peer_error(errno)) {
            e->c.send_errors++;
        }
        return 0;
    }
    e->c.datagrams_out++;
    return 1;
}

/* ---- control queue ---- */

static void ctl_push(sfu_engine *e, int kind, int socket_id, const sfu_addr *addr,
                     const sfu_addr *relay, int64_t transport_id, const uint8_t *data,
                     size_t len) {
    sfu_ctl_entry *x;
    pthread_mutex_lock(&e->ctl_lock);
    if (e->ctl_count == SFU_ENGINE_CTL_CAP) {
        e->ctl_dropped++;
        pthread_mutex_unlock(&e->ctl_lock);
        return;
    }
    x = &e->ctl[(e->ctl_head + e->ctl_count) % SFU_ENGINE_CTL_CAP];
    x->kind = kind;
    x->socket_id = socket_id;
    x->transport_id = transport_id;
    x->addr = *addr;
    x->has_relay = relay != NULL;
    if (relay != NULL) {
        x->relay = *relay;
    }
    x->len = (uint32_t)len;
    memcpy(x->data, data, len);
    e->ctl_count++;
    pthread_mutex_unlock(&e->ctl_lock);
    e->ctl_new = 1;
}

/* ---- media ---- */

/* A new SSRC on a transport expecting unannounced streams: report its MID/RID once. */
static void announce_stream(sfu_engine *e, transport *t, istream *s, const uint8_t *p,
                            size_t n, int socket_id, const sfu_addr *from) {
    const uint8_t *val[3];
    size_t vlen[3], o = 4;
    uint8_t rec[4 + 3 * (1 + SFU_SDES_MAX)];
    int k;
    if (t->stream_reports == 0 || sfu_rtp_sdes_ext(p, n, t->sdes_ext, val, vlen) != 0 ||
        (vlen[0] == 0 && vlen[1] == 0 && vlen[2] == 0)) {
        return;
    }
    sfu_store32(rec, s->ssrc);
    for (k = 0; k < 3; k++) {
        rec[o++] = (uint8_t)vlen[k];
        if (vlen[k] > 0) {
            memcpy(rec + o, val[k], vlen[k]);
            o += vlen[k];
        }
    }
    s->announced = 1;
    t->stream_reports--;
    ctl_push(e, SFU_CTL_STREAM, socket_id, from, NULL, t->id, rec, o);
}

static int64_t ts_delta(uint32_t a, uint32_t b) { return (int64_t)(int32_t)(a - b); }

/* RFC 3550 A.1 (extended highest sequence number), A.8 (interarrival jitter), lost. */
static void inbound_update(istream *s, uint16_t seq, uint32_t ts, size_t size, double now) {
    uint32_t rate = s->has_producer ? s->clock_rate : DEFAULT_CLOCK_RATE;
    int64_t arrival, expected;
    s->packets++;
    s->bytes += size;
    if (s->highest_seq < 0) {
        s->base_seq = s->highest_seq = seq;
    } else {
        int64_t ext = (s->highest_seq & ~(int64_t)0xFFFF) | seq;
        int64_t delta = ext - s->highest_seq;
        if (delta < -0x8000) {
            ext += 0x10000;
        } else if (delta > 0x8000) {
            ext -= 0x10000;
        }
        if (ext > s->highest_seq) {
            s->highest_seq = ext;
        }
    }
    arrival = (int64_t)(now * (double)rate);
    if (s->have_prev) {
        int64_t d = (arrival - s->prev_arrival) - ts_delta(ts, s->prev_ts);
        s->jitter += ((double)(d < 0 ? -d : d) - s->jitter) / 16.0;
    }
    s->have_prev = 1;
    s->prev_arrival = arrival;
    s->prev_ts = ts;
    expected = s->highest_seq - s->base_seq + 1;
    s->lost = expected > (int64_t)s->packets ? expected - (int64_t)s->packets : 0;
}

/* Keep a plaintext copy for retransmissions; returns its serial (0 if not kept). */
static uint32_t ring_store(istream *s, const uint8_t *p, size_t len) {
    cache_slot *slot;
    uint32_t serial = ++s->serial;
    if (serial == 0) {
        serial = ++s->serial;
    }
    slot = &s->ring[serial % s->ring_size];
    if (slot->cap < len) {
        size_t cap = len < CACHE_SLOT_MIN ? CACHE_SLOT_MIN : len;
        uint8_t *grown = realloc(slot->data, cap);
        if (grown == NULL) {
            slot->serial = 0;
            return 0;
        }
        slot->data = grown;
        slot->cap = (uint32_t)cap;
    }
    memcpy(slot->data, p, len);
    slot->len = (uint32_t)len;
    slot->serial = serial;
    return serial;
}

static outslot *out_reserve(sfu_engine *e) {
    if (e->nout == SFU_ENGINE_OUT_SLOTS) {
        flush_locked(e);
    }
    return &e->out[e->nout];
}

static void forward(sfu_engine *e, consumer *c, const uint8_t *plain, size_t len, uint8_t pt,
                    uint16_t seq, uint32_t ts, double now, uint32_t serial) {
    transport *d = c->dst;
    ostream *o = c->out;
    outslot *slot;
    esock *s;
    uint8_t *p;
    size_t n = len;
    uint16_t out_seq;
    uint32_t out_ts;
    uint8_t out_pt;
    if (d->tx == NULL || !d->has_dest) {
        return;
    }
    if (!c->synced) {
        /* continue the output stream where it stopped (pause, or another source before) */
        if (o->last_out_seq >= 0) {
            double idle = now - o->last_out_time;
            int64_t elapsed = (int64_t)((idle > 0.0 ? idle : 0.0) * (double)c->clock_rate);
            c->seq_offset = (uint16_t)((uint16_t)o->last_out_seq + 1u - seq);
            c->ts_offset = (uint32_t)(o->last_out_ts + (uint32_t)(elapsed > 1 ? elapsed : 1) - ts);
        }
        c->synced = 1;
    }
    out_seq = (uint16_t)(seq + c->seq_offset);
    out_ts = ts + c->ts_offset;
    out_pt = c->pt_map[pt];
    slot = out_reserve(e);
    p = slot->buf + OUT_HEADROOM;
    memcpy(p, plain, len);
    sfu_rtp_rewrite(p, out_pt, out_seq, out_ts, c->dst_ssrc);
    if (sfu_srtp_protect(d->tx, p, &n, OUT_BUF_SIZE - OUT_HEADROOM) != SFU_SRTP_OK) {
        d->c.srtp_errors++;
        return;
    }
    s = engine_socket(e, d->dest_socket);
    if (s == NULL) {
        return;
    }
    if (d->has_relay) {
        slot->data = p - SFU_CHANNEL_HEADER;
        sfu_channel_header(slot->data, d->channel, (uint16_t)n);
        slot->len = n + SFU_CHANNEL_HEADER;
    } else {
        slot->data = p;
        slot->len = n;
    }
    slot->fd = s->fd;
    slot->salen = d->dest_salen;
    memcpy(&slot->sa, &d->dest_sa, d->dest_salen);
    e->nout++;
    if (c->log != NULL) {
        log_entry *le = &c->log[out_seq % c->cache_size];
        le->serial = serial;
        le->out_ts = out_ts;
        le->out_seq = out_seq;
        le->out_pt = out_pt;
        le->gen = serial != 0 ? c->gen : 0;
    }
    o->last_out_seq = out_seq;
    o->last_out_ts = out_ts;
    o->last_out_time = now;
    d->c.packets_out++;
    d->c.bytes_out += n;
    o->packets++;
    o->bytes += len - SFU_RTP_HEADER;
    o->last_rtp_ts = out_ts;
    o->last_send_time = now;
}

/* A new sender on an ingest transport: the stream's statistics start over, and its consumers
 * continue their output where it stopped (after a keyframe when gated). */
static void resync(istream *s) {
    uint32_t i;
    s->packets = 0;
    s->bytes = 0;
    s->highest_seq = -1;
    s->base_seq = -1;
    s->lost = 0;
    s->jitter = 0.0;
    s->have_prev = 0;
    for (i = 0; i < s->ncons; i++) {
        if (s->cons[i]->src == s) { /* not a consumer only waiting to switch to it */
            s->cons[i]->synced = 0;
            s->cons[i]->waiting = s->cons[i]->gate != SFU_GATE_NONE;
        }
    }
}

static void on_rtp(sfu_engine *e, transport *t, uint8_t *buf, size_t n, int socket_id,
                   const sfu_addr *from) {
    size_t len = n;
    uint32_t i, serial = 0, ts, ssrc;
    uint16_t seq;
    uint8_t pt;
    istream *s;
    double now;
    int new_sender = 0;
    if (t->rx != NULL) {
        if (sfu_srtp_unprotect(t->rx, buf, &len) != SFU_SRTP_OK) {
            t->c.srtp_errors++;
            return;
        }
    } else if (!t->ingest) {
        e->c.dropped_unknown++;
        return;
    }
    t->c.packets_in++;
    t->c.bytes_in += n;
    pt = buf[1] & 0x7F;
    seq = sfu_load16(buf + 2);
    ts = sfu_load32(buf + 4);
    ssrc = sfu_load32(buf + 8);
    if (t->ingest) {
        new_sender = t->has_sender && ssrc != t->sender_ssrc;
        t->has_sender = 1;
        t->sender_ssrc = ssrc;
        ssrc = t->ingest_ssrc;
        sfu_store32(buf + 8, ssrc);
    }
    s = engine_stream(e, t->id, ssrc, 1);
    if (s == NULL) {
        return; /* out of memory */
    }
    if (new_sender) {
        resync(s);
    }
    engine_stream_track(t, s);
    if (t->expect_rids && from != NULL && !s->has_producer && !s->announced) {
        announce_stream(e, t, s, buf, len, socket_id, from);
    }
    now = engine_now();
    inbound_update(s, seq, ts, len, now);
    if (s->ncons == 0) {
        t->c.unrouted++;
        return;
    }
    if (s->ring != NULL) {
        serial = ring_store(s, buf, len);
    }
    for (i = 0; i < s->ncons; i++) {
        consumer *c = s->cons[i];
        if (c->target == s) {
            /* a pending switch: taken at a keyframe of the target that actually leaves (the
             * switch edits the old source's list, never this one) */
            if (c->paused || c->dst->tx == NULL || !c->dst->has_dest ||
                !sfu_keyframe_start(c->gate, buf, len)) {
                continue;
            }
            engine_complete_switch(e, c);
        } else if (c->paused) {
            continue;
        } else if (c->waiting) {
            /* the gate opens on a keyframe that actually leaves (the destination is ready) */
            if (c->dst->tx == NULL || !c->dst->has_dest ||
                !sfu_keyframe_start(c->gate, buf, len)) {
                continue;
            }
            c->waiting = 0;
        }
        forward(e, c, buf, len, pt, seq, ts, now, serial);
    }
}

/* A datagram on an ingest socket: RTP for its transport; RTCP counted; the rest unknown. */
static void handle_ingest(sfu_engine *e, int64_t tid, uint8_t *buf, size_t n) {
    transport *t = sfu_hmap_get(&e->transports, &tid);
    int kind = sfu_classify(buf, n);
    if (t == NULL || (kind != SFU_PKT_RTP && kind != SFU_PKT_RTCP)) {
        e->c.dropped_unknown++;
    } else if (kind == SFU_PKT_RTP) {
        on_rtp(e, t, buf, n, 0, NULL);
    } else {
        t->c.rtcp_in++;
    }
}

static void handle(sfu_engine *e, int socket_id, const struct sockaddr *sa, uint8_t *buf,
                   size_t n) {
    sfu_addr from, server;
    const sfu_addr *relay = NULL;
    transport *t;
    int kind;
    size_t len;
    e->c.datagrams_in++;
    {
        esock *es = engine_socket(e, socket_id);
        if (es != NULL && es->ingest != 0) {
            handle_ingest(e, es->ingest, buf, n);
            return;
        }
    }
    if (addr_from_sockaddr(&from, sa) != 0) {
        e->c.dropped_unknown++;
        return;
    }
    if (n >= SFU_CHANNEL_HEADER && buf[0] >= 0x40 && buf[0] <= 0x7F) {
        /* a bound channel (0x4000..0x7FFF, as the reference engine) is unwrapped */
        const chan_bind *cb = engine_channel(e, socket_id, &from, sfu_load16(buf));
        if (cb != NULL) {
            long dlen = sfu_channel_data_len(buf, n);
            if (dlen < 0) {
                e->c.dropped_unknown++;
                return;
            }
            server = from;
            relay = &server;
            from = cb->peer;
            buf += SFU_CHANNEL_HEADER;
            n = (size_t)dlen;
            if (sfu_classify(buf, n) == SFU_PKT_TURN_CHANNEL) {
                e->c.dropped_unknown++; /* ChannelData inside ChannelData */
                return;
            }
        }
    }
    kind = sfu_classify(buf, n);
    t = engine_binding(e, socket_id, &from);
    switch (kind) {
    case SFU_PKT_STUN:
        ctl_push(e, SFU_CTL_STUN, socket_id, &from, relay, t ? t->id : 0, buf, n);
        return;
    case SFU_PKT_DTLS:
        ctl_push(e, SFU_CTL_DTLS, socket_id, &from, relay, t ? t->id : 0, buf, n);
        return;
    case SFU_PKT_TURN_CHANNEL:
        ctl_push(e, SFU_CTL_TURN, socket_id, &from, NULL, t ? t->id : 0, buf, n);
        return;
    case SFU_PKT_RTP:
    case SFU_PKT_RTCP:
        if (t == NULL || t->rx == NULL) {
            e->c.dropped_unknown++;
            return;
        }
        if (kind == SFU_PKT_RTP) {
            on_rtp(e, t, buf, n, socket_id, &from);
            return;
        }
        len = n;
        if (sfu_srtp_unprotect_rtcp(t->rx, buf, &len) != SFU_SRTP_OK) {
            t->c.srtp_errors++;
            return;
        }
        t->c.rtcp_in++;
        ctl_push(e, SFU_CTL_RTCP, socket_id, &from, relay, t->id, buf, len);
        return;
    default:
        e->c.dropped_unknown++;
        return;
    }
}

/* Receive and handle up to ROUNDS batches from one socket. */
static void service(sfu_engine *e, int socket_id) {
    int round, i, n;
    for (round = 0; round < ROUNDS; round++) {
        esock *s;
        pthread_mutex_lock(&e->lock);
        s = engine_socket(e, socket_id);
        if (s == NULL) {
            pthread_mutex_unlock(&e->lock);
            return;
        }
        for (i = 0; i < SFU_ENGINE_BATCH; i++) {
            e->rmsg[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
        }
        n = recvmmsg(s->fd, e->rmsg, SFU_ENGINE_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            pthread_mutex_unlock(&e->lock);
            return;
        }
        for (i = 0; i < n; i++) {
            handle(e, socket_id, (const struct sockaddr *)&e->rsa[i],
                   e->rbuf + (size_t)i * SFU_ENGINE_RECV_SIZE, e->rmsg[i].msg_len);
        }
        flush(e);
        pthread_mutex_unlock(&e->lock);
        if (e->ctl_new) {
            uint64_t one = 1;
            e->ctl_new = 0;
            if (write(e->ctlfd, &one, sizeof(one)) < 0) {
                /* saturated counter: Python has a wake-up pending anyway */
            }
        }
        if (n < SFU_ENGINE_BATCH) {
            return;
        }
    }
}

int sfu_engine_run(sfu_engine *e) {
    struct epoll_event evs[MAX_EVENTS];
    int epfd, i, n;
    pthread_mutex_lock(&e->lock);
    epfd = e->epfd;
    pthread_mutex_unlock(&e->lock);
    if (epfd < 0) {
        return -EBADF;
    }
    pthread_setname_np(pthread_self(), "sfu-engine"); /* for top, perf, gdb */
    while (!atomic_load(&e->stopping)) {
        n = epoll_wait(epfd, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        for (i = 0; i < n && !atomic_load(&e->stopping); i++) {
            if (evs[i].data.u64 == ENGINE_WAKE_TAG) {
                uint64_t v;
                if (read(e->wakefd, &v, sizeof(v)) < 0) {
                    /* EAGAIN: another wake-up consumed it */
                }
                continue;
            }
            service(e, (int)evs[i].data.u64);
        }
    }
    return 0;
}
