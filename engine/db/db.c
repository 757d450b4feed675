/* The database layer's common half: URLs, error mapping, the placeholder
 * rewrite, results and the dispatch to db_sqlite.c / db_pg.c. See db.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "athena.h"
#include "db.h"

/* ---------------------------------------------------------------- errors */

const char* ath__db_err_name(int code) {
#define XX(name, val, _gw, _msg) \
  if (code == (val))             \
    return #name;
  ATH_DB_ERRNO_MAP(XX)
#undef XX
  if (code == ATH_ENOMEM || code == ATH_ENOSYS)
    return ath_err_name(code);
  return "EDB";
}

const char* ath__db_err_gateway(int code) {
#define XX(name, val, gw, _msg) \
  if (code == (val))            \
    return gw;
  ATH_DB_ERRNO_MAP(XX)
#undef XX
  return "database_error";
}

int ath__db_err_retryable(int code) {
  return code == ATH_DB_ECONNLOST || code == ATH_DB_ETIMEDOUT || code == ATH_DB_EBUSY;
}

int ath__db_map_sqlstate(const char* st) {
  if (st == NULL || strlen(st) != 5)
    return ATH_DB_EDB;
  static const struct {
    const char* state;
    int code;
  } exact[] = {
    {"23505", ATH_DB_EUNIQUE},   {"23503", ATH_DB_EFOREIGNKEY}, {"23502", ATH_DB_ENOTNULL},
    {"23514", ATH_DB_ECHECK},    {"42804", ATH_DB_EINVAL},      {"42883", ATH_DB_EINVAL},
    {"57014", ATH_DB_ETIMEDOUT}, {"57P01", ATH_DB_ECONNLOST},   {"57P02", ATH_DB_ECONNLOST},
    {"57P03", ATH_DB_ECONNLOST}, {"40001", ATH_DB_EBUSY},       {"40P01", ATH_DB_EBUSY},
    {"55P03", ATH_DB_EBUSY},     {"53100", ATH_DB_ENOSPC}, /* disk_full */
    {"58030", ATH_DB_EIO}, /* io_error */
    {"21000", ATH_DB_EINVAL}, /* one statement would change a row twice (an upsert batch
                               * with a duplicate key): the request's values */
  };
  for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
    if (memcmp(st, exact[i].state, 5) == 0)
      return exact[i].code;
  /* by class: data exceptions are bad values, 42 is bad SQL or a name that
   * does not exist, 08 a connection that failed */
  if (memcmp(st, "22", 2) == 0)
    return ATH_DB_EINVAL;
  if (memcmp(st, "42", 2) == 0)
    return ATH_DB_ESYNTAX;
  if (memcmp(st, "08", 2) == 0)
    return ATH_DB_ECONNLOST;
  return ATH_DB_EDB;
}

/* SQLite's primary and extended codes, spelled out (sqlite3.h values, so
 * this file needs no sqlite3.h). */
int ath__db_map_sqlite(int xrc, int prepare) {
  switch (xrc) {
    case 2067: /* SQLITE_CONSTRAINT_UNIQUE */
    case 1555: /* SQLITE_CONSTRAINT_PRIMARYKEY */
      return ATH_DB_EUNIQUE;
    case 787: /* SQLITE_CONSTRAINT_FOREIGNKEY */
      return ATH_DB_EFOREIGNKEY;
    case 1299: /* SQLITE_CONSTRAINT_NOTNULL */
      return ATH_DB_ENOTNULL;
    case 275: /* SQLITE_CONSTRAINT_CHECK */
      return ATH_DB_ECHECK;
    case 3091: /* SQLITE_CONSTRAINT_DATATYPE (STRICT tables) */
    case 20:   /* SQLITE_MISMATCH */
    case 25:   /* SQLITE_RANGE */
    case 18:   /* SQLITE_TOOBIG */
      return ATH_DB_EINVAL;
    case 9: /* SQLITE_INTERRUPT */
      return ATH_DB_ETIMEDOUT;
    case 14: /* SQLITE_CANTOPEN */
      return ATH_DB_ECONNLOST;
  }
  switch (xrc & 0xff) {
    case 5: /* SQLITE_BUSY */
    case 6: /* SQLITE_LOCKED */
      return ATH_DB_EBUSY;
    case 13: /* SQLITE_FULL */
      return ATH_DB_ENOSPC;
    case 10: /* SQLITE_IOERR_* */
      return xrc == 3082 /* SQLITE_IOERR_NOMEM */ ? ATH_DB_EDB : ATH_DB_EIO;
    case 1: /* SQLITE_ERROR: from prepare, SQL that does not parse or names
             * nothing */
      return prepare ? ATH_DB_ESYNTAX : ATH_DB_EDB;
  }
  return ATH_DB_EDB;
}

