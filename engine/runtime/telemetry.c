/* Telemetry and the worker pool: latency and throughput rings, metrics
 * and worker listings (SEMANTICS §14.1), the autoscaler (§12.2) and the
 * heartbeat monitor (§12.3) on the engine thread, and the graveyard of
 * retired workers. */
#include <errno.h>
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

void ath__lat_add(ath_lat_ring_t* r, double ms, int64_t at) {
  r->ms[r->next] = (float)ms;
  r->at[r->next] = at;
  r->next = (r->next + 1) % ATH_LAT_SAMPLES;
  if (r->len < ATH_LAT_SAMPLES)
    r->len++;
}

/* Counts one event in ring `r` of `n` slots at slot `slot` (a time divided
 * by the slot's length); `*last` is the slot the ring moved to last. Slots
 * skipped since then are cleared first. */
static void rate_add(int64_t* r, int64_t n, int64_t* last, int64_t slot) {
  if (slot != *last) {
    int64_t gap = slot - *last;
    if (gap < 0 || gap >= n)
      memset(r, 0, (size_t)n * sizeof(*r));
    else
      for (int64_t s = *last + 1; s <= slot; s++)
        r[s % n] = 0;
    *last = slot;
  }
  r[slot % n]++;
}

/* The events of the `k` slots up to and including `slot` (the current,
 * partial one and k - 1 whole ones before it). */
static int64_t rate_sum(const int64_t* r, int64_t n, int64_t last, int64_t slot, int64_t k) {
  int64_t sum = 0;
  for (int64_t s = slot - k + 1; s <= slot; s++)
    if (s <= last && s > last - n) /* after `last` nothing counted; before, overwritten */
      sum += r[s % n];
  return sum;
}

/* Counts a completion for the throughput figures (tel_lock held). */
void ath__tput_add(ath_world_t* w, int64_t now_ms) {
  rate_add(w->tput, 3600, &w->tput_sec, now_ms / 1000);
  rate_add(w->tput_ds, 20, &w->tput_dsec, now_ms / 100);
}

/* Takes back a completion ath__tput_add counted at `now_ms` (tel_lock
 * held), unless its slots have gone by. */
void ath__tput_undo(ath_world_t* w, int64_t now_ms) {
  if (w->tput_sec == now_ms / 1000 && w->tput[w->tput_sec % 3600] > 0)
    w->tput[w->tput_sec % 3600]--;
  if (w->tput_dsec == now_ms / 100 && w->tput_ds[w->tput_dsec % 20] > 0)
    w->tput_ds[w->tput_dsec % 20]--;
}

/* The terminal event's counters (lock held): one per end state, and the
 * throughput rings for completions. */
int ath__telemetry_on_end(ath_world_t* w, const ath_term_ev_t* ev, ath_worker_t** wake, int nwake) {
  (void)wake;
  ath_counts_t* c = ath__counts(w);
  switch (ev->st) {
    case ATH_COMPLETED:
      c->completed++;
      if (!w->cfg.no_metrics && ev->t != w->precounted) {
        uv_mutex_lock(&w->tel_lock);
        ath__tput_add(w, ev->now);
        uv_mutex_unlock(&w->tel_lock);
      }
      break;
    case ATH_CANCELLED:
      c->cancelled++;
      break;
    case ATH_QUARANTINED:
      c->quarantined++;
      break;
    default:
      c->failed++;
      break;
  }
  return nwake;
}

static void counts_add(ath_counts_t* to, const ath_counts_t* c) {
  to->completed += c->completed;
  to->failed += c->failed;
  to->retried += c->retried;
  to->cancelled += c->cancelled;
  to->quarantined += c->quarantined;
}

/* The world's counters: its own plus every listed worker's (lock held). */
void ath__counts_sum(const ath_world_t* w, ath_counts_t* out) {
  *out = w->counts;
  for (int i = 0; i < w->nworkers; i++)
    counts_add(out, &w->workers[i]->counts);
}

/* Appends wk to the list *v of *n workers. Returns 0, or -1 when out of
 * memory (then the worker is never freed: a leak, never a crash). */
static int keep_worker(ath_worker_t*** v, int* n, ath_worker_t* wk) {
  ath_worker_t** r = realloc(*v, (size_t)(*n + 1) * sizeof(*r));
  if (r == NULL)
    return -1;
  *v = r;
  r[(*n)++] = wk;
  return 0;
}

/* Takes `wk` out of the worker list (lock held). A lost worker is kept
 * until the world is freed; any other goes to the graveyard. */
