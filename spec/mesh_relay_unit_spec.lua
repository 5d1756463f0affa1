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

-- Publishes (type "publish") this node only relays take the same road: the
-- scan reads data.nodes and the route, and the relay splices a new
-- data.nodes, ttl, route and timestamp into the text.

local U = require("relaynet.mesh.pubsub")

local function pub_env(over, data_over)
  local env = {
    type = "publish", id = "Pb00000000000001", from = PEER, ttl = 16, route = { PEER },
    timestamp = 1764733000001,
    data = { topic = "chat.room", run = "Rn00000000000001", seq = 7, nodes = json.array({ "n1", "n2" }),
      json = '{"who":"a\\"b","n":[1,2]}' },
  }
  for k, v in pairs(over or {}) do env[k] = v end
  -- false removes a field of data
  for k, v in pairs(data_over or {}) do env.data[k] = v or nil end
  return env
end

describe("core.mesh_scan of a publish", function()
  it("reads a publish this node only relays", function()
    local kind, t = scan(json.encode(pub_env()))
    assert.equal(3, kind)
    assert.equal(PEER, t.from)
    assert.equal(16, t.ttl)
    assert.same({ "n1", "n2" }, t.nodes)
    assert.same({ PEER }, t.route)
    assert.equal(#"chat.room", t.topic_len)
    assert.is_false(t.has_me)
    assert.is_true(t.route_ends)
    -- a string message, with a history position
    kind, t = scan(json.encode(pub_env(nil, { json = false, text = "hi\n\"there\"", epoch = "E1", offset = 3 })))
    assert.equal(3, kind)
    assert.same({ "n1", "n2" }, t.nodes)
  end)

  it("gives up on a publish for this node and on anything unusual", function()
    local base = json.encode(pub_env())
    local cases = {
      json.encode(pub_env(nil, { nodes = json.array({ "n1", ME }) })),
      base:gsub('"nodes":%["n1"', '"nodes":["n\\u0031"'),
      base:gsub('"nodes":%[', '"nodes":["x"],"nodes":['),
      base:gsub('"nodes":%["n1","n2"%]', '"nodes":[]'),
      base:gsub('"nodes":%["n1"', '"nodes":[1'),
      base:gsub('"nodes":%["n1","n2"%]', '"nodes":"n1"'),
      base:gsub('"topic":"chat.room"', '"topic":"chat\\u002eroom"'),
      base:gsub('"seq":7', '"seq":7.0'),
      base:gsub('"run":"Rn00000000000001"', '"run":""'),
      json.encode(pub_env(nil, { text = "x" })),
      base:gsub('"json":', '"json":null,"x":'),
      json.encode(pub_env(nil, { json = 5 })),
      json.encode(pub_env(nil, { epoch = "E1" })),
      json.encode(pub_env(nil, { epoch = "E1", offset = 1.5 })),
      json.encode(pub_env({ route = { PEER, 3 } })),
      json.encode(pub_env({ id = "" })),
      base .. " x",
    }
    for i, text in ipairs(cases) do
      assert.equal(0, (scan(text)), "case " .. i .. ": " .. text)
    end
  end)

  it("splices data.nodes, ttl, route and timestamp into the text", function()
    local text = '{ "type":"publish","id":"i","from":"caller-x","ttl":3,"route":[ "caller-x" ],'
      .. '"data":{"nodes": [ "a" , "b" ],"topic":"t","run":"r","seq":1,"json":"{\\"k\\": 1}"} }'
    local kind, t = scan(text)
    assert.equal(3, kind)
    local out = core.mesh_splice_publish(text, t, 2, ME, { "b" }, 7)
    assert.equal('{"timestamp":7, "type":"publish","id":"i","from":"caller-x","ttl":2,'
      .. '"route":[ "caller-x" ,"relay-x"],"data":{"nodes": ["b"],"topic":"t","run":"r","seq":1,'
      .. '"json":"{\\"k\\": 1}"} }', out)
    assert.has_error(function() core.mesh_splice_publish(text, t, 2, ME, { 'a"b' }, 7) end)
    assert.has_error(function() core.mesh_splice_publish(text, t, 2, ME, { 1 }, 7) end)
  end)
end)

describe("pubsub.relay_text over fake links", function()
  local sent, a

  local function fake(peer)
    local l = L.new("out", { id = "c-" .. peer, send = function(text)
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
    a = fake(PEER)
    fake("hop-1")
    fake("hop-2")
    S.best["n1"] = { next = "hop-1", path = { "hop-1", "n1" }, servers = {} }
    S.best["n2"] = { next = "hop-2", path = { "hop-2", "n2" }, servers = {} }
    S.best["n3"] = { next = "hop-1", path = { "hop-1", "n3" }, servers = {} }
    S.best["back"] = { next = PEER, path = { PEER, "back" }, servers = {} }
  end)

  after_each(function()
    S.links[PEER], S.links["hop-1"], S.links["hop-2"] = nil, nil, nil
    require("relaynet.mesh").reset()
  end)

  local COUNTERS = { "pubsub_relayed", "pubsub_no_route", "ttl_expired", "dropped_loops", "spoofed_messages",
    "bad_messages", "pubsub_received" }

  -- Runs `text` through the link (fast path) and through on_publish on its
  -- decoded value; returns both: the counter deltas and what was sent
  -- (decoded, timestamps dropped), by next hop.
  local function both_roads(text)
    local out = {}
    for road = 1, 2 do
      sent = {}
      local before = {}
      for _, k in ipairs(COUNTERS) do before[k] = S.stats[k] end
      if road == 1 then a:on_message(text) else U.on_publish(a, json.decode(text)) end
      local r = { stats = {}, sent = {} }
      for _, k in ipairs(COUNTERS) do r.stats[k] = S.stats[k] - before[k] end
      for _, s in ipairs(sent) do
        local v = json.decode(s[2])
        assert.is_number(v.timestamp)
        v.timestamp = nil
        r.sent[s[1]] = v
      end
      out[road] = r
    end
    return out[1], out[2]
  end

  it("relays a publish by next hop without decoding it, the message byte for byte", function()
    local decode = json.decode
    local decoded = 0
    local text = json.encode(pub_env(nil, { nodes = json.array({ "n1", "n2", "n3", "n1" }) }))
    json.decode = function(...) decoded = decoded + 1; return decode(...) end
    local ok, err = pcall(a.on_message, a, text)
    json.decode = decode
    assert(ok, err)
    assert.equal(0, decoded)
    assert.equal(2, #sent)
    local by = {}
    for _, s in ipairs(sent) do
      by[s[1]] = s[2]
      assert.truthy(s[2]:find('"json":"{\\"who\\":\\"a\\\\\\"b\\",\\"n\\":[1,2]}"', 1, true))
    end
    local v1, v2 = json.decode(by["hop-1"]), json.decode(by["hop-2"])
    assert.same({ "n1", "n3" }, v1.data.nodes)
    assert.same({ "n2" }, v2.data.nodes)
    assert.same({ PEER, ME }, v1.route)
    assert.equal(15, v1.ttl)
    assert.equal(v1.timestamp, v2.timestamp)
    assert.equal('{"who":"a\\"b","n":[1,2]}', v1.data.json)
  end)

  it("counts and drops exactly as on_publish does", function()
    local cases = {
      pub_env(nil, { nodes = json.array({ "n1", "n2", "n3" }) }),
      pub_env(nil, { nodes = json.array({ "n1", "nowhere", "back", "n2", "nowhere" }) }),
      pub_env({ ttl = 1 }, { nodes = json.array({ "n1", "n2" }) }),
      pub_env({ ttl = 99 }, { nodes = json.array({ "n1" }) }),
      pub_env({ route = { PEER, ME, PEER } }),
      pub_env({ route = { "someone", PEER } }),
      pub_env({ route = { PEER, "hop-1" } }),
      pub_env({ route = {} }),
      pub_env(nil, { topic = string.rep("t", 300) }),
      pub_env(nil, { text = "plain", json = false, epoch = "E", offset = 4 }),
    }
    for i, env in ipairs(cases) do
      local text = json.encode(env)
      local fast, slow = both_roads(text)
      assert.same(slow, fast, "case " .. i .. ": " .. text)
    end
  end)
end)
