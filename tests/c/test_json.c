/* The payload codec (engine/runtime/lua_json.c, bindings/l_json.c): SEMANTICS §1.3.
 *
 * Error messages are "<path>: <reason>", the path being the root ("input")
 * followed by ".key" for object keys and "[i]" for array indices (Lua's,
 * from 1). Two differ: a cycle is "cycle at <path>", naming the table that
 * holds the reference back to one of its ancestors; and a path too long for
 * the error buffer keeps its start, then "...", then ": <reason>".
 *
 * task.h's ASSERT_NULL/ASSERT_NOT_NULL do not compile with -Werror (they
 * drop a const), hence ASSERT(p != NULL).
 */
#include <math.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "internal.h"
#include "l_json.h"
#include "task.h"

/* Deep equality with raw access; integers and floats differ. */
static const char deq_src[] =
  "function deq(a, b)\n"
  "  if type(a) ~= type(b) then return false end\n"
  "  if type(a) ~= 'table' then\n"
  "    return math.type(a) == math.type(b) and a == b\n"
  "  end\n"
  "  for k, v in next, a do\n"
  "    if not deq(v, rawget(b, k)) then return false end\n"
  "  end\n"
  "  for k in next, b do\n"
  "    if rawget(a, k) == nil then return false end\n"
  "  end\n"
  "  return true\n"
  "end\n"
  "function nest(n)\n"
  "  local t = {}\n"
  "  local c = t\n"
  "  for i = 2, n do c[1] = {}; c = c[1] end\n"
  "  return t\n"
  "end\n";

static void run(lua_State* L, const char* code) {
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "lua error: %s\nin: %s\n", lua_tostring(L, -1), code);
    abort();
  }
}

static lua_State* new_state(void) {
  lua_State* L = luaL_newstate();
  ASSERT(L != NULL);
  luaL_openlibs(L);
  ASSERT_EQ(1, lath_open_json(L));
  lua_setglobal(L, "json");
  run(L, deq_src);
  ASSERT_EQ(0, lua_gettop(L));
  return L;
}

/* Pushes the one value `chunk` returns. */
static void push_value(lua_State* L, const char* chunk) {
  int top = lua_gettop(L);
  if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "lua error: %s\nin: %s\n", lua_tostring(L, -1), chunk);
    abort();
  }
  ASSERT_EQ(top + 1, lua_gettop(L));
}

/* Encodes the top value with root "input", appending to `out`. Checks that
 * the stack is balanced, that out stays NUL-terminated and, on failure,
 * that out->len is back where it was. */
static int encode_top(lua_State* L, ath_buf_t* out, char* err, size_t errlen) {
  int top = lua_gettop(L);
  size_t len0 = out->len;
  int rc = ath__json_encode(L, -1, "input", out, err, errlen);
  ASSERT_EQ(top, lua_gettop(L));
  if (rc != 0) {
    ASSERT_EQ(len0, out->len);
    if (out->data != NULL)
      ASSERT_EQ(0, out->data[len0]);
  } else {
    ASSERT(out->data != NULL);
    ASSERT_EQ(0, out->data[out->len]);
  }
  return rc;
}

static void expect_json(lua_State* L, const char* chunk, const char* want) {
  ath_buf_t b = {NULL, 0, 0};
  char err[256];
  int rc;
  push_value(L, chunk);
  rc = encode_top(L, &b, err, sizeof err);
  if (rc != 0)
    fprintf(stderr, "%s -> %s\n", chunk, err);
  ASSERT_OK(rc);
  ASSERT_STR_EQ(b.data, want);
  ASSERT_EQ(strlen(want), b.len);
  lua_pop(L, 1);
  ath__buf_free(&b);
}

/* The top value must fail with ATH_EINVAL and exactly `want`; pops it. */
static void expect_error_top(lua_State* L, const char* want) {
  ath_buf_t b = {NULL, 0, 0};
  char err[256];
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, err, sizeof err));
  ASSERT_STR_EQ(err, want);
  lua_pop(L, 1);
  ath__buf_free(&b);
}

static void expect_error(lua_State* L, const char* chunk, const char* want) {
  push_value(L, chunk);
  expect_error_top(L, want);
}

/* Decodes `n` bytes; checks that exactly one value was pushed. */
static int decode(lua_State* L, const char* json, size_t n) {
  int top = lua_gettop(L);
  int rc = ath__json_decode(L, json, n);
  ASSERT_EQ(top + 1, lua_gettop(L));
  if (rc != 0)
    ASSERT_EQ(LUA_TSTRING, lua_type(L, -1));
  return rc;
}

static int decode_str(lua_State* L, const char* json) {
  return decode(L, json, strlen(json));
}

/* Encodes what `chunk` returns, decodes the text and checks deep equality. */
static void roundtrip(lua_State* L, const char* chunk) {
  ath_buf_t b = {NULL, 0, 0};
  char err[256];
  push_value(L, chunk);
  lua_pushvalue(L, -1);
  lua_setglobal(L, "orig");
  ASSERT_OK(encode_top(L, &b, err, sizeof err));
  lua_pop(L, 1);
  ASSERT_OK(decode(L, b.data, b.len));
  lua_setglobal(L, "got");
  run(L, "assert(deq(orig, got), 'round trip changed the value')");
  ath__buf_free(&b);
}

