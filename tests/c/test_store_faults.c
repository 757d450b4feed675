/* Storage faults (SEMANTICS §13, docs/operations.md "When the disk fails"):
 * a full disk and I/O errors on commit, injected through the test VFS
 * (faultvfs.h, the default VFS of this binary only). An execute whose
 * enqueue cannot be committed answers ENOSPC / EIO and the task never
 * runs; running tasks go on; the store says it is degraded (health, one log
 * line) and recovers by itself; nothing acknowledged is lost. */
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include "athena.h"
#include "faultvfs.h"
#include "internal.h"
#include "store.h"
#include "store_fixture.h"
#include "task.h"

static store_fixture_t fx;
static char flag_path[600];

/* Activities: `spawn` runs world:execute (or executeMany) from inside a
 * task once the test creates its flag file, and returns what it got. */
static const char* jobs_lua =
  "local athena = require 'athena'\n"
  "athena.activity('echo', function(ctx, input) return input end)\n"
  "athena.activity('gate', function(ctx, input)\n"
  "  while not io.open(input.flag) do athena.sleep(2) end\n"
  "  return 'opened'\n"
  "end)\n"
  "athena.activity('spawn', function(ctx, input)\n"
  "  while not io.open(input.flag) do athena.sleep(2) end\n"
  "  local w = athena.World.new()\n"
  "  local h, err\n"
  "  if input.many then\n"
  "    h, err = w:executeMany('echo', { 1, 2 }, { ids = input.ids })\n"
  "  else\n"
  "    h, err = w:execute('echo', 1, { id = input.id })\n"
  "  end\n"
  "  if h then return { code = 'ok' } end\n"
  "  return { code = err.code, message = err.message }\n"
  "end)\n";

static void setup(void) {
  store_fixture_setup(&fx, "faults", "ftjobs", jobs_lua);
  snprintf(flag_path, sizeof(flag_path), "%s/flag", fx.dir);
  faultvfs_install();
}

static ath_world_t* open_world(void) {
  static const char* const names[] = {"echo", "gate", "spawn"};
  ath_world_t* w;
  char err[512];
  if (store_fixture_world(&fx, ATH_PERSIST_FILE, names, 3, &w, err, sizeof(err)) != 0) {
    fprintf(stderr, "start: %s\n", err);
    abort();
  }
  return w;
}

static void close_world(ath_world_t* w) {
  int drained, requeued;
  ASSERT_OK(ath_world_shutdown(w, 5000, &drained, &requeued, NULL));
  ath_world_free(w);
}

/* execute(name, json, {id}) through the C API; *t gets the task or NULL. */
static int exec_id(ath_world_t* w, const char* name, const char* json, const char* id,
                   ath_task_t** t, char* err, size_t errlen) {
  size_t len = strlen(json);
  char* p = malloc(len + 1);
  memcpy(p, json, len + 1);
  ath_exec_opts_t o = {0};
  o.id = id;
  *t = NULL;
  return ath_world_execute(w, name, 1, &p, &len, NULL, &o, t, err, errlen);
}

static ath_task_t* exec_ok(ath_world_t* w, const char* name, const char* json, const char* id) {
  ath_task_t* t;
  char err[512];
  int rc = exec_id(w, name, json, id, &t, err, sizeof(err));
  if (rc != 0) {
    fprintf(stderr, "execute %s: %s: %s\n", id, ath_err_name(rc), err);
    abort();
  }
  return t;
}

static uint64_t ms_since(uint64_t t0) {
  return (uv_hrtime() - t0) / 1000000u;
}

/* Waits, with a deadline, until the task is in state `st`. */
static void wait_status(ath_world_t* w, ath_task_t* t, ath_status_t st) {
  uint64_t t0 = uv_hrtime();
  while (ath_task_status(w, t) != st) {
    if (ms_since(t0) > 10000) {
      fprintf(stderr, "task %s: %s, not %s, after 10 s\n", ath_task_id(t),
              ath_status_name(ath_task_status(w, t)), ath_status_name(st));
      abort();
    }
    uv_sleep(1);
  }
}

