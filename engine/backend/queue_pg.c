/* The PostgreSQL queue provider: schema, node leases, insert / claim /
 * finish / stage / rescue, leader lock, cron CAS, NOTIFY/LISTEN, and the
 * pipelined cycle. Contracts in queue_pg.h; the SQL is distributed.md §3.4's.
 *
 * Statements name the schema as {S}; ath__qpg_open substitutes the quoted
 * identifier once. They are prepared on first use per connection (the
 * prepare travels in the same pipeline as the first execution). */
#include "queue_pg.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "athena.h"
#include "util.h"

/* ------------------------------------------------------------ schema v1 */

static const char* const MIGRATIONS[ATH_QPG_SCHEMA_VERSION] = {
  /* 1 */
  "CREATE FUNCTION {S}.now_ms() RETURNS bigint LANGUAGE sql VOLATILE PARALLEL SAFE"
  "  AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;"
  "CREATE TABLE {S}.nodes ("
  "  incarnation bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, node_id text NOT NULL, host text NOT NULL, pid int NOT NULL,"
  "  started_at bigint NOT NULL, beat_at bigint NOT NULL, expires_at bigint NOT NULL,"
  "  queues text[] NOT NULL, slots int NOT NULL, leader boolean NOT NULL DEFAULT false, metrics text);"
  "CREATE INDEX nodes_node_id ON {S}.nodes (node_id);"
  "CREATE TABLE {S}.tasks ("
  "  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id text NOT NULL UNIQUE,"
  "  name text NOT NULL, kind smallint NOT NULL, queue text NOT NULL, status smallint NOT NULL,"
  "  priority int NOT NULL DEFAULT 0, attempt int NOT NULL DEFAULT 0, max_attempts int NOT NULL,"
  "  strategy smallint NOT NULL, created_at bigint NOT NULL, scheduled_at bigint NOT NULL,"
  "  ready_at bigint NOT NULL, due_at bigint, started_at bigint, completed_at bigint,"
  "  close_by bigint, lease bigint, worker_id int, rescues smallint NOT NULL DEFAULT 0,"
  "  cancel_at bigint, notify boolean NOT NULL DEFAULT false, parent_id text,"
  "  wf_where smallint, wait_kind smallint, wait_seq bigint, wait_task text,"
  "  wake int NOT NULL DEFAULT 0, hist_n int NOT NULL DEFAULT 0, last_hb bigint, hb text,"
  "  input text NOT NULL, result text, error text"
  ") WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02,"
  "  autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);"
  "CREATE INDEX tasks_due ON {S}.tasks (due_at) WHERE due_at IS NOT NULL;"
  "CREATE INDEX tasks_leased ON {S}.tasks (lease) WHERE lease IS NOT NULL;"
  "CREATE INDEX tasks_parent ON {S}.tasks (parent_id) WHERE parent_id IS NOT NULL;"
  "CREATE INDEX tasks_close ON {S}.tasks (close_by) WHERE close_by IS NOT NULL;"
  "CREATE INDEX tasks_done ON {S}.tasks (completed_at) WHERE completed_at IS NOT NULL;"
  "CREATE INDEX tasks_created ON {S}.tasks (created_at DESC, id);"
  "CREATE TABLE {S}.ready ("
  "  seq bigint PRIMARY KEY, queue text NOT NULL, priority int NOT NULL, ready_at bigint NOT NULL"
  ") WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0,"
  "  autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_cost_delay = 0);"
  "CREATE INDEX ready_order ON {S}.ready (queue, priority DESC, ready_at, seq);"
  "CREATE TABLE {S}.history ("
  "  task_seq bigint NOT NULL, n int NOT NULL, event text NOT NULL, PRIMARY KEY (task_seq, n));"
  "CREATE TABLE {S}.schedules ("
  "  id text PRIMARY KEY, name text NOT NULL, input text NOT NULL, cron text, once_at bigint,"
  "  local_tz boolean NOT NULL DEFAULT false, catch_up smallint NOT NULL DEFAULT 1,"
  "  overlap_skip boolean NOT NULL DEFAULT false, paused boolean NOT NULL DEFAULT false,"
  "  priority int, strategy smallint NOT NULL, queue text, next_ms bigint, last_ms bigint,"
  "  total bigint NOT NULL DEFAULT 0, skipped bigint NOT NULL DEFAULT 0, last_task text,"
  "  definition text NOT NULL, updated_at bigint NOT NULL);"
  "CREATE TABLE {S}.queue_limits ("
  "  queue text PRIMARY KEY, lim int NOT NULL, running int NOT NULL DEFAULT 0);",
  /* 2: schedules fired by the leader (a fire makes the task from the row
   * alone: attempts and scheduleToClose are stored; due rows by index) */
  "ALTER TABLE {S}.schedules ADD COLUMN max_attempts int NOT NULL DEFAULT 1,"
  "  ADD COLUMN close_after bigint;"
  "CREATE INDEX schedules_due ON {S}.schedules (next_ms) WHERE NOT paused AND next_ms IS NOT NULL;",
  /* 3: dead letters (status 8) listed newest first without a scan of the
   * task table: getQuarantined over 1M rows 47 ms -> 0.04 ms */
  "CREATE INDEX tasks_dead ON {S}.tasks (created_at DESC, id COLLATE \"C\") WHERE status = 8;",
  /* 4: workflows on any node (distributed.md §3.11). Histories keyed by
   * (workflow id, seq), appended by the node holding the lease; version
   * 1's table keyed by the task's seq goes (workflows were refused before
   * this version: it can only hold rows written by hand, which move). */
  "CREATE TABLE {S}.workflow_events (workflow_id text NOT NULL, seq int NOT NULL,"
  "  event text NOT NULL, PRIMARY KEY (workflow_id, seq));"
  "INSERT INTO {S}.workflow_events SELECT t.id, h.n, h.event"
  "  FROM {S}.history h JOIN {S}.tasks t ON t.seq = h.task_seq;"
  "DROP TABLE {S}.history;",
  /* 5: the webhook outbox (at-least-once across a crash): a finish's event
   * is stored in its transaction, deleted once delivered; rows of a dead
   * owner are adopted by a live node */
  "CREATE TABLE {S}.outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
  "  owner bigint NOT NULL, task_seq bigint NOT NULL, kind smallint NOT NULL,"
  "  delivery text NOT NULL, at bigint NOT NULL, body text NOT NULL);",
  /* 6: a task's per-call limits (ctx:run's timeout, retry, scheduleToClose,
   * heartbeatTimeout as JSON), so the node that claims it applies them; a
   * parked workflow run's deadline (its timeout counts parked time) */
  "ALTER TABLE {S}.tasks ADD COLUMN call text, ADD COLUMN run_by bigint;"
  "CREATE INDEX tasks_run_by ON {S}.tasks (run_by) WHERE run_by IS NOT NULL;",
};

/* ------------------------------------------------------------ statements */

/* The columns ath_queue_task_t is decoded from (by name; absent ones stay
 * at their defaults). */
#define TASK_COLS(t)                                                                           \
  t ".seq, " t ".id, " t ".name, " t ".kind, " t ".queue, " t ".status, " t ".priority, " t \
  ".attempt, " t ".max_attempts, " t ".strategy, " t ".rescues, " t ".wake, " t ".hist_n, " t \
  ".created_at, " t ".ready_at, " t ".started_at, " t ".close_by, " t ".cancel_at, " t        \
  ".last_hb, " t ".parent_id, " t ".input, " t ".error, " t ".hb, " t ".scheduled_at, " t ".call"

/* What a commit made ready: one NOTIFY athena_ready per queue ($n = notify). */
#define NOTIFY_READY(cte, flag) \
  "SELECT pg_notify('athena_ready{H}', q) FROM (SELECT DISTINCT queue AS q FROM " cte ") x WHERE " flag

/* A claimed row u: a workflow's history (events joined by
 * ATH_STORE_EVENT_SEP, chr(30)) and the outcome of what its last park
 * waits for (w: the awaited task, joined by the caller). */
#define CLAIMED_COLS                                                                    \
  TASK_COLS("u") ","                                                                    \
  "   CASE WHEN u.kind = 1 THEN (SELECT string_agg(h.event, chr(30) ORDER BY h.seq)"    \
  "     FROM {S}.workflow_events h WHERE h.workflow_id = u.id) END AS history,"         \
  "   u.wait_kind, u.wait_seq, u.wait_task, w.status AS wait_status, w.result AS wait_result," \
  "   w.error AS wait_error FROM u"

enum {
  ST_INSERT,
  ST_CLAIM,
  ST_FINISH,
  ST_STAGE,
  ST_SWEEP,
  ST_RESCUE,
  ST_REAP,
  ST_REGISTER,
  ST_RENEW,
  ST_SCHED_PUT,
  ST_SCHED_FIRE,
  ST_SCHED_LIST,
  ST_SCHED_DUE,
  ST_SCHED_PAUSE,
  ST_SCHED_RESUME,
  ST_SCHED_DELETE,
  ST_READ,
  ST_GET,
  ST_CANCEL,
  ST_CANCELLED,
  ST_NODES,
  ST_LEASED,
  ST_HEARTBEAT,
  ST_TAKEOVER,
  ST_WF_APPEND,
  ST_WF_PARK,
  ST_WF_REQUEUE,
  ST_HOOK_ADD,
  ST_HOOK_DONE,
  ST_HOOK_ADOPT,
  ST_WF_KIDS,
  ST_WF_TAKE,
  ST_EXPIRE,
  ST_RUN_TIMEOUT,
  ST_PRUNE,
  ST_COUNT
};

_Static_assert(ST_COUNT <= 64, "one prepared bit per statement");

