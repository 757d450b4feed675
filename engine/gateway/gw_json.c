/* The request-body JSON tree (engine/gateway/gw_json.h): yajl's callback parser
 * builds it into an arena, so freeing a document is one walk over its
 * chunks and a 1 MiB `[[[[...` costs nothing past depth 64, where the parse
 * stops. */
#include <locale.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "athena.h"
#include "gw_json.h"
#include "utf8.h"

/* ---------------------------------------------------------------- arena */

#define ARENA_CHUNK 16384 /* bytes; bigger requests get a chunk of their own */
#define ARENA_ALIGN 16

struct ath_gw_chunk_s {
  ath_gw_chunk_t* next;
  size_t used;
  size_t cap;
  /* Aligned so that the first allocation is aligned as well. */
  _Alignas(ARENA_ALIGN) unsigned char mem[];
};

void* ath__gw_arena_alloc(ath_gw_arena_t* a, size_t n) {
  ath_gw_chunk_t* c = a->head;
  size_t need = (n + (ARENA_ALIGN - 1)) & ~(size_t)(ARENA_ALIGN - 1);
  if (need < n)
    return NULL;
  if (c == NULL || c->cap - c->used < need) {
    size_t cap = need > ARENA_CHUNK / 4 ? need : ARENA_CHUNK;
    if (cap > SIZE_MAX - sizeof *c)
      return NULL;
    c = malloc(sizeof *c + cap);
    if (c == NULL)
      return NULL;
    c->used = 0;
    c->cap = cap;
    if (a->head != NULL && need > ARENA_CHUNK / 4) {
      /* A big block goes behind the current chunk, which keeps its room. */
      c->next = a->head->next;
      a->head->next = c;
    } else {
      c->next = a->head;
      a->head = c;
    }
  }
  c->used += need;
  return c->mem + c->used - need;
}

