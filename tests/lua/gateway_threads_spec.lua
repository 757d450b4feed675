-- Gateway threads (issue 18): a request is answered by the thread that owns
-- its connection, and a mutation that waits (for the disk, for another
-- writer) does not hold that thread's other connections up: its statements
-- run off the thread's loop.
local athena = require "athena"
local S = require "fixtures.support"

-- Two keep-alive connections to the same (only) gateway thread: an insert
-- on A, which waits for the write lock the test holds, then five fetches on
-- B, each waiting for its answer; prints the fetches' statuses, then (once
-- the test let the lock go) the insert's.
local SCRIPT = [[
import http.client, sys
port = int(sys.argv[1])
a = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
b = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
a.connect(); b.connect()
h = {"Content-Type": "application/json", "apikey": "K"}
a.request("PUT", "/gateway/insert", body='{"table_name":"items","insert_body":{"id":2}}', headers=h)
got = []
for i in range(5):
    b.request("POST", "/gateway/fetch", body='{"table_name":"items"}', headers=h)
    r = b.getresponse(); r.read()
    got.append(str(r.status))
print(" ".join(got), flush=True)
sys.stdin.readline()  # the test has let the lock go
r = a.getresponse()
print(r.status, r.read().decode(), flush=True)
]]

-- Group commit: insert A (the first line of the file argv[2], one body a
-- line) waits for the write lock the test holds; the other inserts arrive
-- meanwhile on connections of their own; a fetch on one more connection
-- after A, and after the others, is answered once they were read. Prints
-- the fetches' statuses, then (once
-- the test let the lock go) each insert's status and error code.
local GROUP_SCRIPT = [[
import http.client, json, sys
port = int(sys.argv[1])
bodies = open(sys.argv[2]).read().splitlines()
h = {"Content-Type": "application/json", "apikey": "K"}
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(len(bodies) + 1)]
for c in conns: c.connect()
def fetch():  # answered after what was sent before it was read
    conns[-1].request("POST", "/gateway/fetch", body='{"table_name":"items"}', headers=h)
    r = conns[-1].getresponse(); r.read()
    return str(r.status)
got = []
for c, body in zip(conns, bodies):
    c.request("PUT", "/gateway/insert", body=body, headers=h)
    if c is conns[0]:
        got.append(fetch())  # A first, alone
got.append(fetch())
print(" ".join(got), flush=True)
sys.stdin.readline()  # the test has let the lock go
out = []
for c in conns[:-1]:
    r = c.getresponse()
    out.append("%d:%s" % (r.status, json.loads(r.read()).get("code", "-")))
print(" ".join(out), flush=True)
]]

