/* Workflows and sagas on the PostgreSQL backend: contracts in wf_pg.h. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "wf_pg.h"
#include "store.h"

int ath__wfpg_alloc(ath_wfpg_t* b, size_t n) {
  memset(b, 0, sizeof(*b));
  size_t k = n ? n : 1;
  b->apps = calloc(k, sizeof(*b->apps));
  b->app_t = calloc(k, sizeof(*b->app_t));
  b->app_evs = calloc(k, sizeof(*b->app_evs));
  b->appended = calloc(k, 1);
  b->parks = calloc(k, sizeof(*b->parks));
  b->park_t = calloc(k, sizeof(*b->park_t));
  b->park_err = calloc(k, sizeof(*b->park_err));
  b->parked = calloc(k, 1);
  b->reqs = calloc(k, sizeof(*b->reqs));
  b->req_t = calloc(k, sizeof(*b->req_t));
  b->req_attempt = calloc(k, sizeof(*b->req_attempt));
  b->kids = calloc(k, sizeof(*b->kids));
  if (!b->kids || !b->apps || !b->app_t || !b->app_evs || !b->appended || !b->parks || !b->park_t ||
      !b->park_err || !b->parked || !b->reqs || !b->req_t || !b->req_attempt) {
    ath__wfpg_free(b);
    return ATH_ENOMEM;
  }
  return 0;
}

void ath__wfpg_free(ath_wfpg_t* b) {
  for (size_t i = 0; b->apps != NULL && i < b->napps; i++) {
    ath__wfev_release_all(b->app_evs[i], b->apps[i].n);
    free((void*)b->apps[i].events);
  }
  for (size_t i = 0; b->park_err != NULL && i < b->nparks; i++)
    free(b->park_err[i]);
  free(b->apps);
  free(b->app_t);
  free(b->app_evs);
  free(b->appended);
  free(b->parks);
  free(b->park_t);
  free(b->park_err);
  free(b->parked);
  free(b->reqs);
  free(b->req_t);
  free(b->req_attempt);
  free(b->kids);
  memset(b, 0, sizeof(*b));
}

/* The events of t not handed to the database yet, as an append. */
static void add_append(ath_wfpg_t* b, ath_task_t* t) {
  ath_wf_t* wf = t->wf;
  size_t n;
  ath_wfev_t** evs = ath__wf_events_from(wf, wf->stored_n, &n);
  const char** texts = evs != NULL ? malloc(n * sizeof(*texts)) : NULL;
  if (texts == NULL) { /* out of memory: they go with a later cycle */
    ath__wfev_release_all(evs, evs != NULL ? n : 0);
    return;
  }
  for (size_t i = 0; i < n; i++)
    texts[i] = evs[i]->json;
  ath_queue_append_t* a = &b->apps[b->napps];
  a->seq = ath__task_dq(t)->dq_seq;
  a->from = (int)wf->stored_n;
  a->events = texts;
  a->n = n;
  b->app_evs[b->napps] = evs;
  b->app_t[b->napps++] = t;
  wf->stored_n = wf->nev;
}

/* The wall time (ms) at which t's run exceeds its timeout, parked time
 * counted (the run started at start_mono), or 0 when it has none. */
static int64_t run_deadline(const ath_task_t* t, int64_t now) {
  int64_t lim = ath__task_limits(t)->timeout_ms;
  if (lim <= 0 || t->start_mono == 0)
    return 0;
  /* uv_hrtime: a world on a shared queue has no manual clock */
  int64_t ran = (int64_t)((uv_hrtime() - t->start_mono) / 1000000u);
  return now + lim - ran;
}

/* The park of t's segment (wf->where parked or timer). */
static void add_park(ath_wfpg_t* b, ath_task_t* t, int64_t now) {
  ath_wf_t* wf = t->wf;
  ath_task_x_t* x = ath__task_dq(t);
  ath_queue_park_t* p = &b->parks[b->nparks];
  memset(p, 0, sizeof(*p));
  p->seq = x->dq_seq;
  p->attempt = x->dq_attempt;
  p->status = t->status;
  /* a compensating run carries the failure it compensates */
  if (t->status == ATH_COMPENSATING && t->error != NULL)
    b->park_err[b->nparks] = ath__memdup(t->error, t->error_len);
  p->error = b->park_err[b->nparks];
  p->wait_kind = wf->where == ATH_WF_TIMER ? ATH_PARK_TIMER : wf->wait_kind;
  p->wait_task = wf->wait_task != NULL ? wf->wait_task->id : NULL;
  p->wait_seq = wf->wait_seq;
  p->delay_ms = wf->where == ATH_WF_TIMER ? t->ready_at - now : 0;
  p->wake_seen = wf->dq_wake;
  p->run_by = run_deadline(t, now);
  b->park_t[b->nparks++] = t;
  x->dq_attempt = 0; /* given back with the park; restored if the cycle fails */
}

