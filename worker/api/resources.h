/* resources: the JSON shape of each resource row as one SQL expression (user alias u, post alias p), so
 * every route that returns a user or a post, alone or embedded, returns the very same object. */
#ifndef PGAPI_RESOURCES_H
#define PGAPI_RESOURCES_H

#define USER_JSON                                                                                   \
    "jsonb_build_object('id', u.id, 'name', u.name, 'email', u.email, 'version', u.version,"         \
    " 'created_at', u.created_at, 'updated_at', u.updated_at)"
#define POST_JSON                                                                                   \
    "jsonb_build_object('id', p.id, 'title', p.title, 'content', p.content, 'user_id', p.user_id,"   \
    " 'version', p.version, 'created_at', p.created_at, 'updated_at', p.updated_at)"

#endif