TEST_IMPL(json_roundtrip) {
  lua_State* L = new_state();
  roundtrip(L,
            "return {name = 'athena', tags = {'a', 'b', 'c'},"
            " nested = {deep = {deeper = {x = 1, y = {true, false}}}},"
            " flag = true, off = false, n = 42, f = 1.5, s = '', e = {},"
            " list = {{id = 1}, {id = 2, sub = {{}, {1, {2, {3}}}}}},"
            " unicode = 'h\\u{e9}llo w\\u{f6}rld \\u{2713} \\u{1f600}',"
            " ['key with spaces'] = 'v', ['1'] = 'string key'}");
  roundtrip(L, "return 'just a string'");
  roundtrip(L, "return 12");
  roundtrip(L, "return true");
  roundtrip(L, "return 1.25");
  expect_json(L, "return {1, 2, 3}", "[1,2,3]");
  expect_json(L, "return {a = 1}", "{\"a\":1}");
  expect_json(L, "return {{}, {{}}, {'x', false}}", "[{},[{}],[\"x\",false]]");
  expect_json(L, "return {x = {y = {z = 'w'}}}", "{\"x\":{\"y\":{\"z\":\"w\"}}}");
  expect_json(L, "return 'hi'", "\"hi\"");
  expect_json(L, "return true", "true");
  expect_json(L, "return false", "false");
  expect_json(L, "return nil", "null");
  expect_json(L, "return {['1'] = 1}", "{\"1\":1}");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_integers) {
  static const struct {
    const char* chunk;
    const char* text;
    lua_Integer value;
  } cases[] = {
    {"return 0", "0", 0},
    {"return -1", "-1", -1},
    {"return 7", "7", 7},
    {"return math.maxinteger", "9223372036854775807", LUA_MAXINTEGER},
    {"return math.mininteger", "-9223372036854775808", LUA_MININTEGER},
    {"return (1 << 53) + 1", "9007199254740993",
     ((lua_Integer)1 << 53) + 1},
  };
  lua_State* L = new_state();
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    expect_json(L, cases[i].chunk, cases[i].text);
    ASSERT_OK(decode_str(L, cases[i].text));
    ASSERT(lua_isinteger(L, -1));
    ASSERT_EQ(cases[i].value, lua_tointeger(L, -1));
    lua_pop(L, 1);
  }
  expect_json(L, "return {math.maxinteger, math.mininteger, -0}",
              "[9223372036854775807,-9223372036854775808,0]");
  ASSERT_OK(decode_str(L, "[9223372036854775807,-9223372036854775808]"));
  lua_setglobal(L, "got");
  run(L, "assert(math.type(got[1]) == 'integer' and got[1] == math.maxinteger)"
         "assert(math.type(got[2]) == 'integer' and got[2] == math.mininteger)");
  /* Beyond 64 bits a JSON integer can only be a float. */
  ASSERT_OK(decode_str(L, "9223372036854775808"));
  ASSERT(!lua_isinteger(L, -1));
  ASSERT(lua_tonumber(L, -1) == 9223372036854775808.0);
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "-9223372036854775809"));
  ASSERT(!lua_isinteger(L, -1));
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "123456789012345678901234567890"));
  ASSERT(!lua_isinteger(L, -1));
  ASSERT(lua_tonumber(L, -1) == 123456789012345678901234567890.0);
  lua_pop(L, 1);
  lua_close(L);
  return 0;
}

/* Top-level scalars take a path without the parser (decode_scalar in
 * lua_json.c): each decodes to what the parser gives the same text inside
 * an array, and what the parser refuses is refused. */
TEST_IMPL(json_top_level_scalars) {
  static const char* const texts[] = {
    "0", "-0", "7", "-1", "123456789012345678", "-123456789012345678", "1234567890123456789",
    "99999999999999999999", "1.5", "1e2", "true", "false", "null", "\"\"", "\"abc\"",
    "\"\xc3\xa9t\xc3\xa9\"", "\"a\\nb\"", "\"q\\\"\"", " 7", "7 ", "\"x\" ",
  };
  static const char* const bad[] = {"01", "-", "--1", "1-", "+1", "\"\x01\"", "\"a", "\"", "tru", "1x", "\"a\"b\""};
  lua_State* L = new_state();
  char wrapped[64];
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    ASSERT_OK(decode_str(L, texts[i]));
    snprintf(wrapped, sizeof wrapped, "[%s]", texts[i]);
    ASSERT_OK(decode_str(L, wrapped));
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    ASSERT_EQ(lua_type(L, -1), lua_type(L, -2));
    ASSERT_EQ(lua_isinteger(L, -1), lua_isinteger(L, -2));
    ASSERT(lua_rawequal(L, -1, -2));
    lua_pop(L, 2);
  }
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ASSERT_EQ(ATH_EINVAL, decode_str(L, bad[i]));
    lua_pop(L, 1);
  }
  lua_close(L);
  return 0;
}

/* The hand-written fixed notation (fmt_fixed in lua_json.c) against the
 * %.15g/%.16g/%.17g path: the same text wherever both apply, and every
 * output reads back bit for bit. */
TEST_IMPL(json_float_text_matches_printf) {
  static const char* const fmts[] = {"%.15g", "%.16g", "%.17g"};
  uint64_t x = 88172645463325252ull; /* xorshift64 */
  for (int n = 0; n < 200000; n++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    double d;
    switch (n % 4) {
      case 0: d = (double)(int64_t)(x % 100000000) / 100.0; break;   /* prices */
      case 1: d = (double)(int64_t)(x % 2000000) / 1e6 - 1.0; break; /* 6 decimals */
      case 2: d = ldexp((double)(x >> 11), -(int)(x % 80)); break;    /* any bits */
      default: d = (double)(x % 100000) * 0.1; break;                  /* inexact products */
    }
    char got[48], want[48];
    size_t n1 = ath__json_fmt_float(got, sizeof got, d);
    got[n1] = '\0';
    ASSERT_EQ(0, memcmp(&(double){strtod(got, NULL)}, &d, sizeof d));
    char tmp[48];
    for (int i = 0; i < 3; i++) {
      snprintf(tmp, sizeof tmp, fmts[i], d);
      if (strtod(tmp, NULL) == d)
        break;
    }
    size_t tl = strlen(tmp);
    memcpy(want, tmp, tl + 1);
    if (!strpbrk(tmp, ".e"))
      memcpy(want + tl, ".0", 3);
    ASSERT_STR_EQ(want, got);
  }
  return 0;
}

