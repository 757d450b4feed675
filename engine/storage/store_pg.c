/* The shared-queue backend (docs/backend-postgres.md; design in
 * ../shared/design/distributed.md §3.5-3.8, §3.12): several athena
 * processes share one queue through a queue provider (athena.h "Queue
 * providers"; calls in backend/queue.h): PostgreSQL's
 * (engine/backend/queue_pg.c) unless the host passed its own.
 * Activities here; the writes and claims of workflow segments in
 * storage/wf_pg.c, schedules in storage/sched_pg.c.
 *
 * The store thread becomes the backend loop. It keeps the store's
 * dirty-list and generation machinery (store.c), so `file` acknowledgments
 * and commit waits work as with SQLite, and classifies each changed task:
 *  - a proxy made by execute (remote, no row yet): an insert;
 *  - a task this node leases (dq_attempt > 0) that ended or waits for a
 *    retry: a fenced finish of that attempt (applied = false: discarded);
 *  - a leased task handed back unrun (remote again): a T14 finish;
 *  - anything else (a claim by a worker, a heartbeat): nothing to write.
 * One cycle sends inserts, finishes and a claim per hungry queue in one
 * round trip and one transaction (the provider's cycle, one_commit). Claimed
 * rows become local tasks in the queue buckets, where workers take them as
 * ever (ath__world_exchange); nothing on the worker path touches the
 * network.
 *
 * Around the cycle, on the same thread: the node lease (renewed every
 * heartbeatInterval; lost or stale -> self-fence and a new incarnation),
 * the leader (advisory lock on its own connection: rescue of expired
 * nodes' tasks with EWORKERLOST, retried per policy; the late-staging
 * sweep), the poll (every pollInterval: stage due retries and delays,
 * claim, re-read watched proxies and missed cancels) and the results of
 * tasks other nodes ran (athena_done). A listener thread LISTENs and only
 * sets flags; the poll alone is correct (notify = false: no listener). */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "internal.h"
#include "store.h"
#include "queue.h"
#include "wf_pg.h"

#define MAX_CLAIM 500      /* rows per claim */
#define MIN_PREFETCH 32    /* after a full claim (§3.5) */
#define RESCUE_LIMIT 500   /* rows per rescue pass */
#define PRUNE_LIMIT 1000   /* rows per retention statement */
#define PRUNE_NS 60000000000u /* a retention pass a minute */
#define WATCH_POLL 5000    /* watched proxies re-read per poll */
#define RETRY_NS 100000000u
#define COUNTS_TTL_NS 1000000000u /* scrapes and dashboards read the counts at most once a second */
/* The last call on q failed because its connection broke. */
#define PQSTATUS_BAD(q) (strncmp(ath__q_sqlstate(q), "08", 2) == 0)
/* The world's queue provider (cfg.queue, or PostgreSQL's); QP where w is in scope. */
static const ath_queue_provider_t* provider_of(const ath_world_t* w) {
  return w->cfg.queue != NULL ? w->cfg.queue : ath_postgres_queue();
}
#define QP (provider_of(w))

/* A set of int64 (the seqs of proxies whose end this node waits to hear),
 * open addressing, linear probing, 0 = empty. */
typedef struct {
  int64_t* slots;
  size_t cap, n;
  size_t cursor; /* where the poll's next batch starts */
} seqset_t;

struct ath_dq_s {
  ath_world_t* w;
  const ath_queue_provider_t* qp; /* cfg.queue, or PostgreSQL's */
  ath_queue_conn_t* wr;  /* the backend thread's: cycles, lease, stage, reads */
  ath_queue_conn_t* ldr; /* the leader's (backend thread) */
  ath_queue_conn_t* lis; /* the listener thread's, NULL: poll only */
  ath_queue_conn_t* rd;  /* reads from any thread, under rd_lock */
  uv_mutex_t rd_lock;
  int notify;
  char node_id[256];
  const char** queue_names; /* served queues, NULL-terminated */
  int slots;
  ath_queue_lease_t lease;   /* backend thread */
  ath_queue_lease_t llease;  /* the leader's control incarnation, when leader */
  int leader;
  int sched_catchup;       /* the leader's next schedule pass catches up (sched_pg.c) */
  uint64_t prune_ns;       /* monotonic time of the leader's next retention pass, 0: at once */
  uint64_t sched_at_ns;    /* monotonic time of the next due occurrence, 0: none */
  /* Guarded by the world lock: */
  int64_t incarnation;     /* the claiming incarnation (the listener reads it) */
  int* more;               /* per queue index: claim when it has room (a
                            * notification, the poll, a full last claim) */
  int* full;               /* per queue index: the last claim was full (prefetch) */
  int64_t stage_at;        /* wall ms a retry or delay this node wrote is due, 0: none */
  int sched_scan;          /* athena_sched heard: the leader looks at the schedules again */
  int lead_now;            /* athena_leader heard (the leader resigned): try the lock at once */
  int64_t* done;           /* athena_done seqs to look up */
  size_t ndone, done_cap;
  int64_t* cancels;        /* athena_cancel seqs leased here */
  size_t ncancel, cancel_cap;
  seqset_t watch;
  ath_task_t** beats;      /* running attempts whose heartbeat is not written
                            * yet (references), one each (beat_set: their
                            * seqs); written with the next lease renewal */
  size_t nbeats, beats_cap;
  seqset_t beat_set;
  seqset_t early;          /* athena_done seqs not watched (yet): an end heard before
                            * this node's own insert answer was read; cleared past 65536 */
  int64_t n_lost, n_rescued, n_claimed, n_notified;
  /* the listener thread */
  uv_thread_t lis_thread;
  int lis_pipe[2];
  int lis_started;
  /* getMetrics().cluster, /metrics: the cluster's counts, read at most
   * every COUNTS_TTL_NS (guarded by rd_lock) */
  ath_queue_counts_t counts;
  uint64_t counts_ns; /* monotonic time of the read, 0: none yet */
  /* webhooks: outbox rows delivered (or given up) by the webhook thread,
   * deleted with the next lease renewal (guarded by hook_lock) */
  _Atomic int64_t retries_closed; /* conflict retries, once the connections closed */
  uv_mutex_t hook_lock;
  int64_t* hooks_done;
  size_t nhooks_done, hooks_done_cap;
};

static int64_t conn_retries(struct ath_dq_s* dq);

/* ------------------------------------------------------------ seq set */

static size_t seq_slot(const seqset_t* s, int64_t v) {
  return (size_t)(((uint64_t)v * 0x9E3779B97F4A7C15ull) >> 7) & (s->cap - 1);
}

static int seq_add(seqset_t* s, int64_t v) {
  if ((s->n + 1) * 2 > s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 1024;
    int64_t* sl = calloc(cap, sizeof(*sl));
    if (sl == NULL)
      return ATH_ENOMEM;
    seqset_t ns = {sl, cap, 0, 0};
    for (size_t i = 0; i < s->cap; i++)
      if (s->slots[i] != 0)
        seq_add(&ns, s->slots[i]);
    free(s->slots);
    *s = ns;
  }
  size_t i = seq_slot(s, v);
  while (s->slots[i] != 0) {
    if (s->slots[i] == v)
      return 0;
    i = (i + 1) & (s->cap - 1);
  }
  s->slots[i] = v;
  s->n++;
  return 0;
}

static int seq_has(const seqset_t* s, int64_t v) {
  if (s->cap == 0)
    return 0;
  for (size_t i = seq_slot(s, v); s->slots[i] != 0; i = (i + 1) & (s->cap - 1))
    if (s->slots[i] == v)
      return 1;
  return 0;
}

static void seq_del(seqset_t* s, int64_t v) {
  if (s->cap == 0)
    return;
  size_t i = seq_slot(s, v);
  while (s->slots[i] != v) {
    if (s->slots[i] == 0)
      return;
    i = (i + 1) & (s->cap - 1);
  }
  s->slots[i] = 0;
  s->n--;
  /* backward shift: entries after it that probed past it move back */
  for (size_t j = (i + 1) & (s->cap - 1); s->slots[j] != 0; j = (j + 1) & (s->cap - 1)) {
    size_t home = seq_slot(s, s->slots[j]);
    if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
      s->slots[i] = s->slots[j];
      s->slots[j] = 0;
      i = j;
    }
  }
}

static int push_seq(int64_t** a, size_t* n, size_t* cap, int64_t v) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 256;
    int64_t* b = realloc(*a, c * sizeof(*b));
    if (b == NULL)
      return ATH_ENOMEM;
    *a = b;
    *cap = c;
  }
  (*a)[(*n)++] = v;
  return 0;
}

void ath__dq_watch(ath_world_t* w, int64_t seq) {
  struct ath_dq_s* dq = w->dq;
  if (dq == NULL || seq <= 0)
    return;
  seq_add(&dq->watch, seq);
  if (seq_has(&dq->early, seq)) { /* it ended before it was watched */
    seq_del(&dq->early, seq);
    push_seq(&dq->done, &dq->ndone, &dq->done_cap, seq);
    uv_cond_signal(&w->store_cond);
  }
}


/* Makes claimed attempt `attempt` of t a local task in its queue's bucket
 * (lock held): it waits for a worker, whose claim counts the attempt.
 * Returns how many were queued (0: no memory; t is handed back). */
static int64_t queue_claimed(ath_world_t* w, ath_task_t* t, int attempt, int64_t ready_at) {
  ath__task_dq(t)->dq_attempt = attempt;
  t->remote = 0;
  t->unborn = 0;
  t->attempt = attempt - 1;
  t->status = ATH_PENDING;
  t->ready_at = ready_at;
  t->ready_mono = ath__mono(w);
  if (ath__queue_push(t->queue, t) == 0)
    return 1;
  t->remote = 1; /* handed back (T14) */
  ath__store_mark(w, t);
  return 0;
}

int ath__dq_discard(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
  w->dq->n_lost++;
  /* the interrupt of the fenced attempt (fence_running) is not the task's:
   * a cancel accepted for the task is in its row, and a claim reads it */
  atomic_store(&t->cancel_ns, 0);
  ath__logf(w, ATH_LOG_WARN, NULL, 0, "outcome of %s discarded: this node's lease was lost", t->id);
  if (ath__task_dq(t)->dq_claimed > 0) { /* claimed again meanwhile: that attempt runs now */
    int attempt = ath__task_dq(t)->dq_claimed;
    ath__task_dq(t)->dq_claimed = 0;
    if (queue_claimed(w, t, attempt, t->ready_at) > 0 && nwake < MAX_WORKERS)
      nwake += ath__pick_sleepers(w, t->queue, 1, wake + nwake, MAX_WORKERS - nwake);
    return nwake;
  }
  ath__task_dq(t)->dq_attempt = 0;
  t->remote = 1;
  t->status = ATH_RUNNING; /* as far as this node knows; its row tells the rest */
  ath__dq_watch(w, ath__task_dq(t)->dq_seq);
  return nwake;
}

/* ------------------------------------------------------------ listener */

static int queue_index(ath_world_t* w, const char* name) {
  for (int i = 0; i < w->nqueues; i++)
    if (strcmp(w->queues[i]->name, name) == 0)
      return i;
  return -1;
}

/* Every served queue claims when it has room (lock held). */
static void want_all(ath_world_t* w, struct ath_dq_s* dq) {
  for (int i = 0; i < w->nqueues; i++)
    dq->more[i] = 1;
}

/* One notification (world lock held): flags for the backend loop. */
static void heard(const char* channel, const char* payload, void* ud) {
  struct ath_dq_s* dq = ud;
  ath_world_t* w = dq->w;
  dq->n_notified++;
  if (strcmp(channel, "athena_ready") == 0) {
    int i = queue_index(w, payload);
    if (i >= 0)
      dq->more[i] = 1;
  } else if (strcmp(channel, "athena_done") == 0) {
    for (const char* p = payload; *p;) {
      char* end;
      int64_t seq = strtoll(p, &end, 10);
      if (end == p)
        break;
      if (seq_has(&dq->watch, seq)) {
        push_seq(&dq->done, &dq->ndone, &dq->done_cap, seq);
      } else {
        if (dq->early.n >= 65536) { /* older ones: the poll finds them */
          memset(dq->early.slots, 0, dq->early.cap * sizeof(*dq->early.slots));
          dq->early.n = 0;
        }
        seq_add(&dq->early, seq);
      }
      p = *end == ',' ? end + 1 : end;
    }
  } else if (strcmp(channel, "athena_sched") == 0) {
    dq->sched_scan = 1;
  } else if (strcmp(channel, "athena_leader") == 0) {
    dq->lead_now = 1;
  } else if (strcmp(channel, "athena_cancel") == 0) {
    char* end;
    int64_t inc = strtoll(payload, &end, 10);
    if (*end == ':' && inc == dq->incarnation)
      push_seq(&dq->cancels, &dq->ncancel, &dq->cancel_cap, strtoll(end + 1, NULL, 10));
  }
}

static const char* const CHANNELS[] = {"athena_ready", "athena_done", "athena_cancel", "athena_sched",
                                       "athena_leader", NULL};

