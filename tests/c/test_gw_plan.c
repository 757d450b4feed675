/* The gateway request compiler (engine/gateway/gw_plan.c, engine/gateway/gw_expr.c,
 * engine/gateway/gw_json.c; GATEWAY §3, §4, §7, §8).
 *
 * Table-driven: (dialect, operation, body) -> the exact SQL and parameters,
 * or -> status and code. Parameters print as `n` (NULL), `b:1`, `i:42`,
 * `r:1.5` (the literal), `t:text`, `j:{"a":1}`, joined by `|`; several
 * statements join with ` ;; `. Every compile also checks the invariant the
 * fuzz target checks: each statement has as many placeholders as
 * parameters. gw_exec runs SQLite plans against §8's fixture in memory. */
#include <sqlite3.h>

#include "gw_catalog.h"
#include "gw_plan.h"
#include "gw_server.h"
#include "task.h"

#define S ATH_GW_SQLITE
#define P ATH_GW_PG
#define F ATH_GW_FETCH
#define I ATH_GW_INSERT
#define U ATH_GW_UPDATE
#define D ATH_GW_DELETE

/* ---------------------------------------------------------------- helpers */

static void render_params(ath_gw_buf_t* b, const ath_gw_stmt_t* st) {
  size_t i;
  for (i = 0; i < st->nparams; i++) {
    const ath_gw_param_t* p = &st->params[i];
    char num[32];
    if (i > 0)
      ath__gw_buf_putc(b, '|');
    switch (p->type) {
      case ATH_GW_P_NULL:
        ath__gw_buf_puts(b, "n");
        break;
      case ATH_GW_P_BOOL:
        snprintf(num, sizeof num, "b:%d", (int)p->i);
        ath__gw_buf_puts(b, num);
        break;
      case ATH_GW_P_INT:
        snprintf(num, sizeof num, "i:%lld", (long long)p->i);
        ath__gw_buf_puts(b, num);
        break;
      case ATH_GW_P_REAL:
        ath__gw_buf_puts(b, "r:");
        ath__gw_buf_put(b, p->text, p->len);
        break;
      case ATH_GW_P_TEXT:
        ath__gw_buf_puts(b, "t:");
        ath__gw_buf_put(b, p->text, p->len);
        break;
      case ATH_GW_P_JSON:
        ath__gw_buf_puts(b, "j:");
        ath__gw_buf_put(b, p->text, p->len);
        break;
    }
  }
}

/* Placeholders in `sql` for the dialect: `?` or `$n` numbered 1..n in
 * order. Returns the count, or -1 when `$n` are out of order. */
static long count_placeholders(const char* sql, ath_gw_dialect_t d) {
  long n = 0;
  const char* s;
  for (s = sql; *s != '\0'; s++) {
    if (d == S && *s == '?')
      n++;
    if (d == P && *s == '$') {
      long k = strtol(s + 1, NULL, 10);
      if (k != n + 1)
        return -1;
      n++;
    }
  }
  return n;
}

static void check_stmt(const ath_gw_stmt_t* st, ath_gw_dialect_t d) {
  size_t i;
  ASSERT(st->sql != NULL);
  ASSERT_EQ((long)st->nparams, count_placeholders(st->sql, d));
  for (i = 0; i < st->nparams; i++)
    ASSERT(st->params[i].type == ATH_GW_P_NULL || st->params[i].text != NULL);
}

typedef struct {
  const char* policy_conds; /* JSON array or NULL */
  const char* policy_set;   /* JSON object or NULL */
  int header;               /* X-Strip-Nulls: -1, 0, 1 */
  const ath_gw_limits_t* limits;
  int full_rows;            /* X-Publish-Event: mutations return full rows */
} extras_t;

static const extras_t no_extras = {NULL, NULL, -1, NULL, 0};

/* Parses and compiles; returns the compile result with *plan filled. */
static int compile_ex(ath_gw_dialect_t d, ath_gw_op_t op, const char* body,
                      const extras_t* ex, ath_gw_plan_t* plan) {
  ath_gj_doc_t *doc = NULL, *pc = NULL, *ps = NULL;
  ath_gw_request_t req;
  int rc;
  size_t i;
  rc = ath__gw_parse_body(body, strlen(body), &doc, plan);
  if (rc != 0)
    return rc;
  memset(&req, 0, sizeof req);
  req.catalog = &gwc_catalog;
  req.limits = ex->limits;
  req.dialect = d;
  req.op = op;
  req.body = doc->root;
  req.strip_nulls_header = ex->header;
  req.full_rows = ex->full_rows;
  if (ex->policy_conds != NULL) {
    ASSERT_OK(ath__gj_parse(ex->policy_conds, strlen(ex->policy_conds), &pc,
                            NULL));
    req.policy_conditions = pc->root;
  }
  if (ex->policy_set != NULL) {
    ASSERT_OK(ath__gj_parse(ex->policy_set, strlen(ex->policy_set), &ps,
                            NULL));
    req.policy_set = ps->root;
  }
  rc = ath__gw_compile(&req, plan);
  /* The plan must not refer to the request's memory: free it first. */
  ath__gj_free(doc);
  ath__gj_free(pc);
  ath__gj_free(ps);
  if (rc == 0) {
    for (i = 0; i < plan->nstmts; i++)
      check_stmt(&plan->stmts[i], d);
    if (plan->has_count)
      check_stmt(&plan->count, d);
  } else {
    ASSERT(plan->code != NULL);
    ASSERT(plan->error[0] != '\0');
  }
  return rc;
}

static int compile(ath_gw_dialect_t d, ath_gw_op_t op, const char* body,
                   ath_gw_plan_t* plan) {
  return compile_ex(d, op, body, &no_extras, plan);
}

/* All statements as "sql ;; sql" and their parameters "p|p ;; p". */
static void render(const ath_gw_plan_t* plan, ath_gw_buf_t* sql,
                   ath_gw_buf_t* params) {
  size_t i;
  ath__gw_buf_puts(sql, "");
  ath__gw_buf_puts(params, "");
  for (i = 0; i < plan->nstmts; i++) {
    if (i > 0) {
      ath__gw_buf_puts(sql, " ;; ");
      ath__gw_buf_puts(params, " ;; ");
    }
    ath__gw_buf_puts(sql, plan->stmts[i].sql);
    render_params(params, &plan->stmts[i]);
  }
}

typedef struct {
  int line;
  ath_gw_dialect_t d;
  ath_gw_op_t op;
  const char* body;
  const char* sql;
  const char* params;
} sql_case_t;

/* ------------------------------------------------- the plan cache's rule
 *
 * The gateway's plan cache (engine/gateway/gw_cache.c) hands a request the
 * plan of an earlier request of the same shape with the new values bound.
 * Its rule, checked on every case of this file: whenever it hands out a
 * plan, the compiler, given that request, compiles it to the same SQL and
 * parameters (and succeeds). Each case's body is varied one scalar at a
 * time (other strings, numbers, booleans, injection attempts, NUL, the
 * `in` list syntax) and looked up in a cache holding the case's plan. */

static long cache_hits, cache_lookups;

/* The statements and the count, as render() writes them. */
static void render_all(const ath_gw_plan_t* plan, ath_gw_buf_t* out) {
  ath_gw_buf_t sql = {0}, params = {0};
  render(plan, &sql, &params);
  ath__gw_buf_puts(out, sql.data);
  ath__gw_buf_puts(out, " [");
  ath__gw_buf_puts(out, params.data);
  ath__gw_buf_puts(out, "] count: ");
  ath__gw_buf_puts(out, plan->count.sql ? plan->count.sql : "-");
  ath__gw_buf_puts(out, " [");
  render_params(out, &plan->count);
  ath__gw_buf_puts(out, "]");
  ath__gw_buf_free(&sql);
  ath__gw_buf_free(&params);
}

/* A request kept parsed (the cache binds into its document). */
typedef struct {
  ath_gj_doc_t *doc, *pc, *ps;
  ath_gw_request_t req;
} parsed_t;

static int parse_req(ath_gw_dialect_t d, ath_gw_op_t op, const char* body,
                     const extras_t* ex, parsed_t* r) {
  ath_gw_plan_t err;
  memset(r, 0, sizeof *r);
  if (ath__gw_parse_body(body, strlen(body), &r->doc, &err) != 0) {
    ath__gw_plan_free(&err);
    return -1;
  }
  r->req.catalog = &gwc_catalog;
  r->req.limits = ex->limits;
  r->req.dialect = d;
  r->req.op = op;
  r->req.body = r->doc->root;
  r->req.strip_nulls_header = ex->header;
  r->req.full_rows = ex->full_rows;
  if (ex->policy_conds != NULL &&
      ath__gj_parse(ex->policy_conds, strlen(ex->policy_conds), &r->pc, NULL) == 0)
    r->req.policy_conditions = r->pc->root;
  if (ex->policy_set != NULL &&
      ath__gj_parse(ex->policy_set, strlen(ex->policy_set), &r->ps, NULL) == 0)
    r->req.policy_set = r->ps->root;
  return 0;
}

static void parsed_free(parsed_t* r) {
  ath__gj_free(r->doc);
  ath__gj_free(r->pc);
  ath__gj_free(r->ps);
}

static void shape_req(ath_gwpc_t* pc, const parsed_t* r, const extras_t* ex) {
  ath_gwpc_key_t k = {&gwc_catalog, r->req.dialect, r->req.op, 0,
                      ex->header, ex->full_rows,
                      ex->policy_conds,
                      ex->policy_conds ? strlen(ex->policy_conds) : 0,
                      ex->policy_set,
                      ex->policy_set ? strlen(ex->policy_set) : 0};
  ath__gwpc_shape(pc, &k, r->req.body);
}

static void put_json_str(ath_gw_buf_t* b, const char* s, size_t n) {
  ath_gj_t v;
  memset(&v, 0, sizeof v);
  v.type = ATH_GJ_STRING;
  v.str = s;
  v.len = n;
  ath__gj_write(b, &v);
}

/* Writes v with its scalar number `target` (document order) replaced by
 * the JSON text `with`. */
static void write_varied(ath_gw_buf_t* b, const ath_gj_t* v, long* at,
                         long target, const char* with) {
  const ath_gj_t* it;
  if (v->type == ATH_GJ_OBJECT || v->type == ATH_GJ_ARRAY) {
    ath__gw_buf_putc(b, v->type == ATH_GJ_OBJECT ? '{' : '[');
    for (it = v->first; it != NULL; it = it->next) {
      if (it != v->first)
        ath__gw_buf_putc(b, ',');
      if (v->type == ATH_GJ_OBJECT) {
        put_json_str(b, it->key, it->klen);
        ath__gw_buf_putc(b, ':');
      }
      write_varied(b, it, at, target, with);
    }
    ath__gw_buf_putc(b, v->type == ATH_GJ_OBJECT ? '}' : ']');
    return;
  }
  if ((*at)++ == target)
    ath__gw_buf_puts(b, with);
  else
    ath__gj_write(b, v);
}

/* The plan cache's rule on one successful case. */
static int cache_rule(ath_gw_dialect_t d, ath_gw_op_t op, const char* body,
                      const extras_t* ex, int line) {
  static const char* const variants[] = {
    "\"zz\"", "\"x' OR '1'='1\"", "\"1; DROP TABLE users --\"", "\"(1,2)\"",
    "\"\"", "\"%_a\"", "\"id\"", "\"a\\u0000b\"", "\"not_null\"", "\"true\"",
    "0", "-7", "12345678901234567890123", "2.5", "1e2", "true", "false", "null",
  };
  ath_gwpc_t* pc = ath__gwpc_new(4);
  parsed_t a, b;
  ath_gw_plan_t plan, bound;
  void* mem = NULL;
  ath_gwpe_t* e;
  long leaves = 0, target;
  size_t v;
  ASSERT_NOT_NULL(pc);
  ASSERT_OK(parse_req(d, op, body, ex, &a));
  ASSERT_OK(ath__gw_compile(&a.req, &plan));
  shape_req(pc, &a, ex);
  ASSERT_NULL(ath__gwpc_get(pc, &bound, &mem));
  e = ath__gwpc_put(pc, &plan, &mem);
  if (e == NULL) { /* too large to keep: compiled each time */
    ath__gw_plan_free(&plan);
    parsed_free(&a);
    ath__gwpc_free(pc);
    return 0;
  }
  ath__gwpc_release(pc, e);
  free(mem);
  { /* count the scalars */
    ath_gw_buf_t tmp = {0};
    write_varied(&tmp, a.doc->root, &leaves, -1, "");
    ath__gw_buf_free(&tmp);
  }
  for (target = 0; target < leaves; target++) {
    for (v = 0; v < sizeof variants / sizeof variants[0]; v++) {
      ath_gw_buf_t text = {0}, got = {0}, want = {0};
      ath_gw_plan_t fresh;
      long at = 0;
      int rc;
      write_varied(&text, a.doc->root, &at, target, variants[v]);
      ASSERT(!text.oom);
      if (parse_req(d, op, text.data, ex, &b) != 0) {
        ath__gw_buf_free(&text);
        continue;
      }
      rc = ath__gw_compile(&b.req, &fresh);
      shape_req(pc, &b, ex);
      cache_lookups++;
      e = ath__gwpc_get(pc, &bound, &mem);
      if (e != NULL) {
        cache_hits++;
        if (rc != 0) {
          fprintf(stderr, "line %d: cached plan for a body the compiler refuses (%s): %s\n",
                  line, fresh.code, text.data);
          return -1;
        }
        render_all(&bound, &got);
        render_all(&fresh, &want);
        if (strcmp(got.data, want.data) != 0) {
          fprintf(stderr, "line %d: %s\n  cached   %s\n  compiled %s\n", line,
                  text.data, got.data, want.data);
          return -1;
        }
        ath__gwpc_release(pc, e);
        free(mem);
      }
      ath__gw_plan_free(&fresh);
      parsed_free(&b);
      ath__gw_buf_free(&text);
      ath__gw_buf_free(&got);
      ath__gw_buf_free(&want);
    }
  }
  /* the same body again is a hit */
  shape_req(pc, &a, ex);
  e = ath__gwpc_get(pc, &bound, &mem);
  ASSERT_NOT_NULL(e);
  ath__gwpc_release(pc, e);
  free(mem);
  parsed_free(&a);
  ath__gwpc_free(pc);
  return 0;
}

static int run_sql_cases(const sql_case_t* cases, size_t n,
                         const extras_t* ex) {
  size_t i;
  int bad = 0;
  for (i = 0; i < n; i++) {
    const sql_case_t* k = &cases[i];
    ath_gw_plan_t plan;
    ath_gw_buf_t sql = {0}, params = {0};
    int rc = compile_ex(k->d, k->op, k->body, ex, &plan);
    if (rc != 0) {
      fprintf(stderr, "line %d: compile failed: %d %s: %s (%s)\n", k->line,
              plan.status, plan.code, plan.error, plan.hint);
      bad++;
    } else {
      render(&plan, &sql, &params);
      if (strcmp(sql.data, k->sql) != 0 || strcmp(params.data, k->params) != 0) {
        fprintf(stderr,
                "line %d:\n  want %s\n       [%s]\n  got  %s\n       [%s]\n",
                k->line, k->sql, k->params, sql.data, params.data);
        bad++;
      } else if (cache_rule(k->d, k->op, k->body, ex, k->line) != 0) {
        bad++;
      }
    }
    ath__gw_buf_free(&sql);
    ath__gw_buf_free(&params);
    ath__gw_plan_free(&plan);
  }
  if (getenv("GW_CACHE_STATS") != NULL)
    fprintf(stderr, "plan cache rule: %ld hits of %ld lookups\n", cache_hits, cache_lookups);
  ASSERT_EQ(0, bad);
  return 0;
}

typedef struct {
  int line;
  ath_gw_dialect_t d;
  ath_gw_op_t op;
  const char* body;
  int status;
  const char* code;
} err_case_t;

static int run_err_cases(const err_case_t* cases, size_t n,
                         const extras_t* ex) {
  size_t i;
  int bad = 0;
  for (i = 0; i < n; i++) {
    const err_case_t* k = &cases[i];
    ath_gw_plan_t plan;
    int rc = compile_ex(k->d, k->op, k->body, ex, &plan);
    if (rc == 0) {
      ath_gw_buf_t sql = {0}, params = {0};
      render(&plan, &sql, &params);
      fprintf(stderr, "line %d: want %d %s, compiled: %s [%s]\n", k->line,
              k->status, k->code, sql.data, params.data);
      ath__gw_buf_free(&sql);
      ath__gw_buf_free(&params);
      bad++;
    } else if (plan.status != k->status || strcmp(plan.code, k->code) != 0) {
      fprintf(stderr, "line %d: want %d %s, got %d %s: %s\n", k->line,
              k->status, k->code, plan.status, plan.code, plan.error);
      bad++;
    }
    ath__gw_plan_free(&plan);
  }
  ASSERT_EQ(0, bad);
  return 0;
}

