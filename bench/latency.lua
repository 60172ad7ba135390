-- wrk script for the paced run of the latency benchmark (bench/latency.py).
-- wrk -s bench/latency.lua URL -- PATHS_FILE ACTIVE_SECONDS ZIPF_S RATE
--
-- bench/links.lua's requests (a new visitor and address per request, Zipf-popular tokens), sent at
-- RATE requests/s in total instead of as fast as the server answers: every request takes the next
-- free slot on one schedule (1/RATE s apart), whichever connection sends it. A connection that finds
-- its slot already past sends at once, without catching up on missed slots (no bursts after a stall),
-- so the rate reached is reported by BENCH_JSON as usual and may fall short of RATE. No slot lies past
-- ACTIVE_SECONDS: the last request leaves before then, as with links.lua.

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "links.lua")  -- init, request, response, done; declares bench_timespec and clock_gettime

local ffi = require("ffi")
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local links_init = init

function init(args)
  links_init(args)
  interval = 1 / tonumber(args[4])
  next_slot = now()
end

function delay()
  local t = now()
  if t >= stop_at then return 3600000 end
  if next_slot < t then next_slot = t end
  if next_slot >= stop_at then return 3600000 end  -- no slot reserved past the end: the rate holds
  local wait = next_slot - t
  next_slot = next_slot + interval
  return math.floor(wait * 1000 + 0.5)
end
