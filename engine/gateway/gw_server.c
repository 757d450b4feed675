/* The gateway server's HTTP side and lifecycle (GATEWAY §1, §2, §6): routes,
 * methods, request ids, CORS, API keys, clients, rate limits and body
 * limits are decided here on the engine loop, where engine/http/http.c hands
 * over every request that is not the operations surface. Requests that
 * need the database go to the gateway threads (gw_exec.c) through one
 * queue; their answers come back through `done` and an async handle. */
#define H2O_USE_LIBUV 1
#include <h2o.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include "internal.h"
#include "gw_server.h"
#include "http.h"

/* ---------------------------------------------------------------- config */

void ath__gws_config_free(ath_gws_config_t* c) {
  for (int i = 0; i < c->ndbs; i++) {
    free(c->db_names[i]);
    free(c->db_urls[i]);
  }
  free(c->db_names);
  free(c->db_urls);
  ath__gws_keys_free(c->keys, c->nkeys);
  for (int i = 0; i < c->ntables; i++) {
    free(c->tables[i].name);
    ath__strv_free(c->tables[i].hidden);
  }
  free(c->tables);
  free(c->config_path);
  ath__strv_free(c->cors_origins);
  ath__strv_free(c->events);
  ath__strv_free(c->trusted_proxies);
  free(c->prefix);
  memset(c, 0, sizeof(*c));
}

/* --------------------------------------------------------------- threads */

enum { GWT_NONE = 0, GWT_OPEN, GWT_STOP };

/* The thread's command (ath__gws_serve, stop_threads). */
static void on_wake(uv_async_t* h) {
  ath_gwt_t* t = h->data;
  ath_gws_t* s = t->s;
  uv_mutex_lock(&s->mu);
  int cmd = t->cmd;
  t->cmd = GWT_NONE;
  uv_mutex_unlock(&s->mu);
  if (cmd == GWT_OPEN) {
    t->hl = ath__http_loop_open(t->http, &t->loop, t, t->index + 1);
    uv_mutex_lock(&s->mu);
    t->opened = t->hl != NULL ? 1 : -1;
    uv_cond_broadcast(&s->cond);
    uv_mutex_unlock(&s->mu);
  } else if (cmd == GWT_STOP) {
    ath__gwt_batch_close(t); /* the fetches it holds are answered first */
    if (t->hl != NULL)
      ath__http_loop_close(t->hl); /* it frees itself once its connections closed */
    t->hl = NULL;
    ath__gwt_unwatch(t);
    uv_close((uv_handle_t*)&t->wake, NULL);
  }
}

static void thread_main(void* arg) {
  ath_gwt_t* t = arg;
  ath_gws_t* s = t->s;
  /* writes to sockets whose clients are gone must be EPIPE, not a SIGPIPE
   * that kills a host which does not ignore it (as on the engine thread) */
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, NULL);
  char err[400] = "";
  ath__gwt_init(t, err, sizeof(err));
  if (err[0])
    ath__logf(s->w, ATH_LOG_ERROR, NULL, 0, "%s", err);
  int rc = uv_loop_init(&t->loop);
  if (rc == 0 && (rc = uv_async_init(&t->loop, &t->wake, on_wake)) != 0)
    uv_loop_close(&t->loop);
  t->wake.data = t;
  if (rc == 0)
    ath__gwt_batch_init(t);
  uv_mutex_lock(&s->mu);
  s->ready++; /* ath__gws_new waits for every thread's connections */
  t->looping = rc == 0;
  t->opened = rc == 0 ? 0 : -1;
  uv_cond_broadcast(&s->cond);
  uv_mutex_unlock(&s->mu);
  if (rc == 0) {
    uv_run(&t->loop, UV_RUN_DEFAULT); /* until GWT_STOP closed everything */
    uv_loop_close(&t->loop);
  }
  while (t->nspare > 0)
    ath__buf_free(&t->spare[--t->nspare]);
  ath__gwt_close(t);
}

/* Gives every thread the command; OPEN waits until each one answered. */
static int command(ath_gws_t* s, int cmd, ath_http_t* h) {
  int failed = 0;
  uv_mutex_lock(&s->mu);
  for (int i = 0; i < s->nthreads; i++) {
    ath_gwt_t* t = &s->threads[i];
    if (!t->looping || (cmd == GWT_OPEN && t->opened < 0)) {
      failed = 1;
      continue; /* its loop never started */
    }
    t->cmd = cmd;
    t->http = h;
    uv_async_send(&t->wake);
  }
  if (cmd == GWT_OPEN)
    for (int i = 0; i < s->nthreads; i++) {
      while (s->threads[i].opened == 0)
        uv_cond_wait(&s->cond, &s->mu);
      failed |= s->threads[i].opened < 0;
    }
  uv_mutex_unlock(&s->mu);
  return failed ? ATH_ENOMEM : 0;
}

static void stop_threads(ath_gws_t* s) {
  command(s, GWT_STOP, NULL);
  for (int i = 0; i < s->nthreads; i++)
    uv_thread_join(&s->threads[i].tid);
  s->nthreads = 0;
}

int ath__gws_serve(ath_gws_t* s, ath_http_t* h, char* err, size_t errlen) {
  int rc = command(s, GWT_OPEN, h);
  if (rc != 0)
    snprintf(err, errlen, "%s", "a gateway thread could not start its HTTP loop");
  return rc;
}

int ath__gws_nthreads(const ath_gws_t* s) {
  return s->nthreads;
}

struct ath_http_loop_s* ath__gws_loop(ath_gws_t* s, int i) {
  return s->threads[i].hl;
}

static void free_server(ath_gws_t* s) {
  stop_threads(s);
  for (int i = 0; s->cats && i < s->cfg.ndbs; i++)
    ath__gws_cat_free(s->cats[i]);
  free(s->cats);
  for (int i = 0; s->writers && i < s->cfg.ndbs; i++)
    uv_mutex_destroy(&s->writers[i]);
  free(s->writers);
  for (int i = 0; s->wconns && i < s->cfg.ndbs; i++)
    if (s->wconns[i].db != NULL)
      ath__db_free(s->wconns[i].db);
  free(s->wconns);
  free(s->threads);
  ath__gw_limiter_free(&s->lim);
  ath__gws_config_free(&s->cfg);
  uv_cond_destroy(&s->cond);
  uv_mutex_destroy(&s->mu);
  uv_mutex_destroy(&s->lim_mu);
  free(s);
}

