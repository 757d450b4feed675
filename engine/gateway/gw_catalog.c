/* The gateway's catalog (GATEWAY §6.1): the tables, views, columns and keys
 * of a database, read at start (and on refresh) from SQLite's pragmas or
 * PostgreSQL's pg_catalog. Identifiers the compiler accepts come only from
 * here; the configuration decides which tables are exposed, with which
 * operations and which columns hidden. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "internal.h"
#include "gw_server.h"

/* A table being collected: columns and key sets grow as rows arrive. */
typedef struct {
  ath_gw_table_t t;
  ath_gw_column_t* cols;
  size_t ncols, capcols;
  ath_gw_keyset_t* uniq;
  size_t nuniq, capuniq;
} draft_t;

typedef struct {
  ath_gws_cat_t* c;
  draft_t* d;
  size_t n, cap;
} builder_t;

/* Makes room for one more element in *items (n used of *cap). */
static int grow(void* items, size_t n, size_t* cap, size_t size, size_t first) {
  void** p = items;
  if (n < *cap)
    return 0;
  size_t ncap = *cap ? *cap * 2 : first;
  void* q = realloc(*p, ncap * size);
  if (q == NULL)
    return ATH_ENOMEM;
  *p = q;
  *cap = ncap;
  return 0;
}

static char* dup(ath_gws_cat_t* c, const char* s, size_t n) {
  return ath__gw_arena_strdup(&c->arena, s ? s : "", s ? n : 0);
}

static draft_t* add_table(builder_t* b, const char* schema, const char* name, int is_view) {
  if (grow(&b->d, b->n, &b->cap, sizeof(*b->d), 16) != 0)
    return NULL;
  draft_t* d = &b->d[b->n];
  memset(d, 0, sizeof(*d));
  d->t.schema = schema ? dup(b->c, schema, strlen(schema)) : NULL;
  d->t.name = dup(b->c, name, strlen(name));
  d->t.is_view = is_view;
  if (d->t.name == NULL || (schema && d->t.schema == NULL))
    return NULL;
  b->n++;
  return d;
}

static draft_t* find_draft(builder_t* b, const char* schema, const char* name) {
  for (size_t i = 0; i < b->n; i++) {
    draft_t* d = &b->d[i];
    if (strcmp(d->t.name, name) == 0 && (schema == NULL || (d->t.schema && strcmp(d->t.schema, schema) == 0)))
      return d;
  }
  return NULL;
}

static int add_column(builder_t* b, draft_t* d, const char* name, const char* type, ath_gw_kind_t kind,
                      const char* elem) {
  if (grow(&d->cols, d->ncols, &d->capcols, sizeof(*d->cols), 8) != 0)
    return ATH_ENOMEM;
  ath_gw_column_t* c = &d->cols[d->ncols];
  memset(c, 0, sizeof(*c));
  c->name = dup(b->c, name, strlen(name));
  c->type = dup(b->c, type, strlen(type));
  c->kind = kind;
  c->elem_type = elem ? dup(b->c, elem, strlen(elem)) : NULL;
  if (!c->name || !c->type || (elem && !c->elem_type))
    return ATH_ENOMEM;
  d->ncols++;
  return 0;
}

static int col_index(const draft_t* d, const char* name, size_t n) {
  for (size_t i = 0; i < d->ncols; i++)
    if (strlen(d->cols[i].name) == n && memcmp(d->cols[i].name, name, n) == 0)
      return (int)i;
  return -1;
}

/* A key set from a comma-separated column list; 0, or -1 when a column is
 * unknown (an expression index: not a key we can use). */
static int keyset(builder_t* b, const draft_t* d, const char* list, ath_gw_keyset_t* out) {
  size_t n = 1;
  for (const char* p = list; *p; p++)
    n += *p == ',';
  int* cols = ath__gw_arena_alloc(&b->c->arena, n * sizeof(int));
  if (cols == NULL)
    return ATH_ENOMEM;
  size_t k = 0;
  const char* p = list;
  while (k < n) {
    const char* e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    int i = col_index(d, p, len);
    if (i < 0)
      return -1;
    cols[k++] = i;
    if (e == NULL)
      break;
    p = e + 1;
  }
  out->cols = cols;
  out->ncols = k;
  return 0;
}

