/* The world: configuration and definitions, the task table and the recent
 * terminal tasks, reads of stored tasks, execute, the engine loop (delays,
 * retries and scheduleToClose coming due), start, shutdown and free,
 * cancel / requeue / purge / queries, recovery and retention, serve.
 * Its other parts: exchange.c (claim, publish, the end of a task, waking),
 * retry.c, workflow.c, telemetry.c (metrics, autoscaler, monitor) and
 * vclock.c (the manual clock).
 *
 * One mutex (w->lock) guards the world's state. Workers take it once per
 * pass of their loop (ath__world_exchange), publishing every attempt that
 * ended and claiming new tasks in the same critical section, so the lock is
 * taken per batch, not per task. The lock is never held across Lua calls. */
#include <errno.h>
#include <stddef.h>
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

void ath__set_err(char* err, size_t errlen, const char* fmt, const char* a) {
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, fmt, a);
}

static char* xstrdup(const char* s) {
  if (s == NULL)
    return NULL;
  size_t n = strlen(s) + 1;
  char* p = malloc(n);
  if (p != NULL)
    memcpy(p, s, n);
  return p;
}

void ath_world_config_init(ath_world_config_t* cfg) {
  memset(cfg, 0, sizeof(*cfg));
  ath__config_defaults(cfg); /* the scalar options: config.c */
  cfg->default_concurrency = 1;
  cfg->poll_interval_ms = 1000;
}

void ath_activity_init(ath_activity_t* a, const char* name) {
  memset(a, 0, sizeof(*a));
  a->name = name;
  a->backoff = ATH_BACKOFF_EXPONENTIAL;
  a->initial_interval_ms = 1000;
  a->max_interval_ms = 60000;
  a->multiplier = 2;
  a->timeout_ms = 300000;
  a->failure_strategy = ATH_STRATEGY_DEFAULT;
}

static int valid_queue_name(const char* s) {
  size_t n = strlen(s);
  if (n < 1 || n > 64)
    return 0;
  for (; *s; s++) {
    char c = *s;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
      return 0;
  }
  return 1;
}

static ath_queue_t* queue_new(const char* name, int workers, int concurrency) {
  ath_queue_t* q = calloc(1, sizeof(*q));
  if (q == NULL || ath__sub_init(q) != 0) {
    free(q);
    return NULL;
  }
  snprintf(q->name, sizeof(q->name), "%s", name);
  q->workers = workers;
  q->concurrency = concurrency;
  return q;
}

static ath_queue_t* find_queue(ath_world_t* w, const char* name) {
  for (int i = 0; i < w->nqueues; i++)
    if (strcmp(w->queues[i]->name, name) == 0)
      return w->queues[i];
  return NULL;
}

static int find_def(ath_world_t* w, const char* name) {
  for (int i = 0; i < w->ndefs; i++)
    if (strcmp(w->defs[i].name, name) == 0)
      return i;
  return -1;
}

/* The expiry heap holds tasks' rare parts (ath_task_x_t, whose exp_idx
 * it keeps): only tasks with a scheduleToClose deadline have one there. */
static int expiry_less(const void* a, const void* b) {
  const ath_task_x_t* x = a;
  const ath_task_x_t* y = b;
  return x->exp_mono < y->exp_mono;
}

int ath_world_new(const ath_world_config_t* cfg, ath_world_t** out, char* err,
                  size_t errlen) {
  int crc = ath__config_check(cfg, err, errlen);
  if (crc != 0)
    return crc;
  if (cfg->webhook_url && strncmp(cfg->webhook_url, "http://", 7) != 0 &&
      strncmp(cfg->webhook_url, "https://", 8) != 0) {
    ath__set_err(err, errlen, "%s", "invalid webhook URL (http:// or https://)");
    return ATH_EINVAL;
  }
  if (cfg->default_concurrency < 1) {
    ath__set_err(err, errlen, "%s", "invalid concurrency (must be >= 1)");
    return ATH_EINVAL;
  }
  if (cfg->database && ath__db_url_kind(cfg->database) == 0) {
    ath__set_err(err, errlen, "%s", "invalid database (sqlite:<path> or postgres://...)");
    return ATH_EINVAL;
  }
  if (cfg->event_sink && cfg->webhook_url) {
    ath__set_err(err, errlen, "%s", "webhook_url and event_sink are exclusive");
    return ATH_EINVAL;
  }
  char serr[256];
  if (ath__store_check(cfg, serr, sizeof(serr)) != 0) {
    ath__set_err(err, errlen, "%s", serr);
    return ATH_EINVAL;
  }
  if (cfg->queue != NULL && cfg->backend_url == NULL) {
    ath__set_err(err, errlen, "%s", "invalid backend: a queue provider needs backend_url (the location it opens)");
    return ATH_EINVAL;
  }
  if (cfg->backend_url != NULL && ath__dq_check(cfg, serr, sizeof(serr)) != 0) {
    ath__set_err(err, errlen, "%s", serr);
    return ATH_EINVAL;
  }
  if (cfg->backend_url != NULL && cfg->store != NULL) {
    ath__set_err(err, errlen, "%s", "invalid backend: a store provider and the PostgreSQL backend are exclusive");
    return ATH_EINVAL;
  }
  if (cfg->backend_url != NULL) { /* the PostgreSQL backend (storage/store_pg.c) */
    const char* bad = cfg->persistence == ATH_PERSIST_MEMORY
                          ? "invalid backend: persistence = \"memory\" keeps nothing in PostgreSQL (use file or hybrid)"
                      : cfg->manual_clock ? "invalid backend: the manual clock cannot drive a shared queue (time cannot stand still in a database)"
                      : cfg->poll_interval_ms < 1 ? "invalid pollInterval (a duration > 0)"
                      : cfg->backend_url[0] == '\0' ? "invalid backend url (postgres://...)"
                                                     : NULL;
    if (bad != NULL) {
      ath__set_err(err, errlen, "%s", bad);
      return ATH_EINVAL;
    }
  }
  ath_world_t* w = calloc(1, sizeof(*w));
  if (w == NULL)
    return ATH_ENOMEM;
  uv_mutex_init(&w->lock);
  uv_mutex_init(&w->tel_lock);
  uv_cond_init(&w->cond);
  uv_sem_init(&w->ready, 0);
  w->cfg = *cfg;
  w->cfg.persistence_path = xstrdup(cfg->persistence_path ? cfg->persistence_path : ".athena");
  w->cfg.entry_script = xstrdup(cfg->entry_script);
  w->cfg.lua_path = xstrdup(cfg->lua_path);
  w->cfg.lua_cpath = xstrdup(cfg->lua_cpath);
  w->cfg.database = xstrdup(cfg->database);
  w->cfg.webhook_url = xstrdup(cfg->webhook_url);
  w->cfg.log_file = xstrdup(cfg->log_file);
  w->cfg.backend_url = xstrdup(cfg->backend_url);
  w->cfg.backend_schema = xstrdup(cfg->backend_schema);
  w->cfg.node_id = xstrdup(cfg->node_id);
  if (cfg->backend_url != NULL) /* a parked workflow leaves the node: every segment replays */
    w->cfg.workflow_cache = 0;
  w->modules = ath__strv_dup(cfg->modules);
  w->script_args = ath__strv_dup(cfg->script_args);
  w->cfg.modules = (const char* const*)w->modules;
  w->cfg.script_args = (const char* const*)w->script_args;
  w->queues = calloc(1, sizeof(ath_queue_t*));
  w->table_cap = 1024;
  w->table = calloc(w->table_cap, sizeof(ath_task_t*));
  if (w->queues != NULL)
    w->queues[0] = queue_new("default", 0, cfg->default_concurrency);
  if (w->cfg.persistence_path == NULL || w->queues == NULL ||
      w->queues[0] == NULL || w->table == NULL ||
      (cfg->modules && !w->modules) || (cfg->script_args && !w->script_args) ||
      (cfg->entry_script && !w->cfg.entry_script) || (cfg->database && !w->cfg.database) ||
      (cfg->backend_url && !w->cfg.backend_url) || (cfg->backend_schema && !w->cfg.backend_schema) ||
      (cfg->node_id && !w->cfg.node_id)) {
    w->nqueues = w->queues ? 1 : 0;
    ath_world_free(w);
    return ATH_ENOMEM;
  }
  w->nqueues = 1;
  w->next_worker_id = 1;
  w->delayed = (ath_heap_t)ATH_HEAP_INIT(ath__task_ready_less, ath_task_t, heap_idx);
  w->vtimers = (ath_heap_t)ATH_HEAP_INIT(ath__vtimer_less, ath_vtimer_t, heap_idx);
  w->expiry = (ath_heap_t)ATH_HEAP_INIT(expiry_less, ath_task_x_t, exp_idx);
  w->manual = cfg->manual_clock != 0;
  w->prefetch_window_ns = ATH_PREFETCH_WINDOW_NS;
  const char* window = getenv("ATHENA_TEST_PREFETCH_WINDOW_US"); /* valgrind runs 50x slower */
  if (window != NULL && atoll(window) > 0)
    w->prefetch_window_ns = (uint64_t)atoll(window) * 1000u;
  w->vbase_wall = ath__now_ms();
  w->vbase_mono = uv_hrtime();
  atomic_init(&w->vmono, w->vbase_mono);
  w->owner = uv_thread_self();
  w->state = ATH_W_NEW;
  ath_log_config_t lc;
  ath__log_config_init(&lc);
  lc.level = (ath_log_level_t)cfg->log_level;
  lc.format = (ath_log_format_t)cfg->log_format;
  lc.file = cfg->log_file;
  lc.max_size = cfg->log_max_size;
  lc.max_files = cfg->log_max_files;
  int lrc = ath__log_open(&lc, &w->log, err, errlen);
  if (lrc != 0) {
    ath_world_free(w);
    return lrc;
  }
  *out = w;
  return 0;
}

int ath_world_add_queue(ath_world_t* w, const char* name, int workers,
                        int concurrency) {
  if (w->state != ATH_W_NEW || !valid_queue_name(name) || concurrency < 1 ||
      workers < 0 || workers > MAX_WORKERS)
    return ATH_EINVAL;
  ath_queue_t* q = find_queue(w, name);
  if (q != NULL) { /* "default" may set its concurrency, not its workers */
    if (q == w->queues[0] && workers != 0)
      return ATH_EINVAL;
    q->concurrency = concurrency;
    if (q != w->queues[0])
      q->workers = workers;
    return 0;
  }
  if (workers < (w->cfg.backend_url != NULL ? 0 : 1)) /* 0: declared, served by other nodes */
    return ATH_EINVAL;
  ath_queue_t** qs = realloc(w->queues, (w->nqueues + 1) * sizeof(*qs));
  if (qs == NULL)
    return ATH_ENOMEM;
  w->queues = qs;
  if ((qs[w->nqueues] = queue_new(name, workers, concurrency)) == NULL)
    return ATH_ENOMEM;
  w->nqueues++;
  return 0;
}

int ath_world_register(ath_world_t* w, const ath_activity_t* a) {
  if (w->state != ATH_W_NEW || a->name == NULL || a->name[0] == '\0' ||
      a->timeout_ms < (a->workflow ? 0 : 1) || a->schedule_to_close_ms < 0 ||
      a->heartbeat_timeout_ms < 0 || a->max_attempts < 0 ||
      a->initial_interval_ms < 0 || a->max_interval_ms < a->initial_interval_ms ||
      !(a->multiplier >= 1) || (int)a->failure_strategy < ATH_STRATEGY_DEFAULT ||
      a->failure_strategy > ATH_STRATEGY_QUARANTINE)
    return ATH_EINVAL;
  ath_queue_t* q = find_queue(w, a->task_queue ? a->task_queue : "default");
  if (q == NULL)
    return ATH_EINVAL;
  int i = find_def(w, a->name);
  if (i >= 0)
    return (w->defs[i].queue == q && w->defs[i].a.priority == a->priority) ? 0 : ATH_EINVAL;
  ath_def_t* defs = realloc(w->defs, (w->ndefs + 1) * sizeof(*defs));
  if (defs == NULL)
    return ATH_ENOMEM;
  w->defs = defs;
  ath_def_t* d = &defs[w->ndefs];
  memset(d, 0, sizeof(*d));
  d->a = *a;
  d->name = xstrdup(a->name);
  d->non_retryable = ath__strv_dup(a->non_retryable);
  if (d->name == NULL || (a->non_retryable && d->non_retryable == NULL)) {
    free(d->name);
    ath__strv_free(d->non_retryable);
    return ATH_ENOMEM;
  }
  d->a.name = d->a.task_queue = NULL;
  d->a.non_retryable = (const char* const*)d->non_retryable;
  d->queue = q;
  w->ndefs++;
  return 0;
}

/* ------------------------------------------------------------ task table */

