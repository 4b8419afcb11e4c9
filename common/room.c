/* room: one atomic word per (generation parity, slot): the generation and a room bit stored together, so
 * a reader never pairs one worker's generation with another's bit. Two halves keep an old generation that
 * is draining from overwriting the entries of the new one in the same slots. */
#include "common/room.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "common/shm.h"

#define ROOM_SLOTS 256 /* config's maximum of workers */

struct rooms {
    _Atomic uint64_t entry[2][ROOM_SLOTS]; /* generation << 1 | room */
};

struct rooms *rooms_create(void)
{
    return shm_map(sizeof(struct rooms), "table of workers' room"); /* zero-filled: nobody has room */
}

void rooms_destroy(struct rooms *r)
{
    shm_unmap(r, sizeof(*r));
}

void rooms_set(struct rooms *r, int slot, unsigned generation, bool room)
{
    if (r && slot >= 0 && slot < ROOM_SLOTS)
        atomic_store(&r->entry[generation & 1][slot], (uint64_t)generation << 1 | room);
}

void rooms_vacate(struct rooms *r, int slot, unsigned generation)
{
    if (!r || slot < 0 || slot >= ROOM_SLOTS)
        return;
    uint64_t had = (uint64_t)generation << 1 | 1;
    atomic_compare_exchange_strong(&r->entry[generation & 1][slot], &had, (uint64_t)generation << 1);
}

bool rooms_elsewhere(const struct rooms *r, int slot, unsigned generation)
{
    if (!r)
        return false;
    uint64_t want = (uint64_t)generation << 1 | 1;
    for (int i = 0; i < ROOM_SLOTS; i++)
        if (i != slot && atomic_load(&r->entry[generation & 1][i]) == want)
            return true;
    return false;
}