static int add_unique(builder_t* b, draft_t* d, const char* list) {
  ath_gw_keyset_t ks;
  int rc = keyset(b, d, list, &ks);
  if (rc != 0)
    return rc == -1 ? 0 : rc;
  if (grow(&d->uniq, d->nuniq, &d->capuniq, sizeof(*d->uniq), 4) != 0)
    return ATH_ENOMEM;
  d->uniq[d->nuniq++] = ks;
  return 0;
}

/* SQLite: the kind of a declared type (GATEWAY §7, SQLite's affinity
 * rules, with BOOLEAN/BOOL and JSON/JSONB declared types). */
static ath_gw_kind_t sqlite_kind(const char* decl) {
  char up[64];
  size_t n = 0;
  for (; decl[n] && n < sizeof(up) - 1; n++)
    up[n] = (char)toupper((unsigned char)decl[n]);
  up[n] = '\0';
  if (strcmp(up, "BOOLEAN") == 0 || strcmp(up, "BOOL") == 0)
    return ATH_GW_KIND_BOOLEAN;
  if (strcmp(up, "JSON") == 0 || strcmp(up, "JSONB") == 0)
    return ATH_GW_KIND_JSON;
  if (strstr(up, "INT"))
    return ATH_GW_KIND_INTEGER;
  if (strstr(up, "CHAR") || strstr(up, "CLOB") || strstr(up, "TEXT"))
    return ATH_GW_KIND_TEXT;
  if (n == 0 || strstr(up, "BLOB"))
    return ATH_GW_KIND_BLOB;
  if (strstr(up, "REAL") || strstr(up, "FLOA") || strstr(up, "DOUB"))
    return ATH_GW_KIND_REAL;
  return ATH_GW_KIND_NUMERIC;
}

static ath_gw_kind_t pg_kind(const char* typname, const char* category) {
  static const struct {
    const char* name;
    ath_gw_kind_t kind;
  } map[] = {
    {"int2", ATH_GW_KIND_INTEGER},     {"int4", ATH_GW_KIND_INTEGER},
    {"int8", ATH_GW_KIND_INTEGER},     {"float4", ATH_GW_KIND_REAL},
    {"float8", ATH_GW_KIND_REAL},      {"numeric", ATH_GW_KIND_NUMERIC},
    {"bool", ATH_GW_KIND_BOOLEAN},     {"json", ATH_GW_KIND_JSON},
    {"jsonb", ATH_GW_KIND_JSON},       {"bytea", ATH_GW_KIND_BLOB},
    {"date", ATH_GW_KIND_DATETIME},    {"time", ATH_GW_KIND_DATETIME},
    {"timetz", ATH_GW_KIND_DATETIME},  {"timestamp", ATH_GW_KIND_DATETIME},
    {"timestamptz", ATH_GW_KIND_DATETIME}, {"text", ATH_GW_KIND_TEXT},
    {"varchar", ATH_GW_KIND_TEXT},     {"bpchar", ATH_GW_KIND_TEXT},
    {"citext", ATH_GW_KIND_TEXT},      {"uuid", ATH_GW_KIND_TEXT},
    {"name", ATH_GW_KIND_TEXT},
  };
  if (category[0] == 'A')
    return ATH_GW_KIND_ARRAY;
  if (category[0] == 'E')
    return ATH_GW_KIND_TEXT; /* enums */
  for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
    if (strcmp(map[i].name, typname) == 0)
      return map[i].kind;
  return ATH_GW_KIND_OTHER;
}

static const char* cell(ath_db_res_t* r, int row, int col) {
  ath_db_value_t v;
  if (ath__db_res_value(r, row, col, &v) != 0 || v.type == ATH_DB_NULL)
    return NULL;
  return v.type == ATH_DB_TEXT ? v.s : NULL;
}

static int64_t cell_int(ath_db_res_t* r, int row, int col) {
  ath_db_value_t v;
  if (ath__db_res_value(r, row, col, &v) != 0)
    return 0;
  return v.type == ATH_DB_INT || v.type == ATH_DB_BOOL ? v.i : v.type == ATH_DB_TEXT ? atoll(v.s) : 0;
}

