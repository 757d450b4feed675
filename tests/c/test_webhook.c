/* Webhooks end to end: a world POSTs task events to a receiver built on
 * libh2o in this test (its own loop and thread), which records them and
 * can refuse the first deliveries to exercise the retries. */
#define H2O_USE_LIBUV 1
#include <h2o.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "athena.h"
#include "internal.h"
#include "task.h"

typedef struct {
  char event[64];
  char delivery[64];
  char type[64];
  char body[2048];
} hit_t;

static uv_mutex_t mu;
static uv_cond_t cv;
static hit_t hits[64];
static int nhits, refuse_first, requests;
static uv_loop_t loop;
static uv_tcp_t listener;
static uv_async_t stop_async;
static h2o_globalconf_t config;
static h2o_context_t ctx;
static h2o_accept_ctx_t accept_ctx;
static int port;

static void header(h2o_req_t* req, const char* name, char* out, size_t cap) {
  ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
  out[0] = '\0';
  if (i >= 0) {
    h2o_iovec_t v = req->headers.entries[i].value;
    snprintf(out, cap, "%.*s", (int)v.len, v.base);
  }
}

static int on_req(h2o_handler_t* self, h2o_req_t* req) {
  (void)self;
  uv_mutex_lock(&mu);
  int refuse = requests++ < refuse_first;
  if (!refuse && nhits < 64 && h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"))) {
    hit_t* h = &hits[nhits++];
    header(req, "x-athena-event", h->event, sizeof(h->event));
    header(req, "x-athena-delivery", h->delivery, sizeof(h->delivery));
    header(req, "content-type", h->type, sizeof(h->type));
    snprintf(h->body, sizeof(h->body), "%.*s", (int)req->entity.len, req->entity.base);
    uv_cond_broadcast(&cv);
  }
  uv_mutex_unlock(&mu);
  req->res.status = refuse ? 500 : 204;
  req->res.reason = refuse ? "Internal Server Error" : "No Content";
  req->http1_is_persistent = 0;
  h2o_send_inline(req, "", 0);
  return 0;
}

static void on_close(uv_handle_t* h) {
  free(h);
}

static void on_accept(uv_stream_t* l, int status) {
  if (status != 0)
    return;
  uv_tcp_t* conn = malloc(sizeof(*conn));
  uv_tcp_init(l->loop, conn);
  if (uv_accept(l, (uv_stream_t*)conn) != 0) {
    uv_close((uv_handle_t*)conn, on_close);
    return;
  }
  h2o_accept(&accept_ctx, h2o_uv_socket_create((uv_stream_t*)conn, (uv_close_cb)on_close));
}

static void on_stop(uv_async_t* a) {
  (void)a;
  uv_close((uv_handle_t*)&listener, NULL);
  uv_close((uv_handle_t*)&stop_async, NULL);
  h2o_context_dispose(&ctx);
}

static void serve(void* arg) {
  (void)arg;
  uv_run(&loop, UV_RUN_DEFAULT);
}

static void start_receiver(uv_thread_t* th) {
  uv_mutex_init(&mu);
  uv_cond_init(&cv);
  ASSERT_OK(uv_loop_init(&loop));
  uv_async_init(&loop, &stop_async, on_stop);
  h2o_config_init(&config);
  h2o_hostconf_t* hc = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t* pc = h2o_config_register_path(hc, "/", 0);
  h2o_create_handler(pc, sizeof(h2o_handler_t))->on_req = on_req;
  h2o_context_init(&ctx, &loop, &config);
  accept_ctx.ctx = &ctx;
  accept_ctx.hosts = config.hosts;
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  uv_tcp_init(&loop, &listener);
  ASSERT_OK(uv_tcp_bind(&listener, (struct sockaddr*)&addr, 0));
  ASSERT_OK(uv_listen((uv_stream_t*)&listener, 16, on_accept));
  struct sockaddr_in name;
  int len = sizeof(name);
  uv_tcp_getsockname(&listener, (struct sockaddr*)&name, &len);
  port = ntohs(name.sin_port);
  ASSERT_OK(uv_thread_create(th, serve, NULL));
}

static void stop_receiver(uv_thread_t* th) {
  uv_async_send(&stop_async);
  uv_thread_join(th);
  ASSERT_OK(uv_loop_close(&loop));
  h2o_config_dispose(&config);
  uv_cond_destroy(&cv);
  uv_mutex_destroy(&mu);
}

