-- wrk script for benches/read.sh: POSTs token reads rotating over
-- ACCOUNTS accounts (user-0 … user-N), each thread from its own offset.
local n = tonumber(os.getenv("ACCOUNTS") or "1000")
local key = os.getenv("PIPES_KEY")
local requests = {}
local i = 0

function init(args)
  local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }
  for u = 0, n - 1 do
    requests[u + 1] = wrk.format("POST", "/data-integrations/bench/token", headers, '{"user_id":"user-' .. u .. '"}')
  end
  i = math.random(n)
end

function request()
  i = i + 1
  return requests[(i % n) + 1]
end
