-- relaynet.mesh: the peer-to-peer mesh. Nodes link over WebSocket
-- (/ws/p2p), learn routes with a path-vector protocol, and forward
-- server calls hop by hop. docs/PROTOCOL.md describes the wire protocol.
--
-- This file is the mesh's public API, its configuration and its views; the
-- work is done in the files beside it (docs/DESIGN.md, "The mesh's files"):
-- state.lua (shared state and config), ident.lua (ids), wire.lua (envelopes),
-- auth.lua (credentials, the handshake's proofs, signed route entries,
-- access rules), routes.lua (routing and adverts), serve.lua (running
-- exposed methods, dedup), calls.lua (calls, relaying, route messages),
-- pubsub.lua and pubsub_match.lua (topics across the mesh),
-- link.lua (the Link, health) and transport.lua (/ws/p2p, dialing peers,
-- the link transports).
--
-- Contract with the rest of relaynet:
--  * relaynet.runtime calls M.start() when rn.run() starts (the mesh then
--    mounts /ws/p2p on relaynet.server and dials its peers) and M.reset()
--    when it has ended. Link traffic enters and leaves the mesh in
--    transport.lua only.
--  * Everything that waits goes through relaynet.sched (remote_call waits
--    for its response or its timeout; link maintainers wait for closes).
--  * Per-run state (links, routes, calls in flight) is dropped by M.reset()
--    when rn.run() ends; the node id, exposed servers and configured peers
--    persist.

local json = require("relaynet.json")
local sched = require("relaynet.sched")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local A = require("relaynet.mesh.auth")
local R = require("relaynet.mesh.routes")
local C = require("relaynet.mesh.calls")
local B = require("relaynet.mesh.balance")
local U = require("relaynet.mesh.pubsub")
local HI = require("relaynet.mesh.history")
local L = require("relaynet.mesh.link")
local T = require("relaynet.mesh.transport")

local is_name = W.is_name

local M = {}

M.PROTOCOL_VERSION = L.PROTOCOL_VERSION

--- Tunables (seconds unless noted), documented in README.md and in
--- mesh/state.lua, where the table lives: every mesh file reads it there.
M.config = S.config

--- The error codes of remote_call; see calls.lua.
M.ERROR_CODES = C.ERROR_CODES

-- identity -------------------------------------------------------------------------

M.node_id = I.node_id
M.set_node_id = I.set_node_id

--- The node id derived from a 32-byte Ed25519 public key: "k" and the
--- first 20 hex digits of its SHA-256 (PROTOCOL.md, "Node keys").
M.key_node_id = A.key_node_id

-- authentication -------------------------------------------------------------------

--- mesh_auth{ key = FILE, trust = FILE, secret = FILE } -> true | nil, msg, code
--- Sets this node's mesh credentials (each field optional; {} removes them
--- all): an Ed25519 key (relaynet keygen), a trust file of "NODE_ID
--- PUBLIC_KEY" lines (it needs the key; it is then the list of the nodes
--- this one accepts), a cluster secret file (at least 16 bytes once
--- trimmed). With any of them the node speaks protocol version 2 and links
--- only to peers that prove the same kind of credentials. EKEY for a key
--- that cannot be used, EINVAL for a bad trust or secret file (with the
--- line). See README, "Securing the mesh".
function M.auth(opts)
  return A.configure(opts)
end

--- True when this node has mesh credentials (a key or a secret): every
--- link is authenticated.
M.authenticated = A.enabled

--- mesh_access(rules): { [node id or "*"] = { "server.method", "server.*",
--- "*" } } says which nodes may call which methods here; nil (the default)
--- lets every node call everything. A refused call gets EACCES.
function M.access(rules)
  return A.set_access(rules)
end

-- enabling ------------------------------------------------------------------------

M.enabled = function() return S.enabled end

--- Turns the mesh off for good: inbound links are refused and configured
--- peers are not dialed.
function M.disable()
  S.enabled = false
end

-- calls and messages --------------------------------------------------------------

--- remote_call(node_id, server_name, method, args, timeout) -> result | nil, msg, code
--- With cfg.max_calls calls to other nodes already waiting on this node it
--- fails at once with EBUSY; arguments JSON cannot hold (functions, NaN,
--- infinities, cycles) fail with EINVAL before anything is sent. Node "*"
--- (never a node id) is call_any: any node exposing the server.
function M.remote_call(node, server, method, args, timeout)
  C.check_call_args(node, server, method, args, timeout, 3)
  if node == "*" then return B.call(nil, server, method, args, timeout) end
  return C.call(nil, node, server, method, args, timeout)
