/* The engine's calls into a queue provider (athena.h "Queue providers"):
 * one inline function per operation, so the backend loop
 * (storage/store_pg.c, sched_pg.c, wf_pg.c) reads as plain calls and the
 * optional operations' defaults live in one place. A connection carries
 * its provider (ath_queue_conn_t); calls that take no connection take the
 * provider. */
#ifndef ATHENA_BACKEND_QUEUE_H
#define ATHENA_BACKEND_QUEUE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "athena.h"

#define ATH_Q(c) ((c)->provider)

/* The provider's name for messages ("PostgreSQL"). */
static inline const char* ath__q_name(const ath_queue_provider_t* p) {
  return p->name != NULL ? p->name : "queue provider";
}

static inline const char* ath__q_errmsg(const ath_queue_conn_t* c) { return ATH_Q(c)->errmsg(c); }
static inline const char* ath__q_sqlstate(const ath_queue_conn_t* c) { return ATH_Q(c)->sqlstate(c); }
static inline int ath__q_reset(ath_queue_conn_t* c) { return ATH_Q(c)->reset(c); }
static inline void ath__q_close(ath_queue_conn_t* c) {
  if (c != NULL)
    ATH_Q(c)->close(c);
}
static inline int ath__q_migrate(ath_queue_conn_t* c, int* version) {
  if (ATH_Q(c)->migrate == NULL) {
    if (version != NULL)
      *version = 0;
    return 0;
  }
  return ATH_Q(c)->migrate(c, version);
}
static inline int ath__q_node_register(ath_queue_conn_t* c, const ath_queue_node_t* n, uint64_t now_ns,
                                       ath_queue_lease_t* lease) {
  return ATH_Q(c)->node_register(c, n, now_ns, lease);
}
static inline int ath__q_node_renew(ath_queue_conn_t* c, ath_queue_lease_t* lease, uint64_t now_ns,
                                    const char* metrics) {
  return ATH_Q(c)->node_renew(c, lease, now_ns, metrics);
}
static inline int ath__q_node_release(ath_queue_conn_t* c, ath_queue_lease_t* lease) {
  return ATH_Q(c)->node_release(c, lease);
}
/* Without the operation every process gets the lock (no EBUSY check). */
static inline int ath__q_node_lock(ath_queue_conn_t* c, const char* node_id, int* held) {
  if (ATH_Q(c)->node_lock == NULL) {
    *held = 1;
    return 0;
  }
  return ATH_Q(c)->node_lock(c, node_id, held);
}
static inline int ath__q_cycle(ath_queue_conn_t* c, ath_queue_cycle_t* x) { return ATH_Q(c)->cycle(c, x); }
/* A cycle of outcomes only. */
static inline int ath__q_finish(ath_queue_conn_t* c, int64_t lease, const ath_queue_outcome_t* o, size_t n,
                                uint8_t* applied) {
  ath_queue_cycle_t x;
  memset(&x, 0, sizeof(x));
  x.outcomes = o;
  x.n_outcomes = n;
  x.applied = applied;
  x.lease = lease;
  return ATH_Q(c)->cycle(c, &x);
}
static inline int ath__q_stage(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int64_t late_ms, int limit,
                               int* staged) {
  return ATH_Q(c)->stage(c, seqs, n, late_ms, limit, staged);
}
static inline int ath__q_rescue(ath_queue_conn_t* c, int64_t leader, int limit, int64_t grace_ms,
                                ath_queue_tasks_t* out) {
  return ATH_Q(c)->rescue(c, leader, limit, grace_ms, out);
}
static inline int ath__q_take_over(ath_queue_conn_t* c, const char* node_id, int64_t incarnation,
                                   ath_queue_tasks_t* out) {
  return ATH_Q(c)->take_over(c, node_id, incarnation, out);
}
static inline int ath__q_leased(ath_queue_conn_t* c, int64_t lease, ath_queue_tasks_t* out) {
  return ATH_Q(c)->leased(c, lease, out);
}
static inline int ath__q_leader_try(ath_queue_conn_t* c, int* held) { return ATH_Q(c)->leader_try(c, held); }
/* Without the operation the caller closes the connection, which frees
 * the lock. */
