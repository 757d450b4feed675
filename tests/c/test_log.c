/* Logger tests (engine/util/log.c, docs/logging.md). Each test logs into its own
 * directory under /tmp and reads the files back after ath__log_close(),
 * which has written everything by the time it returns. The clock is
 * injected, so lines are compared as exact text. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* posix_openpt, grantpt, ptsname */
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "task.h"

/* ---------------------------------------------------------------- helpers */

#define TS "2026-11-27T07:52:01.123Z"
#define TS_MS INT64_C(1795765921123)

static char tmpdir[64];
static int64_t clock_ms = TS_MS;

static int64_t test_now(void) {
  return clock_ms;
}

static void tmp_init(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/athena-log-XXXXXX");
  ASSERT_NOT_NULL(mkdtemp(tmpdir));
  clock_ms = TS_MS;
}

static const char* tmp_path(char* buf, size_t len, const char* name) {
  snprintf(buf, len, "%s/%s", tmpdir, name);
  return buf;
}

/* Removes every file in the test directory, then the directory. */
static void tmp_cleanup(void) {
  DIR* d = opendir(tmpdir);
  struct dirent* e;
  char path[512];
  ASSERT_NOT_NULL(d);
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
    ASSERT_OK(unlink(path));
  }
  closedir(d);
  ASSERT_OK(rmdir(tmpdir));
}

/* Returns the file's bytes, NUL-terminated (free them), or NULL if it does
 * not exist. */
static char* slurp(const char* path, size_t* len) {
  FILE* f = fopen(path, "rb");
  char* buf;
  long n;
  if (f == NULL) {
    ASSERT_EQ(ENOENT, errno);
    return NULL;
  }
  ASSERT_OK(fseek(f, 0, SEEK_END));
  n = ftell(f);
  ASSERT_GE(n, 0);
  ASSERT_OK(fseek(f, 0, SEEK_SET));
  buf = malloc((size_t)n + 1);
  ASSERT_NOT_NULL(buf);
  ASSERT_EQ((size_t)n, fread(buf, 1, (size_t)n, f));
  buf[n] = '\0';
  fclose(f);
  if (len != NULL)
    *len = (size_t)n;
  return buf;
}

static int exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void config_for(ath_log_config_t* c, const char* file,
                       ath_log_format_t format) {
  ath__log_config_init(c);
  c->file = file;
  c->format = format;
  c->now_ms = test_now;
}

static ath_log_t* open_ok(const ath_log_config_t* c) {
  ath_log_t* lg = NULL;
  char err[256] = "";
  int rc = ath__log_open(c, &lg, err, sizeof(err));
  if (rc != 0)
    fprintf(stderr, "ath__log_open: %s\n", err);
  ASSERT_OK(rc);
  ASSERT_NOT_NULL(lg);
  return lg;
}

/* Opens a logger on <tmpdir>/out.log in `format`, runs `body`, closes it
 * and returns what the file holds (free it). */
static char* log_to_file(ath_log_format_t format, ath_log_level_t level,
                         void (*body)(ath_log_t*)) {
  ath_log_config_t c;
  char path[256];
  ath_log_t* lg;
  char* text;
  config_for(&c, tmp_path(path, sizeof(path), "out.log"), format);
  c.level = level;
  lg = open_ok(&c);
  body(lg);
  ASSERT_EQ(0, ath__log_dropped(lg));
  ath__log_close(lg);
  text = slurp(path, NULL);
  ASSERT_NOT_NULL(text);
  ASSERT_OK(unlink(path));
  return text;
}

/* ------------------------------------------------------------ formats */

static void write_sample(ath_log_t* lg) {
  ath_log_field_t task[] = {
    ATH_LOG_FSTR("task", "job-1"),
    ATH_LOG_FINT("attempt", 2),
  };
  ath_log_field_t values[] = {
    ATH_LOG_FNUM("ratio", 0.1),
    ATH_LOG_FBOOL("ok", 1),
    ATH_LOG_FBOOL("no", 0),
    ATH_LOG_FSTR("note", "two words"),
    ATH_LOG_FSTR("empty", ""),
    ATH_LOG_FNUM("big", 1e300),
    ATH_LOG_FINT("min", INT64_MIN),
    ATH_LOG_FNUM("nan", NAN),
    ATH_LOG_FNUM("inf", -INFINITY),
    ATH_LOG_FNUM("neg", -2.5),
    ATH_LOG_FNUM("third", 1.0 / 3),
    ATH_LOG_FSTR("nil", NULL),
  };
  ath__log_write(lg, ATH_LOG_INFO, "task completed", task, 2);
  ath__log_write(lg, ATH_LOG_WARN, "values", values,
                 sizeof(values) / sizeof(values[0]));
  ath__log_write(lg, ATH_LOG_DEBUG, "hidden at info", NULL, 0);
  ath__log_write(lg, ATH_LOG_ERROR, "bare", NULL, 0);
  ath__log_write(lg, ATH_LOG_INFO, NULL, NULL, 0);
}

