-- relaynet.server: the HttpServer class (listen and its methods), the
-- WebSocket functions across servers, and the server side of the events:
-- HTTP requests, connections opening on a server, closing.
--
-- Built-in endpoints register here instead of being matched in dispatch:
-- M.mount(path, { on_open, on_message, on_close }) claims a WebSocket path
-- on every mesh-enabled server, and M.builtin(fn) runs fn(server) for each
-- new mesh-enabled server (to add its HTTP routes). relaynet.rpc registers
-- /rpc and the views this way, and relaynet.mesh (mesh/transport.lua)
-- /ws/p2p.

local core = require("relaynet.core")
local sched = require("relaynet.sched")
local http = require("relaynet.http")
local mesh = require("relaynet.mesh")
local conn = require("relaynet.conn")
local tls = require("relaynet.tls")
local json = require("relaynet.json")
local log = require("relaynet.log")
local metrics = require("relaynet.metrics")

local M = {}

local fail, count, check_msg = conn.fail, conn.count, conn.check_msg
local conns = conn.by_id
local handle = sched.handle
local CONNECT_LABEL, CLOSE_LABEL = "connect handler for ", "close handler for "

-- Protected mode: until the mesh has credentials, a mesh-enabled server
-- answers these paths to loopback peers only (403 with an explanation to
-- any other address; csrc/rn_protect.c). HttpServer.listen{ mesh = false }
-- mounts none of them; insecure_mesh = true (or mesh_config.insecure_mesh,
-- the CLI's --insecure-mesh) serves them to everyone and logs a warning.
M.PROTECTED_PATHS = { "/ws/p2p", "/rpc", "/status", "/peers", "/routes", "/registry", "/metrics" }

-- With credentials, protected mode lifts path by path: /ws/p2p once the mesh
-- authenticates its links (rn.mesh_auth), and JSON-RPC and the views once a
-- bearer token is set (rn.set_rpc_token, --rpc-token): they then answer
-- every address, and need "Authorization: Bearer <token>" from all of them.
M.TOKEN_PATHS = { "/rpc", "/status", "/peers", "/routes", "/registry", "/metrics" }

--- Settings read at the moment they apply; the facade exposes
--- shutdown_grace as rn.SHUTDOWN_GRACE (read and write).
M.settings = { shutdown_grace = 5, rpc_token = nil }

--- Sets the bearer token JSON-RPC and the mesh views require on servers
--- that listen after this (nil: none). It must be 16 to 256 bytes.
function M.set_rpc_token(token)
  if token ~= nil and (type(token) ~= "string" or #token < 16 or #token > 256) then
    error("relaynet.set_rpc_token: the token must be a string of 16 to 256 bytes", 2)
  end
  M.settings.rpc_token = token
end

-- The paths of protected mode a new server keeps (see PROTECTED_PATHS).
local function protected_paths(token)
  local authenticated = mesh.authenticated and mesh.authenticated()
  local keep = {}
  for _, p in ipairs(M.PROTECTED_PATHS) do
    local lifted = (p == "/ws/p2p" and authenticated) or (token and p ~= "/ws/p2p")
    if not lifted then keep[#keep + 1] = p end
  end
  return keep
end

-- state of the current run (M.reset empties it) ---------------------------------

local servers = {}         -- server id -> server
local live = {}            -- open server objects: the one check on the send path
local http_inflight = 0

-- registrations (for the whole process) ----------------------------------------

local mounts = {}   -- path -> { on_open, on_message, on_close }
local builtins = {} -- fn(server), run for each mesh-enabled server

--- Claims WebSocket `path` on mesh-enabled servers. entry.on_open(rec, info)
--- runs when a connection opens there (it may close it); then every message
--- goes to entry.on_message(rec, data, binary) and the close to
--- entry.on_close(rec, code, reason). These connections are not the user's:
--- they never reach the server's connect/message/close handlers.
function M.mount(path, entry)
  mounts[path] = entry
end

--- Runs fn(server) for every mesh-enabled server as it starts listening.
function M.builtin(fn)
  builtins[#builtins + 1] = fn
end

-- servers -----------------------------------------------------------------------

local Server = {}
Server.__index = Server
Server.__name = "relaynet.HttpServer"
M.Server = Server

local function check_server(s, fname)
  if live[s] then return s end
  if getmetatable(s) == Server then
    if s._closed then error("relaynet." .. fname .. ": server " .. s.id .. " is closed", 3) end
    return s
  end
  local srv = servers[s]
  if not srv then
    error("relaynet." .. fname .. ": unknown server " .. tostring(s), 3)
  end
  return srv
end

local function listen(opts, websocket)
  if math.type(opts) == "integer" or type(opts) == "string" then
    local port = math.tointeger(tonumber(opts))
    if not port then error("relaynet.HttpServer.listen: port must be an integer", 3) end
    opts = { port = port, websocket = websocket }
  elseif type(opts) ~= "table" then
    error("relaynet.HttpServer.listen: expected a port number or an options table", 3)
  end
  if opts.id ~= nil and (type(opts.id) ~= "string" or opts.id == "") then
    error("relaynet.HttpServer.listen: id must be a non-empty string", 3)
  end
  if opts.id and servers[opts.id] then
    error("relaynet.HttpServer.listen: a server with id " .. opts.id .. " is already running", 3)
  end
  local copt = {}
  for k, v in pairs(opts) do copt[k] = v end
  if copt.websocket == nil then copt.websocket = true end
  local insecure = opts.insecure_mesh
  if insecure == nil then insecure = mesh.config.insecure_mesh end
  local token = opts.rpc_token
  if token == nil then token = M.settings.rpc_token end
  if opts.mesh ~= false then
    if token then copt.token, copt.token_paths = token, M.TOKEN_PATHS end
    if not insecure then copt.protected_paths = protected_paths(token) end
  end
  copt.rpc_token = nil
  -- websocket = nil (the default): an upgrade is accepted on a mounted path
  -- (/ws/p2p, /rpc on a mesh server), and on every path once the script
  -- sets a connect, message or close handler (Server:on); anything else is
  -- answered 404, so a dial to the wrong path fails visibly. websocket =
  -- true accepts every path at once (a server that only pushes with
  -- ws_send/ws_broadcast and sets no handler); false refuses upgrades.
  if opts.websocket == nil then
    local paths = {}
    if opts.mesh ~= false then
      for path in pairs(mounts) do paths[#paths + 1] = path end
    end
    copt.ws_paths = paths
  end
  copt.tls = tls.server_tls(opts)
  local box, err, code = core.listen(copt)
  if not box then return nil, err, code end
  local port = box:port()
  local id = opts.id or ("server_" .. port)
  if servers[id] then -- an explicit id elsewhere took this port's name
    box:close()
    error("relaynet.HttpServer.listen: a server with id " .. id .. " is already running", 3)
  end
  local self = setmetatable({
    id = id,
    port = port,
    host = opts.host or "0.0.0.0",
    _box = box,
    _routes = http.new_routes(),
    _handlers = {},
    _conns = {},
    _max_static = opts.max_static_file or 16 * 1024 * 1024,
  }, Server)
  servers[self.id] = self
  live[self] = true
  -- OPEN and HTTP events of this server carry this object (core: set_owner)
  box:set_owner(self)
  self._mesh = opts.mesh ~= false
  if self._mesh then
    for _, fn in ipairs(builtins) do fn(self) end
    if insecure then
      log.warn("WARNING: server %s serves the mesh (%s) to every address without authentication (insecure_mesh)",
        id, table.concat(M.PROTECTED_PATHS, ", "))
    end
  end
  if log.enabled.info then
    local host = self.host
    if host:find(":", 1, true) then host = "[" .. host .. "]" end
    log.info("listening on %s://%s:%d", copt.tls and "https" or "http", host, port)
  end
  return self
end

function Server:route(method, path, handler)
  check_server(self, "route")
  http.add_route(self._routes, method, path, handler)
  return self
end

--- Serves files from folder `dir` under URL prefix `prefix` (GET and HEAD).
function Server:static(prefix, dir)
  check_server(self, "static")
  if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
    error("relaynet.static: prefix must start with '/'", 2)
  end
  if type(dir) ~= "string" then error("relaynet.static: dir must be a string", 2) end
  if prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
  local h = http.static_handler(dir, prefix, self._max_static)
  http.add_route(self._routes, "GET", prefix .. "*", h)
  if prefix ~= "/" then
    http.add_route(self._routes, "GET", prefix:sub(1, -2), function()
      return 301, "", { location = prefix }
    end)
  end
  return self
end

local EVENTS = { connect = true, message = true, close = true }

function Server:on(event, fn)
  check_server(self, "on")
  if not EVENTS[event] then
    error("relaynet.on: event must be 'connect', 'message' or 'close'", 2)
  end
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.on: handler must be a function", 2) end
  self._handlers[event] = fn
  if fn then self._box:ws_accept_any() end
  return self
end

-- ws_send on a closed server is not misuse: server:close() and rn.stop()
-- close its WebSockets and then run their close (and late message) handlers,
-- and a handler that tells the other peers (a chat's "left") must not raise
-- there. The send fails like a send on any closing connection: ECLOSED while
-- the connection is closing, ENOTCONN once it is gone.
local function check_sender(s, fname)
  if getmetatable(s) == Server and s._closed then return s end
  return check_server(s, fname)
end

Server.ws_send = conn.server_sender(live, check_sender)

function Server:ws_send_async(conn_id, msg, binary, timeout)
  check_server(self, "ws_send_async")
  check_msg(msg, "ws_send_async")
  local rec = self._conns[conn_id]
  if not rec then return fail("ENOTCONN", "no open connection %s on %s", tostring(conn_id), self.id) end
  return conn.send_async(rec, msg, binary, timeout, "ws_send_async")
end

-- ws_broadcast on a closed server is not misuse either, for the same
-- reason (and for timers that broadcast while rn.stop() shuts down): it
-- reaches no one and returns 0.
function Server:ws_broadcast(msg, binary, except)
  check_sender(self, "ws_broadcast")
  check_msg(msg, "ws_broadcast")
  if self._closed then return 0 end
  local ex = except and self._conns[except] and conn.box(self._conns[except]) or nil
  return core.broadcast(self._box, msg, binary, ex)
end

-- Pub/sub for WebSocket clients (README, "Pub/sub"): rec.pubsub holds the
-- connection's subscriptions, pattern -> handle (mesh/pubsub.lua); M.forget
-- ends them when the connection closes.

--- Forwards publishes matching `topic` (a pattern) to connection conn_id as
--- text frames {"topic":T,"from":NODE,"message":M}: true (also when it was
--- subscribed already) | nil, msg, code: ENOTCONN, or ELIMIT past
--- mesh_config.max_subscriptions_per_connection or the node's bounds. A
--- frame the connection's queue cannot take is dropped (at most once).
--- opts.presence (any JSON value) makes the connection a presence member of
--- `topic` (an exact topic), with its connection id as member id, until it
--- unsubscribes or closes (README "Presence"); EINVAL for info that cannot
--- be sent. Subscribing again to the same topic changes nothing.
--- opts.recover = {node, epoch, offset} (an exact topic; README "History
--- and recovery") first sends what `node` published to `topic` after that
--- position, then the live frames (mesh/history.lua, recover_frames).
function Server:subscribe(conn_id, topic, opts)
  check_server(self, "subscribe")
  if type(topic) ~= "string" then error("relaynet.subscribe: topic must be a string", 2) end
  local ok, why = mesh.check_pattern(topic)
  if not ok then error("relaynet.subscribe: EINVAL: " .. why, 2) end
  local rec = self._conns[conn_id]
  if not rec or rec.closed then return fail("ENOTCONN", "no open connection %s on %s", tostring(conn_id), self.id) end
  local subs = rec.pubsub
  if subs and subs[topic] then return true end
  local n = 0
  if subs then for _ in pairs(subs) do n = n + 1 end end
  local max = mesh.config.max_subscriptions_per_connection
  if n >= max then
    return fail("ELIMIT", "connection %s has %d subscriptions already (mesh_config.max_subscriptions_per_connection)",
      tostring(conn_id), n)
  end
  local box = rec.box
  local frame_fn = function(frame) core.conn_send(box, frame, false) end
  local start
  if type(opts) == "table" and opts.recover ~= nil then
    -- Recovered frames are sent later, from a coroutine: not after a close.
    frame_fn, start = mesh.recover_frames(topic, opts.recover, function(frame)
      if rec.closed then return false end -- the recovery stops
      core.conn_send(box, frame, false)
      return true
    end)
  end
  local h, err, code = mesh.subscribe_frames(topic, frame_fn, "relaynet.subscribe", opts, rec.id)
  if not h then return nil, err, code end
  -- A plain subscription's frames may go out with those of the others in
  -- one core.conn_send_many (mesh/pubsub.lua): frame_fn is just conn_send.
  if not start and not (type(opts) == "table" and opts.presence ~= nil) then h.box = box end
  if not subs then subs = {}; rec.pubsub = subs end
  subs[topic] = h
  if start then start() end
  return true
end

--- Stops forwarding `topic` (the pattern given to subscribe) to conn_id:
--- true, or false when it was not subscribed.
function Server:unsubscribe(conn_id, topic)
  check_sender(self, "unsubscribe") -- a close handler may unsubscribe while its server shuts down
  local rec = self._conns[conn_id]
  local subs = rec and rec.pubsub
  local h = subs and subs[topic]
  if not h then return false end
  subs[topic] = nil
  return h:unsubscribe()
end

function Server:ws_connections()
  check_server(self, "ws_connections")
  local list = {}
  for id in pairs(self._conns) do list[#list + 1] = id end
  table.sort(list, function(a, b) return #a < #b or (#a == #b and a < b) end)
  return list
end

function Server:connection_count()
  return count(self._conns)
end

--- This server's refusal counters (see rn.stats().limits), its TCP
--- connections counted per address and its open WebSockets.
function Server:stats()
  check_server(self, "stats")
  return self._box:stats()
end

--- True once close() was called (the one server method that never raises
--- on a closed server, besides close itself).
function Server:is_closed()
  return self._closed == true
end

--- Stops accepting (new requests and upgrades get 503) and closes this
--- server's WebSockets with 1001. libwebsockets 4.1.6 cannot close a
--- listening vhost, so the port itself stays bound until rn.run() returns.
function Server:close()
  if self._closed then return false end
  self._closed = true
  live[self] = nil
  self._box:close()
  servers[self.id] = nil
  if next(self._conns) == nil then
    self:_destroy()
  else
    for _, rec in pairs(self._conns) do conn.close(rec, 1001, "server closing") end
    self._destroy_timer = sched.after(M.settings.shutdown_grace, function() self:_destroy() end)
  end
  return true
end

function Server:_destroy()
  if self._destroyed then return end
  self._destroyed = true
  if self._destroy_timer then self._destroy_timer.cancel() end
  self._box:close()
  self._box:set_owner(nil) -- its late events find no server: refused as closed
end

Server.__close = function(self) self:close() end

function Server:__tostring()
  return "relaynet.HttpServer " .. self.id .. (self._closed and " (closed)" or "")
end

-- HttpServer: every method also works as a function taking the server id first.
local HttpServer = { listen = function(opts, websocket) return listen(opts, websocket) end }
for _, name in ipairs({ "route", "static", "on", "ws_send", "ws_send_async", "ws_broadcast",
  "ws_connections", "connection_count", "close", "subscribe", "unsubscribe" }) do
  local method = Server[name]
  HttpServer[name] = function(server_id, ...)
    return method(check_server(server_id, name), ...)
  end
end
M.HttpServer = HttpServer

-- WebSocket: connection-level functions across every server.
local WebSocket = {}

WebSocket.send = conn.send_by_id

function WebSocket.send_async(conn_id, msg, binary, timeout)
  check_msg(msg, "WebSocket.send_async")
  local rec = conns[conn_id]
  if not rec then return fail("ENOTCONN", "no open connection %s", tostring(conn_id)) end
  return conn.send_async(rec, msg, binary, timeout, "WebSocket.send_async")
end

function WebSocket.broadcast(msg, binary)
  check_msg(msg, "WebSocket.broadcast")
  return core.broadcast(nil, msg, binary)
end

-- The close codes a script may send (the core's conn:close enforces the
-- same rule; checked here too so that misuse raises even when the
-- connection is already gone).
local function check_close(code, reason)
  if code ~= nil then
    if math.type(code) ~= "integer" or not (code == 1000 or code == 1001 or code == 1008 or code == 1011
        or (code >= 3000 and code <= 4999)) then
      error("relaynet.WebSocket.close: close code must be 1000, 1001, 1008, 1011 or 3000-4999", 3)
    end
  end
  if reason ~= nil and (type(reason) ~= "string" or #reason > 123) then
    error("relaynet.WebSocket.close: reason must be a string of at most 123 bytes", 3)
  end
end

function WebSocket.close(conn_id, code, reason)
  check_close(code, reason)
  local rec = conns[conn_id]
  if not rec or rec.closed then return fail("ENOTCONN", "no open connection %s", tostring(conn_id)) end
  return conn.close(rec, code or 1000, reason or "")
end

function WebSocket.connections()
  local list = {}
  for id, rec in pairs(conns) do
    if rec.server then list[#list + 1] = id end
  end
  table.sort(list, function(a, b) return #a < #b or (#a == #b and a < b) end)
  return list
end

function WebSocket.connection_count()
  local n = 0
  for _, rec in pairs(conns) do
    if rec.server then n = n + 1 end
  end
  return n
end

--- Information about one connection: id, state, queued bytes, peer, path.
function WebSocket.info(conn_id)
  local rec = conns[conn_id]
  if not rec then return fail("ENOTCONN", "no open connection %s", tostring(conn_id)) end
  local info = conn.info(rec)
  info.id = rec.id
  info.num = nil
  info.server = rec.server and rec.server.id or nil
  return info
end
M.WebSocket = WebSocket

-- events (called by relaynet.runtime's dispatch) -------------------------------------

-- The access log's form of a path: whitespace, quotes and control
-- characters as %XX, so that a record stays one line of space-separated
-- fields.
local function access_path(p)
  return (tostring(p):gsub('[%c%s"]', function(ch) return string.format("%%%02X", ch:byte()) end))
end

local hrtime = core.hrtime

--- EV_HTTP: answers one request in its own coroutine (503 while stopping).
--- Every answer is counted by status (relaynet.metrics) and, with the
--- access log on, logged: peer, method, path, status, body bytes and the
--- milliseconds from the complete request to the response.
function M.on_http(reqbox, srv, stopping)
  local info = reqbox:info()
  local t0 = log.access_on and hrtime()
  http_inflight = http_inflight + 1
  sched.go(function()
    local status, body, headers
    if not srv or stopping then
      status, body = 503, "service unavailable\n"
    else
      local handler, st, allow = http.match(srv._routes, info.method, info.path)
      if not handler then
        status, body = st, (http.REASON[st] or "error"):lower() .. "\n"
        if allow then headers = { allow = allow } end
      else
        info.query, info.query_string = http.parse_args(info.query)
        info.server = srv.id
        info.header = function(_, name)
          name = name:lower()
          return info.headers[name] or reqbox:header(name)
        end
        local ok, a, b, c = xpcall(handler, debug.traceback, info)
        if ok then
          ok, status, body, headers = pcall(http.normalize, json, a, b, c)
          if not ok then
            sched.report("route " .. info.method .. " " .. info.path .. ": " .. tostring(status))
            status, body, headers = 500, "internal server error\n", nil
          end
        else
          sched.report("route " .. info.method .. " " .. info.path .. ": " .. tostring(a))
          status, body = 500, "internal server error\n"
        end
      end
    end
    http_inflight = http_inflight - 1
    local ok, err = pcall(reqbox.respond, reqbox, status, headers, body)
    if not ok then
      sched.report("route " .. info.method .. " " .. info.path .. ": " .. tostring(err))
      status, body = 500, "internal server error\n"
      pcall(reqbox.respond, reqbox, status, nil, body)
    end
    metrics.http_request(status)
    if t0 then
      log.access("access http peer=%s method=%s path=%s status=%s bytes=%d ms=%.3f", tostring(info.peer),
        access_path(info.method), access_path(info.path), tostring(status), type(body) == "string" and #body or 0,
        (hrtime() - t0) * 1000)
    end
  end)
end

--- EV_OPEN of an accepted connection on server srv (nil once the server
--- is gone), at `path`, from `peer`: makes its record and hands it to a
--- mounted endpoint or to the server's connect handler. A plain
--- connection's record gets rec.handlers (the server's handler table),
--- which is what dispatch reads for every message.
function M.on_open(box, num, srv, path, peer, stopping)
  local rec = conn.new(box, num, srv, nil)
  if not srv or stopping then
    conn.close(rec, 1001, "server closing")
    return
  end
  local info = { id = rec.id, state = "open", queued = 0, peer = peer, path = path, client = false,
    port = srv.port, server = srv.id }
  -- The access log's record of the connection is written when it closes.
  if log.access_on then rec.access = { hrtime(), peer, path } end
  local mount = srv._mesh and mounts[path]
  if mount then
    rec.mount = mount
    mount.on_open(rec, info)
    return
  end
  srv._conns[rec.id] = rec
  rec.handlers = srv._handlers
  local h = srv._handlers.connect
  if h then handle(CONNECT_LABEL, rec.id, h, 2, rec.id, info) end
end

--- The record of a closed connection leaves its server's list (called before
--- anyone waiting on it is woken). With the access log on when it opened,
--- the connection's record is written: peer, path, duration, messages in
--- and out, close code (rec.close_code).
function M.forget(rec)
  rec.server._conns[rec.id] = nil
  local subs = rec.pubsub
  if subs then
    rec.pubsub = nil
    for _, h in pairs(subs) do
      h.leave_reason = "closed" -- a presence member leaves "closed" (mesh/presence.lua)
      h:unsubscribe()
    end
  end
  local a = rec.access
  if a then
    rec.access = nil
    local ci = conn.info(rec)
    log.access("access ws peer=%s path=%s ms=%.1f in=%d out=%d code=%s", tostring(a[2]), access_path(a[3]),
      (hrtime() - a[1]) * 1000, ci.messages_in or 0, ci.messages_out or 0, tostring(rec.close_code))
  end
end

--- EV_CLOSE of a plain server connection (after M.forget): frees a closing
--- server with no connections left, then runs the close handler.
function M.on_close(rec, code, reason)
  local srv = rec.server
  if srv._closed and next(srv._conns) == nil then srv:_destroy() end
  local h = srv._handlers.close
  if h then handle(CLOSE_LABEL, rec.id, h, 3, rec.id, code, reason) end
end

-- the run ------------------------------------------------------------------------

--- True while a server is open (the loop keeps running).
function M.any()
  return next(servers) ~= nil
end

function M.count()
  return count(servers)
end

function M.inflight()
  return http_inflight
end

--- Stops every server (shutdown).
function M.close_all()
  for _, srv in pairs(servers) do srv:close() end
end

--- Forgets every server (the end of a run).
function M.reset()
  servers = {}
  http_inflight = 0
end

return M
