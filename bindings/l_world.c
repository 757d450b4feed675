/* athena.World and athena.Handle: the engine world seen from Lua.
 *
 * A World userdata in a control state owns its engine world. In a worker
 * state, athena.World.new() returns a proxy of the world that runs the
 * worker: during the definition phase world:start() ends the phase, and
 * afterwards tasks can execute and wait through it. */
#include <stdlib.h>
#include <string.h>
#include "runtime.h"
#include "http.h"
#include "lath.h"
#include "gw_server.h"

typedef struct {
  ath_world_t* w; /* NULL once closed */
  int proxy;      /* a worker's view of its world: owns nothing */
  ath_buf_t scratch; /* encoding buffer reused by execute (owning thread) */
  ath_store_provider_t* backend; /* athena.Backend's provider, or NULL */
} lworld_t;

typedef struct {
  ath_task_t* t;
} lhandle_t;

/* [-0, +0, v] Returns the world at idx; raises if it is closed or not one. */
static lworld_t* check_lworld(lua_State* L, int idx) {
  lworld_t* lw = luaL_checkudata(L, idx, "athena.World");
  if (lw->w == NULL)
    luaL_error(L, "attempt to use a closed world");
  return lw;
}

static ath_world_t* check_world(lua_State* L, int idx) {
  return check_lworld(L, idx)->w;
}

/* __gc and __close. Shuts the world down once; later calls do nothing. */
static int world_close(lua_State* L) {
  lworld_t* lw = luaL_checkudata(L, 1, "athena.World");
  ath_world_t* w = lw->w;
  lw->w = NULL; /* detach first, so a second call finds NULL */
  ath__buf_free(&lw->scratch);
  if (w != NULL && !lw->proxy) {
    lath_progress_forget(w); /* l_ops.c: off the --progress line first */
    ath_world_free(w); /* drains running tasks (30 s), joins threads */
  }
  if (!lw->proxy) /* after the world that used it */
    lath_backend_free(lw->backend);
  lw->backend = NULL;
  return 0;
}

static int world_tostring(lua_State* L) {
  lworld_t* lw = luaL_checkudata(L, 1, "athena.World");
  lua_pushfstring(L, "athena.World (%s%p)", lw->proxy ? "worker view, " : "", (void*)lw->w);
  return 1;
}

/* ------------------------------------------------------------ creation */

static int opt_int(lua_State* L, int t, const char* k, int def) {
  int v = def;
  if (lua_getfield(L, t, k) != LUA_TNIL)
    v = (int)luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* [-0, +0, v] Reads the strategy name at idx (nil: default). */
static ath_strategy_t check_strategy(lua_State* L, int idx) {
  return ath__checkstrategy(L, idx, "failureStrategy");
}

static int64_t opt_ms(lua_State* L, int t, const char* k, int64_t def) {
  int64_t v = def;
  if (lua_getfield(L, t, k) != LUA_TNIL)
    v = ath__checkduration(L, -1, k);
  lua_pop(L, 1);
  return v;
}

/* [-0, +0, m] Collects a string array field into a NULL-terminated vector
 * kept alive in a userdata box on the stack (so nothing leaks on raise). */
static const char** opt_strv(lua_State* L, int t, const char* k, int zero_based) {
  if (lua_getfield(L, t, k) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L); /* keep the stack shape */
    return NULL;
  }
  int first = zero_based ? 0 : 1;
  lua_Integer n = (lua_Integer)luaL_len(L, -1) + (zero_based ? 1 : 0);
  const char** v = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof(char*), 1);
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, -2, 1); /* keeps the strings alive */
  for (lua_Integer i = 0; i < n; i++) {
    lua_rawgeti(L, -2, i + first);
    v[i] = lua_tostring(L, -1);
    lua_pop(L, 1);
    if (v[i] == NULL)
      luaL_error(L, "%s[%d] must be a string", k, (int)(i + first));
  }
  v[n] = NULL;
  lua_remove(L, -2);
  return v;
}

/* [-0, +0, v] Reads the options of the config map (config.c) from table t,
 * by their names ("log.level"), into cfg; an absent one keeps its value.
 * Values are as the Lua side checked them: durations in ms, sizes in
 * bytes, enums by name. Strings stay anchored by the table. */
