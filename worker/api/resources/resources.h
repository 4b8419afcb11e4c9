/* resources: the declarations of worker/api/resources/ that refer to one another (a parent, an embed),
 * and the JSON shape of each row as one SQL expression (user alias u, post alias p), so every route
 * that returns a user or a post, alone or embedded, returns the very same object. */
#ifndef PGAPI_RESOURCES_H
#define PGAPI_RESOURCES_H

#include "worker/api/resource.h"

extern const struct resource resource_users, resource_posts;

#define USER_JSON                                                                            \
    "jsonb_build_object('id', u.id, 'name', u.name, 'email', u.email, 'version', u.version," \
    " 'created_at', u.created_at, 'updated_at', u.updated_at)"
#define POST_JSON                                                                                  \
    "jsonb_build_object('id', p.id, 'title', p.title, 'content', p.content, 'user_id', p.user_id," \
    " 'version', p.version, 'created_at', p.created_at, 'updated_at', p.updated_at)"

#endif
