/* Persistence around the provider vtable (SEMANTICS §13): the lock file,
 * recovery at start(), and the store thread that group-commits changes.
 *
 * A state change marks its task dirty under the world lock. The store
 * thread swaps the dirty list out, snapshots the rows (still under the
 * lock, so each row is one consistent state), and writes them in one
 * transaction without the lock. In `file` mode acknowledgments wait for the
 * commit of the generation their change belongs to; in `hybrid` mode the
 * thread commits every flushInterval and nobody waits.
 *
 * A commit that fails (a full disk, an I/O error) degrades the store until
 * one succeeds: the enqueues it held are withdrawn (file mode: their tasks
 * were never claimed, see ath__queue_pop) and their execute calls answer
 * the error; new work is refused; everything else is retried every 100 ms.
 * After an I/O error the provider reopens and verifies the file first
 * (docs/lua-api.md "When the disk fails"). */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "internal.h"
#include "store.h"

uint64_t ath__task_gen(const ath_world_t* w, const ath_task_t* t) {
  /* A task's generation is the world's or older, or one newer: a failed
   * commit reopens its generation (w->gen--) after changes made during it
   * took the next one. Else the distance back from w->gen: a task unchanged
   * for 2^32 generations reads as newer by a multiple of 2^32, still no
   * newer than w->gen (at worst a wait for the next commit). */
  uint32_t ahead = t->dirty_gen - (uint32_t)w->gen;
  if (ahead <= 16)
    return w->gen + ahead;
  return w->gen - (uint32_t)((uint32_t)w->gen - t->dirty_gen);
}

/* Hybrid mode writes a change when it falls due, not at the first commit
 * after it (store_main): whether w does. */
static int defers(const ath_world_t* w) {
  return w->cfg.persistence == ATH_PERSIST_HYBRID && w->dq == NULL;
}

void ath__store_mark(ath_world_t* w, ath_task_t* t) {
  if (w->store == NULL)
    return;
  t->dirty_gen = (uint32_t)w->gen;
  if (!t->dirty) {
    if (w->ndirty == w->dirty_cap) {
      size_t cap = w->dirty_cap ? w->dirty_cap * 2 : 1024;
      uint64_t* ns = realloc(w->dirty_ns, cap * sizeof(*ns));
      if (ns != NULL)
        w->dirty_ns = ns;
      ath_task_t** d = ns != NULL ? realloc(w->dirty, cap * sizeof(*d)) : NULL;
      if (d == NULL) {
        /* Cannot queue the write: say so where /healthz looks; the next
         * change of this task retries. A new task runs unstored rather
         * than never (nothing would commit its enqueue). */
        t->unborn = 0;
        w->store_ok = 0;
        snprintf(w->store_err, sizeof(w->store_err), "%s", "out of memory queueing a write");
        return;
      }
      w->dirty = d;
      w->dirty_cap = cap;
    }
    t->dirty = 1;
    ath_task_retain(t);
    w->dirty_ns[w->ndirty] = defers(w) ? uv_hrtime() : 0;
    w->dirty[w->ndirty++] = t;
  }
  if (w->cfg.persistence == ATH_PERSIST_FILE || w->dq != NULL) /* PostgreSQL: hybrid too */
    uv_cond_signal(&w->store_cond);
}

void ath__store_mark_sched(ath_world_t* w, ath_sched_t* sc) {
  if (w->store == NULL)
    return;
  if (!sc->dirty) {
    if (w->nsdirty == w->sdirty_cap) {
      size_t cap = w->sdirty_cap ? w->sdirty_cap * 2 : 64;
      ath_sched_t** d = realloc(w->sdirty, cap * sizeof(*d));
      if (d == NULL) {
        w->store_ok = 0;
        snprintf(w->store_err, sizeof(w->store_err), "%s", "out of memory queueing a write");
        return;
      }
      w->sdirty = d;
      w->sdirty_cap = cap;
    }
    sc->dirty = 1;
    atomic_fetch_add(&sc->refs, 1);
    w->sdirty[w->nsdirty++] = sc;
  }
  if (w->cfg.persistence == ATH_PERSIST_FILE)
    uv_cond_signal(&w->store_cond);
}

/* Snapshots a schedule (lock held); strings are copied. */
static int sched_snapshot(ath_sched_t* sc, ath_srow_t* r) {
  memset(r, 0, sizeof(*r));
  r->id = ath__memdup(sc->id, strlen(sc->id));
  r->name = sc->def->name;
  r->input = ath__memdup(sc->input, sc->input_len);
  r->input_len = sc->input_len;
  r->cron = sc->cron_expr ? ath__memdup(sc->cron_expr, strlen(sc->cron_expr)) : NULL;
  r->queue = sc->queue_name ? ath__memdup(sc->queue_name, strlen(sc->queue_name)) : NULL;
  r->once_at = sc->once_at;
  r->local_tz = sc->o.local_tz;
  r->catch_up = sc->o.catch_up;
  r->overlap_skip = sc->o.overlap_skip;
  r->paused = sc->paused;
  r->has_priority = sc->o.has_priority;
  r->priority = sc->o.priority;
  r->strategy = sc->o.failure_strategy;
  r->next_ms = sc->next_ms;
  r->last_ms = sc->last_ms;
  r->total = sc->total;
  r->skipped = sc->skipped;
  r->deleted = sc->deleted;
  if (!r->id || !r->input || (sc->cron_expr && !r->cron) || (sc->queue_name && !r->queue))
    return ATH_ENOMEM;
  return 0;
}

