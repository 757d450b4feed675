/* The SQLite persistence provider (SEMANTICS §13): one database in WAL
 * mode, written only by the world's store thread, which commits each group
 * of changes in one transaction. The queue itself lives in C memory; this
 * is its journal, read back at start() to recover. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>
#include "db.h"
#include "internal.h"
#include "store.h"

#define SCHEMA_VERSION 8
const int ath__store_schema_version = SCHEMA_VERSION;
#define MAX_READERS 8

/* Each task row binds ROW_PARAMS parameters, numbered from 1 (row k's
 * from k * ROW_PARAMS + 1): ?1 id, ?2 name, ?3 status, ?4 attempt,
 * ?5 max_attempts, ?6 strategy, ?7 priority, ?8 queue, ?9 seq, ?10
 * created_at, ?11 scheduled_at, ?12 ready_at, ?13 started_at, ?14
 * completed_at, ?15 worker_id, ?16 input, ?17 result, ?18 error, ?19
 * heartbeat, ?20 last_heartbeat, ?21 keep_error (the update's), ?22
 * parent_id, ?23 parent_seq, ?24 call. New rows are inserted ROWS_PER_INSERT to a
 * statement when they come in such runs: a statement's fixed cost (cursor
 * setup on the table and its indexes) is then paid once per run. */
#define ROW_PARAMS 24
#define ROWS_PER_INSERT 32

/* What the parameters of a multi-row statement hold. SQLite keeps
 * bindings across sqlite3_reset, and a row mostly repeats what the same
 * place held in the statement before (its activity, queue, status,
 * attempts, the columns it leaves NULL): binding those again was half of
 * the ~22 binds a row, which took a fifth of the store thread's
 * instructions. A text is the same value when its pointer and length are
 * (SQLITE_STATIC: SQLite reads it when the statement runs). */
enum { PARAM_UNKNOWN, PARAM_NULL, PARAM_INT, PARAM_TEXT };
#define MANY_PARAMS (ROWS_PER_INSERT * ROW_PARAMS + 1)
typedef struct {
  const void* p[MANY_PARAMS]; /* a text's pointer */
  int64_t v[MANY_PARAMS];     /* an int's value, a text's length */
  uint8_t kind[MANY_PARAMS];  /* PARAM_* */
} params_t;

/* A read-only connection, with its lookup by id prepared. */
typedef struct {
  sqlite3* db;
  sqlite3_stmt* get;
} reader_t;

struct ath_store_s {
  sqlite3* db;
  sqlite3_stmt* upsert;
  sqlite3_stmt* insert;  /* a new row (the upsert when it turns out not to be) */
  sqlite3_stmt* insert_many; /* ROWS_PER_INSERT new rows in one statement */
  sqlite3_stmt* replace_many; /* ROWS_PER_INSERT rows written before, whole */
  sqlite3_stmt* replace;      /* one of them */
  params_t many_held, replace_held; /* what their parameters hold */
  sqlite3_stmt* update;  /* a row a commit wrote before: what changes */
  sqlite3_stmt* del;
  sqlite3_stmt* supsert;
  sqlite3_stmt* sdel;
  sqlite3_stmt* event;   /* appends one workflow event */
  sqlite3_stmt* events;  /* appends EVENTS_PER_INSERT workflow events */
  /* Idle read connections, taken by one reader at a time. */
  uv_mutex_t rlock;
  reader_t* idle[MAX_READERS];
  int nidle;
  int full_sync;
  char path[4096];
};

#define TASK_COLUMNS                                                                   \
  "id, name, status, attempt, max_attempts, strategy, priority, queue, seq, created_at," \
  " scheduled_at, ready_at, started_at, completed_at, worker_id, input, result, error,"  \
  " heartbeat, last_heartbeat, parent_id,"                                             \
  " (SELECT group_concat(event, char(30)) FROM (SELECT event FROM workflow_events e"   \
  "   WHERE e.task_seq = tasks.seq ORDER BY e.n)), call"


/* Migrations, applied in order from the database's user_version. Each moves
 * the schema one version up; all pending ones run in one transaction. */
/* The condition of the read indexes, repeated word for word in every read
 * (SQLite uses a partial index only for a query whose WHERE holds its terms). */
#define TERMINAL_ROW "status >= 5"
_Static_assert(ATH_COMPLETED == 5 && ATH_IS_TERMINAL(5) && !ATH_IS_TERMINAL(4),
               "TERMINAL_ROW names the first terminal status");

