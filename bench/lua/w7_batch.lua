-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- W7: POST {prefix}/batch with 25 record creations (POST, server-generated ids).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = dir .. "?.lua;" .. package.path
local C = require("common")
C.install_reporting("W7_batch25", { batch = true })
local req
function init(args)
  local path = "/buckets/" .. C.bucket .. "/collections/" .. C.collection .. "/records"
  local parts = {}
  for i = 1, 25 do parts[i] = '{"body":{"data":' .. C.record_json(900000 + i) .. '}}' end
  local body = '{"defaults":{"method":"POST","path":"' .. path .. '"},"requests":['
    .. table.concat(parts, ",") .. ']}'
  req = wrk.format("POST", C.prefix() .. "/batch", C.headers(true), body)
end
function request() return req end
