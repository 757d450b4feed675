/* The gateway request compiler (engine/gateway/gw_plan.h, GATEWAY §3).
 *
 * SQL is built in "fragments": text in which every bound value is the byte
 * PH (0x01), plus the parameters in the order of their markers. Fragments
 * nest (a WHERE clause is built once and copied into the statement and its
 * COUNT), and a finished statement turns each marker into `?` or `$n`. No
 * request text ever reaches a fragment except identifiers that matched
 * ^[A-Za-z_][A-Za-z0-9_]{0,62}$ and were found in the catalog, and those are
 * written with the catalog's spelling. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "athena.h"
#include "gw_plan.h"

#define PH '\x01' /* a parameter's place in a fragment */

/* Paging values above this are clamped (limits) before any arithmetic, so
 * products cannot overflow int64. */
#define PAGE_MAX ((int64_t)1 << 53)

void ath__gw_limits_init(ath_gw_limits_t* l) {
  l->insert_rows = 1000;
  l->in_list = 1000;
  l->expr_filters = 100;
  l->expr_depth = 16;
  l->default_limit = 100;
  l->max_limit = 1000;
  l->max_terms = 500;
  l->max_params = 32766;
}

const char* ath__gw_op_name(ath_gw_op_t op) {
  switch (op) {
    case ATH_GW_FETCH:
      return "fetch";
    case ATH_GW_INSERT:
      return "insert";
    case ATH_GW_UPDATE:
      return "update";
    case ATH_GW_DELETE:
      return "delete";
  }
  return "?";
}

/* ============================================================ fragments */

typedef struct {
  ath_gw_buf_t sql;
  ath_gw_param_t* p;
  size_t n, cap;
  int oom;
} frag_t;

static void frag_free(frag_t* f) {
  ath__gw_buf_free(&f->sql);
  free(f->p);
  memset(f, 0, sizeof *f);
}

static void put(frag_t* f, const char* s) {
  ath__gw_buf_puts(&f->sql, s);
}

/* Appends a parameter (already owned by the plan's arena) and its marker. */
static void put_param(frag_t* f, const ath_gw_param_t* p) {
  if (f->n == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 8;
    ath_gw_param_t* q = realloc(f->p, cap * sizeof *q);
    if (q == NULL) {
      f->oom = 1;
      return;
    }
    f->p = q;
    f->cap = cap;
  }
  f->p[f->n++] = *p;
  ath__gw_buf_putc(&f->sql, PH);
}

static void put_frag(frag_t* f, const frag_t* g) {
  size_t i, k = 0;
  /* Copy text and parameters in step so the markers keep their order. */
  for (i = 0; i < g->sql.len; i++) {
    if (g->sql.data[i] == PH) {
      put_param(f, &g->p[k++]);
    } else {
      size_t j = i;
      while (j < g->sql.len && g->sql.data[j] != PH)
        j++;
      ath__gw_buf_put(&f->sql, g->sql.data + i, j - i);
      i = j - 1;
    }
  }
  f->oom |= g->oom;
}

/* Writes `name` as a double-quoted identifier. Catalog names that reach
 * here matched the identifier pattern, so doubling quotes never happens in
 * practice; it keeps the function correct on its own. */
static void put_ident(frag_t* f, const char* name) {
  const char* q;
  ath__gw_buf_putc(&f->sql, '"');
  while ((q = strchr(name, '"')) != NULL) {
    ath__gw_buf_put(&f->sql, name, (size_t)(q - name));
    ath__gw_buf_put(&f->sql, "\"\"", 2);
    name = q + 1;
  }
  ath__gw_buf_puts(&f->sql, name);
  ath__gw_buf_putc(&f->sql, '"');
}

/* ============================================================== context */

typedef struct {
  const ath_gw_request_t* req;
  ath_gw_limits_t lim;
  ath_gw_dialect_t d;
  ath_gw_op_t op;
  ath_gw_plan_t* plan;
  const ath_gw_table_t* t;
  int qualify;        /* write columns as "table"."col" (upsert WHERE) */
  int in_policy;      /* compiling the policy's values: errors are ours */
  int64_t nfilters;   /* expression filters so far */
  int64_t terms;      /* filter terms so far (limits.max_terms) */
  int64_t groups;     /* and/or/not groups open in `where` (expr_depth) */
  int oom;            /* an allocation failed: the result is ATH_ENOMEM */
} cx_t;

static int set_error(ath_gw_plan_t* plan, int status, const char* code,
                     const char* hint, const char* fmt, va_list ap) {
  if (plan->code != NULL)
    return ATH_EINVAL; /* the first error stands */
  plan->status = status;
  plan->code = code;
  vsnprintf(plan->error, sizeof plan->error, fmt, ap);
  snprintf(plan->hint, sizeof plan->hint, "%s", hint != NULL ? hint : "");
  return ATH_EINVAL;
}

/* Records a client error (the first one wins) and returns ATH_EINVAL. While
 * compiling the policy's conditions or `set`, any error is the operator's
 * and becomes 500 internal_error (fail closed, nothing about it leaks). */
static int fail_hint(cx_t* c, int status, const char* code, const char* hint,
                     const char* fmt, ...) {
  va_list ap;
  int rc;
  if (c->in_policy) {
    if (c->plan->code == NULL) {
      c->plan->status = 500;
      c->plan->code = "internal_error";
      snprintf(c->plan->error, sizeof c->plan->error,
               "the table's policy could not be applied");
      c->plan->hint[0] = '\0';
    }
    return ATH_EINVAL;
  }
  va_start(ap, fmt);
  rc = set_error(c->plan, status, code, hint, fmt, ap);
  va_end(ap);
  return rc;
}

#define fail(c, status, code, ...) fail_hint(c, status, code, NULL, __VA_ARGS__)

static int nomem(cx_t* c) {
  ath_gw_plan_t* p = c->plan;
  c->oom = 1;
  p->status = 500;
  p->code = "internal_error";
  snprintf(p->error, sizeof p->error, "out of memory");
  p->hint[0] = '\0';
  return ATH_ENOMEM;
}

/* Checks a fragment's sticky allocation failure. */
static int frag_ok(cx_t* c, const frag_t* f) {
  if (f->oom || f->sql.oom)
    return nomem(c);
  return 0;
}

/* ========================================================== identifiers */

static int ident_ok(const char* s, size_t n) {
  size_t i;
  if (n == 0 || n > 63)
    return 0;
  if (!(isalpha((unsigned char)s[0]) || s[0] == '_') ||
      (unsigned char)s[0] >= 0x80)
    return 0;
  for (i = 1; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x80 || !(isalnum(ch) || ch == '_'))
      return 0;
  }
  return 1;
}

static int name_eq(const cx_t* c, const char* cat, const char* s, size_t n) {
  if (strlen(cat) != n)
    return 0;
  /* Exact case on PostgreSQL; SQLite identifiers fold ASCII case. */
  return c->d == ATH_GW_PG ? memcmp(cat, s, n) == 0
                           : strncasecmp(cat, s, n) == 0;
}

/* Resolves column text `s` of table c->t for the request position `where`
 * (a path like "conditions[0].column"). Returns 0 and sets *idx, or fails
 * with invalid_identifier or unknown_column. */
static int find_col(cx_t* c, const char* s, size_t n, const char* where,
                    int* idx) {
  size_t i;
  if (!ident_ok(s, n))
    return fail(c, 400, "invalid_identifier",
                "%s is not a valid column name", where);
  for (i = 0; i < c->t->ncolumns; i++) {
    const ath_gw_column_t* col = &c->t->columns[i];
    if (!col->hidden && name_eq(c, col->name, s, n)) {
      *idx = (int)i;
      return 0;
    }
  }
  return fail(c, 400, "unknown_column", "%s names no column of this table",
              where);
}

static const ath_gw_column_t* col_at(const cx_t* c, int idx) {
  return &c->t->columns[idx];
}

static void put_col(cx_t* c, frag_t* f, int idx) {
  if (c->qualify) {
    put_ident(f, c->t->name);
    put(f, ".");
  }
  put_ident(f, col_at(c, idx)->name);
}

static void put_table(cx_t* c, frag_t* f) {
  if (c->d == ATH_GW_PG && c->t->schema != NULL && c->t->schema[0] != '\0') {
    put_ident(f, c->t->schema);
    put(f, ".");
  }
  put_ident(f, c->t->name);
}

/* ============================================================ paths */

typedef struct {
  char s[96];
} path_t;

static path_t pathf(const char* fmt, ...) {
  path_t p;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p.s, sizeof p.s, fmt, ap);
  va_end(ap);
  return p;
}

/* ============================================================== values */

static int is_int_text(const char* s, size_t n) {
  size_t i = 0;
  if (n > 0 && (s[0] == '-' || s[0] == '+'))
    i = 1;
  if (i == n)
    return 0;
  for (; i < n; i++)
    if (!isdigit((unsigned char)s[i]))
      return 0;
  return 1;
}

/* Parses an integer literal into *v; 0 when it does not fit int64. */
static int parse_i64(const char* s, int64_t* v) {
  char* end;
  long long x;
  errno = 0;
  x = strtoll(s, &end, 10);
  if (errno != 0 || *end != '\0')
    return 0;
  *v = (int64_t)x;
  return 1;
}

/* A decimal number (JSON-like, optional sign, fraction, exponent), finite.
 * Rejects what strtod also takes: hex, inf, nan, blanks. */
static int parse_num(const char* s, size_t n, double* v) {
  size_t i;
  char* end;
  if (n == 0)
    return 0;
  for (i = 0; i < n; i++)
    if (!(isdigit((unsigned char)s[i]) || s[i] == '-' || s[i] == '+' ||
          s[i] == '.' || s[i] == 'e' || s[i] == 'E'))
      return 0;
  if (!isdigit((unsigned char)s[n - 1]) && s[n - 1] != '.')
    return 0;
  errno = 0;
  *v = ath__gw_strtod(s, &end);
  return end == s + n && isfinite(*v);
}

static const char* arena_copy(cx_t* c, const char* s, size_t n) {
  return ath__gw_arena_strdup(&c->plan->arena_, s, n);
}

static int p_text(cx_t* c, ath_gw_param_t* p, ath_gw_ptype_t type,
                  const char* s, size_t n) {
  memset(p, 0, sizeof *p);
  p->type = type;
  p->text = arena_copy(c, s, n);
  p->len = n;
  return p->text == NULL ? nomem(c) : 0;
}

static void p_null(ath_gw_param_t* p) {
  memset(p, 0, sizeof *p);
  p->type = ATH_GW_P_NULL;
}

static void p_bool(ath_gw_param_t* p, int b) {
  memset(p, 0, sizeof *p);
  p->type = ATH_GW_P_BOOL;
  p->i = b;
  p->text = b ? "true" : "false";
  p->len = strlen(p->text);
}

/* Types number parameter p from its text (NUL-terminated, valid): INTEGER
 * when integral within int64, else REAL; PostgreSQL binds the text as
 * received (§7). */
static void number_type(ath_gw_param_t* p, int integral) {
  int64_t i;
  if (integral && parse_i64(p->text, &i)) {
    p->type = ATH_GW_P_INT;
    p->i = i;
  } else {
    p->type = ATH_GW_P_REAL;
    p->d = ath__gw_strtod(p->text, NULL);
  }
}

/* A number literal (`s` is NUL-terminated and valid). */
static int p_number(cx_t* c, ath_gw_param_t* p, const char* s, size_t n,
                    int integral) {
  if (p_text(c, p, ATH_GW_P_REAL, s, n) != 0)
    return ATH_ENOMEM;
  number_type(p, integral);
  return 0;
}

static int text_ok(cx_t* c, const char* s, size_t n, const char* where) {
  /* PostgreSQL text cannot hold NUL (JSON "\u0000"). */
  if (c->d == ATH_GW_PG && memchr(s, '\0', n) != NULL)
    return fail(c, 400, "invalid_value", "%s holds a NUL character", where);
  return 0;
}

/* JSON text of an object or array value, as a parameter of `type`. */
static int p_json(cx_t* c, ath_gw_param_t* p, const ath_gj_t* v,
                  ath_gw_ptype_t type) {
  ath_gw_buf_t b = {0};
  int rc;
  ath__gj_write(&b, v);
  if (b.oom) {
    ath__gw_buf_free(&b);
    return nomem(c);
  }
  rc = p_text(c, p, type, b.data, b.len);
  ath__gw_buf_free(&b);
  return rc;
}

/* Scalar `v` as a parameter whose text points into `v`, its `src`; -1 when
 * it is no scalar, or text PostgreSQL cannot hold (a NUL). The one
 * conversion of request scalars: the compiler's and the plan cache's. */
static int scalar_param(ath_gw_dialect_t d, const ath_gj_t* v,
                        ath_gw_param_t* p) {
  switch (v->type) {
    case ATH_GJ_NULL:
      p_null(p);
      break;
    case ATH_GJ_BOOL:
      p_bool(p, v->boolean);
      break;
    case ATH_GJ_NUMBER:
    case ATH_GJ_STRING:
      /* PostgreSQL text cannot hold NUL (JSON "\u0000") */
      if (v->type == ATH_GJ_STRING && d == ATH_GW_PG &&
          memchr(v->str, '\0', v->len) != NULL)
        return -1;
      memset(p, 0, sizeof *p);
      p->type = ATH_GW_P_TEXT;
      p->text = v->str;
      p->len = v->len;
      if (v->type == ATH_GJ_NUMBER)
        number_type(p, v->integral);
      break;
    default:
      return -1;
  }
  p->src = v;
  return 0;
}

