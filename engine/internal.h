/* Declarations shared between engine files (ath__ prefix). Not installed. */
#ifndef ATHENA_INTERNAL_H
#define ATHENA_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include <lua.h>
#include "athena.h"

/* util.c ------------------------------------------------------------------ */

/* A growable byte buffer; data is NUL-terminated after every append. */
typedef struct {
  char* data;
  size_t len;
  size_t cap;
} ath_buf_t;

/* Appends `n` bytes. Returns 0 or ATH_ENOMEM (the buffer is unchanged). */
int ath__buf_append(ath_buf_t* b, const char* s, size_t n);
/* Copies n bytes of p and a NUL into new memory; NULL for NULL p or when
 * out of memory. */
char* ath__memdup(const char* p, size_t n);
/* Appends a string literal. */
#define ath__buf_lit(b, lit) ath__buf_append((b), (lit), sizeof(lit) - 1)
/* Appends `s` (UTF-8) as a JSON string literal, quotes included. */
void ath__buf_json_str(ath_buf_t* b, const char* s);
/* Frees the buffer's memory and zeroes it. */
void ath__buf_free(ath_buf_t* b);
/* A copy of a NULL-terminated string array (NULL for NULL, and when out of
 * memory), and its release (NULL is fine). */
char** ath__strv_dup(const char* const* v);
void ath__strv_free(char** v);

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

/* cron.c: see engine/cron.h ----------------------------------------------- */

/* world.c, queue.c, worker.c ---------------------------------------------- */

#include <stdatomic.h>
#include <uv.h>
#include "log.h"

typedef struct ath_queue_s ath_queue_t;
typedef struct ath_worker_s ath_worker_t;
typedef struct ath_slot_s ath_slot_t;
typedef struct ath_waiter_s ath_waiter_t;
typedef struct ath_store_s ath_store_t;
typedef struct ath_store_vt_s ath_store_vt_t;
typedef struct ath_sched_s ath_sched_t;
typedef struct ath_http_s ath_http_t;
typedef struct ath_hook_s ath_hook_t;

/* A world:serve() request, carried out on the engine thread. */
typedef struct {
  const char* host;
  void* opts;            /* ath_serve_opts_t, taken over */
  int port, bound, rc;
  char err[256];
  uv_sem_t done;
} ath_serve_req_t;

/* A registered activity: the ath_activity_t it was registered with, its
 * strings owned. Immutable after start(). */
typedef struct {
  char* name;
  ath_queue_t* queue;
  ath_activity_t a;      /* a.name and a.task_queue are not used */
  char** non_retryable;  /* owned copy of a.non_retryable */
  int ghost;             /* a recovered name nobody registered: never runs */
} ath_def_t;

/* Where a workflow is between its Lua segments (SEMANTICS §9.4). */
enum { ATH_WF_SLOT = 0, ATH_WF_PARKED, ATH_WF_QUEUED, ATH_WF_TIMER,
       ATH_WF_HOME /* queued on its home worker's resumes list */ };
/* What a parked workflow waits for: the event family of its outcome. */
enum { ATH_PARK_NONE = 0, ATH_PARK_ACTIVITY, ATH_PARK_CHILD, ATH_PARK_COMP, ATH_PARK_TIMER };

/* One history event: a JSON object, immutable once made, shared by
 * reference between the workflow, the store and workers (so the history is
 * never copied under the world lock). */
typedef struct {
  atomic_int refs;
  uint32_t len;
  char json[];           /* NUL-terminated */
} ath_wfev_t;

/* A workflow's engine-side state; NULL for activities. Guarded by the
 * world lock. */
typedef struct {
  ath_wfev_t** ev;       /* the history, append-only: ev[0..nev) */
  uint32_t nev, evcap;
  uint32_t stored_n;     /* ev[0..stored_n) are handed to the store */
  uint32_t segs;         /* segments claimed so far (a worker's cached
                          * coroutine is current when it ran the last one) */
  uint32_t park_nev;     /* history length when the last segment parked: a
                          * cached coroutine has seen every event before it
                          * that its index needs (only cancel.requested, which
                          * it ignores, comes from elsewhere meanwhile) */
  struct ath_worker_s* home; /* parked, its coroutine cached there: resumed
                              * there, with only the new events; or NULL */
  int where;             /* ATH_WF_* */
  int resuming;          /* the next claim continues the run: no new attempt */
  int wait_kind;         /* ATH_PARK_*, while parked or on a timer */
  int64_t wait_seq;      /* the awaited command (a compensation's index) */
  struct ath_task_s* wait_task; /* parked on this task's outcome (a reference) */
  int forced;            /* a cascade failed it while a segment ran */
  char* forced_err;      /* the error it ends with then (JSON), owned */
  size_t forced_err_len;
  /* The tasks it owns that are in the world's table, in creation order
   * (weak: each leaves the list as it leaves the table), so nothing scans
   * the table for them; [kids_lo, nkids) may hold NULLs of removed ones.
   * kids_lost: an append failed (no memory), so the list is incomplete. */
  struct ath_task_s** kids;
  uint32_t nkids, kids_cap, kids_lo;
  int kids_lost;
} ath_wf_t;

/* workflow.c: history events. ath__wfev_new copies `len` bytes of json
 * (NULL when out of memory); ath__wf_push appends (lock held) taking the
 * event's reference, or releases it and returns ATH_ENOMEM;
 * ath__wf_events_join returns "[e1,e2,...]" (malloc'd, NULL when out of
 * memory); ath__wf_load parses events separated by ATH_WFEV_SEP (a
 * stored history) into a new workflow's list. */
#define ATH_WFEV_SEP '\x1e' /* never in JSON text: controls are escaped */
ath_wfev_t* ath__wfev_new(const char* json, size_t len);
void ath__wfev_retain(ath_wfev_t* e);
void ath__wfev_release(ath_wfev_t* e);
void ath__wfev_release_all(ath_wfev_t** evs, size_t n); /* and frees evs */
int ath__wf_push(ath_wf_t* wf, ath_wfev_t* e);
char* ath__wf_events_join(ath_wfev_t* const* evs, size_t n, size_t* len);
int ath__wf_load(ath_wf_t* wf, const char* text, size_t len);
/* New references to ev[from..nev) in a malloc'd array (lock held); *n gets
 * the count. NULL with *n = 0 when there are none; NULL with *n > 0 when
 * out of memory. */
