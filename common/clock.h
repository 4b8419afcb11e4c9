/* clock: the monotonic clock, reconnect back-off and libevent timeouts, in one place, so every
 * subsystem measures and waits the same way. */
#ifndef PGAPI_CLOCK_H
#define PGAPI_CLOCK_H

#include <stdint.h>
#include <sys/time.h>

/* Monotonic time since an unspecified start (never moves back; unaffected by the wall clock). */
uint64_t clock_now_us(void);
uint64_t clock_now_ms(void);
int64_t clock_now_s(void);

/* ms as the struct timeval libevent takes (ms >= 0). */
struct timeval clock_timeval(int ms);

/* Exponential back-off after `failures` consecutive failures: min_ms doubled each time, capped at max_ms. */
int clock_backoff_ms(int failures, int min_ms, int max_ms);

#endif
