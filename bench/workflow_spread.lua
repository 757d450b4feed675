-- Workflow spread benchmark (issue 17): athena bench/workflow_spread.lua [workflows] [steps] [reps]
-- A workflow stays on the worker that starts it, so how new workflows are
-- dealt out over a queue's workers decides whether they all work. Runs
-- `workflows` (default 20) workflows of `steps` (default 200) steps, each
-- step an activity that burns some CPU (3,000 Lua loop iterations, tens of
-- microseconds), all started at once on 2 workers of 64 slots, and as the
-- baseline the same on 1 worker; prints steps/s, how many workflows each
-- worker ran, and the ratio of 2 workers to 1 (2.0x when both work all
-- along; 1.0x when one worker starts them all and the other idles).
-- Best of `reps` (default 3) runs each.
local athena = require "athena"

local W = tonumber(arg and arg[1]) or 20
local STEPS = tonumber(arg and arg[2]) or 200
local REPS = tonumber(arg and arg[3]) or 3

local burn = athena.activity("burn", function(_, n)
  local s = 0
  for i = 1, n do s = s + i % 7 end
  return s
end)
local chain = athena.workflow("chain", function(ctx, input)
  local sum = 0
  for _ = 1, input.steps do sum = sum + ctx:run("burn", 3000) end
  return sum
end)

local function run(workers)
  local w = athena.World.new { persistence = "memory", minWorkers = workers, maxWorkers = workers,
    taskQueues = { default = { concurrency = 64 } } }
  w:register(burn, chain)
  w:start()
  local inputs = {}
  for i = 1, W do inputs[i] = { steps = STEPS } end
  local t0 = athena.now()
  local per = {}
  for _, h in ipairs(w:executeMany("chain", inputs)) do
    assert(h:result(600000))
    local q = h:query()
    per[#per + 1] = q.workerId
  end
  local rate = W * STEPS / ((athena.now() - t0) / 1000)
  w:shutdown()
  local counts = {}
  for _, id in ipairs(per) do counts[id] = (counts[id] or 0) + 1 end
  local split = {}
  for _, n in pairs(counts) do split[#split + 1] = n end
  table.sort(split, function(a, b) return a > b end)
  return rate, table.concat(split, "/")
end

local function best(workers)
  local b, split = 0, ""
  for _ = 1, REPS do
    local r, s = run(workers)
    if r > b then b, split = r, s end
  end
  return b, split
end

if athena.isWorker() then return end
local one = best(1)
local two, split = best(2)
print(string.format("workflow spread: %d workflows x %d steps, best of %d", W, STEPS, REPS))
print(string.format("  1 worker:  %7.0f steps/s", one))
print(string.format("  2 workers: %7.0f steps/s, workflows per worker %s; 2 workers / 1 = %.2fx", two, split,
  two / one))
