/* Workflows and sagas on the PostgreSQL backend (docs/backend-postgres.md,
 * design in ../shared/design/distributed.md §3.11): what the backend loop
 * of storage/store_pg.c writes for a workflow this node leases, and how a
 * claimed workflow row becomes a local segment.
 *
 * A workflow's history lives in {schema}.workflow_events, appended (never
 * rewritten) by the node holding the workflow's lease. A segment that
 * parks (ctx:run, executeChild's result, a compensation, ctx:sleep) gives
 * its lease back with its row waiting; the finish of the awaited task, on
 * any node, makes the row ready again, and whichever node claims it
 * replays the handler against the history (no sticky cache across nodes).
 * Everything here runs on the backend thread with the world lock held,
 * unless said otherwise. */
#ifndef ATHENA_WF_PG_H
#define ATHENA_WF_PG_H

#include "internal.h"
#include "queue.h"

/* The workflow writes of one cycle. */
typedef struct {
  ath_queue_append_t* apps;
  ath_task_t** app_t;
  ath_wfev_t*** app_evs; /* the appended events, retained until the cycle ends */
  size_t napps;
  uint8_t* appended;
  ath_queue_park_t* parks;
  ath_task_t** park_t;
  char** park_err; /* copies of the errors the parks carry */
  size_t nparks;
  uint8_t* parked;
  int64_t* reqs; /* resumptions handed back unrun */
  ath_task_t** req_t;
  int* req_attempt;
  size_t nreqs;
  int64_t* kids; /* workflows that ended cancelled or by a cascade: their children are cancelled */
  size_t nkids;
} ath_wfpg_t;

/* Room for the writes of n changed tasks. 0 or ATH_ENOMEM. */
int ath__wfpg_alloc(ath_wfpg_t* b, size_t n);
void ath__wfpg_free(ath_wfpg_t* b);
/* A changed task t: when it is a workflow this node leases, adds its new
 * history events and, when its segment parked (or a resumption was handed
 * back unrun), its park (requeue). Returns 1 when that is all t needs
 * (no finish), 0 when the caller classifies it as any task. */
int ath__wfpg_take(ath_wfpg_t* b, ath_task_t* t, int64_t now);
/* Points the cycle at the writes. */
void ath__wfpg_fill(ath_wfpg_t* b, ath_queue_cycle_t* c);
/* The cycle failed: nothing was written, the writes go again. */
void ath__wfpg_undo(ath_wfpg_t* b);
/* The cycle committed: parked workflows become proxies of their rows
 * (their handles hear their end like any remote task's); *stage_at gets
 * the earliest timer parked here; *lost counts fenced-out writes. */
void ath__wfpg_done(ath_world_t* w, ath_wfpg_t* b, int64_t* stage_at, int64_t* lost);

/* Claimed row r is workflow t: its history is the row's, its wake count
 * remembered. A resumption (r->resumed) goes on in the same run: the
 * outcome the claim brought is recorded and it is queued here; returns 1
 * when queued, 0 when it could not be (handed back). A row a child's
 * cascade marked fails here, and a resumption whose cancel was accepted
 * is cancelled here (both with their history; 0, *nwake updated). Returns
 * -1 for a new run (the caller queues it as any claimed task). */
int ath__wfpg_claimed(ath_world_t* w, ath_task_t* t, const ath_queue_task_t* r, ath_worker_t** wake,
                      int* nwake);

/* The leader's rescue took rows (lock not held): the workflow segments
 * among them (running or compensating, rescued at most 3 times) go back
 * to ready as resumptions of the same run, under control lease `lease`;
 * they leave `rows`, which keeps the others (EWORKERLOST attempts).
 * Returns how many were requeued, or -1 when the database failed (the
 * rows stay under the control lease: the next pass takes them again). */
int ath__wfpg_rescue(ath_queue_conn_t* q, int64_t lease, ath_queue_tasks_t* rows);

#endif
