/* The database layer's C API without Lua (engine/db/db.h): the placeholder
 * rewrite, error mapping and redaction, and SQLite through typed
 * parameters and cells. (PostgreSQL runs in tests/lua/db_pg_spec.lua,
 * which has the server fixture.) */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>
#include "athena.h"
#include "db.h"
#include "util.h"
#include "task.h"

static void rewrites(const char* in, const char* want, int want_n) {
  int n = -1;
  char* out = ath__db_rewrite_placeholders(in, &n);
  ASSERT_NOT_NULL(out);
  ASSERT_STR_EQ(want, out);
  ASSERT_EQ(want_n, n);
  free(out);
}

TEST_IMPL(db_placeholders) {
  rewrites("select ?", "select $1", 1);
  rewrites("select ?, ?,?", "select $1, $2,$3", 3);
  rewrites("select '?', ?", "select '?', $1", 1);
  rewrites("select 'it''s ?', ?", "select 'it''s ?', $1", 1);
  rewrites("select E'\\'?', ?", "select E'\\'?', $1", 1);
  rewrites("select \"a?\" from t where x = ?", "select \"a?\" from t where x = $1", 1);
  rewrites("select ? -- ?\n, ?", "select $1 -- ?\n, $2", 2);
  rewrites("select /* ? /* ? */ ? */ ?", "select /* ? /* ? */ ? */ $1", 1);
  rewrites("select $$?$$, $tag$ ? $x$ ?$tag$, ?", "select $$?$$, $tag$ ? $x$ ?$tag$, $1", 1);
  /* written-out $n: left alone, and ? stays an operator */
  rewrites("select j ? 'a', $2, $1", "select j ? 'a', $2, $1", 2);
  /* a$1 is a name, not a parameter */
  rewrites("select a$1, ?", "select a$1, $1", 1);
  /* unterminated runs end at the end */
  rewrites("select ?, 'abc ?", "select $1, 'abc ?", 1);
  rewrites("select ?, /* ?", "select $1, /* ?", 1);
  return 0;
}

TEST_IMPL(db_error_map) {
  ASSERT_EQ(ATH_DB_EUNIQUE, ath__db_map_sqlstate("23505"));
  ASSERT_EQ(ATH_DB_EFOREIGNKEY, ath__db_map_sqlstate("23503"));
  ASSERT_EQ(ATH_DB_ENOTNULL, ath__db_map_sqlstate("23502"));
  ASSERT_EQ(ATH_DB_ECHECK, ath__db_map_sqlstate("23514"));
  ASSERT_EQ(ATH_DB_ESYNTAX, ath__db_map_sqlstate("42601"));
  ASSERT_EQ(ATH_DB_ESYNTAX, ath__db_map_sqlstate("42P01"));
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_map_sqlstate("42804"));
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_map_sqlstate("42883"));
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_map_sqlstate("22P02"));
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_map_sqlstate("22008"));
  ASSERT_EQ(ATH_DB_ETIMEDOUT, ath__db_map_sqlstate("57014"));
  ASSERT_EQ(ATH_DB_ECONNLOST, ath__db_map_sqlstate("08006"));
  ASSERT_EQ(ATH_DB_ECONNLOST, ath__db_map_sqlstate("57P01"));
  ASSERT_EQ(ATH_DB_EDB, ath__db_map_sqlstate("XX000"));
  ASSERT_EQ(ATH_DB_EDB, ath__db_map_sqlstate(NULL));
  ASSERT_EQ(ATH_DB_EUNIQUE, ath__db_map_sqlite(2067, 0));
  ASSERT_EQ(ATH_DB_EUNIQUE, ath__db_map_sqlite(1555, 0));
  ASSERT_EQ(ATH_DB_EFOREIGNKEY, ath__db_map_sqlite(787, 0));
  ASSERT_EQ(ATH_DB_ENOTNULL, ath__db_map_sqlite(1299, 0));
  ASSERT_EQ(ATH_DB_ECHECK, ath__db_map_sqlite(275, 0));
  ASSERT_EQ(ATH_DB_ESYNTAX, ath__db_map_sqlite(1, 1));
  ASSERT_EQ(ATH_DB_EDB, ath__db_map_sqlite(1, 0));
  ASSERT_EQ(ATH_DB_EBUSY, ath__db_map_sqlite(5, 0));
  ASSERT_EQ(ATH_DB_ETIMEDOUT, ath__db_map_sqlite(9, 0));
  ASSERT_STR_EQ("EUNIQUE", ath__db_err_name(ATH_DB_EUNIQUE));
  ASSERT_STR_EQ("ECONNLOST", ath__db_err_name(ATH_DB_ECONNLOST));
  ASSERT_STR_EQ("EINVAL", ath__db_err_name(ATH_EINVAL)); /* shares the engine's value */
  ASSERT_STR_EQ("unique_violation", ath__db_err_gateway(ATH_DB_EUNIQUE));
  ASSERT_STR_EQ("invalid_value", ath__db_err_gateway(ATH_DB_EINVAL));
  ASSERT_STR_EQ("statement_timeout", ath__db_err_gateway(ATH_DB_ETIMEDOUT));
  ASSERT_STR_EQ("database_unavailable", ath__db_err_gateway(ATH_DB_ECONNLOST));
  ASSERT_STR_EQ("database_unavailable", ath__db_err_gateway(ATH_DB_EBUSY));
  ASSERT(ath__db_err_retryable(ATH_DB_ECONNLOST));
  ASSERT(!ath__db_err_retryable(ATH_DB_EUNIQUE));
  return 0;
}

