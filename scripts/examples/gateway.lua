-- The database gateway: a world serves a SQLite database to browsers over
-- the GATEWAY.md protocol, with a key, an exposed table and a row policy
-- (in a config file, since policies run in the gateway's own Lua states).
-- The script then talks to it with the Lua gateway client, as a browser app
-- with the npm client would, and starts an activity on each insert through
-- X-Publish-Event.
--   scripts/run scripts/examples/gateway.lua
local athena = require "athena"

local dir = os.tmpname()
os.remove(dir)
local onInsert = athena.activity("todo-added", function(ctx, event)
  return #event.rows
end)

local world = athena.World.new { persistence = "memory", minWorkers = 1 }
world:register(onInsert)
world:start()

os.execute("mkdir -p " .. dir)
local db = assert(athena.db.open("sqlite:" .. dir .. "/app.db"))
assert(db:exec("CREATE TABLE todos(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, title TEXT, done BOOLEAN DEFAULT 0)"))
assert(db:exec("INSERT INTO todos(owner, title) VALUES ('ann', 'write docs'), ('bob', 'fix bug'), ('ann', 'ship')"))

local config = dir .. "/gateway.lua"
local f = assert(io.open(config, "w"))
f:write([[
return {
  keys = { ["browser-key"] = { rights = "*", name = "browser" } },
  tables = {
    { name = "todos", policy = function(req)
        -- each caller sees and writes only its own rows
        local who = req.hints.userId or "nobody"
        return { allow = true, conditions = { { operator = "eq", column = "owner", value = who } },
                 set = { owner = who } }
      end },
  },
}
]])
f:close()

local server = world:serve { port = 0, gateway = { db = "sqlite:" .. dir .. "/app.db", config = config } }
print("gateway at " .. server.url)

local gw = athena.gateway.new { baseUrl = server.url, apiKey = "browser-key", userId = "ann" }
local res = gw:fetchGateway { table_name = "todos", columns = { "id", "title" } }
assert(res.ok, tostring(res.error))
print(("ann sees %d todos: %s, %s"):format(#res.data, res.data[1].title, res.data[2].title))
assert(#res.data == 2)

res = gw:insertGateway({ table_name = "todos", insert_body = { title = "celebrate" }, columns = "*" },
  { publishEvent = "todo-added" })
assert(res.ok, tostring(res.error))
assert(res.data[1].owner == "ann", "the policy forces the owner")
print("inserted " .. res.data[1].title .. " for " .. res.data[1].owner)

res = gw:updateGateway { table_name = "todos", update_body = { done = true },
  conditions = { { operator = "eq", column = "title", value = "fix bug" } } }
assert(res.ok and res.affectedRows == 0, "bob's row is out of ann's reach")

local unfiltered = gw:updateGateway { table_name = "todos", update_body = { done = true } }
assert(not unfiltered.ok and unfiltered.error.code == "unfiltered_update")
print("unfiltered update refused: " .. unfiltered.error.code)

-- the activity started by X-Publish-Event
local started
for _ = 1, 500 do
  local list = world:queryTasks { name = "todo-added" }
  if #list > 0 and list[1].status == "completed" then started = list[1] break end
  athena.sleep(10)
end
assert(started and started.result == 1, "todo-added ran with the inserted row")
print("todo-added ran for the insert")

db:close()
world:shutdown()
os.execute("rm -rf " .. dir)
