-- Timeouts (SEMANTICS §6.2, §1.1): the attempt timeout stops pure-Lua loops
-- (also under pcall/xpcall) and waits at yield points; a timed-out attempt
-- is retried per its policy; scheduleToClose bounds the whole task.
local athena = require "athena"
local U = require "fixtures.sem_util"

describe("timeout", function()
  after_each(function()
    U.cleanup()
    U.cleanup_files()
  end)

  describe("a pure-Lua endless loop with timeout 100 ms", function()
    for _, mode in ipairs { "plain", "pcall", "nested", "xpcall", "coroutine" } do
      it("fails ETIMEDOUT, retryable, and the worker runs the next task (" .. mode .. ")", function()
        local w = U.world()
        local wid = w:getWorkers()[1].id
        local t0 = athena.now()
        local h = w:execute("sem.spin", { mode = mode })
        local r, err = h:result(3000)
        local elapsed = athena.now() - t0
        assert.is_nil(r)
        assert.equals("failed", h:status()) -- not the wait expiring
        assert.equals("ETIMEDOUT", err.code)
        assert.is_true(err.retryable)
        assert.equals(1, err.attempt)
        assert.is_true(elapsed >= 90, "ended after " .. elapsed .. " ms")
        assert.is_true(elapsed < 2000, "ended after " .. elapsed .. " ms")
        local q = h:query()
        assert.equals("ETIMEDOUT", q.error.code)
        assert.equals(1, q.attempt)
        local r2 = U.result(w:execute("sem.echo", mode), 2000)
        assert.equals(mode, r2.input)
        local wks = w:getWorkers()
        assert.equals(1, #wks)
        assert.equals(wid, wks[1].id) -- the same worker, not a replacement
      end)
    end

    it("runs a to-be-closed variable's __close as the attempt is stopped", function()
      local w = U.world()
      local path = U.tmpname()
      local h = w:execute("sem.spin", { mode = "close", path = path })
      local _, err = h:result(3000)
      assert.equals("failed", h:status())
      assert.equals("ETIMEDOUT", err.code)
      local rep = U.read_report(path)
      assert.is_table(rep, "__close did not run")
      assert.is_true(rep.closed)
      -- the attempt is stopped where it stands (the hook yields it, so no
      -- pcall can keep it): __close runs without an error value
      assert.is_nil(rep.code)
      assert.equals(1, U.result(w:execute("sem.echo", 1), 2000).input)
    end)

    -- These run in a child process: a worker stuck for good would also
    -- block the world's shutdown (and with it this spec).
    it("stops even when the xpcall message handler itself never returns", function()
      local line, _, out = U.child(10, "sem.spin", "xpcall_loop")
      assert.is_string(line, "no output from the child: " .. tostring(out))
      local status, code, ms, nxt = line:match("^(%S+) (%S+) (%d+) (%S+)$")
      assert.equals("failed", status, "child: " .. line)
      assert.equals("ETIMEDOUT", code)
      assert.is_true(tonumber(ms) < 2000, "ended after " .. ms .. " ms")
      assert.equals("completed", nxt)
    end)

    it("stops even when a __close handler never returns", function()
      local line, _, out = U.child(10, "sem.spin", "close_loop")
      assert.is_string(line, "no output from the child: " .. tostring(out))
      local status, code, ms, nxt = line:match("^(%S+) (%S+) (%d+) (%S+)$")
      assert.equals("failed", status, "child: " .. line)
      assert.equals("ETIMEDOUT", code)
      assert.is_true(tonumber(ms) < 2000, "ended after " .. ms .. " ms")
      assert.equals("completed", nxt)
    end)
  end)

  it("a task sleeping past its timeout fails ETIMEDOUT at the deadline, not after the sleep", function()
    local w = U.world()
    local t0 = athena.now()
    local h = w:execute("sem.sleepy", { ms = 2000 })
    local r, err = h:result(3000)
    local elapsed = athena.now() - t0
    assert.is_nil(r)
    assert.equals("failed", h:status())
    assert.equals("ETIMEDOUT", err.code)
    assert.is_true(err.retryable)
    assert.is_true(elapsed >= 90 and elapsed < 600, "ended after " .. elapsed .. " ms")
  end)

  it("an attempt blocked in a C function past its timeout fails ETIMEDOUT once the call returns", function()
    -- §6.2: such code "stops only when that returns"; its late value is not
    -- a success
    local w = U.world()
    local h = w:execute("sem.cblock")
    local r, err = h:result(3000)
    assert.equals("failed", h:status())
    assert.is_nil(r)
    assert.equals("ETIMEDOUT", err.code)
  end)

  it("a value returned after catching the timeout is discarded: the attempt failed ETIMEDOUT", function()
    local w = U.world()
    local h = w:execute("sem.catchTimeout")
    local r, err = h:result(3000)
    assert.is_nil(r)
    assert.equals("failed", h:status())
    assert.equals("ETIMEDOUT", err.code)
    assert.is_nil(h:query().result)
  end)

  it("a timed-out attempt is retried when the policy allows (attempt 2 completes)", function()
    local w = U.world()
    local t0 = athena.now()
    local h = w:execute("sem.slowFirst")
    local r = U.result(h, 3000)
    local elapsed = athena.now() - t0
    assert.equals(2, r.attempt)
    assert.equals("completed", h:status())
    assert.equals(1, w:getMetrics().tasks.retried)
    assert.is_true(elapsed < 1500, "took " .. elapsed .. " ms (attempt 1 sleeps 2000)")
  end)

  describe("scheduleToClose", function()
    it("ends a task retrying 'forever' with ETIMEDOUT, fewer attempts than maxAttempts", function()
      local w = U.world()
      local t0 = athena.now()
      local h = w:execute("sem.stc")
      local r, err = h:result(3000)
      local elapsed = athena.now() - t0
      assert.is_nil(r)
      assert.equals("failed", h:status())
      assert.equals("ETIMEDOUT", err.code)
      local q = h:query()
      assert.equals(100, q.maxAttempts)
      assert.is_true(q.attempt >= 1 and q.attempt < q.maxAttempts)
      assert.equals(2, q.attempt) -- attempts take 150 ms: the 2nd is running at 300
      assert.is_true(elapsed >= 280 and elapsed < 1000, "ended after " .. elapsed .. " ms")
    end)

    it("a retry that could not start before the deadline is not scheduled: final failure with e (§7.3 step 5)", function()
      -- on the manual clock: retries every 200 ms (+0-10 % jitter), so
      -- attempts by 0, 220 and 440 ms fail; the next would be at 640 or
      -- later, past scheduleToClose 550 (real time made the count depend
      -- on how late each retry ran on a loaded machine)
      local w = U.world { clock = "manual" }
      local h = w:execute("sem.stcFast")
      U.wait_status(h, "retrying", 2000)
      w:advance(220)
      U.wait_until(function() local q = h:query() return q.attempt == 2 and q.status == "retrying" end, 2000,
        "attempt 2 to fail")
      w:advance(220)
      local _, err = h:result(3000)
      assert.equals("failed", h:status())
      assert.equals("EFAST", err.code)
      assert.equals(3, err.details.n)
      assert.equals(3, h:query().attempt)
      assert.equals(2, w:getMetrics().tasks.retried)
    end)

    it("a task still waiting in the queue fails ETIMEDOUT where it is, at the deadline", function()
      local w = U.world()
      local blocker = w:execute("sem.nap", { ms = 3000 })
      U.wait_status(blocker, "running", 2000)
      local t0 = athena.now()
      local h = w:execute("sem.stcQuick") -- scheduleToClose 200, behind the blocker
      local _, err = h:result(1500)
      local elapsed = athena.now() - t0
      assert.equals("failed", h:status(), "status after " .. elapsed .. " ms")
      assert.equals("ETIMEDOUT", err.code)
      assert.equals(0, h:query().attempt)
      assert.equals("running", blocker:status())
      assert.is_true(elapsed < 1000)
      blocker:cancel()
    end)

    it("a task claimed after its deadline fails ETIMEDOUT without running", function()
      local w = U.world()
      local blocker = w:execute("sem.nap", { ms = 400 })
      U.wait_status(blocker, "running", 2000)
      local h = w:execute("sem.stcQuick")
      local _, err = U.result(h, 3000)
      assert.equals("failed", h:status())
      assert.equals("ETIMEDOUT", err.code)
      assert.equals(0, h:query().attempt)
      assert.is_table(U.result(blocker))
      assert.equals("completed", blocker:status())
    end)
  end)

  describe("invalid durations raise EINVAL at definition", function()
    local fn = function() end
    local bad = {
      { timeout = "1.5s" }, { timeout = -1 }, { timeout = 0 }, { timeout = 0.5 }, { timeout = " 30s" },
      { timeout = "5000" }, { timeout = "2w" }, { timeout = true }, { timeout = 2 ^ 60 },
      { heartbeatTimeout = 0 }, { heartbeatTimeout = "1.5s" }, { scheduleToClose = 0 },
      { scheduleToClose = -5 }, { scheduleToClose = "soon" },
    }
    for i, opts in ipairs(bad) do
      local k, v = next(opts)
      it(("case %d: %s = %s"):format(i, k, tostring(v)), function()
        U.raises("EINVAL", athena.activity, "sem.tmpDur", fn, opts)
      end)
    end

    it("accepts integral numbers and unit strings", function()
      for _, v in ipairs { 100, 1500.0, "100ms", "2s", "1m", "1h", "1d" } do
        assert.has_no.errors(function() athena.activity("sem.tmpDur", fn, { timeout = v }) end)
      end
    end)
  end)
end)
