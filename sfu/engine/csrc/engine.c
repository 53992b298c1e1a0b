/*
 * The forwarding engine's tables and control API (see engine.h). The data path is in loop.c.
 */
#include "engine_int.h"
#include "packet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ---- addresses ---- */

int sfu_addr_parse(sfu_addr *out, const char *host, long port) {
    char buf[INET6_ADDRSTRLEN + 1];
    const char *pct;
    size_t n;
    memset(out, 0, sizeof(*out));
    if (host == NULL || port < 0 || port > 65535) {
        return -EINVAL;
    }
    out->port = (uint16_t)port;
    if (inet_pton(AF_INET, host, out->ip) == 1) {
        out->family = AF_INET;
        return 0;
    }
    pct = strchr(host, '%');
    n = pct ? (size_t)(pct - host) : strlen(host);
    if (n >= sizeof(buf)) {
        return -EINVAL;
    }
    memcpy(buf, host, n);
    buf[n] = '\0';
    if (inet_pton(AF_INET6, buf, out->ip) != 1) {
        return -EINVAL;
    }
    out->family = AF_INET6;
    if (pct != NULL && pct[1] != '\0') {
        char *end;
        unsigned long v = strtoul(pct + 1, &end, 10);
        out->scope = (*end == '\0') ? (uint32_t)v : if_nametoindex(pct + 1);
        if (out->scope == 0 && *end != '\0') {
            return -EINVAL;
        }
    }
    return 0;
}

int sfu_addr_format(const sfu_addr *a, char *buf, size_t cap) {
    size_t n;
    if (cap < INET6_ADDRSTRLEN + IF_NAMESIZE + 2) {
        return -EINVAL;
    }
    if (inet_ntop(a->family, a->ip, buf, (socklen_t)cap) == NULL) {
        return -EINVAL;
    }
    if (a->family == AF_INET6 && a->scope != 0) {
        char name[IF_NAMESIZE];
        n = strlen(buf);
        buf[n++] = '%';
        if (if_indextoname(a->scope, name) != NULL) {
            memcpy(buf + n, name, strlen(name) + 1);
        } else {
            snprintf(buf + n, cap - n, "%u", a->scope);
        }
    }
    return 0;
}

int addr_from_sockaddr(sfu_addr *a, const struct sockaddr *sa) {
    memset(a, 0, sizeof(*a));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        a->family = AF_INET;
        a->port = ntohs(s4->sin_port);
        memcpy(a->ip, &s4->sin_addr, 4);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        a->family = AF_INET6;
        a->port = ntohs(s6->sin6_port);
        a->scope = s6->sin6_scope_id;
        memcpy(a->ip, &s6->sin6_addr, 16);
        return 0;
    }
    return -EINVAL;
}

socklen_t addr_to_sockaddr(const sfu_addr *a, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof(*ss));
    if (a->family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a->port);
        memcpy(&s4->sin_addr, a->ip, 4);
        return sizeof(*s4);
    }
    {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a->port);
        s6->sin6_scope_id = a->scope;
        memcpy(&s6->sin6_addr, a->ip, 16);
        return sizeof(*s6);
    }
}

double engine_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- lifecycle ---- */

sfu_engine *sfu_engine_new(void) {
    sfu_engine *e = calloc(1, sizeof(*e));
    uint64_t seed = 0;
    struct epoll_event ev;
    int i;
    if (e == NULL) {
        return NULL;
    }
    e->epfd = e->wakefd = e->ctlfd = -1;
    pthread_mutex_init(&e->lock, NULL);
    pthread_mutex_init(&e->ctl_lock, NULL);
    pthread_cond_init(&e->idle, NULL);
    atomic_init(&e->stopping, 0);
    e->next_socket_id = 1;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        seed = (uint64_t)(uintptr_t)e ^ (uint64_t)time(NULL);
    }
    if (sfu_hmap_init(&e->transports, 8, seed) || sfu_hmap_init(&e->consumers, 8, seed + 1) ||
        sfu_hmap_init(&e->streams, sizeof(stream_key), seed + 2) ||
        sfu_hmap_init(&e->bindings, sizeof(bind_key), seed + 3) ||
        sfu_hmap_init(&e->channels, sizeof(chan_key), seed + 4)) {
        goto fail;
    }
    e->rmsg = calloc(SFU_ENGINE_BATCH, sizeof(*e->rmsg));
    e->riov = calloc(SFU_ENGINE_BATCH, sizeof(*e->riov));
    e->rsa = calloc(SFU_ENGINE_BATCH, sizeof(*e->rsa));
    e->rbuf = malloc((size_t)SFU_ENGINE_BATCH * SFU_ENGINE_RECV_SIZE);
    e->out = calloc(SFU_ENGINE_OUT_SLOTS, sizeof(*e->out));
    e->omsg = calloc(SFU_ENGINE_OUT_SLOTS, sizeof(*e->omsg));
    e->oiov = calloc(SFU_ENGINE_OUT_SLOTS, sizeof(*e->oiov));
    e->obuf = malloc((size_t)SFU_ENGINE_OUT_SLOTS * OUT_BUF_SIZE);
    e->scratch = malloc(OUT_BUF_SIZE);
    e->ctl = malloc((size_t)SFU_ENGINE_CTL_CAP * sizeof(sfu_ctl_entry));
    if (!e->rmsg || !e->riov || !e->rsa || !e->rbuf || !e->out || !e->omsg || !e->oiov ||
        !e->obuf || !e->scratch || !e->ctl) {
        goto fail;
    }
    for (i = 0; i < SFU_ENGINE_BATCH; i++) {
        e->riov[i].iov_base = e->rbuf + (size_t)i * SFU_ENGINE_RECV_SIZE;
        e->riov[i].iov_len = SFU_ENGINE_RECV_SIZE;
        e->rmsg[i].msg_hdr.msg_iov = &e->riov[i];
        e->rmsg[i].msg_hdr.msg_iovlen = 1;
        e->rmsg[i].msg_hdr.msg_name = &e->rsa[i];
    }
    for (i = 0; i < SFU_ENGINE_OUT_SLOTS; i++) {
        e->out[i].buf = e->obuf + (size_t)i * OUT_BUF_SIZE;
        e->out[i].fd = -1;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->ctlfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->wakefd < 0 || e->ctlfd < 0) {
        goto fail;
    }
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = ENGINE_WAKE_TAG;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wakefd, &ev) != 0) {
        goto fail;
    }
    return e;
