-- From ../shared/bench/lua (Kinto HTTP API benchmark kit), unchanged.
-- Shared helpers for the Kinto HTTP API (v1) workloads.
-- Every workload script does:
--   package.path = <dir of this file>/?.lua;...  local C = require("common")
-- Parameters come from the environment (run.sh sets them):
--   AUTH        "user:password" for HTTP Basic auth      (default bench:bench)
--   BUCKET      bucket id                                  (default b)
--   COLLECTION  collection id                              (default c)
--   N_RECORDS   number of pre-seeded records r000000..     (default 10000)
--   SINCE       _since timestamp for W4                    (required by w4)
--   WL_NAME     label printed on the RESULT line           (default: script's own)
--   NO_STATUS_HOOK=1  skip the per-response Lua hook (then non-2xx = wrk's
--                     ">=400" status errors only; slightly cheaper for wrk)
-- The base URL's path (e.g. http://127.0.0.1:8892/v1) is the API prefix.

local M = {}

local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
function M.base64(data)
  return ((data:gsub(".", function(x)
    local r, byte = "", x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

M.bucket = os.getenv("BUCKET") or "b"
M.collection = os.getenv("COLLECTION") or "c"
M.n_records = tonumber(os.getenv("N_RECORDS") or "10000")

-- API prefix taken from the URL given to wrk (".../v1" -> "/v1").
function M.prefix()
  local p = wrk.path or ""
  if p:sub(-1) == "/" then p = p:sub(1, -2) end
  return p
end

function M.records_path()
  return M.prefix() .. "/buckets/" .. M.bucket .. "/collections/" .. M.collection .. "/records"
end

function M.record_id(i)
  return string.format("r%06d", i)
end

function M.headers(with_body)
  local h = {}
  -- jsonsync addition: AUTH_HEADER (a whole Authorization value, e.g. "Bearer ...") wins over AUTH.
  h["Authorization"] = os.getenv("AUTH_HEADER") or ("Basic " .. M.base64(os.getenv("AUTH") or "bench:bench"))
  h["Accept"] = "application/json"
  if with_body then h["Content-Type"] = "application/json" end
  return h
end

-- ~300-byte record payload (same shape as seed.py's records).
local statuses = { "a", "b", "c", "d" }
function M.record_json(i)
  return string.format(
    '{"title":"Benchmark record number %06d","status":"%s","n":%d,'
      .. '"tags":["alpha","beta","gamma"],"owner":"bench-user",'
      .. '"payload":"%s"}',
    i, statuses[(i % 4) + 1], i, string.rep("x", 160))
end

-- Result reporting: one machine-readable line per run.
local threads = {}
non2xx = 0
subfail = 0   -- batch only: failed sub-requests inside HTTP-200 /batch responses

-- opts.batch = true: also inspect /batch bodies; a 200 batch whose sub-responses are
-- not all 2xx counts as non-2xx (Kinto rolls back the WHOLE batch transaction when a
-- sub-request gets a 409, even though the other sub-responses say 201).
function M.install_reporting(default_name, opts)
  local name = os.getenv("WL_NAME") or default_name
  local batch = opts and opts.batch
  _G.setup = function(thread) table.insert(threads, thread) end
  if os.getenv("NO_STATUS_HOOK") ~= "1" then
    _G.response = function(status, headers, body)
      if status < 200 or status > 299 then
        non2xx = non2xx + 1
      elseif batch then
        local bad = 0
        for code in body:gmatch('"status"%s*:%s*(%d%d%d)') do
          if code:sub(1, 1) ~= "2" then bad = bad + 1 end
        end
        if bad > 0 then non2xx = non2xx + 1; subfail = subfail + bad end
      end
    end
  end
  _G.done = function(summary, latency, requests)
    local bad, sub = 0, 0
    if os.getenv("NO_STATUS_HOOK") ~= "1" then
      for _, t in ipairs(threads) do
        bad = bad + (t:get("non2xx") or 0)
        sub = sub + (t:get("subfail") or 0)
      end
    else
      bad = summary.errors.status
    end
    local sock = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout
    local secs = summary.duration / 1e6
    io.write(string.format(
      "RESULT %s rps=%.1f p50_ms=%.2f p99_ms=%.2f non2xx=%d sockerr=%d requests=%d mean_ms=%.2f max_ms=%.2f subfail=%d\n",
      name, summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
      bad, sock, summary.requests, latency.mean / 1000, latency.max / 1000, sub))
  end
end

return M
