/* body: json-c in strict mode with UTF-8 validation and a small nesting limit, so hostile bodies
 * (10,000-deep arrays, invalid UTF-8, trailing garbage) are refused before any work is done. */
#include "worker/body.h"

#include <string.h>
#include <strings.h>

#include "worker/reply.h"

#define BODY_MAX_DEPTH 16

static bool content_type_json(const char *ct)
{
    size_t n = strlen("application/json");
    return strncasecmp(ct, "application/json", n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

struct json_object *body_object(struct http_request *req)
{
    if (!content_type_json(req->content_type)) {
        reply_error(req, 415, "unsupported_media_type", "Content-Type must be application/json");
        return NULL;
    }
    struct json_tokener *tok = json_tokener_new_ex(BODY_MAX_DEPTH);
    if (!tok) {
        reply_error(req, 503, "out_of_memory", "server out of memory");
        return NULL;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    struct json_object *obj = json_tokener_parse_ex(tok, req->body, (int)req->body_len);
    enum json_tokener_error err = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (err != json_tokener_success || used != req->body_len) {
        if (obj)
            json_object_put(obj);
        reply_error(req, 400, "malformed_json", "request body is not valid JSON: %s",
                    err == json_tokener_success    ? "trailing data after the value"
                    : err == json_tokener_continue ? "unexpected end of input"
                                                   : json_tokener_error_desc(err));
        return NULL;
    }
    if (!json_object_is_type(obj, json_type_object)) {
        json_object_put(obj);
        reply_error(req, 400, "malformed_json", "request body must be a JSON object");
        return NULL;
    }
    return obj;
}

/* Counts code points of valid UTF-8 (json-c validated it); -1 if it holds a NUL. */
static int utf8_length(const char *s, size_t bytes)
{
    int n = 0;
    for (size_t i = 0; i < bytes; i++) {
        if (s[i] == '\0')
            return -1;
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    }
    return n;
}

int body_string(struct http_request *req, struct json_object *obj, const char *key, bool required,
                int min, int max, const char **out)
{
    struct json_object *v;
    if (!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null)) {
        if (!required)
            return 0;
        reply_error(req, 400, "missing_field", "field \"%s\" is required", key);
        return -1;
    }
    if (!json_object_is_type(v, json_type_string)) {
        reply_error(req, 400, "wrong_type", "field \"%s\" must be a string", key);
        return -1;
    }
    const char *s = json_object_get_string(v);
    int len = utf8_length(s, (size_t)json_object_get_string_len(v));
    if (len < 0) {
        reply_error(req, 422, "invalid_value", "field \"%s\" must not contain NUL characters", key);
        return -1;
    }
    if (len < min || len > max) {
        reply_error(req, 422, "invalid_value", "field \"%s\" must be %d to %d characters long, got %d", key,
                    min, max, len);
        return -1;
    }
    *out = s;
    return 1;
}

bool body_email_valid(const char *s)
{
    const char *at = strchr(s, '@');
    if (!at || at == s || strchr(at + 1, '@') || at[1] == '\0')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ')
            return false;
    const char *dot = strrchr(at + 1, '.');
    return dot && dot > at + 1 && dot[1] != '\0';
}
