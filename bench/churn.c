/* churn: short TCP connections at a steady rate, for bench/mark_churn.py.
 *
 *   churn server ADDR PORT          accept, read the request, answer 2,000 bytes, close first
 *                                   (the server's side ends in TIME_WAIT, as HTTP/1.0's does)
 *   churn client ADDR PORT RATE     RATE connections a second: connect, 200 bytes, read the
 *                                   answer to the server's close, close
 *
 * One thread each; the client paces itself on CLOCK_MONOTONIC and prints, every second, the
 * connections it completed. Built by the benchmark (cc -O2), not shipped. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", ip);
        exit(2);
    }
    return a;
}

static int __attribute__((noreturn)) serve_forever(int s);

static int serve(const char *ip, int port) {
    struct sockaddr_in a = addr_of(ip, port);
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) {
        perror("bind/listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    serve_forever(s);
}

static int serve_forever(int s) {
    static char answer[2000], buf[4096];
    memset(answer, 'a', sizeof answer);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        if (read(c, buf, sizeof buf) > 0)
            if (write(c, answer, sizeof answer) < 0)
                perror("write");
        close(c);
    }
}

static int __attribute__((noreturn)) client(const char *ip, int port, double rate) {
    struct sockaddr_in a = addr_of(ip, port);
    static char request[200], buf[8192];
    double next = now(), report = next + 1;
    long done = 0, failed = 0;
    memset(request, 'r', sizeof request);
    for (;;) {
        double t = now();
        if (t < next) {
            struct timespec d = {0, (long)((next - t) * 1e9)};
            nanosleep(&d, NULL);
        }
        next += 1.0 / rate;
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a) == 0 &&
            write(c, request, sizeof request) == sizeof request) {
            while (read(c, buf, sizeof buf) > 0)
                ;
            done++;
        } else {
            failed++;
        }
        close(c);
        if (now() >= report) {
            printf("%ld %ld\n", done, failed);
            fflush(stdout);
            report += 1;
        }
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 4 && !strcmp(argv[1], "server"))
        return serve(argv[2], atoi(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "client"))
        return client(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: churn server ADDR PORT | churn client ADDR PORT RATE\n");
    return 2;
}
