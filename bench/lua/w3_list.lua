-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- W3: list one page of 100 records (default sort -last_modified) on the seeded collection.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W3_list100")
local req
function init(args)
  req = wrk.format("GET", C.records_path() .. "?_limit=100", C.headers(false))
end
function request() return req end
