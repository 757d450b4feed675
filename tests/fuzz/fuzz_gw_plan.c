/* libFuzzer target for the gateway request compiler (engine/gateway/gw_json.c,
 * engine/gateway/gw_expr.c, engine/gateway/gw_plan.c). Build and run: docs/gateway-compiler.md
 * §3 (the CMake targets fuzz.gw_plan and fuzz.gw_plan_corpus do it too).
 *
 * Input: three ASCII-friendly header bytes, then the request body.
 *   byte 0: bit 0 = dialect (0 SQLite, 1 PostgreSQL)   e.g. '0' / '1'
 *   byte 1: bits 0-1 = operation (fetch insert update delete)  '0'..'3'
 *   byte 2: bit 0 = apply a policy (conditions + set on owner),
 *           bit 1 = X-Strip-Nulls present, bit 2 = its value,
 *           bit 3 = full rows (X-Publish-Event)                  '0'..'?'
 * The body goes through ath__gw_parse_body and, when it parses, through
 * ath__gw_compile against tests/c/gw_catalog.h. Invariants, beyond "no
 * crash, no leak, no sanitizer report":
 *
 *   - a parse or compile failure has a status and a GATEWAY §4 code that
 *     belong together, and a non-empty `error`;
 *   - on success, every statement has exactly as many placeholders as
 *     parameters (`?`, or `$1..$n` in order), every parameter but NULL has
 *     text, and the SQL is made only of: double-quoted identifiers that
 *     match ^[A-Za-z_][A-Za-z0-9_]{0,62}$, placeholders, punctuation, the
 *     words the compiler writes (a fixed list), the numbers 0, 1 and -1, and
 *     the string literals '\', 'array', 'integer', 'real'. So no request
 *     text reaches the SQL except validated identifiers;
 *   - compiling the same input twice gives the same SQL.
 * A violation prints the input and aborts (libFuzzer saves it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_catalog.h"
#include "gw_plan.h"

int LLVMFuzzerInitialize(int* argc, char*** argv);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static const uint8_t* g_data;
static size_t g_size;

static void fail(const char* what, const char* detail) {
  fprintf(stderr, "fuzz_gw_plan: invariant violated: %s\n  %s\n  input: %.*s\n",
          what, detail != NULL ? detail : "", (int)(g_size < 2000 ? g_size : 2000),
          (const char*)g_data);
  abort();
}

static const struct {
  int status;
  const char* codes;
} code_table[] = {
  {400, " invalid_json invalid_body missing_table invalid_identifier "
        "unknown_column unsafe_select relations_unsupported "
        "unsupported_operator unsupported_feature invalid_value invalid_cast "
        "invalid_expression empty_insert empty_update unfiltered_update "
        "unfiltered_delete order_without_bounds page_without_size "
        "invalid_on_conflict bounded_mutation_no_unique_identity "
        "resource_id_unsupported limit_exceeded "},
  {403, " forbidden policy_write_conflict "},
  {404, " unknown_table "},
  {500, " internal_error "},
};

static void check_error(const ath_gw_plan_t* p) {
  size_t i;
  char word[64];
  if (p->code == NULL || p->error[0] == '\0')
    fail("error without code or sentence", p->error);
  snprintf(word, sizeof word, " %s ", p->code);
  for (i = 0; i < sizeof code_table / sizeof code_table[0]; i++)
    if (code_table[i].status == p->status &&
        strstr(code_table[i].codes, word) != NULL)
      return;
  fail("status and code do not belong together", p->code);
}

static const char* const words[] = {
  "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "IS", "NULL", "TRUE",
  "FALSE", "LIKE", "ILIKE", "ESCAPE", "ORDER", "BY", "ASC", "DESC", "NULLS",
  "FIRST", "LAST", "LIMIT", "OFFSET", "COUNT", "INSERT", "INTO", "VALUES",
  "DEFAULT", "ON", "CONFLICT", "DO", "UPDATE", "SET", "NOTHING", "RETURNING",
  "DELETE", "AS", "lower", "CASE", "WHEN", "THEN", "ELSE", "END", "EXISTS",
  "json_valid", "to_json", "json_type", "json_each", "a", "b", "value", "type",
  "excluded", "ARRAY", "jsonb_array_elements_text", "jsonb", "json", "text",
  "uuid", "int", "integer", "bigint", "boolean", "bool", "numeric", "float",
  "double", "precision", "date", "timestamp", "timestamptz", NULL,
};

static int known_word(const char* s, size_t n) {
  size_t i;
  for (i = 0; words[i] != NULL; i++)
    if (strlen(words[i]) == n && memcmp(words[i], s, n) == 0)
      return 1;
  return 0;
}

static int ident_ok(const char* s, size_t n) {
  size_t i;
  if (n == 0 || n > 63)
    return 0;
  if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') ||
        s[0] == '_'))
    return 0;
  for (i = 1; i < n; i++)
    if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
          (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
      return 0;
  return 1;
}

static void check_stmt(const ath_gw_stmt_t* st, ath_gw_dialect_t d) {
  const char* s = st->sql;
  size_t i = 0, n, k = 0;
  if (s == NULL)
    fail("statement without SQL", NULL);
  n = strlen(s);
  for (i = 0; i < st->nparams; i++)
    if (st->params[i].type != ATH_GW_P_NULL && st->params[i].text == NULL)
      fail("parameter without text", s);
  i = 0;
  while (i < n) {
    char ch = s[i];
    if (ch == '"') {
      size_t j = i + 1;
      while (j < n && s[j] != '"')
        j++;
      if (j >= n || !ident_ok(s + i + 1, j - i - 1))
        fail("quoted identifier does not match the pattern", s);
      i = j + 1;
    } else if (ch == '?' && d == ATH_GW_SQLITE) {
      k++;
      i++;
    } else if (ch == '$' && d == ATH_GW_PG) {
      char* end;
      long v = strtol(s + i + 1, &end, 10);
      if (end == s + i + 1 || v != (long)k + 1)
        fail("placeholders out of order", s);
      k++;
      i = (size_t)(end - s);
    } else if (ch == '\'') {
      static const char* const lits[] = {"'\\'", "'array'", "'integer'",
                                         "'real'", NULL};
      size_t m;
      for (m = 0; lits[m] != NULL; m++)
        if (strncmp(s + i, lits[m], strlen(lits[m])) == 0)
          break;
      if (lits[m] == NULL)
        fail("unexpected string literal", s);
      i += strlen(lits[m]);
    } else if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
               ch == '_') {
      size_t j = i;
      while (j < n && ((s[j] >= 'A' && s[j] <= 'Z') ||
                       (s[j] >= 'a' && s[j] <= 'z') || s[j] == '_'))
        j++;
      if (!known_word(s + i, j - i))
        fail("unexpected word in SQL", s + i);
      i = j;
    } else if (ch >= '0' && ch <= '9') {
      if (ch > '1' || (i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9'))
        fail("unexpected number in SQL", s + i);
      i++;
    } else if (strchr(" (),.=<>*:-@[]", ch) != NULL) {
      i++;
    } else {
      fail("unexpected character in SQL", s + i);
    }
  }
  if (k != st->nparams)
    fail("placeholder count differs from parameter count", s);
}

static int compile_once(ath_gw_dialect_t d, ath_gw_op_t op, int flags,
                        const ath_gj_t* body, const ath_gj_t* pc,
                        const ath_gj_t* ps, ath_gw_plan_t* plan) {
  ath_gw_request_t req;
  memset(&req, 0, sizeof req);
  req.catalog = &gwc_catalog;
  req.dialect = d;
  req.op = op;
  req.body = body;
  req.strip_nulls_header = (flags & 2) ? (flags >> 2) & 1 : -1;
  req.full_rows = (flags >> 3) & 1;
  if (flags & 1) {
    req.policy_conditions = pc;
    req.policy_set = ps;
  }
  return ath__gw_compile(&req, plan);
}

static ath_gj_doc_t *g_pc, *g_ps;

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  static const char pc[] =
    "[{\"operator\":\"eq\",\"column\":\"owner\",\"value\":\"u1\"}]";
  static const char ps[] = "{\"owner\":\"u1\"}";
  (void)argc;
  (void)argv;
  if (ath__gj_parse(pc, sizeof pc - 1, &g_pc, NULL) != 0 ||
      ath__gj_parse(ps, sizeof ps - 1, &g_ps, NULL) != 0)
    abort();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ath_gw_dialect_t d;
  ath_gw_op_t op;
  int flags, rc;
  ath_gj_doc_t* doc = NULL;
  ath_gw_plan_t plan, again;
  size_t i;
  const ath_gj_t *pc, *ps;

  if (size < 3 || size > (1 << 20))
    return 0;
  g_data = data;
  g_size = size;
  d = (data[0] & 1) ? ATH_GW_PG : ATH_GW_SQLITE;
  op = (ath_gw_op_t)(data[1] & 3);
  flags = data[2] & 15;
  /* The policy applies to `notes`; on other tables it names an unknown
   * column and must fail closed (500), which the code check accepts. */
  pc = g_pc->root;
  ps = g_ps->root;

  rc = ath__gw_parse_body((const char*)data + 3, size - 3, &doc, &plan);
  if (rc != 0) {
    check_error(&plan);
    ath__gw_plan_free(&plan);
    return 0;
  }
  rc = compile_once(d, op, flags, doc->root, pc, ps, &plan);
  if (rc != 0) {
    check_error(&plan);
  } else {
    if (op == ATH_GW_FETCH && !plan.head && plan.nstmts != 1)
      fail("fetch without exactly one statement", NULL);
    if (op != ATH_GW_FETCH && plan.nstmts == 0)
      fail("mutation without statements", NULL);
    for (i = 0; plan.data_rows && i < plan.ncols; i++) {
      size_t j;
      for (j = 0; j < plan.nrow_cols; j++)
        if (plan.row_cols[j].column == plan.cols[i].column)
          break;
      if (j == plan.nrow_cols)
        fail("an answer column the statements do not return", NULL);
    }
    if (op != ATH_GW_FETCH && plan.returning && plan.nrow_cols == 0)
      fail("RETURNING nothing", NULL);
    for (i = 0; i < plan.nstmts; i++)
      check_stmt(&plan.stmts[i], d);
    if (plan.has_count)
      check_stmt(&plan.count, d);
    if (rc == 0 && compile_once(d, op, flags, doc->root, pc, ps, &again) == 0) {
      if (again.nstmts != plan.nstmts ||
          (plan.nstmts > 0 && strcmp(again.stmts[0].sql, plan.stmts[0].sql)))
        fail("not deterministic", plan.nstmts ? plan.stmts[0].sql : "");
      ath__gw_plan_free(&again);
    } else {
      fail("second compile failed", NULL);
    }
  }
  ath__gw_plan_free(&plan);
  ath__gj_free(doc);
  return 0;
}
