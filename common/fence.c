/* fence: lock-free atomic maxima in shared memory; a worker that dies mid-update leaves either the
 * old or the new value, both valid fences. */
#include "common/fence.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stddef.h>

#include "common/log.h"
#include "common/shm.h"

#define FENCE_BUCKETS 4096

/* Unknown commits per table: `marks` counts them, `cleared` is the highest count a primary position
 * read afterwards has covered, `floor` the highest such position. A reader loads marks, then cleared,
 * then floor; a resolver raises floor, then cleared (sequentially consistent atomics): a reader that
 * sees its table cleared sees a floor past every commit counted. */
struct fences {
    _Atomic uint64_t lsn[FENCE_COUNT];
    _Atomic uint64_t rowset[FENCE_ROWSETS];
    _Atomic uint64_t row[FENCE_ROWSETS][FENCE_BUCKETS];
    _Atomic uint64_t unknown_marks[FENCE_COUNT], unknown_cleared[FENCE_COUNT], unknown_floor[FENCE_COUNT];
    _Atomic bool cache_dirty;
    _Atomic uint64_t cache_troubles; /* how many times cache_dirty was set: local copies older are dropped */
    _Atomic uint64_t primary_identity; /* 0 until a worker has seen the primary */
};

struct fences *fences_create(void)
{
    return shm_map(sizeof(struct fences), "fence table"); /* zero-filled: every fence starts at 0 */
}

void fences_destroy(struct fences *f)
{
    shm_unmap(f, sizeof(*f));
}

static void atomic_raise(_Atomic uint64_t *v, uint64_t lsn)
{
    uint64_t cur = atomic_load(v);
    while (cur < lsn && !atomic_compare_exchange_weak(v, &cur, lsn))
        ;
}

void fences_raise(struct fences *f, enum fence_table t, uint64_t lsn)
{
    atomic_raise(&f->lsn[t], lsn);
}

static unsigned bucket_of(int64_t id)
{
    uint64_t h = (uint64_t)id * 0x9E3779B97F4A7C15ULL; /* Fibonacci hashing: sequential ids spread */
    return (unsigned)(h >> 52) % FENCE_BUCKETS;
}

void fences_raise_row(struct fences *f, enum fence_rowset s, int64_t id, uint64_t lsn)
{
    atomic_raise(&f->row[s][bucket_of(id)], lsn);
}

void fences_raise_rowset(struct fences *f, enum fence_rowset s, uint64_t lsn)
{
    atomic_raise(&f->rowset[s], lsn);
}

/* FENCE_LSN_NONE while the table has an unresolved unknown commit, else its floor. */
static uint64_t unknown_floor(const struct fences *f, enum fence_table t)
{
    uint64_t marks = atomic_load(&f->unknown_marks[t]);
    if (atomic_load(&f->unknown_cleared[t]) < marks)
        return FENCE_LSN_NONE;
    return atomic_load(&f->unknown_floor[t]);
}

static uint64_t max_lsn(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* The table whose writes a row set's fences follow (a user's posts are posts). */
static enum fence_table rowset_table(enum fence_rowset s)
{
    return s == FENCE_ROW_USER ? FENCE_USERS : FENCE_POSTS;
}

uint64_t fences_get_row(const struct fences *f, enum fence_rowset s, int64_t id)
{
    uint64_t row = atomic_load(&f->row[s][bucket_of(id)]), all = atomic_load(&f->rowset[s]);
    return max_lsn(max_lsn(row, all), unknown_floor(f, rowset_table(s)));
}

uint64_t fences_get(const struct fences *f, enum fence_table t)
{
    return max_lsn(atomic_load(&f->lsn[t]), unknown_floor(f, t));
}

void fences_unknown_mark(struct fences *f, enum fence_table t)
{
    atomic_fetch_add(&f->unknown_marks[t], 1);
}

void fences_unknown_snapshot(const struct fences *f, uint64_t marks[FENCE_COUNT])
{
    for (int t = 0; t < FENCE_COUNT; t++)
        marks[t] = atomic_load(&f->unknown_marks[t]);
}

void fences_unknown_resolve(struct fences *f, const uint64_t marks[FENCE_COUNT], uint64_t lsn)
{
    for (int t = 0; t < FENCE_COUNT; t++) {
        if (atomic_load(&f->unknown_cleared[t]) >= marks[t])
            continue; /* nothing new: the floor stays where it is */
        atomic_raise(&f->unknown_floor[t], lsn);
        atomic_raise(&f->unknown_cleared[t], marks[t]);
        log_info("fences: the %s table's unknown commit LSNs are at or below %" PRIX64 ": its reads may use "
                 "replicas again", t == FENCE_USERS ? "users" : "posts", lsn);
    }
}

void fences_cache_dirty_set(struct fences *f)
{
    atomic_fetch_add(&f->cache_troubles, 1);
    atomic_store(&f->cache_dirty, true);
}

bool fences_cache_dirty(const struct fences *f)
{
    return atomic_load(&f->cache_dirty);
}

void fences_cache_dirty_clear(struct fences *f)
{
    atomic_store(&f->cache_dirty, false);
}

uint64_t fences_cache_troubles(const struct fences *f)
{
    return atomic_load(&f->cache_troubles);
}

bool fences_primary_seen(struct fences *f, uint64_t identity)
{
    uint64_t known = atomic_load(&f->primary_identity);
    while (known != identity) {
        if (atomic_compare_exchange_weak(&f->primary_identity, &known, identity))
            return known != 0; /* this caller made the change: a first sighting is no change */
    }
    return false;
}
