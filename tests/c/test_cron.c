/* Cron parser and next-occurrence tests (engine/runtime/cron.c, docs/cron.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cron.h"
#include "task.h"

/* ---------------------------------------------------------------- helpers */

/* Independent of cron.c's arithmetic on purpose: counts days year by year.
 * Years 1900-2200 are enough here. */
static int t_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static int t_mdays(int y, int m) {
  static const int len[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && t_leap(y) ? 29 : len[m];
}

static int64_t t_days(int y, int m, int d) {
  int64_t days = 0;
  int i;
  ASSERT(y >= 1900 && y <= 2200);
  for (i = 1970; i < y; i++)
    days += t_leap(i) ? 366 : 365;
  for (i = y; i < 1970; i++)
    days -= t_leap(i) ? 366 : 365;
  for (i = 1; i < m; i++)
    days += t_mdays(y, i);
  return days + d - 1;
}

/* "2026-03-08T02:30:00Z" or "...:00.250Z" (UTC) to epoch milliseconds. */
static int64_t iso_ms(const char* s) {
  int y, mo, d, h, mi, sec, ms = 0, n = 0;
  char z = 0;
  if (sscanf(s, "%d-%d-%dT%d:%d:%d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6) {
    fprintf(stderr, "bad time literal %s\n", s);
    abort();
  }
  if (s[n] == '.') {
    ASSERT_EQ(1, sscanf(s + n + 1, "%3d", &ms));
    n += 4;
  }
  z = s[n];
  ASSERT_EQ('Z', z);
  return ((t_days(y, mo, d) * 86400) + h * 3600 + mi * 60 + sec) * 1000 + ms;
}

/* Epoch milliseconds to "YYYY-MM-DDTHH:MM:SSZ" (".mmm" when not whole). */
static const char* fmt_ms(int64_t ms, char* buf, size_t len) {
  int64_t secs = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
  int64_t rem = secs - days * 86400;
  int y = 1970, m = 1;
  int frac = (int)(ms - secs * 1000);
  while (days < 0) {
    y--;
    days += t_leap(y) ? 366 : 365;
  }
  while (days >= (t_leap(y) ? 366 : 365)) {
    days -= t_leap(y) ? 366 : 365;
    y++;
  }
  while (days >= t_mdays(y, m)) {
    days -= t_mdays(y, m);
    m++;
  }
  if (frac != 0)
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", y, m,
             (int)days + 1, (int)(rem / 3600), (int)(rem / 60 % 60),
             (int)(rem % 60), frac);
  else
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02dZ", y, m, (int)days + 1,
             (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60));
  return buf;
}

static ath_cron_t parse_ok(const char* expr) {
  ath_cron_t c;
  char err[256] = "";
  int rc = ath__cron_parse(expr, &c, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "parse(\"%s\") failed: %s\n", expr, err);
    abort();
  }
  return c;
}

typedef struct {
  const char* expr;
  const char* after;
  const char* want;
} next_case_t;

