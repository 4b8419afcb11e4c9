/* seed: loads a deterministic data set into the primary in one transaction: user i is "User <i>",
 * user<i>@example.com, with posts "Post <j> of user <i>"; rows that already exist are skipped. */
#include "tools/seed.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "common/clock.h"
#include "common/log.h"
#include "tools/cli.h"
#include "worker/api/resources/seed.h"

#define SEED_USERS_DEFAULT 1000
#define SEED_USERS_MAX 10000000L
#define SEED_POSTS_DEFAULT 3
#define SEED_POSTS_MAX 1000L
#define SEED_BATCH_USERS 1000 /* users per statement: few round trips, statements of bounded size */

/* Serialises concurrent seeds, so the "post not there yet" test of one cannot race another's insert.
 * Transaction-scoped because PgBouncer's transaction mode keeps no session. Key: "pgapi-sd" in ASCII. */
#define SEED_LOCK_SQL "SELECT pg_advisory_xact_lock(8099549590277944164)"

#define SEED_USAGE                                                             \
    "usage: pgapi seed [--users N] [--posts-per-user M]\n"                     \
    "  --users N            users 1..N (N from 1 to 10000000, default 1000)\n" \
    "  --posts-per-user M   posts per user (0 to 1000, default 3)\n"           \
    "Idempotent: rows already there are kept, only missing ones are inserted.\n"

struct seed_opts {
    long users;
    long posts_per_user;
};

struct seed_counts {
    long users;
    long posts;
};

/* Accepts "--opt VALUE" and "--opt=VALUE". Returns 1 when argv[*i] is opt (advancing *i past its
 * value), 0 when it is another argument, -1 when opt's value is missing or out of range. */
static int seed_opt_take(int argc, char **argv, int *i, const char *opt, long min, long max, long *out)
{
    size_t n = strlen(opt);
    const char *arg = argv[*i], *value;
    if (strncmp(arg, opt, n) != 0 || (arg[n] != '\0' && arg[n] != '='))
        return 0;
    if (arg[n] == '=') {
        value = arg + n + 1;
    } else if (*i + 1 < argc) {
        value = argv[++*i];
    } else {
        log_error("seed: %s needs a value", opt);
        return -1;
    }
    if (cli_parse_long(value, min, max, out) < 0) {
        log_error("seed: %s must be a number from %ld to %ld, got \"%s\"", opt, min, max, value);
        return -1;
    }
    return 1;
}

static int seed_opts_parse(int argc, char **argv, struct seed_opts *o)
{
    o->users = SEED_USERS_DEFAULT;
    o->posts_per_user = SEED_POSTS_DEFAULT;
    for (int i = 0; i < argc; i++) {
        int r = seed_opt_take(argc, argv, &i, "--users", 1, SEED_USERS_MAX, &o->users);
        if (r == 0)
            r = seed_opt_take(argc, argv, &i, "--posts-per-user", 0, SEED_POSTS_MAX, &o->posts_per_user);
        if (r < 0)
            return -1;
        if (r == 0) {
            log_error("seed: unknown argument \"%s\"", argv[i]);
            return -1;
        }
    }
    return 0;
}

/* Runs one INSERT of the seed with integer parameters; adds the rows it inserted to *added. */
static int seed_insert(PGconn *conn, const char *sql, const char *what, const long *params, int nparams,
                       long *added)
{
    char buf[3][24];
    const char *values[3];
    for (int i = 0; i < nparams && i < 3; i++) {
        snprintf(buf[i], sizeof(buf[i]), "%ld", params[i]);
        values[i] = buf[i];
    }
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        char why[1024];
        cli_db_error(conn, res, why, sizeof(why));
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        log_error("seed: inserting %s %ld..%ld failed: %s%s", what, params[0], params[1], why,
                  state && strcmp(state, "42P01") == 0 ? " (run `pgapi migrate up` first)" : "");
        PQclear(res);
        return -1;
    }
    *added += atol(PQcmdTuples(res));
    PQclear(res);
    return 0;
}

/* Everything in one transaction: a failed or interrupted seed leaves no half data set behind. */
static int seed_run(PGconn *conn, const struct seed_opts *o, struct seed_counts *added)
{
    if (cli_db_command(conn, "BEGIN", "seed: BEGIN") < 0 ||
        cli_db_command(conn, SEED_LOCK_SQL, "seed: taking the seed lock") < 0)
        goto fail;
    for (long first = 1; first <= o->users; first += SEED_BATCH_USERS) {
        long last = first + SEED_BATCH_USERS - 1 < o->users ? first + SEED_BATCH_USERS - 1 : o->users;
        const long params[3] = { first, last, o->posts_per_user };
        if (seed_insert(conn, SEED_USERS_SQL, "users", params, 2, &added->users) < 0)
            goto fail;
        if (o->posts_per_user > 0 &&
            seed_insert(conn, SEED_POSTS_SQL, "posts of users", params, 3, &added->posts) < 0)
            goto fail;
    }
    if (cli_db_command(conn, "COMMIT", "seed: COMMIT") < 0)
        goto fail;
    return 0;
fail:
    cli_db_rollback(conn);
    added->users = added->posts = 0;
    return -1;
}

int seed_main(const struct config *cfg, int argc, char **argv)
{
    log_set_process("seed", -1, 0);
    struct seed_opts opts;
    struct seed_counts added = { 0, 0 };
    if (argc == 1 && (strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0)) {
        fputs(SEED_USAGE, stdout);
        return 0;
    }
    if (seed_opts_parse(argc, argv, &opts) < 0) {
        fputs(SEED_USAGE, stderr);
        return 2;
    }
    uint64_t t0 = clock_now_us();
    PGconn *conn = cli_db_connect(cfg->primary_dsn, "pgapi-seed");
    if (!conn)
        return 1;
    int rc = seed_run(conn, &opts, &added);
    PQfinish(conn);
    if (rc < 0)
        return 1;
    double secs = (double)(clock_now_us() - t0) / 1e6;
    printf("seed: inserted %ld users and %ld posts in %.2f s (data set: users 1..%ld, %ld posts each; "
           "rows already there were kept)\n",
           added.users, added.posts, secs, opts.users, opts.posts_per_user);
    return 0;
}
