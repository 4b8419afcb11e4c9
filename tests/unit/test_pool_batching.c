/* Unit tests for the pool's batching decision (worker/db/queue: queue_batch_joins, queue_batch_take):
 * which queued reads join a statement's batch, on the primary and on a replica, across the primary's and
 * the replicas' queues, the BATCH_MAX limit, and writes of one row kept apart.
 * Jobs are built as the pool builds them; no server, no connection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "worker/db/batch.h"
#include "worker/db/queue.h"

static const char SQL_ONE[] = "SELECT id, name FROM t WHERE id = $1";
static const char SQL_MANY[] = "SELECT id, id, name FROM t WHERE id = ANY($1)";
static const char SQL_OTHER_MANY[] = "SELECT id, id FROM u WHERE id = ANY($1)";

static struct job *read_new(const char *batch_sql, uint64_t fence)
{
    const char *params[] = { "7" };
    struct pool_query q = { .sql = SQL_ONE, .nparams = 1, .params = params, .batch_sql = batch_sql };
    struct job *j = job_new(&q, JOB_READ, NULL, NULL);
    assert_non_null(j);
    j->fence = fence;
    return j;
}

static struct job *write_new(const char *batch_sql, const char *id)
{
    const char *params[] = { id, "x", NULL };
    struct pool_query q = {
        .sql = SQL_ONE, .nparams = 3, .params = params, .batch_sql = batch_sql, .batch_distinct = true
    };
    struct job *j = job_new(&q, JOB_WRITE, NULL, NULL);
    assert_non_null(j);
    return j;
}

static int batch_len(const struct job *lead)
{
    int n = 0;
    for (const struct job *k = lead->batch; k; k = k->next)
        n++;
    return n;
}

static void jobs_free(struct job *j)
{
    for (struct job *next; j; j = next) {
        next = j->next;
        free(j);
    }
}

static void queue_free(struct side_queue *q)
{
    jobs_free(q->head);
    *q = (struct side_queue){ 0 };
}

static void test_same_statement_joins_in_order(void **state)
{
    (void)state;
    struct side_queue q = { 0 };
    struct job *a = read_new(SQL_MANY, 0), *other = read_new(SQL_OTHER_MANY, 0), *b = read_new(SQL_MANY, 0);
    struct job *plain = read_new(NULL, 0), *c = read_new(SQL_MANY, 0);
    queue_push(&q, a);
    queue_push(&q, other);
    queue_push(&q, b);
    queue_push(&q, plain);
    queue_push(&q, c);
    struct job *lead = read_new(SQL_MANY, 0);
    assert_int_equal(queue_batch_take(&q, lead, NULL, 0), 3);
    assert_ptr_equal(lead->batch, a);
    assert_ptr_equal(a->next, b);
    assert_ptr_equal(b->next, c);
    assert_null(c->next);
    /* the others stay queued, in order, with the tail and the length right */
    assert_int_equal(q.len, 2);
    assert_ptr_equal(q.head, other);
    assert_ptr_equal(other->next, plain);
    assert_ptr_equal(q.tail, plain);
    assert_null(plain->next);
    jobs_free(lead->batch);
    free(lead);
    queue_free(&q);
}

static void test_a_job_aimed_at_one_backend_stays(void **state)
{
    (void)state;
    struct job *lead = read_new(SQL_MANY, 0), *k = read_new(SQL_MANY, 0);
    struct backend be = { 0 };
    assert_true(queue_batch_joins(lead, k, NULL, 0));
    k->target = &be; /* a health check runs on one given backend */
    assert_false(queue_batch_joins(lead, k, NULL, 0));
    free(lead);
    free(k);
}

static void test_on_a_replica_only_reads_it_may_serve(void **state)
{
    (void)state;
    struct route_backend replica = { .healthy = true, .lsn = 500, .idle = 1, .connected = 2, .nconns = 2 };
    struct side_queue q = { 0 };
    struct job *near = read_new(SQL_MANY, 400), *far = read_new(SQL_MANY, 600);
    struct job *primary_only = read_new(SQL_MANY, POOL_LSN_NONE), *any = read_new(SQL_MANY, 0);
    queue_push(&q, near);
    queue_push(&q, far);
    queue_push(&q, primary_only);
    queue_push(&q, any);
    struct job *lead = read_new(SQL_MANY, 0);
    assert_int_equal(queue_batch_take(&q, lead, &replica, 100), 2);
    assert_ptr_equal(lead->batch, near);
    assert_ptr_equal(near->next, any);
    assert_int_equal(q.len, 2);
    assert_ptr_equal(q.head, far);
    assert_ptr_equal(q.tail, primary_only);
    /* on the primary every one of them joins */
    struct job *lead2 = read_new(SQL_MANY, 0);
    assert_int_equal(queue_batch_take(&q, lead2, NULL, 100), 2);
    assert_int_equal(q.len, 0);
    assert_null(q.head);
    assert_null(q.tail);
    /* a replica out of rotation, or below the floor, serves none */
    replica.healthy = false;
    assert_false(queue_batch_joins(lead, any, &replica, 100));
    replica.healthy = true;
    assert_false(queue_batch_joins(lead, any, &replica, 501));
    jobs_free(lead->batch);
    jobs_free(lead2->batch);
    free(lead);
    free(lead2);
}

