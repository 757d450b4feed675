/* The store's VFS (ath__sqlite_store_vfs, engine/db/db_sqlite_map.c):
 * writes to the database and its WAL that continue one another are
 * gathered and written out in one call before anything else touches the
 * file. Over the test VFS (faultvfs.h, which counts the writes and syncs
 * of files named athena.db and athena.db-wal, and fails them on demand):
 * a commit of ~100 pages takes a few writes, not two per page; a
 * transaction reads back the pages it spilled while they sat in a buffer;
 * another connection sees every commit, even one that no sync wrote out;
 * and a write that fails while SQLite is not listening (a checkpoint's,
 * flushed by a file control) still fails the checkpoint, so nothing is
 * lost. Power cuts over the same VFS: test_power_loss.c. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "db.h"
#include "faultvfs.h"
#include "task.h"

#define ROWS 2000
#define VALUE 200 /* bytes: ~100 pages of 4 KiB in all */
#define SMALL 40  /* rows: a few pages */

static char dir[64], path[128];

static void setup(void) {
  faultvfs_install(); /* before the store's VFS is first asked for: it goes on top */
  snprintf(dir, sizeof(dir), "/tmp/athena-svfs-%d", (int)getpid());
  snprintf(path, sizeof(path), "%s/athena.db", dir);
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
  if (system(cmd) != 0)
    abort();
}

static void teardown(void) {
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0)
    abort();
}

/* A connection to path: the store's VFS (store = 1) or SQLite's default. */
static sqlite3* open_db(int store) {
  const char* vfs = store ? ath__sqlite_store_vfs() : NULL;
  if (store && vfs == NULL)
    abort(); /* no store VFS: nothing here would test it */
  sqlite3* db = NULL;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs) != SQLITE_OK)
    abort();
  sqlite3_extended_result_codes(db, 1);
  return db;
}

static void exec_ok(sqlite3* db, const char* sql) {
  char* msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    fprintf(stderr, "%s: %s\n", sql, msg ? msg : "?");
    abort();
  }
}

/* A new database through the store's VFS: WAL mode, synchronous `sync`,
 * no automatic checkpoint, the table t. */
static sqlite3* new_store_db(const char* sync) {
  sqlite3* db = open_db(1);
  char sql[256];
  snprintf(sql, sizeof(sql), "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA wal_autocheckpoint=0;"
           " CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", sync);
  exec_ok(db, sql);
  return db;
}

static sqlite3_stmt* prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = NULL;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
    fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
    abort();
  }
  return st;
}

static int64_t query_int(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = prepare(db, sql);
  int rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    fprintf(stderr, "%s: %s\n", sql, sqlite3_errmsg(db));
    abort();
  }
  int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* Row k's value: VALUE bytes that say k. */
static void value_of(char* buf, int k) {
  memset(buf, 'a' + k % 26, VALUE);
  snprintf(buf, 16, "%d|", k);
  buf[strlen(buf)] = '.';
  buf[VALUE] = '\0';
}

/* Inserts rows [from, to) (no transaction of its own). */
static void insert_rows(sqlite3* db, int from, int to) {
  sqlite3_stmt* st = prepare(db, "INSERT INTO t (k, v) VALUES (?1, ?2)");
  char v[VALUE + 1];
  for (int k = from; k < to; k++) {
    value_of(v, k);
    sqlite3_bind_int(st, 1, k);
    sqlite3_bind_text(st, 2, v, VALUE, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE) {
      fprintf(stderr, "insert: %s\n", sqlite3_errmsg(db));
      abort();
    }
    sqlite3_reset(st);
  }
  sqlite3_finalize(st);
}

