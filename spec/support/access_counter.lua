-- spec/support/access_counter.lua: examples/p2p/counter_server.lua behind
-- access rules. Run by the relaynet command; its first argument is the
-- rules as JSON ({"node id or *": ["server.method", "server.*", "*"]}),
-- handed to rn.mesh_access before the counter is exposed.

local rn = require("relaynet")

local rules = assert(rn.json.decode(assert(arg[1], "access_counter.lua: the rules (JSON) are its argument")))
rn.mesh_access(rules)
local here = debug.getinfo(1, "S").source:match("^@(.*)/spec/support/access_counter%.lua$") or "."
dofile(here .. "/examples/p2p/counter_server.lua")
