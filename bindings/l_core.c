/* Module athena.core: the C half of `require "athena"`. lua/athena/init.lua
 * wraps it; worker states get it preloaded by open_state (the runtime hooks, ath_lua_runtime). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <lualib.h>
#include "runtime.h"
#include "lath.h"
#include "l_json.h"

/* ---------------------------------------------------------------- errors */

static int error_tostring(lua_State* L) {
  lua_getfield(L, 1, "code");
  lua_getfield(L, 1, "message");
  lua_pushfstring(L, "%s: %s", luaL_optstring(L, -2, "EUNKNOWN"),
                  luaL_optstring(L, -1, ""));
  return 1;
}

void ath__pusherror(lua_State* L, int rc, const char* message) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, ath_err_name(rc));
  lua_setfield(L, -2, "code");
  lua_pushstring(L, message ? message : ath_strerror(rc));
  lua_setfield(L, -2, "message");
  /* the retryable codes of SEMANTICS §1.2 (athena.errors.RETRYABLE) */
  lua_pushboolean(L, rc == ATH_ETIMEDOUT || rc == ATH_EHANDLER || rc == ATH_EWORKERLOST ||
                       rc == ATH_EHEARTBEAT || rc == ATH_ERETRYABLE || rc == ATH_ENOSPC ||
                       rc == ATH_EIO);
  lua_setfield(L, -2, "retryable");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "attempt");
  luaL_setmetatable(L, "athena.Error");
}

int ath__pushfail(lua_State* L, int rc, const char* detail) {
  lua_pushnil(L);
  ath__pusherror(L, rc, detail);
  return 2;
}

int ath__raise(lua_State* L, int rc, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  ath__pusherror(L, rc, lua_tostring(L, -1));
  return lua_error(L);
}

void ath__newclass(lua_State* L, const char* name, const luaL_Reg* meta,
                   const luaL_Reg* methods) {
  luaL_newmetatable(L, name);
  luaL_setfuncs(L, meta, 0);
  if (methods != NULL) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_getfield(L, -1, "__index");
  lua_remove(L, -2);
}

/* ------------------------------------------------------------- durations */

#define MAX_DURATION 9007199254740992.0 /* 2^53 ms */

int64_t ath__checkduration(lua_State* L, int idx, const char* what) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    if (lua_isinteger(L, idx)) {
      lua_Integer v = lua_tointeger(L, idx);
      if (v >= 0 && (double)v <= MAX_DURATION)
        return v;
    } else {
      lua_Number v = lua_tonumber(L, idx);
      if (v >= 0 && v <= MAX_DURATION && floor(v) == v)
        return (int64_t)v;
    }
  } else if (lua_type(L, idx) == LUA_TSTRING) {
    size_t len;
    const char* s = lua_tolstring(L, idx, &len);
    size_t i = 0;
    double v = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9')
      v = v * 10 + (s[i++] - '0');
    if (i > 0 && i < len) {
      const char* u = s + i;
      size_t ul = len - i;
      double f = 0;
      if (ul == 2 && memcmp(u, "ms", 2) == 0)
        f = 1;
      else if (ul == 1 && *u == 's')
        f = 1000;
      else if (ul == 1 && *u == 'm')
        f = 60000;
      else if (ul == 1 && *u == 'h')
        f = 3600000;
      else if (ul == 1 && *u == 'd')
        f = 86400000;
      if (f > 0 && v * f <= MAX_DURATION)
        return (int64_t)(v * f);
    }
  }
  luaL_tolstring(L, idx, NULL);
  return ath__raise(L, ATH_EINVAL,
                    "invalid %s: %s (a duration: integer ms >= 0, or \"500ms\" \"30s\" \"5m\" \"1h\" \"1d\")",
                    what, lua_tostring(L, -1));
}

/* ---------------------------------------------------- failure strategies */

