/* headers: the request headers pgapi reads, one line each in HTTP_HEADER_TABLE; every other header is
 * counted against max_header_bytes and otherwise ignored. Part of http's public surface (http.h). */
#ifndef PGAPI_HTTP_HEADERS_H
#define PGAPI_HTTP_HEADERS_H

#include <stddef.h>

#define HTTP_REQUEST_ID_MAX 64
/* "Bearer " and a token of up to 4096 bytes (common/jwt.h's JWT_TOKEN_MAX), and one byte more: a value
 * that fills the buffer was longer, and is refused rather than verified cut. */
#define HTTP_AUTHORIZATION_MAX (7 + 4096 + 1)
#define HTTP_XFF_MAX 1024 /* X-Forwarded-For: a value cut here names no client (client.c) */

/* X(ID, name, limit): HTTP_H_ID names the header `name` (matched without regard to case, at most
 * HTTP_HEADER_NAME_MAX - 1 bytes); its value is kept up to `limit` bytes and cut there (no value we use
 * is that long). A repeated header keeps its last value; how often it came is counted (Host must come
 * once). Adding a header is one line here. A value whose limit is over HTTP_HEADER_INLINE_MAX (a bearer
 * token) is kept on the heap, only while its request lasts: every connection holds a struct http_headers,
 * and thousands of idle ones must not each hold 4 KB for a header most requests never send. */
#define HTTP_HEADER_TABLE(X)                                                              \
    X(CONTENT_TYPE, "Content-Type", 127)                                                  \
    X(IF_NONE_MATCH, "If-None-Match", 127)                                                \
    X(IF_MATCH, "If-Match", 512) /* see etag.h */                                         \
    X(X_REQUEST_ID, "X-Request-Id", HTTP_REQUEST_ID_MAX)                                  \
    X(HOST, "Host", 255) /* for allowed_hosts */                                          \
    X(EXPECT, "Expect", 31)                                                               \
    X(PGAPI_LSN, "Pgapi-Lsn", 31)                       /* a consistency token */         \
    X(ORIGIN, "Origin", 256)                            /* CORS: 256 = longer than any */ \
    X(TRACEPARENT, "traceparent", 56)                   /* W3C: 55 for version 00 */      \
    X(TRACESTATE, "tracestate", 513)                    /* W3C: at most 512 */            \
    X(X_FORWARDED_FOR, "X-Forwarded-For", HTTP_XFF_MAX) /* client.c */                    \
    X(IDEMPOTENCY_KEY, "Idempotency-Key", 256)                                            \
    X(AUTHORIZATION, "Authorization", HTTP_AUTHORIZATION_MAX)

#define HTTP_HEADER_NAME_MAX 32     /* longer field names are none of the table's */
#define HTTP_HEADER_INLINE_MAX 1024 /* values with a larger limit live on the heap (see above) */

enum http_header_id {
#define HTTP_HEADER_ENUM(id, name, limit) HTTP_H_##id,
    HTTP_HEADER_TABLE(HTTP_HEADER_ENUM)
#undef HTTP_HEADER_ENUM
        HTTP_H_COUNT
};

/* The values of one request's headers: a NUL-terminated buffer of limit + 1 bytes per header, "" when
 * absent, and how many times each came. */
struct http_headers {
#define HTTP_HEADER_VALUE(id, name, limit) char id[(limit) > HTTP_HEADER_INLINE_MAX ? 1 : (limit) + 1];
    HTTP_HEADER_TABLE(HTTP_HEADER_VALUE)
#undef HTTP_HEADER_VALUE
    char *heap[HTTP_H_COUNT];         /* the values over HTTP_HEADER_INLINE_MAX; NULL until one comes */
    unsigned char seen[HTTP_H_COUNT]; /* saturates at 255: only "more than once" matters */
};

/* The table's header called name (len bytes, any case), or -1 for a header the table does not hold. */
int http_headers_lookup(const char *name, size_t len);
/* A field line of header id begins: its value replaces any earlier one, and the count goes up. */
void http_headers_value_begin(struct http_headers *h, enum http_header_id id);
/* Appends a piece of the value (the parser may hand it over in pieces), cut at the header's limit. */
void http_headers_value_append(struct http_headers *h, enum http_header_id id, const char *at, size_t len);
/* The value, "" when the header was absent. */
const char *http_headers_value(const struct http_headers *h, enum http_header_id id);
/* How many field lines of the header came (up to 255). */
unsigned http_headers_seen(const struct http_headers *h, enum http_header_id id);
/* Frees the heap-held values (before the struct is reset or freed); they read "" again. */
void http_headers_release(struct http_headers *h);

#endif
