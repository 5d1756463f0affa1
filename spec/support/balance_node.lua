-- spec/support/balance_node.lua: a mesh node for spec/call_any_spec.lua. It
-- exposes server "work", whose methods count what ran on this node, so the
-- spec can tell on which node, and how many times, each call ran:
--   hit()               counts one hit and returns this node's id
--   hold(tag, seconds)  counts a run of `tag`, then waits (20 ms steps) until
--                       release(tag) or `seconds`; returns this node's id
--   boom(tag)           counts a run of `tag`, then raises
--   release(tag)        lets every hold(tag) here return
--   ran(tag)            how many times `tag` ran here; hits() the hits
--   set(key, value)     sets rn.mesh_config[key] (a number) and returns true;
--                       a mesh message {key, value} does the same (it works
--                       while max_served = 0 refuses every call)
--   reset()             forgets the counts

local rn = require("relaynet")

local hits, ran, released = 0, {}, {}

local work = {}

function work.hit()
  hits = hits + 1
  return rn.node_id()
end

function work.hold(tag, seconds)
  ran[tag] = (ran[tag] or 0) + 1
  local deadline = rn.now() + (seconds or 10)
  while not released[tag] and rn.now() < deadline do rn.sleep(0.02) end
  return rn.node_id()
end

function work.boom(tag)
  ran[tag] = (ran[tag] or 0) + 1
  error("boom on " .. rn.node_id(), 0)
end

function work.release(tag)
  released[tag] = true
  return true
end

function work.ran(tag) return ran[tag] or 0 end

function work.hits() return hits end

function work.set(key, value)
  assert(type(rn.mesh_config[key]) == "number" and type(value) == "number", "set: a numeric mesh_config key")
  rn.mesh_config[key] = value
  return true
end

function work.reset()
  hits, ran, released = 0, {}, {}
  return true
end

rn.on_mesh_message(function(_, msg)
  if type(msg) == "table" then work.set(msg.key, msg.value) end
end)

rn.expose("work", work)
