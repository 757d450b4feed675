/* The gateway request compiler (GATEWAY §3, §4, §6.4, §6.7, §7): turns a
 * request body into validated, parameterised SQL for SQLite or PostgreSQL.
 * Pure C over libc and yajl: no I/O, no database connection, no Lua. The
 * server introspects the catalog, runs the policy, then executes the plan;
 * see docs/gateway-compiler.md. Not installed. */
#ifndef ATHENA_GW_PLAN_H
#define ATHENA_GW_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "athena.h"
#include "gw_json.h"

typedef enum { ATH_GW_SQLITE, ATH_GW_PG } ath_gw_dialect_t;

typedef enum {
  ATH_GW_FETCH,
  ATH_GW_INSERT,
  ATH_GW_UPDATE,
  ATH_GW_DELETE
} ath_gw_op_t;

/* ---------------------------------------------------------------- catalog */

/* What a column holds, for value conversion (§3.2, §3.6) and for mapping
 * results to JSON (§7). */
typedef enum {
  ATH_GW_KIND_INTEGER,  /* SQLite INTEGER affinity; PG int2 int4 int8 */
  ATH_GW_KIND_REAL,     /* SQLite REAL; PG float4 float8 */
  ATH_GW_KIND_NUMERIC,  /* SQLite NUMERIC/DECIMAL; PG numeric */
  ATH_GW_KIND_BOOLEAN,  /* SQLite declared BOOLEAN/BOOL; PG boolean */
  ATH_GW_KIND_TEXT,     /* text, varchar, char, citext, uuid, enums */
  ATH_GW_KIND_JSON,     /* SQLite declared JSON/JSONB; PG json, jsonb */
  ATH_GW_KIND_BLOB,     /* SQLite BLOB; PG bytea */
  ATH_GW_KIND_DATETIME, /* PG date, time, timestamp, timestamptz */
  ATH_GW_KIND_ARRAY,    /* PG arrays; `elem_type` names the element type */
  ATH_GW_KIND_OTHER     /* anything else (interval, inet, money, ...) */
} ath_gw_kind_t;

typedef struct {
  const char* name;      /* as introspected; matched per dialect */
  const char* type;      /* declared type text, e.g. "INTEGER", "jsonb" */
  ath_gw_kind_t kind;
  const char* elem_type; /* ATH_GW_KIND_ARRAY: element type name ("int4") */
  int hidden;            /* configured hidden: treated as nonexistent */
} ath_gw_column_t;

/* A set of columns (indexes into the table's `columns`). */
typedef struct {
  const int* cols;
  size_t ncols;
} ath_gw_keyset_t;

/* Bits of ath_gw_table_t.ops. */
#define ATH_GW_OP_BIT(op) (1u << (op))
#define ATH_GW_OPS_ALL 0xfu

typedef struct {
  const char* schema;   /* PG schema ("public"); ignored on SQLite */
  const char* name;
  int is_view;          /* reachable through `view_name` (fetch) too */
  int exposed;          /* listed in the configuration's `tables` */
  unsigned ops;         /* ATH_GW_OP_BIT(op) of the allowed operations */
  const ath_gw_column_t* columns;
  size_t ncolumns;
  ath_gw_keyset_t pk;   /* primary key; ncols 0: none */
  const ath_gw_keyset_t* uniques; /* unique indexes */
  size_t nuniques;
} ath_gw_table_t;

/* Borrowed by the compiler and by the plans it returns (they point at its
 * tables and columns), so it must outlive them. */
typedef struct {
  const ath_gw_table_t* tables;
  size_t ntables;
} ath_gw_catalog_t;

/* ----------------------------------------------------------------- limits */

typedef struct {
  int64_t insert_rows;  /* rows per insert (1000) */
  int64_t in_list;      /* items of an `in` list (1000) */
  int64_t expr_filters; /* filters in a request's expression strings (100) */
  int64_t expr_depth;   /* nesting of and()/or()/not. (16) */
  int64_t default_limit; /* fetch without a limit (100) */
  int64_t max_limit;    /* fetch lowered to it, mutation bounds refused (1000) */
  /* Athena additions, guarding the databases' own limits: */
  int64_t max_terms;    /* filter terms per request (500): SQLite refuses
                           expression trees deeper than 1000 */
  int64_t max_params;   /* bound values per statement (32766, SQLite's
                           default SQLITE_MAX_VARIABLE_NUMBER; PostgreSQL
                           allows 65535). Inserts are split to fit; other
                           statements that exceed it are limit_exceeded */
} ath_gw_limits_t;

