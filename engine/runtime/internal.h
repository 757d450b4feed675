/* Declarations shared between engine files (ath__ prefix). Not installed. */
#ifndef ATHENA_INTERNAL_H
#define ATHENA_INTERNAL_H

/* The runtime's own structs: engine files only. The bindings see athena.h
 * and runtime.h (CMakeLists.txt compiles them with ATHENA_BINDINGS). */
#ifdef ATHENA_BINDINGS
#error "bindings include runtime.h, never internal.h"
#endif

#include <assert.h>
#include <stdint.h>
#include <stddef.h>
#include <lua.h>
#include "athena.h"

#include "util.h"
#include "runtime.h"

/* cron.c: see engine/runtime/cron.h ----------------------------------------------- */

/* world.c, queue.c, worker.c ---------------------------------------------- */

#include <stdatomic.h>
#include <uv.h>
#include "log.h"

typedef struct ath_queue_s ath_queue_t;
typedef struct ath_worker_s ath_worker_t;
typedef struct ath_slot_s ath_slot_t;
typedef struct ath_waiter_s ath_waiter_t;
typedef struct ath_store_s ath_store_t;
typedef struct ath_store_provider_s ath_store_vt_t; /* athena.h: ath_store_provider_t */
typedef struct ath_sched_s ath_sched_t;
typedef struct ath_http_s ath_http_t;
typedef struct ath_hook_s ath_hook_t;
typedef struct ath_event_s ath_event_t; /* a webhook event (webhook.c) */
typedef struct ath_xhold_s ath_xhold_t; /* an exchange's held events (exchange.c) */

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

/* One history event: a JSON object, immutable once made, shared by
 * reference between the workflow, the store and workers (so the history is
 * never copied under the world lock). */
typedef struct ath_wfev_s {
  atomic_int refs;
  uint32_t len;
  char json[];           /* NUL-terminated */
} ath_wfev_t;

/* An outcome event the engine recorded (activity.completed, child.failed,
 * ...), described so that a resume can build its Lua table from these
 * fields and decode only the value, not the whole event. */
typedef struct {
  const ath_wfev_t* ev;  /* the event described (in the history), or NULL */
  const char* type;      /* static */
  int run;
  int index;             /* its number is "index" (a compensation), not "seq" */
  int64_t seq, at;
  const char* key;       /* "result" or "error" at json[voff..voff+vlen), or NULL */
  uint32_t voff, vlen;
} ath_wf_outev_t;

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
  /* Claimed from its home worker's resumes list: new references to the
   * events its cached coroutine has not seen, ev[park_nev..nev) at the
   * claim, taken in that exchange (so the resume needs no lock); the
   * claiming worker takes them over. has_tail: taken (tail is NULL when
   * there are none). */
  ath_wfev_t** tail;
  uint32_t ntail;
  int has_tail;
  ath_wfev_t* tail1;     /* a tail of one event: `tail` points here */
  ath_wf_outev_t last_out; /* the latest outcome event recorded */
  int64_t cancel_at;     /* wall ms of a cancel accepted while a segment ran
                          * (memory, hybrid): its cancel.requested follows the
                          * events that segment records; 0: none pending */
  int tail_out;          /* the tail is last_out's event alone */
  int home;              /* parked, its coroutine cached on the worker of this
                          * id: resumed there, with only the new events, if
                          * that worker still serves; 0: none. An id, not a
                          * pointer: a retired worker is freed. */
  int where;             /* ATH_WF_* */
  /* The step (ctx:run) its running segment started on its worker's queue
   * (identity only): no other worker claims it before the segment's park
   * is published, so that the exchange publishing it hands it to this
   * workflow's worker (eager dispatch, exchange.c). */
  const struct ath_task_s* held_step;
  int resuming;          /* the next claim continues the run: no new attempt */
  int wait_kind;         /* ATH_PARK_*, while parked or on a timer */
  int64_t wait_seq;      /* the awaited command (a compensation's index) */
  struct ath_task_s* wait_task; /* parked on this task's outcome (a reference) */
  int dq_wake;           /* PostgreSQL: the row's wake count at the claim */
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
  /* Its id was generated here (not recovered) and no task outside its
   * steps took an id under it: its next step's id <id>/<run>/<seq>, which
   * its history shows it never started, cannot be in the store, so
   * ctx:run does not look there (execute in world.c). */
  atomic_int fresh;      /* read unlocked by its worker's ctx:run (execute) */
  struct ath_wfev_s* ended; /* its workflow.completed, built by the worker of
                          * its last segment, until recorded (ath__wf_ended_new) */
} ath_wf_t;

/* workflow.c: history events. ath__wfev_new copies `len` bytes of json
 * (NULL when out of memory); ath__wf_push appends (lock held) taking the
 * event's reference, or releases it and returns ATH_ENOMEM;
 * ath__wf_events_join returns "[e1,e2,...]" (malloc'd, NULL when out of
 * memory); ath__wf_load parses events separated by ATH_WFEV_SEP (a
 * stored history) into a new workflow's list. */
#define ATH_WFEV_SEP ATH_STORE_EVENT_SEP /* never in JSON text: controls are escaped */
ath_wfev_t* ath__wfev_new(const char* json, size_t len);
/* The event the parent workflow of t records when t completes at `at`
 * (activity.completed, or child.completed when t is a workflow), built
 * without the world lock by the worker that ran t, all but its run and
 * seq, which the exchange appends in place once it knows the parent waits
 * for it (wf_record); NULL when out of memory. Thread: the worker that ran
 * t. */
ath_wfev_t* ath__wf_done_new(const struct ath_task_s* t, int64_t at);
/* The workflow.completed event of workflow t, completed at `at`, built the
 * same way, whole; NULL when out of memory. */
