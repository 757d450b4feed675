-- The `athena` executable and `require "athena"` from stock lua5.4.
-- Every child process runs under `timeout`, so a hang fails the test
-- (exit code 124) instead of stalling the spec.
local athena = require "athena"

local BIN = assert(os.getenv("ATHENA_BIN"), "ATHENA_BIN must point at the athena binary")

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Runs `cmd` (a shell command line) and returns exit code, stdout, stderr.
local function sh(cmd, limit)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(("timeout -k 2 %d %s >%s 2>%s </dev/null"):format(limit or 30, cmd, out, err))
  local stdout, stderr = slurp(out), slurp(err)
  os.remove(out); os.remove(err)
  if how == "signal" then code = 128 + code end
  return code, stdout, stderr, ok
end

-- Runs the athena binary with the given (already quoted) arguments.
local function athena_cli(args, limit)
  return sh(q(BIN) .. " " .. args, limit)
end

local scripts = {}
-- Writes a temporary .lua script and returns its path.
local function script(src)
  local base = os.tmpname()
  local path = base .. ".lua"
  os.remove(base)
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  scripts[#scripts + 1] = path
  return path
end

describe("athena CLI", function()
  teardown(function()
    for _, p in ipairs(scripts) do os.remove(p) end
  end)

  it("--version prints the version and exits 0", function()
    local code, out = athena_cli("--version")
    assert.equals(0, code)
    assert.matches("athena", out)
    assert.is_truthy(out:find(athena.version, 1, true), out)
  end)

  it("--help prints usage and exits 0", function()
    local code, out = athena_cli("--help")
    assert.equals(0, code)
    assert.matches("usage", out)
    assert.matches("%-e", out)
  end)

  it("-e runs a chunk", function()
    local code, out, err = athena_cli("-e " .. q("print(1 + 1)"))
    assert.equals(0, code, err)
    assert.equals("2\n", out)
  end)

  it("-e sees the global athena, which is require 'athena'", function()
    local code, out, err = athena_cli("-e " ..
      q("print(type(athena), athena == require('athena'), type(athena.World.new), athena.version)"))
    assert.equals(0, code, err)
    assert.equals("table\ttrue\tfunction\t" .. athena.version .. "\n", out)
  end)

  it("-e without an argument is a usage error (exit 2)", function()
    local code, out, err = athena_cli("-e")
    assert.equals(2, code)
    assert.is_true(#err > 0)
    assert.equals("", out)
  end)

  it("an unknown option is a usage error (exit 2) naming it", function()
    local code, _, err = athena_cli("--bogus")
    assert.equals(2, code)
    assert.matches("%-%-bogus", err)
    code = athena_cli("-x " .. q("whatever.lua"))
    assert.equals(2, code)
  end)

  it("an error in -e prints the message with a traceback and exits 1", function()
    local code, _, err = athena_cli("-e " .. q("error('kaboom')"))
    assert.equals(1, code)
    assert.matches("kaboom", err)
    assert.matches("stack traceback", err)
  end)

  it("runs a script with the global arg and ... like lua does", function()
    local path = script([[
      print(arg[0], arg[1], arg[2], #arg, select("#", ...), ...)
      print(arg[-1] ~= nil, type(athena), athena == require "athena")
    ]])
    local code, out, err = athena_cli(q(path) .. " one 'two words'")
    assert.equals(0, code, err)
    local l1, l2 = out:match("^([^\n]*)\n([^\n]*)\n$")
    assert.equals(path .. "\tone\ttwo words\t2\t2\tone\ttwo words", l1)
    assert.equals("true\ttable\ttrue", l2)
  end)

  it("arg[-1] is the interpreter", function()
    local path = script([[print(arg[-1])]])
    local code, out = athena_cli(q(path))
    assert.equals(0, code)
    assert.equals(BIN .. "\n", out)
  end)

  it("a script error prints the message and a traceback to stderr and exits 1", function()
    local path = script([[
      local function inner() error("script failed here") end
      inner()
    ]])
    local code, out, err = athena_cli(q(path))
    assert.equals(1, code)
    assert.equals("", out)
    assert.matches("script failed here", err)
    assert.matches("stack traceback", err)
    assert.is_truthy(err:find(path, 1, true))
  end)

  it("an error value is printed through its __tostring", function()
    local path = script([[athena.World.new{ bogus = 1 }]])
    local code, _, err = athena_cli(q(path))
    assert.equals(1, code)
    assert.matches("EINVAL: ", err)
    assert.matches("bogus", err)
  end)

  it("an error object without __tostring is reported, exit 1", function()
    local code, _, err = athena_cli("-e " .. q("error({})"))
    assert.equals(1, code)
    assert.matches("table", err)
  end)

  it("a syntax error exits 1 naming the script", function()
    local path = script("local x = = 1\n")
    local code, _, err = athena_cli(q(path))
    assert.equals(1, code)
    assert.is_truthy(err:find(path, 1, true))
  end)

  it("a missing script exits 1", function()
    local code, _, err = athena_cli(q("/nonexistent/dir/nope.lua"))
    assert.equals(1, code)
    assert.is_true(#err > 0)
  end)

  it("os.exit(n) sets the exit code", function()
    local code = athena_cli("-e " .. q("os.exit(3)"))
    assert.equals(3, code)
  end)

  describe("scripts that run a world", function()
    -- Activities defined in the script itself: workers re-run the script in
    -- definition mode (up to world:start()), with the same arg.
    local src = [[
      local athena = require "athena"
      local factor = tonumber(arg[1])
      local mul = athena.activity("mul", function(ctx, x) return x * factor end)
      local world = athena.World.new{ minWorkers = 2, persistence = "memory" }
      world:register(mul)
      world:start()
      local hs = world:executeMany("mul", { 1, 2, 3 })
      local out = {}
      for i, h in ipairs(hs) do out[i] = assert(h:result(10000)) end
      print("result", table.concat(out, ","))
      %s
    ]]

    it("athena script.lua: inline activities bind in workers, which see arg", function()
      local path = script(src:format("world:shutdown()"))
      local code, out, err = athena_cli(q(path) .. " 7")
      assert.equals(0, code, err)
      assert.equals("result\t7,14,21\n", out) -- printed once: only the control state runs past start()
    end)

    it("the same script runs under stock lua5.4", function()
      local path = script(src:format("world:shutdown()"))
      local code, out, err = sh("lua5.4 " .. q(path) .. " 5")
      assert.equals(0, code, err)
      assert.equals("result\t5,10,15\n", out)
    end)

    it("a script that never calls shutdown still exits 0 (the world is closed at exit)", function()
      local path = script(src:format(""))
      local code, out, err = athena_cli(q(path) .. " 2")
      assert.equals(0, code, err)
      assert.equals("result\t2,4,6\n", out)
    end)

    it("a world whose module lacks a registered activity fails start() with ENOTFOUND, exit 1", function()
      local path = script([[
        local athena = require "athena"
        local ghost = athena.activity("ghost", function() end)
        local world = athena.World.new{ minWorkers = 1, persistence = "memory", modules = { "fixtures.jobs" } }
        world:register(ghost)
        world:start()
        print("not reached")
      ]])
      local code, out, err = athena_cli(q(path))
      assert.equals(1, code)
      assert.equals("", out)
      assert.matches("ENOTFOUND", err)
      assert.matches("ghost", err)
    end)
  end)
end)

describe("require 'athena' from stock lua5.4", function()
  it("works with LUA_PATH/LUA_CPATH", function()
    local code, out, err = sh("lua5.4 -e " .. q('local athena = require "athena"; print(type(athena.World), type(athena.activity), athena.version)'))
    assert.equals(0, code, err)
    assert.equals("table\tfunction\t" .. athena.version .. "\n", out)
  end)

  it("does not set a global athena", function()
    local code, out = sh("lua5.4 -e " .. q('require "athena"; print(rawget(_G, "athena"))'))
    assert.equals(0, code)
    assert.equals("nil\n", out)
  end)

  it("runs a world with modules from a -e chunk", function()
    local chunk = [[
      local athena = require "athena"
      local jobs = require "fixtures.jobs"
      local w = athena.World.new{ minWorkers = 1, persistence = "memory", modules = { "fixtures.jobs" } }
      w:register(jobs.add)
      w:start()
      print(w:execute("add", { a = 20, b = 22 }):result(10000))
      w:shutdown()
    ]]
    local code, out, err = sh("lua5.4 -e " .. q(chunk))
    assert.equals(0, code, err)
    assert.equals("42\n", out)
  end)
end)

-------------------------------------------------------- operator commands

-- A store made by a world in file mode: t-ok completed, t-bad quarantined,
-- t-failed failed, t-later scheduled an hour ahead; a cron schedule and a
-- one-off. `bad` fails while FAIL is set in the environment. With HOLD set,
-- the script keeps its world running and runs the shell command in HOLD
-- meanwhile, printing its exit code and output.
local STORE_SRC = [[
local athena = require "athena"
local ok = athena.activity("ok", function(ctx, x) return { doubled = x * 2 } end)
local bad = athena.activity("bad", function(ctx, x)
  if os.getenv("FAIL") then error("boom " .. tostring(x)) end
  return "fixed " .. tostring(x)
end, { retry = { maxAttempts = 1 } })
local w = athena.World.new{ persistence = "file", persistencePath = arg[1], minWorkers = 1, maxWorkers = 1 }
w:register(ok); w:register(bad)
w:start()
if os.getenv("HOLD") then
  local p = io.popen(os.getenv("HOLD") .. " 2>&1")
  local out = p:read("a")
  local _, _, code = p:close()
  io.write("code=", code, "\n", out)
  print("t-bad is " .. w:query("t-bad").status)
  w:shutdown()
  return
end
if arg[2] == "run" then -- recover, wait for t-bad, report
  print("t-bad", w:query("t-bad").status, w:execute("bad", 1, { id = "t-bad" }):result(10000))
  w:shutdown()
  return
end
assert(w:execute("ok", 21, { id = "t-ok" }):result(10000).doubled == 42)
w:execute("bad", 1, { id = "t-bad", failureStrategy = "quarantine" }):result(10000)
w:execute("bad", 2, { id = "t-failed", failureStrategy = "ignore" }):result(10000)
w:execute("ok", 5, { id = "t-later", delay = "1h" })
w:schedule("nightly", "ok", 3, "0 3 * * *")
w:scheduleOnce("ok", 4, os.time() * 1000 + 3600000)
w:shutdown()
]]

describe("athena tasks/show/requeue/purge/schedules", function()
  local json = athena.json
  local store_script, dirs = nil, {}

  local function tmpdir()
    local d = os.tmpname()
    os.remove(d)
    assert(os.execute("mkdir -p " .. q(d)))
    dirs[#dirs + 1] = d
    return d
  end

  -- A fresh store (see STORE_SRC) in a new directory.
  local function make_store()
    local dir = tmpdir() .. "/store"
    local code, _, err = sh("env FAIL=1 " .. q(BIN) .. " " .. q(store_script) .. " " .. q(dir))
    assert.equals(0, code, err)
    return dir
  end

  local function ops(args)
    return athena_cli(args)
  end

  local function ops_json(args)
    local code, out, err = ops(args .. " --json")
    assert.equals(0, code, err)
    return json.decode(out, { nulls = true })
  end

  local function ids(list)
    local o = {}
    for i, t in ipairs(list) do o[i] = t.id end
    return table.concat(o, ",")
  end

  setup(function()
    store_script = script(STORE_SRC)
  end)
  teardown(function()
    for _, d in ipairs(dirs) do os.execute("rm -rf " .. q(d)) end
  end)

  it("a new store has the schema version the commands read", function()
    local dir = make_store()
    local conn = assert(athena.db.open("sqlite:file:" .. dir .. "/athena.db?mode=ro"))
    assert.equals(require("athena.ops").SCHEMA_VERSION, conn:query("PRAGMA user_version")[1].user_version)
    conn:close()
  end)

  it("tasks --json lists the stored tasks newest first, filtered by --status, --name and --limit", function()
    local dir = make_store()
    local all = ops_json("tasks --path " .. q(dir))
    assert.equals(4, #all)
    for i = 2, #all do -- newest first (ties by id)
      assert.is_true(all[i - 1].createdAt > all[i].createdAt or
        (all[i - 1].createdAt == all[i].createdAt and all[i - 1].id < all[i].id))
    end
    local by = {}
    for _, t in ipairs(all) do by[t.id] = t end
    assert.equals("completed", by["t-ok"].status)
    assert.equals("quarantined", by["t-bad"].status)
    assert.equals("failed", by["t-failed"].status)
    assert.equals("scheduled", by["t-later"].status)
    assert.equals("EHANDLER", by["t-bad"].error.code)
    assert.matches("boom 1", by["t-bad"].error.message)
    assert.equals(1, by["t-bad"].attempt)
    assert.equals("quarantine", by["t-bad"].failureStrategy)
    assert.is_true(by["t-later"].readyAt > by["t-later"].createdAt + 3500000)
    assert.equals("t-bad", ids(ops_json("tasks --status quarantined --path " .. q(dir))))
    local bad = ops_json("tasks --name bad --path " .. q(dir))
    assert.equals(2, #bad)
    assert.equals(1, #ops_json("tasks --limit 1 --path " .. q(dir)))
    -- no match is an empty JSON array, not an object
    local code, out = ops("tasks --status running --json --path " .. q(dir))
    assert.equals(0, code)
    assert.equals("[]\n", out)
  end)

  it("show --json gives a workflow's history from its workflow_events rows", function()
    local dir = tmpdir() .. "/wfstore"
    local src = script([[
local athena = require "athena"
local ok = athena.activity("ok", function(ctx, x) return x * 2 end)
local flow = athena.workflow("flow", function(ctx, x) return ctx:run("ok", x) + ctx:run("ok", x) end)
local w = athena.World.new{ persistence = "file", persistencePath = arg[1], minWorkers = 1, maxWorkers = 1 }
w:register(ok); w:register(flow)
w:start()
assert(w:execute("flow", 3, { id = "wf-1" }):result(10000) == 12)
w:shutdown()
]])
    local code, _, err = sh(q(BIN) .. " " .. q(src) .. " " .. q(dir))
    assert.equals(0, code, err)
    local t = ops_json("show wf-1 --path " .. q(dir))
    local types = {}
    for i, ev in ipairs(t.history) do types[i] = ev.type end
    assert.same({ "workflow.started", "activity.scheduled", "activity.completed", "activity.scheduled",
      "activity.completed", "workflow.completed" }, types)
    assert.equals(6, t.history[3].result)
  end)

  it("show --json gives one task with its input, result and error", function()
    local dir = make_store()
    local t = ops_json("show t-ok --path " .. q(dir))
    assert.equals("completed", t.status)
    assert.equals(21, t.input)
    assert.equals(42, t.result.doubled)
    assert.equals("worker-1", t.workerId)
    t = ops_json("show t-bad --path " .. q(dir))
    assert.equals(1, t.input)
    assert.equals("EHANDLER", t.error.code)
    local code, out, err = ops("show t-bad --path " .. q(dir))
    assert.equals(0, code, err)
    assert.matches("status%s+quarantined\n", out)
    assert.matches("error%s+EHANDLER: .-boom 1", out)
  end)

  it("schedules --json lists cron and one-off schedules with their next run", function()
    local dir = make_store()
    local list = ops_json("schedules --path " .. q(dir))
    assert.equals(2, #list)
    local by = {}
    for _, s in ipairs(list) do by[s.name .. (s.cronExpression or "once")] = s end
    local nightly = by["ok0 3 * * *"]
    assert.equals("nightly", nightly.id)
    assert.equals(3, nightly.input)
    assert.equals("UTC", nightly.timezone)
    assert.is_false(nightly.paused)
    assert.equals(0, nightly.totalExecutions)
    assert.equals(0, (nightly.nextExecution // 1000) % 86400 - 3 * 3600) -- 03:00 UTC
    local once = by["okonce"]
    assert.equals(once.executeAt, once.nextExecution)
  end)

  it("prints tab-separated rows when stdout is not a terminal", function()
    local dir = make_store()
    local code, out, err = ops("tasks --status quarantined --path " .. q(dir))
    assert.equals(0, code, err)
    local header, row = out:match("^([^\n]*)\n([^\n]*)\n$")
    assert.equals("ID\tNAME\tSTATUS\tATTEMPT\tQUEUE\tCREATED\tERROR", header)
    assert.matches("^t%-bad\tbad\tquarantined\t1/1\tdefault\t%d%d%d%d%-%d%d%-%d%dT[%d:]+Z\tEHANDLER: ", row)
    code, out = ops("schedules --path " .. q(dir))
    assert.equals(0, code)
    assert.matches("^ID\tNAME\tWHEN\tTZ\tNEXT\tLAST\tRUNS\tSKIPPED\tPAUSED\n", out)
    assert.matches("\nnightly\tok\t0 3 %* %* %*\tUTC\t", out)
  end)

  it("prints aligned columns on a terminal", function()
    local dir = make_store()
    -- script(1) gives the command a pseudo-terminal
    local code, out, err = sh("script -qec " .. q(q(BIN) .. " tasks --path " .. q(dir)) .. " /dev/null")
    assert.equals(0, code, err)
    out = out:gsub("\r\n", "\n")
    assert.is_nil(out:find("\t", 1, true))
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equals(5, #lines)
    assert.matches("^ID%s%s+NAME%s%s+STATUS%s%s+ATTEMPT%s%s+QUEUE%s%s+CREATED%s%s+ERROR$", lines[1])
    -- every column starts at the same offset on every line
    local col = lines[1]:find("STATUS", 1, true)
    for i = 2, 5 do
      assert.matches("^%S", lines[i]:sub(col), lines[i])
      assert.matches("%s%s$", lines[i]:sub(1, col - 1), lines[i])
    end
  end)

  it("requeue puts a quarantined task back as pending; the next world runs it", function()
    local dir = make_store()
    local code, out, err = ops("requeue t-bad --path " .. q(dir))
    assert.equals(0, code, err)
    assert.matches("requeued t%-bad", out)
    local t = ops_json("show t-bad --path " .. q(dir))
    assert.equals("pending", t.status)
    assert.equals(0, t.attempt)
    assert.is_nil(t.error)
    assert.is_nil(t.completedAt)
    code, out, err = sh(q(BIN) .. " " .. q(store_script) .. " " .. q(dir) .. " run")
    assert.equals(0, code, err)
    assert.matches("^t%-bad\t%a+\tfixed 1\n$", out)
    assert.equals("completed", ops_json("show t-bad --path " .. q(dir)).status)
  end)

  it("requeue and purge refuse a task that is not quarantined; purge deletes a quarantined one", function()
    local dir = make_store()
    for _, cmd in ipairs { "requeue", "purge" } do
      for _, id in ipairs { "t-ok", "t-failed", "t-later" } do
        local code, _, err = ops(cmd .. " " .. id .. " --path " .. q(dir))
        assert.equals(1, code)
        assert.matches("EINVAL: task " .. id:gsub("%-", "%%-") .. " is %a+, not quarantined", err)
      end
    end
    local res = ops_json("purge t-bad --path " .. q(dir))
    assert.same({ ok = true, id = "t-bad", status = "purged" }, res)
    local left = ids(ops_json("tasks --path " .. q(dir)))
    assert.is_nil(left:find("t-bad", 1, true), left)
    assert.equals(3, #ops_json("tasks --path " .. q(dir)))
    local code, _, err = ops("purge t-bad --path " .. q(dir))
    assert.equals(1, code)
    assert.matches("ENOTFOUND: no task t%-bad in ", err)
  end)

  it("reads beside a running world; requeue is refused with EBUSY while the world holds the store", function()
    local dir = make_store()
    local hold = q(BIN) .. " tasks --status quarantined --json --path " .. q(dir) .. " && " ..
      q(BIN) .. " requeue t-bad --path " .. q(dir)
    local code, out, err = sh("env FAIL=1 HOLD=" .. q(hold) .. " " .. q(BIN) .. " " .. q(store_script) .. " " .. q(dir))
    assert.equals(0, code, err)
    assert.matches('^code=1\n%[{.-"id":"t%-bad".-}%]\n', out) -- the read worked, the requeue did not
    assert.matches("athena requeue: EBUSY: persistencePath .- is held by another world: requeue the task through that world", out)
    assert.matches("POST /api/tasks/<id>/requeue", out)
    assert.matches("\nt%-bad is quarantined\n$", out) -- nothing changed behind the world's back
    assert.equals("quarantined", ops_json("show t-bad --path " .. q(dir)).status)
    -- with the world gone, the same command works
    code = ops("requeue t-bad --path " .. q(dir))
    assert.equals(0, code)
  end)

  it("reports a missing --path or ID, an unknown status or option, as usage errors (exit 2)", function()
    local cases = {
      { "tasks", "%-%-path DIR is required" },
      { "show --path /tmp", "a task ID is required" },
      { "tasks --status nope --path /tmp", "unknown status nope %(one of: pending, .*quarantined" },
      { "tasks --limit -3 --path /tmp", "%-%-limit needs a positive integer" },
      { "schedules --bogus --path /tmp", "unknown option %-%-bogus" },
      { "tasks --path", "%-%-path needs a value" },
    }
    for _, c in ipairs(cases) do
      local code, out, err = ops(c[1])
      assert.equals(2, code, c[1])
      assert.equals("", out)
      assert.matches(c[2], err)
      assert.matches("usage: athena ", err)
    end
  end)

  it("reports an unknown id, a directory that is no store, a foreign database and a newer schema (exit 1)", function()
    local dir = make_store()
    local code, _, err = ops("show nope --path " .. q(dir))
    assert.equals(1, code)
    assert.matches("ENOTFOUND: no task nope in ", err)

    local empty = tmpdir()
    code, _, err = ops("requeue t-bad --path " .. q(empty))
    assert.equals(1, code)
    assert.matches("ENOTFOUND: not an Athena store: .- has no athena.db", err)
    assert.is_nil(io.open(empty .. "/athena.lock"), "nothing created in a directory that is no store")
    assert.is_nil(io.open(empty .. "/athena.db"))

    local foreign = tmpdir()
    local conn = assert(athena.db.open("sqlite:" .. foreign .. "/athena.db"))
    conn:exec("CREATE TABLE users (id INTEGER)")
    conn:close()
    code, _, err = ops("tasks --path " .. q(foreign))
    assert.equals(1, code)
    assert.matches("EINVAL: not an Athena store: .- has no Athena schema", err)

    local text = tmpdir()
    local f = assert(io.open(text .. "/athena.db", "w"))
    f:write(("not a database\n"):rep(100))
    f:close()
    code, _, err = ops("tasks --path " .. q(text))
    assert.equals(1, code)
    assert.matches("EINVAL: not an Athena store", err)

    conn = assert(athena.db.open("sqlite:" .. dir .. "/athena.db"))
    conn:exec("PRAGMA user_version = 99")
    conn:close()
    code, _, err = ops("schedules --path " .. q(dir))
    assert.equals(1, code)
    assert.matches("EINVAL: .- has store schema version 99, newer than this athena's %(" ..
      require("athena.core").ops.storeSchemaVersion .. "%)", err)
    code, _, err = ops("purge t-bad --path " .. q(dir))
    assert.equals(1, code)
    assert.matches("newer than this athena's", err)
  end)
end)

describe("athena --progress", function()
  local src = [[
    local athena = require "athena"
    local ok = athena.activity("ok", function(ctx, x) return x end)
    local bad = athena.activity("bad", function(ctx, x) error("no") end, { retry = { maxAttempts = 1 } })
    local w = athena.World.new{ persistence = "memory", minWorkers = 1, maxWorkers = 1 }
    w:register(ok); w:register(bad)
    w:start()
    for _, h in ipairs(w:executeMany("ok", { 1, 2, 3 })) do h:result(10000) end
    w:execute("bad", 1, { failureStrategy = "ignore" }):result(10000)
    print("done")
  ]]

  it("draws nothing when stderr is not a terminal", function()
    local path = script(src)
    local code, out, err = athena_cli("--progress " .. q(path))
    assert.equals(0, code, err)
    assert.equals("done\n", out)
    assert.is_nil(err:find("tasks/s", 1, true), err)
    assert.is_nil(err:find("\r", 1, true), err)
  end)

  it("draws the status line in place on a terminal, ending with the final figures", function()
    local path = script(src)
    local code, out, err = sh("script -qec " .. q(q(BIN) .. " --progress " .. q(path)) .. " /dev/null")
    assert.equals(0, code, err)
    assert.matches("\r\27%[Kathena: %d+ tasks/s | queued %d+ | running %d+ | failed %d+ | retried %d+", out)
    assert.matches("done", out)
    -- the last line: every task finished, one failed; it ends with a newline
    local last = out:match("\r\27%[K(athena: [^\r\n]*)\r?\n$")
    assert.is_truthy(last, out)
    assert.matches("| queued 0 | running 0 | failed 1 | retried 0$", last)
  end)

  it("athena serve --progress draws the line until it is stopped", function()
    local cmd = "sh -c " .. q("echo PID=$$; exec " .. q(BIN) .. " serve --progress --persistence memory --port 0")
    local p = assert(io.popen("timeout -k 2 60 script -qec " .. q(cmd) .. " /dev/null </dev/null", "r"))
    local seen, pid = "", nil
    while not seen:find("retried %d") do -- the line is drawn at once; EOF ends the wait
      local c = p:read(1)
      if c == nil then break end
      seen = seen .. c
      pid = pid or seen:match("PID=(%d+)\r?\n")
    end
    assert.is_truthy(pid, seen)
    assert.matches("serving http://127%.0%.0%.1:%d+", seen)
    assert.matches("\r\27%[Kathena: 0 tasks/s | queued 0 | running 0 | failed 0 | retried 0", seen)
    os.execute("kill -TERM " .. pid)
    local rest = p:read("a")
    p:close()
    assert.matches("\r\27%[Kathena: info: SIGTERM: shutting down", rest)
  end)
end)
