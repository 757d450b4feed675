/* Webhooks of the LocalBackend (SEMANTICS §15): events POSTed as JSON to a
 * URL by a thread of their own with libcurl, so a slow or dead endpoint
 * never blocks or fails the engine. An event sink (athena.h) takes the
 * URL's place: the same events, outbox and retries, delivered by a call.
 *
 * The outbox is in memory and bounded: past ATH_HOOK_MAX events the oldest
 * is dropped and counted. A delivery is a 2xx answer within 10 s; a failed
 * one is tried again after 1 s, 2 s, 4 s, 8 s (five attempts in all), then
 * dropped with a warning. Order is not guaranteed. */
#include <curl/curl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define ATH_HOOK_MAX 10000
#define ATH_HOOK_ATTEMPTS 5
#define ATH_HOOK_TIMEOUT_MS 10000

static const char* const event_names[] = {
  "task.completed", "task.failed", "task.retrying", "task.quarantined",
  "task.cancelled", "schedule.fired", "worker.lost",
};

struct ath_event_s {
  ath_event_t* next;
  int kind;
  int attempts;          /* deliveries tried */
  int64_t due;           /* wall ms of the next try */
  int64_t at;            /* wall ms of the event */
  char id[37];           /* delivery id (X-Athena-Delivery) */
  size_t len;
  char* body;            /* {"id","event","at","data"}, owned; NULL until built */
  /* A task event, recorded under the world lock without any JSON: the
   * task (a reference) and the state it had. The webhook thread writes the
   * body from them before the first delivery. */
  ath_task_t* task;
  ath_status_t status;
  int attempt;
  char* error;           /* the error value's JSON (a copy), or NULL */
  size_t error_len;
  int64_t key;           /* > 0: the done callback's (an outbox row) */
};

struct ath_hook_s {
  char* url;             /* or NULL: the sink */
  const ath_event_sink_t* sink;
  unsigned mask;         /* bit per ATH_EV_* */
  uv_mutex_t lock;
  uv_cond_t cond;
  ath_event_t* head;     /* ready and waiting events, due order not kept */
  ath_event_t* tail;
  int n;
  int stop;
  int64_t drain_until;   /* at stop: events due before this still go out */
  uv_thread_t thread;
  atomic_ullong dropped; /* outbox full, or out of attempts */
  ath_log_t* log;
  atomic_ullong delivered;
  void (*done)(void* ud, int64_t key); /* under lock */
  void* done_ud;
};

int ath__hook_event(const char* name) {
  for (int i = 0; i < (int)(sizeof(event_names) / sizeof(*event_names)); i++)
    if (strcmp(name, event_names[i]) == 0)
      return i;
  return -1;
}

int ath__hook_wants(const ath_hook_t* h, int kind) {
  return h != NULL && (h->mask & (1u << kind)) != 0;
}

uint64_t ath__hook_dropped(const ath_hook_t* h) {
  return h ? atomic_load(&h->dropped) : 0;
}

uint64_t ath__hook_delivered(const ath_hook_t* h) {
  return h ? atomic_load(&h->delivered) : 0;
}

/* Appends e to the outbox (lock held). */
static void outbox_push(ath_hook_t* h, ath_event_t* e) {
  e->next = NULL;
  if (h->tail)
    h->tail->next = e;
  else
    h->head = e;
  h->tail = e;
  h->n++;
}

static void event_free(ath_event_t* e) {
  if (e->task != NULL)
    ath_task_release(e->task);
  free(e->error);
  free(e->body);
  free(e);
}

/* Writes the body around `data` (the event's "data" JSON). Returns 0 or
 * ATH_ENOMEM. */
static int event_body(ath_event_t* e, const char* data, size_t len) {
  size_t cap = len + 160;
  e->body = malloc(cap);
  if (e->body == NULL)
    return ATH_ENOMEM;
  int n = snprintf(e->body, cap, "{\"id\":\"%s\",\"event\":\"%s\",\"at\":%lld,\"data\":", e->id,
                   event_names[e->kind], (long long)e->at);
  memcpy(e->body + n, data, len);
  e->body[n + len] = '}';
  e->body[n + len + 1] = '\0';
  e->len = (size_t)n + len + 1;
  return 0;
}

/* A task event's data (SEMANTICS §15: the task's id, name, kind, status,
 * attempt, queue, parent and error). */
