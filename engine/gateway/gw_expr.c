/* Expression strings of `or`/`not` conditions (GATEWAY §3.2), parsed into a
 * tree (engine/gateway/gw_plan.h). Recursive descent whose depth is bounded by
 * `max_depth`; the meaning (columns, types, SQL) is gw_plan.c's business.
 *
 *   list    = item *( "," item )
 *   item    = "and(" list ")" | "or(" list ")" | "not." item | filter
 *   filter  = column "." [ "not." ] op "." literal
 *   literal = "(" [ atom *( "," atom ) ] ")"  |  atom
 *   atom    = '"' text '"' (\" \\ escapes)  |  bare text up to , or )
 */
#include <string.h>

#include "athena.h"
#include "gw_plan.h"

typedef struct {
  const char* s;
  size_t n;
  size_t i;
  ath_gw_arena_t* arena;
  int64_t max_filters, max_depth;
  int64_t* nfilters;
  size_t err_pos;
  const char* err_msg;
  int rc;
} gx_t;

static const char* const gx_ops[] = {
  "eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "is", "in", NULL,
};

static int fail(gx_t* p, size_t pos, const char* msg) {
  if (p->rc == 0) {
    p->rc = ATH_EINVAL;
    p->err_pos = pos;
    p->err_msg = msg;
  }
  return p->rc;
}

static int oom(gx_t* p) {
  p->rc = ATH_ENOMEM;
  return p->rc;
}

static int at(const gx_t* p, const char* word) {
  size_t k = strlen(word);
  return p->n - p->i >= k && memcmp(p->s + p->i, word, k) == 0;
}

static void skip_blank(gx_t* p) {
  while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' ||
                         p->s[p->i] == '\n' || p->s[p->i] == '\r'))
    p->i++;
}

static ath_gx_t* node(gx_t* p, ath_gx_kind_t kind, size_t pos) {
  ath_gx_t* x = ath__gw_arena_alloc(p->arena, sizeof *x);
  if (x == NULL) {
    oom(p);
    return NULL;
  }
  memset(x, 0, sizeof *x);
  x->kind = kind;
  x->pos = pos;
  return x;
}

static void add_child(ath_gx_t* parent, ath_gx_t** tail, ath_gx_t* c) {
  if (*tail == NULL)
    parent->first = c;
  else
    (*tail)->next = c;
  *tail = c;
  parent->n++;
}

/* One atom at p->i. A quoted atom ends at its closing quote, which must be
 * followed by `,`, `)` or the end; a bare one runs up to the next `,` or `)`
 * (dots belong to it). */
static int parse_atom(gx_t* p, ath_gx_atom_t* a) {
  a->pos = p->i;
  if (p->i < p->n && p->s[p->i] == '"') {
    size_t start = ++p->i, end = start, k = 0;
    char* out;
    /* Find the closing quote first, so the copy is exactly as long as the
     * atom (allocating "the rest of the string" per atom would make many
     * short quoted atoms cost quadratic memory). */
    while (end < p->n && p->s[end] != '"')
      end += p->s[end] == '\\' && end + 1 < p->n ? 2 : 1;
    if (end >= p->n)
      return fail(p, a->pos, "unterminated quoted value");
    out = ath__gw_arena_alloc(p->arena, end - start + 1);
    if (out == NULL)
      return oom(p);
    for (;;) {
      char c = p->s[p->i++];
      if (c == '"')
        break;
      if (c == '\\' && p->i < p->n &&
          (p->s[p->i] == '"' || p->s[p->i] == '\\'))
        c = p->s[p->i++];
      out[k++] = c;
    }
    out[k] = '\0';
    a->s = out;
    a->len = k;
    a->quoted = 1;
    if (p->i < p->n && p->s[p->i] != ',' && p->s[p->i] != ')')
      return fail(p, p->i, "expected ',' or ')' after a quoted value");
    return 0;
  }
  size_t start = p->i;
  while (p->i < p->n && p->s[p->i] != ',' && p->s[p->i] != ')')
    p->i++;
  a->s = ath__gw_arena_strdup(p->arena, p->s + start, p->i - start);
  if (a->s == NULL)
    return oom(p);
  a->len = p->i - start;
  a->quoted = 0;
  return 0;
}

