/* resource_ops: the request steps every resource shares, as one state machine per request (enum
 * op_step, moved by state_step). Why the steps come in this order (fences raised before a write's
 * answer, a read's fence taken before it reads): docs/consistency.md. */
#include "worker/api/resource_ops.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <http_parser.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/consistency.h"
#include "common/log.h"
#include "worker/api/deployment.h"
#include "worker/api/effects.h"
#include "worker/api/fill_wait.h"
#include "worker/api/idempotency.h"
#include "worker/api/rows.h"
#include "worker/cache/cache.h"
#include "worker/cache/local_cache.h"
#include "worker/db/dbreply.h"
#include "worker/db/id_list.h"
#include "worker/db/pool.h"
#include "worker/http/body.h"
#include "worker/http/query.h"
#include "worker/http/reply.h"

#define LIST_DEFAULT 50
#define LIST_MAX 1000
#define ID_TEXT_MAX 24
#define PATH_TEXT_MAX 64
#define EMPTY_PAGE "{\"data\":[],\"next\":null}"
#define FILL_RETRIES_MAX 3 /* a waiter sent back to Redis by failed fills this often polls instead */
#define WRITE_WAIT_MS 10

/* What a request reads or writes: it decides the database step and the fences a read waits for. */
enum op_kind {
    OP_ROW,   /* one row by id (with its embedded children when o.embed) */
    OP_PAGE,  /* a keyset page of a collection, or of one owner's rows */
    OP_WRITE, /* a create, replace, patch or delete */
};

/* A request's steps. Reads: LOOKUP_LOCAL (rows only), SYNC_LOCAL (a local copy waits for the
 * deployment's fence log), LOOKUP_CACHE, WAIT_FILL while another request fills the key (woken by that
 * fill when the request is this worker's, else polling Redis), READ_DB after a miss or a bypass, DONE.
 * Writes: WRITE_DB (after a short wait for a Redis link that is not up yet), INVALIDATE (after the commit,
 * when the cache is on), PURGE (the invalidation failed: recorded on the primary for every server), DONE. */
enum op_step {
    STEP_LOOKUP_LOCAL,
    STEP_SYNC_LOCAL,
    STEP_LOOKUP_CACHE,
    STEP_WAIT_FILL,
    STEP_READ_DB,
    STEP_WRITE_DB,
    STEP_INVALIDATE,
    STEP_PURGE,
    STEP_DONE,
};

/* One request in flight: the caller's operation and what its steps need. */
struct resource_op_state {
    struct resource_op_state *prev, *next; /* the requests in flight (api->ops), for discard_all */
    struct resource_op o;
    enum op_kind kind;
    enum op_step step;
    int status;                /* success status: 200, 201 (with Location) or 204 (no body) */
    const char *sql;           /* the statement */
    const char *sql_many;      /* its batched form (pool_query.batch_sql), or NULL */
    bool many_distinct;        /* pool_query.batch_distinct: the batched form writes rows named by $1 */
    const char *const *params; /* WRITE_DB: the write's parameters, during state_step only (or owned) */
    int nparams;
    int64_t limit;             /* pages: rows shown */
    int64_t after;             /* pages: the keyset cursor */
    char base[PATH_TEXT_MAX];  /* pages: where the next-page link points */
    char key[CACHE_KEY_MAX];   /* reads: the cache key, "" when not cached */
    char gen[CACHE_KEY_MAX];   /* pages: the list's generation name ("" for a row) */
    struct cache_lookup lease; /* reads: CACHE_LEASE when this request fills the key; CACHE_WAIT (the
                                * holder's lease) while it waits for another's fill */
    struct fill_holder holder; /* reads holding the lease: the worker's requests waiting for its fill */
    struct fill_waiter waiter; /* WAIT_FILL: on a holder of this worker */
    uint64_t sent_fence;       /* READ_DB: the fence the read was sent with */
    int retries;               /* fills that failed this waiter (FILL_RETRIES_MAX) */
    uint64_t key_fence;        /* reads: the key's fence from Redis */
    uint64_t token;            /* reads: the Pgapi-Lsn the client sent back (0: none) */
    int waits;
    bool gone;                      /* reads: the client went (client_gone) */
    bool keyed;                     /* writes: sent with an Idempotency-Key (its keyed statement) */
    struct local_stamp local_stamp; /* rows: the row's fence before anything was read (local_cache.h) */
    struct deployment_wait sync;    /* SYNC_LOCAL: the wait for the fence log */
    struct effects_read_names fence_names; /* LOOKUP_CACHE: the deployment's fences the read waits for */
    struct event *wait_ev;
    pool_cb db_cb;             /* the step's own callback, behind db_timed */
    uint64_t cache_t0;         /* when the Redis round trip under way began (Server-Timing) */
    struct effects_write done; /* writes: what committed */
    uint64_t commit_lsn;       /* writes: its commit LSN (POOL_LSN_NONE when unknown) */
    char epoch_sent[24];       /* writes: the cache's epoch when the write was sent (cache_through) */
    char *row_json;            /* writes waiting for their invalidation: the answer, copied */
    size_t row_len;
    char row_id[ID_TEXT_MAX];
    int64_t *cascade;    /* a deletion: the ids of the cascade_names rows that went with it */
    char **params_owned; /* a write waiting for Redis: its parameters, copied (params points here) */
};

static void state_step(struct resource_op_state *s, enum op_step next);

static void state_free(struct resource_op_state *s)
{
    fill_wait_leave(&s->waiter);
    fill_wait_drop(&s->o.api->fill_waits, &s->holder); /* at exit: its waiters go too, unanswered */
    if (s->prev)
        s->prev->next = s->next;
    else
        s->o.api->ops = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->wait_ev)
        event_free(s->wait_ev);
    free(s->row_json);
    free(s->cascade);
    for (int i = 0; s->params_owned && i < s->nparams; i++)
        free(s->params_owned[i]);
    free(s->params_owned);
    free(s);
}

/* What the read's value reaches for the key whose lease this request holds (fill_wait_reach). */
static uint64_t read_reach(const struct resource_op_state *s, const struct pool_result *r)
{
    return fill_wait_reach(r->data_lsn, r->side == POOL_PRIMARY, POOL_LSN_NEWEST, s->sent_fence);
}

