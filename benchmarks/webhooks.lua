-- wrk script for benchmarks/webhooks.py: replays a pool of pre-signed HubSpot deliveries.
--
-- wrk cannot compute HMAC-SHA256 per request, so webhooks.py signs every delivery up front
-- (signatures stay valid for 5 minutes) and writes them to the pool file named by the first
-- script argument, one record per delivery:
--   <timestamp>\n<signature>\n<body length>\n<body>
-- Thread i (of n) sends records i, i+n, i+2n, ... in turn; each body carries fresh eventIds.
-- If a thread runs out, it starts over (those repeats are counted as "wrapped": the server
-- answers them as duplicates). Prints one JSON line with the figures at the end.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local pool_path, thread_count = args[1], tonumber(args[2])
  requests_pool = {}
  accepted, wrapped, non_2xx, next_index = 0, 0, 0, 1
  statuses = ""
  local pool = assert(io.open(pool_path, "rb"))
  local index = 0
  while true do
    local timestamp = pool:read("*l")
    if not timestamp then break end
    local signature = pool:read("*l")
    local length = tonumber(pool:read("*l"))
    local body = pool:read(length)
    if index % thread_count == id then
      local headers = {
        ["Content-Type"] = "application/json",
        ["X-HubSpot-Request-Timestamp"] = timestamp,
        ["X-HubSpot-Signature-v3"] = signature,
      }
      table.insert(requests_pool, wrk.format("POST", "/webhooks/hubspot", headers, body))
    end
    index = index + 1
  end
  pool:close()
end

function request()
  if next_index > #requests_pool then
    next_index = 1
    wrapped = wrapped + 1
  end
  local raw = requests_pool[next_index]
  next_index = next_index + 1
  return raw
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    local n = body and body:match('"accepted":%s*(%d+)')
    if n then accepted = accepted + tonumber(n) end
  else
    non_2xx = non_2xx + 1
    if #statuses < 200 then statuses = statuses .. status .. " " end
  end
end

function done(summary, latency, requests)
  local total_accepted, total_wrapped, total_non_2xx, all_statuses = 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    total_accepted = total_accepted + thread:get("accepted")
    total_wrapped = total_wrapped + thread:get("wrapped")
    total_non_2xx = total_non_2xx + thread:get("non_2xx")
    all_statuses = all_statuses .. thread:get("statuses")
  end
  local errors = summary.errors
  io.write(string.format(
    '\nRESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "accepted": %d, "wrapped": %d, "non_2xx": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "non_2xx_statuses": "%s"}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, total_accepted, total_wrapped, total_non_2xx,
    errors.connect, errors.read, errors.write, errors.timeout, all_statuses))
end
