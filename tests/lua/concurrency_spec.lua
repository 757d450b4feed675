-- Many tasks across workers, coroutine slots, athena.sleep, routing,
-- fan-out, priority order and delays (DESIGN §2, SEMANTICS §1.1, §5).
local athena = require "athena"
local S = require "fixtures.support"

describe("many tasks", function()
  after_each(S.cleanup)

  it("2,000 tasks over 2 workers all complete with correct results", function()
    local w = S.started { minWorkers = 2 }
    local N = 2000
    local inputs = {}
    for i = 1, N do inputs[i] = i end
    local hs = w:executeMany("square", inputs)
    assert.equals(N, #hs)
    for i, h in ipairs(hs) do
      local r, err = S.result(h)
      assert.is_nil(err)
      assert.equals(i * i, r)
    end
    local m = w:getMetrics()
    assert.equals(N, m.tasks.completed)
    assert.equals(0, m.tasks.failed)
    local ws = w:getWorkers()
    assert.equals(2, #ws)
    assert.equals(N, ws[1].tasksCompleted + ws[2].tasksCompleted)
  end)

  it("a second idle worker takes tasks while the first is busy", function()
    local w = S.started { minWorkers = 2 }
    local inputs = {}
    for i = 1, 20 do inputs[i] = { ms = 20, tag = i } end
    local t0 = athena.now()
    for _, h in ipairs(w:executeMany("nap", inputs)) do S.result(h) end
    local ws = w:getWorkers()
    assert.is_true(ws[1].tasksCompleted > 0 and ws[2].tasksCompleted > 0,
      ("both workers take tasks: %d / %d"):format(ws[1].tasksCompleted, ws[2].tasksCompleted))
    assert.equals(20, ws[1].tasksCompleted + ws[2].tasksCompleted)
    assert.is_true(athena.now() - t0 < 20 * 20, "two workers share 20 x 20 ms")
  end)

  it("each worker has its own Lua state", function()
    -- "order" returns a module-level counter of the state that runs it: per
    -- worker, the values are exactly 1..k (shared state would number 1..20)
    local w = S.started { minWorkers = 1, taskQueues = { pair = { workers = 2, concurrency = 1 } } }
    local inputs = {}
    for i = 1, 20 do inputs[i] = { tag = i, ms = 10 } end
    local seen = {}
    for _, h in ipairs(w:executeMany("order", inputs, { taskQueue = "pair" })) do
      local r = S.result(h)
      local wid = h:query().workerId
      seen[wid] = seen[wid] or {}
      table.insert(seen[wid], r.n)
    end
    local nworkers = 0
    for wid, ns in pairs(seen) do
      nworkers = nworkers + 1
      table.sort(ns)
      for i, n in ipairs(ns) do assert.equals(i, n, wid) end
    end
    assert.equals(2, nworkers)
  end)

  it("1,000 single executes with concurrency 4 all complete, each with its own input", function()
    local w = S.started { minWorkers = 2, taskQueues = { default = { concurrency = 4 } } }
    local hs = {}
    for i = 1, 1000 do hs[i] = w:execute("add", { a = i, b = 1000 - i }) end
    for _, h in ipairs(hs) do assert.equals(1000, S.result(h)) end
    assert.equals(1000, S.sum_workers(w, "tasksCompleted"))
  end)
end)

describe("athena.sleep", function()
  after_each(S.cleanup)

  it("inside a task yields: one worker of concurrency 10 overlaps 10 sleeps of 300 ms", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 10 } } }
    local inputs = {}
    for i = 1, 10 do inputs[i] = { ms = 300, tag = i } end
    local t0 = athena.now()
    local hs = w:executeMany("nap", inputs)
    local rs = {}
    for i, h in ipairs(hs) do rs[i] = S.result(h) end
    local total = athena.now() - t0
    assert.is_true(total < 1500, "10 x 300 ms on one worker took " .. total .. " ms")
    local firstEnd, lastStart = math.huge, 0
    for i, r in ipairs(rs) do
      assert.equals(i, r.tag)
      assert.is_true(r.t1 - r.t0 >= 290, ("task %d slept %d ms of its 300"):format(i, r.t1 - r.t0))
      firstEnd = math.min(firstEnd, r.t1)
      lastStart = math.max(lastStart, r.t0)
      local q = hs[i]:query()
      assert.equals("worker-1", q.workerId)
    end
    assert.is_true(lastStart < firstEnd, "the sleeps overlap")
    -- and by the engine's own records
    local qs = {}
    for i, h in ipairs(hs) do qs[i] = h:query() end
    local minCompleted, maxStarted = math.huge, 0
    for _, q in ipairs(qs) do
      minCompleted = math.min(minCompleted, q.completedAt)
      maxStarted = math.max(maxStarted, q.startedAt)
    end
    assert.is_true(maxStarted < minCompleted)
  end)

  it("inside a task lasts at least the duration", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 10 } } }
    local inputs = {}
    for i = 1, 30 do inputs[i] = { ms = 20 + i % 7, tag = i } end
    for i, h in ipairs(w:executeMany("nap", inputs)) do
      local r = S.result(h)
      assert.is_true(r.t1 - r.t0 >= inputs[i].ms,
        ("athena.sleep(%d) in a task returned after %d ms"):format(inputs[i].ms, r.t1 - r.t0))
    end
  end)

  it("with the default concurrency 1, tasks on one worker run one at a time", function()
    local w = S.started { minWorkers = 1 }
    local hs = w:executeMany("nap", { { ms = 100, tag = 1 }, { ms = 100, tag = 2 }, { ms = 100, tag = 3 } })
    local rs = {}
    for i, h in ipairs(hs) do rs[i] = S.result(h) end
    assert.equals(1, w:getWorkers()[1].concurrency)
    for i = 2, 3 do
      assert.is_true(rs[i].t0 >= rs[i - 1].t1, "task " .. i .. " started after task " .. (i - 1) .. " ended")
    end
  end)

  it("outside a task blocks the caller for the duration", function()
    for _, case in ipairs { { 100, 100 }, { "120ms", 120 }, { "0s", 0 }, { 0, 0 }, { 50.0, 50 } } do
      local t0 = athena.now()
      assert.is_nil(athena.sleep(case[1]))
      local el = athena.now() - t0
      assert.is_true(el >= case[2], ("sleep(%s) took %d ms"):format(tostring(case[1]), el))
      assert.is_true(el < case[2] + 1000)
    end
  end)

  it("rejects invalid durations with EINVAL", function()
    for _, v in ipairs { "1.5s", " 30s", "30s ", "5000", "2w", -1, 0.5, "", "s", "1S", "-1s", 2 ^ 54, true, {} } do
      local err = S.raises("EINVAL", athena.sleep, v)
      assert.is_string(err.message)
    end
  end)

  it("raises Lua's standard error with no argument", function()
    assert.matches("bad argument #1 to '[%w.]*sleep'", S.raised(athena.sleep))
  end)

  it("an invalid duration inside a task fails the task with EINVAL", function()
    local w = S.started { failureStrategy = "ignore" }
    local _, err = S.result(w:execute("nap", { ms = "1.5s" }))
    assert.equals("EINVAL", err.code)
  end)

  it("accepts every unit as a duration string", function()
    -- long units through an option that takes a duration without waiting
    local w = S.started()
    local h = w:execute("echo", 1)
    S.result(h)
    for _, v in ipairs { "1ms", "500ms", "30s", "5m", "1h", "1d", 1500, 1500.0 } do
      assert.equals(1, h:result(v))
    end
  end)
