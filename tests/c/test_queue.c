/* Queue ordering (priority, then ready time, then creation) and the delay
 * heap, tested directly on engine/runtime/queue.c. */
#include <stddef.h>
#include <stdlib.h>
#include "internal.h"
#include "task.h"

static ath_task_t* mk(int priority, int64_t ready_at, uint64_t seq) {
  ath_task_t* t = calloc(1, sizeof(ath_task_t) + 1);
  t->priority = priority;
  t->ready_at = ready_at;
  t->ready_mono = (uint64_t)ready_at;
  t->seq = seq;
  t->heap_idx = UINT32_MAX;
  return t;
}

TEST_IMPL(queue_priority_then_fifo) {
  ath_queue_t q = {0};
  /* seq: creation order; pushes interleave priorities */
  int prio[] = {0, 5, 0, 5, -1, 10, 0};
  ath_task_t* ts[7];
  for (int i = 0; i < 7; i++) {
    ts[i] = mk(prio[i], 100 + i, (uint64_t)i);
    ASSERT_OK(ath__queue_push(&q, ts[i]));
  }
  ASSERT_EQ(7, q.depth);
  int expect[] = {5, 1, 3, 0, 2, 6, 4}; /* 10; 5,5; 0,0,0; -1 */
  for (int i = 0; i < 7; i++) {
    ath_task_t* t = ath__queue_pop(&q);
    ASSERT_NOT_NULL(t);
    ASSERT_EQ((int64_t)expect[i], (int64_t)t->seq);
  }
  ASSERT_NULL(ath__queue_pop(&q));
  ASSERT_EQ(0, q.depth);
  for (int i = 0; i < 7; i++)
    free(ts[i]);
  free(q.buckets);
  return 0;
}

TEST_IMPL(queue_ready_time_orders_within_priority) {
  ath_queue_t q = {0};
  /* A delayed task that became ready at t=50 goes before tasks created
   * later but ready at 60 and 70, and after one ready at 40. */
  ath_task_t* a = mk(0, 40, 1);
  ath_task_t* b = mk(0, 60, 2);
  ath_task_t* c = mk(0, 70, 3);
  ath_task_t* d = mk(0, 50, 0); /* created first, delayed */
  ath_task_t* e = mk(0, 70, 4); /* same ready time as c, created after */
  ASSERT_OK(ath__queue_push(&q, a));
  ASSERT_OK(ath__queue_push(&q, b));
  ASSERT_OK(ath__queue_push(&q, e));
  ASSERT_OK(ath__queue_push(&q, c));
  ASSERT_OK(ath__queue_push(&q, d));
  ath_task_t* want[] = {a, d, b, c, e};
  for (int i = 0; i < 5; i++)
    ASSERT(ath__queue_pop(&q) == want[i]);
  free(a), free(b), free(c), free(d), free(e);
  free(q.buckets);
  return 0;
}

/* Tasks taken and put back (a worker's claims ahead it did not start)
 * go back in their place, whatever order they are put back in and
 * whatever arrived meanwhile; the depth is left as it is. */
TEST_IMPL(queue_unpop_restores_order) {
  ath_queue_t q = {0};
  ath_task_t* ts[6];
  for (int i = 0; i < 6; i++) {
    ts[i] = mk(i % 2 ? 5 : 0, 100 + i, (uint64_t)i);
    ASSERT_OK(ath__queue_push(&q, ts[i]));
  }
  ath_task_t* taken[4];
  for (int i = 0; i < 4; i++)
    taken[i] = ath__queue_pop(&q); /* 1, 3, 5, 0 */
  ath_task_t* late = mk(5, 200, 6);
  ASSERT_OK(ath__queue_push(&q, late));
  ASSERT_OK(ath__queue_unpop(&q, taken[3]));
  ASSERT_OK(ath__queue_unpop(&q, taken[0]));
  ASSERT_OK(ath__queue_unpop(&q, taken[2]));
  ASSERT_OK(ath__queue_unpop(&q, taken[1]));
  ASSERT_EQ(6 - 4 + 1, q.depth); /* unchanged by the unpops */
  int expect[] = {1, 3, 5, 6, 0, 2, 4};
  for (int i = 0; i < 7; i++)
    ASSERT_EQ((int64_t)expect[i], (int64_t)ath__queue_pop(&q)->seq);
  ASSERT_NULL(ath__queue_pop(&q));
  for (int i = 0; i < 6; i++)
    free(ts[i]);
  free(late);
  free(q.buckets);
  return 0;
}

