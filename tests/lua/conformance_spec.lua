-- Issue 14: what a new user hit first. Each bug's regression test, and the
-- errors that name the culprit and list what is allowed.
local athena = require "athena"
local S = require "fixtures.support"
local jobs = require "fixtures.jobs"
local conf = require "fixtures.conf_jobs"

local BIN = assert(os.getenv("ATHENA_BIN"), "ATHENA_BIN must point at the athena binary")

local function world(cfg)
  local c = { modules = { "fixtures.jobs", "fixtures.conf_jobs" } }
  for k, v in pairs(cfg or {}) do c[k] = v end
  local w = S.world(c)
  w:register(table.unpack(jobs.all()))
  w:register(conf.all())
  w:start()
  return w
end

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

describe("issue 14 bugs", function()
  after_each(function()
    S.cleanup()
    S.cleanup_files()
  end)

  it("queryTasks{parentId} lists a workflow's tasks, as query(id).children does", function()
    local w = world { minWorkers = 2 }
    local h = w:execute("conf.parent", 1)
    assert.equals(30, S.result(h))
    S.result(w:execute("conf.step", 7)) -- no parent: never listed
    local kids = w:query(h.id).children
    assert.equals(2, #kids)
    local got = {}
    for _, s in ipairs(w:queryTasks { parentId = h.id }) do
      assert.equals(h.id, s.parentId)
      got[#got + 1] = s.id
    end
    table.sort(got)
    table.sort(kids)
    assert.same(kids, got)
    -- with the other filters
    assert.equals(1, #w:queryTasks { parentId = h.id, limit = 1 })
    assert.equals(2, #w:queryTasks { parentId = h.id, status = "completed", name = "conf.step" })
    assert.same({}, w:queryTasks { parentId = h.id, status = "failed" })
    assert.same({}, w:queryTasks { parentId = "no-such-workflow" })
    S.raises("EINVAL", w.queryTasks, w, { parentId = 42 })
  end)

  it("the athena command's worker states have the global athena (a script without require)", function()
    local base = os.tmpname()
    local path = base .. ".lua"
    os.remove(base)
    local f = assert(io.open(path, "w"))
    f:write([[
      local w = athena.World.new { persistence = "memory", minWorkers = 1 }
      w:register(athena.activity("greet", function(_, name)
        return "hi " .. name .. " " .. tostring(athena.isWorker())
      end))
      w:start()
      print(w:execute("greet", "you"):result(10000))
      w:shutdown()
    ]])
    f:close()
    local out, err = os.tmpname(), os.tmpname()
    local ok = os.execute(("timeout -k 2 30 %s %s >%s 2>%s </dev/null"):format(q(BIN), q(path), out, err))
    local stdout, stderr = S.readfile(out), S.readfile(err)
    os.remove(out); os.remove(err); os.remove(path)
    assert.is_true(ok, stderr)
    assert.equals("hi you true\n", stdout)
  end)

  it("gateway policy states have the global athena too (a policy using it without require)", function()
    local dir = S.tmpname()
    assert(os.execute("mkdir " .. q(dir)))
    local db = assert(athena.db.open("sqlite:" .. dir .. "/g.db"))
    assert(db:exec("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"))
    assert(db:exec("INSERT INTO notes VALUES (1, 'a')"))
    db:close()
    local cfg = dir .. "/gateway.lua"
    local f = assert(io.open(cfg, "w"))
    f:write([[
      return { keys = { K = { rights = "*" } },
               tables = { { name = "notes", policy = function(req)
                 return athena.json.decode(athena.json.encode({ allow = true })).allow
               end } } }
    ]])
    f:close()
    local w = world()
    local base = w:serve { port = 0, gateway = { db = "sqlite:" .. dir .. "/g.db", config = cfg } }.url
    local res = assert(athena.http.request { method = "POST", url = base .. "/gateway/fetch",
      headers = { apikey = "K", ["x-api-key"] = "K", ["Content-Type"] = "application/json" },
      body = athena.json.encode { table_name = "notes" } })
    assert.equals(200, res.status, res.body)
    assert.equals(1, #athena.json.decode(res.body).data)
  end)

  it("getWorkers() reports a worker draining at shutdown as stopping, not busy", function()
    local w = world { minWorkers = 1 }
    local h = w:execute("conf.watch", { ms = 5000 })
    -- the watcher itself must have seen "busy" before the shutdown begins
    -- (a claimed task can still wait for its worker to run it)
    S.eventually(function()
      local d = h:query().heartbeatDetails
      return d and d[1] == "busy"
    end, S.WAIT, "the watcher to see its worker busy")
    local t0 = athena.now()
    local r = w:shutdown { timeout = "10s" }
    assert.equals(1, r.drained)
    local seen = S.result(h)
    assert.equals("busy", seen[1])
    assert.equals("stopping", seen[#seen])
    assert.is_true(athena.now() - t0 < 5000, "the watcher never saw stopping")
    assert.equals("stopped", w:getWorkers()[1].status)
  end)

  describe("shutdown drains the queue", function()
    it("memory: what cannot run before the timeout is counted as abandoned, and logged", function()
      local log = S.tmpname()
      local w = world { minWorkers = 1, log = { file = log } }
      local long = w:execute("nap", { ms = 5000 })
      S.eventually(function() return long:status() == "running" end, S.WAIT, "the nap to run")
      for i = 1, 3 do w:execute("echo", i) end -- queued behind the one slot
      w:execute("echo", 0, { delay = "1h" })    -- delayed: not waited for
      local r = w:shutdown { timeout = 200 }
      assert.same({ drained = 0, requeued = 1, abandoned = 5 }, r)
      assert.same(r, w:shutdown()) -- the same figures again
      local text = S.eventually(function()
        local s = S.readfile(log)
        return s and s:find("abandoned 5 unfinished tasks", 1, true) and s
      end, S.WAIT, "the warning in the log")
      assert.matches("level=warn", text)
    end)

    it("runs queued work, a workflow's steps included, before the workers stop", function()
      local w = world { minWorkers = 1 }
      local blocker = w:execute("nap", { ms = 200 })
      local hs = {}
      for i = 1, 20 do hs[i] = w:execute("echo", i) end
      local wf = w:execute("conf.parent", 2)
      local r = w:shutdown { timeout = "20s" }
      assert.equals(0, r.requeued)
      assert.equals(0, r.abandoned)
      assert.equals("completed", blocker:status())
      for i, h in ipairs(hs) do assert.equals(i, h:result(0)) end
      assert.equals(50, wf:result(0))
      assert.equals(2, #w:queryTasks { parentId = wf.id, status = "completed" })
      S.raises("ESHUTDOWN", w.execute, w, "echo", 1)
    end)

    it("a workflow segment refused by the shutdown waits for the next start instead of running again", function()
      local log = S.tmpname()
      local w = world { minWorkers = 1 }
      local blocker = w:execute("nap", { ms = 200 })
      S.eventually(function() return blocker:status() == "running" end, S.WAIT, "the nap to run")
      local h = w:execute("conf.outside", { log = log })
      local r = w:shutdown { timeout = 1000 }
      assert.equals(1, r.requeued) -- the refused segment
      local runs = select(2, (S.readfile(log) or ""):gsub("segment\n", ""))
      assert.equals(1, runs) -- once: the drain did not claim it again and again
      assert.equals("running", h:status()) -- its run goes on at the next start (file, hybrid)
      assert.equals("completed", blocker:status())
    end)

    it("file: queued tasks left at the timeout stay queued in the store and run after a restart", function()
      local path = S.tmpname()
      local cfg = { persistence = "file", persistencePath = path, minWorkers = 1 }
      local w1 = world(cfg)
      local long = w1:execute("nap", { ms = 5000 }, { id = "long" })
      S.eventually(function() return long:status() == "running" end, S.WAIT, "the nap to run")
      w1:execute("echo", "later", { id = "later" })
      assert.same({ drained = 0, requeued = 1, abandoned = 0 }, w1:shutdown { timeout = 100 })
      assert.equals("pending", w1:query("later").status)
      local w2 = world(cfg)
      assert.equals("later", S.await(w2, "later").result)
    end)
  end)

  it("getMetrics() counts each completion once, whichever worker ends it: tasks, workflows, steps", function()
    -- 4 workers of 4 slots. A worker counts the completions of plain tasks (steps too) before
    -- its exchange takes the world lock, a workflow's under it: none twice, none missed
    local w = world { minWorkers = 4, maxWorkers = 4, clock = "manual",
      taskQueues = { default = { concurrency = 4 } } }
    local inputs = {}
    for i = 1, 400 do inputs[i] = i end
    local hs = w:executeMany("echo", inputs)
    for i = 1, 20 do hs[#hs + 1] = w:execute("conf.parent", i) end
    for _, h in ipairs(hs) do S.result(h) end
    local m = w:getMetrics()
    local total = 400 + 20 + 2 * 20 -- each workflow ran two steps
    assert.equals(total, m.tasks.completed)
    assert.equals(total, m.throughput.perSecond)
    assert.equals(total, m.throughput.perMinute)
  end)

  it("getMetrics().throughput counts the current second: right after a burst of N, perMinute >= N", function()
    local w = world { minWorkers = 2, clock = "manual" } -- time stands still: the burst is in one second
    local n = 40
    for _, h in ipairs(w:executeMany("echo", (function()
      local t = {}
      for i = 1, n do t[i] = i end
      return t
    end)())) do S.result(h) end
    local tp = w:getMetrics().throughput
    assert.equals(n, tp.perSecond)
    assert.equals(n, tp.perMinute)
    assert.equals(n, tp.perHour)
    w:advance("1s") -- out of the last second's window, still in the minute's
    tp = w:getMetrics().throughput
    assert.equals(0, tp.perSecond)
    assert.equals(n, tp.perMinute)
    w:advance("59s")
    tp = w:getMetrics().throughput
    assert.equals(0, tp.perMinute)
    assert.equals(n, tp.perHour)
    w:advance("1h")
    assert.equals(0, w:getMetrics().throughput.perHour)
  end)
end)

describe("issue 14 errors name the option and what is allowed", function()
  after_each(S.cleanup)

  local function message(code, fn, ...)
    return S.raises(code, fn, ...).message
  end

  it("shutdown takes {timeout = d} or the duration itself; anything else is a bad argument", function()
    local w = world()
    assert.same({ drained = 0, requeued = 0, abandoned = 0 }, w:shutdown("5s"))
    local w2 = world()
    assert.matches("invalid timeout: %-5", message("EINVAL", w2.shutdown, w2, -5))
    assert.matches("invalid timeout: soon %(a duration", message("EINVAL", w2.shutdown, w2, { timeout = "soon" }))
    local raised = S.raised(w2.shutdown, w2, true)
    assert.matches("bad argument #1 to 'shutdown' %({ timeout = duration } or a duration expected, got boolean%)", raised)
    assert.same({ drained = 0, requeued = 0, abandoned = 0 }, w2:shutdown(1000))
  end)

  it("a bad delay names delay", function()
    local w = world()
    assert.matches("^invalid delay: %-5 %(a duration", message("EINVAL", w.execute, w, "echo", 1, { delay = -5 }))
    assert.matches("^invalid delay: 1.5s", message("EINVAL", w.executeMany, w, "echo", { 1 }, { delay = "1.5s" }))
    assert.equals(0, w:getMetrics().tasks.queued + w:getMetrics().tasks.scheduled) -- nothing created
  end)

  it("maxWorkers below the default minWorkers says that minWorkers defaults to 2", function()
    local m = message("EINVAL", athena.World.new, { maxWorkers = 1 })
    assert.matches("maxWorkers", m)
    assert.matches("minWorkers, which defaults to 2", m)
    -- with minWorkers given, it is fine
    assert.is_truthy(athena.World.new { minWorkers = 1, maxWorkers = 1, persistence = "memory" })
  end)

  it("execute's name must be a string or a definition: EINVAL, not ENOTFOUND", function()
    local w = world()
    for _, bad in ipairs { 42, true, {}, setmetatable({}, { __name = "other" }) } do
      assert.matches("bad argument #1 to 'execute' %(the activity's name expected",
        message("EINVAL", w.execute, w, bad, {}))
    end
    assert.matches("bad argument #1 to 'executeMany'", message("EINVAL", w.executeMany, w, 42, { 1 }))
    S.raises("ENOTFOUND", w.execute, w, "nope", {}) -- a string that names nothing
    -- a definition stands for its name
    assert.equals(5, S.result(w:execute(jobs.add, { a = 2, b = 3 })))
    local hs = w:executeMany(jobs.square, { 1, 2 })
    assert.same({ 1, 4 }, { S.result(hs[1]), S.result(hs[2]) })
  end)

  it("every failureStrategy option lists the valid names, from one validator", function()
    local w = world()
    local want = "invalid failureStrategy: \"Retry\" %(must be one of retry, cascade, compensate, ignore, quarantine%)"
    assert.matches(want, message("EINVAL", w.execute, w, "echo", 1, { failureStrategy = "Retry" }))
    assert.matches(want, message("EINVAL", w.executeMany, w, "echo", { 1 }, { failureStrategy = "Retry" }))
    assert.matches(want, message("EINVAL", athena.World.new, { failureStrategy = "Retry" }))
    assert.matches(want, message("EINVAL", athena.activity, "x", function() end, { failureStrategy = "Retry" }))
    assert.matches(want, message("EINVAL", w.schedule, w, "s", "echo", 1, "* * * * *", { failureStrategy = "Retry" }))
    assert.matches("invalid failureStrategy: 3 %(must be one of retry,",
      message("EINVAL", w.execute, w, "echo", 1, { failureStrategy = 3 }))
  end)

  it("backend must be a LocalBackend, and the error says which backends exist", function()
    local m = message("EINVAL", athena.World.new, { backend = { path = "/tmp/x" } })
    assert.matches("invalid backend: a plain table", m)
    assert.matches("athena.LocalBackend.new", m)
    assert.matches("athena.LocalBackend.new", message("EINVAL", athena.World.new, { backend = "local" }))
  end)
end)
