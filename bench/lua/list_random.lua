-- GET /users?limit=10&after_id=<random>: pages of 10 users from anywhere in 1..BENCH_USERS. The
-- scale-out servers run with [redis] max_value_bytes = 1024, under a page's size (about 1.7 KB), so
-- every page misses the cache: the lookup script, the database, the lease given back.
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args) math.randomseed(os.time() * 100 + tid) end
request = function() return wrk.format("GET", "/users?limit=10&after_id=" .. math.random(0, users - 10)) end
