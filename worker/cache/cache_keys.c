/* cache_keys: formats and parses what cache.c keeps in Redis outside the scripts: the epoch's and a
 * value's key, LSNs in hex, a stored value's LSN prefix. */
#include "worker/cache/cache_keys.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool fits(int n, size_t size)
{
    return n >= 0 && (size_t)n < size;
}

bool cache_key_epoch(char *buf, size_t size, const char *prefix)
{
    return fits(snprintf(buf, size, "%s:epoch", prefix), size);
}

bool cache_key_value(char *buf, size_t size, const char *prefix, const char *epoch, const char *key)
{
    return fits(snprintf(buf, size, "%s:e%s:v:%s", prefix, epoch, key), size);
}

void cache_lsn_hex(uint64_t lsn, char buf[CACHE_LSN_HEX])
{
    snprintf(buf, CACHE_LSN_HEX, "%016" PRIX64, lsn);
}

uint64_t cache_fence_parse(const char *s)
{
    return s ? strtoull(s, NULL, 16) : 0;
}

bool cache_value_split(const char *s, size_t len, uint64_t *data_lsn, const char **body, size_t *body_len)
{
    char hex[CACHE_LSN_HEX];
    if (len < CACHE_LSN_HEX - 1)
        return false;
    memcpy(hex, s, CACHE_LSN_HEX - 1);
    hex[CACHE_LSN_HEX - 1] = '\0';
    char *end;
    *data_lsn = strtoull(hex, &end, 16);
    if (*end != '\0')
        return false;
    *body = s + CACHE_LSN_HEX - 1;
    *body_len = len - (CACHE_LSN_HEX - 1);
    return true;
}
