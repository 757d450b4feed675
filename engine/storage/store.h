/* The storage subsystem: the persistence provider interface, the store
 * thread and recovery (SEMANTICS §13). Built on the runtime's task and
 * world records (internal.h). Not installed. */
#ifndef ATHENA_STORE_H
#define ATHENA_STORE_H

#include "internal.h"

/* store.c, store_sqlite.c: persistence (SEMANTICS §13) -------------------- */

/* The provider interface is public (athena.h, "store providers"); these
 * are its internal names. */
typedef ath_store_schedule_t ath_srow_t;
typedef ath_store_schedule_cb ath_srow_cb;
typedef ath_store_task_t ath_row_t;
typedef ath_store_task_cb ath_row_cb;

extern const ath_store_vt_t ath__sqlite_store;
/* Whether provider p (of p->size bytes) has function `f`. */
#define ATH_STORE_HAS(p, f) \
  ((p)->size >= offsetof(ath_store_provider_t, f) + sizeof((p)->f) && (p)->f != NULL)
/* Opens persistence for a starting world (lock file, store, recovery,
 * retention pass) and starts the store thread. Called by start() before
 * the workers, lock not held. Returns 0 or an ATH_E* with err set. */
/* Checks a world config's store provider (ath_world_new): ATH_EINVAL with
 * the reason in err, or 0. */
int ath__store_check(const ath_world_config_t* cfg, char* err, size_t errlen);
/* Whether cfg's queue provider (cfg->queue, or PostgreSQL's) can serve it:
 * the required operations, and an outbox when webhooks are on. */
int ath__dq_check(const ath_world_config_t* cfg, char* err, size_t errlen);
int ath__store_start(ath_world_t* w, char* err, size_t errlen);
/* Final commit, stops the store thread and drops the lock file; the store
 * stays open for reads until ath__store_free (from ath_world_free). */
void ath__store_stop(ath_world_t* w);
void ath__store_free(ath_world_t* w);
/* Records that t changed (lock held): the store thread writes it with the
 * next group. No-op in memory mode. */
void ath__store_mark(ath_world_t* w, ath_task_t* t);
/* Records that a schedule changed (lock held), like ath__store_mark. */
void ath__store_mark_sched(ath_world_t* w, ath_sched_t* s);
/* Hybrid mode's bound on changes not yet committed: past it, producers wait
 * for the store (ath__store_throttle) instead of piling work up in RAM, and
 * the store thread commits at once instead of at the end of its interval. */
#define ATH_HYBRID_BACKLOG 65536
void ath__store_throttle(ath_world_t* w);
/* A task's wait for generation `gen` to be durable, without blocking its
 * worker (file mode): returns 0 when there is nothing to wait for, 1 when
 * `slot` was queued (the store thread hands it to the worker's inbox once
 * committed), or ATH_ENOMEM. Lock not held. */
int ath__store_await(ath_world_t* w, uint64_t gen, ath_task_t* enq, ath_slot_t* slot);
/* The enqueues of one execute, tasks[0..n) (file mode): the first task
 * whose enqueue is not committed (or was withdrawn), to wait on, or NULL;
 * and, once the wait is over, 0 or the code that withdrew them. */
ath_task_t* ath__store_unborn(ath_task_t* const* tasks, size_t n);
int ath__store_enqueue_result(ath_task_t* const* tasks, size_t n);
/* Waits (lock held) until the enqueues of tasks[0..n), marked up to
 * generation `gen`, are committed (returns 0) or withdrawn because the
 * commit failed (returns its code: ATH_ENOSPC, ATH_EIO, ...). */
int ath__store_wait_enqueue(ath_world_t* w, uint64_t gen, ath_task_t* const* tasks, size_t n);
/* A commit failed (lock held): takes unborn task t back out of the world
 * (*withdrawn = 1; the table's reference is dropped) unless it is a
 * workflow's step. Returns the new nwake (result waiters to wake). */
int ath__world_withdraw(ath_world_t* w, ath_task_t* t, int code, ath_worker_t** wake,
                        int nwake, int* withdrawn);
/* A commit succeeded (lock held): the unborn tasks of batch[0..n) may run;
 * adds sleeping workers of their queues to wake. Returns the new nwake. */
int ath__world_born(ath_world_t* w, ath_task_t* const* batch, size_t n, ath_worker_t** wake,
                    int nwake);
/* Takes `slot`'s commit wait back (interrupted). Lock not held. */
void ath__store_unawait(ath_world_t* w, ath_slot_t* slot);
/* Hands a waiter to its worker's inbox (lock held) and adds the worker to
 * wake[0..nwake) when not there yet; returns the new nwake. */
int ath__waiter_deliver(ath_waiter_t* wt, ath_worker_t** wake, int nwake);
/* Waits (lock held) until everything marked up to generation `gen` is
 * committed, in file mode; returns at once otherwise. */
void ath__store_wait(ath_world_t* w, uint64_t gen);
/* ath__store_wait for at most timeout_ns (lock held); returns whether it
 * had to wait. */
int ath__store_wait_for(ath_world_t* w, uint64_t gen, uint64_t timeout_ns);
/* Drops terminal tasks past the world's retention (lock not held). */
void ath__world_prune(ath_world_t* w);
/* Recovery (world.c): rebuilds one stored task in memory (an ath_row_cb;
 * `ud` is the world), then logs what was recovered. */
int ath__world_recover_row(void* ud, const ath_row_t* r);
/* Takes out of RAM the terminal tasks that must leave it (lock held),
 * chained through hnext; ath__world_term_free drops them after unlocking. */