/* One line at start when a SQLite file is not in WAL mode: readers then
 * wait for every writer, and a mix of fetches and inserts serves several
 * times fewer requests (docs/gateway-server.md). The file's mode is the
 * operator's to change: this only reads it. */
static void wal_hint(ath_gws_t* s, ath_db_t* db, int i) {
  ath_db_res_t* r = NULL;
  ath_db_error_t e;
  ath_db_value_t v;
  if (ath__db_kind(db) != ATH_DB_SQLITE || ath__db_exec(db, "PRAGMA journal_mode", NULL, 0, &r, &e) != 0)
    return;
  if (ath__db_res_nrows(r) == 1 && ath__db_res_value(r, 0, 0, &v) == 0 && v.type == ATH_DB_TEXT &&
      !(v.len == 3 && strncasecmp(v.s, "wal", 3) == 0) && !(v.len == 6 && strncasecmp(v.s, "memory", 6) == 0)) {
    char mode[16];
    snprintf(mode, sizeof(mode), "%.*s", (int)(v.len < 15 ? v.len : 15), v.s);
    ath_log_field_t f[2] = {ATH_LOG_FSTR("database", i == 0 ? "default" : s->cfg.db_names[i]),
                            ATH_LOG_FSTR("journal_mode", mode)};
    ath__logf(s->w, ATH_LOG_WARN, f, 2,
              "gateway database is not in WAL mode: its readers wait for every writer (a 90/10 fetch/insert "
              "mix served about 8x fewer requests; PRAGMA journal_mode = WAL on the file changes it, the "
              "server never does)");
  }
  ath__db_res_free(r);
}

/* Reads every database's catalog into cats (NULL entries on failure). A
 * refresh (`again`) refuses a SQLite file that is no longer there rather
 * than create it empty and serve its empty catalog. */
static int read_catalogs(ath_gws_t* s, ath_gws_cat_t** cats, int again, char* err, size_t errlen) {
  for (int i = 0; i < s->cfg.ndbs; i++) {
    ath_db_t* db = NULL;
    ath_db_error_t e;
    const char* url = s->cfg.db_urls[i];
    uv_fs_t st;
    if (again && strncmp(url, "sqlite:", 7) == 0 && strncmp(url + 7, "file:", 5) != 0 &&
        strcmp(url + 7, ":memory:") != 0) {
      int gone = uv_fs_stat(NULL, &st, url + 7, NULL) != 0;
      uv_fs_req_cleanup(&st);
      if (gone) {
        snprintf(err, errlen, "gateway database %s: the database file is gone",
                 i == 0 ? "(default)" : s->cfg.db_names[i]);
        return ATH_EINVAL;
      }
    }
    int rc = ath__db_new(url, &db, &e);
    if (rc == 0)
      rc = ath__db_connect(db, &e);
    if (rc == 0 && !again)
      wal_hint(s, db, i);
    if (rc == 0)
      rc = ath__gws_introspect(db, &s->cfg, &cats[i], &e);
    if (db != NULL)
      ath__db_free(db);
    if (rc != 0) {
      snprintf(err, errlen, "gateway database %s: %s", i == 0 ? "(default)" : s->cfg.db_names[i], e.message);
      return rc == ATH_ENOMEM ? ATH_ENOMEM : ATH_EINVAL;
    }
  }
  return 0;
}

int ath__gws_new(ath_world_t* w, ath_gws_config_t* cfg, ath_gws_t** out, char* err, size_t errlen) {
  ath_gws_t* s = calloc(1, sizeof(*s));
  if (s == NULL) {
    ath__gws_config_free(cfg);
    return ATH_ENOMEM;
  }
  s->w = w;
  s->cfg = *cfg;
  memset(cfg, 0, sizeof(*cfg));
  uv_mutex_init(&s->mu);
  uv_mutex_init(&s->lim_mu);
  uv_cond_init(&s->cond);
  int n = s->cfg.threads > 0 ? s->cfg.threads : 2;
  s->cats = calloc((size_t)s->cfg.ndbs, sizeof(*s->cats));
  s->threads = calloc((size_t)n, sizeof(*s->threads));
  s->writers = calloc((size_t)s->cfg.ndbs, sizeof(*s->writers));
  s->wconns = calloc((size_t)s->cfg.ndbs, sizeof(*s->wconns));
  if (s->cats == NULL || s->threads == NULL || s->writers == NULL || s->wconns == NULL) {
    free(s->writers);
    s->writers = NULL;
    free_server(s);
    return ATH_ENOMEM;
  }
  for (int i = 0; i < s->cfg.ndbs; i++)
    uv_mutex_init(&s->writers[i]);
  int rc = ath__gws_check_tables(&s->cfg, err, errlen);
  if (rc == 0)
    rc = read_catalogs(s, s->cats, 0, err, errlen);
  for (int i = 0; rc == 0 && i < n; i++) {
    ath_gwt_t* t = &s->threads[i];
    t->s = s;
    t->index = i;
    if (uv_thread_create(&t->tid, thread_main, t) != 0) {
      snprintf(err, errlen, "%s", "cannot start a gateway thread");
      rc = ATH_ENOMEM;
      break;
    }
    s->nthreads++;
  }
  uv_mutex_lock(&s->mu); /* each thread's loop is ready for commands */
  while (s->ready < s->nthreads)
    uv_cond_wait(&s->cond, &s->mu);
  uv_mutex_unlock(&s->mu);
  if (rc != 0) {
    free_server(s);
    return rc;
  }
  *out = s;
  return 0;
}

int ath__gws_refresh(ath_gws_t* s, char* err, size_t errlen) {
  ath_gws_cat_t** fresh = calloc((size_t)s->cfg.ndbs, sizeof(*fresh));
  if (fresh == NULL)
    return ATH_ENOMEM;
  int rc = read_catalogs(s, fresh, 1, err, errlen);
  uv_mutex_lock(&s->mu); /* one refresh at a time */
  for (int i = 0; i < s->cfg.ndbs; i++) {
    if (rc == 0) { /* the old one stays readable for requests using it */
      fresh[i]->older = s->cats[i];
      __atomic_store_n(&s->cats[i], fresh[i], __ATOMIC_RELEASE);
    } else {
      ath__gws_cat_free(fresh[i]);
    }
  }
  if (rc == 0) /* the threads' plan caches empty themselves */
    __atomic_add_fetch(&s->cat_gen, 1, __ATOMIC_RELEASE);
  uv_mutex_unlock(&s->mu);
  free(fresh);
  return rc;
}

