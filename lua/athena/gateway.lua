-- The gateway client (GATEWAY.md §5): athena.gateway.new{baseUrl = ...}, the
-- `useAthenaGateway` surface of @xylex-group/athena 0.2.1 (fetchGateway,
-- insertGateway, updateGateway, deleteGateway and the state fields), and
-- athena.createClient(url, key, opts):from(table), the supabase-style
-- builder on top of it.
--
-- Calls go through athena.http.request: inside an activity or workflow they
-- yield the task's coroutine while libcurl works on the worker's loop (many
-- calls in flight per worker); elsewhere they block the caller. HTTP and
-- network failures never raise (they come back as results with ok = false);
-- programmer mistakes do (EINVAL error values, or "bad argument" messages).
local core = require "athena.core"
local errors = require "athena.errors"
local retry = require "athena.retry"

local json, http = core.json, core.http
local null = json.null
local fmt = string.format
local concat, sort = table.concat, table.sort

local M = {}

--- JSON null where a table needs a value (athena.null).
M.null = null

------------------------------------------------------------------ helpers

local function show(v)
  if type(v) == "string" then return fmt("%q", v) end
  return tostring(v)
end

-- Wrong values raise an EINVAL error value (a table: no position needed).
local function invalid(msg, ...)
  error(errors.new("EINVAL", fmt(msg, ...)), 0)
end

-- Wrong argument types raise Lua's standard message at the caller of the
-- public method (`level` 3 when called from that method itself).
local function argerror(n, fname, expected, value, level)
  error(fmt("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected,
    type(value) == "userdata" and ((getmetatable(value) or {}).__name or "userdata") or type(value)), level or 3)
end

local function copy(t)
  local o = {}
  for k, v in next, t do o[k] = v end
  return o
end

