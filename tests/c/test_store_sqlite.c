/* The SQLite store provider's writes (engine/storage/store_sqlite.c), through
 * its vtable: rows a commit wrote before are written again in runs of a
 * statement's worth (a multi-row REPLACE), the rest one by one; whichever
 * way a row went, it reads back as the last commit left it, with its
 * workflow events, after the store is closed and opened again. A multi-row
 * statement binds only what changed since it last ran: a text at the same
 * address is read when the statement runs, so a buffer reused with new
 * content (a freed and reallocated error, say) is written as it is now. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sqlite3.h>
#include "athena.h"
#include "task.h"

/* More than two statements' worth of rows (32 each), cut into runs of
 * every length by the rows that go one by one (KEEP and GONE). */
#define NROWS 80
#define LATE 32 /* new rows of a third commit, their inputs in reused buffers */
#define KEEP 3  /* running when written again: the stored error stays */
#define GONE 40 /* deleted by the second commit */
#define WF 5    /* a workflow's row, with events in both commits */

typedef struct {
  int seen[NROWS + LATE];
  int bad;
} check_t;

static char ids[NROWS + LATE][32], results[NROWS][32], inputs[NROWS][16];

static void input_of(char* buf, int i) {
  snprintf(buf, 16, "{\"i\":%03d}", i % 1000); /* 9 bytes */
}

static void row_at(ath_store_task_t* r, int i) {
  memset(r, 0, sizeof(*r));
  snprintf(ids[i], sizeof(ids[i]), "echo-%03d", i);
  r->id = ids[i];
  r->name = "echo";
  r->queue = "default";
  r->status = ATH_PENDING;
  r->max_attempts = 1;
  r->seq = (uint64_t)i + 1;
  r->created_at = r->scheduled_at = r->ready_at = 1000 + i;
  r->input = inputs[i % NROWS];
  r->input_len = 9;
}

static const char* const events1[] = {"{\"type\":\"workflow.started\"}", "{\"type\":\"activity.scheduled\"}"};
static const size_t lens1[] = {27, 29};
static const char* const events2[] = {"{\"type\":\"workflow.completed\"}"};
static const size_t lens2[] = {29};

/* load's callback: every row as the second commit left it. */
static int check_row(void* ud, const ath_store_task_t* r) {
  check_t* c = ud;
  int i = (int)r->seq - 1;
  char input[16];
  input_of(input, i);
  if (i < 0 || i >= NROWS + LATE || i == GONE || c->seen[i]++ || strcmp(r->id, ids[i]) != 0 ||
      strcmp(r->name, "echo") != 0 || r->input_len != 9 || memcmp(r->input, input, 9) != 0 ||
      r->created_at != 1000 + i) {
    fprintf(stderr, "row seq %llu is not the one written\n", (unsigned long long)r->seq);
    c->bad++;
    return 0;
  }
  if (i >= NROWS) {
    if (r->status != ATH_PENDING || r->result != NULL) {
      fprintf(stderr, "new row %d is not pending\n", i);
      c->bad++;
    }
    return 0;
  }
  if (i == KEEP) {
    if (r->status != ATH_RUNNING || r->error == NULL || r->error_len != 4 || memcmp(r->error, "\"e3\"", 4) != 0) {
      fprintf(stderr, "the running row lost its stored error or status\n");
      c->bad++;
    }
    return 0;
  }
  size_t rl = strlen(results[i]);
  if (r->status != ATH_COMPLETED || r->attempt != 1 || r->completed_at != 5000 + i || r->worker_id != 2 ||
      r->result == NULL || r->result_len != rl || memcmp(r->result, results[i], rl) != 0 || r->error != NULL) {
    fprintf(stderr, "row %d does not read back as completed with its result\n", i);
    c->bad++;
  }
  const char* want = "{\"type\":\"workflow.started\"}\x1e{\"type\":\"activity.scheduled\"}\x1e"
                     "{\"type\":\"workflow.completed\"}";
  if (i == WF && (r->history == NULL || r->history_len != strlen(want) ||
                  memcmp(r->history, want, r->history_len) != 0)) {
    fprintf(stderr, "the workflow's events are not all there: %.*s\n", (int)r->history_len,
            r->history ? r->history : "");
    c->bad++;
  }
  if (i != WF && r->history != NULL) {
    fprintf(stderr, "row %d has events it never had\n", i);
    c->bad++;
  }
  return 0;
}

