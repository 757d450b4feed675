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
typedef struct ath_queue_provider_s ath_queue_provider_t;
typedef struct ath_queue_conn_s ath_queue_conn_t;
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
  const char* backend_url;    /* postgres://... or a libpq conninfo; with `queue`,
                               * the location that provider opens */
  const char* backend_schema; /* NULL: "athena" */
  const char* node_id;        /* NULL: "<hostname>:<pid>" */
  int64_t poll_interval_ms;   /* claims and result checks without NOTIFY (1000) */
  int backend_poll_only;      /* 1: send and use no NOTIFY (poll only) */
  /* The shared queue's provider (the queue providers section below);
   * NULL: ath_postgres_queue(). Needs backend_url. Borrowed: it must
   * outlive the world. */
  const ath_queue_provider_t* queue;
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
 * back at start; it does not claim or hand out tasks (a queue shared by
 * several processes is a queue provider's: the queue providers section).
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
  uint64_t parent_seq;      /* persist: the owning workflow's seq (with parent_id) */
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
  int has_parent_seq;    /* 1: parent_seq is parent_id's seq (the engine knows
                          * it: the workflow is in RAM); 0: look it up */
  uint64_t parent_seq;
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

/* ---------------------------------------------------------- queue providers */

/* A queue provider holds a queue that several athena processes (nodes)
 * share: tasks are inserted there, and each node claims rows under a lease,
 * runs them and writes their outcomes back, fenced, so a node that lost its
 * lease can change nothing (SEMANTICS across hosts; the PostgreSQL backend,
 * docs/backend-postgres.md, is one: ath_postgres_queue()). A host passes one
 * as ath_world_config_t.queue with backend_url, the location its open gets.
 * The engine drives it from its backend loop (docs/c-api.md "Queue
 * providers" lists what each operation must guarantee): the store thread
 * batches inserts, outcomes, heartbeats and claims into one `cycle`; the
 * leader's connection rescues expired nodes' tasks and fires schedules;
 * reads serve handle:result(), queryTasks and cancel from any node.
 *
 * Rows and lists below are plain structs; strings a provider returns live
 * until the matching *_free call. Times are epoch milliseconds of the
 * provider's clock (`now`), shared by every node. Statuses are
 * ath_status_t. */

typedef struct {
  const char* node_id;       /* configured nodeId */
  const char* host;          /* NULL: gethostname */
  int pid;                   /* 0: getpid() */
  const char* const* queues; /* NULL-terminated; the queues it claims */
  int slots;
  int64_t ttl_ms;      /* heartbeatTimeout: the lease lasts this long per renew */
  int64_t interval_ms; /* heartbeatInterval: how often the owner renews */
  int leader;          /* the leader's control incarnation (not listed as a node) */
} ath_queue_node_t;

/* A node's lease as its owner tracks it. Monotonic times (ns) come from the
 * caller so tests can pass their own. */
typedef struct {
  int64_t incarnation;  /* tasks.lease of everything this node holds */
  int64_t ttl_ms, interval_ms;
  uint64_t renewed_ns;  /* monotonic time at which the last successful renew was sent */
  int64_t expires_at;   /* database time the lease lasts until */
  int lost;             /* the database said it expired: fenced for good */
} ath_queue_lease_t;

/* Statuses are ath_status_t (0 pending, 1 scheduled, 2 running, 3 retrying,
 * 5 completed, 6 failed, 7 cancelled, 8 quarantined, ...). */
typedef struct {
  const char* id;        /* unique; an existing id is not inserted again */
  const char* name;
  const char* queue;
  const char* input;     /* JSON text, stored verbatim */
  const char* parent_id; /* NULL: none */
  int kind;              /* 0 activity, 1 workflow */
  int priority, max_attempts, strategy;
  int64_t delay_ms;       /* > 0: scheduled (due later), else ready now */
  int64_t close_after_ms; /* > 0: scheduleToClose */
  int notify;             /* NOTIFY athena_done when it ends */
  const char* call;       /* per-call limits (ctx:run's, JSON as
                           * ath_store_task_t.call), or NULL */
} ath_queue_insert_t;

typedef struct {
  int64_t seq;
  int created;         /* 0: the id existed (idempotent insert) */
  int64_t created_at;
  char* existing_name; /* created == 0: the existing task's name (malloc'd) */
} ath_queue_inserted_t;

/* One attempt's outcome, fenced by (seq, lease, attempt). */
typedef struct {
  int64_t seq;
  int attempt;         /* the claimed attempt */
  int status;          /* >= 5 terminal; 3 retrying / 1 scheduled: due after
                          delay_ms (then stage); 0: returned unrun
                          (attempt not counted, back in ready) */
  int64_t delay_ms;
  const char* result;  /* JSON text or NULL */
  const char* error;   /* JSON text or NULL (keeps the previous error) */
  int worker_id;
} ath_queue_outcome_t;

/* The latest ctx:heartbeat of an attempt a node leases (details and time),
 * fenced by (seq, lease, attempt) and a running row: the next attempt, on
 * any node, starts from them (ctx.lastHeartbeat). */
typedef struct {
  int64_t seq;
  int attempt;
  const char* details; /* JSON text or NULL (a heartbeat without details) */
  int64_t at;          /* wall ms of the heartbeat */
} ath_queue_beat_t;

/* A claimed (or rescued) task. Strings point into the result and live until
 * tasks_free; NULL for SQL NULL. */
typedef struct {
  int64_t seq;
  const char* id;
  const char* name;
  const char* queue;
  int kind, status, priority, attempt, max_attempts, strategy, rescues, wake, hist_n;
  int resumed; /* a workflow resumption (attempt unchanged) */
  int64_t created_at, ready_at, started_at, close_by, cancel_at, last_hb; /* -1: NULL */
  const char* parent_id;
  const char* input;
  const char* error;
  const char* hb;
  const char* history; /* workflows: the events, separated by ATH_STORE_EVENT_SEP */
  const char* call;    /* per-call limits (JSON), NULL: the definition's */
  const char* result;  /* reads only (read, get) */
  int64_t completed_at; /* reads only; -1: NULL */
  int64_t scheduled_at;
  /* claims of a workflow: what its last park waits for (wait_kind 0: none;
   * ath_queue_park_t's kinds) and, when that is a task, its row's outcome
   * (wait_status -1: no such row) */
  int wait_kind, wait_status;
  int64_t wait_seq;
  const char* wait_task;
  const char* wait_result;
  const char* wait_error;
} ath_queue_task_t;

typedef struct {
  ath_queue_task_t* rows;
  size_t n;
  void* res_; /* private */
} ath_queue_tasks_t;

/* Workflows (distributed.md §3.11): events appended to a history, fenced
 * by the lease and the count stored so far (events[i] becomes event
 * from + i of workflow `seq`). */
typedef struct {
  int64_t seq;
  int from;                  /* the events the row holds already (hist_n) */
  const char* const* events; /* JSON texts */
  size_t n;
} ath_queue_append_t;

/* The row's wait_kind after a child failed under cascade (§8): wait_task
 * names that child, and whoever claims the workflow fails it. */
#define ATH_QUEUE_WAIT_CASCADE 5
/* ... and after its run's deadline passed while parked (park.run_by): its
 * claimer times the run out (ETIMEDOUT, then its strategy). */
#define ATH_QUEUE_WAIT_TIMEOUT 6

/* A workflow segment parked: the row leaves its lease and waits for task
 * wait_task (kinds 1 activity, 2 child, 3 compensation) or for delay_ms
 * (kind 4, a timer: staged like a retry). It is made ready at once when
 * the awaited task already ended or any child ended since the claim that
 * returned `wake_seen` (no lost wake-up). status/error: the run's state
 * (running or compensating, with the failure it compensates). */
typedef struct {
  int64_t seq;
  int attempt;
  int status;
  const char* error;     /* NULL: unchanged */
  int wait_kind;
  const char* wait_task; /* kinds 1-3 */
  int64_t wait_seq;
  int64_t delay_ms;      /* kind 4 */
  int wake_seen;
  int64_t run_by;        /* wall ms the run's timeout ends, parked time
                          * counted (0: none): past it, `expire` makes the
                          * row ready, marked ATH_QUEUE_WAIT_TIMEOUT */
} ath_queue_park_t;

typedef struct {
  const char* queue;
  int n;                  /* at most this many, priority DESC, ready_at, seq */
  ath_queue_tasks_t* out;   /* receives the rows */
} ath_queue_claim_t;

/* A webhook event of a finish in the same cycle: stored in the outbox only
 * when that finish applied (the row was written by this transaction with
 * this status and attempt), so a fenced-out node never sends it. */
typedef struct ath_queue_hook_s {
  int64_t seq;          /* the finished task */
  int status, attempt;  /* what its finish writes */
  int kind;             /* the engine's event kind (ATH_EV_*) */
  const char* delivery; /* the delivery id (X-Athena-Delivery) */
  int64_t at;           /* wall ms of the event */
  const char* body;     /* the whole JSON body */
} ath_queue_hook_t;

/* An outbox row handed to this node (hooks_adopt). */
typedef struct {
  int64_t id, at;
  int kind;
  char* delivery;
  char* body;
} ath_queue_outbox_t;

/* One cycle of the backend loop in one round trip (libpq pipeline mode):
 * heartbeats, inserts and finishes commit together (one transaction, with
 * the NOTIFYs of what they made ready), then each claim commits on its own; with
 * one_commit, everything is one transaction (one commit per cycle). A
 * failing part aborts what follows it. On error, `committed` says whether
 * the write part committed (then `inserted` / `applied` are valid and
 * inserted must still be cleared). Claim outputs are always the caller's to
 * free: a claim that committed before a later one failed keeps its rows
 * (they are leased); others are empty. Any part may be empty. */
typedef struct {
  const ath_queue_beat_t* beats;    /* written first (before the finishes) */
  size_t n_beats;
  uint8_t* beat_applied;          /* n_beats flags: 0 = fenced out (the attempt is
                                   * not this lease's, or no longer running) */
  const ath_queue_insert_t* inserts;
  size_t n_inserts;
  ath_queue_inserted_t* inserted;   /* n_inserts rows, in input order */
  const ath_queue_outcome_t* outcomes;
  size_t n_outcomes;
  uint8_t* applied;               /* n_outcomes flags: 0 = fenced out, discard */
  int64_t lease;                  /* the incarnation claiming and finishing */
  const ath_queue_claim_t* claims;
  size_t n_claims;
  int one_commit;                 /* claims in the writes' transaction */
  int committed;                  /* out: the inserts and finishes committed */
  /* workflows: appends go before the finishes, parks and requeues after */
  const ath_queue_append_t* appends;
  size_t n_appends;
  uint8_t* appended;              /* n_appends flags: 0 = fenced out */
  const ath_queue_park_t* parks;
  size_t n_parks;
  uint8_t* parked;                /* n_parks flags: 0 = fenced out */
  const int64_t* requeues;        /* workflow segments leased by `lease`, back
                                   * to ready as resumptions (same run) */
  size_t n_requeues;
  /* webhook events of this cycle's finishes, stored in the outbox in the
   * same transaction (at-least-once delivery across a crash) */
  const struct ath_queue_hook_s* hooks;
  size_t n_hooks;
  int64_t* hook_ids;              /* n_hooks: the outbox row's id, 0 when its
                                   * finish was fenced out (never sent) */
  int64_t hook_owner;             /* the rows' owner; 0: lease; -1: none (the
                                   * next adoption by any node sends them) */
  const int64_t* kids;            /* workflows that ended cancelled or by a
                                   * cascade (finished before, in this cycle or
                                   * earlier): their unfinished children are
                                   * cancelled (a parked child workflow is made
                                   * ready with cancel_at, for its claimer) */
  size_t n_kids;
} ath_queue_cycle_t;

/* A schedule as a node registers it (distributed.md §3.10). The task
 * fields are the effective ones (what the fired task gets). */
typedef struct {
  const char* id;
  const char* name;
  const char* input;      /* JSON text */
  const char* cron;       /* NULL: one-off at once_at */
  const char* queue;      /* the task queue of its tasks */
  const char* definition; /* hash of what defines it: unchanged = left alone */
  int64_t once_at;
  int64_t next_ms;        /* the first occurrence (0: none) */
  int local_tz, catch_up, overlap_skip;
  int priority, strategy, max_attempts;
  int64_t close_after_ms; /* > 0: scheduleToClose of its tasks */
} ath_queue_schedule_t;

/* One occurrence of a schedule (the leader's fire). */
typedef struct {
  const char* id;
  int64_t expect; /* the row's next_ms now: the compare-and-set key */
  int64_t at;     /* the occurrence fired: task "<id>@<at>" (one-off: "<id>") */
  int64_t next;   /* next_ms afterwards (0: none left; a one-off's row is deleted) */
  int fire;       /* 0: only advance (catch-up "none") */
  int64_t skip;   /* added to skipped (occurrences dropped by catch-up "all") */
} ath_queue_fire_t;

/* What one fire did (the three answers of a fire). */
typedef struct {
  int advanced, created, skipped;
} ath_queue_fired_t;

#define ATH_QUEUE_FIRE_MAX 200 /* occurrences per schedule_fire_many call */

/* A stored schedule. Strings point into the result (NULL for SQL NULL);
 * times -1 for NULL. */
typedef struct {
  const char* id;
  const char* name;
  const char* input;
  const char* cron;
  const char* queue;
  const char* last_task;
  int64_t once_at, next_ms, last_ms, total, skipped, close_after_ms;
  int local_tz, catch_up, overlap_skip, paused, priority, strategy, max_attempts;
} ath_queue_sched_row_t;

typedef struct {
  ath_queue_sched_row_t* rows;
  size_t n;
  int64_t now; /* the database's time of the read (-1 when no row) */
  void* res_;  /* private */
} ath_queue_scheds_t;

/* A read of task rows (world:queryTasks, children): every filter set is
 * applied; the rows come in its order, at most `limit`. */
typedef struct {
  unsigned status_mask;  /* 1 << status of the statuses wanted; 0: any */
  const char* name;      /* exact task name, or NULL */
  const char* parent_id; /* owning workflow, or NULL */
  int64_t since, until;  /* inclusive bounds on created_at; 0: none */
  int64_t limit;         /* > 0 */
  int by_seq;            /* 1: seq order (creation), after after_seq; 0: newest first
                          * (created_at DESC, id) */
  int64_t after_seq;
} ath_queue_query_t;

/* What the cluster holds now, per queue (getMetrics().cluster, /metrics). */
typedef struct {
  char* queue;
  int64_t depth;         /* in ready */
  int64_t oldest_age_ms; /* of the oldest in ready (database clock), 0: none */
  int64_t scheduled;     /* waiting for a time: scheduled, retrying (due_at) */
  int64_t running;       /* leased and running (claimed by a node: running or buffered there) */
} ath_queue_qcount_t;

typedef struct {
  int64_t queued, scheduled, running; /* sums over the queues */
  int64_t nodes;                      /* worker nodes whose lease is alive */
  char* leader;                       /* nodeId of the live leader, NULL: none */
  int64_t completed_window;           /* tasks ended in the last ATH_QUEUE_RATE_WINDOW_MS */
  double start_latency_ms[3];         /* of those: ready -> claim, p50 / p95 / p99 (0: none) */
  ath_queue_qcount_t* queues;           /* by name */
  size_t nqueues;
} ath_queue_counts_t;

#define ATH_QUEUE_RATE_WINDOW_MS 10000

/* A notification heard on a connection (notifies). */
typedef void (*ath_queue_notify_cb)(const char* channel, const char* payload, void* ud);

/* A connection: each provider's own struct starts with this one (as
 * sqlite3_file starts every VFS's file), so the engine finds the
 * operations from any connection it opened. One thread uses a connection
 * at a time; the engine opens several (its backend loop's writer, the
 * leader's, a listener, a reader for other threads). */
struct ath_queue_conn_s {
  const ath_queue_provider_t* provider;
};

/* The provider. Fill with zeros, set size = sizeof(ath_queue_provider_t)
 * (fields added later go at the end; the engine reads only what size
 * covers), then the operations. Every operation but notifies may block its
 * thread (a network round trip). Errors: 0, or an ATH_E* code (ATH_ESTORE:
 * the store refused or the connection broke; errmsg and sqlstate tell
 * which; a sqlstate starting with "08" means the connection broke and
 * `reset` is called before its next use). Operations marked optional may
 * be NULL: the feature named is then unavailable (ATH_ENOSYS) or skipped. */
struct ath_queue_provider_s {
  size_t size;
  const char* name; /* for logs and errors: "postgres" */
  void* ud;         /* passed to open */
  /* --- connections (required) */
  /* Opens a connection to `location` (backend_url) in namespace `schema`
   * (NULL: the provider's default); notify = 0: send no notifications (a
   * poll-only cluster). Sets *out (a struct starting with
   * ath_queue_conn_t, provider set) or returns an error with *out NULL. */
  int (*open)(void* ud, const char* location, const char* schema, int notify, ath_queue_conn_t** out,
              char* err, size_t errlen);
  /* Reconnects after a broken connection (sqlstate "08..."); session state
   * (listens, the leader and node locks) must be taken again by the engine,
   * except the node lock, which reset takes again itself (ATH_EBUSY: another
   * process took it meanwhile). */
  int (*reset)(ath_queue_conn_t* c);
  void (*close)(ath_queue_conn_t* c); /* NULL ok; ends its locks and listens */
  const char* (*errmsg)(const ath_queue_conn_t* c);  /* the last error, "" none */
  const char* (*sqlstate)(const ath_queue_conn_t* c);/* its code, "" none */
  /* Optional: brings the store to the provider's current layout (every
   * node calls it at start; concurrent callers must be safe). *version:
   * the layout found before (0: none). */
  int (*migrate)(ath_queue_conn_t* c, int* version);
  /* --- the node lease (required) */
  /* A new incarnation of n, unique forever, leased for n->ttl_ms. */
  int (*node_register)(ath_queue_conn_t* c, const ath_queue_node_t* n, uint64_t now_ns,
                       ath_queue_lease_t* lease);
  /* Renews the lease (metrics: JSON text or NULL, kept with it);
   * ATH_EWORKERLOST when it had expired (lease->lost = 1). */
  int (*node_renew)(ath_queue_conn_t* c, ath_queue_lease_t* lease, uint64_t now_ns, const char* metrics);
  /* At shutdown: the lease expires now. */
  int (*node_release)(ath_queue_conn_t* c, ath_queue_lease_t* lease);
  /* Optional: a session lock of node_id (*held = 0: another live process
   * has that nodeId; the engine then fails with ATH_EBUSY). */
  int (*node_lock)(ath_queue_conn_t* c, const char* node_id, int* held);
  /* --- the work (required) */
  /* One batch, as ath_queue_cycle_t says: heartbeats, inserts (an id that
   * exists is not inserted again) and outcomes, each fenced by (seq,
   * x->lease, attempt) on a running row (applied[i] = 0: fenced out,
   * changed nothing), then the claims (unleased, unfinished, due rows of
   * the queue, highest priority, then ready_at, then seq, leased to
   * x->lease with attempt + 1). Workflow parts (appends, parks, requeues,
   * kids) come only with wf_requeue/wf_take set, hooks only with the
   * outbox group. */
  int (*cycle)(ath_queue_conn_t* c, ath_queue_cycle_t* x);
  /* Makes due delayed and retrying rows ready: seqs[0..n), or (seqs NULL)
   * every row due for more than late_ms, at most limit. */
  int (*stage)(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int64_t late_ms, int limit,
               int* staged);
  /* The leader's: leases to `leader` the rows of expired incarnations (at
   * most limit; rescues + 1), returned for the engine to decide and finish
   * through cycle; forgets nodes expired for more than grace_ms. */
  int (*rescue)(ath_queue_conn_t* c, int64_t leader, int limit, int64_t grace_ms, ath_queue_tasks_t* out);
  /* A new incarnation of node_id takes the rows of its earlier ones. */
  int (*take_over)(ath_queue_conn_t* c, const char* node_id, int64_t incarnation, ath_queue_tasks_t* out);
  /* The rows `lease` holds (after a lost answer). */
  int (*leased)(ath_queue_conn_t* c, int64_t lease, ath_queue_tasks_t* out);
  /* The leader lock (*held = 1 when this connection holds it), and giving
   * it up (optional: NULL closes the connection instead). */
  int (*leader_try)(ath_queue_conn_t* c, int* held);
  int (*leader_resign)(ath_queue_conn_t* c);
  int (*now)(ath_queue_conn_t* c, int64_t* now); /* the shared clock */
  /* --- reads and cancel (required) */
  int (*read)(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int ended_only, ath_queue_tasks_t* out);
  int (*get)(ath_queue_conn_t* c, const char* id, ath_queue_tasks_t* out);
  /* *how: 1 cancelled now (unleased), 2 accepted (the holder hears of it
   * through `cancelled`), 3 accepted for a parked workflow, 0 refused. */
  int (*cancel)(ath_queue_conn_t* c, int64_t seq, int* how);
  int (*cancelled)(ath_queue_conn_t* c, int64_t lease, int64_t** seqs, size_t* n); /* malloc'd */
  void (*tasks_free)(ath_queue_tasks_t* t);
  void (*inserted_clear)(ath_queue_inserted_t* r, size_t n);
  /* Optional: world:queryTasks across the cluster, dead letters. */
  int (*query)(ath_queue_conn_t* c, const ath_queue_query_t* f, ath_queue_tasks_t* out);
  int (*requeue)(ath_queue_conn_t* c, const char* id, int64_t* seq, int* status, int* how);
  int (*purge)(ath_queue_conn_t* c, const char* id, int64_t* seq, int* status, int* how);
  /* --- optional groups */
  /* Notifications (NULL: poll only). listen subscribes; notifies reads
   * without blocking; socket is what the engine polls (-1: broken). */
  int (*listen)(ath_queue_conn_t* c, const char* const* channels);
  int (*notifies)(ath_queue_conn_t* c, ath_queue_notify_cb cb, void* ud);
  int (*socket)(const ath_queue_conn_t* c);
  /* Workflows across nodes (NULL: workflows are refused with ATH_ENOSYS). */
  int (*wf_requeue)(ath_queue_conn_t* c, int64_t lease, const int64_t* seqs, size_t n);
  int (*wf_take)(ath_queue_conn_t* c, int64_t lease, const int64_t* seqs, size_t n, int by_parent,
                 ath_queue_tasks_t* out);
  /* Schedules fired once cluster-wide (NULL: schedules are refused). */
  int (*schedule_put)(ath_queue_conn_t* c, const ath_queue_schedule_t* s, int* changed);
  int (*schedule_fire_many)(ath_queue_conn_t* c, const ath_queue_fire_t* f, size_t n, ath_queue_fired_t* out);
  int (*schedules)(ath_queue_conn_t* c, const char* id, ath_queue_scheds_t* out);
  int (*schedules_due)(ath_queue_conn_t* c, int limit, ath_queue_scheds_t* out);
  int (*schedule_pause)(ath_queue_conn_t* c, const char* id, int* found);
  int (*schedule_resume)(ath_queue_conn_t* c, const char* id, int64_t next_ms, int* resumed);
  int (*schedule_delete)(ath_queue_conn_t* c, const char* id, int* found);
  void (*scheds_free)(ath_queue_scheds_t* s);
  /* Webhooks stored with their finish, delivered at least once (NULL:
   * sent from memory, at most once). */
  int (*hooks_done)(ath_queue_conn_t* c, const int64_t* ids, size_t n);
  int (*hooks_adopt)(ath_queue_conn_t* c, int64_t owner, int limit, ath_queue_outbox_t** out, size_t* n);
  void (*outbox_free)(ath_queue_outbox_t* rows, size_t n);
  /* Cluster views (NULL: getMetrics().cluster and getNodes are empty). */
  int (*counts)(ath_queue_conn_t* c, ath_queue_counts_t* out);
  void (*counts_free)(ath_queue_counts_t* out);
  int (*nodes)(ath_queue_conn_t* c, char** json); /* a JSON array, malloc'd */
  /* Housekeeping the leader runs every few seconds (NULL: none), and the
   * transactions run again after a conflict (NULL: 0). */
  int (*maintain)(ath_queue_conn_t* c);
  int64_t (*retries)(const ath_queue_conn_t* c);
  /* Optional (NULL: scheduleToClose and a workflow run's timeout are
   * enforced only on claimed tasks): the leader's; makes parked workflow
   * runs past their park's run_by ready, marked ATH_QUEUE_WAIT_TIMEOUT,
   * and leases to `leader` at most `limit` activities past their
   * scheduleToClose deadline that nobody leases (queued, delayed, waiting
   * for a retry; no longer claimable), for the engine to fail with
   * ETIMEDOUT through cycle. */
  int (*expire)(ath_queue_conn_t* c, int64_t leader, int limit, ath_queue_tasks_t* out);
  /* Optional (NULL: finished tasks are kept): the leader's retention pass;
   * deletes at most `limit` unleased finished tasks, dead letters aside,
   * completed more than retention_ms ago (the shared clock), and their
   * history; *deleted gets the count. */
  int (*prune)(ath_queue_conn_t* c, int64_t retention_ms, int limit, int* deleted);
};

/* The PostgreSQL queue provider (docs/backend-postgres.md): what
 * backend_url = "postgres://..." uses when ath_world_config_t.queue is NULL. */
ATH_EXTERN const ath_queue_provider_t* ath_postgres_queue(void);

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
