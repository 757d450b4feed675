/* Schedules on the PostgreSQL backend (docs/backend-postgres.md
 * "Schedules"; distributed.md §3.10): SEMANTICS §11 across nodes.
 *
 * A schedule is a row of {schema}.schedules. Any node creates, replaces,
 * pauses, resumes, deletes and lists them through its reader connection
 * (synchronously, from the calling thread); each change NOTIFYs
 * athena_sched. Only the leader fires: on its backend thread and its
 * leader connection (so a leader whose session died cannot fire), it scans
 * the earliest armed rows (the schedules_due index), fires what is due, all
 * of a pass in one transaction and round trip (per occurrence a
 * compare-and-set on next_ms + the task "<id>@<t>" ON CONFLICT DO NOTHING:
 * two leaders still make one task), and
 * sleeps until the next occurrence, an athena_sched notification or the
 * poll. Its first pass after taking the lock catches up per catchUp what
 * came due while no node led. Times are the database's clock. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "store.h"
#include "queue.h"

#define SCAN_LIMIT 100 /* armed rows per scan */

/* The call failed because the connection broke, and a reconnect worked:
 * worth once more (every schedule statement is safe to repeat). */
#define QP (ath__dq_provider(w))
static int again(ath_queue_conn_t* q, int rc) {
  return rc == ATH_ESTORE && strncmp(ath__q_sqlstate(q), "08", 2) == 0 && ath__q_reset(q) == 0;
}

static int store_err(ath_queue_conn_t* q, int rc, char* err, size_t errlen) {
  if (rc == ATH_ESTORE && err != NULL)
    snprintf(err, errlen, "%s: %s", ath__q_name(ATH_Q(q)), ath__q_errmsg(q));
  return rc;
}

/* The definition hash: every field of s that shapes its tasks, each as
 * <length>:<bytes> (unambiguous), hashed to 16 hex digits. */
static int definition(const ath_queue_schedule_t* s, char out[17]) {
  ath_buf_t b = {0};
  const char* strs[4] = {s->name, s->input, s->cron ? s->cron : "", s->queue ? s->queue : ""};
  char num[160];
  for (int i = 0; i < 4; i++) {
    int n = snprintf(num, sizeof(num), "%zu:", strlen(strs[i]));
    ath__buf_append(&b, num, (size_t)n);
    ath__buf_append(&b, strs[i], strlen(strs[i]));
  }
  int n = snprintf(num, sizeof(num), "|%d|%" PRId64 "|%d|%d|%d|%d|%d|%d|%" PRId64, s->cron != NULL,
                   s->cron ? 0 : s->once_at, s->local_tz, s->catch_up, s->overlap_skip, s->priority,
                   s->strategy, s->max_attempts, s->close_after_ms);
  ath__buf_append(&b, num, (size_t)n);
  if (b.data == NULL)
    return ATH_ENOMEM;
  snprintf(out, 17, "%016" PRIx64, ath__hash_str(b.data));
  ath__buf_free(&b);
  return 0;
}

/* The next occurrence of a stored schedule after `now` (0: none). */
static int64_t next_after(const char* cron, int local_tz, int64_t once_at, int64_t now) {
  if (cron == NULL)
    return once_at;
  ath_cron_t c;
  int64_t next = 0;
  if (ath__cron_parse(cron, &c, NULL, 0) != 0 || ath__cron_next(&c, now, local_tz, &next) != 0)
    return 0;
  return next;
}

/* ------------------------------------------------------------ any node */

int ath__pgsched_put(ath_world_t* w, const ath_sched_t* s, char* err, size_t errlen) {
  if (!ath__q_can_schedules(QP)) {
    snprintf(err, errlen, "the queue provider %s keeps no schedules", ath__q_name(QP));
    return ATH_ENOSYS;
  }
  uv_mutex_lock(&w->lock);
  int state = w->state;
  uv_mutex_unlock(&w->lock);
  if (state != ATH_W_STARTED) {
    snprintf(err, errlen, "%s", state == ATH_W_NEW ? "schedule before start()" : "world is shutting down");
    return state == ATH_W_NEW ? ATH_EINVAL : ATH_ESHUTDOWN;
  }
  ath_strategy_t strategy;
  int max_attempts;
  ath__task_policy(w, s->def, &s->def->a, s->o.failure_strategy, &strategy, &max_attempts);
  char* input = ath__memdup(s->input, s->input_len); /* a C host's payload need not end in NUL */
  if (input == NULL)
    return ATH_ENOMEM;
  ath_queue_schedule_t row = {
    .id = s->id, .name = s->def->name, .input = input, .cron = s->cron_expr,
    .queue = s->queue_name ? s->queue_name : s->def->queue->name, .once_at = s->once_at,
    .local_tz = s->o.local_tz, .catch_up = s->o.catch_up, .overlap_skip = s->o.overlap_skip,
    .priority = s->o.has_priority ? s->o.priority : s->def->a.priority, .strategy = (int)strategy,
    .max_attempts = max_attempts, .close_after_ms = s->def->a.schedule_to_close_ms};
  char def[17];
  if (definition(&row, def) != 0) {
    free(input);
    return ATH_ENOMEM;
  }
  row.definition = def;
  ath_queue_conn_t* rd = ath__dq_reader(w);
  if (rd == NULL) {
    free(input);
    snprintf(err, errlen, "%s", "world is shutting down");
    return ATH_ESHUTDOWN;
  }
  int64_t now = 0;
  int rc = ath__q_now(rd, &now);
  if (again(rd, rc))
    rc = ath__q_now(rd, &now);
  if (rc == 0) {
    row.next_ms = s->cron_expr ? next_after(s->cron_expr, s->o.local_tz, 0, now) : s->once_at;
    rc = ath__q_schedule_put(rd, &row, NULL);
    if (again(rd, rc))
      rc = ath__q_schedule_put(rd, &row, NULL);
  }
  rc = store_err(rd, rc, err, errlen);
  ath__dq_reader_done(w);
  free(input);
  return rc;
}

