-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- W2: read one record by id (random over the N_RECORDS pre-seeded ids r000000..).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W2_get_one")
local base, hdrs
function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
  base = C.records_path() .. "/"
  hdrs = C.headers(false)
end
function request()
  return wrk.format("GET", base .. C.record_id(math.random(0, C.n_records - 1)), hdrs)
end
