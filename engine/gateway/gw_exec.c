/* A gateway thread's side of a request (GATEWAY §3, §4, §6.7, §6.8, §7):
 * parse the body, compile it against the catalog, run the table's and the
 * global policy in the thread's Lua state, execute the plan in one
 * transaction on the thread's connection, and write the envelope. Also the
 * X-Publish-Event start and the health check. */
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "internal.h"
#include "gw_server.h"

#define POLICY_BUDGET_MS 1000 /* a policy that runs longer fails closed */
#define PLAN_CACHE 256        /* plans a gateway thread keeps by shape */
#define FILE_MOVED "the database file was deleted or moved since the server opened it"

/* ------------------------------------------------------------- envelope */

void ath__gwjob_error(ath_gwjob_t* job, int status, const char* code, const char* error,
                      const char* hint) {
  static const struct {
    int status;
    const char* message;
  } summary[] = {
    {400, "Bad request"},        {401, "Authentication required"}, {403, "Forbidden"},
    {404, "Not found"},          {405, "Method not allowed"},      {409, "Conflict"},
    {413, "Payload too large"},  {429, "Too many requests"},       {500, "Internal error"},
    {503, "Service unavailable"}, {504, "Timed out"},
  };
  const char* message = "Request failed";
  for (size_t i = 0; i < sizeof(summary) / sizeof(summary[0]); i++)
    if (summary[i].status == status)
      message = summary[i].message;
  ath_buf_t* b = &job->out;
  b->len = 0;
  job->out_off = 0;
  ath__buf_lit(b, "{\"status\":\"error\",\"message\":");
  ath__buf_json_str(b, message);
  ath__buf_lit(b, ",\"error\":");
  ath__buf_json_str(b, error && *error ? error : message);
  ath__buf_lit(b, ",\"code\":");
  ath__buf_json_str(b, code);
  if (hint != NULL && *hint) {
    ath__buf_lit(b, ",\"hint\":");
    ath__buf_json_str(b, hint);
  }
  ath__buf_lit(b, ",\"request_id\":");
  ath__buf_json_str(b, job->request_id);
  ath__buf_lit(b, "}");
  job->status = status;
}

/* ---------------------------------------------------------- value mapping */

#define MAX_SAFE_INT 9007199254740991LL /* 2^53 - 1 */

/* Appends the cell as JSON by GATEWAY §7. */
static void put_value(ath_buf_t* b, const ath_db_value_t* v, const ath_gw_column_t* col) {
  static const char hex[] = "0123456789abcdef";
  char tmp[48];
  ath_gw_kind_t kind = col ? col->kind : ATH_GW_KIND_OTHER;
  switch (v->type) {
    case ATH_DB_NULL:
      ath__buf_putlit(b, "null");
      return;
    case ATH_DB_BOOL:
      ath__buf_put(b, v->i ? "true" : "false", v->i ? 4 : 5);
      return;
    case ATH_DB_INT:
      if (kind == ATH_GW_KIND_BOOLEAN && (v->i == 0 || v->i == 1)) {
        ath__buf_put(b, v->i ? "true" : "false", v->i ? 4 : 5);
      } else { /* by hand: snprintf was a tenth of an answer's cost */
        int safe = v->i >= -MAX_SAFE_INT && v->i <= MAX_SAFE_INT;
        char* e = tmp + sizeof(tmp);
        char* p = e;
        if (!safe)
          *--p = '"';
        p = ath__fmt_i64(p, v->i);
        if (!safe)
          *--p = '"';
        ath__buf_put(b, p, (size_t)(e - p));
      }
      return;
    case ATH_DB_FLOAT:
      if (isnan(v->d))
        ath__buf_putlit(b, "\"NaN\"");
      else if (isinf(v->d))
        ath__buf_put(b, v->d > 0 ? "\"Infinity\"" : "\"-Infinity\"", v->d > 0 ? 10 : 11);
      else
        ath__buf_put(b, tmp, ath__json_fmt_float(tmp, sizeof(tmp), v->d));
      return;
    case ATH_DB_BLOB: {
      ath__buf_putlit(b, "\"\\\\x");
      for (size_t i = 0; i < v->len; i++) {
        unsigned char c = (unsigned char)v->s[i];
        char h[2] = {hex[c >> 4], hex[c & 15]};
        ath__buf_put(b, h, 2);
      }
      ath__buf_putlit(b, "\"");
      return;
    }
    case ATH_DB_JSON: {
      /* PostgreSQL's json is valid; SQLite's JSON column may hold anything */
      ath_gj_doc_t* doc = NULL;
      if (v->len > 0 && ath__gj_parse(v->s, v->len, &doc, NULL) == 0) {
        ath_gw_buf_t g = {0};
        ath__gj_write(&g, doc->root);
        if (!g.oom && g.data)
          ath__buf_put(b, g.data, g.len);
        else
          ath__json_put_text(b, v->s, v->len);
        ath__gw_buf_free(&g);
        ath__gj_free(doc);
      } else {
        ath__json_put_text(b, v->s, v->len);
      }
      return;
    }
    case ATH_DB_NUMERIC:
    case ATH_DB_TEXT:
    default:
      if (kind == ATH_GW_KIND_JSON && v->type == ATH_DB_TEXT) {
        ath_db_value_t j = *v;
        j.type = ATH_DB_JSON;
        put_value(b, &j, NULL);
        return;
      }
      ath__json_put_text(b, v->s ? v->s : "", v->len);
      return;
  }
}

/* Where a statement's rows go: the answer's `data` (per `cols` entry,
 * the value of the row_cols column it names, nulls dropped under
 * strip_nulls) and, for X-Publish-Event, whole rows (every row_cols
 * column, nulls kept). Written straight from the driver's row. */
typedef struct {
  const ath_gw_plan_t* p;
  ath_buf_t* data;           /* or NULL */
  ath_buf_t* full;           /* or NULL */
  int src[256];              /* cols[c]'s row column, or -1 */
  size_t ncols;
  ath_buf_t keys;            /* each cols[c] as `"name":`, escaped once */
  uint32_t key_at[257];      /* cols[c]'s in keys: [key_at[c], key_at[c + 1]) */
  int first, firstfull;
  int64_t nrows;
} sink_t;

static void sink_init(sink_t* k, const ath_gw_plan_t* p, ath_buf_t* data, ath_buf_t* full) {
  memset(k, 0, sizeof(*k));
  k->p = p;
  k->data = data;
  k->full = full;
  k->first = k->firstfull = 1;
  k->ncols = p->ncols < 256 ? p->ncols : 256;
  for (size_t c = 0; c < k->ncols; c++) {
    k->src[c] = -1;
    for (size_t r = 0; r < p->nrow_cols && k->src[c] < 0; r++)
      if (p->row_cols[r].column == p->cols[c].column)
        k->src[c] = (int)r;
    k->key_at[c] = (uint32_t)k->keys.len;
    ath__buf_json_str(&k->keys, p->cols[c].name);
    ath__buf_lit(&k->keys, ":");
  }
  k->key_at[k->ncols] = (uint32_t)k->keys.len;
}

static int sink_row(void* ud, const ath_db_value_t* row, int n) {
  sink_t* k = ud;
  const ath_gw_plan_t* p = k->p;
  static const ath_db_value_t null = {ATH_DB_NULL, 0, 0, NULL, 0};
  if (k->full != NULL) {
    ath_buf_t* b = k->full;
    ath__buf_put(b, k->firstfull ? "{" : ",{", k->firstfull ? 1 : 2);
    k->firstfull = 0;
    for (int c = 0; c < n && (size_t)c < p->nrow_cols; c++) {
      if (c > 0)
        ath__buf_putlit(b, ",");
      ath__buf_json_str(b, p->row_cols[c].name);
      ath__buf_putlit(b, ":");
      put_value(b, &row[c], p->row_cols[c].column);
    }
    ath__buf_putlit(b, "}");
  }
  if (k->data != NULL) {
    ath_buf_t* b = k->data;
    ath__buf_put(b, k->first ? "{" : ",{", k->first ? 1 : 2);
    k->first = 0;
    int any = 0;
    for (size_t c = 0; c < k->ncols; c++) {
      const ath_db_value_t* v = k->src[c] >= 0 && k->src[c] < n ? &row[k->src[c]] : &null;
      if (v->type == ATH_DB_NULL && p->strip_nulls)
        continue;
      if (any)
        ath__buf_putlit(b, ",");
      any = 1;
      if (k->keys.data != NULL) {
        ath__buf_put(b, k->keys.data + k->key_at[c], k->key_at[c + 1] - k->key_at[c]);
      } else { /* out of memory for them: one at a time */
        ath__buf_json_str(b, p->cols[c].name);
        ath__buf_putlit(b, ":");
      }
      put_value(b, v, p->cols[c].column);
    }
    ath__buf_putlit(b, "}");
    k->nrows++;
  }
  return 0;
}

/* ------------------------------------------------------------ connections */

static int due(void* ud) {
  ath_gwconn_t* c = ud;
  return c->deadline != 0 && ath__mono_ns() >= c->deadline;
}

