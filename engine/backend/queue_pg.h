/* The PostgreSQL queue provider (docs/backend-postgres.md, design in
 * ../shared/design/distributed.md §3): N athena processes share one queue in
 * a PostgreSQL schema. This header is the provider's C seam; it knows
 * nothing of the world (no internal.h): rows and outcomes are plain structs.
 *
 * Threading: an ath_qpg_t is one libpq connection, used by one thread at a
 * time. The engine's backend thread (§3.6) owns a writer connection (cycles:
 * inserts, finishes, claims, stagings, node lease), a leader connection
 * (advisory lock, cron, rescue) and a listener connection (LISTEN). Every
 * call but ath__qpg_notifies blocks its thread for one network round trip;
 * ath__qpg_notifies never blocks (for a uv_poll on ath__qpg_socket).
 *
 * Errors: 0, or ATH_ESTORE (the database refused or the connection broke;
 * ath__qpg_errmsg / ath__qpg_sqlstate tell why), ATH_EINVAL (bad arguments,
 * a schema newer than this build or not Athena's), ATH_ENOMEM.
 *
 * Times are epoch milliseconds of the database clock ({schema}.now_ms()).
 * The world uses it through storage/store_pg.c (the backend loop). */
#ifndef ATHENA_QUEUE_PG_H
#define ATHENA_QUEUE_PG_H

#include <stddef.h>
#include <stdint.h>
#include "athena.h"

/* The schema version this build creates and understands. */
#define ATH_QPG_SCHEMA_VERSION 6
/* Advisory lock keys (first int; the second is hashtext(<schema>)). */
#define ATH_QPG_LOCK_LEADER 1096042062  /* session lock: the leader */
#define ATH_QPG_LOCK_MIGRATE 1096042063 /* transaction lock: migrations */
#define ATH_QPG_LOCK_NODE 1096042064    /* session lock: one live process per nodeId
                                         * (the seed of a 64-bit hash of schema/nodeId) */

typedef struct ath_qpg_s ath_qpg_t;

/* Opens a connection (libpq conninfo or postgres:// URL) to work in
 * `schema` (NULL: "athena"; any name, quoted as an identifier). notify = 0
 * sends no NOTIFY (poll-only clusters). Sets session limits (idle in
 * transaction 60 s, keepalives). On failure returns ATH_ESTORE with the
 * reason in err (when errlen > 0) and *out NULL. */
int ath__qpg_open(const char* conninfo, const char* schema, int notify, ath_qpg_t** out, char* err,
                  size_t errlen);
/* Reconnects after ATH_ESTORE with SQLSTATE 08006 (the connection broke):
 * blocking; statements are prepared again on use. LISTENs and the leader
 * lock of the old session are gone (listen / try again). */
int ath__qpg_reset(ath_qpg_t* q);
/* Closes the connection (session locks and LISTENs end with it). NULL ok. */
void ath__qpg_close(ath_qpg_t* q);
/* The last error's message and SQLSTATE ("" when none). */
const char* ath__qpg_errmsg(const ath_qpg_t* q);
const char* ath__qpg_sqlstate(const ath_qpg_t* q);
/* The connection's socket (for uv_poll_init_socket), -1 when broken. */
int ath__qpg_socket(const ath_qpg_t* q);

/* Creates the schema or brings it to ATH_QPG_SCHEMA_VERSION, in one
 * transaction under the migrate advisory lock (concurrent nodes wait, then
 * find it done). ATH_EINVAL when the schema is newer than this build or holds
 * tables without Athena's meta table. *version (may be NULL) gets the version
 * found before migrating (0: none). */
int ath__qpg_migrate(ath_qpg_t* q, int* version);

/* ------------------------------------------------------------ node lease */

/* Registers a new incarnation (an identity column: every start gets a new
 * one, never reused in the schema) valid for ttl_ms from now; now_ns is
 * the caller's monotonic clock. */
int ath__qpg_node_register(ath_qpg_t* q, const ath_queue_node_t* n, uint64_t now_ns,
                           ath_queue_lease_t* lease);
/* Renews the lease (one UPDATE; `metrics` JSON text or NULL is stored with
 * it). ATH_EWORKERLOST when the row had already expired or is gone (the
 * node must fence itself and register again: lease->lost = 1); ATH_ESTORE
 * when the database did not answer (the lease keeps its old deadline). */
int ath__qpg_node_renew(ath_qpg_t* q, ath_queue_lease_t* lease, uint64_t now_ns, const char* metrics);
/* Releases the lease at shutdown: the row expires now (the leader rescues
 * whatever it still leases) and is deleted when it leases nothing. */
