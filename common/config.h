/* config: one immutable struct per configuration generation, built from a declarative key table by
 * parsing an ini file with inih, then environment overrides (PGAPI_<SECTION>_<KEY>). */
#ifndef PGAPI_CONFIG_H
#define PGAPI_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "common/log.h"

#define CONFIG_MAX_REPLICAS 8
#define CONFIG_DSN_MAX 512
#define CONFIG_ERR_MAX 512
#define CONFIG_MAX_SENTINELS 8
#define CONFIG_ORIGIN_MAX 255         /* one origin of [server] cors_origins */
#define CONFIG_MAX_TRUSTED_PROXIES 16 /* networks of [server] trusted_proxies */
/* The environment variable holding the Redis password (the other way is [redis] password_file). */
#define CONFIG_REDIS_PASSWORD_ENV "PGAPI_REDIS_PASSWORD"
/* The environment variable holding the HS256 secret (the other way is [auth] hs256_secret_file). */
#define CONFIG_AUTH_SECRET_ENV "PGAPI_AUTH_HS256_SECRET"
#define CONFIG_AUTH_SECRET_MAX 512 /* common/jwt.h's JWT_SECRET_MAX */
#define CONFIG_AUTH_PEM_MAX 8192   /* JWT_PEM_MAX */
#define CONFIG_AUTH_JWKS_MAX 16384 /* JWT_JWKS_MAX */

/* One network of [server] trusted_proxies: an IPv4 (family AF_INET, addr[0..3]) or IPv6 address and
 * its prefix length. */
struct config_cidr {
    int family;
    unsigned char addr[16];
    int bits;
};

/* An address:port to listen on; port 0 = off (only where the key allows it). */
struct config_addr {
    char host[64];
    int port;
};

struct config {
    char path[512]; /* "" when running on the embedded defaults */
    /* [server] */
    struct config_addr listen;
    int workers; /* 0 in the file means one per CPU; resolved at load time */
    int backlog;
    int keepalive_timeout_ms;
    int request_timeout_ms;
    int drain_timeout_ms;
    int max_connections; /* per worker */
    size_t max_body_bytes;
    size_t max_header_bytes;
    size_t max_unsent_bytes;        /* per worker: responses queued for clients that do not read */
    int max_connections_per_client; /* per client address, across all workers; 0 = no limit */
    char allowed_hosts[512];        /* comma-separated host names; "" = any */
    char cors_origins[512];         /* comma-separated exact origins, or "*"; "" = no CORS */
    size_t page_bytes;              /* byte budget of the rows of one answer (a page, embedded posts) */
    int embed_posts;                /* posts embedded by ?include=posts */
    bool proxy_protocol;            /* a trusted proxy's connection may start with a PROXY v2 header */
    char trusted_proxies_text[512]; /* networks (CIDR) whose X-Forwarded-For or PROXY header is believed */
    struct config_cidr trusted_proxies[CONFIG_MAX_TRUSTED_PROXIES]; /* not a key: parsed from the text */
    int trusted_proxy_count;
    /* [database] */
    char primary_dsn[CONFIG_DSN_MAX];
    char replica_dsn[CONFIG_MAX_REPLICAS][CONFIG_DSN_MAX];
    int replica_count;
    int pool_size; /* per side per worker */
    int statement_timeout_ms;
    int connect_timeout_ms;
    int queue_size;
    int queue_timeout_ms;
    int max_replica_lag_ms;
    int health_interval_ms;
    int replica_wait_ms; /* a fenced read's bounded wait for a replica (route_decide.h) */
    char migrations_dir[256];
    /* [redis] */
    bool redis_enabled;
    char redis_host[256];
    int redis_port;
    int cache_ttl_s;
    int redis_connect_timeout_ms;
    int redis_command_timeout_ms;
    char redis_prefix[64];
    char redis_socket[108];  /* Unix socket path (sun_path); "" = TCP to host:port */
    char redis_username[64]; /* ACL user for AUTH; "" = the default user */
    char redis_password_file[256];
    char redis_password[256];       /* not a key: from PGAPI_REDIS_PASSWORD or password_file; never printed */
    char redis_sentinels_text[512]; /* "host:port,..." as written; "" = no Sentinel, host/port are used */
    char redis_master_name[64];
    struct config_addr
        redis_sentinels[CONFIG_MAX_SENTINELS]; /* not a key: parsed from redis_sentinels_text */
    int redis_sentinel_count;
    int local_cache_entries;
    size_t local_cache_bytes;
    size_t cache_max_value_bytes; /* larger values are served, not cached */
    int cache_list_pages;         /* pages cached per list */
    bool deployment_fences;       /* fences shared through Redis by every server (off: tests only) */
    bool cache_write_through;     /* a write stores its row in Redis when provably the newest */
    /* [ratelimit] (worker/api/ratelimit.c): requests per second and burst, reads and writes apart */
    bool ratelimit_enabled;
    int read_rate, read_burst, write_rate, write_burst;
    /* [idempotency] */
    int idempotency_ttl_s;             /* how long a write's Idempotency-Key and its answer are kept */
    int idempotency_purge_interval_ms; /* how often expired keys are deleted on the primary */
    /* [metrics] */
    struct config_addr metrics_listen; /* GET /metrics (Prometheus text); port 0 = off */
    /* [auth] */
    char auth_mode_text[16]; /* "off" or "required" as written */
    bool auth_required;      /* not a key: mode = required */
    bool auth_allow_anonymous;
    char auth_secret_file[256];
    char auth_public_key_file[256];
    char auth_jwks_file[256];
    char auth_audience[256];
    char auth_issuer[256];
    int auth_leeway_s;
    char auth_scope_claim[64];
    /* Not keys: the key material itself, read (and checked by common/jwt) when the configuration loads,
     * so that a generation's workers verify with exactly what was checked, and a bad file at a reload
     * keeps the old generation and its keys. The secret is never printed. */
    unsigned char auth_secret[CONFIG_AUTH_SECRET_MAX];
    size_t auth_secret_len;
    char auth_public_key[CONFIG_AUTH_PEM_MAX + 1];
    char auth_jwks[CONFIG_AUTH_JWKS_MAX + 1];
    /* [log] */
    enum log_level log_level;
    char log_file[256];
    enum log_format log_format;
    bool access_log;
};

/* Loads defaults, then `path` (NULL: defaults only), then the environment. On failure returns -1 and
 * writes "file:line: reason" into err. The result is complete and validated or untouched. */
int config_load(struct config *out, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The key set of cfg's [auth] key material (common/jwt.h), NULL with the reason in err when there is none
 * or it is malformed (config_load has checked it: a loaded configuration's keys load). */
struct jwt_keys;
struct jwt_keys *config_auth_keys(const struct config *cfg, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Writes every key with its effective value (secrets masked) in ini form: the --help/--check-config text. */
void config_print(const struct config *cfg, FILE *f);
/* Documents each key: section, name, default, meaning. */
void config_print_keys(FILE *f);

#endif
