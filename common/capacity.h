/* capacity: which workers still have room for a connection under max_connections, in a small MAP_SHARED
 * table the master maps before the first fork. A worker at its cap refuses a new connection (503, close)
 * only when no other worker of its generation has room to take it. */
#ifndef PGAPI_CAPACITY_H
#define PGAPI_CAPACITY_H

#include <stdbool.h>

struct capacity;

/* Called by the master once, before the first fork; NULL (logged) if the mapping fails. */
struct capacity *capacity_create(void);
void capacity_destroy(struct capacity *c);
/* Publishes whether the worker in slot of generation accepts connections with room to spare; false
 * also for one at its cap, draining or gone. */
void capacity_set(struct capacity *c, int slot, unsigned generation, bool room);
/* The master, for a worker it reaped: clears its room unless the slot already belongs to another one. */
void capacity_vacate(struct capacity *c, int slot, unsigned generation);
/* Whether a worker of the generation other than the one in slot has room. */
bool capacity_elsewhere(const struct capacity *c, int slot, unsigned generation);

#endif