static const char* const migrations[SCHEMA_VERSION] = {
  /* 0 -> 1: tasks, keyed by creation order so that inserts append: ids
   * are random (uuid v4) and an index on them would dirty pages all over
   * the file on every commit. Lookups by id are served from memory. */
  "CREATE TABLE tasks ("
  " seq INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL, status INTEGER NOT NULL,"
  " attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL, strategy INTEGER NOT NULL,"
  " priority INTEGER NOT NULL, queue TEXT NOT NULL,"
  " created_at INTEGER NOT NULL, scheduled_at INTEGER NOT NULL, ready_at INTEGER NOT NULL,"
  " started_at INTEGER, completed_at INTEGER, worker_id INTEGER,"
  " input TEXT NOT NULL, result TEXT, error TEXT);",
  /* 1 -> 2: heartbeat checkpoints survive restarts */
  "ALTER TABLE tasks ADD COLUMN heartbeat TEXT;"
  "ALTER TABLE tasks ADD COLUMN last_heartbeat INTEGER;",
  /* 2 -> 3: schedules */
  "CREATE TABLE schedules ("
  " id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, input TEXT NOT NULL, cron TEXT,"
  " once_at INTEGER, local_tz INTEGER NOT NULL, catch_up INTEGER NOT NULL,"
  " overlap_skip INTEGER NOT NULL, paused INTEGER NOT NULL, has_priority INTEGER NOT NULL,"
  " priority INTEGER NOT NULL, strategy INTEGER NOT NULL, queue TEXT,"
  " next_ms INTEGER, last_ms INTEGER, total INTEGER NOT NULL, skipped INTEGER NOT NULL);",
  /* 3 -> 4: workflows: the owning workflow of a task, a workflow's history
   * (events joined by commas, as the engine keeps them) */
  "ALTER TABLE tasks ADD COLUMN parent_id TEXT;"
  "ALTER TABLE tasks ADD COLUMN history TEXT;",
  /* 4 -> 5: finished tasks leave RAM once committed, and are read from
   * here: by id, by status or name newest first, by workflow */
  "CREATE INDEX tasks_id ON tasks (id);"
  "CREATE INDEX tasks_status ON tasks (status, created_at);"
  "CREATE INDEX tasks_name ON tasks (name, created_at);"
  "CREATE INDEX tasks_parent ON tasks (parent_id, seq) WHERE parent_id IS NOT NULL;",
  /* 5 -> 6: per-call limits of the tasks a workflow starts (JSON); a
   * workflow's history becomes one row per event, appended, never
   * rewritten (the history column is moved there and left NULL); a deleted
   * task takes its events along */
  "ALTER TABLE tasks ADD COLUMN call TEXT;"
  "CREATE TABLE workflow_events (task_seq INTEGER NOT NULL, n INTEGER NOT NULL,"
  " event TEXT NOT NULL, PRIMARY KEY (task_seq, n)) WITHOUT ROWID;"
  "INSERT INTO workflow_events SELECT t.seq, j.key, j.value FROM tasks t,"
  " json_each('[' || t.history || ']') j WHERE t.history IS NOT NULL AND t.history <> '';"
  "UPDATE tasks SET history = NULL WHERE history IS NOT NULL;"
  "CREATE TRIGGER tasks_events AFTER DELETE ON tasks BEGIN"
  " DELETE FROM workflow_events WHERE task_seq = old.seq; END;",
  /* 6 -> 7: the read indexes hold finished rows only (TERMINAL_ROW): every
   * read of the store is of tasks that left RAM, which are finished, so a
   * queued or running row is written to the table alone, and an index
   * entry is written once, when its task finishes, instead of on every
   * change of status. tasks_name goes: every read names one status, and
   * SQLite chose tasks_status for each of them, name or not. */
  "DROP INDEX tasks_id; DROP INDEX tasks_status; DROP INDEX tasks_name; DROP INDEX tasks_parent;"
  "CREATE INDEX tasks_id ON tasks (id) WHERE " TERMINAL_ROW ";"
  "CREATE INDEX tasks_status ON tasks (status, created_at) WHERE " TERMINAL_ROW ";"
  "CREATE INDEX tasks_parent ON tasks (parent_id, seq) WHERE parent_id IS NOT NULL AND " TERMINAL_ROW ";",
  /* 7 -> 8, three changes and one rebuild of tasks:
   * - tasks without NOT NULL: a multi-row REPLACE that may abort (a NOT
   *   NULL column without a default does) keeps a statement journal, into
   *   which SQLite copies (in WAL mode) every page the statement changes,
   *   and each statement of a finishing batch changes ~32 pages of
   *   tasks_id (ids are random): ~4.6k of ~29k instructions per task in
   *   the provider alone, batches of 1,000 enqueued then finished (less in
   *   the engine's commits, whose groups vary). The engine never writes a
   *   NULL there (check_rows), and a read refuses a row without its id,
   *   name, queue or input.
   * - a workflow's tasks are indexed by its seq (parent_seq), not by its
   *   id: an entry of two integers instead of a 36-byte uuid text costs
   *   less to place and splits pages less often. Existing rows get their
   *   workflow's seq: the latest row of that id created before them.
   * - workflow_events becomes a table of rowids with a unique index on
   *   (task_seq, n): keyed by (task_seq, n) itself, the events of many
   *   workflows at once were written into the middle of the table, and the
   *   splits of its full pages cost more than the index's small entries do
   *   where events are appended to the table (~1.4k of ~38k instructions
   *   per workflow step). */
  "CREATE INDEX tasks_migrate8 ON tasks (id, seq);"
  "CREATE TABLE tasks8 (seq INTEGER PRIMARY KEY, id TEXT, name TEXT, status INTEGER, attempt INTEGER,"
  " max_attempts INTEGER, strategy INTEGER, priority INTEGER, queue TEXT, created_at INTEGER,"
  " scheduled_at INTEGER, ready_at INTEGER, started_at INTEGER, completed_at INTEGER, worker_id INTEGER,"
  " input TEXT, result TEXT, error TEXT, heartbeat TEXT, last_heartbeat INTEGER, parent_id TEXT,"
  " history TEXT, call TEXT, parent_seq INTEGER);"
  "INSERT INTO tasks8 SELECT seq, id, name, status, attempt, max_attempts, strategy, priority, queue,"
  " created_at, scheduled_at, ready_at, started_at, completed_at, worker_id, input, result, error,"
  " heartbeat, last_heartbeat, parent_id, history, call,"
  " (SELECT max(p.seq) FROM tasks p WHERE p.id = t.parent_id AND p.seq < t.seq) FROM tasks t ORDER BY seq;"
  "DROP TABLE tasks;" /* its indexes and the trigger go along */
  "ALTER TABLE tasks8 RENAME TO tasks;"
  "CREATE INDEX tasks_id ON tasks (id) WHERE " TERMINAL_ROW ";"
  "CREATE INDEX tasks_status ON tasks (status, created_at) WHERE " TERMINAL_ROW ";"
  "CREATE INDEX tasks_parent ON tasks (parent_seq, seq) WHERE parent_seq IS NOT NULL AND " TERMINAL_ROW ";"
  "ALTER TABLE workflow_events RENAME TO workflow_events7;"
  "CREATE TABLE workflow_events (task_seq INTEGER NOT NULL, n INTEGER NOT NULL, event TEXT NOT NULL);"
  "CREATE UNIQUE INDEX workflow_events_n ON workflow_events (task_seq, n);"
  "INSERT INTO workflow_events SELECT task_seq, n, event FROM workflow_events7 ORDER BY task_seq, n;"
  "DROP TABLE workflow_events7;"
  "CREATE TRIGGER tasks_events AFTER DELETE ON tasks BEGIN"
  " DELETE FROM workflow_events WHERE task_seq = old.seq; END;",
};

