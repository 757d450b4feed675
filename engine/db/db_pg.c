/* PostgreSQL connections on libpq ("postgres://..." URLs). Blocking calls
 * use PQconnectdbParams / PQexecParams. Inside tasks a statement runs on the
 * worker's libuv loop: PQconnectStartParams + PQconnectPoll, then
 * PQsendQueryParams on a non-blocking connection, with one uv_poll_t on
 * PQsocket driving PQflush / PQconsumeInput / PQgetResult.
 *
 * Every connection sets TimeZone UTC, DateStyle ISO and bytea_output hex at
 * start-up (libpq's `options`), so the text values read back here have one
 * shape. Parameters go as text (type inferred by the server) except strings
 * holding NUL bytes, which go in binary format: a bytea column takes them
 * byte for byte, a text column refuses them (22021: EINVAL). */
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "athena.h"
#include "db.h"

/* Type OIDs (pg_type.h), for the value mapping. */
enum {
  OID_BOOL = 16, OID_BYTEA = 17, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_OID = 26,
  OID_JSON = 114, OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_DATE = 1082, OID_TIME = 1083,
  OID_TIMESTAMP = 1114, OID_TIMESTAMPTZ = 1184, OID_TIMETZ = 1266, OID_NUMERIC = 1700,
  OID_JSONB = 3802,
};

/* What every connection is given after the URL's own settings. */
static const char* const kw_after[] = {"options", "client_encoding", "application_name", NULL};
static const char* const val_after[] = {
  "-c TimeZone=UTC -c DateStyle=ISO -c bytea_output=hex -c extra_float_digits=1", "UTF8",
  "athena", NULL};

/* A poll handle for the connection's socket. It sits first, so h->data,
 * which points at this struct, is also the handle's allocation (a worker
 * that closes leftover poll handles frees h->data). */
typedef struct {
  uv_poll_t poll;
  ath_db_t* db;          /* NULL once the statement is abandoned */
  int fd;
  int events;            /* what it watches (UV_*), 0 when stopped */
} pgpoll_t;

enum { OP_CONNECT = 1, OP_FLUSH, OP_READ, OP_DONE };

/* The statement in flight on a loop. */
typedef struct ath_db_async_s {
  int phase;             /* OP_* */
  uv_loop_t* loop;
  ath_db_cb cb;
  void* ud;
  pgpoll_t* pp;          /* watching PQsocket, or NULL */
  char* sql;             /* rewritten, owned */
  int n;
  char** values;         /* n values, lengths, formats in one block after it */
  int* lengths;
  int* formats;
  PGresult* res;         /* the result kept (the error one, if any) */
  int slot;              /* preparing the statement in this pgstmts slot, or -1 */
  int again;             /* may prepare again once (schema changed under it) */
  int rc;                /* outcome, once OP_DONE */
  ath_db_res_t* out;
  ath_db_error_t err;
  struct pipe_s* pipe;   /* a pipeline's statements (ath__db_pipeline_async), or NULL */
} op_t;

/* --------------------------------------------------------------- errors */

static void conn_fail(ath_db_t* db, int code, const char* msg, ath_db_error_t* err) {
  ath__db_seterr(err, code, NULL, msg, db->url, db->password);
}

/* Fills err from a failed result (or the connection when res is NULL).
 * A connection that broke is dropped: the next statement connects again. */
static int res_fail(ath_db_t* db, PGresult* res, ath_db_error_t* err) {
  PGconn* pg = db->pg;
  const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  const char* msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  if (msg == NULL)
    msg = res ? PQresultErrorMessage(res) : PQerrorMessage(pg);
  int code = ath__db_map_sqlstate(state);
  int lost = PQstatus(pg) == CONNECTION_BAD;
  if (lost)
    code = ATH_DB_ECONNLOST;
  ath__db_seterr(err, code, state, msg && *msg ? msg : "connection lost", db->url, db->password);
  if (lost)
    ath__db_pg_disconnect(db);
  return code;
}

/* ------------------------------------------------------------ connecting */

int ath__db_pg_check_url(ath_db_t* db, ath_db_error_t* err) {
  char* errmsg = NULL;
  PQconninfoOption* opts = PQconninfoParse(db->url, &errmsg);
  if (opts == NULL) {
    /* libpq's message may quote the URL: say what is wrong without it */
    PQfreemem(errmsg);
    ath__db_seterr(err, ATH_DB_EINVAL, NULL, "invalid PostgreSQL URL (libpq cannot parse it)",
                   NULL, NULL);
    return ATH_DB_EINVAL;
  }
  const char* pw = "";
  for (PQconninfoOption* o = opts; o->keyword; o++)
    if (strcmp(o->keyword, "password") == 0 && o->val)
      pw = o->val;
  db->password = strdup(pw);
  PQconninfoFree(opts);
  if (db->password == NULL) {
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return ATH_ENOMEM;
  }
  return 0;
}

/* Keywords and values for PQconnect*Params: the URL, then ours. */
static void conn_params(ath_db_t* db, const char** kw, const char** val) {
  kw[0] = "connect_timeout"; /* the URL's own wins: it comes later */
  val[0] = "10";
  kw[1] = "dbname";
  val[1] = db->url;
  int i = 2;
  for (int k = 0; kw_after[k]; k++, i++) {
    kw[i] = kw_after[k];
    val[i] = val_after[k];
  }
  kw[i] = val[i] = NULL;
}

/* Server notices (NOTICE: table does not exist, skipping) are not errors
 * and are nobody's business on stderr. */
static void ignore_notice(void* arg, const char* message) {
  (void)arg;
  (void)message;
}

static void forget_prepared(ath_db_t* db);

/* Settings every new connection gets. */
static void setup_conn(PGconn* pg) {
  PQsetNoticeProcessor(pg, ignore_notice, NULL);
}

int ath__db_pg_connect(ath_db_t* db, ath_db_error_t* err) {
  const char* kw[8];
  const char* val[8];
  conn_params(db, kw, val);
  PGconn* pg = PQconnectdbParams(kw, val, 1);
  if (pg == NULL) {
    conn_fail(db, ATH_ENOMEM, "out of memory", err);
    return ATH_ENOMEM;
  }
  if (PQstatus(pg) != CONNECTION_OK) {
    conn_fail(db, ATH_DB_ECONNLOST, PQerrorMessage(pg), err);
    PQfinish(pg);
    return ATH_DB_ECONNLOST;
  }
  setup_conn(pg);
  forget_prepared(db);
  db->pg = pg;
  return 0;
}

