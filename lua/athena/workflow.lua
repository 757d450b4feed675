-- Workflow segments (SEMANTICS §9). A command whose outcome is recorded
-- returns it with no side effect; the first command without one executes
-- (starts a task, arms a timer, records a marker) and, when it has to
-- wait, parks the workflow: the segment ends, the worker slot is free, and
-- the engine queues the next segment once the outcome is in the history
-- (engine/runtime/world.c, "workflows"). The worker keeps the parked coroutine
-- (engine/runtime/wf_cache.c) and the next segment resumes it with only the new
-- events; when it no longer has it (evicted, a restart, another worker),
-- the handler is run again from the start against the whole history.
local core = require "athena.core"
local errors = require "athena.errors"

local M = {}

local STRATEGIES = { "retry", "cascade", "compensate", "ignore", "quarantine" } -- by ath_strategy_t

-- Events that record a command (the others record outcomes).
local COMMAND = {
  ["activity.scheduled"] = true, ["child.started"] = true, ["timer.started"] = true,
  marker = true, ["compensation.added"] = true,
}

local function invalid(fmt, ...)
  error(errors.new("EINVAL", string.format(fmt, ...)), 3)
end

local defs -- athena.definitions (required late: athena requires this module)
local function definitions()
  defs = defs or require("athena").definitions
  return defs
end

-- Adds history event ev to the index by command: sched[seq] = the
-- command's latest event, done[seq] = its outcome (failures only from this
-- run: a re-run executes them again, §9.3), and the compensations in
-- registration order. Adding an event twice changes nothing (a cached
-- segment is given back the events it recorded itself).
local function add(ix, ev, run)
  local ty = ev.type
  if COMMAND[ty] then
    ix.sched[ev.seq] = ev
    if ev.seq > ix.maxSeq then ix.maxSeq = ev.seq end
    if ty == "compensation.added" and not ix.compSeqs[ev.seq] then
      ix.compSeqs[ev.seq] = true
      ix.comps[#ix.comps + 1] = ev
    end
  elseif ty == "compensation.started" then
    ix.compStarted[ev.index] = ev
  elseif ty == "compensation.completed" or ty == "compensation.failed" then
    ix.compDone[ev.index] = ev
  elseif ty == "activity.completed" or ty == "child.completed" or ty == "timer.fired" then
    ix.done[ev.seq] = ev
  elseif ty == "activity.failed" or ty == "child.failed" then
    if ev.run == run then ix.done[ev.seq] = ev end
  elseif ty == "workflow.started" and ev.run == run then
    ix.started = ev
  end
end

local function index(history, run)
  local ix = { sched = {}, done = {}, comps = {}, compSeqs = {}, compStarted = {}, compDone = {}, maxSeq = 0 }
  for _, ev in ipairs(history) do add(ix, ev, run) end
  return ix
end

local Ctx = {}
Ctx.__index = Ctx
Ctx.__name = "athena.WorkflowContext"

local function next_seq(ctx)
  ctx._seq = ctx._seq + 1
  return ctx._seq
end

local function describe(ev)
  return ev.name and (ev.type .. " " .. ev.name) or (ev.kind and (ev.type .. " " .. ev.kind)) or ev.type
end

-- The recorded command at seq, checked against the one being issued.
local function recorded(ctx, seq, ty, name)
  local ev = ctx._ix.sched[seq]
  if ev ~= nil and (ev.type ~= ty or (name ~= nil and ev.name ~= name)) then
    local now = name and (ty .. " " .. name) or ty
    error(errors.new("ENONDETERMINISM", string.format(
      "workflow %s replay diverged at command %d: the code issued %s, the history has %s",
      ctx.workflowId, seq, now, describe(ev))), 0)
  end
  return ev
end

local function record(ctx, ev)
  ev.at = core.now()
  ev.run = ctx._run
  core.wfAppend(ev)
end

-- Parks the workflow until the outcome of command `seq` (a compensation's
-- index) is in the history. When its worker keeps the parked coroutine
-- (the sticky cache), the next segment resumes it here with the history's
-- length and only the new events, added to the index; otherwise the next
-- segment replays the workflow from the start and this call never returns.
local function resumed(ctx, total, ev, others)
  local ix, run = ctx._ix, ctx._run
  if ev ~= nil then add(ix, ev, run) end -- usually the one outcome
  if others ~= nil then
    for i = 1, #others do add(ix, others[i], run) end
  end
  ctx._historyLength = total
end

local function park(ctx, kind, seq, x)
  resumed(ctx, core.wfPark(kind, seq, x))
end

-- The outcome event of command seq after a park (always there: the engine
-- resumes a workflow once it is recorded).
local function awaited(ctx, done, seq)
  if done == nil then
    error(errors.new("EINVAL", string.format("workflow %s resumed without the outcome of command %d",
      ctx.workflowId, seq)), 0)
  end
  return done
end

-- A recorded outcome: true, result | false, error.
local COMPLETED = { ["activity.completed"] = true, ["child.completed"] = true, ["compensation.completed"] = true }
local function outcome(ev)
  if COMPLETED[ev.type] then return true, ev.result end
  return false, setmetatable(ev.error or {}, core.Error)
end

local RUN_OPTS = { taskQueue = true, priority = true, failureStrategy = true }
-- ctx:run's per-call limits (they replace the definition's for that call)
local LIMITS = { timeout = true, retry = true, scheduleToClose = true, heartbeatTimeout = true }
local ACTIVITY_ONLY = { scheduleToClose = true, heartbeatTimeout = true } -- SEMANTICS §3