ath_wfev_t* ath__wf_ended_new(const struct ath_task_s* t, int64_t at);
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
/* Releases a resume's events evs[0..n) (wf->tail, or an array of
 * ath__wf_events_from) and frees the array unless it is wf->tail1. */
void ath__wf_tail_release(ath_wf_t* wf, ath_wfev_t** evs, size_t n);
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
/* An entry to fill (reused when one was freed), or NULL; and its end. */
ath_wfc_entry_t* ath__wfc_entry_new(ath_wfcache_t* c);
void ath__wfc_entry_free(ath_wfcache_t* c, ath_wfc_entry_t* e); /* c may be NULL */
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

/* The rare parts of a task, in a record of their own made when one is first
 * needed (issue 15: a million queued tasks are a million task records, and
 * most tasks never have a heartbeat, a waiter, per-call limits, a parent, a
 * scheduleToClose deadline or a PostgreSQL lease). Made under the world lock,
 * or before the task is published, and freed with the task; its fields are
 * guarded like the task's (parent and call are immutable once set). */
typedef struct {
  struct ath_task_s* task; /* whose they are */
  struct ath_task_s* parent; /* owning workflow (a reference), or NULL */
  ath_call_t* call;      /* per-call limits (owned), NULL: the definition's */
  ath_waiter_t* waiters; /* worker slots parked in handle:result() */
  char* hb;              /* its latest heartbeat details (JSON), owned, or NULL */
  int64_t last_hb;       /* wall ms of the latest heartbeat */
  uint64_t exp_mono;     /* scheduleToClose deadline, monotonic ns */
  uint32_t exp_idx;      /* index in the expiry heap, UINT32_MAX if absent */
  uint32_t hb_len;
  int dq_attempt;        /* PostgreSQL backend: the attempt this node leases
                          * (0: none; -1: the lease was lost, its outcome is
                          * discarded) */
  int dq_claimed;        /* PostgreSQL backend: an attempt claimed while a
                          * fenced one still ran here (0: none); it starts
                          * once that one ends */
  int64_t dq_seq;        /* PostgreSQL backend: the row's seq (0: not
                          * inserted; -1: its insert is in flight) */
  struct ath_wfev_s* done; /* completed with a parent workflow: the event
                          * its parent records, built by the worker that
                          * ran it, until the parent records it
                          * (ath__wf_done_new) */
} ath_task_x_t;

/* A task lives from execute() until the world is freed (or, later, pruned).
 * Every field below `refs` is guarded by the world lock, except the
 * immutable ones (id, def, input, seq, created_at, x's parent and call) and
 * result/error, which are written once before the task turns terminal and
 * never change after. */
/* Inputs up to this many bytes are kept in the task's own allocation. */
#define ATH_INLINE_INPUT 64

struct ath_task_s {
  atomic_int refs;       /* handles and the world's table each hold one */
  int attempt;
  int priority;
  int worker_id;
  int max_attempts;      /* effective (§7.2) */
  int run_pos;           /* index in its worker's running list */
  /* The state and the flags share one word with the error code: the
   * record is kept to 208 bytes so that, with its id and a small input, a
   * queued task is one 272-byte malloc chunk (issue 15's memory target). */
  ath_status_t status : 4;
  ath_strategy_t strategy : 4; /* effective (§8) */
  unsigned dirty : 1;    /* in the store's pending list */
  unsigned purged : 1;   /* deleted: the store deletes its row */
  unsigned in_term : 1;  /* in the world's list of recent terminal tasks */
  unsigned input_inline : 1; /* `input` is in this block, after the id */
  unsigned unborn : 1;   /* file mode: its enqueue is not committed yet, so
                          * no worker claims it (ath__queue_pop) */
  unsigned withdrawn : 1;/* its enqueue could not be stored: out of the
                          * world, failed with err_code (ath__world_withdraw) */
  unsigned stored : 1;   /* a commit wrote its row (or it was loaded from
                          * one): the store updates the row, not inserts it */
  unsigned remote : 1;   /* PostgreSQL backend: a proxy of a row this node
                          * does not lease (in no queue or heap here) */
  /* ATH_E* of the last failure, 0 if none. Not a bit-field: it is read
   * without the lock once the task is terminal (ath__task_end) while the
   * store thread sets `stored` under it, and a bit-field would share its
   * memory location with those flags (a data race in C11's terms). */
  int16_t err_code;
  uint32_t heap_idx;     /* index in the delay heap, UINT32_MAX if absent */
  /* Store generation of its latest change, its low 32 bits: a generation
   * is never ahead of the world's, so ath__task_gen rebuilds it from
   * w->gen. */
  uint32_t dirty_gen;
  /* lengths: 32 bits (payloads are far below 4 GiB) */
  uint32_t input_len, result_len, error_len;
  ath_worker_t* wk;      /* the worker running it, while running */
  atomic_ullong cancel_ns; /* monotonic ns the cancel was accepted, 0 if none */
  ath_def_t* def;
  ath_queue_t* queue;
  uint64_t seq;          /* creation order: the last tie-breaker */
  int64_t ready_at;      /* wall ms: when it became (or becomes) ready */
  uint64_t ready_mono;   /* monotonic ns of ready_at, for delay timers */
  int64_t created_at, scheduled_at, started_at, completed_at;
  uint64_t start_mono;   /* monotonic ns of the current attempt's start */
  union {
    ath_task_t* qprev;   /* ready list of its priority bucket; once terminal, */
    uint64_t sub_hash;   /* in a submit list (ath_subq_t): its id's hash */
  };
  ath_task_t* qnext;     /* the world's list of recent terminal tasks */
  ath_task_t* hnext;     /* hash chain */
  ath_wf_t* wf;          /* workflow state, NULL for an activity */
  /* the rare parts, or NULL: read it with ath__task_xr (any thread) */
  _Atomic(ath_task_x_t*) x;
  char* input;           /* JSON, owned (or inline: input_inline) */
  char* result;          /* JSON, owned, NULL until completed */
  char* error;           /* JSON error value, owned, NULL if none */
  char id[];             /* NUL-terminated */
};