/* Connection c to database i, opened on first use. */
static ath_db_t* conn(ath_gws_t* s, ath_gwconn_t* c, int i, ath_db_error_t* err) {
  if (c->db == NULL && ath__db_new(s->cfg.db_urls[i], &c->db, err) != 0)
    return NULL;
  ath_db_t* db = c->db;
  if (!ath__db_connected(db)) {
    if (ath__db_connect(db, err) != 0)
      return NULL;
    c->prepared = 0; /* a new session (a reconnect): set up again */
  }
  /* SQLite's statementTimeout: the handler belongs to the open connection
   * (a reconnect opens a new one), so it is set after connecting */
  ath__db_set_interrupt(db, due, c);
  if (!c->prepared) {
    char sql[200];
    if (ath__db_kind(db) == ATH_DB_SQLITE) {
      /* LIKE is case-sensitive on both backends (GATEWAY §3.1); reads come
       * from a 16 MiB page cache. No memory map: SQLite drops a
       * connection's whole map each time it finds that another connection
       * wrote, and with the writers on connections of their own that is
       * after every write (unmapping, faulting in again, TLB shoot-downs:
       * a mix of fetches and inserts served 20 % fewer requests with it, and
       * fetches alone gained nothing from it). Measured again with group
       * commit, a map on the reading connections only: 0.9 pread a mix
       * request instead of 14, but 1.5 page faults, and the first touch of
       * each page after a remap took 29 % of the server's samples on this
       * (paravirtualized) machine; no gain. The pages of a dropped cache
       * are copied from the process's one map of the file instead, which
       * no commit unmaps (db_sqlite_map.c) */
      snprintf(sql, sizeof(sql), "%s", "PRAGMA case_sensitive_like = ON; PRAGMA cache_size = -16384");
    } else {
      /* the session's limit, so that one statement needs no transaction */
      snprintf(sql, sizeof(sql), "SET statement_timeout = %lld", (long long)s->cfg.statement_timeout_ms);
    }
    ath_db_res_t* r;
    if (ath__db_exec(db, sql, NULL, 0, &r, err) != 0)
      return NULL;
    ath__db_res_free(r);
  }
  c->prepared = 1;
  return db;
}

static int simple(ath_db_t* db, const char* sql, ath_db_error_t* err) {
  ath_db_res_t* r;
  int rc = ath__db_exec(db, sql, NULL, 0, &r, err);
  if (rc == 0)
    ath__db_res_free(r);
  return rc;
}

/* The plan's parameters as driver values, in `small` when they fit. */
static ath_db_value_t* params_of(const ath_gw_stmt_t* st, ath_db_value_t* small, size_t nsmall) {
  ath_db_value_t* v = st->nparams <= nsmall ? small : calloc(st->nparams, sizeof(*v));
  if (v == NULL)
    return NULL;
  for (size_t i = 0; i < st->nparams; i++) {
    const ath_gw_param_t* p = &st->params[i];
    switch (p->type) {
      case ATH_GW_P_NULL: v[i].type = ATH_DB_NULL; break;
      case ATH_GW_P_BOOL: v[i].type = ATH_DB_BOOL; v[i].i = p->i; break;
      case ATH_GW_P_INT: v[i].type = ATH_DB_INT; v[i].i = p->i; break;
      case ATH_GW_P_REAL: v[i].type = ATH_DB_FLOAT; v[i].d = p->d; break;
      case ATH_GW_P_JSON: v[i].type = ATH_DB_TEXT; v[i].s = p->text; v[i].len = p->len; break;
      default: v[i].type = ATH_DB_TEXT; v[i].s = p->text; v[i].len = p->len; break;
    }
  }
  return v;
}

/* Runs st: into *out, or (out NULL) its rows into sink k and *changes. */
static int run_stmt(ath_db_t* db, const ath_gw_stmt_t* st, ath_db_res_t** out, sink_t* k, int64_t* changes,
                    ath_db_error_t* err) {
  ath_db_value_t small[32];
  ath_db_value_t* v = params_of(st, small, 32);
  if (v == NULL) {
    ath__db_seterr(err, ATH_ENOMEM, "", "out of memory", NULL, NULL);
    return ATH_ENOMEM;
  }
  int rc = out != NULL ? ath__db_exec(db, st->sql, v, (int)st->nparams, out, err)
                       : ath__db_exec_rows(db, st->sql, v, (int)st->nparams, sink_row, k, changes, err);
  if (v != small)
    free(v);
  return rc;
}

/* --------------------------------------------------------------- policies */

static const char* const OP_NAMES[] = {"fetch", "insert", "update", "delete"};

static void policy_hook(lua_State* L, lua_Debug* ar) {
  (void)ar;
  ath_gwt_t** tp = lua_getextraspace(L);
  if (ath__mono_ns() >= (*tp)->deadline)
    luaL_error(L, "the policy ran longer than %d ms", POLICY_BUDGET_MS);
}

#define POLICY_HEAP (64u << 20) /* a policy state's Lua heap: past it, allocations fail */

/* The policy state's allocator: a memory bomb in a policy fails that
 * request (ENOMEM raised in the policy: 500), not the process. */
static void* policy_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  ath_gwt_t* t = ud;
  return ath__metered_alloc(&t->heap, POLICY_HEAP, ptr, osize, nsize);
}

int ath__gwt_init(ath_gwt_t* t, char* err, size_t errlen) {
  ath_gws_t* s = t->s;
  t->policy_ref = t->tables_ref = LUA_NOREF;
  if (ath__runtime_hooks() == NULL) {
    snprintf(err, errlen, "%s", "no Lua runtime installed: call ath_runtime_install(ath_lua_runtime()) first");
    return ATH_EINVAL;
  }
  t->conns = calloc((size_t)s->cfg.ndbs, sizeof(*t->conns));
  t->idle = calloc((size_t)s->cfg.ndbs, sizeof(*t->idle));
  t->nmade = calloc(2 * (size_t)s->cfg.ndbs, sizeof(int));
  t->read_at = calloc((size_t)s->cfg.ndbs, sizeof(uint64_t));
  if (t->conns == NULL || t->idle == NULL || t->nmade == NULL || t->read_at == NULL) {
    snprintf(err, errlen, "%s", "out of memory");
    return ATH_ENOMEM;
  }
  t->nreads = t->nmade + s->cfg.ndbs;
  t->plans = ath__gwpc_new(PLAN_CACHE); /* NULL: every request compiles */
  /* connections now, while the files are the ones just introspected: a
   * file deleted later is then noticed (ath__db_file_moved) instead of
   * being created again, empty, by a first connection. One that fails
   * here is retried when a request needs it. */
  for (int i = 0; i < s->cfg.ndbs; i++) {
    ath_db_error_t e;
    conn(s, &t->conns[i], i, &e);
    /* SQLite's mutations run off the loop, one group at a time per
     * thread (c is the thread's turn), on the process's writer connection
     * (s->wconns), opened now by the first thread for the same reason */
    ath_gwconn_t* c;
    if (ath__db_url_kind(s->cfg.db_urls[i]) == ATH_DB_SQLITE && (c = calloc(1, sizeof(*c))) != NULL) {
      if (t->index == 0)
        conn(s, &s->wconns[i], i, &e);
      t->idle[i] = c;
      t->nmade[i] = 1;
    }
  }
  if (s->cfg.config_path == NULL || !(s->cfg.global_policy || s->cfg.ntables > 0))
    return 0;
  lua_State* L = t->L = lua_newstate(policy_alloc, t);
  if (L == NULL) {
    snprintf(err, errlen, "%s", "out of memory");
    return ATH_ENOMEM;
  }
  *(ath_gwt_t**)lua_getextraspace(L) = t;
  ath__runtime_hooks()->open_state(L);
  /* the configuration file again, in this state: its policy functions */
  if (luaL_loadfile(L, s->cfg.config_path) != LUA_OK || ath__vm_call(L, 0, 1) != LUA_OK ||
      !lua_istable(L, -1)) {
    snprintf(err, errlen, "gateway config %s did not load in a gateway thread: %s", s->cfg.config_path,
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "it returned no table");
    t->load_failed = 1;
    lua_settop(L, 0);
    return 0; /* policies then fail closed */
  }
  int cfg = lua_gettop(L);
  if (lua_getfield(L, cfg, "policy") == LUA_TFUNCTION)
    t->policy_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else
    lua_pop(L, 1);
  lua_newtable(L); /* configured table name -> policy */
  int map = lua_gettop(L);
  if (lua_getfield(L, cfg, "tables") == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, map + 1) != 0) { /* map+2: key, map+3: entry */
      /* entries are "name", {name = ..., policy = ...} or name = {...};
       * gwserve.lua validated them, a table without a policy is common */
      if (lua_istable(L, map + 3) && lua_getfield(L, map + 3, "policy") == LUA_TFUNCTION) {
        if (lua_getfield(L, map + 3, "name") != LUA_TSTRING) {
          lua_pop(L, 1);
          lua_pushvalue(L, map + 2); /* the map form: the key is the name */
        }
        if (lua_type(L, -1) == LUA_TSTRING) {
          lua_pushvalue(L, map + 4); /* the policy */
          lua_rawset(L, map);
        }
      }
      lua_settop(L, map + 2); /* the key, for lua_next */
    }
  }
  lua_settop(L, map);
  t->tables_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return 0;
}