/* Waits until t's latest change is committed. */
static void wait_durable(ath_world_t* w, ath_task_t* t) {
  uv_mutex_lock(&w->lock);
  ath__store_wait(w, t->dirty_gen);
  uv_mutex_unlock(&w->lock);
}

/* Waits until the store has refused `n` more writes or syncs: it keeps
 * retrying while degraded. */
static void wait_refusals(int64_t n) {
  int64_t target = faultvfs_refused() + n;
  uint64_t t0 = uv_hrtime();
  while (faultvfs_refused() < target) {
    ASSERT_LT(ms_since(t0), 10000);
    uv_sleep(1);
  }
}

/* Waits until /healthz's answer is ok again (the store recovered alone). */
static void wait_healthy(ath_world_t* w) {
  char why[512];
  uint64_t t0 = uv_hrtime();
  while (ath_world_health(w, why, sizeof(why)) != 0) {
    if (ms_since(t0) > 10000) {
      fprintf(stderr, "still unhealthy after 10 s: %s\n", why);
      abort();
    }
    uv_sleep(1);
  }
}

static void touch(const char* path, int on) {
  if (!on) {
    unlink(path);
    return;
  }
  FILE* f = fopen(path, "w");
  ASSERT_NOT_NULL(f);
  fclose(f);
}

static int count_lines(const char* path, const char* needle) {
  FILE* f = fopen(path, "r");
  ASSERT_NOT_NULL(f);
  char line[2048];
  int n = 0;
  while (fgets(line, sizeof(line), f))
    n += strstr(line, needle) != NULL;
  fclose(f);
  return n;
}

static void assert_absent(ath_world_t* w, const char* id) {
  ath_task_t* t = NULL;
  int rc = ath_world_find(w, id, &t);
  if (rc != ATH_ENOTFOUND) {
    fprintf(stderr, "task %s exists (%s), but its execute failed\n", id,
            t ? ath_status_name(ath_task_status(w, t)) : ath_err_name(rc));
    abort();
  }
}

static void assert_completed(ath_world_t* w, const char* id, const char* result) {
  ath_task_t* t = NULL;
  if (ath_world_find(w, id, &t) != 0) {
    fprintf(stderr, "acknowledged task %s is missing\n", id);
    abort();
  }
  ASSERT_OK(ath_world_wait(w, t, 10000));
  ath_task_info_t info;
  ASSERT_OK(ath_task_snapshot(w, t, &info));
  ASSERT_EQ(ATH_COMPLETED, info.status);
  if (result != NULL && strstr(info.result, result) == NULL) {
    fprintf(stderr, "task %s: result %s lacks %s\n", id, info.result, result);
    abort();
  }
  ath_task_snapshot_free(&info);
  ath_task_release(t);
}

/* One degraded episode in which an execute from inside a task (`spawn`,
 * yielding for its commit) meets the failing commit first. */
static ath_task_t* spawn_then_fail(ath_world_t* w, const char* id, const char* input, int fault) {
  touch(flag_path, 0);
  ath_task_t* sp = exec_ok(w, "spawn", input, id);
  wait_status(w, sp, ATH_RUNNING);
  wait_durable(w, sp); /* the next commit is the enqueue's */
  faultvfs_fail_writes(fault);
  touch(flag_path, 1); /* now it executes: its enqueue's commit fails */
  wait_status(w, sp, ATH_COMPLETED); /* in RAM: its outcome waits for the store */
  wait_refusals(3);                  /* a few retries, one log line */
  faultvfs_fail_writes(0);
  wait_healthy(w);
  return sp;
}

