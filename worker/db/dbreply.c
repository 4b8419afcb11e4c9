/* dbreply: one mapping from SQLSTATE and pool status to HTTP, so every route fails the same way. The
 * failure is logged here once, with the request id. A client gets our own message, never the database's
 * text; the pool's messages (POOL_ERR_UNAVAILABLE, POOL_ERR_BROKEN) are ours too. */
#include "worker/db/dbreply.h"

#include <http_parser.h>
#include <string.h>

#include "common/log.h"
#include "worker/db/sqlstate.h"
#include "worker/http/reply.h"

/* Reads have no side effect; anything else may have changed a row. */
static bool request_writes(const struct http_request *req)
{
    return req->method != HTTP_GET && req->method != HTTP_HEAD;
}

/* The link went while the statement may have run: it may have committed before the link went. */
static bool link_lost_after_send(const char *st)
{
    return sqlstate_link_lost(st) && !sqlstate_before_statement(st);
}

const char *dbreply_retry_advice(const struct http_request *req)
{
    if (http_headers_seen(&req->headers, HTTP_H_IDEMPOTENCY_KEY))
        return "resending the same request with the same Idempotency-Key is safe: it is applied at most "
               "once, and answered as the first was if that one was applied";
    return "read the resource before retrying (a write sent with an Idempotency-Key can be resent safely)";
}

/* A write sent to the primary whose answer never came: it may or may not have been applied, so the
 * client must read before it writes again, or resend it with its Idempotency-Key (it is never retried
 * here). */
static void outcome_unknown_reply(struct http_request *req, const char *why, const char *detail)
{
    log_warn("request %s: write outcome unknown: %s%s%s", req->request_id, why, detail[0] ? ": " : "",
             detail);
    reply_error(req, 503, "write_outcome_unknown", "%s: the write may or may not have been applied; %s", why,
                dbreply_retry_advice(req));
}

/* A field of the error (PG_DIAG_*), or "" when the result or the field is missing. */
static const char *error_field(const struct pool_result *r, int field)
{
    const char *v = r->res ? PQresultErrorField(r->res, field) : NULL;
    return v ? v : "";
}

/* The column a CHECK constraint guards, from its name: the migrations name them as PostgreSQL does by
 * default, "<table>_<column>_check". False when the name does not have that shape. */
static bool check_column(const struct pool_result *r, char *col, size_t cap)
{
    const char *table = error_field(r, PG_DIAG_TABLE_NAME), *name = error_field(r, PG_DIAG_CONSTRAINT_NAME);
    size_t tlen = strlen(table), nlen = strlen(name), suffix = strlen("_check");
    if (tlen == 0 || nlen <= tlen + 1 + suffix || strncmp(name, table, tlen) != 0 || name[tlen] != '_' ||
        strcmp(name + nlen - suffix, "_check") != 0 || nlen - suffix - tlen - 1 >= cap)
        return false;
    memcpy(col, name + tlen + 1, nlen - suffix - tlen - 1);
    col[nlen - suffix - tlen - 1] = '\0';
    return true;
}

/* Our own words for a value the database refused (class 22, or a CHECK / NOT NULL violation). The
 * database's text may quote the row or name internals: it goes to the log, with the request id, only. */
static void invalid_value_reply(struct http_request *req, const struct pool_result *r, const char *what)
{
    const char *st = r->sqlstate, *column = error_field(r, PG_DIAG_COLUMN_NAME);
    char col[64];
    log_warn("request %s: the database refused a value (%s, constraint \"%s\", column \"%s\"): %s",
             req->request_id, st, error_field(r, PG_DIAG_CONSTRAINT_NAME), column, r->message);
    if (strcmp(st, "23514") == 0 && check_column(r, col, sizeof(col)))
        reply_error(req, 422, "invalid_value", "%s: field \"%s\" has a value the database refuses", what,
                    col);
    else if (strcmp(st, "23502") == 0 && column[0])
        reply_error(req, 422, "invalid_value", "%s: field \"%s\" is required", what, column);
    else if (strcmp(st, "23514") == 0)
        reply_error(req, 422, "invalid_value", "%s: a value breaks a rule of the database", what);
    else if (strcmp(st, "23502") == 0)
        reply_error(req, 422, "invalid_value", "%s: a required value is missing", what);
    else if (strcmp(st, "22001") == 0)
        reply_error(req, 422, "invalid_value", "%s: a value is too long", what);
    else if (strcmp(st, "22021") == 0)
        reply_error(req, 422, "invalid_value", "%s: a value holds a character the database cannot store",
                    what);
    else
        reply_error(req, 422, "invalid_value", "%s: a value is out of range or malformed", what);
}

static void sql_error_reply(struct http_request *req, const struct pool_result *r, const char *what)
{
    const char *st = r->sqlstate;
    if (strcmp(st, "23505") == 0) {
        reply_error(req, 409, "conflict", "%s: a record with this value already exists", what);
    } else if (strcmp(st, "23503") == 0) {
        reply_error(req, 404, "not_found", "%s: the referenced record does not exist", what);
    } else if (strncmp(st, "22", 2) == 0 || strcmp(st, "23514") == 0 || strcmp(st, "23502") == 0) {
        invalid_value_reply(req, r, what);
    } else if (strcmp(st, "25006") == 0) {
        log_error("request %s: the primary refused a write as read-only: it moved", req->request_id);
        reply_error(req, 503, "primary_moved", "the primary database changed; retry shortly");
    } else if (link_lost_after_send(st) && request_writes(req)) {
        outcome_unknown_reply(req, "the database ended the session", r->message); /* its text: logged only */
    } else if (strcmp(st, "57014") == 0 || strncmp(st, "40", 2) == 0 || strncmp(st, "08", 2) == 0 ||
               strncmp(st, "53", 2) == 0 || strncmp(st, "57P", 3) == 0) {
        log_warn("request %s: database refused (%s): %s", req->request_id, st, r->message);
        reply_error(req, 503, "database_unavailable", "the database could not run the request; retry");
    } else {
        log_error("request %s: database error %s: %s", req->request_id, st, r->message);
        reply_error(req, 500, "database_error", "unexpected database error (%s)", st);
    }
}

bool dbreply_outcome_unknown(const struct http_request *req, const struct pool_result *r)
{
    if (!request_writes(req))
        return false;
    return r->status == POOL_ERR_BROKEN || (r->status == POOL_ERR_SQL && link_lost_after_send(r->sqlstate));
}

bool dbreply_error_answer(struct http_request *req, const struct pool_result *r, const char *what)
{
    switch (r->status) {
    case POOL_OK:
        return false;
    case POOL_ERR_SQL:
        sql_error_reply(req, r, what);
        return true;
    case POOL_ERR_UNAVAILABLE:
        log_warn("request %s: %s", req->request_id, r->message);
        http_header_add(req, "Retry-After", "1");
        reply_error(req, 503, "database_unavailable", "%s", r->message);
        return true;
    case POOL_ERR_BROKEN:
        if (request_writes(req)) {
            outcome_unknown_reply(req, r->message, ""); /* the pool's own words */
            return true;
        }
        log_warn("request %s: %s", req->request_id, r->message);
        reply_error(req, 503, "database_unavailable", "%s", r->message);
        return true;
    }
    return true;
}