static int table_grow(ath_world_t* w) {
  size_t cap = w->table_cap * 2;
  ath_task_t** t = calloc(cap, sizeof(*t));
  if (t == NULL)
    return ATH_ENOMEM;
  for (size_t i = 0; i < w->table_cap; i++) {
    ath_task_t* e = w->table[i];
    while (e != NULL) {
      ath_task_t* next = e->hnext;
      size_t b = ath__hash_id(e->id) & (cap - 1);
      e->hnext = t[b];
      t[b] = e;
      e = next;
    }
  }
  free(w->table);
  w->table = t;
  w->table_cap = cap;
  return 0;
}

ath_task_t* ath__table_get(ath_world_t* w, const char* id, uint64_t hash) {
  ath__submits_drain(w); /* a lookup right after an execute finds its task */
  for (ath_task_t* e = w->table[hash & (w->table_cap - 1)]; e; e = e->hnext)
    if (strcmp(e->id, id) == 0)
      return e;
  return NULL;
}

/* h: ath__hash_id(t->id), which the caller has (the record keeps no hash) */
static void table_put(ath_world_t* w, ath_task_t* t, uint64_t h) {
  size_t b = h & (w->table_cap - 1);
  t->hnext = w->table[b];
  w->table[b] = t;
  w->ntasks++;
  ath_task_t* parent = ath__task_parent(t);
  if (parent != NULL && parent->wf != NULL)
    ath__wf_kid_add(parent->wf, t);
}

/* Moves a drained submission into the world (lock held), as the locked
 * path of execute does: numbered now, so that it follows whatever the
 * world numbered before (one submitter's tasks keep its order). */
static void drain_one(ath_world_t* w, ath_task_t* t) {
  uint64_t h = t->sub_hash; /* hashed by its submitter, before any lock */
  t->qprev = NULL;
  t->seq = w->next_seq++;
  table_put(w, t, h);
  if (ath__make_ready(w, t) != 0) { /* no memory for the queue's index: fails visibly */
    t->status = ATH_FAILED;
    t->err_code = ATH_ENOMEM;
    t->completed_at = ath__wall(w);
    ath__counts(w)->failed++;
  }
}

void ath__submits_drain(ath_world_t* w) {
  if (atomic_load_explicit(&w->submitted, memory_order_acquire) == 0)
    return;
  for (int i = 0; i < w->nqueues; i++) {
    int64_t n;
    ath_task_t* t = ath__sub_take(w, w->queues[i], &n);
    /* no memory to grow: the chains get longer, nothing is lost */
    while (t != NULL && w->ntasks + (size_t)n > w->table_cap && table_grow(w) == 0)
      ;
    while (t != NULL) {
      ath_task_t* next = t->qnext;
      t->qnext = NULL;
      drain_one(w, t);
      t = next;
    }
  }
  if (w->cfg.persistence == ATH_PERSIST_HYBRID)
    atomic_store_explicit(&w->dirty_hint, (long long)w->ndirty, memory_order_relaxed);
}

/* ------------------------------------------------- recent terminal tasks
 *
 * Terminal tasks (dead letters aside: they wait for requeue or purge) are
 * listed in the order they ended, through qprev/qnext, which only ready
 * tasks use otherwise. RAM is not the archive: in memory mode at most
 * retain_terminal of them stay, oldest evicted first; with a store, each
 * leaves RAM once its final state is committed. An evicted task is out of
 * the table (query() no longer finds it in RAM) but lives on while a
 * handle, a waiter or a workflow holds a reference. Lock held throughout. */

static void term_unlink(ath_world_t* w, ath_task_t* t) {
  if (!t->in_term)
    return;
  ath__list_unlink(&w->term, t);
  t->in_term = 0;
  w->nterm--;
}

static void table_unlink_h(ath_world_t* w, ath_task_t* t, uint64_t h) {
  for (ath_task_t** p = &w->table[h & (w->table_cap - 1)]; *p; p = &(*p)->hnext) {
    if (*p == t) {
      *p = t->hnext;
      w->ntasks--;
      ath_task_t* parent = ath__task_parent(t);
      if (parent != NULL && parent->wf != NULL)
        ath__wf_kid_remove(parent->wf, t);
      break;
    }
  }
  term_unlink(w, t);
}

void ath__table_unlink(ath_world_t* w, ath_task_t* t) {
  table_unlink_h(w, t, ath__hash_id(t->id));
}

/* Takes the terminal tasks that must leave RAM out of the table, chained
 * through hnext; the caller drops their table references with term_free
 * after unlocking. Evictions happen only here, at the end of a critical
 * section, so no code holding a bare task pointer sees its task freed. In
 * memory mode the oldest beyond retain_terminal go; with a store, every
 * task whose final state is committed (no newer change pending). */
ath_task_t* ath__world_term_trim(ath_world_t* w) {
  return ath__world_term_trim_n(w, SIZE_MAX);
}

ath_task_t* ath__world_term_trim_n(ath_world_t* w, size_t max) {
  ath_task_t* dead = NULL;
  /* a store without reads (get/query) keeps them as memory mode does */
  int memory = w->cfg.persistence == ATH_PERSIST_MEMORY || w->reads == NULL;
  for (ath_task_t* t = w->term.head; t != NULL && max > 0; t = w->term.head, max--) {
    if (memory ? w->nterm <= w->cfg.retain_terminal
               : w->reads == NULL || t->dirty || ath__task_gen(w, t) > w->committed_gen)
      break;
    uint64_t h = ath__hash_id(t->id);
    table_unlink_h(w, t, h);
    uint64_t k = atomic_load_explicit(&w->nevicted, memory_order_relaxed);
    w->evicted_hash[k % ATH_EVICTED_RING] = h;
    atomic_store(&w->nevicted, k + 1); /* seq_cst: see execute's deferred steps */
    t->hnext = dead;
    dead = t;
  }
  return dead;
}

void ath__world_term_free(ath_task_t* dead) {
  while (dead != NULL) {
    ath_task_t* next = dead->hnext;
    ath_task_release(dead);
    dead = next;
  }
}

void ath__term_push(ath_world_t* w, ath_task_t* t) {
  /* dead letters stay in RAM, except on the PostgreSQL backend: their row
   * is the cluster's truth (getQuarantined reads it) */
  if (t->in_term || (t->status == ATH_QUARANTINED && w->dq == NULL))
    return;
  ath__list_append(&w->term, t);
  t->in_term = 1;
  w->nterm++;
}

/* Takes t out of the table and the store (lock held); the caller drops
 * the table's reference. */
static void table_remove(ath_world_t* w, ath_task_t* t) {
  ath__table_unlink(w, t);
  t->purged = 1;
  ath__store_mark(w, t);
}

atomic_int ath__fault_task_x;

ath_task_x_t* ath__task_x(ath_task_t* t) {
  ath_task_x_t* x = ath__task_xr(t);
  if (x != NULL)
    return x;
  if (atomic_load_explicit(&ath__fault_task_x, memory_order_relaxed) > 0 &&
      atomic_fetch_sub_explicit(&ath__fault_task_x, 1, memory_order_relaxed) > 0)
    return NULL;
  if ((x = calloc(1, sizeof(*x))) == NULL)
    return NULL;
  x->task = t;
  x->exp_idx = UINT32_MAX;
  atomic_store_explicit(&t->x, x, memory_order_release);
  return x;
}

static void task_x_free(ath_task_x_t* x) {
  if (x == NULL)
    return;
  free(x->call);
  if (x->parent != NULL)
    ath_task_release(x->parent);
  ath__wfev_release(x->done);
  free(x->hb);
  free(x);
}

static void task_free(ath_task_t* t) {
  if (t->wf != NULL) {
    if (t->wf->wait_task != NULL)
      ath_task_release(t->wf->wait_task);
    ath__wf_free(t->wf);
  }
  task_x_free(ath__task_xr(t));
  if (!t->input_inline)
    free(t->input);
  free(t->result);
  free(t->error);
  free(t);
}

void ath_task_retain(ath_task_t* t) {
  atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

void ath_task_release(ath_task_t* t) {
  if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
    task_free(t);
}

void ath__task_end(const ath_task_t* t, ath_task_end_t* out) {
  out->result = t->result;
  out->result_len = t->result_len;
  out->error = t->error;
  out->error_len = t->error_len;
  out->err_code = t->err_code;
}

int ath__task_err_code(ath_world_t* w, const ath_task_t* t) {
  uv_mutex_lock(&w->lock);
  int code = t->err_code;
  uv_mutex_unlock(&w->lock);
  return code;
}

const char* ath_task_id(const ath_task_t* t) {
  return t->id;
}

const char* ath_task_name(const ath_task_t* t) {
  return t->def->name;
}

const char* ath_task_queue(const ath_task_t* t) {
  return t->queue->name;
}

ath_status_t ath_task_status(ath_world_t* w, const ath_task_t* t) {
  if (w->dq != NULL) /* a proxy of a task another node runs: as its row says */
    ath__dq_refresh(w, (ath_task_t*)t);
  uv_mutex_lock(&w->lock);
  ath_status_t s = t->status;
  uv_mutex_unlock(&w->lock);
  return s;
}

int ath_task_snapshot(ath_world_t* w, const ath_task_t* t, ath_task_info_t* info) {
  memset(info, 0, sizeof(*info));
  if (w->dq != NULL)
    ath__dq_refresh(w, (ath_task_t*)t);
  uv_mutex_lock(&w->lock);
  info->status = t->status;
  info->attempt = t->attempt;
  info->worker_id = t->worker_id;
  info->priority = t->priority;
  info->max_attempts = t->max_attempts;
  info->failure_strategy = t->strategy;
  info->ready_at = t->ready_at;
  const ath_task_x_t* x = ath__task_xr(t);
  int lost_hb = 0; /* out of memory copying the details (none: a heartbeat without them) */
  if (x != NULL) {
    info->last_heartbeat = x->last_hb;
    info->heartbeat = ath__memdup(x->hb, x->hb_len);
    info->heartbeat_len = x->hb ? x->hb_len : 0;
    lost_hb = x->hb != NULL && info->heartbeat == NULL;
  }
  info->created_at = t->created_at;
  info->scheduled_at = t->scheduled_at;
  info->started_at = t->started_at;
  info->completed_at = t->completed_at;
  int terminal = ATH_IS_TERMINAL(t->status);
  int owned = t->status == ATH_RUNNING; /* its worker may be rewriting error */
  char* error = owned ? NULL : ath__memdup(t->error, t->error_len);
  size_t error_len = error ? t->error_len : 0;
  int lost_error = !owned && t->error != NULL && error == NULL; /* out of memory */
  info->workflow = t->wf != NULL;
  size_t nev = 0; /* the history: references taken here, joined unlocked */
  ath_wfev_t** evs = t->wf != NULL ? ath__wf_events_from(t->wf, 0, &nev) : NULL;
  lost_error |= evs == NULL && nev > 0;
  uv_mutex_unlock(&w->lock);
  if (t->wf != NULL && !lost_error) {
    info->history = ath__wf_events_join(evs, nev, &info->history_len);
    lost_error |= info->history == NULL;
  }
  ath__wfev_release_all(evs, evs != NULL ? nev : 0);
  const ath_task_t* parent = ath__task_parent(t); /* immutable */
  if (parent != NULL) {
    info->parent_id = ath__memdup(parent->id, strlen(parent->id));
    lost_error |= info->parent_id == NULL;
  }
  /* Input never changes; result and error are written before the task turns
   * terminal and never after, so they are read outside the lock. */
  info->input = ath__memdup(t->input, t->input_len);
  info->input_len = t->input_len;
  if (terminal) {
    info->result = ath__memdup(t->result, t->result_len);
    info->result_len = t->result_len;
  }
  info->error = error;
  info->error_len = error_len;
  if (!info->input || (terminal && t->result && !info->result) ||
      lost_hb || lost_error) {
    ath_task_snapshot_free(info);
    return ATH_ENOMEM;
  }
  return 0;
}

void ath_task_snapshot_free(ath_task_info_t* info) {
  free(info->parent_id);
  free(info->history);
  free(info->heartbeat);
  free(info->input);
  free(info->result);
  free(info->error);
  memset(info, 0, sizeof(*info));
}

/* ------------------------------------------------- tasks out of RAM
 *
 * With a store, a finished task leaves RAM once committed; these read it
 * back as a *stored* task: a task object in no table, built from its row
 * (terminal, so it never changes), which handles and snapshots use like
 * any other. Reads take a connection of their own, never the world lock. */

static ath_task_t* task_from_row(ath_world_t* w, const ath_row_t* r, ath_task_t* parent);
static int64_t stored_tasks(ath_world_t* w, const ath_store_query_t* q, ath_task_t** out,
                            ath_task_t* const* listed, size_t nlisted);
static ath_task_t* row_parent(ath_world_t* w, const ath_row_t* r);

typedef struct {
  ath_world_t* w;
  ath_task_t** out;
  int64_t n, cap;
  ath_task_t* const* listed; /* by hash: tasks a RAM scan listed, whose rows are skipped */
  size_t nlisted;
} rows_t;

static int by_id(const void* a, const void* b) {
  return strcmp((*(ath_task_t* const*)a)->id, (*(ath_task_t* const*)b)->id);
}

static int id_cmp(const void* key, const void* e) {
  return strcmp(key, (*(ath_task_t* const*)e)->id);
}

/* Whether a[0..n) (sorted by id) holds a task with id `id`. */
static int listed_has(ath_task_t* const* a, size_t n, const char* id) {
  return n > 0 && bsearch(id, a, n, sizeof(*a), id_cmp) != NULL;
}

/* PostgreSQL backend (lock held): t is a proxy of a row that other nodes
 * run or ran, so the row is at least as new as t, and reads take the row.
 * Any other task in RAM (leased here, or its insert not committed yet) is
 * newer than its row. */
static int row_is_newer(const ath_world_t* w, const ath_task_t* t) {
  return w->dq != NULL && t->remote && ath__task_dq_seq(t) > 0;
}

/* ath_row_cb: appends the row's task, unless RAM has it (its state there
 * is newer, or the same). */
static int collect_row(void* ud, const ath_row_t* r) {
  rows_t* c = ud;
  if (c->n == c->cap || (c->listed != NULL && listed_has(c->listed, c->nlisted, r->id)))
    return 0;
  uv_mutex_lock(&c->w->lock);
  ath_task_t* held = ath__table_get(c->w, r->id, ath__hash_id(r->id));
  int in_ram = held != NULL && !row_is_newer(c->w, held);
  uv_mutex_unlock(&c->w->lock);
  if (in_ram)
    return 0;
  ath_task_t* t = task_from_row(c->w, r, row_parent(c->w, r));
  if (t == NULL)
    return ATH_ENOMEM;
  c->out[c->n++] = t;
  return 0;
}

/* Stored tasks matching q (at most q->limit, fewer when RAM has some of
 * them), as new references in out. Returns the count or an ATH_E*. */
int64_t ath__stored_tasks(ath_world_t* w, const ath_store_query_t* q, ath_task_t** out) {
  return stored_tasks(w, q, out, NULL, 0);
}

/* ath__stored_tasks, skipping the rows of listed[0..nlisted) (sorted by hash). */
static int64_t stored_tasks(ath_world_t* w, const ath_store_query_t* q, ath_task_t** out,
                            ath_task_t* const* listed, size_t nlisted) {
  rows_t c = {w, out, 0, q->limit, listed, nlisted};
  char err[256];
  int rc = w->svt->query(w->reads, q, collect_row, &c, err, sizeof(err));
  if (rc != 0) {
    while (c.n > 0)
      ath_task_release(out[--c.n]);
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "reading stored tasks failed: %s", err);
    return rc;
  }
  return c.n;
}

