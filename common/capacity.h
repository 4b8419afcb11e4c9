/* capacity: which workers still have room for a connection under max_connections, and how many each
 * holds, in a small MAP_SHARED table the master maps before the first fork. A worker at its cap refuses
 * a new connection (503, close) only when no other worker of its generation has room to take it, and a
 * worker well ahead of another leaves new connections to it (worker.c: accepts balanced). */
#ifndef PGAPI_CAPACITY_H
#define PGAPI_CAPACITY_H

#include <stdbool.h>

struct capacity;

#define CAPACITY_NONE 0x7fffffffu /* capacity_fewest_elsewhere: no other worker has room */

/* Called by the master once, before the first fork; NULL (logged) if the mapping fails. */
struct capacity *capacity_create(void);
void capacity_destroy(struct capacity *c);
/* Publishes whether the worker in slot of generation accepts connections with room to spare (false also
 * for one at its cap, draining or gone) and how many connections it holds (at most CAPACITY_NONE - 1). */
void capacity_set(struct capacity *c, int slot, unsigned generation, bool room, unsigned conns);
/* The master, for a worker it reaped: clears its room unless the slot already belongs to another one. */
void capacity_vacate(struct capacity *c, int slot, unsigned generation);
/* Whether a worker of the generation other than the one in slot has room. */
bool capacity_elsewhere(const struct capacity *c, int slot, unsigned generation);
/* The fewest connections a worker of the generation other than the one in slot holds among those with
 * room; CAPACITY_NONE if none has. */
unsigned capacity_fewest_elsewhere(const struct capacity *c, int slot, unsigned generation);

#endif