ath_wfev_t** ath__wf_events_from(const ath_wf_t* wf, uint32_t from, size_t* n);
void ath__wf_free(ath_wf_t* wf);

/* wf_cache.c: a worker's parked workflow coroutines (worker thread only).
 * An entry holds a reference to its task and the coroutine (a registry
 * ref), with what makes it current: the workflow's segment count, run and
 * state when it parked. */
typedef struct ath_wfc_entry_s {
  struct ath_task_s* task;
  lua_State* co;
  int co_ref;
  int run, status;
  uint32_t segs;
  uint64_t parked_ns;    /* monotonic, when it parked */
  struct ath_wfc_entry_s *hnext, *newer, *older;
} ath_wfc_entry_t;
typedef struct ath_wfcache_s ath_wfcache_t;
ath_wfcache_t* ath__wfc_new(int cap);
void ath__wfc_free(ath_wfcache_t* c);
int ath__wfc_count(const ath_wfcache_t* c);
int ath__wfc_full(const ath_wfcache_t* c);
void ath__wfc_put(ath_wfcache_t* c, ath_wfc_entry_t* e);   /* as the most recent */
ath_wfc_entry_t* ath__wfc_take(ath_wfcache_t* c, const struct ath_task_s* t); /* or NULL */
ath_wfc_entry_t* ath__wfc_take_lru(ath_wfcache_t* c);      /* or NULL when empty */
const ath_wfc_entry_t* ath__wfc_lru(const ath_wfcache_t* c); /* the next out, or NULL */

/* workflow.c: a workflow's list of owned tasks (lock held). */
void ath__wf_kid_add(ath_wf_t* wf, struct ath_task_s* c);
void ath__wf_kid_remove(ath_wf_t* wf, const struct ath_task_s* c);

/* Per-call limits of a task a workflow started (ctx:run's timeout, retry,
 * scheduleToClose, heartbeatTimeout; SEMANTICS §9.1): its definition's
 * with those replaced (`retry` replaces the whole policy). Immutable, one
 * allocation owned by the task; `json` ({timeout, scheduleToClose,
 * heartbeatTimeout, retry}, ms numbers) is what the store keeps. */
typedef struct {
  ath_activity_t a;
  char* json;
  size_t json_len;
} ath_call_t;

/* workflow.c: builds the limits `json` gives over `def`. Returns 0,
 * ATH_EINVAL (not such an object) or ATH_ENOMEM. Thread: any. */
int ath__call_new(const ath_activity_t* def, const char* json, size_t len, ath_call_t** out);

/* A task lives from execute() until the world is freed (or, later, pruned).
 * Every field below `refs` is guarded by the world lock, except the
 * immutable ones (id, def, input, seq, created_at) and result/error, which
 * are written once before the task turns terminal and never change after. */
struct ath_task_s {
  atomic_int refs;       /* handles and the world's table each hold one */
  ath_status_t status;
  int attempt;
  int priority;
  int worker_id;
  int err_code;          /* ATH_E* of the last failure, 0 if none */
  int max_attempts;      /* effective (§7.2) */
  ath_strategy_t strategy; /* effective (§8) */
  int run_pos;           /* index in its worker's running list */
  unsigned dirty : 1;    /* in the store's pending list */
  unsigned purged : 1;   /* deleted: the store deletes its row */
  unsigned in_term : 1;  /* in the world's list of recent terminal tasks */
  ath_worker_t* wk;      /* the worker running it, while running */
  atomic_ullong cancel_ns; /* monotonic ns the cancel was accepted, 0 if none */
  int64_t last_hb;       /* wall ms of the latest heartbeat */
  char* hb;              /* its details (JSON), owned, or NULL */
  uint64_t dirty_gen;    /* store generation of its latest change */
  ath_def_t* def;
  ath_queue_t* queue;
  uint64_t seq;          /* creation order: the last tie-breaker */
  int64_t ready_at;      /* wall ms: when it became (or becomes) ready */
  uint64_t ready_mono;   /* monotonic ns of ready_at, for delay timers */
  int64_t created_at, scheduled_at, started_at, completed_at;
  uint64_t start_mono;   /* monotonic ns of the current attempt's start */
  ath_task_t* qprev;     /* ready list of its priority bucket; once terminal, */
  ath_task_t* qnext;     /* the world's list of recent terminal tasks */
  uint32_t heap_idx;     /* index in the delay heap, UINT32_MAX if absent */
  uint32_t exp_idx;      /* index in the expiry heap, UINT32_MAX if absent */
  uint64_t exp_mono;     /* scheduleToClose deadline, monotonic ns */
  ath_task_t* hnext;     /* hash chain */
  ath_waiter_t* waiters; /* worker slots parked in handle:result() */
  struct ath_task_s* parent; /* owning workflow (a reference), or NULL */
  ath_wf_t* wf;          /* workflow state, NULL for an activity */
  ath_call_t* call;      /* per-call limits (owned), NULL: the definition's */
  char* input;           /* JSON, owned */
  char* result;          /* JSON, owned, NULL until completed */
  char* error;           /* JSON error value, owned, NULL if none */
  /* their lengths: 32 bits keep a million queued tasks in a smaller
   * malloc size class (payloads are far below 4 GiB) */
  uint32_t input_len, result_len, error_len, hb_len;
  uint64_t hash;
  char id[];             /* NUL-terminated */
};

/* The limits that apply to t: its call's, else its definition's. */
static inline const ath_activity_t* ath__task_limits(const ath_task_t* t) {
  return t->call != NULL ? &t->call->a : &t->def->a;
}

/* One priority level of a queue: ready tasks in (ready_at, seq) order. */
typedef struct {
  int priority;
  ath_task_t* head;
  ath_task_t* tail;
} ath_bucket_t;

struct ath_queue_s {
  char name[65];
  int workers;           /* fixed pool size; the default queue uses min/max */
  int concurrency;       /* slots per worker */
  ath_bucket_t* buckets; /* sorted by priority, highest first */
  int nbuckets;
  int64_t depth;         /* ready tasks */
  int64_t running;       /* tasks holding slots */
};

/* An indexed binary min-heap: each element keeps its position in a
 * uint32_t field at `idx_off` (UINT32_MAX when out), so it can be removed
 * from anywhere. Used for delayed tasks and for schedules. */
