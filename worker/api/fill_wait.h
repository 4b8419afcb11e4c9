/* fill_wait: the requests of one worker that wait for a fill lease another request of the SAME worker
 * holds, woken when its value lands instead of polling Redis; and the back-off of those that poll (the
 * lease is another worker's or server's). Pure bookkeeping: no I/O, no allocation (the nodes live in the
 * requests' own state). Why a woken waiter may be served the filler's value: docs/consistency.md. */
#ifndef PGAPI_FILL_WAIT_H
#define PGAPI_FILL_WAIT_H

#include <stdbool.h>
#include <stdint.h>

#define FILL_WAIT_BUCKETS 64      /* holders hashed by lease token */
#define FILL_WAITERS_MAX 256      /* per lease: past it a waiter polls */
#define FILL_WAIT_RECENT 64       /* leases of this worker that ended, remembered */
#define FILL_WAIT_POLL_FIRST_MS 2 /* polling back-off: 2, 4, 8, 16, 16... ms */
#define FILL_WAIT_POLL_CAP_MS 16
#define FILL_WAIT_POLL_TOTAL_MS 50 /* the most a poller waits, then it reads the database (not filling) */

struct fill_waiter;

/* A request holding a fill lease (registered until its fill or release). */
struct fill_holder {
    struct fill_holder *prev, *next; /* its bucket */
    struct fill_holder **bucket;
    struct fill_waiter *first, *last;
    int nwaiters;
    bool held; /* registered */
    char token[24], epoch[24], key[96];
};

/* A request waiting for a holder's fill. */
struct fill_waiter {
    struct fill_waiter *prev, *next;
    struct fill_holder *holder; /* NULL: not waiting on one (it polls, or is not waiting) */
};

struct fill_wait_stats {
    uint64_t woken;   /* waiters answered with the fill of a request of their own worker */
    uint64_t retried; /* waiters sent back to Redis at once: that fill failed or could not serve them */
    uint64_t polled;  /* timed polls of Redis for a lease of another worker or server */
};

/* One per worker (api_context); zero-initialised is empty. */
struct fill_waits {
    struct fill_holder *buckets[FILL_WAIT_BUCKETS];
    char recent[FILL_WAIT_RECENT][24]; /* tokens of the last leases dropped, a ring */
    unsigned recent_next;
    struct fill_wait_stats stats;
};

/* Registers h as the holder of lease `token` of stored key `key` under `epoch`. */
void fill_wait_hold(struct fill_waits *w, struct fill_holder *h, const char *token, const char *epoch,
                    const char *key);
/* The holder registered for exactly this lease (token, epoch and stored key), else NULL. */
struct fill_holder *fill_wait_find(const struct fill_waits *w, const char *token, const char *epoch,
                                   const char *key);
/* x waits on h; false when h has FILL_WAITERS_MAX waiters already (x then polls). */
bool fill_wait_join(struct fill_holder *h, struct fill_waiter *x);
/* x stops waiting (its client went, or it is freed); nothing if it was not waiting. */
void fill_wait_leave(struct fill_waiter *x);
/* Takes h's first waiter off its list, or NULL. */
struct fill_waiter *fill_wait_pop(struct fill_holder *h);
/* h stops holding: unregistered, its remaining waiters detached (the caller pops them first to wake them),
 * its token remembered (fill_wait_ended). Its fill or release must have been sent to Redis already. */
void fill_wait_drop(struct fill_waits *w, struct fill_holder *h);
/* Whether `token` is one of the last FILL_WAIT_RECENT leases this worker dropped: a WAIT on it was
 * answered before the fill or release, which Redis has by now (one connection, in order): look again at
 * once rather than poll. */
bool fill_wait_ended(const struct fill_waits *w, const char *token);

/* The delay before poll number `polls` (0 first) of a lease held elsewhere, or 0 when that delay would
 * take the polls' total past FILL_WAIT_POLL_TOTAL_MS (the request then reads the database without
 * filling). */
unsigned fill_wait_poll_ms(int polls);

/* The fence a value read by a lease holder answers for that key: a replica's read, its data_lsn (the
 * replay position before it); a primary read, also the fence it was sent with (`newest`: the pool's
 * POOL_LSN_NEWEST, a primary-only read, counts as that fence alone). A primary read's data_lsn stays
 * strictly below what it knows (route_primary_data_lsn: a write not yet visible may carry that very
 * position), but for the key it was sent for it holds every write up to its fence: one invalidated before
 * the holder's lookup completed before the read, and a later one deletes the holder's lease, so neither its
 * fill nor its waiters (who saw that lease) are served from it. */
uint64_t fill_wait_reach(uint64_t data_lsn, bool on_primary, uint64_t newest, uint64_t sent_fence);

/* Whether a value read by the holder may answer a waiter: the lease the waiter saw in Redis was the
 * holder's, so no write of the key was invalidated between the two lookups; on top, what the value
 * reaches (fill_wait_reach) must be at least the waiter's own fence. */
bool fill_wait_serves(uint64_t reach, uint64_t waiter_fence);

#endif
