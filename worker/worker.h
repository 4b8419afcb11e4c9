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
struct rooms;

/* What the master maps before the first fork and every worker shares. */
struct worker_shared {
    struct fences *fences;
    struct rooms *rooms;
};

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
    struct rooms *rooms;        /* shared with every worker: who has room under max_connections */
    bool draining;
    bool room_published;        /* what this worker last said in rooms */
    unsigned long refused;      /* connections refused at max_connections since the last log line */
    long refused_logged_s;      /* when that line was written (monotonic seconds) */
    int exit_code;
};

/* Runs a worker until it is told to stop; returns the exit code. `ready_fd` receives this process's
 * pid once it accepts connections, then is closed. */
int worker_run(const struct config *cfg, const struct worker_shared *shared, int listen_fd, int slot,
               unsigned generation, int ready_fd);

#endif
