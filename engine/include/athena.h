/* Athena: a job runtime and database gateway, scripted in Lua 5.4.
 *
 * This is the public C API, laid out like uv.h: the error map, the opaque
 * types, then one section per object with a contract on every function.
 * Functions return 0 or a negative ATH_E* code; results come back through
 * out-parameters. See docs/c-api.md for a walk-through.
 */
#ifndef ATHENA_H
#define ATHENA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ATH_EXTERN __attribute__((visibility("default")))
#else
#define ATH_EXTERN
#endif

/* ------------------------------------------------------------------ errors */

/* Codes shared with libuv keep libuv's (negated errno) values; Athena's own
 * codes sit below -20000. */
#define ATH__ETIMEDOUT (-110)
#define ATH__ECANCELED (-125)
#define ATH__EINVAL (-22)
#define ATH__ENOMEM (-12)
#define ATH__EBUSY (-16)
#define ATH__ENOSYS (-38)
#define ATH__ENOSPC (-28)
#define ATH__EIO (-5)
#define ATH__ENOTFOUND (-20001)
#define ATH__EHEARTBEAT (-20002)
#define ATH__ECOMPENSATED (-20003)
#define ATH__EWORKERLOST (-20004)
#define ATH__EFATAL (-20005)
#define ATH__EHANDLER (-20006)
#define ATH__ERETRYABLE (-20007)
#define ATH__ENONDETERMINISM (-20008)
#define ATH__ESHUTDOWN (-20009)
#define ATH__ESTORE (-20010)

#define ATH_ERRNO_MAP(XX)                                          \
  XX(ETIMEDOUT, "operation timed out")                             \
  XX(ECANCELED, "task cancelled")                                  \
  XX(EINVAL, "invalid argument")                                   \
  XX(ENOMEM, "out of memory")                                      \
  XX(EBUSY, "resource busy")                                       \
  XX(ENOSYS, "not implemented")                                    \
  XX(ENOSPC, "no space left on the disk")                          \
  XX(EIO, "input/output error")                                    \
  XX(ENOTFOUND, "no such job, handler or schedule")                \
  XX(EHEARTBEAT, "heartbeat timeout")                              \
  XX(ECOMPENSATED, "workflow failed and was compensated")          \
  XX(EWORKERLOST, "worker lost")                                   \
  XX(EFATAL, "fatal error")                                        \
  XX(EHANDLER, "handler error")                                    \
  XX(ERETRYABLE, "retryable error")                                \
  XX(ENONDETERMINISM, "workflow replay diverged from its history") \
  XX(ESHUTDOWN, "world is shutting down")                          \
  XX(ESTORE, "store error")

typedef enum {
#define XX(name, _) ATH_##name = ATH__##name,
  ATH_ERRNO_MAP(XX)
#undef XX
} ath_errno_t;

/* Returns the code's name without the ATH_ prefix ("ETIMEDOUT"), the `code`
 * Lua sees, or "EUNKNOWN" for a code outside the map. Thread: any. */
ATH_EXTERN const char* ath_err_name(int err);
/* Returns a static description of the code. Thread: any. */
ATH_EXTERN const char* ath_strerror(int err);
/* Returns the code whose name is `name` ("EINVAL"), or 0 if none. */
ATH_EXTERN int ath_err_code(const char* name);

/* ------------------------------------------------------------------- types */

typedef struct ath_world_s ath_world_t;
typedef struct ath_task_s ath_task_t;
typedef struct ath_world_config_s ath_world_config_t;
typedef struct ath_exec_opts_s ath_exec_opts_t;
typedef struct ath_store_provider_s ath_store_provider_t;
typedef struct ath_event_sink_s ath_event_sink_t;
typedef struct ath_authorizer_s ath_authorizer_t;

typedef enum {
  ATH_PENDING = 0,
  ATH_SCHEDULED,
  ATH_RUNNING,
  ATH_RETRYING,
  ATH_COMPENSATING,
  ATH_COMPLETED, /* first terminal state */
  ATH_FAILED,
  ATH_CANCELLED,
  ATH_QUARANTINED,
  ATH_COMPENSATED
} ath_status_t;

#define ATH_IS_TERMINAL(s) ((s) >= ATH_COMPLETED)

/* Returns the state's name as SEMANTICS.md §4.1 spells it ("pending"). */
ATH_EXTERN const char* ath_status_name(ath_status_t s);

/* Returns the library version string ("0.1.0"). */
ATH_EXTERN const char* ath_version(void);

/* ------------------------------------------------------------------- world */

/* World configuration. Initialise with ath_world_config_init(), which sets
 * the SEMANTICS.md §2 defaults, then change fields. Strings are borrowed for
 * the duration of ath_world_new(), which copies them. */
