-- Heartbeats (SEMANTICS §6.1 ctx:heartbeat and ctx.lastHeartbeat, §6.2
-- heartbeatTimeout, §4.3 lastHeartbeat/heartbeatDetails).
local athena = require "athena"
local U = require "fixtures.sem_util"

describe("heartbeat", function()
  after_each(U.cleanup)

  it("a task heartbeating every 20 ms for 300 ms (heartbeatTimeout 100) completes", function()
    local w = U.world()
    local h = w:execute("sem.beater", { every = 20, total = 300 })
    local r, err = U.result(h)
    assert.is_nil(err)
    assert.equals("completed", h:status())
    assert.is_true(r.beats >= 5, "beats " .. tostring(r.beats))
    local q = h:query()
    assert.same({ n = r.beats }, q.heartbeatDetails) -- the latest details
    assert.equals("integer", math.type(q.lastHeartbeat))
    assert.is_true(q.lastHeartbeat >= q.startedAt and q.lastHeartbeat <= q.completedAt)
  end)

  it("a task that stops heartbeating fails EHEARTBEAT (waiting at a yield point)", function()
    local w = U.world()
    local t0 = athena.now()
    local h = w:execute("sem.stall")
    local r, err = h:result(3000)
    local elapsed = athena.now() - t0
    assert.is_nil(r)
    assert.equals("failed", h:status())
    assert.equals("EHEARTBEAT", err.code)
    assert.is_true(err.retryable)
    -- 3 beats 10 ms apart, then 100 ms of silence; the stall lasts 2000 ms
    assert.is_true(elapsed >= 100 and elapsed < 800, "ended after " .. elapsed .. " ms")
    local q = h:query()
    assert.equals("EHEARTBEAT", q.error.code)
    assert.same({ i = 3 }, q.heartbeatDetails)
  end)

  it("a task that stops heartbeating while running pure Lua fails EHEARTBEAT", function()
    local w = U.world()
    local t0 = athena.now()
    local h = w:execute("sem.stall", { spin = true })
    local _, err = h:result(3000)
    local elapsed = athena.now() - t0
    assert.equals("failed", h:status())
    assert.equals("EHEARTBEAT", err.code)
    assert.is_true(elapsed < 800, "ended after " .. elapsed .. " ms")
    -- the worker goes on
    assert.equals(7, U.result(w:execute("sem.echo", 7), 2000).input)
  end)

  it("attempt 2 resumes from the checkpoint attempt 1 left in ctx.lastHeartbeat", function()
    local w = U.world()
    local h = w:execute("sem.checkpoint")
    local r, err = U.result(h)
    assert.is_nil(err)
    assert.equals(2, r.attempt)
    assert.equals(3, r.resumedFrom)
    assert.equals("nil", r.firstSaw) -- attempt 1 had no earlier heartbeat
    local q = h:query()
    assert.equals("completed", q.status)
    assert.equals(2, q.attempt)
    assert.same({ step = 3 }, q.heartbeatDetails)
    assert.equals("integer", math.type(q.lastHeartbeat))
    assert.is_true(q.lastHeartbeat >= q.createdAt and q.lastHeartbeat <= q.completedAt)
    assert.equals(1, w:getMetrics().tasks.retried)
  end)

  it("heartbeat details are visible in query() while the task runs", function()
    local w = U.world()
    local h = w:execute("sem.beater", { every = 20, total = 300 })
    local q = U.wait_until(function()
      local s = h:query()
      return s.heartbeatDetails ~= nil and s
    end, 2000, "heartbeatDetails")
    assert.equals("running", q.status)
    assert.is_number(q.heartbeatDetails.n)
    assert.equals("integer", math.type(q.lastHeartbeat))
    U.result(h)
  end)

  it("a heartbeat without details: query() shows its time and no details", function()
    local w = U.world()
    local h = w:execute("sem.beater", { every = 20, total = 300, bare = true })
    local q = U.wait_until(function()
      local ok, s = pcall(h.query, h) -- raised ENOMEM ("not enough memory") here
      assert(ok, s)
      return s.lastHeartbeat ~= nil and s
    end, 2000, "lastHeartbeat")
    assert.is_nil(q.heartbeatDetails)
    assert.equals("integer", math.type(q.lastHeartbeat))
    U.result(h)
  end)

  describe("ctx:heartbeat with details that are not a payload raises EINVAL in the task", function()
    for _, kind in ipairs { "function", "nested" } do
      it(kind, function()
        local w = U.world()
        local h = w:execute("sem.badBeat", kind)
        local r = U.result(h)
        assert.equals("completed", h:status())
        assert.is_false(r.ok)
        assert.equals("EINVAL", r.code)
        local q = h:query()
        assert.is_nil(q.heartbeatDetails)
        assert.is_nil(q.lastHeartbeat) -- nothing was recorded
      end)
    end
  end)
end)