static void read_options(lua_State* L, int t, ath_world_config_t* cfg) {
  for (int i = 0; i < ath__config_map_len; i++) {
    const ath_cfg_opt_t* o = &ath__config_map[i];
    if (lua_getfield(L, t, o->name) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    if (o->kind == ATH_CFG_STR) {
      *(const char**)((char*)cfg + o->offset) = luaL_checkstring(L, -1);
    } else if (o->kind == ATH_CFG_ENUM) {
      const char* name = luaL_checkstring(L, -1);
      int k = 0;
      while (o->values[k] != NULL && strcmp(o->values[k], name) != 0)
        k++;
      if (o->values[k] == NULL)
        ath__raise(L, ATH_EINVAL, "invalid %s: %s (%s)", o->name, name, o->rule);
      ath__config_set(cfg, o, k);
    } else { /* numbers; durations and counts are below 2^53, exact as doubles */
      double v = o->kind == ATH_CFG_NUM    ? luaL_checknumber(L, -1)
                 : o->kind == ATH_CFG_BOOL ? lua_toboolean(L, -1)
                                           : (double)luaL_checkinteger(L, -1);
      ath__config_set(cfg, o, v);
    }
    lua_pop(L, 1);
  }
}

/* core.configMap: the options of config.c as Lua tables {name, kind,
 * default, min, max, values, rule} (init.lua validates with them). */
void lath_push_config_map(lua_State* L) {
  static const char* const kinds[] = {"int", "count", "ms", "number", "boolean", "string", "enum", "bytes"};
  lua_createtable(L, ath__config_map_len, 0);
  for (int i = 0; i < ath__config_map_len; i++) {
    const ath_cfg_opt_t* o = &ath__config_map[i];
    lua_createtable(L, 0, 7);
    lua_pushstring(L, o->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, kinds[o->kind]);
    lua_setfield(L, -2, "kind");
    switch (o->kind) {
    case ATH_CFG_NUM:
      lua_pushnumber(L, o->def);
      break;
    case ATH_CFG_BOOL:
      lua_pushboolean(L, o->def != 0);
      break;
    case ATH_CFG_STR:
      if (o->sdef != NULL)
        lua_pushstring(L, o->sdef);
      else
        lua_pushnil(L);
      break;
    case ATH_CFG_ENUM: /* a default no user may write (log.format's automatic choice): none */
      if (o->def >= o->min)
        lua_pushstring(L, o->values[(int)o->def]);
      else
        lua_pushnil(L);
      break;
    default:
      lua_pushinteger(L, (lua_Integer)o->def);
    }
    lua_setfield(L, -2, "default");
    if (o->kind == ATH_CFG_NUM)
      lua_pushnumber(L, o->min);
    else
      lua_pushinteger(L, (lua_Integer)o->min);
    lua_setfield(L, -2, "min");
    if (o->max != 0) {
      if (o->kind == ATH_CFG_NUM)
        lua_pushnumber(L, o->max);
      else
        lua_pushinteger(L, (lua_Integer)o->max);
      lua_setfield(L, -2, "max");
    }
    if (o->kind == ATH_CFG_ENUM) { /* the names a user may write */
      lua_newtable(L);
      for (int k = (int)o->min, n = 1; k <= (int)o->max; k++, n++) {
        lua_pushstring(L, o->values[k]);
        lua_rawseti(L, -2, n);
      }
      lua_setfield(L, -2, "values");
    }
    lua_pushstring(L, o->rule);
    lua_setfield(L, -2, "rule");
    lua_rawseti(L, -2, i + 1);
  }
}

/* core.newWorld(cfg): cfg was validated by init.lua (SEMANTICS §2); here
 * the fields are copied into the engine's config. */
int lath_world_new(lua_State* L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  ath_worker_t* wk = ath__worker_of(L);
  if (wk != NULL) {
    lworld_t* lw = lua_newuserdatauv(L, sizeof(*lw), 0);
    memset(lw, 0, sizeof(*lw));
    lw->w = ath__worker_world(wk);
    lw->proxy = 1;
    luaL_setmetatable(L, "athena.World");
    return 1;
  }
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  read_options(L, 1, &cfg);
  cfg.default_concurrency = opt_int(L, 1, "defaultConcurrency", cfg.default_concurrency);
  lua_getfield(L, 1, "entryScript");
  cfg.entry_script = luaL_optstring(L, -1, NULL);
  lua_getfield(L, 1, "database");
  cfg.database = lua_tostring(L, -1); /* anchored by the table */
  lua_getfield(L, 1, "webhookUrl");
  cfg.webhook_url = lua_tostring(L, -1); /* anchored by the table */
  lua_pop(L, 3);
  lua_getfield(L, 1, "backendUrl"); /* athena.PostgresBackend, checked by init.lua */
  cfg.backend_url = lua_tostring(L, -1);
  lua_getfield(L, 1, "backendSchema");
  cfg.backend_schema = lua_tostring(L, -1);
  lua_getfield(L, 1, "nodeId");
  cfg.node_id = lua_tostring(L, -1);
  lua_pop(L, 3);
  cfg.poll_interval_ms = opt_ms(L, 1, "pollInterval", cfg.poll_interval_ms);
  lua_getfield(L, 1, "pollOnly");
  cfg.backend_poll_only = lua_toboolean(L, -1);
  lua_pop(L, 1);
  cfg.webhook_events = (unsigned)opt_int(L, 1, "webhookEvents", 0);
  cfg.modules = opt_strv(L, 1, "modules", 0);
  cfg.script_args = opt_strv(L, 1, "scriptArgs", 1);
  lworld_t* lw = lua_newuserdatauv(L, sizeof(*lw), 0);
  memset(lw, 0, sizeof(*lw));
  luaL_setmetatable(L, "athena.World");
  if (lua_getfield(L, 1, "backend") == LUA_TTABLE) { /* athena.Backend's fields */
    if ((lw->backend = lath_backend_provider(L, lua_gettop(L), cfg.memory_limit)) == NULL)
      return luaL_error(L, "not enough memory");
    cfg.store = lw->backend;
    cfg.event_sink = lath_backend_sink(lw->backend);
    cfg.authorizer = lath_backend_authorizer(lw->backend);
  }
  lua_pop(L, 1);
  char err[256];
  int rc = ath_world_new(&cfg, &lw->w, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", rc == ATH_EINVAL ? err : ath_strerror(rc));
  /* Task queues: {name = {workers = n, concurrency = n}} */
  if (lua_getfield(L, 1, "taskQueues") == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      const char* name = lua_tostring(L, -2);
      int workers = opt_int(L, lua_gettop(L), "workers", strcmp(name, "default") ? 1 : 0);
      int conc = opt_int(L, lua_gettop(L), "concurrency", 1);
      rc = ath_world_add_queue(lw->w, name, workers, conc);
      if (rc != 0)
        return ath__raise(L, rc, "invalid taskQueues.%s", name);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return 1;
}

/* world:_register(name, options): options as init.lua validated them. */
static int world_register(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  const char* name = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 4);
  if (lw->proxy)
    return 0; /* a worker binds what the control world registered */
  ath_activity_t a;
  ath_activity_init(&a, name);
  lua_getfield(L, 3, "taskQueue");
  a.task_queue = luaL_optstring(L, -1, "default");
  a.priority = opt_int(L, 3, "priority", 0);
  a.workflow = lua_toboolean(L, 4);
  a.timeout_ms = opt_ms(L, 3, "timeout", a.workflow ? 0 : a.timeout_ms); /* workflows: no limit */
  if (!a.workflow) { /* they do not apply to workflows (SEMANTICS §3) */
    a.schedule_to_close_ms = opt_ms(L, 3, "scheduleToClose", 0);
    a.heartbeat_timeout_ms = opt_ms(L, 3, "heartbeatTimeout", 0);
  }
  lua_getfield(L, 3, "failureStrategy");
  a.failure_strategy = check_strategy(L, -1);
  const char** nr = NULL;
  if (lua_getfield(L, 3, "retry") == LUA_TTABLE) {
    int r = lua_gettop(L);
    a.has_retry = 1;
    a.max_attempts = opt_int(L, r, "maxAttempts", 0);
    lua_getfield(L, r, "backoff");
    const char* b = luaL_optstring(L, -1, "exponential");
    a.backoff = strcmp(b, "linear") == 0     ? ATH_BACKOFF_LINEAR
                : strcmp(b, "constant") == 0 ? ATH_BACKOFF_CONSTANT
                                             : ATH_BACKOFF_EXPONENTIAL;
    a.initial_interval_ms = opt_ms(L, r, "initialInterval", a.initial_interval_ms);
    a.max_interval_ms = opt_ms(L, r, "maxInterval", a.max_interval_ms);
    if (lua_getfield(L, r, "multiplier") == LUA_TNUMBER)
      a.multiplier = lua_tonumber(L, -1);
    if (lua_getfield(L, r, "nonRetryable") == LUA_TTABLE) {
      size_t n = lua_rawlen(L, -1);
      nr = lua_newuserdatauv(L, (n + 1) * sizeof(char*), 0); /* strings anchored by the table */
      for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -2, (lua_Integer)i + 1);
        nr[i] = lua_tostring(L, -1);
        lua_pop(L, 1);
      }
      nr[n] = NULL;
      a.non_retryable = nr;
    }
  }
  int rc = ath_world_register(lw->w, &a);
  if (rc != 0)
    return ath__raise(L, rc, "cannot register %s", name);
  return 0;
}

/* world:_start(path, cpath, entry, args) */
static int world_start(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  if (lw->proxy) {
    ath_worker_t* wk = ath__worker_of(L);
    if (wk != NULL && ath__worker_defining(wk))
      return ath__worker_end_definitions(L);
    return 0;
  }
  ath_world_t* w = lw->w;
  /* the control state's package.path/cpath as they are now, for workers */
  if (ath__world_set_paths(w, luaL_optstring(L, 2, NULL), luaL_optstring(L, 3, NULL)) != 0 ||
      (lw->backend && lath_backend_paths(lw->backend, luaL_optstring(L, 2, NULL),
                                         luaL_optstring(L, 3, NULL)) != 0))
    return luaL_error(L, "not enough memory");
  char err[768];
  int rc = ath_world_start(w, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  return 0;
}

/* ------------------------------------------------------------- execute */

static void push_handle(lua_State* L, int world_idx, ath_task_t* t) {
  lhandle_t* h = lua_newuserdatauv(L, sizeof(*h), 1);
  h->t = t; /* the reference the engine gave us */
  lua_pushvalue(L, world_idx);
  lua_setiuservalue(L, -2, 1); /* the world outlives its handles */
  luaL_setmetatable(L, "athena.Handle");
}

typedef struct {
  ath_exec_opts_t o;
  int ids_idx; /* stack index of opts.ids, or 0 */
} exec_opts_t;

/* Reads execute's opts table at idx (validated types, unknown keys raise). */
static void check_opts(lua_State* L, int idx, exec_opts_t* eo, int many) {
  memset(eo, 0, sizeof(*eo));
  if (lua_isnoneornil(L, idx))
    return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    const char* k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (k == NULL) {
      ath__raise(L, ATH_EINVAL, "unknown option %s", luaL_tolstring(L, -2, NULL));
    } else if (!many && strcmp(k, "id") == 0) {
      if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        ath__raise(L, ATH_EINVAL, "invalid id (must be a non-empty string)");
      eo->o.id = lua_tostring(L, -1);
    } else if (many && strcmp(k, "ids") == 0) {
      if (lua_type(L, -1) != LUA_TTABLE)
        ath__raise(L, ATH_EINVAL, "invalid ids (must be an array of strings)");
      eo->ids_idx = 1; /* resolved by the caller */
    } else if (strcmp(k, "delay") == 0) {
      eo->o.delay_ms = ath__checkduration(L, -1, "delay");
    } else if (strcmp(k, "priority") == 0) {
      lua_Integer p;
      int isnum = 0;
      p = lua_tointegerx(L, -1, &isnum); /* 2 and 2.0, as activity() accepts */
      if (!isnum || lua_type(L, -1) != LUA_TNUMBER || p < INT32_MIN || p > INT32_MAX)
        ath__raise(L, ATH_EINVAL, "invalid priority: %s (must be an integer)", luaL_tolstring(L, -1, NULL));
      eo->o.has_priority = 1;
      eo->o.priority = (int)p;
    } else if (strcmp(k, "taskQueue") == 0) {
      if (lua_type(L, -1) != LUA_TSTRING)
        ath__raise(L, ATH_EINVAL, "invalid taskQueue (must be a string)");
      eo->o.task_queue = lua_tostring(L, -1);
    } else if (strcmp(k, "failureStrategy") == 0) {
      eo->o.failure_strategy = check_strategy(L, lua_gettop(L));
    } else {
      ath__raise(L, ATH_EINVAL, "unknown option %s", k);
    }
    lua_pop(L, 1);
  }
}