-- Commits in a WAL file: frames of the current salt whose header gives
-- the database size after a commit (sqlite.org/fileformat2.html#walformat).
local function wal_commits(path)
  local wal = S.readfile(path) or ""
  if #wal < 32 then
    return 0
  end
  local page = string.unpack(">I4", wal, 9)
  local salt1, salt2 = string.unpack(">I4I4", wal, 17)
  local n, at = 0, 33
  while at + 24 + page - 1 <= #wal do
    local _, size, s1, s2 = string.unpack(">I4I4I4I4", wal, at)
    if s1 ~= salt1 or s2 ~= salt2 then
      break
    end
    if size ~= 0 then
      n = n + 1
    end
    at = at + 24 + page
  end
  return n
end

-- Runs shell command `cmd` (a probe) while connection db holds the write
-- lock: the probe prints a line, the lock is let go, the probe is told so
-- on its standard input and prints a second line. Returns both lines.
local function while_locked(db, dir, cmd)
  assert(db:exec("BEGIN IMMEDIATE")) -- the write lock, held by another connection
  local fifo = dir .. "/go"
  os.execute("mkfifo '" .. fifo .. "'")
  local p = assert(io.popen(cmd .. " < '" .. fifo .. "'"))
  local go = assert(io.open(fifo, "w")) -- opens once the probe has the other end
  local first = p:read("l")
  assert(db:exec("COMMIT"))
  go:write("\n")
  go:close()
  local second = p:read("l")
  p:close()
  return first, second
end

-- Reads after writes, on every thread: 8 keep-alive connections (spread
-- over the threads' listeners); round k inserts row k + 1 on one of them,
-- updates row 1's v to k on another, every third round checkpoints the WAL
-- into the file from another process (pages then come from the file, not
-- the WAL), then fetches on all 8. Prints each fetch that missed a row or
-- an update (none expected), then "done".
local CONSISTENCY_SCRIPT = [[
import http.client, json, sqlite3, sys
port, path = int(sys.argv[1]), sys.argv[2]
h = {"Content-Type": "application/json", "apikey": "K"}
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(8)]
for c in conns: c.connect()
def call(c, method, path_, body):
    c.request(method, path_, body=json.dumps(body), headers=h)
    r = c.getresponse()
    return r.status, json.loads(r.read())
for k in range(1, 31):
    st, _ = call(conns[k % 8], "PUT", "/gateway/insert", {"table_name": "items", "insert_body": {"id": k + 1, "v": 0}})
    assert st == 200, st
    st, _ = call(conns[(k + 3) % 8], "PATCH", "/gateway/update",
                 {"table_name": "items", "update_body": {"v": k}, "conditions": [{"operator": "eq", "column": "id", "value": 1}]})
    assert st == 200, st
    if k % 3 == 0:
        sqlite3.connect(path, timeout=10).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    for i, c in enumerate(conns):
        st, out = call(c, "POST", "/gateway/fetch", {"table_name": "items"})
        rows = out.get("data") or []
        v1 = [r["v"] for r in rows if r["id"] == 1]
        if st != 200 or len(rows) != k + 1 or v1 != [k]:
            print("round %d conn %d: status %d, %d rows, row 1 %r" % (k, i, st, len(rows), v1), flush=True)
print("done", flush=True)
]]

-- A fresh directory holding t.db in WAL mode, made by the statements
-- given; returns the directory, the file's path and a connection to it.
local function wal_db(...)
  local dir = S.tmpname()
  os.execute("mkdir -p '" .. dir .. "'")
  local path = dir .. "/t.db"
  local db = assert(athena.db.open("sqlite:" .. path))
  assert(db:query("PRAGMA journal_mode = WAL"))
  for _, sql in ipairs { ... } do
    assert(db:exec(sql))
  end
  return dir, path, db
end

-- The shell command running Python `script` (written to dir) against
-- server s, followed by `args`.
local function probe(dir, script, s, args)
  local py = dir .. "/probe.py"
  local f = assert(io.open(py, "w"))
  f:write(script)
  f:close()
  return "python3 '" .. py .. "' " .. s.url:match(":(%d+)$") .. (args and " " .. args or "")
end

-- What the command prints (its standard error too).
local function output(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  p:close()
  return out
end

describe("gateway threads", function()
  after_each(function()
    S.cleanup()
    S.cleanup_files()
  end)

  it("serve a thread's other connections while its mutation waits for the write lock", function()
    local dir, path, db = wal_db("CREATE TABLE items(id INTEGER PRIMARY KEY)", "INSERT INTO items VALUES (1)")
    local w = S.world {}
    w:start()
    local s = w:serve { port = 0, gateway = { db = "sqlite:" .. path, keys = { K = { rights = "*" } },
      tables = { "items" }, threads = 1 } }
    local fetches, insert = while_locked(db, dir, probe(dir, SCRIPT, s))
    assert.equals("200 200 200 200 200", fetches)
    assert.matches("^200 .*Inserted 1 rows", insert)
    assert.equals(2, #assert(db:query("SELECT id FROM items")))
    db:close()
  end)

  -- Serves items(id, name) holding row 1 (plus `schema`) with one gateway
  -- thread, sends GROUP_SCRIPT's inserts while the write lock is held;
  -- returns the inserts' outcomes, the ids then stored and the commits
  -- the inserts made.
  local function group(bodies, gateway, schema)
    local dir, path, db = wal_db("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)",
      "INSERT INTO items VALUES (1, 'one')", schema)
    local w = S.world {}
    w:start()
    gateway.db, gateway.keys, gateway.tables, gateway.threads = "sqlite:" .. path, { K = { rights = "*" } },
      { "items" }, 1
    local s = w:serve { port = 0, gateway = gateway }
    local lines = dir .. "/bodies"
    local f = assert(io.open(lines, "w"))
    f:write(table.concat(bodies, "\n"))
    f:close()
    local commits = wal_commits(path .. "-wal")
    local fetch, inserts = while_locked(db, dir, probe(dir, GROUP_SCRIPT, s, "'" .. lines .. "'"))
    assert.equals("200 200", fetch)
    local ids = S.ids(assert(db:query("SELECT id FROM items ORDER BY id")))
    commits = wal_commits(path .. "-wal") - commits
    db:close()
    return inserts, ids, commits
  end

  it("commit the mutations that waited together in one transaction, one failing alone", function()
    -- B is two statements (rows of different key sets), the second a duplicate key
    local inserts, ids, commits = group({ '{"table_name":"items","insert_body":{"id":2}}',
      '{"table_name":"items","insert_body":[{"id":5,"name":"x"},{"id":1}]}',
      '{"table_name":"items","insert_body":{"id":3}}', '{"table_name":"items","insert_body":{"id":4}}' }, {})
    -- B's duplicate undid its first row too; A, C and D are in
    assert.equals("200:- 409:unique_violation 200:- 200:-", inserts)
    assert.same({ 1, 2, 3, 4 }, ids)
    -- A alone (it found the connection free), then B, C and D together
    assert.equals(2, commits)
  end)

  it("run a group again when a statement timeout took its transaction", function()
    -- SQLite rolls the whole transaction back when it interrupts a write:
    -- C, run before B in the same group, must be run again, and D after it
    local slow = [[CREATE TRIGGER slow AFTER INSERT ON items WHEN new.name = 'slow' BEGIN
      SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c);
    END]]
    local inserts, ids, commits = group({ '{"table_name":"items","insert_body":{"id":2}}',
      '{"table_name":"items","insert_body":{"id":3}}', '{"table_name":"items","insert_body":{"id":5,"name":"slow"}}',
      '{"table_name":"items","insert_body":{"id":4}}' }, { limits = { statementTimeout = "200ms" } }, slow)
    assert.equals("200:- 200:- 504:statement_timeout 200:-", inserts)
    assert.same({ 1, 2, 3, 4 }, ids)
    assert.equals(2, commits)
  end)

  it("answer a fetch with every write answered before it, on any thread, after commits and checkpoints", function()
    local dir, path, db = wal_db("CREATE TABLE items(id INTEGER PRIMARY KEY, v INTEGER)",
      "INSERT INTO items VALUES (1, 0)")
    db:close()
    local w = S.world {}
    w:start()
    local s = w:serve { port = 0, gateway = { db = "sqlite:" .. path, keys = { K = { rights = "*" } },
      tables = { "items" }, threads = 2,
      rateLimits = { key = { rate = 1e6, burst = 1e6 }, ip = { rate = 1e6, burst = 1e6 } } } }
    assert.equals("done\n", output(probe(dir, CONSISTENCY_SCRIPT, s, "'" .. path .. "'")))
  end)

  it("answer the fetches read in one pass of the loop each with its own rows, one failing alone", function()
    local dir, path, db = wal_db("CREATE TABLE items(id INTEGER PRIMARY KEY)",
      "INSERT INTO items VALUES (1), (2), (3)", "CREATE VIEW bad AS SELECT json_extract('not json', '$') AS v")
    db:close()
    local w = S.world {}
    w:start()
    local s = w:serve { port = 0, gateway = { db = "sqlite:" .. path, keys = { K = { rights = "*" } },
      tables = { "items", "bad" }, threads = 1 } }
    -- 8 connections, 2 rounds, the fourth of view `bad` (an error when its row is read)
    local out = output("python3 '" .. os.getenv("ATHENA_SRC") .. "/tests/lua/fixtures/together.py' " ..
      s.url:match(":(%d+)$") .. " 8 2 items bad 3")
    local round = "200:3 200:3 200:3 500:0 200:3 200:3 200:3 200:3"
    assert.equals(round .. "\n" .. round .. "\n", out)
  end)

  it("are 1 to 64 (one HTTP loop each)", function()
    local w = S.world {}
    w:start()
    local err = S.raises("EINVAL", function()
      w:serve { port = 0, gateway = { db = "sqlite::memory:", keys = { K = { rights = "*" } }, threads = 65 } }
    end)
    assert.matches("threads must be at most 64", err.message, 1, true)
  end)
end)
