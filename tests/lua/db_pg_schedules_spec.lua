-- Schedules on the PostgreSQL backend (docs/backend-postgres.md "Schedules",
-- storage/sched_pg.c): rows in the schema that any world changes and reads,
-- fired by the leader only, one task per occurrence. Worlds in this process
-- are the nodes; each test has its own schema. The server is the ctest
-- fixture "pg"; no server means this spec fails, never skips.
local athena = require "athena"
local S = require "fixtures.support"

local SRC = os.getenv("ATHENA_SRC") or "."
package.path = SRC .. "/tests/dist/?.lua;" .. package.path
local jobs = require "dist_jobs"

local URL = S.pg_database("athena_sched_spec")
local admin = assert(athena.db.open(URL))
local WAIT = 20000

local schemas = 0
local function schema()
  schemas = schemas + 1
  return "sc" .. schemas
end

local worlds = {}

-- A node on schema sch; serve = true: it runs the tasks of queue "dist".
local function world(sch, serve)
  local w = athena.World.new {
    backend = athena.PostgresBackend.new { url = URL, nodeId = "n" .. #worlds, schema = sch, pollInterval = 200 },
    modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1,
    taskQueues = { dist = { workers = serve and 1 or 0, concurrency = 8 } },
    heartbeatInterval = 300, heartbeatTimeout = 3000,
  }
  w:register(table.unpack(jobs.all))
  w:start()
  worlds[#worlds + 1] = w
  return w
end

local function scalar(sql, ...)
  local rows = assert(admin:query(sql, ...))
  local _, v = next(rows[1])
  return v
end

local function dbnow(sch)
  return scalar(("select %s.now_ms() as t"):format(sch))
end

-- The occurrence times (ms) of schedule id's tasks, ascending.
local function fired(sch, id)
  local rows = assert(admin:query(("select id from %s.tasks where id like $1 order by id"):format(sch), id .. "@%"))
  local out = {}
  for _, r in ipairs(rows) do out[#out + 1] = tonumber(r.id:match("@(%d+)$")) end
  table.sort(out)
  return out
end

local function by_id(w, id)
  for _, s in ipairs(w:getSchedules()) do
    if s.id == id then return s end
  end
end

after_each(function()
  for _, w in ipairs(worlds) do pcall(w.shutdown, w) end
  worlds = {}
end)

teardown(function()
  admin:close()
end)

describe("schedules on the PostgreSQL backend", function()
  it("validates as a local world does", function()
    local sch = schema()
    local w = athena.World.new { backend = athena.PostgresBackend.new { url = URL, schema = sch },
      modules = { "dist_jobs" }, taskQueues = { dist = { workers = 0 } } }
    w:register(table.unpack(jobs.all))
    local err = S.raises("EINVAL", w.schedule, w, "early", "dist.noop", {}, "* * * * *")
    assert.truthy(err.message:find("before start", 1, true))
    w:start()
    worlds[#worlds + 1] = w
    S.raises("ENOTFOUND", w.schedule, w, "a", "no.such", {}, "* * * * *")
    err = S.raises("EINVAL", w.schedule, w, "a", "dist.noop", {}, "0 3 * * FOO")
    assert.equals('invalid cron expression "0 3 * * FOO": unknown day-of-week name FOO at column 9', err.message)
    S.raises("EINVAL", w.schedule, w, "a", "dist.noop", {}, "* * * * *", { taskQueue = "nope" })
    S.raises("EINVAL", w.schedule, w, "a", "dist.noop", function() end, "* * * * *")
    S.raises("EINVAL", w.schedule, w, "a@b", "dist.noop", {}, "* * * * *")
    S.raises("ENOTFOUND", w.scheduleOnce, w, "no.such", {}, 1)
    S.raises("ENOTFOUND", w.pauseSchedule, w, "a")
    S.raises("ENOTFOUND", w.resumeSchedule, w, "a")
    S.raises("ENOTFOUND", w.deleteSchedule, w, "a")
    assert.same({}, w:getSchedules())
    assert.equals(0, scalar(("select count(*) as n from %s.schedules"):format(sch)))
  end)

  it("keeps schedules in the database: created, changed and read from two nodes", function()
    local sch = schema()
    local a, b = world(sch), world(sch)
    local before = dbnow(sch)
    assert.equals("daily", a:schedule("daily", "dist.noop", { x = 2.0 }, "30 2 * * *",
      { catchUp = "all", overlap = "skip", priority = 3 }))
    local s = by_id(b, "daily")
    assert.equals("dist.noop", s.name)
    assert.same({ x = 2.0 }, s.input)
    assert.equals("30 2 * * *", s.cronExpression)
    assert.equals("UTC", s.timezone)
    assert.equals("all", s.catchUp)
    assert.equals("skip", s.overlap)
    assert.is_false(s.paused)
    assert.equals(0, s.totalExecutions)
    assert.is_nil(s.lastExecution)
    assert.truthy(s.nextExecution > before and s.nextExecution % 86400000 == 9000000)
    assert.equals('{"x":2.0}', scalar(("select input from %s.schedules"):format(sch)))
    -- the same definition from the other node leaves the row alone
    local stamp = scalar(("select updated_at from %s.schedules"):format(sch))
    b:schedule("daily", "dist.noop", { x = 2.0 }, "30 2 * * *", { catchUp = "all", overlap = "skip", priority = 3 })
    assert.equals(stamp, scalar(("select updated_at from %s.schedules"):format(sch)))
    -- pause on one node, the other sees it; resume; a changed definition replaces it
    assert.is_true(b:pauseSchedule("daily"))
    s = by_id(a, "daily")
    assert.is_true(s.paused)
    assert.is_nil(s.nextExecution)
    assert.is_true(b:pauseSchedule("daily")) -- paused already: nothing to do
    assert.is_true(a:resumeSchedule("daily"))
    assert.is_false(by_id(b, "daily").paused)
    b:schedule("daily", "dist.noop", {}, "0 * * * *")
    s = by_id(a, "daily")
    assert.equals("0 * * * *", s.cronExpression)
    assert.equals("one", s.catchUp)
    assert.equals(0, s.nextExecution % 3600000)
    local once = a:scheduleOnce("dist.noop", 1, dbnow(sch) + 3600000)
    assert.truthy(once:match("^once%-%x+%-"))
    local all = b:getSchedules()
    assert.equals(2, #all)
    assert.equals("daily", all[1].id) -- by id
    assert.equals(once, all[2].id)
    assert.is_nil(all[2].cronExpression)
    assert.is_true(b:deleteSchedule("daily"))
    S.raises("ENOTFOUND", a.deleteSchedule, a, "daily")
    assert.equals(1, #a:getSchedules())
  end)

  it("fires a one-off once, under its own id, and drops it", function()
    local sch = schema()
    local a, b = world(sch, true), world(sch, true)
    local at = dbnow(sch) + 300
    local id = b:scheduleOnce("dist.noop", { v = 42 }, at)
    S.eventually(function()
      return scalar(("select count(*) as n from %s.tasks where id = $1 and status = 5"):format(sch), id) == 1
    end, WAIT, "the one-off's task to complete")
    assert.equals(1, scalar(("select count(*) as n from %s.tasks"):format(sch)))
    assert.equals(1, scalar(("select attempt from %s.tasks where id = $1"):format(sch), id))
    assert.truthy(scalar(("select created_at from %s.tasks where id = $1"):format(sch), id) >= at)
    assert.equals(0, scalar(("select count(*) as n from %s.schedules"):format(sch)))
    assert.same({}, a:getSchedules())
    assert.same({ v = 42 }, a:query(id).result)
    -- a past time fires at once
    local past = a:scheduleOnce("dist.noop", 7, 1000)
    S.eventually(function()
      return scalar(("select count(*) as n from %s.tasks where id = $1 and status = 5"):format(sch), past) == 1
    end, WAIT, "the past one-off's task to complete")
  end)

  it("fires a cron every second once per occurrence; pause stops it, resume skips what passed", function()
    local sch = schema()
    local a, b = world(sch, true), world(sch, true)
    a:schedule("tick", "dist.noop", {}, "* * * * * *")
    S.eventually(function() return #fired(sch, "tick") >= 3 end, WAIT, "three ticks")
    -- consecutive seconds, none early, counted
    local ts = fired(sch, "tick")
    for i = 2, #ts do assert.equals(ts[i - 1] + 1000, ts[i]) end
    for _, t in ipairs(ts) do
      assert.truthy(scalar(("select created_at from %s.tasks where id = $1"):format(sch), "tick@" .. t) >= t)
    end
    assert.is_true(b:pauseSchedule("tick"))
    local n = #fired(sch, "tick")
    assert.equals(n, by_id(a, "tick").totalExecutions)
    -- another schedule firing twice shows time passed with a live leader
    b:schedule("tock", "dist.noop", {}, "* * * * * *")
    S.eventually(function() return #fired(sch, "tock") >= 2 end, WAIT, "two tocks")
    assert.equals(n, #fired(sch, "tick"))
    local resumed = dbnow(sch)
    assert.is_true(a:resumeSchedule("tick"))
    S.eventually(function() return #fired(sch, "tick") > n end, WAIT, "a tick after resume")
    ts = fired(sch, "tick")
    assert.truthy(ts[n + 1] > resumed) -- the paused seconds were skipped
    S.eventually(function()
      return scalar(("select count(*) as n from %s.tasks where status < 5"):format(sch)) == 0
    end, WAIT, "every fired task to complete")
  end)

  it("skips an occurrence while the last task runs (overlap = skip)", function()
    local sch = schema()
    local a = world(sch, true)
    a:schedule("slow", "dist.sleep", { ms = 2500 }, "* * * * * *", { overlap = "skip" })
    S.eventually(function()
      local s = by_id(a, "slow")
      return s.skippedExecutions >= 2 and s.totalExecutions >= 1
    end, WAIT, "skipped occurrences")
    -- never two of its tasks running at once
    assert.truthy(scalar(("select count(*) as n from %s.tasks where status < 5"):format(sch)) <= 1)
  end)

  it("carries on when the database ends its sessions: the calls reconnect, the leader fires again", function()
    local sch = schema()
    local w = world(sch, true)
    w:schedule("s", "dist.noop", {}, "0 0 1 1 *")
    local n = admin:query("select count(pg_terminate_backend(pid)) as n from pg_stat_activity" ..
      " where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'")[1].n
    assert.is_true(n >= 4) -- the world's four connections
    assert.equals(1, #w:getSchedules()) -- the reader finds its connection gone: a new one
    assert.is_true(w:pauseSchedule("s"))
    local id = w:scheduleOnce("dist.noop", 5, dbnow(sch))
    S.eventually(function()
      return scalar(("select count(*) as n from %s.tasks where id = $1 and status = 5"):format(sch), id) == 1
    end, WAIT, "the one-off, fired by the leader on a new session")
  end)

  it("catches up on taking the lead: none, one, all", function()
    local sch = schema()
    local a = world(sch)
    for _, c in ipairs { "none", "one", "all" } do
      a:schedule(c, "dist.noop", {}, "* * * * * *", { catchUp = c })
    end
    a:shutdown() -- no leader now
    -- rewind each schedule as if the leader had died 5 s ago
    local base = (dbnow(sch) // 1000) * 1000 - 5000
    assert(admin:exec(("delete from %s.ready"):format(sch)))
    assert(admin:exec(("delete from %s.tasks"):format(sch)))
    assert(admin:exec(("update %s.schedules set next_ms = %d"):format(sch, base)))
    local b = world(sch)
    S.eventually(function()
      return #fired(sch, "one") >= 1 and #fired(sch, "all") >= 6 and
        scalar(("select next_ms from %s.schedules where id = 'none'"):format(sch)) > base
    end, WAIT, "the new leader's catch-up")
    local function has(list, t)
      for _, x in ipairs(list) do if x == t then return true end end
      return false
    end
    local all, one, none = fired(sch, "all"), fired(sch, "one"), fired(sch, "none")
    for t = base, base + 5000, 1000 do
      assert.truthy(has(all, t), "all: missing " .. t)
      assert.is_false(has(none, t), "none fired " .. t)
    end
    for t = base, base + 4000, 1000 do assert.is_false(has(one, t), "one fired " .. t) end
    assert.truthy(one[1] >= base + 5000) -- only the latest missed one
    assert.truthy(by_id(b, "all").totalExecutions >= 6)
    -- the catch-up pass fired all of them (both schedules, every missed
    -- second) in one transaction: the rows share the inserting xid
    assert.equals(1, scalar(("select count(distinct xmin::text) as n from %s.tasks"
      .. " where id in ('all@%d', 'all@%d', 'all@%d', 'one@%d')"):format(sch, base, base + 1000, base + 5000,
        one[1])))
  end)
end)
