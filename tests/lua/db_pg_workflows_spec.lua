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
    taskQueues = { nobody = { workers = 0 } },
    heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
  }
  w:register(wf.all())
  w:start()
  worlds[#worlds + 1] = w
  return w, sch
end

-- The same workflows on a SQLite world (file persistence): the reference.
local function sqlite_world()
  local w = athena.World.new {
    persistence = "file", persistencePath = S.tmpname(),
    modules = { "fixtures.wf_jobs" }, minWorkers = 2, maxWorkers = 2,
  }
  w:register(wf.all())
  w:start()
  worlds[#worlds + 1] = w
  return w
end

-- v without what differs between two runs of the same workflows (times, run ids).
local function norm(v) -- (and the temporary files of its input)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do
    if k ~= "at" and k ~= "runId" and k ~= "startedAt" and k ~= "log" and k ~= "gate" then
      out[k] = type(x) == "string" and x:match("^%x+%-%x+%-%x+%-%x+%-%x+$") and "<uuid>" or norm(x)
    end
  end
  return out
end

-- Task id and everything it owns, once all of it ended: {id = {name, status,
-- result, error, history, parentId, attempt}}, normalized.
local function tree_of(w, id, out)
  out = out or {}
  local q = S.eventually(function()
    local q = w:query(id)
    return q and q.completedAt and q
  end, nil, id .. " to end")
  out[id] = norm { name = q.name, status = q.status, result = q.result, error = q.error, history = q.history,
    parentId = q.parentId, attempt = q.attempt }
  for _, c in ipairs(q.children or {}) do tree_of(w, c, out) end
  return out
end

-- Runs start(w) on a SQLite world and on a PostgreSQL one: the same result
-- (or error) and the same tasks, states and histories. Returns the
-- PostgreSQL world's tree and schema.
local function same_as_sqlite(start)
  local out = {}
  for i, w in ipairs { sqlite_world(), (world()) } do
    local h = start(w)
    local r, err = S.result(h)
    out[i] = { r = norm(r), err = norm(err), tree = tree_of(w, h.id) }
  end
  assert.same(out[1].r, out[2].r)
  assert.same(out[1].err, out[2].err)
  if os.getenv("DBG") then print(athena.json.encode(out[1].tree)) print(athena.json.encode(out[2].tree)) end
  assert.same(out[1].tree, out[2].tree)
  return out[2], "wf" .. schemas
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

-- Nothing left leased or ready once everything ended (the rows of tasks
-- ended in RAM are written by the next cycles).
local function settled(sch)
  S.eventually(function()
    return sql(sch, "select count(*) as n from {S}.tasks where lease is not null")[1].n == 0
      and sql(sch, "select count(*) as n from {S}.ready")[1].n == 0
  end, nil, "no row leased or ready")
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

  it("wrong inputs still give clear errors", function()
    local w, sch = world()
    local r, err = S.result(w:execute("wf.badcalls"))
    assert.is_nil(err)
    assert.same({ "EINVAL", "ENOTFOUND", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL",
      "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL" }, r)
    -- an unknown workflow name, bad input
    S.raises("ENOTFOUND", w.execute, w, "wf.nosuch", {})
    S.raises("EINVAL", w.execute, w, "wf.order", { f = print })
    settled(sch)
  end)

  it("child workflows two levels deep and a re-run child: results and histories as on SQLite", function()
    local n = 0
    local got, sch = same_as_sqlite(function(w)
      n = n + 1
      return w:execute("tree.top", { gate = S.tmpname() }, { id = "top" })
    end)
    local r = got.r
    assert.same({ "reserve ok 11", "top/1/1", "top/1/1" }, { r.m1.a.r, r.m1.a.parent, r.m1.a.meta })
    assert.equals("top", r.m1.parent)
    assert.equals("reserve ok 22", r.m2.b.r)
    assert.equals("ok", r.rerun) -- the child's second run
    assert.equals(2, got.tree["top/1/3"].attempt)
    assert.equals("workflow.retrying", got.tree["top/1/3"].history[6].type)
    -- top, 2 mids, 4 leaves, the re-run child and every step: each once
    local kinds = {}
    for id, t in pairs(got.tree) do kinds[t.name] = (kinds[t.name] or 0) + 1 end
    assert.same({ ["tree.top"] = 1, ["tree.mid"] = 2, ["tree.leaf"] = 4, ["wf.rerun"] = 1, ["wf.reserve"] = 4,
      ["wf.charge"] = 3, ["wf.flaky"] = 2 }, kinds)
    -- a child workflow's row names its parent
    assert.equals("top/1/1", sql(sch, "select parent_id from {S}.tasks where id = 'top/1/1/1/1'")[1].parent_id)
    settled(sch)
  end)

  it("a step under cascade fails its workflow, whose parked child is cancelled; a cascade child passes it up", function()
    for _, name in ipairs { "tree.cascade", "tree.cascadeChild" } do
      local got, sch = same_as_sqlite(function(w)
        local log, gate = S.tmpname(), S.tmpname()
        local h = w:execute(name, { log = log, gate = gate }, { id = "c" })
        -- the sibling parked on its step: then the step fails
        S.eventually(function() return #lines(log) == 1 end, nil, "the sibling's step to start")
        local f = assert(io.open(gate, "w"))
        f:close()
        return h
      end)
      assert.equals("EGATED", got.err.code)
      local root = name == "tree.cascade" and "c" or "c/1/1"
      assert.equals("failed", got.tree[root].status)
      assert.equals("cancelled", got.tree[root .. "/1/1"].status) -- the sibling child workflow
      assert.equals("cancelled", got.tree[root .. "/1/1/1/1"].status) -- its step
      local h = got.tree[root].history
      assert.same({ "workflow.started", "child.started", "activity.scheduled", "workflow.failed" }, types(h))
      settled(sch)
    end
  end)

  it("a run's timeout counts parked time: a run parked past it ends ETIMEDOUT on another node", function()
    local a, sch = world()
    local h = a:execute("wf.deadline", { queue = "nobody" })
    S.eventually(function()
      return sql(sch, "select wf_where from {S}.tasks where id = $1", h.id)[1].wf_where == 1
    end, nil, "the run to park")
    assert.is_true(sql(sch, "select run_by > started_at as armed from {S}.tasks where id = $1", h.id)[1].armed)
    a:shutdown() -- nobody holds the run now: only the leader's sweep can end it
    local b = athena.World.new {
      backend = athena.PostgresBackend.new { url = URL, nodeId = "b-" .. sch, schema = sch, pollInterval = 200 },
      modules = { "fixtures.wf_jobs" }, minWorkers = 1, maxWorkers = 1, taskQueues = { nobody = { workers = 0 } },
      heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
    }
    b:register(wf.all())
    b:start()
    worlds[#worlds + 1] = b
    local q = S.eventually(function()
      local q = b:query(h.id)
      return q and q.completedAt and q
    end, nil, "the run to time out")
    assert.equals("failed", q.status)
    assert.equals("ETIMEDOUT", q.error.code)
    assert.matches("exceeded its timeout", q.error.message)
    local row = S.eventually(function() -- the outcome's cycle writes the row
      local row = sql(sch, "select status, run_by is null as cleared from {S}.tasks where id = $1", h.id)[1]
      return row.status == 6 and row
    end, nil, "the row to end failed")
    assert.is_true(row.cleared)
  end)

  it("a step run by another node keeps ctx:run's per-call limits (the row carries them)", function()
    -- node a runs the workflow (queue wfq), node b its step (queue other):
    -- b never saw the call, it reads the limits from the step's row
    local function node(name, serves)
      local w = athena.World.new {
        backend = athena.PostgresBackend.new { url = URL, nodeId = name .. "-wf" .. (schemas + 1), schema = "wf" .. (schemas + 1),
          pollInterval = 200 },
        modules = { "fixtures.wf_jobs" }, minWorkers = 1, maxWorkers = 1,
        taskQueues = { wfq = { workers = serves == "wfq" and 1 or 0 }, other = { workers = serves == "other" and 1 or 0 } },
        heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
      }
      w:register(wf.all())
      w:start()
      worlds[#worlds + 1] = w
      return w
    end
    local a = node("a", "wfq")
    local b = node("b", "other")
    schemas = schemas + 1
    local log = S.tmpname()
    -- wf.slow's definition: 1 attempt, the default 5-minute timeout
    local h = a:execute("wf.limits", { name = "wf.slow", input = { ms = 60000, log = log },
      opts = { timeout = "100ms", retry = { maxAttempts = 2, initialInterval = 1 }, taskQueue = "other" } },
      { taskQueue = "wfq" })
    local r, err = S.result(h)
    assert.is_nil(err)
    assert.equals("ETIMEDOUT", r.code)
    assert.equals(2, r.attempt)
    local step = sql("wf" .. schemas, "select call, attempt from {S}.tasks where parent_id = $1", h.id)
    assert.equals(1, #step)
    assert.equals(2, step[1].attempt)
    assert.equals(100, athena.json.decode(step[1].call).timeout)
    local starts = 0 -- both attempts on b (a serves no "other"), each cut at 100 ms
    for _, l in ipairs(lines(log)) do starts = starts + (l:match("^slow start") and 1 or 0) end
    assert.equals(2, starts)
  end)

  it("cancel of a parked workflow is accepted; it and its children end cancelled, as on SQLite", function()
    local _, sch = same_as_sqlite(function(w)
      local log = S.tmpname()
      local h = w:execute("wf.hold", { log = log }, { id = "hold" })
      S.eventually(function() return #lines(log) == 2 end, nil, "both slow steps to start")
      assert.is_true(h:cancel())
      return h
    end)
    settled(sch)
  end)
end)