TEST_IMPL(log_logfmt) {
  char* text;
  tmp_init();
  text = log_to_file(ATH_LOG_LOGFMT, ATH_LOG_INFO, write_sample);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=info msg=\"task completed\" task=job-1 attempt=2\n"
    "ts=" TS " level=warn msg=values ratio=0.1 ok=true no=false "
    "note=\"two words\" empty=\"\" big=1e+300 min=-9223372036854775808 "
    "nan=NaN inf=-Inf neg=-2.5 third=0.3333333333333333 nil=null\n"
    "ts=" TS " level=error msg=bare\n"
    "ts=" TS " level=info msg=\"\"\n");
  free(text);
  tmp_cleanup();
  return 0;
}

TEST_IMPL(log_json) {
  char* text;
  tmp_init();
  text = log_to_file(ATH_LOG_JSON, ATH_LOG_INFO, write_sample);
  ASSERT_STR_EQ(text,
    "{\"ts\":\"" TS "\",\"level\":\"info\",\"msg\":\"task completed\","
    "\"task\":\"job-1\",\"attempt\":2}\n"
    "{\"ts\":\"" TS "\",\"level\":\"warn\",\"msg\":\"values\",\"ratio\":0.1,"
    "\"ok\":true,\"no\":false,\"note\":\"two words\",\"empty\":\"\","
    "\"big\":1e+300,\"min\":-9223372036854775808,\"nan\":null,\"inf\":null,"
    "\"neg\":-2.5,\"third\":0.3333333333333333,\"nil\":null}\n"
    "{\"ts\":\"" TS "\",\"level\":\"error\",\"msg\":\"bare\"}\n"
    "{\"ts\":\"" TS "\",\"level\":\"info\",\"msg\":\"\"}\n");
  free(text);
  tmp_cleanup();
  return 0;
}

TEST_IMPL(log_pretty) {
  char* text;
  tmp_init();
  text = log_to_file(ATH_LOG_PRETTY, ATH_LOG_INFO, write_sample);
  /* A file is not a terminal: no ANSI codes. */
  ASSERT_NULL(strchr(text, '\033'));
  ASSERT_STR_EQ(text,
    "07:52:01.123 INFO  task completed  task=job-1 attempt=2\n"
    "07:52:01.123 WARN  values  ratio=0.1 ok=true no=false "
    "note=\"two words\" empty=\"\" big=1e+300 min=-9223372036854775808 "
    "nan=NaN inf=-Inf neg=-2.5 third=0.3333333333333333 nil=null\n"
    "07:52:01.123 ERROR bare\n"
    "07:52:01.123 INFO  \n");
  free(text);
  tmp_cleanup();
  return 0;
}

static void write_one(ath_log_t* lg) {
  ath_log_field_t f[] = {ATH_LOG_FSTR("k", "v")};
  ath__log_write(lg, ATH_LOG_INFO, "hello", f, 1);
}

TEST_IMPL(log_timestamps) {
  static const struct {
    int64_t ms;
    const char* line;
  } cases[] = {
    {0, "ts=1970-01-01T00:00:00.000Z level=info msg=hello k=v\n"},
    {-1, "ts=1969-12-31T23:59:59.999Z level=info msg=hello k=v\n"},
    {INT64_C(1709251199999),
     "ts=2024-02-29T23:59:59.999Z level=info msg=hello k=v\n"},
    {INT64_C(951868800000),
     "ts=2000-03-01T00:00:00.000Z level=info msg=hello k=v\n"},
    {INT64_C(253402300799999),
     "ts=9999-12-31T23:59:59.999Z level=info msg=hello k=v\n"},
  };
  size_t i;
  tmp_init();
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char* text;
    clock_ms = cases[i].ms;
    text = log_to_file(ATH_LOG_LOGFMT, ATH_LOG_INFO, write_one);
    ASSERT_STR_EQ(text, cases[i].line);
    free(text);
  }
  /* The real clock: a plausible RFC 3339 UTC time, today or later. */
  {
    ath_log_config_t c;
    char path[256];
    ath_log_t* lg;
    char* text;
    int y, mo, d, h, mi, s, ms;
    char z;
    config_for(&c, tmp_path(path, sizeof(path), "real.log"), ATH_LOG_LOGFMT);
    c.now_ms = NULL;
    lg = open_ok(&c);
    write_one(lg);
    ath__log_close(lg);
    text = slurp(path, NULL);
    ASSERT_NOT_NULL(text);
    ASSERT_EQ(8, sscanf(text, "ts=%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d,
                        &h, &mi, &s, &ms, &z));
    ASSERT_EQ('Z', z);
    ASSERT_GE(y, 2024);
    ASSERT_NOT_NULL(strstr(text, "Z level=info msg=hello k=v\n"));
    free(text);
  }
  tmp_cleanup();
  return 0;
}

