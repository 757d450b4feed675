/* Logger (SEMANTICS §14.2; docs/logging.md). Callers format a whole line on
 * their own stack and append it to a bounded list under the mutex; one writer
 * thread takes the list, writes it with writev() and rotates the file. The
 * queue bound counts a line until it has been written, so memory stays
 * within queue_bytes even while the writer is stuck in write(). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "log.h"

#define LOG_IOV_MAX 64            /* lines per writev() */
#define LOG_MAX_FILES 1000        /* keeps a rotation's renames bounded */
#define LOG_REPORT_NS 1000000000u /* drop reports while behind: at most 1/s */

/* One formatted line, newline included. Owned by the queue, then by the
 * writer thread, which frees it once written. */
typedef struct log_line_s {
  struct log_line_s* next;
  size_t len;
  char data[];
} log_line_t;

struct ath_log_s {
  /* Immutable after ath__log_open(): read by any thread without the lock. */
  ath_log_level_t level;
  ath_log_format_t format; /* resolved, never ATH_LOG_AUTO */
  int color;               /* pretty with ANSI colors: the sink is a tty */
  size_t max_size;
  int max_files;
  size_t queue_bytes;
  int64_t (*now_ms)(void);
  void (*before_write)(void* arg);
  void* before_write_arg;
  char* path; /* NULL: stderr */

  /* Writer thread only (and open/close, before and after it runs). */
  int fd;                  /* -1: a reopen after rotation failed */
  int rotate;              /* the file is a regular file: rotate it */
  uint64_t size;           /* bytes in the current file */
  char* name_from;         /* scratch for "<path>.<n>" during rotation */
  char* name_to;
  size_t name_cap;
  uint64_t reported;       /* drops already reported */
  uint64_t last_report_ns; /* uv_hrtime() of the last report */
  int write_failed;        /* the last sink_flush could not write */
  int report_failed;       /* the last report could not be written (a full
                            * disk): it is tried again once a second */

  /* Guarded by mu. */
  uv_mutex_t mu;
  uv_cond_t cond;    /* the writer waits here for lines, drops or close */
  log_line_t* head;
  log_line_t** tailp;
  size_t queued;     /* bytes queued or being written by the writer */
  int closing;

  _Atomic uint64_t dropped;
  uv_thread_t thread;
};

/* ------------------------------------------------------------ formatting */

/* A line being built: starts in the caller's stack buffer and moves to the
 * heap when it outgrows it. After a failed allocation `oom` is set and
 * further appends do nothing. */
typedef struct {
  char* p;
  size_t len;
  size_t cap;
  int heap;
  int oom;
} fbuf_t;

static void fb_init(fbuf_t* b, char* stack, size_t cap) {
  b->p = stack;
  b->len = 0;
  b->cap = cap;
  b->heap = 0;
  b->oom = 0;
}

static void fb_free(fbuf_t* b) {
  if (b->heap)
    free(b->p);
  b->heap = 0;
}

