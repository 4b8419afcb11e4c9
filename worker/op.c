/* op: the request steps the resource handlers share. A write is acknowledged only after the fences of
 * the tables it touched are raised to its commit LSN, so any read that starts after the answer goes to
 * a server that has replayed it; a read waits for the fences of every table it reads. */
#include "worker/op.h"

#include <http_parser.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/body.h"
#include "worker/dbreply.h"
#include "worker/pool.h"
#include "worker/query.h"
#include "worker/reply.h"
#include "worker/rows.h"
#include "worker/worker.h"

#define LIST_DEFAULT 50
#define LIST_MAX 1000
#define ID_TEXT_MAX 24
#define PATH_TEXT_MAX 64
#define EMPTY_PAGE "{\"data\":[],\"next\":null}"

/* One request in flight: the caller's op and what its callback needs. */
struct op_state {
    struct op o;
    bool write;
    int status;                 /* success status: 200, 201 (with Location) or 204 (no body) */
    int64_t limit;              /* pages: rows shown */
    char base[PATH_TEXT_MAX];   /* pages: where the next-page link points */
};

static struct op_state *state_new(const struct op *o, bool write, int status)
{
    struct op_state *s = malloc(sizeof(*s));
    if (!s) {
        reply_error(o->req, 503, "out_of_memory", "server out of memory");
        return NULL;
    }
    *s = (struct op_state){ .o = *o, .write = write, .status = status };
    return s;
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

static void fences_raise_tables(const struct op_state *s, uint64_t lsn)
{
    for (int t = 0; t < FENCE_COUNT; t++)
        if (tables_of(s) & OP_TABLE(t))
            fences_raise(s->o.w->fences, (enum fence_table)t, lsn);
}

static void start(struct op_state *s, const char *sql, const char *const *params, int n, pool_cb cb)
{
    struct pool_query q = { .sql = sql, .nparams = n, .params = params };
    if (s->write)
        pool_write(s->o.w->pool, &q, cb, s); /* the pool copies the parameters */
    else
        pool_read(s->o.w->pool, &q, fence_of(s), cb, s);
}

/* ---- one row -------------------------------------------------------------------------------- */

static void answer_row(const struct op_state *s, const PGresult *res)
{
    const struct op *o = &s->o;
    if (s->status == 204) {
        http_respond(o->req, 204, NULL, NULL, 0);
        return;
    }
    if (s->status == 201) {
        char loc[PATH_TEXT_MAX + ID_TEXT_MAX];
        snprintf(loc, sizeof(loc), "%s/%s", o->res->path, PQgetvalue(res, 0, 0));
        http_header_add(o->req, "Location", loc);
    }
    rows_reply_one(o->req, s->status, res, 1);
}

static void row_done(void *arg, const struct pool_result *r)
{
    struct op_state *s = arg;
    const struct op *o = &s->o;
    if (!owner_missing(o, r) && !dbreply_failed(o->req, r, o->res->what)) {
        if (s->write)
            fences_raise_tables(s, r->commit_lsn);
        if (PQntuples(r->res) == 0)
            not_found(o);
        else
            answer_row(s, r->res);
    }
    free(s);
}

static void run_by_id(const struct op *o, const char *sql, bool write, int status)
{
    struct op_state *s = state_new(o, write, status);
    if (!s)
        return;
    char id[ID_TEXT_MAX];
    id_text(o->id, id, sizeof(id));
    const char *params[] = { id };
    start(s, sql, params, o->id ? 1 : 0, row_done);
}

void op_get(const struct op *o, const char *sql)
{
    run_by_id(o, sql, false, 200);
}

/* ---- pages ---------------------------------------------------------------------------------- */

static void page_done(void *arg, const struct pool_result *r)
{
    struct op_state *s = arg;
    const struct op *o = &s->o;
    if (!dbreply_failed(o->req, r, o->res->what)) {
        int n = PQntuples(r->res);
        if (n == 0 && o->id)
            not_found(o);
        else if (n > 0 && PQgetisnull(r->res, 0, 0))
            http_respond(o->req, 200, "application/json", EMPTY_PAGE, strlen(EMPTY_PAGE));
        else
            rows_reply_page(o->req, r->res, s->limit, s->base);
    }
    free(s);
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
    snprintf(s->base, sizeof(s->base), "%s", base);
    char text[3][ID_TEXT_MAX];
    id_text(o->id, text[0], sizeof(text[0]));
    id_text(after, text[1], sizeof(text[1]));
    id_text(limit + 1, text[2], sizeof(text[2])); /* one extra row tells whether a next page exists */
    const char *params[] = { text[0], text[1], text[2] };
    int first = o->id ? 0 : 1;
    start(s, sql, params + first, 3 - first, page_done);
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

void op_write_body(const struct op *o, const char *sql, bool required)
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
    if (fields_read(o->req, obj, res->fields, res->nfields, required, params + 1) == 0) {
        struct op_state *s = state_new(o, true, o->created ? 201 : 200);
        int first = o->id ? 0 : 1;
        if (s)
            start(s, sql, params + first, 1 + res->nfields - first, row_done);
    }
    json_object_put(obj); /* the values were owned by obj; the pool copied them */
}

void op_item_write(const struct op *o)
{
    const struct op_resource *res = o->res;
    if (o->req->method == HTTP_DELETE) {
        struct op d = *o;
        d.also |= res->cascade;
        run_by_id(&d, res->sql_delete, true, 204);
    } else if (o->req->method == HTTP_PUT) {
        op_write_body(o, res->sql_replace, true);
    } else {
        op_write_body(o, res->sql_patch, false);
    }
}
