-- spec/jsonrpc_pubsub_spec.lua: JSON-RPC subscribe, unsubscribe and publish
-- (relaynet.rpc_pubsub; README "Pub/sub", "JSON-RPC subscriptions").
--
-- The clients are ones nobody here wrote: python3-websockets and
-- http.client (spec/support/rpc_pubsub_client.py, which runs a list of
-- steps) and node's `ws` (spec/e2e/rpc_pubsub_client.js). The mesh parts
-- run real node processes (spec/support/mesh_harness.lua) with
-- spec/support/rpc_pubsub_node.lua, whose server "knob" sets the pub/sub
-- bounds of a node. Every response is compared as the exact text.

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local json = require("relaynet.json")

local NODE = H.ROOT .. "/spec/support/rpc_pubsub_node.lua"
local CLIENT = H.ROOT .. "/spec/support/rpc_pubsub_client.py"
local JS_CLIENT = H.ROOT .. "/spec/e2e/rpc_pubsub_client.js"

-- Runs rpc_pubsub_client.py with `steps`; returns its results list.
local function client(steps, timeout)
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  local text, eerr = json.encode(json.array(steps))
  assert(text, eerr)
  f:write(text)
  f:close()
  local rc, out, err = H.sh(H.PY .. " " .. H.q(CLIENT) .. " " .. H.q(file)):wait(timeout or 90)
  os.remove(file)
  assert(rc == 0, "rpc_pubsub_client exited with " .. tostring(rc) .. ": " .. err)
  local res = json.decode(out:match("[^\n]+") or "")
  assert(type(res) == "table", "rpc_pubsub_client printed no JSON: " .. out .. err)
  assert(res.error == nil, "rpc_pubsub_client failed: " .. tostring(res.error) .. "\nresults so far: " ..
    tostring(json.encode(res.results)) .. "\n" .. err)
  return res.results
end

local function req(id, method, params)
  return { jsonrpc = "2.0", id = id, method = method, params = params }
end

-- Expected texts.
local function result(id, value)
  return '{"jsonrpc":"2.0","id":' .. json.encode(id) .. ',"result":' .. value .. "}"
end

local function note(sid, topic, value)
  return '{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"' .. sid .. '","topic":"' ..
    topic .. '","result":' .. value .. "}}"
end

local function failure(id, code, message, data_code, data_message)
  return '{"jsonrpc":"2.0","id":' .. json.encode(id) .. ',"error":{"code":' .. code .. ',"message":' ..
    json.encode(message) .. ',"data":{"code":"' .. data_code .. '","message":' .. json.encode(data_message) .. "}}}"
end

local function einval(id, why)
  return failure(id, -32602, "Invalid params: " .. why, "EINVAL", "EINVAL: " .. why)
end

local function elimit(id, why)
  return failure(id, -32010, "ELIMIT: " .. why, "ELIMIT", "ELIMIT: " .. why)
end

local function stats_of(m, id)
  return assert(m:status(id), "no status from " .. id).stats
end

local function knob(node, name, value)
  local old, err = rn.remote_call(node, "knob", "set", { name, value }, 5)
  assert(err == nil, tostring(err))
  return old
end

-- The topics of the tester's route to `node` ("" when none).
local function topics_of(node)
  for _, r in ipairs(rn.routes()) do
    if r.node == node then return table.concat(r.topics or {}, ",") end
  end
  return nil
end

-- A line p1 - p2; the tester dials p1.
local function start(m)
  m:start_topology("line", { "p1", "p2" }, { script = NODE })
  m:join({ "p1" })
  m:wait_converged(20)
end

