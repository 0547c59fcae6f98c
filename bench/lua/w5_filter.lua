-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- W5: filtered + sorted page. GET records?in_status=a,b&_limit=50&_sort=-last_modified
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W5_filter")
local req
function init(args)
  req = wrk.format("GET", C.records_path() .. "?in_status=a,b&_limit=50&_sort=-last_modified",
    C.headers(false))
end
function request() return req end
