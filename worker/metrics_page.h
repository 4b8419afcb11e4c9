/* metrics_page: the handler of the metrics listener: GET /metrics renders every worker's slot of the
 * shared metrics table in the Prometheus text format (0.0.4), each series labelled worker="<slot>". */
#ifndef PGAPI_METRICS_PAGE_H
#define PGAPI_METRICS_PAGE_H

#include "worker/http/http.h"

/* The http_server handler of the metrics listener (its ctx is the worker). */
void metrics_page_dispatch(struct http_request *req);

#endif
