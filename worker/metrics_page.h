/* metrics_page: the handler of the metrics listener: GET /metrics renders every worker's slot of the
 * shared metrics table in the Prometheus text format (0.0.4), each series labelled worker="<slot>". */
#ifndef PGAPI_METRICS_PAGE_H
#define PGAPI_METRICS_PAGE_H

#include "worker/http/http.h"

struct config;
struct metrics;
struct telemetry;
struct metrics_page;

/* What a scrape renders: the shared table of `metrics` (NULL: every scrape answers 500), with this
 * worker's own numbers published first through `telemetry` (may be NULL). NULL (logged) without memory. */
struct metrics_page *metrics_page_new(const struct config *cfg, struct metrics *metrics,
                                      struct telemetry *telemetry);
void metrics_page_free(struct metrics_page *mp);
/* The http_server handler of the metrics listener (its ctx is a struct metrics_page). */
void metrics_page_dispatch(struct http_request *req);

#endif
