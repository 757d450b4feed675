/* The executor: the claim/publish exchange with workers, the end of a
 * task (one terminal event, consumed by the store, telemetry, webhooks,
 * waiters, workflows and retention), waking workers and waiters. Runs
 * with the world lock held unless noted. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "config.h"
#include "http.h"
#include "store.h"
#include "db.h"
#include "gw_server.h"

/* Collects up to `n` sleeping workers of `q` into `out` (lock held) and
 * clears their flags; the caller wakes them after unlocking. */
int ath__pick_sleepers(ath_world_t* w, ath_queue_t* q, int64_t n,
                         ath_worker_t** out, int cap) {
  int k = 0;
  if (q->wanting == 0)
    return 0; /* all busy: the usual case under load looks at no worker */
  /* idle workers first: one running a task cannot start another until
   * that task yields (SEMANTICS §5.2: the fewest running wins) */
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < w->nworkers && k < cap && k < n; i++) {
      ath_worker_t* wk = w->workers[i];
      if (wk->queue == q && wk->wants_work && wk->state != ATH_WK_STOPPED &&
          (pass == 1 || wk->running == 0)) {
        ath__set_wants(wk, 0);
        atomic_fetch_add_explicit(&wk->wakes_held, 1, memory_order_relaxed);
        out[k++] = wk;
      }
    }
  }
  return k;
}

/* Wakes the workers a critical section collected (lock not held). Each
 * collection counted the worker in wakes_held, so a retired worker is
 * freed only once no such wake can still reach it. */
void ath__wake_all(ath_worker_t** wks, int n) {
  for (int i = 0; i < n; i++) {
    ath__worker_wake(wks[i]);
    atomic_fetch_sub_explicit(&wks[i]->wakes_held, 1, memory_order_release);
  }
}

/* Moves a ready task into its queue (lock held). */
int ath__make_ready(ath_world_t* w, ath_task_t* t) {
  t->status = ATH_PENDING;
  ath__store_mark(w, t);
  return ath__queue_push(t->queue, t);
}

/* Hands the slots waiting on `t` to their workers (lock held). */
/* Adds wk to wake[0..nwake) unless it is there; returns the new nwake. */
int ath__add_wake(ath_worker_t** wake, int nwake, ath_worker_t* wk) {
  for (int i = 0; i < nwake; i++)
    if (wake[i] == wk)
      return nwake;
  if (nwake < MAX_WORKERS && wk->state != ATH_WK_STOPPED) { /* its loop may be closed */
    atomic_fetch_add_explicit(&wk->wakes_held, 1, memory_order_relaxed);
    wake[nwake++] = wk;
  }
  return nwake;
}

int ath__waiter_deliver(ath_waiter_t* wt, ath_worker_t** wake, int nwake) {
  ath_worker_t* wk = wt->slot->wk;
  wt->next = wk->inbox;
  wk->inbox = wt;
  return ath__add_wake(wake, nwake, wk);
}

/* Wakes the threads blocked on t, or on any task when t is NULL (lock
 * held). */
void ath__wake_blocked(ath_world_t* w, const ath_task_t* t) {
  for (ath_bwait_t* b = w->bwaiters; b != NULL; b = b->next)
    if (t == NULL || b->task == t)
      uv_cond_signal(&b->cond);
}

static int deliver_waiters(ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath_task_x_t* x = ath__task_xr(t);
  ath_waiter_t* wt = x->waiters; /* the caller saw some */
  x->waiters = NULL;
  while (wt != NULL) {
    ath_waiter_t* next = wt->next;
    wt->task = t;
    nwake = ath__waiter_deliver(wt, wake, nwake);
    wt = next;
  }
  return nwake;
}

/* The task events of a worker's exchange (w->hook_held), in order. One
 * without an error is only noted under the lock (a reference to the task
 * and the state it had) and made once the exchange unlocks; one with an
 * error is made at once (its error is copied while nobody changes it). */
#define XCHG_EVS 64
typedef struct {
  ath_event_t* made;     /* made under the lock, or NULL */
  ath_task_t* task;      /* else: a reference, and its state then */
  int kind, attempt;
  ath_status_t status;
  int64_t at;
} xchg_ev_t;
struct ath_xhold_s {
  int n;
  xchg_ev_t ev[XCHG_EVS];
  ath_event_t* held;     /* the events made from them, newest first */
};

/* Makes the events noted in h, in order, onto h->held (lock held or not). */
static void evs_make(ath_hook_t* hook, ath_xhold_t* h) {
  for (int i = 0; i < h->n; i++) {
    xchg_ev_t* e = &h->ev[i];
    if (e->made != NULL) {
      ath__hook_push(&h->held, e->made);
    } else {
      ath__hook_hold_ref(hook, &h->held, e->kind, e->at, e->task, e->status, e->attempt);
    }
  }
  h->n = 0;
}

static void hold_event(ath_world_t* w, ath_task_t* t, int kind, int64_t now, int err) {
  ath_xhold_t* h = w->hook_held;
  if (!ath__hook_wants(w->hook, kind))
    return;
  if (h->n == XCHG_EVS)
    evs_make(w->hook, h); /* full: the ones before it are made now */
  xchg_ev_t* e = &h->ev[h->n];
  e->made = NULL;
  if (err) {
    ath__hook_hold_task(w->hook, &e->made, kind, now, t, t->error, t->error_len);
    h->n += e->made != NULL;
    return;
  }
  ath_task_retain(t);
  e->task = t;
  e->kind = kind;
  e->status = t->status;
  e->attempt = t->attempt;
  e->at = now;
  h->n++;
}

/* Records a task event for the webhooks (lock held): the task and its
 * state, no JSON; the webhook thread writes the body. Inside a worker's
 * exchange it is made and queued once the exchange unlocks (xchg_end). */
void ath__emit_task(ath_world_t* w, ath_task_t* t, int kind, int64_t now) {
  if (w->hook == NULL || w->cfg.backend_url != NULL)
    return; /* the PostgreSQL backend: sent once the fenced write committed (store_pg.c) */
  int err = t->error != NULL && t->status != ATH_COMPLETED;
  if (w->hook_held != NULL)
    hold_event(w, t, kind, now, err);
  else
    ath__hook_emit_task(w->hook, kind, now, t, err ? t->error : NULL, err ? t->error_len : 0);
}

/* The end of a task (lock held): finishing it records one terminal event,
 * and each part of the engine that cares consumes it, in this order: the
 * store (its row), the expiry heap, telemetry (counters, throughput), the
 * webhooks, the task's waiters, its workflow (parent or its own), and the
 * recent-terminal list (retention). Each returns the new nwake. */
static int end_store(ath_world_t* w, const ath_term_ev_t* ev, ath_worker_t** wake, int nwake) {
  (void)wake;
  ath__store_mark(w, ev->t);
  if (ath__task_exp_idx(ev->t) != UINT32_MAX)
    ath__heap_remove(&w->expiry, ath__task_xr(ev->t));
  return nwake;
}