TEST_IMPL(db_redaction) {
  ath_db_error_t e;
  const char* url = "postgres://bob:pw123@db.example/x";
  ath__db_seterr(&e, ATH_DB_ECONNLOST, NULL,
                 "cannot connect to postgres://bob:pw123@db.example/x: password pw123 wrong\n",
                 url, "pw123");
  ASSERT_STR_EQ("cannot connect to ***: password *** wrong", e.message);
  ASSERT_NULL(strstr(e.message, "pw123"));
  ath_db_t* db = NULL;
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_new("mysql://x", &db, &e));
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_new("postgres://u:secret@h/db?bogus=1", &db, &e));
  ASSERT_NULL(strstr(e.message, "secret"));
  ASSERT_NULL(db);
  return 0;
}

/* The process's SQLite counts no allocations (ath__sqlite_setup, done
 * by the first connect): its statistics mutex was the gateway threads'
 * most contended lock. */
TEST_IMPL(db_sqlite_no_memstatus) {
  ath_db_t* db = NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  ASSERT_OK(ath__db_new("sqlite::memory:", &db, &e));
  ASSERT_OK(ath__db_exec(db, "create table t(x); insert into t values (randomblob(100000)); select * from t",
                         NULL, 0, &r, &e));
  ASSERT_EQ(1, ath__db_res_nrows(r));
  ath__db_res_free(r);
  ASSERT_EQ(0, sqlite3_memory_used());
  ath__db_free(db);
  return 0;
}

TEST_IMPL(db_sqlite) {
  ath_db_t* db = NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  ASSERT_OK(ath__db_new("sqlite::memory:", &db, &e));
  ASSERT_EQ(ATH_DB_SQLITE, ath__db_kind(db));
  ASSERT(ath__db_can_async(db)); /* on the thread pool: db_sqlite_async */
  ASSERT_OK(ath__db_exec(db, "create table t (id integer primary key, ok bool, j json, b blob, s text)",
                         NULL, 0, &r, &e));
  ath__db_res_free(r);
  ath_db_value_t p[4] = {
    {.type = ATH_DB_BOOL, .i = 1},
    {.type = ATH_DB_JSON, .s = "{\"a\":1}", .len = 7},
    {.type = ATH_DB_BLOB, .s = "\0\1", .len = 2},
    {.type = ATH_DB_TEXT, .s = "x\0y", .len = 3},
  };
  ASSERT_OK(ath__db_exec(db, "insert into t (ok, j, b, s) values (?, ?, ?, ?)", p, 4, &r, &e));
  ASSERT_EQ(1, ath__db_res_changes(r));
  int64_t id = 0;
  ASSERT(ath__db_res_last_id(r, &id));
  ASSERT_EQ(1, id);
  ath__db_res_free(r);
  ASSERT_OK(ath__db_exec(db, "select ok, j, b, s, null as z from t", NULL, 0, &r, &e));
  ASSERT_EQ(1, ath__db_res_nrows(r));
  ASSERT_EQ(5, ath__db_res_ncols(r));
  ASSERT_STR_EQ("j", ath__db_res_colname(r, 1));
  ath_db_value_t v;
  ASSERT_OK(ath__db_res_value(r, 0, 0, &v));
  ASSERT_EQ(ATH_DB_BOOL, v.type);
  ASSERT_EQ(1, v.i);
  ASSERT_OK(ath__db_res_value(r, 0, 1, &v));
  ASSERT_EQ(ATH_DB_JSON, v.type);
  ASSERT_OK(ath__db_res_value(r, 0, 2, &v));
  ASSERT_EQ(ATH_DB_BLOB, v.type);
  ASSERT_EQ(2, v.len);
  ASSERT_OK(memcmp(v.s, "\0\1", 2));
  ASSERT_OK(ath__db_res_value(r, 0, 3, &v));
  ASSERT_EQ(ATH_DB_TEXT, v.type);
  ASSERT_EQ(3, v.len);
  ASSERT_OK(ath__db_res_value(r, 0, 4, &v));
  ASSERT_EQ(ATH_DB_NULL, v.type);
  ath__db_res_free(r);
  ASSERT_EQ(ATH_DB_ESYNTAX, ath__db_exec(db, "selec 1", NULL, 0, &r, &e));
  ASSERT_NULL(r);
  ASSERT_STR_EQ("SQLITE_ERROR", e.sqlstate);
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_exec(db, "select ?", NULL, 0, &r, &e));
  ath__db_free(db);
  return 0;
}