typedef struct {
  void** items;
  uint32_t len, cap;
  int (*less)(const void* a, const void* b);
  size_t idx_off;
} ath_heap_t;

#define ATH_HEAP_INIT(less_fn, type, field) \
  { NULL, 0, 0, less_fn, offsetof(type, field) }

int ath__heap_push(ath_heap_t* h, void* e);
void* ath__heap_peek(const ath_heap_t* h);
void* ath__heap_pop(ath_heap_t* h);
void ath__heap_remove(ath_heap_t* h, void* e);
/* Restores the order after e's key changed in place (one sift, not a
 * remove and a push). */
void ath__heap_fix(ath_heap_t* h, void* e);
void ath__heap_free(ath_heap_t* h);
/* The delay heap's order: ready_mono, then creation. */
int ath__task_ready_less(const void* a, const void* b);

/* A task list through qprev/qnext (a bucket's ready tasks, the world's
 * finished ones); the caller holds the world lock. */
void ath__list_append(ath_bucket_t* b, ath_task_t* t);
void ath__list_unlink(ath_bucket_t* b, ath_task_t* t);

/* Queue operations; the caller holds the world lock. */
int ath__queue_push(ath_queue_t* q, ath_task_t* t);
ath_task_t* ath__queue_pop(ath_queue_t* q);
void ath__queue_remove(ath_queue_t* q, ath_task_t* t);
void ath__queue_free(ath_queue_t* q);

/* Wall-clock epoch milliseconds and monotonic nanoseconds. Thread: any. */
int64_t ath__now_ms(void);
uint64_t ath__mono_ns(void);
/* Writes a random UUID v4 (36 chars + NUL) into out. Thread: any. */
void ath__uuid4(char out[37]);
void ath__uuid7(char out[37]);
/* A uniform double in [0, 1) from the thread's generator. */
double ath__random01(void);
/* FNV-1a over a NUL-terminated string. */
uint64_t ath__hash_str(const char* s);

/* A worker timer on the manual clock: due in the world's vtimers heap, then
 * handed to its worker, which runs the slot's callback. */
typedef struct ath_vtimer_s ath_vtimer_t;
struct ath_vtimer_s {
  uint64_t due;          /* manual monotonic ns */
  uint32_t heap_idx;
  ath_slot_t* slot;
  int which;             /* ATH_TIMER_* */
  int fired;             /* due and not stopped since (lock held) */
  int in_fired;          /* in its worker's fired list (lock held) */
  ath_vtimer_t* next;
};

enum { ATH_TIMER_WAIT = 0, ATH_TIMER_DEADLINE = 1 };
typedef void (*ath_slot_cb)(ath_slot_t* s);

/* Slot waits: why a task coroutine is suspended. */
enum { ATH_WAIT_NONE = 0, ATH_WAIT_SLEEP, ATH_WAIT_RESULT, ATH_WAIT_HTTP, ATH_WAIT_PARK, ATH_WAIT_IO,
       ATH_WAIT_COMMIT };

/* One coroutine slot of a worker. Touched only by its worker's thread,
 * except `interrupt`, which any thread may set. */
struct ath_slot_s {
  ath_worker_t* wk;
  ath_task_t* awaiting;  /* the task this slot waits on (ATH_WAIT_RESULT) */
  struct ath_http_req_s* http; /* the request it waits on (ATH_WAIT_HTTP) */
  struct ath_io_wait_s* io; /* the I/O it waits on (ATH_WAIT_IO) */
  lua_KFunction wait_k;  /* continuation of that wait */
  int wait_timed_out;    /* the last result wait ended by its timeout */
  ath_task_t* task;      /* NULL when free */
  lua_State* co;         /* the task's coroutine, anchored at co_ref */
  int co_ref;
  int wait;              /* ATH_WAIT_* */
  /* Two timers: ATH_TIMER_WAIT (athena.sleep, a result wait's timeout)
   * and ATH_TIMER_DEADLINE (the attempt's deadlines while it waits); libuv
   * timers on the system clock, vtimers on the manual one. */
  uv_timer_t uvt[2];
  ath_vtimer_t vt[2];
  ath_slot_cb tcb[2];
  uint64_t deadline[4];  /* monotonic ns: timeout, heartbeat, scheduleToClose,
                          * and a scoped one (withRetry's per-attempt timeout); 0: none */
  uint64_t next_deadline;/* the earliest of them, UINT64_MAX if none */
  atomic_int interrupt;  /* ATH_E* to raise in the task, 0 for none */
  /* A workflow segment that parked (ATH_WAIT_PARK): what it waits for. */
  int park_kind;         /* ATH_PARK_* */
  int64_t park_seq;
  int64_t park_at;       /* ATH_PARK_TIMER: wall ms it fires */
  struct ath_task_s* park_task; /* the awaited task (a reference) */
  struct ath_task_s* spawned;   /* the task the segment started last (a reference) */
};

/* A thread blocked in ath_world_wait on one task. */
typedef struct ath_bwait_s {
  struct ath_bwait_s* next;
  const ath_task_t* task;
  uv_cond_t cond;
} ath_bwait_t;

/* A worker slot parked in handle:result() on another task, or (file
 * mode) on the commit of a store generation. */
struct ath_waiter_s {
  ath_waiter_t* next;
  ath_slot_t* slot;
  ath_task_t* task;      /* the task that finished (set when delivered) */
  uint64_t gen;          /* ATH_WAIT_COMMIT: the generation awaited */
};

enum { ATH_WK_STARTING = 0, ATH_WK_RUNNING, ATH_WK_STOPPING, ATH_WK_STOPPED };

/* A completed attempt waiting to be published under the world lock. */
typedef struct {
  ath_task_t* task;
  ath_status_t status;   /* completed, failed, cancelled, or pending (T14) */
  int err_code;
  int final;             /* failed: never retry (not retryable, nonRetryable) */
  int64_t retry_after;   /* failed: exact delay from RetryableError, or -1 */
  int park_kind;         /* a workflow segment parked (status running): ATH_PARK_* */
  int64_t park_seq, park_at;
  struct ath_task_s* park_task; /* reference handed over from the slot */
  struct ath_worker_s* home;    /* parked: the worker that cached its coroutine, or NULL */
} ath_outcome_t;