#define RUN_SQL(cases) \
  run_sql_cases(cases, sizeof(cases) / sizeof((cases)[0]), &no_extras)
#define RUN_ERR(cases) \
  run_err_cases(cases, sizeof(cases) / sizeof((cases)[0]), &no_extras)

static sqlite3* fixture_db(void);
static int exec_stmt(sqlite3* db, const ath_gw_stmt_t* s, ath_gw_buf_t* ids);

#define USERS_ALL "\"id\", \"name\", \"email\", \"age\", \"active\""
#define PAGE " LIMIT ? OFFSET ?"

/* ------------------------------------------------------------- JSON tree */

TEST_IMPL(gw_json_tree) {
  ath_gj_doc_t* doc;
  const ath_gj_t *v, *it;
  ath_gw_buf_t b = {0};
  size_t at;
  char* deep;
  size_t i;

  ASSERT_OK(ath__gj_parse(
    "{\"a\":1,\"b\":-2.50,\"c\":1e3,\"d\":\"x\\u0000y\",\"a\":9007199254740993,"
    "\"e\":[true,false,null,{}],\"f\":{\"k\":1,\"k\":2}}",
    strlen("{\"a\":1,\"b\":-2.50,\"c\":1e3,\"d\":\"x\\u0000y\",\"a\":"
           "9007199254740993,\"e\":[true,false,null,{}],\"f\":{\"k\":1,\"k\":"
           "2}}"),
    &doc, NULL));
  v = ath__gj_get(doc->root, "a"); /* duplicate keys: the last wins */
  ASSERT(v != NULL && v->type == ATH_GJ_NUMBER && v->integral);
  ASSERT_STR_EQ("9007199254740993", v->str);
  v = ath__gj_get(doc->root, "b");
  ASSERT(!v->integral);
  ASSERT_STR_EQ("-2.50", v->str); /* the exact text */
  ASSERT(!ath__gj_get(doc->root, "c")->integral);
  v = ath__gj_get(doc->root, "d");
  ASSERT_EQ(3, v->len);
  ASSERT_EQ(0, v->str[1]);
  v = ath__gj_get(doc->root, "e");
  ASSERT_EQ(4, v->count);
  it = v->first->next->next;
  ASSERT_EQ(ATH_GJ_NULL, it->type);
  ASSERT(ath__gj_get(doc->root, "nope") == NULL);
  ath__gj_write(&b, doc->root);
  ASSERT_STR_EQ("{\"b\":-2.50,\"c\":1e3,\"d\":\"x\\u0000y\",\"a\":"
                "9007199254740993,\"e\":[true,false,null,{}],\"f\":{\"k\":2}}",
                b.data);
  ath__gw_buf_free(&b);
  ath__gj_free(doc);

  /* Empty and blank bodies are {}. */
  ASSERT_OK(ath__gj_parse("", 0, &doc, NULL));
  ASSERT_EQ(ATH_GJ_OBJECT, doc->root->type);
  ASSERT_EQ(0, doc->root->count);
  ath__gj_free(doc);
  ASSERT_OK(ath__gj_parse(" \n", 2, &doc, NULL));
  ASSERT_EQ(ATH_GJ_OBJECT, doc->root->type);
  ath__gj_free(doc);

  /* Broken, trailing garbage, two values, bad UTF-8. */
  ASSERT_EQ(ATH_EINVAL, ath__gj_parse("{\"a\":", 5, &doc, &at));
  ASSERT(doc == NULL);
  ASSERT_EQ(ATH_EINVAL, ath__gj_parse("{} x", 4, &doc, &at));
  ASSERT_EQ(ATH_EINVAL, ath__gj_parse("1 2", 3, &doc, &at));
  ASSERT_EQ(ATH_EINVAL, ath__gj_parse("\"\xff\"", 3, &doc, &at));
  ASSERT_EQ(ATH_EINVAL, ath__gj_parse("{'a':1}", 7, &doc, &at));

  /* Depth: 64 levels parse, 65 do not; a 1 MiB [[[[... stops at 65. */
  deep = malloc(1 << 20);
  ASSERT(deep != NULL);
  for (i = 0; i < 64; i++) {
    deep[i] = '[';
    deep[64 + i] = ']';
  }
  ASSERT_OK(ath__gj_parse(deep, 128, &doc, NULL));
  ath__gj_free(doc);
  for (i = 0; i < 65; i++) {
    deep[i] = '[';
    deep[65 + i] = ']';
  }
  ASSERT_EQ(ATH_EINVAL, ath__gj_parse(deep, 130, &doc, &at));
  memset(deep, '[', 1 << 20);
  ASSERT_EQ(ATH_EINVAL, ath__gj_parse(deep, 1 << 20, &doc, &at));
  ASSERT_LE(at, 65);
  free(deep);

  /* Equality: numbers by value, objects by effective members. */
  {
    ath_gj_doc_t *x, *y;
    const char* xs = "[1,1.0,{\"a\":1,\"b\":[2]},\"1\"]";
    const char* ys = "[1e0,1,{\"b\":[2],\"a\":0,\"a\":1},1]";
    ASSERT_OK(ath__gj_parse(xs, strlen(xs), &x, NULL));
    ASSERT_OK(ath__gj_parse(ys, strlen(ys), &y, NULL));
    const ath_gj_t *p = x->root->first, *q = y->root->first;
    ASSERT(ath__gj_equal(p, q));
    ASSERT(ath__gj_equal(p->next, q->next));
    ASSERT(ath__gj_equal(p->next->next, q->next->next));
    ASSERT(!ath__gj_equal(p->next->next->next, q->next->next->next));
    ath__gj_free(x);
    ath__gj_free(y);
  }
  return 0;
}

TEST_IMPL(gw_body_errors) {
  static const struct {
    const char* body;
    int status;
    const char* code;
  } cases[] = {
    {"{\"table_name\":", 400, "invalid_json"},
    {"[1]", 400, "invalid_body"},
    {"\"users\"", 400, "invalid_body"},
    {"null", 400, "invalid_body"},
    {"nul", 400, "invalid_json"},
    {"{\"a\":1}{}", 400, "invalid_json"},
  };
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ath_gw_plan_t err;
    ath_gj_doc_t* doc = NULL;
    ASSERT_EQ(ATH_EINVAL, ath__gw_parse_body(cases[i].body,
                                             strlen(cases[i].body), &doc, &err));
    ASSERT(doc == NULL);
    ASSERT_EQ(cases[i].status, err.status);
    ASSERT_STR_EQ(cases[i].code, err.code);
    ASSERT(err.error[0] != '\0');
    ath__gw_plan_free(&err);
  }
  return 0;
}

/* ------------------------------------------------------------------ fetch */

TEST_IMPL(gw_fetch_sql) {
  static const sql_case_t cases[] = {
    /* §3.3's example, both dialects. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id, email\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"email\",\"value\":\"a@x.io\"}],"
     "\"sort_by\":{\"field\":\"id\",\"direction\":\"descending\"},\"limit\":10}",
     "SELECT \"id\", \"email\" FROM \"users\" WHERE \"email\" = ? ORDER BY "
     "\"id\" DESC NULLS FIRST LIMIT ? OFFSET ?",
     "t:a@x.io|i:10|i:0"},
    {__LINE__, P, F,
     "{\"table_name\":\"users\",\"columns\":\"id, email\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"email\",\"value\":\"a@x.io\"}],"
     "\"sort_by\":{\"field\":\"id\",\"direction\":\"descending\"},\"limit\":10}",
     "SELECT \"id\", \"email\" FROM \"public\".\"users\" WHERE \"email\" = $1 "
     "ORDER BY \"id\" DESC NULLS FIRST LIMIT $2 OFFSET $3",
     "t:a@x.io|i:10|i:0"},
    /* Defaults: all visible columns, primary-key order, defaultLimit. */
    {__LINE__, S, F, "{\"table_name\":\"users\"}",
     "SELECT " USERS_ALL " FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
    {__LINE__, S, F, "{\"table_name\":\"USERS\",\"columns\":\"*\"}",
     "SELECT " USERS_ALL " FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"\"}",
     "SELECT " USERS_ALL " FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"select\":\"id\"}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
    /* §8.2: the hook's fetch. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":[\"id\",\"email\"],\"limit\":25,"
     "\"conditions\":[],\"strip_nulls\":true}",
     "SELECT \"id\", \"email\" FROM \"users\" ORDER BY \"id\"" PAGE,
     "i:25|i:0"},
    /* §8.4: builder eq and the legacy form. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id, name\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"name\",\"value\":\"Bilbo\"}],"
     "\"strip_nulls\":true}",
     "SELECT \"id\", \"name\" FROM \"users\" WHERE \"name\" = ? ORDER BY \"id\""
     PAGE, "t:Bilbo|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"eq_column\":\"id\",\"eq_value\":2}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" = ? ORDER BY \"id\"" PAGE,
     "i:2|i:100|i:0"},
    /* Later SDKs send both forms; `value` wins when present, even null. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"id\",\"value\":3,\"eq_column\":\"id\","
     "\"eq_value\":3}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" = ? ORDER BY \"id\"" PAGE,
     "i:3|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"eq_column\":\"email\",\"value\":null,\"eq_value\":\"x\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"email\" IS NULL ORDER BY \"id\""
     PAGE, "i:100|i:0"},
    /* §8.5 operators. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"neq\",\"column\":\"email\",\"value\":null},{\"operator\":"
     "\"NEQ\",\"column\":\"name\",\"value\":\"x\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"email\" IS NOT NULL AND \"name\" <> ?"
     " ORDER BY \"id\"" PAGE, "t:x|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"in\",\"column\":\"id\",\"value\":[]}]}",
     "SELECT \"id\" FROM \"users\" WHERE 1 = 0 ORDER BY \"id\"" PAGE,
     "i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"in\",\"column\":\"id\",\"value\":[1,null,\"2\"]}]}",
     "SELECT \"id\" FROM \"users\" WHERE (\"id\" IN (?, ?) OR \"id\" IS NULL) "
     "ORDER BY \"id\"" PAGE, "i:1|t:2|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"in\",\"column\":\"id\",\"value\":[null]}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" IS NULL ORDER BY \"id\"" PAGE,
     "i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"in\",\"column\":\"id\",\"value\":7}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" IN (?) ORDER BY \"id\"" PAGE,
     "i:7|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"in\",\"column\":\"id\",\"value\":\"(1,\\\"2\\\",null)\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE (\"id\" IN (?, ?) OR \"id\" IS NULL) "
     "ORDER BY \"id\"" PAGE, "i:1|t:2|i:100|i:0"},
    /* a plain string with `in`: one value (the plan cache must not bind
     * "(1,2)" there: its text chooses the list syntax) */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"in\",\"column\":\"name\",\"value\":\"abc\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"name\" IN (?) ORDER BY \"id\"" PAGE,
     "t:abc|i:100|i:0"},
    /* a number pattern is text (so is any number bound there later) */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"like\",\"column\":\"name\",\"value\":5}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"name\" LIKE ? ESCAPE '\\' ORDER BY \"id\"" PAGE,
     "t:5|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"id\",\"value\":[1,2]}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" IN (?, ?) ORDER BY \"id\"" PAGE,
     "i:1|i:2|i:100|i:0"},
    {__LINE__, P, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"in\",\"column\":\"id\",\"value\":[1,2]}]}",
     "SELECT \"id\" FROM \"public\".\"users\" WHERE \"id\" IN ($1, $2) ORDER BY"
     " \"id\" LIMIT $3 OFFSET $4", "i:1|i:2|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"limit\":1,\"conditions\":"
     "[{\"operator\":\"gt\",\"column\":\"id\",\"value\":1},{\"operator\":"
     "\"gte\",\"column\":\"age\",\"value\":1.5},{\"operator\":\"lt\",\"column\":"
     "\"age\",\"value\":\"200\"},{\"operator\":\"lte\",\"column\":\"active\","
     "\"value\":true}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" > ? AND \"age\" >= ? AND \"age\""
     " < ? AND \"active\" <= ? ORDER BY \"id\"" PAGE,
     "i:1|r:1.5|t:200|b:1|i:1|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"like\",\"column\":\"name\",\"value\":\"B%\"},{\"operator\":"
     "\"ilike\",\"column\":\"name\",\"value\":\"b\\\\_%\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"name\" LIKE ? ESCAPE '\\' AND "
     "lower(\"name\") LIKE lower(?) ESCAPE '\\' ORDER BY \"id\"" PAGE,
     "t:B%|t:b\\_%|i:100|i:0"},
    {__LINE__, P, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"like\",\"column\":\"name\",\"value\":\"B%\"},{\"operator\":"
     "\"ilike\",\"column\":\"name\",\"value\":\"b%\"},{\"operator\":\"like\","
     "\"column\":\"age\",\"value\":\"1%\"}]}",
     "SELECT \"id\" FROM \"public\".\"users\" WHERE \"name\" LIKE $1 ESCAPE '\\'"
     " AND \"name\" ILIKE $2 ESCAPE '\\' AND \"age\"::text LIKE $3 ESCAPE '\\' "
     "ORDER BY \"id\" LIMIT $4 OFFSET $5", "t:B%|t:b%|t:1%|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"is\",\"column\":\"email\",\"value\":null},{\"operator\":"
     "\"is\",\"column\":\"active\",\"value\":true},{\"operator\":\"is\","
     "\"column\":\"active\",\"value\":\"false\"},{\"operator\":\"is\","
     "\"column\":\"name\",\"value\":\"not_null\"},{\"operator\":\"is\","
     "\"column\":\"name\",\"value\":\"notnull\"},{\"operator\":\"is\","
     "\"column\":\"name\",\"value\":\"null\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"email\" IS NULL AND \"active\" IS "
     "TRUE AND \"active\" IS FALSE AND \"name\" IS NOT NULL AND \"name\" IS NOT"
     " NULL AND \"name\" IS NULL ORDER BY \"id\"" PAGE, "i:100|i:0"},
    /* §3.2 expressions: the documented example, 0.2.1's quirk, quoting. */
    {__LINE__, S, F,
     "{\"table_name\":\"people\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"or\",\"value\":\"status.eq.active,and(age.gte.18,"
     "deleted_at.is.null)\"}]}",
     "SELECT \"id\" FROM \"people\" WHERE (\"status\" = ? OR (\"age\" >= ? AND "
     "\"deleted_at\" IS NULL)) ORDER BY \"id\"" PAGE,
     "t:active|i:18|i:100|i:0"},
    {__LINE__, P, F,
     "{\"table_name\":\"people\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"or\",\"value\":\"status.eq.active,and(age.gte.18,"
     "deleted_at.is.null)\"}]}",
     "SELECT \"id\" FROM \"public\".\"people\" WHERE (\"status\" = $1 OR "
     "(\"age\" >= $2 AND \"deleted_at\" IS NULL)) ORDER BY \"id\" LIMIT $3 "
     "OFFSET $4", "t:active|i:18|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"not\",\"value\":\"id.in.1,2\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE NOT (\"id\" IN (?, ?)) ORDER BY \"id\""
     PAGE, "i:1|i:2|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"not\",\"value\":\"id.in.(1,2),name.eq.x\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE NOT (\"id\" IN (?, ?) AND \"name\" = ?)"
     " ORDER BY \"id\"" PAGE, "i:1|i:2|t:x|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"or\",\"value\":\"age.gt.100,and(active.is.false,"
     "email.is.null)\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE (\"age\" > ? OR (\"active\" IS FALSE "
     "AND \"email\" IS NULL)) ORDER BY \"id\"" PAGE, "i:100|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"or\",\"value\":\"name.eq.\\\"a,b)\\\\\\\"\\\",name.like.B*,"
     "name.ilike.\\\"*o*\\\",email.eq.null,email.eq.\\\"null\\\",age.not.eq.5,"
     "not.or(age.lt.0,name.neq.x),active.eq.true,name.eq.a.b.c\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE (\"name\" = ? OR \"name\" LIKE ? ESCAPE"
     " '\\' OR lower(\"name\") LIKE lower(?) ESCAPE '\\' OR \"email\" IS NULL OR"
     " \"email\" = ? OR NOT (\"age\" = ?) OR NOT (\"age\" < ? OR \"name\" <> ?)"
     " OR \"active\" = ? OR \"name\" = ?) ORDER BY \"id\"" PAGE,
     "t:a,b)\"|t:B%|t:%o%|t:null|i:5|i:0|t:x|b:1|t:a.b.c|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"or\",\"value\":\"age.in.(),age.in.(1,null),age.eq.-2.5e1,"
     "name.in.(\\\"a\\\",b)\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE (1 = 0 OR (\"age\" IN (?) OR \"age\" "
     "IS NULL) OR \"age\" = ? OR \"name\" IN (?, ?)) ORDER BY \"id\"" PAGE,
     "i:1|r:-2.5e1|t:a|t:b|i:100|i:0"},
    /* where (object form), read only when conditions is empty. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[],\"where\":"
     "{\"name\":\"Bilbo\",\"age\":{\"gte\":18,\"lt\":200},\"or\":[{\"id\":1},{"
     "\"id\":2,\"email\":null}],\"not\":{\"active\":false},\"id\":[1,2]}}",
     "SELECT \"id\" FROM \"users\" WHERE \"name\" = ? AND \"age\" >= ? AND "
     "\"age\" < ? AND ((\"id\" = ?) OR (\"id\" = ? AND \"email\" IS NULL)) AND "
     "NOT (\"active\" = ?) AND \"id\" IN (?, ?) ORDER BY \"id\"" PAGE,
     "t:Bilbo|i:18|i:200|i:1|i:2|b:0|i:1|i:2|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"id\",\"value\":1}],\"where\":{\"id\":2}}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" = ? ORDER BY \"id\"" PAGE,
     "i:1|i:100|i:0"},
    /* Projection forms. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\" n:name,\\n email AS mail , age "
     "years,id,\"}",
     "SELECT \"name\" AS \"n\", \"email\" AS \"mail\", \"age\" AS \"years\", "
     "\"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":[\"n:name\",\" id as ID \"]}",
     "SELECT \"name\" AS \"n\", \"id\" AS \"ID\" FROM \"users\" ORDER BY \"id\""
     PAGE, "i:100|i:0"},
    /* Sort forms. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"sort_by\":[{\"field\":"
     "\"age\",\"direction\":\"DESC\"},{\"field\":\"name\"},{\"field\":\"id\","
     "\"direction\":\"asc\"}]}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"age\" DESC NULLS FIRST, \"name\" "
     "ASC NULLS LAST, \"id\" ASC NULLS LAST" PAGE, "i:100|i:0"},
    {__LINE__, P, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"sortBy\":{\"field\":"
     "\"age\",\"direction\":\"ascending\"}}",
     "SELECT \"id\" FROM \"public\".\"users\" ORDER BY \"age\" ASC NULLS LAST "
     "LIMIT $1 OFFSET $2", "i:100|i:0"},
    /* Paging. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"page_size\":2,"
     "\"current_page\":2}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:2|i:2"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"limit\":\"10.7\","
     "\"offset\":\" 3 \",\"total_pages\":9}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:10|i:3"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"current_page\":3}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:200"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"limit\":5,\"page_size\":"
     "2,\"current_page\":0,\"offset\":null}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:5|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"limit\":5000}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:1000|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"limit\":1e300}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:1000|i:0"},
    /* Tables: schema forms, views, case. */
    {__LINE__, S, F, "{\"table_name\":\"main.users\",\"columns\":\"id\"}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"schema_name\":\"public\",\"columns\":\"id\"}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
    {__LINE__, P, F, "{\"table_name\":\"app.items\"}",
     "SELECT \"id\" FROM \"app\".\"items\" ORDER BY \"id\" LIMIT $1 OFFSET $2",
     "i:100|i:0"},
    {__LINE__, P, F, "{\"table_name\":\"items\",\"schema_name\":\"app\"}",
     "SELECT \"id\" FROM \"app\".\"items\" ORDER BY \"id\" LIMIT $1 OFFSET $2",
     "i:100|i:0"},
    {__LINE__, S, F, "{\"view_name\":\"v_users\"}",
     "SELECT \"id\", \"name\" FROM \"v_users\"" PAGE, "i:100|i:0"},
    {__LINE__, S, F, "{\"table_name\":\"notes\"}",
     "SELECT \"id\", \"owner\", \"body\" FROM \"notes\" ORDER BY \"id\"" PAGE,
     "i:100|i:0"},
    /* Casts: PostgreSQL applies them, SQLite ignores them. */
    {__LINE__, P, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"id\",\"value\":\"5\",\"column_cast\":"
     "\"text\",\"value_cast\":\"TEXT\"},{\"eq_column\":\"age\",\"eq_value\":"
     "\"7\",\"eq_column_cast\":\"bigint\",\"eq_value_cast\":\"double\"}]}",
     "SELECT \"id\" FROM \"public\".\"users\" WHERE \"id\"::text = $1::text AND"
     " \"age\"::bigint = $2::double precision ORDER BY \"id\" LIMIT $3 OFFSET "
     "$4", "t:5|t:7|i:100|i:0"},
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"id\",\"value\":\"5\",\"column_cast\":"
     "\"evil; drop\"}]}",
     "SELECT \"id\" FROM \"users\" WHERE \"id\" = ? ORDER BY \"id\"" PAGE,
     "t:5|i:100|i:0"},
    /* contains / containedBy. */
    {__LINE__, S, F,
     "{\"table_name\":\"kv\",\"columns\":\"id\",\"conditions\":[{\"operator\":"
     "\"contains\",\"column\":\"doc\",\"value\":[1,\"a\"]}]}",
     "SELECT \"id\" FROM \"kv\" WHERE (CASE WHEN json_valid(\"doc\") THEN CASE"
     " WHEN json_type(\"doc\") = 'array' THEN NOT EXISTS (SELECT 1 FROM "
     "json_each(?) AS a WHERE NOT EXISTS (SELECT 1 FROM json_each(\"doc\") AS "
     "b WHERE b.value IS a.value AND (b.type = a.type OR (b.type IN "
     "('integer', 'real') AND a.type IN ('integer', 'real'))))) ELSE 0 END "
     "ELSE 0 END) ORDER BY \"id\"" PAGE, "j:[1,\"a\"]|i:100|i:0"},
    {__LINE__, P, F,
     "{\"table_name\":\"docs\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"contains\",\"column\":\"data\",\"value\":{\"a\":[1]}},{"
     "\"operator\":\"containedBy\",\"column\":\"tags\",\"value\":[\"x\",\"y\"]}"
     "]}",
     "SELECT \"id\" FROM \"public\".\"docs\" WHERE \"data\"::jsonb @> "
     "$1::jsonb AND \"tags\" <@ ARRAY(SELECT jsonb_array_elements_text("
     "$2::jsonb))::\"text\"[] ORDER BY \"id\" LIMIT $3 OFFSET $4",
     "j:{\"a\":[1]}|j:[\"x\",\"y\"]|i:100|i:0"},
    /* Values bind per §7: JSON text, big integers, exact literals. */
    {__LINE__, S, F,
     "{\"table_name\":\"kv\",\"columns\":\"id\",\"conditions\":[{\"operator\":"
     "\"eq\",\"column\":\"big\",\"value\":9007199254740993},{\"operator\":"
     "\"eq\",\"column\":\"big\",\"value\":99999999999999999999},{\"operator\":"
     "\"eq\",\"column\":\"doc\",\"value\":{\"a\":[1,2]}},{\"operator\":\"eq\","
     "\"column\":\"score\",\"value\":0.10}]}",
     "SELECT \"id\" FROM \"kv\" WHERE \"big\" = ? AND \"big\" = ? AND \"doc\" ="
     " ? AND \"score\" = ? ORDER BY \"id\"" PAGE,
     "i:9007199254740993|r:99999999999999999999|j:{\"a\":[1,2]}|r:0.10|i:100|"
     "i:0"},
    /* Injection attempts in value positions stay parameters. */
    {__LINE__, S, F,
     "{\"table_name\":\"users\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"name\",\"value\":\"x' OR '1'='1\"},{"
     "\"operator\":\"or\",\"value\":\"name.eq.a' OR 1=1 --,name.like.\\\"%'; "
     "DROP TABLE users; --\\\"\"}],\"limit\":\"5\"}",
     "SELECT \"id\" FROM \"users\" WHERE \"name\" = ? AND (\"name\" = ? OR "
     "\"name\" LIKE ? ESCAPE '\\') ORDER BY \"id\"" PAGE,
     "t:x' OR '1'='1|t:a' OR 1=1 --|t:%'; DROP TABLE users; --|i:5|i:0"},
  };
  return RUN_SQL(cases);
}