/* An UPDATE ... FROM applies one input row per row: two patches of row 7 never share a statement (the
 * second waits for the next one); reads of one id do. */
static void test_writes_of_one_row_run_apart(void **state)
{
    (void)state;
    struct side_queue q = { 0 };
    struct job *a = write_new(SQL_MANY, "8"), *dup = write_new(SQL_MANY, "7"), *b = write_new(SQL_MANY, "9");
    struct job *dup2 = write_new(SQL_MANY, "8");
    queue_push(&q, a);
    queue_push(&q, dup);
    queue_push(&q, b);
    queue_push(&q, dup2);
    struct job *lead = write_new(SQL_MANY, "7");
    assert_int_equal(queue_batch_take(&q, lead, NULL, 0), 2);
    assert_ptr_equal(lead->batch, a);
    assert_ptr_equal(a->next, b);
    assert_null(b->next);
    assert_int_equal(q.len, 2);
    assert_ptr_equal(q.head, dup);
    assert_ptr_equal(dup->next, dup2);
    /* the next statement of another row 7 takes the other row 8, not the first row 7 */
    struct job *lead2 = write_new(SQL_MANY, "7");
    assert_int_equal(queue_batch_take(&q, lead2, NULL, 0), 1);
    assert_ptr_equal(lead2->batch, dup2);
    assert_int_equal(q.len, 1);
    assert_ptr_equal(q.head, dup);
    struct job *r1 = read_new(SQL_MANY, 0), *r2 = read_new(SQL_MANY, 0); /* both read id 7 */
    assert_true(queue_batch_joins(r1, r2, NULL, 0));
    r1->batch_distinct = r2->batch_distinct = false; /* creates: one name twice shares a statement */
    r1->kind = r2->kind = JOB_WRITE;
    assert_true(queue_batch_joins(r1, r2, NULL, 0));
    jobs_free(lead->batch);
    jobs_free(lead2->batch);
    free(lead);
    free(lead2);
    free(r1);
    free(r2);
    queue_free(&q);
}

static void test_at_most_batch_max_jobs(void **state)
{
    (void)state;
    struct side_queue q = { 0 };
    for (int i = 0; i < BATCH_MAX + 5; i++)
        queue_push(&q, read_new(SQL_MANY, 0));
    struct job *lead = read_new(SQL_MANY, 0);
    assert_int_equal(queue_batch_take(&q, lead, NULL, 0), BATCH_MAX - 1); /* the lead is one of them */
    assert_int_equal(batch_len(lead), BATCH_MAX - 1);
    assert_int_equal(q.len, 6);
    jobs_free(lead->batch);
    free(lead);
    queue_free(&q);
}

/* A primary connection takes its own queue's reads, then the replicas' (queue_batch_gather): the second
 * take appends to the batch the first made, and BATCH_MAX bounds both together. */
static void test_a_batch_spans_two_queues(void **state)
{
    (void)state;
    struct side_queue mine = { 0 }, theirs = { 0 };
    struct job *a = read_new(SQL_MANY, 0), *b = read_new(SQL_MANY, 900);
    queue_push(&mine, a);
    queue_push(&theirs, b);
    for (int i = 0; i < BATCH_MAX; i++)
        queue_push(&theirs, read_new(SQL_MANY, 0));
    struct job *lead = read_new(SQL_MANY, 0);
    assert_int_equal(queue_batch_take(&mine, lead, NULL, 0), 1);
    assert_int_equal(queue_batch_take(&theirs, lead, NULL, 0), BATCH_MAX - 2);
    assert_ptr_equal(lead->batch, a);
    assert_ptr_equal(a->next, b); /* any fence: the primary serves every read */
    assert_int_equal(batch_len(lead), BATCH_MAX - 1);
    assert_int_equal(theirs.len, 3); /* 1 + BATCH_MAX queued, BATCH_MAX - 2 taken */
    assert_int_equal(queue_batch_take(&theirs, lead, NULL, 0), 0); /* full */
    jobs_free(lead->batch);
    free(lead);
    queue_free(&theirs);
}

static void test_nothing_to_join(void **state)
{
    (void)state;
    struct side_queue q = { 0 };
    struct job *lead = read_new(SQL_MANY, 0);
    assert_int_equal(queue_batch_take(&q, lead, NULL, 0), 0);
    assert_null(lead->batch);
    free(lead);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_statement_joins_in_order),
        cmocka_unit_test(test_a_job_aimed_at_one_backend_stays),
        cmocka_unit_test(test_on_a_replica_only_reads_it_may_serve),
        cmocka_unit_test(test_writes_of_one_row_run_apart),
        cmocka_unit_test(test_at_most_batch_max_jobs),
        cmocka_unit_test(test_a_batch_spans_two_queues),
        cmocka_unit_test(test_nothing_to_join),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