/* Quotes an identifier for a pragma: "name" with "" doubled. */
static void quoted(char* out, size_t cap, const char* name) {
  size_t n = 0;
  out[n++] = '"';
  for (const char* p = name; *p && n + 3 < cap; p++) {
    if (*p == '"')
      out[n++] = '"';
    out[n++] = *p;
  }
  out[n++] = '"';
  out[n] = '\0';
}

static int introspect_sqlite(ath_db_t* db, builder_t* b, ath_db_error_t* err) {
  ath_db_res_t* r;
  int rc = ath__db_exec(db,
                        "SELECT name, type FROM sqlite_schema WHERE type IN ('table','view')"
                        " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
                        NULL, 0, &r, err);
  if (rc != 0)
    return rc;
  for (int i = 0; rc == 0 && i < ath__db_res_nrows(r); i++) {
    const char* name = cell(r, i, 0);
    const char* type = cell(r, i, 1);
    if (name && type && add_table(b, NULL, name, strcmp(type, "view") == 0) == NULL)
      rc = ATH_ENOMEM;
  }
  ath__db_res_free(r);
  for (size_t t = 0; rc == 0 && t < b->n; t++) {
    draft_t* d = &b->d[t];
    char sql[600], q[300];
    quoted(q, sizeof(q), d->t.name);
    snprintf(sql, sizeof(sql), "PRAGMA table_info(%s)", q);
    if ((rc = ath__db_exec(db, sql, NULL, 0, &r, err)) != 0)
      break;
    /* cid, name, type, notnull, dflt_value, pk (its position in the key) */
    int pk[64], npk = 0;
    for (int i = 0; rc == 0 && i < ath__db_res_nrows(r); i++) {
      const char* name = cell(r, i, 1);
      const char* type = cell(r, i, 2);
      if (name == NULL)
        continue;
      rc = add_column(b, d, name, type ? type : "", sqlite_kind(type ? type : ""), NULL);
      int64_t pos = cell_int(r, i, 5);
      if (rc == 0 && pos > 0 && pos <= 64) {
        pk[pos - 1] = (int)d->ncols - 1;
        if (pos > npk)
          npk = (int)pos;
      }
    }
    ath__db_res_free(r);
    if (rc == 0 && npk > 0) {
      int* cols = ath__gw_arena_alloc(&b->c->arena, (size_t)npk * sizeof(int));
      if (cols == NULL) {
        rc = ATH_ENOMEM;
        break;
      }
      memcpy(cols, pk, (size_t)npk * sizeof(int));
      d->t.pk.cols = cols;
      d->t.pk.ncols = (size_t)npk;
    }
    if (rc != 0 || d->t.is_view)
      continue;
    snprintf(sql, sizeof(sql), "PRAGMA index_list(%s)", q);
    if ((rc = ath__db_exec(db, sql, NULL, 0, &r, err)) != 0)
      break;
    /* seq, name, unique, origin, partial */
    for (int i = 0; rc == 0 && i < ath__db_res_nrows(r); i++) {
      const char* idx = cell(r, i, 1);
      if (idx == NULL || cell_int(r, i, 2) == 0 || cell_int(r, i, 4) != 0)
        continue;
      char q2[300], sql2[600];
      quoted(q2, sizeof(q2), idx);
      snprintf(sql2, sizeof(sql2), "PRAGMA index_info(%s)", q2);
      ath_db_res_t* r2;
      if ((rc = ath__db_exec(db, sql2, NULL, 0, &r2, err)) != 0)
        break;
      ath_buf_t list = {0};
      int expr = 0;
      for (int k = 0; k < ath__db_res_nrows(r2); k++) { /* seqno, cid, name */
        const char* cn = cell(r2, k, 2);
        if (cn == NULL) {
          expr = 1; /* an expression: not a column key */
          break;
        }
        if (k > 0)
          ath__buf_lit(&list, ",");
        ath__buf_append(&list, cn, strlen(cn));
      }
      ath__db_res_free(r2);
      if (!expr && list.data != NULL)
        rc = add_unique(b, d, list.data);
      ath__buf_free(&list);
    }
    ath__db_res_free(r);
  }
  return rc;
}

