-- Makes wrk print one JSON line with throughput and latency quantiles, so bench/run.ts can read it.
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests":%d,"errors":%d,"rps":%.1f,"p50_ms":%.4f,"p90_ms":%.4f,"p99_ms":%.4f}\n',
    summary.requests, errors, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000))
end