/* Failure strategies (SEMANTICS §8). */
typedef enum {
  ATH_STRATEGY_DEFAULT = 0, /* the definition's, else the world's */
  ATH_STRATEGY_RETRY,
  ATH_STRATEGY_CASCADE,
  ATH_STRATEGY_COMPENSATE,
  ATH_STRATEGY_IGNORE,
  ATH_STRATEGY_QUARANTINE
} ath_strategy_t;

typedef enum { ATH_BACKOFF_EXPONENTIAL = 0, ATH_BACKOFF_LINEAR, ATH_BACKOFF_CONSTANT } ath_backoff_t;

struct ath_world_config_s {
  int min_workers;         /* default pool size at start() (2) */
  int max_workers;         /* default pool ceiling (10) */
  int default_concurrency; /* slots per default worker (1) */
  int persistence;         /* ATH_PERSIST_* (hybrid) */
  const char* persistence_path; /* ".athena" */
  int64_t cancel_grace_ms;      /* 5000 */
  ath_strategy_t failure_strategy; /* ATH_STRATEGY_RETRY */
  size_t memory_limit;          /* bytes of Lua heap per worker state (256 MiB) */
  int workflow_cache;           /* parked workflow coroutines each worker keeps
                                 * for its next segment, LRU (10000); 0: none,
                                 * every segment replays the history */
  int64_t flush_interval_ms;    /* hybrid group-commit period (50) */
  int64_t retention_ms;         /* terminal tasks kept this long (7 days) */
  int64_t retain_terminal;      /* memory mode: at most this many terminal tasks
                                 * (dead letters aside) stay in RAM, oldest
                                 * evicted first (10000); with a store, a
                                 * terminal task leaves RAM once committed */
  int manual_clock;             /* 1: time stands still until ath_world_advance */
  int no_metrics;               /* 1: skip the latency and throughput samples (for
                                 * measuring what collecting them costs) */
  double scale_threshold;       /* add workers at this workload (0.7) */
  double scale_down_threshold;  /* retire workers at this workload (0.3) */
  int64_t scale_interval_ms;    /* autoscaler period (10000) */
  int64_t heartbeat_interval_ms;/* worker beat and monitor period (5000) */
  int64_t heartbeat_timeout_ms; /* a worker silent this long is lost (30000) */
  int log_level;                /* 0 debug, 1 info (default), 2 warn, 3 error */
  int log_format;               /* 0 auto (pretty on a terminal, else logfmt), 1 logfmt,
                                 * 2 json, 3 pretty */
  const char* log_file;         /* NULL: stderr; else rotated by size */
  size_t log_max_size;          /* 10 MiB */
  int log_max_files;            /* 5 */
  const char* webhook_url;      /* LocalBackend webhooks, or NULL */
  unsigned webhook_events;      /* bit (1 << n) per event of SEMANTICS §15, in
                                 * its order; 0: all */
  /* Code that worker states load: either an entry script re-run in
   * definition mode, or modules that workers require (one of the two). */
  const char* entry_script;
  const char* const* modules; /* NULL-terminated, or NULL */
  const char* const* script_args; /* arg[0..n] for the entry script */
  const char* lua_path;       /* package.path for workers, or NULL */
  const char* lua_cpath;      /* package.cpath for workers, or NULL */
  const char* database;       /* ctx.db's URL (sqlite:..., postgres://...), or NULL */
  /* The persistence provider of file and hybrid persistence (the store
   * section below); NULL: the built-in SQLite store. Borrowed: it must
   * outlive the world. */
  const ath_store_provider_t* store;
  /* Where the events of SEMANTICS §15 go instead of a webhook URL (the
   * event sink section below), or NULL. webhook_events filters them as it
   * does webhooks. Borrowed: it must outlive the world. Exclusive with
   * webhook_url. */
  const ath_event_sink_t* event_sink;
  /* The HTTP surface's last access decision (the authorizer section
   * below), or NULL. Borrowed: it must outlive the world. */
  const ath_authorizer_t* authorizer;
  /* The PostgreSQL backend (docs/backend-postgres.md): several processes
   * share one queue in a PostgreSQL schema. NULL: none (the local store). */
  const char* backend_url;    /* postgres://... or a libpq conninfo */
  const char* backend_schema; /* NULL: "athena" */
  const char* node_id;        /* NULL: "<hostname>:<pid>" */
  int64_t poll_interval_ms;   /* claims and result checks without NOTIFY (1000) */
  int backend_poll_only;      /* 1: send and use no NOTIFY (poll only) */
};

enum { ATH_PERSIST_MEMORY = 0, ATH_PERSIST_FILE, ATH_PERSIST_HYBRID };

/* The Lua runtime a world's worker states and gateway threads are made
 * with: the engine creates the states, the host says how to prepare them.
 * The `athena.core` Lua module installs its own when it is opened (the
 * `athena` command, `require "athena"`); a C host that links libathena
 * installs it before starting a world:
 *   ath_runtime_install(ath_lua_runtime());
 * Starting a world with none installed fails with ATH_EINVAL. */
