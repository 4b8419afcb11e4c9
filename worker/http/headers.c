/* headers: the table of request headers pgapi reads (HTTP_HEADER_TABLE), and where their values go. */
#include "worker/http/headers.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct header_desc {
    const char *name;
    size_t offset; /* of the value's buffer in struct http_headers */
    size_t cap;    /* its size: the limit and the NUL */
};

static const struct header_desc header_table[HTTP_H_COUNT] = {
#define HTTP_HEADER_DESC(id, hname, limit) \
    [HTTP_H_##id] = { .name = hname, .offset = offsetof(struct http_headers, id), .cap = (limit) + 1 },
    HTTP_HEADER_TABLE(HTTP_HEADER_DESC)
#undef HTTP_HEADER_DESC
};

/* a name the parser's callbacks could not hold whole would never match */
#define HTTP_HEADER_NAME_CHECK(id, name, limit) \
    _Static_assert(sizeof(name) <= HTTP_HEADER_NAME_MAX, name " is longer than HTTP_HEADER_NAME_MAX");
HTTP_HEADER_TABLE(HTTP_HEADER_NAME_CHECK)
#undef HTTP_HEADER_NAME_CHECK

int http_headers_lookup(const char *name, size_t len)
{
    for (int id = 0; id < HTTP_H_COUNT; id++) {
        const char *known = header_table[id].name;
        if (strlen(known) == len && strncasecmp(known, name, len) == 0)
            return id;
    }
    return -1;
}

static bool on_heap(enum http_header_id id)
{
    return header_table[id].cap > HTTP_HEADER_INLINE_MAX + 1;
}

/* NULL for a heap-held value not allocated (none came, or no memory: it then reads as absent) */
static char *value_buffer(struct http_headers *h, enum http_header_id id)
{
    return on_heap(id) ? h->heap[id] : (char *)h + header_table[id].offset;
}

void http_headers_value_begin(struct http_headers *h, enum http_header_id id)
{
    if (on_heap(id) && !h->heap[id])
        h->heap[id] = malloc(header_table[id].cap);
    char *dst = value_buffer(h, id);
    if (dst)
        dst[0] = '\0';
    if (h->seen[id] < 255)
        h->seen[id]++;
}

void http_headers_value_append(struct http_headers *h, enum http_header_id id, const char *at, size_t len)
{
    char *dst = value_buffer(h, id);
    if (!dst)
        return;
    size_t cap = header_table[id].cap, cur = strlen(dst);
    if (cur + len >= cap)
        len = cap - 1 - cur; /* longer values are cut: none we use is that long */
    memcpy(dst + cur, at, len);
    dst[cur + len] = '\0';
}

const char *http_headers_value(const struct http_headers *h, enum http_header_id id)
{
    if (on_heap(id))
        return h->heap[id] ? h->heap[id] : "";
    return (const char *)h + header_table[id].offset;
}

void http_headers_release(struct http_headers *h)
{
    for (int id = 0; id < HTTP_H_COUNT; id++) {
        free(h->heap[id]);
        h->heap[id] = NULL;
    }
}

unsigned http_headers_seen(const struct http_headers *h, enum http_header_id id)
{
    return h->seen[id];
}
