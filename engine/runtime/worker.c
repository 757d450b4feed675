/* Worker threads. Each worker owns a libuv loop and a lua_State, both
 * created, used and closed on its own thread. A task runs as a coroutine in
 * one of the worker's slots; a task that waits (athena.sleep, a result)
 * yields to the loop, so one worker holds `concurrency` tasks at once.
 *
 * A pass of the loop (pump) publishes the attempts that ended and claims new
 * tasks in one call into the world (one lock), then starts the claimed tasks
 * and resumes the slots whose waits ended. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lualib.h>
#include "internal.h"
#include "http.h"
#include "store.h"

const char ath__defs_key = 0;
static const char worker_key = 0;
static const char defs_end_key = 0; /* sentinel raised by world:start() */

/* The count hook's interval on coroutines that a task creates. A task's own
 * coroutine runs without a hook until the watchdog kicks it (watchdog.c),
 * except under ThreadSanitizer, which holds an asynchronous signal until
 * the thread calls a function it intercepts (a pure-Lua loop never does):
 * there every task coroutine keeps the count hook, and the kicks still
 * come (late). */
#define HOOK_COUNT 1000
#if defined(__SANITIZE_THREAD__)
#define TASK_HOOK_ALWAYS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TASK_HOOK_ALWAYS 1
#endif
#endif
#ifndef TASK_HOOK_ALWAYS
#define TASK_HOOK_ALWAYS 0
#endif

/* An interrupt that only ends a scope (withRetry's attempt), not the task:
 * raised as ETIMEDOUT. */
#define SCOPE_TIMEOUT (-29999)

/* The worker whose thread this is (set once its state exists; it ends with
 * the thread). Every thread of a worker's state holds the worker in its
 * extra space, so a state of this thread's worker is told from any other
 * without the registry lookup (a workflow step asks about 6 times). */
static _Thread_local ath_worker_t* this_worker;

ath_worker_t* ath__worker_of(lua_State* L) {
  if (this_worker != NULL && *(ath_worker_t**)lua_getextraspace(L) == this_worker)
    return this_worker;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &worker_key);
  ath_worker_t* wk = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return wk;
}

int ath__worker_defining(const ath_worker_t* wk) {
  return wk->defining;
}

ath_world_t* ath__worker_world(const ath_worker_t* wk) {
  return wk->w;
}

int ath__worker_durable(const ath_worker_t* wk) {
  return wk->w->cfg.persistence == ATH_PERSIST_FILE;
}

int ath__task_log_context(lua_State* L, ath_task_log_t* out) {
  ath_worker_t* wk = ath__worker_of(L);
  ath_slot_t* s = wk ? wk->current : NULL;
  if (s == NULL || s->task == NULL)
    return -1;
  ath_task_t* t = s->task; /* the running task: only this thread changes these */
  out->log = wk->w->log;
  out->id = t->id;
  out->name = t->def->name;
  out->attempt = s->attempt;
  out->worker_id = wk->id;
  return 0;
}

int ath__worker_end_definitions(lua_State* L) {
  if (lua_isyieldable(L))
    return lua_yield(L, 0);
  lua_pushlightuserdata(L, (void*)&defs_end_key);
  return lua_error(L);
}

/* [-0, +1, m] Pushes the error value an interrupt raises. */
static void push_interrupt(lua_State* L, int code) {
  if (code == SCOPE_TIMEOUT)
    code = ATH_ETIMEDOUT;
  const char* msg = code == ATH_ESHUTDOWN     ? "interrupted by shutdown"
                    : code == ATH_ETIMEDOUT   ? "attempt timed out"
                    : code == ATH_EHEARTBEAT  ? "no heartbeat within heartbeatTimeout"
                    : code == ATH_ECANCELED   ? "task cancelled"
                                              : ath_strerror(code);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, ath_err_name(code));
  lua_setfield(L, -2, "code");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  lua_pushboolean(L, code == ATH_ETIMEDOUT || code == ATH_EHEARTBEAT);
  lua_setfield(L, -2, "retryable");
  luaL_setmetatable(L, "athena.Error");
}

/* The interrupt a task sees at a yield point: a deadline that passed, a
 * shutdown, or an accepted cancel. */
static int interrupt_code(ath_worker_t* wk, ath_slot_t* s) {
  int code = atomic_load_explicit(&s->interrupt, memory_order_relaxed);
  if (code == 0)
    code = atomic_load_explicit(&wk->interrupt_all, memory_order_relaxed);
  if (code == 0 && s->task && atomic_load_explicit(&s->task->cancel_ns, memory_order_relaxed))
    code = ATH_ECANCELED;
  return code;
}

/* Which deadline of the slot has passed at `now`, as an interrupt code. */
static int expired(ath_slot_t* s, uint64_t now) {
  if (now < s->next_deadline)
    return 0;
  if (s->deadline[1] && now >= s->deadline[1])
    return ATH_EHEARTBEAT;
  if ((s->deadline[0] && now >= s->deadline[0]) || (s->deadline[2] && now >= s->deadline[2]))
    return ATH_ETIMEDOUT; /* the attempt's timeout or scheduleToClose */
  return SCOPE_TIMEOUT;
}

/* The interrupt due for slot s's running task: one already marked (an
 * accepted cancel's grace, a deadline, a shutdown), else a cancel past its
 * grace or a deadline that passed, which it marks. 0: none. */
static int due_code(ath_slot_t* s) {
  ath_worker_t* wk = s->wk;
  int code = atomic_load_explicit(&s->interrupt, memory_order_relaxed);
  if (code == 0)
    code = atomic_load_explicit(&wk->interrupt_all, memory_order_relaxed);
  if (code == 0) {
    uint64_t now = ath__mono(wk->w);
    uint64_t c = atomic_load_explicit(&s->task->cancel_ns, memory_order_relaxed);
    if (c != 0 && now >= ath__after(c, wk->w->cfg.cancel_grace_ms))
      code = ATH_ECANCELED;
    else
      code = expired(s, now);
    if (code != 0)
      atomic_store_explicit(&s->interrupt, code, memory_order_relaxed);
  }
  return code;
}

static void task_hook(lua_State* co, lua_Debug* ar);

/* Sets co's hook as it is while nothing is due: none on a task's own
 * coroutine (`own`: the watchdog's kick sets it again), every HOOK_COUNT
 * instructions on one the task created (nothing would kick it). */
static void hook_rest(lua_State* co, int own) {
  if (own && !TASK_HOOK_ALWAYS)
    lua_sethook(co, NULL, 0, 0);
  else if (lua_gethook(co) != task_hook || lua_gethookcount(co) != HOOK_COUNT)
    lua_sethook(co, task_hook, LUA_MASKCOUNT, HOOK_COUNT);
}

/* The hook of task coroutines, set by the watchdog's kick (and every
 * HOOK_COUNT instructions on coroutines a task creates). Running Lua never
 * lets the worker's loop turn, so the hook checks the deadlines itself, and
 * the cancel grace; once an interrupt is due it raises it, again and again
 * if user code catches it; if none is, it goes back to rest. */
static void task_hook(lua_State* co, lua_Debug* ar) {
  (void)ar;
  ath_worker_t* wk = *(ath_worker_t**)lua_getextraspace(co);
  ath_slot_t* s = wk->current;
  if (s == NULL) {
    hook_rest(co, 0); /* a stale kick, or __close handlers of a cached coroutine */
    return;
  }
  /* a busy handler is alive: beat from here too (a kick is one every
   * WATCH_MS at most; a created coroutine's hook runs far more often) */
  unsigned ticks = atomic_fetch_add_explicit(&wk->ticks, 1, memory_order_relaxed);
  if (co == s->co || (ticks & 63) == 0)
    atomic_store_explicit(&wk->last_heartbeat, ath__now_ms(), memory_order_relaxed);
  if (wk->may_flush && (wk->noutcomes > 0 || wk->npre > 0) &&
      uv_hrtime() - wk->exchanged_ns >= wk->w->prefetch_window_ns)
    ath__world_flush(wk->w, wk); /* this task runs long: what ended before it, and
                                  * what it claimed ahead, must not wait for it */
  int code = due_code(s);
  if (code == 0) {
    hook_rest(co, co == s->co);
    return;
  }
  if (co == s->co && lua_isyieldable(co) && code != SCOPE_TIMEOUT) {
    /* Stop the task where it stands: the worker closes the suspended
     * coroutine (running its __close handlers, under this hook). No error
     * is thrown, so no pcall can catch it and no message handler runs with
     * hooks switched off. */
    lua_yield(co, 0);
    return;
  }
  /* Not yieldable here (a C boundary, a nested coroutine, a withRetry
   * scope): raise it, and from now on on every instruction: a pcall that
   * catches it gets one instruction in its caller, so the error climbs one
   * protected call per instruction until it reaches its catcher. */
  lua_sethook(co, task_hook, LUA_MASKCOUNT, 1);
  push_interrupt(co, code);
  lua_error(co);
}

void ath__worker_kicked(ath_worker_t* wk) {
  lua_State* co = atomic_load_explicit(&wk->lua_co, memory_order_relaxed);
  if (co != NULL)
    lua_sethook(co, task_hook, LUA_MASKCOUNT, 1);
}

/* coroutine.create of worker states: as Lua's, plus the count hook on a
 * coroutine created while a task runs. Lua copies the creator's hook into a
 * new coroutine, and a task's own has none: a kick reaches only the
 * coroutine the worker resumes, not one nested in it, so a nested one
 * checks by itself. */
static int task_cocreate(lua_State* L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State* co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  if ((*(ath_worker_t**)lua_getextraspace(L))->current != NULL)
    hook_rest(co, 0);
  return 1;
}

/* coroutine.wrap likewise: Lua's wrapper function (upvalue 1) around it. */
static int task_cowrap(lua_State* L) {
  task_cocreate(L);
  lua_pushcclosure(L, lua_tocfunction(L, lua_upvalueindex(1)), 1);
  return 1;
}

