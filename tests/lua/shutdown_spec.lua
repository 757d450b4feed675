-- world:shutdown (SEMANTICS §10.1, T14) and the world's lifetime.
local athena = require "athena"
local S = require "fixtures.support"

describe("world:shutdown", function()
  after_each(S.cleanup)

  it("with nothing running returns {drained = 0, requeued = 0, abandoned = 0} and stops every worker", function()
    local w = S.started { minWorkers = 2, taskQueues = { io = { workers = 1 } } }
    S.result(w:execute("echo", 1))
    local r = w:shutdown()
    assert.same({ drained = 0, requeued = 0, abandoned = 0 }, r)
    local ws = w:getWorkers()
    assert.equals(3, #ws)
    for _, wk in ipairs(ws) do assert.equals("stopped", wk.status) end
    assert.equals(0, w:getMetrics().workers.total)
  end)

  it("drains the queue: running tasks complete, and so do the queued ones behind them", function()
    -- one worker, 3 slots: A and B sleep, the probe P proves both were claimed
    -- (claims are FIFO on one worker); C, D, E are queued or running.
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 3 } } }
    local a = w:execute("nap", { ms = 400, tag = "a" })
    local b = w:execute("nap", { ms = 400, tag = "b" })
    assert.equals("p", S.result(w:execute("echo", "p")))
    assert.equals("running", a:status())
    assert.equals("running", b:status())
    local c = w:execute("nap", { ms = 400, tag = "c" })
    local d = w:execute("nap", { ms = 400, tag = "d" }, { id = "queued-d" })
    local e = w:execute("nap", { ms = 400, tag = "e" }, { id = "queued-e" })
    local t0 = athena.now()
    local r = w:shutdown { timeout = "10s" }
    local took = athena.now() - t0
    assert.same({ drained = 5, requeued = 0, abandoned = 0 }, r)
    assert.is_true(took < 10000)
    for tag, h in pairs { a = a, b = b, c = c, d = d, e = e } do
      assert.equals("completed", h:status())
      local res, err = h:result(1000)
      assert.is_nil(err)
      assert.equals(tag, res.tag)
    end
    assert.equals(1, w:query("queued-d").attempt)
    local m = w:getMetrics()
    assert.equals(6, m.tasks.completed)
    assert.equals(0, m.tasks.queued)
  end)

  it("waits for running tasks to finish within the timeout", function()
    local w = S.started { minWorkers = 2 }
    local h = w:execute("nap", { ms = 300 })
    S.result(w:execute("echo", "probe")) -- h was claimed first (FIFO)
    local t0 = athena.now()
    local r = w:shutdown { timeout = "5s" }
    assert.same({ drained = 1, requeued = 0, abandoned = 0 }, r)
    local res = h:result(0)
    assert.is_table(res)
    assert.is_true(athena.now() >= res.t1)
    assert.is_true(athena.now() - t0 < 5000)
  end)

  it("past the timeout interrupts sleeping tasks: requeued, pending, attempt not counted", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 2 } } }
    local h = w:execute("nap", { ms = 5000 }, { id = "long-nap" })
    S.result(w:execute("echo", "probe"))
    assert.equals("running", h:status())
    local t0 = athena.now()
    local r = w:shutdown { timeout = 100 }
    local took = athena.now() - t0
    -- memory persistence: the interrupted task dies with the world
    assert.same({ drained = 0, requeued = 1, abandoned = 1 }, r)
    assert.is_true(took >= 100 and took < 3000, "shutdown took " .. took .. " ms")
    local q = w:query("long-nap")
    assert.equals("pending", q.status)
    assert.equals(0, q.attempt)
    assert.is_nil(q.result)
    local _, err = h:result(100)
    assert.equals("ESHUTDOWN", err.code)
  end)

  it("a timeout of 0 interrupts at once", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 2 } } }
    local h = w:execute("nap", { ms = 5000 })
    S.result(w:execute("echo", "probe"))
    local t0 = athena.now()
    assert.same({ drained = 0, requeued = 1, abandoned = 1 }, w:shutdown { timeout = 0 })
    assert.is_true(athena.now() - t0 < 3000)
    assert.equals("pending", h:status())
  end)

  it("interrupts a task spinning in pure Lua (requeued = 1) and joins the threads", function()
    local w = S.started { minWorkers = 2, failureStrategy = "ignore" }
    local h = w:execute("spin", nil)
    S.result(w:execute("echo", "probe"))
    local r = w:shutdown { timeout = 200 }
    assert.same({ drained = 0, requeued = 1, abandoned = 1 }, r)
    assert.equals("pending", h:status())
    for _, wk in ipairs(w:getWorkers()) do assert.equals("stopped", wk.status) end
  end)

  it("is idempotent: a second call returns the same table at once", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 2 } } }
    w:execute("nap", { ms = 5000 })
    S.result(w:execute("echo", "probe"))
    local r1 = w:shutdown { timeout = 50 }
    local t0 = athena.now()
    local r2 = w:shutdown { timeout = "30s" }
    local r3 = w:shutdown()
    assert.is_true(athena.now() - t0 < 1000)
    assert.same(r1, r2)
    assert.same(r1, r3)
    assert.same({ drained = 0, requeued = 1, abandoned = 1 }, r3)
  end)

  it("after shutdown, execute and executeMany raise ESHUTDOWN and start() raises ESHUTDOWN", function()
    local w = S.started()
    w:shutdown()
    S.raises("ESHUTDOWN", w.execute, w, "echo", 1)
    S.raises("ESHUTDOWN", w.executeMany, w, "echo", { 1, 2 })
    S.raises("ESHUTDOWN", w.start, w)
    -- and nothing was created
    local m = w:getMetrics()
    assert.equals(0, m.tasks.queued + m.tasks.completed)
  end)

  it("after shutdown, query still answers", function()
    local w = S.started()
    S.result(w:execute("echo", "kept", { id = "kept" }))
    w:shutdown()
    local q = w:query("kept")
    assert.equals("completed", q.status)
    assert.equals("kept", q.result)
    local _, err = w:query("nope")
    assert.equals("ENOTFOUND", err.code)
  end)

  it("before start works, and start() afterwards raises ESHUTDOWN", function()
    local w = S.world()
    w:register(require("fixtures.jobs").echo)
    assert.same({ drained = 0, requeued = 0, abandoned = 0 }, w:shutdown())
    S.raises("ESHUTDOWN", w.start, w)
    S.raises("ESHUTDOWN", w.execute, w, "echo", 1)
  end)

  it("validates its options", function()
    local w = S.started()
    S.raises("EINVAL", w.shutdown, w, { timeout = "1.5s" })
    S.raises("EINVAL", w.shutdown, w, { timeout = -1 })
    S.raises("EINVAL", w.shutdown, w, { bogus = 1 })
    S.raises("EINVAL", w.shutdown, w, "now") -- not a duration
    assert.matches("bad argument #1 to 'shutdown'", S.raised(w.shutdown, w, true))
    -- still running after the refused calls
    assert.equals(2, S.result(w:execute("add", { a = 1, b = 1 })))
  end)

  it("delayed tasks not yet due are not waited for: they stay scheduled and result() gives ESHUTDOWN", function()
    local w = S.started()
    local h = w:execute("echo", 1, { delay = "1h" })
    local t0 = athena.now()
    -- memory persistence: the delayed task is abandoned, and counted
    assert.same({ drained = 0, requeued = 0, abandoned = 1 }, w:shutdown())
    assert.is_true(athena.now() - t0 < 5000)
    assert.equals("scheduled", h:status())
    local _, err = h:result()
    assert.equals("ESHUTDOWN", err.code)
  end)
