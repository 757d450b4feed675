-- busted helper (--helper): the second ctest run of every spec sets
-- ATHENA_TEST_GC=gc, which makes the collector run continuously, like luv's
-- aggressive-GC CI run, to flush out missing anchors in the bindings.
if os.getenv("ATHENA_TEST_GC") == "gc" then
  collectgarbage("setpause", 0)
end