/* [-0, +0, e] Puts task_cocreate and task_cowrap into the coroutine table. */
static void hook_coroutines(lua_State* L) {
  if (lua_getglobal(L, "coroutine") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, -1, "wrap"); /* one call of Lua's, for its wrapper function */
  lua_pushcfunction(L, task_cocreate);
  ath__vm_callk(L, 1, 1, NULL);
  lua_CFunction auxwrap = lua_tocfunction(L, -1);
  lua_pop(L, 1);
  if (auxwrap == NULL)
    luaL_error(L, "coroutine.wrap does not return a C closure");
  lua_pushcfunction(L, auxwrap);
  lua_pushcclosure(L, task_cowrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_pushcfunction(L, task_cocreate);
  lua_setfield(L, -2, "create");
  lua_pop(L, 1);
}

/* Returns the slot whose own coroutine is L, or NULL. */
static ath_slot_t* task_slot(lua_State* L) {
  ath_worker_t* wk = ath__worker_of(L);
  if (wk == NULL || wk->current == NULL || wk->current->co != L)
    return NULL;
  return wk->current;
}

/* Continuation of every task wait: raise the interrupt that ended it, if
 * any; otherwise return to the caller. */
static int wait_k(lua_State* L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  ath_slot_t* s = task_slot(L);
  int code = s ? interrupt_code(s->wk, s) : 0;
  if (code != 0) {
    push_interrupt(L, code);
    return lua_error(L);
  }
  return 0;
}

/* Continuation of handle:result() in a task: the interrupt first, then the
 * caller's own continuation. */
static int await_k(lua_State* L, int status, lua_KContext ctx) {
  ath_slot_t* s = task_slot(L);
  wait_k(L, status, ctx);
  return s->wait_k(L, status, ctx);
}

static void resume_slot(ath_slot_t* s, int nargs);
static void pump(ath_worker_t* wk);

/* ----------------------------------------------------------------- timers */

/* A libuv timer of a slot: its callback, then a pass to publish what it
 * ended. (Manual-clock timers run inside a pass already.) */
static void uvt_cb(uv_timer_t* h) {
  ath_slot_t* s = h->data;
  int which = h == &s->uvt[ATH_TIMER_DEADLINE];
  s->tcb[which](s);
  pump(s->wk);
}

/* Runs cb(s) `ms` from now on the world's clock (replacing the timer's
 * previous arming). */
static void timer_start(ath_slot_t* s, int which, uint64_t ms, ath_slot_cb cb) {
  ath_world_t* w = s->wk->w;
  s->tcb[which] = cb;
  if (w->manual) {
    ath__vtimer_start(w, &s->vt[which], ath__after(ath__mono(w), (int64_t)ms));
    return;
  }
  /* The loop's clock is cached and whole milliseconds: refresh it and add
   * one, so the timer never fires early. */
  uv_update_time(&s->wk->loop);
  uv_timer_start(&s->uvt[which], uvt_cb, ms + 1, 0);
}

static void timer_stop(ath_slot_t* s, int which) {
  if (s->wk->w->manual)
    ath__vtimer_stop(s->wk->w, &s->vt[which]);
  else
    uv_timer_stop(&s->uvt[which]);
}

static void sleep_cb(ath_slot_t* s) {
  s->wait = ATH_WAIT_NONE;
  resume_slot(s, 0);
}

int ath__task_sleep(lua_State* L, int64_t ms) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL)
    return -1;
  if (interrupt_code(s->wk, s) != 0)
    return wait_k(L, LUA_OK, 0);
  s->wait = ATH_WAIT_SLEEP;
  timer_start(s, ATH_TIMER_WAIT, (uint64_t)ms, sleep_cb);
  return lua_yieldk(L, 0, 0, wait_k);
}

/* The wait for a result timed out: stop waiting, resume without it. */
static void wait_timeout_cb(ath_slot_t* s) {
  if (s->wait != ATH_WAIT_RESULT)
    return;
  ath__world_unawait(s->wk->w, s->awaiting, s);
  s->wait = ATH_WAIT_NONE;
  s->wait_timed_out = 1;
  resume_slot(s, 0);
}

int ath__task_wait(lua_State* L, ath_task_t* t, int64_t timeout_ms, lua_KFunction k,
                   lua_KContext kctx) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL)
    return -1;
  if (interrupt_code(s->wk, s) != 0)
    return wait_k(L, LUA_OK, 0);
  s->wait_timed_out = 0;
  int rc = ath__world_await(s->wk->w, t, s);
  if (rc == 0)
    return 0;
  if (rc < 0)
    return luaL_error(L, "cannot wait: %s", ath_strerror(rc));
  s->wait = ATH_WAIT_RESULT;
  s->awaiting = t;
  s->wait_k = k;
  if (timeout_ms >= 0)
    timer_start(s, ATH_TIMER_WAIT, (uint64_t)timeout_ms, wait_timeout_cb);
  return lua_yieldk(L, 0, kctx, await_k);
}

/* The default continuation of a commit wait: the value on top. */
static int top_k(lua_State* L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 1;
}

int ath__task_await_commit(lua_State* L, ath_world_t* w, uint64_t gen, lua_KFunction k) {
  return ath__task_await_enqueue(L, w, gen, NULL, 0, k);
}

int ath__task_await_enqueue(lua_State* L, ath_world_t* w, uint64_t gen, ath_task_t* const* tasks,
                            size_t n, lua_KFunction k) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL || s->wk->w != w || !lua_isyieldable(L)) {
    uv_mutex_lock(&w->lock); /* not a task of this world's: block */
    ath__store_wait_enqueue(w, gen, tasks, n);
    uv_mutex_unlock(&w->lock);
    return 0;
  }
  if (interrupt_code(s->wk, s) != 0)
    return wait_k(L, LUA_OK, 0); /* raises it */
  uv_mutex_lock(&w->lock);
  ath_task_t* enq = ath__store_unborn(tasks, n);
  uv_mutex_unlock(&w->lock);
  int rc = ath__store_await(w, gen, enq, s);
  if (rc == 0)
    return 0;
  if (rc < 0)
    return luaL_error(L, "cannot wait for the commit: %s", ath_strerror(rc));
  s->wait = ATH_WAIT_COMMIT;
  s->wait_k = k ? k : top_k;
  return lua_yieldk(L, 0, 0, await_k); /* the interrupt, then s->wait_k */
}

/* A request of a task's finished: resume the task. */
static void http_done(ath_http_req_t* r) {
  ath_slot_t* s = r->slot;
  r->slot = NULL;
  if (s == NULL || s->wait != ATH_WAIT_HTTP)
    return;
  s->wait = ATH_WAIT_NONE;
  s->http = NULL;
  resume_slot(s, 0);
  pump(s->wk);
}

int ath__task_http(lua_State* L, ath_http_req_t* r, lua_KFunction k, lua_KContext kctx) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL)
    return -1;
  if (interrupt_code(s->wk, s) != 0)
    return wait_k(L, LUA_OK, 0);
  ath_worker_t* wk = s->wk;
  if (wk->curlm == NULL && ath__curlm_new(&wk->loop, http_done, &wk->curlm) != 0)
    return luaL_error(L, "not enough memory");
  if (ath__curlm_add(wk->curlm, r) != 0)
    return luaL_error(L, "not enough memory");
  r->slot = s;
  s->http = r;
  s->wait = ATH_WAIT_HTTP;
  s->wait_k = k;
  return lua_yieldk(L, 0, kctx, await_k);
}

uv_loop_t* ath__task_loop(lua_State* L) {
  ath_slot_t* s = task_slot(L);
  return s != NULL && lua_isyieldable(L) ? &s->wk->loop : NULL;
}

int ath__task_io(lua_State* L, ath_io_wait_t* io, lua_KFunction k, lua_KContext kctx) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL || interrupt_code(s->wk, s) != 0) {
    io->slot = NULL;
    io->abort(io);
    return wait_k(L, LUA_OK, 0);
  }
  io->slot = s;
  s->io = io;
  s->wait = ATH_WAIT_IO;
  s->wait_k = k;
  return lua_yieldk(L, 0, kctx, await_k);
}

void ath__task_io_done(ath_io_wait_t* io) {
  ath_slot_t* s = io->slot;
  io->slot = NULL;
  if (s == NULL || s->wait != ATH_WAIT_IO || s->io != io)
    return;
  s->wait = ATH_WAIT_NONE;
  s->io = NULL;
  resume_slot(s, 0);
  pump(s->wk);
}

ath_slot_t* ath__task_current(lua_State* L) {
  ath_worker_t* wk = ath__worker_of(L);
  return wk != NULL && wk->current != NULL && wk->current->task != NULL ? wk->current : NULL;
}

int ath__task_due(ath_slot_t* s) {
  return s->task != NULL && due_code(s) != 0;
}

int ath__task_wait_timed_out(lua_State* L) {
  ath_slot_t* s = task_slot(L);
  return s != NULL && s->wait_timed_out;
}

ath_task_t* ath__task_workflow(lua_State* L) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL) {
    ath_worker_t* wk = ath__worker_of(L);
    s = wk ? wk->current : NULL; /* a nested coroutine of the task */
  }
  return s != NULL && s->task != NULL && s->task->wf != NULL ? s->task : NULL;
}

/* [-0, +1, m] Pushes outcome event m as the table its JSON decodes to,
 * decoding only its value. Returns 0, or ATH_EINVAL (an error message
 * pushed instead). */
static int push_outcome(lua_State* L, const ath_wf_outev_t* m) {
  lua_createtable(L, 0, 6);
  lua_pushstring(L, m->type);
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, m->at);
  lua_setfield(L, -2, "at");
  lua_pushinteger(L, m->run);
  lua_setfield(L, -2, "run");
  lua_pushinteger(L, m->seq);
  lua_setfield(L, -2, m->index ? "index" : "seq");
  if (m->key != NULL) {
    if (ath__json_decode(L, m->ev->json + m->voff, m->vlen) != 0)
      return ATH_EINVAL;
    lua_setfield(L, -2, m->key); /* null: absent, as decoded whole */
  }
  return 0;
}

