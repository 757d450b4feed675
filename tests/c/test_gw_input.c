/* The gateway's request body, as the compiler and the policies see it
 * (issue 13, item 1: a policy bypassed with invalid UTF-8).
 *
 * A differential test over generated bodies: each mixes ASCII, valid
 * multi-byte UTF-8, escapes (paired surrogates, escaped backslashes) and,
 * sometimes, one of the invalid forms (surrogates, overlongs, code points
 * above U+10FFFF, stray continuation bytes, cut sequences, lone surrogate
 * escapes) in string values and keys. The generator knows whether it wrote
 * an invalid form, and:
 *   - the compiler's parse (ath__gw_parse_body) refuses exactly the invalid
 *     bodies, with 400 invalid_json;
 *   - the payload codec (ath__json_decode_nulls, the policies' decoder
 *     before the fix) refuses exactly the same ones;
 *   - for the others, the policy's `req.payload` (ath__gwt_push_json from
 *     the compiler's tree) is deep-equal to the codec's decoding, and every
 *     string in the tree is UTF-8 by a reference decoder written here.
 * Then random byte mutations of valid bodies: both decoders accept and
 * refuse the same texts, and agree on the values. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "gw_server.h"
#include "internal.h"
#include "task.h"

/* ------------------------------------------------------------- generator */

typedef struct {
  uint64_t s;
} rng_t;

static uint32_t next(rng_t* r) {
  r->s ^= r->s << 13;
  r->s ^= r->s >> 7;
  r->s ^= r->s << 17;
  return (uint32_t)(r->s >> 11);
}

static uint32_t pick(rng_t* r, uint32_t n) {
  return next(r) % n;
}

/* Appends the UTF-8 encoding of scalar value cp (no checks: the caller
 * may ask for a surrogate or an overlong on purpose through `len`). */
static void put_cp(ath_gw_buf_t* b, uint32_t cp, int len) {
  unsigned char u[4];
  if (len == 1) {
    u[0] = (unsigned char)cp;
  } else if (len == 2) {
    u[0] = (unsigned char)(0xC0 | (cp >> 6));
    u[1] = (unsigned char)(0x80 | (cp & 0x3F));
  } else if (len == 3) {
    u[0] = (unsigned char)(0xE0 | (cp >> 12));
    u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (unsigned char)(0x80 | (cp & 0x3F));
  } else {
    u[0] = (unsigned char)(0xF0 | (cp >> 18));
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
  }
  ath__gw_buf_put(b, (const char*)u, (size_t)len);
}

static void put_esc(ath_gw_buf_t* b, uint32_t v) {
  char e[8];
  snprintf(e, sizeof e, "\\u%04x", (unsigned)v);
  ath__gw_buf_puts(b, e);
}

/* Appends the inside of a JSON string; sets *bad when it wrote an invalid
 * form (only when `allow_bad`). */
static void gen_string(rng_t* r, ath_gw_buf_t* b, int allow_bad, int* bad) {
  int n = (int)pick(r, 6);
  for (int i = 0; i < n; i++) {
    uint32_t k = pick(r, allow_bad ? 20 : 10);
    switch (k) {
      case 0: case 1: ath__gw_buf_putc(b, (char)('a' + pick(r, 26))); break;
      case 2: put_cp(b, 0x80 + pick(r, 0x800 - 0x80), 2); break;
      case 3: { /* BMP without surrogates */
        uint32_t cp = 0x800 + pick(r, 0xF800);
        put_cp(b, cp >= 0xD800 && cp <= 0xDFFF ? cp + 0x800 : cp, 3);
        break;
      }
      case 4: put_cp(b, 0x10000 + pick(r, 0x100000), 4); break;
      case 5: { /* an escaped BMP character, not a surrogate */
        uint32_t cp = 1 + pick(r, 0xFFFE);
        put_esc(b, cp >= 0xD800 && cp <= 0xDFFF ? 0x41 : cp);
        break;
      }
      case 6: /* a valid escaped pair */
        put_esc(b, 0xD800 + pick(r, 0x400));
        put_esc(b, 0xDC00 + pick(r, 0x400));
        break;
      case 7: ath__gw_buf_puts(b, "\\\\ud800"); break; /* an escaped backslash, then text */
      case 8: ath__gw_buf_puts(b, pick(r, 2) ? "\\n" : "\\\""); break;
      case 9: ath__gw_buf_puts(b, "\\/"); break;
      /* the invalid forms */
      case 10: put_cp(b, 0xD800 + pick(r, 0x800), 3); *bad = 1; break;   /* a surrogate */
      case 11: put_cp(b, pick(r, 0x80), 2); *bad = 1; break;             /* overlong 2 */
      case 12: put_cp(b, pick(r, 0x800), 3); *bad = 1; break;            /* overlong 3 */
      case 13: put_cp(b, pick(r, 0x10000), 4); *bad = 1; break;          /* overlong 4 */
      case 14: put_cp(b, 0x110000 + pick(r, 0xEFFFF), 4); *bad = 1; break; /* > U+10FFFF */
      case 15: ath__gw_buf_putc(b, (char)(0x80 + pick(r, 0x40))); *bad = 1; break; /* continuation */
      case 16: ath__gw_buf_putc(b, (char)(0xF5 + pick(r, 11))); *bad = 1; break;   /* F5..FF */
      case 17: { /* a sequence cut short */
        ath_gw_buf_t t = {0};
        put_cp(&t, 0x800 + pick(r, 0xC000), 3);
        ath__gw_buf_put(b, t.data, 1 + pick(r, 2));
        ath__gw_buf_putc(b, 'z'); /* a next continuation byte would complete it */
        ath__gw_buf_free(&t);
        *bad = 1;
        break;
      }
      case 18: /* a lone surrogate escape */
        put_esc(b, 0xD800 + pick(r, 0x800));
        ath__gw_buf_putc(b, 'z'); /* a next low surrogate escape would pair it */
        *bad = 1;
        break;
      default: /* a high surrogate escape before a non-surrogate one */
        put_esc(b, 0xD800 + pick(r, 0x400));
        put_esc(b, 0x20 + pick(r, 0x7000));
        *bad = 1;
        break;
    }
  }
}

