-- One random tenant per request; ROUTE is appended to /v1/tenants/{tenant}.
math.randomseed(7)
local headers = { ["Authorization"] = "Bearer bench" }
request = function()
  local t = string.format("t%05d", math.random(0, 10000 - 1))
  return wrk.format("GET", "/v1/tenants/" .. t .. os.getenv("ROUTE"), headers)
end