/* What a cached coroutine's park returns when it resumes (park_k's
 * context): the history's length and the new events as tables (and a list
 * of the others) — or, for ath__task_park_step when the one new event is
 * its activity's completion, the length, true and the result alone, since
 * ctx:run needs nothing else of it. */
enum { PARK_EVENTS = 0, PARK_VALUE = 1 };

/* Continuation of a park whose coroutine stayed cached (wf_cache.c): the
 * next segment resumed it with the history's new events (an array of
 * ath_wfev_t references, which the resumer keeps until this returns), their
 * count, the history's length and, when the events are one outcome the
 * engine recorded, its description (or NULL); returns the length, the
 * first event decoded (nil when none) and, when there are more, a list of
 * the others. */
static int park_k(lua_State* L, int status, lua_KContext ctx) {
  (void)status;
  ath_wfev_t* const* evs = lua_touserdata(L, -4);
  int n = (int)lua_tointeger(L, -3);
  lua_Integer total = lua_tointeger(L, -2);
  const ath_wf_outev_t* out = lua_touserdata(L, -1);
  lua_settop(L, 0);
  lua_pushinteger(L, total);
  if (ctx == PARK_VALUE && n == 1 && out != NULL && out->key != NULL &&
      strcmp(out->type, "activity.completed") == 0) {
    lua_pushboolean(L, 1); /* the step's result alone: no event table */
    if (ath__json_decode(L, out->ev->json + out->voff, out->vlen) != 0)
      return luaL_error(L, "workflow resumed without its new events");
    return 3;
  }
  if (n > 1)
    lua_createtable(L, n - 1, 0);
  for (int i = 0; i < n; i++) {
    int rc = out != NULL ? push_outcome(L, out) : ath__json_decode(L, evs[i]->json, evs[i]->len);
    if (rc != 0)
      return luaL_error(L, "workflow resumed without its new events");
    if (i > 0)
      lua_rawseti(L, 2, i);
  }
  if (n > 1)
    lua_rotate(L, 2, -1); /* total, first, others */
  return n == 0 ? 1 : n == 1 ? 2 : 3;
}

static int park(lua_State* L, int kind, int64_t seq, ath_task_t* t, int64_t at, lua_KContext how) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL || s->task->wf == NULL) {
    if (t != NULL)
      ath_task_release(t);
    return luaL_error(L, "workflow commands must be called from the workflow's own coroutine");
  }
  if (interrupt_code(s->wk, s) != 0) {
    if (t != NULL)
      ath_task_release(t);
    return wait_k(L, LUA_OK, 0);
  }
  if (!lua_isyieldable(L)) {
    if (t != NULL)
      ath_task_release(t);
    return luaL_error(L, "a workflow cannot wait here (attempt to yield across a C-call boundary: "
                         "a metamethod, a table.sort comparator, a gsub callback)");
  }
  s->park_kind = kind;
  s->park_seq = seq;
  s->park_task = t;
  s->park_at = at;
  s->wait = ATH_WAIT_PARK;
  return lua_yieldk(L, 0, how, park_k);
}

int ath__task_park(lua_State* L, int kind, int64_t seq, ath_task_t* t, int64_t at) {
  return park(L, kind, seq, t, at, PARK_EVENTS);
}

int ath__task_park_step(lua_State* L, int64_t seq, ath_task_t* t) {
  return park(L, ATH_PARK_ACTIVITY, seq, t, 0, PARK_VALUE);
}

int ath__task_wf_scheduled(lua_State* L, ath_task_t* t, int64_t seq, const char* name,
                           const char* task_id, const char* limits, size_t limits_len, uint64_t* gen) {
  ath_worker_t* wk = ath__worker_of(L);
  ath_buf_t* b = &wk->buf; /* free while a segment runs: results use it after */
  b->len = 0;
  int rc = ath__ev_begin(b, t, "activity.scheduled", ath__wall(wk->w));
  rc |= ath__ev_int(b, "seq", seq);
  rc |= ath__buf_putlit(b, ",\"name\":");
  rc |= ath__json_put_text(b, name, strlen(name));
  rc |= ath__buf_putlit(b, ",\"taskId\":");
  rc |= ath__json_put_text(b, task_id, strlen(task_id));
  if (limits != NULL) {
    rc |= ath__buf_putlit(b, ",\"limits\":");
    rc |= ath__buf_put(b, limits, limits_len);
  }
  rc |= ath__buf_putlit(b, "}");
  return rc != 0 ? ATH_ENOMEM : ath__task_wf_record(L, t, b->data, b->len, gen);
}

int ath__task_execute_step(lua_State* L, const char* name, char* payload, size_t len,
                           const ath_exec_opts_t* opts, ath_task_t** out, char* err, size_t errlen) {
  ath_worker_t* wk = ath__worker_of(L);
  ath_slot_t* s = wk->current;
  if (s == NULL || s->held != NULL) { /* one held per segment (a park refused, caught) */
    uint64_t gen;
    return ath__world_execute(wk->w, name, 1, &payload, &len, NULL, opts, out, &gen, err, errlen);
  }
  uint64_t evicted0;
  int rc = ath__world_execute_by(wk, name, payload, len, opts, out, &evicted0, err, errlen);
  if (rc == 0) {
    ath_task_retain(*out);
    s->held = *out;
    s->held_evicted0 = evicted0;
  }
  return rc;
}

void ath__task_keep_spawned(lua_State* L, ath_task_t* t) {
  ath_worker_t* wk = ath__worker_of(L);
  ath_slot_t* s = wk ? wk->current : NULL;
  if (s == NULL || s->task == NULL) {
    ath_task_release(t);
    return;
  }
  if (s->spawned != NULL)
    ath_task_release(s->spawned);
  s->spawned = t;
}

ath_task_t* ath__task_spawned(lua_State* L, const char* id) {
  ath_worker_t* wk = ath__worker_of(L);
  ath_slot_t* s = wk ? wk->current : NULL;
  ath_task_t* t = s != NULL ? s->spawned : NULL;
  if (t == NULL || strcmp(ath_task_id(t), id) != 0)
    return NULL;
  s->spawned = NULL;
  return t;
}

/* -------------------------------------------------------------- running */

/* The body of every task coroutine. Everything a task allocates happens
 * here, inside the coroutine, so a memory error (or the memory limit) fails
 * the task instead of the worker: builds ctx, decodes the input and the
 * last heartbeat, calls handler(ctx, input) and returns all it returns. */
static int task_k(lua_State* co, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(co);
}

/* [-0, +1, m] Decodes JSON, raising a not-retried EINVAL if it is not. */
static void push_decoded(lua_State* co, const char* json, size_t len) {
  if (ath__json_decode(co, json, len) != 0) {
    /* JSON that does not decode can only come from a C caller */
    push_interrupt(co, ATH_EINVAL);
    lua_insert(co, -2);
    lua_setfield(co, -2, "message");
    lua_error(co);
  }
}

/* Workflow t's history events from index `from` as a JSON array,
 * malloc'd (NULL when out of memory): the events are shared with the
 * engine by reference and joined here, with no lock held. *total gets the
 * history's length. */
static char* wf_events_json(ath_worker_t* wk, ath_task_t* t, uint32_t from, size_t* len,
                            uint32_t* total) {
  size_t n;
  ath_wfev_t** evs = ath__world_wf_events(wk->w, t, from, &n, total);
  char* json = evs == NULL && n > 0 ? NULL : ath__wf_events_join(evs, n, len);
  ath__wfev_release_all(evs, evs != NULL ? n : 0);
  return json;
}

/* A workflow segment: athena.workflow's runner replays the handler against
 * the history: runner(handler, ctx, input, history, compensating, error,
 * strategy, parentId). */
static int workflow_main(lua_State* co, ath_task_t* t) {
  ath_worker_t* wk = ath__worker_of(co);
  lua_rawgeti(co, LUA_REGISTRYINDEX, wk->workflow_ref);
  lua_insert(co, 1); /* runner, handler, ctx */
  push_decoded(co, t->input, t->input_len);
  size_t hlen;
  uint32_t total;
  char* hist = wf_events_json(wk, t, 0, &hlen, &total);
  if (hist == NULL)
    luaL_error(co, "not enough memory");
  int rc = ath__json_decode(co, hist, hlen);
  free(hist);
  if (rc != 0)
    lua_error(co);
  /* the state and error are stable: only this segment changes them now;
   * the state shares its word with flags the store thread clears (dirty),
   * so it is read under the lock */
  uv_mutex_lock(&wk->w->lock);
  int compensating = t->status == ATH_COMPENSATING;
  int strategy = t->strategy;
  uv_mutex_unlock(&wk->w->lock);
  lua_pushboolean(co, compensating);
  if (compensating && t->error != NULL)
    push_decoded(co, t->error, t->error_len);
  else
    lua_pushnil(co);
  lua_pushinteger(co, strategy);
  const ath_task_t* parent = ath__task_parent(t);
  if (parent != NULL)
    lua_pushstring(co, parent->id);
  else
    lua_pushnil(co);
  ath__vm_callk(co, 8, LUA_MULTRET, task_k);
  return task_k(co, LUA_OK, 0);
}

