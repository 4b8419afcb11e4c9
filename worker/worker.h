/* worker: one process, one libevent loop; owns its HTTP connections, database pool and cache client.
 * Everything a worker mutates lives in its struct worker, private to worker.c: the subsystems get what
 * they use through their own interfaces (api.h for the API code, telemetry.h, metrics_page.h). */
#ifndef PGAPI_WORKER_H
#define PGAPI_WORKER_H

#include <stdbool.h>

#include "common/config.h"

struct consistency;
struct capacity;
struct metrics;
struct clients;

/* What the master maps before the first fork and every worker shares. */
struct worker_shared {
    struct consistency *consistency;
    struct capacity *capacity;
    struct metrics *metrics;
    struct clients *clients;
};

/* The generation's listening sockets; metrics_fd -1 when [metrics] listen is off. */
struct worker_sockets {
    int listen_fd;
    int metrics_fd;
};

/* Runs a worker until it is told to stop; returns the exit code. `ready_fd` receives this process's
 * pid once it accepts connections, then is closed. */
int worker_run(const struct config *cfg, const struct worker_shared *shared,
               const struct worker_sockets *socks, int slot, unsigned generation, int ready_fd);

#endif
