/* The database driver layer: SQLite and PostgreSQL (libpq) behind one small
 * C API, for athena.db / ctx.db (bindings/l_db.c) and for the gateway
 * server to come, which needs no Lua state to use it.
 *
 * A connection (ath_db_t) belongs to one thread. Statements run either
 * blocking (ath__db_exec) or driven by a libuv loop (ath__db_exec_async:
 * PostgreSQL's socket on the loop, SQLite on the loop's thread pool), the
 * way a worker runs them for its tasks. A statement's rows are read in full into
 * an ath_db_res_t, whose cells come back typed by the value mapping of
 * GATEWAY.md §7 (ath__db_res_value).
 *
 * Failures fill an ath_db_error_t: an ATH_DB_E* code, the driver's state
 * (PostgreSQL SQLSTATE or SQLite extended result code name) and the
 * driver's message. No message ever holds the connection URL or its
 * password: they are cut out before the message is stored. */
#ifndef ATHENA_DB_H
#define ATHENA_DB_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* -------------------------------------------------------------- errors */

/* Database error codes: the `code` Lua sees (err.code), and the gateway's
 * machine code (GATEWAY.md §6.8) for each. They sit below -21000, apart
 * from the engine's ATH_E* (EINVAL, ETIMEDOUT, EBUSY, ENOSPC and EIO keep
 * the engine's values, so ath_err_name works on them too). */
#define ATH_DB_ERRNO_MAP(XX)                                                 \
  XX(EINVAL, -22, "invalid_value", "invalid value or argument")              \
  XX(ETIMEDOUT, -110, "statement_timeout", "statement timed out")            \
  XX(EBUSY, -16, "database_unavailable", "database is busy")                 \
  XX(EUNIQUE, -21001, "unique_violation", "unique constraint violated")      \
  XX(EFOREIGNKEY, -21002, "foreign_key_violation", "foreign key violated")   \
  XX(ENOTNULL, -21003, "not_null_violation", "not-null constraint violated") \
  XX(ECHECK, -21004, "check_violation", "check constraint violated")         \
  XX(ESYNTAX, -21005, "syntax_error", "syntax error or unknown name")        \
  XX(ECONNLOST, -21006, "database_unavailable", "database connection lost")  \
  XX(ENOSPC, -28, "disk_full", "the database's disk is full")                \
  XX(EIO, -5, "database_io_error", "the database's disk failed")             \
  XX(EDB, -21007, "database_error", "database error")

typedef enum {
#define XX(name, val, _gw, _msg) ATH_DB_##name = (val),
  ATH_DB_ERRNO_MAP(XX)
#undef XX
} ath_db_errno_t;

/* A failure: code, driver state and the driver's message (redacted). */
typedef struct {
  int code;            /* ATH_DB_E* */
  char sqlstate[40];   /* "23505", "SQLITE_CONSTRAINT_UNIQUE", or "" */
  char message[512];
} ath_db_error_t;

/* "EUNIQUE" for ATH_DB_EUNIQUE, ...; "EDB" for codes it does not know. */
const char* ath__db_err_name(int code);
/* The gateway's machine code: "unique_violation", "invalid_value", ... */
const char* ath__db_err_gateway(int code);
/* Whether a later attempt may succeed: ECONNLOST, ETIMEDOUT and EBUSY. */
int ath__db_err_retryable(int code);
/* The code for a PostgreSQL SQLSTATE (5 characters, NULL: EDB). */
int ath__db_map_sqlstate(const char* sqlstate);
/* The code for an SQLite extended result code; `prepare` says the error
 * came from sqlite3_prepare (where SQLITE_ERROR means bad SQL). */
int ath__db_map_sqlite(int xrc, int prepare);

/* --------------------------------------------------------------- values */

typedef enum {
  ATH_DB_NULL = 0,
  ATH_DB_BOOL,         /* v.i is 0 or 1 */
  ATH_DB_INT,          /* v.i */
  ATH_DB_FLOAT,        /* v.d */
  ATH_DB_TEXT,         /* v.s, v.len: UTF-8 text (any bytes in SQLite) */
  ATH_DB_BLOB,         /* v.s, v.len: raw bytes */
  ATH_DB_JSON,         /* v.s, v.len: JSON text (PG json/jsonb; SQLite text in
                        * a column declared JSON, which may not be valid) */
  ATH_DB_NUMERIC       /* v.s, v.len: a decimal too precise for a double
                        * (PG numeric past 15 significant digits, NaN) */
} ath_db_type_t;

