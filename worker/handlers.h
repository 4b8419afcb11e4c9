/* handlers: one function per route; each answers exactly once, possibly after a database reply. */
#ifndef PGAPI_HANDLERS_H
#define PGAPI_HANDLERS_H

#include "worker/router.h"

void handle_root(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_healthz(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_readyz(struct worker *w, struct http_request *req, const struct route_args *a);

void handle_users_list(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_users_create(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_user_get(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_user_replace(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_user_patch(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_user_delete(struct worker *w, struct http_request *req, const struct route_args *a);

#endif