struct ath_worker_s {
  ath_world_t* w;
  size_t mem_used;       /* bytes in L's heap */
  size_t mem_limit;      /* refused past this while a task runs */
  ath_slot_t* current;   /* the slot being resumed, for the hook */
  int defining;          /* loading code: world:start() ends it */
  int* free_slots;       /* stack of free slot indexes */
  int nfree;
  int normalize_ref;     /* athena.errors.normalize */
  int workflow_ref;      /* athena.workflow's segment runner */
  ath_wfcache_t* wfc;    /* parked workflow coroutines (wf_cache.c), worker-local;
                          * NULL: workflowCache = 0 */
  int* spare_refs;       /* idle coroutines (registry refs) for slots whose
                          * coroutine went to the cache; `concurrency` at most */
  int nspare;
  unsigned wfc_parks;    /* parks into the cache: every 16th sweeps it */
  ath_buf_t buf;         /* scratch for encoding results */
  int joined;            /* thread joined (by the world's thread) */
  atomic_int poke;       /* set with a wake: check the slots for cancels */
  atomic_int lost;       /* declared lost by the monitor: its outcomes are void */
  atomic_int exited;     /* its thread has finished (set last thing) */
  struct ath_curlm_s* curlm; /* HTTP requests of its tasks (created on first use) */
  uv_timer_t beat;       /* beats every heartbeatInterval from the loop */
  ath_vtimer_t* fired;   /* manual clock: due timers (lock held) */
  /* Manual clock: whether the worker still has work from the last step. */
  atomic_int pending;    /* woken, not yet pumped */
  atomic_int pumping;    /* inside a pass */
  atomic_uint ticks;     /* hook runs: a pass that keeps ticking is spinning */
  int id;                /* n of "worker-<n>" */
  ath_queue_t* queue;
  int concurrency;
  uv_thread_t thread;
  uv_loop_t loop;
  uv_async_t async;      /* wakes the loop: work, inbox, interrupts, stop */
  lua_State* L;          /* created, used and closed on the worker thread */
  int* handlers;         /* registry ref of each def's handler, by def index */
  ath_slot_t* slots;
  ath_outcome_t* outcomes;   /* this pass's finished attempts (worker-local) */
  int noutcomes;
  /* Guarded by the world lock: */
  int running;           /* slots in use */
  ath_task_t** running_tasks; /* the `running` tasks, for getWorkers() */
  int wants_work;        /* asleep with a free slot: enqueuers wake it */
  int stop;              /* asked to stop once its slots are empty */
  int state;             /* ATH_WK_* */
  ath_waiter_t* inbox;   /* parked slots whose awaited task finished */
  ath_bucket_t resumes;  /* workflows whose coroutine it caches, due to resume
                          * here (counted in its queue's depth) */
  int64_t tasks_completed, tasks_failed;
  /* Read by any thread: */
  atomic_llong last_heartbeat;
  atomic_llong memory_kb;
  /* Start-up report, written by the worker before it signals `ready` (or,
   * started without a waiter, before its state leaves STARTING). */
  int start_rc;
  char start_err[512];
  int no_waiter;         /* started off the engine loop's path: posts nothing */
  int nlost_refs;        /* declared lost: running_tasks[0..n) hold references */
  atomic_int interrupt_all; /* ATH_E* to raise in every running task */
};

#define MAX_WORKERS 1024 /* per world */
#define ATH_LAT_SAMPLES 10000
#define ATH_EVICTED_RING 1024
typedef struct {
  float ms[ATH_LAT_SAMPLES];
  int64_t at[ATH_LAT_SAMPLES]; /* wall ms of each sample */
  uint32_t next, len;
} ath_lat_ring_t;

enum { ATH_W_NEW = 0, ATH_W_STARTED, ATH_W_STOPPING, ATH_W_STOPPED };


