-- GET /users/:id for every id of 1..BENCH_USERS in turn (threads interleaved), so that a scenario
-- of cached reads starts on a warm cache, as a deployment that has been running does. Each thread
-- stops once it has its share of the ids answered (one pass) and prints FILLED: wrk itself still runs
-- for its -d, so bench.py's growth_fill ends it (SIGINT) once every thread has said so.
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local threads = 0
-- nthreads: bench.py runs wrk with -t2
setup = function(thread) threads = threads + 1; thread:set("tid", threads); thread:set("nthreads", 2) end
init = function(args) n = 0; answered = 0; share = math.ceil(users / nthreads) end
request = function()
  local id = (n * nthreads + tid - 1) % users + 1
  n = n + 1
  return wrk.format("GET", "/users/" .. id)
end
response = function(status, headers, body)
  answered = answered + 1
  if answered == share then
    io.write("FILLED\n")
    io.flush()
    wrk.thread:stop()
  end
end