end)

describe("taskQueue routing", function()
  after_each(S.cleanup)

  it("runs io tasks only on io workers, with their concurrency", function()
    local w = S.started { minWorkers = 1, taskQueues = { io = { workers = 2, concurrency = 4 } } }
    local ioWorkers, defaultWorkers = {}, {}
    for _, wk in ipairs(w:getWorkers()) do
      if wk.taskQueue == "io" then
        ioWorkers[wk.id] = true
        assert.equals(4, wk.concurrency)
      else
        assert.equals("default", wk.taskQueue)
        defaultWorkers[wk.id] = true
      end
    end
    local nio = 0
    for _ in pairs(ioWorkers) do nio = nio + 1 end
    assert.equals(2, nio)
    -- 8 sleeps fit the io slots at once: well under 8 x 300 ms
    local inputs = {}
    for i = 1, 8 do inputs[i] = { ms = 300, tag = i } end
    local t0 = athena.now()
    local hs = w:executeMany("nap", inputs, { taskQueue = "io" })
    for _, h in ipairs(hs) do S.result(h) end
    assert.is_true(athena.now() - t0 < 1500)
    for _, h in ipairs(hs) do
      local q = h:query()
      assert.equals("io", q.taskQueue)
      assert.is_true(ioWorkers[q.workerId], q.workerId .. " serves io")
    end
    -- default tasks stay on default workers
    for _, h in ipairs(w:executeMany("echo", { 1, 2, 3, 4 })) do
      S.result(h)
      local q = h:query()
      assert.equals("default", q.taskQueue)
      assert.is_true(defaultWorkers[q.workerId], q.workerId .. " serves default")
    end
    -- the default worker served nothing of io
    for _, wk in ipairs(w:getWorkers()) do
      if wk.taskQueue == "default" then assert.equals(4, wk.tasksCompleted) end
    end
  end)

  it("a definition's taskQueue and priority route its tasks; execute opts override them", function()
    local jobs = require "fixtures.jobs"
    local w = S.started({ minWorkers = 1, taskQueues = { io = { workers = 1 } } }, { jobs.ioecho })
    local h = w:execute("io-echo", "x")
    assert.equals("x", S.result(h))
    local q = h:query()
    assert.equals("io", q.taskQueue)
    assert.equals(3, q.priority)
    local ioWorker
    for _, wk in ipairs(w:getWorkers()) do
      if wk.taskQueue == "io" then ioWorker = wk.id end
    end
    assert.equals(ioWorker, q.workerId)
    local h2 = w:execute("io-echo", "y", { taskQueue = "default", priority = -2 })
    assert.equals("y", S.result(h2))
    assert.equals("default", h2:query().taskQueue)
    assert.equals(-2, h2:query().priority)
    assert.is_true(ioWorker ~= h2:query().workerId)
  end)

  it("an unknown queue in execute raises EINVAL and enqueues nothing", function()
    local w = S.started { taskQueues = { io = {} } }
    local err = S.raises("EINVAL", w.execute, w, "echo", 1, { taskQueue = "nowhere", id = "nq" })
    assert.is_truthy(err.message:find("nowhere", 1, true))
    local _, qerr = w:query("nq")
    assert.equals("ENOTFOUND", qerr.code)
    S.raises("EINVAL", w.executeMany, w, "echo", { 1 }, { taskQueue = "nowhere" })
  end)
end)

