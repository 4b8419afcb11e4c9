/* Unit tests for worker/db/route_decide: where the pool sends a statement, from a snapshot of its
 * backends (fences vs replica positions, replicas out of rotation, spill to an idle primary connection,
 * a primary known down). No server, no connection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "worker/db/route_decide.h"

#define FLOOR 100

/* A healthy primary with every connection idle, and n healthy replicas at LSN 500 with idle connections. */
static struct route_view view_new(int n)
{
    struct route_view v = { .nreplicas = n, .floor_lsn = FLOOR, .rr = 0 };
    v.primary = (struct route_backend){ .healthy = true, .lsn = 600, .idle = 4, .connected = 4, .nconns = 4 };
    for (int i = 0; i < n; i++)
        v.replicas[i] =
            (struct route_backend){ .healthy = true, .lsn = 500, .idle = 4, .connected = 4, .nconns = 4 };
    return v;
}

static void expect(struct route_decision d, enum route_where where, enum pool_side side, int backend)
{
    assert_int_equal(d.where, where);
    assert_int_equal(d.side, side);
    assert_int_equal(d.backend, backend);
}

static void test_fence_against_replica_position(void **state)
{
    (void)state;
    struct route_view v = view_new(1);
    expect(route_decide(&v, true, 0), ROUTE_START, POOL_REPLICA, 0);    /* no fence */
    expect(route_decide(&v, true, 500), ROUTE_START, POOL_REPLICA, 0);  /* replayed exactly up to it */
    expect(route_decide(&v, true, 501), ROUTE_START, POOL_PRIMARY, -1); /* not yet: the primary */
    expect(route_decide(&v, true, POOL_LSN_NONE), ROUTE_START, POOL_PRIMARY, -1);
    /* below the floor (writes acknowledged before this worker started): no replica serves reads */
    v.replicas[0].lsn = FLOOR - 1;
    expect(route_decide(&v, true, 0), ROUTE_START, POOL_PRIMARY, -1);
    v.replicas[0].lsn = 500;
    v.floor_lsn = 0; /* the primary never sampled yet */
    expect(route_decide(&v, true, 0), ROUTE_START, POOL_PRIMARY, -1);
}

static void test_writes_go_to_the_primary(void **state)
{
    (void)state;
    struct route_view v = view_new(2);
    expect(route_decide(&v, false, 0), ROUTE_START, POOL_PRIMARY, -1);
    v.primary.idle = 0;
    expect(route_decide(&v, false, 0), ROUTE_QUEUE, POOL_PRIMARY, -1);
}

static void test_replica_out_of_rotation(void **state)
{
    (void)state;
    struct route_view v = view_new(2);
    v.replicas[0].healthy = false;
    struct route_decision d = route_decide(&v, true, 0);
    expect(d, ROUTE_START, POOL_REPLICA, 1);
    assert_true(d.rr_advance);
    v.replicas[1].healthy = false;
    expect(route_decide(&v, true, 0), ROUTE_START, POOL_PRIMARY, -1);
    assert_false(route_replica_may_serve(&v.replicas[0], FLOOR, 0));
    assert_int_equal(route_replicas_up(&v), 0);
    v.replicas[0].healthy = true;
    v.replicas[0].connected = 0; /* healthy as last checked, but no connection left: not up */
    assert_int_equal(route_replicas_up(&v), 0);
}

static void test_round_robin_prefers_an_idle_replica(void **state)
{
    (void)state;
    struct route_view v = view_new(3);
    bool idle;
    v.rr = 1;
    assert_int_equal(route_replica_pick(&v, 0, &idle), 1);
    assert_true(idle);
    v.rr = 5; /* wraps around: 5 % 3 */
    assert_int_equal(route_replica_pick(&v, 0, &idle), 2);
    v.replicas[2].idle = 0;
    assert_int_equal(route_replica_pick(&v, 0, &idle), 0); /* the next one with an idle connection */
    assert_true(idle);
    v.replicas[0].idle = v.replicas[1].idle = 0;
    assert_int_equal(route_replica_pick(&v, 0, &idle), 2); /* none idle: the first eligible, busy */
    assert_false(idle);
    v.replicas[2].lsn = 10;
    assert_int_equal(route_replica_pick(&v, 200, &idle), 0);
    assert_int_equal(route_replica_pick(&v, 501, &idle), -1);
}

