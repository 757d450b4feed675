/* athena.Backend: a store provider (athena.h "store providers") whose
 * persist and load are Lua functions, an event sink whose deliver is
 * stream, and an authorizer whose authorize is one (docs/lua-api.md
 * "Custom backends: athena.Backend").
 *
 * The functions run in the backend's own Lua states, one thread at a time
 * each. The store's is made when the world opens its store and used by the
 * starting thread (load), then the store thread (persist), then the one
 * that closes the world. The sink's is made on the event thread at the
 * first event; the authorizer's, one per HTTP thread (each gateway thread,
 * the engine's), at that thread's first request, so that the threads never
 * wait for each other's authorize calls. Functions cannot cross states, so they come either as
 * a module each state requires, or as bytecode (string.dump) of functions
 * without upvalues, which init.lua checks. Every call runs under a time
 * limit (a count hook, re-armed so a pcall cannot swallow it) and each
 * state under a heap limit; what could raise outside a call runs
 * protected too. An error or a bad return is a failed persist (the world
 * degrades and retries, SEMANTICS §13), a failed start (load), a retried
 * event (stream) or a denied request (authorize). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "lath.h"
#include "runtime.h"

typedef struct lbackend_s lbackend_t;

/* One of the backend's Lua states: the store's (persist, load), the event
 * sink's (stream) or the authorizer's (authorize). */
typedef struct bstate_s {
  lbackend_t* b;
  lua_State* L;
  size_t mem_used;
  uint64_t deadline;      /* ns, of the call running; 0: none */
  int fn_ref[4];          /* persist, load, stream, authorize (LUA_NOREF: absent) */
  int info_ref;           /* {dir, config}: the functions' last argument */
  struct bstate_s* next;  /* the authorizer's states: every thread's */
} bstate_t;

struct lbackend_s {
  ath_store_provider_t p;
  ath_event_sink_t sink;
  ath_authorizer_t authz;
  char* module;           /* or NULL: the chunks */
  char* chunk[4];         /* bytecode of persist, load, stream, authorize (or NULL) */
  size_t chunk_len[4];
  char* config;           /* JSON of Backend.new's config, or NULL */
  size_t config_len;
  char* lua_path;
  char* lua_cpath;
  char* dir;              /* persistencePath, from open */
  size_t mem_limit;       /* per state */
  int64_t limit_ms;       /* what one call may take before it is interrupted */
  bstate_t store, stream;
  uv_key_t auth_key;      /* the calling thread's authorize state (bstate_t*) */
  int has_key;
  bstate_t* auth;         /* every thread's authorize state, freed with the backend */
  uv_mutex_t auth_lock;   /* guards the list */
};

enum { FN_PERSIST = 0, FN_LOAD, FN_STREAM, FN_AUTHORIZE, NFN };
static const char* const fn_name[] = {"persist", "load", "stream", "authorize"};

/* The state's heap, up to mem_limit (Lua then raises a memory error). */
static void* backend_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  bstate_t* s = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    s->mem_used -= old;
    return NULL;
  }
  if (nsize > old && s->mem_used + (nsize - old) > s->b->mem_limit)
    return NULL;
  void* p = realloc(ptr, nsize);
  if (p != NULL)
    s->mem_used = s->mem_used - old + nsize;
  return p;
}

/* Interrupts a call past its deadline, then again at every instruction
 * until it returns: a pcall inside the function cannot swallow it. */
static void backend_hook(lua_State* L, lua_Debug* ar) {
  (void)ar;
  bstate_t* s = *(bstate_t**)lua_getextraspace(L);
  if (s->deadline != 0 && ath__mono_ns() > s->deadline) {
    lua_sethook(L, backend_hook, LUA_MASKCOUNT, 1); /* at every instruction from here on */
    luaL_error(L, "the backend function ran past its time limit (%d ms)", (int)s->b->limit_ms);
  }
}

/* Calls the function below nargs arguments under the time limit. */
static int limited_call(bstate_t* s, int nargs, int nresults) {
  s->deadline = ath__mono_ns() + (uint64_t)s->b->limit_ms * 1000000u;
  lua_sethook(s->L, backend_hook, LUA_MASKCOUNT, 1000);
  int st = lua_pcall(s->L, nargs, nresults, 0);
  lua_sethook(s->L, NULL, 0, 0);
  s->deadline = 0;
  return st;
}

