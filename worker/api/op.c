/* op: the request steps the resource handlers share. A write is acknowledged only after the fences of
 * the tables it touched are raised to its commit LSN, so any read that starts after the answer goes to
 * a server that has replayed it; a read waits for the fences of every table it reads. */
#include "worker/api/op.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <http_parser.h>
#include <json-c/json.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "worker/http/body.h"
#include "worker/cache/cache.h"
#include "worker/db/dbreply.h"
#include "worker/db/id_list.h"
#include "worker/cache/local_cache.h"
#include "worker/db/pool.h"
#include "worker/http/query.h"
#include "worker/http/reply.h"
#include "worker/api/rows.h"
#include "worker/worker.h"

#define LIST_DEFAULT 50
#define LIST_MAX 1000
#define ID_TEXT_MAX 24
#define PATH_TEXT_MAX 64
#define EMPTY_PAGE "{\"data\":[],\"next\":null}"
#define CACHE_WAIT_MS 5
#define CACHE_WAITS_MAX 10

/* One request in flight: the caller's op and what its callback needs. */
struct op_state {
    struct op_state *prev, *next; /* the worker's requests in flight (w->ops), for op_discard_all */
    struct op o;
    bool write;
    int status;                 /* success status: 200, 201 (with Location) or 204 (no body) */
    int64_t limit;              /* pages: rows shown */
    char base[PATH_TEXT_MAX];   /* pages: where the next-page link points */
    const char *sql;            /* cached reads: the statement, run after the lookup */
    const char *sql_many;       /* op_get: its batched form (pool_query.batch_sql) */
    char key[CACHE_KEY_MAX];    /* cached reads: the cache key */
    char gen[CACHE_KEY_MAX];    /* cached pages: the list's generation name ("" for a row) */
    int64_t after;              /* pages: the keyset cursor */
    struct cache_lookup lease;  /* cached reads: CACHE_LEASE when this request fills the key */
    uint64_t key_fence;         /* cached reads: the key's fence from Redis */
    int waits;
    bool gone;                  /* reads: the client went (client_gone) */
    bool row_read;              /* op_get: waits for the row's fence, not the whole table's */
    struct local_stamp local_stamp; /* op_get: the row's fence before anything was read (local_cache.h) */
    void (*db_read)(struct op_state *s); /* cached reads: the database step after a miss or bypass */
    struct event *wait_ev;
    char *row_json;             /* writes waiting for their invalidation: the answer, copied */
    size_t row_len;
    char row_id[ID_TEXT_MAX];
    int64_t *cascade;           /* a user's deletion: the ids of the posts that went with it */
    int ncascade;               /* how many; -1 when they are not known (every post counts as changed) */
};

static void state_free(struct op_state *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        s->o.w->ops = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->wait_ev)
        event_free(s->wait_ev);
    free(s->row_json);
    free(s->cascade);
    free(s);
}

/* Fills the key whose lease this request holds (if it holds one); the lease is used up either way. */
static void lease_fill(struct op_state *s, const char *value, size_t len, uint64_t data_lsn)
{
    if (s->lease.kind != CACHE_LEASE)
        return;
    cache_fill(s->o.w->cache, &s->lease, value, len, data_lsn);
    s->lease.kind = CACHE_BYPASS;
}

/* The end of a read's database step: a fill lease it did not use (a 404, an error, a value not cached)
 * is given back, so other readers of the key do not wait for a fill that never comes; then the state
 * goes. (Not state_free's job: that one also runs at exit, when the cache may be gone.) */
static void state_end(struct op_state *s)
{
    if (s->lease.kind == CACHE_LEASE)
        cache_release(s->o.w->cache, &s->lease);
    state_free(s);
}

static void client_gone(void *arg);

static struct op_state *state_new(const struct op *o, bool write, int status)
{
    struct op_state *s = malloc(sizeof(*s));
    if (!s) {
        reply_error(o->req, 503, "out_of_memory", "server out of memory");
        return NULL;
    }
    *s = (struct op_state){ .o = *o, .write = write, .status = status, .next = o->w->ops };
    if (s->next)
        s->next->prev = s;
    o->w->ops = s;
    if (!write)
        http_on_gone(o->req, client_gone, s);
    return s;
}

