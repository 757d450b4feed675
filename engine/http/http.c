/* The operations HTTP surface (SEMANTICS §14.3) on libh2o: /healthz,
 * /metrics (Prometheus text format 0.0.4), the JSON API under /api/ and the
 * dashboard page at /, and the gateway's routes (gw_server.c).
 *
 * Without a gateway the engine thread's libuv loop serves every
 * connection. With one, the engine loop only accepts: each connection is
 * handed, in turn, to a gateway thread's loop (ath__http_loop_open), which
 * answers all of its requests, the operations surface's too. Handlers read
 * the world through the public C API, which takes the world lock for each
 * read. Operations answers close their connection (the dashboard polls
 * once a second), so shutdown never waits on idle keep-alive connections;
 * gateway answers keep theirs, and a stopping gateway loop closes them.
 *
 * Who may do what (docs/operations.md): every request is checked here
 * first for ambiguous framing; the operations surface then needs an
 * allowed Host, a key with operations rights when the listener has keys
 * or a gateway, and mutations refuse simple cross-site requests. */
#define H2O_USE_LIBUV 1
#include <h2o.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include "internal.h"
#include "http.h"
#include "gw_server.h"

extern const char ath__dashboard_html[];
extern const size_t ath__dashboard_html_len;

/* A connection's handle and its loop. */
typedef struct conn_s {
  uv_tcp_t tcp;
  struct ath_http_loop_s* l;
  h2o_socket_t* sock;         /* h2o's socket over tcp */
  struct conn_s *prev, *next; /* the loop's open connections */
  int shed;                   /* shut down (buffer cap, HTTP/2 stream rate) */
  int vetted;                 /* the body being read had its head checked */
  uint64_t h2_window;         /* HTTP/2: loop ms the current second began */
  uint32_t h2_streams;        /* HTTP/2: requests in it */
} conn_t;

/* One loop serving connections: the engine loop (index 0), or a gateway
 * thread's (index i > 0), which answers its requests itself. Each has its
 * own h2o context over the listener's shared configuration. */
typedef struct ath_http_loop_s {
  struct ath_http_s* h;
  int index;
  ath_gwt_t* gwt;      /* the gateway thread running it, or NULL */
  h2o_context_t ctx;
  h2o_accept_ctx_t accept;
  uv_check_t check;    /* after each poll: the buffered-bytes cap */
  uv_async_t inbox;    /* gateway loops: connections handed over */
  uv_timer_t grace;    /* closing: busy connections are shut down after it */
  uv_mutex_t mu;       /* guards fds */
  uv_os_sock_t* fds;   /* accepted sockets handed over, not yet served */
  size_t nfds, capfds;
  conn_t* conns;       /* open connections */
  int nconns;          /* open connections: the context outlives them */
  int handles;         /* open handles of our own (check, inbox, grace) */
  int closing;         /* 1 closing, 2 closed: dispose with the last one */
  size_t last_total;   /* bytes buffered at the last check */
  size_t freed;        /* bytes let go of since the last trim */
  uint64_t trimmed;    /* loop time (ms) of the last trim */
} http_loop_t;

#define MAX_LOOPS 65 /* the engine loop and up to 64 gateway threads */

struct ath_http_s {
  ath_world_t* w;
  h2o_globalconf_t config;
  http_loop_t main;    /* the engine loop's */
  uv_tcp_t listener;   /* without gateway threads */
  int threaded;        /* the gateway threads serve every connection */
  int nloops;          /* gateway loops, in loops[1..nloops] */
  http_loop_t* loops[MAX_LOOPS];
  unsigned next_loop;  /* round robin over the gateway loops */
  /* per loop: bytes its connections buffer, and the most one of them
   * does, as of its last check (the cap is over all loops) */
  size_t buffered[MAX_LOOPS], biggest[MAX_LOOPS];
  ath_serve_opts_t o;  /* flags, gateway, keys, hosts, caps */
  ath_gws_t* gws;      /* o.gws */
  int need_key;        /* the operations surface needs a key */
  char** hosts;        /* the allowed Host names (o.allowed_hosts or the default), NULL: any */
  int handles;         /* open handles of our own (the listener) */
  int closing;         /* the listener is closed (or closing) */
  ath_gw_limiter_t lim; /* failed keys per address, without a gateway */
};

void ath__serve_opts_free(ath_serve_opts_t* o) {
  if (o == NULL)
    return;
  ath__gws_free(o->gws);
  ath__gws_keys_free(o->keys, o->nkeys);
  ath__strv_free(o->allowed_hosts);
  o->gws = NULL;
  o->keys = NULL;
  o->nkeys = 0;
  o->allowed_hosts = NULL;
}

static void dispose_ctx(h2o_context_t* ctx) {
  /* h2o 2.2 links an HTTP/2 GOAWAY resend into a context timeout when
   * shutdown is requested, and dispose asserts every timeout is empty */
  if (h2o_timeout_is_linked(&ctx->http2._graceful_shutdown_timeout))
    h2o_timeout_unlink(&ctx->http2._graceful_shutdown_timeout);
  h2o_context_dispose(ctx);
}

static void dispose(ath_http_t* h) {
  dispose_ctx(&h->main.ctx);
  h2o_config_dispose(&h->config);
  ath__serve_opts_free(&h->o);
  ath__strv_free(h->hosts);
  ath__gw_limiter_free(&h->lim);
  free(h);
}

/* ---------------------------------------------------------- JSON output */

static void put(ath_buf_t* b, const char* s) {
  ath__buf_append(b, s, strlen(s));
}

static void putf(ath_buf_t* b, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(ath_buf_t* b, const char* fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n < sizeof(tmp)) {
    ath__buf_append(b, tmp, (size_t)n);
    return;
  }
  char* big = malloc((size_t)n + 1); /* longer than the stack buffer */
  if (big == NULL)
    return;
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  ath__buf_append(b, big, (size_t)n);
  free(big);
}

static void put_str(ath_buf_t* b, const char* s) {
  ath__buf_json_str(b, s);
}

/* "key": JSON (already serialized) or null */
static void put_raw(ath_buf_t* b, const char* key, const char* json, size_t len) {
  putf(b, "\"%s\":", key);
  if (json != NULL && len > 0)
    ath__buf_append(b, json, len);
  else
    put(b, "null");
}