void ath__gwt_close(ath_gwt_t* t) {
  if (t->L != NULL)
    lua_close(t->L);
  ath__gwpc_free(t->plans);
  for (int i = 0; t->conns && t->idle && i < t->s->cfg.ndbs; i++) {
    if (t->conns[i].db != NULL)
      ath__db_free(t->conns[i].db);
    for (ath_gwconn_t* c = t->idle[i]; c;) { /* every off-loop one is back by now */
      ath_gwconn_t* next = c->next;
      if (c->db != NULL)
        ath__db_free(c->db);
      free(c);
      c = next;
    }
  }
  free(t->conns);
  free(t->idle);
  free(t->nmade);
  free(t->read_at);
}

/* [-0, +1, m] A read-only view of table at idx (the policy's payload). */
static int readonly_newindex(lua_State* L) {
  return luaL_error(L, "the request payload is read-only");
}

static void push_readonly(lua_State* L, int idx) {
  idx = lua_absindex(L, idx);
  lua_newtable(L);
  lua_newtable(L);
  lua_pushvalue(L, idx);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, readonly_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushliteral(L, "read-only");
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
}

void ath__gwt_push_json(lua_State* L, const ath_gj_t* v) {
  luaL_checkstack(L, 3, "request payload");
  switch (v->type) {
    case ATH_GJ_NULL:
      lua_pushlightuserdata(L, NULL); /* athena.null */
      return;
    case ATH_GJ_BOOL:
      lua_pushboolean(L, v->boolean);
      return;
    case ATH_GJ_NUMBER: /* integers that fit, else floats: as the codec does */
      if (lua_stringtonumber(L, v->str) == 0)
        luaL_error(L, "the number %s does not convert", v->str);
      return;
    case ATH_GJ_STRING:
      lua_pushlstring(L, v->str, v->len);
      return;
    case ATH_GJ_ARRAY: {
      lua_Integer i = 0;
      lua_createtable(L, v->count < 1024 ? (int)v->count : 1024, 0);
      for (const ath_gj_t* it = v->first; it != NULL; it = it->next) {
        ath__gwt_push_json(L, it);
        lua_rawseti(L, -2, ++i);
      }
      return;
    }
    case ATH_GJ_OBJECT:
      lua_createtable(L, 0, v->count < 1024 ? (int)v->count : 1024);
      for (const ath_gj_t* it = v->first; it != NULL; it = it->next) {
        lua_pushlstring(L, it->key, it->klen);
        ath__gwt_push_json(L, it);
        lua_rawset(L, -3); /* in document order: the last duplicate wins */
      }
      return;
  }
}

/* [-0, +1, m] The policy's `req` (GATEWAY §6.7); `body` is the request's
 * parsed body, the very tree the compiler reads. */
static void push_req(lua_State* L, ath_gwjob_t* job, const ath_gj_t* body, const char* table, int upsert) {
  lua_createtable(L, 0, 12);
  if (job->key != NULL) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, job->key->name);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, job->key->server);
    lua_setfield(L, -2, "server");
  } else {
    lua_createtable(L, 0, 3);
    lua_pushliteral(L, "anonymous");
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "server");
  }
  lua_newtable(L);
  for (int op = 0, n = 0; op < 4; op++) {
    if (job->rights & ATH_GW_OP_BIT(op)) {
      lua_pushfstring(L, "gateway.%s", OP_NAMES[op]);
      lua_rawseti(L, -2, ++n);
    }
  }
  lua_setfield(L, -2, "rights");
  lua_setfield(L, -2, "key");
  lua_pushstring(L, table);
  lua_setfield(L, -2, "table");
  lua_pushstring(L, OP_NAMES[job->op]);
  lua_setfield(L, -2, "operation");
  lua_pushboolean(L, upsert);
  lua_setfield(L, -2, "upsert");
  static const char* const hint_names[3] = {"userId", "organizationId", "companyId"};
  int trusted = job->key != NULL && job->key->server;
  lua_newtable(L);
  for (int i = 0; i < 3; i++) {
    if (job->hint[i] == NULL)
      continue;
    lua_pushstring(L, job->hint[i]);
    lua_setfield(L, trusted ? -3 : -2, hint_names[i]);
  }
  lua_setfield(L, -2, "hints");
  ath__gwt_push_json(L, body);
  push_readonly(L, -1);
  lua_remove(L, -2);
  lua_setfield(L, -2, "payload");
  lua_pushstring(L, job->request_id);
  lua_setfield(L, -2, "requestId");
  lua_pushstring(L, job->ip);
  lua_setfield(L, -2, "ip");
}

/* What the policies said: extra conditions and forced values, as JSON. */
typedef struct {
  ath_buf_t conds; /* items of a JSON array, comma-joined */
  ath_buf_t set;   /* members of a JSON object, comma-joined */
} extras_t;

static void append_json_items(lua_State* L, int idx, ath_buf_t* to, int object) {
  ath_buf_t b = {0};
  char e[200];
  if (ath__json_encode(L, idx, object ? "set" : "conditions", &b, e, sizeof(e)) == 0 && b.len >= 2 &&
      b.data[0] == (object ? '{' : '[') && b.len > 2) {
    if (to->len > 0)
      ath__buf_lit(to, ",");
    ath__buf_append(to, b.data + 1, b.len - 2);
  }
  ath__buf_free(&b);
}

typedef struct {
  ath_gwjob_t* job;
  const ath_gj_t* body;
  const char* table;
  int upsert;
} req_args_t;

/* lua_CFunction: push_req() in protected mode (its argument: req_args_t). */
static int build_req(lua_State* L) {
  const req_args_t* a = lua_touserdata(L, 1);
  push_req(L, a->job, a->body, a->table, a->upsert);
  return 1;
}

/* Calls the policy at the top of L. Returns 0 (allowed, extras added), 403
 * (denied: reason in `why`) or 500 (it raised, yielded, ran too long or
 * answered something else: `why` says what). */
