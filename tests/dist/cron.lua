-- The schedules scenario of scripts/dist-test (DIST_SCENARIO=cron, nodes
-- started with DIST_CRON=1): every node registers the same two schedules,
-- every second, "tick" (catchUp "all") and "tick1" (catchUp "one"). The
-- controller (a node serving no queue, shut down before the kill so that it
-- cannot lead) lets them fire, kill -9s the leader halfway while the other
-- nodes are SIGSTOPped for DIST_CRON_OUTAGE_MS (2.5 s: occurrences come due
-- with no leader), lets them fire DIST_CRON_SECONDS (8) occurrences in all,
-- pauses them, waits for every task, and checks (docs/backend-postgres.md
-- "Schedules"):
--  - "tick": one task per second from its first occurrence to its last, no
--    second missing; at least 2 created late (caught up by the new leader);
--  - "tick1": the same except exactly one gap across the kill, of at most
--    FAILOVER_MS, after which only the latest missed occurrence fired;
--  - each occurrence's task ran once per attempt across the nodes' logs and
--    completed; none was created before its time; totalExecutions = tasks;
--  - one session holds the leader lock.
-- Exits 1 with "FAIL ..." lines when one does not hold.
local athena = require "athena"
local jobs = require "dist_jobs"
local env = os.getenv

local SECONDS = tonumber(env("DIST_CRON_SECONDS") or "8")
local SCHEMA = assert(env("DIST_SCHEMA"))
local HB = tonumber(env("DIST_HB") or "500")
local HBT = tonumber(env("DIST_HBT") or "3000")
-- The longest time with no leader: the killed leader's session ends at
-- once (EOF), the others try the lock every heartbeatInterval (DIST_HB,
-- + 10 %) and take the lead in one more round trip. With catchUp "one" an
-- occurrence is missed only when the next one also came due with no
-- leader: the gap in tick1 is at most the failover + 1 s; 1 s more leaves
-- room for a loaded machine. (ctest runs DIST_HB=2000, so that occurrences
-- come due while no node leads: 0-2 of them, caught up.)
local OUTAGE_MS = tonumber(env("DIST_CRON_OUTAGE_MS") or "2500")
local FAILOVER_MS = OUTAGE_MS + math.floor(HB * 1.1) + 2000
local failed = 0
local function fail(fmt, ...)
  failed = failed + 1
  print("FAIL " .. fmt:format(...))
end

local w = athena.World.new {
  backend = athena.PostgresBackend.new { url = env("ATHENA_PG_URL"), nodeId = "ctl", schema = SCHEMA,
    pollInterval = 200 },
  modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1, taskQueues = { dist = { workers = 0 } },
  heartbeatInterval = HB, heartbeatTimeout = HBT,
}
w:register(table.unpack(jobs.all))
w:start()
local db = assert(athena.db.open(env("ATHENA_PG_URL")))
local function scalar(sql, ...)
  local rows = assert(db:query(sql:gsub("{S}", SCHEMA), ...))
  local _, v = next(rows[1])
  return v
end
local function count(id)
  return scalar("select count(*) as n from {S}.tasks where id like $1", id .. "@%")
end
-- Waits (polling the database, deadline) until pred() holds.
local function wait(pred, ms, what)
  local deadline = athena.now() + ms
  while not pred() do
    if athena.now() > deadline then
      fail("timed out waiting for %s", what)
      return false
    end
    athena.sleep(50)
  end
  return true
end