static void put_task(ath_buf_t* b, ath_world_t* w, ath_task_t* t) {
  ath_task_info_t i;
  if (ath_task_snapshot(w, t, &i) != 0) {
    put(b, "null");
    return;
  }
  static const char* const strategies[] = {"default", "retry", "cascade", "compensate",
                                            "ignore", "quarantine"};
  put(b, "{\"id\":");
  put_str(b, ath_task_id(t));
  put(b, ",\"name\":");
  put_str(b, ath_task_name(t));
  putf(b, ",\"kind\":\"%s\",\"status\":\"%s\",\"attempt\":%d,\"maxAttempts\":%d,",
       i.workflow ? "workflow" : "activity", ath_status_name(i.status), i.attempt, i.max_attempts);
  if (i.parent_id != NULL) {
    put(b, "\"parentId\":");
    put_str(b, i.parent_id);
    put(b, ",");
  }
  putf(b, "\"failureStrategy\":\"%s\",\"priority\":%d,\"taskQueue\":",
       strategies[i.failure_strategy <= ATH_STRATEGY_QUARANTINE ? i.failure_strategy : 0], i.priority);
  put_str(b, ath_task_queue(t));
  putf(b, ",\"createdAt\":%lld,\"scheduledAt\":%lld", (long long)i.created_at, (long long)i.scheduled_at);
  if (i.started_at)
    putf(b, ",\"startedAt\":%lld", (long long)i.started_at);
  if (i.completed_at)
    putf(b, ",\"completedAt\":%lld", (long long)i.completed_at);
  if (i.worker_id)
    putf(b, ",\"workerId\":\"worker-%d\"", i.worker_id);
  if (i.last_heartbeat)
    putf(b, ",\"lastHeartbeat\":%lld", (long long)i.last_heartbeat);
  if (i.heartbeat != NULL) {
    put(b, ",");
    put_raw(b, "heartbeatDetails", i.heartbeat, i.heartbeat_len);
  }
  put(b, ",");
  put_raw(b, "input", i.input, i.input_len);
  put(b, ",");
  put_raw(b, "result", i.result, i.result_len);
  put(b, ",");
  put_raw(b, "error", i.error, i.error_len);
  if (i.history != NULL) {
    put(b, ",");
    put_raw(b, "history", i.history, i.history_len);
  }
  put(b, "}");
  ath_task_snapshot_free(&i);
}

/* ------------------------------------------------------------- responses */

static void respond(h2o_req_t* req, int status, const char* reason, const char* type,
                    const char* body, size_t len) {
  req->res.status = status;
  req->res.reason = reason;
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, type, strlen(type));
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL,
                 H2O_STRLIT("no-store"));
  h2o_send_inline(req, body, len); /* copies the body */
}

static int respond_json(h2o_req_t* req, int status, const char* reason, ath_buf_t* b) {
  respond(req, status, reason, "application/json", b->data ? b->data : "null", b->data ? b->len : 4);
  ath__buf_free(b);
  return 0;
}

static int respond_err(h2o_req_t* req, int status, const char* reason, const char* code,
                       const char* message) {
  ath_buf_t b = {0};
  putf(&b, "{\"ok\":false,\"error\":{\"code\":\"%s\",\"message\":", code);
  put_str(&b, message);
  put(&b, "}}");
  return respond_json(req, status, reason, &b);
}

static int respond_error(h2o_req_t* req, int status, const char* reason, int code,
                         const char* message) {
  return respond_err(req, status, reason, ath_err_name(code), message);
}

/* --------------------------------------------------------------- queries */

/* Decodes %XX (and, in query strings, '+' as a space) in place; returns
 * the decoded length. */
size_t ath__http_decode(char* s, size_t n, int plus) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c;
    if (s[i] == '%' && i + 2 < n && h2o_hex_decode(&c, s + i + 1, 2) == 0) {
      s[o++] = (char)c;
      i += 2;
    } else {
      s[o++] = plus && s[i] == '+' ? ' ' : s[i];
    }
  }
  s[o] = '\0';
  return o;
}

static size_t url_decode(char* s, size_t n) {
  return ath__http_decode(s, n, 0);
}

/* Copies the decoded value of query parameter `key` into out (cap bytes);
 * returns 1 if present. */
static int query_param(h2o_req_t* req, const char* key, char* out, size_t cap) {
  if (req->query_at == SIZE_MAX)
    return 0;
  const char* q = req->path.base + req->query_at + 1;
  const char* end = req->path.base + req->path.len;
  size_t klen = strlen(key);
  while (q < end) {
    const char* amp = memchr(q, '&', (size_t)(end - q));
    const char* stop = amp ? amp : end;
    const char* eq = memchr(q, '=', (size_t)(stop - q));
    if (eq && (size_t)(eq - q) == klen && memcmp(q, key, klen) == 0) {
      size_t n = (size_t)(stop - eq - 1);
      if (n >= cap)
        n = cap - 1;
      memcpy(out, eq + 1, n);
      ath__http_decode(out, n, 1);
      return 1;
    }
    q = stop + 1;
  }
  return 0;
}

static int api_tasks(h2o_req_t* req, ath_world_t* w) {
  ath_task_filter_t f;
  memset(&f, 0, sizeof(f));
  char v[256];
  if (query_param(req, "status", v, sizeof(v))) {
    for (char* tok = strtok(v, ","); tok; tok = strtok(NULL, ",")) {
      int st;
      for (st = ATH_PENDING; st <= ATH_COMPENSATED; st++)
        if (strcmp(tok, ath_status_name((ath_status_t)st)) == 0)
          break;
      if (st > ATH_COMPENSATED)
        return respond_error(req, 400, "Bad Request", ATH_EINVAL, "unknown status");
      f.status_mask |= 1u << st;
    }
  }
  char name[256];
  if (query_param(req, "name", name, sizeof(name)))
    f.name = name;
  char* end;
  if (query_param(req, "limit", v, sizeof(v))) {
    f.limit = (int)strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || f.limit < 1)
      return respond_error(req, 400, "Bad Request", ATH_EINVAL, "limit must be 1-1000, offset >= 0");
  }
  if (query_param(req, "offset", v, sizeof(v))) {
    f.offset = (int)strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || f.offset < 0)
      return respond_error(req, 400, "Bad Request", ATH_EINVAL, "limit must be 1-1000, offset >= 0");
  }
  if (query_param(req, "since", v, sizeof(v)))
    f.since = atoll(v);
  if (query_param(req, "until", v, sizeof(v)))
    f.until = atoll(v);
  if (f.limit < 0 || f.limit > 1000 || f.offset < 0)
    return respond_error(req, 400, "Bad Request", ATH_EINVAL, "limit must be 1-1000, offset >= 0");
  ath_task_t* ts[1000];
  int n = ath_world_query_tasks(w, &f, ts);
  if (n < 0)
    return n == ATH_ENOMEM ? respond_error(req, 500, "Internal Server Error", n, "out of memory")
                           : respond_error(req, 503, "Service Unavailable", n, "cannot read finished tasks from the store");
  ath_buf_t b = {0};
  put(&b, "[");
  for (int i = 0; i < n; i++) {
    if (i)
      put(&b, ",");
    put_task(&b, w, ts[i]);
    ath_task_release(ts[i]);
  }
  put(&b, "]");
  return respond_json(req, 200, "OK", &b);
}

/* /api/tasks/<id>[/requeue]: the id comes from the raw path (percent-
 * decoded here), so ids holding "/", "." or ".." segments stay intact. */