void ath__db_pg_disconnect(ath_db_t* db) {
  forget_prepared(db); /* they belong to the session */
  if (db->pg != NULL) {
    PQfinish(db->pg);
    db->pg = NULL;
  }
}

/* ------------------------------------------------------------ parameters */

/* Converts params to libpq's text (or binary) values in one allocation.
 * Returns NULL when out of memory. */
static char** pg_params(const ath_db_value_t* params, int n, int** lengths, int** formats) {
  size_t size = (size_t)n * (sizeof(char*) + 2 * sizeof(int));
  for (int i = 0; i < n; i++)
    size += (params[i].type >= ATH_DB_TEXT ? params[i].len : 32) + 1;
  char** values = malloc(size ? size : 1);
  if (values == NULL)
    return NULL;
  *lengths = (int*)(values + n);
  *formats = *lengths + n;
  char* p = (char*)(*formats + n);
  for (int i = 0; i < n; i++) {
    const ath_db_value_t* v = &params[i];
    (*lengths)[i] = 0;
    (*formats)[i] = 0;
    values[i] = p;
    switch (v->type) {
      case ATH_DB_NULL:
        values[i] = NULL;
        continue;
      case ATH_DB_BOOL:
        p += sprintf(p, "%s", v->i ? "true" : "false") + 1;
        continue;
      case ATH_DB_INT:
        p += sprintf(p, "%lld", (long long)v->i) + 1;
        continue;
      case ATH_DB_FLOAT:
        if (isnan(v->d))
          p += sprintf(p, "NaN") + 1;
        else if (isinf(v->d))
          p += sprintf(p, "%sInfinity", v->d < 0 ? "-" : "") + 1;
        else
          p += sprintf(p, "%.17g", v->d) + 1;
        continue;
      default:
        memcpy(p, v->s, v->len);
        p[v->len] = '\0';
        (*lengths)[i] = (int)v->len;
        /* bytes with a NUL cannot be text: binary format, so bytea takes
         * them as they are */
        (*formats)[i] = v->type == ATH_DB_BLOB || memchr(v->s, 0, v->len) != NULL;
        p += v->len + 1;
    }
  }
  return values;
}

/* Rewrites the SQL and checks the placeholder count. Returns the new SQL
 * (malloc'd) or NULL with err set. */
static char* prepare_sql(const char* sql, int n, ath_db_error_t* err) {
  if (n == 0) { /* no parameters: `?` may be jsonb's operator */
    char* copy = strdup(sql);
    if (copy == NULL)
      ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return copy;
  }
  int nph;
  char* out = ath__db_rewrite_placeholders(sql, &nph);
  if (out == NULL) {
    ath__db_seterr(err, ATH_ENOMEM, NULL, "out of memory", NULL, NULL);
    return NULL;
  }
  if (nph != n) {
    char msg[96];
    snprintf(msg, sizeof(msg), "the statement has %d placeholder%s, %d value%s given", nph,
             nph == 1 ? "" : "s", n, n == 1 ? "" : "s");
    ath__db_seterr(err, ATH_DB_EINVAL, NULL, msg, NULL, NULL);
    free(out);
    return NULL;
  }
  return out;
}

/* --------------------------------------------------------------- results */

/* Wraps a successful PGresult (taking it) into a result. */
static int wrap_result(ath_db_t* db, PGresult* res, ath_db_res_t** out, ath_db_error_t* err) {
  ath_db_res_t* r = ath__db_res_new(ATH_DB_PG);
  int ncols = PQnfields(res);
  if (r != NULL) {
    r->names = (char**)ath__db_res_alloc(r, sizeof(char*) * ((size_t)ncols + 1));
    r->oids = (unsigned*)ath__db_res_alloc(r, sizeof(unsigned) * ((size_t)ncols + 1));
  }
  if (r == NULL || r->names == NULL || r->oids == NULL) {
    ath__db_res_free(r);
    PQclear(res);
    conn_fail(db, ATH_ENOMEM, "out of memory", err);
    return ATH_ENOMEM;
  }
  r->pg = res;
  r->ncols = ncols;
  r->nrows = PQntuples(res);
  for (int c = 0; c < ncols; c++) {
    r->names[c] = PQfname(res, c);
    r->oids[c] = PQftype(res, c);
  }
  /* PQcmdTuples also counts what a SELECT returned: only writes change */
  const char* cmd = PQcmdStatus(res);
  const char* tuples = PQcmdTuples(res);
  int write = strncmp(cmd, "INSERT", 6) == 0 || strncmp(cmd, "UPDATE", 6) == 0 ||
              strncmp(cmd, "DELETE", 6) == 0 || strncmp(cmd, "MERGE", 5) == 0;
  r->changes = write && *tuples ? atoll(tuples) : 0;
  *out = r;
  return 0;
}

void ath__db_pg_res_clear(ath_db_res_t* r) {
  PQclear(r->pg);
  r->pg = NULL;
}

/* Significant digits of a decimal numeral, or -1 if it is not one. */
static int sig_digits(const char* s, int* integral) {
  int n = 0, started = 0, trailing = 0, after_point = 0;
  *integral = 1;
  if (*s == '-' || *s == '+')
    s++;
  if (*s == '\0')
    return -1;
  for (; *s; s++) {
    if (*s == '.') {
      after_point = 1;
      *integral = 0;
      continue;
    }
    if (*s < '0' || *s > '9')
      return -1;
    if (*s != '0' || started) {
      started = 1;
      n++;
      trailing = *s == '0' ? trailing + 1 : 0;
    }
  }
  /* zeros closing a fraction are not significant ("1.50"), nor are an
   * integer's closing zeros once it fits in 15 digits anyway */
  return after_point ? n - trailing : n;
}

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c - 'A' + 10;
}

/* ISO 8601 the way PostgreSQL's JSON writes timestamps: "T" between date
 * and time, a zone as +hh:mm. `s` is the DateStyle ISO text. */
