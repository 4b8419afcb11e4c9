/* main: command line of the pgapi binary: serve (default), --check-config, migrate, seed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/log.h"
#include "master/master.h"
#include "tools/migrate.h"
#include "tools/routes.h"
#include "tools/seed.h"

static void usage_print(FILE *f)
{
    fprintf(f,
            "pgapi %s: HTTP JSON API server for PostgreSQL (users and posts)\n\n"
            "usage: pgapi [--config PATH] [serve]          run the server (master + workers)\n"
            "       pgapi [--config PATH] --check-config   validate the configuration and print it\n"
            "       pgapi [--config PATH] migrate up [N|all] | down [N|all] | status | create NAME\n"
            "       pgapi [--config PATH] seed [--users N] [--posts-per-user M]\n"
            "       pgapi routes                           print the routes, METHOD PATTERN per line\n"
            "       pgapi --version | --help\n\n"
            "options:\n"
            "  -c, --config PATH   ini file (default: $PGAPI_CONFIG, else the embedded defaults)\n"
            "  -t, --check-config  parse and validate, print the effective configuration, exit 0/1\n"
            "  -v, --version       print the version\n"
            "  -h, --help          this text, with every ini key\n\n"
            "signals (master): HUP reload config and replace workers; TERM, INT, QUIT graceful stop\n"
            "(a second one stops at once). Database passwords: PGPASSWORD or PGPASSFILE (libpq).\n"
            "Every key can be overridden by the environment variable shown.\n\nini keys:",
            PGAPI_VERSION);
    config_print_keys(f);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", no_argument, NULL, 't' },
        { "version", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = getenv("PGAPI_CONFIG");
    int check = 0, opt;
    while ((opt = getopt_long(argc, argv, "+c:tvh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check = 1;
            break;
        case 'v':
            printf("pgapi %s\n", PGAPI_VERSION);
            return 0;
        case 'h':
            usage_print(stdout);
            return 0;
        default:
            usage_print(stderr);
            return 2;
        }
    }
    if (path && !*path)
        path = NULL;
    struct config cfg;
    char err[CONFIG_ERR_MAX];
    if (config_load(&cfg, path, err, sizeof(err)) < 0) {
        log_error("configuration: %s", err);
        return 1;
    }
    log_configure(cfg.log_level, cfg.log_format, cfg.access_log);
    if (check) {
        config_print(&cfg, stdout);
        fprintf(stderr, "configuration %s is valid\n", path ? path : "(embedded defaults)");
        return 0;
    }
    const char *cmd = optind < argc ? argv[optind] : "serve";
    if (strcmp(cmd, "serve") == 0)
        return master_run(&cfg, path);
    if (strcmp(cmd, "migrate") == 0)
        return migrate_main(&cfg, argc - optind - 1, argv + optind + 1);
    if (strcmp(cmd, "seed") == 0)
        return seed_main(&cfg, argc - optind - 1, argv + optind + 1);
    if (strcmp(cmd, "routes") == 0)
        return routes_main(argc - optind - 1);
    fprintf(stderr, "pgapi: unknown command \"%s\"\n", cmd);
    usage_print(stderr);
    return 2;
}
