/* fake_db: pool.h and cache.h for the fuzz target. The pool answers every statement as it was told
 * (fake_db.h), through the callback, exactly once, as the real one does; the cache is disabled. */
#include "tests/fuzz/fake_db.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "worker/cache/cache.h"
#include "worker/db/pool.h"

#define FAKE_ROW_ID "1"
#define FAKE_ROW_JSON "{\"id\":1,\"user_id\":1,\"name\":\"a\",\"version\":1}"
#define OID_INT8 20
#define OID_TEXT 25

struct pool {
    struct event_base *base;
    enum fake_answer answer;
    uint64_t lsn;             /* raised by each write: the fake is one server, always up to date */
    struct fake_job *pending; /* reads not answered yet: pool_cancel may drop them */
};

/* One statement's answer, due on the next loop turn. */
struct fake_job {
    struct pool *pool;
    pool_cb cb;
    void *arg;
    bool write;
    bool cancelled;        /* pool_cancel: freed on its turn without a callback */
    struct fake_job *next; /* reads: the pool's pending list */
};

struct pool *fake_pool_new(struct event_base *base, enum fake_answer answer)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (p)
        *p = (struct pool){ .base = base, .answer = answer };
    return p;
}

void pool_free(struct pool *p)
{
    free(p);
}

static void answer_unavailable(pool_cb cb, void *arg, const char *why)
{
    struct pool_result r = { .status = POOL_ERR_UNAVAILABLE, .sqlstate = "", .message = why, .backend = -1 };
    cb(arg, &r);
}

/* The (id, json) result a resource statement (resource.h) returns: no row, or one. NULL when out of
 * memory. */
static PGresult *result_make(const struct pool *p)
{
    PGresAttDesc cols[2] = {
        { .name = "id", .typid = OID_INT8, .typlen = 8, .atttypmod = -1 },
        { .name = "body", .typid = OID_TEXT, .typlen = -1, .atttypmod = -1 },
    };
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    if (!res || !PQsetResultAttrs(res, 2, cols))
        goto fail;
    if (p->answer == FAKE_ONE_ROW && (!PQsetvalue(res, 0, 0, FAKE_ROW_ID, (int)strlen(FAKE_ROW_ID)) ||
                                      !PQsetvalue(res, 0, 1, FAKE_ROW_JSON, (int)strlen(FAKE_ROW_JSON))))
        goto fail;
    return res;
fail:
    PQclear(res);
    return NULL;
}

static void job_run(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct fake_job *j = arg;
    struct pool *p = j->pool;
    for (struct fake_job **at = &p->pending; *at; at = &(*at)->next) {
        if (*at == j) {
            *at = j->next;
            break;
        }
    }
    if (j->cancelled) {
        free(j);
        return;
    }
    if (p->answer == FAKE_DOWN) {
        answer_unavailable(j->cb, j->arg, "primary down");
        free(j);
        return;
    }
    PGresult *res = result_make(p);
    if (!res) {
        answer_unavailable(j->cb, j->arg, "out of memory");
        free(j);
        return;
    }
    if (j->write)
        p->lsn++;
    struct pool_result r = { .status = POOL_OK,
                             .res = res,
                             .sqlstate = "",
                             .message = "",
                             .backend = -1,
                             .commit_lsn = j->write ? p->lsn : 0,
                             .data_lsn = p->lsn };
    j->cb(j->arg, &r);
    PQclear(res);
    free(j);
}

static void job_queue(struct pool *p, pool_cb cb, void *arg, bool write)
{
    if (p->answer == FAKE_QUEUE_FULL) {
        answer_unavailable(cb, arg, "wait queue full");
        return;
    }
    struct fake_job *j = malloc(sizeof(*j));
    if (!j) {
        answer_unavailable(cb, arg, "out of memory");
        return;
    }
    *j = (struct fake_job){ .pool = p, .cb = cb, .arg = arg, .write = write };
    if (event_base_once(p->base, -1, EV_TIMEOUT, job_run, j, NULL) < 0) { /* no timeout: next turn */
        free(j);
        answer_unavailable(cb, arg, "cannot schedule the answer");
        return;
    }
    if (!write) {
        j->next = p->pending;
        p->pending = j;
    }
}

