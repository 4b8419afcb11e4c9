/* router: the hand-written routes, then the standard routes of every resource in registry order, each
 * generated from its declaration; a pattern segment ":id" matches a decimal id in 1..2^63-1 only, so
 * handlers never see a malformed id (anything else is a 404, like an unknown path). */
#include "worker/api/router.h"

#include <http_parser.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/consistency.h"
#include "common/metrics.h"
#include "worker/api/api.h"
#include "worker/api/auth.h"
#include "worker/api/handlers.h"
#include "worker/api/ratelimit.h"
#include "worker/api/resource.h"
#include "worker/http/reply.h"

struct hand_route {
    int method;
    const char *pattern;
    route_fn fn;
};

static const struct hand_route hand_routes[] = {
    { HTTP_GET, "/", handle_root },
    { HTTP_GET, "/healthz", handle_healthz },
    { HTTP_GET, "/readyz", handle_readyz },
    { HTTP_GET, "/openapi.yaml", handle_openapi },
};
#define NHAND ((int)(sizeof(hand_routes) / sizeof(hand_routes[0])))

/* The method of each kind of standard route (enum route_kind order) */
static const int kind_methods[ROUTE_KINDS] = {
    [ROUTE_LIST] = HTTP_GET,           [ROUTE_CREATE] = HTTP_POST,           [ROUTE_GET] = HTTP_GET,
    [ROUTE_REPLACE] = HTTP_PUT,        [ROUTE_PATCH] = HTTP_PATCH,           [ROUTE_DELETE] = HTTP_DELETE,
    [ROUTE_LIST_BY_PARENT] = HTTP_GET, [ROUTE_CREATE_BY_PARENT] = HTTP_POST,
};

_Static_assert(NHAND <= 8 && ROUTE_KINDS <= 8, "the metrics table needs a row per route");

/* One route, hand-written (pattern, fn) or generated (res, kind). */
struct route {
    int method;
    const char *pattern;
    route_fn fn;
    const struct resource *res;
    enum route_kind kind;
};

/* Walks the routes in index order. */
struct route_cursor {
    int index;    /* of the next route */
    int resource; /* registry position of the next generated route */
    int kind;
};

static bool kind_applies(const struct resource *r, enum route_kind kind)
{
    if (kind == ROUTE_CREATE)
        return !r->parent;
    if (kind == ROUTE_LIST_BY_PARENT || kind == ROUTE_CREATE_BY_PARENT)
        return r->parent != NULL;
    return true;
}

static bool kind_by_parent(enum route_kind kind)
{
    return kind == ROUTE_LIST_BY_PARENT || kind == ROUTE_CREATE_BY_PARENT;
}

static bool kind_on_collection(enum route_kind kind)
{
    return kind == ROUTE_LIST || kind == ROUTE_CREATE;
}

static void pattern_build(const struct route *rt, char *buf, size_t cap)
{
    const struct resource *r = rt->res;
    if (!r)
        snprintf(buf, cap, "%s", rt->pattern);
    else if (kind_on_collection(rt->kind))
        snprintf(buf, cap, "%s", r->path);
    else if (kind_by_parent(rt->kind))
        snprintf(buf, cap, "%s/:id/%s", r->parent->path, r->collection);
    else
        snprintf(buf, cap, "%s/:id", r->path);
}

/* The route at the cursor, which moves on; false past the last one. */
static bool route_next(struct route_cursor *c, struct route *out)
{
    if (c->index < NHAND) {
        const struct hand_route *h = &hand_routes[c->index++];
        *out = (struct route){ .method = h->method, .pattern = h->pattern, .fn = h->fn };
        return true;
    }
    for (; c->resource < resource_count(); c->resource++, c->kind = 0) {
        const struct resource *r = resource_at(c->resource);
        while (c->kind < ROUTE_KINDS) {
            enum route_kind kind = (enum route_kind)c->kind++;
            if (!kind_applies(r, kind))
                continue;
            *out = (struct route){ .method = kind_methods[kind], .res = r, .kind = kind };
            c->index++;
            return true;
        }
    }
    return false;
}

#define ID_MAX_DIGITS 19

static bool segment_id_parse(const char *s, size_t len, int64_t *out)
{
    if (len == 0 || len > ID_MAX_DIGITS || s[0] == '0')
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX)
        return false;
    *out = (int64_t)v;
    return true;
}

/* Matches path against pattern segment by segment, collecting ":id" values. */
static bool route_match(const char *pattern, const char *path, struct route_args *args)
{
    args->nid = 0;
    while (*pattern && *path) {
        if (*pattern != '/' || *path != '/')
            return false;
        pattern++, path++;
        size_t pl = strcspn(pattern, "/"), sl = strcspn(path, "/");
        if (pl == 3 && strncmp(pattern, ":id", 3) == 0) {
            if (args->nid >= 2 || !segment_id_parse(path, sl, &args->id[args->nid]))
                return false;
            args->nid++;
        } else if (pl != sl || strncmp(pattern, path, pl) != 0) {
            return false;
        }
        pattern += pl, path += sl;
    }
    return *pattern == '\0' && *path == '\0';
}

/* A path that starts with prefix, returning what follows it; NULL when it does not. */
static const char *prefix_skip(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(path, prefix, n) == 0 ? path + n : NULL;
}

/* "/<id>" then `tail` ("" or "/<collection>") to the end of rest, as pattern "/:id<tail>" would match. */
static bool id_then_match(const char *rest, const char *tail, struct route_args *args)
{
    if (!rest || rest[0] != '/')
        return false;
    rest++;
    size_t len = strcspn(rest, "/");
    if (!segment_id_parse(rest, len, &args->id[0]))
        return false;
    args->nid = 1;
    rest += len;
    if (!tail[0])
        return rest[0] == '\0';
    return rest[0] == '/' && strcmp(rest + 1, tail) == 0;
}