static void unlist_worker(ath_world_t* w, ath_worker_t* wk) {
  for (int i = 0; i < w->nworkers; i++) {
    if (w->workers[i] == wk) {
      memmove(&w->workers[i], &w->workers[i + 1], (size_t)(w->nworkers - i - 1) * sizeof(*w->workers));
      w->nworkers--;
      break;
    }
  }
  /* what it counted stays counted; a lost worker's exchanges count no
   * more (ath__world_exchange) */
  counts_add(&w->counts, &wk->counts);
  memset(&wk->counts, 0, sizeof(wk->counts));
  while (wk->dead != NULL) { /* the next exchange frees them */
    ath_task_t* t = wk->dead;
    wk->dead = t->hnext;
    t->hnext = w->dead_orphans;
    w->dead_orphans = t;
  }
  wk->ndead = 0;
  if (atomic_load(&wk->lost))
    keep_worker(&w->retired, &w->nretired, wk);
  else
    keep_worker(&w->graveyard, &w->ngrave, wk);
}

/* Frees the workers of the graveyard that no wake array holds any more
 * (engine thread; their threads were joined). */
static void reap_graveyard(ath_world_t* w) {
  int keep = 0;
  for (int i = 0; i < w->ngrave; i++) {
    ath_worker_t* wk = w->graveyard[i];
    if (atomic_load_explicit(&wk->wakes_held, memory_order_acquire) == 0)
      ath__worker_free(wk);
    else
      w->graveyard[keep++] = wk;
  }
  w->ngrave = keep;
}

/* Workers started without a waiter (by the autoscaler or the monitor) whose
 * Lua state failed to load: joined, logged and taken off the list. On the
 * engine thread. */
static void reap_failed_starts(ath_world_t* w) {
  ath_worker_t* failed[MAX_WORKERS];
  int n = 0;
  uv_mutex_lock(&w->lock);
  for (int i = 0; i < w->nworkers && n < MAX_WORKERS; i++) {
    ath_worker_t* wk = w->workers[i];
    if (wk->no_waiter && wk->state == ATH_WK_STOPPED && wk->start_rc != 0)
      failed[n++] = wk;
  }
  for (int i = 0; i < n; i++)
    unlist_worker(w, failed[i]);
  uv_mutex_unlock(&w->lock);
  for (int i = 0; i < n; i++) {
    ath__worker_join(failed[i]);
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "could not start worker-%d: %s", failed[i]->id,
              failed[i]->start_err);
  }
}

/* The autoscaler (SEMANTICS §12.2), on the engine thread. New workers start
 * off this thread's path (their entry script may take seconds); while one of
 * the pool is still loading, the autoscaler decides nothing, and it retires
 * none for two intervals after adding (no add-then-retire flapping over the
 * fresh, empty slots). */
static void autoscale(ath_world_t* w) {
  ath_queue_t* q = w->queues[0];
  ath_worker_t* retire[MAX_WORKERS];
  int nretire = 0, add = 0, total = 0, starting = 0;
  double load = 0;
  reap_failed_starts(w);
  reap_graveyard(w);
  uint64_t now = uv_now(&w->eloop);
  uv_mutex_lock(&w->lock);
  if (w->state != ATH_W_STARTED) {
    uv_mutex_unlock(&w->lock);
    return;
  }
  int slots = 0, busy = 0;
  for (int i = 0; i < w->nworkers; i++) {
    ath_worker_t* wk = w->workers[i];
    if (wk->queue != q || wk->stop)
      continue;
    starting += wk->state == ATH_WK_STARTING;
    if (wk->state != ATH_WK_RUNNING)
      continue;
    total++;
    slots += wk->concurrency;
    busy += wk->running;
  }
  load = slots ? (double)busy / slots : 0;
  int cooling = now - w->scaled_up_at < 2 * (uint64_t)w->cfg.scale_interval_ms;
  if (starting > 0) {
    /* decide once the new workers serve */
  } else if (load >= w->cfg.scale_threshold && total < w->cfg.max_workers) {
    add = (w->cfg.max_workers - total + 1) / 2;
  } else if (load <= w->cfg.scale_down_threshold && total > w->cfg.min_workers && !cooling) {
    int want = (total - w->cfg.min_workers) / 2;
    if (want < 1)
      want = 1;
    for (int i = w->nworkers - 1; i >= 0 && nretire < want; i--) { /* newest first */
      ath_worker_t* wk = w->workers[i];
      if (wk->queue == q && !wk->stop && wk->state == ATH_WK_RUNNING && wk->running == 0 &&
          wk->npre == 0) { /* none claimed ahead either: truly idle */
        wk->stop = 1; /* stopping at once; claims nothing more */
        ath__set_wants(wk, 0);
        retire[nretire++] = wk;
      }
    }
  }
  uv_mutex_unlock(&w->lock);
  char err[512];
  int added = 0;
  for (int i = 0; i < add; i++) {
    if (ath__add_worker(w, q, 0, err, sizeof(err)) != 0) {
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "autoscaler could not add a worker: %s", err);
      break;
    }
    added++;
  }
  if (added)
    w->scaled_up_at = now;
  for (int i = 0; i < nretire; i++)
    ath__worker_wake(retire[i]);
  for (int i = 0; i < nretire; i++) {
    uv_thread_join(&retire[i]->thread); /* idle: it exits at once */
    retire[i]->joined = 1;
    uv_mutex_lock(&w->lock);
    unlist_worker(w, retire[i]);
    uv_mutex_unlock(&w->lock);
  }
  if (added || nretire) {
    ath_log_field_t f[2] = {ATH_LOG_FINT("total", total + added - nretire), ATH_LOG_FNUM("workload", load)};
    ath__logf(w, ATH_LOG_INFO, f, 2, "autoscaler %s %d worker%s", added ? "added" : "retired",
              added ? added : nretire, (added ? added : nretire) == 1 ? "" : "s");
  }
}