/* t's rare parts, or NULL when it has none yet (any thread: the record is
 * published once, with release order, and never moves). */
static inline ath_task_x_t* ath__task_xr(const ath_task_t* t) {
  return atomic_load_explicit(&((ath_task_t*)t)->x, memory_order_acquire);
}
/* t's rare parts, made when missing (world lock held, or t unpublished);
 * NULL when out of memory. */
ath_task_x_t* ath__task_x(ath_task_t* t);
/* Tests: while positive, making a side record fails as out of memory and
 * counts down (tests/c/test_world.c: the callers' out-of-memory paths). */
extern atomic_int ath__fault_task_x;
static inline ath_task_t* ath__task_parent(const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_xr(t);
  return x != NULL ? x->parent : NULL;
}
static inline ath_waiter_t* ath__task_waiters(const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_xr(t);
  return x != NULL ? x->waiters : NULL;
}
static inline uint32_t ath__task_exp_idx(const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_xr(t);
  return x != NULL ? x->exp_idx : UINT32_MAX;
}
static inline int ath__task_dq_attempt(const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_xr(t);
  return x != NULL ? x->dq_attempt : 0;
}
static inline int64_t ath__task_dq_seq(const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_xr(t);
  return x != NULL ? x->dq_seq : 0;
}
/* The lease fields of a task of a PostgreSQL world, which has its rare
 * parts from the start (execute, adoption of a row, a watched row): the
 * sanitizer builds (no NDEBUG) check that every creation path kept it so. */
static inline ath_task_x_t* ath__task_dq(const ath_task_t* t) {
  ath_task_x_t* x = ath__task_xr(t);
  assert(x != NULL && "a task of a PostgreSQL world has its rare parts");
  return x;
}
/* The store generation of t's latest change (dirty_gen widened; storage/
 * store.c). World lock held. */
uint64_t ath__task_gen(const ath_world_t* w, const ath_task_t* t);
#if UINTPTR_MAX == UINT64_MAX
_Static_assert(sizeof(struct ath_task_s) <= 208, "a queued task must stay in a 272-byte chunk");
#endif

/* The limits that apply to t: its call's, else its definition's. */
/* The effective failure strategy and attempts of a task of def with limits
 * lim, asked for `asked` (SEMANTICS §7.2, §8): execute's and a schedule's. */
void ath__task_policy(const ath_world_t* w, const ath_def_t* def, const ath_activity_t* lim,
                      ath_strategy_t asked, ath_strategy_t* strategy, int* max_attempts);

static inline const ath_activity_t* ath__task_limits(const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_xr(t);
  return x != NULL && x->call != NULL ? &x->call->a : &t->def->a;
}

/* One priority level of a queue: ready tasks in (ready_at, seq) order. */
typedef struct {
  int priority;
  ath_task_t* head;
  ath_task_t* tail;
} ath_bucket_t;

/* The submit side of a queue (issue 15). An execute of the common kind
 * (generated ids; no delay, parent, per-call limits or scheduleToClose;
 * memory or hybrid, not PostgreSQL: submits_unlocked in world.c) links
 * its prepared tasks here under `lock` alone, never the
 * world lock, and wakes sleepers listed here; whoever next needs the
 * world's consistent view (a claim, a lookup, a query, metrics, a cancel,
 * shutdown, the store) moves them into the table, the ready queue and the
 * store's list first (ath__submits_drain, world lock held), numbering them
 * then. Lock order: the world lock, then this one; never the reverse. */
typedef struct {
  uv_mutex_t lock;
  int open;              /* started and not shutting down: appends go in */
  ath_task_t* head;      /* submitted tasks, oldest first, through qnext */
  ath_task_t* tail;
  int64_t n;
  /* Its workers asleep with a free slot (idle ones first), through
   * sleep_next: an append pops as many as it brings tasks and wakes them. */
  ath_worker_t* sleepers;
} ath_subq_t;