static void fb_put(fbuf_t* b, const char* s, size_t n) {
  if (b->oom)
    return;
  if (n > b->cap - b->len) {
    size_t cap = b->cap * 2;
    char* p;
    if (cap < b->len + n)
      cap = b->len + n;
    if (b->heap) {
      p = realloc(b->p, cap);
    } else {
      p = malloc(cap);
      if (p != NULL)
        memcpy(p, b->p, b->len);
    }
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
    b->heap = 1;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void fb_puts(fbuf_t* b, const char* s) {
  fb_put(b, s, strlen(s));
}

static void fb_putc(fbuf_t* b, char c) {
  fb_put(b, &c, 1);
}

/* Appends `v` in decimal, zero-padded to `width` digits. */
static void fb_digits(fbuf_t* b, int64_t v, int width) {
  char tmp[24];
  int n = 0;
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  do {
    tmp[sizeof(tmp) - 1 - n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0 && n < 20);
  while (n < width)
    tmp[sizeof(tmp) - 1 - n++] = '0';
  if (v < 0)
    tmp[sizeof(tmp) - 1 - n++] = '-';
  fb_put(b, tmp + sizeof(tmp) - n, (size_t)n);
}

/* Appends epoch milliseconds `ms` as RFC 3339 UTC with milliseconds
 * ("2026-11-27T07:52:01.123Z"), or only the time of day ("07:52:01.123",
 * UTC too) when `date` is 0. Pure arithmetic (days_from_civil inverted, after
 * H. Hinnant), so no libc time-zone state is touched. */
static void fb_time(fbuf_t* b, int64_t ms, int date) {
  int64_t secs = ms / 1000, msec = ms % 1000;
  int64_t days, sod;
  if (msec < 0) {
    msec += 1000;
    secs -= 1;
  }
  days = secs / 86400;
  sod = secs % 86400;
  if (sod < 0) {
    sod += 86400;
    days -= 1;
  }
  if (date) {
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = yoe + era * 400 + (m <= 2);
    fb_digits(b, y, 4);
    fb_putc(b, '-');
    fb_digits(b, m, 2);
    fb_putc(b, '-');
    fb_digits(b, d, 2);
    fb_putc(b, 'T');
  }
  fb_digits(b, sod / 3600, 2);
  fb_putc(b, ':');
  fb_digits(b, sod / 60 % 60, 2);
  fb_putc(b, ':');
  fb_digits(b, sod % 60, 2);
  fb_putc(b, '.');
  fb_digits(b, msec, 3);
  if (date)
    fb_putc(b, 'Z');
}

/* Returns the length (1-4) of the well-formed UTF-8 sequence at `s`, which
 * has `n` > 0 bytes left, or 0 when the byte there starts none (stray
 * continuation, overlong form, surrogate, past U+10FFFF, truncated). */
static size_t utf8_seq(const unsigned char* s, size_t n) {
  unsigned c = s[0];
  size_t len, i;
  if (c < 0x80)
    return 1;
  if (c < 0xC2 || c > 0xF4)
    return 0;
  len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  if (n < len)
    return 0;
  for (i = 1; i < len; i++)
    if ((s[i] & 0xC0) != 0x80)
      return 0;
  if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0) ||
      (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90))
    return 0;
  return len;
}

/* Appends `n` bytes of `s` with control characters escaped (\n, \r, \t,
 * others \u00XX) and each byte that is not well-formed UTF-8 replaced by
 * \ufffd, so a line stays one valid UTF-8 line. With `quotes`, also escapes
 * `"` and `\` (JSON strings and quoted logfmt values). */
static void fb_escaped(fbuf_t* b, const char* s, size_t n, int quotes) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char* u = (const unsigned char*)s;
  size_t i = 0, run = 0; /* bytes since i - run are copied as they are */
  while (i < n) {
    unsigned c = u[i];
    size_t len = utf8_seq(u + i, n - i);
    const char* esc = NULL;
    char ubuf[7];
    if (len > 1 || (len == 1 && c >= 0x20 && c != 0x7f &&
                    !(quotes && (c == '"' || c == '\\')))) {
      i += len;
      run += len;
      continue;
    }
    if (len == 0) {
      esc = "\\ufffd";
    } else if (c == '"') {
      esc = "\\\"";
    } else if (c == '\\') {
      esc = "\\\\";
    } else if (c == '\n') {
      esc = "\\n";
    } else if (c == '\r') {
      esc = "\\r";
    } else if (c == '\t') {
      esc = "\\t";
    } else {
      memcpy(ubuf, "\\u00", 4);
      ubuf[4] = hex[c >> 4];
      ubuf[5] = hex[c & 15];
      ubuf[6] = '\0';
      esc = ubuf;
    }
    fb_put(b, s + i - run, run);
    run = 0;
    fb_puts(b, esc);
    i += 1;
  }
  fb_put(b, s + n - run, run);
}

static void fb_json_str(fbuf_t* b, const char* s, size_t n) {
  fb_putc(b, '"');
  fb_escaped(b, s, n, 1);
  fb_putc(b, '"');
}

/* Returns 1 when a logfmt value must be quoted: it is empty or has a space,
 * `=`, `"`, a control character or bytes that are not UTF-8. With `raw`
 * (RAW_JSON) only whitespace, control characters and bad bytes count: JSON
 * punctuation stays as it is. */
static int logfmt_needs_quotes(const char* s, size_t n, int raw) {
  const unsigned char* u = (const unsigned char*)s;
  size_t i = 0;
  if (n == 0)
    return 1;
  while (i < n) {
    size_t len = utf8_seq(u + i, n - i);
    if (len == 0 || u[i] <= 0x20 || u[i] == 0x7f)
      return 1;
    if (!raw && (u[i] == '=' || u[i] == '"'))
      return 1;
    i += len;
  }
  return 0;
}