static int api_task(h2o_req_t* req, ath_world_t* w) {
  size_t plen = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
  const char* rest = req->path.base + 11; /* after "/api/tasks/" */
  size_t len = plen > 11 ? plen - 11 : 0;
  int requeue = 0;
  if (len >= 8 && memcmp(rest + len - 8, "/requeue", 8) == 0) {
    requeue = 1;
    len -= 8;
  }
  if (len == 0)
    return respond_error(req, 404, "Not Found", ATH_ENOTFOUND, "no such task");
  char* id = h2o_mem_alloc_pool(&req->pool, len + 1);
  memcpy(id, rest, len);
  len = url_decode(id, len);
  ath_task_t* t;
  int frc = ath_world_find(w, id, &t);
  if (frc == ATH_ENOTFOUND)
    return respond_error(req, 404, "Not Found", ATH_ENOTFOUND, "no such task");
  if (frc != 0)
    return respond_error(req, 503, "Service Unavailable", frc, "cannot read the task from the store");
  int is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
  int is_post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
  int is_del = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("DELETE"));
  int rc = 0;
  if (requeue && is_post) {
    rc = ath_world_requeue(w, t);
  } else if (!requeue && is_del) {
    rc = ath_world_purge(w, t);
  } else if (!requeue && is_get) {
    ath_buf_t b = {0};
    put_task(&b, w, t);
    ath_task_release(t);
    return respond_json(req, 200, "OK", &b);
  } else {
    ath_task_release(t);
    return respond_error(req, 405, "Method Not Allowed", ATH_EINVAL, "method not allowed here");
  }
  ath_task_release(t);
  if (rc != 0)
    return respond_error(req, 409, "Conflict", rc,
                         rc == ATH_EINVAL ? "the task is not quarantined" : ath_strerror(rc));
  ath_buf_t b = {0};
  put(&b, "{\"ok\":true}");
  return respond_json(req, 200, "OK", &b);
}

static void metrics_of(ath_world_t* w, ath_metrics_t* m, ath_queue_info_t* qs, int cap) {
  m->queues = qs;
  m->queues_cap = cap;
  ath_world_metrics(w, m);
}

static int api_metrics(h2o_req_t* req, ath_world_t* w) {
  ath_queue_info_t qs[64];
  ath_metrics_t m;
  metrics_of(w, &m, qs, 64);
  ath_buf_t b = {0};
  putf(&b, "{\"uptime\":%lld,\"workers\":{\"total\":%d,\"idle\":%d,\"busy\":%d},", (long long)m.uptime_ms,
       m.workers_total, m.workers_idle, m.workers_busy);
  putf(&b, "\"tasks\":{\"queued\":%lld,\"scheduled\":%lld,\"running\":%lld,\"completed\":%lld,",
       (long long)m.queued, (long long)m.scheduled, (long long)m.running, (long long)m.completed);
  putf(&b, "\"failed\":%lld,\"retried\":%lld,\"cancelled\":%lld,\"quarantined\":%lld,\"resident\":%lld},",
       (long long)m.failed, (long long)m.retried, (long long)m.cancelled, (long long)m.quarantined,
       (long long)m.resident);
  putf(&b, "\"throughput\":{\"perSecond\":%lld,\"perMinute\":%lld,\"perHour\":%lld},\"workload\":%.4f,",
       (long long)m.per_second, (long long)m.per_minute, (long long)m.per_hour, m.workload);
  put(&b, "\"queues\":{");
  for (int i = 0; i < m.nqueues && i < 64; i++) {
    if (i)
      put(&b, ",");
    put_str(&b, qs[i].name);
    putf(&b, ":{\"depth\":%lld,\"running\":%lld,\"oldestAgeMs\":%lld}", (long long)qs[i].depth,
         (long long)qs[i].running, (long long)qs[i].oldest_age_ms);
  }
  putf(&b, "},\"latency\":{\"queueWait\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f},", m.wait_p50, m.wait_p95,
       m.wait_p99);
  putf(&b, "\"run\":{\"p50\":%.3f,\"p95\":%.3f,\"p99\":%.3f}}", m.run_p50, m.run_p95, m.run_p99);
  char* cluster = NULL;
  char err[256];
  if (ath__world_cluster(w, &cluster, err, sizeof(err)) == 0) /* the PostgreSQL backend */
  {
    put(&b, ",");
    put_raw(&b, "cluster", cluster, strlen(cluster));
  }
  free(cluster);
  put(&b, "}");
  return respond_json(req, 200, "OK", &b);
}

static int api_workers(h2o_req_t* req, ath_world_t* w) {
  ath_worker_info_t info[256];
  int n = ath_world_workers(w, info, 256);
  ath_buf_t b = {0};
  put(&b, "[");
  for (int i = 0; i < n && i < 256; i++) {
    ath_worker_info_t* o = &info[i];
    if (i)
      put(&b, ",");
    putf(&b, "{\"id\":\"worker-%d\",\"status\":\"%s\",\"taskQueue\":", o->id, o->status);
    put_str(&b, o->task_queue);
    putf(&b, ",\"concurrency\":%d,\"running\":[", o->concurrency);
    ath_task_t* ts[64];
    int nt = ath_world_worker_tasks(w, o->id, ts, 64);
    for (int k = 0; k < nt; k++) {
      ath_task_info_t ti;
      put(&b, k ? ",{\"id\":" : "{\"id\":");
      put_str(&b, ath_task_id(ts[k]));
      put(&b, ",\"name\":");
      put_str(&b, ath_task_name(ts[k]));
      if (ath_task_snapshot(w, ts[k], &ti) == 0) {
        putf(&b, ",\"startedAt\":%lld", (long long)ti.started_at);
        ath_task_snapshot_free(&ti);
      }
      put(&b, "}");
      ath_task_release(ts[k]);
    }
    putf(&b, "],\"lastHeartbeat\":%lld,\"tasksCompleted\":%lld,\"tasksFailed\":%lld,\"memoryKB\":%lld}",
         (long long)o->last_heartbeat, (long long)o->tasks_completed, (long long)o->tasks_failed,
         (long long)o->memory_kb);
  }
  put(&b, "]");
  return respond_json(req, 200, "OK", &b);
}

static int api_schedules(h2o_req_t* req, ath_world_t* w) {
  ath_schedule_info_t* a;
  size_t n;
  if (ath_world_schedules(w, &a, &n) != 0)
    return respond_error(req, 500, "Internal Server Error", ATH_ENOMEM, "out of memory");
  static const char* const catch_up[] = {"none", "one", "all"};
  ath_buf_t b = {0};
  put(&b, "[");
  for (size_t i = 0; i < n; i++) {
    ath_schedule_info_t* s = &a[i];
    put(&b, i ? ",{\"id\":" : "{\"id\":");
    put_str(&b, s->id);
    put(&b, ",\"name\":");
    put_str(&b, s->name);
    put(&b, ",\"cronExpression\":");
    if (s->cron)
      put_str(&b, s->cron);
    else
      put(&b, "null");
    put(&b, ",");
    put_raw(&b, "input", s->input, strlen(s->input));
    putf(&b, ",\"timezone\":\"%s\",\"catchUp\":\"%s\",\"overlap\":\"%s\",\"paused\":%s,",
         s->local_tz ? "local" : "UTC", catch_up[s->catch_up >= 0 && s->catch_up <= 2 ? s->catch_up : 1],
         s->overlap_skip ? "skip" : "allow", s->paused ? "true" : "false");
    putf(&b, "\"totalExecutions\":%lld,\"skippedExecutions\":%lld", (long long)s->total,
         (long long)s->skipped);
    if (s->last_ms)
      putf(&b, ",\"lastExecution\":%lld", (long long)s->last_ms);
    if (s->next_ms)
      putf(&b, ",\"nextExecution\":%lld", (long long)s->next_ms);
    put(&b, "}");
  }
  put(&b, "]");
  ath_schedules_free(a, n);
  return respond_json(req, 200, "OK", &b);
}