local t0 = athena.now()
wait(function() return count("tick") >= SECONDS // 2 end, SECONDS * 1000 + 20000, "the first half of the ticks")
local kill_pid, kill_node
local others = {}
for _, n in ipairs(w:getNodes()) do
  if n.alive and n.nodeId ~= "ctl" then
    if n.leader then kill_node, kill_pid = n.nodeId, n.pid else others[#others + 1] = n.pid end
  end
end
if kill_pid == nil then fail("no live node leads") end
w:shutdown() -- the controller must not take the lead: it only watches from here
local kill_at = scalar("select {S}.now_ms() as t")
if kill_pid then
  -- the outage: the leader dies and the other nodes are paused for OUTAGE_MS,
  -- so occurrences come due while no node leads (caught up afterwards)
  os.execute("kill -STOP " .. table.concat(others, " ") .. "; kill -9 " .. kill_pid)
  athena.sleep(OUTAGE_MS)
  os.execute("kill -CONT " .. table.concat(others, " "))
  print(("killed the leader %s (pid %s) at %d ms, %d ticks; the others paused %d ms"):format(kill_node, kill_pid,
    athena.now() - t0, count("tick"), OUTAGE_MS))
end
wait(function() return count("tick") >= SECONDS and count("tick1") >= 2 end, SECONDS * 1000 + 20000, "every tick")
-- pause both (the statement pauseSchedule runs): nothing fires afterwards
assert(db:exec(("update %s.schedules set paused = true, next_ms = null"):format(SCHEMA)))
wait(function() return scalar("select count(*) as n from {S}.tasks where status <> 5") == 0 end, 60000,
  "every fired task to complete")

-- The occurrences fired, per schedule, ascending.
local function occurrences(id)
  local rows = assert(db:query(("select id from %s.tasks where id like $1"):format(SCHEMA), id .. "@%"))
  local ts = {}
  for _, r in ipairs(rows) do ts[#ts + 1] = tonumber(r.id:match("@(%d+)$")) end
  table.sort(ts)
  return ts
end
local tick, tick1 = occurrences("tick"), occurrences("tick1")
for i = 2, #tick do
  if tick[i] - tick[i - 1] ~= 1000 then fail("tick: %d then %d (catchUp all misses nothing)", tick[i - 1], tick[i]) end
end
local gaps = 0
for i = 2, #tick1 do
  local g = tick1[i] - tick1[i - 1]
  if g ~= 1000 then
    gaps = gaps + 1
    if g > FAILOVER_MS or tick1[i] < kill_at or tick1[i - 1] > kill_at + FAILOVER_MS then
      fail("tick1: a gap %d -> %d (%d ms) not within the failover after the kill at %d", tick1[i - 1], tick1[i], g, kill_at)
    end
  end
end
if #tick == 0 or tick[#tick] < kill_at + 1000 then fail("no tick fired after the kill") end
-- the occurrences the new leader caught up (created late: due while no node led)
local caught = scalar("select count(*) as n from {S}.tasks where id like 'tick@%'" ..
  " and created_at > substring(id from '@(\\d+)$')::bigint + 500")
-- how late the others fired (database clock: occurrence -> task row)
local lag = assert(db:query(("select coalesce(max(l), 0) as mx, coalesce(percentile_disc(0.5) within group" ..
  " (order by l), 0) as p50 from (select created_at - substring(id from '@(\\d+)$')::bigint as l" ..
  " from %s.tasks where id like 'tick%%') x where l <= 500"):format(SCHEMA)))[1]
if caught < 2 then fail("tick: %d occurrences caught up, the outage makes at least 2", caught) end
if gaps ~= 1 then fail("tick1: %d gaps, the outage makes one", gaps) end
-- totals, and no fire before its time
for _, id in ipairs { "tick", "tick1" } do
  local total = scalar("select total from {S}.schedules where id = $1", id)
  if total ~= count(id) then fail("%s: totalExecutions %d, %d tasks", id, total, count(id)) end
end
local early = scalar("select count(*) as n from {S}.tasks where created_at < substring(id from '@(\\d+)$')::bigint")
if early ~= 0 then fail("%d tasks created before their occurrence", early) end
-- each (task, attempt) started once across the logs; the row's attempt is the last logged
local starts, last = {}, {}
for name in (env("DIST_NODES") or "a,b,c"):gmatch("[^,]+") do
  local f = io.open(env("DIST_LOG") .. "." .. name)
  for line in (f and f:lines() or function() end) do
    local what, id, attempt = line:match("^(%a+) (%S+) (%d+)")
    attempt = tonumber(attempt)
    if what == "start" then
      if starts[id .. "#" .. attempt] then fail("%s attempt %d ran twice", id, attempt) end
      starts[id .. "#" .. attempt] = name
      last[id] = math.max(last[id] or 0, attempt)
    end
  end
  if f then f:close() end
end
for _, r in ipairs(assert(db:query(("select id, attempt from %s.tasks"):format(SCHEMA)))) do
  if last[r.id] ~= r.attempt then fail("%s: attempt %s in the row, %s in the logs", r.id, r.attempt, tostring(last[r.id])) end
end
-- one session holds the leader lock (the killed leader's ended with it;
-- its control row only expires after heartbeatTimeout, so getNodes may
-- still flag it)
local holders = scalar("select count(*) as n from pg_locks where locktype = 'advisory' and granted" ..
  " and objsubid = 2 and classid = 1096042062 and objid = (hashtext($1)::bigint & 4294967295)::oid", SCHEMA)
if holders ~= 1 then fail("%d sessions hold the leader lock", holders) end

print(("cron: %d ticks (catchUp all, %d caught up late), %d tick1 (catchUp one, %d gap(s)) in %d ms;" ..
  " leader %s killed; on-time fires %d ms late at p50, %d ms at most"):format(#tick, caught, #tick1, gaps,
  athena.now() - t0, tostring(kill_node), lag.p50, lag.mx))
db:close()
print(failed == 0 and "PASS" or ("FAILED: %d"):format(failed))
os.exit(failed == 0 and 0 or 1)