/* Appends `s` (n bytes) to out, leaving room for a NUL; truncates. */
static void put(char* out, size_t cap, size_t* len, const char* s, size_t n) {
  if (*len + n >= cap)
    n = cap - 1 - *len;
  memcpy(out + *len, s, n);
  *len += n;
}

void ath__db_seterr(ath_db_error_t* err, int code, const char* state, const char* msg,
                    const char* secret1, const char* secret2) {
  err->code = code;
  snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", state ? state : "");
  if (msg == NULL)
    msg = "";
  size_t l1 = secret1 ? strlen(secret1) : 0, l2 = secret2 ? strlen(secret2) : 0;
  size_t len = 0;
  /* the longer secret first: the URL holds the password */
  const char* a = l1 >= l2 ? secret1 : secret2;
  const char* b = l1 >= l2 ? secret2 : secret1;
  size_t la = l1 >= l2 ? l1 : l2, lb = l1 >= l2 ? l2 : l1;
  for (const char* p = msg; *p;) {
    if (la && strncmp(p, a, la) == 0) {
      put(err->message, sizeof(err->message), &len, "***", 3);
      p += la;
    } else if (lb && strncmp(p, b, lb) == 0) {
      put(err->message, sizeof(err->message), &len, "***", 3);
      p += lb;
    } else {
      put(err->message, sizeof(err->message), &len, p, 1);
      p++;
    }
  }
  /* drop the trailing newline libpq ends its messages with */
  while (len > 0 && (err->message[len - 1] == '\n' || err->message[len - 1] == ' '))
    len--;
  err->message[len] = '\0';
}

/* --------------------------------------------------- placeholder rewrite */