static int end_webhooks(ath_world_t* w, const ath_term_ev_t* ev, ath_worker_t** wake, int nwake) {
  (void)wake;
  static const int kinds[] = {
    [ATH_COMPLETED] = ATH_EV_TASK_COMPLETED, [ATH_FAILED] = ATH_EV_TASK_FAILED,
    [ATH_CANCELLED] = ATH_EV_TASK_CANCELLED, [ATH_QUARANTINED] = ATH_EV_TASK_QUARANTINED,
    [ATH_COMPENSATED] = ATH_EV_TASK_FAILED,
  };
  ath__emit_task(w, ev->t, kinds[ev->st], ev->now);
  return nwake;
}

static int end_waiters(ath_world_t* w, const ath_term_ev_t* ev, ath_worker_t** wake, int nwake) {
  if (ath__task_waiters(ev->t) != NULL)
    nwake = deliver_waiters(ev->t, wake, nwake);
  if (w->bwaiters != NULL)
    ath__wake_blocked(w, ev->t);
  if (w->cond_waiters > 0)
    uv_cond_broadcast(&w->cond);
  return nwake;
}

static int end_workflow(ath_world_t* w, const ath_term_ev_t* ev, ath_worker_t** wake, int nwake) {
  if (ev->t->wf != NULL || ath__task_parent(ev->t) != NULL)
    nwake = ath__wf_terminal(w, ev->t, ev->now, wake, nwake);
  return nwake;
}

static int end_retention(ath_world_t* w, const ath_term_ev_t* ev, ath_worker_t** wake, int nwake) {
  (void)wake;
  ath__term_push(w, ev->t);
  return nwake;
}

static int (*const term_consumers[])(ath_world_t*, const ath_term_ev_t*, ath_worker_t**, int) = {
  end_store, ath__telemetry_on_end, end_webhooks, end_waiters, end_workflow, end_retention,
};

/* Moves `t` to the terminal state `st` (lock held) and hands the event to
 * the consumers above. Returns the new number of workers to wake. */
int ath__finish_task(ath_world_t* w, ath_task_t* t, ath_status_t st, int64_t now,
                     ath_worker_t** wake, int nwake) {
  t->status = st;
  t->completed_at = now;
  ath_term_ev_t ev = {t, st, now};
  for (size_t i = 0; i < sizeof(term_consumers) / sizeof(term_consumers[0]); i++)
    nwake = term_consumers[i](w, &ev, wake, nwake);
  return nwake;
}

int ath__finish_remote(ath_world_t* w, ath_task_t* t, ath_status_t st, int64_t now,
                       ath_worker_t** wake, int nwake) {
  t->status = st;
  t->completed_at = now;
  ath_term_ev_t ev = {t, st, now};
  nwake = end_waiters(w, &ev, wake, nwake);
  return end_retention(w, &ev, wake, nwake);
}

/* Takes an unborn task back out of the world (lock held): its enqueue
 * could not be committed, so execute answers `code` instead of a handle.
 * It never ran (unborn tasks are not claimed); it leaves its queue or the
 * delay heap and the table, and ends as failed with `code` for anyone who
 * saw it meanwhile (a query, an idempotent execute). A workflow's child is
 * not withdrawn: its workflow runs on, and waits for the store. Returns
 * the new nwake. */
int ath__world_withdraw(ath_world_t* w, ath_task_t* t, int code, ath_worker_t** wake,
                        int nwake, int* withdrawn) {
  *withdrawn = 0;
  if (!t->unborn || t->withdrawn || ath__task_parent(t) != NULL)
    return nwake;
  *withdrawn = 1;
  if (t->status == ATH_PENDING && nwake < MAX_WORKERS) /* the born tasks behind it */
    nwake += ath__pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
  if (!ATH_IS_TERMINAL(t->status)) {
    ath__unqueue(w, t);
    ath__set_error(t, code, "its enqueue could not be stored");
    t->status = ATH_FAILED;
  }
  if (ath__task_exp_idx(t) != UINT32_MAX)
    ath__heap_remove(&w->expiry, ath__task_xr(t));
  int listed = ath__table_get(w, t->id, ath__hash_id(t->id)) == t;
  ath__table_unlink(w, t);
  t->withdrawn = 1;
  t->purged = 1; /* its row is deleted, should a failed commit have stored it */
  t->err_code = code;
  if (ath__task_waiters(t) != NULL)
    nwake = deliver_waiters(t, wake, nwake);
  if (w->bwaiters != NULL)
    ath__wake_blocked(w, t);
  if (listed)
    ath_task_release(t); /* the table's; the caller's and the store's remain */
  return nwake;
}

/* The enqueues of batch[0..n) are committed (lock held): their tasks may
 * run now; wakes sleeping workers of their queues. Returns the new nwake. */
int ath__world_born(ath_world_t* w, ath_task_t* const* batch, size_t n, ath_worker_t** wake,
                    int nwake) {
  ath_queue_t* none = NULL; /* the last queue found without sleepers */
  for (size_t i = 0; i < n; i++) {
    ath_task_t* t = batch[i];
    if (!t->unborn)
      continue;
    t->unborn = 0;
    if (t->status != ATH_PENDING || t->queue == none || nwake >= MAX_WORKERS)
      continue;
    int k = ath__pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
    if (k == 0)
      none = t->queue;
    nwake += k;
  }
  return nwake;
}

/* Replaces t's error with {code, message, retryable = false}. Lock held;
 * on allocation failure the task keeps err_code only. */
void ath__set_error(ath_task_t* t, int code, const char* message) {
  char buf[256];
  int retryable = code == ATH_ETIMEDOUT || code == ATH_EWORKERLOST || code == ATH_EHEARTBEAT;
  int n = snprintf(buf, sizeof(buf),
                   "{\"code\":\"%s\",\"message\":\"%s\",\"retryable\":%s,\"attempt\":%d}",
                   ath_err_name(code), message, retryable ? "true" : "false", t->attempt);
  free(t->error);
  t->error = ath__memdup(buf, (size_t)n);
  t->error_len = t->error ? (size_t)n : 0;
  t->err_code = code;
}

/* The listed (serving, not retired or lost) worker of this id, or NULL
 * (lock held). */
ath_worker_t* ath__worker_by_id(ath_world_t* w, int id) {
  for (int i = 0; id != 0 && i < w->nworkers; i++)
    if (w->workers[i]->id == id)
      return w->workers[i];
  return NULL;
}

/* Takes a task claimed ahead back from its worker (lock held): 1 when it
 * had not started it (it never will), 0 when it had (it runs). */
static int take_prefetched(ath_task_t* t) {
  ath_prefetch_t* e = &t->wk->pre[t->run_pos];
  int ready = ATH_PRE_READY;
  if (!atomic_compare_exchange_strong_explicit(&e->state, &ready, ATH_PRE_GONE, memory_order_acq_rel,
                                               memory_order_acquire))
    return 0;
  t->queue->depth--;
  t->wk = NULL;
  return 1;
}

