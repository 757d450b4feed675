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