int ath__gw_param_rebind(ath_gw_dialect_t d, const ath_gw_param_t* tmpl,
                         const ath_gj_t* v, ath_gw_param_t* out) {
  if (scalar_param(d, v, out) != 0)
    return -1;
  out->src = NULL;
  if (tmpl->type == ATH_GW_P_TEXT &&
      (out->type == ATH_GW_P_INT || out->type == ATH_GW_P_REAL))
    out->type = ATH_GW_P_TEXT; /* `like`: a number pattern is text */
  if ((tmpl->type == ATH_GW_P_NULL) != (out->type == ATH_GW_P_NULL) ||
      (tmpl->type == ATH_GW_P_BOOL) != (out->type == ATH_GW_P_BOOL) ||
      (tmpl->type == ATH_GW_P_TEXT) != (out->type == ATH_GW_P_TEXT))
    return -1; /* another JSON type than the plan's: compiled anew */
  return 0;
}

/* Converts a JSON value bound against column `col` (§7). Objects and arrays
 * become JSON text; on PostgreSQL only json/jsonb columns take them (array
 * columns are handled by put_value). */
static int json_param(cx_t* c, const ath_gj_t* v, const ath_gw_column_t* col,
                      const char* where, ath_gw_param_t* p) {
  switch (v->type) {
    case ATH_GJ_NULL:
    case ATH_GJ_BOOL:
    case ATH_GJ_NUMBER:
    case ATH_GJ_STRING:
      if (scalar_param(c->d, v, p) != 0)
        return text_ok(c, v->str, v->len, where) != 0 ? ATH_EINVAL : nomem(c);
      /* the plan owns its values: the request's text is copied */
      if (p->text != NULL && p->type != ATH_GW_P_BOOL &&
          (p->text = arena_copy(c, v->str, v->len)) == NULL)
        return nomem(c);
      return 0;
    case ATH_GJ_ARRAY:
    case ATH_GJ_OBJECT:
      if (c->d == ATH_GW_PG && col != NULL && col->kind != ATH_GW_KIND_JSON)
        return fail(c, 400, "invalid_value",
                    "%s: column \"%s\" does not take a JSON %s", where,
                    col->name, v->type == ATH_GJ_ARRAY ? "array" : "object");
      return p_json(c, p, v, ATH_GW_P_JSON);
  }
  return fail(c, 400, "invalid_value", "%s has an unsupported value", where);
}

/* A value written into column `idx` (insert rows, update_body, upsert):
 * PostgreSQL array columns take a JSON array as an array parameter. */
static int put_value(cx_t* c, frag_t* f, int idx, const ath_gj_t* v,
                     const char* where) {
  const ath_gw_column_t* col = col_at(c, idx);
  ath_gw_param_t p;
  if (c->d == ATH_GW_PG && col->kind == ATH_GW_KIND_ARRAY &&
      v->type == ATH_GJ_ARRAY) {
    const char* et = col->elem_type;
    if (et == NULL || !ident_ok(et, strlen(et)))
      return fail(c, 400, "invalid_value",
                  "%s: column \"%s\" has an unsupported array type", where,
                  col->name);
    if (p_json(c, &p, v, ATH_GW_P_JSON) != 0)
      return ATH_ENOMEM;
    put(f, "ARRAY(SELECT jsonb_array_elements_text(");
    put_param(f, &p);
    put(f, "::jsonb))::");
    put_ident(f, et);
    put(f, "[]");
    return 0;
  }
  if (json_param(c, v, col, where, &p) != 0)
    return ATH_EINVAL;
  put_param(f, &p);
  return 0;
}

/* ========================================================== casts (PG) */

static const char* const pg_casts[][2] = {
  {"text", "text"},         {"uuid", "uuid"},
  {"int", "int"},           {"integer", "integer"},
  {"bigint", "bigint"},     {"boolean", "boolean"},
  {"bool", "bool"},         {"numeric", "numeric"},
  {"float", "float"},       {"double", "double precision"},
  {"json", "json"},         {"jsonb", "jsonb"},
  {"date", "date"},         {"timestamp", "timestamp"},
  {"timestamptz", "timestamptz"},
};

/* Reads cast hint `key` of condition `cond` into *out (NULL: none). SQLite
 * ignores cast hints; PostgreSQL accepts the fixed list only. */
static int read_cast(cx_t* c, const ath_gj_t* cond, const char* key,
                     const char* where, const char** out) {
  const ath_gj_t* v = ath__gj_field(cond, key);
  size_t i;
  *out = NULL;
  if (v == NULL || c->d != ATH_GW_PG)
    return 0;
  if (v->type == ATH_GJ_STRING)
    for (i = 0; i < sizeof pg_casts / sizeof pg_casts[0]; i++)
      if (strlen(pg_casts[i][0]) == v->len &&
          strncasecmp(pg_casts[i][0], v->str, v->len) == 0) {
        *out = pg_casts[i][1];
        return 0;
      }
  return fail(c, 400, "invalid_cast", "%s.%s is not a supported cast", where,
              key);
}

/* ============================================================ operators */

typedef enum {
  OP_EQ, OP_NEQ, OP_GT, OP_GTE, OP_LT, OP_LTE, OP_LIKE, OP_ILIKE, OP_IS,
  OP_IN, OP_CONTAINS, OP_CONTAINED_BY, OP_OR, OP_NOT, OP_NONE
} op_t;

static const char* const op_names[] = {
  "eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "is", "in",
  "contains", "containedby", "or", "not",
};

static op_t op_lookup(const char* s, size_t n) {
  size_t i;
  for (i = 0; i < sizeof op_names / sizeof op_names[0]; i++)
    if (strlen(op_names[i]) == n && strncasecmp(op_names[i], s, n) == 0)
      return (op_t)i;
  return OP_NONE;
}

static const char* cmp_sql(op_t op) {
  switch (op) {
    case OP_EQ:
      return " = ";
    case OP_NEQ:
      return " <> ";
    case OP_GT:
      return " > ";
    case OP_GTE:
      return " >= ";
    case OP_LT:
      return " < ";
    default:
      return " <= ";
  }
}

/* How a condition's column is written: "c", "c"::cast. */
typedef struct {
  int idx;
  const char* col_cast;
  const char* val_cast;
} target_t;

static void put_target(cx_t* c, frag_t* f, const target_t* tg) {
  put_col(c, f, tg->idx);
  if (tg->col_cast != NULL) {
    put(f, "::");
    put(f, tg->col_cast);
  }
}

static void put_val(frag_t* f, const target_t* tg, const ath_gw_param_t* p) {
  put_param(f, p);
  if (tg->val_cast != NULL) {
    put(f, "::");
    put(f, tg->val_cast);
  }
}

/* Writes `op` over already converted values: one value, or a list (`in`,
 * `eq` with an array). A NULL parameter means SQL NULL. */
static int emit_values(cx_t* c, frag_t* f, op_t op, const target_t* tg,
                       const ath_gw_param_t* vals, size_t n, int list,
                       const char* where) {
  size_t i, k = 0;
  int has_null = 0;
  if (op == OP_EQ && list)
    op = OP_IN;
  if (op == OP_IN) {
    if ((int64_t)n > c->lim.in_list)
      return fail(c, 400, "limit_exceeded",
                  "%s has more than %lld items", where,
                  (long long)c->lim.in_list);
    for (i = 0; i < n; i++)
      if (vals[i].type == ATH_GW_P_NULL)
        has_null = 1;
      else
        k++;
    if (n == 0) {
      put(f, "1 = 0");
      return 0;
    }
    if (k == 0) {
      put_target(c, f, tg);
      put(f, " IS NULL");
      return 0;
    }
    if (has_null)
      put(f, "(");
    put_target(c, f, tg);
    put(f, " IN (");
    for (i = 0, k = 0; i < n; i++) {
      if (vals[i].type == ATH_GW_P_NULL)
        continue;
      if (k++ > 0)
        put(f, ", ");
      put_val(f, tg, &vals[i]);
    }
    put(f, ")");
    if (has_null) {
      put(f, " OR ");
      put_target(c, f, tg);
      put(f, " IS NULL)");
    }
    return 0;
  }
  if (list || n != 1)
    return fail(c, 400, "invalid_value", "%s needs a single value", where);
  if (vals[0].type == ATH_GW_P_NULL) {
    if (op == OP_EQ || op == OP_NEQ) {
      put_target(c, f, tg);
      put(f, op == OP_EQ ? " IS NULL" : " IS NOT NULL");
      return 0;
    }
    return fail(c, 400, "invalid_value", "%s cannot compare with null", where);
  }
  if (op == OP_LIKE || op == OP_ILIKE) {
    const ath_gw_column_t* col = col_at(c, tg->idx);
    ath_gw_param_t p = vals[0];
    if (p.type != ATH_GW_P_TEXT && p.type != ATH_GW_P_INT &&
        p.type != ATH_GW_P_REAL)
      return fail(c, 400, "invalid_value", "%s needs a text pattern", where);
    p.type = ATH_GW_P_TEXT; /* a number pattern matches its digits */
    if (c->d == ATH_GW_SQLITE && op == OP_ILIKE) {
      put(f, "lower(");
      put_col(c, f, tg->idx);
      put(f, ") LIKE lower(");
      put_param(f, &p);
      put(f, ") ESCAPE '\\'");
      return 0;
    }
    put_col(c, f, tg->idx);
    if (tg->col_cast != NULL) {
      put(f, "::");
      put(f, tg->col_cast);
    } else if (c->d == ATH_GW_PG && col->kind != ATH_GW_KIND_TEXT) {
      put(f, "::text");
    }
    put(f, op == OP_LIKE ? " LIKE " : " ILIKE ");
    put_param(f, &p);
    put(f, " ESCAPE '\\'");
    return 0;
  }
  if (vals[0].type == ATH_GW_P_JSON && op != OP_EQ && op != OP_NEQ)
    return fail(c, 400, "invalid_value", "%s needs a scalar value", where);
  put_target(c, f, tg);
  put(f, cmp_sql(op));
  put_val(f, tg, &vals[0]);
  return 0;
}

/* `is`: IS NULL / TRUE / FALSE / NOT NULL from a keyword. */
static int emit_is(cx_t* c, frag_t* f, const target_t* tg, const char* s,
                   size_t n, int is_null, const char* where) {
  const char* sql = NULL;
  if (is_null || (n == 4 && strncasecmp(s, "null", 4) == 0))
    sql = " IS NULL";
  else if (n == 4 && strncasecmp(s, "true", 4) == 0)
    sql = " IS TRUE";
  else if (n == 5 && strncasecmp(s, "false", 5) == 0)
    sql = " IS FALSE";
  else if ((n == 8 && strncasecmp(s, "not_null", 8) == 0) ||
           (n == 7 && strncasecmp(s, "notnull", 7) == 0))
    sql = " IS NOT NULL";
  if (sql == NULL)
    return fail(c, 400, "invalid_value",
                "%s: `is` takes null, true, false or not_null", where);
  put_target(c, f, tg);
  put(f, sql);
  return 0;
}

/* contains / containedBy (§3.1). */
static int emit_contains(cx_t* c, frag_t* f, op_t op, const target_t* tg,
                         const ath_gj_t* v, const char* where) {
  const ath_gw_column_t* col = col_at(c, tg->idx);
  ath_gw_param_t p;
  const ath_gj_t* it;
  if (c->d == ATH_GW_PG) {
    const char* sym = op == OP_CONTAINS ? " @> " : " <@ ";
    if (v == NULL || v->type == ATH_GJ_NULL)
      return fail(c, 400, "invalid_value", "%s needs a value", where);
    if (col->kind == ATH_GW_KIND_JSON) {
      if (p_json(c, &p, v, ATH_GW_P_JSON) != 0)
        return ATH_ENOMEM;
      put_col(c, f, tg->idx);
      put(f, "::jsonb");
      put(f, sym);
      put_param(f, &p);
      put(f, "::jsonb");
      return 0;
    }
    if (col->kind == ATH_GW_KIND_ARRAY && v->type == ATH_GJ_ARRAY) {
      const char* et = col->elem_type;
      if (et == NULL || !ident_ok(et, strlen(et)))
        return fail(c, 400, "unsupported_operator",
                    "%s: column \"%s\" has an unsupported array type", where,
                    col->name);
      if (p_json(c, &p, v, ATH_GW_P_JSON) != 0)
        return ATH_ENOMEM;
      put_col(c, f, tg->idx);
      put(f, sym);
      put(f, "ARRAY(SELECT jsonb_array_elements_text(");
      put_param(f, &p);
      put(f, "::jsonb))::");
      put_ident(f, et);
      put(f, "[]");
      return 0;
    }
    return fail(c, 400, "unsupported_operator",
                "%s: column \"%s\" does not support %s", where, col->name,
                op == OP_CONTAINS ? "contains" : "containedBy");
  }
  /* SQLite: the cell is a JSON array, the value an array of scalars. */
  if (v == NULL || v->type != ATH_GJ_ARRAY)
    return fail(c, 400, "unsupported_operator",
                "%s: on this database %s takes an array of scalars", where,
                op == OP_CONTAINS ? "contains" : "containedBy");
  for (it = v->first; it != NULL; it = it->next)
    if (it->type == ATH_GJ_ARRAY || it->type == ATH_GJ_OBJECT)
      return fail(c, 400, "unsupported_operator",
                  "%s: on this database %s takes an array of scalars", where,
                  op == OP_CONTAINS ? "contains" : "containedBy");
  if (p_json(c, &p, v, ATH_GW_P_JSON) != 0)
    return ATH_ENOMEM;
  /* CASE, not AND: json_each() raises on text that is not JSON, and only
   * CASE promises not to evaluate the branch it does not take. Items match
   * by value and JSON type (integers and reals compare as numbers). */
  put(f, "(CASE WHEN json_valid(");
  put_col(c, f, tg->idx);
  put(f, ") THEN CASE WHEN json_type(");
  put_col(c, f, tg->idx);
  put(f, ") = 'array' THEN NOT EXISTS (SELECT 1 FROM json_each(");
  if (op == OP_CONTAINS)
    put_param(f, &p);
  else
    put_col(c, f, tg->idx);
  put(f, ") AS a WHERE NOT EXISTS (SELECT 1 FROM json_each(");
  if (op == OP_CONTAINS)
    put_col(c, f, tg->idx);
  else
    put_param(f, &p);
  put(f, ") AS b WHERE b.value IS a.value AND (b.type = a.type OR "
         "(b.type IN ('integer', 'real') AND a.type IN ('integer', 'real')))"
         ")) ELSE 0 END ELSE 0 END)");
  return 0;
}