end

--- call_any(server_name, method, args, timeout) -> result | nil, msg, code
--- Calls server.method on one of the nodes exposing it (this one included),
--- failing over to another only when the first provably did not run it or
--- can no longer answer (mesh/balance.lua; README "Load-balanced calls").
function M.call_any(server, method, args, timeout)
  B.check_args(server, method, args, timeout, 3)
  return B.call(nil, server, method, args, timeout)
end

--- remote_call on behalf of a client connection (JSON-RPC): `owner` is a
--- table that stands for the connection; M.cancel_calls(owner) fails its
--- calls still waiting with ECANCELED.
function M.owned_call(owner, node, server, method, args, timeout)
  C.check_call_args(node, server, method, args, timeout, 3)
  if type(owner) ~= "table" then error("relaynet.mesh.owned_call: owner must be a table", 2) end
  if node == "*" then return B.call(owner, server, method, args, timeout) end
  return C.call(owner, node, server, method, args, timeout)
end

--- Fails every call of `owner` still waiting with ECANCELED (its client
--- connection closed). Returns how many.
M.cancel_calls = C.cancel_calls

--- Sets the handler of route_message payloads: fn(from, payload), or nil.
function M.on_message(fn)
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.on_mesh_message: expected a function", 2) end
  S.message_handler = fn
end

--- Sends `payload` to `node`'s message handler: true | nil, msg, "ENOROUTE".
function M.send_message(node, payload)
  if type(node) ~= "string" then error("relaynet.send_message: node_id must be a string", 2) end
  return C.send_message(node, payload)
end

-- pub/sub (mesh/pubsub.lua; README "Pub/sub") --------------------------------------

local PR = require("relaynet.mesh.presence")

-- The presence info of subscribe's options (nil: none); raises on options
-- that are not a table.
local function presence_opt(opts, what)
  if opts == nil then return nil end
  if type(opts) ~= "table" then error(what .. ": options must be a table", 3) end
  return opts.presence
end

--- subscribe(pattern, fn(message, topic, from) [, {presence = info}]) ->
--- handle | nil, msg, "ELIMIT" (or "EINVAL" for presence info that cannot
--- be sent). The handle's :unsubscribe() ends it. Raises on a malformed
--- pattern, and on a pattern with wildcards when presence is given. With
--- presence the subscription is a member of the topic's presence
--- (mesh/presence.lua) until it ends.
function M.subscribe(pattern, fn, opts)
  local info = presence_opt(opts, "relaynet.subscribe")
  if info ~= nil then return PR.subscribe(pattern, fn, info, false, 2) end
  return U.subscribe(pattern, fn, false, 2)
end