static const char* const STMTS[ST_COUNT] = {
  [ST_INSERT] =
    "WITH spec AS (SELECT * FROM unnest($1::text[], $2::text[], $3::smallint[], $4::text[],"
    "   $5::int[], $6::int[], $7::smallint[], $8::bigint[], $9::bigint[], $10::text[],"
    "   $11::text[], $12::boolean[], $14::text[]) WITH ORDINALITY"
    "   AS s(id, name, kind, queue, priority, max_attempts, strategy, delay, close_after,"
    "        input, parent_id, notify, call, i)),"
    " nw AS (SELECT {S}.now_ms() AS ms)," /* one instant: close_by = created_at + close_after */
    " ins AS (INSERT INTO {S}.tasks (id, name, kind, queue, status, priority, max_attempts,"
    "   strategy, created_at, scheduled_at, ready_at, due_at, close_by, input, parent_id, notify,"
    "   call)"
    "   SELECT s.id, s.name, s.kind, s.queue, CASE WHEN s.delay > 0 THEN 1 ELSE 0 END,"
    "     s.priority, s.max_attempts, s.strategy, nw.ms,"
    "     nw.ms + greatest(s.delay, 0), nw.ms + greatest(s.delay, 0),"
    "     CASE WHEN s.delay > 0 THEN nw.ms + s.delay END,"
    "     CASE WHEN s.close_after > 0 THEN nw.ms + greatest(s.delay, 0) + s.close_after END,"
    "     s.input, s.parent_id, s.notify, s.call"
    "   FROM spec s, nw ORDER BY s.i ON CONFLICT (id) DO NOTHING"
    "   RETURNING seq, id, queue, priority, ready_at, status, created_at),"
    " rdy AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM ins"
    "   WHERE status = 0 RETURNING queue),"
    " n AS (" NOTIFY_READY("rdy", "$13") ")"
    " SELECT coalesce(i.seq, t.seq), i.seq IS NOT NULL, coalesce(i.created_at, t.created_at),"
    "   t.name, (SELECT count(*) FROM n)"
    " FROM spec s LEFT JOIN ins i ON i.id = s.id"
    "   LEFT JOIN {S}.tasks t ON i.seq IS NULL AND t.id = s.id"
    " ORDER BY s.i",
  [ST_CLAIM] =
    "WITH c AS MATERIALIZED (SELECT seq FROM {S}.ready WHERE queue = $1"
    /* an expired incarnation claims nothing (its claims would only be rescued) */
    "   AND EXISTS (SELECT 1 FROM {S}.nodes WHERE incarnation = $3"
    "     AND expires_at > {S}.now_ms())"
    "   ORDER BY priority DESC, ready_at, seq LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " was AS (SELECT t.seq, coalesce(t.wf_where = 2, false) AS resumed"
    "   FROM {S}.tasks t JOIN c USING (seq)),"
    " d AS (DELETE FROM {S}.ready r USING c WHERE r.seq = c.seq RETURNING r.seq),"
    " u AS (UPDATE {S}.tasks t SET lease = $3,"
    "   status = CASE WHEN t.wf_where = 2 THEN t.status ELSE 2 END,"
    "   attempt = CASE WHEN t.wf_where = 2 THEN t.attempt ELSE t.attempt + 1 END,"
    "   started_at = CASE WHEN t.wf_where = 2 THEN t.started_at ELSE {S}.now_ms() END,"
    "   wf_where = CASE WHEN t.kind = 1 THEN 0 END"
    "   FROM d WHERE t.seq = d.seq RETURNING t.*)"
    " SELECT was.resumed, " CLAIMED_COLS " JOIN was USING (seq) LEFT JOIN {S}.tasks w ON w.id = u.wait_task"
    " ORDER BY u.priority DESC, u.ready_at, u.seq",
  /* The fence is written `IS NOT DISTINCT FROM` so the planner cannot drive
   * the join from tasks_leased (§4.3). */
#define CASCADES "(k.cas AND pt.status <> 4 AND pt.wait_kind IS DISTINCT FROM 5)"
  [ST_FINISH] =
    "WITH o AS (SELECT * FROM unnest($2::bigint[], $3::int[], $4::smallint[], $5::bigint[],"
    "   $6::text[], $7::text[], $8::int[]) WITH ORDINALITY"
    "   AS o(seq, attempt, status, delay, result, error, worker_id, i)),"
    " f AS (UPDATE {S}.tasks t SET status = o.status, result = o.result,"
    "   error = coalesce(o.error, t.error),"
    "   attempt = CASE WHEN o.status = 0 THEN t.attempt - 1 ELSE t.attempt END,"
    "   due_at = CASE WHEN o.status IN (1, 3) THEN {S}.now_ms() + greatest(o.delay, 0) END,"
    "   ready_at = CASE WHEN o.status IN (1, 3) THEN {S}.now_ms() + greatest(o.delay, 0)"
    "     ELSE t.ready_at END,"
    "   completed_at = CASE WHEN o.status >= 5 THEN {S}.now_ms() END,"
    "   close_by = CASE WHEN o.status >= 5 THEN NULL ELSE t.close_by END,"
    "   run_by = CASE WHEN o.status >= 5 THEN NULL ELSE t.run_by END,"
    "   lease = NULL, worker_id = o.worker_id, wf_where = NULL"
    "   FROM o WHERE t.seq = o.seq AND t.lease IS NOT DISTINCT FROM $1 AND t.attempt = o.attempt"
    "   RETURNING t.seq, t.id, t.status, t.strategy, t.notify, t.queue, t.priority, t.ready_at,"
    "     t.parent_id),"
    " r AS (INSERT INTO {S}.ready (seq, queue, priority, ready_at)"
    "   SELECT seq, queue, priority, ready_at FROM f WHERE status = 0"
    "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"
    /* a task that ended wakes its workflow (§3.11): wake + 1, and a parked
     * one is ready again (a running one sees the bump when it parks). One
     * that failed under cascade (§8) marks it (wait_kind 5, wait_task: the
     * child; the first such child stays), unless it compensates: an
     * unleased one is ready at once (off its timer or its retry's delay),
     * and whoever claims it fails it (storage/wf_pg.c) */
    " p AS (UPDATE {S}.tasks pt SET wake = pt.wake + 1,"
    "   wait_kind = CASE WHEN " CASCADES " THEN 5 ELSE pt.wait_kind END,"
    "   wait_task = CASE WHEN " CASCADES " THEN k.cid ELSE pt.wait_task END,"
    "   due_at = CASE WHEN " CASCADES " AND pt.lease IS NULL THEN NULL ELSE pt.due_at END,"
    "   wf_where = CASE WHEN pt.wf_where = 1 OR (" CASCADES " AND pt.lease IS NULL) THEN 2"
    "     ELSE pt.wf_where END"
    "   FROM (SELECT DISTINCT ON (parent_id) parent_id, id AS cid, status = 6 AND strategy = 2 AS cas"
    "     FROM f WHERE status >= 5 AND parent_id IS NOT NULL"
    "     ORDER BY parent_id, status = 6 AND strategy = 2 DESC) k"
    "   WHERE pt.id = k.parent_id AND pt.completed_at IS NULL AND pt.seq NOT IN (SELECT seq FROM f)"
    "   RETURNING pt.seq, pt.queue, pt.priority, pt.wf_where, pt.lease),"
    " pr AS (INSERT INTO {S}.ready (seq, queue, priority, ready_at)"
    "   SELECT seq, queue, priority, {S}.now_ms() FROM p WHERE wf_where = 2 AND lease IS NULL"
    "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"
    " n AS (SELECT pg_notify('athena_done{H}', string_agg(seq::text, ','))"
    "   FROM (SELECT seq, (row_number() OVER ()) / 350 AS g FROM f WHERE notify AND status >= 5) x"
    "   WHERE $9 GROUP BY g"
    "   UNION ALL " NOTIFY_READY("r", "$9")
    "   UNION ALL " NOTIFY_READY("pr", "$9") ")"
    " SELECT o.seq, f.seq IS NOT NULL, (SELECT count(*) FROM n)"
    " FROM o LEFT JOIN f ON f.seq = o.seq ORDER BY o.i",
#define STAGE_TAIL(flag)                                                                   \
  " u AS (UPDATE {S}.tasks t SET due_at = NULL,"                                           \
  "   status = CASE WHEN t.status IN (1, 3) THEN 0 ELSE t.status END,"                     \
  "   wf_where = CASE WHEN t.wf_where = 3 THEN 2 ELSE t.wf_where END"                      \
  "   FROM s WHERE t.seq = s.seq AND t.lease IS NULL AND t.due_at IS NOT NULL"             \
  "   RETURNING t.seq, t.queue, t.priority, t.ready_at),"                                  \
  " r AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM u"              \
  "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"                                      \
  " n AS (" NOTIFY_READY("r", flag) ")"                                                    \
  " SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM n)"
  [ST_STAGE] =
    "WITH s AS (SELECT seq FROM {S}.tasks WHERE seq = ANY($1::bigint[])"
    "   AND due_at <= {S}.now_ms() FOR UPDATE SKIP LOCKED)," STAGE_TAIL("$2"),
  [ST_SWEEP] =
    "WITH s AS (SELECT seq FROM {S}.tasks WHERE due_at <= {S}.now_ms() - $1"
    "   ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)," STAGE_TAIL("$3"),
  [ST_RESCUE] =
    "WITH dead AS (SELECT incarnation FROM {S}.nodes WHERE expires_at < {S}.now_ms()),"
    /* `lease IS NOT NULL AND (…)`: the leased rows by tasks_leased (an OR of
     * the three read the whole table: 10-50 ms per pass at 50,000 rows) */
    " t AS (SELECT seq FROM {S}.tasks"
    "   WHERE lease IS NOT NULL AND (lease IN (SELECT incarnation FROM dead)"
    "      OR lease NOT IN (SELECT incarnation FROM {S}.nodes)"
    "      OR lease = $1)" /* our own control leases still open: an earlier pass's, lost */
    "   LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " x AS (UPDATE {S}.tasks x SET lease = $1,"
    "   rescues = x.rescues + CASE WHEN x.lease = $1 THEN 0 ELSE 1 END"
    "   FROM t WHERE x.seq = t.seq RETURNING x.*)"
    " SELECT " TASK_COLS("x") " FROM x ORDER BY x.seq",
  /* scheduleToClose of activities nobody leases (queued, delayed, waiting
   * for a retry): the leader takes them, out of ready, to fail them with
   * ETIMEDOUT through a finish (which wakes parents, notifies, stores
   * webhooks). tasks_close orders them. */
  [ST_EXPIRE] =
    "WITH e AS (SELECT seq FROM {S}.tasks WHERE close_by <= {S}.now_ms() AND lease IS NULL"
    "   AND completed_at IS NULL AND kind = 0 ORDER BY close_by LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " d AS (DELETE FROM {S}.ready r USING e WHERE r.seq = e.seq),"
    " x AS (UPDATE {S}.tasks x SET lease = $1, due_at = NULL FROM e WHERE x.seq = e.seq RETURNING x.*)"
    " SELECT " TASK_COLS("x") " FROM x ORDER BY x.seq",
  /* A parked workflow run past its deadline (run_by: the run's timeout,
   * parked time counted) is made ready, marked (wait_kind 6): whoever
   * claims it times the run out. */
  [ST_RUN_TIMEOUT] =
    "WITH e AS (SELECT seq FROM {S}.tasks WHERE run_by <= {S}.now_ms() AND lease IS NULL"
    "   AND kind = 1 AND status = 2 AND wf_where IN (1, 3) ORDER BY run_by LIMIT $1"
    "   FOR UPDATE SKIP LOCKED),"
    " u AS (UPDATE {S}.tasks t SET wf_where = 2, wait_kind = 6, due_at = NULL, run_by = NULL,"
    "   ready_at = {S}.now_ms() FROM e WHERE t.seq = e.seq"
    "   RETURNING t.seq, t.queue, t.priority, t.ready_at),"
    " r AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM u"
    "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"
    " n AS (" NOTIFY_READY("r", "$2") ")"
    " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
  /* Retention (SEMANTICS §13): finished tasks, dead letters aside, and
   * their history, completed more than $1 ms ago; oldest first by
   * tasks_done. */
  [ST_PRUNE] =
    "WITH p AS (SELECT seq FROM {S}.tasks WHERE completed_at < {S}.now_ms() - $1 AND status <> 8"
    "   AND lease IS NULL ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " d AS (DELETE FROM {S}.tasks t USING p WHERE t.seq = p.seq RETURNING t.id),"
    " h AS (DELETE FROM {S}.workflow_events e USING d WHERE e.workflow_id = d.id)"
    " SELECT count(*) FROM d",
  [ST_REAP] =
    "DELETE FROM {S}.nodes n WHERE n.expires_at < {S}.now_ms() - $1"
    " AND NOT EXISTS (SELECT 1 FROM {S}.tasks t WHERE t.lease = n.incarnation)",
  [ST_REGISTER] =
    "INSERT INTO {S}.nodes (node_id, host, pid, started_at, beat_at, expires_at, queues, slots,"
    "   leader)"
    " VALUES ($1, $2, $3, {S}.now_ms(), {S}.now_ms(),"
    "   {S}.now_ms() + $4, $5::text[], $6, $7) RETURNING incarnation, expires_at",
  [ST_RENEW] =
    "UPDATE {S}.nodes SET beat_at = {S}.now_ms(), expires_at = {S}.now_ms() + $2, metrics = $3"
    " WHERE incarnation = $1 AND expires_at > {S}.now_ms() RETURNING expires_at",
  /* Schedules (SEMANTICS §11 across nodes, distributed.md §3.10). An
   * unchanged definition leaves the row alone (N nodes registering the same
   * schedule keep its counters, pause and next occurrence); a changed one
   * replaces it, counters kept, unpaused. Every change NOTIFYs athena_sched. */
  [ST_SCHED_PUT] =
    "WITH u AS (INSERT INTO {S}.schedules AS s (id, name, input, cron, once_at, local_tz,"
    "   catch_up, overlap_skip, paused, priority, strategy, max_attempts, close_after, queue,"
    "   next_ms, definition, updated_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false, $9, $10, $11, $12, $13, $14, $15,"
    "   {S}.now_ms())"
    " ON CONFLICT (id) DO UPDATE SET name = excluded.name, input = excluded.input,"
    "   cron = excluded.cron, once_at = excluded.once_at, local_tz = excluded.local_tz,"
    "   catch_up = excluded.catch_up, overlap_skip = excluded.overlap_skip, paused = false,"
    "   priority = excluded.priority, strategy = excluded.strategy,"
    "   max_attempts = excluded.max_attempts, close_after = excluded.close_after,"
    "   queue = excluded.queue, next_ms = excluded.next_ms,"
    "   definition = excluded.definition, updated_at = excluded.updated_at"
    " WHERE s.definition IS DISTINCT FROM excluded.definition RETURNING s.id),"
    " n AS (SELECT pg_notify('athena_sched{H}', id) FROM u WHERE $16)"
    " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
  /* One occurrence, one transaction: the compare-and-set on next_ms ($2)
   * advances the row to $4 (NULL: none left) and inserts the task of
   * occurrence $3 ("<id>@<$3>"; a one-off: its own id, and the row goes)
   * ON CONFLICT DO NOTHING, so two leaders make one task. $5 = false only
   * advances (catch-up "none"); overlap_skip with the last task not ended
   * skips it (skipped + 1); $6 more are counted skipped (catch-up "all"
   * beyond its bound). */
  [ST_SCHED_FIRE] =
    "WITH c AS (SELECT s.id, s.cron IS NULL AS once, $5::boolean AND NOT (s.overlap_skip"
    "     AND EXISTS (SELECT 1 FROM {S}.tasks t WHERE t.id = s.last_task AND t.status < 5)) AS go"
    "   FROM {S}.schedules s WHERE s.id = $1 AND s.next_ms = $2 AND NOT s.paused FOR UPDATE),"
    " u AS (UPDATE {S}.schedules x SET next_ms = $4,"
    "   last_ms = CASE WHEN c.go THEN $3 ELSE x.last_ms END,"
    "   total = x.total + CASE WHEN c.go THEN 1 ELSE 0 END,"
    "   skipped = x.skipped + $6 + CASE WHEN $5 AND NOT c.go THEN 1 ELSE 0 END,"
    "   last_task = CASE WHEN c.go THEN x.id || '@' || $3 ELSE x.last_task END,"
    "   updated_at = {S}.now_ms()"
    "   FROM c WHERE x.id = c.id AND NOT c.once RETURNING x.id),"
    " d AS (DELETE FROM {S}.schedules x USING c WHERE x.id = c.id AND c.once RETURNING x.id),"
    " t AS (INSERT INTO {S}.tasks (id, name, kind, queue, status, priority, max_attempts,"
    "   strategy, created_at, scheduled_at, ready_at, close_by, input)"
    "   SELECT CASE WHEN c.once THEN s.id ELSE s.id || '@' || $3 END, s.name, 0,"
    "     coalesce(s.queue, 'default'), 0, coalesce(s.priority, 0), s.max_attempts, s.strategy,"
    "     nw.ms, nw.ms, nw.ms, CASE WHEN s.close_after > 0 THEN nw.ms + s.close_after END, s.input"
    "   FROM c JOIN {S}.schedules s ON s.id = c.id, (SELECT {S}.now_ms() AS ms) nw WHERE c.go"
    "   ON CONFLICT (id) DO NOTHING RETURNING seq, queue, priority, ready_at),"
    " r AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM t RETURNING queue),"
    " n AS (" NOTIFY_READY("r", "$7") ")"
    " SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM d),"
    "   (SELECT count(*) FROM t), (SELECT count(*) FROM c WHERE NOT go AND $5),"
    "   (SELECT count(*) FROM n)",
#define SCHED_COLS                                                                          \
  "s.id, s.name, s.input, s.cron, s.once_at, s.local_tz, s.catch_up, s.overlap_skip,"     \
  " s.paused, s.priority, s.strategy, s.max_attempts, s.close_after, s.queue, s.next_ms," \
  " s.last_ms, s.total, s.skipped, s.last_task"
  /* Every schedule by id ($1 NULL), or one; with the database's time. */
  [ST_SCHED_LIST] =
    "SELECT " SCHED_COLS ", {S}.now_ms() AS now FROM {S}.schedules s"
    " WHERE $1::text IS NULL OR s.id = $1 ORDER BY s.id",
  /* The leader's scan: the $1 earliest armed schedules, due or not. */
  [ST_SCHED_DUE] =
    "SELECT " SCHED_COLS ", {S}.now_ms() AS now FROM {S}.schedules s"
    " WHERE NOT s.paused AND s.next_ms IS NOT NULL ORDER BY s.next_ms, s.id LIMIT $1",
  [ST_SCHED_PAUSE] =
    "WITH u AS (UPDATE {S}.schedules SET paused = true, next_ms = NULL, updated_at = {S}.now_ms()"
    "   WHERE id = $1 RETURNING id),"
    " n AS (SELECT pg_notify('athena_sched{H}', id) FROM u WHERE $2)"
    " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
  /* $2: the next occurrence after now, computed from the row by the caller */
  [ST_SCHED_RESUME] =
    "WITH u AS (UPDATE {S}.schedules SET paused = false, next_ms = $2, updated_at = {S}.now_ms()"
    "   WHERE id = $1 AND paused RETURNING id),"
    " n AS (SELECT pg_notify('athena_sched{H}', id) FROM u WHERE $3)"
    " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
  [ST_SCHED_DELETE] =
    "WITH u AS (DELETE FROM {S}.schedules WHERE id = $1 RETURNING id),"
    " n AS (SELECT pg_notify('athena_sched{H}', id) FROM u WHERE $2)"
    " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
  /* Rows by seq: every one ($2), or only those that ended. */
  [ST_READ] =
    "SELECT " TASK_COLS("t") ", t.result, t.completed_at FROM {S}.tasks t"
    " WHERE t.seq = ANY($1::bigint[]) AND ($2 OR t.status >= 5) ORDER BY t.seq",
  [ST_GET] =
    "SELECT " TASK_COLS("t") ", t.result, t.completed_at,"
    "   CASE WHEN t.kind = 1 THEN (SELECT string_agg(h.event, chr(30) ORDER BY h.seq)"
    "     FROM {S}.workflow_events h WHERE h.workflow_id = t.id) END AS history"
    " FROM {S}.tasks t WHERE t.id = $1",
  /* Cancel (an activity): at once when nobody leases it (T12), else the
   * lease holder hears athena_cancel '<incarnation>:<seq>' (T13). */
  /* A parked workflow (unleased, running) gets cancel_at and is ready at
   * once: whoever claims it cancels it there, with its history (§6.3). */
#define CANCEL_TAIL                                                                         \
  " simple AS (UPDATE {S}.tasks x SET status = 7, completed_at = {S}.now_ms(),"             \
  "   cancel_at = {S}.now_ms(), due_at = NULL, close_by = NULL"                             \
  "   FROM t WHERE x.seq = t.seq AND t.status IN (0, 1, 3) AND t.lease IS NULL"             \
  "   RETURNING x.seq, x.notify),"                                                          \
  " unready AS (DELETE FROM {S}.ready r USING simple s WHERE r.seq = s.seq),"               \
  " flagged AS (UPDATE {S}.tasks x SET cancel_at = coalesce(x.cancel_at, {S}.now_ms())"     \
  "   FROM t WHERE x.seq = t.seq AND t.lease IS NOT NULL AND t.status IN (0, 1, 2, 3)"      \
  "   RETURNING x.seq, x.lease),"                                                           \
  " parked AS (UPDATE {S}.tasks x SET cancel_at = coalesce(x.cancel_at, {S}.now_ms()),"     \
  "   wf_where = 2, due_at = NULL, ready_at = {S}.now_ms()"                                 \
  "   FROM t WHERE x.seq = t.seq AND t.lease IS NULL AND t.status = 2 AND x.kind = 1"       \
  "   RETURNING x.seq, x.queue, x.priority, x.ready_at),"                                   \
  " pr AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM parked"         \
  "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"                                       \
  " n AS (SELECT pg_notify('athena_cancel{H}', lease || ':' || seq) FROM flagged WHERE $2"  \
  "   UNION ALL SELECT pg_notify('athena_done{H}', seq::text) FROM simple WHERE notify AND $2" \
  "   UNION ALL " NOTIFY_READY("pr", "$2") ")"
  [ST_CANCEL] =
    "WITH t AS (SELECT seq, status, lease FROM {S}.tasks WHERE seq = $1 FOR UPDATE)," CANCEL_TAIL
    " SELECT CASE WHEN EXISTS (SELECT 1 FROM simple) THEN 1 WHEN EXISTS (SELECT 1 FROM flagged) THEN 2"
    "   WHEN EXISTS (SELECT 1 FROM parked) THEN 3 ELSE 0 END,"
    "   (SELECT count(*) FROM n)",
  /* The children of workflows that ended cancelled or by a cascade (§8),
   * cancelled as ST_CANCEL does (their own children follow when they end) */
  [ST_WF_KIDS] =
    "WITH t AS (SELECT c.seq, c.status, c.lease FROM {S}.tasks c JOIN {S}.tasks p ON c.parent_id = p.id"
    "   WHERE p.seq = ANY($1::bigint[]) AND p.status >= 5 AND c.status < 5 FOR UPDATE OF c),"
    CANCEL_TAIL " SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM n)",
  /* Parked workflows whose cancel was accepted (ready, with cancel_at),
   * by seq ($2) or by parent seq ($3), leased to $1 without a slot: the
   * caller cancels them at once (a claim would wait for a free slot) */
  [ST_WF_TAKE] =
    "WITH c AS MATERIALIZED (SELECT t.seq FROM {S}.tasks t"
    "   WHERE (t.seq = ANY($2::bigint[]) OR t.parent_id IN (SELECT p.id FROM {S}.tasks p"
    "       WHERE p.seq = ANY($3::bigint[])))"
    "     AND t.kind = 1 AND t.status = 2 AND t.lease IS NULL AND t.wf_where = 2"
    "     AND t.cancel_at IS NOT NULL"
    "     AND EXISTS (SELECT 1 FROM {S}.nodes WHERE incarnation = $1 AND expires_at > {S}.now_ms())"
    "   FOR UPDATE OF t SKIP LOCKED),"
    " d AS (DELETE FROM {S}.ready r USING c WHERE r.seq = c.seq),"
    " u AS (UPDATE {S}.tasks t SET lease = $1, wf_where = 0 FROM c WHERE t.seq = c.seq RETURNING t.*)"
    " SELECT true AS resumed, " CLAIMED_COLS " LEFT JOIN {S}.tasks w ON w.id = u.wait_task",
  /* Cancels accepted for tasks this incarnation leases (the poll's catch-up),
   * by the lease index (`IS NOT DISTINCT FROM` here read the whole table:
   * 45 ms per poll per node with 150,000 rows, bench/distributed.sh). */
  [ST_CANCELLED] =
    "SELECT seq FROM {S}.tasks WHERE lease = $1 AND cancel_at IS NOT NULL"
    " AND status < 5",
  /* One incarnation's leases (by the lease index: no join here, §4.3). */
  [ST_LEASED] = "SELECT " TASK_COLS("t") " FROM {S}.tasks t WHERE t.lease = $1 ORDER BY t.seq",
  /* ctx:heartbeat details of attempts this node leases, fenced as a finish
   * (the same planner rule: the fence is not indexable, §4.3). */
  [ST_HEARTBEAT] =
    "WITH h AS (SELECT * FROM unnest($2::bigint[], $3::int[], $4::text[], $5::bigint[])"
    "   WITH ORDINALITY AS h(seq, attempt, hb, at, i)),"
    " u AS (UPDATE {S}.tasks t SET hb = h.hb, last_hb = h.at FROM h"
    "   WHERE t.seq = h.seq AND t.lease IS NOT DISTINCT FROM $1 AND t.attempt = h.attempt"
    "     AND t.status = 2 RETURNING t.seq)"
    " SELECT h.seq, u.seq IS NOT NULL FROM h LEFT JOIN u ON u.seq = h.seq ORDER BY h.i",
  /* A node (re)started as incarnation $2 of nodeId $1: its earlier
   * incarnations expire now (a still running one can claim and renew no
   * more) and their leases pass to $2, as a rescue's (rescues + 1). FOR
   * UPDATE waits for a leader rescuing the same rows, then skips them. */
  /* after the finishes, same transaction: an event whose finish applied
   * (the row last written by this transaction, with its status) */
  [ST_HOOK_ADD] =
    "WITH h AS (SELECT * FROM unnest($2::bigint[], $3::smallint[], $4::int[], $5::smallint[],"
    "   $6::text[], $7::bigint[], $8::text[]) WITH ORDINALITY"
    "   AS h(seq, status, attempt, kind, delivery, at, body, i)),"
    " ins AS (INSERT INTO {S}.outbox (owner, task_seq, kind, delivery, at, body)"
    "   SELECT $1, h.seq, h.kind, h.delivery, h.at, h.body FROM h JOIN {S}.tasks t ON t.seq = h.seq"
    "   WHERE t.xmin = pg_current_xact_id()::xid AND t.status = h.status"
    "     AND t.attempt = h.attempt AND t.lease IS NULL"
    "   RETURNING id, task_seq)"
    " SELECT h.seq, coalesce(ins.id, 0) FROM h LEFT JOIN ins ON ins.task_seq = h.seq ORDER BY h.i",
  [ST_HOOK_DONE] =
    "WITH d AS (DELETE FROM {S}.outbox WHERE id = ANY($1::bigint[]) RETURNING 1) SELECT count(*) FROM d",
  [ST_HOOK_ADOPT] =
    "UPDATE {S}.outbox o SET owner = $1 WHERE o.id IN (SELECT x.id FROM {S}.outbox x"
    "   WHERE NOT EXISTS (SELECT 1 FROM {S}.nodes n WHERE n.incarnation = x.owner"
    "     AND n.expires_at > {S}.now_ms())"
    "   ORDER BY x.id LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " RETURNING o.id, o.kind, o.delivery, o.at, o.body",
  [ST_TAKEOVER] =
    "WITH prev AS (UPDATE {S}.nodes SET expires_at = 0"
    "   WHERE node_id = $1 AND incarnation < $2 RETURNING incarnation),"
    " t AS (SELECT seq FROM {S}.tasks WHERE lease IN (SELECT incarnation FROM prev) FOR UPDATE),"
    " x AS (UPDATE {S}.tasks x SET lease = $2, rescues = x.rescues + 1"
    "   FROM t WHERE x.seq = t.seq RETURNING x.*)"
    " SELECT " TASK_COLS("x") " FROM x ORDER BY x.seq",
  [ST_NODES] =
    "SELECT coalesce(json_agg(json_build_object('nodeId', n.node_id,"
    "   'incarnation', n.incarnation, 'host', n.host, 'pid', n.pid, 'startedAt', n.started_at,"
    "   'beatAt', n.beat_at, 'expiresAt', n.expires_at, 'alive', n.expires_at > {S}.now_ms(),"
    "   'queues', n.queues, 'slots', n.slots, 'metrics', n.metrics::json,"
    "   'leader', EXISTS (SELECT 1 FROM {S}.nodes l WHERE l.leader AND l.node_id = n.node_id"
    "     AND l.pid = n.pid AND l.expires_at > {S}.now_ms()))"
    "   ORDER BY n.incarnation), '[]')::text FROM {S}.nodes n WHERE NOT n.leader",
  /* Workflows (§3.11). History appends: per workflow, fenced by the lease
   * and the count stored so far (a mismatch means someone else wrote:
   * impossible while the lease holds, checked anyway). An append also
   * clears the park state: the outcome the claim returned is recorded now,
   * so a claim after a rescue does not record it again. */
  /* the park state, unless a child's cascade marked the row (kept) */
#define KEEP_CASCADE(kind, task, seq)                                                   \
  " wait_kind = CASE WHEN t.wait_kind = 5 THEN 5 ELSE " kind " END,"                   \
  " wait_task = CASE WHEN t.wait_kind = 5 THEN t.wait_task ELSE " task " END,"         \
  " wait_seq = CASE WHEN t.wait_kind = 5 THEN t.wait_seq ELSE " seq " END"
  [ST_WF_APPEND] =
    "WITH e AS (SELECT * FROM unnest($2::bigint[], $3::int[], $4::text[]) AS e(seq, n, ev)),"
    " k AS (SELECT seq, min(n) AS lo, count(*)::int AS cnt FROM e GROUP BY seq),"
    " t AS (UPDATE {S}.tasks t SET hist_n = t.hist_n + k.cnt," KEEP_CASCADE("NULL", "NULL", "NULL")
    "   FROM k WHERE t.seq = k.seq AND t.lease IS NOT DISTINCT FROM $1 AND t.hist_n = k.lo"
    "   RETURNING t.seq, t.id),"
    " i AS (INSERT INTO {S}.workflow_events (workflow_id, seq, event)"
    "   SELECT t.id, e.n, e.ev FROM e JOIN t USING (seq) RETURNING 1)"
    " SELECT k.seq, t.seq IS NOT NULL, (SELECT count(*) FROM i) FROM k LEFT JOIN t USING (seq)",
  /* Park: the row leaves its lease (wf_where 1 parked, 3 timer) or, when
   * the awaited task ended already or a child woke it since the claim
   * ($10 = the wake the claim returned), is ready again at once (2). Either
   * the park sees the child's end, or the child's finish sees the park:
   * both lock this row. */
  [ST_WF_PARK] =
    "WITH o AS (SELECT * FROM unnest($2::bigint[], $3::int[], $4::smallint[], $5::text[],"
    "   $6::smallint[], $7::text[], $8::bigint[], $9::bigint[], $10::int[], $11::bigint[])"
    "   WITH ORDINALITY AS o(seq, attempt, status, error, kind, task, wseq, delay, seen, run_by, i)),"
    " p AS (UPDATE {S}.tasks t SET status = o.status, error = coalesce(o.error, t.error),"
    "   run_by = nullif(o.run_by, 0),"
    "  " KEEP_CASCADE("o.kind", "o.task", "o.wseq") ", lease = NULL,"
    "   wf_where = CASE WHEN t.wait_kind = 5 THEN 2 WHEN o.kind = 4 THEN 3"
    "     WHEN t.wake > o.seen OR EXISTS (SELECT 1 FROM {S}.tasks x WHERE x.id = o.task"
    "       AND x.status >= 5) THEN 2 ELSE 1 END,"
    "   due_at = CASE WHEN o.kind = 4 AND t.wait_kind IS DISTINCT FROM 5"
    "     THEN {S}.now_ms() + greatest(o.delay, 0) END,"
    "   ready_at = {S}.now_ms() + CASE WHEN o.kind = 4 AND t.wait_kind IS DISTINCT FROM 5"
    "     THEN greatest(o.delay, 0) ELSE 0 END"
    "   FROM o WHERE t.seq = o.seq AND t.lease IS NOT DISTINCT FROM $1 AND t.attempt = o.attempt"
    "   RETURNING t.seq, t.queue, t.priority, t.ready_at, t.wf_where),"
    " r AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM p WHERE wf_where = 2"
    "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"
    " n AS (" NOTIFY_READY("r", "$12") ")"
    " SELECT o.seq, p.seq IS NOT NULL, (SELECT count(*) FROM n)"
    " FROM o LEFT JOIN p ON p.seq = o.seq ORDER BY o.i",
  /* Segments back to ready as resumptions of the same run (a rescue, a
   * resumption handed back unrun): state and attempt kept. */
  [ST_WF_REQUEUE] =
    "WITH u AS (UPDATE {S}.tasks t SET lease = NULL, wf_where = 2, ready_at = {S}.now_ms()"
    "   WHERE t.seq = ANY($2::bigint[]) AND t.lease IS NOT DISTINCT FROM $1 AND t.kind = 1"
    "   RETURNING t.seq, t.queue, t.priority, t.ready_at),"
    " r AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM u"
    "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"
    " n AS (" NOTIFY_READY("r", "$3") ")"
    " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
};

/* ------------------------------------------------------------ connection */

enum { IT_PREP, IT_QUERY, IT_SYNC };

struct ath_qpg_s {
  ath_queue_conn_t base; /* first: the engine reaches the provider from it */
  PGconn* conn;
  char* schema;         /* as given (the lock key hashes it) */
  char* qschema;        /* quoted as an identifier */
  char suffix[10];      /* of its channels (channel_suffix) */
  char* sql[ST_COUNT];  /* {S} substituted */
  uint64_t prepared;    /* bit per statement */
  uint64_t preparing;   /* bit per statement whose prepare this pipeline sent */
  int notify;
  /* the pipeline's items not read yet */
  struct {
    int kind, st;
  } items[256];
  int head, tail;
  char err[512];
  char sqlstate[6];
  _Atomic int64_t retries; /* transactions run again after 40P01 / 40001 */
  char* node_lock;      /* the nodeId whose lock this session holds, or NULL */
};

static void set_err(ath_qpg_t* q, const char* msg, const char* state) {
  snprintf(q->err, sizeof(q->err), "%s", msg ? msg : "");
  size_t n = strlen(q->err);
  while (n > 0 && (q->err[n - 1] == '\n' || q->err[n - 1] == ' '))
    q->err[--n] = '\0';
  snprintf(q->sqlstate, sizeof(q->sqlstate), "%s", state ? state : "");
}

static int conn_err(ath_qpg_t* q) {
  set_err(q, PQerrorMessage(q->conn), "08006");
  return ATH_ESTORE;
}

/* Records a failed result (and clears it). */
static int res_err(ath_qpg_t* q, PGresult* r) {
  if (r == NULL)
    return conn_err(q);
  if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED)
    set_err(q, "pipeline aborted by an earlier error", "");
  else
    set_err(q, PQresultErrorMessage(r), PQresultErrorField(r, PG_DIAG_SQLSTATE));
  PQclear(r);
  if (PQstatus(q->conn) == CONNECTION_BAD) /* whatever the server said last: reset */
    snprintf(q->sqlstate, sizeof(q->sqlstate), "08006");
  return ATH_ESTORE;
}

const char* ath__qpg_errmsg(const ath_qpg_t* q) { return q->err; }
int64_t ath__qpg_retries(const ath_qpg_t* q) { return atomic_load(&((ath_qpg_t*)q)->retries); }

#define RETRY_MAX 5 /* runs of one transaction after its first */

/* Whether the transaction that just failed goes again: it lost a deadlock
 * (40P01) or a serialization conflict (40001), so the server rolled all of
 * it back, and it has not used up RETRY_MAX. Then sleeps a jittered
 * 1-2 x 2^k ms first, so the transactions that collided do not collide
 * again in step. */
static int retry_conflict(ath_qpg_t* q, int rc, int k) {
  if (rc != ATH_ESTORE || k >= RETRY_MAX ||
      (strcmp(q->sqlstate, "40P01") != 0 && strcmp(q->sqlstate, "40001") != 0))
    return 0;
  atomic_fetch_add(&q->retries, 1);
  double ms = (double)(1 << k) * (1.0 + ath__random01());
  usleep((useconds_t)(ms * 1000));
  return 1;
}
const char* ath__qpg_sqlstate(const ath_qpg_t* q) { return q->sqlstate; }
int ath__qpg_socket(const ath_qpg_t* q) { return PQstatus(q->conn) == CONNECTION_OK ? PQsocket(q->conn) : -1; }

/* `tmpl` with every {S} replaced by `rep`. */
/* The channels' suffix of this schema: "_" and 8 hex digits of a hash of
 * its name, so that two schemas in one database (two clusters, or tests
 * side by side) never hear each other's notifications (channel names are
 * database-wide). */
static void channel_suffix(const char* schema, char out[10]) {
  snprintf(out, 10, "_%08x", (unsigned)(ath__hash_str(schema) & 0xffffffffu));
}

/* tmpl with {S} replaced by the quoted schema and {H} by the channels'
 * suffix (NULL: none). */
static char* subst2(const char* tmpl, const char* rep, const char* suffix) {
  ath_buf_t b = {0};
  const char* p = tmpl;
  const char* m;
  while ((m = strpbrk(p, "{")) != NULL) {
    const char* with = strncmp(m, "{S}", 3) == 0 ? rep : strncmp(m, "{H}", 3) == 0 ? suffix : NULL;
    if (with == NULL) { /* a brace of the SQL itself */
      if (ath__buf_append(&b, p, (size_t)(m - p) + 1) < 0)
        goto oom;
      p = m + 1;
      continue;
    }
    if (ath__buf_append(&b, p, (size_t)(m - p)) < 0 || ath__buf_append(&b, with, strlen(with)) < 0)
      goto oom;
    p = m + 3;
  }
  if (ath__buf_append(&b, p, strlen(p)) < 0)
    goto oom;
  return b.data;
oom:
  ath__buf_free(&b);
  return NULL;
}

static char* subst(const char* tmpl, const char* rep) {
  return subst2(tmpl, rep, "");
}

/* A blocking statement outside any pipeline (setup, locks, LISTEN). */
static PGresult* exec1(ath_qpg_t* q, const char* sql, int n, const char* const* v) {
  return PQexecParams(q->conn, sql, n, NULL, v, NULL, NULL, 0);
}

static int exec_ok(ath_qpg_t* q, const char* sql, int n, const char* const* v) {
  PGresult* r = exec1(q, sql, n, v);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
    return res_err(q, r);
  PQclear(r);
  return 0;
}

/* The session settings of every provider connection: Athena's own
 * sessions never pin the xmin horizon for long (§7.4); keepalives bound a
 * silent partition. */
static int session_setup(ath_qpg_t* q) {
  PGresult* r = PQexec(q->conn, "SET idle_in_transaction_session_timeout = 60000;"
                                " SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2;"
                                " SET tcp_keepalives_count = 3; SET client_min_messages = warning");
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    return res_err(q, r);
  PQclear(r);
  return 0;
}

int ath__qpg_open(const char* conninfo, const char* schema, int notify, ath_qpg_t** out, char* err,
                  size_t errlen) {
  *out = NULL;
  if (schema == NULL)
    schema = "athena";
  if (conninfo == NULL || schema[0] == '\0' || strlen(schema) > 63) {
    if (errlen > 0)
      snprintf(err, errlen, "%s", conninfo == NULL ? "no conninfo" : "bad schema name");
    return ATH_EINVAL;
  }
  ath_qpg_t* q = calloc(1, sizeof(*q));
  if (q == NULL)
    return ATH_ENOMEM;
  q->base.provider = ath_postgres_queue();
  q->notify = notify != 0;
  q->schema = ath__memdup(schema, strlen(schema));
  q->conn = PQconnectdb(conninfo);
  int rc = ATH_ESTORE;
  if (q->schema == NULL) {
    rc = ATH_ENOMEM;
    goto fail;
  }
  if (PQstatus(q->conn) != CONNECTION_OK) {
    conn_err(q);
    goto fail;
  }
  channel_suffix(schema, q->suffix);
  char* quoted = PQescapeIdentifier(q->conn, schema, strlen(schema));
  if (quoted == NULL) {
    conn_err(q);
    goto fail;
  }
  q->qschema = ath__memdup(quoted, strlen(quoted));
  PQfreemem(quoted);
  if (q->qschema == NULL) {
    rc = ATH_ENOMEM;
    goto fail;
  }
  for (int i = 0; i < ST_COUNT; i++) {
    if ((q->sql[i] = subst2(STMTS[i], q->qschema, q->suffix)) == NULL) {
      rc = ATH_ENOMEM;
      goto fail;
    }
  }
  if ((rc = session_setup(q)) < 0)
    goto fail;
  if (PQsetnonblocking(q->conn, 1) != 0) {
    conn_err(q);
    rc = ATH_ESTORE;
    goto fail;
  }
  *out = q;
  return 0;
fail:
  if (errlen > 0)
    snprintf(err, errlen, "%s", rc == ATH_ENOMEM ? "out of memory" : q->err);
  ath__qpg_close(q);
  return rc;
}

const char* ath__qpg_statement(const ath_qpg_t* q, const char* name) {
  static const struct {
    const char* name;
    int st;
  } names[] = {{"insert", ST_INSERT}, {"claim", ST_CLAIM}, {"finish", ST_FINISH},
               {"stage", ST_STAGE}, {"rescue", ST_RESCUE}};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (strcmp(names[i].name, name) == 0)
      return q->sql[names[i].st];
  return NULL;
}

/* One try of the node's session lock (keyed by schema and nodeId). */
static int node_lock_try(ath_qpg_t* q, const char* node_id, int* held) {
  char key_s[16];
  snprintf(key_s, sizeof(key_s), "%d", ATH_QPG_LOCK_NODE);
  const char* v[3] = {q->schema, node_id, key_s};
  q->err[0] = q->sqlstate[0] = '\0';
  PGresult* r = exec1(q, "SELECT pg_try_advisory_lock(hashtextextended($1 || '/' || $2, $3::bigint))", 3, v);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    return res_err(q, r);
  *held = PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  return 0;
}

int ath__qpg_node_lock(ath_qpg_t* q, const char* node_id, int* held) {
  *held = 0;
  if (q->node_lock != NULL) /* session locks stack: never take it twice */
    return strcmp(q->node_lock, node_id) == 0 ? (*held = 1, 0) : ATH_EINVAL;
  int rc = node_lock_try(q, node_id, held);
  if (rc == 0 && *held && (q->node_lock = strdup(node_id)) == NULL)
    return ATH_ENOMEM;
  return rc;
}

int ath__qpg_reset(ath_qpg_t* q) {
  q->err[0] = q->sqlstate[0] = '\0';
  q->prepared = 0;
  q->head = q->tail = 0;
  PQreset(q->conn);
  if (PQstatus(q->conn) != CONNECTION_OK)
    return conn_err(q);
  int rc = session_setup(q);
  if (rc == 0 && PQsetnonblocking(q->conn, 1) != 0)
    rc = conn_err(q);
  int held = 0;
  if (rc == 0 && q->node_lock != NULL && (rc = node_lock_try(q, q->node_lock, &held)) == 0 && !held) {
    /* the old session's lock went with it, and a live process took it */
    char msg[400];
    snprintf(msg, sizeof(msg), "nodeId %s is held by another live process", q->node_lock);
    set_err(q, msg, "");
    rc = ATH_EBUSY;
  }
  return rc;
}

void ath__qpg_close(ath_qpg_t* q) {
  if (q == NULL)
    return;
  PQfinish(q->conn);
  for (int i = 0; i < ST_COUNT; i++)
    free(q->sql[i]);
  free(q->schema);
  free(q->qschema);
  free(q->node_lock);
  free(q);
}

/* ------------------------------------------------------------ pipeline */

/* Waits until the socket is readable or writable (as asked). */
static int wait_sock(ath_qpg_t* q, short events) {
  struct pollfd p = {.fd = PQsocket(q->conn), .events = events};
  if (p.fd < 0)
    return conn_err(q);
  while (poll(&p, 1, -1) < 0) {
    if (errno != EINTR) {
      set_err(q, strerror(errno), "");
      return ATH_ESTORE;
    }
  }
  return 0;
}

/* Sends everything buffered, reading what the server answers meanwhile so
 * neither side blocks on a full socket (libpq's pipeline advice). */
static int pl_flush(ath_qpg_t* q) {
  int rc;
  while ((rc = PQflush(q->conn)) == 1) {
    if (wait_sock(q, POLLIN | POLLOUT) < 0)
      return ATH_ESTORE;
    if (PQconsumeInput(q->conn) == 0)
      return conn_err(q);
  }
  return rc == 0 ? 0 : conn_err(q);
}

static int pl_push(ath_qpg_t* q, int kind, int st) {
  if (q->tail == (int)(sizeof(q->items) / sizeof(q->items[0]))) {
    set_err(q, "too many statements in one cycle", "");
    return ATH_EINVAL;
  }
  q->items[q->tail].kind = kind;
  q->items[q->tail].st = st;
  q->tail++;
  return 0;
}

static int pl_begin(ath_qpg_t* q) {
  q->head = q->tail = 0;
  q->preparing = 0;
  if (PQenterPipelineMode(q->conn) == 0)
    return conn_err(q);
  return 0;
}

/* Queues statement `st` (preparing it first on this connection if needed). */
static int pl_send(ath_qpg_t* q, int st, int n, const char* const* v) {
  char name[16];
  snprintf(name, sizeof(name), "ath_qpg_%d", st);
  if (!((q->prepared | q->preparing) & (1ull << st))) { /* once per pipeline, even used twice */
    if (PQsendPrepare(q->conn, name, q->sql[st], 0, NULL) == 0)
      return conn_err(q);
    if (pl_push(q, IT_PREP, st) < 0)
      return ATH_EINVAL;
    q->preparing |= 1ull << st;
  }
  if (PQsendQueryPrepared(q->conn, name, n, v, NULL, NULL, 0) == 0)
    return conn_err(q);
  return pl_push(q, IT_QUERY, st);
}

/* A commit point: what was sent since the last one is one transaction. */
static int pl_sync(ath_qpg_t* q) {
  if (PQpipelineSync(q->conn) == 0)
    return conn_err(q);
  return pl_push(q, IT_SYNC, -1);
}

static PGresult* get_result(ath_qpg_t* q) {
  while (PQisBusy(q->conn)) {
    if (wait_sock(q, POLLIN) < 0 || PQconsumeInput(q->conn) == 0)
      return NULL;
  }
  return PQgetResult(q->conn);
}

/* Reads the next item; for a query, returns its result (the caller clears
 * it) after consuming the NULL that ends it. NULL when the connection broke. */
static PGresult* pl_read_item(ath_qpg_t* q, int* kind) {
  if (q->head == q->tail)
    return NULL;
  int k = q->items[q->head].kind, st = q->items[q->head].st;
  q->head++;
  *kind = k;
  PGresult* r = get_result(q);
  if (r == NULL)
    return NULL;
  if (k == IT_SYNC) {
    /* PGRES_PIPELINE_SYNC (no NULL follows it); an error at the commit
     * itself comes first: return that one, the sync consumed */
    PGresult* s = r;
    while (s != NULL && PQresultStatus(s) != PGRES_PIPELINE_SYNC) {
      if ((s = get_result(q)) == NULL) {
        PQclear(r);
        return NULL;
      }
    }
    if (s != r)
      PQclear(s);
    return r;
  }
  PGresult* extra;
  while ((extra = get_result(q)) != NULL) /* the NULL that ends this item */
    PQclear(extra);
  if (k == IT_PREP && PQresultStatus(r) == PGRES_COMMAND_OK)
    q->prepared |= 1ull << st;
  return r;
}

/* The next query's result, skipping prepares and syncs; NULL on a broken
 * connection (q->err set). */
static PGresult* pl_next(ath_qpg_t* q) {
  int kind;
  PGresult* r;
  while ((r = pl_read_item(q, &kind)) != NULL) {
    if (kind == IT_QUERY)
      return r;
    if (kind == IT_PREP && PQresultStatus(r) == PGRES_FATAL_ERROR) {
      res_err(q, r); /* keep the reason: the query after it is aborted */
      continue;
    }
    PQclear(r);
  }
  if (q->err[0] == '\0')
    conn_err(q);
  return NULL;
}

/* Takes the next query's result and checks it returned rows. */
static int pl_rows(ath_qpg_t* q, PGresult** out) {
  PGresult* r = pl_next(q);
  *out = NULL;
  if (r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK) {
    *out = r;
    return 0;
  }
  if (r != NULL && PQresultStatus(r) == PGRES_PIPELINE_ABORTED && q->err[0] != '\0') {
    PQclear(r); /* the earlier error is the reason */
    return ATH_ESTORE;
  }
  return res_err(q, r);
}

/* Reads what is left and leaves pipeline mode; rolls back a failed
 * transaction. rc passes through (or becomes ATH_ESTORE). */
static int pl_end(ath_qpg_t* q, int rc) {
  int kind;
  PGresult* r;
  while (q->head < q->tail) {
    if ((r = pl_read_item(q, &kind)) == NULL) {
      rc = rc < 0 ? rc : conn_err(q);
      break;
    }
    PQclear(r);
  }
  q->head = q->tail = 0;
  if (PQpipelineStatus(q->conn) != PQ_PIPELINE_OFF && PQexitPipelineMode(q->conn) == 0)
    rc = rc < 0 ? rc : conn_err(q);
  /* the session is gone (an operator intervention 57P0x ends it too) */
  if (rc < 0 && (PQstatus(q->conn) == CONNECTION_BAD || strncmp(q->sqlstate, "57P0", 4) == 0))
    snprintf(q->sqlstate, sizeof(q->sqlstate), "08006");
  return rc;
}

/* ------------------------------------------------------------ values */

/* Arrays are built as {…} literals; one buffer per parameter. An append
 * that fails marks the set (params_done reports it). */
typedef struct {
  ath_buf_t b[13];
  int n;
  int failed;
} params_t;

/* Appends a text-array element to parameter i: quoted, `"` and `\`
 * escaped; NULL as NULL. */
static void arr_str(params_t* p, int i, const char* s) {
  ath_buf_t* b = &p->b[i];
  int rc = 0;
  if (b->len > 1)
    rc |= ath__buf_lit(b, ",");
  if (s == NULL) {
    p->failed |= rc | ath__buf_lit(b, "NULL");
    return;
  }
  rc |= ath__buf_lit(b, "\"");
  const char* from = s;
  for (const char* c = s; *c; c++) {
    if (*c == '"' || *c == '\\') {
      rc |= ath__buf_append(b, from, (size_t)(c - from));
      rc |= ath__buf_lit(b, "\\");
      from = c;
    }
  }
  rc |= ath__buf_append(b, from, strlen(from));
  p->failed |= rc | ath__buf_lit(b, "\"");
}

static void arr_int(params_t* p, int i, int64_t v) {
  char t[24];
  int n = snprintf(t, sizeof(t), "%s%" PRId64, p->b[i].len > 1 ? "," : "", v);
  p->failed |= ath__buf_append(&p->b[i], t, (size_t)n);
}

static void params_init(params_t* p, int n) {
  memset(p, 0, sizeof(*p));
  p->n = n;
  for (int i = 0; i < n; i++)
    p->failed |= ath__buf_lit(&p->b[i], "{");
}

/* Closes the arrays into v; 0, or ATH_ENOMEM when an append failed. */
static int params_done(params_t* p, const char** v) {
  for (int i = 0; i < p->n; i++) {
    p->failed |= ath__buf_lit(&p->b[i], "}");
    v[i] = p->b[i].data;
  }
  return p->failed ? ATH_ENOMEM : 0;
}

static void params_free(params_t* p) {
  for (int i = 0; i < p->n; i++)
    ath__buf_free(&p->b[i]);
}

static int64_t get_i64(const PGresult* r, int row, int col) {
  if (col < 0 || PQgetisnull(r, row, col))
    return -1;
  return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static const char* get_str(const PGresult* r, int row, int col) {
  if (col < 0 || PQgetisnull(r, row, col))
    return NULL;
  return PQgetvalue(r, row, col);
}

static int get_bool(const PGresult* r, int row, int col) {
  return col >= 0 && !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] == 't';
}

/* ------------------------------------------------------------ rows */

void ath__qpg_tasks_free(ath_queue_tasks_t* t) {
  if (t == NULL)
    return;
  free(t->rows);
  PQclear(t->res_);
  memset(t, 0, sizeof(*t));
}

void ath__qpg_inserted_clear(ath_queue_inserted_t* r, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(r[i].existing_name);
    r[i].existing_name = NULL;
  }
}

