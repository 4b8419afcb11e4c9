/* Unit tests for common/jwt: base64url, key sets (secret, JWKS), and verification of tokens signed here
 * with OpenSSL: HS256 and ES256, every claim rule, alg none and the confusion of key kinds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/jwt.h"

#define NOW 1800000000LL
static const char SECRET[] = "0123456789abcdef0123456789abcdef!";
static const char *const SCOPES[] = { "read", "write", "admin", NULL };
static const struct jwt_rules RULES = {
    .audience = "api", .issuer = "iss", .scope_claim = "scope", .leeway_s = 30, .scope_names = SCOPES
};

static void b64url(const unsigned char *in, size_t len, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        if (i + 1 < len)
            out[o++] = a[v >> 6 & 63];
        if (i + 2 < len)
            out[o++] = a[v & 63];
    }
    out[o] = '\0';
}

/* "b64(header).b64(payload)" into out */
static void signing_input(const char *header, const char *payload, char *out)
{
    b64url((const unsigned char *)header, strlen(header), out);
    strcat(out, ".");
    b64url((const unsigned char *)payload, strlen(payload), out + strlen(out));
}

static void hs256_token(const char *header, const char *payload, const char *secret, char *out)
{
    unsigned char mac[32];
    unsigned int n = 0;
    signing_input(header, payload, out);
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)out, strlen(out), mac, &n);
    strcat(out, ".");
    b64url(mac, n, out + strlen(out));
}

static void es256_token(EVP_PKEY *key, const char *header, const char *payload, char *out)
{
    unsigned char der[128], raw[64];
    size_t derlen = sizeof(der);
    signing_input(header, payload, out);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(ctx, der, &derlen, (unsigned char *)out, strlen(out)), 1);
    EVP_MD_CTX_free(ctx);
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
    assert_non_null(sig);
    BN_bn2binpad(ECDSA_SIG_get0_r(sig), raw, 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(sig), raw + 32, 32);
    ECDSA_SIG_free(sig);
    strcat(out, ".");
    b64url(raw, sizeof(raw), out + strlen(out));
}

/* {"keys":[{EC key with kid}]} of key's public half */
static void ec_jwks(EVP_PKEY *key, const char *kid, char *out, size_t cap)
{
    unsigned char pub[65];
    size_t len = 0;
    char x[64], y[64];
    assert_int_equal(EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub), &len),
                     1);
    assert_int_equal(len, 65);
    b64url(pub + 1, 32, x);
    b64url(pub + 33, 32, y);
    snprintf(out, cap,
             "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AAAA\"},{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"%s\","
             "\"x\":\"%s\",\"y\":\"%s\",\"use\":\"sig\"}]}",
             kid, x, y);
}

static struct jwt_keys *secret_keys(void)
{
    char err[256];
    struct jwt_key_source src = { .secret = (const unsigned char *)SECRET, .secret_len = strlen(SECRET) };
    struct jwt_keys *k = jwt_keys_load(&src, err, sizeof(err));
    assert_non_null(k);
    return k;
}

static enum jwt_result verify(const struct jwt_keys *k, const char *token, struct jwt_claims *c)
{
    return jwt_verify(k, &RULES, token, strlen(token), NOW, c);
}

static const char *HS = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
#define CLAIMS(extra) "{\"sub\":\"u-1\",\"aud\":\"api\",\"iss\":\"iss\",\"exp\":1800000100" extra "}"

