-- A mesh node that exposes a `counter` server (also named `counter_server`)
-- to every other node.
--
--   relaynet examples/p2p/counter_server.lua --port 8081 --node-id n1 \
--            [--add-peer ws://127.0.0.1:8082/ws/p2p ...]
--   relaynet examples/p2p/counter_server.lua -server -port 8081 -node-id node2 \
--            -add-peer http://localhost:8080        (the relaynet design's spelling)
--
-- The relaynet command names the node (--node-id), dials its peers
-- (--add-peer) and starts the HTTP/mesh server (--port); the script only
-- publishes the methods. `lua5.4 examples/p2p/counter_server.lua ...` runs
-- the same through the command.
--
-- Methods (call them with rn.remote_call(node, "counter", method, args) or
-- through POST /rpc on any node):
--   increment([n])  adds n (default 1) and returns the new value; the
--                   value stays within math.mininteger..math.maxinteger:
--                   a step past either end raises "increment: ... would
--                   overflow" (EREMOTE to the caller) and changes nothing
--   get()           the current value
--   reset()         sets it back to 0 and returns 0
--   whoami()        this node's id
--   slow(seconds)   sleeps (only this call waits) and returns "done"
--   echo(...)       returns its arguments (one -> that value, several -> an array)

-- From a source checkout, use its lua/ and build/ (examples/checkout.lua;
-- a copy of this file on its own skips that).
(loadfile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "../checkout.lua") or load(""))()
local rn = require("relaynet")

local value = 0

local counter = {}

function counter.increment(n)
  if n == nil then n = 1 end
  if math.type(n) ~= "integer" then error("increment: n must be an integer", 0) end
  -- Lua integers wrap around silently: refuse a step that would.
  if (n > 0 and value > math.maxinteger - n) or (n < 0 and value < math.mininteger - n) then
    error(string.format("increment: %d + %d would overflow (the counter stays within %d..%d)",
      value, n, math.mininteger, math.maxinteger), 0)
  end
  value = value + n
  return value
end

function counter.get()
  return value
end

function counter.reset()
  value = 0
  return value
end

function counter.whoami()
  return rn.node_id()
end

function counter.slow(seconds)
  seconds = tonumber(seconds) or 1
  if seconds < 0 or seconds > 300 then error("slow: seconds must be within 0..300", 0) end
  rn.sleep(seconds)
  return "done"
end

function counter.echo(...)
  return ...
end

-- The relaynet design calls it "counter_server" (its call format has
-- "server_name": "counter_server"): both names reach the same methods.
local function publish()
  rn.expose("counter", counter)
  rn.expose("counter_server", counter)
end

if rn.running() then
  -- started by the relaynet command, which starts the server (--port or
  -- --server) once this script has published, and dials its peers
  publish()
elseif arg and debug.getinfo(1, "S").source == "@" .. tostring(arg[0]) then
  -- plain lua5.4: hand the file and its options to the relaynet command
  os.exit(require("relaynet.cli").main({ arg[0], table.unpack(arg) }))
end
