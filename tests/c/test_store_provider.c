/* A host's own providers (athena.h "store providers", "event sinks",
 * "authorizers"; docs/c-api.md). The store provider keeps its "disk" in
 * this process's memory, outside any world, so a second world on it is a
 * restart: queued tasks and schedules come back; a provider that fails
 * degrades the world like the SQLite store; bad providers and bad rows are
 * refused with a clear error. An event sink gets the webhook events; an
 * authorizer denies HTTP requests the keys allow, failing closed. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include "athena.h"
#include "store_fixture.h"
#include "task.h"

/* ------------------------------------------------------- the tiny provider */

typedef struct {
  ath_store_task_t row; /* strings owned (NUL-terminated copies) */
  char* events;         /* the history, events each followed by the separator */
  size_t events_len;
  uint32_t nevents;
} mem_task_t;

typedef struct {
  ath_store_schedule_t row;
} mem_sched_t;

typedef struct {
  mem_task_t tasks[256];
  int ntasks;
  mem_sched_t scheds[16];
  int nscheds;
  int persists, opens, closes;
  int fail_with;    /* persist answers this while set */
  int bad_row;      /* load hands back a task without input */
} mem_disk_t;

static mem_disk_t disk;

#define dup_n store_fixture_dup

static char* dup_s(const char* p) {
  return p ? dup_n(p, strlen(p)) : NULL;
}

static void task_clear(mem_task_t* t) {
  ath_store_task_t* r = &t->row;
  free((char*)r->id), free((char*)r->name), free((char*)r->queue), free((char*)r->input);
  free((char*)r->result), free((char*)r->error), free((char*)r->hb), free((char*)r->parent_id);
  free((char*)r->call), free(t->events);
  memset(t, 0, sizeof(*t));
}

static int mem_open(void* ud, const char* dir, void** store, char* err, size_t errlen) {
  (void)dir, (void)err, (void)errlen;
  disk.opens++;
  *store = ud;
  return 0;
}

static int mem_load(void* store, ath_store_task_cb task_cb, ath_store_schedule_cb sched_cb,
                    void* cbud, char* err, size_t errlen) {
  (void)store, (void)err, (void)errlen;
  for (int i = 0; i < disk.ntasks; i++) { /* kept in seq order: persist appends */
    ath_store_task_t r = disk.tasks[i].row;
    r.history = disk.tasks[i].events;
    r.history_len = disk.tasks[i].events_len;
    if (disk.bad_row)
      r.input = NULL;
    int rc = task_cb(cbud, &r);
    if (rc != 0)
      return rc;
  }
  for (int i = 0; i < disk.nscheds; i++) {
    int rc = sched_cb(cbud, &disk.scheds[i].row);
    if (rc != 0)
      return rc;
  }
  return 0;
}

static mem_task_t* find_seq(uint64_t seq) {
  for (int i = 0; i < disk.ntasks; i++)
    if (disk.tasks[i].row.seq == seq)
      return &disk.tasks[i];
  return NULL;
}

static void put_task(const ath_store_task_t* r) {
  mem_task_t* t = find_seq(r->seq);
  if (r->deleted) {
    if (t != NULL) {
      task_clear(t);
      int i = (int)(t - disk.tasks);
      memmove(&disk.tasks[i], &disk.tasks[i + 1], (size_t)(disk.ntasks - i - 1) * sizeof(*t));
      disk.ntasks--;
    }
    return;
  }
  char* error = NULL;
  size_t error_len = 0;
  char* events = NULL;
  size_t events_len = 0;
  uint32_t nevents = 0;
  if (t == NULL) {
    ASSERT_LT(disk.ntasks, 256);
    t = &disk.tasks[disk.ntasks++];
    memset(t, 0, sizeof(*t));
  } else {
    if (r->keep_error) { /* the stored error stays */
      error = (char*)t->row.error, error_len = t->row.error_len;
      t->row.error = NULL;
    }
    events = t->events, events_len = t->events_len, nevents = t->nevents;
    t->events = NULL;
    task_clear(t);
  }
  t->row = *r;
  ath_store_task_t* c = &t->row;
  c->id = dup_s(r->id), c->name = dup_s(r->name), c->queue = dup_s(r->queue);
  c->input = dup_n(r->input, r->input_len), c->result = dup_n(r->result, r->result_len);
  c->hb = dup_n(r->hb, r->hb_len), c->parent_id = dup_s(r->parent_id);
  c->call = dup_n(r->call, r->call_len);
  if (r->keep_error)
    c->error = error, c->error_len = error_len;
  else
    c->error = dup_n(r->error, r->error_len);
  c->events = NULL, c->event_lens = NULL, c->nevents = 0, c->history = NULL;
  for (size_t i = 0; i < r->nevents; i++) { /* append those not stored yet */
    if (r->ev_from + i < nevents)
      continue;
    events = realloc(events, events_len + r->event_lens[i] + 1);
    ASSERT_NOT_NULL(events);
    memcpy(events + events_len, r->events[i], r->event_lens[i]);
    events_len += r->event_lens[i];
    events[events_len++] = ATH_STORE_EVENT_SEP;
    nevents++;
  }
  t->events = events, t->events_len = events_len, t->nevents = nevents;
}

