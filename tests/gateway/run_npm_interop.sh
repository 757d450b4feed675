#!/usr/bin/env bash
# tests/gateway/run_npm_interop.sh ATHENA_BINARY sqlite|pg [PG_URL_FILE]
#
# The published npm client @xylex-group/athena 0.2.1 against `athena serve`
# (GATEWAY.md §8 fixture), driven by tests/gateway/npm_interop.mjs:
#   1. npm-installs the package into a temporary directory (no npm or no
#      network is a failure, never a skip);
#   2. creates the fixture database: a new SQLite file (sqlite3 CLI), or,
#      for pg, a database of its own (athena_npm_interop) on the server whose
#      URL PG_URL_FILE holds (default $ATHENA_PG_URL_FILE; ctest fixture
#      "pg"), so that no other spec's tables are touched;
#   3. writes the gateway config (keys K = "*", R = gateway.fetch; tables
#      users, kv) and starts `athena serve --port 0 --persistence memory`,
#      waiting (with a deadline) for its "serving http://..." line;
#   4. runs the node script from the install directory;
#   5. stops the server with SIGTERM (also on failure, by a trap) and
#      removes what it created.
set -euo pipefail

usage() { echo "usage: $0 ATHENA_BINARY sqlite|pg [PG_URL_FILE]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
athena_bin=$1
backend=$2
pg_url_file=${3:-${ATHENA_PG_URL_FILE:-}}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=$here/npm_interop.mjs

die() { echo "run_npm_interop: $*" >&2; exit 1; }
# psql, quiet, stopping at the first error; no NOTICEs for IF EXISTS (set
# for psql only: libpq in the server would read PGOPTIONS too)
pgsql() { PGOPTIONS="-c client_min_messages=warning" psql "$@" -v ON_ERROR_STOP=1 -q; }

[ -x "$athena_bin" ] || die "no athena binary at $athena_bin"
athena_bin=$(cd "$(dirname "$athena_bin")" && pwd)/$(basename "$athena_bin")
case "$backend" in sqlite | pg) ;; *) usage ;; esac
command -v node >/dev/null || die "node is not installed (scripts/bootstrap --test installs it)"
command -v npm >/dev/null || die "npm is not installed (scripts/bootstrap --test installs it)"

work=$(mktemp -d /tmp/athena-npm.XXXXXX)
server_pid=""
pg_admin_url=""
pg_db=athena_npm_interop

cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # a bounded wait for the graceful shutdown, then SIGKILL
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      echo "run_npm_interop: the server ignored SIGTERM for 10 s; killing it" >&2
      kill -KILL "$server_pid" 2>/dev/null || true
      rc=1
    fi
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ] && [ -f "$work/server.log" ]; then
    echo "---- athena serve log ----" >&2
    cat "$work/server.log" >&2
  fi
  if [ -n "$pg_admin_url" ]; then
    pgsql "$pg_admin_url" \
      -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. the published package ----------------------------------------
echo "run_npm_interop: installing @xylex-group/athena@0.2.1 into $work/npm"
mkdir -p "$work/npm"
(
  cd "$work/npm"
  echo '{"name":"athena-npm-interop","version":"0.0.0","private":true}' >package.json
  npm install --no-audit --no-fund --no-save --loglevel=error @xylex-group/athena@0.2.1
) || die "npm install @xylex-group/athena@0.2.1 failed (npm registry unreachable?)"
[ -f "$work/npm/node_modules/@xylex-group/athena/package.json" ] ||
  die "npm install left no @xylex-group/athena in $work/npm/node_modules"

# ---- 2. the fixture database --------------------------------------------
case "$backend" in
  sqlite)
    command -v sqlite3 >/dev/null || die "the sqlite3 CLI is not installed"
    db_file=$work/fixture.db
    sqlite3 -bail "$db_file" <<'SQL' || die "cannot create the SQLite fixture"
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, age INTEGER, active BOOLEAN);
INSERT INTO users VALUES (1,'Frodo','frodo@shire',50,1), (2,'Bilbo','bilbo@shire',111,1), (3,'Sam',NULL,38,0);
CREATE TABLE kv(id INTEGER PRIMARY KEY, big INTEGER, bin BLOB, doc JSON);
INSERT INTO kv VALUES (1, 9007199254740993, x'00ff', '{"a":[1,2]}');
CREATE TABLE secrets(id INTEGER);
SQL
    db_url=sqlite:$db_file
    ;;
  pg)
    command -v psql >/dev/null || die "psql is not installed"
    [ -n "$pg_url_file" ] || die "pg needs the URL file (argument 3 or ATHENA_PG_URL_FILE)"
    [ -s "$pg_url_file" ] || die "no PostgreSQL URL in $pg_url_file (did the pg fixture start?)"
    base_url=$(head -n 1 "$pg_url_file")
    # the same server and credentials, another database: postgres://u:p@h:port/DB[?query]
    query=""
    case "$base_url" in *\?*) query="?${base_url#*\?}" ;; esac
    no_query=${base_url%%\?*}
    authority_path=${no_query#*://}
    case "$authority_path" in */*) ;; *) die "cannot find the database name in the URL from $pg_url_file" ;; esac
    pg_admin_url=$base_url
    db_url="${no_query%/*}/$pg_db$query"
    pgsql "$pg_admin_url" \
      -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" \
      -c "CREATE DATABASE $pg_db" >/dev/null || die "cannot create the database $pg_db"
    pgsql "$db_url" <<'SQL' >/dev/null || die "cannot create the PostgreSQL fixture"
DROP TABLE IF EXISTS users, kv, secrets;
CREATE TABLE users(id bigint PRIMARY KEY, name text NOT NULL, email text UNIQUE, age bigint, active boolean);
INSERT INTO users VALUES (1,'Frodo','frodo@shire',50,true), (2,'Bilbo','bilbo@shire',111,true), (3,'Sam',NULL,38,false);
CREATE TABLE kv(id bigint PRIMARY KEY, big bigint, bin bytea, doc jsonb);
INSERT INTO kv VALUES (1, 9007199254740993, '\x00ff', '{"a":[1,2]}');
CREATE TABLE secrets(id bigint);
SQL
    ;;
esac

# ---- 3. the server ----------------------------------------------------------
key=K
read_key=R
cat >"$work/gateway.lua" <<'LUA'
return { keys = { K = { rights = "*" }, R = { rights = { "gateway.fetch" } } }, tables = { "users", "kv" } }
LUA

# its own working directory: nothing lands in the caller's
mkdir -p "$work/run"
: >"$work/server.log"
(cd "$work/run" && exec "$athena_bin" serve --db "$db_url" --config "$work/gateway.lua" \
  --port 0 --persistence memory --path "$work/run/.athena") \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!

base=""
deadline=$((SECONDS + 30))
while [ -z "$base" ]; do
  base=$(sed -n 's/^athena: info: serving \(http:\/\/[^ ]*\).*/\1/p' "$work/server.log" | head -n 1)
  [ -n "$base" ] && break
  kill -0 "$server_pid" 2>/dev/null || { wait "$server_pid" || true; server_pid=""; die "athena serve exited before serving"; }
  [ $SECONDS -lt $deadline ] || die "athena serve printed no 'serving http://...' line within 30 s"
  sleep 0.05
done
base=${base%/}
echo "run_npm_interop: athena serve ($backend) at $base, pid $server_pid"

# ---- 4. the client ------------------------------------------------------------
(
  cd "$work/npm"
  NODE_PATH=$work/npm/node_modules ATHENA_NPM_PREFIX=$work/npm \
    node "$script" "$base" "$key" "$read_key"
)
echo "run_npm_interop: $backend passed"
