-- `athena serve`: a long-running world whose workers load the named
-- modules. It recovers what its persistence path holds (tasks and
-- schedules), serves the operations HTTP surface, and shuts down gracefully
-- on SIGINT or SIGTERM.
--   athena serve --port 8080 --persistence file --path /var/lib/athena --modules app.jobs
local athena = require "athena"
local core = require "athena.core"

local function usage(msg)
  error(("athena serve: %s\nusage: athena serve [--host H] [--port P] [--persistence memory|file|hybrid]"
    .. " [--path DIR] [--modules a,b] [--workers N]"):format(msg), 0)
end

return function(...)
  local args = { ... }
  local opts = { host = "127.0.0.1", port = 8080, persistence = "hybrid", path = ".athena", modules = {}, workers = 2 }
  local i = 1
  while i <= #args do
    local a, v = args[i], args[i + 1]
    if a == "--host" and v then
      opts.host = v
    elseif a == "--port" and v and tonumber(v) then
      opts.port = math.tointeger(tonumber(v)) or usage("--port needs an integer")
    elseif a == "--persistence" and v then
      opts.persistence = v
    elseif a == "--path" and v then
      opts.path = v
    elseif a == "--modules" and v then
      for m in v:gmatch("[^,]+") do opts.modules[#opts.modules + 1] = m end
    elseif a == "--workers" and v and tonumber(v) then
      opts.workers = math.tointeger(tonumber(v)) or usage("--workers needs an integer")
    else
      usage("unknown or incomplete option " .. tostring(a))
    end
    i = i + 2
  end
  for _, m in ipairs(opts.modules) do require(m) end -- defines the activities
  local world = athena.World.new{
    persistence = opts.persistence, persistencePath = opts.path, modules = opts.modules,
    minWorkers = opts.workers, maxWorkers = math.max(opts.workers, 10),
  }
  for _, def in pairs(athena.definitions) do world:register(def) end
  world:start()
  local s = world:serve{ host = opts.host, port = opts.port }
  io.stderr:write(("athena: info: serving %s (persistence %s at %s, modules: %s)\n"):format(
    s.url, opts.persistence, opts.path, #opts.modules > 0 and table.concat(opts.modules, ",") or "none"))
  local sig = core.waitForSignal()
  io.stderr:write(("athena: info: %s: shutting down\n"):format(sig))
  local r = world:shutdown()
  io.stderr:write(("athena: info: drained %d, requeued %d\n"):format(r.drained, r.requeued))
end
