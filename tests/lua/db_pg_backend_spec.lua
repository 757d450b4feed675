-- The PostgreSQL backend (docs/backend-postgres.md, storage/store_pg.c):
-- worlds in this process and `athena` child processes (tests/dist/node.lua)
-- share one queue in a PostgreSQL schema. The server is the ctest fixture
-- "pg" (scripts/pg-test); no server means this spec fails, never skips.
local athena = require "athena"
local S = require "fixtures.support"

local BIN = assert(os.getenv("ATHENA_BIN"), "ATHENA_BIN must point at the athena binary")
local SRC = os.getenv("ATHENA_SRC") or "."
package.path = SRC .. "/tests/dist/?.lua;" .. package.path
local jobs = require "dist_jobs"

local URL = S.pg_database("athena_backend_spec")
local admin = assert(athena.db.open(URL))
local WAIT = 20000

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local schemas = 0
local function schema()
  schemas = schemas + 1
  return "bk" .. schemas
end

local worlds, pids, tmp = {}, {}, {}

local function world(sch, extra)
  local cfg = {
    backend = athena.PostgresBackend.new { url = URL, nodeId = "ctl-" .. sch .. "-" .. #worlds, schema = sch,
      pollInterval = extra and extra.pollInterval or 200, notify = not (extra and extra.pollOnly) },
    modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1,
    taskQueues = { dist = { workers = extra and extra.serve and 1 or 0, concurrency = 8 } },
    heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file", -- result() once committed
  }
  if extra and extra.closing then cfg.taskQueues["dist.closing"] = { workers = 0 } end
  local w = athena.World.new(cfg)
  w:register(table.unpack(jobs.all))
  if extra and extra.closing then w:register(jobs.closing) end
  w:start()
  worlds[#worlds + 1] = w
  return w
end

-- Starts tests/dist/node.lua as node `id`; returns its pid.
local function node(sch, id, env)
  local log = os.tmpname()
  tmp[#tmp + 1] = log
  local vars = { ATHENA_PG_URL = URL, DIST_SCHEMA = sch, DIST_NODE = id, DIST_LOG = log,
    LUA_PATH = SRC .. "/tests/dist/?.lua;" .. (os.getenv("LUA_PATH") or ";;") }
  for k, v in pairs(env or {}) do vars[k] = v end
  local e = {}
  for k, v in pairs(vars) do e[#e + 1] = k .. "=" .. q(v) end
  local cmd = ("env %s %s %s/tests/dist/node.lua >%s.out 2>%s.err </dev/null & echo $!"):format(
    table.concat(e, " "), q(BIN), q(SRC), q(log), q(log))
  local p = io.popen(cmd)
  local pid = tonumber(p:read("l"))
  p:close()
  pids[#pids + 1] = pid
  local ok, err = pcall(S.eventually, function() return (S.readfile(log .. ".out") or ""):find("started") end, WAIT,
    "node " .. id .. " to start")
  assert(ok, tostring(err) .. ": " .. tostring(S.readfile(log .. ".err")))
  return pid, vars.DIST_LOG .. "." .. id
end

local function alive(pid)
  local s = S.readfile("/proc/" .. pid .. "/stat")
  return s ~= nil and not s:match("^%d+ %b() [ZX]")
end

-- "start"/"end" lines of a node's activity log: { {what, id, attempt, node}, ... }
local function lines(path)
  local out = {}
  for l in ((S.readfile(path) or "")):gmatch("[^\n]+") do
    local what, id, attempt, n = l:match("^(%a+) (%S+) (%d+) (%S+)$")
    out[#out + 1] = { what = what, id = id, attempt = tonumber(attempt), node = n }
  end
  return out
end

-- Checks that each (task, attempt) started once across the logs; returns
-- the node of each "id#attempt" and the starts per node.
local function once_each(paths)
  local ran, per = {}, {}
  for _, path in ipairs(paths) do
    for _, l in ipairs(lines(path)) do
      if l.what == "start" then
        local k = l.id .. "#" .. l.attempt
        assert.is_nil(ran[k], "ran twice: " .. k)
        ran[k] = l.node
        per[l.node] = (per[l.node] or 0) + 1
      end
    end
  end
  return ran, per
end

local function scalar(sql, ...)
  local rows = assert(admin:query(sql, ...))
  local _, v = next(rows[1])
  return v
end

-- Each test stops its nodes and worlds: every one holds four connections.
after_each(function()
  for _, pid in ipairs(pids) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  for _, w in ipairs(worlds) do pcall(w.shutdown, w) end
  for _, p in ipairs(tmp) do os.execute("rm -f " .. q(p) .. " " .. q(p) .. ".*") end
  pids, worlds, tmp = {}, {}, {}
end)

teardown(function()
  admin:close()
end)

describe("athena.PostgresBackend", function()
  it("validates its options and the world's", function()
    S.raises("EINVAL", athena.PostgresBackend.new, { url = URL, nosuch = 1 })
    S.raises("EINVAL", athena.PostgresBackend.new, { url = "sqlite:x.db" })
    S.raises("EINVAL", athena.PostgresBackend.new, { url = URL, pollInterval = 0 })
    S.raises("EINVAL", athena.PostgresBackend.new, { url = URL, notify = "yes" })
    S.raises("EINVAL", athena.PostgresBackend.new, { url = URL, nodeId = "" })
    local b = athena.PostgresBackend.new { url = URL }
    local err = S.raises("EINVAL", athena.World.new, { backend = b, persistence = "memory" })
    assert.truthy(err.message:find("memory", 1, true))
    err = S.raises("EINVAL", athena.World.new, { backend = b, clock = "manual" })
    assert.truthy(err.message:find("manual", 1, true))
    -- a queue with no workers here is only for a PostgreSQL world
    S.raises("EINVAL", athena.World.new, { taskQueues = { dist = { workers = 0 } } })
  end)

  it("fails start() with ESTORE when the database cannot be reached, without the password", function()
    local password = assert(URL:match("^postgres://[^:]+:([^@]+)@"))
    local dead = URL:gsub("@127%.0%.0%.1:%d+/", "@127.0.0.1:1/")
    local w = athena.World.new { backend = athena.PostgresBackend.new { url = dead, schema = schema() },
      modules = { "dist_jobs" }, taskQueues = { dist = { workers = 1 } } }
    w:register(table.unpack(jobs.all))
    local err = S.raises("ESTORE", w.start, w)
    assert.is_nil(err.message:find(password, 1, true))
  end)

  it("registers workflows (they run on this backend: db_pg_workflows_spec)", function()
    local sch = schema()
    local w = athena.World.new { backend = athena.PostgresBackend.new { url = URL, schema = sch },
      modules = { "dist_jobs" }, taskQueues = { dist = { workers = 1 } } }
    w:register(table.unpack(jobs.all)) -- dist.saga among them: a workflow
    w:start()
    worlds[#worlds + 1] = w
    w:shutdown()
  end)

  it("runs tasks and retries through the database; the rows hold the truth", function()
    local sch = schema()
    local w = world(sch, { serve = true })
    local hs = w:executeMany("dist.noop", { 1, 2.0, "x", { a = -0.0 } })
    assert.equals(1, hs[1]:result())
    assert.equals(2.0, hs[2]:result())
    assert.equals("x", hs[3]:result())
    assert.same({ a = -0.0 }, hs[4]:result())
    local f = w:execute("dist.flaky", {})
    assert.equals(2, f:result(WAIT)) -- the retry was staged from the row's due_at
    assert.equals(5, scalar(("select count(*) as n from %s.tasks where status = 5"):format(sch)))
    assert.equals(2, scalar(("select attempt from %s.tasks where id = $1"):format(sch), f.id))
    assert.equals(0, scalar(("select count(*) as n from %s.ready"):format(sch)))
    assert.equals("2.0", scalar(("select input from %s.tasks where id = $1"):format(sch), hs[2].id))
    -- an explicit id is idempotent; another activity's id is refused
    local a = w:execute("dist.noop", 7, { id = "same" })
    local b = w:execute("dist.noop", 8, { id = "same" })
    assert.equals(7, a:result())
    assert.equals(7, b:result())
    local nodes = w:getNodes()
    assert.equals(1, #nodes)
    assert.is_true(nodes[1].alive)
    assert.is_true(nodes[1].leader)
    w:shutdown()
    assert.equals(0, scalar(("select count(*) as n from %s.tasks where lease is not null"):format(sch)))
  end)

  it("fails a task nobody claims at its scheduleToClose (the leader's sweep), from the row", function()
    local sch = schema()
    local w = world(sch, { closing = true })
    local h = w:execute("dist.closing", 1) -- no node serves dist.closing
    local ok, v, e = pcall(h.result, h, WAIT) -- raises, or nil, err under strategy "ignore"
    local err = ok and e or v
    assert.is_nil(ok and v or nil)
    assert.equals("ETIMEDOUT", err.code)
    assert.matches("scheduleToClose", err.message)
    assert.equals("failed", h:status())
    assert.equals(6, scalar(("select status from %s.tasks where id = $1"):format(sch), h.id))
    assert.equals(0, scalar(("select count(*) as n from %s.ready"):format(sch)))
  end)

  it("writes each node's own figures into its nodes row with its lease renewal: getNodes()[i].metrics", function()
    local sch = schema()
    local ctl = world(sch) -- serves nothing
    node(sch, "b", { DIST_CONC = "4", DIST_WORKERS = "1" })
    local hs = ctl:executeMany("dist.noop", { 1, 2, 3 })
    for _, h in ipairs(hs) do assert.is_nil(select(2, h:result(WAIT))) end
    assert.equals(2, (ctl:execute("dist.flaky", {}):result(WAIT)))
    local function by_node()
      local out = {}
      for _, n in ipairs(ctl:getNodes()) do out[n.nodeId] = n end
      return out
    end
    -- within a heartbeatInterval (500 ms here) of b's last end, read on another node
    local b = S.eventually(function()
      local n = by_node().b
      return n and n.metrics and n.metrics.tasks.completed == 4 and n
    end, WAIT, "b's row to count its 4 completions")
    local m = b.metrics
    assert.same({ queued = 0, running = 0, completed = 4, failed = 0, retried = 1, cancelled = 0, quarantined = 0 },
      m.tasks)
    assert.is_true(m.throughput.perMinute >= 4, tostring(m.throughput.perMinute))
    assert.equals(2, m.workers.total) -- the default queue's and dist's
    assert.equals("integer", math.type(m.at))
    assert.is_true(m.at <= b.beatAt + 1000 and m.at >= b.startedAt, m.at .. " " .. b.beatAt)
    assert.equals(0, m.dbRetries)
    -- the node that ran nothing says so
    local c = S.eventually(function()
      local n = by_node()["ctl-" .. sch .. "-0"]
      return n and n.metrics and n
    end, WAIT, "ctl's metrics")
    assert.equals(0, c.metrics.tasks.completed)
  end)

  it("shares one queue between processes: each (task, attempt) runs once, on both nodes", function()
    local sch = schema()
    local ctl = world(sch)
    local _, la = node(sch, "a")
    local _, lb = node(sch, "b")
    local inputs = {}
    for i = 1, 3000 do inputs[i] = i end
    local hs = ctl:executeMany("dist.noop", inputs)
    local fl = ctl:executeMany("dist.flaky", { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 })
    for i, h in ipairs(hs) do assert.equals(i, h:result(WAIT)) end
    for _, h in ipairs(fl) do assert.equals(2, h:result(WAIT)) end
    local _, per = once_each({ la, lb })
    per.a, per.b = per.a or 0, per.b or 0
    assert.equals(3000 + 20, per.a + per.b)
    assert.is_true(per.a > 0 and per.b > 0, ("a ran %d, b %d"):format(per.a, per.b))
    local names = {}
    for _, n in ipairs(ctl:getNodes()) do names[n.nodeId] = n.alive end
    assert.is_true(names.a and names.b)
  end)

  it("rescues a killed node's tasks (EWORKERLOST, retried) and returns results across nodes", function()
    local sch = schema()
    local ctl = world(sch) -- the first node: the leader
    local _, la = node(sch, "a", { DIST_CONC = "4" })
    local pb, lb = node(sch, "b", { DIST_CONC = "4" })
    local inputs = {}
    for i = 1, 24 do inputs[i] = { ms = 1500 } end
    local hs = ctl:executeMany("dist.sleep", inputs)
    S.eventually(function()
      local n = 0
      for _, l in ipairs(lines(lb)) do n = n + (l.what == "start" and 1 or 0) end
      return n >= 3
    end, WAIT, "node b to run tasks")
    os.execute("kill -9 " .. pb)
    S.eventually(function() return not alive(pb) end, WAIT, "node b to die")
    local started_b = {}
    for _, l in ipairs(lines(lb)) do
      if l.what == "start" then started_b[l.id] = true elseif l.what == "end" then started_b[l.id] = nil end
    end
    for _, h in ipairs(hs) do
      local r, e = h:result(WAIT)
      assert.is_nil(e)
      assert.is_true(r == "a" or r == "b")
    end
    local cut = 0
    for id in pairs(started_b) do
      cut = cut + 1
      local row = assert(admin:query(("select attempt, error, status from %s.tasks where id = $1"):format(sch), id))[1]
      assert.equals(5, row.status)
      assert.is_true(row.attempt >= 2) -- 2, unless a loaded machine fenced the other node too
      assert.truthy(row.error:find("EWORKERLOST", 1, true))
    end
    assert.is_true(cut >= 1)
    once_each({ la, lb })
  end)

  it("fences a paused node: its stale attempts never end, the rescue's outcomes stand", function()
    local sch = schema()
    local ctl = world(sch)
    local _, la = node(sch, "a", { DIST_CONC = "4", DIST_WORKERS = "1" })
    local pb, lb = node(sch, "b", { DIST_CONC = "4", DIST_WORKERS = "1" })
    local inputs = {}
    for i = 1, 8 do inputs[i] = { ms = 4000 } end
    local hs = ctl:executeMany("dist.sleep", inputs)
    S.eventually(function() return #lines(lb) >= 2 end, WAIT, "node b to run tasks")
    os.execute("kill -STOP " .. pb)
    -- paused past heartbeatTimeout (3 s): the leader rescues what b held
    S.eventually(function()
      return scalar(("select count(*) as n from %s.tasks where rescues > 0"):format(sch)) > 0
    end, WAIT, "b's tasks to be rescued")
    -- what b runs as it is paused (each had seconds left)
    local cut = {}
    for _, l in ipairs(lines(lb)) do
      if l.what == "start" then cut[l.id] = true elseif l.what == "end" then cut[l.id] = nil end
    end
    assert.is_not_nil(next(cut))
    os.execute("kill -CONT " .. pb)
    for _, h in ipairs(hs) do assert.is_nil(select(2, h:result(WAIT))) end
    for _, l in ipairs(lines(lb)) do -- b's stale attempts would be long over by now
      assert.is_false(cut[l.id] == true and l.attempt == 1 and l.what == "end", "b ended " .. l.id)
    end
    -- every rescued task's recorded outcome is its last attempt's (a later
    -- one than b's first), never b's discarded one
    local ran = once_each({ la, lb })
    local rescued = assert(admin:query(("select id, attempt, result from %s.tasks where rescues > 0"):format(sch)))
    assert.is_true(#rescued >= 1)
    for _, r in ipairs(rescued) do
      assert.is_true(r.attempt >= 2)
      assert.equals("b", ran[r.id .. "#1"])
      assert.equals('"' .. ran[r.id .. "#" .. r.attempt] .. '"', r.result)
    end
    -- b came back, noticed, and registered a new incarnation
    local err = S.readfile(lb:gsub("%.b$", "") .. ".err")
    S.eventually(function()
      err = S.readfile(lb:gsub("%.b$", "") .. ".err") or ""
      return err:find("registered again", 1, true) ~= nil
    end, WAIT, "b to register again")
    assert.truthy(err:find("lease lost", 1, true) or err:find("discarded", 1, true))
  end)

  it("a node whose lease expired discards its late outcome; its handle shows the rescued attempt's", function()
    local sch = schema()
    local w = world(sch, { serve = true }) -- also the leader: it rescues its own old incarnation
    local h = w:execute("dist.sleep", { ms = 1500 })
    S.eventually(function() return h:status() == "running" end, WAIT, "the task to run")
    assert(admin:exec(("update %s.nodes set expires_at = 0 where not leader"):format(sch)))
    local r, err = h:result(WAIT)
    assert.is_nil(err)
    assert.is_string(r)
    assert.equals(2, h:query().attempt) -- attempt 1 ended after the loss: discarded
    assert.equals(2, scalar(("select attempt from %s.tasks where id = $1"):format(sch), h.id))
    assert.equals(1, scalar(("select rescues from %s.tasks where id = $1"):format(sch), h.id))
  end)

  it("interrupts the running attempts of a node whose lease was lost, as a cancel does", function()
    local sch = schema()
    local ctl = world(sch) -- the leader
    local _, lb = node(sch, "b", { DIST_CONC = "4", DIST_WORKERS = "1" })
    local inputs = {}
    for i = 1, 4 do inputs[i] = { ms = 6000 } end
    local hs = ctl:executeMany("dist.sleep", inputs)
    S.eventually(function() return #lines(lb) >= 4 end, WAIT, "node b to run the tasks")
    -- b keeps running, but the database declares its lease lost (a partition
    -- would): its next renewal finds out
    assert(admin:exec(("update %s.nodes set expires_at = 0 where node_id = 'b'"):format(sch)))
    S.eventually(function()
      local n = 0
      for _, l in ipairs(lines(lb)) do n = n + ((l.what == "stop" and l.attempt == 1) and 1 or 0) end
      return n == 4
    end, 4000, "b to interrupt its four attempts (each had seconds left)")
    -- the rescue's attempt 2 runs (on b, registered again) and stands
    for _, h in ipairs(hs) do
      assert.equals("b", (h:result(WAIT)))
      assert.equals(2, h:query().attempt)
    end
    for _, l in ipairs(lines(lb)) do
      assert.is_false(l.what == "end" and l.attempt == 1, "attempt 1 ran to its end: " .. l.id)
    end
  end)

  it("keeps heartbeat details in the row: any node reads them, a retry elsewhere resumes from them", function()
    local sch = schema()
    local ctl = world(sch) -- the leader; serves nothing
    local pb, lb = node(sch, "b")
    local h = ctl:execute("dist.count", { n = 200, ms = 25 })
    -- b's checkpoints reach the row with its lease renewals (every 500 ms),
    -- while it runs, and the controller, which never ran the task, reads them
    local seen
    S.eventually(function()
      local q = ctl:query(h.id)
      seen = q.heartbeatDetails and q.heartbeatDetails.i
      return seen ~= nil and seen >= 10 and q.lastHeartbeat ~= nil and q.status == "running"
    end, WAIT, "b's checkpoints in the row")
    assert.is_true(seen < 200)
    os.execute("kill -9 " .. pb)
    S.eventually(function() return not alive(pb) end, WAIT, "node b to die")
    local row = assert(admin:query(("select hb from %s.tasks where id = $1"):format(sch), h.id))[1]
    local last = athena.json.decode(row.hb).i
    assert.is_true(last >= seen)
    local _, la = node(sch, "a") -- the retry runs here, after the rescue
    local r, err = h:result(WAIT)
    assert.is_nil(err)
    assert.equals("a", r.node)
    assert.equals(last, r.from) -- resumed from b's last written checkpoint
    assert.equals(2, h:query().attempt)
    assert.equals(200, h:query().heartbeatDetails.i)
    assert.equals(1, #lines(la) // 2) -- one start, one end: attempt 2
    assert.equals(2, lines(la)[1].attempt)
  end)

  it("a node restarted with the same nodeId rescues its previous run's tasks at once, fenced", function()
    local sch = schema()
    local ctl = world(sch) -- the leader: it would rescue them only when b's lease expires (60 s)
    local slow = { DIST_CONC = "2", DIST_WORKERS = "1", DIST_HB = "500", DIST_HBT = "60000" }
    local pb, lb = node(sch, "b", slow)
    local hs = ctl:executeMany("dist.sleep", { { ms = 30000 }, { ms = 30000 } })
    S.eventually(function() return #lines(lb) >= 2 end, WAIT, "node b to run both")
    os.execute("kill -9 " .. pb)
    S.eventually(function() return not alive(pb) end, WAIT, "node b to die")
    local old = assert(admin:query(("select incarnation from %s.nodes where node_id = 'b'"):format(sch)))[1].incarnation
    local _, lb2 = node(sch, "b", slow) -- the same nodeId: it takes over at start
    S.eventually(function()
      local starts = 0
      for _, l in ipairs(lines(lb2)) do starts = starts + ((l.what == "start" and l.attempt == 2) and 1 or 0) end
      return starts == 2
    end, 10000, "the restarted b to run both again as attempt 2")
    for _, h in ipairs(hs) do
      local row = assert(admin:query(("select attempt, rescues, error from %s.tasks where id = $1"):format(sch), h.id))[1]
      assert.equals(2, row.attempt)
      assert.equals(1, row.rescues)
      assert.truthy(row.error:find("EWORKERLOST", 1, true))
      assert.truthy(row.error:find("its node restarted", 1, true))
    end
    -- the previous incarnation is fenced: expired, so it can claim and renew no more
    assert.equals(0, scalar(("select count(*) as n from %s.nodes where incarnation = $1 and expires_at > 0"):format(sch), old))
    for _, n in ipairs(ctl:getNodes()) do
      if n.incarnation == old then assert.is_false(n.alive) end
    end
    for _, h in ipairs(hs) do assert.is_true(h:cancel()) end
  end)

  it("refuses a second live process with the same nodeId (EBUSY), even a stopped one's", function()
    local sch = schema()
    local pb, lb = node(sch, "b", { DIST_CONC = "2", DIST_WORKERS = "1" })
    local function second()
      local w = athena.World.new { backend = athena.PostgresBackend.new { url = URL, nodeId = "b", schema = sch },
        modules = { "dist_jobs" }, taskQueues = { dist = { workers = 1 } } }
      w:register(table.unpack(jobs.all))
      return S.raises("EBUSY", w.start, w)
    end
    local inc = scalar(("select incarnation from %s.nodes where node_id = 'b' and not leader"):format(sch))
    local err = second()
    assert.truthy(err.message:find("nodeId b is in use by another live process", 1, true), err.message)
    -- b was neither taken over nor fenced: one incarnation, the same, live
    local function b_rows()
      return assert(admin:query(("select incarnation, expires_at > %s.now_ms() as live from %s.nodes"
        .. " where node_id = 'b' and not leader"):format(sch, sch)))
    end
    assert.same({ { incarnation = inc, live = true } }, b_rows())
    os.execute("kill -STOP " .. pb) -- paused, not dead: its session (and lock) stay
    local ok, e2 = pcall(second)
    local taken = scalar(("select count(*) as n from %s.nodes where node_id = 'b' and expires_at = 0"):format(sch))
    os.execute("kill -CONT " .. pb)
    assert(ok, e2)
    assert.truthy(e2.message:find("nodeId b", 1, true))
    assert.equals(0, taken) -- not taken over (a take-over expires the rows to 0)
    local h = world(sch):execute("dist.noop", { n = 1 })
    assert.same({ n = 1 }, (h:result(WAIT)))
    assert.equals("b", lines(lb)[1].node)
  end)

  it("a node takes the lead at once when the leader resigns (NOTIFY athena_leader)", function()
    local sch = schema()
    local function member(id) -- tries the leader lock every 10 s (heartbeatInterval)
      local w = athena.World.new { backend = athena.PostgresBackend.new { url = URL, nodeId = id, schema = sch },
        modules = { "dist_jobs" }, taskQueues = { dist = { workers = 0 } },
        heartbeatInterval = 10000, heartbeatTimeout = 30000 }
      w:register(table.unpack(jobs.all))
      w:start()
      worlds[#worlds + 1] = w
      return w
    end
    local function leads(w, id)
      for _, n in ipairs(w:getNodes()) do
        if n.nodeId == id and n.alive and n.leader then return true end
      end
      return false
    end
    local a = member("lead-a")
    S.eventually(function() return leads(a, "lead-a") end, WAIT, "a to lead")
    local b = member("lead-b") -- its first try fails: its next one is 10 s later
    assert.is_false(leads(b, "lead-b"))
    a:shutdown() -- resigns: NOTIFY athena_leader
    S.eventually(function() return leads(b, "lead-b") end, 3000, "b to take the lead at once")
  end)

  it("cancels from another node and wakes result() on every node", function()
    local sch = schema()
    local ctl = world(sch)
    local other = world(sch)
    local _, la = node(sch, "a")
    local h = ctl:execute("dist.sleep", { ms = 20000 }, { id = "long-1" })
    S.eventually(function() return #lines(la) >= 1 end, WAIT, "the task to start on a")
    -- the executing world's handle reads the row: another node runs it
    assert.equals("running", h:status())
    assert.equals("running", ctl:query("long-1").status)
    assert.equals(1, ctl:query("long-1").attempt)
    local seen = other:execute("dist.sleep", { ms = 1 }, { id = "long-1" }) -- the same task
    assert.equals("running", other:query("long-1").status)
    local accepted, e = other:cancel("long-1") -- a leases it: a is told, and ends it
    assert.is_nil(e)
    assert.is_true(accepted, "the cancel was refused")
    local r, err = h:result(WAIT)
    assert.is_nil(r)
    assert.equals("ECANCELED", err.code)
    r, err = seen:result(WAIT)
    assert.equals("ECANCELED", err.code)
    assert.equals(7, scalar(("select status from %s.tasks where id = 'long-1'"):format(sch)))
    -- a queued task nobody leases is cancelled at once
    local idle = ctl:execute("dist.noop", 1, { delay = 60000 })
    assert.is_true(idle:cancel())
    assert.equals(7, scalar(("select status from %s.tasks where id = $1"):format(sch), idle.id))
    assert.equals("ECANCELED", select(2, idle:result(WAIT)).code)
  end)

  it("hears every end from another node without polling, even one heard before its own insert's answer", function()
    local sch = schema()
    local ctl = world(sch, { pollInterval = 600000 }) -- a missed notification would wait 10 min
    node(sch, "a")
    for i = 1, 300 do
      local r, err = ctl:execute("dist.noop", i):result(5000)
      assert.is_nil(err)
      assert.equals(i, r)
    end
  end)

  it("carries on when the database ends its sessions (a restart, an operator)", function()
    local sch = schema()
    local w = world(sch, { serve = true })
    assert.equals(1, w:execute("dist.noop", 1):result(WAIT))
    local n = admin:query("select count(pg_terminate_backend(pid)) as n from pg_stat_activity" ..
      " where datname = current_database() and pid <> pg_backend_pid() and backend_type = 'client backend'")[1].n
    assert.is_true(n >= 4) -- the world's four connections
    local h, err = w:execute("dist.noop", 2) -- the writer finds its connection gone: a new one
    assert.is_nil(err)
    assert.equals(2, h:result(WAIT))
    for i, x in ipairs(w:executeMany("dist.noop", { 1, 2, 3 })) do assert.equals(i, x:result(WAIT)) end
    assert.equals(1, #w:getNodes()) -- the reader too
    assert.equals(0, scalar(("select count(*) as n from %s.ready"):format(sch)))
  end)

  it("lists the cluster's tasks from the database: queryTasks and query on a node that holds none", function()
    local sch = schema()
    local a = world(sch, { serve = true })
    local b = world(sch) -- serves nothing: every task below is another node's
    local hs = a:executeMany("dist.noop", { 1, 2, 3, 4, 5 })
    for i, h in ipairs(hs) do assert.equals(i, h:result(WAIT)) end
    local f = a:execute("dist.flaky", {}, { id = "flaky-1" })
    assert.equals(2, f:result(WAIT))
    local long = a:execute("dist.sleep", { ms = 20000 }, { id = "long-q" })
    S.eventually(function() return a:query("long-q").status == "running" end, WAIT, "long-q to run")
    -- every state, newest first (createdAt descending, then id), as the rows hold them
    local all = b:queryTasks()
    assert.equals(7, #all)
    assert.equals("long-q", all[1].id)
    assert.equals("running", all[1].status)
    for i = 2, #all do
      local x, y = all[i - 1], all[i]
      assert.is_true(x.createdAt > y.createdAt or (x.createdAt == y.createdAt and x.id < y.id))
    end
    local done = b:queryTasks { status = "completed" }
    assert.equals(6, #done)
    local flaky = b:queryTasks { name = "dist.flaky" }
    assert.equals(1, #flaky)
    assert.equals("flaky-1", flaky[1].id)
    assert.equals(2, flaky[1].attempt)
    assert.equals(2, flaky[1].result)
    assert.equals(1, #b:queryTasks { status = { "running", "failed" } })
    -- limit / offset page through the same order
    local p1, p2 = b:queryTasks { limit = 3 }, b:queryTasks { limit = 3, offset = 3 }
    assert.equals(3, #p1)
    assert.equals(3, #p2)
    for i = 1, 3 do
      assert.equals(all[i].id, p1[i].id)
      assert.equals(all[i + 3].id, p2[i].id)
    end
    -- since / until bound createdAt, inclusive
    local t0 = all[#all].createdAt
    assert.equals(#all, #b:queryTasks { since = t0 })
    assert.equals(0, #b:queryTasks { ["until"] = t0 - 1 })
    assert.equals(1, #b:queryTasks { since = all[1].createdAt, name = "dist.sleep" })
    assert.equals(0, #b:queryTasks { name = "nosuch" })
    -- query(id) of another node's task reads its row
    assert.equals("running", b:query("long-q").status)
    assert.equals(5, b:query(hs[5].id).result)
    local none, err = b:query("nosuch")
    assert.is_nil(none)
    assert.equals("ENOTFOUND", err.code)
    -- the node running it lists it once, as it knows it (leased here: RAM is newer than the row)
    local running = a:queryTasks { status = "running" }
    assert.equals(1, #running)
    assert.equals("long-q", running[1].id)
    assert.equals(7, #a:queryTasks())
    -- a proxy this node holds (its own execute) is listed as its row says, once
    local mine = b:execute("dist.sleep", { ms = 20000 }, { id = "long-b" })
    S.eventually(function() return #b:queryTasks { status = "running", name = "dist.sleep" } == 2 end, WAIT,
      "long-b to run on a")
    local n = 0
    for _, x in ipairs(b:queryTasks()) do n = n + (x.id == "long-b" and 1 or 0) end
    assert.equals(1, n)
    -- bad filters raise EINVAL
    S.raises("EINVAL", b.queryTasks, b, { status = "nosuch" })
    S.raises("EINVAL", b.queryTasks, b, { limit = 0 })
    S.raises("EINVAL", b.queryTasks, b, { limit = 1001 })
    S.raises("EINVAL", b.queryTasks, b, { offset = -1 })
    S.raises("EINVAL", b.queryTasks, b, { since = "yesterday" })
    S.raises("EINVAL", b.queryTasks, b, { nosuch = 1 })
    assert.is_true(long:cancel())
    assert.is_true(mine:cancel())
  end)

  it("lists a task once while its insert is in flight (hybrid): RAM and the row merge", function()
    local sch = schema()
    local w = athena.World.new { backend = athena.PostgresBackend.new { url = URL, schema = sch },
      persistence = "hybrid", modules = { "dist_jobs" }, taskQueues = { dist = { workers = 0 } } }
    w:register(table.unpack(jobs.all))
    w:start()
    worlds[#worlds + 1] = w
    local ids, n = {}, 0
    for round = 1, 40 do -- each round races the inserts' answers with the read
      local h = w:execute("dist.noop", round)
      ids[h.id] = true
      n = n + 1
      local seen = {}
      for _, x in ipairs(w:queryTasks { limit = 1000 }) do
        assert.is_nil(seen[x.id], "listed twice: " .. x.id)
        seen[x.id] = true
      end
      for id in pairs(ids) do assert.is_true(seen[id], "not listed: " .. id) end
    end
    S.eventually(function() return scalar(("select count(*) as n from %s.tasks"):format(sch)) == n end, WAIT,
      "the inserts to commit")
    assert.equals(n, #w:queryTasks { limit = 1000, status = "pending" })
  end)

  it("keeps dead letters in the database: any node lists, requeues and purges them", function()
    local sch = schema()
    local a = world(sch, { serve = true })
    local b = world(sch)
    local flag = os.tmpname()
    os.remove(flag)
    tmp[#tmp + 1] = flag
    local d1 = a:execute("dist.dead", { flag = flag }, { id = "dead-1" })
    local d2 = a:execute("dist.dead", { flag = flag }, { id = "dead-2" })
    local r, e = d1:result(WAIT)
    assert.is_nil(r)
    assert.truthy(e)
    assert.equals("quarantined", d1:status())
    d2:result(WAIT)
    assert.equals(8, scalar(("select status from %s.tasks where id = 'dead-1'"):format(sch)))
    -- listed from the row on both nodes (a status filter is ignored)
    for _, w in ipairs({ a, b }) do
      local q = w:getQuarantined { status = "completed" }
      assert.equals(2, #q)
      assert.equals("dead-2", q[1].id)
      assert.equals("quarantined", q[2].status)
    end
    assert.equals(1, #b:getQuarantined { limit = 1, offset = 1 })
    -- wrong inputs
    local ok, err = b:requeue("nosuch")
    assert.is_nil(ok)
    assert.equals("ENOTFOUND", err.code)
    ok, err = b:purge("nosuch")
    assert.equals("ENOTFOUND", err.code)
    local live = a:execute("dist.noop", 1, { id = "live-1" })
    live:result(WAIT)
    ok, err = b:requeue("live-1")
    assert.equals("EINVAL", err.code)
    ok, err = b:purge("live-1")
    assert.equals("EINVAL", err.code)
    assert.equals(5, scalar(("select status from %s.tasks where id = 'live-1'"):format(sch)))
    -- requeue from the node that does not run it: pending, attempt 0, ready again; a runs it
    assert(io.open(flag, "w")):close()
    assert.is_true(b:requeue("dead-1"))
    S.eventually(function() return b:query("dead-1").status == "completed" end, WAIT, "dead-1 to run again")
    assert.equals("alive", b:query("dead-1").result)
    local row = admin:query(("select status, attempt, error from %s.tasks where id = 'dead-1'"):format(sch))[1]
    assert.equals(5, row.status)
    assert.equals(1, row.attempt)
    assert.equals("alive", a:query("dead-1").result)
    ok, err = a:requeue("dead-1") -- no longer a dead letter
    assert.equals("EINVAL", err.code)
    -- purge from the other node: the row goes, the id is free again
    assert.is_true(b:purge("dead-2"))
    assert.equals(0, scalar(("select count(*) as n from %s.tasks where id = 'dead-2'"):format(sch)))
    ok, err = a:query("dead-2")
    assert.equals("ENOTFOUND", err.code)
    ok, err = b:purge("dead-2")
    assert.equals("ENOTFOUND", err.code)
    assert.equals(0, #a:getQuarantined())
    assert.equals("alive", a:execute("dist.dead", { flag = flag }, { id = "dead-2" }):result(WAIT))
  end)

  it("counts the cluster from the database: getMetrics().cluster, /api/metrics and /metrics", function()
    local sch = schema()
    local a = world(sch) -- neither serves queue dist: what they execute stays queued
    local b = world(sch)
    a:executeMany("dist.noop", { 1, 2, 3, 4 })
    b:execute("dist.noop", 5)
    b:execute("dist.noop", 6, { delay = 600000 })
    local c = b:getMetrics().cluster
    assert.equals(5, c.tasks.queued)
    assert.equals(1, c.tasks.scheduled)
    assert.equals(0, c.tasks.running)
    assert.equals(5, c.queues.dist.depth)
    assert.equals(1, c.queues.dist.scheduled)
    assert.is_true(c.queues.dist.oldestAgeMs >= 0)
    assert.equals(2, c.nodes)
    assert.equals("ctl-" .. sch .. "-1", c.node)
    local names = { ["ctl-" .. sch .. "-0"] = true, ["ctl-" .. sch .. "-1"] = true }
    assert.is_true(names[c.leader], tostring(c.leader))
    -- the same on the other node; its own queue figures stay this node's
    local ca = a:getMetrics()
    assert.equals("ctl-" .. sch .. "-0", ca.cluster.node)
    assert.equals(0, ca.queues.default.depth)
    -- a node that serves the queue runs them: counted as running, then gone
    local s = world(sch, { serve = true })
    local long = s:execute("dist.sleep", { ms = 20000 })
    S.eventually(function()
      local x = b:getMetrics().cluster -- at most a second old
      return x.tasks.queued == 0 and x.tasks.running == 1 and x.nodes == 3
    end, WAIT, "the queue to drain and the sleeper to run")
    -- throughput and pickup latency from the rows, over the last 10 s: the
    -- five that waited for a node serving their queue ended
    local x = S.eventually(function()
      local m = b:getMetrics().cluster
      return m.throughput.completed == 5 and m
    end, WAIT, "the five to be counted")
    assert.equals(10000, x.throughput.windowMs)
    assert.equals(0.5, x.throughput.perSecond)
    assert.is_true(x.startLatencyMs.p50 >= 50, tostring(x.startLatencyMs.p50)) -- queued before s started
    assert.is_true(x.startLatencyMs.p99 >= x.startLatencyMs.p95 and x.startLatencyMs.p95 >= x.startLatencyMs.p50)
    -- the operations surface
    local url = b:serve { port = 0, metrics = true, dashboard = true }.url
    local res = assert(athena.http.request { url = url .. "/api/metrics" })
    assert.equals(200, res.status)
    local m = athena.json.decode(res.body)
    assert.equals(1, m.cluster.tasks.running)
    assert.equals(1, m.cluster.tasks.scheduled)
    res = assert(athena.http.request { url = url .. "/metrics" })
    assert.equals(200, res.status)
    assert.matches('athena_node_info{node="ctl%-' .. sch .. '%-1"} 1', res.body)
    assert.matches('athena_cluster_tasks{state="running"} 1', res.body)
    assert.matches('athena_cluster_tasks{state="scheduled"} 1', res.body)
    assert.matches('athena_cluster_queue_scheduled{queue="dist"} 1', res.body)
    assert.matches("athena_cluster_nodes 3", res.body)
    assert.matches("\nathena_cluster_completed_per_second 0%.5\n", res.body)
    assert.matches('\nathena_cluster_start_latency_seconds{quantile="0.99"} %d', res.body)
    -- this node's own series carry its node label; the cluster's do not
    local node = 'node="ctl%-' .. sch .. '%-1"'
    assert.matches("\nathena_uptime_seconds{" .. node .. "} %d", res.body)
    assert.matches('\nathena_tasks{' .. node .. ',state="queued"} %d', res.body)
    assert.matches('\nathena_queue_depth{' .. node .. ',queue="default"} 0\n', res.body)
    for line in res.body:gmatch("[^\n]+") do
      if not line:find("^#") and not line:find("^athena_cluster_") then
        assert.truthy(line:find(node), line)
      end
    end
    res = assert(athena.http.request { url = url .. "/api/nodes" })
    assert.equals(200, res.status)
    local ns = athena.json.decode(res.body)
    assert.equals(3, #ns)
    assert.equals(#b:getNodes(), #ns)
    res = assert(athena.http.request { url = url .. "/api/tasks?status=running" })
    assert.equals(200, res.status)
    local ts = athena.json.decode(res.body)
    assert.equals(1, #ts)
    assert.equals(long.id, ts[1].id)
    assert.is_true(long:cancel())
    -- a node id cannot forge exposition lines: label values are escaped
    local evil = athena.World.new { backend = athena.PostgresBackend.new { url = URL, schema = sch,
      nodeId = 'e"} 1\nathena_forged 1\\' }, taskQueues = { dist = { workers = 0 } } }
    evil:start()
    worlds[#worlds + 1] = evil
    res = assert(athena.http.request { url = evil:serve { port = 0, metrics = true }.url .. "/metrics" })
    assert.equals(200, res.status)
    assert.truthy(res.body:find('athena_node_info{node="e\\"} 1\\nathena_forged 1\\\\"} 1\n', 1, true))
    assert.is_nil(res.body:find("\nathena_forged", 1, true))
    -- without the backend there is no cluster
    local plain = athena.World.new { persistence = "memory" }
    plain:start()
    assert.is_nil(plain:getMetrics().cluster)
    res = assert(athena.http.request { url = plain:serve { port = 0, dashboard = true }.url .. "/api/nodes" })
    assert.equals(404, res.status)
    plain:shutdown()
  end)

  it("counts its transactions run again after a deadlock: getMetrics().db.retries, athena_db_retries_total", function()
    local sch = schema()
    -- the world's sessions check for a deadlock 3 s into a wait (B's, 60 s):
    -- its check then runs after B waits too (B asks at once, below), so the
    -- world is the one rolled back (PostgreSQL checks once per wait)
    local w = athena.World.new {
      backend = athena.PostgresBackend.new { url = URL .. "?options=-c%20deadlock_timeout%3D3s", nodeId = "dl-" .. sch,
        schema = sch, pollInterval = 200 },
      modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1, taskQueues = { dist = { workers = 1, concurrency = 8 } },
      heartbeatInterval = 1000, heartbeatTimeout = 60000, -- its backend thread waits on locks here: no fencing
      persistence = "file",
    }
    w:register(table.unpack(jobs.all))
    w:register(jobs.gate)
    w:start()
    worlds[#worlds + 1] = w
    assert.equals(0, w:getMetrics().db.retries)
    -- t0, t1 and t2 each end when the test opens its gate (a file): in the
    -- order below, whatever the machine's load
    local gates = {}
    for i = 1, 3 do
      gates[i] = { path = os.tmpname() }
      os.remove(gates[i].path)
      tmp[#tmp + 1] = gates[i].path
    end
    local function open_gate(i) assert(io.open(gates[i].path, "w")):close() end
    local hs = w:executeMany("dist.gate", gates)
    local rows = {}
    for i, h in ipairs(hs) do
      rows[i] = ("select 1 from %s.tasks where id = '%s' for update"):format(sch, h.id)
    end
    S.eventually(function() return hs[1]:status() == "running" and hs[2]:status() == "running"
      and hs[3]:status() == "running" end, WAIT, "the three to run")
    -- A holds t0's row, B t2's
    local a, b = assert(athena.db.open(URL)), assert(athena.db.open(URL))
    assert(b:exec("set deadlock_timeout = '60s'"))
    local function pid(c) return assert(c:query("select pg_backend_pid() as pid"))[1].pid end
    local pa, pb = pid(a), pid(b)
    assert(a:exec("begin")); assert(a:query(rows[1]))
    assert(b:exec("begin")); assert(b:query(rows[3]))
    -- the session of the world's cycle that waits for `holder` (its pid)
    local function world_waits_for(holder)
      return scalar(("select count(*) as n from pg_stat_activity where wait_event_type = 'Lock'"
        .. " and datname = current_database() and %d = any(pg_blocking_pids(pid))"):format(holder)) == 1
    end
    -- t0 ends: its finish waits for A; t1, then t2, end meanwhile (the next
    -- cycle finishes both, t1 first)
    open_gate(1)
    S.eventually(function() return world_waits_for(pa) end, WAIT, "t0's finish to wait for A")
    open_gate(2)
    S.eventually(function() return hs[2]:status() == "completed" end, WAIT, "t1 to end")
    open_gate(3)
    S.eventually(function() return hs[3]:status() == "completed" end, WAIT, "t2 to end")
    assert(a:exec("commit")) -- the next cycle finishes t1 (locked) and waits for t2 (B)
    S.eventually(function() return world_waits_for(pb) end, WAIT, "the cycle to wait for t2's row (B)")
    -- B now wants t1, which the waiting cycle holds: a deadlock; the cycle's
    -- check runs first, so it is the one rolled back (40P01), and runs again
    assert(b:exec(("update %s.tasks set priority = 1 where id = '%s'"):format(sch, hs[2].id)))
    assert(b:exec("commit"))
    a:close(); b:close()
    for _, h in ipairs(hs) do assert.is_nil(select(2, h:result(WAIT))) end
    local n = w:getMetrics().db.retries
    assert.is_true(n >= 1, tostring(n))
    local url = w:serve { port = 0, metrics = true }.url
    local res = assert(athena.http.request { url = url .. "/metrics" })
    assert.matches("# TYPE athena_db_retries_total counter\n", res.body)
    local got = tonumber(res.body:match('\nathena_db_retries_total{node="dl%-' .. sch .. '"} (%d+)\n'))
    assert.is_true(got ~= nil and got >= n, res.body)
  end)

  it("works by polling alone (notify = false)", function()
    local sch = schema()
    local ctl = world(sch, { pollOnly = true })
    node(sch, "a", { DIST_NOTIFY = "0" })
    local hs = ctl:executeMany("dist.noop", { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 })
    for i, h in ipairs(hs) do assert.equals(i, h:result(WAIT)) end
  end)
end)