static int task_main(lua_State* co) {
  ath_task_t* t = lua_touserdata(co, 2);
  const char* hb = lua_touserdata(co, 3);
  size_t hb_len = (size_t)lua_tointeger(co, 4);
  lua_settop(co, 1); /* the handler */
  lua_createtable(co, 0, 4);
  lua_pushstring(co, t->id);
  lua_setfield(co, -2, "id");
  lua_pushstring(co, t->def->name);
  lua_setfield(co, -2, "name");
  lua_pushinteger(co, (*(ath_worker_t**)lua_getextraspace(co))->current->attempt);
  lua_setfield(co, -2, "attempt");
  const ath_task_t* parent = ath__task_parent(t);
  if (parent != NULL) {
    lua_pushstring(co, parent->id);
    lua_setfield(co, -2, "workflowId");
  }
  if (t->wf != NULL) {
    luaL_setmetatable(co, "athena.Context");
    return workflow_main(co, t);
  }
  if (hb != NULL) {
    if (ath__json_decode(co, hb, hb_len) != 0)
      return lua_error(co);
    lua_setfield(co, -2, "lastHeartbeat");
  }
  luaL_setmetatable(co, "athena.Context");
  const char* database = ath__worker_world(ath__worker_of(co))->cfg.database;
  if (database != NULL) { /* ctx.db: the worker's warm connection */
    ath__runtime_hooks()->push_db(co, database);
    lua_setfield(co, -2, "db");
  }
  if (ath__json_decode(co, t->input, t->input_len) != 0) {
    /* input that is not JSON can only come from a C caller: not retried */
    push_interrupt(co, ATH_EINVAL);
    lua_insert(co, -2);
    lua_setfield(co, -2, "message");
    return lua_error(co);
  }
  ath__vm_callk(co, 2, LUA_MULTRET, task_k);
  return task_k(co, LUA_OK, 0);
}

static void add_outcome(ath_worker_t* wk, ath_task_t* t, ath_status_t st, int code) {
  ath_outcome_t* o = &wk->outcomes[wk->noutcomes++];
  ath_wfev_t** evs = o->evs; /* the entry's array, kept for its next use */
  uint32_t cap = o->evs_cap;
  memset(o, 0, sizeof(*o));
  o->evs = evs;
  o->evs_cap = cap;
  o->task = t;
  o->status = st;
  o->err_code = code;
  o->retry_after = -1;
}

/* Hands the events the segment in `s` recorded to its outcome `o` (the
 * exchange adds them to the history first). When the outcome's array
 * cannot grow (out of memory) they are dropped: a replay records them
 * again, as after a lost worker. */
static void hand_events(ath_slot_t* s, ath_outcome_t* o) {
  if (s->nrec > o->evs_cap) {
    ath_wfev_t** a = realloc(o->evs, s->nrec * sizeof(*a));
    if (a == NULL) {
      for (uint32_t i = 0; i < s->nrec; i++)
        ath__wfev_release(s->rec[i]);
      s->nrec = 0;
      return;
    }
    o->evs = a;
    o->evs_cap = s->nrec;
  }
  if (s->nrec > 0) /* o->evs may be NULL then: memcpy's arguments must not be */
    memcpy(o->evs, s->rec, s->nrec * sizeof(*s->rec));
  o->nevs = s->nrec;
  s->nrec = 0;
}

int ath__task_wf_record(lua_State* L, ath_task_t* t, const char* json, size_t len, uint64_t* gen) {
  ath_worker_t* wk = ath__worker_of(L);
  ath_slot_t* s = wk->current;
  *gen = 0;
  if (s == NULL || s->task != t || wk->w->cfg.persistence == ATH_PERSIST_FILE)
    return ath__world_wf_append(wk->w, t, json, len, gen); /* §9.2: durable before it goes on */
  if (s->nrec == s->rec_cap) {
    uint32_t cap = s->rec_cap ? s->rec_cap * 2 : 4;
    ath_wfev_t** a = realloc(s->rec, cap * sizeof(*a));
    if (a == NULL)
      return ATH_ENOMEM;
    s->rec = a;
    s->rec_cap = cap;
  }
  ath_wfev_t* e = ath__wfev_new(json, len);
  if (e == NULL)
    return ATH_ENOMEM;
  s->rec[s->nrec++] = e;
  return 0;
}

/* Drops the awaited task of a park that did not end the segment, and the
 * task it started last. */
static void drop_park(ath_slot_t* s) {
  if (s->park_task != NULL)
    ath_task_release(s->park_task);
  s->park_task = NULL;
  s->park_kind = ATH_PARK_NONE;
  if (s->spawned != NULL)
    ath_task_release(s->spawned);
  s->spawned = NULL;
}

/* Whether the normalised error on top of L says "never retry" (§7.3 step
 * 2), and its exact retryAfter. */
static int error_is_final(ath_worker_t* wk, ath_task_t* t, lua_State* L, int64_t* retry_after) {
  int final = 0;
  *retry_after = -1;
  if (lua_getfield(L, -1, "retryable") == LUA_TBOOLEAN && !lua_toboolean(L, -1))
    final = 1;
  lua_pop(L, 1);
  lua_getfield(L, -1, "code");
  int is_retryable_error = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "ERETRYABLE") == 0;
  lua_pop(L, 1);
  if (lua_getfield(L, -1, "retryAfter") == LUA_TNUMBER && is_retryable_error) {
    lua_Number ra = lua_tonumber(L, -1);
    if (ra >= 0 && ra < 9007199254740992.0)
      *retry_after = (int64_t)ra;
  }
  lua_pop(L, 1);
  const char* const* nr = ath__task_limits(t)->non_retryable;
  for (; nr && *nr && !final; nr++) {
    for (int k = 0; k < 2 && !final; k++) {
      lua_getfield(L, -1, k == 0 ? "code" : "name");
      const char* v = lua_tostring(L, -1);
      final = v != NULL && strcmp(v, *nr) == 0;
      lua_pop(L, 1);
    }
  }
  (void)wk;
  return final;
}

/* [-1, +0, -] Pops the error value on top of L's stack, normalises it
 * (SEMANTICS §1.2) with athena.errors.normalize and records the failed
 * attempt's outcome with the error stored as t's error JSON. */
static void fail_attempt(ath_slot_t* s, lua_State* L, const char* traceback) {
  ath_worker_t* wk = s->wk;
  ath_task_t* t = s->task;
  int code = ATH_EHANDLER;
  int top = lua_gettop(L) - 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, wk->normalize_ref);
  lua_insert(L, -2);
  lua_pushstring(L, traceback);
  lua_pushinteger(L, s->attempt);
  if (ath__vm_call(L, 3, 1) != LUA_OK) {
    /* The normaliser itself failed (out of memory): keep the failure. */
    lua_settop(L, top);
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "EHANDLER");
    lua_setfield(L, -2, "code");
    lua_pushliteral(L, "error while normalising a handler error");
    lua_setfield(L, -2, "message");
  }
  lua_getfield(L, -1, "code");
  if (lua_type(L, -1) == LUA_TSTRING) {
    int c = ath_err_code(lua_tostring(L, -1));
    if (c != 0)
      code = c;
  }
  lua_pop(L, 1);
  int64_t retry_after;
  int final = error_is_final(wk, t, L, &retry_after);
  char err[256];
  wk->buf.len = 0;
  if (ath__json_encode(L, -1, "error", &wk->buf, err, sizeof(err)) != 0) {
    wk->buf.len = 0;
    const char* fallback = "{\"code\":\"EHANDLER\",\"message\":\"unserializable error\",\"retryable\":true}";
    ath__buf_append(&wk->buf, fallback, strlen(fallback));
  }
  lua_settop(L, top);
  free(t->error);
  t->error = malloc(wk->buf.len + 1);
  if (t->error != NULL) {
    memcpy(t->error, wk->buf.data, wk->buf.len + 1);
    t->error_len = wk->buf.len;
  } else {
    t->error_len = 0;
  }
  add_outcome(wk, t, ATH_FAILED, code);
  wk->outcomes[wk->noutcomes - 1].final = final;
  wk->outcomes[wk->noutcomes - 1].retry_after = retry_after;
}

/* [-0, +0, m] Fails the attempt with an engine error value. */
static void fail_with(ath_slot_t* s, int code, const char* message) {
  lua_State* L = s->wk->L;
  push_interrupt(L, code);
  if (message != NULL) {
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
  }
  fail_attempt(s, L, NULL);
}

static void stop_wait(ath_slot_t* s) {
  timer_stop(s, ATH_TIMER_WAIT); /* a sleep, or a result wait's timeout */
  if (s->wait == ATH_WAIT_RESULT)
    ath__world_unawait(s->wk->w, s->awaiting, s);
  if (s->wait == ATH_WAIT_COMMIT)
    ath__store_unawait(s->wk->w, s);
  if (s->wait == ATH_WAIT_HTTP && s->http != NULL) {
    ath__curlm_remove(s->wk->curlm, s->http); /* abandoned: the binding frees it */
    s->http->slot = NULL;
    s->http = NULL;
  }
  if (s->wait == ATH_WAIT_IO && s->io != NULL) {
    ath_io_wait_t* io = s->io; /* abandoned: its owner stops the I/O */
    s->io = NULL;
    io->slot = NULL;
    io->abort(io);
  }
  s->wait = ATH_WAIT_NONE;
}

/* [-0, +0, m] Gives the slot a fresh coroutine with the task hook. */
static void new_coroutine(ath_slot_t* s) {
  ath_worker_t* wk = s->wk;
  lua_State* L = wk->L;
  if (wk->nspare > 0) { /* an idle one a cached coroutine displaced */
    s->co_ref = wk->spare_refs[--wk->nspare];
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->co_ref);
    s->co = lua_tothread(L, -1);
    lua_pop(L, 1);
    return;
  }
  s->co = lua_newthread(L);
  hook_rest(s->co, 1);
  s->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Keeps the slot's idle coroutine (fresh, or finished and cleared) for
 * new_coroutine, as its slot takes a cached one. */
static void spare_coroutine(ath_slot_t* s) {
  ath_worker_t* wk = s->wk;
  if (wk->spare_refs != NULL && wk->nspare < wk->concurrency)
    wk->spare_refs[wk->nspare++] = s->co_ref;
  else
    luaL_unref(wk->L, LUA_REGISTRYINDEX, s->co_ref);
}

/* ------------------------------------------------- parked workflows */

/* Closes a cached coroutine (running its pending __close handlers) and
 * drops the entry. */
static void uncache(ath_worker_t* wk, ath_wfc_entry_t* e) {
  lua_State* L = wk->L;
#if LUA_VERSION_RELEASE_NUM >= 50406
  lua_closethread(e->co, L);
#else
  lua_resetthread(e->co);
#endif
  luaL_unref(L, LUA_REGISTRYINDEX, e->co_ref);
  ath_task_release(e->task);
  ath__wfc_entry_free(wk->wfc, e);
}

