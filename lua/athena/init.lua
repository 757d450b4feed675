-- require "athena": the Lua API (DESIGN.md §3) over the C engine in
-- athena.core. Validation of configs and definitions lives here; the hot
-- paths (execute, executeMany, result) are C methods of the world.
local core = require "athena.core"
local errors = require "athena.errors"

local M = {}

M.version = core.version
M.sleep = core.sleep
M.now = core.now
M.json = core.json
M.http = core.http
M.db = require "athena.db"
M.null = core.json.null --- JSON null where a table needs a value
M.errors = errors
M.Error = core.Error
--- athena.isWorker() -> true in a worker's Lua state. A script re-run by
-- workers in definition mode can use it to skip side effects before start().
M.isWorker = core.isWorker

local fmt = string.format

-- Programmer mistakes with a wrong type raise Lua's standard message.
-- `level` defaults to 3: the caller of the function that called argerror.
local function argerror(n, fname, expected, value, level)
  error(fmt("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected,
    type(value) == "userdata" and (getmetatable(value) or {}).__name or type(value)), level or 3)
end

-- Wrong values raise an EINVAL error value.
local function invalid(msg, ...)
  error(errors.new("EINVAL", fmt(msg, ...)), 3)
end

local function show(v)
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end

local function isinteger(v)
  return math.type(v) == "integer" or (math.type(v) == "float" and v == math.floor(v) and v == v
    and v > -2^53 and v < 2^53)
end

local function duration(field, v, positive)
  local ok, ms = pcall(core.duration, v)
  if not ok then invalid("invalid %s: %s (must be a duration: ms or \"500ms\" \"30s\" \"5m\" \"1h\" \"1d\")", field, show(v)) end
  if positive and ms == 0 then invalid("invalid %s: 0 (must be > 0)", field) end
  return ms
end

local function oneof(field, v, set)
  for _, s in ipairs(set) do
    if v == s then return v end
  end
  invalid("invalid %s: %s (must be one of %s)", field, show(v), table.concat(set, ", "))
end

