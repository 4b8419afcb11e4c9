/* trace: W3C Trace Context for each request (traceparent and tracestate taken from the client when valid,
 * a new span of ours always), and the response's traceparent and Server-Timing lines. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "worker/http/conn.h"

#define TRACE_STATE_MAX 512

static bool hex_lower(const char *s, size_t n, bool *nonzero)
{
    *nonzero = false;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
        *nonzero |= s[i] != '0';
    }
    return true;
}

/* 00-<trace id: 32>-<parent id: 16>-<flags: 2>. Other versions are refused rather than parsed by their
 * version 00 prefix (as the spec allows): the brief asks for 00 only, and we then never echo a field we
 * cannot read. */
bool http_traceparent_valid(const char *v)
{
    bool trace_nz, parent_nz, flags_nz;
    return strlen(v) == HTTP_TRACEPARENT_LEN && v[0] == '0' && v[1] == '0' && v[2] == '-' && v[35] == '-' &&
           v[52] == '-' && hex_lower(v + 3, 32, &trace_nz) && trace_nz && hex_lower(v + 36, 16, &parent_nz) &&
           parent_nz && hex_lower(v + 53, 2, &flags_nz);
}

/* Only what may go into a response header unchanged: the members' own syntax is the vendors' business. */
bool http_tracestate_valid(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > TRACE_STATE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((v[i] >= 0x20 && v[i] <= 0x7e) || v[i] == '\t'))
            return false;
    return true;
}

static uint64_t rng_next(struct http_server *srv)
{
    uint64_t s1 = srv->rng[0];
    const uint64_t s0 = srv->rng[1];
    srv->rng[0] = s0;
    s1 ^= s1 << 23;
    srv->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return srv->rng[1] + s0;
}

/* Ids only need to be unique, not secret: a per-server generator saves a system call per request. */
void http_trace_seed(struct http_server *srv)
{
    if (getrandom(srv->rng, sizeof(srv->rng), GRND_NONBLOCK) != (ssize_t)sizeof(srv->rng)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        srv->rng[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
        srv->rng[1] = (uint64_t)ts.tv_sec * 0x9e3779b97f4a7c15ULL;
    }
    if (!srv->rng[0] && !srv->rng[1])
        srv->rng[1] = 1;
}

/* A 64-bit id that is never zero (the spec forbids all-zero ids), as 16 lowercase hex digits. */
static void id_hex(struct http_server *srv, char *out)
{
    uint64_t v;
    while ((v = rng_next(srv)) == 0)
        ;
    snprintf(out, 17, "%016" PRIx64, v);
}

void http_trace_ensure(struct http_conn *c)
{
    struct http_request *r = &c->x->req;
    if (r->traceparent[0])
        return;
    const char *in = http_request_header(r, HTTP_H_TRACEPARENT);
    /* two traceparent lines are invalid (W3C): the table keeps the last, so the count decides */
    bool valid = http_headers_seen(&r->headers, HTTP_H_TRACEPARENT) == 1 && http_traceparent_valid(in);
    char trace[HTTP_TRACE_ID_LEN + 1], span[17], flags[3] = "01";
    if (valid) {
        memcpy(trace, in + 3, HTTP_TRACE_ID_LEN);
        trace[HTTP_TRACE_ID_LEN] = '\0';
        memcpy(flags, in + 53, 2);
    } else {
        id_hex(c->srv, trace);
        id_hex(c->srv, trace + 16);
    }
    id_hex(c->srv, span);
    snprintf(r->trace_id, sizeof(r->trace_id), "%s", trace);
    snprintf(r->traceparent, sizeof(r->traceparent), "00-%s-%s-%s", trace, span, flags);
    /* a tracestate belongs to the trace its traceparent names: with a new trace it is dropped */
    r->tracestate = valid && http_headers_seen(&r->headers, HTTP_H_TRACESTATE) == 1 &&
                    http_tracestate_valid(http_request_header(r, HTTP_H_TRACESTATE));
}

void http_trace_write(struct http_conn *c)
{
    struct http_request *r = &c->x->req;
    if (r->traceparent[0])
        evbuffer_add_printf(c->out, "traceparent: %s\r\n", r->traceparent);
    if (r->tracestate)
        evbuffer_add_printf(c->out, "tracestate: %s\r\n", http_request_header(r, HTTP_H_TRACESTATE));
    const struct http_timing *t = &r->timing;
    evbuffer_add_printf(c->out, "Server-Timing: queue;dur=%.3f, db;dur=%.3f, cache;dur=%.3f\r\n",
                        (double)t->queue_us / 1000.0, (double)t->db_us / 1000.0,
                        (double)t->cache_us / 1000.0);
}
