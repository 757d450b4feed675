-- Durability benchmark (issue 4): athena bench/durable.lua [N]
-- The throughput run of bench/throughput.lua (N no-op tasks, 2 workers,
-- executeMany) in memory, hybrid and file modes, with the ratio to memory
-- (ONLY=<mode>: that mode alone, see below); then a bulk enqueue of
-- 1,000,000 tasks in file mode and the time a new world takes to recover
-- them.
local athena = require "athena"
local noop = athena.activity("noop", function(ctx, input) return input end)
-- Workers re-run this script up to the first world:start(): define all first.
local pool = athena.activity("parked", function() return true end, { taskQueue = "parked" })

local N = tonumber(arg and arg[1]) or 100000
local dir = os.tmpname()
os.remove(dir)

local function clock() return athena.now() / 1000 end

-- Workers re-run this script until the first world:start(), so the side
-- effects on the way there (deleting the directory) are for the control
-- state only.
local function fresh()
  if not athena.isWorker() then os.execute("rm -rf " .. dir) end
end

local function run(mode)
  fresh()
  local w = athena.World.new{ persistence = mode, persistencePath = dir, minWorkers = 2, maxWorkers = 2 }
  w:register(noop)
  w:start()
  local inputs = {}
  for i = 1, N do inputs[i] = { i = i } end
  -- the previous mode's handles are garbage now: collect them here, not
  -- inside this mode's timed run
  collectgarbage()
  local t0 = clock()
  local hs = {}
  for i = 1, N, 1000 do -- batches of 1,000: each one durable in file mode
    local b = {}
    for k = i, math.min(N, i + 999) do b[#b + 1] = inputs[k] end
    for _, h in ipairs(w:executeMany("noop", b)) do hs[#hs + 1] = h end
  end
  for i = 1, #hs do assert(hs[i]:result()) end
  local dt = clock() - t0
  w:shutdown()
  return N / dt
end

-- ONLY=hybrid (or file, memory) runs that mode alone, as the process's
-- first world: a second hybrid world in one process runs at ~0.55x of the
-- first (README, "Performance"), so the default sequence understates it.
local only = os.getenv("ONLY")
if only then
  print(string.format("%-7s %8.0f tasks/s (the process's first world)", only .. ":", run(only)))
  os.exit(0)
end
local base = run("memory")
print(string.format("memory: %8.0f tasks/s", base))
for _, mode in ipairs { "hybrid", "file" } do
  local r = run(mode)
  print(string.format("%-7s %8.0f tasks/s (%.2fx of memory)", mode .. ":", r, r / base))
end

-- Bulk enqueue of 1,000,000 tasks (file mode: each batch of 10,000 is one
-- commit), then recovery of all of them by a new world.
local M = tonumber(arg and arg[2]) or 1000000
fresh()
local cfg = { persistence = "file", persistencePath = dir, minWorkers = 1,
  taskQueues = { parked = { workers = 1 } } }
local w = athena.World.new(cfg)
w:register(pool)
w:start()
local chunk = {}
for i = 1, 10000 do chunk[i] = { i = i } end
local t0 = clock()
for _ = 1, M / 10000 do w:executeMany("parked", chunk, { delay = "1h" }) end
local enq = clock() - t0
print(string.format("bulk enqueue, file mode: %d tasks in %.2f s (%.0f tasks/s)", M, enq, M / enq))
w:shutdown()
collectgarbage()
t0 = clock()
local w2 = athena.World.new(cfg)
w2:register(pool)
w2:start()
local rec = clock() - t0
print(string.format("recovery of %d queued tasks: %.2f s (start() to return)", w2:getMetrics().tasks.scheduled, rec))
w2:shutdown()
os.execute("rm -rf " .. dir)