/* Decodes task rows by column name; takes the result. */
static int decode_tasks(PGresult* r, ath_queue_tasks_t* out) {
  memset(out, 0, sizeof(*out));
  int n = PQntuples(r);
  if (n > 0 && (out->rows = calloc((size_t)n, sizeof(*out->rows))) == NULL) {
    PQclear(r);
    return ATH_ENOMEM;
  }
#define COL(name) int c_##name = PQfnumber(r, #name)
  COL(seq); COL(id); COL(name); COL(kind); COL(queue); COL(status); COL(priority); COL(attempt);
  COL(max_attempts); COL(strategy); COL(rescues); COL(wake); COL(hist_n); COL(resumed);
  COL(created_at); COL(ready_at); COL(started_at); COL(close_by); COL(cancel_at); COL(last_hb);
  COL(parent_id); COL(input); COL(error); COL(hb); COL(history); COL(result); COL(completed_at);
  COL(scheduled_at); COL(wait_kind); COL(wait_seq); COL(wait_task); COL(wait_status);
  COL(wait_result); COL(wait_error); COL(call);
#undef COL
  for (int i = 0; i < n; i++) {
    ath_queue_task_t* t = &out->rows[i];
    t->seq = get_i64(r, i, c_seq);
    t->id = get_str(r, i, c_id);
    t->name = get_str(r, i, c_name);
    t->queue = get_str(r, i, c_queue);
    t->kind = (int)get_i64(r, i, c_kind);
    t->status = (int)get_i64(r, i, c_status);
    t->priority = (int)get_i64(r, i, c_priority);
    t->attempt = (int)get_i64(r, i, c_attempt);
    t->max_attempts = (int)get_i64(r, i, c_max_attempts);
    t->strategy = (int)get_i64(r, i, c_strategy);
    t->rescues = (int)get_i64(r, i, c_rescues);
    t->wake = (int)get_i64(r, i, c_wake);
    t->hist_n = (int)get_i64(r, i, c_hist_n);
    t->resumed = get_bool(r, i, c_resumed);
    t->created_at = get_i64(r, i, c_created_at);
    t->ready_at = get_i64(r, i, c_ready_at);
    t->started_at = get_i64(r, i, c_started_at);
    t->close_by = get_i64(r, i, c_close_by);
    t->cancel_at = get_i64(r, i, c_cancel_at);
    t->last_hb = get_i64(r, i, c_last_hb);
    t->parent_id = get_str(r, i, c_parent_id);
    t->input = get_str(r, i, c_input);
    t->error = get_str(r, i, c_error);
    t->hb = get_str(r, i, c_hb);
    t->call = get_str(r, i, c_call);
    t->history = get_str(r, i, c_history);
    t->result = get_str(r, i, c_result);
    t->completed_at = get_i64(r, i, c_completed_at);
    t->scheduled_at = get_i64(r, i, c_scheduled_at);
    t->wait_kind = c_wait_kind >= 0 && !PQgetisnull(r, i, c_wait_kind) ? (int)get_i64(r, i, c_wait_kind) : 0;
    t->wait_seq = get_i64(r, i, c_wait_seq);
    t->wait_task = get_str(r, i, c_wait_task);
    t->wait_status = (int)get_i64(r, i, c_wait_status);
    t->wait_result = get_str(r, i, c_wait_result);
    t->wait_error = get_str(r, i, c_wait_error);
  }
  out->n = (size_t)n;
  out->res_ = r;
  return 0;
}

