-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- W4: sync. GET records?_since=SINCE (run.sh picks SINCE so that ~50 records are newer).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W4_since50")
local req
function init(args)
  local since = os.getenv("SINCE") or error("SINCE env var is required")
  req = wrk.format("GET", C.records_path() .. "?_since=" .. since, C.headers(false))
end
function request() return req end