/* Fills the key whose lease this request holds (if it holds one); the lease is used up either way. The
 * value is stored with its data_lsn (what it holds of every key, for other servers' local copies and
 * tokens) and checked against the key's fence with what it reaches for this key (a primary-only read:
 * "newest", which a primary-only fence refuses). */
static void lease_fill(struct resource_op_state *s, const char *value, size_t len,
                       const struct pool_result *r)
{
    if (s->lease.kind != CACHE_LEASE)
        return;
    uint64_t reach = r->data_lsn == POOL_LSN_NEWEST ? POOL_LSN_NEWEST : read_reach(s, r);
    cache_fill(s->o.api->cache, &s->lease, value, len, r->data_lsn, reach);
    s->lease.kind = CACHE_BYPASS;
}

static void waiters_wake(struct resource_op_state *s, const char *value, size_t len, uint64_t reach);

/* STEP_DONE: a fill lease the read did not use (a 404, an error, a value not cached) is given back, so
 * other readers of the key do not wait for a fill that never comes, and this worker's readers waiting on
 * it look again; then the state goes. (Not state_free's job: that one also runs at exit, when the cache
 * may be gone.) */
static void state_end(struct resource_op_state *s)
{
    if (s->lease.kind == CACHE_LEASE)
        cache_release(s->o.api->cache, &s->lease);
    waiters_wake(s, NULL, 0, 0); /* after the release: their lookups reach Redis behind it */
    state_free(s);
}

/* The answer of a request that succeeded, then its end: 204 without a body, 201 with a Location. */
static void state_answer(struct resource_op_state *s, const char *id, const char *json, size_t len)
{
    const struct resource_op *o = &s->o;
    if (s->kind == OP_WRITE && s->commit_lsn && s->commit_lsn != POOL_LSN_NONE) {
        char token[32]; /* the consistency token: a read that sends it back sees this write, anywhere */
        pool_lsn_format(s->commit_lsn, token, sizeof(token));
        http_header_add(o->req, "Pgapi-Lsn", token);
    }
    if (s->status == 204) {
        http_respond(o->req, 204, NULL, NULL, 0);
    } else {
        if (s->status == 201) {
            char loc[PATH_TEXT_MAX + ID_TEXT_MAX];
            snprintf(loc, sizeof(loc), "%s/%s", o->res->path, id);
            http_header_add(o->req, "Location", loc);
        }
        http_respond(o->req, s->status, "application/json", json, len);
    }
    state_step(s, STEP_DONE);
}

/* A cached value as the answer, then the end; `from` says which cache (the access log's from=). */
static void state_answer_cached(struct resource_op_state *s, const char *value, size_t len, const char *from)
{
    s->o.req->cache_status = "HIT";
    s->o.req->cache_from = from;
    http_respond(s->o.req, 200, "application/json", value, len);
    state_step(s, STEP_DONE);
}

static void client_gone(void *arg);

static struct resource_op_state *state_new(const struct resource_op *o, enum op_kind kind, int status)
{
    struct resource_op_state *s = malloc(sizeof(*s));
    if (!s) {
        reply_error(o->req, 503, "out_of_memory", "server out of memory");
        return NULL;
    }
    *s = (struct resource_op_state){ .o = *o, .kind = kind, .status = status, .next = o->api->ops };
    if (s->next)
        s->next->prev = s;
    o->api->ops = s;
    if (kind != OP_WRITE)
        http_on_gone(o->req, client_gone, s);
    return s;
}

/* A read whose client went is answered with nothing (http accounts it as 499) and freed. */
static void gone_drop(struct resource_op_state *s)
{
    http_respond(s->o.req, HTTP_STATUS_CLIENT_GONE, NULL, NULL, 0);
    state_step(s, STEP_DONE); /* a lease it held is given back: nobody waits for its fill */
}

/* The client of a read went (http_on_gone). A read not yet sent is dropped now: out of the pool queue, or
 * off its wait for another request's fill; one waiting in Redis is dropped when Redis answers
 * (lookup_done); one sent to the database runs to its end, its answer going nowhere. Writes are not
 * told: they complete and invalidate whatever their client does. */
static void client_gone(void *arg)
{
    struct resource_op_state *s = arg;
    s->gone = true;
    if (s->step == STEP_WAIT_FILL) {
        if (s->waiter.holder)
            fill_wait_leave(&s->waiter);
        else
            event_del(s->wait_ev);
        gone_drop(s);
    } else if (s->step == STEP_READ_DB && pool_cancel(s->o.api->pool, s)) {
        gone_drop(s);
    }
}

void resource_ops_discard_all(struct api_context *api)
{
    while (api->ops)
        state_free(api->ops);
}

static void id_text(int64_t id, char *buf, size_t cap)
{
    snprintf(buf, cap, "%" PRId64, id);
}

static void not_found(const struct resource_op *o)
{
    const char *what = o->owner ? o->owner->name : o->res->name;
    reply_error(o->req, 404, "not_found", "%s %" PRId64 " not found", what, o->id);
}

/* A conditional write's row exists but matched none of If-Match: nothing was written, so no fence is
 * raised and nothing is invalidated. */
static void precondition_failed(const struct resource_op *o)
{
    reply_error(o->req, 412, "precondition_failed",
                "%s %" PRId64 " matches none of If-Match (its ETag or version changed): nothing was written; "
                "read it again",
                o->res->name, o->id);
}

/* The foreign key to the owner failed (it never existed, or went meanwhile): a 404 that names it. */
static bool owner_missing(const struct resource_op *o, const struct pool_result *r)
{
    if (!o->owner || r->status != POOL_ERR_SQL || strcmp(r->sqlstate, "23503") != 0)
        return false;
    not_found(o);
    return true;
}

/* The fence a read waits for: its row's, or its list's tables'. */
static uint64_t read_fence(const struct resource_op_state *s)
{
    const struct resource_op *o = &s->o;
    if (s->kind == OP_ROW)
        return effects_row_fence(o->api->consistency, o->res, o->id, o->embed);
    return effects_list_fence(o->api->consistency, o->res, o->owner != NULL);
}

/* Every statement's answer passes here first: its times go to the request's Server-Timing. */
static void db_timed(void *arg, const struct pool_result *r)
{
    struct resource_op_state *s = arg;
    s->o.req->timing.queue_us += r->queue_us;
    s->o.req->timing.db_us += r->db_us;
    s->db_cb(arg, r);
}