/* Runs sql on db; fails the test on an error. */
static void exec_ok(ath_db_t* db, const char* sql) {
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  int rc = ath__db_exec(db, sql, NULL, 0, &r, &e);
  if (rc != 0)
    fprintf(stderr, "%s: %s\n", sql, e.message);
  ASSERT_OK(rc);
  ath__db_res_free(r);
}

/* The one integer sql selects, on db. */
static int64_t one_int(ath_db_t* db, const char* sql) {
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  ath_db_value_t v;
  ASSERT_OK(ath__db_exec(db, sql, NULL, 0, &r, &e));
  ASSERT_OK(ath__db_res_value(r, 0, 0, &v));
  ath__db_res_free(r);
  return v.i;
}

/* Whether the process maps the file at path (/proc/self/maps). */
static int mapped(const char* path) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[4096];
  int found = 0;
  ASSERT_NOT_NULL(f);
  while (!found && fgets(line, sizeof(line), f) != NULL) {
    line[strcspn(line, "\n")] = '\0';
    size_t n = strlen(line), k = strlen(path);
    found = n >= k && strcmp(line + n - k, path) == 0;
  }
  fclose(f);
  return found;
}

/* Removes the database at path, its WAL and index, and then dir. */
static void remove_db(const char* dir, const char* path) {
  char side[160];
  const char* ends[] = {"", "-wal", "-shm"};
  for (int i = 0; i < 3; i++) {
    snprintf(side, sizeof(side), "%s%s", path, ends[i]);
    unlink(side);
  }
  ASSERT_OK(rmdir(dir));
}

/* Reads of a database file come from the process's map of it (db_sqlite_map.c):
 * a connection sees what another one wrote and checkpointed into the file,
 * and a file cut short behind SQLite's back is an error on the read that
 * needs the missing pages, not a crash (SIGBUS on the map). */
