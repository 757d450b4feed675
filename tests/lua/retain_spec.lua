-- Terminal tasks leave RAM (issue 15): in memory mode at most
-- retain.terminal of them stay (oldest evicted first); counters are not
-- affected; a live handle still gets its result; an evicted id reads as
-- unknown.
local S = require "fixtures.support"

local function run(w, n, from)
  local inputs = {}
  for i = 1, n do inputs[i] = (from or 0) + i end
  local hs = w:executeMany("square", inputs)
  for _, h in ipairs(hs) do assert(S.result(h)) end
  return hs
end

describe("retain.terminal (memory mode)", function()
  after_each(S.cleanup)

  it("keeps at most that many terminal tasks, oldest evicted first; counters unaffected", function()
    local w = S.started { retain = { terminal = 100 } }
    local hs = run(w, 1000)
    -- the oldest are gone, the newest are there
    local r, err = w:query(hs[1].id)
    assert.is_nil(r)
    assert.equals("ENOTFOUND", err.code)
    assert.equals(1000000, w:query(hs[1000].id).result)
    local kept = w:queryTasks { status = "completed", limit = 1000 }
    assert.is_true(#kept <= 100 and #kept >= 90, "kept " .. #kept)
    local m = w:getMetrics()
    assert.equals(1000, m.tasks.completed)
  end)

  it("a handle kept across the eviction still answers", function()
    local w = S.started { retain = { terminal = 10 } }
    local h = w:execute("square", 12)
    assert.equals(144, S.result(h))
    run(w, 100, 100)
    assert.is_nil(w:query(h.id))            -- evicted from the world's table
    assert.equals(144, S.result(h))          -- the handle holds the task
    assert.equals("completed", h:status())
    assert.equals(144, h:query().result)
  end)

  it("retain.terminal = 0 keeps no finished task, and results still reach their waiters", function()
    local w = S.started { retain = { terminal = 0 }, minWorkers = 2 }
    local hs = run(w, 200)
    for i, h in ipairs(hs) do assert.equals(i * i, S.result(h)) end
    assert.same({}, w:queryTasks { status = "completed" })
  end)

  it("dead letters are never evicted", function()
    local w = S.started { retain = { terminal = 5 } }
    -- retryable = false: quarantined at its first failure
    local bad = w:execute("fail", { kind = "code_with_fields" }, { failureStrategy = "quarantine" })
    S.result(bad)
    run(w, 50)
    assert.equals("quarantined", w:query(bad.id).status)
    assert.equals(1, #w:getQuarantined())
  end)

  it("rejects a bad retain option, naming it", function()
    local athena = require "athena"
    for _, c in ipairs {
      { { retain = 5 }, "invalid retain" },
      { { retain = { terminal = -1 } }, "invalid retain.terminal" },
      { { retain = { terminal = 1.5 } }, "invalid retain.terminal" },
      { { retain = { keep = 1 } }, "unknown option retain.keep" },
    } do
      local err = S.raises("EINVAL", athena.World.new, c[1])
      assert.matches(c[2], err.message, 1, true)
    end
  end)
end)