/* A read whose client went is answered with nothing (http accounts it as 499) and freed. */
static void gone_drop(struct op_state *s)
{
    http_respond(s->o.req, HTTP_STATUS_CLIENT_GONE, NULL, NULL, 0);
    state_end(s); /* a lease it held is given back: nobody waits for its fill */
}

/* The client of a read went (http_on_gone). A read not yet sent is dropped now: out of the pool queue, or
 * off its wait for another request's fill; one waiting in Redis is dropped when Redis answers
 * (lookup_done); one sent to the database runs to its end, its answer going nowhere. Writes are not
 * told: they complete and invalidate whatever their client does. */
static void client_gone(void *arg)
{
    struct op_state *s = arg;
    s->gone = true;
    bool waiting = s->wait_ev && event_pending(s->wait_ev, EV_TIMEOUT, NULL);
    if (waiting)
        event_del(s->wait_ev);
    if (waiting || pool_cancel(s->o.w->pool, s))
        gone_drop(s);
}

void op_discard_all(struct worker *w)
{
    while (w->ops)
        state_free(w->ops);
}

static void id_text(int64_t id, char *buf, size_t cap)
{
    snprintf(buf, cap, "%" PRId64, id);
}

static void not_found(const struct op *o)
{
    reply_error(o->req, 404, "not_found", "%s %" PRId64 " not found", o->owner ? o->owner : o->res->what,
                o->id);
}

/* The foreign key to the owner failed (it never existed, or went meanwhile): a 404 that names it. */
static bool owner_missing(const struct op *o, const struct pool_result *r)
{
    if (!o->owner || r->status != POOL_ERR_SQL || strcmp(r->sqlstate, "23503") != 0)
        return false;
    not_found(o);
    return true;
}

/* The tables a read reads, or a write changes. */
static unsigned tables_of(const struct op_state *s)
{
    return OP_TABLE(s->o.res->table) | s->o.also;
}

/* The highest fence of the tables a read reads. */
static uint64_t fence_of(const struct op_state *s)
{
    uint64_t lsn = 0;
    for (int t = 0; t < FENCE_COUNT; t++) {
        uint64_t f = (tables_of(s) & OP_TABLE(t)) ? fences_get(s->o.w->fences, (enum fence_table)t) : 0;
        lsn = f > lsn ? f : lsn;
    }
    return lsn;
}

/* The fence of the one row (and, with ?include=posts, of the user's posts) an op_get reads. */
static uint64_t row_fence_of(const struct op_state *s)
{
    const struct op *o = &s->o;
    struct fences *f = o->w->fences;
    if (o->res->table == FENCE_POSTS)
        return fences_get_row(f, FENCE_ROW_POST, o->id);
    uint64_t lsn = fences_get_row(f, FENCE_ROW_USER, o->id);
    if (o->also & OP_TABLE(FENCE_POSTS)) {
        uint64_t posts = fences_get_row(f, FENCE_ROW_USER_POSTS, o->id);
        lsn = posts > lsn ? posts : lsn;
    }
    return lsn;
}

static void fences_raise_tables(const struct op_state *s, uint64_t lsn)
{
    for (int t = 0; t < FENCE_COUNT; t++)
        if (tables_of(s) & OP_TABLE(t))
            fences_raise(s->o.w->fences, (enum fence_table)t, lsn);
}

static void start(struct op_state *s, const char *sql, const char *const *params, int n, pool_cb cb)
{
    struct pool_query q = { .sql = sql, .nparams = n, .params = params, .batch_sql = s->sql_many };
    uint64_t fence = s->row_read ? row_fence_of(s) : fence_of(s);
    if (s->key_fence > fence)
        fence = s->key_fence;
    if (s->write)
        pool_write(s->o.w->pool, &q, cb, s); /* the pool copies the parameters */
    else
        pool_read(s->o.w->pool, &q, fence, cb, s);
}

/* ---- one row -------------------------------------------------------------------------------- */

static void answer(const struct op_state *s, const char *id, const char *json, size_t len)
{
    const struct op *o = &s->o;
    if (s->status == 204) {
        http_respond(o->req, 204, NULL, NULL, 0);
        return;
    }
    if (s->status == 201) {
        char loc[PATH_TEXT_MAX + ID_TEXT_MAX];
        snprintf(loc, sizeof(loc), "%s/%s", o->res->path, id);
        http_header_add(o->req, "Location", loc);
    }
    http_respond(o->req, s->status, "application/json", json, len);
}