/* The PostgreSQL backend's nodes (world:getNodes()); 404 without it. */
static int api_nodes(h2o_req_t* req, ath_world_t* w) {
  char* json = NULL;
  char err[512];
  int rc = ath__world_nodes(w, &json, err, sizeof(err));
  if (rc == ATH_EINVAL)
    return respond_error(req, 404, "Not Found", ATH_ENOTFOUND, "no such route (nodes need the PostgreSQL backend)");
  if (rc != 0)
    return respond_error(req, 503, "Service Unavailable", rc, "the database did not answer");
  ath_buf_t b = {0};
  put(&b, json);
  free(json);
  return respond_json(req, 200, "OK", &b);
}

/* Prometheus text exposition format 0.0.4 of SEMANTICS §14.1. */
static int prometheus(h2o_req_t* req, ath_world_t* w) {
  ath_queue_info_t qs[64];
  ath_metrics_t m;
  metrics_of(w, &m, qs, 64);
  ath_buf_t b = {0};
  putf(&b, "# HELP athena_uptime_seconds Seconds since the world started.\n"
           "# TYPE athena_uptime_seconds gauge\nathena_uptime_seconds %.3f\n",
       (double)m.uptime_ms / 1000);
  putf(&b, "# HELP athena_workers Workers by status.\n# TYPE athena_workers gauge\n"
           "athena_workers{status=\"idle\"} %d\nathena_workers{status=\"busy\"} %d\n"
           "athena_workers{status=\"total\"} %d\n",
       m.workers_idle, m.workers_busy, m.workers_total);
  putf(&b, "# HELP athena_tasks Tasks by state now.\n# TYPE athena_tasks gauge\n"
           "athena_tasks{state=\"queued\"} %lld\nathena_tasks{state=\"scheduled\"} %lld\n"
           "athena_tasks{state=\"running\"} %lld\n",
       (long long)m.queued, (long long)m.scheduled, (long long)m.running);
  putf(&b, "# HELP athena_tasks_total Transitions into each outcome since start.\n"
           "# TYPE athena_tasks_total counter\n"
           "athena_tasks_total{outcome=\"completed\"} %lld\nathena_tasks_total{outcome=\"failed\"} %lld\n"
           "athena_tasks_total{outcome=\"retried\"} %lld\nathena_tasks_total{outcome=\"cancelled\"} %lld\n"
           "athena_tasks_total{outcome=\"quarantined\"} %lld\n",
       (long long)m.completed, (long long)m.failed, (long long)m.retried, (long long)m.cancelled,
       (long long)m.quarantined);
  putf(&b, "# HELP athena_tasks_resident Tasks held in RAM (finished ones leave once stored).\n"
           "# TYPE athena_tasks_resident gauge\nathena_tasks_resident %lld\n", (long long)m.resident);
  putf(&b, "# HELP athena_workload Busy slots over all slots.\n# TYPE athena_workload gauge\n"
           "athena_workload %.4f\n", m.workload);
  const char* names[3] = {"athena_queue_depth", "athena_queue_running", "athena_queue_oldest_age_seconds"};
  const char* helps[3] = {"Ready tasks per queue.", "Tasks holding slots per queue.",
                          "Age of the oldest ready task per queue."};
  for (int k = 0; k < 3; k++) {
    putf(&b, "# HELP %s %s\n# TYPE %s gauge\n", names[k], helps[k], names[k]);
    for (int i = 0; i < m.nqueues && i < 64; i++) {
      putf(&b, "%s{queue=\"", names[k]);
      ath__buf_append(&b, qs[i].name, strlen(qs[i].name)); /* [A-Za-z0-9_.-]: no escaping */
      if (k == 0)
        putf(&b, "\"} %lld\n", (long long)qs[i].depth);
      else if (k == 1)
        putf(&b, "\"} %lld\n", (long long)qs[i].running);
      else
        putf(&b, "\"} %.3f\n", (double)qs[i].oldest_age_ms / 1000);
    }
  }
  putf(&b, "# HELP athena_queue_wait_seconds Enqueue-to-start latency, last 5 minutes.\n"
           "# TYPE athena_queue_wait_seconds summary\n"
           "athena_queue_wait_seconds{quantile=\"0.5\"} %.6f\nathena_queue_wait_seconds{quantile=\"0.95\"} %.6f\n"
           "athena_queue_wait_seconds{quantile=\"0.99\"} %.6f\n",
       m.wait_p50 / 1000, m.wait_p95 / 1000, m.wait_p99 / 1000);
  putf(&b, "# HELP athena_run_seconds Attempt run time, last 5 minutes.\n"
           "# TYPE athena_run_seconds summary\n"
           "athena_run_seconds{quantile=\"0.5\"} %.6f\nathena_run_seconds{quantile=\"0.95\"} %.6f\n"
           "athena_run_seconds{quantile=\"0.99\"} %.6f\n",
       m.run_p50 / 1000, m.run_p95 / 1000, m.run_p99 / 1000);
  /* the PostgreSQL backend: this node's series carry node="<nodeId>", then
   * the cluster's gauges (the same on every node) follow */
  ath__world_node_labels(w, &b);
  ath__world_cluster_prom(w, &b);
  respond(req, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
  ath__buf_free(&b);
  return 0;
}

/* picohttpparser, inside libh2o (its header is not installed): the
 * parser h2o read the request with. */
struct phr_header {
  const char* name;
  size_t name_len;
  const char* value;
  size_t value_len;
};
int phr_parse_request(const char* buf, size_t len, const char** method, size_t* method_len, const char** path,
                      size_t* path_len, int* minor_version, struct phr_header* headers, size_t* num_headers,
                      size_t last_len);

/* ----------------------------------------------------- buffered requests */

/* h2o 2.2 reads a request's whole body before the handler sees it, so
 * what unauthenticated clients make the server hold is bounded here:
 * after each poll, while the connections' input buffers together exceed
 * o.max_buffered, the connection holding the most is shut down (h2o then
 * reads EOF and closes it, freeing its buffer). */
static size_t conn_buffered(const conn_t* c) {
  h2o_buffer_t* in = c->sock != NULL ? c->sock->input : NULL;
  return in != NULL && in->bytes != NULL ? in->capacity : 0;
}

/* Shuts c down: h2o reads EOF and closes it, freeing what it holds. */
static void shed(conn_t* c) {
  uv_os_fd_t fd;
  c->shed = 1;
  if (uv_fileno((uv_handle_t*)&c->tcp, &fd) == 0)
    shutdown(fd, SHUT_RDWR);
}

/* A body of more than VET_AT bytes on its way to a gateway listener: its
 * HTTP/1 head (at the start of the socket's input while h2o reads the
 * body) is checked for a key now, since h2o 2.2 would call the handler
 * only once the whole body is in. Without a valid key (of any right) and
 * without anonymous access it would be refused: the connection is shut
 * down at once instead of buffering the rest. Returns 1 when it was. */
#define VET_AT (64 * 1024)
static int vet(ath_http_t* h, conn_t* c) {
  h2o_buffer_t* in = c->sock->input;
  if (in == NULL || in->bytes == NULL || in->size < VET_AT) {
    c->vetted = 0; /* no body in flight: the next one is checked afresh */
    return 0;
  }
  if (c->vetted || h->gws == NULL || ath__gws_anonymous(h->gws))
    return 0;
  c->vetted = 1;
  const char *m, *p;
  size_t mlen, plen, nh = 100;
  int minor;
  struct phr_header hs[100];
  if (phr_parse_request(in->bytes, in->size, &m, &mlen, &p, &plen, &minor, hs, &nh, 0) <= 0)
    return 0; /* not an HTTP/1 head (HTTP/2, or h2o's business) */
  h2o_req_t head; /* only its headers, for the key lookup */
  memset(&head, 0, sizeof(head));
  h2o_mem_init_pool(&head.pool);
  for (size_t i = 0; i < nh; i++)
    h2o_add_header_by_str(&head.pool, &head.headers, hs[i].name, hs[i].name_len, 1, NULL, hs[i].value,
                          hs[i].value_len);
  int k;
  int found = ath__gws_authenticate(h->o.keys, h->o.nkeys, &head, &k);
  h2o_mem_clear_pool(&head.pool);
  if (found > 0)
    return 0;
  shed(c);
  return 1;
}

/* The cap is over every loop's connections: each loop publishes what its
 * connections hold and sheds its own biggest while the total is over and
 * no other loop holds a bigger one (that loop sheds it at its own check). */
static void on_check(uv_check_t* check) {
  http_loop_t* l = check->data;
  ath_http_t* h = l->h;
  size_t total = 0, big_size = 0;
  conn_t* big = NULL;
  for (conn_t* c = l->conns; c; c = c->next)
    if (!c->shed && c->sock != NULL && !vet(h, c)) {
      size_t n = conn_buffered(c);
      total += n;
      if (big == NULL || n > big_size) {
        big = c;
        big_size = n;
      }
    }
#ifdef __GLIBC__
  /* large buffers freed stay in malloc's arenas: once 16 MiB have been
   * let go of, hand them back to the system, at most once a second */
  if (total < l->last_total)
    l->freed += l->last_total - total;
  l->last_total = total;
  if (l->freed >= ((size_t)16 << 20) && uv_now(check->loop) - l->trimmed >= 1000) {
    malloc_trim(0);
    l->trimmed = uv_now(check->loop);
    l->freed = 0;
  }
#endif
  for (;;) {
    __atomic_store_n(&h->buffered[l->index], total, __ATOMIC_RELAXED);
    __atomic_store_n(&h->biggest[l->index], big_size, __ATOMIC_RELAXED);
    size_t all = total, other_big = 0;
    for (int i = 0; i <= h->nloops; i++) {
      if (i == l->index)
        continue;
      all += __atomic_load_n(&h->buffered[i], __ATOMIC_RELAXED);
      size_t b = __atomic_load_n(&h->biggest[i], __ATOMIC_RELAXED);
      other_big = b > other_big ? b : other_big;
    }
    if (all <= h->o.max_buffered || big == NULL || big_size < other_big)
      break;
    total -= big_size;
    shed(big);
    big = NULL;
    big_size = 0;
    for (conn_t* c = l->conns; c; c = c->next)
      if (!c->shed && c->sock != NULL && (big == NULL || conn_buffered(c) > big_size)) {
        big = c;
        big_size = conn_buffered(c);
      }
  }
}

/* ------------------------------------------------------------- the gate */

/* Content-Length given twice with different values, or beside
 * Transfer-Encoding: a proxy in front may frame the body otherwise than
 * h2o did (request smuggling), so the request is refused. h2o 2.2 keeps
 * only the framing header it chose, so the HTTP/1 head (still at the
 * start of the socket's input while the request is handled) is parsed
 * again by the same parser for the ones it dropped. */
static int ambiguous_framing(h2o_req_t* req) {
  if (req->entity.base == NULL || req->version >= 0x200 || req->conn->callbacks->get_socket == NULL)
    return 0; /* no body, or HTTP/2 (which has no such headers) */
  h2o_socket_t* sock = req->conn->callbacks->get_socket(req->conn);
  if (sock == NULL || sock->input == NULL || sock->input->bytes == NULL)
    return 0;
  const char *m, *p;
  size_t mlen, plen, nh = 100;
  int minor;
  struct phr_header hs[100];
  if (phr_parse_request(sock->input->bytes, sock->input->size, &m, &mlen, &p, &plen, &minor, hs, &nh, 0) <= 0)
    return 1; /* h2o parsed it: anything else is not this request's head */
  int te = 0, cl = 0;
  const char* first = NULL;
  size_t first_len = 0;
  for (size_t i = 0; i < nh; i++) {
    if (h2o_lcstris(hs[i].name, hs[i].name_len, H2O_STRLIT("transfer-encoding"))) {
      te = 1;
    } else if (h2o_lcstris(hs[i].name, hs[i].name_len, H2O_STRLIT("content-length"))) {
      if (cl && (first_len != hs[i].value_len || memcmp(first, hs[i].value, first_len) != 0))
        return 1;
      cl = 1;
      first = hs[i].value;
      first_len = hs[i].value_len;
      if (memchr(first, ',', first_len) != NULL)
        return 1;
    }
  }
  return te && cl;
}

/* The Host header's name (no port, no brackets) is one of h->hosts. A
 * request without Host (HTTP/1.0, never a browser) names no site a
 * browser could have been tricked into, and passes. */
static int host_allowed(ath_http_t* h, h2o_req_t* req) {
  if (h->hosts == NULL || req->authority.len == 0 || h2o_memis(req->authority.base, req->authority.len, H2O_STRLIT("default")))
    return 1; /* no Host: h2o names the request after our only host entry */
  const char* a = req->authority.base;
  size_t n = req->authority.len;
  if (a[0] == '[') { /* [v6]:port */
    const char* close = memchr(a, ']', n);
    if (close == NULL)
      return 0;
    n = (size_t)(close - a) - 1;
    a++;
  } else {
    const char* colon = memchr(a, ':', n);
    if (colon != NULL)
      n = (size_t)(colon - a);
  }
  for (char** p = h->hosts; *p; p++)
    if (strcmp(*p, "*") == 0 || (strlen(*p) == n && strncasecmp(*p, a, n) == 0))
      return 1;
  return 0;
}

static int misdirected(h2o_req_t* req) {
  req->http1_is_persistent = 0;
  return respond_err(req, 421, "Misdirected Request", "host_not_allowed",
                     "this server does not answer for that Host (allowedHosts)");
}

int ath__http_authorize(ath_world_t* w, h2o_req_t* req, const char* surface, const char* key,
                        const char* ip, const char* operation, char* why, size_t whylen) {
  const ath_authorizer_t* a = w != NULL ? w->cfg.authorizer : NULL;
  if (a == NULL || a->size < offsetof(ath_authorizer_t, authorize) + sizeof(a->authorize) ||
      a->authorize == NULL)
    return 1;
  ath_auth_request_t r;
  memset(&r, 0, sizeof(r));
  r.surface = surface;
  r.method = h2o_strdup(&req->pool, req->method.base, req->method.len).base;
  r.path = h2o_strdup(&req->pool, req->path.base, req->path.len).base;
  r.key = key;
  r.ip = ip;
  r.operation = operation;
  why[0] = '\0';
  int rc = a->authorize(a->ud, &r, why, whylen);
  if (rc == 1)
    return 1;
  if (rc != 0) { /* fail closed */
    char msg[300];
    snprintf(msg, sizeof(msg), "authorization failed (%s): %s", ath_err_name(rc), why[0] ? why : "no reason given");
    snprintf(why, whylen, "%s", msg);
  } else if (why[0] == '\0') {
    snprintf(why, whylen, "%s", "denied by the authorizer");
  }
  return 0;
}

/* The authorizer's word on an operations request that passed the keys
 * (1), else answered 403 (0). */
static int ops_authorize(ath_http_t* h, h2o_req_t* req, const char* key, unsigned right) {
  char ip[64], why[512];
  ath__gws_client_ip(h->gws, req, ip, sizeof(ip));
  if (ath__http_authorize(h->w, req, "operations", key, ip, right == ATH_GWR_OPS_WRITE ? "write" : "read", why,
                          sizeof(why)))
    return 1;
  respond_err(req, 403, "Forbidden", "forbidden", why);
  return 0;
}

/* A key with `right` when the listener needs one, and the authorizer's
 * yes (1), else answered (0). */
static int ops_key(ath_http_t* h, h2o_req_t* req, unsigned right) {
  if (!h->need_key)
    return ops_authorize(h, req, NULL, right);
  int k = -1;
  int found = ath__gws_authenticate(h->o.keys, h->o.nkeys, req, &k);
  if (found <= 0) {
    /* failures count against the address as on the gateway (with its
     * buckets and authFailures when there is one): a locked-out address
     * gets 429, and valid keys from it still work */
    char ip[64];
    ath__gws_client_ip(h->gws, req, ip, sizeof(ip));
    int wait = h->gws != NULL ? ath__gws_auth_failure(h->gws, ip) : ath__gw_auth_failure(&h->lim, ip, 10);
    if (wait) {
      char v[16];
      int n = snprintf(v, sizeof(v), "%d", wait);
      h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, h2o_strdup(&req->pool, v, (size_t)n).base,
                     (size_t)n);
      respond_err(req, 429, "Too Many Requests", "rate_limited", "too many failed keys; retry later");
      return 0;
    }
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL, H2O_STRLIT("Bearer"));
    respond_err(req, 401, "Unauthorized", found == 0 ? "auth_required" : "invalid_key",
                found == 0 ? "the operations surface needs a key with operations rights"
                           : "the key is not valid");
    return 0;
  }
  if (!(h->o.keys[k].rights & right)) {
    respond_err(req, 403, "Forbidden", "forbidden",
                right == ATH_GWR_OPS_WRITE ? "this key lacks ops.write" : "this key lacks ops.read");
    return 0;
  }
  return ops_authorize(h, req, h->o.keys[k].name, right);
}

