/* bench/queue_pg.c: the PostgreSQL queue provider's database-side ceiling
 * (engine/backend/queue_pg.c, no engine, no Lua), as distributed.md §4.1
 * measured it with its prototype: enqueue N no-op tasks in 1000-row
 * statements, then T client threads (one connection and node incarnation
 * each, "hosts") drain them, each cycle finishing the previous batch and
 * claiming the next one.
 *
 *   build/bench_queue_pg [-n tasks] [-b batch] [-t threads] [-r rounds] [-q] [URL]
 *
 * URL: a libpq conninfo / postgres:// URL, else the file named by
 * ATHENA_PG_URL_FILE (scripts/pg-test writes one). -q: no NOTIFY (poll-only).
 * Each mode runs on a fresh schema "qpg_bench", -r rounds of the three:
 *   pipelined   finish(previous batch) + claim(next) in one round trip,
 *               two commits (the writes', then the claim's)
 *   one-commit  the same in one transaction: one round trip, one commit
 *   separate    finish, then claim: two round trips, two commits
 * and prints tasks/s processed (claimed and finished, fenced). */
#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "athena.h"
#include "queue_pg.h"
#include "util.h"

static const char* url;
static int n_tasks = 200000, batch = 256, n_threads = 3, notify = 1, rounds = 1;
static const char* const MODES[] = {"pipelined", "one-commit", "separate"};

static void die(const char* what, ath_qpg_t* q) {
  fprintf(stderr, "bench_queue_pg: %s: %s\n", what, q ? ath__qpg_errmsg(q) : "");
  exit(1);
}

static ath_qpg_t* connect_q(void) {
  ath_qpg_t* q = NULL;
  char err[256];
  if (ath__qpg_open(url, "qpg_bench", notify, &q, err, sizeof(err)) != 0) {
    fprintf(stderr, "bench_queue_pg: connect: %s\n", err);
    exit(1);
  }
  return q;
}

/* Drops and recreates the schema, then enqueues; returns the seconds spent
 * enqueueing. */
static double setup(void) {
  PGconn* c = PQconnectdb(url);
  PQclear(PQexec(c, "SET client_min_messages = warning"));
  PGresult* r = PQexec(c, "DROP SCHEMA IF EXISTS qpg_bench CASCADE");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    fprintf(stderr, "bench_queue_pg: %s", PQerrorMessage(c));
    exit(1);
  }
  PQclear(r);
  PQfinish(c);
  ath_qpg_t* q = connect_q();
  if (ath__qpg_migrate(q, NULL) != 0)
    die("migrate", q);
  ath_queue_insert_t* rows = calloc(1000, sizeof(*rows));
  ath_queue_inserted_t* out = calloc(1000, sizeof(*out));
  char(*ids)[24] = calloc(1000, 24);
  uint64_t t0 = ath__mono_ns();
  for (int base = 0; base < n_tasks; base += 1000) {
    int k = n_tasks - base < 1000 ? n_tasks - base : 1000;
    for (int i = 0; i < k; i++) {
      snprintf(ids[i], 24, "b%d", base + i);
      rows[i] = (ath_queue_insert_t){.id = ids[i], .name = "noop", .queue = "default",
                                   .input = "{}", .max_attempts = 3};
    }
    if (ath__qpg_insert(q, rows, (size_t)k, out) != 0)
      die("insert", q);
  }
  double s = (double)(ath__mono_ns() - t0) / 1e9;
  free(rows);
  free(out);
  free(ids);
  ath__qpg_close(q);
  return s;
}

typedef struct {
  int mode; /* index in MODES */
  int done, lost;
  pthread_barrier_t* start;
} host_t;

