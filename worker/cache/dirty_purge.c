/* The cache-dirty flag's purge: see dirty_purge.h. */
#include "worker/cache/dirty_purge.h"

bool dirty_purge_begin(struct dirty_purge *d, uint64_t troubles)
{
    if (d->state != DIRTY_PURGE_IDLE)
        return false;
    d->state = DIRTY_PURGE_RECORDING;
    d->gen = 0;
    d->troubles = troubles;
    return true;
}

enum dirty_purge_outcome dirty_purge_recorded(struct dirty_purge *d, bool ok, uint64_t gen, uint64_t applied)
{
    if (d->state != DIRTY_PURGE_RECORDING)
        return DIRTY_PURGE_WAIT;
    if (!ok || gen == 0) {
        d->state = DIRTY_PURGE_IDLE;
        return DIRTY_PURGE_WAIT;
    }
    d->state = DIRTY_PURGE_APPLYING;
    d->gen = gen;
    return dirty_purge_applied(d, applied);
}

enum dirty_purge_outcome dirty_purge_applied(struct dirty_purge *d, uint64_t applied)
{
    if (d->state != DIRTY_PURGE_APPLYING || applied < d->gen)
        return DIRTY_PURGE_WAIT;
    d->state = DIRTY_PURGE_IDLE;
    return DIRTY_PURGE_ENDED;
}

bool dirty_purge_clears(const struct dirty_purge *d, uint64_t troubles_now)
{
    return troubles_now == d->troubles;
}
