-- The gateway server (GATEWAY.md) on PostgreSQL: the same checklist as
-- gateway_server_spec.lua against the ctest fixture "pg" (scripts/pg-test),
-- in a database of its own. No server means this spec fails: it never skips.
local S = require "fixtures.support"
local URL = S.pg_database("athena_gateway_spec")
require("fixtures.gws_checklist").run("pg", URL, _ENV, URL)