size_t ath__gws_body_cap(const ath_gws_t* s) {
  return s->cfg.body_limit + 64 * 1024;
}

void ath__gws_keys_free(ath_gws_key_t* keys, int n) {
  for (int i = 0; i < n; i++) {
    free(keys[i].name);
    ath__strv_free(keys[i].tables);
    ath__strv_free(keys[i].databases);
  }
  free(keys);
}

int ath__gws_copy_keys(const ath_gws_t* s, ath_gws_key_t** keys, int* n) {
  for (int i = 0; i < s->cfg.nkeys; i++) {
    const ath_gws_key_t* k = &s->cfg.keys[i];
    ath_gws_key_t* grown = realloc(*keys, (size_t)(*n + 1) * sizeof(*grown));
    if (grown == NULL)
      return ATH_ENOMEM;
    *keys = grown;
    ath_gws_key_t* c = &grown[*n];
    memset(c, 0, sizeof(*c));
    c->name = ath__memdup(k->name, strlen(k->name));
    if (c->name == NULL)
      return ATH_ENOMEM;
    memcpy(c->hash, k->hash, sizeof(c->hash));
    c->rights = k->rights;
    (*n)++;
  }
  return 0;
}

/* ----------------------------------------------------------- HTTP helpers */

static const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status >= 500 ? "Internal Server Error" : "Error";
  }
}

static void add(h2o_req_t* req, const char* lname, const char* value, size_t len) {
  h2o_iovec_t v = h2o_strdup(&req->pool, value, len);
  h2o_add_header_by_str(&req->pool, &req->res.headers, lname, strlen(lname), 1, NULL, v.base, v.len);
}

/* Header `lname` (lower case): every value joined, each trimmed; "" when
 * absent. Writes at most cap-1 bytes; returns the length (0: absent or
 * empty, as GATEWAY §2 treats them alike). */
static size_t header(h2o_req_t* req, const char* lname, char* out, size_t cap) {
  size_t n = 0;
  ssize_t cur = -1;
  while ((cur = h2o_find_header_by_str(&req->headers, lname, strlen(lname), cur)) != -1) {
    h2o_iovec_t v = req->headers.entries[cur].value;
    size_t a = 0, b = v.len;
    while (a < b && (v.base[a] == ' ' || v.base[a] == '\t'))
      a++;
    while (b > a && (v.base[b - 1] == ' ' || v.base[b - 1] == '\t'))
      b--;
    if (a == b)
      continue;
    if (n > 0 && n + 2 < cap) {
      out[n++] = ',';
      out[n++] = ' ';
    }
    size_t k = b - a < cap - 1 - n ? b - a : cap - 1 - n;
    memcpy(out + n, v.base + a, k);
    n += k;
  }
  out[n] = '\0';
  return n;
}

/* Splits a comma-merged value; returns 1 and the single distinct part in
 * out (aliases of `drop` removed when given), 0 when empty, -1 when parts
 * differ. */
static int single_part(const char* v, char* out, size_t cap, const char* const* drop) {
  int found = 0;
  out[0] = '\0';
  while (*v) {
    while (*v == ' ' || *v == ',')
      v++;
    const char* e = v;
    while (*e && *e != ',')
      e++;
    const char* z = e;
    while (z > v && z[-1] == ' ')
      z--;
    size_t n = (size_t)(z - v);
    int dropped = 0;
    for (const char* const* d = drop; d && *d; d++)
      dropped |= strlen(*d) == n && memcmp(*d, v, n) == 0;
    if (n > 0 && !dropped) {
      if (n >= cap)
        return -1;
      if (found && (strlen(out) != n || memcmp(out, v, n) != 0))
        return -1;
      memcpy(out, v, n);
      out[n] = '\0';
      found = 1;
    }
    v = e;
  }
  return found;
}

/* ------------------------------------------------------------- the answer */

/* Headers every answer has (GATEWAY §1, §6.6). */
static void common_headers(h2o_req_t* req, const ath_gwjob_t* j) {
  add(req, "x-request-id", j->request_id, strlen(j->request_id));
  add(req, "x-athena-request-id", j->request_id, strlen(j->request_id));
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
  if (j->cors) {
    add(req, "access-control-allow-origin", j->origin, strlen(j->origin));
    add(req, "vary", "Origin", 6);
    static const char expose[] = "x-request-id, x-athena-request-id, x-athena-event-id, x-athena-limit, retry-after";
    add(req, "access-control-expose-headers", expose, sizeof(expose) - 1);
  }
}

static void send_job(h2o_req_t* req, ath_gwjob_t* j) {
  req->res.status = j->status;
  req->res.reason = reason(j->status);
  common_headers(req, j);
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                 H2O_STRLIT("application/json; charset=utf-8"));
  char tmp[32];
  if (j->limit_header > 0) {
    int n = snprintf(tmp, sizeof(tmp), "%lld", (long long)j->limit_header);
    add(req, "x-athena-limit", tmp, (size_t)n);
  }
  if (j->event_id[0])
    add(req, "x-athena-event-id", j->event_id, strlen(j->event_id));
  if (j->status == 401)
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL, H2O_STRLIT("Bearer"));
  /* a known length: HTTP/1.1 needs neither chunks nor a close to end it */
  if (j->out.data != NULL) { /* h2o_send_inline copies it */
    req->res.content_length = j->out.len - j->out_off;
    h2o_send_inline(req, j->out.data + j->out_off, j->out.len - j->out_off);
  } else {
    req->res.content_length = 2;
    h2o_send_inline(req, H2O_STRLIT("{}"));
  }
}

typedef struct {
  ath_gwjob_t* job;
} gw_ref_t;

static void ref_dispose(void* p) {
  gw_ref_t* r = p;
  if (r->job != NULL)
    r->job->req = NULL; /* the client went away: answer nobody */
}