static int no_sched(void* ud, const ath_store_schedule_t* r) {
  (void)ud;
  (void)r;
  return 0;
}

static int found(void* ud, const ath_store_task_t* r) {
  *(uint64_t*)ud = r->seq;
  return 0;
}

/* The provider, open in *st on a new directory made from template dir;
 * NULL when either fails. */
static const ath_store_provider_t* fresh_store(char* dir, void** st) {
  const ath_store_provider_t* p = ath_sqlite_store();
  char err[256];
  if (mkdtemp(dir) == NULL || p->open(p->ud, dir, st, err, sizeof(err)) != 0)
    return NULL;
  return p;
}

static int remove_dir(const char* dir) {
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  return system(cmd);
}

TEST_IMPL(store_sqlite_rewrites_whole_rows) {
  char dir[] = "/tmp/athena-sqlite-XXXXXX";
  void* st = NULL;
  char err[256];
  const ath_store_provider_t* p = fresh_store(dir, &st);
  ASSERT_NOT_NULL(p);
  static ath_store_task_t rows[NROWS];
  for (int i = 0; i < NROWS; i++) { /* the enqueues */
    input_of(inputs[i], i);
    row_at(&rows[i], i);
  }
  rows[KEEP].error = "\"e3\""; /* a retry's error, kept while it runs again */
  rows[KEEP].error_len = 4;
  rows[WF].events = events1;
  rows[WF].event_lens = lens1;
  rows[WF].nevents = 2;
  ASSERT_OK(p->persist(st, rows, NROWS, NULL, 0, err, sizeof(err)));
  for (int i = 0; i < NROWS; i++) { /* the outcomes, in one commit */
    row_at(&rows[i], i);
    rows[i].stored = 1;
    rows[i].status = ATH_COMPLETED;
    rows[i].attempt = 1;
    rows[i].started_at = 4000 + i;
    rows[i].completed_at = 5000 + i;
    rows[i].worker_id = 2;
    snprintf(results[i], sizeof(results[i]), "{\"r\":%d}", i * 7);
    rows[i].result = results[i];
    rows[i].result_len = strlen(results[i]);
  }
  rows[KEEP].status = ATH_RUNNING;
  rows[KEEP].result = NULL;
  rows[KEEP].result_len = 0;
  rows[KEEP].keep_error = 1;
  rows[GONE].deleted = 1;
  rows[WF].events = events2;
  rows[WF].event_lens = lens2;
  rows[WF].nevents = 1;
  rows[WF].ev_from = 2;
  ASSERT_OK(p->persist(st, rows, NROWS, NULL, 0, err, sizeof(err)));
  /* New rows whose inputs are at the addresses the last insert of many
   * rows had (rows 32..63), with other content. */
  for (int i = NROWS; i < NROWS + LATE; i++) {
    row_at(&rows[i - NROWS], i);
    rows[i - NROWS].input = inputs[32 + i - NROWS];
    input_of(inputs[32 + i - NROWS], i);
  }
  ASSERT_OK(p->persist(st, rows, LATE, NULL, 0, err, sizeof(err)));
  p->close(st);

  ASSERT_OK(p->open(p->ud, dir, &st, err, sizeof(err))); /* a restart */
  check_t c;
  memset(&c, 0, sizeof(c));
  ASSERT_OK(p->load(st, check_row, no_sched, &c, err, sizeof(err)));
  ASSERT_EQ(0, c.bad);
  for (int i = 0; i < NROWS + LATE; i++)
    ASSERT_EQ(i == GONE ? 0 : 1, c.seen[i]);
  uint64_t seq = 0; /* the id index holds the rows written again */
  ASSERT_OK(p->get(st, "echo-050", found, &seq, err, sizeof(err)));
  ASSERT_EQ(51, seq);
  ASSERT_EQ(ATH_ENOTFOUND, p->get(st, "echo-040", found, &seq, err, sizeof(err)));
  p->close(st);
  ASSERT_OK(remove_dir(dir));
  return 0;
}

