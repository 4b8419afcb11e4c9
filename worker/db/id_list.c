/* id_list: bigint[] text, read strictly: anything unexpected is -1, and callers then assume the worst. */
#include "worker/db/id_list.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>

int id_list_parse(const char *text, int64_t *ids, int cap)
{
    if (!text || *text != '{')
        return -1;
    const char *p = text + 1;
    if (p[0] == '}' && p[1] == '\0')
        return 0;
    int n = 0;
    for (;;) {
        if (!isdigit((unsigned char)*p) || n == cap)
            return -1;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno != 0 || v <= 0)
            return -1;
        ids[n++] = v;
        if (*end == '}')
            return end[1] == '\0' ? n : -1;
        if (*end != ',')
            return -1;
        p = end + 1;
    }
}
