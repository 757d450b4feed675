-- Quick start: define an activity, start a world, run tasks on worker
-- threads and read their results.   scripts/run scripts/examples/quickstart.lua
--
-- Workers re-run this file up to world:start() to find the handlers
-- (definition mode), so everything with side effects comes after start().
local athena = require "athena"

local greet = athena.activity("greet", function(ctx, input)
  if type(input.name) ~= "string" then
    error(athena.FatalError("name must be a string")) -- never retried
  end
  athena.sleep("10ms") -- yields to the worker's loop; other tasks keep running
  return { greeting = ("hello, %s"):format(input.name), task = ctx.id, attempt = ctx.attempt }
end, { timeout = "30s" })

local world = athena.World.new{ minWorkers = 2, persistence = "memory" }
world:register(greet)
world:start()

local h = world:execute("greet", { name = "Athena" })
local result, err = h:result()
assert(result, tostring(err))
print(result.greeting, "from task", result.task)

-- a batch, enqueued under one lock
local names = { "Ada", "Grace", "Barbara", "Margaret" }
local inputs = {}
for i, n in ipairs(names) do inputs[i] = { name = n } end
for i, hh in ipairs(world:executeMany("greet", inputs)) do
  local r = assert(hh:result())
  print(i, r.greeting)
end

-- a failure is a value, not a crash
local bad = world:execute("greet", { name = nil })
local r2, e2 = bad:result()
print("missing name ->", r2, tostring(e2))

local m = world:getMetrics()
print(("completed %d, failed %d, workers %d"):format(m.tasks.completed, m.tasks.failed, m.workers.total))
for _, w in ipairs(world:getWorkers()) do
  print(w.id, w.status, "completed " .. w.tasksCompleted, "memory " .. w.memoryKB .. " KB")
end
local s = world:shutdown()
print(("shutdown: drained %d, requeued %d"):format(s.drained, s.requeued))