/* Takes a waiting workflow (or any task not in a slot) out of its queue or
 * heap. Returns 0, or -1 when it is in a slot. */
int ath__unqueue(ath_world_t* w, ath_task_t* t) {
  if (t->remote)
    return 0; /* a proxy of a shared row: in no queue or heap here */
  if (t->wk != NULL && t->status == ATH_PENDING) /* claimed ahead by a worker */
    return take_prefetched(t) ? 0 : -1;
  int where = t->wf ? t->wf->where : ATH_WF_SLOT;
  if (t->wf && where == ATH_WF_HOME) {
    /* its home still serves (a worker that stops or is lost hands its
     * resumptions back first), so it is listed */
    ath_worker_t* home = ath__worker_by_id(w, t->wf->home);
    if (home != NULL)
      ath__list_unlink(&home->resumes, t);
    t->queue->depth--;
    t->wf->where = ATH_WF_PARKED;
  } else if (t->status == ATH_PENDING || (t->wf && where == ATH_WF_QUEUED)) {
    ath__queue_remove(t->queue, t);
  } else if (t->heap_idx != UINT32_MAX) {
    ath__heap_remove(&w->delayed, t);
    w->n_scheduled--;
  } else if (t->status == ATH_RUNNING || t->status == ATH_COMPENSATING) {
    if (t->wf == NULL || where == ATH_WF_SLOT)
      return -1;
  }
  if (t->wf != NULL && t->wf->wait_task != NULL) {
    ath_task_release(t->wf->wait_task);
    t->wf->wait_task = NULL;
  }
  return 0;
}

int ath__wake_runner(ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath_worker_t* wk = t->wk;
  if (wk == NULL)
    return nwake;
  atomic_store(&wk->poke, 1);
  return wake == NULL ? nwake : ath__add_wake(wake, nwake, wk);
}

/* Cancels t (lock held): at once unless a slot runs it, then at its next
 * yield point. Returns the new nwake; 0 in *accepted when refused. */
int ath__cancel_locked(ath_world_t* w, ath_task_t* t, int64_t now, ath_worker_t** wake,
                         int nwake, int* accepted) {
  *accepted = 0;
  if (ATH_IS_TERMINAL(t->status) || t->status == ATH_COMPENSATING)
    return nwake;
  *accepted = 1;
  if (atomic_load(&t->cancel_ns) == 0)
    atomic_store(&t->cancel_ns, ath__mono(w));
  ath__store_mark(w, t);
  if (t->wf != NULL)
    ath__wf_cancel_requested(w, t, now);
  if (ath__unqueue(w, t) == 0)
    return ath__finish_task(w, t, ATH_CANCELLED, now, wake, nwake);
  return ath__wake_runner(t, wake, nwake); /* its worker interrupts it */
}

/* Queue waits one exchange may sample: its claims and the starts of the
 * tasks it had claimed ahead. */
#define XCHG_WAITS (256 + ATH_PREFETCH_MAX)

/* What one critical section of a worker's collects (lock held). */
typedef struct {
  ath_worker_t** wake;   /* MAX_WORKERS of them */
  int nwake, wake_engine;
  int ended;             /* attempts published */
  int settled;           /* tasks claimed ahead that it settled */
  int64_t now;           /* wall ms, read before the lock */
  uint64_t mono;
  ath_xhold_t hold;      /* its webhook events, made and queued once it unlocks */
  int nwaits;            /* queue waits of its starts (ms), recorded once it unlocks */
  float waits[XCHG_WAITS];
} xchg_t;

/* Field by field: the samples' array is written before it is read. */
static void xchg_init(xchg_t* x, ath_world_t* w, ath_worker_t** wake, int nwake) {
  x->wake = wake;
  x->nwake = nwake;
  x->wake_engine = x->ended = x->settled = x->nwaits = 0;
  x->now = ath__wall(w);
  x->mono = ath__mono(w);
  x->hold.n = 0;
  x->hold.held = NULL;
}

/* Records the queue waits x sampled (tel_lock taken here; the world lock
 * may be held). */
static void waits_flush(ath_world_t* w, xchg_t* x) {
  if (x->nwaits == 0)
    return;
  uv_mutex_lock(&w->tel_lock);
  for (int i = 0; i < x->nwaits; i++)
    ath__lat_add(&w->lat_wait, x->waits[i], x->now);
  uv_mutex_unlock(&w->tel_lock);
  x->nwaits = 0;
}

/* A sample of one ring taken alone (tel_lock taken here). */
static void lat_add1(ath_world_t* w, ath_lat_ring_t* r, double ms, int64_t at) {
  uv_mutex_lock(&w->tel_lock);
  ath__lat_add(r, ms, at);
  uv_mutex_unlock(&w->tel_lock);
}

/* T4 (lock held): t leaves the queue for one of wk's slots, started at
 * wall `now` and monotonic `mono`. */
static void start_claimed(ath_world_t* w, ath_worker_t* wk, ath_task_t* t, int64_t now,
                          uint64_t mono, xchg_t* xc) {
  if (t->wf != NULL && t->wf->resuming) {
    t->wf->resuming = 0; /* the run goes on: same state, same attempt */
  } else {
    t->status = ATH_RUNNING;
    t->attempt++; /* counted before it runs, so a crash still uses a try */
    /* `now` was read before the lock: a task enqueued meanwhile must not
     * start before it was created */
    t->started_at = now < t->created_at ? t->created_at : now;
    t->start_mono = mono;
    if (t->wf != NULL && ath__task_limits(t)->timeout_ms > 0) { /* the run's limit, parked time too */
      ath_task_x_t* x = ath__task_xr(t); /* a workflow has one from the start */
      x->exp_mono = ath__after(mono, ath__task_limits(t)->timeout_ms);
      if (x->exp_idx == UINT32_MAX ? ath__heap_push(&w->expiry, x) == 0 : (ath__heap_fix(&w->expiry, x), 1))
        xc->wake_engine |= w->expiry.items[0] == x;
    }
  }
  if (t->wf != NULL)
    ath__wf_claimed(t);
  t->worker_id = wk->id;
  t->wk = wk;
  ath__store_mark(w, t);
  t->run_pos = wk->running;
  wk->running_tasks[wk->running++] = t;
  wk->queue->running++;
  w->n_running++;
  if (!w->cfg.no_metrics) { /* recorded once the exchange unlocks */
    if (xc->nwaits == XCHG_WAITS)
      waits_flush(w, xc);
    xc->waits[xc->nwaits++] = mono > t->ready_mono ? (float)((double)(mono - t->ready_mono) / 1e6) : 0;
  }
}

/* A task that waited past its scheduleToClose fails where it is (§6.2;
 * lock held). Returns whether it did. */
