/* listener: binds the listening socket the master opens once and every worker inherits. */
#ifndef PGAPI_LISTENER_H
#define PGAPI_LISTENER_H

/* Returns a non-blocking listening fd bound to host:port, or -1 (logged). */
int listener_open(const char *host, int port, int backlog) __attribute__((warn_unused_result));

/* The listening sockets systemd passed (socket activation: LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES, as
 * sd_listen_fds(3) reads them, the variables then unset): the one named "metrics" serves /metrics, the
 * other one the API. -1 for each one not passed. */
struct listener_passed {
    int http_fd;
    int metrics_fd;
};
/* 0 with none passed (each -1) or the sockets in *out; -1 (logged) when what was passed is unusable. */
int listener_inherit(struct listener_passed *out) __attribute__((warn_unused_result));

#endif
