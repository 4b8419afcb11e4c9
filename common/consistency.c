/* consistency: lock-free atomic maxima in shared memory; a worker that dies mid-update leaves either the
 * old or the new value, both valid fences. */
#include "common/consistency.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stddef.h>

#include "common/log.h"
#include "common/shm.h"

/* One table's fences. Unknown commits: `unknown_marks` counts them, `unknown_cleared` is the highest
 * count a primary position read afterwards has covered, `unknown_floor` the highest such position. A
 * reader loads marks, then cleared, then floor; a resolver raises floor, then cleared (sequentially
 * consistent atomics): a reader that sees its table cleared sees a floor past every commit counted. */
struct consistency_table {
    _Atomic uint64_t lsn;
    _Atomic uint64_t rowset[CONSISTENCY_ROWSETS];
    _Atomic uint64_t row[CONSISTENCY_ROWSETS][CONSISTENCY_BUCKETS];
    _Atomic uint64_t unknown_marks, unknown_cleared, unknown_floor;
};

struct consistency {
    size_t size; /* of the mapping */
    int ntables;
    _Atomic bool cache_dirty;
    _Atomic uint64_t cache_troubles; /* how many times cache_dirty was set: local copies older are dropped */
    _Atomic uint64_t local_drops;    /* consistency_local_drop calls: local copies older are dropped too */
    _Atomic uint64_t worker_deaths;
    _Atomic uint64_t primary_identity; /* 0 until a worker has seen the primary */
    _Atomic uint64_t primary_position; /* of that identity: see consistency_primary_position */
    struct consistency_table table[];
};

struct consistency *consistency_create(int ntables)
{
    if (ntables < 1 || ntables > CONSISTENCY_TABLES_MAX) {
        log_error("consistency state: %d tables (1 to %d)", ntables, CONSISTENCY_TABLES_MAX);
        return NULL;
    }
    size_t size = sizeof(struct consistency) + (size_t)ntables * sizeof(struct consistency_table);
    struct consistency *c = shm_map(size, "consistency state"); /* zero-filled: every fence starts at 0 */
    if (c) {
        c->size = size;
        c->ntables = ntables;
    }
    return c;
}

void consistency_destroy(struct consistency *c)
{
    if (c)
        shm_unmap(c, c->size);
}

static void atomic_raise(_Atomic uint64_t *v, uint64_t lsn)
{
    uint64_t cur = atomic_load(v);
    while (cur < lsn && !atomic_compare_exchange_weak(v, &cur, lsn))
        ;
}

void consistency_raise(struct consistency *c, int t, uint64_t lsn)
{
    atomic_raise(&c->table[t].lsn, lsn);
}

static unsigned bucket_of(int64_t id)
{
    uint64_t h = (uint64_t)id * 0x9E3779B97F4A7C15ULL; /* Fibonacci hashing: sequential ids spread */
    return (unsigned)(h >> 52) % CONSISTENCY_BUCKETS;
}

struct consistency_ref consistency_ref_table(int t)
{
    return (struct consistency_ref){ .table = (uint8_t)t, .kind = CONSISTENCY_REF_TABLE };
}

struct consistency_ref consistency_ref_rowset(int t, enum consistency_rowset s)
{
    return (struct consistency_ref){ .table = (uint8_t)t, .kind = CONSISTENCY_REF_ROWSET, .set = (uint8_t)s };
}

struct consistency_ref consistency_ref_row(int t, enum consistency_rowset s, int64_t id)
{
    return (struct consistency_ref){
        .table = (uint8_t)t, .kind = CONSISTENCY_REF_ROW, .set = (uint8_t)s, .bucket = (uint16_t)bucket_of(id)
    };
}

bool consistency_ref_valid(const struct consistency *c, struct consistency_ref r)
{
    return r.table < c->ntables && r.kind <= CONSISTENCY_REF_ROW && r.set < CONSISTENCY_ROWSETS &&
           r.bucket < CONSISTENCY_BUCKETS;
}

/* The ref's own slot: the one a write raises. */
static _Atomic uint64_t *ref_slot(struct consistency_table *tb, struct consistency_ref r)
{
    if (r.kind == CONSISTENCY_REF_TABLE)
        return &tb->lsn;
    if (r.kind == CONSISTENCY_REF_ROWSET)
        return &tb->rowset[r.set];
    return &tb->row[r.set][r.bucket];
}

void consistency_ref_raise(struct consistency *c, struct consistency_ref r, uint64_t lsn)
{
    atomic_raise(ref_slot(&c->table[r.table], r), lsn);
}

void consistency_raise_row(struct consistency *c, int t, enum consistency_rowset s, int64_t id, uint64_t lsn)
{
    consistency_ref_raise(c, consistency_ref_row(t, s, id), lsn);
}

