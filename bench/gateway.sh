#!/usr/bin/env bash
# Gateway benchmark (issues 7, 18): bench/gateway.sh [athena-binary] [seconds]
#
# Starts `athena serve` on a fresh SQLite database in a temp dir
# (items(id INTEGER PRIMARY KEY, cat INTEGER, name TEXT, price REAL), 100,000
# rows, index items_cat, 25 rows per cat value; cat = (id - 1) % 4000, so a
# cat's rows lie on 25 different table pages), then drives it with wrk
# (bench/gateway.lua) at 64 connections and 2 wrk threads for each run:
#   healthz  GET /healthz, the operations health check (the HTTP-layer
#            baseline; note it answers `Connection: close`, so wrk reconnects
#            for every request)
#   ping     GET /ping, the gateway's keep-alive plain answer (a baseline
#            without the reconnects)
#   fetch    POST /gateway/fetch, 25 rows by the indexed `cat`, random cat
#   fetch1   the same fetch with limit 1: one row, one table seek (with
#            fetch, it splits a fetch's cost into the request's and the rows')
#   mix      90 % fetch / 10 % PUT /gateway/insert
#   insert   PUT /gateway/insert only
#   pgfetch  (BENCH_PG=1) the fetch again, on PostgreSQL: a throwaway server
#            (scripts/pg-test) with the same table, and a second athena serve
# and prints req/s with its ratio to /ping of the same server in the same run
# (x_ping), latency p50/p99, the non-200 answers, the CPU that wrk and the
# server used (in cores) and per request. It fails if any fetch answer is not
# a 200 with 25 rows, any insert answer of the mix is not a 200 saying
# "Inserted 1 rows", or any fetch or mix request got no answer (socket error
# or 5 s timeout); answers of the insert-only run that are not 200 are counted
# and shown. Targets (issue 18, 2-core machine): fetch >= 50,000 req/s, p99 <=
# 5 ms, >= 0.6 x /ping, <= 25 us of server CPU each; mix >= 30,000 req/s;
# PostgreSQL fetch >= 20,000 req/s. The figures are only as good as the
# machine is quiet: the srv/wrk/rest column shows who had the CPUs.
#
# Environment (all optional):
#   BENCH_CONNECTIONS=64 BENCH_WRK_THREADS=2   wrk -c / -t
#   BENCH_ROWS=100000                           rows, a multiple of 25
#   BENCH_WARMUP=2                              seconds of fetch before the runs
#                                               (and before the PostgreSQL ones)
#   BENCH_RUNS="healthz ping fetch mix insert"  which runs, in this order
#   BENCH_PG=1                                  add the pgfetch run (needs
#                                               PostgreSQL, scripts/bootstrap --test)
#   BENCH_INSERT_PERCENT=10                     insert share of the mix run
#   BENCH_GW_THREADS=N                          gateway `threads` (default 2)
#   BENCH_JOURNAL=wal                           SQLite journal mode of the file
#   BENCH_PERF=FILE                             perf record -g (dwarf) the
#                                               server during the fetch run
#   BENCH_KEEP=1                                keep the temp dir (logs, db)
# Needs wrk, sqlite3 and curl (scripts/bootstrap --test), perf for BENCH_PERF.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
athena=${1:-build/athena}
secs=${2:-10}
conns=${BENCH_CONNECTIONS:-64}
wthreads=${BENCH_WRK_THREADS:-2}
rows=${BENCH_ROWS:-100000}
warmup=${BENCH_WARMUP:-2}
runs=${BENCH_RUNS:-healthz ping fetch mix insert}
ins_pct=${BENCH_INSERT_PERCENT:-10}
journal=${BENCH_JOURNAL:-wal}
per_cat=25
cats=$(( (rows + per_cat - 1) / per_cat ))
key=bench-key

