-- A custom backend: the world's journal goes through two Lua functions that
-- append to a JSON-lines file and read it back, and a restarted world
-- recovers the tasks that were still queued.   scripts/run scripts/examples/custom_backend.lua
--
-- persist and load run in the backend's own Lua state (the store thread),
-- not in this one: they are carried over as bytecode, so they use no
-- upvalues, only globals (require) and their arguments (info.config is the config
-- table below, info.dir the world's persistencePath).
local athena = require "athena"

local work = athena.activity("work", function(ctx, input)
  return { doubled = input.n * 2 }
end)

-- Appends one line per change; returns true once the lines are written.
-- (Standard Lua cannot fsync: durable as far as the kernel's page cache.)
local function persist(batch, info)
  local json = require("athena").json
  local f = assert(io.open(info.config.file, "a"))
  for _, row in ipairs(batch.tasks) do
    f:write(json.encode({ task = row }), "\n")
  end
  for _, row in ipairs(batch.schedules) do
    f:write(json.encode({ schedule = row }), "\n")
  end
  assert(f:flush())
  f:close()
  return true
end

-- Folds the file into the latest row of each task (by seq) and schedule
-- (by id): a row replaces the one before it, except the error a running
-- task's row keeps (keepError) and the workflow events, which append.
local function load(info)
  local json = require("athena").json
  local f = io.open(info.config.file, "r")
  if not f then return nil end -- nothing stored yet
  local tasks, schedules, order = {}, {}, {}
  for line in f:lines() do
    local rec = json.decode(line)
    local row = rec.task or rec.schedule
    if rec.task then
      local old = tasks[row.seq]
      if row.deleted then
        tasks[row.seq] = nil
      else
        if old == nil then order[#order + 1] = row.seq end
        if row.keepError and old then row.error = old.error end
        local events = old and old.events or {}
        for i, e in ipairs(row.events or {}) do events[row.eventsFrom + i] = e end
        row.events, row.eventsFrom = events, nil
        tasks[row.seq] = row
      end
    else
      schedules[row.id] = not row.deleted and row or nil
    end
  end
  f:close()
  local out = { tasks = {}, schedules = {} }
  table.sort(order)
  for _, seq in ipairs(order) do out.tasks[#out.tasks + 1] = tasks[seq] end
  for _, s in pairs(schedules) do out.schedules[#out.schedules + 1] = s end
  return out
end

local dir = os.tmpname()
os.remove(dir)
local file = dir .. ".jsonl"
local backend = athena.Backend.new{ persist = persist, load = load, config = { file = file } }

-- 1. A world journals through the backend; three tasks are delayed, so
--    they are still queued when it shuts down.
local world = athena.World.new{ persistence = "file", persistencePath = dir, backend = backend, minWorkers = 1 }
world:register(work)
world:start()
assert(world:execute("work", { n = 1 }, { id = "now" }):result())
for i = 1, 3 do
  world:execute("work", { n = i * 10 }, { id = "later-" .. i, delay = "300ms" })
end
world:shutdown()
local lines = 0
for _ in io.lines(file) do lines = lines + 1 end
print(("first world: %d journal lines in %s"):format(lines, file))

-- 2. A new world on the same file (a restart) recovers them and runs them.
local again = athena.World.new{ persistence = "file", persistencePath = dir, backend = backend, minWorkers = 1 }
again:register(work)
again:start()
for i = 1, 3 do
  -- an execute with an existing id hands back that task: the recovered one
  local h = again:execute("work", { n = i * 10 }, { id = "later-" .. i })
  local r = assert(h:result(10000))
  print(("recovered later-%d -> doubled %d"):format(i, r.doubled))
  assert(r.doubled == i * 20)
end
again:shutdown()
os.remove(file)
os.execute("rm -rf " .. dir)
print("ok")