TEST_IMPL(db_sqlite_mapped_reads) {
  char dir[] = "/tmp/athena-dbmap-XXXXXX", path[128], url[160];
  ASSERT_NOT_NULL(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/m.db", dir);
  snprintf(url, sizeof(url), "sqlite:%s", path);
  ath_db_t *w = NULL, *rd = NULL;
  ath_db_error_t e;
  ASSERT_OK(ath__db_new(url, &w, &e));
  exec_ok(w, "pragma journal_mode = wal; create table t(id integer primary key, v integer, pad text);"
             "with recursive s(i) as (select 1 union all select i + 1 from s where i < 2000)"
             " insert into t select i, i, printf('%0100d', i) from s;"
             "pragma wal_checkpoint(truncate)");
  ASSERT_OK(ath__db_new(url, &rd, &e));
  ASSERT_EQ(2001000, one_int(rd, "select sum(v) from t"));
  ASSERT(mapped(path));
  /* in the file (checkpointed), not only in the WAL: read from the map */
  exec_ok(w, "update t set v = v + 1; pragma wal_checkpoint(truncate)");
  ASSERT_EQ(2003000, one_int(rd, "select sum(v) from t"));
  /* written and in the WAL: the reader's cache goes, its pages come again */
  exec_ok(w, "update t set v = 0 where id = 1");
  ASSERT_EQ(2002998, one_int(rd, "select sum(v) from t"));
  /* cut to two pages behind SQLite's back while the WAL is not empty (no
   * size check at the next read), then a commit: the reader's next scan
   * wants pages past the end */
  ASSERT_OK(truncate(path, 8192));
  exec_ok(w, "update t set v = 1 where id = 1");
  ath_db_res_t* r = NULL;
  ASSERT(ath__db_exec(rd, "select sum(length(pad)) from t", NULL, 0, &r, &e) != 0);
  ath__db_res_free(r);
  ath__db_free(rd);
  ath__db_free(w);
  ASSERT(!mapped(path)); /* the last connection took the map with it */
  remove_db(dir, path);
  return 0;
}

typedef struct {
  const char* url;
  int rounds;
  atomic_int done;
} writer_arg_t;

/* Inserts rows 2..rounds+1, one commit each, a checkpoint every tenth. */
static void map_writer(void* ud) {
  writer_arg_t* a = ud;
  ath_db_t* w = NULL;
  ath_db_error_t e;
  ASSERT_OK(ath__db_new(a->url, &w, &e));
  for (int i = 2; i <= a->rounds + 1; i++) {
    char sql[96];
    snprintf(sql, sizeof(sql), "insert into t values (%d, %d, 'x')", i, i);
    exec_ok(w, sql);
    if (i % 10 == 0)
      exec_ok(w, "pragma wal_checkpoint(passive)");
  }
  ath__db_free(w);
  atomic_store(&a->done, 1);
}

/* The count of t's rows 1..n holding v = id, or -1 if the rows read are
 * not whole (their sum says). */
static int64_t whole_rows(ath_db_t* db) {
  return one_int(db, "select case when sum(v) = count(*) * (count(*) + 1) / 2 then count(*) else -1 end from t");
}

/* A reader on one thread while a writer commits and checkpoints on
 * another, both through the one map of the file: the reader's counts only
 * grow, each with the sum that goes with it, and end at the writer's. */
TEST_IMPL(db_sqlite_mapped_reads_threads) {
  char dir[] = "/tmp/athena-dbmapt-XXXXXX", path[128], url[160];
  ASSERT_NOT_NULL(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/m.db", dir);
  snprintf(url, sizeof(url), "sqlite:%s", path);
  ath_db_t* rd = NULL;
  ath_db_error_t e;
  ASSERT_OK(ath__db_new(url, &rd, &e));
  exec_ok(rd, "pragma journal_mode = wal; create table t(id integer primary key, v integer, pad text);"
              "insert into t values (1, 1, 'x')");
  writer_arg_t a = {url, 300, 0};
  uv_thread_t th;
  ASSERT_OK(uv_thread_create(&th, map_writer, &a));
  int64_t last = 1, n;
  while (!atomic_load(&a.done)) {
    n = whole_rows(rd);
    ASSERT_GE(n, last);
    last = n;
  }
  ASSERT_OK(uv_thread_join(&th));
  ASSERT_EQ(a.rounds + 1, whole_rows(rd));
  ath__db_free(rd);
  remove_db(dir, path);
  return 0;
}

/* ------------------------------------------- PostgreSQL on a libuv loop */

static int async_done;

static void async_cb(ath_db_t* db, void* ud) {
  (void)db;
  ASSERT_EQ((intptr_t)ud, 42);
  async_done++;
}

static void abort_cb(uv_timer_t* t) {
  ath__db_abort(t->data);
  uv_close((uv_handle_t*)t, NULL);
}

/* Runs the loop with an abort of db's statement after 50 ms; returns how
 * long the loop ran, in ns. */
static uint64_t run_aborting(uv_loop_t* loop, ath_db_t* db) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  t.data = db;
  uv_timer_start(&t, abort_cb, 50, 0);
  uint64_t t0 = uv_hrtime();
  ASSERT_OK(uv_run(loop, UV_RUN_DEFAULT));
  return uv_hrtime() - t0;
}

/* SQLite statements on the loop's thread pool: the outcome comes back on
 * the loop; an abort interrupts a running statement and keeps an idle
 * connection (and its in-memory database). */
TEST_IMPL(db_sqlite_async) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  ath_db_t* db = NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  async_done = 0;
  ASSERT_OK(ath__db_new("sqlite::memory:", &db, &e));
  ASSERT_OK(ath__db_exec(db, "create table kept (v)", NULL, 0, &r, &e));
  ath__db_res_free(r);
  char text[] = "copied";
  ath_db_value_t p[2] = {{.type = ATH_DB_INT, .i = 7}, {.type = ATH_DB_TEXT, .s = text, .len = 6}};
  ASSERT_OK(ath__db_exec_async(db, &loop, "insert into kept values (?) returning v, ? as s", p, 2, async_cb,
                               (void*)(intptr_t)42, &e));
  memcpy(text, "XXXXXX", 6); /* the parameters were copied */
  ASSERT(ath__db_busy(db));
  ASSERT_EQ(ATH_DB_EBUSY, ath__db_exec_async(db, &loop, "select 1", NULL, 0, async_cb, NULL, &e));
  ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, async_done);
  ASSERT(!ath__db_busy(db));
  ASSERT_OK(ath__db_async_result(db, &r, &e));
  ath_db_value_t v;
  ASSERT_OK(ath__db_res_value(r, 0, 0, &v));
  ASSERT_EQ(7, v.i);
  ASSERT_OK(ath__db_res_value(r, 0, 1, &v));
  ASSERT_EQ(6, (int)v.len);
  ASSERT_OK(memcmp(v.s, "copied", 6));
  ath__db_res_free(r);
  /* an error result */
  ASSERT_OK(ath__db_exec_async(db, &loop, "select * from nope", NULL, 0, async_cb, (void*)(intptr_t)42, &e));
  ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(2, async_done);
  ASSERT_EQ(ATH_DB_ESYNTAX, ath__db_async_result(db, &r, &e));
  /* abandoned mid-statement (minutes of counting): no callback, stopped at
   * once, the idle connection kept with its table */
  ASSERT_OK(ath__db_exec_async(db, &loop,
                               "with recursive c(x) as (select 1 union all select x + 1 from c"
                               " where x < 1000000000) select count(*) from c",
                               NULL, 0, async_cb, (void*)(intptr_t)42, &e));
  ASSERT_LT(run_aborting(&loop, db), 5000000000u);
  ASSERT_EQ(2, async_done);
  ASSERT(!ath__db_busy(db));
  ASSERT(ath__db_connected(db));
  ASSERT_OK(ath__db_exec(db, "select count(*) from kept", NULL, 0, &r, &e));
  ASSERT_OK(ath__db_res_value(r, 0, 0, &v));
  ASSERT_EQ(1, v.i);
  ath__db_res_free(r);
  ath__db_free(db);
  ASSERT_OK(uv_loop_close(&loop));
  return 0;
}

