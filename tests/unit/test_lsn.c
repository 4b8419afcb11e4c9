/* Unit tests for the pool's LSN text parser (pool_lsn_parse, worker/db/lsn.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "worker/db/pool.h"

static void test_lsn_parse(void **state)
{
    (void)state;
    uint64_t v = 0;
    assert_int_equal(pool_lsn_parse("0/0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(pool_lsn_parse("16/B374D848", &v), 0);
    assert_int_equal(v, ((uint64_t)0x16 << 32) | 0xB374D848u);
    assert_int_equal(pool_lsn_parse("FFFFFFFF/FFFFFFFF", &v), 0);
    assert_int_equal(v, UINT64_MAX);
    assert_int_equal(pool_lsn_parse("", &v), -1);
    assert_int_equal(pool_lsn_parse("12", &v), -1);
    assert_int_equal(pool_lsn_parse("1/2x", &v), -1);
    assert_int_equal(pool_lsn_parse(NULL, &v), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lsn_parse),
    };
    return cmocka_run_group_tests_name("lsn", tests, NULL, NULL);
}
