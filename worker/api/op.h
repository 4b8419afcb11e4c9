/* op: one request's database step for the resource routes (/users, /posts): read one row or 404, read
 * a keyset page, write then raise fences then answer. Each call answers the request exactly once. */
#ifndef PGAPI_OP_H
#define PGAPI_OP_H

#include <stdbool.h>
#include <stdint.h>

#include "common/fence.h"
#include "worker/http/http.h"

struct worker;

#define OP_TABLE(t) (1u << (t)) /* a bit of a table set (struct op.also, struct op_resource.cascade) */
#define OP_FIELDS_MAX 4

/* A body field: a string of min..max characters (code points), with an optional extra check. */
struct op_field {
    const char *name;
    int min, max;
    bool (*valid)(const char *s);
    const char *valid_desc; /* "an email address": the 422 message when valid() refuses */
};

/* A resource: its names, its table and body fields, and the statements of its standard routes. Every
 * statement returns (id, json text) rows, as rows.h expects. */
struct op_resource {
    const char *what;              /* "post": names it in messages */
    const char *path;              /* "/posts": a created row's Location is path/<id> */
    enum fence_table table;
    unsigned cascade;              /* tables whose rows a DELETE removes too (their fences rise too) */
    const struct op_field *fields; /* the body of PUT and PATCH, in parameter order from $2 */
    int nfields;                   /* 1..OP_FIELDS_MAX */
    /* NULL-terminated: the members a row shows that no body sets ("id", "version", ...). A body naming
     * one is refused (read_only_field) like any other member that is not a field (unknown_field): a
     * client that echoes a row it read must drop them, so no write is ever mistaken for one it is not. */
    const char *const *read_only;
    /* sql_delete of a table with cascade may return a third column: the ids of the rows the cascade
     * removed, as bigint[] text, or NULL when there are too many to name (see op.c, cascade_read) */
    const char *sql_get, *sql_get_many, *sql_list, *sql_replace, *sql_patch, *sql_delete;
};

/* A batched create (pool_query.batch_sql) of table t aliased a: ids drawn first so that each input row
 * (cols, typed as the casts in unnest_args) can be matched to the row it made. */
#define OP_SQL_CREATE_MANY(t, a, cols, unnest_args, json)                                              \
    "WITH input AS MATERIALIZED (SELECT nextval('" t "_id_seq') AS id, x.* FROM unnest(" unnest_args    \
    ") WITH ORDINALITY AS x(" cols ", ord)), made AS (INSERT INTO " t " AS " a " (id, " cols ") SELECT id, " \
    cols " FROM input ORDER BY ord RETURNING " OP_SQL_ROW(a, json) " AS body) SELECT input.ord::text, "   \
    "made.id, made.body FROM made JOIN input USING (id)"
/* The batched form of "id = $1" (pool_query.batch_sql) */
#define OP_SQL_ANY_ID "ANY($1::bigint[])"
/* A number macro as SQL text */
#define OP_STR_(x) #x
#define OP_STR(x) OP_STR_(x)
/* A row as its (id, json text) columns, for RETURNING. */
#define OP_SQL_ROW(a, json) a ".id, " json "::text"
/* A page bounded in SQL, so PostgreSQL never sends a row the answer would drop: `rows` selects (id,
 * body text) in id order, at most L + 1 of them; of those the page keeps the first L, and only while
 * their bodies add up to at most B bytes (the first row always, however long). The third column tells
 * whether another row follows: on the page's last row, whether there is a next page, which starts
 * after that row (so a walk skips no row). */
#define OP_SQL_PAGE(rows, L, B)                                                                          \
    "SELECT id, body, more FROM (SELECT id, body, row_number() OVER w AS n, sum(octet_length(body)) OVER w" \
    " AS bytes, lead(id) OVER w IS NOT NULL AS more FROM (" rows ") r WINDOW w AS (ORDER BY id ROWS"    \
    " UNBOUNDED PRECEDING)) x WHERE n <= " L " AND (n = 1 OR bytes <= " B ") ORDER BY id"