static int expired_waiting(ath_world_t* w, ath_task_t* t, xchg_t* x) {
  int64_t stc = ath__task_limits(t)->schedule_to_close_ms;
  if (stc <= 0 || x->now < t->scheduled_at + stc)
    return 0;
  ath__set_error(t, ATH_ETIMEDOUT, "scheduleToClose expired before the task could run");
  x->nwake = ath__finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED,
                              x->now, x->wake, x->nwake);
  return 1;
}

/* Puts a task claimed ahead back in its queue, in its place (lock held).
 * Returns 1, or 0 when it could not be (out of memory: it fails). */
static int give_back(ath_world_t* w, ath_task_t* t, xchg_t* x) {
  t->wk = NULL;
  if (ath__queue_unpop(t->queue, t) == 0)
    return 1;
  t->queue->depth--;
  ath__set_error(t, ATH_ENOMEM, "out of memory putting the task back in its queue");
  x->nwake = ath__finish_task(w, t, ATH_FAILED, x->now, x->wake, x->nwake);
  return 0;
}

/* Settles wk's tasks claimed ahead (lock held): the ones it started are
 * published as started (T4, at the time they started), the others go back
 * to their queue in their place (the last first: each goes to the head),
 * so that every exchange claims again in priority order (a task of a
 * higher priority that came meanwhile waits for one batch at most). The
 * next batch is twice this one when all of it started, else as many as
 * did (at least one): claiming more than a window holds only to give
 * them back is work for nothing. Returns how many went back. */
static int settle_prefetch(ath_world_t* w, ath_worker_t* wk, xchg_t* x) {
  int back = 0, started = 0, left = 0;
  if (atomic_load(&wk->lost))
    wk->npre = 0; /* the monitor settled them (ath__prefetch_lost) */
  for (int i = 0; i < wk->npre; i++) {
    ath_prefetch_t* e = &wk->pre[i];
    if (atomic_load_explicit(&e->state, memory_order_acquire) == ATH_PRE_STARTED) {
      e->task->queue->depth--;
      start_claimed(w, wk, e->task, e->started_at, e->start_mono, x);
      started++;
    }
  }
  for (int i = wk->npre - 1; i >= 0; i--) {
    ath_prefetch_t* e = &wk->pre[i];
    if (atomic_load_explicit(&e->state, memory_order_acquire) == ATH_PRE_READY) {
      back += give_back(w, e->task, x);
      left++;
    }
  }
  if (wk->npre > 0) {
    int next = left == 0 ? 2 * wk->ahead : started;
    wk->ahead = next < 1 ? 1 : next > ATH_PREFETCH_MAX ? ATH_PREFETCH_MAX : next;
  }
  x->settled += wk->npre;
  wk->npre = wk->pre_next = 0;
  return back;
}

/* Whether worker o may claim from q (lock held). */
static int serves(const ath_worker_t* o, const ath_queue_t* q) {
  return o->queue == q && !o->stop && o->state == ATH_WK_RUNNING;
}

/* The workers of q that may claim (lock held). */
static int serving(const ath_world_t* w, const ath_queue_t* q) {
  int n = 0;
  for (int i = 0; i < w->nworkers; i++)
    n += serves(w->workers[i], q);
  return n;
}

/* Claims ready activities of wk's queue ahead of its free slots (lock
 * held), `depth` being the queue's depth before this exchange claimed
 * `claimed` of them: up to wk->ahead, and no more than its fair
 * share of the depth over the queue's workers, so one worker does not hoard
 * a small backlog while others idle. They stay pending (T4 happens when
 * the worker starts one), counted in the depth. Workflows are not claimed
 * ahead (their claim hands them history), nor their steps' tasks (a step
 * runs on its workflow's worker when it comes next), nor tasks of the PostgreSQL
 * backend (it claims its own batch from the database). */
static void claim_ahead(ath_world_t* w, ath_worker_t* wk, int64_t depth, int claimed, xchg_t* x) {
  ath_queue_t* q = wk->queue;
  if (w->dq != NULL || wk->resumes.head != NULL || depth <= claimed)
    return;
  int nw = serving(w, q);
  int64_t share = (depth + (nw > 1 ? nw : 1) - 1) / (nw > 1 ? nw : 1) - claimed;
  while (wk->npre < share && wk->npre < wk->ahead) {
    ath_task_t* t = ath__queue_pop(q);
    if (t == NULL)
      break;
    if (expired_waiting(w, t, x))
      continue;
    if (t->wf != NULL || ath__task_parent(t) != NULL) { /* a step goes to its workflow's worker */
      if (ath__queue_unpop(q, t) == 0)
        q->depth++;
      else
        give_back(w, t, x); /* q->depth is already one less */
      break;
    }
    q->depth++; /* still pending: counted until it starts */
    ath_prefetch_t* e = &wk->pre[wk->npre];
    e->task = t;
    atomic_store_explicit(&e->state, ATH_PRE_READY, memory_order_relaxed);
    t->wk = wk;
    t->run_pos = wk->npre++;
  }
}

/* Whether no task of a higher priority than t waits in t's queue (lock
 * held). */
static int first_in_priority(const ath_queue_t* q, const ath_task_t* t) {
  for (int i = 0; i < q->nbuckets && q->buckets[i].priority > t->priority; i++)
    if (q->buckets[i].head != NULL)
      return 0;
  return 1;
}

/* Eager dispatch of workflow steps (lock held): the step activity a
 * segment of wk's started just before it parked (outcomes[0..nout)'s held
 * tasks) goes straight to a free slot of wk, ahead of older tasks of the
 * same priority, as Temporal dispatches an activity eagerly to the worker
 * whose workflow task scheduled it. The step runs where its workflow runs
 * anyway; taking it now rather than at its turn in the queue keeps the
 * workflow's coroutine and history hot in this worker's caches, so that
 * a step costs about what a task costs (issue 17) however deep the queue
 * is. A task of a higher priority waiting keeps the queue's order.
 * Returns how many went to slots. */
static int claim_held(ath_world_t* w, ath_worker_t* wk, int nout, ath_task_t** out, int max,
                      xchg_t* x) {
  ath_queue_t* q = wk->queue;
  int n = 0;
  for (int i = 0; i < nout && n < max; i++) {
    ath_task_t* h = wk->outcomes[i].held;
    if (h == NULL || h->status != ATH_PENDING || h->wk != NULL || h->unborn || h->remote ||
        h->queue != q || !first_in_priority(q, h))
      continue; /* not in the queue (taken, claimed ahead, cancelled) or not first */
    ath__queue_remove(q, h);
    if (expired_waiting(w, h, x))
      continue;
    start_claimed(w, wk, h, x->now, x->mono, x);
    out[n++] = h;
  }
  return n;
}

/* Whether t is the step a segment running on another worker than wk
 * started, which that worker takes when it publishes the park (lock
 * held): until then no other worker claims it. A lost worker's reservation
 * does not hold. */