/* A parameter or a result cell. Strings are borrowed: a parameter's for the
 * call it is passed to, a cell's until its result is freed. */
typedef struct {
  ath_db_type_t type;
  int64_t i;
  double d;
  const char* s;
  size_t len;
} ath_db_value_t;

/* ---------------------------------------------------------- connections */

typedef struct ath_db_s ath_db_t;
typedef struct ath_db_res_s ath_db_res_t;

typedef enum { ATH_DB_SQLITE = 1, ATH_DB_PG = 2 } ath_db_kind_t;

/* Which backend a URL names: "sqlite:<path>", "sqlite::memory:",
 * "postgres://..." or "postgresql://...". Returns the kind, or 0 for
 * anything else (then the URL is not a database URL). Thread: any. */
int ath__db_url_kind(const char* url);

/* Makes a connection for `url` without connecting (no I/O): the URL is
 * checked and copied. Returns 0 and sets *out, ATH_DB_EINVAL (a URL that is
 * not a database URL or that libpq cannot parse; err says so without
 * quoting it) or ATH_ENOMEM. */
int ath__db_new(const char* url, ath_db_t** out, ath_db_error_t* err);
/* Connects, blocking the calling thread (does nothing when connected).
 * Returns 0, or ATH_DB_ECONNLOST (cannot connect, or SQLite cannot open the
 * file) with err set. */
int ath__db_connect(ath_db_t* db, ath_db_error_t* err);
/* Whether it is connected. A lost PostgreSQL connection (the server went
 * away, or an abort) reads as not connected; the next ath__db_connect or
 * exec connects again. */
int ath__db_connected(const ath_db_t* db);
/* Drops the server connection (the object stays usable: the next statement
 * connects again). Does not block except for PostgreSQL's goodbye. */
void ath__db_disconnect(ath_db_t* db);
/* Disconnects and frees. Not while an async statement is in flight
 * (ath__db_abort first). */
void ath__db_free(ath_db_t* db);
ath_db_kind_t ath__db_kind(const ath_db_t* db);

/* Runs one statement with `n` parameters bound to its placeholders,
 * blocking: connects first when not connected. Placeholders are `?` on
 * both backends (PostgreSQL: rewritten to $1, $2, ... outside quotes and
 * comments) or `$1`, `$2`, ... written out (then `?` is left as it is, so
 * jsonb's `?` operators still work). Returns 0 and sets *out (free it with
 * ath__db_res_free), or an ATH_DB_E* code with err set. */
int ath__db_exec(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                 ath_db_res_t** out, ath_db_error_t* err);

/* Receives the rows of ath__db_exec_rows one at a time; row[0..ncols) is
 * valid during the call only (text may point into the driver's memory).
 * Returns 0, or non-zero to stop the statement (ATH_ENOMEM). */
typedef int (*ath_db_row_fn)(void* ud, const ath_db_value_t* row, int ncols);
/* As ath__db_exec for one statement, with its rows handed to `fn` as they
 * come instead of kept: SQLite reads them straight from the statement,
 * PostgreSQL from its result. *changes gets the rows it changed. */
int ath__db_exec_rows(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n, ath_db_row_fn fn,
                      void* ud, int64_t* changes, ath_db_error_t* err);

/* Lets a long blocking statement stop early: `check(ud)` is called now and
 * then while SQLite works (every few thousand VM steps), and a non-zero
 * return interrupts the statement (ETIMEDOUT). NULL removes it. No effect
 * on PostgreSQL, whose blocking calls have statement_timeout. */
void ath__db_set_interrupt(ath_db_t* db, int (*check)(void* ud), void* ud);

/* Whether the file of an open SQLite connection was deleted, renamed or
 * replaced since it was opened (the connection then reads and writes a
 * file that is no longer the database its URL names). Two stat calls; 0 on
 * PostgreSQL, for in-memory databases and when not connected. */
int ath__db_file_moved(ath_db_t* db);

/* Whether the connection can run statements on a loop (both backends). */
int ath__db_can_async(const ath_db_t* db);
typedef void (*ath_db_cb)(ath_db_t* db, void* ud);
/* Starts the same as ath__db_exec on `loop` (connecting first when needed,
 * without blocking) and returns; `cb(db, ud)` runs on the loop's thread once
 * it has ended, and ath__db_async_result then gives the outcome. The SQL
 * and parameters are copied. One statement at a time per connection.
 * Returns 0, or a failure found before any wait (EBUSY when one is in
 * flight, ENOMEM, a bad parameter count, a connection that fails at once)
 * with err set, and then cb never runs. */