struct lua_State;
typedef struct ath_runtime_hooks_s {
  /* Prepares a new worker or gateway state: standard libraries, the
   * athena modules, the global `athena`. May raise (a memory error). */
  void (*open_state)(struct lua_State* L);
  /* [-0, +1, e] Pushes the state's connection for `url` (a task's ctx.db),
   * made on first use. */
  void (*push_db)(struct lua_State* L, const char* url);
} ath_runtime_hooks_t;

/* Installs the hooks (process-wide; `h` must outlive every world; NULL
 * removes them). Thread: any, before the worlds that use them start. */
ATH_EXTERN void ath_runtime_install(const ath_runtime_hooks_t* h);
/* The Lua bindings' hooks (bindings/l_core.c). */
ATH_EXTERN const ath_runtime_hooks_t* ath_lua_runtime(void);

/* Fills `cfg` with the defaults. Thread: any. */
ATH_EXTERN void ath_world_config_init(ath_world_config_t* cfg);

/* Creates a stopped world. Returns 0 and sets *out, or ATH_EINVAL (a bad
 * config; `err` receives the reason when not NULL) or ATH_ENOMEM.
 * Thread: any; the world may then be used from any thread. */
ATH_EXTERN int ath_world_new(const ath_world_config_t* cfg, ath_world_t** out,
                             char* err, size_t errlen);

/* Adds a task queue `name` with `workers` workers of `concurrency` slots
 * each. Only before start(). Returns 0, ATH_EINVAL (bad name or numbers, or
 * after start) or ATH_ENOMEM. */
ATH_EXTERN int ath_world_add_queue(ath_world_t* w, const char* name,
                                   int workers, int concurrency);

/* An activity definition: initialise with ath_activity_init(), then set
 * fields. Strings are borrowed for the duration of ath_world_register. */
typedef struct {
  const char* name;
  const char* task_queue;   /* NULL: "default" */
  int priority;             /* 0 */
  int has_retry;            /* 0: attempts follow the strategy (§7.2) */
  int max_attempts;         /* with has_retry; 0: by the strategy */
  ath_backoff_t backoff;    /* exponential */
  int64_t initial_interval_ms, max_interval_ms; /* 1000, 60000 */
  double multiplier;        /* 2 */
  const char* const* non_retryable; /* NULL-terminated codes/names, or NULL */
  int64_t timeout_ms;       /* per attempt (300000); always finite */
  int64_t schedule_to_close_ms; /* 0: none */
  int64_t heartbeat_timeout_ms; /* 0: none */
  ath_strategy_t failure_strategy; /* ATH_STRATEGY_DEFAULT: the world's */
  int workflow;             /* 1: a workflow (SEMANTICS §9): its handler runs
                             * through athena.workflow's replay runtime, timeout_ms
                             * 0 means no run limit, 4 attempts under retry */
} ath_activity_t;

/* Fills `a` with the defaults for activity `name`. */
ATH_EXTERN void ath_activity_init(ath_activity_t* a, const char* name);

/* Registers an activity. Only before start(). Registering the same name
 * again with the same queue and priority is a no-op (the first definition
 * stays). Returns 0 or ATH_EINVAL (taken name with another queue or
 * priority, unknown queue, bad numbers, after start) or ATH_ENOMEM. */
ATH_EXTERN int ath_world_register(ath_world_t* w, const ath_activity_t* a);

/* Opens persistence (file/hybrid: locks persistencePath, opens and migrates
 * the store, recovers tasks and schedules), then spawns the worker
 * threads; each creates its Lua state, loads the handler code and binds
 * every registered name before start() returns. Returns 0 (also when
 * already started), ATH_ENOTFOUND (a handler no worker state defines; `err`
 * names it), ATH_EINVAL (the worker code failed to load, or the database is
 * newer than this build or not Athena's; `err` says which), ATH_EBUSY
 * (persistencePath held by another world), ATH_ESTORE (the store cannot be
 * opened or read) or ATH_ESHUTDOWN (after shutdown). Thread: the thread
 * that created the world. */
ATH_EXTERN int ath_world_start(ath_world_t* w, char* err, size_t errlen);

/* Options of one execution; zero-initialise, then set what you need. */
struct ath_exec_opts_s {
  const char* id;         /* explicit id (idempotent execute), or NULL */
  int64_t delay_ms;       /* 0: ready now */
  int has_priority;       /* when 0, the definition's priority */
  int priority;
  const char* task_queue; /* NULL: the definition's queue */
  ath_strategy_t failure_strategy; /* ATH_STRATEGY_DEFAULT: the definition's */
  const char* parent_id;  /* the owning workflow (a child, an activity of
                           * ctx:run or a compensation), or NULL */
  const char* limits;     /* per-call limits replacing the definition's, as
                           * JSON {timeout, scheduleToClose, heartbeatTimeout,
                           * retry} (ms; retry as the Lua option, replacing the
                           * whole policy), or NULL */
  size_t limits_len;
};

