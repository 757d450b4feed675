/* Schedules (SEMANTICS §11): cron and one-off schedules kept by id and in a
 * heap by next due time. The engine thread arms one libuv timer for the
 * earliest due schedule and fires what is due when it expires: no polling.
 * A firing executes the activity through the queue with the id
 * "<scheduleId>@<dueMs>", so a re-fire after a crash finds the same task. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "internal.h"
#include "store.h"


static int sched_less(const void* a, const void* b) {
  const ath_sched_t* x = a;
  const ath_sched_t* y = b;
  if (x->next_ms != y->next_ms)
    return x->next_ms < y->next_ms;
  return x->seq < y->seq; /* same due time: creation order */
}

void ath__sched_release(ath_sched_t* s) {
  if (atomic_fetch_sub(&s->refs, 1) != 1)
    return;
  if (s->last_task)
    ath_task_release(s->last_task);
  free(s->id);
  free(s->input);
  free(s->cron_expr);
  free(s->queue_name);
  free(s);
}

/* Sets the schedule heap up on first use (lock held). */
static void heap_ready(ath_world_t* w) {
  if (w->sheap.less == NULL)
    w->sheap = (ath_heap_t)ATH_HEAP_INIT(sched_less, ath_sched_t, heap_idx);
}

/* ------------------------------------------------------------- the table */

static ath_sched_t* sched_get(ath_world_t* w, const char* id) {
  if (w->stable == NULL)
    return NULL;
  uint64_t h = ath__hash_str(id);
  for (ath_sched_t* s = w->stable[h & (w->stable_cap - 1)]; s; s = s->hnext)
    if (s->hash == h && strcmp(s->id, id) == 0)
      return s;
  return NULL;
}

static int sched_put(ath_world_t* w, ath_sched_t* s) {
  if (w->nsched + 1 > w->stable_cap / 2 || w->stable == NULL) {
    size_t cap = w->stable_cap ? w->stable_cap * 2 : 64;
    ath_sched_t** t = calloc(cap, sizeof(*t));
    if (t == NULL)
      return ATH_ENOMEM;
    for (size_t i = 0; i < w->stable_cap; i++) {
      for (ath_sched_t* e = w->stable[i]; e;) {
        ath_sched_t* next = e->hnext;
        e->hnext = t[e->hash & (cap - 1)];
        t[e->hash & (cap - 1)] = e;
        e = next;
      }
    }
    free(w->stable);
    w->stable = t;
    w->stable_cap = cap;
  }
  s->hash = ath__hash_str(s->id);
  s->hnext = w->stable[s->hash & (w->stable_cap - 1)];
  w->stable[s->hash & (w->stable_cap - 1)] = s;
  w->nsched++;
  return 0;
}

/* Takes s out of the table and the heap (lock held); drops the table's
 * reference after marking the deletion for the store. */
static void sched_unlink(ath_world_t* w, ath_sched_t* s) {
  for (ath_sched_t** p = &w->stable[s->hash & (w->stable_cap - 1)]; *p; p = &(*p)->hnext) {
    if (*p == s) {
      *p = s->hnext;
      w->nsched--;
      break;
    }
  }
  if (s->heap_idx != UINT32_MAX)
    ath__heap_remove(&w->sheap, s);
  s->deleted = 1;
  ath__store_mark_sched(w, s);
  ath__sched_release(s);
}

/* Computes s->next_ms after `after` and puts s in the heap (lock held). */
static void arm(ath_world_t* w, ath_sched_t* s, int64_t after) {
  if (s->heap_idx != UINT32_MAX)
    ath__heap_remove(&w->sheap, s);
  s->next_ms = 0;
  if (s->paused)
    return;
  if (s->cron_expr == NULL) {
    s->next_ms = s->once_at;
  } else if (ath__cron_next(&s->cron, after, s->o.local_tz, &s->next_ms) != 0) {
    s->next_ms = 0; /* no occurrence left (a pathological zone): disabled */
    return;
  }
  ath__heap_push(&w->sheap, s);
}

/* ---------------------------------------------------------------- the API */

static int def_index(ath_world_t* w, const char* name) {
  for (int i = 0; i < w->ndefs; i++)
    if (strcmp(w->defs[i].name, name) == 0)
      return i;
  return -1;
}

static int queue_exists(ath_world_t* w, const char* name) {
  for (int i = 0; i < w->nqueues; i++)
    if (strcmp(w->queues[i]->name, name) == 0)
      return 1;
  return 0;
}