/* [-0, +1, m] Pushes t[key] of the table at absolute index t, without
 * metamethods (user tables may carry hostile ones). */
static int rawfield(lua_State* L, int t, const char* key) {
  lua_pushstring(L, key);
  return lua_rawget(L, t);
}

/* The error value on top as a message, without running any of its
 * metamethods: a string, or a table's `message`, else its type. Sets *code
 * from a table's `code` when that is ENOSPC or EIO (ESTORE otherwise). */
static void error_text(lua_State* L, int status, char* err, size_t errlen, int* code) {
  *code = ATH_ESTORE;
  if (status == LUA_ERRMEM) {
    snprintf(err, errlen, "%s", "out of memory (the backend state's heap limit)");
    return;
  }
  int top = lua_gettop(L);
  const char* msg = NULL;
  if (lua_type(L, -1) == LUA_TSTRING) {
    msg = lua_tostring(L, -1);
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    if (rawfield(L, top, "code") == LUA_TSTRING) {
      int c = ath_err_code(lua_tostring(L, -1));
      if (c == ATH_ENOSPC || c == ATH_EIO)
        *code = c;
    }
    if (rawfield(L, top, "message") == LUA_TSTRING)
      msg = lua_tostring(L, -1);
  }
  if (msg != NULL)
    snprintf(err, errlen, "%s", msg);
  else
    snprintf(err, errlen, "(a %s error value)", luaL_typename(L, top));
  lua_settop(L, top);
}

/* Calls the function `fn` with the nargs values on top, then the info
 * table, under the limits. Returns LUA_OK with its one result on top, or
 * the status with the message in err (and *code). */
static int backend_call(bstate_t* s, int fn, int nargs, int nresults, char* err, size_t errlen,
                        int* code) {
  lua_State* L = s->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->fn_ref[fn]);
  lua_insert(L, -nargs - 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->info_ref);
  int st = limited_call(s, nargs + 1, nresults);
  if (st != LUA_OK) {
    char msg[400];
    error_text(L, st, msg, sizeof(msg), code);
    snprintf(err, errlen, "backend %s raised: %s", fn_name[fn], msg);
    lua_pop(L, 1);
    lua_gc(L, LUA_GCCOLLECT);
  }
  return st;
}

/* ------------------------------------------------------------ the rows */

/* The fields of a row as Lua sees them, one table for both directions. */
enum { F_STR, F_JSON, F_INT, F_I64, F_U64, F_BOOL, F_STATUS };
typedef struct {
  const char* key;
  int kind;
  size_t off, len_off; /* len_off: F_JSON's length */
} field_t;

#define TF(k, kind, f) {k, kind, offsetof(ath_store_task_t, f), 0}
#define TJ(k, f) {k, F_JSON, offsetof(ath_store_task_t, f), offsetof(ath_store_task_t, f##_len)}
static const field_t task_fields[] = {
  TF("id", F_STR, id), TF("name", F_STR, name), TF("queue", F_STR, queue),
  TF("status", F_STATUS, status), TF("attempt", F_INT, attempt),
  TF("maxAttempts", F_INT, max_attempts), TF("strategy", F_INT, strategy),
  TF("priority", F_INT, priority), TF("workerId", F_INT, worker_id), TF("seq", F_U64, seq),
  TF("createdAt", F_I64, created_at), TF("scheduledAt", F_I64, scheduled_at),
  TF("readyAt", F_I64, ready_at), TF("startedAt", F_I64, started_at),
  TF("completedAt", F_I64, completed_at), TF("lastHeartbeat", F_I64, last_hb),
  TJ("input", input), TJ("result", result), TJ("error", error), TJ("heartbeat", hb),
  TF("keepError", F_BOOL, keep_error), TF("parentId", F_STR, parent_id), TJ("call", call),
  TF("deleted", F_BOOL, deleted), TF("stored", F_BOOL, stored),
};
#define SF(k, kind, f) {k, kind, offsetof(ath_store_schedule_t, f), 0}
static const field_t sched_fields[] = {
  SF("id", F_STR, id), SF("name", F_STR, name),
  {"input", F_JSON, offsetof(ath_store_schedule_t, input), offsetof(ath_store_schedule_t, input_len)},
  SF("cron", F_STR, cron), SF("onceAt", F_I64, once_at), SF("localTz", F_BOOL, local_tz),
  SF("catchUp", F_INT, catch_up), SF("overlapSkip", F_BOOL, overlap_skip),
  SF("paused", F_BOOL, paused), SF("hasPriority", F_BOOL, has_priority),
  SF("priority", F_INT, priority), SF("strategy", F_INT, strategy), SF("queue", F_STR, queue),
  SF("nextMs", F_I64, next_ms), SF("lastMs", F_I64, last_ms), SF("total", F_I64, total),
  SF("skipped", F_I64, skipped), SF("deleted", F_BOOL, deleted),
};
#define NFIELDS(a) (sizeof(a) / sizeof(a[0]))