void ath__scale_cb(uv_timer_t* h) {
  autoscale(h->data);
}

/* The heartbeat monitor (SEMANTICS §12.3), on the engine thread: a worker
 * silent for heartbeatTimeout is lost; its attempts fail with EWORKERLOST
 * (retried per their policy) and a replacement starts. */
static void monitor(ath_world_t* w) {
  ath_worker_t* lost[MAX_WORKERS];
  ath_worker_t* wake[MAX_WORKERS];
  int nlost = 0, nwake = 0, wake_engine = 0;
  int64_t now = ath__now_ms(); /* liveness is real time, even on a manual clock */
  uv_mutex_lock(&w->lock);
  for (int i = 0; i < w->nworkers && w->state == ATH_W_STARTED; i++) {
    ath_worker_t* wk = w->workers[i];
    if (wk->stop || wk->state != ATH_WK_RUNNING ||
        now - atomic_load(&wk->last_heartbeat) < w->cfg.heartbeat_timeout_ms)
      continue;
    atomic_store(&wk->lost, 1);
    wk->stop = 1;
    ath__set_wants(wk, 0);
    nwake = ath__wf_unhome(w, wk, wake, nwake); /* its cached workflows replay elsewhere */
    nwake = ath__prefetch_lost(w, wk, wake, nwake); /* before its running tasks are failed */
    ath_buf_t ev = {0}; /* worker.lost {workerId, tasks = [ids]} */
    char head[48];
    int hn = snprintf(head, sizeof(head), "{\"workerId\":\"worker-%d\",\"tasks\":[", wk->id);
    ath__buf_append(&ev, head, (size_t)hn);
    /* Its slots still point at these tasks, and its thread may come back
     * and run their handlers on: keep them alive until the worker is freed,
     * although they move on (and may end and leave RAM) meanwhile. */
    wk->nlost_refs = wk->running;
    for (int k = wk->running - 1; k >= 0; k--) {
      ath_task_t* t = wk->running_tasks[k];
      ath_task_retain(t);
      if (k != wk->running - 1)
        ath__buf_lit(&ev, ",");
      ath__buf_json_str(&ev, t->id);
      ath_outcome_t o = {.task = t, .status = ATH_FAILED, .err_code = ATH_EWORKERLOST, .retry_after = -1};
      char msg[96];
      snprintf(msg, sizeof(msg), "worker-%d was declared lost (no heartbeat)", wk->id);
      ath__set_error(t, ATH_EWORKERLOST, msg);
      t->queue->running--;
      w->n_running--;
      t->wk = NULL;
      wk->running--;
      wk->tasks_failed++;
      /* the decision of §7.3, as for any failed attempt */
      for (const char* const* nr = ath__task_limits(t)->non_retryable; nr && *nr; nr++)
        o.final |= strcmp(*nr, "EWORKERLOST") == 0;
      if (atomic_load(&t->cancel_ns) != 0)
        nwake = ath__finish_task(w, t, ATH_CANCELLED, ath__wall(w), wake, nwake);
      else if (o.final || ath__retry_task(w, t, &o, ath__wall(w), ath__mono(w), &wake_engine) != 0)
        nwake = ath__finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED,
                            ath__wall(w), wake, nwake);
    }
    lost[nlost++] = wk;
    ath__buf_lit(&ev, "]}");
    if (ev.data != NULL)
      ath__hook_emit(w->hook, ATH_EV_WORKER_LOST, now, ev.data, ev.len);
    ath__buf_free(&ev);
  }
  for (int i = 0; i < nlost; i++)
    unlist_worker(w, lost[i]);
  uv_mutex_unlock(&w->lock);
  ath__wake_all(wake, nwake);
  if (wake_engine)
    ath__engine_tick(w);
  char err[512];
  for (int i = 0; i < nlost; i++) {
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "worker-%d is lost (no heartbeat for %lld ms); starting a replacement",
              lost[i]->id, (long long)w->cfg.heartbeat_timeout_ms);
    if (ath__add_worker(w, lost[i]->queue, 0, err, sizeof(err)) != 0)
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "could not start a replacement worker: %s", err);
  }
  reap_failed_starts(w);
}

