/* The payload codec (SEMANTICS §1.3): Lua values to JSON text and back.
 *
 * The encoder walks the value with raw access only (lua_next, lua_rawgeti),
 * so it never runs a metamethod, never allocates through Lua and never
 * raises. It keeps one small frame per open table on the C stack; those
 * frames hold what the cycle check and an error's path need, so nothing is
 * formatted unless an error happens.
 *
 * The decoder feeds yajl's callback parser and builds the value directly on
 * the Lua stack. Its state lives in a userdata cached in the registry, so a
 * decode allocates nothing but the Lua values it builds: yajl takes its
 * memory from an arena inside that userdata (malloc only for what does not
 * fit, such as a long string with escapes).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <yajl/yajl_parse.h>

#include "internal.h"
#include "utf8.h"

/* Deepest nesting of tables (encode) or containers (decode) accepted; the
 * outermost table counts as depth 1, so depth 1001 is the first rejected. */
#define JSON_MAX_DEPTH 1000
#define JSON_DEPTH_MSG "nesting deeper than 1000"

/* Formats `v` in decimal, ending at `end`; returns the first character. */
static char* fmt_int(char* end, lua_Integer v) {
  return ath__fmt_i64(end, (int64_t)v);
}

/* ================================================================ encoder */

/* One open table. Its `key`/`idx` name the child being encoded right now, so
 * the chain of frames spells the path of that child. */
typedef struct enc_frame_s enc_frame_t;
struct enc_frame_s {
  const enc_frame_t* up; /* the enclosing table's frame; NULL at the root */
  const void* tbl;       /* this table, for the cycle check */
  const char* key;       /* the current child's key; NULL: it is `idx` */
  size_t klen;
  lua_Integer idx;
  int depth; /* 1 for the root table */
};

typedef struct {
  lua_State* L;
  ath_buf_t* out;
  const char* root;
  char* err;
  size_t errlen;
} enc_t;

/* Appends `n` bytes without the terminating NUL, which ath__json_encode
 * writes once at the end; the fast path inlines the copy. */
static inline int put(ath_buf_t* b, const char* s, size_t n) {
  if (n < b->cap - b->len) {
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
  }
  return ath__buf_append(b, s, n);
}

static inline int put1(ath_buf_t* b, char c) {
  if (b->cap - b->len > 1) {
    b->data[b->len++] = c;
    return 0;
  }
  return ath__buf_append(b, &c, 1);
}

/* ------------------------------------------------------- error messages */

/* A bounded writer: keeps the first `cap` bytes, counts them all. */
typedef struct {
  char* p;
  size_t cap;
  size_t len;
} sink_t;

static void sink_put(sink_t* s, const char* src, size_t n) {
  if (s->len < s->cap) {
    size_t k = s->cap - s->len;
    memcpy(s->p + s->len, src, k < n ? k : n);
  }
  s->len += n;
}

/* Writes the path of the child that frame `f` is encoding; NULL: the root.
 * Recursion is bounded by JSON_MAX_DEPTH. */
static void sink_path(sink_t* s, const enc_t* e, const enc_frame_t* f) {
  char num[24], *end = num + sizeof num;
  const char* p;
  if (f == NULL) {
    sink_put(s, e->root, strlen(e->root));
    return;
  }
  sink_path(s, e, f->up);
  if (f->key != NULL) {
    sink_put(s, ".", 1);
    sink_put(s, f->key, f->klen);
  } else {
    sink_put(s, "[", 1);
    p = fmt_int(end - 1, f->idx);
    end[-1] = ']';
    sink_put(s, p, (size_t)(end - p));
  }
}

/* Returns n shortened so that s[0..n) does not end inside a UTF-8 sequence
 * (a path cut short must not end with half a character). */
static size_t utf8_trim(const char* s, size_t n) {
  size_t j = n, need;
  unsigned c;
  while (j > 0 && (((unsigned char)s[j - 1]) & 0xC0) == 0x80)
    j--;
  if (j == 0)
    return n;
  c = (unsigned char)s[j - 1];
  if (c < 0xC0)
    return n;
  need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  return n - (j - 1) < need ? j - 1 : n;
}