static void srow_free(ath_srow_t* r) {
  free((char*)r->id);
  free((char*)r->input);
  free((char*)r->cron);
  free((char*)r->queue);
}

/* Whether acknowledging generation `gen` must wait (lock held): it is
 * durable once committed; if it is still open with nothing marked in it,
 * there is nothing to wait for. */
static int must_wait(const ath_world_t* w, uint64_t gen) {
  return w->store != NULL && w->cfg.persistence == ATH_PERSIST_FILE && w->committed_gen < gen &&
         !(gen >= w->gen && w->ndirty == 0 && w->nsdirty == 0) &&
         !(w->store_stop && w->ndirty == 0 && w->nsdirty == 0);
}

void ath__store_wait(ath_world_t* w, uint64_t gen) {
  while (must_wait(w, gen))
    uv_cond_wait(&w->cond, &w->lock);
}

int ath__store_wait_for(ath_world_t* w, uint64_t gen, uint64_t timeout_ns) {
  uint64_t until = uv_hrtime() + timeout_ns;
  int waited = 0;
  for (uint64_t now; must_wait(w, gen) && (now = uv_hrtime()) < until; waited = 1)
    uv_cond_timedwait(&w->cond, &w->lock, until - now);
  return waited;
}

ath_task_t* ath__store_unborn(ath_task_t* const* tasks, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (tasks[i] != NULL && (tasks[i]->unborn || tasks[i]->withdrawn))
      return tasks[i];
  return NULL;
}

int ath__world_enqueue_error(ath_world_t* w, ath_task_t* const* tasks, size_t n, char* msg,
                             size_t msglen) {
  uv_mutex_lock(&w->lock);
  int rc = ath__store_enqueue_result(tasks, n);
  if (rc != 0)
    snprintf(msg, msglen, "the task could not be stored: %s", w->store_err);
  uv_mutex_unlock(&w->lock);
  return rc;
}

int ath__store_enqueue_result(ath_task_t* const* tasks, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (tasks[i] != NULL && tasks[i]->withdrawn)
      return tasks[i]->err_code;
  return 0;
}

int ath__store_wait_enqueue(ath_world_t* w, uint64_t gen, ath_task_t* const* tasks, size_t n) {
  /* Enqueues of one execute are committed, or withdrawn, together. */
  ath_task_t* rep = ath__store_unborn(tasks, n);
  while (must_wait(w, gen) && !(rep != NULL && rep->withdrawn))
    uv_cond_wait(&w->cond, &w->lock);
  return ath__store_enqueue_result(tasks, n);
}

int ath__store_await(ath_world_t* w, uint64_t gen, ath_task_t* enq, ath_slot_t* slot) {
  uv_mutex_lock(&w->lock);
  int rc = 0;
  if (must_wait(w, gen) && !(enq != NULL && enq->withdrawn)) {
    ath_waiter_t* wt = calloc(1, sizeof(*wt));
    if (wt == NULL) {
      rc = ATH_ENOMEM;
    } else {
      wt->slot = slot;
      wt->task = enq;
      wt->gen = gen;
      wt->next = w->commit_waiters;
      w->commit_waiters = wt;
      rc = 1;
    }
  }
  uv_mutex_unlock(&w->lock);
  return rc;
}

/* Unlinks slot's waiter from *list; returns whether it was there. */
static int drop_waiter(ath_waiter_t** list, ath_slot_t* slot) {
  for (ath_waiter_t** p = list; *p; p = &(*p)->next) {
    if ((*p)->slot == slot) {
      ath_waiter_t* wt = *p;
      *p = wt->next;
      free(wt);
      return 1;
    }
  }
  return 0;
}

void ath__store_unawait(ath_world_t* w, ath_slot_t* slot) {
  uv_mutex_lock(&w->lock);
  if (!drop_waiter(&w->commit_waiters, slot))
    drop_waiter(&slot->wk->inbox, slot); /* delivered already */
  uv_mutex_unlock(&w->lock);
}

/* Hands the commit waiters whose wait is over to their workers (lock
 * held); the caller wakes wake[0..n) after unlocking. */
static int deliver_commits(ath_world_t* w, ath_worker_t** wake, int nwake) {
  for (ath_waiter_t** p = &w->commit_waiters; *p;) {
    ath_waiter_t* wt = *p;
    if (must_wait(w, wt->gen) && !(wt->task != NULL && wt->task->withdrawn)) {
      p = &wt->next;
      continue;
    }
    *p = wt->next;
    nwake = ath__waiter_deliver(wt, wake, nwake);
  }
  return nwake;
}

