/* idempotency: Idempotency-Key (draft-ietf-httpapi-idempotency-key-header-09) on POST, PUT, PATCH and
 * DELETE. The key is checked here; the keyed statement (resource.h, RESOURCE_SQL_KEYED) decides in one
 * transaction whether the write runs, is replayed, or is refused; its answer is read here; expired keys
 * are purged here. */
#include "worker/api/idempotency.h"

#include <event2/event.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "worker/api/api.h"
#include "worker/http/reply.h"

#define PURGE_BATCH 1000
#define PURGE_BATCH_TEXT "1000"
#define PURGE_AGAIN_MS 10 /* a full batch: the next one soon, but after the requests the loop holds */

int idempotency_key_read(struct http_request *req, const char **key)
{
    *key = NULL;
    unsigned seen = http_headers_seen(&req->headers, HTTP_H_IDEMPOTENCY_KEY);
    if (!seen)
        return 0;
    const char *v = http_request_header(req, HTTP_H_IDEMPOTENCY_KEY), *err = NULL;
    size_t len = strlen(v);
    if (seen > 1)
        err = "send one key";
    else if (len == 0)
        err = "empty";
    else if (len > IDEMPOTENCY_KEY_MAX)
        err = "longer than 255 bytes";
    for (size_t i = 0; !err && i < len; i++)
        if ((unsigned char)v[i] < 0x21 || (unsigned char)v[i] > 0x7e)
            err = "a key is 1 to 255 bytes of visible ASCII (no space, control or non-ASCII byte)";
    if (err) {
        reply_error(req, 400, "invalid_header", "Idempotency-Key: %s", err);
        return -1;
    }
    *key = v;
    return 0;
}

/* One element of a text[] literal, quoted, '"' and '\\' escaped. */
static size_t array_element(char *out, const char *s)
{
    size_t n = 0;
    out[n++] = '"';
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            out[n++] = '\\';
        out[n++] = *s;
    }
    out[n++] = '"';
    return n;
}

/* The request hash's input: each part as <length>:<bytes>, a NULL parameter as "-", so no two requests
 * give the same bytes. */
static size_t hash_part(char *out, const char *s, size_t len)
{
    int n = sprintf(out, "%zu:", len);
    memcpy(out + n, s, len);
    return (size_t)n + len;
}

static bool request_hash(const struct http_request *req, const char *const *params, int nparams, char *hex)
{
    size_t cap = strlen(req->method_name) + strlen(req->path) + 2 * 24;
    for (int i = 0; i < nparams; i++)
        cap += (params[i] ? strlen(params[i]) : 0) + 24;
    char *in = malloc(cap);
    if (!in)
        return false;
    size_t len = hash_part(in, req->method_name, strlen(req->method_name));
    len += hash_part(in + len, req->path, strlen(req->path));
    for (int i = 0; i < nparams; i++) {
        if (params[i])
            len += hash_part(in + len, params[i], strlen(params[i]));
        else
            in[len++] = '-';
    }
    http_etag_md5(in, len, hex); /* a fingerprint within one caller's keys, not a signature */
    free(in);
    return true;
}

bool idempotency_param(struct http_request *req, const char *key, int status, int ttl_s,
                       const char *const *params, int nparams, char *buf)
{
    char hex[HTTP_ETAG_HEX + 1];
    if (!request_hash(req, params, nparams, hex)) {
        reply_error(req, 503, "out_of_memory", "server out of memory");
        return false;
    }
    size_t n = 0;
    buf[n++] = '{';
    n += array_element(buf + n, req->subject);
    buf[n++] = ',';
    n += array_element(buf + n, key);
    snprintf(buf + n, IDEMPOTENCY_PARAM_MAX - n, ",%s,%d,%d}", hex, status, ttl_s);
    return true;
}

/* The column of the keyed statement's result, or NULL when it has none (not a keyed statement). */
static const char *column(const struct pool_result *r, const char *name)
{
    int col = PQfnumber(r->res, name);
    return col >= 0 && !PQgetisnull(r->res, 0, col) ? PQgetvalue(r->res, 0, col) : NULL;
}

enum idempotency_outcome idempotency_outcome(const struct pool_result *r)
{
    if (r->status == POOL_ERR_SQL && strcmp(r->sqlstate, "23505") == 0) {
        const char *c = r->res ? PQresultErrorField(r->res, PG_DIAG_CONSTRAINT_NAME) : NULL;
        if (c && strcmp(c, "pgapi_idempotency_keys_pkey") == 0)
            return IDEMPOTENCY_BUSY; /* the first request with the key committed while this one ran */
    }
    if (r->status != POOL_OK || PQntuples(r->res) == 0)
        return IDEMPOTENCY_WRITE;
    const char *o = column(r, "idempotency");
    if (o && strcmp(o, "replay") == 0)
        return IDEMPOTENCY_REPLAY;
    if (o && strcmp(o, "mismatch") == 0)
        return IDEMPOTENCY_MISMATCH;
    if (o && strcmp(o, "busy") == 0)
        return IDEMPOTENCY_BUSY;
    return IDEMPOTENCY_WRITE;
}

