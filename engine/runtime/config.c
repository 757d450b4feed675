/* The world's scalar options, described once (config.h). */
#include <stdio.h>
#include <string.h>
#include "config.h"
#include "internal.h"

const char* const ath__strategy_names[] = {"default", "retry", "cascade", "compensate",
                                           "ignore", "quarantine", NULL};
static const char* const persistence_names[] = {"memory", "file", "hybrid", NULL};
static const char* const clock_names[] = {"system", "manual", NULL};
static const char* const level_names[] = {"debug", "info", "warn", "error", NULL};
/* 0 is the automatic choice (pretty on a terminal, else logfmt): no name */
static const char* const format_names[] = {"auto", "logfmt", "json", "pretty", NULL};

#define WORKERS_RULE "an integer, 1 <= minWorkers <= maxWorkers <= 1024"
#define F(field) offsetof(ath_world_config_t, field)
#define KIB 1024.0
#define MIB (1024.0 * 1024.0)

/* name, kind, field, default, string default, min, max, enum names, negated, rule */
#define ATH_CONFIG_MAP(X)                                                                            \
  X("minWorkers", ATH_CFG_INT, min_workers, 2, NULL, 1, MAX_WORKERS, NULL, 0, WORKERS_RULE)          \
  X("maxWorkers", ATH_CFG_INT, max_workers, 10, NULL, 1, MAX_WORKERS, NULL, 0, WORKERS_RULE)         \
  X("scaleThreshold", ATH_CFG_NUM, scale_threshold, 0.7, NULL, 0, 1, NULL, 0, "a number in [0, 1]") \
  X("scaleDownThreshold", ATH_CFG_NUM, scale_down_threshold, 0.3, NULL, 0, 1, NULL, 0,              \
    "a number in [0, 1], below scaleThreshold")                                                      \
  X("scaleInterval", ATH_CFG_MS, scale_interval_ms, 10000, NULL, 1, 0, NULL, 0, "a duration > 0")    \
  X("persistence", ATH_CFG_ENUM, persistence, ATH_PERSIST_HYBRID, NULL, 0, 2, persistence_names, 0,  \
    "memory, file or hybrid")                                                                        \
  X("persistencePath", ATH_CFG_STR, persistence_path, 0, ".athena", 0, 0, NULL, 0,                   \
    "a non-empty string")                                                                            \
  X("flushInterval", ATH_CFG_MS, flush_interval_ms, 50, NULL, 1, 0, NULL, 0, "a duration > 0")       \
  X("retention", ATH_CFG_MS, retention_ms, 7 * 86400000.0, NULL, 1, 0, NULL, 0, "a duration > 0")    \
  X("retain.terminal", ATH_CFG_COUNT, retain_terminal, 10000, NULL, 0, 0, NULL, 0,                   \
    "an integer >= 0")                                                                               \
  X("failureStrategy", ATH_CFG_ENUM, failure_strategy, ATH_STRATEGY_RETRY, NULL, 1, 5,               \
    ath__strategy_names, 0, "retry, cascade, compensate, ignore or quarantine")                      \
  X("heartbeatInterval", ATH_CFG_MS, heartbeat_interval_ms, 5000, NULL, 1, 0, NULL, 0,               \
    "a duration > 0")                                                                                \
  X("heartbeatTimeout", ATH_CFG_MS, heartbeat_timeout_ms, 30000, NULL, 1, 0, NULL, 0,                \
    "a duration > heartbeatInterval")                                                                \
  X("cancelGrace", ATH_CFG_MS, cancel_grace_ms, 5000, NULL, 0, 0, NULL, 0, "a duration")             \
  X("memoryLimit", ATH_CFG_BYTES, memory_limit, 256 * MIB, NULL, MIB, 0, NULL, 0,                    \
    "at least 1MB: bytes, or \"64KB\" \"256MB\" \"1GB\"")                                            \
  X("workflowCache", ATH_CFG_INT, workflow_cache, 10000, NULL, 0, 1000000, NULL, 0,                \
    "an integer 0-1000000")                                                                          \
  X("clock", ATH_CFG_ENUM, manual_clock, 0, NULL, 0, 1, clock_names, 0, "system or manual")         \
  X("collectMetrics", ATH_CFG_BOOL, no_metrics, 1, NULL, 0, 1, NULL, 1, "a boolean")                 \
  X("log.level", ATH_CFG_ENUM, log_level, 1, NULL, 0, 3, level_names, 0,                            \
    "debug, info, warn or error")                                                                    \
  X("log.format", ATH_CFG_ENUM, log_format, 0, NULL, 1, 3, format_names, 0,                         \
    "logfmt, json or pretty")                                                                        \
  X("log.file", ATH_CFG_STR, log_file, 0, NULL, 0, 0, NULL, 0, "a path")                             \
  X("log.maxSize", ATH_CFG_BYTES, log_max_size, 10 * MIB, NULL, 1, 0, NULL, 0,                      \
    "bytes > 0, or \"10MB\"")                                                                        \
  X("log.maxFiles", ATH_CFG_INT, log_max_files, 5, NULL, 1, 1000, NULL, 0, "an integer, 1-1000")