die() { echo "gateway.sh: $*" >&2; exit 1; }
for tool in wrk sqlite3 curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/bootstrap --test installs it)"
done
[ -x "$athena" ] || die "no athena binary at $athena (usage: bench/gateway.sh [athena-binary] [seconds])"
[[ "$secs" =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || die "seconds must be a positive integer"
if [ -n "${BENCH_PERF:-}" ]; then command -v perf >/dev/null || die "BENCH_PERF needs perf"; fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/athena-gwbench.XXXXXX")
spid=""
pg_dir=""
perf_pid=""
wrk_pid=""
cleanup() {
  local rc=$?
  if [ -n "$wrk_pid" ]; then
    kill -TERM "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
  fi
  if [ -n "$perf_pid" ] && kill -0 "$perf_pid" 2>/dev/null; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
  fi
  stop_server
  if [ -n "$pg_dir" ]; then "$here/../scripts/pg-test" stop "$pg_dir" >/dev/null 2>&1 || true; fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    echo "gateway.sh: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ database
db="$tmp/bench.db"
sqlite3 "$db" <<SQL >/dev/null
PRAGMA journal_mode = $journal;
CREATE TABLE items(id INTEGER PRIMARY KEY, cat INTEGER, name TEXT, price REAL);
WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < $rows)
INSERT INTO items(id, cat, name, price)
  SELECT i + 1, i % $cats, 'item ' || (i + 1), (i % 1000) / 10.0 FROM s;
CREATE INDEX items_cat ON items(cat);
ANALYZE;
SQL
check=$(sqlite3 "$db" "SELECT count(*), min(n), max(n) FROM (SELECT count(*) AS n FROM items GROUP BY cat)")
[ "$check" = "$cats|$per_cat|$per_cat" ] || die "database check failed: $check cat values|min|max rows"

cat >"$tmp/gw.lua" <<LUA
return {
  keys = { ["$key"] = { name = "bench", rights = "*" } },
  tables = { "items" },
  rateLimits = { key = { rate = 1e9, burst = 1e9 }, ip = { rate = 1e9, burst = 1e9 } },
  ${BENCH_GW_THREADS:+threads = $BENCH_GW_THREADS,}
}
LUA

# -------------------------------------------------------------------- server
start_server() { # database-url log: sets spid and base
  "$athena" serve --db "$1" --config "$tmp/gw.lua" --host 127.0.0.1 --port 0 \
    --persistence memory --path "$tmp/state-$2" 2>"$tmp/$2.log" &
  spid=$!
  local deadline=$((SECONDS + 30))
  base=""
  while [ -z "$base" ]; do
    base=$(grep -o 'serving http://[0-9.]*:[0-9]*' "$tmp/$2.log" | head -1 | sed 's/^serving //') || true
    [ -n "$base" ] && break
    kill -0 "$spid" 2>/dev/null || { cat "$tmp/$2.log" >&2; die "athena serve exited before it was ready"; }
    [ "$SECONDS" -lt "$deadline" ] || { cat "$tmp/$2.log" >&2; die "athena serve not ready after 30 s"; }
    sleep 0.05
  done
}
stop_server() {
  if [ -n "$spid" ] && kill -0 "$spid" 2>/dev/null; then
    kill -TERM "$spid" 2>/dev/null || true
    local end=$((SECONDS + 10))
    while kill -0 "$spid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
    kill -0 "$spid" 2>/dev/null && kill -KILL "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null || true
  fi
  spid=""
}
start_server "sqlite:$db" server

# The answers are real before anything is measured.
body=$(curl -sS -X POST "$base/gateway/fetch" -H "apikey: $key" \
  -d '{"table_name":"items","conditions":[{"operator":"eq","column":"cat","value":7}],"limit":25}')
case $body in *'"Fetched 25 rows"'*) ;; *) die "fetch check failed: ${body:0:300}" ;; esac
[ "$(curl -sS "$base/healthz")" = ok ] || die "/healthz did not answer ok"

ncpu=$(nproc)
hz=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a process, in clock ticks
  local s
  s=$(cat "/proc/$1/stat") || { echo 0; return; }
  s=${s##*) }
  set -- $s
  echo $(( ${12} + ${13} ))
}
busy_ticks() { # busy clock ticks of the whole machine (all CPUs)
  local _cpu u n sy idle io rest
  read -r _cpu u n sy idle io rest </proc/stat
  set -- $rest
  echo $(( u + n + sy + ${1:-0} + ${2:-0} + ${3:-0} ))
}

echo "athena gateway benchmark: $("$athena" --version 2>/dev/null | head -1 || true)"
echo "  server $athena (pid $spid) at $base, SQLite $rows rows / $cats cats (journal $journal)"
echo "  wrk: $conns connections, $wthreads threads, ${secs}s per run; $ncpu CPUs shared by wrk and the server"