static void sched_clear(mem_sched_t* s) {
  free((char*)s->row.id), free((char*)s->row.name), free((char*)s->row.input);
  free((char*)s->row.cron), free((char*)s->row.queue);
  memset(s, 0, sizeof(*s));
}

static void put_sched(const ath_store_schedule_t* r) {
  mem_sched_t* s = NULL;
  for (int i = 0; i < disk.nscheds; i++)
    if (strcmp(disk.scheds[i].row.id, r->id) == 0)
      s = &disk.scheds[i];
  if (r->deleted) {
    if (s != NULL) {
      sched_clear(s);
      *s = disk.scheds[--disk.nscheds];
    }
    return;
  }
  if (s == NULL) {
    ASSERT_LT(disk.nscheds, 16);
    s = &disk.scheds[disk.nscheds++];
  } else {
    sched_clear(s);
  }
  s->row = *r;
  s->row.id = dup_s(r->id), s->row.name = dup_s(r->name);
  s->row.input = dup_n(r->input, r->input_len), s->row.cron = dup_s(r->cron);
  s->row.queue = dup_s(r->queue);
}

static int mem_persist(void* store, const ath_store_task_t* tasks, size_t n,
                       const ath_store_schedule_t* scheds, size_t sn, char* err, size_t errlen) {
  (void)store;
  if (disk.fail_with != 0) {
    snprintf(err, errlen, "%s", "the tiny disk is full");
    return disk.fail_with;
  }
  disk.persists++;
  for (size_t i = 0; i < sn; i++)
    put_sched(&scheds[i]);
  for (size_t i = 0; i < n; i++)
    put_task(&tasks[i]);
  return 0;
}

static void mem_close(void* store) {
  (void)store;
  disk.closes++;
}

static void disk_wipe(void) {
  for (int i = 0; i < disk.ntasks; i++)
    task_clear(&disk.tasks[i]);
  for (int i = 0; i < disk.nscheds; i++)
    sched_clear(&disk.scheds[i]);
  memset(&disk, 0, sizeof(disk));
}

static int disk_ud;

static ath_store_provider_t mem_provider(void) {
  ath_store_provider_t p;
  memset(&p, 0, sizeof(p));
  p.size = sizeof(p);
  p.name = "tiny";
  p.ud = &disk_ud;
  p.open = mem_open;
  p.load = mem_load;
  p.persist = mem_persist;
  p.close = mem_close;
  return p;
}

/* ---------------------------------------------------------------- worlds */

static store_fixture_t fx;

static const char* jobs_lua =
  "local athena = require 'athena'\n"
  "athena.activity('echo', function(ctx, input) return input end)\n";

