-- W6 at a fixed pace: the same PATCH as w6_patch.lua, but each connection waits
-- 1000 * CONNS / RATE ms before each request (RATE, default 1000, requests a second in
-- all; CONNS as given to wrk, default 32), so that the machine is not saturated and the
-- CPU used per request (ab.sh's CPU columns over the requests served) is not skewed by
-- contention. Not one of the standard workloads: `ONLY=w6p`.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W6_paced")
local base, hdrs, k
local pause = 1000 * tonumber(os.getenv("CONNS") or "32") / tonumber(os.getenv("RATE") or "1000")
function init(args)
  base = C.records_path() .. "/"
  hdrs = C.headers(true)
  k = math.random(0, C.n_records - 1)
end
function delay()
  return pause
end
function request()
  k = k + 1
  local body = '{"data":{"counter":' .. k .. '}}'
  return wrk.format("PATCH", base .. C.record_id(k % C.n_records), hdrs, body)
end
