/* test_resource: what the declarations imply, without servers: cache keys, the invalidation and the
 * fences a write derives, and the routes generated, for users, posts and a made-up third resource
 * (comments on posts) declared here, which registers itself as any resource file does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/consistency.h"
#include "worker/api/effects.h"
#include "worker/api/resources/resources.h"
#include "worker/api/router.h"

static const struct resource_field COMMENT_FIELDS[] = { { .name = "text", .min = 1, .max = 500 } };

#define COMMENT_JSON \
    "jsonb_build_object('id', c.id, 'text', c.text, 'post_id', c.post_id, 'version', c.version)"

/* What the derivations read, and the statements the registry asks for (no statement is run here). */
static const struct resource resource_comments = {
    .name = "comment",
    .collection = "comments",
    .path = "/comments",
    .parent = &resource_posts,
    .fields = COMMENT_FIELDS,
    .nfields = 1,
    RESOURCE_SQL_STATEMENTS("comments", "c", COMMENT_JSON, ", c.post_id", "text = $2",
                            "text = COALESCE($2, c.text)", "$3", "$4"),
    RESOURCE_SQL_DELETE("comments", "c", COMMENT_JSON, ", c.post_id"),
    .scopes = { .read = RESOURCE_SCOPE_READ, .write = RESOURCE_SCOPE_WRITE, .remove = RESOURCE_SCOPE_WRITE },
};
RESOURCE_REGISTER(resource_comments);

static void test_registry_holds_every_declaration(void **state)
{
    (void)state;
    assert_int_equal(resource_count(), 3);
    assert_true(resource_registry_check());
    assert_true(resource_index(&resource_users) >= 0);
    assert_true(resource_index(&resource_posts) >= 0);
    assert_ptr_equal(resource_at(resource_index(&resource_comments)), &resource_comments);
}

static void test_cache_keys(void **state)
{
    (void)state;
    char key[CACHE_KEY_MAX];
    assert_true(effects_key_row(&resource_users, 42, key, sizeof(key)));
    assert_string_equal(key, "user:42");
    assert_true(effects_key_embed(&resource_users, 42, key, sizeof(key)));
    assert_string_equal(key, "user-with-posts:42");
    assert_false(effects_key_embed(&resource_posts, 42, key, sizeof(key))); /* posts embed nothing */
    assert_true(effects_key_page(&resource_posts, 0, 50, 0, key, sizeof(key)));
    assert_string_equal(key, "posts:50:0");
    assert_true(effects_key_page(&resource_posts, 7, 10, 3, key, sizeof(key)));
    assert_string_equal(key, "user-posts:7:10:3");
    assert_true(effects_list_name(&resource_comments, 9, key, sizeof(key)));
    assert_string_equal(key, "post-comments:9");
    char small[8];
    assert_false(effects_key_row(&resource_users, 123456789, small, sizeof(small))); /* never truncated */
}

static bool has_gen(const struct cache_change *ch, const char *name)
{
    for (int i = 0; i < ch->ngens; i++)
        if (strcmp(ch->gens[i], name) == 0)
            return true;
    return false;
}

static bool has_key(const struct cache_change *ch, const char *name)
{
    for (int i = 0; i < ch->nkeys; i++)
        if (strcmp(ch->keys[i], name) == 0)
            return true;
    return false;
}

static void test_user_writes_invalidate(void **state)
{
    (void)state;
    struct effects_change out;
    effects_change(&(struct effects_write){ .res = &resource_users, .id = 5, .created = true }, &out);
    assert_int_equal(out.cache.ngens, 1);
    assert_true(has_gen(&out.cache, "users"));
    assert_int_equal(out.cache.nkeys, 0); /* a new row has no key yet */
    effects_change(&(struct effects_write){ .res = &resource_users, .id = 5 }, &out);
    assert_true(has_key(&out.cache, "user:5") && has_key(&out.cache, "user-with-posts:5"));
    assert_false(out.cache.all);
    int64_t posts[] = { 11, 12 };
    struct effects_write deletion = {
        .res = &resource_users, .id = 5, .deleted = true, .cascade = posts, .ncascade = 2
    };
    effects_change(&deletion, &out);
    assert_true(has_gen(&out.cache, "users") && has_gen(&out.cache, "posts"));
    assert_true(has_gen(&out.cache, "user-posts:5"));
    assert_string_equal(out.cache.id_prefix, "post:");
    assert_int_equal(out.cache.nids, 2);
    /* posts have children (comments) the deletion cannot name: the whole cache changes */
    assert_true(out.cache.all);
}

