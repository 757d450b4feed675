/* The PostgreSQL queue provider (engine/backend/queue_pg.c) against the
 * throwaway server of fixture "pg". Each test works in its own schema,
 * dropped first. Times the tests need are set in the rows directly (no
 * sleeps); waits for events poll the socket with a deadline. */
#include <libpq-fe.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "athena.h"
#include "queue_pg.h"
#include "queue.h"
#include "task.h"
#include "util.h"

/* A plain libpq connection for setup and assertions. */
static PGconn* admin(void) {
  PGconn* c = PQconnectdb(test_pg_url());
  ASSERT_EQ(CONNECTION_OK, PQstatus(c));
  PQclear(PQexec(c, "SET client_min_messages = warning"));
  return c;
}

static void sql_ok(PGconn* c, const char* sql) {
  PGresult* r = PQexec(c, sql);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
    fprintf(stderr, "%s: %s\n", sql, PQresultErrorMessage(r));
  ASSERT(s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK);
  PQclear(r);
}

/* The first cell of a query as an integer. */
static int64_t sql_int(PGconn* c, const char* sql) {
  PGresult* r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    fprintf(stderr, "%s: %s\n", sql, PQresultErrorMessage(r));
  ASSERT_EQ(PGRES_TUPLES_OK, PQresultStatus(r));
  ASSERT_EQ(1, PQntuples(r));
  int64_t v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return v;
}

/* A migrated provider connection on a fresh schema. */
static ath_qpg_t* fresh(const char* schema) {
  PGconn* c = admin();
  char sql[256];
  snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS \"%s\" CASCADE", schema);
  sql_ok(c, sql);
  PQfinish(c);
  ath_qpg_t* q = NULL;
  char err[256];
  if (ath__qpg_open(test_pg_url(), schema, 1, &q, err, sizeof(err)) != 0)
    fprintf(stderr, "open: %s\n", err);
  ASSERT_NOT_NULL(q);
  int ver = -1;
  if (ath__qpg_migrate(q, &ver) != 0)
    fprintf(stderr, "migrate: %s\n", ath__qpg_errmsg(q));
  ASSERT_EQ(0, ver);
  return q;
}

static ath_qpg_t* open_q(const char* schema) {
  ath_qpg_t* q = NULL;
  char err[256];
  ASSERT_OK(ath__qpg_open(test_pg_url(), schema, 1, &q, err, sizeof(err)));
  return q;
}

static ath_queue_insert_t task_row(const char* id, const char* queue, int priority, const char* input) {
  ath_queue_insert_t r = {.id = id, .name = "noop", .queue = queue, .input = input,
                        .priority = priority, .max_attempts = 3};
  return r;
}

/* Registers a node with a long lease (tests expire it by hand). */
static ath_queue_lease_t node(ath_qpg_t* q, const char* id) {
  const char* queues[] = {"default", NULL};
  ath_queue_node_t n = {.node_id = id, .host = "test", .pid = 1, .queues = queues, .slots = 4,
                      .ttl_ms = 600000, .interval_ms = 5000};
  ath_queue_lease_t l;
  ASSERT_OK(ath__qpg_node_register(q, &n, 0, &l));
  ASSERT_GT(l.incarnation, 0);
  return l;
}

/* Inserts `n` tasks "<prefix><i>" into queue default, 1000 per statement. */
static void insert_many(ath_qpg_t* q, const char* prefix, int n) {
  ath_queue_insert_t* rows = calloc(1000, sizeof(*rows));
  ath_queue_inserted_t* out = calloc(1000, sizeof(*out));
  char(*ids)[32] = calloc(1000, 32);
  ASSERT(rows && out && ids);
  for (int base = 0; base < n; base += 1000) {
    int k = n - base < 1000 ? n - base : 1000;
    for (int i = 0; i < k; i++) {
      snprintf(ids[i], 32, "%s%d", prefix, base + i);
      rows[i] = task_row(ids[i], "default", 0, "{}");
    }
    ASSERT_OK(ath__qpg_insert(q, rows, (size_t)k, out));
    for (int i = 0; i < k; i++)
      ASSERT(out[i].created);
  }
  free(rows);
  free(out);
  free(ids);
}

/* ------------------------------------------------------------ schema */

/* Migrations: a fresh schema gets version 6 (and meta says so), a second
 * run finds it done, a version 1 schema is brought to 6 (schedule columns
 * and index, the dead-letter index, workflow_events with version 1's
 * history rows moved in, the outbox), a newer version and a foreign schema are
 * refused, and a name that needs quoting works. */
TEST_IMPL(db_pg_queue_migrate) {
  ath_qpg_t* q = fresh("qpg_migrate");
  int ver = -1;
  ASSERT_OK(ath__qpg_migrate(q, &ver));
  ASSERT_EQ(ATH_QPG_SCHEMA_VERSION, ver);
  PGconn* c = admin();
  ASSERT_EQ(ATH_QPG_SCHEMA_VERSION, sql_int(c, "SELECT value::int FROM qpg_migrate.meta WHERE key = 'schema_version'"));
  /* back to what version 1 made (its history table keyed by the task's seq,
   * with an event in it): migrating again adds versions 2 to 6 */
  ath_queue_insert_t wrow = task_row("wf1", "default", 0, "{}");
  wrow.kind = 1;
  ath_queue_inserted_t wout;
  ASSERT_OK(ath__qpg_insert(q, &wrow, 1, &wout));
  sql_ok(c, "DROP INDEX qpg_migrate.schedules_due; DROP INDEX qpg_migrate.tasks_dead;"
            " ALTER TABLE qpg_migrate.schedules DROP COLUMN max_attempts, DROP COLUMN close_after;"
            " DROP TABLE qpg_migrate.workflow_events; DROP TABLE qpg_migrate.outbox;"
            " ALTER TABLE qpg_migrate.tasks DROP COLUMN call, DROP COLUMN run_by;"
            " CREATE TABLE qpg_migrate.history (task_seq bigint NOT NULL, n int NOT NULL,"
            "   event text NOT NULL, PRIMARY KEY (task_seq, n));"
            " INSERT INTO qpg_migrate.history SELECT seq, 0, '{\"type\":\"workflow.started\"}'"
            "   FROM qpg_migrate.tasks WHERE id = 'wf1';"
            " UPDATE qpg_migrate.meta SET value = '1' WHERE key = 'schema_version'");
  ASSERT_OK(ath__qpg_migrate(q, &ver));
  ASSERT_EQ(1, ver);
  ASSERT_EQ(ATH_QPG_SCHEMA_VERSION, sql_int(c, "SELECT value::int FROM qpg_migrate.meta WHERE key = 'schema_version'"));
  /* version 4: the event moved to workflow_events under the workflow's id */
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'qpg_migrate'"
                          " AND tablename = 'history'"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_migrate.workflow_events WHERE workflow_id = 'wf1'"
                          " AND seq = 0 AND event = '{\"type\":\"workflow.started\"}'"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'qpg_migrate'"
                          " AND indexname = 'tasks_dead'"));
  ASSERT_EQ(2, sql_int(c, "SELECT count(*) FROM information_schema.columns WHERE table_schema ="
                          " 'qpg_migrate' AND table_name = 'schedules'"
                          " AND column_name IN ('max_attempts', 'close_after')"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'qpg_migrate'"
                          " AND indexname = 'schedules_due'"));
  /* version 5: the webhook outbox */
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'qpg_migrate'"
                          " AND tablename = 'outbox'"));
  /* version 6: per-call limits and a parked run's deadline in the row */
  ASSERT_EQ(2, sql_int(c, "SELECT count(*) FROM information_schema.columns WHERE table_schema ="
                          " 'qpg_migrate' AND table_name = 'tasks' AND column_name IN ('call', 'run_by')"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'qpg_migrate'"
                          " AND indexname = 'tasks_run_by'"));
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM information_schema.columns WHERE table_schema ="
                          " 'qpg_migrate' AND data_type = 'jsonb'"));
  sql_ok(c, "UPDATE qpg_migrate.meta SET value = '99' WHERE key = 'schema_version'");
  ASSERT_EQ(ATH_EINVAL, ath__qpg_migrate(q, &ver));
  ASSERT_EQ(99, ver);
  ASSERT(strstr(ath__qpg_errmsg(q), "newer") != NULL);
  ath__qpg_close(q);
  /* a schema with someone else's tables */
  sql_ok(c, "DROP SCHEMA IF EXISTS qpg_foreign CASCADE; CREATE SCHEMA qpg_foreign;"
            " CREATE TABLE qpg_foreign.users (id int)");
  q = open_q("qpg_foreign");
  ASSERT_EQ(ATH_EINVAL, ath__qpg_migrate(q, &ver));
  ASSERT(strstr(ath__qpg_errmsg(q), "not Athena's") != NULL);
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM pg_tables WHERE schemaname = 'qpg_foreign'"
                          " AND tablename <> 'users'"));
  ath__qpg_close(q);
  /* quoting: a name with both quotes, a space and a semicolon */
  sql_ok(c, "DROP SCHEMA IF EXISTS \"we\"\"ird; s'x\" CASCADE");
  q = open_q("we\"ird; s'x");
  ASSERT_OK(ath__qpg_migrate(q, &ver));
  ASSERT_EQ(0, ver);
  ath_queue_insert_t row = task_row("t1", "default", 0, "{}");
  ath_queue_inserted_t out;
  ASSERT_OK(ath__qpg_insert(q, &row, 1, &out));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM \"we\"\"ird; s'x\".tasks"));
  ath_queue_lease_t l = node(q, "n");
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, l.incarnation, "default", 1, &t));
  ASSERT_EQ(1, t.n);
  ath__qpg_tasks_free(&t);
  int held;
  ASSERT_OK(ath__qpg_leader_try(q, &held));
  ASSERT(held);
  ath__qpg_close(q);
  PQfinish(c);
  return 0;
}

/* ------------------------------------------------------------ claim */

#define EO_TASKS 10000

typedef struct {
  const char* schema;
  int64_t* seqs; /* claimed, in order */
  int n;
  int not_applied;
  pthread_barrier_t* start;
} claimer_t;

/* Claims 100 at a time and finishes each batch until the queue is empty. */
static void* claimer(void* arg) {
  claimer_t* c = arg;
  ath_qpg_t* q = open_q(c->schema);
  ath_queue_lease_t l = node(q, "claimer");
  ath_queue_outcome_t o[100];
  uint8_t applied[100];
  pthread_barrier_wait(c->start);
  for (;;) {
    ath_queue_tasks_t t;
    ASSERT_OK(ath__qpg_claim(q, l.incarnation, "default", 100, &t));
    if (t.n == 0) {
      ath__qpg_tasks_free(&t);
      break;
    }
    for (size_t i = 0; i < t.n; i++) {
      ASSERT_EQ(1, t.rows[i].attempt);
      ASSERT_EQ(ATH_RUNNING, t.rows[i].status);
      c->seqs[c->n++] = t.rows[i].seq;
      o[i] = (ath_queue_outcome_t){.seq = t.rows[i].seq, .attempt = t.rows[i].attempt,
                                 .status = ATH_COMPLETED, .result = "true"};
    }
    ASSERT_OK(ath__qpg_finish(q, l.incarnation, o, t.n, applied));
    for (size_t i = 0; i < t.n; i++)
      c->not_applied += !applied[i];
    ath__qpg_tasks_free(&t);
  }
  ath__qpg_close(q);
  return NULL;
}

static int cmp_i64(const void* a, const void* b) {
  int64_t x = *(const int64_t*)a, y = *(const int64_t*)b;
  return (x > y) - (x < y);
}

/* Two connections claiming the same queue at once: every one of 10k tasks
 * is claimed exactly once (none twice, none lost) and every finish applies. */
TEST_IMPL(db_pg_queue_exactly_once) {
  ath_qpg_t* q = fresh("qpg_once");
  insert_many(q, "t", EO_TASKS);
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, 2);
  claimer_t c[2];
  pthread_t th[2];
  int64_t* all = calloc(2 * EO_TASKS, sizeof(int64_t));
  ASSERT_NOT_NULL(all);
  for (int i = 0; i < 2; i++) {
    c[i] = (claimer_t){.schema = "qpg_once", .seqs = all + i * EO_TASKS, .start = &start};
    ASSERT_OK(pthread_create(&th[i], NULL, claimer, &c[i]));
  }
  for (int i = 0; i < 2; i++)
    ASSERT_OK(pthread_join(th[i], NULL));
  pthread_barrier_destroy(&start);
  ASSERT_EQ(EO_TASKS, c[0].n + c[1].n);
  ASSERT_GT(c[0].n, 0); /* both took part */
  ASSERT_GT(c[1].n, 0);
  ASSERT_EQ(0, c[0].not_applied + c[1].not_applied);
  memmove(all + c[0].n, all + EO_TASKS, (size_t)c[1].n * sizeof(int64_t));
  qsort(all, EO_TASKS, sizeof(int64_t), cmp_i64);
  for (int i = 1; i < EO_TASKS; i++)
    ASSERT_LT(all[i - 1], all[i]); /* no seq twice */
  free(all);
  PGconn* a = admin();
  ASSERT_EQ(EO_TASKS, sql_int(a, "SELECT count(*) FROM qpg_once.tasks WHERE status = 5"
                                 " AND attempt = 1 AND lease IS NULL"));
  ASSERT_EQ(0, sql_int(a, "SELECT count(*) FROM qpg_once.ready"));
  PQfinish(a);
  ath__qpg_close(q);
  return 0;
}