TEST_IMPL(gw_fetch_count_head) {
  ath_gw_plan_t plan;
  ath_gw_buf_t b = {0};
  /* §8.8 */
  ASSERT_OK(compile(S, F,
                    "{\"table_name\":\"users\",\"count\":\"exact\",\"limit\":1,"
                    "\"sort_by\":{\"field\":\"id\",\"direction\":\"descending\"}}",
                    &plan));
  ASSERT_EQ(1, plan.nstmts);
  ASSERT_EQ(1, plan.has_count);
  ASSERT_EQ(0, plan.head);
  ASSERT_STR_EQ("SELECT COUNT(*) FROM \"users\"", plan.count.sql);
  ASSERT_EQ(0, plan.count.nparams);
  ASSERT_EQ(1, plan.limit);
  ASSERT_EQ(0, plan.offset);
  ath__gw_plan_free(&plan);

  ASSERT_OK(compile(P, F,
                    "{\"table_name\":\"users\",\"head\":true,\"count\":true,"
                    "\"conditions\":[{\"operator\":\"eq\",\"column\":\"active\","
                    "\"value\":true}]}",
                    &plan));
  ASSERT_EQ(0, plan.nstmts);
  ASSERT_EQ(1, plan.head);
  ASSERT_EQ(1, plan.has_count);
  ASSERT_STR_EQ("SELECT COUNT(*) FROM \"public\".\"users\" WHERE \"active\" = $1",
                plan.count.sql);
  render_params(&b, &plan.count);
  ASSERT_STR_EQ("b:1", b.data);
  ASSERT_STR_EQ("true", plan.count.params[0].text); /* PG binds the text */
  ath__gw_buf_free(&b);
  ath__gw_plan_free(&plan);

  /* planned/estimated are exact; false is none; head alone counts. */
  ASSERT_OK(compile(S, F, "{\"table_name\":\"users\",\"count\":\"planned\"}",
                    &plan));
  ASSERT_EQ(1, plan.has_count);
  ath__gw_plan_free(&plan);
  ASSERT_OK(compile(S, F, "{\"table_name\":\"users\",\"count\":false}", &plan));
  ASSERT_EQ(0, plan.has_count);
  ath__gw_plan_free(&plan);
  ASSERT_OK(compile(S, F, "{\"table_name\":\"users\",\"head\":true}", &plan));
  ASSERT_EQ(1, plan.has_count);
  ASSERT_EQ(0, plan.nstmts);
  ath__gw_plan_free(&plan);
  return 0;
}

TEST_IMPL(gw_fetch_shape) {
  ath_gw_plan_t plan;
  extras_t ex = no_extras;
  /* Output columns carry kinds for §7 and aliases as keys. */
  ASSERT_OK(compile(S, F,
                    "{\"table_name\":\"users\",\"columns\":\"a:active, id\"}",
                    &plan));
  ASSERT_EQ(2, plan.ncols);
  ASSERT_STR_EQ("a", plan.cols[0].name);
  ASSERT_STR_EQ("active", plan.cols[0].column->name);
  ASSERT_EQ(ATH_GW_KIND_BOOLEAN, plan.cols[0].column->kind);
  ASSERT_EQ(ATH_GW_FETCH, plan.op);
  ASSERT_STR_EQ("users", plan.table->name);
  ASSERT_EQ(0, plan.limit_lowered);
  ASSERT_EQ(1, plan.strip_nulls); /* default */
  ath__gw_plan_free(&plan);
  ath__gw_plan_free(&plan); /* repeatable */

  /* strip_nulls: body > header > true (§8.7). */
  ex.header = 0;
  ASSERT_OK(compile_ex(S, F, "{\"table_name\":\"users\"}", &ex, &plan));
  ASSERT_EQ(0, plan.strip_nulls);
  ath__gw_plan_free(&plan);
  ex.header = 1;
  ASSERT_OK(compile_ex(S, F, "{\"table_name\":\"users\",\"strip_nulls\":false}",
                       &ex, &plan));
  ASSERT_EQ(0, plan.strip_nulls);
  ath__gw_plan_free(&plan);
  ex.header = 0;
  ASSERT_OK(compile_ex(S, F, "{\"table_name\":\"users\",\"strip_nulls\":null}",
                       &ex, &plan));
  ASSERT_EQ(0, plan.strip_nulls);
  ath__gw_plan_free(&plan);

  /* Lowered limits (§8.14). */
  ASSERT_OK(compile(S, F, "{\"table_name\":\"users\",\"limit\":5000}", &plan));
  ASSERT_EQ(1, plan.limit_lowered);
  ASSERT_EQ(1000, plan.limit);
  ath__gw_plan_free(&plan);
  ASSERT_OK(compile(S, F, "{\"table_name\":\"users\",\"page_size\":1000}",
                    &plan));
  ASSERT_EQ(0, plan.limit_lowered);
  ath__gw_plan_free(&plan);

  /* Other limits. */
  {
    ath_gw_limits_t lim;
    ath__gw_limits_init(&lim);
    ASSERT_EQ(1000, lim.insert_rows);
    ASSERT_EQ(1000, lim.in_list);
    ASSERT_EQ(100, lim.expr_filters);
    ASSERT_EQ(16, lim.expr_depth);
    ASSERT_EQ(100, lim.default_limit);
    ASSERT_EQ(1000, lim.max_limit);
    ASSERT_EQ(500, lim.max_terms);
    ASSERT_EQ(32766, lim.max_params);
    lim.default_limit = 7;
    lim.max_limit = 8;
    ex = no_extras;
    ex.limits = &lim;
    ASSERT_OK(compile_ex(S, F, "{\"table_name\":\"users\"}", &ex, &plan));
    ASSERT_EQ(7, plan.limit);
    ath__gw_plan_free(&plan);
    ASSERT_OK(compile_ex(S, F, "{\"table_name\":\"users\",\"limit\":9}", &ex,
                         &plan));
    ASSERT_EQ(8, plan.limit);
    ASSERT_EQ(1, plan.limit_lowered);
    ath__gw_plan_free(&plan);
  }
  return 0;
}

/* ----------------------------------------------------------------- errors */