/* Fills `l` with the defaults of GATEWAY §6.4 (and ours). */
void ath__gw_limits_init(ath_gw_limits_t* l);

/* ---------------------------------------------------------------- request */

typedef struct {
  const ath_gw_catalog_t* catalog;
  const ath_gw_limits_t* limits; /* NULL: the defaults */
  ath_gw_dialect_t dialect;
  ath_gw_op_t op;
  const ath_gj_t* body;          /* the request body: an object */
  /* Policy extras (§6.7), as JSON values (NULL: none): */
  const ath_gj_t* policy_conditions; /* array in §3.1 format */
  const ath_gj_t* policy_set;        /* object: column -> value */
  int strip_nulls_header;        /* X-Strip-Nulls: -1 absent, 0, 1 */
  int full_rows;                 /* mutations return every visible column
                                    (X-Publish-Event, §2), whatever
                                    `columns` asked */
} ath_gw_request_t;

/* ------------------------------------------------------------------- plan */

typedef enum {
  ATH_GW_P_NULL,
  ATH_GW_P_BOOL, /* i: 0 or 1 */
  ATH_GW_P_INT,  /* i */
  ATH_GW_P_REAL, /* d */
  ATH_GW_P_TEXT, /* text/len */
  ATH_GW_P_JSON  /* text/len: compact JSON text */
} ath_gw_ptype_t;

/* A bound parameter. SQLite binds by `type` (NULL, INTEGER i, REAL d,
 * TEXT text/len); PostgreSQL binds `text` as a text parameter (type
 * inferred, or cast in the SQL) and NULL when `type` is ATH_GW_P_NULL. */
typedef struct {
  ath_gw_ptype_t type;
  int64_t i;
  double d;
  const char* text; /* NUL-terminated; NULL only for ATH_GW_P_NULL. INT and
                       REAL: the literal as received; BOOL: "true"/"false" */
  size_t len;
  const ath_gj_t* src; /* the request's scalar this value was converted
                          from, when the statement depends on nothing of
                          it but its JSON type (the plan cache binds
                          another request's value there); else NULL. Only
                          valid while that request's document lives. */
} ath_gw_param_t;

typedef struct {
  char* sql;               /* `?` (SQLite) or `$1..$n` (PostgreSQL) */
  ath_gw_param_t* params;  /* in placeholder order */
  size_t nparams;
} ath_gw_stmt_t;

/* A column of the rows the plan returns, or of the answer's rows. */
typedef struct {
  const char* name;              /* the JSON key: alias or column name */
  const ath_gw_column_t* column; /* in the catalog: kind for §7 mapping */
} ath_gw_outcol_t;

typedef struct {
  /* On success: */
  ath_gw_op_t op;
  int upsert;              /* insert with ON CONFLICT */
  int upsert_may_update;   /* ... whose conflict branch may update: the
                              server requires the update right too */
  const ath_gw_table_t* table;
  ath_gw_stmt_t* stmts;    /* run in order, in one transaction; fetch: one
                              (none with head); insert: one per key set */
  size_t nstmts;
  int has_count;           /* fetch with count or head: run `count` too */
  ath_gw_stmt_t count;     /* SELECT COUNT(*), same WHERE, no paging */
  int head;                /* only the count; data is [] */
  ath_gw_outcol_t* cols;   /* the answer's keys: the client's projection
                              (alias, column); meaningful when data_rows */
  size_t ncols;
  ath_gw_outcol_t* row_cols; /* what each statement row holds, in order
                              (the SELECT or RETURNING list): `cols`
                              itself, or every visible column with
                              full_rows; an answer row takes, per `cols`
                              entry, the row_cols value of the same
                              column (pointer equality) */
  size_t nrow_cols;
  int data_rows;           /* the answer's data holds rows (else []) */
  int returning;           /* mutation statements end in RETURNING */
  int strip_nulls;         /* drop null-valued keys from returned rows */
  int64_t limit;           /* fetch (and bounded mutations): -1 none */
  int64_t offset;
  int limit_lowered;       /* answer with x-athena-limit: limit */
  int bounded;             /* update/delete through the primary key */
  int resource_id_used;    /* update/delete named a row by resource_id */
  /* On failure: */
  int status;              /* HTTP status: 400, 403, 404, 500 */
  const char* code;        /* a GATEWAY §4 code, e.g. "unfiltered_update" */
  char error[256];         /* safe sentence: names catalog columns only */
  char hint[128];          /* "" or a hint (invalid_expression: position) */
  /* Private: */
  ath_gw_arena_t arena_;
} ath_gw_plan_t;

