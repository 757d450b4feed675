/* world:serve{ gateway = ... }: reads the description athena.gwserve made
 * of the configuration into the C server's config (keys hashed here, so
 * clear keys never reach the engine). */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include "gw_server.h"
#include "http.h"
#include "lath.h"

static char* dupstr(lua_State* L, int idx) {
  size_t n;
  const char* s = lua_tolstring(L, idx, &n);
  return s ? ath__memdup(s, n) : NULL;
}

/* [-0, +0, m] field `k` of the table at t: a list of strings, or NULL. */
static char** strv(lua_State* L, int t, const char* k) {
  if (lua_getfield(L, t, k) != LUA_TTABLE) {
    lua_pop(L, 1);
    return NULL;
  }
  size_t n = lua_rawlen(L, -1);
  char** v = calloc(n + 1, sizeof(char*));
  for (size_t i = 0; v && i < n; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i + 1);
    v[i] = dupstr(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return v;
}

static lua_Integer int_field(lua_State* L, int t, const char* k, lua_Integer def) {
  lua_getfield(L, t, k);
  lua_Integer v = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : def;
  lua_pop(L, 1);
  return v;
}

static double num_field(lua_State* L, int t, const char* k, double def) {
  lua_getfield(L, t, k);
  double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : def;
  lua_pop(L, 1);
  return v;
}

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Reads the key list at index t (athena.gwserve's M.keys) into *out (n
 * entries; a one-entry array when empty). Returns 0 or nonzero when out
 * of memory (then what was read stays in *out for the caller to free). */
static int read_keys(lua_State* L, int t, ath_gws_key_t** out, int* nkeys) {
  int rc = 0;
  int n = (int)lua_rawlen(L, t);
  ath_gws_key_t* keys = calloc((size_t)(n ? n : 1), sizeof(*keys));
  *out = keys;
  *nkeys = keys ? n : 0;
  for (int i = 0; keys && i < n; i++) {
    ath_gws_key_t* k = &keys[i];
    lua_rawgeti(L, t, i + 1);
    int e = lua_gettop(L);
    lua_getfield(L, e, "name");
    k->name = dupstr(L, -1);
    lua_pop(L, 1);
    k->rights = (unsigned)int_field(L, e, "rights", 0);
    k->tables = strv(L, e, "tables");
    k->databases = strv(L, e, "databases");
    lua_getfield(L, e, "server");
    k->server = lua_toboolean(L, -1);
    lua_pop(L, 1);
    size_t len;
    if (lua_getfield(L, e, "key") == LUA_TSTRING) {
      const char* key = lua_tolstring(L, -1, &len);
      unsigned int hl = 0;
      rc |= EVP_Digest(key, len, k->hash, &hl, EVP_sha256(), NULL) != 1;
    } else if (lua_getfield(L, e, "sha256") == LUA_TSTRING) {
      const char* hex = lua_tolstring(L, -1, &len);
      for (size_t j = 0; j < 32 && 2 * j + 1 < len; j++)
        k->hash[j] = (unsigned char)(hexval(hex[2 * j]) << 4 | hexval(hex[2 * j + 1]));
      lua_pop(L, 1);
    }
    lua_settop(L, e - 1);
    rc |= k->name == NULL;
  }
  return rc || keys == NULL;
}

/* Reads normalized description d (absolute index) into c. Returns 0 or
 * ATH_ENOMEM. */
static int read_config(lua_State* L, int d, ath_gws_config_t* c) {
  memset(c, 0, sizeof(*c));
  int rc = 0;
  lua_getfield(L, d, "databases");
  c->ndbs = (int)lua_rawlen(L, -1);
  c->db_names = calloc((size_t)c->ndbs, sizeof(char*));
  c->db_urls = calloc((size_t)c->ndbs, sizeof(char*));
  for (int i = 0; c->db_names && c->db_urls && i < c->ndbs; i++) {
    lua_rawgeti(L, -1, i + 1);
    lua_getfield(L, -1, "name");
    c->db_names[i] = dupstr(L, -1);
    lua_getfield(L, -2, "url");
    c->db_urls[i] = dupstr(L, -1);
    rc |= !c->db_names[i] || !c->db_urls[i];
    lua_pop(L, 3);
  }
  lua_pop(L, 1);
  if (!c->db_names || !c->db_urls)
    return ATH_ENOMEM;

  lua_getfield(L, d, "keys");
  rc |= read_keys(L, lua_gettop(L), &c->keys, &c->nkeys);
  lua_pop(L, 1);
  if (c->keys == NULL)
    return ATH_ENOMEM;
  if (lua_getfield(L, d, "anonymous") == LUA_TNUMBER) {
    c->anonymous = 1;
    c->anon_rights = (unsigned)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);

  lua_getfield(L, d, "tables");
  c->ntables = (int)lua_rawlen(L, -1);
  c->tables = calloc((size_t)(c->ntables ? c->ntables : 1), sizeof(*c->tables));
  for (int i = 0; c->tables && i < c->ntables; i++) {
    ath_gws_table_t* t = &c->tables[i];
    lua_rawgeti(L, -1, i + 1);
    int e = lua_gettop(L);
    lua_getfield(L, e, "name");
    t->name = dupstr(L, -1);
    lua_pop(L, 1);
    t->ops = (unsigned)int_field(L, e, "ops", ATH_GWR_ALL);
    t->hidden = strv(L, e, "hidden");
    lua_getfield(L, e, "policy");
    t->policy = lua_toboolean(L, -1);
    lua_settop(L, e - 1);
    rc |= t->name == NULL;
  }
  lua_pop(L, 1);
  if (c->tables == NULL)
    return ATH_ENOMEM;
  lua_getfield(L, d, "policy");
  c->global_policy = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (lua_getfield(L, d, "configPath") == LUA_TSTRING)
    c->config_path = dupstr(L, -1);
  lua_pop(L, 1);

  ath__gw_limits_init(&c->limits);
  lua_getfield(L, d, "limits");
  int l = lua_gettop(L);
  c->limits.insert_rows = int_field(L, l, "insertRows", c->limits.insert_rows);
  c->limits.in_list = int_field(L, l, "inList", c->limits.in_list);
  c->limits.expr_filters = int_field(L, l, "expressionFilters", c->limits.expr_filters);
  c->limits.default_limit = int_field(L, l, "defaultLimit", c->limits.default_limit);
  c->limits.max_limit = int_field(L, l, "maxLimit", c->limits.max_limit);
  c->body_limit = (size_t)int_field(L, l, "body", 1024 * 1024);
  c->statement_timeout_ms = int_field(L, l, "statementTimeout", 5000);
  lua_pop(L, 1);
  c->cors_origins = strv(L, d, "origins");
  c->events = strv(L, d, "events");
  c->trusted_proxies = strv(L, d, "trustedProxies");
  lua_getfield(L, d, "prefix");
  c->prefix = dupstr(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, d, "rate");
  int r = lua_gettop(L);
  c->key_rate = num_field(L, r, "key", 100);
  c->key_burst = num_field(L, r, "keyBurst", 200);
  c->ip_rate = num_field(L, r, "ip", 50);
  c->ip_burst = num_field(L, r, "ipBurst", 100);
  c->auth_fail_per_min = num_field(L, r, "authFailures", 10);
  lua_pop(L, 1);
  c->threads = (int)int_field(L, d, "threads", 2);
  return rc || !c->prefix ? ATH_ENOMEM : 0;
}

int lath_gws_new(lua_State* L, int idx, ath_world_t* w, ath_gws_t** out) {
  idx = lua_absindex(L, idx);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "athena.gwserve");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "normalize");
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1); /* raises EINVAL for a bad configuration */
  ath_gws_config_t cfg;
  int rc = read_config(L, lua_gettop(L), &cfg);
  lua_pop(L, 2);
  if (rc != 0) {
    ath__gws_config_free(&cfg);
    return ath__raise(L, rc, "cannot read the gateway configuration");
  }
  char err[600];
  rc = ath__gws_new(w, &cfg, out, err, sizeof(err));
  if (rc != 0)
    return ath__raise(L, rc, "%s", err);
  return 0;
}