static void test_post_writes_invalidate_their_parent(void **state)
{
    (void)state;
    struct effects_change out;
    effects_change(&(struct effects_write){ .res = &resource_posts, .id = 8, .parent_id = 3 }, &out);
    assert_true(has_gen(&out.cache, "posts") && has_gen(&out.cache, "user-posts:3"));
    assert_true(has_key(&out.cache, "user-with-posts:3") && has_key(&out.cache, "post:8"));
    assert_false(out.cache.all);
    struct effects_write created = { .res = &resource_posts, .id = 8, .created = true, .parent_id = 3 };
    effects_change(&created, &out);
    assert_false(has_key(&out.cache, "post:8"));
    effects_change(&(struct effects_write){ .res = &resource_posts, .id = 8 }, &out); /* parent unknown */
    assert_true(out.cache.all);
    effects_change(&(struct effects_write){ .res = &resource_comments, .id = 2, .parent_id = 8 }, &out);
    assert_true(has_gen(&out.cache, "comments") && has_gen(&out.cache, "post-comments:8"));
    assert_true(has_key(&out.cache, "comment:2"));
    assert_false(out.cache.all);
}

static void test_fences_follow_the_relations(void **state)
{
    (void)state;
    struct consistency *c = consistency_create(resource_count());
    assert_non_null(c);
    int users = resource_index(&resource_users), posts = resource_index(&resource_posts);
    int comments = resource_index(&resource_comments);
    effects_raise(c, &(struct effects_write){ .res = &resource_posts, .id = 8, .parent_id = 3 }, 100);
    assert_true(consistency_get(c, posts) == 100 && consistency_get(c, users) == 0);
    assert_true(effects_row_fence(c, &resource_posts, 8, false) == 100);
    assert_true(effects_row_fence(c, &resource_users, 3, false) == 0);
    assert_true(effects_row_fence(c, &resource_users, 3, true) == 100); /* the user's embedded posts */
    assert_true(effects_list_fence(c, &resource_posts, true) == 100);
    int64_t gone[] = { 21 };
    struct effects_write deletion = {
        .res = &resource_users, .id = 4, .deleted = true, .cascade = gone, .ncascade = 1
    };
    effects_raise(c, &deletion, 200);
    assert_true(consistency_get(c, users) == 200 && consistency_get(c, posts) == 200);
    assert_true(consistency_get(c, comments) == 200); /* the cascade reaches the grandchildren */
    assert_true(effects_row_fence(c, &resource_posts, 21, false) == 200);
    assert_true(effects_row_fence(c, &resource_users, 4, true) == 200);
    assert_true(consistency_get_row(c, comments, CONSISTENCY_ROWS, 99) == 200); /* unnamed: all of them */
    effects_mark_unknown(c, &(struct effects_write){ .res = &resource_comments, .id = 1, .parent_id = 8 });
    assert_true(consistency_get(c, comments) == CONSISTENCY_LSN_NONE);
    assert_true(consistency_get(c, posts) == 200);
    consistency_destroy(c);
}

/* The deployment's copy: a write's fences by name, parsed back by another server and raised there, give
 * that server the same fences as the writer's shared memory. */
