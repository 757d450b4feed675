-- athena.withRetry, athena.retryable and athena.shouldRetryError (SEMANTICS
-- §7.5), in the spec's own state and inside tasks.
local athena = require "athena"
local U = require "fixtures.sem_util"

-- A function failing (raising `err`, default "not yet") on its first
-- `fails` calls, then returning `...`; calls counted in c.n.
local function failing(fails, err, ...)
  local c = { n = 0 }
  local vals = table.pack(...)
  return function()
    c.n = c.n + 1
    if c.n <= fails then error(err or "not yet", 0) end
    return table.unpack(vals, 1, vals.n)
  end, c
end

describe("withRetry outside tasks", function()
  it("retries until fn succeeds and returns all its values", function()
    local fn, c = failing(2, nil, "ok", nil, 3)
    local res = table.pack(athena.withRetry(fn, { initialInterval = 10 }))
    assert.equals(3, c.n)
    assert.equals(3, res.n)
    assert.equals("ok", res[1])
    assert.is_nil(res[2])
    assert.equals(3, res[3])
  end)

  it("a returned nil, e is a failure too", function()
    local n = 0
    local r = athena.withRetry(function()
      n = n + 1
      if n < 2 then return nil, "soft failure" end
      return "second"
    end, { initialInterval = 10 })
    assert.equals("second", r)
    assert.equals(2, n)
  end)

  it("after the last failure returns nil, err with err.attempt = attempts made", function()
    for _, max in ipairs { 1, 3, 4 } do
      local fn, c = failing(100)
      local r, err = athena.withRetry(fn, { maxAttempts = max, initialInterval = 5, backoff = "constant" })
      assert.is_nil(r)
      assert.equals(max, c.n)
      assert.equals("EHANDLER", err.code)
      assert.equals(max, err.attempt)
    end
    -- default maxAttempts: 3
    local fn, c = failing(100)
    local _, err = athena.withRetry(fn, { initialInterval = 5 })
    assert.equals(3, c.n)
    assert.equals(3, err.attempt)
  end)

  it("keeps the code of an error value", function()
    local fn = failing(100, { code = "EMINE", message = "m" })
    local _, err = athena.withRetry(fn, { maxAttempts = 2, initialInterval = 5 })
    assert.equals("EMINE", err.code)
    assert.equals(2, err.attempt)
  end)

  it("FatalError stops at once", function()
    local fn, c = failing(100, athena.FatalError("no"))
    local t0 = athena.now()
    local r, err = athena.withRetry(fn, { maxAttempts = 5, initialInterval = 500 })
    assert.is_nil(r)
    assert.equals(1, c.n)
    assert.equals("EFATAL", err.code)
    assert.equals(1, err.attempt)
    assert.is_true(athena.now() - t0 < 300)
  end)

  it("non-retryable errors stop at once (retryable = false, nonRetryable)", function()
    local fn, c = failing(100, { code = "EX", retryable = false })
    local _, err = athena.withRetry(fn, { maxAttempts = 5, initialInterval = 5 })
    assert.equals(1, c.n)
    assert.equals("EX", err.code)
    local fn2, c2 = failing(100, { code = "EMINE" })
    _, err = athena.withRetry(fn2, { maxAttempts = 5, initialInterval = 5, nonRetryable = { "EMINE" } })
    assert.equals(1, c2.n)
    assert.equals("EMINE", err.code)
    local fn3, c3 = failing(100, { code = "EOTHER", name = "EMINE" })
    athena.withRetry(fn3, { maxAttempts = 5, initialInterval = 5, nonRetryable = { "EMINE" } })
    assert.equals(1, c3.n)
  end)

  it("shouldRetry false stops at once: no delay, no onRetry", function()
    local fn, c = failing(100, { code = "EMINE" })
    local seen, retried = nil, 0
    local t0 = athena.now()
    local r, err = athena.withRetry(fn, {
      maxAttempts = 5, initialInterval = 500,
      shouldRetry = function(e) seen = e.code; return false end,
      onRetry = function() retried = retried + 1 end,
    })
    assert.is_nil(r)
    assert.equals("EMINE", err.code)
    assert.equals(1, err.attempt)
    assert.equals(1, c.n)
    assert.equals("EMINE", seen)
    assert.equals(0, retried)
    assert.is_true(athena.now() - t0 < 300)
  end)

  it("shouldRetry is consulted only when another attempt remains", function()
    local fn = failing(100)
    local asked = 0
    athena.withRetry(fn, { maxAttempts = 2, initialInterval = 5,
      shouldRetry = function() asked = asked + 1; return true end })
    assert.equals(1, asked)
  end)

  it("onRetry(attempt, err, delayMs) gets the failed attempt and the §7.4 delay", function()
    local fn = failing(2, { code = "EMINE" }, "ok")
    local calls = {}
    local r = athena.withRetry(fn, { maxAttempts = 3, initialInterval = 10,
      onRetry = function(attempt, err, delay) calls[#calls + 1] = { attempt, err.code, delay } end })
    assert.equals("ok", r)
    assert.equals(2, #calls)
    assert.equals(1, calls[1][1])
    assert.equals(2, calls[2][1])
    assert.equals("EMINE", calls[1][2])
    assert.is_true(calls[1][3] >= 10 and calls[1][3] <= 11, "delay 1: " .. calls[1][3])
    assert.is_true(calls[2][3] >= 20 and calls[2][3] <= 22, "delay 2: " .. calls[2][3])
  end)

  it("RetryableError sets the delay exactly", function()
    local n, delays = 0, {}
    local t0 = athena.now()
    local r = athena.withRetry(function()
      n = n + 1
      if n == 1 then return nil, athena.RetryableError("later", 120) end
      return "ok"
    end, { initialInterval = 10, onRetry = function(_, _, d) delays[#delays + 1] = d end })
    local elapsed = athena.now() - t0
    assert.equals("ok", r)
    assert.same({ 120 }, delays)
    assert.is_true(elapsed >= 120, "elapsed " .. elapsed)
    -- without retryAfter: the backoff
    local fn = failing(1, athena.RetryableError("later"), "ok")
    delays = {}
    athena.withRetry(fn, { initialInterval = 10, onRetry = function(_, _, d) delays[#delays + 1] = d end })
    assert.is_true(delays[1] >= 10 and delays[1] <= 11)
  end)

  describe("timeout per attempt", function()
    for _, mode in ipairs { "plain", "pcall" } do
      it("interrupts an endless loop with ETIMEDOUT (" .. mode .. ")", function()
        local calls = 0
        local t0 = athena.now()
        local r, err = athena.withRetry(function()
          calls = calls + 1
          if mode == "pcall" then
            while true do pcall(function() while true do end end) end
          end
          while true do end
        end, { maxAttempts = 2, initialInterval = 10, timeout = 50 })
        local elapsed = athena.now() - t0
        assert.is_nil(r)
        assert.equals("ETIMEDOUT", err.code)
        assert.equals(2, err.attempt)
        assert.equals(2, calls)
        assert.is_true(elapsed >= 100 and elapsed < 2000, "elapsed " .. elapsed)
      end)
    end

    it("an attempt blocked in C past its timeout fails ETIMEDOUT once the call returns", function()
      local calls = 0
      local r, err = athena.withRetry(function()
        calls = calls + 1
        athena.sleep(300) -- blocks this thread outside a task
        return "late"
      end, { maxAttempts = 1, timeout = 50 })
      assert.is_nil(r)
      assert.is_table(err, "the late value was returned as a success")
      assert.equals("ETIMEDOUT", err.code)
      assert.equals(1, calls)
    end)

    it("a nested withRetry with a longer timeout does not extend the outer attempt's", function()
      local t0 = athena.now()
      local r, err = athena.withRetry(function()
        return athena.withRetry(function() while true do end end, { maxAttempts = 1, timeout = 1500 })
      end, { maxAttempts = 1, timeout = 100 })
      local elapsed = athena.now() - t0
      assert.is_nil(r)
      assert.equals("ETIMEDOUT", err.code)
      assert.is_true(elapsed < 1000, "the outer 100 ms attempt ended after " .. elapsed .. " ms")
    end)

    it("an attempt finishing in time keeps its values", function()
      local r, b = athena.withRetry(function() return "fast", 2 end, { timeout = 1000 })
      assert.equals("fast", r)
      assert.equals(2, b)
    end)
  end)

  it("errors raised by onRetry and shouldRetry propagate", function()
    local fn = failing(100)
    local ok, err = pcall(athena.withRetry, fn, { initialInterval = 5,
      onRetry = function() error({ code = "ECALLBACK" }) end })
    assert.is_false(ok)
    assert.equals("ECALLBACK", err.code)
    ok, err = pcall(athena.withRetry, fn, { initialInterval = 5,
      shouldRetry = function() error({ code = "ESHOULD" }) end })
    assert.is_false(ok)
    assert.equals("ESHOULD", err.code)
  end)

  it("athena.retryable(fn, opts) passes all arguments and retries", function()
    local n = 0
    local f = athena.retryable(function(...)
      n = n + 1
      if n == 1 then error("first") end
      return select("#", ...), ...
    end, { initialInterval = 5 })
    local res = table.pack(f(1, nil, "three", nil))
    assert.equals(2, n)
    assert.equals(5, res.n)
    assert.equals(4, res[1])
    assert.equals(1, res[2])
    assert.is_nil(res[3])
    assert.equals("three", res[4])
    -- the same function is reusable
    n = 1
    assert.equals(0, f())
  end)

  describe("bad opts raise EINVAL", function()
    local fn = function() return 1 end
    local bad = {
      { bogus = 1 }, { shouldRetry = 5 }, { onRetry = "x" }, { timeout = "1.5s" }, { timeout = 0 },
      { timeout = -1 }, { maxAttempts = 0 }, { backoff = "weird" }, { initialInterval = -5 },
      { multiplier = 0 },
    }
    for i, opts in ipairs(bad) do
      local k, v = next(opts)
      it(("case %d: %s = %s"):format(i, k, tostring(v)), function()
        U.raises("EINVAL", athena.withRetry, fn, opts)
      end)
    end

    it("wrong types raise Lua's standard argument errors", function()
      assert.has_error(function() athena.withRetry(5) end)
      assert.has_error(function() athena.withRetry(fn, 5) end)
      assert.has_error(function() athena.retryable("x") end)
      local ok, err = pcall(athena.withRetry, 5)
      assert.is_false(ok)
      assert.is_string(err)
    end)
  end)
end)

describe("shouldRetryError", function()
  local S = athena.shouldRetryError

  it("matches whole numbers/words only", function()
    assert.is_true(S("HTTP 503"))
    assert.is_true(S("status=503"))
    assert.is_false(S("1500 rows"))
    assert.is_false(S("5030"))
    assert.is_true(S.serverError("HTTP 503"))
    assert.is_false(S.serverError("1500 rows"))
    assert.is_true(S.network("connection reset by peer"))
    assert.is_true(S.network("Request TIMED OUT"))
    assert.is_false(S.network("networking")) -- not a whole word
    assert.is_true(S.rateLimit("Too Many Requests"))
    assert.is_true(S.rateLimit("got 429"))
    assert.is_false(S.rateLimit("4290"))
    assert.is_true(S({ code = "EHANDLER", message = "upstream said 502" }))
  end)

  it("uses codes and statuses of error values", function()
    assert.is_true(S.rateLimit({ status = 429 }))
    assert.is_true(S({ status = 429 }))
    assert.is_true(S.network({ code = "ECONNRESET" }))
    assert.is_true(S({ code = "ECONNRESET" }))
    assert.is_true(S.serverError({ status = 503 }))
    assert.is_false(S.serverError({ status = 501 }))
    assert.is_true(S.transient({ code = "EHEARTBEAT" }))
    assert.is_true(S.transient({ code = "EWORKERLOST" }))
    assert.is_true(S({ code = "EHEARTBEAT" }))
  end)

  it("EFATAL, ECANCELED and EINVAL are never retried", function()
    assert.is_false(S(athena.FatalError("timeout")))
    assert.is_false(S.transient(athena.FatalError("timeout")))
    assert.is_false(S({ code = "ECANCELED" }))
    assert.is_false(S({ code = "ECANCELED", message = "network" }))
    assert.is_false(S({ code = "EINVAL", status = 503 }))
  end)

  it("retryable = false wins over a transient code", function()
    local e = { code = "ETIMEDOUT", retryable = false }
    assert.is_true(S.network(e))
    assert.is_false(S(e))
  end)
end)

describe("withRetry inside a task", function()
  after_each(U.cleanup)

  it("retries until success and returns fn's values", function()
    local w = U.world()
    local r = U.result(w:execute("sem.wrTask", { succeedAt = 3 }))
    assert.same({ a = "ok", b = 3, calls = 3 }, r)
  end)

  for _, mode in ipairs { "plain", "pcall", "sleep" } do
    it("a per-attempt timeout stops the attempt, not the task (" .. mode .. ")", function()
      local w = U.world()
      local h = w:execute("sem.wrTimeout", { mode = mode })
      local r, err = U.result(h, 4000)
      assert.is_nil(err)
      assert.equals("completed", h:status())
      assert.equals("ETIMEDOUT", r.code)
      assert.equals(2, r.attempt)
      assert.equals(2, r.calls)
      assert.equals("went on", r.after)
      assert.is_true(r.elapsed >= 100 and r.elapsed < 2000, "elapsed " .. r.elapsed)
    end)
  end

  it("a nested withRetry with a longer timeout does not extend the outer attempt's", function()
    local w = U.world()
    local r = U.result(w:execute("sem.wrNested"), 4000)
    assert.is_nil(r.r)
    assert.equals("ETIMEDOUT", r.code)
    assert.is_true(r.elapsed < 1000, "the outer 100 ms attempt ended after " .. r.elapsed .. " ms")
  end)

  it("the wait between attempts yields: another task runs meanwhile on the same worker", function()
    local w = U.world { taskQueues = { default = { concurrency = 2 } } }
    assert.equals(1, #w:getWorkers())
    local ha = w:execute("sem.wrWait")
    -- A's first attempt fails as soon as it starts; B is claimed after that
    U.wait_status(ha, "running", 2000)
    local hb = w:execute("sem.stamp")
    local rb = U.result(hb, 250) -- well before A's wait ends
    assert.equals("running", ha:status())
    local ra = U.result(ha)
    assert.equals("ok", ra.r)
    assert.is_true(ra.secondAt - ra.failedAt >= 300)
    assert.is_true(ra.failedAt <= rb.at and rb.at < ra.secondAt,
      ("B ran at %d, A waited %d..%d"):format(rb.at, ra.failedAt, ra.secondAt))
    assert.equals(hb:query().workerId, ha:query().workerId)
  end)
end)
