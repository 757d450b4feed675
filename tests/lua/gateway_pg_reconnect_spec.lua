-- The gateway on PostgreSQL after its connections are lost (issue 18): a
-- reconnected session is set up again, so statementTimeout still stops a
-- slow read, on the pool's path and on the gateway thread's own loop
-- (PostgreSQL fetches run there once their connection is open). Needs the
-- ctest fixture "pg"; no server means this spec fails.
local athena = require "athena"
local S = require "fixtures.support"

local json = athena.json
local URL = S.pg_database("athena_gateway_reconnect_spec")

local function call(base, body)
  local res = assert(athena.http.request { method = "POST", url = base .. "/gateway/fetch",
    headers = { apikey = "K", ["Content-Type"] = "application/json" }, body = json.encode(body), timeout = "60s" })
  local data
  if res.body:sub(1, 1) == "{" then data = json.decode(res.body, { nulls = true }) end
  return res.status, data
end

describe("gateway on PostgreSQL, reconnected", function()
  local db, world, base

  setup(function()
    db = assert(athena.db.open(URL))
    assert(db:exec("DROP VIEW IF EXISTS slow; DROP TABLE IF EXISTS fast"))
    assert(db:exec("CREATE TABLE fast(id bigint PRIMARY KEY, v text)"))
    assert(db:exec("INSERT INTO fast VALUES (1, 'a'), (2, 'b')"))
    -- one second per row read: far past the timeout below
    assert(db:exec("CREATE VIEW slow AS SELECT id, pg_sleep(1)::text AS s FROM fast"))
    local cfg = S.tmpname()
    local f = assert(io.open(cfg, "w"))
    f:write([[return { keys = { K = { rights = "*" } }, tables = { "fast", "slow" },
      limits = { statementTimeout = "200ms" } }]])
    f:close()
    world = S.world {}
    world:start()
    base = world:serve { port = 0, gateway = { db = URL, config = cfg } }.url
  end)

  teardown(function()
    S.cleanup()
    db:close()
    S.cleanup_files()
  end)

  -- a slow read: 504 statement_timeout, or 503 on a connection found lost;
  -- never the rows (which would mean the session ran without the timeout)
  local function slow_read()
    local st, data = call(base, { view_name = "slow", conditions = { { operator = "eq", column = "id", value = 1 } } })
    assert.is_true(st == 504 or st == 503, ("status %d: %s"):format(st, json.encode(data)))
    if st == 504 then assert.equals("statement_timeout", data.code) end
    return st
  end

  it("keeps the statement timeout on a reconnected session", function()
    -- every connection a thread may use (4 per thread, 2 threads) in use once
    local timeouts = 0
    for _ = 1, 12 do
      if slow_read() == 504 then timeouts = timeouts + 1 end
      assert.equals(200, (call(base, { table_name = "fast" })))
    end
    assert.is_true(timeouts > 0)
    -- the server ends the gateway's sessions
    local mine = assert(db:query("SELECT pg_backend_pid() AS pid"))[1].pid
    assert(db:query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'athena' " ..
      "AND datname = current_database() AND pid <> ?", mine))
    S.eventually(function()
      return assert(db:query("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'athena' " ..
        "AND datname = current_database() AND pid <> ?", mine))[1].n == 0
    end, 5000, "the gateway's sessions to end")
    -- each connection finds out, connects again, and is set up again
    timeouts = 0
    for _ = 1, 24 do
      if slow_read() == 504 then timeouts = timeouts + 1 end
      local st = call(base, { table_name = "fast" })
      assert.is_true(st == 200 or st == 503, "fast read: " .. st)
    end
    assert.is_true(timeouts >= 8, "timeouts after the reconnects: " .. timeouts)
  end)
end)