/* Creates or replaces schedule `id` (cron may be NULL: one-off at at_ms). */
static int put_schedule(ath_world_t* w, const char* id, const char* name, char* payload,
                        size_t len, const char* cron, int64_t at_ms,
                        const ath_schedule_opts_t* o, char* err, size_t errlen) {
  ath_schedule_opts_t none = {0};
  if (o == NULL)
    o = &none;
  ath_sched_t* s = NULL;
  int rc = 0;
  int di = def_index(w, name);
  if (di < 0) {
    snprintf(err, errlen, "no activity named %s", name);
    rc = ATH_ENOTFOUND;
  } else if (o->task_queue && !queue_exists(w, o->task_queue)) {
    snprintf(err, errlen, "unknown task queue %s", o->task_queue);
    rc = ATH_EINVAL;
  } else if ((s = calloc(1, sizeof(*s))) == NULL) {
    rc = ATH_ENOMEM;
  } else if (cron != NULL && (rc = ath__cron_parse(cron, &s->cron, err, errlen)) != 0) {
    rc = ATH_EINVAL;
  }
  if (rc == 0) {
    atomic_init(&s->refs, 1);
    s->id = strdup(id);
    s->def = &w->defs[di];
    s->input = payload;
    s->input_len = len;
    payload = NULL;
    s->cron_expr = cron ? strdup(cron) : NULL;
    s->once_at = at_ms;
    s->o = *o;
    s->queue_name = o->task_queue ? strdup(o->task_queue) : NULL;
    s->o.task_queue = s->queue_name;
    s->heap_idx = UINT32_MAX;
    if (!s->id || (cron && !s->cron_expr) || (o->task_queue && !s->queue_name))
      rc = ATH_ENOMEM;
  }
  if (rc != 0) {
    free(payload);
    if (s != NULL) {
      atomic_init(&s->refs, 1);
      s->heap_idx = UINT32_MAX;
      ath__sched_release(s);
    }
    return rc;
  }
  if (w->cfg.backend_url != NULL) { /* a row in the schema; the leader fires it */
    rc = ath__pgsched_put(w, s, err, errlen);
    ath__sched_release(s);
    return rc;
  }
  uv_mutex_lock(&w->lock);
  heap_ready(w); /* under the lock: the engine's tick reads it */
  if (w->state != ATH_W_STARTED) {
    rc = w->state == ATH_W_NEW ? ATH_EINVAL : ATH_ESHUTDOWN;
    snprintf(err, errlen, "%s", rc == ATH_EINVAL ? "schedule before start()" : "world is shutting down");
  } else {
    ath_sched_t* old = sched_get(w, id);
    if (old != NULL) { /* replace: the counters carry over */
      s->total = old->total;
      s->skipped = old->skipped;
      s->last_ms = old->last_ms;
      if (old->last_task) {
        ath_task_retain(old->last_task);
        s->last_task = old->last_task;
      }
      old->deleted = 0;
      for (ath_sched_t** p = &w->stable[old->hash & (w->stable_cap - 1)]; *p; p = &(*p)->hnext)
        if (*p == old) {
          *p = old->hnext;
          w->nsched--;
          break;
        }
      if (old->heap_idx != UINT32_MAX)
        ath__heap_remove(&w->sheap, old);
      ath__sched_release(old);
    }
    rc = sched_put(w, s);
    if (rc == 0) {
      s->seq = w->sched_seq++;
      arm(w, s, ath__wall(w));
      ath__store_mark_sched(w, s);
    }
  }
  uint64_t gen = w->gen;
  if (rc == 0)
    ath__store_wait(w, gen);
  uv_mutex_unlock(&w->lock);
  if (rc != 0) {
    ath__sched_release(s);
    return rc;
  }
  uv_async_send(&w->easync); /* the engine re-arms its timer */
  return 0;
}

int ath_world_schedule(ath_world_t* w, const char* id, const char* name, char* payload,
                       size_t len, const char* cron, const ath_schedule_opts_t* o, char* err,
                       size_t errlen) {
  if (cron == NULL) {
    free(payload);
    snprintf(err, errlen, "%s", "a schedule needs a cron expression");
    return ATH_EINVAL;
  }
  return put_schedule(w, id, name, payload, len, cron, 0, o, err, errlen);
}

