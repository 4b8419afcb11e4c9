/* etag: MD5 (RFC 1321) for the entity tags of bodies, and the If-Match list's parser (RFC 9110 8.8.3,
 * 13.1.1, 5.6.1). MD5 here is a validator, not a signature: PostgreSQL's md5() gives the same hex, so a
 * conditional write checks the tag a client sends against the row in the statement that writes it. */
#include "worker/http/etag.h"

#include <stdint.h>
#include <string.h>

static const uint32_t MD5_K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};
static const uint8_t MD5_S[4][4] = {
    { 7, 12, 17, 22 }, { 5, 9, 14, 20 }, { 4, 11, 16, 23 }, { 6, 10, 15, 21 }
};

static uint32_t rotl32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

/* One 64-byte block into the state h[4]. */
static void md5_block(uint32_t h[4], const unsigned char *p)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
               (uint32_t)p[4 * i + 3] << 24;
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16)
            f = (b & c) | (~b & d), g = i;
        else if (i < 32)
            f = (d & b) | (~d & c), g = (5 * i + 1) % 16;
        else if (i < 48)
            f = b ^ c ^ d, g = (3 * i + 5) % 16;
        else
            f = c ^ (b | ~d), g = (7 * i) % 16;
        f += a + MD5_K[i] + m[g];
        a = d;
        d = c;
        c = b;
        b += rotl32(f, MD5_S[i / 16][i % 4]);
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d;
}

void http_etag_md5(const char *body, size_t len, char *hex)
{
    uint32_t h[4] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476 };
    const unsigned char *p = (const unsigned char *)body;
    size_t left = len;
    for (; left >= 64; p += 64, left -= 64)
        md5_block(h, p);
    /* the tail, 0x80, zeros up to 56 mod 64, then the length in bits (little-endian) */
    unsigned char last[128] = { 0 };
    if (left)
        memcpy(last, p, left);
    last[left] = 0x80;
    size_t n = left < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        last[n - 8 + i] = (unsigned char)(bits >> (8 * i));
    md5_block(h, last);
    if (n == 128)
        md5_block(h, last + 64);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        unsigned char byte = (unsigned char)(h[i / 4] >> (8 * (i % 4)));
        hex[2 * i] = digits[byte >> 4];
        hex[2 * i + 1] = digits[byte & 15];
    }
    hex[HTTP_ETAG_HEX] = '\0';
}

/* ---- If-Match ------------------------------------------------------------------------------- */

static const char *ows_skip(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* etagc = %x21 / %x23-7E / obs-text */
static bool etagc(unsigned char c)
{
    return c == 0x21 || (c >= 0x23 && c != 0x7f);
}

/* One entity-tag at s; returns what follows it, or NULL when it is not one. */
static const char *entity_tag_read(const char *s, struct http_if_match *out, const char **err)
{
    bool weak = strncmp(s, "W/", 2) == 0;
    if (weak)
        s += 2;
    if (*s != '"') {
        *err = "an entity tag is quoted: \"tag\" or W/\"tag\"";
        return NULL;
    }
    const char *start = ++s;
    while (etagc((unsigned char)*s))
        s++;
    if (*s != '"') {
        *err = "an entity tag holds only visible characters other than '\"' between its quotes";
        return NULL;
    }
    if (weak) {
        out->nweak++;
    } else if (out->ntags < HTTP_IF_MATCH_TAGS_MAX) {
        out->tags[out->ntags].p = start;
        out->tags[out->ntags++].len = (size_t)(s - start);
    } else {
        *err = "more than " HTTP_IF_MATCH_TAGS_MAX_TEXT " entity tags";
        return NULL;
    }
    return s + 1;
}

int http_if_match_parse(const char *value, struct http_if_match *out, const char **err)
{
    *out = (struct http_if_match){ 0 };
    const char *s = ows_skip(value);
    if (s[0] == '*' && *ows_skip(s + 1) == '\0') {
        out->any = true;
        return 0;
    }
    while (*s) {
        if (*s == ',') { /* empty list elements are allowed (RFC 9110 5.6.1) */
            s = ows_skip(s + 1);
            continue;
        }
        if (!(s = entity_tag_read(s, out, err)))
            return -1;
        s = ows_skip(s);
        if (*s && *s != ',') {
            *err = "entity tags are separated by commas";
            return -1;
        }
    }
    if (out->ntags + out->nweak == 0) {
        *err = "no entity tag: give \"*\" or a list of quoted tags";
        return -1;
    }
    return 0;
}