/* Claim order: priority DESC, then ready_at, then seq; tasks not yet due
 * are not claimable until staged. */
TEST_IMPL(db_pg_queue_order) {
  ath_qpg_t* q = fresh("qpg_order");
  ath_queue_lease_t l = node(q, "n");
  ath_queue_insert_t rows[6] = {
    task_row("a", "default", 0, "{}"), task_row("b", "default", 0, "{}"),
    task_row("c", "default", 0, "{}"), task_row("d", "default", 5, "{}"),
    task_row("e", "default", -1, "{}"), task_row("later", "default", 9, "{}"),
  };
  rows[5].delay_ms = 3600000;
  ath_queue_inserted_t out[6];
  ASSERT_OK(ath__qpg_insert(q, rows, 6, out));
  PGconn* c = admin();
  /* b became ready before a (same priority) */
  sql_ok(c, "UPDATE qpg_order.tasks SET ready_at = ready_at - 1000 WHERE id = 'b';"
            " UPDATE qpg_order.ready r SET ready_at = t.ready_at FROM qpg_order.tasks t"
            " WHERE t.seq = r.seq AND t.id = 'b'");
  ASSERT_EQ(1, sql_int(c, "SELECT status FROM qpg_order.tasks WHERE id = 'later'"));
  ath_queue_tasks_t t;
  /* the selection follows the order (one at a time), and a batch comes
   * back in it */
  const char* want[] = {"d", "b", "a", "c", "e"};
  for (int i = 0; i < 3; i++) {
    ASSERT_OK(ath__qpg_claim(q, l.incarnation, "default", 1, &t));
    ASSERT_EQ(1, t.n);
    ASSERT_STR_EQ(want[i], t.rows[0].id);
    ath__qpg_tasks_free(&t);
  }
  ASSERT_OK(ath__qpg_claim(q, l.incarnation, "default", 10, &t));
  ASSERT_EQ(2, t.n);
  ASSERT_STR_EQ(want[3], t.rows[0].id);
  ASSERT_STR_EQ(want[4], t.rows[1].id);
  ath__qpg_tasks_free(&t);
  /* not due: staging by seq does nothing; once due (set by hand) it stages */
  int staged = -1;
  ASSERT_OK(ath__qpg_stage(q, &out[5].seq, 1, 0, 0, &staged));
  ASSERT_EQ(0, staged);
  ASSERT_OK(ath__qpg_stage(q, NULL, 0, 0, 100, &staged)); /* the sweep too */
  ASSERT_EQ(0, staged);
  sql_ok(c, "UPDATE qpg_order.tasks SET due_at = qpg_order.now_ms() - 5 WHERE id = 'later'");
  ASSERT_OK(ath__qpg_stage(q, &out[5].seq, 1, 0, 0, &staged));
  ASSERT_EQ(1, staged);
  ASSERT_OK(ath__qpg_claim(q, l.incarnation, "default", 10, &t));
  ASSERT_EQ(1, t.n);
  ASSERT_STR_EQ("later", t.rows[0].id);
  /* a retry re-staged an hour ahead: due (and ready_at) in the future, not
   * stageable until then */
  ath_queue_outcome_t retry = {.seq = t.rows[0].seq, .attempt = 1, .status = ATH_RETRYING,
                             .delay_ms = 3600000};
  uint8_t ap;
  ASSERT_OK(ath__qpg_finish(q, l.incarnation, &retry, 1, &ap));
  ASSERT(ap);
  ASSERT_OK(ath__qpg_stage(q, &retry.seq, 1, 0, 0, &staged));
  ASSERT_EQ(0, staged);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_order.tasks WHERE id = 'later' AND status = 3"
                          " AND due_at = ready_at AND due_at > qpg_order.now_ms() + 3590000"));
  ath__qpg_tasks_free(&t);
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ fencing */

/* A finish applies only with the claiming lease and attempt: a stale
 * attempt, another node's lease and a second finish are all refused, per
 * row and in input order; a retry (status 3) comes back as attempt 2. */
TEST_IMPL(db_pg_queue_fencing) {
  ath_qpg_t* q = fresh("qpg_fence");
  ath_queue_lease_t a = node(q, "a");
  ath_queue_lease_t b = node(q, "b");
  insert_many(q, "f", 2);
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 2, &t));
  ASSERT_EQ(2, t.n);
  int64_t s0 = t.rows[0].seq, s1 = t.rows[1].seq;
  ath__qpg_tasks_free(&t);
  uint8_t ap[3];
  ath_queue_outcome_t stale[2] = {
    {.seq = s0, .attempt = 2, .status = ATH_COMPLETED, .result = "1"}, /* wrong attempt */
    {.seq = s0, .attempt = 0, .status = ATH_COMPLETED, .result = "1"},
  };
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, stale, 2, ap));
  ASSERT_EQ(0, ap[0]);
  ASSERT_EQ(0, ap[1]);
  ath_queue_outcome_t other = {.seq = s0, .attempt = 1, .status = ATH_COMPLETED, .result = "2"};
  ASSERT_OK(ath__qpg_finish(q, b.incarnation, &other, 1, ap)); /* not b's lease */
  ASSERT_EQ(0, ap[0]);
  PGconn* c = admin();
  ASSERT_EQ(2, sql_int(c, "SELECT count(*) FROM qpg_fence.tasks WHERE status = 2 AND result IS NULL"));
  /* the holder: s1 retries (due now), s0 completes; an unknown seq in the
   * middle is refused without disturbing its neighbours */
  ath_queue_outcome_t mine[3] = {
    {.seq = s1, .attempt = 1, .status = ATH_RETRYING, .error = "{\"code\":\"EHANDLER\"}"},
    {.seq = 999999, .attempt = 1, .status = ATH_COMPLETED},
    {.seq = s0, .attempt = 1, .status = ATH_COMPLETED, .result = "3"},
  };
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, mine, 3, ap));
  ASSERT_EQ(1, ap[0]);
  ASSERT_EQ(0, ap[1]);
  ASSERT_EQ(1, ap[2]);
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, &mine[2], 1, ap)); /* twice: lease gone */
  ASSERT_EQ(0, ap[0]);
  ASSERT_EQ(3, sql_int(c, "SELECT result::int FROM qpg_fence.tasks WHERE status = 5"));
  /* the retry: staged, then claimed again as attempt 2 */
  int staged;
  ASSERT_OK(ath__qpg_stage(q, &s1, 1, 0, 0, &staged));
  ASSERT_EQ(1, staged);
  ASSERT_OK(ath__qpg_claim(q, b.incarnation, "default", 5, &t));
  ASSERT_EQ(1, t.n);
  ASSERT_EQ(s1, t.rows[0].seq);
  ASSERT_EQ(2, t.rows[0].attempt);
  ASSERT_STR_EQ("{\"code\":\"EHANDLER\"}", t.rows[0].error);
  /* a's late outcome for attempt 1 no longer applies */
  ath_queue_outcome_t late = {.seq = s1, .attempt = 1, .status = ATH_COMPLETED};
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, &late, 1, ap));
  ASSERT_EQ(0, ap[0]);
  /* returned unrun (T14): attempt not counted, ready again */
  ath_queue_outcome_t back = {.seq = s1, .attempt = 2, .status = ATH_PENDING};
  ASSERT_OK(ath__qpg_finish(q, b.incarnation, &back, 1, ap));
  ASSERT_EQ(1, ap[0]);
  ath__qpg_tasks_free(&t);
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 5, &t));
  ASSERT_EQ(1, t.n);
  ASSERT_EQ(2, t.rows[0].attempt);
  ath__qpg_tasks_free(&t);
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ leases */

/* A node whose lease expired: the leader's rescue takes its running tasks
 * (not a live node's), the dead node's renew reports the loss and its late
 * finish is refused, the leader's EWORKERLOST retry applies, and the task
 * runs again elsewhere as attempt 2. The dead node's row is reaped. */
/* The webhook outbox (docs/backend-postgres.md, Webhooks): an event is
 * stored only when its finish in the same transaction applied (a fenced-out
 * finish stores none, whatever its lease or attempt), rows of a live owner
 * are not adopted, those of an expired or absent owner are (once), and done
 * deletes them; an event without a finish in its cycle is EINVAL. */
TEST_IMPL(db_pg_queue_outbox) {
  ath_qpg_t* q = fresh("qpg_outbox");
  ath_queue_lease_t a = node(q, "a");
  ath_queue_lease_t b = node(q, "b");
  insert_many(q, "o", 3);
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 3, &t));
  ASSERT_EQ(3, t.n);
  int64_t s[3] = {t.rows[0].seq, t.rows[1].seq, t.rows[2].seq};
  ath__qpg_tasks_free(&t);
  ath_queue_outcome_t o[3] = {
    {.seq = s[0], .attempt = 1, .status = ATH_COMPLETED, .result = "1"},
    {.seq = s[1], .attempt = 2, .status = ATH_COMPLETED, .result = "1"}, /* wrong attempt */
    {.seq = s[2], .attempt = 1, .status = ATH_RETRYING, .error = "{}"},
  };
  ath_queue_hook_t h[3] = {
    {.seq = s[0], .status = ATH_COMPLETED, .attempt = 1, .kind = 0, .delivery = "d0", .at = 7, .body = "{\"n\":0}"},
    {.seq = s[1], .status = ATH_COMPLETED, .attempt = 2, .kind = 0, .delivery = "d1", .at = 7, .body = "{\"n\":1}"},
    {.seq = s[2], .status = ATH_RETRYING, .attempt = 1, .kind = 2, .delivery = "d2", .at = 7, .body = "{\"n\":2}"},
  };
  uint8_t ap[3];
  int64_t ids[3];
  ath_queue_cycle_t c = {.outcomes = o, .n_outcomes = 3, .applied = ap, .lease = a.incarnation,
                       .hooks = h, .n_hooks = 3, .hook_ids = ids};
  ASSERT_OK(ath__qpg_cycle(q, &c));
  ASSERT(ap[0] && !ap[1] && ap[2]);
  ASSERT(ids[0] > 0 && ids[1] == 0 && ids[2] > 0);
  /* s[0] again under b's lease: fenced out, though the row has the status,
   * attempt and no lease the event says (another transaction wrote it) */
  ath_queue_outcome_t ob = {.seq = s[0], .attempt = 1, .status = ATH_COMPLETED, .result = "2"};
  ath_queue_hook_t hb = {.seq = s[0], .status = ATH_COMPLETED, .attempt = 1, .kind = 0, .delivery = "db", .at = 7,
                       .body = "{}"};
  int64_t idb = -1;
  ath_queue_cycle_t cb = {.outcomes = &ob, .n_outcomes = 1, .applied = ap, .lease = b.incarnation,
                        .hooks = &hb, .n_hooks = 1, .hook_ids = &idb};
  ASSERT_OK(ath__qpg_cycle(q, &cb));
  ASSERT_EQ(0, ap[0]);
  ASSERT_EQ(0, idb);
  ath_queue_cycle_t bad = {.lease = a.incarnation, .hooks = &hb, .n_hooks = 1, .hook_ids = &idb};
  ASSERT_EQ(ATH_EINVAL, ath__qpg_cycle(q, &bad));
  PGconn* pc = admin();
  ASSERT_EQ(2, sql_int(pc, "SELECT count(*) FROM qpg_outbox.outbox"));
  /* a's rows while a lives: nobody adopts them */
  ath_queue_outbox_t* rows;
  size_t n;
  ASSERT_OK(ath__qpg_hooks_adopt(q, b.incarnation, 10, &rows, &n));
  ASSERT_EQ(0, n);
  sql_ok(pc, "UPDATE qpg_outbox.nodes SET expires_at = 0 WHERE node_id = 'a'");
  ASSERT_OK(ath__qpg_hooks_adopt(q, b.incarnation, 10, &rows, &n));
  ASSERT_EQ(2, n);
  ASSERT_EQ(ids[0], rows[0].id);
  ASSERT_EQ(0, rows[0].kind);
  ASSERT_STR_EQ("d0", rows[0].delivery);
  ASSERT_EQ(7, rows[0].at);
  ASSERT_STR_EQ("{\"n\":0}", rows[0].body);
  ASSERT_EQ(2, rows[1].kind);
  ASSERT_STR_EQ("d2", rows[1].delivery);
  ath__qpg_outbox_free(rows, n);
  ASSERT_OK(ath__qpg_hooks_adopt(q, b.incarnation, 10, &rows, &n)); /* b owns them now */
  ASSERT_EQ(0, n);
  ASSERT_OK(ath__qpg_hooks_done(q, ids, 1));
  ASSERT_EQ(1, sql_int(pc, "SELECT count(*) FROM qpg_outbox.outbox"));
  /* an owner that is no node at all (-1: stored before the webhooks started) */
  sql_ok(pc, "UPDATE qpg_outbox.outbox SET owner = -1");
  ASSERT_OK(ath__qpg_hooks_adopt(q, b.incarnation, 10, &rows, &n));
  ASSERT_EQ(1, n);
  ath__qpg_outbox_free(rows, n);
  PQfinish(pc);
  ath__qpg_close(q);
  return 0;
}

