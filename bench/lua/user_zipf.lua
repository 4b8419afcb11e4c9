-- GET /users/:id with ids drawn from a Zipf distribution over 1..BENCH_USERS: rank k has weight k^-s
-- (s = BENCH_ZIPF, which bench.py sets from BENCH_GROWTH_ZIPF, default 1.1). Each thread builds the cumulative table once (1M entries: 8 MB and a
-- fraction of a second), then draws by inverse CDF (a binary search). Ranks are spread over the ids by
-- a multiplication modulo N (1,000,003 is prime, so coprime to any N it does not divide): the hot rows
-- are not neighbours in the table.
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local s = tonumber(os.getenv("BENCH_ZIPF") or "1.1")
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args)
  math.randomseed(os.time() * 100 + tid)
  cdf = {}
  local sum = 0
  for k = 1, users do sum = sum + k ^ (-s); cdf[k] = sum end
  for k = 1, users do cdf[k] = cdf[k] / sum end
end
request = function()
  local u = math.random()
  local lo, hi = 1, users
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/users/" .. string.format("%d", ((lo - 1) * 1000003) % users + 1))
end
