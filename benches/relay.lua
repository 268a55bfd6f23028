-- wrk script for benches/relay.sh. MODE=relay: GET /relay/relayed/me through Pipes,
-- rotating Pipes-User-Id over ACCOUNTS accounts (user-0 … user-N) with the relay key;
-- MODE=direct: GET /api/me at the fake provider with one account's token.
local mode = os.getenv("MODE")
local n = tonumber(os.getenv("ACCOUNTS") or "100")
local requests = {}
local i = 0

function init(args)
  if mode == "direct" then
    requests[1] = wrk.format("GET", "/api/me", { ["Authorization"] = "Bearer " .. os.getenv("TOKEN") })
    n = 1
  else
    for u = 0, n - 1 do
      local headers = { ["Authorization"] = "Bearer " .. os.getenv("PIPES_KEY"), ["Pipes-User-Id"] = "user-" .. u }
      requests[u + 1] = wrk.format("GET", "/relay/relayed/me", headers)
    end
  end
  i = math.random(n)
end

function request()
  i = i + 1
  return requests[(i % n) + 1]
end
