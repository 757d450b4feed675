-- The gateway server (GATEWAY.md) on PostgreSQL: the same checklist as
-- gateway_server_spec.lua against the ctest fixture "pg" (scripts/pg-test),
-- in a database of its own so that other specs' tables never meet it. No
-- server means this spec fails: it never skips.
local athena = require "athena"
local S = require "fixtures.support"
local url_file = os.getenv("ATHENA_PG_URL_FILE")
local URL = url_file and S.readfile(url_file)
assert(URL, "no PostgreSQL URL in ATHENA_PG_URL_FILE (" .. tostring(url_file) .. "): run through ctest (fixture pg)")
URL = URL:gsub("%s+$", "")
-- one database per run mode: ctest runs the normal and the gc run at once
local name = "athena_gateway_spec_" .. (os.getenv("ATHENA_TEST_GC") or "normal")
local admin = assert(athena.db.open(URL))
assert(admin:exec("DROP DATABASE IF EXISTS " .. name))
assert(admin:exec("CREATE DATABASE " .. name))
admin:close()
local OWN = URL:gsub("/[^/?]+$", "/" .. name)
require("fixtures.gws_checklist").run("pg", OWN, _ENV, OWN)
