-- POST /users with emails unique across threads and runs: setup() gives each thread an id
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
init = function(args) n = 0; tag = tostring(os.time()) .. "t" .. tostring(tid) end
request = function()
  n = n + 1
  local body = '{"name":"bench","email":"b' .. tag .. '-' .. n .. '@example.com"}'
  return wrk.format("POST", "/users", {["Content-Type"] = "application/json"}, body)
end