/* A post row's user_id, from the JSON the statement returned; 0 if it cannot be read. */
static int64_t post_user_id(const PGresult *res)
{
    struct json_object *row = json_tokener_parse(PQgetvalue(res, 0, 1)), *uid;
    int64_t user_id = row && json_object_object_get_ex(row, "user_id", &uid) ? json_object_get_int64(uid) : 0;
    json_object_put(row);
    return user_id;
}

static bool is_user_delete(const struct op_state *s)
{
    return s->o.res->table == FENCE_USERS && s->o.req->method == HTTP_DELETE;
}

/* The posts a user's deletion took with it: the statement's third column (its sql_delete), when the
 * statement could name them. */
static void cascade_read(struct op_state *s, const PGresult *res)
{
    s->ncascade = -1;
    if (!is_user_delete(s) || PQnfields(res) < 3 || PQgetisnull(res, 0, 2))
        return;
    s->cascade = malloc(CACHE_CHANGE_IDS_MAX * sizeof(*s->cascade));
    if (s->cascade)
        s->ncascade = id_list_parse(PQgetvalue(res, 0, 2), s->cascade, CACHE_CHANGE_IDS_MAX);
    if (s->ncascade < 0)
        log_warn("request %s: a user's deletion did not name its posts: every post counts as changed",
                 s->o.req->request_id);
}

/* The row fences a committed write raises, before it is answered (see row_fence_of). */
static void row_fences_raise(const struct op_state *s, const PGresult *res, uint64_t lsn)
{
    struct fences *f = s->o.w->fences;
    int64_t id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    if (s->o.res->table == FENCE_USERS) {
        fences_raise_row(f, FENCE_ROW_USER, id, lsn);
        if (s->o.req->method == HTTP_DELETE) {
            fences_raise_row(f, FENCE_ROW_USER_POSTS, id, lsn);
            for (int i = 0; i < s->ncascade; i++) /* its posts went with it */
                fences_raise_row(f, FENCE_ROW_POST, s->cascade[i], lsn);
            if (s->ncascade < 0)
                fences_raise_rowset(f, FENCE_ROW_POST, lsn); /* which ones is not known */
        }
        return;
    }
    fences_raise_row(f, FENCE_ROW_POST, id, lsn);
    int64_t user_id = post_user_id(res);
    if (user_id > 0)
        fences_raise_row(f, FENCE_ROW_USER_POSTS, user_id, lsn);
    else
        fences_raise_rowset(f, FENCE_ROW_USER_POSTS, lsn);
}

/* What a committed write changes in the cache: its rows' keys and the lists holding them. A user's
 * deletion takes its posts with it: by id, or (when they could not be named) the whole cache moves to a
 * new epoch. */
static void write_change(const struct op_state *s, const PGresult *res, struct cache_change *ch)
{
    const struct op *o = &s->o;
    const char *id = PQgetvalue(res, 0, 0);
    *ch = (struct cache_change){ .ngens = 1 };
    if (o->res->table == FENCE_USERS) {
        snprintf(ch->gens[0], CACHE_KEY_MAX, "users");
        if (is_user_delete(s)) { /* its posts: their keys, every posts list and its own */
            snprintf(ch->gens[1], CACHE_KEY_MAX, "posts");
            snprintf(ch->gens[2], CACHE_KEY_MAX, "uposts:%s", id);
            ch->ngens = 3;
            ch->id_prefix = "post:";
            ch->ids = s->cascade;
            ch->nids = s->ncascade > 0 ? s->ncascade : 0;
            ch->all = s->ncascade < 0;
        }
        if (!o->created) {
            snprintf(ch->keys[0], CACHE_KEY_MAX, "user:%s", id);
            snprintf(ch->keys[1], CACHE_KEY_MAX, "userp:%s", id);
            ch->nkeys = 2;
        }
        return;
    }
    snprintf(ch->gens[0], CACHE_KEY_MAX, "posts");
    int64_t user_id = post_user_id(res);
    if (user_id <= 0) {
        ch->all = true; /* cannot name the user's lists: drop everything rather than risk a stale entry */
        return;
    }
    snprintf(ch->gens[1], CACHE_KEY_MAX, "uposts:%" PRId64, user_id);
    snprintf(ch->keys[0], CACHE_KEY_MAX, "userp:%" PRId64, user_id);
    ch->ngens = 2;
    ch->nkeys = 1;
    if (!o->created) {
        snprintf(ch->keys[1], CACHE_KEY_MAX, "post:%s", id);
        ch->nkeys = 2;
    }
}

