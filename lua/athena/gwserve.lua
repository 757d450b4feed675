-- The gateway server's configuration (GATEWAY.md §6): validates what
-- `world:serve{ gateway = ... }` (or `athena serve --db --config`) is given
-- and returns the plain description the C side reads (bindings/l_gwserve.c).
--
-- gateway = { db = url, config = "file.lua", ... } or the configuration
-- table itself. A configuration file returns a table; it is loaded again in
-- every gateway thread's Lua state, where its policy functions run, so it
-- must have no side effects. Policy functions in an inline table have no
-- way to reach those states: they must live in a file.
local errors = require "athena.errors"

local M = {}

local function invalid(fmt, ...)
  error(errors.new("EINVAL", "invalid gateway config: " .. string.format(fmt, ...)), 0)
end

local TOP = {
  db = true, config = true, databases = true, keys = true, anonymous = true, tables = true,
  policy = true, limits = true, cors = true, events = true, trustedProxies = true, prefix = true,
  rateLimits = true, threads = true,
}
local OPS = { fetch = 1, insert = 2, update = 4, delete = 8 }
local ALL = 15

local function strings(v, what)
  if v == nil then return nil end
  if type(v) == "string" then v = { v } end
  if type(v) ~= "table" then invalid("%s must be a list of strings", what) end
  local out = {}
  for i, s in ipairs(v) do
    if type(s) ~= "string" or s == "" then invalid("%s[%d] must be a non-empty string", what, i) end
    out[i] = s
  end
  return out
end

-- "*", "gateway.*", "gateway.fetch", ..., "ops.read", "ops.write" (a
-- string or a list) -> bits. "*" is every right, the operations surface's
-- too (docs/operations.md); "ops.write" includes "ops.read".
local OPS_READ, OPS_WRITE = 16, 32
local function rights(v, what)
  local bits = 0
  for _, r in ipairs(strings(v, what) or {}) do
    if r == "*" then
      bits = ALL | OPS_READ | OPS_WRITE
    elseif r == "gateway.*" then
      bits = bits | ALL
    elseif r == "ops.read" then
      bits = bits | OPS_READ
    elseif r == "ops.write" then
      bits = bits | OPS_READ | OPS_WRITE
    else
      local op = r:match("^gateway%.(%a+)$")
      if not op or not OPS[op] then invalid("%s: unknown right %s", what, r) end
      bits = bits | OPS[op]
    end
  end
  return bits
end

local function ops(v, what)
  if v == nil then return ALL end
  local bits = 0
  for _, o in ipairs(strings(v, what)) do
    if not OPS[o] then invalid("%s: unknown operation %s", what, o) end
    bits = bits | OPS[o]
  end
  return bits
end

local function positive(v, what, default)
  if v == nil then return default end
  if math.type(v) ~= "integer" or v < 1 then invalid("%s must be an integer >= 1", what) end
  return v
end

local function number(v, what, default)
  if v == nil then return default end
  if type(v) ~= "number" or v <= 0 or v ~= v then invalid("%s must be a positive number", what) end
  return v
end

local function bytes(v, what, default)
  if v == nil then return default end
  if type(v) == "string" then
    local n, unit = v:match("^(%d+)([KMG]?B)$")
    local f = { B = 1, KB = 1024, MB = 1024 * 1024, GB = 1024 * 1024 * 1024 }
    if not n then invalid("%s must be bytes or \"64KB\" \"1MB\"", what) end
    return math.tointeger(tonumber(n) * f[unit])
  end
  return positive(v, what)
end

local function is_url(u)
  return type(u) == "string" and (u:match("^sqlite:") or u:match("^postgres://") or u:match("^postgresql://"))
end

local function has_function(t, seen)
  seen = seen or {}
  if seen[t] then return false end
  seen[t] = true
  for _, v in pairs(t) do
    if type(v) == "function" or (type(v) == "table" and has_function(v, seen)) then return true end
  end
  return false
end

