-- Joins the mesh for one remote call, prints the result as JSON, and leaves.
--
--   relaynet examples/p2p/call.lua NODE METHOD [ARG...] --add-peer ws://127.0.0.1:8081/ws/p2p
--
-- calls counter.METHOD(ARG...) on node NODE (arguments that look like
-- numbers are sent as numbers; SERVER.METHOD calls another server). This
-- process is a node itself (its id is generated unless --node-id is given):
-- it dials the peer, waits until it has a route to NODE, calls, and exits 0
-- on success, 1 on an error (printed as CODE: message).

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

-- Wait until the mesh knows a way to NODE: at most 10 s, and at most 1 s
-- after the first link came up (a peer sends its whole table at link-up).
local deadline = rn.now() + 10
local linked_at
local function has_route()
  for _, r in ipairs(rn.routes()) do
    if r.node == node then return r end
  end
end
while not has_route() and node ~= rn.node_id() and rn.now() < deadline do
  if not linked_at and #rn.peers() > 0 then linked_at = rn.now() end
  if linked_at and rn.now() - linked_at > 1 then break end
  rn.sleep(0.05)
end
local route = has_route()
if route then
  io.stderr:write("route: ", table.concat(route.path, " > "), "\n")
end

local result, err = rn.remote_call(node, server, method, args, 10)
if err then
  io.stderr:write(err, "\n")
  os.exit(1)
end
print(json.encode(result == nil and json.null or result))
rn.stop()
