-- Webhooks on the PostgreSQL backend (docs/backend-postgres.md, "Webhooks"):
-- the node whose fenced finish applied sends the event, stored in the outbox
-- in the finish's transaction, so a node killed -9 between its commit and
-- the delivery loses nothing: another node sends it (at least once, same
-- delivery id). Worlds in this process and `athena` child nodes
-- (tests/dist/node.lua) against the "pg" fixture; a local HTTP receiver
-- (python3) logs every POST with its path and refuses those to /refuse.
local athena = require "athena"
local S = require "fixtures.support"

local BIN = assert(os.getenv("ATHENA_BIN"), "ATHENA_BIN must point at the athena binary")
local SRC = os.getenv("ATHENA_SRC") or "."
package.path = SRC .. "/tests/dist/?.lua;" .. package.path
local jobs = require "dist_jobs"

local URL = S.pg_database("athena_webhooks_spec")
local admin = assert(athena.db.open(URL))
local WAIT = 20000

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local schemas = 0
local function schema()
  schemas = schemas + 1
  return "hk" .. schemas
end

local worlds, pids, tmp = {}, {}, {}

local function scalar(sql, ...)
  local rows = assert(admin:query(sql, ...))
  local _, v = next(rows[1])
  return v
end

-- The receiver: returns its base URL and a function reading what it got
-- ({path, event, delivery, body (decoded)}, in arrival order).
local function receiver()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. q(dir)))
  tmp[#tmp + 1] = dir
  local script, portf, log = dir .. "/hook.py", dir .. "/port", dir .. "/hits"
  local f = assert(io.open(script, "w"))
  f:write([[
import http.server, json, os, signal, sys
signal.alarm(120)  # outlives no spec that lost it (SIGALRM ends the process)
portf, log = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8")
        refuse = self.path.startswith("/refuse")
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, "event": self.headers.get("X-Athena-Event"),
                                "delivery": self.headers.get("X-Athena-Delivery"),
                                "refused": refuse, "body": body}) + "\n")
        self.send_response(500 if refuse else 204)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
with open(portf + ".tmp", "w") as f:
    f.write(str(s.server_address[1]))
os.rename(portf + ".tmp", portf)
s.serve_forever()
]])
  f:close()
  assert(os.execute("command -v python3 >/dev/null"), "python3 is needed for the webhook receiver")
  local p = io.popen(("env -u LD_PRELOAD python3 %s %s %s >/dev/null 2>&1 & echo $!"):format(
    q(script), q(portf), q(log)))
  pids[#pids + 1] = tonumber(p:read("l"))
  p:close()
  local port = S.eventually(function() return tonumber(S.readfile(portf) or "") end, WAIT, "the webhook receiver")
  local function hits()
    local out = {}
    for l in (S.readfile(log) or ""):gmatch("[^\n]+") do
      local h = athena.json.decode(l)
      h.body = athena.json.decode(h.body)
      out[#out + 1] = h
    end
    return out
  end
  return ("http://127.0.0.1:%d"):format(port), hits
end

local function world(sch, hook, extra)
  local w = athena.World.new {
    backend = athena.PostgresBackend.new { url = URL, nodeId = "w-" .. sch .. "-" .. #worlds, schema = sch,
      pollInterval = 200, webhookUrl = hook },
    modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1,
    taskQueues = { dist = { workers = extra and extra.serve and 1 or 0, concurrency = 8 } },
    heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
  }
  w:register(table.unpack(jobs.all))
  w:start()
  worlds[#worlds + 1] = w
  return w
end

-- Starts tests/dist/node.lua as node `id` (webhooks to `hook`); returns its pid.
local function node(sch, id, hook)
  local log = os.tmpname()
  tmp[#tmp + 1] = log
  local vars = { ATHENA_PG_URL = URL, DIST_SCHEMA = sch, DIST_NODE = id, DIST_LOG = log, DIST_WEBHOOK = hook,
    LUA_PATH = SRC .. "/tests/dist/?.lua;" .. (os.getenv("LUA_PATH") or ";;") }
  local e = {}
  for k, v in pairs(vars) do e[#e + 1] = k .. "=" .. q(v) end
  local p = io.popen(("env %s %s %s/tests/dist/node.lua >%s.out 2>%s.err </dev/null & echo $!"):format(
    table.concat(e, " "), q(BIN), q(SRC), q(log), q(log)))
  local pid = tonumber(p:read("l"))
  p:close()
  pids[#pids + 1] = pid
  local ok, err = pcall(S.eventually, function() return (S.readfile(log .. ".out") or ""):find("started") end, WAIT,
    "node " .. id .. " to start")
  assert(ok, tostring(err) .. ": " .. tostring(S.readfile(log .. ".err")))
  return pid
end

-- The hits of task `id`, by "<event>#<attempt>".
local function of_task(hits, id)
  local out = {}
  for _, h in ipairs(hits) do
    if h.body.data.id == id then
      local k = h.event .. "#" .. h.body.data.attempt
      out[k] = out[k] or {}
      table.insert(out[k], h)
    end
  end
  return out
end

after_each(function()
  for _, pid in ipairs(pids) do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  for _, w in ipairs(worlds) do pcall(w.shutdown, w) end
  for _, p in ipairs(tmp) do os.execute("rm -rf " .. q(p) .. " " .. q(p) .. ".*") end
  pids, worlds, tmp = {}, {}, {}
end)

teardown(function()
  admin:close()
end)

describe("webhooks on the PostgreSQL backend", function()
  it("checks webhookUrl and webhookEvents as LocalBackend does", function()
    S.raises("EINVAL", athena.PostgresBackend.new, { url = URL, webhookUrl = "ftp://x" })
    S.raises("EINVAL", athena.PostgresBackend.new, { url = URL, webhookEvents = { "task.nosuch" } })
    S.raises("EINVAL", athena.PostgresBackend.new, { url = URL, webhookEvents = {} })
  end)

  it("are sent once, by the node that ran the task, with the payloads of one world", function()
    local sch = schema()
    local base, hits = receiver()
    local ctl = world(sch, base .. "/ctl") -- serves nothing: it sends none of these
    node(sch, "b", base .. "/b")
    local hs = ctl:executeMany("dist.noop", { { n = 1 }, { n = 2 }, { n = 3 } })
    local flaky = ctl:execute("dist.flaky", {})
    for _, h in ipairs(hs) do assert.is_nil(select(2, h:result(WAIT))) end
    assert.equals(2, (flaky:result(WAIT)))
    local got = S.eventually(function()
      local all = hits()
      return #all >= 5 and all
    end, WAIT, "5 deliveries")
    for _, h in ipairs(got) do
      assert.equals("/b", h.path) -- the node whose finish applied, not the node that executed
      assert.equals(h.event, h.body.event)
      assert.equals(h.delivery, h.body.id)
      assert.equals("integer", math.type(h.body.at))
    end
    for _, h in ipairs(hs) do
      local by = of_task(got, h.id)
      assert.equals(1, #by["task.completed#1"]) -- parentId is null: decoded, it is absent
      assert.same({ id = h.id, name = "dist.noop", kind = "activity", status = "completed", attempt = 1,
        taskQueue = "dist" }, by["task.completed#1"][1].body.data)
    end
    local by = of_task(got, flaky.id)
    assert.equals(1, #by["task.retrying#1"])
    local r = by["task.retrying#1"][1].body.data
    assert.equals("retrying", r.status)
    assert.equals("first attempt fails", r.error.message)
    assert.equals(1, #by["task.completed#2"])
    -- a task no node claimed, cancelled by the node that asks: that node tells
    local later = ctl:execute("dist.noop", {}, { delay = 600000 })
    assert.is_true(later:cancel())
    local c = S.eventually(function()
      for _, x in ipairs(hits()) do
        if x.body.data.id == later.id then return x end
      end
    end, WAIT, "task.cancelled")
    assert.equals("/ctl", c.path)
    assert.equals("task.cancelled", c.event)
    assert.equals("cancelled", c.body.data.status)
    S.eventually(function() return scalar(("select count(*) as n from %s.outbox"):format(sch)) == 0 end, WAIT,
      "the outbox to empty (deleted with the next lease renewal)")
    assert.equals(6, #hits()) -- each event once, none from the executing node
  end)

  it("a fenced-out node sends nothing for its discarded outcome; the rescue's events are sent", function()
    local sch = schema()
    local base, hits = receiver()
    local w = world(sch, base .. "/w", { serve = true }) -- also the leader: it rescues its own old incarnation
    local h = w:execute("dist.sleep", { ms = 1500 })
    S.eventually(function() return h:status() == "running" end, WAIT, "the task to run")
    assert(admin:exec(("update %s.nodes set expires_at = 0 where not leader"):format(sch)))
    assert.is_nil(select(2, h:result(WAIT)))
    assert.equals(2, h:query().attempt)
    local by = S.eventually(function()
      local b = of_task(hits(), h.id)
      return b["task.completed#2"] and b
    end, WAIT, "attempt 2's task.completed")
    assert.equals(1, #by["task.retrying#1"]) -- the leader's rescue (EWORKERLOST)
    assert.equals("EWORKERLOST", by["task.retrying#1"][1].body.data.error.code)
    assert.equals(1, #by["task.completed#2"])
    for k in pairs(by) do -- attempt 1's own end (interrupted, discarded) was never sent
      assert.is_true(k == "task.retrying#1" or k == "task.completed#2", k)
    end
  end)

  it("an event committed but not delivered when its node is killed -9 is sent by another node, same id", function()
    local sch = schema()
    local base, hits = receiver()
    local pb = node(sch, "b", base .. "/refuse") -- its deliveries fail: they stay in the outbox
    local h = world(sch, nil):execute("dist.noop", { n = 1 })
    assert.is_nil(select(2, h:result(WAIT)))
    local first = S.eventually(function()
      for _, x in ipairs(hits()) do
        if x.body.data.id == h.id then return x end
      end
    end, WAIT, "b's refused delivery")
    assert.equals("/refuse", first.path)
    assert.equals(1, scalar(("select count(*) as n from %s.outbox"):format(sch)))
    os.execute("kill -9 " .. pb)
    local hub = world(sch, base .. "/hub") -- adopts the rows of dead owners at its poll
    local sent = S.eventually(function()
      for _, x in ipairs(hits()) do
        if x.path == "/hub" then return x end
      end
    end, WAIT, "the event sent by another node")
    assert.equals(first.delivery, sent.delivery) -- the same delivery: receivers deduplicate by it
    assert.same(first.body, sent.body)
    assert.equals("task.completed", sent.event)
    S.eventually(function() return scalar(("select count(*) as n from %s.outbox"):format(sch)) == 0 end, WAIT,
      "the outbox to empty")
    assert.is_not_nil(hub)
  end)
end)