/* ------------------------------------------------------------ escaping */

static void write_nasty(ath_log_t* lg) {
  ath_log_field_t f[] = {
    ATH_LOG_FSTR("eq", "a=b"),
    ATH_LOG_FSTR("path", "C:\\dir"),
    ATH_LOG_FSTR("cr", "x\ry"),
    ATH_LOG_FLSTR("bin", "a\0b", 3),
    ATH_LOG_FSTR("del", "\x7f"),
    ATH_LOG_FSTR("we ird=\"key\"", "v"),
    ATH_LOG_FSTR("", "nokey"),
    ATH_LOG_FSTR("utf8", "caf\xc3\xa9"),
  };
  ath__log_write(lg, ATH_LOG_INFO,
                 "say \"hi\"\n\tback\\slash\x01 caf\xc3\xa9 bad\xff\xc3", f,
                 sizeof(f) / sizeof(f[0]));
}

TEST_IMPL(log_escaping) {
  char* text;
  tmp_init();
  text = log_to_file(ATH_LOG_LOGFMT, ATH_LOG_INFO, write_nasty);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=info msg=\"say \\\"hi\\\"\\n\\tback\\\\slash\\u0001 "
    "caf\xc3\xa9 bad\\ufffd\\ufffd\" eq=\"a=b\" path=C:\\dir cr=\"x\\ry\" "
    "bin=\"a\\u0000b\" del=\"\\u007f\" we_ird__key_=v _=nokey "
    "utf8=caf\xc3\xa9\n");
  free(text);

  text = log_to_file(ATH_LOG_JSON, ATH_LOG_INFO, write_nasty);
  ASSERT_STR_EQ(text,
    "{\"ts\":\"" TS "\",\"level\":\"info\",\"msg\":\"say \\\"hi\\\"\\n\\tback"
    "\\\\slash\\u0001 caf\xc3\xa9 bad\\ufffd\\ufffd\",\"eq\":\"a=b\","
    "\"path\":\"C:\\\\dir\",\"cr\":\"x\\ry\",\"bin\":\"a\\u0000b\","
    "\"del\":\"\\u007f\",\"we ird=\\\"key\\\"\":\"v\",\"\":\"nokey\","
    "\"utf8\":\"caf\xc3\xa9\"}\n");
  free(text);

  /* Pretty keeps quotes and backslashes as they are, but still never lets a
   * message break the line. */
  text = log_to_file(ATH_LOG_PRETTY, ATH_LOG_INFO, write_nasty);
  ASSERT_STR_EQ(text,
    "07:52:01.123 INFO  say \"hi\"\\n\\tback\\slash\\u0001 caf\xc3\xa9 "
    "bad\\ufffd\\ufffd  eq=\"a=b\" path=C:\\dir cr=\"x\\ry\" "
    "bin=\"a\\u0000b\" del=\"\\u007f\" we_ird__key_=v _=nokey "
    "utf8=caf\xc3\xa9\n");
  free(text);
  tmp_cleanup();
  return 0;
}

static void write_raw(ath_log_t* lg) {
  ath_log_field_t f[] = {
    ATH_LOG_FRAW("obj", "{\"a\":[1,2],\"s\":\"x=y\"}"),
    ATH_LOG_FRAW("spaced", "{\"b\": \"x y\"}"),
    ATH_LOG_FRAW("num", "42"),
    ATH_LOG_FRAW("nothing", NULL),
    ATH_LOG_FRAW("lines", "[1,\n2]"),
    ATH_LOG_FRAW("blank", ""),
  };
  ath__log_write(lg, ATH_LOG_INFO, "raw", f, sizeof(f) / sizeof(f[0]));
}

TEST_IMPL(log_raw_json) {
  char* text;
  tmp_init();
  text = log_to_file(ATH_LOG_LOGFMT, ATH_LOG_INFO, write_raw);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=info msg=raw obj={\"a\":[1,2],\"s\":\"x=y\"} "
    "spaced=\"{\\\"b\\\": \\\"x y\\\"}\" num=42 nothing=null "
    "lines=\"[1,\\n2]\" blank=null\n");
  free(text);
  text = log_to_file(ATH_LOG_JSON, ATH_LOG_INFO, write_raw);
  ASSERT_STR_EQ(text,
    "{\"ts\":\"" TS "\",\"level\":\"info\",\"msg\":\"raw\","
    "\"obj\":{\"a\":[1,2],\"s\":\"x=y\"},\"spaced\":{\"b\": \"x y\"},"
    "\"num\":42,\"nothing\":null,\"lines\":[1,\n2],\"blank\":null}\n");
  free(text);
  tmp_cleanup();
  return 0;
}

/* ------------------------------------------------------------ levels */