/* ================================================= expression strings */

/* Converts expression atom `a` for column `col` (§3.2): bare `null` is SQL
 * NULL; numeric columns need a number, boolean ones true/false; quoted atoms
 * and other columns keep the text; like/ilike turn `*` into `%`. */
static int atom_param(cx_t* c, const ath_gx_atom_t* a,
                      const ath_gw_column_t* col, op_t op, const char* where,
                      ath_gw_param_t* p) {
  char hint[48];
  double d;
  snprintf(hint, sizeof hint, "at position %zu", a->pos + 1);
  if (!a->quoted && a->len == 4 && strncasecmp(a->s, "null", 4) == 0) {
    p_null(p);
    return 0;
  }
  if (text_ok(c, a->s, a->len, where) != 0)
    return ATH_EINVAL;
  if (op == OP_LIKE || op == OP_ILIKE) {
    char* s;
    size_t i;
    if (p_text(c, p, ATH_GW_P_TEXT, a->s, a->len) != 0)
      return ATH_ENOMEM;
    s = (char*)p->text;
    for (i = 0; i < a->len; i++)
      if (s[i] == '*')
        s[i] = '%';
    return 0;
  }
  if (a->quoted)
    return p_text(c, p, ATH_GW_P_TEXT, a->s, a->len);
  switch (col->kind) {
    case ATH_GW_KIND_INTEGER:
    case ATH_GW_KIND_REAL:
    case ATH_GW_KIND_NUMERIC:
      if (is_int_text(a->s, a->len) || parse_num(a->s, a->len, &d))
        return p_number(c, p, a->s, a->len, is_int_text(a->s, a->len));
      return fail_hint(c, 400, "invalid_value", hint,
                       "%s: column \"%s\" needs a number", where, col->name);
    case ATH_GW_KIND_BOOLEAN:
      if (a->len == 4 && strncasecmp(a->s, "true", 4) == 0) {
        p_bool(p, 1);
        return 0;
      }
      if (a->len == 5 && strncasecmp(a->s, "false", 5) == 0) {
        p_bool(p, 0);
        return 0;
      }
      return fail_hint(c, 400, "invalid_value", hint,
                       "%s: column \"%s\" needs true or false", where,
                       col->name);
    default:
      return p_text(c, p, ATH_GW_P_TEXT, a->s, a->len);
  }
}

static int emit_gx(cx_t* c, frag_t* f, const ath_gx_t* x, const char* where);

static int emit_gx_list(cx_t* c, frag_t* f, const ath_gx_t* x,
                        const char* joiner, const char* where) {
  const ath_gx_t* it;
  int first = 1;
  put(f, "(");
  for (it = x->first; it != NULL; it = it->next) {
    if (!first)
      put(f, joiner);
    first = 0;
    if (emit_gx(c, f, it, where) != 0)
      return ATH_EINVAL;
  }
  put(f, ")");
  return 0;
}

static int emit_gx_filter(cx_t* c, frag_t* f, const ath_gx_t* x,
                          const char* where) {
  char hint[48];
  target_t tg = {0, NULL, NULL};
  op_t op = op_lookup(x->op, strlen(x->op));
  ath_gw_param_t* vals;
  size_t i;
  int rc;
  snprintf(hint, sizeof hint, "at position %zu", x->pos + 1);
  if (find_col(c, x->col, x->col_len, where, &tg.idx) != 0) {
    snprintf(c->plan->hint, sizeof c->plan->hint, "%s", hint);
    return ATH_EINVAL;
  }
  if (x->negate)
    put(f, "NOT (");
  if (op == OP_IS) {
    if (x->list || x->natoms != 1)
      return fail_hint(c, 400, "invalid_value", hint,
                       "%s: `is` takes one keyword", where);
    rc = emit_is(c, f, &tg, x->atoms[0].s, x->atoms[0].len, 0, where);
  } else {
    vals = ath__gw_arena_alloc(&c->plan->arena_,
                               (x->natoms ? x->natoms : 1) * sizeof *vals);
    if (vals == NULL)
      return nomem(c);
    for (i = 0; i < x->natoms; i++)
      if (atom_param(c, &x->atoms[i], col_at(c, tg.idx), op, where,
                     &vals[i]) != 0)
        return ATH_EINVAL;
    /* `in` takes a bare value as a one-item list. */
    rc = emit_values(c, f, op, &tg, vals, x->natoms,
                     x->list || op == OP_IN, where);
    if (rc != 0 && c->plan->hint[0] == '\0')
      snprintf(c->plan->hint, sizeof c->plan->hint, "%s", hint);
  }
  if (rc != 0)
    return rc;
  if (x->negate)
    put(f, ")");
  return 0;
}

static int emit_gx(cx_t* c, frag_t* f, const ath_gx_t* x, const char* where) {
  switch (x->kind) {
    case ATH_GX_AND:
      return emit_gx_list(c, f, x, " AND ", where);
    case ATH_GX_OR:
      return emit_gx_list(c, f, x, " OR ", where);
    case ATH_GX_NOT:
      put(f, "NOT ");
      if (x->first->kind == ATH_GX_FILTER) {
        put(f, "(");
        if (emit_gx(c, f, x->first, where) != 0)
          return ATH_EINVAL;
        put(f, ")");
        return 0;
      }
      return emit_gx(c, f, x->first, where);
    case ATH_GX_FILTER:
      return emit_gx_filter(c, f, x, where);
  }
  return ATH_EINVAL;
}

static int parse_expr(cx_t* c, const char* s, size_t n, const char* where,
                      ath_gx_t** out) {
  size_t pos = 0;
  const char* msg = "invalid expression";
  char hint[48];
  int rc = ath__gx_parse(s, n, &c->plan->arena_, c->lim.expr_filters,
                         c->lim.expr_depth, &c->nfilters, out, &pos, &msg);
  if (rc == 0)
    return 0;
  if (rc == ATH_ENOMEM)
    return nomem(c);
  snprintf(hint, sizeof hint, "at position %zu", pos + 1);
  if (rc == ATH_GX_TOO_MANY)
    return fail_hint(c, 400, "limit_exceeded", hint,
                     "%s: more than %lld filters in expressions", where,
                     (long long)c->lim.expr_filters);
  return fail_hint(c, 400, "invalid_expression", hint, "%s: %s", where, msg);
}

/* ============================================================ conditions */

static int compile_where_obj(cx_t* c, frag_t* f, const ath_gj_t* obj,
                             const char* where, int* nterms);

/* Counts a filter term against limits.max_terms: SQLite parses a chain of
 * n ANDed (or ORed) terms into an expression tree n deep and refuses more
 * than 1000 levels, so a request must not reach that. */
static int count_term(cx_t* c) {
  if (c->in_policy)
    return 0; /* the operator's terms are few, and may repeat per statement */
  if (++c->terms > c->lim.max_terms)
    return fail(c, 400, "limit_exceeded",
                "the request has more than %lld filter terms",
                (long long)c->lim.max_terms);
  return 0;
}

/* Starts a term: counts it and appends " AND " after the first. */
static int and_sep(cx_t* c, frag_t* f, int* nterms) {
  if (count_term(c) != 0)
    return ATH_EINVAL;
  if ((*nterms)++ > 0)
    put(f, " AND ");
  return 0;
}

/* Applies operator `op` to column `tg` with the JSON value `v` (NULL when
 * absent). */
static int emit_json_op(cx_t* c, frag_t* f, op_t op, const target_t* tg,
                        const ath_gj_t* v, const char* where) {
  const ath_gw_column_t* col = col_at(c, tg->idx);
  ath_gw_param_t p, *vals;
  const ath_gj_t* it;
  size_t i;
  if (op == OP_CONTAINS || op == OP_CONTAINED_BY)
    return emit_contains(c, f, op, tg, v, where);
  if (v == NULL)
    return fail(c, 400, "invalid_value", "%s needs a value", where);
  if (op == OP_IS) {
    if (v->type == ATH_GJ_NULL)
      return emit_is(c, f, tg, NULL, 0, 1, where);
    if (v->type == ATH_GJ_BOOL)
      return emit_is(c, f, tg, v->boolean ? "true" : "false",
                     v->boolean ? 4 : 5, 0, where);
    if (v->type == ATH_GJ_STRING)
      return emit_is(c, f, tg, v->str, v->len, 0, where);
    return fail(c, 400, "invalid_value",
                "%s: `is` takes null, true, false or not_null", where);
  }
  if (v->type == ATH_GJ_ARRAY && (op == OP_IN || op == OP_EQ)) {
    if ((int64_t)v->count > c->lim.in_list)
      return fail(c, 400, "limit_exceeded", "%s has more than %lld items",
                  where, (long long)c->lim.in_list);
    vals = ath__gw_arena_alloc(&c->plan->arena_,
                               (v->count ? v->count : 1) * sizeof *vals);
    if (vals == NULL)
      return nomem(c);
    for (it = v->first, i = 0; it != NULL; it = it->next, i++) {
      if (it->type == ATH_GJ_ARRAY || it->type == ATH_GJ_OBJECT)
        return fail(c, 400, "invalid_value", "%s: list items must be scalars",
                    where);
      if (json_param(c, it, col, where, &vals[i]) != 0)
        return ATH_EINVAL;
    }
    return emit_values(c, f, OP_IN, tg, vals, v->count, 1, where);
  }
  if (op == OP_IN && v->type == ATH_GJ_STRING && v->len > 0 &&
      v->str[0] == '(') {
    /* "(a,b)": the §3.2 list syntax, converted by the column's type. */
    ath_gx_t* x;
    char expr[8 + 64];
    ath_gw_buf_t b = {0};
    int64_t none = 0;
    size_t pos = 0;
    const char* msg = "";
    int rc;
    snprintf(expr, sizeof expr, "c.in.");
    ath__gw_buf_puts(&b, expr);
    ath__gw_buf_put(&b, v->str, v->len);
    if (b.oom) {
      ath__gw_buf_free(&b);
      return nomem(c);
    }
    rc = ath__gx_parse(b.data, b.len, &c->plan->arena_, 1, 1, &none, &x, &pos,
                       &msg);
    ath__gw_buf_free(&b);
    if (rc == ATH_ENOMEM)
      return nomem(c);
    if (rc != 0 || x->n != 1 || x->first->kind != ATH_GX_FILTER ||
        !x->first->list)
      return fail(c, 400, "invalid_value", "%s is not a list like (a,b)",
                  where);
    x = x->first;
    vals = ath__gw_arena_alloc(&c->plan->arena_,
                               (x->natoms ? x->natoms : 1) * sizeof *vals);
    if (vals == NULL)
      return nomem(c);
    for (i = 0; i < x->natoms; i++)
      if (atom_param(c, &x->atoms[i], col, OP_IN, where, &vals[i]) != 0)
        return ATH_EINVAL;
    return emit_values(c, f, OP_IN, tg, vals, x->natoms, 1, where);
  }
  if (v->type == ATH_GJ_ARRAY)
    return fail(c, 400, "invalid_value", "%s takes no list", where);
  if (v->type == ATH_GJ_OBJECT && op != OP_EQ && op != OP_NEQ)
    return fail(c, 400, "invalid_value", "%s needs a scalar value", where);
  if (json_param(c, v, col, where, &p) != 0)
    return ATH_EINVAL;
  if (op == OP_IN && v->type == ATH_GJ_STRING)
    p.src = NULL; /* its text chose between this and the "(a,b)" list */
  return emit_values(c, f, op, tg, &p, 1, op == OP_IN ? 1 : 0, where);
}

