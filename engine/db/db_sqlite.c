/* SQLite connections ("sqlite:<path>", "sqlite::memory:"). Statements run
 * on the calling thread (ath__db_exec), or, inside tasks, on libuv's thread
 * pool while the task yields (ath__db_exec_async, at the end of this file).
 * A busy database is waited for up to the busy timeout, then EBUSY. */
#include <ctype.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "athena.h"
#include "db.h"

#define BUSY_TIMEOUT_MS 5000

/* The name of an extended result code, as err.sqlstate shows it. */
static const char* code_name(int xrc, char* buf, size_t len) {
  static const struct {
    int rc;
    const char* name;
  } names[] = {
    {SQLITE_CONSTRAINT_UNIQUE, "SQLITE_CONSTRAINT_UNIQUE"},
    {SQLITE_CONSTRAINT_PRIMARYKEY, "SQLITE_CONSTRAINT_PRIMARYKEY"},
    {SQLITE_CONSTRAINT_FOREIGNKEY, "SQLITE_CONSTRAINT_FOREIGNKEY"},
    {SQLITE_CONSTRAINT_NOTNULL, "SQLITE_CONSTRAINT_NOTNULL"},
    {SQLITE_CONSTRAINT_CHECK, "SQLITE_CONSTRAINT_CHECK"},
    {SQLITE_CONSTRAINT_TRIGGER, "SQLITE_CONSTRAINT_TRIGGER"},
    {SQLITE_CONSTRAINT_ROWID, "SQLITE_CONSTRAINT_ROWID"},
    {SQLITE_CONSTRAINT, "SQLITE_CONSTRAINT"},
    {SQLITE_ERROR, "SQLITE_ERROR"},
    {SQLITE_BUSY, "SQLITE_BUSY"},
    {SQLITE_BUSY_SNAPSHOT, "SQLITE_BUSY_SNAPSHOT"},
    {SQLITE_LOCKED, "SQLITE_LOCKED"},
    {SQLITE_INTERRUPT, "SQLITE_INTERRUPT"},
    {SQLITE_READONLY, "SQLITE_READONLY"},
    {SQLITE_IOERR, "SQLITE_IOERR"},
    {SQLITE_CORRUPT, "SQLITE_CORRUPT"},
    {SQLITE_FULL, "SQLITE_FULL"},
    {SQLITE_CANTOPEN, "SQLITE_CANTOPEN"},
    {SQLITE_MISMATCH, "SQLITE_MISMATCH"},
    {SQLITE_RANGE, "SQLITE_RANGE"},
    {SQLITE_TOOBIG, "SQLITE_TOOBIG"},
    {SQLITE_NOMEM, "SQLITE_NOMEM"},
    {SQLITE_MISUSE, "SQLITE_MISUSE"},
#ifdef SQLITE_CONSTRAINT_DATATYPE
    {SQLITE_CONSTRAINT_DATATYPE, "SQLITE_CONSTRAINT_DATATYPE"},
#endif
  };
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (names[i].rc == xrc)
      return names[i].name;
  snprintf(buf, len, "SQLITE_%d", xrc);
  return buf;
}

/* Fills err from the connection's last error. */
static int fail(ath_db_t* db, int xrc, int prepare, ath_db_error_t* err) {
  char buf[32];
  int code = ath__db_map_sqlite(xrc, prepare);
  ath__db_seterr(err, code, code_name(xrc, buf, sizeof(buf)),
                 db->sq ? sqlite3_errmsg(db->sq) : sqlite3_errstr(xrc), NULL, NULL);
  return code;
}

/* SQLite counts every allocation under one process-wide mutex for
 * sqlite3_memory_used (which nothing here reads): 6 of the 11 global or
 * per-file mutex acquisitions of a gateway fetch, which the gateway
 * threads contend on. Off before SQLite initialises, so it must come
 * before the process's first SQLite call (ath__sqlite_setup). */
static void sqlite_setup_once(void) {
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); /* SQLITE_MISUSE if SQLite was in use already: kept on */
}

void ath__sqlite_setup(void) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, sqlite_setup_once);
}

