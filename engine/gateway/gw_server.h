/* The gateway server (GATEWAY.md): each gateway thread runs its own libuv
 * loop with an h2o context (engine/http/http.c hands it accepted connections),
 * and answers every request of its connections where it reads them:
 * routes, keys, CORS and limits, then the compile, the policies (its own
 * Lua state) and the SQL on its own connections. A request never crosses
 * threads. Not installed. */
#ifndef ATHENA_GW_SERVER_H
#define ATHENA_GW_SERVER_H

#include <stdint.h>
#include "gw_plan.h"
#include "runtime.h"

typedef struct ath_http_s ath_http_t;

/* Rights (GATEWAY §6.3), one bit per operation; the operations surface's
 * (docs/operations.md) beside them. */
#define ATH_GWR_ALL 0xfu
#define ATH_GWR_OPS_READ 0x10u
#define ATH_GWR_OPS_WRITE 0x20u

/* An API key. */
typedef struct ath_gws_key_s {
  char* name;                /* for logs and policies; never the key */
  unsigned char hash[32];    /* SHA-256 of the key */
  unsigned rights;           /* ATH_GW_OP_BIT(op) bits */
  char** tables;             /* NULL: every exposed table */
  char** databases;          /* NULL: every database */
  int server;                /* a backend's key: caller hints are trusted */
} ath_gws_key_t;

/* An exposed table entry of the configuration. */
typedef struct {
  char* name;                /* "users" or "schema.users" */
  unsigned ops;              /* allowed operations */
  char** hidden;             /* columns treated as nonexistent */
  int policy;                /* has a policy function */
} ath_gws_table_t;

/* The configuration, immutable once the server runs. */
typedef struct {
  char** db_names;           /* [0] is the default ("" name) */
  char** db_urls;
  int ndbs;
  ath_gws_key_t* keys;
  int nkeys;
  int anonymous;             /* anonymous access with anon_rights */
  unsigned anon_rights;
  ath_gws_table_t* tables;
  int ntables;
  int global_policy;
  char* config_path;         /* the file policies are loaded from, or NULL */
  ath_gw_limits_t limits;
  size_t body_limit;         /* bytes (1 MiB) */
  int64_t statement_timeout_ms; /* 5000 */
  char** cors_origins;       /* exact origins; "*" allows any */
  char** events;             /* X-Publish-Event allowlist, NULL: any */
  char** trusted_proxies;    /* peers whose X-Forwarded-For counts */
  char* prefix;              /* mount prefix, "" for none */
  double key_rate, key_burst, ip_rate, ip_burst; /* token buckets (§6.9) */
  double auth_fail_per_min;
  int threads;               /* gateway threads (2) */
} ath_gws_config_t;

typedef struct ath_gws_s ath_gws_t;

/* Token buckets by name (gw_server.c), least recently used first out.
 * Not locked: one thread at a time (the server's buckets are behind its
 * lim_mu). Zeroed is empty. */
typedef struct {
  struct ath_gw_bucket_s* buckets;
  uint32_t* bucket_heads;    /* hash chains, bucket_cap of them */
  size_t nbuckets, bucket_cap;
  uint32_t lru_old, lru_new; /* the least and the most recently used bucket */
  size_t max;                /* most buckets, a power of two (0: 65536) */
} ath_gw_limiter_t;
void ath__gw_limiter_free(ath_gw_limiter_t* l);
/* Counts a missing or invalid key from client address `ip` (IPv6 by /64)
 * against `per_min` a minute. Returns 0, or the seconds to wait when the
 * address is locked out (answer 429). */
int ath__gw_auth_failure(ath_gw_limiter_t* l, const char* ip, double per_min);

/* Frees what a config owns (not the struct itself). */
void ath__gws_config_free(ath_gws_config_t* c);

/* Builds a server from `cfg` (taken over, even on failure): connects to
 * every database and introspects it (blocking the caller), starts the
 * gateway threads, each loading `config_path` for its policies and opening
 * its connections, and returns once they all have. Returns 0,
 * or ATH_EINVAL / ATH_ENOMEM / a database error with `err` set. */
int ath__gws_new(ath_world_t* w, ath_gws_config_t* cfg, ath_gws_t** out, char* err, size_t errlen);

/* Re-reads every database's catalog (SIGHUP). Returns 0 or an error. */
int ath__gws_refresh(ath_gws_t* s, char* err, size_t errlen);

/* Engine thread: has every gateway thread open its HTTP loop on
 * listener `h` (ath__http_loop_open) and returns once they all have: 0, or
 * an error with err set. The loops are then ath__gws_loop(s, i) for i in
 * [0, ath__gws_nthreads(s)). */