/* One §3.1 condition object, written as one term. */
static int compile_cond(cx_t* c, frag_t* f, const ath_gj_t* cond,
                        const char* where) {
  const ath_gj_t *opv, *colv, *v, *vk;
  op_t op;
  target_t tg = {0, NULL, NULL};
  path_t pw;
  if (cond->type != ATH_GJ_OBJECT)
    return fail(c, 400, "invalid_value", "%s is not a condition object",
                where);
  opv = ath__gj_field(cond, "operator");
  colv = ath__gj_field(cond, "column");
  if (colv == NULL)
    colv = ath__gj_field(cond, "eq_column");
  /* `value` counts when the key is present, even as null. */
  vk = ath__gj_get(cond, "value");
  v = vk != NULL ? vk : ath__gj_get(cond, "eq_value");
  if (opv != NULL) {
    if (opv->type != ATH_GJ_STRING)
      return fail(c, 400, "unsupported_operator",
                  "%s.operator is not a supported operator", where);
    op = op_lookup(opv->str, opv->len);
    if (op == OP_NONE)
      return fail(c, 400, "unsupported_operator",
                  "%s.operator is not a supported operator", where);
  } else if (ath__gj_field(cond, "eq_column") != NULL) {
    op = OP_EQ;
  } else {
    return fail(c, 400, "unsupported_operator", "%s has no operator", where);
  }
  if (op == OP_OR || op == OP_NOT) {
    ath_gx_t* x;
    const ath_gx_t* it;
    int first = 1;
    if (v == NULL || v->type != ATH_GJ_STRING)
      return fail(c, 400, "invalid_value",
                  "%s.value must be an expression string", where);
    pw = pathf("%s.value", where);
    if (parse_expr(c, v->str, v->len, pw.s, &x) != 0)
      return ATH_EINVAL;
    put(f, op == OP_OR ? "(" : "NOT (");
    for (it = x->first; it != NULL; it = it->next) {
      if (!first)
        put(f, op == OP_OR ? " OR " : " AND ");
      first = 0;
      if (emit_gx(c, f, it, pw.s) != 0)
        return ATH_EINVAL;
    }
    put(f, ")");
    return 0;
  }
  if (colv == NULL)
    return fail(c, 400, "invalid_value", "%s needs a column", where);
  pw = pathf("%s.column", where);
  if (colv->type != ATH_GJ_STRING)
    return fail(c, 400, "invalid_identifier",
                "%s is not a valid column name", pw.s);
  if (find_col(c, colv->str, colv->len, pw.s, &tg.idx) != 0)
    return ATH_EINVAL;
  if (read_cast(c, cond, "column_cast", where, &tg.col_cast) != 0 ||
      read_cast(c, cond, "value_cast", where, &tg.val_cast) != 0)
    return ATH_EINVAL;
  if (tg.col_cast == NULL &&
      read_cast(c, cond, "eq_column_cast", where, &tg.col_cast) != 0)
    return ATH_EINVAL;
  if (tg.val_cast == NULL &&
      read_cast(c, cond, "eq_value_cast", where, &tg.val_cast) != 0)
    return ATH_EINVAL;
  return emit_json_op(c, f, op, &tg, v, where);
}

/* A conditions array: terms ANDed into `f`. */
static int compile_conds(cx_t* c, frag_t* f, const ath_gj_t* arr,
                         const char* name, int* nterms) {
  const ath_gj_t* it;
  size_t i = 0;
  if (arr->type != ATH_GJ_ARRAY)
    return fail(c, 400, "invalid_value", "%s must be an array", name);
  for (it = arr->first; it != NULL; it = it->next, i++) {
    path_t pw = pathf("%s[%zu]", name, i);
    if (and_sep(c, f, nterms) != 0)
      return ATH_EINVAL;
    if (compile_cond(c, f, it, pw.s) != 0)
      return ATH_EINVAL;
  }
  return 0;
}

/* An update or delete refuses an empty group (`and: []`, `or: []`,
 * `not: {}`, `{}` in a group, `column: {}`) anywhere in `where`: an empty
 * filter is no filter (`{"or": [{"id": 1}, {}]}` would match every row). */
static int empty_group(cx_t* c, const char* what) {
  if (c->op != ATH_GW_UPDATE && c->op != ATH_GW_DELETE)
    return 0;
  return fail(c, 400,
              c->op == ATH_GW_UPDATE ? "unfiltered_update"
                                     : "unfiltered_delete",
              "%s is empty, and an empty filter is no filter", what);
}

/* Opens an and/or/not group of `where`: they nest at most
 * limits.expr_depth deep, as in expression strings (SQLite's parser stack
 * overflows on deep parentheses). The caller closes it (c->groups--). */
static int open_group(cx_t* c, const char* where) {
  if (++c->groups > c->lim.expr_depth)
    return fail(c, 400, "limit_exceeded",
                "%s: and/or/not groups nest deeper than %lld", where,
                (long long)c->lim.expr_depth);
  return 0;
}

/* One member `m` of a `where` object: column -> scalar (eq), array (in) or
 * {op: value}; `and`/`or` arrays of where objects; `not` object. */
static int compile_where_member(cx_t* c, frag_t* f, const ath_gj_t* m,
                                const char* where, int* nterms) {
  const ath_gj_t* it;
  path_t pw;
  size_t i = 0;
  int k;
  if ((m->klen == 3 && memcmp(m->key, "and", 3) == 0) ||
      (m->klen == 2 && memcmp(m->key, "or", 2) == 0)) {
    int is_or = m->klen == 2;
    pw = pathf("%s.%s", where, is_or ? "or" : "and");
    if (m->type != ATH_GJ_ARRAY)
      return fail(c, 400, "invalid_value", "%s must be an array", pw.s);
    if (open_group(c, pw.s) != 0 || and_sep(c, f, nterms) != 0)
      return ATH_EINVAL;
    if (m->count == 0) {
      if (empty_group(c, pw.s) != 0)
        return ATH_EINVAL;
      put(f, is_or ? "1 = 0" : "1 = 1");
      c->groups--;
      return 0;
    }
    put(f, "(");
    for (it = m->first; it != NULL; it = it->next, i++) {
      int inner = 0;
      pw = pathf("%s.%s[%zu]", where, is_or ? "or" : "and", i);
      if (count_term(c) != 0)
        return ATH_EINVAL;
      if (i > 0)
        put(f, is_or ? " OR " : " AND ");
      if (it->type != ATH_GJ_OBJECT)
        return fail(c, 400, "invalid_value", "%s must be an object", pw.s);
      put(f, "(");
      if (compile_where_obj(c, f, it, pw.s, &inner) != 0)
        return ATH_EINVAL;
      if (inner == 0 && empty_group(c, pw.s) != 0)
        return ATH_EINVAL;
      if (inner == 0)
        put(f, "1 = 1");
      put(f, ")");
    }
    put(f, ")");
    c->groups--;
    return 0;
  }
  if (m->klen == 3 && memcmp(m->key, "not", 3) == 0) {
    int inner = 0;
    pw = pathf("%s.not", where);
    if (m->type != ATH_GJ_OBJECT)
      return fail(c, 400, "invalid_value", "%s must be an object", pw.s);
    if (open_group(c, pw.s) != 0 || and_sep(c, f, nterms) != 0)
      return ATH_EINVAL;
    put(f, "NOT (");
    if (compile_where_obj(c, f, m, pw.s, &inner) != 0)
      return ATH_EINVAL;
    if (inner == 0 && empty_group(c, pw.s) != 0)
      return ATH_EINVAL;
    if (inner == 0)
      put(f, "1 = 1");
    put(f, ")");
    c->groups--;
    return 0;
  }
  {
    target_t tg = {0, NULL, NULL};
    pw = pathf("%s key", where);
    if (find_col(c, m->key, m->klen, pw.s, &tg.idx) != 0)
      return ATH_EINVAL;
    pw = pathf("%s.%s", where, col_at(c, tg.idx)->name);
    if (m->type == ATH_GJ_OBJECT && m->count == 0 && empty_group(c, pw.s) != 0)
      return ATH_EINVAL;
    if (m->type != ATH_GJ_OBJECT) {
      if (and_sep(c, f, nterms) != 0)
        return ATH_EINVAL;
      if (m->type == ATH_GJ_NULL)
        return emit_is(c, f, &tg, NULL, 0, 1, pw.s);
      return emit_json_op(c, f, OP_EQ, &tg, m, pw.s);
    }
    unsigned char* win = malloc(m->count + 1);
    if (win == NULL || ath__gj_winners(m, win) != 0) {
      free(win);
      return nomem(c);
    }
    for (it = m->first, k = 0; it != NULL; it = it->next, k++) {
      op_t op;
      path_t po;
      if (!win[k])
        continue;
      op = op_lookup(it->key, it->klen);
      po = pathf("%s.%s", pw.s, op == OP_NONE ? "?" : op_names[op]);
      if (op == OP_NONE || op == OP_OR || op == OP_NOT) {
        free(win);
        return fail(c, 400, "unsupported_operator",
                    "%s uses an unsupported operator", pw.s);
      }
      if (and_sep(c, f, nterms) != 0 ||
          emit_json_op(c, f, op, &tg, it, po.s) != 0) {
        free(win);
        return ATH_EINVAL;
      }
    }
    free(win);
    return 0;
  }
}

static int compile_where_obj(cx_t* c, frag_t* f, const ath_gj_t* obj,
                             const char* where, int* nterms) {
  const ath_gj_t* m;
  size_t k = 0;
  unsigned char* win = malloc(obj->count + 1);
  if (win == NULL || ath__gj_winners(obj, win) != 0) {
    free(win);
    return nomem(c);
  }
  for (m = obj->first; m != NULL; m = m->next, k++) {
    if (!win[k])
      continue;
    if (compile_where_member(c, f, m, where, nterms) != 0) {
      free(win);
      return ATH_EINVAL;
    }
  }
  free(win);
  return 0;
}

/* The client's filter (`conditions`, else `where`) and the policy's, ANDed
 * into `f`. Sets *client_terms to the number of client terms. */
static int compile_filter(cx_t* c, frag_t* f, int* client_terms) {
  const ath_gj_t* body = c->req->body;
  const ath_gj_t* conds = ath__gj_field(body, "conditions");
  const ath_gj_t* where = ath__gj_field(body, "where");
  int n = 0;
  if (conds != NULL && compile_conds(c, f, conds, "conditions", &n) != 0)
    return ATH_EINVAL;
  if (n == 0 && where != NULL) {
    if (where->type != ATH_GJ_OBJECT)
      return fail(c, 400, "invalid_value", "where must be an object");
    if (compile_where_obj(c, f, where, "where", &n) != 0)
      return ATH_EINVAL;
  }
  *client_terms = n;
  if (c->req->policy_conditions != NULL) {
    int rc;
    c->in_policy = 1;
    rc = compile_conds(c, f, c->req->policy_conditions, "policy", &n);
    c->in_policy = 0;
    if (rc != 0)
      return rc;
  }
  return frag_ok(c, f);
}

/* ============================================================ projection */

static int add_outcol(cx_t* c, int idx, const char* alias, size_t alen,
                      size_t* cap) {
  ath_gw_plan_t* p = c->plan;
  if (p->ncols == *cap) {
    size_t ncap = *cap ? *cap * 2 : 8;
    ath_gw_outcol_t* q = ath__gw_arena_alloc(&p->arena_, ncap * sizeof *q);
    if (q == NULL)
      return nomem(c);
    if (p->ncols)
      memcpy(q, p->cols, p->ncols * sizeof *q);
    p->cols = q;
    *cap = ncap;
  }
  p->cols[p->ncols].column = col_at(c, idx);
  p->cols[p->ncols].name =
    alias != NULL ? arena_copy(c, alias, alen) : col_at(c, idx)->name;
  if (p->cols[p->ncols].name == NULL)
    return nomem(c);
  p->ncols++;
  return 0;
}

/* All visible columns. A catalog column whose name does not match the
 * identifier pattern cannot be named in a request either, so it is not
 * served (it could not be quoted with the same guarantees). */
static int add_all_cols(cx_t* c, size_t* cap) {
  size_t i;
  for (i = 0; i < c->t->ncolumns; i++) {
    const ath_gw_column_t* col = &c->t->columns[i];
    if (col->hidden || !ident_ok(col->name, strlen(col->name)))
      continue;
    if (add_outcol(c, (int)i, NULL, 0, cap) != 0)
      return ATH_ENOMEM;
  }
  return 0;
}

/* One projection token (already trimmed): `*`, `col`, `alias:col`,
 * `col as alias`, `col alias`. */
static int proj_token(cx_t* c, const char* s, size_t n, const char* where,
                      size_t* cap) {
  const char* w[4];
  size_t wl[4], nw = 0, i;
  int idx;
  const char* alias = NULL;
  size_t alen = 0;
  if (n == 1 && s[0] == '*')
    return add_all_cols(c, cap);
  for (i = 0; i < n; i++)
    if (s[i] == '(' || s[i] == ')')
      return fail(c, 400, "relations_unsupported",
                  "%s embeds a relation, which this gateway does not support",
                  where);
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!(isalnum(ch) || ch == '_' || ch == ':' || ch == ' ' || ch == '\t' ||
          ch == '\n' || ch == '\r') || ch >= 0x80)
      return fail(c, 400, "unsafe_select",
                  "%s is not a column, alias:column or column as alias",
                  where);
  }
  /* Split into words. */
  for (i = 0; i < n;) {
    while (i < n && isspace((unsigned char)s[i]))
      i++;
    if (i >= n)
      break;
    if (nw == 4)
      return fail(c, 400, "unsafe_select",
                  "%s is not a column, alias:column or column as alias",
                  where);
    w[nw] = s + i;
    while (i < n && !isspace((unsigned char)s[i]))
      i++;
    wl[nw] = (size_t)(s + i - w[nw]);
    nw++;
  }
  if (nw == 1) {
    const char* colon = memchr(w[0], ':', wl[0]);
    if (colon != NULL) {
      alias = w[0];
      alen = (size_t)(colon - w[0]);
      w[0] = colon + 1;
      wl[0] = wl[0] - alen - 1;
    }
  } else if (nw == 2) {
    alias = w[1];
    alen = wl[1];
  } else if (nw == 3 && wl[1] == 2 && strncasecmp(w[1], "as", 2) == 0) {
    alias = w[2];
    alen = wl[2];
  } else {
    return fail(c, 400, "unsafe_select",
                "%s is not a column, alias:column or column as alias", where);
  }
  for (i = 0; i < nw; i++)
    if (memchr(w[i], ':', wl[i]) != NULL && !(nw == 1 && alias != NULL))
      return fail(c, 400, "unsafe_select",
                  "%s is not a column, alias:column or column as alias",
                  where);
  if (alias != NULL && !ident_ok(alias, alen))
    return fail(c, 400, "invalid_identifier",
                "%s has an alias that is not a valid identifier", where);
  if (memchr(w[0], ':', wl[0]) != NULL)
    return fail(c, 400, "unsafe_select",
                "%s is not a column, alias:column or column as alias", where);
  if (find_col(c, w[0], wl[0], where, &idx) != 0)
    return ATH_EINVAL;
  return add_outcol(c, idx, alias, alen, cap);
}