static void test_base64url(void **state)
{
    (void)state;
    unsigned char buf[8];
    assert_int_equal(jwt_base64url_decode("", 0, buf, sizeof(buf)), 0);
    assert_int_equal(jwt_base64url_decode("QQ", 2, buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], 'A');
    assert_int_equal(jwt_base64url_decode("QR", 2, buf, sizeof(buf)), -1); /* bits past the byte */
    assert_int_equal(jwt_base64url_decode("Q", 1, buf, sizeof(buf)), -1);
    assert_int_equal(jwt_base64url_decode("QQ==", 4, buf, sizeof(buf)), -1); /* no padding in JWS */
    assert_int_equal(jwt_base64url_decode("+/8", 3, buf, sizeof(buf)), -1);  /* base64, not base64url */
    assert_int_equal(jwt_base64url_decode("-_8", 3, buf, sizeof(buf)), 2);
    assert_int_equal(jwt_base64url_decode("QUFBQUFBQUFB", 12, buf, sizeof(buf)), -1); /* 9 bytes > 8 */
}

static void test_hs256_claims(void **state)
{
    (void)state;
    struct jwt_keys *k = secret_keys();
    struct jwt_claims c;
    char t[2048];
    hs256_token(HS, CLAIMS(",\"scope\":\"read admin other\""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_OK);
    assert_string_equal(c.sub, "u-1");
    assert_int_equal(c.exp, 1800000100);
    assert_int_equal(c.scopes, 1u | 4u);
    hs256_token(HS, CLAIMS(",\"scope\":[\"write\",\"x\"],\"aud\":[\"x\",\"api\"]"), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_OK);
    assert_int_equal(c.scopes, 2u);
    hs256_token(HS, CLAIMS(",\"exp\":1799999980"), SECRET, t); /* 20 s ago: leeway */
    assert_int_equal(verify(k, t, &c), JWT_OK);
    hs256_token(HS, CLAIMS(",\"exp\":1799999960"), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_EXPIRED);
    hs256_token(HS, CLAIMS(",\"nbf\":1800000020"), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_OK);
    hs256_token(HS, CLAIMS(",\"nbf\":1800000040"), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_NOT_YET);
    hs256_token(HS, CLAIMS(",\"aud\":[\"x\"]"), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_BAD_AUDIENCE);
    hs256_token(HS, CLAIMS(",\"iss\":\"other\""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_BAD_ISSUER);
    hs256_token(HS, CLAIMS(",\"sub\":\"a b\""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_BAD_CLAIM);
    hs256_token(HS, "{\"sub\":\"u\",\"aud\":\"api\",\"iss\":\"iss\"}", SECRET, t); /* no exp */
    assert_int_equal(verify(k, t, &c), JWT_BAD_CLAIM);
    hs256_token(HS, CLAIMS(""), "another secret of thirty-two bytes!", t);
    assert_int_equal(verify(k, t, &c), JWT_BAD_SIGNATURE);
    jwt_keys_free(k);
}

static void test_refused_headers(void **state)
{
    (void)state;
    struct jwt_keys *k = secret_keys();
    struct jwt_claims c;
    char t[2048];
    hs256_token("{\"alg\":\"none\"}", CLAIMS(""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_ALG_REFUSED);
    *strrchr(t, '.') = '\0';
    strcat(t, ".");
    assert_int_equal(verify(k, t, &c), JWT_MALFORMED); /* alg none's empty signature */
    hs256_token("{\"alg\":\"HS512\"}", CLAIMS(""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_ALG_REFUSED);
    hs256_token("{\"alg\":\"HS256\",\"crit\":[\"x\"]}", CLAIMS(""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_MALFORMED);
    hs256_token("{\"alg\":\"HS256\",\"kid\":7}", CLAIMS(""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_MALFORMED);
    hs256_token("{\"alg\":\"HS256\"} ", CLAIMS(""), SECRET, t); /* trailing bytes after the object */
    assert_int_equal(verify(k, t, &c), JWT_OK);                 /* whitespace is JSON */
    hs256_token("{\"alg\":\"HS256\"}x", CLAIMS(""), SECRET, t);
    assert_int_equal(verify(k, t, &c), JWT_MALFORMED);
    assert_int_equal(jwt_verify(k, &RULES, "a.b.c", 5, NOW, &c), JWT_MALFORMED);
    assert_int_equal(jwt_verify(k, &RULES, t, JWT_TOKEN_MAX + 1, NOW, &c), JWT_MALFORMED);
    jwt_keys_free(k);
}

static void test_es256_jwks_and_confusion(void **state)
{
    (void)state;
    EVP_PKEY *key = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
    assert_non_null(key);
    char jwks[1024], err[256], t[2048];
    ec_jwks(key, "k1", jwks, sizeof(jwks));
    struct jwt_key_source src = { .jwks = jwks };
    struct jwt_keys *k = jwt_keys_load(&src, err, sizeof(err));
    assert_non_null(k);
    assert_int_equal(jwt_keys_count(k), 1); /* the oct key is skipped */
    struct jwt_claims c;
    es256_token(key, "{\"alg\":\"ES256\",\"kid\":\"k1\"}", CLAIMS(""), t);
    assert_int_equal(verify(k, t, &c), JWT_OK);
    es256_token(key, "{\"alg\":\"ES256\"}", CLAIMS(""), t); /* no kid: every ES256 key is tried */
    assert_int_equal(verify(k, t, &c), JWT_OK);
    es256_token(key, "{\"alg\":\"ES256\",\"kid\":\"k2\"}", CLAIMS(""), t);
    assert_int_equal(verify(k, t, &c), JWT_NO_KEY);
    es256_token(other, "{\"alg\":\"ES256\",\"kid\":\"k1\"}", CLAIMS(""), t);
    assert_int_equal(verify(k, t, &c), JWT_BAD_SIGNATURE);
    /* HS256 signed with the JWKS text itself: no HS256 key exists, so no HMAC is computed at all */
    hs256_token(HS, CLAIMS(""), jwks, t);
    assert_int_equal(verify(k, t, &c), JWT_ALG_REFUSED);
    hs256_token("{\"alg\":\"HS256\",\"kid\":\"k1\"}", CLAIMS(""), jwks, t);
    assert_int_equal(verify(k, t, &c), JWT_ALG_REFUSED);
    jwt_keys_free(k);
    /* and the other way: a secret only, an ES256 token */
    struct jwt_keys *s = secret_keys();
    es256_token(key, "{\"alg\":\"ES256\"}", CLAIMS(""), t);
    assert_int_equal(verify(s, t, &c), JWT_ALG_REFUSED);
    jwt_keys_free(s);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void test_bad_key_material(void **state)
{
    (void)state;
    char err[256];
    struct jwt_key_source shorts = { .secret = (const unsigned char *)"short", .secret_len = 5 };
    assert_null(jwt_keys_load(&shorts, err, sizeof(err)));
    assert_non_null(strstr(err, "HS256 secret of 5 bytes"));
    struct jwt_key_source none = { 0 };
    assert_null(jwt_keys_load(&none, err, sizeof(err)));
    assert_non_null(strstr(err, "no key"));
    struct jwt_key_source pem = { .pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n" };
    assert_null(jwt_keys_load(&pem, err, sizeof(err)));
    assert_non_null(strstr(err, "not a PEM public key"));
    struct jwt_key_source offcurve = { .jwks = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
                                               "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
                                               "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\"}]}" };
    assert_null(jwt_keys_load(&offcurve, err, sizeof(err)));
    assert_non_null(strstr(err, "not a valid EC P-256 public key"));
    struct jwt_key_source dup = {
        .jwks = "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"n\":\"x\",\"e\":\"AQAB\"}]}"
    };
    assert_null(jwt_keys_load(&dup, err, sizeof(err)));
    struct jwt_key_source empty = { .jwks = "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"enc\"}]}" };
    assert_null(jwt_keys_load(&empty, err, sizeof(err)));
    assert_non_null(strstr(err, "no RS256 or ES256 signing key"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64url),        cmocka_unit_test(test_hs256_claims),
        cmocka_unit_test(test_refused_headers),  cmocka_unit_test(test_es256_jwks_and_confusion),
        cmocka_unit_test(test_bad_key_material),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