/* A parenthesized list of atoms, p->i at the '('. */
static int parse_atom_list(gx_t* p, ath_gx_t* f) {
  size_t cap = 4, open = p->i;
  p->i++; /* '(' */
  f->list = 1;
  f->atoms = ath__gw_arena_alloc(p->arena, cap * sizeof *f->atoms);
  if (f->atoms == NULL)
    return oom(p);
  if (p->i < p->n && p->s[p->i] == ')') {
    p->i++;
    return 0;
  }
  for (;;) {
    if (f->natoms == cap) {
      ath_gx_atom_t* more =
        ath__gw_arena_alloc(p->arena, 2 * cap * sizeof *more);
      if (more == NULL)
        return oom(p);
      memcpy(more, f->atoms, cap * sizeof *more);
      f->atoms = more;
      cap *= 2;
    }
    if (parse_atom(p, &f->atoms[f->natoms]) != 0)
      return p->rc;
    f->natoms++;
    if (p->i >= p->n)
      return fail(p, open, "unclosed '('");
    if (p->s[p->i] == ')') {
      p->i++;
      return 0;
    }
    p->i++; /* ',' */
  }
}

static int count_filter(gx_t* p, size_t pos) {
  if (++*p->nfilters > p->max_filters) {
    p->rc = ATH_GX_TOO_MANY;
    p->err_pos = pos;
    p->err_msg = "too many filters";
    return p->rc;
  }
  return 0;
}

/* column "." ["not."] op "." — shared by filters and the 0.2.1 quirk.
 * Leaves p->i after the op's dot. */
static int parse_filter_head(gx_t* p, ath_gx_t* f) {
  size_t start = p->i, k;
  while (p->i < p->n && p->s[p->i] != '.' && p->s[p->i] != ',' &&
         p->s[p->i] != '(' && p->s[p->i] != ')' && p->s[p->i] != '"')
    p->i++;
  if (p->i == start)
    return fail(p, start, "expected a column name");
  if (p->i >= p->n || p->s[p->i] != '.')
    return fail(p, p->i, "expected '.' after the column name");
  f->col = p->s + start;
  f->col_len = p->i - start;
  p->i++;
  if (at(p, "not.")) {
    f->negate = 1;
    p->i += 4;
  }
  start = p->i;
  while (p->i < p->n && p->s[p->i] >= 'a' && p->s[p->i] <= 'z')
    p->i++;
  k = p->i - start;
  if (k == 0 || k >= sizeof f->op)
    return fail(p, start, "expected an operator");
  memcpy(f->op, p->s + start, k);
  f->op[k] = '\0';
  for (k = 0; gx_ops[k] != NULL; k++)
    if (strcmp(gx_ops[k], f->op) == 0)
      break;
  if (gx_ops[k] == NULL)
    return fail(p, start, "unknown operator");
  if (p->i >= p->n || p->s[p->i] != '.')
    return fail(p, p->i, "expected '.' after the operator");
  p->i++;
  return 0;
}

static int parse_filter(gx_t* p, ath_gx_t** out) {
  ath_gx_t* f = node(p, ATH_GX_FILTER, p->i);
  if (f == NULL)
    return p->rc;
  if (count_filter(p, p->i) != 0 || parse_filter_head(p, f) != 0)
    return p->rc;
  if (p->i < p->n && p->s[p->i] == '(') {
    if (parse_atom_list(p, f) != 0)
      return p->rc;
  } else {
    f->atoms = ath__gw_arena_alloc(p->arena, sizeof *f->atoms);
    if (f->atoms == NULL)
      return oom(p);
    if (parse_atom(p, &f->atoms[0]) != 0)
      return p->rc;
    f->natoms = 1;
  }
  *out = f;
  return 0;
}

static int parse_list(gx_t* p, ath_gx_t* parent, int depth, int nested);