TEST_IMPL(db_pg_queue_rescue) {
  ath_qpg_t* q = fresh("qpg_rescue");
  ath_qpg_t* qa = open_q("qpg_rescue");
  ath_queue_lease_t a = node(qa, "a");
  ath_queue_lease_t b = node(q, "b");
  ath_queue_lease_t leader = node(q, "leader");
  insert_many(q, "r", 5); /* one stays ready */
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(qa, a.incarnation, "default", 3, &t));
  ASSERT_EQ(3, t.n);
  int64_t dead_seq = t.rows[0].seq;
  ath__qpg_tasks_free(&t);
  ASSERT_OK(ath__qpg_claim(q, b.incarnation, "default", 1, &t)); /* b is alive */
  ASSERT_EQ(1, t.n);
  int64_t live_seq = t.rows[0].seq;
  ath__qpg_tasks_free(&t);
  ath_queue_tasks_t none;
  ASSERT_OK(ath__qpg_rescue(q, leader.incarnation, 100, 0, &none)); /* nobody dead yet */
  ASSERT_EQ(0, none.n);
  ath__qpg_tasks_free(&none);
  PGconn* c = admin();
  char sql[256];
  snprintf(sql, sizeof(sql), "UPDATE qpg_rescue.nodes SET expires_at = 0 WHERE incarnation = %" PRId64,
           a.incarnation);
  sql_ok(c, sql);
  ASSERT_OK(ath__qpg_claim(qa, a.incarnation, "default", 10, &t)); /* expired: claims nothing */
  ASSERT_EQ(0, t.n);
  ath__qpg_tasks_free(&t);
  ath_queue_tasks_t r;
  ASSERT_OK(ath__qpg_rescue(q, leader.incarnation, 100, 0, &r));
  ASSERT_EQ(3, r.n);
  for (size_t i = 0; i < r.n; i++) {
    ASSERT(r.rows[i].seq != live_seq);
    ASSERT_EQ(1, r.rows[i].rescues);
    ASSERT_EQ(1, r.rows[i].attempt);
  }
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM qpg_rescue.tasks WHERE lease = %" PRId64,
           leader.incarnation);
  ASSERT_EQ(3, sql_int(c, sql));
  /* a's row: expired and leasing nothing, reaped (grace 0) */
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM qpg_rescue.nodes WHERE incarnation = %" PRId64,
           a.incarnation);
  ASSERT_EQ(0, sql_int(c, sql));
  /* a second pass before the leader wrote anything: the same rows again
   * (its own open control leases), not counted as another rescue */
  ath_queue_tasks_t again;
  ASSERT_OK(ath__qpg_rescue(q, leader.incarnation, 100, 0, &again));
  ASSERT_EQ(3, again.n);
  for (size_t i = 0; i < again.n; i++) {
    ASSERT_EQ(r.rows[i].seq, again.rows[i].seq);
    ASSERT_EQ(1, again.rows[i].rescues);
  }
  ath__qpg_tasks_free(&again);
  /* a comes back: its renew says lost, its outcome is discarded */
  ASSERT_EQ(ATH_EWORKERLOST, ath__qpg_node_renew(qa, &a, 1, NULL));
  ASSERT(a.lost);
  ASSERT(ath__q_lease_fenced(&a, 1));
  ath_queue_outcome_t late = {.seq = dead_seq, .attempt = 1, .status = ATH_COMPLETED, .result = "1"};
  uint8_t ap[3];
  ASSERT_OK(ath__qpg_finish(qa, a.incarnation, &late, 1, ap));
  ASSERT_EQ(0, ap[0]);
  /* the leader's decision: EWORKERLOST, retried now */
  ath_queue_outcome_t lost[3];
  for (size_t i = 0; i < 3; i++)
    lost[i] = (ath_queue_outcome_t){.seq = r.rows[i].seq, .attempt = r.rows[i].attempt,
                                  .status = ATH_RETRYING,
                                  .error = "{\"code\":\"EWORKERLOST\"}"};
  ath__qpg_tasks_free(&r);
  ASSERT_OK(ath__qpg_finish(q, leader.incarnation, lost, 3, ap));
  ASSERT(ap[0] && ap[1] && ap[2]);
  int staged;
  ASSERT_OK(ath__qpg_stage(q, NULL, 0, 0, 100, &staged)); /* the leader's sweep */
  ASSERT_EQ(3, staged);
  ASSERT_OK(ath__qpg_claim(q, b.incarnation, "default", 10, &t));
  ASSERT_EQ(4, t.n); /* the 3 rescued and the one left (b's own stays b's) */
  int second = 0;
  for (size_t i = 0; i < t.n; i++)
    second += t.rows[i].attempt == 2 && t.rows[i].error != NULL &&
              strstr(t.rows[i].error, "EWORKERLOST") != NULL;
  ASSERT_EQ(3, second);
  ath__qpg_tasks_free(&t);
  /* the live node's task was never touched */
  snprintf(sql, sizeof(sql), "SELECT rescues FROM qpg_rescue.tasks WHERE seq = %" PRId64, live_seq);
  ASSERT_EQ(0, sql_int(c, sql));
  PQfinish(c);
  ath__qpg_close(qa);
  ath__qpg_close(q);
  return 0;
}

/* Self-fencing: renews move the deadline; a renew that cannot reach the
 * database keeps the old one, and past ttl - margin the node is fenced. */
TEST_IMPL(db_pg_queue_lease) {
  ath_qpg_t* q = fresh("qpg_lease");
  const char* queues[] = {"default", "db", NULL};
  ath_queue_node_t n = {.node_id = "n", .queues = queues, .slots = 8, .ttl_ms = 3000, .interval_ms = 500};
  const uint64_t ms = 1000000;
  ath_queue_lease_t l;
  ASSERT_OK(ath__qpg_node_register(q, &n, 1000 * ms, &l));
  PGconn* c = admin();
  ASSERT_EQ(2, sql_int(c, "SELECT cardinality(queues) FROM qpg_lease.nodes"));
  ASSERT_EQ(3000, sql_int(c, "SELECT expires_at - beat_at FROM qpg_lease.nodes"));
  /* margin = min(max(2 * 500, 5000), 3000 / 2) = 1500 ms */
  ASSERT(!ath__q_lease_fenced(&l, 2499 * ms));
  ASSERT(ath__q_lease_fenced(&l, 2500 * ms));
  ASSERT_OK(ath__qpg_node_renew(q, &l, 2000 * ms, "{\"done\":1}"));
  ASSERT(!ath__q_lease_fenced(&l, 3499 * ms));
  ASSERT(ath__q_lease_fenced(&l, 3500 * ms));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_lease.nodes WHERE metrics = '{\"done\":1}'"));
  /* the connection is killed: the renew fails, the deadline stays */
  char sql[200];
  ath_qpg_t* victim = NULL;
  char url[600], err[128];
  snprintf(url, sizeof(url), "%s?application_name=qpg_lease_victim", test_pg_url());
  ASSERT_OK(ath__qpg_open(url, "qpg_lease", 1, &victim, err, sizeof(err)));
  ath__qpg_close(q);
  q = victim;
  sql_ok(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'qpg_lease_victim'");
  ASSERT_EQ(ATH_ESTORE, ath__qpg_node_renew(q, &l, 3000 * ms, NULL));
  ASSERT(!l.lost);
  ASSERT(!ath__q_lease_fenced(&l, 3499 * ms));
  ASSERT(ath__q_lease_fenced(&l, 3500 * ms));
  ASSERT_STR_EQ("08006", ath__qpg_sqlstate(q));
  ASSERT_OK(ath__qpg_reset(q)); /* reconnected, statements prepared again */
  ASSERT_OK(ath__qpg_node_renew(q, &l, 3400 * ms, NULL));
  ASSERT(!ath__q_lease_fenced(&l, 4899 * ms));
  /* expired while the row stays (nobody reaped it): the renew refuses */
  snprintf(sql, sizeof(sql), "UPDATE qpg_lease.nodes SET expires_at = qpg_lease.now_ms() - 1"
                             " WHERE incarnation = %" PRId64, l.incarnation);
  sql_ok(c, sql);
  ASSERT_EQ(ATH_EWORKERLOST, ath__qpg_node_renew(q, &l, 3500 * ms, NULL));
  ASSERT(l.lost);
  ASSERT(ath__q_lease_fenced(&l, 3500 * ms));
  snprintf(sql, sizeof(sql), "SELECT expires_at < qpg_lease.now_ms() FROM qpg_lease.nodes"
                             " WHERE incarnation = %" PRId64, l.incarnation);
  /* the row is still there, still expired */
  PGresult* still = PQexec(c, sql);
  ASSERT_STR_EQ("t", PQgetvalue(still, 0, 0));
  PQclear(still);
  ath__qpg_close(q);
  /* release: the row goes when it leases nothing */
  q = open_q("qpg_lease");
  ath_queue_lease_t m;
  ASSERT_OK(ath__qpg_node_register(q, &n, 0, &m));
  ASSERT_OK(ath__qpg_node_release(q, &m));
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM qpg_lease.nodes WHERE incarnation = %" PRId64,
           m.incarnation);
  ASSERT_EQ(0, sql_int(c, sql));
  ASSERT_EQ(ATH_EWORKERLOST, ath__qpg_node_renew(q, &m, 0, NULL));
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ insert */

/* An explicit id inserted twice is one task: the second insert reports the
 * existing seq and name, in the same batch as a new id. */
TEST_IMPL(db_pg_queue_idempotent) {
  ath_qpg_t* q = fresh("qpg_idem");
  ath_queue_insert_t first = task_row("order-1", "default", 0, "{\"n\":1}");
  ath_queue_inserted_t o1;
  ASSERT_OK(ath__qpg_insert(q, &first, 1, &o1));
  ASSERT(o1.created);
  ASSERT_NULL(o1.existing_name);
  ath_queue_insert_t again[3] = {task_row("order-2", "default", 0, "{}"),
                               task_row("order-1", "default", 0, "{\"n\":2}"),
                               task_row("order-3", "other", 0, "{}")};
  again[1].name = "charge";
  ath_queue_inserted_t o2[3];
  ASSERT_OK(ath__qpg_insert(q, again, 3, o2));
  ASSERT(o2[0].created);
  ASSERT(!o2[1].created);
  ASSERT(o2[2].created);
  ASSERT_EQ(o1.seq, o2[1].seq);
  ASSERT_EQ(o1.created_at, o2[1].created_at);
  ASSERT_STR_EQ("noop", o2[1].existing_name);
  ath__qpg_inserted_clear(o2, 3);
  PGconn* c = admin();
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_idem.tasks WHERE id = 'order-1'"
                          " AND input = '{\"n\":1}'"));
  ASSERT_EQ(3, sql_int(c, "SELECT count(*) FROM qpg_idem.ready"));
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* Payloads are text: JSON that jsonb would rewrite, and bytes that need
 * escaping in an array literal, come back byte for byte (input through the
 * claim, result and error through the finish). */
TEST_IMPL(db_pg_queue_payload) {
  ath_qpg_t* q = fresh("qpg_payload");
  ath_queue_lease_t l = node(q, "n");
  const char* inputs[] = {
    "{\"a\":2.0,\"b\":-0.0,\"c\":12345678901234567890}",
    "{\"a\":1,\"a\":2.50,\"big\":1.5e300}",
    "[\"q\\\"uote\",\"back\\\\slash\",\"{br,ace}\",\"NULL\",\"\\u00e9 \xc3\xa9\"]",
    "NULL",
    "",
  };
  enum { N = sizeof(inputs) / sizeof(inputs[0]) };
  ath_queue_insert_t rows[N];
  char ids[N][8];
  for (int i = 0; i < N; i++) {
    snprintf(ids[i], sizeof(ids[i]), "p%d", i);
    rows[i] = task_row(ids[i], "default", N - i, inputs[i]); /* claimed in input order */
  }
  ath_queue_inserted_t out[N];
  ASSERT_OK(ath__qpg_insert(q, rows, N, out));
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, l.incarnation, "default", N, &t));
  ASSERT_EQ(N, t.n);
  ath_queue_outcome_t o[N];
  for (int i = 0; i < N; i++) {
    ASSERT_STR_EQ(inputs[i], t.rows[i].input);
    o[i] = (ath_queue_outcome_t){.seq = t.rows[i].seq, .attempt = 1, .status = ATH_COMPLETED,
                               .result = inputs[i], .error = i == 0 ? inputs[1] : NULL};
  }
  uint8_t ap[N];
  ASSERT_OK(ath__qpg_finish(q, l.incarnation, o, N, ap));
  PGconn* c = admin();
  PGresult* r = PQexec(c, "SELECT result, error FROM qpg_payload.tasks ORDER BY priority DESC");
  ASSERT_EQ(N, PQntuples(r));
  for (int i = 0; i < N; i++) {
    ASSERT(ap[i]);
    ASSERT_STR_EQ(inputs[i], PQgetvalue(r, i, 0));
  }
  ASSERT_STR_EQ(inputs[1], PQgetvalue(r, 0, 1));
  ASSERT(PQgetisnull(r, 1, 1)); /* NULL stays NULL, "NULL" stays a string */
  PQclear(r);
  ath__qpg_tasks_free(&t);
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ leader */