/* A Redis round trip (or the fence log's wait) begins, and ends: its time goes to Server-Timing. */
static void cache_timing_begin(struct resource_op_state *s)
{
    s->cache_t0 = clock_now_us();
}

static void cache_timing_end(struct resource_op_state *s)
{
    if (s->cache_t0)
        s->o.req->timing.cache_us += clock_now_us() - s->cache_t0;
    s->cache_t0 = 0;
}

static void db_send(struct resource_op_state *s, const char *const *params, int n, pool_cb cb)
{
    struct pool_query q = { .sql = s->sql,
                            .nparams = n,
                            .params = params,
                            .batch_sql = s->sql_many,
                            .batch_distinct = s->many_distinct,
                            .traceparent = s->o.req->traceparent };
    s->db_cb = cb;
    if (s->kind == OP_WRITE) {
        pool_write(s->o.api->pool, &q, db_timed, s); /* the pool copies the parameters */
        return;
    }
    uint64_t fence = read_fence(s);
    if (s->key_fence > fence)
        fence = s->key_fence;
    if (s->token > fence)
        fence = s->token;
    s->sent_fence = fence;
    pool_read(s->o.api->pool, &q, fence, db_timed, s);
}

/* A read that could not learn the deployment's fences from Redis (a bypass, no key) knows only this
 * server's: it goes to the primary (docs/consistency.md, "Several servers"). */
static void fences_unknown(struct resource_op_state *s)
{
    if (deployment_on(s->o.api->deployment))
        s->key_fence = POOL_LSN_NONE;
}

/* ---- writes: commit, fences, invalidation, answer -------------------------------------------- */

/* The rows a deletion's cascade took with it: the statement's extra column (resource.cascade_names),
 * when the statement could name them. */
static void cascade_read(struct resource_op_state *s, const PGresult *res)
{
    const struct resource *r = s->o.res;
    int col = r->parent ? 3 : 2;
    s->done.ncascade = -1;
    if (!s->done.deleted || !r->cascade_names || PQnfields(res) <= col || PQgetisnull(res, 0, col))
        return;
    s->cascade = malloc(CACHE_CHANGE_IDS_MAX * sizeof(*s->cascade));
    if (s->cascade)
        s->done.ncascade = id_list_parse(PQgetvalue(res, 0, col), s->cascade, CACHE_CHANGE_IDS_MAX);
    s->done.cascade = s->cascade;
    if (s->done.ncascade < 0)
        log_warn("request %s: a %s's deletion did not name its %s: every %s counts as changed",
                 s->o.req->request_id, r->name, r->cascade_names->collection, r->cascade_names->name);
}

/* What committed, from the statement's columns (id, json[, parent id][, cascade ids]). */
static void write_read(struct resource_op_state *s, const PGresult *res)
{
    const struct resource *r = s->o.res;
    s->done = (struct effects_write){ .res = r,
                                      .id = strtoll(PQgetvalue(res, 0, 0), NULL, 10),
                                      .created = s->status == 201,
                                      .deleted = s->o.req->method == HTTP_DELETE };
    if (r->parent && PQnfields(res) > 2 && !PQgetisnull(res, 0, 2))
        s->done.parent_id = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    cascade_read(s, res);
}

static void invalidate_done(void *arg, bool ok)
{
    struct resource_op_state *s = arg;
    cache_timing_end(s);
    if (!ok)
        consistency_cache_dirty_set(s->o.api->consistency); /* every worker bypasses the cache until a new
                                                             * epoch */
    if (!ok && deployment_on(s->o.api->deployment)) {
        state_step(s, STEP_PURGE);
        return;
    }
    state_answer(s, s->row_id, s->row_json, s->row_len);
}

/* The purge is recorded (or could not be): the write committed, but its 2xx would promise what other
 * servers cannot know yet; the client re-reads to learn the outcome. */
static void purge_done(void *arg, const struct pool_result *r)
{
    struct resource_op_state *s = arg;
    bool ok = r->status == POOL_OK && PQntuples(r->res) == 1;
    if (ok)
        log_warn("request %s: %s %s committed but its fences did not reach Redis: purge %s recorded on the "
                 "primary; answered 503",
                 s->o.req->request_id, s->o.res->name, s->row_id, PQgetvalue(r->res, 0, 0));
    else
        log_error("request %s: %s %s committed, its fences did not reach Redis, and the purge could not be "
                  "recorded (%s): other servers may serve older values until they see Redis fail too",
                  s->o.req->request_id, s->o.res->name, s->row_id,
                  r->message && r->message[0] ? r->message : "no answer");
    http_header_add(s->o.req, "Retry-After", "1");
    reply_error(s->o.req, 503, "write_outcome_unknown",
                "the write may have been applied but could not be confirmed to every server; %s",
                dbreply_retry_advice(s->o.req));
    state_step(s, STEP_DONE);
}

static void write_wait_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    state_step(arg, STEP_WRITE_DB);
}

/* The write's parameters, owned by the state: it waits past the call that gave them. */
static bool params_keep(struct resource_op_state *s)
{
    if (s->params_owned || !s->params)
        return true;
    s->params_owned = calloc((size_t)s->nparams, sizeof(char *));
    for (int i = 0; s->params_owned && i < s->nparams; i++)
        if (s->params[i] && !(s->params_owned[i] = strdup(s->params[i])))
            return false;
    s->params = (const char *const *)s->params_owned;
    return s->params_owned != NULL;
}

/* WAIT_REDIS: the link to Redis is not up (a reconnect, a new worker's first connection): the write waits
 * for it a little, up to Redis's connect_timeout, rather than fail at once. */
static bool write_wait(struct resource_op_state *s)
{
    const struct config *cfg = s->o.api->cfg;
    if (s->waits++ * WRITE_WAIT_MS >= cfg->redis_connect_timeout_ms || !params_keep(s))
        return false;
    if (!s->wait_ev)
        s->wait_ev = evtimer_new(s->o.api->base, write_wait_cb, s);
    struct timeval tv = clock_timeval(WRITE_WAIT_MS);
    return s->wait_ev && event_add(s->wait_ev, &tv) == 0;
}

/* A write runs only while Redis can take its fences: once it committed, it could only be answered
 * write_outcome_unknown. Past the wait it is refused before it runs. False after answering or while it
 * waits. */