static inline int ath__q_leader_resign(ath_queue_conn_t* c) {
  return ATH_Q(c)->leader_resign != NULL ? ATH_Q(c)->leader_resign(c) : 0;
}
static inline int ath__q_now(ath_queue_conn_t* c, int64_t* now) { return ATH_Q(c)->now(c, now); }
static inline int ath__q_read(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int ended_only,
                              ath_queue_tasks_t* out) {
  return ATH_Q(c)->read(c, seqs, n, ended_only, out);
}
static inline int ath__q_get(ath_queue_conn_t* c, const char* id, ath_queue_tasks_t* out) {
  return ATH_Q(c)->get(c, id, out);
}
static inline int ath__q_cancel(ath_queue_conn_t* c, int64_t seq, int* how) { return ATH_Q(c)->cancel(c, seq, how); }
static inline int ath__q_cancelled(ath_queue_conn_t* c, int64_t lease, int64_t** seqs, size_t* n) {
  return ATH_Q(c)->cancelled(c, lease, seqs, n);
}
static inline void ath__q_tasks_free(const ath_queue_provider_t* p, ath_queue_tasks_t* t) { p->tasks_free(t); }
static inline void ath__q_inserted_clear(const ath_queue_provider_t* p, ath_queue_inserted_t* r, size_t n) {
  p->inserted_clear(r, n);
}
static inline int ath__q_query(ath_queue_conn_t* c, const ath_queue_query_t* f, ath_queue_tasks_t* out) {
  return ATH_Q(c)->query != NULL ? ATH_Q(c)->query(c, f, out) : ATH_ENOSYS;
}
static inline int ath__q_requeue(ath_queue_conn_t* c, const char* id, int64_t* seq, int* status, int* how) {
  return ATH_Q(c)->requeue != NULL ? ATH_Q(c)->requeue(c, id, seq, status, how) : ATH_ENOSYS;
}
static inline int ath__q_purge(ath_queue_conn_t* c, const char* id, int64_t* seq, int* status, int* how) {
  return ATH_Q(c)->purge != NULL ? ATH_Q(c)->purge(c, id, seq, status, how) : ATH_ENOSYS;
}
/* Notifications: a provider without them is polled only. */
static inline int ath__q_can_notify(const ath_queue_provider_t* p) {
  return p->listen != NULL && p->notifies != NULL && p->socket != NULL;
}
static inline int ath__q_listen(ath_queue_conn_t* c, const char* const* channels) {
  return ATH_Q(c)->listen(c, channels);
}
static inline int ath__q_notifies(ath_queue_conn_t* c, ath_queue_notify_cb cb, void* ud) {
  return ATH_Q(c)->notifies(c, cb, ud);
}
static inline int ath__q_socket(const ath_queue_conn_t* c) { return ATH_Q(c)->socket(c); }
/* Workflows across nodes. */
static inline int ath__q_can_workflows(const ath_queue_provider_t* p) {
  return p->wf_requeue != NULL && p->wf_take != NULL;
}
/* Without them no workflow row exists (execute refuses workflows): there
 * is nothing to requeue or take. */
