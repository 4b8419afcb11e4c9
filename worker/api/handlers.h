/* handlers: one function per route (an item's PUT, PATCH and DELETE share one, which goes by the method);
 * each answers exactly once, possibly after a database reply. */
#ifndef PGAPI_HANDLERS_H
#define PGAPI_HANDLERS_H

#include "worker/api/router.h"

void handle_root(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_healthz(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_readyz(struct worker *w, struct http_request *req, const struct route_args *a);

void handle_users_list(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_users_create(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_user_get(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_user_write(struct worker *w, struct http_request *req, const struct route_args *a); /* PUT PATCH DELETE */

void handle_user_posts_list(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_user_posts_create(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_posts_list(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_post_get(struct worker *w, struct http_request *req, const struct route_args *a);
void handle_post_write(struct worker *w, struct http_request *req, const struct route_args *a); /* PUT PATCH DELETE */

#endif