static int fail(sqlite3* db, int rc, char* err, size_t errlen, const char* what) {
  snprintf(err, errlen, "%s: %s", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  return ATH_ESTORE;
}

static int exec(sqlite3* db, const char* sql, char* err, size_t errlen) {
  int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? 0 : fail(db, rc, err, errlen, sql);
}

/* Workflow events go EVENTS_PER_INSERT to a statement, whichever rows they
 * belong to (a workflow step appends two): per event, a statement of its
 * own cost about as much as the row it writes. */
#define EVENTS_PER_INSERT 32
#define EVENT_INSERT "INSERT OR IGNORE INTO workflow_events (task_seq, n, event) VALUES "

/* Writes into sql an INSERT of `rows` task rows, then `tail`. */
static void insert_sql(char* sql, size_t cap, const char* verb, int rows, const char* tail) {
  size_t n = (size_t)snprintf(sql, cap,
                              "%s INTO tasks (id, name, status, attempt, max_attempts, strategy,"
                              " priority, queue, seq, created_at, scheduled_at, ready_at, started_at,"
                              " completed_at, worker_id, input, result, error, heartbeat, last_heartbeat,"
                              " parent_id, history, call, parent_seq) VALUES ", verb);
  for (int k = 0; k < rows && n < cap; k++) {
    int o = k * ROW_PARAMS;
    n += (size_t)snprintf(sql + n, cap - n, "%s(", k ? "," : "");
    for (int i = 1; i <= 20 && n < cap; i++)
      n += (size_t)snprintf(sql + n, cap - n, "?%d,", o + i);
    if (n < cap)
      n += (size_t)snprintf(sql + n, cap - n, "?%d,NULL,?%d,?%d)", o + 22, o + 24, o + 23);
  }
  if (n < cap)
    snprintf(sql + n, cap - n, "%s", tail);
}

static int query_int(sqlite3* db, const char* sql, int64_t* out) {
  sqlite3_stmt* st;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK)
    return rc;
  rc = sqlite3_step(st);
  *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_finalize(st);
  return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void reader_close(reader_t* r) {
  sqlite3_finalize(r->get);
  sqlite3_close(r->db);
  free(r);
}

static void disconnect_db(ath_store_t* s);

static void store_close(void* self) {
  ath_store_t* s = self;
  if (s == NULL)
    return;
  for (int i = 0; i < s->nidle; i++)
    reader_close(s->idle[i]);
  uv_mutex_destroy(&s->rlock);
  disconnect_db(s);
  free(s);
}

/* Refuses, without writing anything, a database newer than this build or
 * one that is not Athena's. */
static int check_file(sqlite3* db, char* err, size_t errlen) {
  int64_t version, tables;
  int rc = query_int(db, "PRAGMA user_version", &version);
  if (rc != SQLITE_OK)
    return fail(db, rc, err, errlen, "cannot read the database");
  if (version > SCHEMA_VERSION) {
    snprintf(err, errlen, "database schema version %lld is newer than this build (%d)",
             (long long)version, SCHEMA_VERSION);
    return ATH_EINVAL;
  }
  if (version == 0) {
    rc = query_int(db, "SELECT count(*) FROM sqlite_master", &tables);
    if (rc != SQLITE_OK)
      return fail(db, rc, err, errlen, "cannot read the database");
    if (tables > 0) {
      snprintf(err, errlen, "%s", "not an Athena database (it has tables but no schema version)");
      return ATH_EINVAL;
    }
  }
  return 0;
}

/* Brings the schema to SCHEMA_VERSION (check_file ran first). */
static int migrate(sqlite3* db, char* err, size_t errlen) {
  int64_t version;
  int rc = query_int(db, "PRAGMA user_version", &version);
  if (rc != SQLITE_OK)
    return fail(db, rc, err, errlen, "cannot read the database");
  if (version == SCHEMA_VERSION)
    return 0;
  if ((rc = exec(db, "BEGIN IMMEDIATE", err, errlen)) != 0)
    return rc;
  for (int64_t v = version; v < SCHEMA_VERSION; v++) {
    if ((rc = exec(db, migrations[v], err, errlen)) != 0) {
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      return rc;
    }
  }
  char sql[64];
  snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", SCHEMA_VERSION);
  if ((rc = exec(db, sql, err, errlen)) != 0 || (rc = exec(db, "COMMIT", err, errlen)) != 0) {
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  return 0;
}

/* Opens s->db on s->path and makes it ready to write: pragmas, schema,
 * statements. */
static int connect_db(ath_store_t* s, char* err, size_t errlen) {
  ath__sqlite_setup(); /* before SQLite's first use in the process */
  /* the store's VFS gathers the writes of a commit (SQLite's default VFS
   * when it is not there) */
  int rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           ath__sqlite_store_vfs());
  if (rc != SQLITE_OK)
    return fail(s->db, rc, err, errlen, s->path);
  sqlite3_extended_result_codes(s->db, 1); /* a full disk and I/O errors apart (store_fault) */
  sqlite3_busy_timeout(s->db, 5000);
  rc = check_file(s->db, err, errlen); /* before anything writes to it */
  /* A new file gets 16 KiB pages (SQLite's default is 4): a workflow's
   * steps enter tasks_id, tasks_parent and workflow_events_n where their
   * workflow's entries are, at as many places in each index as workflows
   * run, and the pages that fill there split (balance_nonroot: 18 % of
   * the store's instructions with 200 workflows of 100 steps). Larger
   * pages split less often and a commit writes fewer WAL frames: the
   * commit of 20,000 such steps took ~15 % less time, of 20,000 plain tasks
   * ~5 % less (stop 32). An existing file keeps its own size: SQLite
   * changes it only by VACUUM, which WAL mode refuses. */
  if (rc == 0)
    rc = exec(s->db, "PRAGMA page_size=16384", err, errlen);
  if (rc == 0)
    rc = exec(s->db, "PRAGMA journal_mode=WAL", err, errlen);
  if (rc == 0)
    rc = exec(s->db, s->full_sync ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", err, errlen);
  /* A page cache big enough for the indexes of a large queue: inserts by
   * random ids otherwise read their pages back from the OS on each commit. */
  if (rc == 0)
    rc = exec(s->db, "PRAGMA cache_size=-65536", err, errlen);
  if (rc == 0)
    rc = migrate(s->db, err, errlen);
  /* A statement journal (the single-row statements that may abort keep
   * one; since version 8 the multi-row REPLACE does not): in memory, not in
   * a temporary file created for each commit (this SQLite's default,
   * TEMP_STORE=1, spills it there past 64 KiB). Set after the migrations,
   * whose statements over every row may journal the whole table. And the
   * rows a REPLACE writes keep their
   * workflow events only while its delete fires no trigger:
   * recursive_triggers off, whatever the build's default. */
  if (rc == 0)
    rc = exec(s->db, "PRAGMA temp_store=MEMORY; PRAGMA recursive_triggers=OFF", err, errlen);
  if (rc == 0) {
    /* The columns that change after the insert: ?3, ?4, ?12-?15 and ?17-?21
     * (bind_row binds these for the update and the upsert). */
#define CHANGING_COLUMNS                                                                   \
  "status=?3, attempt=?4, started_at=?13, completed_at=?14, worker_id=?15, ready_at=?12,"  \
  " result=?17, error=CASE WHEN ?21 THEN error ELSE ?18 END, heartbeat=?19, last_heartbeat=?20"
    char sql[ROWS_PER_INSERT * 160 + 512];
    insert_sql(sql, sizeof(sql), "INSERT", 1, " ON CONFLICT(seq) DO UPDATE SET " CHANGING_COLUMNS);
    int prc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->upsert, NULL);
    if (prc == SQLITE_OK) {
      insert_sql(sql, sizeof(sql), "INSERT", 1, "");
      prc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->insert, NULL);
    }
    if (prc == SQLITE_OK) {
      /* OR IGNORE: a multi-row statement that may abort halfway keeps a
       * statement journal of the pages it changes that its transaction had
       * changed before, spilled past 64 KiB to a temporary file: in a large
       * hybrid commit ~8 KB written per workflow step, many times the
       * commit's own writes. One that cannot abort needs none; the rows it
       * skips are counted and written one by one (store_write). */
      insert_sql(sql, sizeof(sql), "INSERT OR IGNORE", ROWS_PER_INSERT, "");
      prc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->insert_many, NULL);
    }
    if (prc == SQLITE_OK) {
      /* Rows a commit wrote before, written again whole: per row, two
       * thirds of the update's cost (which reads the old row's columns and
       * is a statement of its own). A REPLACE deletes the old row without
       * firing tasks_events (recursive_triggers is off), so a workflow's
       * events stay. */
      insert_sql(sql, sizeof(sql), "REPLACE", ROWS_PER_INSERT, "");
      prc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->replace_many, NULL);
    }
    if (prc == SQLITE_OK) {
      insert_sql(sql, sizeof(sql), "REPLACE", 1, "");
      prc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->replace, NULL);
    }
    if (prc == SQLITE_OK)
      prc = sqlite3_prepare_v3(s->db, "UPDATE tasks SET " CHANGING_COLUMNS " WHERE seq = ?9", -1,
                               SQLITE_PREPARE_PERSISTENT, &s->update, NULL);
