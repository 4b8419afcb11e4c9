/* batch: the array parameter of a coalesced read, and one read's share of its result. */
#include "worker/batch.h"

#include <string.h>

size_t batch_ids_text(char *buf, size_t cap, const char *const *ids, int n)
{
    size_t len = 0;
    if (cap < 3)
        return 0;
    buf[len++] = '{';
    for (int i = 0; i < n; i++) {
        size_t k = strlen(ids[i]);
        if (len + k + 2 >= cap)
            return 0;
        if (i > 0)
            buf[len++] = ',';
        memcpy(buf + len, ids[i], k);
        len += k;
    }
    buf[len++] = '}';
    buf[len] = '\0';
    return len;
}

PGresult *batch_result_pick(const PGresult *res, const char *id)
{
    PGresult *out = PQcopyResult(res, PG_COPYRES_ATTRS);
    if (!out)
        return NULL;
    int ncols = PQnfields(res), row = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        if (strcmp(PQgetvalue(res, i, 0), id) != 0)
            continue;
        for (int col = 0; col < ncols; col++) {
            int len = PQgetisnull(res, i, col) ? -1 : PQgetlength(res, i, col);
            if (!PQsetvalue(out, row, col, PQgetvalue(res, i, col), len)) {
                PQclear(out);
                return NULL;
            }
        }
        row++;
    }
    return out;
}
