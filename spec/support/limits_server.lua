-- spec/support/limits_server.lua: examples/echo.lua's server with its default
-- limits, plus GET /limits-stats (the refusal counters as JSON), for
-- spec/attack_http_spec.lua.
--
--   lua5.4 spec/support/limits_server.lua PORT PIDFILE
--
-- Writes its process id to PIDFILE once it listens (the spec reads the
-- process's RSS from /proc).

local rn = require("relaynet")
local core = require("relaynet.core")
local json = require("relaynet.json")

local root = (debug.getinfo(1, "S").source:match("^@(.*)/spec/support/[^/]*$")) or "."
local echo = dofile(root .. "/examples/echo.lua")
local port = assert(math.tointeger(tonumber(arg[1])), "usage: limits_server.lua PORT PIDFILE")
local pidfile = assert(arg[2], "usage: limits_server.lua PORT PIDFILE")

rn.main(function()
  local srv = assert(echo.start(port, "127.0.0.1"))
  srv:route("GET", "/limits-stats", function()
    return 200, assert(json.encode({ total = core.stats(), server = srv._box:stats() })),
      { ["content-type"] = "application/json" }
  end)
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("l"):match("^(%d+)")
  f:close()
  f = assert(io.open(pidfile .. ".tmp", "w"))
  f:write(pid, "\n")
  f:close()
  os.rename(pidfile .. ".tmp", pidfile)
  return true
end)
