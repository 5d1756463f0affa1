-- spec/support/rpc_pubsub_node.lua: a mesh node for
-- spec/jsonrpc_pubsub_spec.lua. It exposes server "knob", whose set(name,
-- value) changes one pub/sub bound of rn.mesh_config on this node (only
-- the names below; it returns the old value) so the spec can reach the
-- bounds of JSON-RPC subscriptions and publishes with few requests.

local rn = require("relaynet")

local KNOBS = {
  max_subscriptions = true, max_subscriptions_per_connection = true, max_patterns = true,
  max_publish_rate = true, max_publish_burst = true, max_publish_bytes = true,
}

rn.expose("knob", {
  set = function(name, value)
    if not KNOBS[name] then error("not a knob: " .. tostring(name)) end
    local old = rn.mesh_config[name]
    rn.mesh_config[name] = value
    return old
  end,
})
