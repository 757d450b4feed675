-- Workflows and sagas on the PostgreSQL backend, one node (storage/wf_pg.c,
-- docs/backend-postgres.md "Workflows"): they complete, compensate and replay as in
-- memory; the history is rows of {schema}.workflow_events appended in order, never
-- rewritten; a parked segment gives its lease back. The server is the ctest fixture
-- "pg" (scripts/pg-test); no server means this spec fails, never skips. Several nodes
-- and a kill -9: dist.saga_kill9 (tests/dist/saga.lua).
local athena = require "athena"
local S = require "fixtures.support"
local wf = require "fixtures.wf_jobs"

local URL = S.pg_database("athena_wf_spec")
local admin = assert(athena.db.open(URL))
local schemas = 0
local worlds = {}

local function world()
  schemas = schemas + 1
  local sch = "wf" .. schemas
  local w = athena.World.new {
    backend = athena.PostgresBackend.new { url = URL, nodeId = "wf-" .. sch, schema = sch, pollInterval = 200 },
    modules = { "fixtures.wf_jobs" }, minWorkers = 2, maxWorkers = 2,
    heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
  }
  w:register(wf.all())
  w:start()
  worlds[#worlds + 1] = w
  return w, sch
end

local function sql(sch, q, ...)
  return assert(admin:query((q:gsub("{S}", sch)), ...))
end

local function lines(path)
  local out = {}
  for l in (S.readfile(path) or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function types(history)
  local out = {}
  for _, ev in ipairs(history) do out[#out + 1] = ev.type end
  return out
end

-- The history rows of workflow id: {seq, event, xmin}, in order.
local function events(sch, id)
  return sql(sch, "select seq, event, xmin::text as xmin from {S}.workflow_events where workflow_id = $1 order by seq", id)
end

-- The rows are the history: seq 0..n-1, hist_n = n, the same events as h:query().
local function same_history(sch, h)
  local rows = events(sch, h.id)
  local q = h:query()
  assert.equals(#q.history, #rows)
  for i, r in ipairs(rows) do
    assert.equals(i - 1, r.seq)
    assert.same(q.history[i], athena.json.decode(r.event))
  end
  assert.equals(#rows, sql(sch, "select hist_n from {S}.tasks where id = $1", h.id)[1].hist_n)
end

-- Nothing left leased or ready once everything ended.
local function settled(sch)
  assert.equals(0, sql(sch, "select count(*) as n from {S}.tasks where lease is not null")[1].n)
  assert.equals(0, sql(sch, "select count(*) as n from {S}.ready")[1].n)
end

describe("workflows on the PostgreSQL backend", function()
  after_each(function()
    for i = #worlds, 1, -1 do
      pcall(worlds[i].shutdown, worlds[i])
      worlds[i] = nil
    end
    S.cleanup_files()
  end)

  it("a workflow completes: each step once, its history in rows, its steps its children", function()
    local w, sch = world()
    local log = S.tmpname()
    local h = w:execute("wf.order", { log = log, order = 7 })
    local r, err = S.result(h)
    assert.is_nil(err)
    assert.same({ "charge ok 7", "reserve ok 7", "ship ok 7" }, r)
    assert.same({ "charge 7", "reserve 7", "ship 7" }, lines(log))
    assert.same({ "workflow.started", "activity.scheduled", "activity.completed", "compensation.added",
      "activity.scheduled", "activity.completed", "compensation.added", "activity.scheduled",
      "activity.completed", "workflow.completed" }, types(h:query().history))
    same_history(sch, h)
    local kids = sql(sch, "select id, kind, status from {S}.tasks where parent_id = $1 order by seq", h.id)
    assert.same({ h.id .. "/1/1", h.id .. "/1/3", h.id .. "/1/5" }, S.ids(kids))
    assert.equals(1, sql(sch, "select kind from {S}.tasks where id = $1", h.id)[1].kind)
    settled(sch)
  end)

  it("a saga compensates: refunds and releases LIFO, ends compensated, result() is ECOMPENSATED", function()
    local w, sch = world()
    local log = S.tmpname()
    local h = w:execute("wf.order", { log = log, order = 1, fail = "ship" }, { failureStrategy = "compensate" })
    local r, err = S.result(h)
    assert.is_nil(r)
    assert.equals("ECOMPENSATED", err.code)
    assert.equals("ESHIP", err.cause.code)
    assert.equals("compensated", h:status())
    -- run 1 fails at ship, run 2 replays charge and reserve and fails again, then the undo
    assert.same({ "charge 1", "reserve 1", "ship 1", "ship 1", "release 1", "refund 1" }, lines(log))
    local started = {}
    for _, e in ipairs(events(sch, h.id)) do
      local ev = athena.json.decode(e.event)
      if ev.type == "compensation.started" then started[#started + 1] = ev.index end
    end
    assert.same({ 2, 1 }, started)
    assert.equals("completed", w:query(h.id .. "/comp/2").status)
    assert.equals(9, sql(sch, "select status from {S}.tasks where id = $1", h.id)[1].status)
    same_history(sch, h)
    settled(sch)
  end)

  it("history rows are appended, never rewritten; a parked timer gives its lease back", function()
    local w, sch = world()
    local h = w:execute("wf.sleeper", { ms = 1500 })
    -- parked on its timer: the row waits for its time, leased by no node
    local parked = S.eventually(function()
      local r = sql(sch, "select wf_where, lease is null as free, due_at is not null as due, hist_n"
        .. " from {S}.tasks where id = $1", h.id)[1]
      return r.wf_where == 3 and r
    end, nil, "the timer park")
    assert.is_true(parked.free)
    assert.is_true(parked.due)
    local before = events(sch, h.id)
    assert.equals(parked.hist_n, #before)
    assert.equals("timer.started", athena.json.decode(before[#before].event).type)
    local r, err = S.result(h)
    assert.is_nil(err)
    local after = events(sch, h.id)
    assert.is_true(#after > #before)
    for i, row in ipairs(before) do -- the same rows, never updated (xmin unchanged)
      assert.same(row, after[i])
    end
    -- the replay after the timer saw the same recorded values
    local hist = h:query().history
    assert.equals("timer.fired", hist[#before + 1].type)
    assert.equals(hist[#hist].result.random, r.random)
    same_history(sch, h)
    settled(sch)
  end)

  it("wrong inputs still give clear errors; what is not built yet is ENOSYS", function()
    local w, sch = world()
    local r, err = S.result(w:execute("wf.badcalls"))
    assert.is_nil(err)
    assert.same({ "EINVAL", "ENOTFOUND", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL",
      "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL" }, r)
    -- a child workflow: its parent fails with ENOSYS, not retried
    local h = w:execute("wf.mid", {})
    r, err = S.result(h)
    assert.is_nil(r)
    assert.equals("ENOSYS", err.code)
    assert.matches("child workflows on the PostgreSQL backend are not supported yet", err.message, 1, true)
    assert.equals(1, h:query().attempt)
    -- a step under cascade
    r, err = S.result(w:execute("wf.cascadeStep"))
    assert.is_nil(err)
    assert.equals("ENOSYS", r.code)
    assert.matches("cascade on the PostgreSQL backend are not supported yet", r.message, 1, true)
    -- an unknown workflow name, bad input
    S.raises("ENOTFOUND", w.execute, w, "wf.nosuch", {})
    S.raises("EINVAL", w.execute, w, "wf.order", { f = print })
    settled(sch)
  end)
end)
