/* fence: lock-free atomic maxima in shared memory; a worker that dies mid-update leaves either the
 * old or the new value, both valid fences. */
#include "common/fence.h"

#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>

#include "common/log.h"

#define FENCE_BUCKETS 4096

struct fences {
    _Atomic uint64_t lsn[FENCE_COUNT];
    _Atomic uint64_t rowset[FENCE_ROWSETS];
    _Atomic uint64_t row[FENCE_ROWSETS][FENCE_BUCKETS];
    _Atomic bool cache_dirty;
};

struct fences *fences_create(void)
{
    void *p = mmap(NULL, sizeof(struct fences), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        log_error("cannot map the shared fence table");
        return NULL;
    }
    struct fences *f = p;
    for (int i = 0; i < FENCE_COUNT; i++)
        atomic_init(&f->lsn[i], 0);
    for (int s = 0; s < FENCE_ROWSETS; s++) {
        atomic_init(&f->rowset[s], 0);
        for (int b = 0; b < FENCE_BUCKETS; b++)
            atomic_init(&f->row[s][b], 0);
    }
    atomic_init(&f->cache_dirty, false);
    return f;
}

void fences_destroy(struct fences *f)
{
    if (f)
        munmap(f, sizeof(*f));
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

uint64_t fences_get_row(const struct fences *f, enum fence_rowset s, int64_t id)
{
    uint64_t row = atomic_load(&f->row[s][bucket_of(id)]), all = atomic_load(&f->rowset[s]);
    return row > all ? row : all;
}

uint64_t fences_get(const struct fences *f, enum fence_table t)
{
    return atomic_load(&f->lsn[t]);
}

void fences_cache_dirty_set(struct fences *f)
{
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