struct ath_world_s {
  uv_mutex_t lock;       /* guards everything below unless noted */
  uv_cond_t cond;        /* broadcast when attempts end (for shutdown), commits, shutdown */
  int cond_waiters;      /* threads waiting on `cond` for attempts to end (shutdown) */
  /* Threads blocked in ath_world_wait, each on a condition of its own,
   * signalled when its task ends (no other completion wakes it). */
  struct ath_bwait_s* bwaiters;
  int64_t bwait_wakes;   /* how often they woke (a test reads it) */
  int64_t kid_scans;     /* table scans for a workflow's tasks (a test reads it) */
  int state;             /* ATH_W_* */
  uv_thread_t owner;     /* creating thread */
  ath_world_config_t cfg;/* strings below are owned copies */
  char** modules;
  char** script_args;
  ath_def_t* defs;
  int ndefs;
  ath_queue_t** queues;  /* queues[0] is "default" */
  int nqueues;
  ath_worker_t** workers;
  int nworkers;
  int next_worker_id;
  uv_sem_t ready;        /* workers post once their state is loaded */
  /* Tasks by id. */
  ath_task_t** table;
  size_t table_cap, ntasks;
  /* Terminal tasks still in RAM (dead letters aside), oldest first. */
  ath_bucket_t term;
  int64_t nterm;
  uint64_t nevicted;     /* tasks that left RAM so far */
  ath_waiter_t* commit_waiters; /* slots waiting for a commit (file mode) */
  uint64_t evicted_hash[ATH_EVICTED_RING]; /* id hashes of the latest of them */
  int64_t prune_before;  /* a retention pass the store thread owes, or 0 */
  int commit_delay_ms;   /* tests only: $ATHENA_TEST_COMMIT_DELAY_MS */
  /* The store, for reads from any thread (set at start, closed when the
   * world is freed; unguarded: it does not change meanwhile). */
  ath_store_t* reads;
  ath_def_t** ghost_defs; /* names of recovered tasks nobody registered */
  int nghosts;
  int64_t n_recovered[4];/* pending, scheduled, requeued after a crash, terminal */
  uint64_t next_seq;
  /* Delayed tasks and the engine loop that makes them ready. */
  ath_heap_t delayed;
  ath_heap_t expiry;     /* tasks with a scheduleToClose, by deadline */
  uv_thread_t engine_thread;
  uv_loop_t eloop;
  uv_async_t easync;
  uv_timer_t etimer;
  uv_timer_t prune_timer;/* retention, hourly */
  uv_timer_t scale_timer;/* the autoscaler (default pool) */
  uint64_t scaled_up_at; /* engine-loop ms of the autoscaler's latest add */
  uv_timer_t monitor_timer; /* the heartbeat monitor */
  ath_worker_t** retired;/* retired and lost workers, kept until free */
  int nretired;
  int engine_stop;
  /* Counters (SEMANTICS §14.1). */
  int64_t started_at;
  int64_t n_completed, n_failed, n_retried, n_cancelled, n_quarantined;
  int64_t n_scheduled, n_running;
  int64_t tput[3600];     /* completions per wall second, ring by second */
  int64_t tput_sec;       /* the second tput[tput_sec % 3600] counts */
  int64_t tput_ds[20];    /* completions per 100 ms, ring by tenth (perSecond) */
  int64_t tput_dsec;      /* the tenth tput_ds[tput_dsec % 20] counts */
  ath_lat_ring_t lat_wait, lat_run;
  /* Shutdown: while `draining`, workers still claim queued tasks (and a
   * workflow's steps are still accepted); then the results. */
  int draining;
  struct ath_task_s** held; /* workflows a shutdown refused a command: queued when it ends */
  int nheld, held_cap;
  int drained, requeued, abandoned;
  void (*start_hook)(ath_world_t* w); /* tests only: see ath__world_set_start_hook */
  /* The manual clock (clock = "manual"): time moves only in advance(). */
  int manual;
  int64_t vbase_wall;    /* epoch ms when the manual clock was made */
  uint64_t vbase_mono;   /* its monotonic ns then */
  atomic_ullong vmono;   /* monotonic ns now; wall time follows from it */
  ath_heap_t vtimers;    /* workers' timers (ath_vtimer_t) by due time */
  ath_hook_t* hook;      /* webhooks, or NULL */
  struct ath_gws_s* gws; /* the gateway served (owned by its HTTP server), or NULL */
  ath_log_t* log;        /* the world's logger (SEMANTICS §14.2) */
  /* HTTP servers (http.c), created and stopped on the engine thread. */
  ath_http_t* http[8];
  int nhttp;
  ath_serve_req_t* serve_req; /* pending, guarded by the lock */
  /* Schedules (sched.c): by id, and a heap by next due time. */
  ath_sched_t** stable;
  size_t stable_cap, nsched;
  ath_heap_t sheap;
  uint64_t sched_seq;
  uv_timer_t stimer;
  /* Persistence (store.c). */
  const ath_store_vt_t* svt;
  ath_store_t* store;
  int lockfd;
  uv_thread_t store_thread;
  uv_cond_t store_cond;  /* wakes the store thread */
  ath_task_t** dirty;    /* changed tasks, each holding a reference */
  size_t ndirty, dirty_cap;
  ath_sched_t** sdirty;  /* changed schedules, each holding a reference */
  size_t nsdirty, sdirty_cap;
  uint64_t gen;          /* generation being collected */
  uint64_t committed_gen;/* every change up to this one is on disk */
  int store_stop;
  int store_ok;          /* the last commit succeeded (/healthz) */
  char store_err[256];
};

/* mono + ms, in ns, saturating: durations up to 2^53 ms (SEMANTICS §1.1)
 * outlast uint64 nanoseconds (about 584 years). */
static inline uint64_t ath__after(uint64_t mono, int64_t ms) {
  if (ms <= 0)
    return mono;
  if ((uint64_t)ms > (UINT64_MAX - mono) / 1000000u)
    return UINT64_MAX - 1; /* never, in practice; not the "none" of 0 */
  return mono + (uint64_t)ms * 1000000u;
}

/* The world's clock: real time, or the manual clock's. Thread: any. */
static inline int64_t ath__wall(ath_world_t* w) {
  if (!w->manual)
    return ath__now_ms();
  uint64_t m = atomic_load_explicit(&w->vmono, memory_order_acquire);
  return w->vbase_wall + (int64_t)((m - w->vbase_mono) / 1000000u);
}
static inline uint64_t ath__mono(ath_world_t* w) {
  return w->manual ? (uint64_t)atomic_load_explicit(&w->vmono, memory_order_acquire) : uv_hrtime();
}

/* worker.c: worker threads. */

/* Registry key of the table mapping activity names to handlers in a state
 * (filled by athena.activity; read by workers when they bind). */
extern const char ath__defs_key;

/* A lua_Alloc body that keeps *used up to date and refuses growth past
 * `limit` (Lua then raises a memory error in the code that asked). */
void* ath__metered_alloc(size_t* used, size_t limit, void* ptr, size_t osize, size_t nsize);

/* Returns the worker that owns L's state, or NULL in a control state. */
ath_worker_t* ath__worker_of(lua_State* L);
/* Whether the worker is still loading its code (definition mode). */
int ath__worker_defining(const ath_worker_t* wk);
/* Ends a worker's definition phase from world:start() in its entry script.
 * Does not return: yields the entry coroutine, or raises a sentinel the
 * worker recognises when the call site cannot yield. */
int ath__worker_end_definitions(lua_State* L);
ath_world_t* ath__worker_world(const ath_worker_t* wk);

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
/* The store generation that makes t's latest change durable (file mode),
 * or 0. */
uint64_t ath__world_commit_gen(ath_world_t* w, const ath_task_t* t);

/* ath_world_execute without the wait of file mode: *gen is set to the
 * store generation to wait for (ath__task_await_commit), 0 for none. */
int ath__world_execute(ath_world_t* w, const char* name, size_t n, char** payloads,
                       const size_t* lens, const char* const* ids, const ath_exec_opts_t* opts,
                       ath_task_t** out, uint64_t* gen, char* err, size_t errlen);

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
/* The task the running workflow segment started last (wfSpawn keeps it,
 * taking over the reference `t`), so that parking on it needs no lookup;
 * ath__task_spawned returns it (the reference) if its id is `id`, else
 * NULL. The slot drops what is left when the segment ends. */
void ath__task_keep_spawned(lua_State* L, ath_task_t* t);
ath_task_t* ath__task_spawned(lua_State* L, const char* id);

/* bindings: prepares a new worker state (standard libraries, athena.core and
 * the embedded Lua modules in package.preload). [-0, +0, m] */
void ath__openstate(lua_State* L);

/* Creates and starts a worker thread serving `q`. The worker loads its Lua
 * state and then, with `wait`, posts w->ready (check start_rc afterwards);
 * without, nobody waits: its state leaves ATH_WK_STARTING when it is loaded
 * (RUNNING, or STOPPED with start_rc set). Caller holds no lock.
 * Returns 0 or a libuv error (then nothing was started). */