static int reserved_elsewhere(const ath_worker_t* wk, const ath_task_t* t) {
  const ath_task_t* p = t->wf == NULL ? ath__task_parent(t) : NULL;
  return p != NULL && p->wf != NULL && p->wf->held_step == t && p->wf->where == ATH_WF_SLOT &&
         p->status == ATH_RUNNING && p->wk != NULL && p->wk != wk && !atomic_load(&p->wk->lost);
}

/* Balance of workflows over a queue's workers (lock held). A workflow
 * stays on the worker that starts it: its coroutine is cached there and
 * every segment resumes there. When one worker's batch of workflows ends
 * first, its slots free at once, and without a check it would start the
 * whole next batch while the others finish theirs, then run it alone (200
 * workflows of 100 steps over 2 workers of 64 slots split 128/72, one
 * worker idle for the last third of the run). So new workflows are dealt
 * in rounds: in each, every serving worker of the queue has one turn, in
 * which it may start up to an even share of the new workflows waiting
 * when its turn began over the workers yet to have theirs (its allowance,
 * taken over as many exchanges as its free slots need); past it, a worker
 * leaves the rest to the others, waking one that sleeps. A worker with
 * nothing running always takes, so does one when no other will claim soon
 * (another_will_claim), and a round that has not ended BALANCE_WAIT_NS after
 * its first turn ends then: a busy or stuck worker holds none back for
 * longer. With the manual clock a round ends only when every worker had its
 * turn. */
#define BALANCE_WAIT_NS 50000000u

/* Whether another serving worker of wk's queue will claim soon: it has a
 * free slot (asleep, a wake reaches it; in a pass, it exchanges again) or
 * it exchanged within BALANCE_WAIT_NS (busy with tasks that end, so its
 * slots free up). When none will, wk takes the workflow rather than leave
 * it to workers whose tasks may hold them for a long time. */
static int another_will_claim(const ath_world_t* w, const ath_worker_t* wk, const xchg_t* x) {
  for (int i = 0; i < w->nworkers; i++) {
    const ath_worker_t* o = w->workers[i];
    if (o != wk && serves(o, wk->queue) && !atomic_load(&o->lost) &&
        (o->running < o->concurrency || x->mono < o->xchg_mono + BALANCE_WAIT_NS))
      return 1;
  }
  return 0;
}

/* What wk may still start of the new workflows in this round (its turn
 * begins at its first look), t being just popped. */
static int64_t new_wf_share(ath_world_t* w, ath_worker_t* wk, const xchg_t* x) {
  ath_queue_t* q = wk->queue;
  int nw = serving(w, q);
  if (nw <= 1)
    return INT64_MAX;
  if (q->round_takers >= nw || (q->round_takers > 0 && x->mono >= q->round_mono + BALANCE_WAIT_NS)) {
    q->round++; /* all had their turn (a worker retired meanwhile), or waited enough */
    q->round_takers = 0;
  }
  if (wk->turn == q->round + 1)
    return wk->allowance;
  int yet = nw - q->round_takers > 1 ? nw - q->round_takers : 1;
  wk->turn = q->round + 1;
  wk->allowance = (q->new_wf + 1 + yet - 1) / yet; /* +1: the one popped (so at least 1) */
  if (q->round_takers++ == 0)
    q->round_mono = x->mono;
  if (q->round_takers >= nw) {
    q->round++;
    q->round_takers = 0;
  }
  return wk->allowance;
}

/* Claims up to `max` ready tasks of wk's queue into its slots (lock held):
 * the steps its segments just started first (claim_held), and, when they
 * fill them, more ahead. Steps reserved for another worker keep their
 * place in the queue. Returns how many went to slots. */
static int claim(ath_world_t* w, ath_worker_t* wk, int nout, ath_task_t** out, int max, xchg_t* x) {
  ath_queue_t* q = wk->queue;
  int64_t depth = q->depth;
  ath_task_t* kept[8];
  int nkept = 0;
  int64_t share = -1; /* new workflows it may start (new_wf_share; -1: not asked) */
  int n = claim_held(w, wk, nout, out, max, x);
  while (n < max) {
    int home = wk->resumes.head != NULL;
    ath_task_t* t = home ? ath__wf_pop_home(wk) : ath__queue_pop(q);
    if (t == NULL)
      break;
    if (!home && reserved_elsewhere(wk, t)) {
      kept[nkept++] = t;
      if (nkept == (int)(sizeof(kept) / sizeof(kept[0])))
        break;
      continue;
    }
    if (!home && t->wf != NULL && !t->wf->resuming) { /* a new workflow: its turn? */
      if (share < 0)
        share = new_wf_share(w, wk, x);
      if (share > 0) {
        share--;
      } else if (wk->running > 0 && another_will_claim(w, wk, x)) {
        /* past its allowance: left to the others (the tasks behind it are not) */
        x->nwake += ath__pick_sleepers(w, q, 1, x->wake + x->nwake, MAX_WORKERS - x->nwake);
        kept[nkept++] = t;
        if (nkept == (int)(sizeof(kept) / sizeof(kept[0])))
          break;
        continue;
      }
    }
    if (expired_waiting(w, t, x))
      continue;
    start_claimed(w, wk, t, x->now, x->mono, x);
    out[n++] = t;
  }
  if (share >= 0)
    wk->allowance = share;
  while (nkept > 0) { /* back in their places (popped from there: no allocation) */
    ath__queue_unpop(q, kept[--nkept]);
    q->depth++;
  }
  if (n == max && max > 0)
    claim_ahead(w, wk, depth, n, x);
  return n;
}

/* Publishes wk's outcomes (lock held). With keep_held, the outcomes of
 * segments that started a step are not: they stay, in order, for wk's
 * next exchange (see ath__world_flush). */