TEST_IMPL(gw_errors) {
  static const err_case_t cases[] = {
    /* §8.13 */
    {__LINE__, S, F, "{\"table_name\":", 400, "invalid_json"},
    {__LINE__, S, F, "{\"table_name\":\"secrets\"}", 404, "unknown_table"},
    {__LINE__, S, F, "{\"table_name\":\"nope\"}", 404, "unknown_table"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"id; drop table "
                     "users\"}", 400, "unsafe_select"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"sender:sender_id"
                     "(name)\"}", 400, "relations_unsupported"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"na me\",\"value\":1}]}",
     400, "invalid_identifier"},
    /* Tables. */
    {__LINE__, S, F, "{}", 400, "missing_table"},
    {__LINE__, S, F, "", 400, "missing_table"},
    {__LINE__, S, F, "{\"table_name\":null}", 400, "missing_table"},
    {__LINE__, S, I, "{\"view_name\":\"users\",\"insert_body\":{}}", 400,
     "missing_table"},
    {__LINE__, S, F, "{\"table_name\":5}", 400, "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users; drop table users\"}", 400,
     "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\\\"--\"}", 400,
     "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"a.b.c\"}", 400, "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"other.users\"}", 404, "unknown_table"},
    {__LINE__, P, F, "{\"table_name\":\"USERS\"}", 404, "unknown_table"},
    {__LINE__, P, F, "{\"table_name\":\"items\"}", 404, "unknown_table"},
    {__LINE__, P, F, "{\"table_name\":\"public.items\"}", 404,
     "unknown_table"},
    {__LINE__, S, F, "{\"table_name\":\"main.users\",\"schema_name\":\"x\"}",
     404, "unknown_table"},
    {__LINE__, S, I, "{\"table_name\":\"ro\",\"insert_body\":{}}", 403,
     "forbidden"},
    {__LINE__, S, D, "{\"table_name\":\"v_users\",\"resource_id\":1}", 403,
     "forbidden"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"group_by\":\"name\"}", 400,
     "unsupported_feature"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"aggregation_column\":\"x\"}",
     400, "unsupported_feature"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"time_granularity\":\"day\"}",
     400, "unsupported_feature"},
    /* Columns: identifier pattern, then existence and visibility. */
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"nope\"}", 400,
     "unknown_column"},
    {__LINE__, S, F, "{\"table_name\":\"notes\",\"columns\":\"secret\"}", 400,
     "unknown_column"},
    {__LINE__, S, F, "{\"table_name\":\"notes\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"secret\",\"value\":\"s1\"}]}",
     400, "unknown_column"},
    {__LINE__, P, F, "{\"table_name\":\"users\",\"columns\":\"ID\"}", 400,
     "unknown_column"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"1id\"}", 400,
     "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"a234567890123456"
                     "7890123456789012345678901234567890123456789012345\"}",
     400, "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"id::text\"}", 400,
     "unsafe_select"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"doc->a\"}", 400,
     "unsafe_select"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"count(*)\"}", 400,
     "relations_unsupported"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"\\\"id\\\"\"}",
     400, "unsafe_select"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"id x y\"}", 400,
     "unsafe_select"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"a:b:id\"}", 400,
     "unsafe_select"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"x:\"}", 400,
     "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":[\"id,name\"]}",
     400, "unsafe_select"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":[1]}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":5}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"name \\\"x\\\"\"}",
     400, "unsafe_select"},
    /* Conditions: shapes, operators, values. */
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":{}}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[5]}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"column\":"
                     "\"id\",\"value\":1}]}", 400, "unsupported_operator"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"between\",\"column\":\"id\",\"value\":1}]}",
     400, "unsupported_operator"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq; drop\",\"column\":\"id\",\"value\":1}]}",
     400, "unsupported_operator"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "7,\"column\":\"id\",\"value\":1}]}",
     400, "unsupported_operator"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"value\":1}]}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":5,\"value\":1}]}",
     400, "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"id\\\" OR 1=1 --\",\"value\":1}]}",
     400, "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"id\"}]}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"gt\",\"column\":\"id\",\"value\":null}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"gt\",\"column\":\"id\",\"value\":[1]}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"lte\",\"column\":\"id\",\"value\":{\"a\":1}}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"neq\",\"column\":\"id\",\"value\":[1]}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"like\",\"column\":\"name\",\"value\":null}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"like\",\"column\":\"name\",\"value\":true}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"is\",\"column\":\"name\",\"value\":\"maybe\"}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"is\",\"column\":\"name\",\"value\":1}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"in\",\"column\":\"id\",\"value\":[[1]]}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"in\",\"column\":\"id\",\"value\":\"(1,2\"}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"in\",\"column\":\"id\",\"value\":\"(a)\"}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"kv\",\"conditions\":[{\"operator\":"
                     "\"contains\",\"column\":\"doc\",\"value\":{\"a\":1}}]}",
     400, "unsupported_operator"},
    {__LINE__, S, F, "{\"table_name\":\"kv\",\"conditions\":[{\"operator\":"
                     "\"contains\",\"column\":\"doc\",\"value\":[[1]]}]}",
     400, "unsupported_operator"},
    {__LINE__, P, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"contains\",\"column\":\"name\",\"value\":[1]}]}",
     400, "unsupported_operator"},
    {__LINE__, P, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"id\",\"value\":1,\"column_cast\":"
                     "\"text); drop\"}]}", 400, "invalid_cast"},
    {__LINE__, P, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"id\",\"value\":1,\"value_cast\":"
                     "\"int4\"}]}", 400, "invalid_cast"},
    {__LINE__, P, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"name\",\"value\":{\"a\":1}}]}",
     400, "invalid_value"},
    {__LINE__, P, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"eq\",\"column\":\"name\",\"value\":\"a\\u0000b\"}]}",
     400, "invalid_value"},
    /* Expressions (§3.2, §8.6). */
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age.gt.1)\"}]}",
     400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"\"}]}", 400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age.between.1\"}]}",
     400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age\"}]}", 400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"and(age.gt.1\"}]}",
     400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"name.eq.\\\"x\"}]}",
     400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"name.eq.\\\"x\\\"y\"}]}",
     400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"name.eq.x);drop table users\"}]}",
     400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"na-me.eq.1\"}]}",
     400, "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"nope.eq.1\"}]}", 400, "unknown_column"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age.gt.abc\"}]}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age.gt.0x10\"}]}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"active.eq.yes\"}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age.gt.null\"}]}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age.is.maybe\"}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"age.gt.(1,2)\"}]}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"name.eq.a)\"}]}",
     400, "invalid_expression"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":5}]}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                     "\"or\",\"value\":\"id.in.1,2,name.eq.\\\"x\"}]}",
     400, "invalid_value"},
    /* Modifiers. */
    {__LINE__, S, F, "{\"table_name\":\"users\",\"sort_by\":{\"field\":\"id; "
                     "drop\"}}", 400, "invalid_identifier"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"sort_by\":{\"field\":\"id\","
                     "\"direction\":\"up\"}}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"sort_by\":{\"direction\":"
                     "\"asc\"}}", 400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"sort_by\":5}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"limit\":-1}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"offset\":\"-5\"}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"limit\":\"abc\"}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"limit\":\"0x10\"}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"limit\":\"inf\"}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"limit\":true}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"page_size\":[1]}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"strip_nulls\":\"maybe\"}",
     400, "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"count\":\"bogus\"}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"head\":1}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"where\":[1]}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"where\":{\"id\":{\"between\":"
                     "1}}}", 400, "unsupported_operator"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"where\":{\"or\":{}}}", 400,
     "invalid_value"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"where\":{\"x y\":1}}", 400,
     "invalid_identifier"},
  };
  return RUN_ERR(cases);
}

/* Limits of §6.4, built at run time. */
TEST_IMPL(gw_limits) {
  ath_gw_buf_t b = {0};
  ath_gw_plan_t plan;
  int i;

  /* 1001 rows -> limit_exceeded; 1000 compile. */
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"insert_body\":[");
  for (i = 0; i < 1000; i++)
    ath__gw_buf_puts(&b, i ? ",{\"name\":\"x\"}" : "{\"name\":\"x\"}");
  ath__gw_buf_puts(&b, "]}");
  ASSERT_OK(compile(S, I, b.data, &plan));
  ASSERT_EQ(1, plan.nstmts);
  ASSERT_EQ(1000, plan.stmts[0].nparams);
  ath__gw_plan_free(&plan);
  b.len -= 2;
  ath__gw_buf_puts(&b, ",{\"name\":\"x\"}]}");
  ASSERT_EQ(ATH_EINVAL, compile(S, I, b.data, &plan));
  ASSERT_STR_EQ("limit_exceeded", plan.code);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);

  /* 1001 `in` items, as an array and through eq. */
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                       "\"in\",\"column\":\"id\",\"value\":[0");
  for (i = 1; i < 1000; i++)
    ath__gw_buf_puts(&b, ",1");
  ath__gw_buf_puts(&b, "]}]}");
  ASSERT_OK(compile(S, F, b.data, &plan));
  ath__gw_plan_free(&plan);
  b.len -= 4;
  ath__gw_buf_puts(&b, ",1]}]}");
  ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
  ASSERT_STR_EQ("limit_exceeded", plan.code);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);

  /* 1001 `in` items in an expression. */
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                       "\"or\",\"value\":\"id.in.(0");
  for (i = 1; i < 1001; i++)
    ath__gw_buf_puts(&b, ",1");
  ath__gw_buf_puts(&b, ")\"}]}");
  ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
  ASSERT_STR_EQ("limit_exceeded", plan.code);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);

  /* 100 filters compile, 101 do not (across the request). */
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                       "\"or\",\"value\":\"id.eq.0");
  for (i = 1; i < 50; i++)
    ath__gw_buf_puts(&b, ",id.eq.1");
  ath__gw_buf_puts(&b, "\"},{\"operator\":\"not\",\"value\":\"id.eq.0");
  for (i = 1; i < 50; i++)
    ath__gw_buf_puts(&b, ",id.eq.1");
  ath__gw_buf_puts(&b, "\"}]}");
  ASSERT_OK(compile(S, F, b.data, &plan));
  ath__gw_plan_free(&plan);
  b.len -= 4;
  ath__gw_buf_puts(&b, ",id.eq.1\"}]}");
  ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
  ASSERT_STR_EQ("limit_exceeded", plan.code);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);

  /* Depth: 16 levels compile, 17 do not. */
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                       "\"or\",\"value\":\"");
  for (i = 0; i < 16; i++)
    ath__gw_buf_puts(&b, i % 2 ? "or(" : "and(");
  ath__gw_buf_puts(&b, "id.eq.1");
  for (i = 0; i < 16; i++)
    ath__gw_buf_puts(&b, ")");
  ath__gw_buf_puts(&b, "\"}]}");
  ASSERT_OK(compile(S, F, b.data, &plan));
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                       "\"or\",\"value\":\"");
  for (i = 0; i < 16; i++)
    ath__gw_buf_puts(&b, "not.");
  ath__gw_buf_puts(&b, "and(id.eq.1)\"}]}");
  ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
  ASSERT_STR_EQ("invalid_expression", plan.code);
  ASSERT_STR_EQ("at position 65", plan.hint);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);

  /* 500 filter terms compile and run on SQLite (whose expression trees
   * stop at depth 1000); 501 are limit_exceeded, in conditions or where. */
  {
    sqlite3* db = fixture_db();
    ath_gw_buf_t ids = {0};
    ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"conditions\":[");
    for (i = 0; i < 500; i++)
      ath__gw_buf_puts(&b, i ? ",{\"operator\":\"gt\",\"column\":\"id\","
                               "\"value\":0}"
                             : "{\"operator\":\"or\",\"value\":\"id.gt.0,"
                               "id.lt.0\"}");
    ath__gw_buf_puts(&b, "]}");
    ASSERT_OK(compile(S, F, b.data, &plan));
    ASSERT_EQ(SQLITE_DONE, exec_stmt(db, &plan.stmts[0], &ids));
    ASSERT_STR_EQ("1,2,3", ids.data);
    ath__gw_plan_free(&plan);
    ath__gw_buf_free(&ids);
    sqlite3_close(db);
    b.len -= 2;
    ath__gw_buf_puts(&b, ",{\"operator\":\"gt\",\"column\":\"id\",\"value\":0}]}");
    ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
    ASSERT_STR_EQ("limit_exceeded", plan.code);
    ath__gw_plan_free(&plan);
    ath__gw_buf_free(&b);
    ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"where\":{\"or\":[");
    for (i = 0; i < 501; i++)
      ath__gw_buf_puts(&b, i ? ",{\"id\":1}" : "{\"id\":1}");
    ath__gw_buf_puts(&b, "]}}");
    ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
    ASSERT_STR_EQ("limit_exceeded", plan.code);
    ath__gw_plan_free(&plan);
    ath__gw_buf_free(&b);
  }

  /* More than max_params bound values in one statement: 33 full `in`
   * lists. */
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"conditions\":[");
  for (i = 0; i < 33; i++) {
    int j;
    ath__gw_buf_puts(&b, i ? ",{\"operator\":\"in\",\"column\":\"id\",\"value\":[0"
                           : "{\"operator\":\"in\",\"column\":\"id\",\"value\":[0");
    for (j = 1; j < 1000; j++)
      ath__gw_buf_puts(&b, ",1");
    ath__gw_buf_puts(&b, "]}");
  }
  ath__gw_buf_puts(&b, "]}");
  ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
  ASSERT_STR_EQ("limit_exceeded", plan.code);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);

  /* A body nested 65 deep is invalid_json before anything else. */
  ath__gw_buf_puts(&b, "{\"table_name\":\"users\",\"x\":");
  for (i = 0; i < 64; i++)
    ath__gw_buf_puts(&b, "[");
  for (i = 0; i < 64; i++)
    ath__gw_buf_puts(&b, "]");
  ath__gw_buf_puts(&b, "}");
  ASSERT_EQ(ATH_EINVAL, compile(S, F, b.data, &plan));
  ASSERT_STR_EQ("invalid_json", plan.code);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&b);
  return 0;
}

TEST_IMPL(gw_expression_hint) {
  ath_gw_plan_t plan;
  ASSERT_EQ(ATH_EINVAL,
            compile(S, F,
                    "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                    "\"or\",\"value\":\"age.gt.1)\"}]}",
                    &plan));
  ASSERT_EQ(400, plan.status);
  ASSERT_STR_EQ("invalid_expression", plan.code);
  ASSERT_STR_EQ("at position 9", plan.hint);
  ath__gw_plan_free(&plan);
  ASSERT_EQ(ATH_EINVAL,
            compile(S, F,
                    "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                    "\"or\",\"value\":\"id.eq.1,age.gt.x\"}]}",
                    &plan));
  ASSERT_STR_EQ("invalid_value", plan.code);
  ASSERT_STR_EQ("at position 16", plan.hint);
  ath__gw_plan_free(&plan);
  /* The message never repeats request text. */
  ASSERT_EQ(ATH_EINVAL,
            compile(S, F,
                    "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                    "\"eq\",\"column\":\"evil_col\",\"value\":1}]}",
                    &plan));
  ASSERT_STR_EQ("unknown_column", plan.code);
  ASSERT(strstr(plan.error, "evil_col") == NULL);
  ath__gw_plan_free(&plan);
  ASSERT_EQ(ATH_EINVAL, compile(S, F, "{\"table_name\":\"secrets\"}", &plan));
  {
    ath_gw_plan_t other;
    ASSERT_EQ(ATH_EINVAL, compile(S, F, "{\"table_name\":\"nope\"}", &other));
    ASSERT_STR_EQ(plan.error, other.error); /* unexposed = nonexistent */
    ASSERT_EQ(plan.status, other.status);
    ath__gw_plan_free(&other);
  }
  ath__gw_plan_free(&plan);
  return 0;
}

/* ----------------------------------------------------------------- insert */

