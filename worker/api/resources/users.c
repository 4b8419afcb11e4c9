/* users: the /users resource. Rows leave PostgreSQL already as JSON text (jsonb_build_object), so
 * escaping and UTF-8 are the server's; the request steps (fences, 404s, pages, writes) are the generic
 * ones of resource_ops. */
#include "worker/api/resources/resources.h"

#include <stddef.h>

#include "worker/cache/cache.h"
#include "worker/http/body.h"

/* The user with the first page of its posts (the page /users/:id/posts?limit=<embed_posts> would show,
 * bounded the same way in SQL) and posts_next, the path of the page after it (null after the last post).
 * Its three parameters keep it out of the pool's batches (single-parameter reads only). */
static const char SQL_USER_GET_POSTS[] =
    "SELECT u.id, (" USER_JSON "::jsonb || jsonb_build_object('posts', COALESCE(e.posts, '[]'::jsonb),"
    " 'posts_next', CASE WHEN e.more THEN '/users/' || u.id || '/posts?limit=' || $2::bigint || '&after_id='"
    " || e.last END))::text FROM users u, LATERAL (SELECT jsonb_agg(x.body::jsonb ORDER BY x.id) AS posts,"
    " bool_and(x.more) AS more, max(x.id) AS last FROM (" RESOURCE_SQL_PAGE(
        "SELECT p.id, " POST_JSON "::text AS body FROM posts p WHERE p.user_id = u.id"
        " ORDER BY p.id LIMIT $2::bigint + 1",
        "$2::bigint", "$3::bigint") ") x) e WHERE u.id = $1";

/* A deletion's third column: the post ids user_delete() names, or NULL when more than the cache drops one by
 * one. */
#define USER_DELETE_POSTS \
    "CASE WHEN cardinality(d.post_ids) <= " RESOURCE_STR(CACHE_CHANGE_IDS_MAX) " THEN d.post_ids::text END"

/* A conditional deletion's test ($2: If-Match's tags) */
#define USER_MATCHES RESOURCE_SQL_IF_MATCH("u", USER_JSON, "$2")

/* a batched replace's or patch's parameters: $1 = ids, then the fields' */
#define USER_UNNEST "$1::bigint[], $2::text[], $3::text[]"

/* the limits mirror the schema's CHECKs */
static const struct resource_field USER_FIELDS[] = {
    { .name = "name", .min = 1, .max = 200 },
    { .name = "email", .min = 3, .max = 254, .valid = body_email_valid, .valid_desc = "an email address" },
};
/* what a row shows but only the server sets: refused in a body, see resource.h */
static const char *const USER_READ_ONLY[] = { "id", "version", "created_at", "updated_at", NULL };

const struct resource resource_users = {
    .name = "user",
    .collection = "users",
    .path = "/users",
    .fields = USER_FIELDS,
    .nfields = 2,
    .read_only = USER_READ_ONLY,
    RESOURCE_SQL_STATEMENTS("users", "u", USER_JSON, "", "name = $2, email = $3",
                            "name = COALESCE($2, u.name), email = COALESCE($3, u.email)", "$4", "$5"),
    .sql_create =
        "INSERT INTO users AS u (name, email) VALUES ($1, $2) RETURNING " RESOURCE_SQL_ROW("u", USER_JSON),
    .sql_create_keyed =
        RESOURCE_SQL_KEYED_CREATE("users", "u", "name, email", "$1::text, $2::text", USER_JSON, "", "$3"),
    .sql_create_many =
        RESOURCE_SQL_CREATE_MANY("users", "u", "name, email", "$1::text[], $2::text[]", USER_JSON, ""),
    .sql_replace_many = RESOURCE_SQL_UPDATE_MANY("users", "u", "id, name, email", USER_UNNEST,
                                                 "name = v.name, email = v.email", USER_JSON, ""),
    .sql_patch_many = RESOURCE_SQL_UPDATE_MANY(
        "users", "u", "id, name, email", USER_UNNEST,
        "name = COALESCE(v.name, u.name), email = COALESCE(v.email, u.email)", USER_JSON, ""),
    /* user_delete() (migration 0004) locks the user, deletes its posts (posts.user_id ON DELETE
     * CASCADE would too, unnamed) and names them: (id, no body: the answer is 204, the post ids, or
     * NULL when more than the cache drops one by one) */
    .sql_delete = "SELECT d.id, '{}'::text, " USER_DELETE_POSTS " FROM user_delete($1) d",
    /* under If-Match ($2): the user is locked only if it matches (its newest version is tested again
     * when a write came first), and only a locked user is deleted; one that exists unlocked is the 412's
     * row (NULL json), none at all the 404 */
    .sql_delete_if = "WITH c AS MATERIALIZED (SELECT u.id FROM users u WHERE u.id = $1 AND " USER_MATCHES
                     " FOR UPDATE) SELECT d.id, '{}'::text, " USER_DELETE_POSTS " FROM c, user_delete(c.id) d"
                     " UNION ALL SELECT u.id, NULL, NULL FROM users u WHERE u.id = $1 AND NOT EXISTS"
                     " (SELECT 1 FROM c)",
    /* with an Idempotency-Key ($3): as sql_delete_if, gated, with $2 NULL for no If-Match */
    .sql_delete_keyed = RESOURCE_SQL_KEYED(
        "$3",
        "c AS MATERIALIZED (SELECT u.id FROM users u WHERE u.id = $1 AND ($2::text[] IS NULL OR " USER_MATCHES
        ") AND " RESOURCE_SQL_KEY_GO
        " FOR UPDATE), w AS MATERIALIZED (SELECT d.id, '{}'::text AS body, " USER_DELETE_POSTS
        " FROM c, user_delete(c.id) d), r AS (SELECT * FROM w UNION ALL SELECT u.id, NULL, NULL"
        " FROM users u WHERE u.id = $1 AND $2::text[] IS NOT NULL AND NOT EXISTS (SELECT 1 FROM c))",
        "r"),
    .cascade_names = &resource_posts,
    .embed = { .child = &resource_posts, .sql_get = SQL_USER_GET_POSTS },
    /* deleting a user deletes every post of it: more than any other write, hence admin */
    .scopes = { .read = RESOURCE_SCOPE_READ, .write = RESOURCE_SCOPE_WRITE, .remove = RESOURCE_SCOPE_ADMIN },
};
RESOURCE_REGISTER(resource_users);
