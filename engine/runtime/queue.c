/* Ready queues and the delay heap. The caller holds the world lock.
 *
 * A queue keeps one FIFO list per priority level, highest level first. Within
 * a level tasks are ordered by (ready_at, seq): a new task is appended, and
 * walks back from the tail only when it became ready earlier than the tail
 * (a delayed or recovered task), so the common push and pop are O(1). */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

/* Returns whether `a` must be claimed before `b` within one priority. */
static int ready_before(const ath_task_t* a, const ath_task_t* b) {
  if (a->ready_at != b->ready_at)
    return a->ready_at < b->ready_at;
  return a->seq < b->seq;
}

static ath_bucket_t* bucket_for(ath_queue_t* q, int priority) {
  int lo = 0, hi = q->nbuckets;
  while (lo < hi) { /* buckets are sorted by priority, descending */
    int mid = (lo + hi) / 2;
    if (q->buckets[mid].priority == priority)
      return &q->buckets[mid];
    if (q->buckets[mid].priority > priority)
      lo = mid + 1;
    else
      hi = mid;
  }
  ath_bucket_t* nb = realloc(q->buckets, (q->nbuckets + 1) * sizeof(*nb));
  if (nb == NULL)
    return NULL;
  q->buckets = nb;
  memmove(&nb[lo + 1], &nb[lo], (q->nbuckets - lo) * sizeof(*nb));
  nb[lo].priority = priority;
  nb[lo].head = nb[lo].tail = NULL;
  q->nbuckets++;
  return &nb[lo];
}

/* Links t into b after `after` (NULL: at the head). */
static void insert_after(ath_bucket_t* b, ath_task_t* t, ath_task_t* after) {
  t->qprev = after;
  t->qnext = after ? after->qnext : b->head;
  if (t->qnext)
    t->qnext->qprev = t;
  else
    b->tail = t;
  if (after)
    after->qnext = t;
  else
    b->head = t;
}

/* Counts the workflows no worker started yet in and out of q->new_wf. */
static void count_new(ath_queue_t* q, const ath_task_t* t, int d) {
  if (t->wf != NULL && !t->wf->resuming)
    q->new_wf += d;
}

int ath__queue_push(ath_queue_t* q, ath_task_t* t) {
  ath_bucket_t* b = bucket_for(q, t->priority);
  if (b == NULL)
    return ATH_ENOMEM;
  ath_task_t* after = b->tail;
  while (after != NULL && ready_before(t, after))
    after = after->qprev;
  insert_after(b, t, after);
  q->depth++;
  count_new(q, t, 1);
  return 0;
}

int ath__queue_unpop(ath_queue_t* q, ath_task_t* t) {
  ath_bucket_t* b = bucket_for(q, t->priority);
  if (b == NULL)
    return ATH_ENOMEM;
  /* it was at the head when taken: walk from there */
  ath_task_t* before = b->head;
  while (before != NULL && ready_before(before, t))
    before = before->qnext;
  insert_after(b, t, before ? before->qprev : b->tail);
  count_new(q, t, 1);
  return 0;
}

void ath__list_append(ath_bucket_t* b, ath_task_t* t) {
  t->qnext = NULL;
  t->qprev = b->tail;
  if (b->tail)
    b->tail->qnext = t;
  else
    b->head = t;
  b->tail = t;
}

void ath__list_unlink(ath_bucket_t* b, ath_task_t* t) {
  if (t->qprev)
    t->qprev->qnext = t->qnext;
  else
    b->head = t->qnext;
  if (t->qnext)
    t->qnext->qprev = t->qprev;
  else
    b->tail = t->qprev;
  t->qprev = t->qnext = NULL;
}

ath_task_t* ath__queue_pop(ath_queue_t* q) {
  for (int i = 0; i < q->nbuckets; i++) {
    ath_task_t* t = q->buckets[i].head;
    if (t != NULL && t->unborn)
      return NULL;
    if (t != NULL) {
      ath__list_unlink(&q->buckets[i], t);
      q->depth--;
      count_new(q, t, -1);
      return t;
    }
  }
  return NULL;
}

void ath__queue_remove(ath_queue_t* q, ath_task_t* t) {
  for (int i = 0; i < q->nbuckets; i++) {
    if (q->buckets[i].priority == t->priority) {
      ath__list_unlink(&q->buckets[i], t);
      q->depth--;
      count_new(q, t, -1);
      return;
    }
  }
}

void ath__queue_free(ath_queue_t* q) {
  uv_mutex_destroy(&q->sub.lock);
  free(q->buckets);
  free(q);
}

/* ---------------------------------------------------------- submissions
 *
 * A queue's submit list and sleepers (ath_subq_t), under the queue's own
 * lock: an execute appends and wakes without the world lock; the world
 * lock's holders drain (ath__submits_drain). A worker going to sleep with
 * a free slot lists itself (its exchange, world lock held) after checking,
 * under this lock, that nothing was appended since its drain: so either
 * the worker sees the append or the appender sees the worker. */

int ath__sub_init(ath_queue_t* q) {
  return uv_mutex_init(&q->sub.lock) == 0 ? 0 : ATH_ENOMEM;
}

void ath__sub_set_open(ath_queue_t* q, int open) {
  uv_mutex_lock(&q->sub.lock);
  q->sub.open = open;
  uv_mutex_unlock(&q->sub.lock);
}

