/* sqlstate: what a SQLSTATE says about the link to the server, for the pool (retry a statement without
 * side effect elsewhere) and dbreply (tell a writer its outcome is unknown). */
#ifndef PGAPI_SQLSTATE_H
#define PGAPI_SQLSTATE_H

#include <stdbool.h>
#include <string.h>

/* The error says the server (or PgBouncer's link to it) went or cannot serve now, not that the
 * statement was wrong: a connection exception (08xxx, e.g. PgBouncer's "server conn crashed?"), the
 * session terminated (57P01 admin_shutdown, 57P02 crash_shutdown), or the server starting up, in
 * recovery or shutting down (57P03 cannot_connect_now). 57P03 belongs here: the session it came on is
 * of no use, and a statement without side effect must run again elsewhere, like after any lost link.
 * It differs in one way, which sqlstate_before_statement says: it is sent only when a session starts
 * (PgBouncer forwards it from a failed server login), before the statement ran. */
static inline bool sqlstate_link_lost(const char *st)
{
    return strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
           strcmp(st, "57P03") == 0;
}

/* A link error that is only ever sent before any statement of the session ran: a write that got it was
 * not applied (dbreply answers database_unavailable, not write_outcome_unknown). */
static inline bool sqlstate_before_statement(const char *st)
{
    return strcmp(st, "57P03") == 0;
}

#endif
