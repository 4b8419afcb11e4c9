/* jwt: verification of compact JWS tokens with OpenSSL 3 directly, and the key set they are checked with.
 *
 * Why OpenSSL and not libjwt: Debian 12's libjwt 1.10.2 has no JWKS at all (a JWK's RSA n/e or EC x/y
 * would need OpenSSL anyway, through EVP_PKEY_fromdata); its jwt_decode() takes one key as bytes and
 * trusts the token's own `alg` to decide how to use them, so an RSA public key PEM handed to it verifies
 * an HS256 token whose HMAC key is that PEM text (the HS/RS confusion) unless every caller checks the
 * alg first; it parses claims with jansson, a second JSON library next to json-c; and it cannot say
 * which claim failed. What verification needs is small: base64url, HMAC-SHA256 compared in constant
 * time, and EVP_DigestVerify for RS256 and ES256 (whose raw r||s signature becomes DER first). Here each
 * key carries the one algorithm it may verify, fixed when it is loaded, and a token's alg only chooses
 * among the keys made for it. */
#include "common/jwt.h"

#include <json-c/json.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum jwt_alg { ALG_HS256, ALG_RS256, ALG_ES256, ALG_COUNT };

static const char *const alg_names[ALG_COUNT] = { "HS256", "RS256", "ES256" };

struct jwt_key {
    enum jwt_alg alg; /* the only algorithm this key verifies */
    bool has_kid;
    char kid[JWT_KID_MAX + 1];
    EVP_PKEY *pkey; /* RS256, ES256 */
    unsigned char secret[JWT_SECRET_MAX];
    size_t secret_len; /* HS256 */
};

struct jwt_keys {
    int n;
    struct jwt_key key[JWT_KEYS_MAX];
};

#define HEADER_MAX 1024 /* a decoded header's bytes */
#define SIG_MAX 1024    /* a decoded signature's bytes: RSA up to 8192 bits */
#define RSA_MIN_BITS 2048
#define JSON_DEPTH 8

/* ---- base64url ------------------------------------------------------------------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long jwt_base64url_decode(const char *src, size_t len, unsigned char *dst, size_t cap)
{
    if (len % 4 == 1)
        return -1;
    size_t out = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    if (out > cap)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)src[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            dst[n++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits && (acc & ((1u << bits) - 1)))
        return -1; /* bits past the last byte: not the one encoding of these bytes */
    return (long)n;
}

/* ---- JSON ------------------------------------------------------------------------------------ */

/* An object parsed from exactly buf[0..len), or NULL. */
static struct json_object *json_object_parse(const unsigned char *buf, size_t len)
{
    struct json_tokener *tok = json_tokener_new_ex(JSON_DEPTH);
    if (!tok)
        return NULL;
    struct json_object *o = json_tokener_parse_ex(tok, (const char *)buf, (int)len);
    bool whole = o && json_tokener_get_parse_end(tok) == len;
    json_tokener_free(tok);
    if (!whole || !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

/* The string member `name` of o, or NULL (absent, or not a string). */
static const char *member_string(struct json_object *o, const char *name, size_t *len)
{
    struct json_object *v;
    if (!json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    if (len)
        *len = (size_t)json_object_get_string_len(v);
    return json_object_get_string(v);
}

/* ---- keys ------------------------------------------------------------------------------------ */

static int key_add(struct jwt_keys *ks, char *err, size_t errlen, struct jwt_key **out)
{
    if (ks->n >= JWT_KEYS_MAX) {
        snprintf(err, errlen, "more than %d keys", JWT_KEYS_MAX);
        return -1;
    }
    *out = &ks->key[ks->n++];
    memset(*out, 0, sizeof(**out));
    return 0;
}

/* A public key for alg, owned by the set from now on (freed here when the set is full). */
static int key_add_pkey(struct jwt_keys *ks, EVP_PKEY *pkey, enum jwt_alg alg, char *err, size_t errlen,
                        struct jwt_key **out)
{
    if (key_add(ks, err, errlen, out) < 0) {
        EVP_PKEY_free(pkey);
        return -1;
    }
    (*out)->alg = alg;
    (*out)->pkey = pkey;
    return 0;
}

/* The algorithm a public key verifies: RS256 for RSA of at least 2048 bits, ES256 for EC on P-256. */
static int pkey_alg(EVP_PKEY *pkey, enum jwt_alg *alg, char *err, size_t errlen)
{
    if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA) {
        if (EVP_PKEY_get_bits(pkey) < RSA_MIN_BITS) {
            snprintf(err, errlen, "an RSA key of %d bits (at least %d)", EVP_PKEY_get_bits(pkey),
                     RSA_MIN_BITS);
            return -1;
        }
        *alg = ALG_RS256;
        return 0;
    }
    char group[64] = "";
    if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC &&
        EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), NULL) == 1 &&
        strcmp(group, "prime256v1") == 0) {
        *alg = ALG_ES256;
        return 0;
    }
    snprintf(err, errlen, "neither an RSA nor an EC P-256 public key");
    return -1;
}