int ath__pgsched_pause(ath_world_t* w, const char* id, int paused) {
  if (!ath__q_can_schedules(QP))
    return ATH_ENOTFOUND; /* none could be made */
  ath_queue_conn_t* rd = ath__dq_reader(w);
  int rc = 0, found = 0;
  if (paused) {
    rc = ath__q_schedule_pause(rd, id, &found);
    if (again(rd, rc))
      rc = ath__q_schedule_pause(rd, id, &found);
  } else { /* the next occurrence after now: what came due while paused is skipped */
    ath_queue_scheds_t rows;
    rc = ath__q_schedules(rd, id, &rows);
    if (again(rd, rc))
      rc = ath__q_schedules(rd, id, &rows);
    if (rc == 0) {
      const ath_queue_sched_row_t* r = rows.n == 1 ? &rows.rows[0] : NULL;
      found = r != NULL;
      if (r != NULL && r->paused)
        rc = ath__q_schedule_resume(rd, id, next_after(r->cron, r->local_tz, r->once_at, rows.now), NULL);
      ath__q_scheds_free(QP, &rows);
    }
  }
  if (rc != 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "%s of schedule %s failed: PostgreSQL: %s",
              paused ? "pause" : "resume", id, ath__q_errmsg(rd));
  ath__dq_reader_done(w);
  return rc != 0 ? rc : found ? 0 : ATH_ENOTFOUND;
}

int ath__pgsched_delete(ath_world_t* w, const char* id) {
  if (!ath__q_can_schedules(QP))
    return ATH_ENOTFOUND;
  ath_queue_conn_t* rd = ath__dq_reader(w);
  int found = 0;
  int rc = ath__q_schedule_delete(rd, id, &found);
  if (again(rd, rc))
    rc = ath__q_schedule_delete(rd, id, &found);
  if (rc != 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "delete of schedule %s failed: PostgreSQL: %s", id, ath__q_errmsg(rd));
  ath__dq_reader_done(w);
  return rc != 0 ? rc : found ? 0 : ATH_ENOTFOUND;
}

int ath__pgsched_list(ath_world_t* w, ath_schedule_info_t** out, size_t* n) {
  *out = NULL;
  *n = 0;
  if (!ath__q_can_schedules(QP))
    return 0;
  ath_queue_conn_t* rd = ath__dq_reader(w);
  ath_queue_scheds_t rows;
  int rc = ath__q_schedules(rd, NULL, &rows);
  if (again(rd, rc))
    rc = ath__q_schedules(rd, NULL, &rows);
  if (rc != 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "getSchedules failed: PostgreSQL: %s", ath__q_errmsg(rd));
  ath__dq_reader_done(w);
  if (rc != 0)
    return rc;
  ath_schedule_info_t* a = calloc(rows.n ? rows.n : 1, sizeof(*a));
  rc = a ? 0 : ATH_ENOMEM;
  size_t k = 0;
  for (; rc == 0 && k < rows.n; k++) { /* by id, as the statement orders them */
    const ath_queue_sched_row_t* r = &rows.rows[k];
    ath_schedule_info_t* o = &a[k];
    o->id = strdup(r->id);
    o->name = strdup(r->name);
    o->input = strdup(r->input);
    o->cron = r->cron ? strdup(r->cron) : NULL;
    o->local_tz = r->local_tz;
    o->catch_up = r->catch_up;
    o->overlap_skip = r->overlap_skip;
    o->paused = r->paused;
    o->total = r->total;
    o->skipped = r->skipped;
    o->last_ms = r->last_ms > 0 ? r->last_ms : 0;
    o->next_ms = r->next_ms > 0 ? r->next_ms : 0;
    if (!o->id || !o->name || !o->input || (r->cron && !o->cron))
      rc = ATH_ENOMEM;
  }
  ath__q_scheds_free(QP, &rows);
  if (rc != 0) {
    ath_schedules_free(a, k);
    return rc;
  }
  *out = a;
  *n = k;
  return 0;
}

/* ------------------------------------------------------------ the leader */

/* The occurrences a pass fires, written ATH_QUEUE_FIRE_MAX at a time in one
 * transaction and round trip (the provider's schedule_fire_many). */
