-- Error values (SEMANTICS §1.2): constructors and the normaliser that turns
-- whatever a handler raised or returned into one.
local core = require "athena.core"

local M = {}

local Error = core.Error

-- Codes whose errors are retried unless they say otherwise.
local RETRYABLE = {
  ETIMEDOUT = true, EHEARTBEAT = true, EWORKERLOST = true, EHANDLER = true,
  ERETRYABLE = true, ENOSPC = true, EIO = true,
}
M.RETRYABLE = RETRYABLE

local KNOWN = {
  code = true, message = true, retryable = true, attempt = true, traceback = true,
  name = true, retryAfter = true, status = true, cause = true, details = true,
}

--- Returns a new error value.
function M.new(code, message, fields)
  local e = { code = code, message = message or code, retryable = RETRYABLE[code] or false, attempt = 0 }
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  return setmetatable(e, Error)
end

--- Whether v is an error value (a table with a string code).
function M.is(v)
  return type(v) == "table" and type(rawget(v, "code")) == "string"
end

local function serializable(v)
  return pcall(core.encode, v)
end

--- Normalises what a handler raised or returned as `nil, e`.
-- Error values and tables with a string `code` keep it; anything else
-- becomes EHANDLER with message = tostring(value) and the traceback.
function M.normalize(value, traceback, attempt)
  local e
  if M.is(value) then
    local code = rawget(value, "code")
    e = { code = code }
    local retryable = rawget(value, "retryable")
    if type(retryable) == "boolean" then
      e.retryable = retryable
    elseif RETRYABLE[code] ~= nil then
      e.retryable = RETRYABLE[code]
    else
      e.retryable = not (code == "ECANCELED" or code == "EINVAL" or code == "EFATAL"
        or code == "ENOTFOUND" or code == "ECOMPENSATED" or code == "ENONDETERMINISM"
        or code == "ESHUTDOWN" or code == "EBUSY")
    end
    local message = rawget(value, "message")
    e.message = type(message) == "string" and message or code
    for _, k in ipairs { "name", "retryAfter", "status", "traceback" } do
      local v = rawget(value, k)
      if v ~= nil and serializable(v) then e[k] = v end
    end
    local details = rawget(value, "details")
    if type(details) == "table" and serializable(details) then
      e.details = details
    end
    for k, v in next, value do
      if not KNOWN[k] and type(k) == "string" and serializable(v) then
        e.details = e.details or {}
        e.details[k] = v
      end
    end
    local cause = rawget(value, "cause")
    if cause ~= nil and serializable(cause) then e.cause = cause end
  else
    local ok, s = pcall(tostring, value)
    e = { code = "EHANDLER", retryable = true, message = ok and s or ("(" .. type(value) .. " error)") }
  end
  if e.traceback == nil and traceback ~= nil and e.code == "EHANDLER" then
    e.traceback = traceback
  end
  e.attempt = attempt or 0
  return setmetatable(e, Error)
end

return M