/* Waits (deadline 10 s) until `q` takes the leader lock. */
static int take_within(ath_qpg_t* q) {
  uint64_t end = ath__mono_ns() + 10000000000ull;
  int held = 0;
  while (!held && ath__mono_ns() < end)
    ASSERT_OK(ath__qpg_leader_try(q, &held)); /* each try is a round trip */
  return held;
}

static void resigned(const char* channel, const char* payload, void* ud) {
  (void)ud;
  ASSERT_STR_EQ("athena_leader", channel);
  ASSERT_STR_EQ("resigned", payload);
}

/* Only one of two sessions holds the lock; the other takes over once the
 * first session closes; resigning frees it and tells the listeners. */
TEST_IMPL(db_pg_queue_leader) {
  ath_qpg_t* a = fresh("qpg_leader");
  ath_qpg_t* b = open_q("qpg_leader");
  ath_qpg_t* other = open_q("qpg_other"); /* another schema: another lock */
  int held;
  ASSERT_OK(ath__qpg_leader_try(a, &held));
  ASSERT(held);
  ASSERT_OK(ath__qpg_leader_try(a, &held)); /* again: still one lock */
  ASSERT(held);
  ASSERT_OK(ath__qpg_leader_try(b, &held));
  ASSERT(!held);
  ASSERT_OK(ath__qpg_leader_holds(a, &held));
  ASSERT(held);
  ASSERT_OK(ath__qpg_leader_holds(b, &held));
  ASSERT(!held);
  ASSERT_OK(ath__qpg_leader_try(other, &held));
  ASSERT(held);
  PGconn* c = admin();
  /* one leader lock per schema (other tests may hold advisory locks now) */
  ASSERT_EQ(2, sql_int(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                          " AND classid = 1096042062 AND objid IN"
                          " ((hashtext('qpg_leader')::bigint & 4294967295)::oid,"
                          "  (hashtext('qpg_other')::bigint & 4294967295)::oid)"));
  ath__qpg_close(a); /* the session ends: the lock goes with it */
  ASSERT(take_within(b));
  ASSERT_OK(ath__qpg_leader_holds(b, &held));
  ASSERT(held);
  /* resign: unlocked, and NOTIFY athena_leader 'resigned' */
  ath_qpg_t* l = open_q("qpg_leader");
  const char* ch[] = {"athena_leader", NULL};
  ASSERT_OK(ath__qpg_listen(l, ch));
  ASSERT_OK(ath__qpg_leader_resign(b));
  ASSERT_OK(ath__qpg_leader_holds(b, &held));
  ASSERT(!held);
  ath_qpg_t* d = open_q("qpg_leader");
  ASSERT_OK(ath__qpg_leader_try(d, &held));
  ASSERT(held);
  int got = 0;
  uint64_t end = ath__mono_ns() + 10000000000ull;
  while (got == 0 && ath__mono_ns() < end) {
    struct pollfd p = {.fd = ath__qpg_socket(l), .events = POLLIN};
    poll(&p, 1, 1000);
    got = ath__qpg_notifies(l, resigned, NULL);
  }
  ath__qpg_close(d);
  ath__qpg_close(b);
  ath__qpg_close(other);
  PQfinish(c);
  ASSERT_EQ(1, got);
  ath__qpg_close(l);
  return 0;
}


/* ------------------------------------------------------------ cron */

typedef struct {
  const char* schema;
  int advanced, created;
  pthread_barrier_t* start;
} firer_t;

static void* firer(void* arg) {
  firer_t* f = arg;
  ath_qpg_t* q = open_q(f->schema);
  ath_queue_fire_t one = {.id = "tick", .expect = 60000, .at = 60000, .next = 120000, .fire = 1};
  pthread_barrier_wait(f->start);
  ASSERT_OK(ath__qpg_schedule_fire(q, &one, &f->advanced, &f->created, NULL));
  ath__qpg_close(q);
  return NULL;
}

/* Two "leaders" firing the same occurrence at once: one advances the
 * schedule and one task "tick@60000" exists. A fire whose CAS passes but
 * whose occurrence already has its task (a leader with a stale next_ms)
 * creates nothing. Re-registering an unchanged schedule keeps it. */
TEST_IMPL(db_pg_queue_cron_once) {
  ath_qpg_t* q = fresh("qpg_cron");
  ath_queue_schedule_t s = {.id = "tick", .name = "noop", .input = "{\"t\":1.0}", .cron = "* * * * *",
                          .queue = "default", .definition = "h1", .next_ms = 60000,
                          .max_attempts = 3, .close_after_ms = 5000};
  int changed;
  ASSERT_OK(ath__qpg_schedule_put(q, &s, &changed));
  ASSERT(changed);
  s.next_ms = 999; /* the same definition from another node: left alone */
  ASSERT_OK(ath__qpg_schedule_put(q, &s, &changed));
  ASSERT(!changed);
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, 2);
  firer_t f[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    f[i] = (firer_t){.schema = "qpg_cron", .start = &start};
    ASSERT_OK(pthread_create(&th[i], NULL, firer, &f[i]));
  }
  for (int i = 0; i < 2; i++)
    ASSERT_OK(pthread_join(th[i], NULL));
  pthread_barrier_destroy(&start);
  ASSERT_EQ(1, f[0].advanced + f[1].advanced);
  ASSERT_EQ(1, f[0].created + f[1].created);
  PGconn* c = admin();
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_cron.tasks WHERE id = 'tick@60000'"
                          " AND input = '{\"t\":1.0}' AND status = 0 AND max_attempts = 3"
                          " AND close_by = created_at + 5000"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_cron.ready"));
  ASSERT_EQ(120000, sql_int(c, "SELECT next_ms FROM qpg_cron.schedules WHERE total = 1"
                               " AND last_ms = 60000 AND last_task = 'tick@60000'"));
  /* the second guard: CAS passes again (next_ms put back), no second task */
  sql_ok(c, "UPDATE qpg_cron.schedules SET next_ms = 60000");
  ath_queue_fire_t again = {.id = "tick", .expect = 60000, .at = 60000, .next = 120000, .fire = 1};
  int adv, cre;
  ASSERT_OK(ath__qpg_schedule_fire(q, &again, &adv, &cre, NULL));
  ASSERT_EQ(1, adv);
  ASSERT_EQ(0, cre);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_cron.tasks"));
  /* a stale CAS (the row moved on) does nothing */
  ASSERT_OK(ath__qpg_schedule_fire(q, &again, &adv, &cre, NULL));
  ASSERT_EQ(0, adv);
  ASSERT_EQ(0, cre);
  /* a changed definition replaces the schedule */
  s.definition = "h2";
  ASSERT_OK(ath__qpg_schedule_put(q, &s, &changed));
  ASSERT(changed);
  ASSERT_EQ(999, sql_int(c, "SELECT next_ms FROM qpg_cron.schedules"));
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ NOTIFY */

typedef struct {
  char got[16][32];
  int n;
} heard_t;

static void heard(const char* channel, const char* payload, void* ud) {
  heard_t* h = ud;
  ASSERT_LT(h->n, 16);
  if (strcmp(channel, "athena_done") == 0)
    snprintf(h->got[h->n++], 32, "done:%s", payload);
  else
    snprintf(h->got[h->n++], 32, "%s", payload); /* athena_ready */
}

/* Reads notifications until `want` arrived (deadline 10 s). */
static void hear(ath_qpg_t* l, heard_t* h, int want) {
  uint64_t end = ath__mono_ns() + 10000000000ull;
  while (h->n < want && ath__mono_ns() < end) {
    struct pollfd p = {.fd = ath__qpg_socket(l), .events = POLLIN};
    poll(&p, 1, 1000);
    ASSERT_GE(ath__qpg_notifies(l, heard, h), 0);
  }
}

/* A commit that makes tasks ready notifies athena_ready once per queue; a
 * scheduled task and a notify = 0 connection send nothing. Notifications
 * arrive in commit order, so a marker commit closes each check. */
TEST_IMPL(db_pg_queue_notify) {
  ath_qpg_t* q = fresh("qpg_notify");
  ath_qpg_t* l = open_q("qpg_notify");
  ath_qpg_t* quiet = NULL;
  char err[128];
  ASSERT_OK(ath__qpg_open(test_pg_url(), "qpg_notify", 0, &quiet, err, sizeof(err)));
  const char* ch[] = {"athena_ready", "athena_done", NULL};
  ASSERT_OK(ath__qpg_listen(l, ch));
  heard_t h = {0};
  ASSERT_EQ(0, ath__qpg_notifies(l, heard, &h)); /* nothing yet, and no blocking */
  ath_queue_insert_t rows[4] = {task_row("1", "a", 0, "{}"), task_row("2", "a", 0, "{}"),
                              task_row("3", "b", 0, "{}"), task_row("4", "late", 0, "{}")};
  rows[3].delay_ms = 3600000;
  ath_queue_inserted_t out[4];
  ASSERT_OK(ath__qpg_insert(q, rows, 4, out));
  ath_queue_insert_t z = task_row("5", "z", 0, "{}");
  ASSERT_OK(ath__qpg_insert(quiet, &z, 1, out));
  ath_queue_insert_t marker = task_row("6", "marker", 0, "{}");
  ASSERT_OK(ath__qpg_insert(q, &marker, 1, out));
  hear(l, &h, 3);
  ASSERT_EQ(3, h.n);
  int a = strcmp(h.got[0], "a") == 0 ? 0 : 1; /* a and b in either order */
  ASSERT_STR_EQ("a", h.got[a]);
  ASSERT_STR_EQ("b", h.got[1 - a]);
  ASSERT_STR_EQ("marker", h.got[2]);
  /* a retried-now task staged, and a returned one, notify their queue */
  ath_queue_lease_t n = node(q, "n");
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, n.incarnation, "a", 2, &t));
  ASSERT_EQ(2, t.n);
  ath_queue_outcome_t o[2] = {{.seq = t.rows[0].seq, .attempt = 1, .status = ATH_RETRYING},
                            {.seq = t.rows[1].seq, .attempt = 1, .status = ATH_COMPLETED}};
  uint8_t ap[2];
  ASSERT_OK(ath__qpg_finish(q, n.incarnation, o, 2, ap)); /* nothing ready yet */
  int staged;
  ASSERT_OK(ath__qpg_stage(q, &o[0].seq, 1, 0, 0, &staged));
  ASSERT_EQ(1, staged);
  ath__qpg_tasks_free(&t);
  ASSERT_OK(ath__qpg_insert(q, &marker, 1, out)); /* existing id: nothing ready, no notify */
  ASSERT(!out[0].created);
  ath__qpg_inserted_clear(out, 1);
  ath_queue_insert_t m2 = task_row("7", "marker", 0, "{}");
  ASSERT_OK(ath__qpg_insert(q, &m2, 1, out));
  hear(l, &h, 5);
  ASSERT_EQ(5, h.n);
  ASSERT_STR_EQ("a", h.got[3]);
  ASSERT_STR_EQ("marker", h.got[4]);
  /* a watched task (notify = 1) that ends: athena_done with its seq; the
   * unwatched ones above sent none */
  ath_queue_insert_t w[2] = {task_row("w1", "w", 0, "{}"), task_row("w2", "w", 0, "{}")};
  w[0].notify = 1;
  ath_queue_inserted_t wo[2];
  ASSERT_OK(ath__qpg_insert(q, w, 2, wo));
  ASSERT_OK(ath__qpg_claim(q, n.incarnation, "w", 2, &t));
  ASSERT_EQ(2, t.n);
  ath_queue_outcome_t wf[2] = {{.seq = t.rows[0].seq, .attempt = 1, .status = ATH_COMPLETED},
                             {.seq = t.rows[1].seq, .attempt = 1, .status = ATH_FAILED}};
  ath__qpg_tasks_free(&t);
  ASSERT_OK(ath__qpg_finish(q, n.incarnation, wf, 2, ap));
  hear(l, &h, 7);
  ASSERT_EQ(7, h.n);
  ASSERT_STR_EQ("w", h.got[5]);
  char done[32];
  snprintf(done, sizeof(done), "done:%" PRId64, wo[0].seq);
  ASSERT_STR_EQ(done, h.got[6]);
  ath__qpg_close(quiet);
  ath__qpg_close(l);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ cycle */

/* A fresh schema with n (<= 8) tasks "<prefix><i>" claimed by a node (*l):
 * their completed outcomes (attempt 1, result 1) in o. */
