-- The Lua gateway client (GATEWAY.md §5, issue #8): athena.gateway.new and
-- the createClient builder, against tests/gateway/mock_server.js, a Node.js
-- stand-in that records every request and answers scripted responses
-- (non-JSON bodies, each error envelope, 429 + Retry-After, slow answers,
-- dropped connections, TLS with a self-signed certificate). Every check of
-- headers and bodies is made on the receiving side.
local athena = require "athena"
local gateway = require "athena.gateway"

local json, http = athena.json, athena.http
local null = athena.null

local KEY = "secret-key-1234"

------------------------------------------------------------------ the mock

local node = require "fixtures.node_server"
local sh_quote, start_mock = node.sh_quote, node.start_mock

-- JSON response helpers
local function J(status, text, headers)
  local h = headers or {}
  if h["content-type"] == nil then h["content-type"] = "application/json" end
  return { status = status, body = text, headers = h }
end

local function ms_since(t0)
  return athena.now() - t0
end

local mock

local function new_gw(opts)
  local cfg = { baseUrl = mock.url, apiKey = KEY }
  for k, v in pairs(opts or {}) do cfg[k] = v end
  return gateway.new(cfg)
end

local function raises_einval(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected a raise")
  assert.is_table(err, "an error value: " .. tostring(err))
  assert.equals("EINVAL", err.code)
  return err
end

describe("athena.gateway", function()
  setup(function()
    mock = start_mock()
  end)
  teardown(function()
    if mock then mock:stop() end
  end)
  before_each(function()
    mock:reset()
  end)

  ------------------------------------------------------------ construction

  describe("new", function()
    it("validates baseUrl and trims trailing slashes", function()
      assert.equals("http://127.0.0.1:9/api", gateway.new { baseUrl = "http://127.0.0.1:9/api///" }.baseUrl)
      assert.equals("https://gw.example", gateway.new { baseUrl = "https://gw.example/" }.baseUrl)
      assert.equals("https://gw.example", gateway.new { baseUrl = "HTTPS://gw.example" }.baseUrl)
      for _, bad in ipairs { "ftp://x", "gw.example", "http://", "http://x/?q=1", "http://x/#f", "http://a b", "" } do
        raises_einval(gateway.new, { baseUrl = bad })
      end
      raises_einval(gateway.new, {})
      local ok, err = pcall(gateway.new)
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'new'", err)
    end)

    it("rejects unknown options and wrong option types", function()
      raises_einval(gateway.new, { baseUrl = mock.url, apiKee = "x" })
      raises_einval(gateway.new, { baseUrl = mock.url, apiKey = 42 })
      raises_einval(gateway.new, { baseUrl = mock.url, stripNulls = "yes" })
      raises_einval(gateway.new, { baseUrl = mock.url, timeout = 0 })
      raises_einval(gateway.new, { baseUrl = mock.url, timeout = "soon" })
      raises_einval(gateway.new, { baseUrl = mock.url, headers = { ["X-A"] = 1 } })
      raises_einval(gateway.new, { baseUrl = mock.url, headers = { ["Bad Name"] = "v" } })
      raises_einval(gateway.new, { baseUrl = mock.url, retry = "always" })
      raises_einval(gateway.new, { baseUrl = mock.url, client = "a\r\nX-Evil: 1" })
      local gw = new_gw()
      raises_einval(gw.fetchGateway, gw, { table_name = "t" }, { stripNulls = 1 })
      raises_einval(gw.fetchGateway, gw, { table_name = "t" }, { nope = true })
      assert.equals(0, #mock:requests())
    end)

    it("raises on programmer mistakes before sending anything", function()
      local gw = new_gw()
      local ok, err = pcall(gw.fetchGateway, gw, "users")
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'fetchGateway' %(table expected, got string%)", err)
      raises_einval(gw.fetchGateway, gw, { columns = "*" })
      raises_einval(gw.insertGateway, gw, { table_name = "" })
      raises_einval(gw.updateGateway, gw, { table_name = "t", conditions = "id = 1" })
      raises_einval(gw.insertGateway, gw, { table_name = "t", insert_body = { f = function() end } })
      raises_einval(gw.insertGateway, gw, { table_name = "t", insert_body = { x = 0 / 0 } })
      raises_einval(gw.insertGateway, gw, { table_name = "t", insert_body = { [1] = 1, a = 2 } })
      ok, err = pcall(gw.fetchGateway, { table_name = "t" })
      assert.is_false(ok)
      assert.matches("bad self", err)
      assert.is_false(gw.isLoading)
      assert.is_nil(gw.lastRequest)
      assert.equals(0, #mock:requests())
    end)

    it("accepts view_name for fetch", function()
      local r = new_gw():fetchGateway { view_name = "active_users" }
      assert.is_true(r.ok)
      assert.equals("active_users", mock:only_request().json.view_name)
    end)
  end)

  ------------------------------------------------------- useAthenaGateway

  describe("useAthenaGateway", function()
    -- Runs a chunk in a stock lua5.4 with `env` settings (VAR=value or
    -- -u VAR) and returns its stdout; the chunk sees `athena` and `url`.
    local function run_with_env(env, chunk)
      local src = "local athena = require 'athena'; local url = " .. string.format("%q", mock.url) .. "\n" .. chunk
      local p = assert(io.popen("env -u ATHENA_GATEWAY_URL -u ATHENA_API_KEY " .. env ..
        " timeout -k 2 30 lua5.4 -e " .. sh_quote(src) .. " 2>&1"))
      local out = p:read("a")
      p:close()
      return out
    end

    it("is athena.useAthenaGateway, and with a config it is gateway.new", function()
      assert.equals(gateway.useAthenaGateway, athena.useAthenaGateway)
      local gw = athena.useAthenaGateway { baseUrl = mock.url .. "/", apiKey = KEY, client = "app" }
      assert.equals(mock.url, gw.baseUrl)
      assert.is_true(gw:fetchGateway { table_name = "users" }.ok)
      local h = mock:only_request().headers
      assert.equals(KEY, h["x-athena-key"])
      assert.equals("app", h["x-athena-client"])
    end)

    it("without a config takes ATHENA_GATEWAY_URL and ATHENA_API_KEY from the environment", function()
      local out = run_with_env("ATHENA_GATEWAY_URL=" .. sh_quote(mock.url) .. " ATHENA_API_KEY=env-key-9876",
        "local gw = athena.useAthenaGateway(); print(gw.baseUrl, gw:fetchGateway{ table_name = 'users' }.ok)")
      assert.equals(mock.url .. "\ttrue\n", out)
      local h = mock:only_request().headers
      assert.equals("env-key-9876", h["x-athena-key"])
      assert.equals("Bearer env-key-9876", h["authorization"])
    end)

    it("a config's baseUrl and apiKey win over the environment; a missing apiKey comes from it", function()
      local out = run_with_env("ATHENA_GATEWAY_URL=http://127.0.0.1:9 ATHENA_API_KEY=env-key",
        "print(athena.useAthenaGateway{ baseUrl = url, apiKey = 'cfg-key' }:fetchGateway{ table_name = 't' }.ok)" ..
        " print(athena.useAthenaGateway{ baseUrl = url }:fetchGateway{ table_name = 't' }.ok)")
      assert.equals("true\ntrue\n", out)
      local reqs = mock:requests()
      assert.equals(2, #reqs)
      assert.equals("cfg-key", reqs[1].headers["x-athena-key"])
      assert.equals("env-key", reqs[2].headers["x-athena-key"])
    end)

    it("without a config or ATHENA_GATEWAY_URL raises EINVAL naming both; no key header when unset", function()
      local out = run_with_env("",
        "local ok, e = pcall(athena.useAthenaGateway); print(ok, e.code, e.message)" ..
        " local gw = athena.useAthenaGateway{ baseUrl = url }; gw:fetchGateway{ table_name = 't' }")
      assert.matches("^false\tEINVAL\t", out)
      assert.matches("config%.baseUrl", out)
      assert.matches("ATHENA_GATEWAY_URL", out)
      assert.is_nil(mock:only_request().headers["x-athena-key"])
      out = run_with_env("ATHENA_GATEWAY_URL=", "print(pcall(athena.useAthenaGateway))")
      assert.matches("^false\tEINVAL: .*ATHENA_GATEWAY_URL", out)
    end)

    it("a bad ATHENA_GATEWAY_URL raises EINVAL naming the variable; a non-table config is a bad argument", function()
      local out = run_with_env("ATHENA_GATEWAY_URL=ftp://x", "print(pcall(athena.useAthenaGateway))")
      assert.matches("^false\tEINVAL: ATHENA_GATEWAY_URL: invalid baseUrl", out)
      local ok, err = pcall(athena.useAthenaGateway, "http://x")
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'useAthenaGateway' %(table expected, got string%)", err)
      raises_einval(athena.useAthenaGateway, { baseUrl = mock.url, nope = 1 })
      assert.equals(0, #mock:requests())
    end)
  end)

  ----------------------------------------------------------------- headers

  describe("headers", function()
    it("carry the key in all four forms, JSON types and X-Strip-Nulls; no client header unless set", function()
      new_gw():fetchGateway { table_name = "users" }
      local h = mock:only_request().headers
      assert.equals(KEY, h["x-athena-key"])
      assert.equals(KEY, h["apikey"])
      assert.equals(KEY, h["x-api-key"])
      assert.equals("Bearer " .. KEY, h["authorization"])
      assert.equals("application/json", h["content-type"])
      assert.equals("application/json", h["accept"])
      assert.equals("true", h["x-strip-nulls"])
      for _, absent in ipairs { "x-athena-client", "x-user-id", "x-organization-id", "x-company-id",
        "x-publish-event", "x-supabase-url", "x-supabase-key" } do
        assert.is_nil(h[absent], absent)
      end
    end)

    it("send no key headers without apiKey (or with an empty one)", function()
      gateway.new { baseUrl = mock.url }:fetchGateway { table_name = "users" }
      gateway.new { baseUrl = mock.url, apiKey = "" }:fetchGateway { table_name = "users" }
      for _, r in ipairs(mock:requests()) do
        for _, k in ipairs { "x-athena-key", "apikey", "x-api-key", "authorization" } do
          assert.is_nil(r.headers[k], k)
        end
      end
    end)

    it("carry each option's header", function()
      local gw = new_gw {
        client = "reporting", stripNulls = false, userId = 42, organizationId = "org-1", companyId = "co-9",
        publishEvent = "user-changed", supabaseUrl = "https://x.supabase.co", supabaseKey = "sb-key-5678",
      }
      gw:fetchGateway { table_name = "users" }
      local r = mock:only_request()
      local h = r.headers
      assert.equals("reporting", h["x-athena-client"])
      assert.equals("false", h["x-strip-nulls"])
      assert.equals("42", h["x-user-id"])
      assert.equals("org-1", h["x-organization-id"])
      assert.equals("co-9", h["x-company-id"])
      assert.equals("user-changed", h["x-publish-event"])
      assert.equals("https://x.supabase.co", h["x-supabase-url"])
      assert.equals("sb-key-5678", h["x-supabase-key"])
      assert.is_false(r.json.strip_nulls)
    end)

    it("a custom key header suppresses the four key forms; custom headers come last and win", function()
      local gw = new_gw { client = "a", headers = { ["X-Trace"] = "1" } }
      gw:fetchGateway({ table_name = "users" }, { headers = { Authorization = "Bearer user-jwt" } })
      gw:fetchGateway({ table_name = "users" }, { headers = { apikey = "other" } })
      gw:fetchGateway({ table_name = "users" }, {
        headers = { ["x-athena-client"] = "b", ["x-strip-nulls"] = "no", ["ACCEPT"] = "text/plain" },
      })
      local rs = mock:requests()
      local h1, h2, h3 = rs[1].headers, rs[2].headers, rs[3].headers
      assert.equals("Bearer user-jwt", h1.authorization)
      assert.is_nil(h1["x-athena-key"])
      assert.is_nil(h1.apikey)
      assert.is_nil(h1["x-api-key"])
      assert.equals("1", h1["x-trace"])
      assert.equals("other", h2.apikey)
      assert.is_nil(h2["x-athena-key"])
      assert.is_nil(h2.authorization)
      -- the same header in another case replaces it (one value, not two)
      assert.equals("b", h3["x-athena-client"])
      assert.equals("no", h3["x-strip-nulls"])
      assert.equals("text/plain", h3.accept)
      assert.equals(KEY, h3["x-athena-key"])
    end)

    it("per-call options win field by field and headers merge, constructor then call", function()
      local gw = new_gw { client = "a", userId = "u1", headers = { ["X-A"] = "1", ["X-B"] = "1" } }
      gw:fetchGateway({ table_name = "users" }, { client = "b", headers = { ["x-b"] = "2", ["X-C"] = "3" } })
      gw:fetchGateway { table_name = "users" }
      local rs = mock:requests()
      assert.equals("b", rs[1].headers["x-athena-client"])
      assert.equals("u1", rs[1].headers["x-user-id"])
      assert.equals("1", rs[1].headers["x-a"])
      assert.equals("2", rs[1].headers["x-b"])
      assert.equals("3", rs[1].headers["x-c"])
      -- the constructor's options are unchanged for the next call
      assert.equals("a", rs[2].headers["x-athena-client"])
      assert.equals("1", rs[2].headers["x-b"])
      assert.is_nil(rs[2].headers["x-c"])
    end)
  end)

  ------------------------------------------------------- methods, payloads

  describe("calls", function()
    it("use the four methods and paths (delete with a JSON body)", function()
      local gw = new_gw()
      assert.is_true(gw:fetchGateway { table_name = "users" }.ok)
      assert.is_true(gw:insertGateway { table_name = "users", insert_body = { name = "Sam" } }.ok)
      assert.is_true(gw:updateGateway { table_name = "users", update_body = { name = "X" },
        conditions = { { operator = "eq", column = "id", value = 1 } } }.ok)
      assert.is_true(gw:deleteGateway { table_name = "users", resource_id = "2" }.ok)
      local rs = mock:requests()
      assert.equals(4, #rs)
      assert.same({ "POST", "/gateway/fetch" }, { rs[1].method, rs[1].path })
      assert.same({ "PUT", "/gateway/insert" }, { rs[2].method, rs[2].path })
      assert.same({ "POST", "/gateway/update" }, { rs[3].method, rs[3].path })
      assert.same({ "DELETE", "/gateway/delete" }, { rs[4].method, rs[4].path })
      assert.equals("2", rs[4].json.resource_id)
      assert.equals("users", rs[4].json.table_name)
    end)

    it("fetch and update default conditions to [] and strip_nulls to stripNulls; insert and delete are unchanged",
      function()
        local gw = new_gw()
        gw:fetchGateway { table_name = "users" }
        gw:updateGateway { table_name = "users", update_body = { name = "X" } }
        gw:fetchGateway({ table_name = "users" }, { stripNulls = false })
        gw:fetchGateway { table_name = "users", strip_nulls = false } -- the payload's own value stays
        gw:insertGateway { table_name = "users", insert_body = { name = "S" } }
        gw:deleteGateway { table_name = "users", resource_id = 3 }
        local rs = mock:requests()
        assert.matches('"conditions":%[%]', rs[1].body)
        assert.is_true(rs[1].json.strip_nulls)
        assert.matches('"conditions":%[%]', rs[2].body)
        assert.is_true(rs[2].json.strip_nulls)
        assert.is_false(rs[3].json.strip_nulls)
        assert.equals("false", rs[3].headers["x-strip-nulls"])
        assert.is_false(rs[4].json.strip_nulls)
        assert.same({ table_name = "users", insert_body = { name = "S" } }, rs[5].json)
        assert.same({ table_name = "users", resource_id = 3 }, rs[6].json)
      end)

    it("send each eq in both forms, and JSON null as athena.null", function()
      local gw = new_gw()
      local payload = { table_name = "users", conditions = {
        { operator = "eq", column = "name", value = "Bilbo" },
        { eq_column = "id", eq_value = 2 },
        { operator = "eq", column = "email", value = null },
        { operator = "gt", column = "age", value = 18 },
      } }
      gw:fetchGateway(payload)
      local c = mock:only_request().json.conditions
      assert.same({ operator = "eq", column = "name", value = "Bilbo", eq_column = "name", eq_value = "Bilbo" }, c[1])
      assert.same({ operator = "eq", column = "id", value = 2, eq_column = "id", eq_value = 2 }, c[2])
      assert.equals(null, c[3].value)
      assert.equals(null, c[3].eq_value)
      assert.equals("email", c[3].eq_column)
      assert.same({ operator = "gt", column = "age", value = 18 }, c[4])
      -- the caller's payload is not modified
      assert.is_nil(payload.conditions[1].eq_column)
      assert.is_nil(payload.strip_nulls)
    end)

    it("encode list fields as arrays even when empty, objects as objects", function()
      local gw = new_gw()
      gw:fetchGateway { table_name = "users", columns = {}, conditions = {
        { operator = "in", column = "id", value = {} },
        { operator = "contains", column = "tags", value = {} },
        { operator = "eq", column = "id", value = {} },
      } }
      gw:insertGateway { table_name = "users", insert_body = {} }
      gw:insertGateway { table_name = "users", insert_body = gateway.object {} }
      gw:insertGateway { table_name = "users", insert_body = { { name = "a", tags = gateway.array() }, {} },
        on_conflict = { "id" }, update_body = {} }
      gw:fetchGateway { table_name = "users", columns = { "id", "email" } }
      local rs = mock:requests()
      assert.matches('"columns":%[%]', rs[1].body)
      assert.matches('{"column":"id","operator":"in","value":%[%]}', rs[1].body)
      assert.matches('{"column":"tags","operator":"contains","value":%[%]}', rs[1].body)
      assert.matches('"eq_value":%[%]', rs[1].body)
      assert.matches('"insert_body":%[%]', rs[2].body)
      assert.matches('"insert_body":{}', rs[3].body)
      assert.matches('"insert_body":%[{"name":"a","tags":%[%]},{}%]', rs[4].body)
      assert.matches('"on_conflict":%["id"%]', rs[4].body)
      assert.matches('"update_body":{}', rs[4].body)
      assert.matches('"columns":%["id","email"%]', rs[5].body)
    end)

    it("write floats so that they read back exactly, integers as integers", function()
      local gw = new_gw()
      local x, y = 1 / 3, 0.1 + 0.2
      gw:insertGateway { table_name = "m", insert_body = { x = x, y = y, n = 42, big = 9007199254740993, f = 2.0 } }
      local r = mock:only_request()
      assert.equals(x, r.json.insert_body.x)
      assert.equals(y, r.json.insert_body.y)
      assert.matches('"n":42[,}]', r.body)
      assert.matches('"big":9007199254740993[,}]', r.body)
      assert.equals("float", math.type(r.json.insert_body.f))
    end)

    it("retry a 405 to PUT or DELETE once as POST (and no other 405)", function()
      local gw = new_gw()
      mock:respond {
        { method = "PUT", status = 405, headers = { allow = "POST" }, body = "" },
        { method = "DELETE", status = 405, body = "" },
        { method = "POST", path = "/gateway/update", status = 405, body = "" },
      }
      local ri = gw:insertGateway { table_name = "users", insert_body = { name = "S" } }
      assert.is_true(ri.ok)
      assert.equals("POST", gw.lastRequest.method)
      local rd = gw:deleteGateway { table_name = "users", resource_id = "1" }
      assert.is_true(rd.ok)
      local ru = gw:updateGateway { table_name = "users", update_body = { a = 1 } }
      assert.is_false(ru.ok)
      assert.equals(405, ru.status)
      local rs = mock:requests()
      assert.equals(5, #rs)
      assert.same({ "PUT", "POST", "DELETE", "POST", "POST" },
        { rs[1].method, rs[2].method, rs[3].method, rs[4].method, rs[5].method })
      assert.equals(rs[1].body, rs[2].body)
      assert.equals("/gateway/delete", rs[4].path)
      assert.equals(rs[3].body, rs[4].body)
    end)

    it("deleteGateway raises before sending without resource_id or conditions", function()
      local gw = new_gw()
      raises_einval(gw.deleteGateway, gw, { table_name = "users" })
      raises_einval(gw.deleteGateway, gw, { table_name = "users", conditions = {} })
      raises_einval(gw.deleteGateway, gw, { table_name = "users", resource_id = "" })
      assert.equals(0, mock:stats().count)
      assert.is_false(gw.isLoading)
      assert.is_true(gw:deleteGateway { table_name = "users",
        conditions = { { operator = "eq", column = "id", value = 1 } } }.ok)
      assert.equals(1, mock:stats().count)
    end)
  end)

  ----------------------------------------------------------------- parsing

  describe("results", function()
    it("success: data, count, raw; bare arrays; integers; big integers stay strings", function()
      local gw = new_gw()
      mock:respond {
        J(200, '{"status":"success","message":"Fetched 2 rows","data":[{"id":1,"big":"9007199254740993"},'
          .. '{"id":2}],"count":7}'),
        J(200, '[{"id":5}]'),
      }
      local r = gw:fetchGateway { table_name = "users" }
      assert.is_true(r.ok)
      assert.equals(200, r.status)
      assert.is_nil(r.error)
      assert.equals(2, #r.data)
      assert.equals("integer", math.type(r.data[1].id))
      assert.equals("9007199254740993", r.data[1].big)
      assert.equals(7, r.count)
      assert.is_nil(r.affectedRows)
      assert.equals("Fetched 2 rows", r.raw.message)
      assert.equals(r.data, r.raw.data)
      local b = gw:fetchGateway { table_name = "users" }
      assert.is_true(b.ok)
      assert.same({ { id = 5 } }, b.data)
      assert.equals(b.raw, b.data)
      assert.is_nil(b.count)
    end)

    it("affectedRows: the first of the known keys, top level then in data, else count", function()
      local gw = new_gw()
      local bodies = {
        { '{"data":[],"count":1,"affected_rows":3}', 3 },
        { '{"data":[],"affectedRows":4}', 4 },
        { '{"data":[],"rows_affected":5}', 5 },
        { '{"data":[],"row_count":6}', 6 },
        { '{"data":[],"rowCount":7}', 7 },
        { '{"data":[],"changes":8}', 8 },
        { '{"data":{"changes":9}}', 9 },
        { '{"data":[],"count":2}', 2 },
        { '{"data":[]}', nil },
      }
      local list = {}
      for i, b in ipairs(bodies) do list[i] = J(200, b[1]) end
      mock:respond(list)
      for i, b in ipairs(bodies) do
        local r = gw:updateGateway { table_name = "users", update_body = { a = 1 } }
        assert.equals(b[2], r.affectedRows, "body " .. i)
      end
      mock:respond { J(200, '{"data":[],"affected_rows":1}'), J(200, '{"data":[],"affected_rows":1}') }
      assert.equals(1, gw:insertGateway { table_name = "t", insert_body = { a = 1 } }.affectedRows)
      assert.equals(1, gw:deleteGateway { table_name = "t", resource_id = 1 }.affectedRows)
      mock:respond { J(200, '{"data":[],"affected_rows":1}'), J(200, '[{"id":1}]') }
      assert.is_nil(gw:fetchGateway { table_name = "t" }.affectedRows) -- reads have none
      assert.is_nil(gw:insertGateway { table_name = "t", insert_body = { a = 1 } }.affectedRows) -- a bare array
    end)

    it("non-JSON text stays a string; an empty body is nil", function()
      local gw = new_gw()
      mock:respond {
        { status = 200, headers = { ["content-type"] = "text/plain" }, body = "pong" },
        { status = 204, body = "" },
        { status = 200, body = '  {"data":[1]}' }, -- no type, but it starts with {
      }
      local t = gw:fetchGateway { table_name = "t" }
      assert.is_true(t.ok)
      assert.equals("pong", t.data)
      assert.equals("pong", t.raw)
      local e = gw:fetchGateway { table_name = "t" }
      assert.is_true(e.ok)
      assert.equals(204, e.status)
      assert.is_nil(e.data)
      assert.is_nil(e.raw)
      local j = gw:fetchGateway { table_name = "t" }
      assert.same({ 1 }, j.data)
    end)

    it("invalid JSON on a 2xx is INVALID_JSON; on an error its text is the message", function()
      local gw = new_gw()
      mock:respond { J(200, '{"data":['), J(500, '{"oops') }
      local r = gw:fetchGateway { table_name = "t" }
      assert.is_false(r.ok)
      assert.equals(200, r.status)
      assert.equals("INVALID_JSON", r.error.code)
      assert.equals('{"data":[', r.raw)
      assert.is_nil(r.data)
      local e = gw:fetchGateway { table_name = "t" }
      assert.is_false(e.ok)
      assert.equals("HTTP_ERROR", e.error.code)
      assert.equals('{"oops', e.error.message)
    end)

    it("reads each error envelope shape", function()
      local gw = new_gw()
      mock:respond {
        J(409, '{"error":{"code":"unique_violation","message":"duplicate key","hint":"use upsert",'
          .. '"request_id":"r-1"}}'),
        J(400, '{"status":"error","message":"Update refused","error":"an update needs a condition or resource_id",'
          .. '"code":"unfiltered_update","hint":"add a filter on the key","request_id":"r-2"}'),
        J(401, '{"error":"no key"}', { ["x-request-id"] = "hdr-3" }),
        J(500, '{"message":"only a message"}'),
        J(422, '{"details":"only details"}'),
        { status = 502, headers = { ["content-type"] = "text/html" }, body = "Bad Gateway from the proxy" },
        { status = 503, body = "" },
        J(418, '{"error":""}'),
      }
      local r1 = gw:updateGateway { table_name = "users", update_body = { a = 1 } }
      assert.is_false(r1.ok)
      assert.equals(409, r1.status)
      local e = r1.error
      assert.equals("unique_violation", e.code)
      assert.equals("duplicate key", e.message)
      assert.equals("use upsert", e.hint)
      assert.equals("r-1", e.requestId)
      assert.equals(409, e.status)
      assert.equals("/gateway/update", e.endpoint)
      assert.equals("POST", e.method)
      assert.equals("duplicate key", tostring(e))

      local e2 = gw:updateGateway({ table_name = "users", update_body = { a = 1 } }).error
      assert.equals("unfiltered_update", e2.code)
      assert.equals("Update refused", e2.message)
      assert.equals("an update needs a condition or resource_id", e2.detail)
      assert.equals("add a filter on the key", e2.hint)
      assert.equals("r-2", e2.requestId)
      assert.equals(400, e2.status)

      local e3 = gw:fetchGateway({ table_name = "t" }).error
      assert.equals("HTTP_ERROR", e3.code)
      assert.equals("no key", e3.message)
      assert.equals("hdr-3", e3.requestId)
      assert.equals(401, e3.status)

      assert.equals("only a message", gw:fetchGateway({ table_name = "t" }).error.message)
      assert.equals("only details", gw:fetchGateway({ table_name = "t" }).error.message)
      local e6 = gw:fetchGateway({ table_name = "t" }).error
      assert.equals("Bad Gateway from the proxy", e6.message)
      assert.equals(502, e6.status)
      local r7 = gw:fetchGateway { table_name = "t" }
      assert.equals("Athena gateway POST /gateway/fetch failed with status 503", r7.error.message)
      assert.equals("HTTP_ERROR", r7.error.code)
      local r8 = gw:deleteGateway { table_name = "t", resource_id = 1 }
      assert.equals("Athena gateway DELETE /gateway/delete failed with status 418", r8.error.message)
    end)

    it("keeps nulls as athena.null with stripNulls = false, drops them otherwise", function()
      local body = '{"data":[{"id":3,"email":null,"tags":[1,null]}],"count":null}'
      mock:respond { J(200, body), J(200, body), J(200, '{"data":null}'), J(200, '{"data":null}') }
      local kept = new_gw { stripNulls = false }:fetchGateway { table_name = "users" }
      assert.equals(null, kept.data[1].email)
      assert.equals(null, kept.data[1].tags[2])
      assert.is_nil(kept.count)
      local dropped = new_gw():fetchGateway { table_name = "users" }
      assert.is_nil(dropped.data[1].email)
      assert.equals(3, dropped.data[1].id)
      assert.is_nil(dropped.count)
      assert.equals(null, new_gw { stripNulls = false }:fetchGateway { table_name = "users" }.data)
      assert.is_nil(new_gw():fetchGateway { table_name = "users" }.data)
    end)
  end)

  -------------------------------------------------------- network failures

  describe("network failures", function()
    it("a refused connection: status 0, NETWORK_ERROR, no raise", function()
      local port = mock:freeport()
      local gw = gateway.new { baseUrl = "http://127.0.0.1:" .. port, apiKey = KEY }
      local r = gw:fetchGateway { table_name = "users" }
      assert.is_false(r.ok)
      assert.equals(0, r.status)
      assert.equals("NETWORK_ERROR", r.error.code)
      assert.equals("ECONNREFUSED", r.error.cause)
      assert.equals(0, r.error.status)
      assert.equals(r.error, gw.error)
      assert.is_false(gw.isLoading)
    end)

    it("a dropped connection: NETWORK_ERROR", function()
      mock:respond { { close = true } }
      local r = new_gw():fetchGateway { table_name = "users" }
      assert.is_false(r.ok)
      assert.equals(0, r.status)
      assert.equals("NETWORK_ERROR", r.error.code)
    end)

    it("a response slower than timeout: ETIMEDOUT, ok = false, within the deadline", function()
      mock:respond { { status = 200, body = "{}", delay = 3000 }, { status = 200, body = "{}", delay = 3000 } }
      local gw = new_gw { timeout = 300 }
      local t0 = athena.now()
      local r = gw:fetchGateway { table_name = "users" }
      local took = ms_since(t0)
      assert.is_false(r.ok)
      assert.equals(0, r.status)
      assert.equals("ETIMEDOUT", r.error.code)
      assert.is_true(took >= 250 and took < 2000, "took " .. took .. " ms")
      -- a per-call timeout; a mutation's message warns it may have committed
      t0 = athena.now()
      local m = new_gw():updateGateway({ table_name = "users", update_body = { a = 1 } }, { timeout = "200ms" })
      took = ms_since(t0)
      assert.equals("ETIMEDOUT", m.error.code)
      assert.matches("may still have committed", m.error.message)
      assert.is_true(took < 2000, "took " .. took .. " ms")
    end)

    it("TLS to a self-signed certificate fails cleanly (no CA option in GATEWAY.md)", function()
      local mk = assert(io.popen("mktemp -d"))
      local dir = mk:read("l")
      mk:close()
      assert.truthy(dir and dir ~= "", "a temp dir")
      local tls
      finally(function()
        if tls then tls:stop() end
        os.execute("rm -rf " .. sh_quote(dir))
      end)
      local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
      local ok = os.execute(("env -u LD_PRELOAD openssl req -x509 -newkey rsa:2048 -nodes -days 1 "
        .. "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s >/dev/null 2>&1")
        :format(sh_quote(key), sh_quote(cert)))
      assert.is_true(ok, "openssl generated a certificate")
      tls = start_mock("--https " .. sh_quote(cert) .. " " .. sh_quote(key))
      local gw = gateway.new { baseUrl = "https://127.0.0.1:" .. tls.port, apiKey = KEY }
      local r = gw:fetchGateway { table_name = "users" }
      assert.is_false(r.ok)
      assert.equals(0, r.status)
      assert.equals("NETWORK_ERROR", r.error.code)
      assert.equals("ETLS", r.error.cause)
      -- the handshake reached the server and the client broke it off; no request got through
      local st
      local deadline = athena.now() + 3000
      repeat
        st = tls:stats()
        if st.tlsErrors > 0 then break end
        athena.sleep(20)
      until athena.now() > deadline
      assert.is_true(st.tlsErrors >= 1, "the server saw the refused handshake")
      assert.equals(0, st.count)
    end)
  end)

  ------------------------------------------------------------------- retry

  describe("retry", function()
    local quick = { maxAttempts = 3, backoff = "constant", initialInterval = 10 }

    it("retries reads on 429, waiting at least Retry-After", function()
      mock:respond { J(429, '{"code":"rate_limited","error":"slow down"}', { ["retry-after"] = "1" }) }
      local gw = new_gw { retry = quick }
      local t0 = athena.now()
      local r = gw:fetchGateway { table_name = "users" }
      local took = ms_since(t0)
      assert.is_true(r.ok)
      local rs = mock:requests()
      assert.equals(2, #rs)
      assert.is_true(rs[2].t - rs[1].t >= 950, "waited " .. (rs[2].t - rs[1].t) .. " ms")
      assert.is_true(took < 5000)
    end)

    it("retries reads on 5xx and on status 0, and gives back the last result", function()
      mock:respond { J(503, '{"error":"down"}'), J(500, '{"error":"boom"}') }
      local r = new_gw { retry = { maxAttempts = 5, backoff = "constant", initialInterval = 10 } }
        :fetchGateway { table_name = "users" }
      assert.is_true(r.ok)
      assert.equals(3, #mock:requests())

      mock:reset()
      mock:respond { J(502, '{"error":"a"}'), J(502, '{"error":"b"}'), J(502, '{"error":"c"}') }
      local last = new_gw { retry = quick }:fetchGateway { table_name = "users" }
      assert.is_false(last.ok)
      assert.equals("c", last.error.message)
      assert.equals(3, #mock:requests())

      local retries = 0
      local port = mock:freeport()
      local gw = gateway.new { baseUrl = "http://127.0.0.1:" .. port, retry = {
        maxAttempts = 3, backoff = "constant", initialInterval = 10,
        onRetry = function() retries = retries + 1 end,
      } }
      local r0 = gw:fetchGateway { table_name = "users" }
      assert.equals(0, r0.status)
      assert.equals("NETWORK_ERROR", r0.error.code)
      assert.equals(2, retries)
    end)

    it("reads Retry-After as an HTTP date too", function()
      local at = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
      mock:respond { J(503, '{"error":"maintenance"}', { ["retry-after"] = at }) }
      local r = new_gw { retry = quick }:fetchGateway { table_name = "users" }
      assert.is_true(r.ok)
      local rs = mock:requests()
      assert.equals(2, #rs)
      assert.is_true(rs[2].t - rs[1].t >= 950, "waited " .. (rs[2].t - rs[1].t) .. " ms")
    end)

    it("retry = true uses retryPatterns.api", function()
      mock:respond { J(503, '{"error":"down"}', { ["retry-after"] = "0" }) }
      local t0 = athena.now()
      local r = new_gw { retry = true }:fetchGateway { table_name = "users" }
      assert.is_true(r.ok)
      assert.equals(2, #mock:requests())
      assert.is_true(ms_since(t0) >= 900, "the api pattern waits ~1 s first")
    end)

    it("does not retry other errors, nor any mutation", function()
      local gw = new_gw { retry = quick }
      mock:respond { J(400, '{"error":"bad"}') }
      assert.equals(400, gw:fetchGateway({ table_name = "t" }).status)
      assert.equals(1, #mock:requests())
      mock:reset()
      mock:respond {
        J(503, '{"error":"x"}'), J(429, '{"error":"x"}', { ["retry-after"] = "0" }), J(500, '{"error":"x"}'),
        { close = true },
      }
      assert.equals(503, gw:insertGateway({ table_name = "t", insert_body = { a = 1 } }).status)
      assert.equals(429, gw:updateGateway({ table_name = "t", update_body = { a = 1 } }).status)
      assert.equals(500, gw:deleteGateway({ table_name = "t", resource_id = 1 }).status)
      assert.equals(0, gw:insertGateway({ table_name = "t", insert_body = { a = 1 } }, { retry = true }).status)
      assert.equals(4, #mock:requests())
    end)
  end)

  ------------------------------------------------------------------- state

  describe("state", function()
    it("isLoading, error, lastRequest (keys masked), lastResponse, baseUrl", function()
      local gw = new_gw { supabaseKey = "sb-secret-9876", headers = { Cookie = "session=abcdef" } }
      assert.is_false(gw.isLoading)
      assert.is_nil(gw.error)
      assert.equals(mock.url, gw.baseUrl)
      mock:respond { J(500, '{"error":"boom"}') }
      local bad = gw:fetchGateway { table_name = "users", limit = 5 }
      assert.is_false(gw.isLoading)
      assert.equals(bad.error, gw.error)
      assert.equals("boom", tostring(gw.error))
      local lr = gw.lastRequest
      assert.equals("/gateway/fetch", lr.endpoint)
      assert.equals("POST", lr.method)
      assert.equals("users", lr.payload.table_name)
      assert.equals(5, lr.payload.limit)
      assert.equals("****1234", lr.headers["X-Athena-Key"])
      assert.equals("****1234", lr.headers.apikey)
      assert.equals("****1234", lr.headers["x-api-key"])
      assert.equals("Bearer ****1234", lr.headers.Authorization)
      assert.equals("****9876", lr.headers["x-supabase-key"])
      assert.equals("****cdef", lr.headers.Cookie)
      assert.equals("true", lr.headers["X-Strip-Nulls"])
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", lr.timestamp)
      local resp = gw.lastResponse
      assert.is_false(resp.ok)
      assert.equals(500, resp.status)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", resp.timestamp)
      -- the timestamp is now, in UTC
      local y, mo, d, h, mi, s = resp.timestamp:match("^(%d+)%-(%d+)%-(%d+)T(%d+):(%d+):(%d+)")
      local now = os.date("!*t")
      local diff = os.time { year = now.year, month = now.month, day = now.day, hour = now.hour, min = now.min,
        sec = now.sec }
        - os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
          min = tonumber(mi), sec = tonumber(s) }
      assert.is_true(math.abs(diff) <= 5, "timestamp off by " .. diff .. " s")
      -- the next call clears the error
      local good = gw:insertGateway { table_name = "users", insert_body = { a = 1 } }
      assert.is_true(good.ok)
      assert.is_nil(gw.error)
      assert.equals("/gateway/insert", gw.lastRequest.endpoint)
      assert.equals("PUT", gw.lastRequest.method)
      assert.is_true(gw.lastResponse.ok)
      -- the real key went out
      assert.equals(KEY, mock:requests()[2].headers["x-athena-key"])
    end)
  end)

  ----------------------------------------------------------------- builder

  describe("createClient builder", function()
    local function db(opts)
      return gateway.createClient(mock.url, KEY, opts)
    end

    it("select sends the fetch payload and returns {data, error, count, status, raw}", function()
      mock:respond { J(200, '{"status":"success","data":[{"id":2,"name":"Bilbo"}],"count":null}') }
      local r = db():from("users"):eq("name", "Bilbo"):select("id, name")
      assert.is_nil(r.error)
      assert.same({ { id = 2, name = "Bilbo" } }, r.data)
      assert.equals(200, r.status)
      assert.is_nil(r.count)
      assert.equals("success", r.raw.status)
      local q = mock:only_request()
      assert.equals("POST", q.method)
      assert.equals("/gateway/fetch", q.path)
      assert.equals(KEY, q.headers["x-athena-key"])
      assert.same({ table_name = "users", columns = "id, name", strip_nulls = true, conditions = {
        { operator = "eq", column = "name", value = "Bilbo", eq_column = "name", eq_value = "Bilbo" },
      } }, q.json)
      -- no columns: "*"
      db():from("users"):select()
      assert.equals("*", mock:requests()[2].json.columns)
    end)

    it("sends each filter as a condition", function()
      local q = db():from("users")
      q:neq("a", 1):gt("b", 2):gte("c", 3):lt("d", 4):lte("e", 5):like("f", "B%"):ilike("g", "b%")
        :is("h", nil):is("i", true)["in"](q, "j", { 1, 2 })
      q:in_("k", {}):contains("l", { "x" }):containedBy("m", { "x", "y" })
        ["not"](q, "id", "in", { 1, 2 })
      q:not_("name", "eq", "a,b"):or_("age.gt.100,and(active.is.false,email.is.null)")
        :match { z = "zz", y = 1 }
      q:select("id")
      local r = mock:only_request()
      local c = r.json.conditions
      local want = {
        { operator = "neq", column = "a", value = 1 },
        { operator = "gt", column = "b", value = 2 },
        { operator = "gte", column = "c", value = 3 },
        { operator = "lt", column = "d", value = 4 },
        { operator = "lte", column = "e", value = 5 },
        { operator = "like", column = "f", value = "B%" },
        { operator = "ilike", column = "g", value = "b%" },
        { operator = "is", column = "h", value = null },
        { operator = "is", column = "i", value = true },
        { operator = "in", column = "j", value = { 1, 2 } },
        { operator = "in", column = "k", value = {} },
        { operator = "contains", column = "l", value = { "x" } },
        { operator = "containedBy", column = "m", value = { "x", "y" } },
        { operator = "not", value = "id.in.(1,2)" },
        { operator = "not", value = 'name.eq."a,b"' },
        { operator = "or", value = "age.gt.100,and(active.is.false,email.is.null)" },
        { operator = "eq", column = "y", value = 1, eq_column = "y", eq_value = 1 },
        { operator = "eq", column = "z", value = "zz", eq_column = "z", eq_value = "zz" },
      }
      assert.equals(#want, #c)
      for i, w in ipairs(want) do assert.same(w, c[i], "condition " .. i) end
      assert.matches('{"column":"k","operator":"in","value":%[%]}', r.body)
    end)

    it("limit, offset, range and order", function()
      db():from("users"):order("id", { ascending = false }):limit(10):offset(20):select()
      db():from("users"):order("age"):order("id", { ascending = false }):range(10, 19):select("id")
      local rs = mock:requests()
      assert.same({ field = "id", direction = "descending" }, rs[1].json.sort_by)
      assert.equals(10, rs[1].json.limit)
      assert.equals(20, rs[1].json.offset)
      assert.same({ { field = "age", direction = "ascending" }, { field = "id", direction = "descending" } },
        rs[2].json.sort_by)
      assert.equals(10, rs[2].json.offset)
      assert.equals(10, rs[2].json.limit)
      raises_einval(function() db():from("users"):range(5, 4) end)
      raises_einval(function() db():from("users"):limit(-1) end)
      assert.is_false(pcall(function() db():from("users"):limit("ten") end))
    end)

    it("select with count and head", function()
      mock:respond { J(200, '{"data":[],"count":3}') }
      local r = db():from("users"):eq("active", true):select("*", { count = "exact", head = true })
      assert.equals(3, r.count)
      local q = mock:only_request().json
      assert.equals("exact", q.count)
      assert.is_true(q.head)
      raises_einval(function() db():from("users"):select("*", { counted = true }) end)
    end)

    it("single: exactly one row, else an error; maybeSingle: zero or one", function()
      local one, none = J(200, '{"data":[{"id":1}]}'), J(200, '{"data":[]}')
      local two = J(200, '{"data":[{"id":1},{"id":2}]}')
      mock:respond { one, none, two, one, none, two }
      local q = db():from("users"):eq("id", 1)
      local s1 = q:single("id")
      assert.same({ id = 1 }, s1.data)
      assert.is_nil(s1.error)
      local s0 = db():from("users"):single()
      assert.is_nil(s0.data)
      assert.equals("PGRST116", s0.error.code)
      local s2 = db():from("users"):single()
      assert.is_nil(s2.data)
      assert.equals("PGRST116", s2.error.code)
      assert.matches("2 rows", s2.error.detail)
      local m1 = db():from("users"):maybeSingle()
      assert.same({ id = 1 }, m1.data)
      local m0 = db():from("users"):maybeSingle()
      assert.is_nil(m0.data)
      assert.is_nil(m0.error)
      local m2 = db():from("users"):maybeSingle()
      assert.equals("PGRST116", m2.error.code)
      local rs = mock:requests()
      assert.equals(6, #rs)
      assert.equals(2, rs[1].json.limit)
      assert.equals("id", rs[1].json.columns)
      -- a smaller limit of the query stays
      db():from("users"):limit(1):single()
      assert.equals(1, mock:requests()[7].json.limit)
    end)

    it("insert and upsert", function()
      mock:respond { J(200, '{"data":[{"id":10,"name":"Sam"}],"count":1,"affected_rows":1}') }
      local r = db():from("users"):insert { id = 10, name = "Sam" }
      assert.same({ { id = 10, name = "Sam" } }, r.data)
      assert.equals(1, r.affectedRows)
      assert.equals(1, r.count)
      db():from("users"):insert({ { name = "A" }, { name = "B" } }, { returning = "minimal", defaultToNull = true })
      db():from("users"):insert({})
      db():from("users"):upsert({ id = 10, name = "Sam G" }, { onConflict = "id" })
      db():from("users"):upsert({ { id = 10, name = "X" } }, { onConflict = { "id" }, updateBody = { name = "Rohan" } })
      db():from("users"):upsert({ id = 10 }, { onConflict = "id", ignoreDuplicates = true, returning = "id, name" })
      db { returning = "id" }:from("users"):insert { name = "C" }
      local rs = mock:requests()
      assert.equals(7, #rs)
      for i = 1, 7 do
        assert.equals("PUT", rs[i].method)
        assert.equals("/gateway/insert", rs[i].path)
        assert.is_nil(rs[i].json.conditions)
      end
      assert.same({ table_name = "users", insert_body = { id = 10, name = "Sam" }, columns = "*" }, rs[1].json)
      assert.same({ table_name = "users", insert_body = { { name = "A" }, { name = "B" } }, default_to_null = true },
        rs[2].json)
      assert.matches('"insert_body":%[%]', rs[3].body)
      assert.same({ table_name = "users", insert_body = { id = 10, name = "Sam G" }, columns = "*",
        on_conflict = "id" }, rs[4].json)
      assert.same({ "id" }, rs[5].json.on_conflict)
      assert.same({ name = "Rohan" }, rs[5].json.update_body)
      assert.matches('"update_body":{}', rs[6].body)
      assert.equals("id, name", rs[6].json.columns)
      assert.equals("id", rs[7].json.columns)
    end)

    it("update sends the filters, bounds and strip_nulls", function()
      mock:respond { J(200, '{"data":[{"id":10,"name":"Samwise"}],"count":1,"affected_rows":1}') }
      local r = db():from("users"):eq("id", 10):update({ name = "Samwise" }, { returning = "id, name" })
      assert.equals(1, r.affectedRows)
      assert.same({ { id = 10, name = "Samwise" } }, r.data)
      db():from("users"):eq("active", true):order("id"):limit(1):update { name = "X" }
      local rs = mock:requests()
      assert.equals("POST", rs[1].method)
      assert.equals("/gateway/update", rs[1].path)
      assert.same({ table_name = "users", update_body = { name = "Samwise" }, columns = "id, name", strip_nulls = true,
        conditions = { { operator = "eq", column = "id", value = 10, eq_column = "id", eq_value = 10 } } }, rs[1].json)
      assert.same({ field = "id", direction = "ascending" }, rs[2].json.sort_by)
      assert.equals(1, rs[2].json.limit)
      assert.equals("*", rs[2].json.columns)
    end)

    it("delete: resource_id from resourceId or an eq on id; raises with neither it nor a filter", function()
      mock:respond { J(200, '{"data":[{"id":10}],"count":1,"affected_rows":1}') }
      local r = db():from("users"):eq("id", 10):delete()
      assert.equals(1, r.affectedRows)
      db():from("users"):delete { resourceId = 5 }
      db():from("users"):eq("status", "gone"):delete()
      local rs = mock:requests()
      assert.equals("DELETE", rs[1].method)
      assert.equals("/gateway/delete", rs[1].path)
      assert.same({ table_name = "users", resource_id = "10", columns = "*",
        conditions = { { operator = "eq", column = "id", value = 10, eq_column = "id", eq_value = 10 } } }, rs[1].json)
      assert.equals("5", rs[2].json.resource_id)
      assert.matches('"conditions":%[%]', rs[2].body)
      assert.is_nil(rs[3].json.resource_id)
      assert.equals("status", rs[3].json.conditions[1].column)
      mock:reset()
      raises_einval(function() db():from("users"):delete() end)
      raises_einval(function() db():from("users"):delete {} end)
      assert.equals(0, mock:stats().count)
    end)

    it("errors come back with data nil; reads retry, mutations do not", function()
      mock:respond { J(503, '{"error":"down"}'), J(503, '{"error":"down"}') }
      local c = db { retry = { maxAttempts = 2, backoff = "constant", initialInterval = 10 } }
      local r = c:from("users"):select()
      assert.is_nil(r.data)
      assert.equals(503, r.status)
      assert.equals("down", r.error.message)
      assert.equals(2, #mock:requests())
      mock:reset()
      mock:respond { J(503, '{"error":"down"}') }
      local u = c:from("users"):eq("id", 1):update { a = 1 }
      assert.equals(503, u.status)
      assert.equals(1, #mock:requests())
      assert.equals(u.error, c.gateway.error)
    end)

    it("rejects bad arguments", function()
      local c = db()
      assert.is_false(pcall(c.from, c, ""))
      assert.is_false(pcall(c.from, c, nil))
      assert.is_false(pcall(function() c:from("t"):eq(nil, 1) end))
      assert.is_false(pcall(function() c:from("t")["in"](c:from("t"), "id", 5) end))
      assert.is_false(pcall(function() c:from("t"):insert("row") end))
      raises_einval(function() c:from("t"):insert({ a = 1 }, { returning = 5 }) end)
      raises_einval(gateway.createClient, "nope", KEY)
      assert.equals(0, mock:stats().count)
    end)
  end)

  -------------------------------------------------------------- in tasks

  describe("inside tasks", function()
    local jobs = require "fixtures.gw_jobs"
    local world

    local function started()
      world = athena.World.new {
        modules = { "fixtures.gw_jobs" }, persistence = "memory", minWorkers = 2, maxWorkers = 2,
        taskQueues = { default = { concurrency = 50 }, solo = { workers = 1, concurrency = 50 } },
      }
      world:register(table.unpack(jobs.all()))
      world:start()
      return world
    end

    after_each(function()
      if world then
        pcall(world.shutdown, world)
        world = nil
      end
    end)

    it("1,000 calls from 100 tasks on 2 workers all complete", function()
      local w = started()
      local inputs = {}
      for i = 1, 100 do inputs[i] = { url = mock.url, n = 10, tag = "t" .. i } end
      local hs = w:executeMany("gw_calls", inputs)
      for _, h in ipairs(hs) do
        local r, err = h:result(45000)
        assert.is_nil(err)
        assert.equals(10, r.ok)
      end
      local rs = mock:requests()
      assert.equals(1000, #rs)
      local per = {}
      for _, r in ipairs(rs) do
        assert.equals("task-key-0001", r.headers["x-athena-key"])
        assert.equals("main", r.headers["x-athena-client"])
        local tag = r.json.conditions[1].value
        per[tag] = (per[tag] or 0) + 1
      end
      for i = 1, 100 do assert.equals(10, per["t" .. i]) end
      local done = {}
      for _, wk in ipairs(w:getWorkers()) do
        if wk.taskQueue == "default" then done[#done + 1] = wk.tasksCompleted end
      end
      assert.equals(2, #done)
      assert.equals(100, done[1] + done[2])
      assert.is_true(done[1] > 0 and done[2] > 0, "both workers ran tasks")
    end)

    it("one worker holds many calls in flight: 50 calls of 200 ms finish in well under 50 x 200 ms", function()
      local w = started()
      mock:respond(nil, { status = 200, headers = { ["content-type"] = "application/json" },
        body = '{"data":[],"count":null}', delay = 200 })
      local inputs = {}
      for i = 1, 50 do inputs[i] = { url = mock.url, tag = "s" .. i } end
      local t0 = athena.now()
      local hs = w:executeMany("gw_one", inputs, { taskQueue = "solo" })
      local worker
      for _, h in ipairs(hs) do
        local r, err = h:result(20000)
        assert.is_nil(err)
        assert.is_true(r.ok, r.error)
        local wid = h:query().workerId
        worker = worker or wid
        assert.equals(worker, wid, "all on one worker")
      end
      local took = ms_since(t0)
      assert.is_true(took < 2500, "50 x 200 ms calls took " .. took .. " ms")
      assert.equals(50, mock:stats().count)
      assert.is_true(mock:stats().maxInFlight >= 25, "in flight at once: " .. mock:stats().maxInFlight)
    end)

    it("isLoading is true while another task's call is in flight", function()
      local w = started()
      mock:respond({ { status = 200, body = '{"data":[]}', delay = 800 } })
      local slow = w:execute("gw_one", { url = mock.url, tag = "slow" }, { taskQueue = "solo" })
      local probe = w:execute("gw_probe", { url = mock.url, ms = 300 }, { taskQueue = "solo" })
      local p = assert(probe:result(10000))
      assert.is_true(p.loading)
      assert.is_true(assert(slow:result(10000)).ok)
      local after = w:execute("gw_probe", { url = mock.url, ms = 1 }, { taskQueue = "solo" })
      assert.is_false(assert(after:result(10000)).loading)
    end)
  end)
end)