static int find_row(void* ud, const ath_row_t* r) {
  rows_t* c = ud;
  c->out[0] = task_from_row(c->w, r, row_parent(c->w, r));
  return c->out[0] == NULL ? ATH_ENOMEM : 0;
}

/* Releases the references in a[0..n) (NULLs skipped) and frees a. */
void ath__release_all(ath_task_t** a, size_t n) {
  for (size_t i = 0; a != NULL && i < n; i++)
    if (a[i] != NULL)
      ath_task_release(a[i]);
  free(a);
}

/* Task `id` as stored: 0 and a new reference in *out, ATH_ENOTFOUND, or a
 * failure to read (logged). */
static int find_stored(ath_world_t* w, const char* id, ath_task_t** out) {
  *out = NULL;
  rows_t c = {w, out, 0, 1, NULL, 0};
  char err[256];
  int rc = w->svt->get(w->reads, id, find_row, &c, err, sizeof(err));
  if (rc == 0 || rc == ATH_ENOTFOUND)
    return rc;
  ath__logf(w, ATH_LOG_WARN, NULL, 0, "reading a stored task failed: %s", err);
  *out = NULL;
  return rc == ATH_ENOMEM ? rc : ATH_ESTORE;
}

/* Whether a task with id hash `h` may have left RAM since nevicted read
 * `since` (lock held): the ring remembers the latest evictions. */
static int evicted_since(const ath_world_t* w, uint64_t since, uint64_t h) {
  uint64_t n = atomic_load_explicit(&w->nevicted, memory_order_relaxed);
  if (n - since > ATH_EVICTED_RING)
    return 1; /* too many to tell */
  for (uint64_t i = since; i < n; i++)
    if (w->evicted_hash[i % ATH_EVICTED_RING] == h)
      return 1;
  return 0;
}

/* Looks in the store for tasks[0..n) (explicit ids: each may name a task
 * that finished and left RAM), without the lock. nevicted is read first:
 * a task that leaves RAM meanwhile shows in the ring (evicted_since). */
static int look_stored(ath_world_t* w, ath_task_t** tasks, size_t n, ath_task_t*** stored,
                       uint64_t* evicted0) {
  if ((*stored = calloc(n ? n : 1, sizeof(**stored))) == NULL)
    return ATH_ENOMEM;
  uv_mutex_lock(&w->lock);
  *evicted0 = atomic_load_explicit(&w->nevicted, memory_order_relaxed);
  uv_mutex_unlock(&w->lock);
  for (size_t i = 0; i < n; i++)
    find_stored(w, tasks[i]->id, &(*stored)[i]);
  return 0;
}

/* An explicit id that is not a workflow's step (lock held): a workflow
 * whose id it extends ("<id>/...") is no longer fresh (ath_wf_t). */
static void unfresh_workflows(ath_world_t* w, const char* id) {
  char small[256];
  for (const char* p = strchr(id, '/'); p != NULL; p = strchr(p + 1, '/')) {
    size_t len = (size_t)(p - id);
    char* prefix = len < sizeof(small) ? small : malloc(len + 1);
    if (prefix == NULL)
      continue; /* out of memory: then the whole world looks in the store */
    memcpy(prefix, id, len);
    prefix[len] = '\0';
    ath_task_t* t = ath__table_get(w, prefix, ath__hash_id(prefix));
    if (t != NULL && t->wf != NULL)
      t->wf->fresh = 0;
    if (prefix != small)
      free(prefix);
  }
}

/* PostgreSQL backend (lock held): a task read from the database that has not
 * ended joins the table as a remote proxy (a new reference), so its waiters
 * hear when it ends (storage/store_pg.c). */
static void dq_watch(ath_world_t* w, ath_task_t* t) {
  if (w->dq == NULL || ATH_IS_TERMINAL(t->status) || t->remote)
    return;
  ath_task_x_t* x;
  if ((w->ntasks + 1 > w->table_cap && table_grow(w) != 0) || (x = ath__task_x(t)) == NULL)
    return; /* stays a snapshot: result() then waits for the poll */
  t->remote = 1;
  x->dq_seq = (int64_t)t->seq; /* the row's seq, as read */
  t->seq = w->next_seq++;
  ath__dq_watch(w, x->dq_seq);
  ath_task_retain(t);
  table_put(w, t, ath__hash_id(t->id));
}

int ath_world_find(ath_world_t* w, const char* id, ath_task_t** out) {
  uint64_t h = ath__hash_id(id);
  uv_mutex_lock(&w->lock);
  ath_task_t* t = ath__table_get(w, id, h);
  if (t != NULL)
    ath_task_retain(t);
  uv_mutex_unlock(&w->lock);
  *out = t;
  /* Not in RAM: it never was, or it left once committed (so the store
   * has it): one look there settles it. */
  if (t != NULL || w->reads == NULL)
    return t ? 0 : ATH_ENOTFOUND;
  int rc = find_stored(w, id, out);
  if (rc == 0 && w->dq != NULL) {
    uv_mutex_lock(&w->lock);
    ath_task_t* again = ath__table_get(w, id, h); /* another thread adopted it meanwhile */
    if (again != NULL) {
      ath_task_retain(again);
      ath_task_release(*out);
      *out = again;
    } else {
      dq_watch(w, *out);
    }
    uv_mutex_unlock(&w->lock);
  }
  return rc;
}

/* ------------------------------------------------------------ execute */

int ath_world_execute(ath_world_t* w, const char* name, size_t n,
                      char** payloads, const size_t* lens,
                      const char* const* ids, const ath_exec_opts_t* opts,
                      ath_task_t** out, char* err, size_t errlen) {
  uint64_t gen = 0;
  int rc = ath__world_execute(w, name, n, payloads, lens, ids, opts, out, &gen, err, errlen);
  if (rc == 0 && gen != 0) { /* file: acknowledged once durable */
    uv_mutex_lock(&w->lock);
    rc = ath__store_wait_enqueue(w, gen, out, n);
    if (rc != 0) /* the commit failed: withdrawn, never ran */
      ath__set_err(err, errlen, "the task could not be stored: %s", w->store_err);
    uv_mutex_unlock(&w->lock);
    for (size_t i = 0; rc != 0 && i < n; i++) {
      ath_task_release(out[i]);
      out[i] = NULL;
    }
  }
  return rc;
}

void ath__task_policy(const ath_world_t* w, const ath_def_t* def, const ath_activity_t* lim,
                      ath_strategy_t asked, ath_strategy_t* strategy, int* max_attempts) {
  *strategy = asked != ATH_STRATEGY_DEFAULT                   ? asked
              : def->a.failure_strategy != ATH_STRATEGY_DEFAULT ? def->a.failure_strategy
                                                                : w->cfg.failure_strategy;
  *max_attempts = lim->has_retry && lim->max_attempts > 0 ? lim->max_attempts
                  : *strategy == ATH_STRATEGY_RETRY       ? (def->a.workflow ? 4 : 3)
                                                          : 1;
}

/* Whether an execute of n tasks may skip the world lock (ath_subq_t):
 * generated ids, ready now, no parent, per-call limits or deadline, not a
 * workflow's step, in a world without a file store (unborn until
 * committed), PostgreSQL or a degraded store. */
static int submits_unlocked(const ath_world_t* w, size_t n, const char* const* ids,
                            const ath_worker_t* by, const ath_exec_opts_t* o,
                            const ath_activity_t* lim, const ath_call_t* call) {
  return n > 0 && by == NULL && ids == NULL && o->id == NULL && o->delay_ms == 0 &&
         o->parent_id == NULL && call == NULL && lim->schedule_to_close_ms == 0 && w->dq == NULL &&
         w->cfg.persistence != ATH_PERSIST_FILE && atomic_load(&w->store_fault) == 0;
}

/* Puts tasks[0..n) (hashes[i]: tasks[i]'s id hash) on q's submit list and
 * wakes the sleepers listed there. Returns 0 (out[] set), or -1 when q is
 * closed (then nothing changed: the locked path says why). */
