-- execute / executeMany / handles / query / payloads / idempotency / metrics
-- and workers (SEMANTICS §1.2, §1.3, §4.3, §5.3, §10.2, §12.1, §14.1).
local athena = require "athena"
local S = require "fixtures.support"

local UUID = "%x%x%x%x%x%x%x%x%-%x%x%x%x%-7%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x"

describe("world:execute", function()
  local w
  before_each(function()
    w = S.started { minWorkers = 2 }
  end)
  after_each(S.cleanup)

  it("returns a handle with id, name, result, status and query", function()
    local h = w:execute("add", { a = 2, b = 3 })
    assert.equals("userdata", type(h))
    assert.equals("add", h.name)
    assert.matches("^add%-" .. UUID .. "$", h.id)
    assert.equals(5, S.result(h))
    assert.equals("completed", h:status())
    local q = h:query()
    assert.equals(h.id, q.id)
    assert.equals("completed", q.status)
  end)

  it("makes ids that sort by creation time (uuid v7: their ms timestamp, then a counter)", function()
    local ids, before = {}, athena.now()
    for i = 1, 3000 do ids[i] = w:execute("echo", i).id end
    local after = athena.now()
    for i = 2, #ids do assert.is_true(ids[i - 1] < ids[i], ids[i - 1] .. " >= " .. ids[i]) end
    local ms = tonumber(ids[1]:sub(6, 13) .. ids[1]:sub(15, 18), 16) -- echo-xxxxxxxx-xxxx-7...
    assert.is_true(ms >= before - 1 and ms <= after + 1, "timestamp " .. ms)
  end)

  it("gives every task its own id", function()
    local seen = {}
    for _ = 1, 50 do
      local h = w:execute("echo", 1)
      assert.is_nil(seen[h.id])
      seen[h.id] = true
    end
  end)

  it("uses an explicit id", function()
    local h = w:execute("echo", "x", { id = "job-7" })
    assert.equals("job-7", h.id)
    assert.equals("x", S.result(h))
    assert.equals("job-7", w:query("job-7").id)
  end)

  it("result(timeout) on a finished task returns at once; result() again gives the same", function()
    local h = w:execute("echo", { k = "v" })
    assert.same({ k = "v" }, S.result(h))
    assert.same({ k = "v" }, h:result(0))
    assert.same({ k = "v" }, h:result("1s"))
  end)

  it("result() of a task that completed with nil returns nil and no error", function()
    local h = w:execute("echo", nil)
    local r, err = S.result(h)
    assert.is_nil(r)
    assert.is_nil(err)
    assert.equals("completed", h:status())
  end)

  it("passes only the first returned value; nil, nil is a success", function()
    assert.equals(1, S.result(w:execute("multi", "two")))
    local r, err = S.result(w:execute("multi", "nilnil"))
    assert.is_nil(r); assert.is_nil(err)
    local h = w:execute("multi", "none")
    r, err = S.result(h)
    assert.is_nil(r); assert.is_nil(err)
    assert.equals("completed", h:status())
  end)

  it("the handler sees ctx.id, ctx.name and ctx.attempt", function()
    local h = w:execute("whoami", "in", { id = "who-1" })
    local r = S.result(h)
    assert.same({ id = "who-1", name = "whoami", attempt = 1, input = "in" }, r)
  end)

  it("result(timeout) expiring returns nil, ETIMEDOUT and leaves the task alone", function()
    local w1 = S.started { minWorkers = 1 }
    local blocker = w1:execute("nap", { ms = 300 })
    local h = w1:execute("echo", "later")
    local t0 = athena.now()
    local r, err = h:result(50)
    assert.is_true(athena.now() - t0 >= 50)
    assert.is_nil(r)
    assert.equals("ETIMEDOUT", err.code)
    assert.equals("ETIMEDOUT: " .. err.message, tostring(err))
    assert.equals("later", S.result(h))
    S.result(blocker)
  end)

  it("result(timeout) rejects a bad duration with EINVAL", function()
    local h = w:execute("echo", 1)
    S.raises("EINVAL", h.result, h, "1.5s")
    S.raises("EINVAL", h.result, h, -1)
  end)

  describe("argument and option errors", function()
    it("raises Lua's standard error for a missing name or a non-table opts", function()
      assert.matches("bad argument", S.raised(w.execute, w))
      assert.matches("bad argument", S.raised(w.execute, w, "echo", 1, 5))
      assert.matches("bad argument", S.raised(w.execute, w, "echo", 1, "opts"))
    end)

    it("raises ENOTFOUND for an unknown activity", function()
      local err = S.raises("ENOTFOUND", w.execute, w, "no-such-activity", 1)
      assert.equals(0, w:getMetrics().tasks.queued)
      assert.is_string(err.message)
    end)

    local bad = {
      { "an unknown option", { bogus = 1 } },
      { "ids (executeMany only)", { ids = { "a" } } },
      { "an empty id", { id = "" } },
      { "a numeric id", { id = 7 } },
      { "a float priority", { priority = 1.5 } },
      { "a string priority", { priority = "high" } },
      { "an unknown taskQueue", { taskQueue = "nowhere" } },
      { "a numeric taskQueue", { taskQueue = 3 } },
      { "a bad delay", { delay = "1.5s" } },
      { "a negative delay", { delay = -1 } },
      { "a bad failureStrategy", { failureStrategy = "explode" } },
    }
    for _, case in ipairs(bad) do
      it("raises EINVAL for " .. case[1] .. " and enqueues nothing", function()
        local opts = case[2]
        local id = "bad-opts-" .. case[1]:gsub("%W", "")
        if opts.id == nil then opts.id = id end
        S.raises("EINVAL", w.execute, w, "echo", 1, opts)
        local m = w:getMetrics()
        assert.equals(0, m.tasks.queued + m.tasks.scheduled + m.tasks.running + m.tasks.completed)
        if type(opts.id) == "string" and opts.id ~= "" then
          local _, err = w:query(opts.id)
          assert.equals("ENOTFOUND", err.code)
        end
      end)
    end
  end)
end)