/* Writes "<prefix><path>: <what>" into e->err (no ": " when `what` is NULL).
 * A path too long for the buffer loses its tail to "...", so the reason is
 * always readable. Returns `rc`. */
static int enc_fail(enc_t* e, int rc, const enc_frame_t* f, const char* prefix,
                    const char* what) {
  sink_t m, probe = {NULL, 0, 0};
  size_t fixed;
  if (e->err == NULL || e->errlen == 0)
    return rc;
  m.p = e->err;
  m.cap = e->errlen - 1;
  m.len = 0;
  fixed = strlen(prefix) + (what != NULL ? 2 + strlen(what) : 0);
  sink_put(&m, prefix, strlen(prefix));
  sink_path(&probe, e, f);
  if (fixed + probe.len <= m.cap || fixed + 3 > m.cap) {
    sink_path(&m, e, f);
  } else {
    sink_t part = {m.p + m.len, m.cap - fixed - 3, 0};
    sink_path(&part, e, f);
    m.len += utf8_trim(part.p, part.cap);
    sink_put(&m, "...", 3);
  }
  if (what != NULL) {
    sink_put(&m, ": ", 2);
    sink_put(&m, what, strlen(what));
  }
  if (m.len > m.cap)
    m.len = utf8_trim(m.p, m.cap);
  m.p[m.len] = '\0';
  return rc;
}

static int enc_nomem(enc_t* e, const enc_frame_t* f) {
  return enc_fail(e, ATH_ENOMEM, f, "", "out of memory");
}

/* ---------------------------------------------------------------- values */

/* 0: plain ASCII copied as is; 1: escaped; 2: starts a multi-byte sequence
 * (or is invalid). */
static const unsigned char str_class[256] = {
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x00 */
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x10 */
  0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x20: '"' */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, /* 0x50: '\\' */
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0x80 */
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
};

/* The first byte from p on that is not printable ASCII other than '"' and
 * '\\' (str_class 0), or end. Eight bytes to a test: a step's events
 * write ids of ~50 bytes, and the byte loop was most of their cost. Each
 * test is exact for "some byte of the word is": x & 0x80 (a byte >= 0x80),
 * (x - 0x20) & ~x & 0x80 (one < 0x20), has_zero(x ^ c) (one equal to c). */
static inline const unsigned char* skip_plain(const unsigned char* p, const unsigned char* end) {
  const uint64_t ones = 0x0101010101010101ull, highs = ones * 0x80;
  while (end - p >= 8) {
    uint64_t x, q, bs;
    memcpy(&x, p, 8);
    q = x ^ (ones * '"');
    bs = x ^ (ones * '\\');
    if (((x | ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((bs - ones) & ~bs)) & highs) != 0)
      break;
    p += 8;
  }
  while (p < end && str_class[*p] == 0)
    p++;
  return p;
}

/* Appends `s` as a JSON string. Returns 0, ATH_EINVAL (invalid UTF-8) or
 * ATH_ENOMEM. */
