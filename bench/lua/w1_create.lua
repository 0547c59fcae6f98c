-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- W1: create a record. POST {prefix}/buckets/b/collections/c/records, ~300-byte JSON body.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W1_create")
local req
function init(args)
  local body = '{"data":' .. C.record_json(424242) .. '}'
  req = wrk.format("POST", C.records_path(), C.headers(true), body)
end
function request() return req end
