/* test_router: the generated route table and its matching: ids, 404, 405 with Allow, without servers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <http_parser.h>

#include "worker/api/resource.h"
#include "worker/api/router.h"

/* The route's pattern, as `pgapi routes` prints it */
static const char *pattern_of(int index, char *buf, size_t cap)
{
    const char *method;
    router_route_label(index, &method, buf, cap);
    return buf;
}

static void test_item_route_takes_an_id(void **state)
{
    (void)state;
    struct router_match m;
    char buf[ROUTER_PATTERN_MAX];
    router_find(HTTP_GET, "/users/42", &m);
    assert_true(m.index >= 0);
    assert_string_equal(pattern_of(m.index, buf, sizeof(buf)), "/users/:id");
    assert_int_equal(m.args.nid, 1);
    assert_true(m.args.id[0] == 42);
    assert_string_equal(m.res->name, "user");
    assert_int_equal(m.kind, ROUTE_GET);
    router_find(HTTP_HEAD, "/users/42", &m); /* HEAD is GET */
    assert_int_equal(m.kind, ROUTE_GET);
    router_find(HTTP_DELETE, "/posts/9223372036854775807", &m);
    assert_int_equal(m.kind, ROUTE_DELETE);
    assert_string_equal(m.res->name, "post");
}

static void test_bad_ids_are_404(void **state)
{
    (void)state;
    const char *paths[] = {
        "/users/0", "/users/007",    "/users/-1", "/users/1x",       "/users/9223372036854775808",
        "/users/",  "/users//posts", "/nope",     "/users/1/posts/2"
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        struct router_match m;
        router_find(HTTP_GET, paths[i], &m);
        assert_int_equal(m.index, -1);
        assert_string_equal(m.allow, "");
    }
}

static void test_known_path_wrong_method_allows(void **state)
{
    (void)state;
    struct router_match m;
    router_find(HTTP_POST, "/users/1", &m);
    assert_int_equal(m.index, -1);
    assert_string_equal(m.allow, "GET, HEAD, PUT, PATCH, DELETE");
    router_find(HTTP_DELETE, "/users", &m);
    assert_string_equal(m.allow, "GET, HEAD, POST");
    router_find(HTTP_POST, "/posts", &m); /* a post is created only under its user */
    assert_string_equal(m.allow, "GET, HEAD");
    router_find(HTTP_PUT, "/users/3/posts", &m);
    assert_string_equal(m.allow, "GET, HEAD, POST");
    router_find(HTTP_POST, "/healthz", &m);
    assert_string_equal(m.allow, "GET, HEAD");
}

static void test_child_routes_under_parent(void **state)
{
    (void)state;
    struct router_match m;
    router_find(HTTP_POST, "/users/5/posts", &m);
    assert_int_equal(m.kind, ROUTE_CREATE_BY_PARENT);
    assert_string_equal(m.res->name, "post");
    assert_true(m.args.id[0] == 5);
    router_find(HTTP_GET, "/", &m);
    assert_int_equal(m.index, 0);
    assert_non_null(m.fn);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_item_route_takes_an_id),
        cmocka_unit_test(test_bad_ids_are_404),
        cmocka_unit_test(test_known_path_wrong_method_allows),
        cmocka_unit_test(test_child_routes_under_parent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