static int enc_string(ath_buf_t* b, const char* s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char* p = (const unsigned char*)s;
  const unsigned char* end = p + n;
  const unsigned char* run = p; /* start of the bytes not yet copied */
  if (put1(b, '"') != 0)
    return ATH_ENOMEM;
  while ((p = skip_plain(p, end)) < end) {
    unsigned c = *p;
    switch (str_class[c]) {
      case 0:
        p++;
        continue;
      case 2: {
        size_t k = ath__utf8_seq(p, end);
        if (k == 0)
          return ATH_EINVAL;
        p += k;
        continue;
      }
      default: {
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t elen = 2;
        if (put(b, (const char*)run, (size_t)(p - run)) != 0)
          return ATH_ENOMEM;
        switch (c) {
          case '"': esc[1] = '"'; break;
          case '\\': esc[1] = '\\'; break;
          case '\n': esc[1] = 'n'; break;
          case '\t': esc[1] = 't'; break;
          case '\r': esc[1] = 'r'; break;
          case '\b': esc[1] = 'b'; break;
          case '\f': esc[1] = 'f'; break;
          default:
            esc[1] = 'u';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (put(b, esc, elen) != 0)
          return ATH_ENOMEM;
        run = ++p;
      }
    }
  }
  if (put(b, (const char*)run, (size_t)(end - run)) != 0 || put1(b, '"') != 0)
    return ATH_ENOMEM;
  return 0;
}

int ath__json_put_text(ath_buf_t* b, const char* s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char* p = (const unsigned char*)s;
  const unsigned char* end = p + n;
  const unsigned char* run = p;
  if (put1(b, '"') != 0)
    return ATH_ENOMEM;
  while ((p = skip_plain(p, end)) < end) {
    unsigned c = *p;
    size_t k = 1;
    if (str_class[c] == 0 || (str_class[c] == 2 && (k = ath__utf8_seq(p, end)) != 0)) {
      p += k;
      continue;
    }
    /* a byte to escape, or one that is not UTF-8 (written as U+FFFD) */
    char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
    if (str_class[c] == 2)
      memcpy(esc + 2, "fffd", 4);
    if (put(b, (const char*)run, (size_t)(p - run)) != 0 || put(b, esc, 6) != 0)
      return ATH_ENOMEM;
    run = ++p;
  }
  if (put(b, (const char*)run, (size_t)(end - run)) != 0 || put1(b, '"') != 0)
    return ATH_ENOMEM;
  return 0;
}

/* Formats a finite float in the shortest of %.15g/%.16g/%.17g that strtod
 * reads back bit for bit, always with a '.' or an exponent so that it reads
 * back as a float. Returns the length. */
/* The common case by hand: a value in [1e-4, 1e15) (where %g is fixed
 * notation) whose shortest form has at most 6 decimals, written from its
 * scaled integer and checked by reading it back; snprintf was the costliest step of
 * a gateway answer full of prices. Returns the length, or 0 to fall back. */
static size_t fmt_fixed(char* buf, size_t cap, double d) {
  static const double p10[] = {1, 10, 100, 1e3, 1e4, 1e5, 1e6};
  double a = d < 0 ? -d : d;
  if (!(a >= 1e-4 && a < 1e15) || cap < 32)
    return 0;
  for (int k = 0; k <= 6; k++) {
    double m = a * p10[k];
    double r = nearbyint(m);
    /* at most 15 significant digits, the %.15g case, so the text is the
     * same; a product far from an integer needs more decimals */
    if (r >= 1e15)
      return 0;
    if (fabs(m - r) > 1e-6 * (r > 1 ? r : 1))
      continue;
    char digits[24];
    int nd = 0;
    uint64_t v = (uint64_t)r;
    do {
      digits[nd++] = (char)('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (nd <= k)
      digits[nd++] = '0'; /* 0.05: the leading zeros of the fraction */
    size_t n = 0;
    if (d < 0)
      buf[n++] = '-';
    for (int i = nd - 1; i >= k; i--)
      buf[n++] = digits[i];
    buf[n++] = '.';
    if (k == 0)
      buf[n++] = '0';
    for (int i = k - 1; i >= 0; i--)
      buf[n++] = digits[i];
    buf[n] = '\0';
    /* the text is r / 10^k exactly; strtod would round that to the nearest
     * double, which the division of these two exact doubles (r < 2^53,
     * 10^k <= 1e6) also is, so it reads back as d iff this holds */
    if (r / p10[k] == a)
      return n; /* the fewest decimals that read back: the shortest text */
  }
  return 0;
}

size_t ath__json_fmt_float(char* buf, size_t cap, double d) {
  size_t fast = fmt_fixed(buf, cap, d);
  if (fast > 0)
    return fast;
  static const char* const fmts[] = {"%.15g", "%.16g", "%.17g"};
  char tmp[40];
  size_t i, n = 0, j;
  int dot = 0;
  for (i = 0; i < 3; i++) {
    double back;
    snprintf(tmp, sizeof tmp, fmts[i], d);
    back = strtod(tmp, NULL);
    if (memcmp(&back, &d, sizeof d) == 0)
      break;
  }
  /* The decimal point follows the C locale; a host that changed LC_NUMERIC
   * gets its (possibly multi-byte) separator replaced by '.'. */
  for (j = 0; tmp[j] != '\0' && n + 3 < cap; j++) {
    char c = tmp[j];
    if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e') {
      buf[n++] = c;
      dot |= c == 'e';
    } else if (!dot) {
      buf[n++] = '.';
      dot = 1;
    }
  }
  if (!dot) {
    buf[n++] = '.';
    buf[n++] = '0';
  }
  return n;
}

static int enc_table(enc_t* e, int idx, enc_frame_t* up);

/* Encodes the value at absolute index `idx`, the child that `f` is on. */
static int enc_value(enc_t* e, int idx, enc_frame_t* f) {
  lua_State* L = e->L;
  ath_buf_t* b = e->out;
  switch (lua_type(L, idx)) {
    case LUA_TNONE:
    case LUA_TNIL:
      return put(b, "null", 4) == 0 ? 0 : enc_nomem(e, f);
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx))
        return put(b, "true", 4) == 0 ? 0 : enc_nomem(e, f);
      return put(b, "false", 5) == 0 ? 0 : enc_nomem(e, f);
    case LUA_TNUMBER: {
      char num[48];
      const char* p;
      size_t n;
      if (lua_isinteger(L, idx)) {
        p = fmt_int(num + sizeof num, lua_tointeger(L, idx));
        n = (size_t)(num + sizeof num - p);
      } else {
        double d = (double)lua_tonumber(L, idx);
        if (isnan(d))
          return enc_fail(e, ATH_EINVAL, f, "", "NaN not serializable");
        if (isinf(d))
          return enc_fail(e, ATH_EINVAL, f, "",
                          d > 0 ? "inf not serializable"
                                : "-inf not serializable");
        n = ath__json_fmt_float(num, sizeof num, d);
        p = num;
      }
      return put(b, p, n) == 0 ? 0 : enc_nomem(e, f);
    }
    case LUA_TSTRING: {
      size_t n;
      const char* s = lua_tolstring(L, idx, &n);
      int rc = enc_string(b, s, n);
      if (rc == ATH_EINVAL)
        return enc_fail(e, rc, f, "", "invalid UTF-8");
      return rc == 0 ? 0 : enc_nomem(e, f);
    }
    case LUA_TTABLE:
      return enc_table(e, idx, f);
    case LUA_TFUNCTION:
      return enc_fail(e, ATH_EINVAL, f, "", "function not serializable");
    case LUA_TTHREAD:
      return enc_fail(e, ATH_EINVAL, f, "", "thread not serializable");
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) /* athena.null (cjson.null too) */
        return put(b, "null", 4) == 0 ? 0 : enc_nomem(e, f);
      return enc_fail(e, ATH_EINVAL, f, "", "userdata not serializable");
    default: /* full userdata */
      return enc_fail(e, ATH_EINVAL, f, "", "userdata not serializable");
  }
}

