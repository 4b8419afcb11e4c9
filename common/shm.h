/* shm: the anonymous MAP_SHARED mappings the master makes before the first fork (fences, capacity,
 * metrics), so that every worker of every generation shares them. */
#ifndef PGAPI_SHM_H
#define PGAPI_SHM_H

#include <stddef.h>

/* A zero-filled shared mapping of size bytes (every atomic in it starts at 0); NULL, logged with
 * `what`, if the mapping fails. */
void *shm_map(size_t size, const char *what);
/* Undoes shm_map; p may be NULL. */
void shm_unmap(void *p, size_t size);

#endif
