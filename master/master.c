/* master: binds the socket, forks the workers and supervises them, nginx-style. Signals arrive through
 * a signalfd read in a poll() loop (no handlers, no flags). SIGHUP starts a new generation of workers
 * and retires the old one once the new one is ready; TERM/INT/QUIT drain; a second one forces exit. */
#include "master/master.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/capacity.h"
#include "common/clients.h"
#include "common/clock.h"
#include "common/consistency.h"
#include "common/metrics.h"
#include "master/listener.h"
#include "master/notify.h"
#include "worker/api/resource.h"
#include "worker/worker.h"

#define MAX_PROCS 512
#define RESPAWN_MAX_MS 10000
#define STABLE_AFTER_MS 5000

enum proc_state { PROC_FREE = 0, PROC_STARTING, PROC_READY, PROC_RETIRING };

struct proc {
    enum proc_state state;
    pid_t pid;
    int slot;
    unsigned generation;
    int64_t started_ms;
};

/* A slot of the current generation waiting to be respawned after a back-off. */
struct respawn {
    int64_t due_ms;
    int failures;
    bool pending;
};

struct master {
    struct config cfg;
    const char *config_path;
    unsigned generation;
    struct worker_sockets socks;   /* the current generation's listening sockets */
    struct worker_sockets old;     /* previous ones while their workers drain after an address change */
    struct listener_passed passed; /* systemd's sockets (socket activation): kept whatever listen says */
    int sig_fd;
    struct consistency *consistency; /* shared memory the workers write; the master only sets cache-dirty */
    struct capacity *capacity;       /* shared: which workers have room for a connection */
    struct clients *clients;         /* shared: open connections per client address */
    struct metrics *metrics; /* shared: what GET /metrics shows; the master counts restarts, reloads */
    int ready_rd, ready_wr;  /* workers write their pid here once they serve */
    struct proc procs[MAX_PROCS];
    struct respawn respawns[MAX_PROCS];
    bool reloading;
    bool stopping;
    int64_t stop_deadline_ms;
    sigset_t old_mask;
};

static struct proc *proc_find(struct master *m, pid_t pid)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (m->procs[i].state != PROC_FREE && m->procs[i].pid == pid)
            return &m->procs[i];
    return NULL;
}

static struct proc *proc_alloc(struct master *m)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (m->procs[i].state == PROC_FREE)
            return &m->procs[i];
    return NULL;
}

static int procs_count(const struct master *m, unsigned generation, enum proc_state state)
{
    int n = 0;
    for (int i = 0; i < MAX_PROCS; i++)
        if (m->procs[i].state == state && m->procs[i].generation == generation)
            n++;
    return n;
}

static int procs_alive(const struct master *m)
{
    int n = 0;
    for (int i = 0; i < MAX_PROCS; i++)
        n += m->procs[i].state != PROC_FREE;
    return n;
}

/* What GET /metrics shows of the master's state. */
static void metrics_publish_master(struct master *m)
{
    atomic_store(&m->metrics->generation, m->generation);
    atomic_store(&m->metrics->workers, (uint64_t)m->cfg.workers);
}

static void sockets_close(struct worker_sockets *s)
{
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->metrics_fd >= 0)
        close(s->metrics_fd);
    *s = (struct worker_sockets){ -1, -1 };
}

