/* metrics: the shared table's life, and the fixed label sets (status codes, latency buckets) its arrays
 * are indexed by. */
#include "common/metrics.h"

#include <time.h>

#include "common/shm.h"

#define STATUS_CODE(code, reason) code,
static const int status_codes[METRICS_STATUSES - 1] = { HTTP_STATUS_TABLE(STATUS_CODE) };
#define NSTATUS ((int)(sizeof(status_codes) / sizeof(status_codes[0])))

static const uint64_t bucket_le_us[METRICS_BUCKETS - 1] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
};

struct metrics *metrics_create(void)
{
    struct metrics *m = shm_map(sizeof(struct metrics), "metrics table"); /* zero-filled: counters at 0 */
    if (m)
        atomic_store(&m->start_time_s, (uint64_t)time(NULL));
    return m;
}

void metrics_destroy(struct metrics *m)
{
    shm_unmap(m, sizeof(*m));
}

void metrics_gauges_vacate(struct metrics *m, int slot, unsigned generation)
{
    if (!m || slot < 0 || slot >= METRICS_SLOTS)
        return;
    struct metrics_gauges *g = &m->gauges[generation & 1][slot];
    uint64_t had = generation;
    /* Readers skip a block whose generation is 0, and the next owner writes every gauge it shows before
     * it sets its generation: nothing else needs clearing. */
    atomic_compare_exchange_strong(&g->generation, &had, 0);
}

int metrics_status_index(int status)
{
    for (int i = 0; i < NSTATUS; i++)
        if (status_codes[i] == status)
            return i;
    return NSTATUS;
}

int metrics_status_code(int index)
{
    return index >= 0 && index < NSTATUS ? status_codes[index] : 0;
}

uint64_t metrics_bucket_le_us(int i)
{
    return i >= 0 && i < METRICS_BUCKETS - 1 ? bucket_le_us[i] : 0;
}

int metrics_bucket_index(uint64_t us)
{
    int i = 0;
    while (i < METRICS_BUCKETS - 1 && us > bucket_le_us[i])
        i++;
    return i;
}
