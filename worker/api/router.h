/* router: maps method + path to a handler; 404 for unknown paths, 405 (with Allow) for known paths. The
 * routes are the hand-written health ones, then every resource's standard routes, generated from the
 * registry (resource.h). */
#ifndef PGAPI_ROUTER_H
#define PGAPI_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "worker/api/api.h"
#include "worker/http/http.h"

/* Path parameters: every ":id" segment, in order, as a validated positive 64-bit integer. */
struct route_args {
    int64_t id[2];
    int nid;
};

typedef void (*route_fn)(struct api_context *api, struct http_request *req, const struct route_args *args);

/* A resource's standard routes. A resource with a parent is created and listed by parent only under
 * the parent's item (/users/:id/posts); one without has POST on its collection. */
enum route_kind {
    ROUTE_LIST,             /* GET /<collection> */
    ROUTE_CREATE,           /* POST /<collection>: resources without a parent */
    ROUTE_GET,              /* GET /<collection>/:id */
    ROUTE_REPLACE,          /* PUT /<collection>/:id */
    ROUTE_PATCH,            /* PATCH /<collection>/:id */
    ROUTE_DELETE,           /* DELETE /<collection>/:id */
    ROUTE_LIST_BY_PARENT,   /* GET /<parent's collection>/:id/<collection> */
    ROUTE_CREATE_BY_PARENT, /* POST /<parent's collection>/:id/<collection> */
    ROUTE_KINDS
};

#define ROUTER_PATTERN_MAX 96
#define ROUTER_ALLOW_MAX 128

struct resource;

/* What a method and path match: route `index` (-1: none) and its arguments; with no route, the methods
 * the path has (the Allow header of a 405; "" for a 404). */
struct router_match {
    int index;
    struct route_args args;
    route_fn fn;                /* a hand-written route's handler, or NULL */
    const struct resource *res; /* a generated route's resource and kind */
    enum route_kind kind;
    char allow[ROUTER_ALLOW_MAX];
};

/* Finds the route of method (HEAD is GET) and path (router_dispatch first strips a trailing '/':
 * "/users/" is "/users"). */
void router_find(int method, const char *path, struct router_match *m);

/* The http_server handler (its context: the struct api_context): finds the route and calls it. */
void router_dispatch(struct http_request *req);

/* Route i (0 <= i < router_route_count()) as method and pattern ("/users/:id", into pattern); for
 * metrics labels and `pgapi routes`. */
int router_route_count(void);
void router_route_label(int i, const char **method, char *pattern, size_t cap);

#endif