static void listener_main(void* arg) {
  struct ath_dq_s* dq = arg;
  ath_world_t* w = dq->w;
  int broken = 0;
  for (;;) {
    struct pollfd p[2] = {{ath__q_socket(dq->lis), POLLIN, 0}, {dq->lis_pipe[0], POLLIN, 0}};
    int r = poll(p, 2, broken ? 1000 : -1);
    if (r < 0 && errno != EINTR)
      break;
    if (p[1].revents)
      break; /* stop */
    if (broken || p[0].fd < 0) { /* reconnect; meanwhile the poll carries on */
      broken = ath__q_reset(dq->lis) != 0 || ath__q_listen(dq->lis, CHANNELS) != 0;
      if (!broken) {
        uv_mutex_lock(&w->lock);
        want_all(w, dq); /* what was missed: claimed at once */
        uv_cond_signal(&w->store_cond);
        uv_mutex_unlock(&w->lock);
      }
      continue;
    }
    if (!(p[0].revents & (POLLIN | POLLERR | POLLHUP)))
      continue;
    uv_mutex_lock(&w->lock);
    int n = ath__q_notifies(dq->lis, heard, dq);
    if (n > 0)
      uv_cond_signal(&w->store_cond);
    uv_mutex_unlock(&w->lock);
    if (n < 0) {
      broken = 1;
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "%s listener lost its connection (polling meanwhile): %s", ath__q_name(QP),
                ath__q_errmsg(dq->lis));
    }
  }
}

/* ------------------------------------------------------------ the cycle */

/* The claim a queue wants now (lock held): free slots of its workers plus
 * the prefetch, 0 when it has no room or no reason to ask. */
static int claim_size(ath_world_t* w, struct ath_dq_s* dq, int qi) {
  ath_queue_t* q = w->queues[qi];
  if (!dq->more[qi])
    return 0;
  int64_t cap = 0;
  for (int i = 0; i < w->nworkers; i++) {
    ath_worker_t* wk = w->workers[i];
    if (wk->queue == q && !wk->stop && wk->state != ATH_WK_STOPPED)
      cap += wk->concurrency;
  }
  int64_t free_slots = cap - q->running - q->depth;
  if (free_slots <= 0)
    return 0;
  int64_t prefetch = dq->full[qi] ? (cap > MIN_PREFETCH ? cap : MIN_PREFETCH) : 0;
  int64_t n = free_slots + prefetch;
  return (int)(n > MAX_CLAIM ? MAX_CLAIM : n);
}

/* The webhook events of a batch of finishes (SEMANTICS §15): written before
 * the commit, stored in the outbox in the finishes' transaction, queued for
 * delivery once it committed, and only for the finishes that applied. */
typedef struct {
  ath_queue_hook_t* ev;
  char (*delivery)[37];
  size_t* len;
  int64_t* ids; /* outbox rows, 0: its finish was fenced out */
  size_t n;
} hooks_t;

static void hooks_free(hooks_t* h) {
  for (size_t i = 0; h->ev != NULL && i < h->n; i++)
    free((char*)h->ev[i].body);
  free(h->ev);
  free(h->delivery);
  free(h->len);
  free(h->ids);
  memset(h, 0, sizeof(*h));
}

static int hooks_alloc(hooks_t* h, size_t n) {
  memset(h, 0, sizeof(*h));
  size_t k = n ? n : 1;
  h->ev = calloc(k, sizeof(*h->ev));
  h->delivery = calloc(k, sizeof(*h->delivery));
  h->len = calloc(k, sizeof(*h->len));
  h->ids = calloc(k, sizeof(*h->ids));
  if (!h->ev || !h->delivery || !h->len || !h->ids) {
    hooks_free(h);
    return ATH_ENOMEM;
  }
  return 0;
}

/* The event of a finish with `status`, or -1 when none is configured for it. */
static int hook_kind(const ath_world_t* w, int status) {
  int kind = status == ATH_COMPLETED                               ? ATH_EV_TASK_COMPLETED
             : status == ATH_FAILED || status == ATH_COMPENSATED ? ATH_EV_TASK_FAILED
             : status == ATH_RETRYING                              ? ATH_EV_TASK_RETRYING
             : status == ATH_QUARANTINED                           ? ATH_EV_TASK_QUARANTINED
             : status == ATH_CANCELLED                             ? ATH_EV_TASK_CANCELLED
                                                                   : -1;
  unsigned mask = w->cfg.webhook_events ? w->cfg.webhook_events : (1u << ATH_EV_COUNT) - 1;
  return w->cfg.webhook_url != NULL && kind >= 0 && (mask & (1u << kind)) ? kind : -1;
}

/* Adds the event of the finish of `seq` (its fields in f) when one is
 * configured; an event that cannot be written is dropped (logged once by
 * the caller's counters: none here, out of memory). */
static void hooks_add(ath_world_t* w, hooks_t* h, int64_t seq, const ath_hook_task_t* f) {
  int kind = hook_kind(w, f->status);
  if (kind < 0)
    return;
  ath_queue_hook_t* e = &h->ev[h->n];
  char* body;
  int64_t at = ath__wall(w);
  if (ath__hook_task_event(kind, at, f, h->delivery[h->n], &body, &h->len[h->n]) != 0)
    return;
  e->seq = seq;
  e->status = f->status;
  e->attempt = f->attempt;
  e->kind = kind;
  e->delivery = h->delivery[h->n];
  e->at = at;
  e->body = body;
  h->n++;
}

/* The webhooks, once the world started them (lock held; until then events
 * stay in the outbox for the poll's adoption). */
static ath_hook_t* live_hook(ath_world_t* w) {
  return w->state != ATH_W_NEW ? w->hook : NULL;
}

/* Queues the stored events for delivery (lock held). */
static void hooks_send(ath_world_t* w, hooks_t* h) {
  ath_hook_t* hook = live_hook(w);
  for (size_t i = 0; hook != NULL && i < h->n; i++) {
    if (h->ids[i] <= 0)
      continue; /* fenced out: the node whose write applied sends it */
    ath__hook_emit_stored(hook, h->ev[i].kind, h->delivery[i], h->ev[i].at, (char*)h->ev[i].body, h->len[i],
                          h->ids[i]);
    h->ev[i].body = NULL;
  }
}

typedef struct {
  const ath_queue_provider_t* qp; /* frees what its claims and inserts hold */
  ath_queue_beat_t* beats;
  char** beat_hb; /* copies */
  uint8_t* beat_applied;
  size_t nbeats;
  ath_queue_insert_t* ins;
  ath_task_t** ins_t;
  ath_queue_inserted_t* inserted;
  size_t nins;
  ath_queue_outcome_t* outs;
  ath_task_t** out_t;
  char** out_err; /* copies */
  uint8_t* applied;
  size_t nouts;
  ath_queue_claim_t claims[64];
  ath_queue_tasks_t claimed[64];
  int claim_q[64];
  size_t nclaims;
  ath_wfpg_t wf; /* workflows: history appends, parks, requeues (wf_pg.c) */
  hooks_t hooks; /* webhook events of the finishes */
} cycle_t;

static void cycle_free(cycle_t* c) {
  for (size_t i = 0; i < c->nouts; i++)
    free(c->out_err[i]);
  for (size_t i = 0; i < c->nbeats; i++)
    free(c->beat_hb[i]);
  free(c->beats);
  free(c->beat_hb);
  free(c->beat_applied);
  for (size_t i = 0; i < c->nclaims; i++)
    ath__q_tasks_free(c->qp, &c->claimed[i]);
  if (c->inserted != NULL)
    ath__q_inserted_clear(c->qp, c->inserted, c->nins);
  free(c->ins);
  free(c->ins_t);
  free(c->inserted);
  free(c->outs);
  free(c->out_t);
  free(c->out_err);
  free(c->applied);
  ath__wfpg_free(&c->wf);
  hooks_free(&c->hooks);
  memset(c, 0, sizeof(*c));
}

static int cycle_alloc(cycle_t* c, size_t n, const ath_queue_provider_t* qp) {
  memset(c, 0, sizeof(*c));
  c->qp = qp;
  size_t k = n ? n : 1;
  c->ins = calloc(k, sizeof(*c->ins));
  c->ins_t = calloc(k, sizeof(*c->ins_t));
  c->inserted = calloc(k, sizeof(*c->inserted));
  c->outs = calloc(k, sizeof(*c->outs));
  c->out_t = calloc(k, sizeof(*c->out_t));
  c->out_err = calloc(k, sizeof(*c->out_err));
  c->applied = calloc(k, 1);
  c->beats = calloc(k, sizeof(*c->beats));
  c->beat_hb = calloc(k, sizeof(*c->beat_hb));
  c->beat_applied = calloc(k, 1);
  if (!c->ins || !c->ins_t || !c->inserted || !c->outs || !c->out_t || !c->out_err || !c->applied ||
      !c->beats || !c->beat_hb || !c->beat_applied || ath__wfpg_alloc(&c->wf, n) != 0 ||
      hooks_alloc(&c->hooks, n) != 0) {
    cycle_free(c);
    c->qp = qp;
    return ATH_ENOMEM;
  }
  return 0;
}

/* Adds t's outcome (lock held): the attempt it leases, ended as it is now. */
static void add_outcome(cycle_t* c, ath_task_t* t, int status, int64_t now) {
  ath_queue_outcome_t* o = &c->outs[c->nouts];
  o->seq = ath__task_dq(t)->dq_seq;
  o->attempt = ath__task_dq(t)->dq_attempt;
  o->status = status;
  o->delay_ms = status == ATH_RETRYING ? t->ready_at - now : 0;
  o->result = status == ATH_COMPLETED ? t->result : NULL;
  c->out_err[c->nouts] = status != ATH_COMPLETED && t->error ? ath__memdup(t->error, t->error_len) : NULL;
  o->error = c->out_err[c->nouts];
  o->worker_id = t->worker_id;
  c->out_t[c->nouts++] = t;
}

/* Adds the webhook event of t's finish, the last outcome added (lock held). */
static void add_hook(ath_world_t* w, cycle_t* c, const ath_task_t* t) {
  const ath_queue_outcome_t* o = &c->outs[c->nouts - 1];
  const ath_task_t* parent = ath__task_parent(t);
  ath_hook_task_t f = {t->id, t->def->name, t->queue->name, parent ? parent->id : NULL, t->wf != NULL,
                       o->status, o->attempt, o->error, o->error ? strlen(o->error) : 0};
  hooks_add(w, &c->hooks, o->seq, &f);
}

/* Whether t sent a heartbeat during the attempt it runs now (or ran last). */
static int beat_this_attempt(const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_dq(t);
  return x->last_hb > 0 && x->last_hb >= t->started_at;
}

/* Adds the heartbeat of the attempt t leases to c (lock held): it goes
 * before the attempt's finish in the same transaction. */
static void add_beat(cycle_t* c, const ath_task_t* t) {
  const ath_task_x_t* x = ath__task_dq(t);
  ath_queue_beat_t* b = &c->beats[c->nbeats];
  c->beat_hb[c->nbeats] = x->hb != NULL ? ath__memdup(x->hb, x->hb_len) : NULL;
  b->seq = x->dq_seq;
  b->attempt = x->dq_attempt;
  b->details = c->beat_hb[c->nbeats];
  b->at = x->last_hb;
  c->nbeats++;
}

/* Keeps running t for the next lease renewal's heartbeat write (lock
 * held): one write per task per heartbeatInterval, whatever its rate. */
static void defer_beat(struct ath_dq_s* dq, ath_task_t* t) {
  int64_t seq = ath__task_dq(t)->dq_seq;
  if (seq_has(&dq->beat_set, seq))
    return;
  if (dq->nbeats == dq->beats_cap) {
    size_t cap = dq->beats_cap ? dq->beats_cap * 2 : 64;
    ath_task_t** b = realloc(dq->beats, cap * sizeof(*b));
    if (b == NULL)
      return; /* its next heartbeat tries again */
    dq->beats = b;
    dq->beats_cap = cap;
  }
  if (seq_add(&dq->beat_set, seq) != 0)
    return;
  ath_task_retain(t);
  dq->beats[dq->nbeats++] = t;
}

/* Sorts the changed tasks of a batch into inserts and finishes (lock held);
 * see the file comment. */
