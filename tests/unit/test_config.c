/* Unit tests for common/config: defaults, units, ranges, unknown keys with file:line, env overrides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/config.h"

static char ini_path[64];

static const char *ini_write(const char *text)
{
    strcpy(ini_path, "/tmp/pgapi-unit-XXXXXX");
    int fd = mkstemp(ini_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return ini_path;
}

static int load(struct config *c, const char *text, char *err, size_t errlen)
{
    int rc = config_load(c, text ? ini_write(text) : NULL, err, errlen);
    if (text)
        unlink(ini_path);
    return rc;
}

static void test_defaults(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    assert_int_equal(load(&c, NULL, err, sizeof(err)), 0);
    assert_string_equal(c.listen.host, "127.0.0.1");
    assert_int_equal(c.listen.port, 3000);
    assert_true(c.workers >= 1);
    assert_int_equal(c.pool_size, 4);
    assert_int_equal(c.replica_count, 1);
    assert_int_equal(c.cache_ttl_s, 3600);
    assert_int_equal(c.max_body_bytes, 65536);
    assert_true(c.redis_enabled);
}

static void test_units_and_lists(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    int rc = load(&c, "[server]\nlisten = 0.0.0.0:8080\nworkers = 3\nkeepalive_timeout = 250ms\n"
                      "max_body_bytes = 2m\n[database]\nreplica = host=a\nreplica = host=b\n"
                      "[redis]\nttl = 2m\n[log]\nformat = json\nlevel = debug\n",
                  err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(c.listen.port, 8080);
    assert_int_equal(c.workers, 3);
    assert_int_equal(c.keepalive_timeout_ms, 250);
    assert_int_equal(c.max_body_bytes, 2 * 1024 * 1024);
    assert_int_equal(c.replica_count, 2);
    assert_string_equal(c.replica_dsn[1], "host=b");
    assert_int_equal(c.cache_ttl_s, 120);
    assert_int_equal(c.log_format, LOGF_JSON);
    assert_int_equal(c.log_level, LOGL_DEBUG);
}

static void test_unknown_key_names_file_and_line(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    assert_int_equal(load(&c, "[server]\nworkers = 2\n\n[database]\npool_sise = 3\n", err, sizeof(err)), -1);
    char want[96];
    snprintf(want, sizeof(want), "%s:5:", ini_path);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "pool_sise"));
}

static void test_bad_values_rejected(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX];
    const char *bad[] = {
        "[server]\nworkers = -1\n",          "[server]\nworkers = many\n",
        "[server]\nlisten = nowhere\n",      "[server]\nlisten = 1.2.3.4:70000\n",
        "[server]\nkeepalive_timeout = 5 parsecs\n", "[server]\nmax_body_bytes = 3g\n",
        "[redis]\nenabled = perhaps\n",      "[log]\nlevel = loud\n",
        "[nosuch]\nkey = 1\n",               "[database]\nprimary =\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (load(&c, bad[i], err, sizeof(err)) != -1)
            fail_msg("accepted bad config: %s", bad[i]);
        assert_true(err[0] != '\0');
    }
}

static void test_env_overrides_file(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    setenv("PGAPI_DATABASE_POOL_SIZE", "7", 1);
    setenv("PGAPI_SERVER_LISTEN", "127.0.0.1:4000", 1);
    int rc = load(&c, "[database]\npool_size = 3\n", err, sizeof(err));
    unsetenv("PGAPI_DATABASE_POOL_SIZE");
    unsetenv("PGAPI_SERVER_LISTEN");
    assert_int_equal(rc, 0);
    assert_int_equal(c.pool_size, 7);
    assert_int_equal(c.listen.port, 4000);
    setenv("PGAPI_DATABASE_POOL_SIZE", "zero", 1);
    assert_int_equal(load(&c, NULL, err, sizeof(err)), -1);
    unsetenv("PGAPI_DATABASE_POOL_SIZE");
    assert_non_null(strstr(err, "PGAPI_DATABASE_POOL_SIZE"));
}

static void test_missing_file(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    assert_int_equal(config_load(&c, "/nonexistent/pgapi.ini", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/nonexistent/pgapi.ini"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_units_and_lists),
        cmocka_unit_test(test_unknown_key_names_file_and_line),
        cmocka_unit_test(test_bad_values_rejected),
        cmocka_unit_test(test_env_overrides_file),
        cmocka_unit_test(test_missing_file),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
