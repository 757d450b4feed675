-- Handler failures, error normalisation, hostile Lua in tasks, and workers
-- that keep serving (SEMANTICS §1.2, §1.3, §6.1, §6.2).
--
-- Worlds use failureStrategy = "ignore" so a failed attempt is final (one
-- attempt, §7.2) and results arrive at once, with or without retries.
local athena = require "athena"
local S = require "fixtures.support"

local function world(extra)
  local cfg = { minWorkers = 1, failureStrategy = "ignore" }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  return S.started(cfg)
end

-- Runs fail{kind = kind} and returns its error value (the task must fail).
local function failure(w, kind)
  local h = w:execute("fail", { kind = kind })
  local r, err = S.result(h)
  assert.is_nil(r)
  assert.is_table(err, "task " .. kind .. " should fail")
  assert.equals("failed", h:status())
  return err, h
end

describe("handler errors", function()
  local w
  before_each(function() w = world() end)
  after_each(S.cleanup)

  it("a raised string fails the task with EHANDLER, message and traceback", function()
    local err, h = failure(w, "string")
    assert.equals("EHANDLER", err.code)
    assert.matches("boom", err.message)
    assert.is_string(err.traceback)
    assert.matches("stack traceback", err.traceback)
    assert.is_true(err.retryable)
    assert.equals(1, err.attempt)
    assert.equals("EHANDLER: " .. err.message, tostring(err))
    local q = h:query()
    assert.equals("failed", q.status)
    assert.equals("EHANDLER", q.error.code)
    assert.is_nil(q.result)
    assert.equals("integer", math.type(q.completedAt))
    assert.is_true(q.startedAt <= q.completedAt)
  end)

  it("a Lua runtime error fails with EHANDLER", function()
    local err = failure(w, "runtime")
    assert.equals("EHANDLER", err.code)
    assert.matches("attempt to index a nil value", err.message)
  end)

  it("error({code = 'EMINE', message = 'x'}) keeps its code and message", function()
    local err = failure(w, "code")
    assert.equals("EMINE", err.code)
    assert.equals("x", err.message)
    assert.equals("EMINE: x", tostring(err))
  end)

  it("a table with only a code gets the code as its message", function()
    local err = failure(w, "code_only")
    assert.equals("EMINE2", err.code)
    assert.equals("EMINE2", err.message)
  end)

  it("keeps retryable, status and serializable extra fields (in details); drops functions", function()
    local err = failure(w, "code_with_fields")
    assert.equals("EFIELDS", err.code)
    assert.equals("m", err.message)
    assert.is_false(err.retryable)
    assert.equals(503, err.status)
    assert.equals("kept", err.details.extra)
    assert.is_nil(err.details.fn)
    assert.is_nil(err.fn)
  end)

  it("an error table with cyclic details still fails with its code", function()
    local err = failure(w, "code_cyclic_details")
    assert.equals("ECYC", err.code)
    assert.equals("cyclic", err.message)
  end)

  it("return nil, 'oops' fails with EHANDLER message 'oops'", function()
    local err = failure(w, "return_nil_oops")
    assert.equals("EHANDLER", err.code)
    assert.equals("oops", err.message)
  end)

  it("return nil, {code = ...} fails with that code", function()
    local err = failure(w, "return_nil_code")
    assert.equals("ERET", err.code)
    assert.equals("returned", err.message)
  end)

  it("athena.FatalError raised gives EFATAL, not retryable", function()
    local err = failure(w, "fatal")
    assert.equals("EFATAL", err.code)
    assert.equals("x", err.message)
    assert.equals("FatalError", err.name)
    assert.is_false(err.retryable)
  end)

  it("athena.FatalError returned as nil, e gives EFATAL", function()
    local err = failure(w, "return_fatal")
    assert.equals("EFATAL", err.code)
    assert.equals("y", err.message)
  end)

  describe("odd error objects give EHANDLER and never crash the worker", function()
    local kinds = {
      number = "42", boolean = "true", ["false"] = "false", table_nocode = false,
      table_numcode = false, tostring_meta = "custom", tostring_raises = false,
      tostring_nonstring = false, code_meta_index = false, ["nil"] = "nil",
      explicit_nil = "nil", function_value = false, coroutine_value = false,
    }
    for kind, message in pairs(kinds) do
      it(kind, function()
        local err = failure(w, kind)
        assert.equals("EHANDLER", err.code)
        assert.is_string(err.message)
        assert.is_true(err.retryable)
        if message then assert.equals(message, err.message) end
        -- the world keeps running tasks
        assert.equals(7, S.result(w:execute("add", { a = 3, b = 4 })))
      end)
    end
  end)

  it("counts failures in getMetrics and getWorkers", function()
    failure(w, "string")
    failure(w, "code")
    S.result(w:execute("add", { a = 1, b = 1 }))
    local m = w:getMetrics()
    assert.equals(2, m.tasks.failed)
    assert.equals(1, m.tasks.completed)
    local wk = w:getWorkers()[1]
    assert.equals(2, wk.tasksFailed)
    assert.equals(1, wk.tasksCompleted)
    assert.equals("idle", wk.status)
  end)
end)