static void job_free(ath_gwjob_t* j) {
  free(j->owned_body);
  free(j->event);
  for (int i = 0; i < 3; i++)
    free(j->hint[i]);
  ath__buf_free(&j->out);
  free(j);
}

ath_gwjob_t* ath__gws_hold(ath_gwjob_t* job, h2o_req_t* req) {
  ath_gwjob_t* j = malloc(sizeof(*j));
  if (j == NULL)
    return NULL;
  gw_ref_t* ref = h2o_mem_alloc_shared(&req->pool, sizeof(*ref), ref_dispose);
  *j = *job;
  j->body = NULL; /* parsed already; h2o's bytes are not kept */
  j->body_len = 0;
  ref->job = j;
  j->ref = ref;
  j->req = req;
  /* what job owned is j's now */
  job->owned_body = job->event = NULL;
  memset(job->hint, 0, sizeof(job->hint));
  memset(&job->out, 0, sizeof(job->out));
  return j;
}

/* An emptied answer buffer kept by t, or an empty one. */
static ath_buf_t take_spare(ath_gwt_t* t) {
  if (t->nspare == 0)
    return (ath_buf_t){0};
  ath_buf_t b = t->spare[--t->nspare];
  b.len = 0;
  return b;
}

/* Keeps b's memory for t's next answers (b is left empty). */
static void keep_spare(ath_gwt_t* t, ath_buf_t* b) {
  size_t n = sizeof(t->spare) / sizeof(t->spare[0]);
  if (b->data != NULL && b->cap <= ((size_t)1 << 20) && (size_t)t->nspare < n)
    t->spare[t->nspare++] = *b; /* (a large answer's buffer is not kept) */
  else
    ath__buf_free(b);
  memset(b, 0, sizeof(*b));
}

void ath__gws_finish(ath_gwt_t* t, ath_gwjob_t* j) {
  if (j->req != NULL) {
    ((gw_ref_t*)j->ref)->job = NULL;
    send_job(j->req, j); /* h2o copied the answer */
  }
  keep_spare(t, &j->out);
  job_free(j);
}

void ath__gws_free(ath_gws_t* s) {
  if (s != NULL)
    free_server(s); /* stops the threads first: their connections close */
}

/* Answers now with the error envelope. */
static int answer_error(h2o_req_t* req, ath_gwjob_t* base, int status, const char* code, const char* error,
                        const char* extra_name, const char* extra_value) {
  ath__gwjob_error(base, status, code, error, NULL);
  if (extra_name != NULL)
    add(req, extra_name, extra_value, strlen(extra_value));
  send_job(req, base);
  ath__buf_free(&base->out);
  return 1;
}

/* ------------------------------------------------------------ rate limits */

/* One token bucket per key, per client address (IPv6: per /64) and per
 * address's failed keys, in a table of at most BUCKETS_MAX. A full table
 * forgets its least recently used bucket that is back to a full burst
 * (forgetting it changes nothing); failing that, the least recently used
 * one that is not holding a lockout; failing that, the newcomer gets no
 * bucket and is refused (429): filling the table never lifts a limit. */
#define BUCKETS_MAX 65536u
#define NONE UINT32_MAX

typedef struct ath_gw_bucket_s {
  char name[88];   /* "k:<key name>", "i:<ip>", "f:<ip>" (auth failures) */
  double tokens;
  double rate, burst;
  uint64_t at;     /* monotonic ns of the last refill */
  uint32_t chain;  /* next in its hash chain */
  uint32_t older, newer;
} bucket_t;

static void refill(bucket_t* b, uint64_t now) {
  b->tokens += (double)(now - b->at) / 1e9 * b->rate;
  if (b->tokens > b->burst)
    b->tokens = b->burst;
  b->at = now;
}

static void lru_unlink(ath_gw_limiter_t* s, uint32_t i) {
  bucket_t* b = &s->buckets[i];
  if (b->older != NONE)
    s->buckets[b->older].newer = b->newer;
  else
    s->lru_old = b->newer;
  if (b->newer != NONE)
    s->buckets[b->newer].older = b->older;
  else
    s->lru_new = b->older;
}

static void lru_push(ath_gw_limiter_t* s, uint32_t i) {
  bucket_t* b = &s->buckets[i];
  b->older = s->lru_new;
  b->newer = NONE;
  if (s->lru_new != NONE)
    s->buckets[s->lru_new].newer = i;
  else
    s->lru_old = i;
  s->lru_new = i;
}

static uint32_t* chain_of(ath_gw_limiter_t* s, const char* name) {
  return &s->bucket_heads[ath__hash_str(name) & (s->bucket_cap - 1)];
}

static size_t most(const ath_gw_limiter_t* s) {
  return s->max ? s->max : BUCKETS_MAX;
}

/* Doubles the table (up to most(s)). Returns 0 or -1. */
static int grow(ath_gw_limiter_t* s) {
  size_t cap = s->bucket_cap ? s->bucket_cap * 2 : 1024;
  if (cap > most(s))
    cap = most(s);
  bucket_t* b = realloc(s->buckets, cap * sizeof(*b));
  if (b == NULL)
    return -1;
  s->buckets = b;
  uint32_t* heads = realloc(s->bucket_heads, cap * sizeof(*heads));
  if (heads == NULL)
    return -1;
  s->bucket_heads = heads;
  if (s->bucket_cap == 0)
    s->lru_old = s->lru_new = NONE;
  s->bucket_cap = cap;
  for (size_t i = 0; i < cap; i++)
    heads[i] = NONE;
  for (uint32_t i = 0; i < s->nbuckets; i++) {
    uint32_t* head = chain_of(s, b[i].name);
    b[i].chain = *head;
    *head = i;
  }
  return 0;
}

/* The slot of a bucket the full table can forget, unlinked, or NONE. */
static uint32_t evict(ath_gw_limiter_t* s, uint64_t now) {
  uint32_t victim = NONE, spare = NONE;
  int seen = 0;
  for (uint32_t i = s->lru_old; i != NONE && seen < 16; i = s->buckets[i].newer, seen++) {
    bucket_t* b = &s->buckets[i];
    refill(b, now);
    if (b->tokens >= b->burst) {
      victim = i;
      break;
    }
    if (spare == NONE && !(b->name[0] == 'f' && b->tokens < 1))
      spare = i;
  }
  if (victim == NONE)
    victim = spare;
  if (victim == NONE)
    return NONE;
  lru_unlink(s, victim);
  uint32_t* p = chain_of(s, s->buckets[victim].name);
  while (*p != victim)
    p = &s->buckets[*p].chain;
  *p = s->buckets[victim].chain;
  return victim;
}

