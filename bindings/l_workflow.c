/* The C side of workflow segments (athena/workflow.lua): appending history
 * events, starting the tasks a workflow owns, and parking. Every function
 * works only in the running workflow's own task and raises elsewhere. */
#include <string.h>
#include "runtime.h"
#include "lath.h"

static ath_task_t* check_workflow(lua_State* L) {
  ath_task_t* t = ath__task_workflow(L);
  if (t == NULL)
    ath__raise(L, ATH_EINVAL, "workflow commands are only allowed in workflow code");
  return t;
}

static ath_world_t* world_of(lua_State* L) {
  return ath__worker_world(ath__worker_of(L));
}

/* [-0, +0, v] Encodes the value at idx into b, raising EINVAL naming
 * `root` when it is not a payload. */
static void encode(lua_State* L, int idx, const char* root, ath_buf_t* b) {
  char err[256];
  int rc = ath__json_encode(L, idx, root, b, err, sizeof(err));
  if (rc != 0) {
    ath__buf_free(b);
    ath__raise(L, rc, "%s", err);
  }
}

/* core.wfAppend(event): records the event table in the history (with
 * the segment's outcome; file mode: at once, durable before it returns). */
static int wf_append(lua_State* L) {
  ath_task_t* t = check_workflow(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  ath_buf_t b = {0};
  encode(L, 1, "event", &b);
  uint64_t gen;
  int rc = ath__task_wf_record(L, t, b.data, b.len, &gen);
  ath__buf_free(&b);
  if (rc != 0)
    return ath__raise(L, rc, "cannot record a workflow event");
  lua_pushnil(L); /* what it returns, once durable */
  if (gen != 0)
    ath__task_await_commit(L, world_of(L), gen, NULL);
  return 1;
}

/* core.wfSpawn(name, input, id, opts) -> id: starts `name` as a task the
 * workflow owns (idempotent by id, SEMANTICS §5.3). opts: taskQueue,
 * priority, delay, failureStrategy (a name), encoded (input is its JSON
 * already), limits (per-call timeout,
 * scheduleToClose, heartbeatTimeout in ms and retry, as workflow.lua
 * normalised them). */
/* [-0, +0, v] Reads the options of a task workflow t starts from the
 * stack, at i: taskQueue, priority, delay, failureStrategy (a name),
 * limits (per-call timeout, scheduleToClose, heartbeatTimeout in ms and
 * retry, as workflow.lua normalised them); nil: the default. Into o, the
 * limits encoded in lim. */
static void spawn_opts(lua_State* L, int i, ath_task_t* t, ath_exec_opts_t* o, ath_buf_t* lim) {
  memset(o, 0, sizeof(*o));
  o->parent_id = ath_task_id(t);
  if (lua_type(L, i) == LUA_TSTRING)
    o->task_queue = lua_tostring(L, i);
  if (lua_type(L, i + 1) == LUA_TNUMBER) {
    o->has_priority = 1;
    o->priority = (int)lua_tointeger(L, i + 1);
  }
  if (!lua_isnil(L, i + 2))
    o->delay_ms = ath__checkduration(L, i + 2, "delay");
  if (!lua_isnil(L, i + 3))
    o->failure_strategy = ath__checkstrategy(L, i + 3, "failureStrategy");
  if (lua_type(L, i + 4) == LUA_TTABLE) {
    encode(L, i + 4, "limits", lim);
    o->limits = lim->data;
    o->limits_len = lim->len;
  }
}

static int wf_spawn(lua_State* L) {
  ath_task_t* t = check_workflow(L);
  const char* name = luaL_checkstring(L, 1);
  const char* id = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  ath_exec_opts_t o;
  ath_buf_t lim = {0};
  static const char* const keys[] = {"taskQueue", "priority", "delay", "failureStrategy", "limits"};
  lua_settop(L, 4);
  for (int k = 0; k < 5; k++)
    lua_getfield(L, 4, keys[k]);
  spawn_opts(L, 5, t, &o, &lim);
  o.id = id;
  ath_buf_t b = {0};
  char jerr[256];
  int jrc = 0;
  if (lua_getfield(L, 4, "encoded") == LUA_TBOOLEAN && lua_toboolean(L, -1)) {
    size_t n; /* JSON workflow.lua encoded (and so checked) already */
    const char* json = luaL_checklstring(L, 2, &n);
    jrc = ath__buf_append(&b, json, n);
    snprintf(jerr, sizeof(jerr), "%s", "not enough memory");
  } else {
    jrc = ath__json_encode(L, 2, "input", &b, jerr, sizeof(jerr));
  }
  if (jrc != 0) {
    ath__buf_free(&b);
    ath__buf_free(&lim);
    return ath__raise(L, jrc, "%s", jerr);
  }
  char* payload = b.data ? b.data : ath__memdup("null", 4);
  size_t len = b.data ? b.len : 4;
  ath_task_t* out;
  char err[256] = "";
  uint64_t gen;
  int rc = ath__world_execute(world_of(L), name, 1, &payload, &len, NULL, &o, &out, &gen, err, sizeof(err));
  ath__buf_free(&lim);
  if (rc != 0)
    return ath__raise(L, rc, "%s", err[0] ? err : ath_strerror(rc));
  lua_pushstring(L, ath_task_id(out));
  ath__task_keep_spawned(L, out); /* for the park that usually follows */
  if (gen != 0)
    ath__task_await_commit(L, world_of(L), gen, NULL);
  return 1;
}

/* core.wfPark(kind, seq, taskId | fireAt) -> historyLength, event, others:
 * ends the segment until the outcome of command `seq` is recorded. Returns
 * only when its worker kept the coroutine (the sticky cache): with the
 * history's length and the events recorded since the park (the first,
 * and a list of the others when there are more). */
static int wf_park(lua_State* L) {
  static const char* const kinds[] = {"none", "activity", "child", "compensation", "timer", NULL};
  check_workflow(L);
  int kind = luaL_checkoption(L, 1, NULL, kinds);
  lua_Integer seq = luaL_checkinteger(L, 2);
  if (kind == ATH_PARK_NONE)
    return ath__raise(L, ATH_EINVAL, "invalid park kind");
  if (kind == ATH_PARK_TIMER)
    return ath__task_park(L, kind, seq, NULL, (int64_t)luaL_checkinteger(L, 3));
  const char* id = luaL_checkstring(L, 3);
  ath_task_t* x = ath__task_spawned(L, id);
  if (x == NULL && ath_world_find(world_of(L), id, &x) != 0)
    return ath__raise(L, ATH_ENOTFOUND, "no task %s", id);
  return ath__task_park(L, kind, seq, x, 0);
}

/* Writes the step's id <workflowId>/<run>/<seq> into buf[0..cap), NUL
 * ended; NULL when it does not fit. No printf: it runs at every step. */
static const char* step_id(char* buf, size_t cap, const char* wfid, lua_Integer run, lua_Integer seq) {
  char tail[48];
  char* end = tail + sizeof(tail);
  char* p = ath__fmt_i64(end, seq);
  *--p = '/';
  p = ath__fmt_i64(p, run);
  *--p = '/';
  size_t idlen = strlen(wfid), taillen = (size_t)(end - p);
  if (idlen + taillen >= cap)
    return NULL;
  memcpy(buf, wfid, idlen);
  memcpy(buf + idlen, p, taillen);
  buf[idlen + taillen] = '\0';
  return buf;
}

/* core.wfRun(name, input, run, seq, taskQueue, priority, failureStrategy,
 * limits, ctx) -> historyLength, event, others: ctx:run's command in one
 * call, in memory and hybrid modes (file mode takes wfSpawn, wfAppend and
 * wfPark, each durable before the next): checks and encodes `input` (when
 * it is not a payload: EINVAL naming "input", with ctx._seq set back to
 * seq - 1, so that the command numbers after it are file mode's, where
 * ctx:run encodes before it takes its number), starts `name` with it as the
 * workflow's task <workflowId>/<run>/<seq> with the
 * options as wfSpawn's, records activity.scheduled{seq, name, taskId,
 * limits} and parks on the task. Returns as wfPark, or, when the activity
 * completed and nothing else happened meanwhile, historyLength, true and
 * its result. */
static int wf_run(lua_State* L) {
  ath_task_t* t = check_workflow(L);
  if (ath__worker_durable(ath__worker_of(L)))
    return ath__raise(L, ATH_EINVAL, "%s", "wfRun does not wait for commits: not for file mode");
  const char* name = luaL_checkstring(L, 1);
  lua_Integer run = luaL_checkinteger(L, 3);
  lua_Integer seq = luaL_checkinteger(L, 4);
  luaL_checktype(L, 9, LUA_TTABLE);
  lua_settop(L, 9);
  lua_pushnil(L); /* no delay */
  lua_insert(L, 7); /* ctx: 10 */
  ath_exec_opts_t o;
  ath_buf_t lim = {0};
  spawn_opts(L, 5, t, &o, &lim);
  char idbuf[160]; /* most ids: no string for it */
  o.id = step_id(idbuf, sizeof(idbuf), ath_task_id(t), run, seq);
  if (o.id == NULL)
    o.id = lua_pushfstring(L, "%s/%I/%I", ath_task_id(t), run, seq);
  ath_buf_t in = {0}; /* the task takes its memory */
  char err[256] = "";
  int rc = ath__json_encode(L, 2, "input", &in, err, sizeof(err));
  if (rc != 0) {
    ath__buf_free(&in);
    ath__buf_free(&lim);
    lua_pushinteger(L, seq - 1);
    lua_setfield(L, 10, "_seq");
    return ath__raise(L, rc, "%s", err);
  }
  ath_task_t* x;
  rc = ath__task_execute_step(L, name, in.data, in.len, &o, &x, err, sizeof(err));
  if (rc == 0) {
    uint64_t gen;
    rc = ath__task_wf_scheduled(L, t, seq, name, ath_task_id(x), lim.data, lim.len, &gen);
    if (rc != 0) {
      ath_task_release(x);
      snprintf(err, sizeof(err), "%s", "cannot record a workflow event");
    }
  }
  ath__buf_free(&lim);
  if (rc != 0)
    return ath__raise(L, rc, "%s", err[0] ? err : ath_strerror(rc));
  return ath__task_park_step(L, seq, x);
}

/* core.wfDurable() -> whether each workflow command must be committed
 * before the workflow goes on (file mode: wfRun is not for it). */
static int wf_durable(lua_State* L) {
  lua_pushboolean(L, ath__worker_durable(ath__worker_of(L)));
  return 1;
}

/* core.uuid() -> a random UUID v4 string. */
static int wf_uuid(lua_State* L) {
  char id[37];
  ath__uuid4(id);
  lua_pushstring(L, id);
  return 1;
}

/* core.inWorkflow() -> whether the caller runs in workflow code. */
static int wf_inside(lua_State* L) {
  lua_pushboolean(L, ath__task_workflow(L) != NULL);
  return 1;
}

void lath_open_workflow(lua_State* L) {
  static const luaL_Reg funcs[] = {
    {"wfAppend", wf_append}, {"wfSpawn", wf_spawn}, {"wfPark", wf_park},
    {"wfRun", wf_run},       {"wfDurable", wf_durable},
    {"uuid", wf_uuid},       {"inWorkflow", wf_inside}, {NULL, NULL},
  };
  luaL_setfuncs(L, funcs, 0);
}
