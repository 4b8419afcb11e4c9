/* log: formats one line per event and writes it with a single write(2), so lines from the master and
 * the workers sharing stderr never interleave (each line is below PIPE_BUF). */
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/utf8.h"

#define LOG_LINE_MAX 4000

/* Per-process logger state: written at start-up and right after fork(), read-only afterwards. */
static struct {
    enum log_level level;
    enum log_format format;
    bool access;
    const char *role;
    int worker;
    unsigned generation;
    char file[256]; /* [log] file, "" = stderr as inherited */
} log_state = { LOGL_INFO, LOGF_TEXT, true, "main", -1, 0, "" };

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void log_configure(enum log_level level, enum log_format format, bool access)
{
    log_state.level = level;
    log_state.format = format;
    log_state.access = access;
}

void log_set_process(const char *role, int worker, unsigned generation)
{
    log_state.role = role;
    log_state.worker = worker;
    log_state.generation = generation;
}

bool log_enabled(enum log_level level)
{
    return level <= log_state.level;
}

/* dup2 swaps stderr in one step: a line is written either to the old file (renamed by the rotation,
 * so kept) or to the new one, never lost between them. */
static int file_open_as_stderr(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    int rc = fd == STDERR_FILENO ? 0 : dup2(fd, STDERR_FILENO);
    int saved = errno;
    if (fd != STDERR_FILENO)
        close(fd);
    errno = saved;
    return rc < 0 ? -1 : 0;
}

int log_file_use(const char *path)
{
    if (strlen(path) >= sizeof(log_state.file)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (file_open_as_stderr(path) < 0)
        return -1;
    snprintf(log_state.file, sizeof(log_state.file), "%s", path);
    return 0;
}

int log_file_reopen(void)
{
    return log_state.file[0] ? file_open_as_stderr(log_state.file) : 0;
}

int log_level_parse(const char *s, enum log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_format_parse(const char *s, enum log_format *out)
{
    if (strcasecmp(s, "text") == 0)
        *out = LOGF_TEXT;
    else if (strcasecmp(s, "json") == 0)
        *out = LOGF_JSON;
    else
        return -1;
    return 0;
}

static size_t format_time(char *buf, size_t cap)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, cap - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    return n;
}

/* The code point of the well-formed sequence s of n (1 to 4) bytes. */
static unsigned utf8_code_point(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    static const unsigned lead_mask[] = { 0, 0x7f, 0x1f, 0x0f, 0x07 };
    unsigned cp = u[0] & lead_mask[n];
    for (size_t i = 1; i < n; i++)
        cp = cp << 6 | (u[i] & 0x3fu);
    return cp;
}

/* Characters a log reader takes for a line or field end: C0 controls, DEL, C1 controls (NEL among them),
 * U+2028 and U+2029. */
static bool is_line_breaking(unsigned cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029;
}

/* Appends s to buf with one escaping for text and JSON lines alike, so that a client's bytes can never
 * forge a line: line-breaking characters become \uXXXX, bytes that are not well-formed UTF-8 become
 * \ufffd, a backslash is doubled; in JSON (quote) a '"' is escaped too, so the result is the inside of
 * a JSON string. Stops before cap or after max bytes of s; returns the new length. */
static size_t escape_into(char *buf, size_t len, size_t cap, const char *s, size_t max, bool quote)
{
    const char *end = s + strnlen(s, max);
    while (s < end && len + 7 < cap) {
        unsigned char c = (unsigned char)*s;
        size_t n = c < 0x80 ? 1 : utf8_sequence_len(s, (size_t)(end - s));
        unsigned cp = n ? utf8_code_point(s, n) : 0xfffdu;
        if (c == '\\' || (quote && c == '"')) {
            buf[len++] = '\\';
            buf[len++] = (char)c;
        } else if (n == 0 || is_line_breaking(cp)) {
            len += (size_t)snprintf(buf + len, cap - len, "\\u%04x", cp);
        } else {
            memcpy(buf + len, s, n);
            len += n;
        }
        s += n ? n : 1;
    }
    return len;
}

static size_t json_escape_into(char *buf, size_t len, size_t cap, const char *s)
{
    return escape_into(buf, len, cap, s, SIZE_MAX, true);
}

static size_t prefix_text(char *buf, size_t cap, enum log_level level)
{
    size_t n = format_time(buf, cap);
    n += (size_t)snprintf(buf + n, cap - n, " [%s] %d %s", level_names[level], (int)getpid(), log_state.role);
    if (log_state.worker >= 0)
        n += (size_t)snprintf(buf + n, cap - n, "#%d", log_state.worker);
    n += (size_t)snprintf(buf + n, cap - n, " g%u: ", log_state.generation);
    return n;
}

static size_t prefix_json(char *buf, size_t cap, enum log_level level)
{
    size_t n = (size_t)snprintf(buf, cap, "{\"ts\":\"");
    n += format_time(buf + n, cap - n);
    n += (size_t)snprintf(
        buf + n, cap - n, "\",\"level\":\"%s\",\"pid\":%d,\"role\":\"%s\",\"worker\":%d,\"gen\":%u,",
        level_names[level], (int)getpid(), log_state.role, log_state.worker, log_state.generation);
    return n;
}

static void line_emit(char *buf, size_t n, size_t cap)
{
    if (n >= cap - 1)
        n = cap - 2;
    buf[n++] = '\n';
    int saved = errno;
    ssize_t w = write(STDERR_FILENO, buf, n);
    (void)w; /* nowhere left to report a failed log write */
    errno = saved;
}

/* One event, one line: libpq and others put newlines and tabs in their messages. */
static void line_flatten(char *s)
{
    char *end = s;
    for (char *p = s; *p; p++) {
        if ((unsigned char)*p < 0x20)
            *p = ' ';
        if (*p != ' ')
            end = p + 1;
    }
    *end = '\0';
}

/* Lines about one request start "request <id>: " (the convention every caller follows); in JSON the id
 * is also a field of its own, so that `jq 'select(.request_id == ...)'` finds the access line and the
 * error lines of a request alike. Returns the id's length, 0 if msg does not start that way. */
#define REQUEST_PREFIX "request "
#define REQUEST_PREFIX_LEN (sizeof(REQUEST_PREFIX) - 1)

static size_t request_id_of(const char *msg)
{
    if (strncmp(msg, REQUEST_PREFIX, REQUEST_PREFIX_LEN) != 0)
        return 0;
    const char *id = msg + REQUEST_PREFIX_LEN;
    size_t n = strcspn(id, ": ");
    return n > 0 && n <= 64 && id[n] == ':' ? n : 0;
}

void log_write(enum log_level level, const char *fmt, ...)
{
    char msg[LOG_LINE_MAX], buf[LOG_LINE_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    line_flatten(msg);
    size_t n;
    if (log_state.format == LOGF_JSON) {
        n = prefix_json(buf, sizeof(buf), level);
        size_t rid = request_id_of(msg);
        if (rid) {
            char id[72];
            memcpy(id, msg + REQUEST_PREFIX_LEN, rid);
            id[rid] = '\0';
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\"request_id\":\"");
            n = json_escape_into(buf, n, sizeof(buf) - 3, id);
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\",");
        }
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\"msg\":\"");
        n = json_escape_into(buf, n, sizeof(buf) - 3, msg);
        buf[n++] = '"';
        buf[n++] = '}';
    } else {
        n = prefix_text(buf, sizeof(buf), level);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s", msg);
    }
    line_emit(buf, n, sizeof(buf));
}