static int call_policy(ath_gwt_t* t, ath_gwjob_t* job, const ath_gj_t* body, const char* table, int upsert,
                       extras_t* x, char* why, size_t whylen) {
  lua_State* L = t->L;
  req_args_t a = {job, body, table, upsert};
  lua_pushcfunction(L, build_req);
  lua_pushlightuserdata(L, &a);
  if (ath__vm_call(L, 1, 1) != LUA_OK) { /* no input, no policy: fail closed */
    snprintf(why, whylen, "the policy's input could not be built: %s",
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "(an error value)");
    lua_settop(L, 0);
    return 500;
  }
  t->deadline = ath__after(ath__mono_ns(), POLICY_BUDGET_MS);
  lua_sethook(L, policy_hook, LUA_MASKCOUNT, 1000);
  int st = ath__vm_call(L, 1, 2);
  lua_sethook(L, NULL, 0, 0);
  t->deadline = 0;
  if (st != LUA_OK) {
    snprintf(why, whylen, "policy raised: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "(an error value)");
    lua_settop(L, 0);
    return 500;
  }
  int rc = 0;
  if (lua_type(L, -2) == LUA_TBOOLEAN) {
    if (!lua_toboolean(L, -2)) {
      snprintf(why, whylen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "denied");
      rc = 403;
    }
  } else if (lua_type(L, -2) == LUA_TTABLE) {
    lua_getfield(L, -2, "allow");
    int allow = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (!allow) {
      snprintf(why, whylen, "%s", "denied");
      rc = 403;
    } else {
      if (lua_getfield(L, -2, "conditions") == LUA_TTABLE)
        append_json_items(L, -1, &x->conds, 0);
      lua_pop(L, 1);
      if (lua_getfield(L, -2, "set") == LUA_TTABLE)
        append_json_items(L, -1, &x->set, 1);
      lua_pop(L, 1);
    }
  } else {
    snprintf(why, whylen, "policy returned %s (true, false or a table expected)", luaL_typename(L, -2));
    rc = 500;
  }
  lua_settop(L, 0);
  return rc;
}

/* Runs the global and the table's policies (both must allow). */
static int run_policies(ath_gwt_t* t, ath_gwjob_t* job, const ath_gj_t* body, const ath_gw_table_t* tbl,
                        const char* cfgname, int upsert, extras_t* x, char* why, size_t whylen) {
  ath_gws_t* s = t->s;
  int table_policy = 0;
  for (int i = 0; i < s->cfg.ntables; i++)
    if (strcmp(s->cfg.tables[i].name, cfgname) == 0)
      table_policy = s->cfg.tables[i].policy;
  if (!s->cfg.global_policy && !table_policy)
    return 0;
  if (t->L == NULL || t->load_failed) {
    snprintf(why, whylen, "%s", "the policies did not load");
    return 500;
  }
  const char* table = tbl->name;
  if (s->cfg.global_policy) {
    lua_rawgeti(t->L, LUA_REGISTRYINDEX, t->policy_ref);
    if (!lua_isfunction(t->L, -1)) {
      lua_settop(t->L, 0);
      snprintf(why, whylen, "%s", "the global policy is missing");
      return 500;
    }
    int rc = call_policy(t, job, body, table, upsert, x, why, whylen);
    if (rc != 0)
      return rc;
  }
  if (table_policy) {
    lua_rawgeti(t->L, LUA_REGISTRYINDEX, t->tables_ref);
    lua_getfield(t->L, -1, cfgname);
    lua_remove(t->L, -2);
    if (!lua_isfunction(t->L, -1)) {
      lua_settop(t->L, 0);
      snprintf(why, whylen, "the policy of %s is missing", cfgname);
      return 500;
    }
    return call_policy(t, job, body, table, upsert, x, why, whylen);
  }
  return 0;
}

/* ------------------------------------------------------------- executing */

static void log_failure(ath_gws_t* s, ath_gwjob_t* job, const char* table, int status,
                        const ath_db_error_t* e, const char* sql, const char* why) {
  ath_log_field_t f[9];
  size_t n = 0;
  f[n++] = (ath_log_field_t)ATH_LOG_FSTR("request_id", job->request_id);
  f[n++] = (ath_log_field_t)ATH_LOG_FSTR("key", job->key ? job->key->name : "anonymous");
  f[n++] = (ath_log_field_t)ATH_LOG_FSTR("database", job->db == 0 ? "default" : s->cfg.db_names[job->db]);
  f[n++] = (ath_log_field_t)ATH_LOG_FSTR("table", table ? table : "");
  f[n++] = (ath_log_field_t)ATH_LOG_FSTR("operation", OP_NAMES[job->op]);
  f[n++] = (ath_log_field_t)ATH_LOG_FINT("status", status);
  if (e != NULL)
    f[n++] = (ath_log_field_t)ATH_LOG_FSTR("driver", e->message);
  if (sql != NULL)
    f[n++] = (ath_log_field_t)ATH_LOG_FSTR("sql", sql);
  if (why != NULL)
    f[n++] = (ath_log_field_t)ATH_LOG_FSTR("reason", why);
  ath__logf(s->w, status >= 500 ? ATH_LOG_ERROR : ATH_LOG_WARN, f, n, "gateway request failed");
}

/* A driver failure as the answer of GATEWAY §6.8 (no driver text). */
static void db_failure(ath_gwjob_t* job, const ath_db_error_t* e) {
  const char* code = ath__db_err_gateway(e->code);
  int status = 500;
  const char* sentence = "the database could not run the request";
  if (strcmp(code, "unique_violation") == 0) {
    status = 409;
    sentence = "a row with the same unique value already exists";
  } else if (strcmp(code, "foreign_key_violation") == 0) {
    status = 409;
    sentence = "a referenced row does not exist, or the row is still referenced";
  } else if (strcmp(code, "not_null_violation") == 0) {
    status = 400;
    sentence = "a required column has no value";
  } else if (strcmp(code, "check_violation") == 0) {
    status = 400;
    sentence = "a value breaks a check constraint";
  } else if (strcmp(code, "invalid_value") == 0) {
    status = 400;
    sentence = "a value does not fit its column";
  } else if (strcmp(code, "statement_timeout") == 0) {
    status = 504;
    sentence = "the statement ran longer than the statement timeout";
  } else if (strcmp(code, "database_unavailable") == 0) {
    status = 503;
    sentence = "the database is unavailable";
  } else if (strcmp(code, "disk_full") == 0) {
    status = 503; /* nothing was written: the statement rolled back whole */
    sentence = "the database's disk is full";
  } else if (strcmp(code, "database_io_error") == 0) {
    status = 503;
    sentence = "the database could not read or write its disk";
  } else {
    code = "internal_error";
  }
  ath__gwjob_error(job, status, code, sentence, NULL);
}

static void start_event(ath_gws_t* s, ath_gwjob_t* job, const char* table, int upsert, ath_buf_t* rows) {
  if (s->cfg.events != NULL) {
    int listed = 0;
    for (char** e = s->cfg.events; *e; e++)
      listed |= strcmp(*e, job->event) == 0;
    if (!listed) {
      ath_log_field_t f[2] = {ATH_LOG_FSTR("request_id", job->request_id), ATH_LOG_FSTR("event", job->event)};
      ath__logf(s->w, ATH_LOG_WARN, f, 2, "X-Publish-Event names an event outside the events list");
      return;
    }
  }
  ath_buf_t in = {0};
  ath__buf_lit(&in, "{\"table\":");
  ath__buf_json_str(&in, table);
  ath__buf_lit(&in, ",\"operation\":");
  ath__buf_json_str(&in, upsert ? "upsert" : OP_NAMES[job->op]);
  ath__buf_lit(&in, ",\"rows\":[");
  if (rows->data)
    ath__buf_append(&in, rows->data, rows->len);
  ath__buf_lit(&in, "]}");
  if (in.data == NULL)
    return;
  char* payload = in.data;
  size_t len = in.len;
  ath_task_t* task;
  char err[200] = "";
  int rc = ath_world_execute(s->w, job->event, 1, &payload, &len, NULL, NULL, &task, err, sizeof(err));
  if (rc != 0) {
    ath_log_field_t f[3] = {ATH_LOG_FSTR("request_id", job->request_id), ATH_LOG_FSTR("event", job->event),
                            ATH_LOG_FSTR("error", err)};
    ath__logf(s->w, ATH_LOG_WARN, f, 3, "X-Publish-Event: nothing started");
    return;
  }
  snprintf(job->event_id, sizeof(job->event_id), "%s", ath_task_id(task));
  ath_task_release(task);
}

/* X-Publish-Event needs the rows as stored, whatever `columns` asked. */
static int full_rows_of(const ath_gwjob_t* job) {
  return job->event != NULL && job->op != ATH_GW_FETCH;
}

/* Compiles with the policies' extras; 0 or the plan's error answered. */
static int compile(ath_gwt_t* t, ath_gwjob_t* job, ath_gws_cat_t* cat, const ath_gj_t* body,
                   extras_t* x, ath_gw_plan_t* plan) {
  int full_rows = full_rows_of(job);
  ath_gw_request_t rq;
  memset(&rq, 0, sizeof(rq));
  rq.catalog = &cat->cat;
  rq.limits = &t->s->cfg.limits;
  rq.dialect = cat->dialect;
  rq.op = job->op;
  rq.body = body;
  rq.strip_nulls_header = job->strip_header;
  rq.full_rows = full_rows;
  ath_gj_doc_t* cdoc = NULL;
  ath_gj_doc_t* sdoc = NULL;
  int rc = 0;
  if (x != NULL && x->conds.len > 0) {
    ath_buf_t j = {0};
    ath__buf_lit(&j, "[");
    ath__buf_append(&j, x->conds.data, x->conds.len);
    ath__buf_lit(&j, "]");
    rc = j.data ? ath__gj_parse(j.data, j.len, &cdoc, NULL) : ATH_ENOMEM;
    ath__buf_free(&j);
    rq.policy_conditions = cdoc ? cdoc->root : NULL;
  }
  if (rc == 0 && x != NULL && x->set.len > 0) {
    ath_buf_t j = {0};
    ath__buf_lit(&j, "{");
    ath__buf_append(&j, x->set.data, x->set.len);
    ath__buf_lit(&j, "}");
    rc = j.data ? ath__gj_parse(j.data, j.len, &sdoc, NULL) : ATH_ENOMEM;
    ath__buf_free(&j);
    rq.policy_set = sdoc ? sdoc->root : NULL;
  }
  if (rc != 0) {
    ath__gj_free(cdoc);
    ath__gj_free(sdoc);
    ath__gwjob_error(job, 500, "internal_error", "the policy's conditions could not be used", NULL);
    return -1;
  }
  rc = ath__gw_compile(&rq, plan);
  ath__gj_free(cdoc);
  ath__gj_free(sdoc);
  if (rc != 0) {
    ath__gwjob_error(job, plan->status ? plan->status : 500, plan->code ? plan->code : "internal_error",
                     plan->error, plan->hint);
    return -1;
  }
  return 0;
}

/* The configured entry naming table tbl. */
static const char* config_name(const ath_gws_t* s, const ath_gw_table_t* tbl, ath_gw_dialect_t d) {
  for (int i = 0; i < s->cfg.ntables; i++)
    if (ath__gws_names(tbl, s->cfg.tables[i].name, d))
      return s->cfg.tables[i].name;
  return tbl->name;
}

static int key_allows_table(const ath_gwjob_t* job, const char* cfgname, const ath_gw_table_t* tbl) {
  if (job->key == NULL || job->key->tables == NULL)
    return 1;
  for (char** p = job->key->tables; *p; p++)
    if (strcmp(*p, cfgname) == 0 || strcmp(*p, tbl->name) == 0)
      return 1;
  return 0;
}

/* A request between its two halves: the plan (its compile, with the
 * policies' extras, or a cached plan with its values bound) and what it
 * points into. */
typedef struct {
  ath_gj_doc_t* doc;
  ath_gw_plan_t plan;
  int compiled;              /* plan is to be freed */
  ath_gwpc_t* pc;            /* the thread's plan cache, when entry is set */
  ath_gwpe_t* entry;         /* the cached plan that plan binds */
  void* bound;               /* plan's statements when bound */
  extras_t x;
} prep_t;

static void plan_drop(prep_t* p) {
  if (p->compiled)
    ath__gw_plan_free(&p->plan);
  p->compiled = 0;
  free(p->bound);
  p->bound = NULL;
  if (p->entry != NULL)
    ath__gwpc_release(p->pc, p->entry);
  p->entry = NULL;
}

static void prep_free(prep_t* p) {
  ath__buf_free(&p->x.conds);
  ath__buf_free(&p->x.set);
  plan_drop(p);
  ath__gj_free(p->doc);
}

/* The request's plan into p: the thread's cached plan of its shape with
 * its values bound, else compiled (and then kept for the next request of
 * the shape). 0, or -1 with the compile's error answered. */
static int plan_for(ath_gwt_t* t, ath_gwjob_t* job, ath_gws_cat_t* cat, const ath_gj_t* body, extras_t* x,
                    prep_t* p) {
  ath_gwpc_t* pc = t->plans;
  if (pc != NULL) {
    ath_gwpc_key_t k = {cat,
                        cat->dialect,
                        job->op,
                        job->db,
                        job->strip_header,
                        full_rows_of(job),
                        x != NULL ? x->conds.data : NULL,
                        x != NULL ? x->conds.len : 0,
                        x != NULL ? x->set.data : NULL,
                        x != NULL ? x->set.len : 0};
    ath__gwpc_shape(pc, &k, body);
    p->pc = pc;
    if ((p->entry = ath__gwpc_get(pc, &p->plan, &p->bound)) != NULL)
      return 0;
  }
  p->compiled = 1;
  if (compile(t, job, cat, body, x, &p->plan) != 0)
    return -1;
  if (pc != NULL && (p->entry = ath__gwpc_put(pc, &p->plan, &p->bound)) != NULL)
    p->compiled = 0; /* the cache's now */
  return 0;
}

/* The first half, on the request's gateway thread: the body's one parse,
 * the compile, the key's table rights and the policies (the thread's Lua
 * state). 0 with p ready to execute, or -1 with the answer in job. */
static int prepare(ath_gwt_t* t, ath_gwjob_t* job, prep_t* p) {
  ath_gws_t* s = t->s;
  ath_gw_plan_t perr;
  memset(p, 0, sizeof(*p));
  if (ath__gw_parse_body(job->body, job->body_len, &p->doc, &perr) != 0) {
    ath__gwjob_error(job, perr.status ? perr.status : 400, perr.code ? perr.code : "invalid_json", perr.error,
                     perr.hint);
    ath__gw_plan_free(&perr);
    return -1;
  }
  /* a refresh swaps the catalog, then counts: cached plans name the
   * catalog they were compiled against, and the count empties the cache */
  unsigned gen = __atomic_load_n(&s->cat_gen, __ATOMIC_ACQUIRE);
  if (t->plans != NULL && gen != t->plans_gen) {
    ath__gwpc_clear(t->plans);
    t->plans_gen = gen;
  }
  ath_gws_cat_t* cat = __atomic_load_n(&s->cats[job->db], __ATOMIC_ACQUIRE);
  ath_gj_doc_t* doc = p->doc;
  if (plan_for(t, job, cat, doc->root, NULL, p) != 0)
    return -1;
  ath_gw_plan_t plan = p->plan; /* read-only view below; p->plan stays the owner */
  const char* table = plan.table->name;
  const char* cfgname = config_name(s, plan.table, cat->dialect);
  if (!key_allows_table(job, cfgname, plan.table) ||
      (plan.upsert_may_update && !(job->rights & ATH_GW_OP_BIT(ATH_GW_UPDATE)))) {
    ath__gwjob_error(job, 403, "forbidden",
                     plan.upsert_may_update ? "this key may not update rows (the upsert may update)"
                                            : "this key may not use this table",
                     NULL);
    return -1;
  }
  char why[300];
  int prc = run_policies(t, job, doc->root, plan.table, cfgname, plan.upsert, &p->x, why, sizeof(why));
  if (prc == 403) {
    log_failure(s, job, table, 403, NULL, NULL, why);
    ath__gwjob_error(job, 403, "policy_denied", "the table's policy refused the request", NULL);
    return -1;
  }
  if (prc != 0) {
    log_failure(s, job, table, 500, NULL, NULL, why);
    ath__gwjob_error(job, 500, "internal_error", "the request could not be authorized", NULL);
    return -1;
  }
  if (p->x.conds.len > 0 || p->x.set.len > 0) {
    plan_drop(p);
    if (plan_for(t, job, cat, doc->root, &p->x, p) != 0)
      return -1;
  }
  return 0;
}

/* The answer is written where the rows come in: straight into job->out,
 * after room for its head (written once the count is known, right-aligned:
 * the answer starts at out_off). */
enum { HEAD_ROOM = 128 };

/* Readies job->out and sink k for the plan's rows (and, when rows is not
 * NULL, whole rows for X-Publish-Event). */
static void answer_start(ath_gwjob_t* job, const ath_gw_plan_t* plan, sink_t* k, ath_buf_t* rows) {
  ath_buf_t* data = &job->out;
  data->len = 0;
  char room[HEAD_ROOM];
  memset(room, ' ', sizeof(room));
  ath__buf_append(data, room, sizeof(room));
  sink_init(k, plan, plan->data_rows && !plan->head ? data : NULL, rows);
}

/* Ends the answer once the statements ran (rc, e and failed_sql: how):
 * the envelope (GATEWAY §4) around the rows in job->out, or the error.
 * Frees what k and rows hold; starts the X-Publish-Event task. */
static void answer_end(ath_gws_t* s, ath_gwjob_t* job, const ath_gw_plan_t* plan, sink_t* k, int rc,
                       const ath_db_error_t* e, const char* failed_sql, int64_t changes, int64_t count,
                       ath_buf_t* rows) {
  const char* table = plan->table->name;
  ath__buf_free(&k->keys);
  if (rc != 0) {
    db_failure(job, e);
    log_failure(s, job, table, job->status, e, failed_sql, NULL); /* the status sent */
    if (rows != NULL)
      ath__buf_free(rows);
    return;
  }
  static const char* const verbs[] = {"Fetched ", "Inserted ", "Updated ", "Deleted "};
  int64_t affected = changes;
  /* by hand: snprintf was a tenth of what a fetch spends outside SQLite */
  static const char open[] = "{\"status\":\"success\",\"message\":\"", rows_at[] = " rows\",\"data\":[";
  char head[HEAD_ROOM], num[24];
  const char* v = verbs[job->op];
  char* digits = ath__fmt_i64(num + sizeof(num),
                              job->op == ATH_GW_FETCH ? (plan->head ? 0 : k->nrows) : affected);
  size_t vlen = strlen(v), dlen = (size_t)(num + sizeof(num) - digits);
  size_t n = sizeof(open) - 1 + vlen + dlen + sizeof(rows_at) - 1; /* < 80: fits HEAD_ROOM */
  memcpy(head, open, sizeof(open) - 1);
  memcpy(head + sizeof(open) - 1, v, vlen);
  memcpy(head + sizeof(open) - 1 + vlen, digits, dlen);
  memcpy(head + n - (sizeof(rows_at) - 1), rows_at, sizeof(rows_at) - 1);
  ath_buf_t* b = &job->out;
  if (b->data == NULL) {
    ath__gwjob_error(job, 500, "internal_error", "out of memory", NULL);
    if (rows != NULL)
      ath__buf_free(rows);
    return;
  }
  job->out_off = HEAD_ROOM - n;
  memcpy(b->data + job->out_off, head, n);
  ath__buf_putlit(b, "],\"count\":");
  if (job->op == ATH_GW_FETCH && count < 0) {
    ath__buf_putlit(b, "null}");
  } else {
    ath__buf_i64(b, job->op == ATH_GW_FETCH ? count : affected);
    if (job->op != ATH_GW_FETCH) {
      ath__buf_putlit(b, ",\"affected_rows\":");
      ath__buf_i64(b, affected);
    }
    ath__buf_putlit(b, "}");
  }
  job->status = 200;
  if (plan->limit_lowered)
    job->limit_header = plan->limit;
  if (rows != NULL) {
    start_event(s, job, table, plan->upsert, rows);
    ath__buf_free(rows);
  }
}

/* One request's statements in a transaction (execute_group): its plan,
 * the sink its rows go to, and how it went. */
typedef struct {
  ath_gwjob_t* job;
  ath_gw_plan_t plan;        /* read-only copy: the request's prep_t owns it */
  int publish;               /* X-Publish-Event: whole rows into `rows` */
  sink_t k;
  ath_buf_t rows;
  int rc;                    /* 0, or the failure: e, failed_sql */
  ath_db_error_t e;
  const char* failed_sql;
  int64_t changes, count;
} run_t;

/* Readies r to run job's plan p (again, after a lost transaction). */
static void run_start(run_t* r, ath_gwjob_t* job, const prep_t* p) {
  r->job = job;
  r->plan = p->plan;
  r->publish = job->event != NULL && job->op != ATH_GW_FETCH;
  r->rows = (ath_buf_t){0};
  r->rc = 0;
  memset(&r->e, 0, sizeof(r->e));
  r->failed_sql = NULL;
  r->changes = 0;
  r->count = -1;
  answer_start(job, &r->plan, &r->k, r->publish ? &r->rows : NULL);
}

static void run_fail(run_t* r, int rc, const ath_db_error_t* e, const char* sql) {
  r->rc = rc;
  r->e = *e;
  r->failed_sql = sql;
}

/* Runs r's statements (and its count) on db, inside the transaction. */
static void run_stmts(ath_db_t* db, run_t* r) {
  ath_db_error_t e;
  memset(&e, 0, sizeof(e));
  for (size_t i = 0; i < r->plan.nstmts; i++) {
    int64_t n = 0;
    int rc = run_stmt(db, &r->plan.stmts[i], NULL, &r->k, &n, &e);
    if (rc != 0) {
      run_fail(r, rc, &e, r->plan.stmts[i].sql);
      return;
    }
    r->changes += n;
  }
  if (r->plan.has_count) {
    ath_db_res_t* res;
    int rc = run_stmt(db, &r->plan.count, &res, NULL, NULL, &e);
    if (rc != 0) {
      run_fail(r, rc, &e, r->plan.count.sql);
      return;
    }
    ath_db_value_t v;
    if (ath__db_res_nrows(res) == 1 && ath__db_res_value(res, 0, 0, &v) == 0)
      r->count = v.type == ATH_DB_INT ? v.i : v.type == ATH_DB_TEXT ? atoll(v.s) : 0;
    ath__db_res_free(res);
  }
}

/* run_stmts under r's statement timeout; the group's SAVEPOINT, RELEASE
 * and COMMIT around it are nobody's statements and have none. */
static void run_body(ath_gws_t* s, ath_gwconn_t* c, ath_db_t* db, run_t* r) {
  c->deadline = ath__after(ath__mono_ns(), s->cfg.statement_timeout_ms);
  run_stmts(db, r);
  c->deadline = 0;
}

/* The connection for the group's database, or NULL with every request of
 * the group answered why not. */
static ath_db_t* group_db(ath_gws_t* s, ath_gwconn_t* c, run_t** runs, size_t n) {
  ath_db_error_t e;
  memset(&e, 0, sizeof(e));
  ath_db_t* db = conn(s, c, runs[0]->job->db, &e);
  int moved = db != NULL && ath__db_file_moved(db);
  for (size_t i = 0; (db == NULL || moved) && i < n; i++) {
    ath_gwjob_t* job = runs[i]->job;
    ath__buf_free(&runs[i]->k.keys);
    ath__buf_free(&runs[i]->rows);
    if (moved) {
      log_failure(s, job, runs[i]->plan.table->name, 503, NULL, NULL, FILE_MOVED);
      ath__gwjob_error(job, 503, "database_moved", FILE_MOVED, "restore the file, or restart the server");
    } else {
      log_failure(s, job, runs[i]->plan.table->name, 503, &e, NULL, NULL);
      ath__gwjob_error(job, 503, "database_unavailable", "the database is unavailable", NULL);
    }
  }
  return moved ? NULL : db;
}

/* Runs the group's pending requests (rc 0) in one transaction begun by
 * `begin`; each of several in a savepoint of its own, so that one that
 * fails is undone alone. Returns 1 when a failure took the transaction
 * with it (SQLite rolls back the whole transaction on an interrupt, a
 * full disk, an I/O error): what ran before it is undone too, and the
 * caller runs the others again. */
static int group_pass(ath_gws_t* s, ath_gwconn_t* c, ath_db_t* db, const char* begin, run_t** runs,
                      size_t n) {
  ath_db_error_t e;
  memset(&e, 0, sizeof(e));
  int rc = 0;
  if (begin != NULL) { /* BEGIN IMMEDIATE waits in the busy handler: bounded too */
    c->deadline = ath__after(ath__mono_ns(), s->cfg.statement_timeout_ms);
    rc = simple(db, begin, &e);
    c->deadline = 0;
  }
  const char* at = begin; /* the statement that failed the whole group */
  int several = n > 1;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    run_t* r = runs[i];
    if (r->rc != 0)
      continue;
    if (several && (rc = simple(db, at = "SAVEPOINT gw_request", &e)) != 0)
      break;
    run_body(s, c, db, r);
    if (!several)
      break;
    if (r->rc != 0 && simple(db, "ROLLBACK TO gw_request", &e) != 0) {
      /* no such savepoint: the transaction is gone; those before r are
       * undone and run again (r's own failure is its answer) */
      for (size_t j = 0; j < i; j++)
        if (runs[j]->rc == 0) {
          ath__buf_free(&runs[j]->k.keys);
          ath__buf_free(&runs[j]->rows);
          runs[j]->rc = -1; /* marks: to run again */
        }
      return 1;
    }
    rc = simple(db, at = "RELEASE gw_request", &e);
  }
  if (begin == NULL)
    return 0;
  int any = 0;
  for (size_t i = 0; i < n; i++)
    any |= runs[i]->rc == 0;
  if (rc == 0 && any)
    rc = simple(db, at = "COMMIT", &e);
  if (rc != 0) /* nothing of the group is written */
    for (size_t i = 0; i < n; i++)
      if (runs[i]->rc == 0)
        run_fail(runs[i], rc, &e, at);
  if (rc != 0 || !any) {
    ath_db_error_t e2;
    simple(db, "ROLLBACK", &e2);
  }
  return 0;
}

