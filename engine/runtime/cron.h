/* Cron expressions (SEMANTICS §11): a parser and a next-occurrence
 * calculator. Plain C, libc only; see docs/cron.md for the grammar, the
 * DST rules and the error format. Not installed. */
#ifndef ATHENA_CRON_H
#define ATHENA_CRON_H

#include <stddef.h>
#include <stdint.h>
#include "athena.h"

/* A parsed expression: a plain value type with no heap memory, so it can be
 * copied with `=` or memcpy and needs no free. Every field is a bitset of
 * the values that match. Treat it as opaque outside cron.c; only
 * ath__cron_parse() builds one. */
typedef struct ath_cron_s {
  uint64_t seconds;       /* bit s: second s (0-59); bit 0 only with 5 fields */
  uint64_t minutes;       /* bit m: minute m (0-59) */
  uint32_t hours;         /* bit h: hour h (0-23) */
  uint32_t dom;           /* bit d: day of month d (1-31); bit 0 unused */
  uint16_t months;        /* bit m: month m (1 = January .. 12); bit 0 unused */
  uint8_t dow;            /* bit w: weekday w (0 = Sunday .. 6 = Saturday) */
  uint8_t dow_last;       /* bit w: "wL", the last weekday w of the month */
  uint8_t dow_nth[7];     /* dow_nth[w] bit k-1: "w#k", the k-th (1-5) weekday w */
  uint8_t dom_last;       /* 1: "L", the last day of the month */
  uint8_t dom_restricted; /* 1: the day-of-month field is not "*" or "?" */
  uint8_t dow_restricted; /* 1: the day-of-week field is not "*" or "?" */
} ath_cron_t;

/* Parses the NUL-terminated cron expression `expr` (5 fields, 6 fields with
 * a leading seconds field, or an @alias) into *out.
 *
 * Returns 0 and fills *out, or ATH_EINVAL and leaves *out untouched. On
 * ATH_EINVAL, when `err` is not NULL and `errlen` > 0, `err` receives the
 * NUL-terminated (possibly truncated) message
 *   invalid cron expression "<expr>": <reason> at column <c>
 * where <c> counts bytes of `expr` from 1 at the offending character. An
 * expression that cannot match within 8 years from every start time (e.g.
 * "0 0 30 2 *") is rejected with reason "no matching time within 8 years".
 * A NULL `expr` or `out` also returns ATH_EINVAL ("cron expression is NULL"
 * / "no output" messages, without the prefix).
 *
 * Ownership: reads `expr`, never keeps it; *out owns no memory.
 * Thread: any; no global state, reentrant. */
int ath__cron_parse(const char* expr, ath_cron_t* out, char* err,
                    size_t errlen);

/* Finds the first time that matches `c` strictly after `after_ms` (Unix
 * epoch milliseconds) and stores it in *next_ms, in epoch milliseconds with
 * a whole second (next_ms % 1000 == 0). With 5-field expressions the match
 * is at second 0 of a minute.
 *
 * local_tz = 0: the fields are matched against UTC civil time (pure
 * arithmetic, no libc time-zone calls).
 * local_tz = 1: the fields are matched against the process's local wall
 * time (localtime_r/mktime, honouring TZ as of the call). Wall times in a
 * DST gap never fire; a wall time that occurs twice (DST end) fires once,
 * at its first occurrence; if that occurrence is at or before `after_ms`
 * the wall time is done and the search moves on.
 *
 * Returns 0, or ATH_EINVAL when `c`/`next_ms` is NULL, local_tz is not 0
 * or 1, `after_ms` lies outside years 0001-9999 (UTC), or nothing matches
 * within 8 calendar years after `after_ms` (cannot happen in UTC for an
 * expression ath__cron_parse() accepted; *next_ms is then untouched).
 *
 * Ownership: reads *c only. Thread: any. With local_tz = 1 it reads the
 * process time-zone state like localtime_r(); do not change TZ (setenv +
 * tzset) concurrently from another thread. Cost: a handful of bitset
 * lookups per call (it jumps by year/month/day/hour/minute/second, never
 * stepping second by second), plus a few localtime_r/mktime calls per
 * candidate in local time. */
int ath__cron_next(const ath_cron_t* c, int64_t after_ms, int local_tz,
                   int64_t* next_ms);

#endif
