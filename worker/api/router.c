/* router: a static table of routes; a pattern segment ":id" matches a decimal id in 1..2^63-1 only, so
 * handlers never see a malformed id (anything else is a 404, like an unknown path). */
#include "worker/api/router.h"

#include <http_parser.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "common/metrics.h"
#include "worker/api/handlers.h"
#include "worker/http/reply.h"
#include "worker/worker.h"

struct route {
    int method;
    const char *pattern;
    route_fn fn;
};

static const struct route routes[] = {
    { HTTP_GET, "/", handle_root },
    { HTTP_GET, "/healthz", handle_healthz },
    { HTTP_GET, "/readyz", handle_readyz },
    { HTTP_GET, "/users", handle_users_list },
    { HTTP_POST, "/users", handle_users_create },
    { HTTP_GET, "/users/:id", handle_user_get },
    { HTTP_PUT, "/users/:id", handle_user_write },
    { HTTP_PATCH, "/users/:id", handle_user_write },
    { HTTP_DELETE, "/users/:id", handle_user_write },
    { HTTP_GET, "/users/:id/posts", handle_user_posts_list },
    { HTTP_POST, "/users/:id/posts", handle_user_posts_create },
    { HTTP_GET, "/posts", handle_posts_list },
    { HTTP_GET, "/posts/:id", handle_post_get },
    { HTTP_PUT, "/posts/:id", handle_post_write },
    { HTTP_PATCH, "/posts/:id", handle_post_write },
    { HTTP_DELETE, "/posts/:id", handle_post_write },
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))
_Static_assert(NROUTES <= METRICS_ROUTE_SCRAPE, "the metrics table needs a row per route");
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

void router_dispatch(struct http_request *req)
{
    struct worker *w = req->ctx;
    struct route_args args;
    char allow[128] = "";
    int method = req->method == HTTP_HEAD ? HTTP_GET : req->method;
    size_t len = strlen(req->path);
    if (len > 1 && req->path[len - 1] == '/')
        req->path[len - 1] = '\0'; /* "/users/" is "/users" */
    for (size_t i = 0; i < NROUTES; i++) {
        if (!route_match(routes[i].pattern, req->path, &args))
            continue;
        if (routes[i].method == method) {
            req->route = (int)i;
            routes[i].fn(w, req, &args);
            return;
        }
        allow_add(allow, sizeof(allow), routes[i].method);
    }
    req->route = METRICS_ROUTE_UNMATCHED;
    if (allow[0]) {
        http_header_add(req, "Allow", allow);
        reply_error(req, 405, "method_not_allowed", "%s is not allowed here; allowed: %s", req->method_name, allow);
        return;
    }
    reply_error(req, 404, "not_found", "no route for %s %.200s", req->method_name, req->path);
}

int router_route_count(void)
{
    return (int)NROUTES;
}

void router_route_label(int i, const char **method, const char **pattern)
{
    *method = http_method_str((enum http_method)routes[i].method);
    *pattern = routes[i].pattern;
}