/* The second half, on the gateway thread or (off the loop) a pool
 * thread: the requests' plans on connection c, and each envelope written
 * from its statements' rows into its job->out. One request runs in one
 * transaction (a lone SELECT is one by itself). Several are SQLite
 * mutations that waited for c together (group commit): one transaction
 * and one sync for all, each answered only once that commit is in, and
 * each in a savepoint, so that one that fails fails alone. */
static void execute_group(ath_gws_t* s, ath_gwconn_t* c, run_t** runs, prep_t** preps, size_t n) {
  const ath_gwjob_t* job = runs[0]->job;
  const ath_gw_plan_t* plan = &runs[0]->plan;
  int pg = ath__db_url_kind(s->cfg.db_urls[job->db]) == ATH_DB_PG;
  int fetch = job->op == ATH_GW_FETCH;
  /* SQLite writers of this process take turns here, not in the busy
   * handler, on the one connection they share (see wconns) */
  int writer = !pg && !fetch;
  if (writer) {
    uv_mutex_lock(&s->writers[job->db]);
    c = &s->wconns[job->db];
  }
  ath_db_t* db = group_db(s, c, runs, n);
  if (db == NULL) {
    if (writer)
      uv_mutex_unlock(&s->writers[job->db]);
    return;
  }
  /* PostgreSQL reads share one snapshot (its default, read committed,
   * takes one per statement: a fetch's count could include rows its page
   * did not see) */
  int reads = 1;
  for (size_t i = 0; i < n; i++)
    reads &= runs[i]->job->op == ATH_GW_FETCH;
  const char* begin = fetch && n == 1 && plan->nstmts <= 1 && !plan->has_count ? NULL
                      : pg && reads ? "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                      : pg || fetch ? "BEGIN"
                                    : "BEGIN IMMEDIATE";
  while (group_pass(s, c, db, begin, runs, n)) {
    for (size_t i = 0; i < n; i++)
      if (runs[i]->rc == -1)
        run_start(runs[i], runs[i]->job, preps[i]);
  }
  c->deadline = 0;
  if (writer)
    uv_mutex_unlock(&s->writers[job->db]);
  for (size_t i = 0; i < n; i++) {
    run_t* r = runs[i];
    answer_end(s, r->job, &r->plan, &r->k, r->rc, &r->e, r->failed_sql, r->changes, r->count,
               r->publish ? &r->rows : NULL);
  }
}