static int iso8601(ath_db_res_t* r, const char* s, size_t len, unsigned oid, ath_db_value_t* v) {
  char* out = ath__db_res_alloc(r, len + 8);
  if (out == NULL)
    return ATH_ENOMEM;
  memcpy(out, s, len + 1);
  size_t n = len;
  if (oid == OID_TIMESTAMP || oid == OID_TIMESTAMPTZ) {
    char* sp = strchr(out, ' ');
    if (sp != NULL && strstr(out, " BC") == NULL) /* infinity and BC stay */
      *sp = 'T';
  }
  if (oid == OID_TIMESTAMPTZ || oid == OID_TIMETZ) {
    /* the zone is the last [+-]hh, [+-]hh:mm or [+-]hh:mm:ss */
    char* z = NULL;
    for (char* p = out + (oid == OID_TIMESTAMPTZ ? 10 : 0); *p; p++)
      if (*p == '+' || *p == '-')
        z = p;
    if (z != NULL && strlen(z) == 3) {
      memcpy(z + 3, ":00", 4);
      n += 3;
    }
  }
  v->type = ATH_DB_TEXT;
  v->s = out;
  v->len = n;
  return 0;
}

int ath__db_pg_value(ath_db_res_t* r, int row, int col, ath_db_value_t* v) {
  PGresult* res = r->pg;
  memset(v, 0, sizeof(*v));
  if (PQgetisnull(res, row, col)) {
    v->type = ATH_DB_NULL;
    return 0;
  }
  const char* s = PQgetvalue(res, row, col);
  size_t len = (size_t)PQgetlength(res, row, col);
  v->s = s;
  v->len = len;
  v->type = ATH_DB_TEXT;
  switch (r->oids[col]) {
    case OID_BOOL:
      v->type = ATH_DB_BOOL;
      v->i = s[0] == 't';
      return 0;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
      v->type = ATH_DB_INT;
      v->i = strtoll(s, NULL, 10);
      return 0;
    case OID_FLOAT4:
    case OID_FLOAT8:
      v->type = ATH_DB_FLOAT;
      v->d = strtod(s, NULL); /* NaN, Infinity, -Infinity too */
      return 0;
    case OID_NUMERIC: {
      int integral;
      int digits = sig_digits(s, &integral);
      if (digits < 0 || digits > 15) {
        v->type = ATH_DB_NUMERIC; /* NaN, Infinity, or too precise */
      } else if (integral) {
        v->type = ATH_DB_INT;
        v->i = strtoll(s, NULL, 10);
      } else {
        v->type = ATH_DB_FLOAT;
        v->d = strtod(s, NULL);
      }
      return 0;
    }
    case OID_JSON:
    case OID_JSONB:
      v->type = ATH_DB_JSON;
      return 0;
    case OID_BYTEA: {
      if (len < 2 || s[0] != '\\' || s[1] != 'x')
        return 0; /* not hex output: leave the text */
      size_t n = (len - 2) / 2;
      char* out = ath__db_res_alloc(r, n + 1);
      if (out == NULL)
        return ATH_ENOMEM;
      for (size_t i = 0; i < n; i++)
        out[i] = (char)(hexval(s[2 + 2 * i]) << 4 | hexval(s[3 + 2 * i]));
      out[n] = '\0';
      v->type = ATH_DB_BLOB;
      v->s = out;
      v->len = n;
      return 0;
    }
    case OID_TIMESTAMP:
    case OID_TIMESTAMPTZ:
    case OID_TIMETZ:
      return iso8601(r, s, len, r->oids[col], v);
    default: /* text, varchar, uuid, date, time, enums, the rest: text */
      return 0;
  }
}

/* Turns the final PGresult of a statement into the outcome. */
static int finish_result(ath_db_t* db, PGresult* res, ath_db_res_t** out, ath_db_error_t* err) {
  if (res == NULL)
    return res_fail(db, NULL, err);
  ExecStatusType st = PQresultStatus(res);
  if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY)
    return wrap_result(db, res, out, err);
  int rc;
  if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
    /* the connection waits for COPY data nobody sends: drop it */
    conn_fail(db, ATH_DB_EINVAL, "COPY is not supported", err);
    ath__db_pg_disconnect(db);
    rc = ATH_DB_EINVAL;
  } else {
    rc = res_fail(db, res, err);
  }
  PQclear(res);
  return rc;
}

/* Statements with parameters run prepared, once per SQL text and session
 * (the gateway runs the same few shapes over and over, and PostgreSQL then
 * parses and plans them once): named ath_<serial>, the least recently used
 * deallocated past PG_STMTS. */
#define PG_STMTS 64

typedef struct {
  char* sql;
  char name[24];
  uint64_t used;
} pgstmt_t;

struct ath_db_pgstmts_s {
  pgstmt_t slot[PG_STMTS];
  uint64_t tick, serial;
};

static void forget_prepared(ath_db_t* db) {
  if (db->pgstmts == NULL)
    return;
  for (int i = 0; i < PG_STMTS; i++)
    free(db->pgstmts->slot[i].sql);
  free(db->pgstmts);
  db->pgstmts = NULL;
}

/* Runs q (n > 0 parameters) as a statement prepared on this session. A
 * statement the schema changed under (its result columns' types) is
 * prepared again and, outside a transaction, run again at once. */
