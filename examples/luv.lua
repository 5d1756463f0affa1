-- relaynet with luv (Debian lua-luv) on the same event loop: luv's files,
-- DNS and child processes beside relaynet's HTTP and WebSocket server.
--
--   GET /file?name=NAME   the file NAME from this example's folder, read
--                         with uv.fs_open/fs_fstat/fs_read/fs_close
--   GET /resolve?host=H   H's addresses, from uv.getaddrinfo
--   WebSocket /run        each message names a program (date, uptime,
--                         count); its output comes back as it is written,
--                         {"out": text} per chunk, then {"exit": code}
--
--   lua5.4 examples/luv.lua [port]         (default port 8080)
--   relaynet examples/luv.lua --port 9000  (the same; any relaynet option)
--
-- Loaded with dofile/require instead, it returns { start, attach }:
-- start(port [, host]) starts the server inside a running rn.run and returns
-- it (or nil, msg, code); attach(srv) adds the example to a server of yours.

-- From a source checkout, use its lua/ and build/ (examples/checkout.lua;
-- a copy of this file on its own skips that).
(loadfile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "checkout.lua") or load(""))()
local rn = require("relaynet")

-- The programs /run may start, by name: nothing else is ever run.
local PROGRAMS = {
  date = { "date", "-u" },
  uptime = { "uptime" },
  count = { "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.1; done" },
}

local DIR = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."

-- Reads a whole file without blocking the loop: each rn.luv_wait suspends
-- this handler's coroutine until luv's callback, and the server goes on
-- serving meanwhile. Returns the text, or nil and luv's error.
local function read_file(uv, path)
  local err, fd = rn.luv_wait(uv.fs_open, path, "r", 0)
  if err then return nil, err end
  local st
  err, st = rn.luv_wait(uv.fs_fstat, fd)
  local data
  if not err then err, data = rn.luv_wait(uv.fs_read, fd, st.size, 0) end
  rn.luv_wait(uv.fs_close, fd)
  return data, err
end

local function attach(srv)
  local uv = rn.luv()

  srv:route("GET", "/file", function(req)
    local name = req.query.name or ""
    if not name:match("^[%w_][%w_.-]*$") then return 400, "name: a file of the example's folder\n" end
    local data, ferr = read_file(uv, DIR .. "/" .. name)
    if not data then
      if ferr:match("^ENOENT") then return 404, "no such file\n" end
      return 500, ferr .. "\n"
    end
    return 200, data, { ["content-type"] = "text/plain; charset=utf-8" }
  end)

  srv:route("GET", "/resolve", function(req)
    local rerr, addrs = rn.luv_wait(uv.getaddrinfo, req.query.host or "localhost", nil, { socktype = "stream" })
    if rerr then return 502, { error = rerr } end
    local list = {}
    for _, a in ipairs(addrs) do list[#list + 1] = a.addr end
    return { host = req.query.host or "localhost", addresses = list }
  end)

  -- /run: the child's output is sent from luv's callbacks, which may call
  -- anything that does not wait (ws_send here). A connection that closes
  -- takes its children with it.
  local children = {} -- connection id -> { [process handle] = true }
  srv:on("connect", function(id) children[id] = {} end)
  srv:on("close", function(id)
    for proc in pairs(children[id] or {}) do proc:kill("sigterm") end
    children[id] = nil
  end)
  srv:on("message", function(id, msg)
    local argv = PROGRAMS[msg]
    if not argv then
      srv:ws_send(id, rn.json.encode({ error = "unknown program: " .. msg }))
      return
    end
    -- {"exit"} goes last: after the child's exit and the end of its output,
    -- whichever comes second.
    local out = uv.new_pipe(false)
    local proc, exit_code, eof
    local function finish()
      if exit_code and eof then srv:ws_send(id, rn.json.encode({ exit = exit_code })) end
    end
    proc = uv.spawn(argv[1], { args = { table.unpack(argv, 2) }, stdio = { nil, out, 2 } },
      function(status)
        if children[id] then children[id][proc] = nil end
        proc:close()
        exit_code = status
        finish()
      end)
    if not proc then
      out:close()
      srv:ws_send(id, rn.json.encode({ error = "cannot start " .. argv[1] }))
      return
    end
    children[id][proc] = true
    out:read_start(function(rerr, chunk)
      if chunk then
        srv:ws_send(id, rn.json.encode({ out = chunk }))
        return
      end
      if rerr then srv:ws_send(id, rn.json.encode({ error = rerr })) end
      out:close()
      eof = true
      finish()
    end)
  end)
  return srv
end

local function start(port, host)
  local srv, err, code = rn.HttpServer.listen{ port = port, host = host }
  if not srv then return nil, err, code end
  return attach(srv)
end

-- Run as a script: `lua5.4 examples/luv.lua [port]`, or under the relaynet
-- command, which also takes --port N: one server, on the port given.
local cli = require("relaynet.cli")
if cli.is_main() then
  cli.serve_script { name = "luv example", usage = "examples/luv.lua", attach = attach, banner = function(srv)
    return "luv example on http://localhost:" .. srv.port .. "/file?name=luv.lua (Ctrl-C stops)"
  end }
end

return { start = start, attach = attach }