static bool write_may_run(struct resource_op_state *s)
{
    struct api_context *api = s->o.api;
    if (!deployment_on(api->deployment) || cache_writable(api->cache))
        return true;
    if (write_wait(s))
        return false;
    http_header_add(s->o.req, "Retry-After", "1");
    reply_error(s->o.req, 503, "redis_unavailable",
                "Redis, which shares every write's fences with the other servers, is unreachable: nothing "
                "was written");
    state_step(s, STEP_DONE);
    return false;
}

/* The row's version column from its JSON (0 when it has none): it orders the writes of one row. */
static int64_t row_version(const char *json, size_t len)
{
    struct json_tokener *tok = json_tokener_new();
    struct json_object *obj = tok ? json_tokener_parse_ex(tok, json, (int)len) : NULL, *v;
    int64_t version = 0;
    if (obj && json_object_object_get_ex(obj, "version", &v) && json_object_is_type(v, json_type_int))
        version = json_object_get_int64(v);
    json_object_put(obj);
    if (tok)
        json_tokener_free(tok);
    return version;
}

/* The write's row offered to the cache: written through when it is provably the newest
 * (docs/consistency.md, "Write-through"); a deletion's tombstones. False when there is no row key. */
static bool through_build(const struct resource_op_state *s, char *key, size_t cap, struct cache_through *t)
{
    if (!effects_key_row(s->o.res, s->done.id, key, cap))
        return false;
    *t = (struct cache_through){ .key = key, .deleted = s->done.deleted, .epoch = s->epoch_sent };
    if (!s->done.deleted && s->row_len <= INT32_MAX) {
        t->version = row_version(s->row_json, s->row_len);
        t->value = s->row_json;
        t->len = s->row_len;
    }
    return true;
}

/* STEP_INVALIDATE: what the write changed leaves the cache (or, for its own row, is written through);
 * the answer waits for it. */
static void invalidate_send(struct resource_op_state *s)
{
    struct effects_change ch;
    struct cache_through t;
    char key[CACHE_KEY_MAX];
    effects_change(&s->done, &ch);
    bool row = through_build(s, key, sizeof(key), &t);
    cache_timing_begin(s);
    cache_invalidate(s->o.api->cache, &ch.cache, s->commit_lsn, row ? &t : NULL, invalidate_done, s);
}

/* A committed write: fences raised (its commit LSN unknown: the tables it changed read from the primary
 * for a while, effects_mark_unknown), then the cache invalidated, then the answer. */
static void write_committed(struct resource_op_state *s, const struct pool_result *r)
{
    struct api_context *api = s->o.api;
    write_read(s, r->res);
    s->commit_lsn = r->commit_lsn;
    if (r->commit_lsn == POOL_LSN_NONE)
        effects_mark_unknown(api->consistency, &s->done);
    else
        effects_raise(api->consistency, &s->done, r->commit_lsn);
    if (cache_state(api->cache) == CACHE_DISABLED) {
        size_t len = (size_t)PQgetlength(r->res, 0, 1);
        state_answer(s, PQgetvalue(r->res, 0, 0), PQgetvalue(r->res, 0, 1), len);
        return;
    }
    s->row_len = (size_t)PQgetlength(r->res, 0, 1);
    s->row_json = malloc(s->row_len + 1);
    if (!s->row_json) {
        consistency_cache_dirty_set(api->consistency);
        reply_error(s->o.req, 503, "out_of_memory", "server out of memory after the commit");
        state_step(s, STEP_DONE);
        return;
    }
    memcpy(s->row_json, PQgetvalue(r->res, 0, 1), s->row_len + 1);
    snprintf(s->row_id, sizeof(s->row_id), "%s", PQgetvalue(r->res, 0, 0));
    state_step(s, STEP_INVALIDATE);
}

/* ---- one row -------------------------------------------------------------------------------- */

/* A row's value goes into the worker's local cache, stamped with the row's fence as read before the
 * lookup, only if it holds every write up to that fence: then any write it lacks raised the fence after
 * the stamp was taken, and the entry is never served. */
static void local_fill(const struct resource_op_state *s, const char *value, size_t len, uint64_t data_lsn)
{
    if (s->kind == OP_ROW && s->key[0] && data_lsn != POOL_LSN_NEWEST && data_lsn >= s->local_stamp.fence)
        local_cache_put(s->o.api->local, s->key, &s->local_stamp, value, len);
}

/* A write whose answer was lost may have committed with nobody left to invalidate what it changed: the
 * deployment records a purge once the primary answers; a single server moves its cache to a new epoch. */
static void write_outcome_doubt(struct api_context *api)
{
    if (deployment_on(api->deployment))
        deployment_purge_soon(api->deployment);
    else
        consistency_cache_dirty_set(api->consistency);
}

/* A keyed write's own outcomes (RESOURCE_SQL_KEYED): the stored answer of the key's first request, sent
 * again with Idempotent-Replayed and nothing written (no fence raised, nothing invalidated; Pgapi-Lsn is
 * this statement's commit position, past the first one's), or 422/409. False when it ran as any write. */
static bool keyed_answered(struct resource_op_state *s, const struct pool_result *r)
{
    enum idempotency_outcome outcome = s->keyed ? idempotency_outcome(r) : IDEMPOTENCY_WRITE;
    if (outcome == IDEMPOTENCY_WRITE)
        return false;
    if (outcome != IDEMPOTENCY_REPLAY) {
        idempotency_refuse(s->o.req, outcome);
        state_step(s, STEP_DONE);
        return true;
    }
    struct idempotency_answer a;
    idempotency_replay(r, &a);
    s->status = a.status;
    s->commit_lsn = r->commit_lsn;
    http_header_add(s->o.req, "Idempotent-Replayed", "true");
    state_answer(s, a.id, a.body, a.len);
    return true;
}