static int introspect_pg(ath_db_t* db, builder_t* b, ath_db_error_t* err) {
  ath_db_res_t* r;
  int rc = ath__db_exec(
    db,
    "SELECT n.nspname, c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod),"
    " t.typname, t.typcategory, et.typname"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
    " JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'"
    " WHERE c.relkind IN ('r','v','p','m','f') AND n.nspname NOT IN ('pg_catalog','information_schema')"
    " AND n.nspname NOT LIKE 'pg\\_%'"
    " ORDER BY n.nspname, c.relname, a.attnum",
    NULL, 0, &r, err);
  if (rc != 0)
    return rc;
  for (int i = 0; rc == 0 && i < ath__db_res_nrows(r); i++) {
    const char* schema = cell(r, i, 0);
    const char* name = cell(r, i, 1);
    const char* kind = cell(r, i, 2);
    const char* col = cell(r, i, 3);
    const char* type = cell(r, i, 4);
    const char* typname = cell(r, i, 5);
    const char* cat = cell(r, i, 6);
    if (!schema || !name || !kind || !col || !type || !typname || !cat)
      continue;
    /* rows come table by table: the last table is nearly always the one */
    draft_t* d = b->n > 0 && strcmp(b->d[b->n - 1].t.name, name) == 0 && strcmp(b->d[b->n - 1].t.schema, schema) == 0
                   ? &b->d[b->n - 1]
                   : find_draft(b, schema, name);
    if (d == NULL && (d = add_table(b, schema, name, kind[0] == 'v' || kind[0] == 'm')) == NULL) {
      rc = ATH_ENOMEM;
      break;
    }
    const char* elem = cell(r, i, 7);
    rc = add_column(b, d, col, type, pg_kind(typname, cat), cat[0] == 'A' ? elem : NULL);
  }
  ath__db_res_free(r);
  if (rc != 0)
    return rc;
  rc = ath__db_exec(
    db,
    "SELECT n.nspname, c.relname, i.indisprimary,"
    " (SELECT string_agg(a.attname, ',' ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)"
    "  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE (i.indisprimary OR i.indisunique) AND i.indpred IS NULL AND i.indexprs IS NULL"
    " AND n.nspname NOT IN ('pg_catalog','information_schema')"
    " ORDER BY n.nspname, c.relname, i.indisprimary DESC",
    NULL, 0, &r, err);
  if (rc != 0)
    return rc;
  for (int i = 0; rc == 0 && i < ath__db_res_nrows(r); i++) {
    const char* schema = cell(r, i, 0);
    const char* name = cell(r, i, 1);
    const char* list = cell(r, i, 3);
    draft_t* d = schema && name ? find_draft(b, schema, name) : NULL;
    if (d == NULL || list == NULL)
      continue;
    ath_db_value_t v;
    int primary = ath__db_res_value(r, i, 2, &v) == 0 && v.type == ATH_DB_BOOL && v.i;
    if (primary && d->t.pk.ncols == 0) {
      int k = keyset(b, d, list, &d->t.pk);
      rc = k == -1 ? 0 : k;
    } else {
      rc = add_unique(b, d, list);
    }
  }
  ath__db_res_free(r);
  return rc;
}

/* Whether configured table name `want` names the table `schema`.`name` of
 * this dialect: exact on PostgreSQL ("name" means public.name),
 * case-insensitive on SQLite (which drops "main."). */
static int names_in(const char* schema, const char* name, const char* want, ath_gw_dialect_t dialect) {
  if (dialect == ATH_GW_PG) {
    const char* dot = strchr(want, '.');
    if (dot == NULL)
      return strcmp(schema, "public") == 0 && strcmp(name, want) == 0;
    return strlen(schema) == (size_t)(dot - want) && memcmp(schema, want, (size_t)(dot - want)) == 0 &&
           strcmp(name, dot + 1) == 0;
  }
  if (strncasecmp(want, "main.", 5) == 0)
    want += 5;
  return strcasecmp(name, want) == 0;
}

int ath__gws_names(const ath_gw_table_t* t, const char* want, ath_gw_dialect_t dialect) {
  return names_in(t->schema ? t->schema : "main", t->name, want, dialect);
}