/* Queues `n` executions of `name`, one per payload, in one critical
 * section. Takes ownership of every payloads[i] (malloc'd JSON of lens[i]
 * bytes), even on failure. ids, when not NULL, gives an explicit id per
 * payload (NULL entries: generated). On success sets out[i] to a reference
 * to each task (release with ath_task_release) and returns 0; on failure
 * nothing is queued and it returns ATH_ENOTFOUND (unknown name), ATH_EINVAL
 * (before start, unknown queue, id in use by another name, a payload over
 * 4 GiB; `err` says which)
 * or ATH_ESHUTDOWN; ATH_ENOSPC, ATH_EIO or ATH_ESTORE when the store cannot
 * keep the batch (its commit failed, or the store is degraded): then none of
 * its tasks exists or runs. An existing id yields the existing task
 * (SEMANTICS §5.3). Without `ids`, opts->id (if any) names the one task;
 * with `ids`, a NULL entry gets a generated id. In file mode it returns once
 * the batch is committed. Thread: any. */
ATH_EXTERN int ath_world_execute(ath_world_t* w, const char* name, size_t n,
                                 char** payloads, const size_t* lens,
                                 const char* const* ids,
                                 const ath_exec_opts_t* opts,
                                 ath_task_t** out, char* err, size_t errlen);

/* Cancels a task (SEMANTICS §6.3). Returns 1 if the cancel was accepted, 0
 * if the task is terminal (or compensating). A queued task is cancelled at
 * once; a running one is interrupted at its next yield point, or by the
 * count hook after the world's cancel grace. Thread: any. */
ATH_EXTERN int ath_world_cancel(ath_world_t* w, ath_task_t* t);

/* Puts a quarantined task back in its queue with a fresh attempt count
 * (T15). Returns 0, ATH_EINVAL (not quarantined, or its activity is no
 * longer registered), ATH_ESHUTDOWN or ATH_ENOMEM. Thread: any. */
ATH_EXTERN int ath_world_requeue(ath_world_t* w, ath_task_t* t);

/* Deletes a quarantined task; its id may be reused. Returns 0 or
 * ATH_EINVAL (not quarantined). Thread: any. */
ATH_EXTERN int ath_world_purge(ath_world_t* w, ath_task_t* t);

/* Filter for ath_world_query_tasks; zero-initialise. */
typedef struct {
  unsigned status_mask;   /* bit (1 << ath_status_t); 0: any */
  const char* name;       /* NULL: any */
  int64_t since, until;   /* createdAt bounds, inclusive; 0: open */
  int limit, offset;      /* limit 0: 100; at most 1000 */
  const char* parent_id;  /* the owning workflow's id; NULL: any */
} ath_task_filter_t;

/* Stores up to filter->limit references to matching tasks, newest first
 * (createdAt descending, then id), after skipping `offset`. Returns the
 * count, or ATH_ENOMEM. Release each with ath_task_release. */
ATH_EXTERN int ath_world_query_tasks(ath_world_t* w, const ath_task_filter_t* f,
                                     ath_task_t** out);

/* Looks up a task by id. Returns 0 and a new reference in *out, or
 * ATH_ENOTFOUND. Thread: any. */
ATH_EXTERN int ath_world_find(ath_world_t* w, const char* id, ath_task_t** out);

/* Fills out[0..cap) with new references to the first tasks whose parent
 * is `t` (a workflow's activities, children and compensations), in
 * creation order, and returns how many it stored (cap: there may be more;
 * page on with ath_world_children_after). */
ATH_EXTERN int ath_world_children(ath_world_t* w, const ath_task_t* t, ath_task_t** out, int cap);
/* As ath_world_children, for the tasks created after the one whose
 * ath_task_seq is `after` (0: from the first): a page. Returns the count
 * stored, or ATH_ENOMEM. Thread: any. */
ATH_EXTERN int ath_world_children_after(ath_world_t* w, const ath_task_t* t, uint64_t after,
                                        ath_task_t** out, int cap);
/* A task's creation number (unique in its world, increasing): the cursor
 * of ath_world_children_after. */
ATH_EXTERN uint64_t ath_task_seq(const ath_task_t* t);

/* Waits until `t` is terminal or `timeout_ms` passes (< 0: no limit).
 * Returns 0 when terminal, ATH_ETIMEDOUT, or ATH_ESHUTDOWN when the world
 * shut down with the task unfinished. Thread: any but a worker's. */
ATH_EXTERN int ath_world_wait(ath_world_t* w, ath_task_t* t, int64_t timeout_ms);

/* Manual clock only: moves the world's time forward by `ms`, firing in due
 * order every timer due in between (delays, retries, timeouts, heartbeats,
 * sleeps, schedules), and returns once the work they started has settled:
 * every worker is waiting, or running Lua code that does not yield (which
 * cannot be waited for). Returns 0, or ATH_EINVAL (not a manual clock, not
 * started, ms < 0). Thread: not a worker's. */