#undef CHANGING_COLUMNS
    if (prc == SQLITE_OK)
      prc = sqlite3_prepare_v3(s->db, "DELETE FROM tasks WHERE seq = ?9", -1,
                               SQLITE_PREPARE_PERSISTENT, &s->del, NULL);
    if (prc == SQLITE_OK)
      prc = sqlite3_prepare_v3(s->db,
                               "INSERT OR REPLACE INTO schedules (id, name, input, cron, once_at,"
                               " local_tz, catch_up, overlap_skip, paused, has_priority, priority,"
                               " strategy, queue, next_ms, last_ms, total, skipped) VALUES"
                               " (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)",
                               -1, SQLITE_PREPARE_PERSISTENT, &s->supsert, NULL);
    if (prc == SQLITE_OK)
      prc = sqlite3_prepare_v3(s->db, "DELETE FROM schedules WHERE id = ?1", -1,
                               SQLITE_PREPARE_PERSISTENT, &s->sdel, NULL);
    if (prc == SQLITE_OK) /* OR IGNORE: a batch written again after a failed commit */
      prc = sqlite3_prepare_v3(s->db, EVENT_INSERT "(?1,?2,?3)", -1, SQLITE_PREPARE_PERSISTENT,
                               &s->event, NULL);
    if (prc == SQLITE_OK) {
      size_t n = (size_t)snprintf(sql, sizeof(sql), "%s", EVENT_INSERT);
      for (int k = 0; k < EVENTS_PER_INSERT; k++)
        n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s(?,?,?)", k ? "," : "");
      prc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->events, NULL);
    }
    if (prc != SQLITE_OK)
      rc = fail(s->db, prc, err, errlen, "cannot prepare statements");
  }
  return rc;
}

/* Closes the write connection and its statements. */
static void disconnect_db(ath_store_t* s) {
  sqlite3_finalize(s->upsert);
  sqlite3_finalize(s->insert);
  sqlite3_finalize(s->insert_many);
  sqlite3_finalize(s->replace_many);
  sqlite3_finalize(s->replace);
  sqlite3_finalize(s->update);
  sqlite3_finalize(s->del);
  sqlite3_finalize(s->supsert);
  sqlite3_finalize(s->sdel);
  sqlite3_finalize(s->event);
  sqlite3_finalize(s->events);
  sqlite3_close(s->db);
  s->upsert = s->insert = s->insert_many = s->update = s->del = s->supsert = s->sdel = s->event = NULL;
  s->events = s->replace_many = s->replace = NULL;
  memset(&s->many_held, 0, sizeof(s->many_held)); /* the next statements hold nothing */
  memset(&s->replace_held, 0, sizeof(s->replace_held));
  s->db = NULL;
}

/* synchronous=FULL: each commit syncs the WAL, so a power cut costs hybrid
 * no more than a crash does (its last flushInterval); with NORMAL it lost
 * every commit since the last checkpoint. Hybrid commits at most every
 * flushInterval, so that is one fsync per interval, off the producers'
 * path. */
static int store_open(void* ud, const char* dir, void** out, char* err, size_t errlen) {
  (void)ud;
  ath_store_t* s = calloc(1, sizeof(*s));
  if (s == NULL || uv_mutex_init(&s->rlock) != 0) {
    free(s);
    return ATH_ENOMEM;
  }
  snprintf(s->path, sizeof(s->path), "%s/athena.db", dir);
  s->full_sync = 1;
  int rc = connect_db(s, err, errlen);
  if (rc != 0) {
    store_close(s);
    return rc;
  }
  *out = s;
  return 0;
}

static void bind_text(sqlite3_stmt* st, int i, const char* p, size_t n) {
  if (p == NULL)
    sqlite3_bind_null(st, i);
  else
    sqlite3_bind_text(st, i, p, (int)n, SQLITE_STATIC);
}

static void bind_ms(sqlite3_stmt* st, int i, int64_t v) {
  if (v == 0)
    sqlite3_bind_null(st, i);
  else
    sqlite3_bind_int64(st, i, v);
}

/* A task row's parameter binds: to `st`, skipping those `held` (NULL:
 * none kept) says it holds already. */
typedef struct {
  sqlite3_stmt* st;
  params_t* held;
} binder_t;

