#!/usr/bin/env bash
# pkg.luarocks: `luarocks make` of athena-<version>-1.rockspec into a
# temporary Lua 5.4 tree, then `require "athena"` and
# scripts/examples/quickstart.lua with a stock lua5.4 and only the paths that
# `luarocks path` gives. It builds a copy of the sources (so the source tree
# gets no build.luarocks/), with CMAKE_BUILD_PARALLEL_LEVEL = the machine's
# cores. Usage: tests/pkg/luarocks.sh SOURCE_DIR
set -euo pipefail
src=$(cd "${1:?usage: luarocks.sh SOURCE_DIR}" && pwd)
command -v luarocks >/dev/null || { echo "pkg.luarocks: luarocks is not installed (scripts/bootstrap)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
version=$(sed -n 's/^project(athena VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
rockspec="athena-$version-1.rockspec"
[ -f "$src/$rockspec" ] || { echo "pkg.luarocks: no $rockspec for the project's version $version" >&2; exit 1; }

mkdir "$tmp/src"
cp -r "$src/CMakeLists.txt" "$src/$rockspec" "$src/cmake" "$src/engine" "$src/bindings" \
  "$src/lua" "$src/assets" "$src/cli" "$tmp/src/"
tree="$tmp/tree"
start=$(date +%s)
(cd "$tmp/src" && CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  luarocks --lua-version 5.4 --tree "$tree" make "$rockspec" >"$tmp/make.log" 2>&1) || {
  cat "$tmp/make.log" >&2
  echo "pkg.luarocks: luarocks make failed" >&2
  exit 1
}
echo "pkg.luarocks: luarocks make took $(($(date +%s) - start)) s"

# Nothing but the tree: no LUA_PATH/LUA_CPATH of the caller (ctest's point at
# the source and build trees).
unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4
eval "$(luarocks --lua-version 5.4 --tree "$tree" path)"
cd "$tmp" # no lua/ directory here for ./?.lua to find

TREE="$tree" VERSION="$version" lua5.4 -e '
  local athena = require "athena"
  local tree = os.getenv("TREE")
  local function from_tree(what, path)
    local file = assert(package.searchpath(what, path), what .. " not found")
    assert(file:sub(1, #tree) == tree, what .. " loaded from " .. file .. ", not from the tree")
  end
  from_tree("athena", package.path)
  from_tree("athena.core", package.cpath)
  assert(athena.version == os.getenv("VERSION"), "version " .. athena.version)
  print("require \"athena\": " .. athena.version .. " from " .. package.searchpath("athena.core", package.cpath))
'
cp "$src/scripts/examples/quickstart.lua" "$tmp/quickstart.lua"
out=$(timeout 60 lua5.4 "$tmp/quickstart.lua")
echo "$out"
grep -q "hello, Athena" <<<"$out" || { echo "pkg.luarocks: quickstart printed no greeting" >&2; exit 1; }
echo "pkg.luarocks: ok"