/* The table at `idx` whose first key (a string) and value are at `k` and
 * k + 1, the top. */
static int enc_object(enc_t* e, int idx, enc_frame_t* f, int k) {
  lua_State* L = e->L;
  ath_buf_t* b = e->out;
  char sep = '{';
  int rc;
  do {
    size_t klen;
    const char* key;
    if (lua_type(L, k) != LUA_TSTRING) {
      lua_pop(L, 2);
      return enc_fail(e, ATH_EINVAL, f->up, "",
                      "mixed or non-string table keys");
    }
    key = lua_tolstring(L, k, &klen); /* a string: no conversion */
    if (put1(b, sep) != 0) {
      lua_pop(L, 2);
      return enc_nomem(e, f->up);
    }
    sep = ',';
    rc = enc_string(b, key, klen);
    if (rc == 0 && put1(b, ':') != 0)
      rc = ATH_ENOMEM;
    if (rc != 0) {
      lua_pop(L, 2);
      if (rc == ATH_EINVAL)
        return enc_fail(e, rc, f->up, "", "invalid UTF-8 in object key");
      return enc_nomem(e, f->up);
    }
    f->key = key; /* stays valid: the key is on the stack */
    f->klen = klen;
    rc = enc_value(e, k + 1, f);
    lua_pop(L, 1);
    if (rc != 0) {
      lua_pop(L, 1);
      return rc;
    }
  } while (lua_next(L, idx));
  return put1(b, '}') == 0 ? 0 : enc_nomem(e, f->up);
}

/* The table at `idx` whose first key (an integer) and value are at `k` and
 * k + 1, the top. */