describe("result() inside a task", function()
  after_each(S.cleanup)

  local function config()
    return S.config {
      minWorkers = 1,
      taskQueues = { fan = { workers = 1, concurrency = 2 }, leaf = { workers = 1, concurrency = 8 } },
    }
  end

  local function run_fanout(timeout)
    local cfg = config()
    local w = S.world(cfg)
    local jobs = require "fixtures.jobs"
    w:register(table.unpack(jobs.all()))
    w:start()
    -- both fan-outs land on the single "fan" worker (concurrency 2)
    local input = { config = cfg, n = 3, ms = 300, queue = "leaf", timeout = timeout }
    local t0 = athena.now()
    local hs = w:executeMany("fanout", { input, input }, { taskQueue = "fan" })
    local r1, e1 = S.result(hs[1])
    local r2, e2 = S.result(hs[2])
    local total = athena.now() - t0
    assert.is_nil(e1, tostring(e1))
    assert.is_nil(e2, tostring(e2))
    assert.equals(6, r1.tags); assert.equals(14, r1.squares)
    assert.equals(6, r2.tags); assert.equals(14, r2.squares)
    assert.equals(hs[1]:query().workerId, hs[2]:query().workerId)
    -- the children ran on the leaf worker
    local leaf
    for _, wk in ipairs(w:getWorkers()) do
      if wk.taskQueue == "leaf" then leaf = wk end
    end
    assert.equals(12, leaf.tasksCompleted)
    return r1, r2, total
  end

  it("yields the coroutine: two fan-outs wait at once on one worker", function()
    local r1, r2, total = run_fanout(nil)
    -- the second fan-out started while the first was still waiting for its
    -- 300 ms children: a blocked worker would start it only ~300 ms later
    assert.is_true(math.abs(r2.t0 - r1.t0) < 200,
      ("fan-outs started %d ms apart on one worker"):format(math.abs(r2.t0 - r1.t0)))
    assert.is_true(total < 2000, "fan-outs took " .. total .. " ms")
  end)

  it("yields with a timeout too: result(timeout) in a task does not block the worker", function()
    local r1, r2 = run_fanout("5s")
    assert.is_true(math.abs(r2.t0 - r1.t0) < 200,
      ("fan-outs started %d ms apart on one worker"):format(math.abs(r2.t0 - r1.t0)))
  end)

  it("result(timeout) in a task expires with ETIMEDOUT, leaving the child alone", function()
    local cfg = config()
    local w = S.world(cfg)
    local jobs = require "fixtures.jobs"
    w:register(table.unpack(jobs.all()))
    w:start()
    local r = S.result(w:execute("awaitchild", { config = cfg, ms = 400, queue = "leaf", timeout = 50 },
      { taskQueue = "fan" }))
    assert.equals("ETIMEDOUT", r.code)
    assert.is_nil(r.tag)
    assert.is_true(r.waited >= 50 and r.waited < 400, "waited " .. r.waited .. " ms")
    -- the child finishes normally (idempotent execute hands back its handle)
    local child = S.result(w:execute("nap", {}, { id = r.child }))
    assert.equals("child", child.tag)
  end)

  it("a task can query the world through its view; shutdown is refused there", function()
    local cfg = S.config { minWorkers = 1 }
    local w = S.world(cfg)
    local jobs = require "fixtures.jobs"
    w:register(table.unpack(jobs.all()))
    w:start()
    S.result(w:execute("echo", "seen", { id = "seen-1" }))
    local r = S.result(w:execute("worldview", { config = cfg, id = "seen-1" }))
    assert.equals("seen-1", r.queried)
    assert.equals("completed", r.queryStatus)
    assert.equals("ENOTFOUND", r.unknownCode)
    assert.is_false(r.shutdownOk)
    assert.equals("EINVAL", r.shutdownCode)
    assert.is_false(r.executeUnknownOk)
    assert.equals("ENOTFOUND", r.executeUnknownCode)
    -- the world still runs
    assert.equals(4, S.result(w:execute("square", 2)))
  end)
end)

