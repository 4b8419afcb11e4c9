/* migrate: applies and reverts migrations/NNNN_name.sql (an "-- +up" and a "-- +down" part) on the primary,
 * recording them in schema_migrations; one transaction per migration, serialised by an advisory lock. */
#include "tools/migrate.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "common/clock.h"
#include "common/log.h"
#include "tools/cli.h"

#define MIGRATE_FILE_MAX (1024 * 1024)
#define MIGRATE_CREATE_NAME_MAX 60
#define MIGRATE_ID_MAX 9999
#define MIGRATE_CHECKSUM_LEN 64
#define MIGRATE_MARK_UP "-- +up"
#define MIGRATE_MARK_DOWN "-- +down"
#define MIGRATE_BYTEA_OID 17 /* pg_type.oid of bytea: a fixed catalog value, not in the client headers */

/* A transaction-scoped lock, never a session one: through PgBouncer in transaction mode the next
 * transaction may run on another server connection, so a session lock would guard nothing.
 * The key is "pgapi-mg" in ASCII; pgapi's other advisory locks use other keys. */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_xact_lock(8099549590277942631)"

#define MIGRATE_TABLE_SQL                                                  \
    "CREATE TABLE IF NOT EXISTS schema_migrations ("                       \
    "id integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, " \
    "applied_at timestamptz NOT NULL DEFAULT now())"

#define MIGRATE_APPLIED_SQL                                                     \
    "SELECT id, name, checksum, "                                               \
    "to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') " \
    "FROM schema_migrations ORDER BY id"

#define MIGRATE_USAGE                                                                              \
    "usage: pgapi migrate up [N|all]     apply pending migrations in order (all, or at most N)\n"  \
    "       pgapi migrate down [N|all]   revert the last applied migration (or the last N)\n"      \
    "       pgapi migrate status         list files and applied migrations (exit 1 on a changed\n" \
    "                                    or missing applied file)\n"                               \
    "       pgapi migrate create NAME    write the next NNNN_NAME.sql (NAME: [a-z0-9_], <= 60)\n"

/* One migration file, parsed: the SQL of each part, where it starts in the file (for error lines) and
 * the checksum of the whole file. */
struct migration {
    int id;
    char name[NAME_MAX + 1];
    char file[NAME_MAX + 1];
    char path[PATH_MAX];
    char *up_sql;
    char *down_sql;
    int up_line;
    int down_line;
    char checksum[MIGRATE_CHECKSUM_LEN + 1];
};

struct migration_set {
    struct migration *items; /* sorted by id, ids unique */
    size_t count;
};

/* One row of schema_migrations. */
struct applied {
    int id;
    char name[NAME_MAX + 1];
    char checksum[MIGRATE_CHECKSUM_LEN + 1];
    char applied_at[32];
};

struct applied_set {
    struct applied *items; /* sorted by id */
    size_t count;
};

enum migrate_dir { MIGRATE_UP, MIGRATE_DOWN };

/* ------------------------------------------------------------------ files */

/* True when fname matches ^[0-9]{4}_[a-z0-9_]+\.sql$; stores the number. */
static bool migrate_fname_parse(const char *fname, int *id)
{
    size_t len = strlen(fname);
    if (len < 4 + 1 + 1 + 4 || strcmp(fname + len - 4, ".sql") != 0 || fname[4] != '_')
        return false;
    int v = 0;
    for (size_t i = 0; i < 4; i++) {
        if (fname[i] < '0' || fname[i] > '9')
            return false;
        v = v * 10 + (fname[i] - '0');
    }
    for (size_t i = 5; i < len - 4; i++) {
        char c = fname[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    *id = v;
    return true;
}

static bool migrate_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > MIGRATE_CREATE_NAME_MAX)
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") == len;
}