/* The statements of struct op_resource (but sql_delete) for table t aliased a whose row is the JSON
 * expression json, in op's parameter order: get/replace/patch $1 = id, replace and patch the fields from
 * $2 (their SET lists given), list $1 = after_id, $2 = limit and $3 = byte budget (OP_SQL_PAGE). */
#define OP_SQL_STATEMENTS(t, a, json, replace_set, patch_set)                                        \
    .sql_get = "SELECT " OP_SQL_ROW(a, json) " FROM " t " " a " WHERE " a ".id = $1",                \
    .sql_get_many = "SELECT " OP_SQL_ROW(a, json) " FROM " t " " a " WHERE " a ".id = " OP_SQL_ANY_ID,  \
    .sql_list = OP_SQL_PAGE("SELECT " a ".id, " json "::text AS body FROM " t " " a " WHERE " a ".id > $1" \
                            " ORDER BY " a ".id LIMIT $2::bigint + 1", "$2::bigint", "$3::bigint"),       \
    .sql_replace = "UPDATE " t " AS " a " SET " replace_set " WHERE " a ".id = $1 RETURNING "        \
                   OP_SQL_ROW(a, json),                                                              \
    .sql_patch = "UPDATE " t " AS " a " SET " patch_set " WHERE " a ".id = $1 RETURNING "            \
                 OP_SQL_ROW(a, json)
/* struct op_resource.sql_delete of a table whose deletion cascades nowhere */
#define OP_SQL_DELETE(t, a, json) .sql_delete = "DELETE FROM " t " " a " WHERE " a ".id = $1 RETURNING " OP_SQL_ROW(a, json)

/* One request's step; callers fill it (often as a compound literal) and the op copies it. */
struct op {
    struct worker *w;
    struct http_request *req;
    const struct op_resource *res;
    const char *owner; /* what `id` names when it is not the row itself ("user" for /users/:id/posts) */
    int64_t id;        /* the path's id ($1 of the statement), 0 when there is none */
    unsigned also;     /* OP_TABLE bits of other tables the step reads (their fences are waited for) or
                        * changes (their fences are raised) */
    bool created;      /* a write that answers 201 with Location instead of 200 */
    const char *cache; /* cache the row under "<cache>:<id>" ("user", "userp", "post"), or a page under
                        * "<cache>:<id>:<limit>:<after>"; NULL: not cached */
    const char *cache_list; /* op_page: the list's generation name ("users", "posts", "uposts" + ":<id>") */
    bool embeds;       /* op_get: the statement embeds a bounded page of other rows: $2 = the most rows it
                        * embeds (embed_posts), $3 = their byte budget (page_bytes) */
};

/* Reads the row `sql` returns for $1 = id: answers it, or 404 when there is none. */
void op_get(const struct op *o, const char *sql, const char *sql_many);
/* Reads a page of rows (an OP_SQL_PAGE statement): ?after_id=, ?limit= and the byte budget
 * (page_bytes) become the last three parameters (after $1 = id when id != 0; then no row at all means
 * the owner does not exist: 404, and a row with a NULL id an empty page). `base` is the path the
 * next-page link starts with. */
void op_page(const struct op *o, const char *sql, const char *base);
/* Runs a write whose parameters are $1 = id (when id != 0) then the body's fields in order; required =
 * false (PATCH) makes every field optional (NULL when absent) but at least one must be given. */
/* sql_many: NULL, or a create's batched form (pool_query.batch_sql): each parameter as an array, rows
 * of (1-based place, id, json) */
void op_write_body(const struct op *o, const char *sql, const char *sql_many, bool required);
/* By the request's method: PUT replaces every field (200), PATCH changes the fields given (200),
 * DELETE removes the row (204). */
void op_item_write(const struct op *o);
/* At exit, after the pool and the cache are freed (they run no callback then): frees what the requests
 * still in flight held, without answering them; their connections close with the process. */
void op_discard_all(struct worker *w);

#endif