struct ath_http_loop_s;
int ath__gws_serve(ath_gws_t* s, ath_http_t* h, char* err, size_t errlen);
int ath__gws_nthreads(const ath_gws_t* s);
struct ath_http_loop_s* ath__gws_loop(ath_gws_t* s, int i);

/* Engine thread: stops the threads (each closes its HTTP loop, its
 * connections then close) and frees the server. */
void ath__gws_free(ath_gws_t* s);

/* Gateway thread t: answers `req` if its path is a gateway route (returns
 * 1), else returns 0 (the operations surface takes it). */
struct st_h2o_req_t;
typedef struct ath_gwt_s ath_gwt_t;
int ath__gws_handle(ath_gws_t* s, ath_gwt_t* t, struct st_h2o_req_t* req);

/* http.c, on gateway thread t: serves connections handed to the returned
 * loop (ath__http_loop_give) with h's routes on `loop`. NULL when out of
 * memory. ath__http_loop_close, on the same thread, closes it; its
 * connections close (idle ones at once, busy ones after a grace second)
 * and it frees itself, so that the thread's uv_run returns. */
struct ath_http_loop_s* ath__http_loop_open(ath_http_t* h, uv_loop_t* loop, ath_gwt_t* t, int index);
void ath__http_loop_close(struct ath_http_loop_s* l);

/* Engine thread: the presented key (GATEWAY §2) among keys[0..n): 1
 * found (its index in *out), 0 none presented, -1 unknown. Compares with
 * every key in constant time. */
int ath__gws_authenticate(const ath_gws_key_t* keys, int n, struct st_h2o_req_t* req, int* out);

/* The client address of req (§6.9): the peer, or with s's trusted
 * proxies the nearest untrusted X-Forwarded-For entry. s may be NULL. */
void ath__gws_client_ip(const ath_gws_t* s, struct st_h2o_req_t* req, char* out, size_t cap);
/* Whether requests without a key are served (anonymous rights). */
int ath__gws_anonymous(const ath_gws_t* s);
/* Counts a failed key from `ip` on the server's buckets (any thread);
 * returns 0 or the seconds to wait (answer 429). */
int ath__gws_auth_failure(ath_gws_t* s, const char* ip);

/* Appends to *keys (n entries, grown) a copy of each of the server's keys
 * (name, hash, rights) for the operations surface, which answers 403 to
 * those without operations rights. Returns 0 or ATH_ENOMEM. */
int ath__gws_copy_keys(const ath_gws_t* s, ath_gws_key_t** keys, int* n);
void ath__gws_keys_free(ath_gws_key_t* keys, int n);

/* The largest request body the HTTP layer must accept for the gateway to
 * answer 413 itself. */
size_t ath__gws_body_cap(const ath_gws_t* s);

/* ------------------------------------------------- shared by gw_*.c files */

#include "db.h"

/* One database's introspected catalog (gw_catalog.c). Immutable; replaced
 * whole by a refresh (the old one lives until the server is freed). */
typedef struct ath_gws_cat_s ath_gws_cat_t;
struct ath_gws_cat_s {
  ath_gw_arena_t arena;      /* every string and array below */
  ath_gw_catalog_t cat;
  ath_gw_dialect_t dialect;
  ath_gws_cat_t* older;      /* the catalog this one replaced */
};

/* Introspects `db` into a catalog, applying the configuration's exposure,
 * operations and hidden columns. Returns 0 or a database error / ENOMEM
 * with err set. */
int ath__gws_introspect(ath_db_t* db, const ath_gws_config_t* cfg, ath_gws_cat_t** out,
                        ath_db_error_t* err);
void ath__gws_cat_free(ath_gws_cat_t* c);

/* Whether configured table name `want` names catalog table t: exact on
 * PostgreSQL ("name" means public.name), case-insensitive on SQLite, where
 * "main." is dropped. */
int ath__gws_names(const ath_gw_table_t* t, const char* want, ath_gw_dialect_t dialect);

/* Refuses (ATH_EINVAL, err naming the table) a configuration that lists a
 * table twice, by the names' meaning on each configured database's dialect
 * ("posts", "POSTS" and "main.posts" on SQLite; "t" and "public.t" on
 * PostgreSQL): the second entry would silently replace the first one's
 * policy, operations and hidden columns. Returns 0 otherwise. */
int ath__gws_check_tables(const ath_gws_config_t* cfg, char* err, size_t errlen);