/* ------------------------------------------------------------ cycle */

static int send_insert(ath_qpg_t* q, const ath_queue_insert_t* rows, size_t n) {
  params_t p;
  const char* v[14];
  params_init(&p, 13);
  for (size_t i = 0; i < n; i++) {
    const ath_queue_insert_t* x = &rows[i];
    if (x->id == NULL || x->name == NULL || x->queue == NULL || x->input == NULL) {
      params_free(&p);
      set_err(q, "insert: id, name, queue and input are required", "");
      return ATH_EINVAL;
    }
    arr_str(&p, 0, x->id);
    arr_str(&p, 1, x->name);
    arr_int(&p, 2, x->kind);
    arr_str(&p, 3, x->queue);
    arr_int(&p, 4, x->priority);
    arr_int(&p, 5, x->max_attempts);
    arr_int(&p, 6, x->strategy);
    arr_int(&p, 7, x->delay_ms);
    arr_int(&p, 8, x->close_after_ms);
    arr_str(&p, 9, x->input);
    arr_str(&p, 10, x->parent_id);
    arr_str(&p, 11, x->notify ? "t" : "f");
    arr_str(&p, 12, x->call);
  }
  int rc = params_done(&p, v);
  v[13] = v[12]; /* $14: the calls; $13: the NOTIFY flag */
  v[12] = q->notify ? "t" : "f";
  if (rc == 0)
    rc = pl_send(q, ST_INSERT, 14, v); /* libpq copies the values */
  params_free(&p);
  return rc;
}

static int read_insert(ath_qpg_t* q, size_t n, ath_queue_inserted_t* out) {
  PGresult* r;
  int rc = pl_rows(q, &r);
  if (rc < 0)
    return rc;
  if ((size_t)PQntuples(r) != n) {
    set_err(q, "insert: row count mismatch", "");
    PQclear(r);
    return ATH_ESTORE;
  }
  for (size_t i = 0; i < n; i++) {
    out[i].seq = get_i64(r, (int)i, 0);
    out[i].created = get_bool(r, (int)i, 1);
    out[i].created_at = get_i64(r, (int)i, 2);
    out[i].existing_name = NULL;
    const char* name = get_str(r, (int)i, 3);
    if (!out[i].created && name != NULL &&
        (out[i].existing_name = ath__memdup(name, strlen(name))) == NULL)
      rc = ATH_ENOMEM;
  }
  PQclear(r);
  if (rc < 0)
    ath__qpg_inserted_clear(out, n);
  return rc;
}

