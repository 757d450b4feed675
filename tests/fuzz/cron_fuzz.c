/* libFuzzer target for the cron parser and next-occurrence calculator
 * (engine/runtime/cron.c, docs/cron.md). Build and run: tests/fuzz/README.md.
 *
 * Each input is copied and NUL-terminated (so it ends at its first NUL, like
 * any C string handed to ath__cron_parse) and parsed. Invariants checked:
 *
 *   parse, any input
 *     - returns 0 or ATH_EINVAL; never writes *out on error;
 *     - the message is "invalid cron expression \"<expr>\": <reason> at
 *       column <c>" with 1 <= c <= strlen(expr) + 1, NUL-terminated, and a
 *       short err buffer (errlen 1..16) is never overrun (ASan);
 *     - deterministic (same result and struct twice);
 *     - whitespace around the expression changes nothing but the column
 *       (+1 for a leading space, except the column-1 reasons);
 *     - ASCII case does not matter (names, L, aliases);
 *   a parsed expression
 *     - bitsets hold only values in range (second/minute 0-59, hour 0-23,
 *       dom 1-31, month 1-12, dow 0-6, n#k with k 1-5), at least one month;
 *     - UTC next(after) for reference times from 1969 to 9990: rc 0 (the
 *       parser rejects what cannot fire within 8 years), next > after,
 *       next % 1000 == 0, next - after <= 8 years + a day; next matches the
 *       expression by an independent matcher (gmtime_r); no second in
 *       (after, next) matches (scanned up to an hour); next(next - 1 ms) ==
 *       next; next(next) > next;
 *     - local next (TZ=America/New_York, set in LLVMFuzzerInitialize):
 *       rc 0 or ATH_EINVAL; on 0 the same bounds, the local wall time of
 *       next matches, next(next - 1 ms) == next, and no first occurrence of
 *       a matching wall time lies in (after, next) (scanned up to an hour).
 * A violation prints the expression and aborts (libFuzzer saves the input).
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* setenv, gmtime_r, localtime_r, stat */
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "athena.h"
#include "cron.h"

#define YEAR8_MS ((int64_t)(8 * 366 + 1) * 86400 * 1000)
#define SCAN_SECS 3600
#define MAX_INPUT 4096

int LLVMFuzzerInitialize(int* argc, char*** argv);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static const char* g_expr = "";

static void fail(const char* what, int64_t a, int64_t b) {
  fprintf(stderr, "cron_fuzz: invariant violated: %s (%lld, %lld) for expression \"%s\"\n", what,
          (long long)a, (long long)b, g_expr);
  abort();
}

#define CHECK(cond, what, a, b) \
  do {                          \
    if (!(cond))                \
      fail(what, (int64_t)(a), (int64_t)(b)); \
  } while (0)

/* -------------------------------------------------- independent matcher */