/* Length of a dollar-quote tag at p ("$tag$" or "$$"), 0 if none. */
static size_t dollar_tag(const char* p) {
  size_t i = 1;
  if (p[i] >= '0' && p[i] <= '9')
    return 0; /* $1: a parameter */
  while ((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
         (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || (unsigned char)p[i] >= 0x80)
    i++;
  return p[i] == '$' ? i + 1 : 0;
}

/* Where the quoted or commented run at p ends (just past it), or NULL if
 * p does not start one; `start` is the start of the text (an E before a
 * quote makes an escape string). Unterminated runs end at the end. */
static const char* skip_quoted(const char* start, const char* p) {
  if (*p == '\'' || *p == '"') {
    int esc = *p == '\'' && p > start && (p[-1] == 'E' || p[-1] == 'e');
    char q = *p++;
    for (; *p; p++) {
      if (esc && *p == '\\' && p[1]) {
        p++;
      } else if (*p == q) {
        if (p[1] == q) { /* doubled: still inside */
          p++;
          continue;
        }
        return p + 1;
      }
    }
    return p;
  }
  if (p[0] == '-' && p[1] == '-') {
    while (*p && *p != '\n')
      p++;
    return p;
  }
  if (p[0] == '/' && p[1] == '*') {
    int depth = 0;
    while (*p) {
      if (p[0] == '/' && p[1] == '*') {
        depth++;
        p += 2;
      } else if (p[0] == '*' && p[1] == '/') {
        p += 2;
        if (--depth == 0)
          return p;
      } else {
        p++;
      }
    }
    return p;
  }
  if (*p == '$') {
    size_t n = dollar_tag(p);
    if (n == 0)
      return NULL;
    const char* end = p + n;
    while (*end && strncmp(end, p, n) != 0)
      end++;
    return *end ? end + n : end;
  }
  return NULL;
}

/* Whether the SQL uses $n placeholders outside quotes and comments. */
static int has_dollar_params(const char* sql) {
  const char* prev = NULL;
  for (const char* p = sql; *p;) {
    const char* q = skip_quoted(sql, p);
    if (q != NULL) {
      prev = q - 1;
      p = q;
      continue;
    }
    /* $1 after an identifier character is part of a name (a$1) */
    int ident = prev && ((*prev >= 'a' && *prev <= 'z') || (*prev >= 'A' && *prev <= 'Z') ||
                         (*prev >= '0' && *prev <= '9') || *prev == '_');
    if (*p == '$' && p[1] >= '0' && p[1] <= '9' && !ident)
      return 1;
    prev = p++;
  }
  return 0;
}

char* ath__db_rewrite_placeholders(const char* sql, int* nph) {
  size_t len = strlen(sql);
  *nph = 0;
  if (has_dollar_params(sql)) {
    int max = 0;
    for (const char* p = sql; *p;) {
      const char* q = skip_quoted(sql, p);
      if (q != NULL) {
        p = q;
        continue;
      }
      if (*p == '$' && p[1] >= '0' && p[1] <= '9') {
        int v = atoi(p + 1);
        if (v > max)
          max = v;
      }
      p++;
    }
    *nph = max;
    char* out = malloc(len + 1);
    if (out != NULL)
      memcpy(out, sql, len + 1);
    return out;
  }
  /* each ? grows to at most $65535: 6 bytes */
  char* out = malloc(len * 6 + 1);
  if (out == NULL)
    return NULL;
  char* o = out;
  for (const char* p = sql; *p;) {
    const char* q = skip_quoted(sql, p);
    if (q != NULL) {
      memcpy(o, p, (size_t)(q - p));
      o += q - p;
      p = q;
      continue;
    }
    if (*p == '?') {
      o += sprintf(o, "$%d", ++*nph);
      p++;
      continue;
    }
    *o++ = *p++;
  }
  *o = '\0';
  return out;
}

/* --------------------------------------------------------------- results */

struct ath_db_chunk_s {
  ath_db_chunk_t* next;
  size_t used, cap;
  char data[];
};

char* ath__db_res_alloc(ath_db_res_t* r, size_t n) {
  n = (n + 7) & ~(size_t)7;
  ath_db_chunk_t* c = r->arena;
  if (c == NULL || c->cap - c->used < n) {
    size_t cap = n > 16000 ? n : 16000;
    ath_db_chunk_t* nc = malloc(sizeof(*nc) + cap);
    if (nc == NULL)
      return NULL;
    nc->used = 0;
    nc->cap = cap;
    /* a big one-off goes behind the current chunk, which keeps its room */
    if (c != NULL && cap == n) {
      nc->next = c->next;
      c->next = nc;
    } else {
      nc->next = c;
      r->arena = nc;
    }
    c = nc;
  }
  char* p = c->data + c->used;
  c->used += n;
  return p;
}

ath_db_res_t* ath__db_res_new(ath_db_kind_t kind) {
  ath_db_res_t* r = calloc(1, sizeof(*r));
  if (r != NULL)
    r->kind = kind;
  return r;
}

int ath__db_res_ncols(const ath_db_res_t* r) {
  return r->ncols;
}

int ath__db_res_nrows(const ath_db_res_t* r) {
  return r->nrows;
}

const char* ath__db_res_colname(const ath_db_res_t* r, int col) {
  return r->names[col];
}

int ath__db_res_value(ath_db_res_t* r, int row, int col, ath_db_value_t* v) {
  if (r->kind == ATH_DB_PG)
    return ath__db_pg_value(r, row, col, v);
  *v = r->cells[(size_t)row * (size_t)r->ncols + (size_t)col];
  return 0;
}

int64_t ath__db_res_changes(const ath_db_res_t* r) {
  return r->changes;
}

int ath__db_res_last_id(const ath_db_res_t* r, int64_t* id) {
  if (!r->has_last_id)
    return 0;
  *id = r->last_id;
  return 1;
}

void ath__db_res_free(ath_db_res_t* r) {
  if (r == NULL)
    return;
  if (r->pg != NULL)
    ath__db_pg_res_clear(r);
  for (ath_db_chunk_t* c = r->arena; c != NULL;) {
    ath_db_chunk_t* next = c->next;
    free(c);
    c = next;
  }
  free(r->cells);
  free(r);
}

/* ------------------------------------------------------------ connections */

int ath__db_url_kind(const char* url) {
  if (url == NULL)
    return 0;
  if (strncmp(url, "sqlite:", 7) == 0 && url[7] != '\0')
    return ATH_DB_SQLITE;
  if (strncmp(url, "postgres://", 11) == 0 || strncmp(url, "postgresql://", 13) == 0)
    return ATH_DB_PG;
  return 0;
}

int ath__db_new(const char* url, ath_db_t** out, ath_db_error_t* err) {
  int kind = ath__db_url_kind(url);
  if (kind == 0) {
    ath__db_seterr(err, ATH_DB_EINVAL, NULL,
                   "invalid database URL (sqlite:<path>, sqlite::memory: or postgres://...)",
                   NULL, NULL);
    return ATH_DB_EINVAL;
  }
  ath_db_t* db = calloc(1, sizeof(*db));
  if (db == NULL || (db->url = strdup(url)) == NULL) {
    free(db);
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return ATH_ENOMEM;
  }
  db->kind = (ath_db_kind_t)kind;
  if (kind == ATH_DB_PG) {
    int rc = ath__db_pg_check_url(db, err);
    if (rc != 0) {
      ath__db_free(db);
      return rc;
    }
  }
  *out = db;
  return 0;
}

ath_db_kind_t ath__db_kind(const ath_db_t* db) {
  return db->kind;
}

int ath__db_connect(ath_db_t* db, ath_db_error_t* err) {
  if (ath__db_connected(db))
    return 0;
  return db->kind == ATH_DB_PG ? ath__db_pg_connect(db, err) : ath__db_sqlite_connect(db, err);
}

int ath__db_connected(const ath_db_t* db) {
  return db->kind == ATH_DB_PG ? db->pg != NULL : db->sq != NULL;
}

void ath__db_disconnect(ath_db_t* db) {
  if (db->kind == ATH_DB_PG)
    ath__db_pg_disconnect(db);
  else
    ath__db_sqlite_disconnect(db);
}

void ath__db_free(ath_db_t* db) {
  if (db == NULL)
    return;
  ath__db_abort(db);
  ath__db_disconnect(db);
  free(db->url);
  free(db->password);
  free(db);
}

/* A statement may run (none in flight): connected, or err set. */
static int ready(ath_db_t* db, ath_db_error_t* err) {
  if (ath__db_busy(db)) {
    ath__db_seterr(err, ATH_DB_EBUSY, NULL, "another statement is in flight on this connection",
                   NULL, NULL);
    return ATH_DB_EBUSY;
  }
  return ath__db_connect(db, err);
}

int ath__db_exec_rows(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n, ath_db_row_fn fn,
                      void* ud, int64_t* changes, ath_db_error_t* err) {
  *changes = 0;
  int rc = ready(db, err);
  if (rc != 0)
    return rc;
  if (db->kind == ATH_DB_SQLITE)
    return ath__db_sqlite_exec_rows(db, sql, params, n, fn, ud, changes, err);
  ath_db_res_t* r;
  if ((rc = ath__db_pg_exec(db, sql, params, n, &r, err)) != 0)
    return rc;
  rc = ath__db_res_rows(r, fn, ud, err);
  *changes = ath__db_res_changes(r);
  ath__db_res_free(r);
  return rc;
}

int ath__db_res_rows(ath_db_res_t* r, ath_db_row_fn fn, void* ud, ath_db_error_t* err) {
  int rc = 0;
  int ncols = ath__db_res_ncols(r), nrows = ath__db_res_nrows(r);
  ath_db_value_t* row = calloc(ncols > 0 ? (size_t)ncols : 1, sizeof(*row));
  for (int i = 0; row != NULL && rc == 0 && i < nrows; i++) {
    for (int c = 0; rc == 0 && c < ncols; c++)
      rc = ath__db_res_value(r, i, c, &row[c]);
    if (rc == 0 && fn(ud, row, ncols) != 0)
      rc = ATH_ENOMEM;
  }
  if (row == NULL || rc != 0) {
    rc = ATH_ENOMEM;
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
  }
  free(row);
  return rc;
}

int ath__db_exec(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                 ath_db_res_t** out, ath_db_error_t* err) {
  *out = NULL;
  int rc = ready(db, err);
  if (rc != 0)
    return rc;
  if (db->kind == ATH_DB_PG)
    return ath__db_pg_exec(db, sql, params, n, out, err);
  return ath__db_sqlite_exec(db, sql, params, n, out, err);
}