/* Sends statement st fenced by `lease` ($1), the arrays of p ($2...) and,
 * with `notify`, this connection's notify flag last; frees p. */
static int send_fenced(ath_qpg_t* q, int st, int64_t lease, params_t* p, int notify) {
  const char* v[16];
  char lease_s[24];
  snprintf(lease_s, sizeof(lease_s), "%" PRId64, lease);
  v[0] = lease_s;
  int rc = params_done(p, v + 1), n = p->n + 1;
  if (notify)
    v[n++] = q->notify ? "t" : "f";
  if (rc == 0)
    rc = pl_send(q, st, n, v); /* libpq copies the values */
  params_free(p);
  return rc;
}

static int send_finish(ath_qpg_t* q, int64_t lease, const ath_queue_outcome_t* o, size_t n) {
  params_t p;
  params_init(&p, 7);
  for (size_t i = 0; i < n; i++) {
    arr_int(&p, 0, o[i].seq);
    arr_int(&p, 1, o[i].attempt);
    arr_int(&p, 2, o[i].status);
    arr_int(&p, 3, o[i].delay_ms);
    arr_str(&p, 4, o[i].result);
    arr_str(&p, 5, o[i].error);
    arr_int(&p, 6, o[i].worker_id);
  }
  return send_fenced(q, ST_FINISH, lease, &p, 1);
}

static int send_beats(ath_qpg_t* q, int64_t lease, const ath_queue_beat_t* b, size_t n) {
  params_t p;
  params_init(&p, 4);
  for (size_t i = 0; i < n; i++) {
    arr_int(&p, 0, b[i].seq);
    arr_int(&p, 1, b[i].attempt);
    arr_str(&p, 2, b[i].details);
    arr_int(&p, 3, b[i].at);
  }
  return send_fenced(q, ST_HEARTBEAT, lease, &p, 0);
}

/* The per-row answer of a finish, a heartbeat or a park: column 1 says applied. */
static int read_applied(ath_qpg_t* q, size_t n, uint8_t* applied, const char* what) {
  PGresult* r;
  int rc = pl_rows(q, &r);
  if (rc < 0)
    return rc;
  if ((size_t)PQntuples(r) != n) {
    char msg[64];
    snprintf(msg, sizeof(msg), "%s: row count mismatch", what);
    set_err(q, msg, "");
    PQclear(r);
    return ATH_ESTORE;
  }
  for (size_t i = 0; i < n; i++)
    applied[i] = (uint8_t)get_bool(r, (int)i, 1);
  PQclear(r);
  return 0;
}

static int send_hooks(ath_qpg_t* q, int64_t lease, const ath_queue_hook_t* h, size_t n) {
  params_t p;
  params_init(&p, 7);
  for (size_t i = 0; i < n; i++) {
    arr_int(&p, 0, h[i].seq);
    arr_int(&p, 1, h[i].status);
    arr_int(&p, 2, h[i].attempt);
    arr_int(&p, 3, h[i].kind);
    arr_str(&p, 4, h[i].delivery);
    arr_int(&p, 5, h[i].at);
    arr_str(&p, 6, h[i].body);
  }
  return send_fenced(q, ST_HOOK_ADD, lease, &p, 0);
}

/* The outbox ids of a cycle's events, in input order (0: not stored). */
static int read_hooks(ath_qpg_t* q, size_t n, int64_t* ids) {
  PGresult* r;
  int rc = pl_rows(q, &r);
  if (rc < 0)
    return rc;
  if ((size_t)PQntuples(r) != n) {
    set_err(q, "outbox: row count mismatch", "");
    PQclear(r);
    return ATH_ESTORE;
  }
  for (size_t i = 0; i < n; i++)
    ids[i] = get_i64(r, (int)i, 1);
  PQclear(r);
  return 0;
}

static int send_claim(ath_qpg_t* q, int64_t lease, const ath_queue_claim_t* c) {
  char n_s[16], lease_s[24];
  snprintf(n_s, sizeof(n_s), "%d", c->n);
  snprintf(lease_s, sizeof(lease_s), "%" PRId64, lease);
  const char* v[3] = {c->queue, n_s, lease_s};
  return pl_send(q, ST_CLAIM, 3, v);
}

/* ------------------------------------------------------------ workflows (§3.11) */

static int send_appends(ath_qpg_t* q, int64_t lease, const ath_queue_append_t* a, size_t n) {
  params_t p;
  params_init(&p, 3);
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < a[i].n; k++) {
      arr_int(&p, 0, a[i].seq);
      arr_int(&p, 1, a[i].from + (int64_t)k);
      arr_str(&p, 2, a[i].events[k]);
    }
  }
  return send_fenced(q, ST_WF_APPEND, lease, &p, 0);
}

/* Reads the applied flags of a statement answering (seq, applied) per
 * input row: appends answer per distinct seq, in no order. */
static int read_appended(ath_qpg_t* q, const ath_queue_append_t* a, size_t n, uint8_t* applied) {
  PGresult* r;
  int rc = pl_rows(q, &r);
  if (rc < 0)
    return rc;
  for (size_t i = 0; i < n; i++) {
    applied[i] = 0;
    for (int k = 0; k < PQntuples(r); k++)
      if (get_i64(r, k, 0) == a[i].seq)
        applied[i] = (uint8_t)get_bool(r, k, 1);
  }
  PQclear(r);
  return 0;
}

static int send_parks(ath_qpg_t* q, int64_t lease, const ath_queue_park_t* o, size_t n) {
  params_t p;
  params_init(&p, 10);
  for (size_t i = 0; i < n; i++) {
    arr_int(&p, 0, o[i].seq);
    arr_int(&p, 1, o[i].attempt);
    arr_int(&p, 2, o[i].status);
    arr_str(&p, 3, o[i].error);
    arr_int(&p, 4, o[i].wait_kind);
    arr_str(&p, 5, o[i].wait_task);
    arr_int(&p, 6, o[i].wait_seq);
    arr_int(&p, 7, o[i].delay_ms);
    arr_int(&p, 8, o[i].wake_seen);
    arr_int(&p, 9, o[i].run_by);
  }
  return send_fenced(q, ST_WF_PARK, lease, &p, 1);
}

static int send_requeues(ath_qpg_t* q, int64_t lease, const int64_t* seqs, size_t n) {
  params_t p;
  params_init(&p, 1);
  for (size_t i = 0; i < n; i++)
    arr_int(&p, 0, seqs[i]);
  return send_fenced(q, ST_WF_REQUEUE, lease, &p, 1);
}

/* Reads a requeue's answer (fenced rows are simply not requeued). */
static int read_requeued(ath_qpg_t* q) {
  PGresult* r;
  int rc = pl_rows(q, &r);
  PQclear(r);
  return rc;
}

/* The children of workflows seqs[0..n) (ended), cancelled (ST_WF_KIDS). */
static int send_kids(ath_qpg_t* q, const int64_t* seqs, size_t n) {
  params_t p;
  params_init(&p, 1);
  for (size_t i = 0; i < n; i++)
    arr_int(&p, 0, seqs[i]);
  const char* v[2];
  int rc = params_done(&p, v);
  v[1] = q->notify ? "t" : "f";
  if (rc == 0)
    rc = pl_send(q, ST_WF_KIDS, 2, v);
  params_free(&p);
  return rc;
}

int ath__qpg_wf_requeue(ath_qpg_t* q, int64_t lease, const int64_t* seqs, size_t n) {
  ath_queue_cycle_t c = {.lease = lease, .requeues = seqs, .n_requeues = n};
  return n == 0 ? 0 : ath__qpg_cycle(q, &c);
}

/* Reads a commit point: 0 when its transaction committed. */
static int read_sync(ath_qpg_t* q) {
  int kind;
  PGresult* r = pl_read_item(q, &kind);
  if (r == NULL || kind != IT_SYNC || PQresultStatus(r) != PGRES_PIPELINE_SYNC)
    return res_err(q, r); /* the commit failed, or its outcome is unknown */
  PQclear(r);
  return 0;
}

static int cycle_once(ath_qpg_t* q, ath_queue_cycle_t* c) {
  q->err[0] = q->sqlstate[0] = '\0';
  c->committed = 0;
  for (size_t i = 0; i < c->n_claims; i++) {
    memset(c->claims[i].out, 0, sizeof(*c->claims[i].out));
    if (c->claims[i].queue == NULL || c->claims[i].n <= 0)
      return ATH_EINVAL;
  }
  int writes = c->n_inserts > 0 || c->n_outcomes > 0 || c->n_beats > 0 || c->n_appends > 0 ||
               c->n_parks > 0 || c->n_requeues > 0 || c->n_kids > 0;
  if (c->n_hooks > 0 && c->n_outcomes == 0)
    return ATH_EINVAL; /* an event belongs to a finish of its cycle */
  int rc = pl_begin(q);
  if (rc < 0)
    return rc;
  /* send: [heartbeat][insert][append][finish][park][requeue][kids] sync, then
   * [claim] sync per claim (one_commit: a single sync at the end); an
   * attempt's last heartbeat goes before its finish, which ends the lease
   * it is fenced by */
  if (c->n_beats > 0 && (rc = send_beats(q, c->lease, c->beats, c->n_beats)) < 0)
    return pl_end(q, rc);
  if (c->n_inserts > 0 && (rc = send_insert(q, c->inserts, c->n_inserts)) < 0)
    return pl_end(q, rc);
  if (c->n_appends > 0 && (rc = send_appends(q, c->lease, c->appends, c->n_appends)) < 0)
    return pl_end(q, rc);
  if (c->n_outcomes > 0 && (rc = send_finish(q, c->lease, c->outcomes, c->n_outcomes)) < 0)
    return pl_end(q, rc);
  if (c->n_hooks > 0 &&
      (rc = send_hooks(q, c->hook_owner ? c->hook_owner : c->lease, c->hooks, c->n_hooks)) < 0)
    return pl_end(q, rc);
  if (c->n_parks > 0 && (rc = send_parks(q, c->lease, c->parks, c->n_parks)) < 0)
    return pl_end(q, rc);
  if (c->n_requeues > 0 && (rc = send_requeues(q, c->lease, c->requeues, c->n_requeues)) < 0)
    return pl_end(q, rc);
  if (c->n_kids > 0 && (rc = send_kids(q, c->kids, c->n_kids)) < 0)
    return pl_end(q, rc);
  if (writes && !c->one_commit && (rc = pl_sync(q)) < 0)
    return pl_end(q, rc);
  for (size_t i = 0; i < c->n_claims; i++) {
    if ((rc = send_claim(q, c->lease, &c->claims[i])) < 0 ||
        (!c->one_commit && (rc = pl_sync(q)) < 0))
      return pl_end(q, rc);
  }
  if ((c->one_commit && (rc = pl_sync(q)) < 0) || (rc = pl_flush(q)) < 0)
    return pl_end(q, rc);
  /* one round trip: the results come back in order */
  if (c->n_beats > 0 && (rc = read_applied(q, c->n_beats, c->beat_applied, "heartbeat")) < 0)
    return pl_end(q, rc);
  if (c->n_inserts > 0 && (rc = read_insert(q, c->n_inserts, c->inserted)) < 0)
    return pl_end(q, rc);
  if (c->n_appends > 0 && (rc = read_appended(q, c->appends, c->n_appends, c->appended)) < 0)
    goto fail_writes;
  if (c->n_outcomes > 0 && (rc = read_applied(q, c->n_outcomes, c->applied, "finish")) < 0)
    goto fail_writes;
  if (c->n_hooks > 0 && (rc = read_hooks(q, c->n_hooks, c->hook_ids)) < 0)
    goto fail_writes;
  if (c->n_parks > 0 && (rc = read_applied(q, c->n_parks, c->parked, "park")) < 0)
    goto fail_writes;
  if (c->n_requeues > 0 && (rc = read_requeued(q)) < 0)
    goto fail_writes;
  if (c->n_kids > 0 && (rc = read_requeued(q)) < 0)
    goto fail_writes;
  if (writes && !c->one_commit) {
    if ((rc = read_sync(q)) < 0)
      goto fail_writes;
    c->committed = 1;
  }
  for (size_t i = 0; i < c->n_claims; i++) {
    PGresult* r;
    if ((rc = pl_rows(q, &r)) < 0 || (rc = decode_tasks(r, c->claims[i].out)) < 0 ||
        (!c->one_commit && (rc = read_sync(q)) < 0)) {
      /* claims before it committed: their rows stay with the caller */
      ath__qpg_tasks_free(c->claims[i].out);
      if (!c->one_commit)
        return pl_end(q, rc);
      goto fail_claims;
    }
  }
  if (c->one_commit) {
    if ((rc = read_sync(q)) < 0)
      goto fail_claims;
    c->committed = writes;
  }
  return pl_end(q, 0);
fail_claims: /* one commit: nothing of it happened */
  for (size_t i = 0; i < c->n_claims; i++)
    ath__qpg_tasks_free(c->claims[i].out);
fail_writes:
  ath__qpg_inserted_clear(c->inserted, c->n_inserts);
  return pl_end(q, rc);
}

/* A cycle that failed with nothing of it committed (its claims too: one
 * commit, or none) runs again on a deadlock or serialization conflict. */
int ath__qpg_cycle(ath_qpg_t* q, ath_queue_cycle_t* c) {
  int rc, k = 0;
  while ((rc = cycle_once(q, c)) < 0 && !c->committed && (c->one_commit || c->n_claims == 0) &&
         retry_conflict(q, rc, k))
    k++;
  return rc;
}

int ath__qpg_insert(ath_qpg_t* q, const ath_queue_insert_t* rows, size_t n, ath_queue_inserted_t* out) {
  ath_queue_cycle_t c = {.inserts = rows, .n_inserts = n, .inserted = out};
  return n == 0 ? 0 : ath__qpg_cycle(q, &c);
}

int ath__qpg_claim(ath_qpg_t* q, int64_t lease, const char* queue, int n, ath_queue_tasks_t* out) {
  ath_queue_claim_t cl = {.queue = queue, .n = n, .out = out};
  ath_queue_cycle_t c = {.lease = lease, .claims = &cl, .n_claims = 1};
  return ath__qpg_cycle(q, &c);
}

int ath__qpg_finish(ath_qpg_t* q, int64_t lease, const ath_queue_outcome_t* o, size_t n,
                    uint8_t* applied) {
  ath_queue_cycle_t c = {.outcomes = o, .n_outcomes = n, .applied = applied, .lease = lease};
  return n == 0 ? 0 : ath__qpg_cycle(q, &c);
}

/* Runs one prepared statement in its own pipeline (one transaction) and
 * returns its rows. */
static int run1_once(ath_qpg_t* q, int st, int n, const char* const* v, PGresult** out) {
  q->err[0] = q->sqlstate[0] = '\0';
  int rc = pl_begin(q);
  if (rc < 0)
    return rc;
  if ((rc = pl_send(q, st, n, v)) < 0 || (rc = pl_sync(q)) < 0 || (rc = pl_flush(q)) < 0)
    return pl_end(q, rc);
  rc = pl_rows(q, out);
  rc = pl_end(q, rc);
  if (rc < 0 && *out != NULL) {
    PQclear(*out);
    *out = NULL;
  }
  return rc;
}

/* run1_once, again after a deadlock or a serialization conflict. */
static int run1(ath_qpg_t* q, int st, int n, const char* const* v, PGresult** out) {
  int rc, k = 0;
  while ((rc = run1_once(q, st, n, v, out)) < 0 && retry_conflict(q, rc, k))
    k++;
  return rc;
}

int ath__qpg_stage(ath_qpg_t* q, const int64_t* seqs, size_t n, int64_t late_ms, int limit,
                   int* staged) {
  PGresult* r = NULL;
  int rc;
  const char* flag = q->notify ? "t" : "f";
  if (seqs != NULL) {
    params_t p;
    const char* v[2];
    params_init(&p, 1);
    for (size_t i = 0; i < n; i++)
      arr_int(&p, 0, seqs[i]);
    rc = params_done(&p, v);
    v[1] = flag;
    if (rc == 0)
      rc = run1(q, ST_STAGE, 2, v, &r);
    params_free(&p);
  } else {
    char late_s[24], limit_s[16];
    snprintf(late_s, sizeof(late_s), "%" PRId64, late_ms);
    snprintf(limit_s, sizeof(limit_s), "%d", limit);
    const char* v[3] = {late_s, limit_s, flag};
    rc = run1(q, ST_SWEEP, 3, v, &r);
  }
  if (rc == 0 && staged != NULL)
    *staged = (int)get_i64(r, 0, 0);
  PQclear(r);
  return rc;
}

