/* auth: the bearer-token check of the API routes. Verification is common/jwt.c's (OpenSSL directly; why:
 * see there); this file takes the token out of Authorization, remembers verified tokens, checks the
 * route's scope and answers RFC 6750's 401 and 403 in the one error shape.
 *
 * The verified-token cache: 1024 tokens per worker, keyed by the SHA-256 of the token (never the token
 * itself), 256 sets of 4 with a clock bit each (a set's entry not used since the hand last passed is
 * replaced first). An entry serves until its token's exp (plus leeway); a reload starts new workers,
 * whose caches start empty, so a key taken out of service stops verifying at once. The scope is checked
 * on every request, cached or not. */
#include "worker/api/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/config.h"
#include "common/jwt.h"
#include "common/log.h"
#include "worker/api/resource.h"
#include "worker/http/http.h"
#include "worker/http/reply.h"

#define CACHE_SETS 256
#define CACHE_WAYS 4
#define HASH_LEN 32

/* Bit i is RESOURCE_SCOPE_* 1 << i: jwt_verify sets bit i for a token holding SCOPE_NAMES[i]. */
static const char *const SCOPE_NAMES[] = { "read", "write", "admin", NULL };
_Static_assert(RESOURCE_SCOPE_READ == 1u << 0 && RESOURCE_SCOPE_WRITE == 1u << 1 &&
                   RESOURCE_SCOPE_ADMIN == 1u << 2,
               "SCOPE_NAMES follows enum resource_scope");

_Static_assert(AUTH_RESULTS <= sizeof(((struct metrics_counters *)0)->auth) / sizeof(metrics_counter),
               "metrics_counters.auth has a counter per result");

struct cached_token {
    unsigned char hash[HASH_LEN];
    bool used, recent; /* recent: the clock bit */
    int64_t until;     /* exp + leeway */
    unsigned scopes;
    char sub[JWT_SUB_MAX + 1];
};

struct auth {
    bool required;
    struct jwt_keys *keys;
    struct jwt_rules rules;
    const struct config *cfg;
    metrics_counter *counts; /* AUTH_RESULTS of them, or NULL */
    EVP_MD *sha256;          /* fetched once: a fetch per request would cost more than the hash */
    EVP_MD_CTX *md;
    unsigned hand[CACHE_SETS]; /* each set's clock hand */
    struct cached_token cache[CACHE_SETS][CACHE_WAYS];
};

static const char *const RESULT_LABELS[AUTH_RESULTS] = {
    [AUTH_OK] = "ok",
    [AUTH_MISSING] = "missing",
    [AUTH_INVALID] = "invalid",
    [AUTH_EXPIRED] = "expired",
    [AUTH_INSUFFICIENT_SCOPE] = "insufficient_scope",
};

const char *auth_result_label(enum auth_result r)
{
    return r < AUTH_RESULTS ? RESULT_LABELS[r] : "";
}

struct auth *auth_new(const struct config *cfg, metrics_counter *counts, bool announce)
{
    struct auth *a = calloc(1, sizeof(*a));
    char err[CONFIG_ERR_MAX], keys[512];
    if (!a) {
        log_error("auth: out of memory");
        return NULL;
    }
    a->required = cfg->auth_required;
    a->cfg = cfg;
    a->counts = counts;
    if (!a->required)
        return a;
    a->keys = config_auth_keys(cfg, err, sizeof(err));
    a->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    a->md = EVP_MD_CTX_new();
    if (!a->keys || !a->sha256 || !a->md) {
        log_error("auth: cannot load the keys: %s", a->keys ? "OpenSSL has no SHA-256" : err);
        auth_free(a);
        return NULL;
    }
    a->rules = (struct jwt_rules){ .audience = cfg->auth_audience,
                                   .issuer = cfg->auth_issuer,
                                   .scope_claim = cfg->auth_scope_claim,
                                   .leeway_s = cfg->auth_leeway_s,
                                   .scope_names = SCOPE_NAMES };
    if (announce) {
        jwt_keys_describe(a->keys, keys, sizeof(keys));
        log_info("auth: bearer tokens required; keys: %s", keys);
    }
    return a;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    jwt_keys_free(a->keys);
    EVP_MD_CTX_free(a->md);
    EVP_MD_free(a->sha256);
    OPENSSL_cleanse(a->cache, sizeof(a->cache));
    free(a);
}

static void count(struct auth *a, enum auth_result r)
{
    if (a->counts)
        metrics_add(&a->counts[r], 1);
}

static bool token_hash(struct auth *a, const char *token, size_t len, unsigned char *hash)
{
    unsigned int n = 0;
    return EVP_DigestInit_ex2(a->md, a->sha256, NULL) == 1 && EVP_DigestUpdate(a->md, token, len) == 1 &&
           EVP_DigestFinal_ex(a->md, hash, &n) == 1 && n == HASH_LEN;
}

static unsigned hash_set(const unsigned char *hash)
{
    return hash[0] % CACHE_SETS;
}

static struct cached_token *cache_find(struct auth *a, const unsigned char *hash, int64_t now)
{
    struct cached_token *set = a->cache[hash_set(hash)];
    for (int i = 0; i < CACHE_WAYS; i++) {
        struct cached_token *e = &set[i];
        if (!e->used || memcmp(e->hash, hash, HASH_LEN) != 0)
            continue;
        if (now > e->until) { /* expired since: verified again, and refused as expired */
            e->used = false;
            return NULL;
        }
        e->recent = true;
        return e;
    }
    return NULL;
}