static int enc_array(enc_t* e, int idx, enc_frame_t* f, int k) {
  lua_State* L = e->L;
  ath_buf_t* b = e->out;
  lua_Integer n = 0, count = 0, i;
  int rc;
  /* First pass: every key must be a positive integer; n is the largest. */
  do {
    lua_Integer key;
    if (!lua_isinteger(L, k) || (key = lua_tointeger(L, k)) < 1) {
      lua_pop(L, 2);
      return enc_fail(e, ATH_EINVAL, f->up, "",
                      "mixed or non-string table keys");
    }
    count++;
    if (key > n)
      n = key;
    lua_pop(L, 1);
  } while (lua_next(L, idx));
  if (n > 10 && (lua_Unsigned)n > 2 * (lua_Unsigned)count) {
    char msg[96];
    snprintf(msg, sizeof msg, "excessively sparse array (max index %lld, %lld keys)",
             (long long)n, (long long)count);
    return enc_fail(e, ATH_EINVAL, f->up, "", msg);
  }
  if (put1(b, '[') != 0)
    return enc_nomem(e, f->up);
  for (i = 1; i <= n; i++) {
    if (i > 1 && put1(b, ',') != 0)
      return enc_nomem(e, f->up);
    f->idx = i;
    lua_rawgeti(L, idx, i);
    rc = enc_value(e, k, f);
    lua_pop(L, 1);
    if (rc != 0)
      return rc;
  }
  return put1(b, ']') == 0 ? 0 : enc_nomem(e, f->up);
}

/* Encodes the table at `idx`, the child that `up` is on (NULL: the root). */
static int enc_table(enc_t* e, int idx, enc_frame_t* up) {
  lua_State* L = e->L;
  enc_frame_t f;
  const enc_frame_t* a;
  int k;
  f.tbl = lua_topointer(L, idx);
  for (a = up; a != NULL; a = a->up) {
    if (a->tbl == f.tbl) /* names the table that holds the reference */
      return enc_fail(e, ATH_EINVAL, up->up, "cycle at ", NULL);
  }
  f.depth = up != NULL ? up->depth + 1 : 1;
  if (f.depth > JSON_MAX_DEPTH)
    return enc_fail(e, ATH_EINVAL, up, "", JSON_DEPTH_MSG);
  if (!lua_checkstack(L, 3))
    return enc_fail(e, ATH_ENOMEM, up, "", "Lua stack overflow");
  f.up = up;
  f.key = NULL;
  f.klen = 0;
  f.idx = 0;
  lua_pushnil(L);
  if (!lua_next(L, idx))
    return put(e->out, "{}", 2) == 0 ? 0 : enc_nomem(e, up);
  k = lua_gettop(L) - 1; /* the key; the value is above it */
  if (lua_type(L, k) == LUA_TSTRING)
    return enc_object(e, idx, &f, k);
  return enc_array(e, idx, &f, k);
}

int ath__json_encode(lua_State* L, int idx, const char* root, ath_buf_t* out,
                     char* err, size_t errlen) {
  enc_t e;
  size_t len0 = out->len;
  int top = lua_gettop(L);
  int rc;
  e.L = L;
  e.out = out;
  e.root = root != NULL ? root : "value";
  e.err = err;
  e.errlen = errlen;
  rc = enc_value(&e, lua_absindex(L, idx), NULL);
  if (rc == 0 && out->len - len0 > ATH_PAYLOAD_MAX) { /* tasks keep 32-bit lengths */
    if (err != NULL && errlen > 0)
      snprintf(err, errlen, "%s: payload larger than 4 GiB", e.root);
    rc = ATH_EINVAL;
  }
  if (rc == 0 && out->len == out->cap) /* make room for the NUL */
    rc = ath__buf_append(out, NULL, 0) == 0 ? 0 : enc_nomem(&e, NULL);
  if (rc != 0) {
    out->len = len0;
    lua_settop(L, top); /* already balanced; cheap insurance */
  }
  if (out->data != NULL)
    out->data[out->len] = '\0';
  return rc;
}

/* ================================================================ decoder */

#define JSON_ARENA 8192    /* bytes; yajl needs ~300 plus 2 KiB per buffer */
#define JSON_ALIGN 8       /* what yajl stores: pointers and size_t */
#define DEC_META "athena.json.box"

