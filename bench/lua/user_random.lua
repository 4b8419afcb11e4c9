-- GET /users/:id with ids drawn uniformly from the seeded 1..BENCH_USERS
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args) math.randomseed(os.time() * 100 + tid) end
request = function() return wrk.format("GET", "/users/" .. math.random(1, users)) end