ATH_EXTERN int ath_world_advance(ath_world_t* w, int64_t ms);

/* What world:serve() serves besides /healthz. */
enum { ATH_SERVE_METRICS = 1, ATH_SERVE_DASHBOARD = 2 };

/* Serves the operations HTTP surface (SEMANTICS §14.3) on host:port (port
 * 0: any free port) from the engine's loop: /healthz always, /metrics with
 * ATH_SERVE_METRICS, the dashboard and /api/ with ATH_SERVE_DASHBOARD.
 * Without keys (world:serve's `auth`), so only on a loopback address when
 * it serves /metrics or /api/ (docs/operations.md "Operations surface: who
 * may do what"). Sets *bound to the port listened on. Returns 0, ATH_EBUSY
 * (address in use), ATH_EINVAL (bad host, not loopback, not started; err
 * says which). The server stops at shutdown. Thread: not the engine's. */
ATH_EXTERN int ath_world_serve(ath_world_t* w, const char* host, int port, int flags,
                               int* bound, char* err, size_t errlen);

/* 0 when the world is started and its last commit succeeded; otherwise
 * ATH_ESHUTDOWN or ATH_ESTORE (the store is degraded) with the reason in
 * `why`. Thread: any. */
ATH_EXTERN int ath_world_health(ath_world_t* w, char* why, size_t len);

/* The world's time in epoch ms: the manual clock's, or the system's. */
ATH_EXTERN int64_t ath_world_now(ath_world_t* w);

/* Stops accepting work, then for up to `timeout_ms` lets the workers finish
 * their attempts and work off the queued tasks (delayed ones are not waited
 * for); past that, interrupts what still runs (back to pending, attempt not
 * counted) and joins every thread. Sets *drained (attempts that ended during
 * the shutdown), *requeued (attempts interrupted) and *abandoned (memory
 * persistence: unfinished tasks lost with the world; 0 otherwise); each may
 * be NULL. Idempotent: a later call returns the first call's figures.
 * Thread: the creating thread. */
ATH_EXTERN int ath_world_shutdown(ath_world_t* w, int64_t timeout_ms,
                                  int* drained, int* requeued, int* abandoned);

/* Shuts down (if needed) and frees the world. Tasks still referenced stay
 * valid until released. Thread: the creating thread. */
ATH_EXTERN void ath_world_free(ath_world_t* w);

/* ------------------------------------------------------------------- tasks */

/* Snapshot of a task, filled by ath_task_snapshot(). JSON fields are
 * malloc'd copies owned by the snapshot; free with ath_task_snapshot_free. */
typedef struct {
  ath_status_t status;
  int attempt;
  int worker_id;   /* 0 if never run */
  int priority;
  int max_attempts;         /* effective (§7.2) */
  ath_strategy_t failure_strategy; /* effective */
  int64_t ready_at;         /* next attempt time while retrying */
  int64_t created_at, scheduled_at, started_at, completed_at; /* epoch ms, 0 if unset */
  int64_t last_heartbeat;   /* epoch ms of the latest ctx:heartbeat, 0 if none */
  char* heartbeat; size_t heartbeat_len; /* its details (JSON) or NULL */
  char* input;  size_t input_len;  /* JSON */
  char* result; size_t result_len; /* JSON or NULL */
  char* error;  size_t error_len;  /* JSON error value or NULL */
  int workflow;                    /* 1 for a workflow */
  char* parent_id;                 /* the owning workflow's id, or NULL */
  char* history; size_t history_len; /* workflows: the events as a JSON array */
} ath_task_info_t;

/* The task's id (valid while the reference is held) and activity name and
 * queue (valid while the reference is held and the world is not freed). */
ATH_EXTERN const char* ath_task_id(const ath_task_t* t);
ATH_EXTERN const char* ath_task_name(const ath_task_t* t);
ATH_EXTERN const char* ath_task_queue(const ath_task_t* t);
/* Current state, read without waiting. Thread: any. */
ATH_EXTERN ath_status_t ath_task_status(ath_world_t* w, const ath_task_t* t);
/* Copies the task's state into *info. Returns 0 or ATH_ENOMEM. */
ATH_EXTERN int ath_task_snapshot(ath_world_t* w, const ath_task_t* t,
                                 ath_task_info_t* info);
ATH_EXTERN void ath_task_snapshot_free(ath_task_info_t* info);
/* Takes and drops a reference. Thread: any. */
ATH_EXTERN void ath_task_retain(ath_task_t* t);
ATH_EXTERN void ath_task_release(ath_task_t* t);

/* --------------------------------------------------------------- schedules */

enum { ATH_CATCHUP_NONE = 0, ATH_CATCHUP_ONE, ATH_CATCHUP_ALL };

/* Options of a schedule; zero-initialise, then set catch_up (the default
 * in SEMANTICS §11 is ATH_CATCHUP_ONE; zero means NONE here). */