typedef struct {
  ath_queue_fire_t f[ATH_QUEUE_FIRE_MAX];
  ath_queue_fired_t out[ATH_QUEUE_FIRE_MAX];
  size_t n;
} batch_t;

/* Writes the batch; the fires that made a task are told to the world. */
static int flush(ath_world_t* w, ath_queue_conn_t* ldr, batch_t* b) {
  int rc = ath__q_schedule_fire_many(ldr, b->f, b->n, b->out);
  if (rc != 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "firing %zu schedule occurrence(s) failed: PostgreSQL: %s", b->n,
              ath__q_errmsg(ldr));
  uv_mutex_lock(&w->lock);
  for (size_t i = 0; rc == 0 && i < b->n; i++) {
    if (!b->out[i].created)
      continue;
    char task_id[600];
    snprintf(task_id, sizeof(task_id), "%s@%" PRId64, b->f[i].id, b->f[i].at);
    ath__sched_fired(w, b->f[i].id, task_id, b->f[i].at);
  }
  uv_mutex_unlock(&w->lock);
  b->n = 0;
  return rc;
}

/* Adds one occurrence (its strings must live until the batch is flushed). */
static int add_fire(ath_world_t* w, ath_queue_conn_t* ldr, batch_t* b, const ath_queue_fire_t* f) {
  b->f[b->n++] = *f;
  return b->n == ATH_QUEUE_FIRE_MAX ? flush(w, ldr, b) : 0;
}

/* Adds what is due of row r at database time now (see ath__pgsched_fire).
 * A schedule's caught-up occurrences chain: each expects the next_ms the
 * one before it leaves, so if another leader moved the row, none fires. */
static int fire_row(ath_world_t* w, ath_queue_conn_t* ldr, batch_t* b, const ath_queue_sched_row_t* r, int64_t now,
                    int catch_up, int64_t* occ) {
  ath_queue_fire_t f = {.id = r->id, .expect = r->next_ms, .at = r->next_ms, .fire = 1};
  if (r->cron == NULL) /* a one-off: its task, and the row goes */
    return add_fire(w, ldr, b, &f);
  ath_cron_t c;
  if (ath__cron_parse(r->cron, &c, NULL, 0) != 0) { /* not ours to fire: disarmed, never busy */
    f.fire = 0;
    return add_fire(w, ldr, b, &f);
  }
  /* in steady state every due occurrence fires, in order (as the local
   * timer does); the first pass after taking the lead applies catchUp */
  int64_t dropped = 0;
  size_t n = ath__sched_missed(&c, r->local_tz, r->next_ms, now, catch_up ? r->catch_up : ATH_CATCHUP_ALL,
                               occ, &dropped);
  if (n == 0) { /* catchUp "none": to the first occurrence after now, nothing fired */
    f.fire = 0;
    f.next = next_after(r->cron, r->local_tz, 0, now);
    return add_fire(w, ldr, b, &f);
  }
  if (dropped > 0)
    ath__logf(w, ATH_LOG_WARN, NULL, 0, "schedule %s missed %lld runs; the oldest %lld are skipped", r->id,
              (long long)(dropped + ATH_MAX_CATCH_UP), (long long)dropped);
  f.skip = dropped;
  for (size_t i = 0; i < n; i++) {
    f.at = occ[i];
    f.next = next_after(r->cron, r->local_tz, 0, occ[i]);
    int rc = add_fire(w, ldr, b, &f);
    if (rc != 0)
      return rc;
    f.expect = f.next;
    f.skip = 0;
  }
  return 0;
}

int ath__pgsched_fire(ath_world_t* w, ath_queue_conn_t* ldr, int catch_up, uint64_t* next_ns) {
  if (!ath__q_can_schedules(QP)) {
    *next_ns = 0;
    return 0;
  }
  int64_t* occ = malloc(ATH_MAX_CATCH_UP * sizeof(*occ));
  batch_t* b = calloc(1, sizeof(*b));
  if (occ == NULL || b == NULL) {
    free(occ);
    free(b);
    return ATH_ENOMEM;
  }
  int rc = 0;
  for (int more = 1; more && rc == 0;) {
    ath_queue_scheds_t rows;
    if ((rc = ath__q_schedules_due(ldr, SCAN_LIMIT, &rows)) != 0)
      break;
    uint64_t mono = uv_hrtime();
    *next_ns = 0;
    size_t i = 0;
    for (; i < rows.n && rc == 0; i++) {
      const ath_queue_sched_row_t* r = &rows.rows[i];
      if (r->next_ms > rows.now) { /* the earliest not due: sleep until then (+1 ms: it is due by then) */
        *next_ns = mono + (uint64_t)(r->next_ms - rows.now + 1) * 1000000u;
        break;
      }
      rc = fire_row(w, ldr, b, r, rows.now, catch_up, occ);
    }
    if (rc == 0 && b->n > 0)
      rc = flush(w, ldr, b); /* before the rows its fires point into go */
    b->n = 0;
    more = i == SCAN_LIMIT; /* all of them were due: there may be more */
    ath__q_scheds_free(QP, &rows);
  }
  free(occ);
  free(b);
  return rc;
}
