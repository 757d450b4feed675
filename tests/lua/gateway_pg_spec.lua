-- The gateway server (GATEWAY.md) on PostgreSQL: the same checklist as
-- gateway_server_spec.lua against the ctest fixture "pg" (scripts/pg-test).
-- No server means this spec fails: it never skips.
local S = require "fixtures.support"
local url_file = os.getenv("ATHENA_PG_URL_FILE")
local URL = url_file and S.readfile(url_file)
assert(URL, "no PostgreSQL URL in ATHENA_PG_URL_FILE (" .. tostring(url_file) .. "): run through ctest (fixture pg)")
URL = URL:gsub("%s+$", "")
require("fixtures.gws_checklist").run("pg", URL, _ENV, URL)