static int open_world(const ath_store_provider_t* p, int persistence, int manual,
                      ath_world_t** out, char* err, size_t errlen) {
  const char* modules[] = {fx.module, NULL};
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  cfg.min_workers = cfg.max_workers = 1;
  cfg.persistence = persistence;
  cfg.persistence_path = fx.store_path;
  cfg.modules = modules;
  cfg.lua_path = fx.lua_path;
  cfg.log_file = fx.log_path;
  cfg.manual_clock = manual;
  cfg.store = p;
  ath_world_t* w = NULL;
  int rc = ath_world_new(&cfg, &w, err, errlen);
  if (rc == 0) {
    ath_activity_t a;
    ath_activity_init(&a, "echo");
    rc = ath_world_register(w, &a);
  }
  return store_fixture_start(w, rc, out, err, errlen);
}

static int exec_echo(ath_world_t* w, const char* json, const char* id, int64_t delay_ms,
                     ath_task_t** t, char* err, size_t errlen) {
  size_t len = strlen(json);
  char* p = dup_n(json, len);
  ath_exec_opts_t o = {0};
  o.id = id;
  o.delay_ms = delay_ms;
  return ath_world_execute(w, "echo", 1, &p, &len, NULL, &o, t, err, errlen);
}

static void close_world(ath_world_t* w) {
  ASSERT_OK(ath_world_shutdown(w, 5000, NULL, NULL, NULL));
  ath_world_free(w);
}

/* A world on the tiny provider journals through it, and a second world on
 * the same "disk" (a restart) recovers the queued task, the finished one's
 * absence from the queue, and the schedule; the delayed task then runs. */
TEST_IMPL(store_provider_recovers) {
  store_fixture_setup(&fx, "provider", "pvjobs", jobs_lua);
  disk_wipe();
  ath_store_provider_t p = mem_provider();
  char err[512];
  ath_world_t* w;
  ASSERT_OK(open_world(&p, ATH_PERSIST_FILE, 1, &w, err, sizeof(err)));
  ASSERT_EQ(1, disk.opens);
  ath_task_t* done;
  ath_task_t* later;
  ASSERT_OK(exec_echo(w, "{\"n\":1}", "done-1", 0, &done, err, sizeof(err)));
  ASSERT_OK(exec_echo(w, "{\"n\":2}", "later-1", 3600000, &later, err, sizeof(err)));
  /* file mode: execute returned once the provider had both enqueues */
  ASSERT_GE(disk.ntasks, 2);
  ASSERT_OK(ath_world_wait(w, done, 10000));
  ASSERT_EQ(ATH_COMPLETED, ath_task_status(w, done));
  ath_schedule_opts_t so = {0};
  ASSERT_OK(ath_world_schedule(w, "nightly", "echo", dup_n("3", 1), 1, "0 3 * * *", &so, err,
                               sizeof(err)));
  ath_task_release(done);
  ath_task_release(later);
  close_world(w);
  ASSERT_EQ(1, disk.closes);
  ASSERT_EQ(1, disk.nscheds);
  ASSERT_STR_EQ("nightly", disk.scheds[0].row.id);
  int completed = 0;
  for (int i = 0; i < disk.ntasks; i++)
    if (strcmp(disk.tasks[i].row.id, "done-1") == 0 && disk.tasks[i].row.status == ATH_COMPLETED) {
      completed = 1;
      ASSERT_STR_EQ("{\"n\":1}", disk.tasks[i].row.result);
    }
  ASSERT(completed);

  /* the restart */
  ASSERT_OK(open_world(&p, ATH_PERSIST_FILE, 1, &w, err, sizeof(err)));
  ASSERT_EQ(2, disk.opens);
  ASSERT_OK(ath_world_find(w, "later-1", &later));
  ASSERT_EQ(ATH_SCHEDULED, ath_task_status(w, later));
  ath_schedule_info_t* si;
  size_t ns;
  ASSERT_OK(ath_world_schedules(w, &si, &ns));
  ASSERT_EQ(1, ns);
  ASSERT_STR_EQ("nightly", si[0].id);
  ASSERT_STR_EQ("0 3 * * *", si[0].cron);
  ath_schedules_free(si, ns);
  ASSERT_OK(ath_world_advance(w, 3600000));
  ASSERT_OK(ath_world_wait(w, later, 10000));
  ath_task_info_t info;
  ASSERT_OK(ath_task_snapshot(w, later, &info));
  ASSERT_EQ(ATH_COMPLETED, info.status);
  ASSERT_STR_EQ("{\"n\":2}", info.result);
  ath_task_snapshot_free(&info);
  ath_task_release(later);
  close_world(w);
  disk_wipe();
  store_fixture_teardown(&fx);
  return 0;
}