-- The per-call limits in opts, checked and normalised (durations in ms,
-- retry as a definition's), or nil when there are none.
local NOOPTS = setmetatable({}, { __newindex = function() error("read-only", 2) end })

local function check_limits(fname, name, def, opts)
  if opts == NOOPTS then return nil end
  local out
  for k in pairs(LIMITS) do
    local v = opts[k]
    if v ~= nil then
      if ACTIVITY_ONLY[k] and def.kind == "workflow" then
        invalid("%s: option %s does not apply to workflow %s", fname, k, name)
      end
      local athena = require "athena"
      out = out or {}
      out[k] = k == "retry" and athena._checkRetry("retry", v) or athena._checkDuration(k, v, true)
    end
  end
  return out
end

local function check_call(fname, name, opts, extra)
  if type(name) ~= "string" then invalid("%s: name must be a string, got %s", fname, type(name)) end
  local def = definitions()[name]
  if def == nil then
    error(errors.new("ENOTFOUND", string.format("%s: no activity or workflow named %s", fname, name)), 3)
  end
  if opts == nil then return def, NOOPTS end
  if type(opts) ~= "table" then invalid("%s: options must be a table, got %s", fname, type(opts)) end
  for k, v in pairs(opts) do
    if LIMITS[k] and not (extra and extra[k]) then
      invalid("%s: option %s is taken from the definition of %s (per-call values are only for ctx:run)",
        fname, tostring(k), name)
    elseif not RUN_OPTS[k] and not (extra and extra[k]) then
      invalid("%s: unknown option %s", fname, tostring(k))
    end
    if k == "failureStrategy" then
      core.checkStrategy(v, "failureStrategy") -- the one validator: raises EINVAL listing the names
    elseif k == "priority" and math.type(v) ~= "integer" then
      invalid("invalid priority: %s (must be an integer)", tostring(v))
    elseif (k == "taskQueue" or k == "id") and type(v) ~= "string" then
      invalid("invalid %s: %s (must be a string)", k, tostring(v))
    end
  end
  return def, opts
end

-- What a task the workflow starts fails with: its call's, else its
-- definition's, else the workflow's own strategy.
local function strategy_of(ctx, def, opts)
  return opts.failureStrategy or def.options.failureStrategy or ctx._strategy
end

-- input: a value, or its JSON when `encoded`.
local function spawn(ctx, name, input, id, opts, strategy, limits, encoded)
  return core.wfSpawn(name, input, id, {
    taskQueue = opts.taskQueue, priority = opts.priority, delay = opts.delay, failureStrategy = strategy,
    limits = limits, encoded = encoded,
  })
end

--- ctx:run(name, input, opts): runs `name` through the queue and returns
-- its result; its error is raised (returned as nil, err under `ignore`).
function Ctx:run(name, input, opts)
  -- (the hot path of a workflow: a step calls as few functions as it can;
  -- a call without options checks only that name is defined, which a
  -- name that is not a string never is: check_call then says why)
  local def = opts == nil and (defs or definitions())[name] or nil
  if def ~= nil then
    opts = NOOPTS
  else
    def, opts = check_call("ctx:run", name, opts, LIMITS)
  end
  local limits = opts ~= NOOPTS and check_limits("ctx:run", name, def, opts) or nil
  local ix, seq = self._ix, self._seq + 1
  local done = ix.done[seq]
  local durable = self._durable
  -- checked (and encoded) once, when it is issued: not when replayed
  -- (core.wfRun checks and encodes it itself, and when it is not a payload
  -- gives the command number back, as here)
  local payload = done == nil and durable and core.encode(input, "input")
  self._seq = seq
  local ev = ix.sched[seq] and recorded(self, seq, "activity.scheduled", name)
  local strategy = opts.failureStrategy or def.options.failureStrategy or self._strategy -- strategy_of, inline
  if done == nil then
    if ev ~= nil and ev.run == self._run then
      park(self, "activity", seq, ev.taskId)
    elseif durable then -- file mode: each command durable before the next
      local id = string.format("%s/%d/%d", self.workflowId, self._run, seq)
      spawn(self, name, payload, id, opts, strategy, limits, true)
      record(self, { type = "activity.scheduled", seq = seq, name = name, taskId = id, limits = limits })
      park(self, "activity", seq, id)
    else -- the three in one call; the event travels with the park
      local total, ev, more = core.wfRun(name, input, self._run, seq, opts.taskQueue, opts.priority, strategy,
        limits, self)
      if ev == true then -- it completed, and that is all that happened: its result alone
        self._historyLength = total
        return more
      end
      resumed(self, total, ev, more)
    end
    done = ix.done[seq] or awaited(self, nil, seq)
  end
  if COMPLETED[done.type] then return done.result end
  local _, v = outcome(done)
  if strategy == "ignore" then return nil, v end
  error(v, 0)
end

local Child = {}
Child.__index = Child
Child.__name = "athena.ChildHandle"

--- ctx:executeChild(name, input, opts) -> handle: starts `name` as a child
-- (id opts.id or <workflowId>/<run>/<seq>) and returns at once.
function Ctx:executeChild(name, input, opts)
  local def
  def, opts = check_call("ctx:executeChild", name, opts, { id = true, delay = true })
  if opts.delay ~= nil then core.duration(opts.delay) end
  core.encode(input, "input")
  local seq = next_seq(self)
  local ev = recorded(self, seq, "child.started", name)
  local id
  if ev ~= nil then
    id = ev.childId
  else
    id = opts.id or string.format("%s/%d/%d", self.workflowId, self._run, seq)
    spawn(self, name, input, id, opts, strategy_of(self, def, opts))
    record(self, { type = "child.started", seq = seq, name = name, childId = id })
  end
  return setmetatable({ id = id, name = name, _ctx = self }, Child)
end

--- handle:result() -> result | nil, err: waits (parked) for the child.
function Child:result()
  local ctx = self._ctx
  local seq = next_seq(ctx)
  recorded(ctx, seq, "child.result")
  local done = ctx._ix.done[seq]
  if done == nil then
    park(ctx, "child", seq, self.id)
    done = awaited(ctx, ctx._ix.done[seq], seq)
  end
  local ok, v = outcome(done)
  if ok then return v end
  return nil, v
end

--- ctx:sleep(duration): a durable timer; parks until it fires.
function Ctx:sleep(duration)
  local ms = core.duration(duration)
  local seq = next_seq(self)
  local ev = recorded(self, seq, "timer.started")
  if self._ix.done[seq] ~= nil then return end
  local fireAt = ev and ev.fireAt
  if fireAt == nil then
    fireAt = core.now() + ms
    record(self, { type = "timer.started", seq = seq, fireAt = fireAt })
  end
  park(self, "timer", seq, fireAt)
  awaited(self, self._ix.done[seq], seq)
end

local function marker(ctx, kind, make)
  local seq = next_seq(ctx)
  local ev = recorded(ctx, seq, "marker")
  if ev ~= nil then
    if ev.kind ~= kind then
      error(errors.new("ENONDETERMINISM", string.format(
        "workflow %s replay diverged at command %d: the code asked for %s, the history has %s",
        ctx.workflowId, seq, kind, ev.kind)), 0)
    end
    return ev.value
  end
  local v = make()
  record(ctx, { type = "marker", seq = seq, kind = kind, value = v })
  return v
end

--- ctx:now() -> epoch ms, recorded on first run and replayed after.
function Ctx:now()
  return marker(self, "now", core.now)
end

--- ctx:random(m, n) -> as math.random(m, n), recorded and replayed.
function Ctx:random(m, n)
  local argc = (m ~= nil and 1 or 0) + (n ~= nil and 1 or 0)
  local ok, v = pcall(function()
    if argc == 0 then return math.random() elseif argc == 1 then return math.random(m) end
    return math.random(m, n)
  end)
  if not ok then invalid("ctx:random: %s", tostring(v)) end
  return marker(self, "random", function() return v end)
end

--- ctx:addCompensation(name, input): records activity `name` to run with
-- `input` if the workflow ends compensated (§9.5).
function Ctx:addCompensation(name, input)
  local def = check_call("ctx:addCompensation", name, nil)
  if def.kind ~= "activity" then invalid("ctx:addCompensation: %s is not an activity", name) end
  core.encode(input, "input")
  local seq = next_seq(self)
  if recorded(self, seq, "compensation.added", name) == nil then
    record(self, { type = "compensation.added", seq = seq, name = name, input = input })
  end
end

function Ctx:isCancelled()
  return self._base:isCancelled()
end

function Ctx:getMetadata()
  local def = definitions()[self._name]
  return {
    workflowId = self.workflowId, runId = self.runId, parentId = self.parentId,
    name = self._name, attempt = self._run,
    startedAt = self._ix.started and self._ix.started.at,
    taskQueue = def and def.options.taskQueue or "default",
    historyLength = self._historyLength,
  }
end

-- ctx.log: the task's logger, silent while the segment replays commands
-- an earlier segment already ran (§9.1).
local function logger(ctx, base)
  local log = {}
  for _, level in ipairs { "debug", "info", "warn", "error" } do
    log[level] = function(_, ...)
      if ctx._seq < ctx._ix.maxSeq then return end
      return base.log[level](base.log, ...)
    end
  end
  return log
end

-- The compensation segment: compensations in reverse order of
-- registration, one at a time, each as an activity task; one that does
-- not complete is recorded and the next runs (§9.5).
local function compensate(ctx, err)
  local ix = ctx._ix
  local failed = {}
  for i = #ix.comps, 1, -1 do
    local done = ix.compDone[i]
    if done == nil then
      local id = string.format("%s/comp/%d", ctx.workflowId, i)
      if ix.compStarted[i] == nil then
        local c = ix.comps[i]
        local def = definitions()[c.name]
        -- for compensations, compensate acts as retry and cascade as ignore (§8)
        local s = def and def.options.failureStrategy or "retry"
        s = s == "compensate" and "retry" or s == "cascade" and "ignore" or s
        core.wfSpawn(c.name, c.input, id, { failureStrategy = s })
        record(ctx, { type = "compensation.started", index = i, taskId = id })
      end
      park(ctx, "compensation", i, id)
      done = awaited(ctx, ix.compDone[i], i)
    end
    if done.type == "compensation.failed" then
      table.insert(failed, 1, i)
    end
  end
  local message = type(err) == "table" and type(err.message) == "string" and err.message
    or "workflow failed"
  return nil, errors.new("ECOMPENSATED", message, { cause = err, details = { failed = failed } })
end

--- Runs one segment (called by the worker, engine/runtime/worker.c).
function M.segment(handler, base, input, history, compensating, err, strategy, parentId)
  local run = base.attempt
  local ix = index(history, run)
  local ctx = setmetatable({
    workflowId = base.id, parentId = parentId,
    _base = base, _ix = ix, _seq = 0, _run = run, _name = base.name,
    _strategy = STRATEGIES[strategy] or "retry", _historyLength = #history,
    _durable = core.wfDurable(),
  }, Ctx)
  if compensating then return compensate(ctx, err) end
  local started = ix.started
  if started == nil then
    started = { type = "workflow.started", input = input, runId = core.uuid() }
    record(ctx, started)
    ix.started = started
  end
  ctx.runId = started.runId
  ctx.log = logger(ctx, base)
  return handler(ctx, input)
end

M.Context = Ctx
return M