#define AT(row, off, type) (*(type*)((char*)(row) + (off)))

/* [-0, +1, m] Pushes row (of `fields`) as a table; false booleans, zero
 * times and NULL strings are left out. */
static void push_row(lua_State* L, const void* row, const field_t* fields, size_t n) {
  lua_createtable(L, 0, (int)n);
  for (size_t i = 0; i < n; i++) {
    const field_t* f = &fields[i];
    switch (f->kind) {
      case F_STR:
      case F_JSON: {
        const char* s = AT(row, f->off, const char*);
        if (s == NULL)
          continue;
        if (f->kind == F_JSON)
          lua_pushlstring(L, s, AT(row, f->len_off, size_t));
        else
          lua_pushstring(L, s);
        break;
      }
      case F_STATUS: lua_pushstring(L, ath_status_name((ath_status_t)AT(row, f->off, int))); break;
      case F_INT: lua_pushinteger(L, AT(row, f->off, int)); break;
      case F_I64:
        if (AT(row, f->off, int64_t) == 0)
          continue;
        lua_pushinteger(L, AT(row, f->off, int64_t));
        break;
      case F_U64: lua_pushinteger(L, (lua_Integer)AT(row, f->off, uint64_t)); break;
      case F_BOOL:
        if (!AT(row, f->off, int))
          continue;
        lua_pushboolean(L, 1);
        break;
    }
    lua_setfield(L, -2, f->key);
  }
}

static int status_code(const char* name) {
  for (int s = ATH_PENDING; s <= ATH_COMPENSATED; s++)
    if (strcmp(ath_status_name((ath_status_t)s), name) == 0)
      return s;
  return -1;
}

/* Reads the table at idx into row (strings borrowed from the table).
 * Returns 0, or ATH_ESTORE with err naming the field. */
static int read_row(lua_State* L, int idx, void* row, const field_t* fields, size_t n,
                    const char* what, char* err, size_t errlen) {
  for (size_t i = 0; i < n; i++) {
    const field_t* f = &fields[i];
    int t = rawfield(L, idx, f->key);
    int ok = 1;
    if (t != LUA_TNIL) {
      switch (f->kind) {
        case F_STR:
        case F_JSON:
          if ((ok = t == LUA_TSTRING)) {
            size_t len;
            AT(row, f->off, const char*) = lua_tolstring(L, -1, &len);
            if (f->kind == F_JSON)
              AT(row, f->len_off, size_t) = len;
          }
          break;
        case F_STATUS:
          ok = t == LUA_TSTRING && (AT(row, f->off, int) = status_code(lua_tostring(L, -1))) >= 0;
          break;
        case F_BOOL:
          if ((ok = t == LUA_TBOOLEAN))
            AT(row, f->off, int) = lua_toboolean(L, -1);
          break;
        default:
          if ((ok = lua_isinteger(L, -1))) {
            lua_Integer v = lua_tointeger(L, -1);
            if (f->kind == F_INT)
              AT(row, f->off, int) = (int)v;
            else if (f->kind == F_I64)
              AT(row, f->off, int64_t) = v;
            else
              AT(row, f->off, uint64_t) = (uint64_t)v;
          }
      }
    }
    lua_pop(L, 1);
    if (!ok) {
      snprintf(err, errlen, "backend load returned %s with an invalid %s (%s)", what, f->key,
               f->kind == F_STATUS ? "a status name" : f->kind == F_BOOL ? "a boolean"
               : f->kind <= F_JSON ? "a string" : "an integer");
      return ATH_ESTORE;
    }
  }
  return 0;
}

