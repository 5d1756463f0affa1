-- relaynet.mesh.wire: what every mesh file uses to build, check and send
-- envelopes, and whether relaynet is running.

local sched = require("relaynet.sched")
local json = require("relaynet.json")

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

--- Sends encoded text on a link; false when the link is closed or the send fails.
function W.send_text(link, text)
  if not link or link.state == "closed" then return false end
  return link.send(text) == true
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
  local ok = link.send(text)
  return ok == true
end

return W