static int task_data(ath_buf_t* b, const ath_hook_task_t* f) {
  ath__buf_lit(b, "{\"id\":");
  ath__buf_json_str(b, f->id);
  ath__buf_lit(b, ",\"name\":");
  ath__buf_json_str(b, f->name);
  char tmp[160];
  int n = snprintf(tmp, sizeof(tmp), ",\"kind\":\"%s\",\"status\":\"%s\",\"attempt\":%d,\"taskQueue\":",
                   f->workflow ? "workflow" : "activity", ath_status_name((ath_status_t)f->status), f->attempt);
  ath__buf_append(b, tmp, (size_t)n);
  ath__buf_json_str(b, f->queue);
  ath__buf_lit(b, ",\"parentId\":");
  if (f->parent_id != NULL)
    ath__buf_json_str(b, f->parent_id);
  else
    ath__buf_lit(b, "null");
  if (f->error != NULL) {
    ath__buf_lit(b, ",\"error\":");
    ath__buf_append(b, f->error, f->error_len);
  }
  ath__buf_lit(b, "}");
  return b->data != NULL ? 0 : ATH_ENOMEM;
}

/* A task event's body, on the webhook thread: the fields read from the
 * task never change once it exists; the others were recorded. */
static int task_body(ath_event_t* e) {
  const ath_task_t* t = e->task;
  const ath_task_t* parent = ath__task_parent(t);
  ath_hook_task_t f = {t->id, t->def->name, t->queue->name, parent ? parent->id : NULL,
                       t->wf != NULL, e->status, e->attempt, e->error, e->error_len};
  ath_buf_t b = {0};
  int rc = task_data(&b, &f);
  if (rc == 0)
    rc = event_body(e, b.data, b.len);
  ath__buf_free(&b);
  return rc;
}

int ath__hook_task_event(int kind, int64_t at, const ath_hook_task_t* f, char delivery[37], char** body,
                         size_t* len) {
  ath_event_t e = {.kind = kind, .at = at};
  ath__uuid4(e.id);
  ath_buf_t b = {0};
  int rc = task_data(&b, f);
  if (rc == 0)
    rc = event_body(&e, b.data, b.len);
  ath__buf_free(&b);
  memcpy(delivery, e.id, sizeof(e.id));
  *body = e.body;
  *len = e.len;
  return rc;
}

/* Queues the events of the list `e` (linked through next, in order),
 * dropping the oldest events past the outbox bound, with one wake-up of
 * the webhook thread. */
static void outbox_add(ath_hook_t* h, ath_event_t* e) {
  ath_event_t* drops = NULL;
  uv_mutex_lock(&h->lock);
  while (e != NULL) {
    ath_event_t* next = e->next;
    if (h->n >= ATH_HOOK_MAX) { /* the oldest goes */
      ath_event_t* drop = h->head;
      h->head = drop->next;
      if (h->head == NULL)
        h->tail = NULL;
      h->n--;
      drop->next = drops;
      drops = drop;
    }
    outbox_push(h, e);
    e = next;
  }
  uv_cond_signal(&h->cond);
  uv_mutex_unlock(&h->lock);
  while (drops != NULL) {
    ath_event_t* next = drops->next;
    atomic_fetch_add(&h->dropped, 1);
    event_free(drops);
    drops = next;
  }
}

static ath_event_t* event_new(ath_hook_t* h, int kind, int64_t at) {
  ath_event_t* e = calloc(1, sizeof(*e));
  if (e == NULL) {
    atomic_fetch_add(&h->dropped, 1);
    return NULL;
  }
  e->kind = kind;
  e->at = at;
  ath__uuid4(e->id);
  return e;
}

void ath__hook_emit(ath_hook_t* h, int kind, int64_t at, const char* data, size_t len) {
  if (!ath__hook_wants(h, kind))
    return;
  ath_event_t* e = event_new(h, kind, at);
  if (e == NULL)
    return;
  if (event_body(e, data, len) != 0) {
    atomic_fetch_add(&h->dropped, 1);
    event_free(e);
    return;
  }
  outbox_add(h, e);
}

/* A task event (no JSON: see ath_event_s), or NULL when not wanted or
 * out of memory (counted as dropped). */
static ath_event_t* task_event(ath_hook_t* h, int kind, int64_t at, ath_task_t* t, const char* error,
                               size_t error_len) {
  if (!ath__hook_wants(h, kind))
    return NULL;
  ath_event_t* e = event_new(h, kind, at);
  if (e == NULL)
    return NULL;
  if (error != NULL && (e->error = ath__memdup(error, error_len)) == NULL) {
    atomic_fetch_add(&h->dropped, 1);
    free(e);
    return NULL;
  }
  e->error_len = error_len;
  e->status = t->status;
  e->attempt = t->attempt;
  ath_task_retain(t);
  e->task = t;
  return e;
}