int ath__sub_append(ath_world_t* w, ath_queue_t* q, ath_task_t* head, ath_task_t* tail, int64_t n,
                    ath_worker_t** wake, int cap, int* nwake) {
  ath_subq_t* s = &q->sub;
  int k = 0;
  uv_mutex_lock(&s->lock);
  if (!s->open) {
    uv_mutex_unlock(&s->lock);
    *nwake = 0;
    return ATH_ESHUTDOWN;
  }
  tail->qnext = NULL;
  if (s->tail != NULL)
    s->tail->qnext = head;
  else
    s->head = head;
  s->tail = tail;
  s->n += n;
  atomic_fetch_add_explicit(&w->submitted, n, memory_order_release);
  while (s->sleepers != NULL && k < cap && k < n) {
    ath_worker_t* wk = s->sleepers;
    s->sleepers = wk->sleep_next;
    wk->sleep_next = NULL;
    atomic_store_explicit(&wk->listed, 0, memory_order_relaxed);
    /* listed: not stopped, and not freed while a wake holds it */
    atomic_fetch_add_explicit(&wk->wakes_held, 1, memory_order_relaxed);
    wake[k++] = wk;
  }
  uv_mutex_unlock(&s->lock);
  *nwake = k;
  return 0;
}

ath_task_t* ath__sub_take(ath_world_t* w, ath_queue_t* q, int64_t* n) {
  ath_subq_t* s = &q->sub;
  uv_mutex_lock(&s->lock);
  ath_task_t* head = s->head;
  *n = s->n;
  s->head = s->tail = NULL;
  s->n = 0;
  atomic_fetch_sub_explicit(&w->submitted, *n, memory_order_relaxed);
  uv_mutex_unlock(&s->lock);
  return head;
}

int ath__sub_listen(ath_worker_t* wk, int idle) {
  if (atomic_load_explicit(&wk->listed, memory_order_relaxed))
    return 0; /* listed since before its drain: any append since popped it */
  ath_subq_t* s = &wk->queue->sub;
  uv_mutex_lock(&s->lock);
  int pending = s->head != NULL;
  if (!pending) {
    ath_worker_t** p = &s->sleepers;
    while (!idle && *p != NULL) /* idle workers first (SEMANTICS §5.2) */
      p = &(*p)->sleep_next;
    wk->sleep_next = *p;
    *p = wk;
    atomic_store_explicit(&wk->listed, 1, memory_order_relaxed);
  }
  uv_mutex_unlock(&s->lock);
  return pending;
}

void ath__sub_unlisten(ath_worker_t* wk) {
  ath_subq_t* s = &wk->queue->sub;
  uv_mutex_lock(&s->lock);
  for (ath_worker_t** p = &s->sleepers; *p != NULL; p = &(*p)->sleep_next) {
    if (*p == wk) {
      *p = wk->sleep_next;
      wk->sleep_next = NULL;
      break;
    }
  }
  atomic_store_explicit(&wk->listed, 0, memory_order_relaxed);
  uv_mutex_unlock(&s->lock);
}

/* ---------------------------------------------------------------- heap */

int ath__task_ready_less(const void* a, const void* b) {
  const ath_task_t* x = a;
  const ath_task_t* y = b;
  if (x->ready_mono != y->ready_mono)
    return x->ready_mono < y->ready_mono;
  return x->seq < y->seq;
}

static uint32_t* idx_of(const ath_heap_t* h, void* e) {
  return (uint32_t*)((char*)e + h->idx_off);
}

static void heap_set(ath_heap_t* h, uint32_t i, void* e) {
  h->items[i] = e;
  *idx_of(h, e) = i;
}

static void sift_up(ath_heap_t* h, uint32_t i) {
  void* e = h->items[i];
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (!h->less(e, h->items[p]))
      break;
    heap_set(h, i, h->items[p]);
    i = p;
  }
  heap_set(h, i, e);
}

static void sift_down(ath_heap_t* h, uint32_t i) {
  void* e = h->items[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= h->len)
      break;
    if (c + 1 < h->len && h->less(h->items[c + 1], h->items[c]))
      c++;
    if (!h->less(h->items[c], e))
      break;
    heap_set(h, i, h->items[c]);
    i = c;
  }
  heap_set(h, i, e);
}

int ath__heap_push(ath_heap_t* h, void* e) {
  if (h->len == h->cap) {
    uint32_t cap = h->cap ? h->cap * 2 : 64;
    void** items = realloc(h->items, cap * sizeof(*items));
    if (items == NULL)
      return ATH_ENOMEM;
    h->items = items;
    h->cap = cap;
  }
  heap_set(h, h->len++, e);
  sift_up(h, h->len - 1);
  return 0;
}

void* ath__heap_peek(const ath_heap_t* h) {
  return h->len ? h->items[0] : NULL;
}

void ath__heap_remove(ath_heap_t* h, void* e) {
  uint32_t i = *idx_of(h, e);
  *idx_of(h, e) = UINT32_MAX;
  if (--h->len == i)
    return;
  void* last = h->items[h->len];
  heap_set(h, i, last);
  sift_down(h, i);
  if (h->items[i] == last) /* it did not sink: it may need to rise */
    sift_up(h, i);
}

void ath__heap_fix(ath_heap_t* h, void* e) {
  uint32_t i = *idx_of(h, e);
  sift_down(h, i);
  if (h->items[i] == e)
    sift_up(h, i);
}

void* ath__heap_pop(ath_heap_t* h) {
  void* e = ath__heap_peek(h);
  if (e != NULL)
    ath__heap_remove(h, e);
  return e;
}

void ath__heap_free(ath_heap_t* h) {
  free(h->items);
  h->items = NULL;
  h->len = h->cap = 0;
}