/* The count of this session's prepared statements naming `like`. */
static int64_t prepared_count(ath_db_t* db, const char* like) {
  ath_db_res_t* r = NULL;
  ath_db_error_t e;
  ath_db_value_t p = {.type = ATH_DB_TEXT, .s = like, .len = strlen(like)};
  ath_db_value_t v;
  if (ath__db_exec(db, "select count(*) from pg_prepared_statements where statement like ?", &p, 1, &r, &e) != 0 ||
      ath__db_res_value(r, 0, 0, &v) != 0)
    v.i = -1;
  ath__db_res_free(r);
  return v.i;
}

/* One statement on the loop; its first value as an integer (or -1). */
static int64_t async_int(uv_loop_t* loop, ath_db_t* db, const char* sql, int64_t arg, int* rc) {
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  ath_db_value_t p = {.type = ATH_DB_INT, .i = arg}, v = {.type = ATH_DB_NULL};
  *rc = ath__db_exec_async(db, loop, sql, &p, 1, async_cb, (void*)(intptr_t)42, &e);
  if (*rc != 0)
    return -1;
  uv_run(loop, UV_RUN_DEFAULT);
  *rc = ath__db_async_result(db, &r, &e);
  if (*rc == 0 && ath__db_res_value(r, 0, 0, &v) == 0 && v.type == ATH_DB_TEXT)
    v.i = atoll(v.s);
  ath__db_res_free(r);
  return *rc == 0 ? v.i : -1;
}

/* Statements with parameters on a loop run prepared once per session, as
 * blocking ones do (the gateway's PostgreSQL reads): prepared on first use,
 * run prepared after, prepared again when the schema changed under them; a
 * PREPARE that fails is the statement's error and leaves no name behind. */
TEST_IMPL(db_pg_async_prepared) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  ath_db_t* db = NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  int rc;
  ASSERT_OK(ath__db_new(test_pg_url(), &db, &e));
  ASSERT_OK(ath__db_exec(db, "drop table if exists reshaped_async; create table reshaped_async (id int primary key, "
                             "v int); insert into reshaped_async values (1, 7), (2, 8)",
                         NULL, 0, &r, &e));
  ath__db_res_free(r);
  const char* q = "select v from reshaped_async where id = ?";
  ASSERT_EQ(0, prepared_count(db, "%reshaped_async%"));
  ASSERT_EQ(7, async_int(&loop, db, q, 1, &rc));
  ASSERT_OK(rc);
  ASSERT_EQ(1, prepared_count(db, "%reshaped_async%"));
  ASSERT_EQ(8, async_int(&loop, db, q, 2, &rc)); /* the prepared one, another value */
  ASSERT_EQ(1, prepared_count(db, "%reshaped_async%"));
  /* the blocking path finds it too */
  ath_db_value_t p = {.type = ATH_DB_INT, .i = 1};
  ASSERT_OK(ath__db_exec(db, q, &p, 1, &r, &e));
  ath__db_res_free(r);
  ASSERT_EQ(1, prepared_count(db, "%reshaped_async%"));
  /* the column changes type under it: prepared again, answered */
  ASSERT_OK(ath__db_exec(db, "alter table reshaped_async alter column v type text", NULL, 0, &r, &e));
  ath__db_res_free(r);
  ASSERT_EQ(7, async_int(&loop, db, q, 1, &rc)); /* text now: read back by atoll */
  ASSERT_OK(rc);
  /* a new name; the stale one stays on the server until the session ends
   * (as on the blocking path) */
  ASSERT_EQ(2, prepared_count(db, "%reshaped_async%"));
  ASSERT_EQ(8, async_int(&loop, db, q, 2, &rc)); /* the new one, no third */
  ASSERT_EQ(2, prepared_count(db, "%reshaped_async%"));
  /* a PREPARE that fails: the statement's error, no name kept; then fine */
  ASSERT_EQ(-1, async_int(&loop, db, "select nope from reshaped_async where id = ?", 1, &rc));
  ASSERT_EQ(ATH_DB_ESYNTAX, rc);
  ASSERT_EQ(0, prepared_count(db, "%nope%"));
  ASSERT_EQ(8, async_int(&loop, db, q, 2, &rc));
  ASSERT_OK(ath__db_exec(db, "drop table reshaped_async", NULL, 0, &r, &e));
  ath__db_res_free(r);
  ath__db_free(db);
  ASSERT_OK(uv_loop_close(&loop));
  return 0;
}

/* The loop's poll handles that are open and watching: how many, and
 * the last one seen. */
typedef struct {
  int n;
  uv_handle_t* h;
} polls_t;