static void run_next_table(const next_case_t* cases, size_t n, int local_tz) {
  size_t i;
  for (i = 0; i < n; i++) {
    ath_cron_t c = parse_ok(cases[i].expr);
    int64_t next = -1;
    char got[64];
    int rc = ath__cron_next(&c, iso_ms(cases[i].after), local_tz, &next);
    if (rc != 0) {
      fprintf(stderr, "next(\"%s\", %s) failed: %d\n", cases[i].expr,
              cases[i].after, rc);
      abort();
    }
    fmt_ms(next, got, sizeof got);
    if (strcmp(got, cases[i].want) != 0) {
      fprintf(stderr, "next(\"%s\", %s) = %s, want %s\n", cases[i].expr,
              cases[i].after, got, cases[i].want);
      abort();
    }
  }
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int cron_eq(const ath_cron_t* a, const ath_cron_t* b) {
  return a->seconds == b->seconds && a->minutes == b->minutes &&
         a->hours == b->hours && a->dom == b->dom && a->months == b->months &&
         a->dow == b->dow && a->dow_last == b->dow_last &&
         memcmp(a->dow_nth, b->dow_nth, sizeof a->dow_nth) == 0 &&
         a->dom_last == b->dom_last && a->dom_restricted == b->dom_restricted &&
         a->dow_restricted == b->dow_restricted;
}

/* ------------------------------------------------------------------ tests */

TEST_IMPL(cron_helpers) {
  char buf[64];
  ASSERT_EQ(0, iso_ms("1970-01-01T00:00:00Z"));
  ASSERT_EQ(1767225600000LL, iso_ms("2026-01-01T00:00:00Z"));
  ASSERT_EQ(951782400000LL, iso_ms("2000-02-29T00:00:00Z"));
  ASSERT_EQ(-1000, iso_ms("1969-12-31T23:59:59Z"));
  ASSERT_STR_EQ("2026-01-01T00:00:00.250Z",
                fmt_ms(iso_ms("2026-01-01T00:00:00.250Z"), buf, sizeof buf));
  ASSERT_STR_EQ("1969-12-31T23:59:59Z", fmt_ms(-1000, buf, sizeof buf));
  ASSERT_STR_EQ("2104-02-29T00:00:00Z",
                fmt_ms(iso_ms("2104-02-29T00:00:00Z"), buf, sizeof buf));
  return 0;
}

/* 2026-01-01 is a Thursday. */
static const next_case_t basic_cases[] = {
    /* every minute; strictly after, at second 0 */
    {"* * * * *", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"},
    {"* * * * *", "2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"},
    {"* * * * *", "2026-01-01T00:00:59.999Z", "2026-01-01T00:01:00Z"},
    {"* * * * *", "2025-12-31T23:59:59.999Z", "2026-01-01T00:00:00Z"},
    {"0 0 * * *", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    {"0 0 * * *", "2025-12-31T23:59:59.999Z", "2026-01-01T00:00:00Z"},
    {"0 0 * * *", "2026-01-01T00:00:00.001Z", "2026-01-02T00:00:00Z"},
    /* minute edges 0 and 59 */
    {"0,59 * * * *", "2026-01-01T10:00:00Z", "2026-01-01T10:59:00Z"},
    {"0,59 * * * *", "2026-01-01T10:59:00Z", "2026-01-01T11:00:00Z"},
    {"59 * * * *", "2026-01-01T23:59:00Z", "2026-01-02T00:59:00Z"},
    /* hour edges 0 and 23 */
    {"0 23 * * *", "2026-01-31T23:00:00Z", "2026-02-01T23:00:00Z"},
    {"30 0 * * *", "2026-01-01T00:30:00Z", "2026-01-02T00:30:00Z"},
    /* day-of-month edges 1 and 31 */
    {"0 0 1 * *", "2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"},
    {"0 0 31 * *", "2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z"},
    {"0 0 31 * *", "2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z"},
    /* Feb 29 */
    {"0 0 29 2 *", "2025-01-01T00:00:00Z", "2028-02-29T00:00:00Z"},
    {"0 0 29 2 *", "2024-02-28T12:00:00Z", "2024-02-29T00:00:00Z"},
    {"0 0 29 2 *", "2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"},
    {"0 0 29 2 *", "2099-01-01T00:00:00Z", "2104-02-29T00:00:00Z"},
    {"0 0 29 2 *", "2096-02-29T00:00:00Z", "2104-02-29T00:00:00Z"},
    {"0 0 29 2 *", "1999-06-01T00:00:00Z", "2000-02-29T00:00:00Z"},
    /* Dec 31 and year rollover */
    {"59 23 31 12 *", "2026-01-01T00:00:00Z", "2026-12-31T23:59:00Z"},
    {"0 0 31 12 *", "2026-12-31T00:00:00Z", "2027-12-31T00:00:00Z"},
    {"0 0 1 1 *", "2026-12-31T23:59:00Z", "2027-01-01T00:00:00Z"},
    {"0 0 1 1 *", "1969-06-01T00:00:00Z", "1970-01-01T00:00:00Z"},
    {"* * * * *", "1969-12-31T23:59:00Z", "1970-01-01T00:00:00Z"},
    /* steps */
    {"*/15 * * * *", "2026-01-01T10:07:00Z", "2026-01-01T10:15:00Z"},
    {"*/15 * * * *", "2026-01-01T10:45:00Z", "2026-01-01T11:00:00Z"},
    {"10-40/10 * * * *", "2026-01-01T10:40:00Z", "2026-01-01T11:10:00Z"},
    {"5/20 * * * *", "2026-01-01T10:45:00Z", "2026-01-01T11:05:00Z"},
    {"5/20 * * * *", "2026-01-01T10:25:00Z", "2026-01-01T10:45:00Z"},
    {"0 */6 * * *", "2026-01-01T19:00:00Z", "2026-01-02T00:00:00Z"},
    {"0 0 */10 * *", "2026-01-21T00:00:00Z", "2026-01-31T00:00:00Z"},
    {"0 0 */10 * *", "2026-01-31T00:00:00Z", "2026-02-01T00:00:00Z"},
    {"0 0 1 */3 *", "2026-02-01T00:00:00Z", "2026-04-01T00:00:00Z"},
    {"0 0 1 */3 *", "2026-10-01T00:00:00Z", "2027-01-01T00:00:00Z"},
    {"0 0 * * */2", "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"},
    {"0 0 * * 1/2", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    {"0 0 * * 1/2", "2026-01-02T00:00:00Z", "2026-01-05T00:00:00Z"},
    {"0 0 * * 1-7/3", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
    {"*/60 * * * *", "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z"},
    /* lists and ranges */
    {"0 9,12,18 * * *", "2026-01-01T12:00:00Z", "2026-01-01T18:00:00Z"},
    {"0 9,12,18 * * *", "2026-01-01T18:00:00Z", "2026-01-02T09:00:00Z"},
    {"0 9-17 * * *", "2026-01-01T17:00:00Z", "2026-01-02T09:00:00Z"},
    {"0 9-17 * * *", "2026-01-01T09:30:00Z", "2026-01-01T10:00:00Z"},
    {"0 0 1,15 * *", "2026-01-01T00:00:00Z", "2026-01-15T00:00:00Z"},
    {"0 1-3,22-23 * * *", "2026-01-01T03:00:00Z", "2026-01-01T22:00:00Z"},
    {"0 0 * 1-12/6 *", "2026-01-31T00:00:00Z", "2026-07-01T00:00:00Z"},
    {"0-5,*/30 * * * *", "2026-01-01T10:05:00Z", "2026-01-01T10:30:00Z"},
    /* names, any case */
    {"0 0 * JAN-MAR *", "2026-03-31T00:00:00Z", "2027-01-01T00:00:00Z"},
    {"0 0 1 jun,Dec *", "2026-06-01T00:00:00Z", "2026-12-01T00:00:00Z"},
    {"0 0 1 feb *", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},
    {"0 8 * * MON-FRI", "2026-01-02T08:00:00Z", "2026-01-05T08:00:00Z"},
    {"0 8 * * sat,SUN", "2026-01-01T00:00:00Z", "2026-01-03T08:00:00Z"},
    {"0 8 * * Tue-thu/2", "2026-01-01T09:00:00Z", "2026-01-06T08:00:00Z"},
    /* 7 = Sunday */
    {"0 0 * * 7", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
    {"0 0 * * 0", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
    {"0 0 * * 5-7", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z"},
    {"0 0 * * 0-7", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    /* ? */
    {"0 0 ? * MON", "2026-01-01T00:00:00Z", "2026-01-05T00:00:00Z"},
    {"0 0 1 * ?", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},
    /* L: last day of month */
    {"0 0 L * *", "2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z"},
    {"0 0 L * *", "2028-02-01T00:00:00Z", "2028-02-29T00:00:00Z"},
    {"0 0 l 4 *", "2026-01-01T00:00:00Z", "2026-04-30T00:00:00Z"},
    {"0 0 15,L * *", "2026-01-15T00:00:00Z", "2026-01-31T00:00:00Z"},
    {"0 0 L 2 ?", "2100-01-01T00:00:00Z", "2100-02-28T00:00:00Z"},
    /* nL: last weekday n */
    {"0 0 * * 5L", "2026-01-01T00:00:00Z", "2026-01-30T00:00:00Z"},
    {"0 0 * * 5L", "2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z"},
    {"0 0 ? * FRIL", "2026-01-01T00:00:00Z", "2026-01-30T00:00:00Z"},
    {"0 0 * * 0L", "2026-01-01T00:00:00Z", "2026-01-25T00:00:00Z"},
    {"0 0 * * 7L", "2026-01-25T00:00:00Z", "2026-02-22T00:00:00Z"},
    {"0 0 * * 1L,5L", "2026-01-27T00:00:00Z", "2026-01-30T00:00:00Z"},
    /* n#k: k-th weekday n */
    {"0 0 * * 1#2", "2026-01-01T00:00:00Z", "2026-01-12T00:00:00Z"},
    {"0 0 * * 1#2", "2026-01-12T00:00:00Z", "2026-02-09T00:00:00Z"},
    {"0 0 * * mon#1", "2026-01-12T00:00:00Z", "2026-02-02T00:00:00Z"},
    {"0 0 * * 1#5", "2026-01-01T00:00:00Z", "2026-03-30T00:00:00Z"},
    {"0 0 * * 7#1", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
    {"0 0 * * 4#1,4#3", "2026-01-01T00:00:00Z", "2026-01-15T00:00:00Z"},
    {"0 0 29 2 1#5", "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z"},
    /* aliases */
    {"@yearly", "2026-05-05T00:00:00Z", "2027-01-01T00:00:00Z"},
    {"@annually", "2026-05-05T00:00:00Z", "2027-01-01T00:00:00Z"},
    {"@monthly", "2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"},
    {"@weekly", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
    {"@daily", "2026-01-01T13:00:00Z", "2026-01-02T00:00:00Z"},
    {"@midnight", "2026-01-01T13:00:00Z", "2026-01-02T00:00:00Z"},
    {"@hourly", "2026-01-01T13:00:00Z", "2026-01-01T14:00:00Z"},
    {"@DAILY", "2026-01-01T13:00:00Z", "2026-01-02T00:00:00Z"},
    {"  @Hourly  ", "2026-01-01T13:00:00Z", "2026-01-01T14:00:00Z"},
    /* dom/dow: OR when both restricted, else only the restricted one */
    {"0 0 13 * FRI", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    {"0 0 13 * FRI", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z"},
    {"0 0 13 * FRI", "2026-01-13T00:00:00Z", "2026-01-16T00:00:00Z"},
    {"0 0 13 * *", "2026-01-01T00:00:00Z", "2026-01-13T00:00:00Z"},
    {"0 0 * * FRI", "2026-01-09T00:00:00Z", "2026-01-16T00:00:00Z"},
    {"0 0 1 * 1#2", "2026-01-01T00:00:00Z", "2026-01-12T00:00:00Z"},
    {"0 0 1 * 1#2", "2026-01-12T00:00:00Z", "2026-02-01T00:00:00Z"},
    {"0 0 L * 1", "2026-01-26T00:00:00Z", "2026-01-31T00:00:00Z"},
    {"0 0 30 2 MON", "2026-01-01T00:00:00Z", "2026-02-02T00:00:00Z"},
    {"0 0 30 2 MON", "2026-02-02T00:00:00Z", "2026-02-09T00:00:00Z"},
    {"0 0 */1 * 1", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    /* 6 fields: seconds */
    {"30 * * * * *", "2026-01-01T10:00:30Z", "2026-01-01T10:01:30Z"},
    {"*/10 * * * * *", "2026-01-01T10:00:05Z", "2026-01-01T10:00:10Z"},
    {"* * * * * *", "2026-01-01T10:00:00.500Z", "2026-01-01T10:00:01Z"},
    {"* * * * * *", "2026-01-01T10:00:00Z", "2026-01-01T10:00:01Z"},
    {"0 0 0 * * *", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    {"59 59 23 31 12 *", "2026-01-01T00:00:00Z", "2026-12-31T23:59:59Z"},
    {"0,59 0 0 1 1 *", "2026-01-01T00:00:00Z", "2026-01-01T00:00:59Z"},
    {"15-17 * * * * *", "2026-01-01T10:00:17Z", "2026-01-01T10:01:15Z"},
    {"0 30 9 ? * MON#1", "2026-01-01T00:00:00Z", "2026-01-05T09:30:00Z"},
    /* whitespace */
    {"  0\t0   *  * *  ", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    {"0 0 1 1 *\n", "2026-01-02T00:00:00Z", "2027-01-01T00:00:00Z"},
    /* leading zeros */
    {"05 07 01 01 *", "2026-01-01T00:00:00Z", "2026-01-01T07:05:00Z"},
};

TEST_IMPL(cron_next_utc) {
  run_next_table(basic_cases, COUNT(basic_cases), 0);
  return 0;
}

/* The parsed bitsets, checked directly for a few forms. */
TEST_IMPL(cron_parse_fields) {
  ath_cron_t c = parse_ok("*/20 0,23 1,31 JAN,dec 0,7");
  int w;
  ASSERT_EQ(1, c.seconds);
  ASSERT_EQ((1ULL << 0) | (1ULL << 20) | (1ULL << 40), c.minutes);
  ASSERT_EQ((1u << 0) | (1u << 23), c.hours);
  ASSERT_EQ((1u << 1) | (1u << 31), c.dom);
  ASSERT_EQ((1u << 1) | (1u << 12), c.months);
  ASSERT_EQ(1, c.dow);
  ASSERT_EQ(1, c.dom_restricted);
  ASSERT_EQ(1, c.dow_restricted);

  c = parse_ok("* * * * *");
  ASSERT_EQ((1ULL << 60) - 1, c.minutes);
  ASSERT_EQ((1u << 24) - 1, c.hours);
  ASSERT_EQ(0xfffffffeu, c.dom);
  ASSERT_EQ(0x1ffe, c.months);
  ASSERT_EQ(0x7f, c.dow);
  ASSERT_EQ(0, c.dom_restricted);
  ASSERT_EQ(0, c.dow_restricted);

  c = parse_ok("0 0 ? * ?");
  ASSERT_EQ(0, c.dom_restricted);
  ASSERT_EQ(0, c.dow_restricted);
  ASSERT_EQ(0xfffffffeu, c.dom);
  ASSERT_EQ(0x7f, c.dow);

  c = parse_ok("0 0 L * 5L,1#2,1#5,SUN#3,7L");
  ASSERT_EQ(1, c.dom_last);
  ASSERT_EQ(0, c.dom);
  ASSERT_EQ(0, c.dow);
  ASSERT_EQ((1 << 5) | (1 << 0), c.dow_last);
  ASSERT_EQ((1 << 1) | (1 << 4), c.dow_nth[1]);
  ASSERT_EQ(1 << 2, c.dow_nth[0]);
  for (w = 2; w < 7; w++)
    ASSERT_EQ(0, c.dow_nth[w]);
  ASSERT_EQ(1, c.dom_restricted);
  ASSERT_EQ(1, c.dow_restricted);

  c = parse_ok("1-59/29 0 * * * *");
  ASSERT_EQ((1ULL << 1) | (1ULL << 30) | (1ULL << 59), c.seconds);
  ASSERT_EQ(1, c.minutes);

  /* every alias is its 5-field expansion */
  {
    static const char* const pairs[][2] = {
        {"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"},
        {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
        {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
        {"@hourly", "0 * * * *"},  {"@WeEkLy", "0 0 * * 0"},
    };
    size_t i;
    for (i = 0; i < COUNT(pairs); i++) {
      ath_cron_t a = parse_ok(pairs[i][0]);
      ath_cron_t b = parse_ok(pairs[i][1]);
      ASSERT(cron_eq(&a, &b));
    }
  }
  return 0;
}

typedef struct {
  const char* expr;
  const char* reason_at; /* the message after `invalid cron expression "<expr>": ` */
} err_case_t;

static const err_case_t err_cases[] = {
    /* field count */
    {"", "expected 5 or 6 fields, got 0 at column 1"},
    {"   ", "expected 5 or 6 fields, got 0 at column 1"},
    {"* * * *", "expected 5 or 6 fields, got 4 at column 1"},
    {"* * * * * * *", "expected 5 or 6 fields, got 7 at column 1"},
    {"  1 2 3", "expected 5 or 6 fields, got 3 at column 1"},
    /* values out of range, per field */
    {"61 * * * *", "value 61 out of range 0-59 in minute field at column 1"},
    {"* 24 * * *", "value 24 out of range 0-23 in hour field at column 3"},
    {"* * 0 * *", "value 0 out of range 1-31 in day-of-month field at column 5"},
    {"* * 32 * *", "value 32 out of range 1-31 in day-of-month field at column 5"},
    {"* * * 0 *", "value 0 out of range 1-12 in month field at column 7"},
    {"* * * 13 *", "value 13 out of range 1-12 in month field at column 7"},
    {"* * * * 8", "value 8 out of range 0-7 in day-of-week field at column 9"},
    {"60 * * * * *", "value 60 out of range 0-59 in second field at column 1"},
    {"0 60 * * * *", "value 60 out of range 0-59 in minute field at column 3"},
    {"0-60 * * * *", "value 60 out of range 0-59 in minute field at column 3"},
    {"1,2,99 * * * *", "value 99 out of range 0-59 in minute field at column 5"},
    {"99999999999 * * * *",
     "value 99999999999 out of range 0-59 in minute field at column 1"},
    {"0 0 * * 8L", "value 8 out of range 0-7 in day-of-week field at column 9"},
    {"0 0 * * 9#1", "value 9 out of range 0-7 in day-of-week field at column 9"},
    /* names */
    {"0 3 * * FOO", "unknown day-of-week name FOO at column 9"},
    {"  0 3 * * FOO", "unknown day-of-week name FOO at column 11"},
    {"0 3 * * MONDAY", "unknown day-of-week name MONDAY at column 9"},
    {"0 3 * * MON-Fr", "unknown day-of-week name Fr at column 13"},
    {"0 3 * * L", "unknown day-of-week name L at column 9"},
    {"* * * FOO *", "unknown month name FOO at column 7"},
    {"* * * jan-foo *", "unknown month name foo at column 11"},
    {"* * MON * *", "unexpected character 'M' in day-of-month field at column 5"},
    {"* * * * JAN", "unknown day-of-week name JAN at column 9"},
    /* steps */
    {"*/0 * * * *", "step 0 out of range 1-60 in minute field at column 3"},
    {"*/61 * * * *", "step 61 out of range 1-60 in minute field at column 3"},
    {"1-5/0 * * * *", "step 0 out of range 1-60 in minute field at column 5"},
    {"0 */25 * * *", "step 25 out of range 1-24 in hour field at column 5"},
    {"0 0 */0 * *", "step 0 out of range 1-31 in day-of-month field at column 7"},
    {"0 0 * */13 *", "step 13 out of range 1-12 in month field at column 9"},
    {"0 0 * * 1/8", "step 8 out of range 1-7 in day-of-week field at column 11"},
    {"*/0 * * * * *", "step 0 out of range 1-60 in second field at column 3"},
    {"*/ * * * *", "unexpected end of minute field at column 3"},
    {"*/x * * * *", "unexpected character 'x' in minute field at column 3"},
    /* reversed ranges */
    {"* 5-1 * * *", "reversed range 5-1 in hour field at column 3"},
    {"* * * * FRI-MON", "reversed range FRI-MON in day-of-week field at column 9"},
    {"* * * DEC-JAN *", "reversed range DEC-JAN in month field at column 7"},
    {"* * 1,31-2 * *", "reversed range 31-2 in day-of-month field at column 7"},
    {"30-10 * * * * *", "reversed range 30-10 in second field at column 1"},
    /* syntax */
    {"1,,2 * * * *", "unexpected character ',' in minute field at column 3"},
    {",1 * * * *", "unexpected character ',' in minute field at column 1"},
    {"1, * * * *", "unexpected end of minute field at column 3"},
    {"1- * * * *", "unexpected end of minute field at column 3"},
    {"5-* * * * *", "unexpected character '*' in minute field at column 3"},
    {"*-5 * * * *", "unexpected character '-' in minute field at column 2"},
    {"1-2-3 * * * *", "unexpected character '-' in minute field at column 4"},
    {"a * * * *", "unexpected character 'a' in minute field at column 1"},
    {"* L * * *", "unexpected character 'L' in hour field at column 3"},
    {"0 0\n* * * *", "unexpected byte 0x0A in hour field at column 4"},
    {"0 0 1 1 */ 5", "unexpected end of month field at column 11"},
    /* ? */
    {"? * * * *", "'?' not allowed in minute field at column 1"},
    {"* * * ? *", "'?' not allowed in month field at column 7"},
    {"* * ?,1 * *", "'?' must be the whole day-of-month field at column 5"},
    {"* * * * 1,?", "'?' must be the whole day-of-week field at column 11"},
    {"* * ?/2 * *", "'?' must be the whole day-of-month field at column 5"},
    /* L, nL, n#k */
    {"* * LW * *", "unexpected character 'W' in day-of-month field at column 6"},
    {"* * L-3 * *", "unexpected character '-' in day-of-month field at column 6"},
    {"* * 5L * *", "unexpected character 'L' in day-of-month field at column 6"},
    {"* * * * 1#6", "occurrence 6 out of range 1-5 in day-of-week field at column 11"},
    {"* * * * 1#0", "occurrence 0 out of range 1-5 in day-of-week field at column 11"},
    {"* * * * 1#", "unexpected end of day-of-week field at column 11"},
    {"* * * * 1#x", "unexpected character 'x' in day-of-week field at column 11"},
    {"* * * * 1#2-3", "unexpected character '-' in day-of-week field at column 12"},
    {"* * * * 1-5L", "unexpected character 'L' in day-of-week field at column 12"},
    {"* * * * 5LL", "unexpected character 'L' in day-of-week field at column 11"},
    {"* 1#2 * * *", "unexpected character '#' in hour field at column 4"},
    /* aliases */
    {"@foo", "unknown alias @foo at column 1"},
    {"@", "unknown alias @ at column 1"},
    {" @dailyx", "unknown alias @dailyx at column 2"},
    {"@daily 0", "unexpected text after @daily at column 8"},
    /* nothing within 8 years */
    {"0 0 30 2 *", "no matching time within 8 years at column 1"},
    {"0 0 31 2 *", "no matching time within 8 years at column 1"},
    {"0 0 31 4 *", "no matching time within 8 years at column 1"},
    {"0 0 31 4,6,9,11 *", "no matching time within 8 years at column 1"},
    {"0 0 30,31 feb ?", "no matching time within 8 years at column 1"},
    {"0 0 ? 2 1#5", "no matching time within 8 years at column 1"},
    {"0 0 0 31 2 *", "no matching time within 8 years at column 1"},
};

TEST_IMPL(cron_parse_errors) {
  size_t i;
  for (i = 0; i < COUNT(err_cases); i++) {
    char err[512];
    char want[512];
    ath_cron_t c;
    memset(&c, 0xab, sizeof c);
    memset(err, 'x', sizeof err);
    snprintf(want, sizeof want, "invalid cron expression \"%s\": %s",
             err_cases[i].expr, err_cases[i].reason_at);
    if (ath__cron_parse(err_cases[i].expr, &c, err, sizeof err) != ATH_EINVAL) {
      fprintf(stderr, "parse(\"%s\") succeeded, want: %s\n", err_cases[i].expr,
              want);
      abort();
    }
    ASSERT_STR_EQ(want, err);
    ASSERT_EQ(0xababababababababULL, c.seconds); /* untouched on failure */
  }
  return 0;
}

TEST_IMPL(cron_parse_error_buffers) {
  ath_cron_t c;
  char err[16];
  char big[128];
  ASSERT_EQ(ATH_EINVAL, ath__cron_parse("0 3 * * FOO", &c, NULL, 0));
  ASSERT_EQ(ATH_EINVAL, ath__cron_parse("0 3 * * FOO", &c, err, 0));
  memset(err, 'x', sizeof err);
  ASSERT_EQ(ATH_EINVAL, ath__cron_parse("0 3 * * FOO", &c, err, sizeof err));
  ASSERT_STR_EQ("invalid cron ex", err); /* truncated, NUL-terminated */
  ASSERT_EQ(ATH_EINVAL, ath__cron_parse(NULL, &c, big, sizeof big));
  ASSERT_STR_EQ("cron expression is NULL", big);
  ASSERT_EQ(ATH_EINVAL, ath__cron_parse("* * * * *", NULL, big, sizeof big));
  ASSERT_OK(ath__cron_parse("* * * * *", &c, NULL, 0));
  return 0;
}

TEST_IMPL(cron_next_args) {
  ath_cron_t c = parse_ok("* * * * *");
  int64_t next = 42;
  ASSERT_EQ(ATH_EINVAL, ath__cron_next(NULL, 0, 0, &next));
  ASSERT_EQ(ATH_EINVAL, ath__cron_next(&c, 0, 0, NULL));
  ASSERT_EQ(ATH_EINVAL, ath__cron_next(&c, 0, 2, &next));
  ASSERT_EQ(ATH_EINVAL, ath__cron_next(&c, INT64_MAX, 0, &next));
  ASSERT_EQ(ATH_EINVAL, ath__cron_next(&c, INT64_MIN, 0, &next));
  ASSERT_EQ(ATH_EINVAL, ath__cron_next(&c, INT64_MAX, 1, &next));
  ASSERT_EQ(42, next);
  ASSERT_OK(ath__cron_next(&c, -1, 0, &next));
  ASSERT_EQ(0, next);
  ASSERT_OK(ath__cron_next(&c, 0, 0, &next));
  ASSERT_EQ(60000, next);
  /* year 9999 is the last accepted start; the result may lie beyond it */
  c = parse_ok("@yearly");
  ASSERT_OK(ath__cron_next(&c, 253402300799000LL, 0, &next));
  ASSERT_EQ(253402300800000LL, next); /* 10000-01-01T00:00:00Z */
  return 0;
}

/* ------------------------------------------------- brute-force cross-check */

static int bf_day_matches(const ath_cron_t* c, int y, int m, int d) {
  int len = t_mdays(y, m);
  int w = (int)((t_days(y, m, d) % 7 + 7 + 4) % 7); /* 1970-01-01: Thu */
  int dom_m = (c->dom >> d & 1) || (c->dom_last && d == len);
  int dow_m = (c->dow >> w & 1) || ((c->dow_last >> w & 1) && d + 7 > len) ||
              (c->dow_nth[w] >> ((d - 1) / 7) & 1);
  if (!(c->months >> m & 1))
    return 0;
  if (c->dom_restricted && c->dow_restricted)
    return dom_m || dow_m;
  if (c->dom_restricted)
    return dom_m;
  if (c->dow_restricted)
    return dow_m;
  return 1;
}

/* The first match at or after `from` seconds, scanning day by day. */
static int64_t bf_next(const ath_cron_t* c, int64_t from) {
  int64_t day0 = from >= 0 ? from / 86400 : -((-from + 86399) / 86400);
  int64_t k;
  char buf[64];
  int y, m, d;
  fmt_ms(day0 * 86400000, buf, sizeof buf);
  ASSERT_EQ(3, sscanf(buf, "%d-%d-%d", &y, &m, &d));
  for (k = 0; k < 366 * 9; k++) {
    if (bf_day_matches(c, y, m, d)) {
      int h, mi, s;
      for (h = 0; h < 24; h++)
        for (mi = 0; mi < 60; mi++)
          for (s = 0; s < 60; s++) {
            int64_t t = (day0 + k) * 86400 + h * 3600 + mi * 60 + s;
            if ((c->hours >> h & 1) && (c->minutes >> mi & 1) &&
                (c->seconds >> s & 1) && t >= from)
              return t;
          }
    }
    if (++d > t_mdays(y, m)) {
      d = 1;
      if (++m > 12) {
        m = 1;
        y++;
      }
    }
  }
  return -1;
}

static uint64_t lcg_state = 88172645463325252ULL;
static uint64_t lcg(void) {
  lcg_state ^= lcg_state << 13;
  lcg_state ^= lcg_state >> 7;
  lcg_state ^= lcg_state << 17;
  return lcg_state;
}

TEST_IMPL(cron_next_bruteforce) {
  static const char* const exprs[] = {
      "* * * * *",        "*/7 3-5 * * *",        "0 0 29 2 *",
      "0 0 L * *",        "0 12 * * 5L",          "0 0 * * 1#2",
      "0 0 13 * FRI",     "0 0 1,L * 1#5,6L",     "15 10 L 2 *",
      "0 0 31 * *",       "0 0 * * 1#5",          "30 45 23 * * 0",
      "*/13 */17 * * * *",         "0 0 29 2 1#5",
      "0 0 1-7 * 1",      "5 4 ? JUN-AUG 2-4",    "0 0 * * 2#4,3#1",
      "59 59 23 31 12 *", "0 22 * * 1-5",         "7 7 7 7 7",
  };
  size_t i;
  int j;
  for (i = 0; i < COUNT(exprs); i++) {
    ath_cron_t c = parse_ok(exprs[i]);
    for (j = 0; j < 60; j++) {
      /* start times between 1990 and 2090, some at whole minutes */
      int64_t after_ms = 631152000000LL +
                         (int64_t)(lcg() % 3155760000000ULL);
      int64_t next = 0, want;
      if (j % 3 == 0)
        after_ms -= after_ms % 60000;
      ASSERT_OK(ath__cron_next(&c, after_ms, 0, &next));
      want = bf_next(&c, (after_ms >= 0 ? after_ms / 1000 : 0) + 1);
      if (next != want * 1000) {
        char a[64], b[64], d[64];
        fprintf(stderr, "next(\"%s\", %s) = %s, brute force %s\n", exprs[i],
                fmt_ms(after_ms, a, sizeof a), fmt_ms(next, b, sizeof b),
                fmt_ms(want * 1000, d, sizeof d));
        abort();
      }
    }
  }
  return 0;
}

/* -------------------------------------------------------------- local time */

static char saved_tz[256];
static int saved_tz_set;

static void tz_set(const char* tz) {
  const char* old = getenv("TZ");
  saved_tz_set = old != NULL;
  if (old != NULL)
    snprintf(saved_tz, sizeof saved_tz, "%s", old);
  ASSERT_OK(setenv("TZ", tz, 1));
  tzset();
}

static void tz_restore(void) {
  if (saved_tz_set)
    setenv("TZ", saved_tz, 1);
  else
    unsetenv("TZ");
  tzset();
}

static void require_new_york(void) {
  time_t t = (time_t)1783000000; /* 2026-07-02, EDT */
  struct tm tm;
  if (access("/usr/share/zoneinfo/America/New_York", R_OK) != 0) {
    fprintf(stderr,
            "/usr/share/zoneinfo/America/New_York is missing: install the "
            "tzdata package; the DST tests cannot run without it\n");
    abort();
  }
  tz_set("America/New_York");
  ASSERT(localtime_r(&t, &tm) != NULL);
  ASSERT_EQ(1, tm.tm_isdst); /* the zone really loaded (not UTC fallback) */
}

/* America/New_York 2026: DST starts Sun 2026-03-08 02:00 EST -> 03:00 EDT
 * (07:00Z), ends Sun 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z). EST is
 * UTC-5, EDT UTC-4. */
static const next_case_t dst_cases[] = {
    /* the gap: 02:30 does not exist on 03-08, so no fire that day */
    {"30 2 * * *", "2026-03-07T07:30:00Z", "2026-03-09T06:30:00Z"},
    {"30 2 * * *", "2026-03-08T05:00:00Z", "2026-03-09T06:30:00Z"},
    {"30 2 * * *", "2026-03-06T12:00:00Z", "2026-03-07T07:30:00Z"},
    {"0 2 * * *", "2026-03-08T06:59:59Z", "2026-03-09T06:00:00Z"},
    {"59 2 8 3 *", "2026-01-01T00:00:00Z", "2027-03-08T07:59:00Z"},
    {"0 3 * * *", "2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z"},
    {"0 * * * *", "2026-03-08T06:30:00Z", "2026-03-08T07:00:00Z"},
    {"*/20 * * * *", "2026-03-08T06:50:00Z", "2026-03-08T07:00:00Z"},
    {"59 59 1 * * *", "2026-03-08T06:00:00Z", "2026-03-08T06:59:59Z"},
    {"* * * * * *", "2026-03-08T06:59:59Z", "2026-03-08T07:00:00Z"},
    /* the repeated hour: 01:30 fires once, at the first (EDT) occurrence */
    {"30 1 * * *", "2026-11-01T04:00:00Z", "2026-11-01T05:30:00Z"},
    {"30 1 * * *", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"},
    {"30 1 * * *", "2026-11-01T06:00:00Z", "2026-11-02T06:30:00Z"},
    {"30 1 * * *", "2026-11-01T06:29:59Z", "2026-11-02T06:30:00Z"},
    {"0 * * * *", "2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z"},
    {"0 * * * *", "2026-11-01T04:30:00Z", "2026-11-01T05:00:00Z"},
    {"*/30 * * * *", "2026-11-01T05:30:00Z", "2026-11-01T07:00:00Z"},
    {"0 2 * * *", "2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z"},
    {"0 0 * * *", "2026-10-31T12:00:00Z", "2026-11-01T04:00:00Z"},
    {"0 0 * * *", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"},
    /* ordinary local times */
    {"0 9 * * MON-FRI", "2026-01-02T14:00:00Z", "2026-01-05T14:00:00Z"},
    {"0 9 * * MON-FRI", "2026-07-02T12:00:00Z", "2026-07-02T13:00:00Z"},
    {"0 0 L * *", "2026-02-01T00:00:00Z", "2026-02-28T05:00:00Z"},
    {"0 0 1 1 *", "2026-12-31T12:00:00Z", "2027-01-01T05:00:00Z"},
};

TEST_IMPL(cron_next_local_dst) {
  require_new_york();
  run_next_table(dst_cases, COUNT(dst_cases), 1);
  tz_restore();
  return 0;
}

/* The DST cases of the brief, step by step. */
TEST_IMPL(cron_next_local_dst_sequence) {
  ath_cron_t c;
  int64_t t;
  char buf[64];
  require_new_york();

  c = parse_ok("30 2 * * *");
  ASSERT_OK(ath__cron_next(&c, iso_ms("2026-03-06T08:00:00Z"), 1, &t));
  ASSERT_STR_EQ("2026-03-07T07:30:00Z", fmt_ms(t, buf, sizeof buf));
  ASSERT_OK(ath__cron_next(&c, t, 1, &t)); /* skips 03-08 (the gap) */
  ASSERT_STR_EQ("2026-03-09T06:30:00Z", fmt_ms(t, buf, sizeof buf));

  c = parse_ok("30 1 * * *");
  ASSERT_OK(ath__cron_next(&c, iso_ms("2026-10-31T06:00:00Z"), 1, &t));
  ASSERT_STR_EQ("2026-11-01T05:30:00Z", fmt_ms(t, buf, sizeof buf)); /* EDT */
  ASSERT_OK(ath__cron_next(&c, t, 1, &t)); /* not 06:30Z, the EST repeat */
  ASSERT_STR_EQ("2026-11-02T06:30:00Z", fmt_ms(t, buf, sizeof buf)); /* EST */
  tz_restore();
  return 0;
}

/* Local-time results against a minute-by-minute scan of real instants: an
 * instant fires when its wall time matches and it is that wall time's first
 * occurrence (New York only ever repeats by one hour). */
static int wall_eq(const struct tm* a, const struct tm* b) {
  return a->tm_year == b->tm_year && a->tm_mon == b->tm_mon &&
         a->tm_mday == b->tm_mday && a->tm_hour == b->tm_hour &&
         a->tm_min == b->tm_min && a->tm_sec == b->tm_sec;
}

/* Only minutes, hours, months and plain dom or dow lists (no L, #, OR). */
static int64_t bf_next_local(const ath_cron_t* c, int64_t from) {
  int64_t t = from + (60 - (from % 60 + 60) % 60) % 60; /* whole minute */
  for (; t < from + 4 * 86400; t += 60) {
    time_t tt = (time_t)t;
    struct tm tm;
    int64_t u;
    int seen = 0;
    ASSERT(localtime_r(&tt, &tm) != NULL);
    if (!(c->minutes >> tm.tm_min & 1) || !(c->hours >> tm.tm_hour & 1) ||
        !(c->months >> (tm.tm_mon + 1) & 1) || !(c->dom >> tm.tm_mday & 1) ||
        !(c->dow >> tm.tm_wday & 1))
      continue;
    for (u = t - 7200; u < t && !seen; u += 60) { /* an earlier occurrence? */
      time_t ut = (time_t)u;
      struct tm um;
      ASSERT(localtime_r(&ut, &um) != NULL);
      seen = wall_eq(&um, &tm);
    }
    if (!seen)
      return t;
  }
  return -1;
}

TEST_IMPL(cron_next_local_bruteforce) {
  static const char* const exprs[] = {
      "*/30 * * * *", "30 1 * * *", "30 2 * * *", "0 * * * *",
      "15 1,2,3 * * *", "45 0-3 * * SUN", "0,59 1 1 * *", "*/7 * * * *",
  };
  static const char* const windows[] = {
      "2026-03-07T18:00:00Z", "2026-10-31T18:00:00Z", "2026-06-15T00:00:00Z",
  };
  size_t i, k;
  int j;
  require_new_york();
  for (i = 0; i < COUNT(exprs); i++) {
    ath_cron_t c = parse_ok(exprs[i]);
    for (k = 0; k < COUNT(windows); k++) {
      int64_t base = iso_ms(windows[k]);
      for (j = 0; j < 24 * 6; j++) { /* every 10 minutes for a day */
        int64_t after_ms = base + (int64_t)j * 600000 + (j % 2) * 1234;
        int64_t next = 0;
        int64_t want = bf_next_local(&c, after_ms / 1000 + 1);
        int rc = ath__cron_next(&c, after_ms, 1, &next);
        if (want < 0)
          continue; /* beyond the scan window (e.g. "0,59 1 1 * *") */
        ASSERT_OK(rc);
        if (next != want * 1000) {
          char a[64], b[64], d[64];
          fprintf(stderr, "local next(\"%s\", %s) = %s, brute force %s\n",
                  exprs[i], fmt_ms(after_ms, a, sizeof a),
                  fmt_ms(next, b, sizeof b), fmt_ms(want * 1000, d, sizeof d));
          abort();
        }
      }
    }
  }
  tz_restore();
  return 0;
}

/* With TZ=UTC, local time gives the UTC answers. */
TEST_IMPL(cron_next_local_utc) {
  tz_set("UTC");
  run_next_table(basic_cases, COUNT(basic_cases), 1);
  tz_restore();
  return 0;
}

/* ------------------------------------------------------------------ speed */

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

TEST_IMPL(cron_next_speed) {
  static const char* const exprs[] = {"*/5 * * * *", "0 0 29 2 *",
                                      "0 0 * * 5L", "0 0 13 * FRI"};
  size_t i;
  int j;
  for (i = 0; i < COUNT(exprs); i++) {
    ath_cron_t c = parse_ok(exprs[i]);
    int64_t start = iso_ms("2025-01-01T00:00:00Z");
    int64_t t = start, sum = 0;
    int local;
    for (local = 0; local <= 1; local++) {
      double t0;
      if (local)
        tz_set("UTC"); /* same answers, but through localtime_r/mktime */
      t0 = now_ns();
      for (j = 0; j < 10000; j++) {
        int64_t next;
        /* the first expression chains; the others start over ~20 years */
        int64_t after = i == 0 ? t : start + (int64_t)j * 63072000LL;
        ASSERT_OK(ath__cron_next(&c, after, local, &next));
        ASSERT_GT(next, after);
        t = next;
        sum += next % 1000;
      }
      fprintf(stderr, "cron next \"%s\" %s: %.0f ns/op\n", exprs[i],
              local ? "local(TZ=UTC)" : "utc", (now_ns() - t0) / 10000);
      if (local)
        tz_restore();
      t = start;
    }
    ASSERT_EQ(0, sum);
  }
  return 0;
}
