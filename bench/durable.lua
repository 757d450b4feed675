-- Durability benchmark (issue 4): athena bench/durable.lua [N]
-- The throughput run of bench/throughput.lua (N no-op tasks, 2 workers,
-- executeMany) in memory, hybrid and file modes, with the ratio to memory
-- (ONLY=<mode>: that mode alone; with ROUNDS=<n>, n rounds in its one
-- world: see below); then a bulk enqueue of
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

-- One timed round of N tasks in world w: tasks/s to the last result.
local function round(w)
  local inputs = {}
  for i = 1, N do inputs[i] = { i = i } end
  -- the previous round's (or mode's) handles are garbage now: collect them
  -- here, not inside this round
  collectgarbage()
  local t0 = clock()
  local hs = {}
  for i = 1, N, 1000 do -- batches of 1,000: each one durable in file mode
    local b = {}
    for k = i, math.min(N, i + 999) do b[#b + 1] = inputs[k] end
    for _, h in ipairs(w:executeMany("noop", b)) do hs[#hs + 1] = h end
  end
  for i = 1, #hs do assert(hs[i]:result()) end
  return N / (clock() - t0)
end

-- tasks/s of each of `rounds` rounds (default 1) in one world of `mode`
local function run(mode, rounds)
  fresh()
  local w = athena.World.new{ persistence = mode, persistencePath = dir, minWorkers = 2, maxWorkers = 2 }
  w:register(noop)
  w:start()
  local rates = {}
  for r = 1, rounds or 1 do rates[r] = round(w) end
  w:shutdown()
  return rates[1], rates
end

-- ONLY=hybrid (or file, memory) runs that mode alone, as the process's
-- first world: a second hybrid world in one process runs at ~0.55x of the
-- first (README, "Performance"), so the default sequence understates it.
-- ROUNDS=<n> (with ONLY) runs n rounds of N tasks in that one world and
-- prints each round's rate: the first pays for a cold heap (the process's
-- memory faulted in page by page) and an empty database; the later ones show
-- the steady state, and whether the cost per task stays flat as the run
-- and the database grow.
local only = os.getenv("ONLY")
if only then
  local rounds = math.max(1, math.floor(tonumber(os.getenv("ROUNDS")) or 1))
  local first, rates = run(only, rounds)
  if rounds == 1 then
    print(string.format("%-7s %8.0f tasks/s (the process's first world)", only .. ":", first))
  else
    -- rounds 2..n as one run: tasks over time (a round may leave work
    -- to the store that the next one pays for)
    local secs, shown = 0, {}
    for r = 1, rounds do
      shown[r] = string.format("%.0f", rates[r])
      if r > 1 then secs = secs + N / rates[r] end
    end
    print(string.format("%-7s %d rounds of %d tasks in one world: %s tasks/s; rounds 2-%d together %.0f tasks/s",
      only .. ":", rounds, N, table.concat(shown, " / "), rounds, (rounds - 1) * N / secs))
  end
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