static inline int ath__q_wf_requeue(ath_queue_conn_t* c, int64_t lease, const int64_t* seqs, size_t n) {
  if (n == 0)
    return 0;
  return ATH_Q(c)->wf_requeue != NULL ? ATH_Q(c)->wf_requeue(c, lease, seqs, n) : ATH_ENOSYS;
}
static inline int ath__q_wf_take(ath_queue_conn_t* c, int64_t lease, const int64_t* seqs, size_t n, int by_parent,
                                 ath_queue_tasks_t* out) {
  if (ATH_Q(c)->wf_take == NULL) {
    memset(out, 0, sizeof(*out));
    return 0;
  }
  return ATH_Q(c)->wf_take(c, lease, seqs, n, by_parent, out);
}
/* Schedules: all of the group or none. */
static inline int ath__q_can_schedules(const ath_queue_provider_t* p) {
  return p->schedule_put && p->schedule_fire_many && p->schedules && p->schedules_due && p->schedule_pause &&
         p->schedule_resume && p->schedule_delete && p->scheds_free;
}
static inline int ath__q_schedule_put(ath_queue_conn_t* c, const ath_queue_schedule_t* s, int* changed) {
  return ATH_Q(c)->schedule_put(c, s, changed);
}
static inline int ath__q_schedule_fire_many(ath_queue_conn_t* c, const ath_queue_fire_t* f, size_t n,
                                            ath_queue_fired_t* out) {
  return ATH_Q(c)->schedule_fire_many(c, f, n, out);
}
static inline int ath__q_schedules(ath_queue_conn_t* c, const char* id, ath_queue_scheds_t* out) {
  return ATH_Q(c)->schedules(c, id, out);
}
static inline int ath__q_schedules_due(ath_queue_conn_t* c, int limit, ath_queue_scheds_t* out) {
  return ATH_Q(c)->schedules_due(c, limit, out);
}
static inline int ath__q_schedule_pause(ath_queue_conn_t* c, const char* id, int* found) {
  return ATH_Q(c)->schedule_pause(c, id, found);
}
static inline int ath__q_schedule_resume(ath_queue_conn_t* c, const char* id, int64_t next_ms, int* resumed) {
  return ATH_Q(c)->schedule_resume(c, id, next_ms, resumed);
}
static inline int ath__q_schedule_delete(ath_queue_conn_t* c, const char* id, int* found) {
  return ATH_Q(c)->schedule_delete(c, id, found);
}
static inline void ath__q_scheds_free(const ath_queue_provider_t* p, ath_queue_scheds_t* s) { p->scheds_free(s); }
/* The outbox: without it, webhooks are sent from memory. */
static inline int ath__q_can_outbox(const ath_queue_provider_t* p) {
  return p->hooks_done != NULL && p->hooks_adopt != NULL && p->outbox_free != NULL;
}
static inline int ath__q_hooks_done(ath_queue_conn_t* c, const int64_t* ids, size_t n) {
  return ATH_Q(c)->hooks_done(c, ids, n);
}
static inline int ath__q_hooks_adopt(ath_queue_conn_t* c, int64_t owner, int limit, ath_queue_outbox_t** out,
                                     size_t* n) {
  return ATH_Q(c)->hooks_adopt(c, owner, limit, out, n);
}
static inline void ath__q_outbox_free(const ath_queue_provider_t* p, ath_queue_outbox_t* rows, size_t n) {
  p->outbox_free(rows, n);
}
/* Cluster views: empty without them. */
static inline int ath__q_counts(ath_queue_conn_t* c, ath_queue_counts_t* out) {
  if (ATH_Q(c)->counts == NULL || ATH_Q(c)->counts_free == NULL) {
    memset(out, 0, sizeof(*out));
    return 0;
  }
  return ATH_Q(c)->counts(c, out);
}
static inline void ath__q_counts_free(const ath_queue_provider_t* p, ath_queue_counts_t* out) {
  if (p->counts_free != NULL)
    p->counts_free(out);
}
static inline int ath__q_nodes(ath_queue_conn_t* c, char** json) {
  if (ATH_Q(c)->nodes != NULL)
    return ATH_Q(c)->nodes(c, json);
  *json = strdup("[]");
  return *json != NULL ? 0 : ATH_ENOMEM;
}
static inline int ath__q_vacuum_ready(ath_queue_conn_t* c) {
  return ATH_Q(c)->maintain != NULL ? ATH_Q(c)->maintain(c) : 0;
}
static inline int64_t ath__q_retries(const ath_queue_conn_t* c) {
  return ATH_Q(c)->retries != NULL ? ATH_Q(c)->retries(c) : 0;
}
static inline int ath__q_expire(ath_queue_conn_t* c, int64_t leader, int limit, ath_queue_tasks_t* out) {
  if (ATH_Q(c)->expire == NULL) {
    memset(out, 0, sizeof(*out));
    return 0;
  }
  return ATH_Q(c)->expire(c, leader, limit, out);
}
static inline int ath__q_prune(ath_queue_conn_t* c, int64_t retention_ms, int limit, int* deleted) {
  *deleted = 0;
  return ATH_Q(c)->prune != NULL ? ATH_Q(c)->prune(c, retention_ms, limit, deleted) : 0;
}
/* 1 when the owner must stop claiming and interrupt its attempts: the
 * provider declared the lease lost, or no renew succeeded for
 * ttl - margin, margin = min(max(2 * interval, 5 s), ttl / 2)
 * (distributed.md §3.8). */
static inline int ath__q_lease_fenced(const ath_queue_lease_t* lease, uint64_t now_ns) {
  if (lease->lost)
    return 1;
  int64_t margin = 2 * lease->interval_ms;
  if (margin < 5000)
    margin = 5000;
  if (margin > lease->ttl_ms / 2)
    margin = lease->ttl_ms / 2;
  uint64_t deadline = lease->renewed_ns + (uint64_t)(lease->ttl_ms - margin) * 1000000u;
  return now_ns >= deadline;
}

/* Whether p can serve a world: its size covers this build's struct and
 * every required operation is set (else ATH_EINVAL with the reason). */
static inline int ath__q_check(const ath_queue_provider_t* p, char* err, size_t errlen) {
  const char* missing = p->size < sizeof(*p) ? "size (set it to sizeof(ath_queue_provider_t))"
                        : !p->open           ? "open"
                        : !p->reset          ? "reset"
                        : !p->close          ? "close"
                        : !p->errmsg         ? "errmsg"
                        : !p->sqlstate       ? "sqlstate"
                        : !p->node_register  ? "node_register"
                        : !p->node_renew     ? "node_renew"
                        : !p->node_release   ? "node_release"
                        : !p->cycle          ? "cycle"
                        : !p->stage          ? "stage"
                        : !p->rescue         ? "rescue"
                        : !p->take_over      ? "take_over"
                        : !p->leased         ? "leased"
                        : !p->leader_try     ? "leader_try"
                        : !p->now            ? "now"
                        : !p->read           ? "read"
                        : !p->get            ? "get"
                        : !p->cancel         ? "cancel"
                        : !p->cancelled      ? "cancelled"
                        : !p->tasks_free     ? "tasks_free"
                        : !p->inserted_clear ? "inserted_clear"
                                             : NULL;
  if (missing == NULL)
    return 0;
  snprintf(err, errlen, "invalid queue provider %s: %s is required", ath__q_name(p), missing);
  return ATH_EINVAL;
}

#endif
