/* config: the key table below is the only place a setting is declared: its type, range, default and
 * documentation. The ini parser, the environment overrides, --check-config and --help all read it. */
#include "common/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/jwt.h"

enum key_type {
    KT_INT,
    KT_MS,
    KT_SEC,
    KT_SIZE,
    KT_BOOL,
    KT_STR,
    KT_LISTEN,
    KT_DSN,
    KT_REPLICA,
    KT_LEVEL,
    KT_FORMAT
};

struct config_key {
    const char *section;
    const char *name;
    enum key_type type;
    size_t offset;
    size_t size;        /* KT_STR / KT_DSN: buffer size */
    long long min, max; /* numeric range (ms for KT_MS, bytes for KT_SIZE) */
    const char *def;
    const char *doc;
};

#define OFF(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)

static const struct config_key config_keys[] = {
    { "server", "listen", KT_LISTEN, OFF(listen), 1, 0, "127.0.0.1:3000",
      "address:port to accept HTTP on (IPv4 address or hostname-free literal)" },
    { "server", "workers", KT_INT, OFF(workers), 0, 256, "0", "worker processes; 0 = one per CPU" },
    { "server", "backlog", KT_INT, OFF(backlog), 1, 65535, "1024", "listen(2) backlog" },
    { "server", "keepalive_timeout", KT_MS, OFF(keepalive_timeout_ms), 0, 3600000, "5s",
      "idle keep-alive connection lifetime (units ms, s, m; bare number = seconds)" },
    { "server", "request_timeout", KT_MS, OFF(request_timeout_ms), 100, 3600000, "30s",
      "limit to receive a whole request (headers and body), 408 past it; also bounds sending the response" },
    { "server", "drain_timeout", KT_MS, OFF(drain_timeout_ms), 100, 3600000, "10s",
      "graceful stop: how long in-flight requests may take before a worker is stopped anyway" },
    { "server", "max_connections", KT_INT, OFF(max_connections), 1, 1000000, "4096",
      "open client connections per worker; past it on every worker, new ones get 503 and are closed at "
      "once" },
    { "server", "max_body_bytes", KT_SIZE, OFF(max_body_bytes), 0, 1073741824, "64k",
      "largest request body (413 above); units k, m" },
    { "server", "max_header_bytes", KT_SIZE, OFF(max_header_bytes), 256, 1048576, "8k",
      "largest request line + headers (431 above); units k, m" },
    { "server", "max_unsent_bytes", KT_SIZE, OFF(max_unsent_bytes), 65536, 1073741824, "32m",
      "response bytes a worker may hold for clients that do not read them; past it, the connections that "
      "have gone longest without reading are closed" },
    { "server", "max_connections_per_client", KT_INT, OFF(max_connections_per_client), 0, 1000000, "0",
      "open connections one client address may hold across all workers; past it, 503 and closed; 0 = no "
      "limit" },
    { "server", "allowed_hosts", KT_STR, OFF(allowed_hosts), 0, 0, "",
      "host names a request's Host may name, comma-separated (against DNS rebinding); others get 421; "
      "IP literals always pass; empty = any" },
    { "server", "cors_origins", KT_STR, OFF(cors_origins), 0, 0, "",
      "origins (scheme://host[:port], exact, comma-separated) whose browser pages may call the API (CORS); "
      "\"*\" alone allows any origin (pgapi sends no Access-Control-Allow-Credentials); empty = no CORS" },
    { "server", "page_bytes", KT_SIZE, OFF(page_bytes), 1024, 67108864, "256k",
      "byte budget of the rows of one answer: a page (or a user's embedded posts) ends before the row that "
      "would pass it, and its next link continues after the last row sent (a row larger than the budget "
      "comes alone); units k, m" },
    { "server", "embed_posts", KT_INT, OFF(embed_posts), 1, 1000, "50",
      "posts embedded by GET /users/:id?include=posts, the first in id order; posts_next links to the rest" },
    { "server", "proxy_protocol", KT_BOOL, OFF(proxy_protocol), 0, 0, "off",
      "a connection from a trusted_proxies address may start with a PROXY protocol v2 header (HAProxy "
      "send-proxy-v2), whose source address is then the client's; one from any other address that sends "
      "one is closed" },
    { "server", "trusted_proxies", KT_STR, OFF(trusted_proxies_text), 0, 0, "",
      "networks (CIDR, comma-separated, at most 16) of the proxies in front of pgapi: only their PROXY "
      "header and X-Forwarded-For (its rightmost address that is not itself a trusted proxy) name the "
      "client, for the rate limiter and the access log; empty = every client is its socket's peer" },
    { "database", "primary", KT_DSN, OFF(primary_dsn), 0, 0,
      "host=127.0.0.1 port=64320 dbname=pgapi_rw user=app",
      "libpq conninfo of the read-write side (PgBouncer database pointing at the primary); "
      "passwords come from PGPASSWORD / PGPASSFILE, not from this file" },
    { "database", "replica", KT_REPLICA, OFF(replica_dsn), 0, 0,
      "host=127.0.0.1 port=64320 dbname=pgapi_ro user=app",
      "libpq conninfo of a read-only side; repeat the key for several replicas" },
    { "database", "pool_size", KT_INT, OFF(pool_size), 1, 256, "4", "connections per side per worker" },
    { "database", "statement_timeout", KT_MS, OFF(statement_timeout_ms), 0, 3600000, "5s",
      "how long one query may run before it is cancelled (503)" },
    { "database", "connect_timeout", KT_MS, OFF(connect_timeout_ms), 100, 600000, "3s",
      "limit for opening one database connection" },
    { "database", "queue_size", KT_INT, OFF(queue_size), 0, 1000000, "1024",
      "requests waiting for a connection per side per worker; 503 when full" },
    { "database", "queue_timeout", KT_MS, OFF(queue_timeout_ms), 1, 600000, "2s",
      "how long a request waits for a free connection before 503" },
    { "database", "max_replica_lag", KT_MS, OFF(max_replica_lag_ms), 0, 3600000, "10s",
      "a replica lagging more than this gets no reads" },
    { "database", "health_interval", KT_MS, OFF(health_interval_ms), 100, 600000, "1s",
      "how often each worker checks replica health and lag" },
    { "database", "replica_wait", KT_MS, OFF(replica_wait_ms), 0, 1000, "10ms",
      "how long a read no replica has replayed far enough for may wait for one before it runs on the "
      "primary (0 = never waits; docs/consistency.md)" },
    { "database", "migrations_dir", KT_STR, OFF(migrations_dir), 0, 0, "migrations",
      "directory of NNNN_name.sql migration files (migrate command)" },
    { "redis", "enabled", KT_BOOL, OFF(redis_enabled), 0, 0, "on", "use the Redis cache" },
    { "redis", "host", KT_STR, OFF(redis_host), 0, 0, "127.0.0.1", "Redis address (IP literal)" },
    { "redis", "port", KT_INT, OFF(redis_port), 1, 65535, "63790", "Redis port" },
    { "redis", "ttl", KT_SEC, OFF(cache_ttl_s), 1000, 604800000, "1h", "lifetime of a cached value" },
    { "redis", "connect_timeout", KT_MS, OFF(redis_connect_timeout_ms), 10, 60000, "500ms",
      "limit for connecting to Redis" },
    { "redis", "command_timeout", KT_MS, OFF(redis_command_timeout_ms), 10, 60000, "200ms",
      "limit for one Redis command; past it the cache is bypassed" },
    { "redis", "local_entries", KT_INT, OFF(local_cache_entries), 0, 1048576, "4096",
      "single-row values each worker also keeps in its own memory, served while their row's fence is "
      "unchanged (0 = off; see docs/consistency.md before running several servers on one database)" },
    { "redis", "local_bytes", KT_SIZE, OFF(local_cache_bytes), 0, 1073741824, "2m",
      "memory those values may take per worker; units k, m" },
    { "redis", "max_value_bytes", KT_SIZE, OFF(cache_max_value_bytes), 1024, 67108864, "256k",
      "largest value stored in Redis; a larger answer is served but not cached; units k, m" },
    { "redis", "list_pages", KT_INT, OFF(cache_list_pages), 1, 100000, "256",
      "pages of one list (GET /users, /posts, /users/:id/posts) cached at once; past it a fill evicts one, "
      "so a write that changes the list deletes at most this many" },
    { "redis", "deployment_fences", KT_BOOL, OFF(deployment_fences), 0, 0, "on",
      "share every write's fences through Redis with every server on the same prefix (docs/consistency.md); "
      "off exists only for tests: each server then trusts its own fences, and several servers break the "
      "read-your-writes guarantee" },
    { "redis", "write_through", KT_BOOL, OFF(cache_write_through), 0, 0, "on",
      "a committed update or create stores its row in Redis (only when it is provably the newest: "
      "docs/consistency.md, \"Write-through\"), so the next reads hit; off: it only deletes the row's "
      "value" },
    { "redis", "prefix", KT_STR, OFF(redis_prefix), 0, 0, "pgapi:v2",
      "namespace of every key; bump the version after a schema change" },
    { "redis", "sentinels", KT_STR, OFF(redis_sentinels_text), 0, 0, "",
      "Redis Sentinels (IP literal:port, comma-separated) that name the master (master_name); when set, "
      "host, port and socket are not used and a master change makes pgapi verify the new store before "
      "trusting it" },
    { "redis", "master_name", KT_STR, OFF(redis_master_name), 0, 0, "",
      "the name the Sentinels monitor the Redis master under (with sentinels)" },
    { "redis", "socket", KT_STR, OFF(redis_socket), 0, 0, "",
      "Unix socket path of Redis; when set, host and port are not used (hiredis 0.14 has no TLS: keep "
      "Redis on this host, on the socket or loopback)" },
    { "redis", "username", KT_STR, OFF(redis_username), 0, 0, "",
      "Redis ACL user to AUTH as (needs a password); empty: the default user" },
    { "redis", "password_file", KT_STR, OFF(redis_password_file), 0, 0, "",
      "file whose first line is the Redis password, read at start and on every reload (not readable by "
      "others); or set PGAPI_REDIS_PASSWORD in the environment instead; never put the password in this "
      "file" },
    { "ratelimit", "enabled", KT_BOOL, OFF(ratelimit_enabled), 0, 0, "off",
      "limit the API routes' requests per client (the token's subject, else the client address) in Redis; "
      "429 rate_limited past the limit" },
    { "ratelimit", "read_rate", KT_INT, OFF(read_rate), 1, 1000000, "100",
      "GET and HEAD requests per second one client may make, sustained" },
    { "ratelimit", "read_burst", KT_INT, OFF(read_burst), 1, 1000000, "200",
      "GET and HEAD requests one client may make at once, above the rate, after a quiet spell" },
    { "ratelimit", "write_rate", KT_INT, OFF(write_rate), 1, 1000000, "20",
      "POST, PUT, PATCH and DELETE requests per second one client may make, sustained" },
    { "ratelimit", "write_burst", KT_INT, OFF(write_burst), 1, 1000000, "40",
      "writes one client may make at once, above the rate, after a quiet spell" },
    { "idempotency", "ttl", KT_SEC, OFF(idempotency_ttl_s), 1000, 2592000000LL, "24h",
      "how long a write sent with an Idempotency-Key is remembered: the same key and request within it get "
      "the first answer again (Idempotent-Replayed: true) and write nothing; units s, m, h" },
    { "idempotency", "purge_interval", KT_MS, OFF(idempotency_purge_interval_ms), 100, 86400000, "1m",
      "how often one worker of each server deletes expired keys on the primary (in batches of 1000)" },
    { "metrics", "listen", KT_LISTEN, OFF(metrics_listen), 0, 0, "127.0.0.1:3001",
      "address:port serving GET /metrics (Prometheus text format, every worker's series with a worker "
      "label); keep it off the public interface; \"off\" disables it" },
    { "auth", "mode", KT_STR, OFF(auth_mode_text), 0, 0, "off",
      "off: no authentication (allowed on a loopback listen address only, unless allow_anonymous = on); "
      "required: every API route needs a valid JWT bearer token with its scope" },
    { "auth", "allow_anonymous", KT_BOOL, OFF(auth_allow_anonymous), 0, 0, "off",
      "on: mode = off is accepted on a non-loopback listen address (anyone who reaches the port may read "
      "and write everything)" },
    { "auth", "hs256_secret_file", KT_STR, OFF(auth_secret_file), 0, 0, "",
      "file holding the HS256 secret (32 to 512 bytes; one trailing line end is dropped; not readable by "
      "others); or set " CONFIG_AUTH_SECRET_ENV " in the environment instead; read at start and reload" },
    { "auth", "public_key_file", KT_STR, OFF(auth_public_key_file), 0, 0, "",
      "PEM public key (-----BEGIN PUBLIC KEY-----): RSA of 2048 bits or more verifies RS256, EC P-256 "
      "ES256; read at start and reload" },
    { "auth", "jwks_file", KT_STR, OFF(auth_jwks_file), 0, 0, "",
      "JWKS file ({\"keys\":[...]}, RSA and EC P-256 signing keys chosen by kid); read at start and "
      "reload (a bad one at a reload keeps the old keys)" },
    { "auth", "audience", KT_STR, OFF(auth_audience), 0, 0, "",
      "when set, a token's aud (a string or an array) must hold it" },
    { "auth", "issuer", KT_STR, OFF(auth_issuer), 0, 0, "", "when set, a token's iss must equal it" },
    { "auth", "leeway", KT_SEC, OFF(auth_leeway_s), 0, 300000, "30s",
      "clock skew allowed on exp and nbf (at most 5m)" },
    { "auth", "scope_claim", KT_STR, OFF(auth_scope_claim), 0, 0, "scope",
      "the claim holding the token's scopes: a space-separated string or a JSON array of strings; routes "
      "need read (GET), write (POST, PUT, PATCH, DELETE of a post) or admin (DELETE of a user)" },
    { "log", "level", KT_LEVEL, OFF(log_level), 0, 0, "info", "error, warn, info or debug" },
    { "log", "format", KT_FORMAT, OFF(log_format), 0, 0, "text", "text or json (one JSON object a line)" },
    { "log", "access", KT_BOOL, OFF(access_log), 0, 0, "on", "one line per request" },
    { "log", "file", KT_STR, OFF(log_file), 0, 0, "",
      "append every line to this file (created mode 0640) instead of stderr, for hosts without journald; "
      "SIGUSR1 reopens it after a rotation (logrotate's postrotate); empty: stderr" },
};