static void execute(ath_gws_t* s, ath_gwconn_t* c, ath_gwjob_t* job, prep_t* p) {
  run_t r, *runs[1] = {&r};
  run_start(&r, job, p);
  execute_group(s, c, runs, &p, 1);
}

static void run_health(ath_gwt_t* t, ath_gwjob_t* job) {
  ath_db_error_t e;
  ath_db_t* db = conn(t->s, &t->conns[0], 0, &e);
  int moved = db != NULL && ath__db_file_moved(db);
  int ok = db != NULL && !moved && simple(db, "SELECT 1", &e) == 0;
  ath_buf_t* b = &job->out;
  b->len = 0;
  job->out_off = 0;
  ath__buf_lit(b, "{\"status\":\"");
  ath__buf_append(b, ok ? "success" : "error", ok ? 7 : 5);
  ath__buf_lit(b, "\",\"message\":\"");
  if (ok)
    ath__buf_lit(b, "athena is online");
  else if (moved)
    ath__buf_lit(b, FILE_MOVED);
  else
    ath__buf_lit(b, "the database is unreachable");
  ath__buf_lit(b, "\",\"ok\":");
  ath__buf_append(b, ok ? "true" : "false", ok ? 4 : 5);
  ath__buf_lit(b, ",\"version\":");
  ath__buf_json_str(b, ath_version());
  ath__buf_lit(b, ",\"protocol\":{\"major\":1,\"minor\":0},\"capabilities\":{\"fetch\":true,\"insert\":true,"
                  "\"update\":true,\"delete\":true,\"rawSql\":false,\"rpc\":false}}");
  job->status = ok ? 200 : 503;
}