static void* host(void* arg) {
  host_t* h = arg;
  ath_qpg_t* q = connect_q();
  const char* queues[] = {"default", NULL};
  ath_queue_node_t n = {.node_id = "bench", .queues = queues, .slots = batch, .ttl_ms = 30000,
                      .interval_ms = 5000};
  ath_queue_lease_t lease;
  if (ath__qpg_node_register(q, &n, ath__mono_ns(), &lease) != 0)
    die("register", q);
  ath_queue_outcome_t* o = calloc((size_t)batch, sizeof(*o));
  uint8_t* applied = calloc((size_t)batch, 1);
  size_t pending = 0;
  pthread_barrier_wait(h->start);
  for (;;) {
    ath_queue_tasks_t t;
    ath_queue_claim_t cl = {.queue = "default", .n = batch, .out = &t};
    int rc;
    if (h->mode < 2) {
      ath_queue_cycle_t c = {.outcomes = o, .n_outcomes = pending, .applied = applied,
                           .lease = lease.incarnation, .claims = &cl, .n_claims = 1,
                           .one_commit = h->mode == 1};
      rc = ath__qpg_cycle(q, &c);
    } else {
      rc = ath__qpg_finish(q, lease.incarnation, o, pending, applied);
      if (rc == 0)
        rc = ath__qpg_claim(q, lease.incarnation, "default", batch, &t);
    }
    if (rc != 0)
      die("cycle", q);
    for (size_t i = 0; i < pending; i++) {
      h->done += applied[i];
      h->lost += !applied[i];
    }
    pending = t.n;
    for (size_t i = 0; i < t.n; i++)
      o[i] = (ath_queue_outcome_t){.seq = t.rows[i].seq, .attempt = t.rows[i].attempt,
                                 .status = ATH_COMPLETED, .result = "null"};
    ath__qpg_tasks_free(&t);
    if (pending == 0)
      break;
  }
  free(o);
  free(applied);
  ath__qpg_close(q);
  return NULL;
}

static void run(int mode) {
  double enq = setup();
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, (unsigned)n_threads + 1);
  host_t* h = calloc((size_t)n_threads, sizeof(*h));
  pthread_t* th = calloc((size_t)n_threads, sizeof(*th));
  for (int i = 0; i < n_threads; i++) {
    h[i] = (host_t){.mode = mode, .start = &start};
    pthread_create(&th[i], NULL, host, &h[i]);
  }
  pthread_barrier_wait(&start);
  uint64_t t0 = ath__mono_ns();
  int done = 0, lost = 0;
  for (int i = 0; i < n_threads; i++) {
    pthread_join(th[i], NULL);
    done += h[i].done;
    lost += h[i].lost;
  }
  double s = (double)(ath__mono_ns() - t0) / 1e9;
  pthread_barrier_destroy(&start);
  printf("%-10s %d tasks, %d hosts, batch %d, notify %s: enqueue %.0f/s, processed %.0f tasks/s"
         " (%.2f s)%s\n",
         MODES[mode], done, n_threads, batch, notify ? "on" : "off",
         n_tasks / enq, done / s, s, lost || done != n_tasks ? "  MISMATCH" : "");
  if (lost || done != n_tasks)
    exit(1);
  free(h);
  free(th);
}

int main(int argc, char** argv) {
  int opt;
  while ((opt = getopt(argc, argv, "n:b:t:r:q")) != -1) {
    switch (opt) {
      case 'n': n_tasks = atoi(optarg); break;
      case 'b': batch = atoi(optarg); break;
      case 't': n_threads = atoi(optarg); break;
      case 'r': rounds = atoi(optarg); break;
      case 'q': notify = 0; break;
      default:
        fprintf(stderr, "usage: %s [-n tasks] [-b batch] [-t threads] [-r rounds] [-q] [URL]\n", argv[0]);
        return 2;
    }
  }
  static char buf[1024];
  if (optind < argc) {
    url = argv[optind];
  } else if (getenv("ATHENA_PG_URL_FILE") != NULL) {
    FILE* f = fopen(getenv("ATHENA_PG_URL_FILE"), "r");
    if (f == NULL || fgets(buf, sizeof(buf), f) == NULL) {
      fprintf(stderr, "bench_queue_pg: cannot read ATHENA_PG_URL_FILE\n");
      return 1;
    }
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    url = buf;
  } else {
    fprintf(stderr, "bench_queue_pg: give a URL or set ATHENA_PG_URL_FILE\n");
    return 2;
  }
  if (n_tasks <= 0 || batch <= 0 || n_threads <= 0)
    return 2;
  for (int r = 0; r < rounds; r++)
    for (int m = 0; m < 3; m++)
      run(m);
  return 0;
}