static int submit_unlocked(ath_world_t* w, ath_queue_t* q, ath_task_t** tasks,
                           const uint64_t* hashes, size_t n, ath_task_t** out) {
  for (size_t i = 0; i < n; i++) {
    tasks[i]->qnext = i + 1 < n ? tasks[i + 1] : NULL;
    tasks[i]->sub_hash = hashes[i];
  }
  ath_worker_t* wake[MAX_WORKERS];
  int nwake;
  if (ath__sub_append(w, q, tasks[0], tasks[n - 1], (int64_t)n, wake, MAX_WORKERS, &nwake) != 0) {
    for (size_t i = 0; i < n; i++)
      tasks[i]->qnext = tasks[i]->qprev = NULL;
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    out[i] = tasks[i]; /* the caller's references (refs counts the table's too) */
  ath__wake_all(wake, nwake);
  if (w->cfg.persistence == ATH_PERSIST_HYBRID &&
      atomic_load_explicit(&w->submitted, memory_order_relaxed) +
              atomic_load_explicit(&w->dirty_hint, memory_order_relaxed) >=
          ATH_HYBRID_BACKLOG) {
    uv_mutex_lock(&w->lock); /* the store is behind: wait for it as the locked path does */
    ath__submits_drain(w);
    ath__store_throttle(w);
    atomic_store_explicit(&w->dirty_hint, (long long)w->ndirty, memory_order_relaxed);
    uv_mutex_unlock(&w->lock);
  }
  return 0;
}

/* Whether the hybrid store has ATH_HYBRID_BACKLOG changes to write (lock
 * held): whoever made them then waits for it (ath__store_throttle). */
static int store_behind(const ath_world_t* w) {
  return w->cfg.persistence == ATH_PERSIST_HYBRID && w->ndirty >= ATH_HYBRID_BACKLOG;
}

/* No memory for the queue's index (lock held): t is in the table already,
 * so it fails visibly rather than vanishing. */
static void fail_unqueued(ath_world_t* w, ath_task_t* t, int64_t now) {
  t->status = ATH_FAILED;
  t->err_code = ATH_ENOMEM;
  t->completed_at = now;
  ath__counts(w)->failed++;
}

/* `by`: the worker whose workflow segment starts the tasks and parks next;
 * when they are in its queue, no sleeping worker is woken for them here:
 * the exchange that publishes the park claims them on `by` when they come
 * next in the queue and it has a free slot, and wakes a worker otherwise. */
static int execute(ath_world_t* w, const char* name, size_t n, char** payloads,
                   const size_t* lens, const char* const* ids, const ath_exec_opts_t* opts,
                   ath_task_t** out, uint64_t* gen_out, char* err, size_t errlen,
                   const ath_worker_t* by, uint64_t* evicted0_out) {
  *gen_out = 0;
  if (evicted0_out != NULL)
    *evicted0_out = ATH_NOT_DEFERRED;
  ath_exec_opts_t none = {0};
  ath_task_t* one[1]; /* a single execute (a workflow's step) allocates no list */
  uint64_t one_h[1];
  ath_task_t** tasks = NULL;
  uint64_t* hashes = NULL; /* tasks[i]'s ath__hash_id, in the same block */
  ath_task_t** stored = NULL; /* the tasks of explicit ids found in the store */
  ath_call_t* call = NULL; /* per-call limits, checked once; each task gets its copy */
  size_t made = 0;
  int rc = 0;
  if (opts == NULL)
    opts = &none;
  int di = find_def(w, name); /* defs are immutable once started */
  if (di < 0) {
    ath__set_err(err, errlen, "no activity named %s", name);
    rc = ATH_ENOTFOUND;
    goto fail;
  }
  ath_def_t* def = &w->defs[di];
  ath_queue_t* q = def->queue;
  if (def->a.workflow && w->dq != NULL && (rc = ath__dq_workflows(w, err, errlen)) != 0)
    goto fail;
  if (opts->task_queue != NULL && (q = find_queue(w, opts->task_queue)) == NULL) {
    ath__set_err(err, errlen, "unknown task queue %s", opts->task_queue);
    rc = ATH_EINVAL;
    goto fail;
  }
  if (opts->delay_ms < 0) {
    ath__set_err(err, errlen, "%s", "invalid delay (must be >= 0)");
    rc = ATH_EINVAL;
    goto fail;
  }
  int prio = opts->has_priority ? opts->priority : def->a.priority;
  if (opts->limits != NULL && (rc = ath__call_new(&def->a, opts->limits, opts->limits_len, &call)) != 0) {
    ath__set_err(err, errlen, "%s", rc == ATH_EINVAL ? "invalid per-call limits" : "out of memory");
    goto fail;
  }
  const ath_activity_t* lim = call ? &call->a : &def->a;
  ath_strategy_t strategy;
  int max_attempts;
  ath__task_policy(w, def, lim, opts->failure_strategy, &strategy, &max_attempts);
  /* a step's parent is the workflow its worker runs: no lookup by id */
  ath_task_t* known = by != NULL && by->current != NULL ? by->current->task : NULL;
  uint64_t parent_hash = opts->parent_id && known == NULL ? ath__hash_id(opts->parent_id) : 0;
  size_t namelen = strlen(name);
  tasks = n <= 1 ? one : malloc(n * (sizeof(*tasks) + sizeof(*hashes)));
  if (tasks == NULL) {
    rc = ATH_ENOMEM;
    goto fail;
  }
  hashes = n <= 1 ? one_h : (uint64_t*)(tasks + n);
  int64_t now = ath__wall(w);
  uint64_t mono = ath__mono(w);
  for (made = 0; made < n; made++) {
    if (lens[made] > ATH_PAYLOAD_MAX) {
      ath__set_err(err, errlen, "%s", "input larger than 4 GiB");
      rc = ATH_EINVAL;
      goto fail;
    }
    const char* given = ids ? ids[made] : opts->id; /* NULL: generated */
    size_t idlen = given ? strlen(given) : namelen + 37;
    /* A small input lives in the task's own block, after its id: one
     * allocation less per task (a million queued tasks hold 30 MB less). */
    size_t inl = lens[made] <= ATH_INLINE_INPUT ? lens[made] + 1 : 0;
    ath_task_t* t = malloc(sizeof(*t) + idlen + 1 + inl);
    if (t == NULL) {
      rc = ATH_ENOMEM;
      goto fail;
    }
    memset(t, 0, sizeof(*t));
    if (given) {
      memcpy(t->id, given, idlen + 1);
    } else {
      memcpy(t->id, name, namelen);
      t->id[namelen] = '-';
      ath__uuid7(t->id + namelen + 1); /* time-ordered: the store's id index appends */
    }
    atomic_init(&t->refs, 2); /* the table's and the caller's */
    t->def = def;
    t->queue = q;
    t->priority = prio;
    t->strategy = strategy;
    t->max_attempts = max_attempts;
    t->input_len = lens[made];
    if (inl) {
      t->input = t->id + idlen + 1;
      memcpy(t->input, payloads[made], lens[made]);
      t->input[lens[made]] = '\0';
      t->input_inline = 1;
      free(payloads[made]);
    } else {
      t->input = payloads[made];
    }
    payloads[made] = NULL;
    t->created_at = now;
    t->scheduled_at = t->ready_at = now + opts->delay_ms;
    t->ready_mono = ath__after(mono, opts->delay_ms);
    t->heap_idx = UINT32_MAX;
    /* the rare parts: made now for a deadline, per-call limits or a parent
     * (before the task is published, so workers read them unlocked) */
    ath_task_x_t* x = NULL;
    if ((def->a.workflow && (t->wf = calloc(1, sizeof(*t->wf))) == NULL) ||
        ((w->dq != NULL || def->a.workflow || lim->schedule_to_close_ms || call != NULL ||
          opts->parent_id != NULL) &&
         (x = ath__task_x(t)) == NULL) ||
        (call != NULL && ath__call_new(&def->a, call->json, call->json_len, &x->call) != 0)) {
      task_x_free(x);
      free(t->wf);
      free(t);
      rc = ATH_ENOMEM;
      goto fail;
    }
    if (lim->schedule_to_close_ms)
      x->exp_mono = ath__after(t->ready_mono, lim->schedule_to_close_ms);
    if (t->wf != NULL)
      t->wf->fresh = given == NULL;
    tasks[made] = t;
    hashes[made] = ath__hash_id(t->id); /* before the lock: it is held for less */
  }

  /* A step that the workflow segment running on `by` starts in by's own
   * queue, ready now, in memory or hybrid mode, under an id that neither
   * its history nor the store can hold (ath_wf_t.fresh), is deferred: it
   * enters the world in the exchange that publishes the segment's park
   * (ath__world_step_enter), under the lock that exchange takes anyway,
   * and goes to a slot of by's there (claim_held). One critical section
   * per step instead of two, and no contention for the one saved.
   * nevicted is read before fresh: a task that takes the step's id after
   * fresh was read leaves RAM only after that, so the ring of evictions
   * shows it. */
  if (evicted0_out != NULL && n == 1 && known != NULL && known->wf != NULL && opts->parent_id != NULL &&
      opts->delay_ms == 0 && w->dq == NULL && w->cfg.persistence != ATH_PERSIST_FILE && q == by->queue) {
    uint64_t evicted0 = atomic_load(&w->nevicted);
    if (w->reads == NULL || atomic_load(&known->wf->fresh)) {
      ath_task_t* t = tasks[0];
      *evicted0_out = evicted0;
      t->sub_hash = hashes[0];
      atomic_store_explicit(&t->refs, 1, memory_order_relaxed); /* the table's comes as it enters */
      ath_task_retain(known);
      ath__task_xr(t)->parent = known; /* made above: parent_id is set */
      out[0] = t;
      free(call);
      return 0;
    }
  }

  if (submits_unlocked(w, n, ids, by, opts, lim, call) &&
      submit_unlocked(w, q, tasks, hashes, n, out) == 0) {
    if (tasks != one)
      free(tasks);
    return 0;
  }

  /* With a store, an explicit id may name a task that finished and left
   * RAM: look there first, without the lock. Under the lock, a task that
   * left RAM since then shows in the ring of evicted ids. Not for the step
   * of a fresh workflow (checked again under the lock). */
  uint64_t evicted0 = 0;
  int fresh_step = by != NULL && known != NULL && known->wf != NULL;
  if (w->reads != NULL && (ids != NULL || opts->id != NULL) && !fresh_step &&
      (rc = look_stored(w, tasks, n, &stored, &evicted0)) != 0)
    goto fail;

  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0, wake_engine = 0;
relock:
  uv_mutex_lock(&w->lock);
  ath__submits_drain(w); /* numbered after what the submit lists hold */
  /* While shutdown drains the queues, runs under way still take their
   * steps (a workflow's activities and children); nothing else gets in. */
  if (w->state != ATH_W_STARTED && !(w->draining && opts->parent_id != NULL)) {
    rc = w->state == ATH_W_NEW ? ATH_EINVAL : ATH_ESHUTDOWN;
    ath__set_err(err, errlen, "%s", w->state == ATH_W_NEW ? "execute before start()" : "world is shutting down");
    uv_mutex_unlock(&w->lock);
    goto fail;
  }
  if (fresh_step && w->reads != NULL && !known->wf->fresh) {
    fresh_step = 0; /* an id under it was taken meanwhile: look after all */
    uv_mutex_unlock(&w->lock);
    if ((rc = look_stored(w, tasks, n, &stored, &evicted0)) != 0)
      goto fail;
    goto relock;
  }
  /* Check every explicit id before changing anything, so a batch goes in
   * whole or not at all. Generated ids are new (a uuid7 each): a batch of
   * them looks nothing up under the lock. */
  int named = ids != NULL || opts->id != NULL;
  ath_task_t* first = NULL; /* a single task's lookup, for the loop below */
  for (size_t i = 0; named && i < n; i++) {
    uint64_t h = hashes[i];
    ath_task_t* old = first = ath__table_get(w, tasks[i]->id, h);
    if (old == NULL && stored != NULL && stored[i] == NULL && evicted_since(w, evicted0, h)) {
      /* Rare: look again (reads take the lock themselves), then check all
       * over; evictions from now on are caught the same way. */
      evicted0 = atomic_load_explicit(&w->nevicted, memory_order_relaxed);
      uv_mutex_unlock(&w->lock);
      find_stored(w, tasks[i]->id, &stored[i]);
      goto relock;
    }
    if (old == NULL && stored != NULL)
      old = stored[i];
    if (old != NULL && old->def != def) {
      if (err != NULL && errlen > 0)
        snprintf(err, errlen, "id %s is in use by %s", old->id, old->def->name);
      rc = ATH_EINVAL;
      uv_mutex_unlock(&w->lock);
      goto fail;
    }
  }
  for (size_t i = 0; by == NULL && (ids != NULL || opts->id != NULL) && i < n; i++)
    unfresh_workflows(w, tasks[i]->id);
  ath_task_t* parent = NULL;
  if (opts->parent_id != NULL &&
      ((parent = known ? known : ath__table_get(w, opts->parent_id, parent_hash)) == NULL ||
       parent->wf == NULL)) {
    ath__set_err(err, errlen, "no workflow %s", opts->parent_id);
    rc = ATH_ENOTFOUND;
    uv_mutex_unlock(&w->lock);
    goto fail;
  }
  /* A workflow's step or child under an id that an unfinished task of
   * another owner holds (a caller took it): its outcome would never
   * resume the workflow, which would wait for it forever. Refused, as
   * another activity's is. A finished one is the step (its outcome is
   * recorded at once). */
  for (size_t i = 0; parent != NULL && named && i < n; i++) {
    ath_task_t* old = n == 1 ? first : ath__table_get(w, tasks[i]->id, hashes[i]);
    if (old == NULL && stored != NULL)
      old = stored[i];
    if (old != NULL && ath__task_parent(old) != parent && !ATH_IS_TERMINAL(old->status)) {
      ath__set_err(err, errlen, "id %s is in use by a task of another owner", old->id);
      rc = ATH_EINVAL;
      uv_mutex_unlock(&w->lock);
      goto fail;
    }
  }
  /* A degraded store refuses new work up front (the enqueues it held when
   * the commit failed were withdrawn); a workflow's steps still get in and
   * wait for the store (SEMANTICS §13, docs/operations.md). */
  if (w->store_fault != 0 && opts->parent_id == NULL) {
    rc = w->store_fault;
    if (err != NULL && errlen > 0 && w->store_broken)
      snprintf(err, errlen, "the store stopped taking writes (restart to recover): %s", w->store_err);
    else if (err != NULL && errlen > 0)
      snprintf(err, errlen, "the store is degraded: %s", w->store_err);
    uv_mutex_unlock(&w->lock);
    goto fail;
  }
  /* file: nothing runs before its enqueue is committed (ath__queue_pop) */
  int unborn = w->store != NULL && w->cfg.persistence == ATH_PERSIST_FILE;
  while (w->ntasks + n > w->table_cap) {
    if (table_grow(w) != 0) {
      rc = ATH_ENOMEM;
      uv_mutex_unlock(&w->lock);
      goto fail;
    }
  }
  int64_t ready = 0;
  for (size_t i = 0; i < n; i++) {
    ath_task_t* t = tasks[i];
    /* (a batch looks again: an earlier task of it may have the same id) */
    uint64_t h = hashes[i];
    ath_task_t* old = !named ? NULL : n == 1 ? first : ath__table_get(w, t->id, h);
    if (old == NULL && stored != NULL && stored[i] != NULL) {
      old = stored[i]; /* its reference is handed over */
      stored[i] = NULL;
      dq_watch(w, old);
    } else if (old != NULL) {
      ath_task_retain(old);
    }
    if (old != NULL) { /* idempotent execute: hand back the existing task */
      out[i] = old;
      atomic_store(&t->refs, 0);
      task_free(t);
      tasks[i] = NULL;
      continue;
    }
    t->seq = w->next_seq++;
    t->unborn = unborn;
    if (parent != NULL) {
      ath_task_retain(parent);
      ath__task_xr(t)->parent = parent; /* made above: parent_id is set */
    }
    table_put(w, t, h);
    if (w->dq != NULL) { /* PostgreSQL: a proxy, its row inserted by the backend loop */
      t->remote = 1;
      t->status = opts->delay_ms > 0 ? ATH_SCHEDULED : ATH_PENDING;
      ath__store_mark(w, t);
      out[i] = t;
      continue;
    }
    ath_task_x_t* x = ath__task_xr(t);
    if (x != NULL && x->exp_mono && ath__heap_push(&w->expiry, x) == 0)
      wake_engine |= w->expiry.items[0] == x;
    int qrc;
    if (opts->delay_ms > 0) {
      t->status = ATH_SCHEDULED;
      if ((qrc = ath__heap_push(&w->delayed, t)) == 0) {
        ath__store_mark(w, t);
        w->n_scheduled++;
        wake_engine |= w->delayed.items[0] == t;
      }
    } else if ((qrc = ath__make_ready(w, t)) == 0) {
      ready++;
    }
    if (qrc != 0)
      fail_unqueued(w, t, now);
    out[i] = t;
  }
  int held = by != NULL && by->queue == q; /* see above */
  if (held && fresh_step && n == 1 && out[0]->status == ATH_PENDING)
    known->wf->held_step = out[0]; /* its park's exchange takes it on `by` */
  nwake = unborn || held ? 0 : ath__pick_sleepers(w, q, ready, wake, MAX_WORKERS); /* unborn: once committed */
  uint64_t gen = w->gen;
  /* hybrid: the store keeps up (read here, under the lock: no second
   * lock for every execute when it does) */
  int behind = store_behind(w);
  uv_mutex_unlock(&w->lock);
  ath__wake_all(wake, nwake);
  if (wake_engine)
    uv_async_send(&w->easync);
  if (tasks != one)
    free(tasks);
  free(call);
  ath__release_all(stored, n);
  if (w->cfg.persistence == ATH_PERSIST_FILE) { /* acknowledged once durable */
    *gen_out = gen;
  } else if (behind) {
    uv_mutex_lock(&w->lock);
    ath__store_throttle(w);
    uv_mutex_unlock(&w->lock);
  }
  return 0;

fail:
  for (size_t i = 0; i < made; i++) {
    if (tasks[i] != NULL) {
      if (!tasks[i]->input_inline)
        free(tasks[i]->input);
      free(tasks[i]->wf);
      task_x_free(ath__task_xr(tasks[i]));
      free(tasks[i]);
    }
  }
  for (size_t i = made; i < n; i++) {
    free(payloads[i]);
    payloads[i] = NULL;
  }
  if (tasks != one)
    free(tasks);
  free(call);
  ath__release_all(stored, n);
  return rc;
}

int ath__world_execute(ath_world_t* w, const char* name, size_t n, char** payloads,
                       const size_t* lens, const char* const* ids, const ath_exec_opts_t* opts,
                       ath_task_t** out, uint64_t* gen, char* err, size_t errlen) {
  return execute(w, name, n, payloads, lens, ids, opts, out, gen, err, errlen, NULL, NULL);
}

int ath__world_execute_by(ath_worker_t* wk, const char* name, char* payload, size_t len,
                          const ath_exec_opts_t* opts, ath_task_t** out, uint64_t* evicted0, char* err,
                          size_t errlen) {
  uint64_t gen;
  return execute(wk->w, name, 1, &payload, &len, NULL, opts, out, &gen, err, errlen, wk, evicted0);
}

ath_task_t* ath__world_step_enter(ath_world_t* w, ath_task_t* t, uint64_t evicted0, int* wake_engine,
                                  int* behind) {
  uint64_t h = t->sub_hash;
  ath_task_t* old = ath__table_get(w, t->id, h);
  if (old != NULL) /* a lost worker's segment started it, or a caller took the id (execute) */
    return old->def == t->def && (ath__task_parent(old) == ath__task_parent(t) || ATH_IS_TERMINAL(old->status))
               ? old
               : NULL;
  /* A caller took an id under the workflow's meanwhile and that task left
   * RAM (ran, committed, evicted) before this exchange: maybe this id. It
   * cannot be looked up in the store under the lock, so the step is
   * refused, where execute would have handed the stored task over. */
  if (w->reads != NULL && !ath__task_parent(t)->wf->fresh && evicted_since(w, evicted0, h))
    return NULL;
  t->seq = w->next_seq++;
  if (w->ntasks + 1 > w->table_cap)
    (void)table_grow(w); /* out of memory: its chains grow longer */
  ath_task_retain(t); /* the table's */
  table_put(w, t, h);
  ath_task_x_t* x = ath__task_xr(t);
  if (x->exp_mono && ath__heap_push(&w->expiry, x) == 0)
    *wake_engine |= w->expiry.items[0] == x;
  if (ath__make_ready(w, t) != 0)
    fail_unqueued(w, t, t->created_at);
  *behind |= store_behind(w);
  return t;
}

/* ------------------------------------------------------ the engine loop */

/* Moves due delayed tasks to their queues and re-arms the timer for the
 * next one. Runs on the engine thread. */
/* Closes the engine loop's own handles (on the engine thread; the loop
 * then runs their close callbacks). */
static void close_engine_handles(ath_world_t* w) {
  uv_close((uv_handle_t*)&w->scale_timer, NULL);
  uv_close((uv_handle_t*)&w->monitor_timer, NULL);
  uv_close((uv_handle_t*)&w->stimer, NULL);
  uv_close((uv_handle_t*)&w->prune_timer, NULL);
  uv_close((uv_handle_t*)&w->etimer, NULL);
  uv_close((uv_handle_t*)&w->easync, NULL);
}

static void engine_timer_cb(uv_timer_t* h);

void ath__engine_tick(ath_world_t* w) {
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  uint64_t now = ath__mono(w);
  uint64_t next = 0;
  uv_mutex_lock(&w->lock);
  ath_task_t* t;
  while ((t = ath__heap_peek(&w->delayed)) != NULL && t->ready_mono <= now) {
    ath__heap_pop(&w->delayed);
    w->n_scheduled--;
    if (t->wf != NULL && t->wf->where == ATH_WF_TIMER && t->status == ATH_RUNNING) {
      nwake = ath__wf_timer_fired(w, t, wake, nwake);
      continue;
    }
    if (ath__make_ready(w, t) != 0) {
      t->status = ATH_FAILED;
      t->err_code = ATH_ENOMEM;
      t->completed_at = ath__wall(w);
      ath__counts(w)->failed++;
      continue;
    }
    if (nwake < MAX_WORKERS)
      nwake += ath__pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
  }
  /* scheduleToClose of tasks still waiting: they fail where they are
   * (running ones are stopped by their worker's deadline); and the run
   * limit of workflows parked between segments */
  ath_task_x_t* x;
  while ((x = ath__heap_peek(&w->expiry)) != NULL && x->exp_mono <= now) {
    ath__heap_remove(&w->expiry, x);
    t = x->task;
    if (t->wf != NULL) { /* in a slot, the segment's deadline stops it */
      if (t->status == ATH_RUNNING && t->wf->where != ATH_WF_SLOT)
        nwake = ath__wf_run_timed_out(w, t, wake, nwake);
      continue;
    }
    if (t->status == ATH_RUNNING || ATH_IS_TERMINAL(t->status) || ath__unqueue(w, t) != 0)
      continue; /* ath__unqueue: a worker started it from its claims ahead */
    ath__set_error(t, ATH_ETIMEDOUT, "scheduleToClose expired while the task waited");
    nwake = ath__finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED,
                        ath__wall(w), wake, nwake);
  }
  /* after both loops: a timed-out workflow may wait for a retry now */
  if ((t = ath__heap_peek(&w->delayed)) != NULL)
    next = t->ready_mono;
  if ((x = ath__heap_peek(&w->expiry)) != NULL && (next == 0 || x->exp_mono < next))
    next = x->exp_mono;
  ath_task_t* dead = ath__world_term_trim(w);
  uv_mutex_unlock(&w->lock);
  ath__world_term_free(dead);
  ath__wake_all(wake, nwake);
  if (next != 0 && !w->manual) /* the manual clock fires in advance() */
    uv_timer_start(&w->etimer, engine_timer_cb, (next - now + 999999) / 1000000, 0);
}