TEST_IMPL(gw_insert_sql) {
  static const sql_case_t cases[] = {
    /* §8.9 */
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10,\"name\":\"Sam\","
     "\"email\":\"sam@shire\"},\"columns\":\"id, name\"}",
     "INSERT INTO \"users\" (\"id\", \"name\", \"email\") VALUES (?, ?, ?) "
     "RETURNING \"id\", \"name\"", "i:10|t:Sam|t:sam@shire"},
    {__LINE__, P, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10,\"name\":\"Sam\","
     "\"email\":\"sam@shire\"},\"columns\":\"id, name\"}",
     "INSERT INTO \"public\".\"users\" (\"id\", \"name\", \"email\") VALUES "
     "($1, $2, $3) RETURNING \"id\", \"name\"", "i:10|t:Sam|t:sam@shire"},
    /* No columns: no RETURNING. Catalog column order, last duplicate wins. */
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"name\":\"A\",\"id\":1,"
     "\"name\":\"B\"}}",
     "INSERT INTO \"users\" (\"id\", \"name\") VALUES (?, ?)", "i:1|t:B"},
    /* Rows with different keys: one statement per key set. */
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":[{\"id\":11,\"name\":\"A\"},{"
     "\"id\":12,\"name\":\"B\",\"age\":3},{\"name\":\"C\",\"id\":13}]}",
     "INSERT INTO \"users\" (\"id\", \"name\") VALUES (?, ?), (?, ?) ;; INSERT "
     "INTO \"users\" (\"id\", \"name\", \"age\") VALUES (?, ?, ?)",
     "i:11|t:A|i:13|t:C ;; i:12|t:B|i:3"},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"default_to_null\":true,\"insert_body\":[{"
     "\"id\":11,\"name\":\"A\"},{\"id\":12,\"name\":\"B\",\"age\":3},{\"name\":"
     "\"C\",\"id\":13}]}",
     "INSERT INTO \"users\" (\"id\", \"name\", \"age\") VALUES (?, ?, NULL), "
     "(?, ?, ?), (?, ?, NULL)", "i:11|t:A|i:12|t:B|i:3|i:13|t:C"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{}}",
     "INSERT INTO \"users\" DEFAULT VALUES", ""},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":[{},{\"name\":\"x\"},{}],"
     "\"columns\":\"id\"}",
     "INSERT INTO \"users\" DEFAULT VALUES RETURNING \"id\" ;; INSERT INTO "
     "\"users\" DEFAULT VALUES RETURNING \"id\" ;; INSERT INTO \"users\" "
     "(\"name\") VALUES (?) RETURNING \"id\"", " ;;  ;; t:x"},
    /* head: no RETURNING even with columns. */
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"name\":\"x\"},\"columns\":"
     "\"*\",\"head\":true}",
     "INSERT INTO \"users\" (\"name\") VALUES (?)", "t:x"},
    /* §7: objects/arrays as JSON text; PG arrays as array parameters. */
    {__LINE__, S, I,
     "{\"table_name\":\"kv\",\"insert_body\":{\"id\":1,\"doc\":{\"a\":[1,2]},"
     "\"big\":9007199254740993,\"bin\":[1],\"score\":1.50,\"id\":2}}",
     "INSERT INTO \"kv\" (\"id\", \"big\", \"bin\", \"doc\", \"score\") VALUES "
     "(?, ?, ?, ?, ?)",
     "i:2|i:9007199254740993|j:[1]|j:{\"a\":[1,2]}|r:1.50"},
    {__LINE__, P, I,
     "{\"table_name\":\"docs\",\"insert_body\":{\"id\":\"9007199254740993\","
     "\"tags\":[\"a\",\"b,c\"],\"data\":[1,{\"x\":null}],\"price\":1.10}}",
     "INSERT INTO \"public\".\"docs\" (\"id\", \"tags\", \"data\", \"price\") "
     "VALUES ($1, ARRAY(SELECT jsonb_array_elements_text($2::jsonb))::\"text\""
     "[], $3, $4)",
     "t:9007199254740993|j:[\"a\",\"b,c\"]|j:[1,{\"x\":null}]|r:1.10"},
    /* Upsert (§3.4 rules 1-4, §8.10). */
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10,\"name\":\"Sam G\"},"
     "\"columns\":\"id, name\",\"on_conflict\":\"id\"}",
     "INSERT INTO \"users\" (\"id\", \"name\") VALUES (?, ?) ON CONFLICT "
     "(\"id\") DO UPDATE SET \"name\" = excluded.\"name\" RETURNING \"id\", "
     "\"name\"", "i:10|t:Sam G"},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10,\"name\":\"Sam G\"},"
     "\"columns\":\"id, name\",\"on_conflict\":\"id\",\"update_body\":{"
     "\"name\":\"Rohan\"}}",
     "INSERT INTO \"users\" (\"id\", \"name\") VALUES (?, ?) ON CONFLICT "
     "(\"id\") DO UPDATE SET \"name\" = ? RETURNING \"id\", \"name\"",
     "i:10|t:Sam G|t:Rohan"},
    {__LINE__, P, I,
     "{\"table_name\":\"users\",\"insert_body\":[{\"id\":10,\"name\":\"A\"},{"
     "\"id\":11,\"name\":\"B\"}],\"on_conflict\":[\"id\"],\"update_body\":{"
     "\"name\":\"Rohan\"}}",
     "INSERT INTO \"public\".\"users\" (\"id\", \"name\") VALUES ($1, $2), ($3,"
     " $4) ON CONFLICT (\"id\") DO UPDATE SET \"name\" = $5",
     "i:10|t:A|i:11|t:B|t:Rohan"},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10,\"name\":\"Sam G\"},"
     "\"on_conflict\":\"id\",\"update_body\":{}}",
     "INSERT INTO \"users\" (\"id\", \"name\") VALUES (?, ?) ON CONFLICT "
     "(\"id\") DO NOTHING", "i:10|t:Sam G"},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{},\"on_conflict\":\"id\"}",
     "INSERT INTO \"users\" DEFAULT VALUES", ""},
    {__LINE__, P, I,
     "{\"table_name\":\"users\",\"insert_body\":{},\"on_conflict\":\"id\"}",
     "INSERT INTO \"public\".\"users\" DEFAULT VALUES ON CONFLICT (\"id\") DO "
     "NOTHING", ""},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10},\"on_conflict\":"
     "\"id\"}",
     "INSERT INTO \"users\" (\"id\") VALUES (?) ON CONFLICT (\"id\") DO "
     "NOTHING", "i:10"},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10,\"name\":\"x\"},"
     "\"update_body\":{\"name\":\"y\",\"age\":null}}",
     "INSERT INTO \"users\" (\"id\", \"name\") VALUES (?, ?) ON CONFLICT "
     "(\"id\") DO UPDATE SET \"name\" = ?, \"age\" = ?", "i:10|t:x|t:y|n"},
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"name\":\"x\",\"email\":"
     "\"e\"},\"on_conflict\":\" email \"}",
     "INSERT INTO \"users\" (\"name\", \"email\") VALUES (?, ?) ON CONFLICT "
     "(\"email\") DO UPDATE SET \"name\" = excluded.\"name\"", "t:x|t:e"},
    {__LINE__, S, I,
     "{\"table_name\":\"members\",\"insert_body\":{\"org_id\":1,\"user_id\":2,"
     "\"role\":\"r\"},\"on_conflict\":\"user_id,org_id\"}",
     "INSERT INTO \"members\" (\"org_id\", \"user_id\", \"role\") VALUES (?, ?,"
     " ?) ON CONFLICT (\"user_id\", \"org_id\") DO UPDATE SET \"role\" = "
     "excluded.\"role\"", "i:1|i:2|t:r"},
    /* Injection attempts in insert values stay parameters. */
    {__LINE__, S, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"name\":\"'); DROP TABLE "
     "users; --\"}}",
     "INSERT INTO \"users\" (\"name\") VALUES (?)",
     "t:'); DROP TABLE users; --"},
  };
  return RUN_SQL(cases);
}

TEST_IMPL(gw_insert_errors) {
  static const err_case_t cases[] = {
    {__LINE__, S, I, "{\"table_name\":\"users\"}", 400, "empty_insert"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":null}", 400,
     "empty_insert"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":[]}", 400,
     "empty_insert"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":5}", 400,
     "invalid_value"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":[{},5]}", 400,
     "invalid_value"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{\"nope\":1}}",
     400, "unknown_column"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{\"name) "
                     "VALUES (1); DROP TABLE users; --\":1}}",
     400, "invalid_identifier"},
    {__LINE__, S, I, "{\"table_name\":\"notes\",\"insert_body\":{\"secret\":"
                     "\"x\"}}", 400, "unknown_column"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"on_conflict\":\"name\"}", 400, "invalid_on_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"on_conflict\":\"id,email\"}", 400,
     "invalid_on_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"on_conflict\":\"\"}", 400, "invalid_identifier"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"on_conflict\":[]}", 400, "invalid_on_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"on_conflict\":5}", 400, "invalid_on_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"on_conflict\":\"id) DO NOTHING; --\"}", 400,
     "invalid_identifier"},
    {__LINE__, S, I, "{\"table_name\":\"members\",\"insert_body\":{},"
                     "\"on_conflict\":\"org_id\"}", 400,
     "invalid_on_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"logs\",\"insert_body\":{\"msg\":\"x\"},"
                     "\"update_body\":{\"msg\":\"y\"}}", 400,
     "invalid_on_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"update_body\":[1]}", 400, "invalid_value"},
    {__LINE__, S, I, "{\"table_name\":\"users\",\"insert_body\":{},"
                     "\"default_to_null\":\"perhaps\"}", 400, "invalid_value"},
    {__LINE__, P, I, "{\"table_name\":\"users\",\"insert_body\":{\"name\":[1]}}",
     400, "invalid_value"},
    {__LINE__, P, I, "{\"table_name\":\"users\",\"insert_body\":{\"name\":"
                     "\"\\u0000\"}}", 400, "invalid_value"},
  };
  return RUN_ERR(cases);
}

/* ----------------------------------------------------------------- update */

TEST_IMPL(gw_update_sql) {
  static const sql_case_t cases[] = {
    /* §8.11 */
    {__LINE__, S, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"Samwise\"},"
     "\"conditions\":[{\"operator\":\"eq\",\"column\":\"id\",\"value\":10}],"
     "\"columns\":\"id, name\",\"strip_nulls\":true}",
     "UPDATE \"users\" SET \"name\" = ? WHERE \"id\" = ? RETURNING \"id\", "
     "\"name\"", "t:Samwise|i:10"},
    {__LINE__, P, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"Samwise\",\"age\":"
     "null},\"conditions\":[{\"operator\":\"eq\",\"column\":\"id\",\"value\":"
     "10}]}",
     "UPDATE \"public\".\"users\" SET \"name\" = $1, \"age\" = $2 WHERE \"id\" "
     "= $3", "t:Samwise|n|i:10"},
    /* Bounded through the primary key. */
    {__LINE__, S, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"X\"},\"conditions\":"
     "[{\"operator\":\"eq\",\"column\":\"active\",\"value\":true}],\"sort_by\":"
     "{\"field\":\"id\"},\"limit\":1}",
     "UPDATE \"users\" SET \"name\" = ? WHERE (\"id\") IN (SELECT \"id\" FROM "
     "\"users\" WHERE \"active\" = ? ORDER BY \"id\" ASC NULLS LAST LIMIT ?)",
     "t:X|b:1|i:1"},
    {__LINE__, P, U,
     "{\"table_name\":\"members\",\"update_body\":{\"role\":\"x\"},"
     "\"conditions\":[{\"operator\":\"eq\",\"column\":\"role\",\"value\":\"a\"}"
     "],\"page_size\":2,\"current_page\":2}",
     "UPDATE \"public\".\"members\" SET \"role\" = $1 WHERE (\"org_id\", "
     "\"user_id\") IN (SELECT \"org_id\", \"user_id\" FROM \"public\".\"members\""
     " WHERE \"role\" = $2 ORDER BY \"org_id\", \"user_id\" LIMIT $3 OFFSET $4)",
     "t:x|t:a|i:2|i:2"},
    {__LINE__, S, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"X\"},\"where\":{"
     "\"age\":{\"gt\":1}},\"offset\":1}",
     "UPDATE \"users\" SET \"name\" = ? WHERE (\"id\") IN (SELECT \"id\" FROM "
     "\"users\" WHERE \"age\" > ? ORDER BY \"id\" LIMIT -1 OFFSET ?)",
     "t:X|i:1|i:1"},
    {__LINE__, P, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"X\"},\"where\":{"
     "\"age\":{\"gt\":1}},\"offset\":1}",
     "UPDATE \"public\".\"users\" SET \"name\" = $1 WHERE (\"id\") IN (SELECT "
     "\"id\" FROM \"public\".\"users\" WHERE \"age\" > $2 ORDER BY \"id\" "
     "OFFSET $3)", "t:X|i:1|i:1"},
    /* resource_id names the row (§3.5 -> §3.6). */
    {__LINE__, S, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"x\"},"
     "\"resource_id\":\"3\"}",
     "UPDATE \"users\" SET \"name\" = ? WHERE \"id\" = ?", "t:x|i:3"},
    /* PG array column written from a JSON array. */
    {__LINE__, P, U,
     "{\"table_name\":\"docs\",\"update_body\":{\"tags\":[]},\"resource_id\":"
     "7}",
     "UPDATE \"public\".\"docs\" SET \"tags\" = ARRAY(SELECT "
     "jsonb_array_elements_text($1::jsonb))::\"text\"[] WHERE \"id\" = $2",
     "j:[]|i:7"},
  };
  return RUN_SQL(cases);
}

TEST_IMPL(gw_update_errors) {
  static const err_case_t cases[] = {
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"}}", 400, "unfiltered_update"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"},\"conditions\":[]}", 400, "unfiltered_update"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"},\"where\":{}}", 400, "unfiltered_update"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"},\"limit\":1}", 400, "unfiltered_update"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{},"
                     "\"resource_id\":1}", 400, "empty_update"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"resource_id\":1}", 400,
     "empty_update"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":[1],"
                     "\"resource_id\":1}", 400, "invalid_value"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"nope\":1},"
                     "\"resource_id\":1}", 400, "unknown_column"},
    {__LINE__, S, U, "{\"table_name\":\"logs\",\"update_body\":{\"msg\":\"x\"},"
                     "\"where\":{\"msg\":\"y\"},\"limit\":1}", 400,
     "bounded_mutation_no_unique_identity"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"},\"where\":{\"id\":1},\"sort_by\":{\"field\":"
                     "\"id\"}}", 400, "order_without_bounds"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"},\"where\":{\"id\":1},\"current_page\":2}", 400,
     "page_without_size"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"},\"where\":{\"id\":1},\"limit\":1001}", 400,
     "limit_exceeded"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":"
                     "\"X\"},\"resource_id\":\"1.5\"}", 400, "invalid_value"},
  };
  return RUN_ERR(cases);
}

/* ----------------------------------------------------------------- delete */

TEST_IMPL(gw_delete_sql) {
  static const sql_case_t cases[] = {
    /* §8.12: resource_id next to an eq on id adds nothing. */
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"10\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"id\",\"value\":10,\"eq_column\":\"id\","
     "\"eq_value\":10}],\"columns\":\"*\"}",
     "DELETE FROM \"users\" WHERE \"id\" = ? RETURNING " USERS_ALL, "i:10"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":\"2\"}",
     "DELETE FROM \"users\" WHERE \"id\" = ?", "i:2"},
    {__LINE__, P, D, "{\"table_name\":\"users\",\"resource_id\":2}",
     "DELETE FROM \"public\".\"users\" WHERE \"id\" = $1", "i:2"},
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"name\",\"value\":\"Bilbo\"}]}",
     "DELETE FROM \"users\" WHERE \"name\" = ? AND \"id\" = ?", "t:Bilbo|i:2"},
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"conditions\":[{"
     "\"eq_column\":\"ID\",\"eq_value\":2}]}",
     "DELETE FROM \"users\" WHERE \"id\" = ?", "i:2"},
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"where\":{\"id\":2}}",
     "DELETE FROM \"users\" WHERE \"id\" = ?", "i:2"},
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"conditions\":[{"
     "\"operator\":\"gt\",\"column\":\"id\",\"value\":0}]}",
     "DELETE FROM \"users\" WHERE \"id\" > ? AND \"id\" = ?", "i:0|i:2"},
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"conditions\":[{"
     "\"eq_column\":\"id\",\"eq_value\":null}]}",
     "DELETE FROM \"users\" WHERE \"id\" IS NULL AND \"id\" = ?", "i:2"},
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"where\":{\"id\":null}}",
     "DELETE FROM \"users\" WHERE \"id\" IS NULL AND \"id\" = ?", "i:2"},
    /* The key's type: text keys keep text, numbers become text. */
    {__LINE__, S, D, "{\"table_name\":\"tokens\",\"resource_id\":42}",
     "DELETE FROM \"tokens\" WHERE \"token\" = ?", "t:42"},
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"in\",\"column\":"
     "\"id\",\"value\":[1,2]}],\"limit\":1,\"sort_by\":{\"field\":\"id\","
     "\"direction\":\"desc\"},\"columns\":\"id\"}",
     "DELETE FROM \"users\" WHERE (\"id\") IN (SELECT \"id\" FROM \"users\" "
     "WHERE \"id\" IN (?, ?) ORDER BY \"id\" DESC NULLS FIRST LIMIT ?) "
     "RETURNING \"id\"", "i:1|i:2|i:1"},
  };
  return RUN_SQL(cases);
}

/* `where` groups nest at most expr_depth (16) deep, on both dialects and
 * every operation: 16 compile, 17 are limit_exceeded (issue 13: 60 nested
 * `not` overflowed SQLite's parser stack, a 500). */
TEST_IMPL(gw_where_depth) {
  static const char* const kinds[] = {"not", "and", "or"};
  for (int k = 0; k < 3; k++) {
    for (int depth = 15; depth <= 17; depth++) {
      for (int op = ATH_GW_FETCH; op <= ATH_GW_DELETE; op++) {
        if (op == ATH_GW_INSERT)
          continue;
        ath_gw_buf_t b = {0};
        ath__gw_buf_puts(&b, "{\"table_name\":\"users\",");
        if (op == ATH_GW_UPDATE)
          ath__gw_buf_puts(&b, "\"update_body\":{\"name\":\"X\"},");
        ath__gw_buf_puts(&b, "\"where\":");
        for (int i = 0; i < depth; i++) {
          ath__gw_buf_puts(&b, "{\"");
          ath__gw_buf_puts(&b, kinds[k]);
          ath__gw_buf_puts(&b, k == 0 ? "\":" : "\":[");
        }
        ath__gw_buf_puts(&b, "{\"id\":1}");
        for (int i = 0; i < depth; i++)
          ath__gw_buf_puts(&b, k == 0 ? "}" : ",{\"id\":2}]}");
        ath__gw_buf_puts(&b, "}");
        ASSERT(!b.oom);
        for (int d = 0; d < 2; d++) {
          ath_gw_plan_t plan;
          int rc = compile_ex(d ? P : S, (ath_gw_op_t)op, b.data, &no_extras,
                              &plan);
          if (depth <= 16) {
            if (rc != 0)
              fprintf(stderr, "%s\n%s\n", b.data, plan.error);
            ASSERT_OK(rc);
          } else {
            ASSERT_EQ(ATH_EINVAL, rc);
            ASSERT_EQ(400, plan.status);
            ASSERT_STR_EQ("limit_exceeded", plan.code);
          }
          ath__gw_plan_free(&plan);
        }
        ath__gw_buf_free(&b);
      }
    }
  }
  return 0;
}