/* Whether parameter i holds (kind, p, v) already; if not, it will. */
static int holds(binder_t* b, int i, int kind, const void* p, int64_t v) {
  params_t* h = b->held;
  if (h == NULL)
    return 0;
  if (h->kind[i] == kind && h->v[i] == v && h->p[i] == p)
    return 1;
  h->kind[i] = (uint8_t)kind;
  h->v[i] = v;
  h->p[i] = p;
  return 0;
}

static void put_int(binder_t* b, int i, int64_t v) {
  if (!holds(b, i, PARAM_INT, NULL, v))
    sqlite3_bind_int64(b->st, i, v);
}

/* An epoch-ms column: NULL when 0. */
static void put_ms(binder_t* b, int i, int64_t v) {
  if (v == 0 ? !holds(b, i, PARAM_NULL, NULL, 0) : !holds(b, i, PARAM_INT, NULL, v))
    bind_ms(b->st, i, v);
}

static void put_text(binder_t* b, int i, const char* p, size_t n) {
  if (p == NULL ? !holds(b, i, PARAM_NULL, NULL, 0) : !holds(b, i, PARAM_TEXT, p, (int64_t)n))
    bind_text(b->st, i, p, n);
}

static void put_str(binder_t* b, int i, const char* p) {
  put_text(b, i, p, p ? strlen(p) : 0);
}

/* Binds r's values to `st` from parameter off + 1 on (each row has
 * ROW_PARAMS): the upsert and the inserts every column, the update only
 * those that change after the insert, the delete the seq. */
static void bind_row(ath_store_t* s, sqlite3_stmt* st, int off, const ath_row_t* r) {
  binder_t b = { st, st == s->insert_many ? &s->many_held : st == s->replace_many ? &s->replace_held : NULL };
  put_int(&b, off + 9, (int64_t)r->seq);
  if (st == s->del)
    return;
  put_int(&b, off + 3, r->status);
  put_int(&b, off + 4, r->attempt);
  put_int(&b, off + 12, r->ready_at);
  put_ms(&b, off + 13, r->started_at);
  put_ms(&b, off + 14, r->completed_at);
  put_int(&b, off + 15, r->worker_id);
  put_text(&b, off + 17, r->result, r->result_len);
  put_text(&b, off + 18, r->error, r->error_len);
  put_text(&b, off + 19, r->hb, r->hb_len);
  put_ms(&b, off + 20, r->last_hb);
  if (st == s->update || st == s->upsert)
    put_int(&b, off + 21, r->keep_error);
  if (st == s->update)
    return;
  put_str(&b, off + 1, r->id);
  put_str(&b, off + 2, r->name);
  put_int(&b, off + 5, r->max_attempts);
  put_int(&b, off + 6, r->strategy);
  put_int(&b, off + 7, r->priority);
  put_str(&b, off + 8, r->queue);
  put_int(&b, off + 10, r->created_at);
  put_int(&b, off + 11, r->scheduled_at);
  put_text(&b, off + 16, r->input, r->input_len);
  put_str(&b, off + 22, r->parent_id);
  if (r->parent_id != NULL)
    put_int(&b, off + 23, (int64_t)r->parent_seq);
  else
    put_text(&b, off + 23, NULL, 0);
  put_text(&b, off + 24, r->call, r->call_len);
}

static int step(sqlite3_stmt* st) {
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : rc;
}

/* Writes r's row with `st`. */
static int step_row(ath_store_t* s, sqlite3_stmt* st, const ath_row_t* r) {
  bind_row(s, st, 0, r);
  return step(st);
}

/* A row no commit wrote yet (its events are appended after the rows). */
static int is_new_row(const ath_row_t* r) {
  return !r->deleted && !r->stored;
}

/* A row a commit wrote before whose every column this one writes (a
 * running task's error is its worker's: the update keeps the stored one). */
static int is_whole_row(const ath_row_t* r) {
  return !r->deleted && r->stored && !r->keep_error;
}

static int write_row(ath_store_t* s, const ath_row_t* r) {
  int rc;
  if (r->deleted) {
    rc = step_row(s, s->del, r);
  } else if (is_whole_row(r)) { /* there or not (see replace_many) */
    rc = step_row(s, s->replace, r);
  } else if (r->stored) {
    /* The update; should the row be gone after all (a file restored from
     * a backup), the upsert writes it whole. */
    rc = step_row(s, s->update, r);
    if (rc == 0 && sqlite3_changes(s->db) == 0)
      rc = step_row(s, s->upsert, r);
  } else {
    /* A plain insert costs less than the upsert; the row may be there
     * after all (a commit that failed after reaching the WAL, retried). */
    rc = step_row(s, s->insert, r);
    if ((rc & 0xff) == SQLITE_CONSTRAINT) /* extended codes are on */
      rc = step_row(s, s->upsert, r);
  }
  return rc;
}

/* Binds event i of r to `st` from parameter off + 1 on. */
static void bind_event(sqlite3_stmt* st, int off, const ath_row_t* r, size_t i) {
  sqlite3_bind_int64(st, off + 1, (sqlite3_int64)r->seq);
  sqlite3_bind_int64(st, off + 2, (sqlite3_int64)r->ev_from + (sqlite3_int64)i);
  sqlite3_bind_text(st, off + 3, r->events[i], (int)r->event_lens[i], SQLITE_STATIC);
}

/* Appends the new events of rows[0..n) (those of a deleted row go with
 * it), EVENTS_PER_INSERT to a statement and the rest one by one. */
static int write_events(ath_store_t* s, const ath_row_t* rows, size_t n) {
  struct {
    const ath_row_t* r;
    size_t i;
  } run[EVENTS_PER_INSERT];
  int k = 0, rc = 0;
  for (size_t j = 0; j < n && rc == 0; j++) {
    for (size_t i = 0; i < rows[j].nevents && !rows[j].deleted && rc == 0; i++) {
      run[k].r = &rows[j];
      run[k].i = i;
      if (++k < EVENTS_PER_INSERT)
        continue;
      for (k = 0; k < EVENTS_PER_INSERT; k++)
        bind_event(s->events, k * 3, run[k].r, run[k].i);
      k = 0;
      rc = step(s->events);
    }
  }
  for (int e = 0; e < k && rc == 0; e++) {
    bind_event(s->event, 0, run[e].r, run[e].i);
    rc = step(s->event);
  }
  return rc;
}