describe("queue order", function()
  after_each(S.cleanup)

  -- One worker of concurrency 1 on queue "solo": a blocker (priority 100)
  -- holds the slot while the rest are enqueued; each "order" task returns the
  -- worker state's counter, i.e. its exact run position on that worker.
  local function solo()
    return S.started { minWorkers = 1, taskQueues = { solo = { workers = 1, concurrency = 1 } } }
  end

  it("runs higher priority first, then FIFO", function()
    local w = solo()
    local blocker = w:execute("order", { tag = "blocker", ms = 200 }, { taskQueue = "solo", priority = 100 })
    local plan = {
      { "low-1", 0 }, { "high-1", 5 }, { "low-2", 0 }, { "mid-1", 2 }, { "high-2", 5 },
      { "neg-1", -3 }, { "low-3", 0 }, { "high-3", 5 }, { "mid-2", 2 },
    }
    local hs = {}
    for i, p in ipairs(plan) do
      hs[i] = w:execute("order", { tag = p[1] }, { taskQueue = "solo", priority = p[2] })
    end
    assert.equals(1, S.result(blocker).n)
    local got = {}
    for i, h in ipairs(hs) do
      local r = S.result(h)
      assert.equals(plan[i][1], r.tag)
      got[r.n] = r.tag
    end
    assert.same({ [1] = nil, [2] = "high-1", [3] = "high-2", [4] = "high-3", [5] = "mid-1", [6] = "mid-2",
      [7] = "low-1", [8] = "low-2", [9] = "low-3", [10] = "neg-1" }, got)
    -- the engine's records agree: in run order, start times never go back
    local byRun = {}
    for _, h in ipairs(hs) do
      local q = h:query()
      byRun[S.result(h).n] = q
    end
    for n = 3, 10 do
      assert.is_true(byRun[n].startedAt >= byRun[n - 1].completedAt)
    end
  end)

  it("runs equal priorities in creation order, also through executeMany", function()
    local w = solo()
    local blocker = w:execute("order", { tag = "blocker", ms = 200 }, { taskQueue = "solo", priority = 1 })
    local inputs = {}
    for i = 1, 20 do inputs[i] = { tag = i } end
    local hs = w:executeMany("order", inputs, { taskQueue = "solo" })
    S.result(blocker)
    for i, h in ipairs(hs) do
      assert.equals(i + 1, S.result(h).n)
    end
  end)

  it("the definition's priority applies when execute gives none", function()
    local jobs = require "fixtures.jobs"
    local w = S.started({ minWorkers = 1, taskQueues = { io = { workers = 1 } } }, { jobs.ioecho })
    local h = w:execute("io-echo", 1)
    S.result(h)
    assert.equals(3, h:query().priority)
  end)
end)