int ath__wfpg_take(ath_wfpg_t* b, ath_task_t* t, int64_t now) {
  ath_wf_t* wf = t->wf;
  ath_task_x_t* x = ath__task_dq(t);
  if (wf == NULL || x == NULL || x->dq_attempt <= 0 || x->dq_seq <= 0)
    return 0;
  if (wf->nev > wf->stored_n)
    add_append(b, t);
  /* ended cancelled or by a cascade: its children, wherever they run, too */
  if (t->status == ATH_CANCELLED || (t->status == ATH_FAILED && wf->forced))
    b->kids[b->nkids++] = x->dq_seq;
  int waiting = t->status == ATH_RUNNING || t->status == ATH_COMPENSATING;
  if (t->remote && wf->resuming) { /* a resumption handed back unrun: same run, same state */
    b->req_attempt[b->nreqs] = x->dq_attempt;
    b->reqs[b->nreqs] = x->dq_seq;
    b->req_t[b->nreqs++] = t;
    x->dq_attempt = 0;
    return 1;
  }
  if (!t->remote && waiting && t->wk == NULL &&
      ((wf->where == ATH_WF_PARKED && wf->wait_task != NULL) || wf->where == ATH_WF_TIMER)) {
    add_park(b, t, now);
    return 1;
  }
  return 0;
}

void ath__wfpg_fill(ath_wfpg_t* b, ath_queue_cycle_t* c) {
  c->appends = b->apps;
  c->n_appends = b->napps;
  c->appended = b->appended;
  c->parks = b->parks;
  c->n_parks = b->nparks;
  c->parked = b->parked;
  c->requeues = b->reqs;
  c->n_requeues = b->nreqs;
  c->kids = b->kids;
  c->n_kids = b->nkids;
}

void ath__wfpg_undo(ath_wfpg_t* b) {
  for (size_t i = 0; i < b->napps; i++) {
    ath_wf_t* wf = b->app_t[i]->wf;
    if (wf->stored_n > (uint32_t)b->apps[i].from)
      wf->stored_n = (uint32_t)b->apps[i].from;
  }
  for (size_t i = 0; i < b->nparks; i++)
    ath__task_dq(b->park_t[i])->dq_attempt = b->parks[i].attempt;
  for (size_t i = 0; i < b->nreqs; i++)
    ath__task_dq(b->req_t[i])->dq_attempt = b->req_attempt[i];
}

void ath__wfpg_done(ath_world_t* w, ath_wfpg_t* b, int64_t* stage_at, int64_t* lost) {
  for (size_t i = 0; i < b->napps; i++) {
    if (!b->appended[i]) {
      (*lost)++;
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "history events of workflow %s discarded: its lease was lost",
                b->app_t[i]->id);
    }
  }
  for (size_t i = 0; i < b->nparks; i++) {
    ath_task_t* t = b->park_t[i];
    ath_task_x_t* x = ath__task_dq(t);
    if (!b->parked[i]) {
      (*lost)++;
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "park of workflow %s discarded: its lease was lost", t->id);
    } else if (x->dq_attempt > 0) {
      continue; /* ready again at once and claimed back by this very cycle: it runs here */
    } else if (b->parks[i].wait_kind == ATH_PARK_TIMER && (*stage_at == 0 || t->ready_at < *stage_at)) {
      *stage_at = t->ready_at; /* this node stages its own timers (the leader sweeps late ones) */
    }
    /* a proxy of its row from now on: any node resumes it (the run's
     * timeout is not kept across parks on this backend: docs) */
    if (x->exp_idx != UINT32_MAX)
      ath__heap_remove(&w->expiry, x);
    if (t->wf->wait_task != NULL) {
      ath_task_release(t->wf->wait_task);
      t->wf->wait_task = NULL;
    }
    t->remote = 1;
    if (!ATH_IS_TERMINAL(t->status))
      ath__dq_watch(w, x->dq_seq);
  }
}

/* Replaces t's history by the row's (comma-free: joined by ATH_WFEV_SEP). */
static int reload_history(ath_wf_t* wf, const char* text) {
  for (uint32_t i = 0; i < wf->nev; i++)
    ath__wfev_release(wf->ev[i]);
  wf->nev = wf->stored_n = wf->park_nev = 0;
  wf->last_out.ev = NULL;
  return text != NULL ? ath__wf_load(wf, text, strlen(text)) : 0;
}

/* Claimed workflow t (set up as a resumption of its run) is not to run:
 * a child failed under cascade (its row's mark), or a cancel was accepted
 * while it was parked. It ends here, with its history, as in one process.
 * Returns 0 (not queued), or -1 when it goes on after all (a cancel, which
 * a compensating run refuses). */
