/* body: json-c in strict mode behind a strict UTF-8 check (escaped lone surrogates included), a small
 * nesting limit and a duplicate-key check, so hostile bodies (10,000-deep arrays, invalid UTF-8, repeated
 * keys, trailing garbage) are refused before any work is done. */
#include "worker/http/body.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/utf8.h"
#include "worker/http/reply.h"

#define BODY_MAX_DEPTH 16

static bool content_type_json(const char *ct)
{
    size_t n = strlen("application/json");
    return strncasecmp(ct, "application/json", n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* ---- duplicate keys ---------------------------------------------------------------------------
 * json-c keeps the last of two equal keys without a word, so {"email":"a@x.io","email":"b@y.io"} would
 * store the second where a proxy or a log in front may have read the first: such bodies are refused.
 * The text is valid JSON (json-c parsed it) nested at most BODY_MAX_DEPTH deep, so a small scan finds
 * every key; only when the text holds more keys than the parsed objects do, is each key decoded to name
 * the duplicate. */

struct key_scan {
    const char *s;
    size_t len, pos;
    int depth;
    unsigned objects;                    /* objects opened so far */
    unsigned object[BODY_MAX_DEPTH + 1]; /* per open container: its object number, 0 for an array */
    bool want_key;
};

/* The next key token (quotes included) at any depth, as [*start, *end); false at the end of the text.
 * k->depth and k->object[k->depth] then tell which object the key belongs to. */
static bool key_next(struct key_scan *k, size_t *start, size_t *end)
{
    while (k->pos < k->len) {
        char c = k->s[k->pos++];
        if (c == '"') {
            size_t from = k->pos - 1;
            while (k->pos < k->len && k->s[k->pos] != '"')
                k->pos += k->s[k->pos] == '\\' ? 2 : 1;
            k->pos++;
            if (k->want_key) {
                k->want_key = false;
                *start = from;
                *end = k->pos < k->len ? k->pos : k->len;
                return true;
            }
        } else if ((c == '{' || c == '[') && k->depth < BODY_MAX_DEPTH) {
            k->object[++k->depth] = c == '{' ? ++k->objects : 0;
            k->want_key = c == '{';
        } else if ((c == '}' || c == ']') && k->depth > 0) {
            k->depth--;
        } else if (c == ',') {
            k->want_key = k->object[k->depth] != 0;
        }
    }
    return false;
}

static size_t keys_count(const char *s, size_t len)
{
    struct key_scan k = { .s = s, .len = len };
    size_t n = 0, start, end;
    while (key_next(&k, &start, &end))
        n++;
    return n;
}

/* Members of obj and of every object inside it, as json-c kept them. */
static size_t members_count(struct json_object *obj)
{
    size_t n = 0;
    if (json_object_is_type(obj, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(obj); i++)
            n += members_count(json_object_array_get_idx(obj, i));
    } else if (json_object_is_type(obj, json_type_object)) {
        json_object_object_foreach(obj, key, val)
        {
            (void)key;
            n += 1 + members_count(val);
        }
    }
    return n;
}

/* Decodes a key token into a string object the caller puts; NULL if it cannot. */
static struct json_object *key_decode(const char *token, size_t len)
{
    struct json_tokener *tok = json_tokener_new();
    if (!tok)
        return NULL;
    struct json_object *key = json_tokener_parse_ex(tok, token, (int)len);
    json_tokener_free(tok);
    if (key && !json_object_is_type(key, json_type_string)) {
        json_object_put(key);
        key = NULL;
    }
    return key;
}

/* Whether key was met before in the object k is in; seen[d] holds the keys of object number seen_of[d]. */
static bool key_repeated(struct json_object **seen, unsigned *seen_of, const struct key_scan *k,
                         const char *key)
{
    int d = k->depth;
    if (seen_of[d] != k->object[d]) { /* a new object at this depth: forget the previous one's keys */
        json_object_put(seen[d]);
        seen[d] = json_object_new_object();
        seen_of[d] = k->object[d];
    }
    if (!seen[d])
        return false;
    if (json_object_object_get_ex(seen[d], key, NULL))
        return true;
    json_object_object_add(seen[d], key, NULL);
    return false;
}

/* Copies into name the first key that repeats within one object; false if none is found. */
static bool duplicate_find(const char *s, size_t len, char *name, size_t cap)
{
    struct json_object *seen[BODY_MAX_DEPTH + 1] = { 0 };
    unsigned seen_of[BODY_MAX_DEPTH + 1] = { 0 };
    struct key_scan k = { .s = s, .len = len };
    size_t start, end;
    bool found = false;
    while (!found && key_next(&k, &start, &end)) {
        struct json_object *key = key_decode(s + start, end - start);
        if (key && key_repeated(seen, seen_of, &k, json_object_get_string(key))) {
            snprintf(name, cap, "%s", json_object_get_string(key));
            found = true;
        }
        json_object_put(key);
    }
    for (int i = 0; i <= BODY_MAX_DEPTH; i++)
        json_object_put(seen[i]);
    return found;
}

/* Answers 400 and returns true when some object of the body repeats a key. */
static bool keys_duplicated(struct http_request *req, struct json_object *obj)
{
    if (keys_count(req->body, req->body_len) == members_count(obj))
        return false;
    char name[128];
    if (duplicate_find(req->body, req->body_len, name, sizeof(name)))
        reply_error(req, 400, "duplicate_key", "request body repeats the key \"%s\" in one object", name);
    else
        reply_error(req, 400, "duplicate_key", "request body repeats a key in one object");
    return true;
}

/* Whether a key token (quotes included) holds a \u0000 escape. */
static bool key_has_nul(const char *token, size_t len)
{
    size_t i = 0;
    while (i + 1 < len) {
        if (token[i] != '\\') {
            i++;
            continue;
        }
        if (token[i + 1] == 'u' && i + 6 <= len && memcmp(token + i + 2, "0000", 4) == 0)
            return true;
        i += 2; /* the escaped character starts nothing */
    }
    return false;
}

/* Answers 400 and returns true when a key holds a NUL: json-c cuts keys at the first NUL, so
 * {"name\u0000x":"..."} would set "name" where whatever reads the text whole sees another key. */
static bool keys_hold_nul(struct http_request *req)
{
    struct key_scan k = { .s = req->body, .len = req->body_len };
    size_t start, end;
    while (key_next(&k, &start, &end)) {
        if (key_has_nul(req->body + start, end - start)) {
            reply_error(req, 400, "unknown_field",
                        "request body has a key holding a NUL character (\\u0000)");
            return true;
        }
    }
    return false;
}

/* Why json-c stopped, in the words of the 400: its own text, but for a value that ended too soon or was
 * followed by more. */
static const char *parse_error_text(enum json_tokener_error err)
{
    if (err == json_tokener_success)
        return "trailing data after the value";
    if (err == json_tokener_continue)
        return "unexpected end of input";
    return json_tokener_error_desc(err);
}

struct json_object *body_object(struct http_request *req)
{
    if (!content_type_json(http_request_header(req, HTTP_H_CONTENT_TYPE))) {
        reply_error(req, 415, "unsupported_media_type", "Content-Type must be application/json");
        return NULL;
    }
    /* json-c's own check lets overlong forms, encoded surrogates and code points past U+10FFFF through */
    size_t bad = utf8_invalid_at(req->body, req->body_len);
    if (bad < req->body_len) {
        reply_error(req, 400, "malformed_json", "request body is not valid JSON: invalid UTF-8 at byte %zu",
                    bad);
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
        reply_error(req, 400, "malformed_json", "request body is not valid JSON: %s", parse_error_text(err));
        return NULL;
    }
    /* only now: the scan relies on the text being valid JSON */
    size_t lone = utf8_json_lone_surrogate_at(req->body, req->body_len);
    if (lone < req->body_len) {
        json_object_put(obj);
        reply_error(req, 400, "malformed_json",
                    "request body is not valid JSON: a \\u escape at byte %zu is a lone UTF-16 surrogate",
                    lone);
        return NULL;
    }
    if (!json_object_is_type(obj, json_type_object)) {
        json_object_put(obj);
        reply_error(req, 400, "malformed_json", "request body must be a JSON object");
        return NULL;
    }
    if (keys_duplicated(req, obj) || keys_hold_nul(req)) {
        json_object_put(obj);
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

int body_string(struct http_request *req, struct json_object *obj, const char *key, bool required, int min,
                int max, const char **out)
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

bool body_name_listed(const char *name, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(name, *list) == 0)
            return true;
    return false;
}

const char *body_member_other(struct json_object *obj, const char *const *names, int n)
{
    json_object_object_foreach(obj, key, val)
    {
        (void)val;
        int i = 0;
        while (i < n && strcmp(key, names[i]) != 0)
            i++;
        if (i == n)
            return key;
    }
    return NULL;
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