static void classify(ath_world_t* w, struct ath_dq_s* dq, ath_task_t** batch, size_t n, cycle_t* c) {
  int64_t now = ath__wall(w);
  for (size_t i = 0; i < n; i++) {
    ath_task_t* t = batch[i];
    t->dirty = 0;
    if (t->withdrawn || t->purged)
      continue;
    int ended = ATH_IS_TERMINAL(t->status) || t->status == ATH_RETRYING;
    if (ath__wfpg_take(&c->wf, t, now))
      continue; /* a workflow segment that parked: its history and its park */
    if (t->remote && ath__task_dq(t)->dq_seq == 0) {
      ath_queue_insert_t* x = &c->ins[c->nins];
      x->id = t->id;
      x->name = t->def->name;
      x->queue = t->queue->name;
      x->input = t->input; /* NUL-terminated: inline, or a JSON encoder's buffer */
      x->kind = t->wf != NULL;
      ath_task_t* parent = ath__task_parent(t);
      x->parent_id = parent != NULL ? parent->id : NULL; /* its end wakes the workflow's row */
      x->priority = t->priority;
      x->max_attempts = t->max_attempts;
      x->strategy = t->strategy;
      x->delay_ms = t->scheduled_at - t->created_at;
      x->close_after_ms = ath__task_limits(t)->schedule_to_close_ms;
      const ath_task_x_t* tx = ath__task_xr(t);
      x->call = tx != NULL && tx->call != NULL ? tx->call->json : NULL; /* immutable, as long as t */
      x->notify = 1;
      ath__task_dq(t)->dq_seq = -1;
      c->ins_t[c->nins++] = t;
    } else if (ath__task_dq(t)->dq_attempt > 0 && t->remote) { /* handed back unrun: T14 */
      if (beat_this_attempt(t))
        add_beat(c, t);
      add_outcome(c, t, ATH_PENDING, now);
      ath__task_dq(t)->dq_attempt = 0;
    } else if (ath__task_dq(t)->dq_attempt > 0 && ended) {
      if (beat_this_attempt(t))
        add_beat(c, t);
      add_outcome(c, t, t->status, now);
      add_hook(w, c, t);
      ath__task_dq(t)->dq_attempt = 0;
      t->remote = t->status == ATH_RETRYING; /* its row waits; any node runs it next */
    } else if (ath__task_dq(t)->dq_attempt < 0 && ended) { /* the lease was lost: discarded */
      dq->n_lost++;
      ath__task_dq(t)->dq_attempt = 0;
      t->remote = t->status == ATH_RETRYING;
      if (ath__task_dq(t)->dq_claimed > 0) { /* claimed again meanwhile (ended by the worker monitor): back, unrun */
        ath__task_dq(t)->dq_attempt = ath__task_dq(t)->dq_claimed;
        ath__task_dq(t)->dq_claimed = 0;
        add_outcome(c, t, ATH_PENDING, now);
        ath__task_dq(t)->dq_attempt = 0;
        t->remote = 1;
      }
    } else if (ath__task_dq(t)->dq_attempt > 0 && t->status == ATH_RUNNING && beat_this_attempt(t)) {
      defer_beat(dq, t);
    }
  }
}

/* The store row of a database row (strings borrowed from r). */
static void row_of(const ath_queue_task_t* r, ath_row_t* row) {
  memset(row, 0, sizeof(*row));
  row->id = r->id;
  row->name = r->name;
  row->queue = r->queue;
  row->status = r->status;
  row->attempt = r->attempt;
  row->max_attempts = r->max_attempts;
  row->strategy = r->strategy;
  row->priority = r->priority;
  row->seq = (uint64_t)r->seq; /* the row's: world.c dq_watch reads it there */
  row->created_at = r->created_at;
  row->scheduled_at = r->scheduled_at;
  row->ready_at = r->ready_at;
  row->started_at = r->started_at > 0 ? r->started_at : 0;
  row->completed_at = r->completed_at > 0 ? r->completed_at : 0;
  row->input = r->input ? r->input : "null";
  row->input_len = strlen(row->input);
  row->result = r->result;
  row->result_len = r->result ? strlen(r->result) : 0;
  row->error = r->error;
  row->error_len = r->error ? strlen(r->error) : 0;
  row->hb = r->hb;
  row->hb_len = r->hb ? strlen(r->hb) : 0;
  row->last_hb = r->last_hb > 0 ? r->last_hb : 0;
  row->parent_id = r->parent_id;
  row->history = r->history; /* read by id: a workflow's events */
  row->history_len = r->history ? strlen(r->history) : 0;
  row->call = r->call;
  row->call_len = r->call ? strlen(r->call) : 0;
}

/* Takes the heartbeat of row r when it is newer than what t holds (lock
 * held): an attempt another node ran left it, and the next attempt's
 * ctx.lastHeartbeat and every query show it. */
static void take_beat(ath_task_t* t, const ath_queue_task_t* r) {
  ath_task_x_t* x = ath__task_dq(t);
  if (r->last_hb <= x->last_hb)
    return;
  char* hb = r->hb != NULL ? ath__memdup(r->hb, strlen(r->hb)) : NULL;
  if (r->hb != NULL && hb == NULL)
    return; /* out of memory: what it has stands */
  free(x->hb);
  x->hb = hb;
  x->hb_len = hb != NULL ? (uint32_t)strlen(hb) : 0;
  x->last_hb = r->last_hb;
}

/* Makes claimed rows local tasks (lock not held on entry or exit).
 * Returns how many were queued. */
static int64_t adopt_rows(ath_world_t* w, struct ath_dq_s* dq, const ath_queue_tasks_t* rows,
                          ath_worker_t** wake, int* nwake) {
  int64_t pushed = 0;
  for (size_t i = 0; i < rows->n; i++) {
    const ath_queue_task_t* r = &rows->rows[i];
    ath_row_t row;
    row_of(r, &row);
    row.status = ATH_PENDING; /* claimed, not started: the worker's claim counts the attempt */
    row.attempt = r->attempt - 1;
    row.history = NULL; /* a workflow takes it in ath__wfpg_claimed */
    ath_task_t* t = ath__world_adopt_row(w, &row);
    uv_mutex_lock(&w->lock);
    if (t == NULL) { /* no memory: the row stays leased, rescued when this node ends */
      uv_mutex_unlock(&w->lock);
      continue;
    }
    seq_del(&dq->watch, r->seq);
    ath__task_dq(t)->dq_seq = r->seq;
    take_beat(t, r);
    if (t->wk != NULL || ath__task_dq(t)->dq_attempt < 0) {
      /* an attempt fenced by a lost lease still runs on this very task:
       * the new one starts once it ended (ath__dq_discard) */
      ath__task_dq(t)->dq_claimed = r->attempt;
      uv_mutex_unlock(&w->lock);
      ath_task_release(t);
      continue;
    }
    ath__task_dq(t)->dq_attempt = r->attempt;
    if (ATH_IS_TERMINAL(t->status)) { /* cannot happen: a row ended is never ready */
      t->remote = 1; /* handed back */
      ath__store_mark(w, t);
    } else if (t->def->ghost) { /* no activity of that name here: it fails, as at recovery */
      t->remote = 0;
      t->attempt = r->attempt;
      ath__set_error(t, ATH_ENOTFOUND, "no activity with this name is registered on this node");
      *nwake = ath__finish_task(w, t, ATH_FAILED, ath__wall(w), wake, *nwake);
    } else {
      if (r->cancel_at >= 0 && atomic_load(&t->cancel_ns) == 0)
        atomic_store(&t->cancel_ns, ath__mono(w));
      int wf = t->wf != NULL ? ath__wfpg_claimed(w, t, r, wake, nwake) : -1; /* a resumption: queued there */
      pushed += wf >= 0 ? wf : queue_claimed(w, t, r->attempt, r->ready_at);
    }
    uv_mutex_unlock(&w->lock);
    ath_task_release(t);
  }
  return pushed;
}

static void adopt_claims(ath_world_t* w, struct ath_dq_s* dq, cycle_t* c) {
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  for (size_t k = 0; k < c->nclaims; k++) {
    ath_queue_t* q = w->queues[c->claim_q[k]];
    int64_t pushed = adopt_rows(w, dq, &c->claimed[k], wake, &nwake);
    dq->n_claimed += (int64_t)c->claimed[k].n;
    uv_mutex_lock(&w->lock);
    nwake += ath__pick_sleepers(w, q, pushed, wake + nwake, MAX_WORKERS - nwake);
    uv_mutex_unlock(&w->lock);
  }
  ath__wake_all(wake, nwake);
}

/* Parked workflows whose cancel was accepted (seqs[0..n), or the children
 * of those): leased here at once, with no free slot needed, and cancelled
 * through the claim's path (lock not held; q: a connection used under
 * `qlock`, or this thread's when NULL). */
static void take_cancelled(ath_world_t* w, ath_queue_conn_t* q, uv_mutex_t* qlock, const int64_t* seqs, size_t n,
                           int by_parent) {
  struct ath_dq_s* dq = w->dq;
  uv_mutex_lock(&w->lock);
  int64_t lease = dq->incarnation;
  uv_mutex_unlock(&w->lock);
  ath_queue_tasks_t rows;
  if (n == 0 || lease <= 0)
    return;
  if (qlock != NULL)
    uv_mutex_lock(qlock);
  int rc = ath__q_wf_take(q, lease, seqs, n, by_parent, &rows);
  if (qlock != NULL)
    uv_mutex_unlock(qlock);
  if (rc != 0)
    return; /* a claim of the ready rows cancels them */
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  adopt_rows(w, dq, &rows, wake, &nwake);
  ath__wake_all(wake, nwake);
  ath__q_tasks_free(QP, &rows);
}

/* After the writer's connection broke in a cycle (lock not held): a claim
 * may have committed without its answer arriving, leaving rows leased to
 * this live incarnation that no task here holds (nobody would ever rescue
 * them). They go back unrun (T14). */
static void audit_leases(ath_world_t* w, struct ath_dq_s* dq) {
  ath_queue_tasks_t rows;
  uv_mutex_lock(&w->lock);
  int64_t inc = dq->incarnation;
  uv_mutex_unlock(&w->lock);
  if (inc <= 0 || ath__q_leased(dq->wr, inc, &rows) != 0)
    return;
  ath_queue_outcome_t* o = calloc(rows.n ? rows.n : 1, sizeof(*o));
  uint8_t* applied = calloc(rows.n ? rows.n : 1, 1);
  size_t n = 0;
  uv_mutex_lock(&w->lock);
  for (size_t i = 0; o && applied && i < rows.n; i++) {
    const ath_queue_task_t* r = &rows.rows[i];
    ath_task_t* t = ath__table_get(w, r->id, ath__hash_id(r->id));
    if (t != NULL && ath__task_dq(t)->dq_seq == r->seq && ath__task_dq(t)->dq_attempt == r->attempt)
      continue; /* held here */
    o[n].seq = r->seq;
    o[n].attempt = r->attempt;
    o[n].status = ATH_PENDING;
    n++;
  }
  uv_mutex_unlock(&w->lock);
  if (n > 0 && ath__q_finish(dq->wr, inc, o, n, applied) == 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "%zu task(s) claimed by a cycle whose answer was lost went back unrun", n);
  free(o);
  free(applied);
  ath__q_tasks_free(QP, &rows);
}

/* One cycle (lock held on entry and exit). Returns 0, or the provider's
 * error (the batch was handed back to the dirty list). */
static int run_cycle(ath_world_t* w, struct ath_dq_s* dq, int claiming) {
  ath_task_t** batch = w->dirty;
  size_t n = w->ndirty;
  w->dirty = NULL;
  w->ndirty = w->dirty_cap = 0;
  uint64_t gen = w->gen++;
  cycle_t c;
  if (cycle_alloc(&c, n, w->dq->qp) != 0) {
    ath__store_failed(w, ATH_ENOMEM, "out of memory preparing a commit", batch, n);
    w->gen--;
    free(batch);
    return ATH_ENOMEM;
  }
  classify(w, dq, batch, n, &c);
  int asked[64] = {0};
  for (int i = 0; claiming && i < w->nqueues && c.nclaims < 64; i++) {
    int k = claim_size(w, dq, i);
    if (k == 0)
      continue;
    asked[c.nclaims] = k;
    c.claim_q[c.nclaims] = i;
    c.claims[c.nclaims].queue = w->queues[i]->name;
    c.claims[c.nclaims].n = k;
    c.claims[c.nclaims].out = &c.claimed[c.nclaims];
    c.nclaims++;
    dq->more[i] = 0;
  }
  int64_t lease = dq->incarnation;
  uv_mutex_unlock(&w->lock);
  ath_queue_cycle_t pc = {.beats = c.beats, .n_beats = c.nbeats, .beat_applied = c.beat_applied,
                        .inserts = c.ins, .n_inserts = c.nins, .inserted = c.inserted,
                        .outcomes = c.outs, .n_outcomes = c.nouts, .applied = c.applied,
                        .lease = lease, .claims = c.claims, .n_claims = c.nclaims, .one_commit = 1,
                        .hooks = c.hooks.ev, .n_hooks = c.hooks.n, .hook_ids = c.hooks.ids};
  ath__wfpg_fill(&c.wf, &pc);
  size_t parts = c.nbeats + c.nins + c.nouts + c.nclaims + c.wf.napps + c.wf.nparks + c.wf.nreqs;
  int rc = parts > 0 ? ath__q_cycle(dq->wr, &pc) : 0;
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->wr) && ath__q_reset(dq->wr) == 0) {
    /* the connection broke (a restart, a terminated session): once more on a
     * new one. Inserts are idempotent and finishes fenced; claims that may
     * have committed unanswered go back first. */
    audit_leases(w, dq);
    for (size_t i = 0; i < c.nclaims; i++)
      ath__q_tasks_free(QP, &c.claimed[i]);
    rc = ath__q_cycle(dq->wr, &pc);
  }
  if (rc == 0 && c.nclaims > 0)
    adopt_claims(w, dq, &c);
  uv_mutex_lock(&w->lock);
  if (rc != 0) {
    /* nothing committed: the writes go again, as before the cycle */
    for (size_t i = 0; i < c.nins; i++)
      ath__task_dq(c.ins_t[i])->dq_seq = 0;
    for (size_t i = 0; i < c.nouts; i++) {
      ath_task_t* t = c.out_t[i];
      ath__task_dq(t)->dq_attempt = c.outs[i].attempt;
      if (c.outs[i].status == ATH_RETRYING)
        t->remote = 0;
    }
    for (size_t i = 0; i < c.nclaims; i++)
      dq->more[c.claim_q[i]] = 1;
    ath__wfpg_undo(&c.wf);
    char err[256];
    snprintf(err, sizeof(err), "%s: %s", ath__q_name(QP), ath__q_errmsg(dq->wr));
    ath__store_failed(w, ATH_ESTORE, err, batch, n);
    w->gen--;
    free(batch);
    cycle_free(&c);
    return rc;
  }
  int64_t now = ath__wall(w);
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  for (size_t i = 0; i < c.nins; i++) {
    ath_task_t* t = c.ins_t[i];
    const ath_queue_inserted_t* r = &c.inserted[i];
    ath__task_dq(t)->dq_seq = r->seq;
    t->created_at = r->created_at; /* the row's (the database clock): queries merge on it */
    if (!r->created && r->existing_name && strcmp(r->existing_name, t->def->name) != 0) {
      int out; /* the id names another activity's task: execute answers EINVAL */
      ath__set_error(t, ATH_EINVAL, "id in use by another activity");
      nwake = ath__world_withdraw(w, t, ATH_EINVAL, wake, nwake, &out);
      if (!out && t->remote && !ATH_IS_TERMINAL(t->status))
        nwake = ath__finish_remote(w, t, ATH_FAILED, now, wake, nwake);
      continue;
    }
    if (t->remote && !ATH_IS_TERMINAL(t->status))
      ath__dq_watch(w, r->seq);
    if (r->created && t->status == ATH_SCHEDULED && (dq->stage_at == 0 || t->ready_at < dq->stage_at))
      dq->stage_at = t->ready_at;
  }
  for (size_t i = 0; i < c.nouts; i++) {
    ath_task_t* t = c.out_t[i];
    if (!c.applied[i]) {
      dq->n_lost++;
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "outcome of %s attempt %d discarded: its lease was lost",
                t->id, c.outs[i].attempt);
    } else if (c.outs[i].status == ATH_RETRYING && (dq->stage_at == 0 || t->ready_at < dq->stage_at)) {
      dq->stage_at = t->ready_at;
    }
  }
  ath__wfpg_done(w, &c.wf, &dq->stage_at, &dq->n_lost);
  hooks_send(w, &c.hooks);
  for (size_t i = 0; i < c.nclaims; i++) {
    int qi = c.claim_q[i];
    dq->full[qi] = (int)c.claimed[i].n >= asked[i];
    dq->more[qi] |= dq->full[qi]; /* a deep queue: claim again as slots free */
  }
  int64_t* kids = c.wf.nkids > 0 ? c.wf.kids : NULL; /* kept: their parked children are taken now */
  size_t nkids = c.wf.nkids;
  if (kids != NULL)
    c.wf.kids = NULL;
  cycle_free(&c);
  ath__store_committed(w, gen, batch, n, wake, nwake); /* drops the batch's references */
  free(batch);
  if (kids != NULL) {
    uv_mutex_unlock(&w->lock);
    take_cancelled(w, dq->wr, NULL, kids, nkids, 1);
    uv_mutex_lock(&w->lock);
    free(kids);
  }
  return 0;
}