/* ------------------------------------------------------- the provider */

/* [-0, +0, e] In a new state (protected; upvalue 1: dir; argument 1:
 * the bstate, 2: which functions it needs, a bit per FN_*): gets the
 * functions, from the module or the bytecode, and makes the info table. */
static int load_functions(lua_State* L) {
  bstate_t* s = lua_touserdata(L, 1);
  unsigned need = (unsigned)lua_tointeger(L, 2);
  lbackend_t* b = s->b;
  lua_settop(L, 0);
  if (lua_getglobal(L, "package") == LUA_TTABLE) { /* as workers get them */
    if (b->lua_path != NULL) {
      lua_pushstring(L, b->lua_path);
      lua_setfield(L, -2, "path");
    }
    if (b->lua_cpath != NULL) {
      lua_pushstring(L, b->lua_cpath);
      lua_setfield(L, -2, "cpath");
    }
  }
  lua_settop(L, 0);
  if (b->module != NULL) {
    lua_getglobal(L, "require");
    lua_pushstring(L, b->module);
    lua_call(L, 1, 1);
    if (!lua_istable(L, 1))
      return luaL_error(L, "module %s returned a %s (a table of persist and load expected)", b->module,
                        luaL_typename(L, 1));
  }
  for (int i = 0; i < NFN; i++) {
    int t = LUA_TNONE; /* nothing pushed */
    if (b->module != NULL) {
      lua_pushstring(L, fn_name[i]);
      t = lua_rawget(L, 1);
    } else if (b->chunk[i] != NULL) {
      if (luaL_loadbufferx(L, b->chunk[i], b->chunk_len[i], fn_name[i], "b") != LUA_OK)
        return lua_error(L);
      t = LUA_TFUNCTION;
    }
    if (t == LUA_TFUNCTION) {
      s->fn_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
      continue;
    }
    if ((need & (1u << i)) || (t != LUA_TNIL && t != LUA_TNONE))
      return luaL_error(L, "module %s: %s is a %s (a function expected)", b->module ? b->module : "?", fn_name[i],
                        t == LUA_TNONE ? "nil" : luaL_typename(L, -1));
    if (b->module != NULL)
      lua_pop(L, 1); /* the nil rawget pushed */
  }
  /* the info table: {dir, config} */
  lua_createtable(L, 0, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setfield(L, -2, "dir");
  if (b->config != NULL) {
    lua_getglobal(L, "athena"); /* open_state's global: its JSON codec */
    lua_getfield(L, -1, "json");
    lua_getfield(L, -1, "decode");
    lua_pushlstring(L, b->config, b->config_len);
    lua_call(L, 1, 1);
    lua_setfield(L, -4, "config");
    lua_pop(L, 2);
  }
  s->info_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int open_libs(lua_State* L) {
  ath_lua_runtime()->open_state(L);
  return 0;
}

static void state_close(bstate_t* s) {
  if (s->L != NULL)
    lua_close(s->L);
  s->L = NULL;
}

/* Makes state s with the functions of `need` (bits per FN_*). Returns 0,
 * or ATH_ENOMEM or ATH_EINVAL with err set. */
static int state_open(lbackend_t* b, bstate_t* s, unsigned need, char* err, size_t errlen) {
  s->b = b;
  s->mem_used = 0;
  for (int i = 0; i < NFN; i++)
    s->fn_ref[i] = LUA_NOREF;
  s->info_ref = LUA_NOREF;
  lua_State* L = s->L = lua_newstate(backend_alloc, s);
  if (L == NULL) {
    snprintf(err, errlen, "%s", "cannot create the backend's Lua state");
    return ATH_ENOMEM;
  }
  *(bstate_t**)lua_getextraspace(L) = s;
  lua_pushcfunction(L, open_libs);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    snprintf(err, errlen, "%s", "cannot open the Lua libraries in the backend's state");
    state_close(s);
    return ATH_ENOMEM;
  }
  lua_settop(L, 0);
  lua_pushstring(L, b->dir ? b->dir : "");
  lua_pushcclosure(L, load_functions, 1);
  lua_pushlightuserdata(L, s);
  lua_pushinteger(L, need);
  int st = limited_call(s, 2, 0);
  if (st != LUA_OK) {
    char msg[400];
    int code;
    error_text(L, st, msg, sizeof(msg), &code);
    snprintf(err, errlen, "backend functions did not load: %s", msg);
    state_close(s);
    return ATH_EINVAL;
  }
  return 0;
}

static int b_open(void* ud, const char* dir, void** store, char* err, size_t errlen) {
  lbackend_t* b = ud;
  free(b->dir);
  if ((b->dir = strdup(dir)) == NULL)
    return ATH_ENOMEM;
  int rc = state_open(b, &b->store, (1u << FN_PERSIST) | (1u << FN_LOAD), err, errlen);
  if (rc != 0)
    return rc;
  if (b->store.fn_ref[FN_STREAM] == LUA_NOREF) /* a module without stream: no events */
    b->sink.deliver = NULL;
  if (b->store.fn_ref[FN_AUTHORIZE] == LUA_NOREF) /* nor authorize: no further checks */
    b->authz.authorize = NULL;
  *store = b;
  return 0;
}

/* What load_rows hands the engine's recovery, and its verdict. */
typedef struct {
  ath_store_task_cb task_cb;
  ath_store_schedule_cb sched_cb;
  void* cbud;
  char* err;
  size_t errlen;
  int rc;
} load_ctx_t;

/* [-0, +0, m] Protected: reads load's result (argument 1) row by row into
 * the recovery callbacks (argument 2: the load_ctx_t); a row of the wrong
 * shape sets rc and err. Memory errors raise (caught by the caller). */
static int load_rows(lua_State* L) {
  load_ctx_t* c = lua_touserdata(L, 2);
  char* err = c->err;
  size_t errlen = c->errlen;
  int rc = 0;
  luaL_Buffer hist;
  for (int part = 0; part < 2 && rc == 0; part++) {
    int t = rawfield(L, 1, part == 0 ? "tasks" : "schedules");
    if (t != LUA_TNIL && t != LUA_TTABLE) {
      snprintf(err, errlen, "backend load returned %s as a %s (a list expected)",
               part == 0 ? "tasks" : "schedules", luaL_typename(L, -1));
      rc = ATH_ESTORE;
    }
    lua_Integer n = t == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, -1) : 0;
    for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
      char what[48];
      snprintf(what, sizeof(what), "%s[%lld]", part == 0 ? "tasks" : "schedules", (long long)i);
      if (lua_rawgeti(L, -1, i) != LUA_TTABLE) {
        snprintf(err, errlen, "backend load returned %s as a %s (a table expected)", what, luaL_typename(L, -1));
        rc = ATH_ESTORE;
      } else if (part == 0) {
        ath_store_task_t r;
        memset(&r, 0, sizeof(r));
        int row = lua_gettop(L);
        rc = read_row(L, row, &r, task_fields, NFIELDS(task_fields), what, err, errlen);
        if (rc == 0 && rawfield(L, row, "events") == LUA_TTABLE) { /* the whole history */
          luaL_buffinit(L, &hist);
          for (lua_Integer e = 1; rc == 0 && lua_rawgeti(L, row + 1, e) != LUA_TNIL; e++) {
            if (lua_type(L, -1) != LUA_TSTRING) {
              snprintf(err, errlen, "backend load returned %s with an event that is not a string", what);
              rc = ATH_ESTORE;
            } else {
              luaL_addvalue(&hist);
              luaL_addchar(&hist, ATH_STORE_EVENT_SEP);
            }
          }
          lua_pop(L, 1); /* the nil or bad event */
          luaL_pushresult(&hist);
          r.history = lua_tolstring(L, -1, &r.history_len);
        }
        if (rc == 0)
          rc = c->task_cb(c->cbud, &r);
        lua_settop(L, row);
      } else {
        ath_store_schedule_t r;
        memset(&r, 0, sizeof(r));
        rc = read_row(L, lua_gettop(L), &r, sched_fields, NFIELDS(sched_fields), what, err, errlen);
        if (rc == 0)
          rc = c->sched_cb(c->cbud, &r);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  c->rc = rc;
  return 0;
}

static int b_load(void* store, ath_store_task_cb task_cb, ath_store_schedule_cb sched_cb,
                  void* cbud, char* err, size_t errlen) {
  lbackend_t* b = store;
  lua_State* L = b->store.L;
  int code;
  if (backend_call(&b->store, FN_LOAD, 0, 1, err, errlen, &code) != LUA_OK)
    return ATH_ESTORE;
  int rc = 0;
  if (lua_isnil(L, -1)) { /* nothing stored */
  } else if (!lua_istable(L, -1)) {
    snprintf(err, errlen, "backend load returned a %s ({tasks = {...}, schedules = {...}} or nil expected)",
             luaL_typename(L, -1));
    rc = ATH_ESTORE;
  } else {
    load_ctx_t c = {task_cb, sched_cb, cbud, err, errlen, 0};
    lua_pushcfunction(L, load_rows);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, &c);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      snprintf(err, errlen, "%s", "out of memory reading what backend load returned");
      rc = ATH_ESTORE;
    } else {
      rc = c.rc;
    }
    lua_pushnil(L); /* balances the pop below */
  }
  lua_pop(L, 1);
  lua_gc(L, LUA_GCCOLLECT);
  return rc;
}

