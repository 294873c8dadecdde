-- wrk script: POST pre-signed, unique deliveries read in turn from BENCH_BODIES (bench/ingest.py writes
-- it: per delivery a line with its X-Hub-Signature-256, a line with its length, then the body). Each is
-- a new workflow run, so that the daemon stores a new run every time. Only 202 counts as acknowledged:
-- a 200 is a duplicate the daemon already had. Running out of bodies starts over (then duplicates):
-- `exhausted` says how often, and the benchmark refuses such a run.
counter = 0
acked = 0
duplicates = 0
others = 0
exhausted = 0
local prefix = os.getenv("BENCH_PREFIX") or "bench"
local threads = {}
local bodies

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  bodies = assert(io.open(os.getenv("BENCH_BODIES"), "rb"))
end

local function next_delivery()
  local signature = bodies:read("*l")
  if signature == nil then
    exhausted = exhausted + 1
    bodies:seek("set", 0)
    signature = bodies:read("*l")
  end
  local length = tonumber(bodies:read("*l"))
  return signature, bodies:read(length)
end

function request()
  counter = counter + 1
  local signature, body = next_delivery()
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "workflow_run",
    ["X-Hub-Signature-256"] = signature,
    ["X-GitHub-Delivery"] = prefix .. "-" .. id .. "-" .. counter,
  }
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status == 202 then
    acked = acked + 1
  elseif status == 200 then
    duplicates = duplicates + 1
  else
    others = others + 1
  end
end

function done(summary, latency, requests)
  local a, d, o, x = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("acked"); d = d + t:get("duplicates"); o = o + t:get("others"); x = x + t:get("exhausted")
  end
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "acked": %d, '
    .. '"duplicates": %d, "other": %d, "exhausted": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    a, d, o, x, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