typedef struct {
  int local_tz;           /* 0: cron in UTC; 1: in the process's local zone */
  int catch_up;           /* ATH_CATCHUP_*: missed occurrences at start() */
  int overlap_skip;       /* 1: skip an occurrence while the last task runs */
  int has_priority;
  int priority;
  const char* task_queue; /* NULL: the definition's */
  ath_strategy_t failure_strategy;
} ath_schedule_opts_t;

/* Creates or replaces schedule `id`: activity `name` with the JSON input
 * `payload` (ownership taken, even on failure) on cron expression `cron`.
 * Returns 0, ATH_ENOTFOUND (unknown activity), ATH_EINVAL (bad cron, with
 * the parser's message in err; unknown queue; before start) or
 * ATH_ESHUTDOWN. Thread: any. */
ATH_EXTERN int ath_world_schedule(ath_world_t* w, const char* id, const char* name,
                                  char* payload, size_t len, const char* cron,
                                  const ath_schedule_opts_t* o, char* err, size_t errlen);

/* A one-off schedule at `at_ms` (epoch ms; a past time fires at once).
 * Writes its id ("once-<uuid>") into id_out. Returns as ath_world_schedule. */
ATH_EXTERN int ath_world_schedule_once(ath_world_t* w, const char* name, char* payload,
                                       size_t len, int64_t at_ms,
                                       const ath_schedule_opts_t* o, char id_out[64],
                                       char* err, size_t errlen);

/* Pause, resume and delete. Return 0 or ATH_ENOTFOUND. Thread: any. */
ATH_EXTERN int ath_world_schedule_pause(ath_world_t* w, const char* id);
ATH_EXTERN int ath_world_schedule_resume(ath_world_t* w, const char* id);
ATH_EXTERN int ath_world_schedule_delete(ath_world_t* w, const char* id);

/* A schedule as ath_world_schedules() reports it; strings are owned by the
 * array (ath_schedules_free). */
typedef struct {
  char* id;
  char* name;
  char* input;            /* JSON */
  char* cron;             /* NULL for a one-off */
  int local_tz, catch_up, overlap_skip, paused;
  int64_t total, skipped;
  int64_t last_ms, next_ms; /* 0 if none */
} ath_schedule_info_t;

/* Copies every schedule, sorted by id, into a new array. Returns 0 or
 * ATH_ENOMEM. */
ATH_EXTERN int ath_world_schedules(ath_world_t* w, ath_schedule_info_t** out, size_t* n);
ATH_EXTERN void ath_schedules_free(ath_schedule_info_t* s, size_t n);

/* ---------------------------------------------------------- store providers */

/* A persistence provider: where file and hybrid persistence keep the
 * journal (SEMANTICS §13). The built-in SQLite store is one; a host passes
 * its own as ath_world_config_t.store. The queue itself stays in the
 * engine's memory: a provider journals what happens to it and gives it
 * back at start; it does not claim or hand out tasks (the shared-queue
 * operations are the PostgreSQL backend's, docs/backend-postgres.md).
 * docs/c-api.md "Store providers" walks through one. */

/* One task's stored state. Strings are borrowed for the call (persist) or
 * the callback (load, get, query) they are passed to; JSON texts are not
 * NUL-terminated (use the lengths). */
typedef struct {
  const char* id;
  const char* name;         /* the activity */
  const char* queue;        /* the task queue */
  int status;               /* ath_status_t */
  int attempt, max_attempts;
  int strategy;             /* ath_strategy_t */
  int priority, worker_id;
  uint64_t seq;             /* creation number, unique and increasing: the key
                             * a provider stores the task under (ids may repeat
                             * once a task is purged) */
  int64_t created_at, scheduled_at, ready_at, started_at, completed_at, last_hb;
  const char* input;  size_t input_len;   /* JSON */
  const char* result; size_t result_len;  /* JSON, NULL until terminal */
  const char* error;  size_t error_len;   /* JSON error value, or NULL */
  int keep_error;           /* persist: leave the stored error as it is (a
                             * running task's worker owns it meanwhile) */
  const char* hb;     size_t hb_len;      /* last heartbeat's details (JSON) or NULL */
  const char* parent_id;    /* the owning workflow, or NULL */
  /* load/get/query: a workflow's history, its events (JSON objects) each
   * followed or separated by the byte ATH_STORE_EVENT_SEP; NULL: none. */
  const char* history; size_t history_len;
  /* persist: a workflow's new events, to store as its events number
   * ev_from, ev_from + 1, ... (events are appended, never rewritten; one
   * already stored under its number stays as it is). */
  const char* const* events; const size_t* event_lens; size_t nevents;
  uint32_t ev_from;
  const char* call;   size_t call_len;    /* per-call limits (JSON), NULL: none */
  int deleted;              /* persist: remove the task (seq) and its events */
  int stored;               /* persist: an earlier persist wrote this task (an
                             * update, not an insert; a hint: the row may be
                             * gone, as after a restore from a backup) */
} ath_store_task_t;