static PGresult* exec_prepared(ath_db_t* db, const char* q, int n, char** values, int* lengths, int* formats,
                               int again) {
  struct ath_db_pgstmts_s* c = db->pgstmts;
  if (c == NULL && (c = db->pgstmts = calloc(1, sizeof(*c))) == NULL)
    return PQexecParams(db->pg, q, n, NULL, (const char* const*)values, lengths, formats, 0);
  int at = -1, victim = 0;
  for (int i = 0; i < PG_STMTS && at < 0; i++) {
    if (c->slot[i].sql != NULL && strcmp(c->slot[i].sql, q) == 0)
      at = i;
    else if (c->slot[i].used < c->slot[victim].used)
      victim = i;
  }
  if (at < 0) {
    pgstmt_t* v = &c->slot[victim];
    if (v->sql != NULL) {
      char sql[48];
      snprintf(sql, sizeof(sql), "DEALLOCATE %s", v->name);
      PQclear(PQexec(db->pg, sql));
      free(v->sql);
      v->sql = NULL;
    }
    snprintf(v->name, sizeof(v->name), "ath_%llu", (unsigned long long)++c->serial);
    PGresult* p = PQprepare(db->pg, v->name, q, n, NULL);
    if (p == NULL || PQresultStatus(p) != PGRES_COMMAND_OK)
      return p; /* the statement's error, as running it would give */
    PQclear(p);
    if ((v->sql = strdup(q)) == NULL)
      return PQexecPrepared(db->pg, v->name, n, (const char* const*)values, lengths, formats, 0);
    at = victim;
  }
  c->slot[at].used = ++c->tick;
  PGresult* res = PQexecPrepared(db->pg, c->slot[at].name, n, (const char* const*)values, lengths, formats, 0);
  const char* state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  if (state != NULL && (strcmp(state, "0A000") == 0 || strcmp(state, "26000") == 0)) {
    /* the schema changed under it (or it is gone): prepared again */
    free(c->slot[at].sql);
    c->slot[at].sql = NULL;
    c->slot[at].used = 0;
    if (again && PQtransactionStatus(db->pg) == PQTRANS_IDLE) {
      PQclear(res);
      return exec_prepared(db, q, n, values, lengths, formats, 0);
    }
  }
  return res;
}

int ath__db_pg_exec(ath_db_t* db, const char* sql, const ath_db_value_t* params, int n,
                    ath_db_res_t** out, ath_db_error_t* err) {
  char* q = prepare_sql(sql, n, err);
  if (q == NULL)
    return err->code;
  int *lengths = NULL, *formats = NULL;
  char** values = pg_params(params, n, &lengths, &formats);
  if (values == NULL) {
    free(q);
    conn_fail(db, ATH_ENOMEM, "out of memory", err);
    return ATH_ENOMEM;
  }
  PQsetnonblocking(db->pg, 0);
  PGresult* res = n > 0 ? exec_prepared(db, q, n, values, lengths, formats, 1) : PQexec(db->pg, q);
  free(q);
  free(values);
  return finish_result(db, res, out, err);
}

/* ------------------------------------------------------- on a libuv loop */

int ath__db_can_async(const ath_db_t* db) {
  (void)db;
  return 1; /* PostgreSQL on the loop, SQLite on the thread pool */
}

int ath__db_busy(const ath_db_t* db) {
  if (db->kind == ATH_DB_SQLITE)
    return ath__db_sqlite_busy(db);
  return db->op != NULL && db->op->phase != OP_DONE;
}

static void free_poll(uv_handle_t* h) {
  free(h->data); /* the pgpoll_t: the handle is its first member */
}

static void unwatch(op_t* op) {
  if (op->pp != NULL) {
    op->pp->db = NULL;
    uv_close((uv_handle_t*)&op->pp->poll, free_poll);
    op->pp = NULL;
  }
}

static void on_poll(uv_poll_t* h, int status, int events);

/* Polls the connection's socket for `events`. While it connects, libpq
 * may close its socket and open another (one host or address after the
 * next), possibly with the same number, which a libuv handle that still
 * has the old one registered would not follow: each connecting step gets
 * a fresh handle. A handle kept from the last statement (keep_watch) that
 * already watches `events` is left alone: uv_poll_start registers the
 * socket with epoll again. Returns 0 or a libuv error. */
static int watch(ath_db_t* db, int events) {
  op_t* op = db->op;
  int fd = PQsocket(db->pg);
  if (fd < 0)
    return UV_EBADF;
  if (op->pp != NULL && (op->pp->fd != fd || op->phase == OP_CONNECT || op->pp->poll.loop != op->loop))
    unwatch(op);
  if (op->pp == NULL) {
    pgpoll_t* pp = calloc(1, sizeof(*pp));
    if (pp == NULL)
      return UV_ENOMEM;
    int rc = uv_poll_init(op->loop, &pp->poll, fd);
    if (rc != 0) {
      free(pp);
      return rc;
    }
    pp->poll.data = pp;
    pp->db = db;
    pp->fd = fd;
    op->pp = pp;
  }
  if (op->pp->events == events)
    return 0;
  int rc = uv_poll_start(&op->pp->poll, events, on_poll);
  op->pp->events = rc == 0 ? events : 0;
  return rc;
}

static void pipe_end(ath_db_t* db, int rc);
static void read_pipe(ath_db_t* db);

static void free_op_data(op_t* op) {
  free(op->sql);
  op->sql = NULL;
  free(op->values);
  op->values = NULL;
  if (op->res != NULL) {
    PQclear(op->res);
    op->res = NULL;
  }
}

/* Ends the statement: outcome stored, socket unwatched, then the callback
 * (last: it may start the next statement). */
static void complete(ath_db_t* db, int rc) {
  op_t* op = db->op;
  if (op->pipe != NULL)
    pipe_end(db, rc);
  if (!db->keep_watch || db->pg == NULL || watch(db, UV_READABLE) != 0)
    unwatch(op);
  op->rc = rc;
  op->phase = OP_DONE;
  free_op_data(op);
  op->cb(db, op->ud);
}

/* Ends with a connection failure: the connection is dropped. */
static void complete_lost(ath_db_t* db, const char* msg) {
  op_t* op = db->op;
  const char* m = db->pg ? PQerrorMessage(db->pg) : NULL;
  conn_fail(db, ATH_DB_ECONNLOST, m && *m ? m : msg, &op->err);
  unwatch(op);
  ath__db_pg_disconnect(db);
  complete(db, ATH_DB_ECONNLOST);
}

/* The slot of the session's prepared statement of sql (*prepare 0), or a
 * free one claimed and named for it, to PREPARE first (*prepare 1), or -1
 * (none free, out of memory: it runs unprepared). */
static int stmt_slot(struct ath_db_pgstmts_s* c, const char* sql, int* prepare) {
  int at = -1, free_slot = -1;
  *prepare = 0;
  for (int i = 0; i < PG_STMTS && at < 0; i++) {
    if (c->slot[i].sql != NULL && strcmp(c->slot[i].sql, sql) == 0)
      at = i;
    else if (c->slot[i].sql == NULL && free_slot < 0)
      free_slot = i;
  }
  if (at < 0 && free_slot >= 0 && (c->slot[free_slot].sql = strdup(sql)) != NULL) {
    snprintf(c->slot[free_slot].name, sizeof(c->slot[free_slot].name), "ath_%llu",
             (unsigned long long)++c->serial);
    at = free_slot;
    *prepare = 1;
  }
  if (at >= 0)
    c->slot[at].used = ++c->tick;
  return at;
}