static ath_qpg_t* claimed(const char* schema, const char* prefix, int n, ath_queue_lease_t* l,
                          ath_queue_outcome_t* o) {
  ath_qpg_t* q = fresh(schema);
  *l = node(q, "n");
  insert_many(q, prefix, n);
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, l->incarnation, "default", n, &t));
  ASSERT_EQ(n, t.n);
  for (int i = 0; i < n; i++)
    o[i] = (ath_queue_outcome_t){.seq = t.rows[i].seq, .attempt = 1, .status = ATH_COMPLETED, .result = "1"};
  ath__qpg_tasks_free(&t);
  return q;
}

/* One pipelined cycle: inserts and finishes commit together, then two
 * claims; a cycle whose insert fails commits none of its finishes. */
TEST_IMPL(db_pg_queue_cycle) {
  ath_queue_lease_t n;
  ath_queue_outcome_t o[3];
  ath_qpg_t* q = claimed("qpg_cycle", "c", 3, &n, o);
  /* a bad insert (invalid UTF-8) with a good finish: neither commits */
  ath_queue_insert_t bad = task_row("bad", "default", 0, "\"\xff\"");
  ath_queue_inserted_t ins[2];
  uint8_t ap[3] = {9, 9, 9};
  ath_queue_tasks_t got[2];
  ath_queue_claim_t cl[2] = {{.queue = "default", .n = 10, .out = &got[0]},
                           {.queue = "other", .n = 10, .out = &got[1]}};
  ath_queue_cycle_t c = {.inserts = &bad, .n_inserts = 1, .inserted = ins, .outcomes = o,
                       .n_outcomes = 1, .applied = ap, .lease = n.incarnation, .claims = cl,
                       .n_claims = 2};
  ASSERT_EQ(ATH_ESTORE, ath__qpg_cycle(q, &c));
  ASSERT_STR_EQ("22021", ath__qpg_sqlstate(q));
  ASSERT(!c.committed);
  ASSERT_EQ(0, got[0].n); /* the claims after it did not run */
  PGconn* a = admin();
  ASSERT_EQ(0, sql_int(a, "SELECT count(*) FROM qpg_cycle.tasks WHERE status = 5"));
  /* the connection still works: a full cycle */
  ath_queue_insert_t rows[2] = {task_row("x", "default", 0, "{}"), task_row("y", "other", 0, "{}")};
  c.inserts = rows;
  c.n_inserts = 2;
  c.n_outcomes = 3;
  ASSERT_OK(ath__qpg_cycle(q, &c));
  ASSERT(c.committed);
  ASSERT(ins[0].created && ins[1].created);
  ASSERT(ap[0] && ap[1] && ap[2]);
  ASSERT_EQ(1, got[0].n);
  ASSERT_STR_EQ("x", got[0].rows[0].id);
  ASSERT_EQ(1, got[1].n);
  ASSERT_STR_EQ("y", got[1].rows[0].id);
  ath__qpg_tasks_free(&got[0]);
  ath__qpg_tasks_free(&got[1]);
  ASSERT_EQ(3, sql_int(a, "SELECT count(*) FROM qpg_cycle.tasks WHERE status = 5"));
  ASSERT_EQ(2, sql_int(a, "SELECT count(*) FROM qpg_cycle.tasks WHERE status = 2"));
  /* one_commit: a failing insert takes the claims of its cycle back too */
  ath_queue_insert_t more[2] = {task_row("z1", "default", 0, "{}"), task_row("z2", "default", 0, "{}")};
  ASSERT_OK(ath__qpg_insert(q, more, 2, ins));
  ath_queue_cycle_t one = {.inserts = &bad, .n_inserts = 1, .inserted = ins, .lease = n.incarnation,
                         .claims = cl, .n_claims = 1, .one_commit = 1};
  ASSERT_EQ(ATH_ESTORE, ath__qpg_cycle(q, &one));
  ASSERT(!one.committed);
  ASSERT_EQ(0, got[0].n);
  ASSERT_EQ(2, sql_int(a, "SELECT count(*) FROM qpg_cycle.ready"));
  one.inserts = &more[0]; /* an existing id: nothing new, the claim commits with it */
  ASSERT_OK(ath__qpg_cycle(q, &one));
  ASSERT(one.committed);
  ASSERT(!ins[0].created);
  ASSERT_EQ(2, got[0].n);
  ath__qpg_inserted_clear(ins, 1);
  ath__qpg_tasks_free(&got[0]);
  ASSERT_EQ(0, sql_int(a, "SELECT count(*) FROM qpg_cycle.ready"));
  PQfinish(a);
  ath__qpg_close(q);
  return 0;
}

/* A connection's first cycle that uses one statement twice (a claim per
 * queue): it is prepared once (a second prepare of the same name failed the
 * whole cycle, "prepared statement already exists"). */
TEST_IMPL(db_pg_queue_prepare_once) {
  ath_qpg_t* q = fresh("qpg_prep");
  ath_queue_lease_t n = node(q, "n");
  ath__qpg_close(q);
  q = open_q("qpg_prep"); /* a new connection: nothing prepared on it */
  ath_queue_insert_t rows[2] = {task_row("x", "default", 0, "{}"), task_row("y", "other", 0, "{}")};
  ath_queue_inserted_t ins[2];
  ath_queue_tasks_t got[2];
  ath_queue_claim_t cl[2] = {{.queue = "default", .n = 10, .out = &got[0]},
                           {.queue = "other", .n = 10, .out = &got[1]}};
  ath_queue_cycle_t c = {.inserts = rows, .n_inserts = 2, .inserted = ins, .lease = n.incarnation,
                       .claims = cl, .n_claims = 2, .one_commit = 1};
  ASSERT_OK(ath__qpg_cycle(q, &c));
  ASSERT_EQ(1, got[0].n);
  ASSERT_EQ(1, got[1].n);
  ath__qpg_tasks_free(&got[0]);
  ath__qpg_tasks_free(&got[1]);
  ath__qpg_inserted_clear(ins, 2);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ plans */

/* EXPLAIN of `stmt` EXECUTEd with `args` under plan_cache_mode `mode`, as
 * JSON text (the caller frees). */
static char* explain(PGconn* c, const char* mode, const char* stmt, const char* args) {
  char sql[64];
  snprintf(sql, sizeof(sql), "SET plan_cache_mode = %s", mode);
  sql_ok(c, sql);
  ath_buf_t b = {0};
  ath__buf_lit(&b, "EXPLAIN (FORMAT JSON) EXECUTE ");
  ath__buf_append(&b, stmt, strlen(stmt));
  ath__buf_lit(&b, "(");
  ath__buf_append(&b, args, strlen(args));
  ath__buf_lit(&b, ")");
  PGresult* r = PQexec(c, b.data);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    fprintf(stderr, "%s: %s\n", b.data, PQresultErrorMessage(r));
  ath__buf_free(&b);
  ASSERT_EQ(PGRES_TUPLES_OK, PQresultStatus(r));
  char* plan = strdup(PQgetvalue(r, 0, 0));
  PQclear(r);
  return plan;
}

/* The plan guard (distributed.md §4.3, §6 item 10) on a seeded schema
 * (50,000 finished rows, 2,000 leased, 10,000 ready): the finish joins by
 * primary key, never driven from tasks_leased (the trap that cost 4x), and
 * the claim reads ready through ready_order; custom and generic plans. */
TEST_IMPL(db_pg_queue_plans) {
  ath_qpg_t* q = fresh("qpg_plans");
  PGconn* c = admin();
  sql_ok(c, "INSERT INTO qpg_plans.tasks (id, name, kind, queue, status, max_attempts, strategy,"
            " created_at, scheduled_at, ready_at, completed_at, lease, input)"
            " SELECT 't' || i, 'noop', 0, 'default', CASE WHEN i <= 50000 THEN 5 WHEN i <= 52000"
            " THEN 2 ELSE 0 END, 3, 0, i, i, i, CASE WHEN i <= 50000 THEN i END,"
            " CASE WHEN i > 50000 AND i <= 52000 THEN 7 END, '{}'"
            " FROM generate_series(1, 62000) i;"
            " INSERT INTO qpg_plans.ready SELECT seq, queue, priority, ready_at"
            " FROM qpg_plans.tasks WHERE status = 0;"
            " ANALYZE qpg_plans.tasks; ANALYZE qpg_plans.ready");
  ath_buf_t sql = {0};
  ath__buf_lit(&sql, "PREPARE fin AS ");
  ath__buf_append(&sql, ath__qpg_statement(q, "finish"), strlen(ath__qpg_statement(q, "finish")));
  sql_ok(c, sql.data);
  ath__buf_free(&sql);
  ath__buf_lit(&sql, "PREPARE cl AS ");
  ath__buf_append(&sql, ath__qpg_statement(q, "claim"), strlen(ath__qpg_statement(q, "claim")));
  sql_ok(c, sql.data);
  ath__buf_free(&sql);
  /* a 256-row batch of leased seqs */
  ath_buf_t seqs = {0};
  ath__buf_lit(&seqs, "7, '{");
  for (int i = 0; i < 256; i++) {
    char n[16];
    ath__buf_append(&seqs, n, (size_t)snprintf(n, sizeof(n), "%s%d", i ? "," : "", 50001 + i));
  }
  ath__buf_lit(&seqs, "}',"
    " array_fill(1, ARRAY[256]), array_fill(5::smallint, ARRAY[256]), array_fill(0::bigint, ARRAY[256]),"
    " array_fill(NULL::text, ARRAY[256]), array_fill(NULL::text, ARRAY[256]), array_fill(0, ARRAY[256]), true");
  const char* fin_args = seqs.data;
  const char* modes[] = {"force_custom_plan", "force_generic_plan"};
  for (int i = 0; i < 2; i++) {
    char* plan = explain(c, modes[i], "fin", fin_args);
    if (strstr(plan, "tasks_leased") != NULL)
      fprintf(stderr, "%s\n", plan);
    ASSERT_NULL(strstr(plan, "tasks_leased"));
    ASSERT_NOT_NULL(strstr(plan, "tasks_pkey"));
    free(plan);
    plan = explain(c, modes[i], "cl", "'default', 256, 8");
    if (strstr(plan, "ready_order") == NULL)
      fprintf(stderr, "%s\n", plan);
    ASSERT_NOT_NULL(strstr(plan, "ready_order"));
    free(plan);
  }
  ath__buf_free(&seqs);
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* A large cycle: 20,000 inserts and 20,000 finishes (~4 MB of array
 * parameters, 40,000 result rows) in one pipeline, then a claim of 20,000:
 * every per-row answer in order. (The flush reads while it writes, libpq's
 * advice against a full-buffer deadlock; loopback's socket buffers absorb
 * this size even without it, so this does not prove that part.) */
TEST_IMPL(db_pg_queue_big_cycle) {
  enum { BIG = 20000 };
  ath_qpg_t* q = fresh("qpg_big");
  ath_queue_lease_t l = node(q, "n");
  insert_many(q, "old", BIG);
  ath_queue_tasks_t claimed;
  ASSERT_OK(ath__qpg_claim(q, l.incarnation, "default", BIG, &claimed));
  ASSERT_EQ(BIG, claimed.n);
  ath_queue_insert_t* rows = calloc(BIG, sizeof(*rows));
  ath_queue_inserted_t* ins = calloc(BIG, sizeof(*ins));
  ath_queue_outcome_t* o = calloc(BIG, sizeof(*o));
  uint8_t* ap = calloc(BIG, 1);
  char(*ids)[16] = calloc(BIG, 16);
  ASSERT(rows && ins && o && ap && ids);
  /* ~4 MB of parameters (200-byte payloads as inputs and results) */
  for (int i = 0; i < BIG; i++) {
    snprintf(ids[i], 16, "new%d", i);
    rows[i] = task_row(ids[i], "default", 0, "{\"pad\":\"................................................................................................................................................................................\"}");
    o[i] = (ath_queue_outcome_t){.seq = claimed.rows[i].seq, .attempt = 1, .status = ATH_COMPLETED,
                               .result = rows[i].input};
  }
  ath_queue_tasks_t got;
  ath_queue_claim_t cl = {.queue = "default", .n = BIG, .out = &got};
  ath_queue_cycle_t c = {.inserts = rows, .n_inserts = BIG, .inserted = ins, .outcomes = o,
                       .n_outcomes = BIG, .applied = ap, .lease = l.incarnation, .claims = &cl,
                       .n_claims = 1};
  ASSERT_OK(ath__qpg_cycle(q, &c));
  ASSERT(c.committed);
  for (int i = 0; i < BIG; i++) {
    ASSERT(ins[i].created);
    ASSERT(ap[i]);
  }
  ASSERT_EQ(BIG, got.n);
  ath__qpg_tasks_free(&got);
  ath__qpg_tasks_free(&claimed);
  PGconn* a = admin();
  ASSERT_EQ(BIG, sql_int(a, "SELECT count(*) FROM qpg_big.tasks WHERE status = 5"));
  ASSERT_EQ(BIG, sql_int(a, "SELECT count(*) FROM qpg_big.tasks WHERE status = 2"));
  PQfinish(a);
  free(rows);
  free(ins);
  free(o);
  free(ap);
  free(ids);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ schedules */

/* The schedule operations the world uses: list, pause (a fire no longer
 * matches), resume (CAS on paused), overlap skip while the last task runs,
 * catch-up advance without a task, dropped occurrences counted, a one-off
 * fired under its own id and deleted, delete; changes NOTIFY athena_sched
 * with the id, and an unchanged re-registration does not. */
TEST_IMPL(db_pg_queue_sched) {
  ath_qpg_t* q = fresh("qpg_sched");
  ath_qpg_t* l = open_q("qpg_sched");
  const char* ch[] = {"athena_sched", NULL};
  ASSERT_OK(ath__qpg_listen(l, ch));
  PGconn* c = admin();
  int64_t now;
  ASSERT_OK(ath__qpg_now(q, &now));
  ASSERT_GT(now, 1700000000000LL);
  ath_queue_schedule_t s = {.id = "b", .name = "noop", .input = "[1]", .cron = "*/5 * * * * *",
                          .queue = "q1", .definition = "d", .next_ms = 5000, .catch_up = 2,
                          .overlap_skip = 1, .priority = 7, .strategy = 1, .max_attempts = 2};
  int k;
  ASSERT_OK(ath__qpg_schedule_put(q, &s, &k));
  ASSERT_EQ(1, k);
  ASSERT_OK(ath__qpg_schedule_put(q, &s, &k)); /* unchanged: no NOTIFY */
  ASSERT_EQ(0, k);
  ath_queue_schedule_t o = {.id = "a-once", .name = "noop", .input = "{}", .queue = "q1",
                          .definition = "o", .once_at = 7000, .next_ms = 7000, .catch_up = 1};
  ASSERT_OK(ath__qpg_schedule_put(q, &o, &k));
  ath_queue_scheds_t rows;
  ASSERT_OK(ath__qpg_schedules(q, NULL, &rows));
  ASSERT_EQ(2, rows.n);
  ASSERT_STR_EQ("a-once", rows.rows[0].id);
  ASSERT(rows.rows[0].cron == NULL);
  ASSERT_EQ(7000, rows.rows[0].once_at);
  const ath_queue_sched_row_t* b = &rows.rows[1];
  ASSERT_STR_EQ("*/5 * * * * *", b->cron);
  ASSERT_STR_EQ("[1]", b->input);
  ASSERT_STR_EQ("q1", b->queue);
  ASSERT(b->overlap_skip && !b->local_tz && !b->paused);
  ASSERT_EQ(2, b->catch_up);
  ASSERT_EQ(7, b->priority);
  ASSERT_EQ(2, b->max_attempts);
  ASSERT_EQ(5000, b->next_ms);
  ASSERT_EQ(-1, b->last_ms);
  ASSERT_GE(rows.now, now);
  ath__qpg_scheds_free(&rows);
  /* the leader's scan: earliest first */
  ASSERT_OK(ath__qpg_schedules_due(q, 10, &rows));
  ASSERT_EQ(2, rows.n);
  ASSERT_STR_EQ("b", rows.rows[0].id);
  ath__qpg_scheds_free(&rows);
  /* paused: the fire's CAS does not match; resume only a paused row */
  ASSERT_OK(ath__qpg_schedule_pause(q, "b", &k));
  ASSERT_EQ(1, k);
  ath_queue_fire_t f = {.id = "b", .expect = 5000, .at = 5000, .next = 10000, .fire = 1};
  int adv, cre, skp;
  ASSERT_OK(ath__qpg_schedule_fire(q, &f, &adv, &cre, &skp));
  ASSERT_EQ(0, adv);
  ASSERT_OK(ath__qpg_schedules_due(q, 10, &rows));
  ASSERT_EQ(1, rows.n); /* only the one-off is armed */
  ath__qpg_scheds_free(&rows);
  ASSERT_OK(ath__qpg_schedule_resume(q, "b", 5000, &k));
  ASSERT_EQ(1, k);
  ASSERT_OK(ath__qpg_schedule_resume(q, "b", 6000, &k));
  ASSERT_EQ(0, k); /* not paused: left alone */
  ASSERT_OK(ath__qpg_schedule_pause(q, "nope", &k));
  ASSERT_EQ(0, k);
  /* fire 5000, then 10000 while its task has not ended: overlap skip */
  ASSERT_OK(ath__qpg_schedule_fire(q, &f, &adv, &cre, &skp));
  ASSERT_EQ(1, adv);
  ASSERT_EQ(1, cre);
  ASSERT_EQ(0, skp);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_sched.tasks WHERE id = 'b@5000' AND queue = 'q1'"
                          " AND priority = 7 AND strategy = 1 AND max_attempts = 2 AND input = '[1]'"
                          " AND close_by IS NULL"));
  f = (ath_queue_fire_t){.id = "b", .expect = 10000, .at = 10000, .next = 15000, .fire = 1};
  ASSERT_OK(ath__qpg_schedule_fire(q, &f, &adv, &cre, &skp));
  ASSERT_EQ(1, adv);
  ASSERT_EQ(0, cre);
  ASSERT_EQ(1, skp);
  sql_ok(c, "UPDATE qpg_sched.tasks SET status = 5 WHERE id = 'b@5000'");
  /* catch-up: advance only (none), and an "all" fire that dropped 3 */
  f = (ath_queue_fire_t){.id = "b", .expect = 15000, .at = 15000, .next = 30000, .fire = 0};
  ASSERT_OK(ath__qpg_schedule_fire(q, &f, &adv, &cre, &skp));
  ASSERT_EQ(1, adv);
  ASSERT_EQ(0, cre);
  ASSERT_EQ(0, skp);
  f = (ath_queue_fire_t){.id = "b", .expect = 30000, .at = 45000, .next = 50000, .fire = 1, .skip = 3};
  ASSERT_OK(ath__qpg_schedule_fire(q, &f, &adv, &cre, &skp));
  ASSERT_EQ(1, cre);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_sched.schedules WHERE id = 'b' AND total = 2"
                          " AND skipped = 4 AND last_ms = 45000 AND next_ms = 50000"
                          " AND last_task = 'b@45000'"));
  /* a one-off: its own id, the row goes */
  f = (ath_queue_fire_t){.id = "a-once", .expect = 7000, .at = 7000, .fire = 1};
  ASSERT_OK(ath__qpg_schedule_fire(q, &f, &adv, &cre, &skp));
  ASSERT_EQ(1, adv);
  ASSERT_EQ(1, cre);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_sched.tasks WHERE id = 'a-once'"));
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM qpg_sched.schedules WHERE id = 'a-once'"));
  ASSERT_EQ(3, sql_int(c, "SELECT count(*) FROM qpg_sched.ready"));
  /* no row left to fire: the cron ends (next NULL) */
  f = (ath_queue_fire_t){.id = "b", .expect = 50000, .at = 50000, .next = 0, .fire = 1};
  ASSERT_OK(ath__qpg_schedule_fire(q, &f, &adv, &cre, &skp));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_sched.schedules WHERE id = 'b' AND next_ms IS NULL"));
  ASSERT_OK(ath__qpg_schedule_delete(q, "b", &k));
  ASSERT_EQ(1, k);
  ASSERT_OK(ath__qpg_schedule_delete(q, "b", &k));
  ASSERT_EQ(0, k);
  /* the notifications, in commit order: put b, put a-once, pause b,
   * resume b, delete b (the unchanged put, the second resume, the unknown
   * pause and the second delete sent none) */
  heard_t h = {0};
  hear(l, &h, 5);
  ASSERT_EQ(5, h.n);
  const char* want[5] = {"b", "a-once", "b", "b", "b"};
  for (int i = 0; i < 5; i++)
    ASSERT_STR_EQ(want[i], h.got[i]);
  PQfinish(c);
  ath__qpg_close(l);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ cluster reads, dead letters */