static int pem_load(struct jwt_keys *ks, const char *pem, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    struct jwt_key *k;
    enum jwt_alg alg;
    char why[128];
    if (!pkey) {
        snprintf(err, errlen, "public key: not a PEM public key (-----BEGIN PUBLIC KEY-----)");
        return -1;
    }
    if (pkey_alg(pkey, &alg, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "public key: %s", why);
        EVP_PKEY_free(pkey);
        return -1;
    }
    return key_add_pkey(ks, pkey, alg, err, errlen, &k);
}

/* A base64url member of a JWK decoded into buf; its length, or -1. */
static long jwk_bytes(struct json_object *jwk, const char *name, unsigned char *buf, size_t cap)
{
    size_t len;
    const char *s = member_string(jwk, name, &len);
    return s ? jwt_base64url_decode(s, len, buf, cap) : -1;
}

/* An EVP_PKEY of type `type` from the parameters bld holds (bld is freed). */
static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    if (pkey) { /* an EC point must lie on the curve; RSA's n and e must make sense */
        EVP_PKEY_CTX *check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (!check || EVP_PKEY_public_check(check) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(check);
    }
    ERR_clear_error();
    return pkey;
}

static EVP_PKEY *jwk_rsa(struct json_object *jwk)
{
    unsigned char n[1024], e[8];
    long nl = jwk_bytes(jwk, "n", n, sizeof(n)), el = jwk_bytes(jwk, "e", e, sizeof(e));
    if (nl <= 0 || el <= 0)
        return NULL;
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    EVP_PKEY *pkey = NULL;
    if (bn && be && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) == 1 &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) == 1) {
        pkey = pkey_fromdata("RSA", bld);
        bld = NULL;
    }
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return pkey;
}

static EVP_PKEY *jwk_ec(struct json_object *jwk)
{
    unsigned char point[65];
    const char *crv = member_string(jwk, "crv", NULL);
    if (!crv || strcmp(crv, "P-256") != 0)
        return NULL;
    point[0] = 0x04; /* uncompressed: x then y, 32 bytes each */
    if (jwk_bytes(jwk, "x", point + 1, 32) != 32 || jwk_bytes(jwk, "y", point + 33, 32) != 32)
        return NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!bld || OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)) != 1) {
        OSSL_PARAM_BLD_free(bld);
        return NULL;
    }
    return pkey_fromdata("EC", bld);
}

/* Whether a JWK is one we verify with: a signing key (no `use`, or "sig") of kty RSA or EC whose `alg`,
 * when given, is the one its type makes (RS256, ES256). */
static bool jwk_usable(struct json_object *jwk, enum jwt_alg *alg)
{
    const char *kty = member_string(jwk, "kty", NULL), *use = member_string(jwk, "use", NULL);
    const char *a = member_string(jwk, "alg", NULL);
    if (!kty || (use && strcmp(use, "sig") != 0))
        return false;
    if (strcmp(kty, "RSA") == 0)
        *alg = ALG_RS256;
    else if (strcmp(kty, "EC") == 0)
        *alg = ALG_ES256;
    else
        return false;
    return !a || strcmp(a, alg_names[*alg]) == 0;
}