/* Compiles `req` into `*plan` (which the call initializes; any previous
 * content is not freed). Returns 0 with the plan filled, ATH_EINVAL with
 * plan->status/code/error (and maybe hint) describing a client error, or
 * ATH_ENOMEM (status 500, code "internal_error"). A malformed policy
 * condition or `set` is a server error: 500 internal_error.
 * Ownership: the plan owns its SQL and parameters and borrows the catalog;
 * it does not refer to `req->body` or the policy values afterwards. Free it
 * with ath__gw_plan_free() whatever the result. Thread: any; no globals. */
int ath__gw_compile(const ath_gw_request_t* req, ath_gw_plan_t* plan);

/* The plan cache's binding (gw_cache.c): the parameter that scalar `v`
 * converts to where `tmpl` was (a parameter that had its `src` set, of a
 * plan compiled from a body of the same shape; its `src` itself is not
 * read), exactly as the compiler would convert it there; its text points
 * into `v`. Returns 0, or -1 when the compiler would not have made the same
 * kind of parameter of it (the caller then compiles the request). */
int ath__gw_param_rebind(ath_gw_dialect_t d, const ath_gw_param_t* tmpl,
                         const ath_gj_t* v, ath_gw_param_t* out);

/* Frees what a plan owns and zeroes it; safe to repeat. */
void ath__gw_plan_free(ath_gw_plan_t* plan);

/* Parses a request body (GATEWAY §1): empty = {}, unparsable or deeper than
 * 64 -> 400 invalid_json, not an object -> 400 invalid_body. Returns 0 and
 * sets *doc (free with ath__gj_free), or ATH_EINVAL/ATH_ENOMEM with the
 * error in `err` (initialized by the call; free it with ath__gw_plan_free). */
int ath__gw_parse_body(const char* text, size_t len, ath_gj_doc_t** doc,
                       ath_gw_plan_t* err);

/* The names used in messages and by the fuzzer. */
const char* ath__gw_op_name(ath_gw_op_t op);

/* ------------------------------------------------------ expression strings */

/* The §3.2 grammar, parsed into a tree; gw_plan.c gives it meaning. */
typedef enum {
  ATH_GX_AND,
  ATH_GX_OR,
  ATH_GX_NOT,
  ATH_GX_FILTER
} ath_gx_kind_t;

typedef struct {
  const char* s;  /* the text, unescaped when quoted; NUL-terminated */
  size_t len;
  int quoted;
  size_t pos;     /* byte offset in the expression */
} ath_gx_atom_t;

typedef struct ath_gx_s ath_gx_t;
struct ath_gx_s {
  ath_gx_kind_t kind;
  size_t pos;            /* byte offset of the item */
  ath_gx_t* first;       /* AND, OR: the items; NOT: the one item */
  ath_gx_t* next;
  size_t n;
  /* FILTER: */
  const char* col;       /* the column text as written (not validated) */
  size_t col_len;
  int negate;            /* "col.not.op.x" */
  char op[8];            /* eq neq gt gte lt lte like ilike is in */
  int list;              /* the literal was a list: "(a,b)" or the quirk */
  ath_gx_atom_t* atoms;
  size_t natoms;
};

/* Parses expression `s` (`n` bytes) into a tree in `arena`, counting the
 * filters against `max_filters` (*nfilters is the running total, so several
 * expressions of one request share the limit) and nesting against
 * `max_depth`. Returns 0 and sets *out; ATH_EINVAL with *err_pos (byte
 * offset) and a static *err_msg; or ATH_E2BIG-like -1 (too many filters:
 * the caller answers limit_exceeded) or ATH_ENOMEM. Thread: any. */
int ath__gx_parse(const char* s, size_t n, ath_gw_arena_t* arena,
                  int64_t max_filters, int64_t max_depth, int64_t* nfilters,
                  ath_gx_t** out, size_t* err_pos, const char** err_msg);

/* What ath__gx_parse() returns for too many filters. */
#define ATH_GX_TOO_MANY (-1)

#endif
