/* handlers_posts: /posts and a user's posts (/users/:id/posts). A user's page is one round trip: the
 * user row LEFT JOIN LATERAL its page of posts, so no row at all means no such user (404) and one row
 * with a NULL post id an empty page. */
#include <inttypes.h>
#include <stdio.h>

#include "common/fence.h"
#include "worker/api/handlers.h"
#include "worker/api/op.h"
#include "worker/api/resources.h"

static const char SQL_USER_POSTS_LIST[] =
    "SELECT x.id, x.body, x.more FROM users u LEFT JOIN LATERAL ("
    OP_SQL_PAGE("SELECT p.id, " POST_JSON "::text AS body FROM posts p WHERE p.user_id = u.id AND p.id > $2"
                " ORDER BY p.id LIMIT $3::bigint + 1", "$3::bigint", "$4::bigint")
    ") x ON true WHERE u.id = $1 ORDER BY x.id";
static const char SQL_POST_CREATE[] =
    "INSERT INTO posts AS p (user_id, title, content) VALUES ($1, $2, $3) RETURNING " OP_SQL_ROW("p", POST_JSON);
static const char SQL_POST_CREATE_MANY[] = OP_SQL_CREATE_MANY("posts", "p", "user_id, title, content",
                                                              "$1::bigint[], $2::text[], $3::text[]", POST_JSON);

/* content may be empty; the limits mirror the schema's CHECKs */
static const struct op_field POST_FIELDS[] = {
    { .name = "title", .min = 1, .max = 200 },
    { .name = "content", .min = 0, .max = 10000 },
};
/* what a row shows but only the server sets (resources.h): refused in a body, see op.h */
static const char *const POST_READ_ONLY[] = { "id", "user_id", "version", "created_at", "updated_at", NULL };
static const struct op_resource POSTS = {
    .what = "post", .path = "/posts", .table = FENCE_POSTS, .fields = POST_FIELDS, .nfields = 2,
    .read_only = POST_READ_ONLY,
    OP_SQL_STATEMENTS("posts", "p", POST_JSON, "title = $2, content = $3",
                      "title = COALESCE($2, p.title), content = COALESCE($3, p.content)"),
    OP_SQL_DELETE("posts", "p", POST_JSON),
};

/* ---- a user's posts: the path's id is the user's -------------------------------------------- */

void handle_user_posts_list(struct worker *w, struct http_request *req, const struct route_args *a)
{
    char base[64];
    snprintf(base, sizeof(base), "/users/%" PRId64 "/posts", a->id[0]);
    struct op o = { .w = w, .req = req, .res = &POSTS, .owner = "user", .id = a->id[0],
                    .also = OP_TABLE(FENCE_USERS), .cache = "uplist", .cache_list = "uposts" };
    op_page(&o, SQL_USER_POSTS_LIST, base);
}

/* the foreign key's violation (no such user) is a 404 that names the user */
void handle_user_posts_create(struct worker *w, struct http_request *req, const struct route_args *a)
{
    struct op o = { .w = w, .req = req, .res = &POSTS, .owner = "user", .id = a->id[0], .created = true };
    op_write_body(&o, SQL_POST_CREATE, SQL_POST_CREATE_MANY, true);
}

/* ---- /posts --------------------------------------------------------------------------------- */

void handle_posts_list(struct worker *w, struct http_request *req, const struct route_args *a)
{
    (void)a;
    op_page(&(struct op){ .w = w, .req = req, .res = &POSTS, .cache = "plist", .cache_list = "posts" }, POSTS.sql_list,
            "/posts");
}

void handle_post_get(struct worker *w, struct http_request *req, const struct route_args *a)
{
    op_get(&(struct op){ .w = w, .req = req, .res = &POSTS, .id = a->id[0], .cache = "post" }, POSTS.sql_get,
           POSTS.sql_get_many);
}

/* PUT, PATCH and DELETE /posts/:id */
void handle_post_write(struct worker *w, struct http_request *req, const struct route_args *a)
{
    op_item_write(&(struct op){ .w = w, .req = req, .res = &POSTS, .id = a->id[0] });
}
