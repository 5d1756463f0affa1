-- relaynet chat room: a page at / and a JSON protocol over a WebSocket at /ws.
-- One room spans every node of the mesh that runs this chat.
--
--   lua5.4 examples/chat.lua [port]          (default port 8080)
--   relaynet examples/chat.lua --port 9000   (the same; any relaynet option)
--   relaynet examples/chat.lua [port] --tls-cert CERT --tls-key KEY
--                                            (https, and the page chats over wss)
--   relaynet examples/chat.lua --port 8080 --node-id a
--   relaynet examples/chat.lua --port 8081 --node-id b --add-peer localhost:8080
--                                            (two nodes, one room: a page on
--                                            either sees everyone)
--
-- Protocol (every frame is a JSON object with a "type"):
--   client -> server  {type="join", name=...}   name: 1-32 characters once trimmed
--                     {type="say", text=...}    text: 1-2000 characters once trimmed
--   server -> client  {type="welcome", name, count, names}  answers your join (name: yours, trimmed)
--                     {type="joined", name, count}      to everyone who has joined
--                     {type="left", name, count}
--                     {type="said", name, text, ts}     ts: Unix time in seconds
--                     {type="error", message}           the connection stays open
--                     {type="error", message, joined=false}
--                                    you are out of the room (your name lost
--                                    the tie-break below): join again
-- count and names cover the whole room, every node; a name is in the room
-- once however many members carry it for a moment (see below), and
-- "joined"/"left" announce a name entering and leaving the room.
--
-- Across nodes: what is said is published on topic "chat.room" (rn.publish),
-- and every node that runs the chat hands it to its own members. Every
-- member is a presence member of topic "chat.members" (server:subscribe
-- with presence info {name, since, chat}), so each node learns the others'
-- members, and their joins and leaves, from rn.presence/rn.on_presence.
-- When a node's link is lost its members leave the others' rooms (and come
-- back with the link).
--
-- Names are unique across nodes. A join is refused when the name is in the
-- room as this node sees it. Two nodes can still accept the same name at
-- nearly the same moment (before either has heard of the other's member),
-- or on both sides of a lost link. When a node then sees the same name on
-- another node, the earlier join keeps it: the lower `since` (Unix seconds
-- of the join, by the joining node's clock), then the lower node id, then
-- the lower `chat` (a random token per chat server: the servers of one
-- process share the room too). Every node applies the same rule to the
-- same presence info, so exactly one keeps the name; the node of each
-- other one takes it back and sends that connection the error with
-- joined=false. The room saw the name joined once and never sees it leave
-- for this.
--
-- Each person in the room is one presence subscription on their node, so
-- the node's pub/sub bounds apply: past mesh_config.max_presence_members
-- (1000) people on one node, or max_subscriptions, a join is answered with
-- an error naming the bound ("cannot join: ...").
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

-- The topics of the room: what is said is published to M.ROOM; every
-- member is a presence member of M.MEMBERS (nothing is published there).
M.ROOM = "chat.room"
M.MEMBERS = "chat.members"

--- True when join `a` wins the tie-break over join `b` (the rule in the
--- header): each is { since = Unix seconds, node = node id, chat = token }.
function M.earlier(a, b)
  if a.since ~= b.since then return a.since < b.since end
  if a.node ~= b.node then return a.node < b.node end
  return a.chat < b.chat
end

-- The chat's listen options.
M.LISTEN = { max_message = 64 * 1024 }

--- Starts the chat on a new server (inside a running rn.run): the server,
--- or nil, msg, code.
function M.start(port, host)
  local srv, err, code = rn.HttpServer.listen{ port = port, host = host, max_message = M.LISTEN.max_message }
  if not srv then return nil, err, code end
  return M.attach(srv)
end

-- The process has one subscription to M.ROOM, one presence handler of
-- M.MEMBERS and one plain subscription to M.MEMBERS, shared by every chat
-- server it runs: each server's room is an entry of `rooms` (fields srv,
-- deliver, presence), dropped once its server is closed, so servers started
-- and closed over and over leave nothing behind but these three. The plain
-- subscription (nothing is published there) makes every chat node list
-- M.MEMBERS in its route entry from the start, so the other nodes watch it
-- before its first person joins: that join then reaches them as a change,
-- right behind anything said after it, instead of waiting for the node's
-- next advert and a snapshot.
local rooms = {}
local room_sub, presence_sub, members_sub

-- The rooms whose server is open; the others leave `rooms`.
local function live_rooms()
  local live = {}
  for i = #rooms, 1, -1 do
    if not rooms[i].srv:is_closed() then
      table.insert(live, 1, rooms[i])
    else
      table.remove(rooms, i)
    end
  end
  return live
end

-- Makes the shared subscription and handler once (again after a failure).
local function share()
  if not room_sub then
    room_sub = rn.subscribe(M.ROOM, function(data)
      for _, r in ipairs(live_rooms()) do r.deliver(data) end
    end)
  end
  if not members_sub then members_sub = rn.subscribe(M.MEMBERS, function() end) end
  if not presence_sub and rn.on_presence then
    presence_sub = rn.on_presence(M.MEMBERS, function(event, member)
      for _, r in ipairs(live_rooms()) do r.presence(event, member) end
    end)
  end
end

--- Adds the chat's page, /ws protocol and handlers to server `srv`.
function M.attach(srv)
  -- This room instance's token, carried in its members' presence info so
  -- that it tells its own members from everyone else's (another process,
  -- or another server in this one).
  local inst = rn.random_bytes(8):gsub(".", function(c) return string.format("%02x", c:byte()) end)
  local members = {} -- conn id -> { name =, since = }, for local connections that have joined
  local taken = {}   -- name -> conn id, for those
  local remote = {}  -- "node/id" -> { name =, since =, node =, chat = }: members of other instances
  local remote_names = {} -- name -> how many entries of `remote` carry it

  -- True when `name` is in the room, here or elsewhere.
  local function present(name)
    return taken[name] ~= nil or remote_names[name] ~= nil
  end

  -- The names in the room (each once), sorted.
  local function names()
    local list = {}
    for name in pairs(taken) do list[#list + 1] = name end
    for name in pairs(remote_names) do
      if not taken[name] then list[#list + 1] = name end
    end
    table.sort(list)
    return list
  end

  local function count()
    local n = 0
    for _ in pairs(taken) do n = n + 1 end
    for name in pairs(remote_names) do
      if not taken[name] then n = n + 1 end
    end
    return n
  end

  local function send(conn_id, msg)
    srv:ws_send(conn_id, json.encode(msg))
  end

  -- Sends the JSON text `data` to every local member.
  local function broadcast_text(data)
    for conn_id in pairs(members) do srv:ws_send(conn_id, data) end
  end

  local function broadcast(msg)
    broadcast_text(json.encode(msg))
  end

  local function fail(conn_id, message)
    send(conn_id, { type = "error", message = message })
  end

  -- Messages: what is published to the room's topic (the shared
  -- subscription) reaches every room, which hands it to its members. A
  -- "said" frame is published as its JSON text and forwarded as it came,
  -- after a check that it is one.
  local function deliver(data)
    if type(data) ~= "string" then return end
    local msg = json.decode(data)
    if type(msg) ~= "table" or msg.type ~= "said" or type(msg.name) ~= "string" or type(msg.text) ~= "string" then
      return
    end
    broadcast_text(data)
  end

  -- Takes the name away from local member conn_id, whose join lost the
  -- tie-break to `winner` (see the header): it is told so and may join again.
  local function evict(conn_id, winner)
    local m = members[conn_id]
    members[conn_id], taken[m.name] = nil, nil
    srv:unsubscribe(conn_id, M.MEMBERS)
    send(conn_id, { type = "error", joined = false, message = "the name " .. m.name ..
      " was taken on node " .. winner.node .. " at the same time; join again under another name" })
  end

  -- A member of another instance joins (or is listed): it enters the view;
  -- a name new to the room is announced; a local member with the same name
  -- that loses the tie-break is evicted.
  local function remote_join(member)
    local info = member.info
    if type(info) ~= "table" or info.chat == inst then return end
    local name, since = info.name, info.since
    if type(name) ~= "string" or clean(name, "name", M.MAX_NAME) ~= name or math.type(since) ~= "integer"
      or type(info.chat) ~= "string" or type(member.node) ~= "string" then
      return
    end
    local key = member.node .. "/" .. tostring(member.id)
    if remote[key] then return end
    local was = present(name)
    local r = { name = name, since = since, node = member.node, chat = info.chat }
    remote[key] = r
    remote_names[name] = (remote_names[name] or 0) + 1
    local mine = taken[name]
    if mine then
      local m = members[mine]
      if M.earlier(r, { since = m.since, node = rn.node_id(), chat = inst }) then evict(mine, r) end
    end
    if not was then broadcast({ type = "joined", name = name, count = count() }) end
  end

  -- A member of another instance leaves: a name no longer in the room is
  -- announced as left.
  local function remote_leave(member)
    local key = type(member.node) == "string" and member.node .. "/" .. tostring(member.id)
    local r = key and remote[key]
    if not r then return end
    remote[key] = nil
    local n = remote_names[r.name] - 1
    remote_names[r.name] = n > 0 and n or nil
    if not present(r.name) then broadcast({ type = "left", name = r.name, count = count() }) end
  end

  -- Events from now on (the shared handler), then the members already
  -- there; a member that leaves while the list is on its way is not taken
  -- from it.
  local gone = {}
  local function on_presence(event, member)
    if event == "join" then
      remote_join(member)
    elseif event == "leave" then
      if gone and type(member.node) == "string" then gone[member.node .. "/" .. tostring(member.id)] = true end
      remote_leave(member)
    end
  end
  rooms[#rooms + 1] = { srv = srv, deliver = deliver, presence = on_presence }
  share()
  if presence_sub then
    rn.spawn(function()
      local list = rn.presence(M.MEMBERS)
      for _, member in ipairs(list or {}) do
        if type(member.node) ~= "string" or not gone[member.node .. "/" .. tostring(member.id)] then
          remote_join(member)
        end
      end
      gone = nil
    end)
  else
    gone = nil
  end

  local handlers = {}

  function handlers.join(conn_id, msg)
    if members[conn_id] then return fail(conn_id, "you have already joined as " .. members[conn_id].name) end
    local name, why = clean(msg.name, "name", M.MAX_NAME)
    if not name then return fail(conn_id, why) end
    if present(name) then return fail(conn_id, "the name " .. name .. " is already taken") end
    local since = os.time()
    local ok, err = srv:subscribe(conn_id, M.MEMBERS, { presence = { name = name, since = since, chat = inst } })
    if not ok then return fail(conn_id, "cannot join: " .. tostring(err)) end
    members[conn_id], taken[name] = { name = name, since = since }, conn_id
    local n = count()
    send(conn_id, { type = "welcome", name = name, count = n, names = names() }) -- names has you: never empty
    broadcast({ type = "joined", name = name, count = n })
  end

  function handlers.say(conn_id, msg)
    local m = members[conn_id]
    if not m then return fail(conn_id, "join before you say something") end
    local text, why = clean(msg.text, "text", M.MAX_TEXT, true)
    if not text then return fail(conn_id, why) end
    local data = json.encode({ type = "said", name = m.name, text = text, ts = os.time() })
    -- The room's own subscription delivers it here, before publish returns.
    if not (room_sub and rn.publish(M.ROOM, data)) then broadcast_text(data) end
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

  -- Its presence subscription ends with the connection (server:subscribe).
  srv:on("close", function(conn_id)
    local m = members[conn_id]
    if not m then return end
    members[conn_id], taken[m.name] = nil, nil
    if not present(m.name) then broadcast({ type = "left", name = m.name, count = count() }) end
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