static bool kid_taken(const struct jwt_keys *ks, const char *kid)
{
    for (int i = 0; i < ks->n; i++)
        if (ks->key[i].has_kid && strcmp(ks->key[i].kid, kid) == 0)
            return true;
    return false;
}

static int jwk_load(struct jwt_keys *ks, struct json_object *jwk, int i, char *err, size_t errlen)
{
    enum jwt_alg alg;
    size_t kid_len = 0;
    if (!json_object_is_type(jwk, json_type_object)) {
        snprintf(err, errlen, "jwks: keys[%d] is not an object", i);
        return -1;
    }
    if (!jwk_usable(jwk, &alg))
        return 0;
    const char *kid = member_string(jwk, "kid", &kid_len);
    if (kid && (kid_len == 0 || kid_len > JWT_KID_MAX || strlen(kid) != kid_len)) {
        snprintf(err, errlen, "jwks: keys[%d]: kid empty, longer than %d bytes or holding a NUL", i,
                 JWT_KID_MAX);
        return -1;
    }
    if (kid && kid_taken(ks, kid)) {
        snprintf(err, errlen, "jwks: keys[%d]: kid \"%s\" appears twice", i, kid);
        return -1;
    }
    EVP_PKEY *pkey = alg == ALG_RS256 ? jwk_rsa(jwk) : jwk_ec(jwk);
    enum jwt_alg made;
    char why[128];
    if (!pkey) {
        snprintf(err, errlen, "jwks: keys[%d]: not a valid %s public key (%s)", i,
                 alg == ALG_RS256 ? "RSA" : "EC P-256", alg == ALG_RS256 ? "n, e" : "crv, x, y");
        return -1;
    }
    struct jwt_key *k;
    if (pkey_alg(pkey, &made, why, sizeof(why)) < 0 || made != alg) {
        snprintf(err, errlen, "jwks: keys[%d]: %s", i, why);
        EVP_PKEY_free(pkey);
        return -1;
    }
    if (key_add_pkey(ks, pkey, alg, err, errlen, &k) < 0)
        return -1;
    if (kid) {
        k->has_kid = true;
        memcpy(k->kid, kid, kid_len + 1);
    }
    return 0;
}

static int jwks_load(struct jwt_keys *ks, const char *text, char *err, size_t errlen)
{
    struct json_object *doc = json_object_parse((const unsigned char *)text, strlen(text)), *keys;
    int before = ks->n, rc = -1;
    if (!doc || !json_object_object_get_ex(doc, "keys", &keys) ||
        !json_object_is_type(keys, json_type_array)) {
        snprintf(err, errlen, "jwks: not a JSON object with a \"keys\" array");
        goto done;
    }
    for (size_t i = 0; i < json_object_array_length(keys); i++)
        if (jwk_load(ks, json_object_array_get_idx(keys, i), (int)i, err, errlen) < 0)
            goto done;
    if (ks->n == before) {
        snprintf(err, errlen, "jwks: no RS256 or ES256 signing key in it");
        goto done;
    }
    rc = 0;
done:
    json_object_put(doc);
    return rc;
}

static int secret_load(struct jwt_keys *ks, const unsigned char *secret, size_t len, char *err, size_t errlen)
{
    struct jwt_key *k;
    if (len < JWT_SECRET_MIN || len > JWT_SECRET_MAX) {
        snprintf(err, errlen, "HS256 secret of %zu bytes: it must have %d to %d", len, JWT_SECRET_MIN,
                 JWT_SECRET_MAX);
        return -1;
    }
    if (key_add(ks, err, errlen, &k) < 0)
        return -1;
    k->alg = ALG_HS256;
    memcpy(k->secret, secret, len);
    k->secret_len = len;
    return 0;
}

struct jwt_keys *jwt_keys_load(const struct jwt_key_source *src, char *err, size_t errlen)
{
    struct jwt_keys *ks = calloc(1, sizeof(*ks));
    if (!ks) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if ((src->secret_len && secret_load(ks, src->secret, src->secret_len, err, errlen) < 0) ||
        (src->pem && src->pem[0] && pem_load(ks, src->pem, err, errlen) < 0) ||
        (src->jwks && src->jwks[0] && jwks_load(ks, src->jwks, err, errlen) < 0))
        goto fail;
    if (ks->n == 0) {
        snprintf(err, errlen, "no key: set an HS256 secret, a public key or a JWKS");
        goto fail;
    }
    return ks;
fail:
    jwt_keys_free(ks);
    return NULL;
}