static void fb_logfmt_val(fbuf_t* b, const char* s, size_t n, int raw) {
  if (!logfmt_needs_quotes(s, n, raw)) {
    fb_put(b, s, n);
    return;
  }
  fb_putc(b, '"');
  fb_escaped(b, s, n, 1);
  fb_putc(b, '"');
}

/* A logfmt key cannot be quoted: bytes that would end it (space, `=`, `"`,
 * control characters) become `_`; an empty key is written `_`. */
static void fb_logfmt_key(fbuf_t* b, const char* k) {
  size_t i, n = k == NULL ? 0 : strlen(k);
  if (n == 0) {
    fb_putc(b, '_');
    return;
  }
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)k[i];
    fb_putc(b, c <= 0x20 || c == 0x7f || c == '=' || c == '"' ? '_' : (char)c);
  }
}

/* Shortest of %.15g .. %.17g that reads back as `d`. snprintf follows
 * LC_NUMERIC, which a script may change: the decimal separator is forced
 * back to `.`. */
static void fb_double(fbuf_t* b, double d, int json) {
  char tmp[40];
  int prec;
  char* p;
  if (isnan(d)) {
    fb_puts(b, json ? "null" : "NaN");
    return;
  }
  if (isinf(d)) {
    fb_puts(b, json ? "null" : d > 0 ? "+Inf" : "-Inf");
    return;
  }
  for (prec = 15; prec < 17; prec++) {
    snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
    if (strtod(tmp, NULL) == d)
      break;
  }
  if (prec == 17)
    snprintf(tmp, sizeof(tmp), "%.17g", d);
  for (p = tmp; *p != '\0'; p++)
    if (!(*p >= '0' && *p <= '9') && *p != '-' && *p != '+' && *p != 'e')
      *p = '.';
  fb_puts(b, tmp);
}

static size_t field_len(const ath_log_field_t* f) {
  return f->len != 0 ? f->len : strlen(f->s);
}

/* Appends one field's value in `format` (pretty values are logfmt's). */
static void fb_value(fbuf_t* b, const ath_log_field_t* f, int json) {
  switch (f->type) {
    case ATH_LOG_STR:
      if (f->s == NULL)
        fb_puts(b, "null");
      else if (json)
        fb_json_str(b, f->s, field_len(f));
      else
        fb_logfmt_val(b, f->s, field_len(f), 0);
      break;
    case ATH_LOG_INT:
      fb_digits(b, f->i, 1);
      break;
    case ATH_LOG_NUM:
      fb_double(b, f->d, json);
      break;
    case ATH_LOG_BOOL:
      fb_puts(b, f->i ? "true" : "false");
      break;
    case ATH_LOG_RAW_JSON:
      if (f->s == NULL || field_len(f) == 0) /* "" is no JSON value */
        fb_puts(b, "null");
      else if (json)
        fb_put(b, f->s, field_len(f));
      else
        fb_logfmt_val(b, f->s, field_len(f), 1);
      break;
    default:
      fb_puts(b, "null");
      break;
  }
}

