/* A host's own queue provider (athena.h "Queue providers";
 * docs/c-api.md): a shared queue kept in this process's memory, outside
 * any world, so two worlds on it are two nodes of one cluster. Tasks one
 * node submits run on the other, each attempt once; results, lookups and
 * cancels cross nodes; a node that dies has its tasks rescued by the
 * other. A provider missing a required operation, or used without a
 * location, is refused with a clear error, and the optional groups it
 * lacks (workflows, schedules, an outbox for webhooks) are refused where
 * they are asked for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include "athena.h"
#include "store_fixture.h"
#include "task.h"

/* ------------------------------------------------------- the tiny queue */

#define MQ_ROWS 1024
#define MQ_NODES 32

typedef struct {
  int64_t seq, lease;
  char *id, *name, *queue, *input, *parent_id, *result, *error, *hb, *call;
  int kind, status, priority, attempt, max_attempts, strategy, rescues, cancel;
  int64_t created_at, ready_at, started_at, completed_at, last_hb, close_by;
  int runs; /* attempts claimed, by anyone */
  int64_t ran_by[8]; /* the incarnation that claimed attempt i + 1 */
} mq_row_t;

typedef struct {
  char node_id[64];
  int64_t inc, expires_at;
} mq_node_t;

typedef struct {
  uv_mutex_t lock;
  uv_cond_t changed; /* broadcast after every cycle and cancel */
  mq_row_t rows[MQ_ROWS];
  int nrows;
  mq_node_t nodes[MQ_NODES];
  int nnodes;
  int64_t next_inc;
  const void* leader; /* the connection holding the leader lock */
  int opens, closes, cycles, stages, rescues;
} mq_t;

typedef struct {
  ath_queue_conn_t base;
  mq_t* q;
  char err[128];
} mq_conn_t;

static mq_t mq;

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char* sdup(const char* s) {
  return s != NULL ? strdup(s) : NULL;
}

static void row_clear(mq_row_t* r) {
  free(r->id);
  free(r->name);
  free(r->queue);
  free(r->input);
  free(r->parent_id);
  free(r->result);
  free(r->error);
  free(r->hb);
  free(r->call);
  memset(r, 0, sizeof(*r));
}

static void mq_wipe(void) {
  for (int i = 0; i < mq.nrows; i++)
    row_clear(&mq.rows[i]);
  mq.nrows = mq.nnodes = 0;
  mq.next_inc = 0;
  mq.leader = NULL;
  mq.opens = mq.closes = mq.cycles = mq.stages = mq.rescues = 0;
}

static mq_row_t* by_seq(int64_t seq) {
  return seq >= 1 && seq <= mq.nrows ? &mq.rows[seq - 1] : NULL;
}

static mq_row_t* by_id(const char* id) {
  for (int i = mq.nrows - 1; i >= 0; i--)
    if (strcmp(mq.rows[i].id, id) == 0)
      return &mq.rows[i];
  return NULL;
}

static mq_node_t* node_of(int64_t inc) {
  for (int i = 0; i < mq.nnodes; i++)
    if (mq.nodes[i].inc == inc)
      return &mq.nodes[i];
  return NULL;
}

static int alive(int64_t inc, int64_t now) {
  mq_node_t* n = node_of(inc);
  return n != NULL && n->expires_at > now;
}

/* The row as the engine reads it: copies it frees with tasks_free. */
static void row_out(const mq_row_t* r, ath_queue_task_t* o) {
  memset(o, 0, sizeof(*o));
  o->seq = r->seq;
  o->id = sdup(r->id);
  o->name = sdup(r->name);
  o->queue = sdup(r->queue);
  o->kind = r->kind;
  o->status = r->status;
  o->priority = r->priority;
  o->attempt = r->attempt;
  o->max_attempts = r->max_attempts;
  o->strategy = r->strategy;
  o->rescues = r->rescues;
  o->created_at = r->created_at;
  o->ready_at = r->ready_at;
  o->scheduled_at = r->ready_at;
  o->started_at = r->started_at ? r->started_at : -1;
  o->close_by = r->close_by ? r->close_by : -1;
  o->cancel_at = -1;
  o->last_hb = r->last_hb ? r->last_hb : -1;
  o->completed_at = r->completed_at ? r->completed_at : -1;
  o->parent_id = sdup(r->parent_id);
  o->input = sdup(r->input);
  o->error = sdup(r->error);
  o->hb = sdup(r->hb);
  o->result = sdup(r->result);
  o->call = sdup(r->call);
  o->wait_status = -1;
}

