/* The payload codec as a Lua module (engine/runtime/lua_json.c does the work). */
#ifndef ATHENA_L_JSON_H
#define ATHENA_L_JSON_H

#include <lua.h>

/* [-0, +1, m] Pushes a new table { encode = f, decode = f }; registers
 * nothing globally.
 *   encode(v [, root]) -> string; raises {code = "EINVAL", message = ...}
 *     when v is not a payload (SEMANTICS §1.3). `root` (default "value")
 *     starts the path in the message: "value.user.cb: function not
 *     serializable".
 *   decode(s) -> v | nil, {code = "EINVAL", message = ...}; s must be a
 *     string (else the usual "bad argument" error). JSON null gives nil.
 * Error tables have no metatable yet. */
int lath_open_json(lua_State* L);

#endif
