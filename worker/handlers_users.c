/* handlers_users: /users routes. Rows leave PostgreSQL already as JSON text (json_build_object), so
 * escaping and UTF-8 are the server's; writes raise the table's fence to their commit LSN before the
 * client is answered, and reads carry that fence to the pool (read-your-writes). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fence.h"
#include "common/log.h"
#include "worker/body.h"
#include "worker/dbreply.h"
#include "worker/handlers.h"
#include "worker/pool.h"
#include "worker/query.h"
#include "worker/reply.h"
#include "worker/rows.h"
#include "worker/worker.h"

#define USER_JSON                                                                                   \
    "jsonb_build_object('id', u.id, 'name', u.name, 'email', u.email, 'version', u.version,"         \
    " 'created_at', u.created_at, 'updated_at', u.updated_at)"
#define POST_JSON                                                                                   \
    "jsonb_build_object('id', p.id, 'title', p.title, 'content', p.content, 'user_id', p.user_id,"   \
    " 'version', p.version, 'created_at', p.created_at, 'updated_at', p.updated_at)"

static const char SQL_USER_GET[] = "SELECT u.id, " USER_JSON "::text FROM users u WHERE u.id = $1";
static const char SQL_USER_GET_POSTS[] =
    "SELECT u.id, (" USER_JSON "::jsonb || jsonb_build_object('posts', COALESCE((SELECT jsonb_agg(" POST_JSON
    " ORDER BY p.id) FROM posts p WHERE p.user_id = u.id), '[]'::jsonb)))::text FROM users u WHERE u.id = $1";
static const char SQL_USERS_LIST[] =
    "SELECT u.id, " USER_JSON "::text FROM users u WHERE u.id > $1 ORDER BY u.id LIMIT $2";
static const char SQL_USER_CREATE[] =
    "INSERT INTO users AS u (name, email) VALUES ($1, $2) RETURNING u.id, " USER_JSON "::text";
static const char SQL_USER_REPLACE[] =
    "UPDATE users AS u SET name = $2, email = $3 WHERE u.id = $1 RETURNING u.id, " USER_JSON "::text";
static const char SQL_USER_PATCH[] =
    "UPDATE users AS u SET name = COALESCE($2, u.name), email = COALESCE($3, u.email) WHERE u.id = $1"
    " RETURNING u.id, " USER_JSON "::text";
static const char SQL_USER_DELETE[] = "DELETE FROM users u WHERE u.id = $1 RETURNING u.id";

#define NAME_MAX_CHARS 200
#define EMAIL_MAX_CHARS 254
#define LIST_DEFAULT 50
#define LIST_MAX 1000

/* One request's database step: what the callback needs to answer it. */
struct user_op {
    struct worker *w;
    struct http_request *req;
    int64_t id;
    int64_t limit;
    int status;               /* success status: 200 or 201 */
};

static struct user_op *op_new(struct worker *w, struct http_request *req, int64_t id, int status)
{
    struct user_op *op = malloc(sizeof(*op));
    if (!op) {
        reply_error(req, 503, "out_of_memory", "server out of memory");
        return NULL;
    }
    *op = (struct user_op){ .w = w, .req = req, .id = id, .status = status };
    return op;
}

static void id_text(int64_t id, char *buf, size_t cap)
{
    snprintf(buf, cap, "%" PRId64, id);
}

/* ---- reads ---------------------------------------------------------------------------------- */

static void user_one_done(void *arg, const struct pool_result *r)
{
    struct user_op *op = arg;
    struct http_request *req = op->req;
    if (!dbreply_failed(req, r, "user")) {
        if (PQntuples(r->res) == 0)
            reply_error(req, 404, "not_found", "user %" PRId64 " not found", op->id);
        else
            rows_reply_one(req, op->status, r->res, 1);
    }
    free(op);
}

void handle_user_get(struct worker *w, struct http_request *req, const struct route_args *a)
{
    char include[16] = "", id[24];
    if (req->query && query_get(req->query, "include", include, sizeof(include)) != 0 &&
        strcmp(include, "posts") != 0) {
        reply_error(req, 400, "invalid_parameter", "include must be \"posts\"");
        return;
    }
    bool posts = include[0] != '\0';
    struct user_op *op = op_new(w, req, a->id[0], 200);
    if (!op)
        return;
    id_text(a->id[0], id, sizeof(id));
    const char *params[] = { id };
    struct pool_query q = { .sql = posts ? SQL_USER_GET_POSTS : SQL_USER_GET, .nparams = 1, .params = params };
    uint64_t fence = fences_get(w->fences, FENCE_USERS);
    if (posts && fences_get(w->fences, FENCE_POSTS) > fence)
        fence = fences_get(w->fences, FENCE_POSTS);
    pool_read(w->pool, &q, fence, user_one_done, op);
}

static void users_list_done(void *arg, const struct pool_result *r)
{
    struct user_op *op = arg;
    if (!dbreply_failed(op->req, r, "users"))
        rows_reply_page(op->req, r->res, op->limit, "/users");
    free(op);
}

