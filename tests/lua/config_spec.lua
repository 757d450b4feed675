-- World.new, athena.activity and world:register / start validation
-- (SEMANTICS §1.1, §2, §3, §10.1).
local athena = require "athena"
local jobs = require "fixtures.jobs"
local S = require "fixtures.support"

local function cfg(extra) return S.config(extra) end

-- World.new(config) must raise EINVAL naming `field`; nothing is created.
local function bad_config(extra, field)
  local err = S.raises("EINVAL", athena.World.new, cfg(extra))
  assert.is_string(err.message)
  if field then
    assert.is_truthy(err.message:find(field, 1, true),
      "message should name " .. field .. ": " .. err.message)
  end
  return err
end

describe("athena.World.new", function()
  after_each(S.cleanup)

  it("accepts a minimal config and an empty one", function()
    local w = athena.World.new(cfg())
    assert.equals("userdata", type(w))
    w:shutdown()
    local w2 = athena.World.new({ persistence = "memory" })
    w2:shutdown()
  end)

  it("accepts every documented field with valid values", function()
    local w = athena.World.new(cfg {
      minWorkers = 2, maxWorkers = 4, scaleThreshold = 0.8, scaleDownThreshold = 0.2,
      scaleInterval = "5m", persistencePath = "/tmp/athena-unused", flushInterval = "500ms",
      retention = "1d", failureStrategy = "quarantine", heartbeatInterval = "30s",
      heartbeatTimeout = "1h", cancelGrace = 0, taskQueues = {
        default = { concurrency = 3, limit = 5 }, io = { workers = 2, concurrency = 4 },
        ["a.b-c_9"] = {},
      },
      log = {}, clock = "system",
    })
    w:shutdown()
  end)

  it("raises Lua's standard error for a config that is not a table", function()
    local msg = S.raised(athena.World.new, 42)
    assert.is_string(msg)
    assert.matches("bad argument #1 to 'new' %(table expected, got number%)", msg)
  end)

  it("raises EINVAL for an unknown key, naming it", function()
    bad_config({ bogus = 1 }, "bogus")
    bad_config({ minworkers = 1 }, "minworkers")
  end)

  it("raises EINVAL for a non-string key", function()
    local c = cfg()
    c[1] = true
    S.raises("EINVAL", athena.World.new, c)
  end)

  -- The scalar options are described once (engine/runtime/config.c) and
  -- handed to Lua as core.configMap: each one is checked by its entry.
  describe("every option of the config map", function()
    local core = require "athena.core"
    local function nested(name, v)
      local group, key = name:match("^(%w+)%.(%w+)$")
      if group then return { [group] = { [key] = v } } end
      return { [name] = v }
    end
    for _, o in ipairs(core.configMap) do
      it(o.name .. " (" .. o.kind .. "): its default is accepted, a wrong type and an out-of-range value are refused", function()
        if o.default ~= nil and o.name ~= "persistencePath" then
          athena.World.new(cfg(nested(o.name, o.default))):shutdown()
        end
        local wrong = (o.kind == "string" or o.kind == "enum") and 42 or {}
        bad_config(nested(o.name, wrong), o.name)
        if o.kind == "enum" then
          bad_config(nested(o.name, "no-such-" .. o.kind), o.name)
        elseif o.kind ~= "string" and o.kind ~= "boolean" then
          local below = o.kind == "number" and o.min - 0.5 or o.min - 1
          if o.kind ~= "ms" or o.min > 0 then bad_config(nested(o.name, below), o.name) end
          if o.max then bad_config(nested(o.name, o.kind == "number" and o.max + 0.5 or o.max + 1), o.name) end
        end
      end)
    end
  end)

  it("sizes take an integer or a string with a unit, one syntax for memoryLimit and log.maxSize", function()
    for _, v in ipairs { "10", "10 MB", "10mb", "1.5MB", "MB", 0, -1, 1.5, true } do
      bad_config({ log = { maxSize = v } }, "log.maxSize")
    end
    athena.World.new(cfg { log = { maxSize = "10MB" }, memoryLimit = "64MB" }):shutdown()
    athena.World.new(cfg { log = { maxSize = 4096 }, memoryLimit = 67108864 }):shutdown()
    athena.World.new(cfg { log = { maxSize = "4096B" } }):shutdown()
  end)

  describe("workflowCache", function()
    it("rejects a value that is not an integer 0-1000000, naming it", function()
      for _, v in ipairs { -1, 1.5, 1000001, "10", true } do
        bad_config({ workflowCache = v }, "workflowCache")
      end
    end)
    it("accepts 0 and the bound", function()
      athena.World.new(cfg { workflowCache = 0 }):shutdown()
      athena.World.new(cfg { workflowCache = 1000000 }):shutdown()
    end)
  end)

  describe("minWorkers / maxWorkers", function()
    for _, v in ipairs { 0, -1, 1.5, 1025, "2", true } do
      it("rejects minWorkers = " .. tostring(v), function()
        bad_config({ minWorkers = v }, "minWorkers")
      end)
    end
    it("rejects maxWorkers < minWorkers and maxWorkers > 1024", function()
      bad_config({ minWorkers = 3, maxWorkers = 2 }, "maxWorkers")
      bad_config({ maxWorkers = 1025 }, "maxWorkers")
      bad_config({ maxWorkers = 0 }, "maxWorkers")
      bad_config({ maxWorkers = 2.5 }, "maxWorkers")
    end)
    it("accepts the bounds", function()
      athena.World.new(cfg { minWorkers = 1, maxWorkers = 1 }):shutdown()
      athena.World.new(cfg { minWorkers = 1024, maxWorkers = 1024 }):shutdown()
    end)
  end)

  describe("scaleThreshold / scaleDownThreshold", function()
    for _, v in ipairs { -0.1, 1.1, "0.5", 0 / 0, true } do
      it("rejects scaleThreshold = " .. tostring(v), function()
        bad_config({ scaleThreshold = v }, "scaleThreshold")
      end)
    end
    it("rejects scaleDownThreshold out of range", function()
      bad_config({ scaleDownThreshold = -1 }, "scaleDownThreshold")
      bad_config({ scaleDownThreshold = 2 }, "scaleDownThreshold")
    end)
    it("rejects scaleDownThreshold >= scaleThreshold", function()
      bad_config({ scaleThreshold = 0.5, scaleDownThreshold = 0.5 }, "scaleDownThreshold")
      bad_config({ scaleThreshold = 0.5, scaleDownThreshold = 0.6 }, "scaleDownThreshold")
      -- against the default scaleDownThreshold 0.3
      bad_config({ scaleThreshold = 0.2 })
    end)
  end)

  describe("durations", function()
    local bad = { "1.5s", " 30s", "30s ", "5000", "2w", -1, 0.5, "", "ms", "1 s", "-5s", 2 ^ 54, true, {} }
    for _, field in ipairs { "scaleInterval", "flushInterval", "retention", "heartbeatInterval", "cancelGrace" } do
      for _, v in ipairs(bad) do
        it("rejects " .. field .. " = " .. (type(v) == "string" and ("%q"):format(v) or tostring(v)), function()
          local extra = { [field] = v }
          if field == "heartbeatInterval" then extra.heartbeatTimeout = "100d" end
          bad_config(extra, field)
        end)
      end
    end
    for _, field in ipairs { "scaleInterval", "flushInterval", "retention", "heartbeatInterval" } do
      it("rejects " .. field .. " = 0 (must be positive)", function()
        bad_config({ [field] = 0 }, field)
        bad_config({ [field] = "0s" }, field)
      end)
    end
    it("accepts every unit and integral numbers", function()
      for _, v in ipairs { 1500, 1500.0, "1ms", "500ms", "30s", "5m", "1h", "1d" } do
        athena.World.new(cfg { scaleInterval = v, retention = v, flushInterval = v }):shutdown()
      end
    end)
    it("cancelGrace may be 0", function()
      athena.World.new(cfg { cancelGrace = 0 }):shutdown()
    end)
    it("rejects heartbeatTimeout <= heartbeatInterval", function()
      bad_config({ heartbeatInterval = 5000, heartbeatTimeout = 5000 }, "heartbeatTimeout")
      bad_config({ heartbeatTimeout = 1000 }, "heartbeatTimeout") -- default interval 5000
      bad_config({ heartbeatInterval = "1m", heartbeatTimeout = "30s" }, "heartbeatTimeout")
    end)
  end)

  describe("enumerations and strings", function()
    it("rejects a bad persistence", function()
      bad_config({ persistence = "disk" }, "persistence")
      bad_config({ persistence = 1 }, "persistence")
      bad_config({ persistence = "MEMORY" }, "persistence")
    end)
    it("rejects a bad persistencePath", function()
      bad_config({ persistencePath = "" }, "persistencePath")
      bad_config({ persistencePath = 5 }, "persistencePath")
    end)
    it("rejects a bad failureStrategy", function()
      bad_config({ failureStrategy = "explode" }, "failureStrategy")
      bad_config({ failureStrategy = 1 }, "failureStrategy")
    end)
    it("accepts every failureStrategy", function()
      for _, s in ipairs { "retry", "cascade", "compensate", "ignore", "quarantine" } do
        athena.World.new(cfg { failureStrategy = s }):shutdown()
      end
    end)
    it("rejects a bad clock", function()
      bad_config({ clock = "wall" }, "clock")
    end)
    it("rejects a log that is not a table", function()
      bad_config({ log = "debug" }, "log")
    end)
  end)

  describe("taskQueues", function()
    it("rejects a non-table", function()
      bad_config({ taskQueues = "io" }, "taskQueues")
    end)
    it("rejects bad queue names", function()
      bad_config({ taskQueues = { ["has space"] = {} } }, "taskQueues")
      bad_config({ taskQueues = { [("q"):rep(65)] = {} } }, "taskQueues")
      bad_config({ taskQueues = { ["a/b"] = {} } }, "taskQueues")
      bad_config({ taskQueues = { [""] = {} } }, "taskQueues")
      bad_config({ taskQueues = { { concurrency = 1 } } }, "taskQueues")
    end)
    it("accepts a 64-character name", function()
      athena.World.new(cfg { taskQueues = { [("q"):rep(64)] = {} } }):shutdown()
    end)
    it("rejects a queue config that is not a table", function()
      bad_config({ taskQueues = { io = 4 } }, "io")
    end)
    it("rejects unknown queue options", function()
      bad_config({ taskQueues = { io = { size = 4 } } }, "size")
    end)
    for _, k in ipairs { "concurrency", "workers", "limit" } do
      for _, v in ipairs { 0, -1, 1.5, "2" } do
        it(("rejects %s = %s"):format(k, tostring(v)), function()
          bad_config({ taskQueues = { io = { [k] = v } } }, k)
        end)
      end
    end
    it("rejects workers for the default queue (sized by minWorkers/maxWorkers)", function()
      bad_config({ taskQueues = { default = { workers = 2 } } }, "workers")
    end)
  end)

  describe("modules", function()
    it("rejects a string instead of a list", function()
      bad_config({ modules = "fixtures.jobs" }, "modules")
    end)
    it("rejects a non-string entry", function()
      bad_config({ modules = { "fixtures.jobs", 42 } }, "modules")
    end)
  end)

  it("never falls back to a default: minWorkers and queue workers are honoured", function()
    local w = S.started { minWorkers = 3, taskQueues = { io = { workers = 2, concurrency = 5 } } }
    local default, io = 0, 0
    for _, wk in ipairs(w:getWorkers()) do
      if wk.taskQueue == "default" then
        default = default + 1
        assert.equals(1, wk.concurrency)
      elseif wk.taskQueue == "io" then
        io = io + 1
        assert.equals(5, wk.concurrency)
      end
    end
    assert.equals(3, default)
    assert.equals(2, io)
  end)
end)

