/* effects: fences and cache keys derived from the registry. A table's index in the shared consistency
 * state is its resource's registry index. */
#include "worker/api/effects.h"

#include <inttypes.h>
#include <stdio.h>

#include "common/consistency.h"

static bool key_print(int n, size_t cap)
{
    return n >= 0 && (size_t)n < cap;
}

bool effects_key_row(const struct resource *r, int64_t id, char *buf, size_t cap)
{
    return key_print(snprintf(buf, cap, "%s:%" PRId64, r->name, id), cap);
}

bool effects_key_embed(const struct resource *r, int64_t id, char *buf, size_t cap)
{
    return r->embed.child &&
           key_print(snprintf(buf, cap, "%s-with-%s:%" PRId64, r->name, r->embed.child->collection, id), cap);
}

bool effects_list_name(const struct resource *r, int64_t parent_id, char *buf, size_t cap)
{
    if (!parent_id)
        return key_print(snprintf(buf, cap, "%s", r->collection), cap);
    return r->parent &&
           key_print(snprintf(buf, cap, "%s-%s:%" PRId64, r->parent->name, r->collection, parent_id), cap);
}

bool effects_key_page(const struct resource *r, int64_t parent_id, int64_t limit, int64_t after, char *buf,
                      size_t cap)
{
    char list[CACHE_KEY_MAX];
    return effects_list_name(r, parent_id, list, sizeof(list)) &&
           key_print(snprintf(buf, cap, "%s:%" PRId64 ":%" PRId64, list, limit, after), cap);
}

