-- `athena serve`: a long-running world whose workers load the named
-- modules. It recovers what its persistence path holds (tasks and
-- schedules), serves the operations HTTP surface, and shuts down gracefully
-- on SIGINT or SIGTERM.
--   athena serve --port 8080 --persistence file --path /var/lib/athena --modules app.jobs
--   athena serve --db sqlite:app.db --config gateway.lua   (the gateway, GATEWAY.md)
--   athena serve --host 0.0.0.0 --auth ops-keys.lua         (keys for the operations surface)
--   --progress: a live status line on stderr when it is a terminal (bindings/l_ops.c)
-- Who may use the operations surface: docs/operations.md.
local athena = require "athena"
local core = require "athena.core"

local function usage(msg)
  error(("athena serve: %s\nusage: athena serve [--db URL [--config FILE]] [--host H] [--port P]"
    .. " [--ops-port P [--ops-host H]] [--auth FILE] [--allowed-hosts a,b] [--http2] [--progress]"
    .. " [--persistence memory|file|hybrid] [--path DIR] [--modules a,b] [--workers N]"
    .. " [--backend postgres://... [--node-id ID] [--schema NAME]]"):format(msg), 0)
end

return function(...)
  local args = { ... }
  local opts = { host = "127.0.0.1", port = 8080, persistence = "hybrid", path = ".athena", modules = {}, workers = 2 }
  local i = 1
  while i <= #args do
    local a, v = args[i], args[i + 1]
    if a == "--progress" then -- a flag: takes no value
      opts.progress = true
      i = i - 1
    elseif a == "--http2" then -- a flag: no value
      opts.http2 = true
      i = i - 1
    elseif a == "--host" and v then
      opts.host = v
    elseif a == "--ops-host" and v then
      opts.opsHost = v
    elseif a == "--ops-port" and v and tonumber(v) then
      opts.opsPort = math.tointeger(tonumber(v)) or usage("--ops-port needs an integer")
    elseif a == "--auth" and v then
      local chunk, err = loadfile(v)
      if not chunk then usage("cannot load --auth " .. v .. ": " .. tostring(err)) end
      opts.auth = chunk()
    elseif a == "--allowed-hosts" and v then
      opts.allowedHosts = {}
      for h in v:gmatch("[^,]+") do opts.allowedHosts[#opts.allowedHosts + 1] = h end
    elseif a == "--port" and v and tonumber(v) then
      opts.port = math.tointeger(tonumber(v)) or usage("--port needs an integer")
    elseif a == "--persistence" and v then
      opts.persistence = v
    elseif a == "--path" and v then
      opts.path = v
    elseif a == "--modules" and v then
      for m in v:gmatch("[^,]+") do opts.modules[#opts.modules + 1] = m end
    elseif a == "--db" and v then
      opts.db = v
    elseif a == "--config" and v then
      opts.config = v
    elseif a == "--backend" and v then
      opts.backend = v
    elseif a == "--node-id" and v then
      opts.nodeId = v
    elseif a == "--schema" and v then
      opts.schema = v
    elseif a == "--workers" and v and tonumber(v) then
      opts.workers = math.tointeger(tonumber(v)) or usage("--workers needs an integer")
    else
      usage("unknown or incomplete option " .. tostring(a))
    end
    i = i + 2
  end
  for _, m in ipairs(opts.modules) do require(m) end -- defines the activities
  if (opts.nodeId or opts.schema) and not opts.backend then usage("--node-id and --schema need --backend") end
  local backend = opts.backend and athena.PostgresBackend.new{ url = opts.backend, nodeId = opts.nodeId,
    schema = opts.schema }
  local world = athena.World.new{
    persistence = opts.persistence, persistencePath = opts.path, modules = opts.modules,
    minWorkers = opts.workers, maxWorkers = math.max(opts.workers, 10), backend = backend,
  }
  for _, def in pairs(athena.definitions) do world:register(def) end
  world:start()
  if opts.config and not opts.db then usage("--config needs --db") end
  local gateway = opts.db and { db = opts.db, config = opts.config } or nil
  local ok, s = pcall(world.serve, world, { host = opts.host, port = opts.port, gateway = gateway,
    auth = opts.auth, allowedHosts = opts.allowedHosts, http2 = opts.http2, opsPort = opts.opsPort,
    opsHost = opts.opsHost })
  if not ok then
    world:shutdown()
    error(s, 0)
  end
  local where = opts.backend and ("PostgreSQL backend, schema %s"):format(opts.schema or "athena")
    or ("at " .. opts.path)
  io.stderr:write(("athena: info: serving %s (persistence %s %s, modules: %s%s%s)\n"):format(
    s.url, opts.persistence, where, #opts.modules > 0 and table.concat(opts.modules, ",") or "none",
    gateway and ", gateway on" or "", s.opsUrl and (", operations on " .. s.opsUrl) or ""))
  -- the status line (only when stderr is a terminal); lines below clear it first
  local clear = opts.progress and core.ops.progressWatch(world) and "\r\27[K" or ""
  local sig = core.waitForSignal()
  while sig == "SIGHUP" do -- the gateway re-reads its databases' catalogs
    local rok, rerr = pcall(world.refreshGateway, world)
    io.stderr:write(clear, rok and "athena: info: SIGHUP: gateway catalog refreshed\n"
      or ("athena: warn: SIGHUP: gateway refresh failed: %s\n"):format(tostring(rerr)))
    sig = core.waitForSignal()
  end
  io.stderr:write(clear, ("athena: info: %s: shutting down\n"):format(sig))
  local r = world:shutdown()
  io.stderr:write(("athena: info: drained %d, requeued %d\n"):format(r.drained, r.requeued))
end
