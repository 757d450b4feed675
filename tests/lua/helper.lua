-- busted helper (--helper): the second ctest run of every spec sets
-- ATHENA_TEST_GC=gc, which makes the collector run continuously, like luv's
-- aggressive-GC CI run, to flush out missing anchors in the bindings.
if os.getenv("ATHENA_TEST_GC") == "gc" then
  collectgarbage("setpause", 0)
end

-- A spec that hangs shows where: with ATHENA_TEST_STACKS=N (ctest sets it a
-- little under the test's timeout), a watchdog prints the stack of every
-- thread of this process (gdb) to the process's own stderr, which ctest
-- shows for a failed test, if it still runs N seconds from now. The watchdog
-- holds none of ctest's pipes (it opens /proc/PID/fd/2 only to write there),
-- so the test ends when the spec does; it looks once a second whether the
-- process is gone, and then goes too. It runs without the preloaded ASan
-- runtime: the shell, sleep and gdb are not instrumented.
local stacks_after = tonumber(os.getenv("ATHENA_TEST_STACKS") or "")
if stacks_after and stacks_after > 0 then
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("n")
  if f then f:close() end
  if pid then
    os.execute(([[env -u LD_PRELOAD sh -c 'i=0; while kill -0 %d 2>/dev/null; do
      i=$((i + 1))
      if [ $i -eq %d ]; then
        { echo "== still running after %d s: the stacks of its threads (tests/lua/helper.lua)"
          gdb -p %d -batch -ex "thread apply all bt" 2>&1 </dev/null; } >/proc/%d/fd/2 2>&1
      fi
      sleep 1
    done' </dev/null >/dev/null 2>&1 &]]):format(pid, stacks_after, stacks_after, pid, pid))
  end
end