/* Waits (with a deadline) until `n` events were recorded. */
static int wait_hits(int n, int64_t ms) {
  uint64_t deadline = uv_hrtime() + (uint64_t)ms * 1000000u;
  uv_mutex_lock(&mu);
  while (nhits < n) {
    uint64_t now = uv_hrtime();
    if (now >= deadline || uv_cond_timedwait(&cv, &mu, deadline - now) != 0)
      break;
  }
  int got = nhits;
  uv_mutex_unlock(&mu);
  return got;
}

static char dir[64];

static ath_world_t* webhook_world(unsigned events) {
  snprintf(dir, sizeof(dir), "/tmp/athena-hook-%d", (int)getpid());
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "mkdir -p %s", dir);
  ASSERT_OK(system(cmd));
  char file[128];
  snprintf(file, sizeof(file), "%s/hookjobs.lua", dir);
  FILE* f = fopen(file, "w");
  fputs("local athena = require 'athena'\n"
        "athena.activity('ok', function(ctx, i) return i end)\n"
        "athena.activity('bad', function(ctx) error('nope on attempt ' .. ctx.attempt) end)\n", f);
  fclose(f);
  static char path[128], url[128];
  snprintf(path, sizeof(path), "%s/?.lua;;", dir);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook", port);
  static const char* const mods[] = {"hookjobs", NULL};
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  cfg.persistence = ATH_PERSIST_MEMORY;
  cfg.min_workers = cfg.max_workers = 1;
  cfg.modules = mods;
  cfg.lua_path = path;
  cfg.webhook_url = url;
  cfg.webhook_events = events;
  ath_world_t* w;
  char err[256];
  ASSERT_OK(ath_world_new(&cfg, &w, err, sizeof(err)));
  ath_activity_t a;
  ath_activity_init(&a, "ok");
  ASSERT_OK(ath_world_register(w, &a));
  ath_activity_init(&a, "bad");
  a.has_retry = 1;
  a.max_attempts = 2;
  a.initial_interval_ms = 10;
  ASSERT_OK(ath_world_register(w, &a));
  ASSERT_OK(ath_world_start(w, err, sizeof(err)));
  return w;
}

static void run(ath_world_t* w, const char* name, const char* json) {
  size_t len = strlen(json);
  char* p = malloc(len + 1);
  memcpy(p, json, len + 1);
  ath_task_t* t;
  char err[256];
  ASSERT_OK(ath_world_execute(w, name, 1, &p, &len, NULL, NULL, &t, err, sizeof(err)));
  ASSERT_OK(ath_world_wait(w, t, 10000));
  ath_task_release(t);
}

static void finish(ath_world_t* w, uv_thread_t* th) {
  int d, r;
  ath_world_shutdown(w, 5000, &d, &r, NULL);
  ath_world_free(w);
  stop_receiver(th);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  ASSERT_OK(system(cmd));
}

TEST_IMPL(webhook_events_delivered) {
  uv_thread_t th;
  nhits = requests = refuse_first = 0;
  start_receiver(&th);
  /* completed, failed, retrying only */
  ath_world_t* w = webhook_world((1u << ATH_EV_TASK_COMPLETED) | (1u << ATH_EV_TASK_FAILED) |
                                 (1u << ATH_EV_TASK_RETRYING));
  run(w, "ok", "{\"n\":7}");
  run(w, "bad", "1");
  ASSERT_EQ(3, wait_hits(3, 10000)); /* completed, retrying, failed */
  int completed = 0, failed = 0, retrying = 0;
  for (int i = 0; i < 3; i++) {
    ASSERT_STR_EQ("application/json", hits[i].type);
    ASSERT_EQ(36, (int64_t)strlen(hits[i].delivery));
    ASSERT(strstr(hits[i].body, hits[i].delivery) != NULL); /* the body's id */
    char want[96];
    snprintf(want, sizeof(want), "\"event\":\"%.60s\"", hits[i].event);
    ASSERT(strstr(hits[i].body, want) != NULL);
    if (strcmp(hits[i].event, "task.completed") == 0) {
      completed++;
      if (strstr(hits[i].body, "\"name\":\"ok\"") == NULL)
        fprintf(stderr, "body: %s\n", hits[i].body);
      ASSERT(strstr(hits[i].body, "\"name\":\"ok\"") != NULL);
      ASSERT(strstr(hits[i].body, "\"status\":\"completed\"") != NULL);
      ASSERT(strstr(hits[i].body, "\"error\"") == NULL);
    } else if (strcmp(hits[i].event, "task.failed") == 0) {
      failed++;
      ASSERT(strstr(hits[i].body, "\"attempt\":2") != NULL);
      ASSERT(strstr(hits[i].body, "\"code\":\"EHANDLER\"") != NULL);
      ASSERT(strstr(hits[i].body, "nope on attempt 2") != NULL);
    } else if (strcmp(hits[i].event, "task.retrying") == 0) {
      /* the state the task had when the event happened, although the
       * body is written later, by when attempt 2 may have failed too */
      retrying++;
      ASSERT(strstr(hits[i].body, "\"status\":\"retrying\"") != NULL);
      ASSERT(strstr(hits[i].body, "\"attempt\":1") != NULL);
      ASSERT(strstr(hits[i].body, "nope on attempt 1") != NULL);
    }
  }
  ASSERT_EQ(1, completed);
  ASSERT_EQ(1, failed);
  ASSERT_EQ(1, retrying);
  finish(w, &th);
  return 0;
}