static void engine_timer_cb(uv_timer_t* h) {
  ath__engine_tick(h->data);
}

static void prune_cb(uv_timer_t* h) {
  ath__world_prune(h->data);
}

static void engine_async_cb(uv_async_t* h) {
  ath_world_t* w = h->data;
  uv_mutex_lock(&w->lock);
  int stop = w->engine_stop;
  uv_mutex_unlock(&w->lock);
  ath_serve_req_t* req = NULL;
  uv_mutex_lock(&w->lock);
  req = w->serve_req;
  w->serve_req = NULL;
  uv_mutex_unlock(&w->lock);
  if (req != NULL) {
    ath_http_t* srv = NULL;
    if (w->nhttp >= 8 || stop) {
      req->rc = ATH_EINVAL;
      snprintf(req->err, sizeof(req->err), "%s", stop ? "world is shutting down" : "at most 8 servers");
      ath__serve_opts_free(req->opts);
    } else {
      struct ath_gws_s* gws = ((ath_serve_opts_t*)req->opts)->gws;
      req->rc = ath__http_start(w, req->host, req->port, req->opts, &req->bound, &srv, req->err,
                                sizeof(req->err));
      if (req->rc == 0 && gws != NULL)
        w->gws = gws;
    }
    if (req->rc == 0)
      w->http[w->nhttp++] = srv;
    uv_sem_post(&req->done);
  }
  if (stop) {
    for (int i = 0; i < w->nhttp; i++)
      ath__http_stop(w->http[i]);
    w->nhttp = 0;
    w->gws = NULL;
    close_engine_handles(w);
    return;
  }
  if (w->manual)
    return; /* on a manual clock, advance() alone fires timers */
  ath__engine_tick(w);
  ath__sched_tick(w);
}

static void engine_main(void* arg) {
  ath_world_t* w = arg;
  /* The HTTP servers write to sockets whose clients may be gone (or that
   * the buffer cap shut down): that must be EPIPE on the write, not a
   * SIGPIPE that kills a host which does not ignore it (lua5.4). The
   * signal stays pending on this thread and goes away with it. */
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, NULL);
  uv_run(&w->eloop, UV_RUN_DEFAULT);
}

/* ------------------------------------------------------- start and stop */

static void stop_workers(ath_world_t* w) {
  uv_mutex_lock(&w->lock);
  for (int i = 0; i < w->nworkers; i++)
    w->workers[i]->stop = 1;
  uv_mutex_unlock(&w->lock);
  for (int i = 0; i < w->nworkers; i++)
    ath__worker_wake(w->workers[i]);
  for (int i = 0; i < w->nworkers; i++)
    ath__worker_join(w->workers[i]);
  /* workers are kept (stopped) so getWorkers() can report them */
}

static void stop_engine(ath_world_t* w) {
  uv_mutex_lock(&w->lock);
  w->engine_stop = 1;
  uv_mutex_unlock(&w->lock);
  uv_async_send(&w->easync);
  uv_thread_join(&w->engine_thread);
  uv_loop_close(&w->eloop);
}