/* A full cache makes room by evicting its least recently parked coroutine
 * only when that one has waited this long: when more workflows are parked
 * at once than the cache holds, evicting the oldest would evict the next
 * ones to resume, every time (each a replay, plus the eviction); keeping
 * them and not caching the newcomer keeps the hit rate at the cache's
 * share of the workflows. */
#define WFC_MIN_AGE_NS 1000000000u

/* Closes the cached coroutines of workflows that ended meanwhile (a cancel,
 * a cascade, a run timeout while parked), among the least recently
 * parked: live workflows move back to the recent end each time they park
 * again, so ended ones sink to where this looks. */
static void sweep_ended(ath_worker_t* wk) {
  ath_task_t* ended[16];
  int n = 0;
  uv_mutex_lock(&wk->w->lock); /* status is guarded by it */
  const ath_wfc_entry_t* e = ath__wfc_lru(wk->wfc);
  for (int k = 0; e != NULL && k < 16; k++, e = e->newer)
    if (ATH_IS_TERMINAL(e->task->status))
      ended[n++] = e->task;
  uv_mutex_unlock(&wk->w->lock);
  for (int i = 0; i < n; i++)
    uncache(wk, ath__wfc_take(wk->wfc, ended[i]));
}

/* Moves the coroutine of the workflow segment that just parked in `s` into
 * the worker's cache: past the count, the least recently parked one is
 * evicted if it has waited WFC_MIN_AGE_NS, else this one is not kept;
 * above half the memory limit, the least recently parked ones are
 * evicted; every 16th park sweeps out the coroutines of ended workflows. Returns 0 when it is not kept (no cache, full, out of memory):
 * the caller closes it. */
static int cache_parked(ath_slot_t* s) {
  ath_worker_t* wk = s->wk;
  if (wk->wfc == NULL)
    return 0;
  if ((++wk->wfc_parks & 15) == 0)
    sweep_ended(wk);
  while (wk->mem_used > wk->mem_limit / 2 && ath__wfc_count(wk->wfc) > 0)
    uncache(wk, ath__wfc_take_lru(wk->wfc));
  uint64_t now = uv_hrtime();
  if (ath__wfc_full(wk->wfc)) {
    const ath_wfc_entry_t* old = ath__wfc_lru(wk->wfc);
    if (old == NULL || now - old->parked_ns < WFC_MIN_AGE_NS)
      return 0;
    uncache(wk, ath__wfc_take_lru(wk->wfc));
  }
  ath_wfc_entry_t* e = ath__wfc_entry_new(wk->wfc);
  if (e == NULL)
    return 0;
  ath_task_t* t = s->task;
  ath_task_retain(t);
  /* segs, attempt and status change only under the lock while no slot has
   * the task: stable while this one does */
  *e = (ath_wfc_entry_t){.task = t, .co = s->co, .co_ref = s->co_ref, .run = t->attempt,
                         .status = (int)t->status, .segs = t->wf->segs,
                         .parked_ns = now};
  ath__wfc_put(wk->wfc, e);
  return 1;
}

/* The cached coroutine of workflow t when it is current (nobody ran a
 * segment since it parked here, same run and state), taken out of the
 * cache; NULL otherwise (a stale one is closed). */
static ath_wfc_entry_t* cached_segment(ath_worker_t* wk, ath_task_t* t) {
  ath_wfc_entry_t* e = wk->wfc != NULL ? ath__wfc_take(wk->wfc, t) : NULL;
  if (e != NULL && (e->segs + 1 != t->wf->segs || e->run != t->attempt || e->status != (int)t->status)) {
    uncache(wk, e);
    e = NULL;
  }
  return e;
}

/* Closes every cached coroutine (the worker stops). */
static void uncache_all(ath_worker_t* wk) {
  if (wk->wfc == NULL)
    return;
  ath_wfc_entry_t* e;
  while ((e = ath__wfc_take_lru(wk->wfc)) != NULL)
    uncache(wk, e);
  ath__wfc_free(wk->wfc);
  wk->wfc = NULL;
  free(wk->spare_refs); /* the coroutines go with the state */
  wk->spare_refs = NULL;
  wk->nspare = 0;
}

/* Ends the attempt running in `s` with the coroutine's status `st`. */
static void finish_slot(ath_slot_t* s, int st, int nres) {
  ath_worker_t* wk = s->wk;
  lua_State* co = s->co;
  lua_State* L = wk->L;
  ath_task_t* t = s->task;
  if (atomic_load(&wk->lost)) {
    /* declared lost meanwhile: the task failed and moved on; what this
     * attempt produced is discarded, and the worker exits */
    timer_stop(s, ATH_TIMER_DEADLINE);
    drop_park(s);
    add_outcome(wk, t, ATH_FAILED, ATH_EWORKERLOST);
    hand_events(s, &wk->outcomes[wk->noutcomes - 1]); /* the exchange drops them */
    wk->outcomes[wk->noutcomes - 1].held = s->held; /* deferred: it never enters */
    wk->outcomes[wk->noutcomes - 1].held_evicted0 = s->held_evicted0;
    s->held = NULL;
    lua_settop(co, 0);
    luaL_unref(L, LUA_REGISTRYINDEX, s->co_ref);
    new_coroutine(s);
    s->task = NULL;
    s->wait = ATH_WAIT_NONE;
    s->awaiting = NULL;
    wk->free_slots[wk->nfree++] = (int)(s - wk->slots);
    return;
  }
  int cached = 0;
  int irq = atomic_load_explicit(&s->interrupt, memory_order_relaxed);
  if (irq == 0)
    irq = atomic_load_explicit(&wk->interrupt_all, memory_order_relaxed);
  if (irq == 0) /* a deadline that passed while the task was blocked in C */
    irq = expired(s, ath__mono(wk->w));
  if (irq == SCOPE_TIMEOUT)
    irq = 0; /* only a withRetry attempt's: its scope is gone */
  timer_stop(s, ATH_TIMER_DEADLINE);
  if (atomic_load_explicit(&t->cancel_ns, memory_order_relaxed) != 0) {
    /* a cancel was accepted: whatever the handler did, it is cancelled */
    add_outcome(wk, t, ATH_CANCELLED, ATH_ECANCELED);
  } else if (irq == ATH_ESHUTDOWN) {
    add_outcome(wk, t, ATH_PENDING, 0); /* back to the queue, not counted */
  } else if (irq != 0) {
    /* a deadline: the interrupting code wins */
    fail_with(s, irq == SCOPE_TIMEOUT ? ATH_ETIMEDOUT : irq, NULL);
  } else if (st == LUA_YIELD && s->wait == ATH_WAIT_PARK) {
    add_outcome(wk, t, ATH_RUNNING, 0);
    ath_outcome_t* o = &wk->outcomes[wk->noutcomes - 1];
    o->park_kind = s->park_kind;
    o->park_seq = s->park_seq;
    o->park_at = s->park_at;
    o->park_task = s->park_task;
    s->park_task = NULL;
    if (cache_parked(s)) {
      o->home = wk; /* the next segment resumes it here */
      cached = 1;
    }
  } else if (st == LUA_OK) {
    int base = lua_gettop(co) - nres + 1;
    if (nres >= 2 && lua_isnil(co, base) && !lua_isnil(co, base + 1)) {
      lua_pushvalue(co, base + 1);
      lua_xmove(co, L, 1);
      fail_attempt(s, L, NULL);
    } else {
      char err[256];
      if (nres == 0)
        lua_pushnil(co);
      else
        lua_pushvalue(co, base);
      wk->buf.len = 0;
      int rc = ath__json_encode(co, -1, "result", &wk->buf, err, sizeof(err));
      lua_pop(co, 1);
      char* copy = rc == 0 ? malloc(wk->buf.len + 1) : NULL;
      if (copy != NULL) {
        memcpy(copy, wk->buf.data, wk->buf.len + 1);
        t->result = copy;
        t->result_len = wk->buf.len;
        add_outcome(wk, t, ATH_COMPLETED, 0);
      } else {
        /* A result that cannot cross threads fails the attempt, not retried. */
        fail_with(s, rc == 0 ? ATH_ENOMEM : ATH_EINVAL,
                  rc == 0 ? "out of memory storing the result" : err);
        wk->outcomes[wk->noutcomes - 1].final = 1;
      }
    }
  } else if (st == LUA_ERRMEM) {
    fail_with(s, ATH_ENOMEM, "the task's worker state reached its memoryLimit");
    wk->outcomes[wk->noutcomes - 1].final = 1;
  } else {
    const char* msg = lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : NULL;
    luaL_traceback(L, co, msg, 0);
    lua_xmove(co, L, 1); /* error value above the traceback */
    const char* tb = lua_tostring(L, -2);
    fail_attempt(s, L, tb);
    lua_pop(L, 1); /* the traceback */
  }
  if (s->nrec > 0)
    hand_events(s, &wk->outcomes[wk->noutcomes - 1]);
  wk->outcomes[wk->noutcomes - 1].held = s->held;
  wk->outcomes[wk->noutcomes - 1].held_evicted0 = s->held_evicted0;
  wk->outcomes[wk->noutcomes - 1].started_mono = s->started_mono;
  ath_outcome_t* last = &wk->outcomes[wk->noutcomes - 1];
  last->ended_at = ath__wall(wk->w);
  if (last->status == ATH_COMPLETED && ath__task_parent(t) != NULL)
    last->done = ath__wf_done_new(t, last->ended_at); /* NULL: built under the lock */
  if (last->status == ATH_COMPLETED && t->wf != NULL)
    last->ended = ath__wf_ended_new(t, last->ended_at);
  s->held = NULL;
  if (cached) {
    new_coroutine(s); /* the parked one went to the cache */
  } else if (st == LUA_OK) {
    lua_settop(co, 0); /* the coroutine is reusable for the next task */
    hook_rest(co, 1); /* undo an interrupt's, or a kick's */
  } else {
    /* A coroutine that died of an error, or that the hook stopped, is
     * closed and replaced, not reused: after an error from the hook, Lua
     * leaves the thread's hooks disabled. Closing runs its pending __close
     * handlers, each interruptible by the hook (still due). */
    if (atomic_load_explicit(&s->interrupt, memory_order_relaxed) == 0 && irq != 0)
      atomic_store_explicit(&s->interrupt, irq, memory_order_relaxed);
    lua_sethook(co, task_hook, LUA_MASKCOUNT, HOOK_COUNT);
    wk->current = s;
#if LUA_VERSION_RELEASE_NUM >= 50406
    lua_closethread(co, L);
#else
    lua_resetthread(co);
#endif
    wk->current = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, s->co_ref);
    new_coroutine(s);
  }
  atomic_store_explicit(&s->interrupt, 0, memory_order_relaxed);
  drop_park(s);
  s->task = NULL;
  s->wait = ATH_WAIT_NONE;
  s->awaiting = NULL;
  wk->free_slots[wk->nfree++] = (int)(s - wk->slots);
}

