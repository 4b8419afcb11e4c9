/* telemetry: a worker's side of the shared metrics table (common/metrics.h). Requests are counted there
 * as they are answered; the pool's and the cache's own counters and gauges are published there once a
 * second (and before this worker renders a scrape), as the change since the last publication. */
#ifndef PGAPI_TELEMETRY_H
#define PGAPI_TELEMETRY_H

#include <stdint.h>

struct worker;
struct http_request;
struct telemetry;

/* NULL (logged) on failure; with no shared table (w->metrics NULL) returns NULL quietly. */
struct telemetry *telemetry_new(struct worker *w);
/* Publishes what is left, then frees. */
void telemetry_free(struct telemetry *t);
/* The HTTP servers' observer (http_server_observe): counts one answered request. */
void telemetry_observe(void *arg, const struct http_request *req, uint64_t duration_us);
void telemetry_publish(struct telemetry *t);

#endif