void consistency_raise_rowset(struct consistency *c, int t, enum consistency_rowset s, uint64_t lsn)
{
    consistency_ref_raise(c, consistency_ref_rowset(t, s), lsn);
}

/* CONSISTENCY_LSN_NONE while the table has an unresolved unknown commit, else its floor. */
static uint64_t unknown_floor(const struct consistency *c, int t)
{
    const struct consistency_table *tb = &c->table[t];
    uint64_t marks = atomic_load(&tb->unknown_marks);
    if (atomic_load(&tb->unknown_cleared) < marks)
        return CONSISTENCY_LSN_NONE;
    return atomic_load(&tb->unknown_floor);
}

static uint64_t max_lsn(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* A row set's fences follow the writes of its own table (a user's posts are posts). */
uint64_t consistency_ref_get(const struct consistency *c, struct consistency_ref r)
{
    struct consistency_table *tb = (struct consistency_table *)&c->table[r.table];
    uint64_t lsn = atomic_load(ref_slot(tb, r));
    if (r.kind == CONSISTENCY_REF_ROW)
        lsn = max_lsn(lsn, atomic_load(&tb->rowset[r.set]));
    return max_lsn(lsn, unknown_floor(c, r.table));
}

uint64_t consistency_get_row(const struct consistency *c, int t, enum consistency_rowset s, int64_t id)
{
    return consistency_ref_get(c, consistency_ref_row(t, s, id));
}

uint64_t consistency_get(const struct consistency *c, int t)
{
    return consistency_ref_get(c, consistency_ref_table(t));
}

void consistency_unknown_mark(struct consistency *c, int t)
{
    atomic_fetch_add(&c->table[t].unknown_marks, 1);
}

void consistency_unknown_snapshot(const struct consistency *c, uint64_t marks[CONSISTENCY_TABLES_MAX])
{
    for (int t = 0; t < CONSISTENCY_TABLES_MAX; t++)
        marks[t] = t < c->ntables ? atomic_load(&c->table[t].unknown_marks) : 0;
}

void consistency_unknown_resolve(struct consistency *c, const uint64_t marks[CONSISTENCY_TABLES_MAX],
                                 uint64_t lsn)
{
    for (int t = 0; t < c->ntables; t++) {
        struct consistency_table *tb = &c->table[t];
        if (atomic_load(&tb->unknown_cleared) >= marks[t])
            continue; /* nothing new: the floor stays where it is */
        atomic_raise(&tb->unknown_floor, lsn);
        atomic_raise(&tb->unknown_cleared, marks[t]);
        log_info("consistency: table %d's unknown commit LSNs are at or below %" PRIX64 ": its reads may use "
                 "replicas again",
                 t, lsn);
    }
}

void consistency_cache_dirty_set(struct consistency *c)
{
    atomic_fetch_add(&c->cache_troubles, 1);
    atomic_store(&c->cache_dirty, true);
}

void consistency_worker_died(struct consistency *c)
{
    atomic_fetch_add(&c->worker_deaths, 1);
    consistency_cache_dirty_set(c);
}

uint64_t consistency_worker_deaths(const struct consistency *c)
{
    return atomic_load(&c->worker_deaths);
}

bool consistency_cache_dirty(const struct consistency *c)
{
    return atomic_load(&c->cache_dirty);
}

void consistency_cache_dirty_clear(struct consistency *c)
{
    atomic_store(&c->cache_dirty, false);
}

void consistency_local_drop(struct consistency *c)
{
    atomic_fetch_add(&c->local_drops, 1);
}

uint64_t consistency_local_generation(const struct consistency *c)
{
    return atomic_load(&c->cache_troubles) + atomic_load(&c->local_drops);
}

uint64_t consistency_cache_troubles(const struct consistency *c)
{
    return atomic_load(&c->cache_troubles);
}

uint64_t consistency_primary_identity(const struct consistency *c)
{
    return atomic_load(&c->primary_identity);
}

/* A position is noted only under the identity it was read on, so a new primary's lower positions (an
 * asynchronous failover loses the end of the WAL) replace the old ones instead of hiding under them. */
void consistency_primary_position_note(struct consistency *c, uint64_t identity, uint64_t lsn)
{
    if (atomic_load(&c->primary_identity) != identity)
        return;
    uint64_t known = atomic_load(&c->primary_position);
    while (known < lsn && !atomic_compare_exchange_weak(&c->primary_position, &known, lsn)) {
    }
}

uint64_t consistency_primary_position(const struct consistency *c)
{
    return atomic_load(&c->primary_position);
}

bool consistency_primary_seen(struct consistency *c, uint64_t identity)
{
    uint64_t known = atomic_load(&c->primary_identity);
    while (known != identity) {
        if (atomic_compare_exchange_weak(&c->primary_identity, &known, identity)) {
            atomic_store(&c->primary_position, 0);
            return known != 0; /* this caller made the change: a first sighting is no change */
        }
    }
    return false;
}
