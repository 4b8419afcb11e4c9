/* jwt: JSON Web Tokens (RFC 7519) signed with HS256, RS256 or ES256 (RFC 7518), verified against a set of
 * keys built from an HS256 secret, a PEM public key and/or a JWKS document (RFC 7517). Pure: no I/O and
 * no clock of its own, so the master validates key material with the very code the workers verify with,
 * and the unit tests drive it directly. */
#ifndef PGAPI_JWT_H
#define PGAPI_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWT_KEYS_MAX 16       /* keys of one set, every source together */
#define JWT_KID_MAX 128       /* a key id's bytes */
#define JWT_SECRET_MIN 32     /* RFC 7518 3.2: an HS256 key has at least the hash's 256 bits */
#define JWT_SECRET_MAX 512    /* bytes */
#define JWT_TOKEN_MAX 4096    /* a compact token's bytes */
#define JWT_SUB_MAX 128       /* a subject's bytes (visible ASCII) */
#define JWT_PEM_MAX 8192      /* a PEM public key file's bytes */
#define JWT_JWKS_MAX 16384    /* a JWKS file's bytes */
#define JWT_SCOPE_NAMES_MAX 8 /* scope names a caller asks about (bits of jwt_claims.scopes) */

struct jwt_keys;

/* Where a key set comes from; any of the three may be absent (NULL / 0). */
struct jwt_key_source {
    const unsigned char *secret; /* HS256 */
    size_t secret_len;
    const char *pem;  /* one PEM public key: RSA (>= 2048 bits: RS256) or EC P-256 (ES256) */
    const char *jwks; /* {"keys":[...]}: RSA and EC P-256 signing keys, chosen by kid */
};

/* Builds the key set; NULL with the reason in err when any source is malformed or nothing usable is
 * left. A JWKS key for another use ("use":"enc") or algorithm than RS256/ES256 is skipped, not refused
 * (identity providers publish several). */
struct jwt_keys *jwt_keys_load(const struct jwt_key_source *src, char *err, size_t errlen)
    __attribute__((warn_unused_result));
void jwt_keys_free(struct jwt_keys *keys);
int jwt_keys_count(const struct jwt_keys *keys);
/* "HS256 secret, RS256 (kid a), ES256 (kid b)": for the log line that says which keys serve. */
void jwt_keys_describe(const struct jwt_keys *keys, char *buf, size_t cap);

/* What a valid token must also satisfy. */
struct jwt_rules {
    const char *audience;           /* "" = not checked; else `aud` (a string or an array) must hold it */
    const char *issuer;             /* "" = not checked; else `iss` must equal it */
    const char *scope_claim;        /* the claim holding the scopes: a space-separated string or an array */
    int leeway_s;                   /* clock skew allowed on exp and nbf */
    const char *const *scope_names; /* NULL-terminated, at most JWT_SCOPE_NAMES_MAX: bit i = names[i] */
};

struct jwt_claims {
    char sub[JWT_SUB_MAX + 1];
    int64_t exp;     /* seconds since the epoch */
    unsigned scopes; /* bit i set: the token holds rules.scope_names[i] */
};

enum jwt_result {
    JWT_OK,
    JWT_MALFORMED,     /* not three base64url parts of JSON objects, a header with crit, ... */
    JWT_ALG_REFUSED,   /* alg none, an unknown one, or one no configured key is for (HS/RS confusion) */
    JWT_NO_KEY,        /* a kid no key has */
    JWT_BAD_SIGNATURE, /* no key of the token's algorithm verifies it */
    JWT_EXPIRED,       /* exp + leeway is past */
    JWT_NOT_YET,       /* nbf - leeway is to come */
    JWT_BAD_CLAIM,     /* exp missing, sub missing or not visible ASCII, a claim of the wrong type */
    JWT_BAD_AUDIENCE,
    JWT_BAD_ISSUER,
};

/* Verifies token[0..len) at time now (seconds since the epoch): the signature first, then the claims.
 * On JWT_OK fills out. Never reads past len; a token over JWT_TOKEN_MAX is JWT_MALFORMED. */
enum jwt_result jwt_verify(const struct jwt_keys *keys, const struct jwt_rules *rules, const char *token,
                           size_t len, int64_t now, struct jwt_claims *out)
    __attribute__((warn_unused_result));
/* A fixed text for the result (RFC 6750's error_description: no quote, no backslash, nothing the client
 * sent). */
const char *jwt_result_text(enum jwt_result r);

/* base64url without padding (RFC 7515 2): decodes src[0..len) into dst (cap bytes); -1 on a byte outside
 * the alphabet, a length no encoding has, or too little room. Returns the bytes written. */
long jwt_base64url_decode(const char *src, size_t len, unsigned char *dst, size_t cap);

#endif