/* A mutation a browser could not have sent cross-site without a
 * preflight (which this surface never grants): Content-Type
 * application/json, and Origin and Sec-Fetch-Site, when sent, say the
 * request comes from this very site. 1 yes, else answered (0). */
static int same_site_write(h2o_req_t* req) {
  const char* why = NULL;
  ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
  h2o_iovec_t ct = i >= 0 ? req->headers.entries[i].value : h2o_iovec_init(NULL, 0);
  if (ct.len < 16 || strncasecmp(ct.base, "application/json", 16) != 0 ||
      (ct.len > 16 && ct.base[16] != ';' && ct.base[16] != ' '))
    why = "a mutation needs Content-Type: application/json";
  i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("sec-fetch-site"), -1);
  if (why == NULL && i >= 0) {
    h2o_iovec_t v = req->headers.entries[i].value;
    if (!h2o_memis(v.base, v.len, H2O_STRLIT("same-origin")) && !h2o_memis(v.base, v.len, H2O_STRLIT("none")))
      why = "cross-site mutations are refused";
  }
  i = h2o_find_header_by_str(&req->headers, H2O_STRLIT("origin"), -1);
  if (why == NULL && i >= 0) {
    h2o_iovec_t v = req->headers.entries[i].value;
    const char* sep = v.len > 3 ? memchr(v.base, ':', v.len) : NULL;
    /* "scheme://authority" must name the Host this request was sent to */
    if (sep == NULL || (size_t)(v.base + v.len - sep) < 3 || memcmp(sep, "://", 3) != 0 ||
        !h2o_memis(sep + 3, (size_t)(v.base + v.len - sep - 3), req->authority.base, req->authority.len))
      why = "cross-origin mutations are refused";
  }
  if (why == NULL)
    return 1;
  respond_err(req, 403, "Forbidden", "cross_site", why);
  return 0;
}

