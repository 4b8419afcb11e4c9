/* rows: concatenates JSON texts the database produced; nothing is re-parsed or re-escaped here. */
#include "worker/api/rows.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

/* The page's last row says whether another row follows it (RESOURCE_SQL_PAGE's third column). */
static bool next_exists(const PGresult *res, int n)
{
    return n > 0 && PQnfields(res) >= 3 && !PQgetisnull(res, n - 1, 2) && PQgetvalue(res, n - 1, 2)[0] == 't';
}

int rows_page_build(struct evbuffer *b, const PGresult *res, int64_t limit, const char *base)
{
    int n = PQntuples(res);
    int rc = evbuffer_add(b, "{\"data\":[", 9);
    for (int i = 0; i < n && rc == 0; i++) {
        if (i)
            rc |= evbuffer_add(b, ",", 1);
        rc |= evbuffer_add(b, PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1));
    }
    if (next_exists(res, n))
        rc |= evbuffer_add_printf(b, "],\"next\":\"%s?limit=%" PRId64 "&after_id=%s\"}", base, limit,
                                  PQgetvalue(res, n - 1, 0)) < 0;
    else
        rc |= evbuffer_add(b, "],\"next\":null}", 14);
    return rc ? -1 : 0;
}
