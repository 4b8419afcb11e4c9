/* body: parses and validates JSON request bodies; on failure it has already answered the request
 * (415 wrong content type, 400 malformed JSON, invalid UTF-8, repeated keys or wrong types, 422 values out
 * of range). */
#ifndef PGAPI_BODY_H
#define PGAPI_BODY_H

#include <json-c/json.h>
#include <stdbool.h>

#include "worker/http.h"

/* Returns the body's top-level object (caller puts it) or NULL after answering with an error. */
struct json_object *body_object(struct http_request *req);

/* A string field limited to [min,max] characters (Unicode code points). Returns 1 found (value in
 * *out, owned by obj), 0 absent and optional, -1 after answering with an error. */
int body_string(struct http_request *req, struct json_object *obj, const char *key, bool required,
                int min, int max, const char **out);

/* The one email check, shared by the API and mirrored by the schema's CHECK. */
bool body_email_valid(const char *s);

#endif
