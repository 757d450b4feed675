-- Fan-out / fan-in: a "report" activity starts one "score" task per item on
-- another queue and waits for them. Inside a task, handle:result() yields
-- the coroutine, so one worker holds many waiting reports at once.
--   scripts/run scripts/examples/fanout.lua [reports] [items]
local athena = require "athena"

local config = {
  minWorkers = 2, persistence = "memory",
  taskQueues = { default = { concurrency = 20 }, reports = { workers = 1, concurrency = 50 } },
}

local score = athena.activity("score", function(ctx, item)
  athena.sleep(item.cost) -- pretend to call an API
  return item.value * item.value
end)

local report = athena.activity("report", function(ctx, input)
  -- inside a worker, World.new returns a view of the world running it
  local world = athena.World.new(config)
  local items = {}
  for i = 1, input.items do items[i] = { value = i, cost = 5 } end
  local total = 0
  for _, h in ipairs(world:executeMany("score", items)) do
    total = total + assert(h:result())
  end
  return { report = input.id, total = total }
end, { taskQueue = "reports" })

local world = athena.World.new(config)
world:register(score, report)
world:start()

local reports = tonumber(arg[1]) or 20
local items = tonumber(arg[2]) or 10
local inputs = {}
for i = 1, reports do inputs[i] = { id = i, items = items } end
local t0 = athena.now()
local expected = items * (items + 1) * (2 * items + 1) // 6
for _, h in ipairs(world:executeMany("report", inputs)) do
  local r = assert(h:result())
  assert(r.total == expected, ("report %d: %d ~= %d"):format(r.report, r.total, expected))
end
print(("%d reports x %d items: every total = %d, %d ms"):format(reports, items, expected, athena.now() - t0))
local m = world:getMetrics()
print(("tasks completed: %d"):format(m.tasks.completed))
world:shutdown()