static void row_done(void *arg, const struct pool_result *r)
{
    struct resource_op_state *s = arg;
    const struct resource_op *o = &s->o;
    if (s->kind == OP_WRITE && dbreply_outcome_unknown(o->req, r))
        write_outcome_doubt(o->api);
    if (keyed_answered(s, r))
        return;
    if (owner_missing(o, r) || dbreply_error_answer(o->req, r, o->res->name)) {
        state_step(s, STEP_DONE);
    } else if (PQntuples(r->res) == 0) {
        not_found(o);
        state_step(s, STEP_DONE);
    } else if (s->kind == OP_WRITE && PQgetisnull(r->res, 0, 1)) {
        precondition_failed(o);
        state_step(s, STEP_DONE);
    } else if (s->kind == OP_WRITE) {
        write_committed(s, r);
    } else {
        const char *json = PQgetvalue(r->res, 0, 1);
        size_t len = (size_t)PQgetlength(r->res, 0, 1);
        lease_fill(s, json, len, r);
        local_fill(s, json, len, r->data_lsn);
        waiters_wake(s, json, len, read_reach(s, r));
        state_answer(s, PQgetvalue(r->res, 0, 0), json, len);
    }
}

/* READ_DB of a row: $1 = id (then, embedding, $2 = the most children it
 * embeds, $3 = their byte budget). */
static void by_id_send(struct resource_op_state *s)
{
    const struct config *cfg = s->o.api->cfg;
    char text[3][ID_TEXT_MAX];
    id_text(s->o.id, text[0], sizeof(text[0]));
    id_text(cfg->embed_posts, text[1], sizeof(text[1]));
    id_text((int64_t)cfg->page_bytes, text[2], sizeof(text[2]));
    const char *params[] = { text[0], text[1], text[2] };
    db_send(s, params, s->o.embed ? 3 : 1, row_done);
}

/* ---- pages ---------------------------------------------------------------------------------- */

/* Builds the page body, fills the cache when this request holds the lease, answers. */
static void page_answer(struct resource_op_state *s, const struct pool_result *r)
{
    const PGresult *res = r->res;
    bool empty = PQntuples(res) > 0 && PQgetisnull(res, 0, 0);
    struct evbuffer *b = evbuffer_new();
    int rc = -1;
    if (b && empty)
        rc = evbuffer_add(b, EMPTY_PAGE, strlen(EMPTY_PAGE));
    else if (b)
        rc = rows_page_build(b, res, s->limit, s->base);
    if (rc < 0) {
        if (b)
            evbuffer_free(b);
        reply_error(s->o.req, 503, "out_of_memory", "server out of memory");
        return;
    }
    size_t len = evbuffer_get_length(b);
    const char *body = (const char *)evbuffer_pullup(b, -1);
    /* a page past the last id is not cached (state_end gives its lease back): ?after_id=<anything
     * larger> would make one each */
    if (!(s->after > 0 && (PQntuples(res) == 0 || empty)))
        lease_fill(s, body, len, r);
    waiters_wake(s, body, len,
                 read_reach(s, r)); /* served even when not cached: it is what they would read */
    http_respond(s->o.req, 200, "application/json", body, len);
    evbuffer_free(b);
}

static void page_done(void *arg, const struct pool_result *r)
{
    struct resource_op_state *s = arg;
    const struct resource_op *o = &s->o;
    if (!dbreply_error_answer(o->req, r, o->res->name)) {
        if (PQntuples(r->res) == 0 && o->owner)
            not_found(o);
        else
            page_answer(s, r);
    }
    state_step(s, STEP_DONE);
}

/* READ_DB of a page: [$1 = owner id,] after_id, limit, byte budget. */
static void page_send(struct resource_op_state *s)
{
    char text[4][ID_TEXT_MAX];
    id_text(s->o.id, text[0], sizeof(text[0]));
    id_text(s->after, text[1], sizeof(text[1]));
    id_text(s->limit, text[2], sizeof(text[2]));
    id_text((int64_t)s->o.api->cfg->page_bytes, text[3], sizeof(text[3]));
    const char *params[] = { text[0], text[1], text[2], text[3] };
    int first = s->o.owner ? 0 : 1;
    db_send(s, params + first, 4 - first, page_done);
}

/* ---- reads through the caches ---------------------------------------------------------------- */

static void lookup_done(void *arg, const struct cache_lookup *l)
{
    struct resource_op_state *s = arg;
    struct http_request *req = s->o.req;
    cache_timing_end(s);
    if (s->gone) {
        gone_drop(s);
        return;
    }
    s->key_fence = l->fence;
    switch (l->kind) {
    case CACHE_HIT:
        if (l->data_lsn < s->token) { /* older than the client's token (a write elsewhere): read it */
            req->cache_status = "BYPASS";
            break;
        }
        local_fill(s, l->value, l->len, l->data_lsn);
        state_answer_cached(s, l->value, l->len, "redis");
        return;
    case CACHE_WAIT:
        req->cache_status = "MISS";
        s->lease = *l; /* the holder's lease, to find it among this worker's requests */
        s->lease.value = NULL;
        state_step(s, STEP_WAIT_FILL);
        return;
    case CACHE_LEASE:
        req->cache_status = "MISS";
        s->lease = *l;
        s->lease.value = NULL;
        fill_wait_hold(&s->o.api->fill_waits, &s->holder, l->token, l->epoch, l->key);
        break;
    case CACHE_BYPASS:
        req->cache_status = "BYPASS";
        fences_unknown(s);
        break;
    }
    state_step(s, STEP_READ_DB);
}

static void wait_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    state_step(arg, STEP_LOOKUP_CACHE);
}

/* STEP_WAIT_FILL: another request holds the fill lease (one query per hot key, not N). A request of
 * this worker holds it: wait on it, woken by its fill (held a moment ago: look again at once). Else poll
 * Redis with back-off, and past FILL_WAIT_POLL_TOTAL_MS read the database without filling. */
static void fill_wait(struct resource_op_state *s)
{
    struct fill_waits *fw = &s->o.api->fill_waits;
    bool ours = s->lease.kind == CACHE_WAIT && s->retries < FILL_RETRIES_MAX;
    struct fill_holder *h = ours ? fill_wait_find(fw, s->lease.token, s->lease.epoch, s->lease.key) : NULL;
    if (h && fill_wait_join(h, &s->waiter))
        return;
    if (!h && ours && fill_wait_ended(fw, s->lease.token)) { /* its fill or release is in Redis now */
        fw->stats.retried++;
        s->retries++;
        state_step(s, STEP_LOOKUP_CACHE);
        return;
    }
    unsigned ms = fill_wait_poll_ms(s->waits++);
    if (!ms) {
        state_step(s, STEP_READ_DB);
        return;
    }
    fw->stats.polled++;
    if (!s->wait_ev)
        s->wait_ev = evtimer_new(s->o.api->base, wait_cb, s);
    struct timeval tv = clock_timeval(ms);
    if (!s->wait_ev || event_add(s->wait_ev, &tv) < 0)
        state_step(s, STEP_READ_DB);
}

