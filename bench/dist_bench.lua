-- bench/distributed.sh's controller: no-op tasks through the PostgreSQL
-- backend. mode "enqueue": executeMany N tasks (1,000 per call) and exit
-- (the nodes are not running: the processing run then measures claims and
-- finishes alone). mode "wait": wait until N tasks of the schema completed
-- and print the rate since DIST_T0 (epoch ms). mode "e2e": with the nodes
-- running, executeMany N tasks and wait for every result. mode "latency":
-- after enqueueing N, one task at a time (N of them), each run by a node:
-- the time from execute to result.
local athena = require "athena"
local jobs = require "dist_jobs"
local env = os.getenv
local mode, N = arg[1], tonumber(arg[2] or "100000")
local SCHEMA = assert(env("DIST_SCHEMA"))

if mode == "wait" then
  local db = assert(athena.db.open(env("ATHENA_PG_URL")))
  local t0 = tonumber(env("DIST_T0"))
  -- done when nothing is ready or leased (no-ops never retry): two index
  -- probes, where counting the completed rows read the whole table every
  -- 20 ms (122 us of the server's time per task processed, measured with
  -- pg_stat_statements: the bench slowed what it measured)
  local sql = ("select not exists (select 1 from %s.ready) and not exists (select 1 from %s.tasks"
    .. " where lease is not null) as done"):format(SCHEMA, SCHEMA)
  while not db:query(sql)[1].done do athena.sleep(20) end
  local n = db:query(("select count(*) as n from %s.tasks where status = 5"):format(SCHEMA))[1].n
  assert(n == N, ("%d of %d tasks completed"):format(n, N))
  local ms = athena.now() - t0
  local span = db:query(("select max(completed_at) - min(started_at) as ms from %s.tasks"):format(SCHEMA))[1].ms
  print(("processed %d no-op tasks in %d ms from the first claim to the last completion: %.0f tasks/s"
    .. " (%d ms, %.0f tasks/s, counting the nodes' start)"):format(N, span, N / (span / 1000), ms, N / (ms / 1000)))
  return
end

local w = athena.World.new {
  backend = athena.PostgresBackend.new { url = env("ATHENA_PG_URL"), nodeId = "bench-ctl", schema = SCHEMA },
  modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1, taskQueues = { dist = { workers = 0 } },
  persistence = env("DIST_PERSISTENCE") or "file", log = { level = "warn" },
}
w:register(table.unpack(jobs.all))
w:start()
local t0 = athena.now()
local hs = {}
local batch = {}
for i = 1, 1000 do batch[i] = i end
for _ = 1, N // 1000 do
  for _, h in ipairs(w:executeMany("dist.noop", batch)) do hs[#hs + 1] = h end
end
local t1 = athena.now()
print(("enqueued %d no-op tasks in %d ms: %.0f tasks/s"):format(N, t1 - t0, N / ((t1 - t0) / 1000)))
if mode == "latency" then -- one task at a time, run by another node: execute -> result
  local ms = {}
  for i = 1, N do
    local t = athena.now()
    assert(w:execute("dist.noop", i):result(10000) == i)
    ms[i] = athena.now() - t
  end
  table.sort(ms)
  print(("cross-node execute -> result, %d tasks one at a time: p50 %d ms, p90 %d ms, p99 %d ms, max %d ms")
    :format(N, ms[N // 2], ms[N * 9 // 10], ms[math.max(1, N * 99 // 100)], ms[N]))
end
if mode == "e2e" then
  for _, h in ipairs(hs) do assert(h:result(600000)) end
  local t2 = athena.now()
  print(("end to end: %d no-op tasks in %d ms: %.0f tasks/s"):format(N, t2 - t0, N / ((t2 - t0) / 1000)))
end
w:shutdown()