static int migrate_cmp_id(const void *a, const void *b)
{
    const struct migration *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

static void migrate_set_free(struct migration_set *set)
{
    for (size_t i = 0; i < set->count; i++) {
        free(set->items[i].up_sql);
        free(set->items[i].down_sql);
    }
    free(set->items);
    set->items = NULL;
    set->count = 0;
}

static int migrate_set_add(struct migration_set *set, size_t *cap, const char *dir, const char *fname, int id)
{
    if (set->count == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct migration *n = realloc(set->items, ncap * sizeof(*n));
        if (!n) {
            log_error("migrations dir %s: out of memory", dir);
            return -1;
        }
        set->items = n;
        *cap = ncap;
    }
    struct migration *m = &set->items[set->count];
    memset(m, 0, sizeof(*m));
    m->id = id;
    int n = snprintf(m->path, sizeof(m->path), "%s/%s", dir, fname);
    if (n < 0 || (size_t)n >= sizeof(m->path)) {
        log_error("migration path %s/%s is too long", dir, fname);
        return -1;
    }
    snprintf(m->file, sizeof(m->file), "%s", fname);
    snprintf(m->name, sizeof(m->name), "%.*s", (int)(strlen(fname) - 5 - 4), fname + 5);
    set->count++;
    return 0;
}

/* Lists dir's migration files sorted by id; other entries are ignored with a warning. */
static int migrate_set_scan(const char *dir, struct migration_set *set)
{
    size_t cap = 0;
    DIR *d = opendir(dir);
    if (!d) {
        log_error("cannot open migrations dir %s: %s", dir, strerror(errno));
        return -1;
    }
    for (;;) {
        errno = 0; /* readdir() returns NULL both at the end and on error; errno tells them apart */
        struct dirent *e = readdir(d);
        if (!e)
            break;
        int id;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (!migrate_fname_parse(e->d_name, &id)) {
            log_warn("migrations dir %s: ignoring %s (names must match NNNN_name.sql, name in [a-z0-9_])",
                     dir, e->d_name);
            continue;
        }
        if (migrate_set_add(set, &cap, dir, e->d_name, id) < 0)
            goto fail;
        struct stat st;
        if (stat(set->items[set->count - 1].path, &st) < 0 || !S_ISREG(st.st_mode)) {
            log_warn("migrations dir %s: ignoring %s (not a readable regular file)", dir, e->d_name);
            set->count--;
        }
    }
    if (errno != 0) {
        log_error("cannot read migrations dir %s: %s", dir, strerror(errno));
        goto fail;
    }
    closedir(d);
    qsort(set->items, set->count, sizeof(set->items[0]), migrate_cmp_id);
    for (size_t i = 1; i < set->count; i++) {
        if (set->items[i].id == set->items[i - 1].id) {
            log_error("migrations dir %s: %s and %s have the same number", dir, set->items[i - 1].file,
                      set->items[i].file);
            migrate_set_free(set);
            return -1;
        }
    }
    return 0;
fail:
    closedir(d);
    migrate_set_free(set);
    return -1;
}

/* Reads the whole file, refusing anything above MIGRATE_FILE_MAX (a migration is hand-written SQL). */
static int migrate_file_read(const char *path, char **out, size_t *outlen)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        log_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    buf = malloc(MIGRATE_FILE_MAX + 2);
    if (!buf) {
        log_error("%s: out of memory", path);
        goto fail;
    }
    len = fread(buf, 1, MIGRATE_FILE_MAX + 1, f);
    if (ferror(f)) {
        log_error("cannot read %s: %s", path, strerror(errno));
        goto fail;
    }
    if (len > MIGRATE_FILE_MAX) {
        log_error("%s is larger than %d bytes", path, MIGRATE_FILE_MAX);
        goto fail;
    }
    if (memchr(buf, '\0', len)) {
        log_error("%s contains a NUL byte: not an SQL text file", path);
        goto fail;
    }
    buf[len] = '\0';
    fclose(f);
    *out = buf;
    *outlen = len;
    return 0;
fail:
    free(buf);
    fclose(f);
    return -1;
}

/* True when the line [p, end) is the marker, ignoring trailing blanks and a CR (files edited on Windows). */
static bool migrate_line_is(const char *p, const char *end, const char *marker)
{
    while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    size_t n = strlen(marker);
    return (size_t)(end - p) == n && memcmp(p, marker, n) == 0;
}

static char *migrate_strndup(const char *s, size_t n, const char *path)
{
    char *d = strndup(s, n);
    if (!d)
        log_error("%s: out of memory", path);
    return d;
}

