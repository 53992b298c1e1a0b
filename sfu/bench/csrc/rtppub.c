/*
 * rtppub: the watchers bench's publisher. Plain RTP into an `rtp` mountpoint, as ffmpeg would
 * send it: VP8 video in frames (FPS per second, each frame's packets back to back, a key frame
 * every KEY_EVERY frames, the marker on a frame's last packet) and Opus-sized audio, one packet
 * every 1/AUDIO_PPS s. Video packets are 1,200 bytes, audio 172. Every payload ends with a
 * 20-byte trailer: "SFUW", a 64-bit packet counter and the CLOCK_MONOTONIC send time in ns
 * (big-endian), which the receiver reads from the packets it decrypts.
 *
 *   usage: rtppub SERVER_IP VIDEO_PORT AUDIO_PORT VIDEO_PPS AUDIO_PPS FPS KEY_EVERY
 *
 * Prints {"ready": true}; then on stdin: "stats" -> one JSON line of counters; "quit" or end of
 * input -> exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define VIDEO_BYTES 1200
#define AUDIO_BYTES 172
#define TRAILER 20
#define VIDEO_PT 96
#define AUDIO_PT 111
#define VIDEO_SSRC 0x5eed0001u
#define AUDIO_SSRC 0x5eed0002u

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void put64(uint8_t *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

struct stream {
    int fd;
    struct sockaddr_in to;
    uint16_t seq;
    uint32_t ts;
    uint32_t ssrc;
    uint8_t pt;
    uint64_t sent, errors;
};

static uint64_t counter;

static void send_packet(struct stream *s, uint8_t *buf, size_t len, int marker) {
    buf[0] = 0x80;
    buf[1] = (uint8_t)((marker ? 0x80 : 0) | s->pt);
    buf[2] = s->seq >> 8;
    buf[3] = s->seq & 0xff;
    put32(buf + 4, s->ts);
    put32(buf + 8, s->ssrc);
    memcpy(buf + len - TRAILER, "SFUW", 4);
    put64(buf + len - 16, ++counter);
    put64(buf + len - 8, now_ns());
    if (sendto(s->fd, buf, len, 0, (struct sockaddr *)&s->to, sizeof s->to) < 0)
        s->errors++;
    else
        s->sent++;
    s->seq++;
}

/* One video frame of n packets: VP8 payload descriptor (S on the first), VP8 header P bit. */
static void send_frame(struct stream *s, int n, int key) {
    uint8_t buf[VIDEO_BYTES];
    memset(buf, 0, sizeof buf);
    for (int i = 0; i < n; i++) {
        buf[12] = i == 0 ? 0x10 : 0x00; /* X=0 N=0 S=1 on the first packet, PID=0 */
        if (i == 0) {
            buf[13] = key ? 0x10 : 0x11; /* show_frame=1, P=0 (key) or 1 */
            buf[16] = 0x9d; buf[17] = 0x01; buf[18] = 0x2a; /* key frame start code */
        }
        send_packet(s, buf, sizeof buf, i == n - 1);
    }
}

static int open_stream(struct stream *s, const char *ip, int port, uint32_t ssrc, uint8_t pt) {
    memset(s, 0, sizeof *s);
    s->fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (s->fd < 0) return -1;
    s->to.sin_family = AF_INET;
    s->to.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &s->to.sin_addr) != 1) return -1;
    s->ssrc = ssrc;
    s->pt = pt;
    s->seq = (uint16_t)(rand() & 0xffff);
    s->ts = (uint32_t)rand();
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: rtppub SERVER_IP VIDEO_PORT AUDIO_PORT VIDEO_PPS AUDIO_PPS FPS "
                        "KEY_EVERY\n");
        return 2;
    }
    srand((unsigned)now_ns());
    struct stream v, a;
    double video_pps = atof(argv[4]), audio_pps = atof(argv[5]), fps = atof(argv[6]);
    int key_every = atoi(argv[7]);
    if (open_stream(&v, argv[1], atoi(argv[2]), VIDEO_SSRC, VIDEO_PT) < 0 ||
        open_stream(&a, argv[1], atoi(argv[3]), AUDIO_SSRC, AUDIO_PT) < 0 || fps <= 0 ||
        audio_pps <= 0 || key_every <= 0) {
        fprintf(stderr, "rtppub: bad arguments or no socket: %s\n", strerror(errno));
        return 2;
    }
    uint64_t frame_ns = (uint64_t)(1e9 / fps), audio_ns = (uint64_t)(1e9 / audio_pps);
    uint64_t t0 = now_ns(), next_v = t0, next_a = t0, frames = 0, keyframes = 0;
    printf("{\"ready\": true}\n");
    fflush(stdout);
    char line[256];
    size_t used = 0;
    for (;;) {
        uint64_t t = now_ns();
        while (next_v <= t) {
            int n = (int)((double)(frames + 1) * video_pps / fps) -
                    (int)((double)frames * video_pps / fps);
            int key = frames % (uint64_t)key_every == 0;
            if (n > 0) send_frame(&v, n, key);
            keyframes += key;
            frames++;
            v.ts += (uint32_t)(90000 / fps);
            next_v += frame_ns;
        }
        while (next_a <= t) {
            uint8_t buf[AUDIO_BYTES];
            memset(buf, 0, sizeof buf);
            send_packet(&a, buf, sizeof buf, 0);
            a.ts += (uint32_t)(48000 / audio_pps);
            next_a += audio_ns;
        }
        uint64_t next = next_v < next_a ? next_v : next_a;
        t = now_ns();
        uint64_t wait = next > t ? next - t : 0;
        struct timespec ts = {(time_t)(wait / 1000000000ull), (long)(wait % 1000000000ull)};
        struct pollfd p = {0, POLLIN, 0};
        int r = ppoll(&p, 1, &ts, NULL);
        if (r <= 0) continue;
        ssize_t got = read(0, line + used, sizeof line - 1 - used);
        if (got <= 0) break;
        used += (size_t)got;
        line[used] = 0;
        char *nl;
        int quit = 0;
        while ((nl = strchr(line, '\n')) != NULL) {
            *nl = 0;
            if (strcmp(line, "stats") == 0) {
                printf("{\"video\": %llu, \"audio\": %llu, \"frames\": %llu, \"keyframes\": "
                       "%llu, \"send_errors\": %llu, \"t_ns\": %llu}\n",
                       (unsigned long long)v.sent, (unsigned long long)a.sent,
                       (unsigned long long)frames, (unsigned long long)keyframes,
                       (unsigned long long)(v.errors + a.errors),
                       (unsigned long long)now_ns());
                fflush(stdout);
            } else if (strcmp(line, "quit") == 0) {
                quit = 1;
            }
            size_t rest = used - (size_t)(nl + 1 - line);
            memmove(line, nl + 1, rest + 1);
            used = rest;
        }
        if (quit) break;
        if (used >= sizeof line - 1) used = 0;
    }
    return 0;
}
