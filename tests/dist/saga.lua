-- The saga scenario of scripts/dist-test (DIST_SCENARIO=saga): workflows and sagas continue
-- on any node. The controller (serving no queue) executes DIST_SAGAS sagas (dist.saga of
-- tests/dist/dist_jobs.lua; every third one fails at step 4 and is compensated), kill -9s the
-- node running a workflow segment (DIST_KILL, default b: once it holds one) and checks, from the
-- nodes' activity logs and the database:
--  * every saga ended as designed: completed with its 5 steps, or compensated (ECOMPENSATED)
--    with undo 3, 2, 1 started in that order, each compensation once;
--  * each (task, attempt) ran once across the logs, the rows' attempts match the logs;
--  * no completed step ran again: every saga ran one run (attempt 1), its steps are the ids of
--    that run, each step's history has one outcome event per command;
--  * steps of one saga ran on several nodes; the killed node's segments were rescued and
--    finished elsewhere; nothing is left ready or leased.
-- Environment: as tests/dist/control.lua, plus DIST_SAGAS (60) and DIST_STEP_MS (100).
local athena = require "athena"
local C = require "dist_ctl"
local env = os.getenv

local N = tonumber(env("DIST_SAGAS") or "60")
local MS = tonumber(env("DIST_STEP_MS") or "100")
local KILL = env("DIST_KILL")
local fail, rows = C.fail, C.rows
local w = C.world()

local t0 = athena.now()
local handles, failing = {}, {}
for i = 1, N do
  local f = i % 3 == 0 and 4 or nil
  handles[i] = w:execute("dist.saga", { ms = MS, fail = f })
  failing[i] = f ~= nil
end

-- the node to kill, once it holds a workflow segment (a leased workflow row); what it still
-- held when it died (it may have parked them meanwhile, giving the leases back): only those
-- need the rescue
local KILL_PID, KILL_HELD
if KILL then
  local leased = "select count(*) as n from {S}.tasks t join {S}.nodes n on n.incarnation = t.lease" ..
    " where n.node_id = $1 and t.kind = 1"
  KILL_PID, KILL_HELD = C.kill_holding(w, KILL, leased, leased)
  print(("killed node %s (pid %s) holding %d workflow segment(s) at %d ms"):format(KILL, tostring(KILL_PID),
    KILL_HELD, athena.now() - t0))
end

for i, h in ipairs(handles) do
  local r, err = h:result(tonumber(env("DIST_WAIT") or "120000"))
  if failing[i] then
    if r ~= nil or not err or err.code ~= "ECOMPENSATED" then
      fail("saga %s: expected ECOMPENSATED, got %s %s", h.id, tostring(r), tostring(err))
    end
  elseif err or type(r) ~= "table" or #r ~= 5 or r[5] ~= "step 5" then
    fail("saga %s: %s", h.id, tostring(err or r))
  end
end
local t_end = athena.now()

-- each (task, attempt) once across the logs; who ran what
local last, node_of = C.starts()

local multi, rescued_wf = 0, 0
for i, h in ipairs(handles) do
  local wf = rows("select status, attempt, rescues from {S}.tasks where id = $1", h.id)[1]
  if wf.attempt ~= 1 then fail("saga %s ran %d runs (a completed step would run again)", h.id, wf.attempt) end
  if wf.rescues > 0 then rescued_wf = rescued_wf + 1 end
  local want = failing[i] and 9 or 5
  if wf.status ~= want then fail("saga %s: status %d, expected %d", h.id, wf.status, want) end
  -- its tasks: the steps of run 1 and (failing) undo 3, 2, 1
  local kids = rows("select id, name, attempt, status from {S}.tasks where parent_id = $1 order by seq", h.id)
  local nodes, steps, undos = {}, 0, 0
  for _, k in ipairs(kids) do
    if last[k.id] ~= k.attempt then
      fail("%s: attempt %s in the row, %s in the logs", k.id, k.attempt, tostring(last[k.id]))
    end
    for n in pairs(node_of[k.id] or {}) do nodes[n] = true end
    if k.name == "dist.step" then
      steps = steps + 1
      if not k.id:match("^" .. h.id:gsub("%p", "%%%0") .. "/1/%d+$") then fail("step %s is not of run 1", k.id) end
    else
      undos = undos + 1
    end
  end
  if steps ~= (failing[i] and 4 or 5) or undos ~= (failing[i] and 3 or 0) then
    fail("saga %s: %d steps and %d compensations", h.id, steps, undos)
  end
  local n = 0
  for _ in pairs(nodes) do n = n + 1 end
  if n >= 2 then multi = multi + 1 end
  -- one outcome per command in its history; compensations started in reverse order
  local hist = rows("select event from {S}.workflow_events where workflow_id = $1 order by seq", h.id)
  local outcomes, comps = {}, {}
  for _, e in ipairs(hist) do
    local ev = athena.json.decode(e.event)
    if ev.type == "activity.completed" or ev.type == "activity.failed" then
      if outcomes[ev.seq] then fail("saga %s: command %d has two outcomes", h.id, ev.seq) end
      outcomes[ev.seq] = true
    elseif ev.type == "compensation.started" then
      comps[#comps + 1] = ev.index
    end
  end
  if failing[i] and table.concat(comps, ",") ~= "3,2,1" then
    fail("saga %s: compensations started in order %s", h.id, table.concat(comps, ","))
  end
end
if multi == 0 then fail("no saga had its steps run on two nodes or more") end
if KILL_PID and KILL_HELD > 0 and rescued_wf == 0 then
  fail("the killed node held %d workflow segment(s) and none was rescued", KILL_HELD)
end
print(("sagas %d (%d compensated): all results in %d ms; %d ran steps on >= 2 nodes; %d rescued workflows")
  :format(N, N // 3, t_end - t0, multi, rescued_wf))
C.finish(w)
