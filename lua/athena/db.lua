-- athena.db: database connections (bindings/l_db.c, engine/db/db.h). This
-- half adds conn:transaction, which needs pcall and a to-be-closed guard.
local core = require "athena.core"

local M = {}
local methods = core.db.methods

M.open = core.db.open
M.check = core.db.check

--- conn:transaction(fn) -> fn's results | nil, err
-- BEGIN (a SAVEPOINT when nested), fn(conn), then COMMIT (RELEASE). When fn
-- returns nil, err the transaction rolls back and nil, err is returned;
-- when fn raises it rolls back and the error is raised again. A failed
-- BEGIN or COMMIT returns nil, err. If fn's task is stopped (timeout,
-- cancel) the guard rolls back as the coroutine closes.
function methods.transaction(self, fn)
  if type(fn) ~= "function" then
    error(string.format("bad argument #1 to 'transaction' (function expected, got %s)", type(fn)), 2)
  end
  local guard, err = self:_begin()
  if guard == nil then return nil, err end
  local tx <close> = guard
  local r = table.pack(pcall(fn, self))
  if not r[1] then
    self:_end(guard, false)
    error(r[2], 0)
  end
  if r[2] == nil and r[3] ~= nil then
    self:_end(guard, false)
    return nil, r[3]
  end
  local ok, cerr = self:_end(guard, true)
  if not ok then return nil, cerr end
  return table.unpack(r, 2, r.n)
end

return M