/* Encodes the value at idx into an exact-size malloc'd copy (through the
 * world's scratch buffer, so a payload costs one small allocation). On
 * failure raises EINVAL naming the path, after freeing the `n` entries of
 * `owned` and `owned` itself. */
static char* encode_or_raise(lua_State* L, lworld_t* lw, int idx, const char* root,
                             size_t* len, char** owned, size_t n) {
  char err[256];
  lw->scratch.len = 0;
  int rc = ath__json_encode(L, idx, root, &lw->scratch, err, sizeof(err));
  char* copy = rc == 0 ? malloc(lw->scratch.len + 1) : NULL;
  if (copy == NULL) {
    for (size_t i = 0; i < n; i++)
      free(owned[i]);
    free(owned);
    if (rc == 0)
      rc = ATH_ENOMEM, snprintf(err, sizeof(err), "out of memory");
    return (char*)(intptr_t)ath__raise(L, rc, "%s", err);
  }
  memcpy(copy, lw->scratch.data, lw->scratch.len + 1);
  *len = lw->scratch.len;
  return copy;
}

/* [-0, +0, v] The activity name at idx: a string, or an athena.activity or
 * athena.workflow definition (its `name`). Anything else raises EINVAL:
 * looking a number up as a name would only report ENOTFOUND. */
static const char* check_activity_name(lua_State* L, int idx, const char* fname) {
  if (lua_type(L, idx) == LUA_TSTRING)
    return lua_tostring(L, idx);
  if (lua_type(L, idx) == LUA_TTABLE && luaL_getmetafield(L, idx, "__name") != LUA_TNIL) {
    int def = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "athena.Definition") == 0;
    lua_pop(L, 1);
    if (def && lua_getfield(L, idx, "name") == LUA_TSTRING) {
      lua_replace(L, idx); /* the definition's name, anchored in its slot */
      return lua_tostring(L, idx);
    }
    if (def)
      lua_pop(L, 1);
  }
  return (const char*)(intptr_t)ath__raise(
    L, ATH_EINVAL, "bad argument #1 to '%s' (the activity's name expected: a string or a definition of "
    "athena.activity/athena.workflow, got %s)", fname, luaL_typename(L, idx));
}

static void check_started(lua_State* L, lworld_t* lw) {
  if (lw->proxy) {
    ath_worker_t* wk = ath__worker_of(L);
    if (wk == NULL || ath__worker_defining(wk))
      ath__raise(L, ATH_EINVAL, "execute before start()");
  }
}

static lhandle_t* check_handle(lua_State* L, int idx);

/* A store that cannot take the enqueue (SEMANTICS §13): execute returns
 * nil, err, as a failed commit does, instead of raising. */
#define STORE_FAULT(rc) ((rc) == ATH_ENOSPC || (rc) == ATH_EIO || (rc) == ATH_ESTORE)

/* The end of a file-mode execute (world at 1): the handle, or the table of
 * handles, on top, unless the commit failed and withdrew the enqueue: then
 * nil, err (ENOSPC, EIO, ...), and the tasks never run (SEMANTICS §13). */
static int execute_k(lua_State* L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  ath_world_t* w = check_lworld(L, 1)->w;
  int many = lua_type(L, -1) == LUA_TTABLE;
  lua_Integer n = many ? (lua_Integer)lua_rawlen(L, -1) : 1;
  int rc = 0;
  char msg[320];
  for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
    if (many)
      lua_rawgeti(L, -1, i);
    else
      lua_pushvalue(L, -1);
    ath_task_t* t = check_handle(L, -1)->t;
    lua_pop(L, 1);
    rc = ath__world_enqueue_error(w, &t, 1, msg, sizeof(msg));
  }
  return rc == 0 ? 1 : ath__pushfail(L, rc, msg);
}

/* world:execute(name, input [, opts]) -> handle */
static int world_execute(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  const char* name = check_activity_name(L, 2, "execute");
  exec_opts_t eo;
  check_opts(L, 4, &eo, 0);
  check_started(L, lw);
  size_t len;
  char* json = encode_or_raise(L, lw, 3, "input", &len, NULL, 0);
  char** payloads = &json;
  ath_task_t* t;
  char err[256];
  uint64_t gen;
  int rc = ath__world_execute(lw->w, name, 1, payloads, &len, NULL, &eo.o, &t, &gen, err, sizeof(err));
  if (STORE_FAULT(rc))
    return ath__pushfail(L, rc, err);
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  push_handle(L, 1, t);
  /* file mode: acknowledged once durable; a task yields for it meanwhile */
  if (gen == 0)
    return 1;
  ath__task_await_enqueue(L, lw->w, gen, &t, 1, execute_k);
  return execute_k(L, LUA_OK, 0);
}

/* world:executeMany(name, inputs [, opts]) -> {handle...} */
static int world_execute_many(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  const char* name = check_activity_name(L, 2, "executeMany");
  luaL_checktype(L, 3, LUA_TTABLE);
  exec_opts_t eo;
  check_opts(L, 4, &eo, 1);
  check_started(L, lw);
  size_t n = lua_rawlen(L, 3);
  const char** ids = NULL;
  if (eo.ids_idx) {
    lua_getfield(L, 4, "ids");
    if (lua_rawlen(L, -1) != n)
      ath__raise(L, ATH_EINVAL, "invalid ids (must have one id per input)");
    ids = lua_newuserdatauv(L, (n ? n : 1) * sizeof(char*), 0);
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, -2, (lua_Integer)i + 1);
      if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        ath__raise(L, ATH_EINVAL, "invalid ids[%d] (must be a non-empty string)", (int)i + 1);
      ids[i] = lua_tostring(L, -1); /* anchored by the ids table */
      lua_pop(L, 1);
    }
  }
  /* Boxes for the C arrays so a raise below leaks nothing. */
  size_t* lens = lua_newuserdatauv(L, (n ? n : 1) * sizeof(size_t), 0);
  ath_task_t** out = lua_newuserdatauv(L, (n ? n : 1) * sizeof(ath_task_t*), 0);
  char** payloads = calloc(n ? n : 1, sizeof(char*));
  if (payloads == NULL)
    return luaL_error(L, "not enough memory");
  char root[48];
  for (size_t i = 0; i < n; i++) {
    snprintf(root, sizeof(root), "inputs[%d]", (int)i + 1);
    lua_rawgeti(L, 3, (lua_Integer)i + 1);
    payloads[i] = encode_or_raise(L, lw, -1, root, &lens[i], payloads, i);
    lua_pop(L, 1);
  }
  if (!lua_checkstack(L, 4)) {
    for (size_t i = 0; i < n; i++)
      free(payloads[i]);
    free(payloads);
    return luaL_error(L, "stack overflow");
  }
  lua_createtable(L, (int)n, 0); /* before execute: a raise here loses nothing */
  char err[256];
  uint64_t gen;
  int rc = ath__world_execute(lw->w, name, n, payloads, lens, ids, &eo.o, out, &gen, err, sizeof(err));
  free(payloads);
  if (STORE_FAULT(rc))
    return ath__pushfail(L, rc, err);
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  for (size_t i = 0; i < n; i++) {
    push_handle(L, 1, out[i]); /* a memory error here would leak refs only */
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  if (gen == 0)
    return 1;
  ath__task_await_enqueue(L, lw->w, gen, out, n, execute_k);
  return execute_k(L, LUA_OK, 0);
}

/* ---------------------------------------------------------------- query */

