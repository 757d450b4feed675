-- A node of bench/distributed.sh: athena processes sharing one queue in
-- PostgreSQL (athena.PostgresBackend, issue 16), no-op tasks.
--   athena bench/distributed.lua serve   -- claims and runs `bench` tasks until DIST_DIR/stop exists
--   athena bench/distributed.lua drive   -- enqueues DIST_TASKS, starts the servers' clock, reports
-- Environment: DIST_URL, DIST_SCHEMA, DIST_NODE, DIST_DIR, DIST_TASKS.
local athena = require "athena"

local env = os.getenv
local node, dir = assert(env("DIST_NODE")), assert(env("DIST_DIR"))
local role = arg[1]

local noop = athena.activity("bench.noop", function(_, input) return input end, { taskQueue = "bench" })

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function mark(name, text)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(text or "")
  f:close()
end

local world = athena.World.new{
  backend = athena.PostgresBackend.new{ url = env("DIST_URL"), nodeId = node, schema = env("DIST_SCHEMA") },
  minWorkers = 1, maxWorkers = 1,
  -- the driver only enqueues and waits: the servers run the tasks
  taskQueues = { bench = { workers = role == "serve" and 2 or 0 } },
}
world:register(noop)
world:start()

if role == "serve" then
  mark(node .. ".started")
  while not exists(dir .. "/stop") do athena.sleep(50) end
  world:shutdown()
  return
end

local N = tonumber(env("DIST_TASKS")) or 200000
local inputs = {}
for i = 1, 1000 do inputs[i] = { i = i } end
local handles = {}
local t0 = athena.now()
for _ = 1, N // 1000 do
  for _, h in ipairs(world:executeMany("bench.noop", inputs)) do handles[#handles + 1] = h end
end
local enqueue = (athena.now() - t0) / 1000
mark("enqueued")
-- the servers start now; their clock starts when the first is up
while not exists(dir .. "/go") do athena.sleep(5) end
local t1 = athena.now()
for i = 1, #handles do assert(handles[i]:result(600000)) end
local processing = (athena.now() - t1) / 1000
print(("athena: %d tasks, 3 processes: enqueue %.0f/s, processed %.0f/s, end-to-end %.0f/s")
  :format(#handles, #handles / enqueue, #handles / processing, #handles / (enqueue + processing)))
mark("stop")
world:shutdown()