/* persist failing degrades the world as a full disk does: execute answers
 * the provider's code and the task does not exist, /healthz's health says
 * ESTORE with the provider's message; once persist succeeds again the
 * world heals by itself and takes work. */
TEST_IMPL(store_provider_degrades) {
  store_fixture_setup(&fx, "provider-deg", "pvjobs", jobs_lua);
  disk_wipe();
  ath_store_provider_t p = mem_provider();
  char err[512], why[512];
  ath_world_t* w;
  ASSERT_OK(open_world(&p, ATH_PERSIST_FILE, 0, &w, err, sizeof(err)));
  disk.fail_with = ATH_ENOSPC;
  ath_task_t* t = NULL;
  ASSERT_EQ(ATH_ENOSPC, exec_echo(w, "1", "refused", 0, &t, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "the tiny disk is full"));
  ASSERT_EQ(ATH_ESTORE, ath_world_health(w, why, sizeof(why)));
  ASSERT_NOT_NULL(strstr(why, "the tiny disk is full"));
  ASSERT_EQ(ATH_ENOTFOUND, ath_world_find(w, "refused", &t));
  disk.fail_with = 0; /* the provider's probe (a persist of nothing) succeeds */
  uint64_t t0 = uv_hrtime();
  while (ath_world_health(w, why, sizeof(why)) != 0) {
    ASSERT_LT((uv_hrtime() - t0) / 1000000, 10000);
    uv_sleep(1);
  }
  ASSERT_OK(exec_echo(w, "1", "accepted", 0, &t, err, sizeof(err)));
  ASSERT_OK(ath_world_wait(w, t, 10000));
  ASSERT_EQ(ATH_COMPLETED, ath_task_status(w, t));
  ath_task_release(t);
  close_world(w);
  disk_wipe();
  store_fixture_teardown(&fx);
  return 0;
}

/* Providers the engine cannot use are refused by ath_world_new, and a row
 * without input fails start() with ESTORE and a message naming it. */
TEST_IMPL(store_provider_refused) {
  store_fixture_setup(&fx, "provider-bad", "pvjobs", jobs_lua);
  disk_wipe();
  char err[512];
  ath_world_t* w;
  ath_store_provider_t p = mem_provider();
  p.size = 8;
  ASSERT_EQ(ATH_EINVAL, open_world(&p, ATH_PERSIST_FILE, 0, &w, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "invalid store provider tiny: its size"));
  p = mem_provider();
  p.persist = NULL;
  ASSERT_EQ(ATH_EINVAL, open_world(&p, ATH_PERSIST_FILE, 0, &w, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "open, load, persist and close are required"));
  p = mem_provider();
  p.get = (void*)mem_open; /* any non-NULL function: get without query */
  ASSERT_EQ(ATH_EINVAL, open_world(&p, ATH_PERSIST_FILE, 0, &w, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "get and query go together"));
  p = mem_provider();
  ASSERT_EQ(ATH_EINVAL, open_world(&p, ATH_PERSIST_MEMORY, 0, &w, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "memory persistence keeps no journal"));
  { /* a provider and the PostgreSQL backend (two places for one queue) */
    ath_world_config_t cfg;
    ath_world_config_init(&cfg);
    cfg.persistence = ATH_PERSIST_FILE;
    cfg.store = &p;
    cfg.backend_url = "postgres://athena@127.0.0.1:1/none";
    ASSERT_EQ(ATH_EINVAL, ath_world_new(&cfg, &w, err, sizeof(err)));
    ASSERT_NOT_NULL(strstr(err, "a store provider and the PostgreSQL backend are exclusive"));
  }
  ASSERT_EQ(0, disk.opens);

  /* a stored task without input */
  ASSERT_OK(open_world(&p, ATH_PERSIST_HYBRID, 1, &w, err, sizeof(err)));
  ath_task_t* t;
  ASSERT_OK(exec_echo(w, "1", "kept", 3600000, &t, err, sizeof(err)));
  ath_task_release(t);
  close_world(w);
  ASSERT_EQ(1, disk.ntasks);
  disk.bad_row = 1;
  ASSERT_EQ(ATH_ESTORE, open_world(&p, ATH_PERSIST_HYBRID, 1, &w, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "store provider tiny: a loaded task lacks its id, name, queue or input"));
  ASSERT_EQ(disk.opens, disk.closes); /* closed again */
  disk.bad_row = 0;
  ASSERT_OK(open_world(&p, ATH_PERSIST_HYBRID, 1, &w, err, sizeof(err)));
  close_world(w);
  disk_wipe();
  store_fixture_teardown(&fx);
  return 0;
}

