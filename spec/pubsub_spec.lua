-- spec/pubsub_spec.lua: topics across the mesh (README "Pub/sub").
--
-- The unit part checks the subject syntax, wildcard matching and the bounds
-- in this process. The mesh part runs real node processes
-- (spec/support/mesh_harness.lua) with spec/support/pubsub_node.lua, which
-- exposes server "ps" to subscribe, publish and read what its
-- subscriptions received; the test process joins as node "tester".

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local json = require("relaynet.json")
local P = require("relaynet.mesh.pubsub_match")

local NODE = H.ROOT .. "/spec/support/pubsub_node.lua"

-- remote_call that must succeed.
local function call(node, method, args)
  local res, err, code = rn.remote_call(node, "ps", method, args or {}, 5)
  assert(err == nil, string.format("ps.%s on %s failed: %s (%s)", method, node, tostring(err), tostring(code)))
  return res
end

-- The subscription patterns the tester's route to `node` carries ("" when none).
local function topics_of(node)
  for _, r in ipairs(rn.routes()) do
    if r.node == node then return table.concat(r.topics or {}, ",") end
  end
  return nil
end

local function wait_topics(node, want, timeout)
  MH.wait_until(function() return topics_of(node) == want end,
    string.format("the route to %s to carry topics %q", node, want), timeout or 10,
    function() return "now: " .. tostring(topics_of(node)) end)
end

local function stats_of(m, id)
  return assert(m:status(id), "no status from " .. id).stats
end

