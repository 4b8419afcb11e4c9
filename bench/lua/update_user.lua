-- 100% updates of the name of a random user: the mix's write alone (BENCH_WRITE_METHOD: PATCH for pgapi
-- and Fastify, PUT for the Express peer, whose PUT is partial).
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local method = os.getenv("BENCH_WRITE_METHOD") or "PATCH"
local headers = {["Content-Type"] = "application/json"}
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args) n = 0; math.randomseed(os.time() * 100 + tid) end
request = function()
  n = n + 1
  return wrk.format(method, "/users/" .. math.random(1, users), headers, '{"name":"upd ' .. n .. '"}')
end
