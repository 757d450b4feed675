-- The HTTP side of `world:serve` attacked from outside (issue 13): who may
-- use the operations surface (keys with ops rights, allowedHosts, no
-- simple cross-site mutations, opsPort, fail closed off loopback), a
-- key kept to one database, the bound on buffered request bodies, h2c and
-- the Server header, rate limits (LRU, IPv6 /64, valid keys during a
-- lockout) and ambiguous request framing.
--
-- Ordinary requests go through athena.http.request; requests no client
-- library sends (raw framing, half-sent bodies, HTTP/2 prefaces) through a
-- python3 socket script, as gateway_server_spec's malformed-HTTP test does.
local athena = require "athena"
local S = require "fixtures.support"

local json = athena.json

local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "'")
local MAIN, OTHER = "sqlite:" .. dir .. "/main.db", "sqlite:" .. dir .. "/other.db"

local function seed(url, name)
  local db = assert(athena.db.open(url))
  assert(db:exec("CREATE TABLE IF NOT EXISTS users(id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
  assert(db:exec("DELETE FROM users"))
  assert(db:exec(("INSERT INTO users VALUES (1, '%s')"):format(name)))
  db:close()
end
seed(MAIN, "main-row")
seed(OTHER, "other-row")

local KEYS = {
  GW = { rights = "gateway.*", name = "app" },
  OPSR = { rights = { "ops.read" }, name = "ops-reader" },
  OPSW = { rights = { "ops.write" }, name = "ops-writer" },
  ALL = { rights = "*", name = "admin" },
  ONE = { rights = "*", name = "one-db", databases = { "reports" } },
  TWO = { rights = "*", name = "two-db", databases = { "reports", "archive" } },
}

local function call(method, url, headers, body)
  local res = assert(athena.http.request { method = method, url = url, headers = headers or {}, body = body })
  local data
  if res.body:sub(1, 1) == "{" or res.body:sub(1, 1) == "[" then data = json.decode(res.body) end
  return res.status, data, res.headers, res.body
end

--- Runs python3 `script` with args; returns its output lines.
local function python(script, ...)
  local py = os.tmpname()
  local f = assert(io.open(py, "w"))
  f:write(script)
  f:close()
  local args = {}
  for i, a in ipairs { ... } do args[i] = "'" .. tostring(a) .. "'" end
  local p = assert(io.popen("python3 " .. py .. " " .. table.concat(args, " ") .. " 2>&1"))
  local out = p:read("a")
  p:close()
  os.remove(py)
  local lines = {}
  for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
  return lines, out
end

local function port_of(url) return tonumber(url:match(":(%d+)$")) end

local function started()
  local w = S.world { modules = { "fixtures.gws_jobs" } }
  w:register(table.unpack(require("fixtures.gws_jobs").all()))
  w:start()
  return w
end

local function gateway(extra)
  local g = { db = MAIN, keys = KEYS, tables = { "users" } }
  for k, v in pairs(extra or {}) do g[k] = v end
  return g
end

teardown(function()
  S.cleanup()
  os.execute("rm -rf '" .. dir .. "'")
end)

describe("operations surface: who may do what", function()
  after_each(S.cleanup)

  it("with a gateway, /api and /metrics need a key with ops rights; the page and /healthz do not", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway { events = { "user-changed" } } }
    -- a published event's task holds the whole row: it must not leak
    local st = call("POST", s.url .. "/gateway/insert", { apikey = "GW", ["Content-Type"] = "application/json",
      ["X-Publish-Event"] = "user-changed" }, json.encode { table_name = "users", insert_body = { id = 2, name = "secret" } })
    assert.equals(200, st)
    local data, hd
    st, data, hd = call("GET", s.url .. "/api/tasks")
    assert.equals(401, st)
    assert.equals("auth_required", data.error.code)
    assert.equals("Bearer", hd["www-authenticate"])
    st, data = call("GET", s.url .. "/api/tasks", { apikey = "nope" })
    assert.equals(401, st)
    assert.equals("invalid_key", data.error.code)
    st, data = call("GET", s.url .. "/api/tasks", { apikey = "GW" }) -- gateway rights only
    assert.equals(403, st)
    assert.equals("forbidden", data.error.code)
    assert.equals(401, (call("GET", s.url .. "/metrics")))
    assert.equals(401, (call("GET", s.url .. "/api/metrics")))
    for _, k in ipairs { "OPSR", "OPSW", "ALL" } do
      st, data = call("GET", s.url .. "/api/tasks", { Authorization = "Bearer " .. k })
      assert.equals(200, st, k)
      assert.is_table(data)
    end
    assert.equals(200, (call("GET", s.url .. "/metrics", { ["X-Athena-Key"] = "OPSR" })))
    assert.equals(200, (call("GET", s.url .. "/healthz")))
    assert.equals(200, (call("GET", s.url .. "/dashboard"))) -- the page: it asks /api with a key
  end)

  it("purge and requeue need ops.write; ops.read gets 403 and nothing changes", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway() }
    local h = w:execute("user-changed", 1, { id = "dead-1" })
    S.result(h)
    local json_h = { ["Content-Type"] = "application/json" }
    json_h.apikey = "OPSR"
    local st, data = call("DELETE", s.url .. "/api/tasks/dead-1", json_h)
    assert.equals(403, st)
    assert.equals("forbidden", data.error.code)
    st = call("POST", s.url .. "/api/tasks/dead-1/requeue", json_h)
    assert.equals(403, st)
    assert.equals(401, (call("DELETE", s.url .. "/api/tasks/dead-1", { ["Content-Type"] = "application/json" })))
    assert.equals("completed", w:query("dead-1").status)
    json_h.apikey = "OPSW" -- allowed: a completed task is not purged (409), but the key got through
    assert.equals(409, (call("DELETE", s.url .. "/api/tasks/dead-1", json_h)))
  end)

  it("without a gateway or auth, loopback stays open, but mutations refuse simple cross-site requests", function()
    local w = started()
    local s = w:serve { port = 0 }
    local h = w:execute("user-changed", 1, { id = "t-1" })
    S.result(h)
    assert.equals(200, (call("GET", s.url .. "/api/tasks")))
    -- a form POST a foreign page can send without a preflight
    local st, data = call("POST", s.url .. "/api/tasks/t-1/requeue", { ["Content-Type"] = "text/plain" }, "x")
    assert.equals(403, st)
    assert.equals("cross_site", data.error.code)
    st = call("DELETE", s.url .. "/api/tasks/t-1", {})
    assert.equals(403, st)
    for _, hd in ipairs {
      { Origin = "http://evil.example" }, { ["Sec-Fetch-Site"] = "cross-site" }, { ["Sec-Fetch-Site"] = "same-site" },
      { Origin = "null" },
    } do
      hd["Content-Type"] = "application/json"
      st, data = call("DELETE", s.url .. "/api/tasks/t-1", hd)
      assert.equals(403, st, json.encode(hd))
      assert.equals("cross_site", data.error.code)
    end
    assert.equals("completed", w:query("t-1").status)
    -- the dashboard's own request: same origin, JSON
    st = call("DELETE", s.url .. "/api/tasks/t-1", { ["Content-Type"] = "application/json", Origin = s.url,
      ["Sec-Fetch-Site"] = "same-origin" })
    assert.equals(409, st) -- through the gate; not quarantined
  end)

  it("a Host that is not allowed gets 421 (DNS rebinding); allowedHosts widens it", function()
    local w = started()
    local s = w:serve { port = 0 }
    for _, path in ipairs { "/api/tasks", "/", "/metrics" } do
      local st, data = call("GET", s.url .. path, { Host = "rebound.example:" .. port_of(s.url) })
      assert.equals(421, st, path)
      assert.equals("host_not_allowed", data.error.code)
    end
    for _, host in ipairs { "localhost", "127.0.0.1:" .. port_of(s.url), "LOCALHOST:1" } do
      assert.equals(200, (call("GET", s.url .. "/api/tasks", { Host = host })), host)
    end
    local s2 = w:serve { port = 0, allowedHosts = { "ops.internal" }, gateway = gateway() }
    assert.equals(421, (call("GET", s2.url .. "/ping", { Host = "localhost" }))) -- configured: every route
    assert.equals(200, (call("GET", s2.url .. "/ping", { Host = "ops.internal:8080" })))
    -- without allowedHosts, gateway routes keep answering any Host (proxies rewrite it)
    local s3 = w:serve { port = 0, gateway = gateway() }
    assert.equals(200, (call("GET", s3.url .. "/ping", { Host = "api.example.com" })))
    assert.equals(421, (call("GET", s3.url .. "/api/tasks", { Host = "api.example.com", apikey = "ALL" })))
  end)

  it("auth without a gateway: keys with ops rights; off loopback, serve refuses to start without it", function()
    local w = started()
    local err = S.raises("EINVAL", w.serve, w, { host = "0.0.0.0", port = 0 })
    assert.matches("needs auth", err.message)
    S.raises("EINVAL", w.serve, w, { port = 0, auth = { keys = { K = { rights = "gateway.*" } } } })
    S.raises("EINVAL", w.serve, w, { port = 0, auth = { K = { rights = "*" } } })
    for _, bad in ipairs { { maxBuffered = 1000 }, { maxBuffered = "lots" }, { allowedHosts = {} },
      { allowedHosts = "x" }, { http2 = "yes" }, { opsPort = -1 }, { opsHost = 1 } } do
      bad.port = 0
      S.raises("EINVAL", w.serve, w, bad)
    end
    local s = w:serve { host = "0.0.0.0", port = 0, auth = { keys = { K = { rights = { "ops.read" } } } },
      allowedHosts = { "127.0.0.1" } }
    local url = "http://127.0.0.1:" .. s.port
    assert.equals(401, (call("GET", url .. "/api/workers")))
    assert.equals(200, (call("GET", url .. "/api/workers", { apikey = "K" })))
    assert.equals(403, (call("DELETE", url .. "/api/tasks/x", { apikey = "K", ["Content-Type"] = "application/json" })))
    -- metrics = false, dashboard = false: only /healthz, which needs no auth anywhere
    local s2 = w:serve { host = "0.0.0.0", port = 0, metrics = false, dashboard = false }
    assert.equals(200, (call("GET", "http://127.0.0.1:" .. s2.port .. "/healthz")))
  end)

  it("failed keys on the operations surface lock the address out, shared with the gateway's", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway { rateLimits = { authFailures = 3 } } }
    for _ = 1, 3 do assert.equals(401, (call("GET", s.url .. "/api/tasks", { apikey = "guess" }))) end
    local st, data, hd = call("GET", s.url .. "/api/tasks", { apikey = "guess" })
    assert.equals(429, st)
    assert.equals("rate_limited", data.error.code)
    assert.is_string(hd["retry-after"])
    -- the gateway's lockout is the same one
    assert.equals(429, (call("POST", s.url .. "/gateway/fetch", { apikey = "guess2",
      ["Content-Type"] = "application/json" }, json.encode { table_name = "users" })))
    assert.equals(200, (call("GET", s.url .. "/api/tasks", { apikey = "OPSR" }))) -- valid keys still work
    -- without a gateway: 10 failures a minute
    local s2 = w:serve { port = 0, auth = { keys = { K = { rights = "ops.read" } } } }
    for _ = 1, 10 do assert.equals(401, (call("GET", s2.url .. "/metrics"))) end
    assert.equals(429, (call("GET", s2.url .. "/metrics")))
    assert.equals(200, (call("GET", s2.url .. "/metrics", { apikey = "K" })))
  end)

  it("opsPort moves the operations surface to its own loopback listener", function()
    local w = started()
    local s = w:serve { port = 0, opsPort = 0, gateway = gateway() }
    assert.is_number(s.opsPort)
    assert.equals("http://127.0.0.1:" .. s.opsPort, s.opsUrl)
    assert.equals(404, (call("GET", s.url .. "/api/tasks", { apikey = "ALL" })))
    assert.equals(404, (call("GET", s.url .. "/metrics", { apikey = "ALL" })))
    assert.equals(200, (call("GET", s.url .. "/ping")))
    -- the gateway's ops keys hold there too
    assert.equals(401, (call("GET", s.opsUrl .. "/api/tasks")))
    assert.equals(200, (call("GET", s.opsUrl .. "/api/tasks", { apikey = "OPSR" })))
    assert.equals(404, (call("GET", s.opsUrl .. "/ping")))
  end)