struct ath_queue_s {
  char name[65];
  int workers;           /* fixed pool size; the default queue uses min/max */
  int concurrency;       /* slots per worker */
  ath_bucket_t* buckets; /* sorted by priority, highest first */
  int nbuckets;
  int64_t depth;         /* ready tasks */
  int64_t running;       /* tasks holding slots */
  int wanting;           /* its workers with wants_work set (ath__set_wants):
                          * with none, an enqueue looks at no worker */
  /* Claim's balance of new workflows over its workers (exchange.c): */
  int64_t new_wf;        /* workflows in it that no worker started yet */
  uint64_t round;        /* the round of turns at taking them */
  int round_takers;      /* workers that had their turn in this round */
  uint64_t round_mono;   /* when its first turn was taken */
  ath_subq_t sub;        /* submissions not drained yet (own lock) */
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
/* Takes the first ready task out, or returns NULL when there is none or
 * when the first one is unborn (file mode: a task runs only once its
 * enqueue is committed; the store thread wakes the queue's workers then). */
ath_task_t* ath__queue_pop(ath_queue_t* q);
/* Puts a task taken by ath__queue_pop back in its place (near the head),
 * leaving the depth as it is. */
int ath__queue_unpop(ath_queue_t* q, ath_task_t* t);
void ath__queue_remove(ath_queue_t* q, ath_task_t* t);
void ath__queue_free(ath_queue_t* q);

/* The submit side (ath_subq_t); each takes q->sub.lock itself. */
int ath__sub_init(ath_queue_t* q);
void ath__sub_set_open(ath_queue_t* q, int open);
/* Appends tasks head..tail (n of them, linked through qnext) unless the
 * queue is closed (returns ATH_ESHUTDOWN: nothing appended); pops up to n
 * sleepers into wake[0..cap), counted in wakes_held (the caller wakes them
 * with ath__wake_all), and sets *nwake. */
int ath__sub_append(ath_world_t* w, ath_queue_t* q, ath_task_t* head, ath_task_t* tail, int64_t n,
                    ath_worker_t** wake, int cap, int* nwake);
/* Takes the queue's submitted tasks (NULL if none), their count in *n. */
ath_task_t* ath__sub_take(ath_world_t* w, ath_queue_t* q, int64_t* n);
/* wk sleeps with a free slot (world lock held): lists it among its queue's
 * sleepers, unless submissions wait there (returns 1: it must not sleep). */
int ath__sub_listen(ath_worker_t* wk, int idle);
/* Takes wk off its queue's sleepers if it is listed (any lock or none). */
void ath__sub_unlisten(ath_worker_t* wk);

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
  int attempt;           /* the attempt it runs (a task started from the
                          * prefetch counts it in t->attempt only once its
                          * start is published) */
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
  uint64_t started_mono; /* monotonic ns the attempt started in this slot */
  atomic_int interrupt;  /* ATH_E* to raise in the task, 0 for none */
  /* A workflow segment that parked (ATH_WAIT_PARK): what it waits for. */
  int park_kind;         /* ATH_PARK_* */
  int64_t park_seq;
  int64_t park_at;       /* ATH_PARK_TIMER: wall ms it fires */
  struct ath_task_s* park_task; /* the awaited task (a reference) */
  struct ath_task_s* spawned;   /* the task the segment started last (a reference) */
  /* Events the running workflow segment recorded (memory and hybrid
   * modes): they travel with its outcome and enter the history in the
   * exchange that publishes it, in order (one lock per segment, not one
   * per command). File mode appends each at once and waits for its commit. */
  ath_wfev_t** rec;
  uint32_t nrec, rec_cap;
  /* The task the segment started without waking a worker (a reference;
   * ath__world_execute_step), handed to its outcome; held_evicted0 is
   * ATH_NOT_DEFERRED, or, when it is deferred, w->nevicted as its execute
   * read it. */
  struct ath_task_s* held;
  uint64_t held_evicted0;
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
  ath_task_t* task;      /* the task that finished (set when delivered); with
                          * ATH_WAIT_COMMIT, a task whose enqueue it
                          * acknowledges (withdrawn: the wait ends), or NULL */
  uint64_t gen;          /* ATH_WAIT_COMMIT: the generation awaited */
};

enum { ATH_WK_STARTING = 0, ATH_WK_RUNNING, ATH_WK_STOPPING, ATH_WK_STOPPED };

/* A task a worker claimed ahead of a free slot (exchange.c): it stays
 * pending, counted in its queue's depth, with t->wk set and t->run_pos its
 * index here, until the worker starts it without the lock (READY ->
 * STARTED, then published at its next exchange) or someone under the lock
 * takes it back (READY -> GONE: a cancel, a lost worker). The state is the
 * only field two threads race on: whoever moves it from READY owns the
 * task. */
enum { ATH_PRE_READY = 0, ATH_PRE_STARTED, ATH_PRE_GONE };
typedef struct {
  ath_task_t* task;
  atomic_int state;      /* ATH_PRE_* */
  int64_t started_at;    /* STARTED: wall ms and monotonic ns of the start, */
  uint64_t start_mono;   /* written before the state (read after it) */
} ath_prefetch_t;
#define ATH_PREFETCH_MAX 32 /* tasks claimed ahead per exchange */
#define ATH_PREFETCH_WINDOW_NS 100000u /* see ath_world_s.prefetch_window_ns */

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
  /* A workflow segment's recorded events (references, from its slot's
   * `rec`), added to the history first when the outcome is published. The
   * array stays with the outcome entry from one use to the next. */
  ath_wfev_t** evs;
  uint32_t nevs, evs_cap;
  /* The slot's `held` task (a reference) and held_evicted0: the exchange
   * puts it into the world when it is deferred (enter_steps), and wakes a
   * worker for it unless it claims it itself. */
  struct ath_task_s* held;
  uint64_t held_evicted0;
  uint64_t started_mono; /* the slot's start of the attempt */
  int64_t ended_at;      /* wall ms the slot ended it: its completedAt (the
                          * exchange may come after the worker started the
                          * next task, which must not seem to start first) */
  int sampled;           /* its run time (and completion) were recorded
                          * before the exchange took the lock */
  ath_wfev_t* done;      /* completed, with a parent workflow: the event
                          * it records (ath__wf_done_new), or NULL */
  ath_wfev_t* ended;     /* a workflow that completed: its own last event
                          * (ath__wf_ended_new), or NULL */
} ath_outcome_t;

/* Task counters (SEMANTICS §14.1). Each worker has its own set, bumped by
 * the terminal events of its own exchanges (the world lock held by that
 * exchange: no other thread writes it), so that workers finishing tasks do
 * not write one shared cache line; the world has one more for the events
 * of other threads (cancels, the engine, the monitor) and for the sums of
 * workers that left the list. Read under the lock, summed
 * (ath__counts_sum). */
typedef struct {
  int64_t completed, failed, retried, cancelled, quarantined;
} ath_counts_t;