static int is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int mdays(int y, int m) {
  static const int len[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : len[m];
}

/* Whether civil time tm (year, month, day, weekday, h, m, s) matches c, from
 * the bitsets' documented meaning only. */
static int matches(const ath_cron_t* c, const struct tm* tm) {
  int y = tm->tm_year + 1900, mo = tm->tm_mon + 1, d = tm->tm_mday, w = tm->tm_wday;
  int len = mdays(y, mo);
  int dom_ok, dow_ok, day_ok;
  if (!(c->seconds >> tm->tm_sec & 1) || !(c->minutes >> tm->tm_min & 1) ||
      !(c->hours >> tm->tm_hour & 1) || !(c->months >> mo & 1))
    return 0;
  dom_ok = (c->dom >> d & 1) || (c->dom_last && d == len);
  dow_ok = (c->dow >> w & 1) || ((c->dow_last >> w & 1) && d + 7 > len) ||
           ((c->dow_nth[w] >> ((d - 1) / 7)) & 1);
  if (c->dom_restricted && c->dow_restricted)
    day_ok = dom_ok || dow_ok;
  else if (c->dom_restricted)
    day_ok = dom_ok;
  else if (c->dow_restricted)
    day_ok = dow_ok;
  else
    day_ok = 1;
  return day_ok;
}

static int utc_matches(const ath_cron_t* c, int64_t secs) {
  time_t t = (time_t)secs;
  struct tm tm;
  if (gmtime_r(&t, &tm) == NULL)
    return 0;
  return matches(c, &tm);
}

static int same_wall(const struct tm* a, const struct tm* b) {
  return a->tm_year == b->tm_year && a->tm_mon == b->tm_mon && a->tm_mday == b->tm_mday &&
         a->tm_hour == b->tm_hour && a->tm_min == b->tm_min && a->tm_sec == b->tm_sec;
}

/* Whether instant `secs` is the first occurrence of its local wall time
 * (no instant up to 3 hours earlier shows the same wall time). */
static int first_occurrence(int64_t secs) {
  static const int back[] = {900, 1800, 2700, 3600, 5400, 7200, 10800};
  time_t t = (time_t)secs;
  struct tm tm, e;
  size_t i;
  if (localtime_r(&t, &tm) == NULL)
    return 0;
  for (i = 0; i < sizeof back / sizeof back[0]; i++) {
    time_t u = (time_t)(secs - back[i]);
    if (localtime_r(&u, &e) != NULL && same_wall(&tm, &e))
      return 0;
  }
  return 1;
}

static int local_matches(const ath_cron_t* c, int64_t secs) {
  time_t t = (time_t)secs;
  struct tm tm;
  if (localtime_r(&t, &tm) == NULL)
    return 0;
  return matches(c, &tm);
}

/* ---------------------------------------------------------------- checks */

/* "... at column <c>" at the end of msg: c, or -1. */
static long column_of(const char* msg) {
  const char* p = strstr(msg, " at column ");
  const char* last = NULL;
  while (p != NULL) {
    last = p;
    p = strstr(p + 1, " at column ");
  }
  if (last == NULL)
    return -1;
  return strtol(last + 11, NULL, 10);
}

/* Whether the reason (after the quoted expression of length len) is one
 * that always reports column 1. */
static int column1_reason(const char* msg, size_t len) {
  const char* reason = msg + 25 + len + 1; /* past `invalid cron expression "<expr>"` */
  static const char a[] = ": expected 5 or 6 fields, got ";
  static const char b[] = ": no matching time within 8 years at column ";
  return strncmp(reason, a, sizeof a - 1) == 0 || strncmp(reason, b, sizeof b - 1) == 0;
}

static void check_struct(const ath_cron_t* c) {
  int w;
  CHECK((c->seconds >> 60) == 0 && c->seconds != 0, "seconds bitset", c->seconds >> 32, c->seconds);
  CHECK((c->minutes >> 60) == 0 && c->minutes != 0, "minutes bitset", c->minutes >> 32, c->minutes);
  CHECK((c->hours >> 24) == 0 && c->hours != 0, "hours bitset", c->hours, 0);
  CHECK((c->dom & 1u) == 0, "dom bit 0", c->dom, 0);
  CHECK((c->months & 1u) == 0 && (c->months >> 13) == 0 && c->months != 0, "months bitset",
        c->months, 0);
  CHECK((c->dow & 0x80u) == 0 && (c->dow_last & 0x80u) == 0, "dow bit 7", c->dow, c->dow_last);
  for (w = 0; w < 7; w++)
    CHECK((c->dow_nth[w] & 0xe0u) == 0, "dow_nth k > 5", w, c->dow_nth[w]);
  CHECK(c->dom_last <= 1 && c->dom_restricted <= 1 && c->dow_restricted <= 1, "flags",
        c->dom_last, c->dom_restricted);
}

/* The first whole second (epoch seconds) strictly after `ms`. */
static int64_t first_second_after(int64_t ms) {
  int64_t q = ms / 1000;
  if (ms % 1000 != 0 && ms < 0)
    q--; /* floor */
  return q + 1;
}

static void check_utc(const ath_cron_t* c, int64_t after) {
  int64_t next = 0, again = 0, s, lim;
  int rc = ath__cron_next(c, after, 0, &next);
  CHECK(rc == 0, "UTC next failed for a parsed expression", after, rc);
  CHECK(next > after, "next <= after", after, next);
  CHECK(next % 1000 == 0, "next not a whole second", after, next);
  CHECK(next - after <= YEAR8_MS, "next more than 8 years after", after, next);
  CHECK(utc_matches(c, next / 1000), "UTC next does not match", after, next);
  /* no match skipped: every whole second in (after, next) */
  s = first_second_after(after);
  lim = next / 1000;
  if (lim - s > SCAN_SECS)
    lim = s + SCAN_SECS;
  for (; s < lim; s++)
    CHECK(!utc_matches(c, s), "UTC next skipped a match", after, s * 1000);
  rc = ath__cron_next(c, next - 1, 0, &again);
  CHECK(rc == 0 && again == next, "UTC next(next - 1) != next", next, again);
  if (next / 1000 < 253402300799LL - 9 * 366 * 86400LL) {
    rc = ath__cron_next(c, next, 0, &again);
    CHECK(rc == 0 && again > next, "UTC next(next) <= next", next, again);
  }
}

static void check_local(const ath_cron_t* c, int64_t after) {
  int64_t next = 0, again = 0, s, lim;
  int rc = ath__cron_next(c, after, 1, &next);
  CHECK(rc == 0 || rc == ATH_EINVAL, "local next rc", after, rc);
  if (rc != 0)
    return;
  CHECK(next > after, "local next <= after", after, next);
  CHECK(next % 1000 == 0, "local next not a whole second", after, next);
  CHECK(next - after <= YEAR8_MS, "local next more than 8 years after", after, next);
  CHECK(local_matches(c, next / 1000), "local next does not match", after, next);
  s = first_second_after(after);
  lim = next / 1000;
  if (lim - s > SCAN_SECS)
    lim = s + SCAN_SECS;
  for (; s < lim; s++)
    CHECK(!(local_matches(c, s) && first_occurrence(s)), "local next skipped a match", after,
          s * 1000);
  rc = ath__cron_next(c, next - 1, 1, &again);
  CHECK(rc == 0 && again == next, "local next(next - 1) != next", next, again);
}

/* Reference times (epoch ms): the epoch edges, today-ish, leap days, New
 * York DST changes (2026-03-08 07:00Z gap, 2026-11-01 06:00Z repeat), odd
 * milliseconds, far years. */
static const int64_t UTC_REFS[] = {
    -1LL,              /* 1969-12-31T23:59:59.999Z */
    0LL,               /* 1970-01-01 */
    1735689600000LL,   /* 2025-01-01T00:00:00Z */
    1740787199999LL,   /* 2025-02-28T23:59:59.999Z */
    1772953199999LL,   /* 2026-03-08T06:59:59.999Z */
    1792990800500LL,   /* 2026-10-26T05:00:00.500Z */
    1835481599000LL,   /* 2028-02-29T23:59:59Z */
    4107542399000LL,   /* 2100-02-28T23:59:59Z */
    253087056000000LL, /* 9990-01-01T00:00:00Z */
};
static const int64_t LOCAL_REFS[] = {
    1735689600000LL, /* 2025-01-01T00:00:00Z */
    1772953199999LL, /* 2026-03-08T06:59:59.999Z = 01:59:59.999 EST */
    1793511000000LL, /* 2026-11-01T05:30:00Z = 01:30 EDT */
    1793514600000LL, /* 2026-11-01T06:30:00Z = 01:30 EST (repeat) */
    1835481599000LL, /* 2028-02-29T23:59:59Z */
};

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  setenv("TZ", "America/New_York", 1);
  tzset();
  return 0;
}