static void write_levels(ath_log_t* lg) {
  ASSERT_EQ(0, ath__log_enabled(lg, ATH_LOG_DEBUG));
  ASSERT_EQ(0, ath__log_enabled(lg, ATH_LOG_INFO));
  ASSERT_EQ(1, ath__log_enabled(lg, ATH_LOG_WARN));
  ASSERT_EQ(1, ath__log_enabled(lg, ATH_LOG_ERROR));
  ath__log_write(lg, ATH_LOG_DEBUG, "d", NULL, 0);
  ath__log_write(lg, ATH_LOG_INFO, "i", NULL, 0);
  ath__log_write(lg, ATH_LOG_WARN, "w", NULL, 0);
  ath__log_write(lg, ATH_LOG_ERROR, "e", NULL, 0);
  ath__log_write(lg, (ath_log_level_t)42, "clamped", NULL, 0);
}

static void write_all_levels(ath_log_t* lg) {
  ASSERT_EQ(1, ath__log_enabled(lg, ATH_LOG_DEBUG));
  ath__log_write(lg, ATH_LOG_DEBUG, "d", NULL, 0);
  ath__log_write(lg, ATH_LOG_INFO, "i", NULL, 0);
}

TEST_IMPL(log_levels) {
  char* text;
  ath_log_level_t lv = ATH_LOG_INFO;
  ath_log_format_t fmt = ATH_LOG_AUTO;
  tmp_init();
  text = log_to_file(ATH_LOG_LOGFMT, ATH_LOG_WARN, write_levels);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=warn msg=w\n"
    "ts=" TS " level=error msg=e\n"
    "ts=" TS " level=error msg=clamped\n");
  free(text);
  text = log_to_file(ATH_LOG_LOGFMT, ATH_LOG_DEBUG, write_all_levels);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=debug msg=d\n"
    "ts=" TS " level=info msg=i\n");
  free(text);

  /* A NULL logger is disabled and ignores writes. */
  ASSERT_EQ(0, ath__log_enabled(NULL, ATH_LOG_ERROR));
  ath__log_write(NULL, ATH_LOG_ERROR, "nowhere", NULL, 0);
  ASSERT_EQ(0, ath__log_dropped(NULL));
  ath__log_close(NULL);

  /* Names, as the Lua config spells them. */
  ASSERT_OK(ath__log_level_parse("debug", &lv));
  ASSERT_EQ(ATH_LOG_DEBUG, lv);
  ASSERT_OK(ath__log_level_parse("error", &lv));
  ASSERT_EQ(ATH_LOG_ERROR, lv);
  ASSERT_EQ(ATH_EINVAL, ath__log_level_parse("INFO", &lv));
  ASSERT_EQ(ATH_EINVAL, ath__log_level_parse("warning", &lv));
  ASSERT_EQ(ATH_EINVAL, ath__log_level_parse(NULL, &lv));
  ASSERT_EQ(ATH_LOG_ERROR, lv);
  ASSERT_STR_EQ("warn", ath__log_level_name(ATH_LOG_WARN));
  ASSERT_STR_EQ("error", ath__log_level_name((ath_log_level_t)9));
  ASSERT_OK(ath__log_format_parse("json", &fmt));
  ASSERT_EQ(ATH_LOG_JSON, fmt);
  ASSERT_OK(ath__log_format_parse("pretty", &fmt));
  ASSERT_EQ(ATH_LOG_PRETTY, fmt);
  ASSERT_OK(ath__log_format_parse("logfmt", &fmt));
  ASSERT_EQ(ATH_LOG_LOGFMT, fmt);
  ASSERT_EQ(ATH_EINVAL, ath__log_format_parse("xml", &fmt));
  ASSERT_EQ(ATH_LOG_LOGFMT, fmt);
  tmp_cleanup();
  return 0;
}

/* ------------------------------------------------------------ terminals */

/* Points fd 2 at `fd` for one logger's lifetime; returns the saved fd. */
static int stderr_swap(int fd) {
  int saved = dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  ASSERT_EQ(STDERR_FILENO, dup2(fd, STDERR_FILENO));
  return saved;
}

static void stderr_restore(int saved) {
  ASSERT_EQ(STDERR_FILENO, dup2(saved, STDERR_FILENO));
  close(saved);
}

/* stderr that is not a terminal: AUTO is logfmt and pretty has no colors. */
TEST_IMPL(log_stderr_not_tty) {
  ath_log_config_t c;
  char path[256];
  ath_log_t* lg;
  char* text;
  int fd, saved;
  tmp_init();
  tmp_path(path, sizeof(path), "stderr.txt");
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);

  saved = stderr_swap(fd);
  config_for(&c, NULL, ATH_LOG_AUTO);
  lg = open_ok(&c);
  write_one(lg);
  ath__log_close(lg);
  c.format = ATH_LOG_PRETTY;
  lg = open_ok(&c);
  write_one(lg);
  ath__log_close(lg);
  stderr_restore(saved);
  close(fd);

  text = slurp(path, NULL);
  ASSERT_NOT_NULL(text);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=info msg=hello k=v\n"
    "07:52:01.123 INFO  hello  k=v\n");
  free(text);
  tmp_cleanup();
  return 0;
}