/* ------------------------------------------------------------ off the loop
 *
 * A request whose statements wait on something else than this process's
 * CPU runs its second half on libuv's thread pool, so that the gateway
 * thread goes on serving its other connections: PostgreSQL (libpq waits for
 * the server) and SQLite mutations (the commit waits for the disk, and for
 * the other writers). Its HTTP side stays on the gateway thread, which
 * answers it when the pool is done. Each gateway thread keeps at most
 * OFF_LOOP_CONNS such connections per PostgreSQL database (opened on first
 * use) and one turn per SQLite database (its mutations then run on the
 * process's writer connection, s->wconns); more requests wait for one in
 * order. SQLite mutations that
 * waited together run together, up to GROUP_MAX in one transaction
 * (execute_group). SQLite reads run where they are. */
#define OFF_LOOP_CONNS 4
#define GROUP_MAX 64
/* Of those, PostgreSQL reads use this many at once: more reads wait, and
 * go together in the next pipeline (fewer, larger pipelines cost the
 * server less per read), unless the last read started PG_READ_WAIT_MS ago
 * or more (a slow statement: they take another connection then) */
#define PG_READ_CONNS 1
#define PG_READ_WAIT_MS 10

struct ath_gwtask_s {
  uv_work_t work;
  ath_gwt_t* t;
  ath_gwjob_t* job;          /* held by gw_server.c until answered */
  prep_t p;
  ath_gwconn_t* c;
  int db;                    /* job->db (the job is gone once answered) */
  int reading;               /* a PostgreSQL read, counted in t->nreads */
  ath_gwtask_t* next;        /* waiting for a connection, then: the group's next */
  run_t run;                 /* as a member of a group */
};

static int off_loop(const ath_gws_t* s, const ath_gwjob_t* job) {
  return job->op != ATH_GW_FETCH || ath__db_url_kind(s->cfg.db_urls[job->db]) == ATH_DB_PG;
}

/* Runs k and the tasks after it as one group on k's connection. */
static void run_tasks(ath_gwtask_t* k) {
  run_t* runs[GROUP_MAX];
  prep_t* preps[GROUP_MAX];
  size_t n = 0;
  for (ath_gwtask_t* m = k; m != NULL; m = m->next, n++) {
    run_start(&m->run, m->job, &m->p);
    runs[n] = &m->run;
    preps[n] = &m->p;
  }
  execute_group(k->t->s, k->c, runs, preps, n);
}

/* Sends m's answer (unless sent already). */
static void finish_task(ath_gwtask_t* m) {
  if (m->job == NULL)
    return;
  prep_free(&m->p);
  if (m->job->out.data == NULL) /* out of memory on the way */
    ath__gwjob_error(m->job, 500, "internal_error", "out of memory", NULL);
  ath__gws_finish(m->t, m->job);
  m->job = NULL;
}

/* Answers k and the tasks after it, and frees them. */
static void finish_tasks(ath_gwtask_t* k) {
  for (ath_gwtask_t* m = k; m != NULL;) {
    ath_gwtask_t* next = m->next;
    finish_task(m);
    free(m);
    m = next;
  }
}

static void task_work(uv_work_t* w) {
  run_tasks(w->data);
}

static void task_done(uv_work_t* w, int status);

/* A fetch of one statement, which PostgreSQL may run on the loop. */
static int read_plan(const ath_gwjob_t* job, const prep_t* p) {
  return job->op == ATH_GW_FETCH && p->plan.nstmts == 1 && !p->plan.has_count;
}

static int one_read(const ath_gwtask_t* k) {
  return read_plan(k->job, &k->p);
}

/* A PostgreSQL read of one statement on a connection that is set up runs
 * on the thread's own loop: libpq non-blocking (ath__db_exec_async, the
 * session's prepared statement of the SQL), answered in pg_done. Such
 * reads that waited for a connection together go in one pipeline
 * (pg_pipeline). A connection to open (which blocks), a transaction,
 * several statements and writes go to the pool. */
static int on_loop(const ath_gwtask_t* k) {
  const ath_gwconn_t* c = k->c;
  return one_read(k) && c->db != NULL && c->prepared && ath__db_kind(c->db) == ATH_DB_PG &&
         ath__db_connected(c->db);
}

/* Answers k's read from its statement's outcome (r is freed). */
static void pg_answer(ath_gwtask_t* k, int rc, ath_db_res_t* r, ath_db_error_t* e) {
  const ath_gw_plan_t* plan = &k->p.plan;
  sink_t sk;
  answer_start(k->job, plan, &sk, NULL);
  if (rc == 0)
    rc = ath__db_res_rows(r, sink_row, &sk, e);
  ath__db_res_free(r);
  answer_end(k->t->s, k->job, plan, &sk, rc, e, rc != 0 ? plan->stmts[0].sql : NULL, 0, -1, NULL);
}

static void pg_done(ath_db_t* db, void* ud) {
  ath_gwtask_t* k = ud;
  ath_db_res_t* r = NULL;
  ath_db_error_t e;
  memset(&e, 0, sizeof(e));
  int rc = ath__db_async_result(db, &r, &e);
  pg_answer(k, rc, r, &e);
  if (k->t->hl == NULL) /* the thread stops: its loop must end */
    ath__db_unwatch(db);
  task_done(&k->work, 0);
}

/* A pipeline's read has its outcome: answered at once. */
static void pg_each(ath_db_t* db, void* ud, int rc, ath_db_res_t* res, const ath_db_error_t* err) {
  (void)db;
  ath_gwtask_t* m = ud;
  ath_db_error_t e = *err;
  pg_answer(m, rc, res, &e);
  finish_task(m);
}

static void pg_pipeline_done(ath_db_t* db, void* ud) {
  ath_gwtask_t* k = ud;
  if (k->t->hl == NULL)
    ath__db_unwatch(db);
  task_done(&k->work, 0);
}

/* Sends k and the reads after it in one pipeline; 0, or -1 (not sent). */
static int pg_pipeline(ath_gwtask_t* k) {
  ath_db_stmt_t st[GROUP_MAX];
  size_t n = 0, nparams = 0;
  for (ath_gwtask_t* m = k; m != NULL; m = m->next)
    nparams += m->p.plan.stmts[0].nparams;
  ath_db_value_t small[256];
  ath_db_value_t* v = nparams <= 256 ? small : calloc(nparams, sizeof(*v));
  if (v == NULL)
    return -1;
  ath_db_value_t* at = v;
  for (ath_gwtask_t* m = k; m != NULL; m = m->next, n++) {
    const ath_gw_stmt_t* s = &m->p.plan.stmts[0];
    st[n].sql = s->sql;
    st[n].params = params_of(s, at, s->nparams); /* fits: never NULL */
    st[n].n = (int)s->nparams;
    st[n].ud = m;
    at += s->nparams;
  }
  ath_db_error_t e;
  ath__db_keep_watch(k->c->db);
  int rc = ath__db_pipeline_async(k->c->db, &k->t->loop, st, (int)n, pg_each, pg_pipeline_done, k, &e);
  if (v != small)
    free(v);
  return rc == 0 ? 0 : -1;
}

/* Puts the tasks after k back in front of the waiting ones. */
static void wait_again(ath_gwtask_t* k) {
  ath_gwtask_t* rest = k->next;
  if (rest == NULL)
    return;
  k->next = NULL;
  ath_gwtask_t* last = rest;
  while (last->next != NULL)
    last = last->next;
  last->next = k->t->waiting;
  k->t->waiting = rest;
}

static void task_start(ath_gwtask_t* k) {
  k->work.data = k;
  int pg = ath__db_url_kind(k->t->s->cfg.db_urls[k->db]) == ATH_DB_PG;
  if (pg && one_read(k) && !k->reading) { /* on the loop, or connecting first */
    k->reading = 1;
    k->t->nreads[k->db]++;
    k->t->read_at[k->db] = uv_now(&k->t->loop);
  }
  if (k->next != NULL && pg) {
    if (on_loop(k) && pg_pipeline(k) == 0)
      return;
    wait_again(k); /* not sent: one at a time */
  }
  if (on_loop(k)) {
    const ath_gw_stmt_t* st = &k->p.plan.stmts[0];
    ath_db_value_t small[32];
    ath_db_value_t* v = params_of(st, small, 32);
    ath_db_error_t e;
    ath__db_keep_watch(k->c->db); /* one poll handle per connection, not per statement */
    int started = v != NULL && ath__db_exec_async(k->c->db, &k->t->loop, st->sql, v, (int)st->nparams, pg_done,
                                                  k, &e) == 0;
    if (v != small)
      free(v);
    if (started)
      return;
    /* not started (out of memory, the connection failed at once): the
     * pool's way, which connects again */
  }
  if (k->c->db != NULL) /* a pool thread uses it next: not watched from here */
    ath__db_unwatch(k->c->db);
  int rc = uv_queue_work(&k->t->loop, &k->work, task_work, task_done);
  if (rc != 0) { /* never fails on a live loop; answered at once if it did */
    ath__gwjob_error(k->job, 500, "internal_error", "the request could not be scheduled", NULL);
    task_done(&k->work, 0);
  }
}

void ath__gwt_unwatch(ath_gwt_t* t) {
  for (int i = 0; i < t->s->cfg.ndbs; i++)
    for (ath_gwconn_t* c = t->idle[i]; c != NULL; c = c->next)
      if (c->db != NULL)
        ath__db_unwatch(c->db);
}

/* Takes the first task of database i out of *list, with every other one
 * of i after it (only reads of one statement if `reads`), up to max, as
 * its group (linked through next, in their order); NULL when none is for i. */