void idempotency_replay(const struct pool_result *r, struct idempotency_answer *out)
{
    const char *status = column(r, "idempotency_status"), *id = column(r, "idempotency_id");
    int col = PQfnumber(r->res, "idempotency_body");
    *out = (struct idempotency_answer){ .status = status ? atoi(status) : 200, .id = id ? id : "" };
    if (col >= 0 && !PQgetisnull(r->res, 0, col)) {
        out->body = PQgetvalue(r->res, 0, col);
        out->len = (size_t)PQgetlength(r->res, 0, col);
    }
}

void idempotency_refuse(struct http_request *req, enum idempotency_outcome o)
{
    if (o == IDEMPOTENCY_MISMATCH) {
        reply_error(req, 422, "idempotency_key_mismatch",
                    "this Idempotency-Key was used with another request (method, path or body): nothing was "
                    "written; use a new key for a new request");
        return;
    }
    http_header_add(req, "Retry-After", "1");
    reply_error(
        req, 409, "idempotency_key_in_use",
        "a request with this Idempotency-Key is still in progress: nothing was written; send it again "
        "shortly to get its answer");
}

/* ---- the purge of expired keys ----------------------------------------------------------------- */

/* Rows a keyed statement holds (deleting an expired key under its lock, or storing one) are skipped: the
 * next round takes them. $1 = ttl in seconds. */
static const char SQL_PURGE[] =
    "DELETE FROM pgapi_idempotency_keys WHERE (scope, key) IN (SELECT scope, key FROM pgapi_idempotency_keys"
    " WHERE created_at <= now() - $1::int * interval '1 second' ORDER BY created_at LIMIT " PURGE_BATCH_TEXT
    " FOR UPDATE SKIP LOCKED)";

struct idempotency_purge {
    struct api_context *api;
    struct event *ev;
    bool inflight;
    bool missing_logged; /* the table is missing (migrations not run): said once */
};

static void purge_arm(struct idempotency_purge *p, int ms)
{
    struct timeval tv = clock_timeval(ms);
    if (event_add(p->ev, &tv) < 0)
        log_warn("idempotency: cannot arm the purge of expired keys");
}

static void purge_done(void *arg, const struct pool_result *r)
{
    struct idempotency_purge *p = arg;
    p->inflight = false;
    long n = 0;
    if (r->status == POOL_ERR_SQL && strcmp(r->sqlstate, "42P01") == 0) {
        if (!p->missing_logged)
            log_warn(
                "idempotency: table pgapi_idempotency_keys is missing (run pgapi migrate): writes with an "
                "Idempotency-Key fail");
        p->missing_logged = true;
    } else if (r->status == POOL_OK) {
        p->missing_logged = false;
        n = strtol(PQcmdTuples(r->res), NULL, 10);
        if (n > 0)
            log_debug("idempotency: %ld expired keys purged", n);
    } /* else the primary is down or busy: the next interval tries again (the pool logged why) */
    purge_arm(p, n >= PURGE_BATCH ? PURGE_AGAIN_MS : p->api->cfg->idempotency_purge_interval_ms);
}

static void purge_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct idempotency_purge *p = arg;
    if (p->inflight || !pool_primary_up(p->api->pool)) {
        purge_arm(p, p->api->cfg->idempotency_purge_interval_ms);
        return;
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%d", p->api->cfg->idempotency_ttl_s);
    const char *params[] = { ttl };
    struct pool_query q = { .sql = SQL_PURGE, .nparams = 1, .params = params };
    p->inflight = true;
    pool_write(p->api->pool, &q, purge_done, p);
}

struct idempotency_purge *idempotency_purge_new(struct api_context *api)
{
    struct idempotency_purge *p = calloc(1, sizeof(*p));
    if (!p) {
        log_error("idempotency: out of memory");
        return NULL;
    }
    p->api = api;
    if (api->slot != 0) /* one worker a server: the others would only find nothing to delete */
        return p;
    p->ev = evtimer_new(api->base, purge_cb, p);
    if (!p->ev) {
        log_error("idempotency: cannot start the purge of expired keys");
        free(p);
        return NULL;
    }
    purge_arm(p, api->cfg->idempotency_purge_interval_ms);
    return p;
}

void idempotency_purge_free(struct idempotency_purge *p)
{
    if (!p)
        return;
    if (p->ev)
        event_free(p->ev);
    free(p);
}