static int write_srow(ath_store_t* s, const ath_srow_t* r) {
  sqlite3_stmt* st = r->deleted ? s->sdel : s->supsert;
  sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
  if (!r->deleted) {
    sqlite3_bind_text(st, 2, r->name, -1, SQLITE_STATIC);
    bind_text(st, 3, r->input, r->input_len);
    bind_text(st, 4, r->cron, r->cron ? strlen(r->cron) : 0);
    bind_ms(st, 5, r->once_at);
    sqlite3_bind_int(st, 6, r->local_tz);
    sqlite3_bind_int(st, 7, r->catch_up);
    sqlite3_bind_int(st, 8, r->overlap_skip);
    sqlite3_bind_int(st, 9, r->paused);
    sqlite3_bind_int(st, 10, r->has_priority);
    sqlite3_bind_int(st, 11, r->priority);
    sqlite3_bind_int(st, 12, r->strategy);
    bind_text(st, 13, r->queue, r->queue ? strlen(r->queue) : 0);
    bind_ms(st, 14, r->next_ms);
    bind_ms(st, 15, r->last_ms);
    sqlite3_bind_int64(st, 16, r->total);
    sqlite3_bind_int64(st, 17, r->skipped);
  }
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : rc;
}

/* A failed write's code: a full disk (SQLITE_FULL) and I/O errors
 * (SQLITE_IOERR_*: a write, an fsync, the WAL index; and a file that reads
 * back corrupt) apart from the rest. */
static int write_fault(sqlite3* db, int rc, char* err, size_t errlen, const char* what) {
  fail(db, rc, err, errlen, what);
  if ((rc & 0xff) == SQLITE_FULL)
    return ATH_ENOSPC;
  if (rc == SQLITE_IOERR_NOMEM)
    return ATH_ENOMEM;
  if ((rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_CORRUPT || rc == SQLITE_NOTADB)
    return ATH_EIO;
  return ATH_ESTORE;
}

/* Runs `sql` in a transaction of the writer; codes as write_fault. */
static int write_exec(ath_store_t* s, const char* sql, char* err, size_t errlen) {
  int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
  return rc == SQLITE_OK ? 0 : write_fault(s->db, rc, err, errlen, sql);
}

/* 0, or ATH_ESTORE with err set when a row that is written lacks what a
 * read needs (the table has no NOT NULL to refuse it: version 8). */
static int check_rows(const ath_row_t* rows, size_t n, char* err, size_t errlen) {
  for (size_t i = 0; i < n; i++) {
    const ath_row_t* r = &rows[i];
    if (!r->deleted && (r->id == NULL || r->name == NULL || r->queue == NULL || r->input == NULL)) {
      snprintf(err, errlen, "cannot write task seq %llu: it has no id, name, queue or input",
               (unsigned long long)r->seq);
      return ATH_ESTORE;
    }
  }
  return 0;
}

/* Writes the rows of rows[0..n) that `is` holds for with `many`, the
 * statement's worth at a time, and what is left (or a statement's worth
 * one of which is there after all, see write_row) row by row. */
static int write_many(ath_store_t* s, sqlite3_stmt* many, const ath_row_t* rows, size_t n,
                      int (*is)(const ath_row_t*), char* err, size_t errlen) {
  const ath_row_t* run[ROWS_PER_INSERT];
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (is(&rows[i]))
      run[k++] = &rows[i];
    if (k < ROWS_PER_INSERT && i + 1 < n)
      continue;
    if (k == ROWS_PER_INSERT) {
      for (size_t j = 0; j < k; j++)
        bind_row(s, many, (int)j * ROW_PARAMS, run[j]);
      int src = step(many);
      if (src != 0)
        return write_fault(s->db, src, err, errlen, "cannot write a task");
      if (sqlite3_changes(s->db) == ROWS_PER_INSERT) { /* a REPLACE writes them all */
        k = 0;
        continue;
      }
      /* it skipped one that is there after all: row by row (the upsert
       * writes again those it inserted) */
    }
    for (size_t j = 0; j < k; j++) {
      int src = write_row(s, run[j]);
      if (src != 0)
        return write_fault(s->db, src, err, errlen, "cannot write a task");
    }
    k = 0;
  }
  return 0;
}

static int store_write(void* self, const ath_row_t* rows, size_t n, const ath_srow_t* srows,
                       size_t sn, char* err, size_t errlen) {
  ath_store_t* s = self;
  if (s->db == NULL) {
    snprintf(err, errlen, "%s", "the database is closed after an I/O error");
    return ATH_EIO;
  }
  int bad = check_rows(rows, n, err, errlen);
  if (bad != 0)
    return bad;
  int rc = write_exec(s, "BEGIN", err, errlen);
  for (size_t i = 0; rc == 0 && i < sn; i++) {
    int src = write_srow(s, &srows[i]);
    if (src != 0)
      rc = write_fault(s->db, src, err, errlen, "cannot write a schedule");
  }
  /* Each row once (a commit writes a task once): in any order. The new
   * rows, then those written before whole, a statement's worth at a time
   * wherever they are in the group (a running task's row, updated alone,
   * between them no longer cuts a run short), then the rest. */
  if (rc == 0)
    rc = write_many(s, s->insert_many, rows, n, is_new_row, err, errlen);
  if (rc == 0)
    rc = write_many(s, s->replace_many, rows, n, is_whole_row, err, errlen);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (is_new_row(&rows[i]) || is_whole_row(&rows[i]))
      continue;
    int src = write_row(s, &rows[i]);
    if (src != 0)
      rc = write_fault(s->db, src, err, errlen, "cannot write a task");
  }
  if (rc == 0) {
    int src = write_events(s, rows, n);
    if (src != 0)
      rc = write_fault(s->db, src, err, errlen, "cannot write a workflow event");
  }
  if (rc == 0)
    rc = write_exec(s, "COMMIT", err, errlen);
  if (rc != 0 && !sqlite3_get_autocommit(s->db)) /* SQLite may have rolled back already */
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

