-- Gateway hardening, input and execution (issue 13): what an outside
-- attacker tried against `athena serve` on SQLite, each as a test.
-- Policies see the body the compiler runs (one parse, strict UTF-8), a
-- table entry without a policy starts, a table listed twice is refused,
-- empty filters do not delete everything, deep `where` nesting is a 400,
-- statementTimeout stops slow reads (and they cannot starve fast ones), a
-- deleted database file is noticed, and failure logs carry the status sent.
local athena = require "athena"
local S = require "fixtures.support"

local json = athena.json

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- The policy denies any `role` in the body, wherever a mutation puts values.
local CONFIG = [[
local function mentions_role(v)
  if type(v) ~= "table" then return false end
  if v.role ~= nil then return true end
  for i = 1, 100 do
    if v[i] == nil then break end
    if type(v[i]) == "table" and v[i].role ~= nil then return true end
  end
  return false
end
return {
  keys = { K = { rights = "*", name = "admin" } },
  tables = {
    { name = "accounts", policy = function(req)
        local p = req.payload
        if mentions_role(p.update_body) or mentions_role(p.insert_body) then
          return false, "role changes are not allowed"
        end
        return true
      end },
    { name = "users", hidden = { "password_hash" } },
    "items",
  },
  limits = { statementTimeout = "300ms" },
}
]]

local H = { apikey = "K", ["Content-Type"] = "application/json" }

local function call(base, method, path, body, headers)
  local h = {}
  for k, v in pairs(H) do h[k] = v end
  for k, v in pairs(headers or {}) do h[k] = v end
  if body ~= nil and type(body) ~= "string" then body = json.encode(body) end
  local res = assert(athena.http.request { method = method, url = base .. path, headers = h, body = body,
                                           timeout = "60s" })
  local data
  if res.body:sub(1, 1) == "{" then data = json.decode(res.body, { nulls = true }) end
  return res.status, data, res.body
end

