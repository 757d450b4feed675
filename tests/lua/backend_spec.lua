-- athena.Backend (docs/lua-api.md "Custom backends: athena.Backend"):
-- persistence through Lua functions that run in the backend's own state.
-- Wrong inputs raise clear errors; a backend that fails, hangs, eats
-- memory or raises odd values degrades the world or fails its start, and
-- the engine keeps serving.
local athena = require "athena"
local S = require "fixtures.support"

-- The journal functions of scripts/examples/custom_backend.lua in short:
-- one JSON line per row; load folds them. No upvalues: they travel as
-- bytecode. info.config.flag, when it names an existing file, makes
-- persist fail (returns nil) while it exists.
local function persist(batch, info)
  local json = require("athena").json
  local flag = info.config.flag and io.open(info.config.flag)
  if flag then flag:close(); return nil end
  local f = assert(io.open(info.config.file, "a"))
  for _, row in ipairs(batch.tasks) do f:write(json.encode({ task = row }), "\n") end
  for _, row in ipairs(batch.schedules) do f:write(json.encode({ schedule = row }), "\n") end
  f:close()
  return true
end

local function load(info)
  local json = require("athena").json
  local f = io.open(info.config.file)
  if not f then return nil end
  local tasks, order, scheds = {}, {}, {}
  for line in f:lines() do
    local rec = json.decode(line)
    local row = rec.task or rec.schedule
    if rec.task then
      local old = tasks[row.seq]
      if row.deleted then tasks[row.seq] = nil
      else
        if not old then order[#order + 1] = row.seq end
        if row.keepError and old then row.error = old.error end
        local ev = old and old.events or {}
        for i, e in ipairs(row.events or {}) do ev[row.eventsFrom + i] = e end
        row.events = ev
        tasks[row.seq] = row
      end
    else
      scheds[row.id] = not row.deleted and row or nil
    end
  end
  f:close()
  table.sort(order)
  local out = { tasks = {}, schedules = {} }
  for _, seq in ipairs(order) do out.tasks[#out.tasks + 1] = tasks[seq] end
  for _, s in pairs(scheds) do out.schedules[#out.schedules + 1] = s end
  return out
end

local function world_on(backend, extra)
  local cfg = { persistence = "file", persistencePath = S.tmpname(), backend = backend }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return S.started(cfg)
end

after_each(function()
  S.cleanup()
  S.cleanup_files()
end)

describe("athena.Backend.new", function()
  it("refuses wrong inputs with EINVAL naming them", function()
    local e = S.raised(athena.Backend.new, nil)
    assert.matches("bad argument #1 to 'new' %(table expected, got nil%)", e)
    e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, flush = 1 })
    assert.matches("unknown option flush", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { persist = 42, load = load })
    assert.matches("invalid persist: 42 %(a function%)", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { persist = persist })
    assert.matches("missing load", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { module = "a.b", persist = persist })
    assert.matches("module and functions are exclusive", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { module = "../etc" })
    assert.matches("invalid module", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { persist = print, load = load })
    assert.matches("a C function cannot be carried", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, config = "x" })
    assert.matches("invalid config: \"x\" %(a table of JSON values%)", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, config = { f = print } })
    assert.matches("invalid config", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, timeout = "soon" })
    assert.matches("invalid timeout", e.message)
  end)

  it("refuses a closure with upvalues: it could not run in the backend's state", function()
    local file = "/tmp/x"
    local e = S.raises("EINVAL", athena.Backend.new, {
      persist = function() return file ~= nil end, load = load })
    assert.matches("invalid persist: a closure with the upvalue file", e.message)
  end)

  it("refuses an authorize that is not an upvalue-free function", function()
    local e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, authorize = true })
    assert.matches("invalid authorize: true %(a function%)", e.message)
    local allowed = true
    e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, authorize = function() return allowed end })
    assert.matches("invalid authorize: a closure with the upvalue allowed", e.message)
  end)

  it("refuses a stream that is not an upvalue-free function", function()
    local e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, stream = "log" })
    assert.matches("invalid stream: \"log\" %(a function%)", e.message)
    local n = 0
    e = S.raises("EINVAL", athena.Backend.new, { persist = persist, load = load, stream = function() n = n + 1 end })
    assert.matches("invalid stream: a closure with the upvalue n", e.message)
    e = S.raises("EINVAL", athena.Backend.new, { module = "m", stream = function() end })
    assert.matches("module and functions are exclusive", e.message)
  end)

  it("is the only table World.new takes as a custom backend", function()
    local e = S.raises("EINVAL", athena.World.new, { backend = { persist = persist, load = load } })
    assert.matches("athena.Backend.new", e.message)
    local b = athena.Backend.new { persist = persist, load = load, config = { file = "/nonexistent/x" } }
    e = S.raises("EINVAL", athena.World.new, { persistence = "memory", backend = b })
    assert.matches("memory persistence keeps no journal", e.message)
  end)