static int count_row(void* ud, const ath_store_task_t* r) {
  (void)r;
  ++*(int*)ud;
  return 0;
}

/* The table has no NOT NULL (schema 8): a row without what a read needs
 * (here its input) fails the whole commit, as the constraint did, instead
 * of being stored and refused by every later read. */
TEST_IMPL(store_sqlite_refuses_incomplete_rows) {
  char dir[] = "/tmp/athena-sqlite-XXXXXX";
  void* st = NULL;
  char err[256];
  const ath_store_provider_t* p = fresh_store(dir, &st);
  ASSERT_NOT_NULL(p);
  static ath_store_task_t rows[2];
  input_of(inputs[0], 0);
  input_of(inputs[1], 1);
  row_at(&rows[0], 0);
  row_at(&rows[1], 1);
  rows[1].input = NULL;
  rows[1].input_len = 0;
  ASSERT_EQ(ATH_ESTORE, p->persist(st, rows, 2, NULL, 0, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "seq 2"));
  p->close(st);
  ASSERT_OK(p->open(p->ud, dir, &st, err, sizeof(err)));
  int n = 0;
  ASSERT_OK(p->load(st, count_row, no_sched, &n, err, sizeof(err)));
  ASSERT_EQ(0, n); /* nothing of the group */
  p->close(st);
  ASSERT_OK(remove_dir(dir));
  return 0;
}

/* The page size of the database file in dir, or -1. */
static int64_t page_size_of(const char* dir) {
  char path[256];
  snprintf(path, sizeof(path), "%s/athena.db", dir);
  sqlite3* db;
  sqlite3_stmt* st = NULL;
  int64_t size = -1;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
      sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    size = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return size;
}

/* A new store's file has 16 KiB pages (fewer page splits where a
 * workflow's steps enter its indexes); a file made with SQLite's default
 * 4 KiB pages keeps them, and the store opens and writes it. */
TEST_IMPL(store_sqlite_page_size) {
  char dir[] = "/tmp/athena-sqlite-XXXXXX";
  void* st;
  const ath_store_provider_t* p = fresh_store(dir, &st);
  ASSERT_NOT_NULL(p);
  p->close(st);
  ASSERT_EQ(16384, page_size_of(dir));
  ASSERT_EQ(0, remove_dir(dir));

  char old[] = "/tmp/athena-sqlite-XXXXXX";
  ASSERT_NOT_NULL(mkdtemp(old));
  char path[256];
  snprintf(path, sizeof(path), "%s/athena.db", old);
  sqlite3* db;
  ASSERT_EQ(SQLITE_OK, sqlite3_open(path, &db));
  ASSERT_EQ(SQLITE_OK, sqlite3_exec(db, "PRAGMA page_size=4096; VACUUM", NULL, NULL, NULL));
  sqlite3_close(db);
  char err[256];
  ASSERT_OK(p->open(p->ud, old, &st, err, sizeof(err)));
  ath_store_task_t r;
  input_of(inputs[0], 0);
  row_at(&r, 0);
  ASSERT_OK(p->persist(st, &r, 1, NULL, 0, err, sizeof(err)));
  int n = 0;
  ASSERT_OK(p->load(st, count_row, no_sched, &n, err, sizeof(err)));
  ASSERT_EQ(1, n);
  p->close(st);
  ASSERT_EQ(4096, page_size_of(old));
  ASSERT_EQ(0, remove_dir(old));
  return 0;
}
