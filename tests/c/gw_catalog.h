/* The catalog the gateway compiler tests and its fuzz target compile
 * against: GATEWAY §8's fixture (users, kv, secrets) plus tables for the
 * cases §8 does not reach (composite key, no key, hidden column, policy
 * owner column, read-only, view, PostgreSQL arrays and schemas). Static
 * data only; included by tests/c/test_gw_plan.c and
 * tests/fuzz/fuzz_gw_plan.c. */
#ifndef ATHENA_TEST_GW_CATALOG_H
#define ATHENA_TEST_GW_CATALOG_H

#include "gw_plan.h"

#define I_ ATH_GW_KIND_INTEGER
#define T_ ATH_GW_KIND_TEXT

static const ath_gw_column_t gwc_users_cols[] = {
  {"id", "INTEGER", I_, NULL, 0},
  {"name", "TEXT", T_, NULL, 0},
  {"email", "TEXT", T_, NULL, 0},
  {"age", "INTEGER", I_, NULL, 0},
  {"active", "BOOLEAN", ATH_GW_KIND_BOOLEAN, NULL, 0},
};
static const int gwc_k0[] = {0};
static const int gwc_k1[] = {1};
static const int gwc_k2[] = {2};
static const int gwc_k01[] = {0, 1};
static const ath_gw_keyset_t gwc_users_uniq[] = {{gwc_k2, 1}};

static const ath_gw_column_t gwc_kv_cols[] = {
  {"id", "INTEGER", I_, NULL, 0},
  {"big", "INTEGER", I_, NULL, 0},
  {"bin", "BLOB", ATH_GW_KIND_BLOB, NULL, 0},
  {"doc", "JSON", ATH_GW_KIND_JSON, NULL, 0},
  {"score", "REAL", ATH_GW_KIND_REAL, NULL, 0},
};

static const ath_gw_column_t gwc_id_col[] = {
  {"id", "INTEGER", I_, NULL, 0},
};

/* members: composite primary key (org_id, user_id). */
static const ath_gw_column_t gwc_members_cols[] = {
  {"org_id", "INTEGER", I_, NULL, 0},
  {"user_id", "INTEGER", I_, NULL, 0},
  {"role", "TEXT", T_, NULL, 0},
};

/* logs: no primary key, no id. */
static const ath_gw_column_t gwc_logs_cols[] = {
  {"msg", "TEXT", T_, NULL, 0},
  {"at", "TEXT", T_, NULL, 0},
};

/* notes: an owner column for policies and a hidden column. */
static const ath_gw_column_t gwc_notes_cols[] = {
  {"id", "INTEGER", I_, NULL, 0},
  {"owner", "TEXT", T_, NULL, 0},
  {"body", "TEXT", T_, NULL, 0},
  {"secret", "TEXT", T_, NULL, 1},
};

/* people: the columns of GATEWAY §3.2's example. */
static const ath_gw_column_t gwc_people_cols[] = {
  {"id", "INTEGER", I_, NULL, 0},
  {"status", "TEXT", T_, NULL, 0},
  {"age", "INTEGER", I_, NULL, 0},
  {"deleted_at", "TEXT", T_, NULL, 0},
};

/* docs (PostgreSQL): a text[] and a jsonb column. */
static const ath_gw_column_t gwc_docs_cols[] = {
  {"id", "bigint", I_, NULL, 0},
  {"tags", "text[]", ATH_GW_KIND_ARRAY, "text", 0},
  {"data", "jsonb", ATH_GW_KIND_JSON, NULL, 0},
  {"price", "numeric", ATH_GW_KIND_NUMERIC, NULL, 0},
};

/* tokens: a primary key that is not called id, plus an `id` column. */
static const ath_gw_column_t gwc_tokens_cols[] = {
  {"token", "TEXT", T_, NULL, 0},
  {"id", "INTEGER", I_, NULL, 0},
};

#define GWC_ALL ATH_GW_OPS_ALL
#define N_(a) (sizeof(a) / sizeof((a)[0]))