ath_task_t* ath__world_term_trim(ath_world_t* w);
/* The same, at most `max` of them. */
ath_task_t* ath__world_term_trim_n(ath_world_t* w, size_t max);
void ath__world_term_free(ath_task_t* dead);
void ath__world_recovered(ath_world_t* w);
/* Rebuilds one stored schedule, applying its catchUp (an ath_srow_cb). */
int ath__sched_recover_row(void* ud, const ath_srow_t* row);

/* store.c, shared with the PostgreSQL backend loop: generation `gen` and
 * the tasks of batch[0..n) are committed (lock held; it is released while
 * waking wake[0..nwake) and the commit waiters, and taken again); drops
 * the batch's references. */
void ath__store_committed(ath_world_t* w, uint64_t gen, ath_task_t* const* batch, size_t n,
                          ath_worker_t** wake, int nwake);
/* A commit failed with `rc` (lock held): degraded until one succeeds; the
 * enqueues not committed are withdrawn, batch[0..n) is marked again (its
 * references handed over). */
void ath__store_failed(ath_world_t* w, int rc, const char* err, ath_task_t** batch, size_t n);

/* store_pg.c: the PostgreSQL backend (docs/backend-postgres.md) --------- */

/* Connects, migrates, registers this node and starts the backend loop (the
 * store thread) and its listener; called by ath__store_start. */
int ath__pgstore_start(ath_world_t* w, char* err, size_t errlen);
/* After the backend thread ended (ath__store_stop): releases the node
 * lease and the leader lock, stops listening. */
void ath__pgstore_stopped(ath_world_t* w);
/* The outcome of an attempt whose lease this node lost (lock held): it is
 * discarded, the task becomes a proxy of its row (the rescue decides), or
 * runs the attempt this node claimed meanwhile. Returns the new nwake. */
int ath__dq_discard(ath_world_t* w, ath_task_t* t, ath_worker_t** wake, int nwake);
/* t's error becomes a copy of its row's (NULL, or out of memory: kept). */
void ath__dq_take_error(ath_task_t* t, const char* error);
/* A proxy's row (seq) whose end this node waits to hear of (lock held). */
void ath__dq_watch(ath_world_t* w, int64_t seq);
/* Reads the row of remote proxy t and brings the proxy up to it (lock not
 * held): query() and status() of a task another node runs. No-op for any
 * other task. */
void ath__dq_refresh(ath_world_t* w, ath_task_t* t);
/* Cancels a task this node does not lease, through its row (lock not
 * held): 1 when accepted, 0 when refused (it had ended). */
int ath__dq_cancel(ath_world_t* w, ath_task_t* t);
/* The reader connection for control threads (lock not held), under its
 * mutex until ath__dq_reader_done; NULL without the backend. */
struct ath_queue_conn_s* ath__dq_reader(ath_world_t* w);
/* The world's queue provider (cfg.queue, or PostgreSQL's). */
const ath_queue_provider_t* ath__dq_provider(ath_world_t* w);
/* 0 when it runs workflows across nodes (wf_requeue and wf_take), else
 * ATH_ENOSYS with the reason in err. */
int ath__dq_workflows(ath_world_t* w, char* err, size_t errlen);
void ath__dq_reader_done(ath_world_t* w);

/* sched_pg.c: schedules on the PostgreSQL backend (rows in the schema,
 * fired by the leader; docs/backend-postgres.md "Schedules") ------------ */

/* Creates or replaces schedule s (validated by sched.c; not taken). */
int ath__pgsched_put(ath_world_t* w, const ath_sched_t* s, char* err, size_t errlen);
/* Pause / resume: 0 or ATH_ENOTFOUND (or ATH_ESTORE). */
int ath__pgsched_pause(ath_world_t* w, const char* id, int paused);
/* 0, or ATH_ENOTFOUND when there was no such schedule (or ATH_ESTORE). */
int ath__pgsched_delete(ath_world_t* w, const char* id);
/* Every schedule's row, as ath_world_schedules. */
int ath__pgsched_list(ath_world_t* w, ath_schedule_info_t** out, size_t* n);
/* The leader's pass on its connection (backend thread): fires every due
 * occurrence (catch_up: the first pass after taking the lock, missed
 * occurrences per catchUp) and sets *next_ns to the monotonic time of the
 * next one (0: none). 0, or the provider's error (the next pass retries). */
int ath__pgsched_fire(ath_world_t* w, struct ath_queue_conn_s* ldr, int catch_up, uint64_t* next_ns);

/* A dead letter's requeue (purge = 0) or purge through its row, from any
 * node (lock not held): *how = 1 done, 0 the row is not quarantined, -1 no
 * such row; *seq is the row's. Returns 0 or ATH_ESTORE (logged). */
int ath__dq_dead_letter(ath_world_t* w, const char* id, int purge, int64_t* seq, int* how);
/* world.c: the local task of a row this node claimed: the proxy in the
 * table, or a new one built from r (marked remote, in the table) — a new
 * reference, or NULL when out of memory. Lock not held. */
ath_task_t* ath__world_adopt_row(ath_world_t* w, const ath_row_t* r);

/* The finished statuses a store holds once they left RAM (dead letters
 * never leave it). */
#define STORED_MASK ((1u << ATH_COMPLETED) | (1u << ATH_FAILED) | (1u << ATH_CANCELLED))
/* world.c: up to q->limit stored tasks matching q, as new references in
 * out (rebuilt from their rows, in no table); returns how many, or an
 * ATH_E*. Lock not held. */
int64_t ath__stored_tasks(ath_world_t* w, const ath_store_query_t* q, ath_task_t** out);

#endif