/* A parser's state, cached per Lua state (registry, `dec_key`). */
typedef struct {
  yajl_handle h;    /* the parse that owns this box, or NULL when idle */
  lua_State* L;     /* the thread decoding, for the callbacks */
  const char* why;  /* our reason for stopping the parse, or NULL */
  int rc;           /* and its code: ATH_EINVAL or ATH_ENOMEM */
  size_t used;      /* arena bytes handed out */
  int depth;        /* containers open */
  int keep_nulls;   /* nulls inside containers as athena.null (a NULL lightuserdata) */
  /* Per open container (1..depth): -1 for an object, else the index of the
   * array's last element so far. */
  lua_Integer next[JSON_MAX_DEPTH + 1];
  /* yajl's memory. Blocks carry their size in front; freeing the last one
   * gives it back, and requests that do not fit go to malloc. */
  union {
    size_t align;
    void* ptr;
    char bytes[JSON_ARENA];
  } arena;
} json_dec_t;

static char dec_key; /* registry key of the cached box */

#define ROUND_UP(n) (((n) + (JSON_ALIGN - 1)) & ~(size_t)(JSON_ALIGN - 1))
#define HDR ROUND_UP(sizeof(size_t))

static int in_arena(const json_dec_t* d, const void* p) {
  uintptr_t a = (uintptr_t)p, base = (uintptr_t)d->arena.bytes;
  return a >= base && a < base + JSON_ARENA;
}

static void* dec_malloc(void* ctx, size_t sz) {
  json_dec_t* d = ctx;
  if (sz <= JSON_ARENA && HDR + ROUND_UP(sz) <= JSON_ARENA - d->used) {
    char* p = d->arena.bytes + d->used;
    memcpy(p, &sz, sizeof sz);
    d->used += HDR + ROUND_UP(sz);
    return p + HDR;
  }
  return malloc(sz);
}

static size_t blk_size(const void* p) {
  size_t sz;
  memcpy(&sz, (const char*)p - HDR, sizeof sz);
  return sz;
}

static int blk_is_last(const json_dec_t* d, const void* p) {
  return (const char*)p + ROUND_UP(blk_size(p)) == d->arena.bytes + d->used;
}

static void dec_free(void* ctx, void* p) {
  json_dec_t* d = ctx;
  if (p == NULL)
    return;
  if (!in_arena(d, p)) {
    free(p);
    return;
  }
  if (blk_is_last(d, p))
    d->used = (size_t)((char*)p - HDR - d->arena.bytes);
}

static void* dec_realloc(void* ctx, void* p, size_t sz) {
  json_dec_t* d = ctx;
  size_t old;
  void* q;
  if (p == NULL)
    return dec_malloc(ctx, sz);
  if (!in_arena(d, p))
    return realloc(p, sz);
  old = blk_size(p);
  if (sz <= old)
    return p;
  if (blk_is_last(d, p)) {
    size_t off = (size_t)((char*)p - d->arena.bytes);
    if (sz <= JSON_ARENA && ROUND_UP(sz) <= JSON_ARENA - off) {
      memcpy((char*)p - HDR, &sz, sizeof sz);
      d->used = off + ROUND_UP(sz);
      return p;
    }
  }
  q = dec_malloc(ctx, sz);
  if (q == NULL)
    return NULL;
  memcpy(q, p, old);
  dec_free(ctx, p);
  return q;
}

/* __gc and __close: frees the parser once; later calls find NULL. */
static int dec_close(lua_State* L) {
  json_dec_t* d = lua_touserdata(L, 1);
  if (d != NULL && d->h != NULL) {
    yajl_handle h = d->h;
    d->h = NULL;
    yajl_free(h);
  }
  return 0;
}

/* [-0, +1, m] Pushes an idle box, the cached one when it is free. A box
 * still holding a parser belongs either to a decode further down this C
 * stack (a finalizer that runs during a parse may decode) or to one that a
 * Lua error abandoned; neither may be touched, so a fresh box replaces it
 * in the cache and the old one is freed by its owner or by __gc. */
static json_dec_t* dec_box(lua_State* L) {
  json_dec_t* d;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &dec_key) == LUA_TUSERDATA) {
    d = lua_touserdata(L, -1);
    if (d->h == NULL)
      return d;
  }
  lua_pop(L, 1);
  d = lua_newuserdatauv(L, sizeof *d, 0);
  d->h = NULL;
  if (luaL_newmetatable(L, DEC_META)) {
    lua_pushcfunction(L, dec_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, dec_close);
    lua_setfield(L, -2, "__close");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &dec_key);
  return d;
}