describe("delay", function()
  after_each(S.cleanup)

  it("keeps a task scheduled until due; startedAt >= createdAt + delay", function()
    local w = S.started()
    local h = w:execute("echo", "late", { delay = 200, id = "d-1" })
    assert.equals("scheduled", h:status())
    local q = w:query("d-1")
    assert.equals("scheduled", q.status)
    assert.equals(q.createdAt + 200, q.scheduledAt)
    assert.equals(0, q.attempt)
    assert.equals("late", S.result(h))
    q = h:query()
    assert.is_true(q.startedAt >= q.createdAt + 200, ("started %d ms after creation"):format(q.startedAt - q.createdAt))
    assert.equals(q.createdAt + 200, q.scheduledAt)
  end)

  it("accepts duration strings", function()
    local w = S.started()
    local t0 = athena.now()
    local h = w:execute("echo", 1, { delay = "150ms" })
    assert.equals("scheduled", h:status())
    assert.equals(1, S.result(h))
    assert.is_true(athena.now() - t0 >= 150)
  end)

  it("a zero delay is ready at once", function()
    local w = S.started()
    local h = w:execute("echo", 1, { delay = 0 })
    assert.is_true(h:status() ~= "scheduled")
    assert.equals(1, S.result(h))
  end)

  it("does not hold back other tasks, and due order follows the delays", function()
    local w = S.started { minWorkers = 1 }
    local long = w:execute("nap", { ms = 0, tag = "long" }, { delay = 300 })
    local short = w:execute("nap", { ms = 0, tag = "short" }, { delay = 100 })
    local now = w:execute("nap", { ms = 0, tag = "now" })
    local rn, rs, rl = S.result(now), S.result(short), S.result(long)
    assert.is_true(rn.t1 <= rs.t0, "the undelayed task ran first")
    assert.is_true(rs.t1 <= rl.t0, "the shorter delay ran before the longer one")
  end)
end)