/* [-0, +1, m] Pushes the batch {tasks = {...}, schedules = {...}}. */
static int push_batch(lua_State* L) {
  const ath_store_task_t* tasks = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  const ath_store_schedule_t* scheds = lua_touserdata(L, 3);
  size_t sn = (size_t)lua_tointeger(L, 4);
  lua_createtable(L, 0, 2);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    push_row(L, &tasks[i], task_fields, NFIELDS(task_fields));
    if (tasks[i].nevents > 0) {
      lua_createtable(L, (int)tasks[i].nevents, 0);
      for (size_t e = 0; e < tasks[i].nevents; e++) {
        lua_pushlstring(L, tasks[i].events[e], tasks[i].event_lens[e]);
        lua_rawseti(L, -2, (lua_Integer)e + 1);
      }
      lua_setfield(L, -2, "events");
      lua_pushinteger(L, tasks[i].ev_from);
      lua_setfield(L, -2, "eventsFrom");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "tasks");
  lua_createtable(L, (int)sn, 0);
  for (size_t i = 0; i < sn; i++) {
    push_row(L, &scheds[i], sched_fields, NFIELDS(sched_fields));
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "schedules");
  return 1;
}

static int b_persist(void* store, const ath_store_task_t* tasks, size_t n,
                     const ath_store_schedule_t* scheds, size_t sn, char* err, size_t errlen) {
  lbackend_t* b = store;
  lua_State* L = b->store.L;
  int code = ATH_ESTORE;
  lua_pushcfunction(L, push_batch);
  lua_pushlightuserdata(L, (void*)tasks);
  lua_pushinteger(L, (lua_Integer)n);
  lua_pushlightuserdata(L, (void*)scheds);
  lua_pushinteger(L, (lua_Integer)sn);
  int st = lua_pcall(L, 4, 1, 0);
  if (st != LUA_OK) {
    lua_pop(L, 1);
    lua_gc(L, LUA_GCCOLLECT);
    snprintf(err, errlen, "%s", "out of memory building the backend's batch");
    return ATH_ENOMEM;
  }
  if (backend_call(&b->store, FN_PERSIST, 1, 1, err, errlen, &code) != LUA_OK)
    return code;
  int ok = lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1);
  if (!ok)
    snprintf(err, errlen, "backend persist returned %s (true expected once the batch is durable)",
             lua_isnil(L, -1) ? "nil" : lua_type(L, -1) == LUA_TBOOLEAN ? "false" : luaL_typename(L, -1));
  lua_pop(L, 1);
  return ok ? 0 : ATH_ESTORE;
}

