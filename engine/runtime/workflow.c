/* Workflow engine pieces that need no world lock (SEMANTICS §9): the
 * per-call limits of the tasks a workflow starts. The histories, parking
 * and outcomes live in world.c ("workflows"). */
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "store.h"
#include "gw_json.h"

/* A number member of obj as milliseconds (or a count), or `dflt` when
 * absent. -1 when present but not a non-negative number. */
static double num_field(const ath_gj_t* obj, const char* key, double dflt) {
  const ath_gj_t* v = ath__gj_field(obj, key);
  if (v == NULL)
    return dflt;
  if (v->type != ATH_GJ_NUMBER)
    return -1;
  double d = ath__gw_strtod(v->str, NULL);
  return d >= 0 && d < 9007199254740992.0 ? d : -1;
}

int ath__call_new(const ath_activity_t* def, const char* json, size_t len, ath_call_t** out) {
  *out = NULL;
  ath_gj_doc_t* doc;
  int rc = ath__gj_parse(json, len, &doc, NULL);
  if (rc != 0)
    return rc;
  const ath_gj_t* root = doc->root;
  const ath_gj_t* retry = ath__gj_field(root, "retry");
  const ath_gj_t* nr = retry ? ath__gj_field(retry, "nonRetryable") : NULL;
  rc = root->type == ATH_GJ_OBJECT && (retry == NULL || retry->type == ATH_GJ_OBJECT) &&
           (nr == NULL || nr->type == ATH_GJ_ARRAY || (nr->type == ATH_GJ_OBJECT && nr->count == 0))
       ? 0 : ATH_EINVAL; /* an empty list may be encoded as {} */
  size_t nnr = 0, strbytes = 0;
  for (const ath_gj_t* s = nr ? nr->first : NULL; s != NULL && rc == 0; s = s->next) {
    if (s->type != ATH_GJ_STRING)
      rc = ATH_EINVAL;
    nnr++;
    strbytes += s->len + 1;
  }
  ath_call_t* c = NULL;
  if (rc == 0) {
    size_t size = sizeof(*c) + (nnr + 1) * sizeof(char*) + strbytes + len + 1;
    if ((c = calloc(1, size)) == NULL)
      rc = ATH_ENOMEM;
  }
  if (rc != 0) {
    ath__gj_free(doc);
    return rc;
  }
  c->a = *def;
  ath_activity_t* a = &c->a;
  double v[3] = {num_field(root, "timeout", (double)a->timeout_ms),
                 num_field(root, "scheduleToClose", (double)a->schedule_to_close_ms),
                 num_field(root, "heartbeatTimeout", (double)a->heartbeat_timeout_ms)};
  a->timeout_ms = (int64_t)v[0];
  a->schedule_to_close_ms = (int64_t)v[1];
  a->heartbeat_timeout_ms = (int64_t)v[2];
  rc = v[0] < 0 || v[1] < 0 || v[2] < 0 ? ATH_EINVAL : 0;
  char** list = (char**)(c + 1);
  char* strs = (char*)(list + nnr + 1);
  if (retry != NULL && rc == 0) { /* replaces the definition's policy whole */
    const ath_gj_t* b = ath__gj_field(retry, "backoff");
    double ma = num_field(retry, "maxAttempts", 0);
    double ii = num_field(retry, "initialInterval", 1000);
    double mi = num_field(retry, "maxInterval", 60000);
    double mu = num_field(retry, "multiplier", 2);
    a->has_retry = 1;
    a->max_attempts = (int)ma;
    a->backoff = b == NULL || b->type != ATH_GJ_STRING ? ATH_BACKOFF_EXPONENTIAL
                 : strcmp(b->str, "linear") == 0       ? ATH_BACKOFF_LINEAR
                 : strcmp(b->str, "constant") == 0     ? ATH_BACKOFF_CONSTANT
                                                       : ATH_BACKOFF_EXPONENTIAL;
    a->initial_interval_ms = (int64_t)ii;
    a->max_interval_ms = (int64_t)mi;
    a->multiplier = mu;
    rc = ma < 0 || ma > 1e9 || ii < 0 || mi < 0 || mu < 1 ? ATH_EINVAL : 0;
    size_t i = 0;
    for (const ath_gj_t* s = nr ? nr->first : NULL; s != NULL; s = s->next) {
      memcpy(strs, s->str, s->len + 1);
      list[i++] = strs;
      strs += s->len + 1;
    }
    list[i] = NULL;
    a->non_retryable = (const char* const*)list;
  }
  c->json = strs;
  memcpy(c->json, json, len);
  c->json[len] = '\0';
  c->json_len = len;
  ath__gj_free(doc);
  if (rc != 0) {
    free(c);
    return rc;
  }
  *out = c;
  return 0;
}

/* ------------------------------------------------------- owned tasks */

