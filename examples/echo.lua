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
-- command, which also takes --port N (and the rest of its options): one
-- server, on the port given (8080 by default).
local cli = require("relaynet.cli")
if cli.is_main() then
  cli.serve_script { name = "echo", usage = "examples/echo.lua", attach = attach, banner = function(srv)
    return "echo server on ws://localhost:" .. srv.port .. "/ (Ctrl-C stops)"
  end }
end

return { start = start, attach = attach }