TEST_IMPL(store_fault_full_disk) {
  setup();
  ath_world_t* w = open_world();
  ath_task_t* before = exec_ok(w, "echo", "\"before\"", "before");
  ASSERT_OK(ath_world_wait(w, before, 10000));
  ath_task_release(before);
  char input[1024];
  snprintf(input, sizeof(input), "{\"flag\":\"%s\"}", flag_path);
  ath_task_t* running = exec_ok(w, "gate", input, "running");
  wait_status(w, running, ATH_RUNNING);
  wait_durable(w, running);

  /* 1. The disk fills: the first execute to need a commit gets ENOSPC, at
   * once, with the reason; its task is gone and never runs. */
  faultvfs_fail_writes(SQLITE_FULL);
  ath_task_t* t;
  char err[512];
  uint64_t t0 = uv_hrtime();
  ASSERT_EQ(ATH_ENOSPC, exec_id(w, "echo", "\"lost\"", "lost-1", &t, err, sizeof(err)));
  ASSERT_LT(ms_since(t0), 5000);
  ASSERT_NULL(t);
  ASSERT_NOT_NULL(strstr(err, "could not be stored"));
  ASSERT_NOT_NULL(strstr(err, "full"));
  assert_absent(w, "lost-1");
  ath_metrics_t m = {0};
  ath_world_metrics(w, &m);
  ASSERT_EQ(0, m.queued);

  /* 2. While degraded: refused up front, batches too; /healthz says why. */
  ASSERT_EQ(ATH_ENOSPC, exec_id(w, "echo", "\"lost\"", "lost-2", &t, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "degraded"));
  char* many[3] = {strdup("1"), strdup("2"), strdup("3")};
  size_t lens[3] = {1, 1, 1};
  const char* ids[3] = {"many-1", "many-2", "many-3"};
  ath_task_t* out[3];
  ASSERT_EQ(ATH_ENOSPC, ath_world_execute(w, "echo", 3, many, lens, ids, NULL, out, err, sizeof(err)));
  char why[512];
  ASSERT_EQ(ATH_ESTORE, ath_world_health(w, why, sizeof(why)));
  ASSERT_NOT_NULL(strstr(why, "degraded (ENOSPC)"));
  ASSERT_NOT_NULL(strstr(why, "full"));

  /* 3. A running task runs on and ends; its outcome waits for the store. */
  touch(flag_path, 1);
  wait_status(w, running, ATH_COMPLETED);
  wait_refusals(3);

  /* 4. Space comes back: the store recovers alone, execute works again. */
  faultvfs_fail_writes(0);
  wait_healthy(w);
  ath_task_release(exec_ok(w, "echo", "\"after\"", "after"));
  ASSERT_OK(ath_world_wait(w, running, 10000)); /* durable now */

  /* 5. An execute from inside a task, yielding for its commit, and an
   * executeMany from inside a task: nil, err with the code; the tasks
   * that called them go on and complete. */
  snprintf(input, sizeof(input), "{\"flag\":\"%s\",\"id\":\"inner-1\"}", flag_path);
  ath_task_t* sp1 = spawn_then_fail(w, "spawn-1", input, SQLITE_FULL);
  snprintf(input, sizeof(input), "{\"flag\":\"%s\",\"many\":true,\"ids\":[\"inner-m1\",\"inner-m2\"]}",
           flag_path);
  ath_task_t* sp2 = spawn_then_fail(w, "spawn-2", input, SQLITE_IOERR_WRITE);
  ath_task_release(sp1);
  ath_task_release(sp2);
  ath_task_release(running);
  close_world(w);

  /* 6. After a restart: every acknowledged task completed, no refused one
   * anywhere; one log line per degraded episode and per recovery. */
  touch(flag_path, 0);
  w = open_world();
  assert_completed(w, "before", "before");
  assert_completed(w, "running", "opened");
  assert_completed(w, "after", "after");
  assert_completed(w, "spawn-1", "could not be stored");
  assert_completed(w, "spawn-1", "ENOSPC");
  assert_completed(w, "spawn-2", "EIO");
  const char* gone[] = {"lost-1", "lost-2", "many-1", "many-2", "many-3", "inner-1",
                        "inner-m1", "inner-m2"};
  for (size_t i = 0; i < sizeof(gone) / sizeof(*gone); i++)
    assert_absent(w, gone[i]);
  close_world(w);
  ASSERT_EQ(3, count_lines(fx.log_path, "store degraded"));
  ASSERT_EQ(3, count_lines(fx.log_path, "store commits succeed again"));
  store_fixture_teardown(&fx);
  return 0;
}