declare -A R
run() { # name mode path extra-args...
  local name=$1 mode=$2 path=$3
  shift 3
  local t0 t1
  t0=$(cpu_ticks "$spid")
  local m0 m1
  m0=$(busy_ticks)
  local start=$EPOCHREALTIME
  times >"$tmp/times0-$name"
  # in the background, so that a signal's trap runs at once (and stops it)
  wrk -t"$wthreads" -c"$conns" -d"${secs}s" --timeout 5s -s "$here/gateway.lua" \
    "$base$path" -- "$mode" "$cats" "$key" "$@" >"$tmp/wrk-$name.out" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || true
  wrk_pid=""
  times >"$tmp/times1-$name"
  local wall
  wall=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')
  t1=$(cpu_ticks "$spid")
  m1=$(busy_ticks)
  local line
  line=$(grep '^RESULT ' "$tmp/wrk-$name.out") || { cat "$tmp/wrk-$name.out" >&2; die "wrk run $name printed no result"; }
  for kv in ${line#RESULT }; do R[$name.${kv%%=*}]=${kv#*=}; done
  R[$name.srv_cores]=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v w="$wall" 'BEGIN{printf "%.2f", t/hz/w}')
  # children's user + system time (wrk's, bar a few tiny subshells) from `times`
  R[$name.wrk_cores]=$(cat "$tmp/times0-$name" "$tmp/times1-$name" | awk -v w="$wall" '
    function sec(t) { split(t, p, "m"); return p[1] * 60 + p[2] }
    NR == 2 { a = sec($1) + sec($2) } NR == 4 { b = sec($1) + sec($2) }
    END { printf "%.2f", (b - a) / w }')
  R[$name.rest_cores]=$(awk -v m=$((m1 - m0)) -v hz="$hz" -v w="$wall" -v s="${R[$name.srv_cores]}" \
    -v k="${R[$name.wrk_cores]}" 'BEGIN{r = m/hz/w - s - k; printf "%.2f", (r < 0 ? 0 : r)}')
}

if [ "$warmup" -gt 0 ]; then
  wrk -t"$wthreads" -c"$conns" -d"${warmup}s" -s "$here/gateway.lua" "$base" -- fetch "$cats" "$key" >/dev/null 2>&1 ||
    die "warm-up run failed"
fi

for r in $runs; do
  case $r in
    healthz) run healthz get /healthz ;;
    ping) run ping get /ping ;;
    fetch)
      if [ -n "${BENCH_PERF:-}" ]; then
        perf record -q -g --call-graph dwarf,16384 -F 499 -p "$spid" -o "$BENCH_PERF" >"$tmp/perf.log" 2>&1 &
        perf_pid=$!
      fi
      run fetch fetch ""
      if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid"; wait "$perf_pid" || true; perf_pid=""
        echo "  perf data of the fetch run: $BENCH_PERF (recording slows the server: its fetch figures are low)"
      fi
      ;;
    fetch1) run fetch1 fetch "" 0 1 ;;
    mix) run mix mix "" "$ins_pct" ;;
    insert) run insert mix "" 100 ;;
    *) die "unknown run $r (healthz ping fetch fetch1 mix insert)" ;;
  esac
done

# ---------------------------------------------------------------- PostgreSQL
if [ "${BENCH_PG:-0}" = 1 ]; then
  pg_dir=$tmp/pg
  "$here/../scripts/pg-test" start "$pg_dir" >/dev/null
  pgurl=$(cat "$pg_dir/url")
  psql=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)/psql
  "$psql" "$pgurl" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE TABLE items(id bigint PRIMARY KEY, cat integer, name text, price double precision);
INSERT INTO items SELECT i + 1, i % $cats, 'item ' || (i + 1), (i % 1000) / 10.0 FROM generate_series(0, $rows - 1) i;
CREATE INDEX items_cat ON items(cat);
ANALYZE items;
SQL
  stop_server
  start_server "$pgurl" pgserver
  echo "  pgfetch: PostgreSQL $("$psql" --version | awk '{print $3}') (scripts/pg-test), server pid $spid at $base"
  if [ "$warmup" -gt 0 ]; then # the gateway's connections open (SCRAM) and prepare before the runs
    wrk -t"$wthreads" -c"$conns" -d"${warmup}s" -s "$here/gateway.lua" "$base" -- fetch "$cats" "$key" >/dev/null 2>&1 ||
      die "PostgreSQL warm-up run failed"
  fi
  run pgping get /ping
  run pgfetch fetch ""
  runs="$runs pgping pgfetch"
fi

# ------------------------------------------------------------------- report
echo
printf '%-8s %9s %6s %8s %8s %8s %8s %6s %8s %14s %8s  %s\n' run req/s x_ping p50_ms p99_ms max_ms non-200 wrong sock_err \
  srv/wrk/rest srv_us/r "statuses"