int ath__qpg_node_release(ath_qpg_t* q, ath_queue_lease_t* lease);

/* ------------------------------------------------------------ tasks */

void ath__qpg_tasks_free(ath_queue_tasks_t* t);
void ath__qpg_inserted_clear(ath_queue_inserted_t* r, size_t n);

int ath__qpg_cycle(ath_qpg_t* q, ath_queue_cycle_t* c);
/* Transactions this connection ran again because they lost a deadlock
 * (SQLSTATE 40P01) or a serialization conflict (40001): a cycle that
 * committed nothing (one_commit, or no claims) and every single-statement
 * call go again, at most 5 more times, after a jittered 1-2 x 2^k ms; the
 * error surfaces after that. Any thread may read it. */
int64_t ath__qpg_retries(const ath_qpg_t* q);
/* One-part cycles. */
int ath__qpg_insert(ath_qpg_t* q, const ath_queue_insert_t* rows, size_t n, ath_queue_inserted_t* out);
int ath__qpg_claim(ath_qpg_t* q, int64_t lease, const char* queue, int n, ath_queue_tasks_t* out);
int ath__qpg_finish(ath_qpg_t* q, int64_t lease, const ath_queue_outcome_t* o, size_t n,
                    uint8_t* applied);

/* Workflow segments leased by `lease` back to ready as resumptions of
 * the same run (state and attempt kept): the rescue's, after ath__qpg_rescue
 * took them. */
int ath__qpg_wf_requeue(ath_qpg_t* q, int64_t lease, const int64_t* seqs, size_t n);

/* Makes due, unleased tasks (scheduled / retrying) ready again, keeping
 * their ready_at: by seq (the node that armed the timer), or every task due
 * for more than late_ms when seqs is NULL (the leader's sweep, at most
 * `limit`). *staged (may be NULL) gets the count. */
int ath__qpg_stage(ath_qpg_t* q, const int64_t* seqs, size_t n, int64_t late_ms, int limit,
                   int* staged);

/* Rescue (leader): takes the leases of tasks held by expired or unknown
 * incarnations under `leader` (rescues + 1), at most `limit`; the caller
 * decides each one (EWORKERLOST: retry or fail per policy) and writes it
 * with ath__qpg_finish(leader, ...). `leader` must be an incarnation that
 * holds control leases only (the leader registers one for its duties, not
 * the one its workers claim with): tasks still under it from an earlier pass
 * whose outcome was never written (a lost connection) come back again,
 * without counting another rescue. Also deletes node rows expired for more
 * than grace_ms that lease nothing. On error nothing is the caller's. */
int ath__qpg_rescue(ath_qpg_t* q, int64_t leader, int limit, int64_t grace_ms,
                    ath_queue_tasks_t* out);

/* Deadlines (leader): first, at most `limit` parked workflow runs past
 * their run_by are made ready, marked (wait_kind ATH_QUEUE_WAIT_TIMEOUT:
 * their claimer times the run out); then leases to `leader` at most
 * `limit` activities past their close_by (scheduleToClose) that nobody
 * leases (queued, delayed or waiting for a retry; out of ready), for the
 * caller to fail (ETIMEDOUT) with a finish under `leader`. */
int ath__qpg_expire(ath_qpg_t* q, int64_t leader, int limit, ath_queue_tasks_t* out);
/* Retention (leader): deletes at most `limit` unleased finished tasks (dead
 * letters kept) completed more than retention_ms ago by the database's
 * clock, with their history; *deleted (may be NULL) gets the count. */
int ath__qpg_prune(ath_qpg_t* q, int64_t retention_ms, int limit, int* deleted);

/* Same-nodeId recovery (distributed.md §3.8): incarnation `incarnation`
 * of `node_id` just registered; every earlier incarnation of that nodeId
 * expires now (fenced: a process still running under one claims and renews
 * no more, and its finishes no longer match) and the tasks they leased
 * pass to `incarnation` (rescues + 1), returned for the caller to decide
 * (EWORKERLOST, per policy) and finish under `incarnation`. */
int ath__qpg_take_over(ath_qpg_t* q, const char* node_id, int64_t incarnation, ath_queue_tasks_t* out);

/* ------------------------------------------------------------ leader */

/* Tries the leader lock (session advisory lock on this connection);
 * *held = 1 when this session holds it (also when it already did). */
int ath__qpg_leader_try(ath_qpg_t* q, int* held);
/* Asks the server whether this session holds the leader lock. */
int ath__qpg_leader_holds(ath_qpg_t* q, int* held);
/* Gives the lock up and NOTIFY athena_leader 'resigned'. */
int ath__qpg_leader_resign(ath_qpg_t* q);

