-- Scheduler benchmark (issue 5): athena bench/scheduler.lua [N] [seconds]
-- Registers N cron schedules (default 100,000), each firing once a minute
-- at its own second ("<s> * * * * *", so about N/60 fire every second),
-- and reports the registration time, the memory they take, and the firing
-- lateness (task creation - due time) over a few seconds of real firing,
-- while the fired tasks run on 2 workers.
local athena = require "athena"
local noop = athena.activity("noop", function() return true end)

local N = tonumber(arg and arg[1]) or 100000
local SECONDS = tonumber(arg and arg[2]) or 5

local function rss_mb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a"); f:close()
  return tonumber(s:match("VmRSS:%s+(%d+)")) / 1024
end

local world = athena.World.new{ persistence = "memory", minWorkers = 2, maxWorkers = 2,
  taskQueues = { default = { concurrency = 16 } } }
world:register(noop)
world:start()

collectgarbage(); collectgarbage()
local before = rss_mb()
local t0 = athena.now()
for i = 1, N do
  world:schedule("s" .. i, "noop", { i = i }, ("%d * * * * *"):format(i % 60))
end
local reg = athena.now() - t0
collectgarbage(); collectgarbage()
print(string.format("registered %d schedules in %d ms (%.1f us each); memory +%.0f MB",
  N, reg, reg * 1000 / N, rss_mb() - before))

-- Let them fire for a few seconds, then look at what fired.
local start = athena.now()
athena.sleep(SECONDS * 1000)
local late = {}
local offset = 0
repeat
  local page = world:queryTasks{ name = "noop", since = start, limit = 1000, offset = offset }
  for _, t in ipairs(page) do
    local due = tonumber(t.id:match("@(%d+)$"))
    if due then late[#late + 1] = t.createdAt - due end
  end
  offset = offset + #page
until #page < 1000
table.sort(late)
local function pct(p) return late[math.max(1, math.ceil(p * #late))] or 0 end
print(string.format("fired %d times in %d s: lateness p50 %d ms, p99 %d ms, max %d ms",
  #late, SECONDS, pct(0.5), pct(0.99), late[#late] or 0))
world:shutdown()