/* A request on its gateway thread, and its answer. */
typedef struct ath_gwjob_s ath_gwjob_t;
struct ath_gwjob_s {
  /* the request (ath__gws_handle fills it, ath__gwt_run reads it) */
  int kind;                  /* ATH_GWJ_OP or ATH_GWJ_HEALTH */
  ath_gw_op_t op;
  const char* body;          /* the request's bytes (h2o's or owned_body) */
  size_t body_len;
  char* owned_body;          /* GET: the query parameters as a body */
  int strip_header;          /* X-Strip-Nulls: -1 absent, 0, 1 */
  const ath_gws_key_t* key;  /* NULL: anonymous */
  unsigned rights;
  int db;                    /* index into the configured databases */
  char request_id[72];
  char ip[64];
  char* event;               /* X-Publish-Event, owned, or NULL */
  char* hint[3];             /* X-User-Id, X-Organization-Id, X-Company-Id */
  /* the answer (the gateway thread fills it) */
  int status;
  ath_buf_t out;             /* the JSON body, from out.data + out_off */
  size_t out_off;
  int64_t limit_header;      /* > 0: x-athena-limit */
  char event_id[200];        /* x-athena-event-id, or "" */
  int cors;                  /* echo the allowed origin */
  char origin[256];
  /* held jobs (off the loop) */
  struct st_h2o_req_t* req;  /* NULL once the client went away */
  void* ref;                 /* the request's link to this job */
};
enum { ATH_GWJ_OP = 0, ATH_GWJ_HEALTH };

/* Runs one job on gateway thread t (gw_exec.c): returns 0 with the
 * answer in job, or 1 when its statements went off the loop (PostgreSQL,
 * SQLite mutations) or wait for the end of the loop's pass (SQLite
 * fetches), req not NULL: job was then taken over (ath__gws_hold) and is
 * answered later on t's loop (ath__gws_finish). */
int ath__gwt_run(ath_gwt_t* t, ath_gwjob_t* job, struct st_h2o_req_t* req);
/* On t's thread, once its loop is set up: fetches are batched from then
 * on (without it, each runs at once). ath__gwt_batch_close answers what
 * waits and closes the handles (the loop then ends once the rest has). */
void ath__gwt_batch_init(ath_gwt_t* t);
void ath__gwt_batch_close(ath_gwt_t* t);
/* gw_server.c: a heap copy of job that takes over what it owns (job keeps
 * nothing to free), answered on req when it is done unless the client
 * went away first. NULL when out of memory (job unchanged). */
ath_gwjob_t* ath__gws_hold(ath_gwjob_t* job, struct st_h2o_req_t* req);
/* gw_server.c, on the job's gateway thread t: answers a held job (if its
 * client is still there) and frees it, keeping its buffer for t's next. */
void ath__gws_finish(ath_gwt_t* t, ath_gwjob_t* job);
/* Creates and frees a thread's private state (its Lua state loads the
 * policies). Called on that thread. */
int ath__gwt_init(ath_gwt_t* t, char* err, size_t errlen);
void ath__gwt_close(ath_gwt_t* t);
/* On t's thread, as it stops: its idle connections' sockets are no longer
 * watched from its loop (ath__db_keep_watch), so that the loop ends. */
void ath__gwt_unwatch(ath_gwt_t* t);

/* [-0, +1, m] Pushes request-body value `v` as a policy's `req.payload`
 * sees it: objects and arrays as tables (the last duplicate key wins, as in
 * the compiler), null as athena.null, numbers as the payload codec reads
 * them. The payload is built from the tree the compiler reads, never from a
 * second parse of the body. Raises on memory errors (callers run it
 * protected, and refuse the request when it fails). */
void ath__gwt_push_json(lua_State* L, const ath_gj_t* v);

/* Writes an error envelope (GATEWAY §4) into job->out and sets status. */
void ath__gwjob_error(ath_gwjob_t* job, int status, const char* code, const char* error,
                      const char* hint);

/* ------------------------------------------ plan cache (gw_cache.c) */

/* One gateway thread's plans by request shape (gw_cache.c has the why).
 * Not locked: its thread only. */
typedef struct ath_gwpc_s ath_gwpc_t;
typedef struct ath_gwpe_s ath_gwpe_t;
/* What a plan depends on besides the body. */
typedef struct {
  const void* cat;           /* the catalog compiled against */
  ath_gw_dialect_t dialect;
  ath_gw_op_t op;
  int db, strip_header, full_rows;
  const char* conds;         /* the policies' extras, as compiled */
  size_t conds_len;
  const char* set;
  size_t set_len;
} ath_gwpc_key_t;
typedef struct {
  uint64_t hits, misses, cleared;
  size_t entries;
} ath_gwpc_stats_t;

/* A cache of at most `cap` plans; NULL when out of memory. */
ath_gwpc_t* ath__gwpc_new(size_t cap);
void ath__gwpc_free(ath_gwpc_t* pc);
/* Forgets every plan (a catalog was read again); plans in use are freed
 * when released. */
