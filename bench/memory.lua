-- Memory over a long run (issue 15): athena bench/memory.lua [N] [persistence]
-- N no-ops (default 1,000,000) through a world in rounds of 10,000
-- (executeMany, then every result), handles dropped after each round. Prints
-- RSS and the tasks held in RAM at every tenth of the run, the growth after
-- warm-up (the first fifth; target < 100 MB) and over the second half,
-- tasks/s per tenth (flat per-task cost), how late a 10 ms athena.sleep
-- wakes while each round runs (on-time timers), and how long
-- queryTasks{status="completed", limit=20} takes at the end (target < 50 ms).
-- persistence: memory (default), hybrid or file.
local athena = require "athena"
local noop = athena.activity("noop", function(ctx, input) return input end)
-- a timer probe: how much later than asked a 10 ms sleep wakes
local probe = athena.activity("probe", function()
  local t = athena.now()
  athena.sleep(10)
  return athena.now() - t - 10
end)

local N = tonumber(arg and arg[1]) or 1000000
local mode = arg and arg[2] or "memory"
local dir
if mode ~= "memory" then
  local p = io.popen("mktemp -d /tmp/athena-bench-memory-XXXXXX")
  dir = p:read("l")
  p:close()
end

local function rss_mb()
  local f = io.open("/proc/self/status")
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s+(%d+)")) / 1024
end

local w = athena.World.new { persistence = mode, persistencePath = dir, minWorkers = 2, maxWorkers = 2,
  log = { level = "warn" } }
w:register(noop, probe)
w:start()
local ROUND = 10000
local chunk = {}
for i = 1, ROUND do chunk[i] = { i = i } end
local rounds = N // ROUND
local tenth = math.max(1, rounds // 10)
-- warm-up: the first fifth (SQLite's page cache, 64 MB, and the malloc
-- arenas fill there); after it, RSS must stay flat
local warm, warm_rss = math.max(1, rounds // 5), nil
local half, half_rss = math.max(1, rounds // 2), nil
local t0 = athena.now()
local lines = {}
local late_max, late_all = 0, 0
for r = 1, rounds do
  local p = w:execute("probe")
  local hs = w:executeMany("noop", chunk)
  for i = 1, #hs do hs[i]:result() end
  hs = nil
  local late = assert(p:result())
  late_max, late_all = math.max(late_max, late), math.max(late_all, late)
  if r == warm then
    collectgarbage(); collectgarbage()
    warm_rss = rss_mb()
  end
  if r == half then
    collectgarbage(); collectgarbage()
    half_rss = rss_mb()
  end
  if r % tenth == 0 then
    collectgarbage(); collectgarbage()
    local now = athena.now()
    lines[#lines + 1] = string.format("  %8d tasks: RSS %6.1f MB, %7d tasks in RAM, %.0f tasks/s over the last tenth, " ..
      "a 10 ms sleep woke up to %d ms late", r * ROUND, rss_mb(), w:getMetrics().tasks.resident,
      tenth * ROUND / ((now - t0) / 1000), late_max)
    t0, late_max = now, 0
  end
end
for _, l in ipairs(lines) do print(l) end
collectgarbage(); collectgarbage()
local final = rss_mb()
local q0 = athena.now()
local got = w:queryTasks { status = "completed", limit = 20 }
local qms = athena.now() - q0
print(string.format("%s, %d no-ops: RSS after warm-up (%d) %.1f MB, at half %.1f MB, at the end %.1f MB: " ..
  "growth %.1f MB (target < 100), over the second half %.1f MB; queryTasks{completed, limit 20}: %d ms, " ..
  "%d rows (target < 50 ms); completed %d; a 10 ms sleep woke at most %d ms late",
  mode, rounds * ROUND, warm * ROUND, warm_rss, half_rss, final, final - warm_rss, final - half_rss, qms, #got,
  w:getMetrics().tasks.completed, late_all))
w:shutdown()
if dir then os.execute("rm -rf " .. dir) end
