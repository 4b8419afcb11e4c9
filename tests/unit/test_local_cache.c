/* Unit tests for worker/cache/local_cache: a worker's small in-process cache, stamped with the row's
 * fence, and its bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/cache/local_cache.h"

static void test_local_cache_stamps_and_bounds(void **state)
{
    (void)state;
    assert_null(local_cache_new(0, 1024, 60)); /* off */
    struct local_cache *lc = local_cache_new(4, 64 * 100, 60);
    const char *v;
    size_t len;
    struct local_stamp s7 = { 7, 0 }, s8 = { 8, 0 }, s7t = { 7, 1 }, s1 = { 1, 0 };
    local_cache_put(lc, "user:1", &s7, "{\"id\":1}", 8);
    local_cache_put(lc, "user:4", &s7, "{\"id\":4}", 8);
    assert_false(local_cache_get(lc, "user:4", &s7t, &v, &len)); /* a cache trouble since: gone */
    assert_true(local_cache_get(lc, "user:1", &s7, &v, &len));
    assert_int_equal(len, 8);
    assert_memory_equal(v, "{\"id\":1}", 8);
    assert_false(local_cache_get(lc, "user:2", &s7, &v, &len));
    assert_false(local_cache_get(lc, "user:1", &s8, &v, &len)); /* its fence moved: gone for good */
    assert_false(local_cache_get(lc, "user:1", &s7, &v, &len));
    char big[200];
    memset(big, 'x', sizeof(big));
    local_cache_put(lc, "user:3", &s1, big, sizeof(big)); /* over max_bytes / 64: not kept */
    assert_false(local_cache_get(lc, "user:3", &s1, &v, &len));
    uint64_t hits, entries;
    size_t bytes;
    local_cache_stats(lc, &hits, &entries, &bytes);
    assert_int_equal(hits, 1);
    assert_int_equal(entries, 0);
    assert_int_equal(bytes, 0);
    local_cache_free(lc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_cache_stamps_and_bounds),
    };
    return cmocka_run_group_tests_name("local_cache", tests, NULL, NULL);
}