#define ENTRY(name, kind, field, def, sdef, min, max, values, neg, rule) \
  {name, kind, F(field), def, sdef, min, max, values, neg, rule},
const ath_cfg_opt_t ath__config_map[] = {ATH_CONFIG_MAP(ENTRY)};
#undef ENTRY
const int ath__config_map_len = (int)(sizeof(ath__config_map) / sizeof(ath__config_map[0]));

const ath_cfg_opt_t* ath__config_find(const char* name) {
  for (int i = 0; i < ath__config_map_len; i++)
    if (strcmp(ath__config_map[i].name, name) == 0)
      return &ath__config_map[i];
  return NULL;
}

double ath__config_value(const ath_world_config_t* cfg, const ath_cfg_opt_t* o) {
  const char* p = (const char*)cfg + o->offset;
  switch (o->kind) {
  case ATH_CFG_INT:
  case ATH_CFG_ENUM:
    return *(const int*)p;
  case ATH_CFG_BOOL:
    return o->negated ? !*(const int*)p : *(const int*)p;
  case ATH_CFG_COUNT:
  case ATH_CFG_MS:
    return (double)*(const int64_t*)p;
  case ATH_CFG_NUM:
    return *(const double*)p;
  case ATH_CFG_BYTES:
    return (double)*(const size_t*)p;
  case ATH_CFG_STR:
    return *(const char* const*)p != NULL;
  }
  return 0;
}

void ath__config_set(ath_world_config_t* cfg, const ath_cfg_opt_t* o, double v) {
  char* p = (char*)cfg + o->offset;
  switch (o->kind) {
  case ATH_CFG_INT:
  case ATH_CFG_ENUM:
    *(int*)p = (int)v;
    break;
  case ATH_CFG_BOOL:
    *(int*)p = o->negated ? !(int)v : (int)v;
    break;
  case ATH_CFG_COUNT:
  case ATH_CFG_MS:
    *(int64_t*)p = (int64_t)v;
    break;
  case ATH_CFG_NUM:
    *(double*)p = v;
    break;
  case ATH_CFG_BYTES:
    *(size_t*)p = (size_t)v;
    break;
  case ATH_CFG_STR:
    *(const char**)p = o->sdef;
    break;
  }
}

void ath__config_defaults(ath_world_config_t* cfg) {
  for (int i = 0; i < ath__config_map_len; i++)
    ath__config_set(cfg, &ath__config_map[i], ath__config_map[i].def);
}

int ath__config_check(const ath_world_config_t* cfg, char* err, size_t errlen) {
  const char* bad = NULL;
  for (int i = 0; i < ath__config_map_len && bad == NULL; i++) {
    const ath_cfg_opt_t* o = &ath__config_map[i];
    double v = ath__config_value(cfg, o);
    if (o->kind == ATH_CFG_STR)
      continue; /* any string, or none */
    if (o->kind == ATH_CFG_ENUM && o->def < o->min && v == o->def)
      continue; /* the unnamed default (log.format's automatic choice) */
    if (!(v >= o->min) || (o->max != 0 && v > o->max))
      bad = o->name;
    if (bad != NULL)
      snprintf(err, errlen, "invalid %s (%s)", o->name, o->rule);
  }
  if (bad != NULL)
    return ATH_EINVAL;
  /* the rules that tie options together */
  if (cfg->max_workers < cfg->min_workers)
    bad = "maxWorkers (" WORKERS_RULE ")";
  else if (cfg->scale_down_threshold >= cfg->scale_threshold)
    bad = "scaleDownThreshold (must be < scaleThreshold)";
  else if (cfg->heartbeat_timeout_ms <= cfg->heartbeat_interval_ms)
    bad = "heartbeatTimeout (must be > heartbeatInterval)";
  if (bad != NULL)
    snprintf(err, errlen, "invalid %s", bad);
  return bad == NULL ? 0 : ATH_EINVAL;
}
