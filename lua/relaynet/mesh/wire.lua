-- relaynet.mesh.wire: what every mesh file uses to build, check and send
-- envelopes, including the one builder of the server_response envelope,
-- and whether relaynet is running.

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")

local cfg = S.config

local W = {}

-- relaynet.runtime requires relaynet.mesh when it loads (it starts and
-- resets the mesh around every run), so the mesh cannot require it at load
-- time: it is required here on first use, when both are loaded.
local runtime

--- True while relaynet runs and is not stopping (relaynet.runtime.running).
function W.running()
  if not runtime then runtime = require("relaynet.runtime") end
  return runtime.running()
end

--- The scheduler's clock, in seconds.
function W.now() return sched.now() end

function W.contains(list, x)
  for i = 1, #list do if list[i] == x then return true end end
  return false
end

function W.count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

--- True for a non-empty string of at most `max` (default 128) bytes.
function W.is_name(s, max)
  return type(s) == "string" and #s > 0 and #s <= (max or 128)
end

--- Checks the route of a routed message `env` (every hop appends itself)
--- that arrived on `link`: false when this node is on it already (a loop,
--- counted in stats.dropped_loops); false, "spoofed" when it does not start
--- at env.from or does not end at the neighbour it came from
--- (stats.spoofed_messages): the first hop checks `from` against the
--- link's authenticated peer, each later one that the previous hop is the
--- link's. True otherwise.
function W.route_ok(link, env)
  local route = env.route
  if W.contains(route, I.node_id()) then
    S.stats.dropped_loops = S.stats.dropped_loops + 1
    return false
  end
  if route[1] ~= env.from or route[#route] ~= link.peer then
    S.stats.spoofed_messages = S.stats.spoofed_messages + 1
    return false, "spoofed"
  end
  return true
end

--- The failure triple of the mesh API: nil, "CODE: message", CODE.
function W.fail(code, fmt, ...)
  return nil, code .. ": " .. string.format(fmt, ...), code
end

--- Encodes an envelope for sending (stamping it when it has no timestamp):
--- text | nil, message. Never logs: a value that cannot be encoded is the
--- caller's problem, answered as such.
function W.encode_envelope(env)
  env.timestamp = env.timestamp or math.floor(W.now() * 1000)
  return json.encode(env)
end

--- Sends encoded text on a link (a Link of mesh/link.lua, or nil); false
--- when there is no link, it is closed or the send fails.
function W.send_text(link, text)
  if not link then return false end
  return link:send(text)
end

--- Encodes and sends an envelope this node built itself; one that cannot be
--- encoded is a bug here, reported through sched.report. True when sent.
function W.send(link, env)
  if not link or link.state == "closed" then return false end
  local text, err = W.encode_envelope(env)
  if not text then
    sched.report("relaynet.mesh: cannot encode a " .. tostring(env.type) .. " message: " .. tostring(err))
    return false
  end
  return link:send(text)
end

--- The one builder of the server_responses this node originates: sends the
--- answer to call `reply_to` of node `caller` on `link`, an error (err,
--- code; code defaults to EREMOTE) or a result. A result JSON cannot hold is
--- answered with EREMOTE saying so (the caller learns at once rather than at
--- its timeout), and counted in stats.unencodable.
function W.respond(link, reply_to, caller, result, err, code)
  local data
  if err then
    data = { error = { code = code or "EREMOTE", message = err } }
  else
    data = { result = result == nil and json.null or result }
  end
  local env = {
    type = "server_response", id = I.new_id(), reply_to = reply_to, from = I.node_id(),
    to = caller, ttl = cfg.max_ttl, data = data,
  }
  local text, eerr = W.encode_envelope(env)
  if not text then
    S.stats.unencodable = S.stats.unencodable + 1
    env.data = { error = { code = "EREMOTE", message = "EREMOTE: the answer of node " .. I.node_id() ..
      " cannot be encoded as JSON: " .. tostring(eerr) } }
    text = W.encode_envelope(env)
  end
  if text then W.send_text(link, text) end
end

--- Answers `call` (a server_call envelope) on `link`: W.respond for it.
function W.reply(link, call, result, err, code)
  return W.respond(link, call.id, call.from, result, err, code)
end

return W