void log_access(const struct access_entry *e)
{
    if (!log_state.access || !log_enabled(LOGL_INFO))
        return;
    char buf[LOG_LINE_MAX];
    size_t n;
    const char *rid = e->request_id ? e->request_id : "-";
    const char *cache = e->cache ? e->cache : "-";
    const char *client = e->client ? e->client : "-";
    const char *trace = e->trace_id && e->trace_id[0] ? e->trace_id : "-"; /* hex digits only */
    const char *sub = e->subject && e->subject[0] ? e->subject : "-";
    if (log_state.format == LOGF_JSON) {
        n = prefix_json(buf, sizeof(buf), LOGL_INFO);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\"msg\":\"access\",\"method\":\"");
        n = json_escape_into(buf, n, sizeof(buf) - 200, e->method);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\",\"path\":\"");
        n = json_escape_into(buf, n, sizeof(buf) - 400, e->path);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\",\"request_id\":\"");
        n = json_escape_into(buf, n, sizeof(buf) - 150, rid);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                              "\",\"trace_id\":\"%.32s\",\"status\":%d,\"duration_us\":%llu,\"bytes\":%llu,"
                              "\"cache\":\"%s\",%s%s%s\"client\":\"",
                              trace, e->status, (unsigned long long)e->duration_us,
                              (unsigned long long)e->bytes, cache, e->from ? "\"cache_from\":\"" : "",
                              e->from ? e->from : "", e->from ? "\"," : "");
        n = json_escape_into(buf, n, sizeof(buf) - 150, client);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\",\"sub\":\"");
        n = json_escape_into(buf, n, sizeof(buf) - 3, sub);
        buf[n++] = '"';
        buf[n++] = '}';
    } else {
        n = prefix_text(buf, sizeof(buf), LOGL_INFO);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s ", e->method);
        n = escape_into(buf, n, sizeof(buf) - 400, e->path, 512, false);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, " %d %.3fms %llub cache=%s%s%s rid=", e->status,
                              (double)e->duration_us / 1000.0, (unsigned long long)e->bytes, cache,
                              e->from ? " from=" : "", e->from ? e->from : "");
        n = escape_into(buf, n, sizeof(buf) - 100, rid, 64, false);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, " trace=%.32s client=", trace);
        n = escape_into(buf, n, sizeof(buf) - 140, client, 64, false);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, " sub=");
        n = escape_into(buf, n, sizeof(buf) - 2, sub, 128, false);
    }
    line_emit(buf, n, sizeof(buf));
}
