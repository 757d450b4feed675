/* The world's configuration, described once (SEMANTICS §2): each scalar
 * option's name as a user writes it, its kind, its field in
 * ath_world_config_t, its default and its range. ath_world_config_init
 * takes the defaults from here, ath_world_new checks the ranges against
 * it, the bindings read a Lua config table through it and hand it to the
 * Lua side, which validates user input with the same table
 * (core.configMap). Options with structure (taskQueues, modules, backend,
 * the gateway) are not scalars and are checked where they are read.
 * Not installed. */
#ifndef ATHENA_CONFIG_H
#define ATHENA_CONFIG_H

#include <stddef.h>
#include "athena.h"

typedef enum {
  ATH_CFG_INT,   /* int; min..max */
  ATH_CFG_COUNT, /* int64_t; min..max */
  ATH_CFG_MS,    /* int64_t milliseconds, a duration; >= min */
  ATH_CFG_NUM,   /* double; min..max */
  ATH_CFG_BOOL,  /* int 0/1 (negated: the field says the opposite) */
  ATH_CFG_STR,   /* const char*, non-empty, or NULL */
  ATH_CFG_ENUM,  /* int: the index of a name in `values`; min..max */
  ATH_CFG_BYTES  /* size_t; an integer or "64KB" "256MB" "1GB"; min..max */
} ath_cfg_kind_t;

typedef struct {
  const char* name;    /* "minWorkers", "log.level" */
  ath_cfg_kind_t kind;
  size_t offset;       /* of its field in ath_world_config_t */
  double def;          /* default: number, enum index, 0/1 */
  const char* sdef;    /* default of a string, or NULL */
  double min, max;     /* range (max 0: none) */
  const char* const* values; /* an enum's names by index (NULL: not nameable) */
  int negated;         /* BOOL: the field holds the negation */
  const char* rule;    /* what a valid value is, for error messages */
} ath_cfg_opt_t;

extern const ath_cfg_opt_t ath__config_map[];
extern const int ath__config_map_len;

/* The failure strategies' names by ath_strategy_t ("default" first), then
 * NULL. */
extern const char* const ath__strategy_names[];

/* Sets option o to the number v (a BOOL as the option reads; a string
 * option to its default). */
void ath__config_set(ath_world_config_t* cfg, const ath_cfg_opt_t* o, double v);
/* Sets every option of the map to its default. */
void ath__config_defaults(ath_world_config_t* cfg);
/* Checks every option of the map against its range, then the rules that
 * tie options together. Returns 0, or ATH_EINVAL with a message naming
 * the option in err. */
int ath__config_check(const ath_world_config_t* cfg, char* err, size_t errlen);
/* The option's value in cfg as a number (a BOOL as the option reads, not
 * as its field stores it; a string: 1 when set). */
double ath__config_value(const ath_world_config_t* cfg, const ath_cfg_opt_t* o);
/* The option named `name`, or NULL. */
const ath_cfg_opt_t* ath__config_find(const char* name);

#endif