TEST_IMPL(json_floats) {
  static const struct {
    const char* chunk;
    const char* text;
  } cases[] = {
    {"return 2.0", "2.0"},
    {"return -0.0", "-0.0"},
    {"return 0.1", "0.1"},
    {"return 1/3", "0.3333333333333333"},
    {"return 0.1 + 0.2", "0.30000000000000004"},
    {"return 1e300", "1e+300"},
    {"return 5e-324", "4.94065645841247e-324"},
    {"return -2.5", "-2.5"},
    {"return math.pi", "3.141592653589793"},
    {"return 2^53", "9007199254740992.0"},
    {"return 1e15", "1e+15"},
    {"return 123456.0", "123456.0"},
    {"return -1.7976931348623157e308", "-1.7976931348623157e+308"},
    {"return 2.2250738585072014e-308", "2.2250738585072014e-308"},
  };
  lua_State* L = new_state();
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    double want, got;
    push_value(L, cases[i].chunk);
    ASSERT(!lua_isinteger(L, -1));
    want = lua_tonumber(L, -1);
    lua_pop(L, 1);
    expect_json(L, cases[i].chunk, cases[i].text);
    ASSERT_OK(decode_str(L, cases[i].text));
    ASSERT_EQ(LUA_TNUMBER, lua_type(L, -1));
    ASSERT(!lua_isinteger(L, -1));
    got = lua_tonumber(L, -1);
    ASSERT_OK(memcmp(&want, &got, sizeof want)); /* bit for bit */
    lua_pop(L, 1);
  }
  ASSERT_OK(decode_str(L, "-0.0"));
  ASSERT(!lua_isinteger(L, -1));
  ASSERT(signbit(lua_tonumber(L, -1)));
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "1e2")); /* an exponent makes a float */
  ASSERT(!lua_isinteger(L, -1));
  ASSERT(lua_tonumber(L, -1) == 100.0);
  lua_pop(L, 1);
  /* Many values through a table, compared by the Lua side bit for bit. */
  run(L,
      "vals = {}\n"
      "local x = 1.0\n"
      "for i = 1, 200 do x = x * 1.37 + 1 / i; vals[i] = x; vals[200 + i] = "
      "-1 / x end\n");
  lua_getglobal(L, "vals");
  {
    ath_buf_t b = {NULL, 0, 0};
    char err[128];
    ASSERT_OK(encode_top(L, &b, err, sizeof err));
    lua_pop(L, 1);
    ASSERT_OK(decode(L, b.data, b.len));
    lua_setglobal(L, "got");
    run(L,
        "for i = 1, 400 do\n"
        "  assert(math.type(got[i]) == 'float')\n"
        "  assert(string.pack('d', got[i]) == string.pack('d', vals[i]), i)\n"
        "end");
    ath__buf_free(&b);
  }
  lua_close(L);
  return 0;
}

TEST_IMPL(json_holes) {
  lua_State* L = new_state();
  expect_json(L, "return {1, nil, 3}", "[1,null,3]");
  expect_json(L, "return {nil, nil, 3}", "[null,null,3]");
  expect_json(L, "return {[1] = 1, [3] = 3}", "[1,null,3]");
  ASSERT_OK(decode_str(L, "[1,null,3]"));
  ASSERT_EQ(LUA_TTABLE, lua_type(L, -1));
  ASSERT_EQ(LUA_TNUMBER, lua_rawgeti(L, -1, 1));
  ASSERT_EQ(1, lua_tointeger(L, -1));
  ASSERT_EQ(LUA_TNIL, lua_rawgeti(L, -2, 2));
  ASSERT_EQ(LUA_TNUMBER, lua_rawgeti(L, -3, 3));
  ASSERT_EQ(3, lua_tointeger(L, -1));
  lua_pop(L, 4);
  /* A null member leaves the key absent; a null element leaves a hole. */
  ASSERT_OK(decode_str(L, "{\"a\":null,\"b\":1,\"c\":[null]}"));
  lua_setglobal(L, "got");
  run(L,
      "assert(got.a == nil and got.b == 1 and next(got.c) == nil)\n"
      "local n = 0; for _ in next, got do n = n + 1 end; assert(n == 2)");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_sparse) {
  lua_State* L = new_state();
  expect_error(L, "return {[20] = 1}",
               "input: excessively sparse array (max index 20, 1 keys)");
  expect_error(L, "return {[11] = 1}",
               "input: excessively sparse array (max index 11, 1 keys)");
  expect_error(L, "return {x = {[1] = 1, [100] = 2}}",
               "input.x: excessively sparse array (max index 100, 2 keys)");
  expect_error(L, "return {1, 2, 3, 4, 5, [13] = 6}",
               "input: excessively sparse array (max index 13, 6 keys)");
  expect_error(L, "return {[math.maxinteger] = 1}",
               "input: excessively sparse array (max index "
               "9223372036854775807, 1 keys)");
  /* Up to 10 any spread is fine, and beyond it n = 2 x keys still is. */
  expect_json(L, "return {[10] = true}",
              "[null,null,null,null,null,null,null,null,null,true]");
  expect_json(L, "return {1, 2, 3, 4, 5, [12] = 6}",
              "[1,2,3,4,5,null,null,null,null,null,null,6]");
  expect_json(L, "return {[1] = 1, [3] = 3}", "[1,null,3]");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_empty_table) {
  lua_State* L = new_state();
  expect_json(L, "return {}", "{}");
  expect_json(L, "return {{}, {a = {}}}", "[{},{\"a\":{}}]");
  /* Entries removed again leave an empty table too. */
  expect_json(L, "local t = {1, 2, x = 1}; t[1], t[2], t.x = nil; return t",
              "{}");
  ASSERT_OK(decode_str(L, "{}"));
  ASSERT_EQ(LUA_TTABLE, lua_type(L, -1));
  lua_pushnil(L);
  ASSERT_EQ(0, lua_next(L, -2));
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "[]"));
  ASSERT_EQ(LUA_TTABLE, lua_type(L, -1));
  lua_pushnil(L);
  ASSERT_EQ(0, lua_next(L, -2));
  lua_pop(L, 1);
  ASSERT_EQ(0, lua_gettop(L));
  lua_close(L);
  return 0;
}

TEST_IMPL(json_mixed_keys) {
  static const char* const cases[][2] = {
    {"return {a = {1, 2, x = 3}}", "input.a: mixed or non-string table keys"},
    {"return {x = 1, [1] = 2}", "input: mixed or non-string table keys"},
    {"return {[1.5] = 1}", "input: mixed or non-string table keys"},
    {"return {[true] = 1}", "input: mixed or non-string table keys"},
    {"return {[0] = 1}", "input: mixed or non-string table keys"},
    {"return {[-1] = 1}", "input: mixed or non-string table keys"},
    {"return {1, 2, [0] = 0}", "input: mixed or non-string table keys"},
    {"return {[{}] = 1}", "input: mixed or non-string table keys"},
    {"return {list = {{}, {[false] = 1}}}",
     "input.list[2]: mixed or non-string table keys"},
    {"return {a = {b = {[print] = 1}}}",
     "input.a.b: mixed or non-string table keys"},
  };
  lua_State* L = new_state();
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_error(L, cases[i][0], cases[i][1]);
  lua_close(L);
  return 0;
}

