-- relaynet publish fan-out node for the "fanout" scenario of bench/run.py
-- (docs/BENCHMARKS.md, "Publish fan-out across the mesh").
--
--   relaynet bench/peers/rn_fanout.lua --host H --port P --node-id ID [--add-peer URL]
--
-- Every WebSocket connection of the node's server subscribes to topic
-- bench.fanout when it opens (server:subscribe: each matching publish
-- reaches it as the text frame {"topic":T,"from":NODE,"message":M}); every
-- message a connection sends is published to that topic (rn.publish), so it
-- reaches the subscribers of every node over the mesh. bench/run.py starts
-- three nodes in a line (B and C each dial the one before), spreads the
-- receivers of bench/build/loadgen over them and sends from one connection
-- on the first node.
--
-- Until the interest of `--expect N` nodes (this one included) is known, a
-- message waits (20 ms steps, 10 s at most) before it is published, so that
-- no publish of the run misses a node whose subscriptions are still being
-- advertised.
local rn = require("relaynet")

local TOPIC = "bench.fanout"
local expect = tonumber(os.getenv("RN_FANOUT_EXPECT") or "1")

-- 10,000 subscribers over three nodes: above the default bounds.
rn.mesh_config.max_subscriptions = 100000

local function interested()
  local n = 1
  for _, r in ipairs(rn.routes()) do
    for _, p in ipairs(r.topics or {}) do
      if p == TOPIC then n = n + 1 end
    end
  end
  return n
end

rn.main(function()
  local srv = assert(rn.server())
  local ready = expect <= 1
  srv:on("connect", function(conn_id)
    local ok, err = srv:subscribe(conn_id, TOPIC)
    if not ok then io.stderr:write("rn_fanout: subscribe: ", tostring(err), "\n") end
  end)
  srv:on("message", function(_, msg)
    if not ready then
      local deadline = rn.now() + 10
      while interested() < expect and rn.now() < deadline do rn.sleep(0.02) end
      ready = true
    end
    rn.publish(TOPIC, msg)
  end)
  print("rn_fanout node " .. rn.node_id() .. " on port " .. srv.port)
  io.stdout:flush()
end)