/* ------------------------------------------------------------ results of other nodes */

void ath__dq_take_error(ath_task_t* t, const char* error) {
  char* e = error != NULL ? ath__memdup(error, strlen(error)) : NULL;
  if (e != NULL) {
    free(t->error);
    t->error = e;
    t->error_len = (uint32_t)strlen(e);
  }
}

/* Brings remote proxy t up to its row r (lock held): its state, attempt
 * and error; a row that ended ends the proxy (its waiters wake). Returns
 * the new nwake. */
static int sync_proxy(ath_world_t* w, ath_task_t* t, const ath_queue_task_t* r, ath_worker_t** wake,
                      int nwake) {
  if (!t->remote || ATH_IS_TERMINAL(t->status))
    return nwake;
  t->attempt = r->attempt;
  if (r->started_at > 0)
    t->started_at = r->started_at;
  take_beat(t, r);
  ath__dq_take_error(t, r->error);
  if (!ATH_IS_TERMINAL(r->status)) {
    t->status = (ath_status_t)r->status;
    return nwake;
  }
  seq_del(&w->dq->watch, r->seq);
  if (r->result != NULL && t->result == NULL && (t->result = ath__memdup(r->result, strlen(r->result))))
    t->result_len = (uint32_t)strlen(r->result);
  if (r->status == ATH_CANCELLED)
    t->err_code = ATH_ECANCELED;
  return ath__finish_remote(w, t, (ath_status_t)r->status, r->completed_at, wake, nwake);
}

void ath__dq_refresh(ath_world_t* w, ath_task_t* t) {
  struct ath_dq_s* dq = w->dq;
  if (dq == NULL)
    return;
  uv_mutex_lock(&w->lock);
  int64_t seq = t->remote && !ATH_IS_TERMINAL(t->status) ? ath__task_dq(t)->dq_seq : 0;
  uv_mutex_unlock(&w->lock);
  if (seq <= 0)
    return;
  ath_queue_tasks_t rows;
  uv_mutex_lock(&dq->rd_lock);
  int rc = ath__q_read(dq->rd, &seq, 1, 0, &rows);
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->rd) && ath__q_reset(dq->rd) == 0)
    rc = ath__q_read(dq->rd, &seq, 1, 0, &rows);
  uv_mutex_unlock(&dq->rd_lock);
  if (rc != 0)
    return; /* what this node knows stands */
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  uv_mutex_lock(&w->lock);
  if (rows.n == 1)
    nwake = sync_proxy(w, t, &rows.rows[0], wake, 0);
  uv_mutex_unlock(&w->lock);
  ath__wake_all(wake, nwake);
  ath__q_tasks_free(QP, &rows);
}

/* Reads the rows of seqs[0..n) that ended and ends their local proxies
 * (lock not held). */
static void read_ended(ath_world_t* w, struct ath_dq_s* dq, const int64_t* seqs, size_t n) {
  ath_queue_tasks_t rows;
  if (n == 0 || ath__q_read(dq->wr, seqs, n, 1, &rows) != 0)
    return;
  ath_worker_t* wake[MAX_WORKERS];
  int nwake = 0;
  uv_mutex_lock(&w->lock);
  for (size_t i = 0; i < rows.n; i++) {
    const ath_queue_task_t* r = &rows.rows[i];
    seq_del(&dq->watch, r->seq);
    ath_task_t* t = ath__table_get(w, r->id, ath__hash_id(r->id));
    if (t != NULL)
      nwake = sync_proxy(w, t, r, wake, nwake);
  }
  ath_task_t* dead = ath__world_term_trim(w);
  uv_mutex_unlock(&w->lock);
  ath__world_term_free(dead);
  ath__wake_all(wake, nwake);
  ath__q_tasks_free(QP, &rows);
}

/* Cancels accepted elsewhere for tasks this node leases (lock held). */
static int apply_cancels(ath_world_t* w, const int64_t* seqs, size_t n, ath_worker_t** wake, int nwake) {
  if (n == 0)
    return nwake;
  int64_t now = ath__wall(w);
  for (size_t b = 0; b < w->table_cap; b++) {
    for (ath_task_t* t = w->table[b]; t != NULL; t = t->hnext) {
      if (ath__task_dq(t)->dq_attempt <= 0 || t->remote)
        continue;
      for (size_t i = 0; i < n; i++) {
        if (seqs[i] == ath__task_dq(t)->dq_seq) {
          int accepted;
          nwake = ath__cancel_locked(w, t, now, wake, nwake, &accepted);
          break;
        }
      }
    }
  }
  return nwake;
}

/* ------------------------------------------------------------ lease, leader, poll */

/* t's attempt is no longer this node's (lock held): its outcome will be
 * discarded, and a handler running it is interrupted as a cancel does
 * (its next yield point raises ECANCELED; past cancelGrace, the count hook
 * does), so it stops instead of running on for nothing. */
static int fence_running(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake) {
  ath__task_dq(t)->dq_attempt = -1;
  if (t->wk == NULL)
    return nwake;
  if (atomic_load(&t->cancel_ns) == 0)
    atomic_store(&t->cancel_ns, ath__mono(w));
  return ath__wake_runner(t, wake, nwake);
}

/* The lease was lost (lock held): nothing buffered here may start (the rows
 * go to the rescue), and what runs is interrupted, its outcome discarded.
 * Returns the new nwake. */
static int self_fence(ath_world_t* w, struct ath_dq_s* dq, ath_worker_t** wake, int nwake) {
  int64_t held = 0, stopped = 0;
  for (size_t b = 0; b < w->table_cap; b++) {
    for (ath_task_t* t = w->table[b]; t != NULL; t = t->hnext) {
      if (ath__task_dq(t)->dq_claimed > 0) { /* a claim under the incarnation lost now: the rescue's */
        ath__task_dq(t)->dq_claimed = 0;
        held++;
      }
      if (ath__task_dq(t)->dq_attempt <= 0)
        continue;
      held++;
      if (t->status == ATH_PENDING && !t->remote) { /* buffered */
        ath__queue_remove(t->queue, t);
        t->remote = 1;
        ath__task_dq(t)->dq_attempt = 0;
      } else {
        stopped += t->wk != NULL;
        nwake = fence_running(w, t, wake, nwake);
      }
    }
  }
  ath__logf(w, ATH_LOG_WARN, NULL, 0,
            "node lease lost (incarnation %" PRId64 "): stopped claiming; %" PRId64
            " leased task(s) left to the rescue, their outcomes are discarded; %" PRId64
            " running attempt(s) interrupted",
            dq->incarnation, held, stopped);
  return nwake;
}

static void node_desc(struct ath_dq_s* dq, ath_world_t* w, ath_queue_node_t* n, int leader) {
  memset(n, 0, sizeof(*n));
  n->node_id = dq->node_id;
  n->queues = leader ? NULL : dq->queue_names;
  n->slots = leader ? 0 : dq->slots;
  n->ttl_ms = w->cfg.heartbeat_timeout_ms;
  n->interval_ms = w->cfg.heartbeat_interval_ms;
  n->leader = leader;
}

/* A commit or a renew succeeded (lock held): writes are taken again. */
static void healthy(ath_world_t* w) {
  if (!w->store_ok)
    ath__logf(w, ATH_LOG_INFO, NULL, 0, "%s", "PostgreSQL commits succeed again");
  w->store_ok = 1;
  w->store_fault = 0;
}

/* Writes the heartbeats deferred since the last renewal, in one statement
 * (lock not held). A row that refuses one is not this node's attempt any
 * more (rescued elsewhere): the handler still running it is interrupted. */
static void flush_beats(ath_world_t* w, struct ath_dq_s* dq) {
  uv_mutex_lock(&w->lock);
  ath_task_t** ts = dq->beats;
  size_t n = dq->nbeats;
  int64_t lease = dq->incarnation;
  if (n == 0 || lease <= 0) {
    uv_mutex_unlock(&w->lock);
    return;
  }
  dq->beats = NULL;
  dq->nbeats = dq->beats_cap = 0;
  memset(dq->beat_set.slots, 0, dq->beat_set.cap * sizeof(*dq->beat_set.slots));
  dq->beat_set.n = 0;
  cycle_t c;
  int made = cycle_alloc(&c, n, w->dq->qp) == 0;
  ath_task_t** bt = made ? calloc(n, sizeof(*bt)) : NULL;
  for (size_t i = 0; bt != NULL && i < n; i++) {
    ath_task_t* t = ts[i];
    if (ath__task_dq(t)->dq_attempt > 0 && !t->remote && t->status == ATH_RUNNING) {
      bt[c.nbeats] = t;
      add_beat(&c, t);
    }
  }
  uv_mutex_unlock(&w->lock);
  if (bt != NULL && c.nbeats > 0) {
    ath_queue_cycle_t pc = {.beats = c.beats, .n_beats = c.nbeats, .beat_applied = c.beat_applied, .lease = lease};
    int rc = ath__q_cycle(dq->wr, &pc);
    ath_worker_t* wake[MAX_WORKERS];
    int nwake = 0;
    uv_mutex_lock(&w->lock);
    for (size_t i = 0; i < c.nbeats; i++) {
      ath_task_t* t = bt[i];
      if (rc != 0) { /* written with the next renewal */
        defer_beat(dq, t);
      } else if (!c.beat_applied[i] && ath__task_dq(t)->dq_attempt == c.beats[i].attempt && !t->remote) {
        ath__logf(w, ATH_LOG_WARN, NULL, 0, "attempt %d of %s is no longer this node's (rescued): interrupted",
                  c.beats[i].attempt, t->id);
        nwake = fence_running(w, t, wake, nwake);
      }
    }
    uv_mutex_unlock(&w->lock);
    ath__wake_all(wake, nwake);
  }
  for (size_t i = 0; i < n; i++)
    ath_task_release(ts[i]);
  free(ts);
  free(bt);
  if (made)
    cycle_free(&c);
}

/* Renews the lease; registers a new incarnation after a loss (lock not held). */
/* This node's figures for its `nodes` row (§3.14), written with each lease
 * renewal (the same UPDATE: no statement of its own). Lock not held. */
