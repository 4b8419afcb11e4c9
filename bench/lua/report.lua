-- Appended to every scenario: one machine-readable line with req/s, p50/p90/p99 (ms), errors and
-- requests, then the errors by kind (connect, read, write, timeout, status). wrk counts a status >= 400
-- in errors.status; socket errors and timeouts are counted too.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %.3f %.3f %.3f %d %d %d %d %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    e.status + e.connect + e.read + e.write + e.timeout, summary.requests,
    e.connect, e.read, e.write, e.timeout, e.status))
end