int ath__db_exec_async(ath_db_t* db, uv_loop_t* loop, const char* sql,
                       const ath_db_value_t* params, int n, ath_db_cb cb, void* ud,
                       ath_db_error_t* err);
/* After cb: the outcome, as ath__db_exec returns it. */
int ath__db_async_result(ath_db_t* db, ath_db_res_t** out, ath_db_error_t* err);
/* One statement of a pipeline, and what is told of its outcome: rc 0 and
 * res (the callee frees it), or an ATH_DB_E* code and err. */
typedef struct {
  const char* sql;
  const ath_db_value_t* params;
  int n;
  void* ud;                    /* given back to `each` */
} ath_db_stmt_t;
typedef void (*ath_db_each_cb)(ath_db_t* db, void* ud, int rc, ath_db_res_t* res, const ath_db_error_t* err);
/* PostgreSQL, on a connection that is up (ath__db_connected): sends the n
 * statements at once in libpq's pipeline mode, with one sync after the
 * last, so that the server reads them in one go and answers them in one
 * go; then `each(db, st[i].ud, ...)` runs for each, in order, as soon as
 * its outcome is in, and `done(db, ud)` after the last. Each succeeds or
 * fails alone, as if it ran by itself: those the server skipped after
 * another one's error are sent again, and so is one whose prepared
 * statement the schema changed under (once). The SQL and parameters are
 * copied. Returns 0, or a failure found before any wait (EBUSY, ENOMEM,
 * not connected, a bad parameter count) with err set, and then no
 * callback runs. ath__db_async_result is not used with it. */
int ath__db_pipeline_async(ath_db_t* db, uv_loop_t* loop, const ath_db_stmt_t* st, int n, ath_db_each_cb each,
                           ath_db_cb done, void* ud, ath_db_error_t* err);
/* Gives up on the statement in flight; cb never runs. PostgreSQL: asks
 * the server to cancel it and drops the connection (so no half-read reply
 * can confuse the next statement, which connects again). SQLite: interrupts
 * it and waits for it to stop (a step), then drops the connection only if
 * a transaction is left open. No-op when idle. */
void ath__db_abort(ath_db_t* db);
/* Whether a statement is in flight. */
int ath__db_busy(const ath_db_t* db);
/* PostgreSQL: keeps the loop's watch on the connection's socket from one
 * ath__db_exec_async to the next (a poll handle made and closed per
 * statement cost its allocation and two epoll_ctl calls); while no
 * statement runs it only notices the server closing the connection (it is
 * then dropped, as a lost one). The owner calls ath__db_unwatch on the
 * loop's thread before the connection is used anywhere else (blocking
 * calls, another loop) and before that loop ends. No-op for SQLite. */
void ath__db_keep_watch(ath_db_t* db);
/* Process-wide SQLite settings (no allocation statistics); called before
 * every first use of SQLite in the process, by anyone who opens it. Thread: any. */
void ath__sqlite_setup(void);
/* The name of the VFS that reads main database files from a mapping shared
 * by the process's connections (db_sqlite_map.c), or NULL (SQLite's
 * default VFS then). */
const char* ath__sqlite_map_vfs(void);
/* The name of the VFS of the store's writer: its writes to the database
 * and WAL are gathered into fewer, larger ones (db_sqlite_map.c), or NULL
 * (SQLite's default VFS then). */
const char* ath__sqlite_store_vfs(void);
void ath__db_unwatch(ath_db_t* db);

/* -------------------------------------------------------------- results */

int ath__db_res_ncols(const ath_db_res_t* r);
int ath__db_res_nrows(const ath_db_res_t* r);
const char* ath__db_res_colname(const ath_db_res_t* r, int col);
/* The cell at (row, col), both from 0, typed by the value mapping. Text
 * the driver had to convert (PostgreSQL timestamps to ISO 8601, bytea to
 * bytes) is kept in the result. Returns 0, or ATH_ENOMEM. */
int ath__db_res_value(ath_db_res_t* r, int row, int col, ath_db_value_t* v);
/* Rows the statement changed (INSERT, UPDATE, DELETE), else 0. */
int64_t ath__db_res_changes(const ath_db_res_t* r);
/* Hands each row of r to fn, as ath__db_exec_rows does. 0, or ENOMEM
 * (out of memory, or fn said so) with err set. */
