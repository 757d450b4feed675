/* Simulated power loss (SEMANTICS §13.1): a file-mode producer runs in a
 * child process over the test VFS (faultvfs.h), which at a random write,
 * sync or truncate of athena.db or its WAL keeps a random subset of what
 * was not synced yet (or none of it) and ends the process, as a power cut
 * would. After each cut the database passes PRAGMA integrity_check, and
 * a world opens on it (recovery); at the end every task whose execute
 * returned before a cut is there and completes.
 *
 * ATHENA_POWERLOSS_CUTS sets the number of cuts (50 by default; the long
 * run of README.md uses 1000), ATHENA_POWERLOSS_SEED the random seed (the
 * one used is printed on failure). */
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "athena.h"
#include "faultvfs.h"
#include "internal.h"
#include "store_fixture.h"
#include "task.h"

static store_fixture_t fx;
static char ack_path[600];
static unsigned seed;

/* Per cut at most this many executes; the cut falls within the first
 * this many writes, syncs and truncates (a few per commit in file mode; a
 * hybrid commit writes the pages of a whole flushInterval). */
static int max_executes(int mode) {
  return mode == ATH_PERSIST_FILE ? 150 : 400;
}
static int max_ops(int mode) {
  return mode == ATH_PERSIST_FILE ? 700 : 800;
}

/* hybrid: the child's world, whose commits a WAL sync makes durable */
static ath_world_t* child_world;
static int ack_fd = -1;

/* A sync of the store's files (hybrid: the WAL's, at a checkpoint) makes
 * every commit so far durable: the ack file says up to which generation. */
static void synced(void) {
  ath_world_t* w = child_world;
  if (w == NULL)
    return;
  uv_mutex_lock(&w->lock);
  uint64_t g = w->committed_gen;
  uv_mutex_unlock(&w->lock);
  char line[64];
  int n = snprintf(line, sizeof(line), "sync %llu\n", (unsigned long long)g);
  if (write(ack_fd, line, (size_t)n) != n)
    _exit(6);
}

static void setup(void) {
  store_fixture_setup(&fx, "powerloss", "pljobs",
                      "require('athena').activity('echo', function(ctx, input) return input end)\n");
  snprintf(ack_path, sizeof(ack_path), "%s/acks", fx.dir);
  const char* s = getenv("ATHENA_POWERLOSS_SEED");
  seed = s ? (unsigned)strtoul(s, NULL, 10) : (unsigned)time(NULL) ^ (unsigned)getpid();
}

static int open_world(int mode, ath_world_t** out, char* err, size_t errlen) {
  static const char* const names[] = {"echo"};
  return store_fixture_world(&fx, mode, names, 1, out, err, errlen);
}

/* The child: a producer on a world whose disk loses power at operation
 * `cut`. Acknowledged ids go to the ack file, one write(2) each, after
 * execute returned. Never returns. */
static void child(int mode, int round, int64_t cut, unsigned cut_seed, int keep_none) {
  faultvfs_install();
  faultvfs_arm_cut(cut, cut_seed, keep_none);
  int fd = ack_fd = open(ack_path, O_WRONLY | O_APPEND | O_CREAT, 0600);
  if (fd < 0)
    _exit(4);
  char line[80];
  int n = snprintf(line, sizeof(line), "round %d\n", round);
  if (write(fd, line, (size_t)n) != n)
    _exit(6);
  ath_world_t* w;
  char err[512];
  if (open_world(mode, &w, err, sizeof(err)) != 0) {
    fprintf(stderr, "round %d: the world does not start after the cut: %s\n", round, err);
    _exit(3);
  }
  if (mode == ATH_PERSIST_HYBRID) {
    child_world = w;
    faultvfs_on_sync(synced);
  }
  for (int i = 0; i < max_executes(mode); i++) {
    char id[64];
    snprintf(id, sizeof(id), "r%d-%d", round, i);
    size_t len = 4;
    char* p = strdup("1234");
    ath_exec_opts_t o = {0};
    o.id = id;
    ath_task_t* t;
    int rc = ath_world_execute(w, "echo", 1, &p, &len, NULL, &o, &t, err, sizeof(err));
    if (rc != 0) {
      fprintf(stderr, "round %d: execute: %s\n", round, err);
      _exit(5);
    }
    ath_task_release(t);
    uv_mutex_lock(&w->lock);
    uint64_t gen = w->gen; /* its enqueue was marked in this generation or before */
    uv_mutex_unlock(&w->lock);
    n = snprintf(line, sizeof(line), "ack %s %llu\n", id, (unsigned long long)gen);
    if (write(fd, line, (size_t)n) != n)
      _exit(6);
    /* hybrid: acknowledgments spread over many commits (one per
     * flushInterval): every 50, wait for the commit of those */
    for (uint64_t t0 = uv_hrtime(); mode == ATH_PERSIST_HYBRID && i % 50 == 49;) {
      uv_mutex_lock(&w->lock);
      int done = w->committed_gen >= gen;
      uv_mutex_unlock(&w->lock);
      if (done)
        break;
      if (uv_hrtime() - t0 > 10000000000u)
        _exit(8);
      uv_sleep(1);
    }
  }
  faultvfs_cut_now(); /* the cut did not come: it comes now */
  _exit(7);
}

