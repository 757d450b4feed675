-- The operator commands of the `athena` executable (cli/main.c), on the
-- store of a world with persistence "file" or "hybrid" (its persistencePath:
-- athena.db, written by engine/storage/store_sqlite.c):
--
--   athena tasks [--status S] [--name N] [--limit K] [--json] --path DIR
--   athena show ID [--json] --path DIR
--   athena requeue ID [--json] --path DIR
--   athena purge ID [--json] --path DIR
--   athena schedules [--json] --path DIR
--
-- Reads open the database read-only: it is in WAL mode, so they see the
-- latest commit and never block the world that writes it, running or not.
-- requeue and purge write, so they first take the store's lock the way a
-- world's start() does: while a world holds it they are refused (EBUSY),
-- since that world keeps the queue in memory and would never see, or would
-- overwrite, a change made behind its back; otherwise they apply the
-- transitions of world:requeue and world:purge in one transaction, and a
-- world started meanwhile waits for nothing: its start() fails with EBUSY.
--
-- Also `enableProgress`, the `--progress` option of `athena script.lua`.
local athena = require "athena"
local core = require "athena.core"
local errors = require "athena.errors"
local gateway = require "athena.gateway" -- its encoder keeps empty lists as []

local json, null = athena.json, athena.null
local fmt = string.format

local M = {}

--- The store schema this build reads: SCHEMA_VERSION of engine/storage/store_sqlite.c
-- (tests/lua/cli_spec.lua checks that a new store has it).
M.SCHEMA_VERSION = core.ops.storeSchemaVersion

-- ath_status_t, ath_strategy_t and the catch-up modes, by stored number.
local STATUS = { [0] = "pending", "scheduled", "running", "retrying", "compensating",
  "completed", "failed", "cancelled", "quarantined", "compensated" }
local STATUS_CODE = {}
for code, name in pairs(STATUS) do STATUS_CODE[name] = code end
local QUARANTINED = STATUS_CODE.quarantined
local STRATEGY = { [0] = "default", "retry", "cascade", "compensate", "ignore", "quarantine" }
local CATCH_UP = { [0] = "none", "one", "all" }

local USAGE = {
  tasks = "athena tasks [--status S] [--name N] [--limit K] [--json] --path DIR",
  show = "athena show ID [--json] --path DIR",
  requeue = "athena requeue ID [--json] --path DIR",
  purge = "athena purge ID [--json] --path DIR",
  schedules = "athena schedules [--json] --path DIR",
}
-- The value options each command takes (every one takes --path and --json).
local OPTIONS = { tasks = { status = true, name = true, limit = true } }
local TAKES_ID = { show = true, requeue = true, purge = true }

local UsageError = {}

local function usage(msg, ...)
  error(setmetatable({ message = fmt(msg, ...) }, UsageError), 0)
end

local function fail(code, msg, ...)
  error(errors.new(code, fmt(msg, ...)), 0)
end

----------------------------------------------------------------- arguments

local function parse(cmd, args)
  local o = { json = false }
  local i = 1
  while i <= #args do
    local a = args[i]
    local name = a:match("^%-%-(.+)$")
    if a == "--json" then
      o.json = true
    elseif name and (name == "path" or (OPTIONS[cmd] or {})[name]) then
      local v = args[i + 1]
      if v == nil then usage("--%s needs a value", name) end
      o[name] = v
      i = i + 1
    elseif name or a:sub(1, 1) == "-" then
      usage("unknown option %s", a)
    elseif TAKES_ID[cmd] and o.id == nil then
      o.id = a
    else
      usage("unexpected argument %s", a)
    end
    i = i + 1
  end
  if TAKES_ID[cmd] and (o.id == nil or o.id == "") then usage("a task ID is required") end
  if o.path == nil or o.path == "" then
    usage("--path DIR is required: the persistencePath of a world with persistence \"file\" or \"hybrid\"")
  end
  if o.status ~= nil and STATUS_CODE[o.status] == nil then
    local names = {}
    for c = 0, #STATUS do names[#names + 1] = STATUS[c] end
    usage("unknown status %s (one of: %s)", o.status, table.concat(names, ", "))
  end
  if o.limit ~= nil then
    local n = math.tointeger(tonumber(o.limit))
    if n == nil or n < 1 then usage("--limit needs a positive integer, got %s", o.limit) end
    o.limit = n
  end
  o.limit = o.limit or 100
  return o
end

--------------------------------------------------------------------- store

-- A path inside an SQLite URI: the characters that end or escape it.
local function uri_path(p)
  return (p:gsub("[%%?#]", function(c) return fmt("%%%02X", c:byte()) end))