/* A worker as the watchdog sees it (watchdog.c; under its lock). */
typedef struct {
  struct ath_worker_s *next, *prev; /* the watchdog's list */
  pthread_t tid;         /* the worker's thread (it registers itself) */
  unsigned runs;         /* lua_runs at the last look */
  unsigned ticks;        /* the hook's ticks at the last kick */
  unsigned waits;        /* looks since the last kick, its hook not run */
  int kicked;            /* kicked in this run of Lua */
} ath_watch_entry_t;

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
  int loop_closed;       /* its loop closed (no wake may reach it after) */
  /* Wake arrays holding it: collected under the world lock, woken after
   * it (ath__wake_all). A retired worker is freed once none holds it. */
  atomic_int wakes_held;
  atomic_int poke;       /* set with a wake: check the slots for cancels */
  atomic_uint wakes;     /* ath__worker_wake calls (a test reads it) */
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
  int wants_work;        /* asleep with a free slot: enqueuers wake it
                          * (written by ath__set_wants only) */
  int stop;              /* asked to stop once its slots are empty */
  int state;             /* ATH_WK_* */
  ath_waiter_t* inbox;   /* parked slots whose awaited task finished */
  ath_bucket_t resumes;  /* workflows whose coroutine it caches, due to resume
                          * here (counted in its queue's depth) */
  int64_t tasks_completed, tasks_failed;
  uint64_t turn;         /* 1 + the last round of new workflows it had its
                          * turn in, and what it may still start in it
                          * (claim's balance, exchange.c) */
  int64_t allowance;
  uint64_t xchg_mono;    /* the clock at its latest exchange (lock held) */
  /* Evicted tasks it ran, left by other workers for it to free (lock
   * held; exchange.c, route_dead), chained through hnext. */
  ath_task_t* dead;
  unsigned ndead;
  /* The world's task counters this worker's exchanges bumped (see
   * ath_counts_t), on cache lines of their own. */
  char counts_pad[64];
  ath_counts_t counts;
  char counts_end[64];
  /* Tasks claimed ahead, pre[0..npre) (written in its exchanges, under the
   * lock; each entry's state is atomic); pre_next: the next to start
   * (worker thread only). */
  ath_prefetch_t pre[ATH_PREFETCH_MAX];
  int npre, pre_next;
  int ahead;             /* how many the next exchange may claim ahead */
  uint64_t exchanged_ns; /* uv_hrtime() of its latest exchange (worker thread) */
  int may_flush;         /* a task's own code runs: its count hook may publish */
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
  /* For the watchdog's kicks (watchdog.c), written by the worker: */
  _Atomic(lua_State*) lua_co; /* the task coroutine being resumed, or NULL */
  atomic_uint lua_runs;  /* resumes of task coroutines: one that lasts keeps it */
  ath_watch_entry_t watch;
  /* In its queue's sleepers (ath_subq_t): guarded by that queue's sub
   * lock; `listed` is read without it too (ath__sub_listen). */
  ath_worker_t* sleep_next;
  atomic_int listed;
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
  ath_task_t* dead_orphans; /* unlisted workers' `dead` (lock held) */
  int64_t nterm;
  /* Tasks that left RAM so far: written under the lock, read without it
   * by a step that enters the world later (ath__world_step_enter). */
  atomic_uint_fast64_t nevicted;
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
  /* Tasks in the queues' submit lists (ath_subq_t), changed under their
   * locks: 0 lets ath__submits_drain return at once. */
  atomic_llong submitted;
  /* hybrid: ndirty as the latest drain left it, for submitters that do not
   * take the world lock to see whether the store is behind */
  atomic_llong dirty_hint;
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
  ath_worker_t** retired;/* lost workers, kept until free (their thread may
                          * still come back from the C call it was stuck in) */
  int nretired;
  /* Retired workers, joined, freed by the engine thread once no wake can
   * reach them any more (wakes_held): the pool may grow and shrink for weeks
   * without keeping a loop or a struct per retired worker. */
  ath_worker_t** graveyard;
  int ngrave;
  int engine_stop;
  /* Counters (SEMANTICS §14.1). */
  int64_t started_at;
  ath_counts_t counts;    /* see ath_counts_t */
  /* While a worker's exchange holds the lock: its counters, which the
   * terminal events bump (NULL: `counts`). */
  ath_counts_t* counting;
  int64_t n_scheduled, n_running;
  /* The latency and throughput rings below are guarded by tel_lock, not
   * the world lock: a worker records its outcomes' samples before its
   * exchange takes the world lock and its claims' after (exchange.c). It
   * may be taken with the world lock held, never the other way round. */
  uv_mutex_t tel_lock;
  const struct ath_task_s* precounted; /* lock held: the task whose completion the
                          * exchange that ends it counted in the rings already */
  int64_t tput[3600];     /* completions per wall second, ring by second */
  int64_t tput_sec;       /* the second tput[tput_sec % 3600] counts */
  int64_t tput_ds[20];    /* completions per 100 ms, ring by tenth (perSecond) */
  int64_t tput_dsec;      /* the tenth tput_ds[tput_dsec % 20] counts */
  ath_lat_ring_t lat_wait, lat_run;
  /* Shutdown: while `draining`, workers still claim queued tasks (and a
   * workflow's steps are still accepted); then the results. */
  int draining;
  /* How long after its exchange a worker may still start tasks it claimed
   * ahead, and after which the count hook of a task still running publishes
   * what ended before it and gives those back (tests lengthen it). */
  uint64_t prefetch_window_ns;
  struct ath_task_s** held; /* workflows a shutdown refused a command: queued when it ends */
  ath_buf_t evbuf;       /* scratch for the outcome events workflows record (workflow.c) */
  int nheld, held_cap;
  int drained, requeued, abandoned;
  void (*start_hook)(ath_world_t* w); /* tests only: see ath__world_set_start_hook */
  /* tests only: called by the store thread once it grew its batch memory
   * for `rows` (store.c bufs_prefault), set under the lock */
  void (*store_grow_hook)(ath_world_t* w, size_t rows);
  /* The manual clock (clock = "manual"): time moves only in advance(). */
  int manual;
  int64_t vbase_wall;    /* epoch ms when the manual clock was made */
  uint64_t vbase_mono;   /* its monotonic ns then */
  atomic_ullong vmono;   /* monotonic ns now; wall time follows from it */
  ath_heap_t vtimers;    /* workers' timers (ath_vtimer_t) by due time */
  ath_hook_t* hook;      /* webhooks, or NULL */
  /* While a worker's exchange holds the lock: where its task events go,
   * queued once it unlocks (NULL: queued at once). */
  struct ath_xhold_s* hook_held;
  struct ath_watch_s* watch; /* the watchdog (watchdog.c), from start to free */
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
  uint64_t* dirty_ns;    /* hybrid: when each one's oldest change not yet
                          * written was made (uv_hrtime; ascending); room
                          * for dirty_cap */
  size_t ndirty, dirty_cap;
  ath_sched_t** sdirty;  /* changed schedules, each holding a reference */
  size_t nsdirty, sdirty_cap;
  uint64_t gen;          /* generation being collected */
  uint64_t committed_gen;/* every change up to this one is on disk */
  uint64_t store_rows;   /* task rows the commits wrote (tests) */
  int store_stop;
  int store_ok;          /* the last commit succeeded (/healthz) */
  atomic_int store_fault;/* degraded: the code execute gets (ATH_ENOSPC,
                          * ATH_EIO, ...) until a commit succeeds again */
  int store_broken;      /* the file failed quick_check after an I/O error:
                          * no more writes until a restart */
  char store_err[256];
  struct ath_dq_s* dq;   /* the PostgreSQL backend (storage/store_pg.c), or NULL */
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