end)

describe("a world on an athena.Backend", function()
  it("journals through persist and recovers queued tasks and schedules through load", function()
    local dir = S.tmpname()
    local b = athena.Backend.new { persist = persist, load = load, config = { file = dir .. ".jsonl" } }
    local w = world_on(b, { persistencePath = dir })
    assert.equals(7, S.result(w:execute("echo", 7, { id = "now" })))
    w:execute("echo", { n = 1 }, { id = "later", delay = "1h" })
    w:schedule("nightly", "echo", 1, "0 3 * * *")
    w:shutdown()
    local text = S.readfile(dir .. ".jsonl")
    assert.matches('"id":"later"', text)
    assert.matches('"status":"completed"', text)
    assert.matches('"schedule":{', text)

    local again = world_on(b, { persistencePath = dir })
    local s = again:query("later")
    assert.equals("scheduled", s.status)
    assert.same({ n = 1 }, s.input)
    local found = false
    for _, sc in ipairs(again:getSchedules()) do found = found or sc.id == "nightly" end
    assert.is_true(found)
    again:shutdown()
    os.remove(dir .. ".jsonl")
  end)

  it("carries a workflow's history through persist's events and load's: it resumes after a restart", function()
    local wf = require "fixtures.wf_jobs"
    local dir = S.tmpname()
    local b = athena.Backend.new { persist = persist, load = load, config = { file = dir .. ".jsonl" } }
    local function wworld()
      local w = S.world { modules = { "fixtures.wf_jobs" }, clock = "manual", persistence = "file",
        persistencePath = dir, backend = b, minWorkers = 2, maxWorkers = 2 }
      w:register(wf.all())
      w:start()
      return w
    end
    local w = wworld()
    local h = w:execute("wf.sleeper", { ms = 3600000 }, { id = "sleepy" })
    local before = S.eventually(function()
      local hist = h:query().history
      for _, ev in ipairs(hist) do if ev.type == "timer.started" then return hist end end
    end, S.WAIT, "the timer to start")
    w:shutdown()
    -- the journal holds the events, each once, numbered from eventsFrom
    local n = 0
    for line in io.lines(dir .. ".jsonl") do
      local rec = athena.json.decode(line)
      if rec.task and rec.task.id == "sleepy" then n = n + #(rec.task.events or {}) end
    end
    assert.equals(#before, n)

    local w2 = wworld()
    local q = assert(w2:query("sleepy"))
    assert.equals("running", q.status)
    assert.equals(#before, #q.history)
    local fireAt
    for _, ev in ipairs(before) do if ev.type == "timer.started" then fireAt = ev.fireAt end end
    w2:advance(fireAt - w2:now() + 1)
    local done = S.await(w2, "sleepy")
    assert.equals("completed", done.status)
    assert.equals(before[2].value, done.result.before) -- recorded before the restart, replayed
    os.remove(dir .. ".jsonl")
  end)

  it("keeps at most retain.terminal finished tasks in RAM: a Backend has no reads to find them later", function()
    local dir = S.tmpname()
    local b = athena.Backend.new { persist = persist, load = load, config = { file = dir .. ".jsonl" } }
    local w = world_on(b, { persistencePath = dir, retain = { terminal = 2 } })
    for i = 1, 5 do S.result(w:execute("echo", i, { id = "r" .. i })) end
    S.eventually(function() return w:query("r1") == nil end, S.WAIT, "r1 to leave RAM")
    assert.is_nil(w:query("r2"))
    assert.equals("completed", w:query("r5").status)
    assert(w:getMetrics().tasks.resident <= 2)
    os.remove(dir .. ".jsonl")
  end)

  it("requires the backend module in its own state (module = name)", function()
    local dir = S.tmpname()
    os.execute("mkdir -p " .. dir .. "/lib/myapp")
    local f = assert(io.open(dir .. "/lib/myapp/backend.lua", "w"))
    f:write([[
      local M, rows = {}, {}
      function M.persist(batch) for _, r in ipairs(batch.tasks) do rows[#rows + 1] = r end return true end
      function M.load(info) return { tasks = {}, schedules = {} } end
      function M.stream(ev, info)
        local f = assert(io.open(info.dir .. ".events", "a"))
        f:write(ev.event, " ", ev.data.id, "\n")
        f:close()
      end
      return M
    ]])
    f:close()
    local saved = package.path
    package.path = dir .. "/lib/?.lua;" .. package.path -- workers and the backend get it at start
    local ok, err = pcall(function()
      local w = world_on(athena.Backend.new { module = "myapp.backend" }, { persistencePath = dir .. "/store" })
      assert.equals(3, S.result(w:execute("echo", 3, { id = "by-module" })))
      S.eventually(function() return (S.readfile(dir .. "/store.events") or ""):find("task.completed by-module", 1, true) end,
        10000, "the module's stream to see the event")
    end)
    package.path = saved
    assert(ok, tostring(err))
  end)

  it("fails start with EINVAL when the module cannot give persist and load", function()
    local dir = S.tmpname()
    os.execute("mkdir -p " .. dir .. "/lib")
    local f = assert(io.open(dir .. "/lib/halfbackend.lua", "w"))
    f:write("return { persist = function() return true end, load = 'no' }")
    f:close()
    local saved = package.path
    package.path = dir .. "/lib/?.lua;" .. package.path
    local e = S.raises("EINVAL", world_on, athena.Backend.new { module = "halfbackend" }, { persistencePath = dir .. "/s" })
    assert.matches("module halfbackend: load is a string %(a function expected%)", e.message)
    e = S.raises("EINVAL", world_on, athena.Backend.new { module = "no.such.backend" }, { persistencePath = dir .. "/s" })
    assert.matches("module 'no.such.backend' not found", e.message)
    package.path = saved
  end)

  it("fails start with ESTORE when load returns what cannot be recovered", function()
    local function b(fn) return athena.Backend.new { persist = persist, load = fn } end
    local e = S.raises("ESTORE", world_on, b(function() return 42 end))
    assert.matches("backend load returned a number", e.message)
    e = S.raises("ESTORE", world_on, b(function() return { tasks = { { id = "x", seq = "one" } } } end))
    assert.matches("tasks%[1%] with an invalid seq %(an integer%)", e.message)
    e = S.raises("ESTORE", world_on, b(function() return { tasks = { { id = "x", status = "sleeping" } } } end))
    assert.matches("invalid status %(a status name%)", e.message)
    e = S.raises("ESTORE", world_on, b(function() return { tasks = { { id = "x", seq = 1, status = "pending" } } } end))
    assert.matches("lacks its id, name, queue or input", e.message)
    e = S.raises("ESTORE", world_on, b(function() return { tasks = "all" } end))
    assert.matches("tasks as a string %(a list expected%)", e.message)
  end)

  it("reports load's errors, whatever their value, without running their metamethods", function()
    local function b(fn) return athena.Backend.new { persist = persist, load = fn } end
    local e = S.raises("ESTORE", world_on, b(function() error({ message = "no disk" }) end))
    assert.matches("backend load raised: no disk", e.message)
    e = S.raises("ESTORE", world_on, b(function()
      error(setmetatable({}, { __tostring = function() while true do end end, __index = function() error("x") end }))
    end))
    assert.matches("backend load raised: %(a table error value%)", e.message)
  end)

  it("interrupts a load that never returns, even one that pcalls the interruption away", function()
    local b = athena.Backend.new { persist = persist, timeout = "100ms", load = function()
      while true do pcall(function() while true do end end) end
    end }
    local ms, r = S.timed(pcall, world_on, b)
    assert.is_false(r[1])
    assert.equals("ESTORE", r[2].code)
    assert.matches("time limit %(100 ms%)", r[2].message)
    assert(ms < 5000, ms .. " ms")
  end)

  it("stops a load that eats memory at the world's memoryLimit", function()
    local b = athena.Backend.new { persist = persist, load = function()
      local t = {}
      for i = 1, math.huge do t[i] = string.rep("x", 1024) .. i end
    end }
    local e = S.raises("ESTORE", world_on, b, { memoryLimit = "32MB" })
    assert.matches("out of memory", e.message)
  end)

  it("degrades the world while persist fails (nil, errors, hangs) and heals when it succeeds", function()
    local dir = S.tmpname()
    local flag = dir .. ".flag"
    local b = athena.Backend.new { persist = persist, load = load, timeout = "200ms",
      config = { file = dir .. ".jsonl", flag = flag } }
    local w = world_on(b, { persistencePath = dir })
    local url = w:serve { port = 0, metrics = false, dashboard = false }.url
    io.open(flag, "w"):close()
    local h, err = w:execute("echo", 1, { id = "refused" })
    assert.is_nil(h)
    assert.equals("ESTORE", err.code)
    assert.matches("backend persist returned nil %(true expected once the batch is durable%)", err.message)
    assert.is_nil(w:query("refused"))
    local res = assert(athena.http.request { url = url .. "/healthz" })
    assert.equals(503, res.status)
    assert.matches("store degraded %(ESTORE%)", res.body)
    os.remove(flag)
    h = S.eventually(function() return (w:execute("echo", 2, { id = "accepted" })) end, 10000,
      "execute to work again")
    assert.equals(2, S.result(h))
    res = assert(athena.http.request { url = url .. "/healthz" })
    assert.equals(200, res.status)
    os.remove(dir .. ".jsonl")
  end)

  it("maps a persist error's code ENOSPC, interrupts a persist that hangs, stops one that eats memory", function()
    local full = athena.Backend.new { load = load, config = { file = "/nonexistent" },
      persist = function() error({ code = "ENOSPC", message = "quota exceeded" }) end }
    local w = world_on(full)
    local h, err = w:execute("echo", 1)
    assert.is_nil(h)
    assert.equals("ENOSPC", err.code)
    assert.matches("backend persist raised: quota exceeded", err.message)
    w:shutdown()

    local hang = athena.Backend.new { load = load, config = { file = "/nonexistent" }, timeout = "100ms",
      persist = function() while true do end end }
    w = world_on(hang)
    local ms, r = S.timed(w.execute, w, "echo", 1)
    assert.is_nil(r[1])
    assert.equals("ESTORE", r[2].code)
    assert.matches("time limit", r[2].message)
    assert(ms < 5000, ms .. " ms")
    -- the engine keeps serving: metrics answer, shutdown returns
    assert.is_table(w:getMetrics())
    w:shutdown { timeout = 1000 }

    local bomb = athena.Backend.new { load = load, config = { file = "/nonexistent" },
      persist = function() local t = {} for i = 1, math.huge do t[i] = ("x"):rep(4096) .. i end end }
    w = world_on(bomb, { memoryLimit = "32MB" })
    h, err = w:execute("echo", 1)
    assert.is_nil(h)
    assert.equals("ESTORE", err.code)
    assert.matches("out of memory", err.message)
    w:shutdown { timeout = 1000 }
  end)

  it("streams the lifecycle events to stream(event) in a state of its own", function()
    local dir = S.tmpname()
    local b = athena.Backend.new { persist = persist, load = load,
      config = { file = dir .. ".jsonl", events = dir .. ".events" },
      stream = function(ev, info)
        local f = assert(io.open(info.config.events, "a"))
        f:write(ev.event, " ", ev.data.id, " ", ev.data.status, "\n")
        f:close()
      end }
    local w = world_on(b, { persistencePath = dir })
    S.result(w:execute("echo", 1, { id = "ok-1" }))
    S.result(w:execute("fail", { kind = "fatal" }, { id = "bad-1" })) -- never retried
    local text = S.eventually(function()
      local t = S.readfile(dir .. ".events") or ""
      return t:find("task.failed bad-1", 1, true) and t:find("ok-1", 1, true) and t
    end, 10000, "both events")
    assert.matches("task.completed ok%-1 completed", text)
    assert.matches("task.failed bad%-1 failed", text)
    os.remove(dir .. ".jsonl")
    os.remove(dir .. ".events")
  end)

  it("retries an event whose stream raised, and never holds the engine up", function()
    local dir = S.tmpname()
    local b = athena.Backend.new { persist = persist, load = load, timeout = "100ms",
      config = { file = dir .. ".jsonl", events = dir .. ".events", seen = dir .. ".seen" },
      stream = function(ev, info)
        if ev.data.id == "hang" then while true do end end
        -- the first delivery of "twice" fails with a table error value
        if ev.data.id == "twice" and not io.open(info.config.seen) then
          io.open(info.config.seen, "w"):close()
          error(setmetatable({}, { __tostring = function() error("hostile") end }))
        end
        local f = assert(io.open(info.config.events, "a"))
        f:write(ev.data.id, "\n")
        f:close()
      end }
    local w = world_on(b, { persistencePath = dir })
    -- a stream stuck on "hang" is interrupted; tasks meanwhile run as usual
    local ms = S.timed(function()
      S.result(w:execute("echo", 1, { id = "hang" }))
      for i = 1, 20 do S.result(w:execute("echo", i)) end
    end)
    assert(ms < 5000, ms .. " ms")
    S.result(w:execute("echo", 1, { id = "twice" }))
    S.eventually(function() return (S.readfile(dir .. ".events") or ""):find("twice", 1, true) end,
      10000, "the retried event")
    assert.is_truthy(S.readfile(dir .. ".seen")) -- it did fail once first
    os.remove(dir .. ".jsonl")
    os.remove(dir .. ".events")
    os.remove(dir .. ".seen")
  end)

end)

describe("athena.Backend's authorize", function()
  -- A world on a backend with `authorize`, serving the operations surface
  -- (and a gateway when `gateway` is given); returns the world and its URL.
  local function serving(authorize, extra, gateway)
    local opts = { persist = persist, load = load, authorize = authorize, config = { file = "/nonexistent/x" } }
    for k, v in pairs(extra or {}) do opts[k] = v end
    local w = world_on(athena.Backend.new(opts), { persistence = "hybrid" })
    return w, w:serve { port = 0, metrics = true, dashboard = true, gateway = gateway }.url
  end

  local function get(url, headers)
    return assert(athena.http.request { url = url, headers = headers })
  end

  it("can deny what the keys allow, with its reason; /healthz is not asked", function()
    local _, url = serving(function(r) return r.path ~= "/metrics", "metrics are private here" end)
    local res = get(url .. "/metrics")
    assert.equals(403, res.status)
    assert.matches("metrics are private here", res.body)
    assert.equals(200, get(url .. "/api/metrics").status)
    assert.equals(200, get(url .. "/healthz").status)
  end)

  it("sees the request: surface, method, path, key, address and operation", function()
    local _, url = serving(function(r)
      return false, table.concat({ r.surface, r.method, r.path, r.operation, r.ip, tostring(r.key) }, " ")
    end)
    local res = get(url .. "/api/tasks?limit=1")
    assert.equals(403, res.status)
    assert.matches("operations GET /api/tasks%?limit=1 read 127.0.0.1 nil", res.body)
  end)

  it("fails closed: an error, a non-boolean or a function that never returns denies", function()
    local _, url = serving(function(r) return "yes" end)
    local res = get(url .. "/api/metrics")
    assert.equals(403, res.status)
    assert.matches("authorization failed %(EINVAL%): backend authorize returned a string %(a boolean expected%)", res.body)

    _, url = serving(function() error(setmetatable({}, { __index = function() error("hostile") end })) end)
    res = get(url .. "/api/metrics")
    assert.equals(403, res.status)
    assert.matches("backend authorize raised: %(a table error value%)", res.body)

    _, url = serving(function() while true do end end, { timeout = "100ms" })
    local ms, r = S.timed(get, url .. "/api/metrics")
    assert.equals(403, r[1].status)
    assert.matches("time limit", r[1].body)
    assert(ms < 5000, ms .. " ms")
    assert.equals(200, get(url .. "/healthz").status) -- the server goes on

    _, url = serving(function() local t = {} for i = 1, math.huge do t[i] = ("x"):rep(4096) .. i end end)
    res = get(url .. "/api/metrics")
    assert.equals(403, res.status)
    assert.matches("out of memory", res.body)
  end)

  --- A SQLite database with an empty table t; returns its URL.
  local function table_t()
    local dir = S.tmpname()
    os.execute("mkdir -p " .. dir)
    local dburl = "sqlite:" .. dir .. "/g.db"
    local db = assert(athena.db.open(dburl))
    assert(db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY)"))
    db:close()
    return dburl
  end

  it("decides on gateway requests after the key checks", function()
    local dburl = table_t()
    local _, url = serving(function(r)
      if r.surface ~= "gateway" then return true end
      return r.operation == "fetch" and r.key == "reader", "only reader may fetch"
    end, nil, { db = dburl, keys = { reader = { name = "reader", rights = "*" }, writer = { name = "writer", rights = "*" } }, tables = { "t" } })
    local function fetch(key)
      return assert(athena.http.request { method = "POST", url = url .. "/gateway/fetch",
        headers = { apikey = key }, body = '{"table_name":"t"}' })
    end
    local ok = fetch("reader")
    assert.equals(200, ok.status, ok.body)
    local res = fetch("writer")
    assert.equals(403, res.status)
    assert.matches("only reader may fetch", res.body)
    assert.equals(401, fetch("nobody").status) -- the keys come first: authorize is not asked
  end)

  -- Connections go to the gateway threads in turn, so two opened one after
  -- the other are answered by two threads: each asks authorize in a state
  -- of its own (no thread waits for another's call), which its globals show.
  it("runs in one state per gateway thread", function()
    local dburl = table_t()
    local _, url = serving(function(r)
      if r.surface ~= "gateway" then return true end
      state_id = state_id or tostring({}) -- luacheck: ignore (a global of this state)
      calls = (calls or 0) + 1 -- luacheck: ignore
      return false, state_id .. " call " .. calls
    end, nil, { db = dburl, threads = 2, keys = { k = { name = "k", rights = "*" } }, tables = { "t" } })
    local py = S.tmpname()
    local f = assert(io.open(py, "w"))
    f:write([[
import http.client, sys, json
port = int(sys.argv[1])
conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(2)]
for c in conns: c.connect()
for c in conns + conns:
    c.request("POST", "/gateway/fetch", body='{"table_name":"t"}', headers={"apikey": "k"})
    r = c.getresponse()
    print(r.status, json.loads(r.read())["error"])
]])
    f:close()
    local p = assert(io.popen("python3 " .. py .. " " .. url:match(":(%d+)$") .. " 2>&1"))
    local out = p:read("a")
    p:close()
    os.remove(py)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equals(4, #lines, out)
    local a, b = lines[1]:match("^403 (table: %S+) call 1$"), lines[2]:match("^403 (table: %S+) call 1$")
    assert.is_truthy(a, out)
    assert.is_truthy(b, out)
    assert.are_not.equals(a, b) -- two states, each at its first call
    assert.equals("403 " .. a .. " call 2", lines[3])
    assert.equals("403 " .. b .. " call 2", lines[4])
  end)
end)
