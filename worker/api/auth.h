/* auth: each worker's bearer-token check for the API routes ([auth] mode = required): the key set of its
 * generation (built from the configuration's key material, so a reload's new keys come with new workers),
 * a bounded cache of verified tokens, the scope a route needs, and the 401/403 answers of RFC 6750. */
#ifndef PGAPI_AUTH_H
#define PGAPI_AUTH_H

#include <stdbool.h>

#include "common/metrics.h"

struct auth;
struct config;
struct http_request;

/* The results counted in pgapi_auth_total{result=...}: bounded, never per subject. */
enum auth_result { AUTH_OK, AUTH_MISSING, AUTH_INVALID, AUTH_EXPIRED, AUTH_INSUFFICIENT_SCOPE, AUTH_RESULTS };

/* NULL (logged) when mode = required and the keys do not load, or out of memory. counts: the worker's
 * AUTH_RESULTS counters in the shared metrics (NULL: not counted). announce: log the keys it serves with. */
struct auth *auth_new(const struct config *cfg, metrics_counter *counts, bool announce)
    __attribute__((warn_unused_result));
void auth_free(struct auth *a);
/* Why a request was refused, kept until it is answered: the rate limiter decides first (a client
 * sending bad tokens is limited by its address like any other). why is always one of our fixed texts. */
struct auth_verdict {
    enum auth_result result; /* AUTH_OK: allowed */
    const char *why;
    unsigned scope; /* the scope the route needs */
};

/* Whether req may go on to a route that needs `scope` (RESOURCE_SCOPE_* bits, resource.h): true with
 * mode = off (a NULL auth too), or for a valid token holding the scope, whose subject is then in
 * req->subject. Otherwise false, with why in *v (counted now); auth_refuse answers it. */
bool auth_check(struct auth *a, struct http_request *req, unsigned scope, struct auth_verdict *v)
    __attribute__((warn_unused_result));
/* Answers a request auth_check refused: 401 missing_token or invalid_token, 403 insufficient_scope, each
 * with its WWW-Authenticate (RFC 6750). */
void auth_refuse(struct http_request *req, const struct auth_verdict *v);
/* "ok", "missing", ...: the label of a result. */
const char *auth_result_label(enum auth_result r);

#endif