static int tasks_push(ath_queue_tasks_t* t, const mq_row_t* r) {
  ath_queue_task_t* a = realloc(t->rows, (t->n + 1) * sizeof(*a));
  if (a == NULL)
    return ATH_ENOMEM;
  t->rows = a;
  row_out(r, &t->rows[t->n++]);
  return 0;
}

static void mq_tasks_free(ath_queue_tasks_t* t) {
  for (size_t i = 0; i < t->n; i++) {
    ath_queue_task_t* o = &t->rows[i];
    free((char*)o->id);
    free((char*)o->name);
    free((char*)o->queue);
    free((char*)o->parent_id);
    free((char*)o->input);
    free((char*)o->error);
    free((char*)o->hb);
    free((char*)o->result);
    free((char*)o->call);
  }
  free(t->rows);
  memset(t, 0, sizeof(*t));
}

static void mq_inserted_clear(ath_queue_inserted_t* r, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(r[i].existing_name);
    r[i].existing_name = NULL;
  }
}

#define Q(c) (((mq_conn_t*)(c))->q)
#define LOCK(c) uv_mutex_lock(&Q(c)->lock)
#define UNLOCK(c) uv_mutex_unlock(&Q(c)->lock)

static const ath_queue_provider_t* mq_provider_ptr;

static int mq_open(void* ud, const char* location, const char* schema, int notify, ath_queue_conn_t** out,
                   char* err, size_t errlen) {
  (void)schema;
  (void)notify;
  *out = NULL;
  if (strcmp(location, "mem:shared") != 0) {
    snprintf(err, errlen, "no queue at %s", location);
    return ATH_ESTORE;
  }
  mq_conn_t* c = calloc(1, sizeof(*c));
  if (c == NULL)
    return ATH_ENOMEM;
  c->base.provider = mq_provider_ptr;
  c->q = ud;
  uv_mutex_lock(&c->q->lock);
  c->q->opens++;
  uv_mutex_unlock(&c->q->lock);
  *out = &c->base;
  return 0;
}

static int mq_reset(ath_queue_conn_t* c) {
  (void)c;
  return 0;
}

static void mq_close(ath_queue_conn_t* c) {
  LOCK(c);
  Q(c)->closes++;
  if (Q(c)->leader == c)
    Q(c)->leader = NULL;
  UNLOCK(c);
  free(c);
}

static const char* mq_errmsg(const ath_queue_conn_t* c) {
  return ((const mq_conn_t*)c)->err;
}

static const char* mq_sqlstate(const ath_queue_conn_t* c) {
  (void)c;
  return "";
}

static int mq_node_register(ath_queue_conn_t* c, const ath_queue_node_t* n, uint64_t now_ns,
                            ath_queue_lease_t* lease) {
  LOCK(c);
  int rc = ATH_ENOMEM;
  if (mq.nnodes < MQ_NODES) {
    mq_node_t* m = &Q(c)->nodes[Q(c)->nnodes++];
    snprintf(m->node_id, sizeof(m->node_id), "%s", n->node_id ? n->node_id : "");
    m->inc = ++Q(c)->next_inc;
    m->expires_at = wall_ms() + n->ttl_ms;
    memset(lease, 0, sizeof(*lease));
    lease->incarnation = m->inc;
    lease->ttl_ms = n->ttl_ms;
    lease->interval_ms = n->interval_ms;
    lease->renewed_ns = now_ns;
    lease->expires_at = m->expires_at;
    rc = 0;
  }
  UNLOCK(c);
  return rc;
}

static int mq_node_renew(ath_queue_conn_t* c, ath_queue_lease_t* lease, uint64_t now_ns, const char* metrics) {
  (void)metrics;
  LOCK(c);
  int64_t now = wall_ms();
  mq_node_t* m = node_of(lease->incarnation);
  int rc = 0;
  if (m == NULL || m->expires_at <= now) {
    lease->lost = 1;
    rc = ATH_EWORKERLOST;
  } else {
    m->expires_at = now + lease->ttl_ms;
    lease->expires_at = m->expires_at;
    lease->renewed_ns = now_ns;
  }
  UNLOCK(c);
  return rc;
}

