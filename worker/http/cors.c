/* cors: Cross-Origin Resource Sharing for the origins of [server] cors_origins: the response lines that
 * let a browser page of an allowed origin read an answer, and the OPTIONS preflight. No credentials are
 * allowed (no Access-Control-Allow-Credentials): pgapi reads no cookie, and a token goes in a header. */
#include <stdio.h>
#include <string.h>

#include "common/config.h"
#include "worker/http/conn.h"

/* What a browser page may see of an answer beyond the CORS-safelisted headers. */
#define CORS_EXPOSE                                                                                          \
    "ETag, Pgapi-Lsn, X-Cache, X-Request-Id, Location, Retry-After, Server-Timing, traceparent, RateLimit, " \
    "RateLimit-Policy, Idempotent-Replayed, WWW-Authenticate"
/* What a page may send beyond the safelisted ones (Content-Type: application/json is not safelisted). */
#define CORS_ALLOW_HEADERS                                                                             \
    "Content-Type, If-Match, If-None-Match, Idempotency-Key, Authorization, traceparent, tracestate, " \
    "Pgapi-Lsn, "                                                                                      \
    "X-Request-Id"
/* How long a browser may reuse a preflight: Chromium caps it at 2 hours, Firefox at 24. */
#define CORS_MAX_AGE "600"

bool http_cors_allowed(const char *list, const char *origin)
{
    size_t olen = strlen(origin);
    /* a value the header table cut (CONFIG_ORIGIN_MAX + 1 bytes kept) is longer than any allowed one */
    if (!list[0] || olen == 0 || olen > CONFIG_ORIGIN_MAX)
        return false;
    if (strcmp(list, "*") == 0)
        return true;
    for (const char *p = list; *p;) {
        p += strspn(p, " ,");
        size_t len = strcspn(p, " ,");
        if (len == olen && memcmp(p, origin, len) == 0)
            return true;
        p += len;
    }
    return false;
}

/* The request's Origin when it is allowed; NULL otherwise (also for two Origin lines: no browser sends
 * that). */
static const char *cors_origin(const struct http_conn *c)
{
    const struct http_request *r = &c->x->req;
    const char *origin = http_request_header(r, HTTP_H_ORIGIN);
    if (http_headers_seen(&r->headers, HTTP_H_ORIGIN) != 1 ||
        !http_cors_allowed(c->srv->cfg->cors_origins, origin))
        return NULL;
    return origin;
}

void http_cors_write(struct http_conn *c)
{
    const char *list = c->srv->cfg->cors_origins;
    if (!list[0])
        return;
    bool any = strcmp(list, "*") == 0;
    /* the answer depends on Origin unless every origin gets the same "*": shared caches must know */
    if (!any)
        evbuffer_add(c->out, "Vary: Origin\r\n", 14);
    const char *origin = cors_origin(c);
    if (!origin)
        return; /* no CORS lines: the browser keeps the answer from the page */
    evbuffer_add_printf(c->out, "Access-Control-Allow-Origin: %s\r\nAccess-Control-Expose-Headers: %s\r\n",
                        any ? "*" : origin, CORS_EXPOSE);
}

void http_cors_preflight(struct http_request *req, const char *methods)
{
    char with_options[160];
    snprintf(with_options, sizeof(with_options), "%s, OPTIONS", methods);
    http_header_add(req, "Allow", with_options);
    if (cors_origin(req->conn)) {
        http_header_add(req, "Access-Control-Allow-Methods", methods);
        http_header_add(req, "Access-Control-Allow-Headers", CORS_ALLOW_HEADERS);
        http_header_add(req, "Access-Control-Max-Age", CORS_MAX_AGE);
    }
    http_respond(req, 204, NULL, NULL, 0);
}
