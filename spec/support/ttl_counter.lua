-- spec/support/ttl_counter.lua: examples/p2p/counter_server.lua with a
-- short lifetime for signed route entries. Run by the relaynet command;
-- its first argument is rn.mesh_config.entry_ttl in seconds.

local rn = require("relaynet")

rn.mesh_config.entry_ttl = assert(tonumber(arg[1]), "ttl_counter.lua: the entry_ttl (seconds) is its argument")
local here = debug.getinfo(1, "S").source:match("^@(.*)/spec/support/ttl_counter%.lua$") or "."
dofile(here .. "/examples/p2p/counter_server.lua")
