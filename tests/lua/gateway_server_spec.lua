-- The gateway server (GATEWAY.md) on SQLite: the §8 checklist, policies,
-- headers and hostile input against world:serve{ gateway = ... } on loopback.
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "'")
require("fixtures.gws_checklist").run("sqlite", "sqlite:" .. dir .. "/gateway.db", _ENV,
  "sqlite:" .. dir .. "/other.db")
