/* The world's options, described once (engine/runtime/config.c): the
 * defaults ath_world_config_init sets and the ranges ath_world_new checks
 * both come from the map, option by option. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "athena.h"
#include "config.h"
#include "task.h"

TEST_IMPL(config_map_defaults_and_ranges) {
  ASSERT(ath__config_map_len >= 20);
  char err[256];
  ath_world_config_t cfg;
  ath_world_config_init(&cfg);
  ASSERT_OK(ath__config_check(&cfg, err, sizeof(err)));
  for (int i = 0; i < ath__config_map_len; i++) {
    const ath_cfg_opt_t* o = &ath__config_map[i];
    ASSERT(ath__config_find(o->name) == o);
    if (o->kind == ATH_CFG_STR) {
      const char* s = *(const char* const*)((const char*)&cfg + o->offset);
      ASSERT(o->sdef == NULL ? s == NULL : s != NULL && strcmp(s, o->sdef) == 0);
      continue;
    }
    if (ath__config_value(&cfg, o) != o->def) {
      fprintf(stderr, "%s: default %g, map says %g\n", o->name, ath__config_value(&cfg, o), o->def);
      ASSERT(0);
    }
    if (o->kind == ATH_CFG_BOOL)
      continue;
    /* just below the range: refused, naming the option */
    double below = o->kind == ATH_CFG_NUM ? o->min - 0.01 : o->min - 1;
    if (o->kind != ATH_CFG_BYTES || o->min > 0) {
      ath_world_config_t c = cfg;
      ath__config_set(&c, o, below);
      if (!(o->kind == ATH_CFG_ENUM && below == o->def)) { /* log.format's unnamed default */
        ASSERT_EQ(ATH_EINVAL, ath__config_check(&c, err, sizeof(err)));
        if (strstr(err, o->name) == NULL)
          fprintf(stderr, "%s: %s\n", o->name, err);
        ASSERT(strstr(err, o->name) != NULL);
      }
    }
    if (o->max != 0) { /* just above */
      ath_world_config_t c = cfg;
      ath__config_set(&c, o, o->kind == ATH_CFG_NUM ? o->max + 0.01 : o->max + 1);
      ASSERT_EQ(ATH_EINVAL, ath__config_check(&c, err, sizeof(err)));
      ASSERT(strstr(err, o->name) != NULL);
    }
  }
  /* the rules that tie options together */
  ath_world_config_t c = cfg;
  c.min_workers = 5;
  c.max_workers = 4;
  ASSERT_EQ(ATH_EINVAL, ath__config_check(&c, err, sizeof(err)));
  ASSERT(strstr(err, "maxWorkers") != NULL);
  c = cfg;
  c.scale_down_threshold = c.scale_threshold;
  ASSERT_EQ(ATH_EINVAL, ath__config_check(&c, err, sizeof(err)));
  ASSERT(strstr(err, "scaleDownThreshold") != NULL);
  c = cfg;
  c.heartbeat_timeout_ms = c.heartbeat_interval_ms;
  ASSERT_EQ(ATH_EINVAL, ath__config_check(&c, err, sizeof(err)));
  ASSERT(strstr(err, "heartbeatTimeout") != NULL);
  /* and ath_world_new applies the same check */
  ath_world_t* w = NULL;
  ASSERT_EQ(ATH_EINVAL, ath_world_new(&c, &w, err, sizeof(err)));
  ASSERT(w == NULL);
  return 0;
}