/* Sends what the statement needs next: with parameters, like the blocking
 * path, the session's prepared statement of that SQL text, or first its
 * PREPARE into a free slot (then, once that is read, the statement: see
 * read_results); without a free slot, unprepared. Keeps the SQL and values
 * until the statement ends. */
static int send_op(ath_db_t* db) {
  op_t* op = db->op;
  struct ath_db_pgstmts_s* c = db->pgstmts;
  op->slot = -1;
  if (op->n == 0)
    return PQsendQuery(db->pg, op->sql);
  if (c == NULL && (c = db->pgstmts = calloc(1, sizeof(*c))) == NULL)
    return 0;
  int prepare, at = stmt_slot(c, op->sql, &prepare);
  if (prepare) {
    op->slot = at;
    return PQsendPrepare(db->pg, c->slot[at].name, op->sql, op->n, NULL);
  }
  if (at >= 0)
    return PQsendQueryPrepared(db->pg, c->slot[at].name, op->n, (const char* const*)op->values, op->lengths,
                               op->formats, 0);
  return PQsendQueryParams(db->pg, op->sql, op->n, NULL, (const char* const*)op->values, op->lengths,
                           op->formats, 0);
}

/* Forgets the prepared statement of slot i (it failed, or is stale). */
static void drop_slot(ath_db_t* db, int i) {
  if (db->pgstmts == NULL || i < 0)
    return;
  free(db->pgstmts->slot[i].sql);
  db->pgstmts->slot[i].sql = NULL;
  db->pgstmts->slot[i].used = 0;
}

/* Sends the statement and starts watching the socket. Returns 0, or a
 * failure with err set (a lost connection is dropped). Never calls cb. */
static int send_now(ath_db_t* db, ath_db_error_t* err) {
  op_t* op = db->op;
  PQsetnonblocking(db->pg, 1);
  int ok = send_op(db);
  int rc = ok ? PQflush(db->pg) : -1;
  if (rc < 0) {
    int lost = PQstatus(db->pg) == CONNECTION_BAD || ok;
    conn_fail(db, lost ? ATH_DB_ECONNLOST : ATH_DB_EDB, PQerrorMessage(db->pg), err);
    unwatch(op);
    if (lost)
      ath__db_pg_disconnect(db);
    return err->code;
  }
  op->phase = rc == 0 ? OP_READ : OP_FLUSH;
  if (watch(db, rc == 0 ? UV_READABLE : UV_READABLE | UV_WRITABLE) != 0) {
    conn_fail(db, ATH_DB_ECONNLOST, "cannot poll the connection", err);
    unwatch(op);
    ath__db_pg_disconnect(db);
    return ATH_DB_ECONNLOST;
  }
  return 0;
}

/* Reads what arrived; completes once the last result is in. */
static void read_results(ath_db_t* db) {
  op_t* op = db->op;
  if (!PQconsumeInput(db->pg))
    return complete_lost(db, "connection lost");
  while (!PQisBusy(db->pg)) {
    PGresult* res = PQgetResult(db->pg);
    if (res == NULL) { /* the statement is over */
      PGresult* last = op->res;
      op->res = NULL;
      const char* state = last != NULL ? PQresultErrorField(last, PG_DIAG_SQLSTATE) : NULL;
      int stale = state != NULL && (strcmp(state, "0A000") == 0 || strcmp(state, "26000") == 0);
      int prepared = op->slot >= 0 && last != NULL && PQresultStatus(last) == PGRES_COMMAND_OK;
      if (op->slot >= 0 && !prepared)
        drop_slot(db, op->slot); /* its PREPARE failed: the error is the statement's */
      if (stale && op->slot < 0 && db->pgstmts != NULL) {
        /* the schema changed under the prepared statement: prepared again
         * and, outside a transaction, run again at once (as blocking) */
        for (int i = 0; i < PG_STMTS; i++)
          if (db->pgstmts->slot[i].sql != NULL && strcmp(db->pgstmts->slot[i].sql, op->sql) == 0)
            drop_slot(db, i);
        prepared = op->again && PQtransactionStatus(db->pg) == PQTRANS_IDLE;
        op->again = 0;
      }
      if (prepared) { /* now the statement itself */
        PQclear(last);
        ath_db_error_t* err = &op->err;
        int rc = send_now(db, err);
        if (rc != 0)
          return complete(db, rc);
        return; /* its results come next */
      }
      int rc = finish_result(db, last, &op->out, &op->err);
      return complete(db, rc);
    }
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      PQclear(res);
      conn_fail(db, ATH_DB_EINVAL, "COPY is not supported", &op->err);
      unwatch(op);
      ath__db_pg_disconnect(db);
      return complete(db, ATH_DB_EINVAL);
    }
    /* keep the first error, else the last result */
    if (op->res != NULL && PQresultStatus(op->res) == PGRES_FATAL_ERROR) {
      PQclear(res);
    } else {
      PQclear(op->res);
      op->res = res;
    }
  }
}

