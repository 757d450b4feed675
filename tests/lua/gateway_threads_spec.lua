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

describe("gateway threads", function()
  after_each(function()
    S.cleanup()
    S.cleanup_files()
  end)

  it("serve a thread's other connections while its mutation waits for the write lock", function()
    local dir = S.tmpname()
    os.execute("mkdir -p '" .. dir .. "'")
    local url = "sqlite:" .. dir .. "/t.db"
    local db = assert(athena.db.open(url))
    assert(db:query("PRAGMA journal_mode = WAL"))
    assert(db:exec("CREATE TABLE items(id INTEGER PRIMARY KEY)"))
    assert(db:exec("INSERT INTO items VALUES (1)"))
    local w = S.world {}
    w:start()
    local s = w:serve { port = 0, gateway = { db = url, keys = { K = { rights = "*" } }, tables = { "items" },
      threads = 1 } }
    local py = dir .. "/probe.py"
    local f = assert(io.open(py, "w"))
    f:write(SCRIPT)
    f:close()
    assert(db:exec("BEGIN IMMEDIATE")) -- the write lock, held by another connection
    local fifo = dir .. "/go"
    os.execute("mkfifo '" .. fifo .. "'")
    local p = assert(io.popen("python3 '" .. py .. "' " .. s.url:match(":(%d+)$") .. " < '" .. fifo .. "'"))
    local go = assert(io.open(fifo, "w")) -- opens once python has the other end
    local fetches = p:read("l")
    assert(db:exec("COMMIT"))
    go:write("\n")
    go:close()
    local insert = p:read("l")
    p:close()
    assert.equals("200 200 200 200 200", fetches)
    assert.matches("^200 .*Inserted 1 rows", insert)
    assert.equals(2, #assert(db:query("SELECT id FROM items")))
    db:close()
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