int ath__gws_check_tables(const ath_gws_config_t* cfg, char* err, size_t errlen) {
  for (int d = 0; d < cfg->ndbs; d++) {
    ath_gw_dialect_t dialect = strncmp(cfg->db_urls[d], "sqlite:", 7) == 0 ? ATH_GW_SQLITE : ATH_GW_PG;
    for (int i = 0; i < cfg->ntables; i++) {
      /* entry i as the table it would name: SQLite "main.x" is x */
      const char* want = cfg->tables[i].name;
      const char* dot = strchr(want, '.');
      char schema[256];
      const char* name = want;
      if (dialect == ATH_GW_PG) {
        snprintf(schema, sizeof(schema), "%.*s", dot ? (int)(dot - want) : 6, dot ? want : "public");
        name = dot ? dot + 1 : want;
      } else {
        snprintf(schema, sizeof(schema), "main");
        if (strncasecmp(want, "main.", 5) == 0)
          name = want + 5;
      }
      for (int k = 0; k < i; k++) {
        if (names_in(schema, name, cfg->tables[k].name, dialect)) {
          snprintf(err, errlen, "invalid gateway config: table %s is listed twice (as %s and %s)", name,
                   cfg->tables[k].name, want);
          return ATH_EINVAL;
        }
      }
    }
  }
  return 0;
}

static int in_list(char** list, const char* s, int nocase) {
  for (; list && *list; list++)
    if ((nocase ? strcasecmp(*list, s) : strcmp(*list, s)) == 0)
      return 1;
  return 0;
}

int ath__gws_introspect(ath_db_t* db, const ath_gws_config_t* cfg, ath_gws_cat_t** out,
                        ath_db_error_t* err) {
  ath_gws_cat_t* c = calloc(1, sizeof(*c));
  if (c == NULL)
    return ATH_ENOMEM;
  c->dialect = ath__db_kind(db) == ATH_DB_PG ? ATH_GW_PG : ATH_GW_SQLITE;
  builder_t b = {c, NULL, 0, 0};
  int rc = c->dialect == ATH_GW_PG ? introspect_pg(db, &b, err) : introspect_sqlite(db, &b, err);
  ath_gw_table_t* tables = NULL;
  if (rc == 0 && b.n > 0 && (tables = ath__gw_arena_alloc(&c->arena, b.n * sizeof(*tables))) == NULL)
    rc = ATH_ENOMEM;
  for (size_t i = 0; rc == 0 && i < b.n; i++) {
    draft_t* d = &b.d[i];
    ath_gw_table_t* t = &tables[i];
    *t = d->t;
    ath_gw_column_t* cols = ath__gw_arena_alloc(&c->arena, (d->ncols ? d->ncols : 1) * sizeof(*cols));
    ath_gw_keyset_t* uniq = ath__gw_arena_alloc(&c->arena, (d->nuniq ? d->nuniq : 1) * sizeof(*uniq));
    if (cols == NULL || uniq == NULL) {
      rc = ATH_ENOMEM;
      break;
    }
    if (d->ncols)
      memcpy(cols, d->cols, d->ncols * sizeof(*cols));
    if (d->nuniq)
      memcpy(uniq, d->uniq, d->nuniq * sizeof(*uniq));
    t->columns = cols;
    t->ncolumns = d->ncols;
    t->uniques = uniq;
    t->nuniques = d->nuniq;
    for (int k = 0; k < cfg->ntables; k++) {
      const ath_gws_table_t* e = &cfg->tables[k];
      if (!ath__gws_names(t, e->name, c->dialect))
        continue;
      t->exposed = 1;
      t->ops = e->ops;
      for (size_t j = 0; j < t->ncolumns; j++)
        cols[j].hidden = in_list(e->hidden, cols[j].name, c->dialect == ATH_GW_SQLITE);
    }
  }
  for (size_t i = 0; i < b.n; i++) {
    free(b.d[i].cols);
    free(b.d[i].uniq);
  }
  free(b.d);
  if (rc != 0) {
    if (rc == ATH_ENOMEM)
      ath__db_seterr(err, ATH_ENOMEM, "", "out of memory reading the catalog", NULL, NULL);
    ath__gws_cat_free(c);
    return rc;
  }
  c->cat.tables = tables;
  c->cat.ntables = b.n;
  *out = c;
  return 0;
}

void ath__gws_cat_free(ath_gws_cat_t* c) {
  while (c != NULL) {
    ath_gws_cat_t* older = c->older;
    ath__gw_arena_free(&c->arena);
    free(c);
    c = older;
  }
}
