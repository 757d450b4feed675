/* athena.db: database connections for Lua (engine/db/db.h underneath).
 *
 *   athena.db.open(url) -> conn | nil, err        (bad URL: raises EINVAL)
 *   conn:query(sql, ...) -> rows | nil, err       rows[i].column
 *   conn:exec(sql, ...) -> {changes, lastId} | nil, err
 *   conn:transaction(fn) -> fn's results | nil, err   (lua/athena/db.lua)
 *   conn:close()
 *
 * Inside a task, a PostgreSQL statement runs on the worker's loop and the
 * task yields until it ends; SQLite runs on the worker thread. Elsewhere
 * every call blocks.
 *
 * Tasks on one worker share its connection (ctx.db), one statement at a
 * time: a task that finds the connection in use (a statement in flight, or
 * another task's open transaction) waits its turn on the loop. A lost
 * connection is opened again on the next use; after a failed attempt the
 * next ones wait 500 ms, 1 s, 2 s ... up to 10 s (retryPatterns.database),
 * failing fast with ECONNLOST meanwhile. */
#include <stdlib.h>
#include <string.h>
#include "runtime.h"
#include "lath.h"
#include "db.h"

#define CONN "athena.DbConnection"
#define GUARD "athena.DbTransaction"
#define WAITER "athena.DbWaiter"

#define BACKOFF_INITIAL_MS 500
#define BACKOFF_MAX_MS 10000

typedef struct waiter_s waiter_t;

typedef struct {
  ath_db_t* db;          /* NULL once closed */
  int worker;            /* ctx.db: close() only disconnects */
  void* owner;           /* the coroutine using it (a statement or a
                          * transaction), or NULL */
  int depth;             /* open transaction levels (savepoints below 1) */
  unsigned epoch;        /* bumped when the server connection goes away:
                          * an open transaction went with it */
  void* doomed;          /* whose transaction went away: its statements
                          * fail (ECONNLOST) until it ends, rather than
                          * run outside it on a new connection */
  waiter_t* wait_head;   /* tasks waiting for the connection, in order */
  waiter_t* wait_tail;
  int failures;          /* failed connection attempts in a row */
  uint64_t retry_at;     /* no new attempt before this (uv_hrtime ns) */
  ath_io_wait_t io;      /* the task waiting on the statement in flight */
} lconn_t;

/* A task waiting for the connection. Lives in a userdata on the task's
 * stack. The wake-up goes through a zero timer, so that the task resumes
 * from the loop, never from inside another task's call. */
typedef struct wake_s wake_t;
struct waiter_s {
  ath_io_wait_t io;
  lconn_t* c;
  uv_loop_t* loop;
  wake_t* wake;          /* a wake-up on its way, or NULL */
  waiter_t* next;
  int queued;
};

struct wake_s {
  uv_timer_t timer;      /* first: timer.data is this struct */
  waiter_t* w;           /* NULL when the waiter gave up first */
};

/* ------------------------------------------------------------- errors */

/* [-0, +2, m] nil and an athena.Error for a driver failure. */
static int push_dberr(lua_State* L, const ath_db_error_t* e) {
  lua_pushnil(L);
  lua_createtable(L, 0, 6);
  lua_pushstring(L, ath__db_err_name(e->code));
  lua_setfield(L, -2, "code");
  lua_pushstring(L, e->message);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, ath__db_err_retryable(e->code));
  lua_setfield(L, -2, "retryable");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "attempt");
  if (e->sqlstate[0]) {
    lua_pushstring(L, e->sqlstate);
    lua_setfield(L, -2, "sqlstate");
  }
  luaL_setmetatable(L, "athena.Error");
  return 2;
}

static int fail_msg(lua_State* L, int code, const char* msg) {
  ath_db_error_t e;
  ath__db_seterr(&e, code, NULL, msg, NULL, NULL);
  return push_dberr(L, &e);
}

/* ------------------------------------------------------------ objects */

/* [-0, +0, v] The open connection at idx; raises if it is closed. */
static lconn_t* check_conn(lua_State* L, int idx) {
  lconn_t* c = luaL_checkudata(L, idx, CONN);
  if (c->db == NULL)
    luaL_error(L, "attempt to use a closed database connection");
  return c;
}

