/* A plain driver for tests/fuzz/cron_fuzz.c without libFuzzer: runs
 * LLVMFuzzerTestOneInput once on every file named on the command line and on
 * every regular file in each directory named there (not recursive), so gcc
 * can build the seed corpus into an ordinary test:
 *
 *   gcc -std=c11 -g -O1 -Iengine/include -Iengine/runtime \
 *       engine/runtime/cron.c tests/fuzz/cron_fuzz.c tests/fuzz/cron_corpus_main.c -o cron_corpus
 *   ./cron_corpus tests/fuzz/corpus/cron
 *
 * An invariant violation aborts (non-zero exit) after printing the
 * expression. Exit 0 prints "cron corpus: N inputs, 0 failed". */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* setenv, gmtime_r, localtime_r, stat */
#endif
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int* argc, char*** argv);
int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

static long g_count;

static int run_file(const char* path) {
  FILE* f = fopen(path, "rb");
  uint8_t* buf;
  long n;
  size_t got;
  if (f == NULL) {
    perror(path);
    return 1;
  }
  if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    perror(path);
    fclose(f);
    return 1;
  }
  buf = malloc((size_t)n + 1);
  if (buf == NULL) {
    fclose(f);
    return 1;
  }
  got = fread(buf, 1, (size_t)n, f);
  fclose(f);
  if (got != (size_t)n) {
    fprintf(stderr, "%s: short read\n", path);
    free(buf);
    return 1;
  }
  LLVMFuzzerTestOneInput(buf, got);
  free(buf);
  g_count++;
  return 0;
}

static int run_path(const char* path) {
  struct stat st;
  DIR* d;
  struct dirent* e;
  int rc = 0;
  if (stat(path, &st) != 0) {
    perror(path);
    return 1;
  }
  if (!S_ISDIR(st.st_mode))
    return run_file(path);
  d = opendir(path);
  if (d == NULL) {
    perror(path);
    return 1;
  }
  while ((e = readdir(d)) != NULL) {
    char full[4096];
    struct stat fs;
    if (e->d_name[0] == '.')
      continue;
    snprintf(full, sizeof full, "%s/%s", path, e->d_name);
    if (stat(full, &fs) == 0 && S_ISREG(fs.st_mode))
      rc |= run_file(full);
  }
  closedir(d);
  return rc;
}

int main(int argc, char** argv) {
  int rc = 0, i;
  if (argc < 2) {
    fprintf(stderr, "usage: %s corpus-dir-or-file...\n", argv[0]);
    return 2;
  }
  LLVMFuzzerInitialize(&argc, &argv);
  for (i = 1; i < argc; i++)
    rc |= run_path(argv[i]);
  if (g_count == 0) {
    fprintf(stderr, "cron corpus: no inputs\n");
    return 1;
  }
  printf("cron corpus: %ld inputs, %d failed\n", g_count, rc ? 1 : 0);
  return rc;
}