--- The same for a WebSocket connection (server:subscribe): fn(frame, topic,
--- from, epoch, offset) gets the text frame {"topic":T,"from":NODE,"message":M}
--- (with history also "epoch" and "offset", given as arguments too); it is
--- called directly and must neither suspend nor raise. opts.presence makes
--- it a member, with id `member_id` (the connection's id).
function M.subscribe_frames(pattern, fn, what, opts, member_id)
  local info = presence_opt(opts, what or "relaynet.subscribe")
  if info ~= nil then return PR.subscribe(pattern, fn, info, true, 2, what, member_id) end
  return U.subscribe(pattern, fn, true, 2, what)
end

--- presence(topic [, timeout]) -> list of {node, id, info} across the mesh
--- | nil, msg, code (ETIMEDOUT, EAGAIN outside a coroutine, ELIMIT).
function M.presence(topic, timeout)
  return PR.presence(topic, timeout, 2)
end

--- on_presence(topic, fn(event, member)) -> handle | nil, msg, "ELIMIT".
--- event is "join" or "leave" (member.reason: "unsubscribed", "closed",
--- "node lost"); the handle's :unsubscribe() ends it.
function M.on_presence(topic, fn)
  return PR.on_presence(topic, fn, 2)
end

--- publish(topic, message) -> the number of nodes it was sent to (this node
--- counts when it has a matching subscription) | nil, msg, "EINVAL".
function M.publish(topic, msg)
  return U.publish(topic, msg, 2)
end

--- Checks a subscription pattern: its tokens | nil, why.
M.check_pattern = require("relaynet.mesh.pubsub_match").check_pattern

--- history(pattern, {size = N, ttl = T} | false) -> true | nil, msg, "ELIMIT"
--- Topics matching `pattern` published from this node keep their last N
--- messages, none older than T seconds (mesh/history.lua).
function M.history(pattern, opts)
  return HI.configure(pattern, opts, 2)
end

--- recover(topic, from_node, epoch, offset [, timeout]) -> the messages
--- after `offset` ({message, offset, topic}, in order) | nil, msg, code
--- (ERESYNC, ENOHISTORY, or remote_call's failures).
function M.recover(topic, node, epoch, offset, timeout)
  return HI.recover(topic, node, epoch, offset, timeout, 2)
end

--- For server:subscribe(conn_id, topic, {recover = pos}): the frame
--- function to subscribe with and the function that starts the recovery
--- (mesh/history.lua, recover_frames). Raises at the caller of
--- server:subscribe when `pos` is not a position.
function M.recover_frames(topic, pos, send)
  return HI.recover_frames(topic, pos, send, 3)
end

-- peers ---------------------------------------------------------------------------

--- The WebSocket URL a peer address stands for, or nil, why. Accepted:
--- ws(s)://HOST[:PORT][/PATH] (no path, or "/", means /ws/p2p),
--- http(s)://HOST[:PORT][/PATH] (the same with ws(s)://: the relaynet
--- design's `-add-peer http://localhost:8080`) and HOST:PORT (ws://). An
--- IPv6 host is written in brackets.
function M.peer_url(s)
  if type(s) ~= "string" then return nil, "a peer address must be a string" end
  local scheme, rest = s:match("^(%a+)://(.*)$")
  if not scheme then
    scheme, rest = "ws", s
    if not s:match("^%[?[%w%.%-:]+%]?:%d+$") then
      return nil, "not a peer address: " .. s .. " (expected ws://HOST:PORT/PATH, http://HOST:PORT or HOST:PORT)"
    end
  end
  scheme = scheme:lower()
  local ws = ({ ws = "ws", wss = "wss", http = "ws", https = "wss" })[scheme]
  if not ws then return nil, "not a peer address: " .. s .. " (the scheme must be ws, wss, http or https)" end
  local hostport, path = rest:match("^([^/?#]+)(.*)$")
  if not hostport then return nil, "not a peer address: " .. s .. " (no host)" end
  local host, port = hostport:match("^(%[[%x:%.]+%]):?(%d*)$")
  if not host then host, port = hostport:match("^([%w%.%-]+):?(%d*)$") end
  if not host or host == "" then return nil, "not a peer address: " .. s .. " (bad host)" end
  local n = math.tointeger(tonumber(port ~= "" and port or (ws == "wss" and "443" or "80")))
  if not n or n < 1 or n > 65535 then return nil, "not a peer address: " .. s .. " (the port must be 1..65535)" end
  if path == "" or path == "/" then path = "/ws/p2p" end
  if path:sub(1, 1) ~= "/" or path:find("[%s#]") then
    return nil, "not a peer address: " .. s .. " (bad path)"
  end
  return ws .. "://" .. host .. ":" .. n .. path
end

--- Adds a peer to dial (and keep dialing) while relaynet runs. `url` is any
--- form M.peer_url accepts; a string it refuses raises (misuse).
function M.add_peer(url)
  if type(url) ~= "string" then error("relaynet.add_peer: expected a peer URL string", 2) end
  local norm, why = M.peer_url(url)
  if not norm then error("relaynet.add_peer: " .. why, 2) end
  url = norm
  local p = S.peer_urls[url]
  if not p then
    p = { url = url, active = true }
    S.peer_urls[url] = p
  end
  p.active = true
  T.start_peer(p)
  return true
end

--- Stops dialing `url` and closes its link. False when it was not a peer.
function M.remove_peer(url)
  url = M.peer_url(url) or url
  local p = S.peer_urls[url]
  if not p then return false end
  p.active = false
  S.peer_urls[url] = nil
  if p.link then p.link:close(1000, "peer removed") end
  return true
end

--- Called when rn.run() starts: mounts /ws/p2p and dials the configured peers.
function M.start()
  S.started_at = os.time()
  S.run_started = W.now()
  T.mount()
  for _, p in pairs(S.peer_urls) do T.start_peer(p) end
  if next(S.peer_urls) then L.ensure_health() end
end

--- Called when rn.run() has ended: forgets links, routes and calls.
function M.reset()
  L.close_all()
  T.forget_peers()
  S.reset(W.now())
end

-- servers -------------------------------------------------------------------------

--- Exposes `methods` (name -> function) as server `name` on this node and
--- advertises it.
function M.expose(name, methods)
  if not is_name(name) or name:find("[%s%.]") then
    error("relaynet.expose: a server name is 1-128 characters without spaces or dots", 2)
  end
  if type(methods) ~= "table" then error("relaynet.expose: methods must be a table", 2) end
  S.exposed[name] = methods
  R.own_changed()
  return true
end

--- Withdraws server `name`. False when it was not exposed.
function M.unexpose(name)
  if not S.exposed[name] then return false end
  S.exposed[name] = nil
  R.own_changed()
  return true
end

-- views ---------------------------------------------------------------------------

--- Shows the counters in table `counters` (name -> number, read when the
--- status is built) in status().stats as `prefix`..name. The layers above
--- the mesh add theirs this way (relaynet.rpc adds JSON-RPC's as rpc_*), so
--- the mesh needs to know none of them.
function M.add_counters(prefix, counters)
  if type(prefix) ~= "string" or type(counters) ~= "table" then
    error("relaynet.mesh.add_counters: expected a prefix string and a table", 2)
  end
  S.counters[prefix] = counters
end

function M.peers()
  local list = json.array()
  for id, link in pairs(S.links) do
    list[#list + 1] = { id = id, url = link.url, direction = link.dir, rtt = link.rtt, since = link.since }
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  return list
end

-- The view of the selected route `b` to `dest`, as routes() lists it.
local function route_entry(dest, b)
  local path = { I.node_id() }
  for i = 1, #b.path do path[i + 1] = b.path[i] end
  -- topics: the node's subscription patterns (pub/sub), when it has any.
  local topics = b.topics and #b.topics > 0 and json.array(b.topics) or nil
  return { node = dest, next_hop = b.next, hops = #b.path, path = path, topics = topics }
end

--- Waits until this node has a route to `node` (this node itself has one
--- at once): returns its entry as in routes(), or nil, "ETIMEDOUT: ...",
--- "ETIMEDOUT" after `timeout` seconds (default 10). Suspends; checks every
--- 20 ms.
function M.wait_route(node, timeout)
  if type(node) ~= "string" then error("relaynet.wait_route: node_id must be a string", 2) end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("relaynet.wait_route: timeout must be a non-negative number of seconds", 2)
  end
  timeout = timeout or 10
  local deadline = W.now() + timeout
  while true do
    if node == I.node_id() then return { node = node, hops = 0, path = { node } } end
    local b = S.best[node]
    if b then return route_entry(node, b) end
    if W.now() >= deadline then
      return W.fail("ETIMEDOUT", "no route to node %s within %g s", node, timeout)
    end
    sched.sleep(math.min(0.02, math.max(0, deadline - W.now())))
  end
end

function M.routes()
  local list = json.array()
  for dest, b in pairs(S.best) do list[#list + 1] = route_entry(dest, b) end
  table.sort(list, function(a, b) return a.node < b.node end)
  return list
end

function M.registry()
  local list = json.array()
  for _, name in ipairs(R.local_servers()) do
    list[#list + 1] = { server = name, node = I.node_id(), hops = 0, ["local"] = true }
  end
  for dest, b in pairs(S.best) do
    for _, name in ipairs(b.servers) do
      list[#list + 1] = { server = name, node = dest, hops = #b.path, ["local"] = false }
    end
  end
  table.sort(list, function(a, b)
    if a.server ~= b.server then return a.server < b.server end
    return a.node < b.node
  end)
  return list
end

function M.status()
  local s = {}
  for k, v in pairs(S.stats) do s[k] = v end
  PR.status(s)
  s.pending_calls = S.n_calls
  s.forwarded_in_flight = S.n_forwards
  s.served_in_flight = S.n_served
  for prefix, counters in pairs(S.counters) do
    for k, v in pairs(counters) do s[prefix .. k] = v end
  end
  s.pending_links = S.n_pending
  s.links = W.count(S.links)
  s.route_entries, s.destinations, s.registry_entries = S.n_entries, S.n_dests, S.n_names
  s.dedup_entries = S.dedup_new_n + S.dedup_old_n
  U.status(s)
  HI.status()
  for k, v in pairs(HI.stats) do s["history_" .. k] = v end
  return {
    node_id = I.node_id(),
    version = A.enabled() and A.VERSION or M.PROTOCOL_VERSION,
    auth = A.mode(),
    public_key = A.public_key(),
    enabled = S.enabled,
    uptime = os.time() - S.started_at,
    servers = json.array(R.local_servers()),
    peers = M.peers(),
    routes = M.routes(),
    stats = s,
  }
end

return M