void ath__monitor_cb(uv_timer_t* h) {
  monitor(h->data);
}

/* Starts a worker for `q`. With `wait`, returns once its Lua state is loaded
 * (start_rc reported); without, at once: the worker joins the pool when
 * loaded, and a failed load is reaped by reap_failed_starts. */
int ath__add_worker(ath_world_t* w, ath_queue_t* q, int wait, char* err, size_t errlen) {
  uv_mutex_lock(&w->lock); /* others walk the list under the lock */
  ath_worker_t** wks = realloc(w->workers, (w->nworkers + 1) * sizeof(*wks));
  if (wks != NULL)
    w->workers = wks;
  uv_mutex_unlock(&w->lock);
  if (wks == NULL)
    return ATH_ENOMEM;
  ath_worker_t* wk;
  int rc = ath__worker_spawn(w, q, wait, &wk);
  if (rc != 0) {
    ath__set_err(err, errlen, "cannot start a worker thread: %s", uv_strerror(rc));
    return ATH_ENOMEM;
  }
  uv_mutex_lock(&w->lock);
  w->workers[w->nworkers++] = wk;
  uv_mutex_unlock(&w->lock);
  if (!wait)
    return 0;
  uv_sem_wait(&w->ready);
  if (wk->start_rc != 0) {
    ath__set_err(err, errlen, "%s", wk->start_err);
    return wk->start_rc;
  }
  return 0;
}

static int cmp_float(const void* a, const void* b) {
  float x = *(const float*)a, y = *(const float*)b;
  return (x > y) - (x < y);
}

/* The samples of the last five minutes into buf (tel_lock held). */
static uint32_t recent(const ath_lat_ring_t* r, int64_t now, float* buf) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < r->len; i++)
    if (now - r->at[i] <= 300000)
      buf[n++] = r->ms[i];
  return n;
}

/* Nearest-rank percentiles of buf[0..n) (no lock: the sort is the long
 * part of reading metrics). */
static void percentiles(float* buf, uint32_t n, double* p50, double* p95, double* p99) {
  *p50 = *p95 = *p99 = 0;
  if (n == 0)
    return;
  qsort(buf, n, sizeof(float), cmp_float);
  double ps[3] = {0.50, 0.95, 0.99};
  double* outs[3] = {p50, p95, p99};
  for (int k = 0; k < 3; k++) {
    uint32_t rank = (uint32_t)(ps[k] * n + 0.999999); /* ceil */
    if (rank < 1)
      rank = 1;
    *outs[k] = buf[rank - 1];
  }
}

/* A worker being retired, or finishing its tasks and the queue during a
 * shutdown (lock held; it is not stopped yet). */
static int worker_stopping(const ath_world_t* w, const ath_worker_t* wk) {
  return wk->stop || wk->state == ATH_WK_STOPPING || w->state >= ATH_W_STOPPING;
}

