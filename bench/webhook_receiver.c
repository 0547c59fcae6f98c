/*
 * A webhook receiver for benchmarks that costs the shared machine as little as possible:
 * one thread, epoll, HTTP/1.1 keep-alive; every request (pipelined ones too) is answered
 * 204 once its body (Content-Length) is in; the body is not parsed and nothing is verified.
 * It stands in for a receiver on another machine: on the benchmark's two cores, the Python
 * receiver (webhook_receiver.py) costs about 30-45 us of CPU per event, this one a few.
 *
 *   cc -O2 -o /tmp/webhook_receiver bench/webhook_receiver.c
 *   /tmp/webhook_receiver PORT [COUNT_FILE]
 *
 * Every second it writes "<requests> <bytes>" to COUNT_FILE (as webhook_receiver.py does).
 * Requests with a chunked body are not supported (jsonsync sends Content-Length).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD 65536
#define BUF (MAX_HEAD * 2)

static const char ANSWER[] = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";

struct conn {
    int fd;
    size_t len;       /* bytes in buf */
    long body_left;   /* body bytes of the current request still to skip */
    char buf[BUF];
};

static unsigned long long n_requests, n_bytes;
static volatile sig_atomic_t stopping;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static void write_count(const char *path) {
    if (!path) return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "%llu %llu\n", n_requests, n_bytes);
    fclose(f);
    rename(tmp, path);
}

/* The value of a Content-Length header in head[0..n), or 0. */
static long content_length(const char *head, size_t n) {
    const char *p = head, *end = head + n;
    while (p < end) {
        const char *eol = memmem(p, end - p, "\r\n", 2);
        if (!eol) eol = end;
        if (eol - p > 15 && strncasecmp(p, "content-length:", 15) == 0) return strtol(p + 15, NULL, 10);
        p = eol + 2;
    }
    return 0;
}

/* Consumes what c->buf holds; returns the number of complete requests, -1 to close. */
static int consume(struct conn *c) {
    int answers = 0;
    size_t pos = 0;
    for (;;) {
        if (c->body_left > 0) {
            size_t take = c->len - pos < (size_t)c->body_left ? c->len - pos : (size_t)c->body_left;
            pos += take;
            c->body_left -= take;
            if (c->body_left > 0) break;
            answers++;
            continue;
        }
        char *end = memmem(c->buf + pos, c->len - pos, "\r\n\r\n", 4);
        if (!end) {
            if (c->len - pos > MAX_HEAD) return -1;
            break;
        }
        size_t head_len = end - (c->buf + pos);
        long length = content_length(c->buf + pos, head_len);
        if (length < 0) return -1;
        pos += head_len + 4;
        n_bytes += length;
        c->body_left = length;
        if (length == 0) answers++;
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
    n_requests += answers;
    return answers;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [COUNT_FILE]\n", argv[0]);
        return 2;
    }
    const char *count_file = argc > 2 ? argv[2] : NULL;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1024) < 0) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[256];
    time_t last = 0;
    char answers[sizeof ANSWER * 64];
    while (!stopping) {
        int n = epoll_wait(ep, events, 256, 1000);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    if (!c) { close(fd); continue; }
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            ssize_t got = read(c->fd, c->buf + c->len, BUF - c->len);
            int k = got > 0 ? (c->len += got, consume(c)) : -1;
            if (got < 0 && errno == EAGAIN) continue;
            if (k < 0) {
                close(c->fd);
                free(c);
                continue;
            }
            while (k > 0) {
                int m = k > 64 ? 64 : k;
                for (int j = 0; j < m; j++) memcpy(answers + j * (sizeof ANSWER - 1), ANSWER, sizeof ANSWER - 1);
                /* Short writes (a full socket buffer: only with many pipelined requests) are
                 * finished before reading more: the answers must all go, in order. */
                size_t left = m * (sizeof ANSWER - 1), off = 0;
                while (left > 0) {
                    ssize_t w = write(c->fd, answers + off, left);
                    if (w < 0 && errno != EAGAIN && errno != EINTR) break;
                    if (w > 0) { off += w; left -= w; }
                }
                if (left > 0) break;
                k -= m;
            }
        }
        time_t now = time(NULL);
        if (now != last) {
            last = now;
            write_count(count_file);
        }
    }
    write_count(count_file);
    printf("%llu %llu\n", n_requests, n_bytes);
    return 0;
}