TEST_IMPL(json_not_serializable) {
  static const char* const cases[][2] = {
    {"return {user = {cb = print}}", "input.user.cb: function not serializable"},
    {"return {list = {1, 2, io.stdout}}",
     "input.list[3]: userdata not serializable"},
    {"return {co = coroutine.create(print)}",
     "input.co: thread not serializable"},
    {"return {x = 0/0}", "input.x: NaN not serializable"},
    {"return {x = math.huge}", "input.x: inf not serializable"},
    {"return {x = -math.huge}", "input.x: -inf not serializable"},
    {"return print", "input: function not serializable"},
    {"return {a = {{b = {1, print}}}}",
     "input.a[1].b[2]: function not serializable"},
  };
  lua_State* L = new_state();
  size_t i;
  int x;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_error(L, cases[i][0], cases[i][1]);
  lua_createtable(L, 0, 1);
  lua_pushlightuserdata(L, &x);
  lua_setfield(L, -2, "p");
  expect_error_top(L, "input.p: userdata not serializable");
  lua_pushlightuserdata(L, &x);
  expect_error_top(L, "input: userdata not serializable");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_cycle) {
  lua_State* L = new_state();
  /* The message names the table that holds the reference back to one of
   * its ancestors: here t.a.b, whose key c leads back to t.a. */
  expect_error(L, "local t = {a = {b = {}}}; t.a.b.c = t.a; return t",
               "cycle at input.a.b");
  expect_error(L, "local t = {}; t.self = t; return t", "cycle at input");
  expect_error(L, "local t = {{}}; t[1][1] = t; return t", "cycle at input[1]");
  expect_error(L, "local t = {x = {}}; t.x[2] = 0; t.x[1] = t.x; return t",
               "cycle at input.x");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_dag) {
  lua_State* L = new_state();
  /* A table reached twice, but never inside itself, is written twice. */
  expect_json(L, "local s = {1, 2}; return {s, s, {s, {s}}}",
              "[[1,2],[1,2],[[1,2],[[1,2]]]]");
  roundtrip(L, "local s = {k = 'v'}; return {a = s, b = {s, s}, c = {d = s}}");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_invalid_utf8) {
  static const char* const bad[] = {
    "\xC0\xAF",         /* overlong '/' */
    "\xC1\xBF",         /* overlong */
    "\xE0\x80\xAF",     /* overlong, 3 bytes */
    "\xF0\x80\x80\xAF", /* overlong, 4 bytes */
    "\xED\xA0\x80",     /* U+D800, a surrogate */
    "\xED\xBF\xBF",     /* U+DFFF */
    "\xF4\x90\x80\x80", /* U+110000 */
    "\xF5\x80\x80\x80", /* lead byte past U+10FFFF */
    "\xF8\x88\x80\x80\x80",
    "\xE2\x82",         /* truncated */
    "abc\xC3",          /* truncated at the end */
    "\xF0\x9F\x98",     /* truncated 4-byte */
    "\xE2\x28\xA1",     /* bad continuation */
    "\x80",             /* lone continuation */
    "\xFF",
  };
  static const char* const good[] = {
    "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xEF\xBF\xBF",
    "\xF4\x8F\xBF\xBF", "\xED\x9F\xBF", "\xEE\x80\x80", "\x7F", "\xC2\x80",
  };
  lua_State* L = new_state();
  size_t i;
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char json[32];
    lua_createtable(L, 0, 1);
    lua_pushstring(L, bad[i]);
    lua_setfield(L, -2, "s");
    expect_error_top(L, "input.s: invalid UTF-8");
    /* As a key, at any depth. */
    lua_createtable(L, 0, 1);
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, bad[i]);
    lua_setfield(L, -2, "user");
    expect_error_top(L, "input.user: invalid UTF-8 in object key");
    /* And the decoder refuses it in values and keys. */
    snprintf(json, sizeof json, "[\"%s\"]", bad[i]);
    ASSERT_EQ(ATH_EINVAL, decode_str(L, json));
    lua_pop(L, 1);
    snprintf(json, sizeof json, "{\"%s\":1}", bad[i]);
    ASSERT_EQ(ATH_EINVAL, decode_str(L, json));
    lua_pop(L, 1);
  }
  for (i = 0; i < sizeof good / sizeof good[0]; i++) {
    char want[32];
    snprintf(want, sizeof want, "\"%s\"", good[i]);
    lua_pushstring(L, good[i]);
    lua_setglobal(L, "s");
    expect_json(L, "return s", want);
    ASSERT_OK(decode_str(L, want));
    ASSERT_STR_EQ(lua_tostring(L, -1), good[i]);
    lua_pop(L, 1);
  }
  /* An escaped lone low surrogate would decode to invalid UTF-8. */
  ASSERT_EQ(ATH_EINVAL, decode_str(L, "\"\\udc00\""));
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "\"\\ud83d\\ude00\""));
  ASSERT_STR_EQ(lua_tostring(L, -1), "\xF0\x9F\x98\x80");
  lua_pop(L, 1);
  lua_close(L);
  return 0;
}

TEST_IMPL(json_escape) {
  static const char raw[] = "a\"b\\c/\n\t\r\b\f\x01\x1f\x7f\xC3\xA9z";
  static const char want[] =
    "\"a\\\"b\\\\c/\\n\\t\\r\\b\\f\\u0001\\u001f\x7f\xC3\xA9z\"";
  lua_State* L = new_state();
  size_t n;
  const char* s;
  lua_pushstring(L, raw);
  lua_setglobal(L, "s");
  expect_json(L, "return s", want);
  ASSERT_OK(decode_str(L, want));
  ASSERT_STR_EQ(lua_tostring(L, -1), raw);
  lua_pop(L, 1);
  expect_json(L, "return {['k\\n\"1'] = 1}", "{\"k\\n\\\"1\":1}");
  /* Embedded NUL bytes survive. */
  expect_json(L, "return 'a\\0b'", "\"a\\u0000b\"");
  ASSERT_OK(decode_str(L, "\"a\\u0000b\""));
  s = lua_tolstring(L, -1, &n);
  ASSERT_EQ(3, n);
  ASSERT_OK(memcmp(s, "a\0b", 3));
  lua_pop(L, 1);
  /* Every control character, in a string long enough to need growth. */
  run(L,
      "local p = {}\n"
      "for r = 1, 100 do for c = 0, 31 do p[#p + 1] = string.char(c) .. 'x' "
      "end end\n"
      "s = table.concat(p)");
  roundtrip(L, "return {s, s}");
  lua_close(L);
  return 0;
}

/* Both string writers (enc_string for Lua strings, ath__json_put_text for
 * C strings) test 8 bytes at a time for bytes to escape: each such byte,
 * at every position of strings of 1 to 24 bytes, is escaped exactly as a
 * byte at a time would (a word test that missed one would copy it raw). */