describe("JSON-RPC publish rate over HTTP (unit)", function()
  it("keeps one bucket per address, and a bounded number of them", function()
    local jsonrpc = require("relaynet.jsonrpc")
    local ps = require("relaynet.rpc_pubsub")
    local cfg = rn.mesh_config
    local old = { cfg.max_publish_rate, cfg.max_publish_burst, ps.MAX_ADDRESSES }
    cfg.max_publish_rate, cfg.max_publish_burst, ps.MAX_ADDRESSES = 0.001, 1, 2
    ps.reset_rates()
    local refused0 = ps.stats.publishes_refused
    local function pub(addr)
      return json.decode(jsonrpc.handle(json.encode(req(1, "publish", { "unit.rate", 1 })),
        { transport = "http", addr = addr }))
    end
    local ok, err = pcall(function()
      assert.equal(0, pub("10.0.0.1").result)
      local e = pub("10.0.0.1").error
      assert.equal(-32010, e.code)
      assert.equal("ELIMIT: address 10.0.0.1 publishes faster than 0.001 per second " ..
        "(mesh_config.max_publish_rate, burst 1)", e.message)
      assert.equal(0, pub("10.0.0.2").result) -- another address, another bucket
      assert.is_table(pub("10.0.0.2").error)
      -- a third address: no bucket is full, so all are forgotten
      assert.equal(0, pub("10.0.0.3").result)
      assert.equal(0, pub("10.0.0.1").result)
      assert.equal(refused0 + 2, ps.stats.publishes_refused)
      -- 0 turns the bound off
      cfg.max_publish_rate = 0
      for _ = 1, 5 do assert.equal(0, pub("10.0.0.1").result) end
    end)
    cfg.max_publish_rate, cfg.max_publish_burst, ps.MAX_ADDRESSES = old[1], old[2], old[3]
    ps.reset_rates()
    assert(ok, err)
  end)
end)

