-- relaynet.rpc: JSON-RPC and the views of a mesh-enabled server, registered
-- with relaynet.server when this module loads (the facade loads it):
--   /rpc      WebSocket: JSON-RPC, one request or batch per text frame;
--   POST /rpc JSON-RPC over HTTP;
--   GET /status, /peers, /registry, /routes: the mesh's views as JSON.
-- The mesh mounts its own path, /ws/p2p (relaynet.mesh.transport). Every
-- one of these paths is in server.PROTECTED_PATHS.

local sched = require("relaynet.sched")
local mesh = require("relaynet.mesh")
local json = require("relaynet.json")
local conn = require("relaynet.conn")
local server = require("relaynet.server")
local jsonrpc = require("relaynet.jsonrpc")

local M = {}

-- JSON-RPC's own counters (the per-connection and per-address caps) are
-- shown in the mesh's status as rpc_<name>.
mesh.add_counters("rpc_", jsonrpc.stats)

local function json_response(value)
  local body, err = json.encode(value)
  if not body then error(err, 0) end
  return 200, body, { ["content-type"] = "application/json" }
end

--- Built-in routes of a mesh-enabled server.
function M.mesh_routes(srv)
  srv:route("GET", "/status", function() return json_response(mesh.status()) end)
  srv:route("GET", "/peers", function() return json_response(mesh.peers()) end)
  srv:route("GET", "/registry", function() return json_response(mesh.registry()) end)
  srv:route("GET", "/routes", function() return json_response(mesh.routes()) end)
  srv:route("POST", "/rpc", function(req)
    local out = jsonrpc.handle(req.body, { transport = "http", peer = req.peer, addr = req.peer })
    if out == nil then return 204, "" end
    return 200, out, { ["content-type"] = "application/json" }
  end)
end

--- One text frame on /rpc: answers it on the same connection.
function M.ws_message(rec, data, binary)
  local out
  if binary then -- JSON-RPC is text: a binary frame cannot be a request
    out = '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: binary frame"}}'
  else
    -- One owner per connection: its calls in flight are counted together
    -- (max_calls_per_connection) and canceled when it closes.
    local owner = rec.rpc_owner
    if not owner then owner = { n = 0 }; rec.rpc_owner = owner end
    out = jsonrpc.handle(data, { transport = "ws", peer = rec.id, owner = owner, addr = rec.addr })
  end
  if out ~= nil and not rec.closed then conn.send_raw(rec, out) end
end

server.builtin(M.mesh_routes)

-- /rpc over WebSocket: every frame runs in its own handler coroutine.
server.mount("/rpc", {
  on_open = function(rec, info)
    conn.set_internal(rec)
    rec.addr = info.peer -- calls in flight are also bounded per address
  end,
  on_message = function(rec, data, binary)
    sched.handle("JSON-RPC over WebSocket on ", rec.id, M.ws_message, 3, rec, data, binary)
  end,
  on_close = function(rec)
    -- its calls still waiting can never be answered: fail them now
    if rec.rpc_owner then jsonrpc.close(rec.rpc_owner) end
  end,
})

return M