void ath__wf_kid_add(ath_wf_t* wf, ath_task_t* c) {
  if (wf->nkids == wf->kids_cap) {
    if (wf->kids_lo > wf->nkids / 2) { /* mostly removed ones: compact */
      uint32_t k = 0;
      for (uint32_t i = wf->kids_lo; i < wf->nkids; i++)
        if (wf->kids[i] != NULL)
          wf->kids[k++] = wf->kids[i];
      wf->nkids = k;
      wf->kids_lo = 0;
    } else {
      uint32_t cap = wf->kids_cap ? wf->kids_cap * 2 : 8;
      ath_task_t** k = realloc(wf->kids, cap * sizeof(*k));
      if (k == NULL) {
        wf->kids_lost = 1;
        return;
      }
      wf->kids = k;
      wf->kids_cap = cap;
    }
  }
  wf->kids[wf->nkids++] = c;
}

void ath__wf_kid_remove(ath_wf_t* wf, const ath_task_t* c) {
  /* they mostly leave oldest first: the search starts at the oldest left */
  for (uint32_t i = wf->kids_lo; i < wf->nkids; i++) {
    if (wf->kids[i] != c)
      continue;
    wf->kids[i] = NULL;
    while (wf->kids_lo < wf->nkids && wf->kids[wf->kids_lo] == NULL)
      wf->kids_lo++;
    if (wf->kids_lo == wf->nkids)
      wf->kids_lo = wf->nkids = 0;
    return;
  }
}

/* ----------------------------------------------------------- history */

ath_wfev_t* ath__wfev_new(const char* json, size_t len) {
  if (len > UINT32_MAX - 1)
    return NULL;
  ath_wfev_t* e = malloc(sizeof(*e) + len + 1);
  if (e == NULL)
    return NULL;
  atomic_init(&e->refs, 1);
  e->len = (uint32_t)len;
  memcpy(e->json, json, len);
  e->json[len] = '\0';
  return e;
}

/* Room after a prebuilt completion for ,"run":<int>,"seq":<int64>} */
#define DONE_TAIL (sizeof(",\"run\":-2147483648,\"seq\":-9223372036854775808}"))

/* Writes v in decimal at p; returns the end. */
static char* put_i64(char* p, int64_t v) {
  char num[24];
  char* s = ath__fmt_i64(num + sizeof(num), v);
  size_t n = (size_t)(num + sizeof(num) - s);
  memcpy(p, s, n);
  return p + n;
}

/* {"type":"<type>","at":<at>,"result":<t's result> with room for DONE_TAIL
 * more bytes: the outcome events of a completed task, built off the lock
 * and finished by done_finish. */
static ath_wfev_t* outcome_new(const char* type, const ath_task_t* t, int64_t at) {
  size_t tlen = strlen(type), rlen = t->result != NULL ? t->result_len : 4;
  if (rlen > UINT32_MAX - 1 - DONE_TAIL - 128)
    return NULL;
  ath_wfev_t* e = malloc(sizeof(*e) + 64 + tlen + rlen + DONE_TAIL);
  if (e == NULL)
    return NULL;
  atomic_init(&e->refs, 1);
  char* p = e->json;
  memcpy(p, "{\"type\":\"", 9);
  memcpy(p += 9, type, tlen);
  memcpy(p += tlen, "\",\"at\":", 7);
  p = put_i64(p + 7, at);
  memcpy(p, ",\"result\":", 10);
  memcpy(p += 10, t->result != NULL ? t->result : "null", rlen);
  p += rlen;
  *p = '\0';
  e->len = (uint32_t)(p - e->json);
  return e;
}

/* Completes an outcome event with its run and, when seq >= 0, seq. */
static void done_finish(ath_wfev_t* e, int run, int64_t seq) {
  char* p = e->json + e->len;
  memcpy(p, ",\"run\":", 7);
  p = put_i64(p + 7, run);
  if (seq >= 0) {
    memcpy(p, ",\"seq\":", 7);
    p = put_i64(p + 7, seq);
  }
  *p++ = '}';
  *p = '\0';
  e->len = (uint32_t)(p - e->json);
}

ath_wfev_t* ath__wf_done_new(const ath_task_t* t, int64_t at) {
  return outcome_new(t->wf != NULL ? "child.completed" : "activity.completed", t, at);
}

ath_wfev_t* ath__wf_ended_new(const ath_task_t* t, int64_t at) {
  ath_wfev_t* e = outcome_new("workflow.completed", t, at);
  if (e != NULL)
    done_finish(e, t->attempt, -1);
  return e;
}