int ath__worker_spawn(ath_world_t* w, ath_queue_t* q, int wait, ath_worker_t** out);
/* Wakes the worker's loop. Thread: any. */
void ath__worker_wake(ath_worker_t* wk);
/* Joins the thread and frees the worker. Call after it was asked to stop. */
void ath__worker_join(ath_worker_t* wk);

/* Logs an engine message (printf-style) at `level` with optional fields.
 * Thread: any; never blocks on I/O. Call without the world lock held when
 * you can (formatting happens in the caller). */
void ath__logf(ath_world_t* w, ath_log_level_t level, const ath_log_field_t* fields, size_t n,
               const char* fmt, ...) __attribute__((format(printf, 5, 6)));

/* Sets the package.path and package.cpath worker states get (NULL: Lua's
 * defaults). Before start() only. Returns 0 or ATH_ENOMEM. */
int ath__world_set_paths(ath_world_t* w, const char* path, const char* cpath);

/* For tests only: `fn` runs inside ath_world_start after the engine thread
 * started and before the world is marked started, so a test can widen that
 * window (it must not call back into the world). Before start() only. */
void ath__world_set_start_hook(ath_world_t* w, void (*fn)(ath_world_t* w));

/* world.c: used by workers. The caller holds no lock. */

/* Claims up to `max` ready tasks of wk's queue, publishes the worker's
 * outcomes and takes its inbox (waiters whose task ended), in one critical
 * section. Returns how many tasks were claimed into `out`. Sets *stop when
 * the worker should stop. */
int ath__world_exchange(ath_world_t* w, ath_worker_t* wk, ath_task_t** out,
                        int max, int* stop, ath_waiter_t** inbox, ath_vtimer_t** fired);
/* Registers `slot` as waiting for `t` to end. Returns 1 if registered, 0 if
 * `t` is already terminal (nothing registered). */
int ath__world_await(ath_world_t* w, ath_task_t* t, ath_slot_t* slot);
/* Stores a copy of `json` as t's latest heartbeat details, time now. */
void ath__world_heartbeat(ath_world_t* w, ath_task_t* t, const char* json, size_t len);
/* Manual clock: arms or stops a worker timer (lock not held). */
void ath__vtimer_start(ath_world_t* w, ath_vtimer_t* vt, uint64_t due);
void ath__vtimer_stop(ath_world_t* w, ath_vtimer_t* vt);
/* Removes `slot`'s waiter from `t` if still there (an interrupted wait). */
void ath__world_unawait(ath_world_t* w, ath_task_t* t, ath_slot_t* slot);
/* Appends one history event (a JSON object) to workflow `t`. Returns 0 or
 * ATH_ENOMEM; *gen gets the store generation that makes it durable, to
 * wait for before the workflow proceeds (0: none, not file mode). */
int ath__world_wf_append(ath_world_t* w, ath_task_t* t, const char* json, size_t len, uint64_t* gen);
/* New references to workflow t's history events from index `from` (see
 * ath__wf_events_from); *total gets the history's length. */
ath_wfev_t** ath__world_wf_events(ath_world_t* w, ath_task_t* t, uint32_t from, size_t* n,
                                  uint32_t* total);

/* sched.c: schedules (SEMANTICS §11) ---------------------------------------- */

#include "cron.h"

struct ath_sched_s {
  atomic_int refs;       /* the world's table and a firing in progress */
  char* id;
  ath_def_t* def;
  char* input;           /* JSON */
  size_t input_len;
  char* cron_expr;       /* NULL: a one-off at once_at */
  ath_cron_t cron;
  int64_t once_at;
  ath_schedule_opts_t o;
  char* queue_name;      /* owned copy of o.task_queue */
  int paused;
  int deleted;           /* the store deletes its row */
  int64_t next_ms;       /* next due time (wall ms), 0 if none */
  int64_t last_ms;
  int64_t total, skipped;
  ath_task_t* last_task; /* the latest fired task (reference), for overlap */
  uint32_t heap_idx;
  uint64_t seq;          /* creation order: the heap's tie-breaker */
  int dirty;             /* in the store's pending list */
  uint64_t hash;
  ath_sched_t* hnext;
};

/* Fires due schedules and re-arms the schedule timer. Engine thread. */
void ath__sched_tick(ath_world_t* w);
/* Drops a reference to a schedule, freeing it with the last one. */
void ath__sched_release(ath_sched_t* s);
/* Frees every schedule (world teardown). */
void ath__sched_free_all(ath_world_t* w);

/* store.c, store_sqlite.c: persistence (SEMANTICS §13) -------------------- */

/* One schedule's stored state (borrowed strings, like ath_row_t). */
typedef struct {
  const char* id;
  const char* name;
  const char* input;  size_t input_len;
  const char* cron;   /* NULL: a one-off */
  int64_t once_at;
  int local_tz, catch_up, overlap_skip, paused, has_priority, priority, strategy;
  const char* queue;  /* NULL: the definition's */
  int64_t next_ms, last_ms, total, skipped;
  int deleted;
} ath_srow_t;
typedef int (*ath_srow_cb)(void* ud, const ath_srow_t* row);

/* One task's stored state. Strings are borrowed for the call they are
 * passed to (write) or the callback (load). */
typedef struct {
  const char* id;
  const char* name;
  const char* queue;
  int status, attempt, max_attempts, strategy, priority, worker_id;
  uint64_t seq;
  int64_t created_at, scheduled_at, ready_at, started_at, completed_at, last_hb;
  const char* input;  size_t input_len;
  const char* result; size_t result_len;
  const char* error;  size_t error_len;
  int keep_error;     /* write: leave the stored error as it is (running) */
  const char* hb;     size_t hb_len;
  const char* parent_id;                 /* NULL: none */
  const char* history; size_t history_len; /* read: a workflow's events separated by ATH_WFEV_SEP */
  ath_wfev_t** events; size_t nevents;   /* write: events to append, numbered from ev_from */
  uint32_t ev_from;
  const char* call;   size_t call_len;   /* per-call limits (JSON), NULL: none */
  int deleted;        /* write: delete the row (purge, retention) */
} ath_row_t;

typedef int (*ath_row_cb)(void* ud, const ath_row_t* row);