static void test_spill_to_an_idle_primary_connection(void **state)
{
    (void)state;
    struct route_view v = view_new(1);
    v.replicas[0].idle = 0;
    struct route_decision d = route_decide(&v, true, 0);
    expect(d, ROUTE_START, POOL_PRIMARY, -1); /* every replica connection busy: an idle primary one runs it */
    assert_false(d.rr_advance);
    v.primary.idle = 0;
    expect(route_decide(&v, true, 0), ROUTE_QUEUE, POOL_REPLICA, 0);
    v.primary.idle = 2;
    v.primary.in_recovery = true; /* a primary found to be a standby takes no reads */
    expect(route_decide(&v, true, 0), ROUTE_QUEUE, POOL_REPLICA, 0);
    v.primary.in_recovery = false;
    v.primary.healthy = false;
    expect(route_decide(&v, true, 0), ROUTE_QUEUE, POOL_REPLICA, 0);
    assert_false(route_primary_takes_reads(&v.primary));
}

static void test_primary_known_down(void **state)
{
    (void)state;
    struct route_view v = view_new(1);
    v.primary = (struct route_backend){ .connected = 0, .failures = 4, .nconns = 4 };
    expect(route_decide(&v, false, 0), ROUTE_FAIL, POOL_PRIMARY, -1);
    expect(route_decide(&v, true, POOL_LSN_NONE), ROUTE_FAIL, POOL_PRIMARY, -1);
    /* a read a replica has not reached yet waits for it while one is up */
    expect(route_decide(&v, true, 900), ROUTE_QUEUE, POOL_PRIMARY, -1);
    v.replicas[0].healthy = false;
    expect(route_decide(&v, true, 900), ROUTE_FAIL, POOL_PRIMARY, -1);
    v.primary.failures = 3; /* not every connection failed yet: it waits */
    expect(route_decide(&v, false, 0), ROUTE_QUEUE, POOL_PRIMARY, -1);
}

/* The reason pgapi_pool_primary_reads_total gives for a read that the primary runs. */
static void test_why_a_read_runs_on_the_primary(void **state)
{
    (void)state;
    struct route_view v = view_new(2);
    assert_int_equal(route_primary_read_reason(&v, POOL_LSN_NONE), POOL_PRIMARY_READ_NEWEST);
    assert_int_equal(route_primary_read_reason(&v, POOL_LSN_NEWEST), POOL_PRIMARY_READ_NEWEST);
    assert_int_equal(route_primary_read_reason(&v, 501), POOL_PRIMARY_READ_FENCE);
    v.replicas[1].lsn = 501;
    v.replicas[1].idle = 0; /* it may serve the read, but every connection of it is busy */
    assert_int_equal(route_primary_read_reason(&v, 501), POOL_PRIMARY_READ_REPLICAS_BUSY);
    v.replicas[0].healthy = v.replicas[1].healthy = false;
    assert_int_equal(route_primary_read_reason(&v, 0), POOL_PRIMARY_READ_NO_REPLICA);
}

/* A replica's position learned from its reads: it only rises, and a sample taken before the pool's view
 * of the replica was reset is dropped. */
static void test_replay_learned_from_reads(void **state)
{
    (void)state;
    assert_int_equal(route_replay_learn(500, 520, false), 520); /* the read saw a newer position */
    assert_int_equal(route_replay_learn(520, 510, false), 520); /* an older sample never lowers it */
    assert_int_equal(route_replay_learn(520, 520, false), 520);
    assert_int_equal(route_replay_learn(300, 520, true), 300); /* sent before a reset: dropped */
    assert_int_equal(route_replay_learn(0, 520, false), 520);  /* never sampled by a health check yet */
}

/* A primary read claims strictly less than its fence and the position last sampled: a write flushed at
 * that position but not yet visible (waiting for its synchronous standby) can read that very position as
 * its commit LSN once it completes, and a copy without it must not carry its fence. */
