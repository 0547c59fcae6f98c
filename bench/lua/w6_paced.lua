-- W6 at a fixed pace: w6_patch.lua's PATCH, but each connection waits 1000 * CONNS / RATE ms
-- before each request (RATE, default 1000, requests a second in all; CONNS as given to wrk,
-- default 32), so that the machine is not saturated and the CPU used per request (ab.sh's CPU
-- columns over the requests served) is not skewed by contention. Not one of the standard
-- workloads: `ONLY=w6p` (lib.sh labels it W6_paced).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "w6_patch.lua")
local pause = 1000 * tonumber(os.getenv("CONNS") or "32") / tonumber(os.getenv("RATE") or "1000")
function delay()
  return pause
end