/* The fence a waiter's answer must reach: its read's fence now (later than at its lookup: stricter), the
 * key's fence Redis gave it, the client's token. */
static uint64_t waiter_fence(const struct resource_op_state *w)
{
    uint64_t fence = read_fence(w);
    if (w->key_fence > fence)
        fence = w->key_fence;
    if (w->token > fence)
        fence = w->token;
    return fence;
}

/* The holder's read is over: each of its waiters is answered with the value when it may serve them
 * (fill_wait_serves: reach is read_reach), else looks up again at once (value NULL: no value, the lease
 * went back). */
static void waiters_wake(struct resource_op_state *s, const char *value, size_t len, uint64_t reach)
{
    struct fill_waits *fw = &s->o.api->fill_waits;
    struct fill_waiter *x;
    while ((x = fill_wait_pop(&s->holder))) {
        struct resource_op_state *w =
            (struct resource_op_state *)(void *)((char *)x - offsetof(struct resource_op_state, waiter));
        if (value && fill_wait_serves(reach, waiter_fence(w))) {
            fw->stats.woken++;
            state_answer_cached(w, value, len, "fill");
        } else {
            fw->stats.retried++;
            w->retries++;
            state_step(w, STEP_LOOKUP_CACHE);
        }
    }
    fill_wait_drop(fw, &s->holder);
}

/* STEP_LOOKUP_LOCAL: the worker's own copy of a row, valid while the row's fence is unchanged. */
static void local_lookup(struct resource_op_state *s)
{
    struct api_context *api = s->o.api;
    s->local_stamp = (struct local_stamp){ .fence = read_fence(s),
                                           .troubles = consistency_local_generation(api->consistency) };
    const char *value;
    size_t len;
    if (s->key[0] && deployment_on(api->deployment) && local_cache_has(api->local, s->key, &s->local_stamp)) {
        state_step(s, STEP_SYNC_LOCAL); /* first the fences other servers raised */
    } else if (s->key[0] && local_cache_get(api->local, s->key, &s->local_stamp, &value, &len)) {
        state_answer_cached(s, value, len, "local");
    } else if (s->key[0] && cache_state(api->cache) != CACHE_DISABLED) {
        state_step(s, STEP_LOOKUP_CACHE);
    } else {
        fences_unknown(s);
        state_step(s, STEP_READ_DB);
    }
}

/* SYNC_LOCAL is over: the fence log, read after this request arrived, is applied. The copy is served if
 * its stamp still holds (no server raised its row's fence since it was taken), else Redis is asked. */
static void local_synced(struct deployment_wait *w, bool ok)
{
    struct resource_op_state *s =
        (struct resource_op_state *)(void *)((char *)w - offsetof(struct resource_op_state, sync));
    struct api_context *api = s->o.api;
    cache_timing_end(s);
    if (s->gone) {
        gone_drop(s);
        return;
    }
    s->local_stamp = (struct local_stamp){ .fence = read_fence(s),
                                           .troubles = consistency_local_generation(api->consistency) };
    const char *value;
    size_t len;
    if (ok && local_cache_get(api->local, s->key, &s->local_stamp, &value, &len))
        state_answer_cached(s, value, len, "local");
    else
        state_step(s, STEP_LOOKUP_CACHE);
}

/* LOOKUP_CACHE: the deployment's fences the read waits for, by name, then Redis. */
static void cache_lookup_send(struct resource_op_state *s)
{
    const struct resource_op *o = &s->o;
    struct effects_fences f;
    if (s->kind == OP_ROW)
        effects_read_fences_row(o->res, o->id, o->embed, &f);
    else
        effects_read_fences_list(o->res, o->owner != NULL, &f);
    effects_fences_name_all(&f, &s->fence_names);
    cache_timing_begin(s);
    cache_lookup(o->api->cache, s->key, s->gen[0] ? s->gen : NULL, &s->fence_names.cache, lookup_done, s);
}

/* The one transition function: enters step `next` and runs what starts it. */
static void state_step(struct resource_op_state *s, enum op_step next)
{
    s->step = next;
    switch (next) {
    case STEP_LOOKUP_LOCAL:
        local_lookup(s);
        return;
    case STEP_SYNC_LOCAL:
        s->sync.cb = local_synced;
        cache_timing_begin(s);
        deployment_sync_wait(s->o.api->deployment, &s->sync);
        return;
    case STEP_LOOKUP_CACHE:
        cache_lookup_send(s);
        return;
    case STEP_WAIT_FILL:
        fill_wait(s);
        return;
    case STEP_READ_DB:
        if (s->kind == OP_PAGE)
            page_send(s);
        else
            by_id_send(s);
        return;
    case STEP_WRITE_DB:
        if (!write_may_run(s))
            return;
        snprintf(s->epoch_sent, sizeof(s->epoch_sent), "%s", cache_epoch(s->o.api->cache));
        db_send(s, s->params, s->nparams, row_done); /* a deletion's 204 comes once the fences are raised */
        return;
    case STEP_INVALIDATE:
        invalidate_send(s);
        return;
    case STEP_PURGE:
        deployment_purge_record(s->o.api->deployment, purge_done, s);
        return;
    case STEP_DONE:
        state_end(s);
        return;
    }
}

/* A read's first step: the local copy for a row, Redis when it has a key and the cache is on, else the
 * database. */
/* A consistency token (Pgapi-Lsn, as a write's 2xx gave it): the read sees at least that position. A
 * client's own writes stay visible to it even across deployments that share no Redis. False after
 * answering 400. */
static bool token_read(struct resource_op_state *s)
{
    const char *t = http_request_header(s->o.req, HTTP_H_PGAPI_LSN);
    if (!t[0] || pool_lsn_parse(t, &s->token) == 0)
        return true;
    reply_error(s->o.req, 400, "invalid_header", "Pgapi-Lsn must be a position like 16/B374D848");
    state_step(s, STEP_DONE);
    return false;
}