/* Reads what the pty's master has until `want` shows up or 5 s pass. */
static void pty_expect(int master, const char* want) {
  char buf[4096];
  size_t len = 0;
  uint64_t deadline = uv_hrtime() + UINT64_C(5000000000);
  buf[0] = '\0';
  while (strstr(buf, want) == NULL) {
    struct pollfd p = {.fd = master, .events = POLLIN};
    ssize_t n;
    ASSERT_LT(uv_hrtime(), deadline);
    if (poll(&p, 1, 100) <= 0)
      continue;
    n = read(master, buf + len, sizeof(buf) - 1 - len);
    ASSERT_GT(n, 0);
    len += (size_t)n;
    buf[len] = '\0';
  }
}

/* On a terminal, pretty colors the level; AUTO picks pretty only for a
 * terminal stderr, not for a file that happens to be one. */
TEST_IMPL(log_pretty_tty) {
  ath_log_config_t c;
  ath_log_t* lg;
  const char* slave_name;
  int master, slave, saved;
  master = posix_openpt(O_RDWR | O_NOCTTY);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 ||
      (slave_name = ptsname(master)) == NULL) {
    fprintf(stderr, "skip: no pseudo-terminal (%s)\n", strerror(errno));
    if (master >= 0)
      close(master);
    return 0;
  }
  slave = open(slave_name, O_RDWR | O_NOCTTY);
  ASSERT_GE(slave, 0);

  config_for(&c, slave_name, ATH_LOG_PRETTY);
  lg = open_ok(&c);
  write_one(lg);
  ath__log_close(lg);
  pty_expect(master, "07:52:01.123 \033[32mINFO \033[0m hello  k=v");

  c.format = ATH_LOG_AUTO;
  lg = open_ok(&c);
  write_one(lg);
  ath__log_close(lg);
  pty_expect(master, "ts=" TS " level=info msg=hello k=v");

  saved = stderr_swap(slave);
  config_for(&c, NULL, ATH_LOG_AUTO);
  lg = open_ok(&c);
  ath__log_write(lg, ATH_LOG_ERROR, "boom", NULL, 0);
  ath__log_close(lg);
  stderr_restore(saved);
  pty_expect(master, "07:52:01.123 \033[1;31mERROR\033[0m boom");

  close(slave);
  close(master);
  return 0;
}

/* ------------------------------------------------------------ rotation */

/* Lines are 54 bytes ("ts=<24> level=info msg=line i=NNN\n"), so a 200-byte
 * file holds 3 of them. */
TEST_IMPL(log_rotation) {
  ath_log_config_t c;
  char path[256], name[300];
  ath_log_t* lg;
  int i, next = -1, files;
  tmp_init();
  config_for(&c, tmp_path(path, sizeof(path), "app.log"), ATH_LOG_LOGFMT);
  c.max_size = 200;
  c.max_files = 2;
  lg = open_ok(&c);
  for (i = 100; i < 160; i++) {
    ath_log_field_t f[] = {ATH_LOG_FINT("i", i)};
    ath__log_write(lg, ATH_LOG_INFO, "line", f, 1);
  }
  ASSERT_EQ(0, ath__log_dropped(lg));
  ath__log_close(lg);

  /* Exactly app.log, app.log.1, app.log.2; oldest first, every file full
   * (3 lines, 162 bytes), the lines consecutive and ending with the last. */
  snprintf(name, sizeof(name), "%s.3", path);
  ASSERT_EQ(0, exists(name));
  for (files = 2; files >= 0; files--) {
    char* text;
    char* p;
    size_t len;
    int lines = 0;
    if (files == 0)
      snprintf(name, sizeof(name), "%s", path);
    else
      snprintf(name, sizeof(name), "%s.%d", path, files);
    text = slurp(name, &len);
    ASSERT_NOT_NULL(text);
    ASSERT_LE(len, 200);
    ASSERT_EQ(162, len);
    for (p = text; *p != '\0'; p = strchr(p, '\n') + 1) {
      int n;
      ASSERT_EQ(1, sscanf(p, "ts=" TS " level=info msg=line i=%d", &n));
      if (next >= 0)
        ASSERT_EQ(next, n);
      next = n + 1;
      lines++;
    }
    ASSERT_EQ(3, lines);
    free(text);
  }
  ASSERT_EQ(160, next);
  tmp_cleanup();
  return 0;
}

/* A file that is already near max_size rotates before the first line, and
 * the bytes it held survive as <file>.1. */