static void wake_closed(uv_handle_t* h) {
  free(h->data);
}

static void wake_cb(uv_timer_t* t) {
  wake_t* k = t->data;
  waiter_t* w = k->w;
  uv_close((uv_handle_t*)t, wake_closed);
  if (w != NULL) {
    w->wake = NULL;
    ath__task_io_done(&w->io);
  }
}

/* Lets the first waiter (if any) try again, from the loop. */
static void wake_next(lconn_t* c) {
  waiter_t* w = c->wait_head;
  if (w == NULL)
    return;
  c->wait_head = w->next;
  if (c->wait_head == NULL)
    c->wait_tail = NULL;
  w->queued = 0;
  wake_t* k = calloc(1, sizeof(*k));
  if (k == NULL || uv_timer_init(w->loop, &k->timer) != 0) {
    free(k);
    ath__task_io_done(&w->io); /* out of memory: wake it now */
    return;
  }
  k->timer.data = k;
  k->w = w;
  w->wake = k;
  uv_timer_start(&k->timer, wake_cb, 0, 0);
}

/* The connection is free again unless a transaction holds it. */
static void release(lconn_t* c) {
  if (c->depth > 0)
    return;
  c->owner = NULL;
  wake_next(c);
}

/* The server connection went away: transactions with it. */
static void lost(lconn_t* c) {
  if (c->depth > 0)
    c->doomed = c->owner;
  c->epoch++;
  c->depth = 0;
}

static void unqueue(lconn_t* c, waiter_t* w) {
  waiter_t** pp = &c->wait_head;
  c->wait_tail = NULL;
  while (*pp != NULL) {
    if (*pp == w)
      *pp = w->next;
    else {
      c->wait_tail = *pp;
      pp = &(*pp)->next;
    }
  }
  w->queued = 0;
}

/* The task stopped waiting for the connection (cancel, timeout). */
static void waiter_abort(ath_io_wait_t* io) {
  waiter_t* w = (waiter_t*)io;
  if (w->queued)
    unqueue(w->c, w);
  if (w->wake != NULL) { /* it was its turn: pass it on */
    w->wake->w = NULL;
    w->wake = NULL;
    if (w->c->owner == NULL)
      wake_next(w->c);
  }
}

/* The task stopped waiting for its statement: the statement is abandoned
 * and the server connection dropped (the next use connects again). */
static void op_abort(ath_io_wait_t* io) {
  lconn_t* c = (lconn_t*)((char*)io - offsetof(lconn_t, io));
  if (c->db != NULL)
    ath__db_abort(c->db);
  lost(c);
  release(c);
}

static void op_done(ath_db_t* db, void* ud) {
  (void)db;
  lconn_t* c = ud;
  ath__task_io_done(&c->io);
}

/* __gc and __close: closes once; later calls do nothing. */
static void conn_free(lconn_t* c) {
  ath_db_t* db = c->db;
  c->db = NULL;
  if (db != NULL)
    ath__db_free(db); /* aborts a statement in flight first */
}

static int conn_gc(lua_State* L) {
  conn_free(luaL_checkudata(L, 1, CONN));
  return 0;
}

/* conn:close(): closes the connection; ctx.db only disconnects (the next
 * use connects again), since it belongs to the worker. Raises if another
 * task is using it. */
static int conn_close(lua_State* L) {
  lconn_t* c = luaL_checkudata(L, 1, CONN);
  if (c->db == NULL)
    return 0;
  if ((c->owner != NULL && c->owner != L) || ath__db_busy(c->db))
    return ath__raise(L, ATH_EBUSY, "database connection in use by another task");
  if (c->worker) {
    ath__db_disconnect(c->db);
    lost(c);
  } else {
    conn_free(c);
  }
  c->owner = NULL;
  c->depth = 0;
  return 0;
}

static int conn_tostring(lua_State* L) {
  lconn_t* c = luaL_checkudata(L, 1, CONN);
  /* never the URL: it may hold a password */
  if (c->db == NULL)
    lua_pushliteral(L, "athena.DbConnection (closed)");
  else
    lua_pushfstring(L, "athena.DbConnection (%s, %p)",
                    ath__db_kind(c->db) == ATH_DB_PG ? "postgres" : "sqlite", (void*)c);
  return 1;
}