int ath_world_start(ath_world_t* w, char* err, size_t errlen) {
  if (w->state == ATH_W_STARTED)
    return 0;
  if (w->state != ATH_W_NEW) {
    ath__set_err(err, errlen, "%s", "world was shut down");
    return ATH_ESHUTDOWN;
  }
  if (ath__runtime_hooks() == NULL) {
    ath__set_err(err, errlen, "%s",
            "no Lua runtime installed: call ath_runtime_install(ath_lua_runtime()) first");
    return ATH_EINVAL;
  }
  int rc = uv_loop_init(&w->eloop);
  if (rc != 0) {
    ath__set_err(err, errlen, "cannot start the engine loop: %s", uv_strerror(rc));
    return ATH_ENOMEM;
  }
  uv_async_init(&w->eloop, &w->easync, engine_async_cb);
  uv_timer_init(&w->eloop, &w->etimer);
  uv_timer_init(&w->eloop, &w->prune_timer);
  uv_timer_init(&w->eloop, &w->stimer);
  uv_timer_init(&w->eloop, &w->scale_timer);
  uv_timer_init(&w->eloop, &w->monitor_timer);
  w->easync.data = w->etimer.data = w->prune_timer.data = w->stimer.data = w;
  w->scale_timer.data = w->monitor_timer.data = w;
  /* Recovery first: the workers then start with the recovered queue. */
  rc = ath__store_start(w, err, errlen);
  const ath_event_sink_t* sink = w->cfg.event_sink; /* deliver read now */
  if (sink != NULL && (sink->size < offsetof(ath_event_sink_t, deliver) + sizeof(sink->deliver) ||
                       sink->deliver == NULL))
    sink = NULL;
  if (rc == 0 && (w->cfg.webhook_url != NULL || sink != NULL))
    rc = ath__hook_start(w->cfg.webhook_url, sink,
                         w->cfg.webhook_events ? w->cfg.webhook_events : (1u << ATH_EV_COUNT) - 1, w->log,
                         &w->hook, err, errlen);
  if (rc == 0)
    rc = ath__watch_start(w, err, errlen);
  for (int i = 0; i < w->nqueues && rc == 0; i++) {
    ath_queue_t* q = w->queues[i];
    int n = i == 0 ? w->cfg.min_workers : q->workers;
    for (int k = 0; k < n && rc == 0; k++)
      rc = ath__add_worker(w, q, 1, err, errlen);
  }
  if (rc == 0) {
    uv_timer_start(&w->prune_timer, prune_cb, 3600000, 3600000);
    if (!w->manual && w->cfg.max_workers > w->cfg.min_workers)
      uv_timer_start(&w->scale_timer, ath__scale_cb, (uint64_t)w->cfg.scale_interval_ms,
                     (uint64_t)w->cfg.scale_interval_ms);
    uv_timer_start(&w->monitor_timer, ath__monitor_cb, (uint64_t)w->cfg.heartbeat_interval_ms,
                   (uint64_t)w->cfg.heartbeat_interval_ms);
    int trc = uv_thread_create(&w->engine_thread, engine_main, w);
    if (trc != 0) {
      ath__set_err(err, errlen, "cannot start the engine thread: %s", uv_strerror(trc));
      rc = ATH_ENOMEM;
    }
  }
  if (rc != 0) {
    stop_workers(w);
    ath__watch_stop(w);
    ath__store_stop(w);
    ath__hook_stop(w->hook);
    w->hook = NULL;
    close_engine_handles(w);
    uv_run(&w->eloop, UV_RUN_DEFAULT);
    uv_loop_close(&w->eloop);
    w->state = ATH_W_STOPPED;
    return rc;
  }
  if (w->start_hook != NULL)
    w->start_hook(w);
  uv_mutex_lock(&w->lock);
  w->state = ATH_W_STARTED;
  for (int i = 0; i < w->nqueues; i++)
    ath__sub_set_open(w->queues[i], 1); /* executes may skip the world lock from now on */
  w->started_at = ath__wall(w);
  uv_mutex_lock(&w->tel_lock);
  w->tput_sec = w->started_at / 1000;
  w->tput_dsec = w->started_at / 100;
  uv_mutex_unlock(&w->tel_lock);
  uv_mutex_unlock(&w->lock);
  /* Only now: the engine's first tick arms the timers of recovered delayed
   * tasks and schedules, and the scheduler neither fires nor re-arms before
   * the world is started (a tick before that left schedules stuck). */
  uv_async_send(&w->easync);
  for (int i = 0; i < w->nworkers; i++)
    ath__worker_wake(w->workers[i]); /* let them claim */
  return 0;
}

void ath__world_set_start_hook(ath_world_t* w, void (*fn)(ath_world_t* w)) {
  w->start_hook = fn;
}

/* Tasks waiting in the queues (lock held). */
static int64_t queued_locked(ath_world_t* w) {
  int64_t n = 0;
  for (int i = 0; i < w->nqueues; i++)
    n += w->queues[i]->depth;
  return n;
}

/* Unfinished tasks (lock held): what a memory world loses when it goes. */
static int unfinished_locked(ath_world_t* w) {
  int n = 0;
  for (size_t i = 0; i < w->table_cap; i++)
    for (ath_task_t* t = w->table[i]; t; t = t->hnext)
      n += !ATH_IS_TERMINAL(t->status);
  return n;
}

static void shutdown_results(ath_world_t* w, int* drained, int* requeued, int* abandoned) {
  if (drained != NULL)
    *drained = w->drained;
  if (requeued != NULL)
    *requeued = w->requeued;
  if (abandoned != NULL)
    *abandoned = w->abandoned;
}

int ath_world_shutdown(ath_world_t* w, int64_t timeout_ms, int* drained, int* requeued,
                       int* abandoned) {
  uv_mutex_lock(&w->lock);
  if (w->state != ATH_W_STARTED) {
    w->state = ATH_W_STOPPED;
    shutdown_results(w, drained, requeued, abandoned);
    uv_mutex_unlock(&w->lock);
    return 0;
  }
  /* Refuses execute (but a workflow's own steps while draining); the
   * workers go on with what is queued until the queues are empty or the
   * deadline passes. Delayed tasks are not waited for. */
  w->state = ATH_W_STOPPING;
  for (int i = 0; i < w->nqueues; i++)
    ath__sub_set_open(w->queues[i], 0); /* what got in is drained, nothing more gets in */
  ath__submits_drain(w);
  w->draining = timeout_ms > 0;
  uint64_t deadline = ath__mono_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
  w->cond_waiters++;
  while (w->n_running > 0 || ath__prefetched(w) > 0 || (w->draining && queued_locked(w) > 0)) {
    uint64_t now = ath__mono_ns();
    if (now >= deadline)
      break;
    uv_cond_timedwait(&w->cond, &w->lock, deadline - now);
  }
  w->draining = 0; /* from here on nothing is claimed */
  for (int i = 0; i < w->nheld; i++) /* queued as at a deadline: the next start replays them */
    if (!ATH_IS_TERMINAL(w->held[i]->status))
      ath__wf_resume(w, w->held[i], NULL, 0);
  w->nheld = 0;
  if (w->n_running > 0 || ath__prefetched(w) > 0) {
    /* Past the deadline: interrupt what still runs; each attempt returns
     * to pending, not counted (T14). Tasks claimed ahead go back unstarted. */
    for (int i = 0; i < w->nworkers; i++)
      atomic_store(&w->workers[i]->interrupt_all, ATH_ESHUTDOWN);
    uv_mutex_unlock(&w->lock);
    for (int i = 0; i < w->nworkers; i++)
      ath__worker_wake(w->workers[i]);
    uv_mutex_lock(&w->lock);
    while (w->n_running > 0 || ath__prefetched(w) > 0)
      uv_cond_wait(&w->cond, &w->lock);
  }
  w->cond_waiters--;
  w->state = ATH_W_STOPPED;
  uv_cond_broadcast(&w->cond);
  ath__wake_blocked(w, NULL); /* result() waiters get ESHUTDOWN */
  uv_mutex_unlock(&w->lock);
  stop_workers(w);
  ath__watch_stop(w);
  stop_engine(w);
  uv_mutex_lock(&w->lock);
  int left = unfinished_locked(w);
  if (w->cfg.persistence == ATH_PERSIST_MEMORY)
    w->abandoned = left;
  uv_mutex_unlock(&w->lock);
  if (w->abandoned > 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0,
              "shutdown abandoned %d unfinished task%s (persistence = memory keeps nothing)",
              w->abandoned, w->abandoned == 1 ? "" : "s");
  else if (left > 0)
    ath__logf(w, ATH_LOG_INFO, NULL, 0, "%d unfinished task%s stay in the store for the next start",
              left, left == 1 ? "" : "s");
  ath__store_stop(w); /* the final commit, then the lock file */
  ath__hook_stop(w->hook); /* events already due go out within a short grace */
  w->hook = NULL;
  shutdown_results(w, drained, requeued, abandoned);
  return 0;
}

void ath_world_free(ath_world_t* w) {
  if (w == NULL)
    return;
  if (w->state == ATH_W_STARTED)
    ath_world_shutdown(w, 30000, NULL, NULL, NULL);
  for (int i = 0; i < w->nworkers; i++) {
    ath__worker_join(w->workers[i]); /* no exchange of its own is left */
    ath__world_term_free(w->workers[i]->dead);
    ath__worker_free(w->workers[i]);
  }
  for (int i = 0; i < w->ngrave; i++)
    ath__worker_free(w->graveyard[i]);
  free(w->graveyard);
  /* A lost worker's thread may still come back from the C call it was
   * stuck in, and then touches the world on its way out: wait for it a
   * while; if it is still stuck, the world's memory is left to it. */
  uint64_t deadline = ath__mono_ns() + 30000000000ull;
  for (int i = 0; i < w->nretired; i++) {
    ath_worker_t* wk = w->retired[i];
    if (!atomic_load(&wk->lost) || wk->joined)
      continue;
    while (!atomic_load(&wk->exited) && ath__mono_ns() < deadline)
      uv_sleep(10);
    if (!atomic_load(&wk->exited)) {
      ath__logf(w, ATH_LOG_ERROR, NULL, 0,
                "worker-%d is still stuck in C code at shutdown: its world is not freed", wk->id);
      return;
    }
    uv_thread_join(&wk->thread);
    wk->joined = 1;
  }
  ath__watch_free(w); /* no worker thread is left to leave it */
  ath__world_term_free(w->dead_orphans); /* nor to take them (exchange.c, route_dead) */
  w->dead_orphans = NULL;
  free(w->workers);
  for (int i = 0; i < w->nretired; i++)
    ath__worker_free(w->retired[i]);
  free(w->retired);
  free(w->held);
  ath__buf_free(&w->evbuf);
  if (w->table != NULL) {
    for (size_t i = 0; i < w->table_cap; i++) {
      ath_task_t* t = w->table[i];
      while (t != NULL) {
        ath_task_t* next = t->hnext;
        ath_task_x_t* x = ath__task_xr(t);
        for (ath_waiter_t* wt = x != NULL ? x->waiters : NULL; wt;) {
          ath_waiter_t* n = wt->next;
          free(wt);
          wt = n;
        }
        if (x != NULL)
          x->waiters = NULL;
        ath_task_release(t);
        t = next;
      }
    }
  }
  free(w->table);
  ath__heap_free(&w->delayed);
  ath__heap_free(&w->vtimers);
  ath__heap_free(&w->expiry);
  ath__sched_free_all(w);
  for (int i = 0; i < w->nqueues; i++)
    if (w->queues[i])
      ath__queue_free(w->queues[i]);
  free(w->queues);
  for (int i = 0; i < w->ndefs; i++) {
    free(w->defs[i].name);
    ath__strv_free(w->defs[i].non_retryable);
  }
  for (int i = 0; i < w->nghosts; i++) {
    free(w->ghost_defs[i]->name);
    free(w->ghost_defs[i]);
  }
  free(w->ghost_defs);
  free(w->defs);
  free((char*)w->cfg.persistence_path);
  free((char*)w->cfg.entry_script);
  free((char*)w->cfg.lua_path);
  free((char*)w->cfg.lua_cpath);
  free((char*)w->cfg.database);
  free((char*)w->cfg.webhook_url);
  free((char*)w->cfg.log_file);
  free((char*)w->cfg.backend_url);
  free((char*)w->cfg.backend_schema);
  free((char*)w->cfg.node_id);
  ath__log_close(w->log); /* every thread that logs has been joined */
  ath__strv_free(w->modules);
  ath__strv_free(w->script_args);
  ath__store_free(w);
  uv_mutex_destroy(&w->lock);
  uv_mutex_destroy(&w->tel_lock);
  uv_cond_destroy(&w->cond);
  uv_sem_destroy(&w->ready);
  free(w);
}

/* ------------------------------------------- cancel, dead letters, queries */

int ath_world_cancel(ath_world_t* w, ath_task_t* t) {
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  int64_t now = ath__wall(w);
  if (w->dq != NULL && t->remote)
    return ath__dq_cancel(w, t); /* its row decides (storage/store_pg.c) */
  uv_mutex_lock(&w->lock);
  ath__submits_drain(w); /* t may still be in a submit list, not its queue */
  int accepted;
  nwake = ath__cancel_locked(w, t, now, wake, nwake, &accepted);
  if (accepted)
    ath__store_wait(w, w->gen); /* file: the cancel is durable */
  ath_task_t* dead = ath__world_term_trim(w);
  uv_mutex_unlock(&w->lock);
  ath__world_term_free(dead);
  ath__wake_all(wake, nwake);
  return accepted;
}

/* PostgreSQL backend: a dead letter's requeue or purge goes through its
 * row, which any node may change (storage/store_pg.c); then what this node
 * holds of the task follows. A requeued task's object (the one in the
 * table, else t) becomes a proxy of the row, so its handles wait for the
 * new run; a purged one leaves the table. */