static void gen_number(rng_t* r, ath_gw_buf_t* b) {
  static const char* const nums[] = {"0", "-0", "1", "-17", "9007199254740993", "1.5", "-2e3", "1E2",
                                     "9223372036854775807", "9223372036854775808", "0.1", "1e999"};
  ath__gw_buf_puts(b, nums[pick(r, sizeof nums / sizeof nums[0])]);
}

/* A body like the attack's: a role change, a filter, a pad and a list. */
static void gen_body(rng_t* r, ath_gw_buf_t* b, int* bad) {
  int allow = pick(r, 2);
  ath__gw_buf_puts(b, "{\"table_name\":\"accounts\",\"update_body\":{\"role\":\"");
  gen_string(r, b, allow && pick(r, 3) == 0, bad);
  ath__gw_buf_puts(b, "\"},\"conditions\":[{\"eq_column\":\"id\",\"eq_value\":");
  gen_number(r, b);
  ath__gw_buf_puts(b, "}],\"");
  gen_string(r, b, allow && pick(r, 3) == 0, bad);
  ath__gw_buf_puts(b, "\":\"");
  gen_string(r, b, allow && pick(r, 2) == 0, bad);
  ath__gw_buf_puts(b, "\",\"list\":[null,true,");
  gen_number(r, b);
  ath__gw_buf_puts(b, ",\"");
  gen_string(r, b, allow && pick(r, 3) == 0, bad);
  ath__gw_buf_puts(b, "\",{}],\"role\":\"dup\",\"role\":\"last\"}");
}

/* -------------------------------------------------------------- checking */

/* UTF-8 by decoding: every sequence is a scalar value in its shortest form. */
static int ref_utf8(const unsigned char* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    uint32_t cp;
    size_t len, k;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return 0;
    if (i + len > n)
      return 0;
    for (k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80)
        return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
      return 0; /* overlong */
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
      return 0;
    i += len;
  }
  return 1;
}

static int tree_utf8(const ath_gj_t* v) {
  if (v->key != NULL && !ref_utf8((const unsigned char*)v->key, v->klen))
    return 0;
  if (v->type == ATH_GJ_STRING && !ref_utf8((const unsigned char*)v->str, v->len))
    return 0;
  for (const ath_gj_t* c = v->first; c != NULL; c = c->next)
    if (!tree_utf8(c))
      return 0;
  return 1;
}

static int table_size(lua_State* L, int idx) {
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    n++;
    lua_pop(L, 1);
  }
  return n;
}

/* Deep equality of the values at a and b: same types (integer and float
 * apart), same keys. */
static int same(lua_State* L, int a, int b) {
  a = lua_absindex(L, a);
  b = lua_absindex(L, b);
  if (lua_type(L, a) != lua_type(L, b))
    return 0;
  if (lua_type(L, a) == LUA_TNUMBER && lua_isinteger(L, a) != lua_isinteger(L, b))
    return 0;
  if (lua_type(L, a) != LUA_TTABLE)
    return lua_rawequal(L, a, b);
  if (table_size(L, a) != table_size(L, b))
    return 0;
  lua_pushnil(L);
  while (lua_next(L, a) != 0) {
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    int ok = same(L, -2, -1);
    lua_pop(L, 2);
    if (!ok) {
      lua_pop(L, 1);
      return 0;
    }
  }
  return 1;
}

static int fail_on(const char* what, const char* body, size_t len) {
  fprintf(stderr, "%s: ", what);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)body[i];
    if (c >= 0x20 && c < 0x7F)
      fputc(c, stderr);
    else
      fprintf(stderr, "\\x%02x", c);
  }
  fputc('\n', stderr);
  return 1;
}

