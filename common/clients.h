/* clients: open connections per client address, counted across every worker of the server, so that
 * one address holds at most max_connections_per_client of them whichever workers accept them. The table
 * is MAP_SHARED, mapped by the master before the first fork, like capacity. */
#ifndef PGAPI_CLIENTS_H
#define PGAPI_CLIENTS_H

#include <stdbool.h>
#include <stdint.h>

struct clients;
struct sockaddr_storage;

/* Called by the master once, before the first fork; NULL (logged) if the mapping fails. */
struct clients *clients_create(void);
void clients_destroy(struct clients *t);
/* The key an address is counted under: the IPv4 address (also when IPv4-mapped), an IPv6 address's /64
 * (one host is given a whole /64), never 0. 0 for an unknown or Unix-socket peer: not counted. */
uint64_t clients_key(const struct clients *t, const struct sockaddr_storage *peer);
/* Counts a connection of `key` for the worker in slot of generation, unless the key already holds `max`
 * connections across all workers: then false, and nothing is counted. max 0 or key 0: true, not counted. */
bool clients_admit(struct clients *t, int slot, unsigned generation, uint64_t key, int max);
/* Forgets one connection counted by clients_admit (the same slot, generation and key). */
void clients_release(struct clients *t, int slot, unsigned generation, uint64_t key);
/* The master, for a worker it reaped: forgets what it counted unless its row is another process's now. */
void clients_vacate(struct clients *t, int slot, unsigned generation);

#endif