static ath_gwtask_t* take_group(ath_gwtask_t** list, int i, size_t max, int reads) {
  ath_gwtask_t *first = NULL, **tail = &first;
  size_t n = 0;
  ath_gwtask_t** q = list;
  while (*q != NULL && n < max) {
    ath_gwtask_t* m = *q;
    if (m->db != i || (reads && !one_read(m))) {
      q = &m->next;
      continue;
    }
    *q = m->next;
    m->next = NULL;
    *tail = m;
    tail = &m->next;
    n++;
  }
  return first;
}

/* The waiting task that gets connection c of database i next, with as its
 * group every other one waiting for i after it on SQLite, and on
 * PostgreSQL, when it is a read of one statement, the other such reads. */
static ath_gwtask_t* next_group(ath_gwt_t* t, int i) {
  if (ath__db_url_kind(t->s->cfg.db_urls[i]) == ATH_DB_SQLITE)
    return take_group(&t->waiting, i, GROUP_MAX, 0);
  ath_gwtask_t* k = take_group(&t->waiting, i, 1, 0);
  if (k != NULL && one_read(k))
    k->next = take_group(&t->waiting, i, GROUP_MAX - 1, 1);
  return k;
}

static void task_done(uv_work_t* w, int status) {
  (void)status;
  ath_gwtask_t* k = w->data;
  ath_gwt_t* t = k->t;
  int i = k->db;
  ath_gwconn_t* c = k->c;
  if (k->reading)
    t->nreads[i]--;
  finish_tasks(k);
  /* the connection: to the next requests waiting for one, else spare */
  ath_gwtask_t* next = next_group(t, i);
  if (next != NULL) {
    next->c = c;
    task_start(next);
  } else {
    c->next = t->idle[i];
    t->idle[i] = c;
  }
}

/* Appends k to the tasks waiting for a connection. */
static void wait_last(ath_gwt_t* t, ath_gwtask_t* k) {
  ath_gwtask_t** q = &t->waiting;
  while (*q != NULL)
    q = &(*q)->next;
  *q = k;
}

/* Starts job's second half off the loop; 0, or -1 (out of memory: it
 * then runs here). A connection it finds serves the tasks waiting first:
 * k then waits, last, and the connection takes the first group. */
static int go_off_loop(ath_gwt_t* t, ath_gwjob_t* job, prep_t* p, struct st_h2o_req_t* req) {
  int i = job->db;
  ath_gwconn_t* c = t->idle[i];
  int fresh = 0;
  int pg = ath__db_url_kind(t->s->cfg.db_urls[i]) == ATH_DB_PG;
  if (pg && read_plan(job, p) && t->nreads[i] >= PG_READ_CONNS &&
      uv_now(&t->loop) - t->read_at[i] < PG_READ_WAIT_MS) {
    c = NULL; /* waits for the next pipeline */
  } else if (!pg) {
    if (t->nmade[i] == 0)
      return -1; /* never opened late: the file may be gone (see ath__gwt_init) */
  } else if (c == NULL && t->nmade[i] < OFF_LOOP_CONNS) {
    if ((c = calloc(1, sizeof(*c))) != NULL) {
      t->nmade[i]++;
      fresh = 1;
    } else if (t->nmade[i] == 0) {
      return -1; /* none would ever come back to wait for */
    }
  }
  ath_gwtask_t* k = calloc(1, sizeof(*k));
  ath_gwjob_t* held = k != NULL ? ath__gws_hold(job, req) : NULL;
  if (held == NULL) {
    free(k);
    if (fresh) { /* kept for later */
      c->next = t->idle[i];
      t->idle[i] = c;
    }
    return -1;
  }
  if (c != NULL && !fresh)
    t->idle[i] = c->next;
  k->t = t;
  k->job = held;
  k->db = job->db;
  k->p = *p;
  wait_last(t, k); /* in order, after the others */
  if (c != NULL) {
    k = next_group(t, i);
    k->c = c;
    task_start(k);
  }
  return 0;
}

/* ------------------------------------------------- fetches of one pass
 *
 * A SQLite fetch does not run when its request is read: it waits, held,
 * for the end of the loop's pass (the check phase, once every socket that
 * was ready has been read), and the fetches of the pass then run together
 * in one read transaction on the thread's connection. One instead of one
 * each: SQLite takes and drops its WAL read lock (under a mutex the
 * process's connections share, with an fcntl when no other connection
 * holds that lock) and reads the file's size, and the gateway checks that
 * the file was not moved, once per pass instead of once per fetch. Each
 * fetch of the pass was read before the transaction begins, so it still
 * sees every write answered before it was sent. */

/* The fetches of one pass on one database (k and those after it): one
 * read transaction, each fetch answered as soon as its rows are written.
 * One that fails fails alone (reads leave nothing to undo). An error may
 * have ended the transaction: the next fetches then get a new one (its
 * snapshot is still taken after they were read). */
static void batch_reads(ath_gwtask_t* k) {
  if (k->next == NULL) { /* alone: a SELECT is its own transaction */
    run_tasks(k);
    finish_tasks(k);
    return;
  }
  ath_gws_t* s = k->t->s;
  ath_gwconn_t* c = k->c;
  run_t* runs[GROUP_MAX];
  size_t n = 0;
  for (ath_gwtask_t* m = k; m != NULL; m = m->next) {
    run_start(&m->run, m->job, &m->p);
    runs[n++] = &m->run;
  }
  ath_db_t* db = group_db(s, c, runs, n); /* NULL: each answered why */
  ath_db_error_t e;
  int open = db != NULL && simple(db, "BEGIN", &e) == 0;
  for (ath_gwtask_t* m = k; m != NULL;) {
    ath_gwtask_t* next = m->next;
    run_t* r = &m->run;
    if (db != NULL) {
      run_body(s, c, db, r);
      answer_end(s, r->job, &r->plan, &r->k, r->rc, &r->e, r->failed_sql, r->changes, r->count, NULL);
      if (r->rc != 0 && open) /* refused while the transaction stands */
        simple(db, "BEGIN", &e);
    }
    m->next = NULL;
    finish_tasks(m);
    m = next;
  }
  if (open && simple(db, "COMMIT", &e) != 0)
    simple(db, "ROLLBACK", &e);
}

static void batch_run(uv_check_t* h) {
  ath_gwt_t* t = h->data;
  while (t->batch != NULL) { /* an answer may bring a pipelined request in */
    ath_gwtask_t* all = t->batch;
    t->batch = NULL;
    t->batch_tail = &t->batch;
    while (all != NULL)
      batch_reads(take_group(&all, all->db, GROUP_MAX, 0));
  }
  uv_idle_stop(&t->batch_idle);
}

static void batch_idle(uv_idle_t* h) {
  (void)h; /* only there so that the poll does not block: batch_run answers */
}

/* Holds job until the end of this pass; 0, or -1 (not batching, out of
 * memory: it then runs now). */
static int defer_fetch(ath_gwt_t* t, ath_gwjob_t* job, prep_t* p, struct st_h2o_req_t* req) {
  if (!t->batching)
    return -1;
  ath_gwtask_t* k = calloc(1, sizeof(*k));
  ath_gwjob_t* held = k != NULL ? ath__gws_hold(job, req) : NULL;
  if (held == NULL) {
    free(k);
    return -1;
  }
  k->t = t;
  k->job = held;
  k->db = job->db;
  k->p = *p;
  k->c = &t->conns[job->db];
  if (t->batch == NULL) /* read in a phase before the poll, it must not wait for one */
    uv_idle_start(&t->batch_idle, batch_idle);
  *t->batch_tail = k;
  t->batch_tail = &k->next;
  return 0;
}

void ath__gwt_batch_init(ath_gwt_t* t) {
  t->batch = NULL;
  t->batch_tail = &t->batch;
  uv_check_init(&t->loop, &t->batch_check); /* both always succeed */
  uv_idle_init(&t->loop, &t->batch_idle);
  t->batch_check.data = t->batch_idle.data = t;
  uv_check_start(&t->batch_check, batch_run);
  uv_unref((uv_handle_t*)&t->batch_check); /* it does not keep the loop running */
  t->batching = 1;
}

void ath__gwt_batch_close(ath_gwt_t* t) {
  if (!t->batching)
    return;
  batch_run(&t->batch_check);
  t->batching = 0; /* fetches from now on run at once */
  uv_close((uv_handle_t*)&t->batch_check, NULL);
  uv_close((uv_handle_t*)&t->batch_idle, NULL);
}

int ath__gwt_run(ath_gwt_t* t, ath_gwjob_t* job, struct st_h2o_req_t* req) {
  if (job->kind == ATH_GWJ_HEALTH) {
    run_health(t, job);
  } else {
    prep_t p;
    if (prepare(t, job, &p) == 0) {
      if (req != NULL &&
          (off_loop(t->s, job) ? go_off_loop(t, job, &p, req) : defer_fetch(t, job, &p, req)) == 0)
        return 1;
      execute(t->s, &t->conns[job->db], job, &p);
    }
    prep_free(&p);
  }
  if (job->out.data == NULL) /* out of memory on the way */
    ath__gwjob_error(job, 500, "internal_error", "out of memory", NULL);
  return 0;
}
