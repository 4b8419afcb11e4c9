/* idempotency: the Idempotency-Key of a write (draft-ietf-httpapi-idempotency-key-header-09): the key read
 * and checked, the parameter a keyed statement takes (resource.h, RESOURCE_SQL_KEYED), the answers of its
 * own outcomes, and the periodic purge of expired keys on the primary. Where the answer is stored and why
 * in one statement: migrations/0007_idempotency_keys.sql and resource.h. */
#ifndef PGAPI_IDEMPOTENCY_H
#define PGAPI_IDEMPOTENCY_H

#include <stdbool.h>
#include <stddef.h>

#include "worker/db/pool.h"
#include "worker/http/http.h"

struct api_context;
struct idempotency_purge;

/* The longest key: the header table keeps one byte more (HTTP_H_IDEMPOTENCY_KEY), so a longer value is
 * seen as one and refused, never cut to a key that would meet another. */
#define IDEMPOTENCY_KEY_MAX 255
/* Room for the keyed statement's parameter: a text[] literal of the scope and the key, each byte escaped
 * at worst, the request hash, the status and the ttl. */
#define IDEMPOTENCY_PARAM_MAX (2 * (HTTP_SUBJECT_MAX + IDEMPOTENCY_KEY_MAX) + 128)

/* The request's Idempotency-Key: *key is NULL without one (the write is as any other), else the key (1 to
 * IDEMPOTENCY_KEY_MAX bytes of visible ASCII, the field's value as sent: the draft's form, a quoted
 * sf-string like "8e03978e", and a bare token are both taken, quotes and all, so a key never changes on
 * its way to the table). -1 after answering 400
 * invalid_header: empty, too long, a byte outside visible ASCII, or the field sent twice. */
int idempotency_key_read(struct http_request *req, const char **key);

/* The keyed statement's own parameter, a text[] literal {scope, key, request hash, status, ttl seconds}
 * written into buf (IDEMPOTENCY_PARAM_MAX bytes). The scope is the caller (req->subject, "" when
 * anonymous). The request hash is the MD5 of the method, the path and the statement's parameters (the
 * id, the body's fields as parsed, in declaration order, absent ones told apart from empty ones, and
 * If-Match's tags): the same request sent again hashes the same whatever the order, spacing or escapes
 * of its JSON. False (answered 503) without memory. */
bool idempotency_param(struct http_request *req, const char *key, int status, int ttl_s,
                       const char *const *params, int nparams, char *buf);

/* A keyed statement's result (its idempotency column, RESOURCE_SQL_KEYED), or the error of the race its
 * primary key settles. */
enum idempotency_outcome {
    IDEMPOTENCY_WRITE,    /* it ran as any write would: answer it as one */
    IDEMPOTENCY_REPLAY,   /* the stored answer (idempotency_replay) */
    IDEMPOTENCY_MISMATCH, /* another request came first with the key: 422 */
    IDEMPOTENCY_BUSY,     /* the first request with the key is still in flight: 409 */
};
enum idempotency_outcome idempotency_outcome(const struct pool_result *r);
/* The stored answer of a replay: status, id and body (NULL for a 204), valid during the callback. */
struct idempotency_answer {
    int status;
    const char *id;
    const char *body;
    size_t len;
};
void idempotency_replay(const struct pool_result *r, struct idempotency_answer *out);
/* Answers IDEMPOTENCY_MISMATCH (422) or IDEMPOTENCY_BUSY (409, Retry-After). */
void idempotency_refuse(struct http_request *req, enum idempotency_outcome o);

/* The expired keys' purge: one worker (slot 0) of each server deletes keys older than [idempotency] ttl
 * on the primary every purge_interval, in batches that skip rows a request holds, so it never waits for
 * a request nor makes one wait long. NULL (logged) without memory; a worker of another slot gets an idle
 * one. */
struct idempotency_purge *idempotency_purge_new(struct api_context *api);
/* No callback runs after it: call it after pool_free (which runs none). */
void idempotency_purge_free(struct idempotency_purge *p);

#endif