/* ---------------------------------------------------------------- router */

/* HTTP/2 (only with o.http2): a connection opening more than o.http2
 * streams in a second is shut down. libh2o 2.2.5 does not bound stream
 * resets (CVE-2023-44487, "rapid reset"); every HEADERS that ends its
 * stream reaches this handler, so its rate is bounded here. 1 when the
 * request was answered. */
static int h2_flood(ath_http_t* h, h2o_req_t* req) {
  if (req->version < 0x200 || req->conn->callbacks->get_socket == NULL)
    return 0;
  h2o_socket_t* sock = req->conn->callbacks->get_socket(req->conn);
  conn_t* c = sock != NULL ? sock->on_close.data : NULL;
  if (c == NULL || c->l->h != h)
    return 0;
  uint64_t now = uv_now(c->l->ctx.loop);
  if (now - c->h2_window >= 1000) {
    c->h2_window = now;
    c->h2_streams = 0;
  }
  if (++c->h2_streams <= (uint32_t)h->o.http2)
    return 0;
  if (!c->shed)
    shed(c);
  respond_err(req, 429, "Too Many Requests", "rate_limited", "too many HTTP/2 streams on this connection");
  return 1;
}

static int on_req(h2o_handler_t* self, h2o_req_t* req) {
  ath_http_t* h = *(ath_http_t**)(self + 1);
  http_loop_t* l = H2O_STRUCT_FROM_MEMBER(http_loop_t, ctx, req->conn->ctx);
  ath_world_t* w = h->w;
  if (h2_flood(h, req))
    return 0;
  if (ambiguous_framing(req)) {
    req->http1_is_persistent = 0;
    return respond_err(req, 400, "Bad Request", "bad_framing",
                       "Content-Length repeated with different values or beside Transfer-Encoding");
  }
  int host_ok = host_allowed(h, req);
  if (!host_ok && h->o.allowed_hosts != NULL)
    return misdirected(req); /* configured: every route */
  if (h->gws != NULL && l->gwt != NULL && ath__gws_handle(h->gws, l->gwt, req))
    return 0; /* a gateway route (GATEWAY.md): keep-alive, answered on this thread */
  req->http1_is_persistent = 0;
  if (!host_ok)
    return misdirected(req);
  const char* p = req->path_normalized.base;
  size_t n = req->path_normalized.len;
  int get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(p, lit, n) == 0)
  if (IS("/healthz") && get) {
    char why[512];
    if (ath_world_health(w, why, sizeof(why)) == 0)
      respond(req, 200, "OK", "text/plain; charset=utf-8", "ok", 2);
    else
      respond(req, 503, "Service Unavailable", "text/plain; charset=utf-8", why, strlen(why));
    return 0;
  }
  if ((h->o.flags & ATH_SERVE_METRICS) && IS("/metrics") && get)
    return ops_key(h, req, ATH_GWR_OPS_READ) ? prometheus(req, w) : 0;
  if ((h->o.flags & ATH_SERVE_DASHBOARD) && (IS("/") || IS("/dashboard")) && get) {
    /* the page holds no data: it asks /api with the key it is given */
    respond(req, 200, "OK", "text/html; charset=utf-8", ath__dashboard_html, ath__dashboard_html_len);
    return 0;
  }
  if ((h->o.flags & ATH_SERVE_DASHBOARD) && (IS("/api") || (n > 5 && memcmp(p, "/api/", 5) == 0))) {
    int write = !get && !h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD"));
    if (!ops_key(h, req, write ? ATH_GWR_OPS_WRITE : ATH_GWR_OPS_READ))
      return 0;
    if (write && !same_site_write(req))
      return 0;
    if (IS("/api/metrics") && get)
      return api_metrics(req, w);
    if (IS("/api/workers") && get)
      return api_workers(req, w);
    if (IS("/api/schedules") && get)
      return api_schedules(req, w);
    if (IS("/api/nodes") && get)
      return api_nodes(req, w);
    if (IS("/api/tasks") && get)
      return api_tasks(req, w);
    if (n > 11 && memcmp(p, "/api/tasks/", 11) == 0 && req->path.len > 11 &&
        memcmp(req->path.base, "/api/tasks/", 11) == 0)
      return api_task(req, w);
  }
