/* clock: see clock.h. */
#include "common/clock.h"

#include <time.h>

uint64_t clock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t clock_now_ms(void)
{
    return clock_now_us() / 1000u;
}

int64_t clock_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

struct timeval clock_timeval(int ms)
{
    return (struct timeval){ .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };
}

int clock_backoff_ms(int failures, int min_ms, int max_ms)
{
    int shift = failures < 16 ? failures : 16; /* past that the cap has long been reached */
    if (shift < 0)
        shift = 0;
    int64_t ms = (int64_t)min_ms << shift;
    return ms > max_ms ? max_ms : (int)ms;
}