describe("JSON-RPC pub/sub across the mesh", function()
  it("subscribes, notifies across nodes and over HTTP, unsubscribes (python3-websockets)", function()
    MH.run(function(m)
      start(m)
      local ws2 = "ws://127.0.0.1:" .. m:port_of("p2") .. "/rpc"
      local http1 = m:http("p1") .. "/rpc"
      local http2 = m:http("p2") .. "/rpc"
      local big = string.rep("x", rn.mesh_config.max_publish_bytes + 1)
      local long = string.rep("abcdefgh.", 29) .. "x" -- 262 bytes
      local steps = {
        { op = "open", ws = "a", url = ws2 },
        { op = "call", ws = "a", req = req(1, "subscribe", { "chat.*" }) },
        { op = "call", ws = "a", req = req(2, "subscribe", { topic = "chat.>" }) },
        -- p1 learns p2's interest (an advert away), then publishes over HTTP
        { op = "http_until", url = http1, req = req(3, "publish", { topic = "chat.probe", message = "p" }),
          result = 1 },
        { op = "notes", ws = "a", n = 2 },
        { op = "http", url = http1, req = req(4, "publish",
          { topic = "chat.room", message = { text = "hi ✓", n = { 1, 2.5, json.array({}) }, o = {} } }) },
        { op = "notes", ws = "a", n = 2 },
        { op = "http", url = http1, req = req(5, "publish", { "chat.a.b", "plain" }) },
        { op = "notes", ws = "a", n = 1 },
        -- a publish over the same WebSocket: local subscribers are notified
        -- before the answer
        { op = "call", ws = "a", req = req(6, "publish", { topic = "chat.ws", message = json.null }) },
        { op = "notes", ws = "a", n = 2 },
        -- unsubscribe: true, then false; an id never issued here is -32602
        { op = "call", ws = "a", req = req(7, "unsubscribe", { "s1" }) },
        { op = "call", ws = "a", req = req(8, "unsubscribe", { subscription = "s1" }) },
        { op = "call", ws = "a", req = req(9, "unsubscribe", { "s7" }) },
        { op = "call", ws = "a", req = req(10, "unsubscribe", { subscription = 5 }) },
        { op = "call", ws = "a", req = req(11, "unsubscribe", {}) },
        { op = "http", url = http1, req = req(12, "publish", { "chat.x", 1 }) },
        { op = "notes", ws = "a", n = 1 },
        -- s1 would have been notified in the same step as s2: nothing more
        { op = "quiet", ws = "a" },
        -- bad params
        { op = "call", ws = "a", req = req(20, "subscribe", json.array({})) },
        { op = "call", ws = "a", req = req(21, "subscribe", { "a..b" }) },
        { op = "call", ws = "a", req = req(22, "subscribe", { long }) },
        { op = "call", ws = "a", req = req(23, "subscribe", { topic = { "x" } }) },
        { op = "call", ws = "a", req = req(24, "subscribe", { topic = "x", extra = 1 }) },
        { op = "call", ws = "a", req = req(25, "subscribe", { "a", "b" }) },
        { op = "call", ws = "a", req = req(26, "publish", { topic = "chat.*", message = 1 }) },
        { op = "call", ws = "a", req = req(27, "publish", { "chat.x" }) },
        { op = "call", ws = "a", req = req(28, "publish", { "chat.x", big }) },
        { op = "call", ws = "a", req = req(29, "publish", { message = 1 }) },
        { op = "http", url = http2, req = req(30, "subscribe", { "chat.*" }) },
        { op = "http", url = http2, req = req(31, "unsubscribe", { "s1" }) },
        { op = "http", url = http2, req = req(32, "publish", { "a..b", 1 }) },
        -- long ids and keys are cut for the message by characters, and one
        -- of few (multi-byte) characters is kept whole
        { op = "call", ws = "a", req = req(33, "unsubscribe", { ("\u{1F600}"):rep(20) }) },
        { op = "call", ws = "a", req = req(34, "unsubscribe", { ("x"):rep(70) }) },
        { op = "call", ws = "a", req = req(35, "subscribe", { topic = "x", [("\u{E9}"):rep(40)] = 1 }) },
        { op = "close", ws = "a" },
      }
      local r = client(steps)
      assert.equal(result(1, '"s1"'), r[2])
      assert.equal(result(2, '"s2"'), r[3])
      assert.equal(result(3, "1"), r[4])
      -- chat.* sorts before chat.>, so s1's notification comes first
      assert.same({ note("s1", "chat.probe", '"p"'), note("s2", "chat.probe", '"p"') }, r[5])
      assert.equal(result(4, "1"), r[6])
      local notes = r[7]
      assert.equal(2, #notes)
      for i, sid in ipairs({ "s1", "s2" }) do
        local v = json.decode(notes[i])
        assert.equal("subscription", v.method)
        assert.equal(sid, v.params.subscription)
        assert.equal("chat.room", v.params.topic)
        assert.same({ text = "hi ✓", n = { 1, 2.5, {} }, o = {} }, v.params.result)
        -- [] stays an array and {} an object
        assert.truthy(notes[i]:find('[1,2.5,[]]', 1, true), notes[i])
        assert.truthy(notes[i]:find('"o":{}', 1, true), notes[i])
      end
      assert.equal(result(5, "1"), r[8])
      assert.same({ note("s2", "chat.a.b", '"plain"') }, r[9])
      assert.equal(result(6, "1"), r[10])
      assert.same({ note("s1", "chat.ws", "null"), note("s2", "chat.ws", "null") }, r[11])
      assert.equal(result(7, "true"), r[12])
      assert.equal(result(8, "false"), r[13])
      assert.equal(einval(9, "no subscription 's7' on this connection"), r[14])
      assert.equal(einval(10, "'subscription' must be a string (the id subscribe returned)"), r[15])
      assert.equal(einval(11, "unsubscribe needs a 'subscription'"), r[16])
      assert.equal(result(12, "1"), r[17]) -- s2 (chat.>) still gets it
      assert.same({ note("s2", "chat.x", "1") }, r[18])
      assert.same({}, r[19])

      assert.equal(einval(20, "subscribe needs a 'topic'"), r[20])
      assert.equal(einval(21, "topic 'a..b' has an empty token"), r[21])
      assert.equal(einval(22, "topic is 262 bytes, at most 256 (mesh_config.max_topic_length)"), r[22])
      assert.equal(einval(23, "'topic' must be a string, got an array"), r[23])
      assert.equal(einval(24, "unknown param 'extra'"), r[24])
      assert.equal(einval(25, "subscribe takes at most 1 params, got 2"), r[25])
      assert.equal(einval(26, "topic 'chat.*' has a wildcard token ('*'): publish to a topic without wildcards"),
        r[26])
      assert.equal(einval(27, "publish needs a 'message' (any JSON value, null included)"), r[27])
      assert.equal(einval(28, string.format("the message for topic chat.x is %d bytes, at most %d " ..
        "(mesh_config.max_publish_bytes)", #big, #big - 1)), r[28])
      assert.equal(einval(29, "publish needs a 'topic'"), r[29])
      assert.equal('{"jsonrpc":"2.0","id":30,"error":{"code":-32601,"message":"Method not found: subscribe ' ..
        'is only available on a WebSocket connection to /rpc"}}', r[30])
      assert.equal('{"jsonrpc":"2.0","id":31,"error":{"code":-32601,"message":"Method not found: unsubscribe ' ..
        'is only available on a WebSocket connection to /rpc"}}', r[31])
      assert.equal(einval(32, "topic 'a..b' has an empty token"), r[32])
      assert.equal(einval(33, "no subscription '" .. ("\u{1F600}"):rep(20) .. "' on this connection"), r[33])
      assert.equal(einval(34, "no subscription '" .. ("x"):rep(60) .. "...' on this connection"), r[34])
      assert.equal(einval(35, "unknown param '" .. ("\u{E9}"):rep(40) .. "'"), r[35])

      -- closing the connection dropped its subscriptions: nothing leaks
      MH.wait_until(function()
        local s = stats_of(m, "p2")
        return s.rpc_pubsub_subscriptions == 0 and s.subscriptions == 0
      end, "p2 to drop the closed connection's subscriptions")
      MH.wait_until(function() return topics_of("p2") == "" end, "p2's interest to go")
      local s2 = stats_of(m, "p2")
      assert.equal(2, s2.rpc_pubsub_subscribes)
      assert.equal(8, s2.rpc_pubsub_notifications)
      assert.equal(0, s2.rpc_pubsub_notifications_dropped)
      assert.equal(1, s2.rpc_pubsub_publishes) -- id 6; 28 was refused by the mesh
      -- the probes (some may have reached no node yet), 4, 5 and 12
      assert.truthy(stats_of(m, "p1").rpc_pubsub_publishes >= 4)
    end, { timeout = 120 })
  end)

  it("bounds subscriptions per connection and per node, and the publish rate", function()
    MH.run(function(m)
      start(m)
      local ws2 = "ws://127.0.0.1:" .. m:port_of("p2") .. "/rpc"
      local http2 = m:http("p2") .. "/rpc"
      knob("p2", "max_subscriptions", 101)
      knob("p2", "max_publish_rate", 5)
      knob("p2", "max_publish_burst", 5)
      local batch = {}
      for i = 1, 100 do batch[i] = req(i, "subscribe", { "lim." .. i }) end
      local pubs = {}
      for i = 1, 8 do pubs[i] = req(200 + i, "publish", { "rate.x", i }) end
      local ids = {}
      for i = 1, 8 do ids[i] = 200 + i end
      local steps = {
        { op = "open", ws = "a", url = ws2 },
        { op = "send", ws = "a", text = json.encode(batch), ids = (function()
          local t = {}
          for i = 1, 100 do t[i] = i end
          return t
        end)() },
        { op = "call", ws = "a", req = req(101, "subscribe", { "lim.101" }) },
        { op = "call", ws = "a", req = req(102, "unsubscribe", { "s100" }) },
        { op = "call", ws = "a", req = req(103, "subscribe", { "lim.x" }) },
        -- another connection: the node's bound (101) is reached first
        { op = "open", ws = "b", url = ws2 },
        { op = "call", ws = "b", req = req(104, "subscribe", { "lim.>" }) },
        { op = "call", ws = "b", req = req(105, "subscribe", { "lim.y" }) },
        -- 5 per second with a burst of 5: a batch of 8 gets 3 refusals,
        -- over WebSocket (per connection) and over HTTP (per address)
        { op = "send", ws = "a", text = json.encode(pubs), ids = ids },
        { op = "http", url = http2, req = pubs },
        -- the bucket refills
        { op = "http_until", url = http2, req = req(300, "publish", { "rate.x", 0 }), result = 0 },
        { op = "close", ws = "a" },
        { op = "close", ws = "b" },
      }
      local r = client(steps)
      local subs = json.decode(r[2][1])
      assert.equal(100, #subs)
      for i = 1, 100 do assert.same({ jsonrpc = "2.0", id = i, result = "s" .. i }, subs[i]) end
      local over = json.decode(r[3])
      local cid = over.error.message:match("^ELIMIT: connection (c%d+) has")
      assert.truthy(cid, r[3])
      assert.equal(elimit(101, "connection " .. cid ..
        " has 100 subscriptions already (mesh_config.max_subscriptions_per_connection)"), r[3])
      assert.equal(result(102, "true"), r[4])
      assert.equal(result(103, '"s101"'), r[5])
      assert.equal(result(104, '"s1"'), r[7])
      assert.equal(elimit(105, "node p2 has 101 subscriptions already (mesh_config.max_subscriptions)"), r[8])
      local function check_rate(list, who)
        assert.equal(8, #list)
        for i = 1, 8 do
          if i <= 5 then
            assert.same({ jsonrpc = "2.0", id = 200 + i, result = 0 }, list[i])
          else
            assert.same({ code = -32010, message = "ELIMIT: " .. who ..
              " publishes faster than 5 per second (mesh_config.max_publish_rate, burst 5)",
              data = { code = "ELIMIT", message = "ELIMIT: " .. who ..
                " publishes faster than 5 per second (mesh_config.max_publish_rate, burst 5)" } },
              list[i].error)
          end
        end
      end
      check_rate(json.decode(r[9][1]), "this connection")
      check_rate(json.decode(r[10]), "address 127.0.0.1")
      assert.equal(result(300, "0"), r[11])

      MH.wait_until(function()
        local st = stats_of(m, "p2")
        return st.rpc_pubsub_subscriptions == 0 and st.subscriptions == 0
      end, "p2 to drop the closed connections' subscriptions")
      local st = stats_of(m, "p2")
      assert.equal(2, st.rpc_pubsub_subscriptions_refused)
      assert.truthy(st.rpc_pubsub_publishes_refused >= 6, st.rpc_pubsub_publishes_refused)
      assert.equal(1, st.pubsub_refused) -- the node's own bound counts there too
      local status, page = m:get("p2", "/metrics")
      assert.equal(200, status)
      assert.truthy(page:find('relaynet_rpc_pubsub_refused_total{kind="subscribe"} 2\n', 1, true), page)
      assert.truthy(page:find('relaynet_rpc_pubsub_refused_total{kind="publish"} ' ..
        st.rpc_pubsub_publishes_refused .. "\n", 1, true), page)
      assert.truthy(page:find("relaynet_rpc_pubsub_subscriptions 0\n", 1, true), page)
    end, { timeout = 120 })
  end)

  it("works with node's ws client, and for a publish from a Lua node two hops away", function()
    MH.run(function(m)
      start(m)
      local ws1 = "ws://127.0.0.1:" .. m:port_of("p1") .. "/rpc"
      local ws2 = "ws://127.0.0.1:" .. m:port_of("p2") .. "/rpc"
      local rc, out, err = H.sh("node " .. H.q(JS_CLIENT) .. " " .. H.q(ws2) .. " " .. H.q(ws1)):wait(60)
      assert(rc == 0, "rpc_pubsub_client.js exited with " .. tostring(rc) .. ": " .. err .. out)
      local res = assert(json.decode(out:match("[^\n]+")), out)
      assert.equal(result(1, '"s1"'), res.subscribe)
      assert.same({ result(2, "1"), result(3, "1"), result(4, "1") }, res.published)
      assert.same({ note("s1", "node.a", '{"k":[1,2],"s":"ünï ✓"}'), note("s1", "node.b", '"text"'),
        note("s1", "node.c", "null") }, res.notes)
      assert.same({ result(5, "true"), result(6, "false") }, res.unsubscribe)
      assert.equal(100, #res.batch)
      for i = 1, 100 do assert.equal("s" .. (i + 1), res.batch[i]) end
      local over = json.decode(res.over)
      assert.equal(-32010, over.error.code)
      assert.equal("ELIMIT", over.error.data.code)
      assert.truthy(over.error.message:find("^ELIMIT: connection c%d+ has 100 subscriptions already " ..
        "%(mesh_config.max_subscriptions_per_connection%)$"), over.error.message)
      assert.equal(0, res.left)
      MH.wait_until(function() return stats_of(m, "p2").subscriptions == 0 end,
        "p2 to drop the node client's subscriptions")

      -- the tester (a Lua node) publishes; p1 relays to p2's JSON-RPC subscriber
      local steps = {
        { op = "open", ws = "a", url = ws2 },
        { op = "call", ws = "a", req = req(1, "subscribe", { "lua.>" }) },
        { op = "http_until", url = m:http("p2") .. "/rpc", req = req(2, "publish", { "lua.ready", 1 }),
          result = 1 },
        { op = "notes", ws = "a", n = 1 },
        -- the Lua side waits for this notification before it publishes
        { op = "notes", ws = "a", n = 3 },
        { op = "close", ws = "a" },
      }
      local h = H.sh(H.PY .. " " .. H.q(CLIENT) .. " " .. H.q((function()
        local file = os.tmpname()
        local f = assert(io.open(file, "w"))
        f:write(json.encode(json.array(steps)))
        f:close()
        return file
      end)()))
      MH.wait_until(function() return topics_of("p2") == "lua.>" end, "the tester to learn p2's interest")
      assert.equal(1, rn.publish("lua.x.y", { from = "lua" }))
      assert.equal(1, rn.publish("lua.z", "two"))
      assert.equal(1, rn.publish("lua.z", 3))
      local prc, pout, perr = h:wait(60)
      assert.equal(0, prc, perr)
      local res2 = assert(json.decode(pout:match("[^\n]+")), pout)
      assert(res2.error == nil, tostring(res2.error))
      assert.same({ note("s1", "lua.x.y", '{"from":"lua"}'), note("s1", "lua.z", '"two"'), note("s1", "lua.z", "3") },
        res2.results[5])
    end, { timeout = 120 })
  end)
end)

describe("JSON-RPC notifications with history", function()
  it("carry the message's epoch and offset", function()
    H.run(function()
      assert(rn.history("hist.*", { size = 10 }))
      local srv = H.listen()
      local url = "ws://127.0.0.1:" .. srv.port .. "/rpc"
      local ok, r = pcall(client, {
        { op = "open", ws = "a", url = url },
        { op = "call", ws = "a", req = req(1, "subscribe", { "hist.>" }) },
        { op = "call", ws = "a", req = req(2, "publish", { "hist.a", "m1" }) },
        { op = "call", ws = "a", req = req(3, "publish", { "hist.a", { k = { 1, 2 } } }) },
        { op = "notes", ws = "a", n = 2 },
        { op = "close", ws = "a" },
      }, 60)
      rn.history("hist.*", false)
      srv:close()
      assert(ok, r)
      assert.equal(result(1, '"s1"'), r[2])
      local notes = r[5]
      local e1, o1 = notes[1]:match('^{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"s1",' ..
        '"topic":"hist.a","result":"m1","epoch":"([^"]+)","offset":(%d+)}}$')
      assert.truthy(e1, notes[1])
      local e2, o2 = notes[2]:match('^{"jsonrpc":"2.0","method":"subscription","params":{"subscription":"s1",' ..
        '"topic":"hist.a","result":{"k":%[1,2%]},"epoch":"([^"]+)","offset":(%d+)}}$')
      assert.truthy(e2, notes[2])
      assert.equal(e1, e2)
      assert.equal(tonumber(o1) + 1, tonumber(o2))
    end, { timeout = 60 })
  end)
end)

describe("JSON-RPC pub/sub behind the rpc token", function()
  it("needs the token like every /rpc request", function()
    H.run(function()
      local token = "pubsub-token-0123456789"
      rn.set_rpc_token(token)
      local ok, srv = pcall(H.listen)
      rn.set_rpc_token(nil)
      assert(ok, srv)
      local url = "ws://127.0.0.1:" .. srv.port .. "/rpc"
      local http = "http://127.0.0.1:" .. srv.port .. "/rpc"
      local auth = { Authorization = "Bearer " .. token }
      local r = client({
        { op = "open", ws = "x", url = url, refused = true },
        { op = "open", ws = "x", url = url, headers = { Authorization = "Bearer wrong-token-0123456789" },
          refused = true },
        { op = "open", ws = "a", url = url, headers = auth },
        { op = "call", ws = "a", req = req(1, "subscribe", { "tok.*" }) },
        { op = "http", url = http, req = req(2, "publish", { "tok.a", "m" }), headers = auth },
        { op = "notes", ws = "a", n = 1 },
        { op = "close", ws = "a" },
      }, 60)
      assert.equal(401, r[1])
      assert.equal(401, r[2])
      assert.equal(result(1, '"s1"'), r[4])
      assert.equal(result(2, "1"), r[5])
      assert.same({ note("s1", "tok.a", '"m"') }, r[6])
      local status = H.curl("-X POST -d " .. H.q(json.encode(req(3, "publish", { "tok.a", "m" }))) .. " " .. H.q(http))
      assert.equal(401, status)
      srv:close()
    end, { timeout = 60 })
  end)
end)
