/* migrate: versioned SQL migrations (migrations/NNNN_name.sql with up and down parts) applied to the
 * primary, tracked in schema_migrations, one transaction each, serialised by an advisory lock. */
#ifndef PGAPI_MIGRATE_H
#define PGAPI_MIGRATE_H

#include "common/config.h"

/* argv after "migrate": up [N] | down [N] | status | create NAME. Returns the process exit code. */
int migrate_main(const struct config *cfg, int argc, char **argv);

#endif