describe("athena.activity", function()
  local fn = function() end

  it("returns a definition carrying its name, kind and validated options", function()
    local d = athena.activity("cfg-def", fn, { timeout = "30s", priority = 2, taskQueue = "io",
      retry = { maxAttempts = 5, backoff = "linear", initialInterval = "1s" } })
    assert.equals("cfg-def", d.name)
    assert.equals("activity", d.kind)
    assert.equals(30000, d.options.timeout)
    assert.equals(2, d.options.priority)
    assert.equals("io", d.options.taskQueue)
    assert.equals(5, d.options.retry.maxAttempts)
    assert.equals(1000, d.options.retry.initialInterval)
  end)

  it("defaults: timeout 5m, taskQueue default, priority 0", function()
    local d = athena.activity("cfg-defaults", fn)
    assert.equals(300000, d.options.timeout)
    assert.equals("default", d.options.taskQueue)
    assert.equals(0, d.options.priority)
  end)

  describe("name", function()
    it("raises Lua's standard error when it is not a string", function()
      assert.matches("bad argument #1 to 'activity' %(string expected, got nil%)",
        S.raised(athena.activity, nil, fn))
      assert.matches("bad argument #1 to 'activity' %(string expected, got number%)",
        S.raised(athena.activity, 42, fn))
      assert.matches("bad argument #1 to 'activity' %(string expected, got table%)",
        S.raised(athena.activity, {}, fn))
    end)

    it("reports the wrong-type error at the caller's line, like Lua's own errors", function()
      -- handler errors already point at the caller; the name error must too
      local msg = S.raised(function() athena.activity(nil, fn) end)
      assert.matches("^[^:]*config_spec%.lua:%d+: bad argument #1", msg)
      msg = S.raised(function() athena.activity("ok", nil) end)
      assert.matches("^[^:]*config_spec%.lua:%d+: bad argument #2", msg)
    end)

    local bad = {
      ["empty"] = "",
      ["129 bytes"] = ("n"):rep(129),
      ["a space"] = "has space",
      ["a leading space"] = " lead",
      ["a trailing space"] = "trail ",
      ["a tab"] = "a\tb",
      ["a newline"] = "a\nb",
      ["a NUL"] = "a\0b",
      ["a control char"] = "a\1b",
      ["DEL"] = "a\127b",
      ["a carriage return"] = "a\rb",
    }
    for what, name in pairs(bad) do
      it("rejects a name with " .. what .. " (EINVAL)", function()
        S.raises("EINVAL", athena.activity, name, fn)
      end)
    end

    it("accepts 1 and 128 bytes, punctuation and UTF-8", function()
      assert.equals("x", athena.activity("x", fn).name)
      assert.equals(128, #athena.activity(("n"):rep(128), fn).name)
      athena.activity("fetch-orders.v2:db/1", fn)
      athena.activity("tâche-日本", fn)
    end)
  end)

  describe("handler", function()
    for _, v in ipairs { { nil, "nil" }, { "f", "string" }, { 42, "number" }, { {}, "table" } } do
      it("raises Lua's standard error for a " .. v[2] .. " handler", function()
        local msg = S.raised(athena.activity, "x", v[1])
        assert.is_string(msg)
        assert.matches("bad argument #2 to 'activity' %(function expected, got " .. v[2] .. "%)", msg)
      end)
    end
    it("rejects a callable table (a function is required)", function()
      local callable = setmetatable({}, { __call = fn })
      assert.matches("bad argument #2 to 'activity'", S.raised(athena.activity, "x", callable))
    end)
  end)

  describe("options", function()
    it("raises Lua's standard error for a non-table", function()
      assert.matches("bad argument #3 to 'activity' %(table expected, got string%)",
        S.raised(athena.activity, "x", fn, "fast"))
      assert.matches("bad argument #3 to 'activity' %(table expected, got number%)",
        S.raised(athena.activity, "x", fn, 5))
    end)
    it("raises EINVAL for unknown keys, naming them", function()
      local err = S.raises("EINVAL", athena.activity, "x", fn, { retries = 3 })
      assert.is_truthy(err.message:find("retries", 1, true))
      S.raises("EINVAL", athena.activity, "x", fn, { [1] = "x" })
    end)
    local bad = {
      { "timeout 0", { timeout = 0 } },
      { "timeout \"0s\"", { timeout = "0s" } },
      { "timeout \"2w\"", { timeout = "2w" } },
      { "timeout -1", { timeout = -1 } },
      { "timeout 0.5", { timeout = 0.5 } },
      { "scheduleToClose \"1.5s\"", { scheduleToClose = "1.5s" } },
      { "scheduleToClose 0", { scheduleToClose = 0 } },
      { "heartbeatTimeout \" 30s\"", { heartbeatTimeout = " 30s" } },
      { "heartbeatTimeout 0", { heartbeatTimeout = 0 } },
      { "taskQueue with a space", { taskQueue = "bad name" } },
      { "taskQueue number", { taskQueue = 42 } },
      { "taskQueue empty", { taskQueue = "" } },
      { "priority 1.5", { priority = 1.5 } },
      { "priority string", { priority = "high" } },
      { "failureStrategy", { failureStrategy = "nope" } },
      { "retry number", { retry = 5 } },
      { "retry unknown key", { retry = { attempts = 3 } } },
      { "retry.maxAttempts 0", { retry = { maxAttempts = 0 } } },
      { "retry.maxAttempts 1.5", { retry = { maxAttempts = 1.5 } } },
      { "retry.backoff", { retry = { backoff = "fibonacci" } } },
      { "retry.initialInterval", { retry = { initialInterval = "1.5s" } } },
      { "retry.maxInterval < initialInterval", { retry = { initialInterval = 100, maxInterval = 10 } } },
      { "retry.multiplier 0.5", { retry = { multiplier = 0.5 } } },
      { "retry.multiplier string", { retry = { multiplier = "2" } } },
      { "retry.nonRetryable string", { retry = { nonRetryable = "EINVAL" } } },
      { "retry.nonRetryable entry", { retry = { nonRetryable = { 1 } } } },
    }
    for _, case in ipairs(bad) do
      it("rejects " .. case[1] .. " (EINVAL)", function()
        S.raises("EINVAL", athena.activity, "x", fn, case[2])
      end)
    end
  end)
end)

describe("world:register", function()
  after_each(S.cleanup)

  it("returns the world and accepts several definitions at once", function()
    local w = S.world()
    assert.equals(w, w:register(jobs.echo, jobs.add))
    assert.equals(w, w:register())
    w:start()
    assert.equals(3, S.result(w:execute("add", { a = 1, b = 2 })))
  end)

  it("raises Lua's standard error for something that is not a definition", function()
    local w = S.world()
    assert.matches("bad argument", S.raised(w.register, w, {}))
    assert.matches("bad argument", S.raised(w.register, w, "echo"))
    assert.matches("bad argument", S.raised(w.register, w, jobs.echo, 42))
  end)

  it("registering the same definition again is a no-op", function()
    local w = S.world({ taskQueues = { solo = { workers = 1 } } })
    w:register(jobs.order)
    w:register(jobs.order, jobs.order)
    w:start()
    local r = S.result(w:execute("order", { tag = "a" }))
    assert.equals(1, r.n)
  end)

  it("raises EINVAL for a different definition under a taken name", function()
    local w = S.world()
    w:register(jobs.echo)
    local other = athena.activity("echo", function(_, x) return x end)
    S.raises("EINVAL", w.register, w, other)
    -- the first registration stays in place
    w:start()
    assert.equals("kept", S.result(w:execute("echo", "kept")))
  end)

  it("raises EINVAL for an unknown taskQueue", function()
    local w = S.world()
    local err = S.raises("EINVAL", w.register, w, jobs.ioecho)
    assert.is_truthy(err.message:find("io", 1, true))
  end)

  it("accepts a definition on a configured queue", function()
    local w = S.world({ taskQueues = { io = {} } })
    w:register(jobs.ioecho)
    w:start()
    assert.equals(5, S.result(w:execute("io-echo", 5)))
  end)

  it("raises EINVAL after start()", function()
    local w = S.world()
    w:register(jobs.echo)
    w:start()
    S.raises("EINVAL", w.register, w, jobs.add)
    -- and the late definition was not registered
    S.raises("ENOTFOUND", w.execute, w, "add", { a = 1, b = 2 })
  end)
end)

describe("world:start", function()
  after_each(S.cleanup)

  it("spawns minWorkers workers, each with its own state", function()
    local w = S.started { minWorkers = 3 }
    local ws = w:getWorkers()
    assert.equals(3, #ws)
    local ids = {}
    for _, wk in ipairs(ws) do
      assert.matches("^worker%-%d+$", wk.id)
      assert.is_nil(ids[wk.id])
      ids[wk.id] = true
    end
  end)

  it("when start() returns, every worker reports its Lua heap (memoryKB > 0)", function()
    -- each worker has loaded its state and modules before start() returns
    local w = S.started { minWorkers = 3, taskQueues = { io = { workers = 2 } } }
    for _, wk in ipairs(w:getWorkers()) do
      assert.is_true(wk.memoryKB > 0, wk.id .. " memoryKB " .. wk.memoryKB)
    end
  end)

  it("is a no-op while started", function()
    local w = S.started { minWorkers = 2 }
    assert.equals(w, w:start())
    assert.equals(2, #w:getWorkers())
    assert.equals(3, S.result(w:execute("add", { a = 1, b = 2 })))
  end)

  it("raises ENOTFOUND naming an activity the workers' modules do not define", function()
    local w = S.world()
    local ghost = athena.activity("ghost-activity", function() end)
    w:register(jobs.echo, ghost)
    local err = S.raises("ENOTFOUND", w.start, w)
    assert.is_truthy(err.message:find("ghost-activity", 1, true), err.message)
    -- nothing runs: the world did not start (it is not started, and the
    -- failed start left it unusable)
    local e = S.raised(w.execute, w, "echo", 1)
    assert.is_true(e.code == "EINVAL" or e.code == "ESHUTDOWN", tostring(e))
  end)

  it("raises EINVAL when a module fails to load", function()
    local w = S.world({ modules = { "fixtures.jobs", "fixtures.broken" } })
    w:register(jobs.echo)
    S.raises("EINVAL", w.start, w)
  end)

  it("raises EINVAL when a module does not exist", function()
    local w = S.world({ modules = { "fixtures.no_such_module" } })
    S.raises("EINVAL", w.start, w)
  end)

  it("raises EINVAL when workers have no way to load the handlers", function()
    -- no modules, and the process is not running a .lua entry script
    local w = athena.World.new { persistence = "memory", minWorkers = 1 }
    w:register(jobs.echo)
    local ok, err = pcall(w.start, w)
    w:shutdown()
    assert.is_false(ok)
    assert.equals("EINVAL", err.code)
  end)

  it("a world that failed to start can still be shut down", function()
    local w = S.world({ modules = { "fixtures.broken" } })
    S.raises("EINVAL", w.start, w)
    local r = w:shutdown()
    assert.equals(0, r.drained)
    assert.equals(0, r.requeued)
  end)
end)

describe("execute before start", function()
  after_each(S.cleanup)

  it("raises EINVAL", function()
    local w = S.world()
    w:register(jobs.echo)
    S.raises("EINVAL", w.execute, w, "echo", 1)
    S.raises("EINVAL", w.executeMany, w, "echo", { 1, 2 })
  end)
end)
