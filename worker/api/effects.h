/* effects: what the resource declarations imply for consistency, derived and never written by hand:
 * the cache keys of a resource's reads, the fences a read waits for, and what a committed write changes
 * (the fences it raises, the cache keys and lists it invalidates). The design: docs/consistency.md. */
#ifndef PGAPI_EFFECTS_H
#define PGAPI_EFFECTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/api/resource.h"
#include "worker/cache/cache.h"

struct consistency;

/* A committed write, as its statement returned it. */
struct effects_write {
    const struct resource *res;
    int64_t id;
    bool created, deleted;
    int64_t parent_id;      /* with a parent: its id as the statement returned it; 0 when unreadable */
    const int64_t *cascade; /* a deletion: the ids of the res->cascade_names rows it removed */
    int ncascade;           /* how many; -1 when they are not known (every such row counts as changed) */
};

/* What a write changes in the cache; `cache` may point into id_prefix: keep the struct whole. */
struct effects_change {
    struct cache_change cache;
    char id_prefix[CACHE_KEY_MAX];
};

/* Cache keys; each returns false (buf unusable: do not cache) when the key would not fit in cap.
 * A row: "<name>:<id>" ("user:42"). */
bool effects_key_row(const struct resource *r, int64_t id, char *buf, size_t cap);
/* A row with its embedded children: "<name>-with-<child's collection>:<id>" ("user-with-posts:42"). */
bool effects_key_embed(const struct resource *r, int64_t id, char *buf, size_t cap);
/* A list's name (its pages' generation): the collection ("posts"), or with parent_id != 0 one parent's
 * rows ("user-posts:42"). */
bool effects_list_name(const struct resource *r, int64_t parent_id, char *buf, size_t cap);
/* A page of that list: "<list name>:<limit>:<after>". */
bool effects_key_page(const struct resource *r, int64_t parent_id, int64_t limit, int64_t after, char *buf,
                      size_t cap);

/* The fence a read of one row waits for (with embed, its embedded children's too). */
uint64_t effects_row_fence(const struct consistency *c, const struct resource *r, int64_t id, bool embed);
/* The fence a page waits for: its table's, and with by_parent its parent's table's too. */
uint64_t effects_list_fence(const struct consistency *c, const struct resource *r, bool by_parent);

/* Raises every fence the write changed, before it is answered. */
void effects_raise(struct consistency *c, const struct effects_write *w, uint64_t lsn);
/* The write's commit LSN is unknown: the tables it changed read from the primary until the pool has read
 * the primary's position again (consistency_unknown_mark). */
void effects_mark_unknown(struct consistency *c, const struct effects_write *w);
/* What the write changes in the cache: its row's key (unless created) and what embeds it, the lists
 * holding it; a deletion also its children, by id when named, else the whole cache (a new epoch). */
void effects_change(const struct effects_write *w, struct effects_change *out);

#endif