/* Every row of [0, n) is there with its value, and no other. */
static void assert_rows(sqlite3* db, int n) {
  ASSERT_EQ(n, query_int(db, "SELECT count(*) FROM t"));
  sqlite3_stmt* st = prepare(db, "SELECT k, v FROM t ORDER BY k");
  char want[VALUE + 1];
  for (int k = 0; k < n; k++) {
    ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
    ASSERT_EQ(k, sqlite3_column_int(st, 0));
    value_of(want, k);
    ASSERT_STR_EQ(want, (const char*)sqlite3_column_text(st, 1));
  }
  sqlite3_finalize(st);
}

TEST_IMPL(store_vfs_gathers_writes) {
  setup();
  sqlite3* db = new_store_db("FULL");
  /* a page cache of 8 pages: the transaction spills pages to the WAL and
   * reads them back while they may still be in the buffer */
  exec_ok(db, "PRAGMA cache_size=8");
  int64_t ops = faultvfs_ops();
  exec_ok(db, "BEGIN");
  insert_rows(db, 0, ROWS);
  assert_rows(db, ROWS); /* inside the transaction */
  exec_ok(db, "COMMIT");
  ops = faultvfs_ops() - ops;
  int64_t pages = query_int(db, "PRAGMA page_count");
  ASSERT_GT(pages, 80);
  /* unix: a frame is two writes (header, page), so >= 2 per page, and
   * spilled pages are written more than once; gathered, <= 16 frames a
   * write, and the commit's sync */
  ASSERT_LT(ops, pages / 4);
  sqlite3_close(db);
  db = open_db(0); /* the files as the disk has them */
  assert_rows(db, ROWS);
  sqlite3_close(db);
  teardown();
  return 0;
}

TEST_IMPL(store_vfs_readers_see_commits) {
  setup();
  /* no sync at all: only the index's barrier writes a commit's frames out
   * before other connections learn of them */
  sqlite3* db = new_store_db("OFF");
  sqlite3* reader = open_db(0);
  int64_t ops = faultvfs_ops();
  int commits = 0;
  for (int n = 10; n <= 400; n += 10, commits++) {
    exec_ok(db, "BEGIN");
    insert_rows(db, n - 10, n);
    exec_ok(db, "COMMIT");
    assert_rows(reader, n);
  }
  ops = faultvfs_ops() - ops;
  /* each commit is ~1 page of rows and the pages above it: >= 2 frames,
   * 4 writes unless gathered */
  ASSERT_LE(ops, commits + 2);
  sqlite3_close(reader);
  sqlite3_close(db);
  teardown();
  return 0;
}

TEST_IMPL(store_vfs_failed_flush_reported) {
  setup();
  sqlite3* db = new_store_db("FULL");
  /* a few pages: the checkpoint's writes to the database all fit in the
   * buffer, so it is a file control SQLite does not check
   * (SQLITE_FCNTL_CKPT_DONE) that writes them out, and fails: the
   * checkpoint must fail still, not truncate the WAL whose pages the
   * database never got */
  exec_ok(db, "BEGIN");
  insert_rows(db, 0, SMALL);
  exec_ok(db, "COMMIT");
  ASSERT_LT(query_int(db, "PRAGMA page_count") * 4096, 64 * 1024);
  faultvfs_fail_writes(SQLITE_IOERR_WRITE);
  int log = -1, done = -1;
  int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done);
  ASSERT_EQ(SQLITE_IOERR_WRITE, rc);
  ASSERT_GT(faultvfs_refused(), 0);
  faultvfs_fail_writes(0);
  /* the same file goes on: another commit, a checkpoint that succeeds */
  exec_ok(db, "BEGIN");
  insert_rows(db, SMALL, ROWS);
  exec_ok(db, "COMMIT");
  ASSERT_EQ(SQLITE_OK, sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done));
  sqlite3_close(db);
  db = open_db(0);
  ASSERT_EQ(1, query_int(db, "SELECT count(*) = 1 FROM pragma_integrity_check WHERE integrity_check = 'ok'"));
  assert_rows(db, ROWS);
  sqlite3_close(db);
  teardown();
  return 0;
}
