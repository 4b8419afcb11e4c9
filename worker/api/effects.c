/* effects: fences and cache keys derived from the registry. A table's index in the shared consistency
 * state is its resource's registry index. */
#include "worker/api/effects.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

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

/* ---- fences --------------------------------------------------------------------------------- */

static void fence_add(struct effects_fences *f, struct consistency_ref r)
{
    if (f->n < EFFECTS_FENCES_MAX)
        f->ref[f->n++] = r;
    else
        f->overflow = true;
}

void effects_read_fences_row(const struct resource *r, int64_t id, bool embed, struct effects_fences *out)
{
    *out = (struct effects_fences){ 0 };
    fence_add(out, consistency_ref_row(resource_index(r), CONSISTENCY_ROWS, id));
    if (embed && r->embed.child)
        fence_add(out, consistency_ref_row(resource_index(r->embed.child), CONSISTENCY_ROWS_BY_PARENT, id));
}

void effects_read_fences_list(const struct resource *r, bool by_parent, struct effects_fences *out)
{
    *out = (struct effects_fences){ 0 };
    fence_add(out, consistency_ref_table(resource_index(r)));
    if (by_parent && r->parent)
        fence_add(out, consistency_ref_table(resource_index(r->parent)));
}

uint64_t effects_fences_get(const struct consistency *c, const struct effects_fences *f)
{
    uint64_t lsn = 0;
    for (int i = 0; i < f->n; i++) {
        uint64_t v = consistency_ref_get(c, f->ref[i]);
        lsn = v > lsn ? v : lsn;
    }
    return lsn;
}

uint64_t effects_row_fence(const struct consistency *c, const struct resource *r, int64_t id, bool embed)
{
    struct effects_fences f;
    effects_read_fences_row(r, id, embed, &f);
    return effects_fences_get(c, &f);
}

uint64_t effects_list_fence(const struct consistency *c, const struct resource *r, bool by_parent)
{
    struct effects_fences f;
    effects_read_fences_list(r, by_parent, &f);
    return effects_fences_get(c, &f);
}

/* ---- the fences a write raises -------------------------------------------------------------- */

/* Every descendant of r (its children, theirs, ...), table and both row sets as a whole: a deletion of r's
 * rows took some of theirs along without naming them. */
static void descendants_add(const struct resource *r, bool rows, struct effects_fences *out)
{
    for (int i = 0; i < resource_count(); i++) {
        const struct resource *child = resource_at(i);
        if (child->parent != r)
            continue;
        fence_add(out, consistency_ref_table(i));
        if (rows) {
            fence_add(out, consistency_ref_rowset(i, CONSISTENCY_ROWS));
            fence_add(out, consistency_ref_rowset(i, CONSISTENCY_ROWS_BY_PARENT));
        }
        descendants_add(child, true, out);
    }
}

/* A deletion's children: each child's rows of this parent, and its rows by id (named, or all). */
static void children_add(const struct effects_write *w, struct effects_fences *out)
{
    for (int i = 0; i < resource_count(); i++) {
        const struct resource *child = resource_at(i);
        if (child->parent != w->res)
            continue;
        fence_add(out, consistency_ref_table(i));
        fence_add(out, consistency_ref_row(i, CONSISTENCY_ROWS_BY_PARENT, w->id));
        bool named = child == w->res->cascade_names && w->ncascade >= 0;
        for (int k = 0; named && k < w->ncascade; k++) /* its rows went with it */
            fence_add(out, consistency_ref_row(i, CONSISTENCY_ROWS, w->cascade[k]));
        if (!named)
            fence_add(out, consistency_ref_rowset(i, CONSISTENCY_ROWS)); /* which ones is not known */
        descendants_add(child, true, out);
    }
}

/* The table's fence (lists wait for it), the row's, its parent's set of such rows (all of them when the
 * parent is not known), and a deletion's children. */
void effects_write_fences(const struct effects_write *w, struct effects_fences *out)
{
    const struct resource *r = w->res;
    int t = resource_index(r);
    *out = (struct effects_fences){ 0 };
    fence_add(out, consistency_ref_table(t));
    fence_add(out, consistency_ref_row(t, CONSISTENCY_ROWS, w->id));
    if (r->parent && w->parent_id > 0)
        fence_add(out, consistency_ref_row(t, CONSISTENCY_ROWS_BY_PARENT, w->parent_id));
    else if (r->parent)
        fence_add(out, consistency_ref_rowset(t, CONSISTENCY_ROWS_BY_PARENT));
    if (w->deleted)
        children_add(w, out);
}

/* More fences than the list holds (never with the registry's resources): every table's sets as a whole. */
static void fences_raise_all(struct consistency *c, uint64_t lsn)
{
    for (int t = 0; t < resource_count(); t++) {
        consistency_raise(c, t, lsn);
        consistency_raise_rowset(c, t, CONSISTENCY_ROWS, lsn);
        consistency_raise_rowset(c, t, CONSISTENCY_ROWS_BY_PARENT, lsn);
    }
}

