-- athena.db against SQLite (engine/db/db_sqlite.c, bindings/l_db.c,
-- lua/athena/db.lua): open, query, exec, parameters of every type, the
-- value mapping, transactions with savepoints, every error code SQLite can
-- produce, programmer errors, and ctx.db in tasks.
local athena = require "athena"
local S = require "fixtures.support"
local dbjobs = require "fixtures.db_jobs"

local null = athena.null

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. p))
  return p
end

local function mem()
  return assert(athena.db.open("sqlite::memory:"))
end

describe("athena.db.open (SQLite)", function()
  it("opens an in-memory database and a file, and closes them", function()
    local db = mem()
    assert.same({ { one = 1 } }, db:query("select 1 as one"))
    db:close()
    db:close() -- a second close does nothing
    local dir = tmpdir()
    local path = dir .. "/a.db"
    local f = assert(athena.db.open("sqlite:" .. path))
    assert(f:exec("create table t (x)"))
    assert(f:exec("insert into t values (42)"))
    f:close()
    local g = assert(athena.db.open("sqlite:" .. path))
    assert.same({ { x = 42 } }, g:query("select x from t"))
    g:close()
    os.execute("rm -rf " .. dir)
  end)

  it("closes through <close> and refuses use after close", function()
    local db
    do
      local c <close> = mem()
      db = c
      assert(c:query("select 1"))
    end
    local err = S.raised(db.query, db, "select 1")
    assert.truthy(tostring(err):find("closed"))
    S.raised(db.exec, db, "select 1")
    S.raised(db.transaction, db, function() end)
  end)

  it("raises EINVAL for a URL that is not a database URL", function()
    for _, url in ipairs { "mysql://x/y", "sqlite:", "", "postgres:/x", "http://h/" } do
      S.raises("EINVAL", athena.db.open, url)
    end
    S.raises("EINVAL", athena.db.open, "postgres://%zz@/") -- libpq cannot parse it
    assert.has_error(function() athena.db.open(42) end)
    assert.has_error(function() athena.db.open() end)
  end)

  it("returns ECONNLOST for a file it cannot open", function()
    local db, err = athena.db.open("sqlite:/nonexistent-dir/sub/x.db")
    assert.is_nil(db)
    assert.equals("ECONNLOST", err.code)
    assert.equals("SQLITE_CANTOPEN", err.sqlstate)
    assert.is_true(err.retryable)
    assert.equals("athena.Error", getmetatable(err).__name)
  end)
end)