/* A lua_Alloc body that keeps *used up to date and refuses growth past
 * `limit` (Lua then raises a memory error in the code that asked). */
void* ath__metered_alloc(size_t* used, size_t limit, void* ptr, size_t osize, size_t nsize);

/* The runtime hooks ath_runtime_install() set, or NULL. Thread: any. */
const ath_runtime_hooks_t* ath__runtime_hooks(void);

/* Creates and starts a worker thread serving `q`. The worker loads its Lua
 * state and then, with `wait`, posts w->ready (check start_rc afterwards);
 * without, nobody waits: its state leaves ATH_WK_STARTING when it is loaded
 * (RUNNING, or STOPPED with start_rc set). Caller holds no lock.
 * Returns 0 or a libuv error (then nothing was started). */
int ath__worker_spawn(ath_world_t* w, ath_queue_t* q, int wait, ath_worker_t** out);
/* Wakes the worker's loop. Thread: any. */
void ath__worker_wake(ath_worker_t* wk);
/* Joins the thread and closes its loop. Call after it was asked to stop,
 * once no wake can reach it. */
void ath__worker_join(ath_worker_t* wk);
/* Joins it if need be, closes its loop and frees it (with the task
 * references a lost worker kept). */
void ath__worker_free(ath_worker_t* wk);
/* Wakes the workers a critical section collected into wks[0..n) (lock not
 * held; see wakes_held). */
void ath__wake_all(ath_worker_t** wks, int n);

/* watchdog.c: a thread per world that kicks workers whose task runs Lua
 * for long, so its hook checks the deadlines (see there). Start before the
 * first worker; stop once the workers are joined; free with the world. */
int ath__watch_start(ath_world_t* w, char* err, size_t errlen);
void ath__watch_stop(ath_world_t* w);
void ath__watch_free(ath_world_t* w);
/* A worker joins (on its thread, before any task) and leaves (before its
 * thread ends). */
void ath__watch_add(ath_world_t* w, ath_worker_t* wk);
void ath__watch_remove(ath_world_t* w, ath_worker_t* wk);
/* worker.c: the kick's signal handler, on wk's thread: sets the count hook
 * on the task coroutine it resumes, if any. Async-signal-safe. */
void ath__worker_kicked(ath_worker_t* wk);

/* Logs an engine message (printf-style) at `level` with optional fields.
 * Thread: any; never blocks on I/O. Call without the world lock held when
 * you can (formatting happens in the caller). */
void ath__logf(ath_world_t* w, ath_log_level_t level, const ath_log_field_t* fields, size_t n,
               const char* fmt, ...) __attribute__((format(printf, 5, 6)));

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
/* Publishes the worker's outcomes and the starts of tasks it claimed ahead,
 * and gives back those it has not started, claiming nothing (a task of its
 * runs long: its count hook calls this). */
void ath__world_flush(ath_world_t* w, ath_worker_t* wk);
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

/* The occurrences of c from `first` up to `now` to fire per catch_up
 * (SEMANTICS §11): none → none; one → the latest; all → each in order, at
 * most ATH_MAX_CATCH_UP (the older ones counted in *dropped). Fills out
 * (ATH_MAX_CATCH_UP entries), oldest first; returns how many. */
#define ATH_MAX_CATCH_UP 1000
size_t ath__sched_missed(const ath_cron_t* c, int local_tz, int64_t first, int64_t now, int catch_up,
                         int64_t out[ATH_MAX_CATCH_UP], int64_t* dropped);
/* Emits schedule.fired{scheduleId, taskId, dueAt} (lock held). */
void ath__sched_fired(ath_world_t* w, const char* sched_id, const char* task_id, int64_t due);

/* Fires due schedules and re-arms the schedule timer. Engine thread. */
void ath__sched_tick(ath_world_t* w);
/* Drops a reference to a schedule, freeing it with the last one. */
void ath__sched_release(ath_sched_t* s);
/* Frees every schedule (world teardown). */
void ath__sched_free_all(ath_world_t* w);


/* A task's end: what ath__finish_task hands to each consumer. */
typedef struct {
  ath_task_t* t;
  ath_status_t st;       /* the terminal state */
  int64_t now;           /* wall ms */
} ath_term_ev_t;

/* world.c, exchange.c, retry.c, workflow.c, telemetry.c, vclock.c: the
 * world's parts calling each other (lock held unless noted) ------------- */