TEST_IMPL(gw_delete_errors) {
  static const err_case_t cases[] = {
    {__LINE__, S, D, "{\"table_name\":\"users\"}", 400, "unfiltered_delete"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"conditions\":[]}", 400,
     "unfiltered_delete"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":null}", 400,
     "unfiltered_delete"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":\"abc\"}", 400,
     "invalid_value"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":\"2.5\"}", 400,
     "invalid_value"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":2.0}", 400,
     "invalid_value"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":"
                     "\"99999999999999999999\"}", 400, "invalid_value"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":true}", 400,
     "invalid_value"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"resource_id\":\"1 OR 1=1\"}",
     400, "invalid_value"},
    {__LINE__, S, D, "{\"table_name\":\"logs\",\"resource_id\":\"1\"}", 400,
     "resource_id_unsupported"},
    {__LINE__, S, D, "{\"table_name\":\"members\",\"resource_id\":\"1\"}", 400,
     "resource_id_unsupported"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"where\":{\"id\":1},"
                     "\"page_size\":1001}", 400, "limit_exceeded"},
    /* An empty group anywhere is no filter (issue 13). */
    {__LINE__, S, D, "{\"table_name\":\"users\",\"where\":{\"and\":[]}}", 400,
     "unfiltered_delete"},
    {__LINE__, P, D, "{\"table_name\":\"users\",\"where\":{\"or\":[]}}", 400,
     "unfiltered_delete"},
    {__LINE__, P, D, "{\"table_name\":\"users\",\"where\":{\"or\":[{\"id\":1},"
                     "{}]}}", 400, "unfiltered_delete"},
    {__LINE__, S, D, "{\"table_name\":\"users\",\"where\":{\"not\":{}}}", 400,
     "unfiltered_delete"},
    {__LINE__, P, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":\"X\"},"
                     "\"where\":{\"id\":1,\"or\":[{\"id\":{}}]}}", 400,
     "unfiltered_update"},
    {__LINE__, S, U, "{\"table_name\":\"users\",\"update_body\":{\"name\":\"X\"},"
                     "\"where\":{\"and\":[{\"and\":[]}]}}", 400,
     "unfiltered_update"},
  };
  return RUN_ERR(cases);
}

/* ----------------------------------------------------------------- policy */

TEST_IMPL(gw_policy) {
  static const sql_case_t fetch_cases[] = {
    {__LINE__, S, F,
     "{\"table_name\":\"notes\",\"columns\":\"id\",\"conditions\":[{"
     "\"operator\":\"gt\",\"column\":\"id\",\"value\":0}]}",
     "SELECT \"id\" FROM \"notes\" WHERE \"id\" > ? AND \"owner\" = ? ORDER BY"
     " \"id\"" PAGE, "i:0|t:u1|i:100|i:0"},
    {__LINE__, S, F, "{\"table_name\":\"notes\",\"columns\":\"id\",\"count\":"
                     "true}",
     "SELECT \"id\" FROM \"notes\" WHERE \"owner\" = ? ORDER BY \"id\"" PAGE,
     "t:u1|i:100|i:0"},
    {__LINE__, S, D, "{\"table_name\":\"notes\",\"resource_id\":1}",
     "DELETE FROM \"notes\" WHERE \"owner\" = ? AND \"id\" = ?", "t:u1|i:1"},
    {__LINE__, P, U,
     "{\"table_name\":\"notes\",\"update_body\":{\"body\":\"b\"},"
     "\"conditions\":[{\"operator\":\"eq\",\"column\":\"id\",\"value\":1}]}",
     "UPDATE \"public\".\"notes\" SET \"owner\" = $1, \"body\" = $2 WHERE "
     "\"id\" = $3 AND \"owner\" = $4", "t:u1|t:b|i:1|t:u1"},
    {__LINE__, S, U,
     "{\"table_name\":\"notes\",\"update_body\":{\"body\":\"b\",\"owner\":"
     "\"u1\"},\"resource_id\":1}",
     "UPDATE \"notes\" SET \"owner\" = ?, \"body\" = ? WHERE \"owner\" = ? AND"
     " \"id\" = ?", "t:u1|t:b|t:u1|i:1"},
    {__LINE__, S, I,
     "{\"table_name\":\"notes\",\"insert_body\":[{\"id\":5,\"body\":\"x\"},{"
     "\"id\":6,\"body\":\"y\",\"owner\":\"u1\"}]}",
     "INSERT INTO \"notes\" (\"id\", \"owner\", \"body\") VALUES (?, ?, ?), (?,"
     " ?, ?)", "i:5|t:u1|t:x|i:6|t:u1|t:y"},
    /* The policy guards the upsert's update branch. */
    {__LINE__, S, I,
     "{\"table_name\":\"notes\",\"insert_body\":{\"id\":1,\"body\":\"x\"},"
     "\"on_conflict\":\"id\"}",
     "INSERT INTO \"notes\" (\"id\", \"owner\", \"body\") VALUES (?, ?, ?) ON "
     "CONFLICT (\"id\") DO UPDATE SET \"owner\" = excluded.\"owner\", \"body\" "
     "= excluded.\"body\" WHERE \"notes\".\"owner\" = ?",
     "i:1|t:u1|t:x|t:u1"},
    {__LINE__, P, I,
     "{\"table_name\":\"notes\",\"insert_body\":{\"id\":1,\"body\":\"x\"},"
     "\"update_body\":{\"body\":\"y\"}}",
     "INSERT INTO \"public\".\"notes\" (\"id\", \"owner\", \"body\") VALUES ($1,"
     " $2, $3) ON CONFLICT (\"id\") DO UPDATE SET \"owner\" = $4, \"body\" = $5"
     " WHERE \"notes\".\"owner\" = $6", "i:1|t:u1|t:x|t:u1|t:y|t:u1"},
    {__LINE__, S, I,
     "{\"table_name\":\"notes\",\"insert_body\":{\"id\":1,\"body\":\"x\"},"
     "\"update_body\":{}}",
     "INSERT INTO \"notes\" (\"id\", \"owner\", \"body\") VALUES (?, ?, ?) ON "
     "CONFLICT (\"id\") DO NOTHING", "i:1|t:u1|t:x"},
  };
  static const err_case_t err_cases[] = {
    {__LINE__, S, I, "{\"table_name\":\"notes\",\"insert_body\":{\"owner\":"
                     "\"u2\"}}", 403, "policy_write_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"notes\",\"insert_body\":[{},{\"owner\":"
                     "null}]}", 403, "policy_write_conflict"},
    {__LINE__, S, U, "{\"table_name\":\"notes\",\"update_body\":{\"owner\":"
                     "\"u2\"},\"resource_id\":1}", 403,
     "policy_write_conflict"},
    {__LINE__, S, I, "{\"table_name\":\"notes\",\"insert_body\":{},"
                     "\"update_body\":{\"owner\":\"u2\"}}", 403,
     "policy_write_conflict"},
    /* Policy conditions do not count as a client filter. */
    {__LINE__, S, U, "{\"table_name\":\"notes\",\"update_body\":{\"body\":"
                     "\"x\"}}", 400, "unfiltered_update"},
    {__LINE__, S, D, "{\"table_name\":\"notes\"}", 400, "unfiltered_delete"},
  };
  extras_t ex = no_extras;
  ath_gw_plan_t plan;
  ex.policy_conds = "[{\"operator\":\"eq\",\"column\":\"owner\",\"value\":\"u1\"}]";
  ex.policy_set = "{\"owner\":\"u1\"}";
  ASSERT_OK(run_sql_cases(fetch_cases, sizeof fetch_cases / sizeof fetch_cases[0],
                          &ex));
  ASSERT_OK(run_err_cases(err_cases, sizeof err_cases / sizeof err_cases[0], &ex));

  /* The count carries the policy too. */
  ASSERT_OK(compile_ex(S, F, "{\"table_name\":\"notes\",\"head\":true}", &ex,
                       &plan));
  ASSERT_STR_EQ("SELECT COUNT(*) FROM \"notes\" WHERE \"owner\" = ?",
                plan.count.sql);
  ath__gw_plan_free(&plan);

  /* A broken policy fails closed with 500, whatever the request. */
  ex.policy_conds = "[{\"operator\":\"eq\",\"column\":\"nope\",\"value\":1}]";
  ex.policy_set = NULL;
  ASSERT_EQ(ATH_EINVAL,
            compile_ex(S, F, "{\"table_name\":\"notes\"}", &ex, &plan));
  ASSERT_EQ(500, plan.status);
  ASSERT_STR_EQ("internal_error", plan.code);
  ath__gw_plan_free(&plan);
  ex.policy_conds = "{}";
  ASSERT_EQ(ATH_EINVAL,
            compile_ex(S, F, "{\"table_name\":\"notes\"}", &ex, &plan));
  ASSERT_EQ(500, plan.status);
  ath__gw_plan_free(&plan);
  ex.policy_conds = NULL;
  ex.policy_set = "{\"nope\":1}";
  ASSERT_EQ(ATH_EINVAL, compile_ex(S, I,
                                   "{\"table_name\":\"notes\",\"insert_body\":"
                                   "{}}", &ex, &plan));
  ASSERT_EQ(500, plan.status);
  ath__gw_plan_free(&plan);
  /* ... but a client error found first still answers as such. */
  ex.policy_conds = "[{\"operator\":\"eq\",\"column\":\"nope\",\"value\":1}]";
  ex.policy_set = NULL;
  ASSERT_EQ(ATH_EINVAL, compile_ex(S, F, "{\"table_name\":\"nope\"}", &ex,
                                   &plan));
  ASSERT_EQ(404, plan.status);
  ath__gw_plan_free(&plan);

  /* Upsert flags. */
  ex = no_extras;
  ASSERT_OK(compile_ex(S, I,
                       "{\"table_name\":\"users\",\"insert_body\":{\"id\":1},"
                       "\"on_conflict\":\"id\"}", &ex, &plan));
  ASSERT_EQ(1, plan.upsert);
  ASSERT_EQ(0, plan.upsert_may_update);
  ath__gw_plan_free(&plan);
  ASSERT_OK(compile_ex(S, I,
                       "{\"table_name\":\"users\",\"insert_body\":{\"id\":1,"
                       "\"name\":\"x\"},\"on_conflict\":\"id\"}", &ex, &plan));
  ASSERT_EQ(1, plan.upsert);
  ASSERT_EQ(1, plan.upsert_may_update);
  ASSERT_EQ(0, plan.returning);
  ath__gw_plan_free(&plan);
  ASSERT_OK(compile_ex(S, D, "{\"table_name\":\"users\",\"resource_id\":1,"
                             "\"columns\":\"id\"}", &ex, &plan));
  ASSERT_EQ(1, plan.resource_id_used);
  ASSERT_EQ(1, plan.returning);
  ASSERT_EQ(0, plan.bounded);
  ath__gw_plan_free(&plan);
  return 0;
}

/* ------------------------------------------------------- SQLite execution */

static sqlite3* fixture_db(void) {
  sqlite3* db = NULL;
  char* msg = NULL;
  ASSERT_EQ(SQLITE_OK, sqlite3_open(":memory:", &db));
  if (sqlite3_exec(db, gwc_sqlite_ddl, NULL, NULL, &msg) != SQLITE_OK) {
    fprintf(stderr, "fixture: %s\n", msg);
    abort();
  }
  return db;
}

static void bind_all(sqlite3_stmt* st, const ath_gw_stmt_t* s) {
  size_t i;
  for (i = 0; i < s->nparams; i++) {
    const ath_gw_param_t* p = &s->params[i];
    int k = (int)i + 1, rc = SQLITE_OK;
    switch (p->type) {
      case ATH_GW_P_NULL:
        rc = sqlite3_bind_null(st, k);
        break;
      case ATH_GW_P_BOOL:
      case ATH_GW_P_INT:
        rc = sqlite3_bind_int64(st, k, p->i);
        break;
      case ATH_GW_P_REAL:
        rc = sqlite3_bind_double(st, k, p->d);
        break;
      case ATH_GW_P_TEXT:
      case ATH_GW_P_JSON:
        rc = sqlite3_bind_text(st, k, p->text, (int)p->len, SQLITE_STATIC);
        break;
    }
    ASSERT_EQ(SQLITE_OK, rc);
  }
}

/* Runs one statement; appends the `id` column (or the first column) of each
 * row to `ids`. Returns the sqlite3_step error, or SQLITE_DONE. */
static int exec_stmt(sqlite3* db, const ath_gw_stmt_t* s, ath_gw_buf_t* ids) {
  sqlite3_stmt* st = NULL;
  int rc, col = 0, i;
  if (sqlite3_prepare_v2(db, s->sql, -1, &st, NULL) != SQLITE_OK) {
    fprintf(stderr, "prepare: %s\n  %s\n", sqlite3_errmsg(db), s->sql);
    abort();
  }
  ASSERT_EQ((int)s->nparams, sqlite3_bind_parameter_count(st));
  bind_all(st, s);
  for (i = 0; i < sqlite3_column_count(st); i++)
    if (strcmp(sqlite3_column_name(st, i), "id") == 0)
      col = i;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (ids->len > 0)
      ath__gw_buf_putc(ids, ',');
    ath__gw_buf_puts(ids, (const char*)sqlite3_column_text(st, col) != NULL
                            ? (const char*)sqlite3_column_text(st, col)
                            : "null");
  }
  sqlite3_finalize(st);
  return rc;
}

static char* query_text(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = NULL;
  char* out;
  ASSERT_EQ(SQLITE_OK, sqlite3_prepare_v2(db, sql, -1, &st, NULL));
  ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
  out = strdup(sqlite3_column_text(st, 0) != NULL
                 ? (const char*)sqlite3_column_text(st, 0)
                 : "");
  sqlite3_finalize(st);
  return out;
}

typedef struct {
  int line;
  ath_gw_op_t op;
  const char* body;
  const char* rows;  /* ids of the rows returned, in order */
  long count;        /* the COUNT statement's result, or -1 */
  const char* check; /* NULL, or a query whose text must equal `state` */
  const char* state;
} exec_case_t;

static int run_exec_cases(const exec_case_t* cases, size_t n,
                          const extras_t* ex) {
  size_t i, j;
  int bad = 0;
  for (i = 0; i < n; i++) {
    const exec_case_t* k = &cases[i];
    sqlite3* db = fixture_db();
    ath_gw_plan_t plan;
    ath_gw_buf_t ids = {0};
    int rc = compile_ex(S, k->op, k->body, ex, &plan);
    if (rc != 0) {
      fprintf(stderr, "line %d: compile failed: %s: %s\n", k->line, plan.code,
              plan.error);
      bad++;
      goto next;
    }
    ath__gw_buf_puts(&ids, "");
    for (j = 0; j < plan.nstmts; j++) {
      rc = exec_stmt(db, &plan.stmts[j], &ids);
      if (rc != SQLITE_DONE) {
        fprintf(stderr, "line %d: step: %s\n  %s\n", k->line,
                sqlite3_errmsg(db), plan.stmts[j].sql);
        bad++;
        goto next;
      }
    }
    if (strcmp(ids.data, k->rows) != 0) {
      fprintf(stderr, "line %d: rows: want [%s] got [%s]\n  %s\n", k->line,
              k->rows, ids.data, plan.nstmts ? plan.stmts[0].sql : "");
      bad++;
    }
    if (k->count >= 0) {
      ath_gw_buf_t c = {0};
      ath__gw_buf_puts(&c, "");
      if (!plan.has_count || exec_stmt(db, &plan.count, &c) != SQLITE_DONE ||
          strtol(c.data, NULL, 10) != k->count) {
        fprintf(stderr, "line %d: count: want %ld got [%s]\n", k->line,
                k->count, c.data);
        bad++;
      }
      ath__gw_buf_free(&c);
    }
    if (k->check != NULL) {
      char* got = query_text(db, k->check);
      if (strcmp(got, k->state) != 0) {
        fprintf(stderr, "line %d: state: want [%s] got [%s]\n", k->line,
                k->state, got);
        bad++;
      }
      free(got);
    }
  next:
    ath__gw_buf_free(&ids);
    ath__gw_plan_free(&plan);
    sqlite3_close(db);
  }
  ASSERT_EQ(0, bad);
  return 0;
}

#define USERS_STATE \
  "SELECT group_concat(id || ':' || name || ':' || ifnull(email, '-') || ':' " \
  "|| ifnull(age, '-') || ':' || ifnull(active, '-'), ' ') FROM (SELECT * "    \
  "FROM users ORDER BY id)"
#define FIXTURE_STATE \
  "1:Frodo:frodo@shire:50:1 2:Bilbo:bilbo@shire:111:1 3:Sam:-:38:0"

