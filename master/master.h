/* master: supervises worker processes; never opens a database or Redis connection. */
#ifndef PGAPI_MASTER_H
#define PGAPI_MASTER_H

#include "common/config.h"

/* Runs the supervisor until a stop signal; returns the process exit code. `config_path` (may be NULL
 * for the embedded defaults) is re-read on SIGHUP. */
int master_run(const struct config *cfg, const char *config_path);

#endif
