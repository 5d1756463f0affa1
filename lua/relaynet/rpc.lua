-- relaynet.rpc: JSON-RPC and the views of a mesh-enabled server, registered
-- with relaynet.server when this module loads (the facade loads it):
--   /rpc      WebSocket: JSON-RPC, one request or batch per text frame;
--   POST /rpc JSON-RPC over HTTP;
--   GET /status, /peers, /registry, /routes: the mesh's views as JSON;
--   GET /metrics: relaynet.metrics' page (Prometheus text format), with
--   the collectors below.
-- The mesh mounts its own path, /ws/p2p (relaynet.mesh.transport). Every
-- one of these paths is in server.PROTECTED_PATHS.

local sched = require("relaynet.sched")
local mesh = require("relaynet.mesh")
local json = require("relaynet.json")
local conn = require("relaynet.conn")
local server = require("relaynet.server")
local jsonrpc = require("relaynet.jsonrpc")
local core = require("relaynet.core")
local metrics = require("relaynet.metrics")
-- JSON-RPC subscribe, unsubscribe and publish (README "Pub/sub"): the
-- module adds them to jsonrpc.methods when it loads.
require("relaynet.rpc_pubsub")

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
  srv:route("GET", "/metrics", function()
    return 200, metrics.render(), { ["content-type"] = metrics.CONTENT_TYPE }
  end)
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

-- /metrics: the families read from the core, the servers and the mesh when
-- the page is built (relaynet.metrics keeps the HTTP and call counters).

-- HTTP answers the core gives before any Lua runs, by status: the
-- refusal counter each adds to (core.stats()).
local CORE_HTTP = {
  { 401, "token_refused" }, { 403, "protected_refused" }, { 408, "http_body_timeouts" },
  { 413, "http_body_too_large" }, { 503, "buffer_body_refusals" }, { 503, "ws_refused_full" },
}

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

metrics.collector(function(page)
  local accepted, dialed, queued = conn.totals()
  page:gauge("relaynet_websocket_connections", "Open WebSocket connections, accepted (in) and dialed (out).",
    { { { { "direction", "in" } }, accepted }, { { { "direction", "out" } }, dialed } })
  local t = core.traffic()
  page:counter("relaynet_websocket_messages_total", "Whole WebSocket messages received (in) and written (out).",
    { { { { "direction", "in" } }, t.messages_in }, { { { "direction", "out" } }, t.messages_out } })
  page:counter("relaynet_websocket_bytes_total", "Payload bytes of those messages.",
    { { { { "direction", "in" } }, t.bytes_in }, { { { "direction", "out" } }, t.bytes_out } })
  page:gauge("relaynet_queued_bytes", "Bytes waiting in WebSocket send queues.", queued)
  local lim = core.stats()
  page:counter("relaynet_slow_consumer_closes_total",
    "WebSockets closed with 1008 as slow consumers: over send_high_water for slow_timeout (timeout), or to "
      .. "make room in max_buffered (evicted).",
    { { { { "reason", "timeout" } }, lim.ws_slow_closes }, { { { "reason", "evicted" } }, lim.buffer_evictions } })
  local refusals = {}
  for _, k in ipairs(sorted_keys(lim)) do refusals[#refusals + 1] = { { { "reason", k } }, lim[k] } end
  page:counter("relaynet_refusals_total", "Refusals by the core's bounds, by counter (README, Limits).", refusals)
  local http = metrics.http_counts()
  for _, e in ipairs(CORE_HTTP) do http[e[1]] = (http[e[1]] or 0) + (lim[e[2]] or 0) end
  local list = {}
  for _, st in ipairs(sorted_keys(http)) do
    if http[st] > 0 then list[#list + 1] = { { { "status", st } }, http[st] } end
  end
  page:counter("relaynet_http_requests_total",
    "HTTP requests answered, by status (with the core's own refusals: 401, 403, 408, 413, 503).", list)
  page:gauge("relaynet_http_requests_in_flight", "HTTP requests whose handler has not answered yet.",
    server.inflight())
  local st = mesh.status()
  local s = st.stats
  page:gauge("relaynet_mesh_links", "Mesh links up.", s.links)
  local rtts = {}
  for _, p in ipairs(st.peers) do
    if p.rtt then rtts[#rtts + 1] = { { { "peer", p.id }, { "direction", p.direction } }, p.rtt } end
  end
  page:gauge("relaynet_mesh_link_rtt_seconds", "Round-trip time of the last ping on each mesh link.", rtts)
  page:gauge("relaynet_mesh_routes", "Destinations (nodes) this node has a route to.", s.destinations)
  page:gauge("relaynet_mesh_route_entries", "Routes held over every neighbour.", s.route_entries)
  page:gauge("relaynet_mesh_calls_in_flight", "Remote calls this node waits for.", s.pending_calls)
  page:mesh_families(s) -- pub/sub, presence, history, call_any (metrics.MESH_FAMILIES)
end)

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