/* The bucket called `name` (made full when new), now the most recently
 * used; NULL when the table can take no more. */
static bucket_t* bucket(ath_gw_limiter_t* s, const char* name, double rate, double burst) {
  if (s->bucket_cap) {
    for (uint32_t i = *chain_of(s, name); i != NONE; i = s->buckets[i].chain)
      if (strcmp(s->buckets[i].name, name) == 0) {
        lru_unlink(s, i);
        lru_push(s, i);
        return &s->buckets[i];
      }
  }
  uint64_t now = ath__mono_ns();
  uint32_t i;
  if (s->nbuckets < s->bucket_cap) {
    i = (uint32_t)s->nbuckets++;
  } else if (s->bucket_cap < most(s) && grow(s) == 0) {
    i = (uint32_t)s->nbuckets++;
  } else if ((i = evict(s, now)) == NONE) {
    return NULL;
  }
  bucket_t* b = &s->buckets[i];
  snprintf(b->name, sizeof(b->name), "%s", name);
  b->tokens = b->burst = burst;
  b->rate = rate;
  b->at = now;
  uint32_t* head = chain_of(s, name);
  b->chain = *head;
  *head = i;
  lru_push(s, i);
  return b;
}

/* Refills b up to its burst; takes one token when `take`. Returns 0, or
 * the seconds until a token is there (>= 1); a client the table has no
 * room for waits a second. */
static int spend(bucket_t* b, int take) {
  if (b == NULL)
    return 1;
  if (b->rate <= 0)
    return 0;
  refill(b, ath__mono_ns());
  if (b->tokens >= 1) {
    if (take)
      b->tokens -= 1;
    return 0;
  }
  int wait = (int)ceil((1 - b->tokens) / b->rate);
  return wait < 1 ? 1 : wait;
}

/* out = a then b, cut to cap - 1 bytes (no snprintf on every request). */
static void join(char* out, size_t cap, const char* a, const char* b) {
  size_t na = strlen(a), nb = strlen(b);
  na = na < cap - 1 ? na : cap - 1;
  nb = nb < cap - 1 - na ? nb : cap - 1 - na;
  memcpy(out, a, na);
  memcpy(out + na, b, nb);
  out[na + nb] = '\0';
}

/* The bucket name of a client address: IPv6 addresses by their /64 (one
 * host is handed a whole /64), IPv4 (mapped or not) as they are. */
static void client_bucket(const char* kind, const char* ip, char* out, size_t cap) {
  unsigned char a[16];
  char text[INET6_ADDRSTRLEN];
  if (strchr(ip, ':') != NULL && inet_pton(AF_INET6, ip, a) == 1) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, 12) == 0) {
      inet_ntop(AF_INET, a + 12, text, sizeof(text));
      snprintf(out, cap, "%s%s", kind, text);
      return;
    }
    memset(a + 8, 0, 8);
    inet_ntop(AF_INET6, a, text, sizeof(text));
    snprintf(out, cap, "%s%s/64", kind, text);
    return;
  }
  join(out, cap, kind, ip);
}

void ath__gw_limiter_free(ath_gw_limiter_t* l) {
  free(l->buckets);
  free(l->bucket_heads);
  size_t max = l->max;
  memset(l, 0, sizeof(*l));
  l->max = max;
}

int ath__gw_auth_failure(ath_gw_limiter_t* l, const char* ip, double per_min) {
  char name[96];
  client_bucket("f:", ip, name, sizeof(name));
  return spend(bucket(l, name, per_min / 60.0, per_min), 1);
}

int ath__gws_anonymous(const ath_gws_t* s) {
  return s->cfg.anonymous;
}

int ath__gws_auth_failure(ath_gws_t* s, const char* ip) {
  uv_mutex_lock(&s->lim_mu);
  int wait = ath__gw_auth_failure(&s->lim, ip, s->cfg.auth_fail_per_min);
  uv_mutex_unlock(&s->lim_mu);
  return wait;
}

/* The request's rate limits (§6.9) under one lock: the address's bucket
 * (`ipname`), then the key's when the key is known, or the address's
 * failed-key count when `failed`. Returns 0, or the seconds to wait
 * (answer 429). */
static int limit(ath_gws_t* s, const char* ipname, const char* ip, const ath_gws_key_t* key, int failed) {
  uv_mutex_lock(&s->lim_mu);
  int wait = spend(bucket(&s->lim, ipname, s->cfg.ip_rate, s->cfg.ip_burst), 1);
  if (wait == 0 && failed) {
    wait = ath__gw_auth_failure(&s->lim, ip, s->cfg.auth_fail_per_min);
  } else if (wait == 0 && key != NULL) {
    char kname[96];
    join(kname, sizeof(kname), "k:", key->name);
    wait = spend(bucket(&s->lim, kname, s->cfg.key_rate, s->cfg.key_burst), 1);
  }
  uv_mutex_unlock(&s->lim_mu);
  return wait;
}

/* A refused request that came with a large body: its connection closes
 * after the answer, so the buffer h2o read the body into (h2o 2.2 reads
 * it all before the handler runs) is freed at once. Small ones keep the
 * connection: a refusal must stay cheaper than a fetch. */
static void drop_body(h2o_req_t* req) {
  if (req->entity.len > 64 * 1024)
    req->http1_is_persistent = 0;
}

static int limited(h2o_req_t* req, ath_gwjob_t* base, int wait) {
  drop_body(req);
  char s[16];
  snprintf(s, sizeof(s), "%d", wait);
  return answer_error(req, base, 429, "rate_limited", "too many requests; retry later", "retry-after", s);
}

/* ------------------------------------------------------------- the routes */

static int is_path(const char* p, size_t n, const char* lit) {
  return strlen(lit) == n && memcmp(p, lit, n) == 0;
}