static void resume_slot(ath_slot_t* s, int nargs) {
  ath_worker_t* wk = s->wk;
  int nres = 0;
  wk->current = s;
  /* published for the watchdog: a resume that lasts gets kicked */
  atomic_store_explicit(&wk->lua_runs, atomic_load_explicit(&wk->lua_runs, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  atomic_store_explicit(&wk->lua_co, s->co, memory_order_relaxed);
  wk->may_flush = 1;
  int st = ath__vm_resume(s->co, wk->L, nargs, &nres);
  wk->may_flush = 0;
  atomic_store_explicit(&wk->lua_co, NULL, memory_order_relaxed);
  wk->current = NULL;
  if (st == LUA_YIELD) {
    if (s->wait == ATH_WAIT_PARK) { /* a workflow segment ended: the slot is free */
      finish_slot(s, st, 0);
      return;
    }
    if (s->wait != ATH_WAIT_NONE)
      return; /* parked at an athena call: a timer or inbox resumes it */
    if (atomic_load_explicit(&s->interrupt, memory_order_relaxed) == 0) {
      /* A bare coroutine.yield() in a handler has nobody to resume it. */
      lua_settop(s->co, 0);
      lua_pushliteral(s->co, "coroutine.yield() called in a handler outside a coroutine of its own");
      st = LUA_ERRRUN;
    } /* else the hook stopped it: finish_slot fails it with the interrupt */
  }
  finish_slot(s, st, nres);
}

static void deadline_cb(ath_slot_t* s);

/* The earliest of the slot's deadlines (UINT64_MAX: none): what the hook
 * checks while the task runs. */
static uint64_t next_deadline(ath_slot_t* s) {
  uint64_t next = UINT64_MAX;
  for (int i = 0; i < 4; i++)
    if (s->deadline[i] && s->deadline[i] < next)
      next = s->deadline[i];
  s->next_deadline = next;
  return next;
}

/* Arms the slot's deadline timer for the earliest deadline. */
static void arm_deadline(ath_slot_t* s) {
  uint64_t next = next_deadline(s);
  if (next == UINT64_MAX) {
    timer_stop(s, ATH_TIMER_DEADLINE);
    return;
  }
  uint64_t now = ath__mono(s->wk->w);
  timer_start(s, ATH_TIMER_DEADLINE, next > now ? (next - now + 999999) / 1000000 : 0, deadline_cb);
}

/* A deadline passed while the task waited at a yield point. */
static void deadline_cb(ath_slot_t* s) {
  if (s->task == NULL)
    return;
  int code = expired(s, ath__mono(s->wk->w));
  if (code == 0) { /* a heartbeat moved it */
    arm_deadline(s);
    return;
  }
  atomic_store_explicit(&s->interrupt, code, memory_order_relaxed);
  if (s->wait != ATH_WAIT_NONE) {
    stop_wait(s);
    resume_slot(s, 0);
  }
}

/* Starts attempt `attempt` of t in a free slot. */
static void start_task(ath_worker_t* wk, ath_task_t* t, int attempt) {
  ath_slot_t* s = &wk->slots[wk->free_slots[--wk->nfree]];
  lua_State* co = s->co;
  const ath_activity_t* a = ath__task_limits(t);
  uint64_t now = ath__mono(s->wk->w);
  s->task = t;
  s->attempt = attempt;
  s->started_mono = now;
  /* a workflow's timeout limits its run, parked time included (§3) */
  s->deadline[0] = t->wf == NULL ? ath__after(now, a->timeout_ms)
                   : a->timeout_ms ? ath__after(t->start_mono, a->timeout_ms) : 0;
  s->deadline[1] = a->heartbeat_timeout_ms ? ath__after(now, a->heartbeat_timeout_ms) : 0;
  s->deadline[2] = s->deadline[3] = 0;
  if (a->schedule_to_close_ms) {
    int64_t left = t->scheduled_at + a->schedule_to_close_ms - ath__wall(wk->w);
    s->deadline[2] = ath__after(now, left > 0 ? left : 0);
  }
  /* While the task runs, its hook checks the deadlines (once the watchdog
   * sees it run for long, or it ends: finish_slot); the timer is armed only
   * if it stops at a yield point (most tasks end first, and a
   * timer armed and stopped per task costs two clock reads and two heap
   * operations on the loop). */
  next_deadline(s);
  ath_wfc_entry_t* e = t->wf != NULL ? cached_segment(wk, t) : NULL;
  if (e != NULL) {
    /* Sticky: its parked coroutine goes on, given only the events added
     * since it parked (no replay). park_nev was written under the lock
     * before this claim, and nothing changes it while a slot has t. */
    ath_wf_t* wf = t->wf;
    size_t n = wf->ntail;
    uint32_t total = wf->park_nev + wf->ntail;
    ath_wfev_t** evs = wf->tail; /* taken in the claim, when from its home list */
    ath_wf_outev_t out = wf->last_out; /* stable: written before the tail was taken */
    int has_out = wf->has_tail && wf->tail_out;
    if (!wf->has_tail)
      evs = ath__world_wf_events(wk->w, t, wf->park_nev, &n, &total);
    wf->tail = NULL;
    wf->ntail = 0;
    wf->has_tail = 0;
    if (evs != NULL || n == 0) {
      spare_coroutine(s); /* the slot's idle one */
      s->co = e->co;
      s->co_ref = e->co_ref;
      lua_pushlightuserdata(s->co, evs);
      lua_pushinteger(s->co, (lua_Integer)n);
      lua_pushinteger(s->co, (lua_Integer)total);
      lua_pushlightuserdata(s->co, has_out ? &out : NULL);
      ath_task_release(e->task);
      ath__wfc_entry_free(wk->wfc, e);
      resume_slot(s, 4); /* park_k decodes them */
      ath__wf_tail_release(wf, evs, n); /* t is still ours: the slot's or the table's */
      if (s->task == t && s->wait != ATH_WAIT_NONE)
        arm_deadline(s); /* it waits: its deadlines need the loop's timer now */
      return;
    }
    uncache(wk, e); /* out of memory: replay */
  } else if (t->wf != NULL && t->wf->has_tail) { /* not here after all: replay */
    ath__wf_tail_release(t->wf, t->wf->tail, t->wf->ntail);
    t->wf->tail = NULL;
    t->wf->ntail = 0;
    t->wf->has_tail = 0;
  }
  /* The heartbeat details a previous attempt left: only the thread running
   * the task writes them, so reading them here needs no lock. */
  lua_pushcfunction(co, task_main);
  lua_rawgeti(co, LUA_REGISTRYINDEX, wk->handlers[t->def - wk->w->defs]);
  lua_pushlightuserdata(co, t);
  const ath_task_x_t* x = ath__task_xr(t);
  lua_pushlightuserdata(co, x != NULL ? x->hb : NULL);
  lua_pushinteger(co, x != NULL ? (lua_Integer)x->hb_len : 0);
  resume_slot(s, 4);
  if (s->task == t && s->wait != ATH_WAIT_NONE)
    arm_deadline(s); /* it waits: its deadlines need the loop's timer now */
}

/* Starts tasks claimed ahead while a slot is free, within the window
 * after the exchange (their starts and outcomes are published at the
 * next one). A task taken back meanwhile (a cancel) is skipped: it never
 * runs. Returns how many it started. */
static int start_prefetched(ath_worker_t* wk) {
  ath_world_t* w = wk->w;
  int n = 0;
  while (wk->pre_next < wk->npre && wk->nfree > 0 &&
         atomic_load_explicit(&wk->interrupt_all, memory_order_relaxed) == 0 &&
         uv_hrtime() - wk->exchanged_ns < w->prefetch_window_ns) {
    ath_prefetch_t* e = &wk->pre[wk->pre_next++];
    e->started_at = ath__wall(w);
    e->start_mono = ath__mono(w);
    int ready = ATH_PRE_READY;
    if (!atomic_compare_exchange_strong_explicit(&e->state, &ready, ATH_PRE_STARTED,
                                                 memory_order_acq_rel, memory_order_acquire))
      continue;
    /* nobody changes its attempt while it is claimed ahead */
    start_task(wk, e->task, e->task->attempt + 1);
    n++;
  }
  return n;
}

/* Resumes slots waiting at a yield point that have an interrupt due:
 * shutdown, or a cancel accepted by another thread. */
static void interrupt_waits(ath_worker_t* wk) {
  for (int i = 0; i < wk->concurrency; i++) {
    ath_slot_t* s = &wk->slots[i];
    if (s->task == NULL || s->wait == ATH_WAIT_NONE || interrupt_code(wk, s) == 0)
      continue;
    stop_wait(s);
    resume_slot(s, 0);
  }
}

int ath__task_heartbeat(lua_State* L, const char* json, size_t len) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL) {
    ath_worker_t* wk = ath__worker_of(L);
    s = wk ? wk->current : NULL; /* a nested coroutine of the task */
    if (s == NULL)
      return -1;
  }
  int code = interrupt_code(s->wk, s);
  if (code == ATH_ECANCELED) {
    push_interrupt(L, code);
    return lua_error(L);
  }
  ath__world_heartbeat(s->wk->w, s->task, json, len);
  const ath_activity_t* a = ath__task_limits(s->task);
  if (a->heartbeat_timeout_ms) {
    s->deadline[1] = ath__after(ath__mono(s->wk->w), a->heartbeat_timeout_ms);
    arm_deadline(s);
  }
  return 0;
}

