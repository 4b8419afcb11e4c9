/* routes: `pgapi routes` prints the routes the server answers (the router's, generated from the
 * resource registry), METHOD PATTERN per line, for tests and documentation checks. */
#ifndef PGAPI_ROUTES_H
#define PGAPI_ROUTES_H

/* argc: the arguments after "routes" (none taken). Returns the process exit code. */
int routes_main(int argc);

#endif