#define NKEYS (sizeof(config_keys) / sizeof(config_keys[0]))

struct parse_ctx {
    struct config *cfg;
    char err[CONFIG_ERR_MAX];
    bool replica_seen; /* the first replica line in a file replaces the default list */
};

static const struct config_key *key_find(const char *section, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcasecmp(config_keys[i].section, section) == 0 && strcasecmp(config_keys[i].name, name) == 0)
            return &config_keys[i];
    return NULL;
}

static int parse_ll(const char *s, long long *out, const char **rest)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s)
        return -1;
    *out = v;
    *rest = end;
    return 0;
}

static int parse_ms(const char *s, long long *out)
{
    const char *unit;
    long long v;
    if (parse_ll(s, &v, &unit) < 0 || v < 0)
        return -1;
    long long mul;
    if (*unit == '\0' || strcmp(unit, "s") == 0)
        mul = 1000;
    else if (strcmp(unit, "ms") == 0)
        mul = 1;
    else if (strcmp(unit, "m") == 0)
        mul = 60000;
    else if (strcmp(unit, "h") == 0)
        mul = 3600000;
    else
        return -1;
    if (v > LLONG_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

static int parse_size(const char *s, long long *out)
{
    const char *unit;
    long long v;
    if (parse_ll(s, &v, &unit) < 0 || v < 0)
        return -1;
    long long mul = 1;
    if (strcasecmp(unit, "k") == 0)
        mul = 1024;
    else if (strcasecmp(unit, "m") == 0)
        mul = 1024 * 1024;
    else if (*unit != '\0')
        return -1;
    if (v > LLONG_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *yes[] = { "on", "yes", "true", "1" }, *no[] = { "off", "no", "false", "0" };
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static int set_string(char *dst, size_t cap, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n >= cap) {
        snprintf(err, errlen, "value longer than %zu bytes", cap - 1);
        return -1;
    }
    memcpy(dst, v, n + 1);
    return 0;
}

/* KT_LISTEN: "address:port" into a struct config_addr; "off" (port 0) where the key's min is 0. */
static int set_listen(const struct config_key *k, struct config *cfg, const char *v, char *err, size_t errlen)
{
    struct config_addr *a = (struct config_addr *)((char *)cfg + k->offset);
    if (k->min == 0 && strcasecmp(v, "off") == 0) {
        *a = (struct config_addr){ .host = "", .port = 0 };
        return 0;
    }
    const char *colon = strrchr(v, ':');
    long long port;
    const char *rest;
    if (!colon || colon == v || parse_ll(colon + 1, &port, &rest) < 0 || *rest || port < 1 || port > 65535) {
        snprintf(err, errlen, "expected address:port with a port in 1..65535%s, got \"%s\"",
                 k->min == 0 ? " (or off)" : "", v);
        return -1;
    }
    size_t hl = (size_t)(colon - v);
    if (hl >= sizeof(a->host)) {
        snprintf(err, errlen, "address too long");
        return -1;
    }
    memcpy(a->host, v, hl);
    a->host[hl] = '\0';
    a->port = (int)port;
    return 0;
}

static int set_number(const struct config_key *k, struct config *cfg, const char *v, char *err, size_t errlen)
{
    long long n;
    const char *rest = "";
    int rc;
    const char *what;
    if (k->type == KT_MS || k->type == KT_SEC) {
        rc = parse_ms(v, &n);
        what = "duration (e.g. 250ms, 5s, 2m)";
    } else if (k->type == KT_SIZE) {
        rc = parse_size(v, &n);
        what = "size (e.g. 512, 64k, 1m)";
    } else {
        rc = parse_ll(v, &n, &rest);
        what = "integer";
    }
    if (rc < 0 || *rest) {
        snprintf(err, errlen, "\"%s\" is not a valid %s", v, what);
        return -1;
    }
    if (n < k->min || n > k->max) {
        snprintf(err, errlen, "%s out of range %lld..%lld", v, k->min, k->max);
        return -1;
    }
    void *dst = (char *)cfg + k->offset;
    if (k->type == KT_SIZE)
        *(size_t *)dst = (size_t)n;
    else if (k->type == KT_SEC)
        *(int *)dst = (int)(n / 1000); /* kept in seconds: Redis EX takes seconds */
    else
        *(int *)dst = (int)n;
    return 0;
}

static int set_replica(struct parse_ctx *ctx, const char *v, char *err, size_t errlen)
{
    struct config *cfg = ctx->cfg;
    if (!ctx->replica_seen) {
        cfg->replica_count = 0;
        ctx->replica_seen = true;
    }
    if (cfg->replica_count >= CONFIG_MAX_REPLICAS) {
        snprintf(err, errlen, "at most %d replicas", CONFIG_MAX_REPLICAS);
        return -1;
    }
    if (set_string(cfg->replica_dsn[cfg->replica_count], CONFIG_DSN_MAX, v, err, errlen) < 0)
        return -1;
    cfg->replica_count++;
    return 0;
}

static int key_set(const struct config_key *k, struct parse_ctx *ctx, const char *v, char *err, size_t errlen)
{
    struct config *cfg = ctx->cfg;
    void *dst = (char *)cfg + k->offset;
    switch (k->type) {
    case KT_INT:
    case KT_MS:
    case KT_SEC:
    case KT_SIZE:
        return set_number(k, cfg, v, err, errlen);
    case KT_BOOL:
        if (parse_bool(v, dst) == 0)
            return 0;
        snprintf(err, errlen, "\"%s\" is not on/off", v);
        return -1;
    case KT_STR:
    case KT_DSN:
        return set_string(dst, k->size, v, err, errlen);
    case KT_LISTEN:
        return set_listen(k, cfg, v, err, errlen);
    case KT_REPLICA:
        return set_replica(ctx, v, err, errlen);
    case KT_LEVEL:
        if (log_level_parse(v, dst) == 0)
            return 0;
        snprintf(err, errlen, "\"%s\" is not one of error, warn, info, debug", v);
        return -1;
    case KT_FORMAT:
        if (log_format_parse(v, dst) == 0)
            return 0;
        snprintf(err, errlen, "\"%s\" is not text or json", v);
        return -1;
    }
    return -1;
}

/* inih callback: returning 0 makes ini_parse report this line as the first error. */
static int config_ini_line(void *user, const char *section, const char *name, const char *value)
{
    struct parse_ctx *ctx = user;
    if (ctx->err[0])
        return 0;
    const struct config_key *k = key_find(section, name);
    char why[CONFIG_ERR_MAX - 64];
    if (!k) {
        snprintf(ctx->err, sizeof(ctx->err), "unknown key \"%s\" in section [%s]", name, section);
        return 0;
    }
    if (key_set(k, ctx, value, why, sizeof(why)) < 0) {
        snprintf(ctx->err, sizeof(ctx->err), "[%s] %s: %s", section, name, why);
        return 0;
    }
    return 1;
}

static int defaults_apply(struct config *cfg)
{
    struct parse_ctx ctx = { .cfg = cfg };
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NKEYS; i++) {
        char why[256];
        if (key_set(&config_keys[i], &ctx, config_keys[i].def, why, sizeof(why)) < 0)
            return -1;
    }
    return 0;
}

static void env_name(const struct config_key *k, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "PGAPI_%s_%s", k->section, k->name);
    for (size_t i = 0; i < n && i < cap; i++)
        buf[i] = (char)toupper((unsigned char)buf[i]);
}

/* PGAPI_<SECTION>_<KEY> overrides the file, so secrets and per-host values stay out of committed ini. */
static int env_apply(struct config *cfg, char *err, size_t errlen)
{
    struct parse_ctx ctx = { .cfg = cfg };
    for (size_t i = 0; i < NKEYS; i++) {
        char name[96], why[256];
        env_name(&config_keys[i], name, sizeof(name));
        const char *v = getenv(name);
        if (!v)
            continue;
        if (key_set(&config_keys[i], &ctx, v, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "environment %s: %s", name, why);
            return -1;
        }
    }
    return 0;
}

/* inih reads a line into a buffer of INI_MAX_LINE bytes (200 in Debian's build) and parses the rest of a
 * longer one as a line of its own: a long conninfo would fail with a baffling "unknown key". */
static int lines_check(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0; /* ini_parse reports it */
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int lineno = 0, rc = 0;
    const ssize_t max = INI_MAX_LINE - 2; /* the line end and the terminating NUL take the rest */
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n > max) {
            snprintf(err, errlen,
                     "%s:%d: line of %zd characters; at most %zd are read (for a long conninfo, move the "
                     "password file name to PGPASSFILE or use a service file)",
                     path, lineno, n, max);
            rc = -1;
            break;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

static int file_apply(struct config *cfg, const char *path, char *err, size_t errlen)
{
    struct parse_ctx ctx = { .cfg = cfg };
    if (lines_check(path, err, errlen) < 0)
        return -1;
    int rc = ini_parse(path, config_ini_line, &ctx);
    if (rc == -1) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (rc == -2) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    if (rc > 0) {
        snprintf(err, errlen, "%s:%d: %s", path, rc, ctx.err[0] ? ctx.err : "syntax error");
        return -1;
    }
    return 0;
}

/* One "ip:port" (an IPv6 literal in brackets) of [redis] sentinels. An IP literal: hiredis resolves a name
 * with a blocking getaddrinfo, which must not run on a worker's loop. */
static int sentinel_parse(const char *item, struct config_addr *out, char *err, size_t errlen)
{
    const char *colon = strrchr(item, ':');
    const char *host = item;
    size_t hlen = colon ? (size_t)(colon - item) : 0;
    if (hlen >= 2 && item[0] == '[' && item[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    unsigned char buf[sizeof(struct in6_addr)];
    if (!colon || hlen == 0 || hlen >= sizeof(out->host) || !end || *end || end == colon + 1 || port < 1 ||
        port > 65535) {
        snprintf(err, errlen, "[redis] sentinels: \"%s\" is not ip:port", item);
        return -1;
    }
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    if (inet_pton(AF_INET, out->host, buf) != 1 && inet_pton(AF_INET6, out->host, buf) != 1) {
        snprintf(err, errlen, "[redis] sentinels: \"%s\" is not an IP literal", out->host);
        return -1;
    }
    out->port = (int)port;
    return 0;
}

static int sentinels_parse(struct config *cfg, char *err, size_t errlen)
{
    char list[sizeof(cfg->redis_sentinels_text)], *save = NULL;
    snprintf(list, sizeof(list), "%s", cfg->redis_sentinels_text);
    cfg->redis_sentinel_count = 0;
    for (char *item = strtok_r(list, ", ", &save); item; item = strtok_r(NULL, ", ", &save)) {
        if (cfg->redis_sentinel_count == CONFIG_MAX_SENTINELS) {
            snprintf(err, errlen, "[redis] sentinels: at most %d", CONFIG_MAX_SENTINELS);
            return -1;
        }
        if (sentinel_parse(item, &cfg->redis_sentinels[cfg->redis_sentinel_count], err, errlen) < 0)
            return -1;
        cfg->redis_sentinel_count++;
    }
    if (cfg->redis_sentinel_count && !cfg->redis_master_name[0]) {
        snprintf(err, errlen, "[redis] sentinels is set but master_name is empty");
        return -1;
    }
    if (cfg->redis_sentinel_count && cfg->redis_socket[0]) {
        snprintf(err, errlen, "[redis] sentinels and socket are both set: keep one");
        return -1;
    }
    return 0;
}

/* One origin as a browser serialises it: http or https, a host, an optional port; no path, no slash, no
 * user info, at most CONFIG_ORIGIN_MAX bytes (worker/http/cors.c compares the Origin header byte for
 * byte). "null" is refused: sandboxed frames and file: pages all send it, so allowing it allows them all. */
static int origin_check(const char *o, size_t len, char *err, size_t errlen)
{
    size_t scheme = strncmp(o, "https://", 8) == 0 ? 8 : strncmp(o, "http://", 7) == 0 ? 7 : 0;
    bool ok = scheme && len > scheme && len <= CONFIG_ORIGIN_MAX;
    for (size_t i = scheme; ok && i < len; i++)
        ok = isalnum((unsigned char)o[i]) || strchr(".-:[]", o[i]);
    if (!ok)
        snprintf(err, errlen,
                 "[server] cors_origins: \"%.*s\" is not an origin (http[s]://host[:port], no path, at most "
                 "%d bytes)",
                 (int)(len > 80 ? 80 : len), o, CONFIG_ORIGIN_MAX);
    return ok ? 0 : -1;
}

static int cors_origins_check(const char *list, char *err, size_t errlen)
{
    if (strcmp(list, "*") == 0)
        return 0;
    for (const char *p = list; *p;) {
        p += strspn(p, " ,");
        size_t len = strcspn(p, " ,");
        if (len && origin_check(p, len, err, errlen) < 0)
            return -1;
        p += len;
    }
    return 0;
}

/* Whether host (a listen address) is loopback: 127.0.0.0/8, ::1 or "localhost". */
static bool host_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* mode = off on an address others reach serves every row to anyone: only with allow_anonymous = on. */
static int auth_mode_check(struct config *cfg, char *err, size_t errlen)
{
    if (strcmp(cfg->auth_mode_text, "required") == 0)
        cfg->auth_required = true;
    else if (strcmp(cfg->auth_mode_text, "off") == 0)
        cfg->auth_required = false;
    else {
        snprintf(err, errlen, "[auth] mode: \"%s\" is not off or required", cfg->auth_mode_text);
        return -1;
    }
    if (!cfg->auth_required && !cfg->auth_allow_anonymous && !host_loopback(cfg->listen.host)) {
        snprintf(
            err, errlen,
            "[auth] mode = off on the non-loopback address %s: anyone who reaches it could read and write "
            "everything; set [auth] mode = required (with a key), or allow_anonymous = on to accept that",
            cfg->listen.host);
        return -1;
    }
    if (!cfg->auth_scope_claim[0]) {
        snprintf(err, errlen, "[auth] scope_claim must not be empty");
        return -1;
    }
    return 0;
}

/* One "address[/bits]" of trusted_proxies; without /bits, the single address. */
static int cidr_parse(const char *item, struct config_cidr *out, char *err, size_t errlen)
{
    char addr[64];
    const char *slash = strchr(item, '/');
    size_t len = slash ? (size_t)(slash - item) : strlen(item);
    if (len >= sizeof(addr))
        goto bad;
    memcpy(addr, item, len);
    addr[len] = '\0';
    *out = (struct config_cidr){ .family = strchr(addr, ':') ? AF_INET6 : AF_INET };
    int max = out->family == AF_INET6 ? 128 : 32;
    if (inet_pton(out->family, addr, out->addr) != 1)
        goto bad;
    out->bits = max;
    if (slash) {
        char *end;
        errno = 0;
        long bits = strtol(slash + 1, &end, 10);
        if (errno || end == slash + 1 || *end || bits < 0 || bits > max)
            goto bad;
        out->bits = (int)bits;
    }
    return 0;
bad:
    snprintf(err, errlen, "[server] trusted_proxies: \"%.64s\" is not an address or address/bits", item);
    return -1;
}

static int trusted_proxies_parse(struct config *cfg, char *err, size_t errlen)
{
    char list[sizeof(cfg->trusted_proxies_text)], *save = NULL;
    snprintf(list, sizeof(list), "%s", cfg->trusted_proxies_text);
    cfg->trusted_proxy_count = 0;
    for (char *item = strtok_r(list, ", ", &save); item; item = strtok_r(NULL, ", ", &save)) {
        if (cfg->trusted_proxy_count == CONFIG_MAX_TRUSTED_PROXIES) {
            snprintf(err, errlen, "[server] trusted_proxies: at most %d networks",
                     CONFIG_MAX_TRUSTED_PROXIES);
            return -1;
        }
        if (cidr_parse(item, &cfg->trusted_proxies[cfg->trusted_proxy_count], err, errlen) < 0)
            return -1;
        cfg->trusted_proxy_count++;
    }
    return 0;
}

static int config_validate(struct config *cfg, char *err, size_t errlen)
{
    if (cors_origins_check(cfg->cors_origins, err, errlen) < 0 || trusted_proxies_parse(cfg, err, errlen) < 0)
        return -1;
    if (auth_mode_check(cfg, err, errlen) < 0)
        return -1;
    if (cfg->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n > 0 ? (int)n : 1;
    }
    if (cfg->primary_dsn[0] == '\0') {
        snprintf(err, errlen, "[database] primary must not be empty");
        return -1;
    }
    if (cfg->metrics_listen.port == cfg->listen.port &&
        strcmp(cfg->metrics_listen.host, cfg->listen.host) == 0) {
        snprintf(err, errlen, "[metrics] listen must differ from [server] listen (%s:%d)", cfg->listen.host,
                 cfg->listen.port);
        return -1;
    }
    if (cfg->redis_enabled && cfg->redis_host[0] == '\0') {
        snprintf(err, errlen, "[redis] host must not be empty when the cache is enabled");
        return -1;
    }
    return sentinels_parse(cfg, err, errlen);
}

/* The first line of the password file, without its line end. Refused when others may read or write it. */
static int password_file_read(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    struct stat st;
    int rc = -1;
    if (!f) {
        snprintf(err, errlen, "[redis] password_file %s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "[redis] password_file %s: not a regular file", path);
        goto done;
    }
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        snprintf(err, errlen,
                 "[redis] password_file %s: mode %04o lets other users read or write it (chmod o-rwx)", path,
                 (unsigned)(st.st_mode & 07777));
        goto done;
    }
    if (!fgets(out, (int)cap, f)) {
        snprintf(err, errlen, "[redis] password_file %s: empty", path);
        goto done;
    }
    size_t n = strcspn(out, "\r\n");
    if (n == cap - 1 && out[n] == '\0') {
        snprintf(err, errlen, "[redis] password_file %s: the password is longer than %zu bytes", path,
                 cap - 2);
        goto done;
    }
    out[n] = '\0';
    rc = 0;
done:
    fclose(f);
    return rc;
}

/* The Redis password comes from the environment or from password_file, never from the ini itself. */
static int redis_password_load(struct config *cfg, char *err, size_t errlen)
{
    const char *env = getenv(CONFIG_REDIS_PASSWORD_ENV);
    cfg->redis_password[0] = '\0';
    if (env && cfg->redis_password_file[0]) {
        snprintf(err, errlen, "both %s and [redis] password_file are set: keep one",
                 CONFIG_REDIS_PASSWORD_ENV);
        return -1;
    }
    if (env && set_string(cfg->redis_password, sizeof(cfg->redis_password), env, err, errlen) < 0) {
        snprintf(err, errlen, "environment %s: longer than %zu bytes", CONFIG_REDIS_PASSWORD_ENV,
                 sizeof(cfg->redis_password) - 1);
        return -1;
    }
    if (cfg->redis_password_file[0] && password_file_read(cfg->redis_password_file, cfg->redis_password,
                                                          sizeof(cfg->redis_password), err, errlen) < 0)
        return -1;
    if (cfg->redis_username[0] && !cfg->redis_password[0]) {
        snprintf(err, errlen, "[redis] username is set but no password (%s or [redis] password_file)",
                 CONFIG_REDIS_PASSWORD_ENV);
        return -1;
    }
    return 0;
}

/* A whole key file into out (cap bytes, NUL-terminated); its length, or -1. Refused when it is not a
 * regular file, longer than cap - 1 bytes, or (secret) readable or writable by others. */
static long auth_file_read(const char *what, const char *path, char *out, size_t cap, bool secret, char *err,
                           size_t errlen)
{
    FILE *f = fopen(path, "r");
    struct stat st;
    long n = -1;
    if (!f) {
        snprintf(err, errlen, "[auth] %s %s: cannot open: %s", what, path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode))
        snprintf(err, errlen, "[auth] %s %s: not a regular file", what, path);
    else if (secret && (st.st_mode & (S_IROTH | S_IWOTH)))
        snprintf(err, errlen, "[auth] %s %s: mode %04o lets other users read or write it (chmod o-rwx)", what,
                 path, (unsigned)(st.st_mode & 07777));
    else if (st.st_size >= (off_t)cap)
        snprintf(err, errlen, "[auth] %s %s: longer than %zu bytes", what, path, cap - 1);
    else {
        size_t got = fread(out, 1, cap - 1, f);
        if (ferror(f))
            snprintf(err, errlen, "[auth] %s %s: cannot read: %s", what, path, strerror(errno));
        else
            n = (long)got;
    }
    if (n >= 0)
        out[n] = '\0';
    fclose(f);
    return n;
}

/* The HS256 secret from the environment or hs256_secret_file (one trailing line end dropped: editors add
 * one), never from the ini itself. */
static int auth_secret_load(struct config *cfg, char *err, size_t errlen)
{
    const char *env = getenv(CONFIG_AUTH_SECRET_ENV);
    char buf[CONFIG_AUTH_SECRET_MAX + 2];
    long n = 0;
    if (env && cfg->auth_secret_file[0]) {
        snprintf(err, errlen, "both %s and [auth] hs256_secret_file are set: keep one",
                 CONFIG_AUTH_SECRET_ENV);
        return -1;
    }
    if (env) {
        n = (long)strlen(env);
        if (n > CONFIG_AUTH_SECRET_MAX) {
            snprintf(err, errlen, "environment %s: longer than %d bytes", CONFIG_AUTH_SECRET_ENV,
                     CONFIG_AUTH_SECRET_MAX);
            return -1;
        }
        memcpy(buf, env, (size_t)n);
    } else if (cfg->auth_secret_file[0]) {
        n = auth_file_read("hs256_secret_file", cfg->auth_secret_file, buf, sizeof(buf), true, err, errlen);
        if (n < 0)
            return -1;
        if (n > 0 && buf[n - 1] == '\n')
            n--;
        if (n > 0 && buf[n - 1] == '\r')
            n--;
        if (n > CONFIG_AUTH_SECRET_MAX) {
            snprintf(err, errlen, "[auth] hs256_secret_file %s: longer than %d bytes", cfg->auth_secret_file,
                     CONFIG_AUTH_SECRET_MAX);
            return -1;
        }
    }
    memcpy(cfg->auth_secret, buf, (size_t)n);
    cfg->auth_secret_len = (size_t)n;
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

/* Reads the key material and checks it with the verifier's own loader (common/jwt): what a generation's
 * workers load is what was checked here. With mode = required at least one key must be set. */
static int auth_keys_load(struct config *cfg, char *err, size_t errlen)
{
    char why[CONFIG_ERR_MAX - 64];
    cfg->auth_public_key[0] = cfg->auth_jwks[0] = '\0';
    if (auth_secret_load(cfg, err, errlen) < 0)
        return -1;
    if (cfg->auth_public_key_file[0] &&
        auth_file_read("public_key_file", cfg->auth_public_key_file, cfg->auth_public_key,
                       sizeof(cfg->auth_public_key), false, err, errlen) < 0)
        return -1;
    if (cfg->auth_jwks_file[0] && auth_file_read("jwks_file", cfg->auth_jwks_file, cfg->auth_jwks,
                                                 sizeof(cfg->auth_jwks), false, err, errlen) < 0)
        return -1;
    if (!cfg->auth_required && !cfg->auth_secret_len && !cfg->auth_public_key[0] && !cfg->auth_jwks[0])
        return 0;
    struct jwt_keys *keys = config_auth_keys(cfg, why, sizeof(why));
    if (!keys) {
        snprintf(err, errlen, "[auth] %s", why);
        return -1;
    }
    jwt_keys_free(keys);
    return 0;
}

struct jwt_keys *config_auth_keys(const struct config *cfg, char *err, size_t errlen)
{
    struct jwt_key_source src = { .secret = cfg->auth_secret,
                                  .secret_len = cfg->auth_secret_len,
                                  .pem = cfg->auth_public_key,
                                  .jwks = cfg->auth_jwks };
    return jwt_keys_load(&src, err, errlen);
}

int config_load(struct config *out, const char *path, char *err, size_t errlen)
{
    struct config *cfg = malloc(sizeof(*cfg));
    int rc = -1;
    if (!cfg) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (defaults_apply(cfg) < 0) {
        snprintf(err, errlen, "internal error: a default value does not parse");
        goto done;
    }
    if (path) {
        if (set_string(cfg->path, sizeof(cfg->path), path, err, errlen) < 0)
            goto done;
        if (file_apply(cfg, path, err, errlen) < 0)
            goto done;
    }
    if (env_apply(cfg, err, errlen) < 0 || redis_password_load(cfg, err, errlen) < 0 ||
        config_validate(cfg, err, errlen) < 0 || auth_keys_load(cfg, err, errlen) < 0)
        goto done;
    *out = *cfg;
    rc = 0;
done:
    OPENSSL_cleanse(cfg, sizeof(*cfg)); /* the secrets of a refused configuration too */
    free(cfg);
    return rc;
}

/* One conninfo value as libpq reads it back: quoted when it is empty or holds a blank, quote or backslash. */
static void dsn_value_print(FILE *f, const char *v)
{
    if (v[0] && !strpbrk(v, " \t\n\r\f\v'\\")) {
        fputs(v, f);
        return;
    }
    fputc('\'', f);
    for (; *v; v++) {
        if (*v == '\'' || *v == '\\')
            fputc('\\', f);
        fputc(*v, f);
    }
    fputc('\'', f);
}

/* A conninfo as libpq's own parser reads it (keyword or URI form), printed in keyword form with every
 * option libpq flags as secret (dispchar "*": password, sslpassword) shown as ****. A conninfo that
 * does not parse is not printed at all: its text could hold a password in any place. */
static void dsn_print_masked(FILE *f, const char *name, const char *dsn)
{
    char *why = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &why);
    if (!opts) {
        fprintf(f, "%s = (not shown: libpq cannot parse it)\n", name);
        PQfreemem(why);
        return;
    }
    fprintf(f, "%s =", name);
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        fprintf(f, " %s=", o->keyword);
        if (o->dispchar && o->dispchar[0] == '*')
            fputs("****", f);
        else
            dsn_value_print(f, o->val);
    }
    fputc('\n', f);
    PQconninfoFree(opts);
}

/* [auth] as --check-config shows it: where the keys come from, never the secret itself. */
static void auth_print(const struct config *c, FILE *f)
{
    fprintf(f,
            "\n[auth]\nmode = %s\nallow_anonymous = %s\nhs256_secret_file = %s\npublic_key_file = %s\n"
            "jwks_file = %s\naudience = %s\nissuer = %s\nleeway = %ds\nscope_claim = %s\n",
            c->auth_mode_text, c->auth_allow_anonymous ? "on" : "off", c->auth_secret_file,
            c->auth_public_key_file, c->auth_jwks_file, c->auth_audience, c->auth_issuer, c->auth_leeway_s,
            c->auth_scope_claim);
    if (c->auth_secret_len && !c->auth_secret_file[0])
        fprintf(f, "; the HS256 secret comes from %s (not shown)\n", CONFIG_AUTH_SECRET_ENV);
}

void config_print(const struct config *c, FILE *f)
{
    static const char *lv[] = { "error", "warn", "info", "debug" };
    char metrics_addr[80] = "off";
    if (c->metrics_listen.port)
        snprintf(metrics_addr, sizeof(metrics_addr), "%s:%d", c->metrics_listen.host, c->metrics_listen.port);
    fprintf(f,
            "[server]\nlisten = %s:%d\nworkers = %d\nbacklog = %d\nkeepalive_timeout = %dms\n"
            "request_timeout = %dms\ndrain_timeout = %dms\nmax_connections = %d\nmax_body_bytes = %zu\n"
            "max_header_bytes = %zu\nmax_unsent_bytes = %zu\nmax_connections_per_client = %d\nallowed_hosts "
            "= %s\ncors_origins = %s\n"
            "page_bytes = %zu\nembed_posts = %d\n\n[database]\n",
            c->listen.host, c->listen.port, c->workers, c->backlog, c->keepalive_timeout_ms,
            c->request_timeout_ms, c->drain_timeout_ms, c->max_connections, c->max_body_bytes,
            c->max_header_bytes, c->max_unsent_bytes, c->max_connections_per_client, c->allowed_hosts,
            c->cors_origins, c->page_bytes, c->embed_posts);
    dsn_print_masked(f, "primary", c->primary_dsn);
    for (int i = 0; i < c->replica_count; i++)
        dsn_print_masked(f, "replica", c->replica_dsn[i]);
    fprintf(f,
            "pool_size = %d\nstatement_timeout = %dms\nconnect_timeout = %dms\nqueue_size = %d\n"
            "queue_timeout = %dms\nmax_replica_lag = %dms\nhealth_interval = %dms\nreplica_wait = %dms\n"
            "migrations_dir = %s\n\n"
            "[redis]\nenabled = %s\nhost = %s\nport = %d\nttl = %ds\nconnect_timeout = %dms\n"
            "command_timeout = %dms\nprefix = %s\nsentinels = %s\nmaster_name = %s\nsocket = %s\nusername = "
            "%s\npassword_file = %s\n"
            "local_entries = %d\nlocal_bytes = %zu\nmax_value_bytes = %zu\nlist_pages = "
            "%d\ndeployment_fences = %s\nwrite_through = %s\n\n[metrics]\nlisten = %s\n\n"
            "[log]\nlevel = %s\nformat = %s\naccess = %s\nfile = %s\n",
            c->pool_size, c->statement_timeout_ms, c->connect_timeout_ms, c->queue_size, c->queue_timeout_ms,
            c->max_replica_lag_ms, c->health_interval_ms, c->replica_wait_ms, c->migrations_dir,
            c->redis_enabled ? "on" : "off", c->redis_host, c->redis_port, c->cache_ttl_s,
            c->redis_connect_timeout_ms, c->redis_command_timeout_ms, c->redis_prefix,
            c->redis_sentinels_text, c->redis_master_name, c->redis_socket, c->redis_username,
            c->redis_password_file, c->local_cache_entries, c->local_cache_bytes, c->cache_max_value_bytes,
            c->cache_list_pages, c->deployment_fences ? "on" : "off", c->cache_write_through ? "on" : "off",
            metrics_addr, lv[c->log_level], c->log_format == LOGF_JSON ? "json" : "text",
            c->access_log ? "on" : "off", c->log_file);
    fprintf(f, "\n[server]\nproxy_protocol = %s\ntrusted_proxies = %s\n", c->proxy_protocol ? "on" : "off",
            c->trusted_proxies_text);
    fprintf(
        f,
        "\n[ratelimit]\nenabled = %s\nread_rate = %d\nread_burst = %d\nwrite_rate = %d\nwrite_burst = %d\n",
        c->ratelimit_enabled ? "on" : "off", c->read_rate, c->read_burst, c->write_rate, c->write_burst);
    auth_print(c, f);
}

void config_print_keys(FILE *f)
{
    const char *section = "";
    for (size_t i = 0; i < NKEYS; i++) {
        const struct config_key *k = &config_keys[i];
        char env[96];
        if (strcmp(section, k->section) != 0)
            fprintf(f, "\n  [%s]\n", section = k->section);
        env_name(k, env, sizeof(env));
        fprintf(f, "    %-18s default \"%s\" (env %s)\n        %s\n", k->name, k->def, env, k->doc);
    }
}
