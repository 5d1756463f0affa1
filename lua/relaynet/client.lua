-- relaynet.client: the WebSocket client (rn.ws_connect), URL parsing, name
-- resolution, and the client side of the events. A client's inbox and its
-- waiters are its own: the runtime hands it events through the methods
-- _opened, _deliver and _closed and never touches its fields.

local core = require("relaynet.core")
local sched = require("relaynet.sched")
local conn = require("relaynet.conn")
local tls = require("relaynet.tls")

local M = {}

local fail, check_msg = conn.fail, conn.check_msg
local conns_by_num = conn.by_num
local handle = sched.handle
local MESSAGE_LABEL, CLOSE_LABEL = "message handler for ", "close handler for "
-- The limits a server or client accepts, with their defaults (rn.DEFAULT_LIMITS):
-- ws_connect copies the options named here into the connection's limits.
local DEFAULT_LIMITS = core.default_limits()
M.DEFAULT_LIMITS = DEFAULT_LIMITS

local resolving = {} -- ticket -> { co, id }: name lookups in flight

local Client = {}
Client.__index = Client
Client.__name = "relaynet.WebSocketClient"
M.Client = Client

--- Splits a ws:// or wss:// URL: scheme, host, port, path (nil when it is not one).
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
M.parse_url = parse_url

--- Connects to a WebSocket server; suspends until the handshake is done.
--- opts: timeout (s, default 10), origin, protocol, on_message(fn(msg, binary)),
--- max_queued (messages kept for :receive(), default 1024) and limits.
--- wss:// verifies the server's certificate against opts.ca (a PEM file;
--- default rn.tls_config.ca) or the system's CA store, and its host name; opts.insecure = true
--- accepts any certificate (tests only). Returns a client, or nil, msg,
--- code: a certificate that fails verification gives ECERT, another TLS
--- failure ETLS.
function M.ws_connect(url, opts)
  if type(url) ~= "string" then error("relaynet.ws_connect: url must be a string", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("relaynet.ws_connect: opts must be a table", 2) end
  if not sched.can_wait() then
    sched.wait("rn.ws_connect") -- raises the standard explanation
  end
  local scheme, host, port, path = parse_url(url)
  if not scheme then return fail("EINVAL", "not a ws:// or wss:// URL: %s", url) end
  if opts.ca ~= nil and type(opts.ca) ~= "string" then error("relaynet.ws_connect: opts.ca must be a file name", 2) end
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
    host = host .. ":" .. port, origin = opts.origin, protocol = opts.protocol,
    tls = scheme == "wss", ca = tls.client_ca(opts), insecure = opts.insecure == true }
  for k, v in pairs(opts) do
    if DEFAULT_LIMITS[k] ~= nil then copt[k] = v end
  end
  local box, err, code = core.connect(copt)
  if not box then return nil, err, code end
  local num = conn.box_num(box)
  local self = setmetatable({ url = url, _inbox = {}, _in_head = 1, _in_tail = 0,
    _max_queued = opts.max_queued or 1024, _on_message = opts.on_message,
    _on_close = opts.on_close }, Client)
  local rec = conn.new(box, num, nil, self)
  self.id = rec.id
  self._rec = rec
  local left = deadline - sched.now()
  local ok, cerr = sched.wait("rn.ws_connect", left > 0 and left or 0, function(co, id)
    rec.connect_waiter = { co, id }
  end)
  rec.connect_waiter = nil
  if not ok then
    conn.close_box(box)
    conn.forget(rec)
    rec.closed = true
    if cerr and cerr:match("^ETIMEDOUT") then
      return fail("ETIMEDOUT", "connecting to %s timed out after %g s", url, timeout)
    end
    cerr = tostring(cerr)
    -- lws reports TLS failures as connection errors; name them apart.
    if scheme == "wss" and cerr:find("cert", 1, true) then
      return fail("ECERT", "certificate of %s not accepted: %s", url, cerr)
    elseif scheme == "wss" and (cerr:find("SSL", 1, true) or cerr:find("tls", 1, true)) then
      return fail("ETLS", "TLS with %s failed: %s", url, cerr)
    end
    return fail("ECONNREFUSED", "cannot connect to %s: %s", url, cerr)
  end
  return self
end

Client.send = conn.rec_sender("client:send")

function Client:send_async(msg, binary, timeout)
  check_msg(msg, "client:send_async")
  return conn.send_async(self._rec, msg, binary, timeout, "client:send_async")
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
      conn.pause(self._rec, false)
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
  return conn.close(rec, code or 1000, reason or "")
end

--- Closes and waits until the connection is gone: code, reason.
function Client:close_wait(code, reason, timeout)
  local rec = self._rec
  if not rec.closed then
    conn.close(rec, code or 1000, reason or "")
    sched.wait("client:close_wait", timeout or 5, function(co, id) self._close_waiter = { co, id } end)
    self._close_waiter = nil
  end
  return self.close_code, self.close_reason
end

function Client:is_open()
  return not self._rec.closed
end

function Client:info()
  return conn.info(self._rec)
end

Client.__close = function(self) self:close() end

function Client:__tostring()
  return "relaynet.WebSocketClient " .. self.url .. (self._rec.closed and " (closed)" or "")
end

-- events (called by relaynet.runtime's dispatch) ---------------------------------

--- A message arrived: to on_message, to a waiting receive, or into the
--- inbox; a full inbox pauses reading until receive drains half of it.
function Client:_deliver(data, binary)
  if self._on_message then
    handle(MESSAGE_LABEL, self.id, self._on_message, 3, data, binary, self)
    return
  end
  local r = self._receiver
  if r then
    self._receiver = nil
    sched.wake(r[1], r[2], data, binary)
    return
  end
  self._in_tail = self._in_tail + 1
  self._inbox[self._in_tail] = { data, binary }
  if not self._paused and self._in_tail - self._in_head + 1 >= self._max_queued then
    self._paused = true
    conn.pause(self._rec, true)
  end
end

--- The connection closed: wakes a waiting receive and close_wait, then runs on_close.
function Client:_closed(code, reason)
  self.close_code, self.close_reason = code, reason
  local r = self._receiver
  if r then
    self._receiver = nil
    sched.wake(r[1], r[2], nil, string.format("ECLOSED: connection closed (%d %s)", code, reason), "ECLOSED")
  end
  local w = self._close_waiter
  if w then sched.wake(w[1], w[2], true) end
  if self._on_close then handle(CLOSE_LABEL, self.id, self._on_close, 3, code, reason, self) end
end

--- EV_OPEN of a connection this process dialed: true when `num` is one
--- (its ws_connect is woken), false when it is an accepted connection.
function M.on_open(num)
  local rec = conns_by_num[num]
  if not rec then return false end
  local w = rec.connect_waiter
  if w then sched.wake(w[1], w[2], true) end
  return true
end

--- EV_CONNERR: a dial failed before the handshake ended.
function M.on_connerr(num, msg)
  local rec = conns_by_num[num]
  if not rec then return end
  rec.closed = true
  conn.forget(rec)
  local w = rec.connect_waiter
  if w then sched.wake(w[1], w[2], nil, msg) end
end

--- EV_RESOLVED: a name lookup ended (addr, or nil and an error).
function M.on_resolved(ticket, addr, err)
  local w = resolving[ticket]
  if w then resolving[ticket] = nil; sched.wake(w[1], w[2], addr, err) end
end

--- True while a name lookup is in flight (the loop keeps running).
function M.any_resolving()
  return next(resolving) ~= nil
end

function M.reset()
  resolving = {}
end

return M