/* Splits text at the marker lines: one "-- +up", then one "-- +down"; what precedes "-- +up" is a comment. */
static int migrate_split(struct migration *m, const char *text, size_t len)
{
    const char *up = NULL, *up_mark = NULL, *down = NULL, *down_mark = NULL;
    int line = 1;
    for (const char *p = text; p < text + len; line++) {
        const char *nl = memchr(p, '\n', (size_t)(text + len - p));
        const char *end = nl ? nl : text + len;
        const char *next = nl ? nl + 1 : end;
        bool is_up = migrate_line_is(p, end, MIGRATE_MARK_UP);
        bool is_down = migrate_line_is(p, end, MIGRATE_MARK_DOWN);
        if ((is_up && up_mark) || (is_down && down_mark)) {
            log_error("%s:%d: second \"%s\" marker line", m->path, line,
                      is_up ? MIGRATE_MARK_UP : MIGRATE_MARK_DOWN);
            return -1;
        }
        if (is_down && !up_mark) {
            log_error("%s:%d: \"%s\" before \"%s\"", m->path, line, MIGRATE_MARK_DOWN, MIGRATE_MARK_UP);
            return -1;
        }
        if (is_up) {
            up_mark = p;
            up = next;
            m->up_line = line + 1;
        } else if (is_down) {
            down_mark = p;
            down = next;
            m->down_line = line + 1;
        }
        p = next;
    }
    if (!up_mark || !down_mark) {
        log_error(
            "%s: missing the \"%s\" line (a migration has a \"%s\" line, its SQL, a \"%s\" line, its SQL)",
            m->path, up_mark ? MIGRATE_MARK_DOWN : MIGRATE_MARK_UP, MIGRATE_MARK_UP, MIGRATE_MARK_DOWN);
        return -1;
    }
    m->up_sql = migrate_strndup(up, (size_t)(down_mark - up), m->path);
    m->down_sql = migrate_strndup(down, (size_t)(text + len - down), m->path);
    return m->up_sql && m->down_sql ? 0 : -1;
}

/* The checksum is computed by the server (sha256() since PostgreSQL 11) rather than by hand-written
 * crypto here; binary format so backslashes in the SQL are not read as bytea escapes. */
static int migrate_checksum(PGconn *conn, struct migration *m, const char *text, size_t len)
{
    const Oid types[1] = { MIGRATE_BYTEA_OID };
    const char *values[1] = { text };
    const int lengths[1] = { (int)len };
    const int formats[1] = { 1 };
    PGresult *res =
        PQexecParams(conn, "SELECT encode(sha256($1::bytea), 'hex')", 1, types, values, lengths, formats, 0);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
        PQgetlength(res, 0, 0) != MIGRATE_CHECKSUM_LEN) {
        char why[1024];
        cli_db_error(conn, res, why, sizeof(why));
        log_error("%s: cannot compute the checksum: %s", m->file, why);
        PQclear(res);
        return -1;
    }
    memcpy(m->checksum, PQgetvalue(res, 0, 0), MIGRATE_CHECKSUM_LEN + 1);
    PQclear(res);
    return 0;
}

static int migrate_load_one(PGconn *conn, struct migration *m)
{
    char *text = NULL;
    size_t len = 0;
    if (migrate_file_read(m->path, &text, &len) < 0)
        return -1;
    int rc = migrate_split(m, text, len);
    if (rc == 0)
        rc = migrate_checksum(conn, m, text, len);
    free(text);
    return rc;
}

/* Scans dir and parses and checksums every migration file in it. */
static int migrate_set_load(PGconn *conn, const char *dir, struct migration_set *set)
{
    if (migrate_set_scan(dir, set) < 0)
        return -1;
    for (size_t i = 0; i < set->count; i++) {
        if (migrate_load_one(conn, &set->items[i]) < 0) {
            migrate_set_free(set);
            return -1;
        }
    }
    return 0;
}

static const struct migration *migrate_set_find(const struct migration_set *set, int id)
{
    for (size_t i = 0; i < set->count; i++)
        if (set->items[i].id == id)
            return &set->items[i];
    return NULL;
}

/* ------------------------------------------------------------------ schema_migrations */

static void migrate_applied_free(struct applied_set *a)
{
    free(a->items);
    a->items = NULL;
    a->count = 0;
}

static const struct applied *migrate_applied_find(const struct applied_set *a, int id)
{
    for (size_t i = 0; i < a->count; i++)
        if (a->items[i].id == id)
            return &a->items[i];
    return NULL;
}

/* Reads schema_migrations; a missing table reads as empty when table_may_be_missing (status creates nothing).
 */
