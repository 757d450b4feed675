-- Workers (SEMANTICS §12): autoscaling of the default pool (§12.2) and the
-- heartbeat monitor that declares silent workers lost (§12.3).
--
-- The autoscaler decides every scaleInterval with no event to wait on, so
-- these tests poll getWorkers()/getMetrics() every 20 ms under a deadline.
local athena = require "athena"
local S = require "fixtures.support"
local J = require "fixtures.tele_jobs"

local WAIT = 5000

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function touch(path)
  local f = assert(io.open(path, "wb"))
  f:write("x")
  f:close()
end

local dirs = {}
local function tmpdir()
  local p = io.popen("mktemp -d /tmp/athena-scale-XXXXXX")
  local d = p:read("l")
  p:close()
  dirs[#dirs + 1] = d
  return d
end

local wait_until = S.eventually

local result = S.result

local open = {}
local function world(cfg)
  local c = { persistence = "memory", modules = { "fixtures.tele_jobs" } }
  for k, v in pairs(cfg or {}) do c[k] = v end
  local w = athena.World.new(c)
  open[#open + 1] = w
  w:register(J.all())
  w:start()
  return w
end

local function num(id)
  return tonumber(id:match("^worker%-(%d+)$"))
end

-- ids of the listed workers, in list order; and a set of them
local function ids(w)
  local l, set = {}, {}
  for i, wk in ipairs(w:getWorkers()) do
    l[i] = wk.id
    set[wk.id] = wk
  end
  return l, set
end

local receivers = {}

after_each(function()
  for i = #receivers, 1, -1 do
    if receivers[i] then os.execute("kill " .. receivers[i] .. " 2>/dev/null") end
    receivers[i] = nil
  end
  for i = #open, 1, -1 do
    local w = open[i]
    open[i] = nil
    pcall(w.shutdown, w, { timeout = 100 })
  end
  for i = #dirs, 1, -1 do
    if dirs[i]:match("^/tmp/athena%-scale%-") then os.execute("rm -rf " .. q(dirs[i])) end
    dirs[i] = nil
  end
end)

describe("autoscaling (default pool)", function()
  it("grows to maxWorkers under load, shrinks back to minWorkers when idle, never below", function()
    local w = world { minWorkers = 1, maxWorkers = 4, scaleInterval = 100 }
    assert.equals(1, #w:getWorkers())
    local first = w:getWorkers()[1].id
    local hs = {}
    for i = 1, 20 do hs[i] = w:execute("tele.nap", { ms = 200 }) end
    local maxSeen = 0
    wait_until(function()
      local n = #w:getWorkers()
      assert.is_true(n <= 4, "more than maxWorkers: " .. n)
      maxSeen = math.max(maxSeen, n)
      return n == 4
    end, 3000, "the pool to grow to 4")
    local m = w:getMetrics()
    assert.equals(4, m.workers.total)
    assert.equals(4, m.workers.idle + m.workers.busy)
    local grown = ids(w)
    for _, id in ipairs(grown) do assert.matches("^worker%-%d+$", id) end
    -- the work spreads over the new workers
    local byWorker = {}
    for i = 1, 20 do
      result(hs[i])
      local wid = hs[i]:query().workerId
      byWorker[wid] = (byWorker[wid] or 0) + 1
    end
    local used = 0
    for _ in pairs(byWorker) do used = used + 1 end
    assert.is_true(used >= 3, "tasks ran on " .. used .. " workers")
    -- idle: back to 1, newest retired first, so the first worker stays
    local seen = {}
    wait_until(function()
      local l = ids(w)
      for _, id in ipairs(l) do seen[id] = true end
      assert.is_true(#l >= 1, "below minWorkers")
      return #l == 1
    end, 3000, "the pool to shrink to 1")
    local l = ids(w)
    assert.same({ first }, l)
    assert.equals(1, w:getMetrics().workers.total)
    -- retired workers left the list, and it stays at minWorkers
    local t1 = athena.now() + 500
    while athena.now() < t1 do
      local ll = ids(w)
      assert.same({ first }, ll)
      athena.sleep(25)
    end
    local m2 = w:getMetrics()
    assert.equals(1, m2.workers.total)
    assert.equals(1, m2.workers.idle)
  end)

  it("starts a worker off the engine loop: timers fire while its entry script loads", function()
    -- Every worker state of this world takes 2 s to load. worker-1 has 5 slots; 4 long naps
    -- make the load 0.8, so the autoscaler adds worker-2, which loads for 2 s.
    local w = athena.World.new { persistence = "memory", modules = { "fixtures.slow_jobs" },
      minWorkers = 1, maxWorkers = 3, scaleInterval = 50,
      taskQueues = { default = { concurrency = 5 } } }
    open[#open + 1] = w
    local SJ = require "fixtures.slow_jobs"
    w:register(SJ.all())
    w:start()
    for _ = 1, 4 do w:execute("slow.nap", { ms = 10000 }) end
    wait_until(function() return #w:getWorkers() == 2 end, WAIT, "the autoscaler to add worker-2")
    -- A delayed task, due long before worker-2 has loaded, runs in worker-1's free slot. Before
    -- workers started off the engine loop, the engine waited for worker-2's load, and the
    -- task's timer could only fire after it.
    result(w:execute("slow.now", {}, { delay = 100 }))
    local wk2 = w:getWorkers()[2]
    assert.equals("worker-2", wk2.id)
    assert.equals("starting", wk2.status)
    -- and while it loads, the autoscaler adds no third worker (it waits for the new one)
    assert.equals(2, #w:getWorkers())
    wait_until(function() return w:getWorkers()[2].status == "idle" end, WAIT, "worker-2 to serve")
  end)

  it("reaps a worker whose Lua state fails to load, logs why, and scales again later", function()
    local dir = tmpdir()
    local mod = assert(io.open(dir .. "/failload.lua", "w"))
    mod:write(([[
local athena = require "athena"
if athena.isWorker() then
  local f = io.open(%q)
  if f then f:close(); error("failload: this state refuses to load") end
end
return { nap = athena.activity("fl.nap", function(_, input) athena.sleep(input.ms) return true end) }
]]):format(dir .. "/fail"))
    mod:close()
    local w = athena.World.new { persistence = "memory", modules = { "failload" },
      minWorkers = 1, maxWorkers = 2, scaleInterval = 50, log = { file = dir .. "/log" } }
    open[#open + 1] = w
    local saved = package.path
    package.path = dir .. "/?.lua;" .. package.path -- workers take the path at start()
    local ok, err = pcall(function()
      w:register(require("failload").nap)
      w:start()
    end)
    package.path = saved
    assert(ok, err)
    touch(dir .. "/fail")
    local long = w:execute("fl.nap", { ms = 10000 }) -- load 1: the autoscaler adds a worker
    wait_until(function()
      local text = S.readfile(dir .. "/log") or ""
      return text:find("could not start worker%-2: .*failload: this state refuses to load")
    end, WAIT, "the failed start to be logged")
    wait_until(function() return #w:getWorkers() == 1 end, WAIT, "the failed worker to leave the list")
    -- once its modules load again, the autoscaler adds a worker with a fresh id
    os.remove(dir .. "/fail")
    local added
    wait_until(function()
      local l, set = ids(w)
      added = l[2] and set[l[2]]
      return added and added.status == "idle"
    end, WAIT, "a worker to be added after the failures")
    assert.is_true(num(added.id) > 2, added.id)
    w:cancel(long.id)
  end)

  it("retires nothing for two intervals after adding (no add-then-retire flapping)", function()
    local dir = tmpdir()
    local w = world { minWorkers = 1, maxWorkers = 3, scaleInterval = 50, log = { file = dir .. "/log" } }
    local gate = w:execute("tele.gate", { file = dir .. "/open" }) -- worker-1's one slot: load 1
    wait_until(function()
      local l, set = ids(w)
      return #l == 2 and set[l[2]].status == "idle"
    end, WAIT, "the autoscaler to add a worker that serves")
    touch(dir .. "/open") -- load 0 from now on: the next step may retire
    result(gate)
    wait_until(function() return #w:getWorkers() == 1 end, WAIT, "the added worker to retire")
    -- the line is logged after the worker leaves the list, by the log's thread
    wait_until(function() return (S.readfile(dir .. "/log") or ""):find("autoscaler retired", 1, true) end,
      WAIT, "the retirement's log line")
    -- the log's timestamps (ts=...T08:16:42.186Z) of the two steps
    local function at(what)
      local text = S.readfile(dir .. "/log") or ""
      local h, m, s, ms = text:match("ts=%d+%-%d+%-%d+T(%d+):(%d+):(%d+)%.(%d+)Z[^\n]*" .. what)
      assert(h, "no '" .. what .. "' in the log:\n" .. text)
      return ((tonumber(h) * 60 + tonumber(m)) * 60 + tonumber(s)) * 1000 + tonumber(ms)
    end
    local gap = at("autoscaler retired") - at("autoscaler added")
    if gap < 0 then gap = gap + 86400000 end -- across midnight
    assert.is_true(gap >= 95, "retired " .. gap .. " ms after adding; two intervals are 100 ms")
  end)

  it("keeps the counts of retired workers: getMetrics() stays exact after they leave", function()
    local dir = tmpdir()
    local w = world { minWorkers = 1, maxWorkers = 3, scaleInterval = 50 }
    local gate = w:execute("tele.gate", { file = dir .. "/open" }) -- worker-1's one slot: load 1
    wait_until(function()
      local l, set = ids(w)
      return #l >= 2 and set[l[2]].status == "idle"
    end, WAIT, "the autoscaler to add a worker that serves")
    -- worker-1 is busy: these end on the added workers, which count them
    local hs = {}
    for i = 1, 30 do hs[#hs + 1] = w:execute("tele.echo", i) end
    for _ = 1, 5 do hs[#hs + 1] = w:execute("tele.fail") end
    for _ = 1, 5 do hs[#hs + 1] = w:execute("tele.flaky") end
    hs[#hs + 1] = w:execute("tele.marker", { file = dir .. "/none" }, { failureStrategy = "quarantine" })
    local held = w:execute("tele.gate", { file = dir .. "/never" })
    wait_until(function() return held:status() == "running" end, WAIT, "the second gate to run")
    w:cancel(held.id)
    for _, h in ipairs(hs) do S.await(w, h.id) end
    S.await(w, held.id)
    local first = w:getWorkers()[1].id
    local elsewhere = 0
    for _, h in ipairs(hs) do elsewhere = elsewhere + (h:query().workerId ~= first and 1 or 0) end
    assert.equals(#hs, elsewhere)
    touch(dir .. "/open")
    result(gate)
    wait_until(function() return #w:getWorkers() == 1 end, WAIT, "the added workers to retire")
    local m = w:getMetrics().tasks
    assert.same({ completed = 36, failed = 5, retried = 5, cancelled = 1, quarantined = 1 },
      { completed = m.completed, failed = m.failed, retried = m.retried, cancelled = m.cancelled,
        quarantined = m.quarantined })
    -- the one worker left ran only the gate
    assert.equals(1, w:getWorkers()[1].tasksCompleted)
  end)

  it("a workflow parked on a worker that retires resumes on another one", function()
    local dir = tmpdir()
    local w = world { minWorkers = 1, maxWorkers = 2, scaleInterval = 20 }
    local gate = w:execute("tele.gate", { file = dir .. "/open" }) -- worker-1's one slot
    wait_until(function()
      local l, set = ids(w)
      return #l == 2 and set[l[2]].status == "idle"
    end, WAIT, "the autoscaler to add a worker that serves")
    -- they run on the added worker (worker-1 is busy) and park there, their
    -- coroutines cached on it
    local hs = {}
    for i = 1, 6 do hs[i] = w:execute("tele.parked", { ms = 1500 }) end
    wait_until(function()
      for _, h in ipairs(hs) do if #h:query().history < 2 then return false end end
      return true
    end, WAIT, "the workflows to park")
    touch(dir .. "/open")
    result(gate)
    wait_until(function() return #w:getWorkers() == 1 end, WAIT, "the added worker to retire")
    for _, h in ipairs(hs) do assert.equals("running", h:status()) end -- still parked
    -- their timers fire after the retirement: each resumes on worker-1,
    -- which replays its history (the worker that cached it is gone)
    for _, h in ipairs(hs) do
      local v, err = h:result(10000)
      assert.is_nil(err)
      assert.is_string(v)
    end
  end)

  it("never reuses a worker id: scaling up again brings new ids", function()
    local w = world { minWorkers = 1, maxWorkers = 3, scaleInterval = 100 }
    local everSeen = {}
    local function note()
      local l = ids(w)
      for _, id in ipairs(l) do everSeen[id] = true end
      return l
    end
    local function burst()
      local hs = {}
      for i = 1, 12 do hs[i] = w:execute("tele.nap", { ms = 150 }) end
      wait_until(function() return #note() == 3 end, 3000, "the pool to grow to 3")
      local l = note()
      for i = 1, 12 do result(hs[i]) end
      wait_until(function() return #note() == 1 end, 3000, "the pool to shrink to 1")
      return l
    end
    local round1 = burst()
    local max1 = 0
    for id in pairs(everSeen) do max1 = math.max(max1, num(id)) end
    assert.equals(3, max1) -- worker-1, then worker-2 and worker-3
    local round2 = burst()
    local fresh = 0
    for _, id in ipairs(round2) do
      if num(id) > max1 then fresh = fresh + 1 end
    end
    assert.equals(2, fresh, "round 2: " .. table.concat(round2, ",") .. "; round 1: " .. table.concat(round1, ","))
    -- ids are unique and numbered from 1 without reuse
    local all = {}
    for id in pairs(everSeen) do all[#all + 1] = num(id) end
    table.sort(all)
    assert.same({ 1, 2, 3, 4, 5 }, all)
  end)

  it("never retires a busy worker: the newest worker keeps its long task while the rest retire", function()
    -- scaleThreshold 0.9 / scaleDownThreshold 0.5 make the steps exact: three
    -- busy workers of three grow the pool to 4; the long task then lands on the
    -- only free worker (the newest); once the gates open the load is 1/4, 1/3,
    -- 1/2, and every idle worker retires, newest first, but never the busy one.
    local dir = tmpdir()
    local gateA, gateB = dir .. "/a", dir .. "/b"
    local w = world { minWorkers = 1, maxWorkers = 4, scaleInterval = 100, scaleThreshold = 0.9,
      scaleDownThreshold = 0.5 }
    local gates = {}
    for i = 1, 3 do gates[i] = w:execute("tele.gate", { file = gateA }) end
    wait_until(function()
      local l, set = ids(w)
      local busy = 0
      for _, id in ipairs(l) do
        if set[id].status == "busy" then busy = busy + 1 end
      end
      return #l == 4 and busy == 3 and set[l[4]].status ~= "starting"
    end, 3000, "4 workers, 3 busy, the newest loaded")
    local _, set = ids(w)
    assert.equals("idle", set["worker-4"].status)
    local long = w:execute("tele.gate", { file = gateB })
    wait_until(function() return long:status() == "running" end, WAIT, "the long task to start")
    assert.equals("worker-4", long:query().workerId)
    touch(gateA)
    for i = 1, 3 do result(gates[i]) end
    wait_until(function()
      local l, s = ids(w)
      assert.is_truthy(s["worker-4"], "the busy worker was retired")
      assert.equals("busy", s["worker-4"].status)
      return #l == 1
    end, 3000, "the idle workers to retire")
    local l, s = ids(w)
    assert.same({ "worker-4" }, l)
    assert.equals(1, #s["worker-4"].running)
    assert.equals(long.id, s["worker-4"].running[1].id)
    assert.equals("running", long:status())
    touch(gateB)
    local r = result(long)
    assert.same({ attempt = 1 }, r)
    local st = long:query()
    assert.equals("completed", st.status)
    assert.equals("worker-4", st.workerId)
    assert.equals(1, st.attempt)
    -- and it stays the pool's one worker
    athena.sleep(300)
    assert.same({ "worker-4" }, (ids(w)))
  end)

  it("a fixed pool (minWorkers == maxWorkers) does not change", function()
    local w = world { minWorkers = 2, maxWorkers = 2, scaleInterval = 50 }
    local hs = {}
    for i = 1, 10 do hs[i] = w:execute("tele.nap", { ms = 50 }) end
    local t1 = athena.now() + 400
    while athena.now() < t1 do
      assert.same({ "worker-1", "worker-2" }, (ids(w)))
      athena.sleep(25)
    end
    for i = 1, 10 do result(hs[i]) end
    assert.same({ "worker-1", "worker-2" }, (ids(w)))
  end)
end)

describe("heartbeat monitor (liveness)", function()
  it("a worker blocked in C past heartbeatTimeout is lost; the attempt is retried on a replacement", function()
    local w = world { minWorkers = 1, maxWorkers = 1, heartbeatInterval = 100, heartbeatTimeout = 400 }
    assert.same({ "worker-1" }, (ids(w)))
    local t0 = athena.now()
    local h = w:execute("tele.block", { ms = 1500 })
    local r, err = result(h, 5000)
    local elapsed = athena.now() - t0
    assert.is_nil(err)
    assert.same({ attempt = 2 }, r)
    local st = h:query()
    assert.equals("completed", st.status)
    assert.equals(2, st.attempt)
    -- found lost after ~400-500 ms, not when the blocked call returned (1.5 s)
    assert.is_true(elapsed < 1400, "completed after " .. elapsed .. " ms")
    local l = ids(w)
    assert.equals(1, #l)
    assert.are_not.equal("worker-1", l[1])
    assert.is_true(num(l[1]) > 1)
    assert.equals(l[1], st.workerId)
    local m = w:getMetrics()
    assert.equals(1, m.tasks.retried)
    assert.equals(1, m.tasks.completed)
    assert.equals(0, m.tasks.failed)
    assert.equals(1, m.workers.total)
    -- the old thread returns later; its outcome is discarded
    athena.sleep(1300)
    st = h:query()
    assert.equals("completed", st.status)
    assert.equals(2, st.attempt)
    assert.same({ attempt = 2 }, st.result)
    assert.same({ l[1] }, (ids(w)))
    assert.equals(1, w:getMetrics().tasks.completed)
    assert.equals(7, result(w:execute("tele.echo", 7)))
  end)

  it("posts the worker.lost webhook with the lost worker and its tasks", function()
    -- the receiver: a small python3 HTTP server that appends each POST as a
    -- JSON line {event, delivery, type, body} to a log file
    local dir = tmpdir()
    local script, portf, log = dir .. "/recv.py", dir .. "/port", dir .. "/hits"
    local f = assert(io.open(script, "w"))
    f:write([[
import http.server, json, sys
portf, log = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8")
        with open(log, "a") as f:
            f.write(json.dumps({"event": self.headers.get("X-Athena-Event"),
                                "delivery": self.headers.get("X-Athena-Delivery"),
                                "type": self.headers.get("Content-Type"), "body": body}) + "\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
with open(portf + ".tmp", "w") as f:
    f.write(str(s.server_address[1]))
import os
os.rename(portf + ".tmp", portf)
s.serve_forever()
]])
    f:close()
    assert(os.execute("command -v python3 >/dev/null"), "python3 is needed for the webhook receiver")
    os.execute(("env -u LD_PRELOAD timeout 60 python3 %s %s %s >/dev/null 2>&1 & echo $! > %s"):format(q(script), q(portf), q(log),
      q(dir .. "/pid")))
    local pidf = io.open(dir .. "/pid")
    local pid = pidf and pidf:read("n")
    if pidf then pidf:close() end
    receivers[#receivers + 1] = pid
    local port = wait_until(function()
      local pf = io.open(portf)
      local n = pf and pf:read("n")
      if pf then pf:close() end
      return n
    end, WAIT, "the webhook receiver")
    local w = world { minWorkers = 1, maxWorkers = 1, heartbeatInterval = 100, heartbeatTimeout = 400,
      backend = athena.LocalBackend.new { webhookUrl = ("http://127.0.0.1:%d/hook"):format(port),
        webhookEvents = { "worker.lost", "task.retrying", "task.completed" } } }
    local h = w:execute("tele.block", { ms = 1500 })
    assert.same({ attempt = 2 }, (result(h)))
    local byEvent = wait_until(function()
      local lf = io.open(log)
      if not lf then return false end
      local got = {}
      for line in lf:lines() do
        local hit = athena.json.decode(line)
        got[hit.event] = got[hit.event] or {}
        table.insert(got[hit.event], hit)
      end
      lf:close()
      return got["worker.lost"] and got["task.retrying"] and got["task.completed"] and got
    end, WAIT, "worker.lost, task.retrying and task.completed deliveries")
    for event, hits in pairs(byEvent) do
      assert.equals(1, #hits, event)
      local hit = hits[1]
      assert.matches("^application/json", hit.type)
      local body = athena.json.decode(hit.body)
      assert.equals(event, body.event)
      assert.equals(hit.delivery, body.id)
      assert.equals("integer", math.type(body.at))
    end
    local lost = athena.json.decode(byEvent["worker.lost"][1].body).data
    assert.same({ workerId = "worker-1", tasks = { h.id } }, lost)
    local retrying = athena.json.decode(byEvent["task.retrying"][1].body).data
    assert.equals(h.id, retrying.id)
    assert.equals("retrying", retrying.status)
    assert.equals(1, retrying.attempt)
    assert.equals("EWORKERLOST", retrying.error.code)
    local completed = athena.json.decode(byEvent["task.completed"][1].body).data
    assert.equals(h.id, completed.id)
    assert.equals("tele.block", completed.name)
    assert.equals("activity", completed.kind)
    assert.equals("completed", completed.status)
    assert.equals(2, completed.attempt)
    assert.equals("default", completed.taskQueue)
  end)

  it("a pure-Lua busy loop (the hook beats) is not declared lost", function()
    local w = world { minWorkers = 1, maxWorkers = 1, heartbeatInterval = 100, heartbeatTimeout = 400 }
    local h = w:execute("tele.spin", { ms = 1000 })
    local r, err = result(h, 5000)
    assert.is_nil(err)
    assert.equals(1, r.attempt)
    local st = h:query()
    assert.equals("completed", st.status)
    assert.equals(1, st.attempt)
    assert.equals("worker-1", st.workerId)
    assert.same({ "worker-1" }, (ids(w)))
    assert.equals(0, w:getMetrics().tasks.retried)
  end)

  it("a task sleeping at a yield point longer than heartbeatTimeout is not lost", function()
    local w = world { minWorkers = 1, maxWorkers = 1, heartbeatInterval = 100, heartbeatTimeout = 400 }
    local r = result(w:execute("tele.nap", { ms = 900 }))
    assert.equals(1, r.attempt)
    assert.same({ "worker-1" }, (ids(w)))
  end)
end)
