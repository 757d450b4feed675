/* What the bindings see of the engine's runtime: the JSON codec of
 * payloads, the task side of a worker (sleeps, waits, heartbeats, I/O that
 * yields, workflow commands), and the few world calls the Lua API needs
 * beyond athena.h. The bindings include this and athena.h, never the
 * runtime's own structs (internal.h). Not installed. */
#ifndef ATHENA_RUNTIME_H
#define ATHENA_RUNTIME_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include <uv.h>
#include "athena.h"
#include "log.h"
#include "util.h"

typedef struct ath_worker_s ath_worker_t;
typedef struct ath_slot_s ath_slot_t;

/* lua_json.c -------------------------------------------------------------- */

/* The largest payload (JSON bytes) a task holds: its lengths are 32-bit. */
#define ATH_PAYLOAD_MAX ((size_t)UINT32_MAX)

/* Encodes the Lua value at `idx` as JSON (SEMANTICS §1.3), appending to
 * `out`. Never raises and never calls metamethods. On failure returns
 * ATH_EINVAL (or ATH_ENOMEM), leaves out->len as it was, and writes into
 * `err` a message that names the path from `root`, e.g.
 * "input.user.cb: function not serializable" or "cycle at input.a.b".
 * Thread: the thread that owns L. */
int ath__json_encode(lua_State* L, int idx, const char* root, ath_buf_t* out,
                     char* err, size_t errlen);

/* [-0, +1, m] Decodes `len` bytes of JSON and pushes the value (null at top
 * level: nil; in arrays: holes; in objects: the key is absent). Integers
 * become Lua integers, other numbers floats. Text that is not strict UTF-8
 * or holds a lone surrogate escape ("\ud800") is invalid (utf8.h: the
 * gateway's request tree accepts the same). Returns 0, or ATH_EINVAL and
 * pushes an error message string instead of a value. Raises only on memory
 * errors, leaking nothing. */
int ath__json_decode(lua_State* L, const char* json, size_t len);
/* The same, with JSON null inside arrays and objects kept as athena.null (a
 * NULL light userdata) when keep_nulls is set. */
int ath__json_decode_nulls(lua_State* L, const char* json, size_t len, int keep_nulls);

/* Formats a finite double in the shortest text that reads back exactly
 * (with a '.' or an exponent). Returns the length written into buf. */
size_t ath__json_fmt_float(char* buf, size_t cap, double d);
/* Appends n bytes (any bytes: NULs are escaped, bytes that are not UTF-8
 * become U+FFFD) as one JSON string literal. Returns 0 or ATH_ENOMEM. */
int ath__json_put_text(ath_buf_t* b, const char* s, size_t n);

/* worker.c: the task side --------------------------------------------------- */

/* Registry key of the table mapping activity names to handlers in a state
 * (filled by athena.activity; read by workers when they bind). */
extern const char ath__defs_key;

/* Returns the worker that owns L's state, or NULL in a control state. */
ath_worker_t* ath__worker_of(lua_State* L);
/* Whether the worker is still loading its code (definition mode). */
int ath__worker_defining(const ath_worker_t* wk);
/* Ends a worker's definition phase from world:start() in its entry script.
 * Does not return: yields the entry coroutine, or raises a sentinel the
 * worker recognises when the call site cannot yield. */
int ath__worker_end_definitions(lua_State* L);
ath_world_t* ath__worker_world(const ath_worker_t* wk);
/* Whether its world commits each workflow command before the workflow
 * goes on (file mode, SEMANTICS §9.2). */
int ath__worker_durable(const ath_worker_t* wk);

/* Suspends the calling task for `ms` on its worker's loop. Returns -1 when
 * L is not a task's own coroutine (the caller then blocks instead);
 * otherwise yields and, when resumed, returns to the caller's caller (or
 * raises the task's interrupt: cancel, shutdown). */
int ath__task_sleep(lua_State* L, int64_t ms);
/* Suspends the calling task until `t` is terminal or `timeout_ms` passes
 * (< 0: no limit), then continues in `k`, where ath__task_wait_timed_out
 * tells which. Returns -1 when L is not a task's own coroutine (the caller
 * blocks), 0 when `t` is already terminal (no yield); otherwise does not
 * return. */
int ath__task_wait(lua_State* L, ath_task_t* t, int64_t timeout_ms, lua_KFunction k,
                   lua_KContext kctx);
int ath__task_wait_timed_out(lua_State* L);

/* Waits until store generation `gen` of `w` is durable (file mode). In a
 * task of `w` the task yields meanwhile (the worker's loop goes on) and
 * continues in `k` (NULL: returns the 1 value on top of the stack); an
 * interrupt (timeout, cancel) while waiting is raised. Anywhere else, or
 * when there is nothing to wait for, returns 0 (after blocking the thread
 * if need be) and the caller goes on. */
int ath__task_await_commit(lua_State* L, ath_world_t* w, uint64_t gen, lua_KFunction k);
/* The same wait for the enqueues of one execute, tasks[0..n): it ends
 * early when they are withdrawn (the commit failed), which `k` (or, when
 * this returns without yielding, the caller) learns from
 * ath__store_enqueue_result. */