TEST_IMPL(json_escape_every_position) {
  static const struct {
    const char* raw;
    const char* esc; /* NULL: enc_string refuses it (not UTF-8) */
    const char* text; /* ath__json_put_text's */
  } specials[] = {
    {"\"", "\\\"", "\\u0022"},   {"\\", "\\\\", "\\u005c"},   {"\x01", "\\u0001", "\\u0001"},
    {"\x1f", "\\u001f", "\\u001f"}, {"\n", "\\n", "\\u000a"}, {" ", " ", " "},
    {"\x7f", "\x7f", "\x7f"},   {"!", "!", "!"},     {"#", "#", "#"},
    {"[", "[", "["},             {"]", "]", "]"},     {"\xC3\xA9", "\xC3\xA9", "\xC3\xA9"},
    {"\xff", NULL, "\\ufffd"},
  };
  lua_State* L = new_state();
  for (size_t k = 0; k < sizeof specials / sizeof specials[0]; k++) {
    for (size_t len = 1; len <= 24; len++) {
      for (size_t pos = 0; pos < len; pos++) {
        char raw[64], want[128], wtext[128];
        size_t rl = strlen(specials[k].raw);
        memset(raw, 'a', pos);
        memcpy(raw + pos, specials[k].raw, rl);
        memset(raw + pos + rl, 'z', len - pos - 1);
        size_t n = len - 1 + rl;
        raw[n] = '\0';
        snprintf(wtext, sizeof wtext, "\"%.*s%s%s\"", (int)pos, raw, specials[k].text, raw + pos + rl);
        ath_buf_t b = {NULL, 0, 0};
        ASSERT_OK(ath__json_put_text(&b, raw, n));
        ASSERT_OK(ath__buf_append(&b, "", 1)); /* it writes no NUL */
        ASSERT_STR_EQ(b.data, wtext);
        ath__buf_free(&b);
        lua_pushlstring(L, raw, n);
        if (specials[k].esc == NULL) {
          char err[256];
          ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, err, sizeof err));
          ath__buf_free(&b);
          lua_pop(L, 1);
          continue;
        }
        snprintf(want, sizeof want, "\"%.*s%s%s\"", (int)pos, raw, specials[k].esc, raw + pos + rl);
        lua_setglobal(L, "s");
        expect_json(L, "return s", want);
      }
    }
  }
  lua_close(L);
  return 0;
}

/* ath__buf_i64 writes two digits per division: every length and both
 * signs, against printf. */
TEST_IMPL(json_fmt_i64) {
  static const int64_t edges[] = {0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 12345, 1765080000123,
                                  INT64_MAX, INT64_MIN, INT64_MIN + 1};
  int64_t v = 1;
  for (int i = 0; i < 19; i++) { /* 10^i - 1, 10^i, 10^i + 1 */
    if (i > 0)
      v *= 10; /* 10^18 at most: no overflow */
    for (int64_t d = -1; d <= 1; d++) {
      for (int sign = -1; sign <= 1; sign += 2) {
        char want[32];
        ath_buf_t b = {NULL, 0, 0};
        int64_t x = sign * (v + d);
        snprintf(want, sizeof want, "%lld", (long long)x);
        ASSERT_OK(ath__buf_i64(&b, x));
        ASSERT_STR_EQ(b.data, want);
        ath__buf_free(&b);
      }
    }
  }
  for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
    char want[32];
    ath_buf_t b = {NULL, 0, 0};
    snprintf(want, sizeof want, "%lld", (long long)edges[i]);
    ASSERT_OK(ath__buf_i64(&b, edges[i]));
    ASSERT_STR_EQ(b.data, want);
    ath__buf_free(&b);
  }
  return 0;
}

TEST_IMPL(json_depth) {
  lua_State* L = new_state();
  ath_buf_t b = {NULL, 0, 0};
  char big[8192], small[64], want[8192];
  size_t i, n;
  char* json;
  /* Depth 1000 (the root table counts as 1) is accepted. */
  push_value(L, "return nest(1000)");
  ASSERT_OK(encode_top(L, &b, big, sizeof big));
  ASSERT_EQ(999 + 2 + 999, b.len);
  ASSERT_OK(memcmp(b.data + 997, "[[{}]]", 6));
  lua_pop(L, 1);
  ASSERT_OK(decode(L, b.data, b.len));
  lua_pop(L, 1);
  /* Depth 1001 is not; the path leads to the 1001st table. */
  push_value(L, "return nest(1001)");
  b.len = 0;
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, big, sizeof big));
  n = (size_t)snprintf(want, sizeof want, "input");
  for (i = 0; i < 1000; i++)
    n += (size_t)snprintf(want + n, sizeof want - n, "[1]");
  snprintf(want + n, sizeof want - n, ": nesting deeper than 1000");
  ASSERT_STR_EQ(big, want);
  /* A small buffer keeps the start of the path and the reason. */
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, small, sizeof small));
  ASSERT_EQ(sizeof small - 1, strlen(small));
  ASSERT_OK(strncmp(small, "input[1][1]", 11));
  ASSERT_STR_EQ(small + strlen(small) - 29, "...: nesting deeper than 1000");
  lua_pop(L, 1);
  /* Objects count the same. */
  run(L,
      "function onest(n) local t = {} local c = t "
      "for i = 2, n do c.k = {} c = c.k end return t end");
  push_value(L, "return onest(1000)");
  ASSERT_OK(encode_top(L, &b, big, sizeof big));
  lua_pop(L, 1);
  push_value(L, "return onest(1001)");
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, big, sizeof big));
  ASSERT_STR_EQ(big + strlen(big) - 30, ".k.k: nesting deeper than 1000");
  lua_pop(L, 1);
  /* The decoder draws the line at the same place. */
  json = malloc(2 * 1001 + 1);
  ASSERT(json != NULL);
  for (i = 0; i < 2; i++) {
    size_t d = i == 0 ? 1000 : 1001;
    memset(json, '[', d);
    memset(json + d, ']', d);
    if (i == 0) {
      ASSERT_OK(decode(L, json, 2 * d));
      ASSERT_EQ(LUA_TTABLE, lua_type(L, -1));
    } else {
      ASSERT_EQ(ATH_EINVAL, decode(L, json, 2 * d));
      ASSERT(strstr(lua_tostring(L, -1), "nesting deeper than 1000") != NULL);
    }
    lua_pop(L, 1);
  }
  free(json);
  ath__buf_free(&b);
  lua_close(L);
  return 0;
}

