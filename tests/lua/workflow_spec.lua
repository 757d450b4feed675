-- Workflows and sagas (SEMANTICS §8, §9): replayed segments, parking,
-- compensate / cascade / retry / ignore, durable timers, history, children,
-- non-determinism.
local athena = require "athena"
local S = require "fixtures.support"
local wf = require "fixtures.wf_jobs"

local tmpname = S.tmpname

local function lines(path)
  local out = {}
  for l in (S.readfile(path) or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function count(path, line)
  local n = 0
  for _, l in ipairs(lines(path)) do n = n + (l == line and 1 or 0) end
  return n
end

-- How many of the tasks of handles hs each worker runs, sorted, once
-- ready(query) holds for all of them (their workers known).
local function per_worker(hs, ready, what)
  local per = {}
  S.eventually(function()
    per = {}
    for _, h in ipairs(hs) do
      local q = h:query()
      if not (q.workerId and ready(q)) then return false end
      per[q.workerId] = (per[q.workerId] or 0) + 1
    end
    return true
  end, S.WAIT, what)
  local counts = {}
  for _, n in pairs(per) do counts[#counts + 1] = n end
  table.sort(counts)
  return counts
end

local function types(history)
  local out = {}
  for _, ev in ipairs(history) do out[#out + 1] = ev.type end
  return out
end

local function started(cfg)
  local w = S.world(S.config(cfg and cfg or {}))
  return w
end

local function world(cfg)
  local c = { modules = { "fixtures.wf_jobs" }, minWorkers = 2, maxWorkers = 2 }
  for k, v in pairs(cfg or {}) do c[k] = v end
  local w = started(c)
  w:register(wf.all())
  w:start()
  return w
end

describe("workflows", function()
  after_each(function()
    S.cleanup()
    S.cleanup_files()
  end)

  describe("the order saga", function()
    it("completes: every step runs once, no compensation, history and children recorded", function()
      local w = world()
      local log = tmpname()
      local h = w:execute("wf.order", { log = log, order = 7 })
      local r, err = S.result(h)
      assert.is_nil(err)
      assert.same({ "charge ok 7", "reserve ok 7", "ship ok 7" }, r)
      assert.same({ "charge 7", "reserve 7", "ship 7" }, lines(log))
      local q = h:query()
      assert.equals("workflow", q.kind)
      assert.equals("completed", q.status)
      assert.same({ "workflow.started", "activity.scheduled", "activity.completed", "compensation.added",
        "activity.scheduled", "activity.completed", "compensation.added", "activity.scheduled",
        "activity.completed", "workflow.completed" }, types(q.history))
      assert.same({ h.id .. "/1/1", h.id .. "/1/3", h.id .. "/1/5" }, q.children)
      local a = w:query(h.id .. "/1/1")
      assert.equals(h.id, a.parentId)
      assert.equals("activity", a.kind)
      assert.equals("charge ok 7", q.history[3].result)
    end)

    -- wf.order's definition allows 2 runs: under compensate the failed run is
    -- re-run once (replaying the completed steps), then compensated.
    it("compensate: refunds and releases LIFO, ends compensated, result() is ECOMPENSATED", function()
      local w = world()
      local log = tmpname()
      local h = w:execute("wf.order", { log = log, order = 1, fail = "ship" },
        { failureStrategy = "compensate" })
      local r, err = S.result(h)
      assert.is_nil(r)
      assert.equals("ECOMPENSATED", err.code)
      assert.equals("ship failed", err.message)
      assert.equals("ESHIP", err.cause.code)
      assert.same({}, err.details.failed)
      assert.equals("compensated", h:status())
      assert.same({ "charge 1", "reserve 1", "ship 1", "ship 1", "release 1", "refund 1" }, lines(log))
      local q = h:query()
      assert.truthy(w:query(h.id .. "/comp/1"))
      assert.equals("completed", w:query(h.id .. "/comp/2").status)
      local t = types(q.history)
      assert.equals("workflow.compensated", t[#t])
      assert.is_false(h:cancel()) -- terminal
    end)

    it("compensate: a failing compensation is recorded and the next still runs", function()
      local w = world()
      local log = tmpname()
      local h = w:execute("wf.order", { log = log, order = 2, fail = "ship", failComp = "release" },
        { failureStrategy = "compensate" })
      local _, err = S.result(h)
      assert.equals("ECOMPENSATED", err.code)
      assert.same({ 2 }, err.details.failed) -- release was registered second
      assert.same({ "charge 2", "reserve 2", "ship 2", "ship 2", "release 2", "refund 2" }, lines(log))
      local failed
      for _, ev in ipairs(h:query().history) do
        if ev.type == "compensation.failed" then failed = ev end
      end
      assert.equals(2, failed.index)
      assert.equals("ECOMP", failed.error.code)
    end)

    it("compensate: only the compensations registered before the failure run", function()
      local w = world()
      local log = tmpname()
      local h = w:execute("wf.order", { log = log, order = 3, fail = "reserve" },
        { failureStrategy = "compensate" })
      local _, err = S.result(h)
      assert.equals("ECOMPENSATED", err.code)
      assert.same({ "charge 3", "reserve 3", "reserve 3", "refund 3" }, lines(log))
    end)

    it("retry: the re-run replays completed steps and executes the failed one again", function()
      local w = world()
      local log = tmpname()
      local h = w:execute("wf.order", { log = log, order = 4, fail = "ship" })
      local _, err = S.result(h)
      assert.equals("ESHIP", err.code)
      assert.equals("failed", h:status())
      assert.equals(2, h:query().attempt)
      assert.same({ "charge 4", "reserve 4", "ship 4", "ship 4" }, lines(log))
      local t = types(h:query().history)
      assert.truthy(S.contains(t, "workflow.retrying"))
      assert.is_false(S.contains(t, "compensation.started"))
    end)

    it("ignore: ctx:run returns nil, err and the workflow decides", function()
      local w = world()
      local log = tmpname()
      local r, err = S.result(w:execute("wf.ignoring", { log = log }))
      assert.is_nil(err)
      assert.equals("ECHARGE", r.code)
      assert.equals("ship ok 2", r.after)
    end)

    it("quarantine: the failed workflow is a dead letter", function()
      local w = world()
      local h = w:execute("wf.order", { log = tmpname(), order = 5, fail = "charge" },
        { failureStrategy = "quarantine" })
      local _, err = S.result(h)
      assert.equals("ECHARGE", err.code)
      assert.equals("quarantined", h:status())
      assert.truthy(S.contains(S.ids(w:getQuarantined()), h.id))
    end)
  end)

  it("a re-run gets a new runId and succeeds without re-running completed steps", function()
    local w = world()
    local log, gate = tmpname(), tmpname()
    local h = w:execute("wf.rerun", { log = log, gate = gate })
    local r, err = S.result(h)
    assert.is_nil(err)
    assert.same({ "charge 1", "flaky", "flaky" }, lines(log))
    assert.equals("charge ok 1", r[1])
    local runIds = {}
    for _, ev in ipairs(h:query().history) do
      if ev.type == "workflow.started" then runIds[#runIds + 1] = ev.runId end
    end
    assert.equals(2, #runIds)
    assert.are_not.equal(runIds[1], runIds[2])
    assert.equals(runIds[2], r[3])
    -- each outcome is recorded with the run and command it answers (the
    -- activity's worker builds a completion, the exchange adds both)
    local outcomes = {}
    for _, ev in ipairs(h:query().history) do
      if ev.type == "activity.completed" or ev.type == "activity.failed" then
        outcomes[#outcomes + 1] = { ev.type, ev.run, ev.seq, ev.result or ev.error.code }
      end
    end
    assert.same({ { "activity.completed", 1, 1, "charge ok 1" }, { "activity.failed", 1, 2, "EFLAKY" },
      { "activity.completed", 2, 2, "ok" } }, outcomes)
  end)

  it("cascade across three levels: the leaf's failure fails mid and top, siblings are cancelled", function()
    local w = world()
    local log = tmpname()
    local gate = tmpname() -- made once the sibling runs
    local h = w:execute("wf.top", { log = log, gate = gate })
    -- the leaf's activity fails once top's other child runs its activity
    -- (else, under load, the cascade could cancel that child before it
    -- started one)
    S.eventually(function() return count(log, "slow start sibling") == 1 end, S.WAIT, "the sibling's activity to run")
    local f = assert(io.open(gate, "w"))
    f:close()
    local _, err = S.result(h)
    assert.equals("EBOOM", err.code)
    assert.equals("failed", h:status())
    local top = h:query()
    local mid = w:query(top.children[1])
    local slowwf = w:query(top.children[2])
    assert.equals("wf.mid", mid.name)
    assert.equals("failed", mid.status)
    assert.equals("EBOOM", mid.error.code)
    -- the leaf failed, mid's other child (a 10-minute sleeper) was cancelled.
    -- A cancel reaches a running segment at its next yield (SEMANTICS §8), so
    -- a sibling whose first segment was still running ends a moment later.
    local leaf = w:query(mid.children[1])
    assert.equals("failed", leaf.status)
    local function ends_cancelled(id, what)
      return S.eventually(function()
        local q = w:query(id)
        return q and q.status == "cancelled" and q
      end, S.WAIT, what)
    end
    assert.equals("wf.sleeper", ends_cancelled(mid.children[2], "mid's sleeper to be cancelled").name)
    -- top's other child and its running activity were cancelled
    assert.equals("wf.slowwf", ends_cancelled(top.children[2], "top's other child to be cancelled").name)
    local slow = S.eventually(function()
      local q = w:query(slowwf.children[1])
      return q and q.status == "cancelled" and q
    end, S.WAIT, "the sibling's activity to be cancelled")
    assert.equals("wf.slow", slow.name)
    assert.equals(0, count(log, "slow end sibling"))
  end)

  it("a child's result is recorded through its handle; getMetadata describes the run", function()
    local w = world()
    local log = tmpname()
    local h = w:execute("wf.parentOk", { log = log, order = 9, childId = "child-of-9" })
    local r, err = S.result(h)
    assert.is_nil(err)
    assert.equals("child-of-9", r.child)
    assert.same({ "charge ok 9", "reserve ok 9", "ship ok 9" }, r.r)
    assert.equals(h.id, w:query("child-of-9").parentId)
    assert.equals(h.id, r.meta.workflowId)
    assert.equals("wf.parentOk", r.meta.name)
    assert.equals(1, r.meta.attempt)
    assert.equals("string", type(r.meta.runId))
    local t = types(h:query().history)
    assert.truthy(S.contains(t, "child.started"))
    assert.truthy(S.contains(t, "child.completed"))
  end)

  it("the operations API shows a workflow's kind and history, and its activities' parent", function()
    local w = world()
    local h = w:execute("wf.order", { log = tmpname(), order = 11 })
    S.result(h)
    local s = w:serve { port = 0 }
    local function get(id)
      local res = assert(athena.http.request { url = s.url .. "/api/tasks/" .. id })
      assert.equals(200, res.status)
      return athena.json.decode(res.body)
    end
    local t = get(h.id)
    assert.equals("workflow", t.kind)
    assert.equals("workflow.started", t.history[1].type)
    assert.equals("workflow.completed", t.history[#t.history].type)
    local a = get(h.id .. "%2F1%2F1")
    assert.equals("activity", a.kind)
    assert.equals(h.id, a.parentId)
  end)

  it("cancel stops a parked workflow at once, and its running children", function()
    local w = world()
    local log = tmpname()
    local h = w:execute("wf.hold", { log = log }) -- parks on its child and its activity
    local top = S.eventually(function()
      local q = h:query()
      return #q.children == 2 and count(log, "slow start own") == 1 and count(log, "slow start sibling") == 1
        and q
    end, S.WAIT, "the child, its activity and the workflow's own to start")
    assert.is_true(h:cancel())
    local _, err = S.result(h)
    assert.equals("ECANCELED", err.code)
    for _, id in ipairs(top.children) do
      S.eventually(function() return w:query(id).status == "cancelled" end, S.WAIT, id .. " cancelled")
    end
    local child = w:query(top.children[1])
    S.eventually(function() return w:query(child.children[1]).status == "cancelled" end, S.WAIT,
      "the child's activity cancelled")
    assert.equals(0, count(log, "slow end own"))
  end)

  it("non-determinism: a replay that issues another command fails with ENONDETERMINISM, not retried", function()
    local w = world { workflowCache = 0 } -- every segment replays
    local h = w:execute("wf.nondet", { flip = tmpname() })
    local _, err = S.result(h)
    assert.equals("ENONDETERMINISM", err.code)
    assert.matches("wf.ship", err.message, 1, true)
    assert.equals(1, h:query().attempt)
    -- with the parked coroutine kept, nothing is replayed: the run goes on
    local w2 = world()
    assert.equals("done", S.result(w2:execute("wf.nondet", { flip = tmpname() })))
  end)

  it("workflow code may not do I/O; bad command arguments raise clear errors", function()
    local w = world()
    local _, err = S.result(w:execute("wf.io"))
    assert.equals("EINVAL", err.code)
    assert.matches("not allowed in workflow code", err.message, 1, true)
    _, err = S.result(w:execute("wf.dbio"))
    assert.equals("EINVAL", err.code)
    assert.matches("not allowed in workflow code", err.message, 1, true)
    local r, err = S.result(w:execute("wf.badcalls"))
    assert.is_nil(err)
    assert.same({ "EINVAL", "ENOTFOUND", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL",
      "EINVAL", "EINVAL", "EINVAL", "EINVAL", "EINVAL" }, r)
  end)

  it("a ctx:run refused for its input takes no command number, in every persistence mode", function()
    -- memory and hybrid encode the input in the command's one call, file
    -- mode before it: the history must number the next command alike, or a
    -- workflow parked under one mode would not replay under the other
    for _, mode in ipairs { "memory", "hybrid", "file" } do
      local w = world { persistence = mode, persistencePath = mode ~= "memory" and tmpname() or nil }
      local h = w:execute("wf.badinput")
      local r, err = S.result(h)
      assert.is_nil(err, mode)
      assert.same({ "EINVAL", "charge ok 5" }, r, mode)
      local seqs = {}
      for _, ev in ipairs(h:query().history) do
        if ev.seq then seqs[#seqs + 1] = ev.type .. " " .. ev.seq end
      end
      assert.same({ "activity.scheduled 1", "activity.completed 1" }, seqs, mode)
      w:shutdown()
    end
  end)

  it("children are not capped: query gives the first 1000 and a cursor, world:children pages the rest", function()
    local w = world()
    local h = w:execute("wf.fanout", { n = 1205 })
    assert.equals(1205, S.result(h))
    local q = h:query()
    assert.equals(1000, #q.children)
    assert.equals(h.id .. "/1/1", q.children[1])
    assert.equals(h.id .. "/1/1000", q.children[1000])
    assert.is_not_nil(q.childrenNext)
    local page = assert(w:children(h.id, { after = q.childrenNext }))
    assert.equals(205, #page.ids)
    assert.equals(h.id .. "/1/1001", page.ids[1])
    assert.equals(h.id .. "/1/1205", page.ids[205])
    assert.is_nil(page.next)
    -- small pages walk the same list
    local all, after = {}, nil
    repeat
      page = w:children(h.id, { after = after, limit = 100 })
      for _, id in ipairs(page.ids) do all[#all + 1] = id end
      after = page.next
    until after == nil
    assert.equals(1205, #all)
    for i = 1, 1205 do assert.equals(h.id .. "/1/" .. i, all[i]) end
    -- an activity owns nothing; bad options are refused; unknown ids are ENOTFOUND
    assert.same({}, w:children(all[1]).ids)
    S.raises("EINVAL", w.children, w, h.id, { limit = 0 })
    S.raises("EINVAL", w.children, w, h.id, { limit = 10001 })
    S.raises("EINVAL", w.children, w, h.id, { after = "x" })
    S.raises("EINVAL", w.children, w, h.id, { page = 1 })
    local none, err = w:children("nope")
    assert.is_nil(none)
    assert.equals("ENOTFOUND", err.code)
  end)

  describe("the sticky cache: parked coroutines stay on their worker", function()
    -- A history without what differs between two executions: times, run
    -- ids, inputs (rerun's gate is a fresh file per world).
    local function shape(history)
      local out = {}
      for _, ev in ipairs(history) do
        local e = {}
        for k, v in pairs(ev) do
          if k ~= "at" and k ~= "runId" and k ~= "fireAt" and k ~= "input" then e[k] = v end
        end
        out[#out + 1] = e
      end
      return out
    end

    -- Runs the same workflows in a world with the given cache size; returns
    -- their results and history shapes by key, and the handler starts.
    local function run_all(cache)
      local w = world { workflowCache = cache }
      local log = tmpname()
      local hs = {
        counted = w:execute("wf.counted", { log = log, tag = "c", steps = 5 }, { id = "counted" }),
        order = w:execute("wf.order", { order = 7 }, { id = "order" }),
        comp = w:execute("wf.order", { order = 1, fail = "ship" }, { id = "comp", failureStrategy = "compensate" }),
        rerun = w:execute("wf.rerun", { gate = tmpname() }, { id = "rerun" }),
        ignoring = w:execute("wf.ignoring", {}, { id = "ignoring" }),
      }
      local out = {}
      for k, h in pairs(hs) do
        local r, err = S.result(h)
        local q = h:query()
        out[k] = { r = r, code = err and err.code, status = q.status, history = shape(q.history),
          children = q.children }
      end
      out.counted.r.pick = nil
      out.rerun.r[3] = nil -- its runId, also in its last event
      out.rerun.history[#out.rerun.history].result[3] = nil
      return out, count(log, "start c")
    end

    it("cache on and cache 0 give the same results and histories; the cache runs each handler once", function()
      local on, starts_on = run_all(1000)
      local off, starts_off = run_all(0)
      for k in pairs(off) do
        for i = 1, math.max(#off[k].history, #on[k].history) do
          assert.same(off[k].history[i], on[k].history[i], k .. " event " .. i)
        end
      end
      assert.same(off, on)
      assert.equals("completed", on.counted.status)
      assert.equals("compensated", on.comp.status)
      assert.equals(1, starts_on) -- one run, never replayed
      -- replayed: one start per segment (5 steps, the child, the timer, the start)
      assert.equals(8, starts_off)
    end)

    it("a workflow cancelled while parked has its kept coroutine closed soon after (its __close runs)", function()
      local w = world { minWorkers = 1, maxWorkers = 1 } -- one cache
      local log = tmpname()
      local h = w:execute("wf.closing", { log = log })
      -- one worker: its step starts once the workflow's segment parked
      S.eventually(function() return count(log, "slow start nil") == 1 end, S.WAIT, "the workflow to park")
      assert.is_true(h:cancel())
      assert.equals(0, count(log, "closed")) -- kept, not closed by the park
      -- others park on the same worker: its cache sweeps out the ended one
      assert.equals(20 * #"charge ok 1" + 11, S.result(w:execute("wf.counted", { steps = 20 })).sum)
      S.eventually(function() return count(log, "closed") == 1 end, S.WAIT,
        "the cancelled workflow's coroutine to be closed")
    end)

    it("a cache of one: parked workflows evict each other and replay, with the same outcomes", function()
      local w = world { workflowCache = 1 }
      local log = tmpname()
      local hs = {}
      for i = 1, 6 do
        hs[i] = w:execute("wf.counted", { log = log, tag = "c", steps = 3 })
      end
      for _, h in ipairs(hs) do
        local r, err = S.result(h)
        assert.is_nil(err)
        assert.equals(3 * #"charge ok 1", r.sum)
        assert.equals("reserve ok 3", r.child)
      end
      local starts = count(log, "start c")
      assert.is_true(starts >= 6 and starts <= 6 * 6, tostring(starts))
    end)
  end)

  describe("a step's activity runs on its workflow's worker when it comes next in the queue", function()
    -- The workers of a workflow's steps, and of the workflow (its segments
    -- all run on one worker: the cache keeps its coroutine there).
    local function workers(w, h)
      local q = h:query()
      local out = {}
      for i, id in ipairs(q.children) do out[i] = w:query(id).workerId end
      return q.workerId, out
    end

    it("each step's activity runs where the workflow runs, with the results and history of a replay", function()
      local runs = {}
      for _, cache in ipairs { 1000, 0 } do
        local w = world { workflowCache = cache } -- two workers
        local log = tmpname()
        local h = w:execute("wf.steps", { n = 20, log = log })
        local r, err = S.result(h)
        assert.is_nil(err)
        local q = h:query()
        local events = {}
        for _, ev in ipairs(q.history) do
          if ev.type == "activity.completed" then events[#events + 1] = { run = ev.run, seq = ev.seq } end
        end
        runs[cache] = { r = r, history = types(q.history), events = events }
        assert.equals(20, #lines(log)) -- each step ran once
        if cache > 0 then
          -- nothing woke the other worker for a step: its worker claimed it
          local home, steps = workers(w, h)
          for i = 1, 20 do assert.equals(home, steps[i], "step " .. i) end
        end
        w:shutdown()
      end
      assert.same(runs[0], runs[1000])
      local t = runs[1000].history
      assert.equals(2 + 2 * 20, #t)
      for i = 1, 20 do
        assert.equals("activity.scheduled", t[2 * i], i)
        assert.equals("activity.completed", t[2 * i + 1], i)
      end
      -- each completion names the command it answers and the run (the
      -- exchange appends both to what the step's worker built)
      for i, ev in ipairs(runs[1000].events) do
        assert.same({ run = 1, seq = i }, ev)
      end
      assert.equals(20, #runs[1000].events)
    end)

    it("a step on another queue goes through it, and resumes the workflow where it is kept", function()
      local w = world { taskQueues = { other = { workers = 1 } } }
      local h = w:execute("wf.steps", { n = 10, queue = "other" })
      local r, err = S.result(h)
      assert.is_nil(err)
      assert.equals("charge ok 1", r:match("^[^,]+"))
      local home, steps = workers(w, h)
      for i = 1, 10 do assert.not_equals(home, steps[i], "step " .. i) end
      local other = w:query(h:query().children[1])
      assert.equals("other", other.taskQueue)
      -- the same history as with every segment replayed
      local w0 = world { taskQueues = { other = { workers = 1 } }, workflowCache = 0 }
      local h0 = w0:execute("wf.steps", { n = 10, queue = "other" })
      assert.equals(r, (S.result(h0)))
      assert.same(types(h0:query().history), types(h:query().history))
    end)

    it("a step goes ahead of older tasks of its priority (eager dispatch), not ahead of a higher priority", function()
      for _, prio in ipairs { false, -1 } do
        -- one slot, held by a gate while the queue fills
        local w = world { minWorkers = 1, maxWorkers = 1, taskQueues = { default = { concurrency = 1 } } }
        local gate = tmpname()
        local g = w:execute("tree.gated", { gate = gate })
        S.eventually(function() return g:query().status == "running" end, S.WAIT, "the gate to hold the slot")
        local h = w:execute("wf.ordinals", { n = 3, priority = prio or nil })
        local inputs = {}
        for i = 1, 500 do inputs[i] = i end
        local older = w:executeMany("wf.ordinal", inputs)
        local f = assert(io.open(gate, "w"))
        f:close()
        local r, err = S.result(h)
        assert.is_nil(err)
        for i = 1, 3 do
          if prio then -- below the queue's 500 tasks of priority 0: after them all
            assert.is_true(r[i] > 500, "step " .. i .. " ran " .. r[i] .. "th")
          else -- at most the batches claimed ahead before each park ran first
            assert.is_true(r[i] < 250, "step " .. i .. " ran " .. r[i] .. "th")
          end
        end
        assert.is_nil(select(2, S.result(older[500])))
        w:shutdown()
      end
    end)

    it("workflows started together are shared out over the queue's workers, not all taken by the first", function()
      -- 8 slots each, room for all 8 on one worker; each workflow's step
      -- holds a slot (its sleep never ends: the clock is manual, and a
      -- workflow left for another worker is never taken past the wait)
      local w = world { clock = "manual", taskQueues = { default = { concurrency = 8 } } }
      local inputs = {}
      for i = 1, 8 do inputs[i] = { tag = i } end
      local hs = w:executeMany("wf.slowwf", inputs)
      local counts = per_worker(hs, function(q)
        local step = q.children[1] and w:query(q.children[1])
        return step and step.status == "running"
      end, "every workflow's step to run")
      assert.same({ 4, 4 }, counts)
      w:shutdown { timeout = 0 }
    end)

    it("a worker past its share still starts a new workflow when the other worker's slots are all held", function()
      -- 3 slots each; 4 sleeps that never end (the clock is manual) hold
      -- all of one worker's slots and one of the other's. The clock then
      -- moves past the balance's wait, so the full worker has not claimed
      -- for longer than it, and no round ends by time after that: only
      -- the rule "no other worker will claim soon" lets the free worker
      -- start the second of two new workflows past its share of one.
      local w = world { clock = "manual", taskQueues = { default = { concurrency = 3 } } }
      local split
      for _ = 1, 5 do -- one worker usually claims 3 of the 4 at once; else again
        local hs = w:executeMany("wf.slow", { { ms = 600000 }, { ms = 600000 }, { ms = 600000 }, { ms = 600000 } })
        split = per_worker(hs, function(q) return q.status == "running" end, "the sleeps to run")
        if split[1] == 1 and split[2] == 3 then break end
        for _, h in ipairs(hs) do h:cancel() end
        for _, h in ipairs(hs) do S.result(h) end
      end
      assert.same({ 1, 3 }, split)
      w:advance(100) -- past the balance's 50 ms
      local wfs = w:executeMany("wf.slowwf", { { tag = 1 }, { tag = 2 } })
      S.eventually(function()
        for _, h in ipairs(wfs) do
          local step = h:query().children[1]
          if not (step and w:query(step).status == "running") then return false end
        end
        return true
      end, S.WAIT, "both workflows' steps to run")
      w:shutdown { timeout = 0 }
    end)

    it("no other worker takes a step before its workflow's park is published, however busy the queue", function()
      -- the other worker keeps claiming: the test enqueues a task whenever
      -- it sleeps, and each claim takes what is ready, up to 4
      local w = world { taskQueues = { default = { concurrency = 4 } } }
      local h = w:execute("wf.steps", { n = 200 })
      local feed = 0
      while h:status() ~= "completed" and h:status() ~= "failed" do
        w:execute("wf.ordinal", feed)
        feed = feed + 1
      end
      local r, err = S.result(h)
      assert.is_nil(err)
      assert.equals(200, select(2, r:gsub("charge ok", "")))
      local home, steps = workers(w, h)
      local away, where = 0, {}
      for i = 1, 200 do
        away = away + (steps[i] ~= home and 1 or 0)
        where[i] = steps[i] == home and "." or "x" -- which steps ran elsewhere: one move, or scattered
      end
      assert.equals(0, away, "steps run by another worker while " .. feed .. " tasks were fed: " ..
        table.concat(where))
    end)

    it("a step stays reserved for its workflow's worker while that worker runs a long task after the park", function()
      -- Worker X spins in wf.cpu. Worker Y spins too, shorter, while a
      -- workflow and a third wf.cpu are queued: Y's next exchange claims
      -- both, runs the segment (it parks, its step started), then spins.
      -- A task that runs long has what ended before it published (the
      -- watchdog's hook), and X, done first, claims again. The step must
      -- wait for Y: before, the park was published with the rest and X ran
      -- the step.
      local w = world { taskQueues = { default = { concurrency = 2 } } }
      local running = function(h) return function() return h:status() == "running" end end
      local x = w:execute("wf.cpu", { ms = 1200 })
      S.eventually(running(x), S.WAIT, "one worker to spin")
      local y = w:execute("wf.cpu", { ms = 400 })
      S.eventually(running(y), S.WAIT, "the other worker to spin")
      local h = w:execute("wf.one", { log = tmpname() })
      local after = w:execute("wf.cpu", { ms = 2000 })
      local r, err = S.result(h)
      assert.is_nil(err)
      assert.equals("charge ok 1", r)
      local q = h:query()
      local wx, wy = w:query(x.id).workerId, w:query(y.id).workerId
      assert.are_not.equal(wx, wy)
      assert.equals(wy, q.workerId) -- the workflow and the long task went to Y together
      assert.equals(wy, w:query(after.id).workerId)
      assert.equals(wy, w:query(q.children[1]).workerId, "the step ran on the worker that was free first")
      assert.equals(1200, (S.result(x)))
    end)

    -- A step enters the world in the exchange that publishes its
    -- segment's park, not in ctx:run (one critical section per step). One
    -- worker of two slots: it holds (wf.gated) while a workflow and a
    -- second wf.gated are queued; released, its exchange claims both, runs
    -- the segment (it parks, its step made), then holds again, so its next
    -- exchange waits. Meanwhile a caller takes the step's id.
    local function step_id_taken(take)
      local w = world { minWorkers = 1, maxWorkers = 1, taskQueues = { default = { concurrency = 2 } } }
      local f0, r0, f1, r1 = tmpname(), tmpname(), tmpname(), tmpname()
      local y = w:execute("wf.gated", { started = f0, release = r0 })
      S.eventually(function() return S.readfile(f0) ~= nil end, S.WAIT, "the worker to hold")
      local log = tmpname()
      local h = w:execute("wf.one", { log = log })
      local after = w:execute("wf.gated", { started = f1, release = r1 })
      assert(io.open(r0, "w")):close()
      S.eventually(function() return S.readfile(f1) ~= nil end, S.WAIT, "the worker to hold again")
      local id = h.id .. "/1/1"
      local none = w:query(id)
      assert.is_nil(none, "the step is not in the world before its segment's exchange")
      local taken = take(w, id, log)
      assert(io.open(r1, "w")):close()
      assert.equals("held", (S.result(y)))
      assert.equals("held", (S.result(after)))
      return h, taken, log
    end

    it("a step whose id a caller took meanwhile fails its workflow with EINVAL; the caller's task runs", function()
      for _, case in ipairs {
        { "charge ok 7", function(w, id, log) return w:execute("wf.charge", { order = 7, log = log }, { id = id }) end },
        { "mine", function(w, id) return w:execute("wf.note", { tag = "mine" }, { id = id }) end },
      } do
        local h, taken = step_id_taken(case[2])
        assert.equals(case[1], (S.result(taken)))
        local _, err = S.result(h)
        assert.equals("EINVAL", err.code)
        assert.matches("the id of its step is in use by a task of another owner", err.message, 1, true)
        assert.is_false(err.retryable)
        assert.same({}, h:query().children, "the caller's task is not the workflow's")
      end
    end)

    it("a step whose id an unfinished task of a caller took before it started fails its workflow with EINVAL", function()
      -- (it used to wait forever: that task never resumes the workflow.)
      -- memory: the step is deferred, the exchange refuses it; hybrid: the
      -- caller's id makes the workflow look in the store, so ctx:run takes
      -- the lock itself and execute refuses it
      for _, mode in ipairs { "memory", "hybrid" } do
        local w = world { persistence = mode, persistencePath = tmpname() }
        local gate, log = tmpname(), tmpname()
        local h = w:execute("wf.gated2", { gate = gate, log = log })
        S.eventually(function() return #h:query().children == 1 end, S.WAIT, "the first step to start")
        local taken = w:execute("wf.charge", { order = 9, log = log }, { id = h.id .. "/1/2", delay = 60000 })
        assert(io.open(gate, "w")):close()
        local _, err = S.result(h)
        assert.equals("EINVAL", err.code)
        assert.matches("is in use by a task of another owner", err.message, 1, true)
        assert.equals("scheduled", taken:status()) -- the caller's, untouched
        assert.is_nil(S.readfile(log))
        w:shutdown()
      end
    end)

    it("cancelling the workflow while its step runs on its worker cancels the step; nothing is recorded after", function()
      local w = world()
      local log = tmpname()
      local h = w:execute("wf.closing", { log = log })
      S.eventually(function() return count(log, "slow start nil") == 1 end, S.WAIT, "the step to start")
      local home, steps = workers(w, h)
      assert.equals(home, steps[1]) -- on the fast path
      assert.is_true(h:cancel())
      local _, err = S.result(h)
      assert.equals("ECANCELED", err.code)
      local step = h:query().children[1]
      S.eventually(function() return w:query(step).status == "cancelled" end, S.WAIT, "the step cancelled")
      assert.same({ "workflow.started", "activity.scheduled", "cancel.requested", "workflow.cancelled" },
        types(h:query().history))
      assert.equals(0, count(log, "slow end nil"))
    end)

    it("a cancel while a segment runs is recorded after the events that segment records", function()
      local w = world { cancelGrace = 300 } -- the segment records its marker well within it
      local h = w:execute("wf.busy")
      S.eventually(function()
        for _, wk in ipairs(w:getWorkers()) do
          for _, r in ipairs(wk.running) do
            if r.id == h.id then return true end
          end
        end
        return false
      end, S.WAIT, "the segment to run")
      assert.is_true(h:cancel())
      local _, err = S.result(h)
      assert.equals("ECANCELED", err.code)
      assert.same({ "workflow.started", "marker", "cancel.requested", "workflow.cancelled" },
        types(h:query().history))
    end)

    it("a step that fails and is retried completes once, and its workflow goes on", function()
      local w = world()
      local log = tmpname()
      local h = w:execute("wf.retried", { log = log })
      local r, err = S.result(h)
      assert.is_nil(err)
      assert.same({ "charge ok 1", "attempt 2", "charge ok 3" }, r)
      assert.same({ "second 1", "second 2" }, lines(log))
      local q = h:query()
      assert.equals(2, w:query(q.children[2]).attempt)
      assert.same({ "workflow.started", "activity.scheduled", "activity.completed", "activity.scheduled",
        "activity.completed", "activity.scheduled", "activity.completed", "workflow.completed" }, types(q.history))
      assert.equals("attempt 2", q.history[5].result)
    end)

    it("a step never goes ahead of a queued task of a higher priority", function()
      -- one slot: the park frees it, and the queue decides what takes it
      local w = world { minWorkers = 1, maxWorkers = 1, taskQueues = { default = { concurrency = 1 } } }
      local log = tmpname()
      assert.equals("low", S.result(w:execute("wf.prio", { log = log })))
      assert.same({ "high", "low" }, lines(log))
    end)
  end)

  describe("per-call limits of ctx:run override the definition's for that call", function()
    local function limits(w, name, input, opts)
      local h = w:execute("wf.limits", { name = name, input = input, opts = opts })
      local r, err = S.result(h)
      assert.is_nil(err)
      return r, h
    end

    it("timeout and retry: each attempt is cut at the call's timeout, as often as its retry says", function()
      local w = world()
      local log = tmpname()
      -- wf.slow's definition: 1 attempt, the default 5-minute timeout
      local r, h = limits(w, "wf.slow", { ms = 60000, log = log },
        { timeout = "100ms", retry = { maxAttempts = 2, initialInterval = 1 } })
      assert.equals("ETIMEDOUT", r.code)
      assert.equals(2, r.attempt)
      assert.equals(2, count(log, "slow start nil"))
      -- recorded with the command, normalised (ms), so a replay sees what ran
      local sched
      for _, ev in ipairs(h:query().history) do
        if ev.type == "activity.scheduled" then sched = ev end
      end
      assert.equals(100, sched.limits.timeout)
      assert.equals(2, sched.limits.retry.maxAttempts)
      assert.equals(2, w:query(sched.taskId).attempt)
    end)

    it("retry: a failing step is tried as often as the call says, not its definition", function()
      local w = world()
      local log = tmpname()
      local r = limits(w, "wf.boom", { log = log }, { retry = { maxAttempts = 3, initialInterval = 1 } })
      assert.equals("EBOOM", r.code)
      assert.equals(3, r.attempt)
      assert.equals(3, count(log, "boom"))
    end)

    it("heartbeatTimeout and scheduleToClose apply to the call's task", function()
      local w = world()
      local r = limits(w, "wf.slow", { ms = 60000 }, { heartbeatTimeout = "100ms" })
      assert.equals("EHEARTBEAT", r.code)
      r = limits(w, "wf.slow", { ms = 60000 }, { scheduleToClose = "150ms" })
      assert.equals("ETIMEDOUT", r.code)
      -- without limits, the definition's apply: it completes
      r = limits(w, "wf.slow", { ms = 1 }, {})
      assert.equals("slept", r.result)
    end)

    it("survive a restart with the task (file mode): the recovered attempt keeps the call's timeout", function()
      local path = tmpname()
      local w = world { persistence = "file", persistencePath = path }
      local log = tmpname()
      local h = w:execute("wf.limits", { name = "wf.slow", input = { ms = 60000, log = log },
        opts = { timeout = "400ms", retry = { maxAttempts = 2, initialInterval = 1 } } }, { id = "lim" })
      S.eventually(function() return count(log, "slow start nil") == 1 end, S.WAIT, "the step to start")
      w:shutdown { timeout = 1 } -- the running attempt is interrupted and requeued (T14)
      local w2 = world { persistence = "file", persistencePath = path }
      local q = S.await(w2, "lim")
      assert.equals("completed", q.status, h.id)
      assert.equals("ETIMEDOUT", q.result.code)
    end)
  end)

  describe("hostile workflow code fails the workflow, not the engine", function()
    local cases = {
      { "spin", "ETIMEDOUT" },
      { "bomb", "ENOMEM" },
      { "raise-number", "EHANDLER", "42" },
      { "raise-table", "EHANDLER" },
      { "bad-result", "EINVAL", "function not serializable" },
      { "yield", "EHANDLER", "coroutine.yield" },
      { "nested", "EHANDLER", "own coroutine" },
      { "sort", "EHANDLER", "yield across" },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " -> " .. c[2], function()
        local w = world { memoryLimit = "32MB" }
        local h = w:execute(c[1] == "spin" and "wf.spin" or "wf.hostile", { mode = c[1] })
        local _, err = S.result(h)
        assert.equals(c[2], err.code, tostring(err))
        if c[3] then assert.matches(c[3], err.message, 1, true) end
        assert.equals("failed", h:status())
        -- the world keeps serving
        local r = S.result(w:execute("wf.order", { order = 1 }))
        assert.equals("ship ok 1", r[3])
      end)
    end
  end)

  it("ctx:sleep is a durable timer on the manual clock: now/random replay unchanged", function()
    local w = world { clock = "manual" }
    local h = w:execute("wf.sleeper", { ms = 60000 })
    local q = S.eventually(function()
      local q = h:query()
      return S.contains(types(q.history), "timer.started") and q
    end, S.WAIT, "the timer to start")
    assert.equals("running", q.status)
    w:advance(59999)
    assert.equals("running", h:status())
    w:advance(1)
    local r, err = S.result(h)
    assert.is_nil(err)
    assert.equals(60000, r.after - r.before)
    assert.is_true(r.random >= 1 and r.random <= 1000000)
  end)

  it("a workflow's timeout counts parked time: the run fails ETIMEDOUT while it waits", function()
    local w = world { clock = "manual" }
    local h = w:execute("wf.limited")
    S.eventually(function() return S.contains(types(h:query().history), "timer.started") end,
      S.WAIT, "the timer to start")
    w:advance(999)
    assert.equals("running", h:status())
    w:advance(1)
    local _, err = S.result(h)
    assert.equals("ETIMEDOUT", err.code)
    assert.equals("failed", h:status())
    -- with a second run allowed, the timed-out run is re-run (and times out again)
    local h2 = w:execute("wf.limited2")
    S.eventually(function() return S.contains(types(h2:query().history), "timer.started") end,
      S.WAIT, "the timer to start")
    w:advance(1000)
    S.eventually(function() return h2:status() == "retrying" or h2:query().attempt == 2 end, S.WAIT, "a re-run")
    w:advance(2)
    S.eventually(function() -- run 2 is claimed: its limit is armed
      for _, ev in ipairs(h2:query().history) do
        if ev.type == "workflow.started" and ev.run == 2 then return true end
      end
    end, S.WAIT, "the second run to start")
    w:advance(1000)
    _, err = S.result(h2)
    assert.equals("ETIMEDOUT", err.code)
    assert.equals(2, h2:query().attempt)
  end)

  it("a workflow parked on a timer resumes after a restart (file mode, manual clock)", function()
    local path = tmpname()
    local w = world { clock = "manual", persistence = "file", persistencePath = path }
    local h = w:execute("wf.sleeper", { ms = 3600000 }, { id = "sleepy" })
    S.eventually(function() return S.contains(types(h:query().history), "timer.started") end,
      S.WAIT, "the timer to start")
    local before = h:query().history
    w:shutdown()
    local w2 = world { clock = "manual", persistence = "file", persistencePath = path }
    local h2 = assert(w2:query("sleepy"))
    assert.equals("running", h2.status)
    local fireAt
    for _, ev in ipairs(before) do if ev.type == "timer.started" then fireAt = ev.fireAt end end
    w2:advance(fireAt - w2:now() + 1)
    local q2 = S.await(w2, "sleepy")
    assert.equals("completed", q2.status)
    assert.equals(before[2].value, q2.result.before) -- the marker recorded before the restart
    assert.equals(3600000, q2.result.after - q2.result.before)
  end)
end)