void ath__store_throttle(ath_world_t* w) {
  if (w->store == NULL || w->cfg.persistence != ATH_PERSIST_HYBRID || w->ndirty < ATH_HYBRID_BACKLOG)
    return;
  uv_cond_signal(&w->store_cond); /* commit now, not at the end of the interval */
  while (w->store != NULL && w->ndirty >= ATH_HYBRID_BACKLOG && !w->store_stop && w->store_fault == 0)
    uv_cond_wait(&w->cond, &w->lock);
}

/* Snapshots t into r (lock held). Copies what another thread may change or
 * free later (error, heartbeat); input never changes and a result never
 * changes once written. Returns 0 or ATH_ENOMEM. */
static int snapshot(ath_task_t* t, ath_row_t* r, ath_wfev_t*** held) {
  memset(r, 0, sizeof(*r));
  *held = NULL;
  r->id = t->id;
  r->name = t->def->name;
  r->queue = t->queue->name;
  r->status = t->status;
  r->attempt = t->attempt;
  r->max_attempts = t->max_attempts;
  r->strategy = t->strategy;
  r->priority = t->priority;
  r->worker_id = t->worker_id;
  r->seq = t->seq;
  r->created_at = t->created_at;
  r->scheduled_at = t->scheduled_at;
  r->ready_at = t->ready_at;
  r->started_at = t->started_at;
  r->completed_at = t->completed_at;
  const ath_task_x_t* x = ath__task_xr(t);
  r->last_hb = x != NULL ? x->last_hb : 0;
  r->input = t->input;
  r->input_len = t->input_len;
  r->deleted = t->purged;
  r->stored = t->stored;
  if (ATH_IS_TERMINAL(t->status)) {
    r->result = t->result;
    r->result_len = t->result_len;
  }
  if (t->status == ATH_RUNNING) {
    r->keep_error = 1; /* its worker owns the error field meanwhile */
  } else if (t->error != NULL) {
    if ((r->error = ath__memdup(t->error, t->error_len)) == NULL)
      return ATH_ENOMEM;
    r->error_len = t->error_len;
  }
  if (x != NULL && x->hb != NULL) {
    if ((r->hb = ath__memdup(x->hb, x->hb_len)) == NULL)
      goto nomem;
    r->hb_len = x->hb_len;
  }
  r->parent_id = x != NULL && x->parent ? x->parent->id : NULL; /* immutable, outlives the row */
  r->parent_seq = x != NULL && x->parent ? x->parent->seq : 0;
  if (x != NULL && x->call != NULL) { /* immutable, as long as the task */
    r->call = x->call->json;
    r->call_len = x->call->json_len;
  }
  if (t->wf != NULL && t->wf->stored_n < t->wf->nev) { /* only the new events, by reference */
    r->ev_from = t->wf->stored_n;
    if ((*held = ath__wf_events_from(t->wf, r->ev_from, &r->nevents)) == NULL)
      goto nomem;
    /* the provider's view: texts and lengths, in one block */
    const char** texts = malloc(r->nevents * (sizeof(*texts) + sizeof(size_t)));
    if (texts == NULL) {
      ath__wfev_release_all(*held, r->nevents);
      *held = NULL;
      goto nomem;
    }
    size_t* lens = (size_t*)(texts + r->nevents);
    for (size_t i = 0; i < r->nevents; i++) {
      texts[i] = (*held)[i]->json;
      lens[i] = (*held)[i]->len;
    }
    r->events = texts;
    r->event_lens = lens;
    t->wf->stored_n = t->wf->nev;
  }
  return 0;
nomem:
  free((char*)r->error);
  free((char*)r->hb);
  r->error = r->hb = NULL;
  r->nevents = 0;
  return ATH_ENOMEM;
}

/* Frees what snapshot made for r. */
static void row_free(ath_row_t* r, ath_wfev_t** held) {
  free((char*)r->error);
  free((char*)r->hb);
  free((void*)r->events);
  ath__wfev_release_all(held, r->nevents);
}

/* Finished tasks taken out of RAM under one hold of the lock. */
#define TRIM_PIECE 1024

void ath__store_committed(ath_world_t* w, uint64_t gen, ath_task_t* const* batch, size_t n,
                          ath_worker_t** wake, int nwake) {
  w->committed_gen = gen;
  uv_cond_broadcast(&w->cond); /* file-mode acknowledgments, throttled producers */
  if (w->commit_waiters != NULL)
    nwake = deliver_commits(w, wake, nwake);
  nwake = ath__world_born(w, batch, n, wake, nwake); /* their tasks may run now */
  /* Committed, finished tasks leave RAM, a piece at a time, letting the
   * lock go in between: all 60,000 of a hybrid batch at once held it for
   * up to 44 ms while producers and workers waited. */
  ath_task_t* dead = ath__world_term_trim_n(w, TRIM_PIECE);
  uv_mutex_unlock(&w->lock);
  ath__wake_all(wake, nwake);
  for (size_t i = 0; i < n; i++)
    ath_task_release(batch[i]);
  while (dead != NULL) {
    ath__world_term_free(dead);
    uv_mutex_lock(&w->lock);
    dead = ath__world_term_trim_n(w, TRIM_PIECE);
    uv_mutex_unlock(&w->lock);
  }
  uv_mutex_lock(&w->lock);
}

