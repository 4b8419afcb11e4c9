/* clients: one row of counters per (generation parity, slot), written only by the worker that owns it;
 * a key's count is the sum over the rows. A row is a count-min sketch: each key adds to one counter in
 * each of two arrays, picked by two halves of a seeded hash, and its count is the smaller of its two
 * sums. Two addresses share a count only if they collide in both arrays (about (n/4096)^2 for n
 * addresses connected at once), and then are only ever over-counted, never under. Exact counts would
 * need a shared hash table with deletions under a lock a dying worker could hold. */
#include "common/clients.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/shm.h"

#define CLIENT_SLOTS 256 /* config's maximum of workers */
#define CLIENT_BUCKETS 4096

struct clients_row {
    _Atomic uint64_t generation; /* the last owner; 0 = nobody */
    _Atomic uint32_t count[2][CLIENT_BUCKETS];
};

struct clients {
    uint64_t seed;          /* written once by the master before the first fork */
    _Atomic int slots_used; /* rows below it may hold counts: a sum need not read 512 rows */
    struct clients_row row[2][CLIENT_SLOTS];
};

struct clients *clients_create(void)
{
    struct clients *t = shm_map(sizeof(struct clients), "table of connections per client");
    if (t) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        /* not a secret: it only keeps a remote client from choosing addresses that collide on purpose */
        t->seed =
            (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)ts.tv_sec << 20 ^ (uint64_t)getpid();
    }
    return t;
}

void clients_destroy(struct clients *t)
{
    shm_unmap(t, sizeof(*t));
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t clients_key(const struct clients *t, const struct sockaddr_storage *peer)
{
    uint64_t addr;
    if (!t || !peer)
        return 0;
    if (peer->ss_family == AF_INET) {
        addr = ((const struct sockaddr_in *)peer)->sin_addr.s_addr;
    } else if (peer->ss_family == AF_INET6) {
        const uint8_t *b = ((const struct sockaddr_in6 *)peer)->sin6_addr.s6_addr;
        static const uint8_t v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
        uint32_t v4;
        if (memcmp(b, v4mapped, sizeof(v4mapped)) == 0) {
            memcpy(&v4, b + 12, sizeof(v4));
            addr = v4;
        } else {
            memcpy(&addr, b, sizeof(addr));  /* the /64 */
            addr = mix64(addr) | 1ULL << 63; /* apart from every IPv4 address */
        }
    } else {
        return 0;
    }
    uint64_t key = mix64(addr ^ t->seed);
    return key ? key : 1;
}

static int slots_used(const struct clients *t)
{
    int n = atomic_load_explicit(&t->slots_used, memory_order_relaxed);
    return n < CLIENT_SLOTS ? n : CLIENT_SLOTS;
}

static uint64_t key_sum(const struct clients *t, uint64_t key, int half)
{
    size_t b = (half ? key >> 32 : key) % CLIENT_BUCKETS;
    uint64_t sum = 0;
    for (int parity = 0; parity < 2; parity++)
        for (int s = 0; s < slots_used(t); s++)
            sum += atomic_load_explicit(&t->row[parity][s].count[half][b], memory_order_relaxed);
    return sum;
}

static struct clients_row *row_of(struct clients *t, int slot, unsigned generation)
{
    return t && slot >= 0 && slot < CLIENT_SLOTS ? &t->row[generation & 1][slot] : NULL;
}

bool clients_admit(struct clients *t, int slot, unsigned generation, uint64_t key, int max)
{
    struct clients_row *r = row_of(t, slot, generation);
    if (!r || key == 0 || max <= 0)
        return true;
    int used = atomic_load(&t->slots_used);
    while (used <= slot && !atomic_compare_exchange_weak(&t->slots_used, &used, slot + 1))
        ;
    uint64_t a = key_sum(t, key, 0), b = key_sum(t, key, 1);
    if ((a < b ? a : b) >= (uint64_t)max)
        return false;
    atomic_store_explicit(&r->generation, generation, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->count[0][key % CLIENT_BUCKETS], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->count[1][(key >> 32) % CLIENT_BUCKETS], 1, memory_order_relaxed);
    return true;
}

/* One less, never below 0: a row the master cleared under a process that still shares it (two
 * generations in one slot during a burst of reloads) must not wrap around. */
static void count_release(_Atomic uint32_t *c)
{
    uint32_t v = atomic_load_explicit(c, memory_order_relaxed);
    while (v > 0 &&
           !atomic_compare_exchange_weak_explicit(c, &v, v - 1, memory_order_relaxed, memory_order_relaxed))
        ;
}

void clients_release(struct clients *t, int slot, unsigned generation, uint64_t key)
{
    struct clients_row *r = row_of(t, slot, generation);
    if (!r || key == 0)
        return;
    count_release(&r->count[0][key % CLIENT_BUCKETS]);
    count_release(&r->count[1][(key >> 32) % CLIENT_BUCKETS]);
}

void clients_vacate(struct clients *t, int slot, unsigned generation)
{
    struct clients_row *r = row_of(t, slot, generation);
    uint64_t had = generation;
    if (!r || !atomic_compare_exchange_strong(&r->generation, &had, 0))
        return;
    for (int h = 0; h < 2; h++)
        for (int b = 0; b < CLIENT_BUCKETS; b++)
            atomic_store_explicit(&r->count[h][b], 0, memory_order_relaxed);
}
