-- athena.http.request (bindings/l_http.c, engine/http/http_client.c), called
-- directly: blocking outside tasks, yielding on the worker's loop (curl
-- multi) inside them. The receiving side is tests/gateway/mock_server.js,
-- which records every request. Two things it cannot show (it keeps only the
-- first of repeated request headers, and it reads and writes bodies as
-- UTF-8 text) are checked against a small byte-exact echo server that this
-- spec writes to its temporary directory: the raw request header lines and
-- binary bodies.
local athena = require "athena"

local json, http = athena.json, athena.http

local CAP = 64 * 1024 * 1024 -- the response body cap

local sh_quote = require("fixtures.node_server").sh_quote

local function ms_since(t0)
  return athena.now() - t0
end

------------------------------------------------------------- the servers

local node = require "fixtures.node_server"
local start_node, start_mock = node.start, node.start_mock

--- Polls pred() every 10 ms until it is truthy (returned) or `ms` pass (nil).
local function wait_for(pred, ms)
  local deadline = athena.now() + ms
  repeat
    local v = pred()
    if v then return v end
    athena.sleep(10)
  until athena.now() > deadline
  return nil
end

-- The echo server: /echo answers the request body byte for byte
-- (application/octet-stream), /bytes answers bytes 0..255, /shutdown exits,
-- anything else answers {method, url, rawHeaders, bodyHex} as JSON.
local ECHO_JS = [[
'use strict';
const http = require('http');
const bytes = Buffer.alloc(256);
for (let i = 0; i < 256; i++) bytes[i] = i;
const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const path = req.url.split('?')[0];
    if (path === '/shutdown') {
      res.writeHead(200, { 'content-length': 2, connection: 'close' });
      return res.end('{}', () => setImmediate(() => process.exit(0)));
    }
    if (path === '/echo' || path === '/bytes') {
      const out = path === '/echo' ? body : bytes;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': out.length });
      return res.end(out);
    }
    const text = JSON.stringify({ method: req.method, url: req.url, rawHeaders: req.rawHeaders, bodyHex: body.toString('hex') });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
});
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`${port} ${port} ${process.pid}\n`);
});
const parent = process.ppid;
setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 500).unref();
setTimeout(() => process.exit(0), 120000).unref();
process.on('SIGTERM', () => process.exit(0));
]]

local function unhex(h)
  return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