static void publish(ath_world_t* w, ath_worker_t* wk, xchg_t* x, int keep_held) {
  ath_queue_t* q = wk->queue;
  int nkeep = 0;
  if (atomic_load(&wk->lost)) { /* declared lost: its tasks were failed and moved on */
    for (int i = 0; i < wk->noutcomes; i++) {
      ath_outcome_t* o = &wk->outcomes[i];
      if (o->sampled && o->status == ATH_COMPLETED) { /* lost after sample_outcomes looked */
        uv_mutex_lock(&w->tel_lock);
        ath__tput_undo(w, x->now);
        uv_mutex_unlock(&w->tel_lock);
      }
      if (o->park_task != NULL)
        ath_task_release(o->park_task);
      for (uint32_t k = 0; k < o->nevs; k++)
        ath__wfev_release(o->evs[k]);
      o->nevs = 0;
      ath__wfev_release(o->done);
      ath__wfev_release(o->ended);
      o->done = o->ended = NULL;
    }
    wk->noutcomes = 0;
  }
  int requeued_before = w->requeued;
  for (int i = 0; i < wk->noutcomes; i++) {
    ath_outcome_t* o = &wk->outcomes[i];
    if (keep_held && o->held != NULL) { /* moved down over the ones published */
      if (nkeep != i)
        wk->outcomes[nkeep] = *o;
      nkeep++;
      continue;
    }
    ath_task_t* t = o->task;
    if (o->done != NULL) { /* kept for its workflow's record of it (wf_record) */
      ath_task_x_t* tx = ath__task_xr(t);
      ath__wfev_release(tx != NULL ? tx->done : o->done);
      if (tx != NULL)
        tx->done = o->done;
      o->done = NULL;
    }
    if (o->ended != NULL) { /* for ath__wf_terminal */
      ath__wfev_release(t->wf->ended);
      t->wf->ended = o->ended;
      o->ended = NULL;
    }
    q->running--;
    ath_task_t* last = wk->running_tasks[--wk->running];
    wk->running_tasks[t->run_pos] = last;
    last->run_pos = t->run_pos;
    w->n_running--;
    t->wk = NULL;
    if (t->wf != NULL)
      t->wf->held_step = NULL; /* its park is published: see claim_held */
    x->ended++;
    if (!w->cfg.no_metrics && !o->sampled) /* a workflow's run spans its segments */
      lat_add1(w, &w->lat_run, x->mono > t->start_mono ? (double)(x->mono - t->start_mono) / 1e6 : 0,
               x->now);
    if (ath__task_dq_attempt(t) < 0) { /* PostgreSQL: this node's lease was lost meanwhile */
      x->nwake = ath__dq_discard(w, t, x->wake, x->nwake);
      continue;
    }
    if (o->status == ATH_COMPLETED)
      wk->tasks_completed++;
    else if (o->status == ATH_FAILED)
      wk->tasks_failed++;
    if (t->wf != NULL) /* what the segment recorded comes first in its history */
      ath__wf_publish(w, t, o);
    if (t->wf != NULL && o->status == ATH_FAILED && o->err_code == ATH_ESHUTDOWN &&
        w->state != ATH_W_STARTED)
      o->status = ATH_PENDING; /* a command refused by the shutdown: not a failure */
    if (o->status == ATH_PENDING && t->wf != NULL && t->wf->forced != 2) {
      /* a workflow segment interrupted by shutdown: the run goes on by
       * replay, in its state (running or compensating) */
      if (o->park_task != NULL)
        ath_task_release(o->park_task);
      w->requeued++;
      if (w->draining && ath__hold_workflow(w, t) == 0)
        continue; /* claimed again, it would only be refused again */
      x->nwake = ath__wf_resume(w, t, x->wake, x->nwake);
      continue;
    }
    if (o->status == ATH_PENDING) { /* interrupted by shutdown: T14 */
      t->attempt--;
      t->ready_at = x->now;
      t->ready_mono = x->mono;
      w->requeued++;
      if (ath__make_ready(w, t) == 0)
        continue;
      o->status = ATH_FAILED;
      o->err_code = ATH_ENOMEM;
      o->final = 1;
    }
    if (t->wf != NULL) {
      ath_wf_t* wf = t->wf;
      if (wf->forced == 2) { /* a cascade failed it meanwhile (§8) */
        wf->forced = 1;
        if (o->park_task != NULL)
          ath_task_release(o->park_task);
        free(t->error);
        t->error = wf->forced_err;
        t->error_len = wf->forced_err_len;
        wf->forced_err = NULL;
        x->nwake = ath__finish_task(w, t, ATH_FAILED, x->now, x->wake, x->nwake);
        continue;
      }
      if (o->park_kind != ATH_PARK_NONE && o->status == ATH_RUNNING) {
        if (atomic_load(&t->cancel_ns) != 0) { /* cancelled as it parked */
          if (o->park_task != NULL)
            ath_task_release(o->park_task);
          x->nwake = ath__finish_task(w, t, ATH_CANCELLED, x->now, x->wake, x->nwake);
          continue;
        }
        x->nwake = ath__wf_park(w, t, o, x->now, x->mono, x->wake, x->nwake, &x->wake_engine);
        continue;
      }
      if (t->status == ATH_COMPENSATING) { /* the compensation segment ended (§9.5) */
        t->err_code = o->err_code;
        x->nwake = ath__finish_task(w, t, o->err_code == ATH_ECOMPENSATED ? ATH_COMPENSATED : ATH_FAILED,
                            x->now, x->wake, x->nwake);
        continue;
      }
    }
    t->err_code = o->err_code;
    if (o->status == ATH_FAILED) {
      x->nwake = ath__attempt_failed(w, t, o, x->now, x->mono, x->wake, x->nwake, &x->wake_engine);
    } else {
      w->precounted = o->sampled ? t : NULL; /* its completion is in the rings */
      int64_t ended = o->ended_at != 0 && o->ended_at <= x->now ? o->ended_at : x->now;
      x->nwake = ath__finish_task(w, t, o->status, ended, x->wake, x->nwake);
      w->precounted = NULL;
    }
  }
  wk->noutcomes = nkeep;
  if (w->state == ATH_W_STOPPING) /* attempts that ended during the shutdown */
    w->drained += x->ended - (w->requeued - requeued_before);

}

/* Puts the steps that wk's segments deferred (ath__world_execute_by) into
 * the world (lock held), before their parks are published. A park whose
 * step is in the world already (a lost worker's segment started it) waits
 * for that task; when a caller took the step's id meanwhile, the workflow
 * fails with EINVAL (the caller keeps its task). A lost worker's are
 * dropped with its outcomes. */
static void enter_steps(ath_world_t* w, ath_worker_t* wk, int nout, xchg_t* x, int* behind) {
  for (int i = 0; i < nout; i++) {
    ath_outcome_t* o = &wk->outcomes[i];
    ath_task_t* t = o->held;
    if (t == NULL || o->held_evicted0 == ATH_NOT_DEFERRED)
      continue;
    ath_task_t* in = ath__world_step_enter(w, t, o->held_evicted0, &x->wake_engine, behind);
    if (in == t)
      continue;
    if (in != NULL)
      ath_task_retain(in);
    o->held = in;
    if (o->park_task == t) {
      ath_task_release(t);
      if (in != NULL)
        ath_task_retain(in);
      o->park_task = in;
    }
    ath_task_release(t); /* the outcome's held reference: it never entered */
    if (in != NULL)
      continue;
    o->park_kind = ATH_PARK_NONE;
    o->status = ATH_FAILED;
    o->err_code = ATH_EINVAL;
    o->final = 1;
    ath__wfev_release(o->ended);
    o->ended = NULL;
    ath__set_error(o->task, ATH_EINVAL, "the id of its step is in use by a task of another owner");
  }
}

/* Wakes a worker for each task a segment started for this worker to claim
 * that it did not (others came first, no free slot, stopping): another
 * worker may (lock held). `nout` outcomes were published. */