describe("a worker survives a failing task", function()
  after_each(S.cleanup)

  it("and the next task on the same single worker gets its own correct result", function()
    local w = world()
    local err = failure(w, "string")
    assert.equals("EHANDLER", err.code)
    local r, e = S.result(w:execute("echo", "after"))
    assert.is_nil(e, e and tostring(e))
    assert.equals("after", r)
  end)

  it("after every kind of failure, alternating with successes", function()
    local w = world()
    local kinds = { "string", "code", "fatal", "number", "boolean", "nil", "tostring_meta",
      "table_nocode", "runtime", "return_nil_oops", "code_with_fields" }
    for i, kind in ipairs(kinds) do
      failure(w, kind)
      local r, e = S.result(w:execute("echo", { i = i }))
      assert.is_nil(e, ("echo after %s failed: %s"):format(kind, tostring(e)))
      assert.same({ i = i }, r, "echo after " .. kind)
    end
    assert.equals(#kinds, w:getMetrics().tasks.failed)
    assert.equals(#kinds, w:getMetrics().tasks.completed)
  end)

  it("a failure followed by a nil, 'x' success-looking return is not confused", function()
    local w = world()
    failure(w, "nil")
    -- a handler returning a plain value must complete, not fail
    local h = w:execute("echo", "E")
    local r, e = S.result(h)
    assert.is_nil(e, e and tostring(e))
    assert.equals("E", r)
    assert.equals("completed", h:status())
  end)

  it("with slots of a worker of concurrency > 1", function()
    local w = world { taskQueues = { default = { concurrency = 3 } } }
    for round = 1, 3 do
      local fails = w:executeMany("fail", { { kind = "code" }, { kind = "code" }, { kind = "code" } })
      for _, h in ipairs(fails) do S.result(h) end
      local oks = w:executeMany("square", { round, round + 1, round + 2 })
      for i, h in ipairs(oks) do
        local r, e = S.result(h)
        assert.is_nil(e, e and tostring(e))
        assert.equals((round + i - 1) * (round + i - 1), r)
      end
    end
  end)
end)

describe("unserializable handler results", function()
  local w
  setup(function() w = world() end)
  teardown(S.cleanup)

  for _, kind in ipairs { "function", "cycle", "nan", "inf", "mixed", "sparse", "coroutine" } do
    it("fail the task with EINVAL, not retryable: " .. kind, function()
      local h = w:execute("badresult", { kind = kind })
      local r, err = S.result(h)
      assert.is_nil(r)
      assert.equals("EINVAL", err.code)
      assert.is_false(err.retryable)
      assert.equals("failed", h:status())
      assert.equals("EINVAL", h:query().error.code)
      -- the worker goes on
      assert.equals(kind, S.result(w:execute("echo", kind)))
    end)
  end
end)

describe("calls that fail at execute()", function()
  after_each(S.cleanup)

  it("an unknown activity raises ENOTFOUND", function()
    local w = world()
    S.raises("ENOTFOUND", w.execute, w, "nope", {})
    S.raises("ENOTFOUND", w.execute, w, "Echo", {})
  end)

  it("execute() before start() raises EINVAL", function()
    local w = S.world()
    w:register(require("fixtures.jobs").echo)
    S.raises("EINVAL", w.execute, w, "echo", 1)
  end)
end)

describe("hostile Lua in tasks", function()
  local w
  before_each(function() w = world() end)
  after_each(S.cleanup)

  local function run(what)
    local h = w:execute("hostile", what)
    local r, err = S.result(h)
    return r, err, h
  end

  it("coroutine.yield() directly in a handler fails the task instead of hanging", function()
    local r, err, h = run("yield")
    assert.is_nil(r)
    assert.is_table(err)
    assert.is_string(err.code)
    assert.equals("failed", h:status())
  end)

  it("coroutine.yield() inside a pcall in a handler fails the task too", function()
    local r, err, h = run("yield_in_pcall")
    assert.is_nil(r)
    assert.is_table(err)
    assert.equals("failed", h:status())
  end)

  it("the worker serves the next task after a bare yield", function()
    run("yield")
    assert.equals("next", S.result(w:execute("echo", "next")))
  end)

  it("an error inside a pcall'd nested coroutine is caught by the handler", function()
    local r, err = run("nested_caught")
    assert.is_nil(err)
    assert.same({ ok = false, code = "EINNER" }, r)
  end)

  it("an uncaught error from a nested coroutine fails the task with its code", function()
    local r, err = run("nested_uncaught")
    assert.is_nil(r)
    assert.equals("ENESTED", err.code)
    assert.equals("inner", err.message)
  end)

  it("nested coroutines that yield values work normally", function()
    assert.equals(15, (run("generator")))
    assert.equals("suspended", (run("abandoned")))
  end)

  it("a stack overflow fails the task with EHANDLER; the worker goes on", function()
    local r, err = run("overflow")
    assert.is_nil(r)
    assert.equals("EHANDLER", err.code)
    local r2, e2 = S.result(w:execute("echo", "alive"))
    assert.is_nil(e2, e2 and tostring(e2))
    assert.equals("alive", r2)
  end)

  it("a long but finite pure-Lua loop completes (the hook does not interrupt it)", function()
    local r, err = run("busy")
    assert.is_nil(err)
    assert.equals(2000001000000, r)
  end)

  it("an error raised by a <close> handler fails the task with its code", function()
    local r, err = run("close_error")
    assert.is_nil(r)
    assert.equals("ECLOSE", err.code)
  end)

  it("clobbered globals in the worker state do not crash it", function()
    assert.equals("clobbered", (run("clobber")))
    local err = failure(w, "number")
    assert.equals("EHANDLER", err.code)
    local err2 = failure(w, "code")
    assert.equals("EMINE", err2.code)
  end)
end)

describe("a task spinning forever in pure Lua", function()
  after_each(S.cleanup)

  it("is interrupted by shutdown{timeout = 200}: requeued = 1 and the call returns", function()
    local w = world { minWorkers = 2 }
    local h = w:execute("spin", nil, { id = "spinner" })
    -- claims are FIFO: once the probe ran (on the other worker), the spinner
    -- had been claimed
    assert.equals("probe", S.result(w:execute("echo", "probe")))
    assert.equals("running", h:status())
    local t0 = athena.now()
    local r = w:shutdown { timeout = 200 }
    local took = athena.now() - t0
    assert.equals(1, r.requeued)
    assert.equals(0, r.drained)
    assert.is_true(took >= 200, "waited the timeout first (" .. took .. " ms)")
    assert.is_true(took < 5000, "shutdown returned in " .. took .. " ms")
    local q = w:query("spinner")
    assert.equals("pending", q.status)
    assert.equals(0, q.attempt)
    local _, err = h:result(100)
    assert.equals("ESHUTDOWN", err.code)
    for _, wk in ipairs(w:getWorkers()) do assert.equals("stopped", wk.status) end
  end)

  it("is interrupted even when it swallows errors with pcall (checked in a child process)", function()
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
      local athena = require "athena"
      local jobs = require "fixtures.jobs"
      local w = athena.World.new{ minWorkers = 2, persistence = "memory", modules = { "fixtures.jobs" } }
      w:register(jobs.spin, jobs.echo)
      w:start()
      local h = w:execute("spin", "pcall")
      assert(w:execute("echo", "probe"):result(10000) == "probe")
      local r = w:shutdown{ timeout = 200 }
      io.write(("drained=%d requeued=%d status=%s\n"):format(r.drained, r.requeued, h:status()))
      os.exit(0)
    ]])
    f:close()
    local p = io.popen("timeout -k 2 20 lua5.4 " .. script .. " 2>&1; echo rc=$?")
    local out = p:read("a")
    p:close()
    os.remove(script)
    assert.matches("rc=0", out, 1, true)
    assert.matches("drained=0 requeued=1 status=pending", out, 1, true)
  end)
end)