--- The C side's list of API keys from `keys` ({[key] = {rights, name,
-- tables, databases, server}}), `what` naming the field in errors. Shared
-- by the gateway's keys and world:serve's `auth.keys`.
function M.keys(keys, what)
  local out = {}
  if keys == nil then return out end
  if type(keys) ~= "table" then invalid("%s must map keys to {rights = ...}", what) end
  local list = {}
  for key, spec in pairs(keys) do list[#list + 1] = { key = key, spec = spec } end
  table.sort(list, function(a, b) return tostring(a.key) < tostring(b.key) end)
  for i, e in ipairs(list) do
    local key, spec = e.key, e.spec
    if type(key) ~= "string" or key == "" then invalid("%s: a key must be a non-empty string", what) end
    if type(spec) ~= "table" then invalid("%s[...] must be a table {rights = ...}", what) end
    local name = spec.name or ("key-" .. i)
    if type(name) ~= "string" then invalid("%s[...].name must be a string", what) end
    local k = {
      name = name, rights = rights(spec.rights, what .. "." .. name .. ".rights"),
      tables = strings(spec.tables, what .. "." .. name .. ".tables"),
      databases = strings(spec.databases, what .. "." .. name .. ".databases"),
      server = spec.server == true,
    }
    local hex = key:match("^sha256:(%x+)$")
    if hex then
      if #hex ~= 64 then invalid("%s: sha256: needs 64 hex digits", what) end
      k.sha256 = hex:lower()
    else
      k.key = key
    end
    out[#out + 1] = k
  end
  return out
end

--- Returns the C side's description of gateway option `g`.
function M.normalize(g)
  local path
  if type(g) == "string" then g = { config = g } end
  if type(g) ~= "table" then invalid("gateway must be a table or a config file path") end
  local cfg = {}
  if g.config ~= nil then
    if type(g.config) ~= "string" then invalid("config must be a file path") end
    path = g.config
    local chunk, err = loadfile(path)
    if not chunk then invalid("cannot load %s: %s", path, err) end
    local ok, t = pcall(chunk)
    if not ok then invalid("%s raised: %s", path, tostring(t)) end
    if type(t) ~= "table" then invalid("%s must return a table", path) end
    for k, v in pairs(t) do cfg[k] = v end
  elseif has_function(g) then
    invalid("policy functions must live in a config file: gateway = { config = \"gateway.lua\" }")
  end
  for k, v in pairs(g) do
    if k ~= "config" then cfg[k] = v end
  end
  for k in pairs(cfg) do
    if not TOP[k] then invalid("unknown field %s", tostring(k)) end
  end

  local out = { configPath = path }
  -- databases: [1] is the default
  local dbs = { { name = "", url = cfg.db } }
  if cfg.databases ~= nil then
    if type(cfg.databases) ~= "table" then invalid("databases must map names to URLs") end
    local names = {}
    for name in pairs(cfg.databases) do names[#names + 1] = name end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for _, name in ipairs(names) do
      local url = cfg.databases[name]
      if type(name) ~= "string" or not name:match("^[%w_.-]+$") then invalid("database name %s", tostring(name)) end
      if not is_url(url) then invalid("databases.%s must be a database URL", name) end
      if name == "default" then
        if dbs[1].url == nil then dbs[1].url = url end
      else
        dbs[#dbs + 1] = { name = name, url = url }
      end
    end
  end
  if not is_url(dbs[1].url) then invalid("db (the default database) must be a database URL") end
  out.databases = dbs

  -- keys
  out.keys = M.keys(cfg.keys, "keys")
  if cfg.anonymous ~= nil then
    if type(cfg.anonymous) ~= "table" then invalid("anonymous must be {rights = ...}") end
    -- the operations surface always needs a key: anonymous gets none of it
    out.anonymous = rights(cfg.anonymous.rights, "anonymous.rights") & ALL
  end

  -- tables: "name", {name = ..., ops, hidden, policy} or name = {...}
  out.tables = {}
  if cfg.tables ~= nil then
    if type(cfg.tables) ~= "table" then invalid("tables must be a list") end
    local function add(name, spec)
      if type(name) ~= "string" or name == "" then invalid("tables: a name must be a non-empty string") end
      spec = spec or {}
      if type(spec) ~= "table" then invalid("tables.%s must be a table", name) end
      if spec.policy ~= nil and type(spec.policy) ~= "function" then
        invalid("tables.%s.policy must be a function", name)
      end
      out.tables[#out.tables + 1] = {
        name = name, ops = ops(spec.ops, "tables." .. name .. ".ops"),
        hidden = strings(spec.hidden, "tables." .. name .. ".hidden"), policy = spec.policy ~= nil,
      }
    end
    for i, v in ipairs(cfg.tables) do
      if type(v) == "string" then add(v) elseif type(v) == "table" then add(v.name, v)
      else invalid("tables[%d] must be a name or a table", i) end
    end
    for k, v in pairs(cfg.tables) do
      if math.type(k) ~= "integer" then add(k, v) end
    end
  end
  if cfg.policy ~= nil and type(cfg.policy) ~= "function" then invalid("policy must be a function") end
  out.policy = cfg.policy ~= nil

  local l = cfg.limits or {}
  if type(l) ~= "table" then invalid("limits must be a table") end
  out.limits = {
    insertRows = positive(l.insertRows, "limits.insertRows", 1000),
    inList = positive(l.inList, "limits.inList", 1000),
    expressionFilters = positive(l.expressionFilters, "limits.expressionFilters", 100),
    defaultLimit = positive(l.defaultLimit, "limits.defaultLimit", 100),
    maxLimit = positive(l.maxLimit, "limits.maxLimit", 1000),
    body = bytes(l.body, "limits.body", 1024 * 1024),
    statementTimeout = l.statementTimeout == nil and 5000 or require("athena.core").duration(l.statementTimeout),
  }
  for k in pairs(l) do
    if out.limits[k] == nil then invalid("unknown limit %s", tostring(k)) end
  end
  if cfg.cors ~= nil and type(cfg.cors) ~= "table" then invalid("cors must be {origins = {...}}") end
  out.origins = strings(cfg.cors and cfg.cors.origins, "cors.origins") or {}
  out.events = strings(cfg.events, "events")
  out.trustedProxies = strings(cfg.trustedProxies, "trustedProxies")
  if cfg.prefix ~= nil and (type(cfg.prefix) ~= "string" or not cfg.prefix:match("^/[%w/_.-]*[^/]$")) then
    invalid("prefix must look like /api/v1 (no trailing /)")
  end
  out.prefix = cfg.prefix or ""
  local r = cfg.rateLimits or {}
  if type(r) ~= "table" then invalid("rateLimits must be a table") end
  local key, ip = r.key or {}, r.ip or {}
  out.rate = {
    key = number(key.rate, "rateLimits.key.rate", 100), keyBurst = number(key.burst, "rateLimits.key.burst", 200),
    ip = number(ip.rate, "rateLimits.ip.rate", 50), ipBurst = number(ip.burst, "rateLimits.ip.burst", 100),
    authFailures = number(r.authFailures, "rateLimits.authFailures", 10),
  }
  out.threads = positive(cfg.threads, "threads", 2)
  if out.threads > 64 then invalid("threads must be at most 64") end -- one HTTP loop each (engine/http/http.c)
  return out
end

return M