static int migrate_applied_load(PGconn *conn, bool table_may_be_missing, struct applied_set *out)
{
    PGresult *res = NULL;
    char why[1024];
    if (table_may_be_missing) {
        res = PQexec(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL");
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
            goto fail;
        bool exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        res = NULL;
        if (!exists)
            return 0;
    }
    res = PQexec(conn, MIGRATE_APPLIED_SQL);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        goto fail;
    int rows = PQntuples(res);
    out->items = calloc(rows > 0 ? (size_t)rows : 1, sizeof(out->items[0]));
    if (!out->items) {
        log_error("reading schema_migrations: out of memory");
        PQclear(res);
        return -1;
    }
    for (int i = 0; i < rows; i++) {
        struct applied *a = &out->items[i];
        a->id = atoi(PQgetvalue(res, i, 0));
        snprintf(a->name, sizeof(a->name), "%s", PQgetvalue(res, i, 1));
        snprintf(a->checksum, sizeof(a->checksum), "%s", PQgetvalue(res, i, 2));
        snprintf(a->applied_at, sizeof(a->applied_at), "%s", PQgetvalue(res, i, 3));
    }
    out->count = (size_t)rows;
    PQclear(res);
    return 0;
fail:
    cli_db_error(conn, res, why, sizeof(why));
    log_error("reading schema_migrations: %s", why);
    PQclear(res);
    return -1;
}

/* Every applied migration must still have its file, unchanged: otherwise the schema that the files
 * describe is not the one in the database, and applying more on top of it would compound the drift. */
static int migrate_verify(const char *dir, const struct migration_set *set, const struct applied_set *applied)
{
    int problems = 0;
    for (size_t i = 0; i < applied->count; i++) {
        const struct applied *a = &applied->items[i];
        const struct migration *m = migrate_set_find(set, a->id);
        if (!m) {
            log_error("applied migration %04d_%s.sql has no file in %s (MISSING FILE)", a->id, a->name, dir);
            problems++;
        } else if (strcmp(m->checksum, a->checksum) != 0) {
            log_error(
                "%s changed after it was applied (CHECKSUM MISMATCH: applied %.12s..., file now %.12s...); "
                "write a new migration instead of editing an applied one",
                m->path, a->checksum, m->checksum);
            problems++;
        }
    }
    return problems;
}

/* ------------------------------------------------------------------ one migration, one transaction */

/* BEGIN, then the lock, then the table: a runner that waited on the lock creates nothing twice.
 * READ COMMITTED explicitly (whatever the server default), so each later statement sees what the
 * runner that held the lock before us committed. */
static int migrate_tx_begin(PGconn *conn)
{
    if (cli_db_command(conn, "BEGIN ISOLATION LEVEL READ COMMITTED", "migrate: BEGIN") < 0)
        return -1;
    if (cli_db_command(conn, MIGRATE_LOCK_SQL, "migrate: taking the migration lock") < 0)
        return -1;
    return cli_db_command(conn, MIGRATE_TABLE_SQL, "migrate: creating schema_migrations");
}

/* Maps the error position of a failed part (characters into the SQL) to a line of the file. */
static int migrate_error_line(const PGresult *res, const char *sql, int first_line)
{
    const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
    if (!pos)
        return 0;
    long chars = atol(pos), seen = 0;
    int line = first_line;
    for (const char *p = sql; *p && seen < chars - 1; p++) {
        if (((unsigned char)*p & 0xC0) != 0x80) /* count characters, not UTF-8 continuation bytes */
            seen++;
        if (*p == '\n')
            line++;
    }
    return line;
}

/* Runs one part of a migration file; on error names the file, the line and the server's message. */
static int migrate_run_part(PGconn *conn, const struct migration *m, enum migrate_dir dir)
{
    const char *sql = dir == MIGRATE_UP ? m->up_sql : m->down_sql;
    const char *part = dir == MIGRATE_UP ? "up" : "down";
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        char why[2048];
        cli_db_error(conn, res, why, sizeof(why));
        int line = migrate_error_line(res, sql, dir == MIGRATE_UP ? m->up_line : m->down_line);
        if (line > 0)
            log_error("%s:%d: %s part failed: %s", m->path, line, part, why);
        else
            log_error("%s: %s part failed: %s", m->path, part, why);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
        /* the file ended our transaction: what ran may be committed without its schema_migrations row */
        log_error("%s: the %s part ended the transaction (COMMIT/ROLLBACK/END in a migration); what it ran "
                  "so far may be committed without being recorded: check the schema by hand",
                  m->path, part);
        return -1;
    }
    return 0;
}