/* Reads `columns` (or `select`) into plan->cols. *given is set when the
 * body names a projection at all (mutations return rows only then). */
static int compile_projection(cx_t* c, int* given) {
  const ath_gj_t* body = c->req->body;
  const ath_gj_t* v = ath__gj_field(body, "columns");
  size_t cap = 0;
  *given = 0;
  if (v == NULL)
    v = ath__gj_field(body, "select");
  if (v == NULL)
    return add_all_cols(c, &cap);
  *given = 1;
  if (v->type == ATH_GJ_STRING) {
    size_t i = 0, k = 0, n = v->len;
    const char* s = v->str;
    if (memchr(s, '\0', n) != NULL)
      return fail(c, 400, "unsafe_select", "columns holds a NUL character");
    while (i <= n) {
      if (i == n || s[i] == ',') {
        size_t a = k, b = i;
        while (a < b && isspace((unsigned char)s[a]))
          a++;
        while (b > a && isspace((unsigned char)s[b - 1]))
          b--;
        if (b > a) {
          path_t pw;
          size_t item = 0, j;
          for (j = 0; j < k; j++)
            item += s[j] == ',';
          pw = pathf("columns item %zu", item + 1);
          if (proj_token(c, s + a, b - a, pw.s, &cap) != 0)
            return ATH_EINVAL;
        }
        k = i + 1;
      }
      i++;
    }
    if (c->plan->ncols == 0)
      return add_all_cols(c, &cap); /* "" means all columns */
    return 0;
  }
  if (v->type == ATH_GJ_ARRAY) {
    const ath_gj_t* it;
    size_t i = 0;
    for (it = v->first; it != NULL; it = it->next, i++) {
      path_t pw = pathf("columns[%zu]", i);
      size_t a = 0, b;
      if (it->type != ATH_GJ_STRING)
        return fail(c, 400, "invalid_value", "%s must be a string", pw.s);
      b = it->len;
      while (a < b && isspace((unsigned char)it->str[a]))
        a++;
      while (b > a && isspace((unsigned char)it->str[b - 1]))
        b--;
      if (memchr(it->str, '\0', it->len) != NULL ||
          memchr(it->str, ',', it->len) != NULL)
        return fail(c, 400, "unsafe_select",
                    "%s is not a column, alias:column or column as alias",
                    pw.s);
      if (b > a && proj_token(c, it->str + a, b - a, pw.s, &cap) != 0)
        return ATH_EINVAL;
    }
    if (c->plan->ncols == 0)
      return add_all_cols(c, &cap);
    return 0;
  }
  return fail(c, 400, "invalid_value", "columns must be a string or an array");
}

/* Writes the columns the statements return (plan->row_cols). */
static void put_select_list(cx_t* c, frag_t* f) {
  size_t i;
  const ath_gw_plan_t* p = c->plan;
  for (i = 0; i < p->nrow_cols; i++) {
    if (i > 0)
      put(f, ", ");
    const ath_gw_column_t* col = p->row_cols[i].column;
    /* PostgreSQL arrays answer as JSON arrays (GATEWAY §7), which the
     * server then writes as they come */
    int as_json = c->req->dialect == ATH_GW_PG && col->kind == ATH_GW_KIND_ARRAY;
    if (as_json)
      put(f, "to_json(");
    put_ident(f, col->name);
    if (as_json)
      put(f, ")");
    if (as_json || strcmp(p->row_cols[i].name, col->name) != 0) {
      put(f, " AS ");
      put_ident(f, p->row_cols[i].name);
    }
  }
}

/* Decides what a mutation returns: the client's projection when it asked
 * for rows (`want`); every visible column, under their own names, when the
 * request wants full rows (X-Publish-Event hands handlers the rows as
 * stored, whatever `columns` asked). */
static int set_returning(cx_t* c, int want) {
  ath_gw_plan_t* p = c->plan;
  size_t i, n = 0;
  p->data_rows = want;
  if (!c->req->full_rows) {
    p->row_cols = p->cols;
    p->nrow_cols = p->ncols;
    p->returning = want;
    return 0;
  }
  p->row_cols = ath__gw_arena_alloc(
    &p->arena_, (c->t->ncolumns ? c->t->ncolumns : 1) * sizeof *p->row_cols);
  if (p->row_cols == NULL)
    return nomem(c);
  for (i = 0; i < c->t->ncolumns; i++) {
    const ath_gw_column_t* col = &c->t->columns[i];
    if (col->hidden || !ident_ok(col->name, strlen(col->name)))
      continue;
    p->row_cols[n].column = col;
    p->row_cols[n].name = col->name;
    n++;
  }
  p->nrow_cols = n;
  p->returning = 1;
  return 0;
}

/* ================================================================= sort */

static int sort_key(cx_t* c, frag_t* f, const ath_gj_t* v, const char* where,
                    int* nkeys) {
  const ath_gj_t *field, *dir;
  int idx, desc = 0;
  path_t pw;
  if (v->type == ATH_GJ_STRING) {
    field = v;
    dir = NULL;
  } else if (v->type == ATH_GJ_OBJECT) {
    field = ath__gj_field(v, "field");
    if (field == NULL)
      field = ath__gj_field(v, "column");
    dir = ath__gj_field(v, "direction");
    if (dir == NULL)
      dir = ath__gj_field(v, "order");
  } else {
    return fail(c, 400, "invalid_value", "%s must be an object", where);
  }
  pw = pathf("%s.field", where);
  if (field == NULL || field->type != ATH_GJ_STRING)
    return fail(c, 400, "invalid_value", "%s needs a column", where);
  if (find_col(c, field->str, field->len, pw.s, &idx) != 0)
    return ATH_EINVAL;
  if (dir != NULL) {
    if (dir->type != ATH_GJ_STRING)
      return fail(c, 400, "invalid_value", "%s.direction is not a direction",
                  where);
    if ((dir->len == 9 && strncasecmp(dir->str, "ascending", 9) == 0) ||
        (dir->len == 3 && strncasecmp(dir->str, "asc", 3) == 0))
      desc = 0;
    else if ((dir->len == 10 && strncasecmp(dir->str, "descending", 10) == 0) ||
             (dir->len == 4 && strncasecmp(dir->str, "desc", 4) == 0))
      desc = 1;
    else
      return fail(c, 400, "invalid_value",
                  "%s.direction must be ascending or descending", where);
  }
  put(f, (*nkeys)++ == 0 ? " ORDER BY " : ", ");
  put_col(c, f, idx);
  put(f, desc ? " DESC NULLS FIRST" : " ASC NULLS LAST");
  return 0;
}

/* Writes " ORDER BY ..." from sort_by/sortBy into `f`; *given when the body
 * has one. Without one and with `pk_default`, orders by the primary key. */
static int compile_sort(cx_t* c, frag_t* f, int pk_default, int* given) {
  const ath_gj_t* v = ath__gj_field(c->req->body, "sort_by");
  int nkeys = 0;
  size_t i;
  if (v == NULL)
    v = ath__gj_field(c->req->body, "sortBy");
  *given = v != NULL;
  if (v != NULL && v->type == ATH_GJ_ARRAY) {
    const ath_gj_t* it;
    for (it = v->first, i = 0; it != NULL; it = it->next, i++) {
      path_t pw = pathf("sort_by[%zu]", i);
      if (sort_key(c, f, it, pw.s, &nkeys) != 0)
        return ATH_EINVAL;
    }
    if (nkeys == 0)
      *given = 0;
  } else if (v != NULL) {
    if (sort_key(c, f, v, "sort_by", &nkeys) != 0)
      return ATH_EINVAL;
  }
  if (nkeys == 0 && pk_default && c->t->pk.ncols > 0) {
    for (i = 0; i < c->t->pk.ncols; i++) {
      put(f, i == 0 ? " ORDER BY " : ", ");
      put_col(c, f, c->t->pk.cols[i]);
    }
  }
  return 0;
}

/* =============================================================== paging */

/* Reads paging field `name`: an integer or numeric string, fractions
 * truncated, negatives refused. *v is -1 when absent. */
static int paging_field(cx_t* c, const char* name, int64_t* v) {
  const ath_gj_t* j = ath__gj_field(c->req->body, name);
  char tmp[64];
  const char* s;
  size_t n;
  double d;
  *v = -1;
  if (j == NULL)
    return 0;
  if (j->type == ATH_GJ_NUMBER) {
    s = j->str;
    n = j->len;
  } else if (j->type == ATH_GJ_STRING) {
    s = j->str;
    n = j->len;
    while (n > 0 && isspace((unsigned char)*s))
      s++, n--;
    while (n > 0 && isspace((unsigned char)s[n - 1]))
      n--;
  } else {
    return fail(c, 400, "invalid_value", "%s must be a number", name);
  }
  if (n == 0 || n >= sizeof tmp)
    return fail(c, 400, "invalid_value", "%s must be a number", name);
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  if (!parse_num(tmp, n, &d))
    return fail(c, 400, "invalid_value", "%s must be a number", name);
  if (d < 0)
    return fail(c, 400, "invalid_value", "%s must not be negative", name);
  d = trunc(d);
  *v = d >= (double)PAGE_MAX ? PAGE_MAX : (int64_t)d;
  return 0;
}

typedef struct {
  int64_t limit, offset, page_size, current_page;
  int any; /* any paging field present */
} paging_t;

static int read_paging(cx_t* c, paging_t* pg) {
  if (paging_field(c, "limit", &pg->limit) != 0 ||
      paging_field(c, "offset", &pg->offset) != 0 ||
      paging_field(c, "page_size", &pg->page_size) != 0 ||
      paging_field(c, "current_page", &pg->current_page) != 0)
    return ATH_EINVAL;
  pg->any = pg->limit >= 0 || pg->offset >= 0 || pg->page_size >= 0 ||
            pg->current_page >= 0;
  return 0;
}

/* offset = (current_page - 1) * size for current_page >= 1. */
static int page_offset(cx_t* c, int64_t page, int64_t size, int64_t* off) {
  int64_t r;
  if (page < 1) {
    *off = 0;
    return 0;
  }
  if (__builtin_mul_overflow(page - 1, size, &r))
    return fail(c, 400, "invalid_value", "current_page is too large");
  *off = r;
  return 0;
}

static void put_int_param(cx_t* c, frag_t* f, int64_t v) {
  ath_gw_param_t p;
  char num[24];
  int n = snprintf(num, sizeof num, "%lld", (long long)v);
  if (p_text(c, &p, ATH_GW_P_INT, num, (size_t)n) != 0) {
    f->oom = 1;
    return;
  }
  p.i = v;
  put_param(f, &p);
}

/* ========================================================== statements */

/* Moves fragment `f` into statement `st`, turning markers into `?` or
 * `$n`. The fragment is emptied. */
static int finish(cx_t* c, frag_t* f, ath_gw_stmt_t* st) {
  ath_gw_buf_t out = {0};
  size_t i, k = 0;
  if (frag_ok(c, f) != 0)
    return ATH_ENOMEM;
  for (i = 0; i < f->sql.len; i++) {
    if (f->sql.data[i] != PH) {
      size_t j = i;
      while (j < f->sql.len && f->sql.data[j] != PH)
        j++;
      ath__gw_buf_put(&out, f->sql.data + i, j - i);
      i = j - 1;
      continue;
    }
    k++;
    if (c->d == ATH_GW_SQLITE) {
      ath__gw_buf_putc(&out, '?');
    } else {
      char num[24];
      int n = snprintf(num, sizeof num, "$%zu", k);
      ath__gw_buf_put(&out, num, (size_t)n);
    }
  }
  if (out.data == NULL)
    ath__gw_buf_puts(&out, "");
  if (out.oom) {
    ath__gw_buf_free(&out);
    return nomem(c);
  }
  if ((int64_t)k > c->lim.max_params) {
    ath__gw_buf_free(&out);
    return fail(c, 400, "limit_exceeded",
                "the request binds more than %lld values in one statement",
                (long long)c->lim.max_params);
  }
  if (k != f->n) {
    ath__gw_buf_free(&out);
    c->plan->status = 500;
    c->plan->code = "internal_error";
    snprintf(c->plan->error, sizeof c->plan->error,
             "the request could not be compiled");
    return ATH_EINVAL;
  }
  st->sql = out.data;
  st->params = f->p;
  st->nparams = f->n;
  f->p = NULL;
  f->n = f->cap = 0;
  ath__gw_buf_free(&f->sql);
  return 0;
}

/* Appends a new statement to the plan, built from `f`. */
static int add_stmt(cx_t* c, frag_t* f, size_t* cap) {
  ath_gw_plan_t* p = c->plan;
  if (p->nstmts == *cap) {
    size_t ncap = *cap ? *cap * 2 : 4;
    ath_gw_stmt_t* q = realloc(p->stmts, ncap * sizeof *q);
    if (q == NULL)
      return nomem(c);
    p->stmts = q;
    *cap = ncap;
  }
  memset(&p->stmts[p->nstmts], 0, sizeof p->stmts[0]);
  if (finish(c, f, &p->stmts[p->nstmts]) != 0)
    return ATH_EINVAL;
  p->nstmts++;
  return 0;
}