TEST_IMPL(log_rotation_existing) {
  ath_log_config_t c;
  char path[256], name[300];
  ath_log_t* lg;
  char* text;
  FILE* f;
  int i;
  tmp_init();
  tmp_path(path, sizeof(path), "app.log");
  f = fopen(path, "w");
  ASSERT_NOT_NULL(f);
  for (i = 0; i < 189; i++)
    fputc('x', f);
  fputc('\n', f);
  fclose(f);

  config_for(&c, path, ATH_LOG_LOGFMT);
  c.max_size = 200;
  c.max_files = 1;
  lg = open_ok(&c);
  write_one(lg);
  ath__log_close(lg);

  text = slurp(path, NULL);
  ASSERT_STR_EQ(text, "ts=" TS " level=info msg=hello k=v\n");
  free(text);
  snprintf(name, sizeof(name), "%s.1", path);
  text = slurp(name, NULL);
  ASSERT_NOT_NULL(text);
  ASSERT_EQ(190, strlen(text));
  ASSERT_EQ('x', text[0]);
  free(text);

  /* max_files = 1: the next rotation replaces app.log.1. Lines are 53
   * bytes, so app.log fills up with 3 and the 4th line rotates it. */
  lg = open_ok(&c);
  for (i = 0; i < 3; i++)
    write_one(lg);
  ath__log_close(lg);
  text = slurp(name, NULL);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=info msg=hello k=v\n"
    "ts=" TS " level=info msg=hello k=v\n"
    "ts=" TS " level=info msg=hello k=v\n");
  free(text);
  text = slurp(path, NULL);
  ASSERT_STR_EQ(text, "ts=" TS " level=info msg=hello k=v\n");
  free(text);
  snprintf(name, sizeof(name), "%s.2", path);
  ASSERT_EQ(0, exists(name));
  tmp_cleanup();
  return 0;
}

/* A destination that is not a regular file (here a FIFO) is never renamed,
 * whatever max_size says. */
TEST_IMPL(log_rotation_not_regular) {
  ath_log_config_t c;
  char path[256], name[300];
  char buf[1024];
  ath_log_t* lg;
  ssize_t n;
  int rd, i;
  tmp_init();
  tmp_path(path, sizeof(path), "fifo");
  ASSERT_OK(mkfifo(path, 0600));
  rd = open(path, O_RDONLY | O_NONBLOCK);
  ASSERT_GE(rd, 0);
  config_for(&c, path, ATH_LOG_LOGFMT);
  c.max_size = 10;
  lg = open_ok(&c);
  for (i = 0; i < 3; i++)
    write_one(lg);
  ath__log_close(lg);
  n = read(rd, buf, sizeof(buf) - 1);
  ASSERT_EQ(3 * 53, n);
  buf[n] = '\0';
  ASSERT_STR_EQ(buf,
    "ts=" TS " level=info msg=hello k=v\n"
    "ts=" TS " level=info msg=hello k=v\n"
    "ts=" TS " level=info msg=hello k=v\n");
  close(rd);
  snprintf(name, sizeof(name), "%s.1", path);
  ASSERT_EQ(0, exists(name));
  tmp_cleanup();
  return 0;
}

/* ------------------------------------------------------------ dropping */

/* A gate that holds the writer thread before it writes. */
static uv_sem_t gate_entered;
static uv_mutex_t gate_mu;
static uv_cond_t gate_cv;
static int gate_open;
static int gate_calls;

static void gate_init(void) {
  ASSERT_OK(uv_sem_init(&gate_entered, 0));
  ASSERT_OK(uv_mutex_init(&gate_mu));
  ASSERT_OK(uv_cond_init(&gate_cv));
  gate_open = 0;
  gate_calls = 0;
}

static void gate_destroy(void) {
  uv_cond_destroy(&gate_cv);
  uv_mutex_destroy(&gate_mu);
  uv_sem_destroy(&gate_entered);
}

static void gate_release(void) {
  uv_mutex_lock(&gate_mu);
  gate_open = 1;
  uv_cond_broadcast(&gate_cv);
  uv_mutex_unlock(&gate_mu);
}

static int gate_count(void) {
  int n;
  uv_mutex_lock(&gate_mu);
  n = gate_calls;
  uv_mutex_unlock(&gate_mu);
  return n;
}

static void gate_hook(void* arg) {
  ASSERT_EQ((intptr_t)&gate_entered, (intptr_t)arg);
  uv_mutex_lock(&gate_mu);
  gate_calls++;
  uv_mutex_unlock(&gate_mu);
  uv_sem_post(&gate_entered);
  uv_mutex_lock(&gate_mu);
  while (!gate_open)
    uv_cond_wait(&gate_cv, &gate_mu);
  uv_mutex_unlock(&gate_mu);
}

/* The writer is held in its first write, so the first line (45 bytes) keeps
 * the 64-byte queue busy: every later line is dropped at once. That all 1000
 * calls return while the writer is still held shows they never wait for
 * it. */