/* exchange.c */
int ath__add_wake(ath_worker_t** wake, int nwake, ath_worker_t* wk);
ath_worker_t* ath__worker_by_id(ath_world_t* w, int id);
int ath__cancel_locked(ath_world_t* w, ath_task_t* t, int64_t now, ath_worker_t** wake, int nwake, int* accepted);
void ath__emit_task(ath_world_t* w, ath_task_t* t, int kind, int64_t now);
int ath__finish_task(ath_world_t* w, ath_task_t* t, ath_status_t st, int64_t now, ath_worker_t** wake, int nwake);
/* A task another node ran ended (PostgreSQL backend): only its waiters
 * and retention here hear of it (no counters, webhooks or store write). */
int ath__finish_remote(ath_world_t* w, ath_task_t* t, ath_status_t st, int64_t now, ath_worker_t** wake, int nwake);
int ath__make_ready(ath_world_t* w, ath_task_t* t);
/* Sets wk->wants_work, counted in its queue's `wanting` (lock held). */
static inline void ath__set_wants(ath_worker_t* wk, int on) {
  wk->queue->wanting += (on != 0) - (wk->wants_work != 0);
  wk->wants_work = on != 0;
  if (!on && atomic_load_explicit(&wk->listed, memory_order_relaxed))
    ath__sub_unlisten(wk); /* a submitter no longer wakes it */
}
int ath__pick_sleepers(ath_world_t* w, ath_queue_t* q, int64_t n, ath_worker_t** out, int cap);
void ath__set_error(ath_task_t* t, int code, const char* message);
int ath__unqueue(ath_world_t* w, ath_task_t* t);
void ath__wake_blocked(ath_world_t* w, const ath_task_t* t);
int ath__wake_runner(ath_task_t* t, ath_worker_t** wake, int nwake);
int ath__prefetch_lost(ath_world_t* w, ath_worker_t* wk, ath_worker_t** wake, int nwake);
int64_t ath__prefetched(const ath_world_t* w);
/* retry.c */
int64_t ath__backoff_ms(const ath_activity_t* a, int n);
int ath__attempt_failed(ath_world_t* w, ath_task_t* t, const ath_outcome_t* o, int64_t now, uint64_t mono, ath_worker_t** wake, int nwake, int* wake_engine);
int ath__retry_task(ath_world_t* w, ath_task_t* t, const ath_outcome_t* o, int64_t now, uint64_t mono, int* wake_engine);
/* telemetry.c */
int ath__add_worker(ath_world_t* w, ath_queue_t* q, int wait, char* err, size_t errlen);
void ath__lat_add(ath_lat_ring_t* r, double ms, int64_t at);
void ath__monitor_cb(uv_timer_t* h);
void ath__scale_cb(uv_timer_t* h);
void ath__tput_add(ath_world_t* w, int64_t now_ms);
void ath__tput_undo(ath_world_t* w, int64_t now_ms);
/* The counters the current holder of the lock bumps (lock held). */
static inline ath_counts_t* ath__counts(ath_world_t* w) {
  return w->counting != NULL ? w->counting : &w->counts;
}
void ath__counts_sum(const ath_world_t* w, ath_counts_t* out);
int ath__telemetry_on_end(ath_world_t* w, const ath_term_ev_t* ev, ath_worker_t** wake, int nwake);
/* vclock.c */
int ath__vtimer_less(const void* a, const void* b);
/* workflow.c */
int ath__ev_begin(ath_buf_t* b, const ath_task_t* t, const char* type, int64_t now);
int ath__ev_int(ath_buf_t* b, const char* key, int64_t v);
void ath__ev_raw(ath_buf_t* b, const char* key, const char* json, size_t len);
int ath__hold_workflow(ath_world_t* w, ath_task_t* t);
int ath__home_open(const ath_world_t* w, const ath_worker_t* wk);
void ath__wf_claimed(ath_task_t* t);
/* PostgreSQL: a resumed claim of workflow t brought the outcome of what
 * its last park waited for (command `seq` of ATH_PARK_* `kind`): records
 * timer.fired, or the task's outcome when `status` is terminal (lock held). */
void ath__wf_record_row(ath_world_t* w, ath_task_t* t, int kind, int64_t seq, int status,
                        const char* result, const char* error);
/* PostgreSQL: a claim of workflow t found that a child failed under
 * cascade with `error` (its row's JSON, or NULL): t fails with it, its
 * other children are cancelled (§8). Returns the new nwake (lock held). */
int ath__wf_cascade_row(ath_world_t* w, ath_task_t* t, const char* error, ath_worker_t** wake,
                        int nwake);
void ath__wf_publish(ath_world_t* w, ath_task_t* t, ath_outcome_t* o);
void ath__wf_cancel_requested(ath_world_t* w, ath_task_t* t, int64_t now);
int ath__wf_park(ath_world_t* w, ath_task_t* t, ath_outcome_t* o, int64_t now, uint64_t mono, ath_worker_t** wake, int nwake, int* wake_engine);
ath_task_t* ath__wf_pop_home(ath_worker_t* wk);
int ath__wf_push_buf(ath_world_t* w, ath_task_t* t, ath_buf_t* b);
int ath__wf_resume(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake);
int ath__wf_run_timed_out(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake);
int ath__wf_terminal(ath_world_t* w, ath_task_t* t, int64_t now, ath_worker_t** wake, int nwake);
int ath__wf_timer_fired(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake);
int ath__wf_unhome(ath_world_t* w, ath_worker_t* wk, ath_worker_t** wake, int nwake);
/* world.c */
/* *evicted0: when the step is deferred (not in the world yet: the exchange
 * that publishes the segment puts it in, ath__world_step_enter),
 * w->nevicted as it was; otherwise ATH_NOT_DEFERRED. */
