-- bench/peers/rn_pub_relay_cg.lua N MODE PAYLOAD: a relay's work per
-- relayed publish, for callgrind (docs/BENCHMARKS.md, issue 12).
--
-- The middle node of a 3-node line publisher -> relay -> subscriber, in
-- this process: the relay ("bench-relay1") has a link from the publisher
-- and one to the subscriber (fake connections whose send only counts), and
-- receives the same publish text N times on the first, listing only the
-- subscriber in data.nodes. MODE "fast" is the relay as it is; "decode"
-- turns pubsub.relay_text off, so every publish takes the decoding road
-- (core.mesh_scan still runs, as it did before publishes had a fast path).
-- PAYLOAD "text16" is a 16-byte string message, "json1k" the JSON text of
-- an object of about 1 KB. Instructions per publish = (Ir(N2) - Ir(N1)) /
-- (N2 - N1) over two runs.
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local L = require("relaynet.mesh.link")
local U = require("relaynet.mesh.pubsub")

local n, mode, payload = tonumber(arg[1]), arg[2] or "fast", arg[3] or "text16"
require("relaynet.mesh").reset()
I.set_node_id("bench-relay1")
if mode == "decode" then U.relay_text = function() return false end end

local sent = 0
local function fake(peer, dir, count)
  local l = L.new(dir, { id = "c-" .. peer, send = function()
    if count then sent = sent + 1 end
    return true
  end, close = function() end })
  l.state, l.peer = "up", peer
  S.links[peer] = l
  return l
end
local from = fake("bench-pub", "in")
fake("bench-sub", "out", true)
S.best["bench-sub"] = { next = "bench-sub", path = { "bench-sub" }, servers = {} }

local data = { topic = "bench.room", run = "Rn00000000000001", seq = 1, nodes = json.array({ "bench-sub" }) }
if payload == "json1k" then
  local items = {}
  for i = 1, 16 do items[i] = { id = i, name = "item-" .. i, tags = { "a", "b\"c" }, score = i * 1.5, ok = true } end
  data.json = json.encode({ kind = "batch", items = items })
else
  data.text = "xxxxxxxxxxxxxxxx"
end
local text = json.encode({ type = "publish", id = "Pb00000000000001", from = "bench-pub", ttl = 16,
  route = { "bench-pub" }, timestamp = 1764733000001, data = data })
for _ = 1, n do from:on_message(text) end
assert(sent == n, "relayed " .. sent .. " of " .. n)
io.stderr:write(string.format("%s %s: %d bytes, relayed %d\n", mode, payload, #text, sent))