/* ------------------------------------------------------------ event sink */

typedef struct {
  uv_mutex_t lock;
  char seen[4096];
  int calls, fail_first, closed;
} sink_state_t;

static int sink_deliver(void* ud, const char* json, size_t len, char* err, size_t errlen) {
  sink_state_t* st = ud;
  uv_mutex_lock(&st->lock);
  int fail = st->calls++ < st->fail_first;
  if (!fail && strlen(st->seen) + len + 2 < sizeof(st->seen)) {
    strncat(st->seen, json, len);
    strcat(st->seen, "\n");
  }
  uv_mutex_unlock(&st->lock);
  if (fail) {
    snprintf(err, errlen, "%s", "not yet");
    return ATH_EIO;
  }
  return 0;
}

static void sink_close(void* ud) {
  ((sink_state_t*)ud)->closed = 1;
}

static int sink_saw(sink_state_t* st, const char* what) {
  uv_mutex_lock(&st->lock);
  int yes = strstr(st->seen, what) != NULL;
  uv_mutex_unlock(&st->lock);
  return yes;
}

/* A host's event sink gets the webhook events (the same JSON bodies) on
 * the event thread; one that fails is retried; close comes after the last
 * delivery; a sink and a webhook URL together are refused. */
TEST_IMPL(event_sink_delivers) {
  store_fixture_setup(&fx, "sink", "pvjobs", jobs_lua);
  sink_state_t st;
  memset(&st, 0, sizeof(st));
  uv_mutex_init(&st.lock);
  st.fail_first = 1; /* the first delivery fails, its retry succeeds (1 s later) */
  ath_event_sink_t sink;
  memset(&sink, 0, sizeof(sink));
  sink.size = sizeof(sink);
  sink.ud = &st;
  sink.deliver = sink_deliver;
  sink.close = sink_close;
  const char* modules[] = {fx.module, NULL};
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  cfg.min_workers = cfg.max_workers = 1;
  cfg.persistence = ATH_PERSIST_MEMORY;
  cfg.modules = modules;
  cfg.lua_path = fx.lua_path;
  cfg.log_file = fx.log_path;
  cfg.event_sink = &sink;
  cfg.webhook_url = "http://127.0.0.1:1/";
  char err[512];
  ath_world_t* w;
  ASSERT_EQ(ATH_EINVAL, ath_world_new(&cfg, &w, err, sizeof(err)));
  ASSERT_NOT_NULL(strstr(err, "exclusive"));
  cfg.webhook_url = NULL;
  ASSERT_OK(ath_world_new(&cfg, &w, err, sizeof(err)));
  ath_activity_t a;
  ath_activity_init(&a, "echo");
  ASSERT_OK(ath_world_register(w, &a));
  ASSERT_OK(ath_world_start(w, err, sizeof(err)));
  ath_task_t* t;
  ASSERT_OK(exec_echo(w, "1", "sunk", 0, &t, err, sizeof(err)));
  ASSERT_OK(ath_world_wait(w, t, 10000));
  ath_task_release(t);
  uint64_t t0 = uv_hrtime();
  while (!sink_saw(&st, "\"event\":\"task.completed\"")) {
    ASSERT_LT((uv_hrtime() - t0) / 1000000, 10000);
    uv_sleep(5);
  }
  ASSERT(sink_saw(&st, "\"id\":\"sunk\""));
  ASSERT_EQ(2, st.calls); /* failed once, then delivered */
  close_world(w);
  ASSERT_EQ(1, st.closed);
  uv_mutex_destroy(&st.lock);
  store_fixture_teardown(&fx);
  return 0;
}

