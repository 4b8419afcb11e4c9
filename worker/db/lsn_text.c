/* lsn_text: a WAL position as PostgreSQL prints it ("16/B374D848"), both ways. */
#include <stdio.h>

#include "worker/db/pool.h"

int pool_lsn_parse(const char *s, uint64_t *out)
{
    unsigned hi, lo;
    char tail;
    if (!s || sscanf(s, "%X/%X%c", &hi, &lo, &tail) != 2)
        return -1;
    *out = ((uint64_t)hi << 32) | lo;
    return 0;
}

void pool_lsn_format(uint64_t lsn, char *buf, size_t cap)
{
    snprintf(buf, cap, "%X/%X", (unsigned)(lsn >> 32), (unsigned)lsn);
}