static void node_metrics(ath_world_t* w, char* out, size_t len) {
  ath_queue_info_t qs[1];
  ath_metrics_t m = {.queues = qs, .queues_cap = 1};
  ath_world_metrics(w, &m);
  snprintf(out, len,
           "{\"at\":%" PRId64 ",\"tasks\":{\"queued\":%" PRId64 ",\"running\":%" PRId64 ",\"completed\":%" PRId64
           ",\"failed\":%" PRId64 ",\"retried\":%" PRId64 ",\"cancelled\":%" PRId64 ",\"quarantined\":%" PRId64
           "},\"throughput\":{\"perSecond\":%" PRId64 ",\"perMinute\":%" PRId64 "},\"workers\":{\"total\":%d"
           ",\"busy\":%d},\"workload\":%.4f,\"dbRetries\":%" PRId64 "}",
           ath__wall(w), (int64_t)m.queued, (int64_t)m.running, (int64_t)m.completed, (int64_t)m.failed,
           (int64_t)m.retried, (int64_t)m.cancelled, (int64_t)m.quarantined, (int64_t)m.per_second,
           (int64_t)m.per_minute, m.workers_total, m.workers_busy, m.workload, conn_retries(w->dq));
}

static void beat(ath_world_t* w, struct ath_dq_s* dq) {
  if (!dq->lease.lost) {
    char metrics[640];
    node_metrics(w, metrics, sizeof(metrics));
    int rc = ath__q_node_renew(dq->wr, &dq->lease, uv_hrtime(), metrics);
    if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->wr))
      ath__q_reset(dq->wr);
    if (rc == 0 && w->store_fault != 0) {
      uv_mutex_lock(&w->lock);
      healthy(w);
      uv_mutex_unlock(&w->lock);
    }
    if (rc == 0)
      flush_beats(w, dq);
    if (rc != ATH_EWORKERLOST && !ath__q_lease_fenced(&dq->lease, uv_hrtime()))
      return;
    ath_worker_t* wake[MAX_WORKERS];
    uv_mutex_lock(&w->lock);
    int nwake = self_fence(w, dq, wake, 0);
    dq->incarnation = 0; /* claims nothing until registered again */
    uv_mutex_unlock(&w->lock);
    ath__wake_all(wake, nwake);
    dq->lease.lost = 1;
  }
  ath_queue_node_t n;
  node_desc(dq, w, &n, 0);
  ath_queue_lease_t nl;
  if (ath__q_node_register(dq->wr, &n, uv_hrtime(), &nl) == 0) {
    uv_mutex_lock(&w->lock);
    dq->lease = nl;
    dq->incarnation = nl.incarnation;
    want_all(w, dq);
    uv_mutex_unlock(&w->lock);
    ath__logf(w, ATH_LOG_INFO, NULL, 0, "node %s registered again as incarnation %" PRId64, dq->node_id,
              nl.incarnation);
  }
}

/* The EWORKERLOST decision for a rescued attempt (SEMANTICS §12.3, §7.3). */
static void rescue_decide(ath_world_t* w, const char* why, const ath_queue_task_t* r,
                          ath_queue_outcome_t* o, char* err, size_t errlen) {
  const ath_def_t* def = NULL;
  for (int i = 0; i < w->ndefs; i++) /* immutable once started */
    if (strcmp(w->defs[i].name, r->name) == 0)
      def = &w->defs[i];
  int final = def == NULL || r->attempt >= r->max_attempts;
  for (char** nr = def ? def->non_retryable : NULL; nr && *nr && !final; nr++)
    final = strcmp(*nr, "EWORKERLOST") == 0;
  snprintf(err, errlen,
           "{\"code\":\"EWORKERLOST\",\"message\":\"%s\",\"retryable\":true,\"attempt\":%d}", why,
           r->attempt);
  memset(o, 0, sizeof(*o));
  o->seq = r->seq;
  o->attempt = r->attempt;
  o->error = err;
  if (final) {
    o->status = r->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED;
  } else {
    o->status = ATH_RETRYING;
    o->delay_ms = ath__backoff_ms(&def->a, r->attempt);
  }
}

/* Decides each rescued row (EWORKERLOST, `why`) and writes the outcomes
 * under `lease`, which holds them now (lock not held). Returns how many
 * were written, or -1. */
/* A leased activity past its scheduleToClose deadline that never ran out
 * its time here: failed (or quarantined) with ETIMEDOUT, as a waiting
 * local task is (world.c), whatever attempts are left. */
static void expire_decide(ath_world_t* w, const char* why, const ath_queue_task_t* r, ath_queue_outcome_t* o,
                          char* err, size_t errlen) {
  (void)w;
  snprintf(err, errlen, "{\"code\":\"ETIMEDOUT\",\"message\":\"%s\",\"retryable\":true,\"attempt\":%d}", why,
           r->attempt);
  memset(o, 0, sizeof(*o));
  o->seq = r->seq;
  o->attempt = r->attempt;
  o->error = err;
  o->status = r->strategy == ATH_STRATEGY_QUARANTINE ? ATH_QUARANTINED : ATH_FAILED;
}

typedef void (*decide_fn)(ath_world_t* w, const char* why, const ath_queue_task_t* r, ath_queue_outcome_t* o,
                          char* err, size_t errlen);

/* Finishes rows leased to `lease` as `decide` says, with their webhooks:
 * the count written, or -1. */
static int64_t finish_rows(ath_world_t* w, ath_queue_conn_t* q, int64_t lease, ath_queue_tasks_t* rows,
                           const char* why, decide_fn decide) {
  if (rows->n == 0)
    return 0;
  ath_queue_outcome_t* o = calloc(rows->n, sizeof(*o));
  char(*errs)[192] = calloc(rows->n, sizeof(*errs));
  uint8_t* applied = calloc(rows->n, 1);
  hooks_t h;
  int64_t done = -1;
  if (o && errs && applied && hooks_alloc(&h, rows->n) == 0) {
    for (size_t i = 0; i < rows->n; i++) {
      const ath_queue_task_t* r = &rows->rows[i];
      decide(w, why, r, &o[i], errs[i], sizeof(errs[i]));
      ath_hook_task_t f = {r->id, r->name, r->queue, r->parent_id, r->kind == 1, o[i].status, o[i].attempt,
                           errs[i], strlen(errs[i])};
      hooks_add(w, &h, r->seq, &f);
    }
    uv_mutex_lock(&w->lock);
    int live = live_hook(w) != NULL;
    uv_mutex_unlock(&w->lock);
    /* before the webhooks started (the restart's take-over): no owner, the
     * next poll of any node adopts them */
    ath_queue_cycle_t c = {.outcomes = o, .n_outcomes = rows->n, .applied = applied, .lease = lease,
                         .hooks = h.ev, .n_hooks = h.n, .hook_ids = h.ids, .hook_owner = live ? 0 : -1};
    if (ath__q_cycle(q, &c) == 0) {
      done = (int64_t)rows->n;
      uv_mutex_lock(&w->lock);
      hooks_send(w, &h);
      uv_mutex_unlock(&w->lock);
    }
    hooks_free(&h);
  }
  free(o);
  free(errs);
  free(applied);
  return done;
}

/* Rows rescued from dead nodes (rescue, take-over): workflow segments go
 * back to ready as resumptions, activities fail with EWORKERLOST, retried
 * per policy. */
static int64_t rescue_rows(ath_world_t* w, ath_queue_conn_t* q, int64_t lease, ath_queue_tasks_t* rows,
                           const char* why) {
  int segs = ath__wfpg_rescue(q, lease, rows); /* they leave rows: resumed on any node */
  if (segs > 0) {
    ath_log_field_t f[2] = {ATH_LOG_FINT("workflows", segs), ATH_LOG_FSTR("why", why)};
    ath__logf(w, ATH_LOG_WARN, f, 2, "workflow segments of lost nodes requeued (same run)");
  }
  return finish_rows(w, q, lease, rows, why, rescue_decide);
}

/* The leader's duties (lock not held): take or keep the lock, rescue the
 * tasks of expired nodes, stage what is late. */
/* Retention (the leader, every PRUNE_NS): finished tasks older than
 * cfg.retention_ms leave the database, PRUNE_LIMIT per statement, at
 * most 10 statements a pass (the next pass goes on). */
static void retain(ath_world_t* w, struct ath_dq_s* dq) {
  uint64_t now = uv_hrtime();
  if (dq->prune_ns != 0 && now < dq->prune_ns)
    return;
  dq->prune_ns = now + PRUNE_NS;
  int64_t total = 0;
  for (int pass = 0, n = PRUNE_LIMIT; pass < 10 && n == PRUNE_LIMIT; pass++) {
    if (ath__q_prune(dq->ldr, w->cfg.retention_ms, PRUNE_LIMIT, &n) != 0) {
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "retention pass failed: %s: %s", ath__q_name(dq->qp),
                ath__q_errmsg(dq->ldr));
      break;
    }
    total += n;
  }
  if (total > 0) {
    ath_log_field_t f[1] = {ATH_LOG_FINT("tasks", total)};
    ath__logf(w, ATH_LOG_INFO, f, 1, "retention: finished tasks deleted");
  }
}

static void lead(ath_world_t* w, struct ath_dq_s* dq) {
  int held = 0;
  if (ath__q_leader_try(dq->ldr, &held) != 0) {
    if (dq->leader)
      ath__logf(w, ATH_LOG_WARN, NULL, 0, "leader connection failed, stepping down: %s", ath__q_errmsg(dq->ldr));
    dq->leader = 0;
    ath__q_reset(dq->ldr);
    return;
  }
  if (!held) {
    dq->leader = 0;
    return;
  }
  uint64_t now = uv_hrtime();
  if (!dq->leader || dq->llease.lost ||
      ath__q_node_renew(dq->ldr, &dq->llease, now, NULL) != 0) {
    ath_queue_node_t n;
    node_desc(dq, w, &n, 1);
    if (ath__q_node_register(dq->ldr, &n, now, &dq->llease) != 0)
      return;
    if (!dq->leader) {
      ath__logf(w, ATH_LOG_INFO, NULL, 0, "node %s is the leader", dq->node_id);
      dq->sched_catchup = 1; /* what came due without a leader (sched_pg.c) */
    }
    dq->leader = 1;
  }
  ath_queue_tasks_t rows;
  int64_t grace = 10 * w->cfg.heartbeat_timeout_ms;
  if (ath__q_rescue(dq->ldr, dq->llease.incarnation, RESCUE_LIMIT, grace, &rows) == 0) {
    if (rescue_rows(w, dq->ldr, dq->llease.incarnation, &rows, "its node was declared lost (no heartbeat)") > 0) {
      uv_mutex_lock(&w->lock);
      dq->n_rescued += (int64_t)rows.n;
      uv_mutex_unlock(&w->lock);
      ath_log_field_t f[1] = {ATH_LOG_FINT("tasks", (int64_t)rows.n)};
      ath__logf(w, ATH_LOG_WARN, f, 1, "rescued the tasks of expired nodes (EWORKERLOST)");
    }
    ath__q_tasks_free(QP, &rows);
  }
  if (ath__q_expire(dq->ldr, dq->llease.incarnation, RESCUE_LIMIT, &rows) == 0) {
    int64_t n = finish_rows(w, dq->ldr, dq->llease.incarnation, &rows,
                            "scheduleToClose expired while the task waited", expire_decide);
    if (n > 0) {
      ath_log_field_t f[1] = {ATH_LOG_FINT("tasks", n)};
      ath__logf(w, ATH_LOG_INFO, f, 1, "failed waiting tasks past their scheduleToClose (ETIMEDOUT)");
    }
    ath__q_tasks_free(QP, &rows);
  }
  ath__q_stage(dq->ldr, NULL, 0, 1000, 1000, NULL); /* late: their node died */
  ath__q_vacuum_ready(dq->ldr); /* the claims' dead entries (distributed.md §3.9) */
  retain(w, dq);
}

/* The webhook thread delivered (or gave up) outbox row `id` (under the
 * hook's lock; never the world lock: the world lock is held around emits). */
static void hook_done(void* ud, int64_t id) {
  struct ath_dq_s* dq = ud;
  uv_mutex_lock(&dq->hook_lock);
  if (dq->nhooks_done == dq->hooks_done_cap) {
    size_t cap = dq->hooks_done_cap ? dq->hooks_done_cap * 2 : 64;
    int64_t* a = realloc(dq->hooks_done, cap * sizeof(*a));
    if (a != NULL) {
      dq->hooks_done = a;
      dq->hooks_done_cap = cap;
    }
  }
  if (dq->nhooks_done < dq->hooks_done_cap) /* else it is sent again after this node's end */
    dq->hooks_done[dq->nhooks_done++] = id;
  uv_mutex_unlock(&dq->hook_lock);
}

/* Deletes the delivered outbox rows (lock not held); on failure they wait
 * for the next try. */
static void flush_hooks_done(struct ath_dq_s* dq) {
  uv_mutex_lock(&dq->hook_lock);
  int64_t* ids = dq->hooks_done;
  size_t n = dq->nhooks_done;
  dq->hooks_done = NULL;
  dq->nhooks_done = dq->hooks_done_cap = 0;
  uv_mutex_unlock(&dq->hook_lock);
  if (n > 0 && ath__q_hooks_done(dq->wr, ids, n) != 0) {
    for (size_t i = 0; i < n; i++)
      hook_done(dq, ids[i]);
  }
  free(ids);
}

/* Sends the outbox rows no live node owns (lock not held): events of a node
 * killed between its commit and their delivery, or stopped before it. */
