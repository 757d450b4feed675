-- wrk script for bench/gateway.sh (LuaJIT, wrk 4.x):
--   wrk -s bench/gateway.lua http://127.0.0.1:P/healthz -- get
--   wrk -s bench/gateway.lua http://127.0.0.1:P -- fetch CATS KEY
--   wrk -s bench/gateway.lua http://127.0.0.1:P -- mix CATS KEY INSERT_PERCENT
--   wrk -s bench/gateway.lua http://127.0.0.1:P -- fetch CATS KEY 0 LIMIT
-- get: GET of the URL's path. fetch: POST /gateway/fetch of the 25 rows of a
-- random `cat` (indexed), or of its first LIMIT rows. mix: INSERT_PERCENT %
-- PUT /gateway/insert, the rest fetches (100 = inserts only). Every run goes
-- through request() and response(), so wrk's own cost is alike across runs.
--
-- response() checks each answer: a fetch counts as good only if it is a 200
-- whose envelope says "Fetched 25 rows" (LIMIT rows), an insert only if it is
-- a 200 saying "Inserted 1 rows". Inserts carry an `x-request-id: ins-N` (the
-- server echoes it, GATEWAY §1) so that answers can be told apart; fetches
-- carry none, so the server generates their ids as it would for a real client.
-- done() prints one line `RESULT k=v ...` that gateway.sh parses.

local threads = {}
local nthreads = 0

function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
  threads[nthreads] = thread
end

local mode, cats, pct, limit, fetched, plain, fetch_headers, insert_headers
local n = 0

function init(args)
  mode = args[1] or "get"
  cats = tonumber(args[2]) or 4000
  local key = args[3] or "K"
  pct = tonumber(args[4]) or 0
  limit = tonumber(args[5]) or 25
  fetched = '"Fetched ' .. limit .. ' rows"'
  math.randomseed(os.time() * 100 + (tid or 0))
  -- counters, read by done() through thread:get
  get_ok, get_bad = 0, 0
  fetch_ok, fetch_non200, fetch_wrong = 0, 0, 0
  insert_ok, insert_non200, insert_wrong = 0, 0, 0
  statuses = {}
  if mode == "get" then
    plain = wrk.format("GET", wrk.path)
  else
    fetch_headers = { ["Host"] = wrk.host, ["apikey"] = key, ["Content-Type"] = "application/json" }
    insert_headers = { ["Host"] = wrk.host, ["apikey"] = key, ["Content-Type"] = "application/json" }
  end
end

function request()
  if mode == "get" then return plain end
  n = n + 1
  local cat = math.random(0, cats - 1)
  if mode == "mix" and (pct >= 100 or (n % 100) < pct) then
    insert_headers["x-request-id"] = "ins-" .. tid .. "-" .. n
    return wrk.format("PUT", "/gateway/insert", insert_headers,
      '{"table_name":"items","insert_body":{"cat":' .. cat .. ',"name":"bench ' .. n .. '","price":1.5}}')
  end
  return wrk.format("POST", "/gateway/fetch", fetch_headers,
    '{"table_name":"items","conditions":[{"operator":"eq","column":"cat","value":' .. cat .. '}],"limit":' .. limit .. '}')
end

local find = string.find

function response(status, headers, body)
  if status ~= 200 then statuses[status] = (statuses[status] or 0) + 1 end
  if mode == "get" then
    if status == 200 then get_ok = get_ok + 1 else get_bad = get_bad + 1 end
    return
  end
  local id = headers["x-request-id"]
  if id and find(id, "^ins%-") then
    if status ~= 200 then insert_non200 = insert_non200 + 1
    elseif find(body, '"Inserted 1 rows"', 1, true) then insert_ok = insert_ok + 1
    else insert_wrong = insert_wrong + 1 end
  else
    if status ~= 200 then fetch_non200 = fetch_non200 + 1
    elseif find(body, fetched, 1, true) then fetch_ok = fetch_ok + 1
    else fetch_wrong = fetch_wrong + 1 end
  end
end

function done(summary, latency, requests)
  local names = { "get_ok", "get_bad", "fetch_ok", "fetch_non200", "fetch_wrong",
    "insert_ok", "insert_non200", "insert_wrong" }
  local total, codes = {}, {}
  for _, name in ipairs(names) do total[name] = 0 end
  for _, t in ipairs(threads) do
    for _, name in ipairs(names) do total[name] = total[name] + (t:get(name) or 0) end
    for code, c in pairs(t:get("statuses") or {}) do codes[code] = (codes[code] or 0) + c end
  end
  local cl = {}
  for code, c in pairs(codes) do cl[#cl + 1] = code .. ":" .. c end
  table.sort(cl)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local out = {
    "RESULT",
    ("requests=%d"):format(summary.requests),
    ("seconds=%.2f"):format(secs),
    ("rps=%.0f"):format(summary.requests / secs),
    ("p50_ms=%.2f"):format(latency:percentile(50) / 1000),
    ("p90_ms=%.2f"):format(latency:percentile(90) / 1000),
    ("p99_ms=%.2f"):format(latency:percentile(99) / 1000),
    ("max_ms=%.2f"):format(latency.max / 1000),
    ("sock_errors=%d"):format(e.connect + e.read + e.write + e.timeout),
  }
  for _, name in ipairs(names) do out[#out + 1] = name .. "=" .. total[name] end
  out[#out + 1] = "statuses=" .. (#cl > 0 and table.concat(cl, ",") or "-")
  io.write(table.concat(out, " "), "\n")
end
