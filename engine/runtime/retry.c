/* Retries (SEMANTICS §7): the backoff of attempt n and the decision after
 * a failed attempt: retry later, compensate, or end the task. World lock
 * held. */
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

/* Backoff for failed attempt n (SEMANTICS §7.4): capped, then 0-10 %
 * additive jitter. */
int64_t ath__backoff_ms(const ath_activity_t* a, int n) {
  double base;
  if (a->backoff == ATH_BACKOFF_LINEAR)
    base = (double)a->initial_interval_ms * n;
  else if (a->backoff == ATH_BACKOFF_CONSTANT)
    base = (double)a->initial_interval_ms;
  else
    base = (double)a->initial_interval_ms * pow(a->multiplier, n - 1);
  double dd = base < (double)a->max_interval_ms ? base : (double)a->max_interval_ms;
  return (int64_t)llround(dd + ath__random01() * 0.1 * dd);
}

/* Decides whether failed attempt t->attempt is retried (§7.3, steps 3-6;
 * the worker decided 1-2). Returns 0 when the task now waits to be
 * retried, -1 when the failure is final. Lock held. */
int ath__retry_task(ath_world_t* w, ath_task_t* t, const ath_outcome_t* o,
                      int64_t now, uint64_t mono, int* wake_engine) {
  if (t->attempt >= t->max_attempts)
    return -1;
  int64_t delay = o->retry_after >= 0 ? o->retry_after : ath__backoff_ms(ath__task_limits(t), t->attempt);
  int64_t stc = ath__task_limits(t)->schedule_to_close_ms;
  if (stc > 0 && now + delay >= t->scheduled_at + stc)
    return -1;
  if (t->wf != NULL) { /* §9.5: the next run replays the history */
    ath_buf_t b = {0};
    ath__ev_begin(&b, t, "workflow.retrying", now);
    ath__ev_raw(&b, "error", t->error, t->error_len);
    ath__ev_int(&b, "delayMs", delay);
    ath__wf_push_buf(w, t, &b);
  }
  t->status = ATH_RETRYING;
  t->ready_at = now + delay;
  t->ready_mono = ath__after(mono, delay);
  if (w->dq != NULL) { /* PostgreSQL: the row waits (due_at), any node runs it next */
    ath__counts(w)->retried++;
    ath__store_mark(w, t);
    ath__emit_task(w, t, ATH_EV_TASK_RETRYING, now);
    return 0;
  }
  if (ath__heap_push(&w->delayed, t) != 0)
    return -1;
  w->n_scheduled++;
  ath__counts(w)->retried++;
  ath__store_mark(w, t);
  ath__emit_task(w, t, ATH_EV_TASK_RETRYING, now);
  *wake_engine |= w->delayed.items[0] == t;
  return 0;
}

/* A failed attempt (or workflow run): retried (§7.3), compensated (T10),
 * or final. Returns the new nwake. */
int ath__attempt_failed(ath_world_t* w, ath_task_t* t, const ath_outcome_t* o, int64_t now,
                          uint64_t mono, ath_worker_t** wake, int nwake, int* wake_engine) {
  if (!o->final && ath__retry_task(w, t, o, now, mono, wake_engine) == 0)
    return nwake;
  if (t->wf != NULL && t->strategy == ATH_STRATEGY_COMPENSATE) {
    /* T10: compensations run in segments of their own */
    t->status = ATH_COMPENSATING;
    return ath__wf_resume(w, t, wake, nwake);
  }
  return ath__finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED, now,
                     wake, nwake);
}
