/* log: levelled, one-line logging to stderr as text or JSON lines.
 * Every line carries pid, role, worker slot and config generation; levels are checked before formatting. */
#ifndef PGAPI_LOG_H
#define PGAPI_LOG_H

#include <stdbool.h>
#include <stdint.h>

enum log_level { LOGL_ERROR = 0, LOGL_WARN, LOGL_INFO, LOGL_DEBUG };
enum log_format { LOGF_TEXT = 0, LOGF_JSON };

struct access_entry {
    const char *method;
    const char *path;
    const char *request_id;
    const char *trace_id; /* 32 hex digits (W3C trace id), or NULL */
    const char *cache;    /* "HIT", "MISS", "BYPASS" or NULL */
    const char *from;     /* a hit's source ("redis", "local", "fill") or NULL */
    const char *client;   /* the peer's address, or NULL ("-") */
    const char *subject;  /* a verified token's sub (visible ASCII), "" or NULL when anonymous ("-") */
    int status;
    uint64_t duration_us;
    uint64_t bytes;
};

/* Set once at start-up and again after fork(); the logger's state is per process. */
void log_configure(enum log_level level, enum log_format format, bool access);
void log_set_process(const char *role, int worker, unsigned generation);
bool log_enabled(enum log_level level);
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_access(const struct access_entry *e);

/* Lines go to path (opened O_APPEND, created 0640) instead of stderr: the file becomes this process's
 * stderr, so children forked later inherit it. -1 (errno set, nothing changed) if it cannot be opened. */
int log_file_use(const char *path);
/* After a rotation (SIGUSR1): opens the file's path again and makes it stderr. A no-op without a file;
 * -1 (the old file kept, errno set) if the path cannot be opened. */
int log_file_reopen(void);

int log_level_parse(const char *s, enum log_level *out);
int log_format_parse(const char *s, enum log_format *out);

#define log_error(...)                          \
    do {                                        \
        if (log_enabled(LOGL_ERROR))            \
            log_write(LOGL_ERROR, __VA_ARGS__); \
    } while (0)
#define log_warn(...)                          \
    do {                                       \
        if (log_enabled(LOGL_WARN))            \
            log_write(LOGL_WARN, __VA_ARGS__); \
    } while (0)
#define log_info(...)                          \
    do {                                       \
        if (log_enabled(LOGL_INFO))            \
            log_write(LOGL_INFO, __VA_ARGS__); \
    } while (0)
#define log_debug(...)                          \
    do {                                        \
        if (log_enabled(LOGL_DEBUG))            \
            log_write(LOGL_DEBUG, __VA_ARGS__); \
    } while (0)

#endif