int ath__db_sqlite_connect(ath_db_t* db, ath_db_error_t* err) {
  const char* path = db->url + 7; /* after "sqlite:" */
  ath__sqlite_setup();
  sqlite3* sq = NULL;
  int rc = sqlite3_open_v2(path, &sq,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI |
                             SQLITE_OPEN_NOMUTEX,
                           ath__sqlite_map_vfs());
  if (rc != SQLITE_OK) {
    /* the path is the user's own, but the message stays path-free */
    ath__db_seterr(err, ATH_DB_ECONNLOST, code_name(rc, (char[32]){0}, 32),
                   sq ? sqlite3_errmsg(sq) : sqlite3_errstr(rc), db->url, path);
    sqlite3_close(sq);
    return ATH_DB_ECONNLOST;
  }
  sqlite3_extended_result_codes(sq, 1);
  sqlite3_busy_timeout(sq, BUSY_TIMEOUT_MS);
  db->sq = sq;
  return 0;
}

void ath__db_set_interrupt(ath_db_t* db, int (*check)(void* ud), void* ud) {
  if (db->kind == ATH_DB_SQLITE && db->sq != NULL)
    sqlite3_progress_handler(db->sq, check ? 4000 : 0, check, ud);
}

int ath__db_file_moved(ath_db_t* db) {
  int moved = 0;
  if (db->kind != ATH_DB_SQLITE || db->sq == NULL)
    return 0;
  /* the unix VFS compares the open file with what its path names now
   * (deleted: no links; moved or replaced: another inode); in-memory and
   * temporary databases never move */
  if (sqlite3_file_control(db->sq, "main", SQLITE_FCNTL_HAS_MOVED, &moved) != SQLITE_OK)
    return 0;
  return moved != 0;
}

/* Prepared statements kept per connection, by SQL text (least recently
 * used goes first): the gateway runs the same few shapes of statement over
 * and over, and preparing was a fifth of a fetch's time. */
#define STMT_CACHE 64

typedef struct {
  char* sql;
  sqlite3_stmt* st;
  uint64_t used;
} stmt_slot_t;

struct ath_db_stmts_s {
  stmt_slot_t slot[STMT_CACHE];
  uint64_t tick;
};

static sqlite3_stmt* cached(ath_db_t* db, const char* sql) {
  struct ath_db_stmts_s* c = db->stmts;
  for (int i = 0; c != NULL && i < STMT_CACHE; i++) {
    if (c->slot[i].sql != NULL && strcmp(c->slot[i].sql, sql) == 0) {
      c->slot[i].used = ++c->tick;
      return c->slot[i].st;
    }
  }
  return NULL;
}

/* Keeps st for sql; returns 1 if kept (then it must not be finalized). */
static int keep(ath_db_t* db, const char* sql, sqlite3_stmt* st) {
  if (db->stmts == NULL && (db->stmts = calloc(1, sizeof(*db->stmts))) == NULL)
    return 0;
  struct ath_db_stmts_s* c = db->stmts;
  int victim = 0;
  for (int i = 1; i < STMT_CACHE; i++)
    if (c->slot[i].used < c->slot[victim].used)
      victim = i;
  size_t len = strlen(sql);
  char* copy = malloc(len + 1);
  if (copy == NULL)
    return 0;
  memcpy(copy, sql, len + 1);
  stmt_slot_t* v = &c->slot[victim];
  if (v->st != NULL)
    sqlite3_finalize(v->st);
  free(v->sql);
  v->sql = copy;
  v->st = st;
  v->used = ++c->tick;
  return 1;
}

static void drop_stmts(ath_db_t* db) {
  struct ath_db_stmts_s* c = db->stmts;
  for (int i = 0; c != NULL && i < STMT_CACHE; i++) {
    if (c->slot[i].st != NULL)
      sqlite3_finalize(c->slot[i].st);
    free(c->slot[i].sql);
  }
  free(c);
  db->stmts = NULL;
}

void ath__db_sqlite_disconnect(ath_db_t* db) {
  drop_stmts(db);
  if (db->sq != NULL) {
    sqlite3_close_v2(db->sq); /* statements are never left open */
    db->sq = NULL;
  }
}

/* Column flags from the declared type: booleans and JSON. */
enum { COL_BOOL = 1, COL_JSON = 2 };

static int decl_flags(const char* decl) {
  if (decl == NULL)
    return 0;
  char up[32];
  size_t i = 0;
  for (; decl[i] && i < sizeof(up) - 1; i++)
    up[i] = (char)toupper((unsigned char)decl[i]);
  up[i] = '\0';
  if (strcmp(up, "BOOLEAN") == 0 || strcmp(up, "BOOL") == 0)
    return COL_BOOL;
  if (strcmp(up, "JSON") == 0 || strcmp(up, "JSONB") == 0)
    return COL_JSON;
  return 0;
}