static void b_close(void* store) {
  lbackend_t* b = store;
  state_close(&b->store);
}

/* [-0, +1, m] Decodes the event (argument 1: its JSON, 2: its length);
 * the engine wrote it, so only memory can fail (a message then). */
static int decode_event(lua_State* L) {
  ath__json_decode(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  return 1;
}

/* The event sink: stream(event, info) in a state of its own, made on the
 * event thread at the first event (again after a failure to make it). */
static int b_deliver(void* ud, const char* json, size_t len, char* err, size_t errlen) {
  lbackend_t* b = ud;
  bstate_t* s = &b->stream;
  int code;
  if (s->L == NULL && state_open(b, s, 1u << FN_STREAM, err, errlen) != 0)
    return ATH_EINVAL;
  lua_State* L = s->L;
  lua_pushcfunction(L, decode_event);
  lua_pushlightuserdata(L, (void*)json);
  lua_pushinteger(L, (lua_Integer)len);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK || lua_type(L, -1) == LUA_TSTRING) {
    snprintf(err, errlen, "cannot decode the event: %s", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                                                       : "out of memory");
    lua_pop(L, 1);
    return ATH_ENOMEM;
  }
  int st = backend_call(s, FN_STREAM, 1, 1, err, errlen, &code);
  if (st == LUA_OK)
    lua_pop(L, 1);
  return st == LUA_OK ? 0 : ATH_EHANDLER;
}

