-- Prints one machine-readable line when the run ends, so bench/run.sh never
-- has to parse wrk's human-readable units ("1.23ms", "12.5k").
--
-- Only done() is defined on purpose: without request() or response() wrk keeps
-- its static request and never parses response bodies in Lua, so loading this
-- script costs nothing per request and both peers see the same client.
-- Times are in microseconds, as wrk reports them to scripts.

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d non2xx=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect,
    e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