static void count_poll(uv_handle_t* h, void* arg) {
  polls_t* p = arg;
  if (h->type == UV_POLL && !uv_is_closing(h) && uv_is_active(h)) {
    p->n++;
    p->h = h;
  }
}

static polls_t polls(uv_loop_t* loop) {
  polls_t p = {0, NULL};
  uv_walk(loop, count_poll, &p);
  return p;
}

static void tick(uv_timer_t* t) {
  (void)t; /* only wakes the loop, so that a deadline is checked */
}

/* Turns the loop until done(db, want) or 5 s passed; returns done's last
 * answer. A ticking timer keeps a wait without events from blocking. */
static int turn_until(uv_loop_t* loop, ath_db_t* db, int (*done)(ath_db_t*, int), int want) {
  uv_timer_t t;
  uv_timer_init(loop, &t);
  uv_timer_start(&t, tick, 50, 50);
  uint64_t end = ath__mono_ns() + 5000000000u;
  int ok;
  while (!(ok = done(db, want)) && ath__mono_ns() < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t*)&t, NULL);
  uv_run(loop, UV_RUN_NOWAIT); /* the timer's close */
  return ok;
}

static int answered(ath_db_t* db, int want) {
  (void)db;
  return async_done >= want;
}

static int dropped(ath_db_t* db, int want) {
  (void)want;
  return !ath__db_connected(db);
}

/* ath__db_keep_watch: one poll handle per connection, kept from one
 * statement to the next; a server that closes the idle connection is
 * noticed (dropped, the next statement connects again); ath__db_unwatch
 * lets the loop end. */
TEST_IMPL(db_pg_async_kept_watch) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  ath_db_t *db = NULL, *admin = NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  ath_db_value_t v;
  ASSERT_OK(ath__db_new(test_pg_url(), &db, &e));
  ASSERT_OK(ath__db_new(test_pg_url(), &admin, &e));
  ath__db_keep_watch(db);
  async_done = 0;
  ASSERT_OK(ath__db_exec_async(db, &loop, "select pg_backend_pid()", NULL, 0, async_cb, (void*)(intptr_t)42, &e));
  ASSERT(turn_until(&loop, db, answered, 1));
  ASSERT_OK(ath__db_async_result(db, &r, &e));
  ASSERT_OK(ath__db_res_value(r, 0, 0, &v));
  ath_db_value_t pid = {.type = ATH_DB_INT, .i = v.i};
  ath__db_res_free(r);
  polls_t first = polls(&loop);
  ASSERT_EQ(1, first.n); /* still watched between statements */
  ath_db_value_t p = {.type = ATH_DB_INT, .i = 5};
  ASSERT_OK(ath__db_exec_async(db, &loop, "select ?::int + 1", &p, 1, async_cb, (void*)(intptr_t)42, &e));
  ASSERT(turn_until(&loop, db, answered, 2));
  ASSERT_OK(ath__db_async_result(db, &r, &e));
  ASSERT_OK(ath__db_res_value(r, 0, 0, &v));
  ASSERT_EQ(6, v.i);
  ath__db_res_free(r);
  polls_t second = polls(&loop);
  ASSERT_EQ(1, second.n);
  ASSERT(first.h == second.h); /* the same handle */
  /* the server ends the idle session: the watch notices, the connection
   * is dropped and no longer watched */
  ASSERT_OK(ath__db_exec(admin, "select pg_terminate_backend(?)", &pid, 1, &r, &e));
  ath__db_res_free(r);
  ASSERT(turn_until(&loop, db, dropped, 0));
  ASSERT_EQ(0, polls(&loop).n);
  /* the next statement connects again, on the loop */
  ASSERT_OK(ath__db_exec_async(db, &loop, "select ?::int + 1", &p, 1, async_cb, (void*)(intptr_t)42, &e));
  ASSERT(turn_until(&loop, db, answered, 3));
  ASSERT_OK(ath__db_async_result(db, &r, &e));
  ath__db_res_free(r);
  ASSERT_EQ(1, polls(&loop).n);
  ath__db_unwatch(db); /* nothing left watching: the loop ends */
  ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
  ath__db_free(db);
  ath__db_free(admin);
  ASSERT_OK(uv_loop_close(&loop));
  return 0;
}

