/* query: minimal application/x-www-form-urlencoded decoding of the request target's query part. */
#include "worker/http/query.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "worker/http/reply.h"

/* Decodes %XX and '+' into buf; false when malformed, holding a NUL or longer than cap - 1. */
static bool decode_into(const char *s, size_t len, char *buf, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (o + 1 >= cap)
            return false;
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (i + 2 >= len)
                return false;
            int h = utf8_hex_value(s[i + 1]), l = utf8_hex_value(s[i + 2]);
            if (h < 0 || l < 0)
                return false;
            c = (char)(h * 16 + l);
            if (c == '\0')
                return false; /* "%00" would end the value early: "5%00x" must not read as 5 */
            i += 2;
        }
        buf[o++] = c;
    }
    buf[o] = '\0';
    return true;
}

int query_get(const char *query, const char *name, char *buf, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = query; p && *p;) {
        const char *end = strchr(p, '&');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len >= nl && strncmp(p, name, nl) == 0 && (len == nl || p[nl] == '=')) {
            const char *v = len == nl ? "" : p + nl + 1;
            size_t vl = len == nl ? 0 : len - nl - 1;
            return decode_into(v, vl, buf, cap) ? 1 : -1;
        }
        p = end ? end + 1 : NULL;
    }
    return 0;
}

/* Plain decimal only: strtoll alone would also take leading blanks and a "+". */
static bool decimal_is(const char *s)
{
    if (*s == '-')
        s++;
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

int query_int(struct http_request *req, const char *name, int64_t min, int64_t max, int64_t def, int64_t *out)
{
    char buf[32];
    int found = req->query ? query_get(req->query, name, buf, sizeof(buf)) : 0;
    if (found == 0) {
        *out = def;
        return 0;
    }
    char *end = buf;
    errno = 0;
    bool decimal = found > 0 && decimal_is(buf);
    long long v = decimal ? strtoll(buf, &end, 10) : 0;
    if (!decimal || *end || errno || v < min || v > max) {
        reply_error(req, 400, "invalid_parameter",
                    "query parameter \"%s\" must be an integer from %lld to %lld", name, (long long)min,
                    (long long)max);
        return -1;
    }
    *out = v;
    return 0;
}
