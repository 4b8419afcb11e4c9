/* test_idempotency: the keyed statement's parameter (worker/api/idempotency.c): its text[] literal, and a
 * request hash that sees the request's meaning (method, path, fields, absent or empty) and nothing else;
 * and how a keyed statement's result reads (its idempotency column, the primary key's race). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "worker/api/idempotency.h"

static struct http_request request(const char *method, char *path, const char *subject)
{
    struct http_request req = { .method_name = method, .path = path };
    snprintf(req.subject, sizeof(req.subject), "%s", subject);
    return req;
}

/* The request hash: the third element of the literal. */
static void hash_of(struct http_request *req, const char *const *params, int n, char *out)
{
    char buf[IDEMPOTENCY_PARAM_MAX];
    assert_true(idempotency_param(req, "k", 200, 60, params, n, buf));
    const char *p = strstr(buf, "\"k\",");
    assert_non_null(p);
    memcpy(out, p + 4, HTTP_ETAG_HEX);
    out[HTTP_ETAG_HEX] = '\0';
}

static void test_literal(void **state)
{
    (void)state;
    char path[] = "/users/7", buf[IDEMPOTENCY_PARAM_MAX];
    struct http_request req = request("PATCH", path, "");
    const char *params[] = { "7", "n", NULL };
    assert_true(idempotency_param(&req, "a\"b\\c", 200, 86400, params, 3, buf));
    /* {"",  "a\"b\\c", <32 hex>, 200, 86400} */
    assert_memory_equal(buf, "{\"\",\"a\\\"b\\\\c\",", strlen("{\"\",\"a\\\"b\\\\c\","));
    const char *tail = buf + strlen("{\"\",\"a\\\"b\\\\c\",");
    assert_int_equal(strspn(tail, "0123456789abcdef"), HTTP_ETAG_HEX);
    assert_string_equal(tail + HTTP_ETAG_HEX, ",200,86400}");
    req = request("PATCH", path, "alice \"admin\"");
    assert_true(idempotency_param(&req, "k", 204, 1, params, 3, buf));
    assert_memory_equal(buf, "{\"alice \\\"admin\\\"\",\"k\",", strlen("{\"alice \\\"admin\\\"\",\"k\","));
}

static void test_hash_sees_the_request(void **state)
{
    (void)state;
    char p7[] = "/users/7", p8[] = "/users/8";
    char a[HTTP_ETAG_HEX + 1], b[HTTP_ETAG_HEX + 1];
    struct http_request req = request("PATCH", p7, "");
    const char *one[] = { "7", "n", NULL }, *same[] = { "7", "n", NULL };
    hash_of(&req, one, 3, a);
    hash_of(&req, same, 3, b);
    assert_string_equal(a, b); /* the same request: the same hash */
    const char *empty[] = { "7", "n", "" }, *other[] = { "7", "m", NULL }, *shifted[] = { "7", NULL, "n" };
    hash_of(&req, empty, 3, b);
    assert_string_not_equal(a, b); /* absent is not empty */
    hash_of(&req, other, 3, b);
    assert_string_not_equal(a, b);
    hash_of(&req, shifted, 3, b);
    assert_string_not_equal(a, b); /* a value in another field */
    const char *joined[] = { "7n" }, *split[] = { "7", "n" };
    hash_of(&req, joined, 1, a);
    hash_of(&req, split, 2, b);
    assert_string_not_equal(a, b); /* lengths keep the parts apart */
    hash_of(&req, one, 3, a);
    struct http_request put = request("PUT", p7, ""), moved = request("PATCH", p8, "");
    hash_of(&put, one, 3, b);
    assert_string_not_equal(a, b);
    hash_of(&moved, one, 3, b);
    assert_string_not_equal(a, b);
}

/* A keyed statement's one row: (id, body, idempotency, idempotency_status, idempotency_id,
 * idempotency_body). */
static PGresult *keyed_result(const char *outcome, const char *status, const char *body)
{
    static const char *const names[] = {
        "id", "body", "idempotency", "idempotency_status", "idempotency_id", "idempotency_body"
    };
    PGresAttDesc cols[6];
    for (int i = 0; i < 6; i++)
        cols[i] = (PGresAttDesc){ .name = (char *)names[i], .typid = 25, .typlen = -1, .atttypmod = -1 };
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_true(PQsetResultAttrs(res, 6, cols));
    const char *values[] = { NULL, NULL, outcome, status, status ? "42" : NULL, body };
    for (int i = 0; i < 6; i++)
        assert_true(PQsetvalue(res, 0, i, (char *)values[i], values[i] ? (int)strlen(values[i]) : -1));
    return res;
}

static void test_outcomes(void **state)
{
    (void)state;
    PGresult *res = keyed_result("replay", "201", "{\"id\":42}");
    struct pool_result r = { .status = POOL_OK, .res = res, .sqlstate = "", .message = "" };
    assert_int_equal(idempotency_outcome(&r), IDEMPOTENCY_REPLAY);
    struct idempotency_answer a;
    idempotency_replay(&r, &a);
    assert_int_equal(a.status, 201);
    assert_string_equal(a.id, "42");
    assert_int_equal(a.len, strlen("{\"id\":42}"));
    PQclear(res);
    r.res = res = keyed_result("replay", "204", NULL);
    idempotency_replay(&r, &a);
    assert_int_equal(a.status, 204);
    assert_null(a.body);
    PQclear(res);
    r.res = res = keyed_result("mismatch", NULL, NULL);
    assert_int_equal(idempotency_outcome(&r), IDEMPOTENCY_MISMATCH);
    PQclear(res);
    r.res = res = keyed_result("busy", NULL, NULL);
    assert_int_equal(idempotency_outcome(&r), IDEMPOTENCY_BUSY);
    PQclear(res);
    r.res = res = keyed_result("write", NULL, NULL);
    assert_int_equal(idempotency_outcome(&r), IDEMPOTENCY_WRITE);
    PQclear(res);
    r.res = res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK); /* no row: the plain statement's 404 */
    assert_int_equal(idempotency_outcome(&r), IDEMPOTENCY_WRITE);
    PQclear(res);
    /* another statement's error is not the key's race */
    struct pool_result err = { .status = POOL_ERR_SQL, .sqlstate = "23505", .message = "" };
    assert_int_equal(idempotency_outcome(&err), IDEMPOTENCY_WRITE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal),
        cmocka_unit_test(test_hash_sees_the_request),
        cmocka_unit_test(test_outcomes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
