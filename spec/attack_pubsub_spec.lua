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

local function stats_of(m, id)
  local st = assert(m:status(id), "no /status from " .. id)
  return st.stats
end

-- A raw mesh link to node `to` that has said hello as `id` and answers
-- pings; every other decoded message is kept in self.msgs. Waits until
-- the node lists `id` among its peers.
local function evil_peer(m, to, id)
  local self = { id = id, msgs = {}, n = 0 }
  self.c = assert(rn.ws_connect(m:url(to), { timeout = 5, on_message = function(msg, _, client)
    local v = json.decode(msg)
    if type(v) ~= "table" then return end
    if v.type == "ping" then
      client:send(assert(json.encode({ type = "pong", id = v.id, from = id, to = v.from })))
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
  function self.send(_, env)
    self.n = self.n + 1
    if env.id == nil then env.id = id .. "-" .. self.n end
    return assert(self.c:send(assert(json.encode(env))))
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
end)
