-- The operations surface, and connectors calling HTTP APIs from tasks.
-- A world serves /healthz, /metrics, /api/* and the dashboard; its own tasks
-- then call that API with athena.http.request (non-blocking inside tasks:
-- many requests in flight per worker).   scripts/run scripts/examples/operations.lua
local athena = require "athena"

local probe = athena.activity("probe", function(ctx, input)
  local res, err = athena.http.request{ url = input.url, timeout = "5s" }
  if not res then return nil, err end
  ctx.log:debug("probed", { url = input.url, status = res.status })
  return { status = res.status, type = res.headers["content-type"], bytes = #res.body }
end, { retry = athena.retryPatterns.quick })

local world = athena.World.new{ persistence = "memory", minWorkers = 2,
  taskQueues = { default = { concurrency = 16 } }, log = { level = "warn" } }
world:register(probe)
world:start()

local server = world:serve{ port = 0 } -- any free port
print("serving " .. server.url .. " (open it in a browser for the dashboard)")

local paths = { "/healthz", "/metrics", "/api/metrics", "/api/workers", "/api/tasks?limit=5", "/nope" }
local inputs = {}
for i = 1, 60 do inputs[i] = { url = server.url .. paths[(i - 1) % #paths + 1] } end
local by_status = {}
for _, h in ipairs(world:executeMany("probe", inputs)) do
  local r = assert(h:result())
  by_status[r.status] = (by_status[r.status] or 0) + 1
end
print(("60 requests from tasks: %d answered 200, %d answered 404"):format(by_status[200] or 0, by_status[404] or 0))

-- the same API from the control script (blocking here)
local metrics = athena.json.decode(athena.http.request{ url = server.url .. "/api/metrics" }.body)
print(("the API reports %d completed tasks, %d workers"):format(metrics.tasks.completed, metrics.workers.total))
local prom = athena.http.request{ url = server.url .. "/metrics" }.body
print("Prometheus: " .. prom:match("athena_tasks_total{outcome=\"completed\"} %d+"))
world:shutdown()