end

--- Opens DIR/athena.db (read-only unless `write`) after checking that it
-- is an Athena store of this build's schema; raises an error value.
local function open_store(dir, write)
  local file = dir .. "/athena.db"
  local f = io.open(file, "rb")
  if f == nil then
    fail("ENOTFOUND", "not an Athena store: %s has no athena.db (the persistencePath of a world "
      .. "with persistence \"file\" or \"hybrid\")", dir)
  end
  f:close()
  local conn, err = athena.db.open("sqlite:file:" .. uri_path(file) .. (write and "?mode=rw" or "?mode=ro"))
  if conn == nil then fail("ESTORE", "cannot open %s: %s", file, err.message) end
  local rows, qerr = conn:query("PRAGMA user_version")
  if rows == nil then
    conn:close()
    fail("EINVAL", "not an Athena store: %s: %s", file, qerr.message)
  end
  local version = rows[1].user_version
  local tables = conn:query("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'"
    .. " AND name IN ('tasks', 'schedules')")
  if version > M.SCHEMA_VERSION then
    conn:close()
    fail("EINVAL", "%s has store schema version %d, newer than this athena's (%d): use the athena "
      .. "that wrote it, or a newer one", file, version, M.SCHEMA_VERSION)
  elseif version == 0 or tables == nil or tables[1].n == 0 then
    conn:close()
    fail("EINVAL", "not an Athena store: %s has no Athena schema", file)
  elseif version < M.SCHEMA_VERSION then
    conn:close()
    fail("EINVAL", "%s has store schema version %d, older than this athena's (%d): start a world "
      .. "on it once to migrate it", file, version, M.SCHEMA_VERSION)
  end
  return conn
end