void ath_world_metrics(ath_world_t* w, ath_metrics_t* m) {
  ath_queue_info_t* qs = m->queues;
  int cap = m->queues_cap;
  memset(m, 0, sizeof(*m));
  m->queues = qs;
  m->queues_cap = cap;
  int64_t now = ath__wall(w);
  uv_mutex_lock(&w->lock);
  ath__submits_drain(w); /* depth and resident count what was submitted */
  m->nqueues = w->nqueues;
  for (int i = 0; i < w->nqueues && i < cap; i++) {
    ath_queue_t* q = w->queues[i];
    int64_t oldest = 0;
    for (int b = 0; b < q->nbuckets; b++)
      if (q->buckets[b].head && (oldest == 0 || q->buckets[b].head->ready_at < oldest))
        oldest = q->buckets[b].head->ready_at;
    snprintf(qs[i].name, sizeof(qs[i].name), "%s", q->name);
    qs[i].depth = q->depth;
    qs[i].running = q->running;
    qs[i].oldest_age_ms = oldest && now > oldest ? now - oldest : 0;
  }
  m->uptime_ms = w->started_at ? now - w->started_at : 0;
  int slots = 0, busy = 0;
  for (int i = 0; i < w->nworkers; i++) {
    ath_worker_t* wk = w->workers[i];
    if (wk->state == ATH_WK_STOPPED)
      continue;
    m->workers_total++;
    if (worker_stopping(w, wk))
      continue;
    slots += wk->concurrency;
    busy += wk->running;
    if (wk->running > 0)
      m->workers_busy++;
    else
      m->workers_idle++;
  }
  m->workload = slots ? (double)busy / slots : 0;
  for (int i = 0; i < w->nqueues; i++)
    m->queued += w->queues[i]->depth;
  m->scheduled = w->n_scheduled;
  m->running = w->n_running;
  ath_counts_t c;
  ath__counts_sum(w, &c);
  m->completed = c.completed;
  m->resident = (int64_t)w->ntasks;
  m->failed = c.failed;
  m->retried = c.retried;
  m->cancelled = c.cancelled;
  m->quarantined = c.quarantined;
  uv_mutex_unlock(&w->lock);
  static _Thread_local float waits[ATH_LAT_SAMPLES], runs[ATH_LAT_SAMPLES];
  uv_mutex_lock(&w->tel_lock);
  /* Throughput over windows that end now: the current, partial slot and
   * the whole slots before it (10 tenths of a second, 60 or 3600 seconds),
   * so a window spans at most its length and a burst shows at once. */
  m->per_second = rate_sum(w->tput_ds, 20, w->tput_dsec, now / 100, 10);
  m->per_minute = rate_sum(w->tput, 3600, w->tput_sec, now / 1000, 60);
  m->per_hour = rate_sum(w->tput, 3600, w->tput_sec, now / 1000, 3600);
  uint32_t nwaits = recent(&w->lat_wait, now, waits);
  uint32_t nruns = recent(&w->lat_run, now, runs);
  uv_mutex_unlock(&w->tel_lock);
  percentiles(waits, nwaits, &m->wait_p50, &m->wait_p95, &m->wait_p99);
  percentiles(runs, nruns, &m->run_p50, &m->run_p95, &m->run_p99);
}

int ath_world_workers(ath_world_t* w, ath_worker_info_t* out, int cap) {
  uv_mutex_lock(&w->lock);
  int n = w->nworkers;
  for (int i = 0; i < n && i < cap; i++) {
    ath_worker_t* wk = w->workers[i];
    ath_worker_info_t* o = &out[i];
    o->id = wk->id;
    if (wk->state == ATH_WK_STOPPED)
      o->status = "stopped";
    else if (worker_stopping(w, wk))
      o->status = "stopping";
    else if (wk->state == ATH_WK_STARTING)
      o->status = "starting";
    else
      o->status = wk->running ? "busy" : "idle";
    snprintf(o->task_queue, sizeof(o->task_queue), "%s", wk->queue->name);
    o->concurrency = wk->concurrency;
    o->running = wk->running;
    o->last_heartbeat = atomic_load(&wk->last_heartbeat);
    o->tasks_completed = wk->tasks_completed;
    o->tasks_failed = wk->tasks_failed;
    o->memory_kb = atomic_load(&wk->memory_kb);
  }
  uv_mutex_unlock(&w->lock);
  return n;
}

int ath_world_worker_tasks(ath_world_t* w, int worker_id, ath_task_t** out, int cap) {
  int n = 0;
  uv_mutex_lock(&w->lock);
  for (int i = 0; i < w->nworkers; i++) {
    ath_worker_t* wk = w->workers[i];
    if (wk->id != worker_id)
      continue;
    for (int k = 0; k < wk->running && n < cap; k++) {
      ath_task_retain(wk->running_tasks[k]);
      out[n++] = wk->running_tasks[k];
    }
  }
  uv_mutex_unlock(&w->lock);
  return n;
}