/* =========================================================== table, misc */

static int read_bool(cx_t* c, const char* name, int* out) {
  const ath_gj_t* v = ath__gj_field(c->req->body, name);
  if (v == NULL)
    return 0;
  if (v->type == ATH_GJ_BOOL) {
    *out = v->boolean;
    return 0;
  }
  if (v->type == ATH_GJ_STRING) {
    static const char* const yes[] = {"true", "1", "yes"};
    static const char* const no[] = {"false", "0", "no"};
    size_t i;
    for (i = 0; i < 3; i++) {
      if (strlen(yes[i]) == v->len && strncasecmp(yes[i], v->str, v->len) == 0) {
        *out = 1;
        return 0;
      }
      if (strlen(no[i]) == v->len && strncasecmp(no[i], v->str, v->len) == 0) {
        *out = 0;
        return 0;
      }
    }
  }
  return fail(c, 400, "invalid_value", "%s must be true or false", name);
}

static int check_unsupported(cx_t* c) {
  const ath_gj_t* m;
  for (m = c->req->body->first; m != NULL; m = m->next) {
    if (m->type == ATH_GJ_NULL)
      continue;
    if ((m->klen == 8 && memcmp(m->key, "group_by", 8) == 0) ||
        (m->klen == 16 && memcmp(m->key, "time_granularity", 16) == 0) ||
        (m->klen >= 12 && memcmp(m->key, "aggregation_", 12) == 0))
      return fail(c, 400, "unsupported_feature",
                  "grouping and aggregation are not supported");
  }
  return 0;
}

static int resolve_table(cx_t* c) {
  const ath_gj_t* body = c->req->body;
  const ath_gj_t* tv = ath__gj_field(body, "table_name");
  const ath_gj_t* sv = ath__gj_field(body, "schema_name");
  const char *name, *schema = NULL, *dot;
  size_t nlen, slen = 0, i;
  if (tv == NULL && c->op == ATH_GW_FETCH)
    tv = ath__gj_field(body, "view_name");
  if (tv == NULL)
    return fail(c, 400, "missing_table", "the request names no table_name");
  if (tv->type != ATH_GJ_STRING)
    return fail(c, 400, "invalid_identifier",
                "table_name is not a valid table name");
  name = tv->str;
  nlen = tv->len;
  dot = memchr(name, '.', nlen);
  if (dot != NULL) {
    schema = name;
    slen = (size_t)(dot - name);
    name = dot + 1;
    nlen = nlen - slen - 1;
  }
  if (sv != NULL) {
    if (sv->type != ATH_GJ_STRING)
      return fail(c, 400, "invalid_identifier",
                  "schema_name is not a valid schema name");
    if (schema != NULL &&
        (slen != sv->len || memcmp(schema, sv->str, slen) != 0))
      return fail(c, 404, "unknown_table", "no such table");
    schema = sv->str;
    slen = sv->len;
  }
  if (!ident_ok(name, nlen) || (schema != NULL && !ident_ok(schema, slen)))
    return fail(c, 400, "invalid_identifier",
                "table_name is not a valid table name");
  if (c->d == ATH_GW_SQLITE && schema != NULL) {
    if (!((slen == 4 && strncasecmp(schema, "main", 4) == 0) ||
          (slen == 6 && strncasecmp(schema, "public", 6) == 0)))
      return fail(c, 404, "unknown_table", "no such table");
    schema = NULL;
  }
  if (c->d == ATH_GW_PG && schema == NULL) {
    schema = "public";
    slen = 6;
  }
  for (i = 0; i < c->req->catalog->ntables; i++) {
    const ath_gw_table_t* t = &c->req->catalog->tables[i];
    if (!name_eq(c, t->name, name, nlen))
      continue;
    if (c->d == ATH_GW_PG) {
      const char* ts = t->schema != NULL && t->schema[0] ? t->schema : "public";
      if (!name_eq(c, ts, schema, slen))
        continue;
    }
    if (!t->exposed)
      break; /* unexposed answers exactly as nonexistent */
    if (!ident_ok(t->name, strlen(t->name)) ||
        (c->d == ATH_GW_PG && t->schema != NULL && t->schema[0] != '\0' &&
         !ident_ok(t->schema, strlen(t->schema))))
      break; /* a catalog name we could not quote safely is not served */
    if ((t->ops & ATH_GW_OP_BIT(c->op)) == 0)
      return fail(c, 403, "forbidden", "%s is not allowed on this table",
                  ath__gw_op_name(c->op));
    c->t = t;
    c->plan->table = t;
    return 0;
  }
  return fail(c, 404, "unknown_table", "no such table");
}

/* Reads `strip_nulls`: the body wins, then X-Strip-Nulls, else true. */
static int read_strip_nulls(cx_t* c) {
  int v = c->req->strip_nulls_header >= 0 ? c->req->strip_nulls_header != 0
                                          : 1;
  if (read_bool(c, "strip_nulls", &v) != 0)
    return ATH_EINVAL;
  c->plan->strip_nulls = v;
  return 0;
}

/* `count` and `head`. */
static int read_count(cx_t* c, int* count, int* head) {
  const ath_gj_t* v = ath__gj_field(c->req->body, "count");
  *count = 0;
  *head = 0;
  if (v != NULL) {
    if (v->type == ATH_GJ_BOOL)
      *count = v->boolean;
    else if (v->type == ATH_GJ_STRING &&
             ((v->len == 5 && strncasecmp(v->str, "exact", 5) == 0) ||
              (v->len == 7 && strncasecmp(v->str, "planned", 7) == 0) ||
              (v->len == 9 && strncasecmp(v->str, "estimated", 9) == 0)))
      *count = 1;
    else
      return fail(c, 400, "invalid_value",
                  "count must be exact, planned, estimated or true");
  }
  return read_bool(c, "head", head);
}

/* ================================================================ fetch */

static int compile_fetch(cx_t* c) {
  ath_gw_plan_t* p = c->plan;
  frag_t where = {0}, order = {0}, st = {0};
  paging_t pg;
  int given, sorted, nterms = 0, count, head, rc = ATH_EINVAL;
  size_t cap = 0;
  int64_t limit, offset = 0;

  if (compile_projection(c, &given) != 0 || read_strip_nulls(c) != 0 ||
      read_count(c, &count, &head) != 0 || read_paging(c, &pg) != 0)
    goto cleanup;
  if (compile_filter(c, &where, &nterms) != 0 ||
      compile_sort(c, &order, 1, &sorted) != 0)
    goto cleanup;
  limit = pg.limit >= 0 ? pg.limit
          : pg.page_size >= 0 ? pg.page_size
                              : c->lim.default_limit;
  if (limit > c->lim.max_limit) {
    limit = c->lim.max_limit;
    p->limit_lowered = 1;
  }
  if (pg.offset >= 0)
    offset = pg.offset;
  else if (page_offset(c, pg.current_page,
                       pg.page_size >= 0 ? pg.page_size : limit, &offset) != 0)
    goto cleanup;
  p->limit = limit;
  p->offset = offset;
  p->head = head;
  p->row_cols = p->cols;
  p->nrow_cols = p->ncols;
  p->data_rows = !head;
  if (count || head) {
    frag_t cf = {0};
    put(&cf, "SELECT COUNT(*) FROM ");
    put_table(c, &cf);
    if (where.sql.len > 0) {
      put(&cf, " WHERE ");
      put_frag(&cf, &where);
    }
    rc = finish(c, &cf, &p->count);
    frag_free(&cf);
    if (rc != 0)
      goto cleanup;
    p->has_count = 1;
    rc = ATH_EINVAL;
  }
  if (!head) {
    put(&st, "SELECT ");
    put_select_list(c, &st);
    put(&st, " FROM ");
    put_table(c, &st);
    if (where.sql.len > 0) {
      put(&st, " WHERE ");
      put_frag(&st, &where);
    }
    put_frag(&st, &order);
    put(&st, " LIMIT ");
    put_int_param(c, &st, limit);
    put(&st, " OFFSET ");
    put_int_param(c, &st, offset);
    if (add_stmt(c, &st, &cap) != 0)
      goto cleanup;
  }
  rc = 0;
cleanup:
  frag_free(&where);
  frag_free(&order);
  frag_free(&st);
  return rc;
}

/* ====================================================== policy `set` */

/* Effective values per column of one row or update body: val[i] is the
 * JSON value for column i, or NULL. `order` lists the set columns in the
 * order they were first named. */
typedef struct {
  const ath_gj_t** val;
  int* order;
  size_t n;
} row_t;

static int row_init(cx_t* c, row_t* r) {
  size_t nc = c->t->ncolumns ? c->t->ncolumns : 1;
  r->val = ath__gw_arena_alloc(&c->plan->arena_, nc * sizeof *r->val);
  r->order = ath__gw_arena_alloc(&c->plan->arena_, nc * sizeof *r->order);
  if (r->val == NULL || r->order == NULL)
    return nomem(c);
  memset(r->val, 0, nc * sizeof *r->val);
  r->n = 0;
  return 0;
}

static void row_set(row_t* r, int idx, const ath_gj_t* v) {
  if (r->val[idx] == NULL)
    r->order[r->n++] = idx;
  r->val[idx] = v;
}

/* Reads object `obj` (insert row, update_body) into `r`; keys are columns,
 * the last duplicate wins. */
static int read_row(cx_t* c, const ath_gj_t* obj, const char* where,
                    row_t* r) {
  const ath_gj_t* m;
  size_t k = 0;
  unsigned char* win;
  if (row_init(c, r) != 0)
    return ATH_ENOMEM;
  win = malloc(obj->count + 1);
  if (win == NULL || ath__gj_winners(obj, win) != 0) {
    free(win);
    return nomem(c);
  }
  for (m = obj->first; m != NULL; m = m->next, k++) {
    int idx;
    path_t pw = pathf("%s key", where);
    if (!win[k])
      continue;
    if (find_col(c, m->key, m->klen, pw.s, &idx) != 0) {
      free(win);
      return ATH_EINVAL;
    }
    row_set(r, idx, m);
  }
  free(win);
  return 0;
}

/* Writes the policy's `set` into `r`; a client value that differs is
 * 403 policy_write_conflict. */
static int apply_set(cx_t* c, row_t* r, const char* where) {
  const ath_gj_t* set = c->req->policy_set;
  const ath_gj_t* m;
  if (set == NULL)
    return 0;
  if (set->type != ATH_GJ_OBJECT) {
    c->in_policy = 1;
    fail(c, 500, "internal_error", "policy set");
    c->in_policy = 0;
    return ATH_EINVAL;
  }
  for (m = set->first; m != NULL; m = m->next) {
    int idx, rc;
    c->in_policy = 1;
    rc = find_col(c, m->key, m->klen, "policy set", &idx);
    c->in_policy = 0;
    if (rc != 0)
      return rc;
    if (r->val[idx] != NULL && !ath__gj_equal(r->val[idx], m))
      return fail(c, 403, "policy_write_conflict",
                  "%s sets column \"%s\", which the policy controls", where,
                  col_at(c, idx)->name);
    row_set(r, idx, m);
  }
  return 0;
}

/* =============================================================== insert */

/* Columns of the primary key or a unique index equal to `cols` (a set). */
static int keyset_eq(const ath_gw_keyset_t* k, const int* cols, size_t n) {
  size_t i, j;
  if (k->ncols != n || n == 0)
    return 0;
  for (i = 0; i < n; i++) {
    for (j = 0; j < n; j++)
      if (k->cols[j] == cols[i])
        break;
    if (j == n)
      return 0;
  }
  return 1;
}

/* Adds column idx to out[0..*ncols) unless it is there. Returns 0, or
 * ATH_EINVAL (the answer set) when there is no room. */
static int add_conflict_col(cx_t* c, int* out, size_t* ncols, size_t cap, int idx) {
  for (size_t i = 0; i < *ncols; i++)
    if (out[i] == idx)
      return 0;
  if (*ncols + 1 >= cap)
    return fail(c, 400, "invalid_on_conflict", "on_conflict names too many columns");
  out[(*ncols)++] = idx;
  return 0;
}

/* Reads `on_conflict` into cols/ncols (arena); *present when given. */
static int read_on_conflict(cx_t* c, int** cols, size_t* ncols,
                            int* present) {
  const ath_gj_t* v = ath__gj_field(c->req->body, "on_conflict");
  size_t cap, i;
  int* out;
  *present = v != NULL;
  *ncols = 0;
  *cols = NULL;
  if (v == NULL)
    return 0;
  cap = c->t->ncolumns + 1;
  out = ath__gw_arena_alloc(&c->plan->arena_, cap * sizeof *out);
  if (out == NULL)
    return nomem(c);
  if (v->type == ATH_GJ_STRING) {
    size_t a = 0, k;
    for (k = 0; k <= v->len; k++) {
      if (k == v->len || v->str[k] == ',') {
        size_t s = a, e = k;
        int idx;
        while (s < e && isspace((unsigned char)v->str[s]))
          s++;
        while (e > s && isspace((unsigned char)v->str[e - 1]))
          e--;
        if (find_col(c, v->str + s, e - s, "on_conflict", &idx) != 0 ||
            add_conflict_col(c, out, ncols, cap, idx) != 0)
          return ATH_EINVAL;
        a = k + 1;
      }
    }
  } else if (v->type == ATH_GJ_ARRAY) {
    const ath_gj_t* it;
    size_t k = 0;
    for (it = v->first; it != NULL; it = it->next, k++) {
      int idx;
      path_t pw = pathf("on_conflict[%zu]", k);
      if (it->type != ATH_GJ_STRING)
        return fail(c, 400, "invalid_identifier",
                    "%s is not a valid column name", pw.s);
      if (find_col(c, it->str, it->len, pw.s, &idx) != 0 ||
          add_conflict_col(c, out, ncols, cap, idx) != 0)
        return ATH_EINVAL;
    }
  } else {
    return fail(c, 400, "invalid_on_conflict",
                "on_conflict must be a column list");
  }
  if (*ncols == 0)
    return fail(c, 400, "invalid_on_conflict", "on_conflict names no column");
  if (keyset_eq(&c->t->pk, out, *ncols))
    goto ok;
  for (i = 0; i < c->t->nuniques; i++)
    if (keyset_eq(&c->t->uniques[i], out, *ncols))
      goto ok;
  return fail(c, 400, "invalid_on_conflict",
              "on_conflict must be the primary key or a unique index");
ok:
  *cols = out;
  return 0;
}