/* How long a degraded store waits between attempts to commit again. */
#define RETRY_NS 100000000u

/* A commit failed with `rc` (lock held): the store is degraded until one
 * succeeds. Every enqueue not committed yet is withdrawn, so its execute
 * answers rc instead of waiting for a disk that may not come back (file
 * mode; SEMANTICS §13); everything else stays queued and is retried. A
 * withdrawn task stays queued as a delete of its row: after an fsync error
 * the commit that reported failure may be in the WAL after all, and the
 * next commit takes it out again. batch[0..n) is the failed group, its
 * references handed over. */
void ath__store_failed(ath_world_t* w, int rc, const char* err, ath_task_t** batch, size_t n) {
  if (w->store_fault == 0)
    ath__logf(w, ATH_LOG_ERROR, NULL, 0,
              "store degraded, execute answers %s until a commit succeeds: %s", ath_err_name(rc), err);
  w->store_ok = 0;
  w->store_fault = rc;
  snprintf(w->store_err, sizeof(w->store_err), "%s", err);
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0, out;
  for (size_t i = 0; i < w->ndirty; i++) /* changed while it failed */
    nwake = ath__world_withdraw(w, w->dirty[i], rc, wake, nwake, &out);
  for (size_t i = 0; i < n; i++) {
    nwake = ath__world_withdraw(w, batch[i], rc, wake, nwake, &out);
    if (batch[i]->wf != NULL && w->dq == NULL) /* its events go again (the insert ignores those
                                                * that made it; PostgreSQL appends from its count) */
      batch[i]->wf->stored_n = 0;
    ath__store_mark(w, batch[i]); /* written (or deleted) by the next attempt */
    ath_task_release(batch[i]);
  }
  uv_cond_broadcast(&w->cond); /* blocked execute calls, throttled producers */
  nwake = w->commit_waiters != NULL ? deliver_commits(w, wake, nwake) : nwake;
  uv_mutex_unlock(&w->lock);
  ath__wake_all(wake, nwake);
  uv_mutex_lock(&w->lock);
}

/* Before a degraded store writes again (lock not held): after an I/O
 * error, the connection is dropped and the file verified (the provider's
 * reopen; *reopened is set when it did); *broken is set when the file
 * fails the check, and the store then takes no more writes. */
static int store_heal(ath_world_t* w, int* reopen, int* reopened, int* broken, char* err,
                      size_t errlen) {
  if (!*reopen)
    return 0;
  int rc = ATH_STORE_HAS(w->svt, reopen) ? w->svt->reopen(w->store, err, errlen) : 0;
  if (rc == 0) {
    *reopen = 0;
    *reopened = 1;
  } else if (rc == ATH_ESTORE) {
    *broken = 1;
    ath__logf(w, ATH_LOG_ERROR, NULL, 0, "store stopped taking writes (restart to recover): %s", err);
  }
  return rc;
}

/* A commit succeeded (lock held). */
static void store_healthy(ath_world_t* w, int* reopened) {
  if (!w->store_ok)
    ath__logf(w, ATH_LOG_INFO, NULL, 0, "store commits succeed again%s",
              *reopened ? " (reopened, PRAGMA quick_check ok)" : "");
  *reopened = 0;
  w->store_ok = 1;
  w->store_fault = 0;
}

/* What the store thread keeps from one commit to the next: the rows of
 * a commit's snapshot, and the array the producers fill next (the last
 * batch's). Allocated anew for each commit they cost the hybrid store
 * thread about a tenth of its time (perf): a 45,000-task batch is 11 MB of
 * rows, fresh memory is a page fault per 4 KB, and the producers grew
 * their array again from nothing, copying it under the world lock. Let go
 * after KEEP_NS without a commit; rows shrink back after a burst. */
typedef struct {
  ath_row_t* rows;
  ath_wfev_t*** held;
  size_t cap;
  ath_task_t** spare;
  uint64_t* spare_ns;   /* its dirty_ns */
  size_t spare_cap;
  uint64_t used_ns; /* the last commit's time */
} bufs_t;

#define KEEP_NS 1000000000u
#define KEEP_ROWS 16384 /* rows kept however small the batches are */

#define HUGE_PAGE ((size_t)2 << 20)

/* Room for cap rows, contents not kept (a batch's scratch): from 2 MiB on,
 * 2 MiB-aligned with huge pages asked for, so that a burst's first batch
 * faults a few of them in instead of thousands of 4 KiB pages (~12 µs
 * each on a paravirtualised machine: 40 ms for 65,000 rows). */
