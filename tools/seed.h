/* seed: loads a deterministic data set (users with a few posts each) in one transaction, idempotent. */
#ifndef PGAPI_SEED_H
#define PGAPI_SEED_H

#include "common/config.h"

/* argv after "seed": [--users N] [--posts-per-user M]. Returns the process exit code. */
int seed_main(const struct config *cfg, int argc, char **argv);

#endif
