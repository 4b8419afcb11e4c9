/* cli: pieces shared by the command-line tools (migrate, seed): a blocking libpq connection, server errors
 * on one line, strict number arguments. Never used by workers, whose event loop must not block. */
#ifndef PGAPI_CLI_H
#define PGAPI_CLI_H

#include <stddef.h>

#include <libpq-fe.h>

/* Opens a blocking connection. A connect_timeout of 10 s applies unless dsn sets its own, so a dead server
 * cannot hang the tool. On failure logs host, port, dbname and user (never the password) and returns NULL. */
PGconn *cli_db_connect(const char *dsn, const char *app_name) __attribute__((warn_unused_result));

/* Writes the error carried by res (or, when res is NULL or carries none, the connection's) on one line:
 * message, SQLSTATE, detail, hint. */
void cli_db_error(const PGconn *conn, const PGresult *res, char *buf, size_t cap);

/* Runs a parameterless command with PQexec. Returns 0 when it succeeded; otherwise logs
 * "<what>: <server error>" and returns -1. */
int cli_db_command(PGconn *conn, const char *sql, const char *what) __attribute__((warn_unused_result));

/* Rolls back the open transaction, if any (the caller is already failing, so errors are only logged). */
void cli_db_rollback(PGconn *conn);

/* Parses a whole decimal integer in [min, max]; returns 0, or -1 when s is anything else. */
int cli_parse_long(const char *s, long min, long max, long *out) __attribute__((warn_unused_result));

#endif
