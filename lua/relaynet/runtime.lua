-- relaynet.runtime: the run (run, main, stop, running), the event dispatch
-- that core.poll calls for every event the C side queued, shutdown and the
-- per-run reset, and the process-wide diagnostics (stats).
--
-- Dispatch only routes: each event goes to the module that owns what it is
-- about (relaynet.conn, .server, .client, or a mounted endpoint). The one
-- exception is the hot path, a message on a plain server WebSocket, which
-- calls the user's handler from here with no extra Lua frame.

local core = require("relaynet.core")
local sched = require("relaynet.sched")
local mesh = require("relaynet.mesh")
local conn = require("relaynet.conn")
local server = require("relaynet.server")
local client = require("relaynet.client")
local uvbridge = require("relaynet.uvbridge")

local M = {}

local EV_HTTP, EV_OPEN, EV_MESSAGE, EV_CLOSE = core.EV_HTTP, core.EV_OPEN, core.EV_MESSAGE, core.EV_CLOSE
local EV_WRITTEN, EV_DRAIN, EV_CONNERR = core.EV_WRITTEN, core.EV_DRAIN, core.EV_CONNERR
local EV_SIGNAL, EV_RESOLVED = core.EV_SIGNAL, core.EV_RESOLVED

local conns_by_num, conns = conn.by_num, conn.by_id
local handle = sched.handle
local MESSAGE_LABEL = "message handler for "

local running, stopping = false, false
local default_server = nil -- the server rn.server() returns
local listen_defaults = nil -- the relaynet command's --port/--host/--server options
local under_command = false -- the relaynet command runs the loop (M.set_command)

-- event dispatch (called by core.poll for every event) ------------------------------

-- The rarer kinds of message: on a mounted endpoint or on a client.
local function on_message(rec, data, binary)
  local mount = rec.mount
  if mount then return mount.on_message(rec, data, binary) end
  local cl = rec.client
  if cl then cl:_deliver(data, binary) end -- else: refused while stopping
end

-- A client's OPEN carries (box, num); a server connection's adds its
-- server, path and peer address.
local function on_open(box, num, srv, path, peer)
  if client.on_open(num) then return end
  server.on_open(box, num, srv, path, peer, stopping)
end

local function on_close(num, code, reason)
  local rec = conns_by_num[num]
  if not rec then return end
  rec.closed = true
  rec.close_code, rec.close_reason = code, reason
  conn.forget(rec)
  if rec.server then server.forget(rec) end
  conn.fail_waiters(rec, code)
  local mount = rec.mount
  if mount then
    mount.on_close(rec, code, reason)
  elseif rec.server then
    server.on_close(rec, code, reason)
  elseif rec.client then
    rec.client:_closed(code, reason)
  end
end

local on_http, on_written, on_drained = server.on_http, conn.written, conn.drained
local on_connerr, on_resolved = client.on_connerr, client.on_resolved

local function dispatch(ev, a, b, c, d, e)
  if ev == EV_MESSAGE then
    -- The hot path: a message on a plain server WebSocket goes straight to
    -- its server's handler (no extra Lua frame, no varargs). rec.handlers is
    -- set only for those connections (relaynet.server's on_open).
    local rec = conns_by_num[a]
    if not rec then return end
    local hs = rec.handlers
    if hs then
      local h = hs.message
      if h then handle(MESSAGE_LABEL, rec.id, h, 3, rec.id, b, c) end
    else
      on_message(rec, b, c)
    end
  elseif ev == EV_HTTP then on_http(a, b, stopping)
  elseif ev == EV_OPEN then on_open(a, b, c, d, e)
  elseif ev == EV_CLOSE then on_close(a, b, c)
  elseif ev == EV_WRITTEN then on_written(a, b, c)
  elseif ev == EV_DRAIN then on_drained(a)
  elseif ev == EV_CONNERR then on_connerr(a, b)
  elseif ev == EV_RESOLVED then on_resolved(a, b, c)
  elseif ev == EV_SIGNAL then
    if stopping then os.exit(130) end -- a second signal: leave at once
    M.stop()
  end
end

-- running ---------------------------------------------------------------------------

local function active()
  if server.any() or next(conns) or client.any_resolving() then return true end
  return sched.pending() > 0 or uvbridge.alive() -- luv's loop, when rn.luv() wired it in
end

local function graceful_shutdown()
  server.close_all()
  conn.close_all()
  local deadline = sched.now() + server.settings.shutdown_grace
  while (next(conns) or server.inflight() > 0) and sched.now() < deadline do
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
--- shutdown found uv handles left open. Under the relaynet command, whose
--- loop already runs the script, it only starts fn (if given) in a new
--- coroutine and returns true at once, so that a script written for lua5.4
--- (ending with rn.run()) runs unchanged; the command's loop runs the rest.
function M.run(fn, ...)
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.run: expected a function", 2) end
  if running and under_command then
    if fn then sched.spawn(fn, ...) end
    return true
  end
  if running then error("relaynet.run: the loop is already running", 2) end
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
  server.reset()
  conn.reset()
  client.reset()
  default_server = nil
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

--- rn.server([opts]) -> server | nil, msg, code
--- The process's default server, started by the first call that can start
--- it: rn.server(opts) listens with `opts` (HttpServer.listen's options;
--- port 8080 when none is given), and under the relaynet command with
--- --port, --host, --server or --no-mesh those options override the
--- script's (so `relaynet echo.lua --port 9000` serves the echo on 9000 and
--- starts no second server). rn.server() without opts starts it only when
--- the command asked for one; otherwise it returns nil. The server is
--- forgotten when the run ends.
function M.server(opts)
  if default_server then return default_server end
  if opts ~= nil and type(opts) ~= "table" then error("relaynet.server: opts must be a table", 2) end
  if opts == nil and not listen_defaults then return nil end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  for k, v in pairs(listen_defaults or {}) do o[k] = v end
  if o.port == nil then o.port = 8080 end
  local srv, err, code = server.HttpServer.listen(o)
  if not srv then return nil, err, code end
  default_server = srv
  return srv
end

--- For the relaynet command: while `on`, rn.run() inside the running loop
--- starts its function instead of raising (see M.run).
function M.set_command(on)
  under_command = on and true or false
end

--- For the relaynet command: the options (port, host, mesh) that override
--- a script's in M.server, and that make M.server() start a server.
function M.set_listen_defaults(o)
  listen_defaults = o
end

--- Sets the hook that receives handler errors (a message with traceback).
--- nil restores the default, which writes to stderr.
function M.on_error(fn)
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.on_error: expected a function", 2) end
  sched.on_error = fn or function(msg) io.stderr:write("relaynet: ", tostring(msg), "\n") end
end

--- Diagnostics: counts of live objects in this run.
function M.stats()
  return {
    servers = server.count(),
    connections = conn.count(conns),
    waiting = sched.waiting_count(),
    http_inflight = server.inflight(),
    -- refusals by the C core's bounds, summed over every server of the process
    limits = core.stats(),
    -- WebSocket messages and payload bytes received and written, summed
    -- over every connection of the process (the core's counters)
    traffic = core.traffic(),
  }
end

return M