TEST_IMPL(json_metatable_ignored) {
  lua_State* L = new_state();
  run(L,
      "local function boom() error('metamethod called') end\n"
      "mt = {__index = boom, __newindex = boom, __pairs = boom, __len = boom,\n"
      "      __tostring = boom, __eq = boom, __call = boom, __name = 'X'}");
  expect_json(L,
              "return setmetatable({a = setmetatable({1, nil, 3}, mt)}, mt)",
              "{\"a\":[1,null,3]}");
  expect_json(L,
              "return setmetatable({1, nil, 3},"
              " {__index = function() return 99 end})",
              "[1,null,3]");
  expect_json(L,
              "return setmetatable({}, {__pairs = function()"
              " return next, {x = 1} end})",
              "{}");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_failure_restores) {
  lua_State* L = new_state();
  ath_buf_t b = {NULL, 0, 0};
  char err[256], tiny[8];
  int top;
  ASSERT_OK(ath__buf_append(&b, "prefix", 6));
  /* Fails after writing 100 KB: the buffer grew, its length did not. */
  push_value(L, "return {string.rep('x', 100000), {a = {print}}}");
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, err, sizeof err));
  ASSERT_STR_EQ(err, "input[2].a[1]: function not serializable");
  ASSERT_EQ(6, b.len);
  ASSERT_STR_EQ(b.data, "prefix");
  ASSERT_GE(b.cap, 100000);
  /* A short message buffer truncates, NUL-terminated; none is fine too. */
  memset(tiny, 'Z', sizeof tiny);
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, tiny, 5));
  ASSERT_STR_EQ(tiny, "inpu");
  ASSERT_EQ('Z', tiny[5]);
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, NULL, 0));
  ASSERT_EQ(ATH_EINVAL, encode_top(L, &b, tiny, 0));
  ASSERT_EQ('i', tiny[0]);
  lua_pop(L, 1);
  /* Failures deep inside tables of each kind leave the stack as it was. */
  expect_error(L, "local t = {a = {b = {}}}; t.a.b.c = t.a; return t",
               "cycle at input.a.b");
  expect_error(L, "return {{{{1, 2, x = 1}}}}",
               "input[1][1][1]: mixed or non-string table keys");
  expect_error(L, "return {a = {b = {c = {[50] = 1}}}}",
               "input.a.b.c: excessively sparse array (max index 50, 1 keys)");
  /* Success appends after what was there. */
  push_value(L, "return {1}");
  ASSERT_OK(encode_top(L, &b, err, sizeof err));
  ASSERT_STR_EQ(b.data, "prefix[1]");
  lua_pop(L, 1);
  /* Absolute and relative indices name the same value. */
  push_value(L, "return {true}");
  push_value(L, "return 'top'");
  top = lua_gettop(L);
  b.len = 0;
  ASSERT_OK(ath__json_encode(L, top - 1, "input", &b, err, sizeof err));
  ASSERT_STR_EQ(b.data, "[true]");
  b.len = 0;
  ASSERT_OK(ath__json_encode(L, -2, "input", &b, err, sizeof err));
  ASSERT_STR_EQ(b.data, "[true]");
  ASSERT_EQ(top, lua_gettop(L));
  lua_pop(L, 2);
  /* A NULL root reads "value". */
  lua_pushcfunction(L, luaopen_base);
  ASSERT_EQ(ATH_EINVAL, ath__json_encode(L, -1, NULL, &b, err, sizeof err));
  ASSERT_STR_EQ(err, "value: function not serializable");
  lua_pop(L, 1);
  ASSERT_EQ(0, lua_gettop(L));
  ath__buf_free(&b);
  ASSERT(b.data == NULL);
  lua_close(L);
  return 0;
}

TEST_IMPL(json_decode_errors) {
  static const char* const bad[] = {
    "{\"a\":1",  "[1,2",     "[1] x",    "1 2",     "\"\xFF\"", "[1,]",
    "",          "   ",      "{a:1}",    "[1]]",    "nul",      "{\"a\" 1}",
    "\"abc",     "[01]",     "{\"a\":1,}", "[1 2]", "'x'",      "[NaN]",
    "[Infinity]", "// c\n1", "/* c */ 1", "\"\\x\"", "{1:2}",   "[-]",
    "[.5]",      "[1.]",     "[\"a\nb\"]", "[\"\\ud800\" x]",
  };
  lua_State* L = new_state();
  size_t i;
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = decode_str(L, bad[i]);
    if (rc != ATH_EINVAL)
      fprintf(stderr, "accepted: %s\n", bad[i]);
    ASSERT_EQ(ATH_EINVAL, rc);
    ASSERT_OK(strncmp(lua_tostring(L, -1), "invalid JSON at byte ", 21));
    ASSERT(strchr(lua_tostring(L, -1), '\n') == NULL);
    lua_pop(L, 1);
  }
  /* Embedded NUL in the text. */
  ASSERT_EQ(ATH_EINVAL, decode(L, "[1]\0", 4));
  lua_pop(L, 1);
  /* Typical messages. */
  ASSERT_EQ(ATH_EINVAL, decode_str(L, "[1] x"));
  fprintf(stderr, "trailing garbage: %s\n", lua_tostring(L, -1));
  lua_pop(L, 1);
  ASSERT_EQ(ATH_EINVAL, decode_str(L, "{\"a\":1"));
  fprintf(stderr, "truncated: %s\n", lua_tostring(L, -1));
  lua_pop(L, 1);
  /* Errors in the middle of nested containers leave nothing behind. */
  lua_pushinteger(L, 42);
  ASSERT_EQ(ATH_EINVAL, decode_str(L, "{\"a\":[{\"b\":[1,2,{\"c\":\"\xC0\"}]}]}"));
  ASSERT_EQ(2, lua_gettop(L));
  ASSERT_EQ(42, lua_tointeger(L, 1));
  lua_pop(L, 2);
  /* Whitespace around a value is fine. */
  ASSERT_OK(decode_str(L, " \t\r\n[1] \n"));
  lua_pop(L, 1);
  ASSERT_EQ(0, lua_gettop(L));
  lua_close(L);
  return 0;
}

