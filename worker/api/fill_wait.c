/* fill_wait: the lease holders of one worker, hashed by lease token, each with its list of waiting
 * requests; the pollers' back-off; the rule that lets a holder's value answer a waiter. */
#include "worker/api/fill_wait.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tokens come from one INCR per prefix: their low digits spread them over the buckets. */
static unsigned token_bucket(const char *token)
{
    return (unsigned)(strtoull(token, NULL, 10) % FILL_WAIT_BUCKETS);
}

void fill_wait_hold(struct fill_waits *w, struct fill_holder *h, const char *token, const char *epoch,
                    const char *key)
{
    assert(!h->held);
    *h = (struct fill_holder){ .held = true };
    snprintf(h->token, sizeof(h->token), "%s", token);
    snprintf(h->epoch, sizeof(h->epoch), "%s", epoch);
    snprintf(h->key, sizeof(h->key), "%s", key);
    struct fill_holder **b = &w->buckets[token_bucket(token)];
    h->next = *b;
    if (*b)
        (*b)->prev = h;
    *b = h;
    h->bucket = b;
}

struct fill_holder *fill_wait_find(const struct fill_waits *w, const char *token, const char *epoch,
                                   const char *key)
{
    for (struct fill_holder *h = w->buckets[token_bucket(token)]; h; h = h->next)
        if (strcmp(h->token, token) == 0 && strcmp(h->epoch, epoch) == 0 && strcmp(h->key, key) == 0)
            return h;
    return NULL;
}

bool fill_wait_join(struct fill_holder *h, struct fill_waiter *x)
{
    assert(h->held && !x->holder);
    if (h->nwaiters >= FILL_WAITERS_MAX)
        return false;
    *x = (struct fill_waiter){ .prev = h->last, .holder = h };
    if (h->last)
        h->last->next = x;
    else
        h->first = x;
    h->last = x;
    h->nwaiters++;
    return true;
}

void fill_wait_leave(struct fill_waiter *x)
{
    struct fill_holder *h = x->holder;
    if (!h)
        return;
    if (x->prev)
        x->prev->next = x->next;
    else
        h->first = x->next;
    if (x->next)
        x->next->prev = x->prev;
    else
        h->last = x->prev;
    h->nwaiters--;
    *x = (struct fill_waiter){ 0 };
}

struct fill_waiter *fill_wait_pop(struct fill_holder *h)
{
    struct fill_waiter *x = h->first;
    if (x)
        fill_wait_leave(x);
    return x;
}

void fill_wait_drop(struct fill_waits *w, struct fill_holder *h)
{
    if (!h->held)
        return;
    snprintf(w->recent[w->recent_next], sizeof(w->recent[0]), "%s", h->token);
    w->recent_next = (w->recent_next + 1) % FILL_WAIT_RECENT;
    while (fill_wait_pop(h))
        ;
    if (h->prev)
        h->prev->next = h->next;
    else
        *h->bucket = h->next;
    if (h->next)
        h->next->prev = h->prev;
    *h = (struct fill_holder){ 0 };
}

bool fill_wait_ended(const struct fill_waits *w, const char *token)
{
    for (int i = 0; token[0] && i < FILL_WAIT_RECENT; i++)
        if (strcmp(w->recent[i], token) == 0)
            return true;
    return false;
}

unsigned fill_wait_poll_ms(int polls)
{
    unsigned waited = 0, step = FILL_WAIT_POLL_FIRST_MS;
    for (int i = 0; i < polls; i++) {
        waited += step;
        if (step < FILL_WAIT_POLL_CAP_MS)
            step *= 2;
    }
    if (waited + step > FILL_WAIT_POLL_TOTAL_MS)
        return 0;
    return step;
}

uint64_t fill_wait_reach(uint64_t data_lsn, bool on_primary, uint64_t newest, uint64_t sent_fence)
{
    if (!on_primary)
        return data_lsn;
    if (data_lsn == newest)
        return sent_fence;
    return sent_fence > data_lsn ? sent_fence : data_lsn;
}

bool fill_wait_serves(uint64_t reach, uint64_t waiter_fence)
{
    return reach >= waiter_fence;
}