static const char* const level_names[] = {"debug", "info", "warn", "error"};
static const char* const level_pretty[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
static const char* const level_color[] = {"\033[36m", "\033[32m", "\033[33m",
                                          "\033[1;31m"};

/* Builds the full line for `level` (already clamped), newline included. */
static void format_line(const ath_log_t* lg, fbuf_t* b, int64_t now,
                        ath_log_level_t level, const char* msg,
                        const ath_log_field_t* fields, size_t n) {
  size_t i;
  size_t msglen = strlen(msg);
  switch (lg->format) {
    case ATH_LOG_JSON:
      fb_puts(b, "{\"ts\":\"");
      fb_time(b, now, 1);
      fb_puts(b, "\",\"level\":\"");
      fb_puts(b, level_names[level]);
      fb_puts(b, "\",\"msg\":");
      fb_json_str(b, msg, msglen);
      for (i = 0; i < n; i++) {
        const char* k = fields[i].key == NULL ? "" : fields[i].key;
        fb_putc(b, ',');
        fb_json_str(b, k, strlen(k));
        fb_putc(b, ':');
        fb_value(b, &fields[i], 1);
      }
      fb_puts(b, "}\n");
      break;
    case ATH_LOG_PRETTY:
      fb_time(b, now, 0);
      fb_putc(b, ' ');
      if (lg->color)
        fb_puts(b, level_color[level]);
      fb_puts(b, level_pretty[level]);
      if (lg->color)
        fb_puts(b, "\033[0m");
      fb_putc(b, ' ');
      fb_escaped(b, msg, msglen, 0);
      for (i = 0; i < n; i++) {
        fb_puts(b, i == 0 ? "  " : " ");
        fb_logfmt_key(b, fields[i].key);
        fb_putc(b, '=');
        fb_value(b, &fields[i], 0);
      }
      fb_putc(b, '\n');
      break;
    default: /* logfmt */
      fb_puts(b, "ts=");
      fb_time(b, now, 1);
      fb_puts(b, " level=");
      fb_puts(b, level_names[level]);
      fb_puts(b, " msg=");
      fb_logfmt_val(b, msg, msglen, 0);
      for (i = 0; i < n; i++) {
        fb_putc(b, ' ');
        fb_logfmt_key(b, fields[i].key);
        fb_putc(b, '=');
        fb_value(b, &fields[i], 0);
      }
      fb_putc(b, '\n');
      break;
  }
}

static int64_t real_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Formats a line into a heap node. Returns NULL when memory runs out. */
static log_line_t* make_line(const ath_log_t* lg, ath_log_level_t level,
                             const char* msg, const ath_log_field_t* fields,
                             size_t n) {
  char stack[1024];
  fbuf_t b;
  log_line_t* line = NULL;
  int64_t now = lg->now_ms != NULL ? lg->now_ms() : real_now_ms();
  fb_init(&b, stack, sizeof(stack));
  format_line(lg, &b, now, level, msg, fields, n);
  if (!b.oom)
    line = malloc(sizeof(*line) + b.len);
  if (line != NULL) {
    line->next = NULL;
    line->len = b.len;
    memcpy(line->data, b.p, b.len);
  }
  fb_free(&b);
  return line;
}

/* ------------------------------------------------------------ the sink */

/* Opens (or reopens) the file in append mode and reads its size. Returns 0
 * or a negative errno. Writer thread, or ath__log_open() before it runs. */
static int sink_open(ath_log_t* lg) {
  struct stat st;
  int fd = open(lg->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0)
    return -errno;
  if (fstat(fd, &st) != 0) {
    int rc = -errno;
    close(fd);
    return rc;
  }
  lg->fd = fd;
  /* Rotating renames the path: only sensible for a regular file, never for
   * /dev/stdout, a FIFO or a tty. */
  lg->rotate = S_ISREG(st.st_mode);
  lg->size = lg->rotate ? (uint64_t)st.st_size : 0;
  return 0;
}

/* <file>.<n-1> becomes <file>.<n>, down to <file> becoming <file>.1; rename()
 * replaces <file>.<max_files>, which deletes the oldest. Missing files are
 * skipped. Then a fresh <file> is opened; if that fails fd stays -1 and the
 * next write tries again. Writer thread only. */
static void sink_rotate(ath_log_t* lg) {
  int i;
  close(lg->fd);
  lg->fd = -1;
  for (i = lg->max_files - 1; i >= 0; i--) {
    if (i == 0)
      snprintf(lg->name_from, lg->name_cap, "%s", lg->path);
    else
      snprintf(lg->name_from, lg->name_cap, "%s.%d", lg->path, i);
    snprintf(lg->name_to, lg->name_cap, "%s.%d", lg->path, i + 1);
    rename(lg->name_from, lg->name_to);
  }
  sink_open(lg);
}

/* Writes `n` iovecs completely, resuming after short writes and EINTR, and
 * waiting in poll() when the descriptor is non-blocking and full (stderr may
 * share a non-blocking file description with a parent). Returns 0 or a
 * negative errno. */
static int write_all(int fd, struct iovec* iov, int n) {
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        poll(&p, 1, -1);
        continue;
      }
      return -errno;
    }
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char*)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Writes the iovecs gathered so far. Lines the sink refuses (an I/O error,
 * or no file after a failed reopen) are counted as dropped when `count`. */