static const ath_gw_table_t gwc_tables[] = {
  {"public", "users", 0, 1, GWC_ALL, gwc_users_cols, N_(gwc_users_cols),
   {gwc_k0, 1}, gwc_users_uniq, 1},
  {"public", "kv", 0, 1, GWC_ALL, gwc_kv_cols, N_(gwc_kv_cols), {gwc_k0, 1},
   NULL, 0},
  {"public", "secrets", 0, 0, GWC_ALL, gwc_id_col, 1, {gwc_k0, 1}, NULL, 0},
  {"public", "members", 0, 1, GWC_ALL, gwc_members_cols,
   N_(gwc_members_cols), {gwc_k01, 2}, NULL, 0},
  {"public", "logs", 0, 1, GWC_ALL, gwc_logs_cols, N_(gwc_logs_cols),
   {NULL, 0}, NULL, 0},
  {"public", "notes", 0, 1, GWC_ALL, gwc_notes_cols, N_(gwc_notes_cols),
   {gwc_k0, 1}, NULL, 0},
  {"public", "people", 0, 1, GWC_ALL, gwc_people_cols, N_(gwc_people_cols),
   {gwc_k0, 1}, NULL, 0},
  {"public", "ro", 0, 1, ATH_GW_OP_BIT(ATH_GW_FETCH), gwc_id_col, 1,
   {gwc_k0, 1}, NULL, 0},
  {"public", "v_users", 1, 1, ATH_GW_OP_BIT(ATH_GW_FETCH), gwc_users_cols, 2,
   {NULL, 0}, NULL, 0},
  {"public", "docs", 0, 1, GWC_ALL, gwc_docs_cols, N_(gwc_docs_cols),
   {gwc_k0, 1}, NULL, 0},
  {"app", "items", 0, 1, GWC_ALL, gwc_id_col, 1, {gwc_k0, 1}, NULL, 0},
  {"public", "tokens", 0, 1, GWC_ALL, gwc_tokens_cols, N_(gwc_tokens_cols),
   {gwc_k0, 1}, NULL, 0},
};

static const ath_gw_catalog_t gwc_catalog = {gwc_tables, N_(gwc_tables)};

/* The same tables as SQLite DDL, for tests that execute plans. */
static const char gwc_sqlite_ddl[] =
  "PRAGMA case_sensitive_like = ON;\n"
  "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
  " email TEXT UNIQUE, age INTEGER, active BOOLEAN);\n"
  "INSERT INTO users VALUES (1,'Frodo','frodo@shire',50,1),"
  " (2,'Bilbo','bilbo@shire',111,1), (3,'Sam',NULL,38,0);\n"
  "CREATE TABLE kv(id INTEGER PRIMARY KEY, big INTEGER, bin BLOB, doc JSON,"
  " score REAL);\n"
  "INSERT INTO kv(id, doc) VALUES (1, '[1,2,3]'), (2, '[\"a\",\"b\"]'),"
  " (3, 'not json'), (4, NULL), (5, '{\"a\":1}'), (6, '[1.0, true]'),"
  " (7, '[]');\n"
  "CREATE TABLE secrets(id INTEGER PRIMARY KEY);\n"
  "CREATE TABLE members(org_id INTEGER, user_id INTEGER, role TEXT,"
  " PRIMARY KEY (org_id, user_id));\n"
  "INSERT INTO members VALUES (1,1,'a'), (1,2,'b'), (2,1,'c'), (2,2,'d');\n"
  "CREATE TABLE logs(msg TEXT, at TEXT);\n"
  "CREATE TABLE notes(id INTEGER PRIMARY KEY, owner TEXT, body TEXT,"
  " secret TEXT);\n"
  "INSERT INTO notes VALUES (1,'u1','one','s1'), (2,'u2','two','s2');\n"
  "CREATE TABLE people(id INTEGER PRIMARY KEY, status TEXT, age INTEGER,"
  " deleted_at TEXT);\n"
  "CREATE TABLE ro(id INTEGER PRIMARY KEY);\n"
  "CREATE VIEW v_users AS SELECT id, name FROM users;\n"
  "CREATE TABLE docs(id INTEGER PRIMARY KEY, tags TEXT, data JSON,"
  " price NUMERIC);\n"
  "CREATE TABLE tokens(token TEXT PRIMARY KEY, id INTEGER);\n";

#undef I_
#undef T_

#endif