describe("world:query", function()
  after_each(S.cleanup)

  it("returns the state table of a completed task", function()
    local w = S.started { minWorkers = 1 }
    local before = athena.now()
    local h = w:execute("echo", { x = 1 }, { id = "q-1", priority = 4 })
    S.result(h)
    local q = w:query("q-1")
    assert.equals("q-1", q.id)
    assert.equals("echo", q.name)
    assert.equals("activity", q.kind)
    assert.equals("completed", q.status)
    assert.same({ x = 1 }, q.input)
    assert.same({ x = 1 }, q.result)
    assert.is_nil(q.error)
    assert.equals(1, q.attempt)
    for _, k in ipairs { "createdAt", "scheduledAt", "startedAt", "completedAt" } do
      assert.equals("integer", math.type(q[k]), k)
    end
    assert.is_true(q.createdAt >= before - 1000 and q.createdAt <= athena.now() + 1000)
    assert.equals(q.createdAt, q.scheduledAt)
    assert.is_true(q.createdAt <= q.startedAt)
    assert.is_true(q.startedAt <= q.completedAt)
    assert.matches("^worker%-%d+$", q.workerId)
    assert.equals(w:getWorkers()[1].id, q.workerId)
    assert.equals("default", q.taskQueue)
    assert.equals(4, q.priority)
  end)

  it("h:query() is world:query(h.id)", function()
    local w = S.started()
    local h = w:execute("add", { a = 1, b = 1 })
    S.result(h)
    assert.same(w:query(h.id), h:query())
  end)

  it("finds a task as soon as its execute returns, with several Lua states submitting", function()
    -- three workers' states and this one submit at once (an execute of
    -- generated ids skips the world lock: docs/operations.md)
    local w = S.started { minWorkers = 3, maxWorkers = 3 }
    local N = 200
    local subs = {}
    for s = 1, 3 do subs[s] = w:execute("submitter", { n = N, tag = "s" .. s }) end
    local mine = {}
    for first = 1, N, 10 do
      local batch = {}
      for i = first, first + 9 do batch[#batch + 1] = "m:" .. i end
      for _, h in ipairs(w:executeMany("echo", batch)) do
        assert.is_table(w:query(h.id))
        mine[#mine + 1] = h.id
      end
    end
    local runs = { m = mine }
    for s = 1, 3 do
      local r = S.result(subs[s], 10000)
      assert.equals(0, r.missed)
      runs["s" .. s] = r.ids
    end
    for tag, ids in pairs(runs) do
      assert.equals(N, #ids)
      for i, id in ipairs(ids) do
        local q = S.await(w, id, 10000)
        assert.equals("completed", q.status)
        assert.equals(tag .. ":" .. i, q.result)
        assert.equals(1, q.attempt)
      end
    end
    local t = w:getMetrics().tasks
    assert.equals(3 + 4 * N, t.completed)
    assert.equals(0, t.queued)
  end)

  it("returns nil, ENOTFOUND for an unknown id", function()
    local w = S.started()
    local q, err = w:query("no-such-id")
    assert.is_nil(q)
    assert.equals("ENOTFOUND", err.code)
    assert.equals("ENOTFOUND: " .. err.message, tostring(err))
  end)

  it("shows a task waiting for a slot as pending with attempt 0", function()
    local w = S.started { minWorkers = 1 }
    local blocker = w:execute("nap", { ms = 300 })
    local h = w:execute("echo", "waiting", { id = "q-pending" })
    local q = w:query("q-pending")
    assert.equals("pending", q.status)
    assert.equals("pending", h:status())
    assert.equals(0, q.attempt)
    assert.is_nil(q.startedAt)
    assert.is_nil(q.completedAt)
    assert.is_nil(q.result)
    assert.is_nil(q.workerId)
    assert.equals("waiting", q.input)
    S.result(blocker)
    assert.equals("waiting", S.result(h))
  end)

  it("shows a running task as running with attempt 1 and its worker", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 2 } } }
    local long = w:execute("nap", { ms = 500 })
    -- claims are FIFO on the one worker: once the probe ran, `long` was claimed
    S.result(w:execute("echo", "probe"))
    local q = long:query()
    assert.equals("running", q.status)
    assert.equals(1, q.attempt)
    assert.equals("integer", math.type(q.startedAt))
    assert.equals("worker-1", q.workerId)
    assert.is_nil(q.completedAt)
    assert.is_nil(q.result)
    S.result(long)
  end)

  it("shows a failed task's error", function()
    local w = S.started { failureStrategy = "ignore" }
    local h = w:execute("fail", { kind = "code" })
    S.result(h)
    local q = h:query()
    assert.equals("failed", q.status)
    assert.equals("EMINE", q.error.code)
    assert.equals("EMINE: x", tostring(q.error))
    assert.is_nil(q.result)
    assert.equals("integer", math.type(q.completedAt))
  end)