static void adopt_hooks(ath_world_t* w, struct ath_dq_s* dq, int64_t inc) {
  uv_mutex_lock(&w->lock);
  ath_hook_t* hook = live_hook(w);
  uv_mutex_unlock(&w->lock);
  ath_queue_outbox_t* rows;
  size_t n;
  if (hook == NULL || inc <= 0 || ath__q_hooks_adopt(dq->wr, inc, 1000, &rows, &n) != 0)
    return;
  if (n > 0)
    ath__logf(w, ATH_LOG_INFO, NULL, 0, "sending %zu webhook event(s) of stopped or lost nodes", n);
  for (size_t i = 0; i < n; i++) {
    if (ath__hook_wants(hook, rows[i].kind)) {
      ath__hook_emit_stored(hook, rows[i].kind, rows[i].delivery, rows[i].at, rows[i].body,
                            strlen(rows[i].body), rows[i].id);
      rows[i].body = NULL;
    } else {
      hook_done(dq, rows[i].id); /* this node's webhookEvents leave it out */
    }
  }
  ath__q_outbox_free(dq->qp, rows, n);
}

/* The poll (lock not held): stage what is due, re-read watched proxies. */
static void poll_once(ath_world_t* w, struct ath_dq_s* dq) {
  ath__q_stage(dq->wr, NULL, 0, 0, 1000, NULL);
  int64_t* seqs = NULL;
  size_t n = 0;
  uv_mutex_lock(&w->lock);
  seqset_t* s = &dq->watch;
  if (s->n > 0 && (seqs = malloc(WATCH_POLL * sizeof(*seqs))) != NULL) {
    for (size_t k = 0; k < s->cap && n < WATCH_POLL; k++) {
      size_t i = (s->cursor + k) & (s->cap - 1);
      if (s->slots[i] != 0)
        seqs[n++] = s->slots[i];
      if (n == WATCH_POLL)
        s->cursor = i + 1;
    }
  }
  int64_t inc = dq->incarnation;
  uv_mutex_unlock(&w->lock);
  read_ended(w, dq, seqs, n);
  free(seqs);
  if (w->cfg.webhook_url != NULL)
    adopt_hooks(w, dq, inc);
  int64_t* cs = NULL;
  size_t nc = 0;
  if (inc > 0 && ath__q_cancelled(dq->wr, inc, &cs, &nc) == 0 && nc > 0) {
    ath_worker_t* wake[MAX_WORKERS];
    uv_mutex_lock(&w->lock);
    int nwake = apply_cancels(w, cs, nc, wake, 0);
    uv_mutex_unlock(&w->lock);
    ath__wake_all(wake, nwake);
  }
  free(cs);
}

/* At shutdown (lock held): buffered tasks go back unrun (T14). */
static void hand_back(ath_world_t* w) {
  for (int qi = 0; qi < w->nqueues; qi++) {
    ath_queue_t* q = w->queues[qi];
    for (int b = 0; b < q->nbuckets; b++) {
      for (ath_task_t* t = q->buckets[b].head; t != NULL; t = q->buckets[b].head) {
        ath__list_unlink(&q->buckets[b], t);
        q->depth--;
        t->remote = 1;
        ath__store_mark(w, t);
      }
    }
  }
}

static uint64_t jittered(uint64_t ns) {
  return ns + (uint64_t)(ath__random01() * 0.1 * (double)ns);
}

static void backend_main(void* arg) {
  ath_world_t* w = arg;
  struct ath_dq_s* dq = w->dq;
  uint64_t poll_ns = (uint64_t)w->cfg.poll_interval_ms * 1000000u;
  uint64_t beat_ns = (uint64_t)w->cfg.heartbeat_interval_ms * 1000000u;
  uint64_t flush_ns = (uint64_t)w->cfg.flush_interval_ms * 1000000u;
  uint64_t next_poll = uv_hrtime(), next_beat = uv_hrtime() + beat_ns, next_lead = uv_hrtime();
  int hook_cb = 0;
  uv_mutex_lock(&w->lock);
  for (;;) {
    if (!hook_cb && live_hook(w) != NULL) { /* the webhooks start after this thread */
      ath__hook_on_done(w->hook, hook_done, dq);
      hook_cb = 1;
    }
    uint64_t now = uv_hrtime();
    int stopping = w->store_stop;
    int do_sched = dq->leader && (dq->sched_scan || (dq->sched_at_ns != 0 && now >= dq->sched_at_ns));
    if (dq->lead_now && !dq->leader) /* a resigning leader: the next try is now */
      next_lead = now;
    dq->lead_now = 0;
    if (!stopping && (now >= next_beat || now >= next_lead || now >= next_poll || dq->ndone > 0 ||
                      dq->ncancel > 0 || do_sched || (dq->stage_at != 0 && ath__wall(w) >= dq->stage_at))) {
      int do_beat = now >= next_beat, do_lead = now >= next_lead, do_poll = now >= next_poll;
      dq->sched_scan = 0;
      int do_stage = dq->stage_at != 0 && ath__wall(w) >= dq->stage_at;
      if (do_stage)
        dq->stage_at = 0;
      int64_t* done = dq->done;
      size_t ndone = dq->ndone;
      dq->done = NULL;
      dq->ndone = dq->done_cap = 0;
      ath_worker_t* wake[MAX_WORKERS];
      int nwake = apply_cancels(w, dq->cancels, dq->ncancel, wake, 0);
      dq->ncancel = 0;
      if (do_poll)
        want_all(w, dq); /* the claims ride on the next cycle */
      uv_mutex_unlock(&w->lock);
      ath__wake_all(wake, nwake);
      if (do_beat) {
        flush_hooks_done(dq);
        beat(w, dq);
        next_beat = uv_hrtime() + beat_ns;
      }
      if (do_lead && dq->ldr != NULL) {
        lead(w, dq);
        next_lead = uv_hrtime() + jittered(beat_ns);
      }
      if (do_poll) {
        poll_once(w, dq);
        next_poll = uv_hrtime() + jittered(poll_ns);
      } else if (do_stage) {
        ath__q_stage(dq->wr, NULL, 0, 0, 1000, NULL);
      }
      /* the schedules: when one is due, on athena_sched, at the poll (the
       * correctness path), and at once on taking the lead (catch-up; a
       * failed pass is tried again with the next lead or poll) */
      if (dq->leader && (do_sched || do_poll || (do_lead && dq->sched_catchup))) {
        int catchup = dq->sched_catchup;
        if (ath__pgsched_fire(w, dq->ldr, catchup, &dq->sched_at_ns) == 0)
          dq->sched_catchup = 0;
        else
          dq->sched_at_ns = 0; /* not a busy loop: the next poll or lead tries again */
      } else if (!dq->leader) {
        dq->sched_at_ns = 0;
      }
      read_ended(w, dq, done, ndone);
      free(done);
      uv_mutex_lock(&w->lock);
      continue;
    }
    if (stopping && w->ndirty == 0) {
      hand_back(w); /* buffered tasks: T14, in one last cycle */
      if (w->ndirty == 0)
        break;
    }
    int claiming = !stopping && w->state == ATH_W_STARTED && dq->incarnation > 0;
    int hungry = 0;
    for (int i = 0; claiming && i < w->nqueues && !hungry; i++)
      hungry = claim_size(w, dq, i) > 0;
    if (w->ndirty > 0 || hungry) {
      int rc = run_cycle(w, dq, claiming);
      if (rc != 0) {
        if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->wr)) { /* reconnect; the database takes writes again */
          uv_mutex_unlock(&w->lock);
          int ok = ath__q_reset(dq->wr) == 0;
          if (ok)
            audit_leases(w, dq);
          uv_mutex_lock(&w->lock);
          if (ok)
            healthy(w);
        }
        if (w->store_stop && !w->store_ok)
          break; /* shutting down with a database that keeps failing */
        uv_cond_timedwait(&w->store_cond, &w->lock, RETRY_NS);
      } else {
        healthy(w);
      }
      continue;
    }
    uint64_t until = next_poll < next_beat ? next_poll : next_beat;
    if (dq->ldr != NULL && next_lead < until)
      until = next_lead;
    if (dq->leader && dq->sched_at_ns != 0 && dq->sched_at_ns < until)
      until = dq->sched_at_ns;
    if (dq->stage_at != 0) {
      int64_t left = dq->stage_at - ath__wall(w);
      uint64_t at = now + (uint64_t)(left > 0 ? left : 0) * 1000000u;
      if (at < until)
        until = at;
    }
    if (w->state == ATH_W_NEW && until > now + 20000000u)
      until = now + 20000000u; /* its workers are starting: claim as soon as they are up */
    if (w->cfg.persistence != ATH_PERSIST_FILE && until > now + flush_ns)
      until = now + flush_ns; /* hybrid: changes do not signal, they are collected every flushInterval */
    if (until > now)
      uv_cond_timedwait(&w->store_cond, &w->lock, until - now);
  }
  uv_mutex_unlock(&w->lock);
}

/* ------------------------------------------------------------ reads (the store vtable) */

static int pg_get(void* s, const char* id, ath_row_cb cb, void* ud, char* err, size_t errlen) {
  struct ath_dq_s* dq = (struct ath_dq_s*)s;
  ath_queue_tasks_t rows;
  uv_mutex_lock(&dq->rd_lock);
  int rc = ath__q_get(dq->rd, id, &rows);
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->rd) && ath__q_reset(dq->rd) == 0)
    rc = ath__q_get(dq->rd, id, &rows);
  if (rc != 0)
    snprintf(err, errlen, "%s: %s", ath__q_name(dq->qp), ath__q_errmsg(dq->rd));
  uv_mutex_unlock(&dq->rd_lock);
  if (rc != 0)
    return rc;
  if (rows.n == 0) {
    ath__q_tasks_free(dq->qp, &rows);
    return ATH_ENOTFOUND;
  }
  ath_row_t row;
  row_of(&rows.rows[0], &row);
  rc = cb(ud, &row);
  ath__q_tasks_free(dq->qp, &rows);
  return rc;
}

/* Every status, not only the finished ones: the database is the cluster's
 * truth, and world.c merges what this node holds newer (ath_world_query_tasks). */
static int pg_query(void* s, const ath_store_query_t* q, ath_row_cb cb, void* ud, char* err,
                    size_t errlen) {
  struct ath_dq_s* dq = (struct ath_dq_s*)s;
  ath_queue_query_t f = {q->status_mask, q->name, q->parent_id, q->since, q->until, q->limit,
                       q->by_seq, (int64_t)q->after_seq};
  ath_queue_tasks_t rows;
  uv_mutex_lock(&dq->rd_lock);
  int rc = ath__q_query(dq->rd, &f, &rows);
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->rd) && ath__q_reset(dq->rd) == 0)
    rc = ath__q_query(dq->rd, &f, &rows);
  if (rc != 0)
    snprintf(err, errlen, "%s: %s", ath__q_name(dq->qp), ath__q_errmsg(dq->rd));
  uv_mutex_unlock(&dq->rd_lock);
  for (size_t i = 0; rc == 0 && i < rows.n; i++) {
    ath_row_t row;
    row_of(&rows.rows[i], &row);
    rc = cb(ud, &row);
  }
  ath__q_tasks_free(dq->qp, &rows);
  return rc;
}

static void dq_free(struct ath_dq_s* dq) {
  if (dq == NULL)
    return;
  ath__q_close(dq->wr);
  ath__q_close(dq->ldr);
  ath__q_close(dq->lis);
  ath__q_close(dq->rd);
  uv_mutex_destroy(&dq->rd_lock);
  uv_mutex_destroy(&dq->hook_lock);
  free(dq->hooks_done);
  free(dq->queue_names);
  free(dq->more);
  free(dq->full);
  free(dq->done);
  free(dq->cancels);
  free(dq->watch.slots);
  free(dq->early.slots);
  for (size_t i = 0; i < dq->nbeats; i++)
    ath_task_release(dq->beats[i]);
  free(dq->beats);
  free(dq->beat_set.slots);
  ath__q_counts_free(dq->qp, &dq->counts);
  free(dq);
}

static void pg_close(void* s) {
  struct ath_dq_s* dq = (struct ath_dq_s*)s;
  ath_world_t* w = dq->w;
  dq_free(dq);
  w->dq = NULL;
}

static const ath_store_vt_t pg_reads = {
  .size = sizeof(ath_store_provider_t), .name = "postgres", .get = pg_get, .query = pg_query, .close = pg_close,
};

/* ------------------------------------------------------------ start, stop */

int ath__dq_check(const ath_world_config_t* cfg, char* err, size_t errlen) {
  const ath_queue_provider_t* p = cfg->queue != NULL ? cfg->queue : ath_postgres_queue();
  int rc = ath__q_check(p, err, errlen);
  if (rc == 0 && cfg->webhook_url != NULL && !ath__q_can_outbox(p)) {
    snprintf(err, errlen, "invalid backend: webhooks need the queue provider's outbox (%s has no hooks_done, "
             "hooks_adopt, outbox_free)", ath__q_name(p));
    rc = ATH_EINVAL;
  }
  return rc;
}

const ath_queue_provider_t* ath__dq_provider(ath_world_t* w) {
  return provider_of(w);
}

int ath__dq_workflows(ath_world_t* w, char* err, size_t errlen) {
  if (ath__q_can_workflows(QP))
    return 0;
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, "the queue provider %s runs no workflows (it has no wf_requeue, wf_take)",
             ath__q_name(QP));
  return ATH_ENOSYS;
}

