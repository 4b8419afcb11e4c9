/* Unit tests for worker/cache/cache_keys: the keys cache.c builds outside its scripts, LSNs in hex and a
 * stored value's LSN prefix. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/cache/cache_keys.h"

static void test_keys(void **state)
{
    (void)state;
    char buf[64];
    assert_true(cache_key_epoch(buf, sizeof(buf), "pgapi:v2"));
    assert_string_equal(buf, "pgapi:v2:epoch");
    assert_true(cache_key_value(buf, sizeof(buf), "pgapi:v2", "7", "user:42"));
    assert_string_equal(buf, "pgapi:v2:e7:v:user:42");
    assert_false(cache_key_value(buf, 10, "pgapi:v2", "7", "user:42")); /* does not fit: false */
    assert_false(cache_key_epoch(buf, 14, "pgapi:v2"));
    assert_true(cache_key_epoch(buf, 15, "pgapi:v2"));
}

static void test_lsn_hex(void **state)
{
    (void)state;
    char hex[CACHE_LSN_HEX];
    cache_lsn_hex(0, hex);
    assert_string_equal(hex, "0000000000000000");
    cache_lsn_hex(0x16B3A28ULL, hex);
    assert_string_equal(hex, "00000000016B3A28"); /* fixed width, upper case: compared as strings in Lua */
    cache_lsn_hex(UINT64_MAX, hex);
    assert_string_equal(hex, "FFFFFFFFFFFFFFFF");
    assert_int_equal(cache_fence_parse("00000000016B3A28"), 0x16B3A28ULL);
    assert_int_equal(cache_fence_parse(NULL), 0);
}

static void test_value_split(void **state)
{
    (void)state;
    const char *stored = "00000000016B3A28{\"id\":1}";
    uint64_t lsn = 0;
    const char *body = NULL;
    size_t len = 0;
    assert_true(cache_value_split(stored, strlen(stored), &lsn, &body, &len));
    assert_int_equal(lsn, 0x16B3A28ULL);
    assert_int_equal(len, 8);
    assert_memory_equal(body, "{\"id\":1}", 8);
    assert_true(cache_value_split(stored, 16, &lsn, &body, &len)); /* an empty body */
    assert_int_equal(len, 0);
    assert_false(cache_value_split(stored, 15, &lsn, &body, &len)); /* too short for the LSN */
    const char *no_lsn = "{\"id\":1}xxxxxxxxxxxx";
    assert_false(cache_value_split(no_lsn, strlen(no_lsn), &lsn, &body, &len));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_lsn_hex),
        cmocka_unit_test(test_value_split),
    };
    return cmocka_run_group_tests_name("cache_keys", tests, NULL, NULL);
}