/* One text through both decoders; `want` is 1 (valid), 0 (invalid) or -1
 * (unknown: they only have to agree). Returns 1 when accepted. */
static int check_text(lua_State* L, const char* text, size_t len, int want, int as_body) {
  ath_gj_doc_t* doc = NULL;
  int a;
  if (as_body) {
    ath_gw_plan_t err;
    a = ath__gw_parse_body(text, len, &doc, &err) == 0;
    if (!a && err.code != NULL && strcmp(err.code, "invalid_json") != 0) {
      fail_on(err.code, text, len);
      ASSERT_STR_EQ(err.code, "invalid_json");
    }
    if (!a)
      ASSERT_EQ(400, err.status);
    ath__gw_plan_free(&err);
  } else {
    a = ath__gj_parse(text, len, &doc, NULL) == 0;
  }
  int top = lua_gettop(L);
  int b = ath__json_decode_nulls(L, text, len, 1) == 0;
  if (a != b || (want >= 0 && a != want)) {
    fail_on(a ? "the compiler accepted" : "the compiler refused", text, len);
    fprintf(stderr, "  codec %s, expected %s\n", b ? "accepted" : "refused",
            want < 0 ? "agreement" : want ? "valid" : "invalid");
    ASSERT_EQ(a, b);
    ASSERT_EQ(want, a);
  }
  if (a) {
    if (!tree_utf8(doc->root)) {
      fail_on("a string is not UTF-8", text, len);
      ASSERT(0);
    }
    ath__gwt_push_json(L, doc->root);
    if (!same(L, -1, -2)) {
      fail_on("the policy's payload differs from the codec's value", text, len);
      ASSERT(0);
    }
  }
  lua_settop(L, top);
  ath__gj_free(doc);
  return a;
}

TEST_IMPL(gw_input_utf8_differential) {
  lua_State* L = luaL_newstate();
  ASSERT_NOT_NULL(L);
  rng_t r = {0x9e3779b97f4a7c15ULL};
  int valid = 0, invalid = 0, mutated_ok = 0;
  for (int i = 0; i < 40000; i++) {
    ath_gw_buf_t b = {0};
    int bad = 0;
    gen_body(&r, &b, &bad);
    ASSERT(!b.oom);
    if (check_text(L, b.data, b.len, !bad, 1))
      valid++;
    else
      invalid++;
    if (!bad) { /* mutations of a valid body: both decoders agree */
      for (int m = 0; m < 4; m++) {
        char* t = ath__memdup(b.data, b.len);
        ASSERT_NOT_NULL(t);
        int nflips = 1 + (int)pick(&r, 3);
        for (int f = 0; f < nflips; f++)
          t[pick(&r, (uint32_t)b.len)] = (char)(pick(&r, 2) ? 0x80 + pick(&r, 0x80) : pick(&r, 0x80));
        mutated_ok += check_text(L, t, b.len, -1, 0);
        free(t);
      }
    }
    ath__gw_buf_free(&b);
  }
  /* the generator covers both sides */
  ASSERT_GT(valid, 10000);
  ASSERT_GT(invalid, 5000);
  ASSERT_GT(mutated_ok, 1000);
  lua_close(L);
  return 0;
}

/* The attack's bodies, exactly. */
TEST_IMPL(gw_input_utf8_attack) {
  static const char* const bad[] = {
    "{\"table_name\":\"accounts\",\"update_body\":{\"role\":\"admin\"},"
    "\"conditions\":[{\"eq_column\":\"id\",\"eq_value\":1}],\"pad\":\"\xed\xa0\x80\"}",
    "{\"table_name\":\"accounts\",\"insert_body\":{\"role\":\"admin\"},\"pad\":\"\xc0\x80\"}",
    "{\"table_name\":\"accounts\",\"insert_body\":{\"role\":\"admin\"},\"pad\":\"\\ud800\"}",
    "{\"table_name\":\"accounts\",\"insert_body\":{\"role\":\"admin\"},\"pad\":\"\\udfff\"}",
    "{\"table_name\":\"accounts\",\"insert_body\":{\"role\":\"admin\"},\"pad\":\"\\ud800\\u0041\"}",
    "{\"table_name\":\"accounts\",\"insert_body\":{\"role\":\"admin\"},\"pad\xf4\x90\x80\x80\":1}",
    "{\"table_name\":\"accounts\",\"insert_body\":{\"role\":\"admin\"},\"pad\":\"\xe2\x82\"}",
  };
  lua_State* L = luaL_newstate();
  ASSERT_NOT_NULL(L);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    check_text(L, bad[i], strlen(bad[i]), 0, 1);
  static const char good[] = "{\"a\":\"\\ud83d\\ude00 \\\\ud800\"}";
  check_text(L, good, sizeof good - 1, 1, 1);
  lua_close(L);
  return 0;
}
