/* pgconn: one libpq connection as a state machine; see pgconn.c. */
#ifndef PGAPI_PGCONN_H
#define PGAPI_PGCONN_H

#include "worker/db/pool_internal.h"

/* A connection of be, not yet connected: it starts connecting at once. -1 when out of memory. */
int pgconn_init(struct pgconn *c, struct backend *be);
/* Drops the connection and schedules a reconnect; its job is retried or failed (see pgconn.c). */
void pgconn_reset(struct pgconn *c, const char *why);
/* Starts connecting (PQconnectStart); a timer bounds it by connect_timeout. */
void pgconn_connect(struct pgconn *c);
/* Sends j (and the queued reads that join its batch) on the idle connection c. */
void pgconn_start(struct pgconn *c, struct job *j);
/* An idle connection of be, or NULL. */
struct pgconn *pgconn_idle(struct backend *be);
/* Drops every idle connection of be (the primary moved). */
void pgconn_reset_idle(struct backend *be, const char *why);
/* Drops be's connections running a read: the reads run again elsewhere. */
void pgconn_abandon_reads(struct backend *be);
/* Sends one statement on c (busy); the answer arrives through c's events. */
void pgconn_send(struct pgconn *c, const char *sql, int nparams, char *const *params, const int *lengths);

#endif
