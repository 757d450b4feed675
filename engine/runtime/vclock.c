/* The manual clock (clock = "manual"): time moves only in
 * ath_world_advance, which fires what came due in order and lets the
 * engine settle between steps. */
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

int ath__vtimer_less(const void* a, const void* b) {
  const ath_vtimer_t* x = a;
  const ath_vtimer_t* y = b;
  return x->due < y->due;
}

void ath__vtimer_start(ath_world_t* w, ath_vtimer_t* vt, uint64_t due) {
  uv_mutex_lock(&w->lock);
  if (vt->heap_idx != UINT32_MAX)
    ath__heap_remove(&w->vtimers, vt);
  vt->fired = 0; /* a stale firing waiting in the fired list is void */
  vt->due = due;
  if (ath__heap_push(&w->vtimers, vt) != 0)
    ath__logf(w, ATH_LOG_ERROR, NULL, 0, "out of memory arming a manual-clock timer");
  uv_mutex_unlock(&w->lock);
}

void ath__vtimer_stop(ath_world_t* w, ath_vtimer_t* vt) {
  uv_mutex_lock(&w->lock);
  if (vt->heap_idx != UINT32_MAX)
    ath__heap_remove(&w->vtimers, vt);
  vt->fired = 0;
  uv_mutex_unlock(&w->lock);
}

int64_t ath_world_now(ath_world_t* w) {
  return ath__wall(w);
}

/* The earliest manual-clock event (lock held), as manual monotonic ns, or
 * UINT64_MAX if none: delayed tasks, schedules, worker timers. */
static uint64_t next_event(ath_world_t* w) {
  uint64_t next = UINT64_MAX;
  ath_task_t* t = ath__heap_peek(&w->delayed);
  if (t != NULL)
    next = t->ready_mono;
  ath_vtimer_t* vt = ath__heap_peek(&w->vtimers);
  if (vt != NULL && vt->due < next)
    next = vt->due;
  ath_task_x_t* e = ath__heap_peek(&w->expiry);
  if (e != NULL && e->exp_mono < next)
    next = e->exp_mono;
  ath_sched_t* s = ath__heap_peek(&w->sheap);
  if (s != NULL) {
    int64_t wall = ath__wall(w);
    uint64_t mono = atomic_load(&w->vmono);
    uint64_t due = ath__after(mono, s->next_ms - wall);
    if (due < next)
      next = due;
  }
  return next;
}

/* Hands due worker timers to their workers (lock held); returns how many
 * workers were collected into `wake`. */
static int fire_vtimers(ath_world_t* w, uint64_t now, ath_worker_t** wake, int nwake) {
  ath_vtimer_t* vt;
  while ((vt = ath__heap_peek(&w->vtimers)) != NULL && vt->due <= now) {
    ath__heap_pop(&w->vtimers);
    ath_worker_t* wk = vt->slot->wk;
    vt->fired = 1;
    if (!vt->in_fired) {
      vt->in_fired = 1;
      vt->next = wk->fired;
      wk->fired = vt;
    }
    nwake = ath__add_wake(wake, nwake, wk);
  }
  return nwake;
}

/* File mode: a task enqueued since the last commit is unborn (no worker
 * claims it, so no worker is busy with it) until the store commits it.
 * Waits for the commit of every change made so far, for at most a second
 * (a failing store retries for as long as it fails); returns whether it
 * had to wait. */
static int store_caught_up(ath_world_t* w) {
  uv_mutex_lock(&w->lock);
  int waited = ath__store_wait_for(w, w->gen, 1000000000u);
  uv_mutex_unlock(&w->lock);
  return waited;
}

/* Waits until no worker has work from this step: each is asleep in its
 * loop with nothing pending, or has been running the same Lua code for two
 * runs of its hook (the watchdog sets it every 10-20 ms): code that does
 * not yield cannot be waited for; and in file mode the store has committed
 * what was enqueued. */
static void settle(ath_world_t* w) {
  unsigned ticks[MAX_WORKERS];
  int quiet_rounds = 0;
  for (int i = 0; i < w->nworkers && i < MAX_WORKERS; i++)
    ticks[i] = atomic_load(&w->workers[i]->ticks);
  while (quiet_rounds < 2) {
    int quiet = !store_caught_up(w);
    for (int i = 0; i < w->nworkers && i < MAX_WORKERS; i++) {
      ath_worker_t* wk = w->workers[i];
      if (wk->state != ATH_WK_RUNNING)
        continue;
      int pumping = atomic_load(&wk->pumping);
      int spinning = pumping && atomic_load(&wk->ticks) - ticks[i] >= 2;
      if (spinning)
        continue; /* its wakes wait for code that does not yield */
      if (atomic_load(&wk->pending) || pumping)
        quiet = 0; /* woken, or working (not yet known to spin) */
    }
    quiet_rounds = quiet ? quiet_rounds + 1 : 0;
    if (quiet_rounds < 2)
      uv_sleep(1); /* workers signal nothing here: look again shortly */
  }
}

int ath_world_advance(ath_world_t* w, int64_t ms) {
  if (!w->manual || ms < 0)
    return ATH_EINVAL;
  uv_mutex_lock(&w->lock);
  int started = w->state == ATH_W_STARTED;
  uint64_t target = ath__after(atomic_load(&w->vmono), ms);
  uv_mutex_unlock(&w->lock);
  if (!started)
    return ATH_EINVAL;
  settle(w);
  for (;;) {
    ath_worker_t* wake[MAX_WORKERS];
    uv_mutex_lock(&w->lock);
    uint64_t now = atomic_load(&w->vmono);
    uint64_t next = next_event(w);
    uint64_t to = next <= target ? (next > now ? next : now) : target;
    atomic_store(&w->vmono, to); /* time moves to the next event (or the target) */
    int nwake = fire_vtimers(w, to, wake, 0);
    uv_mutex_unlock(&w->lock);
    ath__wake_all(wake, nwake);
    ath__engine_tick(w);
    ath__sched_tick(w);
    settle(w);
    if (next > target)
      break;
  }
  return 0;
}