/* --------------------------------------------------------------- values */

static const char HEX[] = "0123456789abcdef";

/* [-0, +1, m] Pushes one cell by the value mapping. */
static void push_cell(lua_State* L, const ath_db_value_t* v) {
  switch (v->type) {
    case ATH_DB_NULL:
      lua_pushlightuserdata(L, NULL); /* athena.null: the key stays */
      break;
    case ATH_DB_BOOL:
      lua_pushboolean(L, (int)v->i);
      break;
    case ATH_DB_INT:
      lua_pushinteger(L, (lua_Integer)v->i);
      break;
    case ATH_DB_FLOAT:
      lua_pushnumber(L, v->d);
      break;
    case ATH_DB_BLOB: {
      luaL_Buffer b;
      char* p = luaL_buffinitsize(L, &b, 2 + 2 * v->len);
      p[0] = '\\';
      p[1] = 'x';
      for (size_t i = 0; i < v->len; i++) {
        p[2 + 2 * i] = HEX[(unsigned char)v->s[i] >> 4];
        p[3 + 2 * i] = HEX[(unsigned char)v->s[i] & 15];
      }
      luaL_pushresultsize(&b, 2 + 2 * v->len);
      break;
    }
    case ATH_DB_JSON:
      if (ath__json_decode_nulls(L, v->s, v->len, 1) != 0) {
        lua_pop(L, 1); /* not JSON after all (SQLite): the text */
        lua_pushlstring(L, v->s, v->len);
      }
      break;
    default:
      lua_pushlstring(L, v->s, v->len);
  }
}

/* [-0, +1, m] Pushes the rows of r: an array of {column = value}. */
static int push_rows(lua_State* L, ath_db_res_t* r) {
  int nrows = ath__db_res_nrows(r), ncols = ath__db_res_ncols(r);
  lua_createtable(L, nrows, 0);
  luaL_checkstack(L, 4, NULL);
  for (int i = 0; i < nrows; i++) {
    lua_createtable(L, 0, ncols);
    for (int c = 0; c < ncols; c++) {
      ath_db_value_t v;
      if (ath__db_res_value(r, i, c, &v) != 0)
        return luaL_error(L, "not enough memory");
      push_cell(L, &v);
      lua_setfield(L, -2, ath__db_res_colname(r, c));
    }
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* [-0, +1, m] Pushes {changes = n, lastId = id}. */
static int push_changes(lua_State* L, ath_db_res_t* r) {
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)ath__db_res_changes(r));
  lua_setfield(L, -2, "changes");
  int64_t id;
  if (ath__db_res_last_id(r, &id)) {
    lua_pushinteger(L, (lua_Integer)id);
    lua_setfield(L, -2, "lastId");
  }
  return 1;
}

/* [-0, +1, v] Reads the parameters at first..top into a userdata array
 * (pushed); tables become JSON strings left on the stack in their place.
 * Raises EINVAL naming a parameter that cannot be bound. */
static ath_db_value_t* check_params(lua_State* L, int first, int n) {
  for (int i = 0; i < n; i++) { /* JSON first: it replaces stack slots */
    int idx = first + i;
    if (lua_type(L, idx) != LUA_TTABLE)
      continue;
    ath_buf_t b = {0};
    char err[256], root[32];
    snprintf(root, sizeof(root), "parameter #%d", i + 1);
    if (ath__json_encode(L, idx, root, &b, err, sizeof(err)) != 0) {
      ath__buf_free(&b);
      ath__raise(L, ATH_EINVAL, "%s", err);
    }
    lua_pushlstring(L, b.data, b.len); /* may raise: b leaks only then */
    ath__buf_free(&b);
    lua_replace(L, idx);
  }
  ath_db_value_t* p = lua_newuserdatauv(L, sizeof(*p) * (size_t)n, 0);
  for (int i = 0; i < n; i++) {
    int idx = first + i;
    ath_db_value_t* v = &p[i];
    memset(v, 0, sizeof(*v));
    switch (lua_type(L, idx)) {
      case LUA_TNIL:
        v->type = ATH_DB_NULL;
        break;
      case LUA_TBOOLEAN:
        v->type = ATH_DB_BOOL;
        v->i = lua_toboolean(L, idx);
        break;
      case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
          v->type = ATH_DB_INT;
          v->i = lua_tointeger(L, idx);
        } else {
          v->type = ATH_DB_FLOAT;
          v->d = lua_tonumber(L, idx);
        }
        break;
      case LUA_TSTRING:
        v->type = ATH_DB_TEXT;
        v->s = lua_tolstring(L, idx, &v->len);
        break;
      case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) { /* athena.null */
          v->type = ATH_DB_NULL;
          break;
        }
        /* fall through */
      default:
        ath__raise(L, ATH_EINVAL, "invalid parameter #%d (a %s cannot be bound)", i + 1,
                   luaL_typename(L, idx));
    }
  }
  return p;
}

