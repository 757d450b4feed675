-- busted helper (--helper): the second ctest run of every spec sets
-- ATHENA_TEST_GC=gc, which makes the collector run continuously, like luv's
-- aggressive-GC CI run, to flush out missing anchors in the bindings.
if os.getenv("ATHENA_TEST_GC") == "gc" then
  collectgarbage("setpause", 0)
end

-- A spec that hangs shows where: with ATHENA_TEST_STACKS=N (ctest sets it a
-- little under the test's timeout), a watchdog prints the stack of every
-- thread of this process (gdb, to stderr, which ctest shows for a failed
-- test) if it still runs N seconds from now. The watchdog looks once a
-- second whether the process is gone, and then goes too, so it holds ctest's
-- output pipe for at most a second after the spec ends. Without the
-- preloaded ASan runtime: the shell, sleep and gdb are not instrumented.
local stacks_after = tonumber(os.getenv("ATHENA_TEST_STACKS") or "")
if stacks_after and stacks_after > 0 then
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("n")
  if f then f:close() end
  if pid then
    os.execute(([[env -u LD_PRELOAD sh -c 'i=0; while kill -0 %d 2>/dev/null; do
      i=$((i + 1))
      if [ $i -eq %d ]; then
        echo "== still running after %d s: the stacks of its threads (tests/lua/helper.lua)" >&2
        gdb -p %d -batch -ex "thread apply all bt" >&2 2>&1 </dev/null
      fi
      sleep 1
    done' </dev/null &]]):format(pid, stacks_after, stacks_after, pid))
  end
end