static void invalidate_done(void *arg, bool ok)
{
    struct op_state *s = arg;
    if (!ok)
        fences_cache_dirty_set(s->o.w->fences); /* every worker bypasses the cache until a new epoch */
    answer(s, s->row_id, s->row_json, s->row_len);
    state_free(s);
}

/* The fences a committed write raises before its answer. Its commit LSN unknown (the connection went
 * after the COMMIT): the tables it changed read from the primary until the pool has read the primary's
 * position again (fences_unknown_mark). */
static void write_fences_raise(const struct op_state *s, const PGresult *res, uint64_t lsn)
{
    if (lsn == POOL_LSN_NONE) {
        for (int t = 0; t < FENCE_COUNT; t++)
            if (tables_of(s) & OP_TABLE(t))
                fences_unknown_mark(s->o.w->fences, (enum fence_table)t);
        return;
    }
    fences_raise_tables(s, lsn);
    row_fences_raise(s, res, lsn);
}

/* A committed write: fences raised, then the cache invalidated, then the answer. */
static void write_committed(struct op_state *s, const struct pool_result *r)
{
    cascade_read(s, r->res);
    write_fences_raise(s, r->res, r->commit_lsn);
    if (cache_state(s->o.w->cache) == CACHE_DISABLED) {
        answer(s, PQgetvalue(r->res, 0, 0), PQgetvalue(r->res, 0, 1), (size_t)PQgetlength(r->res, 0, 1));
        state_free(s);
        return;
    }
    struct cache_change ch;
    write_change(s, r->res, &ch);
    s->row_len = (size_t)PQgetlength(r->res, 0, 1);
    s->row_json = malloc(s->row_len + 1);
    if (!s->row_json) {
        fences_cache_dirty_set(s->o.w->fences);
        reply_error(s->o.req, 503, "out_of_memory", "server out of memory after the commit");
        state_free(s);
        return;
    }
    memcpy(s->row_json, PQgetvalue(r->res, 0, 1), s->row_len + 1);
    snprintf(s->row_id, sizeof(s->row_id), "%s", PQgetvalue(r->res, 0, 0));
    cache_invalidate(s->o.w->cache, &ch, r->commit_lsn, invalidate_done, s);
}

/* A row's value goes into the worker's local cache, stamped with the row's fence as read before the
 * lookup, only if it holds every write up to that fence: then any write it lacks raised the fence after
 * the stamp was taken, and the entry is never served. */
static void local_fill(const struct op_state *s, const char *value, size_t len, uint64_t data_lsn)
{
    if (s->row_read && s->key[0] && data_lsn != POOL_LSN_NEWEST && data_lsn >= s->local_stamp.fence)
        local_cache_put(s->o.w->local, s->key, &s->local_stamp, value, len);
}

static void row_done(void *arg, const struct pool_result *r)
{
    struct op_state *s = arg;
    const struct op *o = &s->o;
    if (owner_missing(o, r) || dbreply_error_answer(o->req, r, o->res->what)) {
        state_end(s);
    } else if (PQntuples(r->res) == 0) {
        not_found(o);
        state_end(s);
    } else if (s->write) {
        write_committed(s, r);
    } else {
        const char *json = PQgetvalue(r->res, 0, 1);
        size_t len = (size_t)PQgetlength(r->res, 0, 1);
        lease_fill(s, json, len, r->data_lsn);
        local_fill(s, json, len, r->data_lsn);
        answer(s, PQgetvalue(r->res, 0, 0), json, len);
        state_end(s);
    }
}

static void lookup_done(void *arg, const struct cache_lookup *l);

static void by_id_run(struct op_state *s)
{
    const struct config *cfg = s->o.w->cfg;
    char text[3][ID_TEXT_MAX];
    id_text(s->o.id, text[0], sizeof(text[0]));
    id_text(cfg->embed_posts, text[1], sizeof(text[1]));
    id_text((int64_t)cfg->page_bytes, text[2], sizeof(text[2]));
    const char *params[] = { text[0], text[1], text[2] };
    start(s, s->sql, params, s->o.embeds ? 3 : 1, row_done);
}

