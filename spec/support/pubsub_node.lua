-- spec/support/pubsub_node.lua: a mesh node for spec/pubsub_spec.lua. It
-- exposes server "ps", which subscribes, unsubscribes and publishes on this
-- node and reports what its subscriptions received, and it answers
-- WebSocket text messages "sub PATTERN" / "unsub PATTERN" on its server by
-- calling server:subscribe / server:unsubscribe for that connection ("limit
-- N" sets mesh_config.max_subscriptions_per_connection), each with an ack.

local rn = require("relaynet")

local handles = {}  -- pattern -> subscription handle
local received = {} -- pattern -> list of { topic, message, from }

local ps = {}

function ps.subscribe(pattern)
  if handles[pattern] then return true end
  received[pattern] = received[pattern] or {}
  local log = received[pattern]
  local h, err, code = rn.subscribe(pattern, function(msg, topic, from)
    log[#log + 1] = { topic = topic, message = msg == nil and rn.json.null or msg, from = from }
  end)
  if not h then return { error = err, code = code } end
  handles[pattern] = h
  return true
end

function ps.unsubscribe(pattern)
  local h = handles[pattern]
  handles[pattern] = nil
  return h ~= nil and h:unsubscribe()
end

function ps.received(pattern)
  return rn.json.array(received[pattern] or {})
end

function ps.clear()
  received = {}
  for p in pairs(handles) do received[p] = {} end
  return true
end

function ps.publish(topic, msg, n)
  local last
  for i = 1, n or 1 do
    local m = msg
    if n then m = { i = i, msg = msg } end
    last = rn.publish(topic, m)
  end
  return last
end

rn.expose("ps", ps)

local srv = assert(rn.server())
srv:on("message", function(id, text)
  local verb, pattern = tostring(text):match("^(%a+) (.+)$")
  local ok, err
  if verb == "sub" then
    local good, a, b = pcall(srv.subscribe, srv, id, pattern)
    if good then ok, err = a, b else ok, err = false, tostring(a) end
  elseif verb == "unsub" then
    ok = srv:unsubscribe(id, pattern)
  elseif verb == "limit" then
    rn.mesh_config.max_subscriptions_per_connection = tonumber(pattern)
    ok = true
  end
  srv:ws_send(id, rn.json.encode({ ack = verb, pattern = pattern, ok = ok or false, error = err }))
end)
