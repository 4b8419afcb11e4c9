-- GET /users/:id with ids drawn uniformly from the seeded 1..BENCH_USERS, each with the same HS256 bearer
-- token (BENCH_TOKEN, from the environment: never on wrk's command line)
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args)
  math.randomseed(os.time() * 100 + tid)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
end
request = function() return wrk.format("GET", "/users/" .. math.random(1, users)) end
