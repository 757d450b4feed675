/* What the store fault and power-loss tests share: a temporary directory
 * holding a Lua module of activities, and a world with a store there. */
#ifndef ATHENA_TEST_STORE_FIXTURE_H
#define ATHENA_TEST_STORE_FIXTURE_H

#include <stddef.h>
#include "athena.h"

typedef struct {
  char dir[256];        /* /tmp/athena-<tag>-<pid>, removed by teardown */
  char lua_path[512];   /* finds the module in dir */
  char store_path[512]; /* <dir>/store: persistencePath */
  char log_path[512];   /* <dir>/athena.log: the world's log */
  char module[64];
} store_fixture_t;

/* Creates the directory and writes `lua_src` to <dir>/<module>.lua. */
void store_fixture_setup(store_fixture_t* f, const char* tag, const char* module, const char* lua_src);
void store_fixture_teardown(const store_fixture_t* f);
/* A started world with 2 workers and persistence `mode` on the fixture's
 * store, the activities `names` registered. Returns 0 or the error of
 * ath_world_new/register/start (err set). */
int store_fixture_world(const store_fixture_t* f, int mode, const char* const* names, size_t n,
                        ath_world_t** out, char* err, size_t errlen);

/* Starts w (made and defined by the caller, rc its result so far): on
 * any failure w is freed and *out NULL. Returns the first error. */
int store_fixture_start(ath_world_t* w, int rc, ath_world_t** out, char* err, size_t errlen);
/* A NUL-terminated malloc'd copy of p[0..n) (NULL for NULL); aborts the
 * process when out of memory. */
char* store_fixture_dup(const char* p, size_t n);

#endif
