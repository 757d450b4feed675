-- The gateway's plan cache and single parse (issue 18), through the HTTP
-- server on SQLite: each gateway thread reuses the plan of a request shape
-- with the next request's values bound, so requests of one shape must
-- still get their own answers, a value must stay a value however it looks,
-- a catalog refresh must be seen, and a policy's rewrite (its conditions
-- and forced values, which differ per caller) must apply to each request.
local athena = require "athena"
local S = require "fixtures.support"

local json = athena.json

local CONFIG = [[
return {
  keys = { K = { rights = "*", name = "admin" }, U = { rights = "*", name = "user" } },
  tables = {
    "items",
    { name = "notes", policy = function(req)
        if req.key.name ~= "user" then return true end
        local who = req.hints.userId or "nobody"
        -- the policy reads the parsed body it is given
        if req.payload.conditions and req.payload.conditions[1] and
           req.payload.conditions[1].value == "forbidden" then
          return false, "no"
        end
        return { allow = true, conditions = { { operator = "eq", column = "owner", value = who } },
                 set = { owner = who } }
      end },
  },
}
]]

local function call(base, method, path, body, headers)
  local h = { apikey = "K", ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  if body ~= nil and type(body) ~= "string" then body = json.encode(body) end
  local res = assert(athena.http.request { method = method, url = base .. path, headers = h, body = body,
                                           timeout = "60s" })
  local data
  if res.body:sub(1, 1) == "{" then data = json.decode(res.body, { nulls = true }) end
  return res.status, data, res.body
end

local function by(col, op, value)
  return { table_name = "items", conditions = { { operator = op, column = col, value = value } } }
end

describe("gateway plan cache", function()
  local dir, db, world, base

  setup(function()
    dir = S.tmpname()
    os.execute("mkdir -p '" .. dir .. "'")
    local url = "sqlite:" .. dir .. "/gw.db"
    db = assert(athena.db.open(url))
    assert(db:exec("CREATE TABLE items(id INTEGER PRIMARY KEY, cat INTEGER, name TEXT)"))
    assert(db:exec("CREATE TABLE notes(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, body TEXT)"))
    local cfg = dir .. "/gateway.lua"
    local f = assert(io.open(cfg, "w"))
    f:write(CONFIG)
    f:close()
    world = S.world {}
    world:start()
    -- two threads (the default): consecutive connections alternate
    base = world:serve { port = 0, gateway = { db = url, config = cfg } }.url
  end)

  teardown(function()
    S.cleanup()
    db:close()
    S.cleanup_files()
  end)

  before_each(function()
    assert(db:exec("DELETE FROM items"))
    for i = 1, 40 do
      assert(db:exec("INSERT INTO items VALUES (?, ?, ?)", i, i % 8, "item " .. i))
    end
    assert(db:exec("DELETE FROM notes"))
    assert(db:exec("INSERT INTO notes VALUES (1, 'alice', 'a1'), (2, 'bob', 'b1'), (3, 'alice', 'a2')"))
  end)

  it("answers each request of one shape with its own values", function()
    for round = 1, 3 do
      for cat = 0, 7 do
        local st, data = call(base, "POST", "/gateway/fetch", by("cat", "eq", cat))
        assert.equals(200, st, json.encode(data))
        assert.equals(5, #data.data, ("round %d cat %d"):format(round, cat))
        for _, r in ipairs(data.data) do assert.equals(cat, r.cat) end
      end
      for _, name in ipairs { "item 3", "item 17", "nothing" } do
        local st, data = call(base, "POST", "/gateway/fetch", by("name", "eq", name))
        assert.equals(200, st)
        assert.equals(name == "nothing" and 0 or 1, #data.data)
        if data.data[1] then assert.equals(name, data.data[1].name) end
      end
      -- `in` with a plain string, then with the list syntax: other SQL
      local st, data = call(base, "POST", "/gateway/fetch", by("name", "in", "item 4"))
      assert.equals(200, st)
      assert.equals(1, #data.data)
      st, data = call(base, "POST", "/gateway/fetch", by("id", "in", "(4,5,6)"))
      assert.equals(200, st, json.encode(data))
      assert.equals(3, #data.data)
      -- another limit is another plan
      for _, limit in ipairs { 2, 3 } do
        local b = by("cat", "eq", 1)
        b.limit = limit
        st, data = call(base, "POST", "/gateway/fetch", b)
        assert.equals(limit, #data.data)
      end
    end
  end)

  it("keeps a value that looks like SQL a value, on a cached plan too", function()
    for _ = 1, 2 do -- warm: the shape is cached on both threads
      call(base, "POST", "/gateway/fetch", by("name", "eq", "item 1"))
    end
    for _, evil in ipairs { "x' OR '1'='1", "item 1' --", "1; DROP TABLE items --", "\" OR \"\"=\"" } do
      for _ = 1, 2 do
        local st, data = call(base, "POST", "/gateway/fetch", by("name", "eq", evil))
        assert.equals(200, st, json.encode(data))
        assert.equals(0, #data.data, evil)
      end
    end
    local st, data = call(base, "PUT", "/gateway/insert", { table_name = "items",
      insert_body = { id = 100, cat = 1, name = "x'); DELETE FROM items; --" } })
    assert.equals(200, st, json.encode(data))
    st, data = call(base, "PUT", "/gateway/insert", { table_name = "items",
      insert_body = { id = 101, cat = 1, name = "'||(SELECT 1)||'" } })
    assert.equals(200, st, json.encode(data))
    assert.equals(42, assert(db:query("SELECT count(*) AS n FROM items"))[1].n)
    assert.equals("x'); DELETE FROM items; --", assert(db:query("SELECT name FROM items WHERE id = 100"))[1].name)
    assert.equals("'||(SELECT 1)||'", assert(db:query("SELECT name FROM items WHERE id = 101"))[1].name)
  end)

  it("sees a catalog refresh: a new column shows on every thread", function()
    for _ = 1, 4 do
      local st, data = call(base, "POST", "/gateway/fetch", { table_name = "items", limit = 1 })
      assert.equals(200, st)
      assert.is_nil(data.data[1].extra)
    end
    assert(db:exec("ALTER TABLE items ADD COLUMN extra TEXT DEFAULT 'e'"))
    world:refreshGateway()
    for _ = 1, 4 do
      local st, data = call(base, "POST", "/gateway/fetch", { table_name = "items", limit = 1 })
      assert.equals(200, st, json.encode(data))
      assert.equals("e", data.data[1].extra)
    end
    assert(db:exec("ALTER TABLE items DROP COLUMN extra"))
    world:refreshGateway()
  end)

  it("applies each caller's policy rewrite to requests of one shape", function()
    local function notes(who, body)
      local b = body or { table_name = "notes", conditions = { { operator = "gte", column = "id", value = 1 } } }
      local st, data = call(base, "POST", "/gateway/fetch", b, { apikey = "U", ["X-User-Id"] = who })
      assert.equals(200, st, json.encode(data))
      local ids = {}
      for _, r in ipairs(data.data) do ids[#ids + 1] = r.id end
      table.sort(ids)
      return ids
    end
    for _ = 1, 3 do
      assert.same({ 1, 3 }, notes("alice"))
      assert.same({ 2 }, notes("bob"))
      assert.same({}, notes("carol"))
      assert.same({ 1, 3 }, notes("alice"))
    end
    -- admin: no rewrite, every row, same shape
    local st, data = call(base, "POST", "/gateway/fetch",
      { table_name = "notes", conditions = { { operator = "gte", column = "id", value = 1 } } })
    assert.equals(200, st)
    assert.equals(3, #data.data)
    -- the policy reads the value of this very request
    st, data = call(base, "POST", "/gateway/fetch",
      { table_name = "notes", conditions = { { operator = "eq", column = "body", value = "forbidden" } } },
      { apikey = "U", ["X-User-Id"] = "alice" })
    assert.equals(403, st, json.encode(data))
    assert.equals("policy_denied", data.code)
    -- forced values on writes, per caller
    for i, who in ipairs { "alice", "bob", "alice" } do
      st, data = call(base, "PUT", "/gateway/insert", { table_name = "notes", insert_body = { id = 10 + i, body = "n" } },
        { apikey = "U", ["X-User-Id"] = who })
      assert.equals(200, st, json.encode(data))
      assert.equals(who, assert(db:query("SELECT owner FROM notes WHERE id = ?", 10 + i))[1].owner)
    end
  end)
end)
