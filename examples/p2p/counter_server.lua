-- A mesh node that exposes a `counter` server to every other node.
--
--   relaynet examples/p2p/counter_server.lua --port 8081 --node-id n1 \
--            [--add-peer ws://127.0.0.1:8082/ws/p2p ...]
--
-- The relaynet command starts the HTTP/mesh server (--port), names the node
-- (--node-id) and dials its peers (--add-peer) before this script runs; the
-- script only publishes the methods. Run with plain `lua5.4` instead, it
-- reads the same flags itself.
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

local function publish()
  rn.expose("counter", counter)
end

if rn.running() then
  -- started by the relaynet command, whose server and peers already exist
  publish()
else
  -- plain lua5.4: read --port/--node-id/--add-peer/--host ourselves
  local opts = { peers = {} }
  local a = arg or {}
  local i = 1
  while a[i] do
    local flag = a[i]:gsub("^%-%-?", "-")
    local v = a[i + 1]
    if flag == "-port" then opts.port = math.tointeger(tonumber(v)); i = i + 2
    elseif flag == "-node-id" then opts.node_id = v; i = i + 2
    elseif flag == "-add-peer" then opts.peers[#opts.peers + 1] = v; i = i + 2
    elseif flag == "-host" then opts.host = v; i = i + 2
    else i = i + 1 end
  end
  if not opts.port then
    io.stderr:write("usage: lua5.4 counter_server.lua --port PORT [--node-id ID] [--add-peer URL ...]\n")
    os.exit(2)
  end
  local ok = rn.run(function()
    if opts.node_id then rn.set_node_id(opts.node_id) end
    local srv, err = rn.HttpServer.listen{ port = opts.port, host = opts.host }
    if not srv then
      io.stderr:write("counter_server: ", err, "\n")
      rn.stop()
      return
    end
    for _, url in ipairs(opts.peers) do rn.add_peer(url) end
    publish()
    print(string.format("node %s: counter server on http://%s:%d/ (Ctrl-C stops)",
      rn.node_id(), opts.host or "localhost", srv.port))
    io.stdout:flush()
  end)
  os.exit(ok and 0 or 1)
end
