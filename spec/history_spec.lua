-- spec/history_spec.lua: history and recovery for pub/sub topics (README
-- "Pub/sub", "History and recovery"; lua/relaynet/mesh/history.lua).
--
-- The unit part runs in this process (this node publishes and recovers
-- from itself): positions, trimming, expiry, the bounds and misuse. The
-- mesh part runs real node processes (spec/support/mesh_harness.lua) with
-- spec/support/history_node.lua, which exposes server "hs" to set history,
-- subscribe, publish and recover; the test process joins as node "tester".

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local json = require("relaynet.json")

local NODE = H.ROOT .. "/spec/support/history_node.lua"

local function stat(name) return rn.mesh_status().stats[name] end

describe("history (one node)", function()
  local HI = require("relaynet.mesh.history")
  local cfg = rn.mesh_config
  local saved
  local handles = {}

  before_each(function()
    saved = {}
    for k, v in pairs(cfg) do saved[k] = v end
    HI.clear()
  end)
  after_each(function()
    for _, h in ipairs(handles) do h:unsubscribe() end
    handles = {}
    for k, v in pairs(saved) do cfg[k] = v end
    HI.clear()
  end)

  local function subscribe(pattern, log)
    handles[#handles + 1] = assert(rn.subscribe(pattern, function(msg, topic, from, pos)
      log[#log + 1] = { msg, topic, from, pos }
    end))
  end

  -- recover that must succeed: the list as { {message, offset, topic}... }
  -- and the list's epoch and more.
  local function recover(topic, epoch, offset)
    local list, err, code = rn.recover(topic, rn.node_id(), epoch, offset)
    assert(list, string.format("recover failed: %s (%s)", tostring(err), tostring(code)))
    local out = {}
    for i, m in ipairs(list) do out[i] = { m.message, m.offset, m.topic } end
    return out, list.epoch, list.more
  end

  it("numbers messages per topic, gives subscribers their position and recovers", function()
    H.run(function()
      local me = rn.node_id()
      local got = {}
      subscribe("h.>", got)
      assert.is_true(rn.history("h.*", { size = 3 }))
      assert.equal(1, rn.publish("h.a", "a1"))
      assert.equal(1, rn.publish("h.b", { n = 1 }))
      assert.equal(1, rn.publish("h.a", "a2"))
      assert.equal(1, rn.publish("h.x.y", "no history")) -- h.* does not match h.x.y
      local ea, eb = got[1][4].epoch, got[2][4].epoch
      assert.is_string(ea)
      assert.are_not.equal(ea, eb)
      assert.same({ "a1", "h.a", me, { node = me, epoch = ea, offset = 1 } }, got[1])
      assert.same({ { n = 1 }, "h.b", me, { node = me, epoch = eb, offset = 1 } }, got[2])
      assert.same({ "a2", "h.a", me, { node = me, epoch = ea, offset = 2 } }, got[3])
      assert.same({ "no history", "h.x.y", me }, got[4])
      assert.equal(3, select("#", table.unpack(got[4], 1, 3)))

      -- what followed an offset, in order; nothing after the last one
      assert.same({ { { "a2", 2, "h.a" } }, ea }, { recover("h.a", ea, 1) })
      assert.same({ {}, ea }, { recover("h.a", ea, 2) })
      -- without an epoch: everything kept
      assert.same({ { { "a1", 1, "h.a" }, { "a2", 2, "h.a" } }, ea }, { recover("h.a", nil, nil) })

      -- size 3: offsets 1 and 2 of h.a go; an offset before what is kept
      -- is too old
      for i = 3, 6 do rn.publish("h.a", "a" .. i) end
      assert.same({ { { "a5", 5, "h.a" }, { "a6", 6, "h.a" } }, ea }, { recover("h.a", ea, 4) })
      assert.same({ { { "a4", 4, "h.a" }, { "a5", 5, "h.a" }, { "a6", 6, "h.a" } }, ea }, { recover("h.a", ea, 3) })
      assert.same({ nil, "ERESYNC: offset 2 of topic h.a is too old: node " .. me .. " keeps offsets 4 to 6 (resync)",
        "ERESYNC" }, { rn.recover("h.a", me, ea, 2) })
      assert.same({ nil, "ERESYNC: offset 7 of topic h.a is ahead of node " .. me .. "'s last offset 6 (resync)",
        "ERESYNC" }, { rn.recover("h.a", me, ea, 7) })
      assert.same({ nil, "ERESYNC: epoch old-epoch of topic h.a is gone: node " .. me .. " is at epoch " .. ea
        .. " (resync)", "ERESYNC" }, { rn.recover("h.a", me, "old-epoch", 1) })
      -- a topic without history, and one with history but no message yet
      assert.same({ nil, "ENOHISTORY: node " .. me .. " keeps no history for topic h.x.y", "ENOHISTORY" },
        { rn.recover("h.x.y", me, nil, nil) })
      assert.same({ {} }, { recover("h.new", nil, nil) })
      assert.same({ nil, "ERESYNC: epoch e1 of topic h.new is gone: node " .. me .. " holds no messages of it (resync)",
        "ERESYNC" }, { rn.recover("h.new", me, "e1", 0) })

      local st = rn.mesh_status().stats
      assert.equal(7, st.history_stored)
      assert.equal(3, st.history_trimmed)
      assert.equal(2, st.history_topics)
      assert.equal(4, st.history_messages)
      assert.equal(#"a4a5a6" + 3 * #"h.a" + #'{"n":1}' + #"h.b", st.history_bytes)

      -- withdrawing the pattern drops its streams
      assert.is_true(rn.history("h.*", false))
      assert.equal(0, stat("history_topics"))
      assert.equal(0, stat("history_bytes"))
      assert.same({ nil, "ENOHISTORY: node " .. me .. " keeps no history for topic h.a", "ENOHISTORY" },
        { rn.recover("h.a", me, ea, 6) })
    end, { timeout = 10 })
  end)

  it("expires messages by age and starts a new epoch after an idle ttl", function()
    H.run(function()
      local me = rn.node_id()
      local got = {}
      subscribe("t.*", got)
      assert.is_true(rn.history("t.*", { ttl = 0.3 }))
      rn.publish("t.a", "old1")
      rn.publish("t.a", "old2")
      local e1 = got[1][4].epoch
      assert.same({ { { "old1", 1, "t.a" }, { "old2", 2, "t.a" } }, e1 }, { recover("t.a", e1, 0) })
      -- after the ttl the messages are gone (trimmed when read), and a
      -- status shows them expired
      MH.wait_until(function()
        return rn.recover("t.a", me, e1, 0) == nil
      end, "the messages of t.a to expire", 5)
      MH.wait_until(function() return stat("history_messages") == 0 end, "the status to show none kept", 5)
      assert.equal(2, stat("history_expired"))
      -- the stream itself goes a ttl after its last message: then the old
      -- epoch is gone and the next publish starts a new one at offset 1
      MH.wait_until(function() return stat("history_topics") == 0 end, "the idle stream to be dropped", 5)
      assert.same({ nil, "ERESYNC: epoch " .. e1 .. " of topic t.a is gone: node " .. me
        .. " holds no messages of it (resync)", "ERESYNC" }, { rn.recover("t.a", me, e1, 2) })
      rn.publish("t.a", "new1")
      local pos = got[3][4]
      assert.are_not.equal(e1, pos.epoch)
      assert.equal(1, pos.offset)
      -- size and ttl together: at most size, none older than ttl
      assert.is_true(rn.history("t.*", { size = 2, ttl = 60 }))
      rn.publish("t.a", "new2")
      rn.publish("t.a", "new3")
      assert.same({ { { "new2", 2, "t.a" }, { "new3", 3, "t.a" } }, pos.epoch }, { recover("t.a", nil, nil) })
    end, { timeout = 15 })
  end)

  it("keeps to its bounds", function()
    H.run(function()
      local me = rn.node_id()
      local got = {}
      subscribe("b.*", got)
      -- size above max_history_size; too many patterns
      cfg.max_history_size = 10
      assert.same({ nil, "ELIMIT: a history of 11 messages per topic is more than mesh_config.max_history_size (10)",
        "ELIMIT" }, { rn.history("b.*", { size = 11 }) })
      cfg.max_history_patterns = 2
      assert.is_true(rn.history("b.*", { size = 10 }))
      assert.is_true(rn.history("c.*", { size = 1 }))
      assert.is_true(rn.history("c.*", { size = 2 })) -- the same pattern again: replaced
      assert.same({ nil, "ELIMIT: node " .. me .. " keeps history for 2 patterns already "
        .. "(mesh_config.max_history_patterns)", "ELIMIT" }, { rn.history("d.*", { size = 1 }) })
      assert.same({ { pattern = "b.*", size = 10 }, { pattern = "c.*", size = 2 } }, HI.patterns())

      -- topics: past max_history_topics a new topic goes without history
      cfg.max_history_topics = 2
      rn.publish("b.one", "1")
      rn.publish("b.two", "2")
      rn.publish("b.three", "3")
      assert.equal(1, got[1][4].offset)
      assert.equal(1, got[2][4].offset)
      assert.is_nil(got[3][4])
      assert.equal(1, stat("history_topics_refused"))
      assert.equal(2, stat("history_topics"))
      assert.same({ nil, "ERESYNC: epoch e of topic b.three is gone: node " .. me
        .. " holds no messages of it (resync)", "ERESYNC" }, { rn.recover("b.three", me, "e", 0) })

      -- bytes: the oldest messages of the node go first, whatever the topic
      cfg.max_history_bytes = 3 * (#"b.one" + 10)
      local e1 = got[1][4].epoch
      rn.publish("b.one", string.rep("x", 10))
      rn.publish("b.one", string.rep("y", 10))
      rn.publish("b.two", string.rep("z", 10)) -- now b.one's "1" and b.two's "2" are evicted
      assert.equal(2, stat("history_evicted"))
      assert.equal(3 * (#"b.one" + 10), stat("history_bytes"))
      assert.same({ nil, "ERESYNC: offset 0 of topic b.one is too old: node " .. me .. " keeps offsets 2 to 3 (resync)",
        "ERESYNC" }, { rn.recover("b.one", me, e1, 0) })
      assert.same({ { { string.rep("x", 10), 2, "b.one" }, { string.rep("y", 10), 3, "b.one" } }, e1 },
        { recover("b.one", e1, 1) })

      -- a recover answer: at most max_recover messages and about
      -- max_recover_bytes; list.more says that more follow
      cfg.max_history_bytes = 1 << 20
      cfg.max_recover = 2
      -- b.two holds "zzz..." at offset 2; m1..m5 get offsets 3..7
      for i = 1, 5 do rn.publish("b.two", "m" .. i) end
      local e2 = got[2][4].epoch
      local l, ep, more = recover("b.two", e2, 2)
      assert.same({ { { "m1", 3, "b.two" }, { "m2", 4, "b.two" } }, e2, true }, { l, ep, more })
      l, ep, more = recover("b.two", e2, 5)
      assert.same({ { { "m4", 6, "b.two" }, { "m5", 7, "b.two" } }, e2 }, { l, ep, more })
      cfg.max_recover = 100
      cfg.max_recover_bytes = 2 * #'"m3"' -- counted JSON-encoded
      l, ep, more = recover("b.two", e2, 4)
      assert.same({ { { "m3", 5, "b.two" }, { "m4", 6, "b.two" } }, e2, true }, { l, ep, more })
      -- one message always fits, however large
      cfg.max_recover_bytes = 1
      assert.same({ { { "m5", 7, "b.two" } }, e2 }, { recover("b.two", e2, 6) })
      -- escapes count: "\1" travels as 8 bytes ("\u0001" in quotes)
      cfg.max_recover_bytes = 15
      rn.publish("b.two", "\1")
      rn.publish("b.two", "\1")
      assert.same({ { { "\1", 8, "b.two" } }, e2, true }, { recover("b.two", e2, 7) })
    end, { timeout = 10 })
  end)

  it("holds live frames while a WebSocket subscription recovers", function()
    H.run(function()
      local me = rn.node_id()
      local got = {}
      subscribe("w.*", got)
      assert.is_true(rn.history("w.*", { size = 10 }))
      for i = 1, 3 do rn.publish("w.a", "m" .. i) end
      local e = got[1][4].epoch
      local sent = {}
      local fn, start = HI.recover_frames("w.a", { node = me, epoch = e, offset = 1 },
        function(frame) sent[#sent + 1] = json.decode(frame) end)
      -- frames that arrive before the recovery ends are held: one it will
      -- recover (offset 3), one after it, one of another stream
      fn('{"live":3}', "w.a", me, e, 3)
      fn('{"live":4}', "w.a", me, e, 4)
      fn('{"other":1}', "w.a", "x", "other-epoch", 1)
      assert.same({}, sent)
      start()
      assert.same({
        { topic = "w.a", from = me, message = "m2", epoch = e, offset = 2 },
        { topic = "w.a", from = me, message = "m3", epoch = e, offset = 3 },
        { live = 4 }, { other = 1 },
      }, sent)
      fn('{"live":5}', "w.a", me, e, 5)
      assert.same({ live = 5 }, sent[5])
      -- a failure is one frame, and then everything held goes out
      sent = {}
      fn, start = HI.recover_frames("w.a", { node = me, epoch = "gone", offset = 0 },
        function(frame) sent[#sent + 1] = json.decode(frame) end)
      fn('{"live":6}', "w.a", me, e, 6)
      start()
      assert.same({ { topic = "w.a", from = me, code = "ERESYNC",
        error = "ERESYNC: epoch gone of topic w.a is gone: node " .. me .. " is at epoch " .. e .. " (resync)" },
        { live = 6 } }, sent)
      -- at most max_recover frames are held
      cfg.max_recover = 1
      sent = {}
      fn, start = HI.recover_frames("w.a", { node = me, epoch = e, offset = 3 },
        function(frame) sent[#sent + 1] = json.decode(frame) end)
      fn('{"live":7}', "w.a", me, e, 7)
      fn('{"live":8}', "w.a", me, e, 8)
      assert.equal(1, stat("history_held_dropped"))
      start()
      assert.same({ { live = 7 } }, sent)
    end, { timeout = 10 })
  end)

  it("raises on misuse", function()
    local function raises(want, fn, ...)
      local ok, err = pcall(fn, ...)
      assert.is_false(ok)
      assert.truthy(tostring(err):find(want, 1, true), err)
    end
    raises("relaynet.history: EINVAL: topic 'a..b' has an empty token", rn.history, "a..b", { size = 1 })
    raises("relaynet.history: EINVAL: give a size, a ttl or both", rn.history, "a.*", {})
    raises("relaynet.history: EINVAL: size must be a positive integer", rn.history, "a.*", { size = 0 })
    raises("relaynet.history: EINVAL: size must be a positive integer", rn.history, "a.*", { size = 1.5 })
    raises("relaynet.history: EINVAL: ttl must be a positive number of seconds", rn.history, "a.*", { ttl = -1 })
    raises("relaynet.history: EINVAL: expected an options table or false", rn.history, "a.*", 5)
    raises("relaynet.recover: EINVAL:", rn.recover, "a.*", "n", "e", 1)
    raises("relaynet.recover: from_node must be a node id string", rn.recover, "a.b", nil, "e", 1)
    raises("relaynet.recover: epoch must be a string", rn.recover, "a.b", "n", 5, 1)
    raises("relaynet.recover: offset must be a non-negative integer", rn.recover, "a.b", "n", "e", -1)
    raises("relaynet.recover: an epoch needs an offset", rn.recover, "a.b", "n", "e")
    raises("relaynet.recover: timeout must be a positive number", rn.recover, "a.b", "n", "e", 1, 0)
    raises("relaynet.subscribe: recover: EINVAL: expected {node = , epoch = , offset = }", HI.recover_frames,
      "a.b", "x", print)
    raises("relaynet.subscribe: recover: an epoch needs an offset", HI.recover_frames,
      "a.b", { node = "n", epoch = "e" }, print)
    raises("relaynet.subscribe: recover: offset must be a non-negative integer", HI.recover_frames,
      "a.b", { node = "n", epoch = "e", offset = 1.5 }, print)
  end)
end)

describe("history across the mesh", function()
  -- hs.method on `node` (through the tester's link), which must not fail.
  local function call(node, method, args)
    local res, err, code = rn.remote_call(node, "hs", method, args or {}, 10)
    assert(err == nil, string.format("hs.%s on %s failed: %s (%s)", method, node, tostring(err), tostring(code)))
    return res
  end

  local function topics_of(node)
    for _, r in ipairs(rn.routes()) do
      if r.node == node then return table.concat(r.topics or {}, ",") end
    end
  end

  -- The messages of a `received` list as { message, offset } pairs (the
  -- other fields checked on their own).
  local function pairs_of(list, from)
    local out = {}
    for i = from or 1, #list do out[#out + 1] = { list[i].message, list[i].offset } end
    return out
  end

  local function recovered(r)
    assert(r.list, "recover failed: " .. tostring(r.error))
    local out = {}
    for i, m in ipairs(r.list) do out[i] = { m.message, m.offset, m.topic } end
    return out
  end

  it("recovers what a subscriber missed; old offsets and a new epoch resync", function()
    MH.run(function(m)
      -- a line: tester - a - b; a publishes, b subscribes
      m:start_topology("line", { "a", "b" }, { script = NODE })
      m:join({ "a" })
      m:wait_converged(20)
      assert.is_true(call("a", "history", { "hist.*", { size = 5 } }))
      assert.is_true(call("b", "subscribe", { "hist.*" }))
      MH.wait_until(function() return topics_of("b") == "hist.*" end, "b's interest to reach the tester (via a)")

      -- b receives a's messages with their positions
      assert.equal(1, call("a", "publish", { "hist.x", "m", 3 }))
      MH.wait_until(function() return #call("b", "received", { "hist.*" }) == 3 end, "b's 3 messages")
      local got = call("b", "received", { "hist.*" })
      local epoch = got[1].epoch
      assert.is_string(epoch)
      for i = 1, 3 do
        assert.same({ topic = "hist.x", message = "m" .. i, from = "a", epoch = epoch, offset = i, node = "a" },
          got[i])
      end

      -- b's subscriber goes away; a publishes 3 more; b recovers exactly those
      assert.is_true(call("b", "unsubscribe", { "hist.*" }))
      MH.wait_until(function() return topics_of("b") == "" end, "b's interest to go")
      assert.equal(0, call("a", "publish", { "hist.x", "m", 3 })) -- m1..m3 again as offsets 4..6
      assert.same({ { "m1", 4, "hist.x" }, { "m2", 5, "hist.x" }, { "m3", 6, "hist.x" } },
        recovered(call("b", "recover", { "hist.x", "a", epoch, 3 })))
      assert.same({}, recovered(call("b", "recover", { "hist.x", "a", epoch, 6 })))

      -- b resubscribes, then recovers from its last offset: the live
      -- messages after that come with the next offsets
      assert.is_true(call("b", "subscribe", { "hist.*" }))
      MH.wait_until(function() return topics_of("b") == "hist.*" end, "b's interest to come back")
      assert.equal(1, call("a", "publish", { "hist.x", "live" }))
      MH.wait_until(function() return #call("b", "received", { "hist.*" }) == 4 end, "b's live message")
      assert.same({ "live", 7 }, pairs_of(call("b", "received", { "hist.*" }), 4)[1])

      -- the kept window is 5 (offsets 3..7): offset 1 is too old
      assert.same({ error = "ERESYNC: offset 1 of topic hist.x is too old: node a keeps offsets 3 to 7 (resync)",
        code = "ERESYNC" }, call("b", "recover", { "hist.x", "a", epoch, 1 }))
      assert.same({ { "m3", 3, "hist.x" }, { "m1", 4, "hist.x" }, { "m2", 5, "hist.x" }, { "m3", 6, "hist.x" },
        { "live", 7, "hist.x" } }, recovered(call("b", "recover", { "hist.x", "a", epoch, 2 })))
      -- a topic without history, an unknown node
      assert.same({ error = "ENOHISTORY: node a keeps no history for topic other.x", code = "ENOHISTORY" },
        call("b", "recover", { "other.x", "a", json.null, json.null }))
      local r = call("b", "recover", { "hist.x", "nowhere", epoch, 1 })
      assert.same({ error = "ENOROUTE: no route to node nowhere", code = "ENOROUTE" }, r)

      -- the subscriber's process restarts: with the position it last had
      -- (offset 7, kept by the test) it recovers what a published meanwhile
      m:restart("b")
      assert(rn.wait_route("b", 20))
      assert.equal(0, call("a", "publish", { "hist.x", "after", 2 }))
      MH.wait_until(function()
        local ok, res = pcall(call, "b", "recover", { "hist.x", "a", epoch, 7 })
        return ok and res.list and #res.list == 2
      end, "the restarted b to recover", 20)
      assert.same({ { "after1", 8, "hist.x" }, { "after2", 9, "hist.x" } },
        recovered(call("b", "recover", { "hist.x", "a", epoch, 7 })))

      -- the publisher restarts: its old epoch is gone
      m:restart("a")
      m:wait_converged(30)
      assert.is_true(call("a", "history", { "hist.*", { size = 5 } }))
      assert.same({ error = "ERESYNC: epoch " .. epoch .. " of topic hist.x is gone: node a holds no messages of it "
        .. "(resync)", code = "ERESYNC" }, call("b", "recover", { "hist.x", "a", epoch, 9 }))
      call("a", "publish", { "hist.x", "new" })
      local r2 = call("b", "recover", { "hist.x", "a", json.null, json.null })
      assert.same({ { "new", 1, "hist.x" } }, recovered(r2))
      assert.are_not.equal(epoch, r2.epoch)
      assert.same({ error = "ERESYNC: epoch " .. epoch .. " of topic hist.x is gone: node a is at epoch " .. r2.epoch
        .. " (resync)", code = "ERESYNC" }, call("b", "recover", { "hist.x", "a", epoch, 9 }))

      -- the same through JSON-RPC (remote_call to "$history"), as another
      -- client would: the publisher's answer as it is
      assert.same({ epoch = r2.epoch, messages = { { offset = 1, text = "new" } } },
        m:call_via("b", "a", "$history", "recover", { "hist.x", json.null, json.null }))
      assert.same({ code = "ERESYNC", message = "ERESYNC: offset 5 of topic hist.x is ahead of node a's last offset 1 "
        .. "(resync)" }, m:call_via("b", "a", "$history", "recover", { "hist.x", r2.epoch, 5 }))
      -- "$history" is internal: not in the registry
      for _, e in ipairs(rn.registry()) do assert.are_not.equal("$history", e.server) end

      local sa = m:status("a").stats
      assert.equal(1, sa.history_stored)
      assert.equal(3, sa.history_resyncs)
      assert.equal(5, sa.history_recovers)
      assert.equal(2, sa.history_recovered)
    end, { timeout = 150 })
  end)

  it("gives WebSocket subscribers the position in their frames", function()
    MH.run(function(m)
      m:start_topology("line", { "a", "b" }, { script = NODE })
      m:join({ "a" })
      m:wait_converged(20)
      assert.is_true(call("a", "history", { "room.*", { size = 10 } }))
      local c = assert(rn.ws_connect("ws://127.0.0.1:" .. m:port_of("b") .. "/", { timeout = 5 }))
      local function recv()
        local text = assert(c:receive(5))
        return assert(json.decode(text))
      end
      assert(c:send("sub room.*"))
      assert.same({ ack = "sub", pattern = "room.*", ok = true }, recv())
      MH.wait_until(function() return topics_of("b") == "room.*" end, "b's interest to reach the tester")
      assert.equal(1, call("a", "publish", { "room.1", "hello" }))
      local f = recv()
      assert.is_string(f.epoch)
      assert.same({ topic = "room.1", from = "a", message = "hello", epoch = f.epoch, offset = 1 }, f)
      -- a topic without history: no position
      assert.equal(1, rn.publish("room.2", { n = 2 }))
      assert.same({ topic = "room.2", from = "tester", message = { n = 2 } }, recv())

      -- subscribing with recovery: what a published after the position
      -- comes first (after the ack: it is fetched from a), then live frames
      assert.equal(1, call("a", "publish", { "room.1", "m", 2 })) -- offsets 2, 3
      assert.same({ topic = "room.1", from = "a", message = "m1", epoch = f.epoch, offset = 2 }, recv())
      assert.same({ topic = "room.1", from = "a", message = "m2", epoch = f.epoch, offset = 3 }, recv())
      local c2 = assert(rn.ws_connect("ws://127.0.0.1:" .. m:port_of("b") .. "/", { timeout = 5 }))
      local function recv2()
        local text = assert(c2:receive(5))
        return assert(json.decode(text))
      end
      assert(c2:send("rsub room.1 a " .. f.epoch .. " 1"))
      assert.same({ ack = "rsub", topic = "room.1", ok = true }, recv2())
      assert.same({ topic = "room.1", from = "a", message = "m1", epoch = f.epoch, offset = 2 }, recv2())
      assert.same({ topic = "room.1", from = "a", message = "m2", epoch = f.epoch, offset = 3 }, recv2())
      assert.equal(1, call("a", "publish", { "room.1", "live" }))
      assert.same({ topic = "room.1", from = "a", message = "live", epoch = f.epoch, offset = 4 }, recv2())
      -- a position that cannot be recovered: one error frame, then live frames
      assert(c2:send("rsub room.3 a " .. f.epoch .. " 1"))
      assert.same({ ack = "rsub", topic = "room.3", ok = true }, recv2())
      assert.same({ topic = "room.3", from = "a", code = "ERESYNC", error = "ERESYNC: epoch " .. f.epoch
        .. " of topic room.3 is gone: node a holds no messages of it (resync)" }, recv2())
      -- misuse is refused: a pattern cannot be recovered
      assert(c2:send("rsub room.* a " .. f.epoch .. " 1"))
      local ack = recv2()
      assert.is_false(ack.ok)
      assert.truthy(ack.error:find("relaynet.subscribe: recover: EINVAL: ", 1, true), ack.error)
      c2:close()
      c:close()
    end, { timeout = 90 })
  end)
end)