static int dq_dead_letter(ath_world_t* w, ath_task_t* t, int purge) {
  int64_t seq = 0;
  int how = 0;
  uv_mutex_lock(&w->lock);
  int running = w->state == ATH_W_STARTED;
  uv_mutex_unlock(&w->lock);
  if (!running && !purge)
    return ATH_ESHUTDOWN;
  int rc = ath__dq_dead_letter(w, t->id, purge, &seq, &how);
  if (rc != 0 || how != 1)
    return rc != 0 ? rc : how < 0 ? ATH_ENOTFOUND : ATH_EINVAL;
  ath_task_t* drop = NULL;
  uv_mutex_lock(&w->lock);
  ath_task_t* held = ath__table_get(w, t->id, ath__hash_id(t->id));
  ath_task_t* x = held != NULL ? held : t;
  if (purge) {
    if (held != NULL && ATH_IS_TERMINAL(held->status)) {
      ath__table_unlink(w, held);
      drop = held; /* the table's reference */
    }
  } else if (ATH_IS_TERMINAL(x->status)) {
    ath_task_x_t* rx = x == held ? ath__task_x(x) : NULL; /* a proxy's row seq */
    if (x == held && rx == NULL) {
      uv_mutex_unlock(&w->lock);
      return ATH_ENOMEM;
    }
    term_unlink(w, x);
    x->status = ATH_PENDING;
    x->attempt = 0;
    x->err_code = 0;
    free(x->error);
    free(x->result);
    x->error = x->result = NULL;
    x->error_len = x->result_len = 0;
    x->completed_at = 0;
    x->ready_at = ath__wall(w);
    if (x == held) { /* a proxy again */
      x->remote = 1;
      rx->dq_attempt = 0;
      rx->dq_seq = seq;
      ath__dq_watch(w, seq);
    } else {
      x->seq = (uint64_t)seq; /* dq_watch reads the row's seq there */
      dq_watch(w, x);
    }
  }
  uv_mutex_unlock(&w->lock);
  if (drop != NULL)
    ath_task_release(drop);
  return 0;
}

int ath_world_requeue(ath_world_t* w, ath_task_t* t) {
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  if (w->dq != NULL)
    return dq_dead_letter(w, t, 0);
  uv_mutex_lock(&w->lock);
  if (t->status != ATH_QUARANTINED || w->state != ATH_W_STARTED || t->def->ghost) {
    uv_mutex_unlock(&w->lock);
    return t->status != ATH_QUARANTINED || t->def->ghost ? ATH_EINVAL : ATH_ESHUTDOWN;
  }
  t->attempt = 0;
  t->err_code = 0;
  free(t->error);
  t->error = NULL;
  t->error_len = 0;
  t->completed_at = 0;
  t->ready_at = ath__wall(w);
  t->ready_mono = ath__mono(w);
  if (ath__make_ready(w, t) != 0) {
    ath__set_error(t, ATH_ENOMEM, "out of memory requeueing");
    ath__finish_task(w, t, ATH_QUARANTINED, ath__wall(w), wake, 0);
    uv_mutex_unlock(&w->lock);
    return ATH_ENOMEM;
  }
  nwake = ath__pick_sleepers(w, t->queue, 1, wake, MAX_WORKERS);
  ath__store_wait(w, ath__task_gen(w, t));
  uv_mutex_unlock(&w->lock);
  ath__wake_all(wake, nwake);
  return 0;
}

int ath_world_purge(ath_world_t* w, ath_task_t* t) {
  if (w->dq != NULL)
    return dq_dead_letter(w, t, 1);
  uv_mutex_lock(&w->lock);
  if (t->status != ATH_QUARANTINED) {
    uv_mutex_unlock(&w->lock);
    return ATH_EINVAL;
  }
  table_remove(w, t);
  ath__store_wait(w, ath__task_gen(w, t));
  uv_mutex_unlock(&w->lock);
  ath_task_release(t); /* the table's reference */
  return 0;
}

static int newer_first(const void* a, const void* b) {
  const ath_task_t* x = *(ath_task_t* const*)a;
  const ath_task_t* y = *(ath_task_t* const*)b;
  if (x->created_at != y->created_at)
    return x->created_at > y->created_at ? -1 : 1;
  return strcmp(x->id, y->id);
}

int ath_world_query_tasks(ath_world_t* w, const ath_task_filter_t* f, ath_task_t** out) {
  int limit = f->limit > 0 ? (f->limit > 1000 ? 1000 : f->limit) : 100;
  size_t want = (size_t)(f->offset > 0 ? f->offset : 0) + (size_t)limit;
  /* From RAM: a scan of the tasks there (the live ones, and finished ones
   * not yet committed or, in memory mode, retained). */
  uv_mutex_lock(&w->lock);
  ath__submits_drain(w);
  ath_task_t** all = malloc((w->ntasks ? w->ntasks : 1) * sizeof(*all));
  if (all == NULL) {
    uv_mutex_unlock(&w->lock);
    return ATH_ENOMEM;
  }
  size_t n = 0, shadowed = 0; /* shadowed: RAM's tasks whose row is older */
  /* a workflow in RAM: the store finds its tasks by its seq */
  const ath_task_t* wf = f->parent_id ? ath__table_get(w, f->parent_id, ath__hash_id(f->parent_id)) : NULL;
  uint64_t parent_seq = wf != NULL ? wf->seq : 0;
  int has_parent_seq = wf != NULL;
  for (size_t i = 0; i < w->table_cap; i++) {
    for (ath_task_t* t = w->table[i]; t; t = t->hnext) {
      if (row_is_newer(w, t))
        continue; /* read from the database below */
      shadowed += w->dq != NULL && ath__task_dq_seq(t) != 0; /* has a row, or its insert is in flight */
      const ath_task_t* parent = ath__task_parent(t);
      if (f->parent_id && (parent == NULL || strcmp(parent->id, f->parent_id) != 0))
        continue;
      if (f->status_mask && !(f->status_mask & (1u << t->status)))
        continue;
      if (f->name && strcmp(f->name, t->def->name) != 0)
        continue;
      if ((f->since && t->created_at < f->since) || (f->until && t->created_at > f->until))
        continue;
      all[n++] = t;
    }
  }
  qsort(all, n, sizeof(*all), newer_first);
  if (n > want)
    n = want;
  for (size_t i = 0; i < n; i++)
    ath_task_retain(all[i]);
  uv_mutex_unlock(&w->lock);
  /* From the store: finished tasks that left RAM, newest first, without
   * the world lock. */
  ath_task_t** stored = NULL;
  int64_t ns = 0;
  unsigned mask = (f->status_mask ? f->status_mask : ~0u) & STORED_MASK;
  if (w->dq != NULL) {
    /* PostgreSQL: every task of the cluster has a row, in any state: one
     * read of them all. The rows of tasks RAM holds newer are skipped
     * (collect_row), so `shadowed` more are asked for: what is left still
     * holds the first `want` of the others. */
    ath_store_query_t q = {f->status_mask, f->name, f->parent_id, f->since, f->until,
                           (int64_t)(want + shadowed), 0, 0, 0, 0};
    /* a task RAM listed is not listed again from its row, even if its
     * insert's answer (its row's created_at) arrived in between */
    ath_task_t** listed = malloc((n ? n : 1) * sizeof(*listed));
    if (listed != NULL) {
      memcpy(listed, all, n * sizeof(*listed));
      qsort(listed, n, sizeof(*listed), by_id);
    }
    if (listed == NULL || (stored = malloc((want + shadowed) * sizeof(*stored))) == NULL)
      ns = ATH_ENOMEM;
    else
      ns = stored_tasks(w, &q, stored, listed, n);
    free(listed);
    if (ns < 0) {
      for (size_t i = 0; i < n; i++)
        ath_task_release(all[i]);
      free(all);
      free(stored);
      return (int)ns;
    }
    qsort(stored, (size_t)ns, sizeof(*stored), newer_first);
    while ((size_t)ns > want)
      ath_task_release(stored[--ns]);
  } else if (w->reads != NULL && mask != 0) {
    /* One read per status: each walks the (status, created_at) index in
     * order and stops after `want` rows, where one read of several
     * statuses would sort every matching row. */
    int64_t rc = 0;
    if ((stored = malloc(3 * want * sizeof(*stored))) == NULL) /* STORED_MASK: 3 statuses */
      rc = ATH_ENOMEM;
    for (int st = ATH_COMPLETED; st < 32 && rc == 0; st++) {
      if (!(mask & (1u << st)))
        continue;
      ath_store_query_t q = {1u << st, f->name, f->parent_id, f->since, f->until, (int64_t)want, 0, 0,
                             has_parent_seq, parent_seq};
      int64_t got = ath__stored_tasks(w, &q, stored + ns);
      if (got < 0)
        rc = got;
      else
        ns += got;
    }
    if (rc != 0) {
      for (size_t i = 0; i < n; i++)
        ath_task_release(all[i]);
      free(all);
      ath__release_all(stored, (size_t)ns);
      return (int)rc;
    }
    qsort(stored, (size_t)ns, sizeof(*stored), newer_first);
    while ((size_t)ns > want)
      ath_task_release(stored[--ns]);
  }
  /* Merged in order; a task seen in both (it left RAM between the two
   * reads) counts once. */
  size_t skip = (size_t)(f->offset > 0 ? f->offset : 0), a = 0, b = 0;
  int k = 0;
  while (a < n || b < (size_t)ns) {
    ath_task_t* t;
    int c = a == n ? 1 : b == (size_t)ns ? -1 : newer_first(&all[a], &stored[b]);
    if (c == 0) {
      ath_task_release(stored[b++]);
      continue;
    }
    t = c < 0 ? all[a++] : stored[b++];
    if (skip > 0 || k == limit) {
      skip -= skip > 0;
      ath_task_release(t);
    } else {
      out[k++] = t;
    }
  }
  free(all);
  free(stored);
  return k;
}

void ath__world_heartbeat(ath_world_t* w, ath_task_t* t, const char* json, size_t len) {
  char* copy = json ? ath__memdup(json, len) : NULL;
  int64_t now = ath__wall(w);
  uv_mutex_lock(&w->lock);
  ath_task_x_t* x = ath__task_x(t);
  if (x == NULL) { /* out of memory: the heartbeat is lost, the task runs on */
    uv_mutex_unlock(&w->lock);
    free(copy);
    return;
  }
  if (json == NULL || copy != NULL) { /* out of memory: keep the old details */
    free(x->hb);
    x->hb = copy;
    x->hb_len = copy ? len : 0;
  }
  x->last_hb = now;
  ath__store_mark(w, t);
  uv_mutex_unlock(&w->lock);
}

/* ------------------------------------------------------ recovery, pruning */

/* The definition recovered tasks of `name` run under: the registered one,
 * or a ghost that never runs (its tasks fail with ENOTFOUND). */
static ath_def_t* recovered_def(ath_world_t* w, const char* name) {
  int i = find_def(w, name);
  if (i >= 0)
    return &w->defs[i];
  for (int k = 0; k < w->nghosts; k++)
    if (strcmp(w->ghost_defs[k]->name, name) == 0)
      return w->ghost_defs[k];
  ath_def_t** gs = realloc(w->ghost_defs, (w->nghosts + 1) * sizeof(*gs));
  ath_def_t* d = calloc(1, sizeof(*d));
  if (gs == NULL || d == NULL || (d->name = xstrdup(name)) == NULL) {
    free(d);
    if (gs != NULL)
      w->ghost_defs = gs;
    return NULL;
  }
  w->ghost_defs = gs;
  ath_activity_init(&d->a, NULL);
  d->queue = w->queues[0];
  d->ghost = 1;
  gs[w->nghosts++] = d;
  return d;
}

/* A task rebuilt from its stored row, in no table, queue or heap, with
 * one reference (the caller's), or NULL when out of memory. Its payloads
 * are copied before the lock is taken; `parent`, when given, is a new
 * reference the task takes over. */