int ath__task_scope_push(lua_State* L, int64_t ms, uint64_t* prev) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL)
    return -1;
  *prev = s->deadline[3];
  uint64_t d = ath__after(ath__mono(s->wk->w), ms);
  s->deadline[3] = *prev && *prev < d ? *prev : d; /* never past an outer scope's */
  arm_deadline(s);
  return 0;
}

int ath__task_scope_pop(lua_State* L, uint64_t prev) {
  ath_slot_t* s = task_slot(L);
  if (s == NULL)
    return -1;
  int irq = atomic_load_explicit(&s->interrupt, memory_order_relaxed);
  /* fired, or passed while fn was blocked in C */
  int fired = irq == SCOPE_TIMEOUT ||
              (irq == 0 && s->deadline[3] && ath__mono(s->wk->w) >= s->deadline[3]);
  if (fired) {
    atomic_store_explicit(&s->interrupt, 0, memory_order_relaxed);
    hook_rest(L, 1); /* raising on every instruction no more */
  }
  s->deadline[3] = prev;
  arm_deadline(s);
  return fired;
}

int ath__task_cancelled(lua_State* L) {
  ath_worker_t* wk = ath__worker_of(L);
  ath_slot_t* s = wk ? wk->current : NULL;
  return s && s->task && atomic_load(&s->task->cancel_ns) != 0;
}

/* Closes what libcurl left open (poll handles of sockets it never
 * released) so the loop can end. */
static void leftover_closed(uv_handle_t* h) {
  free(h->data); /* the poll's socket context, which embeds it */
}

static void close_leftover(uv_handle_t* h, void* arg) {
  (void)arg;
  if (h->type == UV_POLL && !uv_is_closing(h))
    uv_close(h, leftover_closed);
}

static void close_handles(ath_worker_t* wk) {
  ath__curlm_close(wk->curlm);
  wk->curlm = NULL;
  uv_walk(&wk->loop, close_leftover, NULL);
  uv_close((uv_handle_t*)&wk->beat, NULL);
  for (int i = 0; i < wk->concurrency; i++) {
    timer_stop(&wk->slots[i], ATH_TIMER_WAIT);
    timer_stop(&wk->slots[i], ATH_TIMER_DEADLINE);
    uv_close((uv_handle_t*)&wk->slots[i].uvt[0], NULL);
    uv_close((uv_handle_t*)&wk->slots[i].uvt[1], NULL);
  }
  uv_close((uv_handle_t*)&wk->async, NULL);
}

/* A pass ends after this long even while it still makes progress, so that
 * the loop's timers (sleeps, result timeouts, deadlines of waiting slots),
 * curl and database I/O and the heartbeat timer run between passes: libuv's
 * own uv_run bounds its immediate callbacks the same way. */
#define PASS_BUDGET_NS 1000000u

/* One pass: publish, claim, run; repeated while it makes progress, for at
 * most PASS_BUDGET_NS. A pass cut short wakes the loop again, so the work
 * left continues after one turn of the loop. */
static void pump(ath_worker_t* wk) {
  ath_task_t* claimed[256];
  int stop = 0;
  uint64_t until = uv_hrtime() + PASS_BUDGET_NS;
  for (;;) {
    int max = wk->nfree < 256 ? wk->nfree : 256;
    int had = wk->noutcomes;
    ath_waiter_t* in;
    ath_vtimer_t* fired;
    int n = ath__world_exchange(wk->w, wk, claimed, max, &stop, &in, &fired);
    int delivered = 0;
    while (fired != NULL) { /* manual clock: timers that came due */
      ath_vtimer_t* next = fired->next;
      uv_mutex_lock(&wk->w->lock);
      int run = fired->fired;
      fired->fired = fired->in_fired = 0;
      uv_mutex_unlock(&wk->w->lock);
      if (run) {
        fired->slot->tcb[fired->which](fired->slot);
        delivered++;
      }
      fired = next;
    }
    while (in != NULL) {
      ath_waiter_t* next = in->next;
      ath_slot_t* s = in->slot;
      free(in);
      if (s->task != NULL && (s->wait == ATH_WAIT_RESULT || s->wait == ATH_WAIT_COMMIT)) {
        s->wait = ATH_WAIT_NONE;
        timer_stop(s, ATH_TIMER_WAIT); /* a result wait's timeout */
        resume_slot(s, 0);
        delivered++;
      }
      in = next;
    }
    for (int i = 0; i < n; i++)
      start_task(wk, claimed[i], claimed[i]->attempt);
    if (atomic_load_explicit(&wk->interrupt_all, memory_order_relaxed) ||
        atomic_exchange_explicit(&wk->poke, 0, memory_order_relaxed))
      interrupt_waits(wk);
    int ahead = start_prefetched(wk);
    if (n == 0 && had == 0 && delivered == 0 && wk->noutcomes == 0 && ahead == 0 && wk->npre == 0)
      break;
    if (uv_hrtime() >= until) {
      if (!stop)
        ath__worker_wake(wk); /* the rest after a turn of the loop */
      break;
    }
  }
  atomic_store_explicit(&wk->memory_kb, lua_gc(wk->L, LUA_GCCOUNT, 0), memory_order_relaxed);
  atomic_store_explicit(&wk->last_heartbeat, ath__now_ms(), memory_order_relaxed);
  if (stop)
    close_handles(wk);
}

static void async_cb(uv_async_t* h) {
  ath_worker_t* wk = h->data;
  atomic_store(&wk->pumping, 1);
  atomic_store(&wk->pending, 0);
  pump(wk);
  atomic_store(&wk->pumping, 0);
}

/* ------------------------------------------------------------- loading */

static int fail_start(ath_worker_t* wk, int rc, const char* fmt, const char* a) {
  wk->start_rc = rc;
  snprintf(wk->start_err, sizeof(wk->start_err), fmt, a);
  return rc;
}