static void release_held(ath_world_t* w, ath_worker_t* wk, int nout, xchg_t* x) {
  for (int i = 0; i < nout; i++) {
    ath_task_t* h = wk->outcomes[i].held;
    if (h == NULL)
      continue;
    wk->outcomes[i].held = NULL;
    if (h->status == ATH_PENDING && x->nwake < MAX_WORKERS)
      x->nwake += ath__pick_sleepers(w, h->queue, 1, x->wake + x->nwake, MAX_WORKERS - x->nwake);
    ath_task_release(h);
  }
}

/* Wakes sleeping workers of wk's queue for `n` tasks that went back to it
 * (lock held). */
static void wake_for(ath_world_t* w, ath_worker_t* wk, int n, xchg_t* x) {
  if (n > 0 && x->nwake < MAX_WORKERS)
    x->nwake += ath__pick_sleepers(w, wk->queue, n, x->wake + x->nwake, MAX_WORKERS - x->nwake);
}

/* Evicted tasks are freed by the worker that ran them, when it is busy
 * (lock held). A task's record, result and events mostly come from that
 * worker's malloc arena (a workflow's steps run where it runs), and a free
 * into another thread's arena takes that arena's lock, which its owner
 * holds meanwhile for its own allocations: with one arena for all threads,
 * bench/workflows.lua's 100-step rate halves. A worker that has not
 * exchanged lately (idle: it may not exchange again for long), or that has
 * ROUTE_MAX waiting, is not given more. Returns the tasks wk frees now: its
 * own, those others left it, and those of unlisted workers. */
#define ROUTE_MAX 4096
#define ROUTE_IDLE_NS 10000000u

static ath_task_t* route_dead(ath_world_t* w, ath_worker_t* wk, ath_task_t* dead, const xchg_t* x) {
  ath_task_t* mine = wk->dead;
  wk->dead = NULL;
  wk->ndead = 0;
  while (w->dead_orphans != NULL) { /* rare: a worker left the list holding some */
    ath_task_t* t = w->dead_orphans;
    w->dead_orphans = t->hnext;
    t->hnext = mine;
    mine = t;
  }
  while (dead != NULL) {
    ath_task_t* next = dead->hnext;
    ath_worker_t* o = dead->worker_id != wk->id ? ath__worker_by_id(w, dead->worker_id) : NULL;
    if (o != NULL && o->ndead < ROUTE_MAX && x->mono < o->xchg_mono + ROUTE_IDLE_NS) {
      dead->hnext = o->dead;
      o->dead = dead;
      o->ndead++;
    } else {
      dead->hnext = mine;
      mine = dead;
    }
    dead = next;
  }
  return mine;
}

/* The end of a worker's critical section: the shutdown hears of attempts
 * that ended or tasks that left the worker, terminal tasks past the
 * retention leave RAM, workers and the engine are woken. Unlocks. */
static void xchg_end(ath_world_t* w, ath_worker_t* wk, xchg_t* x) {
  if ((x->ended || x->settled) && w->cond_waiters > 0)
    uv_cond_broadcast(&w->cond);
  ath_task_t* dead = route_dead(w, wk, x->ended ? ath__world_term_trim(w) : NULL, x);
  /* Events are held only by a worker not declared lost, which shutdown
   * joins before it stops the webhooks: the hook outlives the post. */
  ath_hook_t* hook = x->hold.n > 0 || x->hold.held != NULL ? w->hook : NULL;
  w->hook_held = NULL;
  w->counting = NULL;
  uv_mutex_unlock(&w->lock);
  wk->exchanged_ns = uv_hrtime();
  waits_flush(w, x);
  if (hook != NULL) {
    evs_make(hook, &x->hold);
    ath__hook_post(hook, x->hold.held);
  }
  ath__world_term_free(dead);
  ath__wake_all(x->wake, x->nwake);
  if (x->wake_engine)
    uv_async_send(&w->easync);
}

/* Before a worker's critical section: the run time of each attempt it
 * publishes, and the completion of each task that is not a workflow's, go
 * into the telemetry rings under their own lock, not the world's. Done
 * first, they read right once the outcome is visible. A workflow
 * segment's (its run spans segments; a parked one goes on) and the
 * PostgreSQL backend's (a lost lease voids the outcome) are recorded under
 * the world lock, as the ends of other threads are. */
static void sample_outcomes(ath_world_t* w, ath_worker_t* wk, const xchg_t* x) {
  if (wk->noutcomes == 0 || w->cfg.no_metrics || w->dq != NULL || atomic_load(&wk->lost))
    return;
  uv_mutex_lock(&w->tel_lock);
  for (int i = 0; i < wk->noutcomes; i++) {
    ath_outcome_t* o = &wk->outcomes[i];
    if (o->task->wf != NULL)
      continue;
    o->sampled = 1;
    ath__lat_add(&w->lat_run, x->mono > o->started_mono ? (double)(x->mono - o->started_mono) / 1e6 : 0,
                 x->now);
    if (o->status == ATH_COMPLETED) /* it ends completed: publish() */
      ath__tput_add(w, x->now);
  }
  uv_mutex_unlock(&w->tel_lock);
}

/* The start of a worker's critical section (lock held): its task events
 * are held until it unlocks (xchg_end), and its terminal events bump its
 * own counters. A worker declared lost is off the list, its counts folded
 * into the world's (unlist_worker): what it still ends counts there. */
static void xchg_begin(ath_world_t* w, ath_worker_t* wk, xchg_t* x) {
  int lost = atomic_load(&wk->lost);
  wk->xchg_mono = x->mono;
  w->hook_held = lost ? NULL : &x->hold;
  w->counting = lost ? NULL : &wk->counts;
}

int ath__world_exchange(ath_world_t* w, ath_worker_t* wk, ath_task_t** out,
                        int max, int* stop, ath_waiter_t** inbox, ath_vtimer_t** fired) {
  ath_worker_t* wake[MAX_WORKERS];
  xchg_t x;
  xchg_init(&x, w, wake, 0);
  int n = 0;
  sample_outcomes(w, wk, &x);
  uv_mutex_lock(&w->lock);
  xchg_begin(w, wk, &x);
  ath__submits_drain(w); /* the claims see what was submitted */
  int nout = wk->noutcomes; /* their held tasks are seen to after the claims */
  int back = settle_prefetch(w, wk, &x); /* first: its outcomes may be theirs */
  int behind = 0; /* hybrid: the store is at its backlog bound */
  if (!atomic_load(&wk->lost))
    enter_steps(w, wk, nout, &x, &behind);
  publish(w, wk, &x, 0);
  if (!wk->stop && (w->state == ATH_W_STARTED || w->draining))
    n = claim(w, wk, nout, out, max, &x);
  if (n < max || wk->stop)
    wake_for(w, wk, back, &x); /* it may not have taken them again */
  release_held(w, wk, nout, &x);
  if (wk->resumes.head != NULL && (wk->stop || !ath__home_open(w, wk)))
    x.nwake = ath__wf_unhome(w, wk, x.wake, x.nwake); /* no more segments here */
  ath__set_wants(wk, !wk->stop && wk->running < wk->concurrency);
  /* asleep with a free slot: submitters wake it (ath_subq_t); one that
   * appended since the drain above is seen now, and it passes again */
  if (wk->wants_work && ath__sub_listen(wk, wk->running == 0))
    x.nwake = ath__add_wake(x.wake, x.nwake, wk);
  *stop = wk->stop && wk->running == 0;
  *inbox = wk->inbox;
  wk->inbox = NULL;
  *fired = wk->fired;
  wk->fired = NULL;
  xchg_end(w, wk, &x);
  if (behind) { /* the steps it put in wait for the store, as execute's tasks do */
    uv_mutex_lock(&w->lock);
    ath__store_throttle(w);
    uv_mutex_unlock(&w->lock);
  }
  return n;
}