--- The values of request header `name` (any case) among node's rawHeaders.
local function raw_values(raw, name)
  local out = {}
  for i = 1, #raw, 2 do
    if raw[i]:lower() == name:lower() then out[#out + 1] = raw[i + 1] end
  end
  return out
end

local ALL_BYTES = {}
for i = 0, 255 do ALL_BYTES[#ALL_BYTES + 1] = string.char(i) end
ALL_BYTES = table.concat(ALL_BYTES)

local function tmpdir()
  local mk = assert(io.popen("mktemp -d"))
  local dir = mk:read("l")
  mk:close()
  assert(dir and dir ~= "", "a temp dir")
  return dir
end

-- A self-signed certificate for 127.0.0.1 and localhost (subjectAltName).
local function make_cert(dir, name)
  local cert, key = dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".key"
  local ok = os.execute(("env -u LD_PRELOAD openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
    .. "-nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1,DNS:localhost "
    .. "-keyout %s -out %s >/dev/null 2>&1"):format(sh_quote(key), sh_quote(cert)))
  assert(ok, "openssl generated a certificate")
  return cert, key
end

--- Asserts fn(...) raises an error value with code EINVAL.
local function raises_einval(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected a raise")
  assert.is_table(err, "an error value: " .. tostring(err))
  assert.equals("EINVAL", err.code)
  return err
end

--- Asserts r, err is a failed request with `code`; returns err.
local function fails(code, r, err)
  assert.is_nil(r, "expected a failure " .. code)
  assert.is_table(err)
  assert.equals(code, err.code)
  return err
end

local mock, echo, dir

describe("athena.http.request", function()
  setup(function()
    dir = tmpdir()
    local f = assert(io.open(dir .. "/echo.js", "w"))
    f:write(ECHO_JS)
    f:close()
    mock = start_mock()
    echo = start_node(dir .. "/echo.js")
  end)
  teardown(function()
    if mock then mock:stop() end
    if echo then echo:stop("/shutdown") end
    if dir then os.execute("rm -rf " .. sh_quote(dir)) end
  end)
  before_each(function()
    mock:reset()
  end)

  ----------------------------------------------------------------- methods

  describe("methods", function()
    for _, m in ipairs { "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH" } do
      it(m .. ": method, path, headers and body as received", function()
        mock:respond { { status = 200, headers = { ["content-type"] = "text/plain" }, body = "answer to " .. m } }
        local body = (m ~= "GET" and m ~= "HEAD") and ("payload of " .. m) or nil
        local r, err = http.request {
          method = m, url = mock.url .. "/things/42?x=1",
          headers = { ["X-Trace"] = "trace-" .. m, Authorization = "Bearer abc" },
          body = body, timeout = 5000,
        }
        assert.is_nil(err)
        assert.equals(200, r.status)
        if m == "HEAD" then
          assert.equals("", r.body)
          assert.equals(tostring(#"answer to HEAD"), r.headers["content-length"])
        else
          assert.equals("answer to " .. m, r.body)
        end
        assert.equals("text/plain", r.headers["content-type"])
        local rec = mock:only_request()
        assert.equals(m, rec.method)
        assert.equals("/things/42", rec.path)
        assert.equals("trace-" .. m, rec.headers["x-trace"])
        assert.equals("Bearer abc", rec.headers["authorization"])
        assert.equals(body or "", rec.body)
      end)
    end

    it("method defaults to GET; the query string is sent", function()
      local r = assert(http.request { url = echo.url .. "/inspect/a?x=1&y=two" })
      local seen = json.decode(r.body)
      assert.equals("GET", seen.method)
      assert.equals("/inspect/a?x=1&y=two", seen.url)
      assert.equals("", seen.bodyHex)
    end)
  end)

  ----------------------------------------------------- bodies and headers

  describe("bodies and headers", function()
    local function inspect(req)
      req.url = echo.url .. "/inspect"
      local r, err = http.request(req)
      assert.is_nil(err)
      assert.equals(200, r.status)
      return json.decode(r.body)
    end

    it("a table body is sent as JSON with Content-Type application/json (once)", function()
      local seen = inspect { method = "POST", body = { name = "ann", n = 3, tags = { "a", "b" } } }
      assert.same({ "application/json" }, raw_values(seen.rawHeaders, "content-type"))
      assert.same({ name = "ann", n = 3, tags = { "a", "b" } }, json.decode(unhex(seen.bodyHex)))
      -- and as the mock sees it
      local r = assert(http.request { method = "PUT", url = mock.url .. "/j", body = { ok = true } })
      assert.equals(200, r.status)
      local rec = mock:only_request()
      assert.equals("application/json", rec.headers["content-type"])
      assert.same({ ok = true }, json.decode(rec.body))
    end)

    it("the caller's Content-Type wins over the JSON one: exactly one Content-Type is sent", function()
      for _, name in ipairs { "Content-Type", "content-type", "CONTENT-TYPE" } do
        local seen = inspect { method = "POST", headers = { [name] = "application/vnd.x+json" }, body = { a = 1 } }
        assert.same({ "application/vnd.x+json" }, raw_values(seen.rawHeaders, "content-type"), name)
        assert.same({ a = 1 }, json.decode(unhex(seen.bodyHex)))
      end
      local seen = inspect { method = "POST", headers = { ["Content-Type"] = "text/plain" }, body = "plain" }
      assert.same({ "text/plain" }, raw_values(seen.rawHeaders, "content-type"))
      assert.equals("plain", unhex(seen.bodyHex))
    end)

    it("an empty header value is sent as an empty header", function()
      local seen = inspect { headers = { ["X-Empty"] = "", ["X-Full"] = "v" } }
      assert.same({ "" }, raw_values(seen.rawHeaders, "x-empty"))
      assert.same({ "v" }, raw_values(seen.rawHeaders, "x-full"))
      http.request { url = mock.url .. "/e", headers = { ["X-Empty"] = "" } }
      assert.equals("", mock:only_request().headers["x-empty"])
    end)

    it("response header names are lower-cased and repeated headers joined with \", \"", function()
      mock:respond { { status = 200, body = "h", headers = {
        ["X-Mixed-Case"] = "One", ["X-Multi"] = { "a", "b", "c" }, ["Set-Cookie"] = { "s=1", "t=2" },
        ["Content-Type"] = "text/plain",
      } } }
      local r = assert(http.request { url = mock.url .. "/h" })
      assert.equals("One", r.headers["x-mixed-case"])
      assert.equals("a, b, c", r.headers["x-multi"])
      assert.equals("s=1, t=2", r.headers["set-cookie"])
      assert.equals("text/plain", r.headers["content-type"])
      assert.equals("1", r.headers["content-length"])
      for k, v in pairs(r.headers) do
        assert.equals(k:lower(), k)
        assert.is_string(v)
      end
    end)

    it("status codes 200, 204, 404 and 500 are responses, not errors", function()
      for _, s in ipairs { 200, 204, 404, 500 } do
        local text = s == 204 and "" or ("body " .. s)
        mock:respond { { status = s, body = text, headers = { ["content-type"] = "text/plain" } } }
        local r, err = http.request { method = "POST", url = mock.url .. "/s" .. s, body = "x" }
        assert.is_nil(err, "status " .. s)
        assert.equals(s, r.status)
        assert.equals(text, r.body)
      end
    end)

    it("a binary body (bytes 0-255) round trips byte for byte", function()
      local payload = ALL_BYTES .. ALL_BYTES:reverse() .. "\0\0"
      local r = assert(http.request {
        method = "POST", url = echo.url .. "/echo", body = payload,
        headers = { ["Content-Type"] = "application/octet-stream" },
      })
      assert.equals(200, r.status)
      assert.equals(#payload, #r.body)
      assert.is_true(payload == r.body, "the echoed body differs")
      local seen = inspect { method = "PUT", body = ALL_BYTES }
      assert.is_true(unhex(seen.bodyHex) == ALL_BYTES, "the received body differs")
      local b = assert(http.request { url = echo.url .. "/bytes" })
      assert.equals(256, #b.body)
      assert.is_true(b.body == ALL_BYTES, "the received bytes differ")
    end)
  end)

  ------------------------------------------------------------------ errors

  describe("errors", function()
    it("a response slower than timeout: ETIMEDOUT, retryable, within timeout + slack", function()
      mock:respond { { status = 200, body = "late", delay = 3000 }, { status = 200, body = "late", delay = 3000 } }
      for _, timeout in ipairs { 300, "300ms" } do
        local t0 = athena.now()
        local r, err = http.request { url = mock.url .. "/slow", timeout = timeout }
        local took = ms_since(t0)
        fails("ETIMEDOUT", r, err)
        assert.is_true(err.retryable)
        assert.is_true(took >= 280 and took < 1300, "took " .. took .. " ms")
      end
    end)

    it("a refused connection: ECONNREFUSED, retryable", function()
      local port = mock:freeport()
      local t0 = athena.now()
      local r, err = http.request { url = "http://127.0.0.1:" .. port .. "/", timeout = 5000 }
      fails("ECONNREFUSED", r, err)
      assert.is_true(err.retryable)
      assert.is_true(ms_since(t0) < 2000)
    end)

    it("a dropped connection: ECONNRESET, retryable", function()
      mock:respond { { close = true }, { close = true, delay = 200 } }
      local r, err = http.request { method = "POST", url = mock.url .. "/drop", body = "x", timeout = 5000 }
      fails("ECONNRESET", r, err)
      assert.is_true(err.retryable)
      r, err = http.request { url = mock.url .. "/drop-later", timeout = 5000 }
      fails("ECONNRESET", r, err)
      assert.equals(2, mock:stats().count)
    end)

    it("a body of exactly 64 MiB is returned; one byte more fails EMSGSIZE, not retryable", function()
      local big = string.rep("z", CAP)
      mock:respond { { status = 200, body = big, headers = { ["content-type"] = "text/plain" } } }
      local r, err = http.request { url = mock.url .. "/cap", timeout = 15000 }
      assert.is_nil(err)
      assert.equals(CAP, #r.body)
      r = nil
      mock:respond { { status = 200, body = big .. "z", headers = { ["content-type"] = "text/plain" } } }
      big = nil -- luacheck: ignore
      collectgarbage()
      r, err = http.request { url = mock.url .. "/over", timeout = 15000 }
      fails("EMSGSIZE", r, err)
      assert.is_false(err.retryable)
      collectgarbage()
    end)
  end)

  ---------------------------------------------------------- bad arguments

  describe("bad arguments", function()
    it("raise EINVAL before anything is sent", function()
      local u = mock.url .. "/x"
      for _, url in ipairs { "ftp://127.0.0.1/x", "127.0.0.1/x", "file:///etc/passwd", "" } do
        raises_einval(http.request, { url = url })
      end
      raises_einval(http.request, {})                                    -- no url
      raises_einval(http.request, { url = 80 })
      raises_einval(http.request, { url = u, methd = "GET" })           -- unknown option
      raises_einval(http.request, { url = u, [1] = "GET" })
      raises_einval(http.request, { url = u, headers = { ["X-A"] = 1 } }) -- non-string value
      raises_einval(http.request, { url = u, headers = { ["X-A"] = true } })
      raises_einval(http.request, { url = u, headers = { "v" } })        -- non-string name
      raises_einval(http.request, { url = u, headers = { ["X:A"] = "v" } })
      raises_einval(http.request, { url = u, headers = { ["X-A\nB"] = "v" } })
      raises_einval(http.request, { url = u, headers = { ["X-A\r"] = "v" } })
      raises_einval(http.request, { url = u, headers = { [""] = "v" } })
      raises_einval(http.request, { url = u, headers = { ["X-A"] = "a\r\nX-Evil: 1" } })
      raises_einval(http.request, { url = u, headers = { ["X-A"] = "a\nb" } })
      raises_einval(http.request, { url = u, headers = "X-A: v" })
      raises_einval(http.request, { url = u, timeout = 0 })
      raises_einval(http.request, { url = u, timeout = "0ms" })
      raises_einval(http.request, { url = u, timeout = -5 })
      raises_einval(http.request, { url = u, timeout = "soon" })
      raises_einval(http.request, { url = u, method = "get" })
      raises_einval(http.request, { url = u, method = "" })
      raises_einval(http.request, { url = u, method = "GET / HTTP/1.1\r\n" })
      raises_einval(http.request, { url = u, body = 42 })
      raises_einval(http.request, { url = u, body = { f = function() end } })
      raises_einval(http.request, { url = u, cafile = 42 })
      for _, bad in ipairs { "http://127.0.0.1/", 42, true } do
        local ok, err = pcall(http.request, bad)
        assert.is_false(ok)
        assert.is_string(err)
        assert.matches("bad argument #1", err, 1, true)
      end
      local ok, err = pcall(http.request)
      assert.is_false(ok)
      assert.matches("bad argument #1", err, 1, true)
      assert.equals(0, mock:stats().count)
    end)
  end)

  --------------------------------------------------------------------- TLS

  describe("TLS with a self-signed certificate", function()
    local tls, cert, other

    setup(function()
      local key
      cert, key = make_cert(dir, "cert")
      other = make_cert(dir, "other")
      tls = start_mock("--https " .. sh_quote(cert) .. " " .. sh_quote(key))
    end)
    teardown(function()
      if tls then tls:stop() end
    end)
    before_each(function()
      tls:reset()
    end)

    it("without cafile: ETLS, and no request gets through", function()
      local r, err = http.request { url = "https://127.0.0.1:" .. tls.port .. "/secure", timeout = 5000 }
      fails("ETLS", r, err)
      local st = wait_for(function()
        local s = tls:stats()
        return s.tlsErrors > 0 and s
      end, 3000) or tls:stats()
      assert.is_true(st.tlsErrors >= 1, "the server saw the refused handshake")
      assert.equals(0, st.count)
    end)

    it("with a cafile of another certificate: ETLS", function()
      local r, err = http.request { url = "https://127.0.0.1:" .. tls.port .. "/secure", cafile = other, timeout = 5000 }
      fails("ETLS", r, err)
      assert.equals(0, tls:stats().count)
    end)

    it("with cafile = the certificate: succeeds, for 127.0.0.1 and localhost", function()
      tls:respond { { status = 201, body = "secret", headers = { ["content-type"] = "text/plain" } } }
      local r, err = http.request {
        method = "POST", url = "https://127.0.0.1:" .. tls.port .. "/secure", cafile = cert,
        body = { k = "v" }, headers = { ["X-Over-Tls"] = "yes" }, timeout = 5000,
      }
      assert.is_nil(err)
      assert.equals(201, r.status)
      assert.equals("secret", r.body)
      local rec = tls:only_request()
      assert.equals("POST", rec.method)
      assert.equals("/secure", rec.path)
      assert.equals("yes", rec.headers["x-over-tls"])
      assert.same({ k = "v" }, json.decode(rec.body))
      r, err = http.request { url = "https://localhost:" .. tls.port .. "/by-name", cafile = cert, timeout = 5000 }
      assert.is_nil(err)
      assert.equals(200, r.status)
      assert.equals(2, tls:stats().count)
    end)
  end)

  ------------------------------------------------------------ inside tasks

  describe("inside tasks", function()
    local jobs = require "fixtures.http_jobs"
    local world

    local function started()
      world = athena.World.new {
        modules = { "fixtures.http_jobs" }, persistence = "memory", minWorkers = 1, maxWorkers = 1,
        taskQueues = { default = { concurrency = 40 } },
      }
      world:register(table.unpack(jobs.all()))
      world:start()
      return world
    end

    after_each(function()
      if world then
        pcall(world.shutdown, world, { timeout = 50 })
        world = nil
      end
    end)

    -- the mock's connections all closed (its in-flight count back to 0)
    local function drained(ms)
      return wait_for(function() return mock:stats().inFlight == 0 end, ms)
    end

    it("requests, responses and errors work from a task as from outside", function()
      local w = started()
      local port = mock:freeport()
      mock:respond {
        { path = "/t/json", status = 201, body = "made", headers = { ["X-Multi"] = { "a", "b" }, ["X-Case"] = "C" } },
        { path = "/t/404", status = 404, body = "nope" },
        { path = "/t/slow", status = 200, body = "late", delay = 3000 },
        { path = "/t/drop", close = true },
      }
      local h = w:execute("http.calls", {
        { method = "POST", url = mock.url .. "/t/json", body = { a = 1 }, headers = { ["X-Empty"] = "" } },
        { url = mock.url .. "/t/404" },
        { url = mock.url .. "/t/slow", timeout = 300 },
        { url = "http://127.0.0.1:" .. port .. "/", timeout = 5000 },
        { url = mock.url .. "/t/drop", timeout = 5000 },
      })
      local outs, err = h:result(10000)
      assert.is_nil(err)
      assert.equals(201, outs[1].status)
      assert.equals("made", outs[1].body)
      assert.equals("a, b", outs[1].headers["x-multi"])
      assert.equals("C", outs[1].headers["x-case"])
      assert.equals(404, outs[2].status)
      assert.equals("nope", outs[2].body)
      assert.equals("ETIMEDOUT", outs[3].code)
      assert.is_true(outs[3].retryable)
      assert.is_true(outs[3].ms >= 280 and outs[3].ms < 1300, "timed out after " .. outs[3].ms .. " ms")
      assert.equals("ECONNREFUSED", outs[4].code)
      assert.equals("ECONNRESET", outs[5].code)
      local rec = mock:requests()[1]
      assert.equals("POST", rec.method)
      assert.equals("application/json", rec.headers["content-type"])
      assert.equals("", rec.headers["x-empty"])
      assert.same({ a = 1 }, json.decode(rec.body))
    end)

    it("40 tasks of one worker each wait on a 300 ms response at once: done in well under 40 x 300 ms", function()
      local w = started()
      mock:respond(nil, { status = 200, headers = { ["content-type"] = "text/plain" }, body = "slow", delay = 300 })
      local inputs = {}
      for i = 1, 40 do inputs[i] = { url = mock.url .. "/c/" .. i, timeout = 10000 } end
      local t0 = athena.now()
      local hs = w:executeMany("http.call", inputs)
      for i, h in ipairs(hs) do
        local r, err = h:result(math.max(1, 8000 - ms_since(t0)))
        assert.is_nil(err, "task " .. i)
        assert.equals(200, r.status, "task " .. i .. ": " .. tostring(r.code))
        assert.equals("slow", r.body)
      end
      local took = ms_since(t0)
      assert.is_true(took < 3000, "40 x 300 ms requests took " .. took .. " ms")
      local st = mock:stats()
      assert.equals(40, st.count)
      assert.is_true(st.maxInFlight >= 20, "in flight at once: " .. st.maxInFlight)
      local paths = {}
      for _, rec in ipairs(mock:requests()) do paths[rec.path] = true end
      for i = 1, 40 do assert.is_true(paths["/c/" .. i], "/c/" .. i) end
    end)

    it("a task cancelled while its request is in flight ends cancelled promptly; the worker goes on", function()
      local w = started()
      mock:respond { { path = "/cancel/me", status = 200, body = "late", delay = 4000 } }
      local h = w:execute("http.call", { url = mock.url .. "/cancel/me", timeout = 10000 })
      assert.is_truthy(wait_for(function() return mock:stats().inFlight >= 1 end, 3000), "the request reached the mock")
      local t0 = athena.now()
      assert.is_true(h:cancel())
      local r, err = h:result(3000)
      local took = ms_since(t0)
      assert.is_nil(r)
      assert.is_table(err)
      assert.equals("ECANCELED", err.code)
      assert.equals("cancelled", h:status())
      assert.is_true(took < 1000, "ended " .. took .. " ms after the cancel")
      -- the abandoned transfer's connection is closed, well before the response was due
      assert.is_truthy(drained(2000), "the cancelled request's connection is still open")
      -- the worker serves the next request
      local n = w:execute("http.call", { url = mock.url .. "/after", timeout = 5000 })
      local out, nerr = n:result(5000)
      assert.is_nil(nerr)
      assert.equals(200, out.status)
    end)

    it("a task whose attempt timeout (200ms) passes during a slow request fails ETIMEDOUT promptly", function()
      local w = started()
      mock:respond { { path = "/timed", status = 200, body = "late", delay = 4000 } }
      local t0 = athena.now()
      local h = w:execute("http.timed", { url = mock.url .. "/timed", timeout = 10000 })
      local r, err = h:result(3000)
      local took = ms_since(t0)
      assert.is_nil(r)
      assert.is_table(err)
      assert.equals("failed", h:status())
      assert.equals("ETIMEDOUT", err.code)
      assert.is_true(took >= 180 and took < 1500, "failed after " .. took .. " ms")
      assert.is_truthy(drained(2000), "the timed-out request's connection is still open")
      local n = w:execute("http.call", { url = mock.url .. "/after", timeout = 5000 })
      local out, nerr = n:result(5000)
      assert.is_nil(nerr)
      assert.equals(200, out.status)
    end)
  end)
end)