end)

describe("the world's lifetime", function()
  after_each(S.cleanup)

  it("a handle keeps its world usable after the world variable is dropped", function()
    local h
    do
      local w = athena.World.new(S.config())
      w:register(require("fixtures.jobs").echo)
      w:start()
      h = w:execute("echo", "held")
    end
    collectgarbage()
    collectgarbage()
    assert.equals("held", h:result(S.WAIT))
    assert.equals("completed", h:query().status)
  end)

  it("an unreferenced world is shut down and joined by the collector", function()
    do
      local w = athena.World.new(S.config { minWorkers = 2 })
      w:register(require("fixtures.jobs").echo)
      w:start()
      assert.equals(1, w:execute("echo", 1):result(S.WAIT))
    end
    local t0 = athena.now()
    collectgarbage()
    collectgarbage()
    assert.is_true(athena.now() - t0 < 10000)
  end)

  it("a <close> world shuts down when its scope ends, draining its running task", function()
    local t0
    do
      local w <close> = athena.World.new(S.config { taskQueues = { default = { concurrency = 2 } } })
      local jobs = require "fixtures.jobs"
      w:register(jobs.nap, jobs.echo)
      w:start()
      w:execute("nap", { ms = 300 })
      assert.equals("probe", w:execute("echo", "probe"):result(S.WAIT)) -- the nap was claimed
      t0 = athena.now()
    end
    local took = athena.now() - t0
    assert.is_true(took >= 200, "closing waited for the running nap (" .. took .. " ms)")
    assert.is_true(took < 10000)
  end)
end)
