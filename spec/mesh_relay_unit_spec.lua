-- spec/mesh_relay_unit_spec.lua: the relay fast path (core.mesh_scan,
-- core.mesh_splice_call and calls.relay_text; docs/DESIGN.md "Relaying
-- without decoding") over fake links in this process.
--
-- A relay passes on calls and responses that are not for it from their
-- text. These specs check that the scan vouches only for what the decoder
-- reads the same way, that the forwarded text is the call with exactly its
-- ttl, timeout_ms, timestamp and route changed, and that everything the
-- scan gives up on still takes the decoding road with its counters.

local core = require("relaynet.core")
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local L = require("relaynet.mesh.link")

local ME, PEER = "relay-x", "caller-x"

local function call_env(over)
  local env = {
    type = "server_call", id = "Ab00000000000001", from = PEER, to = "target-x", ttl = 16,
    route = { PEER }, timestamp = 1764733000001,
    data = { server = "bench", method = "echo", args = json.array({ "xxxxxxxxxxxxxxxx" }), timeout_ms = 5000 },
  }
  for k, v in pairs(over or {}) do env[k] = v end
  return env
end

local function scan(text, me, peer)
  local t = {}
  return core.mesh_scan(text, t, me or ME, peer or PEER, json.MAX_DEPTH), t
end

describe("core.mesh_scan", function()
  it("reads the routing fields of a call and a response", function()
    local kind, t = scan(json.encode(call_env()))
    assert.equal(1, kind)
    assert.equal("Ab00000000000001", t.id)
    assert.equal(PEER, t.from)
    assert.equal("target-x", t.to)
    assert.equal(16, t.ttl)
    assert.equal(5000, t.timeout_ms)
    assert.equal(1, t.nroute)
    assert.is_false(t.has_me)
    assert.is_true(t.route_ends)
    kind, t = scan(json.encode({ type = "server_response", id = "r1", reply_to = "Ab00000000000001",
      from = "target-x", to = PEER, ttl = 16, data = { result = "x" } }))
    assert.equal(2, kind)
    assert.equal(PEER, t.to)
    assert.equal("Ab00000000000001", t.reply_to)
  end)

  it("gives up on whatever the decoder would read differently, or not at all", function()
    local base = json.encode(call_env())
    local cases = {
      -- for this node, or another type
      json.encode(call_env({ to = ME })),
      json.encode(call_env({ type = "route_message" })),
      -- escapes in a routing field or a key, a key twice
      base:gsub('"from":"caller%-x"', '"from":"caller\\u002dx"'),
      base:gsub('"ttl":16', '"t\\u0074l":16'),
      base:gsub('"ttl":16', '"ttl":16,"ttl":15'),
      base:gsub('"timeout_ms":5000', '"timeout_ms":5000,"timeout_ms":1'),
      -- numbers that are not plain integers
      base:gsub('"ttl":16', '"ttl":16.0'),
      base:gsub('"ttl":16', '"ttl":1.6e1'),
      base:gsub('"timeout_ms":5000', '"timeout_ms":5e3'),
      -- shapes on_call refuses: answered on the decoding road
      base:gsub('"args":%[', '"args":1,"x":['),
      base:gsub('"server":"bench"', '"server":""'),
      base:gsub('"route":%["caller%-x"%]', '"route":"caller-x"'),
      base:gsub('"route":%["caller%-x"%]', '"route":["caller-x",1]'),
      json.encode(call_env({ from = 42 })),
      -- invalid JSON: trailing text, a bad escape, a number out of range, too deep
      base .. "x",
      base:gsub('"echo"', '"ec\\qho"'),
      base:gsub('"xxxxxxxxxxxxxxxx"', '1e400'),
      base:gsub('%["xxxxxxxxxxxxxxxx"%]', string.rep("[", 31) .. string.rep("]", 31)),
      "\255" .. base,
      "[]", "", "null",
    }
    for i, text in ipairs(cases) do
      assert.equal(0, (scan(text)), "case " .. i .. ": " .. text)
    end
    -- at the depth limit exactly it still reads it
    assert.equal(1, (scan((base:gsub('%["xxxxxxxxxxxxxxxx"%]', string.rep("[", 30) .. string.rep("]", 30))))))
  end)

  it("splices the new ttl, timeout, timestamp and route into the text", function()
    local text = json.encode(call_env())
    local _, t = scan(text)
    local out = core.mesh_splice_call(text, t, 15, ME, 4990, 1764733000009)
    local v = json.decode(out)
    local want = call_env({ ttl = 15, route = { PEER, ME }, timestamp = 1764733000009 })
    want.data.timeout_ms = 4990
    assert.same(want, v)
    -- no timestamp: one is put first; whitespace and key order are kept
    text = '{ "type":"server_call" ,"id":"i","from":"caller-x","to":"t","ttl":3,"route":[ "caller-x" ],'
      .. '"data":{"server":"s","method":"m","args":{},"timeout_ms":100} }'
    _, t = scan(text)
    out = core.mesh_splice_call(text, t, 2, ME, 90, 7)
    assert.equal('{"timestamp":7, "type":"server_call" ,"id":"i","from":"caller-x","to":"t","ttl":2,'
      .. '"route":[ "caller-x" ,"relay-x"],"data":{"server":"s","method":"m","args":{},"timeout_ms":90} }', out)
  end)
end)

describe("relay_text over fake links", function()
  local sent, a, b

  local function fake(peer, dir)
    local l = L.new(dir, { id = "c-" .. peer, send = function(text)
      sent[#sent + 1] = { peer, text }
      return true
    end, close = function() end })
    l.state, l.peer = "up", peer
    S.links[peer] = l
    return l
  end

  before_each(function()
    require("relaynet.mesh").reset()
    I.set_node_id(ME)
    sent = {}
    a, b = fake(PEER, "in"), fake("target-x", "out")
    S.best["target-x"] = { next = "target-x", path = { "target-x" }, servers = {} }
    S.best[PEER] = { next = PEER, path = { PEER }, servers = {} }
  end)

  after_each(function()
    S.links[PEER], S.links["target-x"] = nil, nil
    require("relaynet.mesh").reset()
  end)

  it("relays a call and its response without decoding them", function()
    local decode = json.decode
    local decoded = 0
    json.decode = function(...) decoded = decoded + 1; return decode(...) end
    local ok, err = pcall(function()
      a:on_message(json.encode(call_env()))
      assert.equal(1, #sent)
      assert.equal("target-x", sent[1][1])
      local fwd = json.decode(sent[1][2])
      decoded = decoded - 1
      assert.equal(15, fwd.ttl)
      assert.same({ PEER, ME }, fwd.route)
      assert.is_true(fwd.data.timeout_ms <= 5000 and fwd.data.timeout_ms >= 4900)
      assert.equal(1, S.n_forwards)
      local resp = json.encode({ type = "server_response", id = "r1", reply_to = "Ab00000000000001",
        from = "target-x", to = PEER, ttl = 16, data = { result = "xxxxxxxxxxxxxxxx" } })
      b:on_message(resp)
      assert.equal(2, #sent)
      assert.same({ PEER, resp }, sent[2])
      assert.equal(0, S.n_forwards)
      assert.equal(0, decoded)
    end)
    json.decode = decode
    assert(ok, err)
  end)

  it("counts loops, spoofed routes and unknown responses as the decoding road does", function()
    local stats = S.stats
    local loops, spoofed, unknown = stats.dropped_loops, stats.spoofed_messages, stats.unknown_replies
    a:on_message(json.encode(call_env({ route = { PEER, ME, PEER } })))
    assert.equal(loops + 1, stats.dropped_loops)
    a:on_message(json.encode(call_env({ route = { "someone" } })))
    assert.equal(spoofed + 1, stats.spoofed_messages)
    -- the spoofed call is answered with EINVAL toward where it came from
    local answer = json.decode(sent[#sent][2])
    assert.equal(PEER, sent[#sent][1])
    assert.equal("EINVAL", answer.data.error.code)
    b:on_message(json.encode({ type = "server_response", id = "r9", reply_to = "nope", from = "target-x",
      to = PEER, ttl = 16, data = { result = 1 } }))
    assert.equal(unknown + 1, stats.unknown_replies)
    -- a malformed call still goes the decoding road: counted, answered
    local bad = stats.bad_messages
    a:on_message(json.encode(call_env({ data = { server = "s" } })))
    assert.equal(bad + 1, stats.bad_messages)
  end)
end)
