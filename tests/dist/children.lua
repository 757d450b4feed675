-- The children scenario of scripts/dist-test (DIST_SCENARIO=children): child workflows on any
-- node. The controller (serving no queue) executes DIST_FAMILIES parents (dist.family of
-- tests/dist/dist_jobs.lua: two child workflows dist.kid of 3 steps each), kill -9s node
-- DIST_KILL (default b) once it holds a child workflow's segment, and checks, from the nodes'
-- activity logs, the results and the database:
--  * every parent completed with both children's results, and each child saw its parent as
--    ctx.parentId on whichever node it ran;
--  * each (task, attempt) ran once across the logs, the rows' attempts match the logs;
--  * every parent and child ran one run (attempt 1) and its steps are the ids of that run, one
--    outcome event per command in its history (no completed step ran again);
--  * some child ended on another node than its parent; the killed node's segments were
--    rescued and finished elsewhere; nothing is left ready or leased.
-- Environment: as tests/dist/control.lua, plus DIST_FAMILIES (30) and DIST_STEP_MS (100).
local athena = require "athena"
local jobs = require "dist_jobs"
local env = os.getenv

local N = tonumber(env("DIST_FAMILIES") or "30")
local MS = tonumber(env("DIST_STEP_MS") or "100")
local SCHEMA = assert(env("DIST_SCHEMA"))
local KILL = env("DIST_KILL")
local failed = 0
local function fail(fmt, ...)
  failed = failed + 1
  print("FAIL " .. fmt:format(...))
end

local w = athena.World.new {
  backend = athena.PostgresBackend.new { url = env("ATHENA_PG_URL"), nodeId = "ctl", schema = SCHEMA,
    pollInterval = 200 },
  modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1, taskQueues = { dist = { workers = 0 } },
  heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
}
w:register(table.unpack(jobs.all))
w:start()
local db = assert(athena.db.open(env("ATHENA_PG_URL")))
local function rows(sql, ...)
  return assert(db:query((sql:gsub("{S}", SCHEMA)), ...))
end
local function scalar(sql, ...)
  local _, v = next(rows(sql, ...)[1])
  return v
end

local t0 = athena.now()
local handles = {}
for i = 1, N do handles[i] = w:execute("dist.family", { ms = MS }) end

-- the node to kill, once it holds a child workflow's segment (a leased workflow row with a parent)
local HELD_SQL = "select count(*) as n from {S}.tasks t join {S}.nodes n on n.incarnation = t.lease" ..
  " where n.node_id = $1 and t.kind = 1 and t.parent_id is not null"
local KILL_PID, KILL_NODE, KILL_HELD
if KILL then
  for _, n in ipairs(w:getNodes()) do
    if n.alive and n.nodeId == KILL then KILL_NODE, KILL_PID = n.nodeId, n.pid end
  end
  if KILL_PID == nil then fail("no live node %s to kill", KILL) end
  local deadline = athena.now() + 20000
  local held = 0
  while KILL_PID and held == 0 and athena.now() < deadline do held = scalar(HELD_SQL, KILL_NODE) end
  if held == 0 then fail("node %s never held a child workflow's segment", tostring(KILL_NODE)) end
  os.execute("kill -9 " .. KILL_PID)
  -- what it still held when it died (a segment it parked meanwhile gave its lease back)
  KILL_HELD = scalar("select count(*) as n from {S}.tasks t join {S}.nodes n on n.incarnation = t.lease" ..
    " where n.node_id = $1 and t.kind = 1", KILL_NODE)
  print(("killed node %s (pid %s) holding %d workflow segment(s) at %d ms"):format(KILL_NODE, KILL_PID,
    KILL_HELD, athena.now() - t0))
end

local results = {}
for i, h in ipairs(handles) do
  local r, err = h:result(tonumber(env("DIST_WAIT") or "120000"))
  results[i] = r
  if err or type(r) ~= "table" or type(r.kids) ~= "table" or #r.kids ~= 2 then
    fail("family %s: %s", h.id, err and (tostring(err.code) .. " " .. tostring(err.message)) or tostring(r))
  end