static void read_start(struct resource_op_state *s)
{
    if (!token_read(s))
        return;
    if (s->kind == OP_ROW && !s->token) /* a local copy carries no position to compare with a token */
        state_step(s, STEP_LOOKUP_LOCAL);
    else if (s->key[0] && cache_state(s->o.api->cache) != CACHE_DISABLED)
        state_step(s, STEP_LOOKUP_CACHE);
    else {
        fences_unknown(s);
        state_step(s, STEP_READ_DB);
    }
}

void resource_op_get(const struct resource_op *o)
{
    struct resource_op_state *s = state_new(o, OP_ROW, 200);
    if (!s)
        return;
    const struct resource *r = o->res;
    s->sql = o->embed ? r->embed.sql_get : r->sql_get;
    s->sql_many = o->embed ? NULL : r->sql_get_many;
    bool keyed = o->embed ? effects_key_embed(r, o->id, s->key, sizeof(s->key))
                          : effects_key_row(r, o->id, s->key, sizeof(s->key));
    if (!keyed)
        s->key[0] = '\0';
    read_start(s);
}

void resource_op_page(const struct resource_op *o)
{
    int64_t limit, after;
    if (query_int(o->req, "limit", 1, LIST_MAX, LIST_DEFAULT, &limit) < 0 ||
        query_int(o->req, "after_id", 0, INT64_MAX, 0, &after) < 0)
        return;
    struct resource_op_state *s = state_new(o, OP_PAGE, 200);
    if (!s)
        return;
    const struct resource *r = o->res;
    int64_t owner_id = o->owner ? o->id : 0;
    s->limit = limit;
    s->after = after;
    s->sql = o->owner ? r->sql_list_by_parent : r->sql_list;
    if (o->owner)
        snprintf(s->base, sizeof(s->base), "%s/%" PRId64 "/%s", o->owner->path, o->id, r->collection);
    else
        snprintf(s->base, sizeof(s->base), "%s", r->path);
    if (!effects_key_page(r, owner_id, limit, after, s->key, sizeof(s->key)) ||
        !effects_list_name(r, owner_id, s->gen, sizeof(s->gen)))
        s->key[0] = s->gen[0] = '\0';
    read_start(s);
}

/* ---- writes from a body --------------------------------------------------------------------- */

static int field_read(struct http_request *req, struct json_object *obj, const struct resource_field *f,
                      bool required, const char **out)
{
    *out = NULL;
    if (body_string(req, obj, f->name, required, f->min, f->max, out) < 0)
        return -1;
    if (*out && f->valid && !f->valid(*out)) {
        reply_error(req, 422, "invalid_value", "field \"%s\" is not %s", f->name, f->valid_desc);
        return -1;
    }
    return 0;
}

/* "a", "a and b", "a, b and c" */
static const char *name_separator(int i, int n)
{
    if (i == 0)
        return "";
    return i == n - 1 ? " and " : ", ";
}

static void names_list(const struct resource_field *fields, int n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s\"%s\"", name_separator(i, n), fields[i].name);
}

/* Fills out[i] for every field (NULL when absent and optional). Returns -1 after answering. */
static int fields_read(struct http_request *req, struct json_object *obj, const struct resource_field *fields,
                       int n, bool required, const char **out)
{
    bool any = false;
    for (int i = 0; i < n; i++) {
        if (field_read(req, obj, &fields[i], required, &out[i]) < 0)
            return -1;
        any = any || out[i];
    }
    if (!any) {
        char names[128];
        names_list(fields, n, names, sizeof(names));
        reply_error(req, 400, "missing_field", "give at least one of %s", names);
        return -1;
    }
    return 0;
}

/* Refuses a body with a member that is not one of the resource's fields (PostgREST refuses unknown
 * columns too): a misspelt field would otherwise be dropped without a word. Returns -1 after answering. */
static int members_check(struct http_request *req, struct json_object *obj, const struct resource *res)
{
    const char *names[RESOURCE_FIELDS_MAX];
    for (int i = 0; i < res->nfields; i++)
        names[i] = res->fields[i].name;
    const char *key = body_member_other(obj, names, res->nfields);
    if (!key)
        return 0;
    char list[128];
    names_list(res->fields, res->nfields, list, sizeof(list));
    if (body_name_listed(key, res->read_only))
        reply_error(req, 400, "read_only_field", "field \"%s\" is read-only: a %s's body takes only %s", key,
                    res->name, list);
    else
        reply_error(req, 400, "unknown_field", "unknown field \"%.64s\": a %s's body takes only %s", key,
                    res->name, list);
    return -1;
}

/* The statements one write may run: plain, its batched form (pool_query.batch_sql: a create's, an
 * unconditional replace's or patch's; else NULL), and keyed (Idempotency-Key). */
struct write_sql {
    const char *plain, *many, *keyed;
    bool many_distinct; /* many writes the rows its $1 names (a replace's or a patch's) */
};

/* Starts a write of params[0..n) (the caller's: the pool copies them, or params_keep). With a key, the
 * keyed statement with its own parameter appended (params has room for it), never batched: a batch would
 * store one answer for several requests, and each keyed write has its own lock and stored answer. */
static void write_start(const struct resource_op *o, const struct write_sql *w, const char **params, int n,
                        int status, const char *key)
{
    char keyed[IDEMPOTENCY_PARAM_MAX];
    const char *sql = w->plain, *many = w->many;
    if (key) {
        if (!idempotency_param(o->req, key, status, o->api->cfg->idempotency_ttl_s, params, n, keyed))
            return;
        params[n++] = keyed;
        sql = w->keyed;
        many = NULL;
    }
    struct resource_op_state *s = state_new(o, OP_WRITE, status);
    if (!s)
        return;
    s->sql = sql;
    s->sql_many = many;
    s->many_distinct = w->many_distinct;
    s->params = params;
    s->nparams = n;
    s->keyed = key != NULL;
    state_step(s, STEP_WRITE_DB);
    /* no s->params = NULL here: the pool may have answered and freed s already */
}

/* Runs a write whose parameters are $1 = id (when id != 0) then the body's fields in order, then the
 * If-Match tags when given (always with a key: NULL when unconditional); required = false (PATCH) makes
 * every field optional (NULL when absent) but at least one must be given. */
