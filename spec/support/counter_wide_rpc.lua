-- The counter server with the JSON-RPC per-address share lifted, for the
-- attack spec that fills the node-wide mesh max_calls from one address
-- (every test client is on 127.0.0.1). Run by bin/relaynet like the counter.
require("relaynet.jsonrpc").LIMITS.max_calls_per_address = 1 << 30
local dir = debug.getinfo(1, "S").source:match("^@(.*)/spec/support/[^/]*$") or "."
dofile(dir .. "/examples/p2p/counter_server.lua")