void ath__gwpc_clear(ath_gwpc_t* pc);
/* Reads the shape of a request: call before get and put, which are about
 * that request (whose body must outlive its plan's use). */
void ath__gwpc_shape(ath_gwpc_t* pc, const ath_gwpc_key_t* k, const ath_gj_t* body);
/* A plan of the shaped request's shape with its values bound: *out (read
 * only; refers to the entry and to the request's body) and *bound (free()
 * it after use), and the entry, to release after use. NULL: not cached
 * (compile, then put). */
ath_gwpe_t* ath__gwpc_get(ath_gwpc_t* pc, ath_gw_plan_t* out, void** bound);
/* Keeps `plan`, the shaped request's successful compile: on success it
 * becomes the entry's, *plan is replaced by its bound copy (as from get)
 * and the entry is returned; NULL (too large to cache, out of memory)
 * leaves *plan the caller's. */
ath_gwpe_t* ath__gwpc_put(ath_gwpc_t* pc, ath_gw_plan_t* plan, void** bound);
void ath__gwpc_release(ath_gwpc_t* pc, ath_gwpe_t* e);
ath_gwpc_stats_t ath__gwpc_stats(const ath_gwpc_t* pc);

/* A connection of a gateway thread (gw_exec.c), with its statement's
 * deadline. */
typedef struct ath_gwconn_s ath_gwconn_t;
struct ath_gwconn_s {
  ath_db_t* db;              /* opened on first use */
  int prepared;              /* set up (pragmas, statement_timeout) */
  uint64_t deadline;         /* the running statement's, monotonic ns */
  ath_gwconn_t* next;        /* idle list */
};
typedef struct ath_gwtask_s ath_gwtask_t;

struct ath_gwt_s {
  ath_gws_t* s;
  uv_thread_t tid;
  int index;
  uv_loop_t loop;            /* the thread's loop: its HTTP connections */
  uv_async_t wake;           /* cmd is set */
  int cmd;                   /* GWT_OPEN, GWT_STOP (under s->mu) */
  int looping;               /* its loop runs: it takes commands (under s->mu) */
  int opened;                /* 1 open, -1 failed (under s->mu) */
  ath_http_t* http;          /* the listener GWT_OPEN serves */
  struct ath_http_loop_s* hl; /* this thread's HTTP loop, or NULL */
  /* answer buffers kept between requests (a fetch's grows to a few KiB:
   * the next answer is written without growing one again) */
  ath_buf_t spare[64];
  int nspare;
  lua_State* L;              /* policies */
  int policy_ref;            /* the global policy, or LUA_NOREF */
  int tables_ref;            /* table name -> policy function */
  int load_failed;           /* the config file did not load: policies fail closed */
  ath_gwconn_t* conns;       /* per database: the thread's own connection */
  ath_gwconn_t** idle;       /* per database: idle off-loop connections */
  int* nmade;                /* per database: off-loop connections made */
  int* nreads;               /* per database: connections running PostgreSQL reads */
  uint64_t* read_at;         /* per database: when the last of those started (uv_now) */
  ath_gwtask_t* waiting;     /* off-loop requests waiting for a connection */
  /* SQLite fetches read in this pass of the loop, answered at its end
   * (the check phase) together, in one read transaction (gw_exec.c,
   * "Fetches of one pass") */
  ath_gwtask_t* batch;
  ath_gwtask_t** batch_tail;
  uv_check_t batch_check;
  uv_idle_t batch_idle;      /* active while one waits: the poll does not block */
  int batching;              /* the two handles are set up */
  uint64_t deadline;         /* the running policy's, monotonic ns */
  size_t heap;               /* bytes in L's heap (policy_alloc) */
  ath_gwpc_t* plans;         /* plans by request shape, or NULL */
  unsigned plans_gen;        /* s->cat_gen they were compiled at */
};

struct ath_gws_s {
  ath_world_t* w;
  ath_gws_config_t cfg;
  uv_mutex_t mu;             /* guards the threads' commands and states */
  uv_cond_t cond;
  int ready;                 /* threads that finished ath__gwt_init */
  ath_gws_cat_t** cats;      /* current catalog per database (atomic pointers) */
  unsigned cat_gen;          /* counts refreshes (atomic): plan caches empty */
  uv_mutex_t* writers;       /* per database: SQLite writers take turns */
  /* per database: the SQLite connection every thread's mutations run on,
   * under writers[i]. One for the process: a connection drops its whole
   * page cache when it finds that another one committed, and writers of
   * their own would do so at each other's commits */
  ath_gwconn_t* wconns;
  ath_gwt_t* threads;
  int nthreads;
  uv_mutex_t lim_mu;         /* guards lim */
  ath_gw_limiter_t lim;      /* rate limiting (§6.9), shared by the threads */
};

#endif