static void test_fence_names_carry_a_write_to_another_server(void **state)
{
    (void)state;
    struct consistency *writer = consistency_create(resource_count());
    struct consistency *reader = consistency_create(resource_count());
    assert_non_null(writer);
    assert_non_null(reader);
    int64_t gone[] = { 21, 22 };
    struct effects_write deletion = {
        .res = &resource_users, .id = 4, .deleted = true, .cascade = gone, .ncascade = 2
    };
    effects_raise(writer, &deletion, 300);
    struct effects_change ch;
    effects_change(&deletion, &ch);
    assert_true(ch.cache.fences.n >= 5);
    for (int i = 0; i < ch.cache.fences.n; i++) {
        struct consistency_ref ref;
        const char *name = ch.cache.fences.names[i];
        assert_true(effects_fence_parse(name, strlen(name), &ref));
        assert_true(consistency_ref_valid(reader, ref));
        consistency_ref_raise(reader, ref, 300);
    }
    int tables[] = { resource_index(&resource_users), resource_index(&resource_posts),
                     resource_index(&resource_comments) };
    for (int t = 0; t < 3; t++)
        assert_true(consistency_get(reader, tables[t]) == consistency_get(writer, tables[t]));
    int64_t ids[] = { 4, 21, 22, 23, 99 };
    for (int i = 0; i < 5; i++) {
        assert_true(effects_row_fence(reader, &resource_users, ids[i], true) ==
                    effects_row_fence(writer, &resource_users, ids[i], true));
        assert_true(effects_row_fence(reader, &resource_posts, ids[i], false) ==
                    effects_row_fence(writer, &resource_posts, ids[i], false));
    }
    struct consistency_ref ref;
    const char *bad[] = {
        "users", "users:", "nope:t", "users:r0:4096", "users:a2", "users:r0:1x", "users:tt"
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(effects_fence_parse(bad[i], strlen(bad[i]), &ref));
    char name[EFFECTS_FENCE_NAME_MAX];
    assert_true(effects_fence_name(consistency_ref_row(tables[0], CONSISTENCY_ROWS, 4), name, sizeof(name)));
    assert_true(strncmp(name, "users:r0:", 9) == 0);
    consistency_destroy(writer);
    consistency_destroy(reader);
}

static void test_routes_generated(void **state)
{
    (void)state;
    const char *want[] = {
        "GET /",
        "GET /healthz",
        "GET /readyz",
        "GET /openapi.yaml",
        "GET /users",
        "POST /users",
        "GET /users/:id",
        "PUT /users/:id",
        "PATCH /users/:id",
        "DELETE /users/:id",
        "GET /users/:id/posts",
        "POST /users/:id/posts",
        "GET /posts",
        "GET /posts/:id",
        "PUT /posts/:id",
        "PATCH /posts/:id",
        "DELETE /posts/:id",
        "GET /posts/:id/comments",
        "POST /posts/:id/comments",
        "GET /comments",
        "GET /comments/:id",
        "PUT /comments/:id",
        "PATCH /comments/:id",
        "DELETE /comments/:id",
    };
    size_t n = sizeof(want) / sizeof(want[0]);
    assert_int_equal(router_route_count(), (int)n);
    for (size_t w = 0; w < n; w++) {
        bool found = false;
        for (int i = 0; i < router_route_count() && !found; i++) {
            const char *method;
            char pattern[ROUTER_PATTERN_MAX], line[ROUTER_PATTERN_MAX + 16];
            router_route_label(i, &method, pattern, sizeof(pattern));
            snprintf(line, sizeof(line), "%s %s", method, pattern);
            found = strcmp(line, want[w]) == 0;
        }
        if (!found)
            fail_msg("expected the route %s", want[w]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_holds_every_declaration),
        cmocka_unit_test(test_cache_keys),
        cmocka_unit_test(test_user_writes_invalidate),
        cmocka_unit_test(test_post_writes_invalidate_their_parent),
        cmocka_unit_test(test_fences_follow_the_relations),
        cmocka_unit_test(test_fence_names_carry_a_write_to_another_server),
        cmocka_unit_test(test_routes_generated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