static void sink_flush(ath_log_t* lg, struct iovec* iov, int n, size_t bytes,
                       int count) {
  if (n == 0)
    return;
  if (lg->fd < 0 && lg->path != NULL)
    sink_open(lg);
  if (lg->before_write != NULL)
    lg->before_write(lg->before_write_arg);
  lg->write_failed = !(lg->fd >= 0 && write_all(lg->fd, iov, n) == 0);
  if (!lg->write_failed)
    lg->size += bytes;
  else if (count)
    atomic_fetch_add_explicit(&lg->dropped, (uint64_t)n, memory_order_relaxed);
}

/* Writes and frees the lines of `line`'s list, rotating before a line that
 * would take the file past max_size (unless the file is empty: a line larger
 * than max_size still gets written, alone). Returns the bytes of the lines,
 * written or not. Writer thread only. */
static size_t sink_lines(ath_log_t* lg, log_line_t* line, int count) {
  struct iovec iov[LOG_IOV_MAX];
  log_line_t* keep[LOG_IOV_MAX]; /* freed once their iovec is written */
  int n = 0, i;
  size_t pending = 0, total = 0;
  while (line != NULL) {
    log_line_t* next = line->next;
    int full = n == LOG_IOV_MAX;
    int over = lg->rotate && lg->size + pending > 0 &&
               lg->size + pending + line->len > lg->max_size;
    if (full || over) {
      sink_flush(lg, iov, n, pending, count);
      for (i = 0; i < n; i++)
        free(keep[i]);
      n = 0;
      pending = 0;
      /* Checked again: the flush may have failed and left size as it was. */
      if (lg->rotate && lg->fd >= 0 && lg->size > 0 &&
          lg->size + line->len > lg->max_size)
        sink_rotate(lg);
    }
    iov[n].iov_base = line->data;
    iov[n].iov_len = line->len;
    keep[n++] = line;
    pending += line->len;
    total += line->len;
    line = next;
  }
  sink_flush(lg, iov, n, pending, count);
  for (i = 0; i < n; i++)
    free(keep[i]);
  return total;
}

/* Writes "logger dropped N lines" when drops happened since the last
 * report. Written whatever the level, since it says lines are missing; a
 * failure to write it is not itself counted, so reports cannot feed on
 * themselves. Writer thread only. */
static void report_drops(ath_log_t* lg) {
  uint64_t d = atomic_load_explicit(&lg->dropped, memory_order_relaxed);
  uint64_t n = d - lg->reported;
  char msg[64];
  log_line_t* line;
  if (n == 0)
    return;
  lg->last_report_ns = uv_hrtime();
  snprintf(msg, sizeof(msg), "logger dropped %" PRIu64 " lines", n);
  {
    ath_log_field_t f = ATH_LOG_FINT("dropped", n);
    line = make_line(lg, ATH_LOG_WARN, msg, &f, 1);
  }
  lg->write_failed = line == NULL;
  if (line != NULL)
    sink_lines(lg, line, 0);
  /* A report the sink refused (a full disk) is not lost: the drops stay
   * unreported and a later report, with the count grown, tries again. */
  lg->report_failed = lg->write_failed;
  if (!lg->report_failed)
    lg->reported = d;
}

/* The writer thread: takes the whole queue at once, writes it without the
 * lock, then gives back its bytes. Reports drops once the queue is empty (it
 * has caught up), or once a second while it stays behind. Exits when closing
 * and nothing is left. */
static void writer_main(void* arg) {
  ath_log_t* lg = arg;
  sigset_t pipe_only;
  /* A stderr pipe whose reader went away must cost lines (EPIPE, counted),
   * not the process: a host that did not ignore SIGPIPE would die of it. The
   * signal stays pending on this thread and goes away with it. */
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, NULL);
  uv_mutex_lock(&lg->mu);
  for (;;) {
    log_line_t* batch;
    size_t bytes = 0;
    int closing, idle;
    while (lg->head == NULL && !lg->closing) {
      if (atomic_load_explicit(&lg->dropped, memory_order_relaxed) == lg->reported) {
        uv_cond_wait(&lg->cond, &lg->mu);
      } else if (!lg->report_failed ||
                 uv_cond_timedwait(&lg->cond, &lg->mu, LOG_REPORT_NS) == UV_ETIMEDOUT) {
        break; /* a report to write, or to try again */
      }
    }
    batch = lg->head;
    lg->head = NULL;
    lg->tailp = &lg->head;
    closing = lg->closing;
    uv_mutex_unlock(&lg->mu);

    if (batch != NULL)
      bytes = sink_lines(lg, batch, 1);

    uv_mutex_lock(&lg->mu);
    lg->queued -= bytes;
    idle = lg->head == NULL;
    /* at close, a report the sink just refused is not tried again */
    if ((idle && !(closing && lg->report_failed)) || uv_hrtime() - lg->last_report_ns >= LOG_REPORT_NS) {
      uv_mutex_unlock(&lg->mu);
      report_drops(lg);
      uv_mutex_lock(&lg->mu);
      idle = lg->head == NULL;
    }
    if (closing && idle)
      break;
  }
  uv_mutex_unlock(&lg->mu);
}

