-- relaynet chat room: a page at / and a JSON protocol over a WebSocket at /ws.
--
--   lua5.4 examples/chat.lua [port]          (default port 8080)
--   relaynet examples/chat.lua --port 9000   (the same; any relaynet option)
--   relaynet examples/chat.lua [port] --tls-cert CERT --tls-key KEY
--                                            (https, and the page chats over wss)
--
-- Protocol (every frame is a JSON object with a "type"):
--   client -> server  {type="join", name=...}   name: 1-32 characters once trimmed
--                     {type="say", text=...}    text: 1-2000 characters once trimmed
--   server -> client  {type="welcome", name, count, names}  answers your join (name: yours, trimmed)
--                     {type="joined", name, count}      to everyone who has joined
--                     {type="left", name, count}
--                     {type="said", name, text, ts}     ts: Unix time in seconds
--                     {type="error", message}           the connection stays open
--
-- The page is read from the "chat" folder next to this file, or from
-- $RELAYNET_CHAT_DIR when that is set (for an installed copy).
--
-- Loaded with dofile/require instead of run, it returns the module table:
-- M.start(port [, host]) starts the server inside a running rn.run and
-- returns it (or nil, msg, code).

-- From a source checkout, use its lua/ and build/ (examples/checkout.lua;
-- a copy of this file on its own skips that).
(loadfile((debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") or "") .. "checkout.lua") or load(""))()
local rn = require("relaynet")
local json = rn.json

local M = {}

M.MAX_NAME = 32
M.MAX_TEXT = 2000

local function script_dir()
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/[^/]*$")
  if dir then return dir end
  return "."
end

--- The folder holding index.html.
function M.page_dir()
  local env = os.getenv("RELAYNET_CHAT_DIR")
  if env and env ~= "" then return env end
  return script_dir() .. "/chat"
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Checks a user-supplied string: the trimmed value, or nil, error message.
local function clean(s, what, max, allow_newlines)
  if type(s) ~= "string" then return nil, what .. " must be a string" end
  s = trim(s)
  local len = utf8.len(s)
  if not len then return nil, what .. " is not valid UTF-8" end
  if len == 0 then return nil, what .. " is empty" end
  if len > max then return nil, string.format("%s is longer than %d characters", what, max) end
  local ctl = allow_newlines and "[\0-\8\11-\31\127]" or "%c"
  if s:find(ctl) then return nil, what .. " contains control characters" end
  return s
end
M.clean = clean

-- The chat's listen options.
M.LISTEN = { max_message = 64 * 1024 }

--- Starts the chat on a new server (inside a running rn.run): the server,
--- or nil, msg, code.
function M.start(port, host)
  local srv, err, code = rn.HttpServer.listen{ port = port, host = host, max_message = M.LISTEN.max_message }
  if not srv then return nil, err, code end
  return M.attach(srv)
end

--- Adds the chat's page, /ws protocol and handlers to server `srv`.
function M.attach(srv)
  local members = {} -- conn id -> name, for connections that have joined
  local taken = {}   -- name -> conn id

  local function count()
    local n = 0
    for _ in pairs(members) do n = n + 1 end
    return n
  end

  local function send(conn_id, msg)
    srv:ws_send(conn_id, json.encode(msg))
  end

  local function broadcast(msg)
    local data = json.encode(msg)
    for conn_id in pairs(members) do srv:ws_send(conn_id, data) end
  end

  local function fail(conn_id, message)
    send(conn_id, { type = "error", message = message })
  end

  local handlers = {}

  function handlers.join(conn_id, msg)
    if members[conn_id] then return fail(conn_id, "you have already joined as " .. members[conn_id]) end
    local name, why = clean(msg.name, "name", M.MAX_NAME)
    if not name then return fail(conn_id, why) end
    if taken[name] then return fail(conn_id, "the name " .. name .. " is already taken") end
    members[conn_id], taken[name] = name, conn_id
    local names = {}
    for _, n in pairs(members) do names[#names + 1] = n end
    table.sort(names)
    local n = count()
    send(conn_id, { type = "welcome", name = name, count = n, names = names }) -- names has you: never empty
    broadcast({ type = "joined", name = name, count = n })
  end

  function handlers.say(conn_id, msg)
    local name = members[conn_id]
    if not name then return fail(conn_id, "join before you say something") end
    local text, why = clean(msg.text, "text", M.MAX_TEXT, true)
    if not text then return fail(conn_id, why) end
    broadcast({ type = "said", name = name, text = text, ts = os.time() })
  end

  srv:route("GET", "/ws", function()
    return 426, "this address takes WebSocket connections\n", { upgrade = "websocket" }
  end)
  srv:static("/", M.page_dir())

  srv:on("connect", function(conn_id, info)
    if info.path ~= "/ws" then rn.WebSocket.close(conn_id, 1008, "WebSockets live at /ws") end
  end)

  srv:on("message", function(conn_id, data, is_binary)
    if is_binary then return fail(conn_id, "binary messages are not supported") end
    local ok, msg = pcall(json.decode, data)
    if not ok or type(msg) ~= "table" then return fail(conn_id, "messages must be JSON objects") end
    if type(msg.type) ~= "string" then return fail(conn_id, "messages need a string \"type\"") end
    local h = handlers[msg.type]
    if not h then return fail(conn_id, "unknown message type: " .. msg.type) end
    h(conn_id, msg)
  end)

  srv:on("close", function(conn_id)
    local name = members[conn_id]
    if not name then return end
    members[conn_id], taken[name] = nil, nil
    broadcast({ type = "left", name = name, count = count() })
  end)

  return srv
end

-- Run as a script: `lua5.4 examples/chat.lua [port]`, or under the relaynet
-- command, which also takes --port N (and the rest of its options): one
-- server, on the port given (8080 by default).
local cli = require("relaynet.cli")
if cli.is_main() then
  cli.serve_script {
    name = "chat", usage = "examples/chat.lua", listen = M.LISTEN, attach = M.attach,
    check = function()
      local page = M.page_dir() .. "/index.html"
      local f = io.open(page)
      if not f then return "cannot find " .. page .. " (set RELAYNET_CHAT_DIR to the folder holding index.html)" end
      f:close()
    end,
    -- The server passes no tls option: it is https exactly when the
    -- process-wide certificate is set (relaynet --tls-cert/--tls-key).
    banner = function(srv)
      return "chat room on " .. (rn.tls_config.cert and "https" or "http") .. "://localhost:" .. srv.port ..
        "/ (Ctrl-C stops)"
    end,
  }
end

return M
