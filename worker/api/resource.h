/* resource: what the API serves, as declarations. A resource (users, posts) is one `struct resource` in
 * its own file of worker/api/resources/, registered with RESOURCE_REGISTER: its table's statements, the
 * JSON a row renders (built by PostgreSQL), its body fields, its parent and what a read may embed. The
 * routes, the cache keys, the consistency fences and what a write invalidates all derive from it. */
#ifndef PGAPI_RESOURCE_H
#define PGAPI_RESOURCE_H

#include <stdbool.h>
#include <stdint.h>

#define RESOURCE_FIELDS_MAX 4

/* A body field: a string of min..max characters (code points), with an optional extra check. */
struct resource_field {
    const char *name;
    int min, max;
    bool (*valid)(const char *s);
    const char *valid_desc; /* "an email address": the 422 message when valid() refuses */
};

/* What GET /<collection>/:id?include=<child's collection> serves: the row with a bounded first page of
 * its children, as one statement of $1 = id, $2 = the most children it embeds (embed_posts), $3 = their
 * byte budget (page_bytes). */
struct resource_embed {
    const struct resource *child;
    const char *sql_get;
};

/* The scopes a bearer token may hold ([auth] mode = required; worker/api/auth.c names them "read",
 * "write", "admin"). A route needs exactly one; holding "admin" does not imply the others. */
enum resource_scope {
    RESOURCE_SCOPE_READ = 1u << 0,
    RESOURCE_SCOPE_WRITE = 1u << 1,
    RESOURCE_SCOPE_ADMIN = 1u << 2,
};

/* The scope each kind of request on a resource needs: its GETs, its writes (POST, PUT, PATCH) and its
 * DELETE, which may ask for more than the other writes (deleting a user takes all its posts). */
struct resource_scopes {
    unsigned read, write, remove;
};

/* Every statement returns the columns (id, json text), then, for a resource with a parent, the parent's
 * id (so a write's invalidation never reads it out of the JSON), then for sql_delete of a resource that
 * names its cascade, the ids the cascade removed (see cascade_names). */
struct resource {
    const char *name;       /* "user": names a row in messages; its cache key is "<name>:<id>" */
    const char *collection; /* "users": the collection's path segment and its list's cache name */
    const char *path;       /* "/users": a created row's Location is path/<id> */
    /* NULL, or the resource whose rows own this one's: its rows are listed and created under
     * /<parent's collection>/:id/<collection> (and only there), and a write changes the parent's lists
     * of them and what the parent embeds. */
    const struct resource *parent;
    const struct resource_field *fields; /* the body of POST, PUT and PATCH, in parameter order */
    int nfields;                         /* 1..RESOURCE_FIELDS_MAX */
    /* NULL-terminated: the members a row shows that no body sets ("id", "version", ...). A body naming
     * one is refused (read_only_field) like any other member that is not a field (unknown_field): a
     * client that echoes a row it read must drop them, so no write is ever mistaken for one it is not. */
    const char *const *read_only;
    /* get, replace, patch, delete: $1 = id; replace and patch the fields from $2 (patch: NULL when
     * absent). get_many: get's batched form (pool_query.batch_sql). list: a RESOURCE_SQL_PAGE of
     * $1 = after_id, $2 = limit, $3 = byte budget. */
    const char *sql_get, *sql_get_many, *sql_list, *sql_replace, *sql_patch, *sql_delete;
    /* replace, patch and delete under If-Match: the same parameters, then the client's opaque tags as one
     * text[] (after the fields; delete: $2), compared in the statement that writes with the row's ETag
     * (md5 of its JSON, what a GET's ETag is) and its version (RESOURCE_SQL_IF_MATCH). They return the
     * written row as the plain statements do; a row that exists but matched none gives one row whose json
     * is NULL (412), and no row at all stays a 404 (RESOURCE_SQL_UPDATE_IF). */
    const char *sql_replace_if, *sql_patch_if, *sql_delete_if;
    /* create: the fields from $1, after the parent's id as $1 when there is a parent; create_many: its
     * batched form (RESOURCE_SQL_CREATE_MANY). */
    const char *sql_create, *sql_create_many;
    /* With a parent: a page of one parent's rows, $1 = parent id, then as sql_list. No row at all means
     * no such parent (404), one row with a NULL id an empty page. */
    const char *sql_list_by_parent;
    /* The child whose removed rows sql_delete names in its extra column (as bigint[] text, or NULL when
     * more than the cache drops one by one). The rows of any other child (or grandchild) a deletion
     * cascades to cannot be named: all of them count as changed. */
    const struct resource *cascade_names;
    struct resource_embed embed;   /* child NULL: no ?include= */
    struct resource_scopes scopes; /* every one set: the registry refuses a declaration without them */
};

/* Registers a declaration (one line at the end of its file): a pointer to it goes into the linker
 * section pgapi_resources, which the registry walks; adding a resource is adding a file. */
#define RESOURCE_REGISTER(r)                                    \
    static const struct resource *const resource_registered_##r \
        __attribute__((section("pgapi_resources"), used, aligned(sizeof(void *)))) = &(r)

/* The registry, in link order (the Makefile's file list). */
int resource_count(void);
const struct resource *resource_at(int i);
/* Its position in the registry: its table's index in the shared consistency state. */
int resource_index(const struct resource *r);
/* Whether the registry fits the bounds the shared tables were sized for (logs why not). */
bool resource_registry_check(void);

/* ---- building the statements ---------------------------------------------------------------- */

