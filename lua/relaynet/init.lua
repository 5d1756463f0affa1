-- relaynet: coroutine-aware HTTP and WebSocket networking on libuv and
-- libwebsockets. This is the Lua facade over the C core (relaynet.core).
--
-- Error convention: misuse (a wrong argument type, a closed object) raises;
-- operational failures (timeouts, closed connections, full queues) return
-- nil, "CODE: message", "CODE". Every code is listed in README.md.

local core = require("relaynet.core")
local sched = require("relaynet.sched")
local http = require("relaynet.http")
local mesh = require("relaynet.mesh")
local json = require("relaynet.json")
local cjson = require("cjson")

local M = { _VERSION = "relaynet 0.1.0" }

local EV_HTTP, EV_OPEN, EV_MESSAGE, EV_CLOSE = core.EV_HTTP, core.EV_OPEN, core.EV_MESSAGE, core.EV_CLOSE
local EV_WRITTEN, EV_DRAIN, EV_CONNERR = core.EV_WRITTEN, core.EV_DRAIN, core.EV_CONNERR
local EV_SIGNAL, EV_RESOLVED = core.EV_SIGNAL, core.EV_RESOLVED

M.DEFAULT_LIMITS = core.default_limits()

-- Protected mode: until the mesh has credentials, a mesh-enabled server
-- answers these paths to loopback peers only (403 with an explanation to
-- any other address; csrc/rn_protect.c). HttpServer.listen{ mesh = false }
-- mounts none of them; insecure_mesh = true (or mesh_config.insecure_mesh,
-- the CLI's --insecure-mesh) serves them to everyone and logs a warning.
M.PROTECTED_PATHS = { "/ws/p2p", "/rpc", "/status", "/peers", "/routes", "/registry" }
M.SHUTDOWN_GRACE = 5 -- seconds rn.stop() waits for close handshakes and handlers

-- state of the current run ----------------------------------------------------

local servers = {}        -- server id -> server
local servers_by_port = {} -- port -> server
local conns = {}          -- conn id string -> conn record
local conns_by_num = {}   -- C connection number -> conn record
local resolving = {}      -- ticket -> { co, id }
local http_inflight = 0
local running, stopping = false, false

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function fail(code, fmt, ...)
  return nil, code .. ": " .. string.format(fmt, ...), code
end

-- connection records ------------------------------------------------------------
-- rec = { id, num, box, server, client, closed, close_code, close_reason,
--         waiters = {ticket -> {co, id}} and drain = {co -> id} (made when a
--         send_async first waits: most connections never need them) }

local function new_rec(box, num, server, client)
  local rec = { id = "c" .. num, num = num, box = box, server = server, client = client }
  conns[rec.id] = rec
  conns_by_num[num] = rec
  return rec
end

local function forget_rec(rec)
  conns[rec.id] = nil
  conns_by_num[rec.num] = nil
  if rec.server then rec.server._conns[rec.id] = nil end
end

local function wake_drain(rec, ...)
  local list = rec.drain
  if not list then return end
  rec.drain = nil
  for co, id in pairs(list) do sched.wake(co, id, ...) end
end

-- Every connect, message and close handler runs through sched.handle: its own
-- pooled coroutine, exactly the arguments given (a count, then up to three),
-- errors reported as "<label><conn id>: ...".
local handle = sched.handle
local CONNECT_LABEL, MESSAGE_LABEL, CLOSE_LABEL = "connect handler for ", "message handler for ", "close handler for "

-- sending (shared by server connections and clients) -------------------------------

local function check_msg(msg, fname)
  local t = type(msg)
  if t ~= "string" and t ~= "number" then
    error("relaynet." .. fname .. ": message must be a string, got " .. t, 3)
  end
end

-- core.conn_send(box, msg, binary [, notify]) returns true, a ticket, nil,
-- msg, code (ECLOSED, EQUEUEFULL), or false when msg is not a string or a
-- number; the senders then raise with check_msg, so the common path makes
-- no extra call to check the message.
local conn_send = core.conn_send

local function rec_send_async(rec, msg, binary, timeout, what)
  if rec.closed then return fail("ECLOSED", "connection %s is closed", rec.id) end
  -- Back-pressure: wait while the queue is over its high-water mark.
  while rec.box:want_drain() do
    local ok, err, code = sched.wait(what, timeout, function(co, id)
      local list = rec.drain
      if not list then list = {}; rec.drain = list end
      list[co] = id
    end)
    if not ok then return nil, err, code end
    if rec.closed then return fail("ECLOSED", "connection %s closed while waiting to send", rec.id) end
  end
  local r, err, code = conn_send(rec.box, msg, binary, true)
  if r == true or r == nil then return r, err, code end
  -- r is a ticket: the message is queued; wait until it is written.
  local ticket = r
  local written, werr, wcode = sched.wait(what, timeout, function(co, id)
    local list = rec.waiters
    if not list then list = {}; rec.waiters = list end
    list[ticket] = { co, id }
  end)
  if rec.waiters then rec.waiters[ticket] = nil end
  if written then return true end
  if werr then return nil, werr, wcode end
  return fail("ECLOSED", "connection %s closed before the message was written", rec.id)
end

-- servers ---------------------------------------------------------------------------

local Server = {}
Server.__index = Server
Server.__name = "relaynet.HttpServer"

local live = {} -- open server objects: the one check on the send path

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
    opts = { port = port, websocket = websocket ~= false }
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
  if opts.mesh ~= false and not insecure then copt.protected_paths = M.PROTECTED_PATHS end
  local box, err, code = core.listen(copt)
  if not box then return nil, err, code end
  local port = box:port()
  local id = opts.id or ("server_" .. port)
  if servers[id] then -- an explicit id elsewhere took this port's name
    box:close()
    box:destroy()
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
  servers_by_port[port] = self
  self._mesh = opts.mesh ~= false
  if self._mesh then
    M._mesh_routes(self)
    if insecure then
      io.stderr:write("relaynet: WARNING: server ", id, " serves the mesh (/ws/p2p, /rpc, /status, /peers, ",
        "/routes, /registry) to every address without authentication (insecure_mesh)\n")
    end
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
  return self
end

function Server:ws_send(conn_id, msg, binary)
  if not live[self] then self = check_server(self, "ws_send") end
  local rec = self._conns[conn_id]
  if rec then
    local r, err, code = conn_send(rec.box, msg, binary)
    if r == false then check_msg(msg, "ws_send") end
    return r, err, code
  end
  check_msg(msg, "ws_send")
  return fail("ENOTCONN", "no open connection %s on %s", tostring(conn_id), self.id)
end

function Server:ws_send_async(conn_id, msg, binary, timeout)
  check_server(self, "ws_send_async")
  check_msg(msg, "ws_send_async")
  local rec = self._conns[conn_id]
  if not rec then return fail("ENOTCONN", "no open connection %s on %s", tostring(conn_id), self.id) end
  return rec_send_async(rec, msg, binary, timeout, "ws_send_async")
end

function Server:ws_broadcast(msg, binary, except)
  check_server(self, "ws_broadcast")
  check_msg(msg, "ws_broadcast")
  local ex = except and self._conns[except] and self._conns[except].box or nil
  return core.broadcast(self._box, msg, binary, ex)
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
    for _, rec in pairs(self._conns) do rec.box:close(1001, "server closing") end
    self._destroy_timer = sched.after(M.SHUTDOWN_GRACE, function() self:_destroy() end)
  end
  return true
end

function Server:_destroy()
  if self._destroyed then return end
  self._destroyed = true
  if self._destroy_timer then self._destroy_timer.cancel() end
  if servers_by_port[self.port] == self then servers_by_port[self.port] = nil end
  self._box:destroy()
end

Server.__close = function(self) self:close() end

function Server:__tostring()
  return "relaynet.HttpServer " .. self.id .. (self._closed and " (closed)" or "")
end

-- HttpServer: every method also works as a function taking the server id first.
local HttpServer = { listen = function(opts, websocket) return listen(opts, websocket) end }
for _, name in ipairs({ "route", "static", "on", "ws_send", "ws_send_async", "ws_broadcast",
  "ws_connections", "connection_count", "close" }) do
  local method = Server[name]
  HttpServer[name] = function(server_id, ...)
    return method(check_server(server_id, name), ...)
  end
end
M.HttpServer = HttpServer

-- WebSocket: connection-level functions across every server.
local WebSocket = {}

function WebSocket.send(conn_id, msg, binary)
  local rec = conns[conn_id]
  if rec then
    local r, err, code = conn_send(rec.box, msg, binary)
    if r == false then check_msg(msg, "WebSocket.send") end
    return r, err, code
  end
  check_msg(msg, "WebSocket.send")
  return fail("ENOTCONN", "no open connection %s", tostring(conn_id))
end

function WebSocket.send_async(conn_id, msg, binary, timeout)
  check_msg(msg, "WebSocket.send_async")
  local rec = conns[conn_id]
  if not rec then return fail("ENOTCONN", "no open connection %s", tostring(conn_id)) end
  return rec_send_async(rec, msg, binary, timeout, "WebSocket.send_async")
end

function WebSocket.broadcast(msg, binary)
  check_msg(msg, "WebSocket.broadcast")
  return core.broadcast(nil, msg, binary)
end

function WebSocket.close(conn_id, code, reason)
  local rec = conns[conn_id]
  if not rec or rec.closed then return fail("ENOTCONN", "no open connection %s", tostring(conn_id)) end
  return rec.box:close(code or 1000, reason or "")
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
  local info = rec.box:info()
  info.id = rec.id
  info.num = nil
  info.server = rec.server and rec.server.id or nil
  return info
end
M.WebSocket = WebSocket

-- the WebSocket client --------------------------------------------------------------

local Client = {}
Client.__index = Client
Client.__name = "relaynet.WebSocketClient"

local function parse_url(url)
  local scheme, rest = url:match("^(wss?)://(.+)$")
  if not scheme then return nil end
  local hostport, path = rest:match("^([^/]+)(/.*)$")
  if not hostport then hostport, path = rest, "/" end
  local host, port = hostport:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = hostport:match("^(.+):(%d+)$") end
  if not host then host = hostport:match("^%[(.+)%]$") or hostport end
  port = tonumber(port) or (scheme == "wss" and 443 or 80)
  return scheme, host, math.tointeger(port), path
end
M._parse_url = parse_url

--- Connects to a WebSocket server; suspends until the handshake is done.
--- opts: timeout (s, default 10), origin, protocol, on_message(fn(msg, binary)),
--- max_queued (messages kept for :receive(), default 1024) and limits.
--- Returns a client, or nil, msg, code.
function M.ws_connect(url, opts)
  if type(url) ~= "string" then error("relaynet.ws_connect: url must be a string", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("relaynet.ws_connect: opts must be a table", 2) end
  if not sched.can_wait() then
    sched.wait("rn.ws_connect") -- raises the standard explanation
  end
  local scheme, host, port, path = parse_url(url)
  if not scheme then return fail("EINVAL", "not a ws:// URL: %s", url) end
  if scheme == "wss" then return fail("ENOTSUP", "wss:// (TLS) is not supported yet") end
  if not port or port < 1 or port > 65535 then return fail("EINVAL", "bad port in %s", url) end
  local timeout = opts.timeout or 10
  local deadline = sched.now() + timeout
  local address = host
  if not host:match("^%d+%.%d+%.%d+%.%d+$") then
    local ticket, err, code = core.resolve(host)
    if not ticket then return nil, err, code end
    local addr, rerr = sched.wait("rn.ws_connect (resolving " .. host .. ")", timeout, function(co, id)
      resolving[ticket] = { co, id }
    end)
    resolving[ticket] = nil
    if not addr then
      if rerr and rerr:match("^ETIMEDOUT") then return nil, rerr, "ETIMEDOUT" end
      return fail("ERESOLVE", "cannot resolve %s: %s", host, tostring(rerr))
    end
    address = addr
  end
  local copt = { address = address, port = port, path = path,
    host = host .. ":" .. port, origin = opts.origin, protocol = opts.protocol }
  for k, v in pairs(opts) do
    if M.DEFAULT_LIMITS[k] ~= nil then copt[k] = v end
  end
  local box, err, code = core.connect(copt)
  if not box then return nil, err, code end
  local num = box:info().id
  local self = setmetatable({ url = url, _inbox = {}, _in_head = 1, _in_tail = 0,
    _max_queued = opts.max_queued or 1024, _on_message = opts.on_message,
    _on_close = opts.on_close }, Client)
  local rec = new_rec(box, num, nil, self)
  self.id = rec.id
  self._rec = rec
  local left = deadline - sched.now()
  local ok, cerr = sched.wait("rn.ws_connect", left > 0 and left or 0, function(co, id)
    rec.connect_waiter = { co, id }
  end)
  rec.connect_waiter = nil
  if not ok then
    box:close()
    forget_rec(rec)
    rec.closed = true
    if cerr and cerr:match("^ETIMEDOUT") then
      return fail("ETIMEDOUT", "connecting to %s timed out after %g s", url, timeout)
    end
    return fail("ECONNREFUSED", "cannot connect to %s: %s", url, tostring(cerr))
  end
  return self
end

function Client:send(msg, binary)
  local r, err, code = conn_send(self._rec.box, msg, binary)
  if r == false then check_msg(msg, "client:send") end
  return r, err, code
end

function Client:send_async(msg, binary, timeout)
  check_msg(msg, "client:send_async")
  return rec_send_async(self._rec, msg, binary, timeout, "client:send_async")
end

--- Waits for the next message: msg, binary | nil, msg, code (ETIMEDOUT,
--- ECLOSED). Messages that arrive while nobody waits are kept (bounded).
function Client:receive(timeout)
  if self._in_head <= self._in_tail then
    local m = self._inbox[self._in_head]
    self._inbox[self._in_head] = nil
    self._in_head = self._in_head + 1
    if self._paused and self._in_tail - self._in_head < self._max_queued // 2 then
      self._paused = false
      self._rec.box:pause(false)
    end
    return m[1], m[2]
  end
  if self._rec.closed then
    return fail("ECLOSED", "connection closed (%d %s)", self.close_code or 1006, self.close_reason or "")
  end
  local msg, binary, code = sched.wait("client:receive", timeout, function(co, id)
    self._receiver = { co, id }
  end)
  self._receiver = nil
  return msg, binary, code
end

function Client:close(code, reason)
  local rec = self._rec
  if rec.closed then return false end
  return rec.box:close(code or 1000, reason or "")
end

--- Closes and waits until the connection is gone: code, reason.
function Client:close_wait(code, reason, timeout)
  local rec = self._rec
  if not rec.closed then
    rec.box:close(code or 1000, reason or "")
    sched.wait("client:close_wait", timeout or 5, function(co, id) self._close_waiter = { co, id } end)
    self._close_waiter = nil
  end
  return self.close_code, self.close_reason
end

function Client:is_open()
  return not self._rec.closed
end

function Client:info()
  return self._rec.box:info()
end

Client.__close = function(self) self:close() end

function Client:__tostring()
  return "relaynet.WebSocketClient " .. self.url .. (self._rec.closed and " (closed)" or "")
end

-- event dispatch (called by core.poll for every event) ------------------------------------

local function on_http(reqbox)
  local info = reqbox:info()
  local srv = servers_by_port[info.port]
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
          ok, status, body, headers = pcall(http.normalize, cjson, a, b, c)
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
      pcall(reqbox.respond, reqbox, 500, nil, "internal server error\n")
    end
  end)
end

local function on_open(box, num)
  local rec = conns_by_num[num]
  if rec then -- one of our clients
    local w = rec.connect_waiter
    if w then sched.wake(w[1], w[2], true) end
    return
  end
  local info = box:info()
  local srv = servers_by_port[info.port]
  rec = new_rec(box, num, srv, nil)
  if not srv or stopping then
    box:close(1001, "server closing")
    return
  end
  if srv._mesh and info.path == "/ws/p2p" then
    box:set_internal(true)
    box:set_rate_scale(mesh.config.link_rate_scale)
    if not mesh.enabled() then
      box:close(4404, "the mesh is disabled on this node")
      return
    end
    local ok, link = xpcall(mesh.accept, debug.traceback,
      function(t) return box:send(t) end, function(c, r) box:close(c, r) end, info.peer)
    if not ok then
      sched.report("mesh accept on " .. rec.id .. ": " .. tostring(link))
      box:close(1011, "internal error")
      return
    end
    rec.link = link
    link.conn_id = rec.id
    return
  elseif srv._mesh and info.path == "/rpc" then
    box:set_internal(true)
    rec.rpc = true
    rec.addr = info.peer -- calls in flight are also bounded per address
    return
  end
  srv._conns[rec.id] = rec
  local h = srv._handlers.connect
  if h then
    info.id = rec.id
    info.server = srv.id
    info.num = nil
    handle(CONNECT_LABEL, rec.id, h, 2, rec.id, info)
  end
end

-- The rarer kinds of message; dispatch handles server connections itself.
local function on_message(rec, data, binary)
  if rec.link then
    local ok, err = xpcall(mesh.on_link_message, debug.traceback, rec.link, data, binary)
    if not ok then sched.report("mesh link " .. rec.id .. ": " .. tostring(err)) end
    return
  elseif rec.rpc then
    handle("JSON-RPC over WebSocket on ", rec.id, M._rpc_ws, 3, rec, data, binary)
    return
  end
  local client = rec.client
  if client._on_message then
    handle(MESSAGE_LABEL, rec.id, client._on_message, 3, data, binary, client)
    return
  end
  local r = client._receiver
  if r then
    client._receiver = nil
    sched.wake(r[1], r[2], data, binary)
    return
  end
  client._in_tail = client._in_tail + 1
  client._inbox[client._in_tail] = { data, binary }
  if not client._paused and client._in_tail - client._in_head + 1 >= client._max_queued then
    client._paused = true
    rec.box:pause(true)
  end
end

local function on_close(num, code, reason)
  local rec = conns_by_num[num]
  if not rec then return end
  rec.closed = true
  rec.close_code, rec.close_reason = code, reason
  forget_rec(rec)
  local waiters = rec.waiters
  if waiters then
    for ticket, w in pairs(waiters) do
      waiters[ticket] = nil
      sched.wake(w[1], w[2], nil, string.format("ECLOSED: connection %s closed (%d)", rec.id, code), "ECLOSED")
    end
  end
  wake_drain(rec, true)
  if rec.link then
    mesh.on_link_close(rec.link, code, reason)
    return
  elseif rec.rpc then
    -- its calls still waiting can never be answered: fail them now
    local rpc = package.loaded["relaynet.jsonrpc"]
    if rec.rpc_owner and rpc then rpc.close(rec.rpc_owner) end
    return
  end
  if rec.server then
    if rec.server._closed and next(rec.server._conns) == nil then rec.server:_destroy() end
    local h = rec.server._handlers.close
    if h then handle(CLOSE_LABEL, rec.id, h, 3, rec.id, code, reason) end
    return
  end
  local client = rec.client
  client.close_code, client.close_reason = code, reason
  local r = client._receiver
  if r then
    client._receiver = nil
    sched.wake(r[1], r[2], nil, string.format("ECLOSED: connection closed (%d %s)", code, reason), "ECLOSED")
  end
  local w = client._close_waiter
  if w then sched.wake(w[1], w[2], true) end
  if client._on_close then handle(CLOSE_LABEL, rec.id, client._on_close, 3, code, reason, client) end
end

local function on_connerr(num, msg)
  local rec = conns_by_num[num]
  if not rec then return end
  rec.closed = true
  forget_rec(rec)
  local w = rec.connect_waiter
  if w then sched.wake(w[1], w[2], nil, msg) end
end

local function on_written(num, ticket, ok)
  local rec = conns_by_num[num]
  if not rec then return end
  local waiters = rec.waiters
  local w = waiters and waiters[ticket]
  if not w then return end
  waiters[ticket] = nil
  if ok then
    sched.wake(w[1], w[2], true)
  else
    sched.wake(w[1], w[2], nil, "ECLOSED: connection " .. rec.id .. " closed before the message was written", "ECLOSED")
  end
end

local function dispatch(ev, a, b, c)
  if ev == EV_MESSAGE then
    -- The hot path: a message on a server WebSocket goes straight to its
    -- handler (no extra Lua frame, no varargs).
    local rec = conns_by_num[a]
    if not rec then return end
    local srv = rec.server
    if srv and not rec.link and not rec.rpc then
      local h = srv._handlers.message
      if h then handle(MESSAGE_LABEL, rec.id, h, 3, rec.id, b, c) end
    else
      on_message(rec, b, c)
    end
  elseif ev == EV_HTTP then on_http(a)
  elseif ev == EV_OPEN then on_open(a, b)
  elseif ev == EV_CLOSE then on_close(a, b, c)
  elseif ev == EV_WRITTEN then on_written(a, b, c)
  elseif ev == EV_DRAIN then
    local rec = conns_by_num[a]
    if rec then wake_drain(rec, true) end
  elseif ev == EV_CONNERR then on_connerr(a, b)
  elseif ev == EV_RESOLVED then
    local w = resolving[a]
    if w then resolving[a] = nil; sched.wake(w[1], w[2], b, c) end
  elseif ev == EV_SIGNAL then
    if stopping then os.exit(130) end -- a second signal: leave at once
    M.stop()
  end
end

-- running ---------------------------------------------------------------------------

local function active()
  if next(servers) or next(conns) or next(resolving) then return true end
  return sched.pending() > 0
end

local function graceful_shutdown()
  for _, srv in pairs(servers) do srv:close() end
  for _, rec in pairs(conns) do
    if not rec.closed then rec.box:close(1001, "going away") end
  end
  local deadline = sched.now() + M.SHUTDOWN_GRACE
  while (next(conns) or http_inflight > 0) and sched.now() < deadline do
    sched.run_ready()
    local t = sched.next_timeout()
    if t < 0 or t > 50 then t = 50 end
    core.poll(t, dispatch)
  end
  -- let in-flight HTTP responses and close frames reach the socket
  for _ = 1, 5 do
    sched.run_ready()
    core.poll(10, dispatch)
  end
end

--- Runs fn (if given) in a new coroutine and runs the loop until rn.stop()
--- is called or nothing is left to do. Returns true, or nil, msg, code when
--- shutdown found uv handles left open.
function M.run(fn, ...)
  if running then error("relaynet.run: the loop is already running", 2) end
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.run: expected a function", 2) end
  running, stopping = true, false
  if fn then sched.spawn(fn, ...) end
  mesh.start()
  local ok, err = pcall(function()
    while not stopping do
      sched.run_ready()
      if stopping or not active() then break end
      core.poll(sched.next_timeout(), dispatch)
    end
  end)
  local loop_err
  if not ok then
    loop_err = "EINTERNAL: the loop raised: " .. tostring(err)
    sched.report("relaynet: " .. loop_err)
  end
  stopping = true
  local ok2, err2 = pcall(graceful_shutdown)
  if not ok2 then sched.report("relaynet: shutdown error: " .. tostring(err2)) end
  sched.cancel_all("ECANCELED: the loop stopped", "ECANCELED")
  mesh.reset()
  local done, serr, scode = core.shutdown()
  servers, servers_by_port, conns, conns_by_num, resolving = {}, {}, {}, {}, {}
  M._default_server = nil
  http_inflight = 0
  sched.reset()
  running, stopping = false, false
  if not done then
    sched.report("relaynet: " .. serr)
    return nil, serr, scode
  end
  if loop_err then return nil, loop_err, "EINTERNAL" end
  return true
end

--- Runs fn(...) as a program's main function. Under the relaynet command
--- (the loop already runs) it just calls fn; otherwise it runs the loop
--- with fn and exits the process when the loop ends. Either way a main
--- function that raises or returns false exits with status 1.
function M.main(fn, ...)
  if type(fn) ~= "function" then error("relaynet.main: expected a function", 2) end
  if running then
    if fn(...) == false then os.exit(1) end
    return
  end
  local good = true
  local ok = M.run(function(...)
    local co = coroutine.running()
    local fine, res = xpcall(fn, function(m) return debug.traceback(co, tostring(m), 2) end, ...)
    if not fine then
      io.stderr:write(tostring(res), "\n")
      good = false
      M.stop()
    elseif res == false then
      good = false
      M.stop()
    end
  end, ...)
  os.exit((good and ok) and 0 or 1)
end

--- Asks the loop to stop: WebSockets get 1001, then everything is freed.
function M.stop()
  stopping = true
end

function M.running()
  return running and not stopping
end

M.spawn = sched.spawn
M.sleep = sched.sleep
M.after = sched.after
M.now = sched.now

--- Sets the hook that receives handler errors (a message with traceback).
--- nil restores the default, which writes to stderr.
function M.on_error(fn)
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.on_error: expected a function", 2) end
  sched.on_error = fn or function(msg) io.stderr:write("relaynet: ", tostring(msg), "\n") end
end

--- Diagnostics: counts of live objects in this run.
function M.stats()
  return {
    servers = count(servers),
    connections = count(conns),
    waiting = sched.waiting_count(),
    http_inflight = http_inflight,
    -- refusals by the C core's bounds, summed over every server of the process
    limits = core.stats(),
  }
end

M.json = cjson

-- the mesh --------------------------------------------------------------------------

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
M.mesh_status = mesh.status
M.send_message = mesh.send_message
M.on_mesh_message = mesh.on_message
M.mesh_config = mesh.config

--- The server the relaynet command started with --port (nil otherwise).
function M.server()
  return M._default_server
end

--- Turns the mesh off for this process: servers refuse /ws/p2p and no
--- peers are dialed (the CLI's --disable-registry).
function M.disable_registry()
  mesh.disable()
end

local function json_response(value)
  local body, err = json.encode(value)
  if not body then error(err, 0) end
  return 200, body, { ["content-type"] = "application/json" }
end

local function rpc_module()
  local ok, mod = pcall(require, "relaynet.jsonrpc")
  if ok then return mod end
  return nil, mod
end

--- Built-in routes of a mesh-enabled server.
function M._mesh_routes(srv)
  srv:route("GET", "/status", function() return json_response(mesh.status()) end)
  srv:route("GET", "/peers", function() return json_response(mesh.peers()) end)
  srv:route("GET", "/registry", function() return json_response(mesh.registry()) end)
  srv:route("GET", "/routes", function() return json_response(mesh.routes()) end)
  srv:route("POST", "/rpc", function(req)
    local rpc, err = rpc_module()
    if not rpc then error(err, 0) end
    local out = rpc.handle(req.body, { transport = "http", peer = req.peer, addr = req.peer })
    if out == nil then return 204, "" end
    return 200, out, { ["content-type"] = "application/json" }
  end)
end

function M._rpc_ws(rec, data, binary)
  local rpc, err = rpc_module()
  if not rpc then error(err, 0) end
  local out
  if binary then -- JSON-RPC is text: a binary frame cannot be a request
    out = '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: binary frame"}}'
  else
    -- One owner per connection: its calls in flight are counted together
    -- (max_calls_per_connection) and canceled when it closes.
    local owner = rec.rpc_owner
    if not owner then owner = { n = 0 }; rec.rpc_owner = owner end
    out = rpc.handle(data, { transport = "ws", peer = rec.id, owner = owner, addr = rec.addr })
  end
  if out ~= nil and not rec.closed then rec.box:send(out) end
end

return M
