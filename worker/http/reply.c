/* reply: every JSON body leaves through here, serialised by json-c (escaping, UTF-8 as given). */
#include "worker/http/reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/utf8.h"

void reply_json(struct http_request *req, int status, struct json_object *obj)
{
    size_t len = 0;
    const char *s =
        json_object_to_json_string_length(obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
    if (!s) {
        json_object_put(obj);
        log_error("request %s: cannot serialise the response", req->request_id);
        http_respond(req, 500, "application/json",
                     "{\"error\":{\"code\":\"internal\",\"message\":\"cannot serialise the response\"}}", 71);
        return;
    }
    http_respond(req, status, "application/json", s, len);
    json_object_put(obj);
}

void reply_error(struct http_request *req, int status, const char *code, const char *fmt, ...)
{
    char raw[512], msg[sizeof(raw) * 3]; /* room for every byte replaced by U+FFFD */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    /* messages quote what the client sent (a path, a key): json-c would pass invalid UTF-8 through */
    utf8_sanitize(msg, sizeof(msg), raw);
    struct json_object *err = json_object_new_object(), *root = json_object_new_object();
    json_object_object_add(err, "code", json_object_new_string(code));
    json_object_object_add(err, "message", json_object_new_string(msg));
    json_object_object_add(root, "error", err);
    reply_json(req, status, root);
}

void reply_text(struct http_request *req, int status, const char *text)
{
    http_respond(req, status, "text/html; charset=utf-8", text, strlen(text));
}