int ath_world_schedule_once(ath_world_t* w, const char* name, char* payload, size_t len,
                            int64_t at_ms, const ath_schedule_opts_t* o, char id_out[64],
                            char* err, size_t errlen) {
  char uuid[37];
  ath__uuid4(uuid);
  snprintf(id_out, 64, "once-%s", uuid);
  return put_schedule(w, id_out, name, payload, len, NULL, at_ms, o, err, errlen);
}

static int set_paused(ath_world_t* w, const char* id, int paused) {
  if (w->dq != NULL)
    return ath__pgsched_pause(w, id, paused);
  uv_mutex_lock(&w->lock);
  ath_sched_t* s = sched_get(w, id);
  if (s == NULL) {
    uv_mutex_unlock(&w->lock);
    return ATH_ENOTFOUND;
  }
  if (s->paused != paused) {
    s->paused = paused;
    /* occurrences due while paused are skipped: resume looks after now
     * (a one-off that came due meanwhile fires at once) */
    arm(w, s, ath__wall(w));
    ath__store_mark_sched(w, s);
  }
  ath__store_wait(w, w->gen);
  int started = w->state == ATH_W_STARTED;
  uv_mutex_unlock(&w->lock);
  if (started) /* the engine loop is gone after shutdown */
    uv_async_send(&w->easync);
  return 0;
}

int ath_world_schedule_pause(ath_world_t* w, const char* id) {
  return set_paused(w, id, 1);
}

int ath_world_schedule_resume(ath_world_t* w, const char* id) {
  return set_paused(w, id, 0);
}

int ath_world_schedule_delete(ath_world_t* w, const char* id) {
  if (w->dq != NULL)
    return ath__pgsched_delete(w, id);
  uv_mutex_lock(&w->lock);
  ath_sched_t* s = sched_get(w, id);
  if (s != NULL) {
    sched_unlink(w, s);
    ath__store_wait(w, w->gen);
  }
  uv_mutex_unlock(&w->lock);
  return s ? 0 : ATH_ENOTFOUND;
}

static int by_id(const void* a, const void* b) {
  return strcmp(((const ath_schedule_info_t*)a)->id, ((const ath_schedule_info_t*)b)->id);
}

int ath_world_schedules(ath_world_t* w, ath_schedule_info_t** out, size_t* n) {
  if (w->dq != NULL)
    return ath__pgsched_list(w, out, n);
  uv_mutex_lock(&w->lock);
  size_t k = 0, cap = w->nsched;
  ath_schedule_info_t* a = calloc(cap ? cap : 1, sizeof(*a));
  int rc = a ? 0 : ATH_ENOMEM;
  for (size_t i = 0; rc == 0 && i < w->stable_cap; i++) {
    for (ath_sched_t* s = w->stable[i]; s && rc == 0; s = s->hnext) {
      ath_schedule_info_t* o = &a[k++];
      o->id = strdup(s->id);
      o->name = strdup(s->def->name);
      o->input = ath__memdup(s->input, s->input_len);
      o->cron = s->cron_expr ? strdup(s->cron_expr) : NULL;
      o->local_tz = s->o.local_tz;
      o->catch_up = s->o.catch_up;
      o->overlap_skip = s->o.overlap_skip;
      o->paused = s->paused;
      o->total = s->total;
      o->skipped = s->skipped;
      o->last_ms = s->last_ms;
      o->next_ms = s->next_ms;
      if (!o->id || !o->name || !o->input || (s->cron_expr && !o->cron))
        rc = ATH_ENOMEM;
    }
  }
  uv_mutex_unlock(&w->lock);
  if (rc != 0) {
    ath_schedules_free(a, k);
    return rc;
  }
  qsort(a, k, sizeof(*a), by_id);
  *out = a;
  *n = k;
  return 0;
}

void ath_schedules_free(ath_schedule_info_t* a, size_t n) {
  for (size_t i = 0; a && i < n; i++) {
    free(a[i].id);
    free(a[i].name);
    free(a[i].input);
    free(a[i].cron);
  }
  free(a);
}

/* ------------------------------------------------------------------ firing */

static void stimer_cb(uv_timer_t* h) {
  ath__sched_tick(h->data);
}