void ath__wfev_retain(ath_wfev_t* e) {
  atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void ath__wfev_release(ath_wfev_t* e) {
  if (e != NULL && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
    free(e);
}

void ath__wfev_release_all(ath_wfev_t** evs, size_t n) {
  for (size_t i = 0; evs != NULL && i < n; i++)
    ath__wfev_release(evs[i]);
  free(evs);
}

int ath__wf_push(ath_wf_t* wf, ath_wfev_t* e) {
  if (wf->nev == wf->evcap) {
    uint32_t cap = wf->evcap ? wf->evcap * 2 : 16;
    ath_wfev_t** v = cap > wf->evcap ? realloc(wf->ev, cap * sizeof(*v)) : NULL;
    if (v == NULL) {
      ath__wfev_release(e);
      return ATH_ENOMEM;
    }
    wf->ev = v;
    wf->evcap = cap;
  }
  wf->ev[wf->nev++] = e;
  return 0;
}

ath_wfev_t** ath__wf_events_from(const ath_wf_t* wf, uint32_t from, size_t* n) {
  *n = from < wf->nev ? wf->nev - from : 0;
  if (*n == 0)
    return NULL;
  ath_wfev_t** out = malloc(*n * sizeof(*out));
  for (size_t i = 0; out != NULL && i < *n; i++) {
    out[i] = wf->ev[from + i];
    ath__wfev_retain(out[i]);
  }
  return out;
}

void ath__wf_tail_release(ath_wf_t* wf, ath_wfev_t** evs, size_t n) {
  for (size_t i = 0; evs != NULL && i < n; i++)
    ath__wfev_release(evs[i]);
  if (evs != &wf->tail1)
    free(evs);
}

char* ath__wf_events_join(ath_wfev_t* const* evs, size_t n, size_t* len) {
  size_t total = 2 + (n ? n - 1 : 0);
  for (size_t i = 0; i < n; i++)
    total += evs[i]->len;
  char* out = malloc(total + 1);
  if (out == NULL)
    return NULL;
  char* p = out;
  *p++ = '[';
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      *p++ = ',';
    memcpy(p, evs[i]->json, evs[i]->len);
    p += evs[i]->len;
  }
  *p++ = ']';
  *p = '\0';
  *len = total;
  return out;
}

int ath__wf_load(ath_wf_t* wf, const char* text, size_t len) {
  const char* end = text + len;
  while (text < end) {
    const char* sep = memchr(text, ATH_WFEV_SEP, (size_t)(end - text));
    const char* stop = sep != NULL ? sep : end;
    if (stop > text) {
      ath_wfev_t* e = ath__wfev_new(text, (size_t)(stop - text));
      if (e == NULL || ath__wf_push(wf, e) != 0)
        return ATH_ENOMEM;
    }
    text = stop + (sep != NULL);
  }
  wf->stored_n = wf->nev;
  return 0;
}

void ath__wf_free(ath_wf_t* wf) {
  for (uint32_t i = 0; i < wf->nev; i++)
    ath__wfev_release(wf->ev[i]);
  ath__wf_tail_release(wf, wf->tail, wf->ntail);
  free(wf->ev);
  free(wf->kids);
  free(wf->forced_err);
  ath__wfev_release(wf->ended);
  free(wf);
}

/* ------------------------------------------------ the engine's side
 *
 * Histories, parking, outcomes of awaited tasks, cascade (SEMANTICS §9).
 * The Lua side (athena/workflow.lua) replays the handler against the
 * history in each segment and parks at the first command whose outcome is
 * not recorded; everything here runs with the world lock held. */

ath_wfev_t** ath__world_wf_events(ath_world_t* w, ath_task_t* t, uint32_t from, size_t* n,
                                  uint32_t* total) {
  uv_mutex_lock(&w->lock);
  ath_wfev_t** evs = ath__wf_events_from(t->wf, from, n);
  *total = t->wf->nev;
  uv_mutex_unlock(&w->lock);
  return evs;
}

/* Starts an event {"type":..,"at":..,"run":..; ath__wf_push_buf closes it.
 * These return 0, or ATH_ENOMEM when a piece could not be appended. */
int ath__ev_begin(ath_buf_t* b, const ath_task_t* t, const char* type, int64_t now) {
  int rc = ath__buf_putlit(b, "{\"type\":\"");
  rc |= ath__buf_put(b, type, strlen(type));
  rc |= ath__buf_putlit(b, "\",\"at\":");
  rc |= ath__buf_i64(b, now);
  rc |= ath__buf_putlit(b, ",\"run\":");
  return rc | ath__buf_i64(b, t->attempt);
}

int ath__ev_int(ath_buf_t* b, const char* key, int64_t v) {
  int rc = ath__buf_putlit(b, ",\"");
  rc |= ath__buf_put(b, key, strlen(key));
  rc |= ath__buf_putlit(b, "\":");
  return rc | ath__buf_i64(b, v);
}

/* Adds "key":json (null when json is NULL). */
void ath__ev_raw(ath_buf_t* b, const char* key, const char* json, size_t len) {
  ath__buf_putlit(b, ",\""); /* no printf: every step records events */
  ath__buf_put(b, key, strlen(key));
  ath__buf_putlit(b, "\":");
  if (json != NULL)
    ath__buf_put(b, json, len);
  else
    ath__buf_putlit(b, "null");
}

/* Closes the event in b and appends it to t's history (b keeps its memory). */
static int push_event(ath_world_t* w, ath_task_t* t, ath_buf_t* b) {
  int rc = ath__buf_lit(b, "}");
  if (rc == 0 && b->data != NULL) {
    ath_wfev_t* e = ath__wfev_new(b->data, b->len);
    rc = e != NULL ? ath__wf_push(t->wf, e) : ATH_ENOMEM;
    ath__store_mark(w, t);
  }
  return rc;
}

/* Appends a finished event to t's history (and consumes b). */
int ath__wf_push_buf(ath_world_t* w, ath_task_t* t, ath_buf_t* b) {
  int rc = push_event(w, t, b);
  ath__buf_free(b);
  return rc;
}

/* Records the cancel.requested a cancel accepted while a segment ran put
 * off (lock held). */
static void flush_cancel(ath_world_t* w, ath_task_t* t) {
  if (t->wf->cancel_at == 0)
    return;
  ath_buf_t b = {0};
  ath__ev_begin(&b, t, "cancel.requested", t->wf->cancel_at);
  ath__wf_push_buf(w, t, &b);
  t->wf->cancel_at = 0;
}

/* A cancel of workflow t was accepted (lock held): cancel.requested goes
 * in its history now, or, while a segment runs and its events travel with
 * its outcome (memory, hybrid), after them. */
void ath__wf_cancel_requested(ath_world_t* w, ath_task_t* t, int64_t now) {
  if (t->wk != NULL && w->cfg.persistence != ATH_PERSIST_FILE) {
    if (t->wf->cancel_at == 0)
      t->wf->cancel_at = now;
    return;
  }
  t->wf->cancel_at = now;
  flush_cancel(w, t);
}

/* Adds the events segment outcome o of workflow t recorded to its history,
 * in order, then a cancel.requested put off meanwhile, with one store mark
 * (lock held). An event that finds no memory is dropped with the ones
 * after it: a replay records them again. */
void ath__wf_publish(ath_world_t* w, ath_task_t* t, ath_outcome_t* o) {
  uint32_t i = 0;
  while (i < o->nevs && ath__wf_push(t->wf, o->evs[i]) == 0)
    i++;
  for (uint32_t k = i + 1; k < o->nevs; k++) /* ath__wf_push released evs[i] */
    ath__wfev_release(o->evs[k]);
  o->nevs = 0;
  flush_cancel(w, t);
  ath__store_mark(w, t);
}

int ath__world_wf_append(ath_world_t* w, ath_task_t* t, const char* json, size_t len, uint64_t* gen) {
  ath_wfev_t* e = ath__wfev_new(json, len); /* made before the lock */
  uv_mutex_lock(&w->lock);
  int rc = e != NULL ? ath__wf_push(t->wf, e) : ATH_ENOMEM;
  ath__store_mark(w, t);
  /* §9.2: committed before it proceeds (the caller waits, yielding) */
  *gen = w->cfg.persistence == ATH_PERSIST_FILE ? w->gen : 0;
  uv_mutex_unlock(&w->lock);
  return rc;
}

/* The error JSON a finished task reports to its workflow. */
static void ev_task_error(ath_buf_t* b, const ath_task_t* x) {
  if (x->status == ATH_CANCELLED || x->error == NULL) {
    char tmp[160];
    int code = x->status == ATH_CANCELLED ? ATH_ECANCELED : x->err_code ? x->err_code : ATH_EHANDLER;
    int n = snprintf(tmp, sizeof(tmp), "{\"code\":\"%s\",\"message\":\"%s\",\"retryable\":false,\"attempt\":%d}",
                     ath_err_name(code), ath_strerror(code), x->attempt);
    ath__ev_raw(b, "error", tmp, (size_t)n);
  } else {
    ath__ev_raw(b, "error", x->error, x->error_len);
  }
}

/* Records the outcome of x, which workflow t awaits as its command
 * t->wf->wait_seq, in t's history. */
static void wf_record(ath_world_t* w, ath_task_t* t, const ath_task_t* x, int64_t now) {
  static const char* const types[][2] = {
    {"", ""}, {"activity.failed", "activity.completed"}, {"child.failed", "child.completed"},
    {"compensation.failed", "compensation.completed"}};
  ath_wf_t* wf = t->wf;
  int kind = wf->wait_kind;
  int ok = x->status == ATH_COMPLETED;
  ath_wf_outev_t m = {.type = types[kind][ok], .run = t->attempt, .index = kind == ATH_PARK_COMP,
                      .seq = wf->wait_seq, .at = now};
  ath_task_x_t* xx = ath__task_xr(x);
  if (xx != NULL && xx->done != NULL) {
    ath_wfev_t* e = xx->done; /* the worker that ran x built it: no copy here */
    xx->done = NULL;
    if (ok && kind == (x->wf != NULL ? ATH_PARK_CHILD : ATH_PARK_ACTIVITY)) {
      m.key = "result"; /* the event ends with x's result until done_finish */
      m.vlen = x->result != NULL ? (uint32_t)x->result_len : 4;
      m.voff = e->len - m.vlen;
      done_finish(e, t->attempt, wf->wait_seq);
      wf->last_out.ev = NULL;
      if (ath__wf_push(wf, e) == 0) {
        ath__store_mark(w, t);
        m.ev = e;
        wf->last_out = m;
      }
      return;
    }
    ath__wfev_release(e); /* a compensation's outcome, or a failure: built below */
  }
  ath_buf_t* b = &w->evbuf; /* one per step: the world's scratch, not a new buffer */
  b->len = 0;
  ath__ev_begin(b, t, m.type, now);
  ath__ev_int(b, m.index ? "index" : "seq", m.seq);
  size_t at = b->len;
  if (ok && kind != ATH_PARK_COMP) {
    ath__ev_raw(b, "result", x->result, x->result_len);
    m.key = "result";
  } else if (!ok) {
    ev_task_error(b, x);
    m.key = "error";
  }
  if (m.key != NULL) { /* ,"key":value */
    m.voff = (uint32_t)(at + strlen(m.key) + 4);
    m.vlen = (uint32_t)(b->len - m.voff);
  }
  wf->last_out.ev = NULL;
  if (push_event(w, t, b) == 0) {
    m.ev = wf->ev[wf->nev - 1];
    wf->last_out = m;
  }
}

/* Whether worker wk can take resumptions of the workflows it caches. */
int ath__home_open(const ath_world_t* w, const ath_worker_t* wk) {
  return wk->state == ATH_WK_RUNNING && !wk->stop && !atomic_load(&wk->lost) &&
         (w->state == ATH_W_STARTED || w->draining);
}

/* Queues a resumption of parked workflow t (its state stays running or
 * compensating; the claim continues the run): on its home worker, which
 * still has its coroutine, else in its queue for any worker (which
 * replays the history). Returns the new nwake. */
int ath__wf_resume(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath_wf_t* wf = t->wf;
  if (wf->wait_task != NULL) {
    ath_task_release(wf->wait_task);
    wf->wait_task = NULL;
  }
  wf->wait_kind = ATH_PARK_NONE;
  wf->resuming = 1;
  t->ready_at = ath__wall(w);
  t->ready_mono = ath__mono(w);
  ath__store_mark(w, t);
  ath_worker_t* home = ath__worker_by_id(w, wf->home); /* NULL once retired or lost */
  if (home != NULL && wake != NULL && ath__home_open(w, home)) {
    wf->where = ATH_WF_HOME;
    ath__list_append(&home->resumes, t);
    t->queue->depth++;
    if (home->wants_work) {
      ath__set_wants(home, 0);
      nwake = ath__add_wake(wake, nwake, home);
    }
    return nwake;
  }
  wf->home = 0;
  wf->where = ATH_WF_QUEUED;
  if (ath__queue_push(t->queue, t) != 0) {
    ath__set_error(t, ATH_ENOMEM, "out of memory resuming the workflow");
    return ath__finish_task(w, t, ATH_FAILED, ath__wall(w), wake, nwake);
  }
  if (wake != NULL && nwake < MAX_WORKERS)
    nwake += ath__pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
  return nwake;
}

/* Moves the resumptions queued on worker wk (stopping, or lost) to their
 * queues, for any worker (lock held). Returns the new nwake. */
int ath__wf_unhome(ath_world_t* w, ath_worker_t* wk, ath_worker_t** wake, int nwake) {
  for (ath_task_t* t = wk->resumes.head; t != NULL; t = wk->resumes.head) {
    ath__list_unlink(&wk->resumes, t);
    t->queue->depth--;
    t->wf->home = 0;
    nwake = ath__wf_resume(w, t, wake, nwake);
  }
  return nwake;
}

/* The next workflow due to resume on wk (lock held), or NULL. */
ath_task_t* ath__wf_pop_home(ath_worker_t* wk) {
  ath_task_t* t = wk->resumes.head;
  if (t != NULL) {
    ath__list_unlink(&wk->resumes, t);
    t->queue->depth--;
    ath_wf_t* wf = t->wf; /* what its cached coroutine has not seen yet */
    size_t n;
    ath__wf_tail_release(wf, wf->tail, wf->ntail);
    wf->tail_out = 0;
    if (wf->nev == wf->park_nev + 1) { /* the usual: the outcome alone */
      wf->tail1 = wf->ev[wf->park_nev];
      ath__wfev_retain(wf->tail1);
      wf->tail = &wf->tail1;
      wf->tail_out = wf->tail1 == wf->last_out.ev;
      n = 1;
    } else {
      wf->tail = ath__wf_events_from(wf, wf->park_nev, &n);
    }
    wf->has_tail = wf->tail != NULL || n == 0; /* else out of memory: read later */
    wf->ntail = wf->tail != NULL ? (uint32_t)n : 0;
  }
  return t;
}

/* Cancels t's non-terminal children except `keep`. */
static int cancel_children(ath_world_t* w, ath_task_t* t, const ath_task_t* keep, int64_t now,
                           ath_worker_t** wake, int nwake) {
  ath_wf_t* wf = t->wf;
  if (wf->kids_lost) { /* the list is incomplete: scan the table */
    w->kid_scans++;
    for (size_t b = 0; b < w->table_cap; b++) {
      for (ath_task_t* c = w->table[b]; c != NULL; c = c->hnext) {
        int accepted;
        if (ath__task_parent(c) == t && c != keep && !ATH_IS_TERMINAL(c->status) && !c->remote)
          nwake = ath__cancel_locked(w, c, now, wake, nwake, &accepted);
      }
    }
    return nwake;
  }
  /* nothing leaves the table before the critical section ends */
  for (uint32_t i = wf->kids_lo; i < wf->nkids; i++) {
    ath_task_t* c = wf->kids[i];
    int accepted;
    if (c != NULL && c != keep && !ATH_IS_TERMINAL(c->status) && !c->remote) /* a proxy: its row's */
      nwake = ath__cancel_locked(w, c, now, wake, nwake, &accepted);
  }
  return nwake;
}

/* Child x failed under `cascade`: its parent t fails with x's error (no
 * retry, no compensation) and t's other children are cancelled (§8). */
static int wf_cascade(ath_world_t* w, ath_task_t* t, ath_task_t* x, int64_t now,
                      ath_worker_t** wake, int nwake) {
  ath_buf_t e = {0};
  ev_task_error(&e, x); /* ,"error":{...} */
  const char* json = e.data ? strchr(e.data, ':') + 1 : NULL;
  t->wf->forced = 1;
  nwake = cancel_children(w, t, x, now, wake, nwake);
  if (ath__unqueue(w, t) != 0) {
    /* a segment is running: stop it at its next yield point; the outcome
     * then becomes this failure (ath__world_exchange) */
    free(t->wf->forced_err);
    t->wf->forced_err = json ? ath__memdup(json, e.len - (size_t)(json - e.data)) : NULL;
    t->wf->forced_err_len = t->wf->forced_err ? e.len - (size_t)(json - e.data) : 0;
    t->wf->forced = 2; /* 2: pending; 1: applied */
    if (atomic_load(&t->cancel_ns) == 0)
      atomic_store(&t->cancel_ns, ath__mono(w));
    ath__buf_free(&e);
    return ath__wake_runner(t, wake, nwake);
  }
  free(t->error);
  t->error = json ? ath__memdup(json, e.len - (size_t)(json - e.data)) : NULL;
  t->error_len = t->error ? e.len - (size_t)(json - e.data) : 0;
  t->err_code = x->err_code ? x->err_code : ATH_ECANCELED;
  ath__buf_free(&e);
  return ath__finish_task(w, t, ATH_FAILED, now, wake, nwake);
}

/* t turned terminal (called by ath__finish_task): its history, its children on
 * cancel or cascade, and its parent (an awaited outcome or a cascade). */
int ath__wf_terminal(ath_world_t* w, ath_task_t* t, int64_t now, ath_worker_t** wake, int nwake) {
  if (t->wf != NULL) {
    flush_cancel(w, t); /* a lost worker's segment never published */
    static const char* const names[] = {
      [ATH_COMPLETED] = "workflow.completed", [ATH_FAILED] = "workflow.failed",
      [ATH_CANCELLED] = "workflow.cancelled", [ATH_QUARANTINED] = "workflow.failed",
      [ATH_COMPENSATED] = "workflow.compensated"};
    ath_wfev_t* ended = t->wf->ended;
    t->wf->ended = NULL;
    if (t->status == ATH_COMPLETED && ended != NULL) { /* its worker built it: no copy here */
      if (ath__wf_push(t->wf, ended) == 0)
        ath__store_mark(w, t);
    } else {
      ath__wfev_release(ended);
      ath_buf_t b = {0};
      ath__ev_begin(&b, t, names[t->status], now);
      if (t->status == ATH_COMPLETED)
        ath__ev_raw(&b, "result", t->result, t->result_len);
      else if (t->status != ATH_CANCELLED)
        ath__ev_raw(&b, "error", t->error, t->error_len);
      ath__wf_push_buf(w, t, &b);
    }
    if (t->wf->wait_task != NULL) {
      ath_task_release(t->wf->wait_task);
      t->wf->wait_task = NULL;
    }
    if (t->status == ATH_CANCELLED || t->wf->forced)
      nwake = cancel_children(w, t, NULL, now, wake, nwake);
  }
  ath_task_t* p = ath__task_parent(t);
  if (p == NULL || w->dq != NULL || ATH_IS_TERMINAL(p->status) || p->wf->forced)
    return nwake; /* PostgreSQL: the finish statement wakes (or marks) the parent's row */
  if (t->status == ATH_FAILED && t->strategy == ATH_STRATEGY_CASCADE && p->status != ATH_COMPENSATING)
    return wf_cascade(w, p, t, now, wake, nwake);
  if (p->wf->wait_task == t && p->wf->where == ATH_WF_PARKED) {
    wf_record(w, p, t, now);
    nwake = ath__wf_resume(w, p, wake, nwake);
  }
  return nwake;
}

/* A segment of t parked (from its outcome o): record what it waits for,
 * or resume it at once when the outcome is already there. */
int ath__wf_park(ath_world_t* w, ath_task_t* t, ath_outcome_t* o, int64_t now, uint64_t mono,
                   ath_worker_t** wake, int nwake, int* wake_engine) {
  ath_wf_t* wf = t->wf;
  wf->wait_kind = o->park_kind;
  wf->wait_seq = o->park_seq;
  wf->home = o->home != NULL ? o->home->id : 0; /* its coroutine waits there */
  wf->park_nev = wf->nev;
  ath__store_mark(w, t);
  if (o->park_kind == ATH_PARK_TIMER) {
    if (o->park_at > now) {
      wf->where = ATH_WF_TIMER;
      t->ready_at = o->park_at;
      if (w->dq != NULL)
        return nwake; /* PostgreSQL: the park statement makes its row due */
      t->ready_mono = ath__after(mono, o->park_at - now);
      if (ath__heap_push(&w->delayed, t) == 0) {
        w->n_scheduled++;
        *wake_engine |= w->delayed.items[0] == t;
        return nwake;
      }
    }
    ath_buf_t b = {0};
    ath__ev_begin(&b, t, "timer.fired", now);
    ath__ev_int(&b, "seq", o->park_seq);
    ath__wf_push_buf(w, t, &b);
    return ath__wf_resume(w, t, wake, nwake);
  }
  ath_task_t* x = o->park_task;
  o->park_task = NULL;
  if (ATH_IS_TERMINAL(x->status)) {
    wf_record(w, t, x, now);
    ath_task_release(x);
    return ath__wf_resume(w, t, wake, nwake);
  }
  wf->where = ATH_WF_PARKED;
  wf->wait_task = x; /* the outcome's reference */
  return nwake;
}

int ath__wf_cascade_row(ath_world_t* w, ath_task_t* t, const char* error, ath_worker_t** wake,
                        int nwake) {
  ath_task_t x; /* the failed child as its row says (wf_cascade reads no more) */
  memset(&x, 0, sizeof(x));
  x.status = ATH_FAILED;
  x.error = (char*)error;
  x.error_len = error ? (uint32_t)strlen(error) : 0;
  x.err_code = ATH_EHANDLER;
  t->wf->where = ATH_WF_PARKED; /* in no queue: it fails where it is */
  t->status = ATH_RUNNING;
  return wf_cascade(w, t, &x, ath__wall(w), wake, nwake);
}

void ath__wf_record_row(ath_world_t* w, ath_task_t* t, int kind, int64_t seq, int status,
                        const char* result, const char* error) {
  ath_wf_t* wf = t->wf;
  int64_t now = ath__wall(w);
  wf->wait_kind = kind;
  wf->wait_seq = seq;
  if (kind == ATH_PARK_TIMER) {
    ath_buf_t b = {0};
    ath__ev_begin(&b, t, "timer.fired", now);
    ath__ev_int(&b, "seq", seq);
    ath__wf_push_buf(w, t, &b);
  } else if (ATH_IS_TERMINAL(status)) {
    ath_task_t x; /* the awaited task as its row says (wf_record reads no more) */
    memset(&x, 0, sizeof(x));
    x.status = (ath_status_t)status;
    x.result = (char*)result;
    x.result_len = result ? (uint32_t)strlen(result) : 0;
    x.error = (char*)error;
    x.error_len = error ? (uint32_t)strlen(error) : 0;
    wf_record(w, t, &x, now);
  }
  wf->wait_kind = ATH_PARK_NONE;
}

/* A segment of workflow t was claimed (lock held). */
void ath__wf_claimed(ath_task_t* t) {
  t->wf->where = ATH_WF_SLOT;
  t->wf->home = 0;
  t->wf->segs++;
}

/* A due timer of a workflow parked in ctx:sleep (engine tick). */
int ath__wf_timer_fired(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath_buf_t b = {0};
  ath__ev_begin(&b, t, "timer.fired", ath__wall(w));
  ath__ev_int(&b, "seq", t->wf->wait_seq);
  ath__wf_push_buf(w, t, &b);
  return ath__wf_resume(w, t, wake, nwake);
}

/* The run of a workflow parked between segments outlived its `timeout`
 * (§3: parked time counts): the run fails with ETIMEDOUT like an attempt,
 * so it is re-run, compensated or final by its strategy. (A run that is in
 * a slot is stopped by the slot's own deadline.) */
int ath__wf_run_timed_out(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
  int64_t now = ath__wall(w);
  int wake_engine = 0; /* the tick re-arms its timer itself */
  ath__unqueue(w, t);
  t->wf->wait_kind = ATH_PARK_NONE;
  ath__set_error(t, ATH_ETIMEDOUT, "the workflow run exceeded its timeout");
  ath_outcome_t o = {.task = t, .status = ATH_FAILED, .err_code = ATH_ETIMEDOUT, .retry_after = -1};
  return ath__attempt_failed(w, t, &o, now, ath__mono(w), wake, nwake, &wake_engine);
}

static int older_first(const void* a, const void* b) {
  const ath_task_t* x = *(ath_task_t* const*)a;
  const ath_task_t* y = *(ath_task_t* const*)b;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The tasks t owns that are in RAM with seq > after, as new references in
 * *out (malloc'd), in no order; returns the count, or -1 when out of
 * memory. t may be the stored copy of a workflow that left RAM: its owned
 * tasks still in RAM point at the original, so the table is scanned then
 * (as when t's list is incomplete). */
static int ram_children(ath_world_t* w, const ath_task_t* t, uint64_t after, ath_task_t*** out) {
  uv_mutex_lock(&w->lock);
  ath_task_t* in_table = ath__table_get(w, t->id, ath__hash_id(t->id));
  ath_wf_t* wf = in_table == t && t->wf != NULL && !t->wf->kids_lost ? t->wf : NULL;
  size_t cap = wf != NULL ? wf->nkids - wf->kids_lo : 64, n = 0;
  ath_task_t** a = malloc((cap ? cap : 1) * sizeof(*a));
  if (a != NULL && wf != NULL) {
    for (uint32_t i = wf->kids_lo; i < wf->nkids; i++) {
      ath_task_t* c = wf->kids[i];
      if (c != NULL && c->seq > after) {
        ath_task_retain(c);
        a[n++] = c;
      }
    }
  } else if (a != NULL) {
    w->kid_scans++;
    for (size_t b = 0; b < w->table_cap && a != NULL; b++) {
      for (ath_task_t* c = w->table[b]; c != NULL; c = c->hnext) {
        const ath_task_t* cp = ath__task_parent(c);
        if (c->seq <= after || cp == NULL || (cp != t && strcmp(cp->id, t->id) != 0))
          continue;
        if (n == cap) {
          ath_task_t** g = realloc(a, cap * 2 * sizeof(*a));
          if (g == NULL) {
            ath__release_all(a, n);
            a = NULL;
            break;
          }
          a = g;
          cap *= 2;
        }
        ath_task_retain(c);
        a[n++] = c;
      }
    }
  }
  uv_mutex_unlock(&w->lock);
  *out = a;
  return a != NULL ? (int)n : -1;
}

int ath_world_children_after(ath_world_t* w, const ath_task_t* t, uint64_t after, ath_task_t** out,
                             int cap) {
  if (cap <= 0 || t->wf == NULL)
    return 0;
  ath_task_t** ram;
  int n = ram_children(w, t, after, &ram);
  if (n < 0)
    return ATH_ENOMEM;
  ath_task_t** stored = NULL;
  int64_t ns = 0;
  if (w->reads != NULL) { /* finished ones that left RAM (read with no lock) */
    ath_store_query_t q = {STORED_MASK, NULL, t->id, 0, 0, cap, 1, after, 1, t->seq};
    stored = malloc((size_t)cap * sizeof(*stored));
    ns = stored != NULL ? ath__stored_tasks(w, &q, stored) : 0;
    ns = ns < 0 ? 0 : ns;
  }
  /* merged in creation order, each once (one may have left RAM meanwhile) */
  ath_task_t** all = malloc(((size_t)n + (size_t)ns + 1) * sizeof(*all));
  if (all == NULL) {
    ath__release_all(ram, (size_t)n);
    ath__release_all(stored, (size_t)ns);
    return ATH_ENOMEM;
  }
  memcpy(all, ram, (size_t)n * sizeof(*all));
  if (ns > 0)
    memcpy(all + n, stored, (size_t)ns * sizeof(*all));
  free(ram);
  free(stored);
  size_t m = (size_t)n + (size_t)ns, k = 0;
  qsort(all, m, sizeof(*all), older_first);
  for (size_t i = 0; i < m; i++) {
    if ((k > 0 && out[k - 1]->seq == all[i]->seq) || k == (size_t)cap)
      ath_task_release(all[i]);
    else
      out[k++] = all[i];
  }
  free(all);
  return (int)k;
}

int ath_world_children(ath_world_t* w, const ath_task_t* t, ath_task_t** out, int cap) {
  int n = ath_world_children_after(w, t, 0, out, cap);
  return n < 0 ? 0 : n;
}

uint64_t ath_task_seq(const ath_task_t* t) {
  return t->seq;
}

/* Keeps workflow t, whose segment a draining shutdown refused a command,
 * out of the queue until the drain ends (lock held). Returns 0 or
 * ATH_ENOMEM. */
int ath__hold_workflow(ath_world_t* w, ath_task_t* t) {
  if (w->nheld == w->held_cap) {
    int cap = w->held_cap ? w->held_cap * 2 : 16;
    ath_task_t** h = realloc(w->held, (size_t)cap * sizeof(*h));
    if (h == NULL)
      return ATH_ENOMEM;
    w->held = h;
    w->held_cap = cap;
  }
  t->wf->where = ATH_WF_PARKED; /* out of any queue: cancel and cascade find it so */
  w->held[w->nheld++] = t;
  return 0;
}