/* ------------------------------------------------------------ statements */

/* What a call does once it has the connection. */
enum { M_QUERY = 0, M_EXEC, M_OPEN, M_BEGIN, M_COMMIT, M_ROLLBACK };
/* Where it is: waiting for the connection, or for its statement. */
enum { S_ACQUIRE = 0, S_RUN };

#define KCTX(mode, stage) ((lua_KContext)((mode) | ((stage) << 4)))
#define KMODE(k) ((int)((k) & 15))
#define KSTAGE(k) ((int)((k) >> 4))

/* Stack layout of a call: 1 conn, 2 sql (or the transaction guard),
 * 3.. parameters; then the parameter array. */

/* The SQL a transaction step runs at `depth` (before the change). */
static const char* tx_sql(int mode, int depth, char* buf, size_t len) {
  if (mode == M_BEGIN)
    return depth == 0 ? "BEGIN" : (snprintf(buf, len, "SAVEPOINT athena_sp_%d", depth), buf);
  if (depth <= 1)
    return mode == M_COMMIT ? "COMMIT" : "ROLLBACK";
  if (mode == M_COMMIT)
    snprintf(buf, len, "RELEASE SAVEPOINT athena_sp_%d", depth - 1);
  else
    snprintf(buf, len, "ROLLBACK TO SAVEPOINT athena_sp_%d; RELEASE SAVEPOINT athena_sp_%d",
             depth - 1, depth - 1);
  return buf;
}

/* A transaction guard: which connection level it opened and in which
 * server connection (epoch), so that its __close can roll back a
 * transaction that fn left by an error or an interrupt. */
typedef struct {
  int depth;             /* the level it opened (1 = BEGIN) */
  unsigned epoch;
  void* owner;
  int open;
} guard_t;

/* Finishes a call: pushes its outcome from r / the error. */
static int finish(lua_State* L, lconn_t* c, int mode, int rc, ath_db_res_t* r,
                  const ath_db_error_t* e, int was_connected) {
  if (rc == ATH_DB_ECONNLOST) {
    lost(c);
    if (!was_connected) { /* a failed attempt to connect: back off */
      uint64_t ms = BACKOFF_INITIAL_MS;
      for (int i = 0; i < c->failures && ms < BACKOFF_MAX_MS; i++)
        ms *= 2;
      if (ms > BACKOFF_MAX_MS)
        ms = BACKOFF_MAX_MS;
      c->failures++;
      c->retry_at = uv_hrtime() + ms * 1000000u;
    }
  } else if (c->db != NULL && ath__db_connected(c->db)) {
    c->failures = 0;
  }
  if (rc == 0 && (mode == M_BEGIN || mode == M_COMMIT || mode == M_ROLLBACK)) {
    guard_t* g = luaL_checkudata(L, 2, GUARD);
    if (mode == M_BEGIN) {
      g->depth = ++c->depth;
      g->epoch = c->epoch;
      g->owner = c->owner;
      g->open = 1;
    } else {
      c->depth = g->depth - 1;
      g->open = 0;
    }
  }
  if (mode == M_ROLLBACK || mode == M_COMMIT) {
    guard_t* g = luaL_checkudata(L, 2, GUARD);
    if (rc != 0 && mode == M_COMMIT && g->depth == 1) {
      /* a failed COMMIT ends the transaction all the same */
      c->depth = 0;
      g->open = 0;
    }
  }
  release(c);
  if (rc != 0) {
    ath__db_res_free(r);
    return push_dberr(L, e);
  }
  int n;
  if (mode == M_QUERY)
    n = push_rows(L, r); /* raises only on memory errors: r then leaks */
  else if (mode == M_EXEC)
    n = push_changes(L, r);
  else if (mode == M_OPEN)
    n = (lua_pushvalue(L, 1), 1);
  else if (mode == M_BEGIN)
    n = (lua_pushvalue(L, 2), 1); /* the guard */
  else
    n = (lua_pushboolean(L, 1), 1);
  ath__db_res_free(r);
  return n;
}

