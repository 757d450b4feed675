-- One node of the distributed tests: a world on the PostgreSQL backend that
-- serves task queue "dist" (tests/dist/dist_jobs.lua) until SIGTERM/SIGINT.
-- Environment: ATHENA_PG_URL, DIST_SCHEMA, DIST_NODE (its nodeId), DIST_LOG
-- (activity logs, see dist_jobs.lua), DIST_CONC (slots per worker, 16),
-- DIST_WORKERS (2), DIST_POLL (pollInterval ms, 200), DIST_NOTIFY ("0":
-- poll only), DIST_HB / DIST_HBT (heartbeatInterval / heartbeatTimeout ms,
-- 500 / 3000), DIST_CRON ("1": registers the schedules of tests/dist/cron.lua,
-- the same definitions on every node), DIST_WEBHOOK (a webhookUrl). Prints "started" once it claims.
local athena = require "athena"
local core = require "athena.core"
local jobs = require "dist_jobs"
local env = os.getenv

local w = athena.World.new {
  backend = athena.PostgresBackend.new {
    url = assert(env("ATHENA_PG_URL"), "ATHENA_PG_URL"), nodeId = env("DIST_NODE"),
    schema = env("DIST_SCHEMA"), pollInterval = tonumber(env("DIST_POLL") or "200"),
    notify = env("DIST_NOTIFY") ~= "0", webhookUrl = env("DIST_WEBHOOK"),
  },
  modules = { "dist_jobs" }, minWorkers = 1, maxWorkers = 1,
  taskQueues = { dist = { workers = tonumber(env("DIST_WORKERS") or "2"), concurrency = tonumber(env("DIST_CONC") or "16") } },
  heartbeatInterval = tonumber(env("DIST_HB") or "500"), heartbeatTimeout = tonumber(env("DIST_HBT") or "3000"),
  persistence = "file", log = { level = env("DIST_LOGLEVEL") or "info" },
}
w:register(table.unpack(jobs.all))
w:start()
if env("DIST_CRON") == "1" then -- every second: "tick" catches up every missed one, "tick1" the latest
  w:schedule("tick", "dist.noop", {}, "* * * * * *", { catchUp = "all" })
  w:schedule("tick1", "dist.noop", {}, "* * * * * *", { catchUp = "one" })
end
io.stdout:write("started\n")
io.stdout:flush()
local sig = core.waitForSignal()
io.stderr:write("node ", tostring(env("DIST_NODE")), ": ", tostring(sig), ", shutting down\n")
w:shutdown(5000)