/* An fsync that fails: EIO, and the store trusts nothing it cached: it
 * reopens the database and runs quick_check before it takes writes again.
 * The refused commit's frames reached the WAL (only the sync failed), so
 * reopening brings that commit back: the withdrawn task's row is deleted
 * by the next commit, and it is not there after a restart. */
TEST_IMPL(store_fault_fsync_reopens) {
  setup();
  ath_world_t* w = open_world();
  ath_task_t* before = exec_ok(w, "echo", "\"before\"", "before");
  ASSERT_OK(ath_world_wait(w, before, 10000)); /* completed and committed: nothing in flight */
  ath_task_release(before);
  faultvfs_fail_syncs(SQLITE_IOERR_FSYNC);
  ath_task_t* t;
  char err[512];
  uint64_t t0 = uv_hrtime();
  ASSERT_EQ(ATH_EIO, exec_id(w, "echo", "\"lost\"", "fsync-lost", &t, err, sizeof(err)));
  ASSERT_LT(ms_since(t0), 5000);
  ASSERT_NOT_NULL(strstr(err, "could not be stored"));
  assert_absent(w, "fsync-lost");
  char why[512];
  ASSERT_EQ(ATH_ESTORE, ath_world_health(w, why, sizeof(why)));
  ASSERT_NOT_NULL(strstr(why, "degraded (EIO)"));
  wait_refusals(3);
  faultvfs_fail_syncs(0);
  wait_healthy(w);
  ath_task_release(exec_ok(w, "echo", "\"after\"", "after"));
  close_world(w);
  ASSERT_EQ(1, count_lines(fx.log_path, "store degraded, execute answers EIO"));
  ASSERT_EQ(1, count_lines(fx.log_path, "succeed again (reopened, PRAGMA quick_check ok)"));

  w = open_world();
  assert_completed(w, "before", "before");
  assert_completed(w, "after", "after");
  assert_absent(w, "fsync-lost");
  close_world(w);
  store_fixture_teardown(&fx);
  return 0;
}

/* Hybrid mode keeps a failed commit's changes and writes them again. A
 * commit whose fsync failed may be in the WAL anyway, so the rows it
 * inserted can be there when the retry inserts them again: the store then
 * writes them whole over the old (its plain insert meets the row, and the
 * upsert takes over). Every acknowledged task is there after a restart. */
TEST_IMPL(store_fault_fsync_hybrid_rewrites) {
  setup();
  static const char* const names[] = {"echo", "gate", "spawn"};
  ath_world_t* w;
  char err[512];
  ASSERT_OK(store_fixture_world(&fx, ATH_PERSIST_HYBRID, names, 3, &w, err, sizeof(err)));
  faultvfs_fail_syncs(SQLITE_IOERR_FSYNC);
  /* more than one multi-row insert's worth (ROWS_PER_INSERT, 32): the
   * retry meets rows of the failed commit in one of those too */
  enum { N = 80 };
  ath_task_t* t[N + 1];
  char id[32], json[32];
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof(id), "hy-%d", i);
    snprintf(json, sizeof(json), "\"r%d\"", i);
    t[i] = exec_ok(w, "echo", json, id); /* hybrid: acknowledged at once */
  }
  for (int i = 0; i < N; i++)
    ASSERT_OK(ath_world_wait(w, t[i], 10000));
  wait_refusals(2); /* a commit of them failed at its fsync, and again */
  char why[512];
  ASSERT_EQ(ATH_ESTORE, ath_world_health(w, why, sizeof(why)));
  faultvfs_fail_syncs(0);
  wait_healthy(w);
  t[N] = exec_ok(w, "echo", "\"after\"", "hy-after");
  ASSERT_OK(ath_world_wait(w, t[N], 10000));
  for (int i = 0; i <= N; i++)
    ath_task_release(t[i]);
  close_world(w);

  w = open_world();
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof(id), "hy-%d", i);
    snprintf(json, sizeof(json), "r%d\"", i);
    assert_completed(w, id, json);
  }
  assert_completed(w, "hy-after", "after");
  close_world(w);
  store_fixture_teardown(&fx);
  return 0;
}

