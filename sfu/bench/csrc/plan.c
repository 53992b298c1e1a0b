/* Parser of the bench plan (see plan.h). */
#define _GNU_SOURCE
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t plan_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

size_t plan_salt_len(const plan *p) { return p->profile == 7 ? 12 : 14; }

int plan_transport_index(const plan *p, int64_t tid) {
    for (int i = 0; i < p->n_transports; i++)
        if (p->transports[i].tid == tid) return i;
    return -1;
}

static int parse_hex(const char *s, uint8_t *out, size_t n) {
    if (strlen(s) != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        out[i] = (uint8_t)v;
    }
    return 0;
}

static int parse_kind(const char *s) {
    if (strcmp(s, "video") == 0) return PLAN_KIND_VIDEO;
    if (strcmp(s, "audio") == 0) return PLAN_KIND_AUDIO;
    return -1;
}

static int find_stream(const plan *p, int tidx, uint32_t ssrc) {
    for (int i = 0; i < p->n_streams; i++)
        if (p->streams[i].tidx == tidx && p->streams[i].ssrc == ssrc) return i;
    return -1;
}

static int parse_line(plan *p, char *line) {
    char *save = NULL;
    char *tok[8];
    int n = 0;
    for (char *t = strtok_r(line, " \t\r\n", &save); t && n < 8; t = strtok_r(NULL, " \t\r\n", &save))
        tok[n++] = t;
    if (n == 0 || tok[0][0] == '#') return 0;
    if (strcmp(tok[0], "profile") == 0 && n == 2) {
        p->profile = atoi(tok[1]);
        return (p->profile == 0 || p->profile == 1 || p->profile == 7) ? 0 : -1;
    }
    if (strcmp(tok[0], "server") == 0 && n == 3) {
        snprintf(p->server_ip, sizeof p->server_ip, "%s", tok[1]);
        p->server_port = atoi(tok[2]);
        return 0;
    }
    if (strcmp(tok[0], "load") == 0 && n == 2) {
        snprintf(p->load_ip, sizeof p->load_ip, "%s", tok[1]);
        return 0;
    }
    size_t salt = plan_salt_len(p);
    if (strcmp(tok[0], "transport") == 0 && n == 7) {
        if (p->n_transports >= PLAN_MAX_TRANSPORTS) return -1;
        plan_transport *t = &p->transports[p->n_transports];
        memset(t, 0, sizeof *t);
        t->tid = strtoll(tok[1], NULL, 10);
        t->port = atoi(tok[2]);
        if (parse_hex(tok[3], t->up_key, 16) || parse_hex(tok[4], t->up_salt, salt) ||
            parse_hex(tok[5], t->down_key, 16) || parse_hex(tok[6], t->down_salt, salt))
            return -1;
        p->n_transports++;
        return 0;
    }
    if (strcmp(tok[0], "stream") == 0 && n == 4) {
        if (p->n_streams >= PLAN_MAX_STREAMS) return -1;
        plan_stream *s = &p->streams[p->n_streams];
        s->tidx = plan_transport_index(p, strtoll(tok[1], NULL, 10));
        s->ssrc = (uint32_t)strtoul(tok[2], NULL, 10);
        s->kind = parse_kind(tok[3]);
        s->consumers = 0;
        if (s->tidx < 0 || s->kind < 0) return -1;
        p->n_streams++;
        return 0;
    }
    if (strcmp(tok[0], "consumer") == 0 && n == 7) {
        if (p->n_consumers >= PLAN_MAX_CONSUMERS) return -1;
        plan_consumer *c = &p->consumers[p->n_consumers];
        c->cid = strtoll(tok[1], NULL, 10);
        c->src_tidx = plan_transport_index(p, strtoll(tok[2], NULL, 10));
        c->src_ssrc = (uint32_t)strtoul(tok[3], NULL, 10);
        c->dst_tidx = plan_transport_index(p, strtoll(tok[4], NULL, 10));
        c->dst_ssrc = (uint32_t)strtoul(tok[5], NULL, 10);
        c->kind = parse_kind(tok[6]);
        if (c->src_tidx < 0 || c->dst_tidx < 0 || c->kind < 0) return -1;
        int si = find_stream(p, c->src_tidx, c->src_ssrc);
        if (si < 0) return -1;
        p->streams[si].consumers++;
        p->n_consumers++;
        return 0;
    }
    return -1;
}

int plan_load(plan *p, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return -1;
    }
    memset(p, 0, sizeof *p);
    p->profile = -1;
    char line[512];
    int lineno = 0;
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char copy[512];
        snprintf(copy, sizeof copy, "%s", line);
        if (parse_line(p, line) != 0) {
            fprintf(stderr, "%s:%d: bad plan line: %s", path, lineno, copy);
            rc = -1;
            break;
        }
    }
    fclose(f);
    if (rc == 0 && (p->profile < 0 || p->server_port <= 0 || !p->load_ip[0])) {
        fprintf(stderr, "%s: plan lacks profile, server or load\n", path);
        rc = -1;
    }
    return rc;
}
