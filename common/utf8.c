/* utf8: validation after the Unicode standard's table of well-formed byte sequences (3.9, D92): the
 * second byte's range depends on the first, which rules out overlong forms and surrogates. */
#include "common/utf8.h"

#include <stdbool.h>
#include <string.h>

/* The allowed range of the second byte of a sequence led by b (lead bytes C2..F4 only). */
static void second_byte_range(unsigned char b, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b == 0xE0)
        *lo = 0xA0; /* overlong 3-byte forms */
    else if (b == 0xED)
        *hi = 0x9F; /* UTF-16 surrogates */
    else if (b == 0xF0)
        *lo = 0x90; /* overlong 4-byte forms */
    else if (b == 0xF4)
        *hi = 0x8F; /* above U+10FFFF */
}

/* The length a lead byte announces: 2..4, or 0 for a byte no well-formed sequence starts with (C0, C1
 * and F5..FF never appear; 80..BF only continue one). */
static size_t lead_byte_len(unsigned char b)
{
    if (b >= 0xC2 && b <= 0xDF)
        return 2;
    if (b >= 0xE0 && b <= 0xEF)
        return 3;
    if (b >= 0xF0 && b <= 0xF4)
        return 4;
    return 0;
}

size_t utf8_sequence_len(const char *s, size_t avail)
{
    const unsigned char *u = (const unsigned char *)s;
    if (avail == 0)
        return 0;
    if (u[0] < 0x80)
        return 1;
    size_t n = lead_byte_len(u[0]);
    if (n == 0 || avail < n)
        return 0;
    unsigned char lo, hi;
    second_byte_range(u[0], &lo, &hi);
    if (u[1] < lo || u[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (u[i] < 0x80 || u[i] > 0xBF)
            return 0;
    return n;
}

size_t utf8_invalid_at(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_sequence_len(s + i, len - i);
        if (n == 0)
            return i;
        i += n;
    }
    return len;
}

size_t utf8_sanitize(char *dst, size_t cap, const char *src)
{
    size_t out = 0, left = strlen(src);
    while (left > 0) {
        size_t n = utf8_sequence_len(src, left);
        const char *piece = n ? src : UTF8_REPLACEMENT;
        size_t plen = n ? n : strlen(UTF8_REPLACEMENT);
        if (out + plen >= cap)
            break;
        memcpy(dst + out, piece, plen);
        out += plen;
        src += n ? n : 1;
        left -= n ? n : 1;
    }
    dst[out] = '\0';
    return out;
}

int utf8_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The value of four hex digits at s (avail bytes there), or -1. */
static long hex4(const char *s, size_t avail)
{
    long v = 0;
    if (avail < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = utf8_hex_value(c);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool surrogate_high(long u)
{
    return u >= 0xD800 && u <= 0xDBFF;
}

static bool surrogate_low(long u)
{
    return u >= 0xDC00 && u <= 0xDFFF;
}

/* Valid JSON has backslashes only inside strings, each starting an escape, so a scan that steps over
 * whole escapes ("\\" included) sees every \u escape and nothing else. */
size_t utf8_json_lone_surrogate_at(const char *s, size_t len)
{
    size_t i = 0;
    while (i + 1 < len) {
        if (s[i] != '\\') {
            i++;
            continue;
        }
        long u = s[i + 1] == 'u' ? hex4(s + i + 2, len - i - 2) : -1;
        if (u < 0) {
            i += 2; /* \" \\ \n ...: the escaped character starts nothing */
            continue;
        }
        if (surrogate_low(u))
            return i;
        if (!surrogate_high(u)) {
            i += 6;
            continue;
        }
        long low = i + 7 < len && s[i + 6] == '\\' && s[i + 7] == 'u' ? hex4(s + i + 8, len - i - 8) : -1;
        if (!surrogate_low(low))
            return i;
        i += 12;
    }
    return len;
}