static ath_world_t* slow_world;
static atomic_int slow_done;

static void slow_exec(void* arg) {
  (void)arg;
  ath_task_release(exec_ok(slow_world, "echo", "\"slow\"", "slow-1"));
  atomic_store(&slow_done, 1);
}

/* File mode: a task is not claimed before its enqueue is committed (so a
 * failed commit can withdraw it: it never ran). Every commit waits 300 ms
 * first (ATHENA_TEST_COMMIT_DELAY_MS): whatever is seen of the task until
 * 300 ms after execute began was seen before its commit, and is pending. */
TEST_IMPL(store_unborn_not_claimed) {
  setup();
  setenv("ATHENA_TEST_COMMIT_DELAY_MS", "300", 1);
  slow_world = open_world();
  unsetenv("ATHENA_TEST_COMMIT_DELAY_MS");
  uv_thread_t th;
  uint64_t t0 = uv_hrtime();
  ASSERT_OK(uv_thread_create(&th, slow_exec, NULL));
  int seen = 0;
  while (!atomic_load(&slow_done)) {
    ath_task_t* t = NULL;
    if (ath_world_find(slow_world, "slow-1", &t) == 0) {
      ath_status_t st = ath_task_status(slow_world, t);
      ath_task_release(t);
      if (ms_since(t0) < 300) {
        seen++;
        if (st != ATH_PENDING) {
          fprintf(stderr, "slow-1 is %s before its enqueue was committed\n", ath_status_name(st));
          abort();
        }
      }
    }
    uv_sleep(1);
  }
  uv_thread_join(&th);
  ASSERT_GT(seen, 0);
  assert_completed(slow_world, "slow-1", "slow");
  close_world(slow_world);
  store_fixture_teardown(&fx);
  return 0;
}

/* After an fsync error the store reopens the file and verifies it; a file
 * that fails PRAGMA quick_check then is not written again: the store stops
 * taking writes and says so (health, log, execute answers ESTORE), like
 * PostgreSQL after an fsync failure, until a restart. */