/* ------------------------------------------------------------ authorizer */

typedef struct {
  uv_mutex_t lock;    /* the HTTP thread writes, the test reads */
  int calls;
  int error;          /* authorize answers this error instead */
  char last[256];     /* what it saw last */
} authz_state_t;

static int authz_cb(void* ud, const ath_auth_request_t* r, char* why, size_t whylen) {
  authz_state_t* st = ud;
  uv_mutex_lock(&st->lock);
  st->calls++;
  snprintf(st->last, sizeof(st->last), "%s %s %s %s %s", r->surface, r->method, r->path, r->operation,
           r->key ? r->key : "-");
  int error = st->error;
  uv_mutex_unlock(&st->lock);
  if (error != 0) {
    snprintf(why, whylen, "%s", "the policy service is down");
    return error;
  }
  if (strcmp(r->path, "/metrics") == 0) {
    snprintf(why, whylen, "%s", "metrics are private");
    return 0;
  }
  return 1;
}

static size_t collect(char* p, size_t size, size_t n, void* ud) {
  char* body = ud;
  size_t have = strlen(body), add = size * n;
  if (have + add < 1024) {
    memcpy(body + have, p, add);
    body[have + add] = '\0';
  }
  return size * n;
}

/* GET http://127.0.0.1:port/path: the status, and the body in body[1024]. */
static long http_get(int port, const char* path, char* body) {
  char url[128];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
  body[0] = '\0';
  CURL* c = curl_easy_init();
  ASSERT_NOT_NULL(c);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
  ASSERT_EQ(CURLE_OK, curl_easy_perform(c));
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  return status;
}

/* A host's authorizer is asked after the key checks about the operations
 * routes (not /healthz), denies with its reason, and an authorizer error
 * denies too (fail closed). */
TEST_IMPL(authorizer_denies) {
  store_fixture_setup(&fx, "authz", "pvjobs", jobs_lua);
  authz_state_t st;
  memset(&st, 0, sizeof(st));
  uv_mutex_init(&st.lock);
  ath_authorizer_t az;
  memset(&az, 0, sizeof(az));
  az.size = sizeof(az);
  az.ud = &st;
  az.authorize = authz_cb;
  const char* modules[] = {fx.module, NULL};
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  cfg.min_workers = cfg.max_workers = 1;
  cfg.persistence = ATH_PERSIST_MEMORY;
  cfg.modules = modules;
  cfg.lua_path = fx.lua_path;
  cfg.log_file = fx.log_path;
  cfg.authorizer = &az;
  char err[512], body[1024];
  ath_world_t* w;
  ASSERT_OK(ath_world_new(&cfg, &w, err, sizeof(err)));
  ASSERT_OK(ath_world_start(w, err, sizeof(err)));
  int port;
  ASSERT_OK(ath_world_serve(w, "127.0.0.1", 0, ATH_SERVE_METRICS | ATH_SERVE_DASHBOARD, &port, err,
                            sizeof(err)));
  ASSERT_EQ(403, http_get(port, "/metrics", body));
  ASSERT_NOT_NULL(strstr(body, "metrics are private"));
  uv_mutex_lock(&st.lock);
  ASSERT_STR_EQ("operations GET /metrics read -", st.last);
  uv_mutex_unlock(&st.lock);
  ASSERT_EQ(200, http_get(port, "/api/metrics", body));
  uv_mutex_lock(&st.lock);
  int calls = st.calls;
  uv_mutex_unlock(&st.lock);
  ASSERT_EQ(200, http_get(port, "/healthz", body)); /* not asked */
  uv_mutex_lock(&st.lock);
  ASSERT_EQ(calls, st.calls);
  st.error = ATH_EIO;
  uv_mutex_unlock(&st.lock);
  ASSERT_EQ(403, http_get(port, "/api/metrics", body));
  ASSERT_NOT_NULL(strstr(body, "authorization failed (EIO): the policy service is down"));
  close_world(w);
  uv_mutex_destroy(&st.lock);
  store_fixture_teardown(&fx);
  return 0;
}