/* ------------------------------------------------------------ schedules */

/* Upserts a schedule and NOTIFYs athena_sched '<id>' when it changed;
 * *changed = 1 when it was created or its definition changed (then it is
 * replaced: unpaused, next_ms the given one, counters kept), 0 when the
 * row was left alone (same definition: pause, next_ms and counters stay). */
int ath__qpg_schedule_put(ath_qpg_t* q, const ath_queue_schedule_t* s, int* changed);

/* Fires occurrence f->at exactly once cluster-wide, in one transaction:
 * advances next_ms from f->expect to f->next (compare-and-set; a paused row
 * does not match) and inserts the task ON CONFLICT (id) DO NOTHING (ready
 * at once), so two leaders racing make one task. With overlap_skip, an
 * occurrence whose last task has not ended advances without a task
 * (skipped + 1). *advanced: this call moved the row; *created: it inserted
 * the task; *skipped: overlap skipped it (each may be NULL). */
int ath__qpg_schedule_fire(ath_qpg_t* q, const ath_queue_fire_t* f, int* advanced, int* created,
                           int* skipped);

/* The fires f[0..n) (n <= ATH_QUEUE_FIRE_MAX), in order, in one transaction
 * and one round trip (one pipeline, one commit): each is the statement of
 * ath__qpg_schedule_fire and sees the ones before it, so a schedule's
 * caught-up occurrences chain their compare-and-sets (each expects the
 * previous one's next). out[i] is fire i's answer. On error nothing of it
 * happened (out zeroed); a deadlock or serialization conflict runs it again
 * (as every single statement: ath__qpg_retries). */
int ath__qpg_schedule_fire_many(ath_qpg_t* q, const ath_queue_fire_t* f, size_t n, ath_queue_fired_t* out);

void ath__qpg_scheds_free(ath_queue_scheds_t* s);
/* Every schedule by id (id NULL), or the one named. */
int ath__qpg_schedules(ath_qpg_t* q, const char* id, ath_queue_scheds_t* out);
/* The leader's scan: the `limit` unpaused schedules with the earliest
 * next_ms, due or not (the first not due tells when to look again). */
int ath__qpg_schedules_due(ath_qpg_t* q, int limit, ath_queue_scheds_t* out);
/* Pause (next_ms NULL: nothing fires), resume (next_ms = the given next
 * occurrence; *resumed 0 when it was not paused), delete; each NOTIFYs
 * athena_sched when it changed a row. *found / *resumed: rows changed. */
int ath__qpg_schedule_pause(ath_qpg_t* q, const char* id, int* found);
int ath__qpg_schedule_resume(ath_qpg_t* q, const char* id, int64_t next_ms, int* resumed);
int ath__qpg_schedule_delete(ath_qpg_t* q, const char* id, int* found);
/* The database's clock ({schema}.now_ms()). */
int ath__qpg_now(ath_qpg_t* q, int64_t* now);

/* The SQL of a statement as this connection runs it ("claim", "finish",
 * "insert", "stage", "rescue"), for EXPLAIN checks; NULL for another name. */
const char* ath__qpg_statement(const ath_qpg_t* q, const char* name);

/* VACUUM (SKIP_LOCKED) of the ready table (the leader, every few seconds:
 * claims leave dead entries at the head of its index). */
int ath__qpg_vacuum_ready(ath_qpg_t* q);

/* ------------------------------------------------------------ reads, cancel */

/* The rows of seqs[0..n) (all, or only those that ended), by seq. */
int ath__qpg_read(ath_qpg_t* q, const int64_t* seqs, size_t n, int ended_only, ath_queue_tasks_t* out);
/* Task `id`'s row (out->n = 0 when there is none). */
int ath__qpg_get(ath_qpg_t* q, const char* id, ath_queue_tasks_t* out);
/* Cancels task `seq`: *how = 1 cancelled at once (nobody leased it: T12),
 * 2 accepted (its lease holder is told through athena_cancel
 * '<incarnation>:<seq>' and ends it, T13), 3 accepted for a parked
 * workflow (it gets cancel_at and is made ready: ath__qpg_wf_take, or
 * whoever claims it, cancels it), 0 refused (it had ended, it
 * compensates, or no such row). */
int ath__qpg_cancel(ath_qpg_t* q, int64_t seq, int* how);
/* The seqs of unfinished tasks `lease` holds whose cancel was accepted
 * (malloc'd, *n of them): the poll's catch-up for a missed athena_cancel. */
