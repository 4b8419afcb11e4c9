/* worker: one process, one libevent loop; owns its HTTP connections, database pool and cache client.
 * Everything a worker mutates lives in its struct worker. */
#ifndef PGAPI_WORKER_H
#define PGAPI_WORKER_H

#include <stdbool.h>

#include "common/config.h"

struct event_base;
struct event;
struct http_server;
struct pool;
struct cache;
struct fences;

struct worker {
    const struct config *cfg;
    int slot;
    unsigned generation;
    struct event_base *base;
    int listen_fd;
    struct event *accept_ev;
    struct event *accept_retry_ev;
    struct event *sigquit_ev, *sigterm_ev, *drain_timer_ev;
    struct http_server *http;
    struct pool *pool;
    struct cache *cache;
    struct local_cache *local;  /* NULL when off: redis disabled or local_entries = 0 */
    struct fences *fences;      /* shared with every worker: commit LSNs of acknowledged writes */
    bool draining;
    int exit_code;
};

/* Runs a worker until it is told to stop; returns the exit code. `ready_fd` receives this process's
 * pid once it accepts connections, then is closed. */
int worker_run(const struct config *cfg, struct fences *fences, int listen_fd, int slot, unsigned generation,
               int ready_fd);

#endif
