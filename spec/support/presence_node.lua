-- spec/support/presence_node.lua: a mesh node for spec/presence_spec.lua.
-- At start it is a presence member of "room.1" (id "s1", info {name =
-- its node id}). It exposes server "pr", which joins and leaves topics
-- with presence, lists a topic's members (rn.presence), watches a topic
-- (rn.on_presence) and reports the events seen; and it answers WebSocket
-- text messages "sub TOPIC INFO_JSON" / "unsub TOPIC" on its server by
-- calling server:subscribe(id, TOPIC, {presence = INFO}) /
-- server:unsubscribe, each with an ack {ack, topic, ok, error, id}.

local rn = require("relaynet")

local members = {}  -- member id -> subscription handle
local watches = {}  -- topic -> on_presence handle
local events = {}   -- topic -> list of {event, node, id, info, reason}

local pr = {}

--- Joins `topic` with presence `info`: the member id | {error, code}.
function pr.join(topic, info)
  local h, err, code = rn.subscribe(topic, function() end, { presence = info })
  if not h then return { error = err, code = code } end
  members[h.presence.id] = h
  return h.presence.id
end

function pr.leave(id)
  local h = members[id]
  members[id] = nil
  return h ~= nil and h:unsubscribe()
end

--- rn.presence(topic, timeout): the list | {error, code}.
function pr.list(topic, timeout)
  local list, err, code = rn.presence(topic, timeout)
  if not list then return { error = err, code = code } end
  return list
end

function pr.watch(topic)
  if watches[topic] then return true end
  events[topic] = events[topic] or {}
  local h, err, code = rn.on_presence(topic, function(event, m)
    local log = events[topic]
    log[#log + 1] = { event = event, node = m.node, id = m.id, info = m.info, reason = m.reason }
  end)
  if not h then return { error = err, code = code } end
  watches[topic] = h
  return true
end

function pr.unwatch(topic)
  local h = watches[topic]
  watches[topic] = nil
  return h ~= nil and h:unsubscribe()
end

function pr.events(topic)
  return rn.json.array(events[topic] or {})
end

function pr.clear()
  for t in pairs(events) do events[t] = {} end
  return true
end

--- Sets mesh_config[name] = value (bounds), returning the old value.
function pr.config(name, value)
  local old = rn.mesh_config[name]
  rn.mesh_config[name] = value
  return old
end

rn.expose("pr", pr)
pr.join("room.1", { name = rn.node_id() })

local srv = assert(rn.server())
srv:on("message", function(id, text)
  local verb, topic, rest = tostring(text):match("^(%a+) (%S+) ?(.*)$")
  local ok, err
  if verb == "sub" then
    local good, a, b = pcall(srv.subscribe, srv, id, topic, { presence = rn.json.decode(rest) })
    if good then ok, err = a, b else ok, err = false, tostring(a) end
  elseif verb == "unsub" then
    ok = srv:unsubscribe(id, topic)
  end
  srv:ws_send(id, rn.json.encode({ ack = verb, topic = topic, ok = ok or false, error = err, id = id }))
end)