/* A task of wk runs long (its hook, lock not held): what ended before it
 * is published, and what wk claimed ahead goes back, so that neither waits
 * for it. A segment that started a step is the exception: published, its
 * park would leave the step in the queue for any worker, while the
 * workflow resumes here once it ends (its coroutine is cached here, and
 * this worker resumes nothing before the long task yields anyway). Kept,
 * the park is published by wk's next exchange, which claims the step
 * (claim_held), and until then no other worker takes it
 * (reserved_elsewhere). Under load a trivial task is preempted for long
 * enough to be flushed, and a step then ran on the other worker. */
void ath__world_flush(ath_world_t* w, ath_worker_t* wk) {
  ath_worker_t* wake[MAX_WORKERS];
  xchg_t x;
  xchg_init(&x, w, wake, 0);
  sample_outcomes(w, wk, &x);
  uv_mutex_lock(&w->lock);
  xchg_begin(w, wk, &x);
  int nout = wk->noutcomes;
  int keep = !atomic_load(&wk->lost); /* lost: its outcomes are dropped, steps and all */
  wake_for(w, wk, settle_prefetch(w, wk, &x), &x);
  publish(w, wk, &x, keep);
  if (!keep) /* kept, the published ones hold no step */
    release_held(w, wk, nout, &x);
  xchg_end(w, wk, &x);
}

/* The monitor declared wk lost (lock held): the tasks it claimed ahead
 * and had not started go back to their queue; one it started is published
 * as running, so that it fails with the others. Returns the new nwake. */
int ath__prefetch_lost(ath_world_t* w, ath_worker_t* wk, ath_worker_t** wake, int nwake) {
  xchg_t x;
  xchg_init(&x, w, wake, nwake);
  int back = 0;
  for (int i = 0; i < wk->npre; i++) {
    ath_prefetch_t* e = &wk->pre[i];
    int st = ATH_PRE_READY;
    if (atomic_compare_exchange_strong_explicit(&e->state, &st, ATH_PRE_GONE, memory_order_acq_rel,
                                                memory_order_acquire)) {
      back += give_back(w, e->task, &x);
    } else if (st == ATH_PRE_STARTED) { /* it runs there: the monitor fails it as it fails the others */
      e->task->queue->depth--;
      start_claimed(w, wk, e->task, e->started_at, e->start_mono, &x);
    }
  }
  wake_for(w, wk, back, &x);
  waits_flush(w, &x);
  return x.nwake; /* wk->npre is its own: its next exchange clears it */
}

int64_t ath__prefetched(const ath_world_t* w) {
  int64_t n = 0;
  for (int i = 0; i < w->nworkers; i++)
    n += w->workers[i]->npre;
  return n;
}

int ath__world_await(ath_world_t* w, ath_task_t* t, ath_slot_t* slot) {
  uv_mutex_lock(&w->lock);
  if (ATH_IS_TERMINAL(t->status)) {
    uv_mutex_unlock(&w->lock);
    return 0;
  }
  ath_task_x_t* x = ath__task_x(t);
  ath_waiter_t* wt = x != NULL ? calloc(1, sizeof(*wt)) : NULL;
  if (wt == NULL) {
    uv_mutex_unlock(&w->lock);
    return ATH_ENOMEM;
  }
  wt->slot = slot;
  wt->next = x->waiters;
  x->waiters = wt;
  uv_mutex_unlock(&w->lock);
  return 1;
}

uint64_t ath__world_commit_gen(ath_world_t* w, const ath_task_t* t) {
  if (w->cfg.persistence != ATH_PERSIST_FILE)
    return 0;
  uv_mutex_lock(&w->lock);
  uint64_t gen = ath__task_gen(w, t);
  uv_mutex_unlock(&w->lock);
  return gen;
}

int ath_world_wait(ath_world_t* w, ath_task_t* t, int64_t timeout_ms) {
  uint64_t deadline = timeout_ms >= 0 ? ath__after(ath__mono_ns(), timeout_ms) : 0;
  int rc = 0;
  ath_bwait_t me = {.task = t};
  if (uv_cond_init(&me.cond) != 0)
    return ATH_ENOMEM;
  uv_mutex_lock(&w->lock);
  me.next = w->bwaiters;
  w->bwaiters = &me;
  while (!ATH_IS_TERMINAL(t->status)) {
    if (w->state == ATH_W_STOPPED) {
      rc = ATH_ESHUTDOWN;
      break;
    }
    if (timeout_ms < 0) {
      uv_cond_wait(&me.cond, &w->lock);
    } else {
      uint64_t now = ath__mono_ns();
      if (now >= deadline) {
        rc = ATH_ETIMEDOUT;
        break;
      }
      uv_cond_timedwait(&me.cond, &w->lock, deadline - now);
    }
    w->bwait_wakes++;
  }
  for (ath_bwait_t** p = &w->bwaiters; *p; p = &(*p)->next) {
    if (*p == &me) {
      *p = me.next;
      break;
    }
  }
  if (rc == 0)
    ath__store_wait(w, ath__task_gen(w, t)); /* file: the outcome is on disk */
  uv_mutex_unlock(&w->lock);
  uv_cond_destroy(&me.cond);
  return rc;
}

void ath__world_unawait(ath_world_t* w, ath_task_t* t, ath_slot_t* slot) {
  uv_mutex_lock(&w->lock);
  ath_task_x_t* x = ath__task_xr(t);
  for (ath_waiter_t** p = x != NULL ? &x->waiters : NULL; p != NULL && *p; p = &(*p)->next) {
    if ((*p)->slot == slot) {
      ath_waiter_t* wt = *p;
      *p = wt->next;
      free(wt);
      break;
    }
  }
  /* Already delivered: drop it from the inbox instead. */
  ath_worker_t* wk = slot->wk;
  for (ath_waiter_t** p = &wk->inbox; *p; p = &(*p)->next) {
    if ((*p)->slot == slot) {
      ath_waiter_t* wt = *p;
      *p = wt->next;
      free(wt);
      break;
    }
  }
  uv_mutex_unlock(&w->lock);
}