static ath_row_t* rows_alloc(size_t cap) {
  size_t bytes = cap * sizeof(ath_row_t);
  if (bytes < HUGE_PAGE)
    return malloc(bytes);
  bytes = (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  void* p = aligned_alloc(HUGE_PAGE, bytes);
#ifdef MADV_HUGEPAGE
  if (p != NULL)
    madvise(p, bytes, MADV_HUGEPAGE); /* advice: without it, 4 KiB pages */
#endif
  return p;
}

/* Room for n rows in b; 0 or ATH_ENOMEM. */
static int bufs_reserve(bufs_t* b, size_t n) {
  b->used_ns = uv_hrtime();
  if (n <= b->cap && !(b->cap > KEEP_ROWS && n < b->cap / 8))
    return 0;
  size_t cap = n < 1024 ? 1024 : n + n / 2;
  ath_row_t* rows = rows_alloc(cap);
  ath_wfev_t*** held = realloc(b->held, cap * sizeof(*held));
  if (held != NULL)
    b->held = held;
  if (rows == NULL || held == NULL) {
    free(rows);
    return n <= b->cap ? 0 : ATH_ENOMEM; /* a shrink that failed keeps the old size */
  }
  free(b->rows);
  b->rows = rows;
  b->cap = cap;
  return 0;
}

/* bufs_reserve for n rows, with the pages n rows use touched: called
 * without the world lock, so that the snapshot under it does not fault
 * fresh memory in (a first 65,000-row batch held the lock 50 ms so; 1 ms
 * once the memory was there). */
static void bufs_prefault(bufs_t* b, size_t n) {
  if (bufs_reserve(b, n) != 0)
    return; /* the snapshot's own reserve says so */
  volatile char* rows = (volatile char*)b->rows;
  volatile char* held = (volatile char*)b->held;
  for (size_t off = 0; off < n * sizeof(*b->rows); off += 4096)
    rows[off] = 0;
  for (size_t off = 0; off < n * sizeof(*b->held); off += 4096)
    held[off] = 0;
}

/* Frees what b keeps, and the producers' array if empty (lock held). */
static void bufs_release(bufs_t* b, ath_world_t* w) {
  free(b->rows);
  free(b->held);
  free(b->spare);
  free(b->spare_ns);
  memset(b, 0, sizeof(*b));
  if (w != NULL && w->ndirty == 0) {
    free(w->dirty);
    free(w->dirty_ns);
    w->dirty = NULL;
    w->dirty_ns = NULL;
    w->dirty_cap = 0;
  }
}

/* Hybrid (lock held): of batch[0..n), the changes this commit need not
 * write stay dirty, moved in order into the producers' array (empty: just
 * swapped in): those of tasks not finished whose oldest change not yet
 * written is younger than `age` ns. A later commit writes them before
 * they fall due, and a task that finishes meanwhile is written once,
 * finished, instead of queued and then again. Returns how many are left to
 * write, moved down in batch (all of them when there is no memory to
 * keep the others). */
static size_t keep_young(ath_world_t* w, ath_task_t** batch, const uint64_t* batch_ns, size_t n,
                         uint64_t age) {
  if (w->dirty_cap < n) {
    size_t cap = n < 1024 ? 1024 : n;
    uint64_t* ns = realloc(w->dirty_ns, cap * sizeof(*ns));
    if (ns == NULL)
      return n;
    w->dirty_ns = ns;
    ath_task_t** d = realloc(w->dirty, cap * sizeof(*d));
    if (d == NULL)
      return n;
    w->dirty = d;
    w->dirty_cap = cap;
  }
  uint64_t now = uv_hrtime();
  size_t write = 0;
  for (size_t i = 0; i < n; i++) {
    ath_task_t* t = batch[i];
    if (!ATH_IS_TERMINAL(t->status) && !t->purged && now - batch_ns[i] < age) {
      w->dirty_ns[w->ndirty] = batch_ns[i];
      w->dirty[w->ndirty++] = t;
    } else {
      batch[write++] = t;
    }
  }
  return write;
}

static void store_main(void* arg) {
  ath_world_t* w = arg;
  uint64_t flush_ns = (uint64_t)w->cfg.flush_interval_ms * 1000000u;
  int file = w->cfg.persistence == ATH_PERSIST_FILE;
  int reopen = 0, reopened = 0, broken = 0;
  char err[256];
  bufs_t bufs = { 0 };
  uv_mutex_lock(&w->lock);
  for (;;) {
    if (broken) { /* nothing is written again: shutdown keeps what it has in RAM */
      if (w->store_stop)
        break;
      uv_cond_wait(&w->store_cond, &w->lock);
      continue;
    }
    if (w->prune_before != 0 && w->store_fault == 0) { /* retention, hourly: finished tasks live here */
      int64_t before = w->prune_before;
      w->prune_before = 0;
      uv_mutex_unlock(&w->lock);
      if (ATH_STORE_HAS(w->svt, prune) && w->svt->prune(w->store, before, err, sizeof(err)) != 0)
        ath__logf(w, ATH_LOG_WARN, NULL, 0, "store retention pass failed: %s", err);
      uv_mutex_lock(&w->lock);
    }
    ath__submits_drain(w); /* hybrid: submissions no claim drained yet get stored too */
    if (w->ndirty == 0 && w->nsdirty == 0) {
      if (w->store_stop)
        break;
      if (w->store_fault != 0) { /* degraded with nothing to write: does the disk take writes? */
        uv_cond_timedwait(&w->store_cond, &w->lock, RETRY_NS);
        if (w->ndirty != 0 || w->nsdirty != 0 || w->store_stop)
          continue;
        uv_mutex_unlock(&w->lock);
        int rc = store_heal(w, &reopen, &reopened, &broken, err, sizeof(err));
        if (rc == 0)
          rc = ATH_STORE_HAS(w->svt, probe) ? w->svt->probe(w->store, err, sizeof(err))
                                            : w->svt->persist(w->store, NULL, 0, NULL, 0, err, sizeof(err));
        if (rc == ATH_EIO)
          reopen = 1;
        uv_mutex_lock(&w->lock);
        if (rc == 0) {
          store_healthy(w, &reopened);
        } else {
          w->store_fault = broken ? ATH_ESTORE : rc;
          w->store_broken = broken;
          snprintf(w->store_err, sizeof(w->store_err), "%s", err);
        }
        continue;
      }
      int keeps = bufs.cap != 0 || bufs.spare != NULL;
      if (file && !keeps)
        uv_cond_wait(&w->store_cond, &w->lock);
      else
        /* hybrid: looks every ⅞ interval (a change is not signalled), so
         * that one made while it waits is still written in time */
        uv_cond_timedwait(&w->store_cond, &w->lock, file ? KEEP_NS : flush_ns - flush_ns / 8);
      if (keeps && w->ndirty == 0 && w->nsdirty == 0 && uv_hrtime() - bufs.used_ns >= KEEP_NS)
        bufs_release(&bufs, w);
      continue;
    }
    /* Hybrid: a change must be in a commit that starts within
     * flushInterval of it (SEMANTICS §13.1). A commit starts when the
     * oldest change waiting has waited DUE of the interval (the rest is
     * slack for this thread's wake-up), or at once past the backlog, and
     * writes the finished tasks and the changes that have waited WRITE of
     * it; the younger ones wait for a later commit (keep_young). So the
     * commits of a steady load are half an interval apart or more, at most
     * two per interval (each syncs the WAL), and a task queued and finished
     * within WRITE of the interval is written once. */
    uint64_t due_ns = flush_ns - flush_ns / 8, write_ns = flush_ns / 8 * 3;
    int defer = defers(w) && !w->store_stop && w->store_fault == 0;
    if (!file && !w->store_stop && w->ndirty < ATH_HYBRID_BACKLOG) {
      uint64_t waited = defer && w->ndirty > 0 ? uv_hrtime() - w->dirty_ns[0] : 0;
      uint64_t due = defer ? due_ns : flush_ns;
      if (waited < due)
        uv_cond_timedwait(&w->store_cond, &w->lock, due - waited);
      defer = defers(w) && !w->store_stop && w->store_fault == 0;
    }
    if (w->ndirty > bufs.cap) { /* rows to grow: faulted in without the lock */
      size_t want = w->ndirty;
      void (*hook)(ath_world_t*, size_t) = w->store_grow_hook;
      uv_mutex_unlock(&w->lock);
      bufs_prefault(&bufs, want);
      if (hook != NULL)
        hook(w, want);
      uv_mutex_lock(&w->lock);
    }
    ath_task_t** batch = w->dirty;
    uint64_t* batch_ns = w->dirty_ns;
    size_t n = w->ndirty, batch_cap = w->dirty_cap;
    w->dirty = bufs.spare; /* the producers fill the last batch's array */
    w->dirty_ns = bufs.spare_ns;
    w->dirty_cap = bufs.spare_cap;
    w->ndirty = 0;
    bufs.spare = NULL;
    bufs.spare_ns = NULL;
    bufs.spare_cap = 0;
    if (defer && n > 0)
      n = keep_young(w, batch, batch_ns, n, write_ns);
    if (n == 0 && w->nsdirty == 0) {
      /* nothing due: wait until the oldest change is; past the backlog,
       * producers wait for tasks to finish and be written: look again
       * after an eighth of the interval */
      bufs.spare = batch;
      bufs.spare_ns = batch_ns;
      bufs.spare_cap = batch_cap;
      uint64_t waited = w->ndirty > 0 ? uv_hrtime() - w->dirty_ns[0] : 0;
      uint64_t wait = waited < write_ns ? write_ns - waited : 0;
      if (w->ndirty >= ATH_HYBRID_BACKLOG && wait > flush_ns / 8)
        wait = flush_ns / 8;
      if (wait > 0)
        uv_cond_timedwait(&w->store_cond, &w->lock, wait);
      continue;
    }
    ath_sched_t** sbatch = w->sdirty;
    size_t sn = w->nsdirty;
    w->sdirty = NULL;
    w->nsdirty = w->sdirty_cap = 0;
    uint64_t gen = w->gen++;
    ath_srow_t* srows = calloc(sn ? sn : 1, sizeof(*srows));
    int rc = bufs_reserve(&bufs, n) == 0 && srows ? 0 : ATH_ENOMEM;
    ath_row_t* rows = bufs.rows;
    ath_wfev_t*** held = bufs.held;
    size_t made = 0, smade = 0;
    for (; rc == 0 && made < n; made++)
      rc = snapshot(batch[made], &rows[made], &held[made]);
    for (; rc == 0 && smade < sn; smade++)
      rc = sched_snapshot(sbatch[smade], &srows[smade]);
    for (size_t i = 0; i < n; i++)
      batch[i]->dirty = 0;
    for (size_t i = 0; i < sn; i++)
      sbatch[i]->dirty = 0;
    uv_mutex_unlock(&w->lock);
    if (w->commit_delay_ms > 0) /* tests: a slow disk */
      uv_sleep((unsigned)w->commit_delay_ms);
    if (rc != 0)
      snprintf(err, sizeof(err), "%s", "out of memory preparing a commit");
    if (rc == 0)
      rc = store_heal(w, &reopen, &reopened, &broken, err, sizeof(err));
    if (rc == 0)
      rc = w->svt->persist(w->store, rows, n, srows, sn, err, sizeof(err));
    if (rc == ATH_EIO)
      reopen = 1; /* the file may not hold what the connection believes */
    for (size_t i = 0; i < made; i++)
      row_free(&rows[i], held[i]);
    for (size_t i = 0; i < sn && srows; i++)
      srow_free(&srows[i]);
    free(srows);
    uv_mutex_lock(&w->lock);
    if (rc != 0) {
      /* Keep the changes and try again: nothing acknowledged is dropped;
       * what was not acknowledged yet is withdrawn. */
      w->store_broken = broken;
      ath__store_failed(w, broken ? ATH_ESTORE : rc, err, batch, n);
      for (size_t i = 0; i < sn; i++) {
        ath__store_mark_sched(w, sbatch[i]);
        ath__sched_release(sbatch[i]);
      }
      w->gen--; /* the failed generation is still open */
      /* the full interval, however many changes signal meanwhile */
      for (uint64_t until = uv_hrtime() + RETRY_NS, now; !w->store_stop && (now = uv_hrtime()) < until;)
        uv_cond_timedwait(&w->store_cond, &w->lock, until - now);
      if (w->store_stop && !w->store_ok) {
        free(batch);
        free(batch_ns);
        free(sbatch);
        break; /* shutting down with a store that keeps failing */
      }
      free(batch); /* its tasks were marked again, in the producers' array */
      free(batch_ns);
      batch = NULL;
      batch_ns = NULL;
      batch_cap = 0;
    } else {
      store_healthy(w, &reopened);
      w->store_rows += n;
      for (size_t i = 0; i < n; i++)
        batch[i]->stored = 1;
      ath_worker_t* wake[MAX_WORKERS];
      ath__store_committed(w, gen, batch, n, wake, 0);
      uv_mutex_unlock(&w->lock);
      for (size_t i = 0; i < sn; i++)
        ath__sched_release(sbatch[i]);
      uv_mutex_lock(&w->lock);
    }
    bufs.spare = batch; /* the producers' array after the next swap */
    bufs.spare_ns = batch_ns;
    bufs.spare_cap = batch_cap;
    free(sbatch);
  }
  bufs_release(&bufs, NULL);
  uv_mutex_unlock(&w->lock);
}

int ath__store_lock(const char* dir, int* fd_out, char* err, size_t errlen) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/athena.lock", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return ATH_ESTORE;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    close(fd);
    if (e == EWOULDBLOCK) {
      snprintf(err, errlen, "persistencePath %s is held by another world", dir);
      return ATH_EBUSY;
    }
    snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
    return ATH_ESTORE;
  }
  *fd_out = fd;
  return 0;
}