TEST_IMPL(db_pg_async) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  ath_db_t* db = NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  ASSERT_OK(ath__db_new(test_pg_url(), &db, &e));
  ASSERT(ath__db_can_async(db));
  ASSERT(!ath__db_connected(db));
  /* connects on the loop, then runs the statement */
  ath_db_value_t p = {.type = ATH_DB_INT, .i = 7};
  ASSERT_OK(ath__db_exec_async(db, &loop, "select ?::int as n, pg_sleep(0.02)::text as s", &p, 1,
                               async_cb, (void*)(intptr_t)42, &e));
  ASSERT(ath__db_busy(db));
  ASSERT_EQ(ATH_DB_EBUSY,
            ath__db_exec_async(db, &loop, "select 1", NULL, 0, async_cb, NULL, &e));
  ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, async_done);
  ASSERT_OK(ath__db_async_result(db, &r, &e));
  ath_db_value_t v;
  ASSERT_OK(ath__db_res_value(r, 0, 0, &v));
  ASSERT_EQ(ATH_DB_INT, v.type);
  ASSERT_EQ(7, v.i);
  ath__db_res_free(r);
  /* an error result */
  ASSERT_OK(ath__db_exec_async(db, &loop, "select * from nope", NULL, 0, async_cb,
                               (void*)(intptr_t)42, &e));
  ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(2, async_done);
  ASSERT_EQ(ATH_DB_ESYNTAX, ath__db_async_result(db, &r, &e));
  ASSERT_STR_EQ("42P01", e.sqlstate);
  /* abandoned mid-statement: no callback, the connection is dropped, the
   * next statement connects again */
  ASSERT_OK(ath__db_exec_async(db, &loop, "select pg_sleep(5)", NULL, 0, async_cb,
                               (void*)(intptr_t)42, &e));
  ASSERT_LT(run_aborting(&loop, db), 2000000000u);
  ASSERT_EQ(2, async_done);
  ASSERT(!ath__db_connected(db));
  ASSERT(!ath__db_busy(db));
  ASSERT_OK(ath__db_exec(db, "select 1", NULL, 0, &r, &e)); /* blocking, reconnected */
  ath__db_res_free(r);
  ath__db_free(db);
  ASSERT_OK(uv_loop_close(&loop));
  return 0;
}

/* What a pipeline told: each statement's rc, first value and SQLSTATE
 * (by its ud, an index), the order they were told in, and whether `done`
 * ran (with how many told before it). */
static struct {
  int n;
  int order[16];
  int rc[16];
  int64_t v[16];
  char sqlstate[16][6];
  char msg[16][64];
  int done;
} piped;

static void pipe_each(ath_db_t* db, void* ud, int rc, ath_db_res_t* res, const ath_db_error_t* err) {
  (void)db;
  int i = (int)(intptr_t)ud;
  ath_db_value_t v = {.type = ATH_DB_NULL};
  piped.order[piped.n++] = i;
  piped.rc[i] = rc;
  piped.v[i] = -1;
  if (rc == 0 && ath__db_res_value(res, 0, 0, &v) == 0)
    piped.v[i] = v.type == ATH_DB_INT ? v.i : v.type == ATH_DB_TEXT ? atoll(v.s) : -1;
  if (rc != 0)
    memcpy(piped.sqlstate[i], err->sqlstate, 5); /* five characters, or NULs */
  if (rc != 0)
    snprintf(piped.msg[i], sizeof(piped.msg[i]), "%.63s", err->message);
  ath__db_res_free(res);
}

static void pipe_done(ath_db_t* db, void* ud) {
  (void)db;
  ASSERT_EQ((intptr_t)ud, 42);
  piped.done = 1 + piped.n;
}

/* Runs the n statements (ud = their index) in one pipeline to its end. */
static int run_pipeline(uv_loop_t* loop, ath_db_t* db, ath_db_stmt_t* st, int n) {
  ath_db_error_t e;
  memset(&piped, 0, sizeof(piped));
  for (int i = 0; i < n; i++)
    st[i].ud = (void*)(intptr_t)i;
  int rc = ath__db_pipeline_async(db, loop, st, n, pipe_each, pipe_done, (void*)(intptr_t)42, &e);
  if (rc != 0)
    return rc;
  ASSERT(ath__db_busy(db));
  ASSERT_EQ(ATH_DB_EBUSY, ath__db_exec_async(db, loop, "select 1", NULL, 0, async_cb, NULL, &e));
  ASSERT_EQ(ATH_DB_EBUSY, ath__db_pipeline_async(db, loop, st, n, pipe_each, pipe_done, NULL, &e));
  uv_run(loop, UV_RUN_DEFAULT);
  ASSERT_EQ(n + 1, piped.done); /* after every statement was told */
  for (int i = 0; i < n; i++)
    ASSERT_EQ(i, piped.order[i]); /* in order, each once */
  return 0;
}

/* ath__db_pipeline_async: statements sent together, each told its own
 * outcome in order: one that fails fails alone (those the server skipped
 * after it are sent again), a PREPARE that fails is its statement's error,
 * statements of one SQL share one prepared statement (prepared in the same
 * pipeline), a schema change under it is prepared again, the connection
 * leaves pipeline mode (a blocking statement works after), one that is
 * lost tells every statement; not connected: refused, nothing told. */