/* The entry a new token takes: a free one, else the first the set's clock hand finds not recently used
 * (clearing the bits it passes). */
static struct cached_token *cache_victim(struct auth *a, const unsigned char *hash)
{
    unsigned s = hash_set(hash);
    struct cached_token *set = a->cache[s];
    for (int i = 0; i < CACHE_WAYS; i++)
        if (!set[i].used)
            return &set[i];
    for (;;) {
        struct cached_token *e = &set[a->hand[s]];
        a->hand[s] = (a->hand[s] + 1) % CACHE_WAYS;
        if (!e->recent)
            return e;
        e->recent = false;
    }
}

static void cache_put(struct auth *a, const unsigned char *hash, const struct jwt_claims *c)
{
    struct cached_token *e = cache_victim(a, hash);
    memcpy(e->hash, hash, HASH_LEN);
    e->used = true;
    e->recent = false;
    e->until = c->exp + a->rules.leeway_s;
    e->scopes = c->scopes;
    memcpy(e->sub, c->sub, sizeof(e->sub));
}

static const char *scope_name(unsigned scope)
{
    for (int i = 0; SCOPE_NAMES[i]; i++)
        if (scope == 1u << i)
            return SCOPE_NAMES[i];
    return "";
}

/* Records a refusal (counted at once: pgapi_auth_total tells what clients sent, answered or limited). */
static bool refused(struct auth *a, struct auth_verdict *v, enum auth_result result, const char *why)
{
    count(a, result);
    v->result = result;
    v->why = why;
    return false;
}

static bool scope_check(struct auth *a, unsigned held, struct auth_verdict *v)
{
    if (!(held & v->scope))
        return refused(a, v, AUTH_INSUFFICIENT_SCOPE, "");
    count(a, AUTH_OK);
    return true;
}

void auth_refuse(struct http_request *req, const struct auth_verdict *v)
{
    char challenge[320];
    switch (v->result) {
    case AUTH_MISSING: /* RFC 6750 3.1: no error code when the request had no credentials */
        http_header_add(req, "WWW-Authenticate", "Bearer");
        reply_error(req, 401, "missing_token", "%s; send Authorization: Bearer <token>", v->why);
        return;
    case AUTH_INSUFFICIENT_SCOPE:
        snprintf(challenge, sizeof(challenge), "Bearer error=\"insufficient_scope\", scope=\"%s\"",
                 scope_name(v->scope));
        http_header_add(req, "WWW-Authenticate", challenge);
        reply_error(req, 403, "insufficient_scope", "this request needs a token with the scope \"%s\"",
                    scope_name(v->scope));
        return;
    case AUTH_OK:
    case AUTH_INVALID:
    case AUTH_EXPIRED:
    case AUTH_RESULTS:
        break;
    }
    /* why is one of our fixed texts (jwt_result_text): no quote, nothing of the client's */
    snprintf(challenge, sizeof(challenge), "Bearer error=\"invalid_token\", error_description=\"%s\"",
             v->why);
    http_header_add(req, "WWW-Authenticate", challenge);
    log_debug("request %s: bearer token refused: %s", req->request_id, v->why);
    reply_error(req, 401, "invalid_token", "%s", v->why);
}

/* The token of an Authorization value "Bearer <token>" (the scheme in any case, RFC 7235 2.1), or NULL. */
static const char *bearer_token(const char *value, size_t *len)
{
    if (strncasecmp(value, "Bearer ", 7) != 0)
        return NULL;
    value += 7;
    value += strspn(value, " ");
    *len = strlen(value);
    return value;
}

bool auth_check(struct auth *a, struct http_request *req, unsigned scope, struct auth_verdict *v)
{
    *v = (struct auth_verdict){ .result = AUTH_OK, .why = "", .scope = scope };
    if (!a || !a->required)
        return true;
    const char *value = http_request_header(req, HTTP_H_AUTHORIZATION);
    size_t len = 0;
    const char *token = bearer_token(value, &len);
    unsigned char hash[HASH_LEN];
    int64_t now = (int64_t)time(NULL);
    if (!value[0] || !token)
        return refused(a, v, AUTH_MISSING,
                       value[0] ? "Authorization is not a Bearer token" : "no bearer token");
    if (strlen(value) >= HTTP_AUTHORIZATION_MAX)
        return refused(a, v, AUTH_INVALID, "the token is longer than 4096 bytes");
    if (http_headers_seen(&req->headers, HTTP_H_AUTHORIZATION) > 1) /* which one would a proxy have read? */
        return refused(a, v, AUTH_INVALID, "more than one Authorization header");
    bool hashed = token_hash(a, token, len, hash);
    const struct cached_token *hit = hashed ? cache_find(a, hash, now) : NULL;
    if (hit) {
        snprintf(req->subject, sizeof(req->subject), "%s", hit->sub);
        return scope_check(a, hit->scopes, v);
    }
    struct jwt_claims claims;
    enum jwt_result r = jwt_verify(a->keys, &a->rules, token, len, now, &claims);
    if (r != JWT_OK)
        return refused(a, v, r == JWT_EXPIRED ? AUTH_EXPIRED : AUTH_INVALID, jwt_result_text(r));
    if (hashed)
        cache_put(a, hash, &claims);
    snprintf(req->subject, sizeof(req->subject), "%s", claims.sub);
    return scope_check(a, claims.scopes, v);
}
