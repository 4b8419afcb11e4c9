/* query: the request's query string (?a=1&b=2): percent-decoded lookups and bounded integers. */
#ifndef PGAPI_QUERY_H
#define PGAPI_QUERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/http/http.h"

/* Copies the decoded value of `name` into buf: 1 found, 0 absent, -1 malformed or longer than cap-1. */
int query_get(const char *query, const char *name, char *buf, size_t cap);
/* An integer parameter in [min,max], def when absent; -1 after answering 400. */
int query_int(struct http_request *req, const char *name, int64_t min, int64_t max, int64_t def,
              int64_t *out);

#endif