end)

describe("payloads", function()
  local w
  setup(function()
    w = S.started { minWorkers = 2 }
  end)
  teardown(S.cleanup)

  local function roundtrip(v)
    local r, err = S.result(w:execute("echo", v))
    assert.is_nil(err)
    return r
  end

  it("keeps integers integers, on the worker and back", function()
    local input = { a = 1, b = -7, c = 0, d = math.maxinteger, e = math.mininteger, f = 1 << 53, g = (1 << 53) + 1 }
    local types = S.result(w:execute("types", input))
    for k in pairs(input) do assert.equals("integer", types[k], k) end
    local back = roundtrip(input)
    for k, v in pairs(input) do
      assert.equals("integer", math.type(back[k]), k)
      assert.equals(v, back[k], k)
    end
  end)

  it("keeps floats floats: 2.0 stays 2.0, -0.0 stays -0.0", function()
    local input = { two = 2.0, tenth = 0.1, neg = -1.5, big = 1e300, tiny = 5e-324, negzero = -0.0, third = 1 / 3 }
    local types = S.result(w:execute("types", input))
    for k in pairs(input) do assert.equals("float", types[k], k) end
    local back = roundtrip(input)
    for k, v in pairs(input) do
      assert.equals("float", math.type(back[k]), k)
      assert.equals(v, back[k], k)
    end
    assert.equals(-math.huge, 1 / back.negzero)
  end)

  it("round-trips strings: UTF-8, escapes, NUL, long", function()
    for _, s in ipairs { "", "héllo ✓ 日本語 😀", "quote\" back\\ nl\n tab\t cr\r", "nul\0byte",
      "\1\2\31\127", ("x"):rep(1024 * 1024) } do
      assert.equals(s, roundtrip(s))
    end
    assert.equals("string", S.result(w:execute("types", { s = "héllo" })).s)
  end)

  it("round-trips booleans, nil and scalars at the top level", function()
    assert.is_true(roundtrip(true))
    assert.is_false(roundtrip(false))
    assert.equals(42, roundtrip(42))
    assert.equals("integer", math.type(roundtrip(42)))
    assert.equals("float", math.type(roundtrip(42.0)))
  end)

  it("round-trips nested tables and {}", function()
    local v = { user = { name = "ada", tags = { "a", "b" }, meta = { deep = { deeper = { 1, { 2, { 3 } } } } } },
      empty = {}, list = { {}, { x = {} } }, ["1"] = "string key", ["with space"] = true }
    assert.same(v, roundtrip(v))
    assert.same({}, roundtrip({}))
    local back = roundtrip({ ["1"] = "s" })
    assert.equals("s", back["1"])
    assert.is_nil(back[1])
  end)

  it("accepts nesting of 1000 levels", function()
    local v = {}
    local cur = v
    for _ = 2, 1000 do
      cur.n = {}
      cur = cur.n
    end
    cur.leaf = true
    local back = roundtrip(v)
    for _ = 2, 1000 do back = back.n end
    assert.is_true(back.leaf)
  end)

  it("keeps holes in arrays", function()
    local back = roundtrip({ 1, nil, 3 })
    assert.equals(1, back[1])
    assert.is_nil(back[2])
    assert.equals(3, back[3])
    back = roundtrip({ [1] = "a", [10] = "j" }) -- n = 10: not excessively sparse
    assert.equals("a", back[1])
    assert.equals("j", back[10])
    for i = 2, 9 do assert.is_nil(back[i]) end
    back = roundtrip({ [2] = "b", [3] = "c" })
    assert.is_nil(back[1])
    assert.equals("b", back[2])
    -- n = 12 with 7 keys: n <= 2 * keys, allowed
    local t = { 1, 2, 3, 4, 5, 6, [12] = 12 }
    back = roundtrip(t)
    assert.equals(12, back[12])
    assert.is_nil(back[7])
  end)

  it("ignores metatables", function()
    local v = setmetatable({ a = 1 }, { __index = function() return "meta" end, __tostring = function() return "x" end })
    local back = roundtrip(v)
    assert.same({ a = 1 }, back)
    assert.is_nil(getmetatable(back))
    assert.is_nil(back.b)
  end)

  it("hands the handler a copy: mutating it does not change the caller's table", function()
    local input = { list = { "original" }, n = 1 }
    local r = S.result(w:execute("mutate", input))
    assert.is_true(r.changed)
    assert.equals("changed", r.list[1])
    assert.is_nil(input.changed)
    assert.equals("original", input.list[1])
    -- and the stored input is the one given
    local h = w:execute("mutate", input)
    S.result(h)
    assert.same({ list = { "original" }, n = 1 }, h:query().input)
  end)

  it("encodes the input at execute(): later changes to the caller's table do not reach the task", function()
    local w1 = S.started { minWorkers = 1 }
    local blocker = w1:execute("nap", { ms = 200 })
    local input = { v = "before" }
    local h = w1:execute("echo", input)
    input.v = "after"
    assert.same({ v = "before" }, S.result(h))
    S.result(blocker)
  end)

  describe("unserializable input raises EINVAL at execute() naming the path", function()
    local cyc = { a = { b = {} } }
    cyc.a.b.c = cyc
    local deep = {}
    do
      local cur = deep
      for _ = 1, 1001 do cur.n = {}; cur = cur.n end
    end
    local cases = {
      { "a function", { user = { cb = function() end } }, "input%.user%.cb" },
      { "a top-level function", function() end, "input" },
      { "userdata", { f = io.stdout }, "input%.f" },
      { "a coroutine", { list = { 1, coroutine.create(function() end) } }, "input%.list%[2%]" },
      { "a cycle", cyc, "input%.a%.b" },
      { "a self cycle", (function() local t = {}; t.t = t; return t end)(), "input" },
      { "NaN", { x = 0 / 0 }, "input%.x" },
      { "inf", { x = math.huge }, "input%.x" },
      { "-inf", { y = { -math.huge } }, "input%.y%[1%]" },
      { "mixed keys", { v = { 1, 2, x = 3 } }, "input%.v" },
      { "a float key", { v = { [1.5] = 1 } }, "input%.v" },
      { "a boolean key", { v = { [true] = 1 } }, "input%.v" },
      { "a table key", { v = { [{}] = 1 } }, "input%.v" },
      { "a zero index", { v = { [0] = 1, 2 } }, "input%.v" },
      { "a negative index", { v = { [-1] = 1 } }, "input%.v" },
      { "an excessively sparse array", { v = { [1] = 1, [100] = 2 } }, "input%.v" },
      { "a sparse array just past the limit", { v = { [1] = 1, [11] = 2 } }, "input%.v" },
      { "invalid UTF-8", { s = "bad\255utf8" }, "input%.s" },
      { "a lone continuation byte", { s = "\128" }, "input%.s" },
      { "an overlong encoding", { s = "\192\175" }, "input%.s" },
      { "a UTF-16 surrogate", { s = "\237\160\128" }, "input%.s" },
      { "nesting deeper than 1000", deep, "input" },
    }
    for _, case in ipairs(cases) do
      it(case[1], function()
        local id = "bad-input-" .. case[1]:gsub("%W", "")
        local err = S.raises("EINVAL", w.execute, w, "echo", case[2], { id = id })
        assert.matches(case[3], err.message)
        assert.equals("EINVAL: " .. err.message, tostring(err))
        -- nothing was enqueued
        local _, qerr = w:query(id)
        assert.equals("ENOTFOUND", qerr.code)
      end)
    end
  end)
end)