/* A read still waiting for its turn counts as never sent, as one in the real pool's queue. */
bool pool_cancel(struct pool *p, const void *arg)
{
    for (struct fake_job *j = p->pending; j; j = j->next) {
        if (j->arg == arg && !j->cancelled) {
            j->cancelled = true;
            return true;
        }
    }
    return false;
}

void pool_write(struct pool *p, const struct pool_query *q, pool_cb cb, void *arg)
{
    (void)q;
    job_queue(p, cb, arg, true);
}

void pool_read(struct pool *p, const struct pool_query *q, uint64_t fence_lsn, pool_cb cb, void *arg)
{
    (void)q;
    (void)fence_lsn;
    job_queue(p, cb, arg, false);
}

const char *pool_primary_id(const struct pool *p)
{
    (void)p;
    return "";
}

bool pool_primary_up(const struct pool *p)
{
    return p->answer == FAKE_NO_ROWS || p->answer == FAKE_ONE_ROW;
}

int pool_replicas_up(const struct pool *p)
{
    (void)p;
    return 0;
}

int pool_replica_count(const struct pool *p)
{
    (void)p;
    return 0;
}

void pool_backend_stats(const struct pool *p, int backend, struct pool_backend_stats *out)
{
    (void)p;
    (void)backend;
    *out = (struct pool_backend_stats){ 0 };
}

/* ---- the cache: disabled, so resource_ops.c never looks anything up; the rest answers as when Redis is
 * down ---- */

enum cache_state cache_state(const struct cache *c)
{
    (void)c;
    return CACHE_DISABLED;
}

const char *cache_state_name(enum cache_state s)
{
    return s == CACHE_DISABLED ? "disabled" : "fake";
}

const char *cache_master(const struct cache *c)
{
    (void)c;
    return NULL;
}

void cache_lookup(struct cache *c, const char *key, const char *gen, const struct cache_fences *fences,
                  cache_lookup_cb cb, void *arg)
{
    (void)c;
    (void)key;
    (void)gen;
    (void)fences;
    cb(arg, &(struct cache_lookup){ .kind = CACHE_BYPASS });
}

/* The deployment (api_context.deployment is NULL here: off) never calls these; they only link. */
void cache_rate_check(struct cache *c, const char *key, uint64_t interval_us, uint64_t tolerance_us,
                      cache_rate_cb cb, void *arg)
{
    (void)c;
    (void)key;
    (void)interval_us;
    (void)tolerance_us;
    cb(arg, &(struct cache_rate){ .result = CACHE_RATE_UNKNOWN });
}

bool cache_writable(const struct cache *c)
{
    (void)c;
    return false;
}

void cache_sync(struct cache *c, cache_log_cb apply, cache_sync_cb done, void *arg)
{
    (void)c;
    (void)apply;
    done(arg, CACHE_SYNC_FAILED);
}

void cache_set_hooks(struct cache *c, const struct cache_hooks *hooks)
{
    (void)c;
    (void)hooks;
}

void cache_primary_lsn_done(struct cache *c, bool ok, uint64_t lsn)
{
    (void)c;
    (void)ok;
    (void)lsn;
}

void cache_purge_seen(struct cache *c, uint64_t gen, uint64_t lsn)
{
    (void)c;
    (void)gen;
    (void)lsn;
}

void cache_purge_recorded(struct cache *c, bool ok, uint64_t gen, uint64_t lsn)
{
    (void)c;
    (void)ok;
    (void)gen;
    (void)lsn;
}

void cache_fill(struct cache *c, const struct cache_lookup *lease, const char *value, size_t len,
                uint64_t data_lsn, uint64_t reach_lsn)
{
    (void)reach_lsn;
    (void)c;
    (void)lease;
    (void)value;
    (void)len;
    (void)data_lsn;
}

void cache_release(struct cache *c, const struct cache_lookup *lease)
{
    (void)c;
    (void)lease;
}

void cache_invalidate(struct cache *c, const struct cache_change *ch, uint64_t lsn,
                      const struct cache_through *t, cache_done_cb cb, void *arg)
{
    (void)c;
    (void)ch;
    (void)lsn;
    (void)t;
    cb(arg, false);
}

const char *cache_epoch(const struct cache *c)
{
    (void)c;
    return "";
}
