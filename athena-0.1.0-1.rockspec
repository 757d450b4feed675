-- `luarocks make` from the source tree builds the Lua module (athena.core,
-- the engine in C, and lua/athena/*.lua) with CMake and installs it into a
-- Lua 5.4 tree:
--   luarocks --lua-version 5.4 --tree DIR make       (CMAKE_BUILD_PARALLEL_LEVEL=N for -jN)
-- The build needs the packages of scripts/bootstrap (docs/operations.md).
-- The version is the project's (CMakeLists.txt); pkg.luarocks checks it.
rockspec_format = "3.0"
package = "athena"
version = "0.1.0-1"
source = {
  url = "git+file://.", -- `luarocks make` builds the tree it runs in
}
description = {
  summary = "A job runtime in C scripted in Lua 5.4: workers, retries, timeouts, SQLite persistence, cron, a database gateway",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    ATHENA_LUA_MODULE_ONLY = "ON",
    LUA_LMOD_DIR = "$(LUADIR)",
    LUA_CMOD_DIR = "$(LIBDIR)",
  },
}