static void set_int(lua_State* L, const char* k, int64_t v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

static void set_ms(lua_State* L, const char* k, int64_t v) {
  if (v != 0)
    set_int(L, k, v);
}

/* [-0, +1, m] Decodes JSON into a Lua value (nil for NULL). */
static void push_json(lua_State* L, const char* json, size_t len) {
  if (json == NULL || ath__json_decode(L, json, len) != 0) {
    if (json != NULL)
      lua_pop(L, 1);
    lua_pushnil(L);
  }
}

/* [-0, +1, m] Decodes an error JSON into an athena.Error. */
static void push_error_json(lua_State* L, const char* json, size_t len, int code) {
  if (json == NULL) {
    ath__pusherror(L, code ? code : ATH_EHANDLER, NULL);
    return;
  }
  push_json(L, json, len);
  if (lua_type(L, -1) == LUA_TTABLE)
    luaL_setmetatable(L, "athena.Error");
}

#define CHILDREN_PAGE 1000
#define CHILDREN_PAGE_MAX 10000

/* [-0, +0, m] Sets field `key` of the table on top to the ids of the next
 * `limit` tasks t owns after cursor `after` (creation order), and field
 * `next_key` to the cursor of the page after them when there are more. */
static void push_children(lua_State* L, ath_world_t* w, ath_task_t* t, uint64_t after, int limit,
                          const char* key, const char* next_key) {
  ath_task_t** kids = lua_newuserdatauv(L, ((size_t)limit + 1) * sizeof(*kids), 0);
  int n = ath_world_children_after(w, t, after, kids, limit + 1); /* one more: is there a next? */
  if (n < 0)
    luaL_error(L, "not enough memory");
  int m = n < limit ? n : limit;
  uint64_t last = m > 0 ? ath_task_seq(kids[m - 1]) : 0;
  lua_createtable(L, m, 0);
  for (int i = 0; i < n; i++) { /* no raise until every reference is dropped */
    if (i < m && lua_checkstack(L, 1)) {
      lua_pushstring(L, ath_task_id(kids[i]));
      lua_rawseti(L, -2, i + 1);
    }
    ath_task_release(kids[i]);
  }
  lua_setfield(L, -3, key);
  lua_pop(L, 1); /* the array */
  if (n > limit) {
    lua_pushinteger(L, (lua_Integer)last);
    lua_setfield(L, -2, next_key);
  }
}

static int push_state(lua_State* L, ath_world_t* w, ath_task_t* t) {
  ath_task_info_t info;
  if (ath_task_snapshot(w, t, &info) != 0)
    return luaL_error(L, "not enough memory");
  lua_createtable(L, 0, 20);
  lua_pushstring(L, ath_task_id(t));
  lua_setfield(L, -2, "id");
  lua_pushstring(L, ath_task_name(t));
  lua_setfield(L, -2, "name");
  lua_pushstring(L, info.workflow ? "workflow" : "activity");
  lua_setfield(L, -2, "kind");
  if (info.parent_id != NULL) {
    lua_pushstring(L, info.parent_id);
    lua_setfield(L, -2, "parentId");
  }
  if (info.history != NULL) {
    push_json(L, info.history, info.history_len);
    lua_setfield(L, -2, "history");
  }
  lua_pushstring(L, ath_status_name(info.status));
  lua_setfield(L, -2, "status");
  push_json(L, info.input, info.input_len);
  lua_setfield(L, -2, "input");
  push_json(L, info.result, info.result_len);
  lua_setfield(L, -2, "result");
  if (info.error != NULL || info.status == ATH_FAILED) {
    push_error_json(L, info.error, info.error_len, ath__task_err_code(w, t));
    lua_setfield(L, -2, "error");
  }
  set_int(L, "attempt", info.attempt);
  set_int(L, "maxAttempts", info.max_attempts);
  lua_pushstring(L, ath__strategy_names[info.failure_strategy]);
  lua_setfield(L, -2, "failureStrategy");
  if (info.status == ATH_RETRYING || info.status == ATH_SCHEDULED)
    set_ms(L, "readyAt", info.ready_at);
  set_ms(L, "lastHeartbeat", info.last_heartbeat);
  if (info.heartbeat != NULL) {
    push_json(L, info.heartbeat, info.heartbeat_len);
    lua_setfield(L, -2, "heartbeatDetails");
  }
  set_ms(L, "createdAt", info.created_at);
  set_ms(L, "scheduledAt", info.scheduled_at);
  set_ms(L, "startedAt", info.started_at);
  set_ms(L, "completedAt", info.completed_at);
  if (info.worker_id) {
    lua_pushfstring(L, "worker-%d", info.worker_id);
    lua_setfield(L, -2, "workerId");
  }
  lua_pushstring(L, ath_task_queue(t));
  lua_setfield(L, -2, "taskQueue");
  set_int(L, "priority", info.priority);
  int workflow = info.workflow;
  ath_task_snapshot_free(&info);
  if (workflow) /* ids of its activities, children and compensations: the first page */
    push_children(L, w, t, 0, CHILDREN_PAGE, "children", "childrenNext");
  return 1;
}

/* world:refreshGateway(): re-reads the catalogs of the served gateway's
 * databases (what SIGHUP does for `athena serve`). */
static int world_refresh_gateway(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  ath_gws_t* g = lw->proxy ? NULL : ath__world_gateway(lw->w);
  if (g == NULL)
    return ath__raise(L, ATH_EINVAL, "this world serves no gateway");
  char err[600];
  int rc = ath__gws_refresh(g, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  return 0;
}

/* [-0, +1 or +2, m] Finds task `id`: 0 with its handle pushed (holding
 * the reference, so a raise after it does not leak it) and *t set, or the
 * count of the `nil, err` it pushed (ENOTFOUND, or a store read failure). */
static int find_handle(lua_State* L, ath_world_t* w, const char* id, ath_task_t** t) {
  int rc = ath_world_find(w, id, t);
  if (rc == ATH_ENOTFOUND)
    return ath__pushfail(L, ATH_ENOTFOUND, lua_pushfstring(L, "no task %s", id));
  if (rc != 0)
    return ath__pushfail(L, rc, lua_pushfstring(L, "cannot read task %s from the store (see the log)", id));
  push_handle(L, 1, *t);
  return 0;
}

/* world:query(id) -> state | nil, err (ENOTFOUND) */
static int world_query(lua_State* L) {
  ath_world_t* w = check_world(L, 1);
  ath_task_t* t;
  int failed = find_handle(L, w, luaL_checkstring(L, 2), &t);
  return failed ? failed : push_state(L, w, t);
}

/* world:children(id [, {after = cursor, limit = n}]) -> {ids = {...}, next = cursor | nil}
 * | nil, err (ENOTFOUND): a page of the tasks workflow `id` owns, in
 * creation order. */
static int world_children(lua_State* L) {
  ath_world_t* w = check_world(L, 1);
  const char* id = luaL_checkstring(L, 2);
  lua_Integer after = 0, limit = CHILDREN_PAGE;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 3) != 0) {
      const char* k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      if (k == NULL || (strcmp(k, "after") != 0 && strcmp(k, "limit") != 0))
        return ath__raise(L, ATH_EINVAL, "world:children: unknown option %s", luaL_tolstring(L, -2, NULL));
      int ok = lua_isinteger(L, -1);
      lua_Integer v = lua_tointeger(L, -1);
      if (strcmp(k, "after") == 0 && (!ok || v < 0))
        return ath__raise(L, ATH_EINVAL, "world:children: invalid after (a cursor from a previous page)");
      if (strcmp(k, "limit") == 0 && (!ok || v < 1 || v > CHILDREN_PAGE_MAX))
        return ath__raise(L, ATH_EINVAL, "world:children: invalid limit (an integer 1-%d)", CHILDREN_PAGE_MAX);
      *(strcmp(k, "after") == 0 ? &after : &limit) = v;
      lua_pop(L, 1);
    }
  }
  ath_task_t* t;
  int failed = find_handle(L, w, id, &t);
  if (failed)
    return failed;
  lua_createtable(L, 0, 2);
  push_children(L, w, t, (uint64_t)after, (int)limit, "ids", "next");
  return 1;
}

