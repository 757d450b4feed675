-- Scheduler (SEMANTICS §11) and the manual clock (§2, clock = "manual").
-- Every time-based test runs on the manual clock: time moves only through
-- world:advance, which fires what is due in between, in order, and returns
-- once the work it started has settled. No test waits real time for a
-- schedule; the one real wait is the simulated downtime of the catch-up test.
local athena = require "athena"
local jobs = require "fixtures.sched_jobs"

local SEC, MIN, HOUR, DAY = 1000, 60000, 3600000, 86400000

---------------------------------------------------------------- helpers

local open = {}

-- A world over the spec's defaults (memory, manual clock, one worker),
-- every fixture activity registered; started unless `nostart`.
local function world(cfg, nostart)
  local c = { modules = { "fixtures.sched_jobs" }, persistence = "memory", clock = "manual",
    minWorkers = 1 }
  for k, v in pairs(cfg or {}) do c[k] = v end
  local w = athena.World.new(c)
  open[#open + 1] = w
  w:register(table.unpack(jobs.all()))
  if not nostart then w:start() end
  return w
end

local function shutdown_all()
  for i = #open, 1, -1 do
    local w = open[i]
    open[i] = nil
    -- tasks asleep on the manual clock never finish by themselves: do not
    -- wait for them (timeout 0 requeues them)
    pcall(w.shutdown, w, { timeout = 0 })
  end
end

local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, got none")
  return err
end

-- Asserts fn(...) raises an error value with `code`; returns it.
local function raises(code, fn, ...)
  local err = raised(fn, ...)
  assert(type(err) == "table", "expected an error value with code " .. code .. ", got " .. tostring(err))
  assert(err.code == code, "expected code " .. code .. ", got " .. tostring(err.code) ..
    " (" .. tostring(err.message) .. ")")
  return err
end

-- The getSchedules() entry for `id` (nil if absent).
local function sched(w, id)
  for _, s in ipairs(w:getSchedules()) do
    if s.id == id then return s end
  end
end

local function due_of(task_id)
  return tonumber(task_id:match("@(%d+)$"))
end

-- Tasks of `name` (optionally only those whose id starts with `prefix.."@"`),
-- sorted by due time (from the id) or by id.
local function tasks(w, name, prefix)
  local out = {}
  for _, t in ipairs(w:queryTasks { name = name, limit = 1000 }) do
    if prefix == nil or t.id:sub(1, #prefix + 1) == prefix .. "@" then out[#out + 1] = t end
  end
  table.sort(out, function(a, b)
    local da, db = due_of(a.id), due_of(b.id)
    if da and db and da ~= db then return da < db end
    return a.id < b.id
  end)
  return out
end

local function ids(list)
  local out = {}
  for i, t in ipairs(list) do out[i] = t.id end
  return out
end

-- Multiples of `step` in (from, to].
local function marks(from, to, step)
  local out = {}
  local t = (from // step + 1) * step
  while t <= to do
    out[#out + 1] = t
    t = t + step
  end
  return out
end

local function with_prefix(prefix, dues)
  local out = {}
  for i, d in ipairs(dues) do out[i] = prefix .. "@" .. d end
  return out
end

local function count(list, pred)
  local n = 0
  for _, v in ipairs(list) do
    if pred(v) then n = n + 1 end
  end
  return n
end

local function result(h)
  return h:result(5000)
end

local function tmpdir()
  local p = io.popen("mktemp -d /tmp/athena-sched-XXXXXX")
  local d = p:read("l")
  p:close()
  assert(d and d ~= "", "mktemp -d failed")
  return d
end

local function rmdir(d)
  if d and d:match("^/tmp/athena%-sched%-") then os.execute("rm -rf '" .. d .. "'") end
end

-- Runs `body` in a child lua5.4 (LUA_PATH/LUA_CPATH inherited) after a
-- preamble that makes and starts a manual-clock world `w`; `env` is put
-- before the command (e.g. "TZ=Asia/Kolkata"). The child is killed after
-- `limit` seconds (a hang fails the test instead of the suite). Returns
-- everything it printed.
local CHILD_PREAMBLE = [[
local athena = require "athena"
local jobs = require "fixtures.sched_jobs"
local w = athena.World.new { modules = { "fixtures.sched_jobs" }, persistence = "memory",
  clock = "manual", minWorkers = 1 }
w:register(table.unpack(jobs.all()))
w:start()
local function get(id)
  for _, s in ipairs(w:getSchedules()) do if s.id == id then return s end end
end
local ok, err = pcall(function()
]]
local CHILD_POSTAMBLE = [[
end)
if not ok then print("error " .. tostring(err)) end
io.stdout:flush()
w:shutdown { timeout = 0 }
]]

local function run_child(env, body, limit)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(CHILD_PREAMBLE, body, "\n", CHILD_POSTAMBLE)
  f:close()
  local p = io.popen(string.format("%s timeout %d lua5.4 %s 2>&1", env or "", limit or 60, script))
  local out = p:read("a")
  p:close()
  os.remove(script)
  return out
end

local UUID4 = "^once%-%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89abAB]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

describe("scheduler", function()
  after_each(shutdown_all)

  ----------------------------------------------------------- cron firing
  describe("cron firing on the manual clock", function()
    it("fires */5 * * * * * at each 5-second mark as advance moves through a minute", function()
      local w = world()
      local t0 = w:now()
      assert.equal("every5", w:schedule("every5", "tick", { n = 1 }, "*/5 * * * * *"))
      for step = 1, 60 do
        w:advance(SEC)
        assert.equal(t0 + step * SEC, w:now())
        local expect = marks(t0, w:now(), 5 * SEC)
        local s = sched(w, "every5")
        assert.equal(#expect, s.totalExecutions)
        assert.equal(0, s.skippedExecutions)
      end
      local expect = marks(t0, t0 + MIN, 5 * SEC)
      assert.equal(12, #expect)
      local got = tasks(w, "tick", "every5")
      assert.same(with_prefix("every5", expect), ids(got))
      for _, t in ipairs(got) do
        assert.equal(0, due_of(t.id) % (5 * SEC))
        assert.equal("completed", t.status)
        -- athena.now() inside the fired task is the due time (manual clock)
        assert.equal(due_of(t.id), t.result.now)
        assert.equal(t.id, t.result.id)
        assert.same({ n = 1 }, t.result.input)
      end
    end)

    it("fires at exactly the due times when one advance spans them all", function()
      local w = world()
      local t0 = w:now()
      w:schedule("bulk", "tick", nil, "*/5 * * * * *")
      w:advance(MIN)
      local expect = marks(t0, t0 + MIN, 5 * SEC)
      local got = tasks(w, "tick", "bulk")
      assert.same(with_prefix("bulk", expect), ids(got))
      for _, t in ipairs(got) do
        assert.equal("completed", t.status)
        assert.equal(due_of(t.id), t.result.now)
      end
      assert.equal(12, sched(w, "bulk").totalExecutions)
    end)

    it("reports nextExecution and lastExecution", function()
      local w = world()
      local t0 = w:now()
      w:schedule("nl", "tick", nil, "*/5 * * * * *")
      local s = sched(w, "nl")
      local first = (t0 // (5 * SEC) + 1) * (5 * SEC)
      assert.equal(first, s.nextExecution)
      assert.is_nil(s.lastExecution)
      assert.equal(0, s.totalExecutions)
      assert.equal(0, s.skippedExecutions)
      -- just before the first occurrence: nothing yet
      w:advance(first - t0 - 1)
      s = sched(w, "nl")
      assert.equal(0, s.totalExecutions)
      assert.equal(first, s.nextExecution)
      -- at it
      w:advance(1)
      s = sched(w, "nl")
      assert.equal(1, s.totalExecutions)
      assert.equal(first, s.lastExecution)
      assert.equal(first + 5 * SEC, s.nextExecution)
      -- 17 s later: three more (first+5, +10, +15)
      w:advance(17 * SEC)
      s = sched(w, "nl")
      assert.equal(4, s.totalExecutions)
      assert.equal(first + 15 * SEC, s.lastExecution)
      assert.equal(first + 20 * SEC, s.nextExecution)
    end)

    it("reports every getSchedules field", function()
      local w = world()
      w:schedule("fields", "tick", { a = { 1, 2 }, s = "x" }, "0 9 * * MON-FRI",
        { timezone = "UTC", catchUp = "all", overlap = "skip" })
      local s = sched(w, "fields")
      assert.equal("fields", s.id)
      assert.equal("tick", s.name)
      assert.same({ a = { 1, 2 }, s = "x" }, s.input)
      assert.equal("0 9 * * MON-FRI", s.cronExpression)
      assert.equal("UTC", s.timezone)
      assert.equal("all", s.catchUp)
      assert.equal("skip", s.overlap)
      assert.is_false(s.paused)
      assert.equal(0, s.totalExecutions)
      assert.equal(0, s.skippedExecutions)
      assert.is_nil(s.lastExecution)
      assert.is_number(s.nextExecution)
      -- defaults
      w:schedule("defaults", "tick", nil, "* * * * *")
      s = sched(w, "defaults")
      assert.equal("UTC", s.timezone)
      assert.equal("one", s.catchUp)
      assert.equal("allow", s.overlap)
      assert.is_nil(s.input)
    end)

    it("fires a 5-field expression at second 0 of each matching minute", function()
      local w = world()
      local t0 = w:now()
      w:schedule("two-min", "tick", nil, "*/2 * * * *")
      w:advance(10 * MIN)
      local expect = marks(t0, t0 + 10 * MIN, 2 * MIN)
      assert.equal(5, #expect)
      local got = tasks(w, "tick", "two-min")
      assert.same(with_prefix("two-min", expect), ids(got))
      for _, t in ipairs(got) do assert.equal(due_of(t.id), t.result.now) end
    end)

    it("fires several schedules in due order within one advance", function()
      local w = world()
      local t0 = w:now()
      w:schedule("a3", "tick", nil, "*/3 * * * * *")
      w:schedule("b7", "tick", nil, "*/7 * * * * *")
      w:schedule("0first", "tick", nil, "0 0 1 1 *")
      local order = {}
      for i, sc in ipairs(w:getSchedules()) do order[i] = sc.id end
      assert.same({ "0first", "a3", "b7" }, order) -- getSchedules() is sorted by id
      w:advance(30 * SEC)
      assert.same(with_prefix("a3", marks(t0, t0 + 30 * SEC, 3 * SEC)), ids(tasks(w, "tick", "a3")))
      -- */7 in the second field: seconds 0, 7, ..., 56 of each minute
      local b7 = {}
      for _, t in ipairs(marks(t0, t0 + 30 * SEC, SEC)) do
        if (t // SEC) % 60 % 7 == 0 then b7[#b7 + 1] = t end
      end
      assert.same(with_prefix("b7", b7), ids(tasks(w, "tick", "b7")))
      -- in due order: with one worker, run order (seq) follows the due times
      local all = tasks(w, "tick")
      for i = 2, #all do
        if due_of(all[i].id) > due_of(all[i - 1].id) then
          assert.truthy(all[i].result.seq > all[i - 1].result.seq, "fired out of due order")
        end
      end
      for _, t in ipairs(tasks(w, "tick")) do assert.equal(due_of(t.id), t.result.now) end
    end)
  end)

  -------------------------------------------------------------- one-offs
  describe("scheduleOnce", function()
    it("fires at an epoch-ms time with the schedule's own id, then the schedule is gone", function()
      local w = world()
      local at = w:now() + 10 * SEC
      local id = w:scheduleOnce("tick", { once = true }, at)
      assert.is_string(id)
      assert.truthy(id:match(UUID4), "id " .. id .. " is not once-<uuid v4>")
      local s = sched(w, id)
      assert.is_nil(s.cronExpression)
      assert.equal("tick", s.name)
      assert.same({ once = true }, s.input)
      assert.equal(at, s.nextExecution)
      assert.equal(0, s.totalExecutions)
      assert.is_nil(s.lastExecution)
      assert.is_false(s.paused)

      w:advance(10 * SEC - 1)
      assert.equal(0, #tasks(w, "tick"))
      assert.is_table(sched(w, id))

      w:advance(1)
      local got = tasks(w, "tick")
      assert.equal(1, #got)
      assert.equal(id, got[1].id)
      assert.equal("completed", got[1].status)
      assert.equal(at, got[1].result.now)
      assert.equal(id, got[1].result.id)
      assert.same({ once = true }, got[1].result.input)
      assert.is_nil(sched(w, id))
    end)

    it("gives a fresh id per call", function()
      local w = world()
      local a = w:scheduleOnce("tick", nil, w:now() + HOUR)
      local b = w:scheduleOnce("tick", nil, w:now() + HOUR)
      assert.not_equal(a, b)
      assert.truthy(a:match(UUID4))
      assert.truthy(b:match(UUID4))
    end)

    it("accepts ISO-8601 with Z (fraction kept)", function()
      local w = world()
      local at_s = w:now() // SEC + 120
      local iso = os.date("!%Y-%m-%dT%H:%M:%S", at_s) .. ".250Z"
      local id = w:scheduleOnce("tick", nil, iso)
      local at = at_s * SEC + 250
      assert.equal(at, sched(w, id).nextExecution)
      w:advance(at - w:now())
      local got = tasks(w, "tick")
      assert.same({ id }, ids(got))
      assert.equal(at, got[1].result.now)
      assert.is_nil(sched(w, id))
    end)

    it("accepts ISO-8601 with an offset (+01:00, -05:30)", function()
      local w = world()
      local at_s = w:now() // SEC + 300
      -- the same instant written in +01:00 (wall time one hour later)
      local plus = os.date("!%Y-%m-%dT%H:%M:%S", at_s + 3600) .. "+01:00"
      local id1 = w:scheduleOnce("tick", nil, plus)
      assert.equal(at_s * SEC, sched(w, id1).nextExecution)
      -- and in -05:30 (wall time 5.5 hours earlier)
      local minus = os.date("!%Y-%m-%dT%H:%M:%S", at_s - 19800) .. ".5-05:30"
      local id2 = w:scheduleOnce("tick", nil, minus)
      assert.equal(at_s * SEC + 500, sched(w, id2).nextExecution)
      -- fixed instants (computed independently with date -u)
      local id3 = w:scheduleOnce("tick", nil, "2099-03-01T09:00:00.250+01:00")
      assert.equal(4076035200250, sched(w, id3).nextExecution)
      local id4 = w:scheduleOnce("tick", nil, "2099-12-31T23:59:59.999+05:30")
      assert.equal(4102424999999, sched(w, id4).nextExecution)
      local id5 = w:scheduleOnce("tick", nil, "2099-12-31T12:59:59-05:30")
      assert.equal(4102424999000, sched(w, id5).nextExecution)
      -- the +01:00 one fires at its instant
      w:advance(at_s * SEC - w:now())
      local got = tasks(w, "tick")
      assert.same({ id1 }, ids(got))
      assert.equal(at_s * SEC, got[1].result.now)
    end)

    it("fires a past time at once (on the next advance(0))", function()
      local w = world()
      local now = w:now()
      local id = w:scheduleOnce("tick", { late = true }, now - MIN)
      local id2 = w:scheduleOnce("tick", nil, "2025-03-01T09:00:00.250+01:00")
      w:advance(0)
      assert.equal(now, w:now())
      local got = tasks(w, "tick")
      table.sort(got, function(a, b) return a.id < b.id end)
      local want = { id, id2 }
      table.sort(want)
      assert.same(want, ids(got))
      for _, t in ipairs(got) do
        assert.equal("completed", t.status)
        assert.equal(now, t.result.now) -- fired at once, not at the past due time
      end
      assert.is_nil(sched(w, id))
      assert.is_nil(sched(w, id2))
    end)

    it("a one-off ~585 years ahead neither fires nor stalls advance (child process)", function()
      -- (at - now) ms * 1e6 exceeds 2^64 ns here: the manual clock must not
      -- wrap it into "due now" (a stalled advance would hang the child,
      -- which is killed after 10 s).
      local out = run_child(nil, [[
  local t0 = w:now()
  local at = t0 + 18446744073710
  local id = w:scheduleOnce("tick", nil, at)
  w:advance(1000)
  w:advance("1h")
  print("moved " .. (w:now() - t0) .. " tasks " .. #w:queryTasks { name = "tick" } ..
    " next " .. tostring(get(id) and get(id).nextExecution == at))
]], 10)
      assert.is_nil(out:match("error ([^\n]*)"), out)
      assert.truthy(out:match("moved 3601000 tasks 0 next true"),
        "advance stalled or fired the far one-off; child printed: " .. out)
    end)

    it("rejects non-integral or unrepresentable epoch ms (EINVAL)", function()
      local w = world()
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, w:now() + 0.5)
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, math.huge)
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, 2.0 ^ 63)
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, 0 / 0)
      assert.equal(0, #w:getSchedules())
    end)

    it("rejects an offset that is not one (EINVAL)", function()
      local w = world()
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, "2099-03-01T09:00:00+01:60")
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, "2099-03-01T09:00:00+99:99")
      assert.equal(0, #w:getSchedules())
    end)

    it("rejects an ISO string without an offset, and impossible dates (EINVAL)", function()
      local w = world()
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, "2099-03-01T09:00:00")
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, "2099-03-01T09:00:00.250")
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, "2099-02-30T09:00:00Z")
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, "2099-03-01T24:00:00Z")
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, "tomorrow")
      assert.equal(0, #w:getSchedules())
    end)
  end)

  ---------------------------------------------------- pause, resume, delete
  describe("pause, resume, delete", function()
    it("fires nothing while paused; resume computes the next after now", function()
      local w = world()
      local t0 = w:now()
      w:schedule("p", "tick", nil, "*/5 * * * * *")
      w:advance(12 * SEC)
      local before = #marks(t0, t0 + 12 * SEC, 5 * SEC)
      assert.equal(before, sched(w, "p").totalExecutions)

      assert.is_true(w:pauseSchedule("p"))
      local s = sched(w, "p")
      assert.is_true(s.paused)
      w:advance(30 * SEC)
      s = sched(w, "p")
      assert.equal(before, s.totalExecutions)
      assert.equal(before, #tasks(w, "tick", "p"))
      assert.is_true(w:pauseSchedule("p")) -- again: still true

      local now = w:now()
      assert.is_true(w:resumeSchedule("p"))
      s = sched(w, "p")
      assert.is_false(s.paused)
      -- the occurrences due while paused are not made up
      assert.equal((now // (5 * SEC) + 1) * (5 * SEC), s.nextExecution)
      w:advance(0)
      assert.equal(before, sched(w, "p").totalExecutions)
      w:advance(10 * SEC)
      local got = tasks(w, "tick", "p")
      local expect = marks(t0, t0 + 12 * SEC, 5 * SEC)
      for _, d in ipairs(marks(now, now + 10 * SEC, 5 * SEC)) do expect[#expect + 1] = d end
      assert.same(with_prefix("p", expect), ids(got))
      assert.equal(#expect, sched(w, "p").totalExecutions)
      assert.is_true(w:resumeSchedule("p")) -- again: still true
    end)

    it("fires a once-schedule that came due while paused on resume", function()
      local w = world()
      local at = w:now() + 10 * SEC
      local id = w:scheduleOnce("tick", nil, at)
      assert.is_true(w:pauseSchedule(id))
      w:advance(20 * SEC)
      assert.equal(0, #tasks(w, "tick"))
      local s = sched(w, id)
      assert.is_table(s)
      assert.is_true(s.paused)
      local now = w:now()
      assert.is_true(w:resumeSchedule(id))
      w:advance(0)
      local got = tasks(w, "tick")
      assert.same({ id }, ids(got))
      assert.equal("completed", got[1].status)
      assert.equal(now, got[1].result.now)
      assert.is_nil(sched(w, id))
    end)

    it("delete stops a schedule", function()
      local w = world()
      local t0 = w:now()
      w:schedule("d", "tick", nil, "*/5 * * * * *")
      w:advance(11 * SEC)
      local n = #marks(t0, t0 + 11 * SEC, 5 * SEC)
      assert.equal(n, #tasks(w, "tick", "d"))
      assert.is_true(w:deleteSchedule("d"))
      assert.is_nil(sched(w, "d"))
      w:advance(30 * SEC)
      assert.equal(n, #tasks(w, "tick", "d"))
      -- a deleted one-off never fires
      local once = w:scheduleOnce("tick", nil, w:now() + 5 * SEC)
      assert.is_true(w:deleteSchedule(once))
      w:advance(10 * SEC)
      assert.equal(0, count(tasks(w, "tick"), function(t) return t.id == once end))
    end)

    it("raises ENOTFOUND for an unknown id", function()
      local w = world()
      raises("ENOTFOUND", w.pauseSchedule, w, "nope")
      raises("ENOTFOUND", w.resumeSchedule, w, "nope")
      raises("ENOTFOUND", w.deleteSchedule, w, "nope")
      w:schedule("gone", "tick", nil, "* * * * *")
      assert.is_true(w:deleteSchedule("gone"))
      raises("ENOTFOUND", w.deleteSchedule, w, "gone")
      raises("ENOTFOUND", w.pauseSchedule, w, "gone")
    end)

    it("replacing a schedule keeps its counters and uses the new cron and input", function()
      local w = world()
      local t0 = w:now()
      w:schedule("r", "tick", { v = 1 }, "*/5 * * * * *")
      w:advance(20 * SEC)
      local n = #marks(t0, t0 + 20 * SEC, 5 * SEC)
      local last = sched(w, "r").lastExecution
      assert.equal(n, sched(w, "r").totalExecutions)

      assert.equal("r", w:schedule("r", "tick", { v = 2 }, "*/10 * * * * *", { overlap = "skip" }))
      assert.equal(1, count(w:getSchedules(), function(s) return s.id == "r" end))
      local s = sched(w, "r")
      assert.equal("*/10 * * * * *", s.cronExpression)
      assert.same({ v = 2 }, s.input)
      assert.equal("skip", s.overlap)
      assert.equal(n, s.totalExecutions)
      assert.equal(last, s.lastExecution)
      local now = w:now()
      assert.equal((now // (10 * SEC) + 1) * (10 * SEC), s.nextExecution)

      w:advance(30 * SEC)
      local after = marks(now, now + 30 * SEC, 10 * SEC)
      assert.equal(n + #after, sched(w, "r").totalExecutions)
      local got = tasks(w, "tick", "r")
      for i, d in ipairs(after) do
        local t = got[n + i]
        assert.equal("r@" .. d, t.id)
        assert.same({ v = 2 }, t.result.input)
      end
    end)
  end)

  ---------------------------------------------------------------- overlap
  describe("overlap", function()
    -- "slow" sleeps 12 s; "slowflow" is a workflow parked 12 s on a durable
    -- timer (holding no slot, but running, so skip still waits for it).
    -- Occurrences every 5 s at m1, m1+5, ..., m1+30.
    local targets = {
      { name = "slow", prefix = "", kind = "activity", cfg = { taskQueues = { default = { concurrency = 4 } } } },
      { name = "slowflow", prefix = "w", kind = "workflow", cfg = {} }, -- one slot is enough
    }
    for _, tg in ipairs(targets) do
      it(tg.kind .. " target, skip: occurrences while the previous task runs are skipped and counted", function()
        local w = world(tg.cfg)
        local t0 = w:now()
        local id = tg.prefix .. "sk"
        w:schedule(id, tg.name, { ms = 12000 }, "*/5 * * * * *", { overlap = "skip" })
        local m1 = (t0 // (5 * SEC) + 1) * (5 * SEC)
        w:advance(m1 + 30 * SEC - t0)
        -- m1 runs until m1+12: m1+5, m1+10 skipped; m1+15 runs until m1+27:
        -- m1+20, m1+25 skipped; m1+30 fires.
        local got = tasks(w, tg.name, id)
        assert.same(with_prefix(id, { m1, m1 + 15 * SEC, m1 + 30 * SEC }), ids(got))
        assert.equal("completed", got[1].status)
        assert.equal(tg.kind, got[1].kind)
        assert.equal(m1, got[1].result.t0)
        assert.equal(m1 + 12 * SEC, got[1].result.t1)
        assert.equal("completed", got[2].status)
        assert.equal("running", got[3].status)
        local s = sched(w, id)
        assert.equal(3, s.totalExecutions)
        assert.equal(4, s.skippedExecutions)
        assert.equal(m1 + 30 * SEC, s.lastExecution)
        assert.equal(m1 + 35 * SEC, s.nextExecution)
      end)

      it(tg.kind .. " target, allow: occurrences run concurrently", function()
        local w = world(tg.cfg)
        local t0 = w:now()
        local id = tg.prefix .. "al"
        w:schedule(id, tg.name, { ms = 12000 }, "*/5 * * * * *") -- overlap "allow" by default
        local m1 = (t0 // (5 * SEC) + 1) * (5 * SEC)
        w:advance(m1 + 11 * SEC - t0)
        -- m1, m1+5 and m1+10 all running at once
        local running = w:queryTasks { name = tg.name, status = "running" }
        assert.equal(3, #running)
        w:advance(19 * SEC) -- to m1+30
        local got = tasks(w, tg.name, id)
        local expect = marks(t0, m1 + 30 * SEC, 5 * SEC)
        assert.equal(7, #expect)
        assert.same(with_prefix(id, expect), ids(got))
        for i = 1, 4 do -- the first four have slept their 12 s (the last ends at m1+27)
          assert.equal("completed", got[i].status)
          assert.equal(due_of(got[i].id), got[i].result.t0)
          assert.equal(due_of(got[i].id) + 12 * SEC, got[i].result.t1)
        end
        local s = sched(w, id)
        assert.equal(7, s.totalExecutions)
        assert.equal(0, s.skippedExecutions)
      end)
    end
  end)

  --------------------------------------------------------------- timezone
  describe("timezone", function()
    it("accepts and reports timezone = \"local\"", function()
      local w = world()
      assert.equal("loc", w:schedule("loc", "tick", nil, "*/5 * * * * *", { timezone = "local" }))
      local s = sched(w, "loc")
      assert.equal("local", s.timezone)
      assert.is_number(s.nextExecution)
      assert.truthy(s.nextExecution > w:now())
      assert.truthy(s.nextExecution - w:now() <= 5 * SEC)
    end)

    it("matches local wall time (TZ=Asia/Kolkata, child process)", function()
      -- TZ is process-wide: the local-time firing runs in a child lua5.4.
      local out = run_child("TZ=Asia/Kolkata", [[
  w:schedule("loc", "tick", nil, "0 0 9 * * *", { timezone = "local" })
  w:schedule("utc", "tick", nil, "0 0 9 * * *")
  local now = w:now()
  local nl, nu = get("loc").nextExecution, get("utc").nextExecution
  w:advance(math.max(nl, nu) - now)
  local fired = {}
  for _, t in ipairs(w:queryTasks { name = "tick" }) do
    fired[#fired + 1] = t.id .. "=" .. t.status .. "=" .. tostring(t.result and t.result.now)
  end
  table.sort(fired)
  print("zone " .. os.date("%z"))
  print("now " .. now)
  print("loc " .. nl .. " " .. get("loc").timezone)
  print("utc " .. nu)
  print("fired " .. table.concat(fired, " "))
]])
      assert.is_nil(out:match("error ([^\n]*)"), out)
      assert.equal("+0530", out:match("zone (%S+)"), out)
      local now = tonumber(out:match("now (%d+)"))
      local nl = tonumber(out:match("loc (%d+) local"))
      local nu = tonumber(out:match("utc (%d+)"))
      assert.is_number(nl, out)
      assert.is_number(nu, out)
      -- 09:00 in +05:30 is 03:30Z; 09:00 UTC is 09:00Z; both within a day
      assert.equal(3 * HOUR + 30 * MIN, nl % DAY)
      assert.equal(9 * HOUR, nu % DAY)
      assert.truthy(nl > now and nl - now <= DAY)
      assert.truthy(nu > now and nu - now <= DAY)
      -- both fired at their due time, the task id carrying it
      local fired = out:match("fired ([^\n]*)")
      assert.truthy(fired:find("loc@" .. nl .. "=completed=" .. nl, 1, true), out)
      assert.truthy(fired:find("utc@" .. nu .. "=completed=" .. nu, 1, true), out)
    end)
  end)

  ------------------------------------------------------------- bad inputs
  describe("bad inputs", function()
    it("a bad cron expression raises EINVAL naming the column", function()
      local w = world()
      for _, expr in ipairs { "0 3 * * FOO", "61 * * * *", "* * * *", "*/0 * * * *", "* 5-1 * * *",
        "0 0 30 2 *", "@fortnightly", "", "* * * * * * *" } do
        local err = raises("EINVAL", w.schedule, w, "bad", "tick", nil, expr)
        assert.truthy(tostring(err.message):find("column", 1, true), "message: " .. tostring(err.message))
      end
      local err = raises("EINVAL", w.schedule, w, "bad", "tick", nil, "0 3 * * FOO")
      assert.truthy(err.message:find("column 9", 1, true), err.message)
      assert.is_nil(sched(w, "bad"))
      assert.equal(0, #w:getSchedules())
    end)

    it("an unknown activity name raises ENOTFOUND", function()
      local w = world()
      raises("ENOTFOUND", w.schedule, w, "x", "no_such_activity", nil, "* * * * *")
      raises("ENOTFOUND", w.scheduleOnce, w, "no_such_activity", nil, w:now() + SEC)
      assert.equal(0, #w:getSchedules())
    end)

    it("a function in the input raises EINVAL", function()
      local w = world()
      raises("EINVAL", w.schedule, w, "x", "tick", function() end, "* * * * *")
      raises("EINVAL", w.schedule, w, "x", "tick", { cb = function() end }, "* * * * *")
      raises("EINVAL", w.scheduleOnce, w, "tick", { nested = { f = print } }, w:now() + SEC)
      assert.equal(0, #w:getSchedules())
    end)

    it("bad options raise EINVAL", function()
      local w = world()
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { unknown = 1 })
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { catchUp = "sometimes" })
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { overlap = "x" })
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { timezone = "Mars" })
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { timezone = "utc" })
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { taskQueue = "nope" })
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { failureStrategy = "panic" })
      raises("EINVAL", w.schedule, w, "x", "tick", nil, "* * * * *", { priority = 1.5 })
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, w:now() + SEC, { catchUp = "sometimes" })
      assert.equal(0, #w:getSchedules())
    end)

    it("a non-string id raises Lua's standard argument error", function()
      local w = world()
      local err = raised(w.schedule, w, 42, "tick", nil, "* * * * *")
      assert.is_string(err)
      assert.truthy(err:find("bad argument #1 to 'schedule' (string expected", 1, true), err)
      err = raised(w.schedule, w, nil, "tick", nil, "* * * * *")
      assert.truthy(err:find("bad argument #1 to 'schedule'", 1, true), err)
      assert.equal(0, #w:getSchedules())
    end)

    it("schedule before start() raises EINVAL, after shutdown ESHUTDOWN", function()
      local w = world(nil, true)
      raises("EINVAL", w.schedule, w, "early", "tick", nil, "* * * * *")
      raises("EINVAL", w.scheduleOnce, w, "tick", nil, athena.now() + HOUR)
      w:start()
      w:schedule("ok", "tick", nil, "* * * * *")
      w:shutdown { timeout = 0 }
      raises("ESHUTDOWN", w.schedule, w, "late", "tick", nil, "* * * * *")
      raises("ESHUTDOWN", w.scheduleOnce, w, "tick", nil, athena.now() + HOUR)
    end)

    it("advance on a system-clock world raises EINVAL", function()
      local w = world { clock = "system" }
      raises("EINVAL", w.advance, w, 1000)
      raises("EINVAL", w.advance, w, 0)
    end)

    it("advance with a bad duration raises EINVAL", function()
      local w = world()
      local now = w:now()
      for _, d in ipairs { -1, 0.5, "1.5s", " 30s", "5000", "2w", "soon" } do
        raises("EINVAL", w.advance, w, d)
      end
      assert.equal(now, w:now())
    end)
  end)

  ------------------------------------------------- other manual-clock timers
  describe("the manual clock drives", function()
    it("world:now() only moves with advance", function()
      local w = world()
      local t0 = w:now()
      assert.truthy(math.abs(t0 - athena.now()) < HOUR)
      w:advance("1h")
      assert.equal(t0 + HOUR, w:now())
      w:advance(0)
      assert.equal(t0 + HOUR, w:now())
      w:advance("1d")
      assert.equal(t0 + HOUR + DAY, w:now())
    end)

    it("delays: execute with delay 1h completes only after advance(\"1h\")", function()
      local w = world()
      local t0 = w:now()
      local h = w:execute("tick", { d = 1 }, { delay = "1h" })
      w:advance(0)
      assert.equal("scheduled", h:status())
      w:advance("59m")
      assert.equal("scheduled", h:status())
      w:advance(MIN - 1)
      assert.equal("scheduled", h:status())
      w:advance(1)
      assert.equal("completed", h:status())
      local r = result(h)
      assert.equal(t0 + HOUR, r.now)
    end)

    it("a delay beyond 2^64 ns (~584.5 years, still a valid duration) does not wrap to now", function()
      local w = world()
      local h = w:execute("tick", nil, { delay = "18446744073710ms" })
      w:advance(5)
      assert.equal("scheduled", h:status())
    end)

    it("retries: a retry 30 s (+0-10 % jitter) after a failure waits for advance", function()
      local w = world()
      local t0 = w:now()
      local h = w:execute("flaky")
      w:advance(0)
      assert.equal("retrying", h:status())
      local q = h:query()
      assert.truthy(q.readyAt >= t0 + 30 * SEC and q.readyAt < t0 + 33 * SEC, "readyAt " .. tostring(q.readyAt))
      w:advance("29s")
      assert.equal("retrying", h:status())
      w:advance("4s")
      assert.equal("completed", h:status())
      local r = result(h)
      assert.equal(2, r.attempt)
      assert.equal(q.readyAt, r.now)
    end)

    it("timeouts: a task sleeping 10 min under timeout 1m fails ETIMEDOUT at advance(\"1m\")", function()
      local w = world()
      local h = w:execute("hang")
      w:advance(0)
      assert.equal("running", h:status())
      w:advance("59s")
      assert.equal("running", h:status())
      w:advance("1s")
      assert.equal("failed", h:status())
      local r, err = result(h)
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", err.code)
    end)

    it("athena.sleep inside a task ends when advance moves past it", function()
      local w = world()
      local h = w:execute("slow", { ms = 5000 })
      w:advance(0)
      assert.equal("running", h:status())
      w:advance(4999)
      assert.equal("running", h:status())
      w:advance(1)
      assert.equal("completed", h:status())
      local r = result(h)
      assert.equal(5000, r.t1 - r.t0)
    end)
  end)

  ------------------------------------------------------------ persistence
  describe("persistence (file)", function()
    local dir
    after_each(function()
      shutdown_all()
      rmdir(dir)
      dir = nil
    end)

    it("a new World on the same path lists the schedules and keeps firing", function()
      dir = tmpdir()
      local cfg = { persistence = "file", persistencePath = dir }
      local a = world(cfg)
      local t0 = a:now()
      a:schedule("keep", "tick", { k = "v", list = { 1, 2, 3 }, f = 1.5 }, "*/5 * * * * *",
        { catchUp = "none", overlap = "skip", timezone = "local" })
      a:schedule("held", "tick", nil, "0 0 * * *")
      a:pauseSchedule("held")
      local once = a:scheduleOnce("tick", { o = 1 }, t0 + HOUR)
      a:advance(20 * SEC)
      local before = {}
      for _, s in ipairs(a:getSchedules()) do before[s.id] = s end
      local fired = #marks(t0, t0 + 20 * SEC, 5 * SEC)
      assert.equal(fired, before.keep.totalExecutions)
      a:shutdown()

      local b = world(cfg)
      local after = {}
      for _, s in ipairs(b:getSchedules()) do after[s.id] = s end
      assert.same(before, after)
      assert.equal(3, #b:getSchedules())
      assert.equal("*/5 * * * * *", after.keep.cronExpression)
      assert.same({ k = "v", list = { 1, 2, 3 }, f = 1.5 }, after.keep.input)
      assert.equal(fired, after.keep.totalExecutions)
      assert.is_true(after.held.paused)
      assert.equal(t0 + HOUR, after[once].nextExecution)

      -- B's manual clock starts at the real time, behind A's advanced clock:
      -- the next occurrence is A's stored nextExecution.
      local next_due = after.keep.nextExecution
      assert.truthy(next_due > b:now())
      b:advance(next_due + 10 * SEC - b:now())
      local s = sched(b, "keep")
      assert.equal(fired + 3, s.totalExecutions)
      assert.equal(next_due + 10 * SEC, s.lastExecution)
      local got = tasks(b, "tick", "keep")
      assert.equal(fired + 3, #got)
      for i = 1, 3 do
        local t = got[fired + i]
        assert.equal("keep@" .. (next_due + (i - 1) * 5 * SEC), t.id)
        assert.equal("completed", t.status)
        assert.same({ k = "v", list = { 1, 2, 3 }, f = 1.5 }, t.result.input)
      end
      assert.equal(0, #tasks(b, "tick", "held"))
      -- the restored one-off fires at its time with its own id
      b:advance(t0 + HOUR - b:now())
      local o = b:query(once)
      assert.is_table(o)
      assert.equal("completed", o.status)
      assert.equal(t0 + HOUR, o.result.now)
      assert.is_nil(sched(b, once))
    end)

    it("catch-up at start(): all fires each missed occurrence, one the latest, none nothing", function()
      dir = tmpdir()
      local cfg = { persistence = "file", persistencePath = dir }
      local a = world(cfg)
      a:schedule("c_all", "tick", nil, "* * * * * *", { catchUp = "all" })
      a:schedule("c_one", "tick", nil, "* * * * * *", { catchUp = "one" })
      a:schedule("c_none", "tick", nil, "* * * * * *", { catchUp = "none" })
      local first = sched(a, "c_all").nextExecution
      assert.equal(first, sched(a, "c_one").nextExecution)
      assert.equal(first, sched(a, "c_none").nextExecution)
      a:shutdown()

      -- Simulated downtime: real time has to pass for occurrences to be
      -- missed (the one real wait in this spec).
      athena.sleep(3500)

      local b = world(cfg)
      local now = b:now()
      b:advance(0)
      assert.equal(now, b:now())
      local missed = {}
      for t = first, now, SEC do missed[#missed + 1] = t end
      assert.truthy(#missed >= 3, "expected at least 3 missed occurrences, got " .. #missed)
      local next_due = (now // SEC + 1) * SEC

      -- all: each missed occurrence, in order, with its own due time in the id
      local got = tasks(b, "tick", "c_all")
      assert.same(with_prefix("c_all", missed), ids(got))
      for i, t in ipairs(got) do
        assert.equal("completed", t.status)
        if i > 1 then assert.truthy(t.result.seq > got[i - 1].result.seq, "c_all ran out of order") end
      end
      local s = sched(b, "c_all")
      assert.equal(#missed, s.totalExecutions)
      assert.equal(missed[#missed], s.lastExecution)
      assert.equal(next_due, s.nextExecution)

      -- one: the latest only
      got = tasks(b, "tick", "c_one")
      assert.same({ "c_one@" .. missed[#missed] }, ids(got))
      s = sched(b, "c_one")
      assert.equal(1, s.totalExecutions)
      assert.equal(missed[#missed], s.lastExecution)
      assert.equal(next_due, s.nextExecution)

      -- none: nothing; the next after now
      assert.equal(0, #tasks(b, "tick", "c_none"))
      s = sched(b, "c_none")
      assert.equal(0, s.totalExecutions)
      assert.is_nil(s.lastExecution)
      assert.equal(next_due, s.nextExecution)

      -- and all three go on firing
      b:advance(next_due - now)
      assert.equal(#missed + 1, sched(b, "c_all").totalExecutions)
      assert.equal(2, sched(b, "c_one").totalExecutions)
      assert.equal(1, sched(b, "c_none").totalExecutions)
      assert.same({ "c_none@" .. next_due }, ids(tasks(b, "tick", "c_none")))
    end)

    it("catch-up all fires at most the latest 1000 missed occurrences", function()
      -- A long downtime without waiting: move the stored next occurrence
      -- 1500 s into the past with the sqlite3 CLI (schema-coupled on purpose:
      -- schedules.next_ms).
      dir = tmpdir()
      local cfg = { persistence = "file", persistencePath = dir }
      local a = world(cfg)
      a:schedule("cap", "tick", nil, "* * * * * *", { catchUp = "all" })
      local first = sched(a, "cap").nextExecution - 1500 * SEC
      a:shutdown()
      local ok = os.execute(string.format(
        "sqlite3 '%s/athena.db' \"UPDATE schedules SET next_ms = %d WHERE id = 'cap'\"", dir, first))
      assert.is_true(ok == true or ok == 0, "sqlite3 failed")

      local b = world(cfg)
      local now = b:now()
      b:advance(0)
      local missed = {}
      for t = first, now, SEC do missed[#missed + 1] = t end
      assert.truthy(#missed > 1000)
      local latest = {}
      for i = #missed - 999, #missed do latest[#latest + 1] = missed[i] end
      local got = tasks(b, "tick", "cap")
      assert.equal(1000, #got)
      assert.same(with_prefix("cap", latest), ids(got))
      local s = sched(b, "cap")
      assert.equal(1000, s.totalExecutions)
      assert.equal(missed[#missed], s.lastExecution)
      assert.equal((now // SEC + 1) * SEC, s.nextExecution)
    end)

    it("advance(0) right after start() includes every catch-up firing", function()
      -- advance fires what is due and waits for the work it started: the
      -- occurrences due at start() (4 x 1000 here) must all be counted when
      -- it returns, whichever thread fired them. Five rounds, each a fresh
      -- path, because a race shows only some of the time.
      for round = 1, 5 do
        dir = tmpdir()
        local cfg = { persistence = "file", persistencePath = dir }
        local a = world(cfg)
        for i = 1, 4 do a:schedule("r" .. i, "tick", nil, "* * * * * *", { catchUp = "all" }) end
        a:shutdown()
        local ok = os.execute(string.format(
          "sqlite3 '%s/athena.db' \"UPDATE schedules SET next_ms = next_ms - 1000000\"", dir))
        assert.is_true(ok == true or ok == 0, "sqlite3 failed")
        local b = world(cfg)
        local now = b:now()
        b:advance(0)
        local last = now // SEC * SEC
        for i = 1, 4 do
          local sc = sched(b, "r" .. i)
          assert.equal(1000, sc.totalExecutions,
            string.format("round %d: r%d totalExecutions right after advance(0)", round, i))
          assert.equal(last, sc.lastExecution)
          local q = b:query("r" .. i .. "@" .. last)
          assert.is_table(q, string.format("round %d: task r%d@%d missing", round, i, last))
          assert.equal("completed", q.status)
        end
        shutdown_all()
        rmdir(dir)
        dir = nil
      end
    end)
  end)
end)
