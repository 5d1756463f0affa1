-- spec/support/history_node.lua: a mesh node for spec/history_spec.lua. It
-- exposes server "hs", which sets history patterns (rn.history), subscribes,
-- unsubscribes and publishes on this node, reports what its subscriptions
-- received with each message's position, and recovers (rn.recover) for the
-- test. It answers WebSocket text messages "sub PATTERN" (and "rsub TOPIC
-- NODE EPOCH OFFSET", with recovery) on its server by calling
-- server:subscribe for that connection, with an ack.

local rn = require("relaynet")

local handles = {}  -- pattern -> subscription handle
local received = {} -- pattern -> list of { topic, message, from, epoch, offset }

local hs = {}

--- rn.history(pattern, opts): true | { error, code }.
function hs.history(pattern, opts)
  local ok, err, code = rn.history(pattern, opts)
  if not ok then return { error = err, code = code } end
  return true
end

function hs.subscribe(pattern)
  if handles[pattern] then return true end
  received[pattern] = received[pattern] or {}
  local log = received[pattern]
  local h, err, code = rn.subscribe(pattern, function(msg, topic, from, pos)
    log[#log + 1] = { topic = topic, message = msg == nil and rn.json.null or msg, from = from,
      epoch = pos and pos.epoch, offset = pos and pos.offset, node = pos and pos.node }
  end)
  if not h then return { error = err, code = code } end
  handles[pattern] = h
  return true
end

function hs.unsubscribe(pattern)
  local h = handles[pattern]
  handles[pattern] = nil
  return h ~= nil and h:unsubscribe()
end

function hs.received(pattern)
  return rn.json.array(received[pattern] or {})
end

--- Publishes `msg` (n times: "msg1" .. "msgN" when n is given): the count
--- of the last publish.
function hs.publish(topic, msg, n)
  local last
  for i = 1, n or 1 do
    last = rn.publish(topic, n and (msg .. i) or msg)
  end
  return last
end

--- rn.recover from this node: { list, epoch, more } | { error, code }.
function hs.recover(topic, node, epoch, offset)
  if epoch == rn.json.null then epoch = nil end
  if offset == rn.json.null then offset = nil end
  local list, err, code = rn.recover(topic, node, epoch, offset, 5)
  if not list then return { error = err, code = code } end
  local out = rn.json.array()
  for i, m in ipairs(list) do
    out[i] = { message = m.message == nil and rn.json.null or m.message, offset = m.offset, topic = m.topic }
  end
  return { list = out, epoch = list.epoch, more = list.more or false }
end

rn.expose("hs", hs)

local srv = assert(rn.server())
srv:on("message", function(id, text)
  local pattern = tostring(text):match("^sub (.+)$")
  if pattern then
    local ok, err = srv:subscribe(id, pattern)
    srv:ws_send(id, rn.json.encode({ ack = "sub", pattern = pattern, ok = ok or false, error = err }))
    return
  end
  -- "rsub TOPIC NODE EPOCH OFFSET": subscribe with recovery from that position
  local topic, node, epoch, offset = tostring(text):match("^rsub (%S+) (%S+) (%S+) (%d+)$")
  local good, ok, err = pcall(srv.subscribe, srv, id, topic,
    { recover = { node = node, epoch = epoch, offset = math.tointeger(tonumber(offset)) } })
  if not good then ok, err = false, tostring(ok) end
  srv:ws_send(id, rn.json.encode({ ack = "rsub", topic = topic, ok = ok or false, error = err }))
end)
