/* athena.http.request{method, url, headers, body, timeout}: an HTTP call
 * for connectors. Inside a task it yields on the worker's loop; elsewhere
 * it blocks the caller. Returns {status, headers, body} or nil, err with
 * err.code ETIMEDOUT, ECONNREFUSED, ECONNRESET, EAI_AGAIN, ETLS, EMSGSIZE,
 * EINVAL or EIO (network errors are retryable, per shouldRetryError). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "runtime.h"
#include "http.h"
#include "lath.h"

/* The request lives in a userdata so that a raise or an abandoned coroutine
 * frees it (its __gc). */
static int req_gc(lua_State* L) {
  ath_http_req_t* r = luaL_checkudata(L, 1, "athena.HttpRequest");
  if (r->slot == NULL && !r->in_multi) /* never while a worker loop owns it */
    ath__http_free(r);
  return 0;
}

/* [-0, +1|2, m] Pushes the outcome of a finished request. */
static int push_response(lua_State* L, ath_http_req_t* r) {
  const char* code = ath__http_error_code(r);
  if (code != NULL) {
    lua_pushnil(L);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushstring(L, ath__http_error_message(r));
    lua_setfield(L, -2, "message");
    lua_pushboolean(L, strcmp(code, "EINVAL") != 0 && strcmp(code, "EMSGSIZE") != 0);
    lua_setfield(L, -2, "retryable");
    lua_pushinteger(L, 0);
    lua_setfield(L, -2, "attempt");
    luaL_setmetatable(L, "athena.Error");
    return 2;
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, ath__http_status(r));
  lua_setfield(L, -2, "status");
  lua_newtable(L);
  void* it = NULL;
  const char *name, *value;
  while (ath__http_next_header(r, &it, &name, &value)) {
    luaL_Buffer b; /* header names in lower case, as HTTP/2 has them */
    luaL_buffinit(L, &b);
    for (const char* p = name; *p; p++)
      luaL_addchar(&b, (*p >= 'A' && *p <= 'Z') ? (char)(*p + 32) : *p);
    luaL_pushresult(&b);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated: joined, as HTTP allows */
      lua_pushfstring(L, "%s, %s", lua_tostring(L, -1), value);
      lua_remove(L, -2);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, value);
    }
    lua_rawset(L, -3);
  }
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
  lua_setfield(L, -2, "body");
  return 1;
}

static int request_k(lua_State* L, int status, lua_KContext ctx) {
  (void)status;
  ath_http_req_t* r = lua_touserdata(L, (int)ctx);
  int n = push_response(L, r);
  ath__http_free(r);
  return n;
}