int lath_serve_auth(lua_State* L, int idx, ath_serve_opts_t* o) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE)
    return ath__raise(L, ATH_EINVAL, "invalid auth (a table {keys = {[key] = {rights = ...}}})");
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "keys") != 0)
      return ath__raise(L, ATH_EINVAL, "auth: unknown field %s", luaL_tolstring(L, -2, NULL));
    lua_pop(L, 1);
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "athena.gwserve");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "keys");
  lua_getfield(L, idx, "keys");
  lua_pushliteral(L, "auth.keys");
  lua_call(L, 2, 1); /* raises EINVAL for a bad key */
  ath_gws_key_t* keys = NULL;
  int n = 0;
  int rc = read_keys(L, lua_gettop(L), &keys, &n);
  lua_pop(L, 2);
  for (int i = 0; rc == 0 && i < n; i++)
    if (!(keys[i].rights & (ATH_GWR_OPS_READ | ATH_GWR_OPS_WRITE)) || keys[i].tables || keys[i].databases) {
      ath__gws_keys_free(keys, n);
      return ath__raise(L, ATH_EINVAL, "auth.keys: each key needs rights ops.read, ops.write or * "
                        "(and no tables or databases)");
    }
  if (rc != 0) {
    ath__gws_keys_free(keys, n);
    return ath__raise(L, ATH_ENOMEM, "cannot read auth");
  }
  o->keys = keys;
  o->nkeys = n;
  o->auth = 1;
  return 0;
}