static uint64_t max_lsn(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

uint64_t effects_row_fence(const struct consistency *c, const struct resource *r, int64_t id, bool embed)
{
    uint64_t lsn = consistency_get_row(c, resource_index(r), CONSISTENCY_ROWS, id);
    if (embed && r->embed.child)
        lsn = max_lsn(lsn,
                      consistency_get_row(c, resource_index(r->embed.child), CONSISTENCY_ROWS_BY_PARENT, id));
    return lsn;
}

uint64_t effects_list_fence(const struct consistency *c, const struct resource *r, bool by_parent)
{
    uint64_t lsn = consistency_get(c, resource_index(r));
    if (by_parent && r->parent)
        lsn = max_lsn(lsn, consistency_get(c, resource_index(r->parent)));
    return lsn;
}

/* ---- the tables a write changed ------------------------------------------------------------- */

typedef void (*table_fn)(struct consistency *c, const struct resource *r, const void *arg);

/* fn on every resource whose rows a deletion of r's rows takes along: its children, theirs, ... */
static void descendants_each(struct consistency *c, const struct resource *r, table_fn fn, const void *arg)
{
    for (int i = 0; i < resource_count(); i++) {
        const struct resource *child = resource_at(i);
        if (child->parent == r) {
            fn(c, child, arg);
            descendants_each(c, child, fn, arg);
        }
    }
}

/* fn on the write's table, and on every table its deletion cascaded to */
static void tables_each(struct consistency *c, const struct effects_write *w, table_fn fn, const void *arg)
{
    fn(c, w->res, arg);
    if (w->deleted)
        descendants_each(c, w->res, fn, arg);
}

static void table_raise(struct consistency *c, const struct resource *r, const void *arg)
{
    consistency_raise(c, resource_index(r), *(const uint64_t *)arg);
}

static void table_mark_unknown(struct consistency *c, const struct resource *r, const void *arg)
{
    (void)arg;
    consistency_unknown_mark(c, resource_index(r));
}

void effects_mark_unknown(struct consistency *c, const struct effects_write *w)
{
    tables_each(c, w, table_mark_unknown, NULL);
}

/* ---- row fences ----------------------------------------------------------------------------- */

/* A descendant's rows that a deletion removed without naming them: all of them changed. */
static void rows_raise_all(struct consistency *c, const struct resource *r, const void *arg)
{
    uint64_t lsn = *(const uint64_t *)arg;
    consistency_raise_rowset(c, resource_index(r), CONSISTENCY_ROWS, lsn);
    consistency_raise_rowset(c, resource_index(r), CONSISTENCY_ROWS_BY_PARENT, lsn);
}

/* A deletion's children: each child's rows of this parent, and its rows by id (named, or all). */
static void children_raise(struct consistency *c, const struct effects_write *w, uint64_t lsn)
{
    for (int i = 0; i < resource_count(); i++) {
        const struct resource *child = resource_at(i);
        if (child->parent != w->res)
            continue;
        int t = resource_index(child);
        consistency_raise_row(c, t, CONSISTENCY_ROWS_BY_PARENT, w->id, lsn);
        bool named = child == w->res->cascade_names && w->ncascade >= 0;
        for (int k = 0; named && k < w->ncascade; k++) /* its rows went with it */
            consistency_raise_row(c, t, CONSISTENCY_ROWS, w->cascade[k], lsn);
        if (!named)
            consistency_raise_rowset(c, t, CONSISTENCY_ROWS, lsn); /* which ones is not known */
        descendants_each(c, child, rows_raise_all, &lsn);
    }
}

/* The row fences (see effects_row_fence): the row's; its parent's set of such rows (all of them when
 * the parent is not known); a deletion's children. */
static void rows_raise(struct consistency *c, const struct effects_write *w, uint64_t lsn)
{
    int t = resource_index(w->res);
    consistency_raise_row(c, t, CONSISTENCY_ROWS, w->id, lsn);
    if (w->res->parent && w->parent_id > 0)
        consistency_raise_row(c, t, CONSISTENCY_ROWS_BY_PARENT, w->parent_id, lsn);
    else if (w->res->parent)
        consistency_raise_rowset(c, t, CONSISTENCY_ROWS_BY_PARENT, lsn);
    if (w->deleted)
        children_raise(c, w, lsn);
}

void effects_raise(struct consistency *c, const struct effects_write *w, uint64_t lsn)
{
    tables_each(c, w, table_raise, &lsn);
    rows_raise(c, w, lsn);
}

/* ---- cache invalidation --------------------------------------------------------------------- */

static char *gen_next(struct cache_change *ch)
{
    if (ch->ngens >= CACHE_CHANGE_GENS_MAX) {
        ch->all = true; /* more lists than one invalidation names: drop everything instead */
        return NULL;
    }
    return ch->gens[ch->ngens++];
}

static char *key_next(struct cache_change *ch)
{
    if (ch->nkeys >= CACHE_CHANGE_KEYS_MAX) {
        ch->all = true;
        return NULL;
    }
    return ch->keys[ch->nkeys++];
}

static void list_add(struct cache_change *ch, const struct resource *r, int64_t parent_id)
{
    char *gen = gen_next(ch);
    if (gen && !effects_list_name(r, parent_id, gen, CACHE_KEY_MAX))
        ch->all = true;
}

static void row_key_add(struct cache_change *ch, const struct resource *r, int64_t id, bool embed)
{
    char *key = key_next(ch);
    if (!key)
        return;
    bool ok;
    if (embed)
        ok = effects_key_embed(r, id, key, CACHE_KEY_MAX);
    else
        ok = effects_key_row(r, id, key, CACHE_KEY_MAX);
    if (!ok)
        ch->all = true;
}

/* A deletion's children: every list of them, and their keys by id when the statement named them; rows
 * it could not name (or grandchildren, never named) move the whole cache to a new epoch. */
static void children_change(const struct effects_write *w, struct effects_change *out)
{
    struct cache_change *ch = &out->cache;
    for (int i = 0; i < resource_count(); i++) {
        const struct resource *child = resource_at(i);
        if (child->parent != w->res)
            continue;
        list_add(ch, child, 0);
        list_add(ch, child, w->id);
        for (int k = 0; k < resource_count(); k++)
            if (resource_at(k)->parent == child)
                ch->all = true;
        if (child != w->res->cascade_names || w->ncascade < 0) {
            ch->all = true;
            continue;
        }
        snprintf(out->id_prefix, sizeof(out->id_prefix), "%s:", child->name);
        ch->id_prefix = out->id_prefix;
        ch->ids = w->cascade;
        ch->nids = w->ncascade;
    }
}

void effects_change(const struct effects_write *w, struct effects_change *out)
{
    const struct resource *r = w->res;
    struct cache_change *ch = &out->cache;
    *out = (struct effects_change){ 0 };
    list_add(ch, r, 0);
    if (r->parent && w->parent_id <= 0) {
        ch->all = true; /* cannot name the parent's lists: drop everything rather than risk a stale entry */
        return;
    }
    if (r->parent) {
        list_add(ch, r, w->parent_id);
        if (r->parent->embed.child == r)
            row_key_add(ch, r->parent, w->parent_id, true);
    }
    if (w->deleted)
        children_change(w, out);
    if (!w->created) {
        row_key_add(ch, r, w->id, false);
        if (r->embed.child)
            row_key_add(ch, r, w->id, true);
    }
}
