/* capacity: one atomic word per (generation parity, slot): the generation and a room bit stored together, so
 * a reader never pairs one worker's generation with another's bit. Two halves keep an old generation that
 * is draining from overwriting the entries of the new one in the same slots. */
#include "common/capacity.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/shm.h"

#define CAPACITY_SLOTS 256 /* config's maximum of workers */

struct capacity {
    _Atomic uint64_t entry[2][CAPACITY_SLOTS]; /* generation << 1 | room */
};

struct capacity *capacity_create(void)
{
    return shm_map(sizeof(struct capacity), "table of workers' room"); /* zero-filled: nobody has room */
}

void capacity_destroy(struct capacity *c)
{
    shm_unmap(c, sizeof(*c));
}

void capacity_set(struct capacity *c, int slot, unsigned generation, bool room)
{
    if (c && slot >= 0 && slot < CAPACITY_SLOTS)
        atomic_store(&c->entry[generation & 1][slot], (uint64_t)generation << 1 | room);
}

void capacity_vacate(struct capacity *c, int slot, unsigned generation)
{
    if (!c || slot < 0 || slot >= CAPACITY_SLOTS)
        return;
    uint64_t had = (uint64_t)generation << 1 | 1;
    atomic_compare_exchange_strong(&c->entry[generation & 1][slot], &had, (uint64_t)generation << 1);
}

bool capacity_elsewhere(const struct capacity *c, int slot, unsigned generation)
{
    if (!c)
        return false;
    uint64_t want = (uint64_t)generation << 1 | 1;
    for (int i = 0; i < CAPACITY_SLOTS; i++)
        if (i != slot && atomic_load(&c->entry[generation & 1][i]) == want)
            return true;
    return false;
}
