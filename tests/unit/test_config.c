/* Unit tests for common/config: defaults, units, ranges, unknown keys with file:line, env overrides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
    int rc = load(&c,
                  "[server]\nlisten = 0.0.0.0:8080\nworkers = 3\nkeepalive_timeout = 250ms\n"
                  "max_body_bytes = 2m\n[database]\nreplica = host=a\nreplica = host=b\n"
                  "[redis]\nttl = 2m\n[log]\nformat = json\nlevel = debug\n[auth]\nallow_anonymous = on\n",
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

/* [auth] mode = off is only for loopback listeners, unless allow_anonymous says so; required needs a key. */
static void test_auth_mode_and_listen(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    assert_int_equal(load(&c, "[server]\nlisten = 0.0.0.0:8080\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "[auth] mode = off on the non-loopback address 0.0.0.0"));
    assert_int_equal(load(&c, "[server]\nlisten = 127.0.0.2:8080\n", err, sizeof(err)), 0);
    assert_false(c.auth_required);
    assert_int_equal(
        load(&c, "[server]\nlisten = 0.0.0.0:8080\n[auth]\nallow_anonymous = on\n", err, sizeof(err)), 0);
    assert_int_equal(load(&c, "[auth]\nmode = required\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "no key"));
    assert_int_equal(load(&c, "[auth]\nmode = sometimes\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "is not off or required"));
    setenv("PGAPI_AUTH_HS256_SECRET", "short", 1);
    assert_int_equal(load(&c, "[auth]\nmode = required\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "HS256 secret of 5 bytes"));
    setenv("PGAPI_AUTH_HS256_SECRET", "0123456789abcdef0123456789abcdef", 1);
    assert_int_equal(load(&c, "[server]\nlisten = 0.0.0.0:8080\n[auth]\nmode = required\n", err, sizeof(err)),
                     0);
    assert_true(c.auth_required);
    assert_int_equal(c.auth_secret_len, 32);
    assert_int_equal(c.auth_leeway_s, 30);
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    config_print(&c, f);
    fclose(f);
    assert_null(strstr(out, "0123456789abcdef")); /* the secret is never printed */
    assert_non_null(strstr(out, "mode = required"));
    free(out);
    unsetenv("PGAPI_AUTH_HS256_SECRET");
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
        "[server]\nworkers = -1\n",
        "[server]\nworkers = many\n",
        "[server]\nlisten = nowhere\n",
        "[server]\nlisten = 1.2.3.4:70000\n",
        "[server]\nkeepalive_timeout = 5 parsecs\n",
        "[server]\nmax_body_bytes = 3g\n",
        "[redis]\nenabled = perhaps\n",
        "[log]\nlevel = loud\n",
        "[nosuch]\nkey = 1\n",
        "[database]\nprimary =\n",
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

/* --check-config output (it lands in the journal through ExecStartPre) for one primary conninfo. */
static char *printed_with_primary(const char *dsn)
{
    struct config c;
    char err[CONFIG_ERR_MAX] = "", *text = NULL;
    size_t len = 0;
    setenv("PGAPI_DATABASE_PRIMARY", dsn, 1);
    int rc = config_load(&c, NULL, err, sizeof(err));
    unsetenv("PGAPI_DATABASE_PRIMARY");
    assert_int_equal(rc, 0);
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_print(&c, f);
    fclose(f);
    return text;
}

static void expect_masked(const char *dsn, const char *secret, const char *shown)
{
    char *text = printed_with_primary(dsn);
    if (strstr(text, secret) || (shown && !strstr(text, shown)))
        fail_msg("conninfo %s: expected %s masked%s%s, got:\n%s", dsn, secret, shown ? " and " : "",
                 shown ? shown : "", text);
    free(text);
}

static void test_print_masks_every_password_form(void **state)
{
    (void)state;
    expect_masked("host=db password=S3cret user=app", "S3cret", "primary = user=app password=**** host=db");
    expect_masked("host=db password = S3cret user=app", "S3cret", "password=****");
    expect_masked("host=db password='S3cret with spaces' user=app", "S3cret", "password=****");
    expect_masked("password='it\\'s S3cret' host=db", "S3cret", "host=db");
    expect_masked("host=db sslpassword=S3cretKey password=x", "S3cretKey", "sslpassword=****");
    expect_masked("postgresql://app:S3cretURI@db.example:5432/pgapi?sslmode=disable", "S3cretURI",
                  "user=app password=**** dbname=pgapi host=db.example port=5432");
    expect_masked("postgresql://app@db/pgapi?password=S3cretQuery", "S3cretQuery", "password=****");
    /* what libpq cannot parse is not printed: the password could be anywhere in it */
    expect_masked("host='db password=S3cret", "S3cret", "primary = (not shown");
    /* a value with a blank comes back quoted, so the printed line is a conninfo again */
    expect_masked("host=db application_name='my app'", "S3cret", "application_name='my app'");
}

/* The Redis password: from PGAPI_REDIS_PASSWORD or [redis] password_file (its first line), never the ini;
 * a file others may read is refused, and the password is never printed. */
static void test_redis_password_sources(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "", pw_path[64] = "/tmp/pgapi-unit-pw-XXXXXX", ini[512];
    int fd = mkstemp(pw_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "S3cretRedis\nsecond line\n", 24), 24);
    close(fd);
    snprintf(ini, sizeof(ini), "[redis]\nusername = pgapi\npassword_file = %s\n", pw_path);

    assert_int_equal(load(&c, ini, err, sizeof(err)), 0);
    assert_string_equal(c.redis_password, "S3cretRedis");
    assert_string_equal(c.redis_username, "pgapi");
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    config_print(&c, f);
    fclose(f);
    assert_null(strstr(text, "S3cretRedis"));
    assert_non_null(strstr(text, "password_file = /tmp/pgapi-unit-pw-"));
    free(text);

    setenv("PGAPI_REDIS_PASSWORD", "FromEnv", 1);
    assert_int_equal(load(&c, ini, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "both"));
    assert_int_equal(load(&c, "[redis]\nusername = pgapi\n", err, sizeof(err)), 0);
    assert_string_equal(c.redis_password, "FromEnv");
    unsetenv("PGAPI_REDIS_PASSWORD");

    assert_int_equal(load(&c, "[redis]\nusername = pgapi\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "username is set but no password"));

    chmod(pw_path, 0644);
    assert_int_equal(load(&c, ini, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "other users"));
    assert_null(strstr(err, "S3cretRedis"));
    unlink(pw_path);
    assert_int_equal(load(&c, ini, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot open"));
    assert_int_equal(load(&c, "[redis]\npassword = S3cret\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "unknown key \"password\""));
}

static void test_sentinels(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    assert_int_equal(load(&c, "[redis]\nsentinels = 127.0.0.1:26379, [::1]:26380\nmaster_name = pgapi\n", err,
                          sizeof(err)),
                     0);
    assert_int_equal(c.redis_sentinel_count, 2);
    assert_string_equal(c.redis_sentinels[0].host, "127.0.0.1");
    assert_int_equal(c.redis_sentinels[0].port, 26379);
    assert_string_equal(c.redis_sentinels[1].host, "::1");
    assert_int_equal(c.redis_sentinels[1].port, 26380);
    assert_int_equal(load(&c, "[redis]\nsentinels = 127.0.0.1:26379\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "master_name is empty"));
    assert_int_equal(
        load(&c, "[redis]\nsentinels = sentinel.local:26379\nmaster_name = m\n", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "not an IP literal"));
    const char *bad[] = { "127.0.0.1",       "127.0.0.1:", "127.0.0.1:0",
                          "127.0.0.1:70000", ":26379",     "127.0.0.1:2x" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char ini[160];
        snprintf(ini, sizeof(ini), "[redis]\nsentinels = %s\nmaster_name = m\n", bad[i]);
        assert_int_equal(load(&c, ini, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "sentinels"));
    }
    assert_int_equal(load(&c,
                          "[redis]\nsentinels = 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,"
                          "127.0.0.1:6,127.0.0.1:7,127.0.0.1:8,127.0.0.1:9\nmaster_name = m\n",
                          err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "at most 8"));
}

static void test_overlong_line_named(void **state)
{
    (void)state;
    struct config c;
    char err[CONFIG_ERR_MAX] = "", ini[512];
    char dsn[300];
    memset(dsn, 'x', sizeof(dsn) - 1);
    dsn[sizeof(dsn) - 1] = '\0';
    snprintf(ini, sizeof(ini), "[database]\nprimary = host=a passfile=/%s\n", dsn);
    assert_int_equal(load(&c, ini, err, sizeof(err)), -1);
    assert_non_null(strstr(err, ":2: line of"));
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
        cmocka_unit_test(test_auth_mode_and_listen),
        cmocka_unit_test(test_unknown_key_names_file_and_line),
        cmocka_unit_test(test_bad_values_rejected),
        cmocka_unit_test(test_env_overrides_file),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_sentinels),
        cmocka_unit_test(test_overlong_line_named),
        cmocka_unit_test(test_print_masks_every_password_form),
        cmocka_unit_test(test_redis_password_sources),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