void jwt_keys_free(struct jwt_keys *ks)
{
    if (!ks)
        return;
    for (int i = 0; i < ks->n; i++)
        EVP_PKEY_free(ks->key[i].pkey);
    OPENSSL_cleanse(ks, sizeof(*ks)); /* the HS256 secret */
    free(ks);
}

int jwt_keys_count(const struct jwt_keys *ks)
{
    return ks ? ks->n : 0;
}

void jwt_keys_describe(const struct jwt_keys *ks, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; ks && i < ks->n && n < cap; i++) {
        const struct jwt_key *k = &ks->key[i];
        int w = snprintf(buf + n, cap - n, "%s%s%s%.40s%s", i ? ", " : "", alg_names[k->alg],
                         k->has_kid ? " (kid " : "", k->has_kid ? k->kid : "", k->has_kid ? ")" : "");
        if (w < 0)
            break;
        n += (size_t)w;
    }
}

/* ---- verification ---------------------------------------------------------------------------- */

static bool hs256_verify(const struct jwt_key *k, const char *data, size_t len, const unsigned char *sig,
                         size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (siglen != 32 ||
        !HMAC(EVP_sha256(), k->secret, (int)k->secret_len, (const unsigned char *)data, len, mac, &maclen))
        return false;
    return maclen == 32 && CRYPTO_memcmp(mac, sig, 32) == 0; /* constant time: no timing oracle */
}

static bool digest_verify(EVP_PKEY *pkey, const char *data, size_t len, const unsigned char *sig,
                          size_t siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
              EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)data, len) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

/* JWS ES256 signs with r||s, 32 bytes each (RFC 7518 3.4); OpenSSL verifies the DER form. */
static bool es256_verify(const struct jwt_key *k, const char *data, size_t len, const unsigned char *sig,
                         size_t siglen)
{
    if (siglen != 64)
        return false;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    unsigned char *der = NULL;
    int derlen = -1;
    if (es && r && s && ECDSA_SIG_set0(es, r, s) == 1) {
        r = s = NULL; /* es owns them */
        derlen = i2d_ECDSA_SIG(es, &der);
    }
    bool ok = derlen > 0 && digest_verify(k->pkey, data, len, der, (size_t)derlen);
    OPENSSL_free(der);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return ok;
}

static bool key_verifies(const struct jwt_key *k, const char *data, size_t len, const unsigned char *sig,
                         size_t siglen)
{
    switch (k->alg) {
    case ALG_HS256:
        return hs256_verify(k, data, len, sig, siglen);
    case ALG_RS256:
        return siglen == (size_t)EVP_PKEY_get_size(k->pkey) && digest_verify(k->pkey, data, len, sig, siglen);
    case ALG_ES256:
        return es256_verify(k, data, len, sig, siglen);
    case ALG_COUNT:
        break;
    }
    return false;
}

/* The token's alg among ours, or JWT_ALG_REFUSED ("none" and every other one included). */
static enum jwt_result header_alg(struct json_object *header, enum jwt_alg *alg)
{
    const char *a = member_string(header, "alg", NULL);
    if (!a)
        return JWT_MALFORMED;
    for (int i = 0; i < ALG_COUNT; i++)
        if (strcmp(a, alg_names[i]) == 0) {
            *alg = (enum jwt_alg)i;
            return JWT_OK;
        }
    return JWT_ALG_REFUSED;
}

/* Checks the signature of data (header.payload) with the keys the header's alg and kid select: a kid a
 * key has picks that key alone, whose algorithm must be the token's; otherwise every key of the token's
 * algorithm without a kid (a PEM key, the secret) is tried, or with no kid in the token, every key of its
 * algorithm. A token whose alg no key is for is refused before any signature is computed: an RS256 key
 * never becomes an HMAC secret. */