ath_strategy_t ath__checkstrategy(lua_State* L, int idx, const char* what) {
  idx = lua_absindex(L, idx);
  if (lua_isnoneornil(L, idx))
    return ATH_STRATEGY_DEFAULT;
  const char* s = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : NULL;
  for (int i = 1; s && ath__strategy_names[i]; i++)
    if (strcmp(s, ath__strategy_names[i]) == 0)
      return (ath_strategy_t)i;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; ath__strategy_names[i]; i++) {
    luaL_addstring(&b, ath__strategy_names[i]);
    if (ath__strategy_names[i + 1])
      luaL_addstring(&b, ", ");
  }
  luaL_pushresult(&b);
  const char* list = lua_tostring(L, -1);
  if (lua_type(L, idx) == LUA_TSTRING)
    lua_pushfstring(L, "\"%s\"", lua_tostring(L, idx));
  else
    luaL_tolstring(L, idx, NULL);
  ath__raise(L, ATH_EINVAL, "invalid %s: %s (must be one of %s)", what, lua_tostring(L, -1), list);
  return ATH_STRATEGY_DEFAULT;
}

static int core_duration(lua_State* L) {
  luaL_checkany(L, 1);
  lua_pushinteger(L, ath__checkduration(L, 1, "duration"));
  return 1;
}

/* ----------------------------------------------------------- functions */

/* athena.sleep(duration): yields inside a task, blocks elsewhere. */
static int core_sleep(lua_State* L) {
  luaL_checkany(L, 1);
  int64_t ms = ath__checkduration(L, 1, "duration");
  lua_settop(L, 0);
  if (ath__task_sleep(L, ms) == 0)
    return 0;
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

/* athena.now(): epoch ms; inside a worker, its world's clock (manual or not). */
static int core_now(lua_State* L) {
  ath_worker_t* wk = ath__worker_of(L);
  lua_pushinteger(L, wk ? ath_world_now(ath__worker_world(wk)) : ath__now_ms());
  return 1;
}

/* core.define(name, handler): records the handler this state binds to
 * `name` when it serves as a worker. */
static int core_define(lua_State* L) {
  luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ath__defs_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &ath__defs_key);
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_rawset(L, -3);
  return 0;
}

/* core.isWorker() -> true in a worker state. */
static int core_isworker(lua_State* L) {
  lua_pushboolean(L, ath__worker_of(L) != NULL);
  return 1;
}

static int core_errname(lua_State* L) {
  lua_pushstring(L, ath_err_name((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* core.encode(v [, root]) -> json | raises EINVAL naming the path. */
static int core_encode(lua_State* L) {
  luaL_checkany(L, 1);
  const char* root = luaL_optstring(L, 2, "value");
  ath_buf_t b = {0};
  char err[256];
  lua_settop(L, 2);
  int rc = ath__json_encode(L, 1, root, &b, err, sizeof(err));
  if (rc != 0) {
    ath__buf_free(&b);
    return ath__raise(L, rc, "%s", err);
  }
  lua_pushlstring(L, b.data, b.len); /* may raise: b leaks only on OOM */
  ath__buf_free(&b);
  return 1;
}

/* Continuation of core.scopeCall: ends the scope before any Lua code can
 * run (the hook may be raising on every instruction), then returns like
 * pcall, with an ETIMEDOUT error if the scope's deadline fired. */
static int scope_k(lua_State* L, int status, lua_KContext ctx) {
  if (ath__task_scope_pop(L, (uint64_t)ctx) == 1) { /* fired, or passed meanwhile */
    lua_settop(L, 0);
    lua_pushboolean(L, 0);
    ath__pusherror(L, ATH_ETIMEDOUT, "attempt timed out");
    return 2;
  }
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  return lua_gettop(L);
}

/* core.scopeCall(ms, fn, ...) -> pcall's values, with fn's run bounded by
 * a deadline `ms` from now; nothing at all outside a task's coroutine. */
static int core_scope_call(lua_State* L) {
  int64_t ms = ath__checkduration(L, 1, "duration");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  uint64_t prev;
  if (ath__task_scope_push(L, ms, &prev) < 0)
    return 0;
  lua_remove(L, 1);
  int status = lua_pcallk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, (lua_KContext)prev, scope_k);
  return scope_k(L, status, (lua_KContext)prev);
}

/* core.clock() -> monotonic milliseconds (float) */
static int core_clock(lua_State* L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e6);
  return 1;
}

/* core.waitForSignal() -> "SIGINT" | "SIGTERM" | "SIGHUP": blocks the
 * calling thread until one arrives (for `athena serve`; SIGHUP re-reads the
 * gateway's catalog). Threads started before the call may still take the
 * signal's default action; the CLI blocks them before it starts anything. */
static int core_wait_signal(lua_State* L) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  lua_pushstring(L, sig == SIGINT ? "SIGINT" : sig == SIGHUP ? "SIGHUP" : "SIGTERM");
  return 1;
}

/* core.checkStrategy(value, what) -> value: the one validator of strategy
 * names, for init.lua's options as for execute's. */
static int core_check_strategy(lua_State* L) {
  ath__checkstrategy(L, 1, luaL_checkstring(L, 2));
  lua_settop(L, 1);
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"waitForSignal", core_wait_signal},
  {"checkStrategy", core_check_strategy},
  {"scopeCall", core_scope_call},
  {"clock", core_clock},
  {"sleep", core_sleep},
  {"now", core_now},
  {"define", core_define},
  {"duration", core_duration},
  {"isWorker", core_isworker},
  {"errname", core_errname},
  {"encode", core_encode},
  {"newWorld", lath_world_new},
  {NULL, NULL},
};

