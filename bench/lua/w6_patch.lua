-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- W6: PATCH (merge) one field of a pre-seeded record, rotating sequentially over the ids.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W6_patch")
local base, hdrs, k
function init(args)
  base = C.records_path() .. "/"
  hdrs = C.headers(true)
  k = math.random(0, C.n_records - 1)
end
function request()
  k = k + 1
  local body = '{"data":{"counter":' .. k .. '}}'
  return wrk.format("PATCH", base .. C.record_id(k % C.n_records), hdrs, body)
end
