/* resource: the registry of declarations, read from the linker section RESOURCE_REGISTER fills (the
 * linker defines __start_/__stop_ symbols for a section whose name is a C identifier). */
#include "worker/api/resource.h"

#include "common/consistency.h"
#include "common/log.h"

extern const struct resource *const __start_pgapi_resources[];
extern const struct resource *const __stop_pgapi_resources[];

int resource_count(void)
{
    return (int)(__stop_pgapi_resources - __start_pgapi_resources);
}

const struct resource *resource_at(int i)
{
    return __start_pgapi_resources[i];
}

int resource_index(const struct resource *r)
{
    for (int i = 0; i < resource_count(); i++)
        if (resource_at(i) == r)
            return i;
    return -1;
}

bool resource_registry_check(void)
{
    int n = resource_count();
    if (n < 1 || n > CONSISTENCY_TABLES_MAX) {
        log_error("%d resources declared: the shared tables are sized for 1 to %d", n,
                  CONSISTENCY_TABLES_MAX);
        return false;
    }
    for (int i = 0; i < n; i++) {
        const struct resource *r = resource_at(i);
        bool fields_ok = r->nfields >= 1 && r->nfields <= RESOURCE_FIELDS_MAX;
        if (!fields_ok || (r->parent && resource_index(r->parent) < 0)) {
            log_error("resource %s: %d body fields (1 to %d), parent %s", r->name, r->nfields,
                      RESOURCE_FIELDS_MAX, r->parent ? r->parent->name : "none");
            return false;
        }
        if (!r->sql_replace_if || !r->sql_patch_if || !r->sql_delete_if) { /* If-Match needs all three */
            log_error("resource %s: a conditional statement (sql_replace_if, sql_patch_if, sql_delete_if) is "
                      "missing",
                      r->name);
            return false;
        }
        /* Idempotency-Key: every write needs its keyed form (create only when the resource creates) */
        if (!r->sql_replace_keyed || !r->sql_patch_keyed || !r->sql_delete_keyed ||
            (r->sql_create && !r->sql_create_keyed)) {
            log_error("resource %s: a keyed statement (sql_create_keyed, sql_replace_keyed, sql_patch_keyed, "
                      "sql_delete_keyed) is missing",
                      r->name);
            return false;
        }
        if (!r->scopes.read || !r->scopes.write || !r->scopes.remove) { /* [auth] needs one per route */
            log_error("resource %s: a scope (scopes.read, scopes.write, scopes.remove) is missing", r->name);
            return false;
        }
    }
    return true;
}