/* EXPLAIN of `sql` (taken: freed here) with parameters v[0..n), as JSON
 * text (freed by the caller). */
static char* explain_sql(PGconn* c, char* sql, int n, const char* const* v) {
  ASSERT_NOT_NULL(sql);
  ath_buf_t b = {0};
  ath__buf_lit(&b, "EXPLAIN (FORMAT JSON) ");
  ath__buf_append(&b, sql, strlen(sql));
  free(sql);
  PGresult* r = PQexecParams(c, b.data, n, NULL, v, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    fprintf(stderr, "%s: %s\n", b.data, PQresultErrorMessage(r));
  ath__buf_free(&b);
  ASSERT_EQ(PGRES_TUPLES_OK, PQresultStatus(r));
  char* plan = strdup(PQgetvalue(r, 0, 0));
  PQclear(r);
  return plan;
}

/* EXPLAIN of the read ath__qpg_query runs for f. */
static char* explain_query(PGconn* c, ath_qpg_t* q, const ath_queue_query_t* f) {
  char buf[8][32];
  const char* v[8];
  int n;
  char* sql = ath__qpg_query_sql(q, f, buf, v, &n);
  return explain_sql(c, sql, n, v);
}

static void plan_uses(PGconn* c, ath_qpg_t* q, const ath_queue_query_t* f, const char* index) {
  char* plan = explain_query(c, q, f);
  if (strstr(plan, index) == NULL)
    fprintf(stderr, "expected %s in:\n%s\n", index, plan);
  ASSERT_NOT_NULL(strstr(plan, index));
  free(plan);
}

/* queryTasks' read (world:queryTasks, children on the PostgreSQL backend):
 * on 50,000 seeded rows (pairs share a created_at), every filter, the
 * newest-first order with ties by id, paging by seq, and the index each
 * read walks (EXPLAIN): tasks_created newest first, tasks_parent for a
 * workflow's tasks, the primary key in seq order; a LIMIT bounds each. */
TEST_IMPL(db_pg_queue_query) {
  ath_qpg_t* q = fresh("qpg_query");
  PGconn* c = admin();
  sql_ok(c, "INSERT INTO qpg_query.tasks (id, name, kind, queue, status, max_attempts, strategy,"
            " created_at, scheduled_at, ready_at, parent_id, input, result)"
            " SELECT 't' || i, CASE WHEN i % 2 = 0 THEN 'even' ELSE 'odd' END, 0, 'default',"
            " CASE WHEN i % 10 = 0 THEN 8 WHEN i % 3 = 0 THEN 5 ELSE 2 END, 3, 0, i / 2, i / 2, i / 2,"
            " CASE WHEN i % 1000 = 0 THEN 'wf' END, '{}', CASE WHEN i % 3 = 0 THEN '\"r' || i || '\"' END"
            " FROM generate_series(1, 50000) i;"
            " ANALYZE qpg_query.tasks");
  ath_queue_tasks_t t;
  /* newest first; equal created_at by id ("C" order) */
  ath_queue_query_t f = {.limit = 5};
  ASSERT_OK(ath__qpg_query(q, &f, &t));
  ASSERT_EQ(5, t.n);
  const char* want[] = {"t50000", "t49998", "t49999", "t49996", "t49997"};
  for (int i = 0; i < 5; i++)
    ASSERT_STR_EQ(want[i], t.rows[i].id);
  ASSERT_EQ(25000, t.rows[0].created_at);
  ASSERT_STR_EQ("even", t.rows[0].name);
  ASSERT_EQ(8, t.rows[0].status);
  ath__qpg_tasks_free(&t);
  /* status: every quarantined row, and only those; results come back */
  f = (ath_queue_query_t){.status_mask = 1u << 8, .limit = 10000};
  ASSERT_OK(ath__qpg_query(q, &f, &t));
  ASSERT_EQ(5000, t.n);
  for (size_t i = 0; i < t.n; i++)
    ASSERT_EQ(8, t.rows[i].status);
  ath__qpg_tasks_free(&t);
  f = (ath_queue_query_t){.status_mask = (1u << 5) | (1u << 8), .limit = 3};
  ASSERT_OK(ath__qpg_query(q, &f, &t));
  ASSERT_EQ(3, t.n);
  ASSERT_STR_EQ("t50000", t.rows[0].id); /* 8 */
  ASSERT_STR_EQ("t49998", t.rows[1].id); /* 5 */
  ASSERT_STR_EQ("\"r49998\"", t.rows[1].result);
  ASSERT_STR_EQ("t49995", t.rows[2].id); /* 5 (49994 is running) */
  ath__qpg_tasks_free(&t);
  /* name, since, until (inclusive) */
  f = (ath_queue_query_t){.name = "odd", .since = 100, .until = 102, .limit = 100};
  ASSERT_OK(ath__qpg_query(q, &f, &t));
  ASSERT_EQ(3, t.n); /* t205, t203, t201 */
  ASSERT_STR_EQ("t205", t.rows[0].id);
  ASSERT_STR_EQ("t201", t.rows[2].id);
  ath__qpg_tasks_free(&t);
  f = (ath_queue_query_t){.name = "nosuch", .limit = 100};
  ASSERT_OK(ath__qpg_query(q, &f, &t));
  ASSERT_EQ(0, t.n);
  ath__qpg_tasks_free(&t);
  /* a workflow's tasks in seq order, paged */
  f = (ath_queue_query_t){.parent_id = "wf", .by_seq = 1, .limit = 30};
  ASSERT_OK(ath__qpg_query(q, &f, &t));
  ASSERT_EQ(30, t.n);
  ASSERT_STR_EQ("t1000", t.rows[0].id);
  int64_t after = t.rows[29].seq;
  ath__qpg_tasks_free(&t);
  f.after_seq = after;
  ASSERT_OK(ath__qpg_query(q, &f, &t));
  ASSERT_EQ(20, t.n);
  ASSERT_STR_EQ("t31000", t.rows[0].id);
  ath__qpg_tasks_free(&t);
  /* the plans */
  plan_uses(c, q, &(ath_queue_query_t){.limit = 100}, "tasks_created");
  plan_uses(c, q, &(ath_queue_query_t){.status_mask = 1u << 5, .name = "odd", .limit = 100}, "tasks_created");
  plan_uses(c, q, &(ath_queue_query_t){.parent_id = "wf", .limit = 100}, "tasks_parent");
  /* getQuarantined: the dead letters' own partial index (version 3) */
  plan_uses(c, q, &(ath_queue_query_t){.status_mask = 1u << 8, .limit = 100}, "tasks_dead");
  plan_uses(c, q, &(ath_queue_query_t){.parent_id = "wf", .by_seq = 1, .after_seq = 5, .limit = 100},
            "tasks_parent");
  plan_uses(c, q, &(ath_queue_query_t){.by_seq = 1, .after_seq = 40000, .limit = 100}, "tasks_pkey");
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* Dead letters from any connection: requeue makes a quarantined row
 * pending again (attempt 0, no error or result, in ready, athena_ready
 * sent) and refuses anything else; purge deletes it with its history; an
 * unknown id is told apart. */
TEST_IMPL(db_pg_queue_dead_letters) {
  ath_qpg_t* q = fresh("qpg_dead");
  ath_qpg_t* other = open_q("qpg_dead");
  ath_qpg_t* l = open_q("qpg_dead");
  const char* ch[] = {"athena_ready", NULL};
  ASSERT_OK(ath__qpg_listen(l, ch));
  PGconn* c = admin();
  ath_queue_lease_t a = node(q, "a");
  insert_many(q, "d", 2);
  heard_t h = {0};
  hear(l, &h, 1); /* the insert's */
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 2, &t));
  ASSERT_EQ(2, t.n);
  ath_queue_outcome_t o[2] = {
    {.seq = t.rows[0].seq, .attempt = 1, .status = ATH_QUARANTINED, .error = "{\"code\":\"E\"}"},
    {.seq = t.rows[1].seq, .attempt = 1, .status = ATH_QUARANTINED, .error = "{\"code\":\"E\"}"},
  };
  int64_t s0 = t.rows[0].seq;
  ath__qpg_tasks_free(&t);
  uint8_t ap[2];
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, o, 2, ap));
  ASSERT(ap[0] && ap[1]);
  sql_ok(c, "INSERT INTO qpg_dead.workflow_events VALUES ('d1', 1, '{}')");
  int64_t seq;
  int status, how;
  ASSERT_OK(ath__qpg_requeue(other, "nosuch", &seq, &status, &how));
  ASSERT_EQ(-1, how);
  ASSERT_OK(ath__qpg_purge(other, "nosuch", &seq, &status, &how));
  ASSERT_EQ(-1, how);
  ASSERT_OK(ath__qpg_requeue(other, "d0", &seq, &status, &how));
  ASSERT_EQ(1, how);
  ASSERT_EQ(s0, seq);
  ASSERT_EQ(ATH_QUARANTINED, status);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_dead.tasks WHERE id = 'd0' AND status = 0"
                          " AND attempt = 0 AND error IS NULL AND result IS NULL AND completed_at IS NULL"
                          " AND lease IS NULL AND notify"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_dead.ready"));
  h.n = 0;
  hear(l, &h, 1);
  ASSERT_EQ(1, h.n);
  ASSERT_STR_EQ("default", h.got[0]);
  /* once more: no longer quarantined, refused and unchanged */
  ASSERT_OK(ath__qpg_requeue(q, "d0", &seq, &status, &how));
  ASSERT_EQ(0, how);
  ASSERT_EQ(ATH_PENDING, status);
  ASSERT_OK(ath__qpg_purge(q, "d0", &seq, &status, &how));
  ASSERT_EQ(0, how);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_dead.ready"));
  /* it runs again as attempt 1 */
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 5, &t));
  ASSERT_EQ(1, t.n);
  ASSERT_EQ(1, t.rows[0].attempt);
  ath__qpg_tasks_free(&t);
  /* purge: the row and its history go; the id can be inserted again */
  ASSERT_OK(ath__qpg_purge(other, "d1", &seq, &status, &how));
  ASSERT_EQ(1, how);
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM qpg_dead.tasks WHERE id = 'd1'"));
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM qpg_dead.workflow_events"));
  ASSERT_OK(ath__qpg_purge(other, "d1", &seq, &status, &how));
  ASSERT_EQ(-1, how);
  ASSERT_OK(ath__qpg_requeue(other, "d1", &seq, &status, &how));
  ASSERT_EQ(-1, how);
  ath_queue_insert_t again[2] = {task_row("d0", "default", 0, "{}"), task_row("d1", "default", 0, "{}")};
  ath_queue_inserted_t got[2];
  ASSERT_OK(ath__qpg_insert(q, again, 2, got));
  ASSERT_EQ(0, got[0].created); /* requeued, still there */
  ASSERT_EQ(1, got[1].created); /* purged: the id is free */
  ath__qpg_inserted_clear(got, 2);
  PQfinish(c);
  ath__qpg_close(l);
  ath__qpg_close(other);
  ath__qpg_close(q);
  return 0;
}

