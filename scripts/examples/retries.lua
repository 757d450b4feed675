-- Retries, real timeouts, heartbeats, cancellation and dead letters.
--   scripts/run scripts/examples/retries.lua
local athena = require "athena"

-- Fails twice with a transient error, then succeeds: retried with backoff.
local flaky = athena.activity("flaky", function(ctx)
  if ctx.attempt < 3 then error("HTTP 503 from upstream") end
  return "succeeded on attempt " .. ctx.attempt
end, { retry = { maxAttempts = 5, initialInterval = "20ms" } })

-- Spins in pure Lua, even under pcall: the timeout still stops it.
local stuck = athena.activity("stuck", function()
  while true do pcall(function() while true do end end) end
end, { timeout = "100ms", retry = { maxAttempts = 1 } })

-- Checkpoints with heartbeats; the next attempt resumes from the last one.
local batch = athena.activity("batch", function(ctx, input)
  local start = ctx.lastHeartbeat and ctx.lastHeartbeat.done or 0
  for i = start + 1, input.items do
    ctx:heartbeat({ done = i })
    if ctx.attempt == 1 and i == 3 then athena.sleep(1000) end -- stalls: no heartbeat
  end
  return { resumedFrom = start, attempts = ctx.attempt }
end, { heartbeatTimeout = "100ms", retry = { maxAttempts = 2, initialInterval = "10ms" } })

-- Always fails; quarantined as a dead letter instead of failing.
local poison = athena.activity("poison", function(ctx, input)
  error({ code = "EBADINPUT", message = "cannot handle " .. tostring(input.kind) })
end, { failureStrategy = "quarantine", retry = { maxAttempts = 2, initialInterval = "10ms" } })

local slow = athena.activity("slow", function() athena.sleep("10s") return "never" end)

local world = athena.World.new{ minWorkers = 2, persistence = "memory",
  taskQueues = { default = { concurrency = 4 } } }
world:register(flaky, stuck, batch, poison, slow)
world:start()

print("flaky:", world:execute("flaky", {}):result())
local _, err = world:execute("stuck", {}):result()
print("stuck:", err.code)
print("batch resumed from item", world:execute("batch", { items = 5 }):result().resumedFrom)

local p = world:execute("poison", { kind = "xml" })
local _, perr = p:result()
print("poison:", p:status(), perr.code, "attempts " .. p:query().attempt)
print("dead letters:", #world:getQuarantined())
print("purged:", world:purge(p.id))

local s = world:execute("slow", {})
athena.sleep("20ms")
print("cancel accepted:", s:cancel())
local _, cerr = s:result()
print("slow:", s:status(), cerr.code)

-- withRetry works anywhere, with a per-attempt timeout.
local n = 0
print("withRetry:", athena.withRetry(function()
  n = n + 1
  if n < 2 then return nil, "connection reset by peer" end
  return "ok after " .. n
end, athena.retryPatterns.quick))

local m = world:getMetrics().tasks
print(("completed %d, failed %d, retried %d, cancelled %d, quarantined %d"):format(
  m.completed, m.failed, m.retried, m.cancelled, m.quarantined))
world:shutdown()