end)

describe("a key kept to some databases", function()
  after_each(S.cleanup)

  it("without X-Athena-Client reads its one database, or is asked to name one", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway { databases = { reports = OTHER, archive = OTHER } } }
    local body = json.encode { table_name = "users" }
    local hd = { ["Content-Type"] = "application/json" }
    hd.apikey = "ONE"
    local st, data = call("POST", s.url .. "/gateway/fetch", hd, body)
    assert.equals(200, st)
    assert.equals("other-row", data.data[1].name)
    hd.apikey = "TWO"
    st, data = call("POST", s.url .. "/gateway/fetch", hd, body)
    assert.equals(400, st)
    assert.equals("client_required", data.code)
    hd["X-Athena-Client"] = "archive"
    st, data = call("POST", s.url .. "/gateway/fetch", hd, body)
    assert.equals(200, st)
    assert.equals("other-row", data.data[1].name)
    hd.apikey, hd["X-Athena-Client"] = "ALL", nil -- unrestricted keys keep the default
    st, data = call("POST", s.url .. "/gateway/fetch", hd, body)
    assert.equals("main-row", data.data[1].name)
  end)
end)

describe("buffered request bodies", function()
  after_each(S.cleanup)

  it("connections holding more than maxBuffered are shut down; the server keeps serving", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway(), maxBuffered = 1024 * 1024 }
    -- 8 clients with a key each send the headers and 600 KB of a 1 MB body, then wait
    local lines = python([[
import select, socket, sys, time
port = int(sys.argv[1])
conns = []
for i in range(8):
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(b"POST /gateway/insert HTTP/1.1\r\nHost: localhost\r\napikey: GW\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
    try:
        s.sendall(b"x" * 600000)
    except OSError:
        pass
    conns.append(s)
closed = 0
deadline = time.time() + 6  # h2o's own 10 s request timeout must not be what closes them
live = list(conns)
while live and closed < 6 and time.time() < deadline:
    ready, _, _ = select.select(live, [], [], max(0.01, deadline - time.time()))
    for s in ready:
        try:
            d = s.recv(100)
        except OSError:
            d = b""
        if d == b"":
            closed += 1
            live.remove(s)
print(closed)
]], port_of(s.url))
    local closed = tonumber(lines[#lines])
    assert.is_number(closed, table.concat(lines, "\n"))
    assert.is_true(closed >= 6, "closed " .. tostring(closed) .. " of 8")
    assert.equals(200, (call("GET", s.url .. "/ping")))
  end)
end)

describe("bodies without a key", function()
  after_each(S.cleanup)

  it("are cut off once 64 KiB are in (the head is checked then), while a keyed one keeps coming", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway() }
    local lines = python([[
import socket, sys, time
port = int(sys.argv[1])
def start(key):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /gateway/insert HTTP/1.1\r\nHost: localhost\r\n" + key + b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
    try:
        s.sendall(b"x" * 200000)
    except OSError:
        pass
    return s
def state(s, wait):
    s.settimeout(wait)
    try:
        return "closed" if s.recv(100) == b"" else "answered"
    except socket.timeout:
        return "open"
    except OSError:
        return "closed"
anon, bad, keyed = start(b""), start(b"apikey: wrong\r\n"), start(b"apikey: GW\r\n")
print(state(anon, 6), state(bad, 6), state(keyed, 1))
]], port_of(s.url))
    assert.equals("closed closed open", lines[#lines])
    assert.equals(200, (call("GET", s.url .. "/ping")))
  end)
end)

describe("bodies on a listener without a gateway", function()
  after_each(S.cleanup)

  it("over 64 KiB are refused (413) from the headers, before any byte of them is read", function()
    local w = started()
    local s = w:serve { port = 0 }
    local lines = python([[
import socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.sendall(b"POST /api/tasks/x/requeue HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
print(s.recv(12).decode("latin-1"))
]], port_of(s.url))
    assert.equals("HTTP/1.1 413", lines[1])
  end)
end)

describe("HTTP/2 cleartext and the Server header", function()
  after_each(S.cleanup)

  local PROBE = [[
import socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
try:
    d = s.recv(9)
except OSError:
    d = b""
print("h2-settings" if len(d) >= 4 and d[3] == 4 else "refused:" + repr(d[:12]))
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
print(s.recv(12).decode("latin-1"))
]]

  it("are refused by default (prior knowledge and Upgrade: h2c); Server names no version", function()
    local w = started()
    local s = w:serve { port = 0 }
    local lines = python(PROBE, port_of(s.url))
    assert.matches("^refused", lines[1])
    assert.equals("HTTP/1.1 200", lines[2])
    local _, _, hd = call("GET", s.url .. "/healthz")
    assert.equals("athena", hd.server)
    local s2 = w:serve { port = 0, gateway = gateway() }
    _, _, hd = call("GET", s2.url .. "/ping")
    assert.equals("athena", hd.server)
  end)

  it("with http2 on, a connection opening streams faster than allowed is closed (rapid reset)", function()
    local w = started()
    local s = w:serve { port = 0, http2 = 50 }
    -- HEADERS (GET /healthz, ending the stream) + RST_STREAM (CANCEL), 400 times on one connection
    local lines = python([[
import socket, struct, sys, time
port = int(sys.argv[1])
def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
s = socket.create_connection(("127.0.0.1", port), timeout=10)
out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
block = bytes([0x82, 0x86, 0x04, 0x08]) + b"/healthz"  # :method GET, :scheme http, :path /healthz
for i in range(400):
    sid = 2 * i + 1
    out += frame(1, 0x5, sid, block) + frame(3, 0, sid, struct.pack(">I", 8))
try:
    s.sendall(out)
except OSError:
    pass
got, ended = b"", "open"
deadline = time.time() + 8
try:
    while time.time() < deadline:
        d = s.recv(65536)
        if not d:
            ended = "closed"
            break
        got += d
except socket.timeout:
    pass
except OSError:
    ended = "closed"
print(ended)
]], port_of(s.url))
    assert.equals("closed", lines[#lines])
    assert.equals(200, (call("GET", s.url .. "/healthz"))) -- other connections are served
  end)

  it("http2 = true turns h2c on", function()
    local w = started()
    local s = w:serve { port = 0, http2 = true }
    local lines = python(PROBE, port_of(s.url))
    assert.equals("h2-settings", lines[1])
    assert.equals("HTTP/1.1 101", lines[2])
  end)
end)

describe("rate limits", function()
  after_each(S.cleanup)

  local function served(rate)
    local w = started()
    return w:serve { port = 0, gateway = gateway { trustedProxies = { "127.0.0.1" },
      rateLimits = rate or { authFailures = 3, ip = { rate = 1000, burst = 1000 },
        key = { rate = 100000, burst = 100000 } } } }
  end
  local function fetch(url, ip, key)
    local hd = { ["Content-Type"] = "application/json", ["X-Forwarded-For"] = ip }
    hd.apikey = key
    return call("POST", url .. "/gateway/fetch", hd, json.encode { table_name = "users" })
  end
  local function lock_out(url, ip)
    for _ = 1, 3 do assert.equals(401, (fetch(url, ip, "wrong"))) end
    assert.equals(429, (fetch(url, ip, "wrong")))
  end

  it("a lockout survives a table filled by other addresses", function()
    local s = served()
    lock_out(s.url, "10.9.9.9")
    for i = 1, 1500 do -- past 70 % of any table size the old code wiped at
      assert.equals(200, (fetch(s.url, ("10.1.%d.%d"):format(i // 250, i % 250), "GW")))
    end
    assert.equals(429, (fetch(s.url, "10.9.9.9", "wrong")))
  end)

  it("IPv6 clients share their /64's budget", function()
    local s = served()
    for i = 1, 3 do assert.equals(401, (fetch(s.url, ("2001:db8:1:2::%x"):format(i), "wrong"))) end
    assert.equals(429, (fetch(s.url, "2001:db8:1:2:ffff::1", "wrong")))
    assert.equals(401, (fetch(s.url, "2001:db8:1:3::1", "wrong"))) -- another /64
    -- an IPv4-mapped address is that IPv4 address
    lock_out(s.url, "10.2.2.2")
    assert.equals(429, (fetch(s.url, "::ffff:10.2.2.2", "wrong")))
  end)

  -- Connections are handed to the gateway threads in turn, so two opened
  -- one after the other are answered by different threads: a lockout
  -- counted per thread would let 2 x authFailures guesses through.
  local TWO_CONNS = [[
import http.client, sys
a = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
b = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
a.connect(); b.connect()
def fetch(c, key):
    h = {"Content-Type": "application/json", "X-Forwarded-For": "10.4.4.4"}
    if key: h["apikey"] = key
    c.request("POST", "/gateway/fetch", body='{"table_name":"users"}', headers=h)
    r = c.getresponse(); r.read()
    return str(r.status)
print(" ".join([fetch(a, "wrong"), fetch(b, "wrong"), fetch(a, "wrong"), fetch(b, "wrong"),
                fetch(a, "wrong"), fetch(b, "GW"), fetch(a, "GW")]))
]]

  it("failed keys count across the gateway threads: one lockout whichever thread answers", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway { threads = 2, trustedProxies = { "127.0.0.1" },
      rateLimits = { authFailures = 3, ip = { rate = 1000, burst = 1000 } } } }
    local lines = python(TWO_CONNS, port_of(s.url))
    assert.equals("401 401 401 429 429 200 200", lines[1])
  end)

  -- The address's and the key's token buckets, taken under one lock with
  -- the failed-key count: each limit holds on its own, a refusal by the
  -- address's bucket is no failed key, and a key's bucket is the key's
  -- whatever address it comes from.
  it("the address's and the key's buckets each refuse past their burst, with Retry-After", function()
    local s = served { authFailures = 100, ip = { rate = 0.001, burst = 3 }, key = { rate = 100000, burst = 100000 } }
    for _ = 1, 3 do assert.equals(200, (fetch(s.url, "10.5.5.5", "GW"))) end
    local st, data, hd = fetch(s.url, "10.5.5.5", "GW")
    assert.equals(429, st)
    assert.equals("rate_limited", data.code)
    assert.is_truthy(tonumber(hd["retry-after"]) >= 1)
    assert.equals(429, (fetch(s.url, "10.5.5.5", "wrong"))) -- limited before its key counts
    assert.equals(200, (fetch(s.url, "10.5.5.6", "GW"))) -- another address has its own

    local k = served { authFailures = 100, ip = { rate = 1000, burst = 1000 }, key = { rate = 0.001, burst = 2 } }
    assert.equals(200, (fetch(k.url, "10.6.6.1", "GW")))
    assert.equals(200, (fetch(k.url, "10.6.6.2", "GW")))
    st, data = fetch(k.url, "10.6.6.3", "GW") -- the key's third request, from a third address
    assert.equals(429, st)
    assert.equals("rate_limited", data.code)
    assert.equals(401, (fetch(k.url, "10.6.6.3", "wrong"))) -- an unknown key is no key's bucket
  end)

  it("valid keys keep working from a locked-out address; failed ones stay locked out", function()
    local s = served()
    lock_out(s.url, "10.3.3.3")
    assert.equals(429, (fetch(s.url, "10.3.3.3", nil)))
    local st, data = fetch(s.url, "10.3.3.3", "GW")
    assert.equals(200, st)
    assert.equals("main-row", data.data[1].name)
    assert.equals(429, (fetch(s.url, "10.3.3.3", "wrong")))
  end)
end)

describe("refusals are cheap", function()
  after_each(S.cleanup)

  it("401 and 429 carry a Content-Length and keep the connection (no reconnect per refusal)", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway { rateLimits = { authFailures = 2 } } }
    local lines = python([[
import socket, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
req = b"POST /gateway/fetch HTTP/1.1\r\nHost: localhost\r\napikey: wrong\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
f = s.makefile("rb")
for i in range(4):
    s.sendall(req)
    status = f.readline().split(b" ")[1].decode()
    n, close = None, False
    while True:
        line = f.readline().strip().lower()
        if not line:
            break
        if line.startswith(b"content-length:"):
            n = int(line.split(b":")[1])
        if line == b"connection: close":
            close = True
    f.read(n or 0)
    print(status, "length" if n is not None else "no-length", "close" if close else "keep-alive")
]], port_of(s.url))
    assert.same({ "401 length keep-alive", "401 length keep-alive", "429 length keep-alive",
      "429 length keep-alive" }, lines)
  end)
end)

describe("ambiguous request framing", function()
  after_each(S.cleanup)

  it("two Content-Lengths or Content-Length with Transfer-Encoding: 400 and the connection closed", function()
    local w = started()
    local s = w:serve { port = 0, gateway = gateway() }
    local lines = python([[
import socket, sys
port = int(sys.argv[1])
body = b'{"table_name":"users"}'
head = b"POST /gateway/fetch HTTP/1.1\r\nHost: localhost\r\napikey: GW\r\nContent-Type: application/json\r\n"
cases = [head + b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(body) + body,
         head + b"Content-Length: 5, %d\r\n\r\n" % len(body) + body,
         head + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
         head + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
         head + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body)) + body,
         b"GET /api/tasks HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]
for c in cases:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(c)
    data = b""
    ended = "closed"
    try:
        # one whole response (its head, then Content-Length bytes)...
        while b"\r\n\r\n" not in data:
            d = s.recv(4096)
            if not d:
                break
            data += d
        head, _, rest = data.partition(b"\r\n\r\n")
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        while len(rest) < n:
            d = s.recv(4096)
            if not d:
                break
            rest += d
        # ...then the connection is closed at once, or stays open
        s.settimeout(1)
        if s.recv(1) != b"":
            ended = "more"
    except socket.timeout:
        ended = "open"
    except OSError:
        pass
    print(data.split(b"\r\n")[0].decode("latin-1") + " " + ended)
    s.close()
]], port_of(s.url))
    assert.equals(6, #lines, table.concat(lines, "\n"))
    for i = 1, 4 do assert.matches("^HTTP/1.1 400 [%a ]+ closed$", lines[i]) end -- h2o itself refuses "5, 22"
    assert.equals("HTTP/1.1 200 OK open", lines[5]) -- the same length twice is one length
    assert.equals("HTTP/1.1 400 Bad Request closed", lines[6])
    assert.equals(200, (call("GET", s.url .. "/ping")))
  end)
end)
