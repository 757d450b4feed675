-- Cron and one-off schedules, driven by the manual clock so the example runs
-- a simulated day in milliseconds.   scripts/run scripts/examples/schedules.lua
local athena = require "athena"

local report = athena.activity("nightly-report", function(ctx, input)
  return { report = input.kind, at = os.date("!%Y-%m-%d %H:%M", athena.now() // 1000) }
end)

local world = athena.World.new{ persistence = "memory", clock = "manual" }
world:register(report)
world:start()

world:schedule("nightly", "nightly-report", { kind = "sales" }, "0 3 * * *")
world:schedule("hourly", "nightly-report", { kind = "health" }, "@hourly", { overlap = "skip" })
local once = world:scheduleOnce("nightly-report", { kind = "launch" }, world:now() + 90 * 60000)

world:advance("24h") -- fires every occurrence due in the next day, in order

for _, s in ipairs(world:getSchedules()) do
  print(("%-8s %-10s ran %2d times, next at %s"):format(s.id, s.cronExpression,
    s.totalExecutions, os.date("!%H:%M", s.nextExecution // 1000)))
end
local r = assert(world:query(once)).result
print("one-off ran at " .. r.at .. "; it is gone from the list: " .. tostring(#world:getSchedules() == 2))
for _, t in ipairs(world:queryTasks{ limit = 3 }) do
  print(t.id, t.status, t.result.report, t.result.at)
end
world:shutdown()