TEST_IMPL(queue_remove) {
  ath_queue_t q = {0};
  ath_task_t* ts[5];
  for (int i = 0; i < 5; i++) {
    ts[i] = mk(i % 2, i, (uint64_t)i);
    ASSERT_OK(ath__queue_push(&q, ts[i]));
  }
  ath__queue_remove(&q, ts[1]); /* middle of priority 1: 1, 3 */
  ath__queue_remove(&q, ts[4]); /* tail of priority 0: 0, 2, 4 */
  ath__queue_remove(&q, ts[0]); /* head of priority 0 */
  ASSERT_EQ(2, q.depth);
  ASSERT(ath__queue_pop(&q) == ts[3]);
  ASSERT(ath__queue_pop(&q) == ts[2]);
  ASSERT_NULL(ath__queue_pop(&q));
  for (int i = 0; i < 5; i++)
    free(ts[i]);
  free(q.buckets);
  return 0;
}

/* A queue counts the workflows in it that no worker started yet (claim's
 * balance in exchange.c): a resumption or an activity is not one. */
TEST_IMPL(queue_counts_new_workflows) {
  ath_queue_t q = {0};
  ath_wf_t wfs[3] = {{0}};
  ath_task_t* ts[4];
  for (int i = 0; i < 4; i++)
    ts[i] = mk(0, i, (uint64_t)i);
  ts[0]->wf = &wfs[0];
  ts[1]->wf = &wfs[1];
  ts[2]->wf = &wfs[2];
  wfs[2].resuming = 1; /* parked, due to go on: not new */
  for (int i = 0; i < 4; i++)
    ASSERT_OK(ath__queue_push(&q, ts[i]));
  ASSERT_EQ(2, q.new_wf);
  ASSERT(ath__queue_pop(&q) == ts[0]);
  ASSERT_EQ(1, q.new_wf);
  ASSERT_OK(ath__queue_unpop(&q, ts[0]));
  ASSERT_EQ(2, q.new_wf);
  ath__queue_remove(&q, ts[1]);
  ASSERT_EQ(1, q.new_wf);
  ath__queue_remove(&q, ts[2]);
  ASSERT_EQ(1, q.new_wf);
  ASSERT(ath__queue_pop(&q) == ts[0]);
  ASSERT(ath__queue_pop(&q) == ts[3]);
  ASSERT_EQ(0, q.new_wf);
  for (int i = 0; i < 4; i++)
    free(ts[i]);
  free(q.buckets);
  return 0;
}

TEST_IMPL(heap_order_and_remove) {
  enum { N = 2000 };
  ath_heap_t h = ATH_HEAP_INIT(ath__task_ready_less, ath_task_t, heap_idx);
  static ath_task_t* ts[N];
  srand(7);
  for (int i = 0; i < N; i++) {
    ts[i] = mk(0, rand() % 500, (uint64_t)i);
    ASSERT_OK(ath__heap_push(&h, ts[i]));
  }
  /* remove every third task from wherever it sits */
  for (int i = 0; i < N; i += 3) {
    ath__heap_remove(&h, ts[i]);
    ASSERT_EQ(UINT32_MAX, ts[i]->heap_idx);
  }
  uint64_t last_mono = 0, last_seq = 0;
  int n = 0;
  ath_task_t* t;
  while ((t = ath__heap_pop(&h)) != NULL) {
    ASSERT_NE(0, (int64_t)(t->seq % 3)); /* removed ones never come back */
    ASSERT(t->ready_mono > last_mono || (t->ready_mono == last_mono && (n == 0 || t->seq > last_seq)));
    last_mono = t->ready_mono;
    last_seq = t->seq;
    n++;
  }
  ASSERT_EQ(N - (N + 2) / 3, n);
  for (int i = 0; i < N; i++)
    free(ts[i]);
  ath__heap_free(&h);
  return 0;
}

/* A task keeps the low 32 bits of its store generation (issue 15: the
 * record's size); ath__task_gen widens them against the world's. */
TEST_IMPL(task_gen_widens_32_bits) {
  ath_world_t* w = calloc(1, sizeof(*w));
  ath_task_t* t = mk(0, 0, 0);
  ASSERT(w != NULL && t != NULL);
  uint64_t gens[] = {1, 4294967295u, 4294967296u, 4294967297u, 3 * 4294967296ull + 7};
  for (size_t i = 0; i < sizeof(gens) / sizeof(gens[0]); i++) {
    uint64_t g = gens[i];
    w->gen = g;
    t->dirty_gen = (uint32_t)g; /* marked in the open generation */
    ASSERT_EQ(g, ath__task_gen(w, t));
    w->gen = g + 1000; /* committed long ago (across a 2^32 boundary too) */
    ASSERT_EQ(g, ath__task_gen(w, t));
    w->gen = g - 1; /* a failed commit reopened the generation before it */
    ASSERT_EQ(g, ath__task_gen(w, t));
  }
  /* unchanged for more than 2^32 generations: no newer than the world's,
   * or (when its low bits fall just past the world's) at most 16 newer:
   * at worst a wait for the next commits, never a wait for ever */
  w->gen = 5ull << 32;
  t->dirty_gen = 100;
  ASSERT(ath__task_gen(w, t) <= w->gen);
  t->dirty_gen = 1;
  ASSERT(ath__task_gen(w, t) <= w->gen + 16);
  free(t);
  free(w);
  return 0;
}