/* Binds params to stmt: by position, or by number for "$n" / "?n" names. */
static int bind_params(ath_db_t* db, sqlite3_stmt* st, const ath_db_value_t* params, int n,
                       ath_db_error_t* err) {
  int count = sqlite3_bind_parameter_count(st);
  if (count != n) {
    char msg[96];
    snprintf(msg, sizeof(msg), "the statement has %d placeholder%s, %d value%s given", count,
             count == 1 ? "" : "s", n, n == 1 ? "" : "s");
    ath__db_seterr(err, ATH_DB_EINVAL, NULL, msg, NULL, NULL);
    return ATH_DB_EINVAL;
  }
  for (int i = 1; i <= count; i++) {
    const char* name = sqlite3_bind_parameter_name(st, i);
    int k = i;
    if (name != NULL && (name[0] == '$' || name[0] == '?') && isdigit((unsigned char)name[1]))
      k = atoi(name + 1);
    if (k < 1 || k > n) {
      ath__db_seterr(err, ATH_DB_EINVAL, NULL, "placeholder number out of range", NULL, NULL);
      return ATH_DB_EINVAL;
    }
    const ath_db_value_t* v = &params[k - 1];
    int rc;
    switch (v->type) {
      case ATH_DB_NULL:
        rc = sqlite3_bind_null(st, i);
        break;
      case ATH_DB_BOOL:
      case ATH_DB_INT:
        rc = sqlite3_bind_int64(st, i, v->i);
        break;
      case ATH_DB_FLOAT:
        rc = sqlite3_bind_double(st, i, v->d);
        break;
      case ATH_DB_BLOB:
        rc = sqlite3_bind_blob64(st, i, v->s, v->len, SQLITE_TRANSIENT);
        break;
      default: /* text, JSON and numeric text */
        rc = sqlite3_bind_text64(st, i, v->s, v->len, SQLITE_TRANSIENT, SQLITE_UTF8);
        break;
    }
    if (rc != SQLITE_OK)
      return fail(db, sqlite3_extended_errcode(db->sq), 0, err);
  }
  return 0;
}

/* The current row of st as values: text and blobs point into st's memory,
 * valid until its next step. */
static void row_values(sqlite3_stmt* st, const int* flags, ath_db_value_t* row, int ncols) {
  for (int c = 0; c < ncols; c++) {
    ath_db_value_t* v = &row[c];
    memset(v, 0, sizeof(*v));
    switch (sqlite3_column_type(st, c)) {
      case SQLITE_NULL:
        v->type = ATH_DB_NULL;
        break;
      case SQLITE_INTEGER:
        v->i = sqlite3_column_int64(st, c);
        v->type = (flags[c] & COL_BOOL) && (v->i == 0 || v->i == 1) ? ATH_DB_BOOL : ATH_DB_INT;
        break;
      case SQLITE_FLOAT:
        v->type = ATH_DB_FLOAT;
        v->d = sqlite3_column_double(st, c);
        break;
      case SQLITE_BLOB:
        v->s = sqlite3_column_blob(st, c);
        v->len = (size_t)sqlite3_column_bytes(st, c);
        v->type = ATH_DB_BLOB;
        break;
      default:
        v->s = (const char*)sqlite3_column_text(st, c);
        v->len = (size_t)sqlite3_column_bytes(st, c);
        v->type = (flags[c] & COL_JSON) ? ATH_DB_JSON : ATH_DB_TEXT;
    }
    if (v->s == NULL && (v->type == ATH_DB_TEXT || v->type == ATH_DB_JSON || v->type == ATH_DB_BLOB))
      v->s = ""; /* an empty blob */
  }
}

/* A row sink that copies each row into the result ud (text and blobs
 * with a NUL after them). */
static int add_row(void* ud, const ath_db_value_t* src, int ncols) {
  ath_db_res_t* r = ud;
  if ((size_t)r->nrows == r->cells_cap) {
    size_t cap = r->cells_cap ? r->cells_cap * 2 : 16;
    ath_db_value_t* cells = realloc(r->cells, cap * (size_t)r->ncols * sizeof(*cells));
    if (cells == NULL)
      return ATH_ENOMEM;
    r->cells = cells;
    r->cells_cap = cap;
  }
  ath_db_value_t* row = r->cells + (size_t)r->nrows * (size_t)r->ncols;
  for (int c = 0; c < ncols; c++) {
    row[c] = src[c];
    if (src[c].type == ATH_DB_TEXT || src[c].type == ATH_DB_JSON || src[c].type == ATH_DB_BLOB) {
      char* copy = ath__db_res_alloc(r, src[c].len + 1);
      if (copy == NULL)
        return ATH_ENOMEM;
      if (src[c].len)
        memcpy(copy, src[c].s, src[c].len);
      copy[src[c].len] = '\0';
      row[c].s = copy;
    }
  }
  r->nrows++;
  return 0;
}