int ath__qpg_rescue(ath_qpg_t* q, int64_t leader, int limit, int64_t grace_ms,
                    ath_queue_tasks_t* out) {
  char leader_s[24], limit_s[16], grace_s[24];
  snprintf(leader_s, sizeof(leader_s), "%" PRId64, leader);
  snprintf(limit_s, sizeof(limit_s), "%d", limit);
  snprintf(grace_s, sizeof(grace_s), "%" PRId64, grace_ms);
  const char* v[2] = {leader_s, limit_s};
  const char* g[1] = {grace_s};
  memset(out, 0, sizeof(*out));
  q->err[0] = q->sqlstate[0] = '\0';
  int rc = pl_begin(q);
  if (rc < 0)
    return rc;
  /* take the leases, then (own transaction) drop dead rows with none left */
  if ((rc = pl_send(q, ST_RESCUE, 2, v)) < 0 || (rc = pl_sync(q)) < 0 ||
      (rc = pl_send(q, ST_REAP, 1, g)) < 0 || (rc = pl_sync(q)) < 0 || (rc = pl_flush(q)) < 0)
    return pl_end(q, rc);
  PGresult* r;
  if ((rc = pl_rows(q, &r)) == 0 && (rc = decode_tasks(r, out)) == 0 && (rc = read_sync(q)) < 0)
    ath__qpg_tasks_free(out); /* not known to be committed: the next pass takes them again */
  if (rc < 0)
    return pl_end(q, rc);
  /* the rescue committed: its rows are the caller's whatever the reap did
   * (a failed reap leaves dead rows for the next pass) */
  pl_end(q, 0);
  return 0;
}

int ath__qpg_expire(ath_qpg_t* q, int64_t leader, int limit, ath_queue_tasks_t* out) {
  char leader_s[24], limit_s[16];
  snprintf(leader_s, sizeof(leader_s), "%" PRId64, leader);
  snprintf(limit_s, sizeof(limit_s), "%d", limit);
  const char* v[2] = {leader_s, limit_s};
  const char* tv[2] = {limit_s, q->notify ? "t" : "f"};
  PGresult* r = NULL;
  memset(out, 0, sizeof(*out));
  int rc = run1(q, ST_RUN_TIMEOUT, 2, tv, &r);
  PQclear(r);
  r = NULL;
  if (rc >= 0)
    rc = run1(q, ST_EXPIRE, 2, v, &r);
  return rc < 0 ? rc : decode_tasks(r, out);
}

int ath__qpg_prune(ath_qpg_t* q, int64_t retention_ms, int limit, int* deleted) {
  char ret_s[24], limit_s[16];
  snprintf(ret_s, sizeof(ret_s), "%" PRId64, retention_ms);
  snprintf(limit_s, sizeof(limit_s), "%d", limit);
  const char* v[2] = {ret_s, limit_s};
  PGresult* r = NULL;
  int rc = run1(q, ST_PRUNE, 2, v, &r);
  if (rc < 0)
    return rc;
  if (deleted != NULL)
    *deleted = PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 0)) : 0;
  PQclear(r);
  return 0;
}

/* ------------------------------------------------------------ node lease */

int ath__qpg_take_over(ath_qpg_t* q, const char* node_id, int64_t incarnation, ath_queue_tasks_t* out) {
  char inc_s[24];
  snprintf(inc_s, sizeof(inc_s), "%" PRId64, incarnation);
  const char* v[2] = {node_id, inc_s};
  PGresult* r = NULL;
  memset(out, 0, sizeof(*out));
  int rc = run1(q, ST_TAKEOVER, 2, v, &r);
  return rc < 0 ? rc : decode_tasks(r, out);
}

int ath__qpg_node_register(ath_qpg_t* q, const ath_queue_node_t* n, uint64_t now_ns,
                           ath_queue_lease_t* lease) {
  if (n->node_id == NULL || n->ttl_ms <= 0 || n->interval_ms <= 0)
    return ATH_EINVAL;
  char host[256] = "";
  if (n->host != NULL)
    snprintf(host, sizeof(host), "%s", n->host);
  else if (gethostname(host, sizeof(host) - 1) != 0)
    snprintf(host, sizeof(host), "unknown");
  char pid_s[16], ttl_s[24], slots_s[16];
  snprintf(pid_s, sizeof(pid_s), "%d", n->pid ? n->pid : (int)getpid());
  snprintf(ttl_s, sizeof(ttl_s), "%" PRId64, n->ttl_ms);
  snprintf(slots_s, sizeof(slots_s), "%d", n->slots);
  params_t p;
  const char* qv[1];
  params_init(&p, 1);
  for (const char* const* s = n->queues; s != NULL && *s != NULL; s++)
    arr_str(&p, 0, *s);
  int rc = params_done(&p, qv);
  PGresult* r = NULL;
  if (rc == 0) {
    const char* v[7] = {n->node_id, host, pid_s, ttl_s, qv[0], slots_s, n->leader ? "t" : "f"};
    rc = run1(q, ST_REGISTER, 7, v, &r);
  }
  params_free(&p);
  if (rc < 0)
    return rc;
  memset(lease, 0, sizeof(*lease));
  lease->incarnation = get_i64(r, 0, 0);
  lease->expires_at = get_i64(r, 0, 1);
  lease->ttl_ms = n->ttl_ms;
  lease->interval_ms = n->interval_ms;
  lease->renewed_ns = now_ns;
  PQclear(r);
  return 0;
}

int ath__qpg_node_renew(ath_qpg_t* q, ath_queue_lease_t* lease, uint64_t now_ns, const char* metrics) {
  char inc_s[24], ttl_s[24];
  snprintf(inc_s, sizeof(inc_s), "%" PRId64, lease->incarnation);
  snprintf(ttl_s, sizeof(ttl_s), "%" PRId64, lease->ttl_ms);
  const char* v[3] = {inc_s, ttl_s, metrics};
  PGresult* r = NULL;
  int rc = run1(q, ST_RENEW, 3, v, &r);
  if (rc < 0)
    return rc;
  if (PQntuples(r) == 0) {
    lease->lost = 1;
    PQclear(r);
    set_err(q, "node lease expired", "");
    return ATH_EWORKERLOST;
  }
  lease->expires_at = get_i64(r, 0, 0);
  lease->renewed_ns = now_ns;
  PQclear(r);
  return 0;
}

int ath__qpg_node_release(ath_qpg_t* q, ath_queue_lease_t* lease) {
  char inc_s[24];
  snprintf(inc_s, sizeof(inc_s), "%" PRId64, lease->incarnation);
  const char* v[1] = {inc_s};
  /* expire the row; delete it when it leases nothing */
  char* sql = subst("WITH d AS (DELETE FROM {S}.nodes WHERE incarnation = $1"
                    " AND NOT EXISTS (SELECT 1 FROM {S}.tasks t WHERE t.lease = $1)"
                    " RETURNING incarnation)"
                    " UPDATE {S}.nodes SET expires_at = 0 WHERE incarnation = $1"
                    " AND NOT EXISTS (SELECT 1 FROM d)",
                    q->qschema);
  if (sql == NULL)
    return ATH_ENOMEM;
  int rc = exec_ok(q, sql, 1, v);
  free(sql);
  if (rc == 0)
    lease->lost = 1; /* nothing may be claimed under it any more */
  return rc;
}

/* ------------------------------------------------------------ migrations */

/* A single-row, single-value query; *out NULL for no row or NULL. */
static int query_value(ath_qpg_t* q, const char* sql, int n, const char* const* v, char** out) {
  *out = NULL;
  PGresult* r = exec1(q, sql, n, v);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    return res_err(q, r);
  if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
    const char* s = PQgetvalue(r, 0, 0);
    if ((*out = ath__memdup(s, strlen(s))) == NULL) {
      PQclear(r);
      return ATH_ENOMEM;
    }
  }
  PQclear(r);
  return 0;
}

int ath__qpg_migrate(ath_qpg_t* q, int* version) {
  q->err[0] = q->sqlstate[0] = '\0';
  char key_s[16];
  snprintf(key_s, sizeof(key_s), "%d", ATH_QPG_LOCK_MIGRATE);
  const char* lv[2] = {key_s, q->schema};
  const char* qs = q->qschema;
  size_t qlen = strlen(qs);
  int rc, found = 0;
  char* v = NULL;
  char* sql = NULL;
  if ((rc = exec_ok(q, "BEGIN", 0, NULL)) < 0)
    goto out;
  if ((rc = exec_ok(q, "SELECT pg_advisory_xact_lock($1::int, hashtext($2))", 2, lv)) < 0)
    goto rollback;
  sql = subst("CREATE SCHEMA IF NOT EXISTS {S}", qs);
  if (sql == NULL || (rc = exec_ok(q, sql, 0, NULL)) < 0)
    goto rollback;
  free(sql);
  sql = NULL;
  /* to_regclass takes the quoted name as a literal */
  {
    PGresult* r;
    char* lit = PQescapeLiteral(q->conn, qs, qlen);
    if (lit == NULL) {
      rc = conn_err(q);
      goto rollback;
    }
    ath_buf_t b = {0};
    ath__buf_lit(&b, "SELECT to_regclass(");
    ath__buf_append(&b, lit, strlen(lit));
    ath__buf_lit(&b, " || '.meta') IS NOT NULL, (SELECT count(*) FROM pg_tables WHERE schemaname = $1)");
    PQfreemem(lit);
    if (b.data == NULL) {
      rc = ATH_ENOMEM;
      goto rollback;
    }
    r = exec1(q, b.data, 1, (const char* const*)&q->schema);
    ath__buf_free(&b);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
      rc = res_err(q, r);
      goto rollback;
    }
    int has_meta = PQgetvalue(r, 0, 0)[0] == 't';
    long tables = strtol(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    if (!has_meta && tables > 0) {
      set_err(q, "the schema holds tables but is not Athena's (no meta table)", "");
      rc = ATH_EINVAL;
      goto rollback;
    }
    if (has_meta) {
      sql = subst("SELECT value FROM {S}.meta WHERE key = 'schema_version'", qs);
      if (sql == NULL || (rc = query_value(q, sql, 0, NULL, &v)) < 0)
        goto rollback;
      found = v != NULL ? atoi(v) : 0;
      if (found <= 0) {
        set_err(q, "the meta table has no schema_version", "");
        rc = ATH_EINVAL;
        goto rollback;
      }
      free(sql);
      sql = NULL;
    } else {
      sql = subst("CREATE TABLE {S}.meta (key text PRIMARY KEY, value text NOT NULL)", qs);
      if (sql == NULL || (rc = exec_ok(q, sql, 0, NULL)) < 0)
        goto rollback;
      free(sql);
      sql = NULL;
    }
  }
  if (found > ATH_QPG_SCHEMA_VERSION) {
    snprintf(q->err, sizeof(q->err), "schema version %d is newer than this build's (%d)", found,
             ATH_QPG_SCHEMA_VERSION);
    rc = ATH_EINVAL;
    goto rollback;
  }
  for (int ver = found + 1; ver <= ATH_QPG_SCHEMA_VERSION; ver++) {
    sql = subst(MIGRATIONS[ver - 1], qs);
    if (sql == NULL) {
      rc = ATH_ENOMEM;
      goto rollback;
    }
    PGresult* r = PQexec(q->conn, sql); /* several statements: simple protocol */
    free(sql);
    sql = NULL;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      rc = res_err(q, r);
      goto rollback;
    }
    PQclear(r);
  }
  if (found < ATH_QPG_SCHEMA_VERSION) {
    char ver_s[16];
    snprintf(ver_s, sizeof(ver_s), "%d", ATH_QPG_SCHEMA_VERSION);
    const char* vv[1] = {ver_s};
    sql = subst("INSERT INTO {S}.meta VALUES ('schema_version', $1)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                qs);
    if (sql == NULL || (rc = exec_ok(q, sql, 1, vv)) < 0)
      goto rollback;
  }
  rc = exec_ok(q, "COMMIT", 0, NULL);
  goto out;
rollback:
  if (rc == 0)
    rc = ATH_ENOMEM;
  {
    char keep[sizeof(q->err)], state[6];
    memcpy(keep, q->err, sizeof(keep));
    memcpy(state, q->sqlstate, sizeof(state));
    PQclear(PQexec(q->conn, "ROLLBACK"));
    memcpy(q->err, keep, sizeof(keep));
    memcpy(q->sqlstate, state, sizeof(state));
  }
out:
  if (version != NULL)
    *version = found;
  free(sql);
  free(v);
  return rc;
}

/* ------------------------------------------------------------ leader */

static int leader_query(ath_qpg_t* q, const char* sql, int* held) {
  char key_s[16];
  snprintf(key_s, sizeof(key_s), "%d", ATH_QPG_LOCK_LEADER);
  const char* v[2] = {key_s, q->schema};
  q->err[0] = q->sqlstate[0] = '\0';
  PGresult* r = exec1(q, sql, 2, v);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    return res_err(q, r);
  if (held != NULL)
    *held = PQntuples(r) > 0 && PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  return 0;
}

int ath__qpg_leader_try(ath_qpg_t* q, int* held) {
  int rc = ath__qpg_leader_holds(q, held);
  if (rc < 0 || *held)
    return rc; /* session locks stack: never take it twice */
  return leader_query(q, "SELECT pg_try_advisory_lock($1::int, hashtext($2))", held);
}

int ath__qpg_leader_holds(ath_qpg_t* q, int* held) {
  /* a two-int advisory lock is (classid, objid, objsubid 2), the ints as oids */
  return leader_query(q,
                      "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                      " AND pid = pg_backend_pid() AND granted AND objsubid = 2"
                      " AND classid = ($1::int::bigint & 4294967295)::oid"
                      " AND objid = (hashtext($2)::bigint & 4294967295)::oid)",
                      held);
}

int ath__qpg_leader_resign(ath_qpg_t* q) {
  int rc = leader_query(q, "SELECT pg_advisory_unlock($1::int, hashtext($2))", NULL);
  if (rc == 0 && q->notify) {
    char ch[32];
    snprintf(ch, sizeof(ch), "athena_leader%s", q->suffix);
    const char* v[1] = {ch};
    rc = exec_ok(q, "SELECT pg_notify($1, 'resigned')", 1, v);
  }
  return rc;
}

/* ------------------------------------------------------------ schedules */

/* Runs a schedule statement whose answer is (changed rows, notified). */
static int sched_count(ath_qpg_t* q, int st, int n, const char* const* v, int* count) {
  PGresult* r = NULL;
  int rc = run1(q, st, n, v, &r);
  if (rc == 0 && count != NULL)
    *count = (int)get_i64(r, 0, 0);
  PQclear(r);
  return rc;
}

static void i64_or_null(char* buf, size_t len, int64_t v, const char** out) {
  snprintf(buf, len, "%" PRId64, v);
  *out = v >= 0 ? buf : NULL;
}

int ath__qpg_schedule_put(ath_qpg_t* q, const ath_queue_schedule_t* s, int* changed) {
  if (s->id == NULL || s->name == NULL || s->input == NULL || s->definition == NULL)
    return ATH_EINVAL;
  char once_s[24], catch_s[8], prio_s[16], strat_s[16], max_s[16], close_s[24], next_s[24];
  const char *once_v, *close_v, *next_v;
  i64_or_null(once_s, sizeof(once_s), s->cron ? -1 : s->once_at, &once_v);
  i64_or_null(close_s, sizeof(close_s), s->close_after_ms > 0 ? s->close_after_ms : -1, &close_v);
  i64_or_null(next_s, sizeof(next_s), s->next_ms > 0 ? s->next_ms : -1, &next_v);
  snprintf(catch_s, sizeof(catch_s), "%d", s->catch_up);
  snprintf(prio_s, sizeof(prio_s), "%d", s->priority);
  snprintf(strat_s, sizeof(strat_s), "%d", s->strategy);
  snprintf(max_s, sizeof(max_s), "%d", s->max_attempts > 0 ? s->max_attempts : 1);
  const char* v[16] = {s->id, s->name, s->input, s->cron, once_v, s->local_tz ? "t" : "f",
                       catch_s, s->overlap_skip ? "t" : "f", prio_s, strat_s, max_s, close_v,
                       s->queue, next_v, s->definition, q->notify ? "t" : "f"};
  return sched_count(q, ST_SCHED_PUT, 16, v, changed);
}

/* Sends ST_SCHED_FIRE for f into the open pipeline. */
static int send_fire(ath_qpg_t* q, const ath_queue_fire_t* f) {
  char expect_s[24], at_s[24], next_s[24], skip_s[24];
  const char* next_v;
  snprintf(expect_s, sizeof(expect_s), "%" PRId64, f->expect);
  snprintf(at_s, sizeof(at_s), "%" PRId64, f->at);
  i64_or_null(next_s, sizeof(next_s), f->next > 0 ? f->next : -1, &next_v);
  snprintf(skip_s, sizeof(skip_s), "%" PRId64, f->skip);
  const char* v[7] = {f->id, expect_s, at_s, next_v, f->fire ? "t" : "f", skip_s,
                      q->notify ? "t" : "f"};
  return pl_send(q, ST_SCHED_FIRE, 7, v); /* libpq copies the values */
}

static int fire_many_once(ath_qpg_t* q, const ath_queue_fire_t* f, size_t n, ath_queue_fired_t* out) {
  q->err[0] = q->sqlstate[0] = '\0';
  int rc = pl_begin(q);
  if (rc < 0)
    return rc;
  for (size_t i = 0; i < n; i++)
    if ((rc = send_fire(q, &f[i])) < 0)
      return pl_end(q, rc);
  if ((rc = pl_sync(q)) < 0 || (rc = pl_flush(q)) < 0)
    return pl_end(q, rc);
  for (size_t i = 0; i < n; i++) {
    PGresult* r;
    if ((rc = pl_rows(q, &r)) < 0)
      return pl_end(q, rc);
    out[i].advanced = (int)get_i64(r, 0, 0);
    out[i].created = (int)get_i64(r, 0, 1);
    out[i].skipped = (int)get_i64(r, 0, 2);
    PQclear(r);
  }
  rc = read_sync(q);
  return pl_end(q, rc);
}

