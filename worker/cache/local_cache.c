/* local_cache: direct-mapped slots (one entry per slot, a newer put replaces it), each value in one
 * allocation with its key. Bounded in slots, in bytes and in age. */
#include "worker/cache/local_cache.h"

#include "common/clock.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

struct slot {
    uint64_t hash;
    struct local_stamp stamp;
    time_t expires;
    char *blob; /* key NUL value */
    size_t klen, vlen;
};

struct local_cache {
    struct slot *slots;
    size_t mask;
    size_t bytes, max_bytes;
    int ttl_s;
    uint64_t hits, entries;
};

static uint64_t key_hash(const char *key)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)key; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

struct local_cache *local_cache_new(int entries, size_t max_bytes, int ttl_s)
{
    if (entries <= 0)
        return NULL;
    size_t n = 1;
    while (n < (size_t)entries)
        n <<= 1;
    struct local_cache *lc = calloc(1, sizeof(*lc));
    if (!lc)
        return NULL;
    lc->slots = calloc(n, sizeof(*lc->slots));
    if (!lc->slots) {
        free(lc);
        return NULL;
    }
    lc->mask = n - 1;
    lc->max_bytes = max_bytes;
    lc->ttl_s = ttl_s;
    return lc;
}

static void slot_clear(struct local_cache *lc, struct slot *s)
{
    if (s->blob) {
        lc->bytes -= s->klen + s->vlen + 1;
        lc->entries--;
        free(s->blob);
    }
    *s = (struct slot){ 0 };
}

void local_cache_free(struct local_cache *lc)
{
    if (!lc)
        return;
    for (size_t i = 0; i <= lc->mask; i++)
        free(lc->slots[i].blob);
    free(lc->slots);
    free(lc);
}

/* The key's slot if it holds a valid entry for this stamp; a stale one is cleared. */
static struct slot *slot_valid(struct local_cache *lc, const char *key, const struct local_stamp *stamp)
{
    if (!lc)
        return NULL;
    uint64_t h = key_hash(key);
    struct slot *s = &lc->slots[h & lc->mask];
    if (!s->blob || s->hash != h || strcmp(s->blob, key) != 0)
        return NULL;
    if (s->stamp.fence != stamp->fence || s->stamp.troubles != stamp->troubles ||
        s->expires <= clock_now_s()) {
        slot_clear(lc, s); /* its row was written since, or it is too old: never valid again */
        return NULL;
    }
    return s;
}

bool local_cache_has(struct local_cache *lc, const char *key, const struct local_stamp *stamp)
{
    return slot_valid(lc, key, stamp) != NULL;
}

bool local_cache_get(struct local_cache *lc, const char *key, const struct local_stamp *stamp,
                     const char **value, size_t *len)
{
    struct slot *s = slot_valid(lc, key, stamp);
    if (!s)
        return false;
    lc->hits++;
    *value = s->blob + s->klen + 1;
    *len = s->vlen;
    return true;
}

void local_cache_put(struct local_cache *lc, const char *key, const struct local_stamp *stamp,
                     const char *value, size_t len)
{
    if (!lc)
        return;
    uint64_t h = key_hash(key);
    struct slot *s = &lc->slots[h & lc->mask];
    slot_clear(lc, s);
    size_t klen = strlen(key), need = klen + len + 1;
    if (len > lc->max_bytes / 64 || lc->bytes + need > lc->max_bytes)
        return;
    char *blob = malloc(need);
    if (!blob)
        return;
    memcpy(blob, key, klen + 1);
    memcpy(blob + klen + 1, value, len);
    *s = (struct slot){ .hash = h,
                        .stamp = *stamp,
                        .expires = clock_now_s() + lc->ttl_s,
                        .blob = blob,
                        .klen = klen,
                        .vlen = len };
    lc->bytes += need;
    lc->entries++;
}

void local_cache_stats(const struct local_cache *lc, uint64_t *hits, uint64_t *entries, size_t *bytes)
{
    *hits = lc ? lc->hits : 0;
    *entries = lc ? lc->entries : 0;
    *bytes = lc ? lc->bytes : 0;
}
