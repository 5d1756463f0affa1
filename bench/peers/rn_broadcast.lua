-- relaynet broadcast server for the fan-out scenario: every message a
-- connection sends goes to every open connection of the server (the sender
-- included) through srv:ws_broadcast (one shared buffer).
--
--   lua5.4 bench/peers/rn_broadcast.lua PORT
local rn = require("relaynet")

local port = math.tointeger(tonumber(arg[1] or ""))
if not port then
  io.stderr:write("usage: lua5.4 rn_broadcast.lua PORT\n")
  os.exit(2)
end

rn.run(function()
  -- 10,000 receivers + the sender: above the default max_connections.
  local srv = assert(rn.HttpServer.listen{ port = port, host = "127.0.0.1", max_connections = 100000 })
  srv:on("message", function(_, msg, is_binary)
    srv:ws_broadcast(msg, is_binary)
  end)
  print("relaynet broadcast on ws://127.0.0.1:" .. srv.port .. "/")
  io.stdout:flush()
end)