/* A number macro as SQL text */
#define RESOURCE_STR_(x) #x
#define RESOURCE_STR(x) RESOURCE_STR_(x)
/* The batched form of "id = $1" (pool_query.batch_sql) */
#define RESOURCE_SQL_ANY_ID "ANY($1::bigint[])"
/* A row as its (id, json text) columns, for RETURNING. */
#define RESOURCE_SQL_ROW(a, json) a ".id, " json "::text"
/* A batched create (pool_query.batch_sql) of table t aliased a: ids drawn first so that each input row
 * (cols, typed as the casts in unnest_args) can be matched to the row it made; `returning` the row's
 * columns after (id, json). */
#define RESOURCE_SQL_CREATE_MANY(t, a, cols, unnest_args, json, returning)                           \
    "WITH input AS MATERIALIZED (SELECT nextval('" t "_id_seq') AS id, x.* FROM unnest(" unnest_args \
    ") WITH ORDINALITY AS x(" cols ", ord)), made AS (INSERT INTO " t " AS " a " (id, " cols         \
    ") SELECT id, " cols " FROM input ORDER BY ord RETURNING " RESOURCE_SQL_ROW(                     \
        a, json) " AS body" returning ") SELECT "                                                    \
                 "input.ord::text, made.* FROM made JOIN input USING (id)"
/* A page bounded in SQL, so PostgreSQL never sends a row the answer would drop: `rows` selects (id,
 * body text) in id order, at most L + 1 of them; of those the page keeps the first L, and only while
 * their bodies add up to at most B bytes (the first row always, however long). The third column tells
 * whether another row follows: on the page's last row, whether there is a next page, which starts
 * after that row (so a walk skips no row). */
#define RESOURCE_SQL_PAGE(rows, L, B)                                                                       \
    "SELECT id, body, more FROM (SELECT id, body, row_number() OVER w AS n, sum(octet_length(body)) OVER w" \
    " AS bytes, lead(id) OVER w IS NOT NULL AS more FROM (" rows ") r WINDOW w AS (ORDER BY id ROWS"        \
    " UNBOUNDED PRECEDING)) x WHERE n <= " L " AND (n = 1 OR bytes <= " B ") ORDER BY id"
/* If-Match's test of row alias a (whose JSON is json) against tags, a text[] parameter: the row's ETag
 * (the md5 of the JSON text a GET sends: etag.c computes the same) or its version as decimal text. In the
 * WHERE of the write itself: under READ COMMITTED a row changed meanwhile is tested again in its newest
 * version before it is written, so no write can slip between the test and the write. */
#define RESOURCE_SQL_IF_MATCH(a, json, tags) \
    "(md5(" json "::text) = ANY(" tags "::text[]) OR " a ".version::text = ANY(" tags "::text[]))"
/* An UPDATE or DELETE of table t aliased a (`write` up to its WHERE, which gets "id = $1 AND" the test)
 * under If-Match: the written row, else (the row exists but matched none) the row's id with a NULL json
 * (and its `returning` columns), else nothing (404). One statement and one snapshot: the second branch
 * reads only when the write wrote nothing. */
#define RESOURCE_SQL_WRITE_IF(t, a, json, returning, write, tags)                                          \
    "WITH w AS (" write " WHERE " a                                                                        \
    ".id = $1 AND " RESOURCE_SQL_IF_MATCH(a, json, tags) " RETURNING " RESOURCE_SQL_ROW(a, json) returning \
        ") SELECT * FROM w UNION ALL SELECT " a ".id, NULL::text" returning " FROM " t " " a " WHERE " a   \
        ".id = $1 AND NOT EXISTS (SELECT 1 FROM w)"
/* The statements of table t aliased a whose row is the JSON expression json, in the parameter order
 * of struct resource; the writes' `returning` the columns after (id, json) (", a.user_id" for a
 * parent's id, "" without); replace and patch as their SET lists, and tags their If-Match parameter
 * (the one after the fields: "$4" after two). */
#define RESOURCE_SQL_STATEMENTS(t, a, json, returning, replace_set, patch_set, tags)                   \
    .sql_get = "SELECT " RESOURCE_SQL_ROW(a, json) " FROM " t " " a " WHERE " a ".id = $1",            \
    .sql_get_many =                                                                                    \
        "SELECT " RESOURCE_SQL_ROW(a, json) " FROM " t " " a " WHERE " a ".id = " RESOURCE_SQL_ANY_ID, \
    .sql_list = RESOURCE_SQL_PAGE("SELECT " a ".id, " json "::text AS body FROM " t " " a " WHERE " a  \
                                  ".id > $1 ORDER BY " a ".id LIMIT $2::bigint + 1",                   \
                                  "$2::bigint", "$3::bigint"),                                         \
    .sql_replace = "UPDATE " t " AS " a " SET " replace_set " WHERE " a                                \
                   ".id = $1 RETURNING " RESOURCE_SQL_ROW(a, json) returning,                          \
    .sql_patch = "UPDATE " t " AS " a " SET " patch_set " WHERE " a                                    \
                 ".id = $1 RETURNING " RESOURCE_SQL_ROW(a, json) returning,                            \
    .sql_replace_if =                                                                                  \
        RESOURCE_SQL_WRITE_IF(t, a, json, returning, "UPDATE " t " AS " a " SET " replace_set, tags),  \
    .sql_patch_if =                                                                                    \
        RESOURCE_SQL_WRITE_IF(t, a, json, returning, "UPDATE " t " AS " a " SET " patch_set, tags)
/* sql_delete (and its If-Match form) of a table whose deletion names no cascade */
#define RESOURCE_SQL_DELETE(t, a, json, returning)                                                    \
    .sql_delete =                                                                                     \
        "DELETE FROM " t " " a " WHERE " a ".id = $1 RETURNING " RESOURCE_SQL_ROW(a, json) returning, \
    .sql_delete_if = RESOURCE_SQL_WRITE_IF(t, a, json, returning, "DELETE FROM " t " " a, "$2")

#endif