describe("pub/sub subjects", function()
  it("checks topics and patterns", function()
    assert.truthy(P.check_topic("chat.room1"))
    assert.truthy(P.check_topic("a"))
    assert.truthy(P.check_topic("user:42.ev-1.x_y.a@b"))
    assert.truthy(P.check_pattern("chat.*"))
    assert.truthy(P.check_pattern("chat.>"))
    assert.truthy(P.check_pattern("*.*.>"))
    assert.truthy(P.check_pattern(">"))
    local function bad(fn, s, want)
      local ok, why = fn(s)
      assert.is_nil(ok, s)
      assert.truthy(why:find(want, 1, true), why)
    end
    bad(P.check_topic, "chat.*", "wildcard")
    bad(P.check_topic, "chat.>", "wildcard")
    bad(P.check_topic, "", "empty")
    bad(P.check_topic, "a..b", "empty token")
    bad(P.check_topic, ".a", "empty token")
    bad(P.check_topic, "a.", "empty token")
    bad(P.check_topic, "a b", "character")
    bad(P.check_topic, "a/b", "character")
    bad(P.check_topic, 42, "must be a string")
    bad(P.check_pattern, "a.>.b", "last token")
    bad(P.check_pattern, "a.b*", "character")
    bad(P.check_topic, string.rep("x", 65), "token of 65 bytes")
    bad(P.check_topic, string.rep("abc.", 80) .. "x", "at most 256")
  end)

  it("matches NATS-style wildcards", function()
    local cases = {
      { "chat.room1", "chat.room1", true },
      { "chat.room1", "chat.room2", false },
      { "chat.*", "chat.room1", true },
      { "chat.*", "chat", false },
      { "chat.*", "chat.a.b", false },
      { "*.room1", "chat.room1", true },
      { "*", "chat", true },
      { "*", "chat.x", false },
      { "chat.>", "chat.a", true },
      { "chat.>", "chat.a.b.c", true },
      { "chat.>", "chat", false },
      { ">", "a", true },
      { ">", "a.b", true },
      { "a.*.c.>", "a.b.c.d", true },
      { "a.*.c.>", "a.b.c", false },
      { "a.*.c", "a.b.d", false },
      { "chat", "chat.x", false },
    }
    for _, c in ipairs(cases) do
      assert.equal(c[3], P.match(c[1], c[2]), c[1] .. " vs " .. c[2])
    end
  end)

  it("delivers local publishes and gives clear errors", function()
    H.run(function()
      local got = {}
      local h = rn.subscribe("local.*", function(msg, topic, from)
        got[#got + 1] = { msg, topic, from }
      end)
      assert.equal("relaynet.Subscription", getmetatable(h).__name)
      assert.equal(1, rn.publish("local.a", "hello"))
      assert.equal(1, rn.publish("local.b", { n = 1 }))
      assert.equal(0, rn.publish("other.a", "x"))
      assert.equal(1, rn.publish("local.c", { 1, 2, 3 }))
      assert.equal("hello", got[1][1])
      assert.equal("local.a", got[1][2])
      assert.equal(rn.node_id(), got[1][3])
      assert.same({ n = 1 }, got[2][1])
      assert.same({ 1, 2, 3 }, got[3][1])

      -- misuse raises, naming the problem
      local ok, err = pcall(rn.subscribe, "a..b", function() end)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("EINVAL: topic 'a..b' has an empty token", 1, true), err)
      ok, err = pcall(rn.subscribe, "a.b", "not a function")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("expected a function", 1, true), err)
      ok, err = pcall(rn.publish, "a.*", "x")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("EINVAL", 1, true) and tostring(err):find("wildcard", 1, true), err)

      -- payloads JSON cannot hold, and too large ones
      local r, msg, code = rn.publish("local.a", { f = function() end })
      assert.is_nil(r)
      assert.equal("EINVAL", code)
      assert.truthy(msg:find("cannot be encoded as JSON", 1, true), msg)
      r, msg, code = rn.publish("local.a", string.rep("x", rn.mesh_config.max_publish_bytes + 1))
      assert.is_nil(r)
      assert.equal("EINVAL", code)
      assert.truthy(msg:find("max_publish_bytes", 1, true), msg)
      r, msg, code = rn.publish("local.a", "\xff\xfe")
      assert.is_nil(r)
      assert.equal("EINVAL", code)
      assert.truthy(msg:find("not valid UTF-8", 1, true), msg)
      r, msg, code = rn.publish("local.a", { s = "ok", t = "\xc3" })
      assert.is_nil(r)
      assert.equal("EINVAL", code)
      assert.truthy(msg:find("not valid UTF-8", 1, true), msg)

      -- bounds: subscriptions per node and distinct patterns
      local cfg = rn.mesh_config
      local old_subs, old_pats = cfg.max_subscriptions, cfg.max_patterns
      local refused0 = rn.mesh_status().stats.pubsub_refused
      cfg.max_patterns = 2
      local h2 = assert(rn.subscribe("local.*", function() end)) -- same pattern: no new one
      local h3 = assert(rn.subscribe("two.*", function() end))
      r, msg, code = rn.subscribe("three.*", function() end)
      assert.is_nil(r)
      assert.equal("ELIMIT", code)
      assert.truthy(msg:find("max_patterns", 1, true), msg)
      cfg.max_subscriptions = 3
      r, msg, code = rn.subscribe("local.*", function() end)
      assert.is_nil(r)
      assert.equal("ELIMIT", code)
      assert.truthy(msg:find("max_subscriptions", 1, true), msg)
      local st = rn.mesh_status().stats
      assert.equal(refused0 + 2, st.pubsub_refused)
      assert.equal(3, st.subscriptions)
      assert.equal(2, st.subscription_patterns)
      cfg.max_subscriptions, cfg.max_patterns = old_subs, old_pats

      -- unsubscribe: once, and nothing arrives afterwards
      assert.is_true(h:unsubscribe())
      assert.is_false(h:unsubscribe())
      assert.is_true(h2:unsubscribe())
      assert.is_true(h3:unsubscribe())
      local n = #got
      assert.equal(0, rn.publish("local.a", "late"))
      assert.equal(n, #got)
      assert.equal(0, rn.mesh_status().stats.subscriptions)
    end, { timeout = 10 })
  end)
end)

