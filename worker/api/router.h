/* router: maps method + path to a handler; 404 for unknown paths, 405 (with Allow) for known paths. */
#ifndef PGAPI_ROUTER_H
#define PGAPI_ROUTER_H

#include <stdint.h>

#include "worker/http/http.h"

struct worker;

/* Path parameters: every ":id" segment, in order, as a validated positive 64-bit integer. */
struct route_args {
    int64_t id[2];
    int nid;
};

typedef void (*route_fn)(struct worker *w, struct http_request *req, const struct route_args *args);

/* The http_server handler: finds the route and calls it. */
void router_dispatch(struct http_request *req);

/* For metrics labels: route i (0 <= i < router_route_count()) as method and pattern ("/users/:id"). */
int router_route_count(void);
void router_route_label(int i, const char **method, const char **pattern);

#endif