/* The cluster's counts (getMetrics().cluster): per queue, ready entries
 * with the oldest's age, tasks waiting for a time, leased running tasks;
 * the live worker nodes and leader. On 50,000 finished rows the plan reads
 * tasks only through tasks_due and tasks_leased, never a scan of it. */
TEST_IMPL(db_pg_queue_counts) {
  ath_qpg_t* q = fresh("qpg_counts");
  PGconn* c = admin();
  ath_queue_counts_t n;
  ASSERT_OK(ath__qpg_counts(q, &n)); /* empty: no queue, no node */
  ASSERT_EQ(0, n.nqueues);
  ASSERT_EQ(0, n.nodes);
  ASSERT_NULL(n.leader);
  ath__qpg_counts_free(&n);
  sql_ok(c, "INSERT INTO qpg_counts.tasks (id, name, kind, queue, status, max_attempts, strategy,"
            " created_at, scheduled_at, ready_at, completed_at, input)"
            " SELECT 'f' || i, 'noop', 0, 'default', 5, 3, 0, i, i, i, i, '{}'"
            " FROM generate_series(1, 50000) i; ANALYZE qpg_counts.tasks");
  ath_queue_lease_t a = node(q, "a");
  ath_queue_lease_t b = node(q, "b");
  sql_ok(c, "UPDATE qpg_counts.nodes SET expires_at = 0 WHERE node_id = 'b'"); /* b is dead */
  ath_queue_insert_t rows[5] = {task_row("1", "a", 0, "{}"), task_row("2", "a", 0, "{}"),
                              task_row("3", "a", 0, "{}"), task_row("4", "b", 0, "{}"),
                              task_row("5", "b", 0, "{}")};
  rows[4].delay_ms = 600000; /* scheduled */
  ath_queue_inserted_t ins[5];
  ASSERT_OK(ath__qpg_insert(q, rows, 5, ins));
  ath__qpg_inserted_clear(ins, 5);
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "a", 1, &t)); /* one of a running */
  ASSERT_EQ(1, t.n);
  ath__qpg_tasks_free(&t);
  sql_ok(c, "UPDATE qpg_counts.ready SET ready_at = ready_at - 5000 WHERE queue = 'b'");
  ASSERT_OK(ath__qpg_counts(q, &n));
  ASSERT_EQ(2, n.nqueues);
  ASSERT_STR_EQ("a", n.queues[0].queue);
  ASSERT_EQ(2, n.queues[0].depth);
  ASSERT_EQ(1, n.queues[0].running);
  ASSERT_EQ(0, n.queues[0].scheduled);
  ASSERT_STR_EQ("b", n.queues[1].queue);
  ASSERT_EQ(1, n.queues[1].depth);
  ASSERT_EQ(1, n.queues[1].scheduled);
  ASSERT_GE(n.queues[1].oldest_age_ms, 5000);
  ASSERT_EQ(3, n.queued);
  ASSERT_EQ(1, n.scheduled);
  ASSERT_EQ(1, n.running);
  ASSERT_EQ(1, n.nodes); /* b expired */
  ASSERT_NULL(n.leader);
  ath__qpg_counts_free(&n);
  /* a leader's control incarnation names the leader */
  const char* queues[] = {NULL};
  ath_queue_node_t ln = {.node_id = "a", .host = "test", .pid = 1, .queues = queues, .ttl_ms = 600000,
                       .interval_ms = 5000, .leader = 1};
  ath_queue_lease_t ll;
  ASSERT_OK(ath__qpg_node_register(q, &ln, 0, &ll));
  ASSERT_OK(ath__qpg_counts(q, &n));
  ASSERT_STR_EQ("a", n.leader);
  ASSERT_EQ(1, n.nodes);
  ath__qpg_counts_free(&n);
  (void)b;
  /* the plan: no sequential scan of tasks */
  char* plan = explain_sql(c, ath__qpg_counts_sql(q), 0, NULL);
  if (strstr(plan, "tasks_due") == NULL || strstr(plan, "tasks_leased") == NULL)
    fprintf(stderr, "%s\n", plan);
  ASSERT_NOT_NULL(strstr(plan, "tasks_due"));
  ASSERT_NOT_NULL(strstr(plan, "tasks_leased"));
  /* every "Seq Scan" is of ready or nodes, never tasks */
  for (const char* p = strstr(plan, "\"Seq Scan\""); p != NULL; p = strstr(p + 1, "\"Seq Scan\"")) {
    const char* rel = strstr(p, "\"Relation Name\": \"");
    ASSERT_NOT_NULL(rel);
    ASSERT(strncmp(rel + 18, "tasks\"", 6) != 0);
  }
  free(plan);
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ deadlock retry */

typedef struct {
  ath_qpg_t* q;
  int64_t lease;
  ath_queue_outcome_t o[2];
  uint8_t applied[2];
  int rc;
} deadlock_arg_t;

static void* deadlock_finish(void* p) {
  deadlock_arg_t* a = p;
  a->rc = ath__qpg_finish(a->q, a->lease, a->o, 2, a->applied);
  return NULL;
}

/* Two sessions lock two rows in opposite orders: the finish locks row 1
 * (its batch's order) and waits for row 2, which another session holds and
 * which then wants row 1. The finish waited first, so its deadlock check
 * runs first and PostgreSQL rolls it back (40P01); it runs again once the
 * other session committed, and both outcomes apply. */
TEST_IMPL(db_pg_queue_deadlock_retry) {
  ath_queue_lease_t l;
  deadlock_arg_t a = {0};
  ath_qpg_t* q = claimed("qpg_deadlock", "d", 2, &l, a.o);
  a.q = q;
  a.lease = l.incarnation;
  PGconn* other = admin();
  PGconn* watch = admin();
  char sql[256];
  sql_ok(other, "BEGIN");
  snprintf(sql, sizeof(sql), "SELECT 1 FROM qpg_deadlock.tasks WHERE seq = %" PRId64 " FOR UPDATE", a.o[1].seq);
  sql_ok(other, sql);
  pthread_t th;
  ASSERT_OK(pthread_create(&th, NULL, deadlock_finish, &a));
  /* the finish holds row 1 and waits for row 2 */
  uint64_t deadline = ath__mono_ns() + 10000000000ull;
  while (sql_int(watch, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()") != 1)
    ASSERT_LT(ath__mono_ns(), deadline);
  snprintf(sql, sizeof(sql), "UPDATE qpg_deadlock.tasks SET priority = 1 WHERE seq = %" PRId64, a.o[0].seq);
  sql_ok(other, sql); /* granted once the finish is rolled back */
  sql_ok(other, "COMMIT");
  ASSERT_OK(pthread_join(th, NULL));
  if (a.rc != 0)
    fprintf(stderr, "finish: %s (%s)\n", ath__qpg_errmsg(q), ath__qpg_sqlstate(q));
  ASSERT_OK(a.rc);
  ASSERT_EQ(1, a.applied[0]);
  ASSERT_EQ(1, a.applied[1]);
  ASSERT_GE(ath__qpg_retries(q), 1);
  ASSERT_EQ(2, sql_int(watch, "SELECT count(*) FROM qpg_deadlock.tasks WHERE status = 5 AND lease IS NULL"));
  PQfinish(other);
  PQfinish(watch);
  ath__qpg_close(q);
  return 0;
}

/* ------------------------------------------------------------ workflows */

/* Parks claimed workflow `seq` (attempt 1, state `status`) waiting for
 * task `task` (wait_kind 1), or on a timer an hour away (task NULL). */
static void park(ath_qpg_t* q, int64_t lease, int64_t seq, int status, const char* task) {
  ath_queue_park_t p = {.seq = seq, .attempt = 1, .status = status, .wait_kind = task ? 1 : 4,
                      .wait_task = task, .wait_seq = 1, .delay_ms = task ? 0 : 3600000};
  uint8_t parked = 0;
  ath_queue_cycle_t c = {.lease = lease, .parks = &p, .n_parks = 1, .parked = &parked};
  ASSERT_OK(ath__qpg_cycle(q, &c));
  ASSERT_EQ(1, parked);
}

/* Claims one row of queue `queue` under `lease`: its seq. */
static int64_t claim1(ath_qpg_t* q, int64_t lease, const char* queue) {
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, lease, queue, 1, &t));
  ASSERT_EQ(1, t.n);
  int64_t seq = t.rows[0].seq;
  ath__qpg_tasks_free(&t);
  return seq;
}

