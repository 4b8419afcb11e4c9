/* fake_db: the fuzz target's stand-in for the database pool (worker/db/pool.h) and the Redis client
 * (worker/cache/cache.h), so that the request path runs up to and back from "the database" without one. */
#ifndef PGAPI_FAKE_DB_H
#define PGAPI_FAKE_DB_H

struct event_base;
struct pool;

/* What every statement gets back. */
enum fake_answer {
    FAKE_QUEUE_FULL, /* POOL_ERR_UNAVAILABLE from inside the call, as when the wait queue is full */
    FAKE_DOWN,       /* POOL_ERR_UNAVAILABLE on the next loop turn */
    FAKE_NO_ROWS,    /* POOL_OK without rows on the next loop turn: 404, or an empty page */
    FAKE_ONE_ROW,    /* POOL_OK with one (id, json) row on the next loop turn: 200, 201 or 204 */
};

/* A pool whose every statement gets `answer`; pool_free() releases it. */
struct pool *fake_pool_new(struct event_base *base, enum fake_answer answer);

#endif