static int migrate_record(PGconn *conn, const struct migration *m, enum migrate_dir dir)
{
    char id[16];
    snprintf(id, sizeof(id), "%d", m->id);
    const char *values[3] = { id, m->name, m->checksum };
    PGresult *res =
        dir == MIGRATE_UP
            ? PQexecParams(conn,
                           "INSERT INTO schema_migrations (id, name, checksum) VALUES ($1::int, $2, $3)", 3,
                           NULL, values, NULL, NULL, 0)
            : PQexecParams(conn, "DELETE FROM schema_migrations WHERE id = $1::int", 1, NULL, values, NULL,
                           NULL, 0);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(res), "1") != 0) {
        char why[1024];
        cli_db_error(conn, res, why, sizeof(why));
        log_error("%s: recording it in schema_migrations failed: %s", m->file, why);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

static int migrate_commit(PGconn *conn, const struct migration *m)
{
    char what[NAME_MAX + 32];
    snprintf(what, sizeof(what), "%s: COMMIT", m->file);
    if (cli_db_command(conn, "COMMIT", what) < 0)
        return -1;
    /* a COMMIT of a failed transaction answers ROLLBACK without an error; we never send one, but be sure */
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
        log_error("%s: COMMIT left the transaction open", m->file);
        return -1;
    }
    return 0;
}

/* Lowest-numbered file without a row. One numbered below an applied one (a merged branch) is applied too. */
static const struct migration *migrate_next_pending(const struct migration_set *set,
                                                    const struct applied_set *applied)
{
    for (size_t i = 0; i < set->count; i++) {
        if (!migrate_applied_find(applied, set->items[i].id)) {
            const struct migration *m = &set->items[i];
            if (applied->count > 0 && applied->items[applied->count - 1].id > m->id)
                log_warn("%s is applied after the higher-numbered %04d (out of order)", m->file,
                         applied->items[applied->count - 1].id);
            return m;
        }
    }
    return NULL;
}

static double migrate_ms_since(uint64_t t0_us)
{
    return (double)(clock_now_us() - t0_us) / 1e3;
}

/* Chooses, under the lock, what one step does: the next pending file (up) or the last applied one
 * (down). Returns 0 with *out NULL when there is nothing to do, -1 when the files forbid the step. */
static int migrate_pick(const char *dir, const struct migration_set *set, const struct applied_set *applied,
                        enum migrate_dir way, const struct migration **out)
{
    *out = NULL;
    if (way == MIGRATE_UP) {
        if (migrate_verify(dir, set, applied) > 0) {
            log_error("migrate up refused: applied migrations differ from the files in %s (see above)", dir);
            return -1;
        }
        *out = migrate_next_pending(set, applied);
        return 0;
    }
    if (applied->count == 0)
        return 0;
    const struct applied *last = &applied->items[applied->count - 1];
    const struct migration *m = migrate_set_find(set, last->id);
    if (!m) {
        log_error("cannot revert %04d_%s.sql: it has no file in %s (MISSING FILE)", last->id, last->name,
                  dir);
        return -1;
    }
    if (strcmp(m->checksum, last->checksum) != 0) {
        log_error("cannot revert %s: it changed after it was applied (CHECKSUM MISMATCH), so its down part "
                  "may not undo what was applied",
                  m->path);
        return -1;
    }
    *out = m;
    return 0;
}

/* Rolls back a failed step; m is the migration whose part had started running, if any. */
static void migrate_abort(PGconn *conn, const struct migration *m, enum migrate_dir way)
{
    /* only a transaction we still hold is known to be undone; a connection lost during COMMIT is not */
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    bool was_open = ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR;
    cli_db_rollback(conn);
    if (m && was_open)
        log_info("%s: rolled back, the database is as before this %s", m->file,
                 way == MIGRATE_UP ? "up" : "down");
}

/* Applies or reverts one migration in one transaction. The applied set is read after the lock, so a
 * runner that waited behind another one sees its work and does not repeat it.
 * Returns 1 when it did one, 0 when there was nothing to do, -1 on error (rolled back). */
