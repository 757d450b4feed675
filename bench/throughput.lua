-- Throughput benchmark (issue 2): athena bench/throughput.lua [N]
-- Runs N no-op activities on 2 workers in memory mode, enqueued with
-- executeMany and then with single execute calls; prints tasks/s, the
-- enqueue->start latency at about half the measured rate, the bare limit
-- (one Lua state doing the same JSON encode + decode + call in a loop, with
-- lua-cjson and with Athena's codec) and the RSS with 1,000,000 tasks queued.
local athena = require "athena"
local noop = athena.activity("noop", function(ctx, input) return input end)

local function rss_mb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a"); f:close()
  return tonumber(s:match("VmRSS:%s+(%d+)")) / 1024
end

if arg and arg[1] == "rss" then
  -- 1,000,000 tasks queued (delayed by an hour, so none runs).
  local before = rss_mb()
  local w = athena.World.new{ persistence = "memory", minWorkers = 1, maxWorkers = 1 }
  w:register(noop)
  w:start()
  local M = 1000000
  local chunk = {}
  for i = 1, 10000 do chunk[i] = { i = i } end
  for _ = 1, M / 10000 do
    w:executeMany("noop", chunk, { delay = "1h" }) -- handles dropped: the engine keeps the tasks
  end
  collectgarbage(); collectgarbage()
  local m = w:getMetrics()
  print(string.format("RSS with %d tasks queued: %.0f MB (%.0f MB before the world)",
    m.tasks.scheduled, rss_mb(), before))
  w:shutdown()
  return
end

local N = tonumber(arg and arg[1]) or 200000

local function clock() return athena.now() / 1000 end

local world = athena.World.new{ persistence = "memory", minWorkers = 2, maxWorkers = 2 }
world:register(noop)
world:start()
local inputs = {}
for i = 1, N do inputs[i] = { i = i } end

-- What collecting metrics costs: executeMany runs on fresh worlds with and
-- without the latency and throughput samples, interleaved (three each, the
-- median kept) so that warm-up and machine noise fall on both sides.
local function fresh_run(collect)
  local w = athena.World.new{ persistence = "memory", minWorkers = 2, maxWorkers = 2, collectMetrics = collect }
  w:register(noop)
  w:start()
  local t0 = athena.now()
  local hs = w:executeMany("noop", inputs)
  for i = 1, #hs do hs[i]:result() end
  local rate = N / ((athena.now() - t0) / 1000)
  w:shutdown()
  hs, w = nil, nil
  collectgarbage()
  return rate
end
local with, without = {}, {}
for _ = 1, 3 do
  without[#without + 1] = fresh_run(false)
  with[#with + 1] = fresh_run(true)
end
table.sort(with)
table.sort(without)
local METRICS_WITH, METRICS_WITHOUT = with[2], without[2]

local function drain(handles)
  for i = 1, #handles do
    local _, err = handles[i]:result()
    if err then error(tostring(err)) end
  end
end

-- warm up
drain(world:executeMany("noop", { { i = 0 }, { i = 1 } }))

local t0 = clock()
local hs = world:executeMany("noop", inputs)
local t1 = clock()
drain(hs)
local t2 = clock()
hs = nil
collectgarbage()
local many = N / (t2 - t0)
print(string.format("executeMany (concurrency 1): %d tasks in %.3f s: %.0f tasks/s (enqueue %.0f/s)",
  N, t2 - t0, many, N / (t1 - t0)))
print(string.format("  metrics cost, median of 3 interleaved runs each: %.0f tasks/s with, %.0f without (%.2fx)",
  METRICS_WITH, METRICS_WITHOUT, METRICS_WITH / METRICS_WITHOUT))

t0 = clock()
hs = {}
for i = 1, N do hs[i] = world:execute("noop", inputs[i]) end
t1 = clock()
drain(hs)
t2 = clock()
hs = nil
collectgarbage()
local single = N / (t2 - t0)
print(string.format("execute:     %d tasks in %.3f s: %.0f tasks/s (enqueue %.0f/s)",
  N, t2 - t0, single, N / (t1 - t0)))

-- Latency at a steady rate: batches of 50 paced by sleeping (not spinning:
-- the control thread must not steal a core from the two workers), at half
-- the 250,000 tasks/s target and at half the rate just measured;
-- queueWait percentiles cover the latest 10,000 starts.
local function paced(rate)
  local batch = 50
  local interval = batch / rate
  local start = clock()
  local sent = 0
  local pending = {}
  local total = math.min(N, rate * 2)
  local b = {}
  for i = 1, batch do b[i] = { i = i } end
  while sent < total do
    local due = start + (sent / batch) * interval
    local ahead = math.floor((due - clock()) * 1000)
    if ahead > 0 then athena.sleep(ahead) end
    local h = world:executeMany("noop", b)
    pending[#pending + 1] = h[#h]
    sent = sent + batch
  end
  for _, h in ipairs(pending) do h:result() end
  local lat = world:getMetrics().latency.queueWait
  print(string.format("enqueue->start at %d tasks/s: p50 %.3f ms, p99 %.3f ms", rate, lat.p50, lat.p99))
end
paced(125000)
paced(math.floor(many / 2))

-- The bare limit: the same per-task work in one Lua state, no threads.
local function bare(encode, decode, label)
  local handler = function(ctx, input) return input end
  local ctx = {}
  local n = N
  t0 = clock()
  for i = 1, n do
    local input = decode(encode(inputs[i]))
    local out = handler(ctx, input)
    decode(encode(out))
  end
  t1 = clock()
  local r = n / (t1 - t0)
  print(string.format("bare limit (%s encode+decode+call, 1 state): %.0f /s; executeMany reaches %.2fx of it",
    label, r, many / r))
end
local ok, cjson = pcall(require, "cjson")
if ok then bare(cjson.encode, cjson.decode, "lua-cjson") end
bare(athena.json.encode, athena.json.decode, "athena.json")
world:shutdown()

-- RSS with 1,000,000 tasks queued, measured in a fresh process.
local self = arg[-1] and (arg[-1] .. " " .. arg[0]) or nil
if self then
  local p = io.popen(self .. " rss")
  io.write(p:read("a")); p:close()
end
