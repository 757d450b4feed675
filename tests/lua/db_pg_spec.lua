-- athena.db against PostgreSQL (engine/db/db_pg.c): the server is the ctest
-- fixture "pg" (scripts/pg-test), whose URL is in $ATHENA_PG_URL_FILE. No
-- server means this spec fails: it never skips.
local athena = require "athena"
local S = require "fixtures.support"
local dbjobs = require "fixtures.db_jobs"

local null = athena.null

local URL = S.pg_database("athena_db_spec")
local PASSWORD = assert(URL:match("^postgres://[^:]+:([^@]+)@"), "the test URL carries a password")

local function open()
  return assert(athena.db.open(URL))
end

local function no_secret(err)
  assert.is_nil(err.message:find(PASSWORD, 1, true))
  assert.is_nil(err.message:find(URL, 1, true))
end

describe("athena.db.open (PostgreSQL)", function()
  it("connects, and never shows the URL or password", function()
    local db = open()
    assert.same({ { one = 1 } }, db:query("select 1 as one"))
    assert.is_nil(tostring(db):find(PASSWORD, 1, true))
    db:close()
    db:close()
    S.raised(db.query, db, "select 1")
  end)

  it("returns ECONNLOST for a wrong password or a dead port, without the secret", function()
    local bad = URL:gsub(PASSWORD, "wrong-" .. PASSWORD)
    local db, err = athena.db.open(bad)
    assert.is_nil(db)
    assert.equals("ECONNLOST", err.code)
    assert.is_true(err.retryable)
    no_secret(err)
    assert.is_nil(err.message:find("wrong-", 1, true))
    local dead = URL:gsub("@127%.0%.0%.1:%d+/", "@127.0.0.1:1/")
    db, err = athena.db.open(dead)
    assert.is_nil(db)
    assert.equals("ECONNLOST", err.code)
    no_secret(err)
  end)

  it("raises EINVAL for postgres URLs libpq cannot parse", function()
    local err = S.raises("EINVAL", athena.db.open, "postgres://u:s3cret@h/db?nosuchoption=1")
    assert.is_nil(err.message:find("s3cret", 1, true))
    S.raises("EINVAL", athena.db.open, "postgresql://[::1")
    -- values libpq only checks when connecting: a connection failure
    local db, e = athena.db.open("postgres://u:s3cret@h:notaport/db")
    assert.is_nil(db)
    assert.equals("ECONNLOST", e.code)
    assert.is_nil(e.message:find("s3cret", 1, true))
  end)
end)

