-- Retry utilities (SEMANTICS §7.4, §7.5): withRetry, retryable,
-- retryPatterns and shouldRetryError, usable in any Lua code. Inside a task
-- the waits between attempts yield to the worker's loop; elsewhere they
-- block the calling thread (never the engine).
local core = require "athena.core"
local errors = require "athena.errors"

local M = {}
local fmt = string.format
local pack, unpack = table.pack, table.unpack

M.patterns = {
  api = { maxAttempts = 5, backoff = "exponential", initialInterval = 1000, maxInterval = 30000, multiplier = 2 },
  database = { maxAttempts = 3, backoff = "exponential", initialInterval = 500, maxInterval = 10000, multiplier = 2 },
  network = { maxAttempts = 5, backoff = "exponential", initialInterval = 2000, maxInterval = 60000, multiplier = 3 },
  quick = { maxAttempts = 3, backoff = "constant", initialInterval = 100, maxInterval = 60000, multiplier = 2 },
}

--- The delay before the attempt after failed attempt n (§7.4): capped,
-- then 0-10 % additive jitter. `u` in [0, 1) may be given for tests.
function M.backoff(cfg, n, u)
  local base
  if cfg.backoff == "linear" then
    base = cfg.initialInterval * n
  elseif cfg.backoff == "constant" then
    base = cfg.initialInterval
  else
    base = cfg.initialInterval * cfg.multiplier ^ (n - 1)
  end
  local d = math.min(base, cfg.maxInterval)
  return math.floor(d + (u or math.random()) * 0.1 * d + 0.5)
end

------------------------------------------------------------ classification

local NETWORK_CODES = {
  ETIMEDOUT = true, ECONNREFUSED = true, ECONNRESET = true, ECONNABORTED = true,
  ECONNLOST = true, -- athena.db: the database connection failed or went away
  EHOSTUNREACH = true, ENETUNREACH = true, EPIPE = true, EAI_AGAIN = true,
}
local NEVER = { EFATAL = true, ECANCELED = true, EINVAL = true }

-- Whole word or phrase, bounded by the text's ends or a character outside
-- [A-Za-z0-9_].
local function has_word(text, word)
  return text:find("%f[%w_]" .. word .. "%f[^%w_]") ~= nil
end

local function text_of(err)
  if type(err) == "string" then return err:lower() end
  if type(err) == "table" and type(rawget(err, "message")) == "string" then
    return rawget(err, "message"):lower()
  end
  return nil
end

local function code_of(err)
  return type(err) == "table" and rawget(err, "code") or nil
end

local function status_of(err)
  return type(err) == "table" and tonumber(rawget(err, "status")) or nil
end

local function network(err)
  if NEVER[code_of(err)] then return false end
  if NETWORK_CODES[code_of(err)] then return true end
  local t = text_of(err)
  if not t then return false end
  for _, w in ipairs { "network", "timeout", "timed out", "connection refused", "connection reset",
    "econnrefused", "econnreset", "etimedout" } do
    if has_word(t, w) then return true end
  end
  return false
end

local function rate_limit(err)
  if NEVER[code_of(err)] then return false end
  if status_of(err) == 429 then return true end
  local t = text_of(err)
  return t ~= nil and (has_word(t, "rate limit") or has_word(t, "too many requests") or has_word(t, "429"))
end

local SERVER = { [500] = true, [502] = true, [503] = true, [504] = true }
local function server_error(err)
  if NEVER[code_of(err)] then return false end
  if SERVER[status_of(err)] then return true end
  local t = text_of(err)
  if not t then return false end
  for _, n in ipairs { "500", "502", "503", "504" } do
    if has_word(t, n) then return true end
  end
  return false
end

local function transient(err)
  local c = code_of(err)
  if NEVER[c] then return false end
  return c == "EHEARTBEAT" or c == "EWORKERLOST" or network(err) or rate_limit(err) or server_error(err)
end

M.shouldRetryError = setmetatable({
  network = network, rateLimit = rate_limit, serverError = server_error, transient = transient,
}, {
  __call = function(_, err)
    return transient(err) and not (type(err) == "table" and rawget(err, "retryable") == false)
  end,
})

------------------------------------------------------------------ running

local WITH_KEYS = { timeout = true, shouldRetry = true, onRetry = true, maxAttempts = true, backoff = true,
  initialInterval = true, maxInterval = true, multiplier = true, nonRetryable = true }