static int take_lock(ath_world_t* w, char* err, size_t errlen) {
  const char* dir = w->cfg.persistence_path;
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    snprintf(err, errlen, "cannot create persistencePath %s: %s", dir, strerror(errno));
    return ATH_ESTORE;
  }
  return ath__store_lock(dir, &w->lockfd, err, errlen);
}

static void drop_lock(ath_world_t* w) {
  if (w->lockfd >= 0) {
    close(w->lockfd); /* releases the flock */
    w->lockfd = -1;
  }
}

int ath__store_check(const ath_world_config_t* cfg, char* err, size_t errlen) {
  const ath_store_provider_t* p = cfg->store;
  if (p == NULL)
    return 0;
  const char* why = NULL;
  if (p->size < offsetof(ath_store_provider_t, close) + sizeof(p->close))
    why = "its size is smaller than the fields every provider has (set size = sizeof(ath_store_provider_t))";
  else if (!p->open || !p->load || !p->persist || !p->close)
    why = "open, load, persist and close are required";
  else if (ATH_STORE_HAS(p, get) != ATH_STORE_HAS(p, query))
    why = "get and query go together (both or neither)";
  else if (cfg->persistence == ATH_PERSIST_MEMORY)
    why = "memory persistence keeps no journal (use file or hybrid)";
  if (why == NULL)
    return 0;
  snprintf(err, errlen, "invalid store provider %s: %s", p->name ? p->name : "(unnamed)", why);
  return ATH_EINVAL;
}