int ath__qpg_schedule_fire_many(ath_qpg_t* q, const ath_queue_fire_t* f, size_t n, ath_queue_fired_t* out) {
  memset(out, 0, n * sizeof(*out));
  if (n == 0)
    return 0;
  if (n > ATH_QUEUE_FIRE_MAX) {
    set_err(q, "too many occurrences in one fire", "");
    return ATH_EINVAL;
  }
  int rc, k = 0;
  while ((rc = fire_many_once(q, f, n, out)) < 0 && retry_conflict(q, rc, k))
    k++;
  if (rc < 0)
    memset(out, 0, n * sizeof(*out)); /* rolled back: none of it happened */
  return rc;
}

int ath__qpg_schedule_fire(ath_qpg_t* q, const ath_queue_fire_t* f, int* advanced, int* created,
                           int* skipped) {
  ath_queue_fired_t o;
  int rc = ath__qpg_schedule_fire_many(q, f, 1, &o);
  if (rc == 0) {
    if (advanced != NULL)
      *advanced = o.advanced;
    if (created != NULL)
      *created = o.created;
    if (skipped != NULL)
      *skipped = o.skipped;
  }
  return rc;
}

/* Decodes schedule rows (SCHED_COLS, now); takes the result. */
static int decode_scheds(PGresult* r, ath_queue_scheds_t* out) {
  memset(out, 0, sizeof(*out));
  int n = PQntuples(r);
  if (n > 0 && (out->rows = calloc((size_t)n, sizeof(*out->rows))) == NULL) {
    PQclear(r);
    return ATH_ENOMEM;
  }
  for (int i = 0; i < n; i++) {
    ath_queue_sched_row_t* s = &out->rows[i];
    s->id = get_str(r, i, 0);
    s->name = get_str(r, i, 1);
    s->input = get_str(r, i, 2);
    s->cron = get_str(r, i, 3);
    s->once_at = get_i64(r, i, 4);
    s->local_tz = get_bool(r, i, 5);
    s->catch_up = (int)get_i64(r, i, 6);
    s->overlap_skip = get_bool(r, i, 7);
    s->paused = get_bool(r, i, 8);
    s->priority = (int)get_i64(r, i, 9);
    s->strategy = (int)get_i64(r, i, 10);
    s->max_attempts = (int)get_i64(r, i, 11);
    s->close_after_ms = get_i64(r, i, 12);
    s->queue = get_str(r, i, 13);
    s->next_ms = get_i64(r, i, 14);
    s->last_ms = get_i64(r, i, 15);
    s->total = get_i64(r, i, 16);
    s->skipped = get_i64(r, i, 17);
    s->last_task = get_str(r, i, 18);
  }
  out->n = (size_t)n;
  out->now = n > 0 ? get_i64(r, 0, 19) : -1;
  out->res_ = r;
  return 0;
}

void ath__qpg_scheds_free(ath_queue_scheds_t* s) {
  if (s == NULL)
    return;
  free(s->rows);
  PQclear(s->res_);
  memset(s, 0, sizeof(*s));
}

int ath__qpg_schedules(ath_qpg_t* q, const char* id, ath_queue_scheds_t* out) {
  memset(out, 0, sizeof(*out));
  const char* v[1] = {id};
  PGresult* r = NULL;
  int rc = run1(q, ST_SCHED_LIST, 1, v, &r);
  return rc < 0 ? rc : decode_scheds(r, out);
}

int ath__qpg_schedules_due(ath_qpg_t* q, int limit, ath_queue_scheds_t* out) {
  memset(out, 0, sizeof(*out));
  char limit_s[16];
  snprintf(limit_s, sizeof(limit_s), "%d", limit);
  const char* v[1] = {limit_s};
  PGresult* r = NULL;
  int rc = run1(q, ST_SCHED_DUE, 1, v, &r);
  return rc < 0 ? rc : decode_scheds(r, out);
}

int ath__qpg_schedule_pause(ath_qpg_t* q, const char* id, int* found) {
  const char* v[2] = {id, q->notify ? "t" : "f"};
  return sched_count(q, ST_SCHED_PAUSE, 2, v, found);
}

int ath__qpg_schedule_resume(ath_qpg_t* q, const char* id, int64_t next_ms, int* resumed) {
  char next_s[24];
  const char* next_v;
  i64_or_null(next_s, sizeof(next_s), next_ms > 0 ? next_ms : -1, &next_v);
  const char* v[3] = {id, next_v, q->notify ? "t" : "f"};
  return sched_count(q, ST_SCHED_RESUME, 3, v, resumed);
}

int ath__qpg_schedule_delete(ath_qpg_t* q, const char* id, int* found) {
  const char* v[2] = {id, q->notify ? "t" : "f"};
  return sched_count(q, ST_SCHED_DELETE, 2, v, found);
}

int ath__qpg_now(ath_qpg_t* q, int64_t* now) {
  char* sql = subst("SELECT {S}.now_ms()", q->qschema);
  if (sql == NULL)
    return ATH_ENOMEM;
  char* v = NULL;
  q->err[0] = q->sqlstate[0] = '\0';
  int rc = query_value(q, sql, 0, NULL, &v);
  free(sql);
  if (rc == 0)
    *now = v ? strtoll(v, NULL, 10) : 0;
  free(v);
  return rc;
}

int ath__qpg_vacuum_ready(ath_qpg_t* q) {
  char* sql = subst("VACUUM (SKIP_LOCKED) {S}.ready", q->qschema);
  if (sql == NULL)
    return ATH_ENOMEM;
  q->err[0] = q->sqlstate[0] = '\0';
  PGresult* r = PQexec(q->conn, sql);
  free(sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK)
    return res_err(q, r);
  PQclear(r);
  return 0;
}

/* ------------------------------------------------------------ reads */

int ath__qpg_read(ath_qpg_t* q, const int64_t* seqs, size_t n, int ended_only, ath_queue_tasks_t* out) {
  memset(out, 0, sizeof(*out));
  params_t p;
  const char* v[2];
  params_init(&p, 1);
  for (size_t i = 0; i < n; i++)
    arr_int(&p, 0, seqs[i]);
  int rc = params_done(&p, v);
  v[1] = ended_only ? "f" : "t";
  PGresult* r = NULL;
  if (rc == 0)
    rc = run1(q, ST_READ, 2, v, &r);
  params_free(&p);
  return rc < 0 ? rc : decode_tasks(r, out);
}

int ath__qpg_get(ath_qpg_t* q, const char* id, ath_queue_tasks_t* out) {
  memset(out, 0, sizeof(*out));
  const char* v[1] = {id};
  PGresult* r = NULL;
  int rc = run1(q, ST_GET, 1, v, &r);
  return rc < 0 ? rc : decode_tasks(r, out);
}

int ath__qpg_cancel(ath_qpg_t* q, int64_t seq, int* how) {
  char seq_s[24];
  snprintf(seq_s, sizeof(seq_s), "%" PRId64, seq);
  const char* v[2] = {seq_s, q->notify ? "t" : "f"};
  PGresult* r = NULL;
  int rc = run1(q, ST_CANCEL, 2, v, &r);
  if (rc < 0)
    return rc;
  *how = PQntuples(r) > 0 ? (int)get_i64(r, 0, 0) : 0;
  PQclear(r);
  return 0;
}

int ath__qpg_wf_take(ath_qpg_t* q, int64_t lease, const int64_t* seqs, size_t n, int by_parent,
                     ath_queue_tasks_t* out) {
  memset(out, 0, sizeof(*out));
  params_t p;
  params_init(&p, 2);
  for (size_t i = 0; i < n; i++)
    arr_int(&p, by_parent ? 1 : 0, seqs[i]);
  const char* v[3];
  char lease_s[24];
  snprintf(lease_s, sizeof(lease_s), "%" PRId64, lease);
  v[0] = lease_s;
  int rc = params_done(&p, v + 1);
  PGresult* r = NULL;
  if (rc == 0)
    rc = run1(q, ST_WF_TAKE, 3, v, &r);
  params_free(&p);
  return rc < 0 ? rc : decode_tasks(r, out);
}

int ath__qpg_cancelled(ath_qpg_t* q, int64_t lease, int64_t** seqs, size_t* n) {
  char inc_s[24];
  snprintf(inc_s, sizeof(inc_s), "%" PRId64, lease);
  const char* v[1] = {inc_s};
  PGresult* r = NULL;
  *seqs = NULL;
  *n = 0;
  int rc = run1(q, ST_CANCELLED, 1, v, &r);
  if (rc < 0)
    return rc;
  int k = PQntuples(r);
  if (k > 0 && (*seqs = malloc((size_t)k * sizeof(**seqs))) == NULL) {
    PQclear(r);
    return ATH_ENOMEM;
  }
  for (int i = 0; i < k; i++)
    (*seqs)[i] = get_i64(r, i, 0);
  *n = (size_t)k;
  PQclear(r);
  return 0;
}

int ath__qpg_leased(ath_qpg_t* q, int64_t lease, ath_queue_tasks_t* out) {
  char inc_s[24];
  snprintf(inc_s, sizeof(inc_s), "%" PRId64, lease);
  const char* v[1] = {inc_s};
  PGresult* r = NULL;
  memset(out, 0, sizeof(*out));
  int rc = run1(q, ST_LEASED, 1, v, &r);
  return rc < 0 ? rc : decode_tasks(r, out);
}

int ath__qpg_hooks_done(ath_qpg_t* q, const int64_t* ids, size_t n) {
  if (n == 0)
    return 0;
  params_t p;
  const char* v[1];
  params_init(&p, 1);
  for (size_t i = 0; i < n; i++)
    arr_int(&p, 0, ids[i]);
  PGresult* r = NULL;
  int rc = params_done(&p, v);
  if (rc == 0)
    rc = run1(q, ST_HOOK_DONE, 1, v, &r);
  params_free(&p);
  PQclear(r);
  return rc < 0 ? rc : 0;
}

void ath__qpg_outbox_free(ath_queue_outbox_t* rows, size_t n) {
  for (size_t i = 0; rows != NULL && i < n; i++) {
    free(rows[i].delivery);
    free(rows[i].body);
  }
  free(rows);
}

static char* dup_col(const PGresult* r, int row, int col) {
  const char* s = get_str(r, row, col);
  return s != NULL ? ath__memdup(s, strlen(s)) : NULL;
}

int ath__qpg_hooks_adopt(ath_qpg_t* q, int64_t owner, int limit, ath_queue_outbox_t** out, size_t* n) {
  *out = NULL;
  *n = 0;
  char owner_s[24], limit_s[16];
  snprintf(owner_s, sizeof(owner_s), "%" PRId64, owner);
  snprintf(limit_s, sizeof(limit_s), "%d", limit);
  const char* v[2] = {owner_s, limit_s};
  PGresult* r = NULL;
  int rc = run1(q, ST_HOOK_ADOPT, 2, v, &r);
  if (rc < 0)
    return rc;
  size_t rows = (size_t)PQntuples(r);
  ath_queue_outbox_t* o = rows ? calloc(rows, sizeof(*o)) : NULL;
  for (size_t i = 0; o != NULL && i < rows; i++) {
    o[i].id = get_i64(r, (int)i, 0);
    o[i].kind = (int)get_i64(r, (int)i, 1);
    o[i].delivery = dup_col(r, (int)i, 2);
    o[i].at = get_i64(r, (int)i, 3);
    o[i].body = dup_col(r, (int)i, 4);
    if (o[i].delivery == NULL || o[i].body == NULL) {
      ath__qpg_outbox_free(o, i + 1);
      o = NULL;
    }
  }
  PQclear(r);
  if (rows > 0 && o == NULL)
    return ATH_ENOMEM; /* adopted, unsent: adopted again once this node is gone */
  *out = o;
  *n = rows;
  return 0;
}

int ath__qpg_nodes(ath_qpg_t* q, char** json) {
  PGresult* r = NULL;
  *json = NULL;
  int rc = run1(q, ST_NODES, 0, NULL, &r);
  if (rc < 0)
    return rc;
  const char* s = get_str(r, 0, 0);
  *json = ath__memdup(s ? s : "[]", strlen(s ? s : "[]"));
  PQclear(r);
  return *json ? 0 : ATH_ENOMEM;
}

/* ------------------------------------------------------------ cluster reads, dead letters */

/* Appends " AND <cond>$<k><cast>" for the next parameter (its text in
 * buf[k-1]). */
static void q_param(ath_buf_t* b, const char* cond, const char* cast, char buf[8][32],
                    const char** v, int* n, const char* val) {
  char t[16];
  ath__buf_append(b, cond, strlen(cond));
  ath__buf_append(b, t, (size_t)snprintf(t, sizeof(t), "$%d", *n + 1));
  ath__buf_append(b, cast, strlen(cast));
  v[*n] = val != NULL ? val : buf[*n];
  (*n)++;
}

char* ath__qpg_query_sql(const ath_qpg_t* q, const ath_queue_query_t* f, char buf[8][32],
                         const char** v, int* n) {
  ath_buf_t b = {0};
  *n = 0;
  ath__buf_lit(&b, "SELECT " TASK_COLS("t") ", t.result, t.completed_at FROM {S}.tasks t WHERE true");
  if (f->status_mask != 0) {
    size_t k = 0;
    buf[*n][k++] = '{';
    for (int st = 0; st <= 9; st++) /* ath_status_t: "{0,1,...,9}" fits */
      if (f->status_mask & (1u << st))
        k += (size_t)snprintf(buf[*n] + k, 32 - k, "%s%d", k > 1 ? "," : "", st);
    snprintf(buf[*n] + k, 32 - k, "}");
    q_param(&b, " AND t.status = ANY(", "::smallint[])", buf, v, n, NULL);
  }
  if (f->name != NULL)
    q_param(&b, " AND t.name = ", "", buf, v, n, f->name);
  if (f->parent_id != NULL)
    q_param(&b, " AND t.parent_id = ", "", buf, v, n, f->parent_id);
  if (f->since != 0) {
    snprintf(buf[*n], 32, "%" PRId64, f->since);
    q_param(&b, " AND t.created_at >= ", "::bigint", buf, v, n, NULL);
  }
  if (f->until != 0) {
    snprintf(buf[*n], 32, "%" PRId64, f->until);
    q_param(&b, " AND t.created_at <= ", "::bigint", buf, v, n, NULL);
  }
  if (f->by_seq && f->after_seq > 0) {
    snprintf(buf[*n], 32, "%" PRId64, f->after_seq);
    q_param(&b, " AND t.seq > ", "::bigint", buf, v, n, NULL);
  }
  const char* order = f->by_seq ? " ORDER BY t.seq" : " ORDER BY t.created_at DESC, t.id COLLATE \"C\"";
  ath__buf_append(&b, order, strlen(order));
  snprintf(buf[*n], 32, "%" PRId64, f->limit > 0 ? f->limit : 1);
  q_param(&b, " LIMIT ", "::bigint", buf, v, n, NULL);
  if (b.data == NULL)
    return NULL;
  char* sql = subst(b.data, q->qschema);
  ath__buf_free(&b);
  return sql;
}

