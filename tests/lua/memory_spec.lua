-- World memoryLimit: a worker state's Lua heap is capped while a task runs;
-- a task that allocates without bound fails ENOMEM (never retried) and the
-- worker goes on. (memoryLimit is an Athena extension: not in SEMANTICS §2.)
local athena = require "athena"
local U = require "fixtures.sem_util"

describe("memoryLimit", function()
  after_each(U.cleanup)

  it("a task allocating without bound fails ENOMEM, is not retried, and the worker goes on", function()
    local w = U.world { memoryLimit = "32MB" }
    local wid = w:getWorkers()[1].id
    local t0 = athena.now()
    local h = w:execute("sem.hog")
    local r, err = h:result(20000)
    local elapsed = athena.now() - t0
    assert.is_nil(r)
    assert.equals("failed", h:status())
    assert.equals("ENOMEM", err.code)
    assert.is_false(err.retryable)
    local q = h:query()
    assert.equals(1, q.attempt) -- maxAttempts 3, but not retried
    assert.equals(3, q.maxAttempts)
    assert.equals(0, w:getMetrics().tasks.retried)
    assert.is_true(elapsed < 15000, "took " .. elapsed .. " ms")
    -- the same worker completes a normal task
    local r2 = U.result(w:execute("sem.echo", { big = string.rep("y", 1000) }))
    assert.equals(1000, #r2.input.big)
    local wks = w:getWorkers()
    assert.equals(1, #wks)
    assert.equals(wid, wks[1].id)
    assert.equals(1, wks[1].tasksCompleted)
    assert.equals(1, wks[1].tasksFailed)
  end)

  it("the limit holds again for the next task (twice in a row)", function()
    local w = U.world { memoryLimit = "32MB" }
    for _ = 1, 2 do
      local h = w:execute("sem.hog")
      local _, err = h:result(20000)
      assert.equals("failed", h:status())
      assert.equals("ENOMEM", err.code)
    end
    assert.equals("ok", U.result(w:execute("sem.echo", "ok")).input)
  end)

  it("worker states collect garbage generationally (a task's garbage dies young)", function()
    local w = U.world {}
    assert.equals("generational", U.result(w:execute("sem.gcmode")))
  end)

  describe("bad values raise EINVAL", function()
    local bad = { "32mb", "1.5MB", "32 MB", "32", "MB", "0MB", "-1MB", "32TB", 1000, 0, -1, 1048576.5,
      true, {} }
    for i, v in ipairs(bad) do
      it(("case %d: %s"):format(i, tostring(v)), function()
        U.raises("EINVAL", athena.World.new, { persistence = "memory", memoryLimit = v })
      end)
    end

    it("accepts byte counts and KB/MB/GB strings", function()
      for _, v in ipairs { "1MB", "2048KB", "1GB", 64 * 1024 * 1024, 16777216.0 } do
        local w = athena.World.new { persistence = "memory", memoryLimit = v }
        w:shutdown()
      end
    end)
  end)
end)
