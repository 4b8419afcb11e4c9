/* cli: blocking libpq helpers and argument parsing for the command-line tools (migrate, seed).
 * Blocking calls are right here: the tools are short-lived programs, not event-loop workers. */
#include "tools/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* Used unless the conninfo sets connect_timeout itself: long enough for a busy server, short enough
 * that a dead one fails the command instead of hanging it. */
#define CLI_CONNECT_TIMEOUT "10"

static const char *text_or(const char *s, const char *fallback)
{
    return s && *s ? s : fallback;
}

/* Server NOTICEs (e.g. "relation already exists, skipping") would otherwise go to stderr unformatted. */
static void cli_notice_log(void *arg, const PGresult *res)
{
    (void)arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *message = text_or(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), "?");
    if (severity && strcmp(severity, "WARNING") == 0)
        log_warn("server warning: %s", message);
    else
        log_debug("server %s: %s", text_or(severity, "notice"), message);
}

PGconn *cli_db_connect(const char *dsn, const char *app_name)
{
    /* expand_dbname=1 expands dsn at its position in the list, so a connect_timeout inside dsn overrides
     * the default placed before it, and application_name after it names the tool in pg_stat_activity. */
    const char *const keys[] = { "connect_timeout", "dbname", "application_name", NULL };
    const char *const values[] = { CLI_CONNECT_TIMEOUT, dsn, app_name, NULL };
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (!conn) {
        log_error("cannot connect to the database: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        /* libpq reports the values it actually used (defaults and environment applied); none is a secret */
        log_error("cannot connect to the database (host=%s port=%s dbname=%s user=%s): %s",
                  text_or(PQhost(conn), "?"), text_or(PQport(conn), "?"), text_or(PQdb(conn), "?"),
                  text_or(PQuser(conn), "?"), text_or(PQerrorMessage(conn), "unknown error"));
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeReceiver(conn, cli_notice_log, NULL);
    return conn;
}

void cli_db_error(const PGconn *conn, const PGresult *res, char *buf, size_t cap)
{
    const char *message = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!message) {
        /* no server error in res: the connection broke, or libpq itself failed */
        const char *why = res ? PQresultErrorMessage(res) : "";
        if (!*why)
            why = conn ? PQerrorMessage(conn) : "";
        snprintf(buf, cap, "%s", text_or(why, "unknown error (connection lost?)"));
        return;
    }
    const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    snprintf(buf, cap, "%s (SQLSTATE %s)%s%s%s%s", message, text_or(sqlstate, "?"),
             detail ? "; detail: " : "", detail ? detail : "", hint ? "; hint: " : "", hint ? hint : "");
}

int cli_db_command(PGconn *conn, const char *sql, const char *what)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char why[1024];
        cli_db_error(conn, res, why, sizeof(why));
        log_error("%s: %s", what, why);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

void cli_db_rollback(PGconn *conn)
{
    if (PQtransactionStatus(conn) == PQTRANS_IDLE)
        return;
    PGresult *res = PQexec(conn, "ROLLBACK");
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
        char why[1024];
        cli_db_error(conn, res, why, sizeof(why));
        log_error("rollback failed (the server rolls back when the connection closes): %s", why);
    }
    PQclear(res);
}

int cli_parse_long(const char *s, long min, long max, long *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}
