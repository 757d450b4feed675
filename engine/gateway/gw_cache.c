/* The gateway's plan cache (issue 18): each gateway thread keeps the plans
 * it compiled, keyed by the request's shape, and binds the values of the
 * next request of that shape into a copy of one instead of compiling it.
 *
 * A body's shape is its structure (object keys in order, array lengths)
 * with every scalar replaced by its JSON type, plus what else the compiler
 * read (operation, database, catalog, X-Strip-Nulls, full rows, the
 * policies' extra conditions and values). Which scalars are values is
 * what the compiler says: a parameter whose `src` is set came from that
 * scalar and nothing else of the statement depends on it but its type
 * (gw_plan.c decides; `like` patterns and `in` strings are the special
 * cases there). Every other scalar (table and column names, operators,
 * limits, `is` keywords, expressions) is compared byte for byte, so an
 * entry is hit only by a request that the compiler would have compiled to
 * the same SQL; its values are converted by the compiler's own function
 * (ath__gw_param_rebind) and bound, never written into the SQL.
 *
 * Per thread, so no lock: bounded (least recently used out), and emptied
 * when the server's catalogs are read again. An entry a request still
 * uses (off the loop) is freed when that request lets go of it. */
#include <stdlib.h>
#include <string.h>
#include "gw_server.h"

#define MAX_LEAVES 256     /* larger bodies (big inserts) are compiled */
#define MAX_SHAPE 8192     /* bytes of a shape */
#define NO_LEAF UINT32_MAX

struct ath_gwpe_s {
  uint64_t hash;
  char* shape;
  size_t shape_len;
  ath_gw_dialect_t dialect;
  ath_gw_plan_t plan;        /* the template: the first request's values */
  size_t nparams;            /* over stmts in order, then count */
  uint32_t* src;             /* per parameter: its leaf, or NO_LEAF */
  unsigned char* lit;        /* per leaf: compared literally */
  char* litv;                /* those leaves' bytes, each after its u32 length */
  size_t litv_len;
  ath_gwpe_t *newer, *older; /* recency */
  ath_gwpe_t* chain;         /* hash bucket */
  int refs;                  /* requests using its plan */
  int dead;                  /* out of the cache: freed by the last release */
};

struct ath_gwpc_s {
  size_t cap, n;
  ath_gwpe_t** heads;
  size_t mask;
  ath_gwpe_t *newest, *oldest;
  /* the request last shaped */
  ath_buf_t shape;
  const ath_gj_t* leaves[MAX_LEAVES];
  size_t nleaves;
  int uncacheable;
  uint64_t hash;
  ath_gw_dialect_t dialect;
  ath_gwpc_stats_t stats;
};

ath_gwpc_t* ath__gwpc_new(size_t cap) {
  ath_gwpc_t* pc = calloc(1, sizeof(*pc));
  size_t nh = 16;
  while (nh < cap * 2)
    nh *= 2;
  if (pc == NULL || (pc->heads = calloc(nh, sizeof(*pc->heads))) == NULL) {
    free(pc);
    return NULL;
  }
  pc->cap = cap > 0 ? cap : 1;
  pc->mask = nh - 1;
  return pc;
}

static void entry_free(ath_gwpe_t* e) {
  ath__gw_plan_free(&e->plan);
  free(e->shape);
  free(e->src);
  free(e->lit);
  free(e->litv);
  free(e);
}

/* Takes e out of the cache; freed now or by its last release. */
static void unlink_entry(ath_gwpc_t* pc, ath_gwpe_t* e) {
  ath_gwpe_t** p = &pc->heads[e->hash & pc->mask];
  while (*p != e)
    p = &(*p)->chain;
  *p = e->chain;
  if (e->newer)
    e->newer->older = e->older;
  else
    pc->newest = e->older;
  if (e->older)
    e->older->newer = e->newer;
  else
    pc->oldest = e->newer;
  pc->n--;
  if (e->refs > 0)
    e->dead = 1;
  else
    entry_free(e);
}

void ath__gwpc_clear(ath_gwpc_t* pc) {
  while (pc->oldest != NULL)
    unlink_entry(pc, pc->oldest);
  pc->stats.cleared++;
}

void ath__gwpc_free(ath_gwpc_t* pc) {
  if (pc == NULL)
    return;
  ath__gwpc_clear(pc); /* requests are all answered by now */
  free(pc->heads);
  ath__buf_free(&pc->shape);
  free(pc);
}

void ath__gwpc_release(ath_gwpc_t* pc, ath_gwpe_t* e) {
  (void)pc;
  if (e != NULL && --e->refs == 0 && e->dead)
    entry_free(e);
}

ath_gwpc_stats_t ath__gwpc_stats(const ath_gwpc_t* pc) {
  ath_gwpc_stats_t st = pc->stats;
  st.entries = pc->n;
  return st;
}