static int http_request(lua_State* L) {
  if (ath__task_workflow(L) != NULL) /* SEMANTICS §9.1: workflow code does no I/O */
    return ath__raise(L, ATH_EINVAL, "athena.http.request: not allowed in workflow code");
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  static const char* const keys[] = {"method", "url", "headers", "body", "timeout", "cafile", NULL};
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    int ok = 0;
    for (int i = 0; keys[i] && lua_type(L, -2) == LUA_TSTRING; i++)
      ok |= strcmp(lua_tostring(L, -2), keys[i]) == 0;
    if (!ok)
      ath__raise(L, ATH_EINVAL, "unknown option %s", luaL_tolstring(L, -2, NULL));
    lua_pop(L, 1);
  }
  lua_getfield(L, 1, "url");
  if (lua_type(L, -1) != LUA_TSTRING)
    ath__raise(L, ATH_EINVAL, "invalid url (a string)");
  const char* url = lua_tostring(L, -1); /* 2 */
  lua_getfield(L, 1, "method");
  const char* method = lua_isnil(L, -1) ? "GET" : lua_tostring(L, -1); /* 3 */
  if (method == NULL || !*method || strspn(method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != strlen(method))
    ath__raise(L, ATH_EINVAL, "invalid method (an upper-case HTTP method)");
  int64_t timeout = 30000;
  if (lua_getfield(L, 1, "timeout") != LUA_TNIL) /* 4 */
    timeout = ath__checkduration(L, 4, "timeout");
  if (timeout == 0)
    ath__raise(L, ATH_EINVAL, "invalid timeout: 0 (must be > 0)");
  /* body: a string as is; a table as JSON */
  size_t blen = 0;
  const char* body = NULL;
  int json_body = 0;
  int bt = lua_getfield(L, 1, "body"); /* 5 */
  if (bt == LUA_TSTRING) {
    body = lua_tolstring(L, 5, &blen);
  } else if (bt == LUA_TTABLE) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "athena.core");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "encode");
    lua_pushvalue(L, 5);
    lua_pushliteral(L, "body");
    lua_call(L, 2, 1); /* raises EINVAL naming the path */
    lua_replace(L, 5);
    lua_pop(L, 1);
    body = lua_tolstring(L, 5, &blen);
    json_body = 1;
  } else if (bt != LUA_TNIL) {
    ath__raise(L, ATH_EINVAL, "invalid body (a string or a table)");
  }
  /* headers: {Name = "value"} as "Name: value" lines in a Lua table */
  lua_newtable(L); /* 6: the lines, anchored */
  int n = 0;
  if (lua_getfield(L, 1, "headers") == LUA_TTABLE) { /* 7 */
    lua_pushnil(L);
    while (lua_next(L, 7) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        ath__raise(L, ATH_EINVAL, "invalid headers (a table of strings)");
      const char* k = lua_tostring(L, -2);
      const char* v = lua_tostring(L, -1);
      if (!*k || strpbrk(k, ":;\r\n ") || strpbrk(v, "\r\n"))
        ath__raise(L, ATH_EINVAL, "invalid header %s", k);
      if (strcasecmp(k, "content-type") == 0)
        json_body = 0; /* the caller's Content-Type wins */
      /* libcurl sends "Name;" as an empty header ("Name: " would drop it) */
      if (*v)
        lua_pushfstring(L, "%s: %s", k, v);
      else
        lua_pushfstring(L, "%s;", k);
      lua_rawseti(L, 6, ++n);
      lua_pop(L, 1);
    }
  } else if (!lua_isnil(L, 7)) {
    ath__raise(L, ATH_EINVAL, "invalid headers (a table of strings)");
  }
  if (json_body) {
    lua_pushliteral(L, "Content-Type: application/json");
    lua_rawseti(L, 6, ++n);
  }
  const char** lines = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof(char*), 0); /* 8 */
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 6, i + 1);
    lines[i] = lua_tostring(L, -1); /* anchored by table 6 */
    lua_pop(L, 1);
  }
  lines[n] = NULL;
  ath_http_req_t* r = lua_newuserdatauv(L, sizeof(*r), 0); /* 9 */
  memset(r, 0, sizeof(*r));
  luaL_setmetatable(L, "athena.HttpRequest");
  char err[300];
  int rc = ath__http_prepare(r, method, url, lines, body, blen, timeout, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", rc == ATH_EINVAL ? err : "not enough memory");
  if (lua_getfield(L, 1, "cafile") != LUA_TNIL) { /* a private CA for https */
    if (lua_type(L, -1) != LUA_TSTRING)
      return ath__raise(L, ATH_EINVAL, "invalid cafile (a path)");
    ath__http_set_cafile(r, lua_tostring(L, -1));
  }
  lua_pop(L, 1);
  int box = lua_gettop(L);
  if (ath__task_http(L, r, request_k, box) < 0) /* not in a task: block */
    ath__http_perform(r);
  return request_k(L, LUA_OK, box);
}

int lath_open_http(lua_State* L) {
  static const luaL_Reg meta[] = {{"__gc", req_gc}, {NULL, NULL}};
  luaL_newmetatable(L, "athena.HttpRequest");
  luaL_setfuncs(L, meta, 0);
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, http_request);
  lua_setfield(L, -2, "request");
  return 1;
}