static int store_probe(void* self, char* err, size_t errlen) {
  ath_store_t* s = self;
  if (s->db == NULL)
    return store_write(s, NULL, 0, NULL, 0, err, errlen);
  char sql[96];
  snprintf(sql, sizeof(sql), "BEGIN IMMEDIATE; PRAGMA user_version = %d; COMMIT", SCHEMA_VERSION);
  int rc = write_exec(s, sql, err, errlen);
  if (rc != 0 && !sqlite3_get_autocommit(s->db))
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

/* After an I/O error nothing cached is trusted (an fsync that failed may
 * have left the kernel's pages clean but the disk without them): every
 * connection goes, a new one reads the file again, and quick_check must
 * pass before the store takes writes. */
static int store_reopen(void* self, char* err, size_t errlen) {
  ath_store_t* s = self;
  uv_mutex_lock(&s->rlock);
  for (int i = 0; i < s->nidle; i++)
    reader_close(s->idle[i]);
  s->nidle = 0;
  uv_mutex_unlock(&s->rlock);
  disconnect_db(s);
  if (connect_db(s, err, errlen) != 0) {
    disconnect_db(s); /* store_write refuses until a reopen succeeds */
    return ATH_EIO;
  }
  sqlite3_stmt* st;
  int rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return write_fault(s->db, rc, err, errlen, "cannot verify the database");
  rc = sqlite3_step(st);
  const char* res = rc == SQLITE_ROW ? (const char*)sqlite3_column_text(st, 0) : NULL;
  int ok = res != NULL && strcmp(res, "ok") == 0;
  if (!ok && res != NULL)
    snprintf(err, errlen, "the database fails PRAGMA quick_check: %s", res);
  int code = ok ? 0 : res != NULL ? ATH_ESTORE : write_fault(s->db, rc, err, errlen, "cannot verify the database");
  sqlite3_finalize(st);
  return code;
}

static const char* col_text(sqlite3_stmt* st, int i, size_t* len) {
  const char* p = (const char*)sqlite3_column_text(st, i);
  *len = p ? (size_t)sqlite3_column_bytes(st, i) : 0;
  return p;
}

/* Calls cb for each row `st` (selecting TASK_COLUMNS) yields, while it
 * returns 0, counting them in *count; `db` names the connection for
 * errors. */
static int each_row(sqlite3* db, sqlite3_stmt* st, ath_row_cb cb, void* ud, int64_t* count,
                    char* err, size_t errlen) {
  int rc, crc = 0;
  while (crc == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    ++*count;
    ath_row_t r;
    memset(&r, 0, sizeof(r));
    r.id = (const char*)sqlite3_column_text(st, 0);
    r.name = (const char*)sqlite3_column_text(st, 1);
    r.status = sqlite3_column_int(st, 2);
    r.attempt = sqlite3_column_int(st, 3);
    r.max_attempts = sqlite3_column_int(st, 4);
    r.strategy = sqlite3_column_int(st, 5);
    r.priority = sqlite3_column_int(st, 6);
    r.queue = (const char*)sqlite3_column_text(st, 7);
    r.seq = (uint64_t)sqlite3_column_int64(st, 8);
    r.created_at = sqlite3_column_int64(st, 9);
    r.scheduled_at = sqlite3_column_int64(st, 10);
    r.ready_at = sqlite3_column_int64(st, 11);
    r.started_at = sqlite3_column_int64(st, 12);
    r.completed_at = sqlite3_column_int64(st, 13);
    r.worker_id = sqlite3_column_int(st, 14);
    r.input = col_text(st, 15, &r.input_len);
    r.result = col_text(st, 16, &r.result_len);
    r.error = col_text(st, 17, &r.error_len);
    r.hb = col_text(st, 18, &r.hb_len);
    r.last_hb = sqlite3_column_int64(st, 19);
    r.parent_id = (const char*)sqlite3_column_text(st, 20);
    r.history = col_text(st, 21, &r.history_len);
    r.call = col_text(st, 22, &r.call_len);
    if (r.id == NULL || r.name == NULL || r.queue == NULL || r.input == NULL) {
      snprintf(err, errlen, "%s", "a stored task is missing its id, name, queue or input");
      return ATH_ESTORE;
    }
    crc = cb(ud, &r);
  }
  if (crc == 0 && rc != SQLITE_DONE)
    crc = fail(db, rc, err, errlen, "cannot read tasks");
  return crc;
}

static int load_tasks(ath_store_t* s, ath_row_cb cb, void* ud, char* err, size_t errlen) {
  sqlite3_stmt* st;
  int rc = sqlite3_prepare_v2(s->db, "SELECT " TASK_COLUMNS " FROM tasks ORDER BY seq", -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fail(s->db, rc, err, errlen, "cannot read tasks");
  int64_t n = 0;
  rc = each_row(s->db, st, cb, ud, &n, err, errlen);
  sqlite3_finalize(st);
  return rc;
}

/* ------------------------------------------------------------- readers */

/* An idle read connection, or a new one (NULL with err set). */
static reader_t* reader_take(ath_store_t* s, char* err, size_t errlen) {
  uv_mutex_lock(&s->rlock);
  reader_t* r = s->nidle > 0 ? s->idle[--s->nidle] : NULL;
  uv_mutex_unlock(&s->rlock);
  if (r != NULL)
    return r;
  if ((r = calloc(1, sizeof(*r))) == NULL) {
    snprintf(err, errlen, "%s", "out of memory opening a read connection");
    return NULL;
  }
  int rc = sqlite3_open_v2(s->path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_busy_timeout(r->db, 5000);
    rc = sqlite3_prepare_v3(r->db, "SELECT " TASK_COLUMNS " FROM tasks WHERE id = ?1 AND " TERMINAL_ROW
                            " ORDER BY seq DESC LIMIT 1",
                            -1, SQLITE_PREPARE_PERSISTENT, &r->get, NULL);
  }
  if (rc != SQLITE_OK) {
    fail(r->db, rc, err, errlen, "cannot open a read connection");
    reader_close(r);
    return NULL;
  }
  return r;
}

static void reader_give(ath_store_t* s, reader_t* r) {
  uv_mutex_lock(&s->rlock);
  if (s->nidle < MAX_READERS) {
    s->idle[s->nidle++] = r;
    r = NULL;
  }
  uv_mutex_unlock(&s->rlock);
  if (r != NULL)
    reader_close(r);
}

static int store_get(void* self, const char* id, ath_row_cb cb, void* ud, char* err,
                     size_t errlen) {
  ath_store_t* s = self;
  reader_t* r = reader_take(s, err, errlen);
  if (r == NULL)
    return ATH_ESTORE;
  int64_t found = 0;
  sqlite3_bind_text(r->get, 1, id, -1, SQLITE_STATIC);
  int rc = each_row(r->db, r->get, cb, ud, &found, err, errlen);
  sqlite3_reset(r->get);
  sqlite3_clear_bindings(r->get);
  reader_give(s, r);
  return rc != 0 ? rc : found ? 0 : ATH_ENOTFOUND;
}

/* Whether the finished workflow `id` is stored: then *seq is its (latest)
 * row's. */
static int stored_seq(reader_t* r, const char* id, uint64_t* seq) {
  sqlite3_stmt* st;
  if (sqlite3_prepare_v2(r->db, "SELECT seq FROM tasks WHERE id = ?1 AND " TERMINAL_ROW " ORDER BY seq DESC LIMIT 1",
                         -1, &st, NULL) != SQLITE_OK)
    return 0;
  sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
  int found = sqlite3_step(st) == SQLITE_ROW;
  *seq = found ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
  sqlite3_finalize(st);
  return found;
}

static int store_query(void* self, const ath_store_query_t* q, ath_row_cb cb, void* ud,
                       char* err, size_t errlen) {
  ath_store_t* s = self;
  reader_t* r = reader_take(s, err, errlen);
  if (r == NULL)
    return ATH_ESTORE;
  /* A workflow's tasks by its seq (tasks_parent); by its id, row by row,
   * only when its seq is not found (its row was pruned, or migrated from
   * before version 8 without it). */
  uint64_t parent_seq = q->parent_seq;
  int by_parent_seq = q->parent_id != NULL && (q->has_parent_seq || stored_seq(r, q->parent_id, &parent_seq));
  char sql[1024];
  size_t n = (size_t)snprintf(sql, sizeof(sql), "SELECT " TASK_COLUMNS " FROM tasks WHERE " TERMINAL_ROW);
  if (q->status_mask) {
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, " AND status IN (");
    const char* sep = "";
    for (int st = 0; st < 32; st++) {
      if (q->status_mask & (1u << st)) {
        n += (size_t)snprintf(sql + n, sizeof(sql) - n, "%s%d", sep, st);
        sep = ",";
      }
    }
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, ")");
  }
  if (q->name)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, " AND name = ?1");
  if (q->parent_id)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, by_parent_seq ? " AND parent_seq = ?7" : " AND parent_id = ?2");
  if (q->since)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, " AND created_at >= ?3");
  if (q->until)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, " AND created_at <= ?4");
  if (q->after_seq)
    n += (size_t)snprintf(sql + n, sizeof(sql) - n, " AND seq > ?6");
  snprintf(sql + n, sizeof(sql) - n, "%s LIMIT ?5",
           q->by_seq ? " ORDER BY seq" : " ORDER BY created_at DESC, id");
  sqlite3_stmt* st;
  int rc = sqlite3_prepare_v2(r->db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK) {
    rc = fail(r->db, rc, err, errlen, "cannot read tasks");
    reader_give(s, r);
    return rc;
  }
  if (q->name)
    sqlite3_bind_text(st, 1, q->name, -1, SQLITE_STATIC);
  if (q->parent_id)
    sqlite3_bind_text(st, 2, q->parent_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, q->since);
  sqlite3_bind_int64(st, 4, q->until);
  sqlite3_bind_int64(st, 5, q->limit);
  sqlite3_bind_int64(st, 6, (sqlite3_int64)q->after_seq);
  sqlite3_bind_int64(st, 7, (sqlite3_int64)parent_seq);
  int64_t count = 0;
  rc = each_row(r->db, st, cb, ud, &count, err, errlen);
  sqlite3_finalize(st);
  reader_give(s, r);
  return rc;
}

