#!/usr/bin/env bash
# bench/distributed.sh [ATHENA_BIN] [TASKS]: three athena processes process
# no-op tasks from one PostgreSQL queue (issue 16: >= 20,000 tasks/s
# processed, >= 15,000/s end to end, on this 2-core machine), then
# graphile-worker 0.17 (bench/peers/graphile, its batching preset) does the
# same on the same server, in the same run.
#
# Shape (graphile-worker's own terms): a driver enqueues all tasks first,
# 1,000 per executeMany (acknowledged once committed); then three serving
# processes start; processed = tasks / the time from the first server up to
# the last result; end to end = tasks / (enqueue + processing).
#
# The server: ATHENA_PG_URL_FILE, else a durable throwaway one
# (ATHENA_PG_DURABLE=1 scripts/pg-test start, stopped afterwards).
# BENCH_PEER=0 skips graphile-worker (its npm install needs the registry).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$src/build/athena}
tasks=${2:-200000}
own_pg=""
if [ -z "${ATHENA_PG_URL_FILE:-}" ]; then
  own_pg=$(mktemp -d /tmp/bench-pg.XXXXXX)
  ATHENA_PG_DURABLE=1 "$src/scripts/pg-test" start "$own_pg" >/dev/null
  ATHENA_PG_URL_FILE=$own_pg/url
fi
url=$(cat "$ATHENA_PG_URL_FILE")
dir=$(mktemp -d /tmp/bench-dist.XXXXXX)
schema="bench_$$"
export DIST_URL=$url DIST_SCHEMA=$schema DIST_DIR=$dir DIST_TASKS=$tasks
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  psql -q "$url" -c "DROP SCHEMA IF EXISTS \"$schema\" CASCADE" >/dev/null 2>&1 || true
  rm -rf "$dir"
  [ -z "$own_pg" ] || "$src/scripts/pg-test" stop "$own_pg" >/dev/null 2>&1 || true
}
trap cleanup EXIT
await_file() { while [ ! -e "$1" ]; do sleep 0.01; done; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
DIST_NODE=driver "$bin" "$src/bench/distributed.lua" drive &
driver=$!
pids+=($driver)
await_file "$dir/enqueued"
for n in a b c; do
  DIST_NODE=$n "$bin" "$src/bench/distributed.lua" serve &
  pids+=($!)
done
await_file "$dir/a.started"
touch "$dir/go"
wait "$driver"
for p in "${pids[@]:1}"; do wait "$p" || true; done

if [ "${BENCH_PEER:-1}" = 1 ]; then
  peer=$src/bench/peers/graphile
  [ -d "$peer/node_modules" ] || (cd "$peer" && npm ci --no-audit --no-fund >/dev/null)
  node "$peer/bench.mjs" "$url" "$tasks" 3 24 500
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