TEST_IMPL(db_pg_pipeline) {
  uv_loop_t loop;
  ASSERT_OK(uv_loop_init(&loop));
  ath_db_t* db = NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  ASSERT_OK(ath__db_new(test_pg_url(), &db, &e));
  ath_db_value_t one = {.type = ATH_DB_INT, .i = 1}, two = {.type = ATH_DB_INT, .i = 2},
                 three = {.type = ATH_DB_INT, .i = 3}, big = {.type = ATH_DB_INT, .i = 41};
  ath_db_stmt_t st[8] = {{"select 1", NULL, 0, NULL}};
  /* not connected yet: refused, nothing told */
  memset(&piped, 0, sizeof(piped));
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_pipeline_async(db, &loop, st, 1, pipe_each, pipe_done, NULL, &e));
  ASSERT_EQ(0, piped.n);
  ASSERT_OK(ath__db_exec(db, "drop table if exists piped; create table piped (id int primary key, v int); "
                             "insert into piped values (1, 7), (2, 8)",
                         NULL, 0, &r, &e));
  ath__db_res_free(r);
  /* refused before anything is sent, nothing told, the connection not
   * left busy: no statement, a placeholder count that does not match */
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_pipeline_async(db, &loop, st, 0, pipe_each, pipe_done, NULL, &e));
  st[0] = (ath_db_stmt_t){"select 1", NULL, 0, NULL};
  st[1] = (ath_db_stmt_t){"select ?, ?", &one, 1, NULL};
  ASSERT_EQ(ATH_DB_EINVAL, ath__db_pipeline_async(db, &loop, st, 2, pipe_each, pipe_done, NULL, &e));
  ASSERT(strstr(e.message, "2 placeholders, 1 value given") != NULL);
  ASSERT_EQ(0, piped.n);
  ASSERT(!ath__db_busy(db));
  const char* q = "select v from piped where id = ?";
  st[0] = (ath_db_stmt_t){q, &one, 1, NULL};
  st[1] = (ath_db_stmt_t){q, &two, 1, NULL};
  st[2] = (ath_db_stmt_t){"select 1 / (?::int - 3)", &three, 1, NULL}; /* division by zero */
  st[3] = (ath_db_stmt_t){q, &one, 1, NULL};                             /* skipped, sent again */
  st[4] = (ath_db_stmt_t){"select nope from piped where id = ?", &one, 1, NULL};
  st[5] = (ath_db_stmt_t){"select ?::int + 1", &big, 1, NULL};
  st[6] = (ath_db_stmt_t){"select 5", NULL, 0, NULL};
  ASSERT_OK(run_pipeline(&loop, db, st, 7));
  ASSERT_OK(piped.rc[0]);
  ASSERT_EQ(7, piped.v[0]);
  ASSERT_OK(piped.rc[1]);
  ASSERT_EQ(8, piped.v[1]);
  ASSERT_NE(0, piped.rc[2]);
  ASSERT_STR_EQ("22012", piped.sqlstate[2]);
  ASSERT_OK(piped.rc[3]);
  ASSERT_EQ(7, piped.v[3]);
  ASSERT_EQ(ATH_DB_ESYNTAX, piped.rc[4]);
  ASSERT_STR_EQ("42703", piped.sqlstate[4]);
  ASSERT_OK(piped.rc[5]);
  ASSERT_EQ(42, piped.v[5]);
  ASSERT_OK(piped.rc[6]);
  ASSERT_EQ(5, piped.v[6]);
  ASSERT_EQ(1, prepared_count(db, "%from piped where id%")); /* one for q; none for the failed one */
  ASSERT_EQ(0, prepared_count(db, "%nope%"));
  /* out of pipeline mode: a blocking statement on the same session */
  ASSERT_OK(ath__db_exec(db, q, &two, 1, &r, &e));
  ath__db_res_free(r);
  /* the column changes type under the prepared statement: both prepared
   * again and answered */
  ASSERT_OK(ath__db_exec(db, "alter table piped alter column v type text", NULL, 0, &r, &e));
  ath__db_res_free(r);
  st[0] = (ath_db_stmt_t){q, &one, 1, NULL};
  st[1] = (ath_db_stmt_t){q, &two, 1, NULL};
  ASSERT_OK(run_pipeline(&loop, db, st, 2));
  ASSERT_OK(piped.rc[0]);
  ASSERT_EQ(7, piped.v[0]);
  ASSERT_OK(piped.rc[1]);
  ASSERT_EQ(8, piped.v[1]);
  /* the session ends under it: every statement told, the connection dropped */
  st[0] = (ath_db_stmt_t){"select pg_terminate_backend(pg_backend_pid())", NULL, 0, NULL};
  st[1] = (ath_db_stmt_t){q, &one, 1, NULL};
  ASSERT_OK(run_pipeline(&loop, db, st, 2));
  ASSERT_EQ(ATH_DB_ECONNLOST, piped.rc[0]);
  ASSERT_EQ(ATH_DB_ECONNLOST, piped.rc[1]);
  ASSERT(piped.msg[1][0] != '\0'); /* told why */
  ASSERT(!ath__db_connected(db));
  ASSERT(!ath__db_busy(db));
  ASSERT_OK(ath__db_exec(db, "drop table piped", NULL, 0, &r, &e)); /* connects again */
  ath__db_res_free(r);
  ath__db_free(db);
  ASSERT_OK(uv_loop_close(&loop));
  return 0;
}