describe("gateway on PostgreSQL, reads sent together", function()
  -- Table fast (rows 1, 2, 3) and view `name` AS `select`, served by one
  -- gateway thread; returns a connection to the database and the URL.
  local function serve_view(name, select)
    local db = assert(athena.db.open(URL))
    assert(db:exec("DROP VIEW IF EXISTS bad; DROP VIEW IF EXISTS slow; DROP VIEW IF EXISTS sleepy; " ..
      "DROP TABLE IF EXISTS fast"))
    assert(db:exec("CREATE TABLE fast(id bigint PRIMARY KEY, v text)"))
    assert(db:exec("INSERT INTO fast VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
    assert(db:exec("CREATE VIEW " .. name .. " AS " .. select))
    local world = S.world {}
    world:start()
    return db, world:serve { port = 0, gateway = { db = URL, keys = { K = { rights = "*" } },
      tables = { "fast", name }, threads = 1 } }.url
  end

  it("answers each with its own rows, one failing alone", function()
    local db, base = serve_view("bad", "SELECT id, (1 / (id - id))::text AS v FROM fast")
    -- 16 connections, 3 rounds; the sixth and the eleventh of view `bad`
    -- (division by zero when a row is read)
    local p = assert(io.popen("python3 '" .. os.getenv("ATHENA_SRC") .. "/tests/lua/fixtures/together.py' " ..
      base:match(":(%d+)$") .. " 16 3 fast bad 5,10 2>&1"))
    local out = p:read("a")
    p:close()
    local want = {}
    for i = 0, 15 do want[#want + 1] = (i == 5 or i == 10) and "400:0" or "200:3" end
    local round = table.concat(want, " ") .. "\n"
    assert.equals(round .. round .. round, out)
    S.cleanup()
    db:close()
    S.cleanup_files()
  end)

  it("counts the rows of the snapshot its page was read from", function()
    -- reading row 1 takes a second; a row inserted meanwhile is in neither
    -- the page nor the count (the count runs after the page: under read
    -- committed, PostgreSQL's default, it saw the new row)
    local db, base = serve_view("sleepy", "SELECT id, pg_sleep(CASE WHEN id = 1 THEN 1 ELSE 0 END)::text AS s FROM fast")
    assert.equals(200, (call(base, { table_name = "fast" }))) -- a connection set up
    local p = assert(io.popen("env -u LD_PRELOAD curl -s --max-time 60 -X POST -H 'apikey: K' " ..
      "-H 'Content-Type: application/json' -d '{\"view_name\":\"sleepy\",\"count\":\"exact\"}' " ..
      base .. "/gateway/fetch"))
    S.eventually(function()
      return assert(db:query("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%sleepy%' " ..
        "AND query NOT LIKE '%pg_stat_activity%' AND state = 'active' " ..
        "AND now() - query_start > interval '50 milliseconds'"))[1].n == 1
    end, 5000, "the page's read to run")
    assert(db:exec("INSERT INTO fast VALUES (4, 'd')"))
    local body = json.decode(p:read("a"), { nulls = true })
    p:close()
    assert.equals("success", body.status)
    assert.equals(3, #body.data)
    assert.equals(3, body.count)
    S.cleanup()
    db:close()
    S.cleanup_files()
  end)

  it("lets a read take another connection when the one in flight is slow", function()
    local db, base = serve_view("sleepy", "SELECT id, pg_sleep(3)::text AS s FROM fast WHERE id = 1")
    assert.equals(200, (call(base, { table_name = "fast" }))) -- a connection set up
    -- (curl hangs at start under the sanitizers' LD_PRELOAD: it runs without)
    local slow = assert(io.popen("env -u LD_PRELOAD curl -s --max-time 60 -o /dev/null -w '%{http_code}' " ..
      "-X POST -H 'apikey: K' " ..
      "-H 'Content-Type: application/json' -d '{\"table_name\":\"sleepy\"}' " .. base .. "/gateway/fetch"))
    -- the slow read has run for a while: reads no longer wait for it
    local running = "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%sleepy%' " ..
      "AND query NOT LIKE '%pg_stat_activity%' AND state = 'active'"
    S.eventually(function()
      return assert(db:query(running .. " AND now() - query_start > interval '50 milliseconds'"))[1].n == 1
    end, 5000, "the slow read to run")
    local st, data = call(base, { table_name = "fast" })
    assert.equals(200, st)
    assert.equals(3, #data.data)
    assert.equals(1, assert(db:query(running))[1].n) -- answered while the slow one still runs
    assert.equals("200", slow:read("a"))
    slow:close()
    S.cleanup()
    db:close()
    S.cleanup_files()
  end)
end)