describe("world:executeMany", function()
  local w
  before_each(function()
    w = S.started { minWorkers = 2 }
  end)
  after_each(S.cleanup)

  it("returns one handle per input, in order", function()
    local inputs = {}
    for i = 1, 100 do inputs[i] = i end
    local hs = w:executeMany("square", inputs)
    assert.equals(100, #hs)
    for i, h in ipairs(hs) do
      assert.equals("square", h.name)
      assert.equals(i * i, S.result(h))
    end
    assert.equals(100, w:getMetrics().tasks.completed)
  end)

  it("uses opts.ids", function()
    local hs = w:executeMany("echo", { "a", "b", "c" }, { ids = { "m-1", "m-2", "m-3" } })
    for i, id in ipairs { "m-1", "m-2", "m-3" } do
      assert.equals(id, hs[i].id)
      assert.equals(({ "a", "b", "c" })[i], S.result(hs[i]))
      assert.equals(id, w:query(id).id)
    end
  end)

  it("applies priority and taskQueue to every task", function()
    local w2 = S.started { minWorkers = 1, taskQueues = { io = { workers = 1 } } }
    local hs = w2:executeMany("echo", { 1, 2 }, { priority = 7, taskQueue = "io" })
    for _, h in ipairs(hs) do
      S.result(h)
      local q = h:query()
      assert.equals(7, q.priority)
      assert.equals("io", q.taskQueue)
    end
  end)

  it("returns {} for no inputs", function()
    assert.same({}, w:executeMany("echo", {}))
  end)

  it("raises Lua's standard error when inputs is not a table", function()
    assert.matches("bad argument", S.raised(w.executeMany, w, "echo", "x"))
  end)

  it("raises ENOTFOUND for an unknown activity", function()
    S.raises("ENOTFOUND", w.executeMany, w, "no-such-activity", { 1 })
  end)

  it("raises EINVAL for opts.id (ids only) and bad ids", function()
    S.raises("EINVAL", w.executeMany, w, "echo", { 1 }, { id = "x" })
    S.raises("EINVAL", w.executeMany, w, "echo", { 1, 2 }, { ids = { "only-one" } })
    S.raises("EINVAL", w.executeMany, w, "echo", { 1, 2 }, { ids = { "ok", 5 } })
    S.raises("EINVAL", w.executeMany, w, "echo", { 1, 2 }, { ids = { "ok", "" } })
    S.raises("EINVAL", w.executeMany, w, "echo", { 1 }, { ids = "x" })
    assert.equals(0, w:getMetrics().tasks.queued + w:getMetrics().tasks.completed)
    local _, err = w:query("ok")
    assert.equals("ENOTFOUND", err.code)
  end)

  it("an invalid input raises EINVAL naming its index and enqueues nothing of the batch", function()
    local ids = { "b-1", "b-2", "b-3", "b-4" }
    local err = S.raises("EINVAL", w.executeMany, w, "echo",
      { 1, { ok = true }, { user = { cb = print } }, 4 }, { ids = ids })
    assert.matches("inputs%[3%]", err.message)
    assert.matches("inputs%[3%]%.user%.cb", err.message)
    for _, id in ipairs(ids) do
      local q, qerr = w:query(id)
      assert.is_nil(q)
      assert.equals("ENOTFOUND", qerr.code)
    end
    local m = w:getMetrics()
    assert.equals(0, m.tasks.queued + m.tasks.running + m.tasks.completed + m.tasks.failed)
    -- the world still works
    assert.equals(9, S.result(w:execute("square", 3)))
  end)

  it("the first input invalid also enqueues nothing", function()
    S.raises("EINVAL", w.executeMany, w, "echo", { 0 / 0, 1, 2 }, { ids = { "f-1", "f-2", "f-3" } })
    local _, e = w:query("f-2")
    assert.equals("ENOTFOUND", e.code)
  end)

  it("an id in use by another activity raises EINVAL and enqueues nothing of the batch", function()
    S.result(w:execute("add", { a = 1, b = 1 }, { id = "taken" }))
    S.raises("EINVAL", w.executeMany, w, "echo", { 1, 2, 3 }, { ids = { "fresh-1", "taken", "fresh-3" } })
    for _, id in ipairs { "fresh-1", "fresh-3" } do
      local _, e = w:query(id)
      assert.equals("ENOTFOUND", e.code)
    end
    assert.equals("add", w:query("taken").name)
  end)

  it("an existing id in the batch hands back that task", function()
    local first = w:execute("echo", "old", { id = "dup" })
    assert.equals("old", S.result(first))
    local hs = w:executeMany("echo", { "new-1", "new-2" }, { ids = { "dup", "fresh" } })
    assert.equals("old", S.result(hs[1]))
    assert.equals("new-2", S.result(hs[2]))
    assert.equals(2, w:getMetrics().tasks.completed)
  end)
end)

describe("idempotent execute", function()
  after_each(S.cleanup)

  it("an existing explicit id returns the same task without a second run", function()
    local w = S.started { minWorkers = 1 }
    local h1 = w:execute("order", { tag = "first" }, { id = "once" })
    local r1 = S.result(h1)
    assert.same({ n = 1, tag = "first" }, r1)
    local h2 = w:execute("order", { tag = "second" }, { id = "once" })
    assert.equals("once", h2.id)
    assert.same(r1, S.result(h2))
    assert.equals("completed", h2:status())
    assert.equals(1, w:getMetrics().tasks.completed)
    assert.equals(1, S.sum_workers(w, "tasksCompleted"))
    assert.equals(1, h2:query().attempt)
    assert.same({ tag = "first" }, h2:query().input)
    -- the counter in the worker moved only once
    assert.equals(2, S.result(w:execute("order", {})).n)
  end)

  it("an explicit id of a task still pending returns that task", function()
    local w = S.started { minWorkers = 1 }
    local blocker = w:execute("nap", { ms = 200 })
    local h1 = w:execute("echo", "one", { id = "pend" })
    local h2 = w:execute("echo", "two", { id = "pend" })
    assert.equals("one", S.result(h2))
    assert.equals("one", S.result(h1))
    S.result(blocker)
    assert.equals(2, w:getMetrics().tasks.completed)
  end)

  it("an explicit id of a failed task returns it without a run", function()
    local w = S.started { minWorkers = 1, failureStrategy = "ignore" }
    local h1 = w:execute("fail", { kind = "code" }, { id = "failed-once" })
    local _, e1 = S.result(h1)
    assert.equals("EMINE", e1.code)
    local h2 = w:execute("fail", { kind = "string" }, { id = "failed-once" })
    local _, e2 = S.result(h2)
    assert.equals("EMINE", e2.code)
    assert.equals(1, w:getMetrics().tasks.failed)
  end)

  it("an explicit id in use by another activity raises EINVAL", function()
    local w = S.started()
    S.result(w:execute("echo", 1, { id = "mine" }))
    S.raises("EINVAL", w.execute, w, "add", { a = 1, b = 2 }, { id = "mine" })
    assert.equals("echo", w:query("mine").name)
    assert.equals(1, w:getMetrics().tasks.completed)
  end)
end)

describe("error values", function()
  after_each(S.cleanup)

  it("have a __tostring giving <code>: <message> and the documented fields", function()
    local err = S.raised(athena.World.new, { bogus = 1 })
    assert.equals("EINVAL", err.code)
    assert.is_string(err.message)
    assert.equals("EINVAL: " .. err.message, tostring(err))
    assert.equals(athena.Error, getmetatable(err))
    assert.is_false(err.retryable)
    assert.equals(0, err.attempt)
  end)

  it("a task's error from result() is an error value too", function()
    local w = S.started { failureStrategy = "ignore" }
    local _, err = S.result(w:execute("fail", { kind = "code" }))
    assert.equals("EMINE: x", tostring(err))
    assert.equals(athena.Error, getmetatable(err))
  end)

  it("athena.FatalError builds an EFATAL value", function()
    local e = athena.FatalError("x")
    assert.equals("EFATAL", e.code)
    assert.equals("x", e.message)
    assert.equals("FatalError", e.name)
    assert.is_false(e.retryable)
    assert.equals("EFATAL: x", tostring(e))
  end)
end)

describe("world:getMetrics", function()
  after_each(S.cleanup)

  it("before start: uptime 0 and the default queue", function()
    local w = S.world()
    local m = w:getMetrics()
    assert.equals(0, m.uptime)
    assert.is_table(m.queues.default)
  end)

  it("counts N completions with real numbers", function()
    local w = S.started { minWorkers = 2, failureStrategy = "ignore" }
    local N = 25
    local inputs = {}
    for i = 1, N do inputs[i] = i end
    for _, h in ipairs(w:executeMany("square", inputs)) do S.result(h) end
    S.result(w:execute("fail", { kind = "code" }))
    local m = w:getMetrics()
    assert.equals(N, m.tasks.completed)
    assert.equals(1, m.tasks.failed)
    assert.equals(0, m.tasks.queued)
    assert.equals(0, m.tasks.running)
    assert.equals(0, m.tasks.scheduled)
    assert.equals(2, m.workers.total)
    assert.equals(2, m.workers.idle)
    assert.equals(0, m.workers.busy)
    assert.equals("integer", math.type(m.uptime))
    assert.is_true(m.uptime >= 0)
    assert.is_table(m.queues.default)
    assert.equals(0, m.queues.default.depth)
    assert.equals(0, m.queues.default.running)
    assert.equals(0, m.queues.default.oldestAgeMs)
    assert.equals(0, m.workload)
    for _, k in ipairs { "queueWait", "run" } do
      for _, p in ipairs { "p50", "p95", "p99" } do
        assert.equals("number", type(m.latency[k][p]), k .. "." .. p)
        assert.is_true(m.latency[k][p] >= 0)
      end
      assert.is_true(m.latency[k].p50 <= m.latency[k].p95 and m.latency[k].p95 <= m.latency[k].p99)
    end
    for _, k in ipairs { "perSecond", "perMinute", "perHour" } do
      assert.equals("number", type(m.throughput[k]))
    end
    assert.is_true(m.throughput.perMinute <= m.throughput.perHour)
  end)

  it("the run latency reflects what tasks took", function()
    local w = S.started { minWorkers = 1 }
    S.result(w:execute("nap", { ms = 100 }))
    local m = w:getMetrics()
    assert.is_true(m.latency.run.p50 >= 90, "run p50 " .. m.latency.run.p50)
  end)

  it("counts throughput over the last minute", function()
    local w = S.started { minWorkers = 1 }
    for _, h in ipairs(w:executeMany("square", { 1, 2, 3, 4, 5 })) do S.result(h) end
    athena.sleep(1100) -- throughput counts complete seconds
    local m = w:getMetrics()
    assert.equals(5, m.throughput.perMinute)
    assert.equals(5, m.throughput.perHour)
  end)

  it("shows depth, running, workload and busy workers while tasks wait", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 2 } } }
    local long = w:execute("nap", { ms = 400 })
    S.result(w:execute("echo", "probe")) -- `long` is claimed once the probe ran
    local second = w:execute("nap", { ms = 400 }) -- takes the free slot
    local waiting = w:executeMany("echo", { 1, 2, 3 })
    local m = w:getMetrics()
    assert.equals(1, m.workers.total)
    -- `second` may or may not be claimed yet; `long` is running
    assert.is_true(m.tasks.running >= 1)
    assert.equals(m.tasks.running, m.queues.default.running)
    assert.equals(m.tasks.queued, m.queues.default.depth)
    assert.equals(5, m.tasks.running + m.tasks.queued)
    assert.is_true(m.workload > 0 and m.workload <= 1)
    assert.equals(1, m.workers.busy)
    assert.equals(0, m.workers.idle)
    S.result(long); S.result(second)
    for _, h in ipairs(waiting) do S.result(h) end
  end)

  it("counts scheduled (delayed) tasks", function()
    local w = S.started()
    local h = w:execute("echo", 1, { delay = 300 })
    assert.equals(1, w:getMetrics().tasks.scheduled)
    S.result(h)
    assert.equals(0, w:getMetrics().tasks.scheduled)
  end)
