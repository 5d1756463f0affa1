-- relaynet echo server: every WebSocket message comes back unchanged, with
-- the same type (text or binary).
--
--   lua5.4 examples/echo.lua [port]         (default port 8080)
--   relaynet examples/echo.lua --port 9000  (the same; any relaynet option)
--
-- Loaded with dofile/require instead, it returns { start, attach }:
-- start(port [, host]) starts the server inside a running rn.run and returns
-- it (or nil, msg, code); attach(srv) adds the echo to a server of yours.

-- From a source checkout, use its lua/ and build/ (examples/checkout.lua;
-- a copy of this file on its own skips that).
(loadfile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "checkout.lua") or load(""))()
local rn = require("relaynet")

-- Adds the echo's route and handler to server `srv`.
local function attach(srv)
  srv:route("GET", "/", function()
    return 200, "relaynet echo server: open a WebSocket to ws://<host>:" .. srv.port .. "/\n",
      { ["content-type"] = "text/plain; charset=utf-8" }
  end)
  srv:on("message", function(conn_id, msg, is_binary)
    srv:ws_send(conn_id, msg, is_binary)
  end)
  return srv
end

local function start(port, host)
  local srv, err, code = rn.HttpServer.listen{ port = port, host = host }
  if not srv then return nil, err, code end
  return attach(srv)
end

-- Run as a script: `lua5.4 examples/echo.lua [port]`, or under the relaynet
-- command, which also takes --port N (and the rest of its options). Plain
-- lua5.4 hands the file to the command, so both behave alike: one server,
-- on the port given (8080 by default).
if arg and debug.getinfo(1, "S").source == "@" .. tostring(arg[0]) then
  if not rn.running() then os.exit(require("relaynet.cli").main({ arg[0], table.unpack(arg) })) end
  local port = arg[1] and math.tointeger(tonumber(arg[1]))
  if port and (port < 0 or port > 65535) then port = nil end
  if arg[2] or (arg[1] and not port) then
    io.stderr:write("usage: relaynet examples/echo.lua [PORT] [--port N] [relaynet options]\n")
    os.exit(2)
  end
  rn.main(function()
    local srv, err = rn.server{ port = port }
    if not srv then
      io.stderr:write("echo: ", err, "\n")
      return false
    end
    attach(srv)
    print("echo server on ws://localhost:" .. srv.port .. "/ (Ctrl-C stops)")
    io.stdout:flush()
  end)
end

return { start = start, attach = attach }