TEST_IMPL(log_dropping) {
  ath_log_config_t c;
  char path[256];
  ath_log_t* lg;
  char* text;
  int i;
  tmp_init();
  gate_init();
  config_for(&c, tmp_path(path, sizeof(path), "drop.log"), ATH_LOG_LOGFMT);
  c.queue_bytes = 64;
  c.before_write = gate_hook;
  c.before_write_arg = &gate_entered;
  lg = open_ok(&c);

  ath__log_write(lg, ATH_LOG_INFO, "a", NULL, 0);
  uv_sem_wait(&gate_entered); /* the writer holds line a */
  for (i = 0; i < 1000; i++)
    ath__log_write(lg, ATH_LOG_INFO, "b", NULL, 0);
  ASSERT_EQ(1, gate_count()); /* still held: no call waited for it */
  ASSERT_EQ(1000, ath__log_dropped(lg));

  gate_release();
  ath__log_close(lg);
  text = slurp(path, NULL);
  ASSERT_STR_EQ(text,
    "ts=" TS " level=info msg=a\n"
    "ts=" TS " level=warn msg=\"logger dropped 1000 lines\" dropped=1000\n");
  free(text);
  gate_destroy();
  tmp_cleanup();
  return 0;
}

/* A line larger than the whole queue is dropped even when the queue is
 * empty, and the idle writer reports it without waiting for close; the
 * report is written even when the level hides warnings. */
TEST_IMPL(log_drop_reported_when_idle) {
  ath_log_config_t c;
  char path[256];
  char big[200];
  ath_log_t* lg;
  char* text;
  tmp_init();
  gate_init();
  gate_release();
  config_for(&c, tmp_path(path, sizeof(path), "drop.log"), ATH_LOG_JSON);
  c.level = ATH_LOG_ERROR;
  c.queue_bytes = 64;
  c.before_write = gate_hook;
  c.before_write_arg = &gate_entered;
  lg = open_ok(&c);
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  ath__log_write(lg, ATH_LOG_ERROR, big, NULL, 0);
  ASSERT_EQ(1, ath__log_dropped(lg));
  uv_sem_wait(&gate_entered); /* the writer is writing the report */
  ath__log_close(lg);
  ASSERT_EQ(1, gate_count());
  text = slurp(path, NULL);
  ASSERT_STR_EQ(text,
    "{\"ts\":\"" TS "\",\"level\":\"warn\","
    "\"msg\":\"logger dropped 1 lines\",\"dropped\":1}\n");
  free(text);
  gate_destroy();
  tmp_cleanup();
  return 0;
}

/* A sink that fails (a pipe with no reader) costs lines, counted, and not
 * the process: SIGPIPE is not ignored here, as in a host that never set it
 * up. The writer tries the line (hook call 1), then, having counted it, the
 * report (hook call 2), which fails too and is not counted. */