#undef IS
  return respond_error(req, 404, "Not Found", ATH_ENOTFOUND, "no such route");
}

static void release(http_loop_t* l);

static void on_loop_handle_closed(uv_handle_t* handle) {
  http_loop_t* l = handle->data;
  l->handles--;
  release(l);
}

/* Frees a stopped loop once its last connection and handle closed: the
 * engine loop's frees the server; a gateway loop's first ends its grace
 * timer. */
static void release(http_loop_t* l) {
  if (l->index == 0) {
    ath_http_t* h = l->h;
    if (h->closing == 2 && l->nconns == 0 && l->handles == 0 && h->handles == 0)
      dispose(h); /* the last connection or handle of a stopped server */
    return;
  }
  if (l->closing != 1 || l->nconns > 0)
    return;
  if (!uv_is_closing((uv_handle_t*)&l->grace)) {
    uv_close((uv_handle_t*)&l->grace, on_loop_handle_closed);
    return;
  }
  if (l->handles > 0)
    return;
  l->closing = 2;
  dispose_ctx(&l->ctx);
  uv_mutex_destroy(&l->mu);
  free(l->fds);
  free(l);
}

static void on_close_conn(uv_handle_t* handle) {
  conn_t* c = (conn_t*)handle;
  http_loop_t* l = c->l;
  if (c->prev)
    c->prev->next = c->next;
  else
    l->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  free(c);
  l->nconns--;
  release(l);
}

/* A new connection on loop l, over the accepted socket fd (or, fd < 0,
 * accepted from listener now). */
static void serve_conn(http_loop_t* l, uv_stream_t* listener, uv_os_sock_t fd) {
  conn_t* c = calloc(1, sizeof(*c));
  if (c == NULL) {
    if (fd >= 0)
      close(fd);
    return;
  }
  c->l = l;
  c->next = l->conns;
  if (l->conns)
    l->conns->prev = c;
  l->conns = c;
  l->nconns++;
  uv_tcp_t* conn = &c->tcp;
  uv_tcp_init(l->ctx.loop, conn);
  if ((fd >= 0 ? uv_tcp_open(conn, fd) : uv_accept(listener, (uv_stream_t*)conn)) != 0) {
    if (fd >= 0)
      close(fd);
    uv_close((uv_handle_t*)conn, on_close_conn);
    return;
  }
  c->sock = h2o_uv_socket_create((uv_stream_t*)conn, (uv_close_cb)on_close_conn);
  c->sock->on_close.data = c; /* the owner's field (no callback): h2_flood finds c */
  h2o_accept(&l->accept, c->sock);
}

static void on_tmp_closed(uv_handle_t* handle) {
  free(handle);
}

/* With gateway threads the engine only accepts: each connection goes to
 * the next gateway loop, which serves all of its requests. */
static void hand_over(ath_http_t* h, uv_stream_t* listener) {
  uv_tcp_t* tmp = malloc(sizeof(*tmp));
  if (tmp == NULL)
    return;
  uv_tcp_init(listener->loop, tmp);
  uv_os_fd_t fd;
  int dup = -1;
  if (uv_accept(listener, (uv_stream_t*)tmp) == 0 && uv_fileno((uv_handle_t*)tmp, &fd) == 0)
    dup = fcntl(fd, F_DUPFD_CLOEXEC, 0); /* this one outlives tmp's close */
  uv_close((uv_handle_t*)tmp, on_tmp_closed);
  if (dup < 0)
    return;
  http_loop_t* l = h->loops[1 + h->next_loop++ % (unsigned)h->nloops];
  uv_mutex_lock(&l->mu);
  if (l->nfds == l->capfds) {
    size_t cap = l->capfds ? l->capfds * 2 : 16;
    uv_os_sock_t* grown = realloc(l->fds, cap * sizeof(*grown));
    if (grown == NULL) {
      uv_mutex_unlock(&l->mu);
      close(dup);
      return;
    }
    l->fds = grown;
    l->capfds = cap;
  }
  l->fds[l->nfds++] = dup;
  uv_mutex_unlock(&l->mu);
  uv_async_send(&l->inbox);
}

static void on_accept(uv_stream_t* listener, int status) {
  ath_http_t* h = listener->data;
  if (status != 0)
    return;
  if (h->threaded)
    hand_over(h, listener);
  else
    serve_conn(&h->main, listener, -1);
}

/* A gateway loop: the connections the engine handed over. */
static void on_inbox(uv_async_t* a) {
  http_loop_t* l = a->data;
  uv_mutex_lock(&l->mu);
  size_t n = l->nfds;
  uv_os_sock_t some[64];
  if (n > 64)
    n = 64;
  memcpy(some, l->fds, n * sizeof(*some));
  memmove(l->fds, l->fds + n, (l->nfds - n) * sizeof(*some));
  l->nfds -= n;
  int more = l->nfds > 0;
  uv_mutex_unlock(&l->mu);
  for (size_t i = 0; i < n; i++)
    serve_conn(l, NULL, some[i]);
  if (more)
    uv_async_send(a);
}

static void loop_init(http_loop_t* l, ath_http_t* h, uv_loop_t* loop, ath_gwt_t* t, int index) {
  l->h = h;
  l->index = index;
  l->gwt = t;
  h2o_context_init(&l->ctx, loop, &h->config);
  l->accept.ctx = &l->ctx;
  l->accept.hosts = h->config.hosts;
  uv_check_init(loop, &l->check);
  l->check.data = l;
  uv_check_start(&l->check, on_check);
  l->handles = 1;
}