/* Makes a callback stop the parse for `why`; returns 0 for yajl. */
static int dec_stop(json_dec_t* d, int rc, const char* why) {
  d->rc = rc;
  d->why = why;
  return 0;
}

/* Stores the value on the top into the open container, if any. */
static int dec_store(json_dec_t* d) {
  lua_State* L = d->L;
  if (d->depth == 0)
    return 1; /* the top-level value stays on the stack */
  if (d->next[d->depth] >= 0)
    lua_rawseti(L, -2, ++d->next[d->depth]);
  else
    lua_rawset(L, -3); /* table, key, value */
  return 1;
}

static int dec_null(void* ctx) {
  json_dec_t* d = ctx;
  if (d->depth > 0 && d->keep_nulls) {
    lua_pushlightuserdata(d->L, NULL); /* athena.null */
    return dec_store(d);
  }
  if (d->depth == 0)
    lua_pushnil(d->L);
  else if (d->next[d->depth] >= 0)
    d->next[d->depth]++; /* a hole */
  else
    lua_pop(d->L, 1); /* drop the key: absent */
  return 1;
}

static int dec_boolean(void* ctx, int v) {
  json_dec_t* d = ctx;
  lua_pushboolean(d->L, v);
  return dec_store(d);
}

static int dec_number(void* ctx, const char* s, size_t n) {
  json_dec_t* d = ctx;
  lua_State* L = d->L;
  char num[64];
  size_t ok;
  /* yajl validated the syntax; lua_stringtonumber then gives integers for
   * integers that fit and floats for the rest, as the Lua parser would. */
  if (n < sizeof num) {
    memcpy(num, s, n);
    num[n] = '\0';
    ok = lua_stringtonumber(L, num);
  } else {
    lua_pushlstring(L, s, n); /* NUL-terminated */
    ok = lua_stringtonumber(L, lua_tostring(L, -1));
    lua_remove(L, ok ? -2 : -1);
  }
  if (!ok)
    return dec_stop(d, ATH_EINVAL, "invalid number");
  return dec_store(d);
}

static int dec_string(void* ctx, const unsigned char* s, size_t n) {
  json_dec_t* d = ctx;
  lua_pushlstring(d->L, (const char*)s, n);
  return dec_store(d);
}

static int dec_key_cb(void* ctx, const unsigned char* s, size_t n) {
  json_dec_t* d = ctx;
  lua_pushlstring(d->L, (const char*)s, n);
  return 1;
}

static int dec_open(json_dec_t* d, lua_Integer kind) {
  if (d->depth >= JSON_MAX_DEPTH)
    return dec_stop(d, ATH_EINVAL, JSON_DEPTH_MSG);
  /* The new table, a key, a value and a number's text. With at most 1000
   * levels this fails only when the stack cannot be reallocated. */
  if (!lua_checkstack(d->L, 4))
    return dec_stop(d, ATH_ENOMEM, "out of memory (Lua stack)");
  /* Room for a few entries saves the first rehashes, the bulk of the cost
   * of small tables. */
  if (kind < 0)
    lua_createtable(d->L, 0, 4);
  else
    lua_createtable(d->L, 4, 0);
  d->next[++d->depth] = kind;
  return 1;
}

static int dec_start_map(void* ctx) {
  return dec_open(ctx, -1);
}

static int dec_start_array(void* ctx) {
  return dec_open(ctx, 0);
}

static int dec_end(void* ctx) {
  json_dec_t* d = ctx;
  d->depth--;
  return dec_store(d);
}

static const yajl_callbacks dec_callbacks = {
  dec_null,        dec_boolean, NULL,   NULL,           dec_number,
  dec_string,      dec_start_map, dec_key_cb, dec_end, dec_start_array,
  dec_end,
};

int ath__json_decode(lua_State* L, const char* json, size_t len) {
  return ath__json_decode_nulls(L, json, len, 0);
}