describe("conn:query and conn:exec (SQLite)", function()
  local db
  before_each(function()
    db = mem()
    assert(db:exec([[
      create table t (id integer primary key, name text, flag boolean, doc json, data blob,
                      r real, n integer);
    ]]))
  end)
  after_each(function() db:close() end)

  it("returns rows keyed by column name, {} for none", function()
    assert(db:exec("insert into t (name) values ('a'), ('b')"))
    local rows = db:query("select id, name from t order by id")
    assert.same({ { id = 1, name = "a" }, { id = 2, name = "b" } }, rows)
    assert.same({}, db:query("select * from t where id > 100"))
  end)

  it("returns changes and lastId from exec", function()
    local r = db:exec("insert into t (name) values (?)", "x")
    assert.same({ changes = 1, lastId = 1 }, r)
    r = db:exec("insert into t (name) values (?), (?)", "y", "z")
    assert.equals(2, r.changes)
    assert.equals(3, r.lastId)
    r = db:exec("update t set name = 'q'")
    assert.equals(3, r.changes)
    r = db:exec("select * from t") -- a SELECT changes nothing
    assert.equals(0, r.changes)
  end)

  it("binds every parameter type", function()
    local rows = assert(db:query(
      "select ? as a, ? as b, ? as c, ? as d, ? as e, ? as f, ? as g, ? as h, ? as i",
      nil, null, true, false, 42, 0.5, "text", { k = { 1, 2 } }, math.mininteger))
    local r = rows[1]
    assert.equals(null, r.a)
    assert.equals(null, r.b)
    assert.equals(1, r.c) -- no declared type: SQLite's 1/0
    assert.equals(0, r.d)
    assert.equals(42, r.e)
    assert.equals("integer", math.type(r.e))
    assert.equals(0.5, r.f)
    assert.equals("text", r.g)
    assert.equals('{"k":[1,2]}', r.h) -- compact JSON text
    assert.equals(math.mininteger, r.i)
  end)

  it("maps stored values: booleans, JSON, blobs, NULL, big integers, reals", function()
    assert(db:exec("insert into t (name, flag, doc, data, r, n) values (?, ?, ?, x'00ff10', ?, ?)",
      "a", true, { x = { 1, null, "s" }, y = false }, 2.25, math.maxinteger))
    assert(db:exec("insert into t (name, flag, doc, n) values ('b', 0, 'not json', ?)", 9007199254740993))
    assert(db:exec("insert into t (name, flag) values ('c', 2)"))
    assert(db:exec("insert into t (name) values ('d')"))
    local rows = db:query("select * from t order by id")
    local a, b, c, d = rows[1], rows[2], rows[3], rows[4]
    assert.is_true(a.flag)
    assert.is_false(b.flag)
    assert.equals(2, c.flag) -- not 0/1: left an integer
    assert.same({ x = { 1, null, "s" }, y = false }, a.doc)
    assert.equals("not json", b.doc)
    assert.equals("\\x00ff10", a.data)
    assert.equals(2.25, a.r)
    assert.equals("float", math.type(a.r))
    assert.equals(math.maxinteger, a.n)
    assert.equals(9007199254740993, b.n)
    assert.equals("integer", math.type(b.n))
    -- NULL keeps its key, as athena.null
    assert.equals(null, d.flag)
    assert.equals(null, d.doc)
    assert.equals(null, d.data)
    local keys = 0
    for _ in pairs(d) do keys = keys + 1 end
    assert.equals(7, keys)
  end)

  it("treats injection in values as data and keeps NUL bytes and huge strings", function()
    local evil = "x'); drop table t; --"
    assert(db:exec("insert into t (name) values (?)", evil))
    assert.same({ { name = evil } }, db:query("select name from t"))
    local nul = "a\0b\0"
    assert.same({ { v = nul } }, db:query("select ? as v", nul))
    local huge = string.rep("0123456789", 200000) -- 2 MB
    assert(db:exec("insert into t (name) values (?)", huge))
    local rows = db:query("select length(name) as n, name from t where id = 2")
    assert.equals(#huge, rows[1].n)
    assert.equals(huge, rows[1].name)
    assert.same({ { n = 2 } }, db:query("select count(*) as n from t"))
  end)

  it("runs several statements without parameters; refuses parameters with them", function()
    assert(db:exec("insert into t (name) values ('a'); insert into t (name) values ('b');"))
    assert.same({ { n = 2 } }, db:query("select count(*) as n from t"))
    local r, err = db:exec("insert into t (name) values (?); select 1", "c")
    assert.is_nil(r)
    assert.equals("EINVAL", err.code)
    assert.same({ { n = 2 } }, db:query("select count(*) as n from t")) -- nothing ran
  end)

  it("accepts $n placeholders in any order", function()
    assert.same({ { a = "two", b = "one" } }, db:query("select $2 as a, $1 as b", "one", "two"))
  end)

  it("returns EINVAL when placeholders and values differ in number", function()
    local r, err = db:query("select ? as a, ? as b", 1)
    assert.is_nil(r)
    assert.equals("EINVAL", err.code)
    r, err = db:query("select 1", 1)
    assert.is_nil(r)
    assert.equals("EINVAL", err.code)
  end)

  it("raises EINVAL naming a parameter that cannot be bound", function()
    local err = S.raises("EINVAL", db.query, db, "select ?, ?", 1, print)
    assert.truthy(err.message:find("#2", 1, true))
    err = S.raises("EINVAL", db.exec, db, "select ?", io.stdout)
    assert.truthy(err.message:find("#1", 1, true))
    S.raises("EINVAL", db.query, db, "select ?", coroutine.create(print))
    S.raises("EINVAL", db.query, db, "select ?", { f = print }) -- not JSON
    local cyc = {}
    cyc.self = cyc
    S.raises("EINVAL", db.query, db, "select ?", cyc)
    assert.has_error(function() db:query({}) end)
    assert.has_error(function() db:query() end)
    -- nothing was written, the connection still works
    assert.same({ { n = 0 } }, db:query("select count(*) as n from t"))
  end)
end)

describe("errors (SQLite)", function()
  local db
  before_each(function()
    db = mem()
    assert(db:exec([[
      pragma foreign_keys = on;
      create table p (id integer primary key, email text unique, age integer check (age >= 0),
                      name text not null default 'x');
      create table c (id integer primary key, pid integer references p(id));
      insert into p (id, email, age) values (1, 'a@x', 1);
    ]]))
  end)
  after_each(function() db:close() end)

  local function fails(code, state, sql, ...)
    local r, err = db:exec(sql, ...)
    assert.is_nil(r)
    assert.equals(code, err.code)
    assert.equals(state, err.sqlstate)
    assert.is_false(err.retryable)
    assert.equals("string", type(err.message))
    assert.equals("athena.Error", getmetatable(err).__name)
    return err
  end

  it("maps constraint failures", function()
    fails("EUNIQUE", "SQLITE_CONSTRAINT_UNIQUE", "insert into p (email) values (?)", "a@x")
    fails("EUNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY", "insert into p (id) values (1)")
    fails("ENOTNULL", "SQLITE_CONSTRAINT_NOTNULL", "insert into p (name) values (?)", nil)
    fails("ECHECK", "SQLITE_CONSTRAINT_CHECK", "insert into p (age) values (?)", -1)
    fails("EFOREIGNKEY", "SQLITE_CONSTRAINT_FOREIGNKEY", "insert into c (pid) values (?)", 99)
    assert(db:exec("insert into c (pid) values (1)")) -- a good row still goes in
    assert.same({ { n = 1 } }, db:query("select count(*) as n from p"))
  end)

  it("maps bad SQL and unknown names to ESYNTAX", function()
    fails("ESYNTAX", "SQLITE_ERROR", "selec 1")
    fails("ESYNTAX", "SQLITE_ERROR", "select * from nope")
    fails("ESYNTAX", "SQLITE_ERROR", "select nope from p")
  end)

  it("returns EBUSY (retryable) past the busy timeout", function()
    local dir = tmpdir()
    local a = assert(athena.db.open("sqlite:" .. dir .. "/b.db"))
    local b = assert(athena.db.open("sqlite:" .. dir .. "/b.db"))
    assert(a:exec("create table t (x)"))
    assert(a:exec("begin immediate"))
    local r, err = b:exec("insert into t values (1)")
    assert.is_nil(r)
    assert.equals("EBUSY", err.code)
    assert.is_true(err.retryable)
    assert(a:exec("commit"))
    assert(b:exec("insert into t values (1)"))
    a:close()
    b:close()
    os.execute("rm -rf " .. dir)
  end)
end)

describe("conn:transaction (SQLite)", function()
  local db
  before_each(function()
    db = mem()
    assert(db:exec("create table t (v text unique)"))
  end)
  after_each(function() db:close() end)

  local function values()
    local out = {}
    for i, r in ipairs(db:query("select v from t order by v")) do out[i] = r.v end
    return out
  end

  it("commits and returns fn's results", function()
    local a, b = db:transaction(function(tx)
      assert(tx:exec("insert into t values ('a')"))
      return 1, "two"
    end)
    assert.equals(1, a)
    assert.equals("two", b)
    assert.same({ "a" }, values())
  end)

  it("rolls back on nil, err and returns it", function()
    local r, err = db:transaction(function(tx)
      assert(tx:exec("insert into t values ('a')"))
      return tx:exec("insert into t values ('a')") -- EUNIQUE
    end)
    assert.is_nil(r)
    assert.equals("EUNIQUE", err.code)
    assert.same({}, values())
  end)

  it("rolls back and re-raises when fn raises", function()
    local boom = setmetatable({ code = "EBOOM" }, {})
    local ok, e = pcall(db.transaction, db, function(tx)
      assert(tx:exec("insert into t values ('a')"))
      error(boom)
    end)
    assert.is_false(ok)
    assert.equals(boom, e)
    assert.same({}, values())
    -- and the connection is out of the transaction
    assert(db:exec("insert into t values ('b')"))
    assert.same({ "b" }, values())
  end)

  it("nests with savepoints: an inner rollback keeps the outer work", function()
    local r = db:transaction(function(tx)
      assert(tx:exec("insert into t values ('outer')"))
      local _, err = tx:transaction(function(tx2)
        assert(tx2:exec("insert into t values ('inner')"))
        return nil, "undo inner"
      end)
      assert.equals("undo inner", err)
      assert(tx:transaction(function(tx2)
        return tx2:exec("insert into t values ('inner2')")
      end))
      return "done"
    end)
    assert.equals("done", r)
    assert.same({ "inner2", "outer" }, values())
  end)

  it("rolls back everything when the outer level fails after an inner commit", function()
    db:transaction(function(tx)
      assert(tx:transaction(function(tx2) return tx2:exec("insert into t values ('x')") end))
      return nil, "no"
    end)
    assert.same({}, values())
  end)

  it("raises for a non-function", function()
    assert.has_error(function() db:transaction(42) end)
    assert.has_error(function() db:transaction() end)
  end)
end)

describe("ctx.db (SQLite)", function()
  after_each(S.cleanup)

  local function world(cfg)
    local c = { modules = { "fixtures.db_jobs" }, maxWorkers = 1 }
    for k, v in pairs(cfg or {}) do c[k] = v end
    local w = S.world(c)
    w:register(table.unpack(dbjobs.all()))
    w:start()
    return w
  end

  it("validates World.new{database}", function()
    S.raises("EINVAL", athena.World.new, S.config { database = 42 })
    S.raises("EINVAL", athena.World.new, S.config { database = "mysql://x" })
    S.raises("EINVAL", athena.World.new, S.config { database = "" })
    local err = S.raises("EINVAL", athena.World.new, S.config { database = "postgres://u:hunter2@%zz/" })
    assert.is_nil(err.message:find("hunter2", 1, true))
  end)

  it("is nil when no database is configured", function()
    local w = world()
    local r = S.result(w:execute("db.has"))
    assert.is_false(r.has)
  end)

  it("runs queries in tasks and keeps one connection per worker across tasks", function()
    local w = world { database = "sqlite::memory:" }
    local r1 = S.result(w:execute("db.script", {
      { sql = "create table kv (k text primary key, v)" },
      { sql = "insert into kv values (?, ?)", params = { "a", 1 } },
    }))
    assert.is_nil(r1[1].code)
    assert.is_nil(r1[2].code)
    -- an in-memory database lives as long as the connection: the next task
    -- sees the row only if it got the same warm connection
    local r2 = S.result(w:execute("db.query", { sql = "select v from kv where k = ?", params = { "a" } }))
    assert.same({ { v = 1 } }, r2.rows)
    local r3 = S.result(w:execute("db.query", { sql = "select 1 as x" }))
    assert.equals(r2.conn, r3.conn)
    local e = S.result(w:execute("db.query", { sql = "insert into kv values ('a', 2)" }))
    assert.equals("EUNIQUE", e.code)
    assert.equals("SQLITE_CONSTRAINT_PRIMARYKEY", e.sqlstate)
  end)

  it("stops a long statement when the task times out; the connection stays usable", function()
    local w = world { database = "sqlite::memory:" }
    local h = w:execute("db.slow_timed", {
      sql = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 1000000000) select count(*) as n from c",
    })
    local t0 = athena.now()
    local r, err = S.result(h)
    assert.is_nil(r)
    assert.equals("ETIMEDOUT", err.code)
    assert.is_true(athena.now() - t0 < 3000) -- the statement alone takes minutes
    local ok = S.result(w:execute("db.query", { sql = "select 2 as n" }))
    assert.same({ { n = 2 } }, ok.rows)
  end)

  it("does not block the worker's loop while a statement runs: a sleep on the same worker wakes first", function()
    local dir = tmpdir()
    local w = world { database = "sqlite:" .. dir .. "/slow.db", taskQueues = { default = { concurrency = 4 } } }
    -- a statement of a fraction of a second (counting to 5e6 in a recursive CTE; seconds
    -- under ASan)
    local slow = w:execute("db.query", {
      sql = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 5000000) select count(*) as n from c",
    })
    S.eventually(function() return slow:status() == "running" end, nil, "the slow statement to start")
    local tick = S.result(w:execute("db.tick", { ms = 10 }), 120000)
    local s = S.result(slow, 120000)
    assert.is_nil(s.code)
    assert.equals(5000000, s.rows[1].n)
    -- before SQLite statements left the worker thread, the tick could only
    -- start once the statement had returned
    assert.is_true(tick.t1 < s.t1, ("tick woke at %d, the statement ended at %d"):format(tick.t1, s.t1))
    os.execute("rm -rf " .. dir)
  end)

  it("keeps an idle in-memory database when a statement outside a transaction times out", function()
    local w = world { database = "sqlite::memory:" }
    S.result(w:execute("db.script", { { sql = "create table keep (v)" }, { sql = "insert into keep values (7)" } }))
    local _, err = S.result(w:execute("db.slow", {
      sql = "with recursive c(x) as (select 1 union all select x + 1 from c where x < 1000000000) select count(*) as n from c",
    }))
    assert.equals("ETIMEDOUT", err.code)
    local r = S.result(w:execute("db.query", { sql = "select v from keep" }))
    assert.same({ { v = 7 } }, r.rows)
  end)

  it("lets a task waiting for the connection time out, and passes the turn on", function()
    local w = world { database = "sqlite::memory:", taskQueues = { default = { concurrency = 4 } } }
    S.result(w:execute("db.script", { { sql = "create table db_tx (v)" } }))
    local hold = w:execute("db.tx_hold", { value = 1, ms = 600 })
    local waiter = w:execute("db.slow", { sql = "select 1" }) -- 300 ms timeout, waits for hold
    local after = w:execute("db.query", { sql = "select count(*) as n from db_tx" })
    local _, err = S.result(waiter)
    assert.equals("ETIMEDOUT", err.code)
    local h = S.result(hold)
    assert.equals(1, h.n)
    local a = S.result(after)
    assert.same({ { n = 1 } }, a.rows) -- ran once the transaction committed
    assert.is_true(a.t1 >= h.t0 + 600)
  end)

  it("holds the connection for a transaction that yields: other tasks wait their turn", function()
    local w = world { database = "sqlite::memory:", taskQueues = { default = { concurrency = 4 } } }
    S.result(w:execute("db.script", { { sql = "create table db_tx (v)" } }))
    local hold = w:execute("db.tx_hold", { value = 1, ms = 200 })
    local other = w:execute("db.query", { sql = "insert into db_tx (v) values (2)" })
    local h = S.result(hold)
    local o = S.result(other)
    assert.is_nil(o.code)
    -- the holder saw only its own row: the other insert waited for COMMIT
    assert.equals(1, h.n)
    assert.is_true(o.t1 >= h.t0 + 200)
  end)
end)