static int mq_node_release(ath_queue_conn_t* c, ath_queue_lease_t* lease) {
  LOCK(c);
  mq_node_t* m = node_of(lease->incarnation);
  if (m != NULL)
    m->expires_at = wall_ms();
  UNLOCK(c);
  return 0;
}

/* A row this lease holds, at this attempt, still running: the fence. */
static mq_row_t* fenced(int64_t seq, int64_t lease, int attempt) {
  mq_row_t* r = by_seq(seq);
  return r != NULL && r->lease == lease && r->attempt == attempt && r->status == ATH_RUNNING ? r : NULL;
}

static void apply_outcome(mq_row_t* r, const ath_queue_outcome_t* o, int64_t now) {
  r->lease = 0;
  r->status = o->status;
  if (o->error != NULL) {
    free(r->error);
    r->error = strdup(o->error);
  }
  if (ATH_IS_TERMINAL(o->status)) {
    free(r->result);
    r->result = sdup(o->result);
    r->completed_at = now;
  } else if (o->status == ATH_PENDING) { /* handed back unrun: the attempt does not count */
    r->attempt--;
    r->ready_at = now;
  } else {
    r->ready_at = now + o->delay_ms;
  }
}

static int insert_row(const ath_queue_insert_t* in, ath_queue_inserted_t* out, int64_t now) {
  mq_row_t* old = by_id(in->id);
  memset(out, 0, sizeof(*out));
  if (old != NULL) {
    out->seq = old->seq;
    out->created_at = old->created_at;
    out->existing_name = strdup(old->name);
    return 0;
  }
  if (mq.nrows == MQ_ROWS)
    return ATH_ENOMEM;
  mq_row_t* r = &mq.rows[mq.nrows++];
  memset(r, 0, sizeof(*r));
  r->seq = mq.nrows;
  r->id = strdup(in->id);
  r->name = strdup(in->name);
  r->queue = strdup(in->queue);
  r->input = sdup(in->input);
  r->parent_id = sdup(in->parent_id);
  r->call = sdup(in->call);
  r->kind = in->kind;
  r->priority = in->priority;
  r->max_attempts = in->max_attempts;
  r->strategy = in->strategy;
  r->created_at = now;
  r->status = in->delay_ms > 0 ? ATH_SCHEDULED : ATH_PENDING;
  r->ready_at = now + (in->delay_ms > 0 ? in->delay_ms : 0);
  r->close_by = in->close_after_ms > 0 ? now + in->close_after_ms : 0;
  out->seq = r->seq;
  out->created = 1;
  out->created_at = now;
  return 0;
}

/* The next claimable row of `queue`: unleased, unfinished, due; highest
 * priority, then ready_at, then seq. */
static mq_row_t* next_ready(const char* queue, int64_t now) {
  mq_row_t* best = NULL;
  for (int i = 0; i < mq.nrows; i++) {
    mq_row_t* r = &mq.rows[i];
    if (r->lease != 0 || ATH_IS_TERMINAL(r->status) || r->ready_at > now || strcmp(r->queue, queue) != 0)
      continue;
    if (best == NULL || r->priority > best->priority ||
        (r->priority == best->priority && r->ready_at < best->ready_at))
      best = r;
  }
  return best;
}