void ath__sched_fired(ath_world_t* w, const char* sched_id, const char* task_id, int64_t due) {
  if (!ath__hook_wants(w->hook, ATH_EV_SCHEDULE_FIRED))
    return;
  ath_buf_t b = {0};
  ath__buf_lit(&b, "{\"scheduleId\":");
  ath__buf_json_str(&b, sched_id);
  ath__buf_lit(&b, ",\"taskId\":");
  ath__buf_json_str(&b, task_id);
  char d[40];
  int dn = snprintf(d, sizeof(d), ",\"dueAt\":%lld}", (long long)due);
  ath__buf_append(&b, d, (size_t)dn);
  if (b.data)
    ath__hook_emit(w->hook, ATH_EV_SCHEDULE_FIRED, ath__wall(w), b.data, b.len);
  ath__buf_free(&b);
}

/* One due occurrence, collected under the lock and fired outside it. */
typedef struct {
  ath_sched_t* s;        /* a reference */
  int64_t due;
  char* payload;         /* NULL: skipped (overlap, or no memory) */
  size_t len;
  char* id;              /* the task id, owned */
  ath_task_t* task;      /* the task it created, if it did */
} fire_t;

/* Occurrences fired together must share the activity and options. */
static int same_batch(const fire_t* a, const fire_t* b) {
  const ath_schedule_opts_t* x = &a->s->o;
  const ath_schedule_opts_t* y = &b->s->o;
  return a->s->def == b->s->def && x->has_priority == y->has_priority &&
         x->priority == y->priority && x->failure_strategy == y->failure_strategy &&
         (x->task_queue == y->task_queue ||
          (x->task_queue && y->task_queue && strcmp(x->task_queue, y->task_queue) == 0));
}

static int by_batch(const void* pa, const void* pb) {
  const fire_t* a = pa;
  const fire_t* b = pb;
  if (a->s->def != b->s->def)
    return a->s->def < b->s->def ? -1 : 1;
  if (a->s->o.priority != b->s->o.priority)
    return a->s->o.priority < b->s->o.priority ? -1 : 1;
  return a->due < b->due ? -1 : a->due > b->due;
}

#define FIRE_BATCH 8192

/* Fires every due occurrence, in batches: one executeMany (one lock, one
 * wake per worker) per activity and options, so thousands of schedules due
 * in the same second fire within milliseconds. */
/* Epoch microseconds: timers are armed to the next due millisecond, not
 * the next millisecond after it. */
