-- A full disk, for real (SEMANTICS §13, docs/lua-api.md "When the disk
-- fails"): the store lives on a small tmpfs the spec mounts, fills until
-- commits fail, then grows with `mount -o remount,size=...`. File-mode
-- execute answers nil, ENOSPC at once instead of hanging; once there is
-- space again the world takes work again by itself, and every task it
-- acknowledged is there and completes. Needs root (CI runs as root);
-- elsewhere, or where tmpfs cannot be mounted, the spec says so and skips.
local athena = require "athena"
local S = require "fixtures.support"

local sh = S.sh

local function root()
  local out = sh("id -u")
  return out:match("^0%s") ~= nil
end

local mnt, world

local function teardown()
  if world then pcall(world.shutdown, world, { timeout = 1000 }) end
  world = nil
  collectgarbage() -- a world closes its files when freed
  collectgarbage()
  if mnt then
    local _, rc = sh("umount " .. mnt)
    if rc ~= 0 then sh("umount -l " .. mnt) end
    os.execute("rmdir " .. mnt)
  end
  mnt = nil
end

-- Mounts a 1 MB tmpfs at `mnt`; false (the test reported pending, with
-- the reason) when that cannot be done here.
local function mount_small()
  if not root() then
    pending("needs root to mount a tmpfs (CI runs as root)")
    return false
  end
  mnt = S.tmpname()
  assert(os.execute("mkdir -p " .. mnt))
  local out, rc = sh("mount -t tmpfs -o size=1m tmpfs " .. mnt)
  if rc ~= 0 then
    os.execute("rmdir " .. mnt)
    mnt = nil
    pending("cannot mount a tmpfs here: " .. out)
    return false
  end
  return true
end

describe("a full disk (tmpfs)", function()
  after_each(function()
    S.cleanup()
    teardown()
  end)

  it("file mode: execute returns nil, ENOSPC promptly once commits fail; after a remount with more space the world recovers alone and every acknowledged task completes", function()
    if not mount_small() then return end
    local log = S.tmpname() -- not on the small disk
    world = S.started { persistence = "file", persistencePath = mnt .. "/store", minWorkers = 2,
      maxWorkers = 2, log = { file = log } }
    local payload = string.rep("x", 4000)

    -- fill: every execute either returns (acknowledged: committed) or
    -- answers ENOSPC, each within a deadline
    local acked, refused = {}, nil
    for i = 1, 2000 do
      local id = "fill-" .. i
      local ms, r = S.timed(world.execute, world, "echo", payload, { id = id })
      assert(ms < 5000, ("execute %d took %d ms"):format(i, ms))
      if r[1] == nil then
        refused = { id = id, err = r[2] }
        break
      end
      acked[#acked + 1] = id
    end
    assert(refused, "the 1 MB disk never filled")
    assert.equals("ENOSPC", refused.err.code, tostring(refused.err))
    assert.is_true(refused.err.retryable)
    assert(#acked > 0, "nothing was acknowledged before the disk filled")
    assert.is_nil(world:query(refused.id)) -- withdrawn: never runs

    -- /healthz says so, and why
    local url = world:serve { port = 0, metrics = false, dashboard = false }.url
    local res = assert(athena.http.request { url = url .. "/healthz" })
    assert.equals(503, res.status)
    assert.matches("store degraded %(ENOSPC%)", res.body)
    assert.matches("full", res.body)

    -- degraded: refused up front, at once
    local ms, r = S.timed(world.execute, world, "echo", 1, { id = "while-full" })
    assert.is_nil(r[1])
    assert.equals("ENOSPC", r[2].code)
    assert(ms < 1000, ("a degraded execute took %d ms"):format(ms))
    local hs, err = world:executeMany("echo", { 1, 2 })
    assert.is_nil(hs)
    assert.equals("ENOSPC", err.code)
    assert.is_nil(world:query("while-full"))

    -- space comes back: no restart, the store recovers by itself
    local _, grc = sh("mount -o remount,size=64m " .. mnt)
    assert.equals(0, grc)
    local h = S.eventually(function()
      return (world:execute("echo", "after", { id = "after" }))
    end, 10000, "execute to work again after the remount")
    assert.equals("after", S.result(h))
    res = assert(athena.http.request { url = url .. "/healthz" })
    assert.equals(200, res.status)
    assert.equals("ok", res.body)
    for _, id in ipairs(acked) do
      local s = S.await(world, id, 20000)
      assert.equals("completed", s.status, id)
    end
    S.cleanup() -- shuts it down and lets it go
    world = nil
    collectgarbage() -- frees it: its store connections and its log close
    collectgarbage()

    -- after a restart: everything acknowledged, nothing refused
    world = S.started { persistence = "file", persistencePath = mnt .. "/store", log = { file = log } }
    for _, id in ipairs(acked) do
      local s = world:query(id)
      assert(s, "acknowledged task " .. id .. " was lost")
      assert.equals("completed", s.status)
    end
    assert.is_nil(world:query(refused.id))
    assert.is_nil(world:query("while-full"))
    local text = S.readfile(log)
    local _, degraded = text:gsub("store degraded", "")
    local _, recovered = text:gsub("store commits succeed again", "")
    assert.equals(1, degraded, text)
    assert.equals(1, recovered, text)
  end)

  it("gateway writes on a full SQLite disk answer 503 disk_full and leave no partial rows; after a remount they work", function()
    if not mount_small() then return end
    local url = "sqlite:" .. mnt .. "/gw.db"
    local db = assert(athena.db.open(url))
    assert(db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    local cfg = S.tmpname()
    local f = assert(io.open(cfg, "w"))
    f:write('return { keys = { K = { rights = "*" } }, tables = { "t" } }')
    f:close()
    world = S.started {}
    local base = world:serve { port = 0, gateway = { db = url, config = cfg } }.url
    local text = string.rep("y", 4000)
    local function insert(first)
      local rows = {}
      for i = 0, 19 do rows[#rows + 1] = { id = first + i, v = text } end
      local res = assert(athena.http.request { method = "PUT", url = base .. "/gateway/insert",
        headers = { apikey = "K", ["Content-Type"] = "application/json" },
        body = athena.json.encode { table_name = "t", insert_body = rows } })
      return res.status, athena.json.decode(res.body)
    end
    local status, data, first
    for batch = 0, 200 do
      first = batch * 20 + 1
      status, data = insert(first)
      if status ~= 200 then break end
    end
    assert.equals(503, status, athena.json.encode(data))
    assert.equals("disk_full", data.code)
    assert.equals("the database's disk is full", data.error)
    -- the failed batch left nothing behind: all of it or none of it
    local n = assert(db:query(("SELECT count(*) AS n FROM t WHERE id >= %d AND id < %d"):format(first, first + 20)))
    assert.equals(0, n[1].n)
    local _, grc = sh("mount -o remount,size=64m " .. mnt)
    assert.equals(0, grc)
    status, data = insert(first)
    assert.equals(200, status, athena.json.encode(data))
    n = assert(db:query(("SELECT count(*) AS n FROM t WHERE id >= %d AND id < %d"):format(first, first + 20)))
    assert.equals(20, n[1].n)
    db:close()
  end)

  it("the log file on a full disk: tasks that log run on without waiting for it, rotation included; the lost lines are counted and reported once there is space", function()
    if not mount_small() then return end
    local jobs = require "fixtures.store_jobs"
    local log = mnt .. "/athena.log"
    -- fill the disk but for a few KB: the log gets a little, then nothing
    sh("dd if=/dev/zero of=" .. mnt .. "/filler bs=4k count=250")
    world = S.world { modules = { "fixtures.store_jobs" }, minWorkers = 2, maxWorkers = 2,
      log = { file = log, maxSize = 16384, maxFiles = 2 } }
    world:register(jobs.chatty)
    world:start()
    local hs = {}
    for i = 1, 40 do hs[i] = world:execute("st.chatty", 500) end
    local t0 = athena.now()
    for _, h in ipairs(hs) do assert.equals(500, S.result(h)) end
    local ms = athena.now() - t0
    assert(ms < 10000, ("20,000 log lines on a full disk took %d ms"):format(ms))
    local _, grc = sh("mount -o remount,size=64m " .. mnt)
    assert.equals(0, grc)
    world:execute("st.chatty", 1) -- the writer reports the drops once it caught up
    S.eventually(function()
      local all = (S.readfile(log) or "") .. (S.readfile(log .. ".1") or "") .. (S.readfile(log .. ".2") or "")
      return all:find("logger dropped %d+ lines")
    end, 10000, "the drop report")
  end)
end)