/* world:getMetrics() */
static int world_metrics(lua_State* L) {
  ath_world_t* w = check_world(L, 1);
  ath_metrics_t m;
  for (int cap = 16;; cap *= 4) {
    m.queues = lua_newuserdatauv(L, cap * sizeof(ath_queue_info_t), 0);
    m.queues_cap = cap;
    ath_world_metrics(w, &m);
    if (m.nqueues <= cap)
      break;
    lua_pop(L, 1);
  }
  lua_createtable(L, 0, 8);
  set_int(L, "uptime", m.uptime_ms);
  lua_createtable(L, 0, 3);
  set_int(L, "total", m.workers_total);
  set_int(L, "idle", m.workers_idle);
  set_int(L, "busy", m.workers_busy);
  lua_setfield(L, -2, "workers");
  lua_createtable(L, 0, 8);
  set_int(L, "queued", m.queued);
  set_int(L, "scheduled", m.scheduled);
  set_int(L, "running", m.running);
  set_int(L, "completed", m.completed);
  set_int(L, "failed", m.failed);
  set_int(L, "retried", m.retried);
  set_int(L, "cancelled", m.cancelled);
  set_int(L, "quarantined", m.quarantined);
  set_int(L, "resident", m.resident);
  lua_setfield(L, -2, "tasks");
  lua_createtable(L, 0, 3);
  set_int(L, "perSecond", m.per_second);
  set_int(L, "perMinute", m.per_minute);
  set_int(L, "perHour", m.per_hour);
  lua_setfield(L, -2, "throughput");
  lua_pushnumber(L, m.workload);
  lua_setfield(L, -2, "workload");
  lua_createtable(L, 0, 2);
  const char* names[2] = {"queueWait", "run"};
  double vals[2][3] = {{m.wait_p50, m.wait_p95, m.wait_p99}, {m.run_p50, m.run_p95, m.run_p99}};
  for (int i = 0; i < 2; i++) {
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, vals[i][0]);
    lua_setfield(L, -2, "p50");
    lua_pushnumber(L, vals[i][1]);
    lua_setfield(L, -2, "p95");
    lua_pushnumber(L, vals[i][2]);
    lua_setfield(L, -2, "p99");
    lua_setfield(L, -2, names[i]);
  }
  lua_setfield(L, -2, "latency");
  /* queues[name] = {depth, running, oldestAgeMs} */
  lua_createtable(L, 0, m.nqueues);
  for (int i = 0; i < m.nqueues && i < m.queues_cap; i++) {
    lua_createtable(L, 0, 3);
    set_int(L, "depth", m.queues[i].depth);
    set_int(L, "running", m.queues[i].running);
    set_int(L, "oldestAgeMs", m.queues[i].oldest_age_ms);
    lua_setfield(L, -2, m.queues[i].name);
  }
  lua_setfield(L, -2, "queues");
  lua_remove(L, -2); /* the queue figures' box */
  int64_t retries = ath__world_db_retries(w); /* the PostgreSQL backend: this node's */
  if (retries >= 0) {
    lua_createtable(L, 0, 1);
    set_int(L, "retries", retries);
    lua_setfield(L, -2, "db");
  }
  /* cluster: the PostgreSQL backend's counts, from the database */
  char* json = NULL;
  char err[512];
  int rc = ath__world_cluster(w, &json, err, sizeof(err));
  if (rc == 0 && ath__json_decode(L, json, strlen(json)) == 0) /* else absent (the failure is logged) */
    lua_setfield(L, -2, "cluster");
  free(json);
  return 1;
}

/* world:getNodes(): the PostgreSQL backend's nodes (docs/backend-postgres.md) */
static int world_nodes(lua_State* L) {
  ath_world_t* w = check_world(L, 1);
  char* json = NULL;
  char err[512];
  int rc = ath__world_nodes(w, &json, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  rc = ath__json_decode(L, json, strlen(json));
  free(json);
  if (rc != 0)
    return ath__raise(L, ATH_ESTORE, "%s", "getNodes: the database's answer is not JSON");
  return 1;
}

/* world:getWorkers() */
static int world_workers(lua_State* L) {
  ath_world_t* w = check_world(L, 1);
  int cap = 64, n;
  ath_worker_info_t* info;
  for (;;) {
    info = lua_newuserdatauv(L, cap * sizeof(*info), 0);
    n = ath_world_workers(w, info, cap);
    if (n <= cap)
      break;
    lua_pop(L, 1);
    cap = n + 16;
  }
  lua_createtable(L, n, 0);
  int k = 0;
  for (int i = 0; i < n; i++) {
    ath_worker_info_t* o = &info[i];
    lua_createtable(L, 0, 10);
    lua_pushfstring(L, "worker-%d", o->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, o->status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, o->task_queue);
    lua_setfield(L, -2, "taskQueue");
    set_int(L, "concurrency", o->concurrency);
    /* running = {{id, name, startedAt}...} */
    ath_task_t** ts = lua_newuserdatauv(L, (o->running ? o->running : 1) * sizeof(*ts), 0);
    int nt = ath_world_worker_tasks(w, o->id, ts, o->running);
    lua_createtable(L, nt, 0);
    for (int j = 0; j < nt; j++) {
      ath_task_info_t ti;
      int ok = ath_task_snapshot(w, ts[j], &ti) == 0;
      lua_createtable(L, 0, 3);
      lua_pushstring(L, ath_task_id(ts[j]));
      lua_setfield(L, -2, "id");
      lua_pushstring(L, ath_task_name(ts[j]));
      lua_setfield(L, -2, "name");
      if (ok) {
        set_int(L, "startedAt", ti.started_at);
        ath_task_snapshot_free(&ti);
      }
      lua_rawseti(L, -2, j + 1);
    }
    for (int j = 0; j < nt; j++) /* lua_* above raise only on OOM */
      ath_task_release(ts[j]);
    lua_remove(L, -2); /* the box */
    lua_setfield(L, -2, "running");
    set_int(L, "lastHeartbeat", o->last_heartbeat);
    set_int(L, "tasksCompleted", o->tasks_completed);
    set_int(L, "tasksFailed", o->tasks_failed);
    set_int(L, "memoryKB", o->memory_kb);
    lua_rawseti(L, -2, ++k);
  }
  return 1;
}

/* world:shutdown([opts]) -> {drained, requeued} */
static int world_shutdown(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  int64_t timeout = 30000;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "timeout") != 0)
        return ath__raise(L, ATH_EINVAL, "unknown option %s", luaL_tolstring(L, -2, NULL));
      timeout = ath__checkduration(L, -1, "timeout");
      lua_pop(L, 1);
    }
  }
  if (lw->proxy)
    return ath__raise(L, ATH_EINVAL, "shutdown is not allowed inside a worker");
  int drained, requeued, abandoned;
  ath_world_shutdown(lw->w, timeout, &drained, &requeued, &abandoned);
  lua_createtable(L, 0, 3);
  set_int(L, "drained", drained);
  set_int(L, "requeued", requeued);
  set_int(L, "abandoned", abandoned);
  return 1;
}

/* [-0, +1, -] Looks up the task `id` names; returns NULL (and pushes
 * nothing) if none. The reference is held by a handle pushed on the stack. */
static ath_task_t* find_task(lua_State* L, int world_idx, const char* id) {
  ath_task_t* t;
  if (ath_world_find(check_world(L, world_idx), id, &t) != 0)
    return NULL;
  push_handle(L, world_idx, t);
  return t;
}

/* world:cancel(id) -> true | false (terminal) | nil, err (ENOTFOUND) */
static int world_cancel(lua_State* L) {
  ath_world_t* w = check_world(L, 1);
  const char* id = luaL_checkstring(L, 2);
  ath_task_t* t = find_task(L, 1, id);
  if (t == NULL)
    return ath__pushfail(L, ATH_ENOTFOUND, lua_pushfstring(L, "no task %s", id));
  lua_pushboolean(L, ath_world_cancel(w, t));
  return 1;
}