TEST_IMPL(json_decode_null) {
  lua_State* L = new_state();
  ASSERT_OK(decode_str(L, "null"));
  ASSERT(lua_isnil(L, -1));
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "  null  "));
  ASSERT(lua_isnil(L, -1));
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "[null]"));
  ASSERT_EQ(LUA_TTABLE, lua_type(L, -1));
  lua_pushnil(L);
  ASSERT_EQ(0, lua_next(L, -2));
  lua_pop(L, 1);
  /* Scalars at the top level. */
  ASSERT_OK(decode_str(L, "true"));
  ASSERT(lua_isboolean(L, -1) && lua_toboolean(L, -1));
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "\"s\""));
  ASSERT_STR_EQ(lua_tostring(L, -1), "s");
  lua_pop(L, 1);
  ASSERT_OK(decode_str(L, "5"));
  ASSERT(lua_isinteger(L, -1));
  ASSERT_EQ(5, lua_tointeger(L, -1));
  lua_pop(L, 1);
  ASSERT_EQ(0, lua_gettop(L));
  lua_close(L);
  return 0;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

TEST_IMPL(json_bench) {
  static const char* const chunks[] = {
    "return {i = 1}",
    "return {id = 7, name = 'x'}",
  };
  lua_State* L = new_state();
  ath_buf_t b = {NULL, 0, 0};
  char err[128];
  const int n = 1000000;
  size_t c;
  for (c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
    double t0, t1;
    int i;
    char* json;
    size_t len;
    push_value(L, chunks[c]);
    t0 = now_ns();
    for (i = 0; i < n; i++) {
      b.len = 0;
      if (ath__json_encode(L, -1, "input", &b, err, sizeof err) != 0)
        ASSERT(0);
    }
    t1 = now_ns();
    fprintf(stderr, "encode %s: %.1f ns/op\n", chunks[c] + 7, (t1 - t0) / n);
    lua_pop(L, 1);
    ASSERT_EQ(0, lua_gettop(L));
    json = malloc(b.len + 1);
    ASSERT(json != NULL);
    memcpy(json, b.data, b.len + 1);
    len = b.len;
    t0 = now_ns();
    for (i = 0; i < n; i++) {
      if (ath__json_decode(L, json, len) != 0)
        ASSERT(0);
      lua_pop(L, 1);
    }
    t1 = now_ns();
    fprintf(stderr, "decode %s: %.1f ns/op\n", json, (t1 - t0) / n);
    free(json);
  }
  ASSERT_EQ(strlen("{\"id\":7,\"name\":\"x\"}"), b.len);
  ath__buf_free(&b);
  lua_close(L);
  return 0;
}

/* An allocator that fails once its budget of growing allocations is spent. */
typedef struct {
  int limited;
  long budget;
  long failures;
} alloc_ctl_t;

static void* limited_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  alloc_ctl_t* c = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (c->limited && (ptr == NULL || nsize > osize)) {
    if (c->budget <= 0) {
      c->failures++;
      return NULL;
    }
    c->budget--;
  }
  return realloc(ptr, nsize);
}

/* decode(s) -> rc, value or message */
static int decode_cf(lua_State* L) {
  size_t len;
  const char* s = lua_tolstring(L, 1, &len);
  int rc = ath__json_decode(L, s, len);
  lua_pushinteger(L, rc);
  lua_insert(L, -2);
  return 2;
}

TEST_IMPL(json_decode_memerr) {
  alloc_ctl_t ctl = {0, 0, 0};
  lua_State* L = lua_newstate(limited_alloc, &ctl);
  long budget, errmem = 0, enomem = 0;
  ath_buf_t b = {NULL, 0, 0};
  char err[128];
  int rc;
  ASSERT(L != NULL);
  luaL_openlibs(L);
  run(L, deq_src);
  /* Escaped strings longer than the decoder's arena send yajl to malloc. */
  run(L,
      "local long = string.rep('a\\\\n', 3000)\n"
      "local t = {}\n"
      "for i = 1, 60 do t[i] = {id = i, name = 'n' .. i, tags = {'x', 'y'},\n"
      "  more = {f = i / 7, ok = i % 2 == 0}} end\n"
      "t[61] = long; t[62] = {deep = nest(40)}\n"
      "want = t\n");
  lua_getglobal(L, "want");
  ASSERT_OK(ath__json_encode(L, -1, "input", &b, err, sizeof err));
  lua_pop(L, 1);
  for (budget = 0;; budget++) {
    int status;
    lua_pushcfunction(L, decode_cf);
    lua_pushlstring(L, b.data, b.len);
    ctl.limited = 1;
    ctl.budget = budget;
    status = lua_pcall(L, 1, 2, 0);
    ctl.limited = 0;
    if (status == LUA_ERRMEM) {
      errmem++;
      lua_pop(L, 1);
      continue;
    }
    ASSERT_EQ(LUA_OK, status);
    rc = (int)lua_tointeger(L, -2);
    if (rc == ATH_ENOMEM) {
      enomem++;
      lua_pop(L, 2);
      continue;
    }
    ASSERT_OK(rc);
    lua_setglobal(L, "got");
    lua_pop(L, 1);
    run(L, "assert(deq(want, got))");
    break;
  }
  fprintf(stderr, "decode: %ld budgets failed with a memory error, %ld with "
          "ENOMEM, success at %ld\n", errmem, enomem, budget);
  ASSERT_GT(errmem, 10);
  /* The state is sound: decoding works and leaves nothing behind. */
  ASSERT_OK(decode_str(L, "{\"a\":[1,2,3]}"));
  lua_pop(L, 1);
  /* The encoder never raises, even when the Lua stack cannot grow. */
  run(L, "deep = nest(900)");
  lua_gc(L, LUA_GCCOLLECT);
  lua_getglobal(L, "deep");
  ctl.limited = 1;
  ctl.budget = 0;
  b.len = 0;
  rc = ath__json_encode(L, -1, "input", &b, err, sizeof err);
  ctl.limited = 0;
  fprintf(stderr, "encode without memory: %d %s\n", rc, rc ? err : "");
  ASSERT(rc == 0 || rc == ATH_ENOMEM);
  lua_pop(L, 1);
  ath__buf_free(&b);
  lua_close(L);
  return 0;
}

