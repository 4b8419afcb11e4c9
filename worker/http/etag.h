/* etag: the entity tags pgapi sends (an MD5 of the body, which PostgreSQL's md5() computes the same way,
 * so a conditional write compares it in its own statement) and the If-Match list a write may carry
 * (RFC 9110 13.1.1). Part of http's public surface (http.h). */
#ifndef PGAPI_HTTP_ETAG_H
#define PGAPI_HTTP_ETAG_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_ETAG_HEX 32 /* an MD5 in lowercase hex */
/* entity tags in one If-Match; the _TEXT form is for messages (keep the two equal) */
#define HTTP_IF_MATCH_TAGS_MAX 32
#define HTTP_IF_MATCH_TAGS_MAX_TEXT "32"
/* the longest If-Match value read: the header table keeps one byte more (HTTP_H_IF_MATCH), so a value
 * that reaches it was cut there, and is refused rather than read as a shorter list */
#define HTTP_IF_MATCH_BYTES_MAX 511

/* hex: HTTP_ETAG_HEX + 1 bytes, the lowercase hex MD5 of body (what md5(text) gives in SQL). */
void http_etag_md5(const char *body, size_t len, char *hex);

/* One If-Match value, parsed: `any` for "*", else the opaque tags (without quotes) of its strong entity
 * tags; weak ones (W/"...") never match a write (strong comparison) and are counted apart. Pointers go
 * into the parsed value. */
struct http_if_match {
    bool any;
    int ntags, nweak;
    struct {
        const char *p;
        size_t len;
    } tags[HTTP_IF_MATCH_TAGS_MAX];
};

/* 0, or -1 with why in err (an entity-tag list that is not RFC 9110's: no quotes, "*" with others, more
 * than HTTP_IF_MATCH_TAGS_MAX tags, an empty list). */
int http_if_match_parse(const char *value, struct http_if_match *out, const char **err);

#endif
