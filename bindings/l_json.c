/* json.encode / json.decode for Lua code; see l_json.h. */
#include <lauxlib.h>
#include <lua.h>

#include "runtime.h"
#include "l_json.h"

#define BUF_META "athena.json.buf"
/* A scratch buffer that grew past this is freed after use rather than kept
 * for the life of the state. */
#define BUF_KEEP (64 * 1024)

static char buf_key; /* registry key of the state's scratch buffer */

/* __gc: frees the scratch buffer's memory. */
static int buf_gc(lua_State* L) {
  ath_buf_t* b = lua_touserdata(L, 1);
  if (b != NULL)
    ath__buf_free(b);
  return 0;
}

/* [-0, +0, m] Returns the state's scratch buffer, emptied. It lives in a
 * userdata so that no raise can leak it. No Lua code runs while it is in
 * use (the encoder runs none, and its bytes are copied out before any
 * allocation can start a GC step), so one per state is enough. */
static ath_buf_t* scratch(lua_State* L) {
  ath_buf_t* b;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &buf_key) == LUA_TUSERDATA) {
    b = lua_touserdata(L, -1);
  } else {
    lua_pop(L, 1);
    b = lua_newuserdatauv(L, sizeof *b, 0);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    if (luaL_newmetatable(L, BUF_META)) {
      lua_pushcfunction(L, buf_gc);
      lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &buf_key);
  }
  lua_pop(L, 1); /* the registry keeps it */
  b->len = 0;
  return b;
}

/* [-0, +0, v] Raises {code = <name of rc>, message = msg}. */
static int raise_error(lua_State* L, int rc, const char* msg) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, ath_err_name(rc));
  lua_setfield(L, -2, "code");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  return lua_error(L);
}

/* encode(v [, root]) -> string */
static int json_encode(lua_State* L) {
  const char* root = luaL_optstring(L, 2, "value");
  char err[512];
  ath_buf_t* b;
  int rc;
  luaL_checkany(L, 1);
  b = scratch(L);
  rc = ath__json_encode(L, 1, root, b, err, sizeof err);
  if (rc != 0)
    return raise_error(L, rc, err);
  lua_pushlstring(L, b->data, b->len);
  if (b->cap > BUF_KEEP)
    ath__buf_free(b);
  return 1;
}

/* decode(s [, {nulls = true}]) -> v | nil, err; with nulls, JSON null in
 * arrays and objects reads back as json.null instead of a hole. */
static int json_decode(lua_State* L) {
  size_t len;
  const char* s = luaL_checklstring(L, 1, &len);
  int keep = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "nulls");
    keep = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  if (ath__json_decode_nulls(L, s, len, keep) == 0)
    return 1;
  /* The message is on the top. */
  lua_pushnil(L);
  lua_createtable(L, 0, 2);
  lua_pushstring(L, ath_err_name(ATH_EINVAL));
  lua_setfield(L, -2, "code");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "message");
  return 2;
}

static const luaL_Reg json_funcs[] = {
  {"encode", json_encode},
  {"decode", json_decode},
  {NULL, NULL},
};

int lath_open_json(lua_State* L) {
  luaL_newlib(L, json_funcs);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null"); /* json.null: encodes as null */
  return 1;
}