end)

describe("world:getWorkers", function()
  after_each(S.cleanup)

  it("lists every worker with real numbers", function()
    local w = S.started { minWorkers = 2, taskQueues = { io = { workers = 1, concurrency = 3 } },
      failureStrategy = "ignore" }
    for _, h in ipairs(w:executeMany("square", { 1, 2, 3, 4, 5, 6 })) do S.result(h) end
    S.result(w:execute("fail", { kind = "code" }))
    local before = athena.now()
    local ws = w:getWorkers()
    assert.equals(3, #ws)
    local ids = {}
    for _, wk in ipairs(ws) do
      assert.matches("^worker%-%d+$", wk.id)
      assert.is_nil(ids[wk.id]); ids[wk.id] = true
      assert.equals("idle", wk.status)
      assert.is_true(wk.taskQueue == "default" or wk.taskQueue == "io")
      assert.equals(wk.taskQueue == "io" and 3 or 1, wk.concurrency)
      for _, k in ipairs { "tasksCompleted", "tasksFailed", "memoryKB", "lastHeartbeat" } do
        assert.equals("integer", math.type(wk[k]), k)
      end
      if wk.tasksCompleted + wk.tasksFailed > 0 then
        assert.is_true(wk.memoryKB > 0, wk.id .. " memoryKB") -- (right after start: config_spec)
      end
      assert.same({}, wk.running)
      assert.is_true(math.abs(wk.lastHeartbeat - before) < 60000, "lastHeartbeat is epoch ms")
    end
    assert.is_truthy(ids["worker-1"] and ids["worker-2"] and ids["worker-3"])
    assert.equals(6, S.sum_workers(w, "tasksCompleted"))
    assert.equals(1, S.sum_workers(w, "tasksFailed"))
  end)

  it("shows a worker running a task as busy", function()
    local w = S.started { minWorkers = 1, taskQueues = { default = { concurrency = 2 } } }
    local long = w:execute("nap", { ms = 400 })
    S.result(w:execute("echo", "probe"))
    local wk = w:getWorkers()[1]
    assert.equals("busy", wk.status)
    assert.equals(2, wk.concurrency)
    -- running: one {id, name, startedAt} per task holding a slot (§12.1)
    assert.equals(1, #wk.running)
    assert.equals(long.id, wk.running[1].id)
    assert.equals("nap", wk.running[1].name)
    assert.equals("integer", math.type(wk.running[1].startedAt))
    assert.equals(long:query().startedAt, wk.running[1].startedAt)
    S.result(long)
    wk = w:getWorkers()[1]
    assert.equals("idle", wk.status)
    assert.same({}, wk.running)
    assert.equals(2, wk.tasksCompleted)
  end)

  it("is empty before start", function()
    local w = S.world()
    assert.same({}, w:getWorkers())
  end)
end)