static int mq_cycle(ath_queue_conn_t* c, ath_queue_cycle_t* x) {
  if (x->n_appends || x->n_parks || x->n_requeues || x->n_kids || x->n_hooks) {
    snprintf(((mq_conn_t*)c)->err, sizeof(((mq_conn_t*)c)->err), "%s", "no workflows or outbox here");
    return ATH_ENOSYS;
  }
  LOCK(c);
  int64_t now = wall_ms();
  int rc = 0;
  Q(c)->cycles++;
  for (size_t i = 0; i < x->n_beats; i++) {
    mq_row_t* r = fenced(x->beats[i].seq, x->lease, x->beats[i].attempt);
    x->beat_applied[i] = r != NULL;
    if (r != NULL) {
      free(r->hb);
      r->hb = sdup(x->beats[i].details);
      r->last_hb = x->beats[i].at;
    }
  }
  for (size_t i = 0; rc == 0 && i < x->n_inserts; i++)
    rc = insert_row(&x->inserts[i], &x->inserted[i], now);
  for (size_t i = 0; rc == 0 && i < x->n_outcomes; i++) {
    mq_row_t* r = fenced(x->outcomes[i].seq, x->lease, x->outcomes[i].attempt);
    x->applied[i] = r != NULL;
    if (r != NULL)
      apply_outcome(r, &x->outcomes[i], now);
  }
  x->committed = rc == 0;
  uv_cond_broadcast(&Q(c)->changed);
  /* an expired incarnation claims nothing, as PostgreSQL's claim refuses
   * it (docs/backend-postgres.md): what it took would only be rescued */
  int live = alive(x->lease, now);
  for (size_t k = 0; rc == 0 && k < x->n_claims; k++) {
    const ath_queue_claim_t* cl = &x->claims[k];
    memset(cl->out, 0, sizeof(*cl->out));
    mq_row_t* r;
    while (rc == 0 && live && (int)cl->out->n < cl->n && (r = next_ready(cl->queue, now)) != NULL) {
      r->lease = x->lease;
      r->attempt++;
      r->status = ATH_RUNNING;
      r->started_at = now;
      if (r->runs < 8)
        r->ran_by[r->runs] = x->lease;
      r->runs++;
      rc = tasks_push(cl->out, r);
    }
  }
  UNLOCK(c);
  return rc;
}

/* Due rows are claimable by their ready_at already: nothing to move. */
static int mq_stage(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int64_t late_ms, int limit, int* staged) {
  (void)seqs;
  (void)n;
  (void)late_ms;
  (void)limit;
  LOCK(c);
  Q(c)->stages++;
  UNLOCK(c);
  if (staged != NULL)
    *staged = 0;
  return 0;
}

/* Rows leased by incarnations that match `pick` pass to `to`. */
static int pass_leases(int64_t to, int (*pick)(const mq_row_t*, const void*), const void* arg,
                       ath_queue_tasks_t* out) {
  memset(out, 0, sizeof(*out));
  int rc = 0;
  for (int i = 0; rc == 0 && i < mq.nrows; i++) {
    mq_row_t* r = &mq.rows[i];
    if (r->lease == 0 || ATH_IS_TERMINAL(r->status) || !pick(r, arg))
      continue;
    if (r->lease != to)
      r->rescues++;
    r->lease = to;
    rc = tasks_push(out, r);
  }
  return rc;
}

static int expired_or(const mq_row_t* r, const void* arg) {
  int64_t leader = *(const int64_t*)arg;
  return r->lease == leader || !alive(r->lease, wall_ms());
}

static int mq_rescue(ath_queue_conn_t* c, int64_t leader, int limit, int64_t grace_ms, ath_queue_tasks_t* out) {
  (void)limit;
  (void)grace_ms;
  LOCK(c);
  Q(c)->rescues++;
  int rc = pass_leases(leader, expired_or, &leader, out);
  UNLOCK(c);
  return rc;
}

typedef struct {
  const char* node_id;
  int64_t inc;
} same_node_t;

static int earlier_of(const mq_row_t* r, const void* arg) {
  const same_node_t* s = arg;
  mq_node_t* n = node_of(r->lease);
  return n != NULL && n->inc != s->inc && strcmp(n->node_id, s->node_id) == 0;
}

static int mq_take_over(ath_queue_conn_t* c, const char* node_id, int64_t incarnation, ath_queue_tasks_t* out) {
  LOCK(c);
  int64_t now = wall_ms();
  for (int i = 0; i < Q(c)->nnodes; i++)
    if (Q(c)->nodes[i].inc != incarnation && strcmp(Q(c)->nodes[i].node_id, node_id) == 0 &&
        Q(c)->nodes[i].expires_at > now)
      Q(c)->nodes[i].expires_at = now;
  same_node_t s = {node_id, incarnation};
  int rc = pass_leases(incarnation, earlier_of, &s, out);
  UNLOCK(c);
  return rc;
}