static void write_body(const struct resource_op *o, const struct write_sql *w, bool required, int status,
                       const char *tags, const char *key)
{
    const struct resource *res = o->res;
    if (res->nfields < 1 || res->nfields > RESOURCE_FIELDS_MAX) {
        log_error("request %s: %d body fields for %s (1 to %d)", o->req->request_id, res->nfields, res->name,
                  RESOURCE_FIELDS_MAX);
        reply_error(o->req, 500, "internal", "internal error");
        return;
    }
    struct json_object *obj = body_object(o->req);
    if (!obj)
        return;
    char id[ID_TEXT_MAX];
    const char *params[3 + RESOURCE_FIELDS_MAX] = { id }; /* id, fields, tags, the key's */
    id_text(o->id, id, sizeof(id));
    if (members_check(o->req, obj, res) == 0 &&
        fields_read(o->req, obj, res->fields, res->nfields, required, params + 1) == 0) {
        int first = o->id ? 0 : 1, n = 1 + res->nfields - first;
        params[1 + res->nfields] = tags;
        if (tags || (key && o->req->method != HTTP_POST)) /* a create has no If-Match */
            n++;
        write_start(o, w, params + first, n, status, key);
    }
    json_object_put(obj); /* the values were owned by obj; the pool copied them */
}

void resource_op_create(const struct resource_op *o)
{
    const struct resource *res = o->res;
    const char *key;
    if (idempotency_key_read(o->req, &key) < 0)
        return;
    struct write_sql w = { .plain = res->sql_create,
                           .many = res->sql_create_many,
                           .keyed = res->sql_create_keyed };
    write_body(o, &w, true, 201, NULL, key);
}

/* ---- preconditions (If-Match) ---------------------------------------------------------------- */

/* The literal's room: each tag of n bytes took n + 2 quotes + 1 comma of the value, and takes at most 2n
 * escaped + 3 here, so the literal never outgrows twice the value, plus the braces and the NUL */
#define TAGS_LITERAL_MAX (2 * HTTP_IF_MATCH_BYTES_MAX + 4)

/* An If-Match's strong tags as a text[] literal: {"tag",...}. A tag with a byte outside visible ASCII
 * is left out: no ETag or version has one, so it could only fail to match (and text must be UTF-8). */
static void tags_literal(const struct http_if_match *m, char *buf, size_t cap)
{
    size_t len = 0;
    buf[len++] = '{';
    for (int i = 0; i < m->ntags; i++) {
        bool ascii = true;
        for (size_t j = 0; j < m->tags[i].len; j++)
            ascii = ascii && (unsigned char)m->tags[i].p[j] < 0x80;
        if (!ascii)
            continue;
        if (len > 1)
            buf[len++] = ',';
        buf[len++] = '"';
        /* len + 4 < cap never fails (TAGS_LITERAL_MAX): a guard only */
        for (size_t j = 0; j < m->tags[i].len && len + 4 < cap; j++) {
            if (m->tags[i].p[j] == '\\') /* '"' is no etagc; '\\' is, and escapes in an array literal */
                buf[len++] = '\\';
            buf[len++] = m->tags[i].p[j];
        }
        buf[len++] = '"';
    }
    buf[len++] = '}';
    buf[len] = '\0';
}

/* The preconditions of a PUT, PATCH or DELETE of one row. If-None-Match is refused whatever it holds:
 * PUT here only replaces (it never creates), so "*" (create only if absent) cannot be honoured, and a
 * condition silently ignored would let a write through that its client meant to stop. If-Match: *tags
 * is NULL when the write is unconditional (none, or "*": the row must exist, which a 404 says), else the
 * text[] literal of its tags in buf. Returns -1 after answering 400. */
static int preconditions_read(struct http_request *req, char *buf, const char **tags)
{
    *tags = NULL;
    if (http_headers_seen(&req->headers, HTTP_H_IF_NONE_MATCH)) {
        reply_error(req, 400, "precondition_unsupported",
                    "If-None-Match is not supported on %s: PUT only replaces an existing row (POST creates "
                    "one); use If-Match with the row's ETag or version",
                    req->method_name);
        return -1;
    }
    unsigned seen = http_headers_seen(&req->headers, HTTP_H_IF_MATCH);
    if (!seen)
        return 0;
    const char *value = http_request_header(req, HTTP_H_IF_MATCH), *err = NULL;
    struct http_if_match m;
    if (seen > 1)
        err = "send one If-Match field, its entity tags separated by commas";
    else if (strlen(value) > HTTP_IF_MATCH_BYTES_MAX)
        err = "longer than " RESOURCE_STR(HTTP_IF_MATCH_BYTES_MAX) " bytes";
    else if (http_if_match_parse(value, &m, &err) == 0 && !m.any) {
        tags_literal(&m, buf, TAGS_LITERAL_MAX);
        *tags = buf;
    }
    if (err) {
        reply_error(req, 400, "invalid_header", "If-Match: %s", err);
        return -1;
    }
    return 0;
}

void resource_op_item_write(const struct resource_op *o)
{
    const struct resource *res = o->res;
    char buf[TAGS_LITERAL_MAX], id[ID_TEXT_MAX];
    const char *tags, *key;
    if (preconditions_read(o->req, buf, &tags) < 0 || idempotency_key_read(o->req, &key) < 0)
        return;
    if (o->req->method == HTTP_DELETE) {
        const char *params[] = { id, tags, NULL }; /* id, tags (NULL: none), the key's */
        struct write_sql w = { .plain = tags ? res->sql_delete_if : res->sql_delete,
                               .keyed = res->sql_delete_keyed };
        id_text(o->id, id, sizeof(id));
        write_start(o, &w, params, tags || key ? 2 : 1, 204, key);
    } else if (o->req->method == HTTP_PUT) {
        struct write_sql w = { .plain = tags ? res->sql_replace_if : res->sql_replace,
                               .many = tags ? NULL : res->sql_replace_many,
                               .keyed = res->sql_replace_keyed,
                               .many_distinct = true };
        write_body(o, &w, true, 200, tags, key);
    } else {
        struct write_sql w = { .plain = tags ? res->sql_patch_if : res->sql_patch,
                               .many = tags ? NULL : res->sql_patch_many,
                               .keyed = res->sql_patch_keyed,
                               .many_distinct = true };
        write_body(o, &w, false, 200, tags, key);
    }
}