/* A new result for st's columns (names copied). NULL when out of memory. */
static ath_db_res_t* res_for(sqlite3_stmt* st) {
  ath_db_res_t* r = ath__db_res_new(ATH_DB_SQLITE);
  int ncols = sqlite3_column_count(st);
  if (r == NULL)
    return NULL;
  r->ncols = ncols;
  r->names = (char**)ath__db_res_alloc(r, sizeof(char*) * ((size_t)ncols + 1));
  if (r->names == NULL) {
    ath__db_res_free(r);
    return NULL;
  }
  for (int c = 0; c < ncols; c++) {
    const char* name = sqlite3_column_name(st, c);
    size_t len = strlen(name);
    if ((r->names[c] = ath__db_res_alloc(r, len + 1)) == NULL) {
      ath__db_res_free(r);
      return NULL;
    }
    memcpy(r->names[c], name, len + 1);
  }
  return r;
}

/* Runs one prepared statement to its end, handing each row to fn (a
 * non-zero return stops it: out of memory); *changes gets the rows it
 * changed. */
static int run_stmt(ath_db_t* db, sqlite3_stmt* st, ath_db_row_fn fn, void* ud, int64_t* changes,
                    ath_db_error_t* err) {
  int ncols = sqlite3_column_count(st);
  int flags_small[32];
  ath_db_value_t row_small[32];
  int* flags = flags_small;
  ath_db_value_t* row = row_small;
  if (ncols > 32) {
    flags = calloc((size_t)ncols, sizeof(int));
    row = calloc((size_t)ncols, sizeof(*row));
  }
  int rc = flags != NULL && row != NULL ? 0 : ATH_ENOMEM;
  for (int c = 0; rc == 0 && c < ncols; c++)
    flags[c] = decl_flags(sqlite3_column_decltype(st, c));
  sqlite3_int64 before = sqlite3_total_changes64(db->sq);
  int src = SQLITE_DONE;
  while (rc == 0 && (src = sqlite3_step(st)) == SQLITE_ROW) {
    row_values(st, flags, row, ncols);
    if (fn(ud, row, ncols) != 0)
      rc = ATH_ENOMEM;
  }
  if (flags != flags_small)
    free(flags);
  if (row != row_small)
    free(row);
  if (rc != 0) {
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return ATH_ENOMEM;
  }
  if (src != SQLITE_DONE)
    return fail(db, sqlite3_extended_errcode(db->sq), 0, err);
  /* sqlite3_changes keeps the last INSERT/UPDATE/DELETE's count: a SELECT
   * or CREATE after it would report it again */
  *changes = sqlite3_total_changes64(db->sq) != before ? sqlite3_changes64(db->sq) : 0;
  return 0;
}

/* Runs st into a new result (*out). */
static int run_into(ath_db_t* db, sqlite3_stmt* st, ath_db_res_t** out, ath_db_error_t* err) {
  ath_db_res_t* r = res_for(st);
  if (r == NULL) {
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return ATH_ENOMEM;
  }
  int64_t changes = 0;
  int rc = run_stmt(db, st, add_row, r, &changes, err);
  if (rc != 0) {
    ath__db_res_free(r);
    return rc;
  }
  r->changes = changes;
  r->last_id = sqlite3_last_insert_rowid(db->sq);
  r->has_last_id = 1;
  *out = r;
  return 0;
}

/* Whether the text holds only white space and comments. */
static int blank(const char* p) {
  for (;;) {
    while (isspace((unsigned char)*p) || *p == ';')
      p++;
    if (p[0] == '-' && p[1] == '-') {
      while (*p && *p != '\n')
        p++;
    } else if (p[0] == '/' && p[1] == '*') {
      const char* e = strstr(p + 2, "*/");
      p = e ? e + 2 : p + strlen(p);
    } else {
      return *p == '\0';
    }
  }
}

/* Runs sql: its statements one after the other, into a result each (the
 * last one's is kept in *out), or, with fn, its single statement's rows
 * handed to fn and *changes set. */