/* A read of stored tasks (ath_store_vt_t.query). */
typedef struct {
  unsigned status_mask;  /* 1 << ATH_* of the statuses wanted; 0: any */
  const char* name;      /* exact activity name, or NULL */
  const char* parent_id; /* owning workflow, or NULL */
  int64_t since, until;  /* bounds on created_at, 0: none */
  int64_t limit;
  int by_seq;            /* 1: creation order; 0: newest first (created_at
                          * descending, then id) */
  uint64_t after_seq;    /* by_seq: only tasks created after this one; 0: any */
} ath_store_query_t;

/* A persistence provider: the Backend vtable of DESIGN §4. Every function
 * runs on one thread at a time (start() on the world's thread, then only
 * the store thread). Errors are ATH_ESTORE (message in err) or ATH_EINVAL
 * (a database newer than this build, or not an Athena database). */
struct ath_store_vt_s {
  const char* name;
  /* Opens (creating and migrating) the store in directory `dir`. */
  int (*open)(const char* dir, int full_sync, ath_store_t** out, char* err, size_t errlen);
  /* Calls cb for every stored task in creation order; stops at cb's error. */
  int (*load)(ath_store_t* s, ath_row_cb cb, void* ud, char* err, size_t errlen);
  /* Calls cb for every stored schedule. */
  int (*load_schedules)(ath_store_t* s, ath_srow_cb cb, void* ud, char* err, size_t errlen);
  /* Writes task and schedule rows in one transaction: all or nothing. */
  int (*write)(ath_store_t* s, const ath_row_t* rows, size_t n, const ath_srow_t* srows,
               size_t sn, char* err, size_t errlen);
  /* Deletes terminal tasks except quarantined ones completed before. */
  int (*prune)(ath_store_t* s, int64_t before_ms, char* err, size_t errlen);
  void (*close)(ath_store_t* s);
  /* Reads, from any thread, concurrently with the writer and each other
   * (each on a connection of its own): what is committed. */
  /* Calls cb with task `id`'s row; ATH_ENOTFOUND when there is none. */
  int (*get)(ath_store_t* s, const char* id, ath_row_cb cb, void* ud, char* err, size_t errlen);
  /* Calls cb for the rows that match `q`, in its order, at most q->limit. */
  int (*query)(ath_store_t* s, const ath_store_query_t* q, ath_row_cb cb, void* ud, char* err,
               size_t errlen);
};

extern const ath_store_vt_t ath__sqlite_store;
/* The SQLite store's schema version (what `athena tasks` and friends read). */
extern const int ath__store_schema_version;

/* Takes <dir>/athena.lock (created if missing): an exclusive, non-blocking
 * flock, released by closing *fd_out. Returns 0, ATH_EBUSY while another
 * process or world holds it, or ATH_ESTORE, with err set. The directory
 * must exist. Thread: any. */
int ath__store_lock(const char* dir, int* fd_out, char* err, size_t errlen);
/* Opens persistence for a starting world (lock file, store, recovery,
 * retention pass) and starts the store thread. Called by start() before
 * the workers, lock not held. Returns 0 or an ATH_E* with err set. */
int ath__store_start(ath_world_t* w, char* err, size_t errlen);
/* Final commit, stops the store thread and drops the lock file; the store
 * stays open for reads until ath__store_free (from ath_world_free). */
void ath__store_stop(ath_world_t* w);
void ath__store_free(ath_world_t* w);
/* Records that t changed (lock held): the store thread writes it with the
 * next group. No-op in memory mode. */
void ath__store_mark(ath_world_t* w, ath_task_t* t);
/* Records that a schedule changed (lock held), like ath__store_mark. */
void ath__store_mark_sched(ath_world_t* w, ath_sched_t* s);
/* Hybrid mode's bound on changes not yet committed: past it, producers wait
 * for the store (ath__store_throttle) instead of piling work up in RAM, and
 * the store thread commits at once instead of at the end of its interval. */
#define ATH_HYBRID_BACKLOG 65536
void ath__store_throttle(ath_world_t* w);
/* A task's wait for generation `gen` to be durable, without blocking its
 * worker (file mode): returns 0 when there is nothing to wait for, 1 when
 * `slot` was queued (the store thread hands it to the worker's inbox once
 * committed), or ATH_ENOMEM. Lock not held. */
int ath__store_await(ath_world_t* w, uint64_t gen, ath_slot_t* slot);
/* Takes `slot`'s commit wait back (interrupted). Lock not held. */
void ath__store_unawait(ath_world_t* w, ath_slot_t* slot);
/* Hands a waiter to its worker's inbox (lock held) and adds the worker to
 * wake[0..nwake) when not there yet; returns the new nwake. */
int ath__waiter_deliver(ath_waiter_t* wt, ath_worker_t** wake, int nwake);
/* Waits (lock held) until everything marked up to generation `gen` is
 * committed, in file mode; returns at once otherwise. */
void ath__store_wait(ath_world_t* w, uint64_t gen);
/* Drops terminal tasks past the world's retention (lock not held). */
void ath__world_prune(ath_world_t* w);
/* Recovery (world.c): rebuilds one stored task in memory (an ath_row_cb;
 * `ud` is the world), then logs what was recovered. */
int ath__world_recover_row(void* ud, const ath_row_t* r);
/* Takes out of RAM the terminal tasks that must leave it (lock held),
 * chained through hnext; ath__world_term_free drops them after unlocking. */
ath_task_t* ath__world_term_trim(ath_world_t* w);
void ath__world_term_free(ath_task_t* dead);
void ath__world_recovered(ath_world_t* w);
/* Rebuilds one stored schedule, applying its catchUp (an ath_srow_cb). */
int ath__sched_recover_row(void* ud, const ath_srow_t* row);

/* http_client.c: HTTP requests on libcurl --------------------------------- */

typedef struct ath_curlm_s ath_curlm_t;
typedef struct ath_http_req_s {
  void* easy;            /* CURL* */
  struct curl_slist* headers;
  char* req_body;
  ath_buf_t body;        /* the response body */
  size_t max_body;       /* 64 MiB: past it the request fails EMSGSIZE */
  int result;            /* CURLcode */
  int done;
  int in_multi;
  ath_slot_t* slot;      /* the task waiting on it, or NULL */
  char errbuf[256];
} ath_http_req_t;

