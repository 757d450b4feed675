/* The world: task table, queues, delay timers, the claim/publish exchange
 * with workers, waiting, metrics, start and shutdown.
 *
 * One mutex (w->lock) guards the world's state. Workers take it once per
 * pass of their loop (ath__world_exchange), publishing every attempt that
 * ended and claiming new tasks in the same critical section, so the lock is
 * taken per batch, not per task. The lock is never held across Lua calls. */
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


static void set_err(char* err, size_t errlen, const char* fmt, const char* a) {
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
  if (q == NULL)
    return NULL;
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

static int expiry_less(const void* a, const void* b) {
  const ath_task_t* x = a;
  const ath_task_t* y = b;
  return x->exp_mono < y->exp_mono;
}

static int vtimer_less(const void* a, const void* b) {
  const ath_vtimer_t* x = a;
  const ath_vtimer_t* y = b;
  return x->due < y->due;
}

int ath_world_new(const ath_world_config_t* cfg, ath_world_t** out, char* err,
                  size_t errlen) {
  int crc = ath__config_check(cfg, err, errlen);
  if (crc != 0)
    return crc;
  if (cfg->webhook_url && strncmp(cfg->webhook_url, "http://", 7) != 0 &&
      strncmp(cfg->webhook_url, "https://", 8) != 0) {
    set_err(err, errlen, "%s", "invalid webhook URL (http:// or https://)");
    return ATH_EINVAL;
  }
  if (cfg->default_concurrency < 1) {
    set_err(err, errlen, "%s", "invalid concurrency (must be >= 1)");
    return ATH_EINVAL;
  }
  if (cfg->database && ath__db_url_kind(cfg->database) == 0) {
    set_err(err, errlen, "%s", "invalid database (sqlite:<path> or postgres://...)");
    return ATH_EINVAL;
  }
  ath_world_t* w = calloc(1, sizeof(*w));
  if (w == NULL)
    return ATH_ENOMEM;
  uv_mutex_init(&w->lock);
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
      (cfg->entry_script && !w->cfg.entry_script) || (cfg->database && !w->cfg.database)) {
    w->nqueues = w->queues ? 1 : 0;
    ath_world_free(w);
    return ATH_ENOMEM;
  }
  w->nqueues = 1;
  w->next_worker_id = 1;
  w->delayed = (ath_heap_t)ATH_HEAP_INIT(ath__task_ready_less, ath_task_t, heap_idx);
  w->vtimers = (ath_heap_t)ATH_HEAP_INIT(vtimer_less, ath_vtimer_t, heap_idx);
  w->expiry = (ath_heap_t)ATH_HEAP_INIT(expiry_less, ath_task_t, exp_idx);
  w->manual = cfg->manual_clock != 0;
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
  if (workers < 1)
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
      size_t b = e->hash & (cap - 1);
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

static ath_task_t* table_get(ath_world_t* w, const char* id, uint64_t hash) {
  for (ath_task_t* e = w->table[hash & (w->table_cap - 1)]; e; e = e->hnext)
    if (e->hash == hash && strcmp(e->id, id) == 0)
      return e;
  return NULL;
}

static void table_put(ath_world_t* w, ath_task_t* t) {
  size_t b = t->hash & (w->table_cap - 1);
  t->hnext = w->table[b];
  w->table[b] = t;
  w->ntasks++;
  if (t->parent != NULL && t->parent->wf != NULL)
    ath__wf_kid_add(t->parent->wf, t);
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

static void table_unlink(ath_world_t* w, ath_task_t* t) {
  for (ath_task_t** p = &w->table[t->hash & (w->table_cap - 1)]; *p; p = &(*p)->hnext) {
    if (*p == t) {
      *p = t->hnext;
      w->ntasks--;
      if (t->parent != NULL && t->parent->wf != NULL)
        ath__wf_kid_remove(t->parent->wf, t);
      break;
    }
  }
  term_unlink(w, t);
}

/* Takes the terminal tasks that must leave RAM out of the table, chained
 * through hnext; the caller drops their table references with term_free
 * after unlocking. Evictions happen only here, at the end of a critical
 * section, so no code holding a bare task pointer sees its task freed. In
 * memory mode the oldest beyond retain_terminal go; with a store, every
 * task whose final state is committed (no newer change pending). */
ath_task_t* ath__world_term_trim(ath_world_t* w) {
  ath_task_t* dead = NULL;
  int memory = w->cfg.persistence == ATH_PERSIST_MEMORY;
  for (ath_task_t* t = w->term.head; t != NULL; t = w->term.head) {
    if (memory ? w->nterm <= w->cfg.retain_terminal
               : w->reads == NULL || t->dirty || t->dirty_gen > w->committed_gen)
      break;
    table_unlink(w, t);
    w->evicted_hash[w->nevicted++ % ATH_EVICTED_RING] = t->hash;
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

static void term_push(ath_world_t* w, ath_task_t* t) {
  if (t->in_term || t->status == ATH_QUARANTINED)
    return;
  ath__list_append(&w->term, t);
  t->in_term = 1;
  w->nterm++;
}

/* Takes t out of the table and the store (lock held); the caller drops
 * the table's reference. */
static void table_remove(ath_world_t* w, ath_task_t* t) {
  table_unlink(w, t);
  t->purged = 1;
  ath__store_mark(w, t);
}

static void task_free(ath_task_t* t) {
  free(t->call);
  if (t->wf != NULL) {
    if (t->wf->wait_task != NULL)
      ath_task_release(t->wf->wait_task);
    ath__wf_free(t->wf);
  }
  if (t->parent != NULL)
    ath_task_release(t->parent);
  free(t->hb);
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
  uv_mutex_lock(&w->lock);
  ath_status_t s = t->status;
  uv_mutex_unlock(&w->lock);
  return s;
}

ath_wfev_t** ath__world_wf_events(ath_world_t* w, ath_task_t* t, uint32_t from, size_t* n,
                                  uint32_t* total) {
  uv_mutex_lock(&w->lock);
  ath_wfev_t** evs = ath__wf_events_from(t->wf, from, n);
  *total = t->wf->nev;
  uv_mutex_unlock(&w->lock);
  return evs;
}

int ath_task_snapshot(ath_world_t* w, const ath_task_t* t, ath_task_info_t* info) {
  memset(info, 0, sizeof(*info));
  uv_mutex_lock(&w->lock);
  info->status = t->status;
  info->attempt = t->attempt;
  info->worker_id = t->worker_id;
  info->priority = t->priority;
  info->max_attempts = t->max_attempts;
  info->failure_strategy = t->strategy;
  info->ready_at = t->ready_at;
  info->last_heartbeat = t->last_hb;
  info->heartbeat = ath__memdup(t->hb, t->hb_len);
  info->heartbeat_len = t->hb ? t->hb_len : 0;
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
  if (t->parent != NULL) { /* immutable */
    info->parent_id = ath__memdup(t->parent->id, strlen(t->parent->id));
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
      (info->last_heartbeat && !info->heartbeat) || lost_error) {
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

/* The finished statuses a store holds once they left RAM (dead letters
 * never leave it). */
#define STORED_MASK ((1u << ATH_COMPLETED) | (1u << ATH_FAILED) | (1u << ATH_CANCELLED))

typedef struct {
  ath_world_t* w;
  ath_task_t** out;
  int64_t n, cap;
} rows_t;

static ath_task_t* task_from_row(ath_world_t* w, const ath_row_t* r, ath_task_t* parent);
static ath_task_t* row_parent(ath_world_t* w, const ath_row_t* r);

/* ath_row_cb: appends the row's task, unless RAM has it (its state there
 * is newer, or the same). */
static int collect_row(void* ud, const ath_row_t* r) {
  rows_t* c = ud;
  if (c->n == c->cap)
    return 0;
  uv_mutex_lock(&c->w->lock);
  int in_ram = table_get(c->w, r->id, ath__hash_str(r->id)) != NULL;
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
static int64_t stored_tasks(ath_world_t* w, const ath_store_query_t* q, ath_task_t** out) {
  rows_t c = {w, out, 0, q->limit};
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
static void release_all(ath_task_t** a, size_t n) {
  for (size_t i = 0; a != NULL && i < n; i++)
    if (a[i] != NULL)
      ath_task_release(a[i]);
  free(a);
}

/* Task `id` as stored: 0 and a new reference in *out, ATH_ENOTFOUND, or a
 * failure to read (logged). */
static int find_stored(ath_world_t* w, const char* id, ath_task_t** out) {
  *out = NULL;
  rows_t c = {w, out, 0, 1};
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
  if (w->nevicted - since > ATH_EVICTED_RING)
    return 1; /* too many to tell */
  for (uint64_t i = since; i < w->nevicted; i++)
    if (w->evicted_hash[i % ATH_EVICTED_RING] == h)
      return 1;
  return 0;
}

int ath_world_find(ath_world_t* w, const char* id, ath_task_t** out) {
  uint64_t h = ath__hash_str(id);
  uv_mutex_lock(&w->lock);
  ath_task_t* t = table_get(w, id, h);
  if (t != NULL)
    ath_task_retain(t);
  uv_mutex_unlock(&w->lock);
  *out = t;
  /* Not in RAM: it never was, or it left once committed (so the store
   * has it): one look there settles it. */
  if (t != NULL || w->reads == NULL)
    return t ? 0 : ATH_ENOTFOUND;
  return find_stored(w, id, out);
}

/* --------------------------------------------------------------- waking */

/* Collects up to `n` sleeping workers of `q` into `out` (lock held) and
 * clears their flags; the caller wakes them after unlocking. */
static int pick_sleepers(ath_world_t* w, ath_queue_t* q, int64_t n,
                         ath_worker_t** out, int cap) {
  int k = 0;
  /* idle workers first: one running a task cannot start another until
   * that task yields (SEMANTICS §5.2: the fewest running wins) */
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < w->nworkers && k < cap && k < n; i++) {
      ath_worker_t* wk = w->workers[i];
      if (wk->queue == q && wk->wants_work && (pass == 1 || wk->running == 0)) {
        wk->wants_work = 0;
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
#define wake_all ath__wake_all

/* Moves a ready task into its queue (lock held). */
static int make_ready(ath_world_t* w, ath_task_t* t) {
  t->status = ATH_PENDING;
  ath__store_mark(w, t);
  return ath__queue_push(t->queue, t);
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
      set_err(err, errlen, "the task could not be stored: %s", w->store_err);
    uv_mutex_unlock(&w->lock);
    for (size_t i = 0; rc != 0 && i < n; i++) {
      ath_task_release(out[i]);
      out[i] = NULL;
    }
  }
  return rc;
}

int ath__world_execute(ath_world_t* w, const char* name, size_t n, char** payloads,
                       const size_t* lens, const char* const* ids, const ath_exec_opts_t* opts,
                       ath_task_t** out, uint64_t* gen_out, char* err, size_t errlen) {
  *gen_out = 0;
  ath_exec_opts_t none = {0};
  ath_task_t** tasks = NULL;
  ath_task_t** stored = NULL; /* the tasks of explicit ids found in the store */
  ath_call_t* call = NULL; /* per-call limits, checked once; each task gets its copy */
  size_t made = 0;
  int rc = 0;
  if (opts == NULL)
    opts = &none;
  int di = find_def(w, name); /* defs are immutable once started */
  if (di < 0) {
    set_err(err, errlen, "no activity named %s", name);
    rc = ATH_ENOTFOUND;
    goto fail;
  }
  ath_def_t* def = &w->defs[di];
  ath_queue_t* q = def->queue;
  if (opts->task_queue != NULL && (q = find_queue(w, opts->task_queue)) == NULL) {
    set_err(err, errlen, "unknown task queue %s", opts->task_queue);
    rc = ATH_EINVAL;
    goto fail;
  }
  if (opts->delay_ms < 0) {
    set_err(err, errlen, "%s", "invalid delay (must be >= 0)");
    rc = ATH_EINVAL;
    goto fail;
  }
  int prio = opts->has_priority ? opts->priority : def->a.priority;
  /* Effective strategy and attempts (SEMANTICS §7.2, §8). */
  ath_strategy_t strategy = opts->failure_strategy != ATH_STRATEGY_DEFAULT ? opts->failure_strategy
                            : def->a.failure_strategy != ATH_STRATEGY_DEFAULT ? def->a.failure_strategy
                                                                              : w->cfg.failure_strategy;
  if (opts->limits != NULL && (rc = ath__call_new(&def->a, opts->limits, opts->limits_len, &call)) != 0) {
    set_err(err, errlen, "%s", rc == ATH_EINVAL ? "invalid per-call limits" : "out of memory");
    goto fail;
  }
  const ath_activity_t* lim = call ? &call->a : &def->a;
  int max_attempts = lim->has_retry && lim->max_attempts > 0 ? lim->max_attempts
                     : strategy == ATH_STRATEGY_RETRY         ? (def->a.workflow ? 4 : 3)
                                                              : 1;
  uint64_t parent_hash = opts->parent_id ? ath__hash_str(opts->parent_id) : 0;
  size_t namelen = strlen(name);
  tasks = malloc((n ? n : 1) * sizeof(*tasks));
  if (tasks == NULL) {
    rc = ATH_ENOMEM;
    goto fail;
  }
  int64_t now = ath__wall(w);
  uint64_t mono = ath__mono(w);
  for (made = 0; made < n; made++) {
    if (lens[made] > ATH_PAYLOAD_MAX) {
      set_err(err, errlen, "%s", "input larger than 4 GiB");
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
    t->hash = ath__hash_str(t->id);
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
    t->heap_idx = t->exp_idx = UINT32_MAX;
    t->exp_mono = lim->schedule_to_close_ms ? ath__after(t->ready_mono, lim->schedule_to_close_ms) : 0;
    if ((def->a.workflow && (t->wf = calloc(1, sizeof(*t->wf))) == NULL) ||
        (call != NULL && ath__call_new(&def->a, call->json, call->json_len, &t->call) != 0)) {
      free(t->wf);
      free(t);
      rc = ATH_ENOMEM;
      goto fail;
    }
    tasks[made] = t;
  }

  /* With a store, an explicit id may name a task that finished and left
   * RAM: look there first, without the lock. Under the lock, a task that
   * left RAM since then shows in the ring of evicted ids. */
  uint64_t evicted0 = 0;
  if (w->reads != NULL && (ids != NULL || opts->id != NULL)) {
    if ((stored = calloc(n ? n : 1, sizeof(*stored))) == NULL) {
      rc = ATH_ENOMEM;
      goto fail;
    }
    uv_mutex_lock(&w->lock);
    evicted0 = w->nevicted;
    uv_mutex_unlock(&w->lock);
    for (size_t i = 0; i < n; i++)
      find_stored(w, tasks[i]->id, &stored[i]);
  }

  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0, wake_engine = 0;
relock:
  uv_mutex_lock(&w->lock);
  /* While shutdown drains the queues, runs under way still take their
   * steps (a workflow's activities and children); nothing else gets in. */
  if (w->state != ATH_W_STARTED && !(w->draining && opts->parent_id != NULL)) {
    rc = w->state == ATH_W_NEW ? ATH_EINVAL : ATH_ESHUTDOWN;
    set_err(err, errlen, "%s", w->state == ATH_W_NEW ? "execute before start()" : "world is shutting down");
    uv_mutex_unlock(&w->lock);
    goto fail;
  }
  /* Check every explicit id before changing anything, so a batch goes in
   * whole or not at all. */
  for (size_t i = 0; i < n; i++) {
    ath_task_t* old = table_get(w, tasks[i]->id, tasks[i]->hash);
    if (old == NULL && stored != NULL && stored[i] == NULL &&
        evicted_since(w, evicted0, tasks[i]->hash)) {
      /* Rare: look again (reads take the lock themselves), then check all
       * over; evictions from now on are caught the same way. */
      evicted0 = w->nevicted;
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
  ath_task_t* parent = NULL;
  if (opts->parent_id != NULL &&
      ((parent = table_get(w, opts->parent_id, parent_hash)) == NULL || parent->wf == NULL)) {
    set_err(err, errlen, "no workflow %s", opts->parent_id);
    rc = ATH_ENOTFOUND;
    uv_mutex_unlock(&w->lock);
    goto fail;
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
    ath_task_t* old = table_get(w, t->id, t->hash);
    if (old == NULL && stored != NULL && stored[i] != NULL) {
      old = stored[i]; /* its reference is handed over */
      stored[i] = NULL;
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
      t->parent = parent;
    }
    table_put(w, t);
    if (t->exp_mono && ath__heap_push(&w->expiry, t) == 0)
      wake_engine |= w->expiry.items[0] == t;
    int qrc;
    if (opts->delay_ms > 0) {
      t->status = ATH_SCHEDULED;
      if ((qrc = ath__heap_push(&w->delayed, t)) == 0) {
        ath__store_mark(w, t);
        w->n_scheduled++;
        wake_engine |= w->delayed.items[0] == t;
      }
    } else if ((qrc = make_ready(w, t)) == 0) {
      ready++;
    }
    if (qrc != 0) {
      /* No memory for the queue's index: the task is in the table already,
       * so it fails visibly rather than vanishing. */
      t->status = ATH_FAILED;
      t->err_code = ATH_ENOMEM;
      t->completed_at = now;
      w->n_failed++;
    }
    out[i] = t;
  }
  nwake = unborn ? 0 : pick_sleepers(w, q, ready, wake, MAX_WORKERS); /* unborn: once committed */
  uint64_t gen = w->gen;
  uv_mutex_unlock(&w->lock);
  wake_all(wake, nwake);
  if (wake_engine)
    uv_async_send(&w->easync);
  free(tasks);
  free(call);
  release_all(stored, n);
  if (w->cfg.persistence == ATH_PERSIST_FILE) { /* acknowledged once durable */
    *gen_out = gen;
  } else if (w->cfg.persistence == ATH_PERSIST_HYBRID) { /* the store keeps up */
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
      free(tasks[i]->call);
      free(tasks[i]);
    }
  }
  for (size_t i = made; i < n; i++) {
    free(payloads[i]);
    payloads[i] = NULL;
  }
  free(tasks);
  free(call);
  release_all(stored, n);
  return rc;
}

/* ------------------------------------------------------ the engine loop */

static void engine_timer_cb(uv_timer_t* h);
static void set_error(ath_task_t* t, int code, const char* message);
static int finish_task(ath_world_t* w, ath_task_t* t, ath_status_t st, int64_t now,
                       ath_worker_t** wake, int nwake);
static int wf_terminal(ath_world_t* w, ath_task_t* t, int64_t now, ath_worker_t** wake, int nwake);
static int wf_timer_fired(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake);
static int wf_run_timed_out(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake);
static int wf_resume(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake);
static int unqueue(ath_world_t* w, ath_task_t* t);

/* Moves due delayed tasks to their queues and re-arms the timer for the
 * next one. Runs on the engine thread. */
static void engine_tick(ath_world_t* w) {
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
      nwake = wf_timer_fired(w, t, wake, nwake);
      continue;
    }
    if (make_ready(w, t) != 0) {
      t->status = ATH_FAILED;
      t->err_code = ATH_ENOMEM;
      t->completed_at = ath__wall(w);
      w->n_failed++;
      continue;
    }
    if (nwake < MAX_WORKERS)
      nwake += pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
  }
  /* scheduleToClose of tasks still waiting: they fail where they are
   * (running ones are stopped by their worker's deadline); and the run
   * limit of workflows parked between segments */
  while ((t = ath__heap_peek(&w->expiry)) != NULL && t->exp_mono <= now) {
    ath__heap_remove(&w->expiry, t);
    if (t->wf != NULL) { /* in a slot, the segment's deadline stops it */
      if (t->status == ATH_RUNNING && t->wf->where != ATH_WF_SLOT)
        nwake = wf_run_timed_out(w, t, wake, nwake);
      continue;
    }
    if (t->status == ATH_RUNNING || ATH_IS_TERMINAL(t->status))
      continue;
    if (t->status == ATH_PENDING) {
      ath__queue_remove(t->queue, t);
    } else if (t->heap_idx != UINT32_MAX) {
      ath__heap_remove(&w->delayed, t);
      w->n_scheduled--;
    }
    set_error(t, ATH_ETIMEDOUT, "scheduleToClose expired while the task waited");
    nwake = finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED,
                        ath__wall(w), wake, nwake);
  }
  /* after both loops: a timed-out workflow may wait for a retry now */
  if ((t = ath__heap_peek(&w->delayed)) != NULL)
    next = t->ready_mono;
  if ((t = ath__heap_peek(&w->expiry)) != NULL && (next == 0 || t->exp_mono < next))
    next = t->exp_mono;
  ath_task_t* dead = ath__world_term_trim(w);
  uv_mutex_unlock(&w->lock);
  ath__world_term_free(dead);
  wake_all(wake, nwake);
  if (next != 0 && !w->manual) /* the manual clock fires in advance() */
    uv_timer_start(&w->etimer, engine_timer_cb, (next - now + 999999) / 1000000, 0);
}

static void engine_timer_cb(uv_timer_t* h) {
  engine_tick(h->data);
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
    uv_close((uv_handle_t*)&w->scale_timer, NULL);
    uv_close((uv_handle_t*)&w->monitor_timer, NULL);
    uv_close((uv_handle_t*)&w->stimer, NULL);
    uv_close((uv_handle_t*)&w->prune_timer, NULL);
    uv_close((uv_handle_t*)&w->etimer, NULL);
    uv_close((uv_handle_t*)&w->easync, NULL);
    return;
  }
  if (w->manual)
    return; /* on a manual clock, advance() alone fires timers */
  engine_tick(w);
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

/* --------------------------------------------------- worker exchange */

static void lat_add(ath_lat_ring_t* r, double ms, int64_t at) {
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

/* Counts a completion for the throughput figures (lock held). */
static void tput_add(ath_world_t* w, int64_t now_ms) {
  rate_add(w->tput, 3600, &w->tput_sec, now_ms / 1000);
  rate_add(w->tput_ds, 20, &w->tput_dsec, now_ms / 100);
}

/* Hands the slots waiting on `t` to their workers (lock held). */
/* Adds wk to wake[0..nwake) unless it is there; returns the new nwake. */
static int add_wake(ath_worker_t** wake, int nwake, ath_worker_t* wk) {
  for (int i = 0; i < nwake; i++)
    if (wake[i] == wk)
      return nwake;
  if (nwake < MAX_WORKERS) {
    atomic_fetch_add_explicit(&wk->wakes_held, 1, memory_order_relaxed);
    wake[nwake++] = wk;
  }
  return nwake;
}

int ath__waiter_deliver(ath_waiter_t* wt, ath_worker_t** wake, int nwake) {
  ath_worker_t* wk = wt->slot->wk;
  wt->next = wk->inbox;
  wk->inbox = wt;
  return add_wake(wake, nwake, wk);
}

/* Wakes the threads blocked on t, or on any task when t is NULL (lock
 * held). */
static void wake_blocked(ath_world_t* w, const ath_task_t* t) {
  for (ath_bwait_t* b = w->bwaiters; b != NULL; b = b->next)
    if (t == NULL || b->task == t)
      uv_cond_signal(&b->cond);
}

static int deliver_waiters(ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath_waiter_t* wt = t->waiters;
  t->waiters = NULL;
  while (wt != NULL) {
    ath_waiter_t* next = wt->next;
    wt->task = t;
    nwake = ath__waiter_deliver(wt, wake, nwake);
    wt = next;
  }
  return nwake;
}

/* Emits a task.* webhook event for t (lock held; t not running, so its
 * error is settled). */
/* Records a task event for the webhooks (lock held): the task and its
 * state, no JSON; the webhook thread writes the body. */
static void emit_task(ath_world_t* w, ath_task_t* t, int kind, int64_t now) {
  int err = t->error != NULL && t->status != ATH_COMPLETED;
  ath__hook_emit_task(w->hook, kind, now, t, err ? t->error : NULL, err ? t->error_len : 0);
}

/* Moves `t` to the terminal state `st` (lock held): counters, waiters.
 * Returns the new number of workers to wake. */
static int finish_task(ath_world_t* w, ath_task_t* t, ath_status_t st, int64_t now,
                       ath_worker_t** wake, int nwake) {
  t->status = st;
  t->completed_at = now;
  ath__store_mark(w, t);
  if (t->exp_idx != UINT32_MAX)
    ath__heap_remove(&w->expiry, t);
  switch (st) {
    case ATH_COMPLETED:
      w->n_completed++;
      if (!w->cfg.no_metrics)
        tput_add(w, now);
      emit_task(w, t, ATH_EV_TASK_COMPLETED, now);
      break;
    case ATH_CANCELLED:
      w->n_cancelled++;
      emit_task(w, t, ATH_EV_TASK_CANCELLED, now);
      break;
    case ATH_QUARANTINED:
      w->n_quarantined++;
      emit_task(w, t, ATH_EV_TASK_QUARANTINED, now);
      break;
    default:
      w->n_failed++;
      emit_task(w, t, ATH_EV_TASK_FAILED, now);
      break;
  }
  if (t->waiters != NULL)
    nwake = deliver_waiters(t, wake, nwake);
  if (w->bwaiters != NULL)
    wake_blocked(w, t);
  if (w->cond_waiters > 0)
    uv_cond_broadcast(&w->cond);
  if (t->wf != NULL || t->parent != NULL)
    nwake = wf_terminal(w, t, now, wake, nwake);
  term_push(w, t);
  return nwake;
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
  if (!t->unborn || t->withdrawn || t->parent != NULL)
    return nwake;
  *withdrawn = 1;
  if (t->status == ATH_PENDING && nwake < MAX_WORKERS) /* the born tasks behind it */
    nwake += pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
  if (!ATH_IS_TERMINAL(t->status)) {
    unqueue(w, t);
    set_error(t, code, "its enqueue could not be stored");
    t->status = ATH_FAILED;
  }
  if (t->exp_idx != UINT32_MAX)
    ath__heap_remove(&w->expiry, t);
  int listed = table_get(w, t->id, t->hash) == t;
  table_unlink(w, t);
  t->withdrawn = 1;
  t->purged = 1; /* its row is deleted, should a failed commit have stored it */
  t->err_code = code;
  if (t->waiters != NULL)
    nwake = deliver_waiters(t, wake, nwake);
  if (w->bwaiters != NULL)
    wake_blocked(w, t);
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
    int k = pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
    if (k == 0)
      none = t->queue;
    nwake += k;
  }
  return nwake;
}

/* Replaces t's error with {code, message, retryable = false}. Lock held;
 * on allocation failure the task keeps err_code only. */
static void set_error(ath_task_t* t, int code, const char* message) {
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

/* Starts an event {"type":..,"at":..,"run":..; wf_push closes it. */
static void ev_begin(ath_buf_t* b, const ath_task_t* t, const char* type, int64_t now) {
  char tmp[160];
  int n = snprintf(tmp, sizeof(tmp), "{\"type\":\"%s\",\"at\":%lld,\"run\":%d", type,
                   (long long)now, t->attempt);
  ath__buf_append(b, tmp, (size_t)n);
}

static void ev_int(ath_buf_t* b, const char* key, int64_t v) {
  char tmp[96];
  int n = snprintf(tmp, sizeof(tmp), ",\"%s\":%lld", key, (long long)v);
  ath__buf_append(b, tmp, (size_t)n);
}

/* Adds "key":json (null when json is NULL). */
static void ev_raw(ath_buf_t* b, const char* key, const char* json, size_t len) {
  char tmp[64];
  int n = snprintf(tmp, sizeof(tmp), ",\"%s\":", key);
  ath__buf_append(b, tmp, (size_t)n);
  if (json != NULL)
    ath__buf_append(b, json, len);
  else
    ath__buf_lit(b, "null");
}

/* Appends a finished event to t's history (and consumes b). */
static int wf_push(ath_world_t* w, ath_task_t* t, ath_buf_t* b) {
  int rc = ath__buf_lit(b, "}");
  if (rc == 0 && b->data != NULL) {
    ath_wfev_t* e = ath__wfev_new(b->data, b->len);
    rc = e != NULL ? ath__wf_push(t->wf, e) : ATH_ENOMEM;
    ath__store_mark(w, t);
  }
  ath__buf_free(b);
  return rc;
}

/* Backoff for failed attempt n (SEMANTICS §7.4): capped, then 0-10 %
 * additive jitter. */
static int64_t backoff_ms(const ath_activity_t* a, int n) {
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
static int retry_task(ath_world_t* w, ath_task_t* t, const ath_outcome_t* o,
                      int64_t now, uint64_t mono, int* wake_engine) {
  if (t->attempt >= t->max_attempts)
    return -1;
  int64_t delay = o->retry_after >= 0 ? o->retry_after : backoff_ms(ath__task_limits(t), t->attempt);
  int64_t stc = ath__task_limits(t)->schedule_to_close_ms;
  if (stc > 0 && now + delay >= t->scheduled_at + stc)
    return -1;
  if (t->wf != NULL) { /* §9.5: the next run replays the history */
    ath_buf_t b = {0};
    ev_begin(&b, t, "workflow.retrying", now);
    ev_raw(&b, "error", t->error, t->error_len);
    ev_int(&b, "delayMs", delay);
    wf_push(w, t, &b);
  }
  t->status = ATH_RETRYING;
  t->ready_at = now + delay;
  t->ready_mono = ath__after(mono, delay);
  if (ath__heap_push(&w->delayed, t) != 0)
    return -1;
  w->n_scheduled++;
  w->n_retried++;
  ath__store_mark(w, t);
  emit_task(w, t, ATH_EV_TASK_RETRYING, now);
  *wake_engine |= w->delayed.items[0] == t;
  return 0;
}

/* A failed attempt (or workflow run): retried (§7.3), compensated (T10),
 * or final. Returns the new nwake. */
static int attempt_failed(ath_world_t* w, ath_task_t* t, const ath_outcome_t* o, int64_t now,
                          uint64_t mono, ath_worker_t** wake, int nwake, int* wake_engine) {
  if (!o->final && retry_task(w, t, o, now, mono, wake_engine) == 0)
    return nwake;
  if (t->wf != NULL && t->strategy == ATH_STRATEGY_COMPENSATE) {
    /* T10: compensations run in segments of their own */
    t->status = ATH_COMPENSATING;
    return wf_resume(w, t, wake, nwake);
  }
  return finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED, now,
                     wake, nwake);
}

/* ------------------------------------------------------------ workflows */

/* The engine's side of workflows (SEMANTICS §9): histories, parking,
 * outcomes of awaited tasks, cascade. The Lua side (athena/workflow.lua)
 * replays the handler against the history in each segment and parks at the
 * first command whose outcome is not recorded; everything here runs with
 * the world lock held. */

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
    ev_raw(b, "error", tmp, (size_t)n);
  } else {
    ev_raw(b, "error", x->error, x->error_len);
  }
}

/* Records the outcome of x, which workflow t awaits as its command
 * t->wf->wait_seq, in t's history. */
static void wf_record(ath_world_t* w, ath_task_t* t, const ath_task_t* x, int64_t now) {
  static const char* const family[] = {"", "activity", "child", "compensation"};
  int kind = t->wf->wait_kind;
  int ok = x->status == ATH_COMPLETED;
  char type[40];
  snprintf(type, sizeof(type), "%s.%s", family[kind], ok ? "completed" : "failed");
  ath_buf_t b = {0};
  ev_begin(&b, t, type, now);
  ev_int(&b, kind == ATH_PARK_COMP ? "index" : "seq", t->wf->wait_seq);
  if (ok && kind != ATH_PARK_COMP)
    ev_raw(&b, "result", x->result, x->result_len);
  else if (!ok)
    ev_task_error(&b, x);
  wf_push(w, t, &b);
}

/* Whether worker wk can take resumptions of the workflows it caches. */
static int home_open(const ath_world_t* w, const ath_worker_t* wk) {
  return wk->state == ATH_WK_RUNNING && !wk->stop && !atomic_load(&wk->lost) &&
         (w->state == ATH_W_STARTED || w->draining);
}

/* Queues a resumption of parked workflow t (its state stays running or
 * compensating; the claim continues the run): on its home worker, which
 * still has its coroutine, else in its queue for any worker (which
 * replays the history). Returns the new nwake. */
static int wf_resume(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
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
  ath_worker_t* home = wf->home;
  if (home != NULL && wake != NULL && home_open(w, home)) {
    wf->where = ATH_WF_HOME;
    ath__list_append(&home->resumes, t);
    t->queue->depth++;
    if (home->wants_work) {
      home->wants_work = 0;
      nwake = add_wake(wake, nwake, home);
    }
    return nwake;
  }
  wf->home = NULL;
  wf->where = ATH_WF_QUEUED;
  if (ath__queue_push(t->queue, t) != 0) {
    set_error(t, ATH_ENOMEM, "out of memory resuming the workflow");
    return finish_task(w, t, ATH_FAILED, ath__wall(w), wake, nwake);
  }
  if (wake != NULL && nwake < MAX_WORKERS)
    nwake += pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
  return nwake;
}

/* Moves the resumptions queued on worker wk (stopping, or lost) to their
 * queues, for any worker (lock held). Returns the new nwake. */
static int wf_unhome(ath_world_t* w, ath_worker_t* wk, ath_worker_t** wake, int nwake) {
  for (ath_task_t* t = wk->resumes.head; t != NULL; t = wk->resumes.head) {
    ath__list_unlink(&wk->resumes, t);
    t->queue->depth--;
    t->wf->home = NULL;
    nwake = wf_resume(w, t, wake, nwake);
  }
  return nwake;
}

/* The next workflow due to resume on wk (lock held), or NULL. */
static ath_task_t* wf_pop_home(ath_worker_t* wk) {
  ath_task_t* t = wk->resumes.head;
  if (t != NULL) {
    ath__list_unlink(&wk->resumes, t);
    t->queue->depth--;
  }
  return t;
}

/* Takes a waiting workflow (or any task not in a slot) out of its queue or
 * heap. Returns 0, or -1 when it is in a slot. */
static int unqueue(ath_world_t* w, ath_task_t* t) {
  int where = t->wf ? t->wf->where : ATH_WF_SLOT;
  if (t->wf && where == ATH_WF_HOME) {
    ath__list_unlink(&t->wf->home->resumes, t);
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

static int wake_runner(ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath_worker_t* wk = t->wk;
  if (wk == NULL)
    return nwake;
  atomic_store(&wk->poke, 1);
  return wake == NULL ? nwake : add_wake(wake, nwake, wk);
}

/* Cancels t (lock held): at once unless a slot runs it, then at its next
 * yield point. Returns the new nwake; 0 in *accepted when refused. */
static int cancel_locked(ath_world_t* w, ath_task_t* t, int64_t now, ath_worker_t** wake,
                         int nwake, int* accepted) {
  *accepted = 0;
  if (ATH_IS_TERMINAL(t->status) || t->status == ATH_COMPENSATING)
    return nwake;
  *accepted = 1;
  if (atomic_load(&t->cancel_ns) == 0)
    atomic_store(&t->cancel_ns, ath__mono(w));
  ath__store_mark(w, t);
  if (t->wf != NULL) {
    ath_buf_t b = {0};
    ev_begin(&b, t, "cancel.requested", now);
    wf_push(w, t, &b);
  }
  if (unqueue(w, t) == 0)
    return finish_task(w, t, ATH_CANCELLED, now, wake, nwake);
  return wake_runner(t, wake, nwake); /* its worker interrupts it */
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
        if (c->parent == t && c != keep && !ATH_IS_TERMINAL(c->status))
          nwake = cancel_locked(w, c, now, wake, nwake, &accepted);
      }
    }
    return nwake;
  }
  /* nothing leaves the table before the critical section ends */
  for (uint32_t i = wf->kids_lo; i < wf->nkids; i++) {
    ath_task_t* c = wf->kids[i];
    int accepted;
    if (c != NULL && c != keep && !ATH_IS_TERMINAL(c->status))
      nwake = cancel_locked(w, c, now, wake, nwake, &accepted);
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
  if (unqueue(w, t) != 0) {
    /* a segment is running: stop it at its next yield point; the outcome
     * then becomes this failure (ath__world_exchange) */
    free(t->wf->forced_err);
    t->wf->forced_err = json ? ath__memdup(json, e.len - (size_t)(json - e.data)) : NULL;
    t->wf->forced_err_len = t->wf->forced_err ? e.len - (size_t)(json - e.data) : 0;
    t->wf->forced = 2; /* 2: pending; 1: applied */
    if (atomic_load(&t->cancel_ns) == 0)
      atomic_store(&t->cancel_ns, ath__mono(w));
    ath__buf_free(&e);
    return wake_runner(t, wake, nwake);
  }
  free(t->error);
  t->error = json ? ath__memdup(json, e.len - (size_t)(json - e.data)) : NULL;
  t->error_len = t->error ? e.len - (size_t)(json - e.data) : 0;
  t->err_code = x->err_code ? x->err_code : ATH_ECANCELED;
  ath__buf_free(&e);
  return finish_task(w, t, ATH_FAILED, now, wake, nwake);
}

/* t turned terminal (called by finish_task): its history, its children on
 * cancel or cascade, and its parent (an awaited outcome or a cascade). */
static int wf_terminal(ath_world_t* w, ath_task_t* t, int64_t now, ath_worker_t** wake, int nwake) {
  if (t->wf != NULL) {
    static const char* const names[] = {
      [ATH_COMPLETED] = "workflow.completed", [ATH_FAILED] = "workflow.failed",
      [ATH_CANCELLED] = "workflow.cancelled", [ATH_QUARANTINED] = "workflow.failed",
      [ATH_COMPENSATED] = "workflow.compensated"};
    ath_buf_t b = {0};
    ev_begin(&b, t, names[t->status], now);
    if (t->status == ATH_COMPLETED)
      ev_raw(&b, "result", t->result, t->result_len);
    else if (t->status != ATH_CANCELLED)
      ev_raw(&b, "error", t->error, t->error_len);
    wf_push(w, t, &b);
    if (t->wf->wait_task != NULL) {
      ath_task_release(t->wf->wait_task);
      t->wf->wait_task = NULL;
    }
    if (t->status == ATH_CANCELLED || t->wf->forced)
      nwake = cancel_children(w, t, NULL, now, wake, nwake);
  }
  ath_task_t* p = t->parent;
  if (p == NULL || ATH_IS_TERMINAL(p->status) || p->wf->forced)
    return nwake;
  if (t->status == ATH_FAILED && t->strategy == ATH_STRATEGY_CASCADE && p->status != ATH_COMPENSATING)
    return wf_cascade(w, p, t, now, wake, nwake);
  if (p->wf->wait_task == t && p->wf->where == ATH_WF_PARKED) {
    wf_record(w, p, t, now);
    nwake = wf_resume(w, p, wake, nwake);
  }
  return nwake;
}

/* A segment of t parked (from its outcome o): record what it waits for,
 * or resume it at once when the outcome is already there. */
static int wf_park(ath_world_t* w, ath_task_t* t, ath_outcome_t* o, int64_t now, uint64_t mono,
                   ath_worker_t** wake, int nwake, int* wake_engine) {
  ath_wf_t* wf = t->wf;
  wf->wait_kind = o->park_kind;
  wf->wait_seq = o->park_seq;
  wf->home = o->home; /* its coroutine waits there */
  wf->park_nev = wf->nev;
  ath__store_mark(w, t);
  if (o->park_kind == ATH_PARK_TIMER) {
    if (o->park_at > now) {
      wf->where = ATH_WF_TIMER;
      t->ready_at = o->park_at;
      t->ready_mono = ath__after(mono, o->park_at - now);
      if (ath__heap_push(&w->delayed, t) == 0) {
        w->n_scheduled++;
        *wake_engine |= w->delayed.items[0] == t;
        return nwake;
      }
    }
    ath_buf_t b = {0};
    ev_begin(&b, t, "timer.fired", now);
    ev_int(&b, "seq", o->park_seq);
    wf_push(w, t, &b);
    return wf_resume(w, t, wake, nwake);
  }
  ath_task_t* x = o->park_task;
  o->park_task = NULL;
  if (ATH_IS_TERMINAL(x->status)) {
    wf_record(w, t, x, now);
    ath_task_release(x);
    return wf_resume(w, t, wake, nwake);
  }
  wf->where = ATH_WF_PARKED;
  wf->wait_task = x; /* the outcome's reference */
  return nwake;
}

/* A segment of workflow t was claimed (lock held). */
static void wf_claimed(ath_task_t* t) {
  t->wf->where = ATH_WF_SLOT;
  t->wf->home = NULL;
  t->wf->segs++;
}

/* A due timer of a workflow parked in ctx:sleep (engine tick). */
static int wf_timer_fired(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath_buf_t b = {0};
  ev_begin(&b, t, "timer.fired", ath__wall(w));
  ev_int(&b, "seq", t->wf->wait_seq);
  wf_push(w, t, &b);
  return wf_resume(w, t, wake, nwake);
}

/* The run of a workflow parked between segments outlived its `timeout`
 * (§3: parked time counts): the run fails with ETIMEDOUT like an attempt,
 * so it is re-run, compensated or final by its strategy. (A run that is in
 * a slot is stopped by the slot's own deadline.) */
static int wf_run_timed_out(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
  int64_t now = ath__wall(w);
  int wake_engine = 0; /* the tick re-arms its timer itself */
  unqueue(w, t);
  t->wf->wait_kind = ATH_PARK_NONE;
  set_error(t, ATH_ETIMEDOUT, "the workflow run exceeded its timeout");
  ath_outcome_t o = {.task = t, .status = ATH_FAILED, .err_code = ATH_ETIMEDOUT, .retry_after = -1};
  return attempt_failed(w, t, &o, now, ath__mono(w), wake, nwake, &wake_engine);
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
  ath_task_t* in_table = table_get(w, t->id, t->hash);
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
        if (c->seq <= after || c->parent == NULL ||
            (c->parent != t && strcmp(c->parent->id, t->id) != 0))
          continue;
        if (n == cap) {
          ath_task_t** g = realloc(a, cap * 2 * sizeof(*a));
          if (g == NULL) {
            release_all(a, n);
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
    ath_store_query_t q = {STORED_MASK, NULL, t->id, 0, 0, cap, 1, after};
    stored = malloc((size_t)cap * sizeof(*stored));
    ns = stored != NULL ? stored_tasks(w, &q, stored) : 0;
    ns = ns < 0 ? 0 : ns;
  }
  /* merged in creation order, each once (one may have left RAM meanwhile) */
  ath_task_t** all = malloc(((size_t)n + (size_t)ns + 1) * sizeof(*all));
  if (all == NULL) {
    release_all(ram, (size_t)n);
    release_all(stored, (size_t)ns);
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
static int hold_workflow(ath_world_t* w, ath_task_t* t) {
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

int ath__world_exchange(ath_world_t* w, ath_worker_t* wk, ath_task_t** out,
                        int max, int* stop, ath_waiter_t** inbox, ath_vtimer_t** fired) {
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0, ended = 0, n = 0, wake_engine = 0;
  int64_t now = ath__wall(w);
  uint64_t mono = ath__mono(w);
  ath_queue_t* q = wk->queue;

  uv_mutex_lock(&w->lock);
  if (atomic_load(&wk->lost))
    wk->noutcomes = 0; /* declared lost: its tasks were failed and moved on */
  int requeued_before = w->requeued;
  for (int i = 0; i < wk->noutcomes; i++) {
    ath_outcome_t* o = &wk->outcomes[i];
    ath_task_t* t = o->task;
    q->running--;
    ath_task_t* last = wk->running_tasks[--wk->running];
    wk->running_tasks[t->run_pos] = last;
    last->run_pos = t->run_pos;
    w->n_running--;
    t->wk = NULL;
    ended++;
    if (!w->cfg.no_metrics)
      lat_add(&w->lat_run, (double)(mono - t->start_mono) / 1e6, now);
    if (o->status == ATH_COMPLETED)
      wk->tasks_completed++;
    else if (o->status == ATH_FAILED)
      wk->tasks_failed++;
    if (t->wf != NULL && o->status == ATH_FAILED && o->err_code == ATH_ESHUTDOWN &&
        w->state != ATH_W_STARTED)
      o->status = ATH_PENDING; /* a command refused by the shutdown: not a failure */
    if (o->status == ATH_PENDING && t->wf != NULL && t->wf->forced != 2) {
      /* a workflow segment interrupted by shutdown: the run goes on by
       * replay, in its state (running or compensating) */
      if (o->park_task != NULL)
        ath_task_release(o->park_task);
      w->requeued++;
      if (w->draining && hold_workflow(w, t) == 0)
        continue; /* claimed again, it would only be refused again */
      nwake = wf_resume(w, t, wake, nwake);
      continue;
    }
    if (o->status == ATH_PENDING) { /* interrupted by shutdown: T14 */
      t->attempt--;
      t->ready_at = now;
      t->ready_mono = mono;
      w->requeued++;
      if (make_ready(w, t) == 0)
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
        nwake = finish_task(w, t, ATH_FAILED, now, wake, nwake);
        continue;
      }
      if (o->park_kind != ATH_PARK_NONE && o->status == ATH_RUNNING) {
        if (atomic_load(&t->cancel_ns) != 0) { /* cancelled as it parked */
          if (o->park_task != NULL)
            ath_task_release(o->park_task);
          nwake = finish_task(w, t, ATH_CANCELLED, now, wake, nwake);
          continue;
        }
        nwake = wf_park(w, t, o, now, mono, wake, nwake, &wake_engine);
        continue;
      }
      if (t->status == ATH_COMPENSATING) { /* the compensation segment ended (§9.5) */
        t->err_code = o->err_code;
        nwake = finish_task(w, t, o->err_code == ATH_ECOMPENSATED ? ATH_COMPENSATED : ATH_FAILED,
                            now, wake, nwake);
        continue;
      }
    }
    t->err_code = o->err_code;
    if (o->status == ATH_FAILED)
      nwake = attempt_failed(w, t, o, now, mono, wake, nwake, &wake_engine);
    else
      nwake = finish_task(w, t, o->status, now, wake, nwake);
  }
  wk->noutcomes = 0;
  if (w->state == ATH_W_STOPPING) /* attempts that ended during the shutdown */
    w->drained += ended - (w->requeued - requeued_before);

  if (!wk->stop && (w->state == ATH_W_STARTED || w->draining)) {
    while (n < max) {
      ath_task_t* t = wk->resumes.head != NULL ? wf_pop_home(wk) : ath__queue_pop(q);
      if (t == NULL)
        break;
      int64_t stc = ath__task_limits(t)->schedule_to_close_ms;
      if (stc > 0 && now >= t->scheduled_at + stc) {
        /* expired while waiting: it fails where it is (§6.2) */
        set_error(t, ATH_ETIMEDOUT, "scheduleToClose expired before the task could run");
        nwake = finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED,
                            now, wake, nwake);
        continue;
      }
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
          t->exp_mono = ath__after(mono, ath__task_limits(t)->timeout_ms);
          if (t->exp_idx == UINT32_MAX ? ath__heap_push(&w->expiry, t) == 0 : (ath__heap_fix(&w->expiry, t), 1))
            wake_engine |= w->expiry.items[0] == t;
        }
      }
      if (t->wf != NULL)
        wf_claimed(t);
      t->worker_id = wk->id;
      t->wk = wk;
      ath__store_mark(w, t);
      t->run_pos = wk->running + n;
      wk->running_tasks[t->run_pos] = t;
      if (!w->cfg.no_metrics)
        lat_add(&w->lat_wait, mono > t->ready_mono ? (double)(mono - t->ready_mono) / 1e6 : 0, now);
      out[n++] = t;
    }
    q->running += n;
    wk->running += n;
    w->n_running += n;
  }
  if (wk->resumes.head != NULL && (wk->stop || !home_open(w, wk)))
    nwake = wf_unhome(w, wk, wake, nwake); /* no more segments here */
  wk->wants_work = !wk->stop && wk->running < wk->concurrency;
  *stop = wk->stop && wk->running == 0;
  *inbox = wk->inbox;
  wk->inbox = NULL;
  *fired = wk->fired;
  wk->fired = NULL;
  if (ended && w->cond_waiters > 0)
    uv_cond_broadcast(&w->cond);
  ath_task_t* dead = ended ? ath__world_term_trim(w) : NULL;
  uv_mutex_unlock(&w->lock);
  ath__world_term_free(dead);
  wake_all(wake, nwake);
  if (wake_engine)
    uv_async_send(&w->easync);
  return n;
}

int ath__world_await(ath_world_t* w, ath_task_t* t, ath_slot_t* slot) {
  uv_mutex_lock(&w->lock);
  if (ATH_IS_TERMINAL(t->status)) {
    uv_mutex_unlock(&w->lock);
    return 0;
  }
  ath_waiter_t* wt = calloc(1, sizeof(*wt));
  if (wt == NULL) {
    uv_mutex_unlock(&w->lock);
    return ATH_ENOMEM;
  }
  wt->slot = slot;
  wt->next = t->waiters;
  t->waiters = wt;
  uv_mutex_unlock(&w->lock);
  return 1;
}

/* --------------------------------------------------------------- waiting */

uint64_t ath__world_commit_gen(ath_world_t* w, const ath_task_t* t) {
  if (w->cfg.persistence != ATH_PERSIST_FILE)
    return 0;
  uv_mutex_lock(&w->lock);
  uint64_t gen = t->dirty_gen;
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
    ath__store_wait(w, t->dirty_gen); /* file: the outcome is on disk */
  uv_mutex_unlock(&w->lock);
  uv_cond_destroy(&me.cond);
  return rc;
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

static int add_worker(ath_world_t* w, ath_queue_t* q, int wait, char* err, size_t errlen);

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
      if (wk->queue == q && !wk->stop && wk->state == ATH_WK_RUNNING && wk->running == 0) {
        wk->stop = 1; /* stopping at once; claims nothing more */
        wk->wants_work = 0;
        retire[nretire++] = wk;
      }
    }
  }
  uv_mutex_unlock(&w->lock);
  char err[512];
  int added = 0;
  for (int i = 0; i < add; i++) {
    if (add_worker(w, q, 0, err, sizeof(err)) != 0) {
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

static void scale_cb(uv_timer_t* h) {
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
    wk->wants_work = 0;
    nwake = wf_unhome(w, wk, wake, nwake); /* its cached workflows replay elsewhere */
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
      set_error(t, ATH_EWORKERLOST, msg);
      t->queue->running--;
      w->n_running--;
      t->wk = NULL;
      wk->running--;
      wk->tasks_failed++;
      /* the decision of §7.3, as for any failed attempt */
      for (const char* const* nr = ath__task_limits(t)->non_retryable; nr && *nr; nr++)
        o.final |= strcmp(*nr, "EWORKERLOST") == 0;
      if (atomic_load(&t->cancel_ns) != 0)
        nwake = finish_task(w, t, ATH_CANCELLED, ath__wall(w), wake, nwake);
      else if (o.final || retry_task(w, t, &o, ath__wall(w), ath__mono(w), &wake_engine) != 0)
        nwake = finish_task(w, t, t->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED,
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
  wake_all(wake, nwake);
  if (wake_engine)
    engine_tick(w);
  char err[512];
  for (int i = 0; i < nlost; i++) {
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "worker-%d is lost (no heartbeat for %lld ms); starting a replacement",
              lost[i]->id, (long long)w->cfg.heartbeat_timeout_ms);
    if (add_worker(w, lost[i]->queue, 0, err, sizeof(err)) != 0)
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "could not start a replacement worker: %s", err);
  }
  reap_failed_starts(w);
}

static void monitor_cb(uv_timer_t* h) {
  monitor(h->data);
}

static void stop_engine(ath_world_t* w) {
  uv_mutex_lock(&w->lock);
  w->engine_stop = 1;
  uv_mutex_unlock(&w->lock);
  uv_async_send(&w->easync);
  uv_thread_join(&w->engine_thread);
  uv_loop_close(&w->eloop);
}

/* Starts a worker for `q`. With `wait`, returns once its Lua state is loaded
 * (start_rc reported); without, at once: the worker joins the pool when
 * loaded, and a failed load is reaped by reap_failed_starts. */
static int add_worker(ath_world_t* w, ath_queue_t* q, int wait, char* err, size_t errlen) {
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
    set_err(err, errlen, "cannot start a worker thread: %s", uv_strerror(rc));
    return ATH_ENOMEM;
  }
  uv_mutex_lock(&w->lock);
  w->workers[w->nworkers++] = wk;
  uv_mutex_unlock(&w->lock);
  if (!wait)
    return 0;
  uv_sem_wait(&w->ready);
  if (wk->start_rc != 0) {
    set_err(err, errlen, "%s", wk->start_err);
    return wk->start_rc;
  }
  return 0;
}

int ath_world_start(ath_world_t* w, char* err, size_t errlen) {
  if (w->state == ATH_W_STARTED)
    return 0;
  if (w->state != ATH_W_NEW) {
    set_err(err, errlen, "%s", "world was shut down");
    return ATH_ESHUTDOWN;
  }
  if (ath__runtime_hooks() == NULL) {
    set_err(err, errlen, "%s",
            "no Lua runtime installed: call ath_runtime_install(ath_lua_runtime()) first");
    return ATH_EINVAL;
  }
  int rc = uv_loop_init(&w->eloop);
  if (rc != 0) {
    set_err(err, errlen, "cannot start the engine loop: %s", uv_strerror(rc));
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
  if (rc == 0 && w->cfg.webhook_url != NULL)
    rc = ath__hook_start(w->cfg.webhook_url,
                         w->cfg.webhook_events ? w->cfg.webhook_events : (1u << ATH_EV_COUNT) - 1, w->log,
                         &w->hook, err, errlen);
  for (int i = 0; i < w->nqueues && rc == 0; i++) {
    ath_queue_t* q = w->queues[i];
    int n = i == 0 ? w->cfg.min_workers : q->workers;
    for (int k = 0; k < n && rc == 0; k++)
      rc = add_worker(w, q, 1, err, errlen);
  }
  if (rc == 0) {
    uv_timer_start(&w->prune_timer, prune_cb, 3600000, 3600000);
    if (!w->manual && w->cfg.max_workers > w->cfg.min_workers)
      uv_timer_start(&w->scale_timer, scale_cb, (uint64_t)w->cfg.scale_interval_ms,
                     (uint64_t)w->cfg.scale_interval_ms);
    uv_timer_start(&w->monitor_timer, monitor_cb, (uint64_t)w->cfg.heartbeat_interval_ms,
                   (uint64_t)w->cfg.heartbeat_interval_ms);
    int trc = uv_thread_create(&w->engine_thread, engine_main, w);
    if (trc != 0) {
      set_err(err, errlen, "cannot start the engine thread: %s", uv_strerror(trc));
      rc = ATH_ENOMEM;
    }
  }
  if (rc != 0) {
    stop_workers(w);
    ath__store_stop(w);
    ath__hook_stop(w->hook);
    w->hook = NULL;
    uv_close((uv_handle_t*)&w->scale_timer, NULL);
    uv_close((uv_handle_t*)&w->monitor_timer, NULL);
    uv_close((uv_handle_t*)&w->stimer, NULL);
    uv_close((uv_handle_t*)&w->prune_timer, NULL);
    uv_close((uv_handle_t*)&w->etimer, NULL);
    uv_close((uv_handle_t*)&w->easync, NULL);
    uv_run(&w->eloop, UV_RUN_DEFAULT);
    uv_loop_close(&w->eloop);
    w->state = ATH_W_STOPPED;
    return rc;
  }
  if (w->start_hook != NULL)
    w->start_hook(w);
  uv_mutex_lock(&w->lock);
  w->state = ATH_W_STARTED;
  w->started_at = ath__wall(w);
  w->tput_sec = w->started_at / 1000;
  w->tput_dsec = w->started_at / 100;
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
  w->draining = timeout_ms > 0;
  uint64_t deadline = ath__mono_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
  w->cond_waiters++;
  while (w->n_running > 0 || (w->draining && queued_locked(w) > 0)) {
    uint64_t now = ath__mono_ns();
    if (now >= deadline)
      break;
    uv_cond_timedwait(&w->cond, &w->lock, deadline - now);
  }
  w->draining = 0; /* from here on nothing is claimed */
  for (int i = 0; i < w->nheld; i++) /* queued as at a deadline: the next start replays them */
    if (!ATH_IS_TERMINAL(w->held[i]->status))
      wf_resume(w, w->held[i], NULL, 0);
  w->nheld = 0;
  if (w->n_running > 0) {
    /* Past the deadline: interrupt what still runs; each attempt returns
     * to pending, not counted (T14). */
    for (int i = 0; i < w->nworkers; i++)
      atomic_store(&w->workers[i]->interrupt_all, ATH_ESHUTDOWN);
    uv_mutex_unlock(&w->lock);
    for (int i = 0; i < w->nworkers; i++)
      ath__worker_wake(w->workers[i]);
    uv_mutex_lock(&w->lock);
    while (w->n_running > 0)
      uv_cond_wait(&w->cond, &w->lock);
  }
  w->cond_waiters--;
  w->state = ATH_W_STOPPED;
  uv_cond_broadcast(&w->cond);
  wake_blocked(w, NULL); /* result() waiters get ESHUTDOWN */
  uv_mutex_unlock(&w->lock);
  stop_workers(w);
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
  for (int i = 0; i < w->nworkers; i++)
    ath__worker_free(w->workers[i]);
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
  free(w->workers);
  for (int i = 0; i < w->nretired; i++)
    ath__worker_free(w->retired[i]);
  free(w->retired);
  free(w->held);
  if (w->table != NULL) {
    for (size_t i = 0; i < w->table_cap; i++) {
      ath_task_t* t = w->table[i];
      while (t != NULL) {
        ath_task_t* next = t->hnext;
        for (ath_waiter_t* wt = t->waiters; wt;) {
          ath_waiter_t* n = wt->next;
          free(wt);
          wt = n;
        }
        t->waiters = NULL;
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
  ath__log_close(w->log); /* every thread that logs has been joined */
  ath__strv_free(w->modules);
  ath__strv_free(w->script_args);
  ath__store_free(w);
  uv_mutex_destroy(&w->lock);
  uv_cond_destroy(&w->cond);
  uv_sem_destroy(&w->ready);
  free(w);
}

/* --------------------------------------------------------------- metrics */

static int cmp_float(const void* a, const void* b) {
  float x = *(const float*)a, y = *(const float*)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentiles over the last five minutes of samples. */
static void percentiles(const ath_lat_ring_t* r, int64_t now, double* p50,
                        double* p95, double* p99) {
  static _Thread_local float buf[ATH_LAT_SAMPLES];
  uint32_t n = 0;
  for (uint32_t i = 0; i < r->len; i++)
    if (now - r->at[i] <= 300000)
      buf[n++] = r->ms[i];
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
  m->completed = w->n_completed;
  m->resident = (int64_t)w->ntasks;
  m->failed = w->n_failed;
  m->retried = w->n_retried;
  m->cancelled = w->n_cancelled;
  m->quarantined = w->n_quarantined;
  /* Throughput over windows that end now: the current, partial slot and
   * the whole slots before it (10 tenths of a second, 60 or 3600 seconds),
   * so a window spans at most its length and a burst shows at once. */
  m->per_second = rate_sum(w->tput_ds, 20, w->tput_dsec, now / 100, 10);
  m->per_minute = rate_sum(w->tput, 3600, w->tput_sec, now / 1000, 60);
  m->per_hour = rate_sum(w->tput, 3600, w->tput_sec, now / 1000, 3600);
  percentiles(&w->lat_wait, now, &m->wait_p50, &m->wait_p95, &m->wait_p99);
  percentiles(&w->lat_run, now, &m->run_p50, &m->run_p95, &m->run_p99);
  uv_mutex_unlock(&w->lock);
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

void ath__world_unawait(ath_world_t* w, ath_task_t* t, ath_slot_t* slot) {
  uv_mutex_lock(&w->lock);
  for (ath_waiter_t** p = &t->waiters; *p; p = &(*p)->next) {
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

/* ------------------------------------------- cancel, dead letters, queries */

int ath_world_cancel(ath_world_t* w, ath_task_t* t) {
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  int64_t now = ath__wall(w);
  uv_mutex_lock(&w->lock);
  int accepted;
  nwake = cancel_locked(w, t, now, wake, nwake, &accepted);
  if (accepted)
    ath__store_wait(w, w->gen); /* file: the cancel is durable */
  ath_task_t* dead = ath__world_term_trim(w);
  uv_mutex_unlock(&w->lock);
  ath__world_term_free(dead);
  wake_all(wake, nwake);
  return accepted;
}

int ath_world_requeue(ath_world_t* w, ath_task_t* t) {
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
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
  if (make_ready(w, t) != 0) {
    set_error(t, ATH_ENOMEM, "out of memory requeueing");
    finish_task(w, t, ATH_QUARANTINED, ath__wall(w), wake, 0);
    uv_mutex_unlock(&w->lock);
    return ATH_ENOMEM;
  }
  nwake = pick_sleepers(w, t->queue, 1, wake, MAX_WORKERS);
  ath__store_wait(w, t->dirty_gen);
  uv_mutex_unlock(&w->lock);
  wake_all(wake, nwake);
  return 0;
}

int ath_world_purge(ath_world_t* w, ath_task_t* t) {
  uv_mutex_lock(&w->lock);
  if (t->status != ATH_QUARANTINED) {
    uv_mutex_unlock(&w->lock);
    return ATH_EINVAL;
  }
  table_remove(w, t);
  ath__store_wait(w, t->dirty_gen);
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
  ath_task_t** all = malloc((w->ntasks ? w->ntasks : 1) * sizeof(*all));
  if (all == NULL) {
    uv_mutex_unlock(&w->lock);
    return ATH_ENOMEM;
  }
  size_t n = 0;
  for (size_t i = 0; i < w->table_cap; i++) {
    for (ath_task_t* t = w->table[i]; t; t = t->hnext) {
      if (f->parent_id && (t->parent == NULL || strcmp(t->parent->id, f->parent_id) != 0))
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
  if (w->reads != NULL && mask != 0) {
    /* One read per status: each walks the (status, created_at) index in
     * order and stops after `want` rows, where one read of several
     * statuses would sort every matching row. */
    int64_t rc = 0;
    if ((stored = malloc(3 * want * sizeof(*stored))) == NULL) /* STORED_MASK: 3 statuses */
      rc = ATH_ENOMEM;
    for (int st = ATH_COMPLETED; st < 32 && rc == 0; st++) {
      if (!(mask & (1u << st)))
        continue;
      ath_store_query_t q = {1u << st, f->name, f->parent_id, f->since, f->until, (int64_t)want, 0, 0};
      int64_t got = stored_tasks(w, &q, stored + ns);
      if (got < 0)
        rc = got;
      else
        ns += got;
    }
    if (rc != 0) {
      for (size_t i = 0; i < n; i++)
        ath_task_release(all[i]);
      free(all);
      release_all(stored, (size_t)ns);
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
  if (json == NULL || copy != NULL) { /* out of memory: keep the old details */
    free(t->hb);
    t->hb = copy;
    t->hb_len = copy ? len : 0;
  }
  t->last_hb = now;
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
  t->parent = parent;
  parent = NULL;
  t->hash = ath__hash_str(t->id);
  t->heap_idx = t->exp_idx = UINT32_MAX;
  t->input = ath__memdup(r->input, r->input_len);
  t->input_len = r->input_len;
  t->result = ath__memdup(r->result, r->result_len);
  t->result_len = r->result ? r->result_len : 0;
  t->error = ath__memdup(r->error, r->error_len);
  t->error_len = r->error ? r->error_len : 0;
  t->hb = ath__memdup(r->hb, r->hb_len);
  t->hb_len = r->hb ? r->hb_len : 0;
  if (t->input == NULL || (r->result && !t->result) || (r->error && !t->error) || (r->hb && !t->hb))
    goto nomem;
  uv_mutex_lock(&w->lock);
  t->def = recovered_def(w, r->name);
  ath_queue_t* q = find_queue(w, r->queue);
  uv_mutex_unlock(&w->lock);
  if (t->def == NULL)
    goto nomem;
  if (t->def->a.workflow && !t->def->ghost) {
    if ((t->wf = calloc(1, sizeof(*t->wf))) == NULL ||
        (r->history && ath__wf_load(t->wf, r->history, r->history_len) != 0))
      goto nomem;
  }
  /* limits that do not parse (written by a newer build?) leave the definition's */
  if (r->call != NULL && !t->def->ghost &&
      ath__call_new(&t->def->a, r->call, r->call_len, &t->call) == ATH_ENOMEM)
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
  t->last_hb = r->last_hb;
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
  table_put(w, t);
  int64_t now = ath__wall(w);
  uint64_t mono = ath__mono(w);
  int rc = 0;
  int64_t stc = ath__task_limits(t)->schedule_to_close_ms;
  if (stc && !ATH_IS_TERMINAL(t->status)) {
    int64_t left = t->scheduled_at + stc - now;
    t->exp_mono = ath__after(mono, left);
    ath__heap_push(&w->expiry, t);
  }
  if (ATH_IS_TERMINAL(t->status)) {
    w->n_recovered[3]++;
  } else if (t->def->ghost) {
    set_error(t, ATH_ENOTFOUND, "no activity with this name is registered any more");
    finish_task(w, t, ATH_FAILED, now, NULL, 0);
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
    rc = make_ready(w, t);
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

/* ------------------------------------------------------------ manual clock */

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
  ath_task_t* e = ath__heap_peek(&w->expiry);
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
    nwake = add_wake(wake, nwake, wk);
  }
  return nwake;
}

/* Waits until no worker has work from this step: each is asleep in its
 * loop with nothing pending, or has been running the same Lua code for two
 * hook intervals (code that does not yield cannot be waited for). */
static void settle(ath_world_t* w) {
  unsigned ticks[MAX_WORKERS];
  int quiet_rounds = 0;
  for (int i = 0; i < w->nworkers && i < MAX_WORKERS; i++)
    ticks[i] = atomic_load(&w->workers[i]->ticks);
  while (quiet_rounds < 2) {
    int quiet = 1;
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
    wake_all(wake, nwake);
    engine_tick(w);
    ath__sched_tick(w);
    settle(w);
    if (next > target)
      break;
  }
  return 0;
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
    set_err(err, errlen, "%s", "invalid port (0-65535)");
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
    set_err(err, errlen, "%s", st == ATH_W_NEW ? "serve before start()" : st != ATH_W_STARTED ? "world is shut down" : "another serve() is in progress");
    return st == ATH_W_NEW || st == ATH_W_STARTED ? ATH_EINVAL : ATH_ESHUTDOWN;
  }
  w->serve_req = &req;
  uv_mutex_unlock(&w->lock);
  uv_async_send(&w->easync);
  uv_sem_wait(&req.done);
  uv_sem_destroy(&req.done);
  if (req.rc != 0) {
    set_err(err, errlen, "%s", req.err);
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