static int method_is(h2o_req_t* req, const char* m) {
  return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

/* a.b.c.d by hand (cap >= 16): uv_ip4_name's snprintf was as costly as
 * the rest of the request's routing. */
static void ip4_text(const struct in_addr* in, char* out, size_t cap) {
  const unsigned char* a = (const unsigned char*)in;
  char* p = out;
  if (cap < INET_ADDRSTRLEN) {
    out[0] = '\0';
    return;
  }
  for (int i = 0; i < 4; i++) {
    unsigned v = a[i];
    if (v >= 100)
      *p++ = (char)('0' + v / 100);
    if (v >= 10)
      *p++ = (char)('0' + v / 10 % 10);
    *p++ = (char)('0' + v % 10);
    *p++ = i < 3 ? '.' : '\0';
  }
}

/* The client's address: the socket peer, or the nearest untrusted entry
 * of X-Forwarded-For when the peer is a trusted proxy (§6.9). */
void ath__gws_client_ip(const ath_gws_t* s, h2o_req_t* req, char* out, size_t cap) {
  struct sockaddr_storage sa;
  out[0] = '\0';
  socklen_t len = req->conn->callbacks->get_peername(req->conn, (struct sockaddr*)&sa);
  if (len > 0) {
    if (sa.ss_family == AF_INET)
      ip4_text(&((struct sockaddr_in*)&sa)->sin_addr, out, cap);
    else if (sa.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6*)&sa, out, cap);
  }
  if (s == NULL || s->cfg.trusted_proxies == NULL)
    return;
  char xff[512];
  for (;;) {
    int trusted = 0;
    for (char** p = s->cfg.trusted_proxies; *p; p++)
      trusted |= strcmp(*p, out) == 0;
    if (!trusted || header(req, "x-forwarded-for", xff, sizeof(xff)) == 0)
      return;
    /* walk from the right: the first hop our proxies did not add */
    char* parts[32];
    int n = 0;
    for (char* tok = strtok(xff, ", "); tok && n < 32; tok = strtok(NULL, ", "))
      parts[n++] = tok;
    for (int i = n - 1; i >= 0; i--) {
      int t = 0;
      for (char** p = s->cfg.trusted_proxies; *p; p++)
        t |= strcmp(*p, parts[i]) == 0;
      snprintf(out, cap, "%s", parts[i]);
      if (!t)
        return;
    }
    return;
  }
}

static int origin_allowed(ath_gws_t* s, const char* origin) {
  for (char** p = s->cfg.cors_origins; p && *p; p++)
    if (strcmp(*p, "*") == 0 || strcmp(*p, origin) == 0)
      return 1;
  return 0;
}

/* The request id (§1): the caller's when well-formed, else a new one. */
static void request_id(h2o_req_t* req, char* out, size_t cap) {
  char v[128];
  size_t n = header(req, "x-request-id", v, sizeof(v));
  int ok = n >= 1 && n <= 64;
  for (size_t i = 0; ok && i < n; i++) {
    char c = v[i];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  }
  if (ok) {
    memcpy(out, v, n + 1 <= cap ? n + 1 : cap); /* n <= 64 < cap */
  } else {
    char id[37];
    ath__uuid4(id);
    snprintf(out, cap, "%s", id);
  }
}

static int preflight(ath_gws_t* s, h2o_req_t* req, ath_gwjob_t* base) {
  req->res.status = 204;
  req->res.reason = "No Content";
  add(req, "x-request-id", base->request_id, strlen(base->request_id));
  add(req, "x-athena-request-id", base->request_id, strlen(base->request_id));
  if (base->cors) {
    add(req, "access-control-allow-origin", base->origin, strlen(base->origin));
    add(req, "vary", "Origin", 6);
    static const char methods[] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
    add(req, "access-control-allow-methods", methods, sizeof(methods) - 1);
    char asked[1024];
    size_t n = header(req, "access-control-request-headers", asked, sizeof(asked));
    if (n > 0) /* naming a header grants nothing (§6.6) */
      add(req, "access-control-allow-headers", asked, n);
    add(req, "access-control-max-age", "600", 3);
  }
  (void)s;
  h2o_send_inline(req, "", 0);
  return 1;
}

/* The presented key (§2): 1 found (index in *out), 0 none, -1 unknown.
 * Compares the hash with every configured one in constant time, never
 * stopping early. */
/* SHA-256, fetched from OpenSSL's providers once: EVP_sha256() makes
 * EVP_Digest fetch it again on every call (a third of a key's check). */
static EVP_MD* sha256_md;
static void fetch_sha256(void) {
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}
static const EVP_MD* sha256(void) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, fetch_sha256);
  return sha256_md != NULL ? sha256_md : EVP_sha256();
}

int ath__gws_authenticate(const ath_gws_key_t* keys, int nkeys, h2o_req_t* req, int* out) {
  static const char* const names[] = {"x-athena-key", "apikey", "x-api-key", "authorization"};
  char v[1024], key[512];
  for (int i = 0; i < 4; i++) {
    if (header(req, names[i], v, sizeof(v)) == 0)
      continue;
    char* val = v;
    if (i == 3) { /* Bearer only; each merged part carries the scheme */
      char cleaned[1024];
      size_t n = 0;
      for (char* tok = strtok(v, ","); tok; tok = strtok(NULL, ",")) {
        while (*tok == ' ')
          tok++;
        if (strncasecmp(tok, "bearer ", 7) != 0)
          continue;
        tok += 7;
        while (*tok == ' ')
          tok++;
        n += (size_t)snprintf(cleaned + n, sizeof(cleaned) - n, "%s%s", n ? "," : "", tok);
        if (n >= sizeof(cleaned))
          return -1;
      }
      if (n == 0)
        continue; /* not a Bearer token: not a key */
      memcpy(v, cleaned, n + 1);
    }
    int one = single_part(val, key, sizeof(key), NULL);
    if (one == 0)
      continue;
    if (one < 0)
      return -1;
    unsigned char hash[32];
    unsigned int hlen = 0;
    if (EVP_Digest(key, strlen(key), hash, &hlen, sha256(), NULL) != 1)
      return -1;
    int found = -1;
    for (int k = 0; k < nkeys; k++) {
      int same = CRYPTO_memcmp(hash, keys[k].hash, 32) == 0;
      found = same && found < 0 ? k : found;
    }
    OPENSSL_cleanse(key, sizeof(key));
    if (found < 0)
      return -1;
    *out = found;
    return 1;
  }
  return 0;
}

