-- Activities of the distributed tests (scripts/dist-test, tests/lua/db_pg_backend_spec.lua),
-- all on task queue "dist". Every run appends "start <id> <attempt> <node>" when it starts
-- and "end <id> <attempt> <node>" when it returns (dist.sleep: "stop ..." when it is
-- interrupted) to $DIST_LOG.<node> (when DIST_LOG is
-- set): one write(2) per line in append mode, so a kill -9 loses no line written.
local athena = require "athena"

local M = {}
local node = os.getenv("DIST_NODE") or "?"
local logf

local function log(what, ctx)
  if logf == nil then
    local p = os.getenv("DIST_LOG")
    if p == nil then return end
    logf = assert(io.open(p .. "." .. node, "a"))
    logf:setvbuf("line")
  end
  logf:write(what, " ", ctx.id, " ", ctx.attempt, " ", node, "\n")
end

local OPTS = { taskQueue = "dist", retry = { maxAttempts = 5, initialInterval = "10ms", maxInterval = "100ms" } }

--- dist.noop(x) -> x
M.noop = athena.activity("dist.noop", function(ctx, x)
  log("start", ctx)
  log("end", ctx)
  return x
end, OPTS)

--- dist.sleep{ms} -> node: sleeps ms (a yield point every 50 ms); logs
--- "stop" instead of "end" when interrupted (a cancel, a fenced node)
M.sleep = athena.activity("dist.sleep", function(ctx, x)
  log("start", ctx)
  local ok, err = pcall(function()
    local left = x.ms
    while left > 0 do
      athena.sleep(left > 50 and 50 or left)
      left = left - 50
    end
  end)
  if not ok then
    log("stop", ctx)
    error(err, 0)
  end
  log("end", ctx)
  return node
end, OPTS)

--- dist.flaky(x) -> attempt: fails its first attempt with a retryable error
M.flaky = athena.activity("dist.flaky", function(ctx, x)
  log("start", ctx)
  if ctx.attempt == 1 then
    log("end", ctx)
    error(athena.RetryableError("first attempt fails", "10ms"))
  end
  log("end", ctx)
  return ctx.attempt
end, OPTS)

--- dist.dead{flag = path} -> "alive": a dead letter (quarantined after its one
--- attempt) while no file `flag` exists
M.dead = athena.activity("dist.dead", function(ctx, x)
  log("start", ctx)
  local f = io.open(x.flag, "r")
  log("end", ctx)
  if f == nil then error("no file " .. x.flag) end
  f:close()
  return "alive"
end, { taskQueue = "dist", retry = { maxAttempts = 1 }, failureStrategy = "quarantine" })

--- dist.count{n, ms} -> {from, node}: counts to n, a step every ms, heartbeating
--- each step as a checkpoint; an attempt resumes from ctx.lastHeartbeat
M.count = athena.activity("dist.count", function(ctx, x)
  log("start", ctx)
  local from = ctx.lastHeartbeat and ctx.lastHeartbeat.i or 0
  for i = from + 1, x.n do
    athena.sleep(x.ms)
    ctx:heartbeat({ i = i })
  end
  log("end", ctx)
  return { from = from, node = node }
end, OPTS)


-- The saga of tests/dist/saga.lua (workflows on any node): 5 steps, each registering its
-- undo once it completed; a step given `fail` = its number fails for good (ESTEP), and the
-- steps completed before it are undone in reverse order.
local STEP = { taskQueue = "dist", retry = { maxAttempts = 5, initialInterval = "10ms", maxInterval = "100ms",
  nonRetryable = { "ESTEP" } } }

--- dist.step{n, ms, fail} -> "step <n>": sleeps ms (yield points), fails when n == fail
M.step = athena.activity("dist.step", function(ctx, x)
  log("start", ctx)
  local left = x.ms or 0
  while left > 0 do
    athena.sleep(left > 50 and 50 or left)
    left = left - 50
  end
  log("end", ctx)
  if x.n == x.fail then error({ code = "ESTEP", message = "step " .. x.n .. " failed" }) end
  return "step " .. x.n
end, STEP)

--- dist.undo{n} -> "undo <n>": a compensation
M.undo = athena.activity("dist.undo", function(ctx, x)
  log("start", ctx)
  log("end", ctx)
  return "undo " .. x.n
end, STEP)

--- dist.saga{ms, fail} -> {"step 1", ..., "step 5"}, or compensated (ECOMPENSATED)
M.saga = athena.workflow("dist.saga", function(ctx, o)
  local out = {}
  for n = 1, 5 do
    out[n] = ctx:run("dist.step", { n = n, ms = o.ms, fail = o.fail })
    ctx:addCompensation("dist.undo", { n = n })
  end
  return out
end, { taskQueue = "dist", failureStrategy = "compensate", retry = { maxAttempts = 1 } })

-- The families of tests/dist/children.lua (child workflows on any node): a parent starts two
-- child workflows of 3 steps each and waits for both. Each returns the node its last segment ran
-- on (the node's name, not a command: replays on other nodes may differ) and ctx.parentId.
local FAMILY = { taskQueue = "dist", retry = { maxAttempts = 1 } }

--- dist.kid{k, ms, fail} -> {parent, node, steps}; its step `fail` fails under cascade (ESTEP)
M.kid = athena.workflow("dist.kid", function(ctx, o)
  local steps = {}
  for n = 1, 3 do
    local i = o.k * 10 + n
    steps[n] = ctx:run("dist.step", { n = i, ms = o.ms, fail = o.fail }, i == o.fail and { failureStrategy = "cascade" } or nil)
  end
  return { parent = ctx.parentId, node = node, steps = steps }
end, FAMILY)

--- dist.family{ms, cascade} -> {node, kids = {kid 1, kid 2}}; cascade: kid 1's step 2 fails
--- under cascade, which fails kid 1 (under cascade too), then the family, and cancels kid 2
M.family = athena.workflow("dist.family", function(ctx, o)
  local opts = o.cascade and { failureStrategy = "cascade" } or nil
  local a = ctx:executeChild("dist.kid", { k = 1, ms = o.ms, fail = o.cascade and 12 or nil }, opts)
  local b = ctx:executeChild("dist.kid", { k = 2, ms = o.cascade and o.ms * 3 or o.ms }, opts)
  local ra, ea = a:result()
  local rb, eb = b:result()
  if ea or eb then error(ea or eb) end
  return { node = node, kids = { ra, rb } }
end, FAMILY)

--- dist.closing(x) -> x, on task queue "dist.closing" (not in M.all: a
--- world registering it serves that queue with nobody, and it fails with
--- ETIMEDOUT 300 ms after it was scheduled)
M.closing = athena.activity("dist.closing", function(ctx, x)
  return x
end, { taskQueue = "dist.closing", scheduleToClose = "300ms" })

--- dist.gate{path} -> node: returns once file `path` exists (not in M.all: a test that opens
--- its gates registers it; fails after 60 s): a test orders the ends of its tasks by events,
--- not by time
M.gate = athena.activity("dist.gate", function(ctx, x)
  local deadline = athena.now() + 60000
  local f = io.open(x.path)
  while f == nil do
    if athena.now() >= deadline then error("gate " .. x.path .. " never opened") end
    athena.sleep(10)
    f = io.open(x.path)
  end
  f:close()
  return node
end, { taskQueue = "dist", retry = { maxAttempts = 1 } })

M.all = { M.noop, M.sleep, M.flaky, M.dead, M.count, M.step, M.undo, M.saga, M.kid, M.family }
return M