static int exec_sql(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n, ath_db_res_t** out,
                    ath_db_row_fn fn, void* ud, int64_t* changes, ath_db_error_t* err) {
  /* Several statements run one after the other (a schema, say); the result
   * is the last one's. Parameters go with a single statement only. */
  const char* tail = sql;
  ath_db_res_t* last = NULL;
  int first = 1;
  while (first || !blank(tail)) {
    const char* next = NULL;
    sqlite3_stmt* st = first ? cached(db, sql) : NULL;
    int kept = st != NULL;
    if (kept) {
      next = "";
    } else {
      int rc = sqlite3_prepare_v3(db->sq, tail, -1, first ? SQLITE_PREPARE_PERSISTENT : 0, &st, &next);
      if (rc != SQLITE_OK) {
        ath__db_res_free(last);
        return fail(db, sqlite3_extended_errcode(db->sq), 1, err);
      }
      if (st == NULL) /* only comments or white space */
        break;
      if (first && (n > 0 || fn != NULL) && !blank(next)) {
        sqlite3_finalize(st);
        ath__db_seterr(err, ATH_DB_EINVAL, NULL, "parameters need a single statement", NULL, NULL);
        return ATH_DB_EINVAL;
      }
      kept = first && blank(next) && keep(db, sql, st);
    }
    int rc = bind_params(db, st, params, first ? n : 0, err);
    if (rc == 0 && fn != NULL) {
      rc = run_stmt(db, st, fn, ud, changes, err);
    } else if (rc == 0) {
      ath__db_res_free(last);
      last = NULL;
      rc = run_into(db, st, &last, err);
    }
    if (kept) {
      /* ready for the next call, locks released; no clear_bindings: the
       * next call binds every placeholder again (bind_params checks the
       * count) */
      sqlite3_reset(st);
    } else {
      sqlite3_finalize(st);
    }
    if (rc != 0) {
      ath__db_res_free(last);
      return rc;
    }
    first = 0;
    tail = next;
  }
  if (fn != NULL)
    return 0;
  if (last == NULL && (last = ath__db_res_new(ATH_DB_SQLITE)) == NULL) {
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return ATH_ENOMEM;
  }
  *out = last;
  return 0;
}

int ath__db_sqlite_exec(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                        ath_db_res_t** out, ath_db_error_t* err) {
  return exec_sql(db, sql, params, n, out, NULL, NULL, NULL, err);
}

int ath__db_sqlite_exec_rows(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                             ath_db_row_fn fn, void* ud, int64_t* changes, ath_db_error_t* err) {
  *changes = 0;
  return exec_sql(db, sql, params, n, NULL, fn, ud, changes, err);
}

/* ------------------------------------------------- off the loop's thread
 *
 * Inside a task, a statement runs on libuv's thread pool while the task
 * waits at a yield point, so the worker's loop goes on (other tasks, timers,
 * heartbeats). One statement at a time per connection; the connection is
 * used by one thread at a time (SQLITE_OPEN_NOMUTEX allows that). */

struct ath_db_sqop_s {
  uv_work_t req;
  ath_db_t* db;
  char* sql;
  ath_db_value_t* params; /* copies, strings after them in the same block */
  int n;
  ath_db_res_t* out;
  ath_db_error_t err;
  int rc;
  ath_db_cb cb;
  void* ud;
  int ended;              /* after_work ran: the outcome is there */
  int aborted;            /* given up: after_work frees it, cb never runs */
  uv_mutex_t m;           /* `ran`, for an abort waiting on a running statement */
  uv_cond_t c;
  int ran;
};

static void sqop_free(ath_db_sqop_t* op) {
  ath__db_res_free(op->out);
  uv_cond_destroy(&op->c);
  uv_mutex_destroy(&op->m);
  free(op->sql);
  free(op->params);
  free(op);
}

static void sqop_work(uv_work_t* req) {
  ath_db_sqop_t* op = req->data;
  op->rc = ath__db_sqlite_exec(op->db, op->sql, op->params, op->n, &op->out, &op->err);
  uv_mutex_lock(&op->m);
  op->ran = 1;
  uv_cond_signal(&op->c);
  uv_mutex_unlock(&op->m);
}