static int mq_leased(ath_queue_conn_t* c, int64_t lease, ath_queue_tasks_t* out) {
  LOCK(c);
  memset(out, 0, sizeof(*out));
  int rc = 0;
  for (int i = 0; rc == 0 && i < mq.nrows; i++)
    if (mq.rows[i].lease == lease && !ATH_IS_TERMINAL(mq.rows[i].status))
      rc = tasks_push(out, &mq.rows[i]);
  UNLOCK(c);
  return rc;
}

static int mq_leader_try(ath_queue_conn_t* c, int* held) {
  LOCK(c);
  if (Q(c)->leader == NULL)
    Q(c)->leader = c;
  *held = Q(c)->leader == c;
  UNLOCK(c);
  return 0;
}

static int mq_now(ath_queue_conn_t* c, int64_t* now) {
  (void)c;
  *now = wall_ms();
  return 0;
}

static int mq_read(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int ended_only, ath_queue_tasks_t* out) {
  LOCK(c);
  memset(out, 0, sizeof(*out));
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    mq_row_t* r = by_seq(seqs[i]);
    if (r != NULL && (!ended_only || ATH_IS_TERMINAL(r->status)))
      rc = tasks_push(out, r);
  }
  UNLOCK(c);
  return rc;
}

static int mq_get(ath_queue_conn_t* c, const char* id, ath_queue_tasks_t* out) {
  LOCK(c);
  memset(out, 0, sizeof(*out));
  mq_row_t* r = by_id(id);
  int rc = r != NULL ? tasks_push(out, r) : 0;
  UNLOCK(c);
  return rc;
}

static int mq_cancel(ath_queue_conn_t* c, int64_t seq, int* how) {
  LOCK(c);
  mq_row_t* r = by_seq(seq);
  *how = 0;
  if (r != NULL && !ATH_IS_TERMINAL(r->status)) {
    if (r->lease == 0) {
      r->status = ATH_CANCELLED;
      r->completed_at = wall_ms();
      *how = 1;
    } else {
      r->cancel = 1;
      *how = 2;
    }
  }
  uv_cond_broadcast(&Q(c)->changed);
  UNLOCK(c);
  return 0;
}

static int mq_cancelled(ath_queue_conn_t* c, int64_t lease, int64_t** seqs, size_t* n) {
  LOCK(c);
  *seqs = NULL;
  *n = 0;
  int rc = 0;
  for (int i = 0; rc == 0 && i < mq.nrows; i++) {
    mq_row_t* r = &mq.rows[i];
    if (r->lease != lease || !r->cancel || ATH_IS_TERMINAL(r->status))
      continue;
    int64_t* a = realloc(*seqs, (*n + 1) * sizeof(*a));
    if (a == NULL) {
      rc = ATH_ENOMEM;
      break;
    }
    *seqs = a;
    a[(*n)++] = r->seq;
  }
  UNLOCK(c);
  return rc;
}

/* The required operations only: no notifications (poll only), workflows,
 * schedules, outbox, cluster views or dead-letter operations. */
static ath_queue_provider_t mq_provider(void) {
  ath_queue_provider_t p;
  memset(&p, 0, sizeof(p));
  p.size = sizeof(p);
  p.name = "memq";
  p.ud = &mq;
  p.open = mq_open;
  p.reset = mq_reset;
  p.close = mq_close;
  p.errmsg = mq_errmsg;
  p.sqlstate = mq_sqlstate;
  p.node_register = mq_node_register;
  p.node_renew = mq_node_renew;
  p.node_release = mq_node_release;
  p.cycle = mq_cycle;
  p.stage = mq_stage;
  p.rescue = mq_rescue;
  p.take_over = mq_take_over;
  p.leased = mq_leased;
  p.leader_try = mq_leader_try;
  p.now = mq_now;
  p.read = mq_read;
  p.get = mq_get;
  p.cancel = mq_cancel;
  p.cancelled = mq_cancelled;
  p.tasks_free = mq_tasks_free;
  p.inserted_clear = mq_inserted_clear;
  return p;
}

/* ---------------------------------------------------------------- worlds */

static store_fixture_t fx;

static const char* jobs_lua =
  "local athena = require 'athena'\n"
  "athena.activity('echo', function(ctx, input) return input end)\n"
  "athena.activity('hang', function(ctx, input) while true do ctx:heartbeat() athena.sleep(10) end end)\n"
  "athena.workflow('flow', function(ctx, input) return input end)\n";