#define ATH_NOT_DEFERRED UINT64_MAX
int ath__world_execute_by(ath_worker_t* wk, const char* name, char* payload, size_t len,
                          const ath_exec_opts_t* opts, ath_task_t** out, uint64_t* evicted0, char* err,
                          size_t errlen);
/* Puts step t, deferred by its workflow's execute, into the world (lock
 * held) as execute's locked part would have: numbered, in the table and
 * its workflow's list, ready in its queue. Returns t; or the task of the
 * same activity under its id that execute would have handed over (the
 * workflow's own, which a segment of a worker since lost started, or a
 * finished one) (t stays out: the caller binds the park to that one); or
 * NULL when the id is another activity's, an unfinished task of another
 * owner's, or may be a task that left RAM since evicted0 (t stays out:
 * the workflow fails with EINVAL). *behind: the hybrid store is at its
 * backlog bound. */
ath_task_t* ath__world_step_enter(ath_world_t* w, ath_task_t* t, uint64_t evicted0, int* wake_engine,
                                  int* behind);
void ath__engine_tick(ath_world_t* w);
void ath__release_all(ath_task_t** a, size_t n);
void ath__set_err(char* err, size_t errlen, const char* fmt, const char* a);
/* The task of this id in the table (submissions drained first), or NULL. */
ath_task_t* ath__table_get(ath_world_t* w, const char* id, uint64_t hash);
/* Moves the tasks of every queue's submit list into the table, the ready
 * queues and the store's list (lock held); see ath_subq_t. */
void ath__submits_drain(ath_world_t* w);
void ath__table_unlink(ath_world_t* w, ath_task_t* t);
void ath__term_push(ath_world_t* w, ath_task_t* t);

/* webhook.c: LocalBackend webhooks (SEMANTICS §15) ------------------------- */

enum {
  ATH_EV_TASK_COMPLETED = 0, ATH_EV_TASK_FAILED, ATH_EV_TASK_RETRYING, ATH_EV_TASK_QUARANTINED,
  ATH_EV_TASK_CANCELLED, ATH_EV_SCHEDULE_FIRED, ATH_EV_WORKER_LOST, ATH_EV_COUNT
};
/* Starts the delivery thread for `url` (or `sink`, when not NULL) and the
 * events in `mask` (bit per ATH_EV_*). Returns 0 or ATH_ENOMEM with err
 * set. */
int ath__hook_start(const char* url, const ath_event_sink_t* sink, unsigned mask, ath_log_t* log,
                    ath_hook_t** out, char* err, size_t errlen);
/* Queues an event with `data` (JSON, copied). Never blocks on I/O; drops
 * the oldest event past the outbox bound. Thread: any (h may be NULL). */
void ath__hook_emit(ath_hook_t* h, int kind, int64_t at, const char* data, size_t len);
/* Queues a task event (lock held is fine: it copies the error, takes a
 * reference to t and writes no JSON; the webhook thread writes the body
 * from t's id, name, kind, queue and parent and the status, attempt and
 * error recorded now). */
void ath__hook_emit_task(ath_hook_t* h, int kind, int64_t at, ath_task_t* t, const char* error,
                         size_t error_len);
/* The same event, made now (lock held is fine) but kept on the caller's
 * list `held` rather than queued, so that a critical section queues its
 * events once it has let go of the world lock, with ath__hook_post (the
 * outbox's mutex is then never taken inside the world lock). */
void ath__hook_hold_task(ath_hook_t* h, ath_event_t** held, int kind, int64_t at, ath_task_t* t,
                         const char* error, size_t error_len);
/* The same, made with no lock held from the state the task had when the
 * event happened (status, attempt; no error) and a reference to it, which
 * the event takes over (released if it cannot be made). */
void ath__hook_hold_ref(ath_hook_t* h, ath_event_t** held, int kind, int64_t at, ath_task_t* t,
                        ath_status_t status, int attempt);
/* Puts an event made by either on `held`, as they do. */
void ath__hook_push(ath_event_t** held, ath_event_t* e);
/* Queues the events ath__hook_hold_task kept on `held`, in the order they
 * were made. Thread: any, no lock held. */
void ath__hook_post(ath_hook_t* h, ath_event_t* held);
/* The outbox's mutex (tests: to hold it while a worker publishes). */
uv_mutex_t* ath__hook_outbox_lock(ath_hook_t* h);
int ath__hook_wants(const ath_hook_t* h, int kind);
/* Delivers what is due within a short grace, then stops and frees. */
void ath__hook_stop(ath_hook_t* h);
/* ATH_EV_* of an event name ("task.failed"), or -1. */
int ath__hook_event(const char* name);
uint64_t ath__hook_dropped(const ath_hook_t* h);
uint64_t ath__hook_delivered(const ath_hook_t* h);
/* A task event's fields, for a body written before the event is queued
 * (the PostgreSQL backend stores it in its outbox first). */
typedef struct {
  const char *id, *name, *queue, *parent_id;
  int workflow, status, attempt;
  const char* error; /* JSON, or NULL */
  size_t error_len;
} ath_hook_task_t;
/* Writes the whole body of a task event with a new delivery id into
 * *body (malloc'd, *len bytes). Returns 0 or ATH_ENOMEM. */
int ath__hook_task_event(int kind, int64_t at, const ath_hook_task_t* f, char delivery[37], char** body,
                         size_t* len);
/* Queues an event whose body is written (owned from here on); `key` > 0 is
 * passed to the done callback once it was delivered or given up. */
void ath__hook_emit_stored(ath_hook_t* h, int kind, const char* delivery, int64_t at, char* body,
                           size_t len, int64_t key);
/* Sets (fn) or clears (NULL) the done callback: it runs on the webhook
 * thread under the hook's lock, so after a clear it never runs again. */
void ath__hook_on_done(ath_hook_t* h, void (*fn)(void* ud, int64_t key), void* ud);

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