static ath_task_t* task_from_row(ath_world_t* w, const ath_row_t* r, ath_task_t* parent) {
  size_t idlen = strlen(r->id);
  ath_task_t* t = calloc(1, sizeof(*t) + idlen + 1);
  if (t == NULL)
    goto nomem;
  memcpy(t->id, r->id, idlen + 1);
  atomic_init(&t->refs, 1);
  t->heap_idx = UINT32_MAX;
  t->stored = 1;
  /* the rare parts, only when the row has one of them (or leases: every
   * task of a PostgreSQL world has them, see ath__task_dq) */
  ath_task_x_t* x = NULL;
  if ((w->dq != NULL || parent != NULL || r->hb != NULL || r->call != NULL || r->last_hb != 0) &&
      (x = ath__task_x(t)) == NULL)
    goto nomem;
  if (x != NULL) {
    x->parent = parent;
    parent = NULL;
    x->last_hb = r->last_hb;
    x->hb = ath__memdup(r->hb, r->hb_len);
    x->hb_len = r->hb ? r->hb_len : 0;
  }
  t->input = ath__memdup(r->input, r->input_len);
  t->input_len = r->input_len;
  t->result = ath__memdup(r->result, r->result_len);
  t->result_len = r->result ? r->result_len : 0;
  t->error = ath__memdup(r->error, r->error_len);
  t->error_len = r->error ? r->error_len : 0;
  if (t->input == NULL || (r->result && !t->result) || (r->error && !t->error) || (r->hb && !x->hb))
    goto nomem;
  uv_mutex_lock(&w->lock);
  t->def = recovered_def(w, r->name);
  ath_queue_t* q = find_queue(w, r->queue);
  uv_mutex_unlock(&w->lock);
  if (t->def == NULL)
    goto nomem;
  if (t->def->a.workflow && !t->def->ghost) { /* a workflow has rare parts */
    if ((t->wf = calloc(1, sizeof(*t->wf))) == NULL || (x = ath__task_x(t)) == NULL ||
        (r->history && ath__wf_load(t->wf, r->history, r->history_len) != 0))
      goto nomem;
  }
  /* limits that do not parse (written by a newer build?) leave the definition's */
  if (r->call != NULL && !t->def->ghost &&
      ath__call_new(&t->def->a, r->call, r->call_len, &x->call) == ATH_ENOMEM)
    goto nomem;
  t->queue = t->def->ghost ? w->queues[0] : q ? q : t->def->queue;
  t->status = (ath_status_t)r->status;
  t->attempt = r->attempt;
  t->max_attempts = r->max_attempts;
  t->strategy = (ath_strategy_t)r->strategy;
  t->priority = r->priority;
  t->worker_id = r->worker_id;
  t->seq = r->seq;
  t->created_at = r->created_at;
  t->scheduled_at = r->scheduled_at;
  t->ready_at = r->ready_at;
  t->started_at = r->started_at;
  t->completed_at = r->completed_at;
  return t;
nomem:
  if (parent != NULL)
    ath_task_release(parent);
  if (t != NULL)
    task_free(t);
  return NULL;
}

/* The parent workflow of a stored row: in RAM, or as stored. NULL when it
 * has none, or it is gone (pruned). */
static ath_task_t* row_parent(ath_world_t* w, const ath_row_t* r) {
  ath_task_t* p = NULL;
  if (r->parent_id != NULL && ath_world_find(w, r->parent_id, &p) == 0 && p->wf == NULL) {
    ath_task_release(p); /* not a workflow (a ghost, renamed since) */
    p = NULL;
  }
  return p;
}

/* The parent of a row this node claimed (r->parent_id): the task in RAM,
 * or else a bare record of its id (no definition, state or history), which
 * is all a claimed task reads of its parent on this backend: ctx.workflowId,
 * ctx.parentId, query().parentId. A new reference, or NULL. */
static ath_task_t* adopted_parent(ath_world_t* w, const ath_row_t* r) {
  if (r->parent_id == NULL)
    return NULL;
  uv_mutex_lock(&w->lock);
  ath_task_t* p = ath__table_get(w, r->parent_id, ath__hash_id(r->parent_id));
  if (p != NULL)
    ath_task_retain(p);
  uv_mutex_unlock(&w->lock);
  size_t n = strlen(r->parent_id);
  if (p == NULL && (p = calloc(1, sizeof(*p) + n + 1)) != NULL) {
    memcpy(p->id, r->parent_id, n + 1);
    atomic_init(&p->refs, 1);
    p->heap_idx = UINT32_MAX;
  }
  return p;
}

ath_task_t* ath__world_adopt_row(ath_world_t* w, const ath_row_t* r) {
  uint64_t h = ath__hash_id(r->id);
  uv_mutex_lock(&w->lock);
  ath_task_t* t = ath__table_get(w, r->id, h);
  if (t != NULL) {
    ath_task_retain(t);
    uv_mutex_unlock(&w->lock);
    return t;
  }
  uv_mutex_unlock(&w->lock);
  ath_task_t* made = task_from_row(w, r, adopted_parent(w, r));
  if (made == NULL)
    return NULL;
  uv_mutex_lock(&w->lock);
  if ((t = ath__table_get(w, r->id, h)) != NULL) { /* adopted meanwhile */
    ath_task_retain(t);
  } else if (w->ntasks + 1 > w->table_cap && table_grow(w) != 0) {
    t = NULL;
  } else {
    t = made;
    made = NULL;
    t->remote = 1;
    t->seq = w->next_seq++;
    ath_task_retain(t); /* the table's */
    table_put(w, t, h);
  }
  uv_mutex_unlock(&w->lock);
  if (made != NULL)
    task_free(made);
  return t;
}

int ath__world_recover_row(void* ud, const ath_row_t* r) {
  ath_world_t* w = ud;
  if (r->seq >= w->next_seq)
    w->next_seq = r->seq + 1;
  if (ATH_IS_TERMINAL(r->status) && r->status != ATH_QUARANTINED) {
    w->n_recovered[3]++; /* finished: read from the store when asked for */
    return 0;
  }
  /* created before its children: the parent is loaded already, or stored */
  ath_task_t* t = task_from_row(w, r, row_parent(w, r));
  if (t == NULL)
    return ATH_ENOMEM;
  uv_mutex_lock(&w->lock);
  if (w->ntasks + 1 > w->table_cap && table_grow(w) != 0) {
    uv_mutex_unlock(&w->lock);
    task_free(t);
    return ATH_ENOMEM;
  }
  table_put(w, t, ath__hash_id(t->id));
  int64_t now = ath__wall(w);
  uint64_t mono = ath__mono(w);
  int rc = 0;
  int64_t stc = ath__task_limits(t)->schedule_to_close_ms;
  ath_task_x_t* x;
  if (stc && !ATH_IS_TERMINAL(t->status) && (x = ath__task_x(t)) != NULL) {
    int64_t left = t->scheduled_at + stc - now;
    x->exp_mono = ath__after(mono, left);
    ath__heap_push(&w->expiry, x);
  }
  if (ATH_IS_TERMINAL(t->status)) {
    w->n_recovered[3]++;
  } else if (t->def->ghost) {
    ath__set_error(t, ATH_ENOTFOUND, "no activity with this name is registered any more");
    ath__finish_task(w, t, ATH_FAILED, now, NULL, 0);
  } else if (t->status == ATH_SCHEDULED || t->status == ATH_RETRYING) {
    t->ready_mono = ath__after(mono, t->ready_at - now);
    rc = ath__heap_push(&w->delayed, t);
    w->n_scheduled += rc == 0;
    w->n_recovered[1]++;
  } else if (t->wf != NULL && t->status != ATH_PENDING) {
    /* a workflow in flight (running, parked or compensating): it resumes
     * by replaying its history, in the same run (§9.3) */
    w->n_recovered[2]++;
    t->wf->resuming = 1;
    t->wf->where = ATH_WF_QUEUED;
    t->ready_mono = mono;
    rc = ath__queue_push(t->queue, t);
  } else {
    if (t->status != ATH_PENDING) { /* running when the process died: T14 */
      t->attempt = t->attempt > 0 ? t->attempt - 1 : 0;
      w->n_recovered[2]++;
    } else {
      w->n_recovered[0]++;
    }
    t->ready_mono = mono - (uint64_t)(now > t->ready_at ? now - t->ready_at : 0) * 1000000u;
    rc = ath__make_ready(w, t);
  }
  uv_mutex_unlock(&w->lock);
  return rc;
}

void ath__world_recovered(ath_world_t* w) {
  const int64_t* n = w->n_recovered;
  if (n[0] + n[1] + n[2] + n[3] > 0) {
    ath_log_field_t f[5] = {ATH_LOG_FINT("pending", n[0]), ATH_LOG_FINT("scheduled", n[1]),
                            ATH_LOG_FINT("requeued", n[2]), ATH_LOG_FINT("finished", n[3]),
                            ATH_LOG_FSTR("path", w->cfg.persistence_path)};
    ath__logf(w, ATH_LOG_INFO, f, 5, "recovered tasks (requeued: running when the process stopped)");
  }
}

void ath__world_prune(ath_world_t* w) {
  int64_t before = ath__wall(w) - w->cfg.retention_ms;
  ath_task_t* dead = NULL; /* chained through hnext once out of the table */
  uv_mutex_lock(&w->lock);
  if (w->store != NULL) { /* and in the store, where finished tasks live */
    w->prune_before = before;
    uv_cond_signal(&w->store_cond);
  }
  for (size_t i = 0; i < w->table_cap; i++) {
    ath_task_t** p = &w->table[i];
    while (*p != NULL) {
      ath_task_t* t = *p;
      if (ATH_IS_TERMINAL(t->status) && t->status != ATH_QUARANTINED && t->completed_at < before) {
        *p = t->hnext;
        w->ntasks--;
        term_unlink(w, t);
        t->purged = 1;
        ath__store_mark(w, t);
        t->hnext = dead;
        dead = t;
      } else {
        p = &t->hnext;
      }
    }
  }
  uv_mutex_unlock(&w->lock);
  while (dead != NULL) {
    ath_task_t* next = dead->hnext;
    ath_task_release(dead);
    dead = next;
  }
}

/* ------------------------------------------------------------------- HTTP */

int ath_world_serve(ath_world_t* w, const char* host, int port, int flags, int* bound, char* err,
                    size_t errlen) {
  ath_serve_opts_t o;
  memset(&o, 0, sizeof(o));
  o.flags = flags;
  return ath__world_serve(w, host, port, &o, bound, err, errlen);
}

struct ath_gws_s* ath__world_gateway(ath_world_t* w) {
  uv_mutex_lock(&w->lock);
  struct ath_gws_s* g = w->gws;
  uv_mutex_unlock(&w->lock);
  return g;
}

int ath__world_serve(ath_world_t* w, const char* host, int port, ath_serve_opts_t* o,
                     int* bound, char* err, size_t errlen) {
  ath_serve_req_t req;
  memset(&req, 0, sizeof(req));
  req.host = host;
  req.port = port;
  req.opts = o;
  if (port < 0 || port > 65535) {
    ath__set_err(err, errlen, "%s", "invalid port (0-65535)");
    ath__serve_opts_free(o);
    return ATH_EINVAL;
  }
  uv_sem_init(&req.done, 0);
  uv_mutex_lock(&w->lock);
  if (w->state != ATH_W_STARTED || w->serve_req != NULL) {
    int st = w->state;
    uv_mutex_unlock(&w->lock);
    uv_sem_destroy(&req.done);
    ath__serve_opts_free(o);
    ath__set_err(err, errlen, "%s", st == ATH_W_NEW ? "serve before start()" : st != ATH_W_STARTED ? "world is shut down" : "another serve() is in progress");
    return st == ATH_W_NEW || st == ATH_W_STARTED ? ATH_EINVAL : ATH_ESHUTDOWN;
  }
  w->serve_req = &req;
  uv_mutex_unlock(&w->lock);
  uv_async_send(&w->easync);
  uv_sem_wait(&req.done);
  uv_sem_destroy(&req.done);
  if (req.rc != 0) {
    ath__set_err(err, errlen, "%s", req.err);
    return req.rc;
  }
  *bound = req.bound;
  return 0;
}

int ath_world_health(ath_world_t* w, char* why, size_t len) {
  uv_mutex_lock(&w->lock);
  int rc = 0;
  if (w->state != ATH_W_STARTED) {
    rc = ATH_ESHUTDOWN;
    snprintf(why, len, "%s", w->state == ATH_W_NEW ? "not started" : "shutting down");
  } else if (w->store != NULL && w->store_broken) {
    rc = ATH_ESTORE;
    snprintf(why, len, "store stopped taking writes (restart to recover): %s", w->store_err);
  } else if (w->store != NULL && w->store_fault != 0) {
    rc = ATH_ESTORE;
    snprintf(why, len, "store degraded (%s), execute refused until a commit succeeds: %s",
             ath_err_name(w->store_fault), w->store_err);
  } else if (w->store != NULL && !w->store_ok) {
    rc = ATH_ESTORE;
    snprintf(why, len, "last commit failed: %s", w->store_err);
  }
  uv_mutex_unlock(&w->lock);
  return rc;
}

/* ------------------------------------------------------------------ logging */

void ath__logf(ath_world_t* w, ath_log_level_t level, const ath_log_field_t* fields, size_t n,
               const char* fmt, ...) {
  if (w->log == NULL || !ath__log_enabled(w->log, level))
    return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  ath__log_write(w->log, level, msg, fields, n);
}

int ath__world_set_paths(ath_world_t* w, const char* path, const char* cpath) {
  char* p = path ? strdup(path) : NULL;
  char* c = cpath ? strdup(cpath) : NULL;
  if ((path && !p) || (cpath && !c)) {
    free(p);
    free(c);
    return ATH_ENOMEM;
  }
  free((char*)w->cfg.lua_path);
  free((char*)w->cfg.lua_cpath);
  w->cfg.lua_path = p;
  w->cfg.lua_cpath = c;
  return 0;
}