int ath__qpg_cancelled(ath_qpg_t* q, int64_t lease, int64_t** seqs, size_t* n);
/* Leases to `lease` (a live incarnation) the parked workflows whose cancel
 * was accepted, seqs[0..n) or (by_parent) the children of those: rows as
 * a claim returns them (resumed, with history), for the caller to cancel
 * at once, needing no free slot. Rows someone claimed first are theirs. */
int ath__qpg_wf_take(ath_qpg_t* q, int64_t lease, const int64_t* seqs, size_t n, int by_parent,
                     ath_queue_tasks_t* out);
/* The rows `lease` holds (after a lost connection: a claim may have
 * committed without its answer arriving). */
int ath__qpg_leased(ath_qpg_t* q, int64_t lease, ath_queue_tasks_t* out);
/* Takes the session lock of `node_id` in this schema (*held = 0: another
 * live session holds it: a second process with the same nodeId). Held for
 * the session's life: it frees when the process dies (its connection
 * closes); ath__qpg_reset takes it again on the new session and fails with
 * ATH_EBUSY when another process took it meanwhile. */
int ath__qpg_node_lock(ath_qpg_t* q, const char* node_id, int* held);

/* Outbox rows delivered (or given up): deleted. */
int ath__qpg_hooks_done(ath_qpg_t* q, const int64_t* ids, size_t n);
/* Up to `limit` outbox rows whose owner is no live incarnation (a node
 * killed between its commit and its delivery, or stopped before it) become
 * `owner`'s, oldest first; *out (malloc'd, *n rows) to free with
 * ath__qpg_outbox_free. */
int ath__qpg_hooks_adopt(ath_qpg_t* q, int64_t owner, int limit, ath_queue_outbox_t** out, size_t* n);
void ath__qpg_outbox_free(ath_queue_outbox_t* rows, size_t n);

/* The live and expired worker nodes as a JSON array (malloc'd text):
 * nodeId, incarnation, host, pid, startedAt, beatAt, expiresAt, alive,
 * queues, slots, leader. */
int ath__qpg_nodes(ath_qpg_t* q, char** json);

/* ------------------------------------------------------------ cluster reads, dead letters */

/* The rows f selects, with result and completed_at. One statement built
 * from the filters given (parameters bound, never spliced), not prepared:
 * each read gets a plan for its own filters. Newest first walks
 * tasks_created; parent_id reads tasks_parent; by_seq alone reads the
 * primary key (docs/backend-postgres.md, "Cluster reads"). */
int ath__qpg_query(ath_qpg_t* q, const ath_queue_query_t* f, ath_queue_tasks_t* out);
/* The SQL ath__qpg_query runs for f (malloc'd) and its parameters' text in
 * v[0..*n) (pointing into `buf`, 8 x 32 bytes): for EXPLAIN checks. */
char* ath__qpg_query_sql(const ath_qpg_t* q, const ath_queue_query_t* f, char buf[8][32],
                         const char** v, int* n);
/* Dead letters (status 8), from any node; each one statement under a row
 * lock on task `id`. *how: 1 done, 0 refused (the row is not quarantined:
 * *status says what it is), -1 no such row. *seq: the row's seq.
 * requeue: pending again with attempt 0 and no error or result, ready now
 * (ready_at = now), notify set (its end is announced), NOTIFY athena_ready.
 * purge: the row and its history are deleted (the id may be reused). */
int ath__qpg_requeue(ath_qpg_t* q, const char* id, int64_t* seq, int* status, int* how);
int ath__qpg_purge(ath_qpg_t* q, const char* id, int64_t* seq, int* status, int* how);

/* ------------------------------------------------------------ cluster counts */

/* One statement: counts of ready (ready_order), tasks_due and
 * tasks_leased, grouped by queue, and the live nodes and leader; never a
 * scan of the tasks table. A second one reads the tasks that ended in the
 * last ATH_QUEUE_RATE_WINDOW_MS through tasks_done (completed_at): their
 * number and the percentiles of started_at - ready_at (how long a ready
 * task waited for a node's claim). */
int ath__qpg_counts(ath_qpg_t* q, ath_queue_counts_t* out);
/* Its SQL (malloc'd), for EXPLAIN checks. */
char* ath__qpg_counts_sql(const ath_qpg_t* q);
void ath__qpg_counts_free(ath_queue_counts_t* c);

/* ------------------------------------------------------------ notifications */

/* LISTENs to the NULL-terminated channels (athena_ready, athena_done, ...). */
int ath__qpg_listen(ath_qpg_t* q, const char* const* channels);
/* Reads what the socket has without blocking and calls cb per notification.
 * Returns how many, or ATH_ESTORE when the connection broke. */
int ath__qpg_notifies(ath_qpg_t* q, ath_queue_notify_cb cb, void* ud);

#endif