static void b_sink_close(void* ud) {
  lbackend_t* b = ud;
  state_close(&b->stream);
}

/* [-0, +1, m] Pushes the request table of the ath_auth_request_t at 1. */
static int push_request(lua_State* L) {
  const ath_auth_request_t* r = lua_touserdata(L, 1);
  lua_createtable(L, 0, 6);
  const char* keys[] = {"surface", "method", "path", "key", "ip", "operation"};
  const char* vals[] = {r->surface, r->method, r->path, r->key, r->ip, r->operation};
  for (int i = 0; i < 6; i++) {
    if (vals[i] == NULL)
      continue;
    lua_pushstring(L, vals[i]);
    lua_setfield(L, -2, keys[i]);
  }
  return 1;
}

/* The calling thread's authorize state, made at its first request (again
 * after a failure to make it); NULL with why set when it cannot be. */
static bstate_t* thread_state(lbackend_t* b, char* why, size_t whylen) {
  bstate_t* s = uv_key_get(&b->auth_key);
  if (s != NULL)
    return s;
  if ((s = calloc(1, sizeof(*s))) == NULL) {
    snprintf(why, whylen, "%s", "out of memory");
    return NULL;
  }
  if (state_open(b, s, 1u << FN_AUTHORIZE, why, whylen) != 0) {
    free(s);
    return NULL;
  }
  uv_mutex_lock(&b->auth_lock);
  s->next = b->auth;
  b->auth = s;
  uv_mutex_unlock(&b->auth_lock);
  uv_key_set(&b->auth_key, s);
  return s;
}

/* authorize(request, info) -> true | false [, reason], in the calling
 * thread's own state. Anything but a boolean, an error or a timeout
 * denies (fail closed). */
static int b_authorize(void* ud, const ath_auth_request_t* r, char* why, size_t whylen) {
  lbackend_t* b = ud;
  bstate_t* s = thread_state(b, why, whylen);
  if (s == NULL)
    return ATH_EINVAL;
  lua_State* L = s->L;
  lua_pushcfunction(L, push_request);
  lua_pushlightuserdata(L, (void*)r);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    snprintf(why, whylen, "%s", "out of memory (the backend state's heap limit)");
    return ATH_ENOMEM;
  }
  int code;
  if (backend_call(s, FN_AUTHORIZE, 1, 2, why, whylen, &code) != LUA_OK)
    return ATH_EHANDLER;
  int rc;
  if (lua_type(L, -2) != LUA_TBOOLEAN) {
    snprintf(why, whylen, "backend authorize returned a %s (a boolean expected)", luaL_typename(L, -2));
    rc = ATH_EINVAL;
  } else if (lua_toboolean(L, -2)) {
    rc = 1;
  } else {
    snprintf(why, whylen, "%s", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "denied by the backend's authorize");
    rc = 0;
  }
  lua_pop(L, 2);
  return rc;
}

