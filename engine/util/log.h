/* Logger (SEMANTICS §14.2): leveled, structured lines in logfmt, JSON or a
 * pretty form, written to stderr or to a file rotated by size. Callers format
 * the line in their own thread and hand it to a bounded in-memory queue; one
 * writer thread per logger does all the I/O, so logging never blocks on the
 * sink. Lines that do not fit in the queue are dropped and counted. Plain C,
 * libc and libuv only (no Lua); see docs/logging.md. Not installed. */
#ifndef ATHENA_LOG_H
#define ATHENA_LOG_H

#include <stddef.h>
#include <stdint.h>
#include "athena.h"

typedef enum {
  ATH_LOG_DEBUG = 0,
  ATH_LOG_INFO,
  ATH_LOG_WARN,
  ATH_LOG_ERROR
} ath_log_level_t;

typedef enum {
  ATH_LOG_AUTO = 0, /* pretty when the destination is a terminal stderr */
  ATH_LOG_LOGFMT,
  ATH_LOG_JSON,
  ATH_LOG_PRETTY
} ath_log_format_t;

/* Logger configuration. Initialise with ath__log_config_init(), then change
 * fields. Strings are borrowed for the duration of ath__log_open(), which
 * copies them. */
typedef struct {
  ath_log_level_t level;   /* lines below it are skipped (ATH_LOG_INFO) */
  ath_log_format_t format; /* ATH_LOG_AUTO: pretty on a terminal stderr, else
                            * logfmt (a file is always logfmt) */
  const char* file;        /* NULL: stderr; else a path, rotated by size */
  size_t max_size;         /* bytes a file may reach before it rotates
                            * (10 MiB); ignored for stderr, must be > 0 */
  int max_files;           /* rotated files kept, <file>.1 .. <file>.N (5);
                            * 1 .. 1000 */
  size_t queue_bytes;      /* bound on the bytes of lines formatted but not
                            * yet written (1 MiB); a line that does not fit
                            * is dropped and counted; must be > 0 */
  /* Test hooks; leave NULL in the engine. */
  int64_t (*now_ms)(void); /* the clock for `ts`, epoch ms (NULL: real
                            * time); called in the logging thread */
  void (*before_write)(void* arg); /* called by the writer thread before each
                                    * write to the sink, so a test can hold
                                    * it back */
  void* before_write_arg;
} ath_log_config_t;

typedef enum {
  ATH_LOG_STR,     /* s (len bytes; len 0: strlen(s)); NULL is written null */
  ATH_LOG_INT,     /* i */
  ATH_LOG_NUM,     /* d; NaN and infinities are null in JSON */
  ATH_LOG_BOOL,    /* i != 0 */
  ATH_LOG_RAW_JSON /* s: valid JSON from the caller, inserted verbatim */
} ath_log_ftype_t;

/* One `key=value` after the message. Borrowed for the duration of
 * ath__log_write(). Build them with the ATH_LOG_F* macros below. */
typedef struct {
  const char* key;
  ath_log_ftype_t type;
  const char* s;
  int64_t i;
  double d;
  size_t len; /* bytes of s for STR and RAW_JSON; 0: strlen(s), so Lua
               * strings with embedded NULs can pass their length */
} ath_log_field_t;

#define ATH_LOG_FSTR(k, v) \
  { .key = (k), .type = ATH_LOG_STR, .s = (v) }
#define ATH_LOG_FLSTR(k, v, n) \
  { .key = (k), .type = ATH_LOG_STR, .s = (v), .len = (n) }
#define ATH_LOG_FINT(k, v) \
  { .key = (k), .type = ATH_LOG_INT, .i = (int64_t)(v) }
#define ATH_LOG_FNUM(k, v) \
  { .key = (k), .type = ATH_LOG_NUM, .d = (double)(v) }
#define ATH_LOG_FBOOL(k, v) \
  { .key = (k), .type = ATH_LOG_BOOL, .i = !!(v) }
#define ATH_LOG_FRAW(k, json) \
  { .key = (k), .type = ATH_LOG_RAW_JSON, .s = (json) }

typedef struct ath_log_s ath_log_t;

/* Fills `c` with the defaults above. Thread: any. */
void ath__log_config_init(ath_log_config_t* c);

/* Looks up a level by its SEMANTICS name ("debug", "info", "warn",
 * "error"). Returns 0 and sets *out, or ATH_EINVAL (unknown or NULL name;
 * *out untouched). Thread: any. */
int ath__log_level_parse(const char* name, ath_log_level_t* out);

/* Returns the level's name as lines spell it ("info"); "error" for a value
 * outside the enum. Static storage. Thread: any. */
const char* ath__log_level_name(ath_log_level_t level);

/* Looks up a format by name ("logfmt", "json", "pretty"; "auto" gives
 * ATH_LOG_AUTO). Returns 0 and sets *out, or ATH_EINVAL. Thread: any. */
int ath__log_format_parse(const char* name, ath_log_format_t* out);

/* Opens a logger: checks the config, opens the destination (a file in
 * append mode, created 0644 as the umask allows; its current size counts
 * toward max_size), resolves ATH_LOG_AUTO and starts the writer thread.
 *
 * Returns 0 and sets *out, or ATH_EINVAL (a bad config, or a file that
 * cannot be opened) or ATH_ENOMEM (memory, or no thread), and leaves *out
 * untouched. On failure, when `err` is not NULL and `errlen` > 0, `err`
 * receives a NUL-terminated message, e.g.
 *   cannot open log file "/proc/nope/x": no such file or directory
 *   log maxFiles must be between 1 and 1000, got 0
 *
 * Ownership: copies what it keeps from `c`. The caller owns the logger and
 * releases it with ath__log_close(). Thread: any. */
int ath__log_open(const ath_log_config_t* c, ath_log_t** out, char* err,
                  size_t errlen);

/* Returns 1 when a line at `level` would be written, else 0 (also for a
 * NULL logger). A plain read of an immutable field: call it before building
 * fields that cost something. Thread: any. */
int ath__log_enabled(const ath_log_t* lg, ath_log_level_t level);

/* Logs `msg` (NULL: "") with `n` fields, in order, after ts, level and msg.
 * Formats the whole line in the calling thread, then takes the logger's
 * mutex only to append it to the queue; never waits for I/O. When the line
 * does not fit within queue_bytes (or memory runs out) it is dropped and
 * counted (ath__log_dropped); the writer later reports the count as a warn
 * line "logger dropped N lines". A level outside the enum counts as error.
 * Does nothing for a NULL logger or a level below the configured one.
 *
 * Ownership: reads `msg` and `fields`, keeps nothing. Thread: any, also
 * concurrently; not concurrently with or after ath__log_close(). Lines from
 * one thread are written in the order they were logged; a line is written
 * whole, never interleaved with another. */
void ath__log_write(ath_log_t* lg, ath_log_level_t level, const char* msg,
                    const ath_log_field_t* fields, size_t n);

/* Returns how many lines have been dropped since ath__log_open() (queue
 * full, out of memory, or the sink failed to take them). Monotonic; 0 for a
 * NULL logger. Thread: any. */
uint64_t ath__log_dropped(const ath_log_t* lg);

/* Writes every queued line, reports drops not yet reported ("logger dropped
 * N lines", at warn, whatever the level), joins the writer thread, closes
 * the file (never stderr) and frees the logger. Waits for the sink: a stderr
 * pipe nobody reads holds it up. A NULL logger does nothing.
 * Thread: any, once, after every ath__log_write() has returned. */
void ath__log_close(ath_log_t* lg);

#endif