TEST_IMPL(webhook_retried_after_refusal) {
  uv_thread_t th;
  nhits = requests = 0;
  refuse_first = 1; /* the first POST gets a 500; the retry (1 s later) lands */
  start_receiver(&th);
  ath_world_t* w = webhook_world(1u << ATH_EV_TASK_COMPLETED);
  uint64_t t0 = uv_hrtime();
  run(w, "ok", "1");
  ASSERT_EQ(1, wait_hits(1, 10000));
  ASSERT_GE((int64_t)((uv_hrtime() - t0) / 1000000u), 1000); /* waited the 1 s backoff */
  uv_mutex_lock(&mu);
  ASSERT_EQ(2, requests);
  uv_mutex_unlock(&mu);
  ASSERT_STR_EQ("task.completed", hits[0].event);
  finish(w, &th);
  return 0;
}

TEST_IMPL(webhook_unreachable_never_blocks) {
  /* nobody listens on the port: tasks complete at full speed anyway */
  uv_thread_t th;
  nhits = requests = refuse_first = 0;
  start_receiver(&th);
  stop_receiver(&th); /* the port is closed now */
  uv_mutex_init(&mu);
  uv_cond_init(&cv);
  ath_world_t* w = webhook_world(0);
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < 200; i++)
    run(w, "ok", "1");
  ASSERT_LT((int64_t)((uv_hrtime() - t0) / 1000000u), 5000);
  int d, r;
  ath_world_shutdown(w, 5000, &d, &r, NULL);
  ath_world_free(w);
  uv_cond_destroy(&cv);
  uv_mutex_destroy(&mu);
  return 0;
}

/* A worker's exchange queues its webhook events once it has let go of the
 * world lock (issue 15: no webhook building under a shared lock). With the
 * outbox's mutex held here, a task still ends and the world lock stays
 * free; before, the worker took that mutex inside the world lock and kept
 * the world locked until this test let go. */
TEST_IMPL(webhook_outbox_outside_world_lock) {
  uv_thread_t th;
  nhits = requests = refuse_first = 0;
  start_receiver(&th);
  ath_world_t* w = webhook_world(1u << ATH_EV_TASK_COMPLETED);
  uv_mutex_t* outbox = ath__hook_outbox_lock(w->hook);
  uv_mutex_lock(outbox);
  size_t len = 1;
  char* p = malloc(2);
  memcpy(p, "1", 2);
  ath_task_t* t;
  char err[256];
  ASSERT_OK(ath_world_execute(w, "ok", 1, &p, &len, NULL, NULL, &t, err, sizeof(err)));
  /* try the world lock (never block on it: a worker may hold it while it
   * waits for the outbox) until the task shows completed, deadline 5 s */
  uint64_t deadline = uv_hrtime() + 5000000000ull;
  int ended = 0;
  while (!ended && uv_hrtime() < deadline) {
    if (uv_mutex_trylock(&w->lock) == 0) {
      ended = t->status == ATH_COMPLETED;
      uv_mutex_unlock(&w->lock);
    }
    if (!ended)
      uv_sleep(1); /* polls the lock, which announces nothing */
  }
  uv_mutex_unlock(outbox);
  ASSERT(ended);
  ASSERT_EQ(1, wait_hits(1, 10000)); /* the event still goes out */
  ASSERT_STR_EQ("task.completed", hits[0].event);
  ath_task_release(t);
  finish(w, &th);
  return 0;
}
