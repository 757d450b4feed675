-- Loop fairness benchmark (issue 15): athena bench/fairness.lua [N] [hbInterval] [hbTimeout]
-- One worker, concurrency 4, a backlog of N no-ops (default 300,000). A task
-- that asks for a 10 ms athena.sleep is claimed first (priority) and sleeps
-- on the same worker's loop while the backlog drains around it. Prints how
-- long it really slept (the target: within 50 ms), how many no-ops were still
-- unfinished when it woke, how many workers were declared lost, and the
-- backlog's tasks/s. Run with "1000000 100 500" for the heartbeat case.
local athena = require "athena"
local noop = athena.activity("noop", function(ctx, input) return input end)
local sleeper = athena.activity("sleeper", function(ctx)
  local t0 = athena.now(); athena.sleep(10); return athena.now() - t0
end)

local N = tonumber(arg and arg[1]) or 300000
local hbi = tonumber(arg and arg[2]) or 5000
local hbt = tonumber(arg and arg[3]) or 30000

local w = athena.World.new{ persistence = "memory", minWorkers = 1, maxWorkers = 1,
  taskQueues = { default = { concurrency = 4 } }, log = { level = "error" },
  heartbeatInterval = hbi, heartbeatTimeout = hbt }
w:register(noop, sleeper)
w:start()
local inputs = {}
for i = 1, N do inputs[i] = { i = i } end
local t0 = athena.now()
local hs = w:executeMany("noop", inputs)
local s = w:execute("sleeper", {}, { priority = 10 })
local slept = s:result()
local left = N - w:getMetrics().tasks.completed + 1 -- the sleeper is counted too
for i = 1, #hs do hs[i]:result() end
local dt = (athena.now() - t0) / 1000
local lost = 0
for _, wk in ipairs(w:getWorkers()) do
  if wk.id ~= "worker-1" then lost = lost + 1 end -- a replacement means a worker was declared lost
end
print(string.format("backlog %d, heartbeat %d/%d ms: asked 10 ms, slept %d ms (target <= 50); " ..
  "%d no-ops unfinished when it woke; workers replaced: %d; backlog %.0f tasks/s",
  N, hbi, hbt, slept, left, lost, N / dt))
w:shutdown()