TEST_IMPL(json_decode_reentrant) {
  lua_State* L = new_state();
  ath_buf_t b = {NULL, 0, 0};
  char err[128];
  int round;
  lua_Integer nested;
  /* Finalizers run during the allocations a decode makes; one that decodes
   * in turn must not disturb the parse it interrupts. The collector runs
   * flat out only during the decodes, so that the test stays fast. */
  run(L,
      "nested = 0\n"
      "in_decode = false\n"
      "function litter(n)\n"
      "  for i = 1, n do\n"
      "    setmetatable({}, {__gc = function()\n"
      "      local v = json.decode('[1,{\"a\":\"b\"},[null,2]]')\n"
      "      assert(v[2].a == 'b' and v[3][2] == 2)\n"
      "      if in_decode then nested = nested + 1 end\n"
      "    end})\n"
      "  end\n"
      "end\n"
      "big = {}\n"
      "for i = 1, 300 do big[i] = {id = i, s = 'str' .. i, l = {i, i + 1}} end");
  lua_getglobal(L, "big");
  ASSERT_OK(encode_top(L, &b, err, sizeof err));
  lua_pop(L, 1);
  for (round = 0; round < 20; round++) {
    run(L, "litter(50)");
    lua_pushboolean(L, 1);
    lua_setglobal(L, "in_decode");
    lua_gc(L, LUA_GCINC, 0, 1000, 0);
    ASSERT_OK(decode(L, b.data, b.len));
    lua_gc(L, LUA_GCINC, 200, 100, 0);
    lua_pushboolean(L, 0);
    lua_setglobal(L, "in_decode");
    lua_setglobal(L, "got");
    run(L, "assert(deq(big, got))");
  }
  lua_getglobal(L, "nested");
  nested = lua_tointeger(L, -1);
  fprintf(stderr, "decodes from finalizers during a decode: %lld\n",
          (long long)nested);
  ASSERT_GT(nested, 0);
  lua_pop(L, 1);
  ath__buf_free(&b);
  lua_close(L);
  return 0;
}

TEST_IMPL(json_lua_module) {
  lua_State* L = new_state();
  run(L,
      "assert(type(json.encode) == 'function' and type(json.decode) == "
      "'function')\n"
      "assert(json.encode({1, 2, {a = 'b'}}) == '[1,2,{\"a\":\"b\"}]')\n"
      "assert(json.encode(nil) == 'null' and json.encode(2.0) == '2.0')\n"
      "local ok, e = pcall(json.encode, {user = {cb = print}})\n"
      "assert(not ok and type(e) == 'table')\n"
      "assert(e.code == 'EINVAL', e.code)\n"
      "assert(e.message == 'value.user.cb: function not serializable', "
      "e.message)\n"
      "ok, e = pcall(json.encode, {x = 0/0}, 'input')\n"
      "assert(e.message == 'input.x: NaN not serializable', e.message)\n"
      "ok, e = pcall(json.encode, setmetatable({}, {__index = {}}))\n"
      "assert(ok and e == '{}')\n"
      "local v, err = json.decode('[1,')\n"
      "assert(v == nil and type(err) == 'table' and err.code == 'EINVAL')\n"
      "assert(type(err.message) == 'string' and #err.message > 0)\n"
      "v, err = json.decode('null')\n"
      "assert(v == nil and err == nil)\n"
      "v = json.decode('{\"a\":[1,2.5,\"x\",true,null,{}]}')\n"
      "assert(math.type(v.a[1]) == 'integer' and math.type(v.a[2]) == "
      "'float')\n"
      "assert(v.a[3] == 'x' and v.a[4] == true and v.a[5] == nil)\n"
      "assert(type(v.a[6]) == 'table' and next(v.a[6]) == nil)\n"
      "ok, e = pcall(json.decode, {})\n"
      "assert(not ok and e:find('bad argument #1', 1, true), e)\n"
      "ok, e = pcall(json.decode)\n"
      "assert(not ok and e:find('bad argument #1', 1, true), e)\n"
      "ok, e = pcall(json.encode)\n"
      "assert(not ok and e:find('bad argument #1', 1, true), e)\n"
      /* A large value goes through the scratch buffer, which is then let go
       * of; later calls still work. */
      "local big = string.rep('y', 200000)\n"
      "assert(json.decode(json.encode({big}))[1] == big)\n"
      "assert(json.encode({k = 1}) == '{\"k\":1}')\n");
  lua_close(L);
  return 0;
}

TEST_IMPL(json_err_names) {
  ASSERT_STR_EQ(ath_err_name(ATH_EINVAL), "EINVAL");
  ASSERT_STR_EQ(ath_err_name(ATH_ETIMEDOUT), "ETIMEDOUT");
  ASSERT_STR_EQ(ath_err_name(ATH_ESTORE), "ESTORE");
  ASSERT_STR_EQ(ath_err_name(ATH_ENONDETERMINISM), "ENONDETERMINISM");
  ASSERT_STR_EQ(ath_err_name(0), "EUNKNOWN");
  ASSERT_STR_EQ(ath_err_name(-99999), "EUNKNOWN");
  ASSERT_STR_EQ(ath_strerror(ATH_ENOMEM), "out of memory");
  ASSERT_STR_EQ(ath_strerror(ATH_ECANCELED), "task cancelled");
  ASSERT(ath_strerror(12345) != NULL);
  ASSERT_EQ(ATH_EINVAL, ath_err_code("EINVAL"));
  ASSERT_EQ(ATH_ESHUTDOWN, ath_err_code("ESHUTDOWN"));
  ASSERT_EQ(ATH_EHEARTBEAT, ath_err_code("EHEARTBEAT"));
  ASSERT_EQ(0, ath_err_code("EUNKNOWN"));
  ASSERT_EQ(0, ath_err_code("einval"));
  ASSERT_EQ(0, ath_err_code(""));
  ASSERT_EQ(0, ath_err_code(NULL));
#define XX(name, _)                                        \
  ASSERT_EQ(ATH_##name, ath_err_code(ath_err_name(ATH_##name))); \
  ASSERT_STR_EQ(ath_err_name(ATH_##name), #name);
  ATH_ERRNO_MAP(XX)
#undef XX
  return 0;
}

TEST_IMPL(json_buf) {
  ath_buf_t b = {NULL, 0, 0};
  size_t i, reallocs = 0, cap = 0;
  ASSERT_OK(ath__buf_append(&b, NULL, 0));
  ASSERT(b.data != NULL);
  ASSERT_EQ(0, b.len);
  ASSERT_EQ(0, b.data[0]);
  for (i = 0; i < 100000; i++) {
    ASSERT_OK(ath__buf_append(&b, "ab", 2));
    if (b.cap != cap) {
      reallocs++;
      cap = b.cap;
    }
    ASSERT_LT(b.len, b.cap);
    ASSERT_EQ(0, b.data[b.len]);
  }
  ASSERT_EQ(200000, b.len);
  ASSERT_LE(reallocs, 20); /* geometric growth */
  ASSERT_OK(memcmp(b.data + 199998, "ab", 2));
  ath__buf_free(&b);
  ASSERT(b.data == NULL);
  ASSERT_EQ(0, b.len);
  ASSERT_EQ(0, b.cap);
  return 0;
}