/* ------------------------------------------------------------------ shape */

static void put_u32(ath_buf_t* b, uint32_t v) {
  ath__buf_append(b, (const char*)&v, sizeof(v));
}

static void put_bytes(ath_buf_t* b, const char* s, size_t n) {
  put_u32(b, (uint32_t)n);
  if (n > 0)
    ath__buf_append(b, s, n);
}

static void shape_of(ath_gwpc_t* pc, const ath_gj_t* v) {
  ath_buf_t* b = &pc->shape;
  switch (v->type) {
    case ATH_GJ_OBJECT:
    case ATH_GJ_ARRAY:
      ath__buf_append(b, v->type == ATH_GJ_OBJECT ? "{" : "[", 1);
      for (const ath_gj_t* it = v->first; it != NULL && !pc->uncacheable; it = it->next) {
        if (v->type == ATH_GJ_OBJECT)
          put_bytes(b, it->key, it->klen);
        shape_of(pc, it);
      }
      ath__buf_append(b, v->type == ATH_GJ_OBJECT ? "}" : "]", 1);
      return;
    default:
      if (pc->nleaves == MAX_LEAVES) {
        pc->uncacheable = 1;
        return;
      }
      pc->leaves[pc->nleaves++] = v;
      /* the type as the compiler tells it: an integral number is another
       * type than 1.5, as a boolean is than a string */
      ath__buf_append(b, v->type == ATH_GJ_NULL     ? "z"
                         : v->type == ATH_GJ_BOOL   ? "b"
                         : v->type == ATH_GJ_STRING ? "s"
                         : v->integral              ? "i"
                                                    : "r",
                      1);
      return;
  }
}

static uint64_t fnv1a(const char* s, size_t n) {
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h;
}

void ath__gwpc_shape(ath_gwpc_t* pc, const ath_gwpc_key_t* k, const ath_gj_t* body) {
  ath_buf_t* b = &pc->shape;
  b->len = 0;
  pc->nleaves = 0;
  pc->uncacheable = 0;
  pc->dialect = k->dialect;
  int head[5] = {(int)k->op, k->db, k->strip_header, k->full_rows, (int)k->dialect};
  ath__buf_append(b, (const char*)&k->cat, sizeof(k->cat));
  ath__buf_append(b, (const char*)head, sizeof(head));
  put_bytes(b, k->conds, k->conds_len);
  put_bytes(b, k->set, k->set_len);
  shape_of(pc, body);
  if (b->data == NULL || b->len > MAX_SHAPE)
    pc->uncacheable = 1;
  if (!pc->uncacheable)
    pc->hash = fnv1a(b->data, b->len);
}

/* ------------------------------------------------------------- entries */

/* A leaf's bytes for the literal comparison. */
static const char* leaf_bytes(const ath_gj_t* v, size_t* n) {
  switch (v->type) {
    case ATH_GJ_BOOL:
      *n = 1;
      return v->boolean ? "1" : "0";
    case ATH_GJ_NUMBER:
    case ATH_GJ_STRING:
      *n = v->len;
      return v->str;
    default:
      *n = 0;
      return "";
  }
}

static int literals_match(const ath_gwpc_t* pc, const ath_gwpe_t* e) {
  const char* p = e->litv;
  for (size_t i = 0; i < pc->nleaves; i++) {
    if (!e->lit[i])
      continue;
    uint32_t len;
    memcpy(&len, p, sizeof(len));
    p += sizeof(len);
    size_t n;
    const char* s = leaf_bytes(pc->leaves[i], &n);
    if (n != len || memcmp(s, p, n) != 0)
      return 0;
    p += len;
  }
  return 1;
}

/* The parameter at flat index j of plan p's statements (then count). */
static ath_gw_param_t* param_at(ath_gw_plan_t* p, size_t j) {
  for (size_t i = 0; i < p->nstmts; i++) {
    if (j < p->stmts[i].nparams)
      return &p->stmts[i].params[j];
    j -= p->stmts[i].nparams;
  }
  return &p->count.params[j];
}

static size_t nparams_of(const ath_gw_plan_t* p) {
  size_t n = p->count.nparams;
  for (size_t i = 0; i < p->nstmts; i++)
    n += p->stmts[i].nparams;
  return n;
}

/* e's plan with the shaped request's values, into *out; its statements
 * and parameters in *bound (one block, the caller frees it). 0, or -1
 * (a value the compiler would have compiled otherwise; out of memory). */