/* ctx:isCancelled() -> true from the moment a cancel is accepted. */
static int ctx_iscancelled(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushboolean(L, ath__task_cancelled(L));
  return 1;
}

/* ctx:heartbeat([details]): records now and details; raises ECANCELED once
 * a cancel was accepted, EINVAL for details that are not a payload. */
static int ctx_heartbeat(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  ath_buf_t b = {0};
  char err[256];
  const char* json = NULL;
  size_t len = 0;
  if (!lua_isnil(L, 2)) {
    int rc = ath__json_encode(L, 2, "details", &b, err, sizeof(err));
    if (rc != 0) {
      ath__buf_free(&b);
      return ath__raise(L, rc, "%s", err);
    }
    /* keep the bytes in a Lua string so a raise below frees them */
    lua_pushlstring(L, b.data, b.len);
    ath__buf_free(&b);
    json = lua_tolstring(L, -1, &len);
  }
  if (ath__task_heartbeat(L, json, len) < 0)
    return ath__raise(L, ATH_EINVAL, "ctx:heartbeat called outside its task");
  return 0;
}

static int cmp_keys(const void* a, const void* b) {
  return strcmp(*(const char* const*)a, *(const char* const*)b);
}

/* ctx.log:<level>(msg [, fields]): a line with the task's fields (task,
 * name, attempt, worker) and the caller's, in key order (SEMANTICS §14.2).
 * The level is the closure's upvalue. */
static int ctx_log(lua_State* L) {
  ath_log_level_t level = (ath_log_level_t)lua_tointeger(L, lua_upvalueindex(1));
  const char* msg = luaL_checkstring(L, 2);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  ath_task_log_t t;
  if (ath__task_log_context(L, &t) != 0)
    return ath__raise(L, ATH_EINVAL, "ctx.log used outside its task");
  if (!ath__log_enabled(t.log, level))
    return 0;
  /* the caller's keys, sorted, so lines read the same every time */
  const char* keys[64];
  int nk = 0;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3) != 0 && nk < 64) {
      if (lua_type(L, -2) == LUA_TSTRING)
        keys[nk++] = lua_tostring(L, -2); /* anchored by the table */
      lua_pop(L, 1);
    }
    qsort(keys, (size_t)nk, sizeof(*keys), cmp_keys);
  }
  ath_log_field_t f[68];
  char worker[24];
  snprintf(worker, sizeof(worker), "worker-%d", t.worker_id);
  f[0] = (ath_log_field_t)ATH_LOG_FSTR("task", t.id);
  f[1] = (ath_log_field_t)ATH_LOG_FSTR("name", t.name);
  f[2] = (ath_log_field_t)ATH_LOG_FINT("attempt", t.attempt);
  f[3] = (ath_log_field_t)ATH_LOG_FSTR("worker", worker);
  size_t n = 4;
  ath_buf_t bufs[64];
  int nbufs = 0;
  char err[128];
  for (int i = 0; i < nk; i++) {
    lua_getfield(L, 3, keys[i]);
    ath_log_field_t* o = &f[n];
    memset(o, 0, sizeof(*o));
    o->key = keys[i];
    switch (lua_type(L, -1)) {
      case LUA_TSTRING: {
        size_t len;
        o->s = lua_tolstring(L, -1, &len);
        o->type = ATH_LOG_STR;
        o->len = len;
        break;
      }
      case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) {
          o->type = ATH_LOG_INT;
          o->i = lua_tointeger(L, -1);
        } else {
          o->type = ATH_LOG_NUM;
          o->d = lua_tonumber(L, -1);
        }
        break;
      case LUA_TBOOLEAN:
        o->type = ATH_LOG_BOOL;
        o->i = lua_toboolean(L, -1);
        break;
      default: { /* tables (and the rest) as JSON, when they are payloads */
        ath_buf_t* b = &bufs[nbufs];
        memset(b, 0, sizeof(*b));
        if (ath__json_encode(L, -1, keys[i], b, err, sizeof(err)) != 0) {
          ath__buf_free(b);
          o->type = ATH_LOG_STR;
          o->s = luaL_typename(L, -1);
        } else {
          nbufs++;
          o->type = ATH_LOG_RAW_JSON;
          o->s = b->data;
          o->len = b->len;
        }
      }
    }
    n++;
    lua_pop(L, 1); /* strings stay alive: the table holds them */
  }
  ath__log_write(t.log, level, msg, f, n); /* copies what it needs */
  for (int i = 0; i < nbufs; i++)
    ath__buf_free(&bufs[i]);
  return 0;
}