TEST_IMPL(gw_exec_sqlite) {
  static const exec_case_t cases[] = {
    /* §8.2, §8.4, §8.5 */
    {__LINE__, F,
     "{\"table_name\":\"users\",\"columns\":[\"id\",\"email\"],\"limit\":25,"
     "\"conditions\":[],\"strip_nulls\":true}", "1,2,3", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"columns\":\"id, name\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"name\",\"value\":\"Bilbo\"}]}",
     "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"eq_column\":\"id\","
     "\"eq_value\":2}]}", "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"eq_column\":\"id\","
     "\"eq_value\":\"2\"}]}", "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"eq\",\"column\":"
     "\"email\",\"value\":null}]}", "3", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"neq\",\"column\":"
     "\"email\",\"value\":null}]}", "1,2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"neq\",\"column\":"
     "\"email\",\"value\":\"frodo@shire\"}]}", "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"in\",\"column\":"
     "\"id\",\"value\":[]}]}", "", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"in\",\"column\":"
     "\"email\",\"value\":[\"bilbo@shire\",null]}]}", "2,3", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"gt\",\"column\":"
     "\"id\",\"value\":1}],\"limit\":1}", "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"like\","
     "\"column\":\"name\",\"value\":\"B%\"}]}", "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"like\","
     "\"column\":\"name\",\"value\":\"b%\"}]}", "", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"ilike\","
     "\"column\":\"name\",\"value\":\"b%\"}]}", "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"like\","
     "\"column\":\"email\",\"value\":\"%\\\\_%\"}]}", "", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"is\","
     "\"column\":\"active\",\"value\":false}]}", "3", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"is\","
     "\"column\":\"email\",\"value\":\"not_null\"}]}", "1,2", -1, NULL, NULL},
    /* §8.6 */
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"or\",\"value\":"
     "\"age.gt.100,and(active.is.false,email.is.null)\"}]}", "2,3", -1, NULL,
     NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"not\",\"value\":"
     "\"id.in.1,2\"}]}", "3", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"not\",\"value\":"
     "\"email.eq.frodo@shire\"}]}", "2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"or\",\"value\":"
     "\"name.like.*o,active.eq.false\"}]}", "1,2,3", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"or\",\"value\":"
     "\"name.ilike.*O*,age.in.(38)\"}]}", "1,2,3", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"or\",\"value\":"
     "\"active.eq.true\"},{\"operator\":\"or\",\"value\":\"age.lt.100\"}]}",
     "1", -1, NULL, NULL},
    /* §8.8 */
    {__LINE__, F,
     "{\"table_name\":\"users\",\"count\":\"exact\",\"limit\":1,\"sort_by\":{"
     "\"field\":\"id\",\"direction\":\"descending\"}}", "3", 3, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"head\":true,\"conditions\":[{\"operator\":"
     "\"eq\",\"column\":\"active\",\"value\":true}]}", "", 2, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"page_size\":2,\"current_page\":2}", "3", -1,
     NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"sort_by\":[{\"field\":\"email\",\"direction\":"
     "\"desc\"}]}", "3,1,2", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"sort_by\":[{\"field\":\"email\"}]}", "2,1,3",
     -1, NULL, NULL},
    /* where */
    {__LINE__, F,
     "{\"table_name\":\"users\",\"where\":{\"active\":true,\"or\":[{\"age\":{"
     "\"gte\":100}},{\"email\":\"frodo@shire\"}],\"not\":{\"id\":2}}}", "1",
     -1, NULL, NULL},
    /* contains / containedBy over json_each, with non-JSON cells. */
    {__LINE__, F,
     "{\"table_name\":\"kv\",\"conditions\":[{\"operator\":\"contains\","
     "\"column\":\"doc\",\"value\":[1,2]}]}", "1", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"kv\",\"conditions\":[{\"operator\":\"contains\","
     "\"column\":\"doc\",\"value\":[1,true]}]}", "6", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"kv\",\"conditions\":[{\"operator\":\"contains\","
     "\"column\":\"doc\",\"value\":[]}]}", "1,2,6,7", -1, NULL, NULL},
    {__LINE__, F,
     "{\"table_name\":\"kv\",\"conditions\":[{\"operator\":\"containedBy\","
     "\"column\":\"doc\",\"value\":[1,2,3,\"a\"]}]}", "1,7", -1, NULL, NULL},
    /* §8.9: insert, then the same again fails (no partial rows). */
    {__LINE__, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":10,\"name\":\"Sam\","
     "\"email\":\"sam@shire\"},\"columns\":\"id, name\"}", "10", -1,
     "SELECT group_concat(name) FROM users WHERE id = 10", "Sam"},
    {__LINE__, I,
     "{\"table_name\":\"users\",\"insert_body\":[{\"id\":11,\"name\":\"A\"},{"
     "\"id\":12,\"name\":\"B\",\"age\":3},{\"name\":\"C\",\"id\":13}],"
     "\"columns\":\"*\"}", "11,13,12", -1,
     "SELECT group_concat(id || ':' || ifnull(age, '-'), ' ') FROM (SELECT * "
     "FROM users WHERE id > 10 ORDER BY id)", "11:- 12:3 13:-"},
    {__LINE__, I,
     "{\"table_name\":\"users\",\"insert_body\":[{\"id\":11,\"name\":\"A\"},{"
     "\"id\":12,\"name\":\"B\",\"age\":3}],\"default_to_null\":true}", "", -1,
     "SELECT count(*) FROM users WHERE id > 10", "2"},
    {__LINE__, I,
     "{\"table_name\":\"kv\",\"insert_body\":{\"id\":20,\"big\":"
     "9007199254740993,\"doc\":{\"a\":[1,2]},\"score\":\"2.5\"}}", "", -1,
     "SELECT big || ' ' || doc || ' ' || typeof(score) FROM kv WHERE id = 20",
     "9007199254740993 {\"a\":[1,2]} real"},
    {__LINE__, I, "{\"table_name\":\"logs\",\"insert_body\":[{},{}]}", "", -1,
     "SELECT count(*) FROM logs", "2"},
    {__LINE__, I,
     "{\"table_name\":\"kv\",\"insert_body\":[{},{\"id\":1,\"big\":5}],"
     "\"on_conflict\":\"id\",\"columns\":\"id\"}", "8,1", -1,
     "SELECT group_concat(id || ':' || ifnull(big, '-'), ' ') FROM (SELECT * "
     "FROM kv ORDER BY id)", "1:5 2:- 3:- 4:- 5:- 6:- 7:- 8:-"},
    /* §8.10: upserts. */
    {__LINE__, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":1,\"name\":\"Sam G\"},"
     "\"columns\":\"id, name\",\"on_conflict\":\"id\"}", "1", -1,
     "SELECT name || email FROM users WHERE id = 1", "Sam Gfrodo@shire"},
    {__LINE__, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":1,\"name\":\"Sam G\"},"
     "\"columns\":\"id, name\",\"on_conflict\":\"id\",\"update_body\":{"
     "\"name\":\"Rohan\"}}", "1", -1, "SELECT name FROM users WHERE id = 1",
     "Rohan"},
    {__LINE__, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"id\":1,\"name\":\"Sam G\"},"
     "\"columns\":\"id, name\",\"on_conflict\":\"id\",\"update_body\":{}}", "",
     -1, "SELECT name FROM users WHERE id = 1", "Frodo"},
    {__LINE__, I,
     "{\"table_name\":\"users\",\"insert_body\":{\"name\":\"Frodo B\","
     "\"email\":\"frodo@shire\"},\"on_conflict\":\"email\",\"columns\":\"id\"}",
     "1", -1, "SELECT group_concat(name) FROM users WHERE id = 1", "Frodo B"},
    {__LINE__, I,
     "{\"table_name\":\"members\",\"insert_body\":[{\"org_id\":1,\"user_id\":1,"
     "\"role\":\"z\"},{\"org_id\":3,\"user_id\":3,\"role\":\"n\"}],"
     "\"on_conflict\":\"user_id, org_id\"}", "", -1,
     "SELECT group_concat(org_id || user_id || role, ' ') FROM (SELECT * FROM "
     "members ORDER BY 1, 2)", "11z 12b 21c 22d 33n"},
    /* §8.11 */
    {__LINE__, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"Samwise\"},"
     "\"conditions\":[{\"operator\":\"eq\",\"column\":\"id\",\"value\":3}],"
     "\"columns\":\"id, name\",\"strip_nulls\":true}", "3", -1,
     "SELECT name FROM users WHERE id = 3", "Samwise"},
    {__LINE__, U,
     "{\"table_name\":\"users\",\"update_body\":{\"name\":\"X\"},\"conditions\":"
     "[{\"operator\":\"eq\",\"column\":\"active\",\"value\":true}],\"sort_by\":"
     "{\"field\":\"id\"},\"limit\":1,\"columns\":\"id\"}", "1", -1,
     "SELECT group_concat(name) FROM (SELECT name FROM users ORDER BY id)",
     "X,Bilbo,Sam"},
    {__LINE__, U,
     "{\"table_name\":\"users\",\"update_body\":{\"email\":null,\"age\":\"7\"},"
     "\"resource_id\":\"2\",\"columns\":\"id\"}", "2", -1,
     "SELECT ifnull(email, 'NULL') || typeof(age) FROM users WHERE id = 2",
     "NULLinteger"},
    {__LINE__, U,
     "{\"table_name\":\"members\",\"update_body\":{\"role\":\"x\"},\"where\":{"
     "\"user_id\":2},\"limit\":1,\"offset\":1,\"columns\":\"org_id\"}", "2",
     -1, "SELECT group_concat(role, '') FROM (SELECT * FROM members ORDER BY "
     "1, 2)", "abcx"},
    {__LINE__, U,
     "{\"table_name\":\"users\",\"update_body\":{\"age\":1},\"where\":{\"age\":"
     "{\"gt\":0}},\"offset\":2}", "", -1,
     "SELECT group_concat(age) FROM (SELECT age FROM users ORDER BY id)",
     "50,111,1"},
    /* §8.12 */
    {__LINE__, D,
     "{\"table_name\":\"users\",\"resource_id\":\"3\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"id\",\"value\":3,\"eq_column\":\"id\","
     "\"eq_value\":3}],\"columns\":\"*\"}", "3", -1, USERS_STATE,
     "1:Frodo:frodo@shire:50:1 2:Bilbo:bilbo@shire:111:1"},
    {__LINE__, D, "{\"table_name\":\"users\",\"resource_id\":\"2\"}", "", -1,
     "SELECT group_concat(id) FROM (SELECT id FROM users ORDER BY id)", "1,3"},
    {__LINE__, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"conditions\":[{"
     "\"operator\":\"eq\",\"column\":\"name\",\"value\":\"Frodo\"}]}", "", -1,
     USERS_STATE, FIXTURE_STATE},
    {__LINE__, D,
     "{\"table_name\":\"members\",\"where\":{\"org_id\":2},\"sort_by\":{"
     "\"field\":\"user_id\",\"direction\":\"desc\"},\"limit\":1,\"columns\":"
     "\"user_id\"}", "2", -1,
     "SELECT group_concat(org_id || user_id, ' ') FROM (SELECT * FROM members "
     "ORDER BY 1, 2)", "11 12 21"},
    /* Injection attempts are inert values. */
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"eq\",\"column\":"
     "\"name\",\"value\":\"x' OR '1'='1\"}]}", "", -1, USERS_STATE,
     FIXTURE_STATE},
    {__LINE__, F,
     "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"or\",\"value\":"
     "\"name.eq.\\\"'); DROP TABLE users; --\\\",id.eq.1\"}]}", "1", -1,
     USERS_STATE, FIXTURE_STATE},
  };
  return run_exec_cases(cases, sizeof cases / sizeof cases[0], &no_extras);
}

TEST_IMPL(gw_exec_policy) {
  static const exec_case_t cases[] = {
    {__LINE__, F, "{\"table_name\":\"notes\"}", "1", -1, NULL, NULL},
    {__LINE__, D, "{\"table_name\":\"notes\",\"resource_id\":2}", "", -1,
     "SELECT count(*) FROM notes", "2"},
    {__LINE__, U,
     "{\"table_name\":\"notes\",\"update_body\":{\"body\":\"b\"},\"where\":{"
     "\"id\":{\"gte\":1}}}", "", -1,
     "SELECT group_concat(body) FROM (SELECT body FROM notes ORDER BY id)",
     "b,two"},
    /* The upsert's update branch leaves other owners' rows alone. */
    {__LINE__, I,
     "{\"table_name\":\"notes\",\"insert_body\":[{\"id\":1,\"body\":\"n1\"},{"
     "\"id\":2,\"body\":\"n2\"},{\"id\":3,\"body\":\"n3\"}],\"on_conflict\":"
     "\"id\",\"columns\":\"id\"}", "1,3", -1,
     "SELECT group_concat(id || owner || body, ' ') FROM (SELECT * FROM notes "
     "ORDER BY id)", "1u1n1 2u2two 3u1n3"},
  };
  extras_t ex = no_extras;
  ex.policy_conds = "[{\"operator\":\"eq\",\"column\":\"owner\",\"value\":\"u1\"}]";
  ex.policy_set = "{\"owner\":\"u1\"}";
  return run_exec_cases(cases, sizeof cases / sizeof cases[0], &ex);
}

/* A second insert of the same row fails as a whole (§8.9): the server
 * maps the constraint error; the compiler's part is one statement. */
TEST_IMPL(gw_exec_unique) {
  sqlite3* db = fixture_db();
  ath_gw_plan_t plan;
  ath_gw_buf_t ids = {0};
  ASSERT_OK(compile(S, I,
                    "{\"table_name\":\"users\",\"insert_body\":[{\"id\":10,"
                    "\"name\":\"Sam\"},{\"id\":1,\"name\":\"dup\"}]}",
                    &plan));
  ASSERT_EQ(1, plan.nstmts);
  ASSERT_EQ(SQLITE_CONSTRAINT, exec_stmt(db, &plan.stmts[0], &ids));
  {
    char* n = query_text(db, "SELECT count(*) FROM users");
    ASSERT_STR_EQ("3", n);
    free(n);
  }
  ath__gw_buf_free(&ids);
  ath__gw_plan_free(&plan);
  sqlite3_close(db);
  return 0;
}

/* ------------------------------------------------------------- injection */

/* Appends `s` as a JSON string literal. */
static void json_str(ath_gw_buf_t* b, const char* s) {
  ath__gw_buf_putc(b, '"');
  for (; *s != '\0'; s++) {
    if (*s == '"' || *s == '\\') {
      ath__gw_buf_putc(b, '\\');
      ath__gw_buf_putc(b, *s);
    } else if ((unsigned char)*s < 0x20) {
      char e[8];
      snprintf(e, sizeof e, "\\u%04x", (unsigned char)*s);
      ath__gw_buf_puts(b, e);
    } else {
      ath__gw_buf_putc(b, *s);
    }
  }
  ath__gw_buf_putc(b, '"');
}

/* Builds `tmpl` with every "@@" replaced by `payload` as a JSON string. */
static void fill(ath_gw_buf_t* b, const char* tmpl, const char* payload) {
  const char* at;
  ath__gw_buf_puts(b, "");
  while ((at = strstr(tmpl, "@@")) != NULL) {
    ath__gw_buf_put(b, tmpl, (size_t)(at - tmpl));
    json_str(b, payload);
    tmpl = at + 2;
  }
  ath__gw_buf_puts(b, tmpl);
}

static const char* const payloads[] = {
  "x\"; DROP TABLE users; --",
  "id) OR (1=1",
  "' OR '1'='1",
  "id\" OR \"1\"=\"1",
  "users--",
  "id/**/",
  "id::text",
  "$1",
  "?",
  "id;",
  "a b",
  "\"nope\"",
  "id\n--",
  "\xc3\xa9t\xc3\xa9",
  "1; DELETE FROM users",
};

/* Every identifier position refuses what is not an identifier; every value
 * position binds it. Neither ever puts the text into SQL. */
