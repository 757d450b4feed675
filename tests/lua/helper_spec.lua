-- The busted helper's watchdog (tests/lua/helper.lua): a spec still running
-- ATHENA_TEST_STACKS seconds after it started gets the stacks of its threads
-- printed into its own stderr, which is what ctest shows of a hung test.
local S = require "fixtures.support"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

describe("the hung-spec watchdog", function()
  it("prints every thread's stack into the spec's stderr once it has run ATHENA_TEST_STACKS seconds", function()
    local dir = S.sh("mktemp -d /tmp/athena-watchdog-XXXXXX"):gsub("%s+$", "")
    local errf = dir .. "/stderr"
    -- a spec that waits (with a deadline) until its own stderr holds a stack
    local spec = io.open(dir .. "/waits_spec.lua", "w")
    spec:write(([[
describe("waits", function() it("for its stacks", function()
  local deadline = os.time() + 20
  while os.time() < deadline do
    local f = io.open(%q)
    local s = f and f:read("a") or ""
    if f then f:close() end
    if s:find("Thread 1 (", 1, true) then return end
    os.execute("sleep 0.05")
  end
  error("no stacks")
end) end)
]]):format(errf))
    spec:close()
    local out, rc = S.sh(("(cd %s && ATHENA_TEST_STACKS=1 lua5.4 /usr/bin/busted --helper=%s -o utfTerminal %s 2>%s)")
      :format(q(os.getenv("ATHENA_SRC") or "."), q("tests/lua/helper.lua"), q(dir .. "/waits_spec.lua"), q(errf)))
    local err = S.readfile(errf) or ""
    os.execute("rm -rf " .. q(dir))
    assert.equals(0, rc, out .. err)
    assert.matches("== still running after 1 s: the stacks of its threads", err, 1, true)
    assert.matches("Thread 1 (", err, 1, true)
  end)
end)