void handle_users_list(struct worker *w, struct http_request *req, const struct route_args *a)
{
    (void)a;
    int64_t limit, after;
    if (query_int(req, "limit", 1, LIST_MAX, LIST_DEFAULT, &limit) < 0 ||
        query_int(req, "after_id", 0, INT64_MAX, 0, &after) < 0)
        return;
    struct user_op *op = op_new(w, req, 0, 200);
    if (!op)
        return;
    op->limit = limit;
    char after_s[24], limit_s[24];
    id_text(after, after_s, sizeof(after_s));
    id_text(limit + 1, limit_s, sizeof(limit_s)); /* one extra row tells whether a next page exists */
    const char *params[] = { after_s, limit_s };
    struct pool_query q = { .sql = SQL_USERS_LIST, .nparams = 2, .params = params };
    pool_read(w->pool, &q, fences_get(w->fences, FENCE_USERS), users_list_done, op);
}

/* ---- writes --------------------------------------------------------------------------------- */

/* Acknowledges a committed write only after its fence is raised: any read that starts after this
 * answer is routed to a server that has replayed it. */
static void user_write_done(void *arg, const struct pool_result *r)
{
    struct user_op *op = arg;
    struct http_request *req = op->req;
    if (!dbreply_failed(req, r, "user")) {
        fences_raise(op->w->fences, FENCE_USERS, r->commit_lsn);
        if (PQntuples(r->res) == 0) {
            reply_error(req, 404, "not_found", "user %" PRId64 " not found", op->id);
        } else if (op->status == 201) {
            char loc[48];
            snprintf(loc, sizeof(loc), "/users/%s", PQgetvalue(r->res, 0, 0));
            http_header_add(req, "Location", loc);
            rows_reply_one(req, 201, r->res, 1);
        } else {
            rows_reply_one(req, op->status, r->res, 1);
        }
    }
    free(op);
}

/* Reads and checks name/email; required=false for PATCH. Returns -1 after answering. */
static int user_fields(struct http_request *req, struct json_object *obj, bool required, const char **name,
                       const char **email)
{
    *name = *email = NULL;
    if (body_string(req, obj, "name", required, 1, NAME_MAX_CHARS, name) < 0 ||
        body_string(req, obj, "email", required, 3, EMAIL_MAX_CHARS, email) < 0)
        return -1;
    if (*email && !body_email_valid(*email)) {
        reply_error(req, 422, "invalid_value", "field \"email\" is not an email address");
        return -1;
    }
    if (!required && !*name && !*email) {
        reply_error(req, 400, "missing_field", "give at least one of \"name\" and \"email\"");
        return -1;
    }
    return 0;
}

static void user_write(struct worker *w, struct http_request *req, int64_t id, const char *sql, bool required,
                       int status)
{
    struct json_object *obj = body_object(req);
    const char *name, *email;
    if (!obj)
        return;
    if (user_fields(req, obj, required, &name, &email) < 0) {
        json_object_put(obj);
        return;
    }
    struct user_op *op = op_new(w, req, id, status);
    if (!op) {
        json_object_put(obj);
        return;
    }
    char id_s[24];
    id_text(id, id_s, sizeof(id_s));
    const char *with_id[] = { id_s, name, email }, *without_id[] = { name, email };
    struct pool_query q = { .sql = sql, .nparams = id ? 3 : 2, .params = id ? with_id : without_id };
    pool_write(w->pool, &q, user_write_done, op); /* the pool copies the parameters */
    json_object_put(obj);
}

void handle_users_create(struct worker *w, struct http_request *req, const struct route_args *a)
{
    (void)a;
    user_write(w, req, 0, SQL_USER_CREATE, true, 201);
}

void handle_user_replace(struct worker *w, struct http_request *req, const struct route_args *a)
{
    user_write(w, req, a->id[0], SQL_USER_REPLACE, true, 200);
}

void handle_user_patch(struct worker *w, struct http_request *req, const struct route_args *a)
{
    user_write(w, req, a->id[0], SQL_USER_PATCH, false, 200);
}

static void user_delete_done(void *arg, const struct pool_result *r)
{
    struct user_op *op = arg;
    struct http_request *req = op->req;
    if (!dbreply_failed(req, r, "user")) {
        fences_raise(op->w->fences, FENCE_USERS, r->commit_lsn);
        fences_raise(op->w->fences, FENCE_POSTS, r->commit_lsn); /* its posts went with it */
        if (PQntuples(r->res) == 0)
            reply_error(req, 404, "not_found", "user %" PRId64 " not found", op->id);
        else
            http_respond(req, 204, NULL, NULL, 0);
    }
    free(op);
}

void handle_user_delete(struct worker *w, struct http_request *req, const struct route_args *a)
{
    struct user_op *op = op_new(w, req, a->id[0], 204);
    if (!op)
        return;
    char id[24];
    id_text(a->id[0], id, sizeof(id));
    const char *params[] = { id };
    struct pool_query q = { .sql = SQL_USER_DELETE, .nparams = 1, .params = params };
    pool_write(w->pool, &q, user_delete_done, op);
}