static bool addr_same(const struct config_addr *a, const struct config_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* A socket for addr: the current one if the address is unchanged (*reused set), else a new one; -1 for
 * an address that is off. Returns -2 when a needed socket cannot be opened (logged by listener_open). */
static int socket_for(const struct config_addr *addr, const struct config_addr *cur_addr, int cur_fd,
                      bool passed, int backlog, bool *reused)
{
    *reused = cur_fd >= 0 && (passed || addr_same(addr, cur_addr));
    if (*reused)
        return cur_fd;
    if (addr->port == 0)
        return -1;
    int fd = listener_open(addr->host, addr->port, backlog);
    return fd < 0 ? -2 : fd;
}

/* The sockets the configuration `next` needs. Unchanged addresses keep their socket (no connection is
 * refused across a reload); the sockets replaced stay open in m->old until the old workers have left. */
static int sockets_prepare(struct master *m, const struct config *next)
{
    bool keep_listen, keep_metrics;
    int lfd = socket_for(&next->listen, &m->cfg.listen, m->socks.listen_fd, m->passed.http_fd >= 0,
                         next->backlog, &keep_listen);
    if (lfd == -2)
        return -1;
    int mfd = socket_for(&next->metrics_listen, &m->cfg.metrics_listen, m->socks.metrics_fd,
                         m->passed.metrics_fd >= 0, next->backlog, &keep_metrics);
    if (mfd == -2) {
        if (!keep_listen)
            close(lfd);
        return -1;
    }
    sockets_close(&m->old);
    m->old = (struct worker_sockets){ keep_listen ? -1 : m->socks.listen_fd,
                                      keep_metrics ? -1 : m->socks.metrics_fd };
    m->socks = (struct worker_sockets){ lfd, mfd };
    return 0;
}

/* Socket activation: systemd holds the listening socket across restarts and upgrades of the service, so
 * no connection is refused while no pgapi runs; the kernel queues them. Its address is the socket
 * unit's, whatever [server] listen says. */
static int sockets_adopt_passed(struct master *m)
{
    if (listener_inherit(&m->passed) < 0)
        return -1;
    if (m->passed.http_fd >= 0) {
        m->socks.listen_fd = m->passed.http_fd;
        log_info("serving on the socket systemd passed (fd %d); [server] listen is not used",
                 m->passed.http_fd);
    }
    if (m->passed.metrics_fd >= 0) {
        m->socks.metrics_fd = m->passed.metrics_fd;
        log_info("metrics on the socket systemd passed (fd %d); [metrics] listen is not used",
                 m->passed.metrics_fd);
    }
    return 0;
}

/* The child: restores the signal mask, drops the master's descriptors and becomes a worker. */
static void child_become_worker(struct master *m, int slot)
{
    prctl(PR_SET_PDEATHSIG, SIGQUIT);
    close(m->sig_fd);
    close(m->ready_rd);
    sockets_close(&m->old);
    signal(SIGUSR1, SIG_IGN); /* until the worker's handler is in: a rotation must not kill it */
    sigprocmask(SIG_SETMASK, &m->old_mask, NULL);
    struct worker_shared shared = {
        .consistency = m->consistency, .capacity = m->capacity, .metrics = m->metrics, .clients = m->clients
    };
    int rc = worker_run(&m->cfg, &shared, &m->socks, slot, m->generation, m->ready_wr);
    free(m);
    exit(rc); /* exit, not _exit: sanitizer builds check the worker for leaks at exit */
}

static int worker_spawn(struct master *m, int slot)
{
    struct proc *p = proc_alloc(m);
    if (!p) {
        log_error("process table full: cannot start worker %d", slot);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        log_error("fork worker %d: %s", slot, strerror(errno));
        return -1;
    }
    if (pid == 0)
        child_become_worker(m, slot);
    metrics_add(&m->metrics->worker_starts, 1);
    *p = (struct proc){ .state = PROC_STARTING,
                        .pid = pid,
                        .slot = slot,
                        .generation = m->generation,
                        .started_ms = (int64_t)clock_now_ms() };
    log_info("worker %d started: pid %d generation %u", slot, (int)pid, m->generation);
    return 0;
}

static void generation_spawn(struct master *m)
{
    for (int slot = 0; slot < m->cfg.workers; slot++) {
        m->respawns[slot] = (struct respawn){ 0 };
        if (worker_spawn(m, slot) < 0)
            m->respawns[slot] =
                (struct respawn){ .pending = true, .due_ms = (int64_t)clock_now_ms() + 1000, .failures = 1 };
    }
}

static void procs_signal(struct master *m, int sig, bool (*match)(const struct master *, const struct proc *))
{
    for (int i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &m->procs[i];
        if (p->state == PROC_FREE || (match && !match(m, p)))
            continue;
        if (kill(p->pid, sig) < 0 && errno != ESRCH)
            log_error("kill worker pid %d: %s", (int)p->pid, strerror(errno));
        if (sig == SIGQUIT)
            p->state = PROC_RETIRING;
    }
}

static bool proc_is_old(const struct master *m, const struct proc *p)
{
    return p->generation != m->generation && p->state != PROC_RETIRING;
}

/* Called when the new generation has every worker serving: the old one may now leave. */
static void reload_finish(struct master *m)
{
    procs_signal(m, SIGQUIT, proc_is_old);
    sockets_close(&m->old);
    m->reloading = false;
    log_info("reload complete: generation %u serving with %d workers", m->generation, m->cfg.workers);
    notify_send("READY=1\nSTATUS=serving");
}

/* SIGUSR1 after a rotation: the master opens the log file again, then every worker does (each holds its
 * own descriptor). */
static void log_rotate(struct master *m)
{
    if (!m->cfg.log_file[0])
        return;
    if (log_file_reopen() < 0)
        log_error("log file %s: cannot reopen: %s; still writing to the old one", m->cfg.log_file,
                  strerror(errno));
    else
        log_info("log file %s reopened", m->cfg.log_file);
    procs_signal(m, SIGUSR1, NULL);
}

/* A reload that names another log file: lines go there from now on; one that cannot be opened keeps the
 * old file (stderr, when none was set), and says so. */
static void log_file_switch(struct master *m, const char *old)
{
    if (!m->cfg.log_file[0] || strcmp(m->cfg.log_file, old) == 0)
        return;
    if (log_file_use(m->cfg.log_file) < 0) {
        log_error("log file %s: %s; logging stays where it was", m->cfg.log_file, strerror(errno));
        snprintf(m->cfg.log_file, sizeof(m->cfg.log_file), "%s", old);
    }
}

static void reload_start(struct master *m)
{
    char err[CONFIG_ERR_MAX];
    struct config next;
    notify_send("RELOADING=1");
    if (config_load(&next, m->config_path, err, sizeof(err)) < 0) {
        log_error("reload refused, keeping generation %u: %s", m->generation, err);
        metrics_add(&m->metrics->reloads_refused, 1);
        notify_send("READY=1\nSTATUS=reload refused: bad configuration");
        return;
    }
    if (sockets_prepare(m, &next) < 0) {
        log_error("reload refused, keeping generation %u: cannot listen on a new address", m->generation);
        metrics_add(&m->metrics->reloads_refused, 1);
        notify_send("READY=1\nSTATUS=reload refused: cannot listen");
        return;
    }
    /* A reload during a reload: the half-started generation is retired like any old one. */
    char old_file[sizeof(m->cfg.log_file)];
    snprintf(old_file, sizeof(old_file), "%s", m->cfg.log_file);
    m->cfg = next;
    log_file_switch(m, old_file);
    m->generation++;
    metrics_add(&m->metrics->reloads, 1);
    metrics_publish_master(m);
    log_configure(m->cfg.log_level, m->cfg.log_format, m->cfg.access_log);
    log_set_process("master", -1, m->generation);
    log_info("reloading: generation %u with %d workers on %s:%d", m->generation, m->cfg.workers,
             m->cfg.listen.host, m->cfg.listen.port);
    m->reloading = true;
    generation_spawn(m);
}

static void stop_start(struct master *m, int sig)
{
    if (m->stopping) {
        log_warn("second stop signal (%s): fast exit", strsignal(sig));
        procs_signal(m, SIGTERM, NULL);
        m->stop_deadline_ms = (int64_t)clock_now_ms() + 1000;
        return;
    }
    m->stopping = true;
    m->stop_deadline_ms = (int64_t)clock_now_ms() + m->cfg.drain_timeout_ms + 2000;
    log_info("%s: graceful stop, draining %d workers", strsignal(sig), procs_alive(m));
    notify_send("STOPPING=1");
    procs_signal(m, SIGQUIT, NULL);
}

static void respawn_schedule(struct master *m, const struct proc *p)
{
    struct respawn *r = &m->respawns[p->slot];
    bool crashed_early = (int64_t)clock_now_ms() - p->started_ms < STABLE_AFTER_MS;
    r->failures = crashed_early ? r->failures + 1 : 0;
    int64_t delay = r->failures > 0 ? clock_backoff_ms(r->failures, 100, RESPAWN_MAX_MS) : 0;
    r->pending = true;
    r->due_ms = (int64_t)clock_now_ms() + delay;
    if (delay)
        log_warn("worker %d crashed %d time(s) in a row: respawn in %lldms", p->slot, r->failures,
                 (long long)delay);
}

static void child_log_exit(const struct proc *p, int status)
{
    if (WIFEXITED(status)) {
        if (WEXITSTATUS(status) == 0 && p->state == PROC_RETIRING)
            log_info("worker %d pid %d (generation %u) exited", p->slot, (int)p->pid, p->generation);
        else
            log_warn("worker %d pid %d (generation %u) exited with status %d", p->slot, (int)p->pid,
                     p->generation, WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        log_error("worker %d pid %d (generation %u) killed by signal %d (%s)", p->slot, (int)p->pid,
                  p->generation, WTERMSIG(status), strsignal(WTERMSIG(status)));
    }
}

/* A worker that died (a signal, a failed exit) may have committed writes whose cache invalidation never
 * ran: their clients got no answer, but Redis would serve the old rows until the TTL. Every worker
 * bypasses the cache until one of them has moved it to a new epoch, as after a failed invalidation. */
static void cache_dirty_after_death(struct master *m, const struct proc *p, int status)
{
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (clean || !m->consistency)
        return;
    consistency_worker_died(m->consistency);
    log_warn("worker %d pid %d died: the cache is bypassed until it moves to a new epoch", p->slot,
             (int)p->pid);
}

static void children_reap(struct master *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        struct proc *p = proc_find(m, pid);
        if (!p)
            continue;
        child_log_exit(p, status);
        capacity_vacate(m->capacity, p->slot, p->generation); /* a crash left its room published */
        clients_vacate(m->clients, p->slot, p->generation);   /* and its connections counted */
        metrics_gauges_vacate(m->metrics, p->slot, p->generation);
        cache_dirty_after_death(m, p, status);
        bool respawn = !m->stopping && p->generation == m->generation && p->state != PROC_RETIRING;
        if (respawn) {
            metrics_add(&m->metrics->worker_restarts, 1);
            respawn_schedule(m, p);
        }
        p->state = PROC_FREE;
    }
}

static void respawns_run(struct master *m)
{
    int64_t now = (int64_t)clock_now_ms();
    for (int slot = 0; slot < m->cfg.workers; slot++) {
        struct respawn *r = &m->respawns[slot];
        if (!r->pending || r->due_ms > now)
            continue;
        r->pending = false;
        if (worker_spawn(m, slot) < 0)
            respawn_schedule(m, &(struct proc){ .slot = slot, .started_ms = now });
    }
}

static void ready_read(struct master *m)
{
    pid_t pids[64];
    ssize_t n = read(m->ready_rd, pids, sizeof(pids));
    for (ssize_t i = 0; i < n / (ssize_t)sizeof(pid_t); i++) {
        struct proc *p = proc_find(m, pids[i]);
        if (p && p->state == PROC_STARTING)
            p->state = PROC_READY;
    }
}

static void signal_read(struct master *m)
{
    struct signalfd_siginfo si;
    while (read(m->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        int sig = (int)si.ssi_signo;
        if (sig != SIGCHLD)
            log_info("signal %d (%s) from pid %u", sig, strsignal(sig), si.ssi_pid);
        if (sig == SIGCHLD)
            children_reap(m);
        else if (sig == SIGHUP && !m->stopping)
            reload_start(m);
        else if (sig == SIGTERM || sig == SIGINT || sig == SIGQUIT)
            stop_start(m, sig);
        else if (sig == SIGUSR1)
            log_rotate(m);
    }
}

static int poll_timeout(const struct master *m)
{
    int64_t now = (int64_t)clock_now_ms(), next = now + 1000;
    for (int slot = 0; slot < m->cfg.workers; slot++)
        if (m->respawns[slot].pending && m->respawns[slot].due_ms < next)
            next = m->respawns[slot].due_ms;
    if (m->stopping && m->stop_deadline_ms < next)
        next = m->stop_deadline_ms;
    return next > now ? (int)(next - now) : 0;
}

static bool generation_ready(const struct master *m)
{
    return procs_count(m, m->generation, PROC_READY) == m->cfg.workers;
}

static int master_setup(struct master *m)
{
    sigset_t set;
    sigemptyset(&set);
    int sigs[] = { SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGUSR1 };
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaddset(&set, sigs[i]);
    signal(SIGPIPE, SIG_IGN);
    if (sigprocmask(SIG_BLOCK, &set, &m->old_mask) < 0 ||
        (m->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        log_error("signalfd: %s", strerror(errno));
        return -1;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) {
        log_error("pipe: %s", strerror(errno));
        return -1;
    }
    m->ready_rd = p[0];
    m->ready_wr = p[1];
    m->consistency = resource_registry_check() ? consistency_create(resource_count()) : NULL;
    m->capacity = capacity_create();
    m->metrics = metrics_create();
    m->clients = clients_create();
    if (!m->consistency || !m->capacity || !m->metrics || !m->clients)
        return -1;
    metrics_publish_master(m);
    if (sockets_adopt_passed(m) < 0)
        return -1;
    return sockets_prepare(
        m, &m->cfg); /* opens each socket the configuration asks for and systemd did not pass */
}

static void master_loop(struct master *m)
{
    bool announced = false;
    while (!m->stopping || procs_alive(m) > 0) {
        struct pollfd fds[2] = { { .fd = m->sig_fd, .events = POLLIN },
                                 { .fd = m->ready_rd, .events = POLLIN } };
        if (poll(fds, 2, poll_timeout(m)) < 0 && errno != EINTR) {
            log_error("poll: %s", strerror(errno));
            break;
        }
        if (fds[0].revents & POLLIN)
            signal_read(m);
        if (fds[1].revents & POLLIN)
            ready_read(m);
        if (!m->stopping)
            respawns_run(m);
        if (!announced && !m->stopping && generation_ready(m)) {
            announced = true;
            if (m->passed.http_fd >= 0)
                log_info("serving on systemd's socket with %d workers", m->cfg.workers);
            else
                log_info("serving on %s:%d with %d workers", m->cfg.listen.host, m->cfg.listen.port,
                         m->cfg.workers);
            notify_send("READY=1\nSTATUS=serving");
        }
        if (m->reloading && generation_ready(m))
            reload_finish(m);
        if (m->stopping && (int64_t)clock_now_ms() >= m->stop_deadline_ms) {
            log_warn("drain deadline passed: killing %d workers", procs_alive(m));
            procs_signal(m, SIGKILL, NULL);
            m->stop_deadline_ms = (int64_t)clock_now_ms() + 1000;
        }
    }
}

int master_run(const struct config *cfg, const char *config_path)
{
    struct master *m = calloc(1, sizeof(*m));
    if (!m) {
        log_error("out of memory");
        return 1;
    }
    m->cfg = *cfg;
    m->config_path = config_path;
    m->generation = 1;
    m->socks = m->old = (struct worker_sockets){ -1, -1 };
    log_set_process("master", -1, m->generation);
    if (m->cfg.log_file[0] && log_file_use(m->cfg.log_file) < 0) {
        log_error("log file %s: %s", m->cfg.log_file, strerror(errno));
        free(m);
        return 1;
    }
    if (master_setup(m) < 0) {
        sockets_close(&m->socks);
        free(m);
        return 1;
    }
    generation_spawn(m);
    master_loop(m);
    log_info("stopped");
    consistency_destroy(m->consistency);
    capacity_destroy(m->capacity);
    metrics_destroy(m->metrics);
    clients_destroy(m->clients);
    sockets_close(&m->socks);
    sockets_close(&m->old);
    free(m);
    return 0;
}
