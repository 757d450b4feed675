-- Workflow benchmark (issue 9): athena bench/workflows.lua [N] [steps]
-- N workflows of `steps` sequential ctx:run steps each (a no-op activity),
-- 2 workers, memory and hybrid persistence. Prints workflows/s and steps/s,
-- and as the baseline the same number of no-op activities executed directly
-- (executeMany) in the same run: the ratio is what durable orchestration
-- costs per step (each step = schedule + park + replay of the handler).
local athena = require "athena"

local N = tonumber(arg and arg[1]) or 2000
local STEPS = tonumber(arg and arg[2]) or 5

local noop = athena.activity("noop", function(_, input) return input end)
local chain = athena.workflow("chain", function(ctx, input)
  local sum = 0
  for i = 1, input.steps do sum = sum + ctx:run("noop", i) end
  return sum
end)

local dir = os.tmpname()
os.remove(dir)
local function clock() return athena.now() / 1000 end

local function world(mode)
  if not athena.isWorker() then os.execute("rm -rf " .. dir) end
  local w = athena.World.new { persistence = mode, persistencePath = dir, minWorkers = 2, maxWorkers = 2,
    taskQueues = { default = { concurrency = 64 } } }
  w:register(noop, chain)
  w:start()
  return w
end

local function activities(mode)
  local w = world(mode)
  local inputs = {}
  for i = 1, N * STEPS do inputs[i] = i end
  local t0 = clock()
  for _, h in ipairs(w:executeMany("noop", inputs)) do assert(h:result()) end
  local dt = clock() - t0
  w:shutdown()
  return N * STEPS / dt
end

local function workflows(mode)
  local w = world(mode)
  local inputs = {}
  for i = 1, N do inputs[i] = { steps = STEPS } end
  local t0 = clock()
  local want = STEPS * (STEPS + 1) // 2
  for _, h in ipairs(w:executeMany("chain", inputs)) do assert(h:result() == want) end
  local dt = clock() - t0
  w:shutdown()
  return N / dt
end

for _, mode in ipairs { "memory", "hybrid" } do
  local base = activities(mode)
  local wf = workflows(mode)
  print(string.format("%-7s %7.0f workflows/s of %d steps = %8.0f steps/s; plain activities %8.0f/s (%.2fx)",
    mode .. ":", wf, STEPS, wf * STEPS, base, wf * STEPS / base))
end
os.execute("rm -rf " .. dir)