static void on_poll(uv_poll_t* h, int status, int events) {
  pgpoll_t* pp = h->data;
  ath_db_t* db = pp->db;
  if (db == NULL || db->op == NULL || db->op->pp != pp)
    return; /* abandoned */
  op_t* op = db->op;
  if (op->phase == OP_DONE) { /* a kept watch between statements */
    if (status < 0 || !PQconsumeInput(db->pg) || PQstatus(db->pg) == CONNECTION_BAD) {
      unwatch(op); /* the server closed it: dropped, the next statement connects */
      ath__db_pg_disconnect(db);
    }
    return;
  }
  if (status < 0) {
    /* A socket error (the server reset the connection) stops the handle
     * in libuv. libpq may need more than one read to see the end (the
     * server's last message, then the reset): watch on, and let libpq's
     * own reads and writes find out what happened. */
    pp->events = op->phase == OP_READ ? UV_READABLE : UV_READABLE | UV_WRITABLE;
    if (uv_poll_start(&pp->poll, pp->events, on_poll) != 0)
      pp->events = 0;
    events = UV_READABLE | UV_WRITABLE;
  }
  if (op->phase == OP_CONNECT) {
    switch (PQconnectPoll(db->pg)) {
      case PGRES_POLLING_READING:
        if (watch(db, UV_READABLE) != 0)
          complete_lost(db, "cannot poll the connection");
        return;
      case PGRES_POLLING_WRITING:
        if (watch(db, UV_WRITABLE) != 0)
          complete_lost(db, "cannot poll the connection");
        return;
      case PGRES_POLLING_OK: {
        setup_conn(db->pg);
        int rc = send_now(db, &op->err);
        if (rc != 0)
          complete(db, rc);
        return;
      }
      default:
        return complete_lost(db, "cannot connect");
    }
  }
  if (op->phase == OP_FLUSH) {
    if ((events & UV_READABLE) && !PQconsumeInput(db->pg))
      return complete_lost(db, "connection lost");
    int rc = PQflush(db->pg);
    if (rc < 0)
      return complete_lost(db, "connection lost");
    if (rc == 1)
      return;
    op->phase = OP_READ;
    if (watch(db, UV_READABLE) != 0)
      return complete_lost(db, "cannot poll the connection");
  }
  if (op->phase == OP_READ && (events & UV_READABLE)) {
    if (op->pipe != NULL)
      read_pipe(db);
    else
      read_results(db);
  }
}

int ath__db_exec_async(ath_db_t* db, uv_loop_t* loop, const char* sql,
                       const ath_db_value_t* params, int n, ath_db_cb cb, void* ud,
                       ath_db_error_t* err) {
  if (db->kind == ATH_DB_SQLITE)
    return ath__db_sqlite_exec_async(db, loop, sql, params, n, cb, ud, err);
  if (ath__db_busy(db)) {
    ath__db_seterr(err, ATH_DB_EBUSY, NULL, "another statement is in flight on this connection",
                   NULL, NULL);
    return ATH_DB_EBUSY;
  }
  if (db->op == NULL && (db->op = calloc(1, sizeof(op_t))) == NULL) {
    conn_fail(db, ATH_ENOMEM, "out of memory", err);
    return ATH_ENOMEM;
  }
  op_t* op = db->op;
  ath__db_res_free(op->out); /* an outcome nobody took */
  pgpoll_t* kept = op->pp;
  memset(op, 0, sizeof(*op));
  op->pp = kept;
  op->phase = OP_DONE; /* until it is under way */
  if ((op->sql = prepare_sql(sql, n, err)) == NULL)
    return err->code;
  if ((op->values = pg_params(params, n, &op->lengths, &op->formats)) == NULL) {
    free_op_data(op);
    conn_fail(db, ATH_ENOMEM, "out of memory", err);
    return ATH_ENOMEM;
  }
  op->n = n;
  op->loop = loop;
  op->cb = cb;
  op->ud = ud;
  op->slot = -1;
  op->again = 1;
  int rc;
  if (db->pg != NULL) {
    rc = send_now(db, err);
  } else {
    const char* kw[8];
    const char* val[8];
    conn_params(db, kw, val);
    forget_prepared(db);
    db->pg = PQconnectStartParams(kw, val, 1);
    if (db->pg == NULL) {
      conn_fail(db, ATH_ENOMEM, "out of memory", err);
      rc = ATH_ENOMEM;
    } else if (PQstatus(db->pg) == CONNECTION_BAD) {
      conn_fail(db, ATH_DB_ECONNLOST, PQerrorMessage(db->pg), err);
      ath__db_pg_disconnect(db);
      rc = ATH_DB_ECONNLOST;
    } else {
      /* PQconnectStart leaves it as if PQconnectPoll said "writing" */
      op->phase = OP_CONNECT;
      rc = watch(db, UV_WRITABLE);
      if (rc != 0) {
        conn_fail(db, ATH_DB_ECONNLOST, "cannot poll the connection", err);
        unwatch(op);
        ath__db_pg_disconnect(db);
        rc = ATH_DB_ECONNLOST;
      }
    }
  }
  if (rc != 0) {
    free_op_data(op);
    op->phase = OP_DONE;
    op->rc = rc;
  }
  return rc;
}

/* ------------------------------------------------------------- pipelines
 *
 * ath__db_pipeline_async: the statements go out in rounds. A round sends
 * every statement still to run (a PREPARE first for one whose SQL has no
 * prepared statement yet and a free slot for it) and one sync, and reads
 * their results in the same order: each statement's results, then a NULL,
 * and the sync's PGRES_PIPELINE_SYNC last. After an error the server skips
 * the rest of the round (PGRES_PIPELINE_ABORTED): those go in the next
 * round, so that each fails only on its own error. */

enum { PS_WAIT = 0, PS_SENT, PS_DONE };

typedef struct {
  char* sql;             /* rewritten; values, lengths, formats as in op_t */
  char** values;
  int* lengths;
  int* formats;
  int n;
  void* ud;
  int state;             /* PS_* */
  int slot;              /* its PREPARE went in this round, into this slot, or -1 */
  int again;             /* may be prepared again once */
  int skip;              /* this round's results are not its outcome (told, or sent again) */
  PGresult* res;         /* the result kept from this round (the first error, else the last) */
} pitem_t;

typedef struct pipe_s {
  ath_db_each_cb each;
  int n;
  int cur;               /* the statement whose results are read, n once all are */
  int in_prep;           /* they are those of its PREPARE */
  pitem_t item[];
} pipe_t;

static void pitem_tell(ath_db_t* db, pitem_t* m, int rc, ath_db_res_t* res, const ath_db_error_t* err) {
  m->state = PS_DONE;
  db->op->pipe->each(db, m->ud, rc, res, err);
}

/* The next sent statement from i on, or n. */
static int next_sent(const pipe_t* p, int i) {
  while (i < p->n && p->item[i].state != PS_SENT)
    i++;
  return i;
}

/* Sends a round: every statement waiting, then the sync. Returns 0, or
 * -1 when the connection failed (op->err set, dropped). */
