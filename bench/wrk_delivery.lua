-- wrk script: POST the same signed body with a fresh X-GitHub-Delivery per request. The signature
-- stays valid because the id is a header, not part of the body.
counter = 0
acked = 0
others = 0
local prefix = os.getenv("BENCH_PREFIX") or "bench"
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-GitHub-Event"] = "workflow_run"
  wrk.headers["X-Hub-Signature-256"] = os.getenv("BENCH_SIGNATURE")
end

function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. "-" .. id .. "-" .. counter
  return wrk.format()
end

function response(status, headers, body)
  if status == 202 or status == 200 then acked = acked + 1 else others = others + 1 end
end

function done(summary, latency, requests)
  local a, o = 0, 0
  for _, t in ipairs(threads) do a = a + t:get("acked"); o = o + t:get("others") end
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "acked": %d, "other": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    a, o, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