http_loop_t* ath__http_loop_open(ath_http_t* h, uv_loop_t* loop, ath_gwt_t* t, int index) {
  if (index <= 0 || index >= MAX_LOOPS)
    return NULL;
  http_loop_t* l = calloc(1, sizeof(*l));
  if (l == NULL)
    return NULL;
  loop_init(l, h, loop, t, index);
  uv_mutex_init(&l->mu);
  uv_async_init(loop, &l->inbox, on_inbox);
  l->inbox.data = l;
  uv_timer_init(loop, &l->grace);
  l->grace.data = l;
  l->handles = 3;
  return l;
}

static void on_grace(uv_timer_t* timer) {
  http_loop_t* l = timer->data;
  for (conn_t* c = l->conns; c; c = c->next)
    if (!c->shed)
      shed(c); /* h2o reads EOF and closes it */
  uv_close((uv_handle_t*)timer, on_loop_handle_closed);
}

#define GRACE_MS 1000 /* stopping: how long an answer being written may take */

void ath__http_loop_close(http_loop_t* l) {
  l->closing = 1;
  uv_mutex_lock(&l->mu);
  for (size_t i = 0; i < l->nfds; i++)
    close(l->fds[i]); /* handed over, never served */
  l->nfds = 0;
  uv_mutex_unlock(&l->mu);
  uv_close((uv_handle_t*)&l->inbox, on_loop_handle_closed);
  uv_close((uv_handle_t*)&l->check, on_loop_handle_closed);
  h2o_context_request_shutdown(&l->ctx); /* idle keep-alive connections close */
  if (l->nconns > 0)
    uv_timer_start(&l->grace, on_grace, GRACE_MS, 0);
  else
    uv_close((uv_handle_t*)&l->grace, on_loop_handle_closed);
}

static void free_server(uv_handle_t* handle) {
  free(handle->data); /* the server, which embeds the listener */
}

static int is_loopback(const char* host) {
  return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0;
}

static int is_wildcard(const char* host) {
  return strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0;
}

/* The Host names accepted without allowedHosts: the loopback names and
 * the listened address; any on a wildcard address (no name to hold a
 * request to; the operations surface there needs keys). */
static char** default_hosts(const char* host) {
  if (is_wildcard(host))
    return NULL;
  const char* names[] = {"localhost", "127.0.0.1", "::1", host, NULL};
  return ath__strv_dup(names);
}

int ath__http_start(ath_world_t* w, const char* host, int port, ath_serve_opts_t* o, int* bound,
                    ath_http_t** out, char* err, size_t errlen) {
  ath_http_t* h = calloc(1, sizeof(*h));
  if (h == NULL) {
    ath__serve_opts_free(o);
    return ATH_ENOMEM;
  }
  h->w = w;
  h->o = *o;
  memset(o, 0, sizeof(*o));
  h->gws = h->o.gws;
  if (h->gws != NULL && ath__gws_copy_keys(h->gws, &h->o.keys, &h->o.nkeys) != 0) {
    ath__serve_opts_free(&h->o);
    free(h);
    return ATH_ENOMEM;
  }
  h->need_key = h->o.auth || h->o.nkeys > 0 || h->gws != NULL;
  if (h->o.max_buffered == 0)
    h->o.max_buffered = (size_t)64 << 20;
  int ops = h->o.flags & (ATH_SERVE_METRICS | ATH_SERVE_DASHBOARD);
  if (ops && !h->need_key && !is_loopback(host)) {
    snprintf(err, errlen,
             "serving the operations surface on %s needs auth (keys with ops rights); "
             "without it serve loopback only, or set metrics = false, dashboard = false",
             host);
    ath__serve_opts_free(&h->o);
    free(h);
    return ATH_EINVAL;
  }
  h->hosts = h->o.allowed_hosts != NULL ? ath__strv_dup((const char* const*)h->o.allowed_hosts)
                                        : default_hosts(host);
  struct sockaddr_storage addr;
  int rc = uv_ip4_addr(host, port, (struct sockaddr_in*)&addr);
  if (rc != 0)
    rc = uv_ip6_addr(host, port, (struct sockaddr_in6*)&addr);
  if (rc != 0) {
    snprintf(err, errlen, "invalid host %s: %s", host, uv_strerror(rc));
    ath__serve_opts_free(&h->o);
    ath__strv_free(h->hosts);
    free(h);
    return ATH_EINVAL;
  }
  uv_tcp_init(&w->eloop, &h->listener);
  h->listener.data = h;
  rc = uv_tcp_bind(&h->listener, (struct sockaddr*)&addr, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t*)&h->listener, 128, on_accept);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    ath__serve_opts_free(&h->o);
    ath__strv_free(h->hosts);
    uv_close((uv_handle_t*)&h->listener, free_server);
    return rc == UV_EADDRINUSE ? ATH_EBUSY : ATH_EINVAL;
  }
  struct sockaddr_storage name;
  int namelen = sizeof(name);
  uv_tcp_getsockname(&h->listener, (struct sockaddr*)&name, &namelen);
  *bound = ntohs(((struct sockaddr_in*)&name)->sin_port);
  h2o_config_init(&h->config);
  h->config.server_name = h2o_iovec_init(H2O_STRLIT("athena")); /* no version */
  h->config.http1.upgrade_to_http2 = h->o.http2 > 0;
  h->config.max_request_entity_size = 64 * 1024; /* the operations surface takes no bodies */
  if (h->gws != NULL)
    h->config.max_request_entity_size = ath__gws_body_cap(h->gws);
  h2o_hostconf_t* hc = h2o_config_register_host(&h->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t* pc = h2o_config_register_path(hc, "/", 0);
  h2o_handler_t* handler = h2o_create_handler(pc, sizeof(*handler) + sizeof(ath_http_t*));
  *(ath_http_t**)(handler + 1) = h;
  handler->on_req = on_req;
  loop_init(&h->main, h, &w->eloop, NULL, 0);
  h->loops[0] = &h->main;
  h->handles = 1;
  if (h->gws != NULL) {
    /* the gateway threads serve every connection, each on its own loop */
    int n = ath__gws_nthreads(h->gws);
    h->nloops = n < MAX_LOOPS ? n : MAX_LOOPS - 1;
    if (ath__gws_serve(h->gws, h, err, errlen) != 0) {
      ath__gws_free(h->gws);
      h->gws = h->o.gws = NULL;
      h->nloops = 0;
    } else {
      for (int i = 0; i < h->nloops; i++)
        h->loops[i + 1] = ath__gws_loop(h->gws, i);
      h->threaded = h->nloops > 0;
    }
  }
  *out = h;
  return 0;
}

static void on_handle_closed(uv_handle_t* handle) {
  ath_http_t* h = handle->data;
  h->closing = 2;
  h->handles--;
  release(&h->main);
}

static void on_main_check_closed(uv_handle_t* handle) {
  http_loop_t* l = handle->data;
  l->h->closing = 2;
  l->handles--;
  release(l);
}

void ath__http_stop(ath_http_t* h) {
  h->closing = 1;
  uv_close((uv_handle_t*)&h->listener, on_handle_closed); /* nothing more is handed over */
  /* the gateway threads close their loops: idle connections at once, busy
   * ones after a grace second */
  ath__gws_free(h->gws);
  h->gws = h->o.gws = NULL;
  h->threaded = 0;
  h->nloops = 0;
  h2o_context_request_shutdown(&h->main.ctx); /* idle keep-alive connections close */
  uv_close((uv_handle_t*)&h->main.check, on_main_check_closed);
}