/* Recovery's checks on what a provider gives back, before it rebuilds a
 * task or schedule: the fields recovery reads must be there and in range. */
typedef struct {
  ath_world_t* w;
  char* err;
  size_t errlen;
} recovery_t;

static int recover_task(void* ud, const ath_row_t* r) {
  recovery_t* rc = ud;
  if (r->id == NULL || r->name == NULL || r->queue == NULL || r->input == NULL ||
      r->status < ATH_PENDING || r->status > ATH_COMPENSATED) {
    snprintf(rc->err, rc->errlen, "store provider %s: a loaded task lacks its id, name, queue or "
             "input, or has no valid status (%d)", rc->w->svt->name ? rc->w->svt->name : "", r->status);
    return ATH_ESTORE;
  }
  return ath__world_recover_row(rc->w, r);
}

static int recover_sched(void* ud, const ath_srow_t* r) {
  recovery_t* rc = ud;
  if (r->id == NULL || r->name == NULL || r->input == NULL) {
    snprintf(rc->err, rc->errlen, "store provider %s: a loaded schedule lacks its id, name or input",
             rc->w->svt->name ? rc->w->svt->name : "");
    return ATH_ESTORE;
  }
  return ath__sched_recover_row(rc->w, r);
}

int ath__store_start(ath_world_t* w, char* err, size_t errlen) {
  w->lockfd = -1;
  if (w->cfg.backend_url != NULL) /* the shared queue: storage/store_pg.c */
    return ath__pgstore_start(w, err, errlen);
  if (w->cfg.persistence == ATH_PERSIST_MEMORY)
    return 0;
  int rc = take_lock(w, err, errlen);
  if (rc != 0)
    return rc;
  /* Tests only: every commit waits this long first, as on a slow disk,
   * which widens the window between a change and its commit. */
  const char* delay = getenv("ATHENA_TEST_COMMIT_DELAY_MS");
  w->commit_delay_ms = delay ? atoi(delay) : 0;
  w->svt = w->cfg.store != NULL ? w->cfg.store : &ath__sqlite_store;
  void* st = NULL;
  err[0] = '\0';
  rc = w->svt->open(w->svt->ud, w->cfg.persistence_path, &st, err, errlen);
  if (rc == 0 && st == NULL) {
    snprintf(err, errlen, "store provider %s: open returned no store", w->svt->name ? w->svt->name : "");
    rc = ATH_ESTORE;
  }
  if (rc == 0 && ATH_STORE_HAS(w->svt, prune))
    rc = w->svt->prune(st, ath__wall(w) - w->cfg.retention_ms, err, errlen);
  if (rc == 0) {
    uv_cond_init(&w->store_cond);
    w->gen = 1;
    w->committed_gen = 0;
    w->store_ok = 1;
    w->store = st; /* from here on, changes are marked; recovery marks some */
    /* and finished tasks are read back from it, when it can */
    w->reads = ATH_STORE_HAS(w->svt, get) ? st : NULL;
    recovery_t rec = { w, err, errlen };
    rc = w->svt->load(st, recover_task, recover_sched, &rec, err, errlen);
    int trc = rc == 0 ? uv_thread_create(&w->store_thread, store_main, w) : 0;
    if (trc != 0) {
      snprintf(err, errlen, "cannot start the store thread: %s", uv_strerror(trc));
      rc = ATH_ENOMEM;
    }
    if (rc != 0) {
      w->store = w->reads = NULL;
      uv_cond_destroy(&w->store_cond);
    }
  }
  if (rc != 0) {
    if (err[0] == '\0')
      snprintf(err, errlen, "store provider %s failed to open or load (%s)",
               w->svt->name ? w->svt->name : "", ath_err_name(rc));
    if (st != NULL)
      w->svt->close(st);
    drop_lock(w);
    return rc;
  }
  ath__world_recovered(w);
  return 0;
}