static int migrate_step(PGconn *conn, const char *dir, const struct migration_set *set, enum migrate_dir way)
{
    struct applied_set applied = { 0 };
    const struct migration *m = NULL;
    bool started = false;
    uint64_t t0 = clock_now_us();
    if (migrate_tx_begin(conn) < 0 || migrate_applied_load(conn, false, &applied) < 0 ||
        migrate_pick(dir, set, &applied, way, &m) < 0)
        goto fail;
    if (!m) {
        migrate_applied_free(&applied);
        /* nothing to do; commit anyway so a first run keeps the (empty) schema_migrations it created */
        return cli_db_command(conn, "COMMIT", "migrate: COMMIT") < 0 ? -1 : 0;
    }
    started = true;
    if (migrate_run_part(conn, m, way) < 0 || migrate_record(conn, m, way) < 0 || migrate_commit(conn, m) < 0)
        goto fail;
    /* the time includes waiting for the lock behind another runner */
    printf("%s %s (%.0f ms)\n", way == MIGRATE_UP ? "applied" : "reverted", m->file, migrate_ms_since(t0));
    fflush(stdout);
    migrate_applied_free(&applied);
    return 1;
fail:
    migrate_abort(conn, started ? m : NULL, way);
    migrate_applied_free(&applied);
    return -1;
}

static int migrate_run(PGconn *conn, const char *dir, const struct migration_set *set, enum migrate_dir way,
                       long limit)
{
    long done = 0;
    while (done < limit) {
        int r = migrate_step(conn, dir, set, way);
        if (r < 0)
            return 1;
        if (r == 0)
            break;
        done++;
    }
    const char *verb = way == MIGRATE_UP ? "up" : "down";
    if (done > 0)
        printf("migrate %s: %ld %s\n", verb, done, way == MIGRATE_UP ? "applied" : "reverted");
    else
        printf("migrate %s: nothing to %s\n", verb, way == MIGRATE_UP ? "apply" : "revert");
    return 0;
}

/* ------------------------------------------------------------------ status */

static void migrate_status_line(int id, const char *name, const struct applied *a, const char *flag)
{
    printf("%04d  %-32s  %-7s  %s%s%s\n", id, name, a ? "applied" : "pending", a ? a->applied_at : "-",
           *flag ? "  " : "", flag);
}

/* One line per id, merging files and rows: both listed in id order, walked like a merge. */
static int migrate_status(PGconn *conn, const char *dir, const struct migration_set *set)
{
    struct applied_set applied = { 0 };
    if (migrate_applied_load(conn, true, &applied) < 0)
        return 1;
    size_t i = 0, j = 0, pending = 0, mismatched = 0, missing = 0;
    printf("%-4s  %-32s  %-7s  %-20s  %s\n", "ID", "NAME", "STATE", "APPLIED AT (UTC)", "FLAGS");
    while (i < set->count || j < applied.count) {
        const struct migration *m = i < set->count ? &set->items[i] : NULL;
        const struct applied *a = j < applied.count ? &applied.items[j] : NULL;
        int mid = m ? m->id : INT_MAX, aid = a ? a->id : INT_MAX;
        if (m && mid < aid) {
            migrate_status_line(m->id, m->name, NULL, "");
            pending++;
            i++;
        } else if (a && aid < mid) {
            migrate_status_line(a->id, a->name, a, "MISSING FILE");
            missing++;
            j++;
        } else if (m && a) {
            bool changed = strcmp(m->checksum, a->checksum) != 0;
            migrate_status_line(m->id, m->name, a, changed ? "CHECKSUM MISMATCH" : "");
            mismatched += changed;
            i++;
            j++;
        }
    }
    printf("%zu applied, %zu pending, %zu checksum mismatch, %zu missing file (dir %s)\n", applied.count,
           pending, mismatched, missing, dir);
    migrate_applied_free(&applied);
    return mismatched || missing ? 1 : 0;
}

/* ------------------------------------------------------------------ create */

static int migrate_write_new(const char *path, int id, const char *name)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644); /* O_EXCL: never overwrite a migration */
    if (fd < 0) {
        log_error("cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        log_error("cannot create %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    fprintf(
        f,
        "-- %04d_%s: (say what this changes and why)\n"
        "-- Format: lines above the \"-- +up\" marker are comments; the SQL after the \"-- +up\" line "
        "applies\n"
        "-- the change, the SQL after the \"-- +down\" line must undo it exactly. `pgapi migrate` runs each\n"
        "-- part in one transaction: no BEGIN/COMMIT, no CREATE INDEX CONCURRENTLY, VACUUM or SET here.\n"
        "%s\n\n%s\n\n",
        id, name, MIGRATE_MARK_UP, MIGRATE_MARK_DOWN);
    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) {
        log_error("cannot write %s: %s", path, strerror(errno));
        unlink(path);
        return -1;
    }
    return 0;
}

