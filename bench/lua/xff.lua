-- Memory scenario (D): every request carries a distinct X-Forwarded-For
-- address, so the proxy under test sees a new client on every request, which
-- is what a flood from a large botnet behind a CDN looks like to a shield.
--
-- Usage (bench/run.sh runs it in four segments and samples memory between):
--   wrk -t1 -c64 -d120s -s bench/lua/xff.lua URL -- START QUOTA [THREADS [DONE]]
--     START   first counter value (a segment continues where the last ended)
--     QUOTA   requests to send in this run; each thread stops itself after
--             its share with wrk.thread:stop(), and -d caps the time
--     THREADS the -t value given to wrk (default 1), so threads split the
--             counter space without overlapping
--     DONE    a path prefix: a thread that has sent its share creates the
--             file DONE<thread id>. wrk's main thread sleeps for all of -d
--             even when every thread has stopped, so run.sh waits for these
--             files and then sends wrk SIGINT, which ends the sleep and still
--             prints the summary.
--
-- Counter n becomes an address:
--   * every 4th (n % 4 == 3) an IPv6 address, with the counter in the second
--     and third groups, so each one sits in its own /48 and /64;
--   * the others IPv4 in 1.0.0.0-223.255.255.255, the first octet turning
--     fastest (1 + n % 223), so consecutive clients land in different /8s and
--     every client has its own /24 for the first 14.6 million counters.
-- Both layouts are the worst case for per-prefix tracking: no two clients
-- share a prefix bucket. The mapping is one-to-one for n < 223 * 2^24.

local threads = {}
local next_thread_id = 0

function setup(thread)
  thread:set("id", next_thread_id)
  next_thread_id = next_thread_id + 1
  table.insert(threads, thread)
end

-- Globals, not locals: done() reads them back with thread:get().
sent = 0
last = -1

function init(args)
  start = tonumber(args[1]) or 0
  quota = tonumber(args[2]) or 1000000
  nthreads = tonumber(args[3]) or 1
  share = math.ceil(quota / nthreads)
  id = id or 0
  done_prefix = args[4]
end

local floor = math.floor

local function address(n)
  if n % 4 == 3 then
    local m = floor(n / 4)
    return string.format("2a01:%x:%x:1::1", m % 65536, floor(m / 65536) % 65536)
  end
  return string.format("%d.%d.%d.%d",
    1 + n % 223,
    floor(n / 223) % 256,
    floor(n / 57088) % 256,        -- 223 * 256
    floor(n / 14614528) % 256)     -- 223 * 256 * 256
end

function request()
  local n = start + id + sent * nthreads
  sent = sent + 1
  last = n
  if sent == share then
    -- The request returned below is still written; the loop stops after it.
    wrk.thread:stop()
    if done_prefix then
      local f = io.open(done_prefix .. id, "w")
      if f then
        f:write(sent, "\n")
        f:close()
      end
    end
  end
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = address(n) })
end

function done(summary, latency, requests)
  local total, next_start = 0, 0
  for _, t in ipairs(threads) do
    total = total + (t:get("sent") or 0)
    local l = t:get("last") or -1
    if l + 1 > next_start then next_start = l + 1 end
  end
  io.write(string.format(
    "XFF sent=%d next=%d responses=%d non2xx=%d socket_errors=%d duration_us=%d p99_us=%.0f\n",
    total, next_start, summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(99)))
end