/* world:requeue(id) / world:purge(id) -> true | nil, err */
static int dead_letter(lua_State* L, int (*op)(ath_world_t*, ath_task_t*)) {
  ath_world_t* w = check_world(L, 1);
  const char* id = luaL_checkstring(L, 2);
  ath_task_t* t = find_task(L, 1, id);
  if (t == NULL)
    return ath__pushfail(L, ATH_ENOTFOUND, lua_pushfstring(L, "no task %s", id));
  int rc = op(w, t);
  if (rc == ATH_EINVAL)
    return ath__pushfail(L, rc, lua_pushfstring(L, "task %s is not quarantined", id));
  if (rc != 0)
    return ath__pushfail(L, rc, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

static int world_requeue(lua_State* L) {
  return dead_letter(L, ath_world_requeue);
}

static int world_purge(lua_State* L) {
  return dead_letter(L, ath_world_purge);
}

static int64_t opt_time(lua_State* L, int t, const char* k) {
  int64_t v = 0;
  if (lua_getfield(L, t, k) != LUA_TNIL) {
    if (!lua_isinteger(L, -1))
      ath__raise(L, ATH_EINVAL, "invalid %s: %s (epoch milliseconds)", k, luaL_tolstring(L, -1, NULL));
    v = lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* Reads a status name into its mask bit, raising on an unknown one. */
static unsigned status_bit(lua_State* L, int idx) {
  const char* s = lua_tostring(L, idx);
  for (int st = ATH_PENDING; s && st <= ATH_COMPENSATED; st++)
    if (strcmp(s, ath_status_name((ath_status_t)st)) == 0)
      return 1u << st;
  ath__raise(L, ATH_EINVAL, "invalid status: %s", luaL_tolstring(L, idx, NULL));
  return 0;
}

/* world:queryTasks([filter]) -> {state...}, newest first (§10.2) */
static int query_tasks(lua_State* L, unsigned force_mask) {
  ath_world_t* w = check_world(L, 1);
  ath_task_filter_t f;
  memset(&f, 0, sizeof(f));
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    static const char* const keys[] = {"status", "name", "parentId", "since", "until", "limit", "offset", NULL};
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
      int known = 0;
      for (int i = 0; keys[i] && lua_type(L, -2) == LUA_TSTRING; i++)
        known |= strcmp(lua_tostring(L, -2), keys[i]) == 0;
      if (!known)
        ath__raise(L, ATH_EINVAL, "unknown option %s", luaL_tolstring(L, -2, NULL));
      lua_pop(L, 1);
    }
    int st = lua_getfield(L, 2, "status");
    if (st == LUA_TSTRING) {
      f.status_mask = status_bit(L, -1);
    } else if (st == LUA_TTABLE) {
      for (lua_Integer i = 1; lua_rawgeti(L, -1, i) != LUA_TNIL; i++) {
        f.status_mask |= status_bit(L, -1);
        lua_pop(L, 1);
      }
      lua_pop(L, 1);
    } else if (st != LUA_TNIL) {
      ath__raise(L, ATH_EINVAL, "invalid status (a state name or a list of them)");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 2, "name") != LUA_TNIL)
      f.name = luaL_checkstring(L, -1); /* anchored by the filter table */
    lua_pop(L, 1);
    int pt = lua_getfield(L, 2, "parentId");
    if (pt == LUA_TSTRING)
      f.parent_id = lua_tostring(L, -1); /* anchored by the filter table */
    else if (pt != LUA_TNIL)
      ath__raise(L, ATH_EINVAL, "invalid parentId: %s (a workflow's task id)", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    f.since = opt_time(L, 2, "since");
    f.until = opt_time(L, 2, "until");
    f.limit = opt_int(L, 2, "limit", 100);
    f.offset = opt_int(L, 2, "offset", 0);
    if (f.limit < 1 || f.limit > 1000 || f.offset < 0)
      ath__raise(L, ATH_EINVAL, "invalid limit/offset (1 <= limit <= 1000, offset >= 0)");
  }
  if (force_mask)
    f.status_mask = force_mask;
  int cap = f.limit > 0 ? f.limit : 100;
  ath_task_t** ts = lua_newuserdatauv(L, cap * sizeof(*ts), 0);
  int n = ath_world_query_tasks(w, &f, ts);
  if (n == ATH_ENOMEM)
    return luaL_error(L, "not enough memory");
  if (n < 0)
    return ath__raise(L, n, "cannot read finished tasks from the store (see the log)");
  /* hold every reference in a handle first, so a raise leaks nothing */
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    push_handle(L, 1, ts[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    push_state(L, w, ts[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int world_query_tasks(lua_State* L) {
  return query_tasks(L, 0);
}

/* world:getQuarantined([filter]): queryTasks limited to quarantined. */
static int world_get_quarantined(lua_State* L) {
  return query_tasks(L, 1u << ATH_QUARANTINED);
}

/* ------------------------------------------------------------- schedules */

/* Reads the options init.lua normalised: {localTz, catchUp (0-2),
 * overlapSkip, priority, taskQueue, failureStrategy}. */
static void read_sched_opts(lua_State* L, int idx, ath_schedule_opts_t* o) {
  memset(o, 0, sizeof(*o));
  o->catch_up = ATH_CATCHUP_ONE;
  if (lua_isnoneornil(L, idx))
    return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "localTz");
  o->local_tz = lua_toboolean(L, -1);
  lua_getfield(L, idx, "overlapSkip");
  o->overlap_skip = lua_toboolean(L, -1);
  lua_pop(L, 2);
  o->catch_up = opt_int(L, idx, "catchUp", ATH_CATCHUP_ONE);
  if (lua_getfield(L, idx, "priority") != LUA_TNIL) {
    o->has_priority = 1;
    o->priority = (int)luaL_checkinteger(L, -1);
  }
  lua_pop(L, 1);
  lua_getfield(L, idx, "taskQueue");
  o->task_queue = lua_tostring(L, -1); /* anchored by the options table */
  lua_pop(L, 1);
  lua_getfield(L, idx, "failureStrategy");
  o->failure_strategy = check_strategy(L, lua_gettop(L));
  lua_pop(L, 1);
}

/* Encodes a schedule's input, raising EINVAL as SEMANTICS §11 words it. */
static char* encode_schedule_input(lua_State* L, lworld_t* lw, int idx, size_t* len) {
  char err[256];
  lw->scratch.len = 0;
  if (ath__json_encode(L, idx, "input", &lw->scratch, err, sizeof(err)) != 0)
    ath__raise(L, ATH_EINVAL, "schedule input must be serializable: %s", err);
  char* copy = malloc(lw->scratch.len + 1);
  if (copy == NULL)
    luaL_error(L, "not enough memory");
  memcpy(copy, lw->scratch.data, lw->scratch.len + 1);
  *len = lw->scratch.len;
  return copy;
}

/* world:_schedule(id, name, input, cron, opts) -> id */
static int world_schedule(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  const char* id = luaL_checkstring(L, 2);
  const char* name = luaL_checkstring(L, 3);
  const char* cron = luaL_checkstring(L, 5);
  ath_schedule_opts_t o;
  read_sched_opts(L, 6, &o);
  size_t len;
  char* json = encode_schedule_input(L, lw, 4, &len);
  char err[512];
  int rc = ath_world_schedule(lw->w, id, name, json, len, cron, &o, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  lua_pushvalue(L, 2);
  return 1;
}

/* world:_scheduleOnce(name, input, atMs, opts) -> "once-<uuid>" */
static int world_schedule_once(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  const char* name = luaL_checkstring(L, 2);
  lua_Integer at = luaL_checkinteger(L, 4);
  ath_schedule_opts_t o;
  read_sched_opts(L, 5, &o);
  size_t len;
  char* json = encode_schedule_input(L, lw, 3, &len);
  char id[64], err[512];
  int rc = ath_world_schedule_once(lw->w, name, json, len, at, &o, id, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  lua_pushstring(L, id);
  return 1;
}

static int sched_op(lua_State* L, int (*op)(ath_world_t*, const char*)) {
  ath_world_t* w = check_world(L, 1);
  const char* id = luaL_checkstring(L, 2);
  int rc = op(w, id);
  if (rc == ATH_ENOTFOUND)
    return ath__raise(L, ATH_ENOTFOUND, "no schedule %s", id);
  if (rc != 0) /* the PostgreSQL backend: the database failed (logged) */
    return ath__raise(L, rc, "schedule %s: the database failed", id);
  lua_pushboolean(L, 1);
  return 1;
}

static int world_pause_schedule(lua_State* L) {
  return sched_op(L, ath_world_schedule_pause);
}

static int world_resume_schedule(lua_State* L) {
  return sched_op(L, ath_world_schedule_resume);
}

static int world_delete_schedule(lua_State* L) {
  return sched_op(L, ath_world_schedule_delete);
}

/* world:getSchedules() -> {schedule...} sorted by id */
static int world_get_schedules(lua_State* L) {
  ath_world_t* w = check_world(L, 1);
  ath_schedule_info_t* a;
  size_t n;
  int rc = ath_world_schedules(w, &a, &n);
  if (rc == ATH_ESTORE) /* the PostgreSQL backend: the database failed (logged) */
    return ath__raise(L, rc, "%s", "getSchedules: the database failed");
  if (rc != 0)
    return luaL_error(L, "not enough memory");
  /* the pushes below raise only on out-of-memory (the array then leaks) */
  lua_createtable(L, (int)n, 0);
  static const char* const catch_up[] = {"none", "one", "all"};
  for (size_t i = 0; i < n; i++) {
    ath_schedule_info_t* s = &a[i];
    lua_createtable(L, 0, 12);
    lua_pushstring(L, s->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, s->name);
    lua_setfield(L, -2, "name");
    push_json(L, s->input, strlen(s->input));
    lua_setfield(L, -2, "input");
    if (s->cron) {
      lua_pushstring(L, s->cron);
      lua_setfield(L, -2, "cronExpression");
    }
    lua_pushstring(L, s->local_tz ? "local" : "UTC");
    lua_setfield(L, -2, "timezone");
    lua_pushstring(L, catch_up[s->catch_up >= 0 && s->catch_up <= 2 ? s->catch_up : 1]);
    lua_setfield(L, -2, "catchUp");
    lua_pushstring(L, s->overlap_skip ? "skip" : "allow");
    lua_setfield(L, -2, "overlap");
    lua_pushboolean(L, s->paused);
    lua_setfield(L, -2, "paused");
    set_int(L, "totalExecutions", s->total);
    set_int(L, "skippedExecutions", s->skipped);
    set_ms(L, "lastExecution", s->last_ms);
    set_ms(L, "nextExecution", s->next_ms);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  ath_schedules_free(a, n);
  return 1;
}

/* world:advance(duration): the manual clock moves on (SEMANTICS §2). */
static int world_advance(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  int64_t ms = ath__checkduration(L, 2, "duration");
  if (lw->proxy)
    return ath__raise(L, ATH_EINVAL, "advance is not allowed inside a worker");
  int rc = ath_world_advance(lw->w, ms);
  if (rc != 0)
    return ath__raise(L, rc, "advance needs a started world with clock = \"manual\"");
  return 0;
}

/* maxBuffered: bytes (>= 64 KiB) or "64MB"-style text. */
static size_t serve_bytes(lua_State* L, int idx) {
  lua_Integer v = -1;
  if (lua_isinteger(L, idx)) {
    v = lua_tointeger(L, idx);
  } else if (lua_type(L, idx) == LUA_TSTRING) {
    char unit[3] = "";
    long long n;
    if (sscanf(lua_tostring(L, idx), "%lld%2s", &n, unit) == 2 && n > 0 && n < (1LL << 40))
      v = !strcmp(unit, "KB") ? n << 10 : !strcmp(unit, "MB") ? n << 20 : !strcmp(unit, "GB") ? n << 30 : -1;
  }
  if (v < 65536)
    ath__raise(L, ATH_EINVAL, "invalid maxBuffered (bytes >= 65536, or \"64MB\")");
  return (size_t)v;
}

/* [-0, +0, v] The list of strings at idx (allowedHosts), owned. */
static char** serve_hosts(lua_State* L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE || lua_rawlen(L, idx) == 0)
    ath__raise(L, ATH_EINVAL, "invalid allowedHosts (a list of host names)");
  size_t n = lua_rawlen(L, idx);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i);
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0 || lua_rawlen(L, -1) > 255)
      ath__raise(L, ATH_EINVAL, "invalid allowedHosts[%d] (a host name)", (int)i);
    lua_pop(L, 1);
  }
  char** v = calloc(n + 1, sizeof(char*));
  for (size_t i = 0; v && i < n; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i + 1);
    v[i] = ath__memdup(lua_tostring(L, -1), lua_rawlen(L, -1));
    lua_pop(L, 1);
  }
  return v;
}

/* The protected part of world:serve: builds the gateway (lath_gws_new
 * raises on a bad configuration) and the auth keys, so that what was
 * allocated can be freed when either raises. */
static int serve_build(lua_State* L) {
  ath_serve_opts_t* o = lua_touserdata(L, 1);
  ath_world_t* w = lua_touserdata(L, 2);
  if (!lua_isnil(L, 4))
    lath_serve_auth(L, 4, o);
  if (!lua_isnil(L, 3))
    lath_gws_new(L, 3, w, &o->gws); /* introspects the databases and starts the gateway threads */
  return 0;
}

static void serve_result(lua_State* L, const char* prefix, const char* host, int bound) {
  char k[16];
  lua_pushinteger(L, bound);
  snprintf(k, sizeof(k), "%s", *prefix ? "opsPort" : "port");
  lua_setfield(L, -2, k);
  lua_pushfstring(L, strchr(host, ':') ? "http://[%s]:%d" : "http://%s:%d", host, bound);
  snprintf(k, sizeof(k), "%s", *prefix ? "opsUrl" : "url");
  lua_setfield(L, -2, k);
}

/* world:serve{host = "127.0.0.1", port = 8080, metrics = true,
 * dashboard = true, gateway, auth, allowedHosts, http2 = false,
 * maxBuffered = "64MB", opsPort, opsHost = "127.0.0.1"} -> {host, port,
 * url[, opsPort, opsUrl]} (SEMANTICS §14.3, docs/operations.md) */
static int world_serve(lua_State* L) {
  lworld_t* lw = check_lworld(L, 1);
  const char* host = "127.0.0.1";
  const char* ops_host = "127.0.0.1";
  lua_Integer port = 8080, ops_port = -1;
  ath_serve_opts_t o;
  memset(&o, 0, sizeof(o));
  o.flags = ATH_SERVE_METRICS | ATH_SERVE_DASHBOARD;
  int gateway = 0, auth = 0, hosts = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
      const char* k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
      if (strcmp(k, "host") == 0 || strcmp(k, "opsHost") == 0) {
        if (lua_type(L, -1) != LUA_TSTRING)
          ath__raise(L, ATH_EINVAL, "invalid %s (a string)", k);
        *(k[0] == 'h' ? &host : &ops_host) = lua_tostring(L, -1);
      } else if (strcmp(k, "port") == 0 || strcmp(k, "opsPort") == 0) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > 65535)
          ath__raise(L, ATH_EINVAL, "invalid %s: %s (0-65535)", k, luaL_tolstring(L, -1, NULL));
        *(k[0] == 'p' ? &port : &ops_port) = lua_tointeger(L, -1);
      } else if (strcmp(k, "http2") == 0) {
        /* true: 1000 streams a second per connection; or that number */
        if (lua_type(L, -1) == LUA_TBOOLEAN)
          o.http2 = lua_toboolean(L, -1) ? 1000 : 0;
        else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= 1000000)
          o.http2 = (int)lua_tointeger(L, -1);
        else
          ath__raise(L, ATH_EINVAL, "invalid http2 (a boolean, or streams a second per connection)");
      } else if (strcmp(k, "metrics") == 0 || strcmp(k, "dashboard") == 0) {
        if (lua_type(L, -1) != LUA_TBOOLEAN)
          ath__raise(L, ATH_EINVAL, "invalid %s (a boolean)", k);
        int bit = k[0] == 'm' ? ATH_SERVE_METRICS : ATH_SERVE_DASHBOARD;
        o.flags = lua_toboolean(L, -1) ? o.flags | bit : o.flags & ~bit;
      } else if (strcmp(k, "maxBuffered") == 0) {
        o.max_buffered = serve_bytes(L, -1);
      } else if (strcmp(k, "gateway") == 0) {
        gateway = !lua_isnil(L, -1);
      } else if (strcmp(k, "auth") == 0) {
        auth = !lua_isnil(L, -1);
      } else if (strcmp(k, "allowedHosts") == 0) {
        hosts = !lua_isnil(L, -1);
      } else {
        ath__raise(L, ATH_EINVAL, "unknown option %s", luaL_tolstring(L, -2, NULL));
      }
      lua_pop(L, 1);
    }
  }
  if (lw->proxy)
    return ath__raise(L, ATH_EINVAL, "serve is not allowed inside a worker");
  if (hosts) {
    lua_getfield(L, 2, "allowedHosts");
    o.allowed_hosts = serve_hosts(L, -1); /* raises before anything else is built */
    lua_pop(L, 1);
  }
  ath_serve_opts_t ops = o; /* the operations listener (opsPort) */
  ops.http2 = 0;
  ops.allowed_hosts = o.allowed_hosts && ops_port >= 0 ? ath__strv_dup((const char* const*)o.allowed_hosts) : NULL;
  if (ops_port >= 0)
    o.flags = 0; /* the main listener: /healthz and the gateway */
  /* protected: what is built is freed when building raises */
  int rc = 0;
  char err[300];
  for (int pass = 0; pass < (ops_port >= 0 ? 2 : 1); pass++) {
    ath_serve_opts_t* cur = pass ? &ops : &o;
    lua_pushcfunction(L, serve_build);
    lua_pushlightuserdata(L, cur);
    lua_pushlightuserdata(L, lw->w);
    if (gateway && !pass)
      lua_getfield(L, 2, "gateway");
    else
      lua_pushnil(L);
    if (auth)
      lua_getfield(L, 2, "auth");
    else
      lua_pushnil(L);
    if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
      ath__serve_opts_free(&o);
      ath__serve_opts_free(&ops);
      return lua_error(L);
    }
  }
  if (ops_port >= 0 && o.gws != NULL && ath__gws_copy_keys(o.gws, &ops.keys, &ops.nkeys) != 0)
    rc = ATH_ENOMEM;
  int bound = 0, ops_bound = 0;
  if (rc == 0)
    rc = ath__world_serve(lw->w, host, (int)port, &o, &bound, err, sizeof(err));
  else
    ath__serve_opts_free(&o);
  if (rc != 0) {
    ath__serve_opts_free(&ops);
    return ath__raise(L, rc, "%s", rc == ATH_ENOMEM ? "out of memory" : err);
  }
  if (ops_port >= 0 && (rc = ath__world_serve(lw->w, ops_host, (int)ops_port, &ops, &ops_bound, err,
                                              sizeof(err))) != 0)
    return ath__raise(L, rc, "opsPort: %s", err);
  lua_createtable(L, 0, 5);
  lua_pushstring(L, host);
  lua_setfield(L, -2, "host");
  serve_result(L, "", host, bound);
  if (ops_port >= 0)
    serve_result(L, "ops", ops_host, ops_bound);
  return 1;
}