int ath__db_res_rows(ath_db_res_t* r, ath_db_row_fn fn, void* ud, ath_db_error_t* err);
/* SQLite: the rowid of the last insert, with 1 returned; PostgreSQL has no
 * such thing (use RETURNING): returns 0. */
int ath__db_res_last_id(const ath_db_res_t* r, int64_t* id);
void ath__db_res_free(ath_db_res_t* r);

/* --------------------------------------------------- shared by backends */

/* Rewrites `?` placeholders to $1, $2, ... (PostgreSQL), skipping '...'
 * strings (with E'' escapes), "..." identifiers, -- and block comments
 * (nested, as PostgreSQL has them) and $tag$ dollar quotes. SQL that already
 * uses $n placeholders is copied as it is. Returns a malloc'd string (NULL
 * when out of memory) and sets *nph to the number of placeholders. */
char* ath__db_rewrite_placeholders(const char* sql, int* nph);
/* Fills err with `code`, `state` and the message `msg`, with every
 * occurrence of `secret1` and `secret2` (the URL, the password; NULL or ""
 * for none) replaced by "***". */
void ath__db_seterr(ath_db_error_t* err, int code, const char* state, const char* msg,
                    const char* secret1, const char* secret2);

/* Results are read in full; cells a driver converts live in its arena. */
typedef struct ath_db_chunk_s ath_db_chunk_t;
struct ath_db_res_s {
  ath_db_kind_t kind;
  int ncols, nrows;
  int64_t changes;
  int64_t last_id;
  int has_last_id;
  char** names;          /* ncols names (in the arena) */
  ath_db_value_t* cells; /* SQLite: nrows * ncols, typed by the mapping */
  size_t cells_cap;      /* in rows */
  void* pg;              /* PostgreSQL: the PGresult, converted on access */
  unsigned* oids;        /* its column types */
  ath_db_chunk_t* arena;
};
/* Memory that lives as long as the result; NULL when out of memory. */
char* ath__db_res_alloc(ath_db_res_t* r, size_t n);
/* A new empty result (NULL when out of memory). */
ath_db_res_t* ath__db_res_new(ath_db_kind_t kind);

/* The backends (db_sqlite.c, db_pg.c), called through db.c. */
struct ath_db_async_s;
struct ath_db_s {
  ath_db_kind_t kind;
  char* url;             /* kept to reconnect; never in a message */
  char* password;        /* cut out of messages too ("" when none) */
  void* sq;              /* sqlite3* */
  void* pg;              /* PGconn* */
  struct ath_db_async_s* op; /* PostgreSQL: the statement in flight, or NULL */
  struct ath_db_stmts_s* stmts; /* SQLite: prepared statements kept by SQL text */
  struct ath_db_pgstmts_s* pgstmts; /* PostgreSQL: statements prepared on this session */
  struct ath_db_sqop_s* sqop;   /* SQLite: the statement on the thread pool, or NULL */
  int keep_watch;        /* PostgreSQL: ath__db_keep_watch */
};
typedef struct ath_db_sqop_s ath_db_sqop_t;
int ath__db_sqlite_busy(const ath_db_t* db);
int ath__db_sqlite_exec_async(ath_db_t* db, uv_loop_t* loop, const char* sql,
                              const ath_db_value_t* params, int n, ath_db_cb cb, void* ud,
                              ath_db_error_t* err);
int ath__db_sqlite_async_result(ath_db_t* db, ath_db_res_t** out, ath_db_error_t* err);
void ath__db_sqlite_abort(ath_db_t* db);
void ath__db_sqlite_drop_outcome(ath_db_t* db);
int ath__db_sqlite_connect(ath_db_t* db, ath_db_error_t* err);
void ath__db_sqlite_disconnect(ath_db_t* db);
int ath__db_sqlite_exec(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                        ath_db_res_t** out, ath_db_error_t* err);
int ath__db_sqlite_exec_rows(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                             ath_db_row_fn fn, void* ud, int64_t* changes, ath_db_error_t* err);
int ath__db_pg_check_url(ath_db_t* db, ath_db_error_t* err);
int ath__db_pg_connect(ath_db_t* db, ath_db_error_t* err);
void ath__db_pg_disconnect(ath_db_t* db);
int ath__db_pg_exec(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                    ath_db_res_t** out, ath_db_error_t* err);
int ath__db_pg_value(ath_db_res_t* r, int row, int col, ath_db_value_t* v);
void ath__db_pg_res_clear(ath_db_res_t* r);

#endif
