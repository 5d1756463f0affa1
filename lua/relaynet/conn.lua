-- relaynet.conn: connection records, the one module that touches a
-- connection's C box (relaynet.core's per-connection userdata).
--
-- A record is made for every WebSocket, accepted or dialed:
--   rec = { id, num, box, server, client, closed, close_code, close_reason,
--           waiters = {ticket -> {co, id}} and drain = {co -> id} (made when a
--           send_async first waits: most connections never need them) }
-- plus the fields its owner keeps on it: `handlers` (the server's handler
-- table, set for a plain server connection), `mount` (the registered path
-- entry of a built-in endpoint, relaynet.server) and that endpoint's own
-- fields (`link`, `rpc_owner`, `addr`), `connect_waiter` (a client still
-- connecting). Other modules read these fields; only this module calls the box.
--
-- The two maps below live for the whole process and are emptied in place by
-- M.reset() at the end of every run, so other modules may cache them.

local core = require("relaynet.core")
local sched = require("relaynet.sched")

local M = {}

local conns = {}        -- conn id string -> record
local conns_by_num = {} -- C connection number -> record
M.by_id = conns
M.by_num = conns_by_num

--- Returns nil, "CODE: message", "CODE": the convention for operational failures.
local function fail(code, fmt, ...)
  return nil, code .. ": " .. string.format(fmt, ...), code
end
M.fail = fail

function M.count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

--- Makes and indexes the record of a new connection.
function M.new(box, num, server, client)
  local rec = { id = "c" .. num, num = num, box = box, server = server, client = client }
  conns[rec.id] = rec
  conns_by_num[num] = rec
  return rec
end

--- Removes a record from the maps (its owner removes it from its own lists).
function M.forget(rec)
  conns[rec.id] = nil
  conns_by_num[rec.num] = nil
end

--- Empties both maps in place (the end of a run).
function M.reset()
  for k in pairs(conns) do conns[k] = nil end
  for k in pairs(conns_by_num) do conns_by_num[k] = nil end
end

-- box operations -----------------------------------------------------------------

--- The C connection number of a box (a client learns it right after connect).
function M.box_num(box)
  return box:info().id
end

--- The connection's info table (id, state, queued bytes, peer, path, port...).
function M.info(rec)
  return rec.box:info()
end

--- The TLS exporter value of the connection (32 bytes), or nil when it
--- does not run over TLS (or is closed): channel binding for the mesh.
function M.tls_binding(rec)
  if rec.closed then return nil end
  return rec.box:tls_binding()
end

--- Starts the close handshake; returns what the core returns.
function M.close(rec, code, reason)
  return rec.box:close(code, reason)
end

--- Closes a box that has no record (a connect that timed out).
function M.close_box(box, code, reason)
  return box:close(code, reason)
end

--- Sends text with no back-pressure accounting (internal endpoints' replies).
function M.send_raw(rec, text)
  return rec.box:send(text)
end

--- Marks a connection internal (not counted against user limits) and,
--- when given, scales its rate limits.
function M.set_internal(rec, rate_scale)
  rec.box:set_internal(true)
  if rate_scale then rec.box:set_rate_scale(rate_scale) end
end

--- Pauses (true) or resumes (false) reading from the connection.
function M.pause(rec, on)
  rec.box:pause(on)
end

--- The send and close functions of an accepted mesh link, built here so each
--- call reaches the box directly: send(text), close(code, reason).
function M.link_io(rec)
  local box = rec.box
  return function(t) return box:send(t) end, function(c, r) box:close(c, r) end
end

-- waiting for the C side ------------------------------------------------------------

function M.wake_drain(rec, ...)
  local list = rec.drain
  if not list then return end
  rec.drain = nil
  for co, id in pairs(list) do sched.wake(co, id, ...) end
end

--- A closed connection: fails every send_async still waiting for its message
--- to be written with ECLOSED, then wakes the coroutines waiting to drain.
function M.fail_waiters(rec, code)
  local waiters = rec.waiters
  if waiters then
    for ticket, w in pairs(waiters) do
      waiters[ticket] = nil
      sched.wake(w[1], w[2], nil, string.format("ECLOSED: connection %s closed (%d)", rec.id, code), "ECLOSED")
    end
  end
  M.wake_drain(rec, true)
end

--- EV_WRITTEN: the message with `ticket` was written (ok) or dropped.
function M.written(num, ticket, ok)
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

--- EV_DRAIN: the send queue went under its low-water mark.
function M.drained(num)
  local rec = conns_by_num[num]
  if rec then M.wake_drain(rec, true) end
end

-- sending (shared by server connections and clients) -------------------------------

local function check_msg(msg, fname)
  local t = type(msg)
  if t ~= "string" and t ~= "number" then
    error("relaynet." .. fname .. ": message must be a string, got " .. t, 3)
  end
end
M.check_msg = check_msg

-- core.conn_send(box, msg, binary [, notify]) returns true, a ticket, nil,
-- msg, code (ECLOSED, EQUEUEFULL), or false when msg is not a string or a
-- number; the senders then raise with check_msg, so the common path makes
-- no extra call to check the message.
local conn_send = core.conn_send

--- The send_async of every class: waits out back-pressure, queues the
--- message, then waits until it is written. true | nil, msg, code.
function M.send_async(rec, msg, binary, timeout, what)
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

--- Builds Server:ws_send, the hot half of the echo path. It lives here so
--- the send reaches core.conn_send with no extra Lua frame: `live` is the
--- set of open servers, `check_server` the slow-path validator.
function M.server_sender(live, check_server)
  return function(self, conn_id, msg, binary)
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
end

--- WebSocket.send: sends on any open connection by id, with no extra Lua
--- frame between the caller and core.conn_send.
function M.send_by_id(conn_id, msg, binary)
  local rec = conns[conn_id]
  if rec then
    local r, err, code = conn_send(rec.box, msg, binary)
    if r == false then check_msg(msg, "WebSocket.send") end
    return r, err, code
  end
  check_msg(msg, "WebSocket.send")
  return fail("ENOTCONN", "no open connection %s", tostring(conn_id))
end

--- Builds a send method for objects that keep their record in `_rec` (the
--- client): self:send(msg, binary), again with no extra Lua frame.
function M.rec_sender(fname)
  return function(self, msg, binary)
    local r, err, code = conn_send(self._rec.box, msg, binary)
    if r == false then check_msg(msg, fname) end
    return r, err, code
  end
end

--- The box of a record, for core calls that take it (broadcast's `except`).
function M.box(rec)
  return rec.box
end

--- For /metrics: the open connections accepted by a server and dialed, and
--- the bytes waiting in their send queues.
function M.totals()
  local accepted, dialed, queued = 0, 0, 0
  for _, rec in pairs(conns) do
    if rec.server then accepted = accepted + 1 else dialed = dialed + 1 end
    if not rec.closed then queued = queued + rec.box:queued() end
  end
  return accepted, dialed, queued
end

--- Closes every connection still open with 1001 (shutdown).
function M.close_all()
  for _, rec in pairs(conns) do
    if not rec.closed then rec.box:close(1001, "going away") end
  end
end

return M