/* [-0, +(0|1), m] The common top-level scalars without a parser: an
 * integer of at most 18 digits (no sign, exponent or leading zero to
 * interpret), true, false, and a string with no escape (the caller checked
 * its UTF-8). Pushes the value the parse would give and returns 1, or
 * pushes nothing and returns 0 for anything else. A task's input and a
 * step's result are often just that, and a parser costs ~1,500
 * instructions to set up. */
static int decode_scalar(lua_State* L, const char* json, size_t len) {
  if (len == 0)
    return 0;
  if (json[0] == '"') {
    if (len < 2 || json[len - 1] != '"')
      return 0;
    for (size_t i = 1; i < len - 1; i++) {
      unsigned char c = (unsigned char)json[i];
      if (c == '"' || c == '\\' || c < 0x20)
        return 0;
    }
    lua_pushlstring(L, json + 1, len - 2);
    return 1;
  }
  if (len == 4 && memcmp(json, "true", 4) == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (len == 5 && memcmp(json, "false", 5) == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  size_t i = json[0] == '-';
  if (len - i == 0 || len - i > 18 || (json[i] == '0' && len - i > 1))
    return 0;
  lua_Integer v = 0;
  for (; i < len; i++) {
    if (json[i] < '0' || json[i] > '9')
      return 0;
    v = v * 10 + (json[i] - '0');
  }
  lua_pushinteger(L, json[0] == '-' ? -v : v);
  return 1;
}

int ath__json_decode_nulls(lua_State* L, const char* json, size_t len, int keep_nulls) {
  int base = lua_gettop(L);
  json_dec_t* d;
  yajl_alloc_funcs afs;
  yajl_status st;
  yajl_handle h;
  size_t at;
  char msg[256];

  luaL_checkstack(L, 6, "JSON decode");
  if (!ath__json_text_check(json, len, &at)) {
    /* the same check as the gateway's request tree (utf8.h) */
    lua_pushfstring(L, "invalid JSON at byte %I: invalid UTF-8 or a lone surrogate escape", (lua_Integer)at);
    return ATH_EINVAL;
  }
  if (decode_scalar(L, json, len))
    return 0;
  lua_pushnil(L); /* base + 1: the result */
  d = dec_box(L); /* base + 2: keeps the box alive during the parse */
  d->L = L;
  d->why = NULL;
  d->rc = ATH_EINVAL;
  d->used = 0;
  d->depth = 0;
  d->keep_nulls = keep_nulls;
  afs.malloc = dec_malloc;
  afs.realloc = dec_realloc;
  afs.free = dec_free;
  afs.ctx = d;
  h = yajl_alloc(&dec_callbacks, &afs, d);
  if (h == NULL)
    return luaL_error(L, "not enough memory");
  d->h = h;
  /* A Lua memory error in a callback longjmps out of here, leaving d->h set:
   * the next decode leaves this box alone and __gc frees the parser. */
  st = yajl_parse(h, (const unsigned char*)json, len);
  at = yajl_get_bytes_consumed(h);
  if (st == yajl_status_ok) {
    st = yajl_complete_parse(h);
    at = len; /* what the final check rejects is the end of the text */
  }
  if (st != yajl_status_ok) {
    int rc = d->why != NULL ? d->rc : ATH_EINVAL;
    if (rc == ATH_ENOMEM) {
      snprintf(msg, sizeof msg, "%s", d->why);
    } else if (d->why != NULL) {
      snprintf(msg, sizeof msg, "invalid JSON at byte %zu: %s", at, d->why);
    } else {
      unsigned char* yerr =
        yajl_get_error(h, 0, (const unsigned char*)json, len);
      size_t n;
      snprintf(msg, sizeof msg, "invalid JSON at byte %zu: %s", at,
               yerr != NULL ? (const char*)yerr : "parse error");
      if (yerr != NULL)
        yajl_free_error(h, yerr);
      n = strlen(msg); /* yajl ends its message with a newline */
      while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    }
    d->h = NULL;
    yajl_free(h);
    lua_settop(L, base); /* from here on `d` may be collected */
    lua_pushstring(L, msg);
    return rc;
  }
  d->h = NULL;
  yajl_free(h);
  lua_replace(L, base + 1); /* the value over the nil; pops it */
  lua_settop(L, base + 1);  /* drops the box */
  return 0;
}