end
local t_end = athena.now()

-- each (task, attempt) once across the logs
local starts, last = {}, {}
for name in (env("DIST_NODES") or "a,b,c"):gmatch("[^,]+") do
  local f = io.open(env("DIST_LOG") .. "." .. name)
  for line in (f and f:lines() or function() end) do
    local what, id, attempt = line:match("^(%a+) (%S+) (%d+)")
    attempt = tonumber(attempt)
    if what == "start" then
      local k = id .. "#" .. attempt
      if starts[k] then fail("%s ran twice (%s and %s)", k, starts[k], name) end
      starts[k] = name
      if (last[id] or 0) < attempt then last[id] = attempt end
    end
  end
  if f then f:close() end
end

-- one run, its steps of run 1, one outcome per command
local function check_workflow(id, want_children, want_kind)
  local row = rows("select status, attempt, rescues from {S}.tasks where id = $1", id)[1]
  if row == nil then
    fail("%s: no row", id)
    return 0
  end
  if row.status ~= 5 then fail("%s: status %d", id, row.status) end
  if row.attempt ~= 1 then fail("%s ran %d runs", id, row.attempt) end
  local kids = rows("select id, name, kind, attempt from {S}.tasks where parent_id = $1 order by seq", id)
  if #kids ~= want_children then fail("%s: %d children, expected %d", id, #kids, want_children) end
  local prefix = "^" .. id:gsub("%p", "%%%0") .. "/1/%d+$"
  for _, k in ipairs(kids) do
    if not k.id:match(prefix) then fail("%s is not of run 1 of %s", k.id, id) end
    if k.kind ~= want_kind then fail("%s: kind %d", k.id, k.kind) end
    if k.kind == 0 and last[k.id] ~= k.attempt then
      fail("%s: attempt %s in the row, %s in the logs", k.id, k.attempt, tostring(last[k.id]))
    end
  end
  local outcomes = {}
  for _, e in ipairs(rows("select event from {S}.workflow_events where workflow_id = $1 order by seq", id)) do
    local ev = athena.json.decode(e.event)
    if ev.type:match("%.completed$") or ev.type:match("%.failed$") then
      local k = ev.type:match("^%a+") .. (ev.seq or "")
      if outcomes[k] then fail("%s: command %s has two outcomes", id, k) end
      outcomes[k] = true
    end
  end
  return row.rescues
end

local apart, rescued = 0, 0
for i, h in ipairs(handles) do
  local r = results[i]
  rescued = rescued + check_workflow(h.id, 2, 1)
  local kids = rows("select id from {S}.tasks where parent_id = $1 order by seq", h.id)
  for k, kid in ipairs(kids) do
    rescued = rescued + check_workflow(kid.id, 3, 0)
    local kr = r and r.kids and r.kids[k]
    if kr then
      if kr.parent ~= h.id then fail("%s: ctx.parentId %s", kid.id, tostring(kr.parent)) end
      if #kr.steps ~= 3 or kr.steps[3] ~= ("step %d"):format(k * 10 + 3) then fail("%s: steps", kid.id) end
      if kr.node ~= r.node then apart = apart + 1 end
    end
  end
end
if apart == 0 then fail("no child ended on another node than its parent") end
if KILL_PID and KILL_HELD > 0 and rescued == 0 then
  fail("the killed node held %d workflow segment(s) and none was rescued", KILL_HELD)
end
local ready = scalar("select count(*) as n from {S}.ready")
local leased = scalar("select count(*) as n from {S}.tasks where lease is not null")
if ready ~= 0 or leased ~= 0 then fail("%d ready and %d leased rows left", ready, leased) end
print(("families %d (%d child workflows): all results in %d ms; %d children ended on another node than" ..
  " their parent; %d rescued workflow segments"):format(N, 2 * N, t_end - t0, apart, rescued))
db:close()
w:shutdown()
print(failed == 0 and "PASS" or ("FAILED: %d"):format(failed))
os.exit(failed == 0 and 0 or 1)