describe("conn:query and conn:exec (PostgreSQL)", function()
  local db
  setup(function()
    db = open()
    assert(db:exec([[
      drop table if exists v_child; drop table if exists v_parent; drop table if exists vals;
      create table vals (id serial primary key, i2 int2, i4 int4, i8 int8, b boolean, f8 float8,
        f4 float4, n numeric, t text, vc varchar(10), u uuid, j json, jb jsonb, by bytea,
        ts timestamp, tz timestamptz, d date);
      create table v_parent (id int primary key, email text unique, age int check (age >= 0),
        name text not null default 'x');
      create table v_child (id serial primary key, pid int references v_parent(id));
      insert into v_parent (id, email, age) values (1, 'a@x', 1);
    ]]))
  end)
  teardown(function() db:close() end)

  it("maps every type", function()
    assert(db:exec([[insert into vals (i2, i4, i8, b, f8, f4, n, t, vc, u, j, jb, by, ts, tz, d)
      values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)]],
      7, -8, math.maxinteger, true, 0.1, 1.5, "12.50", "txt", "vc", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      { a = { 1, 2 } }, { b = { c = null } }, "\\x00ff", "2024-05-01 10:20:30.5", "2024-05-01 12:20:30.5+02",
      "2024-05-01"))
    local r = db:query("select * from vals order by id desc limit 1")[1]
    assert.equals(7, r.i2)
    assert.equals(-8, r.i4)
    assert.equals(math.maxinteger, r.i8)
    assert.equals("integer", math.type(r.i8))
    assert.is_true(r.b)
    assert.equals(0.1, r.f8)
    assert.equals(1.5, r.f4)
    assert.equals(12.5, r.n)
    assert.equals("txt", r.t)
    assert.equals("vc", r.vc)
    assert.equals("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", r.u)
    assert.same({ a = { 1, 2 } }, r.j)
    assert.same({ b = { c = null } }, r.jb)
    assert.equals("\\x00ff", r.by)
    assert.equals("2024-05-01T10:20:30.5", r.ts)
    assert.equals("2024-05-01T10:20:30.5+00:00", r.tz) -- at TimeZone UTC
    assert.equals("2024-05-01", r.d)
  end)

  it("maps numeric by precision, NULL to athena.null with its key", function()
    local r = db:query([[select 123456789012345::numeric as n15, 1234567890123456::numeric as n16,
      0.000000000000001234::numeric as small, 'NaN'::numeric as nan, 42::numeric as int,
      null::int as z, 9007199254740993::int8 as big, sum(x) as s from (values (1), (2)) v(x)]])[1]
    assert.equals(123456789012345, r.n15)
    assert.equals("integer", math.type(r.int))
    assert.equals("1234567890123456", r.n16)
    assert.equals(1.234e-15, r.small)
    assert.equals("NaN", r.nan)
    assert.equals(null, r.z)
    assert.equals(9007199254740993, r.big)
    assert.equals(3, r.s)
  end)

  it("binds every parameter type, NUL bytes as bytea", function()
    local r = db:query("select ?::int8 as a, ?::bool as b, ?::float8 as c, ?::text as d, ?::jsonb as e, ? as f, ?::int as g",
      math.mininteger, false, 2.5, "x", { 1, "two" }, nil, null)[1]
    assert.equals(math.mininteger, r.a)
    assert.is_false(r.b)
    assert.equals(2.5, r.c)
    assert.equals("x", r.d)
    assert.same({ 1, "two" }, r.e)
    assert.equals(null, r.f)
    assert.equals(null, r.g)
    local blob = "\0\1\255a\0"
    assert(db:exec("insert into vals (by) values (?)", blob))
    assert.same({ { by = "\\x0001ff6100" } }, db:query("select by from vals where by = ?", blob))
    local _, err = db:query("select ?::text", "a\0b") -- text cannot hold NUL
    assert.equals("EINVAL", err.code)
  end)

  it("treats injection as data and handles huge strings", function()
    local evil = "'); drop table vals; --"
    assert.same({ { t = evil } }, db:query("select ?::text as t", evil))
    local huge = string.rep("x", 3 * 1024 * 1024)
    local r = db:query("select length(?::text) as n", huge)
    assert.equals(#huge, r[1].n)
    assert(db:query("select count(*) from vals"))
  end)

  it("rewrites ? outside quotes, identifiers, comments and dollar quotes", function()
    local r = db:query([[select '?' as "q?", ? as p -- ?
      , /* ? /* nested ? */ ? */ $$?$$ as dq, $t$ ? $t$ as tq, E'\'?' as e, ? as p2]], "one", "two")[1]
    assert.equals("?", r["q?"])
    assert.equals("one", r.p)
    assert.equals("?", r.dq)
    assert.equals(" ? ", r.tq)
    assert.equals("'?", r.e)
    assert.equals("two", r.p2)
    -- written-out $n: ? stays jsonb's operator
    r = db:query([[select '{"a":1}'::jsonb ? $1 as has, $2::int as n]], "a", 5)[1]
    assert.is_true(r.has)
    assert.equals(5, r.n)
    assert.same({ { has = false } }, db:query([[select '{"a":1}'::jsonb ? 'b' as has]]))
    local _, err = db:query("select ?, ?", 1)
    assert.equals("EINVAL", err.code)
  end)

  it("returns changes (no lastId)", function()
    local r = assert(db:exec("insert into vals (t) values (?), (?)", "p", "q"))
    assert.equals(2, r.changes)
    assert.is_nil(r.lastId)
    r = assert(db:exec("update vals set t = 'z' where t in ('p', 'q')"))
    assert.equals(2, r.changes)
    r = assert(db:exec("insert into vals (t) values ('r') returning id"))
    assert.equals(1, r.changes)
  end)

  it("runs a statement again after its columns change type (prepared once per session)", function()
    assert(db:exec("drop table if exists reshaped; create table reshaped (id int primary key, v int)"))
    assert(db:exec("insert into reshaped values (1, 7)"))
    local q = "select v from reshaped where id = ?"
    assert.same({ { v = 7 } }, db:query(q, 1))
    assert.same({ { v = 7 } }, db:query(q, 1)) -- the prepared statement
    assert(db:exec("alter table reshaped alter column v type text"))
    assert.same({ { v = "7" } }, db:query(q, 1))
    assert(db:exec("alter table reshaped alter column v type int using v::int"))
    assert.same({ { v = 7 } }, db:query(q, 1))
  end)

  it("maps errors to codes with the SQLSTATE", function()
    local function fails(code, state, sql, ...)
      local r, err = db:exec(sql, ...)
      assert.is_nil(r)
      assert.equals(code, err.code)
      assert.equals(state, err.sqlstate)
      no_secret(err)
      return err
    end
    fails("EUNIQUE", "23505", "insert into v_parent (id) values (1)")
    fails("EUNIQUE", "23505", "insert into v_parent (id, email) values (2, ?)", "a@x")
    fails("EFOREIGNKEY", "23503", "insert into v_child (pid) values (?)", 99)
    fails("ENOTNULL", "23502", "insert into v_parent (id, name) values (3, ?)", nil)
    fails("ECHECK", "23514", "insert into v_parent (id, age) values (4, ?)", -1)
    fails("ESYNTAX", "42601", "selec 1")
    fails("ESYNTAX", "42P01", "select * from nope")
    fails("ESYNTAX", "42703", "select nope from v_parent")
    fails("EINVAL", "22P02", "select ?::int", "x")
    fails("EINVAL", "22003", "select ?::int2", 70000)
    fails("EINVAL", "22007", "select ?::date", "not a date")
    fails("EINVAL", "42883", "select 1 + 'a'::text")
    local err = fails("ETIMEDOUT", "57014", "set statement_timeout = 50; select pg_sleep(2)")
    assert.is_true(err.retryable)
    assert(db:exec("set statement_timeout = 0"))
    assert.same({ { n = 1 } }, db:query("select count(*)::int as n from v_parent"))
  end)

  it("runs transactions with savepoints", function()
    assert(db:exec("create temp table tx (v text unique)"))
    local r = db:transaction(function(tx)
      assert(tx:exec("insert into tx values ('outer')"))
      local _, err = tx:transaction(function(tx2)
        assert(tx2:exec("insert into tx values ('inner')"))
        return tx2:exec("insert into tx values ('inner')") -- fails: the savepoint rolls back
      end)
      assert.equals("EUNIQUE", err.code)
      return tx:query("select v from tx order by v")
    end)
    assert.same({ { v = "outer" } }, r)
    local ok, e = pcall(db.transaction, db, function(tx)
      assert(tx:exec("insert into tx values ('gone')"))
      error("boom", 0)
    end)
    assert.is_false(ok)
    assert.equals("boom", e)
    local _, err = db:transaction(function(tx)
      assert(tx:exec("insert into tx values ('gone')"))
      return tx:exec("insert into tx values ('outer')")
    end)
    assert.equals("EUNIQUE", err.code)
    assert.same({ { v = "outer" } }, db:query("select v from tx"))
  end)

  it("reports a lost connection, then connects again", function()
    local other = open()
    local pid = db:query("select pg_backend_pid() as pid")[1].pid
    assert(other:query("select pg_terminate_backend(?)", pid))
    local r, err = db:query("select 1")
    assert.is_nil(r)
    assert.equals("ECONNLOST", err.code)
    assert.is_true(err.retryable)
    no_secret(err)
    local again = assert(db:query("select pg_backend_pid() as pid"))
    assert.are_not.equal(pid, again[1].pid)
    other:close()
  end)

  it("never runs a lost transaction's later statements outside it", function()
    local other = open()
    assert(db:exec("create table if not exists lost_tx (v int)"))
    local r, err = db:transaction(function(tx)
      assert(tx:exec("insert into lost_tx values (1)"))
      local pid = tx:query("select pg_backend_pid() as pid")[1].pid
      assert(other:query("select pg_terminate_backend(?)", pid))
      local _, e1 = tx:exec("insert into lost_tx values (2)")
      assert.equals("ECONNLOST", e1.code)
      -- the transaction is gone: no new connection for it, no autocommit
      local _, e2 = tx:exec("insert into lost_tx values (3)")
      assert.equals("ECONNLOST", e2.code)
      return "done"
    end)
    assert.is_nil(r)
    assert.equals("ECONNLOST", err.code)
    assert.same({ { n = 0 } }, db:query("select count(*)::int as n from lost_tx"))
    other:close()
  end)
end)

