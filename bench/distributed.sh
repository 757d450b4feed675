#!/usr/bin/env bash
# bench/distributed.sh: the PostgreSQL backend's throughput with 3 athena
# processes (tests/dist/node.lua) on one durable PostgreSQL (fsync on),
# no-op tasks (README "Performance", docs/backend-postgres.md).
#   processed:  N tasks enqueued first, then the 3 nodes start; N / the time
#               from their start until the last row completed
#   end to end: the 3 nodes running, a controller enqueues N (executeMany,
#               1,000 per call) and waits for every result
#   latency:    one task at a time, execute -> result across nodes (500)
# GRAPHILE=1: then the same two runs with graphile-worker 0.17 on the same
# server (bench/graphile_bench.js; 3 worker processes, concurrency 24,
# localQueue 500, batched completions; npm installs it into a temporary
# directory, so it needs node, npm and the npm registry).
# usage: bench/distributed.sh [N] [ATHENA_BIN]   (N = 100000; the server is
# started with scripts/pg-test and ATHENA_PG_DURABLE=1 unless ATHENA_PG_URL is set)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-100000}
bin=${2:-$root/build/athena}
work=$(mktemp -d /tmp/athena-bench.XXXXXX)
pids=()
own_pg=0
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ $own_pg = 1 ] && "$root/scripts/pg-test" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${ATHENA_PG_URL:-}" ]; then
  ATHENA_PG_DURABLE=1 "$root/scripts/pg-test" start "$work/pg" >/dev/null
  own_pg=1
  ATHENA_PG_URL=$(cat "$work/pg/url")
fi
export ATHENA_PG_URL
export LUA_PATH="$root/tests/dist/?.lua;$root/bench/?.lua;$root/lua/?.lua;$root/lua/?/init.lua;;"
export DIST_CONC=${DIST_CONC:-64} DIST_WORKERS=${DIST_WORKERS:-1} DIST_LOGLEVEL=warn
nodes() {
  for n in a b c; do
    DIST_NODE=$n "$bin" "$root/tests/dist/node.lua" >"$work/$n.out" 2>"$work/$n.err" </dev/null &
    pids+=($!)
  done
}
stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do # up to 5 s for a graceful exit, then SIGKILL
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}

echo "== processed ($N tasks queued, then 3 nodes)"
export DIST_SCHEMA=bench_p_$$
"$bin" "$root/bench/dist_bench.lua" enqueue "$N"
DIST_T0=$(date +%s%3N)
export DIST_T0
nodes
"$bin" "$root/bench/dist_bench.lua" wait "$N"
stop_nodes

echo "== end to end (3 nodes running, $N tasks enqueued and awaited)"
export DIST_SCHEMA=bench_e_$$
nodes
for n in a b c; do
  for _ in $(seq 200); do grep -q started "$work/$n.out" 2>/dev/null && break; sleep 0.1; done
done
"$bin" "$root/bench/dist_bench.lua" e2e "$N"
echo "== latency (the same 3 nodes, 500 tasks one at a time)"
"$bin" "$root/bench/dist_bench.lua" latency 500 | grep cross-node
stop_nodes

if [ "${GRAPHILE:-0}" = 1 ]; then
  (cd "$work" && npm install --silent --no-audit --no-fund --prefix "$work/gw" graphile-worker@0.17 >/dev/null)
  export NODE_PATH=$work/gw/node_modules
  gw() { node "$root/bench/graphile_bench.js" "$@"; }
  gw_workers() {
    for n in 1 2 3; do node "$root/bench/graphile_bench.js" worker >"$work/gw$n.log" 2>&1 & pids+=($!); done
  }
  echo "== graphile-worker 0.17: processed ($N jobs queued, then 3 workers)"
  export GW_SCHEMA=gw_p_$$
  gw enqueue "$N"
  t0=$(date +%s%3N)
  gw_workers
  gw wait "$N" "$t0"
  stop_nodes
  echo "== graphile-worker 0.17: end to end (3 workers running)"
  export GW_SCHEMA=gw_e_$$
  gw enqueue 1 >/dev/null # the schema, before the workers start
  gw_workers
  sleep 1
  N=$N gw e2e "$N"
  stop_nodes
fi