static const luaL_Reg ctx_methods[] = {
  {"isCancelled", ctx_iscancelled},
  {"heartbeat", ctx_heartbeat},
  {NULL, NULL},
};

static void open_state(lua_State* L);
static const ath_runtime_hooks_t lua_runtime = {
  .open_state = open_state,
  .push_db = lath_db_push_ctx,
};

int luaopen_athena_core(lua_State* L);
int luaopen_athena_core(lua_State* L) {
  ath_runtime_install(&lua_runtime); /* worker and gateway states are made like this one */
  static const luaL_Reg error_meta[] = {
    {"__tostring", error_tostring},
    {NULL, NULL},
  };
  static const luaL_Reg no_meta[] = {{NULL, NULL}};
  luaL_newmetatable(L, "athena.Error");
  luaL_setfuncs(L, error_meta, 0);
  lua_pushliteral(L, "athena.Error");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  ath__newclass(L, "athena.Context", no_meta, ctx_methods);
  /* ctx.log: one logger table per state; its methods find the task */
  lua_createtable(L, 0, 4);
  static const char* const levels[4] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, ctx_log, 1);
    lua_setfield(L, -2, levels[i]);
  }
  lua_setfield(L, -2, "log");
  lua_pop(L, 1);
  lath_open_world(L);

  luaL_newlib(L, core_funcs);
  lath_push_config_map(L);
  lua_setfield(L, -2, "configMap");
  luaL_getmetatable(L, "athena.Error");
  lua_setfield(L, -2, "Error");
  luaL_getmetatable(L, "athena.World");
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "worldMethods");
  lua_pop(L, 1);
  luaL_getmetatable(L, "athena.Context");
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "contextMethods");
  lua_pop(L, 1);
  lath_open_workflow(L);
  lath_open_json(L);
  lua_setfield(L, -2, "json");
  lath_open_http(L);
  lua_setfield(L, -2, "http");
  lath_open_db(L);
  lua_setfield(L, -2, "db");
  lath_open_ops(L);
  lua_setfield(L, -2, "ops");
  lua_pushstring(L, ath_version());
  lua_setfield(L, -2, "version");
  return 1;
}

/* Loader for the embedded lua/athena modules. */
static int load_embedded(lua_State* L) {
  const lath_source_t* src = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, src->source, src->len, src->chunk) != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

/* Adds package.preload entries for athena.core and, for modules not already
 * preloaded, the embedded Lua side. [-0, +0, m] */
static void preload_athena(lua_State* L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_athena_core);
  lua_setfield(L, -2, "athena.core");
  for (const lath_source_t* s = lath_sources; s->name != NULL; s++) {
    lua_pushlightuserdata(L, (void*)s);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, s->name);
  }
  lua_pop(L, 1);
}

static void open_state(lua_State* L) {
  luaL_openlibs(L);
  preload_athena(L);
  /* the global `athena`, as the athena command's main state has it: code
   * a worker or a gateway thread loads runs as it does there */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "athena");
  lua_call(L, 1, 1);
  lua_setglobal(L, "athena");
}


const ath_runtime_hooks_t* ath_lua_runtime(void) {
  return &lua_runtime;
}

/* For the CLI: the same preparation as a worker state. */
void lath_openstate(lua_State* L);
void lath_openstate(lua_State* L) {
  ath_runtime_install(&lua_runtime);
  open_state(L);
}