static enum jwt_result signature_check(const struct jwt_keys *ks, struct json_object *header,
                                       const char *data, size_t len, const unsigned char *sig, size_t siglen)
{
    enum jwt_alg alg;
    enum jwt_result r = header_alg(header, &alg);
    if (r != JWT_OK)
        return r;
    size_t kid_len = 0;
    const char *kid = member_string(header, "kid", &kid_len);
    if (json_object_object_get_ex(header, "kid", NULL) && !kid)
        return JWT_MALFORMED;
    bool alg_known = false, tried = false;
    for (int i = 0; i < ks->n; i++) {
        const struct jwt_key *k = &ks->key[i];
        alg_known |= k->alg == alg;
        if (kid && k->has_kid && strcmp(k->kid, kid) == 0)
            return k->alg != alg                             ? JWT_ALG_REFUSED
                   : key_verifies(k, data, len, sig, siglen) ? JWT_OK
                                                             : JWT_BAD_SIGNATURE;
    }
    for (int i = 0; i < ks->n; i++) {
        const struct jwt_key *k = &ks->key[i];
        if (k->alg != alg || (kid && k->has_kid))
            continue;
        tried = true;
        if (key_verifies(k, data, len, sig, siglen))
            return JWT_OK;
    }
    if (!alg_known)
        return JWT_ALG_REFUSED;
    return tried ? JWT_BAD_SIGNATURE : JWT_NO_KEY;
}

/* A NumericDate claim (RFC 7519 2) as whole seconds; false when absent or not a number in range. */
static bool claim_time(struct json_object *claims, const char *name, int64_t *out, bool *present)
{
    struct json_object *v;
    *present = json_object_object_get_ex(claims, name, &v);
    if (!*present)
        return true;
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v);
        return true;
    }
    if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        if (!(d > -1e15 && d < 1e15))
            return false;
        *out = (int64_t)d;
        return true;
    }
    return false;
}

