/* reply: JSON responses and the one error shape {"error":{"code":...,"message":...}}. */
#ifndef PGAPI_REPLY_H
#define PGAPI_REPLY_H

#include <json-c/json.h>

#include "worker/http/http.h"

/* Serialises obj (and releases the caller's reference) as the response body. */
void reply_json(struct http_request *req, int status, struct json_object *obj);
void reply_error(struct http_request *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void reply_text(struct http_request *req, int status, const char *text);

#endif
