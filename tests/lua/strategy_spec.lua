-- Failure strategies for activities and dead letters (SEMANTICS §8, §4.2
-- T9/T15, §10.2 queryTasks).
local athena = require "athena"
local S = require "fixtures.support"
local U = require "fixtures.sem_util"

local ids, contains = S.ids, S.contains

describe("failure strategies", function()
  after_each(function()
    U.cleanup()
    U.cleanup_files()
  end)

  describe("quarantine", function()
    it("a final failure quarantines; requeue runs it again with a fresh attempt count", function()
      local w = U.world()
      local path = U.tmpname() -- the gate opens once this file exists
      local h = w:execute("sem.gate", { path = path })
      local r, err = U.result(h)
      assert.is_nil(r)
      assert.equals("EGATE", err.code)
      assert.equals(2, err.attempt)
      local q = h:query()
      assert.equals("quarantined", q.status)
      assert.equals(2, q.attempt)
      assert.equals("quarantine", q.failureStrategy)
      assert.is_true(contains(ids(w:getQuarantined()), h.id))
      local m = w:getMetrics().tasks
      assert.equals(1, m.quarantined)
      assert.equals(0, m.failed)

      local f = assert(io.open(path, "w"))
      f:write("open")
      f:close()
      assert.is_true(w:requeue(h.id))
      r, err = U.result(h)
      assert.is_nil(err)
      assert.is_true(r.opened)
      assert.equals(1, r.attempt) -- T15: attempt = 0, then T4
      q = h:query()
      assert.equals("completed", q.status)
      assert.equals(1, q.attempt)
      assert.is_nil(q.error)
      assert.is_false(contains(ids(w:getQuarantined()), h.id))
      assert.equals(1, w:getMetrics().tasks.completed)
    end)

    it("a requeued task that fails again is quarantined again", function()
      local w = U.world()
      local h = w:execute("sem.quarantineFail")
      U.result(h)
      assert.equals("quarantined", h:status())
      assert.is_true(w:requeue(h.id))
      local _, err = U.result(h)
      assert.equals("EQUAR", err.code)
      assert.equals("quarantined", h:status())
      assert.equals(1, h:query().attempt)
      assert.equals(2, w:getMetrics().tasks.quarantined)
    end)

    it("purge(id) deletes a quarantined task", function()
      local w = U.world()
      local h = w:execute("sem.quarantineFail")
      U.result(h)
      assert.equals("quarantined", h:status())
      local id = h.id
      assert.is_true(w:purge(id))
      local q, err = w:query(id)
      assert.is_nil(q)
      assert.equals("ENOTFOUND", err.code)
      assert.is_false(contains(ids(w:getQuarantined()), id))
      local ok
      ok, err = w:purge(id)
      assert.is_nil(ok)
      assert.equals("ENOTFOUND", err.code)
      ok, err = w:requeue(id)
      assert.is_nil(ok)
      assert.equals("ENOTFOUND", err.code)
    end)

    it("requeue/purge of a task that is not quarantined give nil, EINVAL and change nothing", function()
      local w = U.world { failureStrategy = "ignore" }
      local done = w:execute("sem.echo", "kept")
      U.result(done)
      local failed = w:execute("sem.plainFail")
      U.result(failed)
      local running = w:execute("sem.nap", { ms = 5000 })
      U.wait_status(running, "running", 2000)
      for _, h in ipairs { done, failed, running } do
        local status = h:status()
        for _, op in ipairs { "requeue", "purge" } do
          local ok, err = w[op](w, h.id)
          assert.is_nil(ok, op .. " " .. status)
          assert.equals("EINVAL", err.code)
          assert.equals(status, h:status())
        end
      end
      assert.equals("kept", w:query(done.id).result.input)
      running:cancel()
    end)

    it("requeue/purge of an unknown id give nil, ENOTFOUND", function()
      local w = U.world()
      for _, op in ipairs { "requeue", "purge" } do
        local ok, err = w[op](w, "no-such-task")
        assert.is_nil(ok)
        assert.equals("ENOTFOUND", err.code)
      end
    end)
  end)

  describe("the effective strategy: execute option > definition > world", function()
    it("execute{failureStrategy = 'quarantine'} overrides a definition's ignore", function()
      local w = U.world()
      local h = w:execute("sem.ignoreFail", nil, { failureStrategy = "quarantine" })
      U.result(h)
      local q = h:query()
      assert.equals("quarantined", q.status)
      assert.equals("quarantine", q.failureStrategy)
    end)

    it("execute{failureStrategy = 'ignore'} overrides a definition's quarantine", function()
      local w = U.world()
      local h = w:execute("sem.gate", { path = U.tmpname() }, { failureStrategy = "ignore" })
      local _, err = U.result(h)
      assert.equals("EGATE", err.code)
      local q = h:query()
      assert.equals("failed", q.status)
      assert.equals("ignore", q.failureStrategy)
      assert.equals(2, q.attempt) -- its explicit retry still applies
    end)

    it("a definition's strategy overrides the world's", function()
      local w = U.world { failureStrategy = "quarantine" }
      local h = w:execute("sem.ignoreFail")
      U.result(h)
      assert.equals("failed", h:status())
      assert.equals("ignore", h:query().failureStrategy)
    end)

    it("world failureStrategy = 'ignore': failed after one attempt", function()
      local w = U.world { failureStrategy = "ignore" }
      local h = w:execute("sem.plainFail")
      local _, err = U.result(h, 2000)
      assert.equals("EPLAIN", err.code)
      local q = h:query()
      assert.equals("failed", q.status)
      assert.equals(1, q.attempt)
      assert.equals(1, q.maxAttempts)
      assert.equals("ignore", q.failureStrategy)
      local m = w:getMetrics().tasks
      assert.equals(1, m.failed)
      assert.equals(0, m.retried)
    end)

    it("world failureStrategy = 'quarantine': quarantined after one attempt", function()
      local w = U.world { failureStrategy = "quarantine" }
      local h = w:execute("sem.plainFail")
      U.result(h, 2000)
      local q = h:query()
      assert.equals("quarantined", q.status)
      assert.equals(1, q.attempt)
      assert.equals(1, q.maxAttempts)
    end)

    it("an unknown strategy in execute raises EINVAL and enqueues nothing", function()
      local w = U.world()
      U.raises("EINVAL", w.execute, w, "sem.echo", 1, { failureStrategy = "explode" })
      assert.same({}, w:queryTasks())
    end)
  end)

  describe("queryTasks", function()
    it("{status = 'failed', limit = 2} returns the 2 newest failed tasks, newest first", function()
      local w = U.world { failureStrategy = "ignore" }
      local hs = {}
      for i = 1, 3 do
        hs[i] = w:execute("sem.plainFail")
        U.result(hs[i], 2000)
        athena.sleep(3) -- distinct createdAt
      end
      U.result(w:execute("sem.echo", "ok"))
      local rows = w:queryTasks { status = "failed", limit = 2 }
      assert.equals(2, #rows)
      assert.same({ hs[3].id, hs[2].id }, ids(rows))
      for _, r in ipairs(rows) do
        assert.equals("failed", r.status)
        assert.equals("EPLAIN", r.error.code)
        assert.is_nil(r.history)
      end
      assert.is_true(rows[1].createdAt > rows[2].createdAt)
      local rest = w:queryTasks { status = "failed", limit = 2, offset = 2 }
      assert.same({ hs[1].id }, ids(rest))
      assert.equals(4, #w:queryTasks { status = { "failed", "completed" } })
      assert.equals(1, #w:queryTasks { status = "completed" })
      assert.equals(3, #w:queryTasks { name = "sem.plainFail" })
    end)

    it("getQuarantined(filter) is queryTasks limited to quarantined", function()
      local w = U.world { failureStrategy = "quarantine" }
      local hs = {}
      for i = 1, 3 do
        hs[i] = w:execute("sem.plainFail")
        U.result(hs[i], 2000)
        athena.sleep(3)
      end
      U.result(w:execute("sem.echo", "ok"))
      assert.equals(3, #w:getQuarantined())
      assert.same({ hs[3].id, hs[2].id }, ids(w:getQuarantined { limit = 2 }))
      assert.equals(0, #w:getQuarantined { name = "sem.echo" })
    end)

    describe("bad filters raise EINVAL", function()
      local bad = {
        { status = "bogus" }, { status = { "failed", "nope" } }, { status = 42 },
        { limit = 0 }, { limit = 1001 }, { offset = -1 }, { since = "yesterday" }, { ["until"] = 1.5 },
        { bogus = true },
      }
      for i, f in ipairs(bad) do
        it("case " .. i, function()
          local w = U.world()
          U.raises("EINVAL", w.queryTasks, w, f)
          U.raises("EINVAL", w.getQuarantined, w, f)
        end)
      end
    end)
  end)
end)
