-- relaynet echo server: every WebSocket message comes back unchanged, with
-- the same type (text or binary).
--
--   lua5.4 examples/echo.lua [port]        (default port 8080)
--   bin/relaynet examples/echo.lua [port]  (the same, in relaynet's runner)
--
-- Loaded with dofile/require instead, it returns { start = start }:
-- start(port [, host]) starts the server inside a running rn.run and returns
-- it (or nil, msg, code).

local rn = require("relaynet")

local function start(port, host)
  local srv, err, code = rn.HttpServer.listen{ port = port, host = host }
  if not srv then return nil, err, code end
  srv:route("GET", "/", function()
    return 200, "relaynet echo server: open a WebSocket to ws://<host>:" .. srv.port .. "/\n",
      { ["content-type"] = "text/plain; charset=utf-8" }
  end)
  srv:on("message", function(conn_id, msg, is_binary)
    srv:ws_send(conn_id, msg, is_binary)
  end)
  return srv
end

-- Run the server only when executed as a script, not when loaded by a file.
if arg and debug.getinfo(1, "S").source == "@" .. tostring(arg[0]) then
  local port = math.tointeger(tonumber(arg[1] or "8080"))
  if not port then
    io.stderr:write("usage: lua5.4 echo.lua [port]\n")
    os.exit(2)
  end
  local function main()
    local srv, err = start(port)
    if not srv then
      io.stderr:write("echo: ", err, "\n")
      return false
    end
    print("echo server on ws://localhost:" .. srv.port .. "/ (Ctrl-C stops)")
    io.stdout:flush()
    return true
  end
  rn.main(main)
end

return { start = start }
