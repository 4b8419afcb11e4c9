/* handlers: what a route runs: the hand-written health routes, and the one handler of every generated
 * resource route, which goes by the route's kind. Each answers exactly once, possibly after a database
 * reply. */
#ifndef PGAPI_HANDLERS_H
#define PGAPI_HANDLERS_H

#include "worker/api/resource.h"
#include "worker/api/router.h"

void handle_root(struct api_context *api, struct http_request *req, const struct route_args *a);
void handle_healthz(struct api_context *api, struct http_request *req, const struct route_args *a);
void handle_readyz(struct api_context *api, struct http_request *req, const struct route_args *a);
/* GET /openapi.yaml: docs/openapi.yaml, built in */
void handle_openapi(struct api_context *api, struct http_request *req, const struct route_args *a);

void handle_resource(struct api_context *api, struct http_request *req, const struct resource *r,
                     enum route_kind kind, const struct route_args *a);

#endif