static int parse(const char* expr, ath_cron_t* out, char* err, size_t errlen) {
  return ath__cron_parse(expr, out, err, errlen);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static char expr[MAX_INPUT + 1], variant[MAX_INPUT + 3];
  static char err[MAX_INPUT + 512], err2[MAX_INPUT + 512];
  ath_cron_t c, c2, poison;
  size_t len, i, k;
  int rc, rc2;
  long col, col2;

  if (size > MAX_INPUT)
    return 0;
  memcpy(expr, data, size);
  expr[size] = '\0';
  len = strlen(expr);
  g_expr = expr;

  /* error path: *out untouched, message well formed */
  memset(&poison, 0xa5, sizeof poison);
  c = poison;
  rc = parse(expr, &c, err, sizeof err);
  CHECK(rc == 0 || rc == ATH_EINVAL, "parse rc", rc, 0);
  if (rc != 0) {
    CHECK(memcmp(&c, &poison, sizeof c) == 0, "parse wrote *out on error", 0, 0);
    CHECK(memchr(err, '\0', sizeof err) != NULL, "message not NUL-terminated", 0, 0);
    CHECK(strncmp(err, "invalid cron expression \"", 25) == 0, "message prefix", 0, 0);
    CHECK(strncmp(err + 25, expr, len) == 0 && err[25 + len] == '"', "message quotes expr", 0, 0);
    col = column_of(err);
    CHECK(col >= 1 && (size_t)col <= len + 1, "column out of range", col, len);
    /* short buffers: truncated, terminated, never overrun */
    for (k = 1; k <= 16; k++) {
      char small[17];
      memset(small, 'x', sizeof small);
      rc2 = parse(expr, &c, small, k);
      CHECK(rc2 == ATH_EINVAL, "short buffer rc", rc2, k);
      CHECK(strlen(small) == k - 1, "short buffer not truncated", strlen(small), k);
      CHECK(small[k] == 'x', "short buffer overrun", k, 0);
    }
    rc2 = parse(expr, &c, NULL, 0);
    CHECK(rc2 == ATH_EINVAL, "NULL err rc", rc2, 0);
  } else {
    check_struct(&c);
  }

  /* deterministic */
  rc2 = parse(expr, &c2, err2, sizeof err2);
  CHECK(rc2 == rc, "parse not deterministic (rc)", rc, rc2);
  if (rc == 0)
    CHECK(memcmp(&c, &c2, sizeof c) == 0, "parse not deterministic (struct)", 0, 0);
  else
    CHECK(strcmp(err, err2) == 0, "parse not deterministic (message)", 0, 0);

  /* surrounding whitespace: same result, column + 1 */
  variant[0] = ' ';
  memcpy(variant + 1, expr, len);
  variant[len + 1] = '\t';
  variant[len + 2] = '\0';
  rc2 = parse(variant, &c2, err2, sizeof err2);
  CHECK(rc2 == rc, "leading/trailing whitespace changes the result", rc, rc2);
  if (rc == 0) {
    CHECK(memcmp(&c, &c2, sizeof c) == 0, "whitespace changes the struct", 0, 0);
  } else {
    col = column_of(err);
    col2 = column_of(err2);
    if (column1_reason(err, len))
      CHECK(col2 == 1, "column-1 reason moved", col, col2);
    else
      CHECK(col2 == col + 1, "column not shifted by the leading space", col, col2);
  }

  /* ASCII case does not matter */
  for (i = 0; i < len; i++) {
    char ch = expr[i];
    variant[i] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 'a' + 'A') : ch;
  }
  variant[len] = '\0';
  rc2 = parse(variant, &c2, NULL, 0);
  CHECK(rc2 == rc, "case changes the result", rc, rc2);
  if (rc == 0)
    CHECK(memcmp(&c, &c2, sizeof c) == 0, "case changes the struct", 0, 0);

  if (rc != 0)
    return 0;

  for (i = 0; i < sizeof UTC_REFS / sizeof UTC_REFS[0]; i++)
    check_utc(&c, UTC_REFS[i]);
  for (i = 0; i < sizeof LOCAL_REFS / sizeof LOCAL_REFS[0]; i++)
    check_local(&c, LOCAL_REFS[i]);

  /* argument checks */
  {
    int64_t n = 0;
    CHECK(ath__cron_next(&c, 0, 2, &n) == ATH_EINVAL, "local_tz 2 accepted", 0, 0);
    CHECK(ath__cron_next(NULL, 0, 0, &n) == ATH_EINVAL, "NULL cron accepted", 0, 0);
    CHECK(ath__cron_next(&c, 0, 0, NULL) == ATH_EINVAL, "NULL out accepted", 0, 0);
    CHECK(ath__cron_next(&c, 253402300800000LL, 0, &n) == ATH_EINVAL, "year 10000 accepted", 0, 0);
  }
  return 0;
}
