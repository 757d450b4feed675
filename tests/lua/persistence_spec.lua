-- Persistence (SEMANTICS §13): modes, what survives a restart, the lock
-- file, schema versions and migrations, retention, and when `file` mode
-- acknowledges. Each test works in a fresh directory and shuts its worlds
-- down; the database is inspected with the sqlite3 command-line tool (Debian
-- package sqlite3, installed by scripts/bootstrap).
local athena = require "athena"
local S = require "fixtures.support"
local jobs = require "fixtures.store_jobs"

local WAIT = 10000

-------------------------------------------------------------------- helpers

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local sh = S.sh

local function exists(path)
  local _, rc = sh("test -e " .. q(path))
  return rc == 0
end

local readfile = S.readfile

local function writefile(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- One SQL statement (or several) against db through the sqlite3 CLI;
-- returns its output without the trailing newline.
local function sql(db, query)
  local out, rc = sh("sqlite3 -batch -cmd '.timeout 5000' " .. q(db) .. " " .. q(query))
  assert(rc == 0, "sqlite3 " .. db .. " failed (" .. tostring(rc) .. "): " .. out)
  return (out:gsub("%s+$", ""))
end

local dirs, worlds = {}, {}

-- A fresh path that does not exist yet (removed by after_each).
local function tmppath()
  local p = os.tmpname()
  os.remove(p)
  dirs[#dirs + 1] = p
  return p
end

-- A world (not started) on `path` with every store_jobs activity registered.
local function world(mode, path, extra)
  local cfg = {
    persistence = mode, persistencePath = path, modules = { "fixtures.store_jobs" },
    minWorkers = 1, maxWorkers = 1, taskQueues = { solo = { workers = 1 } },
  }
  for k, v in pairs(extra or {}) do cfg[k] = v end
  local w = athena.World.new(cfg)
  w:register(table.unpack(jobs.all()))
  worlds[#worlds + 1] = w
  return w
end

local function started(mode, path, extra)
  local w = world(mode, path, extra)
  w:start()
  return w
end

-- h:result() with a generous deadline; running out of it fails the test.
local function result(h, timeout)
  local r, err = h:result(timeout or WAIT)
  if r == nil and err and err.code == "ETIMEDOUT" then
    error(("task %s did not finish in time (status %s)"):format(h.id, h:status()), 2)
  end
  return r, err
end

local raises = S.raises

local eventually = S.eventually

local await = S.await

-- The schema version this build migrates to (engine/storage/store_sqlite.c).
local function schema_version()
  local src = assert(os.getenv("ATHENA_SRC"), "ATHENA_SRC must point at the source tree")
  local v = readfile(src .. "/engine/storage/store_sqlite.c"):match("#define SCHEMA_VERSION (%d+)")
  return assert(tonumber(v), "SCHEMA_VERSION not found in engine/storage/store_sqlite.c")
end

-- Runs a Lua script (text) with the athena binary, killed after `limit` s;
-- returns its stdout+stderr and exit code (124 or 137: timed out).
local function run_child(script, args, limit)
  local bin = assert(os.getenv("ATHENA_BIN"), "ATHENA_BIN must point at the athena binary")
  local file = tmppath() .. ".lua"
  dirs[#dirs + 1] = file
  writefile(file, script)
  local cmd = ("timeout -k 2 %d %s %s"):format(limit, q(bin), q(file))
  for _, a in ipairs(args) do cmd = cmd .. " " .. q(a) end
  return sh(cmd .. " </dev/null")
end

local ids, contains = S.ids, S.contains

local function cleanup()
  for i = #worlds, 1, -1 do
    pcall(worlds[i].shutdown, worlds[i], { timeout = 100 })
    worlds[i] = nil
  end
  for i = #dirs, 1, -1 do
    os.execute("rm -rf " .. q(dirs[i]) .. " " .. q(dirs[i] .. ".marker"))
    dirs[i] = nil
  end
end

-- Version-1 `tasks` tables by hand. The current migrations[0] of
-- engine/storage/store_sqlite.c (tasks keyed by seq, since commit 14c7ae6) ...
local V1_SCHEMA = "CREATE TABLE tasks ("
  .. " seq INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL, status INTEGER NOT NULL,"
  .. " attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL, strategy INTEGER NOT NULL,"
  .. " priority INTEGER NOT NULL, queue TEXT NOT NULL,"
  .. " created_at INTEGER NOT NULL, scheduled_at INTEGER NOT NULL, ready_at INTEGER NOT NULL,"
  .. " started_at INTEGER, completed_at INTEGER, worker_id INTEGER,"
  .. " input TEXT NOT NULL, result TEXT, error TEXT);"
-- The child for the idempotent-execute test: a world on arg[1] in mode
-- arg[2]; runs st.echo as id idem-1, then executes idem-1 again in the same
-- world and in a restarted one, printing what each step got.
local IDEMPOTENT_CHILD = [[
local athena = require "athena"
local jobs = require "fixtures.store_jobs"
local path, mode = arg[1], arg[2]
local function world()
  local w = athena.World.new { persistence = mode, persistencePath = path,
    modules = { "fixtures.store_jobs" }, minWorkers = 1, maxWorkers = 1 }
  w:register(jobs.echo)
  w:start()
  return w
end
local function say(s) io.stdout:write(s, "\n"); io.stdout:flush() end
local w = world()
say("first " .. tostring(w:execute("st.echo", "first", { id = "idem-1" }):result(5000)))
local h = w:execute("st.echo", "second", { id = "idem-1" })
say("same-world-execute-returned")
say("same-world " .. tostring(h:result(5000)) .. " attempt " .. w:query("idem-1").attempt)
w:shutdown()
local w2 = world()
local h2 = w2:execute("st.echo", "third", { id = "idem-1" })
say("restarted-execute-returned")
say("restarted " .. tostring(h2:result(5000)) .. " attempt " .. w2:query("idem-1").attempt)
w2:shutdown()
say("ok")
os.exit(0)
]]

------------------------------------------------------------------- the spec

describe("persistence", function()
  after_each(cleanup)

  it("the sqlite3 command-line tool is installed (the spec inspects databases with it)", function()
    local _, rc = sh("command -v sqlite3")
    assert.equals(0, rc, "sqlite3 CLI missing: install the Debian package sqlite3 (scripts/bootstrap)")
  end)

  describe("memory", function()
    it("creates nothing on disk: persistencePath does not exist after start and shutdown", function()
      local path = tmppath()
      local w = started("memory", path)
      assert.equals("hi", result(w:execute("st.echo", "hi")))
      assert.is_false(exists(path), "memory mode created " .. path)
      w:shutdown()
      assert.is_false(exists(path), "memory mode created " .. path)
    end)

    it("a second memory world on the same path is not locked out", function()
      local path = tmppath()
      started("memory", path)
      local w2 = started("memory", path)
      assert.equals(1, result(w2:execute("st.echo", 1)))
      assert.is_false(exists(path))
    end)
  end)

  for _, mode in ipairs { "file", "hybrid" } do
    describe(mode, function()
      it("start() creates <path>/athena.db and athena.lock in a directory of mode 0700", function()
        local path = tmppath()
        started(mode, path)
        assert.is_true(exists(path .. "/athena.db"), "no athena.db")
        assert.is_true(exists(path .. "/athena.lock"), "no athena.lock")
        local out, rc = sh("stat -c %a " .. q(path))
        assert.equals(0, rc)
        assert.equals("700", (out:gsub("%s+$", "")))
      end)

      it("completed and failed tasks are queryable after a clean restart, with result, input, attempt and error", function()
        local path = tmppath()
        local w1 = started(mode, path)
        local input = { a = 1, list = { 1, 2, 3 }, s = "x", f = 2.5, nested = { ok = true } }
        assert.same(input, result(w1:execute("st.echo", input, { id = "done-1" })))
        local _, err = result(w1:execute("st.fail", "broken", { id = "failed-1" }))
        assert.equals("EMINE", err.code)
        local before = { done = w1:query("done-1"), failed = w1:query("failed-1") }
        assert.same({ drained = 0, requeued = 0, abandoned = 0 }, w1:shutdown())

        local w2 = started(mode, path)
        local d = assert(w2:query("done-1"))
        assert.equals("completed", d.status)
        assert.equals("st.echo", d.name)
        assert.same(input, d.input)
        assert.same(input, d.result)
        assert.equals(1, d.attempt)
        assert.equals(before.done.createdAt, d.createdAt)
        assert.equals(before.done.startedAt, d.startedAt)
        assert.equals(before.done.completedAt, d.completedAt)
        assert.equals("default", d.taskQueue)
        assert.is_nil(d.error)

        local f = assert(w2:query("failed-1"))
        assert.equals("failed", f.status)
        assert.equals("broken", f.input)
        assert.is_nil(f.result)
        assert.equals(1, f.attempt)
        assert.equals(before.failed.completedAt, f.completedAt)
        assert.is_table(f.error)
        assert.equals("EMINE", f.error.code)
        assert.equals("broken", f.error.message)
        assert.is_false(f.error.retryable)
        assert.equals(1, f.error.attempt)
        assert.equals("EMINE: broken", tostring(f.error))

      end)

      it("queryTasks filters (status, name, since/until, limit, offset) give the same answers after a restart", function()
        local path = tmppath()
        local w1 = started(mode, path)
        local function run(name, input, opts)
          local h = w1:execute(name, input, opts)
          if not (opts and opts.delay) then result(h) end
          -- distinct createdAt for every task (epoch ms, athena.now's clock)
          local c = w1:query(h.id).createdAt
          eventually(function() return athena.now() > c end, 1000, "the clock to move on")
          return h
        end
        run("st.echo", 1, { id = "qt-1" })
        run("st.fail", "x", { id = "qt-2" })
        run("st.echo", 3, { id = "qt-3" })
        run("st.echo", 4, { id = "qt-4", delay = 60000 })
        run("st.fail", "y", { id = "qt-5" })
        local created = {}
        for i = 1, 5 do created[i] = w1:query("qt-" .. i).createdAt end
        for i = 2, 5 do
          assert.is_true(created[i] > created[i - 1], "createdAt not increasing at qt-" .. i)
        end
        local filters = {
          { { status = "completed" }, { "qt-3", "qt-1" } },
          { { status = { "failed", "scheduled" } }, { "qt-5", "qt-4", "qt-2" } },
          { { name = "st.fail" }, { "qt-5", "qt-2" } },
          { { since = created[2], ["until"] = created[4] }, { "qt-4", "qt-3", "qt-2" } },
          { { since = created[4] }, { "qt-5", "qt-4" } },
          { { limit = 2 }, { "qt-5", "qt-4" } },
          { { limit = 2, offset = 1 }, { "qt-4", "qt-3" } },
          { { offset = 4 }, { "qt-1" } },
          { { name = "st.echo", status = "completed", limit = 1, offset = 1 }, { "qt-1" } },
          { { status = "quarantined" }, {} },
        }
        for i, fx in ipairs(filters) do
          assert.same(fx[2], ids(w1:queryTasks(fx[1])), "before restart, filter " .. i)
        end
        w1:shutdown()

        local w2 = started(mode, path)
        for i, fx in ipairs(filters) do
          assert.same(fx[2], ids(w2:queryTasks(fx[1])), "after restart, filter " .. i)
        end
        local rows = w2:queryTasks { status = "completed" }
        assert.equals(3, rows[1].result)
        assert.equals(1, rows[2].result)
        local failed = w2:queryTasks { status = "failed" }
        assert.equals("EMINE", failed[1].error.code)
        assert.equals("y", failed[1].error.message)
      end)

      it("a delayed task survives a restart and still runs after it", function()
        local path = tmppath()
        local w1 = started(mode, path)
        local h = w1:execute("st.echo", "later", { id = "delayed-1", delay = 300 })
        local q1 = w1:query("delayed-1")
        assert.equals("scheduled", q1.status)
        assert.equals(q1.createdAt + 300, q1.scheduledAt)
        assert.same({ drained = 0, requeued = 0, abandoned = 0 }, w1:shutdown())
        assert.equals("scheduled", h:status())
        assert.equals("1|0", sql(path .. "/athena.db", "SELECT status, attempt FROM tasks WHERE id = 'delayed-1'"))

        local w2 = started(mode, path)
        local q2 = w2:query("delayed-1")
        assert.equals(q1.scheduledAt, q2.scheduledAt)
        assert.equals(q1.createdAt, q2.createdAt)
        local q3 = await(w2, "delayed-1")
        assert.equals("later", q3.result)
        assert.equals("completed", q3.status)
        assert.equals(1, q3.attempt)
        assert.is_true(q3.startedAt >= q1.scheduledAt, "ran before its due time")
      end)

      -- One slot on "solo": A (a checkpointing task) runs, B waits behind it
      -- with a lower priority; shutdown{timeout = 100} interrupts A (T14).
      local function interrupted_at_shutdown()
        local path = tmppath()
        local w1 = started(mode, path)
        local a = w1:execute("st.solo.checkpoint", { ms = 3000, resumeMs = 300, tag = "a" }, { id = "int-a" })
        eventually(function()
          local s = a:query()
          return s.status == "running" and s.heartbeatDetails ~= nil
        end, 5000, "int-a to run and heartbeat")
        local b = w1:execute("st.solo.echo", "b", { id = "int-b", priority = -1 })
        assert.equals("pending", b:status())
        local t0 = athena.now()
        local r = w1:shutdown { timeout = 100 }
        assert.is_true(athena.now() - t0 < 2000, "shutdown took " .. (athena.now() - t0) .. " ms")
        -- B could not be claimed (the slot was A's): it stays queued in the store
        assert.same({ drained = 0, requeued = 1, abandoned = 0 }, r)
        return path, w1, a, b
      end

      it("a task pending at shutdown (never claimed) is pending after restart, then completes", function()
        local path, _, _, b = interrupted_at_shutdown()
        assert.equals("pending", b:status())
        assert.equals(0, b:query().attempt)
        assert.equals("0|0", sql(path .. "/athena.db", "SELECT status, attempt FROM tasks WHERE id = 'int-b'"))

        local w2 = started(mode, path)
        -- int-a (priority 0) takes the only slot first, for >= 300 ms
        local qb = w2:query("int-b")
        assert.equals("pending", qb.status)
        assert.equals(0, qb.attempt)
        assert.equals("b", qb.input)
        local r = await(w2, "int-b")
        assert.equals("completed", r.status)
        assert.same({ attempt = 1, input = "b" }, r.result)
        assert.equals(1, w2:query("int-b").attempt)
      end)

      it("a running task interrupted by shutdown{timeout} comes back pending, attempt not counted (T14), and completes after restart with attempt 1", function()
        local path, _, a = interrupted_at_shutdown()
        local qa = a:query()
        assert.equals("pending", qa.status)
        assert.equals(0, qa.attempt)
        assert.same({ phase = "started", n = 1 }, qa.heartbeatDetails)
        assert.equals("0|0", sql(path .. "/athena.db", "SELECT status, attempt FROM tasks WHERE id = 'int-a'"))

        local w2 = started(mode, path)
        local q2 = w2:query("int-a")
        assert.is_true(q2.status == "pending" or q2.status == "running", "status " .. q2.status)
        assert.is_true(q2.attempt <= 1, "attempt " .. q2.attempt)
        local q3 = await(w2, "int-a")
        assert.equals("completed", q3.status)
        -- attempt 1 again, and it resumed from the checkpoint of the interrupted attempt
        assert.same({ attempt = 1, seen = { phase = "started", n = 1 }, tag = "a" }, q3.result)
        assert.equals(1, q3.attempt)
        assert.same({ phase = "started", n = 2 }, q3.heartbeatDetails)
      end)

      it("quarantined tasks survive a restart and can be requeued after it", function()
        local path = tmppath()
        local marker = path .. ".marker"
        local w1 = started(mode, path)
        local h = w1:execute("st.gated", { marker = marker }, { id = "qz-1", failureStrategy = "quarantine" })
        local r, err = result(h)
        assert.is_nil(r)
        assert.equals("EFATAL", err.code)
        assert.equals("quarantined", h:status())
        w1:shutdown()

        writefile(marker, "open")
        local w2 = started(mode, path)
        local q2 = w2:query("qz-1")
        assert.equals("quarantined", q2.status)
        assert.equals(1, q2.attempt)
        assert.equals("quarantine", q2.failureStrategy)
        assert.equals("EFATAL", q2.error.code)
        assert.equals("gate closed", q2.error.message)
        assert.is_true(contains(ids(w2:getQuarantined()), "qz-1"))
        assert.is_true(w2:requeue("qz-1"))
        local q3 = await(w2, "qz-1")
        assert.equals("completed", q3.status)
        assert.same({ attempt = 1 }, q3.result)
        assert.is_false(contains(ids(w2:getQuarantined()), "qz-1"))
        w2:shutdown()

        -- and the requeued outcome is what the next world sees
        local w3 = started(mode, path)
        assert.equals("completed", w3:query("qz-1").status)
        assert.equals(1, w3:query("qz-1").attempt)
      end)

      it("heartbeat details survive a restart", function()
        local path = tmppath()
        local w1 = started(mode, path)
        local details = { step = 3, note = "hi", list = { 1, 2 } }
        assert.same({ attempt = 1 }, result(w1:execute("st.beat", { details = details }, { id = "hb-1" })))
        local q1 = w1:query("hb-1")
        assert.same(details, q1.heartbeatDetails)
        assert.is_number(q1.lastHeartbeat)
        w1:shutdown()

        local w2 = started(mode, path)
        local q2 = w2:query("hb-1")
        assert.same(details, q2.heartbeatDetails)
        assert.equals(q1.lastHeartbeat, q2.lastHeartbeat)
      end)

      it("execute() with the id of an existing task returns its handle at once (same world and after a restart)", function()
        -- In a child process: a call that never returns must fail this test,
        -- not hang the spec.
        local path = tmppath()
        local out, rc = run_child(IDEMPOTENT_CHILD, { path, mode }, 6)
        local function has(text, why)
          assert(out:find(text, 1, true), (why or ("missing " .. text:gsub("\n", ""))) .. "; child output:\n" .. out)
        end
        has("first first\n")
        has("same-world-execute-returned\n", "execute() of an existing id did not return (same world)")
        has("same-world first attempt 1\n")
        has("restarted-execute-returned\n", "execute() of an existing id did not return (after a restart)")
        has("restarted first attempt 1\n")
        has("ok\n")
        assert.equals(0, rc, out)
      end)

      it("a second world on the same path: start() raises EBUSY; once the first shuts down a new world starts", function()
        local path = tmppath()
        local w1 = started(mode, path)
        local h = w1:execute("st.echo", "first", { id = "busy-1" })
        assert.equals("first", result(h))
        local w2 = world(mode, path)
        local err = raises("EBUSY", w2.start, w2)
        assert.matches(path, err.message, 1, true)
        -- the failed start did not disturb the first world
        assert.equals("again", result(w1:execute("st.echo", "again")))
        -- a world in the other persisting mode is locked out too
        local other = world(mode == "file" and "hybrid" or "file", path)
        raises("EBUSY", other.start, other)
        w1:shutdown()

        local w3 = started(mode, path)
        assert.equals("first", w3:query("busy-1").result)
        assert.equals("x", result(w3:execute("st.echo", "x")))
      end)

      it("refuses a database with a newer schema (EINVAL) and loses nothing", function()
        local path = tmppath()
        assert(os.execute("mkdir -m 700 " .. q(path)))
        local db = path .. "/athena.db"
        sql(db, "CREATE TABLE keep (v TEXT); INSERT INTO keep VALUES ('precious'); PRAGMA user_version = 99;")
        local w = world(mode, path)
        local err = raises("EINVAL", w.start, w)
        assert.matches("99", err.message, 1, true)
        assert.equals("99", sql(db, "PRAGMA user_version"))
        assert.equals("precious", sql(db, "SELECT v FROM keep"))
        assert.equals("0", sql(db, "SELECT count(*) FROM sqlite_master WHERE name = 'tasks'"))
        -- the failed start released the lock: a new world fails the same way, not EBUSY
        local w2 = world(mode, path)
        raises("EINVAL", w2.start, w2)
        assert.equals("99", sql(db, "PRAGMA user_version"))
      end)

      it("refuses a foreign database (tables, user_version 0) with EINVAL and leaves it alone", function()
        local path = tmppath()
        assert(os.execute("mkdir -m 700 " .. q(path)))
        local db = path .. "/athena.db"
        sql(db, "CREATE TABLE other (a INTEGER); INSERT INTO other VALUES (42);")
        assert.equals("delete", sql(db, "PRAGMA journal_mode"))
        local content = readfile(db)
        local w = world(mode, path)
        raises("EINVAL", w.start, w)
        -- not Athena's file: not a byte changed (no switch to WAL either)
        assert.equals("delete", sql(db, "PRAGMA journal_mode"), "start() switched a foreign database to WAL")
        assert.equals(content, readfile(db), "start() modified a foreign database")
        assert.equals("0", sql(db, "PRAGMA user_version"))
        assert.equals("42", sql(db, "SELECT a FROM other"))
        assert.equals("0", sql(db, "SELECT count(*) FROM sqlite_master WHERE name = 'tasks'"))
      end)

      for _, kind in ipairs { "random bytes", "a text file" } do
        it("refuses a corrupt athena.db (" .. kind .. ") with ESTORE and does not overwrite it", function()
          local path = tmppath()
          assert(os.execute("mkdir -m 700 " .. q(path)))
          local db = path .. "/athena.db"
          if kind == "random bytes" then
            assert(os.execute("head -c 8192 /dev/urandom > " .. q(db)))
          else
            writefile(db, "this is not a database\njust some text\n")
          end
          local content = readfile(db)
          local w = world(mode, path)
          local err = raises("ESTORE", w.start, w)
          assert.is_string(err.message)
          assert.equals(content, readfile(db), "athena.db was modified")
          -- and again (the lock was released)
          local w2 = world(mode, path)
          raises("ESTORE", w2.start, w2)
          assert.equals(content, readfile(db), "athena.db was modified")
        end)
      end

      it("raises ESTORE naming the path when persistencePath cannot be created", function()
        local file = tmppath()
        writefile(file, "a regular file")
        local path = file .. "/x"
        local w = world(mode, path)
        local err = raises("ESTORE", w.start, w)
        assert.matches(path, err.message, 1, true)
        assert.equals("a regular file", readfile(file))
      end)

      it("migrates a version-1 database: rows kept, heartbeat columns added, user_version = SCHEMA_VERSION", function()
        local path = tmppath()
        assert(os.execute("mkdir -m 700 " .. q(path)))
        local db = path .. "/athena.db"
        local now = athena.now()
        sql(db, V1_SCHEMA
          .. ("INSERT INTO tasks VALUES (7, 'old-1', 'st.echo', 5, 1, 3, 1, 0, 'default', %d, %d, %d, %d, %d, 1,"
            .. " '\"legacy\"', '{\"ok\":true}', NULL);"):format(now - 1000, now - 1000, now - 1000, now - 900, now - 800)
          .. ("INSERT INTO tasks VALUES (8, 'old-2', 'st.echo', 0, 0, 3, 1, 0, 'default', %d, %d, %d, NULL, NULL, 0,"
            .. " '\"waiting\"', NULL, NULL);"):format(now - 700, now - 700, now - 700)
          .. "PRAGMA user_version = 1;")
        assert.equals("1", sql(db, "PRAGMA user_version"))

        local w = started(mode, path)
        local q1 = assert(w:query("old-1"))
        assert.equals("completed", q1.status)
        assert.same({ ok = true }, q1.result)
        assert.equals("legacy", q1.input)
        assert.equals(1, q1.attempt)
        assert.equals(now - 1000, q1.createdAt)
        assert.equals(now - 800, q1.completedAt)
        assert.is_nil(q1.heartbeatDetails)
        -- a pending v1 row is recovered and runs
        local q2 = await(w, "old-2")
        assert.equals("completed", q2.status)
        assert.equals("waiting", q2.result)
        local v = schema_version()
        assert.is_true(v >= 2)
        assert.equals(tostring(v), sql(db, "PRAGMA user_version"))
        assert.equals("2", sql(db,
          "SELECT count(*) FROM pragma_table_info('tasks') WHERE name IN ('heartbeat', 'last_heartbeat')"))
        -- the migrated store takes new rows with heartbeats
        result(w:execute("st.beat", { details = { k = 1 } }, { id = "new-1" }))
        w:shutdown()
        assert.equals('{"k":1}', sql(db, "SELECT heartbeat FROM tasks WHERE id = 'new-1'"))
        assert.equals("5", sql(db, "SELECT status FROM tasks WHERE id = 'old-2'"))
        local w2 = started(mode, path)
        assert.same({ k = 1 }, w2:query("new-1").heartbeatDetails)
        assert.equals("completed", w2:query("old-1").status)
        assert.equals("completed", w2:query("old-2").status)
      end)


      it("migrates a version-5 database: histories move to workflow_events, a parked workflow resumes from them", function()
        local path = tmppath()
        assert(os.execute("mkdir -m 700 " .. q(path)))
        local db = path .. "/athena.db"
        local now = athena.now()
        -- version 5 by hand: migrations 0-4 of engine/storage/store_sqlite.c
        local V5 = V1_SCHEMA
          .. "ALTER TABLE tasks ADD COLUMN heartbeat TEXT; ALTER TABLE tasks ADD COLUMN last_heartbeat INTEGER;"
          .. "CREATE TABLE schedules (id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, input TEXT NOT NULL,"
          .. " cron TEXT, once_at INTEGER, local_tz INTEGER NOT NULL, catch_up INTEGER NOT NULL,"
          .. " overlap_skip INTEGER NOT NULL, paused INTEGER NOT NULL, has_priority INTEGER NOT NULL,"
          .. " priority INTEGER NOT NULL, strategy INTEGER NOT NULL, queue TEXT, next_ms INTEGER, last_ms INTEGER,"
          .. " total INTEGER NOT NULL, skipped INTEGER NOT NULL);"
          .. "ALTER TABLE tasks ADD COLUMN parent_id TEXT; ALTER TABLE tasks ADD COLUMN history TEXT;"
          .. "CREATE INDEX tasks_id ON tasks (id); CREATE INDEX tasks_status ON tasks (status, created_at);"
          .. "CREATE INDEX tasks_name ON tasks (name, created_at);"
          .. "CREATE INDEX tasks_parent ON tasks (parent_id, seq) WHERE parent_id IS NOT NULL;"
        -- wf-old: st.flow {n = 2}, parked after its first step completed
        -- (a running workflow: recovery resumes it by replay)
        local hist = ('{"type":"workflow.started","at":%d,"run":1,"input":{"n":2},"runId":"r-1"},'
          .. '{"type":"activity.scheduled","at":%d,"run":1,"seq":1,"name":"st.echo","taskId":"wf-old/1/1"},'
          .. '{"type":"activity.completed","at":%d,"run":1,"seq":1,"result":1}'):format(now - 900, now - 900, now - 800)
        -- wf-done: a finished one, its history kept as it was
        local done = ('{"type":"workflow.started","at":%d,"run":1,"input":{"n":0},"runId":"r-2"},'
          .. '{"type":"workflow.completed","at":%d,"run":1,"result":0}'):format(now - 500, now - 400)
        sql(db, V5
          .. ("INSERT INTO tasks (seq, id, name, status, attempt, max_attempts, strategy, priority, queue,"
            .. " created_at, scheduled_at, ready_at, started_at, completed_at, worker_id, input, result, error,"
            .. " history) VALUES (3, 'wf-old', 'st.flow', 2, 1, 4, 1, 0, 'default', %d, %d, %d, %d, NULL, 1,"
            .. " '{\"n\":2}', NULL, NULL, '%s');"):format(now - 1000, now - 1000, now - 1000, now - 900, hist)
          .. ("INSERT INTO tasks (seq, id, name, status, attempt, max_attempts, strategy, priority, queue,"
            .. " created_at, scheduled_at, ready_at, started_at, completed_at, worker_id, input, result, error,"
            .. " history) VALUES (4, 'wf-done', 'st.flow', 5, 1, 4, 1, 0, 'default', %d, %d, %d, %d, %d, 1,"
            .. " '{\"n\":0}', '0', NULL, '%s');"):format(now - 500, now - 500, now - 500, now - 500, now - 400, done)
          .. "PRAGMA user_version = 5;")

        local w = started(mode, path)
        local q1 = await(w, "wf-old")
        assert.equals("completed", q1.status)
        assert.equals(3, q1.result) -- step 1 from the migrated history (not run), step 2 run now
        assert.equals("r-1", q1.history[1].runId)
        assert.equals("workflow.completed", q1.history[#q1.history].type)
        assert.equals(1, #q1.children) -- wf-old/1/2: step 1 was not run again
        assert.equals("wf-old/1/2", q1.children[1])
        local q2 = assert(w:query("wf-done"))
        assert.same({ "workflow.started", "workflow.completed" },
          { q2.history[1].type, q2.history[2].type })
        assert.equals(tostring(schema_version()), sql(db, "PRAGMA user_version"))
        w:shutdown()
        -- one row per event; no history column left to rewrite
        assert.equals("0", sql(db, "SELECT count(*) FROM tasks WHERE history IS NOT NULL"))
        assert.equals("2", sql(db, "SELECT count(*) FROM workflow_events WHERE task_seq = 4"))
        assert.equals(tostring(#q1.history), sql(db, "SELECT count(*) FROM workflow_events WHERE task_seq = 3"))
        assert.equals("activity.completed", sql(db,
          "SELECT json_extract(event, '$.type') FROM workflow_events WHERE task_seq = 3 AND n = 2"))
        local w2 = started(mode, path)
        assert.same(q1.history, w2:query("wf-old").history)
      end)

      it("migrates a version-7 database: tasks lose NOT NULL, a workflow's stored tasks get its seq (parent_seq) and are read by it, its events move to a rowid table", function()
        local path = tmppath()
        local db = path .. "/athena.db"
        local w = started(mode, path)
        assert.equals(6, result(w:execute("st.flow", { n = 3 }, { id = "wf-m7" })))
        local children = w:query("wf-m7").children
        local history = w:query("wf-m7").history
        assert.equals(3, #children)
        w:shutdown()
        -- back to version 7: tasks with NOT NULL columns and no parent_seq,
        -- tasks_parent on the id, the events keyed by (task_seq, n)
        sql(db, "CREATE TABLE t7 (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL,"
          .. " status INTEGER NOT NULL, attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL,"
          .. " strategy INTEGER NOT NULL, priority INTEGER NOT NULL, queue TEXT NOT NULL,"
          .. " created_at INTEGER NOT NULL, scheduled_at INTEGER NOT NULL, ready_at INTEGER NOT NULL,"
          .. " started_at INTEGER, completed_at INTEGER, worker_id INTEGER, input TEXT NOT NULL, result TEXT,"
          .. " error TEXT, heartbeat TEXT, last_heartbeat INTEGER, parent_id TEXT, history TEXT, call TEXT);"
          .. " INSERT INTO t7 SELECT seq, id, name, status, attempt, max_attempts, strategy, priority, queue,"
          .. " created_at, scheduled_at, ready_at, started_at, completed_at, worker_id, input, result, error,"
          .. " heartbeat, last_heartbeat, parent_id, history, call FROM tasks;"
          .. " DROP TABLE tasks; ALTER TABLE t7 RENAME TO tasks;"
          .. " CREATE INDEX tasks_id ON tasks (id) WHERE status >= 5;"
          .. " CREATE INDEX tasks_status ON tasks (status, created_at) WHERE status >= 5;"
          .. " CREATE INDEX tasks_parent ON tasks (parent_id, seq) WHERE parent_id IS NOT NULL AND status >= 5;"
          .. " ALTER TABLE workflow_events RENAME TO e8;"
          .. " CREATE TABLE workflow_events (task_seq INTEGER NOT NULL, n INTEGER NOT NULL,"
          .. " event TEXT NOT NULL, PRIMARY KEY (task_seq, n)) WITHOUT ROWID;"
          .. " INSERT INTO workflow_events SELECT task_seq, n, event FROM e8; DROP TABLE e8;"
          .. " CREATE TRIGGER tasks_events AFTER DELETE ON tasks BEGIN"
          .. " DELETE FROM workflow_events WHERE task_seq = old.seq; END;"
          .. " PRAGMA user_version = 7;")
        assert.equals("12", sql(db, "SELECT count(*) FROM pragma_table_info('tasks') WHERE \"notnull\""))
        local w2 = started(mode, path)
        assert.equals(tostring(schema_version()), sql(db, "PRAGMA user_version"))
        local seq = sql(db, "SELECT seq FROM tasks WHERE id = 'wf-m7'")
        assert.equals("3", sql(db, "SELECT count(*) FROM tasks WHERE parent_seq = " .. seq))
        assert.matches("parent_seq", sql(db, "SELECT sql FROM sqlite_master WHERE name = 'tasks_parent'"))
        -- no NOT NULL left (a multi-row REPLACE that may abort keeps a statement journal)
        assert.equals("0", sql(db, "SELECT count(*) FROM pragma_table_info('tasks') WHERE \"notnull\""))
        -- the workflow and its tasks left RAM: both reads go to the store
        assert.same(children, w2:query("wf-m7").children)
        local listed = {}
        for _, t in ipairs(w2:queryTasks { parentId = "wf-m7" }) do listed[#listed + 1] = t.id end
        table.sort(listed)
        local want = { table.unpack(children) }
        table.sort(want)
        assert.same(want, listed)
        assert.same(history, w2:query("wf-m7").history)
        w2:shutdown()
        assert.is_nil(sql(db, "SELECT sql FROM sqlite_master WHERE name = 'workflow_events'"):find("WITHOUT ROWID"))
        assert.equals(tostring(#history), sql(db, "SELECT count(*) FROM workflow_events INDEXED BY workflow_events_n"
          .. " WHERE task_seq = " .. seq))
        sql(db, "DELETE FROM tasks WHERE id = 'wf-m7'") -- its events go along
        assert.equals("0", sql(db, "SELECT count(*) FROM workflow_events WHERE task_seq = " .. seq))
      end)

      it("a live row is updated in place; one that vanished under the store is written whole again; the read indexes hold finished rows", function()
        local path = tmppath()
        local db = path .. "/athena.db"
        local w = started(mode, path)
        result(w:execute("st.echo", "done", { id = "idx-done" }))
        w:execute("st.echo", "later", { id = "idx-live", delay = "1h" })
        w:execute("st.echo", "later", { id = "idx-gone", delay = "1h" })
        eventually(function()
          return sql(db, "SELECT count(*) FROM tasks WHERE id IN ('idx-live', 'idx-gone') AND status = 1") == "2"
        end, WAIT, "the scheduled rows to be committed")
        local seq = sql(db, "SELECT seq FROM tasks WHERE id = 'idx-live'")
        -- a row deleted behind the store's back (say, a file restored from a backup)
        sql(db, "DELETE FROM tasks WHERE id = 'idx-gone'")
        assert.is_true(w:cancel("idx-live"))
        assert.is_true(w:cancel("idx-gone"))
        eventually(function()
          return sql(db, "SELECT count(*) FROM tasks WHERE id IN ('idx-live', 'idx-gone') AND status = 7") == "2"
        end, WAIT, "the cancellations to be committed")
        assert.equals(seq, sql(db, "SELECT seq FROM tasks WHERE id = 'idx-live'")) -- the same row
        assert.equals('"later"', sql(db, "SELECT input FROM tasks WHERE id = 'idx-gone'")) -- whole again
        assert.equals("1", sql(db, "SELECT count(*) FROM tasks WHERE id = 'idx-gone'"))
        w:shutdown()
        -- every read index is partial on finished rows, and the reads use them
        for _, name in ipairs { "tasks_id", "tasks_status", "tasks_parent" } do
          assert.matches("status >= 5", sql(db, ("SELECT sql FROM sqlite_master WHERE name = '%s'"):format(name)), 1, true)
        end
        assert.matches("USING INDEX tasks_id", sql(db,
          "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE id = 'x' AND status >= 5 ORDER BY seq DESC LIMIT 1"), 1, true)
        assert.matches("USING INDEX tasks_status", sql(db,
          "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE status >= 5 AND status IN (5) ORDER BY created_at DESC, id LIMIT 20"), 1, true)
        assert.matches("USING INDEX tasks_status", sql(db, "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE status >= 5"
          .. " AND status IN (5) AND name = 'st.echo' ORDER BY created_at DESC, id LIMIT 20"), 1, true)
        local w2 = started(mode, path)
        assert.equals("completed", w2:query("idx-done").status)
        assert.equals("cancelled", w2:query("idx-gone").status)
        assert.equals("cancelled", w2:query("idx-live").status)
      end)

      it("workflow histories are appended one row per event, never rewritten; a purge takes them along", function()
        local path = tmppath()
        -- hybrid: one commit, at shutdown, holds every event (the store
        -- writes them 32 to a statement, across workflows, and the rest one by one)
        local w = started(mode, path, mode == "hybrid" and { flushInterval = "1h" } or nil)
        local h = w:execute("st.flow", { n = 3 }, { id = "wf-ev" })
        local h2 = w:execute("st.flow", { n = 20 }, { id = "wf-ev2" })
        assert.equals(6, result(h))
        assert.equals(210, result(h2))
        local n, n2 = #h:query().history, #h2:query().history
        w:shutdown()
        local db = path .. "/athena.db"
        local seq2 = sql(db, "SELECT seq FROM tasks WHERE id = 'wf-ev2'")
        assert.equals(("%d|0|%d"):format(n2, n2 - 1),
          sql(db, "SELECT count(*), min(n), max(n) FROM workflow_events WHERE task_seq = " .. seq2))
        local w2 = started(mode, path)
        assert.same(h2:query().history, w2:query("wf-ev2").history)
        w2:shutdown()
        local seq = sql(db, "SELECT seq FROM tasks WHERE id = 'wf-ev'")
        assert.equals(tostring(n), sql(db, "SELECT count(*) FROM workflow_events WHERE task_seq = " .. seq))
        assert.equals("0", sql(db, "SELECT count(*) FROM tasks WHERE history IS NOT NULL"))
        sql(db, "DELETE FROM tasks WHERE id = 'wf-ev'")
        assert.equals("0", sql(db, "SELECT count(*) FROM workflow_events WHERE task_seq = " .. seq))
      end)

      it("retention: terminal tasks older than `retention` are pruned at start; quarantined and unfinished ones are kept", function()
        local path = tmppath()
        local w1 = started(mode, path)
        result(w1:execute("st.echo", "c", { id = "ret-completed" }))
        result(w1:execute("st.fail", "f", { id = "ret-failed" }))
        result(w1:execute("st.gated", { marker = path .. ".marker" },
          { id = "ret-quarantined", failureStrategy = "quarantine" }))
        local hc = w1:execute("st.echo", "cancel me", { id = "ret-cancelled", delay = 60000 })
        assert.is_true(hc:cancel())
        w1:execute("st.echo", "s", { id = "ret-scheduled", delay = 60000 })
        assert.equals("quarantined", w1:query("ret-quarantined").status)
        assert.equals("cancelled", w1:query("ret-cancelled").status)
        w1:shutdown()
        local done = athena.now() -- after every completedAt above
        -- let the finished tasks age past 200 ms (athena.now: the wall clock createdAt uses)
        eventually(function() return athena.now() > done + 300 end, 3000, "the tasks to age")

        -- a long retention keeps everything
        local w2 = started(mode, path, { retention = "1h" })
        for _, id in ipairs { "ret-completed", "ret-failed", "ret-quarantined", "ret-cancelled", "ret-scheduled" } do
          assert.is_table(w2:query(id), id .. " pruned under retention = 1h")
        end
        w2:shutdown()

        local w3 = started(mode, path, { retention = 200 })
        for _, id in ipairs { "ret-completed", "ret-failed", "ret-cancelled" } do
          local r, err = w3:query(id)
          assert.is_nil(r, id .. " was not pruned")
          assert.equals("ENOTFOUND", err.code)
        end
        assert.equals("quarantined", w3:query("ret-quarantined").status)
        assert.equals("scheduled", w3:query("ret-scheduled").status)
        assert.equals("0", sql(path .. "/athena.db",
          "SELECT count(*) FROM tasks WHERE id IN ('ret-completed', 'ret-failed', 'ret-cancelled')"))
        -- a pruned id may be reused
        assert.equals("new", result(w3:execute("st.echo", "new", { id = "ret-completed" })))
        assert.equals(1, w3:query("ret-completed").attempt)
      end)
    end)
  end

  describe("file mode acknowledgement", function()
    it("execute() returns once the new row is committed", function()
      local path = tmppath()
      local w = started("file", path)
      local db = path .. "/athena.db"
      w:execute("st.echo", "x", { id = "ack-delayed", delay = 60000 })
      assert.equals("1", sql(db, "SELECT status FROM tasks WHERE id = 'ack-delayed'"))
      for i = 1, 20 do
        local id = "ack-" .. i
        w:execute("st.echo", i, { id = id })
        local st = sql(db, "SELECT status FROM tasks WHERE id = '" .. id .. "'")
        assert.is_true(st == "0" or st == "2" or st == "5", id .. ": row status " .. st)
      end
      local hs = w:executeMany("st.echo", { 1, 2, 3 }, { ids = { "many-1", "many-2", "many-3" }, delay = 60000 })
      assert.equals(3, #hs)
      assert.equals("3", sql(db, "SELECT count(*) FROM tasks WHERE id LIKE 'many-%' AND status = 1"))
    end)

    it("result() resolves once the outcome is committed", function()
      local path = tmppath()
      local w = started("file", path)
      local db = path .. "/athena.db"
      for i = 1, 10 do
        local id = "res-" .. i
        assert.equals(i, result(w:execute("st.echo", i, { id = id })))
        assert.equals("5|" .. i, sql(db, "SELECT status, result FROM tasks WHERE id = '" .. id .. "'"))
      end
      local _, err = result(w:execute("st.fail", "bad", { id = "res-failed" }))
      assert.equals("EMINE", err.code)
      assert.equals("6|EMINE", sql(db, "SELECT status, json_extract(error, '$.code') FROM tasks WHERE id = 'res-failed'"))
    end)

    it("cancel() and requeue() return once the change is committed", function()
      local path = tmppath()
      local w = started("file", path)
      local db = path .. "/athena.db"
      local h = w:execute("st.echo", "x", { id = "c-1", delay = 60000 })
      assert.is_true(h:cancel())
      assert.equals("7", sql(db, "SELECT status FROM tasks WHERE id = 'c-1'"))
      local marker = path .. ".marker"
      local g = w:execute("st.gated", { marker = marker }, { id = "rq-1", failureStrategy = "quarantine" })
      result(g)
      assert.equals("8", sql(db, "SELECT status FROM tasks WHERE id = 'rq-1'"))
      writefile(marker, "open")
      assert.is_true(w:requeue("rq-1"))
      local st = sql(db, "SELECT status FROM tasks WHERE id = 'rq-1'")
      assert.is_true(st == "0" or st == "2" or st == "5", "after requeue the row says " .. st)
      assert.same({ attempt = 1 }, result(g))
      assert.equals("5", sql(db, "SELECT status FROM tasks WHERE id = 'rq-1'"))
    end)
  end)

  describe("hybrid mode commits", function()
    it("a completed task reaches the database within flushInterval (plus slack)", function()
      local path = tmppath()
      local w = started("hybrid", path, { flushInterval = 50 })
      local db = path .. "/athena.db"
      assert.equals("h", result(w:execute("st.echo", "h", { id = "hy-1" })))
      local t0 = athena.now()
      eventually(function()
        return sql(db, "SELECT status FROM tasks WHERE id = 'hy-1'") == "5"
      end, 2000, "the hybrid commit")
      assert.is_true(athena.now() - t0 < 1000, "commit took " .. (athena.now() - t0) .. " ms")
    end)

    -- A commit that failed after reaching the WAL leaves rows its retry
    -- inserts again. The 32-row insert skips rows that are there (OR IGNORE:
    -- no statement journal), and such a batch is then written row by row,
    -- the upsert bringing each up to date. Stand-ins in the file play the
    -- rows of such a commit: the same tasks, still pending.
    it("a batch of new rows that meets rows already in the file brings them up to date", function()
      local path = tmppath()
      local w = started("hybrid", path, { flushInterval = "1h" }) -- one commit: at shutdown
      local db = path .. "/athena.db"
      local old = {}
      for i = 1, 40 do -- the seqs the 40 tasks below get in a fresh store: 0..39
        old[i] = ("(%d, 'over-%d', 'st.echo', 0, 0, 1, 0, 0, 'default', 0, 0, 0, '%d')"):format(i - 1, i, i)
      end
      sql(db, "INSERT INTO tasks (seq, id, name, status, attempt, max_attempts, strategy, priority,"
        .. " queue, created_at, scheduled_at, ready_at, input) VALUES " .. table.concat(old, ","))
      local hs = {}
      for i = 1, 40 do hs[i] = w:execute("st.echo", i, { id = "over-" .. i }) end
      for i = 1, 40 do assert.equals(i, result(hs[i])) end
      w:shutdown()
      assert.equals("40|40|40", sql(db, "SELECT count(*), sum(status = 5), sum(result = input)"
        .. " FROM tasks WHERE id LIKE 'over-%'"))
    end)
  end)
end)