/* Prepares a request (headers are "Name: value" lines, NULL-terminated).
 * Returns 0, ATH_EINVAL (a URL that is not http(s)) or ATH_ENOMEM. */
int ath__http_prepare(ath_http_req_t* r, const char* method, const char* url,
                      const char* const* headers, const char* body, size_t blen,
                      int64_t timeout_ms, char* err, size_t errlen);
/* Trusts the CA certificates in `path` (PEM) for this request. */
void ath__http_set_cafile(ath_http_req_t* r, const char* path);
/* Runs it to the end on the calling thread (blocking). */
int ath__http_perform(ath_http_req_t* r);
void ath__http_free(ath_http_req_t* r);
/* After it is done: the error code ("ETIMEDOUT", "ECONNREFUSED", ...) or
 * NULL, its message, the status, and the response headers one by one. */
const char* ath__http_error_code(const ath_http_req_t* r);
const char* ath__http_error_message(const ath_http_req_t* r);
long ath__http_status(const ath_http_req_t* r);
int ath__http_next_header(const ath_http_req_t* r, void** iter, const char** name, const char** value);
/* A curl multi handle driven by `loop`; `done` runs on that loop for each
 * finished request. */
int ath__curlm_new(uv_loop_t* loop, void (*done)(ath_http_req_t* r), ath_curlm_t** out);
int ath__curlm_add(ath_curlm_t* m, ath_http_req_t* r);
void ath__curlm_remove(ath_curlm_t* m, ath_http_req_t* r);
void ath__curlm_close(ath_curlm_t* m);
/* worker.c: runs r on the calling task's worker loop and yields until it
 * ends, then continues in k. Returns -1 when L is not a task's own
 * coroutine (the caller performs it blocking instead). */
int ath__task_http(lua_State* L, ath_http_req_t* r, lua_KFunction k, lua_KContext kctx);

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
/* bindings/l_db.c: [-0, +1, e] pushes the worker state's own connection
 * for `url` (ctx.db), made on first use; it connects when first used. */
void ath__db_push_ctx(lua_State* L, const char* url);

/* http.c: the operations HTTP surface on the engine loop ----------------- */

/* How one listener serves (world:serve options, docs/operations.md
 * "Operations surface: who may do what"). Owned by the listener once
 * handed over (ath__serve_opts_free). */
struct ath_gws_key_s;
typedef struct ath_serve_opts_s {
  int flags;                  /* ATH_SERVE_* */
  struct ath_gws_s* gws;      /* the gateway on this listener, or NULL */
  struct ath_gws_key_s* keys; /* keys with operations rights (serve's auth) */
  int nkeys;
  int auth;                   /* `auth` given: the operations surface needs a key */
  char** allowed_hosts;       /* Host names accepted, NULL: the default */
  int http2;                  /* > 0: HTTP/2 cleartext (h2c) accepted, at most this many streams a second per connection */
  size_t max_buffered;        /* request bytes buffered across connections (0: default) */
} ath_serve_opts_t;
void ath__serve_opts_free(ath_serve_opts_t* o);

/* Listens on host:port (engine thread) as `o` says (taken over, also on
 * failure). Returns 0 and the server, or ATH_EBUSY / ATH_EINVAL with err
 * set. */
int ath__http_start(ath_world_t* w, const char* host, int port, ath_serve_opts_t* o,
                    int* bound, ath_http_t** out, char* err, size_t errlen);
/* Stops listening and frees the server once its handles close (engine
 * thread). */
void ath__http_stop(ath_http_t* h);
/* Decodes %XX (and, with `plus`, '+' as a space) in s in place; writes a
 * NUL and returns the decoded length. */
size_t ath__http_decode(char* s, size_t n, int plus);
/* world:serve (o taken over, also on failure). */
int ath__world_serve(ath_world_t* w, const char* host, int port, ath_serve_opts_t* o,
                     int* bound, char* err, size_t errlen);
/* The gateway a world serves (the latest), or NULL. Control thread. */
struct ath_gws_s* ath__world_gateway(ath_world_t* w);

/* webhook.c: LocalBackend webhooks (SEMANTICS §15) ------------------------- */

enum {
  ATH_EV_TASK_COMPLETED = 0, ATH_EV_TASK_FAILED, ATH_EV_TASK_RETRYING, ATH_EV_TASK_QUARANTINED,
  ATH_EV_TASK_CANCELLED, ATH_EV_SCHEDULE_FIRED, ATH_EV_WORKER_LOST, ATH_EV_COUNT
};
/* Starts the delivery thread for `url` and the events in `mask` (bit per
 * ATH_EV_*). Returns 0 or ATH_ENOMEM with err set. */
int ath__hook_start(const char* url, unsigned mask, ath_log_t* log, ath_hook_t** out, char* err,
                    size_t errlen);
/* Queues an event with `data` (JSON, copied). Never blocks on I/O; drops
 * the oldest event past the outbox bound. Thread: any (h may be NULL). */
void ath__hook_emit(ath_hook_t* h, int kind, int64_t at, const char* data, size_t len);
int ath__hook_wants(const ath_hook_t* h, int kind);
/* Delivers what is due within a short grace, then stops and frees. */
void ath__hook_stop(ath_hook_t* h);
/* ATH_EV_* of an event name ("task.failed"), or -1. */
int ath__hook_event(const char* name);
uint64_t ath__hook_dropped(const ath_hook_t* h);
uint64_t ath__hook_delivered(const ath_hook_t* h);

/* lua_vm.c ---------------------------------------------------------------- */

/* [-(nargs+1), +nresults|1, -] Calls the function below `nargs` arguments in
 * protected mode with a message handler that adds a traceback to string
 * errors and keeps error tables as they are. Returns the lua_pcall status;
 * on failure the error value is on the stack. The engine's one way to call
 * Lua from C (CI greps for others). */
int ath__vm_call(lua_State* L, int nargs, int nresults);
/* Calls the function below `nargs` arguments inside a task coroutine,
 * which ath__vm_resume protects; it may yield, continuing in k. Raises what
 * the function raises (the resume catches it). */
void ath__vm_callk(lua_State* co, int nargs, int nresults, lua_KFunction k);
/* Resumes `co` from L (see lua_resume). The engine's one way to resume. */
int ath__vm_resume(lua_State* co, lua_State* from, int nargs, int* nres);

#endif