static int bind_values(const ath_gwpc_t* pc, ath_gwpe_t* e, ath_gw_plan_t* out, void** bound) {
  const ath_gw_plan_t* t = &e->plan;
  size_t ns = t->nstmts;
  char* block = malloc((ns + 1) * sizeof(ath_gw_stmt_t) + (e->nparams + 1) * sizeof(ath_gw_param_t));
  if (block == NULL)
    return -1;
  ath_gw_stmt_t* stmts = (ath_gw_stmt_t*)block;
  ath_gw_param_t* params = (ath_gw_param_t*)(block + (ns + 1) * sizeof(ath_gw_stmt_t));
  *out = *t; /* shares the template's SQL, columns and table */
  out->stmts = stmts;
  size_t j = 0;
  for (size_t i = 0; i <= ns; i++) {
    const ath_gw_stmt_t* from = i < ns ? &t->stmts[i] : &t->count;
    ath_gw_stmt_t* to = i < ns ? &stmts[i] : &out->count;
    to->sql = from->sql;
    to->nparams = from->nparams;
    to->params = params + j;
    for (size_t k = 0; k < from->nparams; k++, j++) {
      params[j] = from->params[k];
      if (e->src[j] != NO_LEAF &&
          ath__gw_param_rebind(e->dialect, &from->params[k], pc->leaves[e->src[j]], &params[j]) != 0) {
        free(block);
        return -1;
      }
    }
  }
  *bound = block;
  return 0;
}

static void make_newest(ath_gwpc_t* pc, ath_gwpe_t* e) {
  if (pc->newest == e)
    return;
  if (e->newer) /* linked: out first */
    e->newer->older = e->older;
  if (e->older)
    e->older->newer = e->newer;
  else if (pc->oldest == e)
    pc->oldest = e->newer;
  e->newer = NULL;
  e->older = pc->newest;
  if (pc->newest)
    pc->newest->newer = e;
  pc->newest = e;
  if (pc->oldest == NULL)
    pc->oldest = e;
}

ath_gwpe_t* ath__gwpc_get(ath_gwpc_t* pc, ath_gw_plan_t* out, void** bound) {
  if (pc->uncacheable)
    return NULL;
  for (ath_gwpe_t* e = pc->heads[pc->hash & pc->mask]; e != NULL; e = e->chain) {
    if (e->hash != pc->hash || e->shape_len != pc->shape.len || memcmp(e->shape, pc->shape.data, e->shape_len) != 0 ||
        !literals_match(pc, e))
      continue;
    if (bind_values(pc, e, out, bound) != 0)
      break;
    make_newest(pc, e);
    e->refs++;
    pc->stats.hits++;
    return e;
  }
  pc->stats.misses++;
  return NULL;
}

ath_gwpe_t* ath__gwpc_put(ath_gwpc_t* pc, ath_gw_plan_t* plan, void** bound) {
  if (pc->uncacheable)
    return NULL;
  ath_gwpe_t* e = calloc(1, sizeof(*e));
  if (e == NULL)
    return NULL;
  e->nparams = nparams_of(plan);
  e->src = malloc((e->nparams + 1) * sizeof(*e->src));
  e->lit = malloc(pc->nleaves + 1);
  e->shape = malloc(pc->shape.len);
  if (e->src == NULL || e->lit == NULL || e->shape == NULL) {
    free(e->src);
    free(e->lit);
    free(e->shape);
    free(e);
    return NULL;
  }
  memset(e->lit, 1, pc->nleaves + 1);
  for (size_t j = 0; j < e->nparams; j++) {
    ath_gw_param_t* p = param_at(plan, j);
    e->src[j] = NO_LEAF;
    for (size_t i = 0; p->src != NULL && i < pc->nleaves; i++) {
      if (pc->leaves[i] == p->src) {
        e->src[j] = (uint32_t)i;
        e->lit[i] = 0;
        break;
      }
    }
    p->src = NULL; /* it points into this request's body */
  }
  ath_buf_t lv = {0};
  for (size_t i = 0; i < pc->nleaves; i++) {
    size_t n;
    const char* s = e->lit[i] ? leaf_bytes(pc->leaves[i], &n) : NULL;
    if (s != NULL)
      put_bytes(&lv, s, n);
  }
  put_u32(&lv, 0); /* never empty */
  if (lv.data == NULL) {
    free(e->src);
    free(e->lit);
    free(e->shape);
    free(e);
    return NULL;
  }
  e->litv = lv.data;
  e->litv_len = lv.len;
  memcpy(e->shape, pc->shape.data, pc->shape.len);
  e->shape_len = pc->shape.len;
  e->hash = pc->hash;
  e->dialect = pc->dialect;
  e->plan = *plan;
  if (bind_values(pc, e, plan, bound) != 0) { /* the plan stays the caller's */
    *plan = e->plan;
    memset(&e->plan, 0, sizeof(e->plan));
    entry_free(e);
    return NULL;
  }
  ath_gwpe_t** head = &pc->heads[e->hash & pc->mask];
  e->chain = *head;
  *head = e;
  make_newest(pc, e);
  pc->n++;
  e->refs = 1;
  while (pc->n > pc->cap)
    unlink_entry(pc, pc->oldest);
  return e;
}
