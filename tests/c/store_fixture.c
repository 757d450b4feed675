/* store_fixture.h */
#include "store_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "task.h"

void store_fixture_setup(store_fixture_t* f, const char* tag, const char* module, const char* lua_src) {
  memset(f, 0, sizeof(*f));
  snprintf(f->dir, sizeof(f->dir), "/tmp/athena-%s-%d", tag, (int)getpid());
  snprintf(f->module, sizeof(f->module), "%s", module);
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", f->dir, f->dir);
  ASSERT_OK(system(cmd));
  char file[512];
  snprintf(file, sizeof(file), "%s/%s.lua", f->dir, module);
  FILE* fp = fopen(file, "w");
  ASSERT_NOT_NULL(fp);
  fputs(lua_src, fp);
  fclose(fp);
  snprintf(f->lua_path, sizeof(f->lua_path), "%s/?.lua;;", f->dir);
  snprintf(f->store_path, sizeof(f->store_path), "%s/store", f->dir);
  snprintf(f->log_path, sizeof(f->log_path), "%s/athena.log", f->dir);
}

void store_fixture_teardown(const store_fixture_t* f) {
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
  ASSERT_OK(system(cmd));
}

int store_fixture_world(const store_fixture_t* f, int mode, const char* const* names, size_t n,
                        ath_world_t** out, char* err, size_t errlen) {
  const char* modules[] = {f->module, NULL};
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  cfg.min_workers = cfg.max_workers = 2;
  cfg.persistence = mode;
  cfg.persistence_path = f->store_path;
  cfg.modules = modules; /* copied by ath_world_new */
  cfg.lua_path = f->lua_path;
  cfg.log_file = f->log_path;
  ath_world_t* w = NULL;
  int rc = ath_world_new(&cfg, &w, err, errlen);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    ath_activity_t a;
    ath_activity_init(&a, names[i]);
    rc = ath_world_register(w, &a);
  }
  return store_fixture_start(w, rc, out, err, errlen);
}

int store_fixture_start(ath_world_t* w, int rc, ath_world_t** out, char* err, size_t errlen) {
  if (rc == 0)
    rc = ath_world_start(w, err, errlen);
  if (rc != 0 && w != NULL)
    ath_world_free(w);
  *out = rc == 0 ? w : NULL;
  return rc;
}

char* store_fixture_dup(const char* p, size_t n) {
  if (p == NULL)
    return NULL;
  char* c = malloc(n + 1);
  if (c == NULL)
    abort();
  memcpy(c, p, n);
  c[n] = '\0';
  return c;
}
