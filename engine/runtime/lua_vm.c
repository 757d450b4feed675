/* The engine's only protected calls into Lua: one message handler, one
 * resume. Modelled on lua.c's msghandler and luv's luv_cfpcall, except that
 * a failure is returned to the caller (it fails an attempt), never exit(). */
#include <lauxlib.h>
#include "internal.h"

/* Adds a traceback to string errors; keeps tables (and their `code`) as
 * they are so retry policies still see them. */
static int msghandler(lua_State* L) {
  if (lua_type(L, 1) == LUA_TSTRING) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
  }
  if (lua_type(L, 1) == LUA_TTABLE || lua_type(L, 1) == LUA_TLIGHTUSERDATA)
    return 1;
  if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
    return 1;
  lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  return 1;
}

int ath__vm_call(lua_State* L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs; /* the function's index */
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int st = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  return st;
}

void ath__vm_callk(lua_State* co, int nargs, int nresults, lua_KFunction k) {
  lua_callk(co, nargs, nresults, 0, k);
}

int ath__vm_resume(lua_State* co, lua_State* from, int nargs, int* nres) {
  return lua_resume(co, from, nargs, nres);
}

/* The host's hooks (ath_runtime_install): how new states are prepared. */
static _Atomic(const ath_runtime_hooks_t*) runtime_hooks;

void ath_runtime_install(const ath_runtime_hooks_t* h) {
  atomic_store(&runtime_hooks, h);
}

const ath_runtime_hooks_t* ath__runtime_hooks(void) {
  return atomic_load(&runtime_hooks);
}