describe("gateway hardening: input and execution", function()
  local dir, url, db, base, logfile
  local world, servers = nil, 8

  -- world:serve{gateway = ...}.url, on a world with room for another server
  -- (a world runs at most 8); every world logs into `logfile`.
  local function serve(gateway)
    if servers == 8 then
      world = S.world { log = { file = logfile, level = "info" } }
      world:start()
      servers = 0
    end
    servers = servers + 1
    return world:serve { port = 0, gateway = gateway }.url
  end

  setup(function()
    dir = S.tmpname()
    os.execute("mkdir -p '" .. dir .. "'")
    url = "sqlite:" .. dir .. "/gw.db"
    db = assert(athena.db.open(url))
    assert(db:exec("CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT, role TEXT)"))
    assert(db:exec("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, password_hash TEXT)"))
    assert(db:exec("CREATE TABLE items(id INTEGER PRIMARY KEY, v INTEGER, t TEXT UNIQUE)"))
    logfile = dir .. "/athena.log"
    local cfg = dir .. "/gateway.lua"
    write(cfg, CONFIG)
    base = serve { db = url, config = cfg }
  end)

  teardown(function()
    S.cleanup()
    db:close()
    S.cleanup_files()
  end)

  before_each(function()
    assert(db:exec("DELETE FROM accounts"))
    assert(db:exec("INSERT INTO accounts VALUES (1, 'ann', 'user'), (2, 'bob', 'user')"))
    assert(db:exec("DELETE FROM items"))
    assert(db:exec("INSERT INTO items VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c')"))
  end)

  local function role_of(id)
    return assert(db:query("SELECT role FROM accounts WHERE id = ?", id))[1].role
  end

  local function count(tbl)
    return assert(db:query("SELECT count(*) AS n FROM " .. tbl))[1].n
  end

  describe("1: one parse of the body, strict UTF-8", function()
    it("the policy sees the body the compiler runs (valid UTF-8 still allowed and denied)", function()
      local st = call(base, "POST", "/gateway/update",
        '{"table_name":"accounts","update_body":{"name":"\u{e9}\u{1f600}"},' ..
        '"conditions":[{"eq_column":"id","eq_value":1}],"pad":"\\ud83d\\ude00"}')
      assert.equals(200, st)
      assert.equals("\u{e9}\u{1f600}", assert(db:query("SELECT name FROM accounts WHERE id = 1"))[1].name)
      local data
      st, data = call(base, "POST", "/gateway/update",
        '{"table_name":"accounts","update_body":{"role":"admin"},"conditions":[{"eq_column":"id","eq_value":1}]}')
      assert.equals(403, st)
      assert.equals("policy_denied", data.code)
      assert.equals("user", role_of(1))
    end)

    -- Each goes with a role change the policy would deny: before the fix
    -- the compiler took what the policy's decoder refused, and the policy
    -- saw {}.
    local BAD = {
      { "a surrogate (ED A0 80)", "\xed\xa0\x80" },
      { "an overlong NUL (C0 80)", "\xc0\x80" },
      { "an overlong slash (E0 80 AF)", "\xe0\x80\xaf" },
      { "a code point above U+10FFFF (F4 90 80 80)", "\xf4\x90\x80\x80" },
      { "a lead byte F5", "\xf5\x80\x80\x80" },
      { "a lone continuation byte", "\x80" },
      { "a truncated sequence", "\xe2\x82" },
      { "a lone high surrogate escape", "\\ud800" },
      { "a lone low surrogate escape", "\\udc00" },
      { "a high surrogate escape before a non-surrogate", "\\ud800\\u0041" },
      { "a high surrogate escape at the end", "x\\uDBFF" },
    }
    for _, case in ipairs(BAD) do
      it("refuses " .. case[1] .. " with 400 invalid_json, before the policy and the SQL", function()
        local bodies = {
          '{"table_name":"accounts","update_body":{"role":"admin"},' ..
            '"conditions":[{"eq_column":"id","eq_value":1}],"pad":"' .. case[2] .. '"}',
          '{"table_name":"accounts","update_body":{"role":"admin"},' ..
            '"conditions":[{"eq_column":"id","eq_value":1}],"pad' .. case[2] .. '":1}',
        }
        for _, body in ipairs(bodies) do
          local st, data = call(base, "POST", "/gateway/update", body)
          assert.equals(400, st, body)
          assert.equals("invalid_json", data.code)
          assert.equals("user", role_of(1))
        end
        local st, data = call(base, "PUT", "/gateway/insert",
          '{"table_name":"accounts","insert_body":{"id":9,"name":"' .. case[2] .. '","role":"admin"}}')
        assert.equals(400, st)
        assert.equals("invalid_json", data.code)
        assert.equals(2, count("accounts"))
      end)
    end
  end)

  describe("1: a policy input that cannot be built", function()
    it("fails closed: 500, and the SQL does not run", function()
      -- the policy state holds 44 MB of its 64 MB heap, so a body of
      -- 330000 empty objects (some 30 MB as Lua tables) cannot become one
      local cfg = S.tmpname()
      write(cfg, [[
local ballast = {}
for i = 1, 44 do ballast[i] = string.rep("x", 1 << 20) .. i end
return { keys = { K = { rights = "*" } },
  tables = { { name = "accounts", policy = function() return #ballast == 44 end } } }
]])
      local b = serve { db = url, config = cfg }
      local st, data = call(b, "PUT", "/gateway/insert", { table_name = "accounts", insert_body = { id = 50 } })
      assert.equals(200, st, json.encode(data)) -- the policy state loaded, the policy allows
      local pad = string.rep("{},", 330000) .. "{}"
      st, data = call(b, "PUT", "/gateway/insert",
        '{"table_name":"accounts","insert_body":{"id":51,"name":"x"},"pad":[' .. pad .. ']}',
        { ["X-Request-Id"] = "payload-bomb" })
      assert.equals(500, st)
      assert.equals("internal_error", data.code)
      local line = S.eventually(function()
        for l in (S.readfile(logfile) or ""):gmatch("[^\n]+") do
          if l:find("request_id=payload-bomb", 1, true) then return l end
        end
      end, nil, "the failure's log line")
      assert.matches("input could not be built", line, 1, true)
      assert.equals(0, #assert(db:query("SELECT id FROM accounts WHERE id = 51")))
      st = call(b, "PUT", "/gateway/insert", { table_name = "accounts", insert_body = { id = 52 } })
      assert.equals(200, st) -- the thread keeps serving
    end)
  end)

  describe("4: table entries without a policy", function()
    local function serve_tables(tables_src)
      local cfg = S.tmpname()
      write(cfg, "return { keys = { K = { rights = '*' } }, tables = " .. tables_src .. " }")
      return serve { db = url, config = cfg }
    end

    it("starts with { name, hidden } and hides the column", function()
      local b = serve_tables('{ { name = "users", hidden = { "password_hash" } } }')
      assert(db:exec("DELETE FROM users"))
      assert(db:exec("INSERT INTO users VALUES (1, 'ann', 'secret')"))
      local st, data = call(b, "POST", "/gateway/fetch", { table_name = "users" })
      assert.equals(200, st)
      assert.equals("ann", data.data[1].name)
      assert.is_nil(data.data[1].password_hash)
    end)

    it("starts with { name, ops } and keeps to the operations", function()
      local b = serve_tables('{ { name = "items", ops = { "fetch" } } }')
      assert.equals(200, (call(b, "POST", "/gateway/fetch", { table_name = "items" })))
      local st, data = call(b, "POST", "/gateway/delete", { table_name = "items", resource_id = 1 })
      assert.equals(403, st)
      assert.equals("forbidden", data.code)
      assert.equals(3, count("items"))
    end)

    it("mixes entries with and without policies, in list and map form, and keeps each policy", function()
      local b = serve_tables([[{
        { name = "users", hidden = { "password_hash" } },
        "items",
        { name = "accounts", policy = function() return false, "no" end },
        { name = "nothere", ops = { "fetch" } },
      }]])
      assert.equals(200, (call(b, "POST", "/gateway/fetch", { table_name = "items" })))
      local st, data = call(b, "POST", "/gateway/fetch", { table_name = "accounts" })
      assert.equals(403, st)
      assert.equals("policy_denied", data.code)
      b = serve_tables([[{
        users = { hidden = { "password_hash" } },
        accounts = { policy = function() return false, "no" end },
        items = { ops = { "fetch" } },
      }]])
      st, data = call(b, "POST", "/gateway/fetch", { table_name = "accounts" })
      assert.equals(403, st)
      assert.equals("policy_denied", data.code)
      assert.equals(200, (call(b, "POST", "/gateway/fetch", { table_name = "users" })))
    end)
  end)

  describe("9: a table listed twice", function()
    local function refused(tables_src, name)
      local cfg = S.tmpname()
      write(cfg, "local deny = function() return false end\n" ..
        "return { keys = { K = { rights = '*' } }, tables = " .. tables_src .. " }")
      local err = S.raises("EINVAL", function()
        serve { db = url, config = cfg }
      end)
      assert.matches("listed twice", err.message, 1, true)
      assert.matches(name, err.message, 1, true)
    end

    it("is refused with EINVAL naming the table, however the second entry spells it", function()
      refused('{ { name = "accounts", policy = deny }, "accounts" }', "accounts")
      refused('{ { name = "accounts", policy = deny }, "ACCOUNTS" }', "accounts")
      refused('{ { name = "accounts", policy = deny }, "main.accounts" }', "accounts")
      refused('{ "items", accounts = { policy = deny }, { name = "Accounts" } }', "ccounts")
    end)

    it("different tables are fine", function()
      local cfg = S.tmpname()
      write(cfg, "return { keys = { K = { rights = '*' } }, tables = { 'accounts', 'items', 'users' } }")
      local b = serve { db = url, config = cfg }
      assert.equals(200, (call(b, "POST", "/gateway/fetch", { table_name = "items" })))
    end)
  end)

  describe("11: an empty filter is no filter", function()
    -- as JSON text: the empty arrays must stay arrays
    local EMPTY = {
      '"where":{"and":[]}', '"where":{"or":[]}', '"where":{"not":{}}', '"where":{"and":[{}]}',
      '"where":{"or":[{"id":1},{}]}', '"where":{"or":[{"id":1},{"and":[]}]}', '"where":{"not":{"or":[]}}',
      '"where":{"id":{}}', '"where":{"or":[{"id":1},{"id":{}}]}', '"where":{}', '"conditions":[]',
      '"conditions":[],"where":{"and":[]}',
    }
    for i, filter in ipairs(EMPTY) do
      it(("delete and update refuse empty filter #%d: %s"):format(i, filter), function()
        local st, data = call(base, "DELETE", "/gateway/delete", '{"table_name":"items",' .. filter .. '}')
        assert.equals(400, st, json.encode(data))
        assert.equals("unfiltered_delete", data.code)
        st, data = call(base, "POST", "/gateway/update",
          '{"table_name":"items","update_body":{"v":0},' .. filter .. '}')
        assert.equals(400, st, json.encode(data))
        assert.equals("unfiltered_update", data.code)
        assert.equals(3, count("items"))
        assert.equals(60, assert(db:query("SELECT sum(v) AS s FROM items"))[1].s)
      end)
    end

    it("a real filter still deletes, and fetch keeps `and: []` as match-all", function()
      local st, data = call(base, "DELETE", "/gateway/delete",
        { table_name = "items", where = { ["or"] = { { id = 1 }, { id = 2 } } } })
      assert.equals(200, st, json.encode(data))
      assert.equals(2, data.affected_rows)
      st, data = call(base, "POST", "/gateway/fetch", '{"table_name":"items","where":{"and":[]}}')
      assert.equals(200, st)
      assert.equals(1, #data.data)
    end)
  end)

  describe("12: nesting of where", function()
    local function nested(kind, depth)
      local w = { id = 1 }
      for _ = 1, depth do
        if kind == "not" then w = { ["not"] = w } else w = { [kind] = { w, { id = 2 } } } end
      end
      return w
    end

    it("60 nested `not` is a 400 limit_exceeded, not a 500", function()
      local st, data = call(base, "POST", "/gateway/fetch", { table_name = "items", where = nested("not", 60) })
      assert.equals(400, st, json.encode(data))
      assert.equals("limit_exceeded", data.code)
      assert.matches("deeper than 16", data.error, 1, true)
    end)

    for _, kind in ipairs { "not", "and", "or" } do
      it(("%s: 16 levels run, 17 are refused, on fetch, update and delete"):format(kind), function()
        local st, data = call(base, "POST", "/gateway/fetch", { table_name = "items", where = nested(kind, 16) })
        assert.equals(200, st, json.encode(data))
        st, data = call(base, "POST", "/gateway/update",
          { table_name = "items", where = nested(kind, 16), update_body = { v = 5 } })
        assert.equals(200, st, json.encode(data))
        st, data = call(base, "DELETE", "/gateway/delete", { table_name = "items", where = nested(kind, 16) })
        assert.equals(200, st, json.encode(data))
        for _, route in ipairs { "/gateway/fetch", "/gateway/delete" } do
          st, data = call(base, "POST", route, { table_name = "items", where = nested(kind, 17) })
          assert.equals(400, st, json.encode(data))
          assert.equals("limit_exceeded", data.code)
        end
      end)
    end
  end)

  describe("3: statementTimeout on SQLite", function()
    -- Four slow reads (count "exact" + 100 `like` filters that scan each
    -- row's text: several seconds each without a timeout) and one fast
    -- fetch, written on five connections in that order by a Python client
    -- that reads the five answers as they come.
    local SLOW_ROWS = 12000
    local CLIENT = [[
import json, selectors, socket, sys, time
port, slow_body, fast_body = int(sys.argv[1]), open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
def request(body):
    return (b"POST /gateway/fetch HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: K\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
sel = selectors.DefaultSelector()
conns = []
for i, body in enumerate([slow_body] * 4 + [fast_body]):
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(request(body))
    c = {"name": "fast" if i == 4 else "slow", "sent": time.monotonic(), "data": b""}
    conns.append(c)
    sel.register(s, selectors.EVENT_READ, c)
left = len(conns)
while left:
    for key, _ in sel.select(timeout=120):
        chunk = key.fileobj.recv(65536)
        c = key.data
        if chunk:
            c["data"] += chunk
        else:
            c["ms"] = (time.monotonic() - c["sent"]) * 1000
            sel.unregister(key.fileobj)
            key.fileobj.close()
            left -= 1
for c in conns:
    head, _, body = c["data"].partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    code = json.loads(body).get("code", "") if body.startswith(b"{") else ""
    print("%s %d %s %.0f" % (c["name"], status, code or "-", c["ms"]))
]]

    it("stops slow reads with 504 statement_timeout, and they cannot starve a fast fetch", function()
      assert(db:exec("DROP TABLE IF EXISTS big"))
      assert(db:exec("CREATE TABLE big(id INTEGER PRIMARY KEY, t TEXT)"))
      assert(db:exec("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < " .. SLOW_ROWS ..
        ") INSERT INTO big SELECT x, printf('%.*c', 1000, 'a') || 'b' FROM c"))
      local cfg = S.tmpname()
      write(cfg, "return { keys = { K = { rights = '*' } }, tables = { 'big', 'items' }," ..
        " limits = { statementTimeout = '300ms' }, threads = 2 }")
      local b = serve { db = url, config = cfg }
      local conds = {}
      for i = 1, 100 do conds[i] = { column = "t", operator = "like", value = "%aab" } end
      local slow, fast, py = S.tmpname(), S.tmpname(), S.tmpname()
      write(slow, json.encode { table_name = "big", columns = "id", count = "exact", conditions = conds })
      write(fast, json.encode { table_name = "items", conditions = { { eq_column = "id", eq_value = 1 } } })
      write(py, CLIENT)
      local p = assert(io.popen(("python3 %s %s %s %s 2>&1"):format(py, b:match(":(%d+)/?$"), slow, fast)))
      local out = p:read("a")
      p:close()
      local got = {}
      for name, status, code, ms in out:gmatch("(%a+) (%d+) (%S+) (%d+)") do
        got[#got + 1] = { name = name, status = tonumber(status), code = code, ms = tonumber(ms) }
      end
      assert.equals(5, #got, out)
      for i = 1, 4 do
        assert.equals(504, got[i].status, out)
        assert.equals("statement_timeout", got[i].code, out)
      end
      assert.equals(200, got[5].status, out)
      -- Without the timeout each slow read runs for seconds and the fast
      -- fetch waits for two of them on each thread; with it, the fast one
      -- waits for at most two 300 ms slices per thread.
      assert.is_true(got[5].ms < 2500, out)
      -- the slow reads' natural time, for the record: far above the bound
      local t0 = athena.now()
      local direct = assert(athena.db.open(url))
      local like = {}
      for i = 1, 100 do like[i] = "t LIKE '%aab'" end
      assert(direct:exec("PRAGMA case_sensitive_like = ON"))
      assert(direct:query("SELECT count(*) AS n FROM big WHERE " .. table.concat(like, " AND ")))
      direct:close()
      assert.is_true(athena.now() - t0 > 2500, "the slow read is not slow: " .. (athena.now() - t0) .. " ms")
    end)
  end)

  describe("13: a database file deleted or moved while serving", function()
    it("makes /health and every operation answer 503 database_moved, until the file is back", function()
      local path = dir .. "/moving.db"
      local m = assert(athena.db.open("sqlite:" .. path))
      assert(m:exec("CREATE TABLE items(id INTEGER PRIMARY KEY, v INTEGER, t TEXT)"))
      assert(m:exec("INSERT INTO items VALUES (1, 1, 'x')"))
      m:close()
      local cfg = S.tmpname()
      write(cfg, "return { keys = { K = { rights = '*' } }, tables = { 'items' } }")
      local w = S.world { log = { file = logfile, level = "info" } } -- its own, for refreshGateway
      w:start()
      local b = w:serve { port = 0, gateway = { db = "sqlite:" .. path, config = cfg } }.url
      local st, data = call(b, "GET", "/health")
      assert.equals(200, st)
      assert.is_true(data.ok)
      assert(os.rename(path, path .. ".away"))
      -- both threads' connections notice it (more calls than threads)
      for _ = 1, 4 do
        st, data = call(b, "GET", "/health")
        assert.equals(503, st)
        assert.is_false(data.ok)
        st, data = call(b, "PUT", "/gateway/insert", { table_name = "items", insert_body = { id = 2, v = 2 } })
        assert.equals(503, st, json.encode(data))
        assert.equals("database_moved", data.code)
        st, data = call(b, "POST", "/gateway/fetch", { table_name = "items" })
        assert.equals(503, st)
        assert.equals("database_moved", data.code)
      end
      assert.is_nil(io.open(path), "a connection created an empty database in the file's place")
      assert(os.rename(path .. ".away", path))
      st = call(b, "PUT", "/gateway/insert", { table_name = "items", insert_body = { id = 2, v = 2 } })
      assert.equals(200, st)
      assert.equals(200, (call(b, "GET", "/health")))
      os.remove(path)
      for _ = 1, 4 do
        st, data = call(b, "DELETE", "/gateway/delete", { table_name = "items", resource_id = 1 })
        assert.equals(503, st)
        assert.equals("database_moved", data.code)
        assert.equals(503, (call(b, "GET", "/health")))
      end
      -- a catalog refresh (SIGHUP) does not create it again, empty
      local err = S.raises("EINVAL", function() w:refreshGateway() end)
      assert.matches("the database file is gone", err.message, 1, true)
      assert.is_nil(io.open(path))
      assert.equals(503, (call(b, "GET", "/health")))
    end)
  end)

  describe("14: failure logs", function()
    it("carry the status sent", function()
      local st, data = call(base, "PUT", "/gateway/insert", { table_name = "items", insert_body = { id = 7, t = "a" } },
        { ["X-Request-Id"] = "dup-insert-14" })
      assert.equals(409, st)
      assert.equals("unique_violation", data.code)
      local line = S.eventually(function()
        for l in (S.readfile(logfile) or ""):gmatch("[^\n]+") do
          if l:find("request_id=dup-insert-14", 1, true) then return l end
        end
      end, nil, "the failure's log line")
      assert.matches("status=409", line, 1, true)
    end)
  end)
end)