fail:
    sfu_engine_free(e);
    return NULL;
}

static void free_stream(istream *s) {
    uint32_t i;
    if (s->ring != NULL) {
        for (i = 0; i < s->ring_size; i++) {
            free(s->ring[i].data);
        }
        free(s->ring);
    }
    free(s->cons);
    free(s);
}

static void free_transport(transport *t) {
    ostream *o = t->out_head;
    while (o != NULL) {
        ostream *next = o->next;
        free(o);
        o = next;
    }
    if (t->rx) {
        sfu_srtp_ctx_free(t->rx);
    }
    if (t->tx) {
        sfu_srtp_ctx_free(t->tx);
    }
    free(t);
}

static void close_fd(int *fd) {
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

void sfu_engine_shutdown(sfu_engine *e) {
    int i;
    pthread_mutex_lock(&e->lock);
    for (i = 0; i < SFU_ENGINE_MAX_SOCKETS; i++) {
        if (e->socks[i].id != 0) {
            close_fd(&e->socks[i].fd);
            e->socks[i].id = 0;
        }
    }
    close_fd(&e->epfd);
    close_fd(&e->wakefd);
    /* ctlfd stays open until sfu_engine_free: an event loop may still watch it */
    pthread_mutex_unlock(&e->lock);
}

void sfu_engine_free(sfu_engine *e) {
    uint32_t i;
    if (e == NULL) {
        return;
    }
    if (e->transports.slots != NULL) {
        sfu_engine_shutdown(e);
    }
    if (e->consumers.slots) {
        for (i = 0; i <= e->consumers.mask; i++) {
            consumer *c = e->consumers.slots[i].value;
            if (c) {
                free(c->log);
                free(c);
            }
        }
    }
    if (e->streams.slots) {
        for (i = 0; i <= e->streams.mask; i++) {
            if (e->streams.slots[i].value) {
                free_stream(e->streams.slots[i].value);
            }
        }
    }
    if (e->transports.slots) {
        for (i = 0; i <= e->transports.mask; i++) {
            if (e->transports.slots[i].value) {
                free_transport(e->transports.slots[i].value);
            }
        }
    }
    if (e->channels.slots) {
        for (i = 0; i <= e->channels.mask; i++) {
            free(e->channels.slots[i].value);
        }
    }
    sfu_hmap_free(&e->transports);
    sfu_hmap_free(&e->consumers);
    sfu_hmap_free(&e->streams);
    sfu_hmap_free(&e->bindings);
    sfu_hmap_free(&e->channels);
    close_fd(&e->epfd);
    close_fd(&e->wakefd);
    close_fd(&e->ctlfd);
    free(e->rmsg);
    free(e->riov);
    free(e->rsa);
    free(e->rbuf);
    free(e->out);
    free(e->omsg);
    free(e->oiov);
    free(e->obuf);
    free(e->scratch);
    free(e->ctl);
    pthread_cond_destroy(&e->idle);
    pthread_mutex_destroy(&e->ctl_lock);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

void sfu_engine_request_stop(sfu_engine *e) {
    uint64_t one = 1;
    atomic_store(&e->stopping, 1);
    pthread_mutex_lock(&e->lock);
    if (e->wakefd >= 0 && write(e->wakefd, &one, sizeof(one)) < 0) {
        /* the counter is saturated: the loop is already awake */
    }
    pthread_mutex_unlock(&e->lock);
}

/* ---- lookups (lock held) ---- */

esock *engine_socket(sfu_engine *e, int socket_id) {
    int i;
    if (socket_id <= 0) {
        return NULL;
    }
    /* ids carry their slot in the low 16 bits (see sfu_engine_add_socket): O(1) lookup */
    i = (socket_id & 0xFFFF) - 1;
    if (i < 0 || i >= SFU_ENGINE_MAX_SOCKETS || e->socks[i].id != socket_id) {
        return NULL;
    }
    return &e->socks[i];
}

static void make_bind_key(bind_key *k, int socket_id, const sfu_addr *addr) {
    memset(k, 0, sizeof(*k));
    k->socket_id = socket_id;
    k->addr = *addr;
}

static void make_chan_key(chan_key *k, int socket_id, const sfu_addr *server, int channel) {
    memset(k, 0, sizeof(*k));
    k->socket_id = socket_id;
    k->server = *server;
    k->channel = channel;
}

static void make_stream_key(stream_key *k, int64_t transport_id, uint32_t ssrc) {
    memset(k, 0, sizeof(*k));
    k->transport_id = transport_id;
    k->ssrc = ssrc;
}

transport *engine_binding(sfu_engine *e, int socket_id, const sfu_addr *addr) {
    bind_key k;
    if (e->bindings.count == 0) {
        return NULL;
    }
    make_bind_key(&k, socket_id, addr);
    return sfu_hmap_get(&e->bindings, &k);
}

const chan_bind *engine_channel(sfu_engine *e, int socket_id, const sfu_addr *server,
                                uint16_t channel) {
    chan_key k;
    if (e->channels.count == 0) {
        return NULL;
    }
    make_chan_key(&k, socket_id, server, channel);
    return sfu_hmap_get(&e->channels, &k);
}

static transport *get_transport(sfu_engine *e, int64_t id, int create) {
    transport *t = sfu_hmap_get(&e->transports, &id);
    if (t != NULL || !create) {
        return t;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->id = id;
    if (sfu_hmap_put(&e->transports, &id, t) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

istream *engine_stream(sfu_engine *e, int64_t transport_id, uint32_t ssrc, int create) {
    stream_key k;
    istream *s;
    make_stream_key(&k, transport_id, ssrc);
    s = sfu_hmap_get(&e->streams, &k);
    if (s != NULL || !create) {
        return s;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->transport_id = transport_id;
    s->ssrc = ssrc;
    s->clock_rate = DEFAULT_CLOCK_RATE;
    s->highest_seq = -1;
    s->base_seq = -1;
    if (sfu_hmap_put(&e->streams, &k, s) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* Give the stream inbound statistics listed under its transport (once). */
void engine_stream_track(transport *t, istream *s) {
    if (s->has_stats) {
        return;
    }
    s->has_stats = 1;
    s->next_in_transport = NULL;
    if (t->in_tail) {
        t->in_tail->next_in_transport = s;
    } else {
        t->in_head = s;
    }
    t->in_tail = s;
}

/* Free a stream nobody needs (no statistics, producer, consumer or previous-source user). */
static void maybe_drop_stream(sfu_engine *e, istream *s) {
    stream_key k;
    if (s->has_stats || s->has_producer || s->ncons > 0 || s->refs > 0) {
        return;
    }
    make_stream_key(&k, s->transport_id, s->ssrc);
    sfu_hmap_del(&e->streams, &k);
    free_stream(s);
}

static void free_ring(istream *s) {
    uint32_t i;
    if (s->ring == NULL) {
        return;
    }
    for (i = 0; i < s->ring_size; i++) {
        free(s->ring[i].data);
    }
    free(s->ring);
    s->ring = NULL;
    s->ring_size = 0;
}

/* Size the NACK ring: the largest consumer cache (at least the producer's), none if no
 * consumer asks for one. Growing drops what was cached (consumers then miss, never misread). */
static void resize_ring(istream *s) {
    uint32_t want = 0, i;
    cache_slot *ring;
    for (i = 0; i < s->ncons; i++) {
        if (s->cons[i]->cache_size > want) {
            want = s->cons[i]->cache_size;
        }
    }
    if (want > 0 && s->producer_cache > want) {
        want = s->producer_cache;
    }
    if (want == 0) {
        if (s->refs == 0) {
            free_ring(s); /* else a switched consumer may still retransmit from it */
        }
        return;
    }
    if (want <= s->ring_size) {
        return;
    }
    ring = calloc(want, sizeof(*ring));
    if (ring == NULL) {
        return; /* keep the old ring: retransmissions of newer packets just miss */
    }
    free_ring(s);
    s->ring = ring;
    s->ring_size = want;
}

/* Free the NACK ring when no consumer of the stream keeps a cache and no switched consumer
 * still refers to what it cached. */
static void trim_ring(istream *s) {
    uint32_t i;
    if (s->ring == NULL || s->refs > 0) {
        return;
    }
    for (i = 0; i < s->ncons; i++) {
        if (s->cons[i]->cache_size > 0) {
            return;
        }
    }
    free_ring(s);
}

/* Room for one more consumer in the stream's list. */
static int cons_reserve(istream *s) {
    if (s->ncons == s->capcons) {
        uint32_t cap = s->capcons ? s->capcons * 2 : 4;
        consumer **grown = realloc(s->cons, cap * sizeof(*grown));
        if (grown == NULL) {
            return -ENOMEM;
        }
        s->cons = grown;
        s->capcons = cap;
    }
    return 0;
}

static void cons_detach(istream *s, const consumer *c) {
    uint32_t i;
    for (i = 0; i < s->ncons; i++) {
        if (s->cons[i] == c) {
            memmove(&s->cons[i], &s->cons[i + 1], (s->ncons - i - 1) * sizeof(consumer *));
            s->ncons--;
            return;
        }
    }
}

/* Drop a pending switch (the consumer stays on its source). */
static void cancel_switch(sfu_engine *e, consumer *c) {
    istream *t = c->target;
    if (t == NULL) {
        return;
    }
    c->target = NULL;
    cons_detach(t, c);
    trim_ring(t);
    maybe_drop_stream(e, t);
}

/* Forget the source before the last switch. */
static void release_prev(sfu_engine *e, consumer *c) {
    istream *p = c->prev_src;
    if (p == NULL) {
        return;
    }
    c->prev_src = NULL;
    p->refs--;
    trim_ring(p);
    maybe_drop_stream(e, p);
}

void engine_complete_switch(sfu_engine *e, consumer *c) {
    istream *old = c->src, *s = c->target;
    old->refs++; /* before release_prev, which may concern the same stream */
    release_prev(e, c);
    cons_detach(old, c);
    c->prev_src = old;
    c->prev_gen = c->gen;
    c->gen = (uint8_t)(c->gen == 255 ? 1 : c->gen + 1);
    if (c->gen == 1 && c->log != NULL) {
        /* the generations wrapped: entries this old must not be taken for the new source */
        memset(c->log, 0, c->cache_size * sizeof(log_entry));
    }
    c->src = s;
    c->src_transport = s->transport_id;
    c->src_ssrc = s->ssrc;
    c->clock_rate = c->target_clock;
    c->target = NULL;
    c->synced = 0;
    c->waiting = 0;
}

static ostream *get_ostream(transport *t, uint32_t ssrc) {
    ostream *o;
    for (o = t->out_head; o != NULL; o = o->next) {
        if (o->ssrc == ssrc) {
            return o;
        }
    }
    o = calloc(1, sizeof(*o));
    if (o == NULL) {
        return NULL;
    }
    o->ssrc = ssrc;
    o->last_out_seq = -1;
    if (t->out_tail) {
        t->out_tail->next = o;
    } else {
        t->out_head = o;
    }
    t->out_tail = o;
    return o;
}

/* Wait until the loop is not sending with the lock released (lock held). */
static void wait_idle(sfu_engine *e) {
    while (e->busy) {
        pthread_cond_wait(&e->idle, &e->lock);
    }
}

/* ---- sockets ---- */

int sfu_engine_add_socket(sfu_engine *e, int fd, int family) {
    struct epoll_event ev;
    int i, id;
    pthread_mutex_lock(&e->lock);
    if (e->epfd < 0) {
        pthread_mutex_unlock(&e->lock);
        return -EBADF;
    }
    for (i = 0; i < SFU_ENGINE_MAX_SOCKETS; i++) {
        if (e->socks[i].id == 0) {
            break;
        }
    }
    if (i == SFU_ENGINE_MAX_SOCKETS) {
        pthread_mutex_unlock(&e->lock);
        return -EMFILE;
    }
    /* slot in the low 16 bits, a generation above it so a reused slot gets a new id */
    id = ((e->next_socket_id++ & 0x3FFF) << 16) | (i + 1);
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = (uint64_t)id;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        int err = errno;
        pthread_mutex_unlock(&e->lock);
        return -err;
    }
    e->socks[i].id = id;
    e->socks[i].fd = fd;
    e->socks[i].family = family;
    e->socks[i].ingest = 0;
    pthread_mutex_unlock(&e->lock);
    return id;
}

/* Remove every key whose predicate holds (collect first: deletion moves entries). */
typedef int (*key_pred)(const sfu_hslot *slot, const void *arg);

static void remove_matching(sfu_hmap *m, key_pred pred, const void *arg, int free_values) {
    uint32_t i, n = 0, cap = m->count;
    uint8_t *keys;
    if (cap == 0) {
        return;
    }
    keys = malloc((size_t)cap * m->keylen);
    if (keys == NULL) {
        return;
    }
    for (i = 0; i <= m->mask; i++) {
        if (m->slots[i].value && pred(&m->slots[i], arg)) {
            memcpy(keys + (size_t)n * m->keylen, m->slots[i].key, m->keylen);
            n++;
        }
    }
    for (i = 0; i < n; i++) {
        void *v = sfu_hmap_del(m, keys + (size_t)i * m->keylen);
        if (free_values) {
            free(v);
        }
    }
    free(keys);
}

static int key_socket_is(const sfu_hslot *slot, const void *arg) {
    int64_t sid;
    memcpy(&sid, slot->key, sizeof(sid)); /* socket_id leads bind_key and chan_key */
    return sid == *(const int64_t *)arg;
}

static int value_is(const sfu_hslot *slot, const void *arg) { return slot->value == arg; }

int sfu_engine_close_socket(sfu_engine *e, int socket_id) {
    esock *s;
    int64_t sid = socket_id;
    pthread_mutex_lock(&e->lock);
    wait_idle(e);
    s = engine_socket(e, socket_id);
    if (s == NULL) {
        pthread_mutex_unlock(&e->lock);
        return -ENOENT;
    }
    if (e->epfd >= 0) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, s->fd, NULL);
    }
    close_fd(&s->fd);
    s->id = 0;
    remove_matching(&e->bindings, key_socket_is, &sid, 0);
    remove_matching(&e->channels, key_socket_is, &sid, 1);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int sfu_engine_send(sfu_engine *e, int socket_id, const sfu_addr *to, const uint8_t *data,
                    size_t len) {
    struct sockaddr_storage ss;
    socklen_t sl = addr_to_sockaddr(to, &ss);
    esock *s;
    int sent = 0;
    pthread_mutex_lock(&e->lock);
    s = engine_socket(e, socket_id);
    if (s != NULL) {
        if (sendto(s->fd, data, len, MSG_DONTWAIT, (struct sockaddr *)&ss, sl) >= 0) {
            e->c.datagrams_out++;
            sent = 1;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return sent;
}

/* ---- transports ---- */

int sfu_engine_bind(sfu_engine *e, int64_t transport_id, int socket_id, const sfu_addr *addr) {
    bind_key k;
    transport *t;
    int rc = 0;
    make_bind_key(&k, socket_id, addr);
    pthread_mutex_lock(&e->lock);
    t = get_transport(e, transport_id, 1);
    if (t == NULL || sfu_hmap_put(&e->bindings, &k, t) != 0) {
        rc = -ENOMEM;
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int sfu_engine_set_destination(sfu_engine *e, int64_t transport_id, int socket_id,
                               const sfu_addr *addr, const sfu_addr *relay, int channel) {
    bind_key k;
    transport *t;
    int rc = 0;
    make_bind_key(&k, socket_id, addr);
    pthread_mutex_lock(&e->lock);
    t = get_transport(e, transport_id, 1);
    if (t == NULL || sfu_hmap_put(&e->bindings, &k, t) != 0) {
        rc = -ENOMEM;
    } else {
        t->has_dest = 1;
        t->dest_socket = socket_id;
        t->has_relay = relay != NULL;
        t->channel = (uint16_t)channel;
        t->dest_salen = addr_to_sockaddr(relay ? relay : addr, &t->dest_sa);
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int sfu_engine_bind_channel(sfu_engine *e, int socket_id, const sfu_addr *server, int channel,
                            const sfu_addr *peer) {
    chan_key k;
    chan_bind *b, *old;
    int rc = 0;
    make_chan_key(&k, socket_id, server, channel);
    b = malloc(sizeof(*b));
    if (b == NULL) {
        return -ENOMEM;
    }
    b->peer = *peer;
    pthread_mutex_lock(&e->lock);
    old = sfu_hmap_get(&e->channels, &k);
    if (sfu_hmap_put(&e->channels, &k, b) != 0) {
        rc = -ENOMEM;
        free(b);
    } else {
        free(old);
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int sfu_engine_unbind_channel(sfu_engine *e, int socket_id, const sfu_addr *server,
                              int channel) {
    chan_key k;
    make_chan_key(&k, socket_id, server, channel);
    pthread_mutex_lock(&e->lock);
    free(sfu_hmap_del(&e->channels, &k));
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int sfu_engine_set_srtp(sfu_engine *e, int64_t transport_id, int profile,
                        const uint8_t *local_key, const uint8_t *local_salt,
                        const uint8_t *remote_key, const uint8_t *remote_salt) {
    sfu_srtp_ctx *rx, *tx;
    transport *t;
    rx = sfu_srtp_ctx_new(profile, remote_key, remote_salt, SFU_SRTP_INBOUND);
    tx = sfu_srtp_ctx_new(profile, local_key, local_salt, SFU_SRTP_OUTBOUND);
    if (rx == NULL || tx == NULL) {
        sfu_srtp_ctx_free(rx);
        sfu_srtp_ctx_free(tx);
        return -EINVAL;
    }
    pthread_mutex_lock(&e->lock);
    t = get_transport(e, transport_id, 1);
    if (t == NULL) {
        pthread_mutex_unlock(&e->lock);
        sfu_srtp_ctx_free(rx);
        sfu_srtp_ctx_free(tx);
        return -ENOMEM;
    }
    if (t->rx) {
        sfu_srtp_ctx_free(t->rx);
    }
    if (t->tx) {
        sfu_srtp_ctx_free(t->tx);
    }
    t->rx = rx;
    t->tx = tx;
    pthread_mutex_unlock(&e->lock);
    return 0;
}

static void remove_consumer_locked(sfu_engine *e, consumer *c) {
    istream *s = c->src;
    sfu_hmap_del(&e->consumers, &c->id);
    cancel_switch(e, c);
    release_prev(e, c);
    cons_detach(s, c);
    if (c->cache_size > 0) {
        trim_ring(s);
    }
    free(c->log);
    free(c);
    maybe_drop_stream(e, s);
}

static int consumer_touches(const sfu_hslot *slot, const void *arg) {
    const consumer *c = slot->value;
    int64_t tid = *(const int64_t *)arg;
    return c->src_transport == tid || c->dst_transport == tid;
}

static int stream_of(const sfu_hslot *slot, const void *arg) {
    const istream *s = slot->value;
    return s->transport_id == *(const int64_t *)arg;
}

/* Consumers matching a predicate, removed one by one (collected first). */
static void remove_consumers(sfu_engine *e, key_pred pred, const void *arg) {
    uint32_t i, n = 0;
    consumer **list;
    if (e->consumers.count == 0) {
        return;
    }
    list = malloc(e->consumers.count * sizeof(*list));
    if (list == NULL) {
        return;
    }
    for (i = 0; i <= e->consumers.mask; i++) {
        if (e->consumers.slots[i].value && pred(&e->consumers.slots[i], arg)) {
            list[n++] = e->consumers.slots[i].value;
        }
    }
    for (i = 0; i < n; i++) {
        remove_consumer_locked(e, list[i]);
    }
    free(list);
}

int sfu_engine_remove_transport(sfu_engine *e, int64_t transport_id) {
    transport *t;
    uint32_t i, n = 0;
    istream **list;
    pthread_mutex_lock(&e->lock);
    t = sfu_hmap_get(&e->transports, &transport_id);
    if (t == NULL) {
        pthread_mutex_unlock(&e->lock);
        return 0;
    }
    remove_matching(&e->bindings, value_is, t, 0);
    if (t->ingest) {
        for (i = 0; i < SFU_ENGINE_MAX_SOCKETS; i++) {
            if (e->socks[i].id != 0 && e->socks[i].ingest == transport_id) {
                e->socks[i].ingest = 0;
            }
        }
    }
    remove_consumers(e, consumer_touches, &transport_id);
    /* the others let go of its streams: pending switches to them are cancelled */
    for (i = 0; e->consumers.count > 0 && i <= e->consumers.mask; i++) {
        consumer *c = e->consumers.slots[i].value;
        if (c == NULL) {
            continue;
        }
        if (c->target != NULL && c->target->transport_id == transport_id) {
            c->target = NULL; /* its list goes with the stream */
        }
        if (c->prev_src != NULL && c->prev_src->transport_id == transport_id) {
            c->prev_src = NULL;
        }
    }
    /* its inbound streams (statistics, producers) go with it */
    list = e->streams.count ? malloc(e->streams.count * sizeof(*list)) : NULL;
    if (list != NULL) {
        for (i = 0; i <= e->streams.mask; i++) {
            if (e->streams.slots[i].value && stream_of(&e->streams.slots[i], &transport_id)) {
                list[n++] = e->streams.slots[i].value;
            }
        }
        for (i = 0; i < n; i++) {
            stream_key k;
            make_stream_key(&k, list[i]->transport_id, list[i]->ssrc);
            sfu_hmap_del(&e->streams, &k);
            free_stream(list[i]);
        }
        free(list);
    }
    sfu_hmap_del(&e->transports, &transport_id);
    free_transport(t);
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int sfu_engine_add_ingest(sfu_engine *e, int64_t transport_id, int socket_id, uint32_t ssrc) {
    transport *t;
    esock *s;
    int rc = 0;
    pthread_mutex_lock(&e->lock);
    s = engine_socket(e, socket_id);
    t = s != NULL ? get_transport(e, transport_id, 1) : NULL;
    if (s == NULL) {
        rc = -ENOENT;
    } else if (t == NULL) {
        rc = -ENOMEM;
    } else {
        t->ingest = 1;
        t->ingest_ssrc = ssrc;
        s->ingest = transport_id;
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int sfu_engine_expect_rids(sfu_engine *e, int64_t transport_id, int mid_id, int rid_id,
                           int rrid_id) {
    transport *t;
    int rc = 0;
    if (mid_id < 0 || mid_id > 255 || rid_id < 0 || rid_id > 255 || rrid_id < 0 ||
        rrid_id > 255) {
        return -EINVAL;
    }
    pthread_mutex_lock(&e->lock);
    t = get_transport(e, transport_id, 1);
    if (t == NULL) {
        rc = -ENOMEM;
    } else {
        t->sdes_ext[0] = mid_id;
        t->sdes_ext[1] = rid_id;
        t->sdes_ext[2] = rrid_id;
        t->expect_rids = mid_id > 0 || rid_id > 0 || rrid_id > 0;
        t->stream_reports = SFU_ENGINE_STREAM_REPORTS;
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

/* ---- producers and consumers ---- */

int sfu_engine_add_producer(sfu_engine *e, int64_t transport_id, uint32_t ssrc,
                            uint32_t clock_rate, uint32_t cache_size) {
    transport *t;
    istream *s;
    int rc = 0;
    pthread_mutex_lock(&e->lock);
    t = get_transport(e, transport_id, 1);
    s = t ? engine_stream(e, transport_id, ssrc, 1) : NULL;
    if (s == NULL) {
        rc = -ENOMEM;
    } else {
        s->has_producer = 1;
        s->clock_rate = clock_rate;
        s->producer_cache = cache_size;
        engine_stream_track(t, s);
        if (s->ring != NULL) {
            resize_ring(s);
        }
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

static int consumer_of(const sfu_hslot *slot, const void *arg) {
    const consumer *c = slot->value;
    const stream_key *k = arg;
    return c->src_transport == k->transport_id && c->src_ssrc == (uint32_t)k->ssrc;
}

int sfu_engine_remove_producer(sfu_engine *e, int64_t transport_id, uint32_t ssrc) {
    istream *s;
    stream_key k;
    make_stream_key(&k, transport_id, ssrc);
    pthread_mutex_lock(&e->lock);
    remove_consumers(e, consumer_of, &k);
    s = engine_stream(e, transport_id, ssrc, 0);
    if (s != NULL) {
        uint32_t i;
        s->refs++; /* cancelling the last switch to it must not free it under us */
        for (i = s->ncons; i > 0; i--) { /* left: consumers waiting to switch to it */
            if (s->cons[i - 1]->target == s) {
                cancel_switch(e, s->cons[i - 1]);
            }
        }
        s->refs--;
        trim_ring(s);
        s->has_producer = 0;
        s->clock_rate = DEFAULT_CLOCK_RATE;
        s->producer_cache = 0;
        maybe_drop_stream(e, s);
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int sfu_engine_add_consumer(sfu_engine *e, const sfu_consumer_spec *spec) {
    consumer *c;
    transport *dst;
    istream *src;
    ostream *out;
    if (spec->keyframe_gate < SFU_GATE_NONE || spec->keyframe_gate > SFU_GATE_H264) {
        return -EINVAL;
    }
    pthread_mutex_lock(&e->lock);
    if (sfu_hmap_get(&e->consumers, &spec->consumer_id) != NULL) {
        pthread_mutex_unlock(&e->lock);
        return -EEXIST;
    }
    c = calloc(1, sizeof(*c));
    dst = get_transport(e, spec->dst_transport, 1);
    out = dst ? get_ostream(dst, spec->dst_ssrc) : NULL;
    src = engine_stream(e, spec->src_transport, spec->src_ssrc, 1);
    if (c == NULL || out == NULL || src == NULL) {
        goto nomem;
    }
    if (spec->cache_size > 0) {
        c->log = calloc(spec->cache_size, sizeof(log_entry));
        if (c->log == NULL) {
            goto nomem;
        }
    }
    if (cons_reserve(src) != 0) {
        goto nomem;
    }
    if (sfu_hmap_put(&e->consumers, &spec->consumer_id, c) != 0) {
        goto nomem;
    }
    c->id = spec->consumer_id;
    c->src_transport = spec->src_transport;
    c->dst_transport = spec->dst_transport;
    c->src_ssrc = spec->src_ssrc;
    c->dst_ssrc = spec->dst_ssrc;
    c->clock_rate = spec->clock_rate;
    c->cache_size = spec->cache_size;
    memcpy(c->pt_map, spec->pt_map, sizeof(c->pt_map));
    c->gate = spec->keyframe_gate;
    c->waiting = c->gate != SFU_GATE_NONE;
    c->gen = 1;
    c->dst = dst;
    c->out = out;
    c->src = src;
    src->cons[src->ncons++] = c;
    if (c->cache_size > 0) {
        resize_ring(src);
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
nomem:
    if (c != NULL) {
        free(c->log);
        free(c);
    }
    if (src != NULL) {
        maybe_drop_stream(e, src);
    }
    pthread_mutex_unlock(&e->lock);
    return -ENOMEM;
}

int sfu_engine_remove_consumer(sfu_engine *e, int64_t consumer_id) {
    consumer *c;
    pthread_mutex_lock(&e->lock);
    c = sfu_hmap_get(&e->consumers, &consumer_id);
    if (c != NULL) {
        remove_consumer_locked(e, c);
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int sfu_engine_pause_consumer(sfu_engine *e, int64_t consumer_id, int paused) {
    consumer *c;
    pthread_mutex_lock(&e->lock);
    c = sfu_hmap_get(&e->consumers, &consumer_id);
    if (c != NULL && c->paused != (paused != 0)) {
        c->paused = paused != 0;
        c->synced = 0;
        c->waiting = c->gate != SFU_GATE_NONE;
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int sfu_engine_switch_consumer(sfu_engine *e, int64_t consumer_id, int64_t src_transport,
                               uint32_t src_ssrc, uint32_t clock_rate) {
    consumer *c;
    istream *s;
    int rc = 0;
    pthread_mutex_lock(&e->lock);
    c = sfu_hmap_get(&e->consumers, &consumer_id);
    if (c == NULL) {
        rc = -ENOENT;
        goto done;
    }
    if (c->src->transport_id == src_transport && c->src->ssrc == src_ssrc) {
        cancel_switch(e, c);
        goto done;
    }
    if (c->target == NULL || c->target->transport_id != src_transport ||
        c->target->ssrc != src_ssrc) {
        s = engine_stream(e, src_transport, src_ssrc, 1);
        if (s == NULL || cons_reserve(s) != 0) {
            if (s != NULL) {
                maybe_drop_stream(e, s);
            }
            rc = -ENOMEM;
            goto done;
        }
        cancel_switch(e, c);
        s->cons[s->ncons++] = c;
        c->target = s;
        if (c->cache_size > 0) {
            resize_ring(s);
        }
    }
    c->target_clock = clock_rate;
    if (c->gate == SFU_GATE_NONE) {
        engine_complete_switch(e, c); /* no keyframe rule to wait for */
    }
done:
    pthread_mutex_unlock(&e->lock);
    return rc;
}

int sfu_engine_consumer_source(sfu_engine *e, int64_t consumer_id, int64_t *src_transport,
                               uint32_t *src_ssrc) {
    consumer *c;
    int rc = 0;
    pthread_mutex_lock(&e->lock);
    c = sfu_hmap_get(&e->consumers, &consumer_id);
    if (c == NULL) {
        rc = -ENOENT;
    } else {
        *src_transport = c->src_transport;
        *src_ssrc = c->src_ssrc;
    }
    pthread_mutex_unlock(&e->lock);
    return rc;
}

/* ---- RTCP out and retransmissions ---- */

int sfu_engine_send_rtcp(sfu_engine *e, int64_t transport_id, const uint8_t *data, size_t len) {
    transport *t;
    uint8_t *buf;
    size_t cap = OUT_HEADROOM + len + SFU_SRTP_MAX_TRAILER;
    size_t n = len;
    int rc;
    buf = cap <= OUT_BUF_SIZE ? NULL : malloc(cap);
    if (cap > OUT_BUF_SIZE && buf == NULL) {
        return -ENOMEM;
    }
    pthread_mutex_lock(&e->lock);
    if (buf == NULL) {
        buf = e->scratch;
    }
    t = sfu_hmap_get(&e->transports, &transport_id);
    if (t != NULL && t->tx != NULL && t->has_dest) {
        memcpy(buf + OUT_HEADROOM, data, len);
        rc = sfu_srtp_protect_rtcp(t->tx, buf + OUT_HEADROOM, &n, cap - OUT_HEADROOM);
        if (rc != SFU_SRTP_OK) {
            t->c.srtp_errors++;
        } else if (engine_socket(e, t->dest_socket) != NULL) {
            engine_send_to_dest(e, t, buf + OUT_HEADROOM, n);
            t->c.rtcp_out++;
        }
    }
    if (buf != e->scratch) {
        free(buf);
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}

int sfu_engine_retransmit(sfu_engine *e, int64_t consumer_id, const uint16_t *seqs, size_t n) {
    consumer *c;
    transport *t;
    istream *s;
    size_t i;
    int found = 0;
    pthread_mutex_lock(&e->lock);
    c = sfu_hmap_get(&e->consumers, &consumer_id);
    if (c == NULL || c->log == NULL) {
        goto done;
    }
    t = c->dst;
    if (!t->has_dest || t->tx == NULL || engine_socket(e, t->dest_socket) == NULL) {
        goto done;
    }
    sfu_srtp_set_allow_repeat_tx(t->tx, 1);
    for (i = 0; i < n; i++) {
        const log_entry *le = &c->log[seqs[i] % c->cache_size];
        const cache_slot *slot;
        uint8_t *p = e->scratch + OUT_HEADROOM;
        size_t len;
        if (le->gen == 0 || le->out_seq != seqs[i]) {
            continue;
        }
        /* sent from the current source, or from the one before the last switch */
        s = le->gen == c->gen ? c->src : le->gen == c->prev_gen ? c->prev_src : NULL;
        if (s == NULL || s->ring == NULL) {
            continue;
        }
        slot = &s->ring[le->serial % s->ring_size];
        if (slot->serial != le->serial || slot->len + OUT_HEADROOM + SFU_SRTP_MAX_TRAILER >
                                              OUT_BUF_SIZE) {
            continue;
        }
        memcpy(p, slot->data, slot->len);
        sfu_rtp_rewrite(p, le->out_pt, le->out_seq, le->out_ts, c->dst_ssrc);
        len = slot->len;
        if (sfu_srtp_protect(t->tx, p, &len, OUT_BUF_SIZE - OUT_HEADROOM) != SFU_SRTP_OK) {
            continue; /* older than the sender's replay window */
        }
        engine_send_to_dest(e, t, p, len);
        c->out->retransmitted++;
        found++;
    }
    sfu_srtp_set_allow_repeat_tx(t->tx, 0);
done:
    pthread_mutex_unlock(&e->lock);
    return found;
}

/* ---- statistics ---- */

void sfu_engine_get_counters(sfu_engine *e, sfu_engine_counters *out) {
    uint64_t delivered, dropped;
    pthread_mutex_lock(&e->ctl_lock);
    delivered = e->ctl_delivered;
    dropped = e->ctl_dropped;
    pthread_mutex_unlock(&e->ctl_lock);
    pthread_mutex_lock(&e->lock);
    *out = e->c;
    pthread_mutex_unlock(&e->lock);
    out->control_delivered = delivered;
    out->control_dropped = dropped;
}

int sfu_engine_transport_stats(sfu_engine *e, int64_t transport_id, sfu_transport_counters *tc,
                               sfu_stream_counters *in, size_t in_cap, size_t *in_n,
                               sfu_stream_counters *out, size_t out_cap, size_t *out_n) {
    transport *t;
    istream *s;
    ostream *o;
    size_t n;
    pthread_mutex_lock(&e->lock);
    t = sfu_hmap_get(&e->transports, &transport_id);
    if (t == NULL) {
        pthread_mutex_unlock(&e->lock);
        return -ENOENT;
    }
    *tc = t->c;
    for (n = 0, s = t->in_head; s != NULL; s = s->next_in_transport, n++) {
        if (n < in_cap) {
            sfu_stream_counters *x = &in[n];
            memset(x, 0, sizeof(*x));
            x->ssrc = s->ssrc;
            x->packets = s->packets;
            x->bytes = s->bytes;
            x->highest_seq = s->highest_seq;
            x->base_seq = s->base_seq;
            x->jitter = s->jitter;
            x->lost = s->lost;
        }
    }
    *in_n = n;
    for (n = 0, o = t->out_head; o != NULL; o = o->next, n++) {
        if (n < out_cap) {
            sfu_stream_counters *x = &out[n];
            memset(x, 0, sizeof(*x));
            x->ssrc = o->ssrc;
            x->packets = o->packets;
            x->bytes = o->bytes;
            x->highest_seq = -1;
            x->base_seq = -1;
            x->last_rtp_ts = o->last_rtp_ts;
            x->last_send_time = o->last_send_time;
            x->retransmitted = o->retransmitted;
        }
    }
    *out_n = n;
    pthread_mutex_unlock(&e->lock);
    return 0;
}

/* ---- control queue ---- */

int sfu_engine_ctl_fd(const sfu_engine *e) { return e->ctlfd; }

void sfu_engine_ctl_clear_fd(sfu_engine *e) {
    uint64_t v;
    if (e->ctlfd >= 0 && read(e->ctlfd, &v, sizeof(v)) < 0) {
        /* EAGAIN: nothing signalled */
    }
}

size_t sfu_engine_ctl_take(sfu_engine *e, size_t *first) {
    size_t n;
    pthread_mutex_lock(&e->ctl_lock);
    *first = e->ctl_head;
    n = e->ctl_count;
    pthread_mutex_unlock(&e->ctl_lock);
    return n;
}

const sfu_ctl_entry *sfu_engine_ctl_entry(const sfu_engine *e, size_t index) {
    return &e->ctl[index % SFU_ENGINE_CTL_CAP];
}

void sfu_engine_ctl_release(sfu_engine *e, size_t n) {
    pthread_mutex_lock(&e->ctl_lock);
    if (n > e->ctl_count) {
        n = e->ctl_count;
    }
    e->ctl_head = (e->ctl_head + n) % SFU_ENGINE_CTL_CAP;
    e->ctl_count -= n;
    e->ctl_delivered += n;
    pthread_mutex_unlock(&e->ctl_lock);
}