fail=0
ping_rps=${R[ping.rps]:-}
x_ping() { # req/s [base]
  local b=${2:-$ping_rps}
  [ -n "$b" ] && awk -v a="$1" -v b="$b" 'BEGIN{printf "%.2f", a/b}' || echo -
}
for r in $runs; do
  non200=$(( ${R[$r.get_bad]} + ${R[$r.fetch_non200]} + ${R[$r.insert_non200]} ))
  wrong=$(( ${R[$r.fetch_wrong]} + ${R[$r.insert_wrong]} ))
  us=$(awk -v c="${R[$r.srv_cores]}" -v q="${R[$r.rps]}" 'BEGIN{printf "%.0f", (q > 0 ? c * 1e6 / q : 0)}')
  R[$r.us]=$us
  xb=$ping_rps
  case $r in pg*) xb=${R[pgping.rps]} ;; esac
  printf '%-8s %9s %6s %8s %8s %8s %8s %6s %8s %14s %8s  %s\n' "$r" "${R[$r.rps]}" "$(x_ping "${R[$r.rps]}" "$xb")" \
    "${R[$r.p50_ms]}" "${R[$r.p99_ms]}" "${R[$r.max_ms]}" "$non200" "$wrong" "${R[$r.sock_errors]}" \
    "${R[$r.srv_cores]}/${R[$r.wrk_cores]}/${R[$r.rest_cores]}" "$us" "${R[$r.statuses]}"
  case $r in
    fetch | fetch1 | mix | insert | pgfetch)
      if [ "${R[$r.fetch_non200]}" -gt 0 ] || [ "${R[$r.fetch_wrong]}" -gt 0 ]; then
        echo "  FAIL: $r: ${R[$r.fetch_non200]} fetch answers not 200, ${R[$r.fetch_wrong]} 200s without their rows" >&2
        fail=1
      fi
      if [ "$r" = mix ] && { [ "${R[$r.insert_non200]}" -gt 0 ] || [ "${R[$r.insert_wrong]}" -gt 0 ]; }; then
        echo "  FAIL: mix: ${R[$r.insert_non200]} insert answers not 200, ${R[$r.insert_wrong]} 200s not saying 1 row" >&2
        fail=1
      fi
      if [ "${R[$r.sock_errors]}" -gt 0 ] && [ "$r" != insert ]; then
        echo "  FAIL: $r: ${R[$r.sock_errors]} requests failed (socket error, or no answer in 5 s)" >&2
        fail=1
      elif [ "${R[$r.sock_errors]}" -gt 0 ]; then
        echo "  $r: ${R[$r.sock_errors]} requests failed (socket error, or no answer in 5 s)"
      fi
      case $r in fetch | fetch1 | pgfetch) ;; *)
        echo "  $r: inserts ${R[$r.insert_ok]} ok, ${R[$r.insert_non200]} not 200; fetches ${R[$r.fetch_ok]} ok" ;;
      esac
      ;;
  esac
done
echo "  x_ping = req/s over the same server's /ping in this run (pg*: the PostgreSQL server's)"
echo "  srv/wrk/rest = CPU cores busy in the server / in wrk / elsewhere (other processes, interrupts) during"
echo "  the run, of $ncpu (rest includes loopback softirq time; much more means another load shared the"
echo "  machine and the rates are low); srv_us/r = server CPU microseconds per request, which such"
echo "  sharing changes much less than req/s"
verdict() { if awk "BEGIN{exit !($1)}"; then echo met; else echo "NOT met"; fi; }
if [ -n "${R[fetch.rps]:-}" ]; then
  f=${R[fetch.rps]} p=${R[fetch.p99_ms]} u=${R[fetch.us]}
  xp=$(x_ping "$f")
  xn=$xp; [ "$xn" = "-" ] && xn=0 # no ping run: that part is not met
  echo "  target fetch >= 50000 req/s, p99 <= 5 ms, >= 0.6 x ping, <= 25 us/r:" \
    "$(verdict "$f >= 50000 && $p <= 5 && $xn >= 0.6 && $u <= 25")" \
    "($f req/s, p99 $p ms, ${xp} x ping, $u us/r)"
fi
if [ -n "${R[mix.rps]:-}" ]; then
  echo "  target mix >= 30000 req/s, no wrong answer: $(verdict "${R[mix.rps]} >= 30000 && $fail == 0")" \
    "(${R[mix.rps]} req/s, $(x_ping "${R[mix.rps]}") x ping)"
fi
if [ -n "${R[pgfetch.rps]:-}" ]; then
  echo "  target PostgreSQL fetch >= 20000 req/s: $(verdict "${R[pgfetch.rps]} >= 20000")" \
    "(${R[pgfetch.rps]} req/s, $(awk -v a="${R[pgfetch.rps]}" -v b="${R[pgping.rps]}" 'BEGIN{printf "%.2f", a/b}') x its ping)"
fi
exit "$fail"