static int call_k(lua_State* L, int status, lua_KContext k);

static int task_due(void* ud) {
  return ath__task_due(ud);
}

/* Waits (in a task) for the connection, or fails when it cannot wait. */
static int acquire(lua_State* L, lconn_t* c, int mode, int* done) {
  *done = 0;
  if (c->owner == NULL || c->owner == L) {
    c->owner = L;
    return 0;
  }
  uv_loop_t* loop = ath__task_loop(L);
  if (loop == NULL) {
    *done = 1;
    return fail_msg(L, ATH_DB_EBUSY, "database connection in use by a task");
  }
  waiter_t* w = lua_newuserdatauv(L, sizeof(*w), 0);
  memset(w, 0, sizeof(*w));
  luaL_setmetatable(L, WAITER);
  w->io.abort = waiter_abort;
  w->c = c;
  w->loop = loop;
  w->queued = 1;
  if (c->wait_tail)
    c->wait_tail->next = w;
  else
    c->wait_head = w;
  c->wait_tail = w;
  return ath__task_io(L, &w->io, call_k, KCTX(mode, S_ACQUIRE));
}

/* Runs the call's statement: on the loop in a task (PostgreSQL), else
 * blocking. */
static int run(lua_State* L, lconn_t* c, int mode) {
  if (c->db == NULL) { /* closed while this call waited */
    release(c);
    return luaL_error(L, "attempt to use a closed database connection");
  }
  int was_connected = ath__db_connected(c->db);
  if (!was_connected && c->failures > 0 && uv_hrtime() < c->retry_at) {
    release(c);
    return fail_msg(L, ATH_DB_ECONNLOST, "database unreachable; backing off before reconnecting");
  }
  if (c->doomed != NULL && c->doomed == L && (mode == M_QUERY || mode == M_EXEC || mode == M_BEGIN)) {
    release(c);
    return fail_msg(L, ATH_DB_ECONNLOST, "connection lost during the transaction");
  }
  char buf[96];
  const char* sql;
  int n = 0;
  ath_db_value_t* params = NULL;
  if (mode == M_QUERY || mode == M_EXEC) {
    sql = lua_tostring(L, 2);
    n = (int)lua_rawlen(L, 3) / (int)sizeof(ath_db_value_t);
    params = lua_touserdata(L, 3);
  } else if (mode == M_OPEN) {
    sql = "";
  } else {
    guard_t* g = luaL_checkudata(L, 2, GUARD);
    if (mode != M_BEGIN && (!g->open || g->epoch != c->epoch)) {
      /* ended already, or the server connection went away since BEGIN
       * (taking the transaction, and the depth, with it) */
      int gone = g->open;
      g->open = 0;
      if (g->depth == 1 && c->doomed == g->owner)
        c->doomed = NULL; /* its transaction is over */
      release(c);
      if (mode == M_ROLLBACK || !gone)
        return (lua_pushboolean(L, 1), 1);
      return fail_msg(L, ATH_DB_ECONNLOST, "connection lost during the transaction");
    }
    sql = tx_sql(mode, mode == M_BEGIN ? c->depth : g->depth, buf, sizeof(buf));
  }
  uv_loop_t* loop = ath__db_can_async(c->db) ? ath__task_loop(L) : NULL;
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  if (loop != NULL) {
    int rc = ath__db_exec_async(c->db, loop, sql, params, n, op_done, c, &e);
    if (rc != 0)
      return finish(L, c, mode, rc, NULL, &e, was_connected);
    lua_pushboolean(L, was_connected); /* for the continuation */
    c->io.abort = op_abort;
    return ath__task_io(L, &c->io, call_k, KCTX(mode, S_RUN));
  }
  int rc;
  if (mode == M_OPEN) {
    rc = ath__db_connect(c->db, &e);
  } else {
    /* in a task, a deadline or cancel stops a long SQLite statement */
    ath_slot_t* s = ath__task_current(L);
    if (s != NULL && ath__db_connect(c->db, &e) == 0)
      ath__db_set_interrupt(c->db, task_due, s);
    rc = ath__db_exec(c->db, sql, params, n, &r, &e);
    if (s != NULL)
      ath__db_set_interrupt(c->db, NULL, NULL);
  }
  return finish(L, c, mode, rc, r, &e, was_connected);
}