static int send_round(ath_db_t* db) {
  op_t* op = db->op;
  pipe_t* p = op->pipe;
  struct ath_db_pgstmts_s* c = db->pgstmts;
  if (c == NULL && (c = db->pgstmts = calloc(1, sizeof(*c))) == NULL) {
    conn_fail(db, ATH_ENOMEM, "out of memory", &op->err);
    return -1;
  }
  int ok = 1;
  for (int i = 0; i < p->n && ok; i++) {
    pitem_t* m = &p->item[i];
    if (m->state != PS_WAIT)
      continue;
    m->state = PS_SENT;
    m->skip = 0;
    int prepare, at = stmt_slot(c, m->sql, &prepare);
    m->slot = prepare ? at : -1;
    if (prepare && !(ok = PQsendPrepare(db->pg, c->slot[at].name, m->sql, m->n, NULL)))
      break;
    if (at >= 0) {
      ok = PQsendQueryPrepared(db->pg, c->slot[at].name, m->n, (const char* const*)m->values, m->lengths,
                               m->formats, 0);
    } else {
      ok = PQsendQueryParams(db->pg, m->sql, m->n, NULL, (const char* const*)m->values, m->lengths, m->formats,
                             0);
    }
  }
  int rc = ok && PQpipelineSync(db->pg) ? PQflush(db->pg) : -1;
  if (rc < 0 || watch(db, rc == 0 ? UV_READABLE : UV_READABLE | UV_WRITABLE) != 0) {
    const char* m = PQerrorMessage(db->pg);
    conn_fail(db, ATH_DB_ECONNLOST, m && *m ? m : "cannot poll the connection", &op->err);
    unwatch(op);
    ath__db_pg_disconnect(db);
    return -1;
  }
  op->phase = rc == 0 ? OP_READ : OP_FLUSH;
  p->cur = next_sent(p, 0);
  p->in_prep = p->cur < p->n && p->item[p->cur].slot >= 0;
  return 0;
}

/* Forgets every prepared statement of this SQL. */
static void drop_sql(ath_db_t* db, const char* sql) {
  for (int i = 0; db->pgstmts != NULL && i < PG_STMTS; i++)
    if (db->pgstmts->slot[i].sql != NULL && strcmp(db->pgstmts->slot[i].sql, sql) == 0)
      drop_slot(db, i);
}

/* The current statement's unit (its PREPARE, or itself) has ended with
 * `last` (taken). */
static void unit_end(ath_db_t* db, pitem_t* m, PGresult* last) {
  pipe_t* p = db->op->pipe;
  ExecStatusType st = last != NULL ? PQresultStatus(last) : PGRES_FATAL_ERROR;
  if (p->in_prep) {
    p->in_prep = 0;
    if (st == PGRES_COMMAND_OK) { /* prepared: the statement itself next */
      PQclear(last);
      return;
    }
    drop_slot(db, m->slot); /* its PREPARE failed: the error is the statement's */
    m->skip = 1;
    if (st == PGRES_PIPELINE_ABORTED) {
      m->state = PS_WAIT;
      PQclear(last);
    } else {
      ath_db_res_t* out = NULL;
      ath_db_error_t err;
      memset(&err, 0, sizeof(err));
      int rc = finish_result(db, last, &out, &err);
      ath__db_res_free(out);
      pitem_tell(db, m, rc != 0 ? rc : ATH_DB_EDB, NULL, &err);
    }
    return;
  }
  if (m->skip) { /* skipped by the server after its own PREPARE's error */
    PQclear(last);
  } else if (st == PGRES_PIPELINE_ABORTED) {
    m->state = PS_WAIT;
    PQclear(last);
  } else {
    const char* state = last != NULL ? PQresultErrorField(last, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && (strcmp(state, "0A000") == 0 || strcmp(state, "26000") == 0)) {
      drop_sql(db, m->sql); /* the schema changed under its prepared statement */
      if (m->again) {
        m->again = 0;
        m->state = PS_WAIT;
        PQclear(last);
        last = NULL;
      }
    }
    if (last != NULL) {
      ath_db_res_t* out = NULL;
      ath_db_error_t err;
      memset(&err, 0, sizeof(err));
      int rc = finish_result(db, last, &out, &err);
      pitem_tell(db, m, rc, out, &err);
    }
  }
  p->cur = next_sent(p, p->cur + 1);
  p->in_prep = p->cur < p->n && p->item[p->cur].slot >= 0;
}

/* Reads what arrived; a round ends at its sync, and the pipeline once no
 * statement waits. */
static void read_pipe(ath_db_t* db) {
  op_t* op = db->op;
  pipe_t* p = op->pipe;
  if (!PQconsumeInput(db->pg))
    return complete_lost(db, "connection lost");
  int nulls = 0;
  while (!PQisBusy(db->pg)) {
    PGresult* res = PQgetResult(db->pg);
    if (p->cur >= p->n) { /* every statement read: the sync */
      if (res == NULL) { /* a second one: out of step with libpq, never spin */
        if (++nulls > 1)
          return complete_lost(db, "a pipeline's sync is missing");
        continue;
      }
      int sync = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
      PQclear(res);
      if (!sync)
        return complete_lost(db, "unexpected result in a pipeline");
      if (next_sent(p, 0) < p->n)
        return complete_lost(db, "a pipeline's result is missing");
      int waiting = 0;
      for (int i = 0; i < p->n; i++)
        waiting |= p->item[i].state == PS_WAIT;
      if (waiting) { /* skipped after an error: another round */
        if (send_round(db) != 0)
          return complete(db, ATH_DB_ECONNLOST);
        if (op->phase == OP_FLUSH)
          return;
        continue;
      }
      if (!PQexitPipelineMode(db->pg))
        return complete_lost(db, "cannot leave pipeline mode");
      return complete(db, 0);
    }
    pitem_t* m = &p->item[p->cur];
    if (res == NULL) {
      PGresult* last = m->res;
      m->res = NULL;
      unit_end(db, m, last);
      if (db->pg == NULL) { /* the error said the connection is gone: the rest are told so */
        conn_fail(db, ATH_DB_ECONNLOST, "the connection was lost in a pipeline", &op->err);
        return complete(db, ATH_DB_ECONNLOST);
      }
      continue;
    }
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH || st == PGRES_PIPELINE_SYNC) {
      PQclear(res);
      return complete_lost(db, "unexpected result in a pipeline");
    }
    if (m->res != NULL && PQresultStatus(m->res) == PGRES_FATAL_ERROR) {
      PQclear(res); /* keep the first error, else the last result */
    } else {
      PQclear(m->res);
      m->res = res;
    }
  }
}

