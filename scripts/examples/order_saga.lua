-- An order saga: charge -> reserve -> ship, with a refund and a release
-- registered as compensations. Run once per failure strategy:
--   completed  nothing fails;
--   compensate shipping fails: release, then refund, run (LIFO) and the
--              order ends "compensated" with ECOMPENSATED;
--   retry      shipping fails once: the re-run replays charge and reserve
--              from the history and only ships again;
--   ignore     the workflow gets nil, err from ctx:run and decides itself;
--   cascade    a failing shipment fails the order at once.
--   scripts/run scripts/examples/order_saga.lua
local athena = require "athena"

local shipAttempts = {} -- per worker state; one worker below

local function step(name, fn)
  return athena.activity(name, fn, { retry = { maxAttempts = 1 } })
end

local charge = step("charge", function(ctx, o)
  return { payment = "pay-" .. o.id, amount = o.amount }
end)
local reserve = step("reserve", function(ctx, o)
  return { reservation = "res-" .. o.id }
end)
local ship = step("ship", function(ctx, o)
  shipAttempts[o.id] = (shipAttempts[o.id] or 0) + 1
  if o.shipFails and shipAttempts[o.id] <= o.shipFails then
    error({ code = "ECARRIER", message = "carrier unavailable" })
  end
  return { tracking = "trk-" .. o.id }
end)
local refund = step("refund", function(ctx, payment) return { refunded = payment.payment } end)
local release = step("release", function(ctx, r) return { released = r.reservation } end)

local order = athena.workflow("order", function(ctx, o)
  local payment = ctx:run("charge", o)
  ctx:addCompensation("refund", payment)
  local reservation = ctx:run("reserve", o)
  ctx:addCompensation("release", reservation)
  local shipment, err = ctx:run("ship", o)
  if shipment == nil then -- only under "ignore": ctx:run returned the error
    return { status = "held", reason = err.code }
  end
  return { status = "shipped", tracking = shipment.tracking }
end, { retry = { maxAttempts = 2, initialInterval = 10 } })

local world = athena.World.new { persistence = "memory", minWorkers = 1, maxWorkers = 1 }
world:register(charge, reserve, ship, refund, release, order)
world:start()

local function run(id, strategy, shipFails)
  local h = world:execute("order", { id = id, amount = 42, shipFails = shipFails },
    { failureStrategy = strategy })
  local r, err = h:result(10000)
  return h, r, err
end

local function names(task)
  local out = {}
  for _, id in ipairs(task.children) do out[#out + 1] = world:query(id).name end
  return table.concat(out, ",")
end

-- nothing fails
local h, r, err = run("o1", "retry", 0)
assert(r and r.tracking == "trk-o1", tostring(err))
print("completed:  ", h:status(), r.tracking)

-- compensate: the ship step fails on both runs; compensations run LIFO
h, r, err = run("o2", "compensate", 2)
assert(r == nil and err.code == "ECOMPENSATED" and err.cause.code == "ECARRIER", tostring(err))
assert(h:status() == "compensated")
local q = h:query()
assert(names(q) == "charge,reserve,ship,ship,release,refund", names(q))
assert(world:query(q.children[5]).result.released == "res-o2")
print("compensate: ", h:status(), err.code, names(q))

-- retry: shipping fails once; the second run replays charge and reserve
h, r, err = run("o3", "retry", 1)
assert(r and r.tracking == "trk-o3", tostring(err))
q = h:query()
assert(q.attempt == 2 and names(q) == "charge,reserve,ship,ship", names(q))
print("retry:      ", h:status(), "runs " .. q.attempt, names(q))

-- ignore: the workflow sees nil, err and holds the order
h, r, err = run("o4", "ignore", 5)
assert(r and r.status == "held" and r.reason == "ECARRIER", tostring(err))
print("ignore:     ", h:status(), r.status, r.reason)

-- cascade: the failing step fails the order, no re-run, no compensation
h, r, err = run("o5", "cascade", 5)
assert(r == nil and err.code == "ECARRIER" and h:status() == "failed", tostring(err))
q = h:query()
assert(q.attempt == 1 and names(q) == "charge,reserve,ship", names(q))
print("cascade:    ", h:status(), err.code, names(q))

world:shutdown()
