-- relaynet: coroutine-aware HTTP and WebSocket networking on libuv and
-- libwebsockets. This file is the facade: it only requires the modules
-- and re-exports their public names; it holds no state.
--
--   relaynet.runtime  run, main, stop, running, stats, on_error, event dispatch
--   relaynet.conn     connection records (the only user of a connection's C box)
--   relaynet.server   HttpServer, WebSocket, the built-in endpoint registry
--   relaynet.client   ws_connect and the WebSocket client
--   relaynet.tls      rn.tls_config, the process-wide TLS files
--   relaynet.rpc      /rpc and the mesh views on mesh-enabled servers
--   relaynet.mesh     the mesh (peers, routes, remote calls; it mounts /ws/p2p)
--
-- Error convention: misuse (a wrong argument type, a closed object) raises;
-- operational failures (timeouts, closed connections, full queues) return
-- nil, "CODE: message", "CODE". Every code is listed in README.md.

local sched = require("relaynet.sched")
local mesh = require("relaynet.mesh")
local server = require("relaynet.server")
local client = require("relaynet.client")
local rpc = require("relaynet.rpc")
local runtime = require("relaynet.runtime")

local M = { _VERSION = "relaynet 0.1.0" }

M.DEFAULT_LIMITS = client.DEFAULT_LIMITS
M.PROTECTED_PATHS = server.PROTECTED_PATHS

-- the loop
M.run = runtime.run
M.main = runtime.main
M.stop = runtime.stop
M.running = runtime.running
M.stats = runtime.stats
M.on_error = runtime.on_error
M.server = runtime.server
-- For the relaynet command (relaynet.cli): its --port/--host/--server options.
M._set_listen_defaults = runtime.set_listen_defaults
M.set_rpc_token = server.set_rpc_token

M.spawn = sched.spawn
M.sleep = sched.sleep
M.after = sched.after
M.now = sched.now
-- n (1..1024) bytes from OpenSSL's CSPRNG: ids and tokens that must differ
-- between processes (math.random's seed can repeat, e.g. under ASan).
M.random_bytes = require("relaynet.core").random
-- luv on relaynet's loop (relaynet.uvbridge; README, "Using luv beside relaynet")
M.luv, M.luv_wait = require("relaynet.uvbridge").luv, require("relaynet.uvbridge").wait

-- servers and clients
M.HttpServer = server.HttpServer
M.WebSocket = server.WebSocket
M.ws_connect = client.ws_connect
M._parse_url = client.parse_url
M._mesh_routes = rpc.mesh_routes
M._rpc_ws = rpc.ws_message

-- JSON: relaynet.json, the exact codec the mesh and JSON-RPC use (integers
-- stay integers; decode and encode return nil, message instead of raising).
M.json = require("relaynet.json")

-- Logs and metrics (README, "Logs and metrics"): rn.log is relaynet.log
-- (levels, the access log, the writer); rn.metrics() returns the text of
-- GET /metrics (Prometheus text format), for a route of the user's own.
M.log = require("relaynet.log")
M.metrics = require("relaynet.metrics").render

-- TLS: process-wide certificate, key and CA files (relaynet.tls)
M.tls_config = require("relaynet.tls").config

-- the mesh
M.node_id = mesh.node_id
M.set_node_id = mesh.set_node_id
M.add_peer = mesh.add_peer
M.remove_peer = mesh.remove_peer
M.peers = mesh.peers
M.routes = mesh.routes
M.registry = mesh.registry
M.expose = mesh.expose
M.unexpose = mesh.unexpose
M.remote_call = mesh.remote_call
M.call_any = mesh.call_any -- load-balanced calls (README, "Load-balanced calls")
M.wait_route = mesh.wait_route
M.mesh_status = mesh.status
M.send_message = mesh.send_message
M.on_mesh_message = mesh.on_message
M.mesh_config = mesh.config
-- pub/sub across the mesh (README, "Pub/sub")
M.subscribe = mesh.subscribe
M.publish = mesh.publish
M.history = mesh.history
M.recover = mesh.recover
-- mesh authentication (README, "Securing the mesh")
M.mesh_auth = mesh.auth
M.mesh_access = mesh.access
M.key_node_id = mesh.key_node_id

--- Turns the mesh off for this process: servers refuse /ws/p2p and no
--- peers are dialed (the CLI's --disable-registry).
function M.disable_registry()
  mesh.disable()
end

-- presence across the mesh (README, "Presence")
M.presence = mesh.presence
M.on_presence = mesh.on_presence

-- rn.SHUTDOWN_GRACE (seconds rn.stop() and server:close() wait for close
-- handshakes and handlers) reads and writes server.settings.shutdown_grace,
-- so the value is held where it is used, not here.
local settings = server.settings
return setmetatable(M, {
  __index = function(_, k)
    if k == "SHUTDOWN_GRACE" then return settings.shutdown_grace end
  end,
  __newindex = function(t, k, v)
    if k == "SHUTDOWN_GRACE" then settings.shutdown_grace = v else rawset(t, k, v) end
  end,
})