char* ath__gw_arena_strdup(ath_gw_arena_t* a, const char* s, size_t n) {
  char* p;
  if (n == SIZE_MAX)
    return NULL;
  p = ath__gw_arena_alloc(a, n + 1);
  if (p == NULL)
    return NULL;
  if (n != 0)
    memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void ath__gw_arena_free(ath_gw_arena_t* a) {
  ath_gw_chunk_t* c = a->head;
  while (c != NULL) {
    ath_gw_chunk_t* next = c->next;
    free(c);
    c = next;
  }
  a->head = NULL;
}

/* --------------------------------------------------------------- buffer */

void ath__gw_buf_put(ath_gw_buf_t* b, const char* s, size_t n) {
  if (b->oom)
    return;
  if (b->data == NULL || n >= b->cap - b->len) {
    size_t cap = b->cap != 0 ? b->cap : 128;
    char* p;
    if (n > SIZE_MAX / 4 - b->len) {
      b->oom = 1;
      return;
    }
    while (cap < b->len + n + 1)
      cap *= 2;
    p = realloc(b->data, cap);
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->data = p;
    b->cap = cap;
  }
  if (n != 0)
    memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void ath__gw_buf_puts(ath_gw_buf_t* b, const char* s) {
  ath__gw_buf_put(b, s, strlen(s));
}

void ath__gw_buf_putc(ath_gw_buf_t* b, char c) {
  ath__gw_buf_put(b, &c, 1);
}

void ath__gw_buf_free(ath_gw_buf_t* b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->oom = 0;
}

/* ---------------------------------------------------------------- parse */

typedef struct {
  ath_gj_doc_t* doc;
  ath_gj_t* stack[ATH_GJ_MAX_DEPTH]; /* open containers, outermost first */
  int depth;
  const char* key; /* the pending member key of the innermost object */
  size_t klen;
  int oom;
  int too_deep;
} gj_parser_t;

/* Links a new node of `type` into the innermost open container (or makes it
 * the root). Returns NULL and stops the parse when out of memory. */
static ath_gj_t* gj_new(gj_parser_t* p, ath_gj_type_t type) {
  ath_gj_t* v = ath__gw_arena_alloc(&p->doc->arena, sizeof *v);
  if (v == NULL) {
    p->oom = 1;
    return NULL;
  }
  memset(v, 0, sizeof *v);
  v->type = type;
  if (p->depth == 0) {
    p->doc->root = v;
    return v;
  }
  ath_gj_t* parent = p->stack[p->depth - 1];
  if (parent->type == ATH_GJ_OBJECT) {
    v->key = p->key;
    v->klen = p->klen;
  }
  if (parent->last != NULL)
    parent->last->next = v;
  else
    parent->first = v;
  parent->last = v;
  parent->count++;
  return v;
}

static int gj_null(void* ctx) {
  return gj_new(ctx, ATH_GJ_NULL) != NULL;
}

static int gj_boolean(void* ctx, int b) {
  ath_gj_t* v = gj_new(ctx, ATH_GJ_BOOL);
  if (v == NULL)
    return 0;
  v->boolean = b != 0;
  return 1;
}

static int gj_number(void* ctx, const char* s, size_t n) {
  gj_parser_t* p = ctx;
  ath_gj_t* v = gj_new(p, ATH_GJ_NUMBER);
  if (v == NULL)
    return 0;
  v->str = ath__gw_arena_strdup(&p->doc->arena, s, n);
  if (v->str == NULL) {
    p->oom = 1;
    return 0;
  }
  v->len = n;
  /* JSON numbers count as integral when written without '.'/exponent (§7). */
  v->integral = memchr(s, '.', n) == NULL && memchr(s, 'e', n) == NULL &&
                memchr(s, 'E', n) == NULL;
  return 1;
}

static int gj_string(void* ctx, const unsigned char* s, size_t n) {
  gj_parser_t* p = ctx;
  ath_gj_t* v = gj_new(p, ATH_GJ_STRING);
  if (v == NULL)
    return 0;
  v->str = ath__gw_arena_strdup(&p->doc->arena, (const char*)s, n);
  if (v->str == NULL) {
    p->oom = 1;
    return 0;
  }
  v->len = n;
  return 1;
}

static int gj_key(void* ctx, const unsigned char* s, size_t n) {
  gj_parser_t* p = ctx;
  p->key = ath__gw_arena_strdup(&p->doc->arena, (const char*)s, n);
  if (p->key == NULL) {
    p->oom = 1;
    return 0;
  }
  p->klen = n;
  return 1;
}

static int gj_open(gj_parser_t* p, ath_gj_type_t type) {
  ath_gj_t* v;
  if (p->depth >= ATH_GJ_MAX_DEPTH) {
    p->too_deep = 1;
    return 0;
  }
  v = gj_new(p, type);
  if (v == NULL)
    return 0;
  p->stack[p->depth++] = v;
  return 1;
}

static int gj_start_map(void* ctx) {
  return gj_open(ctx, ATH_GJ_OBJECT);
}

static int gj_start_array(void* ctx) {
  return gj_open(ctx, ATH_GJ_ARRAY);
}

static int gj_end(void* ctx) {
  gj_parser_t* p = ctx;
  p->depth--;
  return 1;
}

static const yajl_callbacks gj_callbacks = {
  gj_null, gj_boolean, NULL, NULL, gj_number, gj_string,
  gj_start_map, gj_key, gj_end, gj_start_array, gj_end,
};

static int all_blank(const char* s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
      return 0;
  return 1;
}

int ath__gj_parse(const char* text, size_t len, ath_gj_doc_t** out,
                  size_t* err_at) {
  gj_parser_t p;
  yajl_handle h;
  yajl_status st;
  ath_gj_doc_t* doc;
  int rc = 0;

  *out = NULL;
  if (err_at != NULL)
    *err_at = 0;
  doc = calloc(1, sizeof *doc);
  if (doc == NULL)
    return ATH_ENOMEM;
  memset(&p, 0, sizeof p);
  p.doc = doc;
  if (text == NULL || all_blank(text, len)) {
    if (!gj_open(&p, ATH_GJ_OBJECT)) {
      ath__gj_free(doc);
      return ATH_ENOMEM;
    }
    *out = doc;
    return 0;
  }
  if (!ath__json_text_check(text, len, err_at)) {
    ath__gj_free(doc); /* invalid UTF-8, or a lone surrogate escape */
    return ATH_EINVAL;
  }
  h = yajl_alloc(&gj_callbacks, NULL, &p);
  if (h == NULL) {
    ath__gj_free(doc);
    return ATH_ENOMEM;
  }
  st = yajl_parse(h, (const unsigned char*)text, len);
  if (st == yajl_status_ok)
    st = yajl_complete_parse(h);
  if (st != yajl_status_ok) {
    rc = p.oom ? ATH_ENOMEM : ATH_EINVAL;
    if (err_at != NULL)
      *err_at = yajl_get_bytes_consumed(h);
  } else if (doc->root == NULL) {
    rc = ATH_EINVAL;
  }
  yajl_free(h);
  if (rc != 0) {
    ath__gj_free(doc);
    return rc;
  }
  *out = doc;
  return 0;
}

void ath__gj_free(ath_gj_doc_t* doc) {
  if (doc == NULL)
    return;
  ath__gw_arena_free(&doc->arena);
  free(doc);
}

/* ---------------------------------------------------------------- query */

const ath_gj_t* ath__gj_get(const ath_gj_t* obj, const char* key) {
  const ath_gj_t* found = NULL;
  const ath_gj_t* c;
  size_t n;
  if (obj == NULL || obj->type != ATH_GJ_OBJECT)
    return NULL;
  n = strlen(key);
  for (c = obj->first; c != NULL; c = c->next)
    if (c->klen == n && memcmp(c->key, key, n) == 0)
      found = c;
  return found;
}

const ath_gj_t* ath__gj_field(const ath_gj_t* obj, const char* key) {
  const ath_gj_t* v = ath__gj_get(obj, key);
  return v != NULL && v->type != ATH_GJ_NULL ? v : NULL;
}

int ath__gj_winners(const ath_gj_t* obj, unsigned char* win) {
  size_t n = obj->count, cap = 16, i, j;
  const ath_gj_t** slot;
  const ath_gj_t* c;
  while (cap < n * 2)
    cap *= 2;
  slot = calloc(cap, sizeof *slot);
  if (slot == NULL)
    return ATH_ENOMEM;
  /* Walk backwards by collecting pointers first: the last occurrence of a
   * key is the first one seen from the end. */
  const ath_gj_t** items = malloc((n ? n : 1) * sizeof *items);
  if (items == NULL) {
    free(slot);
    return ATH_ENOMEM;
  }
  for (c = obj->first, i = 0; c != NULL; c = c->next, i++)
    items[i] = c;
  for (i = n; i-- > 0;) {
    uint64_t h = 1469598103934665603u;
    for (j = 0; j < items[i]->klen; j++)
      h = (h ^ (unsigned char)items[i]->key[j]) * 1099511628211u;
    for (j = (size_t)h & (cap - 1);; j = (j + 1) & (cap - 1)) {
      if (slot[j] == NULL) {
        slot[j] = items[i];
        win[i] = 1;
        break;
      }
      if (slot[j]->klen == items[i]->klen &&
          memcmp(slot[j]->key, items[i]->key, items[i]->klen) == 0) {
        win[i] = 0;
        break;
      }
    }
  }
  free(items);
  free(slot);
  return 0;
}

static const ath_gj_t* get_n(const ath_gj_t* obj, const char* key, size_t n) {
  const ath_gj_t* found = NULL;
  const ath_gj_t* c;
  for (c = obj->first; c != NULL; c = c->next)
    if (c->klen == n && memcmp(c->key, key, n) == 0)
      found = c;
  return found;
}

int ath__gj_equal(const ath_gj_t* a, const ath_gj_t* b) {
  const ath_gj_t *x, *y;
  if (a->type != b->type)
    return 0;
  switch (a->type) {
    case ATH_GJ_NULL:
      return 1;
    case ATH_GJ_BOOL:
      return a->boolean == b->boolean;
    case ATH_GJ_NUMBER:
      if (a->len == b->len && memcmp(a->str, b->str, a->len) == 0)
        return 1;
      if (a->integral && b->integral)
        return 0; /* integer literals that differ in text differ in value,
                     unless written with leading zeros, which JSON forbids */
      return ath__gw_strtod(a->str, NULL) == ath__gw_strtod(b->str, NULL);
    case ATH_GJ_STRING:
      return a->len == b->len && memcmp(a->str, b->str, a->len) == 0;
    case ATH_GJ_ARRAY:
      if (a->count != b->count)
        return 0;
      for (x = a->first, y = b->first; x != NULL; x = x->next, y = y->next)
        if (!ath__gj_equal(x, y))
          return 0;
      return 1;
    case ATH_GJ_OBJECT: {
      /* Small objects only: policy `set` values and condition values are
       * compared, never whole bodies, so the quadratic lookup is bounded by
       * what one member can hold; larger ones are compared as unequal. */
      size_t na = 0, nb = 0, i;
      unsigned char *wa, *wb;
      int eq = 1;
      if (a->count > 256 || b->count > 256)
        return 0;
      wa = malloc(a->count + 1);
      wb = malloc(b->count + 1);
      if (wa == NULL || wb == NULL || ath__gj_winners(a, wa) != 0 ||
          ath__gj_winners(b, wb) != 0) {
        free(wa);
        free(wb);
        return 0;
      }
      for (x = a->first, i = 0; eq && x != NULL; x = x->next, i++) {
        if (!wa[i])
          continue;
        na++;
        y = get_n(b, x->key, x->klen);
        if (y == NULL || !ath__gj_equal(x, y))
          eq = 0;
      }
      for (i = 0; i < b->count; i++)
        nb += wb[i];
      free(wa);
      free(wb);
      return eq && na == nb;
    }
  }
  return 0;
}

double ath__gw_strtod(const char* s, char** end) {
  char* stop;
  double d = strtod(s, &stop);
  const char* pt;
  if (*stop == '.' && (pt = localeconv()->decimal_point) != NULL &&
      pt[0] != '\0' && pt[0] != '.' && pt[1] == '\0') {
    size_t n = strlen(s);
    char* copy = malloc(n + 1);
    if (copy != NULL) {
      char* e2;
      memcpy(copy, s, n + 1);
      copy[stop - s] = pt[0];
      d = strtod(copy, &e2);
      stop = (char*)s + (e2 - copy);
      free(copy);
    }
  }
  if (end != NULL)
    *end = stop;
  return d;
}

/* --------------------------------------------------------------- output */

static void put_json_str(ath_gw_buf_t* b, const char* s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t i, run = 0;
  ath__gw_buf_putc(b, '"');
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\')
      continue;
    ath__gw_buf_put(b, s + run, i - run);
    run = i + 1;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      ath__gw_buf_put(b, e, 2);
    } else {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      ath__gw_buf_put(b, e, 6);
    }
  }
  ath__gw_buf_put(b, s + run, n - run);
  ath__gw_buf_putc(b, '"');
}

