/* resource_ops: the generic steps of every resource route, driven by the declarations (resource.h):
 * read one row or 404, read a keyset page, write then raise fences then invalidate then answer. Each
 * call answers the request exactly once. */
#ifndef PGAPI_RESOURCE_OPS_H
#define PGAPI_RESOURCE_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "worker/api/api.h"
#include "worker/api/resource.h"
#include "worker/http/http.h"

/* One request's operation; callers fill it (often as a compound literal) and the operation copies it. */
struct resource_op {
    struct api_context *api;
    struct http_request *req;
    const struct resource *res;
    const struct resource *owner; /* res's parent when `id` names a parent row (/users/:id/posts) */
    int64_t id;                   /* the path's id ($1 of the statement), 0 when there is none */
    bool embed;                   /* a get: with res->embed's children (?include=) */
};

/* GET an item: the row, or 404 when there is none. */
void resource_op_get(const struct resource_op *o);
/* GET a collection (or, with owner, one parent's rows): ?after_id=, ?limit= and the byte budget
 * (page_bytes) are the statement's last three parameters; with owner, no row at all means the owner does
 * not exist: 404, and a row with a NULL id an empty page. */
void resource_op_page(const struct resource_op *o);
/* POST a collection (with owner: $1 = the owner's id): 201 with Location. */
void resource_op_create(const struct resource_op *o);
/* By the request's method: PUT replaces every field (200), PATCH changes the fields given (200),
 * DELETE removes the row (204). */
void resource_op_item_write(const struct resource_op *o);
/* At exit, after the pool and the cache are freed (they run no callback then): frees what the requests
 * still in flight held, without answering them; their connections close with the process. */
void resource_ops_discard_all(struct api_context *api);

#endif
