-- wrk script for the callback benchmark (bench/callbacks.py).
-- wrk -s bench/callbacks.lua URL -- REQUESTS_FILE ACTIVE_SECONDS
--
-- REQUESTS_FILE holds one pre-encrypted WeCom callback per line: "<path with query>\t<XML body>"
-- (the query carries msg_signature, timestamp and nonce; bench/callbacks.py wrote them with the
-- project's WeCom simulator). Requests are taken strictly in file order, round-robin over all
-- connections (one wrk thread: one counter), so the bench knows exactly which callbacks were sent:
-- the first N lines, N = the requests wrk completed. Redeliveries are lines repeated byte for byte.
-- After ACTIVE_SECONDS a connection sends nothing more (delay() parks it), so when wrk stops no
-- request is in flight. done() prints one line: BENCH_JSON {...} (with "sent": lines taken).

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

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  paths, bodies = {}, {}
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    if tab then
      table.insert(paths, line:sub(1, tab - 1))
      table.insert(bodies, line:sub(tab + 1))
    end
  end
  stop_at = now() + tonumber(args[2])
  sent, ok2xx, other, armed = 0, 0, 0, false
  headers = { ["Content-Type"] = "text/xml", ["User-Agent"] = "Mozilla/4.0" }
end

function request()
  -- wrk calls request() once before the run to check the script: that call is not a request
  if not armed then return wrk.format("POST", paths[1], headers, bodies[1]) end
  local i = sent % #paths + 1
  sent = sent + 1
  return wrk.format("POST", paths[i], headers, bodies[i])
end

function delay()
  armed = true  -- wrk asks for the delay before every real request
  if now() >= stop_at then return 3600000 end
  return 0
end

function response(status, hdrs, body)
  if status >= 200 and status < 300 then ok2xx = ok2xx + 1 else other = other + 1 end
end

local function int(n) return string.format("%.0f", n) end

function done(summary, latency, requests)
  local ok, bad, taken = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok2xx")
    bad = bad + t:get("other")
    taken = taken + t:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "sent": %d, "duration_us": %d, "bytes": %d, "ok_2xx": %d, "non_2xx": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %s, "p90": %s, "p99": %s, "max": %s, "mean": %.1f}}\n',
    summary.requests, taken, summary.duration, summary.bytes, ok, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    int(latency:percentile(50)), int(latency:percentile(90)),
    int(latency:percentile(99)), int(latency.max), latency.mean))
end