static void sqop_after(uv_work_t* req, int status) {
  ath_db_sqop_t* op = req->data;
  if (op->aborted) {
    sqop_free(op);
    return;
  }
  if (status != 0) { /* cancelled by libuv itself: not by us */
    op->rc = ATH_DB_EDB;
    ath__db_seterr(&op->err, ATH_DB_EDB, NULL, "the statement was cancelled", NULL, NULL);
  }
  op->ended = 1;
  op->cb(op->db, op->ud);
}

int ath__db_sqlite_busy(const ath_db_t* db) {
  return db->sqop != NULL && !db->sqop->ended;
}

int ath__db_sqlite_exec_async(ath_db_t* db, uv_loop_t* loop, const char* sql,
                              const ath_db_value_t* params, int n, ath_db_cb cb, void* ud,
                              ath_db_error_t* err) {
  if (ath__db_sqlite_busy(db)) {
    ath__db_seterr(err, ATH_DB_EBUSY, NULL, "another statement is in flight on this connection", NULL, NULL);
    return ATH_DB_EBUSY;
  }
  int rc = ath__db_connect(db, err); /* opening a file: quick, and errors come at once */
  if (rc != 0)
    return rc;
  ath__db_sqlite_drop_outcome(db);
  size_t bytes = (size_t)n * sizeof(ath_db_value_t);
  for (int i = 0; i < n; i++)
    if (params[i].s != NULL)
      bytes += params[i].len + 1;
  ath_db_sqop_t* op = calloc(1, sizeof(*op));
  if (op != NULL) {
    op->sql = strdup(sql);
    op->params = n > 0 ? malloc(bytes) : NULL;
  }
  if (op == NULL || op->sql == NULL || (n > 0 && op->params == NULL) || uv_mutex_init(&op->m) != 0) {
    if (op != NULL) {
      free(op->sql);
      free(op->params);
    }
    free(op);
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return ATH_ENOMEM;
  }
  uv_cond_init(&op->c);
  char* strings = (char*)(op->params + n);
  for (int i = 0; i < n; i++) {
    op->params[i] = params[i];
    if (params[i].s != NULL) {
      memcpy(strings, params[i].s, params[i].len);
      strings[params[i].len] = '\0';
      op->params[i].s = strings;
      strings += params[i].len + 1;
    }
  }
  op->n = n;
  op->db = db;
  op->cb = cb;
  op->ud = ud;
  op->req.data = op;
  if ((rc = uv_queue_work(loop, &op->req, sqop_work, sqop_after)) != 0) {
    sqop_free(op);
    ath__db_seterr(err, ATH_DB_EDB, NULL, uv_strerror(rc), NULL, NULL);
    return ATH_DB_EDB;
  }
  db->sqop = op;
  return 0;
}

int ath__db_sqlite_async_result(ath_db_t* db, ath_db_res_t** out, ath_db_error_t* err) {
  ath_db_sqop_t* op = db->sqop;
  *out = NULL;
  if (op == NULL || !op->ended) {
    ath__db_seterr(err, ATH_DB_EBUSY, NULL, "no statement has ended", NULL, NULL);
    return ATH_DB_EBUSY;
  }
  *out = op->out;
  op->out = NULL;
  int rc = op->rc;
  if (rc != 0)
    *err = op->err;
  db->sqop = NULL;
  sqop_free(op);
  return rc;
}

void ath__db_sqlite_drop_outcome(ath_db_t* db) {
  if (db->sqop != NULL && db->sqop->ended) { /* an outcome nobody took */
    sqop_free(db->sqop);
    db->sqop = NULL;
  }
}

/* Gives up on the statement in flight: one that has not started never
 * will; one that runs is interrupted and waited for (SQLite stops at its
 * next step). If a transaction is still open then, the connection is
 * dropped, taking the transaction with it, as a PostgreSQL abort does;
 * otherwise it stays, warm (an in-memory database keeps its data). The
 * work's memory goes when libuv is done with it. */
void ath__db_sqlite_abort(ath_db_t* db) {
  ath_db_sqop_t* op = db->sqop;
  if (op == NULL)
    return;
  db->sqop = NULL;
  if (op->ended) {
    sqop_free(op);
    return;
  }
  op->aborted = 1;
  if (uv_cancel((uv_req_t*)&op->req) == 0)
    return; /* never ran: the connection is as it was */
  sqlite3_interrupt(db->sq);
  uv_mutex_lock(&op->m);
  while (!op->ran)
    uv_cond_wait(&op->c, &op->m);
  uv_mutex_unlock(&op->m);
  if (db->sq != NULL && !sqlite3_get_autocommit(db->sq))
    ath__db_sqlite_disconnect(db);
}