static bool audience_matches(struct json_object *claims, const char *audience)
{
    struct json_object *aud;
    if (!json_object_object_get_ex(claims, "aud", &aud))
        return false;
    if (json_object_is_type(aud, json_type_string))
        return strcmp(json_object_get_string(aud), audience) == 0;
    if (!json_object_is_type(aud, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(aud); i++) {
        struct json_object *a = json_object_array_get_idx(aud, i);
        if (json_object_is_type(a, json_type_string) && strcmp(json_object_get_string(a), audience) == 0)
            return true;
    }
    return false;
}

static unsigned scope_bit(const struct jwt_rules *rules, const char *name, size_t len)
{
    for (int i = 0; rules->scope_names && rules->scope_names[i] && i < JWT_SCOPE_NAMES_MAX; i++)
        if (strlen(rules->scope_names[i]) == len && memcmp(rules->scope_names[i], name, len) == 0)
            return 1u << i;
    return 0;
}

/* The scopes of the scope claim: a space-separated string (RFC 8693 4.2) or an array of strings; names
 * we do not know are ignored. An absent claim holds none; one of another type is refused. */
static bool claim_scopes(struct json_object *claims, const struct jwt_rules *rules, unsigned *out)
{
    struct json_object *v;
    *out = 0;
    if (!rules->scope_claim || !json_object_object_get_ex(claims, rules->scope_claim, &v))
        return true;
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        for (size_t i = 0, len; s[i]; i += len) {
            i += strspn(s + i, " ");
            len = strcspn(s + i, " ");
            *out |= scope_bit(rules, s + i, len);
        }
        return true;
    }
    if (!json_object_is_type(v, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(v); i++) {
        struct json_object *e = json_object_array_get_idx(v, i);
        if (!json_object_is_type(e, json_type_string))
            return false;
        *out |= scope_bit(rules, json_object_get_string(e), (size_t)json_object_get_string_len(e));
    }
    return true;
}

/* sub: 1 to JWT_SUB_MAX bytes of visible ASCII, so that it goes into log lines and rate limiter keys
 * as it is (two subjects never collapse into one by escaping). */
static bool claim_sub(struct json_object *claims, char *out)
{
    size_t len = 0;
    const char *sub = member_string(claims, "sub", &len);
    if (!sub || len == 0 || len > JWT_SUB_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (sub[i] < 0x21 || sub[i] > 0x7e)
            return false;
    memcpy(out, sub, len + 1);
    return true;
}

static enum jwt_result claims_check(struct json_object *claims, const struct jwt_rules *rules, int64_t now,
                                    struct jwt_claims *out)
{
    int64_t exp = 0, nbf = 0;
    bool has_exp, has_nbf;
    if (!claim_time(claims, "exp", &exp, &has_exp) || !has_exp || !claim_time(claims, "nbf", &nbf, &has_nbf))
        return JWT_BAD_CLAIM;
    if (now > exp + rules->leeway_s)
        return JWT_EXPIRED;
    if (has_nbf && nbf > now + rules->leeway_s)
        return JWT_NOT_YET;
    if (rules->issuer && rules->issuer[0]) {
        const char *iss = member_string(claims, "iss", NULL);
        if (!iss || strcmp(iss, rules->issuer) != 0)
            return JWT_BAD_ISSUER;
    }
    if (rules->audience && rules->audience[0] && !audience_matches(claims, rules->audience))
        return JWT_BAD_AUDIENCE;
    if (!claim_sub(claims, out->sub) || !claim_scopes(claims, rules, &out->scopes))
        return JWT_BAD_CLAIM;
    out->exp = exp;
    return JWT_OK;
}

/* A decoded part parsed as a JSON object, or NULL. */
static struct json_object *part_object(const char *s, size_t len, unsigned char *buf, size_t cap)
{
    long n = jwt_base64url_decode(s, len, buf, cap);
    return n > 0 ? json_object_parse(buf, (size_t)n) : NULL;
}

enum jwt_result jwt_verify(const struct jwt_keys *ks, const struct jwt_rules *rules, const char *token,
                           size_t len, int64_t now, struct jwt_claims *out)
{
    if (!ks || len == 0 || len > JWT_TOKEN_MAX || memchr(token, '\0', len))
        return JWT_MALFORMED;
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return JWT_MALFORMED;
    unsigned char hbuf[HEADER_MAX], sig[SIG_MAX], pbuf[JWT_TOKEN_MAX];
    struct json_object *header = part_object(token, (size_t)(dot1 - token), hbuf, sizeof(hbuf)),
                       *claims = NULL;
    long siglen = jwt_base64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), sig, sizeof(sig));
    enum jwt_result r = JWT_MALFORMED;
    if (!header || siglen <= 0 || json_object_object_get_ex(header, "crit", NULL))
        goto done; /* crit names extensions a verifier must understand (RFC 7515 4.1.11): we know none */
    r = signature_check(ks, header, token, (size_t)(dot2 - token), sig, (size_t)siglen);
    if (r != JWT_OK)
        goto done;
    claims = part_object(dot1 + 1, (size_t)(dot2 - dot1 - 1), pbuf, sizeof(pbuf));
    r = claims ? claims_check(claims, rules, now, out) : JWT_MALFORMED;
done:
    json_object_put(header);
    json_object_put(claims);
    return r;
}

const char *jwt_result_text(enum jwt_result r)
{
    switch (r) {
    case JWT_OK:
        return "valid";
    case JWT_MALFORMED:
        return "the token is not a well-formed JWS (three base64url parts of JSON objects)";
    case JWT_ALG_REFUSED:
        return "the token's alg is refused: no configured key is for it";
    case JWT_NO_KEY:
        return "no configured key has the token's kid";
    case JWT_BAD_SIGNATURE:
        return "the signature does not verify";
    case JWT_EXPIRED:
        return "the token has expired";
    case JWT_NOT_YET:
        return "the token is not valid yet (nbf)";
    case JWT_BAD_CLAIM:
        return "a claim is missing or malformed (exp and sub are required; sub is 1 to 128 visible ASCII "
               "characters)";
    case JWT_BAD_AUDIENCE:
        return "the token is not for this audience";
    case JWT_BAD_ISSUER:
        return "the token is not from the configured issuer";
    }
    return "invalid token";
}