void ath__store_stop(ath_world_t* w) {
  if (w->store == NULL)
    return;
  uv_mutex_lock(&w->lock);
  w->store_stop = 1;
  uv_cond_signal(&w->store_cond);
  uv_mutex_unlock(&w->lock);
  uv_thread_join(&w->store_thread); /* after the final commit */
  ath__pgstore_stopped(w); /* the PostgreSQL backend: lease, leader, listener */
  uv_mutex_lock(&w->lock);
  for (size_t i = 0; i < w->ndirty; i++) { /* a store that kept failing */
    w->dirty[i]->dirty = 0;
    ath_task_release(w->dirty[i]);
  }
  free(w->dirty);
  free(w->dirty_ns);
  w->dirty = NULL;
  w->dirty_ns = NULL;
  w->ndirty = w->dirty_cap = 0;
  for (size_t i = 0; i < w->nsdirty; i++) {
    w->sdirty[i]->dirty = 0;
    ath__sched_release(w->sdirty[i]);
  }
  free(w->sdirty);
  w->sdirty = NULL;
  w->nsdirty = w->sdirty_cap = 0;
  ath_store_t* st = w->store;
  w->store = NULL; /* no more writes; reads go on until the world is freed */
  while (w->commit_waiters != NULL) { /* their workers have stopped */
    ath_waiter_t* wt = w->commit_waiters;
    w->commit_waiters = wt->next;
    free(wt);
  }
  uv_cond_broadcast(&w->cond);
  uv_mutex_unlock(&w->lock);
  uv_cond_destroy(&w->store_cond);
  if (st != w->reads) /* a provider without reads: nothing reads it later */
    w->svt->close(st);
  drop_lock(w);
}

void ath__store_free(ath_world_t* w) {
  if (w->reads != NULL)
    w->svt->close(w->reads);
  w->reads = NULL;
}