TEST_IMPL(store_fault_check_fails_stops) {
  setup();
  ath_world_t* w = open_world();
  for (int i = 0; i < 300; i++) { /* enough rows for the tasks table to span pages */
    char id[32];
    snprintf(id, sizeof(id), "fill-%d", i);
    ath_task_release(exec_ok(w, "echo", "\"a fairly long input to take some room in the pages\"", id));
  }
  ath_task_t* last = exec_ok(w, "echo", "\"last\"", "last");
  ASSERT_OK(ath_world_wait(w, last, 10000));
  ath_task_release(last);
  /* everything in the main file, then page 2 (the tasks table's root) ruined */
  char db_path[700];
  snprintf(db_path, sizeof(db_path), "%s/athena.db", fx.store_path);
  sqlite3* db;
  ASSERT_EQ(SQLITE_OK, sqlite3_open(db_path, &db));
  ASSERT_EQ(SQLITE_OK, sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL));
  sqlite3_stmt* st;
  ASSERT_EQ(SQLITE_OK, sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, NULL));
  ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
  long page = (long)sqlite3_column_int64(st, 0); /* the store's files: 16 KiB */
  sqlite3_finalize(st);
  sqlite3_close(db);
  ASSERT(page >= 512 && page <= 65536);
  FILE* f = fopen(db_path, "r+b");
  ASSERT_NOT_NULL(f);
  static char junk[65536];
  memset(junk, 0x5a, sizeof(junk));
  ASSERT_OK(fseek(f, page, SEEK_SET));
  ASSERT_EQ(1, fwrite(junk, (size_t)page, 1, f));
  fclose(f);

  faultvfs_fail_syncs(SQLITE_IOERR_FSYNC);
  ath_task_t* t;
  char err[512];
  ASSERT_EQ(ATH_EIO, exec_id(w, "echo", "1", "refused", &t, err, sizeof(err)));
  faultvfs_fail_syncs(0); /* the disk answers again, but the file is bad */
  char why[512];
  uint64_t t0 = uv_hrtime();
  while (ath_world_health(w, why, sizeof(why)) != ATH_ESTORE || strstr(why, "stopped") == NULL) {
    ASSERT_LT(ms_since(t0), 10000);
    uv_sleep(1);
  }
  ASSERT_NOT_NULL(strstr(why, "store stopped taking writes (restart to recover)"));
  ASSERT_NOT_NULL(strstr(why, "quick_check"));
  ASSERT_EQ(ATH_ESTORE, exec_id(w, "echo", "1", "after", &t, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "stopped taking writes"));
  close_world(w);
  ASSERT_EQ(1, count_lines(fx.log_path, "store stopped taking writes (restart to recover)"));
  store_fixture_teardown(&fx);
  return 0;
}

/* A fault at every write and sync in turn (one at a time, as SQLite's own
 * I/O error tests do): the 1st, 2nd, ... 40th operation from some point
 * fails once, with a full disk or an I/O error (a write's, an fsync's),
 * while a producer executes. Each execute either returns a handle, and its
 * task is there after a restart and completes, or answers ENOSPC / EIO,
 * and its task is nowhere; the store recovers alone each time. */
TEST_IMPL(store_fault_every_write) {
  setup();
  ath_world_t* w = open_world();
  enum { K = 40, CAP = 2000 };
  static char acked[CAP][32], refused[CAP][32];
  int nacked = 0, nrefused = 0, seq = 0;
  for (int k = 1; k <= K; k++) {
    int64_t before = faultvfs_refused();
    faultvfs_fail_once(k, k % 2 ? SQLITE_FULL : SQLITE_IOERR_WRITE);
    uint64_t t0 = uv_hrtime();
    char why[512];
    while (faultvfs_refused() == before || ath_world_health(w, why, sizeof(why)) != 0) {
      ASSERT_LT(ms_since(t0), 10000);
      ASSERT_LT(nacked, CAP);
      ASSERT_LT(nrefused, CAP);
      char id[32], err[512];
      snprintf(id, sizeof(id), "w%d-%d", k, seq++);
      ath_task_t* t;
      int rc = exec_id(w, "echo", "1", id, &t, err, sizeof(err));
      if (rc == 0) {
        ath_task_release(t);
        snprintf(acked[nacked++], 32, "%s", id);
        continue;
      }
      if (rc != ATH_ENOSPC && rc != ATH_EIO) {
        fprintf(stderr, "fault at operation %d: execute %s: %s: %s\n", k, id, ath_err_name(rc), err);
        abort();
      }
      snprintf(refused[nrefused++], 32, "%s", id);
      wait_healthy(w);
    }
  }
  close_world(w);
  fprintf(stderr, "faults at operations 1..%d: %d executes acknowledged, %d refused\n", K, nacked, nrefused);
  ASSERT_GT(nrefused, 0);
  w = open_world();
  for (int i = 0; i < nacked; i++)
    assert_completed(w, acked[i], NULL);
  for (int i = 0; i < nrefused; i++)
    assert_absent(w, refused[i]);
  close_world(w);
  store_fixture_teardown(&fx);
  return 0;
}