-- ISO-8601 UTC with milliseconds, by the clock athena.now() reads.
local function iso_now()
  local ms = core.now()
  return os.date("!%Y-%m-%dT%H:%M:%S", ms // 1000) .. fmt(".%03dZ", ms % 1000)
end

------------------------------------------------------ JSON with real arrays

-- athena.json.encode writes an empty table as {}. Request bodies need
-- arrays that stay arrays when empty (conditions, `in` values, column and
-- row lists), so payloads are written by this encoder: a table marked with
-- ARRAY is always an array, one marked with OBJECT always an object, an
-- unmarked empty table is {}. Scalars go through athena.json.encode (its
-- string escaping and float formatting: the shortest of 15-17 significant
-- digits that reads back bit for bit). Object keys are sorted, so the same
-- payload always gives the same text.
local ARRAY = { __name = "athena.gateway.array" }
local OBJECT = { __name = "athena.gateway.object" }

--- gateway.array(t) -> a copy of list t that encodes as a JSON array even
-- when empty.
function M.array(t)
  if t ~= nil and type(t) ~= "table" then argerror(1, "array", "table", t) end
  local o = {}
  for k, v in next, t or {} do o[k] = v end
  return setmetatable(o, ARRAY)
end

--- gateway.object(t) -> a copy of t that encodes as a JSON object even when
-- empty (e.g. insert_body = gateway.object{} for DEFAULT VALUES).
function M.object(t)
  if t ~= nil and type(t) ~= "table" then argerror(1, "object", "table", t) end
  local o = {}
  for k, v in next, t or {} do o[k] = v end
  return setmetatable(o, OBJECT)
end

local encode_value

local function enc_fail(st, what)
  local path = { "payload" }
  for i = 1, st.n do
    local k = st.path[i]
    path[#path + 1] = type(k) == "string" and ("." .. k) or ("[" .. tostring(k) .. "]")
  end
  invalid("invalid %s: %s", concat(path), what)
end

local function enc_string(s, st)
  local ok, text = pcall(json.encode, s)
  if not ok then enc_fail(st, "invalid UTF-8") end
  return text
end

local function encode_table(t, out, st)
  if st.seen[t] then enc_fail(st, "cycle") end
  if st.n >= 200 then enc_fail(st, "nesting deeper than 200") end
  st.seen[t] = true
  local mt = getmetatable(t)
  local n, nstr, maxi = 0, 0, 0
  for k in next, t do
    n = n + 1
    if type(k) == "string" then
      nstr = nstr + 1
    elseif math.type(k) == "integer" and k >= 1 then
      if k > maxi then maxi = k end
    else
      enc_fail(st, "mixed or non-string table keys")
    end
  end
  if nstr > 0 and nstr < n then enc_fail(st, "mixed or non-string table keys") end
  if mt == ARRAY and nstr > 0 then enc_fail(st, "a list with string keys") end
  if mt == OBJECT and maxi > 0 then enc_fail(st, "an object with integer keys") end
  if nstr > 0 or (n == 0 and mt ~= ARRAY) then
    local keys = {}
    for k in next, t do keys[#keys + 1] = k end
    sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      st.n = st.n + 1
      st.path[st.n] = k
      out[#out + 1] = enc_string(k, st)
      out[#out + 1] = ":"
      encode_value(t[k], out, st)
      st.n = st.n - 1
    end
    out[#out + 1] = "}"
  else
    if maxi > 10 and maxi > 2 * n then
      enc_fail(st, fmt("excessively sparse array (max index %d, %d keys)", maxi, n))
    end
    out[#out + 1] = "["
    for i = 1, maxi do
      if i > 1 then out[#out + 1] = "," end
      st.n = st.n + 1
      st.path[st.n] = i
      encode_value(t[i], out, st)
      st.n = st.n - 1
    end
    out[#out + 1] = "]"
  end
  st.seen[t] = nil
end

function encode_value(v, out, st)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = enc_string(v, st)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then enc_fail(st, tostring(v) .. " not serializable") end
    out[#out + 1] = json.encode(v)
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == null then
    out[#out + 1] = "null"
  elseif t == "table" then
    encode_table(v, out, st)
  else
    enc_fail(st, t .. " not serializable")
  end
end

--- gateway.encode(v) -> JSON text, with gateway.array/gateway.object marks
-- honoured (what the client sends).
function M.encode(v)
  local out = {}
  encode_value(v, out, { seen = {}, path = {}, n = 0 })
  return concat(out)
end

-- A table without string keys, unless marked as an object, as a list that
-- encodes as an array even when empty; anything else unchanged.
local function as_array(v)
  if type(v) ~= "table" or getmetatable(v) == OBJECT then return v end
  for k in next, v do
    if type(k) == "string" then return v end
  end
  if getmetatable(v) == ARRAY then return v end
  return M.array(v)
end

------------------------------------------------------------------ options

local OPTION_KINDS = {
  apiKey = "string", client = "string", publishEvent = "string",
  supabaseUrl = "string", supabaseKey = "string",
  userId = "id", organizationId = "id", companyId = "id",
  headers = "headers", stripNulls = "boolean", timeout = "duration", retry = "retry",
}

local function check_option(k, v)
  local kind = OPTION_KINDS[k]
  if kind == nil then invalid("unknown option %s", tostring(k)) end
  if kind == "string" then
    if type(v) ~= "string" then invalid("invalid %s: %s (must be a string)", k, show(v)) end
    if v:find("[\r\n]") then invalid("invalid %s: %s (no line breaks)", k, show(v)) end
  elseif kind == "id" then
    if type(v) ~= "string" and math.type(v) ~= "integer" then
      invalid("invalid %s: %s (must be a string or an integer)", k, show(v))
    end
    v = tostring(v)
    if v:find("[\r\n]") then invalid("invalid %s: %s (no line breaks)", k, show(v)) end
  elseif kind == "boolean" then
    if type(v) ~= "boolean" then invalid("invalid %s: %s (must be a boolean)", k, show(v)) end
  elseif kind == "duration" then
    local ok, ms = pcall(core.duration, v)
    if not ok or ms == 0 then
      invalid("invalid timeout: %s (a duration > 0: ms or \"500ms\" \"30s\" \"5m\")", show(v))
    end
    v = ms
  elseif kind == "retry" then
    if type(v) ~= "boolean" and type(v) ~= "table" then
      invalid("invalid retry: %s (true, false or athena.withRetry options)", show(v))
    end
  elseif kind == "headers" then
    if type(v) ~= "table" then invalid("invalid headers: %s (a table of strings)", show(v)) end
    local h = {}
    for name, value in next, v do
      if type(name) ~= "string" or name == "" or name:find("[:%s%c]") then
        invalid("invalid header name %s", show(name))
      end
      if type(value) ~= "string" or value:find("[\r\n]") then
        invalid("invalid headers.%s: %s (a string without line breaks)", name, show(value))
      end
      h[name] = value
    end
    v = h
  end
  return v
end

local DEFAULTS = { stripNulls = true, timeout = 30000, retry = false }

-- The constructor's options over the defaults, checked.
local function base_options(config)
  local o = { headers = {} }
  for k, v in pairs(DEFAULTS) do o[k] = v end
  for k, v in pairs(config) do
    if k ~= "baseUrl" then o[k] = check_option(k, v) end
  end
  return o
end

-- Per-call options win field by field; headers merge (constructor, then
-- call: a call's header replaces a constructor header of the same name in
-- any case).
local function call_options(base, opts, fname)
  if opts == nil then return base end
  if type(opts) ~= "table" then argerror(2, fname, "table", opts, 5) end
  local o = copy(base)
  for k, v in pairs(opts) do
    v = check_option(k, v)
    if k == "headers" then
      local h = {}
      local lower = {}
      for name in pairs(v) do lower[name:lower()] = true end
      for name, value in pairs(base.headers) do
        if not lower[name:lower()] then h[name] = value end
      end
      for name, value in pairs(v) do h[name] = value end
      o.headers = h
    else
      o[k] = v
    end
  end
  return o
end

------------------------------------------------------------------ headers

local KEY_HEADERS = { ["x-athena-key"] = true, apikey = true, ["x-api-key"] = true, authorization = true }
local SECRET_HEADERS = {
  ["x-athena-key"] = true, apikey = true, ["x-api-key"] = true, authorization = true,
  ["x-supabase-key"] = true, cookie = true, ["x-pg-uri"] = true, ["x-jdbc-url"] = true,
  ["x-athena-jdbc-url"] = true,
}

local function mask(s)
  if #s <= 4 then return "****" end
  return "****" .. s:sub(-4)
end

local function mask_header(name, value)
  local lname = name:lower()
  if not SECRET_HEADERS[lname] then return value end
  if lname == "authorization" then
    local scheme, cred = value:match("^(%S+)%s+(.+)$")
    if scheme then return scheme .. " " .. mask(cred) end
  end
  return mask(value)
end

-- The request headers for options `o` ({Name = value}) and their masked
-- copy for lastRequest.
local function build_headers(o)
  local byname = {} -- lower-case name -> { name, value }
  local function set(name, value)
    if value ~= nil and value ~= "" then byname[name:lower()] = { name, value } end
  end
  set("Content-Type", "application/json")
  set("Accept", "application/json")
  local custom_key = false
  for name, value in pairs(o.headers) do
    if KEY_HEADERS[name:lower()] and value ~= "" then custom_key = true end
  end
  local key = o.apiKey
  if key and key ~= "" and not custom_key then
    set("X-Athena-Key", key)
    set("apikey", key)
    set("x-api-key", key)
    set("Authorization", "Bearer " .. key)
  end
  set("X-Athena-Client", o.client)
  set("X-Strip-Nulls", o.stripNulls and "true" or "false")
  set("X-User-Id", o.userId)
  set("X-Organization-Id", o.organizationId)
  set("X-Company-Id", o.companyId)
  set("X-Publish-Event", o.publishEvent)
  set("x-supabase-url", o.supabaseUrl)
  set("x-supabase-key", o.supabaseKey)
  for name, value in pairs(o.headers) do -- last, and they win
    if value == "" then
      byname[name:lower()] = nil -- an empty value removes the header
    else
      byname[name:lower()] = { name, value }
    end
  end
  local headers, masked = {}, {}
  for _, nv in pairs(byname) do
    headers[nv[1]] = nv[2]
    masked[nv[1]] = mask_header(nv[1], nv[2])
  end
  return headers, masked
end

------------------------------------------------------------------ payloads

local ARRAY_OPS = { ["in"] = true, contains = true, containedby = true }

-- A condition with each eq in both forms and list values as arrays.
local function norm_condition(c, i)
  if type(c) ~= "table" then invalid("invalid payload.conditions[%d]: %s (a table)", i, show(c)) end
  local o = copy(c)
  local op = o.operator
  if op == nil and o.eq_column ~= nil then op = "eq" end
  local lop = type(op) == "string" and op:lower() or nil
  if lop == "eq" then
    local col = o.column
    if col == nil then col = o.eq_column end
    local val = o.value
    if val == nil then val = o.eq_value end
    val = as_array(val) -- eq with a list means in
    o.operator = op
    o.column, o.eq_column = col, col
    o.value, o.eq_value = val, val
  elseif lop and ARRAY_OPS[lop] then
    o.value = as_array(o.value)
  end
  return o
end

local READ_KIND = { fetch = true }
local MUTATION = { insert = true, update = true, delete = true }

-- The body sent for call `kind`: a copy of the payload with the defaults of
-- §5 and arrays marked.
local function prepare(kind, p, o, fname)
  if type(p) ~= "table" then argerror(1, fname, "table", p, 5) end
  local body = copy(p)
  local tname = body.table_name
  if kind == "fetch" and tname == nil then tname = body.view_name end
  if type(tname) ~= "string" or tname == "" then
    invalid("invalid payload: table_name is required (a non-empty string)%s",
      kind == "fetch" and ", or view_name" or "")
  end
  if kind == "fetch" or kind == "update" then
    if body.conditions == nil then body.conditions = {} end
    if body.strip_nulls == nil then body.strip_nulls = o.stripNulls end
  end
  if body.conditions ~= nil then
    if type(body.conditions) ~= "table" then
      invalid("invalid payload.conditions: %s (a list of conditions)", show(body.conditions))
    end
    local list = {}
    for i, c in ipairs(body.conditions) do list[i] = norm_condition(c, i) end
    for k in next, body.conditions do
      if math.type(k) ~= "integer" or k < 1 or k > #list then
        invalid("invalid payload.conditions: a list of conditions (key %s)", show(k))
      end
    end
    body.conditions = setmetatable(list, ARRAY)
  end
  if type(body.columns) == "table" then body.columns = as_array(body.columns) end
  if type(body.insert_body) == "table" then body.insert_body = as_array(body.insert_body) end
  if type(body.on_conflict) == "table" then body.on_conflict = as_array(body.on_conflict) end
  if kind == "delete" then
    local rid = body.resource_id
    local has_rid = (type(rid) == "string" and rid ~= "") or type(rid) == "number"
    if not has_rid and (body.conditions == nil or #body.conditions == 0) then
      invalid("deleteGateway needs resource_id or non-empty conditions (an unfiltered delete is refused)")
    end
  end
  return body
end

------------------------------------------------------------------ results

local GatewayError = {
  __name = "athena.GatewayError",
  __tostring = function(e) return tostring(rawget(e, "message")) end,
}
M.GatewayError = GatewayError

local function new_error(fields)
  return setmetatable(fields, GatewayError)
end

local AFFECTED = { "affected_rows", "affectedRows", "rows_affected", "row_count", "rowCount", "changes" }

local function first_number(t)
  for _, k in ipairs(AFFECTED) do
    local v = rawget(t, k)
    if type(v) == "number" then return v end
  end
end

local function nonempty(v)
  return type(v) == "string" and v:find("%S") ~= nil and v or nil
end

-- Removes athena.null values from decoded JSON (stripNulls = true).
local function strip(v)
  for k, x in next, v do
    if x == null then
      v[k] = nil
    elseif type(x) == "table" then
      strip(x)
    end
  end
end

local function is_object(v)
  if type(v) ~= "table" then return false end
  local k = next(v)
  return k == nil or type(k) == "string"
end

local function transport_failure(err, method, path, kind)
  local code = err.code == "ETIMEDOUT" and "ETIMEDOUT" or "NETWORK_ERROR"
  local msg = fmt("Athena gateway %s %s failed: %s", method, path, tostring(err.message or err.code))
  if code == "ETIMEDOUT" and MUTATION[kind] then
    msg = msg .. " (the mutation may still have committed)"
  end
  return {
    ok = false, status = 0,
    error = new_error { code = code, message = msg, status = 0, endpoint = path, method = method,
      cause = err.code },
  }
end

-- The result of a response (GATEWAY.md §5 "Parsing").
local function parse(resp, method, path, kind, stripNulls)
  local status = resp.status
  local text = resp.body or ""
  local headers = resp.headers or {}
  local ok = status >= 200 and status < 300
  local body, bad_json
  if text:find("%S") then
    local ctype = (headers["content-type"] or ""):lower()
    local first = text:match("^%s*(.)")
    if ctype:find("json", 1, true) or first == "{" or first == "[" then
      local v, err = json.decode(text, { nulls = true })
      if v == nil and err ~= nil then
        bad_json = err.message or "invalid JSON"
        body = text
      else
        body = v
      end
    else
      body = text
    end
  end
  local res = { ok = ok, status = status, raw = body, headers = headers }
  if ok and bad_json then
    res.ok = false
    res.raw = text
    res.error = new_error {
      code = "INVALID_JSON", status = status, endpoint = path, method = method,
      message = fmt("Athena gateway %s %s returned invalid JSON (%s)", method, path, bad_json),
      requestId = headers["x-athena-request-id"] or headers["x-request-id"],
    }
    return res
  end
  local obj = type(body) == "table" and is_object(body)
  local data = body
  if obj and rawget(body, "data") ~= nil then data = rawget(body, "data") end
  if stripNulls and type(body) == "table" then
    strip(body)
    if data == null then data = nil end
  end
  res.data = data
  if obj and type(rawget(body, "count")) == "number" then res.count = rawget(body, "count") end
  if MUTATION[kind] then
    local n = obj and first_number(body) or nil
    if n == nil and obj and is_object(rawget(body, "data")) then n = first_number(rawget(body, "data")) end
    if n == nil then n = res.count end
    res.affectedRows = n
  end
  if not ok then
    local E = body
    if obj and type(rawget(body, "error")) == "table" then E = rawget(body, "error") end
    local Et = type(E) == "table" and E or {}
    local message = nonempty(rawget(Et, "message")) or nonempty(rawget(Et, "error"))
      or nonempty(rawget(Et, "details")) or (type(body) == "string" and nonempty(text))
      or fmt("Athena gateway %s %s failed with status %d", method, path, status)
    local detail
    for _, k in ipairs { "error", "details", "detail" } do
      local v = nonempty(rawget(Et, k))
      if v and v ~= message then detail = v; break end
    end
    local code = rawget(Et, "code")
    if type(code) ~= "string" and obj then code = rawget(body, "code") end
    local rid = rawget(Et, "request_id") or rawget(Et, "requestId")
    if rid == nil and obj then rid = rawget(body, "request_id") end
    res.error = new_error {
      code = type(code) == "string" and code ~= "" and code or "HTTP_ERROR",
      message = message, detail = detail,
      hint = nonempty(rawget(Et, "hint")) or (obj and nonempty(rawget(body, "hint"))) or nil,
      status = status, endpoint = path, method = method,
      requestId = nonempty(rid) or headers["x-athena-request-id"] or headers["x-request-id"],
    }
  end
  return res
end

------------------------------------------------------------------- retry

-- Milliseconds a Retry-After header asks for (seconds or an HTTP date).
local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8, sep = 9,
  oct = 10, nov = 11, dec = 12 }

local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

local function retry_after_ms(headers)
  local v = headers and headers["retry-after"]
  if type(v) ~= "string" then return nil end
  v = v:match("^%s*(.-)%s*$")
  local n = tonumber(v)
  if n then
    if n ~= n or n < 0 or n == math.huge then return nil end
    return math.ceil(n * 1000)
  end
  local d, mon, y, H, Mi, S = v:match("^%a+,%s*(%d+)%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+GMT$")
  local m = mon and MONTHS[mon:lower()]
  if not m then return nil end
  local at = ((days_from_civil(tonumber(y), m, tonumber(d)) * 24 + tonumber(H)) * 60 + tonumber(Mi)) * 60
    + tonumber(S)
  return math.max(0, (at - os.time()) * 1000)
end

local RETRY_CFG_KEYS = { maxAttempts = true, backoff = true, initialInterval = true, maxInterval = true,
  multiplier = true, nonRetryable = true }

local function retryable_status(s)
  return s == 0 or s == 429 or s >= 500
end

-- Runs once() under athena.withRetry (reads only): retried on 429, 5xx and
-- status 0, each wait at least what Retry-After asks. Returns the last
-- result. What once() raises (a task's interrupt) raises again.
local function with_retry(spec, once)
  local athena = require "athena"
  local opts = spec == true and athena.retryPatterns.api or spec
  local cfg -- normalised retry settings, for the backoff under Retry-After
  local last, finished, attempt = nil, false, 0
  local _, err = athena.withRetry(function()
    attempt = attempt + 1
    finished = false
    local res = once()
    last, finished = res, true
    if not retryable_status(res.status) then return res end
    local e = res.error
    local fail = { code = e.code, message = e.message, status = res.status, retryable = true }
    local ra = retry_after_ms(res.headers)
    if ra and athena._checkRetry then
      if cfg == nil then
        local sub = {}
        for k, v in pairs(opts) do
          if RETRY_CFG_KEYS[k] then sub[k] = v end
        end
        cfg = athena._checkRetry("retry", sub)
      end
      fail.code = "ERETRYABLE"
      fail.gatewayCode = e.code
      fail.retryAfter = math.max(ra, retry.backoff(cfg, attempt))
    elseif ra then
      fail.code, fail.gatewayCode, fail.retryAfter = "ERETRYABLE", e.code, ra
    end
    return nil, setmetatable(fail, core.Error)
  end, opts)
  if not finished then
    if err and err.code == "ETIMEDOUT" then -- withRetry's per-attempt deadline
      return transport_failure(err, "POST", "/gateway/fetch", "fetch")
    end
    error(err, 0)
  end
  return last
end

------------------------------------------------------------------ client

local Gateway = { __name = "athena.Gateway" }
Gateway.__index = Gateway
M.Gateway = Gateway

local ROUTES = {
  fetch = { "POST", "/gateway/fetch", "fetchGateway" },
  insert = { "PUT", "/gateway/insert", "insertGateway" },
  update = { "POST", "/gateway/update", "updateGateway" },
  delete = { "DELETE", "/gateway/delete", "deleteGateway" },
}

--- athena.gateway.new{baseUrl, apiKey, client, headers, userId,
-- organizationId, companyId, publishEvent, stripNulls, supabaseUrl,
-- supabaseKey, timeout, retry} -> client
function M.new(config)
  if type(config) ~= "table" then argerror(1, "new", "table", config) end
  local url = config.baseUrl
  if type(url) ~= "string" then invalid("invalid baseUrl: %s (an absolute http:// or https:// URL)", show(url)) end
  url = url:gsub("/+$", ""):gsub("^%a+", string.lower) -- the scheme in lower case, as libcurl wants it
  if not url:match("^https?://[^/%s?#]+[^%s?#]*$") then
    invalid("invalid baseUrl: %s (an absolute http:// or https:// URL without query or fragment)",
      show(config.baseUrl))
  end
  local gw = setmetatable({
    baseUrl = url, isLoading = false, error = nil, lastRequest = nil, lastResponse = nil,
    _opts = base_options(config), _inflight = 0,
  }, Gateway)
  return gw
end

--- athena.useAthenaGateway([config]) -> client
-- The published hook's name for gateway.new. config is optional: baseUrl
-- defaults to $ATHENA_GATEWAY_URL and apiKey to $ATHENA_API_KEY (an empty
-- variable counts as unset); with neither a baseUrl nor the variable it
-- raises EINVAL naming both.
function M.useAthenaGateway(config)
  if config ~= nil and type(config) ~= "table" then argerror(1, "useAthenaGateway", "table", config) end
  local cfg = config and copy(config) or {}
  local from_env = false
  if cfg.baseUrl == nil then
    local url = os.getenv("ATHENA_GATEWAY_URL")
    if url == nil or url == "" then
      invalid("useAthenaGateway: no gateway URL: pass config.baseUrl or set ATHENA_GATEWAY_URL")
    end
    cfg.baseUrl, from_env = url, true
  end
  if cfg.apiKey == nil then
    local key = os.getenv("ATHENA_API_KEY")
    if key ~= nil and key ~= "" then cfg.apiKey = key end
  end
  local ok, gw = pcall(M.new, cfg)
  if not ok then
    if from_env and type(gw) == "table" and gw.code == "EINVAL" then
      invalid("ATHENA_GATEWAY_URL: %s", gw.message)
    end
    error(gw, 0)
  end
  return gw
end

-- Decrements the in-flight count when a call ends, however it ends.
local Busy = {
  __close = function(b)
    local gw = b.gw
    gw._inflight = gw._inflight - 1
    gw.isLoading = gw._inflight > 0
  end,
}

local function perform(self, kind, payload, opts)
  local route = ROUTES[kind]
  local method, path, fname = route[1], route[2], route[3]
  if getmetatable(self) ~= Gateway then
    error(fmt("bad self to '%s' (athena.Gateway expected, got %s; call gw:%s(...))", fname, type(self), fname), 3)
  end
  local o = call_options(self._opts, opts, fname)
  local body = prepare(kind, payload, o, fname)
  local text = M.encode(body)
  local headers, masked = build_headers(o)
  local url = self.baseUrl .. path

  self._inflight = self._inflight + 1
  self.isLoading = true
  self.error = nil
  local _ <close> = setmetatable({ gw = self }, Busy)
  local request = { endpoint = path, method = method, payload = body, headers = masked, timestamp = iso_now() }
  self.lastRequest = request

  local function send(m)
    local resp, err = http.request { method = m, url = url, headers = headers, body = text, timeout = o.timeout }
    if resp == nil then return transport_failure(err, m, path, kind) end
    return parse(resp, m, path, kind, o.stripNulls)
  end
  local function once()
    local res = send(method)
    if res.status == 405 and (method == "PUT" or method == "DELETE") then
      request.method = "POST" -- retried once as POST
      request.timestamp = iso_now()
      res = send("POST")
    end
    return res
  end

  local res
  if o.retry and READ_KIND[kind] then
    res = with_retry(o.retry, once)
  else
    res = once()
  end
  if not res.ok then self.error = res.error end
  local last = copy(res)
  last.timestamp = iso_now()
  self.lastResponse = last
  return res
end

--- gw:fetchGateway(payload, opts) -> {ok, status, data, count, error, raw}
function Gateway:fetchGateway(payload, opts)
  return perform(self, "fetch", payload, opts)
end

--- gw:insertGateway(payload, opts) (PUT; a 405 is retried as POST)
function Gateway:insertGateway(payload, opts)
  return perform(self, "insert", payload, opts)
end

--- gw:updateGateway(payload, opts)
function Gateway:updateGateway(payload, opts)
  return perform(self, "update", payload, opts)
end

--- gw:deleteGateway(payload, opts) (DELETE with a body; a 405 is retried
-- as POST); raises before sending without resource_id or conditions.
function Gateway:deleteGateway(payload, opts)
  return perform(self, "delete", payload, opts)
end

------------------------------------------------------------------ builder

local Client = { __name = "athena.GatewayClient" }
Client.__index = Client
M.Client = Client

local Query = { __name = "athena.GatewayQuery" }
Query.__index = Query
M.Query = Query

--- athena.createClient(url, key, opts) -> client; client:from(table)
-- builds queries. opts: the gateway options (apiKey from `key`) plus
-- `returning` (what mutations return: "*" by default, "minimal" for
-- nothing, or columns).
function M.createClient(url, key, opts)
  if type(url) ~= "string" then argerror(1, "createClient", "string", url) end
  if key ~= nil and type(key) ~= "string" then argerror(2, "createClient", "string", key) end
  if opts ~= nil and type(opts) ~= "table" then argerror(3, "createClient", "table", opts) end
  local cfg = { baseUrl = url, apiKey = key }
  local returning
  for k, v in pairs(opts or {}) do
    if k == "returning" then
      returning = v
    elseif k ~= "baseUrl" then
      cfg[k] = v
    end
  end
  local c = setmetatable({ gateway = M.new(cfg), _returning = returning }, Client)
  if returning ~= nil then c:_columns(returning) end -- checks it
  return c
end

-- The columns a mutation asks back ("minimal": none).
function Client:_columns(returning)
  if returning == nil then returning = self._returning end
  if returning == nil or returning == "representation" then return "*" end
  if returning == "minimal" then return nil end
  if type(returning) == "string" then return returning end
  if type(returning) == "table" then return as_array(returning) end
  invalid("invalid returning: %s (\"minimal\", \"representation\" or columns)", show(returning))
end

--- client:from(table) -> query (filters first, then one terminal)
function Client:from(tname)
  if getmetatable(self) ~= Client then
    error(fmt("bad self to 'from' (athena.GatewayClient expected, got %s; call client:from(...))", type(self)), 2)
  end
  if type(tname) ~= "string" or tname == "" then argerror(1, "from", "non-empty string", tname) end
  return setmetatable({ _client = self, _table = tname, _conds = {}, _sort = {} }, Query)
end

local function check_column(fname, col)
  if type(col) ~= "string" or col == "" then argerror(1, fname, "column name", col, 4) end
end

local function add(q, c)
  q._conds[#q._conds + 1] = c
  return q
end

--- q:eq(col, v) (nil is null; both the operator and the legacy eq form)
function Query:eq(col, v)
  check_column("eq", col)
  if v == nil then v = null end
  v = as_array(v)
  return add(self, { operator = "eq", column = col, value = v, eq_column = col, eq_value = v })
end

for _, op in ipairs { "neq", "gt", "gte", "lt", "lte", "like", "ilike", "is" } do
  Query[op] = function(self, col, v)
    check_column(op, col)
    if v == nil then v = null end
    return add(self, { operator = op, column = col, value = v })
  end
end

for _, op in ipairs { "contains", "containedBy" } do
  Query[op] = function(self, col, v)
    check_column(op, col)
    if type(v) ~= "table" and type(v) ~= "string" then argerror(2, op, "table or string", v) end
    return add(self, { operator = op, column = col, value = as_array(v) })
  end
end

--- q["in"](q, col, list), also q:in_(col, list) (`in` is a Lua keyword)
Query["in"] = function(self, col, list)
  check_column("in", col)
  if type(list) ~= "table" then argerror(2, "in", "table", list) end
  return add(self, { operator = "in", column = col, value = M.array(list) })
end
Query.in_ = Query["in"]

-- A literal of an expression string (GATEWAY.md §3.2).
local function atom(v, fname)
  if v == nil or v == null then return "null" end
  local t = type(v)
  if t == "boolean" then return tostring(v) end
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    if v ~= v or v == math.huge or v == -math.huge then invalid("invalid %s value: %s", fname, tostring(v)) end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return fmt("%d", v) end
    return fmt("%.17g", v)
  end
  if t == "string" then
    if v == "" or v == "null" or v:find('[,()"\\]') or v:find("^%s") or v:find("%s$") then
      return '"' .. v:gsub('[\\"]', "\\%0") .. '"'
    end
    return v
  end
  invalid("invalid %s value: %s (a string, number, boolean or null)", fname, show(v))
end

--- q["not"](q, col, op, value), also q:not_(...): NOT (col op value), sent
-- as an expression string ("id.in.(1,2)").
Query["not"] = function(self, col, op, v)
  check_column("not", col)
  if type(op) ~= "string" or not op:match("^%a+$") then argerror(2, "not", "operator name", op) end
  local lit
  if op:lower() == "in" then
    if type(v) ~= "table" then argerror(3, "not", "table", v) end
    local items = {}
    for i, x in ipairs(v) do items[i] = atom(x, "not") end
    lit = "(" .. concat(items, ",") .. ")"
  else
    lit = atom(v, "not")
  end
  return add(self, { operator = "not", value = col .. "." .. op .. "." .. lit })
end
Query.not_ = Query["not"]

--- q["or"](q, filters), also q:or_(filters): an expression string
-- ("age.gt.100,and(active.is.false,email.is.null)").
Query["or"] = function(self, filters)
  if type(filters) ~= "string" or filters == "" then argerror(1, "or", "expression string", filters) end
  return add(self, { operator = "or", value = filters })
end
Query.or_ = Query["or"]

--- q:match{col = v, ...}: eq on each (in key order)
function Query:match(t)
  if type(t) ~= "table" then argerror(1, "match", "table", t) end
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then argerror(1, "match", "table with column keys", t) end
    keys[#keys + 1] = k
  end
  sort(keys)
  for _, k in ipairs(keys) do self:eq(k, t[k]) end
  return self
end

local function count_arg(fname, n, v)
  if math.type(v) ~= "integer" then
    if math.type(v) == "float" and v == math.floor(v) then
      v = math.tointeger(v)
    else
      argerror(n, fname, "integer", v, 4)
    end
  end
  if v < 0 then invalid("invalid %s: %d (must be >= 0)", fname, v) end
  return v
end

function Query:limit(n)
  self._limit = count_arg("limit", 1, n)
  return self
end

function Query:offset(n)
  self._offset = count_arg("offset", 1, n)
  return self
end

--- q:range(from, to): rows from..to, inclusive, 0-based
function Query:range(from, to)
  from, to = count_arg("range", 1, from), count_arg("range", 2, to)
  if to < from then invalid("invalid range: %d, %d (to must be >= from)", from, to) end
  self._offset, self._limit = from, to - from + 1
  return self
end

--- q:order(col, {ascending = false}); several calls sort by several keys
function Query:order(col, opts)
  check_column("order", col)
  if opts ~= nil and type(opts) ~= "table" then argerror(2, "order", "table", opts) end
  local desc = opts and opts.ascending == false
  self._sort[#self._sort + 1] = { field = col, direction = desc and "descending" or "ascending" }
  return self
end

local function check_keys(fname, opts, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then argerror(2, fname, "table", opts, 4) end
  for k in pairs(opts) do
    if not allowed[k] then invalid("unknown option %s to %s", tostring(k), fname) end
  end
  return opts
end

-- Bounds and sort of the query into payload p.
local function bounds(q, p)
  p.limit, p.offset = q._limit, q._offset
  if #q._sort == 1 then
    p.sort_by = q._sort[1]
  elseif #q._sort > 1 then
    p.sort_by = M.array(q._sort)
  end
end

local function conditions(q)
  return setmetatable(copy(q._conds), ARRAY)
end

-- A builder result from a gateway result.
local function result(r)
  return {
    data = r.ok and r.data or nil, error = r.error, count = r.count, affectedRows = r.affectedRows,
    status = r.status, raw = r.raw,
  }
end

local SELECT_KEYS = { count = true, head = true }

local function fetch(q, columns, opts, limit)
  if columns ~= nil and type(columns) ~= "string" and type(columns) ~= "table" then
    argerror(1, "select", "string or list of columns", columns, 4)
  end
  local p = { table_name = q._table, columns = columns or "*", conditions = conditions(q) }
  bounds(q, p)
  if limit and (p.limit == nil or p.limit > limit) then p.limit = limit end
  if opts.count ~= nil then p.count = opts.count end
  if opts.head ~= nil then p.head = opts.head end
  return q._client.gateway:fetchGateway(p)
end

--- q:select(columns, {count, head}) -> {data, error, count, status, raw}
function Query:select(columns, opts)
  return result(fetch(self, columns, check_keys("select", opts, SELECT_KEYS)))
end

local function one(q, columns, opts, fname, exactly)
  local r = fetch(q, columns, check_keys(fname, opts, SELECT_KEYS), 2)
  local out = result(r)
  if not r.ok then return out end
  local rows = type(r.data) == "table" and r.data or {}
  local n = #rows
  if n == 1 then
    out.data = rows[1]
  elseif n == 0 and not exactly then
    out.data = nil
  else
    out.data = nil
    out.error = new_error {
      code = "PGRST116", status = r.status, endpoint = "/gateway/fetch", method = "POST",
      message = "JSON object requested, multiple (or no) rows returned",
      detail = fmt("The result contains %d rows", n),
    }
  end
  return out
end

--- q:single(columns, opts): exactly one row as `data`, else an error
function Query:single(columns, opts)
  return one(self, columns, opts, "single", true)
end

--- q:maybeSingle(columns, opts): the row, nil for none, an error for more
function Query:maybeSingle(columns, opts)
  return one(self, columns, opts, "maybeSingle", false)
end

local INSERT_KEYS = { returning = true, count = true, defaultToNull = true }
local UPSERT_KEYS = { returning = true, count = true, defaultToNull = true, onConflict = true,
  updateBody = true, ignoreDuplicates = true }

local function insert(q, rows, opts, fname)
  if type(rows) ~= "table" then argerror(1, fname, "table", rows, 4) end
  local p = { table_name = q._table, insert_body = rows, columns = q._client:_columns(opts.returning) }
  if opts.count ~= nil then p.count = opts.count end
  if opts.defaultToNull ~= nil then p.default_to_null = opts.defaultToNull end
  if opts.onConflict ~= nil then p.on_conflict = opts.onConflict end
  if opts.updateBody ~= nil then
    if type(opts.updateBody) ~= "table" then invalid("invalid updateBody: %s (a table)", show(opts.updateBody)) end
    p.update_body = M.object(opts.updateBody)
  elseif opts.ignoreDuplicates then
    p.update_body = M.object {} -- DO NOTHING
  end
  return result(q._client.gateway:insertGateway(p))
end

--- q:insert(rows, {returning, count, defaultToNull})
function Query:insert(rows, opts)
  return insert(self, rows, check_keys("insert", opts, INSERT_KEYS), "insert")
end

--- q:upsert(rows, {onConflict, updateBody, ignoreDuplicates, defaultToNull,
-- returning, count})
function Query:upsert(rows, opts)
  return insert(self, rows, check_keys("upsert", opts, UPSERT_KEYS), "upsert")
end

local UPDATE_KEYS = { returning = true, count = true }

--- q:update(values, {returning, count}) (the filters come first)
function Query:update(values, opts)
  opts = check_keys("update", opts, UPDATE_KEYS)
  if type(values) ~= "table" then argerror(1, "update", "table", values) end
  local p = {
    table_name = self._table, update_body = M.object(values), conditions = conditions(self),
    columns = self._client:_columns(opts.returning),
  }
  if opts.count ~= nil then p.count = opts.count end
  bounds(self, p)
  return result(self._client.gateway:updateGateway(p))
end

local DELETE_KEYS = { resourceId = true, returning = true, count = true }

local function resource_string(v)
  if math.type(v) == "integer" then return tostring(v) end
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2 ^ 63 then return fmt("%d", v) end
  return tostring(v)
end

--- q:delete{resourceId, returning, count}: resource_id from resourceId,
-- else from an eq on id/resource_id; raises with neither it nor a filter.
function Query:delete(opts)
  if opts ~= nil and type(opts) ~= "table" then argerror(1, "delete", "table", opts) end
  opts = check_keys("delete", opts, DELETE_KEYS)
  local rid = opts.resourceId
  if rid ~= nil and type(rid) ~= "string" and type(rid) ~= "number" then
    invalid("invalid resourceId: %s (a string or a number)", show(rid))
  end
  if rid == nil then
    for _, c in ipairs(self._conds) do
      if c.operator == "eq" and (c.column == "id" or c.column == "resource_id")
        and (type(c.value) == "string" or type(c.value) == "number") then
        rid = c.value
        break
      end
    end
  end
  if rid == nil and #self._conds == 0 then
    invalid("delete needs a filter or resourceId (an unfiltered delete is refused)")
  end
  local p = {
    table_name = self._table, conditions = conditions(self),
    columns = self._client:_columns(opts.returning),
    resource_id = rid ~= nil and resource_string(rid) or nil,
  }
  if opts.count ~= nil then p.count = opts.count end
  bounds(self, p)
  return result(self._client.gateway:deleteGateway(p))
end

return M
