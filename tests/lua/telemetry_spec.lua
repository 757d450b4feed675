-- Telemetry: world:getMetrics() (SEMANTICS §14.1), the HTTP surface served by
-- world:serve{} (§14.3: /healthz, Prometheus /metrics, the JSON API under
-- /api/ and the dashboard) and the `athena serve` command.
--
-- HTTP requests go through the curl command-line tool; every server listens on
-- port 0 (any free port) and the tests use the url serve() returns.
local athena = require "athena"
local S = require "fixtures.support"
local J = require "fixtures.tele_jobs"

local json = athena.json
local BIN = os.getenv("ATHENA_BIN")
local WAIT = 5000

--------------------------------------------------------------------- helpers

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local tmpfiles = {}
local function tmpname()
  local p = os.tmpname()
  tmpfiles[#tmpfiles + 1] = p
  return p
end

local function tmpdir()
  local p = io.popen("mktemp -d /tmp/athena-tele-XXXXXX")
  local d = p:read("l")
  p:close()
  tmpfiles[#tmpfiles + 1] = d
  return d
end

local function cleanup_files()
  for i = #tmpfiles, 1, -1 do
    local p = tmpfiles[i]
    tmpfiles[i] = nil
    if p:match("^/tmp/") then os.execute("rm -rf " .. q(p)) end
  end
end

-- Percent-encodes everything but the unreserved characters (RFC 3986).
local function enc(s)
  return (s:gsub("[^A-Za-z0-9_.~-]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- request(method, url[, headers]) -> status (number; 0 if no response),
-- content type, body, curl's exit code. Mutations declare a JSON body, as
-- the operations surface asks of them (no simple cross-site requests);
-- headers ({name = value}) replace or (false) drop that.
local function request(method, url, headers)
  local body = tmpname()
  local h = {}
  if method ~= "GET" and method ~= "HEAD" then h["Content-Type"] = "application/json" end
  for k, v in pairs(headers or {}) do h[k] = v or nil end
  local hs = {}
  for k, v in pairs(h) do hs[#hs + 1] = "-H " .. q(k .. ": " .. v) end
  local p = io.popen(("env -u LD_PRELOAD curl -s -g --max-time 10 -o %s -w '%%{http_code} %%{content_type}' -X %s %s %s"):format(
    q(body), q(method), table.concat(hs, " "), q(url)))
  local out = p:read("a")
  local _, _, code = p:close()
  local b = slurp(body) or ""
  os.remove(body)
  local status, ctype = out:match("^(%d+) ?(.*)$")
  return tonumber(status) or 0, ctype or "", b, code
end

local function get(url)
  return request("GET", url)
end

--- GET url, expecting 200 JSON; returns the decoded body.
local function get_json(url)
  local status, ctype, body = get(url)
  assert(status == 200, "GET " .. url .. " -> " .. status .. " " .. body)
  assert(ctype:match("^application/json"), "GET " .. url .. " content type " .. ctype)
  return json.decode(body), body
end

--- Asserts a JSON error body {ok = false, error = {code, message}}; returns
-- the error table.
local function json_error(ctype, body, code)
  assert.matches("^application/json", ctype)
  local t = json.decode(body)
  assert.is_table(t, body)
  assert.equals(false, t.ok, body)
  assert.is_table(t.error, body)
  assert.is_string(t.error.code, body)
  assert.is_string(t.error.message, body)
  if code then assert.equals(code, t.error.code, body) end
  return t.error
end

local wait_until = S.eventually

local raises = S.raises

local result = S.result

local open = {}
--- A started world over {persistence = "memory", modules =
-- {"fixtures.tele_jobs"}, minWorkers = 1, maxWorkers = 1} + cfg.
local function world(cfg, nostart)
  local c = { persistence = "memory", modules = { "fixtures.tele_jobs" }, minWorkers = 1, maxWorkers = 1 }
  for k, v in pairs(cfg or {}) do c[k] = v end
  local w = athena.World.new(c)
  open[#open + 1] = w
  w:register(J.all())
  if not nostart then w:start() end
  return w
end

local function cleanup_worlds()
  for i = #open, 1, -1 do
    local w = open[i]
    open[i] = nil
    pcall(w.shutdown, w, { timeout = 100 })
  end
end

--- A started world serving on a free port; returns world, serve info.
local function served(cfg, opts)
  local w = world(cfg)
  local o = { port = 0 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return w, w:serve(o)
end

--------------------------------------------------- Prometheus text 0.0.4

local TYPES = { counter = true, gauge = true, summary = true, histogram = true, untyped = true }

local function parse_labels(s, line)
  -- s is "{...}" (with the braces)
  local inner = s:sub(2, -2)
  local labels, i = {}, 1
  while i <= #inner do
    local name, j = inner:match("^([%a_][%w_]*)=\"()", i)
    assert(name, "bad label in: " .. line)
    local v, k = {}, j
    while true do
      local c = inner:sub(k, k)
      assert(c ~= "", "unterminated label value in: " .. line)
      if c == "\\" then
        local e = inner:sub(k + 1, k + 1)
        assert(e == "\\" or e == "\"" or e == "n", "bad escape in: " .. line)
        v[#v + 1] = e == "n" and "\n" or e
        k = k + 2
      elseif c == "\"" then
        break
      else
        v[#v + 1] = c
        k = k + 1
      end
    end
    assert(labels[name] == nil, "duplicate label " .. name .. " in: " .. line)
    labels[name] = table.concat(v)
    i = k + 1
    if inner:sub(i, i) == "," then i = i + 1 end
  end
  return labels
end

local function parse_value(v, line)
  if v == "+Inf" or v == "-Inf" or v == "NaN" then return v end
  local n = tonumber(v)
  assert(n ~= nil and v:match("^[-+]?[%d.eE+-]+$"), "value is not a number in: " .. line)
  return n
end

--- Validates Prometheus text format 0.0.4; returns samples keyed by
-- `name{label="v",...}` exactly as written and the families {name = type}.
local function parse_prometheus(text)
  assert.equals("\n", text:sub(-1), "the exposition must end with a newline")
  local help, types, samples, order, closed = {}, {}, {}, {}, {}
  local current
  for line in text:gmatch("([^\n]*)\n") do
    if line == "" then
      -- blank lines are allowed
    elseif line:sub(1, 1) == "#" then
      local kw, name, rest = line:match("^#%s+(%u+)%s+([%a_:][%w_:]*)%s*(.*)$")
      if kw == "HELP" then
        assert(help[name] == nil, "second HELP for " .. name)
        assert(not closed[name] and samples[name] == nil, "HELP after samples of " .. name)
        help[name] = rest
      elseif kw == "TYPE" then
        assert(types[name] == nil, "second TYPE for " .. name)
        assert(TYPES[rest], "bad TYPE " .. tostring(rest) .. " for " .. name)
        assert(not closed[name], "TYPE after samples of " .. name)
        types[name] = rest
        order[#order + 1] = name
      end
    else
      local name, labels, value, ts = line:match("^([%a_:][%w_:]*)(%b{})%s+(%S+)%s*(%S*)$")
      if not name then
        name, value, ts = line:match("^([%a_:][%w_:]*)%s+(%S+)%s*(%S*)$")
      end
      assert(name, "malformed sample line: " .. line)
      assert(ts == "" or ts:match("^%-?%d+$"), "bad timestamp in: " .. line)
      local lt = labels and parse_labels(labels, line) or {}
      parse_value(value, line)
      local family = name
      if not types[family] then
        local base = name:match("^(.*)_sum$") or name:match("^(.*)_count$") or name:match("^(.*)_bucket$")
        if base and (types[base] == "summary" or types[base] == "histogram") then family = base end
      end
      assert(types[family], "sample before its # TYPE: " .. line)
      assert(help[family], "sample before its # HELP: " .. line)
      assert(not closed[family], "samples of " .. family .. " are not grouped: " .. line)
      if current and current ~= family then closed[current] = true end
      current = family
      if types[family] == "summary" and family == name then
        assert(lt.quantile, "summary sample without quantile: " .. line)
        local qv = tonumber(lt.quantile)
        assert(qv and qv >= 0 and qv <= 1, "bad quantile in: " .. line)
      end
      local key = name .. (labels or "")
      assert(samples[key] == nil, "duplicate sample " .. key)
      samples[key] = parse_value(value, line)
    end
  end
  return samples, types, order
end

-- Polls until h's status is `status`.
local function wait_status(h, status, timeout)
  return wait_until(function()
    local s = h:query()
    return s.status == status and s
  end, timeout, "status " .. status .. " of " .. h.id)
end

-- Polls until the state of `id` over HTTP satisfies pred.
local function wait_http_task(url, id, pred, what)
  return wait_until(function()
    local status, _, body = get(url .. "/api/tasks/" .. enc(id))
    if status ~= 200 then return false end
    local t = json.decode(body)
    return pred(t) and t
  end, WAIT, what)
end

--------------------------------------------------------------------- specs

describe("HTTP surface (world:serve)", function()
  after_each(function()
    cleanup_worlds()
    cleanup_files()
  end)

  it("/healthz answers 200 ok while the world is started", function()
    local _, s = served()
    local status, ctype, body = get(s.url .. "/healthz")
    assert.equals(200, status)
    assert.matches("^text/plain", ctype)
    assert.equals("ok", body)
  end)

  it("serve returns {host, port, url} for the port it bound", function()
    local _, s = served()
    assert.equals("127.0.0.1", s.host)
    assert.equals("integer", math.type(s.port))
    assert.is_true(s.port > 0 and s.port < 65536)
    assert.equals("http://127.0.0.1:" .. s.port, s.url)
  end)

  it("/metrics is valid Prometheus text 0.0.4 and counts the completed tasks", function()
    local w, s = served()
    local hs = {}
    for i = 1, 7 do hs[i] = w:execute("tele.echo", i) end
    hs[8] = w:execute("tele.fail")
    for i = 1, 7 do assert.equals(i, result(hs[i])) end
    local _, err = result(hs[8])
    assert.equals("EFATAL", err.code)
    local status, ctype, body = get(s.url .. "/metrics")
    assert.equals(200, status)
    assert.matches("^text/plain", ctype)
    assert.is_truthy(ctype:find("version=0.0.4", 1, true), ctype)
    local samples, types = parse_prometheus(body)
    -- every family of §14.3
    for name, ty in pairs {
      athena_uptime_seconds = "gauge", athena_workers = "gauge", athena_tasks = "gauge",
      athena_tasks_total = "counter", athena_workload = "gauge", athena_queue_depth = "gauge",
      athena_queue_running = "gauge", athena_queue_oldest_age_seconds = "gauge",
      athena_queue_wait_seconds = "summary", athena_run_seconds = "summary",
    } do
      assert.equals(ty, types[name], "TYPE of " .. name)
    end
    assert.equals(7, samples['athena_tasks_total{outcome="completed"}'])
    assert.equals(1, samples['athena_tasks_total{outcome="failed"}'])
    for _, o in ipairs { "retried", "cancelled", "quarantined" } do
      assert.equals(0, samples['athena_tasks_total{outcome="' .. o .. '"}'], o)
    end
    for _, st in ipairs { "queued", "scheduled", "running" } do
      assert.equals(0, samples['athena_tasks{state="' .. st .. '"}'], st)
    end
    for _, qn in ipairs { "0.5", "0.95", "0.99" } do
      assert.is_number(samples['athena_queue_wait_seconds{quantile="' .. qn .. '"}'], "queue wait " .. qn)
      assert.is_number(samples['athena_run_seconds{quantile="' .. qn .. '"}'], "run " .. qn)
    end
    assert.equals(0, samples['athena_queue_depth{queue="default"}'])
    assert.equals(0, samples['athena_queue_running{queue="default"}'])
    assert.equals(0, samples['athena_queue_oldest_age_seconds{queue="default"}'])
    assert.is_true(samples.athena_uptime_seconds > 0)
    assert.equals(0, samples.athena_workload)
    -- the same figures as getMetrics()
    local m = w:getMetrics()
    assert.equals(m.tasks.completed, samples['athena_tasks_total{outcome="completed"}'])
    assert.equals(m.workers.idle, samples['athena_workers{status="idle"}'])
    assert.equals(m.workers.busy, samples['athena_workers{status="busy"}'])
  end)

  it("/api/metrics has the §14.1 fields with the right counts", function()
    local w, s = served()
    local done = {}
    for i = 1, 3 do done[#done + 1] = w:execute("tele.echo", i) end
    done[#done + 1] = w:execute("tele.flaky")                            -- retried once, completed
    done[#done + 1] = w:execute("tele.fail")                             -- failed
    done[#done + 1] = w:execute("tele.fail")                             -- failed
    done[#done + 1] = w:execute("tele.marker", { file = "/nonexistent/tele-marker" },
      { failureStrategy = "quarantine" })                                -- quarantined
    local later = w:execute("tele.echo", "later", { delay = "1h" })     -- scheduled
    local cancelled = w:execute("tele.echo", "never", { delay = "1h" })
    assert.is_true(cancelled:cancel())                                   -- cancelled
    for _, h in ipairs(done) do result(h) end
    assert.equals("quarantined", done[#done]:status())
    assert.equals("scheduled", later:status())

    local m, raw = get_json(s.url .. "/api/metrics")
    assert.equals("integer", math.type(m.uptime), raw)
    assert.is_true(m.uptime > 0)
    assert.same({ total = 1, idle = 1, busy = 0 }, m.workers)
    assert.same({ queued = 0, scheduled = 1, running = 0, completed = 4, failed = 2, retried = 1,
      cancelled = 1, quarantined = 1, resident = 9 }, m.tasks) -- memory mode retains all 9
    assert.is_table(m.throughput, raw)
    for _, k in ipairs { "perSecond", "perMinute", "perHour" } do
      assert.equals("integer", math.type(m.throughput[k]), k)
      assert.is_true(m.throughput[k] >= 0 and m.throughput[k] <= 4, k)
    end
    assert.equals(0, m.workload)
    assert.same({ depth = 0, running = 0, oldestAgeMs = 0 }, m.queues.default)
    for _, k in ipairs { "queueWait", "run" } do
      local l = m.latency[k]
      assert.is_table(l, k)
      assert.is_number(l.p50)
      assert.is_true(0 <= l.p50 and l.p50 <= l.p95 and l.p95 <= l.p99, k)
    end
    -- the same counts as getMetrics()
    local g = w:getMetrics()
    assert.same(g.tasks, m.tasks)
    assert.same(g.queues.default, m.queues.default)
  end)

  it("/api/workers lists the workers, with a running task in `running` while it runs", function()
    local w, s = served { minWorkers = 2, maxWorkers = 2 }
    local h = w:execute("tele.nap", { ms = 300 })
    local busy
    local list = wait_until(function()
      local l = get_json(s.url .. "/api/workers")
      for _, wk in ipairs(l) do
        if #wk.running > 0 then busy = wk end
      end
      return busy and l
    end, WAIT, "the nap in /api/workers")
    assert.equals(2, #list)
    local ids = {}
    for _, wk in ipairs(w:getWorkers()) do ids[#ids + 1] = wk.id end
    assert.same(ids, { list[1].id, list[2].id })
    for _, wk in ipairs(list) do
      assert.matches("^worker%-%d+$", wk.id)
      assert.equals("default", wk.taskQueue)
      assert.equals(1, wk.concurrency)
      assert.equals("integer", math.type(wk.lastHeartbeat))
      assert.equals("integer", math.type(wk.tasksCompleted))
      assert.equals("integer", math.type(wk.tasksFailed))
      assert.equals("integer", math.type(wk.memoryKB))
      assert.is_table(wk.running)
    end
    assert.equals("busy", busy.status)
    assert.equals(1, #busy.running)
    assert.equals(h.id, busy.running[1].id)
    assert.equals("tele.nap", busy.running[1].name)
    assert.equals("running", h:status())
    local st = h:query()
    assert.equals(st.startedAt, busy.running[1].startedAt)
    assert.equals(busy.id, st.workerId)
    result(h)
    -- once it is done, nothing runs and the worker counts it
    local after = get_json(s.url .. "/api/workers")
    local completed = 0
    for _, wk in ipairs(after) do
      assert.same({}, wk.running)
      assert.equals("idle", wk.status)
      if wk.id == busy.id then completed = wk.tasksCompleted end
    end
    assert.equals(1, completed)
  end)

  it("/api/tasks filters by status, name, limit and offset, newest first", function()
    local w, s = served()
    local order = { "c1", "f1", "c2", "f2", "c3" }
    local hs = {}
    for _, id in ipairs(order) do
      hs[id] = id:sub(1, 1) == "c" and w:execute("tele.echo", id, { id = id }) or w:execute("tele.fail", nil, { id = id })
      result(hs[id])
      athena.sleep(3) -- distinct createdAt
    end
    local function ids(query)
      local l = get_json(s.url .. "/api/tasks" .. query)
      local out = {}
      for i, t in ipairs(l) do out[i] = t.id end
      return out, l
    end
    local all, rows = ids("")
    assert.same({ "c3", "f2", "c2", "f1", "c1" }, all)
    assert.same({ "f2", "f1" }, (ids("?status=failed")))
    assert.same({ "c3", "c2", "c1" }, (ids("?status=completed")))
    assert.same({ "c3", "f2", "c2", "f1", "c1" }, (ids("?status=completed,failed")))
    assert.same({ "c3", "f2", "c2", "f1", "c1" }, (ids("?status=" .. enc("completed,failed"))))
    assert.same({}, (ids("?status=pending")))
    assert.same({ "c3", "c2", "c1" }, (ids("?name=tele.echo")))
    assert.same({ "f2", "f1" }, (ids("?name=tele.fail&status=failed")))
    assert.same({}, (ids("?name=tele.fail&status=completed")))
    assert.same({ "c3", "f2" }, (ids("?limit=2")))
    assert.same({ "f2", "c2" }, (ids("?limit=2&offset=1")))
    assert.same({ "c1" }, (ids("?offset=4")))
    assert.same({}, (ids("?offset=5")))
    assert.same({ "c2", "c1" }, (ids("?name=tele.echo&offset=1&limit=5")))
    -- since/until: inclusive, on createdAt
    local c2, f2 = hs.c2:query().createdAt, hs.f2:query().createdAt
    assert.same({ "f2", "c2" }, (ids(("?since=%d&until=%d"):format(c2, f2))))
    -- rows are state tables
    local c3 = rows[1]
    assert.equals("tele.echo", c3.name)
    assert.equals("completed", c3.status)
    assert.equals("c3", c3.result)
    assert.equals("c3", c3.input)
    assert.equals(1, c3.attempt)
    assert.equals("EFATAL", rows[2].error.code)
    -- the same as queryTasks
    local qt = w:queryTasks { status = { "completed", "failed" }, limit = 2, offset = 1 }
    assert.same({ "f2", "c2" }, { qt[1].id, qt[2].id })
    -- a bad status is refused
    local status, ctype, body = get(s.url .. "/api/tasks?status=bogus")
    assert.equals(400, status)
    json_error(ctype, body, "EINVAL")
  end)

  it("bad limit/offset query parameters answer 400 EINVAL, as queryTasks raises EINVAL", function()
    local w, s = served()
    result(w:execute("tele.echo", 1))
    assert.equals(1, #get_json(s.url .. "/api/tasks?limit=1000&offset=0"))
    raises("EINVAL", w.queryTasks, w, { limit = 0 })
    for _, qs in ipairs { "limit=1001", "limit=-1", "offset=-1", "limit=0", "limit=abc", "offset=x" } do
      local status, ctype, body = get(s.url .. "/api/tasks?" .. qs)
      assert.equals(400, status, qs .. " -> " .. status)
      json_error(ctype, body, "EINVAL")
    end
  end)

  it("GET /api/tasks/<id> finds ids that need percent-encoding", function()
    local w, s = served()
    local ids = { "plain-1", "has space", "slash/inside/id", "pct%41", "q?mark", "hash#x", "plus+sign",
      "ünïcode", "a//b" }
    for i, id in ipairs(ids) do
      assert.equals(i, result(w:execute("tele.echo", i, { id = id })))
    end
    for i, id in ipairs(ids) do
      local status, ctype, body = get(s.url .. "/api/tasks/" .. enc(id))
      assert.equals(200, status, id .. ": " .. body)
      assert.matches("^application/json", ctype)
      local t = json.decode(body)
      assert.equals(id, t.id)
      assert.equals("tele.echo", t.name)
      assert.equals("completed", t.status)
      assert.equals(i, t.input)
      assert.equals(i, t.result)
      assert.equals(1, t.attempt)
      assert.equals(w:query(id).createdAt, t.createdAt)
    end
    local status, ctype, body = get(s.url .. "/api/tasks/" .. enc("no such task"))
    assert.equals(404, status)
    json_error(ctype, body, "ENOTFOUND")
  end)

  it("GET /api/tasks/<id> finds a long id (600 bytes)", function()
    local w, s = served()
    local id = ("long-"):rep(120)
    result(w:execute("tele.echo", 1, { id = id }))
    local status, _, body = get(s.url .. "/api/tasks/" .. id)
    assert.equals(200, status, body)
    assert.equals(id, json.decode(body).id)
  end)

  it("GET /api/tasks/<id> and /api/tasks rows carry the state table of world:query() (§4.3, §10.2)", function()
    local w, s = served()
    result(w:execute("tele.echo", { a = 1 }, { id = "e1", priority = 3 }))
    result(w:execute("tele.fail", nil, { id = "f1" }))
    result(w:execute("tele.beat", nil, { id = "b1" }))
    result(w:execute("tele.flaky", nil, { id = "r1" }))
    local rows = {}
    for _, r in ipairs(get_json(s.url .. "/api/tasks")) do rows[r.id] = r end
    for _, id in ipairs { "e1", "f1", "r1", "b1" } do -- b1 (heartbeat details) last
      local st = w:query(id)
      st.history = nil
      local t = get_json(s.url .. "/api/tasks/" .. id)
      if st.error then
        -- the error value: compare its fields (the traceback may differ in form)
        for _, k in ipairs { "code", "message", "retryable", "attempt", "name" } do
          assert.equals(st.error[k], t.error and t.error[k], id .. ".error." .. k)
        end
        st.error, t.error = nil, nil
      end
      for k, v in pairs(st) do
        assert.same(v, t[k], id .. "." .. k)
      end
      for k, v in pairs(t) do
        assert.same(st[k], v, id .. "." .. k .. " (not in query())")
      end
      rows[id].error = nil
      assert.same(t, rows[id], id .. ": /api/tasks row")
    end
  end)

  it("GET /api/tasks/<id> finds an id with dot segments (percent-encoded '/')", function()
    local w, s = served()
    for _, id in ipairs { "a/../b", "c/./d" } do
      result(w:execute("tele.echo", id, { id = id }))
      local status, _, body = get(s.url .. "/api/tasks/" .. enc(id))
      assert.equals(200, status, id .. ": " .. body)
      assert.equals(id, json.decode(body).id)
    end
  end)

  it("POST /api/tasks/<id>/requeue revives a quarantined task, which runs again", function()
    local w, s = served()
    local marker = tmpname()
    os.remove(marker)
    local id = "tele q/1" -- needs encoding
    local h = w:execute("tele.marker", { file = marker }, { id = id, failureStrategy = "quarantine" })
    local _, err = result(h)
    assert.equals("ENOMARKER", err.code)
    assert.equals("quarantined", h:status())
    local t = get_json(s.url .. "/api/tasks/" .. enc(id))
    assert.equals("quarantined", t.status)
    assert.equals("ENOMARKER", t.error.code)
    assert.equals("quarantine", t.failureStrategy)
    assert.same({ t.id }, (function()
      local l = get_json(s.url .. "/api/tasks?status=quarantined")
      local o = {}
      for i, r in ipairs(l) do o[i] = r.id end
      return o
    end)())
    spit(marker, "x")
    local status, ctype, body = request("POST", s.url .. "/api/tasks/" .. enc(id) .. "/requeue")
    assert.equals(200, status, body)
    assert.matches("^application/json", ctype)
    assert.same({ ok = true }, json.decode(body))
    local r, err2 = result(h)
    assert.is_nil(err2)
    assert.same({ attempt = 1, ok = true }, r) -- a fresh attempt count
    local st = h:query()
    assert.equals("completed", st.status)
    assert.equals(1, st.attempt)
    local m = w:getMetrics().tasks
    assert.equals(1, m.quarantined)
    assert.equals(1, m.completed)
    local after = get_json(s.url .. "/api/tasks/" .. enc(id))
    assert.equals("completed", after.status)
    assert.same({ attempt = 1, ok = true }, after.result)
  end)

  it("requeue of a task that is not quarantined answers 409 EINVAL; of an unknown one 404", function()
    local w, s = served()
    local h = w:execute("tele.echo", 1, { id = "done-1" })
    result(h)
    local status, ctype, body = request("POST", s.url .. "/api/tasks/done-1/requeue")
    assert.equals(409, status)
    json_error(ctype, body, "EINVAL")
    assert.equals("completed", h:status())
    assert.equals(1, h:query().attempt)
    status, ctype, body = request("POST", s.url .. "/api/tasks/nope/requeue")
    assert.equals(404, status)
    json_error(ctype, body, "ENOTFOUND")
  end)

  it("DELETE /api/tasks/<id> purges a quarantined task; then GET answers 404 ENOTFOUND", function()
    local w, s = served()
    local id = "dead/letter 1"
    local h = w:execute("tele.fail", nil, { id = id, failureStrategy = "quarantine" })
    result(h)
    assert.equals("quarantined", h:status())
    local status, ctype, body = request("DELETE", s.url .. "/api/tasks/" .. enc(id))
    assert.equals(200, status, body)
    assert.matches("^application/json", ctype)
    assert.same({ ok = true }, json.decode(body))
    status, ctype, body = get(s.url .. "/api/tasks/" .. enc(id))
    assert.equals(404, status)
    json_error(ctype, body, "ENOTFOUND")
    local none, err = w:query(id)
    assert.is_nil(none)
    assert.equals("ENOTFOUND", err.code)
    assert.same({}, get_json(s.url .. "/api/tasks?status=quarantined"))
    -- a task that is not quarantined is not purged
    result(w:execute("tele.echo", 1, { id = "kept" }))
    status, ctype, body = request("DELETE", s.url .. "/api/tasks/kept")
    assert.equals(409, status)
    json_error(ctype, body, "EINVAL")
    assert.equals("completed", w:query("kept").status)
  end)

  it("unknown routes answer 404 with a JSON error", function()
    local _, s = served()
    for _, path in ipairs { "/nope", "/api", "/api/", "/api/nope", "/metricsx", "/healthz/x",
      "/api/tasks/", "/api/workers/1", "/api/metrics/x" } do
      local status, ctype, body = get(s.url .. path)
      assert.equals(404, status, path)
      json_error(ctype, body)
    end
  end)

  it("a wrong method answers 404 or 405 with a JSON error", function()
    local w, s = served()
    result(w:execute("tele.echo", 1, { id = "t1" }))
    for _, mp in ipairs { { "PUT", "/api/metrics" }, { "POST", "/api/workers" }, { "DELETE", "/api/schedules" },
      { "POST", "/api/tasks" }, { "GET", "/api/tasks/t1/requeue" }, { "PUT", "/api/tasks/t1" },
      { "POST", "/api/tasks/t1" }, { "DELETE", "/api/tasks/t1/requeue" }, { "POST", "/metrics" },
      { "DELETE", "/" } } do
      local status, ctype, body = request(mp[1], s.url .. mp[2])
      assert.is_true(status == 404 or status == 405, mp[1] .. " " .. mp[2] .. " -> " .. status)
      json_error(ctype, body)
    end
    assert.equals("completed", w:query("t1").status) -- nothing happened to it
  end)

  it("GET / serves the dashboard page", function()
    local _, s = served()
    local status, ctype, body = get(s.url .. "/")
    assert.equals(200, status)
    assert.matches("^text/html", ctype)
    local lower = body:lower()
    assert.is_truthy(lower:find("<html", 1, true) or lower:find("<!doctype", 1, true))
  end)

  it("serve{metrics = false}: /metrics answers 404 while /healthz and /api still work", function()
    local _, s = served(nil, { metrics = false })
    local status, ctype, body = get(s.url .. "/metrics")
    assert.equals(404, status)
    json_error(ctype, body)
    status, _, body = get(s.url .. "/healthz")
    assert.equals(200, status)
    assert.equals("ok", body)
    get_json(s.url .. "/api/metrics")
  end)

  it("serve{dashboard = false}: / and /api/* answer 404 while /metrics and /healthz work", function()
    local w, s = served(nil, { dashboard = false })
    result(w:execute("tele.echo", 1, { id = "t1" }))
    for _, path in ipairs { "/", "/api/metrics", "/api/workers", "/api/tasks", "/api/tasks/t1", "/api/schedules" } do
      local status, ctype, body = get(s.url .. path)
      assert.equals(404, status, path)
      json_error(ctype, body)
    end
    local status = request("POST", s.url .. "/api/tasks/t1/requeue")
    assert.equals(404, status)
    status = get(s.url .. "/metrics")
    assert.equals(200, status)
    status = get(s.url .. "/healthz")
    assert.equals(200, status)
  end)

  it("bad serve options raise EINVAL, a gateway without a database too", function()
    local w = world()
    for _, o in ipairs {
      { port = -1 }, { port = "x" }, { port = 65536 }, { port = 1.5 }, { host = 5 }, { bogus = 1 },
      { port = 0, metrics = "yes" }, { port = 0, dashboard = 1 }, { port = 0, host = "not a host" },
    } do
      raises("EINVAL", w.serve, w, o)
    end
    local err = raises("EINVAL", w.serve, w, { port = 0, gateway = {} })
    assert.matches("database URL", err.message, 1, true)
    raises("EINVAL", w.serve, w, { port = 0, gateway = { db = "sqlite::memory:", policy = print } })
    -- nothing was bound: a good call still works
    local s = w:serve { port = 0 }
    assert.equals(200, (get(s.url .. "/healthz")))
  end)

  it("serve before start() raises EINVAL", function()
    local w = world(nil, true)
    raises("EINVAL", w.serve, w, { port = 0 })
  end)

  -- Run in a child process: a failure here must not take the other tests down
  -- with it (the engine once crashed after refusing the port).
  it("the same port twice raises EBUSY; the first server keeps serving", function()
    local script = tmpname() .. ".lua"
    tmpfiles[#tmpfiles + 1] = script
    spit(script, [[
local athena = require "athena"
local J = require "fixtures.tele_jobs"
local function world()
  local w = athena.World.new { persistence = "memory", modules = { "fixtures.tele_jobs" }, minWorkers = 1, maxWorkers = 1 }
  w:register(J.all())
  w:start()
  return w
end
local function code(ok, e) return ok and "ok" or (type(e) == "table" and e.code or tostring(e)) end
local w, w2 = world(), world()
local s = w:serve { port = 0 }
print("same-world " .. code(pcall(w.serve, w, { port = s.port })))
print("other-world " .. code(pcall(w2.serve, w2, { port = s.port })))
athena.sleep(100) -- let the engine loops settle after the refusals
local p = io.popen("env -u LD_PRELOAD curl -s --max-time 5 " .. s.url .. "/healthz")
print("healthz " .. p:read("a"))
p:close()
local s2 = w:serve { port = 0 }
p = io.popen("env -u LD_PRELOAD curl -s --max-time 5 " .. s2.url .. "/healthz")
print("second " .. tostring(s2.port ~= s.port) .. " " .. p:read("a"))
p:close()
w2:shutdown()
w:shutdown()
print("done")
]])
    local p = io.popen(("LUA_PATH=%s LUA_CPATH=%s timeout -k 2 30 lua5.4 %s 2>&1; echo rc=$?"):format(
      q(package.path), q(package.cpath), q(script)))
    local out = p:read("a")
    p:close()
    assert.matches("same%-world EBUSY\n", out)
    assert.matches("other%-world EBUSY\n", out)
    assert.matches("healthz ok\n", out)
    assert.matches("second true ok\n", out)
    assert.matches("done\nrc=0\n$", out)
  end)

  it("after world:shutdown() the port no longer answers", function()
    local w, s = served()
    assert.equals(200, (get(s.url .. "/healthz")))
    w:shutdown { timeout = 100 }
    local status, _, _, code = get(s.url .. "/healthz")
    assert.equals(0, status)
    assert.equals(7, code) -- curl: failed to connect
    local ok = pcall(w.serve, w, { port = 0 })
    assert.is_false(ok)
    -- the port was released: another world can bind it
    local w2 = world()
    local s2 = w2:serve { port = s.port }
    assert.equals(s.port, s2.port)
    assert.equals(200, (get(s2.url .. "/healthz")))
  end)

  it("/api/schedules lists a schedule made with world:schedule", function()
    local w, s = served()
    w:schedule("tele-nightly", "tele.echo", { x = 1 }, "0 3 * * *", { overlap = "skip", catchUp = "all" })
    local l = get_json(s.url .. "/api/schedules")
    assert.equals(1, #l)
    local e, g = l[1], w:getSchedules()[1]
    assert.equals("tele-nightly", e.id)
    assert.equals("tele.echo", e.name)
    assert.equals("0 3 * * *", e.cronExpression)
    assert.same({ x = 1 }, e.input)
    assert.equals("UTC", e.timezone)
    assert.equals("all", e.catchUp)
    assert.equals("skip", e.overlap)
    assert.equals(false, e.paused)
    assert.equals(0, e.totalExecutions)
    assert.equals(0, e.skippedExecutions)
    assert.equals(g.nextExecution, e.nextExecution)
    assert.equals(0, e.nextExecution % 86400000 - 3 * 3600000)
    assert.is_true(w:pauseSchedule("tele-nightly"))
    assert.equals(true, get_json(s.url .. "/api/schedules")[1].paused)
    assert.is_true(w:deleteSchedule("tele-nightly"))
    assert.same({}, get_json(s.url .. "/api/schedules"))
  end)

  it("malformed HTTP does not break the server", function()
    local w, s = served()
    local port = s.port
    local function raw(bytes)
      os.execute(("printf %s | timeout 2 bash -c 'cat > /dev/tcp/127.0.0.1/%d' 2>/dev/null"):format(q(bytes), port))
    end
    raw("GARBAGE\\r\\n\\r\\n")
    raw("\\000\\001\\002\\377\\376 garbage \\r\\n\\r\\n")
    raw("GET / HTTP/9.9\\r\\nHost: x\\r\\n\\r\\n")
    raw("GET /healthz HTTP/1.1\\r\\nContent-Length: -5\\r\\n\\r\\n")
    raw("POST /api/tasks HTTP/1.1\\r\\nContent-Length: 100000\\r\\n\\r\\nshort")
    raw("GET /healthz HTTP/1.1\\r\\nHo") -- cut off mid-header
    raw(("GET /%s HTTP/1.1\\r\\n\\r\\n"):format(("a"):rep(20000)))
    local status = request("BREW", s.url .. "/healthz")
    assert.is_true(status == 404 or status == 405 or status == 400, "BREW -> " .. status)
    status = request("G E T", s.url .. "/healthz")
    assert.is_true(status == 0 or status >= 400, "'G E T' -> " .. status)
    status = get(s.url .. "/api/tasks/" .. ("%zz%"):rep(3))
    assert.is_true(status == 404 or status == 400, "bad escapes -> " .. status)
    local st, _, body = get(s.url .. "/healthz")
    assert.equals(200, st)
    assert.equals("ok", body)
    assert.equals(2, result(w:execute("tele.echo", 2)))
  end)

  it("200 concurrent requests all succeed and the world keeps serving", function()
    local w, s = served { minWorkers = 2, maxWorkers = 2 }
    local hs = {}
    for i = 1, 20 do hs[i] = w:execute("tele.nap", { ms = 10 }) end
    local list = tmpname()
    local paths = { "/healthz", "/metrics", "/api/metrics", "/api/workers", "/api/tasks?limit=5", "/api/schedules", "/" }
    local lines = {}
    for i = 1, 200 do lines[i] = s.url .. paths[(i - 1) % #paths + 1] end
    spit(list, table.concat(lines, "\n") .. "\n")
    local p = io.popen(("env -u LD_PRELOAD xargs -P 20 -n 1 curl -s -g --max-time 10 -o /dev/null -w '%%{http_code}\\n' < %s"):format(q(list)))
    local out = p:read("a")
    p:close()
    local n, ok = 0, 0
    for code in out:gmatch("(%d+)\n") do
      n = n + 1
      if code == "200" then ok = ok + 1 end
    end
    assert.equals(200, n)
    assert.equals(200, ok)
    for i = 1, 20 do result(hs[i]) end
    local st, _, body = get(s.url .. "/healthz")
    assert.equals(200, st)
    assert.equals("ok", body)
    assert.equals(20, get_json(s.url .. "/api/metrics").tasks.completed)
  end)
end)

describe("world:getMetrics()", function()
  after_each(function()
    cleanup_worlds()
    cleanup_files()
  end)

  it("throughput.perMinute counts the completions of the last minute", function()
    local w = world { minWorkers = 2, maxWorkers = 2 }
    local hs = {}
    for i = 1, 10 do hs[i] = w:execute("tele.echo", i) end
    for i = 1, 10 do assert.equals(i, result(hs[i])) end
    local done_sec = w:now() // 1000
    -- complete seconds only may count: wait (on getMetrics) for the second to roll over
    local m = wait_until(function()
      local mm = w:getMetrics()
      return w:now() // 1000 > done_sec and mm
    end, 3000, "the second to roll over")
    m = w:getMetrics()
    assert.equals(10, m.throughput.perMinute)
    assert.equals(10, m.throughput.perHour)
    assert.is_true(m.throughput.perSecond == 0 or m.throughput.perSecond == 10, tostring(m.throughput.perSecond))
    assert.equals(10, m.tasks.completed)
  end)

  it("latency percentiles are ordered p50 <= p95 <= p99 and measure the runs", function()
    local w = world()
    local hs = {}
    for i = 1, 6 do hs[i] = w:execute("tele.nap", { ms = 50 }) end
    for i = 1, 6 do result(hs[i]) end
    local m = w:getMetrics()
    for _, k in ipairs { "queueWait", "run" } do
      local l = m.latency[k]
      assert.is_number(l.p50)
      assert.is_true(0 <= l.p50 and l.p50 <= l.p95 and l.p95 <= l.p99, k .. " " .. l.p50 .. " " .. l.p95 .. " " .. l.p99)
    end
    -- each run took >= 50 ms; one worker: the later ones waited for the earlier
    assert.is_true(m.latency.run.p50 >= 45 and m.latency.run.p99 < 2000, "run p50 " .. m.latency.run.p50)
    assert.is_true(m.latency.queueWait.p99 >= 150, "queueWait p99 " .. m.latency.queueWait.p99)
  end)

  it("is all zeros but queues.default before any task; queues lists named queues too", function()
    local w = world { taskQueues = { io = { workers = 1 } } }
    local m = w:getMetrics()
    assert.same({ depth = 0, running = 0, oldestAgeMs = 0 }, m.queues.default)
    assert.same({ depth = 0, running = 0, oldestAgeMs = 0 }, m.queues.io)
    assert.same({ queued = 0, scheduled = 0, running = 0, completed = 0, failed = 0, retried = 0, cancelled = 0,
      quarantined = 0, resident = 0 }, m.tasks)
    assert.same({ perSecond = 0, perMinute = 0, perHour = 0 }, m.throughput)
    assert.same({ p50 = 0, p95 = 0, p99 = 0 }, m.latency.run)
    assert.same({ p50 = 0, p95 = 0, p99 = 0 }, m.latency.queueWait)
    assert.equals(2, m.workers.total)
    assert.equals(0, m.workload)
  end)

  it("queues.default shows depth, running and oldestAgeMs while tasks wait", function()
    local w = world()
    local marker = tmpname()
    os.remove(marker)
    local g = w:execute("tele.gate", { file = marker })
    local waiting = {}
    for i = 1, 3 do waiting[i] = w:execute("tele.echo", i) end
    wait_status(g, "running")
    athena.sleep(60)
    local m = w:getMetrics()
    assert.equals(3, m.queues.default.depth)
    assert.equals(1, m.queues.default.running)
    assert.is_true(m.queues.default.oldestAgeMs >= 50, "oldestAgeMs " .. m.queues.default.oldestAgeMs)
    assert.equals(3, m.tasks.queued)
    assert.equals(1, m.tasks.running)
    assert.same({ total = 1, idle = 0, busy = 1 }, m.workers)
    assert.equals(1, m.workload)
    spit(marker, "x")
    for i = 1, 3 do result(waiting[i]) end
    result(g)
  end)
end)

describe("athena serve", function()
  local children = {}

  local function alive(pid)
    return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
  end

  -- Starts `athena serve <args>` in the background through a shell wrapper
  -- that records the child's pid and, when it ends, its exit code.
  local function start_serve(args, env)
    local dir = tmpdir()
    local c = { err = dir .. "/stderr", pidf = dir .. "/pid", rcf = dir .. "/rc" }
    os.execute(("( %s %s serve %s 2>%s </dev/null >/dev/null & echo $! > %s; wait $!; echo $? > %s ) >/dev/null 2>&1 &")
      :format(env or "", q(BIN), args, q(c.err), q(c.pidf), q(c.rcf)))
    c.pid = wait_until(function()
      local s = slurp(c.pidf)
      return s and tonumber(s:match("%d+"))
    end, 5000, "the child's pid")
    children[#children + 1] = c
    return c
  end

  local function url_of(c)
    return wait_until(function()
      local s = slurp(c.err) or ""
      return s:match("serving%D*(http://[%d.]+:%d+)")
    end, 10000, "the serving line on stderr")
  end

  local function exit_code(c, timeout)
    return wait_until(function()
      local s = slurp(c.rcf)
      return s and tonumber(s:match("%d+"))
    end, timeout or 10000, "athena serve to exit")
  end

  after_each(function()
    for i = #children, 1, -1 do
      local c = children[i]
      children[i] = nil
      if alive(c.pid) then os.execute("kill -KILL " .. c.pid .. " 2>/dev/null") end
    end
    cleanup_worlds()
    cleanup_files()
  end)

  it("serves on --port 0, answers /healthz, and exits 0 on SIGTERM", function()
    local c = start_serve("--port 0 --persistence memory --workers 3")
    local url = url_of(c)
    local status, _, body = get(url .. "/healthz")
    assert.equals(200, status)
    assert.equals("ok", body)
    assert.equals(3, #get_json(url .. "/api/workers"))
    assert.equals(200, (get(url .. "/metrics")))
    os.execute("kill -TERM " .. c.pid)
    wait_until(function() return not alive(c.pid) end, 10000, "athena serve to exit")
    assert.equals(0, exit_code(c))
    local err = slurp(c.err)
    assert.is_truthy(err:find("SIGTERM", 1, true) and err:find("shutting down", 1, true), err)
    local st, _, _, code = get(url .. "/healthz")
    assert.equals(0, st)
    assert.equals(7, code)
  end)

  it("--host 0.0.0.0 needs --auth; with it /api needs the key, and --ops-port serves it on loopback", function()
    local c = start_serve("--host 0.0.0.0 --port 0 --persistence memory")
    assert.equals(2, exit_code(c))
    assert.matches("needs auth", slurp(c.err))
    local keys = tmpname()
    spit(keys, 'return { keys = { ["tele-ops-key"] = { rights = { "ops.read" } } } }')
    c = start_serve("--host 0.0.0.0 --port 0 --persistence memory --auth " .. q(keys))
    local url = url_of(c):gsub("0%.0%.0%.0", "127.0.0.1")
    assert.equals(401, (get(url .. "/api/workers")))
    assert.equals(200, (request("GET", url .. "/api/workers", { apikey = "tele-ops-key" })))
    assert.equals(200, (get(url .. "/healthz")))
    c = start_serve("--port 0 --persistence memory --ops-port 0")
    local ops = wait_until(function() return (slurp(c.err) or ""):match("operations on (http://[%d.]+:%d+)") end,
      10000, "the operations url")
    assert.equals(404, (get(url_of(c) .. "/api/workers")))
    assert.equals(200, (get(ops .. "/api/workers")))
  end)

  it("exits 0 on SIGINT too", function()
    local c = start_serve("--port 0 --persistence memory")
    local url = url_of(c)
    assert.equals(200, (get(url .. "/healthz")))
    os.execute("kill -INT " .. c.pid)
    assert.equals(0, exit_code(c))
    local err = slurp(c.err)
    assert.is_truthy(err:find("SIGINT", 1, true) and err:find("shutting down", 1, true), err)
  end)

  it("--persistence file --path DIR --modules: shows a schedule an earlier world persisted there", function()
    local dir = tmpdir()
    local path = dir .. "/store"
    local w = world { persistence = "file", persistencePath = path }
    w:schedule("tele-cli", "tele.echo", { from = "earlier" }, "0 4 * * *")
    local h = w:execute("tele.echo", "persisted", { id = "tele-cli-task" })
    assert.equals("persisted", result(h))
    w:shutdown()
    local env = "LUA_PATH=" .. q(package.path)
    local c = start_serve(("--port 0 --persistence file --path %s --modules fixtures.tele_jobs"):format(q(path)), env)
    local url = url_of(c)
    local l = get_json(url .. "/api/schedules")
    assert.equals(1, #l, json.encode(l))
    assert.equals("tele-cli", l[1].id)
    assert.equals("tele.echo", l[1].name)
    assert.equals("0 4 * * *", l[1].cronExpression)
    assert.same({ from = "earlier" }, l[1].input)
    local t = get_json(url .. "/api/tasks/tele-cli-task")
    assert.equals("completed", t.status)
    assert.equals("persisted", t.result)
    os.execute("kill -TERM " .. c.pid)
    assert.equals(0, exit_code(c))
  end)

  it("a bad option exits 2 with the usage on stderr", function()
    for _, args in ipairs { "--bogus", "--port abc", "--port", "--workers x", "--port 1.5" } do
      local out = tmpname()
      local ok, how, code = os.execute(("timeout -k 2 20 %s serve %s --persistence memory >/dev/null 2>%s </dev/null")
        :format(q(BIN), args, q(out)))
      local err = slurp(out) or ""
      assert.is_nil(ok, args)
      assert.equals("exit", how, args)
      assert.equals(2, code, args .. ": " .. err)
      assert.matches("usage: athena serve", err, 1, true)
    end
  end)
end)