static void lookup_send(struct op_state *s)
{
    cache_lookup(s->o.w->cache, s->key, s->gen[0] ? s->gen : NULL, lookup_done, s);
}

/* A read: from the cache when it has a key (and the cache is on), else straight from the database. */
static void read_start(struct op_state *s)
{
    if (!s->key[0] || cache_state(s->o.w->cache) == CACHE_DISABLED)
        s->db_read(s);
    else
        lookup_send(s);
}

static void wait_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lookup_send(arg);
}

/* Another request holds the fill lease: wait a few ms for its value (one query per hot key, not N),
 * then read the database without filling. */
static void lookup_wait(struct op_state *s)
{
    if (s->waits++ >= CACHE_WAITS_MAX) {
        s->db_read(s);
        return;
    }
    if (!s->wait_ev)
        s->wait_ev = evtimer_new(s->o.w->base, wait_cb, s);
    if (!s->wait_ev || event_add(s->wait_ev, &(struct timeval){ 0, CACHE_WAIT_MS * 1000 }) < 0)
        s->db_read(s);
}

static void lookup_done(void *arg, const struct cache_lookup *l)
{
    struct op_state *s = arg;
    struct http_request *req = s->o.req;
    if (s->gone) {
        gone_drop(s);
        return;
    }
    s->key_fence = l->fence;
    switch (l->kind) {
    case CACHE_HIT:
        req->cache_status = "HIT";
        local_fill(s, l->value, l->len, l->data_lsn);
        http_respond(req, 200, "application/json", l->value, l->len);
        state_free(s);
        return;
    case CACHE_WAIT:
        req->cache_status = "MISS";
        lookup_wait(s);
        return;
    case CACHE_LEASE:
        req->cache_status = "MISS";
        s->lease = *l;
        s->lease.value = NULL;
        break;
    case CACHE_BYPASS:
        req->cache_status = "BYPASS";
        break;
    }
    s->db_read(s);
}

void op_get(const struct op *o, const char *sql, const char *sql_many)
{
    struct op_state *s = state_new(o, false, 200);
    if (!s)
        return;
    s->sql = sql;
    s->sql_many = sql_many;
    s->row_read = true;
    s->db_read = by_id_run;
    if (o->cache)
        snprintf(s->key, sizeof(s->key), "%s:%" PRId64, o->cache, o->id);
    s->local_stamp = (struct local_stamp){ .fence = row_fence_of(s),
                                           .troubles = fences_cache_troubles(o->w->fences) };
    const char *value;
    size_t len;
    if (s->key[0] && local_cache_get(o->w->local, s->key, &s->local_stamp, &value, &len)) {
        o->req->cache_status = "HIT";
        http_respond(o->req, 200, "application/json", value, len);
        state_free(s);
        return;
    }
    read_start(s);
}

/* ---- pages ---------------------------------------------------------------------------------- */

/* Builds the page body, fills the cache when this request holds the lease, answers. */
static void page_answer(struct op_state *s, const struct pool_result *r)
{
    const PGresult *res = r->res;
    bool empty = PQntuples(res) > 0 && PQgetisnull(res, 0, 0);
    struct evbuffer *b = evbuffer_new();
    int rc = !b      ? -1
             : empty ? evbuffer_add(b, EMPTY_PAGE, strlen(EMPTY_PAGE))
                     : rows_page_build(b, res, s->limit, s->base);
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
        lease_fill(s, body, len, r->data_lsn);
    http_respond(s->o.req, 200, "application/json", body, len);
    evbuffer_free(b);
}

static void page_done(void *arg, const struct pool_result *r)
{
    struct op_state *s = arg;
    const struct op *o = &s->o;
    if (!dbreply_error_answer(o->req, r, o->res->what)) {
        if (PQntuples(r->res) == 0 && o->id)
            not_found(o);
        else
            page_answer(s, r);
    }
    state_end(s);
}

static void page_db_read(struct op_state *s)
{
    char text[4][ID_TEXT_MAX];
    id_text(s->o.id, text[0], sizeof(text[0]));
    id_text(s->after, text[1], sizeof(text[1]));
    id_text(s->limit, text[2], sizeof(text[2]));
    id_text((int64_t)s->o.w->cfg->page_bytes, text[3], sizeof(text[3]));
    const char *params[] = { text[0], text[1], text[2], text[3] };
    int first = s->o.id ? 0 : 1;
    start(s, s->sql, params + first, 4 - first, page_done);
}

