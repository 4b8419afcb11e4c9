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
    /* replace and patch batched (RESOURCE_SQL_UPDATE_MANY): plain writes of distinct rows queued behind a
     * busy primary share one statement and one commit */
    const char *sql_replace_many, *sql_patch_many;
    /* create, replace, patch and delete with an Idempotency-Key (RESOURCE_SQL_KEYED): the same parameters,
     * then (but create) the If-Match tags or NULL, then the key's own text[] (idempotency.h). */
    const char *sql_create_keyed, *sql_replace_keyed, *sql_patch_keyed, *sql_delete_keyed;
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
/* A batched replace or patch (pool_query.batch_sql) of table t aliased a: the input rows (cols, id
 * first, typed as the casts in unnest_args) name distinct rows (the pool never batches two writes whose
 * first parameter is the same: UPDATE ... FROM would apply only one of them), locked in id order before
 * any is written, so two batches never wait on each other in a cycle; `set` reads the input as v. A row
 * missing gives its job no row (a 404), as the plain statement would. */
#define RESOURCE_SQL_UPDATE_MANY(t, a, cols, unnest_args, set, json, returning)                              \
    "WITH v AS MATERIALIZED (SELECT x.* FROM unnest(" unnest_args ") WITH ORDINALITY AS x(" cols ", ord)), " \
    "locked AS MATERIALIZED (SELECT " a ".id FROM " t " " a " WHERE " a                                      \
    ".id IN (SELECT id FROM v) ORDER BY " a ".id FOR UPDATE), made AS (UPDATE " t " AS " a " SET " set       \
    " FROM v JOIN locked USING (id) WHERE " a                                                                \
    ".id = v.id RETURNING " RESOURCE_SQL_ROW(a, json) " AS body" returning                                   \
                                                      ") SELECT v.ord::text, made.* FROM "                   \
                                                      "made JOIN v USING (id)"
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
/* ---- Idempotency-Key (worker/api/idempotency.h, migration 0007) ---------------------------------- */

/* The condition a keyed write's own statement writes under: the gate g (RESOURCE_SQL_KEYED) said so. */
#define RESOURCE_SQL_KEY_GO "EXISTS (SELECT 1 FROM g WHERE g.outcome = 'write')"
/* The class of the keys' transaction-scoped advisory locks ("pgid"): the two-int form, whose space is
 * apart from the one-bigint locks of migrate and seed. */
#define RESOURCE_SQL_KEY_LOCK_CLASS "1885825380"
/* The keyed form of a write, one statement (so it runs as one transaction through PgBouncer's
 * transaction mode): `writes` are its CTEs, "w AS (...)" the write itself gated by RESOURCE_SQL_KEY_GO
 * and returning (id, body, ...), `result` the CTE holding what the plain statement returns; k is the
 * key's parameter, one text[] {scope, key, request hash, status, ttl in seconds}.
 *  i     the parameter's fields.
 *  g     the key's lock, tried and never waited for (the request in flight with the key holds it until
 *        its transaction ends), and the key's stored answer younger than the ttl; outcome 'replay' (the
 *        same request hash), 'mismatch' (another request), 'busy' (nothing stored, the lock held
 *        elsewhere: in flight) or 'write'.
 *  gone  the key's answer past the ttl (not yet purged), deleted under the lock: the key is reused.
 *  w...  the write, which writes only on 'write'.
 *  s     the answer stored, when w wrote a row: a 404, a 412 or an error stores nothing (the client may
 *        send the key again). It reads gone's count first, so the old row is gone before it inserts. A
 *        row of the key that committed after this statement's snapshot but before its lock (that
 *        request just ended) fails the insert on the primary key: the whole statement, write included,
 *        is undone, and answered 409 as 'busy' is.
 * The rows: the plain statement's, then idempotency (the outcome) and the stored answer's status, id and
 * body: one row when not 'write'; on 'write', no row at all is the plain statement's 404. */
#define RESOURCE_SQL_KEYED(k, writes, result)                                                                \
    "WITH i AS MATERIALIZED (SELECT a[1] AS scope, a[2] AS key, a[3] AS hash, a[4]::smallint AS status,"     \
    " a[5]::int * interval '1 second' AS ttl FROM (SELECT " k "::text[] AS a) x), g AS MATERIALIZED (SELECT" \
    " l.locked, p.status, p.row_id, p.body, CASE WHEN p.request_hash = i.hash THEN 'replay' WHEN"            \
    " p.request_hash IS NOT NULL THEN 'mismatch' WHEN l.locked THEN 'write' ELSE 'busy' END AS outcome"      \
    " FROM i CROSS JOIN LATERAL (SELECT pg_try_advisory_xact_lock(" RESOURCE_SQL_KEY_LOCK_CLASS              \
    ", hashtext(length(i.scope) || ':' || i.scope || i.key)) AS locked) l LEFT JOIN pgapi_idempotency_keys"  \
    " p ON p.scope = i.scope AND p.key = i.key AND p.created_at > now() - i.ttl), gone AS (DELETE FROM"      \
    " pgapi_idempotency_keys p USING i, g WHERE g.locked AND p.scope = i.scope AND p.key = i.key AND"        \
    " p.created_at <= now() - i.ttl RETURNING 1), " writes ", s AS (INSERT INTO pgapi_idempotency_keys"      \
    " (scope, key, request_hash, status, row_id, body) SELECT i.scope, i.key, i.hash, i.status, w.id::text," \
    " CASE WHEN i.status <> 204 THEN w.body END FROM i, w WHERE (SELECT count(*) FROM gone) >= 0 RETURNING"  \
    " 1) SELECT r.*, g.outcome AS idempotency, g.status::text AS idempotency_status, g.row_id AS"            \
    " idempotency_id, g.body AS idempotency_body FROM g LEFT JOIN " result " r ON g.outcome = 'write'"       \
    " WHERE g.outcome <> 'write' OR r.id IS NOT NULL"