static int64_t wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void ath__sched_tick(ath_world_t* w) {
  fire_t* fires = NULL;
  char** payloads = NULL;
  size_t* lens = NULL;
  const char** ids = NULL;
  ath_task_t** tasks = NULL;
  char err[256];
  for (;;) {
    int64_t now = ath__wall(w);
    int n = 0;
    int64_t next = 0;
    uv_mutex_lock(&w->lock);
    heap_ready(w);
    ath_sched_t* s = ath__heap_peek(&w->sheap);
    if (fires == NULL && s != NULL && s->next_ms <= now) {
      fires = malloc(FIRE_BATCH * sizeof(*fires));
      payloads = malloc(FIRE_BATCH * sizeof(*payloads));
      lens = malloc(FIRE_BATCH * sizeof(*lens));
      ids = malloc(FIRE_BATCH * sizeof(*ids));
      tasks = malloc(FIRE_BATCH * sizeof(*tasks));
      if (!fires || !payloads || !lens || !ids || !tasks) {
        uv_mutex_unlock(&w->lock);
        ath__logf(w, ATH_LOG_ERROR, NULL, 0, "out of memory firing schedules; retrying in 100 ms");
        if (!w->manual)
          uv_timer_start(&w->stimer, stimer_cb, 100, 0);
        break;
      }
    }
    while (n < FIRE_BATCH && w->state == ATH_W_STARTED &&
           (s = ath__heap_peek(&w->sheap)) != NULL && s->next_ms <= now) {
      fire_t* f = &fires[n++];
      f->s = s;
      f->due = s->next_ms;
      f->task = NULL;
      f->payload = NULL;
      f->id = NULL;
      if (!(s->o.overlap_skip && s->last_task && !ATH_IS_TERMINAL(s->last_task->status))) {
        size_t idlen = strlen(s->id) + 24;
        if ((f->id = malloc(idlen)) != NULL) {
          if (s->cron_expr)
            snprintf(f->id, idlen, "%s@%lld", s->id, (long long)f->due);
          else
            snprintf(f->id, idlen, "%s", s->id);
          f->payload = ath__memdup(s->input, s->input_len);
          f->len = s->input_len;
          if (f->payload == NULL) {
            free(f->id);
            f->id = NULL;
          }
        }
      }
      if (f->payload == NULL)
        s->skipped++; /* overlap = "skip", or out of memory */
      atomic_fetch_add(&s->refs, 1); /* kept while firing outside the lock */
      if (s->cron_expr && ath__cron_next(&s->cron, f->due, s->o.local_tz, &s->next_ms) == 0) {
        ath__heap_fix(&w->sheap, s); /* the top moves down: one sift */
        ath__store_mark_sched(w, s);
      } else if (s->cron_expr) {
        ath__heap_remove(&w->sheap, s); /* no occurrence left: disabled */
        s->next_ms = 0;
        ath__store_mark_sched(w, s);
      } else {
        sched_unlink(w, s); /* a one-off ends with its firing */
      }
    }
    s = ath__heap_peek(&w->sheap);
    if (n < FIRE_BATCH && s != NULL && w->state == ATH_W_STARTED)
      next = s->next_ms;
    uv_mutex_unlock(&w->lock);

    if (n > 0)
      qsort(fires, n, sizeof(fire_t), by_batch);
    for (int i = 0; i < n;) {
      int j = i, k = 0;
      for (; j < n && same_batch(&fires[i], &fires[j]); j++) {
        if (fires[j].payload == NULL)
          continue; /* skipped */
        payloads[k] = fires[j].payload;
        lens[k] = fires[j].len;
        ids[k] = fires[j].id;
        k++;
      }
      if (k > 0) {
        ath_exec_opts_t eo = {0};
        eo.has_priority = fires[i].s->o.has_priority;
        eo.priority = fires[i].s->o.priority;
        eo.task_queue = fires[i].s->o.task_queue;
        eo.failure_strategy = fires[i].s->o.failure_strategy;
        int rc = ath_world_execute(w, fires[i].s->def->name, (size_t)k, payloads, lens, ids, &eo,
                                   tasks, err, sizeof(err));
        int m = 0;
        for (int x = i; x < j; x++) {
          if (fires[x].payload == NULL)
            continue;
          fires[x].payload = NULL; /* taken by execute */
          fires[x].task = rc == 0 ? tasks[m] : NULL;
          m++;
        }
        if (rc != 0)
          ath__logf(w, ATH_LOG_WARN, NULL, 0, "%d schedule firings of %s failed: %s", k,
                    fires[i].s->def->name, err);
      }
      i = j;
    }
    uv_mutex_lock(&w->lock);
    for (int i = 0; i < n; i++) {
      fire_t* f = &fires[i];
      if (f->task != NULL) {
        ath__sched_fired(w, f->s->id, ath_task_id(f->task), f->due);
        f->s->total++;
        f->s->last_ms = f->due;
        if (f->s->last_task)
          ath_task_release(f->s->last_task);
        f->s->last_task = f->task;
        if (!f->s->deleted)
          ath__store_mark_sched(w, f->s);
      } else if (f->id != NULL) {
        f->s->skipped++; /* execute refused it (logged above) */
      }
    }
    uv_mutex_unlock(&w->lock);
    for (int i = 0; i < n; i++) {
      free(fires[i].payload); /* only when it was never handed over */
      free(fires[i].id);
      ath__sched_release(fires[i].s);
    }
    if (n < FIRE_BATCH) {
      if (next != 0 && !w->manual) { /* the manual clock fires in advance() */
        int64_t wait_us = next * 1000 - wall_us();
        uv_update_time(&w->eloop); /* the loop's cached time is stale after a tick */
        uv_timer_start(&w->stimer, stimer_cb, wait_us > 0 ? (uint64_t)(wait_us + 999) / 1000 : 0, 0);
      }
      break;
    }
  }
  free(fires);
  free(payloads);
  free(lens);
  free(ids);
  free(tasks);
}

/* ---------------------------------------------------------------- recovery */

size_t ath__sched_missed(const ath_cron_t* c, int local_tz, int64_t first, int64_t now, int catch_up,
                         int64_t out[ATH_MAX_CATCH_UP], int64_t* dropped) {
  int64_t t = first;
  size_t n = 0;
  *dropped = 0;
  while (t != 0 && t <= now) { /* keep the last ATH_MAX_CATCH_UP */
    out[n % ATH_MAX_CATCH_UP] = t;
    n++;
    if (ath__cron_next(c, t, local_tz, &t) != 0)
      t = 0;
  }
  if (n == 0 || catch_up == ATH_CATCHUP_NONE)
    return 0;
  if (catch_up == ATH_CATCHUP_ONE) {
    out[0] = out[(n - 1) % ATH_MAX_CATCH_UP];
    return 1;
  }
  if (n <= ATH_MAX_CATCH_UP)
    return n;
  *dropped = (int64_t)(n - ATH_MAX_CATCH_UP);
  int64_t tmp[ATH_MAX_CATCH_UP]; /* oldest first */
  for (size_t i = 0; i < ATH_MAX_CATCH_UP; i++)
    tmp[i] = out[(n + i) % ATH_MAX_CATCH_UP];
  memcpy(out, tmp, sizeof(tmp));
  return ATH_MAX_CATCH_UP;
}