void op_page(const struct op *o, const char *sql, const char *base)
{
    int64_t limit, after;
    if (query_int(o->req, "limit", 1, LIST_MAX, LIST_DEFAULT, &limit) < 0 ||
        query_int(o->req, "after_id", 0, INT64_MAX, 0, &after) < 0)
        return;
    struct op_state *s = state_new(o, false, 200);
    if (!s)
        return;
    s->limit = limit;
    s->after = after;
    s->sql = sql;
    s->db_read = page_db_read;
    snprintf(s->base, sizeof(s->base), "%s", base);
    if (o->cache && o->cache_list) {
        snprintf(s->key, sizeof(s->key), "%s:%" PRId64 ":%" PRId64 ":%" PRId64, o->cache, o->id, limit, after);
        if (o->id)
            snprintf(s->gen, sizeof(s->gen), "%s:%" PRId64, o->cache_list, o->id);
        else
            snprintf(s->gen, sizeof(s->gen), "%s", o->cache_list);
    }
    read_start(s);
}

/* ---- writes from a body --------------------------------------------------------------------- */

static int field_read(struct http_request *req, struct json_object *obj, const struct op_field *f, bool required,
                      const char **out)
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

static void names_list(const struct op_field *fields, int n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s\"%s\"", i == 0 ? "" : i == n - 1 ? " and " : ", ",
                                fields[i].name);
}

/* Fills out[i] for every field (NULL when absent and optional). Returns -1 after answering. */
static int fields_read(struct http_request *req, struct json_object *obj, const struct op_field *fields, int n,
                       bool required, const char **out)
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
static int members_check(struct http_request *req, struct json_object *obj, const struct op_resource *res)
{
    const char *names[OP_FIELDS_MAX];
    for (int i = 0; i < res->nfields; i++)
        names[i] = res->fields[i].name;
    const char *key = body_member_other(obj, names, res->nfields);
    if (!key)
        return 0;
    char list[128];
    names_list(res->fields, res->nfields, list, sizeof(list));
    if (body_name_listed(key, res->read_only))
        reply_error(req, 400, "read_only_field", "field \"%s\" is read-only: a %s's body takes only %s", key,
                    res->what, list);
    else
        reply_error(req, 400, "unknown_field", "unknown field \"%.64s\": a %s's body takes only %s", key,
                    res->what, list);
    return -1;
}

void op_write_body(const struct op *o, const char *sql, const char *sql_many, bool required)
{
    const struct op_resource *res = o->res;
    if (res->nfields < 1 || res->nfields > OP_FIELDS_MAX) {
        log_error("request %s: %d body fields for %s (1 to %d)", o->req->request_id, res->nfields, res->what,
                  OP_FIELDS_MAX);
        reply_error(o->req, 500, "internal", "internal error");
        return;
    }
    struct json_object *obj = body_object(o->req);
    if (!obj)
        return;
    char id[ID_TEXT_MAX];
    const char *params[1 + OP_FIELDS_MAX] = { id };
    id_text(o->id, id, sizeof(id));
    if (members_check(o->req, obj, res) == 0 &&
        fields_read(o->req, obj, res->fields, res->nfields, required, params + 1) == 0) {
        struct op_state *s = state_new(o, true, o->created ? 201 : 200);
        int first = o->id ? 0 : 1;
        if (s) {
            s->sql_many = sql_many;
            start(s, sql, params + first, 1 + res->nfields - first, row_done);
        }
    }
    json_object_put(obj); /* the values were owned by obj; the pool copied them */
}

void op_item_write(const struct op *o)
{
    const struct op_resource *res = o->res;
    if (o->req->method == HTTP_DELETE) {
        struct op d = *o;
        d.also |= res->cascade;
        struct op_state *s = state_new(&d, true, 204);
        if (s) {
            s->sql = res->sql_delete;
            by_id_run(s); /* $1 = id; row_done answers 204 once the fences are raised */
        }
    } else if (o->req->method == HTTP_PUT) {
        op_write_body(o, res->sql_replace, NULL, true);
    } else {
        op_write_body(o, res->sql_patch, NULL, false);
    }
}
