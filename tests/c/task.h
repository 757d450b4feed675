/* Test helpers, after libuv's test/task.h: assertions print both sides and
 * abort(); unlike assert() they are never compiled out. */
#ifndef ATHENA_TEST_TASK_H
#define ATHENA_TEST_TASK_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEST_IMPL(name) \
  int run_test_##name(void); \
  int run_test_##name(void)

#define ASSERT_BASE(a, op, b, type, fmt)                                    \
  do {                                                                      \
    type const eval_a = (a);                                                \
    type const eval_b = (b);                                                \
    if (!(eval_a op eval_b)) {                                              \
      fprintf(stderr, "%s:%d: assertion failed: `%s %s %s` (" fmt " " #op \
              " " fmt ")\n", __FILE__, __LINE__, #a, #op, #b, eval_a,      \
              eval_b);                                                      \
      abort();                                                              \
    }                                                                       \
  } while (0)

#define ASSERT_EQ(a, b) ASSERT_BASE(a, ==, b, int64_t, "%" PRId64)
#define ASSERT_NE(a, b) ASSERT_BASE(a, !=, b, int64_t, "%" PRId64)
#define ASSERT_GE(a, b) ASSERT_BASE(a, >=, b, int64_t, "%" PRId64)
#define ASSERT_GT(a, b) ASSERT_BASE(a, >, b, int64_t, "%" PRId64)
#define ASSERT_LE(a, b) ASSERT_BASE(a, <=, b, int64_t, "%" PRId64)
#define ASSERT_LT(a, b) ASSERT_BASE(a, <, b, int64_t, "%" PRId64)
#define ASSERT_OK(a) ASSERT_EQ(0, a)
#define ASSERT(expr) ASSERT_NE(0, !!(expr))
#define ASSERT_NULL(p) ASSERT_BASE((const void*)(p), ==, NULL, const void*, "%p")
#define ASSERT_NOT_NULL(p) ASSERT_BASE((const void*)(p), !=, NULL, const void*, "%p")

#define ASSERT_STR_EQ(a, b)                                                   \
  do {                                                                        \
    const char* sa = (a);                                                     \
    const char* sb = (b);                                                     \
    if (sa == NULL || sb == NULL || strcmp(sa, sb) != 0) {                    \
      fprintf(stderr, "%s:%d: assertion failed: `%s == %s` (\"%s\" == \"%s\")\n", \
              __FILE__, __LINE__, #a, #b, sa ? sa : "(null)",                 \
              sb ? sb : "(null)");                                            \
      abort();                                                                \
    }                                                                         \
  } while (0)

/* The URL the pg fixture wrote (ctest sets ATHENA_PG_URL_FILE for the
 * db_pg* tests); no URL fails the test. */
static inline const char* test_pg_url(void) {
  const char* path = getenv("ATHENA_PG_URL_FILE");
  ASSERT_NOT_NULL(path);
  FILE* f = fopen(path, "r");
  ASSERT_NOT_NULL(f);
  static _Thread_local char url[512]; /* threads of one test read it too */
  ASSERT_NOT_NULL(fgets(url, sizeof(url), f));
  fclose(f);
  url[strcspn(url, "\r\n")] = '\0';
  return url;
}

#endif
