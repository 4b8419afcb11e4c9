/* handlers_resource: the standard routes of every resource, each one generic resource operation. */
#include <stdio.h>
#include <string.h>

#include "worker/api/handlers.h"
#include "worker/api/resource_ops.h"
#include "worker/http/query.h"
#include "worker/http/reply.h"

/* GET an item: ?include=<child's collection> embeds the children of a resource that declares an
 * embed (the read then waits for the children's fences too); other resources ignore ?include=. */
static void item_get(struct resource_op *o)
{
    const struct resource *child = o->res->embed.child;
    struct http_request *req = o->req;
    char include[16] = "";
    if (child && req->query && query_get(req->query, "include", include, sizeof(include)) != 0 &&
        strcmp(include, child->collection) != 0) {
        reply_error(req, 400, "invalid_parameter", "include must be \"%s\"", child->collection);
        return;
    }
    o->embed = include[0] != '\0';
    resource_op_get(o);
}

void handle_resource(struct api_context *api, struct http_request *req, const struct resource *r,
                     enum route_kind kind, const struct route_args *a)
{
    struct resource_op o = { .api = api, .req = req, .res = r, .id = a->nid ? a->id[0] : 0 };
    switch (kind) {
    case ROUTE_LIST:
        resource_op_page(&o);
        return;
    case ROUTE_CREATE:
        resource_op_create(&o);
        return;
    case ROUTE_GET:
        item_get(&o);
        return;
    case ROUTE_REPLACE:
    case ROUTE_PATCH:
    case ROUTE_DELETE:
        resource_op_item_write(&o);
        return;
    case ROUTE_LIST_BY_PARENT:
        o.owner = r->parent;
        resource_op_page(&o);
        return;
    case ROUTE_CREATE_BY_PARENT:
        o.owner = r->parent;
        resource_op_create(&o);
        return;
    case ROUTE_KINDS:
        break;
    }
    reply_error(req, 500, "internal", "internal error");
}
