/* handlers_users: /users routes. Rows leave PostgreSQL already as JSON text (jsonb_build_object), so
 * escaping and UTF-8 are the server's; the request steps (fences, 404s, pages, writes) are op's. */
#include <string.h>

#include "common/fence.h"
#include "worker/cache/cache.h"
#include "worker/http/body.h"
#include "worker/api/handlers.h"
#include "worker/api/op.h"
#include "worker/http/query.h"
#include "worker/http/reply.h"
#include "worker/api/resources.h"

/* The user with the first page of its posts (the page /users/:id/posts?limit=<embed_posts> would show,
 * bounded the same way in SQL) and posts_next, the path of the page after it (null after the last post).
 * Its three parameters keep it out of the pool's batches (single-parameter reads only). */
static const char SQL_USER_GET_POSTS[] =
    "SELECT u.id, (" USER_JSON "::jsonb || jsonb_build_object('posts', COALESCE(e.posts, '[]'::jsonb),"
    " 'posts_next', CASE WHEN e.more THEN '/users/' || u.id || '/posts?limit=' || $2::bigint || '&after_id='"
    " || e.last END))::text FROM users u, LATERAL (SELECT jsonb_agg(x.body::jsonb ORDER BY x.id) AS posts,"
    " bool_and(x.more) AS more, max(x.id) AS last FROM ("
    OP_SQL_PAGE("SELECT p.id, " POST_JSON "::text AS body FROM posts p WHERE p.user_id = u.id ORDER BY p.id"
                " LIMIT $2::bigint + 1", "$2::bigint", "$3::bigint")
    ") x) e WHERE u.id = $1";
static const char SQL_USER_CREATE[] =
    "INSERT INTO users AS u (name, email) VALUES ($1, $2) RETURNING " OP_SQL_ROW("u", USER_JSON);
static const char SQL_USER_CREATE_MANY[] =
    OP_SQL_CREATE_MANY("users", "u", "name, email", "$1::text[], $2::text[]", USER_JSON);

/* the limits mirror the schema's CHECKs */
static const struct op_field USER_FIELDS[] = {
    { .name = "name", .min = 1, .max = 200 },
    { .name = "email", .min = 3, .max = 254, .valid = body_email_valid, .valid_desc = "an email address" },
};
/* what a row shows but only the server sets (resources.h): refused in a body, see op.h */
static const char *const USER_READ_ONLY[] = { "id", "version", "created_at", "updated_at", NULL };
static const struct op_resource USERS = {
    .what = "user", .path = "/users", .table = FENCE_USERS, .fields = USER_FIELDS, .nfields = 2,
    .read_only = USER_READ_ONLY,
    .cascade = OP_TABLE(FENCE_POSTS), /* posts.user_id ON DELETE CASCADE */
    OP_SQL_STATEMENTS("users", "u", USER_JSON, "name = $2, email = $3",
                      "name = COALESCE($2, u.name), email = COALESCE($3, u.email)"),
    /* user_delete() (migration 0004) locks the user, deletes its posts and names them: (id, no body: the
     * answer is 204, the post ids, or NULL when more than the cache drops one by one) */
    .sql_delete = "SELECT d.id, '{}'::text, CASE WHEN cardinality(d.post_ids) <= " OP_STR(CACHE_CHANGE_IDS_MAX)
                  " THEN d.post_ids::text END FROM user_delete($1) d",
};

/* ?include=posts embeds the user's posts, so the read waits for both tables' fences */
void handle_user_get(struct worker *w, struct http_request *req, const struct route_args *a)
{
    char include[16] = "";
    if (req->query && query_get(req->query, "include", include, sizeof(include)) != 0 &&
        strcmp(include, "posts") != 0) {
        reply_error(req, 400, "invalid_parameter", "include must be \"posts\"");
        return;
    }
    bool posts = include[0] != '\0';
    struct op o = { .w = w, .req = req, .res = &USERS, .id = a->id[0], .also = posts ? OP_TABLE(FENCE_POSTS) : 0,
                    .cache = posts ? "userp" : "user", .embeds = posts };
    op_get(&o, posts ? SQL_USER_GET_POSTS : USERS.sql_get, posts ? NULL : USERS.sql_get_many);
}

void handle_users_list(struct worker *w, struct http_request *req, const struct route_args *a)
{
    (void)a;
    op_page(&(struct op){ .w = w, .req = req, .res = &USERS, .cache = "ulist", .cache_list = "users" }, USERS.sql_list,
            "/users");
}

void handle_users_create(struct worker *w, struct http_request *req, const struct route_args *a)
{
    (void)a;
    op_write_body(&(struct op){ .w = w, .req = req, .res = &USERS, .created = true }, SQL_USER_CREATE,
                  SQL_USER_CREATE_MANY, true);
}

/* PUT, PATCH and DELETE /users/:id */
void handle_user_write(struct worker *w, struct http_request *req, const struct route_args *a)
{
    op_item_write(&(struct op){ .w = w, .req = req, .res = &USERS, .id = a->id[0] });
}
