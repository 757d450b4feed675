-- The children scenario of scripts/dist-test (DIST_SCENARIO=children): child workflows on any
-- node. The controller (serving no queue) executes DIST_FAMILIES parents (dist.family of
-- tests/dist/dist_jobs.lua: two child workflows dist.kid of 3 steps each), kill -9s node
-- DIST_KILL (default b) once it holds a child workflow's segment, and checks, from the nodes'
-- activity logs, the results and the database:
--  * every other parent completed with both children's results, and each child saw its parent as
--    ctx.parentId on whichever node it ran;
--  * each (task, attempt) ran once across the logs, the rows' attempts match the logs;
--  * every parent and child ran one run (attempt 1) and its steps are the ids of that run, one
--    outcome event per command in its history (no completed step ran again);
--  * every 5th family is a cascade (a step of its first child fails under cascade): the family
--    and that child failed with the step's error, run 1, everything of it ended, and some
--    cascade cancelled its family's other child;
--  * some child ended on another node than its parent; the killed node's segments were
--    rescued and finished elsewhere; nothing is left ready or leased.
-- Environment: as tests/dist/control.lua, plus DIST_FAMILIES (30) and DIST_STEP_MS (100).
local athena = require "athena"
local C = require "dist_ctl"
local env = os.getenv

local N = tonumber(env("DIST_FAMILIES") or "30")
local MS = tonumber(env("DIST_STEP_MS") or "100")
local KILL = env("DIST_KILL")
local fail, rows = C.fail, C.rows
local w = C.world()

local t0 = athena.now()
local handles = {}
local cascade = {} -- every 5th family: a step of its first child fails under cascade
for i = 1, N do
  cascade[i] = i % 5 == 0
  handles[i] = w:execute("dist.family", { ms = MS, cascade = cascade[i] })
end

-- the node to kill, once it holds a child workflow's segment (a leased workflow row with a
-- parent); what it still held when it died (a segment it parked meanwhile gave its lease back)
local LEASED = "select count(*) as n from {S}.tasks t join {S}.nodes n on n.incarnation = t.lease" ..
  " where n.node_id = $1 and t.kind = 1"
local KILL_PID, KILL_HELD
if KILL then
  KILL_PID, KILL_HELD = C.kill_holding(w, KILL, LEASED .. " and t.parent_id is not null", LEASED)
  print(("killed node %s (pid %s) holding %d workflow segment(s) at %d ms"):format(KILL, tostring(KILL_PID),
    KILL_HELD, athena.now() - t0))
end

local results = {}
for i, h in ipairs(handles) do
  local r, err = h:result(tonumber(env("DIST_WAIT") or "120000"))
  results[i] = r
  if cascade[i] then
    if r ~= nil or not err or err.code ~= "ESTEP" then
      fail("family %s: expected ESTEP (cascade), got %s %s", h.id, tostring(r), tostring(err and err.code))
    end
  elseif err or type(r) ~= "table" or type(r.kids) ~= "table" or #r.kids ~= 2 then
    fail("family %s: %s", h.id, err and (tostring(err.code) .. " " .. tostring(err.message)) or tostring(r))
  end
end
local t_end = athena.now()

-- a cascaded family fails before the cancels of its other child's tree have landed (§8: that
-- child, then its running step, each on its node, once its attempt stopped): they land soon after
local UNSETTLED = "select count(*) as n from {S}.tasks where (id = $1 or id like $2)" ..
  " and (status < 5 or lease is not null)"
for i, h in ipairs(handles) do
  if cascade[i] then C.drained(20000, UNSETTLED, h.id, h.id .. "/%") end
end
local t_settled = athena.now()

-- each (task, attempt) once across the logs
local last = C.starts()

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

-- a cascade: the family and its first child failed with the step's error (no re-run), the
-- second child ended (cancelled, unless it completed first), nothing of it runs on; returns the
-- rescues of its workflow rows (the killed node may have held any family's segments)
local cancelled = 0
local function check_cascade(id)
  local st, rescues = {}, 0
  for _, t in ipairs(rows("select id, kind, status, attempt, error, rescues from {S}.tasks where id = $1 or id like $2",
    id, id .. "/%")) do
    st[t.id] = t
    if t.status < 5 then fail("%s (cascade of %s): status %d", t.id, id, t.status) end
    if t.kind == 1 then rescues = rescues + t.rescues end
  end
  for _, k in ipairs { id, id .. "/1/1" } do
    local t = st[k]
    if not t or t.status ~= 6 or t.attempt ~= 1 or not tostring(t.error):find("ESTEP", 1, true) then
      fail("%s: not failed by the cascade (%s)", k, t and t.status or "no row")
    end
  end
  local sib = st[id .. "/1/2"]
  if sib and sib.status == 7 then cancelled = cancelled + 1 end
  return rescues
end

local apart, rescued = 0, 0
for i, h in ipairs(handles) do
  local r = results[i]
  if cascade[i] then
    rescued = rescued + check_cascade(h.id)
    goto next
  end
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
  ::next::
end
if cancelled == 0 then fail("no cascade cancelled its family's other child") end
if apart == 0 then fail("no child ended on another node than its parent") end
if KILL_PID and KILL_HELD > 0 and rescued == 0 then
  fail("the killed node held %d workflow segment(s) and none was rescued", KILL_HELD)
end
print(("families %d (%d child workflows, %d cascades cancelling %d children): all results in %d ms, the" ..
  " cascades settled %d ms later; %d children ended on another node than their parent; %d rescued" ..
  " workflow segments"):format(N, 2 * N, N // 5, cancelled, t_end - t0, t_settled - t_end, apart, rescued))
C.finish(w)
