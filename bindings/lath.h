/* Declarations shared between binding files (module athena.core). */
#ifndef ATHENA_LATH_H
#define ATHENA_LATH_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include "athena.h"
#include "config.h"

/* An embedded Lua module (generated from lua/athena by cmake/embed.cmake). */
typedef struct {
  const char* name;    /* module name: "athena", "athena.errors" */
  const char* chunk;   /* chunk name for messages: "@athena/init.lua" */
  const char* source;
  size_t len;
} lath_source_t;
extern const lath_source_t lath_sources[];

/* l_core.c ---------------------------------------------------------------- */

/* [-0, +2, m] Pushes nil and an athena.Error {code, message} for `rc` with
 * `detail` (or the code's description) as message. Returns 2. */
int ath__pushfail(lua_State* L, int rc, const char* detail);
/* [-0, +1, m] Pushes an athena.Error table. */
void ath__pusherror(lua_State* L, int rc, const char* message);
/* [-0, +0, v] Raises an athena.Error of code `rc`: a wrong value (EINVAL)
 * or an unknown name (ENOTFOUND). */
int ath__raise(lua_State* L, int rc, const char* fmt, ...);
/* [-0, +0, v] Returns the duration at idx in ms (SEMANTICS §1.1) or raises
 * EINVAL "invalid <what>: <value> (a duration: ...)", `what` naming the
 * option or argument. */
int64_t ath__checkduration(lua_State* L, int idx, const char* what);
/* [-0, +0, v] Returns the strategy named at idx (nil: the default), or
 * raises EINVAL "invalid <what>: <value> (must be one of retry, ...)". */
ath_strategy_t ath__checkstrategy(lua_State* L, int idx, const char* what);
/* [-0, +0, m] Creates a class metatable `name` with `meta` functions and
 * `methods` as __index (or none), like liolib's createmeta; leaves the
 * methods table on the stack. */
void ath__newclass(lua_State* L, const char* name, const luaL_Reg* meta,
                   const luaL_Reg* methods);

/* l_http.c ---------------------------------------------------------------- */

int lath_open_http(lua_State* L); /* [-0, +1, m] pushes {request = f} */

/* l_workflow.c ------------------------------------------------------------ */

void lath_open_workflow(lua_State* L); /* [-0, +0, m] adds core.wf* to the table on top */

/* l_db.c ------------------------------------------------------------------ */

int lath_open_db(lua_State* L); /* [-0, +1, m] pushes {open, check, methods} */
/* [-0, +1, e] Pushes the worker state's own connection for `url` (ctx.db),
 * made on first use; it connects when first used (the runtime's push_db). */
void lath_db_push_ctx(lua_State* L, const char* url);

/* l_gwserve.c ------------------------------------------------------------- */

struct ath_gws_s;
/* [-0, +0, v] Builds the gateway server that `gateway` option at idx
 * describes (raises EINVAL for a bad configuration, or the error of a
 * database that cannot be read). */
int lath_gws_new(lua_State* L, int idx, ath_world_t* w, struct ath_gws_s** out);
struct ath_serve_opts_s;
/* [-0, +0, v] Reads world:serve's `auth` option at idx ({keys = {[key] =
 * {rights = ...}}}, rights ops.read / ops.write / *) into o's keys. */
int lath_serve_auth(lua_State* L, int idx, struct ath_serve_opts_s* o);

/* l_world.c --------------------------------------------------------------- */

/* l_backend.c: athena.Backend as a store provider. Made from the table at
 * idx ({module} or {persist, load} as bytecode, {config} as JSON; init.lua
 * checked them); NULL when out of memory. Freed with lath_backend_free
 * after the world that uses it. */
ath_store_provider_t* lath_backend_provider(lua_State* L, int idx, size_t mem_limit);
/* The package.path/cpath its state gets (at start, as workers). */
int lath_backend_paths(ath_store_provider_t* p, const char* lua_path, const char* lua_cpath);
/* Its authorizer (authorize), or NULL when it has none. */
const ath_authorizer_t* lath_backend_authorizer(ath_store_provider_t* p);
/* Its event sink (stream), or NULL when it has none. */
const ath_event_sink_t* lath_backend_sink(ath_store_provider_t* p);
void lath_backend_free(ath_store_provider_t* p);

int lath_open_world(lua_State* L);  /* [-0, +0, m] registers the classes */
int lath_world_new(lua_State* L);   /* core.newWorld(cfg) */
/* [-0, +1, m] Pushes core.configMap: the world's options (config.c). */
void lath_push_config_map(lua_State* L);
/* [-0, +0, v] The world at idx; raises if it is closed or not one. */
ath_world_t* lath_checkworld(lua_State* L, int idx);

/* l_ops.c ----------------------------------------------------------------- */

int lath_open_ops(lua_State* L); /* [-0, +1, m] pushes {lockStore, isatty, progressWatch} */
/* Takes a world off the --progress line; world_close calls it before it
 * frees the world. Thread: any. */
void lath_progress_forget(ath_world_t* w);
/* Draws the line a last time (with a newline) and joins its thread, if it
 * runs; the `athena` executable calls it before closing its state. */
void lath_progress_stop(void);

#endif