static int load_schedules(ath_store_t* s, ath_srow_cb cb, void* ud, char* err, size_t errlen) {
  sqlite3_stmt* st;
  int rc = sqlite3_prepare_v2(s->db,
                              "SELECT id, name, input, cron, once_at, local_tz, catch_up, overlap_skip,"
                              " paused, has_priority, priority, strategy, queue, next_ms, last_ms,"
                              " total, skipped FROM schedules ORDER BY id",
                              -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fail(s->db, rc, err, errlen, "cannot read schedules");
  int crc = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW && crc == 0) {
    ath_srow_t r;
    memset(&r, 0, sizeof(r));
    r.id = (const char*)sqlite3_column_text(st, 0);
    r.name = (const char*)sqlite3_column_text(st, 1);
    r.input = col_text(st, 2, &r.input_len);
    r.cron = (const char*)sqlite3_column_text(st, 3);
    r.once_at = sqlite3_column_int64(st, 4);
    r.local_tz = sqlite3_column_int(st, 5);
    r.catch_up = sqlite3_column_int(st, 6);
    r.overlap_skip = sqlite3_column_int(st, 7);
    r.paused = sqlite3_column_int(st, 8);
    r.has_priority = sqlite3_column_int(st, 9);
    r.priority = sqlite3_column_int(st, 10);
    r.strategy = sqlite3_column_int(st, 11);
    r.queue = (const char*)sqlite3_column_text(st, 12);
    r.next_ms = sqlite3_column_int64(st, 13);
    r.last_ms = sqlite3_column_int64(st, 14);
    r.total = sqlite3_column_int64(st, 15);
    r.skipped = sqlite3_column_int64(st, 16);
    if (r.id == NULL || r.name == NULL || r.input == NULL) {
      snprintf(err, errlen, "%s", "a stored schedule is missing its id, name or input");
      crc = ATH_ESTORE;
      break;
    }
    crc = cb(ud, &r);
  }
  if (crc == 0 && rc != SQLITE_DONE)
    crc = fail(s->db, rc, err, errlen, "cannot read schedules");
  sqlite3_finalize(st);
  return crc;
}

static int store_prune(void* self, int64_t before_ms, char* err, size_t errlen) {
  ath_store_t* s = self;
  char sql[256];
  snprintf(sql, sizeof(sql),
           "DELETE FROM tasks WHERE status >= %d AND status <> %d AND completed_at < %lld",
           ATH_COMPLETED, ATH_QUARANTINED, (long long)before_ms);
  return exec(s->db, sql, err, errlen);
}

/* Recovery: the tasks in creation order, then the schedules. */
static int store_load(void* self, ath_row_cb cb, ath_srow_cb scb, void* ud, char* err,
                      size_t errlen) {
  int rc = load_tasks(self, cb, ud, err, errlen);
  return rc != 0 ? rc : load_schedules(self, scb, ud, err, errlen);
}

const ath_store_vt_t ath__sqlite_store = {
  .size = sizeof(ath_store_provider_t),
  .name = "sqlite",
  .open = store_open,
  .load = store_load,
  .persist = store_write,
  .close = store_close,
  .prune = store_prune,
  .get = store_get,
  .query = store_query,
  .probe = store_probe,
  .reopen = store_reopen,
};

const ath_store_provider_t* ath_sqlite_store(void) {
  return &ath__sqlite_store;
}
