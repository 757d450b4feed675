-- One athena process of scripts/dist-test: a node of a cluster that shares
-- one queue through PostgreSQL (athena.PostgresBackend). The harness starts
-- three: two serve (`node.lua serve`) until the stop file appears, one
-- drives (`node.lua drive`): it enqueues the tasks, runs them too, waits for
-- every result through its handles (results of tasks other nodes ran), and
-- writes them to DIST_DIR/results.
--
-- Environment: DIST_URL (postgres://...), DIST_SCHEMA, DIST_NODE (its
-- nodeId), DIST_DIR (logs and marker files), DIST_TASKS (drive: how many),
-- DIST_SLEEP (ms each task sleeps, so every node holds running tasks when
-- one is killed).
local athena = require "athena"

local env = os.getenv
local node, dir = assert(env("DIST_NODE")), assert(env("DIST_DIR"))

-- Every attempt appends "<task id> <attempt> <node>" to its node's log, in
-- one write (the file is opened for appending: lines of the node's worker
-- threads never interleave). The harness reads the logs after the run.
local log
local work = athena.activity("dist.work", function(ctx, input)
  log = log or assert(io.open(dir .. "/" .. node .. ".log", "a"))
  log:write(("%s %d %s\n"):format(ctx.id, ctx.attempt, node))
  log:flush()
  if input.sleep and input.sleep > 0 then athena.sleep(input.sleep) end
  return { node = node, attempt = ctx.attempt, i = input.i }
end, { retry = { maxAttempts = 5, initialInterval = "100ms" } })

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function mark(name)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:close()
end

local world = athena.World.new{
  backend = athena.PostgresBackend.new{ url = env("DIST_URL"), nodeId = node, schema = env("DIST_SCHEMA") },
  minWorkers = 2, maxWorkers = 2,
  -- a killed node's lease ends, and its running tasks are rescued, after this
  heartbeatInterval = "200ms", heartbeatTimeout = "2s",
}
world:register(work)
world:start()
mark(node .. ".started")

if arg[1] == "serve" then
  while not exists(dir .. "/stop") do athena.sleep(50) end
  world:shutdown()
  return
end

-- drive
local N = tonumber(env("DIST_TASKS")) or 3000
local sleep = tonumber(env("DIST_SLEEP")) or 10
local handles, t0 = {}, athena.now()
for i = 1, N, 500 do
  local batch = {}
  for k = i, math.min(N, i + 499) do batch[#batch + 1] = { i = k, sleep = sleep } end
  -- acknowledged: committed to the database once executeMany returns
  for _, h in ipairs(world:executeMany("dist.work", batch)) do handles[#handles + 1] = h end
end
mark("enqueued")
local enq = athena.now() - t0
local failures, per_node, retried = 0, {}, 0
local out = assert(io.open(dir .. "/results", "w"))
for _, h in ipairs(handles) do
  local r, err = h:result(120000)
  if r == nil then
    failures = failures + 1
    io.stderr:write(("dist-test: %s did not complete: %s\n"):format(h.id, err and (err.code .. " " .. tostring(err.message)) or "?"))
  else
    per_node[r.node] = (per_node[r.node] or 0) + 1
    if r.attempt > 1 then retried = retried + 1 end
    out:write(("%s %d %s\n"):format(h.id, r.attempt, r.node))
  end
end
out:close()
local dt = (athena.now() - t0) / 1000
local parts = {}
for n, c in pairs(per_node) do parts[#parts + 1] = n .. "=" .. c end
table.sort(parts)
print(("dist-test: %d tasks acknowledged in %.2f s, all results in %.2f s (%.0f tasks/s end to end); "
  .. "completed by node: %s; %d completed on a later attempt; %d not completed")
  :format(N, enq / 1000, dt, N / dt, table.concat(parts, " "), retried, failures))
mark("stop")
world:shutdown()
os.exit(failures == 0 and 0 or 1)