void ath__gj_write(ath_gw_buf_t* b, const ath_gj_t* v) {
  const ath_gj_t* c;
  int first = 1;
  switch (v->type) {
    case ATH_GJ_NULL:
      ath__gw_buf_puts(b, "null");
      return;
    case ATH_GJ_BOOL:
      ath__gw_buf_puts(b, v->boolean ? "true" : "false");
      return;
    case ATH_GJ_NUMBER:
      ath__gw_buf_put(b, v->str, v->len);
      return;
    case ATH_GJ_STRING:
      put_json_str(b, v->str, v->len);
      return;
    case ATH_GJ_ARRAY:
      ath__gw_buf_putc(b, '[');
      for (c = v->first; c != NULL; c = c->next) {
        if (!first)
          ath__gw_buf_putc(b, ',');
        first = 0;
        ath__gj_write(b, c);
      }
      ath__gw_buf_putc(b, ']');
      return;
    case ATH_GJ_OBJECT: {
      size_t i = 0;
      unsigned char* win = malloc(v->count + 1);
      if (win == NULL || ath__gj_winners(v, win) != 0) {
        free(win);
        b->oom = 1;
        return;
      }
      ath__gw_buf_putc(b, '{');
      for (c = v->first; c != NULL; c = c->next, i++) {
        if (!win[i])
          continue; /* only the member that counts: the last duplicate */
        if (!first)
          ath__gw_buf_putc(b, ',');
        first = 0;
        put_json_str(b, c->key, c->klen);
        ath__gw_buf_putc(b, ':');
        ath__gj_write(b, c);
      }
      ath__gw_buf_putc(b, '}');
      free(win);
      return;
    }
  }
}
