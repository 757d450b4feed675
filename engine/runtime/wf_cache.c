/* A worker's cache of parked workflow coroutines (SEMANTICS §9.4, the
 * "sticky" cache): by task, least recently parked first out. Only the
 * worker's own thread touches it; worker.c moves coroutines in and out
 * and closes the evicted ones. */
#include <stdlib.h>
#include "internal.h"

struct ath_wfcache_s {
  ath_wfc_entry_t** buckets; /* by task pointer */
  size_t nbuckets;
  int n, cap;
  ath_wfc_entry_t* mru;      /* most recently parked; ->older towards lru */
  ath_wfc_entry_t* lru;
  ath_wfc_entry_t* spare;    /* freed entries for reuse (through hnext) */
  int nspare;
};

/* Entries freed are kept for the next parks, up to this many: a step
 * takes one out and puts one back. */
#define WFC_SPARE 64

static size_t bucket_of(const ath_wfcache_t* c, const ath_task_t* t) {
  uintptr_t h = (uintptr_t)t;
  h ^= h >> 17;
  h *= (uintptr_t)0x9e3779b97f4a7c15ull;
  return (size_t)(h >> 7) & (c->nbuckets - 1);
}

ath_wfcache_t* ath__wfc_new(int cap) {
  ath_wfcache_t* c = calloc(1, sizeof(*c));
  if (c == NULL)
    return NULL;
  size_t nb = 16;
  while (nb < (size_t)cap * 2 && nb < ((size_t)1 << 24))
    nb *= 2;
  if ((c->buckets = calloc(nb, sizeof(*c->buckets))) == NULL) {
    free(c);
    return NULL;
  }
  c->nbuckets = nb;
  c->cap = cap;
  return c;
}

void ath__wfc_free(ath_wfcache_t* c) {
  if (c != NULL) {
    free(c->buckets);
    while (c->spare != NULL) {
      ath_wfc_entry_t* e = c->spare;
      c->spare = e->hnext;
      free(e);
    }
  }
  free(c);
}

ath_wfc_entry_t* ath__wfc_entry_new(ath_wfcache_t* c) {
  ath_wfc_entry_t* e = c->spare;
  if (e == NULL)
    return malloc(sizeof(*e));
  c->spare = e->hnext;
  c->nspare--;
  return e;
}

void ath__wfc_entry_free(ath_wfcache_t* c, ath_wfc_entry_t* e) {
  if (c == NULL || c->nspare >= WFC_SPARE) {
    free(e);
    return;
  }
  e->hnext = c->spare;
  c->spare = e;
  c->nspare++;
}

int ath__wfc_count(const ath_wfcache_t* c) {
  return c->n;
}

int ath__wfc_full(const ath_wfcache_t* c) {
  return c->n >= c->cap;
}

static void lru_unlink(ath_wfcache_t* c, ath_wfc_entry_t* e) {
  if (e->newer != NULL)
    e->newer->older = e->older;
  else
    c->mru = e->older;
  if (e->older != NULL)
    e->older->newer = e->newer;
  else
    c->lru = e->newer;
  e->newer = e->older = NULL;
}

static void unlink_entry(ath_wfcache_t* c, ath_wfc_entry_t* e) {
  for (ath_wfc_entry_t** p = &c->buckets[bucket_of(c, e->task)]; *p; p = &(*p)->hnext) {
    if (*p == e) {
      *p = e->hnext;
      break;
    }
  }
  lru_unlink(c, e);
  c->n--;
}

void ath__wfc_put(ath_wfcache_t* c, ath_wfc_entry_t* e) {
  size_t b = bucket_of(c, e->task);
  e->hnext = c->buckets[b];
  c->buckets[b] = e;
  e->newer = NULL;
  e->older = c->mru;
  if (c->mru != NULL)
    c->mru->newer = e;
  else
    c->lru = e;
  c->mru = e;
  c->n++;
}

ath_wfc_entry_t* ath__wfc_take(ath_wfcache_t* c, const ath_task_t* t) {
  for (ath_wfc_entry_t* e = c->buckets[bucket_of(c, t)]; e != NULL; e = e->hnext) {
    if (e->task == t) {
      unlink_entry(c, e);
      return e;
    }
  }
  return NULL;
}

const ath_wfc_entry_t* ath__wfc_lru(const ath_wfcache_t* c) {
  return c->lru;
}

ath_wfc_entry_t* ath__wfc_take_lru(ath_wfcache_t* c) {
  ath_wfc_entry_t* e = c->lru;
  if (e != NULL)
    unlink_entry(c, e);
  return e;
}
