-- Fair worker loops (issue 15): a worker pass is bounded, so the loop's
-- timers and heartbeats run while a backlog drains on the same worker.
local S = require "fixtures.support"

-- One worker with 4 slots, N no-ops queued, then a napping task claimed
-- first; returns the world, the nap's result and the last no-op's handle.
local function backlog(N, cfg)
  local c = { minWorkers = 1, maxWorkers = 1, taskQueues = { default = { concurrency = 4 } } }
  for k, v in pairs(cfg or {}) do c[k] = v end
  local w = S.started(c)
  local inputs = {}
  for i = 1, N do inputs[i] = i end
  local hs = w:executeMany("square", inputs)
  local nap = w:execute("nap", { ms = 10 }, { priority = 10 })
  return w, nap, hs[N]
end

describe("a worker draining a backlog", function()
  after_each(S.cleanup)

  it("wakes a sleeping task on its own loop before the backlog is drained", function()
    local w, nap, last = backlog(200000)
    local r = assert(S.result(nap, 60000))
    assert(S.result(last, 60000))
    local done = w:query(last.id).completedAt
    -- Before passes were bounded, the nap's 10 ms timer only fired once the
    -- worker had run every queued no-op: it woke after the last one.
    assert.is_true(r.t1 < done, ("the nap woke at %d, the backlog drained at %d"):format(r.t1, done))
  end)

  it("keeps beating: no healthy worker is declared lost", function()
    local w, _, last = backlog(300000, { heartbeatInterval = 50, heartbeatTimeout = 250 })
    assert(S.result(last, 60000))
    local ws = w:getWorkers()
    assert.equals(1, #ws)
    assert.equals("worker-1", ws[1].id, "worker-1 was replaced (declared lost)")
    assert.equals(300001, w:getMetrics().tasks.completed)
  end)
end)

describe("a task in a file-mode world", function()
  after_each(function()
    S.cleanup()
    S.cleanup_files()
  end)

  it("gets a result only once the outcome is committed, also when it yields for it", function()
    -- In a child process whose store takes 100 ms per commit (a slow disk), a task awaits
    -- a child task's result (a 150 ms nap: it ends after its creation was snapshotted for
    -- a commit), then reads the child's row from the database at once.
    local path, script, out = S.tmpname(), S.tmpname() .. ".lua", S.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(([[
      package.path = %q .. "/tests/lua/?.lua;" .. package.path
      local jobs = require "fixtures.jobs"
      local cfg = { persistence = "file", persistencePath = %q, minWorkers = 2,
        modules = { "fixtures.jobs" } }
      local w = athena.World.new(cfg)
      w:register(table.unpack(jobs.all()))
      w:start()
      local r = assert(w:execute("awaitstored", { v = 5, ms = 150, path = %q, config = cfg }):result(30000))
      print(r.r, r.committed)
      w:shutdown()
    ]]):format(os.getenv("ATHENA_SRC"), path, path))
    f:close()
    local ok = os.execute(("ATHENA_TEST_COMMIT_DELAY_MS=100 timeout -k 2 60 %s %s >%s 2>&1 </dev/null"):format(
      os.getenv("ATHENA_BIN"), script, out))
    local text = S.readfile(out) or ""
    os.remove(script)
    assert.is_true(ok, text)
    -- before result() waited for the commit by yielding, it returned with the row still
    -- "running" on disk
    assert.equals("5\ttrue\n", text)
  end)

  it("yields while its execute waits for the commit: other tasks of its worker go on", function()
    local path = S.tmpname()
    local cfg = { persistence = "file", persistencePath = path, minWorkers = 1, maxWorkers = 1,
      taskQueues = { default = { concurrency = 2 } } }
    local w = S.started(cfg)
    -- 300 executes one after another, each acknowledged once committed
    local spawn = w:execute("spawner", { n = 300, config = S.config(cfg) })
    local nap = w:execute("nap", { ms = 10 })
    local s = assert(S.result(spawn, 60000))
    local n = assert(S.result(nap))
    assert.is_true(s.t1 - s.t0 > 30, "the commits took " .. (s.t1 - s.t0) .. " ms: too quick to tell")
    -- before commits were waited for by yielding, the worker's loop stood
    -- still until the spawner returned, and the nap woke only then
    assert.is_true(n.t1 < s.t1, ("the nap woke at %d, the spawner ended at %d"):format(n.t1, s.t1))
    -- and every spawned task runs
    S.eventually(function() return w:getMetrics().tasks.completed == 302 end, S.WAIT,
      "the 300 echoes, the spawner and the nap to complete")
  end)
end)
