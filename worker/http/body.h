/* body: parses and validates JSON request bodies; on failure it has already answered the request
 * (415 wrong content type, 400 malformed JSON, invalid UTF-8, repeated keys or wrong types, 422 values out
 * of range). Which members a body may have is the caller's (resource_ops.c refuses the others). */
#ifndef PGAPI_BODY_H
#define PGAPI_BODY_H

#include <json-c/json.h>
#include <stdbool.h>

#include "worker/http/http.h"

/* Returns the body's top-level object (caller puts it) or NULL after answering with an error. */
struct json_object *body_object(struct http_request *req);

/* A string field limited to [min,max] characters (Unicode code points). Returns 1 found (value in
 * *out, owned by obj), 0 absent and optional, -1 after answering with an error. */
int body_string(struct http_request *req, struct json_object *obj, const char *key, bool required, int min,
                int max, const char **out);

/* The first member of obj whose name is none of names[0..n), or NULL; the name is owned by obj. */
const char *body_member_other(struct json_object *obj, const char *const *names, int n);

/* Whether name is one of the NULL-terminated list (NULL: an empty list). */
bool body_name_listed(const char *name, const char *const *list);

/* The one email check, shared by the API and mirrored by the schema's CHECK. */
bool body_email_valid(const char *s);

#endif