static int call_k(lua_State* L, int status, lua_KContext k) {
  (void)status;
  lconn_t* c = luaL_checkudata(L, 1, CONN);
  int mode = KMODE(k);
  if (KSTAGE(k) == S_ACQUIRE) {
    lua_pop(L, 1); /* the waiter */
    int done;
    int n = acquire(L, c, mode, &done);
    if (done)
      return n;
    return run(L, c, mode);
  }
  int was_connected = lua_toboolean(L, -1);
  lua_pop(L, 1);
  ath_db_error_t e;
  ath_db_res_t* r = NULL;
  int rc = c->db ? ath__db_async_result(c->db, &r, &e) : ATH_DB_ECONNLOST;
  if (c->db == NULL)
    ath__db_seterr(&e, ATH_DB_ECONNLOST, NULL, "connection closed", NULL, NULL);
  return finish(L, c, mode, rc, r, &e, was_connected);
}

/* Starts a call whose arguments are in place. */
static int call(lua_State* L, lconn_t* c, int mode) {
  if (ath__task_workflow(L) != NULL) /* SEMANTICS §9.1: workflow code does no I/O */
    return ath__raise(L, ATH_EINVAL, "athena.db: not allowed in workflow code");
  int done;
  int n = acquire(L, c, mode, &done);
  if (done)
    return n;
  return run(L, c, mode);
}

/* conn:query(sql, ...) -> rows | nil, err */
static int conn_query(lua_State* L) {
  lconn_t* c = check_conn(L, 1);
  luaL_checkstring(L, 2);
  int n = lua_gettop(L) - 2;
  ath_db_value_t* p = check_params(L, 3, n);
  (void)p;
  /* keep conn, sql and the array at 1, 2, 3; the values stay anchored
   * above (strings and JSON) */
  lua_insert(L, 3);
  return call(L, c, M_QUERY);
}

/* conn:exec(sql, ...) -> {changes = n, lastId = id} | nil, err */
static int conn_exec(lua_State* L) {
  lconn_t* c = check_conn(L, 1);
  luaL_checkstring(L, 2);
  int n = lua_gettop(L) - 2;
  check_params(L, 3, n);
  lua_insert(L, 3);
  return call(L, c, M_EXEC);
}

/* conn:_begin() -> guard | nil, err: BEGIN (or a SAVEPOINT when nested) for
 * conn:transaction; the guard's __close rolls back what is left open. */
static int conn_begin(lua_State* L) {
  lconn_t* c = check_conn(L, 1);
  lua_settop(L, 1);
  guard_t* g = lua_newuserdatauv(L, sizeof(*g), 1);
  memset(g, 0, sizeof(*g));
  luaL_setmetatable(L, GUARD);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1); /* the guard keeps its connection alive */
  int rc = call(L, c, M_BEGIN);
  return rc;
}

/* conn:_end(guard, commit) -> true | nil, err */
static int conn_end(lua_State* L) {
  lconn_t* c = check_conn(L, 1);
  luaL_checkudata(L, 2, GUARD);
  int commit = lua_toboolean(L, 3);
  lua_settop(L, 2);
  return call(L, c, commit ? M_COMMIT : M_ROLLBACK);
}

/* The guard's __close (and __gc): a transaction level fn left open (an
 * error, an interrupt that closed the task's coroutine) is rolled back,
 * blocking: this may run where nothing can yield. A C function, so the
 * task hook, which may be raising on every Lua instruction, cannot stop
 * it. */