/* ---------------------------------------------------------- from Lua */

static char* opt_dup(lua_State* L, int idx, const char* key, size_t* len) {
  char* out = NULL;
  if (lua_getfield(L, idx, key) == LUA_TSTRING) {
    size_t n;
    const char* s = lua_tolstring(L, -1, &n);
    if ((out = malloc(n + 1)) != NULL) {
      memcpy(out, s, n + 1);
      if (len != NULL)
        *len = n;
    }
  }
  lua_pop(L, 1);
  return out;
}

ath_store_provider_t* lath_backend_provider(lua_State* L, int idx, size_t mem_limit) {
  lbackend_t* b = calloc(1, sizeof(*b));
  if (b == NULL)
    return NULL;
  b->p.size = sizeof(b->p);
  b->p.name = "lua";
  b->p.ud = b;
  b->p.open = b_open;
  b->p.load = b_load;
  b->p.persist = b_persist;
  b->p.close = b_close;
  b->module = opt_dup(L, idx, "module", NULL);
  for (int i = 0; i < NFN; i++)
    b->chunk[i] = opt_dup(L, idx, fn_name[i], &b->chunk_len[i]);
  b->authz.size = sizeof(b->authz);
  b->authz.ud = b;
  uv_mutex_init(&b->auth_lock);
  if (b->module != NULL || b->chunk[FN_AUTHORIZE] != NULL) {
    if (uv_key_create(&b->auth_key) != 0) { /* no thread key left: no backend, never one without its checks */
      lath_backend_free(&b->p);
      return NULL;
    }
    b->has_key = 1;
    b->authz.authorize = b_authorize;
  }
  b->sink.size = sizeof(b->sink);
  b->sink.ud = b;
  b->sink.close = b_sink_close;
  if (b->module != NULL || b->chunk[FN_STREAM] != NULL) /* a module's is known at open */
    b->sink.deliver = b_deliver;
  b->config = opt_dup(L, idx, "config", &b->config_len);
  b->mem_limit = mem_limit;
  lua_getfield(L, idx, "timeoutMs");
  b->limit_ms = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 10000;
  lua_pop(L, 1);
  return &b->p;
}

int lath_backend_paths(ath_store_provider_t* p, const char* lua_path, const char* lua_cpath) {
  lbackend_t* b = p->ud;
  free(b->lua_path);
  free(b->lua_cpath);
  b->lua_path = lua_path ? strdup(lua_path) : NULL;
  b->lua_cpath = lua_cpath ? strdup(lua_cpath) : NULL;
  return (lua_path && !b->lua_path) || (lua_cpath && !b->lua_cpath) ? ATH_ENOMEM : 0;
}

const ath_authorizer_t* lath_backend_authorizer(ath_store_provider_t* p) {
  lbackend_t* b = p->ud;
  return b->authz.authorize != NULL ? &b->authz : NULL;
}

const ath_event_sink_t* lath_backend_sink(ath_store_provider_t* p) {
  lbackend_t* b = p->ud;
  return b->sink.deliver != NULL ? &b->sink : NULL;
}

void lath_backend_free(ath_store_provider_t* p) {
  if (p == NULL)
    return;
  lbackend_t* b = p->ud;
  state_close(&b->store);
  state_close(&b->stream);
  for (bstate_t *s = b->auth, *next; s != NULL; s = next) {
    next = s->next;
    state_close(s);
    free(s);
  }
  if (b->has_key)
    uv_key_delete(&b->auth_key);
  uv_mutex_destroy(&b->auth_lock);
  free(b->module);
  for (int i = 0; i < NFN; i++)
    free(b->chunk[i]);
  free(b->dir);
  free(b->config);
  free(b->lua_path);
  free(b->lua_cpath);
  free(b);
}