typedef struct {
  const char* node;
  int workers;
  const char* webhook_url;
} node_opts_t;

static int open_node(const ath_queue_provider_t* p, const char* location, const node_opts_t* o,
                     ath_world_t** out, char* err, size_t errlen) {
  const char* modules[] = {fx.module, NULL};
  char path[600];
  snprintf(path, sizeof(path), "%s-%s", fx.store_path, o->node);
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  cfg.min_workers = cfg.max_workers = 1; /* the default queue's, idle */
  cfg.persistence = ATH_PERSIST_HYBRID;
  cfg.persistence_path = path;
  cfg.modules = modules;
  cfg.lua_path = fx.lua_path;
  cfg.log_file = fx.log_path;
  cfg.queue = p;
  cfg.backend_url = location;
  cfg.node_id = o->node;
  cfg.poll_interval_ms = 20;
  cfg.heartbeat_interval_ms = 100;
  cfg.heartbeat_timeout_ms = 1500;
  cfg.webhook_url = o->webhook_url;
  ath_world_t* w = NULL;
  int rc = ath_world_new(&cfg, &w, err, errlen);
  if (rc == 0) /* the activities' queue: a node with 0 workers there only submits */
    rc = ath_world_add_queue(w, "work", o->workers, 2);
  const char* names[] = {"echo", "hang", "flow"};
  for (int i = 0; rc == 0 && i < 3; i++) {
    ath_activity_t a;
    ath_activity_init(&a, names[i]);
    a.task_queue = "work";
    a.workflow = i == 2;
    a.has_retry = 1;
    a.max_attempts = 2;
    a.initial_interval_ms = 10;
    rc = ath_world_register(w, &a);
  }
  return store_fixture_start(w, rc, out, err, errlen);
}

static int exec_one(ath_world_t* w, const char* name, const char* json, const char* id, int64_t delay_ms,
                    ath_task_t** t, char* err, size_t errlen) {
  size_t len = strlen(json);
  char* p = store_fixture_dup(json, len);
  ath_exec_opts_t o = {0};
  o.id = id;
  o.delay_ms = delay_ms;
  return ath_world_execute(w, name, 1, &p, &len, NULL, &o, t, err, errlen);
}

static void close_node(ath_world_t* w) {
  ASSERT_OK(ath_world_shutdown(w, 5000, NULL, NULL, NULL));
  ath_world_free(w);
}

/* Waits (on the queue's condition, 20 s at most) until row `id` exists
 * and was claimed at least `runs` times; returns it, or NULL. */
static mq_row_t* wait_row(const char* id, int runs) {
  uint64_t deadline = uv_hrtime() + 20000000000u;
  uv_mutex_lock(&mq.lock);
  mq_row_t* r;
  while (((r = by_id(id)) == NULL || r->runs < runs) && uv_hrtime() < deadline)
    (void)uv_cond_timedwait(&mq.changed, &mq.lock, 100000000u);
  uv_mutex_unlock(&mq.lock);
  return r != NULL && r->runs >= runs ? r : NULL;
}

static void suite_setup(const char* tag) {
  static int inited;
  if (!inited) {
    uv_mutex_init(&mq.lock);
    uv_cond_init(&mq.changed);
    inited = 1;
  }
  store_fixture_setup(&fx, tag, "qpjobs", jobs_lua);
  mq_wipe();
}

static void suite_teardown(void) {
  uv_mutex_lock(&mq.lock);
  mq_wipe();
  uv_mutex_unlock(&mq.lock);
  store_fixture_teardown(&fx);
}

#define NTASKS 200

/* Node "a" has no workers: what it submits runs on node "b", through the
 * host's provider alone (the engine reaches no other backend). Every task
 * runs once, on b; a sees each result; b finds a's task by id; a delayed
 * task that nobody leases is cancelled from b at once, and a sees it. */