static int guard_close(lua_State* L) {
  guard_t* g = luaL_checkudata(L, 1, GUARD);
  if (!g->open)
    return 0;
  g->open = 0;
  lua_getiuservalue(L, 1, 1);
  lconn_t* c = luaL_testudata(L, -1, CONN);
  if (c != NULL && g->depth == 1 && c->doomed == g->owner)
    c->doomed = NULL; /* its transaction is over */
  if (c == NULL || c->db == NULL || c->owner != g->owner)
    return 0;
  if (g->epoch == c->epoch && ath__db_connected(c->db) && !ath__db_busy(c->db)) {
    char buf[96];
    ath_db_error_t e;
    ath_db_res_t* r = NULL;
    if (ath__db_exec(c->db, tx_sql(M_ROLLBACK, g->depth, buf, sizeof(buf)), NULL, 0, &r, &e) ==
        0)
      ath__db_res_free(r);
    else
      lost(c); /* unsure what state it is in: start over */
    if (c->epoch != g->epoch)
      ath__db_disconnect(c->db);
  }
  c->depth = g->depth - 1 > 0 && g->epoch == c->epoch ? g->depth - 1 : 0;
  release(c);
  return 0;
}

/* ---------------------------------------------------------------- open */

/* [-0, +1, m] A new connection object for url (not connected); raises
 * EINVAL for a URL that is not a database URL. */
static lconn_t* new_conn(lua_State* L, const char* url) {
  lconn_t* c = lua_newuserdatauv(L, sizeof(*c), 0);
  memset(c, 0, sizeof(*c));
  luaL_setmetatable(L, CONN);
  ath_db_error_t e;
  int rc = ath__db_new(url, &c->db, &e);
  if (rc != 0)
    ath__raise(L, rc == ATH_DB_EINVAL ? ATH_EINVAL : rc, "%s", e.message);
  return c;
}

/* athena.db.open(url) -> conn | nil, err */
static int db_open(lua_State* L) {
  const char* url = luaL_checkstring(L, 1);
  lconn_t* c = new_conn(L, url);
  lua_replace(L, 1);
  lua_settop(L, 1);
  lua_pushnil(L); /* 2: no SQL */
  return call(L, c, M_OPEN);
}

/* athena.db.check(url) -> true | nil, err: whether url names a database
 * (for World.new's `database`), without connecting. */
static int db_check(lua_State* L) {
  const char* url = luaL_checkstring(L, 1);
  ath_db_t* db = NULL;
  ath_db_error_t e;
  if (ath__db_new(url, &db, &e) != 0)
    return push_dberr(L, &e);
  ath__db_free(db);
  lua_pushboolean(L, 1);
  return 1;
}

static const char worker_conn_key = 0;

void lath_db_push_ctx(lua_State* L, const char* url) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &worker_conn_key) == LUA_TUSERDATA)
    return;
  lua_pop(L, 1);
  /* conn:transaction lives in athena.db (Lua) */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "athena.db");
  lua_call(L, 1, 0);
  lconn_t* c = new_conn(L, url);
  c->worker = 1;
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &worker_conn_key);
}

int lath_open_db(lua_State* L) {
  static const luaL_Reg meta[] = {
    {"__index", NULL},
    {"__gc", conn_gc},
    {"__close", conn_gc},
    {"__tostring", conn_tostring},
    {NULL, NULL},
  };
  static const luaL_Reg methods[] = {
    {"query", conn_query},
    {"exec", conn_exec},
    {"close", conn_close},
    {"_begin", conn_begin},
    {"_end", conn_end},
    {NULL, NULL},
  };
  static const luaL_Reg guard_meta[] = {
    {"__close", guard_close},
    {"__gc", guard_close},
    {NULL, NULL},
  };
  static const luaL_Reg no_meta[] = {{NULL, NULL}};
  ath__newclass(L, CONN, meta, methods); /* leaves the methods */
  ath__newclass(L, GUARD, guard_meta, NULL);
  lua_pop(L, 1);
  ath__newclass(L, WAITER, no_meta, NULL);
  lua_pop(L, 1);
  lua_createtable(L, 0, 4);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  lua_pushcfunction(L, db_open);
  lua_setfield(L, -2, "open");
  lua_pushcfunction(L, db_check);
  lua_setfield(L, -2, "check");
  return 1;
}