describe("pub/sub interest and relaying (unit, fake links)", function()
  local mesh = require("relaynet.mesh")
  local routes = require("relaynet.mesh.routes")
  local L = require("relaynet.mesh.link")
  local U = require("relaynet.mesh.pubsub")
  local cfg = mesh.config
  local saved, saved_id
  local handles = {} -- subscriptions a test made, ended after it

  local function fake_link(peer)
    local link = L.new("in", nil, nil, nil)
    link.peer, link.state, link.delta, link.sent = peer, "up", true, {}
    link.transport = {
      id = "fake-" .. peer,
      send = function(text) link.sent[#link.sent + 1] = json.decode(text); return true end,
      close = function(code, reason) link.closed = { code, reason } end,
    }
    require("relaynet.mesh.state").links[peer] = link
    return link
  end

  -- An advert from link.peer: { path, topics } pairs.
  local function advert(link, list, opts)
    opts = opts or {}
    local rs = {}
    for i, r in ipairs(list) do rs[i] = { path = r[1], seq = r[3] or 1, servers = {}, topics = r[2] } end
    routes.on_advert(link, { type = "registry_sync", from = link.peer,
      data = { routes = rs, full = opts.full, withdraw = opts.withdraw } })
  end

  local function stat(name) return mesh.status().stats[name] end

  -- The publishes sent on `link` since the last call, emptied.
  local function sent(link)
    local out = {}
    for _, m in ipairs(link.sent) do if m.type == "publish" then out[#out + 1] = m end end
    link.sent = {}
    return out
  end

  local function env(from, route, nodes, extra)
    local data = { topic = "chat.x", run = "r1", seq = 1, nodes = nodes, text = "hi" }
    for k, v in pairs(extra or {}) do data[k] = v end
    return { type = "publish", id = from .. "-1", from = from, ttl = 16, route = route, data = data }
  end

  before_each(function()
    mesh.reset()
    saved_id = mesh.node_id()
    mesh.set_node_id("me")
    saved = {}
    for k, v in pairs(cfg) do saved[k] = v end
  end)
  after_each(function()
    for _, h in ipairs(handles) do h:unsubscribe() end
    handles = {}
    for k, v in pairs(saved) do cfg[k] = v end
    mesh.reset()
    mesh.set_node_id(saved_id)
  end)

  it("learns interest from adverts and sends one message per next hop", function()
    local a, b = fake_link("a"), fake_link("b")
    advert(a, { { { "a" } }, { { "a", "x" }, { "chat.*" } }, { { "a", "y" }, { "chat.>" } },
      { { "a", "w" }, { "news.*" } } })
    advert(b, { { { "b" } }, { { "b", "z" }, { "*.x" } } })
    assert.equal(4, stat("interest_entries"))
    assert.equal(3, rn.publish("chat.x", "m1"))
    local on_a, on_b = sent(a), sent(b)
    assert.equal(1, #on_a)
    assert.equal(1, #on_b)
    local nodes = on_a[1].data.nodes
    table.sort(nodes)
    assert.same({ "x", "y" }, nodes)
    assert.same({ "z" }, on_b[1].data.nodes)
    assert.same({ "me" }, on_a[1].route)
    assert.equal("m1", on_a[1].data.text)
    assert.is_nil(on_a[1].data.json)
    assert.equal(on_a[1].data.seq, on_b[1].data.seq)
    -- a table travels as JSON text; the seq grows
    assert.equal(1, rn.publish("chat.a.b", { k = 1 }))
    local m = sent(a)[1]
    assert.same({ "y" }, m.data.nodes)
    assert.same({ k = 1 }, json.decode(m.data.json))
    assert.equal(on_a[1].data.seq + 1, m.data.seq)
    assert.same({}, sent(b))
    -- interest changes with the entry, and goes with a withdrawal
    advert(a, { { { "a", "x" }, nil, 2 } }, { full = false, withdraw = { "y" } })
    assert.equal(0, rn.publish("chat.a.b", "nobody"))
    assert.same({}, sent(a))
    assert.equal(2, stat("interest_entries"))
    routes.drop_neighbour("b")
    assert.equal(1, stat("interest_entries"))
    assert.equal(0, rn.publish("chat.x", "nobody"))
  end)

  it("bounds the patterns it keeps per route and in all", function()
    local a = fake_link("a")
    cfg.max_patterns = 2
    advert(a, { { { "a" } }, { { "a", "x" }, { "p.1", "p.2", "p.3", "p.4" } } })
    assert.equal(2, stat("topics_dropped"))
    assert.equal(2, stat("interest_entries"))
    cfg.max_interest_entries = 3
    advert(a, { { { "a", "y" }, { "q.1", "q.2" } } }, { full = false })
    assert.equal(3, stat("topics_dropped"))
    assert.equal(3, stat("interest_entries"))
    -- a pattern longer than max_topic_length is dropped; a malformed one
    -- is held but matches nothing
    cfg.max_interest_entries = 100
    advert(a, { { { "a", "z" }, { string.rep("x", 300), "a..b", "ok.*" } } }, { full = false })
    assert.equal(5, stat("interest_entries"))
    assert.equal(1, rn.publish("ok.1", "m"))
    assert.equal(0, rn.publish("a.b", "m"))
    advert(a, { { { "a" } } })
    assert.equal(0, stat("interest_entries"))
  end)

  it("relays by regrouping, delivers in order and drops what is bad", function()
    local a, b, c = fake_link("a"), fake_link("b"), fake_link("c")
    advert(a, { { { "a" } }, { { "a", "x" } } })
    advert(b, { { { "b" } }, { { "b", "z" } }, { { "b", "v" } } })
    advert(c, { { { "c" } } })
    local got = {}
    handles[#handles + 1] = rn.subscribe("chat.*", function(msg, topic, from) got[#got + 1] = { msg, topic, from } end)
    -- from a: for me, z and v (both via b), x (back toward a), q (unknown)
    U.on_publish(a, env("a", { "a" }, { "me", "z", "v", "x", "q" }))
    local out = sent(b)
    assert.equal(1, #out)
    assert.same({ "z", "v" }, out[1].data.nodes)
    assert.same({ "a", "me" }, out[1].route)
    assert.equal(15, out[1].ttl)
    assert.equal("hi", out[1].data.text)
    assert.same({}, sent(a))
    assert.same({}, sent(c))
    assert.equal(2, stat("pubsub_no_route"))
    assert.equal(1, stat("pubsub_relayed"))
    assert.same({ { "hi", "chat.x", "a" } }, got)
    -- not newer: dropped; another run starts afresh
    U.on_publish(a, env("a", { "a" }, { "me" }))
    U.on_publish(a, env("a", { "a" }, { "me" }, { seq = 0 }))
    assert.equal(2, stat("pubsub_out_of_order"))
    local e2 = env("a", { "a" }, { "me" }, { run = "r2", seq = 1, json = "[1,2]" })
    e2.data.text = nil
    U.on_publish(a, e2)
    assert.same({ 1, 2 }, got[2][1])
    -- no matching subscription left here
    U.on_publish(a, env("a", { "a" }, { "me" }, { run = "r2", seq = 2, topic = "news.x" }))
    assert.equal(1, stat("pubsub_no_interest"))
    assert.equal(5, stat("pubsub_received"))
    -- loops, spoofed routes and malformed messages
    U.on_publish(a, env("q", { "q", "me", "a" }, { "me" }))
    assert.equal(1, stat("dropped_loops"))
    U.on_publish(a, env("q", { "q" }, { "me" }))
    U.on_publish(a, env("a", { "a", "b" }, { "me" }))
    assert.equal(2, stat("spoofed_messages"))
    local bad0 = stat("bad_messages")
    U.on_publish(a, env("a", { "a" }, { "me" }, { json = "1" }))       -- both text and json
    U.on_publish(a, env("a", { "a" }, { "me" }, { text = 5 }))         -- text not a string
    U.on_publish(a, env("a", { "a" }, {}))                              -- no nodes
    U.on_publish(a, env("a", { "a" }, { "me" }, { seq = 1.5 }))        -- seq not an integer
    assert.equal(bad0 + 4, stat("bad_messages"))
    -- a hop limit of 1 delivers here but passes nothing on
    local e = env("a", { "a" }, { "me", "z" }, { run = "r3" })
    e.ttl = 1
    U.on_publish(a, e)
    assert.same({}, sent(b))
    assert.equal(1, stat("ttl_expired"))
    assert.equal(3, #got)
  end)
end)

describe("pub/sub interest in signed route entries", function()
  it("signs the patterns with the entry: changed patterns do not verify", function()
    local core = require("relaynet.core")
    local A = require("relaynet.mesh.auth")
    local p = io.popen("mktemp -d /tmp/rn-pubsub-XXXXXX")
    local dir = p:read("l")
    p:close()
    local priv, pub = core.ed25519_keygen()
    local file = dir .. "/k.key"
    assert(core.key_write(file, priv))
    os.execute("chmod 600 " .. H.q(file))
    local ok, err = pcall(function()
      assert(rn.mesh_auth({ key = file }))
      local id = rn.key_node_id(pub)
      local r = { path = { id }, seq = 7, servers = json.array({ "counter" }), topics = json.array({ "chat.*" }) }
      A.sign_own(r)
      local t = os.time()
      assert.is_nil(A.check_entry(id, r, t))
      r.topics = json.array({ "chat.>" })
      assert.equal("entries_bad_signature", A.check_entry(id, r, t))
      r.topics = nil
      assert.equal("entries_bad_signature", A.check_entry(id, r, t))
      -- an entry without patterns signs the same text as before pub/sub
      local plain = { path = { id }, seq = 8, servers = json.array({ "counter" }) }
      A.sign_own(plain)
      plain.topics = json.array()
      assert.is_nil(A.check_entry(id, plain, t))
    end)
    rn.mesh_auth({})
    os.execute("rm -rf " .. H.q(dir))
    assert(ok, err)
  end)
end)

describe("pub/sub across the mesh", function()
  -- A star: hub p1 with leaves p2, p3, p4; the tester dials p1. Every
  -- publish from the tester to a leaf is relayed by p1.
  local leaves = { "p2", "p3", "p4" }

  local function start(m)
    m:start_topology("star", { "p1", "p2", "p3", "p4" }, { script = NODE })
    m:join({ "p1" })
    m:wait_converged(20)
  end

  it("sends only toward interest, in order, following subscribers and links", function()
    MH.run(function(m)
      start(m)
      for _, id in ipairs(leaves) do wait_topics(id, "") end

      -- interest appears as subscribers come
      assert.is_true(call("p3", "subscribe", { "chat.*" }))
      assert.is_true(call("p4", "subscribe", { "chat.>" }))
      wait_topics("p3", "chat.*")
      wait_topics("p4", "chat.>")

      -- wildcards: chat.x matches both, chat.a.b only chat.>
      assert.equal(2, rn.publish("chat.x", { text = "one" }))
      assert.equal(1, rn.publish("chat.a.b", "two"))
      assert.equal(0, rn.publish("news.x", "nobody"))
      MH.wait_until(function() return #call("p4", "received", { "chat.>" }) == 2 end, "p4's 2 messages")
      local got3 = call("p3", "received", { "chat.*" })
      assert.equal(1, #got3)
      assert.same({ topic = "chat.x", message = { text = "one" }, from = "tester" }, got3[1])
      local got4 = call("p4", "received", { "chat.>" })
      assert.same({ topic = "chat.a.b", message = "two", from = "tester" }, got4[2])

      -- ordering: 300 publishes arrive complete and in order
      for i = 1, 300 do assert.equal(2, rn.publish("chat.seq", i)) end
      MH.wait_until(function() return #call("p3", "received", { "chat.*" }) == 301 end, "p3's 301 messages")
      got3 = call("p3", "received", { "chat.*" })
      for i = 1, 300 do assert.equal(i, got3[i + 1].message) end
      MH.wait_until(function() return #call("p4", "received", { "chat.>" }) == 302 end, "p4's 302 messages")

      -- a publisher that is a leaf: p2 publishes 50, p3 gets them in order
      assert.equal(2, call("p2", "publish", { "chat.from2", "m", 50 }))
      MH.wait_until(function() return #call("p3", "received", { "chat.*" }) == 351 end, "p2's 50 at p3")
      got3 = call("p3", "received", { "chat.*" })
      for i = 1, 50 do
        assert.equal("p2", got3[301 + i].from)
        assert.equal(i, got3[301 + i].message.i)
      end

      -- no delivery to nodes without interest, and the hub only relays
      local s2, s1 = stats_of(m, "p2"), stats_of(m, "p1")
      assert.equal(0, s2.pubsub_received)
      assert.equal(0, s2.pubsub_relayed)
      assert.equal(0, s1.pubsub_received)
      assert.equal(0, s1.pubsub_delivered)
      -- one message per next hop: the tester's chat.x (2), chat.a.b (1) and
      -- 300 x chat.seq (600), and p2's 50 x chat.from2 (100)
      assert.equal(703, s1.pubsub_relayed)
      local s3 = stats_of(m, "p3")
      assert.equal(351, s3.pubsub_received)
      assert.equal(351, s3.pubsub_delivered)
      assert.equal(0, s3.pubsub_out_of_order)
      assert.equal(1, s3.subscriptions)
      assert.truthy(s1.interest_entries >= 2)

      -- interest disappears as subscribers go
      assert.is_true(call("p3", "unsubscribe", { "chat.*" }))
      wait_topics("p3", "")
      assert.equal(1, rn.publish("chat.y", "only p4"))
      MH.wait_until(function() return #call("p4", "received", { "chat.>" }) == 353 end, "p4's 353")
      assert.equal(351, stats_of(m, "p3").pubsub_received)

      -- a link lost takes the interest learned over it; restored, it returns
      assert.is_true(call("p3", "subscribe", { "chat.*" }))
      wait_topics("p3", "chat.*")
      m:stop("p1")
      MH.wait_until(function() return topics_of("p3") == nil and topics_of("p4") == nil end,
        "the interest of p3 and p4 to go with the link to p1")
      assert.equal(0, rn.publish("chat.z", "lost"))
      m:restart("p1")
      wait_topics("p3", "chat.*", 20)
      wait_topics("p4", "chat.>", 20)
      assert.equal(2, rn.publish("chat.z", "back"))
      MH.wait_until(function()
        local l = call("p3", "received", { "chat.*" })
        return l[#l].message == "back"
      end, "p3 to get the publish after the link came back")

      -- a restarted publisher starts a new run: its publishes are not
      -- taken for old ones; the tester subscribes too
      local mine = {}
      local h = assert(rn.subscribe("chat.again", function(msg, topic, from)
        mine[#mine + 1] = { msg, topic, from }
      end))
      m:restart("p2")
      MH.wait_until(function()
        local ok, n = pcall(call, "p2", "publish", { "chat.probe", "p" })
        return ok and n == 2
      end, "the restarted p2 to learn the interest of p3 and p4", 20)
      MH.wait_until(function()
        return call("p2", "publish", { "chat.again", "r" }) == 3
      end, "p2 to learn the tester's interest")
      MH.wait_until(function() return #mine >= 1 end, "the tester to get p2's publish")
      assert.same({ "r", "chat.again", "p2" }, mine[1])
      local before = #call("p3", "received", { "chat.*" })
      assert.equal(3, call("p2", "publish", { "chat.again", "n", 3 }))
      MH.wait_until(function()
        local l = call("p3", "received", { "chat.*" })
        return #l >= before + 3 and l[#l].from == "p2" and l[#l].message.i == 3
      end, "p3 to get the restarted p2's publishes")
      MH.wait_until(function() return #mine >= 4 and mine[#mine][1].i == 3 end, "the tester to get all three")
      assert.equal(0, stats_of(m, "p3").pubsub_out_of_order)
      h:unsubscribe()
    end, { timeout = 120 })
  end)

  it("forwards publishes to WebSocket subscribers (server:subscribe)", function()
    MH.run(function(m)
      start(m)
      local c = assert(rn.ws_connect("ws://127.0.0.1:" .. m:port_of("p3") .. "/", { timeout = 5 }))
      local function recv()
        local text = assert(c:receive(5))
        return assert(json.decode(text))
      end
      assert(c:send("sub room.*"))
      assert.same({ ack = "sub", pattern = "room.*", ok = true }, recv())
      assert(c:send("sub bad..pattern"))
      local ack = recv()
      assert.equal(false, ack.ok)
      wait_topics("p3", "room.*")

      -- from the tester, two hops away, and from p2, another leaf
      assert.equal(1, rn.publish("room.1", { who = "tester", n = 1 }))
      assert.same({ topic = "room.1", from = "tester", message = { who = "tester", n = 1 } }, recv())
      assert.equal(1, call("p2", "publish", { "room.2", "plain text" }))
      assert.same({ topic = "room.2", from = "p2", message = "plain text" }, recv())

      -- unsubscribe stops it; closing the connection drops its subscriptions
      assert(c:send("unsub room.*"))
      assert.same({ ack = "unsub", pattern = "room.*", ok = true }, recv())
      wait_topics("p3", "")
      assert.equal(0, rn.publish("room.1", "nobody"))
      assert(c:send("sub room.>"))
      assert.same({ ack = "sub", pattern = "room.>", ok = true }, recv())
      wait_topics("p3", "room.>")
      assert.equal(1, stats_of(m, "p3").subscriptions)
      -- the bound on subscriptions per connection
      assert(c:send("limit 2"))
      assert.is_true(recv().ok)
      assert(c:send("sub room.a"))
      assert.is_true(recv().ok)
      assert(c:send("sub room.b"))
      ack = recv()
      assert.equal(false, ack.ok)
      assert.truthy(ack.error:find("^ELIMIT: .*max_subscriptions_per_connection"), ack.error)
      assert.equal(2, stats_of(m, "p3").subscriptions)
      c:close()
      wait_topics("p3", "")
      assert.equal(0, stats_of(m, "p3").subscriptions)
    end, { timeout = 90 })
  end)

  it("works between nodes with keys (signed entries carry the patterns)", function()
    local core = require("relaynet.core")
    local p = io.popen("mktemp -d /tmp/rn-pubsub-XXXXXX")
    local dir = p:read("l")
    p:close()
    local keys = {}
    for i = 1, 3 do
      local priv, pub = core.ed25519_keygen()
      local file = dir .. "/n" .. i .. ".key"
      assert(core.key_write(file, priv))
      os.execute("chmod 600 " .. H.q(file))
      keys[i] = { file = file, id = rn.key_node_id(pub) }
    end
    local a, b, c = keys[1], keys[2], keys[3]
    local ok, err = pcall(MH.run, function(m)
      for _, k in ipairs(keys) do m:port_of(k.id) end
      m:start(a.id, { script = NODE, args = { "--node-key", a.file }, wait = false })
      m:start(b.id, { script = NODE, peers = { a.id }, args = { "--node-key", b.file }, wait = false })
      m:start(c.id, { script = NODE, peers = { b.id }, args = { "--node-key", c.file }, wait = false })
      for _, k in ipairs(keys) do m:wait_up(k.id) end
      m:wait_converged(30)
      assert.is_true(m:call_via(c.id, c.id, "ps", "subscribe", { "sec.*" }))
      MH.wait_until(function() return m:call_via(a.id, a.id, "ps", "publish", { "sec.probe", "p" }) == 1 end,
        "node a to learn c's signed interest")
      assert.equal(1, m:call_via(a.id, a.id, "ps", "publish", { "sec.x", "signed", 5 }))
      MH.wait_until(function()
        local l = m:call_via(c.id, c.id, "ps", "received", { "sec.*" })
        return #l > 0 and l[#l].message.i == 5
      end, "c to get a's publishes")
      local sa, sb = stats_of(m, a.id), stats_of(m, b.id)
      assert.equal(0, sa.entries_bad_signature + sb.entries_bad_signature)
      assert.equal(0, sa.entries_unsigned + sb.entries_unsigned)
      assert.equal(0, sb.pubsub_received)
      -- interest goes when the subscriber does
      assert.is_true(m:call_via(c.id, c.id, "ps", "unsubscribe", { "sec.*" }))
      MH.wait_until(function() return m:call_via(a.id, a.id, "ps", "publish", { "sec.probe", "p" }) == 0 end,
        "node a to learn that c's interest went")
    end, { timeout = 90 })
    os.execute("rm -rf " .. H.q(dir))
    assert(ok, err)
  end)
end)