#define ATH_STORE_EVENT_SEP '\x1e'

/* One schedule's stored state (borrowed strings, as ath_store_task_t). */
typedef struct {
  const char* id;           /* the key */
  const char* name;         /* the activity */
  const char* input;  size_t input_len;
  const char* cron;         /* NULL: a one-off at once_at */
  int64_t once_at;
  int local_tz, catch_up, overlap_skip, paused, has_priority, priority, strategy;
  const char* queue;        /* NULL: the definition's */
  int64_t next_ms, last_ms, total, skipped;
  int deleted;              /* persist: remove the schedule */
} ath_store_schedule_t;

/* Callbacks a provider calls with each row; a non-zero return stops the
 * read, and the provider returns that code. */
typedef int (*ath_store_task_cb)(void* cbud, const ath_store_task_t* row);
typedef int (*ath_store_schedule_cb)(void* cbud, const ath_store_schedule_t* row);

/* A read of stored tasks (query). */
typedef struct {
  unsigned status_mask;  /* 1 << ath_status_t of the statuses wanted; 0: any */
  const char* name;      /* exact activity name, or NULL */
  const char* parent_id; /* owning workflow, or NULL */
  int64_t since, until;  /* bounds on created_at (inclusive), 0: none */
  int64_t limit;
  int by_seq;            /* 1: creation order; 0: newest first (created_at
                          * descending, then id) */
  uint64_t after_seq;    /* by_seq: only tasks created after this one; 0: any */
} ath_store_query_t;

/* The provider. Fill with zeros, set `size` to sizeof(ath_store_provider_t)
 * (the ABI: fields added later go at the end, and the engine reads only
 * the fields a provider's size covers), then the functions. Errors: return
 * an ATH_E* code with a message in err[0..errlen). open, load and close run
 * on the thread that starts the world; persist, prune, probe and reopen on
 * the store thread, one call at a time. */
struct ath_store_provider_s {
  size_t size;
  const char* name;           /* for logs: "sqlite" */
  void* ud;                   /* passed to open */
  /* Opens the store for a world whose persistencePath is `dir` (the engine
   * has created it and holds its lock file) and sets *store, the handle
   * every other call gets. Required. */
  int (*open)(void* ud, const char* dir, void** store, char* err, size_t errlen);
  /* Recovery at start: calls task_cb for every stored task in creation
   * (seq) order, then sched_cb for every stored schedule. Tasks that are
   * terminal may be left out (they are not recovered into RAM). Returning
   * an error fails ath_world_start with it. Required. */
  int (*load)(void* store, ath_store_task_cb task_cb, ath_store_schedule_cb sched_cb, void* cbud,
              char* err, size_t errlen);
  /* Writes one group commit, all or nothing: tasks[0..n) (a row replaces
   * the stored row of its seq, or deletes it) and schedules[0..sn) (by
   * id). Returns once the group is durable. On failure nothing of the
   * group may count as stored; the engine degrades (/healthz answers 503,
   * execute answers the code) and calls persist again with the group every
   * 100 ms until it succeeds. ATH_ENOSPC: the disk is full; ATH_EIO: a
   * write or sync failed and the store may not hold what the provider
   * believes (reopen is called before the next persist); any other code:
   * retried the same way. Required. */
  int (*persist)(void* store, const ath_store_task_t* tasks, size_t n,
                 const ath_store_schedule_t* schedules, size_t sn, char* err, size_t errlen);
  /* Closes the store (after the final persist). Required. */
  void (*close)(void* store);
  /* Optional (NULL: nothing is pruned). Deletes terminal tasks, except
   * quarantined ones, completed before `before_ms` (retention). */
  int (*prune)(void* store, int64_t before_ms, char* err, size_t errlen);
  /* Optional, both or neither. Reads of committed state, from any thread,
   * concurrently with persist and each other. With them a terminal task
   * leaves RAM once committed and is read back from the store; without
   * them terminal tasks stay in RAM up to retain_terminal, as in memory
   * mode. They serve tasks that left RAM, which are finished: they need
   * to see finished rows only. get calls cb with finished task `id`'s row
   * (the newest by seq) or returns ATH_ENOTFOUND; query calls cb for the
   * finished rows matching q, in its order, at most q->limit. */
  int (*get)(void* store, const char* id, ath_store_task_cb cb, void* cbud, char* err,
             size_t errlen);
  int (*query)(void* store, const ath_store_query_t* q, ath_store_task_cb cb, void* cbud,
               char* err, size_t errlen);
  /* Optional (NULL: a persist of nothing). Whether a degraded store takes
   * writes again, when nothing is queued to retry. */
  int (*probe)(void* store, char* err, size_t errlen);
  /* Optional (NULL: nothing to do). After ATH_EIO, before the next
   * persist: drop caches and connections and verify the store. ATH_ESTORE
   * means it is broken: the world then takes no more writes until
   * restarted; other codes are retried. */
  int (*reopen)(void* store, char* err, size_t errlen);
};

