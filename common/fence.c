/* fence: lock-free atomic maxima in shared memory; a worker that dies mid-update leaves either the
 * old or the new value, both valid fences. */
#include "common/fence.h"

#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>

#include "common/log.h"

struct fences {
    _Atomic uint64_t lsn[FENCE_COUNT];
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
    atomic_init(&f->cache_dirty, false);
    return f;
}

void fences_destroy(struct fences *f)
{
    if (f)
        munmap(f, sizeof(*f));
}

void fences_raise(struct fences *f, enum fence_table t, uint64_t lsn)
{
    uint64_t cur = atomic_load(&f->lsn[t]);
    while (cur < lsn && !atomic_compare_exchange_weak(&f->lsn[t], &cur, lsn))
        ;
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