/* [-0, +0, -] Sets package.path/cpath and loads the worker's code. */
static int load_code(ath_worker_t* wk) {
  lua_State* L = wk->L;
  const ath_world_config_t* cfg = &wk->w->cfg;
  lua_getglobal(L, "package");
  if (cfg->lua_path) {
    lua_pushstring(L, cfg->lua_path);
    lua_setfield(L, -2, "path");
  }
  if (cfg->lua_cpath) {
    lua_pushstring(L, cfg->lua_cpath);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
  if (cfg->modules && cfg->modules[0]) {
    for (const char* const* m = cfg->modules; *m; m++) {
      lua_getglobal(L, "require");
      lua_pushstring(L, *m);
      if (ath__vm_call(L, 1, 0) != LUA_OK) {
        fail_start(wk, ATH_EINVAL, "worker could not load its modules: %s",
                   lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
        lua_pop(L, 1);
        return wk->start_rc;
      }
    }
    return 0;
  }
  if (cfg->entry_script == NULL)
    return 0;
  /* Definition mode: run the entry script with the same arg table until
   * world:start() ends the phase (DESIGN §2). */
  int nargs = 0;
  lua_createtable(L, 0, 0);
  if (cfg->script_args) {
    for (const char* const* a = cfg->script_args; *a; a++, nargs++) {
      lua_pushstring(L, *a);
      lua_rawseti(L, -2, nargs);
    }
  }
  lua_setglobal(L, "arg");
  lua_State* co = lua_newthread(L);
  if (luaL_loadfile(co, cfg->entry_script) != LUA_OK) {
    fail_start(wk, ATH_EINVAL, "worker could not load the entry script: %s", lua_tostring(co, -1));
    lua_pop(L, 1);
    return wk->start_rc;
  }
  for (int i = 1; i < nargs; i++)
    lua_pushstring(co, cfg->script_args[i]);
  int nres;
  int st = ath__vm_resume(co, L, nargs > 0 ? nargs - 1 : 0, &nres);
  if (st != LUA_OK && st != LUA_YIELD &&
      !(lua_touserdata(co, -1) == &defs_end_key)) {
    const char* msg = lua_tostring(co, -1);
    luaL_traceback(L, co, msg ? msg : "(error object)", 0);
    fail_start(wk, ATH_EINVAL, "worker failed in the entry script: %s", lua_tostring(L, -1));
    lua_pop(L, 2);
    return wk->start_rc;
  }
  lua_pop(L, 1); /* the entry coroutine stays suspended; it is collected */
  return 0;
}

/* Keeps function `field` of module `name` in the registry (*ref). */
static int module_ref(ath_worker_t* wk, const char* name, const char* field, int* ref) {
  lua_State* L = wk->L;
  lua_getglobal(L, "require");
  lua_pushstring(L, name);
  if (ath__vm_call(L, 1, 1) != LUA_OK || lua_getfield(L, -1, field) != LUA_TFUNCTION) {
    lua_settop(L, 0);
    return fail_start(wk, ATH_EINVAL, "worker could not load %s", name);
  }
  *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return 0;
}

/* Binds every registered name to the handler this state defined. */
static int bind_handlers(ath_worker_t* wk) {
  lua_State* L = wk->L;
  ath_world_t* w = wk->w;
  wk->handlers = calloc(w->ndefs ? w->ndefs : 1, sizeof(int));
  if (wk->handlers == NULL)
    return fail_start(wk, ATH_ENOMEM, "%s", "out of memory");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &ath__defs_key);
  for (int i = 0; i < w->ndefs; i++) {
    if (lua_type(L, -1) != LUA_TTABLE ||
        lua_getfield(L, -1, w->defs[i].name) != LUA_TFUNCTION) {
      lua_settop(L, 0);
      return fail_start(wk, ATH_ENOTFOUND,
                        "activity %s is registered but the worker's code does not define it "
                        "(define it before world:start() in the entry script, or in a module listed in modules)",
                        w->defs[i].name);
    }
    wk->handlers[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_settop(L, 0);
  if (module_ref(wk, "athena.errors", "normalize", &wk->normalize_ref) != 0 ||
      module_ref(wk, "athena.workflow", "segment", &wk->workflow_ref) != 0)
    return wk->start_rc;
  return 0;
}

static int setup_slots(ath_worker_t* wk) {
  wk->slots = calloc(wk->concurrency, sizeof(ath_slot_t));
  wk->free_slots = calloc(wk->concurrency, sizeof(int));
  /* between two exchanges, the tasks in slots at the first and those
   * started from its claims ahead end */
  wk->outcomes = calloc(wk->concurrency + ATH_PREFETCH_MAX, sizeof(ath_outcome_t));
  if (!wk->slots || !wk->free_slots || !wk->outcomes)
    return fail_start(wk, ATH_ENOMEM, "%s", "out of memory");
  for (int i = 0; i < wk->concurrency; i++) {
    ath_slot_t* s = &wk->slots[i];
    s->wk = wk;
    new_coroutine(s);
    for (int k = 0; k < 2; k++) {
      uv_timer_init(&wk->loop, &s->uvt[k]);
      s->uvt[k].data = s;
      s->vt[k].slot = s;
      s->vt[k].which = k;
      s->vt[k].heap_idx = UINT32_MAX;
    }
    wk->free_slots[wk->nfree++] = wk->concurrency - 1 - i;
  }
  return 0;
}

/* The worker state's allocator: counts the heap and, while a task runs,
 * refuses growth past memoryLimit. Lua turns the refusal into a memory
 * error in that task (after an emergency collection); engine code outside
 * tasks is never refused, so it never meets an unprotected memory error. */
static void* limited_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  ath_worker_t* wk = ud;
  return ath__metered_alloc(&wk->mem_used, wk->current != NULL ? wk->mem_limit : SIZE_MAX, ptr, osize,
                            nsize);
}

void* ath__metered_alloc(size_t* used, size_t limit, void* ptr, size_t osize, size_t nsize) {
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    *used -= old;
    return NULL;
  }
  if (nsize > old && *used + (nsize - old) > limit)
    return NULL;
  void* p = realloc(ptr, nsize);
  if (p != NULL)
    *used = *used - old + nsize;
  return p;
}

static int panic(lua_State* L) {
  const char* msg = lua_tostring(L, -1);
  fprintf(stderr, "athena: worker: unprotected Lua error: %s\n", msg ? msg : "(error object)");
  return 0; /* abort() follows */
}

/* The worker's heartbeat from its loop (SEMANTICS §12.3). */
static void beat_cb(uv_timer_t* h) {
  ath_worker_t* wk = h->data;
  atomic_store_explicit(&wk->last_heartbeat, ath__now_ms(), memory_order_relaxed);
}

static int protected_open(lua_State* L) {
  ath__runtime_hooks()->open_state(L);
  hook_coroutines(L);
  return 0;
}

static void worker_main(void* arg) {
  ath_worker_t* wk = arg;
  ath_world_t* w = wk->w;
  ath__watch_add(w, wk);
  wk->mem_limit = w->cfg.memory_limit;
  lua_State* L = lua_newstate(limited_alloc, wk);
  wk->L = L;
  if (L != NULL) {
    lua_atpanic(L, panic);
    /* Generational collection: a task's garbage (its ctx, input, result,
     * a workflow step's events) dies young, while the handlers, the
     * modules and the parked workflows the cache keeps live long. A young
     * collection visits only what is new; measured, it takes about a
     * tenth off a workflow step's CPU (bench/workflows.lua). */
    lua_gc(L, LUA_GCGEN, 0, 0);
  }
  int ok = 0;
  if (L == NULL) {
    fail_start(wk, ATH_ENOMEM, "%s", "cannot create a Lua state");
  } else {
    *(ath_worker_t**)lua_getextraspace(L) = wk; /* copied into every thread */
    this_worker = wk;
    lua_pushlightuserdata(L, wk);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &worker_key);
    lua_pushcfunction(L, protected_open);
    if (ath__vm_call(L, 0, 0) != LUA_OK) {
      fail_start(wk, ATH_ENOMEM, "%s", "cannot open the Lua libraries");
    } else {
      wk->defining = 1;
      ok = load_code(wk) == 0 && bind_handlers(wk) == 0 && setup_slots(wk) == 0;
      wk->defining = 0;
      if (ok && w->cfg.workflow_cache > 0) { /* none (every segment replays) when out of memory */
        wk->wfc = ath__wfc_new(w->cfg.workflow_cache);
        wk->spare_refs = wk->wfc != NULL ? malloc((size_t)wk->concurrency * sizeof(int)) : NULL;
      }
    }
  }
  uv_mutex_lock(&w->lock);
  wk->state = ok ? ATH_WK_RUNNING : ATH_WK_STOPPED;
  uv_mutex_unlock(&w->lock);
  if (!ok) {
    uv_close((uv_handle_t*)&wk->async, NULL);
    uv_close((uv_handle_t*)&wk->beat, NULL);
    if (wk->slots)
      for (int i = 0; i < wk->concurrency; i++)
        if (wk->slots[i].co) {
          uv_close((uv_handle_t*)&wk->slots[i].uvt[0], NULL);
          uv_close((uv_handle_t*)&wk->slots[i].uvt[1], NULL);
        }
    uv_run(&wk->loop, UV_RUN_DEFAULT);
    if (L)
      lua_close(L);
    wk->L = NULL;
    ath__watch_remove(w, wk);
    atomic_store(&wk->exited, 1);
    if (!wk->no_waiter)
      uv_sem_post(&w->ready);
    return;
  }
  atomic_store(&wk->memory_kb, lua_gc(L, LUA_GCCOUNT, 0));
  uv_timer_start(&wk->beat, beat_cb, (uint64_t)w->cfg.heartbeat_interval_ms,
                 (uint64_t)w->cfg.heartbeat_interval_ms);
  if (!wk->no_waiter)
    uv_sem_post(&w->ready);
  atomic_store(&wk->pumping, 1);
  pump(wk);
  atomic_store(&wk->pumping, 0);
  uv_run(&wk->loop, UV_RUN_DEFAULT);
  uncache_all(wk);
  lua_close(L);
  wk->L = NULL;
  ath__buf_free(&wk->buf);
  uv_mutex_lock(&w->lock);
  wk->state = ATH_WK_STOPPED;
  ath__sub_unlisten(wk); /* no submitter wakes it any more (its loop closes) */
  uv_mutex_unlock(&w->lock);
  ath__watch_remove(w, wk);
  atomic_store(&wk->exited, 1); /* nothing of the world is touched after this */
}

int ath__worker_spawn(ath_world_t* w, ath_queue_t* q, int wait, ath_worker_t** out) {
  ath_worker_t* wk = calloc(1, sizeof(*wk));
  if (wk == NULL)
    return UV_ENOMEM;
  wk->w = w;
  wk->no_waiter = !wait;
  wk->queue = q;
  wk->concurrency = q->concurrency;
  wk->ahead = ATH_PREFETCH_MAX;
  /* an exchange publishes the starts of the tasks it claimed ahead before
   * their outcomes: they are all listed in between */
  wk->running_tasks = calloc(wk->concurrency + ATH_PREFETCH_MAX, sizeof(ath_task_t*));
  if (wk->running_tasks == NULL) {
    free(wk);
    return UV_ENOMEM;
  }
  wk->id = w->next_worker_id++;
  atomic_init(&wk->last_heartbeat, ath__now_ms());
  int rc = uv_loop_init(&wk->loop);
  if (rc != 0) {
    free(wk->running_tasks);
    free(wk);
    return rc;
  }
  uv_async_init(&wk->loop, &wk->async, async_cb);
  wk->async.data = wk;
  uv_timer_init(&wk->loop, &wk->beat);
  wk->beat.data = wk;
  rc = uv_thread_create(&wk->thread, worker_main, wk);
  if (rc != 0) {
    uv_close((uv_handle_t*)&wk->async, NULL);
    uv_close((uv_handle_t*)&wk->beat, NULL);
    uv_run(&wk->loop, UV_RUN_DEFAULT);
    uv_loop_close(&wk->loop);
    free(wk->running_tasks);
    free(wk);
    return rc;
  }
  *out = wk;
  return 0;
}

void ath__worker_wake(ath_worker_t* wk) {
  atomic_fetch_add_explicit(&wk->wakes, 1, memory_order_relaxed);
  atomic_store(&wk->pending, 1);
  uv_async_send(&wk->async);
}

void ath__worker_join(ath_worker_t* wk) {
  if (!wk->joined)
    uv_thread_join(&wk->thread);
  wk->joined = 1;
  /* Stopped, it is collected for no more wakes (ath__add_wake); one
   * collected before may still be on its way to the loop's async fd. */
  while (atomic_load_explicit(&wk->wakes_held, memory_order_acquire) != 0)
    uv_sleep(0);
  if (!wk->loop_closed)
    uv_loop_close(&wk->loop);
  wk->loop_closed = 1;
}

void ath__worker_free(ath_worker_t* wk) {
  if (wk == NULL)
    return;
  ath__worker_join(wk);
  for (int k = 0; k < wk->nlost_refs; k++)
    ath_task_release(wk->running_tasks[k]);
  for (int i = 0; wk->slots != NULL && i < wk->concurrency; i++)
    ath__wfev_release_all(wk->slots[i].rec, wk->slots[i].nrec);
  for (int i = 0; wk->outcomes != NULL && i < wk->concurrency + ATH_PREFETCH_MAX; i++)
    free(wk->outcomes[i].evs); /* empty: each exchange published them */
  free(wk->slots);
  free(wk->outcomes);
  free(wk->handlers);
  free(wk->free_slots);
  free(wk->running_tasks);
  free(wk);
}