void ath__hook_emit_task(ath_hook_t* h, int kind, int64_t at, ath_task_t* t, const char* error,
                         size_t error_len) {
  ath_event_t* e = task_event(h, kind, at, t, error, error_len);
  if (e != NULL)
    outbox_add(h, e);
}

void ath__hook_push(ath_event_t** held, ath_event_t* e) {
  e->next = *held;
  *held = e;
}

void ath__hook_hold_task(ath_hook_t* h, ath_event_t** held, int kind, int64_t at, ath_task_t* t,
                         const char* error, size_t error_len) {
  ath_event_t* e = task_event(h, kind, at, t, error, error_len);
  if (e != NULL) /* newest first: ath__hook_post turns the list around */
    ath__hook_push(held, e);
}

void ath__hook_hold_ref(ath_hook_t* h, ath_event_t** held, int kind, int64_t at, ath_task_t* t,
                        ath_status_t status, int attempt) {
  ath_event_t* e = event_new(h, kind, at);
  if (e == NULL) {
    ath_task_release(t);
    return;
  }
  e->status = status;
  e->attempt = attempt;
  e->task = t;
  ath__hook_push(held, e);
}

void ath__hook_post(ath_hook_t* h, ath_event_t* held) {
  ath_event_t* in_order = NULL;
  while (held != NULL) {
    ath_event_t* next = held->next;
    held->next = in_order;
    in_order = held;
    held = next;
  }
  if (in_order != NULL)
    outbox_add(h, in_order);
}

uv_mutex_t* ath__hook_outbox_lock(ath_hook_t* h) {
  return &h->lock;
}

void ath__hook_emit_stored(ath_hook_t* h, int kind, const char* delivery, int64_t at, char* body,
                           size_t len, int64_t key) {
  ath_event_t* e = h != NULL ? event_new(h, kind, at) : NULL;
  if (e == NULL) {
    free(body);
    return;
  }
  snprintf(e->id, sizeof(e->id), "%s", delivery);
  e->body = body;
  e->len = len;
  e->key = key;
  outbox_add(h, e);
}

void ath__hook_on_done(ath_hook_t* h, void (*fn)(void* ud, int64_t key), void* ud) {
  if (h == NULL)
    return;
  uv_mutex_lock(&h->lock);
  h->done = fn;
  h->done_ud = ud;
  uv_mutex_unlock(&h->lock);
}

static size_t discard(char* p, size_t size, size_t n, void* ud) {
  (void)p;
  (void)ud;
  return size * n;
}

/* POSTs one event; returns 1 on a 2xx answer. */
static int deliver(CURL* c, const char* url, ath_event_t* e) {
  char h1[64], h2[80];
  snprintf(h1, sizeof(h1), "X-Athena-Event: %s", event_names[e->kind]);
  snprintf(h2, sizeof(h2), "X-Athena-Delivery: %s", e->id);
  struct curl_slist* hs = curl_slist_append(NULL, "Content-Type: application/json");
  hs = curl_slist_append(hs, h1);
  hs = curl_slist_append(hs, h2);
  hs = curl_slist_append(hs, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hs);
  const char* body = e->body;
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)e->len);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)ATH_HOOK_TIMEOUT_MS);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  if (rc == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(hs);
  return rc == CURLE_OK && status >= 200 && status < 300;
}

