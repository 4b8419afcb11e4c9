/* cache_keys: the layout of the cache's keys in Redis and of the values stored there, for the C side of
 * the protocol (the Lua scripts in cache.c build the same keys).
 *
 * Keys: <prefix>:epoch, <prefix>:seq (lease tokens), <prefix>:f:<key> (fence, 16 hex digits, compared
 * as strings: Lua numbers are doubles), <prefix>:e<epoch>:v:<key> (value: the data's LSN in 16 hex
 * digits, then the body), <prefix>:e<epoch>:l:<key> (lease). A list's pages share a generation
 * (<prefix>:g:<name>, with its fence <prefix>:f:g:<name>) and a page set (<prefix>:e<epoch>:pages:<name>).
 * A row key's highest version written (<prefix>:wv:<key>, "d" after a deletion) orders write-through. */
#ifndef PGAPI_CACHE_KEYS_H
#define PGAPI_CACHE_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_LSN_HEX 17 /* 16 hex digits and the NUL */

/* "<prefix>:epoch" into buf; false if it does not fit. */
bool cache_key_epoch(char *buf, size_t size, const char *prefix);
/* "<prefix>:e<epoch>:v:<key>" into buf; false if it does not fit. */
bool cache_key_value(char *buf, size_t size, const char *prefix, const char *epoch, const char *key);
/* An LSN as 16 upper-case hex digits, the form fences and values hold. */
void cache_lsn_hex(uint64_t lsn, char buf[CACHE_LSN_HEX]);
/* A fence as Redis holds it (NULL: none, 0). */
uint64_t cache_fence_parse(const char *s);
/* A stored value: its data's LSN (16 hex digits), then the body (*body, *body_len point into s). False
 * if s does not start with an LSN. */
bool cache_value_split(const char *s, size_t len, uint64_t *data_lsn, const char **body, size_t *body_len);

#endif