TEST_IMPL(queue_provider_shared) {
  suite_setup("qprov");
  ath_queue_provider_t p = mq_provider();
  mq_provider_ptr = &p;
  char err[512];
  ath_world_t *a, *b;
  node_opts_t oa = {"a", 0, NULL}, ob = {"b", 2, NULL};
  ASSERT_OK(open_node(&p, "mem:shared", &oa, &a, err, sizeof(err)));
  ASSERT_OK(open_node(&p, "mem:shared", &ob, &b, err, sizeof(err)));
  ath_task_t* t[NTASKS];
  for (int i = 0; i < NTASKS; i++) {
    char json[32], id[32];
    snprintf(json, sizeof(json), "{\"n\":%d}", i);
    snprintf(id, sizeof(id), "t-%d", i);
    ASSERT_OK(exec_one(a, "echo", json, id, 0, &t[i], err, sizeof(err)));
  }
  int64_t b_inc = 0;
  for (int i = 0; i < NTASKS; i++) {
    ASSERT_OK(ath_world_wait(a, t[i], 20000));
    ath_task_info_t info;
    ASSERT_OK(ath_task_snapshot(a, t[i], &info));
    ASSERT_EQ(ATH_COMPLETED, info.status);
    char json[32], id[32];
    snprintf(json, sizeof(json), "{\"n\":%d}", i);
    snprintf(id, sizeof(id), "t-%d", i);
    ASSERT_STR_EQ(json, info.result);
    ath_task_snapshot_free(&info);
    mq_row_t* r = wait_row(id, 1);
    ASSERT(r != NULL);
    ASSERT_EQ(1, r->runs); /* each attempt once, and no second attempt */
    uv_mutex_lock(&mq.lock);
    mq_node_t* n = node_of(r->ran_by[0]);
    ASSERT(n != NULL);
    ASSERT_STR_EQ("b", n->node_id);
    uv_mutex_unlock(&mq.lock);
    b_inc = r->ran_by[0];
    ath_task_release(t[i]);
  }
  ASSERT(b_inc > 0);
  /* a lookup across nodes */
  ath_task_t* found;
  ASSERT_OK(ath_world_find(b, "t-7", &found));
  ath_task_info_t info;
  ASSERT_OK(ath_task_snapshot(b, found, &info));
  ASSERT_EQ(ATH_COMPLETED, info.status);
  ASSERT_STR_EQ("{\"n\":7}", info.result);
  ath_task_snapshot_free(&info);
  ath_task_release(found);
  /* a cancel across nodes: nobody leases a task due in an hour */
  ath_task_t* later;
  ASSERT_OK(exec_one(a, "echo", "1", "later", 3600000, &later, err, sizeof(err)));
  ASSERT(wait_row("later", 0) != NULL); /* a's loop inserted it */
  ath_task_t* there = NULL;
  ASSERT_OK(ath_world_find(b, "later", &there));
  ASSERT_EQ(1, ath_world_cancel(b, there));
  ASSERT_OK(ath_world_wait(a, later, 20000));
  ASSERT_EQ(ATH_CANCELLED, ath_task_status(a, later));
  ath_task_release(there);
  ath_task_release(later);
  uv_mutex_lock(&mq.lock);
  int cycles = mq.cycles, rescues = mq.rescues;
  uv_mutex_unlock(&mq.lock);
  ASSERT_GT(cycles, 0);
  ASSERT_GT(rescues, 0); /* the leader's pass runs on the provider too */
  close_node(a);
  close_node(b);
  ASSERT_EQ(mq.opens, mq.closes);
  suite_teardown();
  return 0;
}

/* Node "b" holds a running task when its lease expires (as when a host
 * stops answering: here the provider expires its incarnation, and b's
 * next renewal is refused). Node "c", starting, becomes the leader (b's
 * leader connection gives the lock up only when closed, so c waits for
 * b's own leader pass... either node's leader rescues it): the task is
 * rescued with EWORKERLOST and retried under another incarnation. */
