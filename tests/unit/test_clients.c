/* Unit tests for common/clients: one client address's connections counted across workers' rows. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "common/clients.h"

static struct sockaddr_storage addr_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &a->sin_addr), 1);
    }
    return ss;
}

static uint64_t key_of(struct clients *t, const char *text)
{
    struct sockaddr_storage ss = addr_of(text);
    return clients_key(t, &ss);
}

static void test_keys(void **state)
{
    (void)state;
    struct clients *t = clients_create();
    assert_non_null(t);
    assert_true(key_of(t, "192.0.2.1") != 0);
    assert_true(key_of(t, "192.0.2.1") == key_of(t, "::ffff:192.0.2.1")); /* IPv4-mapped: the same client */
    assert_true(key_of(t, "192.0.2.1") != key_of(t, "192.0.2.2"));
    assert_true(key_of(t, "2001:db8:1:2::1") == key_of(t, "2001:db8:1:2:ffff::9")); /* one /64 */
    assert_true(key_of(t, "2001:db8:1:2::1") != key_of(t, "2001:db8:1:3::1"));
    struct sockaddr_storage unix_peer = { .ss_family = AF_UNIX };
    assert_true(clients_key(t, &unix_peer) == 0 && clients_key(t, NULL) == 0);
    clients_destroy(t);
}

static void test_limit_across_slots_release_and_vacate(void **state)
{
    (void)state;
    struct clients *t = clients_create();
    uint64_t a = key_of(t, "192.0.2.1"), b = key_of(t, "192.0.2.2");
    assert_true(clients_admit(t, 0, 1, a, 3));
    assert_true(clients_admit(t, 1, 1, a, 3));
    assert_true(clients_admit(t, 5, 2, a, 3)); /* another generation's worker counts too */
    assert_false(clients_admit(t, 1, 1, a, 3));
    assert_false(clients_admit(t, 0, 1, a, 3));
    assert_true(clients_admit(t, 0, 1, b, 3)); /* another address is not affected */
    assert_true(clients_admit(t, 0, 1, a, 0)); /* 0: no limit, nothing counted */
    clients_release(t, 1, 1, a);
    assert_true(clients_admit(t, 0, 1, a, 3));
    assert_false(clients_admit(t, 0, 1, a, 3));
    clients_vacate(t, 0, 3); /* not slot 0's generation: nothing forgotten */
    assert_false(clients_admit(t, 1, 1, a, 3));
    clients_vacate(t, 0, 1); /* slot 0 of generation 1 died: its two of a (and b's) are forgotten */
    assert_true(clients_admit(t, 1, 1, a, 3));
    assert_true(clients_admit(t, 1, 1, a, 3));
    assert_false(clients_admit(t, 1, 1, a, 3));
    clients_release(t, 0, 1, a); /* a release after its row was cleared stays at 0 */
    clients_release(t, 0, 1, a);
    assert_false(clients_admit(t, 1, 1, a, 3));
    clients_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_limit_across_slots_release_and_vacate),
    };
    return cmocka_run_group_tests_name("clients", tests, NULL, NULL);
}