int ath__task_await_enqueue(lua_State* L, ath_world_t* w, uint64_t gen, ath_task_t* const* tasks,
                            size_t n, lua_KFunction k);
/* The store generation that makes t's latest change durable (file mode),
 * or 0. */
uint64_t ath__world_commit_gen(ath_world_t* w, const ath_task_t* t);

/* ath_world_execute without the wait of file mode: *gen is set to the
 * store generation to wait for (ath__task_await_commit), 0 for none. */
int ath__world_execute(ath_world_t* w, const char* name, size_t n, char** payloads,
                       const size_t* lens, const char* const* ids, const ath_exec_opts_t* opts,
                       ath_task_t** out, uint64_t* gen, char* err, size_t errlen);

/* ath__world_execute of one activity that the workflow segment L runs
 * starts and parks on next (ctx:run; memory and hybrid modes: it does not
 * wait for a commit). When the activity is in the queue of the segment's
 * worker, no sleeping worker is woken for it: that worker claims it when
 * it publishes the park if the activity comes next in the queue and it
 * has a free slot, and wakes a worker otherwise (the segment keeps a
 * reference to it until then). */
int ath__task_execute_step(lua_State* L, const char* name, char* payload, size_t len,
                           const ath_exec_opts_t* opts, ath_task_t** out, char* err, size_t errlen);

/* ctx:heartbeat: records `json` (copied) as the running task's latest
 * heartbeat and resets its heartbeat deadline. Raises ECANCELED once a
 * cancel was accepted. Returns -1 outside a task. */
int ath__task_heartbeat(lua_State* L, const char* json, size_t len);
/* A scoped deadline (athena.withRetry's `timeout`) in the calling task:
 * push sets it `ms` from now and returns the previous one in *prev; pop
 * restores *prev and returns 1 if the scope's deadline fired (clearing the
 * interrupt it raised). Both return -1 outside a task's own coroutine. */
int ath__task_scope_push(lua_State* L, int64_t ms, uint64_t* prev);
int ath__task_scope_pop(lua_State* L, uint64_t prev);
/* Whether L runs inside a task whose cancel was accepted. */
int ath__task_cancelled(lua_State* L);

/* Workflow segments (SEMANTICS §9). The running workflow task of L's own
 * coroutine, or NULL (not a task, or an activity). */
ath_task_t* ath__task_workflow(lua_State* L);
/* Ends the calling workflow segment: the workflow parks until `kind`'s
 * outcome for command `seq` is recorded (task `t`, a reference the call
 * takes over; or, for ATH_PARK_TIMER, wall time `at`). Raises the task's
 * interrupt instead when one is due. Does not return. */
int ath__task_park(lua_State* L, int kind, int64_t seq, ath_task_t* t, int64_t at);
/* ath__task_park on activity step t (ctx:run's wfRun): when its coroutine
 * stays cached and resumes with only the step's completion, the park
 * returns the history's length, true and the step's result. */
int ath__task_park_step(lua_State* L, int64_t seq, ath_task_t* t);
/* The task the running workflow segment started last (wfSpawn keeps it,
 * taking over the reference `t`), so that parking on it needs no lookup;
 * ath__task_spawned returns it (the reference) if its id is `id`, else
 * NULL. The slot drops what is left when the segment ends. */
void ath__task_keep_spawned(lua_State* L, ath_task_t* t);
ath_task_t* ath__task_spawned(lua_State* L, const char* id);

/* Records history event `json` (an object) of workflow `t`, whose segment
 * L runs: in memory and hybrid modes it travels with the segment's outcome
 * (the history gets it, in order, when the outcome is published; *gen is
 * 0); in file mode it is appended at once and *gen is the store generation
 * to wait for before the workflow proceeds (§9.2). Returns 0 or ATH_ENOMEM. */
int ath__task_wf_record(lua_State* L, ath_task_t* t, const char* json, size_t len, uint64_t* gen);

/* Records ctx:run's command event for workflow t, as ath__task_wf_record:
 * activity.scheduled{seq, name, taskId, limits (JSON, or NULL: none)}. */
int ath__task_wf_scheduled(lua_State* L, ath_task_t* t, int64_t seq, const char* name,
                           const char* task_id, const char* limits, size_t limits_len, uint64_t* gen);

/* What a workflow segment waits for when it parks (ath__task_park). */
enum { ATH_PARK_NONE = 0, ATH_PARK_ACTIVITY, ATH_PARK_CHILD, ATH_PARK_COMP, ATH_PARK_TIMER };

/* The fields ctx.log writes on every line of a task. */
typedef struct {
  ath_log_t* log;        /* the world's logger */
  const char* id;        /* the task's; valid while the task runs */
  const char* name;
  int attempt;
  int worker_id;
} ath_task_log_t;
/* Fills `out` for the task L runs in. Returns 0, or -1 outside a task. */
int ath__task_log_context(lua_State* L, ath_task_log_t* out);

