-- Gateway and the SQLite journal mode (issue 18): a file that is not in WAL
-- mode serves reads about half as fast, so the server logs one hint at start,
-- and leaves the file's mode as the operator set it.
local athena = require "athena"
local S = require "fixtures.support"

local function read(path)
  local f = io.open(path)
  if f == nil then return "" end
  local text = f:read("a")
  f:close()
  return text
end

local function hints(text)
  local n = 0
  for _ in text:gmatch("gateway database is not in WAL mode") do n = n + 1 end
  return n
end

describe("gateway journal mode hint", function()
  local dir

  before_each(function()
    dir = S.tmpname()
    os.execute("mkdir -p '" .. dir .. "'")
  end)
  after_each(function()
    S.cleanup()
    S.cleanup_files()
  end)

  -- Serves a gateway on a new file in `mode`; returns the log text once the
  -- server answers, and the file's mode after.
  local function serve(mode)
    local url = "sqlite:" .. dir .. "/" .. mode .. ".db"
    local db = assert(athena.db.open(url))
    assert(db:query("PRAGMA journal_mode = " .. mode))
    assert(db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY)"))
    db:close()
    local log = dir .. "/" .. mode .. ".log"
    local w = S.world { log = { file = log, level = "info" } }
    w:start()
    local s = w:serve { port = 0, gateway = { db = url, keys = { K = { rights = "*" } }, tables = { "t" } } }
    local res = assert(athena.http.request { method = "POST", url = s.url .. "/gateway/fetch",
      headers = { apikey = "K" }, body = '{"table_name":"t"}' })
    assert.equals(200, res.status)
    w:shutdown()
    db = assert(athena.db.open(url))
    local after = assert(db:query("PRAGMA journal_mode"))[1].journal_mode
    db:close()
    return read(log), after
  end

  it("logs one line for a rollback-journal file and leaves its mode alone", function()
    local text, after = serve("delete")
    assert.equals(1, hints(text))
    assert.truthy(text:find("journal_mode=delete", 1, true))
    assert.equals("delete", after)
  end)

  it("says nothing for a WAL file", function()
    local text, after = serve("wal")
    assert.equals(0, hints(text))
    assert.equals("wal", after)
  end)
end)