static void test_primary_read_claims_strictly_below_what_it_knows(void **state)
{
    (void)state;
    assert_int_equal(route_primary_data_lsn(510, 0), 509);   /* its fence: a write's commit LSN */
    assert_int_equal(route_primary_data_lsn(510, 520), 519); /* the sample is newer */
    assert_int_equal(route_primary_data_lsn(520, 510), 519);
    assert_int_equal(route_primary_data_lsn(0, 0), 0); /* nothing known yet */
    /* the copy's claim never reaches the fence of the write it may lack: that write's fence raise
     * changes every stamp taken at or below the claim */
    uint64_t fence_of_a = 510, claim = route_primary_data_lsn(fence_of_a, fence_of_a);
    uint64_t fence_of_b = fence_of_a; /* b committed before a's LSN read, completed after the read */
    assert_true(fence_of_b > claim);
}

/* The learned position routes the next read: a fence the health check had not seen passed goes back to
 * the replica as soon as a read reports the replica past it; the detached and unproven rules apply to the
 * learned position as to a sampled one (route.c caps it before route_decide sees it). */
static void test_learned_position_routes_the_next_read(void **state)
{
    (void)state;
    struct route_view v = view_new(1);
    uint64_t fence = 510; /* a fresh write's commit, past the replica's last health check (500) */
    expect(route_decide(&v, true, fence), ROUTE_START, POOL_PRIMARY, -1);
    assert_int_equal(route_primary_read_reason(&v, fence), POOL_PRIMARY_READ_FENCE);
    v.replicas[0].lsn = route_replay_learn(v.replicas[0].lsn, 512, false);
    expect(route_decide(&v, true, fence), ROUTE_START, POOL_REPLICA, 0);
    v.replicas[0].lsn = route_replay_learn(v.replicas[0].lsn, 505, false); /* a slower read's sample */
    expect(route_decide(&v, true, fence), ROUTE_START, POOL_REPLICA, 0);
}

/* replica_wait: only a read with a position for a fence, that no replica may serve yet, while a replica in
 * rotation keeps up within the wait. */
static void test_which_reads_wait_for_a_replica(void **state)
{
    (void)state;
    struct route_view v = view_new(2);
    assert_true(route_read_may_wait(&v, 501, 5));  /* both replicas at 500: a little behind the fence */
    assert_false(route_read_may_wait(&v, 501, 0)); /* replica_wait = 0: never */
    assert_false(route_read_may_wait(&v, 500, 5)); /* a replica serves it now: no wait */
    assert_false(route_read_may_wait(&v, POOL_LSN_NONE, 5));   /* must run on the primary */
    assert_false(route_read_may_wait(&v, POOL_LSN_NEWEST, 5)); /* the newest data: not a position */
    v.replicas[0].lag_ms = 5; /* lag not under the wait: replica 1 still keeps up */
    assert_true(route_read_may_wait(&v, 501, 5));
    v.replicas[1].healthy = false; /* out of rotation */
    assert_false(route_read_may_wait(&v, 501, 5));
    v.replicas[0].lag_ms = 0;
    v.replicas[0].connected = 0; /* no connection */
    assert_false(route_read_may_wait(&v, 501, 5));
    v.replicas[0].connected = 4;
    v.replicas[0].lsn = 0; /* unproven (a new primary): its position says nothing */
    assert_false(route_read_may_wait(&v, 501, 5));
    v.replicas[0].lsn = 500;
    v.floor_lsn = 0; /* the primary never sampled: no replica serves anything yet */
    assert_false(route_read_may_wait(&v, 501, 5));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fence_against_replica_position),
        cmocka_unit_test(test_writes_go_to_the_primary),
        cmocka_unit_test(test_replica_out_of_rotation),
        cmocka_unit_test(test_round_robin_prefers_an_idle_replica),
        cmocka_unit_test(test_spill_to_an_idle_primary_connection),
        cmocka_unit_test(test_primary_known_down),
        cmocka_unit_test(test_why_a_read_runs_on_the_primary),
        cmocka_unit_test(test_replay_learned_from_reads),
        cmocka_unit_test(test_learned_position_routes_the_next_read),
        cmocka_unit_test(test_primary_read_claims_strictly_below_what_it_knows),
        cmocka_unit_test(test_which_reads_wait_for_a_replica),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