/* ------------------------------------------------------------ the API */

void ath__log_config_init(ath_log_config_t* c) {
  memset(c, 0, sizeof(*c));
  c->level = ATH_LOG_INFO;
  c->format = ATH_LOG_AUTO;
  c->file = NULL;
  c->max_size = (size_t)10 << 20;
  c->max_files = 5;
  c->queue_bytes = (size_t)1 << 20;
}

int ath__log_level_parse(const char* name, ath_log_level_t* out) {
  int i;
  if (name == NULL || out == NULL)
    return ATH_EINVAL;
  for (i = 0; i < 4; i++) {
    if (strcmp(name, level_names[i]) == 0) {
      *out = (ath_log_level_t)i;
      return 0;
    }
  }
  return ATH_EINVAL;
}

const char* ath__log_level_name(ath_log_level_t level) {
  if ((int)level < 0 || (int)level > ATH_LOG_ERROR)
    return level_names[ATH_LOG_ERROR];
  return level_names[level];
}

int ath__log_format_parse(const char* name, ath_log_format_t* out) {
  static const char* const names[] = {"auto", "logfmt", "json", "pretty"};
  int i;
  if (name == NULL || out == NULL)
    return ATH_EINVAL;
  for (i = 0; i < 4; i++) {
    if (strcmp(name, names[i]) == 0) {
      *out = (ath_log_format_t)i;
      return 0;
    }
  }
  return ATH_EINVAL;
}

/* Writes the message into `err` when there is room, returns `rc`. */
static int log_fail(int rc, char* err, size_t errlen, const char* fmt, ...)
  __attribute__((format(printf, 4, 5)));
