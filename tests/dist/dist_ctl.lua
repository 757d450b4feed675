-- What the controllers of scripts/dist-test share (tests/dist/*.lua scenarios): the
-- controller's world (a node that serves no queue), failures counted and printed, queries on
-- the cluster's schema, the kill -9 of a node holding some rows, the nodes' activity logs, and
-- the end state (nothing ready or leased).
-- Environment: ATHENA_PG_URL, DIST_SCHEMA, DIST_LOG, DIST_NODES ("a,b,c").
local athena = require "athena"
local jobs = require "dist_jobs"
local env = os.getenv

local M = { failed = 0, SCHEMA = assert(env("DIST_SCHEMA")) }

function M.fail(fmt, ...)
  M.failed = M.failed + 1
  print("FAIL " .. fmt:format(...))
end

-- The controller's world; `opts` are added to the world's options (and
-- opts.notify to the backend's).
function M.world(opts)
  local cfg = {
    backend = athena.PostgresBackend.new { url = env("ATHENA_PG_URL"), nodeId = "ctl", schema = M.SCHEMA,
      pollInterval = 200, notify = opts and opts.notify },
    modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1, taskQueues = { dist = { workers = 0 } },
    heartbeatInterval = 500, heartbeatTimeout = 3000, persistence = "file",
  }
  for k, v in pairs(opts or {}) do
    if k ~= "notify" then cfg[k] = v end
  end
  local w = athena.World.new(cfg)
  w:register(table.unpack(jobs.all))
  w:start()
  M.db = assert(athena.db.open(env("ATHENA_PG_URL")))
  return w
end

function M.rows(sql, ...)
  return assert(M.db:query((sql:gsub("{S}", M.SCHEMA)), ...))
end

function M.scalar(sql, ...)
  local _, v = next(M.rows(sql, ...)[1])
  return v
end

-- Waits until the count `sql` is 0, at most `ms`: what ends after the results the controller
-- waited for (a cancel reaches a running task on its node and lands once its attempt stopped,
-- SEMANTICS T13). Returns the last count (0 unless the deadline passed).
function M.drained(ms, sql, ...)
  local deadline = athena.now() + ms
  local n = M.scalar(sql, ...)
  while n ~= 0 and athena.now() < deadline do
    athena.sleep(20)
    n = M.scalar(sql, ...)
  end
  return n
end

-- kill -9s live node `name` of w's cluster once `held_sql` (a count, $1 = the
-- node id) is above 0, waiting at most 20 s; then returns its pid and what
-- `left_sql` counts for it (what it still held when it died).
function M.kill_holding(w, name, held_sql, left_sql)
  local pid
  for _, n in ipairs(w:getNodes()) do
    if n.alive and n.nodeId == name then pid = n.pid end
  end
  if pid == nil then
    M.fail("no live node %s to kill", name)
    return nil, 0
  end
  local deadline = athena.now() + 20000
  local held = 0
  while held == 0 and athena.now() < deadline do held = M.scalar(held_sql, name) end
  if held == 0 then M.fail("node %s never held what it should be killed with", name) end
  os.execute("kill -9 " .. pid)
  return pid, M.scalar(left_sql, name)
end

-- The nodes' activity logs: each (task, attempt) started once (else a
-- failure); returns the last attempt per task id and the nodes that ran it.
function M.starts()
  local starts, last, node_of = {}, {}, {}
  for name in (env("DIST_NODES") or "a,b,c"):gmatch("[^,]+") do
    local f = io.open(env("DIST_LOG") .. "." .. name)
    for line in (f and f:lines() or function() end) do
      local what, id, attempt = line:match("^(%a+) (%S+) (%d+)")
      attempt = tonumber(attempt)
      if what == "start" then
        local k = id .. "#" .. attempt
        if starts[k] then M.fail("%s ran twice (%s and %s)", k, starts[k], name) end
        starts[k] = name
        node_of[id] = node_of[id] or {}
        node_of[id][name] = true
        if (last[id] or 0) < attempt then last[id] = attempt end
      end
    end
    if f then f:close() end
  end
  return last, node_of
end

-- Checks that nothing is left ready or leased, shuts w down, prints the
-- verdict and exits.
function M.finish(w)
  local ready = M.scalar("select count(*) as n from {S}.ready")
  local leased = M.scalar("select count(*) as n from {S}.tasks where lease is not null")
  if ready ~= 0 or leased ~= 0 then M.fail("%d ready and %d leased rows left", ready, leased) end
  M.db:close()
  w:shutdown()
  print(M.failed == 0 and "PASS" or ("FAILED: %d"):format(M.failed))
  os.exit(M.failed == 0 and 0 or 1)
end

return M