TEST_IMPL(gw_injection) {
  static const struct {
    ath_gw_op_t op;
    const char* tmpl;
  } ident_pos[] = {
    {F, "{\"table_name\":@@}"},
    {F, "{\"view_name\":@@}"},
    {F, "{\"table_name\":\"users\",\"schema_name\":@@}"},
    {F, "{\"table_name\":\"users\",\"columns\":@@}"},
    {F, "{\"table_name\":\"users\",\"columns\":[@@]}"},
    {F, "{\"table_name\":\"users\",\"select\":@@}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"eq\","
        "\"column\":@@,\"value\":1}]}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"eq_column\":@@,"
        "\"eq_value\":1}]}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":@@,"
        "\"column\":\"id\",\"value\":1}]}"},
    {F, "{\"table_name\":\"users\",\"sort_by\":{\"field\":@@}}"},
    {F, "{\"table_name\":\"users\",\"sort_by\":{\"field\":\"id\",\"direction\":"
        "@@}}"},
    {F, "{\"table_name\":\"users\",\"where\":{@@:1}}"},
    {F, "{\"table_name\":\"users\",\"where\":{\"id\":{@@:1}}}"},
    {F, "{\"table_name\":\"users\",\"limit\":@@}"},
    {F, "{\"table_name\":\"users\",\"offset\":@@}"},
    {F, "{\"table_name\":\"users\",\"count\":@@}"},
    {I, "{\"table_name\":\"users\",\"insert_body\":{@@:1}}"},
    {I, "{\"table_name\":\"users\",\"insert_body\":{\"id\":1},\"on_conflict\":"
        "@@}"},
    {I, "{\"table_name\":\"users\",\"insert_body\":{\"id\":1},\"update_body\":{"
        "@@:1}}"},
    {U, "{\"table_name\":\"users\",\"update_body\":{@@:1},\"resource_id\":1}"},
    {D, "{\"table_name\":\"users\",\"resource_id\":@@}"},
  };
  static const struct {
    ath_gw_op_t op;
    const char* tmpl;
  } value_pos[] = {
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"eq\","
        "\"column\":\"name\",\"value\":@@}]}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"eq_column\":\"name\","
        "\"eq_value\":@@}]}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"like\","
        "\"column\":\"name\",\"value\":@@}]}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"ilike\","
        "\"column\":\"name\",\"value\":@@}]}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"in\","
        "\"column\":\"name\",\"value\":[@@,@@]}]}"},
    {F, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":\"neq\","
        "\"column\":\"name\",\"value\":@@}]}"},
    {F, "{\"table_name\":\"users\",\"where\":{\"name\":@@}}"},
    {F, "{\"table_name\":\"users\",\"where\":{\"name\":{\"gt\":@@}}}"},
    {I, "{\"table_name\":\"users\",\"insert_body\":{\"name\":@@}}"},
    {I, "{\"table_name\":\"users\",\"insert_body\":[{\"name\":@@},{\"email\":"
        "@@}],\"on_conflict\":\"email\",\"update_body\":{\"name\":@@}}"},
    {U, "{\"table_name\":\"users\",\"update_body\":{\"name\":@@},"
        "\"conditions\":[{\"operator\":\"eq\",\"column\":\"email\",\"value\":"
        "@@}]}"},
    {D, "{\"table_name\":\"tokens\",\"resource_id\":@@}"},
  };
  size_t i, j, k;
  int d;
  for (d = 0; d < 2; d++) {
    ath_gw_dialect_t dia = d ? P : S;
    for (j = 0; j < sizeof payloads / sizeof payloads[0]; j++) {
      for (i = 0; i < sizeof ident_pos / sizeof ident_pos[0]; i++) {
        ath_gw_buf_t b = {0};
        ath_gw_plan_t plan;
        fill(&b, ident_pos[i].tmpl, payloads[j]);
        if (compile(dia, ident_pos[i].op, b.data, &plan) == 0) {
          fprintf(stderr, "identifier position compiled: %s -> %s\n", b.data,
                  plan.stmts[0].sql);
          abort();
        }
        ASSERT(plan.status == 400 || plan.status == 404);
        if (strstr(plan.error, payloads[j]) != NULL) {
          fprintf(stderr, "error repeats the request: %s -> %s\n", b.data,
                  plan.error);
          abort();
        }
        ath__gw_plan_free(&plan);
        ath__gw_buf_free(&b);
      }
      for (i = 0; i < sizeof value_pos / sizeof value_pos[0]; i++) {
        ath_gw_buf_t b = {0};
        ath_gw_plan_t plan;
        int found = 0;
        fill(&b, value_pos[i].tmpl, payloads[j]);
        if (compile(dia, value_pos[i].op, b.data, &plan) != 0) {
          fprintf(stderr, "value position failed: %s -> %s %s\n", b.data,
                  plan.code, plan.error);
          abort();
        }
        for (k = 0; k < plan.nstmts; k++) {
          size_t m;
          ASSERT(strstr(plan.stmts[k].sql, payloads[j]) == NULL ||
                 strlen(payloads[j]) < 3);
          for (m = 0; m < plan.stmts[k].nparams; m++)
            if (plan.stmts[k].params[m].text != NULL &&
                strcmp(plan.stmts[k].params[m].text, payloads[j]) == 0)
              found = 1;
        }
        ASSERT(found);
        ath__gw_plan_free(&plan);
        ath__gw_buf_free(&b);
      }
      /* Expression strings: as a column the payload is refused; quoted as
       * a value it is bound. */
      {
        ath_gw_buf_t e = {0}, b = {0};
        ath_gw_plan_t plan;
        const char* p;
        ath__gw_buf_puts(&e, payloads[j]);
        ath__gw_buf_puts(&e, ".eq.1");
        fill(&b, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                 "\"or\",\"value\":@@}]}", e.data);
        ASSERT_EQ(ATH_EINVAL, compile(dia, F, b.data, &plan));
        ath__gw_plan_free(&plan);
        ath__gw_buf_free(&e);
        ath__gw_buf_free(&b);
        ath__gw_buf_puts(&e, "name.eq.\"");
        for (p = payloads[j]; *p != '\0'; p++) {
          if (*p == '"' || *p == '\\')
            ath__gw_buf_putc(&e, '\\');
          ath__gw_buf_putc(&e, *p);
        }
        ath__gw_buf_puts(&e, "\"");
        fill(&b, "{\"table_name\":\"users\",\"conditions\":[{\"operator\":"
                 "\"not\",\"value\":@@}]}", e.data);
        ASSERT_OK(compile(dia, F, b.data, &plan));
        ASSERT_EQ(3, plan.stmts[0].nparams);
        ASSERT_STR_EQ(payloads[j], plan.stmts[0].params[0].text);
        ath__gw_plan_free(&plan);
        ath__gw_buf_free(&e);
        ath__gw_buf_free(&b);
      }
    }
  }
  return 0;
}

/* §8.14: a 1500-row table without a limit gives 100 rows; limit 5000 gives
 * 1000 and the lowered flag. */
TEST_IMPL(gw_exec_limits) {
  sqlite3* db = fixture_db();
  ath_gw_plan_t plan;
  ath_gw_buf_t ids = {0};
  size_t n = 0, i;
  ASSERT_EQ(SQLITE_OK,
            sqlite3_exec(db,
                         "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + "
                         "1 FROM c WHERE x < 1500) INSERT INTO logs SELECT x, "
                         "NULL FROM c;",
                         NULL, NULL, NULL));
  ASSERT_OK(compile(S, F, "{\"table_name\":\"logs\"}", &plan));
  ASSERT_EQ(SQLITE_DONE, exec_stmt(db, &plan.stmts[0], &ids));
  for (i = 0; i < ids.len; i++)
    n += ids.data[i] == ',';
  ASSERT_EQ(100, n + 1);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&ids);
  ASSERT_OK(compile(S, F, "{\"table_name\":\"logs\",\"limit\":5000}", &plan));
  ASSERT_EQ(1, plan.limit_lowered);
  ASSERT_EQ(1000, plan.limit);
  ASSERT_EQ(SQLITE_DONE, exec_stmt(db, &plan.stmts[0], &ids));
  for (i = 0, n = 0; i < ids.len; i++)
    n += ids.data[i] == ',';
  ASSERT_EQ(1000, n + 1);
  ath__gw_plan_free(&plan);
  ath__gw_buf_free(&ids);
  sqlite3_close(db);
  return 0;
}

/* X-Publish-Event: mutations return every visible column; the answer keeps
 * the client's projection (cols), mapped by column from row_cols. */
TEST_IMPL(gw_full_rows) {
  static const sql_case_t cases[] = {
    {__LINE__, S, D,
     "{\"table_name\":\"users\",\"resource_id\":\"2\",\"columns\":\"x:id\"}",
     "DELETE FROM \"users\" WHERE \"id\" = ? RETURNING " USERS_ALL, "i:2"},
    {__LINE__, S, I, "{\"table_name\":\"notes\",\"insert_body\":{\"id\":1}}",
     "INSERT INTO \"notes\" (\"id\") VALUES (?) RETURNING \"id\", \"owner\", "
     "\"body\"", "i:1"},
    {__LINE__, P, U,
     "{\"table_name\":\"users\",\"update_body\":{\"age\":1},\"where\":{"
     "\"id\":1},\"columns\":\"name\"}",
     "UPDATE \"public\".\"users\" SET \"age\" = $1 WHERE \"id\" = $2 RETURNING "
     USERS_ALL, "i:1|i:1"},
    {__LINE__, S, F, "{\"table_name\":\"users\",\"columns\":\"id\"}",
     "SELECT \"id\" FROM \"users\" ORDER BY \"id\"" PAGE, "i:100|i:0"},
  };
  extras_t ex = no_extras;
  ath_gw_plan_t plan;
  ex.full_rows = 1;
  ASSERT_OK(run_sql_cases(cases, sizeof cases / sizeof cases[0], &ex));

  ASSERT_OK(compile_ex(S, D,
                       "{\"table_name\":\"users\",\"resource_id\":2,\"columns\":"
                       "\"x:id, name\"}", &ex, &plan));
  ASSERT_EQ(1, plan.returning);
  ASSERT_EQ(1, plan.data_rows);
  ASSERT_EQ(2, plan.ncols);
  ASSERT_STR_EQ("x", plan.cols[0].name);
  ASSERT_EQ(5, plan.nrow_cols);
  ASSERT(plan.cols[0].column == plan.row_cols[0].column);
  ASSERT(plan.cols[1].column == plan.row_cols[1].column);
  ath__gw_plan_free(&plan);

  /* Without columns the answer's data is [], the rows still come back. */
  ASSERT_OK(compile_ex(S, I, "{\"table_name\":\"users\",\"insert_body\":{"
                             "\"name\":\"x\"},\"head\":true}", &ex, &plan));
  ASSERT_EQ(1, plan.returning);
  ASSERT_EQ(0, plan.data_rows);
  ASSERT_EQ(5, plan.nrow_cols);
  ath__gw_plan_free(&plan);

  /* Without full_rows, row_cols is cols. */
  ASSERT_OK(compile(S, U, "{\"table_name\":\"users\",\"update_body\":{"
                          "\"age\":1},\"resource_id\":1}", &plan));
  ASSERT_EQ(0, plan.returning);
  ASSERT_EQ(0, plan.data_rows);
  ath__gw_plan_free(&plan);
  ASSERT_OK(compile(S, F, "{\"table_name\":\"users\",\"columns\":\"n:name\"}",
                    &plan));
  ASSERT(plan.row_cols == plan.cols);
  ASSERT_EQ(1, plan.data_rows);
  ath__gw_plan_free(&plan);
  return 0;
}

/* The plan cache (engine/gateway/gw_cache.c) by hand: values of one shape
 * share a plan and stay bound values, the cache is bounded, and clearing
 * it or another catalog misses. */
TEST_IMPL(gw_plan_cache) {
  static const char* const shape =
    "{\"table_name\":\"users\",\"columns\":\"id, email\",\"conditions\":[{"
    "\"operator\":\"eq\",\"column\":\"email\",\"value\":\"%s\"}],\"limit\":%d}";
  ath_gwpc_t* pc = ath__gwpc_new(4);
  parsed_t r;
  ath_gw_plan_t plan, bound;
  void *mem = NULL, *inuse = NULL;
  ath_gwpe_t *e, *held;
  char body[512];
  const ath_gw_catalog_t other = gwc_catalog; /* another catalog's address */
  ath_gwpc_key_t k = {&gwc_catalog, S, F, 0, -1, 0, NULL, 0, NULL, 0};
  int i;
  ASSERT_NOT_NULL(pc);
  snprintf(body, sizeof body, shape, "a@x.io", 10);
  ASSERT_OK(parse_req(S, F, body, &no_extras, &r));
  ASSERT_OK(ath__gw_compile(&r.req, &plan));
  ath__gwpc_shape(pc, &k, r.req.body);
  ASSERT_NULL(ath__gwpc_get(pc, &bound, &mem));
  held = ath__gwpc_put(pc, &plan, &mem);
  ASSERT_NOT_NULL(held);
  ASSERT_EQ(1, (long)plan.stmts[0].nparams == 3);
  ASSERT_EQ(0, strcmp(plan.stmts[0].params[0].text, "a@x.io"));
  free(mem);
  parsed_free(&r);

  /* another value, an injection attempt: the same SQL, the text bound */
  snprintf(body, sizeof body, shape, "x' OR '1'='1", 10);
  ASSERT_OK(parse_req(S, F, body, &no_extras, &r));
  ath__gwpc_shape(pc, &k, r.req.body);
  e = ath__gwpc_get(pc, &bound, &mem);
  ASSERT(e == held);
  ASSERT_EQ(0, strcmp(bound.stmts[0].sql, "SELECT \"id\", \"email\" FROM \"users\" WHERE \"email\" = ? "
                                          "ORDER BY \"id\" LIMIT ? OFFSET ?"));
  ASSERT_EQ(ATH_GW_P_TEXT, bound.stmts[0].params[0].type);
  ASSERT_EQ(0, strcmp(bound.stmts[0].params[0].text, "x' OR '1'='1"));
  ASSERT_EQ(10, bound.stmts[0].params[1].i);
  ath__gwpc_release(pc, e);
  free(mem);
  /* ... on another catalog: not this plan */
  k.cat = &other;
  ath__gwpc_shape(pc, &k, r.req.body);
  ASSERT_NULL(ath__gwpc_get(pc, &bound, &mem));
  k.cat = &gwc_catalog;
  /* held by a request (bound, inuse) across what follows */
  ath__gwpc_shape(pc, &k, r.req.body);
  ASSERT(ath__gwpc_get(pc, &bound, &inuse) == held);
  ath__gwpc_release(pc, held); /* the put's reference */
  parsed_t kept = r;            /* inuse's values point into it */

  /* bounded: four plans, the least recently used goes; one still in use
   * (held) stays readable until released */
  for (i = 1; i <= 6; i++) {
    snprintf(body, sizeof body, shape, "b@x.io", i); /* the limit is literal */
    ASSERT_OK(parse_req(S, F, body, &no_extras, &r));
    ASSERT_OK(ath__gw_compile(&r.req, &plan));
    ath__gwpc_shape(pc, &k, r.req.body);
    ASSERT_NULL(ath__gwpc_get(pc, &bound, &mem));
    e = ath__gwpc_put(pc, &plan, &mem);
    ASSERT_NOT_NULL(e);
    ath__gwpc_release(pc, e);
    free(mem);
    parsed_free(&r);
    ASSERT_LE((long)ath__gwpc_stats(pc).entries, 4);
  }
  ASSERT_EQ(4, (long)ath__gwpc_stats(pc).entries);
  /* evicted while in use: still whole, freed by the release */
  ASSERT_EQ(0, strcmp(bound.stmts[0].sql, "SELECT \"id\", \"email\" FROM \"users\" WHERE \"email\" = ? "
                                          "ORDER BY \"id\" LIMIT ? OFFSET ?"));
  ASSERT_EQ(0, strcmp(bound.cols[1].name, "email"));
  ath__gwpc_release(pc, held);
  free(inuse);
  parsed_free(&kept);
  snprintf(body, sizeof body, shape, "c@x.io", 1);
  ASSERT_OK(parse_req(S, F, body, &no_extras, &r));
  ath__gwpc_shape(pc, &k, r.req.body);
  ASSERT_NULL(ath__gwpc_get(pc, &bound, &mem)); /* limit 1: evicted */
  parsed_free(&r);
  snprintf(body, sizeof body, shape, "c@x.io", 6);
  ASSERT_OK(parse_req(S, F, body, &no_extras, &r));
  ath__gwpc_shape(pc, &k, r.req.body);
  e = ath__gwpc_get(pc, &bound, &mem);
  ASSERT_NOT_NULL(e);
  ASSERT_EQ(0, strcmp(bound.stmts[0].params[0].text, "c@x.io"));
  ath__gwpc_release(pc, e);
  free(mem);
  /* emptied (a catalog refresh): a miss */
  ath__gwpc_clear(pc);
  ASSERT_EQ(0, (long)ath__gwpc_stats(pc).entries);
  ath__gwpc_shape(pc, &k, r.req.body);
  ASSERT_NULL(ath__gwpc_get(pc, &bound, &mem));
  parsed_free(&r);
  ath__gwpc_free(pc);
  return 0;
}