static void hook_main(void* arg) {
  ath_hook_t* h = arg;
  CURL* c = h->url != NULL ? curl_easy_init() : NULL;
  uv_mutex_lock(&h->lock);
  for (;;) {
    /* the first event due now, or how long until one is */
    int64_t now = ath__now_ms(), wait = -1;
    if (h->stop && now >= h->drain_until)
      break;
    ath_event_t *e = h->head, *prev = NULL;
    for (; e != NULL; prev = e, e = e->next) {
      if (e->due <= now)
        break;
      if (wait < 0 || e->due - now < wait)
        wait = e->due - now;
    }
    if (e == NULL) {
      if (h->stop)
        break; /* nothing due: what waits for a retry is dropped */
      if (wait < 0)
        uv_cond_wait(&h->cond, &h->lock);
      else
        uv_cond_timedwait(&h->cond, &h->lock, (uint64_t)wait * 1000000u);
      continue;
    }
    if (prev)
      prev->next = e->next;
    else
      h->head = e->next;
    if (h->tail == e)
      h->tail = prev;
    h->n--;
    uv_mutex_unlock(&h->lock);
    if (e->body == NULL && task_body(e) != 0) {
      atomic_fetch_add(&h->dropped, 1); /* out of memory writing it */
      event_free(e);
      uv_mutex_lock(&h->lock);
      continue;
    }
    if (e->task != NULL) { /* written: the task is no longer needed */
      ath_task_release(e->task);
      e->task = NULL;
    }
    char why[256] = "";
    int ok = h->sink != NULL ? h->sink->deliver(h->sink->ud, e->body, e->len, why, sizeof(why)) == 0
                             : c != NULL && deliver(c, h->url, e);
    e->attempts++;
    if ((ok || e->attempts >= ATH_HOOK_ATTEMPTS) && e->key > 0) {
      uv_mutex_lock(&h->lock);
      if (h->done != NULL)
        h->done(h->done_ud, e->key); /* its outbox row goes */
      uv_mutex_unlock(&h->lock);
    }
    if (ok) {
      atomic_fetch_add(&h->delivered, 1);
      event_free(e);
    } else if (e->attempts >= ATH_HOOK_ATTEMPTS) {
      char msg[400];
      snprintf(msg, sizeof(msg), "%s %s (%s) dropped after %d attempts%s%s", h->sink ? "event" : "webhook",
               e->id, event_names[e->kind], e->attempts, why[0] ? ": " : "", why);
      ath__log_write(h->log, ATH_LOG_WARN, msg, NULL, 0);
      atomic_fetch_add(&h->dropped, 1);
      event_free(e);
    } else {
      int64_t backoff = 1000LL << (e->attempts - 1);
      e->due = ath__now_ms() + (backoff > 60000 ? 60000 : backoff);
      uv_mutex_lock(&h->lock);
      outbox_push(h, e);
      uv_mutex_unlock(&h->lock);
    }
    uv_mutex_lock(&h->lock);
  }
  uv_mutex_unlock(&h->lock);
  if (c)
    curl_easy_cleanup(c);
  if (h->sink != NULL && h->sink->size >= offsetof(ath_event_sink_t, close) + sizeof(h->sink->close) &&
      h->sink->close != NULL)
    h->sink->close(h->sink->ud);
}

static void curl_init_once(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
}

int ath__hook_start(const char* url, const ath_event_sink_t* sink, unsigned mask, ath_log_t* log,
                    ath_hook_t** out, char* err, size_t errlen) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, curl_init_once);
  ath_hook_t* h = calloc(1, sizeof(*h));
  if (sink != NULL)
    url = NULL;
  if (h == NULL || (url != NULL && (h->url = strdup(url)) == NULL)) {
    free(h);
    return ATH_ENOMEM;
  }
  h->sink = sink;
  h->mask = mask;
  h->log = log;
  uv_mutex_init(&h->lock);
  uv_cond_init(&h->cond);
  int rc = uv_thread_create(&h->thread, hook_main, h);
  if (rc != 0) {
    snprintf(err, errlen, "cannot start the webhook thread: %s", uv_strerror(rc));
    uv_mutex_destroy(&h->lock);
    uv_cond_destroy(&h->cond);
    free(h->url);
    free(h);
    return ATH_ENOMEM;
  }
  *out = h;
  return 0;
}

void ath__hook_stop(ath_hook_t* h) {
  if (h == NULL)
    return;
  uv_mutex_lock(&h->lock);
  h->stop = 1;
  h->drain_until = ath__now_ms() + 2000; /* a short grace for due events */
  uv_cond_signal(&h->cond);
  uv_mutex_unlock(&h->lock);
  uv_thread_join(&h->thread);
  int left = 0;
  for (ath_event_t* e = h->head; e;) {
    ath_event_t* next = e->next;
    event_free(e);
    left++;
    e = next;
  }
  if (left > 0) {
    char msg[96];
    snprintf(msg, sizeof(msg), "%d %s events undelivered at shutdown", left, h->sink ? "event-sink" : "webhook");
    ath__log_write(h->log, ATH_LOG_WARN, msg, NULL, 0);
  }
  uv_mutex_destroy(&h->lock);
  uv_cond_destroy(&h->cond);
  free(h->url);
  free(h);
}