/* A terminal task's outcome (never changes once terminal: no lock). */
typedef struct {
  const char* result;    /* JSON, or NULL */
  size_t result_len;
  const char* error;     /* the error value's JSON, or NULL */
  size_t error_len;
  int err_code;          /* ATH_E* of the failure, 0 if none */
} ath_task_end_t;
void ath__task_end(const ath_task_t* t, ath_task_end_t* out);
/* The code (ATH_E*) of t's latest failure, 0 if none. */
int ath__task_err_code(ath_world_t* w, const ath_task_t* t);

/* worker.c: other I/O a task waits for (the database) ---------------------- */

/* I/O that someone else drives on the task's worker loop. `abort` runs if
 * the task stops waiting first (cancel, timeout, shutdown): it must stop
 * the I/O so that nothing calls ath__task_io_done for it afterwards. */
typedef struct ath_io_wait_s {
  void (*abort)(struct ath_io_wait_s* io);
  ath_slot_t* slot;      /* the waiting task, NULL when none */
} ath_io_wait_t;
/* The loop of the worker running the task whose own coroutine is L, when L
 * can yield; NULL anywhere else (the caller blocks instead). */
uv_loop_t* ath__task_loop(lua_State* L);
/* Yields the task until ath__task_io_done(io), then continues in k. Call
 * after starting the I/O on ath__task_loop's loop. If the task has an
 * interrupt due, calls io->abort and raises it instead. */
int ath__task_io(lua_State* L, ath_io_wait_t* io, lua_KFunction k, lua_KContext kctx);
/* On the worker's loop: the I/O ended; resumes its task. */
void ath__task_io_done(ath_io_wait_t* io);
/* The running task of L's worker, for ath__task_due; NULL outside tasks. */
ath_slot_t* ath__task_current(lua_State* L);
/* Whether task `s` should stop now (a deadline passed, a cancel past its
 * grace, a shutdown): the count hook's test, for C code that runs long
 * without Lua instructions (an SQLite statement's progress handler). Marks
 * the interrupt, so the task stops at its next yield point or hook. */
int ath__task_due(ath_slot_t* s);

/* world.c ------------------------------------------------------------------- */

/* Sets the package.path and package.cpath worker states get (NULL: Lua's
 * defaults). Before start() only. Returns 0 or ATH_ENOMEM. */
int ath__world_set_paths(ath_world_t* w, const char* path, const char* cpath);

/* Appends one history event (a JSON object) to workflow `t`. Returns 0 or
 * ATH_ENOMEM; *gen gets the store generation that makes it durable, to
 * wait for before the workflow proceeds (0: none, not file mode). */
int ath__world_wf_append(ath_world_t* w, ath_task_t* t, const char* json, size_t len, uint64_t* gen);
/* store.c ------------------------------------------------------------------- */

/* After a file-mode execute's wait (ath__task_await_enqueue): 0 when the
 * enqueues of tasks[0..n) are stored, else the code that withdrew them
 * (ATH_ENOSPC, ATH_EIO, ...) with a message naming the store's error in
 * msg. Lock not held. */
int ath__world_enqueue_error(ath_world_t* w, ath_task_t* const* tasks, size_t n, char* msg,
                             size_t msglen);

/* For the operator commands: */

/* The SQLite store's schema version (what `athena tasks` and friends read). */
extern const int ath__store_schema_version;

/* Takes <dir>/athena.lock (created if missing): an exclusive, non-blocking
 * flock, released by closing *fd_out. Returns 0, ATH_EBUSY while another
 * process or world holds it, or ATH_ESTORE, with err set. The directory
 * must exist. Thread: any. */
int ath__store_lock(const char* dir, int* fd_out, char* err, size_t errlen);
/* The PostgreSQL backend's nodes (storage/store_pg.c) as a JSON array
 * (malloc'd); ATH_EINVAL without that backend. Thread: any. */
int ath__world_nodes(ath_world_t* w, char** json, char* err, size_t errlen);
/* The PostgreSQL backend's cluster counts (getMetrics().cluster) as a JSON
 * object (malloc'd), read from the database at most once a second (then
 * cached); ATH_EINVAL without that backend, ATH_ESTORE when the read
 * failed (logged). Thread: any. */
int ath__world_cluster(ath_world_t* w, char** json, char* err, size_t errlen);
/* The same counts as Prometheus gauges (athena_node_info,
 * athena_cluster_*) appended to b; nothing without the backend. */
void ath__world_cluster_prom(ath_world_t* w, ath_buf_t* b);
/* PostgreSQL backend: adds node="<nodeId>" (escaped) as the first label of
 * every sample line in b (Prometheus text), so each node's own series can
 * be told apart; nothing without the backend. 0 or ATH_ENOMEM (b as it was). */
int ath__world_node_labels(ath_world_t* w, ath_buf_t* b);
/* The PostgreSQL backend: transactions this node ran again after a
 * deadlock (40P01) or a serialization conflict (40001) since its start, or
 * -1 without the backend. Any thread. */
int64_t ath__world_db_retries(ath_world_t* w);

#endif
