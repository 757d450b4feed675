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

-- Runs `body` (Lua, with `cfg`, a file-mode config on a fresh path, and the
-- fixture activities registered and started as `w`) in a child athena
-- process whose store waits `delay` ms before each commit, as on a slow
-- disk; returns what it printed.
local function slow_disk(delay, body)
  local path, script, out = S.tmpname(), S.tmpname() .. ".lua", S.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(([[
    package.path = %q .. "/tests/lua/?.lua;" .. package.path
    local jobs = require "fixtures.jobs"
    local cfg = { persistence = "file", persistencePath = %q, minWorkers = 1, maxWorkers = 1,
      taskQueues = { default = { concurrency = 2 } }, modules = { "fixtures.jobs" } }
    local w = athena.World.new(cfg)
    w:register(table.unpack(jobs.all()))
    w:start()
  ]]):format(os.getenv("ATHENA_SRC"), path) .. body .. "\nw:shutdown()\n")
  f:close()
  local ok = os.execute(("ATHENA_TEST_COMMIT_DELAY_MS=%d timeout -k 2 120 %s %s >%s 2>&1 </dev/null"):format(
    delay, os.getenv("ATHENA_BIN"), script, out))
  local text = S.readfile(out) or ""
  os.remove(script)
  assert.is_true(ok, text)
  return text
end

describe("a task in a file-mode world", function()
  after_each(S.cleanup_files)

  it("gets a result only once the outcome is committed, also when it yields for it", function()
    -- Commits take 100 ms. A task awaits a child task's result (a 150 ms nap: it ends
    -- after its creation was taken into a commit), then reads the child's row from the
    -- database at once. Before result() waited for the commit by yielding, it returned
    -- with the row still "running" on disk.
    local text = slow_disk(100, [[
      local r = assert(w:execute("awaitstored", { v = 5, ms = 150, path = cfg.persistencePath,
        config = cfg }):result(60000))
      print(r.r, r.committed)
    ]])
    assert.equals("5\ttrue\n", text)
  end)

  it("yields while its execute waits for the commit: other tasks of its worker go on", function()
    -- Commits take 5 ms: 50 executes one after another, each acknowledged once committed,
    -- take at least 250 ms, while a nap of 10 ms shares the worker. Before commits were
    -- waited for by yielding, the worker's loop stood still until the spawner returned,
    -- and the nap woke only then.
    local text = slow_disk(5, [[
      local spawn = w:execute("spawner", { n = 50, config = cfg })
      local nap = w:execute("nap", { ms = 10 })
      local s = assert(spawn:result(60000))
      local n = assert(nap:result(60000))
      print(s.t1 - s.t0 >= 250, n.t1 < s.t1, n.t1 - s.t0, s.t1 - s.t0)
      -- every spawned task runs
      local deadline = athena.now() + 30000
      while w:getMetrics().tasks.completed < 52 and athena.now() < deadline do athena.sleep(5) end
      print(w:getMetrics().tasks.completed)
    ]])
    local long, first, napped, spawned, done = text:match("^(%a+)\t(%a+)\t(%d+)\t(%d+)\n(%d+)\n$")
    assert(long, text)
    assert.equals("true", long, "the spawner took only " .. tostring(spawned) .. " ms")
    assert.equals("true", first, ("the nap woke %s ms in, the spawner ended %s ms in"):format(napped, spawned))
    assert.equals("52", done)
  end)
end)