local function timeout_error()
  return errors.new("ETIMEDOUT", "attempt timed out", { retryable = true })
end

-- The deadline of the innermost withRetry attempt running outside a task
-- in this state (nil: none).
local active_deadline

-- Runs fn(...) with a per-attempt deadline. Returns pcall's values.
local function call(fn, timeout, ...)
  if timeout == nil then return pcall(fn, ...) end
  local res = pack(core.scopeCall(timeout, fn, ...))
  if res.n > 0 then -- inside a task: the slot's deadline and count hook
    return unpack(res, 1, res.n)
  end
  -- elsewhere: a coroutine whose count hook checks the deadline, and once it
  -- fires raises on every instruction, so a pcall in fn cannot keep it. A
  -- nested call never outlives the enclosing one's deadline.
  local outer = active_deadline
  local deadline = core.clock() + timeout
  if outer and outer < deadline then deadline = outer end
  active_deadline = deadline
  local co = coroutine.create(fn)
  local fired = false
  local function hook()
    if fired or core.clock() >= deadline then
      if not fired then
        fired = true
        debug.sethook(co, hook, "", 1)
      end
      error(timeout_error(), 0)
    end
  end
  debug.sethook(co, hook, "", 1000)
  local res = pack(coroutine.resume(co, ...))
  while res[1] and coroutine.status(co) == "suspended" do -- pass user yields through
    res = pack(coroutine.resume(co, coroutine.yield(unpack(res, 2, res.n))))
  end
  active_deadline = outer
  -- the hook, or a deadline that passed while fn was blocked in C
  if fired or core.clock() >= deadline then return false, timeout_error() end
  return unpack(res, 1, res.n)
end

local function non_retryable(cfg, err)
  for _, c in ipairs(cfg.nonRetryable) do
    if err.code == c or err.name == c then return true end
  end
  return false
end

--- athena.withRetry(fn, opts): calls fn() until it succeeds or the attempts
-- run out; returns fn's values, or nil, err (err.attempt = attempts made).
function M.withRetry(fn, opts, check_retry)
  if type(fn) ~= "function" then
    error(fmt("bad argument #1 to 'withRetry' (function expected, got %s)", type(fn)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(fmt("bad argument #2 to 'withRetry' (table expected, got %s)", type(opts)), 2)
  end
  opts = opts or {}
  local rc = {}
  for k, v in pairs(opts) do
    if not WITH_KEYS[k] then error(errors.new("EINVAL", "unknown option " .. tostring(k)), 2) end
    if k ~= "timeout" and k ~= "shouldRetry" and k ~= "onRetry" then rc[k] = v end
  end
  local cfg = check_retry("opts", rc)
  local max = cfg.maxAttempts or 3
  local timeout
  if opts.timeout ~= nil then
    local ok, ms = pcall(core.duration, opts.timeout)
    if not ok or ms == 0 then error(errors.new("EINVAL", "invalid timeout: " .. tostring(opts.timeout)), 2) end
    timeout = ms
  end
  for _, k in ipairs { "shouldRetry", "onRetry" } do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then
      error(errors.new("EINVAL", fmt("invalid %s: %s (a function)", k, tostring(opts[k]))), 2)
    end
  end
  for attempt = 1, max do
    local res = pack(call(fn, timeout))
    local failure
    if not res[1] then
      failure = res[2]
    elseif res[2] == nil and res.n >= 3 and res[3] ~= nil then
      failure = res[3]
    else
      return unpack(res, 2, res.n)
    end
    local err = errors.normalize(failure, nil, attempt)
    if err.retryable == false or non_retryable(cfg, err) or attempt == max then
      return nil, err
    end
    if opts.shouldRetry and not opts.shouldRetry(err) then
      return nil, err
    end
    local delay = err.code == "ERETRYABLE" and err.retryAfter or M.backoff(cfg, attempt)
    if opts.onRetry then opts.onRetry(attempt, err, delay) end
    if delay > 0 then core.sleep(delay) end
  end
end

--- athena.retryable(fn, opts) -> a function running fn under withRetry.
function M.retryable(fn, opts, check_retry)
  if type(fn) ~= "function" then
    error(fmt("bad argument #1 to 'retryable' (function expected, got %s)", type(fn)), 2)
  end
  return function(...)
    local args = pack(...)
    return M.withRetry(function() return fn(unpack(args, 1, args.n)) end, opts, check_retry)
  end
end

return M