static int log_fail(int rc, char* err, size_t errlen, const char* fmt, ...) {
  if (err != NULL && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return rc;
}

static void log_free(ath_log_t* lg) {
  if (lg->path != NULL && lg->fd >= 0)
    close(lg->fd);
  free(lg->path);
  free(lg->name_from);
  free(lg->name_to);
  free(lg);
}

int ath__log_open(const ath_log_config_t* c, ath_log_t** out, char* err,
                  size_t errlen) {
  ath_log_t* lg;
  int tty, rc;
  if (c == NULL || out == NULL)
    return log_fail(ATH_EINVAL, err, errlen, "log config or output is NULL");
  if ((int)c->level < ATH_LOG_DEBUG || (int)c->level > ATH_LOG_ERROR)
    return log_fail(ATH_EINVAL, err, errlen, "log level %d is not a level",
                    (int)c->level);
  if ((int)c->format < ATH_LOG_AUTO || (int)c->format > ATH_LOG_PRETTY)
    return log_fail(ATH_EINVAL, err, errlen, "log format %d is not a format",
                    (int)c->format);
  if (c->max_size == 0)
    return log_fail(ATH_EINVAL, err, errlen, "log maxSize must be > 0");
  if (c->max_files < 1 || c->max_files > LOG_MAX_FILES)
    return log_fail(ATH_EINVAL, err, errlen,
                    "log maxFiles must be between 1 and %d, got %d",
                    LOG_MAX_FILES, c->max_files);
  if (c->queue_bytes == 0)
    return log_fail(ATH_EINVAL, err, errlen, "log queue size must be > 0");
  if (c->file != NULL && c->file[0] == '\0')
    return log_fail(ATH_EINVAL, err, errlen, "log file is an empty path");

  lg = calloc(1, sizeof(*lg));
  if (lg == NULL)
    return log_fail(ATH_ENOMEM, err, errlen, "out of memory");
  lg->level = c->level;
  lg->max_size = c->max_size;
  lg->max_files = c->max_files;
  lg->queue_bytes = c->queue_bytes;
  lg->now_ms = c->now_ms;
  lg->before_write = c->before_write;
  lg->before_write_arg = c->before_write_arg;
  lg->fd = STDERR_FILENO;
  lg->head = NULL;
  lg->tailp = &lg->head;
  atomic_init(&lg->dropped, 0);

  if (c->file != NULL) {
    lg->name_cap = strlen(c->file) + 16; /* "." and up to 10 digits */
    lg->path = strdup(c->file);
    lg->name_from = malloc(lg->name_cap);
    lg->name_to = malloc(lg->name_cap);
    lg->fd = -1;
    if (lg->path == NULL || lg->name_from == NULL || lg->name_to == NULL) {
      log_free(lg);
      return log_fail(ATH_ENOMEM, err, errlen, "out of memory");
    }
    rc = sink_open(lg);
    if (rc < 0) {
      log_fail(ATH_EINVAL, err, errlen, "cannot open log file \"%s\": %s",
               c->file, uv_strerror(rc));
      log_free(lg);
      return ATH_EINVAL;
    }
  }

  tty = isatty(lg->fd);
  lg->format = c->format;
  if (lg->format == ATH_LOG_AUTO)
    lg->format = c->file == NULL && tty ? ATH_LOG_PRETTY : ATH_LOG_LOGFMT;
  lg->color = lg->format == ATH_LOG_PRETTY && tty;

  if (uv_mutex_init(&lg->mu) != 0) {
    log_free(lg);
    return log_fail(ATH_ENOMEM, err, errlen, "cannot create the log mutex");
  }
  if (uv_cond_init(&lg->cond) != 0) {
    uv_mutex_destroy(&lg->mu);
    log_free(lg);
    return log_fail(ATH_ENOMEM, err, errlen, "cannot create the log condition");
  }
  rc = uv_thread_create(&lg->thread, writer_main, lg);
  if (rc != 0) {
    uv_cond_destroy(&lg->cond);
    uv_mutex_destroy(&lg->mu);
    log_free(lg);
    return log_fail(ATH_ENOMEM, err, errlen,
                    "cannot start the log writer thread: %s", uv_strerror(rc));
  }
  *out = lg;
  return 0;
}

int ath__log_enabled(const ath_log_t* lg, ath_log_level_t level) {
  return lg != NULL && level >= lg->level;
}

void ath__log_write(ath_log_t* lg, ath_log_level_t level, const char* msg,
                    const ath_log_field_t* fields, size_t n) {
  log_line_t* line;
  if ((int)level < 0 || (int)level > ATH_LOG_ERROR)
    level = ATH_LOG_ERROR;
  if (!ath__log_enabled(lg, level))
    return;
  line = make_line(lg, level, msg == NULL ? "" : msg, fields, n);
  if (line == NULL) {
    atomic_fetch_add_explicit(&lg->dropped, 1, memory_order_relaxed);
    return;
  }
  uv_mutex_lock(&lg->mu);
  if (line->len > lg->queue_bytes - lg->queued) {
    /* Wake the writer in case it sleeps on an empty queue (a line larger
     * than the whole bound): it reports drops only when awake. */
    atomic_fetch_add_explicit(&lg->dropped, 1, memory_order_relaxed);
    uv_cond_signal(&lg->cond);
    uv_mutex_unlock(&lg->mu);
    free(line);
    return;
  }
  lg->queued += line->len;
  *lg->tailp = line;
  lg->tailp = &line->next;
  uv_cond_signal(&lg->cond);
  uv_mutex_unlock(&lg->mu);
}

uint64_t ath__log_dropped(const ath_log_t* lg) {
  if (lg == NULL)
    return 0;
  return atomic_load_explicit(&((ath_log_t*)lg)->dropped,
                              memory_order_relaxed);
}

void ath__log_close(ath_log_t* lg) {
  if (lg == NULL)
    return;
  uv_mutex_lock(&lg->mu);
  lg->closing = 1;
  uv_cond_signal(&lg->cond);
  uv_mutex_unlock(&lg->mu);
  uv_thread_join(&lg->thread);
  uv_cond_destroy(&lg->cond);
  uv_mutex_destroy(&lg->mu);
  log_free(lg);
}
