-- spec/attack_pubsub_spec.lua: attacks on pub/sub, presence and history
-- (issue 12) from a hostile mesh peer, against real node processes
-- (spec/support/mesh_harness.lua).
--
-- The attacker is a raw /ws/p2p link from this test process: it says hello
-- as "evil" (version 1, the nodes run without credentials), answers pings
-- so that its link stays up, and sends envelopes made by hand. Every check
-- that something did NOT happen is ordered behind a marker the node must
-- handle after the attack on the same link (a well-formed publish that has
-- to arrive, or a ping whose pong has to come back), so no check rests on a
-- sleep.

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local json = require("relaynet.json")

local PUBSUB_NODE = H.ROOT .. "/spec/support/pubsub_node.lua"
local PRESENCE_NODE = H.ROOT .. "/spec/support/presence_node.lua"
local HISTORY_NODE = H.ROOT .. "/spec/support/history_node.lua"

local function stats_of(m, id)
  local st = assert(m:status(id), "no /status from " .. id)
  return st.stats
end

-- A raw mesh link to node `to` that has said hello as `id` and answers
-- pings; every other decoded message is kept in self.msgs. Waits until
-- the node lists `id` among its peers. `on_call(v)`, when given, answers
-- each server_call v with the result it returns (nil: no answer yet;
-- self:answer(v, result) sends one).
local function evil_peer(m, to, id, on_call)
  local self = { id = id, msgs = {}, n = 0 }
  self.c = assert(rn.ws_connect(m:url(to), { timeout = 5, on_message = function(msg, _, client)
    local v = json.decode(msg)
    if type(v) ~= "table" then return end
    if v.type == "ping" then
      client:send(assert(json.encode({ type = "pong", id = v.id, from = id, to = v.from })))
    elseif v.type == "server_call" and on_call then
      local result = on_call(v)
      if result ~= nil then self:answer(v, result) end
    else
      self.msgs[#self.msgs + 1] = v
    end
  end }))
  assert(self.c:send(assert(json.encode({ type = "hello", id = id .. "-hello", from = id,
    data = { version = 1, node = id } }))))
  MH.wait_until(function()
    for _, p in ipairs((m:status(to) or { peers = {} }).peers) do
      if p.id == id then return true end
    end
  end, to .. " to take " .. id .. " as a peer", 10)
  function self.answer(_, v, result)
    assert(self.c:send(assert(json.encode({ type = "server_response", id = id .. "-r-" .. v.id, from = id,
      to = v.from, reply_to = v.id, data = { result = result } }))))
  end
  function self.send(_, env)
    self.n = self.n + 1
    if env.id == nil then env.id = id .. "-" .. self.n end
    return assert(self.c:send(assert(json.encode(env))))
  end
  -- Waits until a kept message satisfies pred; returns it (and removes it).
  function self.expect(_, pred, what)
    local found
    MH.wait_until(function()
      for i, v in ipairs(self.msgs) do
        if pred(v) then
          found = table.remove(self.msgs, i)
          return true
        end
      end
    end, what, 10)
    return found
  end
  -- Sends a ping and waits for its pong: everything sent before it has
  -- been handled by the node.
  function self.sync(_)
    local pid = id .. "-sync-" .. self.n
    self.n = self.n + 1
    self:send({ type = "ping", id = pid, from = id, to = to, data = {} })
    MH.wait_until(function()
      for i, v in ipairs(self.msgs) do
        if v.type == "pong" and v.id == pid then
          table.remove(self.msgs, i)
          return true
        end
      end
    end, "the pong of " .. pid, 10)
  end
  return self
end

-- Makes node `to` learn a route to the evil peer (an advert of its own
-- entry) and waits until it has it.
local function advertise(m, evil, to)
  evil:send({ type = "registry_sync", from = evil.id, to = to,
    data = { seq = 1, routes = { { path = { evil.id }, seq = 1, servers = json.array({}) } } } })
  MH.wait_until(function()
    for _, r in ipairs((m:status(to) or { routes = {} }).routes) do
      if r.node == evil.id then return true end
    end
  end, to .. " to route to " .. evil.id, 10)
end

-- A publish from the evil peer (as itself) for node `to`.
local function publish_env(to, seq, data)
  data.run, data.seq, data.nodes = "evilrun", seq, json.array({ to })
  return { type = "publish", from = "evil", ttl = 8, route = { "evil" }, data = data }
end

describe("attacks on pub/sub from a mesh peer", function()
  it("a message's JSON text from a peer cannot inject fields into frames or notifications", function()
    MH.run(function(m)
      m:start("n1", { script = PUBSUB_NODE })
      local base = "ws://127.0.0.1:" .. m:port_of("n1")
      -- A server:subscribe subscriber, and a JSON-RPC subscriber.
      local frames = {}
      local ws = assert(rn.ws_connect(base .. "/", { timeout = 5, on_message = function(msg)
        frames[#frames + 1] = msg
      end }))
      local notes = {}
      local rpc = assert(rn.ws_connect(base .. "/rpc", { timeout = 5, on_message = function(msg)
        notes[#notes + 1] = msg
      end }))
      assert(ws:send("sub att.x"))
      assert(rpc:send('{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"att.x"}}'))
      MH.wait_until(function() return #frames == 1 and #notes == 1 end, "the two subscribe answers")
      assert.same({ ack = "sub", pattern = "att.x", ok = true }, json.decode(frames[1]))
      assert.same({ jsonrpc = "2.0", id = 1, result = "s1" }, json.decode(notes[1]))
      table.remove(frames, 1)
      table.remove(notes, 1)

      local evil = evil_peer(m, "n1", "evil")
      local bad0 = stats_of(m, "n1").bad_messages
      -- Each of these closes the message's JSON value early and adds
      -- members of its own: a second "from" in a frame, a response id and
      -- result in a notification. Then text that is no JSON at all.
      evil:send(publish_env("n1", 1, { topic = "att.x", json = '"hi","from":"n9"' }))
      evil:send(publish_env("n1", 2, { topic = "att.x", json = '1},"id":7,"result":{"forged":true' }))
      evil:send(publish_env("n1", 3, { topic = "att.x", json = '{"a":' }))
      -- The marker: a well-formed message, after which nothing else comes.
      evil:send(publish_env("n1", 4, { topic = "att.x", json = '{"marker":true}' }))
      MH.wait_until(function() return #frames >= 1 and #notes >= 1 end, "the marker message", 10)
      -- Only the marker got through, on both kinds of subscription.
      assert.same({ { topic = "att.x", from = "evil", message = { marker = true } } },
        { json.decode(frames[1]) })
      assert.equal(1, #frames)
      assert.same({ jsonrpc = "2.0", method = "subscription",
        params = { subscription = "s1", topic = "att.x", result = { marker = true } } }, json.decode(notes[1]))
      assert.equal(1, #notes)
      assert.equal(bad0 + 3, stats_of(m, "n1").bad_messages)
      -- The node is still well: a message of its own still reaches both.
      assert.equal(1, m:call_via("n1", "n1", "ps", "publish", { "att.x", "still here" }))
      MH.wait_until(function() return #frames == 2 and #notes == 2 end, "the node's own message")
      assert.same({ topic = "att.x", from = "n1", message = "still here" }, json.decode(frames[2]))
      ws:close()
      rpc:close()
      evil.c:close()
    end, { timeout = 60 })
  end)

  it("a JSON-RPC client cannot end another's subscriptions, nor hurt the node with long or deep params", function()
    MH.run(function(m)
      m:start("n1", { script = PUBSUB_NODE })
      local url = "ws://127.0.0.1:" .. m:port_of("n1") .. "/rpc"
      local function client()
        local self = { got = {} }
        self.c = assert(rn.ws_connect(url, { timeout = 5, max_message = 4 * 1024 * 1024,
          on_message = function(msg) self.got[#self.got + 1] = assert(json.decode(msg)) end }))
        -- Sends `text` and waits for the answer with id `id`.
        function self.call(_, id, text)
          assert(self.c:send(text))
          local found
          MH.wait_until(function()
            for i, v in ipairs(self.got) do
              if v.id == id then
                found = table.remove(self.got, i)
                return true
              end
            end
          end, "the answer " .. tostring(id), 10)
          return found
        end
        return self
      end
      local a, b = client(), client()
      assert.equal("s1", a:call(1, '{"jsonrpc":"2.0","id":1,"method":"subscribe","params":["att.y"]}').result)
      -- B names A's id: it was never issued on B, so it is -32602 and A's
      -- subscription stays.
      local r = b:call(2, '{"jsonrpc":"2.0","id":2,"method":"unsubscribe","params":["s1"]}')
      assert.equal(-32602, r.error.code)
      assert.equal("EINVAL", r.error.data.code)
      -- A topic of 64 KiB, and a message nested 100,000 deep.
      r = b:call(3, '{"jsonrpc":"2.0","id":3,"method":"subscribe","params":["' .. string.rep("a", 65536) .. '"]}')
      assert.equal(-32602, r.error.code)
      assert.truthy(r.error.message:find("at most 256", 1, true), r.error.message)
      local deep = string.rep("[", 100000) .. string.rep("]", 100000)
      assert(b.c:send('{"jsonrpc":"2.0","id":4,"method":"publish","params":["att.y",' .. deep .. ']}'))
      MH.wait_until(function() return #b.got > 0 end, "the answer to the deep message", 10)
      assert.equal(-32700, b.got[1].error.code)
      -- A still gets what is published, B's connection still works.
      assert.equal(1, b:call(5, '{"jsonrpc":"2.0","id":5,"method":"publish","params":["att.y","ok"]}').result)
      MH.wait_until(function() return #a.got > 0 end, "A's notification", 10)
      assert.same({ jsonrpc = "2.0", method = "subscription",
        params = { subscription = "s1", topic = "att.y", result = "ok" } }, a.got[1])
      assert.equal(1, stats_of(m, "n1").rpc_pubsub_subscriptions)
      a.c:close()
      b.c:close()
    end, { timeout = 60 })
  end)

  it("a peer cannot make up members of nodes that have no route", function()
    MH.run(function(m)
      m:start("n1", { script = PRESENCE_NODE })
      assert.is_true(m:call_via("n1", "n1", "pr", "watch", { "room.1" }))
      local evil = evil_peer(m, "n1", "evil")
      -- Snapshots and joins that claim to come from nodes n1 has no route
      -- to (ghosts the peer relays): n1 watches room.1, so before the fix
      -- it held every ghost's members and listed them, and each ghost also
      -- left an entry behind that no route change would ever remove.
      for i = 1, 50 do
        local ghost = "ghost" .. i
        evil:send({ type = "presence", from = ghost, to = "n1", ttl = 8, route = { ghost, "evil" },
          data = { op = "state", topic = "room.1", run = "r" .. i, ver = 5,
            members = { { id = "g" .. i, info = { name = "ghost" } } } } })
        evil:send({ type = "presence", from = ghost, to = "n1", ttl = 8, route = { ghost, "evil" },
          data = { op = "join", topic = "room.1", run = "r" .. i, ver = 7, prev = 5, id = "h" .. i } })
        evil:send({ type = "presence", from = ghost .. "x", to = "n1", ttl = 8, route = { ghost .. "x", "evil" },
          data = { op = "leave", topic = "room.1", run = "r" .. i, ver = 7, prev = 0, id = "x" } })
      end
      evil:sync()
      local list = assert(m:call_via("n1", "n1", "pr", "list", { "room.1" }))
      assert.same({ { node = "n1", id = "s1", info = { name = "n1" } } }, list)
      local st = stats_of(m, "n1")
      assert.equal(0, st.presence_cached)
      assert.equal(150, st.presence_unrouted)
      -- No join event reached the handler either.
      assert.same({}, m:call_via("n1", "n1", "pr", "events", { "room.1" }))
      evil.c:close()
    end, { timeout = 60 })
  end)

  it("watches in the name of nodes without a route do not use up the watch registrations", function()
    MH.run(function(m)
      m:start("n1", { script = PRESENCE_NODE })
      m:call_via("n1", "n1", "pr", "config", { "max_presence_watchers", 50 })
      local evil = evil_peer(m, "n1", "evil")
      -- Before the fix each made-up watcher was registered for good (no
      -- route change ever came to forget it): 50 of them took every
      -- registration, and a real watcher was refused.
      for i = 1, 60 do
        local ghost = "ghost" .. i
        evil:send({ type = "presence", from = ghost, to = "n1", ttl = 8, route = { ghost, "evil" },
          data = { op = "watch", topic = "room.g" .. i } })
      end
      evil:sync()
      local st = stats_of(m, "n1")
      assert.equal(0, st.presence_watchers)
      assert.equal(0, st.presence_watchers_refused)
      -- A watcher with a route is registered, gets the snapshot and then
      -- the changes.
      advertise(m, evil, "n1")
      evil:send({ type = "presence", from = "evil", to = "n1", ttl = 8, route = { "evil" },
        data = { op = "watch", topic = "room.1" } })
      local snap = evil:expect(function(v)
        return v.type == "presence" and v.data.op == "state" and v.data.topic == "room.1"
      end, "n1's snapshot of room.1")
      assert.same({ { id = "s1", info = { name = "n1" } } }, snap.data.members)
      local id = m:call_via("n1", "n1", "pr", "join", { "room.1", { name = "second" } })
      local join = evil:expect(function(v)
        return v.type == "presence" and v.data.op == "join" and v.data.topic == "room.1"
      end, "the join of " .. tostring(id))
      assert.equal(id, join.data.id)
      st = stats_of(m, "n1")
      assert.equal(1, st.presence_watchers)
      assert.equal(0, st.presence_watchers_refused)
      evil.c:close()
    end, { timeout = 60 })
  end)

  it("rn.presence calls that time out on a node that never answers leave nothing behind", function()
    MH.run(function(m)
      m:start("n1", { script = PRESENCE_NODE })
      local evil = evil_peer(m, "n1", "evil")
      -- The peer lists room.1 among its subscription patterns, so n1 asks
      -- it for its members when it watches the topic; it never answers.
      evil:send({ type = "registry_sync", from = "evil", to = "n1", data = { seq = 1, routes = {
        { path = { "evil" }, seq = 1, servers = json.array({}), topics = json.array({ "room.1" }) } } } })
      MH.wait_until(function()
        for _, r in ipairs((m:status("n1") or { routes = {} }).routes) do
          if r.node == "evil" then return true end
        end
      end, "n1 to route to evil", 10)
      assert.is_true(m:call_via("n1", "n1", "pr", "watch", { "room.1" }))
      evil:expect(function(v) return v.type == "presence" and v.data.op == "watch" end, "n1's watch")
      for _ = 1, 20 do
        local r = m:call_via("n1", "n1", "pr", "list", { "room.1", 0.05 })
        assert.equal("ETIMEDOUT", r.code)
        assert.truthy(r.error:find("from node(s) evil", 1, true), r.error)
      end
      -- Before the fix every one of them stayed in the list of waiters.
      local st = stats_of(m, "n1")
      assert.equal(20, st.presence_timeouts)
      assert.equal(0, st.presence_waiting)
      evil.c:close()
    end, { timeout = 60 })
  end)

  it("a publisher's recover answers are checked: no loop, no other epoch, no injected frames", function()
    MH.run(function(m)
      m:start("n1", { script = HISTORY_NODE })
      -- The evil peer is the publisher n1 recovers from. Per topic:
      -- att.loop answers offset 1 and "more" again and again (the same
      -- answer every time, so a recovery that trusts it never ends);
      -- att.epoch answers with messages of another epoch; att.inject with
      -- a JSON text that adds a "from" to the frame; att.back with offsets
      -- from before the one asked for.
      local calls = {}
      local E = "evilEpoch01"
      local evil = evil_peer(m, "n1", "evil", function(v)
        local topic = v.data.args[1]
        calls[topic] = (calls[topic] or 0) + 1
        if topic == "att.loop" then
          return { epoch = E, messages = { { offset = 1, text = "a" } }, more = true }
        elseif topic == "att.epoch" then
          return { epoch = "otherEpoch", messages = { { offset = 1, text = "x" } } }
        elseif topic == "att.inject" then
          return { epoch = E, messages = { { offset = 1, json = '1,"from":"n9"' } } }
        elseif topic == "att.back" then
          return { epoch = E, messages = { { offset = 2, text = "old" }, { offset = 3, text = "old" } } }
        end
        return { code = "ENOHISTORY", message = "ENOHISTORY: none" }
      end)
      advertise(m, evil, "n1")
      local function recover(topic, offset)
        local frames = {}
        local ws = assert(rn.ws_connect("ws://127.0.0.1:" .. m:port_of("n1") .. "/", { timeout = 5,
          on_message = function(msg) frames[#frames + 1] = assert(json.decode(msg)) end }))
        assert(ws:send("rsub " .. topic .. " evil " .. E .. " " .. offset))
        -- The ack, then frames until the error frame that ends recovery.
        MH.wait_until(function() return #frames > 0 and frames[#frames].code end,
          "the error frame of " .. topic, 10, function() return json.encode(frames) end)
        ws:close()
        assert.same({ ack = "rsub", topic = topic, ok = true }, frames[1])
        table.remove(frames, 1)
        return frames
      end
      local bad = "EINVAL: a malformed recover answer for topic "

      local f = recover("att.loop", 0)
      assert.same({ topic = "att.loop", from = "evil", message = "a", epoch = E, offset = 1 }, f[1])
      assert.same({ topic = "att.loop", from = "evil", code = "EINVAL",
        error = bad .. "att.loop: offset 1 where 2 was due" }, f[2])
      assert.equal(2, #f)
      assert.equal(2, calls["att.loop"])

      f = recover("att.epoch", 0)
      assert.same({ { topic = "att.epoch", from = "evil", code = "EINVAL",
        error = bad .. "att.epoch: messages of another epoch" } }, f)

      f = recover("att.inject", 0)
      assert.same({ { topic = "att.inject", from = "evil", code = "EINVAL",
        error = bad .. "att.inject: a message that is not JSON" } }, f)

      f = recover("att.back", 2)
      assert.same({ { topic = "att.back", from = "evil", code = "EINVAL",
        error = bad .. "att.back: offset 2 where 3 was due" } }, f)
      for _, t in ipairs({ "att.epoch", "att.inject", "att.back" }) do assert.equal(1, calls[t]) end
      evil.c:close()
    end, { timeout = 60 })
  end)

  it("a recovery stops when its connection has closed", function()
    MH.run(function(m)
      m:start("n1", { script = HISTORY_NODE })
      -- att.more: every answer says "more" and carries the next offset, so
      -- the recovery goes on for as long as the publisher likes; the
      -- second call is held until the client has gone.
      local E = "evilEpoch01"
      local log, held = {}, nil
      local evil = evil_peer(m, "n1", "evil", function(v)
        local topic, offset = v.data.args[1], v.data.args[3]
        log[#log + 1] = topic
        if topic == "att.more" then
          if #log == 2 then
            held = v
            return nil
          end
          return { epoch = E, messages = { { offset = offset + 1, text = "m" .. (offset + 1) } }, more = true }
        end
        return { code = "ENOHISTORY", message = "ENOHISTORY: none" }
      end)
      advertise(m, evil, "n1")
      local url = "ws://127.0.0.1:" .. m:port_of("n1") .. "/"
      local frames = {}
      local c1 = assert(rn.ws_connect(url, { timeout = 5, on_message = function(msg)
        frames[#frames + 1] = assert(json.decode(msg))
      end }))
      assert(c1:send("rsub att.more evil " .. E .. " 0"))
      MH.wait_until(function() return held end, "the second recover call", 10)
      assert.same({ topic = "att.more", from = "evil", message = "m1", epoch = E, offset = 1 }, frames[2])
      c1:close()
      MH.wait_until(function() return stats_of(m, "n1").subscriptions == 0 end, "n1 to see the close", 10)
      evil:answer(held, { epoch = E, messages = { { offset = 2, text = "m2" } }, more = true })
      -- Another recovery on a new connection: its call reaches the peer
      -- only after a WebSocket handshake and a message, long after the one
      -- the closed connection's recovery would have made at once.
      local c2 = assert(rn.ws_connect(url, { timeout = 5 }))
      assert(c2:send("rsub att.marker evil " .. E .. " 0"))
      MH.wait_until(function() return log[#log] == "att.marker" end, "the marker's recover call", 10,
        function() return #log .. " recover calls, first " .. table.concat(log, " ", 1, math.min(#log, 10)) end)
      assert.same({ "att.more", "att.more", "att.marker" }, log)
      c2:close()
      evil.c:close()
    end, { timeout = 60 })
  end)
end)
