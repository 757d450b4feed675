-- Finished tasks leave RAM once committed (issue 15): in file and hybrid
-- mode a terminal task (dead letters aside) is dropped from memory when its
-- final state is durable, and query, queryTasks, children and idempotent
-- execute read it back from the store.
local athena = require "athena"
local S = require "fixtures.support"
local jobs = require "fixtures.store_jobs"

local worlds = {}

local function started(mode, path, extra)
  local cfg = { persistence = mode, persistencePath = path, modules = { "fixtures.store_jobs" },
    minWorkers = 1, maxWorkers = 1, taskQueues = { solo = { workers = 1 } } }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  local w = athena.World.new(cfg)
  w:register(table.unpack(jobs.all()))
  w:start()
  worlds[#worlds + 1] = w
  return w
end

local function resident(w)
  return w:getMetrics().tasks.resident
end

-- Waits until RAM holds `n` tasks: the finished ones were committed and left.
local function settled(w, n)
  S.eventually(function() return resident(w) == n end, S.WAIT,
    "RAM to hold " .. n .. " tasks (holds " .. resident(w) .. ")")
end

for _, mode in ipairs { "file", "hybrid" } do
  describe("stored tasks (" .. mode .. ")", function()
    after_each(function()
      for i = #worlds, 1, -1 do
        pcall(worlds[i].shutdown, worlds[i])
        worlds[i] = nil
      end
      S.cleanup_files()
    end)

    it("a commit of thousands of finished tasks takes them all out of RAM", function()
      -- the store thread drops them 1,024 at a time (store.c, TRIM_PIECE);
      -- hybrid: one commit holds them all (flushInterval outlasts the run)
      local w = started(mode, S.tmpname(), { flushInterval = 2000 })
      local inputs = {}
      for i = 1, 3000 do inputs[i] = { v = i } end
      local hs = w:executeMany("st.echo", inputs)
      for i = 1, #hs, 500 do assert.same({ v = i }, S.result(hs[i])) end
      S.result(hs[#hs])
      settled(w, 0)
      assert.same({ v = 2999 }, assert(w:query(hs[2999].id)).result)
    end)

    it("a finished task leaves RAM once committed; query reads it back, the same", function()
      local w = started(mode, S.tmpname())
      local h = w:execute("st.echo", { v = 7 })
      assert.same({ v = 7 }, S.result(h))
      local before = h:query() -- from the task the handle holds
      settled(w, 0)
      local q = assert(w:query(h.id))
      for _, k in ipairs { "id", "name", "status", "attempt", "createdAt", "startedAt", "completedAt",
        "maxAttempts", "failureStrategy", "taskQueue" } do
        assert.same(before[k], q[k], k)
      end
      assert.same({ v = 7 }, q.result)
      assert.same({ v = 7 }, q.input)
      assert.same({ v = 7 }, S.result(h)) -- the handle still answers
      local r, err = w:query("st.echo-no-such-task")
      assert.is_nil(r)
      assert.equals("ENOTFOUND", err.code)
    end)

    it("queryTasks pages across RAM and the store, newest first, each task once", function()
      local w = started(mode, S.tmpname())
      local ids = {}
      for i = 1, 30 do
        local h = w:execute("st.echo", i)
        S.result(h)
        ids[i] = h.id
      end
      settled(w, 0)
      -- some in RAM again: queued behind a delay, not finished
      local later = w:execute("st.echo", 99, { delay = "1h" })
      local got = {}
      for page = 0, 3 do
        for _, t in ipairs(w:queryTasks { limit = 8, offset = page * 8 }) do got[#got + 1] = t end
      end
      assert.equals(31, #got)
      local seen = {}
      for i, t in ipairs(got) do
        assert.is_nil(seen[t.id], "twice: " .. t.id)
        seen[t.id] = true
        if i > 1 then assert.is_true(got[i - 1].createdAt >= t.createdAt) end
      end
      assert.is_true(seen[later.id] and seen[ids[1]] and seen[ids[30]])
      local done = w:queryTasks { status = "completed", limit = 100 }
      assert.equals(30, #done)
      assert.equals(0, #w:queryTasks { status = "completed", name = "st.fail" })
      assert.equals(30, #w:queryTasks { status = { "completed", "scheduled" }, limit = 30, offset = 1 })
    end)

    it("an explicit id that left RAM is still taken: execute hands back the stored task", function()
      local w = started(mode, S.tmpname())
      assert.equals(1, S.result(w:execute("st.echo", 1, { id = "once" })))
      settled(w, 0)
      local again = w:execute("st.echo", 2, { id = "once" })
      assert.equals(1, S.result(again)) -- not run again
      assert.equals(1, w:getMetrics().tasks.completed)
      local err = S.raises("EINVAL", w.execute, w, "st.fail", "x", { id = "once" })
      assert.matches("in use by st.echo", err.message, 1, true)
    end)

    -- ctx:run skips the store when the workflow's id is its own (generated
    -- here, not recovered): unless another task took an id under it
    it("a task that took a workflow step's id and left RAM is that step, as in execute", function()
      local w = started(mode, S.tmpname(), { taskQueues = { solo = { workers = 1 }, default = { concurrency = 4 } } })
      local go = S.tmpname()
      local h = w:execute("st.gatedflow", { go = go, v = "step" })
      S.eventually(function() return #w:query(h.id).children == 1 end, S.WAIT, "step 1")
      assert.equals("mine", S.result(w:execute("st.echo", "mine", { id = h.id .. "/1/2" })))
      settled(w, 2) -- the workflow and its step 1
      io.open(go, "w"):close()
      assert.equals("mine", S.result(h)) -- step 2 was handed the stored task
      assert.equals(1, #w:queryTasks { name = "st.echo", limit = 10 })
      assert.equals("ok", w:execute("st.echo", "ok"):result(S.WAIT)) -- the store takes writes
    end)

    it("a workflow's finished children are listed from the store", function()
      local w = started(mode, S.tmpname())
      local h = w:execute("st.flow", { n = 4 })
      assert.equals(10, S.result(h))
      settled(w, 0)
      local q = assert(w:query(h.id))
      assert.equals(4, #q.children)
      local kids = w:queryTasks { parentId = h.id }
      assert.equals(4, #kids)
      for _, k in ipairs(kids) do assert.equals(h.id, k.parentId) end
      assert.equals("completed", w:query(q.children[1]).status)
    end)

    it("a workflow's children are paged in creation order, the stored and the resident merged", function()
      local w = started(mode, S.tmpname())
      local h = w:execute("st.fanflow", { n = 9 })
      S.eventually(function() return #w:query(h.id).children == 10 end, S.WAIT, "the delayed child")
      settled(w, 2) -- the workflow and its delayed child; the 9 steps are stored
      local all, after, pages = {}, nil, 0
      repeat
        local page = assert(w:children(h.id, { after = after, limit = 4 }))
        for _, id in ipairs(page.ids) do all[#all + 1] = id end
        after, pages = page.next, pages + 1
      until after == nil
      assert.equals(3, pages)
      assert.equals(10, #all)
      for i = 1, 9 do assert.equals(h.id .. "/1/" .. i, all[i]) end
      assert.equals(h.id .. "/1/10", all[10]) -- the resident child, last
      local q = w:query(h.id)
      assert.same(all, q.children)
      assert.is_nil(q.childrenNext)
    end)

    it("after a restart, finished tasks stay in the store, not in RAM", function()
      local path = S.tmpname()
      local w = started(mode, path)
      local hs = {}
      for i = 1, 20 do hs[i] = w:execute("st.echo", i) end
      for _, h in ipairs(hs) do S.result(h) end
      local gated = w:execute("st.echo", 0, { delay = "1h" })
      w:shutdown()
      local w2 = started(mode, path)
      assert.equals(1, resident(w2)) -- the delayed one
      assert.equals(20, S.result(w2:execute("st.echo", 0, { id = hs[20].id })))
      assert.equals("completed", w2:query(hs[1].id).status)
      assert.equals("scheduled", w2:query(gated.id).status)
      assert.equals(20, #w2:queryTasks { status = "completed" })
    end)

    it("dead letters stay in RAM and can be requeued", function()
      local w = started(mode, S.tmpname(), { failureStrategy = "quarantine" })
      local h = w:execute("st.fail", "no")
      S.result(h)
      assert.equals(1, resident(w))
      assert.equals(1, #w:getQuarantined())
      assert.equals("quarantined", w:query(h.id).status)
    end)
  end)
end
