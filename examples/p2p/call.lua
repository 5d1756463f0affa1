-- Joins the mesh for one remote call, prints the result as JSON, and leaves.
--
--   relaynet examples/p2p/call.lua NODE METHOD [ARG...] --add-peer ws://127.0.0.1:8081/ws/p2p
--
-- calls counter.METHOD(ARG...) on node NODE (arguments that look like
-- numbers are sent as numbers; SERVER.METHOD calls another server). This
-- process is a node itself (its id is generated unless --node-id is given):
-- it dials the peer, calls (remote_call waits for the route while the
-- links come up), and exits 0 on success, 1 on an error (printed as
-- CODE: message).

-- From a source checkout, use its lua/ and build/ (examples/checkout.lua;
-- a copy of this file on its own skips that).
(loadfile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "../checkout.lua") or load(""))()
local rn = require("relaynet")
local json = require("relaynet.json")

local node, method = arg[1], arg[2]
if not node or not method then
  io.stderr:write("usage: relaynet examples/p2p/call.lua NODE [SERVER.]METHOD [ARG...] --add-peer URL\n")
  os.exit(2)
end
local server = "counter"
if method:find(".", 1, true) then server, method = method:match("^([^.]+)%.(.+)$") end
local args = json.array()
for i = 3, #arg do
  local v = arg[i]
  args[#args + 1] = math.tointeger(tonumber(v)) or tonumber(v) or v
end

-- remote_call waits while the mesh is still coming up (the link to the
-- peer, then its routes), so the call can be made at once.
local result, err = rn.remote_call(node, server, method, args, 10)
for _, r in ipairs(rn.routes()) do
  if r.node == node then io.stderr:write("route: ", table.concat(r.path, " > "), "\n") end
end
if err then
  io.stderr:write(err, "\n")
  os.exit(1)
end
print(json.encode(result == nil and json.null or result))
rn.stop()