/* Cascade (SEMANTICS §8) in the rows: a task failing under cascade marks
 * its parent (the first such child stays; a compensating parent is only
 * woken), which is ready at once and claimed with the child's error; the
 * end of a cascaded workflow cancels its children, a parked child
 * workflow through ath__qpg_wf_take (no slot), as a parked workflow's own
 * cancel does. */
TEST_IMPL(db_pg_queue_wf_cascade) {
  ath_qpg_t* q = fresh("qpg_wfc");
  ath_queue_lease_t a = node(q, "a");
  PGconn* c = admin();
  ath_queue_insert_t rows[6];
  ath_queue_inserted_t out[6];
  const char* ids[6] = {"p", "c1", "c2", "s", "p2", "c3"};
  const char* parents[6] = {NULL, "p", "p", "p", NULL, "p2"};
  for (int i = 0; i < 6; i++) {
    rows[i] = task_row(ids[i], i == 0 ? "default" : i == 4 ? "wf2" : "kids", 0, "{}");
    rows[i].parent_id = parents[i];
    rows[i].kind = i == 0 || i == 3 || i == 4;
    rows[i].strategy = i == 1 || i == 2 || i == 5 ? ATH_STRATEGY_CASCADE : ATH_STRATEGY_RETRY;
  }
  ASSERT_OK(ath__qpg_insert(q, rows, 6, out));
  int64_t p = claim1(q, a.incarnation, "default"), p2 = claim1(q, a.incarnation, "wf2");
  park(q, a.incarnation, p, ATH_RUNNING, "c1");
  park(q, a.incarnation, p2, ATH_COMPENSATING, "c3");
  int64_t k[4];
  for (int i = 0; i < 4; i++)
    k[i] = claim1(q, a.incarnation, "kids"); /* c1, c2, s, c3 */
  park(q, a.incarnation, k[2], ATH_RUNNING, NULL); /* s sleeps an hour */
  /* c2 fails under cascade (p waits for c1): p is marked and ready */
  uint8_t ap[2];
  ath_queue_outcome_t f2 = {.seq = k[1], .attempt = 1, .status = ATH_FAILED, .error = "{\"code\":\"E2\"}"};
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, &f2, 1, ap));
  ASSERT_EQ(1, ap[0]);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_wfc.tasks WHERE id = 'p' AND wait_kind = 5"
                          " AND wait_task = 'c2' AND wf_where = 2 AND lease IS NULL"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_wfc.ready r JOIN qpg_wfc.tasks t USING (seq)"
                          " WHERE t.id = 'p'"));
  /* c1 and c3 fail too: p keeps c2; p2 compensates, so it is only woken */
  ath_queue_outcome_t f13[2] = {{.seq = k[0], .attempt = 1, .status = ATH_FAILED, .error = "{\"code\":\"E1\"}"},
                              {.seq = k[3], .attempt = 1, .status = ATH_FAILED, .error = "{\"code\":\"E3\"}"}};
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, f13, 2, ap));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_wfc.tasks WHERE id = 'p' AND wait_task = 'c2'"));
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_wfc.tasks WHERE id = 'p2' AND wait_kind = 1"
                          " AND wf_where = 2"));
  /* the claim of p brings the mark and c2's error */
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 5, &t));
  ASSERT_EQ(1, t.n);
  ASSERT_EQ(1, t.rows[0].resumed);
  ASSERT_EQ(ATH_QUEUE_WAIT_CASCADE, t.rows[0].wait_kind);
  ASSERT_STR_EQ("{\"code\":\"E2\"}", t.rows[0].wait_error);
  ath__qpg_tasks_free(&t);
  /* p fails; its children go in the same cycle: s, parked, gets cancel_at
   * and is ready, then leased to a by ath__qpg_wf_take (by parent) */
  ath_queue_outcome_t fp = {.seq = p, .attempt = 1, .status = ATH_FAILED, .error = "{\"code\":\"E2\"}"};
  ath_queue_cycle_t cy = {.lease = a.incarnation, .outcomes = &fp, .n_outcomes = 1, .applied = ap,
                        .kids = &p, .n_kids = 1};
  ASSERT_OK(ath__qpg_cycle(q, &cy));
  ASSERT_EQ(1, ap[0]);
  ASSERT_EQ(1, sql_int(c, "SELECT count(*) FROM qpg_wfc.tasks WHERE id = 's' AND cancel_at IS NOT NULL"
                          " AND wf_where = 2 AND due_at IS NULL AND lease IS NULL"));
  ASSERT_OK(ath__qpg_wf_take(q, a.incarnation, &p, 1, 1, &t));
  ASSERT_EQ(1, t.n);
  ASSERT_STR_EQ("s", t.rows[0].id);
  ASSERT_EQ(1, t.rows[0].resumed);
  ASSERT_GE(t.rows[0].cancel_at, 0);
  ath__qpg_tasks_free(&t);
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM qpg_wfc.ready r JOIN qpg_wfc.tasks t USING (seq)"
                          " WHERE t.id = 's'"));
  ASSERT_EQ(a.incarnation, sql_int(c, "SELECT lease FROM qpg_wfc.tasks WHERE id = 's'"));
  /* cancel of a parked workflow: answer 3, ready with cancel_at, taken by seq */
  int64_t p2s = p2;
  int how = 0;
  ASSERT_OK(ath__qpg_cancel(q, p2s, &how));
  ASSERT_EQ(0, how); /* p2 compensates: refused */
  ath_queue_tasks_t t2;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "wf2", 5, &t2)); /* p2 resumes (woken by c3) */
  ASSERT_EQ(1, t2.n);
  ath__qpg_tasks_free(&t2);
  park(q, a.incarnation, p2, ATH_RUNNING, "nothing");
  ASSERT_OK(ath__qpg_cancel(q, p2s, &how));
  ASSERT_EQ(3, how);
  ASSERT_OK(ath__qpg_wf_take(q, a.incarnation, &p2s, 1, 0, &t2));
  ASSERT_EQ(1, t2.n);
  ASSERT_STR_EQ("p2", t2.rows[0].id);
  ath__qpg_tasks_free(&t2);
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}

/* scheduleToClose of waiting tasks (the leader's expire): a ready, a
 * delayed and a retrying task past close_by are leased to the leader and
 * leave ready; a claimed one, a finished one and one not yet due stay;
 * the leader's finish (ETIMEDOUT) applies. Retention (prune): finished
 * tasks older than the window go with their history, dead letters and
 * recent or unfinished ones stay, at most `limit` a statement. */
TEST_IMPL(db_pg_queue_expire_prune) {
  ath_qpg_t* q = fresh("qpg_expire");
  ath_queue_lease_t a = node(q, "a");
  ath_queue_lease_t leader = node(q, "leader");
  insert_many(q, "e", 6); /* e0..e5, seqs 1..6 */
  /* a row carries its per-call limits to whoever claims it */
  ath_queue_insert_t lim = task_row("limited", "limits", 0, "{}");
  lim.call = "{\"timeout\":100}";
  ath_queue_inserted_t lim_out;
  ASSERT_OK(ath__qpg_insert(q, &lim, 1, &lim_out));
  ath_queue_tasks_t lt;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "limits", 5, &lt));
  ASSERT_EQ(1, lt.n);
  ASSERT_STR_EQ("{\"timeout\":100}", lt.rows[0].call);
  ath__qpg_tasks_free(&lt);
  PGconn* c = admin();
  ath_queue_tasks_t t;
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 2, &t)); /* e0, e1: a runs them */
  ASSERT_EQ(2, t.n);
  ath_queue_outcome_t done = {.seq = t.rows[1].seq, .attempt = 1, .status = ATH_COMPLETED, .result = "1"};
  ath_queue_outcome_t retry = {.seq = t.rows[0].seq, .attempt = 1, .status = ATH_RETRYING, .delay_ms = 3600000,
                               .error = "{\"code\":\"EHANDLER\"}"};
  uint8_t ap[2];
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, &done, 1, ap));
  ASSERT_OK(ath__qpg_finish(q, a.incarnation, &retry, 1, ap));
  ath__qpg_tasks_free(&t);
  ASSERT_OK(ath__qpg_claim(q, a.incarnation, "default", 1, &t)); /* e2: running on a */
  ASSERT_EQ(1, t.n);
  int64_t running = t.rows[0].seq;
  ath__qpg_tasks_free(&t);
  /* past close_by: e0 (retrying), e1 (completed), e2 (running), e3 (ready),
   * e4 (delayed); e5 has no deadline */
  sql_ok(c, "UPDATE qpg_expire.tasks SET close_by = qpg_expire.now_ms() - 1 WHERE id IN ('e0','e1','e2','e3','e4')");
  sql_ok(c, "UPDATE qpg_expire.tasks SET status = 1, due_at = qpg_expire.now_ms() + 3600000 WHERE id = 'e4'");
  sql_ok(c, "DELETE FROM qpg_expire.ready WHERE seq = (SELECT seq FROM qpg_expire.tasks WHERE id = 'e4')");
  ath_queue_tasks_t x;
  ASSERT_OK(ath__qpg_expire(q, leader.incarnation, 100, &x));
  ASSERT_EQ(3, x.n); /* e0, e3, e4 */
  ath_queue_outcome_t o[3];
  for (size_t i = 0; i < x.n; i++) {
    ASSERT(x.rows[i].seq != running);
    ASSERT(strcmp(x.rows[i].id, "e0") == 0 || strcmp(x.rows[i].id, "e3") == 0 || strcmp(x.rows[i].id, "e4") == 0);
    o[i] = (ath_queue_outcome_t){.seq = x.rows[i].seq, .attempt = x.rows[i].attempt, .status = ATH_FAILED,
                                 .error = "{\"code\":\"ETIMEDOUT\"}"};
  }
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM qpg_expire.ready r JOIN qpg_expire.tasks t USING (seq)"
                          " WHERE t.id IN ('e0','e3','e4')"));
  ASSERT_OK(ath__qpg_expire(q, leader.incarnation, 100, &t)); /* leased now: not again */
  ASSERT_EQ(0, t.n);
  ath__qpg_tasks_free(&t);
  uint8_t ok3[3];
  ASSERT_OK(ath__qpg_finish(q, leader.incarnation, o, 3, ok3));
  ASSERT(ok3[0] && ok3[1] && ok3[2]);
  ath__qpg_tasks_free(&x);
  ASSERT_EQ(3, sql_int(c, "SELECT count(*) FROM qpg_expire.tasks WHERE status = 6 AND error LIKE '%ETIMEDOUT%'"
                          " AND completed_at IS NOT NULL AND close_by IS NULL"));
  ASSERT_EQ(2, sql_int(c, "SELECT status FROM qpg_expire.tasks WHERE id = 'e2'")); /* a still runs it */
  /* retention: e1 and the three failed ones finished "2 days ago"; e0 has
   * history; a dead letter that old stays; e5 (ready) stays */
  sql_ok(c, "UPDATE qpg_expire.tasks SET completed_at = completed_at - 172800000 WHERE completed_at IS NOT NULL");
  sql_ok(c, "INSERT INTO qpg_expire.workflow_events (workflow_id, seq, event) VALUES ('e0', 0, '{}')");
  sql_ok(c, "UPDATE qpg_expire.tasks SET status = 8 WHERE id = 'e4'");
  int deleted = -1;
  ASSERT_OK(ath__qpg_prune(q, 259200000, 100, &deleted)); /* 3 days: none that old */
  ASSERT_EQ(0, deleted);
  ASSERT_OK(ath__qpg_prune(q, 86400000, 2, &deleted)); /* 1 day, 2 a statement */
  ASSERT_EQ(2, deleted);
  ASSERT_OK(ath__qpg_prune(q, 86400000, 2, &deleted));
  ASSERT_EQ(1, deleted);
  ASSERT_EQ(4, sql_int(c, "SELECT count(*) FROM qpg_expire.tasks")); /* e2, e4 (dead letter), e5, limited */
  ASSERT_EQ(3, sql_int(c, "SELECT count(*) FROM qpg_expire.tasks WHERE id IN ('e2','e4','e5')"));
  ASSERT_EQ(0, sql_int(c, "SELECT count(*) FROM qpg_expire.workflow_events"));
  PQfinish(c);
  ath__qpg_close(q);
  return 0;
}