/* A generated route's match, as route_match would match its pattern, without building the pattern. */
static bool generated_match(const struct route *rt, const char *path, struct route_args *args)
{
    const struct resource *r = rt->res;
    args->nid = 0;
    if (kind_on_collection(rt->kind))
        return strcmp(path, r->path) == 0;
    if (kind_by_parent(rt->kind))
        return id_then_match(prefix_skip(path, r->parent->path), r->collection, args);
    return id_then_match(prefix_skip(path, r->path), "", args);
}

static bool route_matches(const struct route *rt, const char *path, struct route_args *args)
{
    return rt->res ? generated_match(rt, path, args) : route_match(rt->pattern, path, args);
}

static void allow_add(char *allow, size_t cap, int method)
{
    const char *name = http_method_str((enum http_method)method);
    if (strstr(allow, name))
        return;
    size_t n = strlen(allow);
    snprintf(allow + n, cap - n, "%s%s", n ? ", " : "", name);
    if (method == HTTP_GET)
        allow_add(allow, cap, HTTP_HEAD);
}

void router_find(int method, const char *path, struct router_match *m)
{
    struct route rt;
    struct route_cursor c = { 0 };
    int want = method == HTTP_HEAD ? HTTP_GET : method;
    *m = (struct router_match){ .index = -1 };
    for (int i = c.index; route_next(&c, &rt); i = c.index) {
        if (!route_matches(&rt, path, &m->args))
            continue;
        if (rt.method == want) {
            m->index = i;
            m->fn = rt.fn;
            m->res = rt.res;
            m->kind = rt.kind;
            return;
        }
        allow_add(m->allow, sizeof(m->allow), rt.method);
    }
}

/* The scope a standard route needs, from its resource's declaration. */
static unsigned kind_scope(const struct resource *r, enum route_kind kind)
{
    if (kind_methods[kind] == HTTP_GET)
        return r->scopes.read;
    return kind == ROUTE_DELETE ? r->scopes.remove : r->scopes.write;
}

static void route_call(struct api_context *api, struct http_request *req, const struct router_match *m)
{
    if (m->fn)
        m->fn(api, req, &m->args);
    else
        handle_resource(api, req, m->res, m->kind, &m->args);
}

/* A route the rate limiter let through (req NULL: it answered 429, or the worker exits); one the token
 * check refused is answered only then, so that bad tokens count against their address's budget. */
struct route_pending {
    struct api_context *api;
    struct router_match m;
    struct auth_verdict verdict;
};

static void route_admitted(void *arg, struct http_request *req)
{
    struct route_pending *p = arg;
    if (req && p->verdict.result != AUTH_OK)
        auth_refuse(req, &p->verdict);
    else if (req)
        route_call(p->api, req, &p->m);
    free(p);
}

/* The resources' routes are limited; the health probes, GET / and the OpenAPI document (static, and
 * what a prober or scraper needs most when clients are being limited) are not. */
static void route_limited_call(struct api_context *api, struct http_request *req,
                               const struct router_match *m, const struct auth_verdict *verdict)
{
    struct route_pending *p = malloc(sizeof(*p));
    if (!p) {
        reply_error(req, 503, "out_of_memory", "server out of memory");
        return;
    }
    *p = (struct route_pending){ .api = api, .m = *m, .verdict = *verdict };
    ratelimit_admit(api->ratelimit, req, route_admitted, p);
}

void router_dispatch(struct http_request *req)
{
    struct api_context *api = req->ctx;
    struct router_match m;
    size_t len = strlen(req->path);
    if (len > 1 && req->path[len - 1] == '/')
        req->path[len - 1] = '\0'; /* "/users/" is "/users" */
    router_find(req->method, req->path, &m);
    if (m.index >= 0) {
        req->route = m.index;
        /* The hand-written routes (/, /healthz, /readyz, /openapi.yaml) need no token: probes and
         * scrapers have none, and they show no row. Every standard route needs its scope, checked
         * before the rate limiter, which keys on the token's subject (on the address without one). */
        struct auth_verdict verdict = { .result = AUTH_OK };
        bool allowed = !m.res || auth_check(api->auth, req, kind_scope(m.res, m.kind), &verdict);
        if (m.res && api->ratelimit)
            route_limited_call(api, req, &m, &verdict);
        else if (!allowed)
            auth_refuse(req, &verdict);
        else
            route_call(api, req, &m);
        return;
    }
    req->route = METRICS_ROUTE_UNMATCHED;
    if (req->method == HTTP_OPTIONS && m.allow[0]) {
        /* no route takes OPTIONS: every path answers it with its methods (a CORS preflight, or RFC 9110's
         * OPTIONS) */
        http_cors_preflight(req, m.allow);
        return;
    }
    if (m.allow[0]) {
        http_header_add(req, "Allow", m.allow);
        reply_error(req, 405, "method_not_allowed", "%s is not allowed here; allowed: %s", req->method_name,
                    m.allow);
        return;
    }
    reply_error(req, 404, "not_found", "no route for %s %.200s", req->method_name, req->path);
}

int router_route_count(void)
{
    struct route_cursor c = { 0 };
    struct route rt;
    while (route_next(&c, &rt))
        ;
    return c.index;
}

void router_route_label(int i, const char **method, char *pattern, size_t cap)
{
    struct route_cursor c = { 0 };
    struct route rt;
    *method = "";
    snprintf(pattern, cap, "%s", "");
    while (route_next(&c, &rt)) {
        if (c.index - 1 == i) {
            *method = http_method_str((enum http_method)rt.method);
            pattern_build(&rt, pattern, cap);
            return;
        }
    }
}