static int migrate_create(const char *dir, const char *name)
{
    struct migration_set set = { 0 };
    if (!migrate_name_valid(name)) {
        log_error("migrate create: invalid name \"%s\": use 1 to %d characters of [a-z0-9_]", name,
                  MIGRATE_CREATE_NAME_MAX);
        return 2;
    }
    if (migrate_set_scan(dir, &set) < 0)
        return 1;
    int id = set.count ? set.items[set.count - 1].id + 1 : 1;
    migrate_set_free(&set);
    if (id > MIGRATE_ID_MAX) {
        log_error("migrate create: %s already has migration %04d, the last number available", dir,
                  MIGRATE_ID_MAX);
        return 1;
    }
    char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/%04d_%s.sql", dir, id, name);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        log_error("migrate create: path %s/%04d_%s.sql is too long", dir, id, name);
        return 1;
    }
    if (migrate_write_new(path, id, name) < 0)
        return 1;
    printf("%s\n", path);
    return 0;
}

/* ------------------------------------------------------------------ command line */

/* N of up/down: a positive count or "all"; absent gives the default. */
static int migrate_count_parse(int argc, char **argv, long def, long *out)
{
    if (argc < 2) {
        *out = def;
        return 0;
    }
    if (argc > 2) {
        log_error("migrate %s: unexpected argument \"%s\"", argv[0], argv[2]);
        return -1;
    }
    if (strcmp(argv[1], "all") == 0) {
        *out = LONG_MAX;
        return 0;
    }
    if (cli_parse_long(argv[1], 1, MIGRATE_ID_MAX, out) < 0) {
        log_error("migrate %s: N must be a number from 1 to %d or \"all\", got \"%s\"", argv[0],
                  MIGRATE_ID_MAX, argv[1]);
        return -1;
    }
    return 0;
}

/* up, down, status: everything that needs the database and the parsed files. */
static int migrate_with_db(const struct config *cfg, const char *cmd, long count)
{
    struct migration_set set = { 0 };
    int rc = 1;
    PGconn *conn = cli_db_connect(cfg->primary_dsn, "pgapi-migrate");
    if (!conn)
        return 1;
    if (migrate_set_load(conn, cfg->migrations_dir, &set) < 0)
        goto done;
    if (strcmp(cmd, "status") == 0)
        rc = migrate_status(conn, cfg->migrations_dir, &set);
    else
        rc = migrate_run(conn, cfg->migrations_dir, &set, strcmp(cmd, "up") == 0 ? MIGRATE_UP : MIGRATE_DOWN,
                         count);
done:
    migrate_set_free(&set);
    PQfinish(conn);
    return rc;
}

int migrate_main(const struct config *cfg, int argc, char **argv)
{
    log_set_process("migrate", -1, 0);
    const char *cmd = argc > 0 ? argv[0] : "";
    long count = 0;
    if (strcmp(cmd, "create") == 0) {
        if (argc != 2) {
            fputs(MIGRATE_USAGE, stderr);
            return 2;
        }
        return migrate_create(cfg->migrations_dir, argv[1]);
    }
    if (strcmp(cmd, "status") == 0) {
        if (argc == 1)
            return migrate_with_db(cfg, cmd, 0);
        log_error("migrate status: unexpected argument \"%s\"", argv[1]);
        fputs(MIGRATE_USAGE, stderr);
        return 2;
    }
    if (strcmp(cmd, "up") == 0 || strcmp(cmd, "down") == 0) {
        if (migrate_count_parse(argc, argv, strcmp(cmd, "up") == 0 ? LONG_MAX : 1, &count) < 0) {
            fputs(MIGRATE_USAGE, stderr);
            return 2;
        }
        return migrate_with_db(cfg, cmd, count);
    }
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        fputs(MIGRATE_USAGE, stdout);
        return 0;
    }
    if (*cmd)
        log_error("migrate: unknown command or arguments \"%s\"", cmd);
    fputs(MIGRATE_USAGE, stderr);
    return 2;
}
