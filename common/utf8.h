/* utf8: one definition of well-formed UTF-8 (RFC 3629: shortest form, no surrogates, at most U+10FFFF)
 * for whatever echoes bytes a client sent into JSON text (error messages and JSON log lines), and the
 * check that a JSON text's \u escapes name characters too. */
#ifndef PGAPI_UTF8_H
#define PGAPI_UTF8_H

#include <stddef.h>

#define UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* Length (1 to 4) of the well-formed sequence that starts s, looking at most avail bytes; 0 if none
 * starts there (a stray or truncated byte). */
size_t utf8_sequence_len(const char *s, size_t avail);

/* The offset of the first byte of s[0..len) that is not part of a well-formed sequence, or len if
 * there is none. NUL bytes count as well-formed (U+0000). */
size_t utf8_invalid_at(const char *s, size_t len);

/* Copies the NUL-terminated src into dst (cap > 0 bytes, always NUL-terminated), every byte that is not
 * part of a well-formed sequence replaced by U+FFFD; a sequence that does not fit whole is left out, so
 * the copy is well-formed however short cap is. Returns the length written. */
size_t utf8_sanitize(char *dst, size_t cap, const char *src);

/* The offset of the first \u escape in the JSON text s[0..len) that stands for a lone UTF-16 surrogate
 * (a \uD800-\uDBFF not followed at once by a \uDC00-\uDFFF escape, or a \uDC00-\uDFFF not preceded by
 * one), or len if there is none. Such an escape names no character: json-c would store U+FFFD for it,
 * where the same surrogate sent as raw bytes is refused. */
size_t utf8_json_lone_surrogate_at(const char *s, size_t len);

/* A hex digit's value (a \u escape's, a %XX escape's), or -1. */
int utf8_hex_value(char c);

#endif