static void integrity_ok(int round) {
  char path[600];
  snprintf(path, sizeof(path), "%s/athena.db", fx.store_path);
  sqlite3* db;
  ASSERT_EQ(SQLITE_OK, sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL));
  sqlite3_stmt* st;
  ASSERT_EQ(SQLITE_OK, sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL));
  ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
  const char* res = (const char*)sqlite3_column_text(st, 0);
  if (strcmp(res, "ok") != 0) {
    fprintf(stderr, "round %d (seed %u): integrity_check: %s\n", round, seed, res);
    abort();
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
}

/* Every id that must have survived exists and completes: in file mode
 * every acknowledged one; in hybrid the ones whose generation a sync
 * covered before the cut (their round's highest "sync"). Returns how many;
 * *acked gets how many were acknowledged. */
static int check_acks(ath_world_t* w, int mode, int* acked) {
  FILE* f = fopen(ack_path, "r");
  ASSERT_NOT_NULL(f);
  char line[128];
  /* a round's lines, then its acks checked against its last sync */
  enum { CAP = 4096 };
  static char ids[CAP][48];
  static unsigned long long gens[CAP];
  int n = 0, must = 0, done = 0;
  unsigned long long synced_gen = 0;
  *acked = 0;
  while (!done) {
    int eof = fgets(line, sizeof(line), f) == NULL;
    if (eof || strncmp(line, "round ", 6) == 0) {
      for (int i = 0; i < n; i++) {
        if (mode == ATH_PERSIST_HYBRID && gens[i] > synced_gen)
          continue;
        ath_task_t* t = NULL;
        if (ath_world_find(w, ids[i], &t) != 0) {
          fprintf(stderr, "acknowledged task %s (generation %llu, synced up to %llu) was lost (seed %u)\n",
                  ids[i], gens[i], synced_gen, seed);
          abort();
        }
        ASSERT_OK(ath_world_wait(w, t, 30000));
        ASSERT_EQ(ATH_COMPLETED, ath_task_status(w, t));
        ath_task_release(t);
        must++;
      }
      n = 0;
      synced_gen = 0;
      done = eof;
      continue;
    }
    unsigned long long g;
    char id[48];
    if (sscanf(line, "sync %llu", &g) == 1) {
      synced_gen = g > synced_gen ? g : synced_gen;
    } else if (sscanf(line, "ack %47s %llu", id, &g) == 2) {
      ASSERT_LT(n, CAP);
      snprintf(ids[n], sizeof(ids[n]), "%s", id);
      gens[n++] = g;
      ++*acked;
    }
  }
  fclose(f);
  return must;
}

static void run_cuts(int mode, int cuts) {
  unsigned rs = seed;
  int lost_power = 0;
  for (int round = 1; round <= cuts; round++) {
    int64_t cut = 1 + rand_r(&rs) % max_ops(mode);
    unsigned cut_seed = (unsigned)rand_r(&rs);
    int keep_none = round % 4 == 0;
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0)
      child(mode, round, cut, cut_seed, keep_none);
    int status;
    ASSERT_EQ(pid, waitpid(pid, &status, 0));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fprintf(stderr, "round %d (seed %u, cut at %lld): the child ended with status %d\n", round, seed,
              (long long)cut, status);
      abort();
    }
    lost_power++;
    integrity_ok(round);
  }
  ASSERT_EQ(cuts, lost_power);
}

static void power_loss(int mode, int default_cuts) {
  setup();
  const char* c = getenv("ATHENA_POWERLOSS_CUTS");
  int cuts = c ? atoi(c) : default_cuts;
  run_cuts(mode, cuts);
  ath_world_t* w;
  char err[512];
  if (open_world(mode, &w, err, sizeof(err)) != 0) {
    fprintf(stderr, "recovery after %d cuts (seed %u): %s\n", cuts, seed, err);
    abort();
  }
  int acked, must = check_acks(w, mode, &acked);
  fprintf(stderr, "%s, %d power cuts: %d tasks acknowledged, %d of them synced before a cut: all there and completed (seed %u)\n",
          mode == ATH_PERSIST_FILE ? "file" : "hybrid", cuts, acked, must, seed);
  ASSERT_GT(must, 0);
  if (mode == ATH_PERSIST_FILE)
    ASSERT_EQ(acked, must);
  int drained, requeued;
  ASSERT_OK(ath_world_shutdown(w, 5000, &drained, &requeued, NULL));
  ath_world_free(w);
  integrity_ok(0);
  store_fixture_teardown(&fx);
}

TEST_IMPL(store_power_loss_file) {
  power_loss(ATH_PERSIST_FILE, 50);
  return 0;
}

/* hybrid (synchronous=NORMAL): a commit is durable once a WAL sync (at a
 * checkpoint) follows it; what was acknowledged but not synced may go, as
 * SEMANTICS §13.1 says. */
TEST_IMPL(store_power_loss_hybrid) {
  power_loss(ATH_PERSIST_HYBRID, 20);
  return 0;
}
