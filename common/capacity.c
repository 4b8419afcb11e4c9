/* capacity: one atomic word per (generation parity, slot): the generation, the connection count and a
 * room bit stored together, so a reader never pairs one worker's generation with another's count or bit.
 * Two halves keep an old generation that is draining from overwriting the entries of the new one in the
 * same slots. */
#include "common/capacity.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/shm.h"

#define CAPACITY_SLOTS 256 /* config's maximum of workers */

struct capacity {
    _Atomic uint64_t entry[2][CAPACITY_SLOTS]; /* generation << 32 | connections << 1 | room */
};

static uint64_t entry_make(unsigned generation, unsigned conns, bool room)
{
    if (conns >= CAPACITY_NONE)
        conns = CAPACITY_NONE - 1;
    return (uint64_t)generation << 32 | (uint64_t)conns << 1 | room;
}

/* Whether entry e is a worker of generation with room. */
static bool entry_has_room(uint64_t e, unsigned generation)
{
    return (e >> 32) == generation && (e & 1);
}

struct capacity *capacity_create(void)
{
    return shm_map(sizeof(struct capacity), "table of workers' room"); /* zero-filled: nobody has room */
}

void capacity_destroy(struct capacity *c)
{
    shm_unmap(c, sizeof(*c));
}

void capacity_set(struct capacity *c, int slot, unsigned generation, bool room, unsigned conns)
{
    if (c && slot >= 0 && slot < CAPACITY_SLOTS)
        atomic_store(&c->entry[generation & 1][slot], entry_make(generation, conns, room));
}

void capacity_vacate(struct capacity *c, int slot, unsigned generation)
{
    if (!c || slot < 0 || slot >= CAPACITY_SLOTS)
        return;
    _Atomic uint64_t *e = &c->entry[generation & 1][slot];
    uint64_t had = atomic_load(e);
    while (entry_has_room(had, generation) && !atomic_compare_exchange_weak(e, &had, had & ~(uint64_t)1))
        ;
}

bool capacity_elsewhere(const struct capacity *c, int slot, unsigned generation)
{
    return capacity_fewest_elsewhere(c, slot, generation) != CAPACITY_NONE;
}

unsigned capacity_fewest_elsewhere(const struct capacity *c, int slot, unsigned generation)
{
    unsigned fewest = CAPACITY_NONE;
    if (!c)
        return fewest;
    for (int i = 0; i < CAPACITY_SLOTS; i++) {
        uint64_t e = atomic_load(&c->entry[generation & 1][i]);
        unsigned conns = (unsigned)(e >> 1) & CAPACITY_NONE;
        if (i != slot && entry_has_room(e, generation) && conns < fewest)
            fewest = conns;
    }
    return fewest;
}