/* A keyed UPDATE or DELETE of table t aliased a (`write` up to its WHERE), tags its If-Match parameter
 * (NULL: unconditional) and k the key's: as RESOURCE_SQL_WRITE_IF, gated. */
#define RESOURCE_SQL_KEYED_WRITE(t, a, json, returning, write, tags, k)                                  \
    RESOURCE_SQL_KEYED(                                                                                  \
        k,                                                                                               \
        "w AS (" write " WHERE " a ".id = $1 AND (" tags "::text[] IS NULL OR " RESOURCE_SQL_IF_MATCH(   \
            a, json, tags) ") AND " RESOURCE_SQL_KEY_GO " RETURNING " a ".id, " json                     \
                           "::text AS body" returning "), r AS (SELECT * FROM w UNION ALL SELECT " a     \
                           ".id, NULL::text" returning " FROM " t " " a " WHERE " a ".id = $1 AND " tags \
                           "::text[] IS NOT NULL AND NOT EXISTS (SELECT 1 FROM w))",                     \
        "r")
/* A keyed create of table t aliased a: its columns cols take `values` (the parameters, typed), k is the
 * key's parameter. */
#define RESOURCE_SQL_KEYED_CREATE(t, a, cols, values, json, returning, k)                                    \
    RESOURCE_SQL_KEYED(k,                                                                                    \
                       "w AS (INSERT INTO " t " AS " a " (" cols ") SELECT " values                          \
                       " WHERE " RESOURCE_SQL_KEY_GO " RETURNING " a ".id, " json "::text AS body" returning \
                       ")",                                                                                  \
                       "w")

/* The statements of table t aliased a whose row is the JSON expression json, in the parameter order
 * of struct resource; the writes' `returning` the columns after (id, json) (", a.user_id" for a
 * parent's id, "" without); replace and patch as their SET lists, tags their If-Match parameter
 * (the one after the fields: "$4" after two) and key the Idempotency-Key's (the one after: "$5"). */
#define RESOURCE_SQL_STATEMENTS(t, a, json, returning, replace_set, patch_set, tags, key)               \
    .sql_get = "SELECT " RESOURCE_SQL_ROW(a, json) " FROM " t " " a " WHERE " a ".id = $1",             \
    .sql_get_many =                                                                                     \
        "SELECT " RESOURCE_SQL_ROW(a, json) " FROM " t " " a " WHERE " a ".id = " RESOURCE_SQL_ANY_ID,  \
    .sql_list = RESOURCE_SQL_PAGE("SELECT " a ".id, " json "::text AS body FROM " t " " a " WHERE " a   \
                                  ".id > $1 ORDER BY " a ".id LIMIT $2::bigint + 1",                    \
                                  "$2::bigint", "$3::bigint"),                                          \
    .sql_replace = "UPDATE " t " AS " a " SET " replace_set " WHERE " a                                 \
                   ".id = $1 RETURNING " RESOURCE_SQL_ROW(a, json) returning,                           \
    .sql_patch = "UPDATE " t " AS " a " SET " patch_set " WHERE " a                                     \
                 ".id = $1 RETURNING " RESOURCE_SQL_ROW(a, json) returning,                             \
    .sql_replace_if =                                                                                   \
        RESOURCE_SQL_WRITE_IF(t, a, json, returning, "UPDATE " t " AS " a " SET " replace_set, tags),   \
    .sql_patch_if =                                                                                     \
        RESOURCE_SQL_WRITE_IF(t, a, json, returning, "UPDATE " t " AS " a " SET " patch_set, tags),     \
    .sql_replace_keyed = RESOURCE_SQL_KEYED_WRITE(t, a, json, returning,                                \
                                                  "UPDATE " t " AS " a " SET " replace_set, tags, key), \
    .sql_patch_keyed =                                                                                  \
        RESOURCE_SQL_KEYED_WRITE(t, a, json, returning, "UPDATE " t " AS " a " SET " patch_set, tags, key)
/* sql_delete (and its If-Match form) of a table whose deletion names no cascade */
#define RESOURCE_SQL_DELETE(t, a, json, returning)                                                    \
    .sql_delete =                                                                                     \
        "DELETE FROM " t " " a " WHERE " a ".id = $1 RETURNING " RESOURCE_SQL_ROW(a, json) returning, \
    .sql_delete_if = RESOURCE_SQL_WRITE_IF(t, a, json, returning, "DELETE FROM " t " " a, "$2"),      \
    .sql_delete_keyed = RESOURCE_SQL_KEYED_WRITE(t, a, json, returning, "DELETE FROM " t " " a, "$2", "$3")

#endif