/* The database X-Athena-Client selects (§2): its index, or -1 with the
 * error answered. */
static int client_db(ath_gws_t* s, h2o_req_t* req, ath_gwjob_t* base, const ath_gws_key_t* key) {
  char v[512], name[256];
  header(req, "x-athena-client", v, sizeof(v));
  static const char* const aliases[] = {"railway_direct", "DEFAULT_CLIENT", NULL};
  /* an alias counts only while no configured database bears that name */
  const char* drop[3] = {NULL, NULL, NULL};
  int nd = 0;
  for (int a = 0; aliases[a]; a++) {
    int named = 0;
    for (int i = 1; i < s->cfg.ndbs; i++)
      named |= strcmp(s->cfg.db_names[i], aliases[a]) == 0;
    if (!named)
      drop[nd++] = aliases[a];
  }
  int one = single_part(v, name, sizeof(name), drop);
  if (one == 0 && key != NULL && key->databases != NULL) {
    /* a key kept from the default database names its one other, or must ask */
    int n = 0, def = 0;
    for (char** p = key->databases; *p; p++, n++)
      def |= strcmp(*p, "default") == 0;
    if (def)
      return 0;
    if (n != 1) {
      answer_error(req, base, 400, "client_required",
                   "this key may use several databases: name one with X-Athena-Client", NULL, NULL);
      return -1;
    }
    snprintf(name, sizeof(name), "%s", key->databases[0]);
    one = 1;
  }
  if (one == 0)
    return 0;
  int db = -1;
  for (int i = 1; one > 0 && i < s->cfg.ndbs; i++)
    if (strcmp(s->cfg.db_names[i], name) == 0)
      db = i;
  if (db < 0) {
    answer_error(req, base, 400, "unknown_client", "X-Athena-Client names no configured database", NULL, NULL);
    return -1;
  }
  if (key != NULL && key->databases != NULL) {
    int ok = 0;
    for (char** p = key->databases; *p; p++)
      ok |= strcmp(*p, name) == 0;
    if (!ok) {
      answer_error(req, base, 403, "forbidden", "this key may not use this database", NULL, NULL);
      return -1;
    }
  }
  return db;
}

/* GET /gateway/fetch without a body: the same fields as query parameters
 * (conditions, sort_by, where as URL-encoded JSON). Returns a JSON body. */
static char* query_body(h2o_req_t* req, size_t* len) {
  ath_buf_t b = {0};
  ath__buf_lit(&b, "{");
  if (req->query_at != SIZE_MAX) {
    const char* q = req->path.base + req->query_at + 1;
    const char* end = req->path.base + req->path.len;
    int first = 1;
    while (q < end) {
      const char* amp = memchr(q, '&', (size_t)(end - q));
      const char* e = amp ? amp : end;
      const char* eq = memchr(q, '=', (size_t)(e - q));
      if (eq != NULL && eq > q) {
        h2o_iovec_t k = h2o_strdup(&req->pool, q, (size_t)(eq - q));
        h2o_iovec_t v = h2o_strdup(&req->pool, eq + 1, (size_t)(e - eq - 1));
        k.len = ath__http_decode(k.base, k.len, 1);
        v.len = ath__http_decode(v.base, v.len, 1);
        {
          ath_buf_t kb = {0};
          ath__json_put_text(&kb, k.base, k.len);
          if (!first)
            ath__buf_lit(&b, ",");
          first = 0;
          if (kb.data)
            ath__buf_append(&b, kb.data, kb.len);
          ath__buf_free(&kb);
          ath__buf_lit(&b, ":");
          int json = h2o_memis(k.base, k.len, H2O_STRLIT("conditions")) ||
                     h2o_memis(k.base, k.len, H2O_STRLIT("sort_by")) ||
                     h2o_memis(k.base, k.len, H2O_STRLIT("sortBy")) || h2o_memis(k.base, k.len, H2O_STRLIT("where"));
          if (json || h2o_memis(v.base, v.len, H2O_STRLIT("true")) || h2o_memis(v.base, v.len, H2O_STRLIT("false")))
            ath__buf_append(&b, v.len ? v.base : "null", v.len ? v.len : 4);
          else
            ath__json_put_text(&b, v.base, v.len);
        }
      }
      q = e + 1;
    }
  }
  ath__buf_lit(&b, "}");
  *len = b.len;
  return b.data;
}

static char* dupz(const char* s, size_t n) {
  return n ? ath__memdup(s, n) : NULL;
}

