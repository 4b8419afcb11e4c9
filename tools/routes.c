/* routes: the router's route list on standard output. */
#include "tools/routes.h"

#include <stdio.h>

#include "worker/api/resource.h"
#include "worker/api/router.h"

int routes_main(int argc)
{
    if (argc > 0) {
        fprintf(stderr, "pgapi: routes takes no argument\n");
        return 2;
    }
    if (!resource_registry_check())
        return 1;
    for (int i = 0; i < router_route_count(); i++) {
        const char *method;
        char pattern[ROUTER_PATTERN_MAX];
        router_route_label(i, &method, pattern, sizeof(pattern));
        printf("%s %s\n", method, pattern);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