TEST_IMPL(queue_provider_rescue) {
  suite_setup("qprov-rescue");
  ath_queue_provider_t p = mq_provider();
  mq_provider_ptr = &p;
  char err[512];
  ath_world_t *b, *c;
  node_opts_t ob = {"b", 1, NULL}, oc = {"c", 1, NULL};
  ASSERT_OK(open_node(&p, "mem:shared", &ob, &b, err, sizeof(err)));
  ath_task_t* t;
  ASSERT_OK(exec_one(b, "hang", "1", "stuck", 0, &t, err, sizeof(err)));
  mq_row_t* r = wait_row("stuck", 1); /* b claimed it */
  ASSERT(r != NULL);
  /* b stops answering: its incarnation expires, and its lease renewals fail */
  uv_mutex_lock(&mq.lock);
  mq_node_t* bn = node_of(r->ran_by[0]);
  ASSERT(bn != NULL);
  bn->expires_at = 0;
  bn->node_id[0] = 'x'; /* not the node c takes over from */
  uv_mutex_unlock(&mq.lock);
  ASSERT_OK(open_node(&p, "mem:shared", &oc, &c, err, sizeof(err)));
  ASSERT(wait_row("stuck", 2) == r); /* rescued, and retried (maxAttempts 2) */
  uv_mutex_lock(&mq.lock);
  int64_t second = r->ran_by[1];
  int rescued = r->rescues;
  uv_mutex_unlock(&mq.lock);
  ASSERT_GE(rescued, 1);
  ASSERT(second != r->ran_by[0]);
  ath_task_t* ct;
  ASSERT_OK(ath_world_find(c, "stuck", &ct));
  ASSERT_EQ(1, ath_world_cancel(c, ct));
  ASSERT_OK(ath_world_wait(c, ct, 20000));
  ath_task_release(ct);
  ath_task_release(t);
  close_node(c);
  close_node(b);
  suite_teardown();
  return 0;
}

/* Bad providers and what a provider without an optional group refuses. */
TEST_IMPL(queue_provider_refused) {
  suite_setup("qprov-bad");
  ath_queue_provider_t p = mq_provider();
  mq_provider_ptr = &p;
  char err[512];
  ath_world_t* w = NULL;
  node_opts_t o = {"a", 1, NULL};
  /* a required operation missing */
  ath_queue_provider_t bad = p;
  bad.cycle = NULL;
  ASSERT_EQ(ATH_EINVAL, open_node(&bad, "mem:shared", &o, &w, err, sizeof(err)));
  ASSERT(strstr(err, "memq") != NULL && strstr(err, "cycle is required") != NULL);
  bad = p;
  bad.size = sizeof(bad) - sizeof(void*);
  ASSERT_EQ(ATH_EINVAL, open_node(&bad, "mem:shared", &o, &w, err, sizeof(err)));
  ASSERT(strstr(err, "size") != NULL);
  /* no location */
  ASSERT_EQ(ATH_EINVAL, open_node(&p, NULL, &o, &w, err, sizeof(err)));
  ASSERT(strstr(err, "backend_url") != NULL);
  /* a location the provider cannot open: its own message */
  ASSERT_NE(0, open_node(&p, "mem:elsewhere", &o, &w, err, sizeof(err)));
  ASSERT(strstr(err, "no queue at mem:elsewhere") != NULL);
  /* webhooks need the outbox group */
  node_opts_t oh = {"a", 1, "http://127.0.0.1:9/hook"};
  ASSERT_EQ(ATH_EINVAL, open_node(&p, "mem:shared", &oh, &w, err, sizeof(err)));
  ASSERT(strstr(err, "outbox") != NULL);
  /* a working node: workflows and schedules are refused, activities run */
  ASSERT_OK(open_node(&p, "mem:shared", &o, &w, err, sizeof(err)));
  ath_task_t* t = NULL;
  ASSERT_EQ(ATH_ENOSYS, exec_one(w, "flow", "1", NULL, 0, &t, err, sizeof(err)));
  ASSERT(strstr(err, "memq runs no workflows") != NULL);
  ath_schedule_opts_t so = {0};
  ASSERT_EQ(ATH_ENOSYS, ath_world_schedule(w, "nightly", "echo", store_fixture_dup("3", 1), 1, "0 3 * * *", &so, err,
                                           sizeof(err)));
  ASSERT(strstr(err, "keeps no schedules") != NULL);
  ath_schedule_info_t* si;
  size_t ns = 9;
  ASSERT_OK(ath_world_schedules(w, &si, &ns));
  ASSERT_EQ(0, ns);
  ASSERT_OK(exec_one(w, "echo", "5", "fine", 0, &t, err, sizeof(err)));
  ASSERT_OK(ath_world_wait(w, t, 20000));
  ASSERT_EQ(ATH_COMPLETED, ath_task_status(w, t));
  ath_task_release(t);
  close_node(w);
  suite_teardown();
  return 0;
}