/* world:now() -> the world's time in epoch ms (the manual clock's, if any) */
static int world_now(lua_State* L) {
  lua_pushinteger(L, ath_world_now(check_world(L, 1)));
  return 1;
}

/* ---------------------------------------------------------------- handles */

static lhandle_t* check_handle(lua_State* L, int idx) {
  return luaL_checkudata(L, idx, "athena.Handle");
}

/* [-0, +1, -] Pushes the handle's world (its first user value). */
static ath_world_t* handle_world(lua_State* L, int idx) {
  lua_getiuservalue(L, idx, 1);
  lworld_t* lw = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (lw == NULL || lw->w == NULL)
    luaL_error(L, "attempt to use a handle of a closed world");
  return lw->w;
}

static int handle_gc(lua_State* L) {
  lhandle_t* h = check_handle(L, 1);
  if (h->t != NULL) {
    ath_task_release(h->t);
    h->t = NULL;
  }
  return 0;
}

static int handle_status(lua_State* L) {
  lhandle_t* h = check_handle(L, 1);
  lua_pushstring(L, ath_status_name(ath_task_status(handle_world(L, 1), h->t)));
  return 1;
}

/* h:cancel() -> true if accepted, false if the task already ended */
static int handle_cancel(lua_State* L) {
  lhandle_t* h = check_handle(L, 1);
  lua_pushboolean(L, ath_world_cancel(handle_world(L, 1), h->t));
  return 1;
}