typedef struct {
  int upsert;          /* an ON CONFLICT clause is written */
  int* target;         /* conflict columns */
  size_t ntarget;
  int update_mode;     /* 0 DO NOTHING, 1 update_body, 2 excluded.* */
  row_t ub;            /* update_body with the policy's set (mode 1) */
} conflict_t;

/* Writes the ON CONFLICT clause for a statement inserting columns `set`
 * (a bitmap over the table's columns). */
static int put_conflict(cx_t* c, frag_t* f, const conflict_t* k,
                        const unsigned char* set) {
  size_t i, n = 0;
  put(f, " ON CONFLICT (");
  for (i = 0; i < k->ntarget; i++) {
    if (i > 0)
      put(f, ", ");
    put_col(c, f, k->target[i]);
  }
  put(f, ")");
  if (k->update_mode == 1) {
    put(f, " DO UPDATE SET ");
    for (i = 0; i < c->t->ncolumns; i++) {
      path_t pw;
      if (k->ub.val[i] == NULL)
        continue;
      if (n++ > 0)
        put(f, ", ");
      put_col(c, f, (int)i);
      put(f, " = ");
      pw = pathf("update_body.%s", c->t->columns[i].name);
      if (put_value(c, f, (int)i, k->ub.val[i], pw.s) != 0)
        return ATH_EINVAL;
    }
  } else if (k->update_mode == 2) {
    for (i = 0; i < c->t->ncolumns; i++) {
      size_t j;
      int target = 0;
      if (!set[i])
        continue;
      for (j = 0; j < k->ntarget; j++)
        target |= k->target[j] == (int)i;
      if (target)
        continue;
      put(f, n++ == 0 ? " DO UPDATE SET " : ", ");
      put_col(c, f, (int)i);
      put(f, " = excluded.");
      put_ident(f, c->t->columns[i].name);
    }
  }
  if (n == 0) {
    put(f, " DO NOTHING");
    return 0;
  }
  c->plan->upsert_may_update = 1;
  if (c->req->policy_conditions != NULL &&
      c->req->policy_conditions->count > 0) {
    int nterms = 0, rc;
    put(f, " WHERE ");
    c->qualify = 1;
    c->in_policy = 1;
    rc = compile_conds(c, f, c->req->policy_conditions, "policy", &nterms);
    c->in_policy = 0;
    c->qualify = 0;
    if (rc != 0)
      return rc;
  }
  return 0;
}

static int compile_insert(cx_t* c) {
  ath_gw_plan_t* p = c->plan;
  const ath_gj_t* body = c->req->body;
  const ath_gj_t* ib = ath__gj_field(body, "insert_body");
  const ath_gj_t* ubv = ath__gj_get(body, "update_body");
  const ath_gj_t** rows;
  const ath_gj_t* it;
  row_t* rv;
  conflict_t k;
  frag_t ret = {0}, st = {0};
  unsigned char *sets = NULL, *done = NULL;
  size_t nrows = 0, i, j, nc = c->t->ncolumns, cap = 0;
  int given, default_to_null = 0, count, head, present, rc = ATH_EINVAL;
  size_t max_params = (size_t)(c->lim.max_params > 0 ? c->lim.max_params : 1);

  memset(&k, 0, sizeof k);
  if (ubv != NULL && ubv->type == ATH_GJ_NULL)
    ubv = NULL;
  if (ib == NULL)
    return fail(c, 400, "empty_insert", "insert_body is required");
  if (ib->type == ATH_GJ_ARRAY) {
    if (ib->count == 0)
      return fail(c, 400, "empty_insert", "insert_body has no rows");
    if ((int64_t)ib->count > c->lim.insert_rows)
      return fail(c, 400, "limit_exceeded",
                  "insert_body has more than %lld rows",
                  (long long)c->lim.insert_rows);
    nrows = ib->count;
  } else if (ib->type == ATH_GJ_OBJECT) {
    nrows = 1;
  } else {
    return fail(c, 400, "invalid_value",
                "insert_body must be an object or an array of objects");
  }
  if (compile_projection(c, &given) != 0 || read_strip_nulls(c) != 0 ||
      read_count(c, &count, &head) != 0 ||
      read_bool(c, "default_to_null", &default_to_null) != 0)
    return ATH_EINVAL;
  p->head = head;
  if (set_returning(c, given && !head) != 0)
    return ATH_ENOMEM;

  rows = ath__gw_arena_alloc(&p->arena_, nrows * sizeof *rows);
  rv = ath__gw_arena_alloc(&p->arena_, nrows * sizeof *rv);
  if (rows == NULL || rv == NULL)
    return nomem(c);
  if (ib->type == ATH_GJ_OBJECT)
    rows[0] = ib;
  else
    for (it = ib->first, i = 0; it != NULL; it = it->next, i++)
      rows[i] = it;
  for (i = 0; i < nrows; i++) {
    path_t pw = ib->type == ATH_GJ_OBJECT ? pathf("insert_body")
                                          : pathf("insert_body[%zu]", i);
    if (rows[i]->type != ATH_GJ_OBJECT)
      return fail(c, 400, "invalid_value", "%s must be an object", pw.s);
    if (read_row(c, rows[i], pw.s, &rv[i]) != 0 ||
        apply_set(c, &rv[i], pw.s) != 0)
      return ATH_EINVAL;
  }

  /* Upsert: rules (1)-(4) of §3.4. */
  if (read_on_conflict(c, &k.target, &k.ntarget, &present) != 0)
    return ATH_EINVAL;
  if (ubv != NULL && ubv->type != ATH_GJ_OBJECT)
    return fail(c, 400, "invalid_value", "update_body must be an object");
  if (present || ubv != NULL) {
    k.upsert = 1;
    if (!present) {
      if (c->t->pk.ncols == 0)
        return fail(c, 400, "invalid_on_conflict",
                    "this table has no primary key to upsert on");
      k.target = (int*)c->t->pk.cols;
      k.ntarget = c->t->pk.ncols;
    }
    if (ubv == NULL) {
      k.update_mode = 2;
    } else if (ubv->count == 0) {
      k.update_mode = 0;
    } else {
      k.update_mode = 1;
      if (read_row(c, ubv, "update_body", &k.ub) != 0 ||
          apply_set(c, &k.ub, "update_body") != 0)
        return ATH_EINVAL;
    }
  }
  p->upsert = k.upsert;

  if (p->returning) {
    put(&ret, " RETURNING ");
    put_select_list(c, &ret);
  }

  /* Key sets: sets[i * nc + col]. */
  sets = calloc(nrows * (nc ? nc : 1), 1);
  done = calloc(nrows, 1);
  if (sets == NULL || done == NULL) {
    rc = nomem(c);
    goto cleanup;
  }
  for (i = 0; i < nrows; i++)
    for (j = 0; j < nc; j++)
      sets[i * nc + j] = rv[i].val[j] != NULL;
  if (default_to_null) {
    for (i = 1; i < nrows; i++)
      for (j = 0; j < nc; j++)
        sets[j] |= sets[i * nc + j];
    for (i = 1; i < nrows; i++)
      memcpy(sets + i * nc, sets, nc);
  }
  for (i = 0; i < nrows; i++) {
    size_t ncols = 0, per_row, in_stmt = 0, r;
    const unsigned char* set = sets + i * nc;
    if (done[i])
      continue;
    for (j = 0; j < nc; j++)
      ncols += set[j];
    per_row = ncols + (k.update_mode == 1 ? k.ub.n : 0) + 1;
    for (r = i; r < nrows; r++) {
      if (done[r] || memcmp(sets + r * nc, set, nc) != 0)
        continue;
      done[r] = 1;
      if (in_stmt == 0) {
        put(&st, "INSERT INTO ");
        put_table(c, &st);
        if (ncols == 0) {
          put(&st, " DEFAULT VALUES");
        } else {
          size_t n = 0;
          put(&st, " (");
          for (j = 0; j < nc; j++) {
            if (!set[j])
              continue;
            if (n++ > 0)
              put(&st, ", ");
            put_ident(&st, c->t->columns[j].name);
          }
          put(&st, ") VALUES ");
        }
      }
      if (ncols > 0) {
        size_t n = 0;
        put(&st, in_stmt > 0 ? ", (" : "(");
        for (j = 0; j < nc; j++) {
          path_t pw;
          if (!set[j])
            continue;
          if (n++ > 0)
            put(&st, ", ");
          if (rv[r].val[j] == NULL) {
            put(&st, "NULL"); /* default_to_null */
            continue;
          }
          pw = pathf("insert_body[%zu].%s", r, c->t->columns[j].name);
          if (put_value(c, &st, (int)j, rv[r].val[j], pw.s) != 0)
            goto cleanup;
        }
        put(&st, ")");
      }
      in_stmt++;
      /* One statement per row for DEFAULT VALUES; otherwise split before
       * the database's parameter limit. */
      if (ncols == 0 || (in_stmt + 1) * per_row > max_params) {
        /* SQLite has no upsert clause after DEFAULT VALUES: such a row is a
         * plain insert there, and a conflict is a unique_violation. */
        if (k.upsert && !(ncols == 0 && c->d == ATH_GW_SQLITE) &&
            put_conflict(c, &st, &k, set) != 0)
          goto cleanup;
        put_frag(&st, &ret);
        if (add_stmt(c, &st, &cap) != 0)
          goto cleanup;
        in_stmt = 0;
      }
    }
    if (in_stmt > 0) {
      if (k.upsert && put_conflict(c, &st, &k, set) != 0)
        goto cleanup;
      put_frag(&st, &ret);
      if (add_stmt(c, &st, &cap) != 0)
        goto cleanup;
    }
  }
  rc = 0;
cleanup:
  free(sets);
  free(done);
  frag_free(&ret);
  frag_free(&st);
  return rc;
}

/* ====================================================== update, delete */

/* The column `resource_id` names (§3.6): the single-column primary key,
 * else a visible column `id`; -1 when neither. */
static int resource_key(cx_t* c) {
  size_t i;
  if (c->t->pk.ncols == 1 && !col_at(c, c->t->pk.cols[0])->hidden)
    return c->t->pk.cols[0];
  for (i = 0; i < c->t->ncolumns; i++)
    if (!c->t->columns[i].hidden && name_eq(c, c->t->columns[i].name, "id", 2))
      return (int)i;
  return -1;
}

/* Whether a top-level eq of the client's filter already targets the key,
 * `id` or `resource_id` (0.2.1 sends both for .eq("id",7).delete()). */
static int has_key_eq(cx_t* c, int key) {
  const ath_gj_t* conds = ath__gj_field(c->req->body, "conditions");
  const ath_gj_t *it, *where;
  const char* kname = col_at(c, key)->name;
  if (conds != NULL && conds->type == ATH_GJ_ARRAY && conds->count > 0) {
    for (it = conds->first; it != NULL; it = it->next) {
      const ath_gj_t *opv, *colv;
      if (it->type != ATH_GJ_OBJECT)
        continue;
      opv = ath__gj_field(it, "operator");
      colv = ath__gj_field(it, "column");
      if (colv == NULL)
        colv = ath__gj_field(it, "eq_column");
      if (opv != NULL && !(opv->type == ATH_GJ_STRING &&
                           op_lookup(opv->str, opv->len) == OP_EQ))
        continue;
      if (opv == NULL && ath__gj_field(it, "eq_column") == NULL)
        continue;
      if (colv == NULL || colv->type != ATH_GJ_STRING)
        continue;
      {
        /* Only an eq on one value names the row; eq null or a list does
         * not, and then resource_id still adds its predicate. */
        const ath_gj_t* v = ath__gj_get(it, "value");
        if (v == NULL)
          v = ath__gj_get(it, "eq_value");
        if (v == NULL || v->type == ATH_GJ_NULL || v->type == ATH_GJ_ARRAY ||
            v->type == ATH_GJ_OBJECT)
          continue;
      }
      if (name_eq(c, kname, colv->str, colv->len) ||
          name_eq(c, "id", colv->str, colv->len) ||
          name_eq(c, "resource_id", colv->str, colv->len))
        return 1;
    }
    return 0;
  }
  where = ath__gj_field(c->req->body, "where");
  if (where != NULL && where->type == ATH_GJ_OBJECT)
    for (it = where->first; it != NULL; it = it->next)
      if (it->type != ATH_GJ_OBJECT && it->type != ATH_GJ_ARRAY &&
          it->type != ATH_GJ_NULL &&
          (name_eq(c, kname, it->key, it->klen) ||
           name_eq(c, "id", it->key, it->klen) ||
           name_eq(c, "resource_id", it->key, it->klen)))
        return 1;
  return 0;
}