int ath__sched_recover_row(void* ud, const ath_srow_t* r) {
  ath_world_t* w = ud;
  int di = def_index(w, r->name);
  if (di < 0) {
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "schedule %s names %s, which is not registered: dropped", r->id,
              r->name);
    return 0;
  }
  ath_sched_t* s = calloc(1, sizeof(*s));
  if (s == NULL)
    return ATH_ENOMEM;
  atomic_init(&s->refs, 1);
  s->heap_idx = UINT32_MAX;
  s->id = strdup(r->id);
  s->def = &w->defs[di];
  s->input = ath__memdup(r->input, r->input_len);
  s->input_len = r->input_len;
  s->cron_expr = r->cron ? strdup(r->cron) : NULL;
  s->once_at = r->once_at;
  s->o.local_tz = r->local_tz;
  s->o.catch_up = r->catch_up;
  s->o.overlap_skip = r->overlap_skip;
  s->o.has_priority = r->has_priority;
  s->o.priority = r->priority;
  s->o.failure_strategy = (ath_strategy_t)r->strategy;
  s->queue_name = r->queue ? strdup(r->queue) : NULL;
  s->o.task_queue = s->queue_name;
  s->paused = r->paused;
  s->next_ms = r->next_ms;
  s->last_ms = r->last_ms;
  s->total = r->total;
  s->skipped = r->skipped;
  char err[256];
  if (!s->id || !s->input || (r->cron && !s->cron_expr) || (r->queue && !s->queue_name) ||
      (r->cron && ath__cron_parse(r->cron, &s->cron, err, sizeof(err)) != 0)) {
    ath__sched_release(s);
    return ATH_ENOMEM;
  }
  uv_mutex_lock(&w->lock);
  heap_ready(w);
  int rc = sched_put(w, s);
  s->seq = w->sched_seq++;
  if (rc == 0 && !s->paused) {
    int64_t now = ath__wall(w);
    if (s->cron_expr && s->next_ms != 0 && s->next_ms <= now) {
      /* Occurrences missed while the process was down (catchUp). */
      if (s->o.catch_up == ATH_CATCHUP_NONE) {
        arm(w, s, now);
      } else {
        int64_t* occ = malloc(ATH_MAX_CATCH_UP * sizeof(*occ));
        int64_t dropped = 0;
        if (occ != NULL && ath__sched_missed(&s->cron, s->o.local_tz, s->next_ms, now, s->o.catch_up, occ,
                                             &dropped) > 0)
          s->next_ms = occ[0]; /* "all": the tick fires the later ones, due too */
        free(occ);
        if (dropped > 0) {
          ath__logf(w, ATH_LOG_WARN, NULL, 0, "schedule %s missed %lld runs; the oldest %lld are skipped",
                    s->id, (long long)(dropped + ATH_MAX_CATCH_UP), (long long)dropped);
          s->skipped += dropped;
        }
        ath__heap_push(&w->sheap, s); /* due: fires as soon as the engine ticks */
      }
    } else if (s->cron_expr == NULL) {
      s->next_ms = s->once_at; /* a past one-off fires at once */
      ath__heap_push(&w->sheap, s);
    } else if (s->next_ms != 0) {
      ath__heap_push(&w->sheap, s);
    } else {
      arm(w, s, now);
    }
    ath__store_mark_sched(w, s);
  }
  uv_mutex_unlock(&w->lock);
  if (rc != 0)
    ath__sched_release(s);
  return rc;
}

void ath__sched_free_all(ath_world_t* w) {
  for (size_t i = 0; i < w->stable_cap; i++) {
    for (ath_sched_t* s = w->stable[i]; s;) {
      ath_sched_t* next = s->hnext;
      ath__sched_release(s);
      s = next;
    }
  }
  free(w->stable);
  w->stable = NULL;
  w->stable_cap = w->nsched = 0;
  ath__heap_free(&w->sheap);
}
