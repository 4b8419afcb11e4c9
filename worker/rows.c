/* rows: concatenates JSON texts the database produced; nothing is re-parsed or re-escaped here. */
#include "worker/rows.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <string.h>

#include "worker/reply.h"

void rows_reply_one(struct http_request *req, int status, const PGresult *res, int col)
{
    http_respond(req, status, "application/json", PQgetvalue(res, 0, col), (size_t)PQgetlength(res, 0, col));
}

int rows_page_build(struct evbuffer *b, const PGresult *res, int64_t limit, const char *base)
{
    int n = PQntuples(res);
    int shown = n > limit ? (int)limit : n;
    int rc = evbuffer_add(b, "{\"data\":[", 9);
    for (int i = 0; i < shown && rc == 0; i++) {
        if (i)
            rc |= evbuffer_add(b, ",", 1);
        rc |= evbuffer_add(b, PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1));
    }
    if (n > limit)
        rc |= evbuffer_add_printf(b, "],\"next\":\"%s?limit=%" PRId64 "&after_id=%s\"}", base, limit,
                                  PQgetvalue(res, shown - 1, 0)) < 0;
    else
        rc |= evbuffer_add(b, "],\"next\":null}", 14);
    return rc ? -1 : 0;
}

void rows_reply_page(struct http_request *req, const PGresult *res, int64_t limit, const char *base)
{
    struct evbuffer *b = evbuffer_new();
    if (!b || rows_page_build(b, res, limit, base) < 0) {
        if (b)
            evbuffer_free(b);
        reply_error(req, 503, "out_of_memory", "server out of memory");
        return;
    }
    size_t len = evbuffer_get_length(b);
    http_respond(req, 200, "application/json", (const char *)evbuffer_pullup(b, -1), len);
    evbuffer_free(b);
}
