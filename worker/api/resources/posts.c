/* posts: the /posts resource, whose rows belong to a user (posts.user_id): created and listed under
 * /users/:id/posts. A user's page is one round trip: the user row LEFT JOIN LATERAL its page of posts,
 * so no row at all means no such user (404) and one row with a NULL post id an empty page. */
#include "worker/api/resources/resources.h"

#include <stddef.h>

/* a batched replace's or patch's parameters: $1 = ids, then the fields' */
#define POST_UNNEST "$1::bigint[], $2::text[], $3::text[]"

/* content may be empty; the limits mirror the schema's CHECKs */
static const struct resource_field POST_FIELDS[] = {
    { .name = "title", .min = 1, .max = 200 },
    { .name = "content", .min = 0, .max = 10000 },
};
/* what a row shows but only the server sets: refused in a body, see resource.h */
static const char *const POST_READ_ONLY[] = { "id", "user_id", "version", "created_at", "updated_at", NULL };

const struct resource resource_posts = {
    .name = "post",
    .collection = "posts",
    .path = "/posts",
    .parent = &resource_users,
    .fields = POST_FIELDS,
    .nfields = 2,
    .read_only = POST_READ_ONLY,
    RESOURCE_SQL_STATEMENTS("posts", "p", POST_JSON, ", p.user_id", "title = $2, content = $3",
                            "title = COALESCE($2, p.title), content = COALESCE($3, p.content)", "$4", "$5"),
    RESOURCE_SQL_DELETE("posts", "p", POST_JSON, ", p.user_id"),
    /* the foreign key's violation (no such user) is a 404 that names the user */
    .sql_create =
        "INSERT INTO posts AS p (user_id, title, content) VALUES ($1, $2, $3) RETURNING " RESOURCE_SQL_ROW(
            "p", POST_JSON) ", p.user_id",
    .sql_create_keyed =
        RESOURCE_SQL_KEYED_CREATE("posts", "p", "user_id, title, content", "$1::bigint, $2::text, $3::text",
                                  POST_JSON, ", p.user_id", "$4"),
    .sql_create_many =
        RESOURCE_SQL_CREATE_MANY("posts", "p", "user_id, title, content",
                                 "$1::bigint[], $2::text[], $3::text[]", POST_JSON, ", p.user_id"),
    .sql_replace_many =
        RESOURCE_SQL_UPDATE_MANY("posts", "p", "id, title, content", POST_UNNEST,
                                 "title = v.title, content = v.content", POST_JSON, ", p.user_id"),
    .sql_patch_many =
        RESOURCE_SQL_UPDATE_MANY("posts", "p", "id, title, content", POST_UNNEST,
                                 "title = COALESCE(v.title, p.title), content = COALESCE(v.content, "
                                 "p.content)",
                                 POST_JSON, ", p.user_id"),
    .sql_list_by_parent = "SELECT x.id, x.body, x.more FROM users u LEFT JOIN LATERAL (" RESOURCE_SQL_PAGE(
        "SELECT p.id, " POST_JSON "::text AS body FROM posts p WHERE p.user_id = u.id"
        " AND p.id > $2 ORDER BY p.id LIMIT $3::bigint + 1",
        "$3::bigint", "$4::bigint") ") x ON true WHERE u.id = $1 ORDER BY x.id",
    .scopes = { .read = RESOURCE_SCOPE_READ, .write = RESOURCE_SCOPE_WRITE, .remove = RESOURCE_SCOPE_WRITE },
};
RESOURCE_REGISTER(resource_posts);
