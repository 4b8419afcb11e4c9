/* effects: what the resource declarations imply for consistency, derived and never written by hand:
 * the cache keys of a resource's reads, the fences a read waits for, and what a committed write changes
 * (the fences it raises, the cache keys and lists it invalidates). The design: docs/consistency.md. */
#ifndef PGAPI_EFFECTS_H
#define PGAPI_EFFECTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/consistency.h"
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

#define EFFECTS_FENCE_NAME_MAX 40
struct effects_fences;

/* What a write changes in the cache; `cache` points into the rest: keep the struct whole. */
struct effects_change {
    struct cache_change cache;
    char id_prefix[CACHE_KEY_MAX];
    char fence_names[CACHE_CHANGE_FENCES_MAX][EFFECTS_FENCE_NAME_MAX];
    const char *fence_ptrs[CACHE_CHANGE_FENCES_MAX];
};

/* A read's fences as names for a cache lookup; `cache` points into the rest: keep the struct whole. */
struct effects_read_names {
    struct cache_fences cache;
    char names[CACHE_READ_FENCES_MAX][EFFECTS_FENCE_NAME_MAX];
    const char *ptrs[CACHE_READ_FENCES_MAX];
};
void effects_fences_name_all(const struct effects_fences *f, struct effects_read_names *out);

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

/* The fences a read waits for or a write raises, by name (common/consistency.h): a deletion's cascade
 * names each child row it took, so the list holds CACHE_CHANGE_IDS_MAX of them and a few more. */
#define EFFECTS_FENCES_MAX CACHE_CHANGE_FENCES_MAX
struct effects_fences {
    struct consistency_ref ref[EFFECTS_FENCES_MAX];
    int n;
    bool overflow; /* more than it holds: a raise then raises every table's sets as a whole */
};

void effects_read_fences_row(const struct resource *r, int64_t id, bool embed, struct effects_fences *out);
void effects_read_fences_list(const struct resource *r, bool by_parent, struct effects_fences *out);
void effects_write_fences(const struct effects_write *w, struct effects_fences *out);
/* The highest of the fences in the shared memory. */
uint64_t effects_fences_get(const struct consistency *c, const struct effects_fences *f);
void effects_fences_raise(struct consistency *c, const struct effects_fences *f, uint64_t lsn);
/* Their tables have a commit whose LSN is unknown (consistency_unknown_mark). */
void effects_fences_mark_unknown(struct consistency *c, const struct effects_fences *f);
/* A fence's name in Redis, shared by every server ("users:r0:1234"); and back (false: not one of ours). */
bool effects_fence_name(struct consistency_ref r, char *buf, size_t cap);
bool effects_fence_parse(const char *text, size_t len, struct consistency_ref *out);

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
 * holding it; a deletion also its children, by id when named, else the whole cache (a new epoch); and
 * the fences it raises, by name (the deployment's copy in Redis). */
void effects_change(const struct effects_write *w, struct effects_change *out);

#endif
