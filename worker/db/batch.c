/* batch: the array parameters of a shared statement, and one job's share of its result. */
#include "worker/db/batch.h"

#include <stdlib.h>
#include <string.h>

char *batch_array_text(const char *const *values, int n)
{
    size_t cap = 3;
    for (int i = 0; i < n; i++)
        cap += values[i] ? 2 * strlen(values[i]) + 3 : 5; /* every byte escaped at worst, quotes, comma */
    char *out = malloc(cap), *p = out;
    if (!out)
        return NULL;
    *p++ = '{';
    for (int i = 0; i < n; i++) {
        if (i > 0)
            *p++ = ',';
        if (!values[i]) {
            memcpy(p, "NULL", 4);
            p += 4;
            continue;
        }
        *p++ = '"';
        for (const char *s = values[i]; *s; s++) {
            if (*s == '"' || *s == '\\')
                *p++ = '\\';
            *p++ = *s;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

/* An empty result with the columns of res from first_col to end_col (excluded). */
static PGresult *result_shape(const PGresult *res, int first_col, int end_col)
{
    PGresult *out = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    int n = end_col - first_col;
    if (!out || n <= 0)
        return out;
    PGresAttDesc *atts = calloc((size_t)n, sizeof(*atts));
    if (!atts) {
        PQclear(out);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        int col = first_col + i;
        atts[i] = (PGresAttDesc){ .name = PQfname(res, col),
                                  .tableid = PQftable(res, col),
                                  .columnid = PQftablecol(res, col),
                                  .format = PQfformat(res, col),
                                  .typid = PQftype(res, col),
                                  .typlen = PQfsize(res, col),
                                  .atttypmod = PQfmod(res, col) };
    }
    int ok = PQsetResultAttrs(out, n, atts);
    free(atts);
    if (!ok) {
        PQclear(out);
        return NULL;
    }
    return out;
}

/* The rows of res whose first column is key (NULL: every row), columns first_col to end_col. */
static PGresult *result_copy(const PGresult *res, const char *key, int first_col, int end_col)
{
    PGresult *out = result_shape(res, first_col, end_col);
    if (!out)
        return NULL;
    int row = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        if (key && strcmp(PQgetvalue(res, i, 0), key) != 0)
            continue;
        for (int col = first_col; col < end_col; col++) {
            int len = PQgetisnull(res, i, col) ? -1 : PQgetlength(res, i, col);
            if (!PQsetvalue(out, row, col - first_col, PQgetvalue(res, i, col), len)) {
                PQclear(out);
                return NULL;
            }
        }
        row++;
    }
    return out;
}

PGresult *batch_result_pick(const PGresult *res, const char *key, int first_col)
{
    return result_copy(res, key, first_col, PQnfields(res));
}

PGresult *batch_result_drop_last(const PGresult *res)
{
    return result_copy(res, NULL, 0, PQnfields(res) > 0 ? PQnfields(res) - 1 : 0);
}
