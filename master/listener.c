/* listener: one shared socket for all workers of all generations, so a reload never refuses a
 * connection: the kernel queue stays open while old workers leave and new ones arrive. */
#include "master/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"

#define LISTEN_FDS_START 3 /* SD_LISTEN_FDS_START */
#define LISTEN_FDS_MAX 16

/* The i-th name of LISTEN_FDNAMES (colon-separated), "" when absent. */
static void passed_name(const char *names, int i, char *out, size_t cap)
{
    out[0] = '\0';
    for (int k = 0; names && *names; k++) {
        size_t len = strcspn(names, ":");
        if (k == i) {
            snprintf(out, cap, "%.*s", (int)len, names);
            return;
        }
        names += len + (names[len] == ':');
    }
}

/* A passed descriptor pgapi can accept on: a listening stream socket, then non-blocking, close-on-exec. */
static int passed_check(int fd)
{
    int type = 0, listening = 0;
    socklen_t len = sizeof(type), len2 = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len2) < 0) {
        log_error("socket activation: fd %d: %s", fd, strerror(errno));
        return -1;
    }
    if (type != SOCK_STREAM || !listening) {
        log_error(
            "socket activation: fd %d is not a listening stream socket (ListenStream= in the socket unit)",
            fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        log_error("socket activation: fd %d: %s", fd, strerror(errno));
        return -1;
    }
    return 0;
}

/* How many descriptors were passed to this process: 0 when none (or they were for another pid). */
static int passed_count(void)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    if (!pid || !fds)
        return 0;
    char *end;
    long p = strtol(pid, &end, 10);
    if (*end || p != (long)getpid())
        return 0; /* meant for another process (a shell in between): not ours */
    long n = strtol(fds, &end, 10);
    if (*end || n < 0 || n > LISTEN_FDS_MAX) {
        log_error("socket activation: LISTEN_FDS=%s is not a count of 0 to %d", fds, LISTEN_FDS_MAX);
        return -1;
    }
    return (int)n;
}

/* Whose it is: named "metrics", else the API's (the first unnamed or otherwise named one). */
static int passed_assign(struct listener_passed *out, int fd, const char *name)
{
    int *slot = strcmp(name, "metrics") == 0 ? &out->metrics_fd : &out->http_fd;
    if (*slot >= 0) {
        log_error("socket activation: fd %d (\"%s\") is one socket too many: pgapi takes one for the API and "
                  "one named \"metrics\"",
                  fd, name);
        return -1;
    }
    *slot = fd;
    return 0;
}

int listener_inherit(struct listener_passed *out)
{
    *out = (struct listener_passed){ -1, -1 };
    int n = passed_count();
    char names[256];
    snprintf(names, sizeof(names), "%s", getenv("LISTEN_FDNAMES") ? getenv("LISTEN_FDNAMES") : "");
    unsetenv("LISTEN_PID"); /* the workers and anything they start are not meant */
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    for (int i = 0; i < n; i++) {
        char name[64];
        passed_name(names, i, name, sizeof(name));
        if (passed_check(LISTEN_FDS_START + i) < 0 || passed_assign(out, LISTEN_FDS_START + i, name) < 0)
            return -1;
    }
    if (n > 0 && out->http_fd < 0) {
        log_error("socket activation: no socket for the API among the %d passed (only \"metrics\")", n);
        return -1;
    }
    return n < 0 ? -1 : 0;
}

static int socket_bind_one(const struct addrinfo *ai, int backlog)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int listener_open(const char *host, int port, int backlog)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
    struct addrinfo *res = NULL;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        log_error("listen %s:%d: cannot resolve: %s", host, port, gai_strerror(rc));
        return -1;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket_bind_one(ai, backlog);
        if (fd < 0)
            err = errno;
    }
    freeaddrinfo(res);
    if (fd < 0)
        log_error("listen %s:%d: %s", host, port, strerror(err));
    return fd;
}
