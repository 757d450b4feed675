#!/usr/bin/env bash
# Refusal benchmark (issue 13): bench/refusals.sh [repo-root] [build-dir]
#
# Starts world:serve with a gateway on a fresh SQLite database (lua5.4 with the
# tree's Lua modules and C module) and measures what unauthenticated clients
# cost the server:
#   cost   wrk (1 thread, 16 connections, 4 s) POST /gateway/fetch with a
#          valid key (200), with no key while failures are not limited (401),
#          and with no key once locked out (429): req/s and the server's CPU
#          time per request (utime + stime from /proc over the requests).
#          A refusal should cost less than a fetch.
#   flood  200 connections each send a 1 MB POST /gateway/insert without a key:
#          whole (answered 401), then all but the last byte (held unfinished):
#          the server's RSS before, with the connections open, and 2 s after
#          they close, and how many connections the server shut down
#          (maxBuffered, default 64 MB).
# Needs wrk, python3 and curl (scripts/bootstrap --test).
set -euo pipefail
root=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
build=$(cd "${2:-$root/build}" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/server.lua" <<'LUA'
local athena = require "athena"
local dir = os.getenv("DIR")
local db = assert(athena.db.open("sqlite:" .. dir .. "/b.db"))
assert(db:exec("CREATE TABLE IF NOT EXISTS users(id INTEGER PRIMARY KEY, name TEXT)"))
assert(db:exec("INSERT OR REPLACE INTO users VALUES (1, 'a')"))
db:close()
local w = athena.World.new { persistence = "memory" }
w:start()
local s = w:serve { port = 0, gateway = { db = "sqlite:" .. dir .. "/b.db", keys = { K = { rights = "*" } },
  tables = { "users" }, rateLimits = { key = { rate = 1e9, burst = 1e9 }, ip = { rate = 1e9, burst = 1e9 },
  authFailures = tonumber(os.getenv("FAILS")) } } }
io.stdout:write(s.url, "\n")
io.stdout:flush()
os.execute("sleep 30")
LUA
cat > "$tmp/fetch.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"table_name":"users"}'
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("KEY")
if key and key ~= "" then wrk.headers["apikey"] = key end
LUA
cat > "$tmp/flood.py" <<'PY'
import select, socket, sys, time
port, pid, n, short = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rss():
    for l in open("/proc/%d/status" % pid):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
before = rss()
body = b"x" * 1000000
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"POST /gateway/insert HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body[:len(body) - short])
    except OSError:
        pass
    conns.append(s)
time.sleep(1)
held = rss()
ready, _, _ = select.select(conns, [], [], 0)
shut = 0
for s in ready:
    try:
        d = s.recv(12)
    except OSError:
        d = b""
    shut += d == b""
for s in conns: s.close()
time.sleep(2)
print("%s: RSS %d MB before, %d MB with the connections open (%d shut down by the server), %d MB 2 s after they closed"
      % ("unfinished bodies" if short else "whole bodies, answered 401", before, held, shut, rss()))
PY

start() { # FAILS
  export DIR=$(mktemp -d -p "$tmp")
  LUA_PATH="$root/lua/?.lua;$root/lua/?/init.lua;;" LUA_CPATH="$build/lib/lua/?.so;;" FAILS=$1 \
    lua5.4 "$tmp/server.lua" > "$DIR/out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do [ -s "$DIR/out" ] && break; sleep 0.1; done
  url=$(head -1 "$DIR/out")
}
cost() { # label key fails
  start "$3"
  local t0 t1 n
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  KEY=$2 wrk -t1 -c16 -d4s -s "$tmp/fetch.lua" "$url/gateway/fetch" > "$DIR/wrk" 2>&1
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  n=$(awk '/requests in/ {print $1}' "$DIR/wrk")
  printf '%-12s status %s  %s  server CPU %s us/request\n' "$1" \
    "$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' ${2:+-H "apikey: $2"} \
       -d '{"table_name":"users"}' "$url/gateway/fetch")" \
    "$(grep Requests/sec "$DIR/wrk")" "$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')"
  kill $pid
}
flood() { # short
  start 1000000000
  python3 "$tmp/flood.py" "${url##*:}" $pid 200 "$1"
  kill $pid
}
cost "fetch" K 10
cost "no key 401" "" 1000000000
cost "no key 429" "" 10
flood 0
flood 1