/* Ends the pipeline: statements not told yet get rc with op->err. */
static void pipe_end(ath_db_t* db, int rc) {
  op_t* op = db->op;
  pipe_t* p = op->pipe;
  for (int i = 0; i < p->n; i++) {
    pitem_t* m = &p->item[i];
    if (m->res != NULL)
      PQclear(m->res);
    if (m->state != PS_DONE) {
      if (rc == 0) /* cannot be: told as lost */
        conn_fail(db, ATH_DB_ECONNLOST, "the statement was not answered", &op->err);
      pitem_tell(db, m, rc != 0 ? rc : ATH_DB_ECONNLOST, NULL, &op->err);
    }
    free(m->sql);
    free(m->values);
  }
  op->pipe = NULL;
  free(p);
}

/* Frees a pipeline that never started, or was given up: nobody is told. */
static void pipe_free(pipe_t* p) {
  for (int i = 0; p != NULL && i < p->n; i++) {
    if (p->item[i].res != NULL)
      PQclear(p->item[i].res);
    free(p->item[i].sql);
    free(p->item[i].values);
  }
  free(p);
}

int ath__db_pipeline_async(ath_db_t* db, uv_loop_t* loop, const ath_db_stmt_t* st, int n, ath_db_each_cb each,
                           ath_db_cb done, void* ud, ath_db_error_t* err) {
  if (n <= 0) {
    ath__db_seterr(err, ATH_DB_EINVAL, NULL, "a pipeline needs at least one statement", NULL, NULL);
    return ATH_DB_EINVAL;
  }
  if (db->kind != ATH_DB_PG || db->pg == NULL || PQstatus(db->pg) != CONNECTION_OK) {
    ath__db_seterr(err, ATH_DB_EINVAL, NULL, "a pipeline needs a PostgreSQL connection that is up", NULL, NULL);
    return ATH_DB_EINVAL;
  }
  if (ath__db_busy(db)) {
    ath__db_seterr(err, ATH_DB_EBUSY, NULL, "another statement is in flight on this connection", NULL, NULL);
    return ATH_DB_EBUSY;
  }
  if (db->op == NULL) {
    if ((db->op = calloc(1, sizeof(op_t))) == NULL) {
      conn_fail(db, ATH_ENOMEM, "out of memory", err);
      return ATH_ENOMEM;
    }
    db->op->phase = OP_DONE; /* idle until the pipeline is under way */
  }
  pipe_t* p = calloc(1, sizeof(*p) + (size_t)n * sizeof(pitem_t));
  if (p == NULL) {
    conn_fail(db, ATH_ENOMEM, "out of memory", err);
    return ATH_ENOMEM;
  }
  p->each = each;
  p->n = n;
  for (int i = 0; i < n; i++) {
    pitem_t* m = &p->item[i];
    m->ud = st[i].ud;
    m->n = st[i].n;
    m->again = 1;
    m->slot = -1;
    if ((m->sql = prepare_sql(st[i].sql, st[i].n, err)) == NULL ||
        (m->values = pg_params(st[i].params, st[i].n, &m->lengths, &m->formats)) == NULL) {
      if (m->sql != NULL)
        conn_fail(db, ATH_ENOMEM, "out of memory", err);
      pipe_free(p);
      return err->code;
    }
  }
  op_t* op = db->op;
  ath__db_res_free(op->out); /* an outcome nobody took */
  pgpoll_t* kept = op->pp;
  memset(op, 0, sizeof(*op));
  op->pp = kept;
  op->loop = loop;
  op->cb = done;
  op->ud = ud;
  op->slot = -1;
  PQsetnonblocking(db->pg, 1);
  if (!PQenterPipelineMode(db->pg)) {
    pipe_free(p);
    op->phase = OP_DONE;
    conn_fail(db, ATH_DB_EDB, PQerrorMessage(db->pg), err);
    return ATH_DB_EDB;
  }
  op->pipe = p;
  if (send_round(db) != 0) {
    *err = op->err;
    pipe_free(p);
    op->pipe = NULL;
    op->phase = OP_DONE;
    return ATH_DB_ECONNLOST;
  }
  return 0;
}

void ath__db_keep_watch(ath_db_t* db) {
  db->keep_watch = 1;
}

void ath__db_unwatch(ath_db_t* db) {
  if (db->kind == ATH_DB_PG && db->op != NULL && db->op->phase == OP_DONE)
    unwatch(db->op);
}

int ath__db_async_result(ath_db_t* db, ath_db_res_t** out, ath_db_error_t* err) {
  if (db->kind == ATH_DB_SQLITE)
    return ath__db_sqlite_async_result(db, out, err);
  op_t* op = db->op;
  *out = NULL;
  if (op == NULL || op->phase != OP_DONE) {
    ath__db_seterr(err, ATH_DB_EBUSY, NULL, "no statement has ended", NULL, NULL);
    return ATH_DB_EBUSY;
  }
  *out = op->out;
  op->out = NULL;
  if (op->rc != 0)
    *err = op->err;
  return op->rc;
}

void ath__db_abort(ath_db_t* db) {
  if (db->kind == ATH_DB_SQLITE) {
    ath__db_sqlite_abort(db);
    return;
  }
  op_t* op = db->op;
  if (op == NULL)
    return;
  unwatch(op);
  if (op->phase != OP_DONE) {
    if (db->pg != NULL && PQstatus(db->pg) == CONNECTION_OK &&
        PQtransactionStatus(db->pg) == PQTRANS_ACTIVE) {
      /* stop the server's work (a short blocking exchange on a new socket);
       * the reply on this connection is never read: it is dropped */
      char buf[256];
      PGcancel* c = PQgetCancel(db->pg);
      if (c != NULL) {
        PQcancel(c, buf, sizeof(buf));
        PQfreeCancel(c);
      }
    }
    ath__db_pg_disconnect(db);
    free_op_data(op);
  }
  pipe_free(op->pipe);
  ath__db_res_free(op->out);
  free(op);
  db->op = NULL;
}