describe("ctx.db (PostgreSQL)", function()
  local admin
  setup(function()
    admin = open()
    assert(admin:exec("drop table if exists db_tx; create table db_tx (v int)"))
  end)
  teardown(function() admin:close() end)
  after_each(S.cleanup)

  local function world(concurrency, workers)
    local w = S.world {
      modules = { "fixtures.db_jobs" }, database = URL, minWorkers = workers or 1,
      maxWorkers = workers or 1, taskQueues = { default = { concurrency = concurrency or 4 } },
    }
    w:register(table.unpack(dbjobs.all()))
    w:start()
    return w
  end

  local function backends(pattern)
    return admin:query("select pid from pg_stat_activity where query like ? and pid <> pg_backend_pid()",
      pattern)
  end

  it("connects on the loop when libpq goes from one host to the next", function()
    -- port 1 refuses: libpq closes that socket and opens another (likely
    -- with the same number) for the second host
    local w = S.world {
      modules = { "fixtures.db_jobs" }, database = URL:gsub("@127%.0%.0%.1:", "@127.0.0.1:1,127.0.0.1:"),
      minWorkers = 1, maxWorkers = 1,
    }
    w:register(table.unpack(dbjobs.all()))
    w:start()
    local r = S.result(w:execute("db.query", { sql = "select 1 as n" }))
    assert.same({ { n = 1 } }, r.rows)
  end)

  it("is retried by withRetry with retryPatterns.database", function()
    assert.is_true(athena.shouldRetryError({ code = "ECONNLOST", retryable = true }))
    assert.is_false(athena.shouldRetryError({ code = "EUNIQUE", retryable = false }))
  end)

  it("keeps one warm connection per worker across tasks", function()
    local w = world()
    local a = S.result(w:execute("db.query", { sql = "select pg_backend_pid() as pid" }))
    local b = S.result(w:execute("db.query", { sql = "select pg_backend_pid() as pid" }))
    assert.is_nil(a.code)
    assert.equals(a.rows[1].pid, b.rows[1].pid)
  end)

  it("does not block the worker's loop while a query runs", function()
    local w = world(4)
    local slow = w:execute("db.query", { sql = "select pg_sleep(0.5) as s" })
    -- the slow query is on the server before the tick starts
    S.eventually(function() return #backends("select pg_sleep(0.5)%") > 0 end, nil, "the slow query")
    local tick = S.result(w:execute("db.tick", { ms = 20 }))
    assert.is_true(tick.t1 - tick.t0 < 400)
    assert.equals("running", slow:status())
    local s = S.result(slow)
    assert.is_nil(s.code)
    assert.is_true(s.t1 >= tick.t1)
  end)

  it("runs many tasks on two workers through their shared connections", function()
    local w = world(8, 2)
    local hs = {}
    for i = 1, 20 do
      hs[i] = w:execute("db.query", { sql = "select ?::int * 2 as n, pg_sleep(0.02)::text as s", params = { i } })
    end
    local conns = {}
    for i, h in ipairs(hs) do
      local r = S.result(h)
      assert.is_nil(r.code)
      assert.equals(i * 2, r.rows[1].n)
      conns[r.conn] = true
    end
    local n = 0
    for _ in pairs(conns) do n = n + 1 end
    assert.is_true(n <= 2)
  end)

  it("survives a timeout mid-query: the query is cancelled, the next one works", function()
    local w = world(1)
    local h = w:execute("db.slow", { sql = "select pg_sleep(5) as s" })
    local r, err = S.result(h)
    assert.is_nil(r)
    assert.equals("ETIMEDOUT", err.code)
    -- the server stopped the statement (PQcancel), it does not run on
    S.eventually(function() return #backends("select pg_sleep(5)%") == 0 end, 3000, "the cancelled query to end")
    local ok = S.result(w:execute("db.query", { sql = "select 41 + 1 as n" }))
    assert.same({ { n = 42 } }, ok.rows)
  end)

  it("survives a cancel mid-query", function()
    local w = world(1)
    local h = w:execute("db.query", { sql = "select pg_sleep(5) as s" })
    S.eventually(function() return #backends("select pg_sleep(5)%") > 0 end, nil, "the query to start")
    h:cancel()
    S.result(h)
    assert.equals("cancelled", h:status())
    local ok = S.result(w:execute("db.query", { sql = "select 1 as n" }))
    assert.same({ { n = 1 } }, ok.rows)
  end)

  it("rolls back a transaction whose task timed out mid-query", function()
    local w = world(1)
    local _, err = S.result(w:execute("db.tx_slow", { value = 7, sql = "select pg_sleep(5)" }))
    assert.equals("ETIMEDOUT", err.code)
    local r = S.result(w:execute("db.query", { sql = "select count(*)::int as n from db_tx where v = 7" }))
    assert.same({ { n = 0 } }, r.rows)
  end)

  it("makes other tasks wait while one holds a transaction open", function()
    local w = world(4)
    local hold = w:execute("db.tx_hold", { value = 1, ms = 200 })
    local other = w:execute("db.query", { sql = "insert into db_tx (v) values (2)" })
    local h, o = S.result(hold), S.result(other)
    assert.is_nil(h.code)
    assert.is_nil(o.code)
    assert.is_true(o.t1 >= h.t0 + 200)
    assert.same({ { n = 2 } }, admin:query("select count(*)::int as n from db_tx where v in (1, 2)"))
  end)

  it("reports ECONNLOST when the backend is killed, then reconnects", function()
    local w = world(1)
    local a = S.result(w:execute("db.query", { sql = "select pg_backend_pid() as pid" }))
    local pid = a.rows[1].pid
    assert(admin:query("select pg_terminate_backend(?)", pid))
    local lost = S.result(w:execute("db.query", { sql = "select 1 as n" }))
    assert.equals("ECONNLOST", lost.code)
    assert.is_true(lost.retryable)
    local b = S.result(w:execute("db.query", { sql = "select pg_backend_pid() as pid" }))
    assert.is_nil(b.code)
    assert.are_not.equal(pid, b.rows[1].pid)
  end)
end)