static int open_conn(ath_world_t* w, int notify, ath_queue_conn_t** out, char* err, size_t errlen) {
  const ath_queue_provider_t* p = provider_of(w);
  return p->open(p->ud, w->cfg.backend_url, w->cfg.backend_schema, notify, out, err, errlen);
}

static void stop_listener(struct ath_dq_s* dq) {
  if (!dq->lis_started)
    return;
  ssize_t k = write(dq->lis_pipe[1], "x", 1);
  (void)k;
  uv_thread_join(&dq->lis_thread);
  close(dq->lis_pipe[0]);
  close(dq->lis_pipe[1]);
  dq->lis_started = 0;
}

/* After the backend thread ended (ath__store_stop): give up the lease and
 * the leader lock, stop listening. The reader stays for the world's reads. */
/* The conflict retries of this node's connections (their counters are atomic). */
static int64_t conn_retries(struct ath_dq_s* dq) {
  return ath__q_retries(dq->wr) + ath__q_retries(dq->ldr) + ath__q_retries(dq->rd);
}

int64_t ath__world_db_retries(ath_world_t* w) {
  struct ath_dq_s* dq = w->dq;
  if (dq == NULL)
    return -1;
  uv_mutex_lock(&dq->rd_lock); /* the writer and leader close at stop under it */
  int64_t n = dq->wr != NULL ? conn_retries(dq) : atomic_load(&dq->retries_closed);
  uv_mutex_unlock(&dq->rd_lock);
  return n;
}

void ath__pgstore_stopped(ath_world_t* w) {
  struct ath_dq_s* dq = w->dq;
  if (dq == NULL)
    return;
  stop_listener(dq);
  ath__hook_on_done(w->hook, NULL, NULL); /* later deliveries are sent again by another node */
  flush_hooks_done(dq);
  if (dq->incarnation > 0)
    ath__q_node_release(dq->wr, &dq->lease);
  if (dq->leader) {
    ath__q_node_release(dq->ldr, &dq->llease);
    ath__q_leader_resign(dq->ldr);
  }
  uv_mutex_lock(&dq->rd_lock); /* ath__world_db_retries reads them under it */
  int64_t retries = conn_retries(dq);
  atomic_store(&dq->retries_closed, retries); /* the connections go: their counts stay */
  ath__q_close(dq->wr);
  ath__q_close(dq->ldr);
  ath__q_close(dq->lis);
  dq->wr = dq->ldr = dq->lis = NULL;
  uv_mutex_unlock(&dq->rd_lock);
  ath_log_field_t f[5] = {ATH_LOG_FINT("claimed", dq->n_claimed), ATH_LOG_FINT("lost", dq->n_lost),
                          ATH_LOG_FINT("rescued", dq->n_rescued), ATH_LOG_FINT("notifications", dq->n_notified),
                          ATH_LOG_FINT("conflict_retries", retries)};
  ath__logf(w, ATH_LOG_INFO, f, 5, "%s backend stopped", ath__q_name(QP));
}

/* At start, as the new incarnation (lock not held): the tasks an earlier
 * incarnation of this nodeId still leases (a crash, a kill -9) are this
 * node's to rescue now, not after heartbeatTimeout (distributed.md §3.8);
 * that incarnation is fenced in the same statement. */
static int take_over(ath_world_t* w, struct ath_dq_s* dq) {
  ath_queue_tasks_t rows;
  int rc = ath__q_take_over(dq->wr, dq->node_id, dq->lease.incarnation, &rows);
  if (rc != 0)
    return rc;
  int64_t n = rescue_rows(w, dq->wr, dq->lease.incarnation, &rows, "its node restarted");
  ath__q_tasks_free(QP, &rows);
  if (n < 0)
    return ATH_ESTORE;
  dq->n_rescued += n;
  if (n > 0) {
    ath_log_field_t f[1] = {ATH_LOG_FINT("tasks", n)};
    ath__logf(w, ATH_LOG_WARN, f, 1, "recovered the running tasks of this node's previous run (EWORKERLOST)");
  }
  return 0;
}

/* One live process per nodeId (distributed.md §6.2 item 8): the writer's
 * session holds the node's lock for its life. A process killed a moment ago
 * may still hold it while the server notices its closed connection: tried
 * for up to 2 s, then ATH_EBUSY. A live holder (even a stopped one: its
 * session stays open) keeps it. */
static int node_lock(struct ath_dq_s* dq, char* err, size_t errlen) {
  uint64_t until = uv_hrtime() + 2000000000u;
  for (;;) {
    int held = 0;
    int rc = ath__q_node_lock(dq->wr, dq->node_id, &held);
    if (rc != 0) {
      snprintf(err, errlen, "%s backend: locking node %s: %s", ath__q_name(dq->qp), dq->node_id, ath__q_errmsg(dq->wr));
      return rc;
    }
    if (held)
      return 0;
    if (uv_hrtime() >= until) {
      snprintf(err, errlen,
               "PostgreSQL backend: nodeId %s is in use by another live process on this schema (give each "
               "process its own nodeId; a crashed process's lock frees when its session ends)",
               dq->node_id);
      return ATH_EBUSY;
    }
    uv_sleep(50);
  }
}

int ath__pgstore_start(ath_world_t* w, char* err, size_t errlen) {
  struct ath_dq_s* dq = calloc(1, sizeof(*dq));
  if (dq == NULL)
    return ATH_ENOMEM;
  dq->w = w;
  dq->qp = provider_of(w);
  dq->notify = !w->cfg.backend_poll_only && ath__q_can_notify(dq->qp);
  uv_mutex_init(&dq->rd_lock);
  uv_mutex_init(&dq->hook_lock);
  dq->lis_pipe[0] = dq->lis_pipe[1] = -1;
  char host[200] = "localhost";
  gethostname(host, sizeof(host) - 1);
  if (w->cfg.node_id != NULL)
    snprintf(dq->node_id, sizeof(dq->node_id), "%s", w->cfg.node_id);
  else
    snprintf(dq->node_id, sizeof(dq->node_id), "%s:%d", host, (int)getpid());
  dq->more = calloc((size_t)w->nqueues, sizeof(int));
  dq->full = calloc((size_t)w->nqueues, sizeof(int));
  dq->queue_names = calloc((size_t)w->nqueues + 1, sizeof(char*));
  int rc = dq->more && dq->full && dq->queue_names ? 0 : ATH_ENOMEM;
  for (int i = 0, k = 0; rc == 0 && i < w->nqueues; i++) {
    ath_queue_t* q = w->queues[i];
    int workers = i == 0 ? w->cfg.min_workers : q->workers;
    if (workers > 0)
      dq->queue_names[k++] = q->name;
    dq->slots += workers * q->concurrency;
  }
  if (rc == 0)
    rc = open_conn(w, dq->notify, &dq->wr, err, errlen);
  if (rc == 0)
    rc = open_conn(w, dq->notify, &dq->ldr, err, errlen);
  if (rc == 0)
    rc = open_conn(w, dq->notify, &dq->rd, err, errlen);
  if (rc == 0 && dq->notify)
    rc = open_conn(w, 0, &dq->lis, err, errlen);
  if (rc == 0 && (rc = ath__q_migrate(dq->wr, NULL)) != 0)
    snprintf(err, errlen, "%s backend: %s", ath__q_name(QP), ath__q_errmsg(dq->wr));
  if (rc == 0 && dq->lis != NULL && (rc = ath__q_listen(dq->lis, CHANNELS)) != 0)
    snprintf(err, errlen, "%s backend: LISTEN: %s", ath__q_name(QP), ath__q_errmsg(dq->lis));
  if (rc == 0)
    rc = node_lock(dq, err, errlen);
  ath_queue_node_t n;
  node_desc(dq, w, &n, 0);
  if (rc == 0 && (rc = ath__q_node_register(dq->wr, &n, uv_hrtime(), &dq->lease)) != 0)
    snprintf(err, errlen, "%s backend: registering node %s: %s", ath__q_name(QP), dq->node_id, ath__q_errmsg(dq->wr));
  if (rc == 0 && (rc = take_over(w, dq)) != 0)
    snprintf(err, errlen, "%s backend: recovering node %s's earlier tasks: %s", ath__q_name(QP), dq->node_id,
             ath__q_errmsg(dq->wr));
  if (rc == 0 && dq->lis != NULL && pipe(dq->lis_pipe) != 0) {
    snprintf(err, errlen, "cannot make a pipe: %s", strerror(errno));
    rc = ATH_ENOMEM;
  }
  if (rc != 0) {
    if (dq->lis_pipe[0] >= 0) {
      close(dq->lis_pipe[0]);
      close(dq->lis_pipe[1]);
    }
    dq_free(dq);
    return rc == ATH_EINVAL || rc == ATH_EBUSY ? rc : ATH_ESTORE;
  }
  dq->incarnation = dq->lease.incarnation;
  uv_cond_init(&w->store_cond);
  w->dq = dq;
  w->svt = &pg_reads;
  w->gen = 1;
  w->committed_gen = 0;
  w->store_ok = 1;
  w->store = (ath_store_t*)dq; /* changes are marked from here on */
  w->reads = (ath_store_t*)dq; /* and tasks read back from the database */
  if (dq->lis != NULL) {
    if (uv_thread_create(&dq->lis_thread, listener_main, dq) == 0)
      dq->lis_started = 1;
  }
  int trc = uv_thread_create(&w->store_thread, backend_main, w);
  if (trc != 0) {
    snprintf(err, errlen, "cannot start the backend thread: %s", uv_strerror(trc));
    stop_listener(dq);
    w->store = w->reads = NULL;
    w->dq = NULL;
    uv_cond_destroy(&w->store_cond);
    dq_free(dq);
    return ATH_ENOMEM;
  }
  ath_log_field_t f[3] = {ATH_LOG_FSTR("node", dq->node_id), ATH_LOG_FINT("incarnation", dq->incarnation),
                          ATH_LOG_FSTR("schema", w->cfg.backend_schema ? w->cfg.backend_schema : "athena")};
  ath__logf(w, ATH_LOG_INFO, f, 3, "%s backend started", ath__q_name(QP));
  return 0;
}

/* Workflow `seq` was cancelled in its row (no node held it): its children
 * are cancelled as if it had ended here (lock not held). */
static void cancel_children(ath_world_t* w, struct ath_dq_s* dq, int64_t seq) {
  ath_queue_cycle_t c = {.kids = &seq, .n_kids = 1};
  uv_mutex_lock(&dq->rd_lock);
  int rc = ath__q_cycle(dq->rd, &c);
  uv_mutex_unlock(&dq->rd_lock);
  if (rc == 0)
    take_cancelled(w, dq->rd, &dq->rd_lock, &seq, 1, 1);
}

int ath__dq_cancel(ath_world_t* w, ath_task_t* t) {
  struct ath_dq_s* dq = w->dq;
  uv_mutex_lock(&w->lock);
  /* its insert has not committed yet (hybrid): wait for it */
  while (ath__task_dq(t)->dq_seq <= 0 && !t->withdrawn && w->store != NULL && !ATH_IS_TERMINAL(t->status)) {
    uv_cond_signal(&w->store_cond);
    uv_cond_wait(&w->cond, &w->lock);
  }
  int64_t seq = ath__task_dq(t)->dq_seq;
  int ended = ATH_IS_TERMINAL(t->status);
  uv_mutex_unlock(&w->lock);
  if (ended || seq <= 0)
    return 0;
  int how = 0;
  uv_mutex_lock(&dq->rd_lock);
  int rc = ath__q_cancel(dq->rd, seq, &how);
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->rd) && ath__q_reset(dq->rd) == 0)
    rc = ath__q_cancel(dq->rd, seq, &how);
  uv_mutex_unlock(&dq->rd_lock);
  if (rc != 0)
    return 0;
  if (how == 3) /* a parked workflow: cancelled here at once */
    take_cancelled(w, dq->rd, &dq->rd_lock, &seq, 1, 0);
  if (how == 1 && t->wf != NULL) /* a workflow between runs: the children of its last run too */
    cancel_children(w, dq, seq);
  if (how == 1) { /* cancelled at once: its waiters here hear it now */
    ath_worker_t* wake[MAX_WORKERS];
    uv_mutex_lock(&w->lock);
    int nwake = 0;
    if (t->remote && !ATH_IS_TERMINAL(t->status)) {
      seq_del(&dq->watch, seq);
      t->err_code = ATH_ECANCELED;
      nwake = ath__finish_remote(w, t, ATH_CANCELLED, ath__wall(w), wake, 0);
    }
    /* no node ran it: this node's statement ended it (its proxy may have
     * heard so first, through athena_done), so this node tells, after the
     * commit, from memory: at most once, unlike a finish's events */
    ath__hook_emit_task(live_hook(w), ATH_EV_TASK_CANCELLED, ath__wall(w), t, t->error, t->error ? t->error_len : 0);
    uv_mutex_unlock(&w->lock);
    ath__wake_all(wake, nwake);
  }
  return how != 0;
}

ath_queue_conn_t* ath__dq_reader(ath_world_t* w) {
  struct ath_dq_s* dq = w->dq;
  if (dq == NULL)
    return NULL;
  uv_mutex_lock(&dq->rd_lock);
  return dq->rd;
}

void ath__dq_reader_done(ath_world_t* w) {
  uv_mutex_unlock(&w->dq->rd_lock);
}

