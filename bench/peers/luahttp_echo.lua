-- lua-http (cqueues) WebSocket echo / broadcast server for the benchmarks.
--
--   lua5.4 bench/peers/luahttp_echo.lua PORT [echo|broadcast]
--
-- Debian's lua-http 0.4 is packaged for Lua 5.1-5.3 only (its pure-Lua
-- modules live in /usr/share/lua/5.1), but its C dependencies (cqueues,
-- luaossl, lpeg) are built for 5.4 too, and lua-http itself runs on 5.4:
-- bench/run.py appends /usr/share/lua/5.1 to LUA_PATH_5_4 for it.
local server = require("http.server")
local websocket = require("http.websocket")

local port = assert(math.tointeger(tonumber(arg[1])), "usage: luahttp_echo.lua PORT [echo|broadcast]")
local mode = arg[2] or "echo"
local clients = {} -- broadcast: ws -> true

local function onstream(_, stream)
  local headers = stream:get_headers()
  if not headers then return end
  local ws = websocket.new_from_stream(stream, headers)
  if not ws then
    local h = require("http.headers").new()
    h:append(":status", "400")
    stream:write_headers(h, true)
    return
  end
  if not ws:accept() then return end
  if mode == "broadcast" then clients[ws] = true end
  while true do
    local data, opcode = ws:receive()
    if not data then break end
    if mode == "broadcast" then
      for c in pairs(clients) do c:send(data, opcode) end
    else
      ws:send(data, opcode)
    end
  end
  clients[ws] = nil
  ws:close()
end

local s = assert(server.listen {
  host = "127.0.0.1",
  port = port,
  reuseaddr = true,
  onstream = onstream,
  onerror = function() end,
})
assert(s:listen())
io.stdout:write("lua-http ", mode, " on ws://127.0.0.1:", port, "/\n")
io.stdout:flush()
assert(s:loop())