TEST_IMPL(log_broken_pipe) {
  ath_log_config_t c;
  ath_log_t* lg;
  int fds[2], saved;
  ASSERT(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
  ASSERT_OK(pipe(fds));
  close(fds[0]);
  gate_init();
  gate_release();
  saved = stderr_swap(fds[1]);
  config_for(&c, NULL, ATH_LOG_LOGFMT);
  c.before_write = gate_hook;
  c.before_write_arg = &gate_entered;
  lg = open_ok(&c);
  write_one(lg);
  uv_sem_wait(&gate_entered);
  uv_sem_wait(&gate_entered);
  ASSERT_EQ(1, ath__log_dropped(lg));
  ath__log_close(lg);
  stderr_restore(saved);
  close(fds[1]);
  ASSERT_EQ(2, gate_count());
  gate_destroy();
  return 0;
}

/* ------------------------------------------------------------ bad config */

static void open_fails(const ath_log_config_t* c, const char* want) {
  ath_log_t* sentinel = (ath_log_t*)&gate_calls;
  ath_log_t* lg = sentinel;
  char err[256] = "";
  ASSERT_EQ(ATH_EINVAL, ath__log_open(c, &lg, err, sizeof(err)));
  ASSERT(lg == sentinel); /* untouched */
  if (strstr(err, want) == NULL) {
    fprintf(stderr, "error \"%s\" does not contain \"%s\"\n", err, want);
    abort();
  }
}

TEST_IMPL(log_bad_config) {
  ath_log_config_t c;
  char path[256], dir[256];
  ath_log_t* lg = NULL;
  tmp_init();

  config_for(&c, "/proc/nope/x", ATH_LOG_AUTO);
  open_fails(&c, "cannot open log file \"/proc/nope/x\": ");
  /* Nothing is created on the way: no missing directory, no file. */
  config_for(&c, tmp_path(path, sizeof(path), "missing/app.log"),
             ATH_LOG_AUTO);
  open_fails(&c, path);
  ASSERT_EQ(0, exists(tmp_path(dir, sizeof(dir), "missing")));
  config_for(&c, tmpdir, ATH_LOG_AUTO); /* a directory */
  open_fails(&c, tmpdir);
  config_for(&c, "", ATH_LOG_AUTO);
  open_fails(&c, "empty path");

  config_for(&c, NULL, ATH_LOG_AUTO);
  c.level = (ath_log_level_t)7;
  open_fails(&c, "log level 7");
  config_for(&c, NULL, (ath_log_format_t)9);
  open_fails(&c, "log format 9");
  config_for(&c, NULL, ATH_LOG_AUTO);
  c.max_size = 0;
  open_fails(&c, "maxSize");
  config_for(&c, NULL, ATH_LOG_AUTO);
  c.max_files = 0;
  open_fails(&c, "maxFiles must be between 1 and 1000, got 0");
  c.max_files = 1001;
  open_fails(&c, "got 1001");
  config_for(&c, NULL, ATH_LOG_AUTO);
  c.queue_bytes = 0;
  open_fails(&c, "queue");
  open_fails(NULL, "NULL");
  ASSERT_EQ(ATH_EINVAL, ath__log_open(&c, NULL, NULL, 0));
  /* No room for a message is fine. */
  c.queue_bytes = 0;
  ASSERT_EQ(ATH_EINVAL, ath__log_open(&c, &lg, NULL, 0));
  ASSERT_NULL(lg);

  /* The defaults are SEMANTICS §14.2's. */
  ath__log_config_init(&c);
  ASSERT_EQ(ATH_LOG_INFO, c.level);
  ASSERT_EQ(ATH_LOG_AUTO, c.format);
  ASSERT_NULL(c.file);
  ASSERT_EQ(10 * 1024 * 1024, c.max_size);
  ASSERT_EQ(5, c.max_files);
  ASSERT_EQ(1024 * 1024, c.queue_bytes);
  ASSERT_NULL(c.now_ms);
  ASSERT_NULL(c.before_write);

  /* Directory listing stays empty: no stray files from failed opens. */
  {
    DIR* d = opendir(tmpdir);
    struct dirent* e;
    int entries = 0;
    ASSERT_NOT_NULL(d);
    while ((e = readdir(d)) != NULL)
      entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    ASSERT_EQ(0, entries);
  }
  tmp_cleanup();
  return 0;
}

/* ------------------------------------------------------------ threads */

#define THREADS 4
#define PER_THREAD 10000
#define PAD "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghij"

static ath_log_t* shared_log;

static void thread_body(void* arg) {
  int t = (int)(intptr_t)arg, i;
  for (i = 0; i < PER_THREAD; i++) {
    ath_log_field_t f[] = {
      ATH_LOG_FINT("t", t),
      ATH_LOG_FINT("i", i),
      ATH_LOG_FSTR("pad", PAD),
    };
    ath__log_write(shared_log, ATH_LOG_INFO, "m", f, 3);
  }
}

/* Every line arrives whole and once, each thread's lines in its order. */
TEST_IMPL(log_threads) {
  ath_log_config_t c;
  char path[256];
  uv_thread_t th[THREADS];
  int next[THREADS] = {0};
  char* text;
  char* p;
  int t, lines = 0;
  tmp_init();
  config_for(&c, tmp_path(path, sizeof(path), "mt.log"), ATH_LOG_LOGFMT);
  c.queue_bytes = (size_t)64 << 20;
  c.max_size = (size_t)1 << 30;
  shared_log = open_ok(&c);
  for (t = 0; t < THREADS; t++)
    ASSERT_OK(uv_thread_create(&th[t], thread_body, (void*)(intptr_t)t));
  for (t = 0; t < THREADS; t++)
    ASSERT_OK(uv_thread_join(&th[t]));
  ASSERT_EQ(0, ath__log_dropped(shared_log));
  ath__log_close(shared_log);
  shared_log = NULL;

  text = slurp(path, NULL);
  ASSERT_NOT_NULL(text);
  for (p = text; *p != '\0'; lines++) {
    char want[256];
    char* nl = strchr(p, '\n');
    int i;
    ASSERT_NOT_NULL(nl);
    *nl = '\0';
    ASSERT_EQ(2, sscanf(p, "ts=" TS " level=info msg=m t=%d i=%d", &t, &i));
    ASSERT(t >= 0 && t < THREADS);
    ASSERT_EQ(next[t], i);
    next[t]++;
    snprintf(want, sizeof(want),
             "ts=" TS " level=info msg=m t=%d i=%d pad=" PAD, t, i);
    ASSERT_STR_EQ(p, want);
    p = nl + 1;
  }
  ASSERT_EQ(THREADS * PER_THREAD, lines);
  for (t = 0; t < THREADS; t++)
    ASSERT_EQ(PER_THREAD, next[t]);
  free(text);
  tmp_cleanup();
  return 0;
}