int ath__dq_dead_letter(ath_world_t* w, const char* id, int purge, int64_t* seq, int* how) {
  struct ath_dq_s* dq = w->dq;
  int status;
  int (*op)(ath_queue_conn_t*, const char*, int64_t*, int*, int*) = purge ? ath__q_purge : ath__q_requeue;
  uv_mutex_lock(&dq->rd_lock);
  int rc = op(dq->rd, id, seq, &status, how);
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->rd) && ath__q_reset(dq->rd) == 0)
    rc = op(dq->rd, id, seq, &status, how);
  if (rc != 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "%s of %s failed: PostgreSQL: %s", purge ? "purge" : "requeue", id,
              ath__q_errmsg(dq->rd));
  uv_mutex_unlock(&dq->rd_lock);
  if (rc == 0 && *how == 1 && !purge) { /* this node may serve its queue: claim now */
    uv_mutex_lock(&w->lock);
    want_all(w, dq);
    uv_cond_signal(&w->store_cond);
    uv_mutex_unlock(&w->lock);
  }
  return rc;
}

/* ------------------------------------------------------------ cluster counts */

/* Brings the cached counts up to date (rd_lock held): 0, or the read's
 * error with the cache left as it was. */
static int counts_fresh(struct ath_dq_s* dq, char* err, size_t errlen) {
  uint64_t now = uv_hrtime();
  if (dq->counts_ns != 0 && now - dq->counts_ns < COUNTS_TTL_NS)
    return 0;
  ath_queue_counts_t c;
  int rc = ath__q_counts(dq->rd, &c);
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->rd) && ath__q_reset(dq->rd) == 0)
    rc = ath__q_counts(dq->rd, &c);
  if (rc != 0) {
    snprintf(err, errlen, "%s: %s", ath__q_name(dq->qp), ath__q_errmsg(dq->rd));
    return rc;
  }
  ath__q_counts_free(dq->qp, &dq->counts);
  dq->counts = c;
  dq->counts_ns = now;
  return 0;
}

static void json_field(ath_buf_t* b, const char* key, int64_t v, int first) {
  ath__buf_append(b, first ? "\"" : ",\"", first ? 1 : 2);
  ath__buf_append(b, key, strlen(key));
  ath__buf_lit(b, "\":");
  ath__buf_i64(b, v);
}

int ath__world_cluster(ath_world_t* w, char** json, char* err, size_t errlen) {
  struct ath_dq_s* dq = w->dq;
  *json = NULL;
  if (dq == NULL) {
    snprintf(err, errlen, "%s", "cluster counts need the PostgreSQL backend");
    return ATH_EINVAL;
  }
  ath_buf_t b = {0};
  uv_mutex_lock(&dq->rd_lock);
  int rc = counts_fresh(dq, err, errlen);
  if (rc == 0) {
    const ath_queue_counts_t* c = &dq->counts;
    ath__buf_lit(&b, "{\"node\":");
    ath__buf_json_str(&b, dq->node_id);
    ath__buf_lit(&b, ",\"leader\":");
    if (c->leader != NULL)
      ath__buf_json_str(&b, c->leader);
    else
      ath__buf_lit(&b, "null");
    json_field(&b, "nodes", c->nodes, 0);
    ath__buf_lit(&b, ",\"tasks\":{");
    json_field(&b, "queued", c->queued, 1);
    json_field(&b, "scheduled", c->scheduled, 0);
    json_field(&b, "running", c->running, 0);
    ath__buf_lit(&b, "},\"throughput\":{");
    json_field(&b, "windowMs", ATH_QUEUE_RATE_WINDOW_MS, 1);
    json_field(&b, "completed", c->completed_window, 0);
    char t[160];
    int tn = snprintf(t, sizeof(t), ",\"perSecond\":%.1f},\"startLatencyMs\":{\"p50\":%.1f,\"p95\":%.1f,\"p99\":%.1f",
                      (double)c->completed_window * 1000.0 / ATH_QUEUE_RATE_WINDOW_MS, c->start_latency_ms[0],
                      c->start_latency_ms[1], c->start_latency_ms[2]);
    ath__buf_append(&b, t, (size_t)tn);
    ath__buf_lit(&b, "},\"queues\":{");
    for (size_t i = 0; i < c->nqueues; i++) {
      const ath_queue_qcount_t* x = &c->queues[i];
      if (i > 0)
        ath__buf_lit(&b, ",");
      ath__buf_json_str(&b, x->queue);
      ath__buf_lit(&b, ":{");
      json_field(&b, "depth", x->depth, 1);
      json_field(&b, "oldestAgeMs", x->oldest_age_ms, 0);
      json_field(&b, "scheduled", x->scheduled, 0);
      json_field(&b, "running", x->running, 0);
      ath__buf_lit(&b, "}");
    }
    ath__buf_lit(&b, "}}");
  }
  uv_mutex_unlock(&dq->rd_lock);
  if (rc == 0 && b.data == NULL) {
    snprintf(err, errlen, "%s", "out of memory");
    rc = ATH_ENOMEM;
  }
  if (rc != 0) {
    ath__buf_free(&b);
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "reading the cluster's counts failed: %s", err);
  } else {
    *json = b.data;
  }
  return rc;
}

/* A Prometheus label value: \, " and newline escaped. */
static void prom_label(ath_buf_t* b, const char* s) {
  for (const char* p = s; *p; p++) {
    const char* e = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
    if (e != NULL)
      ath__buf_append(b, e, 2);
    else
      ath__buf_append(b, p, 1);
  }
}

/* name{label="value"} v (v / 1000 with 3 decimals when `ms`). */
static void prom_line(ath_buf_t* b, const char* name, const char* label, const char* value,
                      int64_t v, int ms) {
  ath__buf_append(b, name, strlen(name));
  if (label != NULL) {
    ath__buf_lit(b, "{");
    ath__buf_append(b, label, strlen(label));
    ath__buf_lit(b, "=\"");
    prom_label(b, value);
    ath__buf_lit(b, "\"}");
  }
  char t[32];
  int n = ms ? snprintf(t, sizeof(t), " %.3f\n", (double)v / 1000) : snprintf(t, sizeof(t), " %" PRId64 "\n", v);
  ath__buf_append(b, t, (size_t)n);
}

int ath__world_node_labels(ath_world_t* w, ath_buf_t* b) {
  struct ath_dq_s* dq = w->dq;
  if (dq == NULL || b->data == NULL)
    return 0;
  char line[320]; /* this node's own series of the backend, labelled below like the others */
  int n = snprintf(line, sizeof(line),
                   "# HELP athena_db_retries_total Transactions run again after a deadlock (40P01) or a"
                   " serialization conflict (40001).\n# TYPE athena_db_retries_total counter\n"
                   "athena_db_retries_total %" PRId64 "\n",
                   ath__world_db_retries(w));
  ath__buf_append(b, line, (size_t)n);
  ath_buf_t label = {0}, out = {0};
  ath__buf_lit(&label, "node=\"");
  prom_label(&label, dq->node_id);
  ath__buf_lit(&label, "\"");
  if (label.data == NULL)
    return ATH_ENOMEM;
  for (const char* p = b->data; p < b->data + b->len;) {
    const char* end = memchr(p, '\n', (size_t)(b->data + b->len - p));
    size_t len = end ? (size_t)(end - p) + 1 : (size_t)(b->data + b->len - p);
    size_t name = strcspn(p, "{ \n");
    if (*p == '#' || name >= len || (p[name] != '{' && p[name] != ' ')) {
      ath__buf_append(&out, p, len); /* a comment, or not a sample */
    } else {
      ath__buf_append(&out, p, name);
      ath__buf_lit(&out, "{");
      ath__buf_append(&out, label.data, label.len);
      if (p[name] == '{') /* name{a="b"} v -> name{node="n",a="b"} v */
        ath__buf_lit(&out, ",");
      else
        ath__buf_lit(&out, "}");
      ath__buf_append(&out, p + name + (p[name] == '{'), len - name - (p[name] == '{'));
    }
    p += len;
  }
  ath__buf_free(&label);
  if (out.data == NULL)
    return ATH_ENOMEM;
  ath__buf_free(b);
  *b = out;
  return 0;
}

/* The cluster's throughput and pickup latency over the rate window. */
static void cluster_rates_prom(ath_buf_t* b, const ath_queue_counts_t* c) {
  char t[512];
  int n = snprintf(t, sizeof(t),
                   "# HELP athena_cluster_completed_per_second Tasks that ended per second across the cluster,"
                   " over the last %d s (the database).\n# TYPE athena_cluster_completed_per_second gauge\n"
                   "athena_cluster_completed_per_second %.1f\n"
                   "# HELP athena_cluster_start_latency_seconds How long the tasks that ended in that window waited"
                   " from ready to a node's claim.\n# TYPE athena_cluster_start_latency_seconds gauge\n",
                   ATH_QUEUE_RATE_WINDOW_MS / 1000, (double)c->completed_window * 1000.0 / ATH_QUEUE_RATE_WINDOW_MS);
  ath__buf_append(b, t, (size_t)n);
  static const char* const q[3] = {"0.5", "0.95", "0.99"};
  for (int i = 0; i < 3; i++) {
    n = snprintf(t, sizeof(t), "athena_cluster_start_latency_seconds{quantile=\"%s\"} %.4f\n", q[i],
                 c->start_latency_ms[i] / 1000.0);
    ath__buf_append(b, t, (size_t)n);
  }
}

void ath__world_cluster_prom(ath_world_t* w, ath_buf_t* b) {
  struct ath_dq_s* dq = w->dq;
  if (dq == NULL)
    return;
  char err[256];
  uv_mutex_lock(&dq->rd_lock);
  int rc = counts_fresh(dq, err, sizeof(err));
  /* who this node is, so per-node series can be told apart */
  ath__buf_lit(b, "# HELP athena_node_info This node of the PostgreSQL cluster (value 1).\n"
                  "# TYPE athena_node_info gauge\n");
  prom_line(b, "athena_node_info", "node", dq->node_id, 1, 0);
  if (rc != 0) {
    uv_mutex_unlock(&dq->rd_lock);
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "reading the cluster's counts failed: %s", err);
    return;
  }
  const ath_queue_counts_t* c = &dq->counts;
  ath__buf_lit(b, "# HELP athena_cluster_nodes Worker nodes whose lease is alive (the database).\n"
                  "# TYPE athena_cluster_nodes gauge\n");
  prom_line(b, "athena_cluster_nodes", NULL, NULL, c->nodes, 0);
  ath__buf_lit(b, "# HELP athena_cluster_leader The live leader (value 1), from the database.\n"
                  "# TYPE athena_cluster_leader gauge\n");
  if (c->leader != NULL)
    prom_line(b, "athena_cluster_leader", "node", c->leader, 1, 0);
  ath__buf_lit(b, "# HELP athena_cluster_tasks Tasks by state across the cluster (the database; the same on"
                  " every node).\n# TYPE athena_cluster_tasks gauge\n");
  prom_line(b, "athena_cluster_tasks", "state", "queued", c->queued, 0);
  prom_line(b, "athena_cluster_tasks", "state", "scheduled", c->scheduled, 0);
  prom_line(b, "athena_cluster_tasks", "state", "running", c->running, 0);
  cluster_rates_prom(b, c);
  static const char* const names[4] = {"athena_cluster_queue_depth", "athena_cluster_queue_scheduled",
                                       "athena_cluster_queue_running", "athena_cluster_queue_oldest_age_seconds"};
  static const char* const helps[4] = {"Ready tasks per queue across the cluster.",
                                       "Tasks waiting for a time per queue across the cluster.",
                                       "Running tasks per queue across the cluster.",
                                       "Age of the oldest ready task per queue across the cluster."};
  for (int k = 0; k < 4; k++) {
    ath__buf_lit(b, "# HELP ");
    ath__buf_append(b, names[k], strlen(names[k]));
    ath__buf_lit(b, " ");
    ath__buf_append(b, helps[k], strlen(helps[k]));
    ath__buf_lit(b, "\n# TYPE ");
    ath__buf_append(b, names[k], strlen(names[k]));
    ath__buf_lit(b, " gauge\n");
    for (size_t i = 0; i < c->nqueues; i++) {
      const ath_queue_qcount_t* x = &c->queues[i];
      int64_t v = k == 0 ? x->depth : k == 1 ? x->scheduled : k == 2 ? x->running : x->oldest_age_ms;
      prom_line(b, names[k], "queue", x->queue, v, k == 3);
    }
  }
  uv_mutex_unlock(&dq->rd_lock);
}

int ath__world_nodes(ath_world_t* w, char** json, char* err, size_t errlen) {
  struct ath_dq_s* dq = w->dq;
  *json = NULL;
  if (dq == NULL) {
    snprintf(err, errlen, "%s", "getNodes needs the PostgreSQL backend");
    return ATH_EINVAL;
  }
  uv_mutex_lock(&dq->rd_lock);
  int rc = ath__q_nodes(dq->rd, json);
  if (rc == ATH_ESTORE && PQSTATUS_BAD(dq->rd) && ath__q_reset(dq->rd) == 0)
    rc = ath__q_nodes(dq->rd, json);
  if (rc != 0)
    snprintf(err, errlen, "%s: %s", ath__q_name(QP), ath__q_errmsg(dq->rd));
  uv_mutex_unlock(&dq->rd_lock);
  return rc;
}
