-- The controller of scripts/dist-test: executes a mix of activities on the
-- cluster of tests/dist/node.lua processes (it serves no queue itself),
-- kill -9s one node mid-run, waits for every result, then checks the
-- invariants of distributed.md §6.1 against the nodes' activity logs and
-- the database. Exits 1 with "FAIL ..." lines when one does not hold.
-- Environment: ATHENA_PG_URL, DIST_SCHEMA, DIST_LOG (the nodes' log prefix),
-- DIST_NODES ("a,b,c"), DIST_TASKS (5000), DIST_KILL: the node to kill -9
-- ("b", or "leader": whichever node holds the leader lock; unset: none).
local athena = require "athena"
local jobs = require "dist_jobs"
local env = os.getenv

local N = tonumber(env("DIST_TASKS") or "5000")
local SCHEMA = assert(env("DIST_SCHEMA"))
local KILL = env("DIST_KILL")
local failed = 0
local function fail(fmt, ...)
  failed = failed + 1
  print("FAIL " .. fmt:format(...))
end

local w = athena.World.new {
  backend = athena.PostgresBackend.new { url = env("ATHENA_PG_URL"), nodeId = "ctl", schema = SCHEMA,
    pollInterval = 200, notify = env("DIST_NOTIFY") ~= "0" },
  modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1, taskQueues = { dist = { workers = 0 } },
  heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
}
w:register(table.unpack(jobs.all))
w:start()
local db = assert(athena.db.open(env("ATHENA_PG_URL")))
local function scalar(sql, ...)
  local rows = assert(db:query(sql:gsub("{S}", SCHEMA), ...))
  local _, v = next(rows[1])
  return v
end

-- The mix: long tasks first; once the node to kill holds some of them it is
-- killed (before the bulk is enqueued: on a loaded machine the long tasks
-- could all end while the bulk is still being enqueued), then no-ops with
-- 1 % failing once, in executeMany batches of 1,000.
local t0 = athena.now()
local handles, expect = {}, {}
local slow = math.max(60, N // 50)
local inputs = {}
for i = 1, slow do inputs[i] = { ms = 200 + (i % 5) * 100 } end
for _, h in ipairs(w:executeMany("dist.sleep", inputs)) do handles[#handles + 1] = h; expect[#expect + 1] = "node" end
local KILL_PID, KILL_NODE
if KILL then -- the node, found by getNodes(); killed once it runs long tasks
  for _, n in ipairs(w:getNodes()) do
    if n.alive and (n.nodeId == KILL or (KILL == "leader" and n.leader)) then KILL_NODE, KILL_PID = n.nodeId, n.pid end
  end
  if KILL_PID == nil then fail("no live node %s to kill", KILL) end
  local deadline = athena.now() + 20000
  while KILL_PID and athena.now() < deadline do
    local n = scalar("select count(*) as n from {S}.tasks t join {S}.nodes n on n.incarnation = t.lease" ..
      " where n.node_id = $1 and t.name = 'dist.sleep'", KILL_NODE)
    if n >= 3 then break end
  end
  if KILL_PID then
    os.execute("kill -9 " .. KILL_PID)
    print(("killed node %s (pid %s%s) at %d ms"):format(KILL_NODE, KILL_PID, KILL == "leader" and ", the leader" or "",
      athena.now() - t0))
  end
end

local left = N - slow
while left > 0 do
  local k = math.min(1000, left)
  local noop, flaky = {}, {}
  for i = 1, k do
    if i % 100 == 0 then flaky[#flaky + 1] = i else noop[#noop + 1] = i end
  end
  for j, h in ipairs(w:executeMany("dist.noop", noop)) do handles[#handles + 1] = h; expect[#expect + 1] = noop[j] end
  for _, h in ipairs(w:executeMany("dist.flaky", flaky)) do handles[#handles + 1] = h; expect[#expect + 1] = "flaky" end
  left = left - k
end
local t_enq = athena.now()

for i, h in ipairs(handles) do
  local r, err = h:result(120000)
  if err then
    fail("task %s: %s", h.id, tostring(err))
  elseif expect[i] == "node" then
    if type(r) ~= "string" then fail("task %s returned %s", h.id, tostring(r)) end
  elseif expect[i] == "flaky" then -- its attempt: 2, or later when a kill cost it one
    local row = assert(db:query(("select attempt, rescues from %s.tasks where id = $1"):format(SCHEMA), h.id))[1]
    if r ~= row.attempt or r < 2 or (r > 2 and row.rescues == 0) then
      fail("task %s returned %s (attempt %s, rescued %s times)", h.id, tostring(r), row.attempt, row.rescues)
    end
  elseif r ~= expect[i] then
    fail("task %s returned %s, expected %s", h.id, tostring(r), tostring(expect[i]))
  end
end
local t_end = athena.now()

-- I1: every task completed
local done = scalar("select count(*) as n from {S}.tasks where status = 5")
if done ~= N then fail("I1: %d of %d tasks completed", done, N) end
-- I2: exactly one execution per (id, attempt) across the logs; the last one logged is the row's attempt
local starts, per_node, last = {}, {}, {}
for name in (env("DIST_NODES") or "a,b,c"):gmatch("[^,]+") do
  per_node[name] = 0
  local f = io.open(env("DIST_LOG") .. "." .. name)
  for line in (f and f:lines() or function() end) do
    local what, id, attempt = line:match("^(%a+) (%S+) (%d+)")
    attempt = tonumber(attempt)
    if what == "start" then
      local k = id .. "#" .. attempt
      if starts[k] then fail("I2: %s ran twice (%s and %s)", k, starts[k], name) end
      starts[k] = name
      per_node[name] = per_node[name] + 1
      if (last[id] or 0) < attempt then last[id] = attempt end
    end
  end
  if f then f:close() end
end
local rows = assert(db:query(("select id, attempt, rescues, error from %s.tasks"):format(SCHEMA)))
local rescued, lost_err = 0, 0
for _, r in ipairs(rows) do
  if last[r.id] ~= r.attempt then fail("I2: %s: attempt %s in the row, %s in the logs", r.id, r.attempt, tostring(last[r.id])) end
  if r.rescues > 0 then
    rescued = rescued + 1
    if r.error and r.error:find("EWORKERLOST", 1, true) then lost_err = lost_err + 1 end
  end
end
-- I5: nothing ready or leased is left
local ready = scalar("select count(*) as n from {S}.ready")
local leased = scalar("select count(*) as n from {S}.tasks where lease is not null")
if ready ~= 0 or leased ~= 0 then fail("I5: %d ready and %d leased rows left", ready, leased) end
if KILL_PID then
  if rescued == 0 then fail("the killed node's tasks were not rescued") end
  local leaders = 0
  for _, n in ipairs(w:getNodes()) do leaders = leaders + (n.alive and n.leader and 1 or 0) end
  if leaders ~= 1 then fail("%d live leaders after the kill", leaders) end
  if lost_err ~= rescued then fail("%d rescued tasks, %d with EWORKERLOST", rescued, lost_err) end
end
local counts = {}
for name, n in pairs(per_node) do counts[#counts + 1] = name .. "=" .. n end
table.sort(counts)
print(("tasks %d: enqueued in %d ms, all results in %d ms (%.0f tasks/s end to end); runs per node: %s; rescued %d")
  :format(N, t_enq - t0, t_end - t0, N / ((t_end - t0) / 1000), table.concat(counts, " "), rescued))
db:close()
w:shutdown()
print(failed == 0 and "PASS" or ("FAILED: %d"):format(failed))
os.exit(failed == 0 and 0 or 1)