int ath__qpg_query(ath_qpg_t* q, const ath_queue_query_t* f, ath_queue_tasks_t* out) {
  memset(out, 0, sizeof(*out));
  q->err[0] = q->sqlstate[0] = '\0';
  char buf[8][32];
  const char* v[8];
  int n;
  char* sql = ath__qpg_query_sql(q, f, buf, v, &n);
  if (sql == NULL)
    return ATH_ENOMEM;
  PGresult* r = exec1(q, sql, n, v);
  free(sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    return res_err(q, r);
  return decode_tasks(r, out);
}

/* Requeue (T15) and purge of a dead letter: the row lock makes two nodes'
 * calls on one task take turns; the second finds it no longer quarantined. */
static const char* const REQUEUE_SQL =
  "WITH t AS (SELECT seq, status FROM {S}.tasks WHERE id = $1 FOR UPDATE),"
  " u AS (UPDATE {S}.tasks x SET status = 0, attempt = 0, error = NULL, result = NULL,"
  "   completed_at = NULL, due_at = NULL, close_by = NULL, lease = NULL, cancel_at = NULL,"
  "   rescues = 0, notify = true, ready_at = {S}.now_ms()"
  "   FROM t WHERE x.seq = t.seq AND t.status = 8"
  "   RETURNING x.seq, x.queue, x.priority, x.ready_at),"
  " r AS (INSERT INTO {S}.ready SELECT seq, queue, priority, ready_at FROM u"
  "   ON CONFLICT (seq) DO NOTHING RETURNING queue),"
  " n AS (" NOTIFY_READY("r", "$2") ")"
  " SELECT t.seq, t.status, (SELECT count(*) FROM u), (SELECT count(*) FROM n) FROM t";
static const char* const PURGE_SQL =
  "WITH t AS (SELECT seq, status FROM {S}.tasks WHERE id = $1 FOR UPDATE),"
  " d AS (DELETE FROM {S}.tasks x USING t WHERE x.seq = t.seq AND t.status = 8 RETURNING x.seq),"
  " h AS (DELETE FROM {S}.workflow_events h WHERE h.workflow_id = $1 AND EXISTS (SELECT 1 FROM d)),"
  " r AS (DELETE FROM {S}.ready r USING d WHERE r.seq = d.seq)"
  " SELECT t.seq, t.status, (SELECT count(*) FROM d) FROM t";

static int dead_letter(ath_qpg_t* q, const char* tmpl, const char* id, int64_t* seq, int* status,
                       int* how) {
  q->err[0] = q->sqlstate[0] = '\0';
  *seq = 0;
  *status = -1;
  *how = -1;
  char* sql = subst2(tmpl, q->qschema, q->suffix);
  if (sql == NULL)
    return ATH_ENOMEM;
  const char* v[2] = {id, q->notify ? "t" : "f"};
  PGresult* r = exec1(q, sql, tmpl == REQUEUE_SQL ? 2 : 1, v);
  free(sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    return res_err(q, r);
  if (PQntuples(r) == 1) {
    *seq = get_i64(r, 0, 0);
    *status = (int)get_i64(r, 0, 1);
    *how = get_i64(r, 0, 2) > 0;
  }
  PQclear(r);
  return 0;
}

int ath__qpg_requeue(ath_qpg_t* q, const char* id, int64_t* seq, int* status, int* how) {
  return dead_letter(q, REQUEUE_SQL, id, seq, status, how);
}

int ath__qpg_purge(ath_qpg_t* q, const char* id, int64_t* seq, int* status, int* how) {
  return dead_letter(q, PURGE_SQL, id, seq, status, how);
}

/* ------------------------------------------------------------ cluster counts */

static const char* const COUNTS_SQL =
  "WITH c AS (SELECT queue, sum(q)::bigint AS depth, min(o) AS oldest, sum(s)::bigint AS scheduled,"
  "   sum(r)::bigint AS running FROM ("
  "     SELECT queue, 1 AS q, ready_at AS o, 0 AS s, 0 AS r FROM {S}.ready"
  "     UNION ALL SELECT queue, 0, NULL, 1, 0 FROM {S}.tasks WHERE due_at IS NOT NULL"
  "     UNION ALL SELECT queue, 0, NULL, 0, 1 FROM {S}.tasks WHERE lease IS NOT NULL AND status = 2"
  "   ) x GROUP BY queue)"
  " SELECT c.queue, c.depth, greatest({S}.now_ms() - c.oldest, 0), c.scheduled, c.running,"
  "   (SELECT count(*) FROM {S}.nodes WHERE NOT leader AND expires_at > {S}.now_ms()),"
  "   (SELECT node_id FROM {S}.nodes WHERE leader AND expires_at > {S}.now_ms()"
  "     ORDER BY incarnation DESC LIMIT 1)"
  " FROM (SELECT 1) one LEFT JOIN c ON true ORDER BY c.queue COLLATE \"C\"";

/* What ended in the last $1 ms (tasks_done) and how long those waited
 * from ready to their claim: the cluster's throughput and pickup latency,
 * from the rows, whichever node ran them. */
static const char* const RATES_SQL =
  "SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP"
  "   (ORDER BY greatest(started_at - ready_at, 0))::text"
  " FROM {S}.tasks WHERE completed_at >= {S}.now_ms() - $1 AND started_at IS NOT NULL";

/* Reads the window's figures into c (the percentiles stay 0 when nothing ended). */
static int read_rates(ath_qpg_t* q, ath_queue_counts_t* c) {
  char* sql = subst(RATES_SQL, q->qschema);
  if (sql == NULL)
    return ATH_ENOMEM;
  char win_s[24];
  snprintf(win_s, sizeof(win_s), "%d", ATH_QUEUE_RATE_WINDOW_MS);
  const char* v[1] = {win_s};
  PGresult* r = exec1(q, sql, 1, v);
  free(sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    return res_err(q, r);
  c->completed_window = get_i64(r, 0, 0);
  const char* p = get_str(r, 0, 1); /* "{p50,p95,p99}" */
  if (p != NULL)
    sscanf(p, "{%lf,%lf,%lf}", &c->start_latency_ms[0], &c->start_latency_ms[1], &c->start_latency_ms[2]);
  PQclear(r);
  return 0;
}

void ath__qpg_counts_free(ath_queue_counts_t* c) {
  if (c == NULL)
    return;
  for (size_t i = 0; i < c->nqueues; i++)
    free(c->queues[i].queue);
  free(c->queues);
  free(c->leader);
  memset(c, 0, sizeof(*c));
}

char* ath__qpg_counts_sql(const ath_qpg_t* q) {
  return subst(COUNTS_SQL, q->qschema);
}

int ath__qpg_counts(ath_qpg_t* q, ath_queue_counts_t* out) {
  memset(out, 0, sizeof(*out));
  q->err[0] = q->sqlstate[0] = '\0';
  char* sql = ath__qpg_counts_sql(q);
  if (sql == NULL)
    return ATH_ENOMEM;
  PGresult* r = exec1(q, sql, 0, NULL);
  free(sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    return res_err(q, r);
  int n = PQntuples(r), rc = 0;
  if (n > 0 && (out->queues = calloc((size_t)n, sizeof(*out->queues))) == NULL)
    rc = ATH_ENOMEM;
  for (int i = 0; rc == 0 && i < n; i++) {
    out->nodes = get_i64(r, i, 5);
    const char* leader = get_str(r, i, 6);
    if (i == 0 && leader != NULL && (out->leader = ath__memdup(leader, strlen(leader))) == NULL)
      rc = ATH_ENOMEM;
    const char* name = get_str(r, i, 0);
    if (name == NULL)
      continue; /* no queue holds anything */
    ath_queue_qcount_t* c = &out->queues[out->nqueues];
    if ((c->queue = ath__memdup(name, strlen(name))) == NULL) {
      rc = ATH_ENOMEM;
      break;
    }
    out->nqueues++;
    c->depth = get_i64(r, i, 1);
    c->oldest_age_ms = c->depth > 0 ? get_i64(r, i, 2) : 0;
    c->scheduled = get_i64(r, i, 3);
    c->running = get_i64(r, i, 4);
    out->queued += c->depth;
    out->scheduled += c->scheduled;
    out->running += c->running;
  }
  PQclear(r);
  if (rc == 0)
    rc = read_rates(q, out);
  if (rc != 0)
    ath__qpg_counts_free(out);
  return rc;
}

/* ------------------------------------------------------------ LISTEN */

int ath__qpg_listen(ath_qpg_t* q, const char* const* channels) {
  q->err[0] = q->sqlstate[0] = '\0';
  for (const char* const* c = channels; c != NULL && *c != NULL; c++) {
    char ch[96];
    snprintf(ch, sizeof(ch), "%s%s", *c, q->suffix); /* this schema's */
    char* id = PQescapeIdentifier(q->conn, ch, strlen(ch));
    if (id == NULL)
      return conn_err(q);
    ath_buf_t b = {0};
    ath__buf_lit(&b, "LISTEN ");
    ath__buf_append(&b, id, strlen(id));
    PQfreemem(id);
    if (b.data == NULL)
      return ATH_ENOMEM;
    int rc = exec_ok(q, b.data, 0, NULL);
    ath__buf_free(&b);
    if (rc < 0)
      return rc;
  }
  return 0;
}

int ath__qpg_notifies(ath_qpg_t* q, ath_queue_notify_cb cb, void* ud) {
  if (PQconsumeInput(q->conn) == 0)
    return conn_err(q);
  int n = 0;
  PGnotify* m;
  while ((m = PQnotifies(q->conn)) != NULL) {
    /* the name a caller listened for: without this schema's suffix */
    size_t len = strlen(m->relname), sl = strlen(q->suffix);
    if (len > sl && strcmp(m->relname + len - sl, q->suffix) == 0)
      m->relname[len - sl] = '\0';
    cb(m->relname, m->extra, ud);
    PQfreemem(m);
    n++;
  }
  return n;
}

/* ------------------------------------------------------------ the provider */

/* The public operations (athena.h "Queue providers") over the functions
 * above: a connection is the ath_qpg_t whose first member it is. */
#define PG(c) ((ath_qpg_t*)(c))
#define CPG(c) ((const ath_qpg_t*)(c))

static int v_open(void* ud, const char* location, const char* schema, int notify, ath_queue_conn_t** out,
                  char* err, size_t errlen) {
  (void)ud;
  ath_qpg_t* q = NULL;
  int rc = ath__qpg_open(location, schema, notify, &q, err, errlen);
  *out = q != NULL ? &q->base : NULL;
  return rc;
}
static int v_reset(ath_queue_conn_t* c) { return ath__qpg_reset(PG(c)); }
static void v_close(ath_queue_conn_t* c) { ath__qpg_close(PG(c)); }
static const char* v_errmsg(const ath_queue_conn_t* c) { return ath__qpg_errmsg(CPG(c)); }
static const char* v_sqlstate(const ath_queue_conn_t* c) { return ath__qpg_sqlstate(CPG(c)); }
static int v_migrate(ath_queue_conn_t* c, int* version) { return ath__qpg_migrate(PG(c), version); }
static int v_node_register(ath_queue_conn_t* c, const ath_queue_node_t* n, uint64_t now_ns,
                           ath_queue_lease_t* lease) {
  return ath__qpg_node_register(PG(c), n, now_ns, lease);
}
static int v_node_renew(ath_queue_conn_t* c, ath_queue_lease_t* lease, uint64_t now_ns, const char* metrics) {
  return ath__qpg_node_renew(PG(c), lease, now_ns, metrics);
}
static int v_node_release(ath_queue_conn_t* c, ath_queue_lease_t* lease) {
  return ath__qpg_node_release(PG(c), lease);
}
static int v_node_lock(ath_queue_conn_t* c, const char* node_id, int* held) {
  return ath__qpg_node_lock(PG(c), node_id, held);
}
static int v_cycle(ath_queue_conn_t* c, ath_queue_cycle_t* x) { return ath__qpg_cycle(PG(c), x); }
static int v_stage(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int64_t late_ms, int limit,
                   int* staged) {
  return ath__qpg_stage(PG(c), seqs, n, late_ms, limit, staged);
}
static int v_rescue(ath_queue_conn_t* c, int64_t leader, int limit, int64_t grace_ms, ath_queue_tasks_t* out) {
  return ath__qpg_rescue(PG(c), leader, limit, grace_ms, out);
}
static int v_take_over(ath_queue_conn_t* c, const char* node_id, int64_t incarnation, ath_queue_tasks_t* out) {
  return ath__qpg_take_over(PG(c), node_id, incarnation, out);
}
static int v_leased(ath_queue_conn_t* c, int64_t lease, ath_queue_tasks_t* out) {
  return ath__qpg_leased(PG(c), lease, out);
}
static int v_leader_try(ath_queue_conn_t* c, int* held) { return ath__qpg_leader_try(PG(c), held); }
static int v_leader_resign(ath_queue_conn_t* c) { return ath__qpg_leader_resign(PG(c)); }
static int v_now(ath_queue_conn_t* c, int64_t* now) { return ath__qpg_now(PG(c), now); }
static int v_read(ath_queue_conn_t* c, const int64_t* seqs, size_t n, int ended_only, ath_queue_tasks_t* out) {
  return ath__qpg_read(PG(c), seqs, n, ended_only, out);
}
static int v_get(ath_queue_conn_t* c, const char* id, ath_queue_tasks_t* out) {
  return ath__qpg_get(PG(c), id, out);
}
static int v_cancel(ath_queue_conn_t* c, int64_t seq, int* how) { return ath__qpg_cancel(PG(c), seq, how); }
static int v_cancelled(ath_queue_conn_t* c, int64_t lease, int64_t** seqs, size_t* n) {
  return ath__qpg_cancelled(PG(c), lease, seqs, n);
}
static int v_query(ath_queue_conn_t* c, const ath_queue_query_t* f, ath_queue_tasks_t* out) {
  return ath__qpg_query(PG(c), f, out);
}
static int v_requeue(ath_queue_conn_t* c, const char* id, int64_t* seq, int* status, int* how) {
  return ath__qpg_requeue(PG(c), id, seq, status, how);
}
static int v_purge(ath_queue_conn_t* c, const char* id, int64_t* seq, int* status, int* how) {
  return ath__qpg_purge(PG(c), id, seq, status, how);
}
static int v_listen(ath_queue_conn_t* c, const char* const* channels) {
  return ath__qpg_listen(PG(c), channels);
}
static int v_notifies(ath_queue_conn_t* c, ath_queue_notify_cb cb, void* ud) {
  return ath__qpg_notifies(PG(c), cb, ud);
}
static int v_socket(const ath_queue_conn_t* c) { return ath__qpg_socket(CPG(c)); }
static int v_wf_requeue(ath_queue_conn_t* c, int64_t lease, const int64_t* seqs, size_t n) {
  return ath__qpg_wf_requeue(PG(c), lease, seqs, n);
}
static int v_wf_take(ath_queue_conn_t* c, int64_t lease, const int64_t* seqs, size_t n, int by_parent,
                     ath_queue_tasks_t* out) {
  return ath__qpg_wf_take(PG(c), lease, seqs, n, by_parent, out);
}
static int v_schedule_put(ath_queue_conn_t* c, const ath_queue_schedule_t* s, int* changed) {
  return ath__qpg_schedule_put(PG(c), s, changed);
}
static int v_schedule_fire_many(ath_queue_conn_t* c, const ath_queue_fire_t* f, size_t n,
                                ath_queue_fired_t* out) {
  return ath__qpg_schedule_fire_many(PG(c), f, n, out);
}
static int v_schedules(ath_queue_conn_t* c, const char* id, ath_queue_scheds_t* out) {
  return ath__qpg_schedules(PG(c), id, out);
}
static int v_schedules_due(ath_queue_conn_t* c, int limit, ath_queue_scheds_t* out) {
  return ath__qpg_schedules_due(PG(c), limit, out);
}
static int v_schedule_pause(ath_queue_conn_t* c, const char* id, int* found) {
  return ath__qpg_schedule_pause(PG(c), id, found);
}
static int v_schedule_resume(ath_queue_conn_t* c, const char* id, int64_t next_ms, int* resumed) {
  return ath__qpg_schedule_resume(PG(c), id, next_ms, resumed);
}
static int v_schedule_delete(ath_queue_conn_t* c, const char* id, int* found) {
  return ath__qpg_schedule_delete(PG(c), id, found);
}
static int v_hooks_done(ath_queue_conn_t* c, const int64_t* ids, size_t n) {
  return ath__qpg_hooks_done(PG(c), ids, n);
}
static int v_hooks_adopt(ath_queue_conn_t* c, int64_t owner, int limit, ath_queue_outbox_t** out, size_t* n) {
  return ath__qpg_hooks_adopt(PG(c), owner, limit, out, n);
}
static int v_counts(ath_queue_conn_t* c, ath_queue_counts_t* out) { return ath__qpg_counts(PG(c), out); }
static int v_nodes(ath_queue_conn_t* c, char** json) { return ath__qpg_nodes(PG(c), json); }
static int v_maintain(ath_queue_conn_t* c) { return ath__qpg_vacuum_ready(PG(c)); }
static int v_expire(ath_queue_conn_t* c, int64_t leader, int limit, ath_queue_tasks_t* out) {
  return ath__qpg_expire(PG(c), leader, limit, out);
}
static int v_prune(ath_queue_conn_t* c, int64_t retention_ms, int limit, int* deleted) {
  return ath__qpg_prune(PG(c), retention_ms, limit, deleted);
}
static int64_t v_retries(const ath_queue_conn_t* c) { return ath__qpg_retries(CPG(c)); }

static const ath_queue_provider_t pg_provider = {
    .size = sizeof(ath_queue_provider_t),
    .name = "PostgreSQL",
    .open = v_open,
    .reset = v_reset,
    .close = v_close,
    .errmsg = v_errmsg,
    .sqlstate = v_sqlstate,
    .migrate = v_migrate,
    .node_register = v_node_register,
    .node_renew = v_node_renew,
    .node_release = v_node_release,
    .node_lock = v_node_lock,
    .cycle = v_cycle,
    .stage = v_stage,
    .rescue = v_rescue,
    .take_over = v_take_over,
    .leased = v_leased,
    .leader_try = v_leader_try,
    .leader_resign = v_leader_resign,
    .now = v_now,
    .read = v_read,
    .get = v_get,
    .cancel = v_cancel,
    .cancelled = v_cancelled,
    .tasks_free = ath__qpg_tasks_free,
    .inserted_clear = ath__qpg_inserted_clear,
    .query = v_query,
    .requeue = v_requeue,
    .purge = v_purge,
    .listen = v_listen,
    .notifies = v_notifies,
    .socket = v_socket,
    .wf_requeue = v_wf_requeue,
    .wf_take = v_wf_take,
    .schedule_put = v_schedule_put,
    .schedule_fire_many = v_schedule_fire_many,
    .schedules = v_schedules,
    .schedules_due = v_schedules_due,
    .schedule_pause = v_schedule_pause,
    .schedule_resume = v_schedule_resume,
    .schedule_delete = v_schedule_delete,
    .scheds_free = ath__qpg_scheds_free,
    .hooks_done = v_hooks_done,
    .hooks_adopt = v_hooks_adopt,
    .outbox_free = ath__qpg_outbox_free,
    .counts = v_counts,
    .counts_free = ath__qpg_counts_free,
    .nodes = v_nodes,
    .maintain = v_maintain,
    .retries = v_retries,
    .expire = v_expire,
    .prune = v_prune,
};

const ath_queue_provider_t* ath_postgres_queue(void) {
  return &pg_provider;
}