int ath__gws_handle(ath_gws_t* s, ath_gwt_t* t, h2o_req_t* req) {
  const char* p = req->path_normalized.base;
  size_t n = req->path_normalized.len;
  size_t plen = strlen(s->cfg.prefix);
  if (plen > 0) {
    if (n < plen || memcmp(p, s->cfg.prefix, plen) != 0 || (n > plen && p[plen] != '/'))
      return 0; /* outside the mount: the operations surface */
    p += plen;
    n -= plen;
    if (n == 0) {
      p = "/";
      n = 1;
    }
  } else if (is_path(p, n, "/healthz") || is_path(p, n, "/metrics") || is_path(p, n, "/dashboard") ||
             is_path(p, n, "/api") || (n > 5 && memcmp(p, "/api/", 5) == 0)) {
    return 0;
  }
  if (n > 1 && p[n - 1] == '/')
    n--; /* one trailing slash is ignored */
  ath_gwjob_t base;
  memset(&base, 0, sizeof(base));
  request_id(req, base.request_id, sizeof(base.request_id));
  base.strip_header = -1;
  size_t olen = header(req, "origin", base.origin, sizeof(base.origin));
  base.cors = olen > 0 && origin_allowed(s, base.origin);
  int get = method_is(req, "GET"), headm = method_is(req, "HEAD");
  if (method_is(req, "OPTIONS"))
    return preflight(s, req, &base);
  if (is_path(p, n, "/ping")) {
    if (!get && !headm)
      return answer_error(req, &base, 405, "method_not_allowed", "use GET or HEAD", "allow", "GET, HEAD");
    req->res.status = 200;
    req->res.reason = "OK";
    common_headers(req, &base);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain; charset=utf-8"));
    h2o_send_inline(req, H2O_STRLIT("pong"));
    return 1;
  }
  int health = is_path(p, n, "/health");
  if (health || is_path(p, n, "/")) {
    if (!get && !headm)
      return answer_error(req, &base, 405, "method_not_allowed", "use GET or HEAD", "allow", "GET, HEAD");
    base.kind = ATH_GWJ_HEALTH;
    if (!health) { /* GET / : the document, no database round trip */
      static const char doc[] =
        "{\"status\":\"success\",\"message\":\"athena is online\",\"ok\":true,\"version\":\"" ATHENA_VERSION
        "\",\"protocol\":{\"major\":1,\"minor\":0},\"capabilities\":{\"fetch\":true,\"insert\":true,"
        "\"update\":true,\"delete\":true,\"rawSql\":false,\"rpc\":false}}";
      ath__buf_append(&base.out, doc, sizeof(doc) - 1);
      base.status = 200;
      send_job(req, &base);
      ath__buf_free(&base.out);
      return 1;
    }
  } else if (is_path(p, n, "/gateway/query") || is_path(p, n, "/gateway/sql")) {
    return answer_error(req, &base, 403, "raw_sql_forbidden", "raw SQL is not available on this gateway", NULL, NULL);
  } else if (is_path(p, n, "/gateway/rpc") || (n >= 5 && memcmp(p, "/rpc/", 5) == 0) || is_path(p, n, "/rpc")) {
    return answer_error(req, &base, 403, "rpc_not_exposed", "no procedures are exposed on this gateway", NULL, NULL);
  } else {
    static const struct {
      const char* path;
      ath_gw_op_t op;
      const char* m1;
      const char* m2;
      const char* allow;
    } routes[] = {
      {"/gateway/fetch", ATH_GW_FETCH, "POST", "GET", "GET, POST, OPTIONS"},
      {"/gateway/insert", ATH_GW_INSERT, "PUT", "POST", "POST, PUT, OPTIONS"},
      {"/gateway/update", ATH_GW_UPDATE, "POST", "PATCH", "PATCH, POST, OPTIONS"},
      {"/gateway/delete", ATH_GW_DELETE, "DELETE", "POST", "DELETE, POST, OPTIONS"},
    };
    int r = -1;
    for (int i = 0; i < 4; i++)
      if (is_path(p, n, routes[i].path))
        r = i;
    if (r < 0)
      return answer_error(req, &base, 404, "not_found", "no such route", NULL, NULL);
    if (!method_is(req, routes[r].m1) && !method_is(req, routes[r].m2))
      return answer_error(req, &base, 405, "method_not_allowed", "this route does not take that method", "allow",
                          routes[r].allow);
    base.op = routes[r].op;
  }

  /* who is asking (§2, §6.3, §6.9): the key is checked first (it has no
   * side effect) so that the limits take one lock */
  ath__gws_client_ip(s, req, base.ip, sizeof(base.ip));
  char bname[96];
  client_bucket("i:", base.ip, bname, sizeof(bname));
  int k = -1, found = 0, failed = 0;
  if (base.kind == ATH_GWJ_OP) {
    found = ath__gws_authenticate(s->cfg.keys, s->cfg.nkeys, req, &k);
    failed = found <= 0 && !(found == 0 && s->cfg.anonymous);
  }
  const ath_gws_key_t* key = found > 0 ? &s->cfg.keys[k] : NULL;
  int wait = limit(s, bname, base.ip, key, failed);
  if (wait) /* failed keys lock the address out; valid keys from it still work */
    return limited(req, &base, wait);
  if (base.kind == ATH_GWJ_OP) {
    if (failed) {
      drop_body(req);
      return answer_error(req, &base, 401, found == 0 ? "auth_required" : "invalid_key",
                          found == 0 ? "an API key is required" : "the API key is not valid", NULL, NULL);
    }
    base.key = key;
    base.rights = base.key ? base.key->rights : s->cfg.anon_rights;
    if (!(base.rights & ATH_GW_OP_BIT(base.op)))
      return answer_error(req, &base, 403, "forbidden", "this key may not use this operation", NULL, NULL);
    char why[512];
    if (!ath__http_authorize(s->w, req, "gateway", base.key ? base.key->name : NULL, base.ip,
                             ath__gw_op_name(base.op), why, sizeof(why)))
      return answer_error(req, &base, 403, "forbidden", why, NULL, NULL);
    if ((base.db = client_db(s, req, &base, base.key)) < 0)
      return 1;
    if (base.op != ATH_GW_FETCH && olen > 0 && !base.cors)
      return answer_error(req, &base, 403, "origin_rejected", "mutations are not accepted from this origin", NULL,
                          NULL);
    if (req->entity.len > s->cfg.body_limit)
      return answer_error(req, &base, 413, "payload_too_large", "the request body is larger than the limit", NULL,
                          NULL);
  }

  /* the rest is answered here, on this thread, from h2o's own bytes */
  ath_gwjob_t* j = &base;
  char v[512];
  size_t vn = header(req, "x-strip-nulls", v, sizeof(v));
  if (vn > 0) {
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes"))
      j->strip_header = 1;
    else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no"))
      j->strip_header = 0;
  }
  if (j->kind == ATH_GWJ_OP) {
    if (req->entity.base != NULL && req->entity.len > 0) {
      j->body = req->entity.base;
      j->body_len = req->entity.len;
    } else if (get) {
      j->body = j->owned_body = query_body(req, &j->body_len);
      if (j->body == NULL)
        return answer_error(req, &base, 500, "internal_error", "out of memory", NULL, NULL);
    } else {
      j->body = "";
    }
    if ((vn = header(req, "x-publish-event", v, sizeof(v))) > 0 && base.op != ATH_GW_FETCH)
      j->event = dupz(v, vn);
    static const char* const hints[3] = {"x-user-id", "x-organization-id", "x-company-id"};
    for (int i = 0; i < 3; i++)
      if ((vn = header(req, hints[i], v, sizeof(v))) > 0)
        j->hint[i] = dupz(v, vn);
  }
  j->out = take_spare(t);
  if (ath__gwt_run(t, j, req) != 0)
    return 1; /* held: answered when done (j's parts were taken over) */
  send_job(req, j); /* h2o copied the answer: its buffer serves the next one */
  keep_spare(t, &j->out);
  free(j->owned_body);
  free(j->event);
  for (int i = 0; i < 3; i++)
    free(j->hint[i]);
  return 1;
}