static int stop_claimed(ath_world_t* w, ath_task_t* t, const ath_queue_task_t* r, ath_worker_t** wake,
                        int* nwake) {
  t->wf->resuming = 0;
  if (r->wait_kind == ATH_QUEUE_WAIT_CASCADE) {
    *nwake = ath__wf_cascade_row(w, t, r->wait_error, wake, *nwake);
    return 0;
  }
  int accepted;
  t->wf->where = ATH_WF_PARKED;
  *nwake = ath__cancel_locked(w, t, ath__wall(w), wake, *nwake, &accepted);
  if (accepted)
    return 0;
  atomic_store(&t->cancel_ns, 0);
  t->wf->resuming = 1;
  return -1;
}

int ath__wfpg_claimed(ath_world_t* w, ath_task_t* t, const ath_queue_task_t* r, ath_worker_t** wake,
                      int* nwake) {
  ath_wf_t* wf = t->wf;
  wf->dq_wake = r->wake;
  wf->home = 0;
  if (wf->wait_task != NULL) {
    ath_task_release(wf->wait_task);
    wf->wait_task = NULL;
  }
  if (reload_history(wf, r->history) != 0) { /* out of memory: handed back (T14, or requeued) */
    wf->resuming = r->resumed;
    t->remote = 1;
    ath__store_mark(w, t);
    return 0;
  }
  int stop = r->wait_kind == ATH_QUEUE_WAIT_CASCADE || (r->resumed && r->cancel_at >= 0);
  if (!r->resumed && !stop) {
    wf->resuming = 0;
    return -1;
  }
  /* the run began at the row's started_at (any node's): its timeout
   * counts from there, parked time included (exchange.c start_claimed) */
  if (r->started_at > 0) {
    int64_t ago = ath__wall(w) - r->started_at;
    uint64_t mono = ath__mono(w);
    t->start_mono = ago <= 0 ? mono : (uint64_t)ago * 1000000u < mono ? mono - (uint64_t)ago * 1000000u : 1;
    t->started_at = r->started_at;
  }
  if (r->wait_kind == ATH_QUEUE_WAIT_TIMEOUT && r->status == ATH_RUNNING && !stop) {
    /* parked past its deadline: the leader made it ready to end the run */
    ath__task_dq(t)->dq_attempt = r->attempt;
    t->remote = 0;
    t->unborn = 0;
    t->attempt = r->attempt;
    t->status = ATH_RUNNING;
    wf->resuming = 0;
    wf->where = ATH_WF_PARKED;
    *nwake = ath__wf_run_timed_out(w, t, wake, *nwake);
    return 0;
  }
  /* the same run goes on, in its state (running or compensating) */
  ath__task_dq(t)->dq_attempt = r->attempt;
  t->remote = 0;
  t->unborn = 0;
  t->attempt = r->attempt;
  t->status = (ath_status_t)r->status;
  ath__dq_take_error(t, r->error); /* a compensating run's failure */
  if (stop && stop_claimed(w, t, r, wake, nwake) == 0)
    return 0;
  if (r->wait_kind != ATH_PARK_NONE && r->wait_kind != ATH_QUEUE_WAIT_CASCADE &&
      r->wait_kind != ATH_QUEUE_WAIT_TIMEOUT)
    ath__wf_record_row(w, t, r->wait_kind, r->wait_seq, r->wait_status, r->wait_result, r->wait_error);
  wf->resuming = 1;
  wf->where = ATH_WF_QUEUED;
  t->ready_at = ath__wall(w);
  t->ready_mono = ath__mono(w);
  if (ath__queue_push(t->queue, t) == 0)
    return 1;
  wf->resuming = 1; /* handed back: a resumption of the same run */
  t->remote = 1;
  ath__store_mark(w, t);
  return 0;
}

int ath__wfpg_rescue(ath_queue_conn_t* q, int64_t lease, ath_queue_tasks_t* rows) {
  int64_t* seqs = malloc((rows->n ? rows->n : 1) * sizeof(*seqs));
  if (seqs == NULL)
    return -1;
  size_t n = 0, keep = 0;
  for (size_t i = 0; i < rows->n; i++) {
    const ath_queue_task_t* r = &rows->rows[i];
    int segment = r->kind == 1 && (r->status == ATH_RUNNING || r->status == ATH_COMPENSATING);
    if (segment && r->rescues <= 3) /* a segment that killed its host 3 times fails instead */
      seqs[n++] = r->seq;
    else
      rows->rows[keep++] = *r;
  }
  rows->n = keep;
  int rc = ath__q_wf_requeue(q, lease, seqs, n);
  free(seqs);
  return rc == 0 ? (int)n : -1;
}
