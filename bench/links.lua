-- wrk script for the link-open benchmark (bench/links.py).
-- wrk -s bench/links.lua URL -- PATHS_FILE ACTIVE_SECONDS [ZIPF_S]
--
-- Every request opens /l/<token> as a new person: a phone's user agent, a fresh random visitor
-- cookie (so each request is a first open, no reloads) and a random client address in
-- X-Forwarded-For (loopback is a trusted proxy by default). Tokens are drawn with Zipf-like popularity
-- (rank r has weight 1/r^s) from PATHS_FILE (one /l/<token> per line), most popular first.
-- After ACTIVE_SECONDS a connection sends nothing more (delay() parks it) so that when wrk stops,
-- no request is in flight: the 2xx responses counted here are exactly the opens the server answered.
-- done() prints one line: BENCH_JSON {...}.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
  .. "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47 NetType/WIFI Language/zh_CN"
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local SLOTS = 16384

local threads = {}

function setup(thread)
  thread:set("thread_no", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  paths = {}
  for line in io.lines(args[1]) do
    if #line > 0 then table.insert(paths, line) end
  end
  stop_at = now() + tonumber(args[2])
  local s = tonumber(args[3] or "1.0")
  -- popularity table: token rank r fills a share of the slots proportional to 1/r^s (at least one)
  local total = 0
  for r = 1, #paths do total = total + 1 / r ^ s end
  slots = {}
  local acc = 0
  for r = 1, #paths do
    acc = acc + (1 / r ^ s) / total
    local upto = math.floor(acc * SLOTS + 0.5)
    while #slots < upto do table.insert(slots, r) end
  end
  while #slots < SLOTS do table.insert(slots, #paths) end
  math.randomseed(os.time() * 1000 + thread_no)
  chars = {}
  for i = 1, #ALPHABET do chars[i] = ALPHABET:sub(i, i) end
  buf = {}
  ok2xx, other = 0, 0
  headers = { ["User-Agent"] = UA }
end

local function visitor_cookie()
  for i = 1, 24 do buf[i] = chars[math.random(64)] end
  return "bcn_v=" .. table.concat(buf)
end

function request()
  headers["Cookie"] = visitor_cookie()
  -- a new person is also a new address (as a proxy in front of the app reports it): per-IP limits
  -- on public pages must see many visitors, not one load generator
  headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.random(0, 255), math.random(0, 255), math.random(1, 254))
  return wrk.format("GET", paths[slots[math.random(SLOTS)]], headers)
end

function delay()
  if now() >= stop_at then return 3600000 end
  return 0
end

function response(status, hdrs, body)
  if status >= 200 and status < 300 then ok2xx = ok2xx + 1 else other = other + 1 end
end

local function int(n) return string.format("%.0f", n) end

function done(summary, latency, requests)
  local ok, bad = 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok2xx")
    bad = bad + t:get("other")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "ok_2xx": %d, "non_2xx": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %s, "p90": %s, "p99": %s, "max": %s, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, ok, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    int(latency:percentile(50)), int(latency:percentile(90)),
    int(latency:percentile(99)), int(latency.max), latency.mean))
end