/* The built-in SQLite store (<persistencePath>/athena.db), the default. */
ATH_EXTERN const ath_store_provider_t* ath_sqlite_store(void);

/* -------------------------------------------------------------- event sinks */

/* An event sink receives the events webhooks POST (SEMANTICS §15:
 * task.completed, task.failed, task.retrying, task.quarantined,
 * task.cancelled, schedule.fired, worker.lost), each as the webhook's JSON
 * body {"id","event","at","data"}, on a thread of its own (the event
 * thread), one event at a time. The engine never waits for it: events
 * queue in a bounded outbox (10,000; past it the oldest is dropped and
 * counted). An event that fails is tried again after 1 s, 2 s, 4 s and
 * 8 s, then dropped with a warning in the log; order is not guaranteed.
 * Fill with zeros, then set size = sizeof(ath_event_sink_t). */
struct ath_event_sink_s {
  size_t size;
  void* ud;
  /* Delivers one event (json[0..len), NUL-terminated). Returns 0, or an
   * ATH_E* code with a message in err: the event is retried. NULL when
   * the world starts: no events are made. */
  int (*deliver)(void* ud, const char* json, size_t len, char* err, size_t errlen);
  /* Optional: called on the event thread after its last delivery. */
  void (*close)(void* ud);
};

/* -------------------------------------------------------------- authorizers */

/* One request to the HTTP surface, as an authorizer sees it. Strings are
 * NUL-terminated and borrowed for the call. */
typedef struct {
  const char* surface;   /* "gateway" or "operations" */
  const char* method;    /* "GET", "POST", ... */
  const char* path;      /* as sent, with its query string */
  const char* key;       /* the name of the key presented, or NULL (none needed) */
  const char* ip;        /* the client's address (trusted proxies applied) */
  const char* operation; /* gateway: "fetch", "insert", "update", "delete", ...;
                          * operations: "read" or "write" */
} ath_auth_request_t;

/* An authorizer decides, after the key checks passed, whether a request
 * to the gateway's routes or the operations surface (/metrics and /api/...) is
 * served; /healthz and the dashboard page (which holds no data) are not
 * asked about. It can only deny further. It runs on the HTTP thread that
 * serves the request, possibly on several at once, and that thread waits
 * for it: keep it fast. Fill with zeros, then set size. */
struct ath_authorizer_s {
  size_t size;  /* sizeof(ath_authorizer_t) */
  void* ud;
  /* Returns 1: allowed; 0: denied (403, the reason in why); anything else
   * is an error, and the request is denied too (fail closed). */
  int (*authorize)(void* ud, const ath_auth_request_t* r, char* why, size_t whylen);
};

/* ----------------------------------------------------------------- metrics */

typedef struct {
  char name[65];
  int64_t depth;          /* ready tasks */
  int64_t running;        /* tasks holding slots */
  int64_t oldest_age_ms;  /* now - readyAt of the oldest ready task; 0 if none */
} ath_queue_info_t;

typedef struct {
  /* Set by the caller: room for per-queue figures (may be NULL/0). */
  ath_queue_info_t* queues;
  int queues_cap;
  int nqueues;            /* set: how many queues there are */
  int64_t uptime_ms;
  int workers_total, workers_idle, workers_busy;
  int64_t queued, scheduled, running;
  int64_t completed, failed, retried, cancelled, quarantined;
  int64_t resident;       /* tasks held in RAM: live ones, dead letters and
                           * finished ones not yet committed or (memory mode)
                           * retained */
  int64_t per_second, per_minute, per_hour;
  double workload;
  double wait_p50, wait_p95, wait_p99; /* ms */
  double run_p50, run_p95, run_p99;    /* ms */
} ath_metrics_t;

/* Fills *m with the world's current metrics (SEMANTICS §14.1), all read in
 * one critical section, so they are consistent with each other. Set
 * m->queues and m->queues_cap first to receive per-queue figures. */
ATH_EXTERN void ath_world_metrics(ath_world_t* w, ath_metrics_t* m);

typedef struct {
  int id;            /* n of "worker-<n>" */
  const char* status;/* static string: starting|idle|busy|stopping|stopped */
  char task_queue[65];
  int concurrency;
  int running;
  int64_t last_heartbeat; /* epoch ms */
  int64_t tasks_completed, tasks_failed;
  int64_t memory_kb;
} ath_worker_info_t;

/* Copies up to `cap` workers' info into `out`; returns how many there are. */
ATH_EXTERN int ath_world_workers(ath_world_t* w, ath_worker_info_t* out, int cap);

/* Stores up to `cap` references to the tasks worker `worker_id` is running
 * (release each with ath_task_release); returns how many were stored. */
ATH_EXTERN int ath_world_worker_tasks(ath_world_t* w, int worker_id,
                                      ath_task_t** out, int cap);

#ifdef __cplusplus
}
#endif
#endif /* ATHENA_H */
