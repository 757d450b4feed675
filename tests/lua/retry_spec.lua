-- Retry of failed attempts (SEMANTICS §7, §1.2 normalisation, §4.2 T6/T7).
-- Worlds run one worker (fixtures/sem_util.lua); activities and their retry
-- policies are in fixtures/semantics.lua.
local athena = require "athena"
local retry = require "athena.retry"
local U = require "fixtures.sem_util"

local function metrics(w) return w:getMetrics().tasks end

describe("retry", function()
  after_each(function()
    U.cleanup()
    U.cleanup_files()
  end)

  it("a task failing twice then succeeding completes with attempt 3", function()
    local w = U.world()
    local h = w:execute("sem.flaky", { succeedAt = 3 })
    local r, err = U.result(h)
    assert.is_nil(err)
    assert.equals(3, r.attempt)
    local q = h:query()
    assert.equals("completed", q.status)
    assert.equals(3, q.attempt)
    assert.equals(5, q.maxAttempts)
    local m = metrics(w)
    assert.equals(2, m.retried)
    assert.equals(1, m.completed)
    assert.equals(0, m.failed)
  end)

  it("exhausted maxAttempts: failed with the last attempt's error, attempt == maxAttempts", function()
    local w = U.world()
    local h = w:execute("sem.alwaysFail")
    local r, err = U.result(h)
    assert.is_nil(r)
    assert.equals("EBOOM", err.code)
    assert.equals(3, err.attempt)
    assert.equals(3, err.details.n) -- raised by attempt 3, not an earlier one
    local q = h:query()
    assert.equals("failed", q.status)
    assert.equals(3, q.attempt)
    assert.equals(3, q.maxAttempts)
    assert.equals("EBOOM", q.error.code)
    assert.equals(3, q.error.attempt)
    local m = metrics(w)
    assert.equals(2, m.retried) -- T6 twice
    assert.equals(1, m.failed)  -- one final failure, not one per attempt
  end)

  it("default world, no retry option: maxAttempts 3 with the ≈1 s, 2 s backoff", function()
    -- on the manual clock, so the delays are exact and load cannot stretch them
    local w = U.world { clock = "manual" }
    local h = w:execute("sem.defaultFail")
    local q = h:query()
    assert.equals(3, q.maxAttempts)
    assert.equals("retry", q.failureStrategy)
    U.wait_status(h, "retrying", 2000)
    w:advance(4000)
    local r, err = U.result(h, 8000)
    assert.is_nil(r)
    assert.equals("EDEFAULT", err.code)
    assert.equals(3, err.details.n)
    q = h:query()
    assert.equals(3, q.attempt)
    assert.equals("failed", h:status())
    -- delays 1000..1100 and 2000..2200 (§7.4)
    local elapsed = q.completedAt - q.createdAt
    assert.is_true(elapsed >= 3000 and elapsed <= 3300, "elapsed " .. elapsed)
  end)

  describe("a strategy other than retry, without a retry option, gives maxAttempts 1", function()
    it("world failureStrategy = ignore", function()
      local w = U.world { failureStrategy = "ignore" }
      local h = w:execute("sem.defaultFail")
      assert.equals(1, h:query().maxAttempts)
      local _, err = U.result(h, 1000)
      assert.equals("EDEFAULT", err.code)
      local q = h:query()
      assert.equals("failed", q.status)
      assert.equals(1, q.attempt)
      assert.equals("ignore", q.failureStrategy)
      assert.equals(0, metrics(w).retried)
    end)

    it("definition failureStrategy = ignore / quarantine", function()
      local w = U.world()
      local hi = w:execute("sem.ignoreFail")
      local hq = w:execute("sem.quarantineFail")
      assert.equals(1, hi:query().maxAttempts)
      assert.equals(1, hq:query().maxAttempts)
      local _, ei = U.result(hi, 1000)
      local _, eq = U.result(hq, 1000)
      assert.equals("EIGNORE", ei.code)
      assert.equals("EQUAR", eq.code)
      assert.equals("failed", hi:status())
      assert.equals("quarantined", hq:status())
      assert.equals(1, hi:query().attempt)
      assert.equals(1, hq:query().attempt)
    end)

    it("execute option failureStrategy = quarantine / ignore", function()
      local w = U.world()
      local hq = w:execute("sem.defaultFail", nil, { failureStrategy = "quarantine" })
      local hi = w:execute("sem.defaultFail", nil, { failureStrategy = "ignore" })
      assert.equals(1, hq:query().maxAttempts)
      assert.equals(1, hi:query().maxAttempts)
      U.result(hq, 1000)
      U.result(hi, 1000)
      assert.equals("quarantined", hq:status())
      assert.equals("failed", hi:status())
    end)

    it("an explicit retry option still applies under ignore (§7.2)", function()
      local w = U.world { failureStrategy = "ignore" }
      local h = w:execute("sem.alwaysFail")
      assert.equals(3, h:query().maxAttempts)
      local _, err = U.result(h)
      assert.equals("EBOOM", err.code)
      assert.equals(3, h:query().attempt)
      assert.equals("failed", h:status())
    end)
  end)

  describe("between attempts", function()
    it("the task is 'retrying' with readyAt in the future, then runs again", function()
      local w = U.world()
      local h = w:execute("sem.slowRetry")
      local before = athena.now()
      local q = U.wait_status(h, "retrying", 2000)
      assert.equals(1, q.attempt)
      assert.equals("integer", math.type(q.readyAt))
      assert.is_true(q.readyAt > before, "readyAt " .. q.readyAt .. " not after " .. before)
      -- backoff 300 (constant) + at most 10 % jitter, from the failure
      assert.is_true(q.readyAt >= q.startedAt + 300)
      assert.is_true(q.readyAt <= q.startedAt + 300 + 30 + 200)
      local m = metrics(w)
      assert.equals(1, m.retried)
      assert.equals(1, m.scheduled) -- scheduled + retrying
      assert.equals(0, m.running)
      local r = U.result(h)
      assert.equals(2, r.attempt)
      assert.is_true(athena.now() >= q.readyAt)
      assert.equals("completed", h:status())
    end)

    it("query().error holds the last failure while retrying (§4.3)", function()
      local w = U.world()
      local h = w:execute("sem.slowRetry")
      local q = U.wait_status(h, "retrying", 2000)
      assert.is_table(q.error, "no error in the state table of a retrying task")
      assert.equals("EFIRST", q.error.code)
      assert.equals(1, q.error.attempt)
      U.result(h)
    end)
  end)

  describe("nonRetryable = {'EMINE'}", function()
    local function run(w, mode)
      local h = w:execute("sem.nonRetry", { mode = mode })
      local _, err = U.result(h)
      return err, h:query()
    end

    it("stops at once for error({code = 'EMINE'})", function()
      local w = U.world()
      local err, q = run(w, "code")
      assert.equals("EMINE", err.code)
      assert.equals(1, q.attempt)
      assert.equals(5, q.maxAttempts)
      assert.equals("failed", q.status)
      assert.equals(0, metrics(w).retried)
    end)

    it("stops at once for an error whose name is EMINE", function()
      local w = U.world()
      local err, q = run(w, "name")
      assert.equals("EOTHER", err.code)
      assert.equals(1, q.attempt)
      assert.equals("failed", q.status)
    end)

    it("stops at once for a returned nil, {code = 'EMINE'}", function()
      local w = U.world()
      local err, q = run(w, "returned")
      assert.equals("EMINE", err.code)
      assert.equals(1, q.attempt)
    end)

    it("still retries other codes up to maxAttempts", function()
      local w = U.world()
      local err, q = run(w, "other")
      assert.equals("EOTHER", err.code)
      assert.equals(5, q.attempt)
      assert.equals(4, metrics(w).retried)
    end)
  end)

  it("FatalError is never retried (raised or returned, maxAttempts 5)", function()
    local w = U.world()
    for _, returned in ipairs { false, true } do
      local h = w:execute("sem.fatal", { returned = returned })
      local r, err = U.result(h)
      assert.is_nil(r)
      assert.equals("EFATAL", err.code)
      assert.equals("FatalError", err.name)
      assert.is_false(err.retryable)
      local q = h:query()
      assert.equals(1, q.attempt)
      assert.equals(5, q.maxAttempts)
      assert.equals("failed", q.status)
    end
    assert.equals(0, metrics(w).retried)
  end)

  describe("RetryableError(msg, 200)", function()
    for _, returned in ipairs { false, true } do
      it("is retried after at least 200 ms (" .. (returned and "returned" or "raised") .. ")", function()
        local w = U.world()
        local h = w:execute("sem.retryAfter", { after = 200, returned = returned })
        local r = U.result(h)
        assert.equals(2, r.attempt)
        local gap = r.startedAt - r.failedAt
        assert.is_true(gap >= 200, "attempt 2 began " .. gap .. " ms after attempt 1 failed")
        assert.is_true(gap < 1000, "gap " .. gap)
        local q = h:query()
        assert.is_true(q.startedAt - r.failedAt >= 200, "startedAt " .. (q.startedAt - r.failedAt))
      end)
    end

    it("retryAfter of an error that is not a RetryableError does not set the delay (§7.3 step 4)", function()
      local w = U.world()
      local h = w:execute("sem.foreignRetryAfter")
      local r = U.result(h)
      assert.equals(2, r.attempt)
      local gap = r.startedAt - r.failedAt
      -- backoff is 10 ms; the error's retryAfter (3000) must be ignored
      assert.is_true(gap < 1000, "attempt 2 began " .. gap .. " ms after attempt 1 failed")
    end)
  end)

  it("the engine waits backoff(n) between attempts (linear 100: 100, 200)", function()
    -- on the manual clock: each retry starts exactly when it is due, so the
    -- gaps are the backoff and its 0-10 % jitter, whatever the load
    local w = U.world { clock = "manual" }
    local h = w:execute("sem.gaps")
    U.wait_status(h, "retrying", 2000)
    w:advance(1000)
    local log = U.result(h)
    assert.equals(3, h:query().attempt)
    local g1 = log[2].start - log[1].stop
    local g2 = log[3].start - log[2].stop
    assert.is_true(g1 >= 100 and g1 <= 110, "gap 1: " .. g1)
    assert.is_true(g2 >= 200 and g2 <= 220, "gap 2: " .. g2)
  end)

  describe("error normalisation (§1.2)", function()
    -- kind -> expected code, retryable (attempts: 2 if retryable, else 1)
    local cases = {
      { "string", "EHANDLER", true },
      { "table", "EX", false },
      { "number", "EHANDLER", true },
      { "boolean", "EHANDLER", true },
      { "nil", "EHANDLER", true },
      { "tostring", "EHANDLER", true },
      { "returned", "EHANDLER", true },
    }
    for _, c in ipairs(cases) do
      local kind, code, retryable = c[1], c[2], c[3]
      it(kind .. " -> " .. code .. (retryable and " (retried)" or " (not retried)"), function()
        local w = U.world()
        local before = w:getWorkers()[1].id
        local h = w:execute("sem.raise", { kind = kind })
        local r, err = U.result(h)
        assert.is_nil(r)
        assert.equals(code, err.code)
        assert.equals(retryable, err.retryable)
        assert.is_string(err.message)
        assert.equals(getmetatable(err), athena.Error)
        local attempts = retryable and 2 or 1
        assert.equals(attempts, err.attempt)
        assert.equals(attempts, h:query().attempt)
        assert.equals("failed", h:status())
        if kind == "string" then assert.is_string(err.traceback) end
        -- the worker survives and serves the next task
        local r2 = U.result(w:execute("sem.echo", "next"))
        assert.equals("next", r2.input)
        local wks = w:getWorkers()
        assert.equals(1, #wks)
        assert.equals(before, wks[1].id)
      end)
    end
  end)

  describe("backoff(cfg, n, u) (§7.4)", function()
    local function cfg(t)
      local c = { backoff = "exponential", initialInterval = 1000, maxInterval = 60000, multiplier = 2 }
      for k, v in pairs(t or {}) do c[k] = v end
      return c
    end
    local B = retry.backoff

    it("exponential: 1000, 2000, 4000, 8000 ... capped at maxInterval", function()
      local c = cfg()
      assert.equals(1000, B(c, 1, 0))
      assert.equals(2000, B(c, 2, 0))
      assert.equals(4000, B(c, 3, 0))
      assert.equals(8000, B(c, 4, 0))
      assert.equals(32000, B(c, 6, 0))
      assert.equals(60000, B(c, 7, 0)) -- 64000 capped
      assert.equals(60000, B(c, 40, 0))
      assert.equals(300, B(cfg { maxInterval = 300, initialInterval = 100 }, 3, 0))
      local c3 = cfg { multiplier = 3 }
      assert.equals(1000, B(c3, 1, 0))
      assert.equals(3000, B(c3, 2, 0))
      assert.equals(9000, B(c3, 3, 0))
      assert.equals("integer", math.type(B(c, 1, 0.37)))
    end)

    it("linear 500: 500, 1000, 1500", function()
      local c = cfg { backoff = "linear", initialInterval = 500 }
      assert.equals(500, B(c, 1, 0))
      assert.equals(1000, B(c, 2, 0))
      assert.equals(1500, B(c, 3, 0))
      assert.equals(2000, B(cfg { backoff = "linear", initialInterval = 500, maxInterval = 2000 }, 9, 0))
    end)

    it("constant: initialInterval every time", function()
      local c = cfg { backoff = "constant", initialInterval = 700 }
      for n = 1, 5 do assert.equals(700, B(c, n, 0)) end
    end)

    it("jitter: delay = round(d + U * 0.1 * d), after the cap", function()
      local c = cfg()
      assert.equals(1050, B(c, 1, 0.5))
      assert.equals(1099, B(c, 1, 0.99))
      assert.equals(2198, B(c, 2, 0.99))
      assert.equals(1100, B(c, 1, 0.999)) -- round(1099.9)
      assert.equals(63000, B(c, 10, 0.5)) -- jitter applies to the capped 60000
      for n = 1, 8 do
        local d = math.min(1000 * 2 ^ (n - 1), 60000)
        for _, u in ipairs { 0, 0.25, 0.5, 0.9, 0.99 } do
          local v = B(c, n, u)
          assert.is_true(d <= v and v < 1.1 * d, ("n=%d u=%s: %d"):format(n, u, v))
        end
        assert.is_true(B(c, n, 0.999) <= 1.1 * d)
      end
    end)

    it("random jitter stays within [d, 1.1 d]", function()
      local c = cfg { initialInterval = 100 }
      for _ = 1, 2000 do
        local v = B(c, 2)
        assert.is_true(v >= 200 and v <= 220, "delay " .. v)
      end
    end)
  end)

  it("retryPatterns match the §7.5 table", function()
    local P = athena.retryPatterns
    local want = {
      api = { 5, "exponential", 1000, 30000, 2 },
      database = { 3, "exponential", 500, 10000, 2 },
      network = { 5, "exponential", 2000, 60000, 3 },
      quick = { 3, "constant", 100, 60000, 2 },
    }
    for name, v in pairs(want) do
      local p = P[name]
      assert.is_table(p, name)
      assert.same({ maxAttempts = v[1], backoff = v[2], initialInterval = v[3], maxInterval = v[4],
        multiplier = v[5] }, {
        maxAttempts = p.maxAttempts, backoff = p.backoff, initialInterval = p.initialInterval,
        maxInterval = p.maxInterval, multiplier = p.multiplier,
      })
    end
    -- usable as a definition's retry option as they are
    assert.has_no.errors(function() athena.activity("sem.tmpPattern", function() end, { retry = P.quick }) end)
  end)

  describe("invalid retry configs raise EINVAL at definition (§7.1)", function()
    local bad = {
      { maxAttempts = 0 }, { maxAttempts = 1.5 }, { maxAttempts = "3" },
      { backoff = "fibonacci" }, { initialInterval = "1.5s" }, { initialInterval = -1 },
      { initialInterval = 2000, maxInterval = 1000 }, { multiplier = 0.5 }, { multiplier = "2" },
      { nonRetryable = "EMINE" }, { nonRetryable = { 1 } }, { bogus = true },
    }
    for i, r in ipairs(bad) do
      it("case " .. i, function()
        U.raises("EINVAL", athena.activity, "sem.tmpBad", function() end, { retry = r })
      end)
    end
  end)
end)
