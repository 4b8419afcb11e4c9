-- 90% GET /users/:id, 10% an update of the name of a random user (cache invalidation under reads).
-- BENCH_WRITE_METHOD: PATCH for pgapi (partial update), PUT for the peer (its PUT is partial).
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local method = os.getenv("BENCH_WRITE_METHOD") or "PATCH"
local headers = {["Content-Type"] = "application/json"}
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args) n = 0; math.randomseed(os.time() * 100 + tid) end
request = function()
  local id = math.random(1, users)
  if math.random(1, 10) == 1 then
    n = n + 1
    return wrk.format(method, "/users/" .. id, headers, '{"name":"mix ' .. n .. '"}')
  end
  return wrk.format("GET", "/users/" .. id)
end