void effects_fences_raise(struct consistency *c, const struct effects_fences *f, uint64_t lsn)
{
    if (f->overflow)
        fences_raise_all(c, lsn);
    for (int i = 0; i < f->n; i++)
        consistency_ref_raise(c, f->ref[i], lsn);
}

/* Each table named once is enough: a mark counts commits, and any count > 0 sends reads to the primary. */
void effects_fences_mark_unknown(struct consistency *c, const struct effects_fences *f)
{
    bool marked[CONSISTENCY_TABLES_MAX] = { false };
    for (int i = 0; i < f->n; i++) {
        int t = f->ref[i].table;
        if (t < CONSISTENCY_TABLES_MAX && !marked[t]) {
            consistency_unknown_mark(c, t);
            marked[t] = true;
        }
    }
}

void effects_raise(struct consistency *c, const struct effects_write *w, uint64_t lsn)
{
    struct effects_fences f;
    effects_write_fences(w, &f);
    effects_fences_raise(c, &f, lsn);
}

void effects_mark_unknown(struct consistency *c, const struct effects_write *w)
{
    struct effects_fences f;
    effects_write_fences(w, &f);
    effects_fences_mark_unknown(c, &f);
}

/* ---- fences by name, as the deployment shares them in Redis ---------------------------------- */

/* "<collection>:t" (a table), "<collection>:a<set>" (a row set as a whole), "<collection>:r<set>:<bucket>".
 * Names, not registry positions: servers of different builds name the same tables alike. */
bool effects_fence_name(struct consistency_ref r, char *buf, size_t cap)
{
    const char *coll = resource_at(r.table)->collection;
    int n;
    if (r.kind == CONSISTENCY_REF_TABLE)
        n = snprintf(buf, cap, "%s:t", coll);
    else if (r.kind == CONSISTENCY_REF_ROWSET)
        n = snprintf(buf, cap, "%s:a%u", coll, (unsigned)r.set);
    else
        n = snprintf(buf, cap, "%s:r%u:%u", coll, (unsigned)r.set, (unsigned)r.bucket);
    return key_print(n, cap);
}

static int table_by_collection(const char *name, size_t len)
{
    for (int i = 0; i < resource_count(); i++) {
        const char *coll = resource_at(i)->collection;
        if (strlen(coll) == len && strncmp(coll, name, len) == 0)
            return i;
    }
    return -1;
}

bool effects_fence_parse(const char *text, size_t len, struct consistency_ref *out)
{
    const char *colon = memchr(text, ':', len);
    if (!colon || colon + 1 >= text + len)
        return false;
    int t = table_by_collection(text, (size_t)(colon - text));
    char rest[24];
    size_t rlen = (size_t)(text + len - colon - 1);
    if (t < 0 || rlen >= sizeof(rest))
        return false;
    memcpy(rest, colon + 1, rlen);
    rest[rlen] = '\0';
    unsigned set, bucket;
    char extra;
    if (strcmp(rest, "t") == 0)
        *out = consistency_ref_table(t);
    else if (sscanf(rest, "a%u%c", &set, &extra) == 1 && set < CONSISTENCY_ROWSETS)
        *out = consistency_ref_rowset(t, (enum consistency_rowset)set);
    else if (sscanf(rest, "r%u:%u%c", &set, &bucket, &extra) == 2 && set < CONSISTENCY_ROWSETS &&
             bucket < CONSISTENCY_BUCKETS)
        *out = (struct consistency_ref){
            .table = (uint8_t)t, .kind = CONSISTENCY_REF_ROW, .set = (uint8_t)set, .bucket = (uint16_t)bucket
        };
    else
        return false;
    return true;
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

/* The fences the write raises, by name; past the list's bound (never with the registry's resources) every
 * table's sets as a whole would be needed: the whole cache moves to a new epoch instead. */
static void change_fences(const struct effects_write *w, struct effects_change *out)
{
    struct effects_fences f;
    effects_write_fences(w, &f);
    struct cache_change *ch = &out->cache;
    for (int i = 0; i < f.n; i++) {
        if (!effects_fence_name(f.ref[i], out->fence_names[i], EFFECTS_FENCE_NAME_MAX)) {
            ch->all = true;
            continue;
        }
        out->fence_ptrs[ch->fences.n++] = out->fence_names[i];
    }
    ch->fences.names = out->fence_ptrs;
    if (f.overflow)
        ch->all = true;
}

void effects_fences_name_all(const struct effects_fences *f, struct effects_read_names *out)
{
    out->cache = (struct cache_fences){ .names = out->ptrs };
    for (int i = 0; i < f->n && i < CACHE_READ_FENCES_MAX; i++)
        if (effects_fence_name(f->ref[i], out->names[out->cache.n], EFFECTS_FENCE_NAME_MAX)) {
            out->ptrs[out->cache.n] = out->names[out->cache.n];
            out->cache.n++;
        }
}

void effects_change(const struct effects_write *w, struct effects_change *out)
{
    const struct resource *r = w->res;
    struct cache_change *ch = &out->cache;
    memset(out, 0, sizeof(*out));
    change_fences(w, out);
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