-- Failure strategy names: one validator (C, shared with execute's options).
local function strategy(field, v)
  local ok, err = pcall(core.checkStrategy, v, field)
  if not ok then error(err, 3) end
  return v
end
local QUEUE_NAME = "^[A-Za-z0-9_.-]+$"

local function queue_name(field, v)
  if type(v) ~= "string" or #v < 1 or #v > 64 or not v:match(QUEUE_NAME) then
    invalid("invalid %s: %s (must match [A-Za-z0-9_.-]{1,64})", field, show(v))
  end
  return v
end

-------------------------------------------------------------- retry config

local RETRY_KEYS = {
  maxAttempts = true, backoff = true, initialInterval = true, maxInterval = true,
  multiplier = true, nonRetryable = true,
}

local function check_retry(field, r)
  if type(r) ~= "table" then invalid("invalid %s: %s (must be a table)", field, show(r)) end
  for k in pairs(r) do
    if not RETRY_KEYS[k] then invalid("unknown option %s.%s", field, tostring(k)) end
  end
  local out = {}
  if r.maxAttempts ~= nil then
    if not isinteger(r.maxAttempts) or r.maxAttempts < 1 then
      invalid("invalid %s.maxAttempts: %s (must be an integer >= 1)", field, show(r.maxAttempts))
    end
    out.maxAttempts = math.tointeger(r.maxAttempts)
  end
  out.backoff = r.backoff == nil and "exponential"
    or oneof(field .. ".backoff", r.backoff, { "exponential", "linear", "constant" })
  out.initialInterval = r.initialInterval == nil and 1000 or duration(field .. ".initialInterval", r.initialInterval)
  out.maxInterval = r.maxInterval == nil and 60000 or duration(field .. ".maxInterval", r.maxInterval)
  if out.maxInterval < out.initialInterval then
    invalid("invalid %s.maxInterval: %s (must be >= initialInterval)", field, show(r.maxInterval))
  end
  if r.multiplier ~= nil and (type(r.multiplier) ~= "number" or r.multiplier < 1 or r.multiplier ~= r.multiplier) then
    invalid("invalid %s.multiplier: %s (must be a number >= 1)", field, show(r.multiplier))
  end
  out.multiplier = r.multiplier or 2
  out.nonRetryable = {}
  if r.nonRetryable ~= nil then
    if type(r.nonRetryable) ~= "table" then
      invalid("invalid %s.nonRetryable: %s (must be a list of strings)", field, show(r.nonRetryable))
    end
    for i, v in ipairs(r.nonRetryable) do
      if type(v) ~= "string" then
        invalid("invalid %s.nonRetryable[%d]: %s (must be a string)", field, i, show(v))
      end
      out.nonRetryable[i] = v
    end
  end
  return out
end
M._checkRetry = check_retry
M._checkDuration = duration

---------------------------------------------------------------- definitions

--- Every definition made in this Lua state, by name (the latest wins).
M.definitions = {}

local Definition = { __name = "athena.Definition" }
Definition.__index = Definition
M.Definition = Definition

local DEF_KEYS = {
  retry = true, timeout = true, scheduleToClose = true, heartbeatTimeout = true,
  taskQueue = true, priority = true, failureStrategy = true,
}

local function check_name(fname, name)
  if type(name) ~= "string" then argerror(1, fname, "string", name, 4) end
  if #name < 1 or #name > 128 or name:find("[%s%c]") then
    invalid("invalid name: %s (1-128 bytes, no whitespace or control characters)", show(name))
  end
end

local function define(kind, name, handler, options)
  check_name(kind, name)
  if type(handler) ~= "function" then argerror(2, kind, "function", handler) end
  if options ~= nil and type(options) ~= "table" then argerror(3, kind, "table", options) end
  options = options or {}
  local opts = {}
  for k, v in pairs(options) do
    if not DEF_KEYS[k] then invalid("unknown option %s", tostring(k)) end
    opts[k] = v
  end
  if opts.retry ~= nil then opts.retry = check_retry("retry", opts.retry) end
  for _, k in ipairs { "timeout", "scheduleToClose", "heartbeatTimeout" } do
    if opts[k] ~= nil then opts[k] = duration(k, opts[k], true) end
  end
  if kind == "activity" and opts.timeout == nil then opts.timeout = 300000 end
  opts.taskQueue = opts.taskQueue == nil and "default" or queue_name("taskQueue", opts.taskQueue)
  if opts.priority ~= nil and not isinteger(opts.priority) then
    invalid("invalid priority: %s (must be an integer)", show(opts.priority))
  end
  opts.priority = math.tointeger(opts.priority or 0)
  if opts.failureStrategy ~= nil then strategy("failureStrategy", opts.failureStrategy) end
  core.define(name, handler)
  local def = setmetatable({ kind = kind, name = name, handler = handler, options = opts }, Definition)
  M.definitions[name] = def
  return def
end

--- athena.activity(name, handler, options) -> definition
function M.activity(name, handler, options)
  return define("activity", name, handler, options)
end

--- athena.workflow(name, handler, options) -> definition (SEMANTICS §9):
-- the handler runs as segments (kept parked, or replayed against its history) by athena.workflow.
function M.workflow(name, handler, options)
  return define("workflow", name, handler, options)
end

-------------------------------------------------------------------- errors

--- athena.FatalError(msg): never retried.
function M.FatalError(msg)
  return errors.new("EFATAL", msg ~= nil and tostring(msg) or "fatal error",
    { name = "FatalError", retryable = false })
end

--- athena.RetryableError(msg, retryAfter): retried after exactly retryAfter.
function M.RetryableError(msg, retryAfter)
  local ra = retryAfter ~= nil and duration("retryAfter", retryAfter) or nil
  return errors.new("ERETRYABLE", msg ~= nil and tostring(msg) or "retryable error",
    { name = "RetryableError", retryable = true, retryAfter = ra })
end

--------------------------------------------------------------------- retry

local retry = require "athena.retry"
M.retryPatterns = retry.patterns
M.shouldRetryError = retry.shouldRetryError

--- athena.withRetry(fn, opts) -> fn's values | nil, err
function M.withRetry(fn, opts)
  return retry.withRetry(fn, opts, check_retry)
end

--- athena.retryable(fn, opts) -> function
function M.retryable(fn, opts)
  return retry.retryable(fn, opts, check_retry)
end

--------------------------------------------------------------------- world

------------------------------------------------------------------ backends

local WEBHOOK_EVENTS = { "task.completed", "task.failed", "task.retrying", "task.quarantined",
  "task.cancelled", "schedule.fired", "worker.lost" }
local LocalBackend = { __name = "athena.LocalBackend" }
LocalBackend.__index = LocalBackend
M.LocalBackend = LocalBackend
local BACKEND_KEYS = { path = true, webhookUrl = true, webhookEvents = true }

-- webhookUrl and webhookEvents of a backend's options, checked into b
local function webhook_options(opts, b)
  if opts.webhookUrl ~= nil then
    if type(opts.webhookUrl) ~= "string" or not opts.webhookUrl:match("^https?://[^%s]+$") then
      invalid("invalid webhookUrl: %s (an http:// or https:// URL)", show(opts.webhookUrl))
    end
    b.webhookUrl = opts.webhookUrl
  end
  if opts.webhookEvents ~= nil then
    if type(opts.webhookEvents) ~= "table" then invalid("invalid webhookEvents: %s (a list of event names)", show(opts.webhookEvents)) end
    for i, e in ipairs(opts.webhookEvents) do
      local bit
      for n, name in ipairs(WEBHOOK_EVENTS) do
        if e == name then bit = n - 1 end
      end
      if not bit then invalid("invalid webhookEvents[%d]: %s (one of %s)", i, show(e), table.concat(WEBHOOK_EVENTS, ", ")) end
      b.events = b.events | (1 << bit)
    end
    if b.events == 0 then invalid("invalid webhookEvents: {} (name at least one event)") end
  end
end

--- athena.LocalBackend.new{path, webhookUrl, webhookEvents} (SEMANTICS §15)
function LocalBackend.new(opts)
  if opts ~= nil and type(opts) ~= "table" then argerror(1, "new", "table", opts) end
  opts = opts or {}
  local b = { events = 0 }
  for k in pairs(opts) do
    if not BACKEND_KEYS[k] then invalid("unknown option %s", tostring(k)) end
  end
  if opts.path ~= nil then
    if type(opts.path) ~= "string" or opts.path == "" then invalid("invalid path: %s (a non-empty string)", show(opts.path)) end
    b.path = opts.path
  end
  webhook_options(opts, b)
  return setmetatable(b, LocalBackend)
end

-- athena.Backend: persistence through Lua functions (bindings/l_backend.c).
-- They run in the backend's own Lua state, so they travel as a module name
-- or as bytecode of functions without upvalues.
local Backend = { __name = "athena.Backend" }
Backend.__index = Backend
M.Backend = Backend
local BACKEND_FUNCTIONS = { "persist", "load" }
local CUSTOM_KEYS = { module = true, persist = true, load = true, stream = true, authorize = true,
  config = true, timeout = true }

local function carry(name, fn)
  if type(fn) ~= "function" then invalid("invalid %s: %s (a function)", name, show(fn)) end
  for i = 1, math.huge do
    local up = debug.getupvalue(fn, i)
    if up == nil then break end
    if up ~= "_ENV" then
      invalid("invalid %s: a closure with the upvalue %s (the function runs in the backend's own Lua state, " ..
        "where upvalues cannot follow it: use globals, the config option, or module = \"...\")", name, up)
    end
  end
  local ok, code = pcall(string.dump, fn)
  if not ok then invalid("invalid %s: a C function cannot be carried to the backend's state", name) end
  return code
end

--- athena.Backend.new{module = name} or {persist, load, stream, authorize = fn}, and {config, timeout}
function Backend.new(opts)
  if type(opts) ~= "table" then argerror(1, "new", "table", opts) end
  for k in pairs(opts) do
    if not CUSTOM_KEYS[k] then invalid("unknown option %s", tostring(k)) end
  end
  local b = {}
  if opts.module ~= nil then
    if type(opts.module) ~= "string" or not opts.module:match("^[%w_%-]+[%w_%.%-]*$") then
      invalid("invalid module: %s (a module name, as require takes it)", show(opts.module))
    end
    for _, f in ipairs({ "persist", "load", "stream", "authorize" }) do
      if opts[f] ~= nil then invalid("invalid %s: module and functions are exclusive (the module's table has them)", f) end
    end
    b.module = opts.module
  else
    for _, f in ipairs(BACKEND_FUNCTIONS) do
      if opts[f] == nil then invalid("missing %s (a function, or module = \"...\")", f) end
      b[f] = carry(f, opts[f])
    end
    if opts.stream ~= nil then b.stream = carry("stream", opts.stream) end
    if opts.authorize ~= nil then b.authorize = carry("authorize", opts.authorize) end
  end
  if opts.config ~= nil then
    if type(opts.config) ~= "table" then invalid("invalid config: %s (a table of JSON values)", show(opts.config)) end
    local ok, text = pcall(core.json.encode, opts.config)
    if not ok then invalid("invalid config: %s", tostring(type(text) == "table" and text.message or text)) end
    b.config = text
  end
  b.timeoutMs = opts.timeout ~= nil and duration("timeout", opts.timeout, true) or 10000
  return setmetatable(b, Backend)
end

-- athena.PostgresBackend.new{ url, nodeId, schema, pollInterval, notify, webhookUrl, webhookEvents }:
-- several processes share one queue in PostgreSQL (docs/backend-postgres.md).
local PostgresBackend = { __name = "athena.PostgresBackend" }
PostgresBackend.__index = PostgresBackend
M.PostgresBackend = PostgresBackend
local PG_KEYS = { url = true, nodeId = true, schema = true, pollInterval = true, notify = true,
  webhookUrl = true, webhookEvents = true }

function PostgresBackend.new(opts)
  if type(opts) ~= "table" then argerror(1, "new", "table", opts) end
  for k in pairs(opts) do
    if not PG_KEYS[k] then invalid("unknown option %s (PostgresBackend takes url, nodeId, schema, pollInterval, notify, webhookUrl, webhookEvents)", tostring(k)) end
  end
  if type(opts.url) ~= "string" or not (opts.url:match("^postgres://") or opts.url:match("^postgresql://")) then
    invalid("invalid url: %s (postgres://user:password@host:port/database)",
      type(opts.url) == "string" and "not a postgres:// URL" or show(opts.url))
  end
  local b = { url = opts.url, events = 0 }
  webhook_options(opts, b)
  for _, k in ipairs({ "nodeId", "schema" }) do
    local v = opts[k]
    if v ~= nil then
      if type(v) ~= "string" or v == "" or #v > 200 then invalid("invalid %s: %s (a non-empty string)", k, show(v)) end
      b[k] = v
    end
  end
  b.pollInterval = opts.pollInterval ~= nil and duration("pollInterval", opts.pollInterval, true) or 1000
  if opts.notify ~= nil and type(opts.notify) ~= "boolean" then invalid("invalid notify: %s (a boolean)", show(opts.notify)) end
  b.notify = opts.notify ~= false
  return setmetatable(b, PostgresBackend)
end

-- The scalar options are described once, in C (engine/runtime/config.c):
-- name, kind, default, range and what a valid value is. core.configMap
-- hands that table over; the options with structure follow it here.
local OPTIONS = core.configMap
local STRUCTURED = { taskQueues = true, modules = true, database = true, backend = true }
local CONFIG, GROUPS = {}, {} -- top-level keys; "log" -> { level = option, ... }
for _, o in ipairs(OPTIONS) do
  local group, key = o.name:match("^(%w+)%.(%w+)$")
  if group then
    GROUPS[group] = GROUPS[group] or {}
    GROUPS[group][key] = o
    CONFIG[group] = true
  else
    CONFIG[o.name] = true
  end
end
for k in pairs(STRUCTURED) do CONFIG[k] = true end
local QUEUE_KEYS = { concurrency = true, workers = true, limit = true }

local function int_field(field, v, lo, hi, rule)
  if not isinteger(v) or v < lo or (hi and v > hi) then
    invalid("invalid %s: %s (%s)", field, show(v), rule)
  end
  return math.tointeger(v)
end

-- Bytes: an integer, or "<n>B" "<n>KB" "<n>MB" "<n>GB".
local UNITS = { B = 1, KB = 1024, MB = 1024 ^ 2, GB = 1024 ^ 3 }
local function bytes(v)
  if isinteger(v) then return math.tointeger(v) end
  if type(v) ~= "string" then return nil end
  local n, unit = v:match("^(%d+)([KMG]?B)$")
  return n and math.tointeger(tonumber(n) * UNITS[unit])
end

-- Checks one option's value (nil: its default); returns what C reads.
local function check_option(o, v)
  if v == nil then return o.default end
  local k = o.kind
  if k == "int" or k == "count" then
    return int_field(o.name, v, o.min, o.max, o.rule)
  elseif k == "ms" then
    return duration(o.name, v, o.min > 0)
  elseif k == "enum" then
    return oneof(o.name, v, o.values)
  end
  local ok
  if k == "number" then
    ok = type(v) == "number" and v == v and v >= o.min and (o.max == nil or v <= o.max)
  elseif k == "boolean" then
    ok = type(v) == "boolean"
  elseif k == "string" then
    ok = type(v) == "string" and v ~= ""
  elseif k == "bytes" then
    local n = bytes(v)
    ok = n ~= nil and n >= o.min
    if ok then return n end
  end
  if not ok then invalid("invalid %s: %s (%s)", o.name, show(v), o.rule) end
  return v
end

local function check_config(config)
  local c = {}
  for k, v in pairs(config) do
    if not CONFIG[k] then invalid("unknown option %s", tostring(k)) end
    if GROUPS[k] ~= nil then
      if type(v) ~= "table" then invalid("invalid %s: %s (a table)", k, show(v)) end
      for sub in pairs(v) do
        if not GROUPS[k][sub] then invalid("unknown option %s.%s", k, tostring(sub)) end
      end
    end
  end
  -- C's options, by their names ("log.level"): defaults, then checks
  for _, o in ipairs(OPTIONS) do
    local group, key = o.name:match("^(%w+)%.(%w+)$")
    local v
    if group then v = (config[group] or {})[key] else v = config[o.name] end
    if o.name == "maxWorkers" and v == nil then
      v = math.max(o.default, c.minWorkers) -- the default pool grows past minWorkers
    end
    c[o.name] = check_option(o, v)
  end
  if c.maxWorkers < c.minWorkers then
    if config.minWorkers == nil then
      invalid("invalid maxWorkers: %s (must be >= minWorkers, which defaults to 2: set minWorkers = %s too)",
        show(c.maxWorkers), show(c.maxWorkers))
    end
    invalid("invalid maxWorkers: %s (must be >= minWorkers)", show(c.maxWorkers))
  end
  if c.scaleDownThreshold >= c.scaleThreshold then
    invalid("invalid scaleDownThreshold: %s (must be < scaleThreshold)", show(c.scaleDownThreshold))
  end
  if c.heartbeatTimeout <= c.heartbeatInterval then
    invalid("invalid heartbeatTimeout: %s (must be > heartbeatInterval)", show(config.heartbeatTimeout or c.heartbeatTimeout))
  end
  local queues = {}
  if config.taskQueues ~= nil then
    if type(config.taskQueues) ~= "table" then invalid("invalid taskQueues: %s (a table)", show(config.taskQueues)) end
    for name, q in pairs(config.taskQueues) do
      queue_name("taskQueues key", name)
      if type(q) ~= "table" then invalid("invalid taskQueues.%s: %s (a table)", name, show(q)) end
      local out = {}
      for k, v in pairs(q) do
        if not QUEUE_KEYS[k] then invalid("unknown option taskQueues.%s.%s", name, tostring(k)) end
        if k == "workers" and getmetatable(config.backend) == PostgresBackend then -- 0: served by other nodes
          out[k] = int_field(fmt("taskQueues.%s.%s", name, k), v, 0, nil, "an integer >= 0")
        else
          out[k] = int_field(fmt("taskQueues.%s.%s", name, k), v, 1, nil, "an integer >= 1")
        end
      end
      if name == "default" and out.workers ~= nil then
        invalid("invalid taskQueues.default.workers: %s (the default pool is sized by minWorkers/maxWorkers)", show(out.workers))
      end
      out.concurrency = out.concurrency or 1
      if name ~= "default" then out.workers = out.workers or 1 end
      queues[name] = out
    end
  end
  c.taskQueues = queues
  local modules = {}
  if config.modules ~= nil then
    if type(config.modules) ~= "table" then invalid("invalid modules: %s (a list of module names)", show(config.modules)) end
    for i, m in ipairs(config.modules) do
      if type(m) ~= "string" then invalid("invalid modules[%d]: %s (a module name)", i, show(m)) end
      modules[i] = m
    end
  end
  c.modules = modules
  if config.backend ~= nil and getmetatable(config.backend) == PostgresBackend then
    if config.persistence == "memory" then
      invalid("invalid persistence: \"memory\" with a PostgresBackend (it keeps nothing in PostgreSQL: use file or hybrid)")
    end
    if c.clock == "manual" then
      invalid("invalid clock: \"manual\" with a PostgresBackend (time cannot stand still in a shared database)")
    end
    if config.persistence == nil then c.persistence = "file" end -- acknowledged once committed
    c.backend = config.backend
  elseif config.backend ~= nil then
    local b = config.backend
    if getmetatable(b) ~= LocalBackend and getmetatable(b) ~= Backend then
      invalid("invalid backend: %s (the backends are: athena.LocalBackend.new{ path, webhookUrl, webhookEvents }, " ..
        "athena.Backend.new{ module } or { persist, load }, " ..
        "athena.PostgresBackend.new{ url, nodeId, schema, pollInterval, notify, webhookUrl, webhookEvents }; a plain table is not one)",
        type(b) == "table" and "a plain table" or show(b))
    end
    if b.path and config.persistencePath and b.path ~= config.persistencePath then
      invalid("invalid backend: path %s differs from persistencePath %s", show(b.path), show(config.persistencePath))
    end
    c.persistencePath = b.path or c.persistencePath
    c.backend = b
  end
  -- a URL athena.db can open (checked, not connected); never quoted, as it
  -- may hold a password
  if config.database ~= nil and (type(config.database) ~= "string" or not core.db.check(config.database)) then
    invalid("invalid database: %s (sqlite:<path>, sqlite::memory: or postgres://...)",
      type(config.database) == "string" and "not a database URL" or show(config.database))
  end
  c.database = config.database
  return c
end
M._checkConfig = check_config

local World = {}
M.World = World

-- Lua-side state per world (weak keys: it goes with the world).
local worlds = setmetatable({}, { __mode = "k" })
local methods = core.worldMethods

-- The entry script workers re-run in definition mode: the script this
-- process runs (arg[0]), when it is a Lua file.
local function entry_script()
  local a = rawget(_G, "arg")
  if type(a) == "table" and type(a[0]) == "string" and a[0]:match("%.lua$") then
    local args, i = {}, 0
    while a[i] ~= nil do
      args[i] = tostring(a[i]); i = i + 1
    end
    return a[0], args
  end
end

--- athena.World.new(config) -> world
function World.new(config)
  if config ~= nil and type(config) ~= "table" then argerror(1, "new", "table", config) end
  local c = check_config(config or {})
  -- what core.newWorld reads: the options of the map by name, then the rest
  local native = { taskQueues = {}, modules = c.modules, database = c.database,
    webhookUrl = c.backend and c.backend.webhookUrl, webhookEvents = c.backend and c.backend.events,
    backend = getmetatable(c.backend) == Backend and c.backend or nil }
  if getmetatable(c.backend) == PostgresBackend then
    local b = c.backend
    native.backendUrl, native.nodeId, native.backendSchema = b.url, b.nodeId, b.schema
    native.pollInterval, native.pollOnly = b.pollInterval, not b.notify
  end
  for _, o in ipairs(OPTIONS) do native[o.name] = c[o.name] end
  for name, q in pairs(c.taskQueues) do
    if name == "default" then
      native.defaultConcurrency = q.concurrency
    else
      native.taskQueues[name] = { workers = q.workers, concurrency = q.concurrency }
    end
  end
  if #c.modules == 0 then
    native.entryScript, native.scriptArgs = entry_script()
  end
  local w = core.newWorld(native)
  worlds[w] = { config = c, defs = {}, started = false, hasCode = #c.modules > 0 or native.entryScript ~= nil }
  return w
end

--- world:register(def, ...) registers definitions; only before start().
function methods.register(self, ...)
  local st = worlds[self]
  if st == nil then argerror(1, "register", "athena.World", self) end
  if st.started then invalid("register after start()") end
  for i = 1, select("#", ...) do
    local def = select(i, ...)
    if getmetatable(def) ~= Definition then argerror(i, "register", "athena definition", def) end
    local q = def.options.taskQueue
    if q ~= "default" and st.config.taskQueues[q] == nil then
      invalid("unknown task queue %s", q)
    end
    local old = st.defs[def.name]
    if old ~= nil and old ~= def then
      invalid("a different definition is already registered as %s", def.name)
    end
    if old == nil then
      self:_register(def.name, def.options, def.kind == "workflow")
      st.defs[def.name] = def
    end
  end
  return self
end

--- world:start() spawns the workers; in a worker's definition phase it ends
-- the phase (the rest of the entry script does not run there).
function methods.start(self)
  local st = worlds[self]
  if st == nil then argerror(1, "start", "athena.World", self) end
  if core.isWorker() then return self:_start() end
  if st.shutdown then error(errors.new("ESHUTDOWN", "world was shut down"), 2) end
  if st.started then return self end
  if next(st.defs) ~= nil and not st.hasCode then
    invalid("workers cannot load the handlers: pass modules = {...} to World.new " ..
      "(or run the script itself with athena or lua5.4)")
  end
  self:_start(package.path, package.cpath)
  st.started = true
  return self
end

------------------------------------------------------------------ schedules

local SCHED_KEYS = { timezone = true, catchUp = true, overlap = true, priority = true,
  taskQueue = true, failureStrategy = true }
local CATCH_UP = { none = 0, one = 1, all = 2 }

local function sched_opts(opts, fname, argn)
  if opts ~= nil and type(opts) ~= "table" then argerror(argn, fname, "table", opts, 4) end
  local o = {}
  for k, v in pairs(opts or {}) do
    if not SCHED_KEYS[k] then invalid("unknown option %s", tostring(k)) end
  end
  opts = opts or {}
  o.localTz = oneof("timezone", opts.timezone or "UTC", { "UTC", "local" }) == "local"
  o.catchUp = CATCH_UP[oneof("catchUp", opts.catchUp or "one", { "none", "one", "all" })]
  o.overlapSkip = oneof("overlap", opts.overlap or "allow", { "allow", "skip" }) == "skip"
  if opts.priority ~= nil then
    if not isinteger(opts.priority) then invalid("invalid priority: %s (must be an integer)", show(opts.priority)) end
    o.priority = math.tointeger(opts.priority)
  end
  if opts.taskQueue ~= nil then o.taskQueue = queue_name("taskQueue", opts.taskQueue) end
  if opts.failureStrategy ~= nil then o.failureStrategy = strategy("failureStrategy", opts.failureStrategy) end
  return o
end

-- Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar.
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

--- Parses ISO-8601 with Z or an offset ("2025-03-01T09:00:00.250+01:00")
-- into epoch milliseconds; anything else raises EINVAL.
local function iso_ms(s)
  local y, mo, d, h, mi, sec, frac, zone = s:match(
    "^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
  local off
  if zone == "Z" then
    off = 0
  elseif zone then
    local sign, oh, om = zone:match("^([+-])(%d%d):(%d%d)$")
    if sign and tonumber(oh) <= 23 and tonumber(om) <= 59 then
      off = (tonumber(oh) * 60 + tonumber(om)) * (sign == "-" and -1 or 1)
    end
  end
  if not y or not off or (frac ~= "" and frac ~= nil and not frac:match("^%.%d+$")) then
    invalid("invalid executeAt: %s (epoch ms, or ISO-8601 with Z or an offset)", show(s))
  end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  local mdays = { 31, (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
  if mo < 1 or mo > 12 or d < 1 or d > mdays[mo] or h > 23 or mi > 59 or sec > 59 then
    invalid("invalid executeAt: %s (no such date or time)", show(s))
  end
  local ms = frac ~= "" and math.floor(tonumber("0" .. frac) * 1000 + 0.5) or 0
  return ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000 + sec * 1000 + ms - off * 60000
end
M._isoMs = iso_ms

--- world:schedule(id, name, input, cron, opts) -> id (creates or replaces)
function methods.schedule(self, id, name, input, cron, opts)
  if type(id) ~= "string" then argerror(1, "schedule", "string", id) end
  if #id < 1 or #id > 200 or id:find("[%s%c@]") then
    invalid("invalid schedule id: %s (1-200 bytes, no whitespace, control characters or @)", show(id))
  end
  if type(name) ~= "string" then argerror(2, "schedule", "string", name) end
  if type(cron) ~= "string" then argerror(4, "schedule", "string", cron) end
  return self:_schedule(id, name, input, cron, sched_opts(opts, "schedule", 5))
end

--- world:scheduleOnce(name, input, executeAt[, opts]) -> "once-<uuid>"
function methods.scheduleOnce(self, name, input, executeAt, opts)
  if type(name) ~= "string" then argerror(1, "scheduleOnce", "string", name) end
  local at
  if type(executeAt) == "string" then
    at = iso_ms(executeAt)
  elseif type(executeAt) == "number" then
    at = math.tointeger(executeAt) -- nil for 1.5, NaN, inf or past 2^63
    if at == nil then
      invalid("invalid executeAt: %s (integral epoch milliseconds)", show(executeAt))
    end
  else
    argerror(3, "scheduleOnce", "epoch ms or ISO-8601 string", executeAt)
  end
  return self:_scheduleOnce(name, input, at, sched_opts(opts, "scheduleOnce", 4))
end

--------------------------------------------------------------- gateway

-- The gateway client (GATEWAY.md §5), loaded when first used.
setmetatable(M, { __index = function(t, k)
  if k == "gateway" or k == "createClient" or k == "useAthenaGateway" then
    local ok, gw = pcall(require, "athena.gateway")
    if not ok then return nil end
    rawset(t, "gateway", gw)
    rawset(t, "createClient", gw.createClient)
    rawset(t, "useAthenaGateway", gw.useAthenaGateway)
    return rawget(t, k)
  end
end })

local native_shutdown = methods.shutdown
--- world:shutdown([opts]) -> {drained, requeued, abandoned}; opts is
-- {timeout = duration}, or the timeout itself ("5s", 5000).
function methods.shutdown(self, opts)
  local t = type(opts)
  if t == "number" or t == "string" then
    opts = { timeout = opts }
  elseif opts ~= nil and t ~= "table" then
    argerror(1, "shutdown", "{ timeout = duration } or a duration", opts, 3)
  end
  local st = worlds[self]
  if st then st.shutdown = true end
  return native_shutdown(self, opts)
end

return M
