/* Cron expressions: parser and next-occurrence calculator (SEMANTICS §11,
 * docs/cron.md). libc only. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* localtime_r under strict C11 too */
#endif
#include "cron.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "athena.h"

/* ------------------------------------------------------------ civil dates */

/* Days since 1970-01-01 of the proleptic Gregorian date y-m-d (H. Hinnant's
 * days_from_civil). */
static int64_t ath__days_from_civil(int64_t y, int m, int d) {
  int64_t era;
  int64_t yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/* The inverse of ath__days_from_civil(). */
static void ath__civil_from_days(int64_t z, int64_t* y, int* m, int* d) {
  int64_t era, doe, yoe, doy, mp;
  z += 719468;
  era = (z >= 0 ? z : z - 146096) / 146097;
  doe = z - era * 146097;
  yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

/* 0 = Sunday. */
static int ath__weekday_from_days(int64_t z) {
  return (int)(z >= -4 ? (z + 4) % 7 : (z + 5) % 7 + 6);
}

static int ath__is_leap(int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int ath__days_in_month(int64_t y, int m) {
  static const int len[13] = {0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && ath__is_leap(y) ? 29 : len[m];
}

static int64_t ath__floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* ------------------------------------------------------------------ parse */

typedef struct {
  const char* name; /* for messages: "minute" */
  int min, max;     /* accepted values */
  int top;          /* last value of "*" and "a/n" (dow: 6, as 7 = 0) */
  int nvalues;      /* largest step */
  const char* const* names; /* 3-letter names, or NULL */
  int names_base;   /* value of names[0] */
  const char* names_what;   /* "month" / "day-of-week" */
} ath__field_t;

enum { F_SEC, F_MIN, F_HOUR, F_DOM, F_MON, F_DOW };

static const char* const ath__month_names[] = {
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN",
    "JUL", "AUG", "SEP", "OCT", "NOV", "DEC", NULL};
static const char* const ath__dow_names[] = {
    "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", NULL};

static const ath__field_t ath__fields[6] = {
    {"second", 0, 59, 59, 60, NULL, 0, NULL},
    {"minute", 0, 59, 59, 60, NULL, 0, NULL},
    {"hour", 0, 23, 23, 24, NULL, 0, NULL},
    {"day-of-month", 1, 31, 31, 31, NULL, 0, NULL},
    {"month", 1, 12, 12, 12, ath__month_names, 1, "month"},
    {"day-of-week", 0, 7, 6, 7, ath__dow_names, 0, "day-of-week"},
};

typedef struct {
  const char* expr;
  char* err;
  size_t errlen;
} ath__pctx_t;

static int ath__fail(ath__pctx_t* p, const char* at, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes `invalid cron expression "<expr>": <reason> at column <c>`. */
static int ath__fail(ath__pctx_t* p, const char* at, const char* fmt, ...) {
  char reason[256];
  va_list ap;
  if (p->err == NULL || p->errlen == 0)
    return ATH_EINVAL;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  snprintf(p->err, p->errlen, "invalid cron expression \"%s\": %s at column %zu",
           p->expr, reason, (size_t)(at - p->expr) + 1);
  return ATH_EINVAL;
}

static int ath__is_digit(char ch) { return ch >= '0' && ch <= '9'; }
static int ath__is_alpha(char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
}
static int ath__is_sep(char ch) { return ch == ' ' || ch == '\t'; }
static int ath__is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' ||
         ch == '\f';
}
static char ath__upper(char ch) {
  return ch >= 'a' && ch <= 'z' ? (char)(ch - 'a' + 'A') : ch;
}

/* Error for the character at `s` (or the end of the field at `end`). */
static int ath__unexpected(ath__pctx_t* p, const ath__field_t* f,
                           const char* s, const char* end) {
  unsigned char ch;
  if (s >= end)
    return ath__fail(p, end, "unexpected end of %s field", f->name);
  ch = (unsigned char)*s;
  if (ch >= 0x20 && ch < 0x7f)
    return ath__fail(p, s, "unexpected character '%c' in %s field", ch, f->name);
  return ath__fail(p, s, "unexpected byte 0x%02X in %s field", ch, f->name);
}

/* Parses digits at *s; saturates instead of overflowing. */
static int ath__number(const char** s, const char* end) {
  int v = 0;
  while (*s < end && ath__is_digit(**s)) {
    if (v < 1000000)
      v = v * 10 + (**s - '0');
    (*s)++;
  }
  return v;
}

/* Reads one value (number or, in month/dow, a name) at *s into *v.
 * In day-of-week, a 4-letter name ending in L ("FRIL") sets *last. */
static int ath__value(ath__pctx_t* p, const ath__field_t* f, const char** s,
                      const char* end, int* v, int* last) {
  const char* start = *s;
  if (start < end && ath__is_digit(*start)) {
    *v = ath__number(s, end);
    if (*v < f->min || *v > f->max)
      return ath__fail(p, start, "value %.*s out of range %d-%d in %s field",
                       (int)(*s - start), start, f->min, f->max, f->name);
    return 0;
  }
  if (start < end && ath__is_alpha(*start) && f->names != NULL) {
    const char* q = start;
    size_t len, i;
    while (q < end && ath__is_alpha(*q))
      q++;
    len = (size_t)(q - start);
    if (last != NULL && len == 4 && ath__upper(start[3]) == 'L')
      len = 3;
    if (len == 3) {
      for (i = 0; f->names[i] != NULL; i++) {
        if (ath__upper(start[0]) == f->names[i][0] &&
            ath__upper(start[1]) == f->names[i][1] &&
            ath__upper(start[2]) == f->names[i][2]) {
          *v = (int)i + f->names_base;
          if (q - start == 4)
            *last = 1;
          *s = q;
          return 0;
        }
      }
    }
    return ath__fail(p, start, "unknown %s name %.*s", f->names_what,
                     (int)(q - start), start);
  }
  return ath__unexpected(p, f, start, end);
}

/* Parses "/n" at *s (which points at the '/'). */
static int ath__step(ath__pctx_t* p, const ath__field_t* f, const char** s,
                     const char* end, int* step) {
  const char* start;
  (*s)++;
  start = *s;
  if (start >= end || !ath__is_digit(*start))
    return ath__unexpected(p, f, start, end);
  *step = ath__number(s, end);
  if (*step < 1 || *step > f->nvalues)
    return ath__fail(p, start, "step %.*s out of range 1-%d in %s field",
                     (int)(*s - start), start, f->nvalues, f->name);
  return 0;
}

static void ath__set_range(ath_cron_t* c, int fi, int lo, int hi, int step) {
  int v;
  for (v = lo; v <= hi; v += step) {
    switch (fi) {
      case F_SEC: c->seconds |= (uint64_t)1 << v; break;
      case F_MIN: c->minutes |= (uint64_t)1 << v; break;
      case F_HOUR: c->hours |= (uint32_t)1 << v; break;
      case F_DOM: c->dom |= (uint32_t)1 << v; break;
      case F_MON: c->months |= (uint16_t)(1u << v); break;
      default: c->dow |= (uint8_t)(1u << (v % 7)); break;
    }
  }
}

/* Parses one list element in [*s, end) up to a ',' or the end. */
static int ath__element(ath__pctx_t* p, ath_cron_t* c, int fi, const char** s,
                        const char* end) {
  const ath__field_t* f = &ath__fields[fi];
  const char* start = *s;
  int lo, hi, step = 1, last = 0, rc;

  if (*start == '?') {
    if (fi == F_DOM || fi == F_DOW)
      return ath__fail(p, start, "'?' must be the whole %s field", f->name);
    return ath__fail(p, start, "'?' not allowed in %s field", f->name);
  }
  if (*start == '*') {
    (*s)++;
    if (*s < end && **s == '/' && (rc = ath__step(p, f, s, end, &step)) != 0)
      return rc;
    ath__set_range(c, fi, f->min, f->top, step);
    return 0;
  }
  if (fi == F_DOM && ath__upper(*start) == 'L') {
    (*s)++;
    c->dom_last = 1;
    return 0;
  }
  rc = ath__value(p, f, s, end, &lo, fi == F_DOW ? &last : NULL);
  if (rc != 0)
    return rc;
  if (fi == F_DOW && (last || (*s < end && ath__upper(**s) == 'L'))) {
    if (!last)
      (*s)++;
    c->dow_last |= (uint8_t)(1u << (lo % 7));
    return 0;
  }
  if (fi == F_DOW && *s < end && **s == '#') {
    const char* kstart = ++(*s);
    int k;
    if (kstart >= end || !ath__is_digit(*kstart))
      return ath__unexpected(p, f, kstart, end);
    k = ath__number(s, end);
    if (k < 1 || k > 5)
      return ath__fail(p, kstart,
                       "occurrence %.*s out of range 1-5 in %s field",
                       (int)(*s - kstart), kstart, f->name);
    c->dow_nth[lo % 7] |= (uint8_t)(1u << (k - 1));
    return 0;
  }
  hi = lo;
  if (*s < end && **s == '-') {
    (*s)++;
    rc = ath__value(p, f, s, end, &hi, NULL);
    if (rc != 0)
      return rc;
    if (hi < lo)
      return ath__fail(p, start, "reversed range %.*s in %s field",
                       (int)(*s - start), start, f->name);
    if (*s < end && **s == '/' && (rc = ath__step(p, f, s, end, &step)) != 0)
      return rc;
  } else if (*s < end && **s == '/') {
    if ((rc = ath__step(p, f, s, end, &step)) != 0)
      return rc;
    hi = lo > f->top ? lo : f->top;
  }
  ath__set_range(c, fi, lo, hi, step);
  return 0;
}

/* Parses field `fi` from [s, end) (no whitespace inside). */
static int ath__field(ath__pctx_t* p, ath_cron_t* c, int fi, const char* s,
                      const char* end) {
  const ath__field_t* f = &ath__fields[fi];
  size_t len = (size_t)(end - s);
  int rc;
  if (fi == F_DOM || fi == F_DOW) {
    if (len == 1 && (*s == '*' || *s == '?')) {
      ath__set_range(c, fi, f->min, f->top, 1);
      return 0;
    }
    if (fi == F_DOM)
      c->dom_restricted = 1;
    else
      c->dow_restricted = 1;
  }
  for (;;) {
    if (s >= end || *s == ',')
      return ath__unexpected(p, f, s, end);
    if ((rc = ath__element(p, c, fi, &s, end)) != 0)
      return rc;
    if (s >= end)
      return 0;
    if (*s != ',')
      return ath__unexpected(p, f, s, end);
    s++;
  }
}

/* Whether the expression can fire in month m (Feb: in some leap year). The
 * only rare combination, a 5th weekday in February (every 28 years or so),
 * does not count; everything that counts recurs within 8 years. */
static int ath__month_possible(const ath_cron_t* c, int m) {
  int maxlen = ath__days_in_month(2000, m);
  int dom_ok, dow_ok, w;
  uint32_t valid = (uint32_t)(((uint64_t)1 << (maxlen + 1)) - 2);
  dom_ok = (c->dom & valid) != 0 || c->dom_last;
  dow_ok = c->dow != 0 || c->dow_last != 0;
  for (w = 0; w < 7; w++)
    if ((c->dow_nth[w] & (m == 2 ? 0x0f : 0x1f)) != 0)
      dow_ok = 1;
  if (c->dom_restricted && c->dow_restricted)
    return dom_ok || dow_ok;
  if (c->dom_restricted)
    return dom_ok;
  if (c->dow_restricted)
    return dow_ok;
  return 1;
}

static const struct {
  const char* name;
  const char* expr;
} ath__aliases[] = {
    {"@yearly", "0 0 1 1 *"},  {"@annually", "0 0 1 1 *"},
    {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
    {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

static int ath__parse_fields(ath__pctx_t* p, const char* expr, ath_cron_t* c) {
  const char* b = expr;
  const char* e = expr + strlen(expr);
  const char* tok[6];
  const char* tokend[6];
  int n = 0, i, m, first;

  while (b < e && ath__is_space(*b))
    b++;
  while (e > b && ath__is_space(e[-1]))
    e--;

  if (b < e && *b == '@') {
    const char* q = b;
    size_t len;
    while (q < e && !ath__is_sep(*q))
      q++;
    len = (size_t)(q - b);
    for (i = 0; i < (int)(sizeof ath__aliases / sizeof ath__aliases[0]); i++) {
      const char* a = ath__aliases[i].name;
      size_t k;
      if (strlen(a) != len)
        continue;
      for (k = 0; k < len && ath__upper(b[k]) == ath__upper(a[k]); k++) {
      }
      if (k == len) {
        while (q < e && ath__is_sep(*q))
          q++;
        if (q < e)
          return ath__fail(p, q, "unexpected text after %.*s", (int)len, b);
        return ath__parse_fields(p, ath__aliases[i].expr, c);
      }
    }
    return ath__fail(p, b, "unknown alias %.*s", (int)len, b);
  }

  while (b < e) {
    if (n < 6)
      tok[n] = b;
    while (b < e && !ath__is_sep(*b))
      b++;
    if (n < 6)
      tokend[n] = b;
    n++;
    while (b < e && ath__is_sep(*b))
      b++;
  }
  if (n != 5 && n != 6)
    return ath__fail(p, p->expr, "expected 5 or 6 fields, got %d", n);

  memset(c, 0, sizeof *c);
  first = n == 6 ? F_SEC : F_MIN;
  if (n == 5)
    c->seconds = 1;
  for (i = 0; i < n; i++) {
    int rc = ath__field(p, c, first + i, tok[i], tokend[i]);
    if (rc != 0)
      return rc;
  }

  for (m = 1; m <= 12; m++)
    if ((c->months >> m & 1) && ath__month_possible(c, m))
      return 0;
  return ath__fail(p, p->expr, "no matching time within 8 years");
}

int ath__cron_parse(const char* expr, ath_cron_t* out, char* err,
                    size_t errlen) {
  ath__pctx_t p;
  ath_cron_t c;
  int rc;
  if (expr == NULL || out == NULL) {
    if (err != NULL && errlen > 0)
      snprintf(err, errlen, "%s", expr == NULL ? "cron expression is NULL"
                                               : "no output");
    return ATH_EINVAL;
  }
  p.expr = expr;
  p.err = err;
  p.errlen = errlen;
  rc = ath__parse_fields(&p, expr, &c);
  if (rc == 0)
    *out = c;
  return rc;
}

/* ------------------------------------------------------------------- next */

/* The lowest set bit at or above `from`, or -1. */
static int ath__next_bit(uint64_t mask, int from) {
  if (from >= 64)
    return -1;
  mask &= ~(uint64_t)0 << from;
  return mask == 0 ? -1 : __builtin_ctzll(mask);
}

/* Bit d set: day d of month m of year y matches. */
static uint32_t ath__day_mask(const ath_cron_t* c, int64_t y, int m) {
  int len = ath__days_in_month(y, m);
  uint32_t valid = (uint32_t)(((uint64_t)1 << (len + 1)) - 2);
  uint32_t domm = 0, dowm = 0;
  if (!c->dom_restricted && !c->dow_restricted)
    return valid;
  if (c->dom_restricted) {
    domm = c->dom & valid;
    if (c->dom_last)
      domm |= (uint32_t)1 << len;
  }
  if (c->dow_restricted) {
    int w1 = ath__weekday_from_days(ath__days_from_civil(y, m, 1));
    int w;
    for (w = 0; w < 7; w++) {
      int first = 1 + (w - w1 + 7) % 7; /* first day that is weekday w */
      int d, k;
      if (c->dow >> w & 1)
        for (d = first; d <= len; d += 7)
          dowm |= (uint32_t)1 << d;
      if (c->dow_last >> w & 1)
        dowm |= (uint32_t)1 << (first + 7 * ((len - first) / 7));
      for (k = 0; k < 5; k++)
        if ((c->dow_nth[w] >> k & 1) && first + 7 * k <= len)
          dowm |= (uint32_t)1 << (first + 7 * k);
    }
  }
  if (c->dom_restricted && c->dow_restricted)
    return domm | dowm;
  return c->dom_restricted ? domm : dowm;
}

typedef struct {
  int64_t y;
  int mo, d, h, mi, s;
} ath__civil_t;

/* Moves *t to the first matching civil time at or after it (fields may be
 * one past their range: s = 60, d = 32 ...). Returns 0, or -1 past
 * year `ylimit`. */
static int ath__find(const ath_cron_t* c, ath__civil_t* t, int64_t ylimit) {
  int64_t mask_y = -1;
  int mask_m = 0;
  uint32_t dmask = 0;
  for (;;) {
    int v;
    if (t->mo > 12) {
      t->y++;
      t->mo = 1;
    }
    if (t->y > ylimit)
      return -1;
    v = ath__next_bit(c->months, t->mo);
    if (v < 0) {
      t->y++;
      t->mo = 1;
      t->d = 1;
      t->h = t->mi = t->s = 0;
      continue;
    }
    if (v != t->mo) {
      t->mo = v;
      t->d = 1;
      t->h = t->mi = t->s = 0;
    }
    if (mask_y != t->y || mask_m != t->mo) {
      dmask = ath__day_mask(c, t->y, t->mo);
      mask_y = t->y;
      mask_m = t->mo;
    }
    v = ath__next_bit(dmask, t->d);
    if (v < 0) {
      t->mo++;
      t->d = 1;
      t->h = t->mi = t->s = 0;
      continue;
    }
    if (v != t->d) {
      t->d = v;
      t->h = t->mi = t->s = 0;
    }
    v = ath__next_bit(c->hours, t->h);
    if (v < 0) {
      t->d++;
      t->h = t->mi = t->s = 0;
      continue;
    }
    if (v != t->h) {
      t->h = v;
      t->mi = t->s = 0;
    }
    v = ath__next_bit(c->minutes, t->mi);
    if (v < 0) {
      t->h++;
      t->mi = t->s = 0;
      continue;
    }
    if (v != t->mi) {
      t->mi = v;
      t->s = 0;
    }
    v = ath__next_bit(c->seconds, t->s);
    if (v < 0) {
      t->mi++;
      t->s = 0;
      continue;
    }
    t->s = v;
    return 0;
  }
}

static int64_t ath__civil_to_secs(const ath__civil_t* t) {
  return ath__days_from_civil(t->y, t->mo, t->d) * 86400 + t->h * 3600 +
         t->mi * 60 + t->s;
}

static void ath__secs_to_civil(int64_t secs, ath__civil_t* t) {
  int64_t days = ath__floordiv(secs, 86400);
  int64_t rem = secs - days * 86400;
  ath__civil_from_days(days, &t->y, &t->mo, &t->d);
  t->h = (int)(rem / 3600);
  t->mi = (int)(rem / 60 % 60);
  t->s = (int)(rem % 60);
}

static void ath__tm_to_civil(const struct tm* tm, ath__civil_t* t) {
  t->y = (int64_t)tm->tm_year + 1900;
  t->mo = tm->tm_mon + 1;
  t->d = tm->tm_mday;
  t->h = tm->tm_hour;
  t->mi = tm->tm_min;
  t->s = tm->tm_sec;
}

/* The UTC offset (seconds east) of local time at instant `t`; 0 on error
 * with *ok = 0. */
static int64_t ath__local_offset(int64_t t, int* ok) {
  time_t tt = (time_t)t;
  struct tm tm;
  ath__civil_t w;
  if (localtime_r(&tt, &tm) == NULL) {
    *ok = 0;
    return 0;
  }
  ath__tm_to_civil(&tm, &w);
  *ok = 1;
  return ath__civil_to_secs(&w) - t;
}

/* The earliest instant whose local wall time is `w`, into *out. Returns 0,
 * or -1 when `w` does not exist (a DST gap). The instants are w - offset
 * for the offsets in effect within a day of mktime's answer; each is
 * checked with localtime_r. */
static int ath__resolve_local(const ath__civil_t* w, int64_t* out) {
  int64_t u = ath__civil_to_secs(w); /* the wall time read as UTC */
  int64_t t0, offs[3], best = 0;
  int found = 0, i, j, ok;
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  tm.tm_year = (int)(w->y - 1900);
  tm.tm_mon = w->mo - 1;
  tm.tm_mday = w->d;
  tm.tm_hour = w->h;
  tm.tm_min = w->mi;
  tm.tm_sec = w->s;
  tm.tm_isdst = -1;
  t0 = (int64_t)mktime(&tm);
  if (t0 == -1) /* an error, or truly 1969-12-31 23:59:59 UTC: either way */
    t0 = u;     /* any instant nearby serves to sample the offsets */
  for (i = 0; i < 3; i++) {
    offs[i] = ath__local_offset(t0 + (i - 1) * 86400, &ok);
    if (!ok)
      return -1;
  }
  for (i = 0; i < 3; i++) {
    int64_t cand = u - offs[i];
    time_t tt = (time_t)cand;
    ath__civil_t back;
    for (j = 0; j < i; j++)
      if (offs[j] == offs[i])
        break;
    if (j < i)
      continue;
    if (localtime_r(&tt, &tm) == NULL)
      continue;
    ath__tm_to_civil(&tm, &back);
    if (back.y == w->y && back.mo == w->mo && back.d == w->d &&
        back.h == w->h && back.mi == w->mi && back.s == w->s &&
        (!found || cand < best)) {
      best = cand;
      found = 1;
    }
  }
  if (!found)
    return -1;
  *out = best;
  return 0;
}

/* 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z. */
#define ATH__CRON_MIN_SECS (-62135596800LL)
#define ATH__CRON_MAX_SECS 253402300799LL

int ath__cron_next(const ath_cron_t* c, int64_t after_ms, int local_tz,
                   int64_t* next_ms) {
  int64_t t, ylimit;
  ath__civil_t w;
  if (c == NULL || next_ms == NULL || (local_tz != 0 && local_tz != 1))
    return ATH_EINVAL;
  t = ath__floordiv(after_ms, 1000);
  if (t < ATH__CRON_MIN_SECS || t > ATH__CRON_MAX_SECS)
    return ATH_EINVAL;
  t++; /* the first whole second strictly after after_ms */

  if (!local_tz) {
    ath__secs_to_civil(t, &w);
    if (ath__find(c, &w, w.y + 8) != 0)
      return ATH_EINVAL;
    *next_ms = ath__civil_to_secs(&w) * 1000;
    return 0;
  }

  {
    time_t tt = (time_t)t;
    struct tm tm;
    if (localtime_r(&tt, &tm) == NULL)
      return ATH_EINVAL;
    ath__tm_to_civil(&tm, &w);
  }
  ylimit = w.y + 8;
  /* Walk matching wall times in wall-clock order from the wall time at t.
   * Skip those that do not exist (gap) and those whose first occurrence is
   * before t (already fired, or a repeat of the hour being passed). */
  for (;;) {
    int64_t inst;
    if (ath__find(c, &w, ylimit) != 0)
      return ATH_EINVAL;
    if (ath__resolve_local(&w, &inst) == 0 && inst >= t) {
      *next_ms = inst * 1000;
      return 0;
    }
    w.s++;
  }
}