static int parse_item(gx_t* p, ath_gx_t** out, int depth) {
  ath_gx_t* x;
  skip_blank(p);
  if (at(p, "and(") || at(p, "or(")) {
    ath_gx_kind_t kind = p->s[p->i] == 'a' ? ATH_GX_AND : ATH_GX_OR;
    size_t open = p->i;
    if (depth >= p->max_depth)
      return fail(p, open, "nested too deeply");
    x = node(p, kind, open);
    if (x == NULL)
      return p->rc;
    p->i += kind == ATH_GX_AND ? 4 : 3;
    if (parse_list(p, x, depth + 1, 1) != 0)
      return p->rc;
    if (p->i >= p->n || p->s[p->i] != ')')
      return fail(p, open, "unclosed '('");
    p->i++;
    *out = x;
    return 0;
  }
  if (at(p, "not.")) {
    ath_gx_t* inner = NULL;
    if (depth >= p->max_depth)
      return fail(p, p->i, "nested too deeply");
    x = node(p, ATH_GX_NOT, p->i);
    if (x == NULL)
      return p->rc;
    p->i += 4;
    if (parse_item(p, &inner, depth + 1) != 0)
      return p->rc;
    x->first = inner;
    x->n = 1;
    *out = x;
    return 0;
  }
  return parse_filter(p, out);
}

static int parse_list(gx_t* p, ath_gx_t* parent, int depth, int nested) {
  ath_gx_t* tail = NULL;
  for (;;) {
    ath_gx_t* item = NULL;
    if (parse_item(p, &item, depth) != 0)
      return p->rc;
    add_child(parent, &tail, item);
    skip_blank(p);
    if (p->i >= p->n)
      return 0;
    if (p->s[p->i] == ')') {
      if (nested)
        return 0;
      return fail(p, p->i, "unexpected ')'");
    }
    if (p->s[p->i] != ',')
      return fail(p, p->i, "expected ','");
    p->i++;
  }
}

/* 0.2.1's not("id","in",[1,2]) sends "id.in.1,2": when the whole value is
 * one `in` filter, its list without parentheses is accepted. */
static int parse_quirk(gx_t* p, ath_gx_t** out) {
  ath_gx_t* f = node(p, ATH_GX_FILTER, 0);
  size_t cap;
  if (f == NULL)
    return p->rc;
  p->i = 0;
  if (parse_filter_head(p, f) != 0 || strcmp(f->op, "in") != 0 ||
      (p->i < p->n && p->s[p->i] == '('))
    return ATH_EINVAL;
  cap = 1;
  for (size_t j = p->i; j < p->n; j++)
    cap += p->s[j] == ',';
  f->atoms = ath__gw_arena_alloc(p->arena, cap * sizeof *f->atoms);
  if (f->atoms == NULL)
    return oom(p);
  f->list = 1;
  for (;;) {
    if (parse_atom(p, &f->atoms[f->natoms]) != 0)
      return p->rc;
    f->natoms++;
    if (p->i >= p->n)
      break;
    if (p->s[p->i] != ',')
      return ATH_EINVAL;
    p->i++;
  }
  *out = f;
  return 0;
}

int ath__gx_parse(const char* s, size_t n, ath_gw_arena_t* arena,
                  int64_t max_filters, int64_t max_depth, int64_t* nfilters,
                  ath_gx_t** out, size_t* err_pos, const char** err_msg) {
  gx_t p;
  ath_gx_t* root;
  int64_t before = *nfilters;
  memset(&p, 0, sizeof p);
  p.s = s;
  p.n = n;
  p.arena = arena;
  p.max_filters = max_filters;
  p.max_depth = max_depth;
  p.nfilters = nfilters;
  *out = NULL;
  root = node(&p, ATH_GX_OR, 0); /* the top-level list; the caller decides
                                    whether it is ORed (or) or ANDed (not) */
  if (root == NULL)
    return ATH_ENOMEM;
  if (n == 0) {
    fail(&p, 0, "empty expression");
  } else if (parse_list(&p, root, 0, 0) == 0) {
    *out = root;
    return 0;
  }
  if (p.rc == ATH_EINVAL) {
    /* Keep the first error unless the 0.2.1 form parses. */
    gx_t q = p;
    ath_gx_t* f = NULL;
    q.rc = 0;
    *nfilters = before + 1;
    if (before + 1 <= max_filters && parse_quirk(&q, &f) == 0) {
      root->first = f;
      root->n = 1;
      f->next = NULL;
      *out = root;
      return 0;
    }
    if (q.rc == ATH_ENOMEM)
      return ATH_ENOMEM;
    *nfilters = before;
  }
  if (p.rc == ATH_ENOMEM)
    return ATH_ENOMEM;
  *err_pos = p.err_pos;
  *err_msg = p.err_msg;
  return p.rc;
}
