-- Cancellation (SEMANTICS §6.3, §4.2 T12/T13): tasks not running end at
-- once; running ones at their next yield point, or after cancelGrace when
-- they never reach one; whatever the handler does meanwhile, the final state
-- is cancelled.
local athena = require "athena"
local U = require "fixtures.sem_util"

local function cancelled_count(w) return w:getMetrics().tasks.cancelled end

-- Asserts h ended cancelled: result() gives nil, ECANCELED within `limit`.
local function assert_cancelled(h, limit)
  local r, err = h:result(limit or 2000)
  assert.is_nil(r)
  assert.is_table(err)
  assert.equals("cancelled", h:status())
  assert.equals("ECANCELED", err.code)
  assert.is_false(err.retryable)
  return err
end

describe("cancel", function()
  after_each(function()
    U.cleanup()
    U.cleanup_files()
  end)

  it("a queued task behind a busy worker is cancelled at once and never runs", function()
    local w = U.world { cancelGrace = 200 }
    local blocker = w:execute("sem.nap", { ms = 5000 })
    U.wait_status(blocker, "running", 2000)
    local h = w:execute("sem.echo", "never")
    assert.equals("pending", h:status())
    assert.is_true(h:cancel())
    assert.equals("cancelled", h:status()) -- at once (T12)
    local elapsed = U.timed(assert_cancelled, h, 1000)
    assert.is_true(elapsed < 200, "result() took " .. elapsed .. " ms")
    local q = h:query()
    assert.equals(0, q.attempt)
    assert.is_nil(q.startedAt)
    assert.is_nil(q.result)
    assert.equals(1, cancelled_count(w))
    assert.equals("running", blocker:status())
    assert.is_true(blocker:cancel())
    assert_cancelled(blocker)
    assert.equals(2, cancelled_count(w))
    assert.equals(0, h:query().attempt) -- still never ran once the worker was free
  end)

  it("a delayed (scheduled) task is cancelled at once", function()
    local w = U.world()
    local h = w:execute("sem.echo", "later", { delay = 5000 })
    assert.equals("scheduled", h:status())
    assert.equals(1, w:getMetrics().tasks.scheduled)
    assert.is_true(h:cancel())
    assert.equals("cancelled", h:status())
    assert_cancelled(h, 500)
    assert.equals(0, h:query().attempt)
    local m = w:getMetrics().tasks
    assert.equals(0, m.scheduled)
    assert.equals(1, m.cancelled)
  end)

  it("a retrying task is cancelled at once", function()
    local w = U.world()
    local h = w:execute("sem.slowRetry")
    U.wait_status(h, "retrying", 2000)
    assert.is_true(h:cancel())
    assert.equals("cancelled", h:status())
    assert_cancelled(h, 500)
    assert.equals(1, h:query().attempt)
    assert.equals(0, w:getMetrics().tasks.scheduled)
  end)

  it("a running task waiting in athena.sleep ends ECANCELED quickly", function()
    local w = U.world()
    local h = w:execute("sem.nap", { ms = 5000 })
    U.wait_status(h, "running", 2000)
    local t0 = athena.now()
    assert.is_true(h:cancel())
    assert_cancelled(h, 3000)
    local elapsed = athena.now() - t0
    assert.is_true(elapsed < 500, "ended " .. elapsed .. " ms after the cancel")
    assert.equals(1, cancelled_count(w))
    assert.equals(0, w:getMetrics().tasks.failed)
    -- the worker goes on
    assert.equals("next", U.result(w:execute("sem.echo", "next"), 2000).input)
  end)

  it("ctx:isCancelled() is true at once in a task polling it between short sleeps", function()
    local w = U.world()
    local path = U.tmpname()
    local h = w:execute("sem.pollCancel", { path = path })
    U.wait_status(h, "running", 2000)
    local t0 = athena.now()
    assert.is_true(h:cancel())
    assert_cancelled(h, 3000)
    local rep = U.read_report(path)
    assert.is_table(rep, "the task did not see the cancel")
    assert.is_false(rep.sleepOk)
    assert.equals("ECANCELED", rep.sleepCode)
    assert.is_true(rep.sawAt - t0 < 300, "seen " .. (rep.sawAt - t0) .. " ms after the cancel")
  end)

  it("ctx:isCancelled() is true at once in pure Lua (no yield point, grace 5 s)", function()
    local w = U.world() -- default cancelGrace: 5 s
    local path = U.tmpname()
    local h = w:execute("sem.spinPoll", { path = path })
    U.wait_status(h, "running", 2000)
    local t0 = athena.now()
    assert.is_true(h:cancel())
    assert_cancelled(h, 3000)
    local elapsed = athena.now() - t0
    assert.is_true(elapsed < 1000, "ended " .. elapsed .. " ms after the cancel")
    local rep = U.read_report(path)
    assert.is_table(rep, "the task did not see the cancel")
    assert.is_true(rep.sawAt - t0 < 300)
  end)

  for _, nested in ipairs { false, true } do
    it("a spinning pure-Lua task is stopped after cancelGrace (200 ms)" ..
       (nested and ", in a coroutine of its own under pcall" or ""), function()
      local w = U.world { cancelGrace = 200 }
      local wid = w:getWorkers()[1].id
      local h = w:execute("sem.spinForever", { nested = nested })
      U.wait_status(h, "running", 2000)
      local t0 = athena.now()
      assert.is_true(h:cancel())
      assert.equals("running", h:status()) -- T13: cancelled once the attempt stopped
      assert_cancelled(h, 3000)
      local elapsed = athena.now() - t0
      assert.is_true(elapsed >= 180, "stopped after " .. elapsed .. " ms, before the grace")
      assert.is_true(elapsed < 1500, "stopped after " .. elapsed .. " ms")
      assert.equals("after", U.result(w:execute("sem.echo", "after"), 2000).input)
      assert.equals(wid, w:getWorkers()[1].id)
    end)
  end

  it("a value returned after the cancel is discarded", function()
    local w = U.world()
    local h = w:execute("sem.lateResult", { ms = 5000 })
    U.wait_status(h, "running", 2000)
    assert.is_true(h:cancel())
    assert_cancelled(h, 3000)
    local q = h:query()
    assert.equals("cancelled", q.status)
    assert.is_nil(q.result)
    local m = w:getMetrics().tasks
    assert.equals(0, m.completed)
    assert.equals(1, m.cancelled)
  end)

  it("a caught ECANCELED is raised again at the next yield points", function()
    local w = U.world()
    local path = U.tmpname()
    local h = w:execute("sem.reraise", { path = path })
    U.wait_status(h, "running", 2000)
    assert.is_true(h:cancel())
    assert_cancelled(h, 3000)
    local rep = U.read_report(path)
    assert.is_table(rep, "no report")
    assert.equals("ECANCELED", rep.first)
    assert.is_false(rep.secondOk)
    assert.equals("ECANCELED", rep.second)
    assert.is_false(rep.heartbeatOk)
    assert.equals("ECANCELED", rep.heartbeat)
  end)

  it("cancel of a completed task returns false and changes nothing", function()
    local w = U.world()
    local h = w:execute("sem.echo", "done")
    assert.equals("done", U.result(h).input)
    assert.is_false(h:cancel())
    assert.is_false(w:cancel(h.id))
    assert.equals("completed", h:status())
    assert.equals("done", U.result(h).input)
    assert.equals(0, cancelled_count(w))
  end)

  it("cancel of a cancelled task returns false", function()
    local w = U.world()
    local h = w:execute("sem.echo", 1, { delay = 5000 })
    assert.is_true(h:cancel())
    assert.is_false(h:cancel())
    assert.equals(1, cancelled_count(w))
  end)

  it("world:cancel(id) cancels; an unknown id gives nil, ENOTFOUND", function()
    local w = U.world()
    local h = w:execute("sem.nap", { ms = 5000 })
    U.wait_status(h, "running", 2000)
    assert.is_true(w:cancel(h.id))
    assert_cancelled(h, 3000)
    local ok, err = w:cancel("no-such-task")
    assert.is_nil(ok)
    assert.equals("ENOTFOUND", err.code)
  end)
end)