/* Converts resource_id to the key's type (§3.6). */
static int resource_param(cx_t* c, const ath_gj_t* v, int key,
                          ath_gw_param_t* p) {
  const ath_gw_column_t* col = col_at(c, key);
  double d;
  if (v->type != ATH_GJ_STRING && v->type != ATH_GJ_NUMBER)
    return fail(c, 400, "invalid_value",
                "resource_id must be a string or a number");
  switch (col->kind) {
    case ATH_GW_KIND_INTEGER:
      if (is_int_text(v->str, v->len)) {
        int64_t i;
        if (p_text(c, p, ATH_GW_P_INT, v->str, v->len) != 0)
          return ATH_ENOMEM;
        if (!parse_i64(p->text, &i))
          return fail(c, 400, "invalid_value",
                      "resource_id is out of range for \"%s\"", col->name);
        p->i = i;
        return 0;
      }
      return fail(c, 400, "invalid_value",
                  "resource_id must be an integer for \"%s\"", col->name);
    case ATH_GW_KIND_REAL:
    case ATH_GW_KIND_NUMERIC:
      if (parse_num(v->str, v->len, &d))
        return p_number(c, p, v->str, v->len, is_int_text(v->str, v->len));
      return fail(c, 400, "invalid_value",
                  "resource_id must be a number for \"%s\"", col->name);
    default:
      if (text_ok(c, v->str, v->len, "resource_id") != 0)
        return ATH_EINVAL;
      return p_text(c, p, ATH_GW_P_TEXT, v->str, v->len);
  }
}

/* WHERE of an update/delete: filter, resource_id, policy. Fails with
 * `unfiltered` when the client gave no predicate. */
static int mutation_filter(cx_t* c, frag_t* where, const char* unfiltered) {
  const ath_gj_t* rid = ath__gj_field(c->req->body, "resource_id");
  int client = 0, key = -1, skip = 0;
  ath_gw_param_t p;
  frag_t conds = {0};
  int rc;
  if (rid != NULL) {
    key = resource_key(c);
    if (key < 0)
      return fail(c, 400, "resource_id_unsupported",
                  "this table has no single-column key for resource_id");
    if (resource_param(c, rid, key, &p) != 0)
      return ATH_EINVAL;
    c->plan->resource_id_used = 1;
    skip = has_key_eq(c, key);
  }
  rc = compile_filter(c, &conds, &client);
  if (rc == 0 && client == 0 && rid == NULL)
    rc = fail(c, 400, unfiltered,
              c->op == ATH_GW_UPDATE
                ? "an update needs a condition or resource_id"
                : "a delete needs a condition or resource_id");
  if (rc == 0) {
    put_frag(where, &conds);
    if (rid != NULL && !skip) {
      if (where->sql.len > 0)
        put(where, " AND ");
      put_col(c, where, key);
      put(where, " = ");
      put_param(where, &p);
    }
    rc = frag_ok(c, where);
  }
  frag_free(&conds);
  return rc;
}

/* Bounds of an update/delete (§3.5): *bounded, and " ORDER BY ... LIMIT ?
 * OFFSET ?" in `tail`. */
static int mutation_bounds(cx_t* c, frag_t* tail, int* bounded) {
  paging_t pg;
  int sorted;
  int64_t limit, offset = -1;
  frag_t order = {0};
  *bounded = 0;
  if (read_paging(c, &pg) != 0)
    return ATH_EINVAL;
  if (compile_sort(c, &order, 0, &sorted) != 0) {
    frag_free(&order);
    return ATH_EINVAL;
  }
  if (!pg.any && !sorted) {
    frag_free(&order);
    return 0;
  }
  *bounded = 1;
  limit = pg.limit >= 0 ? pg.limit : pg.page_size;
  if (c->t->pk.ncols == 0) {
    frag_free(&order);
    return fail(c, 400, "bounded_mutation_no_unique_identity",
                "a bounded %s needs a primary key", ath__gw_op_name(c->op));
  }
  if (sorted && limit < 0) {
    frag_free(&order);
    return fail(c, 400, "order_without_bounds",
                "sort_by on a %s needs a limit", ath__gw_op_name(c->op));
  }
  if (pg.current_page >= 0 && limit < 0) {
    frag_free(&order);
    return fail(c, 400, "page_without_size",
                "current_page needs page_size or limit");
  }
  if (limit > c->lim.max_limit) {
    frag_free(&order);
    return fail(c, 400, "limit_exceeded", "the limit is above %lld",
                (long long)c->lim.max_limit);
  }
  if (pg.offset >= 0)
    offset = pg.offset;
  else if (pg.current_page >= 0 &&
           page_offset(c, pg.current_page,
                       pg.page_size >= 0 ? pg.page_size : limit, &offset) != 0) {
    frag_free(&order);
    return ATH_EINVAL;
  }
  if (!sorted) {
    size_t i;
    for (i = 0; i < c->t->pk.ncols; i++) {
      put(&order, i == 0 ? " ORDER BY " : ", ");
      put_col(c, &order, c->t->pk.cols[i]);
    }
  }
  put_frag(tail, &order);
  frag_free(&order);
  if (limit >= 0) {
    put(tail, " LIMIT ");
    put_int_param(c, tail, limit);
  } else if (c->d == ATH_GW_SQLITE) {
    put(tail, " LIMIT -1"); /* SQLite needs a LIMIT before OFFSET */
  }
  if (offset >= 0) {
    put(tail, " OFFSET ");
    put_int_param(c, tail, offset);
  }
  c->plan->limit = limit;
  c->plan->offset = offset >= 0 ? offset : 0;
  return frag_ok(c, tail);
}

/* " WHERE <where>", or bounded: " WHERE ("pk") IN (SELECT "pk" FROM t
 * WHERE <where> <tail>)". */
static void put_mutation_where(cx_t* c, frag_t* st, const frag_t* where,
                               const frag_t* tail, int bounded) {
  size_t i;
  if (!bounded) {
    if (where->sql.len > 0) {
      put(st, " WHERE ");
      put_frag(st, where);
    }
    return;
  }
  put(st, " WHERE (");
  for (i = 0; i < c->t->pk.ncols; i++) {
    if (i > 0)
      put(st, ", ");
    put_col(c, st, c->t->pk.cols[i]);
  }
  put(st, ") IN (SELECT ");
  for (i = 0; i < c->t->pk.ncols; i++) {
    if (i > 0)
      put(st, ", ");
    put_col(c, st, c->t->pk.cols[i]);
  }
  put(st, " FROM ");
  put_table(c, st);
  if (where->sql.len > 0) {
    put(st, " WHERE ");
    put_frag(st, where);
  }
  put_frag(st, tail);
  put(st, ")");
}

/* The common end of an UPDATE or DELETE: its WHERE (and bounds), its
 * RETURNING list, and the statement added to the plan. */
static int end_mutation(cx_t* c, frag_t* st, frag_t* where, frag_t* tail, int bounded, size_t* cap) {
  put_mutation_where(c, st, where, tail, bounded);
  if (c->plan->returning) {
    put(st, " RETURNING ");
    put_select_list(c, st);
  }
  return add_stmt(c, st, cap) != 0 ? ATH_EINVAL : 0;
}

static int compile_update(cx_t* c) {
  ath_gw_plan_t* p = c->plan;
  const ath_gj_t* ub = ath__gj_field(c->req->body, "update_body");
  frag_t st = {0}, where = {0}, tail = {0};
  row_t r;
  int given, bounded, rc = ATH_EINVAL;
  size_t i, n = 0, cap = 0;

  if (ub == NULL || (ub->type == ATH_GJ_OBJECT && ub->count == 0))
    return fail(c, 400, "empty_update", "update_body needs at least a column");
  if (ub->type != ATH_GJ_OBJECT)
    return fail(c, 400, "invalid_value", "update_body must be an object");
  if (read_row(c, ub, "update_body", &r) != 0 ||
      apply_set(c, &r, "update_body") != 0 ||
      compile_projection(c, &given) != 0 || read_strip_nulls(c) != 0)
    return ATH_EINVAL;
  if (set_returning(c, given) != 0)
    return ATH_ENOMEM;
  if (mutation_filter(c, &where, "unfiltered_update") != 0 ||
      mutation_bounds(c, &tail, &bounded) != 0)
    goto cleanup;
  p->bounded = bounded;
  put(&st, "UPDATE ");
  put_table(c, &st);
  put(&st, " SET ");
  for (i = 0; i < c->t->ncolumns; i++) {
    path_t pw;
    if (r.val[i] == NULL)
      continue;
    if (n++ > 0)
      put(&st, ", ");
    put_col(c, &st, (int)i);
    put(&st, " = ");
    pw = pathf("update_body.%s", c->t->columns[i].name);
    if (put_value(c, &st, (int)i, r.val[i], pw.s) != 0)
      goto cleanup;
  }
  rc = end_mutation(c, &st, &where, &tail, bounded, &cap);
cleanup:
  frag_free(&st);
  frag_free(&where);
  frag_free(&tail);
  return rc;
}

static int compile_delete(cx_t* c) {
  ath_gw_plan_t* p = c->plan;
  frag_t st = {0}, where = {0}, tail = {0};
  int given, bounded, rc = ATH_EINVAL;
  size_t cap = 0;

  if (compile_projection(c, &given) != 0 || read_strip_nulls(c) != 0)
    return ATH_EINVAL;
  if (set_returning(c, given) != 0)
    return ATH_ENOMEM;
  if (mutation_filter(c, &where, "unfiltered_delete") != 0 ||
      mutation_bounds(c, &tail, &bounded) != 0)
    goto cleanup;
  p->bounded = bounded;
  put(&st, "DELETE FROM ");
  put_table(c, &st);
  rc = end_mutation(c, &st, &where, &tail, bounded, &cap);
cleanup:
  frag_free(&st);
  frag_free(&where);
  frag_free(&tail);
  return rc;
}

/* ================================================================= API */

static void plan_init(ath_gw_plan_t* plan) {
  memset(plan, 0, sizeof *plan);
  plan->limit = -1;
}

int ath__gw_compile(const ath_gw_request_t* req, ath_gw_plan_t* plan) {
  cx_t c;
  int rc;
  plan_init(plan);
  memset(&c, 0, sizeof c);
  c.req = req;
  c.plan = plan;
  c.d = req->dialect;
  c.op = req->op;
  if (req->limits != NULL)
    c.lim = *req->limits;
  else
    ath__gw_limits_init(&c.lim);
  plan->op = req->op;
  if (req->catalog == NULL || req->body == NULL ||
      (req->dialect != ATH_GW_SQLITE && req->dialect != ATH_GW_PG) ||
      (unsigned)req->op > ATH_GW_DELETE) {
    plan->status = 500;
    plan->code = "internal_error";
    snprintf(plan->error, sizeof plan->error, "the request is incomplete");
    return ATH_EINVAL;
  }
  if (req->body->type != ATH_GJ_OBJECT) {
    plan->status = 400;
    plan->code = "invalid_body";
    snprintf(plan->error, sizeof plan->error,
             "the request body must be a JSON object");
    return ATH_EINVAL;
  }
  if (check_unsupported(&c) != 0 || resolve_table(&c) != 0)
    return ATH_EINVAL;
  switch (req->op) {
    case ATH_GW_FETCH:
      rc = compile_fetch(&c);
      break;
    case ATH_GW_INSERT:
      rc = compile_insert(&c);
      break;
    case ATH_GW_UPDATE:
      rc = compile_update(&c);
      break;
    default:
      rc = compile_delete(&c);
      break;
  }
  if (rc != 0 && plan->code == NULL)
    rc = nomem(&c);
  if (rc != 0)
    return c.oom ? ATH_ENOMEM : ATH_EINVAL;
  return 0;
}

static void stmt_free(ath_gw_stmt_t* st) {
  free(st->sql);
  free(st->params);
  memset(st, 0, sizeof *st);
}

void ath__gw_plan_free(ath_gw_plan_t* plan) {
  size_t i;
  if (plan == NULL)
    return;
  for (i = 0; i < plan->nstmts; i++)
    stmt_free(&plan->stmts[i]);
  free(plan->stmts);
  stmt_free(&plan->count);
  ath__gw_arena_free(&plan->arena_);
  plan_init(plan);
}

int ath__gw_parse_body(const char* text, size_t len, ath_gj_doc_t** doc,
                       ath_gw_plan_t* err) {
  size_t at = 0;
  int rc;
  plan_init(err);
  rc = ath__gj_parse(text, len, doc, &at);
  if (rc == ATH_ENOMEM) {
    err->status = 500;
    err->code = "internal_error";
    snprintf(err->error, sizeof err->error, "out of memory");
    return rc;
  }
  if (rc != 0) {
    err->status = 400;
    err->code = "invalid_json";
    snprintf(err->error, sizeof err->error,
             "the request body is not valid JSON in UTF-8 (or nests deeper "
             "than %d)",
             ATH_GJ_MAX_DEPTH);
    snprintf(err->hint, sizeof err->hint, "at byte %zu", at);
    return ATH_EINVAL;
  }
  if ((*doc)->root->type != ATH_GJ_OBJECT) {
    ath__gj_free(*doc);
    *doc = NULL;
    err->status = 400;
    err->code = "invalid_body";
    snprintf(err->error, sizeof err->error,
             "the request body must be a JSON object");
    return ATH_EINVAL;
  }
  return 0;
}