static int handle_query(lua_State* L) {
  lhandle_t* h = check_handle(L, 1);
  return push_state(L, handle_world(L, 1), h->t);
}

/* Pushes result() values for a task that is terminal. */
static int push_outcome(lua_State* L, ath_world_t* w, ath_task_t* t) {
  ath_status_t st = ath_task_status(w, t);
  ath_task_end_t end;
  ath__task_end(t, &end);
  if (st == ATH_COMPLETED) {
    push_json(L, end.result, end.result_len);
    return 1;
  }
  lua_pushnil(L);
  if (st == ATH_CANCELLED)
    ath__pusherror(L, ATH_ECANCELED, "task cancelled");
  else if (st == ATH_COMPENSATED && end.error == NULL)
    ath__pusherror(L, ATH_ECOMPENSATED, NULL);
  else /* compensated: ECOMPENSATED with cause and details.failed (§9.5) */
    push_error_json(L, end.error, end.error_len, end.err_code);
  return 2;
}

static int handle_outcome_k(lua_State* L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return push_outcome(L, handle_world(L, 1), check_handle(L, 1)->t);
}

/* The outcome of a finished task, once it is durable (file mode: a task
 * yields for the commit, SEMANTICS §6.1). */
static int durable_outcome(lua_State* L, ath_world_t* w, ath_task_t* t) {
  uint64_t gen = ath__world_commit_gen(w, t);
  if (gen != 0)
    ath__task_await_commit(L, w, gen, handle_outcome_k);
  return push_outcome(L, w, t);
}

static int handle_result_k(lua_State* L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lhandle_t* h = check_handle(L, 1);
  if (ath__task_wait_timed_out(L))
    return ath__pushfail(L, ATH_ETIMEDOUT, "timed out waiting for the result");
  return durable_outcome(L, handle_world(L, 1), h->t);
}

/* h:result([timeout]) -> result | nil, err */
static int handle_result(lua_State* L) {
  lhandle_t* h = check_handle(L, 1);
  ath_world_t* w = handle_world(L, 1);
  int64_t timeout = -1;
  if (!lua_isnoneornil(L, 2))
    timeout = ath__checkduration(L, 2, "timeout");
  lua_settop(L, 1);
  int wrc = ath__task_wait(L, h->t, timeout, handle_result_k, 0);
  if (wrc == 0)
    return durable_outcome(L, w, h->t);
  /* Not in a task's own coroutine: block this thread. */
  int rc = ath_world_wait(w, h->t, timeout);
  if (rc == ATH_ETIMEDOUT)
    return ath__pushfail(L, rc, "timed out waiting for the result");
  if (rc == ATH_ESHUTDOWN)
    return ath__pushfail(L, rc, "world shut down before the task finished");
  return push_outcome(L, w, h->t);
}

static int handle_index(lua_State* L) {
  lhandle_t* h = check_handle(L, 1);
  const char* k = lua_tostring(L, 2);
  if (k != NULL && strcmp(k, "name") == 0)
    handle_world(L, 1); /* the name lives with the world: raises once it is closed */
  if (k != NULL && strcmp(k, "id") == 0) {
    lua_pushstring(L, ath_task_id(h->t));
    return 1;
  }
  if (k != NULL && strcmp(k, "name") == 0) {
    lua_pushstring(L, ath_task_name(h->t));
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static int handle_tostring(lua_State* L) {
  lhandle_t* h = check_handle(L, 1);
  lua_pushfstring(L, "athena.Handle (%s)", ath_task_id(h->t));
  return 1;
}

int lath_open_world(lua_State* L) {
  static const luaL_Reg world_meta[] = {
    {"__index", NULL},
    {"__gc", world_close},
    {"__close", world_close},
    {"__tostring", world_tostring},
    {NULL, NULL},
  };
  static const luaL_Reg world_methods[] = {
    {"_register", world_register},
    {"_start", world_start},
    {"execute", world_execute},
    {"executeMany", world_execute_many},
    {"query", world_query},
    {"children", world_children},
    {"getMetrics", world_metrics},
    {"getWorkers", world_workers},
    {"getNodes", world_nodes},
    {"shutdown", world_shutdown},
    {"cancel", world_cancel},
    {"requeue", world_requeue},
    {"purge", world_purge},
    {"queryTasks", world_query_tasks},
    {"_schedule", world_schedule},
    {"_scheduleOnce", world_schedule_once},
    {"pauseSchedule", world_pause_schedule},
    {"resumeSchedule", world_resume_schedule},
    {"deleteSchedule", world_delete_schedule},
    {"getSchedules", world_get_schedules},
    {"advance", world_advance},
    {"serve", world_serve},
    {"refreshGateway", world_refresh_gateway},
    {"now", world_now},
    {"getQuarantined", world_get_quarantined},
    {NULL, NULL},
  };
  static const luaL_Reg handle_meta[] = {
    {"__gc", handle_gc},
    {"__tostring", handle_tostring},
    {NULL, NULL},
  };
  static const luaL_Reg handle_methods[] = {
    {"result", handle_result},
    {"status", handle_status},
    {"query", handle_query},
    {"cancel", handle_cancel},
    {NULL, NULL},
  };
  ath__newclass(L, "athena.World", world_meta, world_methods);
  lua_pop(L, 1);
  ath__newclass(L, "athena.Handle", handle_meta, handle_methods);
  /* __index is a function (for h.id and h.name) over the methods table */
  luaL_getmetatable(L, "athena.Handle");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, handle_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 2);
  return 0;
}

/* For bindings/l_ops.c (the --progress line). */
ath_world_t* lath_checkworld(lua_State* L, int idx) {
  return check_world(L, idx);
}