-- (a workflow's history: its rows of workflow_events, joined by commas)
local TASK_COLUMNS = "seq, id, name, status, attempt, max_attempts, strategy, priority, queue,"
  .. " created_at, scheduled_at, ready_at, started_at, completed_at, worker_id, input, result,"
  .. " error, heartbeat, last_heartbeat, parent_id,"
  .. " (SELECT group_concat(event, ',') FROM (SELECT event FROM workflow_events e"
  .. "  WHERE e.task_seq = tasks.seq ORDER BY e.n)) AS history"

local function value(v)
  if v == null then return nil end
  return v
end

local function ms(v)
  v = value(v)
  if v == nil or v == 0 then return nil end
  return v
end

-- Stored JSON text, decoded (nulls kept); text that does not parse stays.
local function decoded(text)
  text = value(text)
  if text == nil then return nil end
  local ok, v = pcall(json.decode, text, { nulls = true })
  if ok then return v end
  return text
end

-- A row as the fields of world:query's state table that the store keeps.
local function task_state(r, full)
  local s = {
    id = r.id, name = r.name, status = STATUS[r.status] or tostring(r.status),
    attempt = r.attempt, maxAttempts = r.max_attempts, failureStrategy = STRATEGY[r.strategy],
    priority = r.priority, taskQueue = r.queue,
    createdAt = ms(r.created_at), scheduledAt = ms(r.scheduled_at), readyAt = ms(r.ready_at),
    startedAt = ms(r.started_at), completedAt = ms(r.completed_at),
    workerId = (value(r.worker_id) or 0) > 0 and ("worker-" .. r.worker_id) or nil,
    parentId = value(r.parent_id), error = decoded(r.error),
  }
  if full then
    s.input, s.result = decoded(r.input), decoded(r.result)
    s.heartbeatDetails, s.lastHeartbeat = decoded(r.heartbeat), ms(r.last_heartbeat)
    local h = value(r.history) -- the events, joined by commas
    if h ~= nil then s.history = decoded("[" .. h .. "]") end
  end
  return s
end

-- The latest row of task `id` (an id is unique among stored tasks, but a
-- purged id may be reused), or raises ENOTFOUND.
local function find_task(conn, id, dir)
  local rows = assert(conn:query("SELECT " .. TASK_COLUMNS .. " FROM tasks WHERE id = ?1"
    .. " ORDER BY seq DESC LIMIT 1", id))
  if rows[1] == nil then fail("ENOTFOUND", "no task %s in %s", id, dir) end
  return rows[1]
end

------------------------------------------------------------------- output

local function iso(t)
  if t == nil then return "" end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t // 1000)
end

local function show_value(v)
  if v == nil then return "" end
  if type(v) == "table" then return gateway.encode(v) end
  return tostring(v)
end

local function error_text(e)
  if type(e) == "table" then
    return (e.code and (tostring(e.code) .. ": ") or "") .. tostring(e.message or gateway.encode(e))
  end
  return show_value(e)
end

-- Prints rows (lists of strings) under `header`: aligned columns on a
-- terminal, each cell cut to `widths` (nil: any width); tab-separated
-- values otherwise, for cut and awk.
local function print_table(header, rows, widths, tty)
  local function cell(s, w)
    s = tostring(s):gsub("[%c]", " ")
    if tty and w and utf8.len(s) and utf8.len(s) > w then s = s:sub(1, utf8.offset(s, w) - 1) .. "…" end
    return s
  end
  local all = { header }
  for _, r in ipairs(rows) do all[#all + 1] = r end
  for _, r in ipairs(all) do
    for c = 1, #header do r[c] = cell(r[c] or "", widths[c]) end
  end
  if not tty then
    for _, r in ipairs(all) do io.write(table.concat(r, "\t"), "\n") end
    return
  end
  local width = {}
  for _, r in ipairs(all) do
    for c = 1, #header do width[c] = math.max(width[c] or 0, utf8.len(r[c]) or #r[c]) end
  end
  for _, r in ipairs(all) do
    local out = {}
    for c = 1, #header do
      out[c] = c < #header and r[c] .. string.rep(" ", width[c] - (utf8.len(r[c]) or #r[c])) or r[c]
    end
    io.write((table.concat(out, "  "):gsub("%s+$", "")), "\n")
  end
end

local function print_json(v)
  io.write(gateway.encode(v), "\n")
end

----------------------------------------------------------------- commands

local commands = {}

function commands.tasks(o, tty)
  local conn <close> = open_store(o.path, false)
  local where, params = {}, {}
  if o.status then
    where[#where + 1] = "status = ?" .. (#params + 1)
    params[#params + 1] = STATUS_CODE[o.status]
  end
  if o.name then
    where[#where + 1] = "name = ?" .. (#params + 1)
    params[#params + 1] = o.name
  end
  params[#params + 1] = o.limit
  local sql = "SELECT " .. TASK_COLUMNS .. " FROM tasks"
    .. (#where > 0 and (" WHERE " .. table.concat(where, " AND ")) or "")
    .. " ORDER BY created_at DESC, id LIMIT ?" .. #params
  local rows, err = conn:query(sql, table.unpack(params))
  if rows == nil then fail(err.code, "cannot read %s: %s", o.path, err.message) end
  local list = {}
  for i, r in ipairs(rows) do list[i] = task_state(r, false) end
  if o.json then return print_json(gateway.array(list)) end
  local out = {}
  for i, s in ipairs(list) do
    out[i] = { s.id, s.name, s.status, s.attempt .. "/" .. s.maxAttempts, s.taskQueue, iso(s.createdAt),
      s.error and error_text(s.error) or "" }
  end
  print_table({ "ID", "NAME", "STATUS", "ATTEMPT", "QUEUE", "CREATED", "ERROR" }, out,
    { 40, 30, nil, nil, 20, nil, 60 }, tty)
end

function commands.show(o)
  local conn <close> = open_store(o.path, false)
  local s = task_state(find_task(conn, o.id, o.path), true)
  if o.json then return print_json(s) end
  local lines = {
    { "id", s.id }, { "name", s.name }, { "status", s.status },
    { "attempt", s.attempt .. " of " .. s.maxAttempts }, { "failureStrategy", s.failureStrategy },
    { "taskQueue", s.taskQueue }, { "priority", s.priority }, { "parentId", s.parentId },
    { "createdAt", iso(s.createdAt) }, { "scheduledAt", iso(s.scheduledAt) },
    { "readyAt", iso(s.readyAt) }, { "startedAt", iso(s.startedAt) },
    { "completedAt", iso(s.completedAt) }, { "workerId", s.workerId },
    { "lastHeartbeat", iso(s.lastHeartbeat) }, { "heartbeatDetails", show_value(s.heartbeatDetails) },
    { "input", show_value(s.input) }, { "result", show_value(s.result) },
    { "error", s.error and error_text(s.error) or nil },
    { "history", s.history and show_value(s.history) or nil },
  }
  for _, l in ipairs(lines) do
    if l[2] ~= nil and l[2] ~= "" then io.write(fmt("%-17s %s\n", l[1], tostring(l[2]))) end
  end
  local tb = type(s.error) == "table" and s.error.traceback
  if type(tb) == "string" then io.write("traceback\n  ", (tb:gsub("\n", "\n  ")), "\n") end
end

-- requeue and purge: with the store's lock held, in one transaction, the
-- task must be quarantined (world:requeue / world:purge's rule).
local function mutate(o, verb, apply)
  local conn <close> = open_store(o.path, true) -- checks the store first: no lock file elsewhere
  local lock <close>, lerr = core.ops.lockStore(o.path)
  if lock == nil then
    if lerr.code == "EBUSY" then
      fail("EBUSY", "%s: %s the task through that world instead (world:%s(id), or %s on its HTTP "
        .. "surface), or stop it first", lerr.message, verb, verb,
        verb == "requeue" and "POST /api/tasks/<id>/requeue" or "DELETE /api/tasks/<id>")
    end
    fail(lerr.code, "%s", lerr.message)
  end
  local ok, err = conn:transaction(function(c)
    local r = find_task(c, o.id, o.path)
    if r.status ~= QUARANTINED then
      fail("EINVAL", "task %s is %s, not quarantined: only quarantined (dead-letter) tasks can be %s",
        o.id, STATUS[r.status] or tostring(r.status), verb == "requeue" and "requeued" or "purged")
    end
    return apply(c, r)
  end)
  if ok == nil then fail(err.code, "cannot %s %s in %s: %s", verb, o.id, o.path, err.message) end
end

local function done(o, status, text)
  if o.json then return print_json({ ok = true, id = o.id, status = status }) end
  io.write(text, "\n")
end

function commands.requeue(o)
  mutate(o, "requeue", function(c, r)
    -- ath_world_requeue: pending, attempt 0, no error, ready now
    return c:exec("UPDATE tasks SET status = ?1, attempt = 0, error = NULL, completed_at = NULL,"
      .. " ready_at = ?2 WHERE seq = ?3", STATUS_CODE.pending, core.now(), r.seq)
  end)
  done(o, "pending", fmt("requeued %s: pending; the next world started on %s runs it", o.id, o.path))
end

function commands.purge(o)
  mutate(o, "purge", function(c, r)
    return c:exec("DELETE FROM tasks WHERE seq = ?1", r.seq)
  end)
  done(o, "purged", fmt("purged %s from %s", o.id, o.path))
end

function commands.schedules(o, tty)
  local conn <close> = open_store(o.path, false)
  local rows, err = conn:query("SELECT id, name, input, cron, once_at, local_tz, catch_up, overlap_skip,"
    .. " paused, next_ms, last_ms, total, skipped FROM schedules ORDER BY id")
  if rows == nil then fail(err.code, "cannot read %s: %s", o.path, err.message) end
  local list = {}
  for i, r in ipairs(rows) do
    local paused = r.paused ~= 0
    list[i] = {
      id = r.id, name = r.name, input = decoded(r.input), cronExpression = value(r.cron),
      executeAt = ms(r.once_at), timezone = r.local_tz ~= 0 and "local" or "UTC",
      catchUp = CATCH_UP[r.catch_up], overlap = r.overlap_skip ~= 0 and "skip" or "allow",
      paused = paused, totalExecutions = r.total, skippedExecutions = r.skipped,
      lastExecution = ms(r.last_ms), nextExecution = not paused and ms(r.next_ms) or nil,
    }
  end
  if o.json then return print_json(gateway.array(list)) end
  local out = {}
  for i, s in ipairs(list) do
    out[i] = { s.id, s.name, s.cronExpression or ("once " .. iso(s.executeAt)), s.timezone,
      iso(s.nextExecution), iso(s.lastExecution), s.totalExecutions, s.skippedExecutions,
      s.paused and "yes" or "no" }
  end
  print_table({ "ID", "NAME", "WHEN", "TZ", "NEXT", "LAST", "RUNS", "SKIPPED", "PAUSED" }, out,
    { 40, 30, 30 }, tty)
end

--- Runs `athena <cmd> args...`; returns the exit status: 0, 1 for an
-- error (printed on stderr as `athena <cmd>: CODE: message`), 2 for a
-- usage error.
function M.main(cmd, ...)
  local args = { ... }
  local ok, err = pcall(function()
    local o = parse(cmd, args)
    return commands[cmd](o, core.ops.isatty(1))
  end)
  if ok then return 0 end
  if getmetatable(err) == UsageError then
    io.stderr:write(fmt("athena %s: %s\nusage: %s\n", cmd, err.message, USAGE[cmd]))
    return 2
  end
  io.stderr:write(fmt("athena %s: %s\n", cmd, tostring(err)))
  return 1
end

--- `athena --progress`: every world that World.new makes from now on is
-- shown on the status line (bindings/l_ops.c), when stderr is a terminal.
function M.enableProgress()
  local new = athena.World.new
  athena.World.new = function(...)
    local w = new(...)
    core.ops.progressWatch(w)
    return w
  end
end

return setmetatable(M, { __call = function(_, ...) return M.main(...) end })
