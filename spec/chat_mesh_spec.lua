-- examples/chat.lua across nodes: real node processes (spec/support/
-- mesh_harness.lua) run the chat, and this process talks to each over its
-- /ws with relaynet's own client. One room spans the nodes: joins, leaves,
-- counts and user lists, messages, names unique across nodes; a lost link
-- takes the other node's people out of the room and brings them back; two
-- joins of one name on both sides of a lost link end with the earlier one
-- keeping it. Two headless Chromium pages on two nodes: spec/e2e/chat_mesh.js.

local rn = require("relaynet")
local json = require("relaynet.json")
local H = require("helper")
local MH = require("mesh_harness")

local CHAT = H.ROOT .. "/examples/chat.lua"

-- Waits for the next frame on client c (within `timeout` seconds, 10 by
-- default) and returns it decoded.
local function recv(c, timeout)
  local msg, err = c:receive(timeout or 10)
  assert(msg, "no message: " .. tostring(err))
  return json.decode(msg)
end

local function send(c, t)
  assert(c:send(json.encode(t)))
end

local function ws_url(m, id)
  return "ws://127.0.0.1:" .. m:port_of(id) .. "/ws"
end

-- Connects to node `id` and joins as `name`: the client and its welcome
-- (whose own "joined" notice is checked and consumed).
local function join(m, id, name)
  local c = assert(rn.ws_connect(ws_url(m, id)))
  send(c, { type = "join", name = name })
  local welcome = recv(c)
  assert.are.equal("welcome", welcome.type, json.encode(welcome))
  assert.are.same({ type = "joined", name = welcome.name, count = welcome.count }, recv(c))
  return c, welcome
end

-- Starts chat nodes a and b, b dialing a, and waits for their link.
local function two_nodes(m)
  m:start("a", { script = CHAT })
  m:start("b", { script = CHAT, peers = { "a" } })
  m:wait_converged(20, { "a", "b" })
end

-- Joins `name` on node `id` once that node sees `other` in the room (its
-- presence can take a moment to arrive after the routes): the client and
-- the names and count of its welcome, or of the "joined" that completes it.
local function join_seeing(m, id, name, other)
  local c, w = join(m, id, name)
  if w.count == 1 then
    assert.are.same({ type = "joined", name = other, count = 2 }, recv(c))
  else
    assert.are.same({ type = "welcome", name = name, count = 2, names = w.names }, w)
    local want = { name, other }
    table.sort(want)
    assert.are.same(want, w.names)
  end
  return c
end

describe("examples/chat.lua as one room", function()
  local chat = dofile(CHAT)

  it("settles one name by the earlier join, then the lower node id, then the instance", function()
    local function j(since, node, inst) return { since = since, node = node, chat = inst } end
    assert.is_true(chat.earlier(j(10, "b", "x"), j(11, "a", "x")))
    assert.is_false(chat.earlier(j(11, "a", "x"), j(10, "b", "x")))
    assert.is_true(chat.earlier(j(10, "a", "y"), j(10, "b", "x")))
    assert.is_false(chat.earlier(j(10, "b", "x"), j(10, "a", "y")))
    assert.is_true(chat.earlier(j(10, "a", "x"), j(10, "a", "y")))
    assert.is_false(chat.earlier(j(10, "a", "x"), j(10, "a", "x")))
  end)

  it("spans two chat servers in one process (one node, two instances)", function()
    H.run(function()
      local s1 = assert(chat.start(0, "127.0.0.1"))
      local s2 = assert(chat.start(0, "127.0.0.1"))
      local function url(s) return "ws://127.0.0.1:" .. s.port .. "/ws" end
      local function connect_join(s, name)
        local c = assert(rn.ws_connect(url(s)))
        send(c, { type = "join", name = name })
        return c
      end
      local a = connect_join(s1, "Ann")
      assert.are.same({ type = "welcome", name = "Ann", count = 1, names = { "Ann" } }, recv(a))
      assert.are.same({ type = "joined", name = "Ann", count = 1 }, recv(a))
      local b = connect_join(s2, "Ben")
      assert.are.same({ type = "welcome", name = "Ben", count = 2, names = { "Ann", "Ben" } }, recv(b))
      assert.are.same({ type = "joined", name = "Ben", count = 2 }, recv(b))
      assert.are.same({ type = "joined", name = "Ben", count = 2 }, recv(a))
      local dup = connect_join(s2, "Ann")
      assert.are.same({ type = "error", message = "the name Ann is already taken" }, recv(dup))
      send(a, { type = "say", text = "one room" })
      for _, c in ipairs({ a, b }) do
        local said = recv(c)
        assert.are.same({ type = "said", name = "Ann", text = "one room", ts = said.ts }, said)
      end
      a:close_wait()
      assert.are.same({ type = "left", name = "Ann", count = 1 }, recv(b))
      b:close_wait()
      dup:close_wait()
      s1:close()
      s2:close()
      -- Servers come and go; the process keeps one room subscription, one
      -- plain subscription to the members' topic and one presence handler
      -- for all of them.
      for _ = 1, 3 do assert(chat.start(0, "127.0.0.1")):close() end
      local st = rn.mesh_status().stats
      assert.are.equal(2, st.subscriptions)
      assert.are.equal(1, st.presence_handlers)
      assert.are.equal(0, st.presence_members)
    end)
  end)
end)

describe("examples/chat.lua on two nodes", function()
  it("is one room: joins, counts, names, messages and leaves cross nodes; names are unique", function()
    MH.run(function(m)
      two_nodes(m)
      local alice, wa = join(m, "a", "Alice")
      assert.are.same({ type = "welcome", name = "Alice", count = 1, names = { "Alice" } }, wa)
      local bob = join_seeing(m, "b", "Bob", "Alice")
      assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(alice))

      -- A third person on either node is welcomed with the whole room.
      local carol, wc = join(m, "a", "Carol")
      assert.are.same({ type = "welcome", name = "Carol", count = 3, names = { "Alice", "Bob", "Carol" } }, wc)
      assert.are.same({ type = "joined", name = "Carol", count = 3 }, recv(alice))
      assert.are.same({ type = "joined", name = "Carol", count = 3 }, recv(bob))

      -- What is said on one node reaches everyone on both.
      send(alice, { type = "say", text = "hello from a" })
      for _, c in ipairs({ alice, bob, carol }) do
        local said = recv(c)
        assert.are.same({ type = "said", name = "Alice", text = "hello from a", ts = said.ts }, said)
      end
      send(bob, { type = "say", text = "hi from b \u{2713}" })
      for _, c in ipairs({ alice, bob, carol }) do
        local said = recv(c)
        assert.are.same({ type = "said", name = "Bob", text = "hi from b \u{2713}", ts = said.ts }, said)
      end

      -- A name in the room on one node is refused on the other.
      local dup = assert(rn.ws_connect(ws_url(m, "b")))
      send(dup, { type = "join", name = "Alice" })
      assert.are.same({ type = "error", message = "the name Alice is already taken" }, recv(dup))
      send(dup, { type = "join", name = " Carol " })
      assert.are.same({ type = "error", message = "the name Carol is already taken" }, recv(dup))
      local dup2 = assert(rn.ws_connect(ws_url(m, "a")))
      send(dup2, { type = "join", name = "Bob" })
      assert.are.same({ type = "error", message = "the name Bob is already taken" }, recv(dup2))

      -- Leaving is seen on the other node, and the name is free again there.
      assert.are.same({ 1000, "" }, { carol:close_wait() })
      assert.are.same({ type = "left", name = "Carol", count = 2 }, recv(alice))
      assert.are.same({ type = "left", name = "Carol", count = 2 }, recv(bob))
      assert.are.same({ 1000, "" }, { bob:close_wait() })
      assert.are.same({ type = "left", name = "Bob", count = 1 }, recv(alice))
      send(dup2, { type = "join", name = "Bob" })
      assert.are.same({ type = "welcome", name = "Bob", count = 2, names = { "Alice", "Bob" } }, recv(dup2))
      assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(dup2))
      assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(alice))
      for _, c in ipairs({ alice, dup, dup2 }) do c:close_wait() end
    end, { timeout = 90 })
  end)

  it("shows a node's first person joined on the other node before anything they say", function()
    MH.run(function(m)
      two_nodes(m)
      local alice = join(m, "a", "Alice")
      -- Each chat node lists chat.members from its start, so a watches b
      -- before anyone joins there (b holds a's watch registration).
      MH.wait_until(function() local st = m:status("b"); return st and (st.stats.presence_watchers or 0) >= 1 end,
        "b to hold a's presence watch", 20)
      local bob = assert(rn.ws_connect(ws_url(m, "b")))
      send(bob, { type = "join", name = "Bob" })
      send(bob, { type = "say", text = "first words" })
      assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(alice))
      local said = recv(alice)
      assert.are.same({ type = "said", name = "Bob", text = "first words", ts = said.ts }, said)
      for _, c in ipairs({ alice, bob }) do c:close_wait() end
    end, { timeout = 60 })
  end)

  it("takes a node's people out of the room when its link is lost, back when it returns, " ..
    "and keeps a name for its earlier join", function()
    MH.run(function(m)
      -- a and b reach each other only through c, a bare relay node.
      m:start("c", { script = false })
      m:start("a", { script = CHAT, peers = { "c" } })
      m:start("b", { script = CHAT, peers = { "c" } })
      m:wait_converged(20, { "a", "b", "c" })
      local alice = join(m, "a", "Alice")
      local bob = join_seeing(m, "b", "Bob", "Alice")
      assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(alice))

      m:kill("c")
      assert.are.same({ type = "left", name = "Bob", count = 1 }, recv(alice))
      assert.are.same({ type = "left", name = "Alice", count = 1 }, recv(bob))

      -- Apart, each side accepts "Zed": b first, then a in a later second.
      local zb, wzb = join(m, "b", "Zed")
      assert.are.same({ type = "welcome", name = "Zed", count = 2, names = { "Bob", "Zed" } }, wzb)
      assert.are.same({ type = "joined", name = "Zed", count = 2 }, recv(bob))
      local t0 = os.time()
      MH.wait_until(function() return os.time() > t0 end, "the next second", 3)
      local za, wza = join(m, "a", "Zed")
      assert.are.same({ type = "welcome", name = "Zed", count = 2, names = { "Alice", "Zed" } }, wza)
      assert.are.same({ type = "joined", name = "Zed", count = 2 }, recv(alice))

      -- The link returns: everyone is back in one room of four names,
      -- three people; b's Zed joined earlier and keeps the name although
      -- node a's id sorts first, and a's Zed is told to pick another.
      m:start("c", { script = false })
      assert.are.same({ type = "joined", name = "Bob", count = 3 }, recv(alice, 20))
      assert.are.same({ type = "joined", name = "Alice", count = 3 }, recv(bob, 20))
      assert.are.same({ type = "joined", name = "Alice", count = 3 }, recv(zb, 20))
      local out = recv(za, 20)
      if out.type == "joined" then -- a's Zed heard of Bob before its name was taken back
        assert.are.same({ type = "joined", name = "Bob", count = 3 }, out)
        out = recv(za)
      end
      assert.are.same({ type = "error", joined = false, message = "the name Zed was taken on node b at the " ..
        "same time; join again under another name" }, out)

      -- Nobody saw Zed leave or join again: the next thing everyone gets is
      -- what b's Zed says (za is out of the room and gets nothing).
      send(zb, { type = "say", text = "still here" })
      for _, c in ipairs({ alice, bob, zb }) do
        local said = recv(c)
        assert.are.same({ type = "said", name = "Zed", text = "still here", ts = said.ts }, said)
      end
      send(za, { type = "say", text = "me too?" })
      assert.are.same({ type = "error", message = "join before you say something" }, recv(za))
      send(za, { type = "join", name = "Zed" })
      assert.are.same({ type = "error", message = "the name Zed is already taken" }, recv(za))
      send(za, { type = "join", name = "Zoe" })
      assert.are.same({ type = "welcome", name = "Zoe", count = 4, names = { "Alice", "Bob", "Zed", "Zoe" } },
        recv(za))
      for _, c in ipairs({ za, alice, bob, zb }) do
        assert.are.same({ type = "joined", name = "Zoe", count = 4 }, recv(c))
      end
      for _, c in ipairs({ alice, bob, za, zb }) do c:close_wait() end
    end, { timeout = 120 })
  end)

  describe("in a browser", function()
    it("lets two headless Chromium pages on two nodes chat in one room (spec/e2e/chat_mesh.js)", function()
      MH.run(function(m)
        two_nodes(m)
        local cmd = "node " .. H.q(H.ROOT .. "/spec/e2e/chat_mesh.js") .. " "
          .. H.q("http://127.0.0.1:" .. m:port_of("a") .. "/") .. " "
          .. H.q("http://127.0.0.1:" .. m:port_of("b") .. "/")
        local rc, out, err = H.sh(cmd):wait(45)
        assert.are.equal(0, rc, "chat_mesh.js failed:\n" .. out .. err)
        assert.are.equal("chat_mesh: OK\n", out)
      end, { timeout = 90 })
    end)

    it("asks a page whose name lost the tie-break for another name (chat_mesh.js --lose-name)", function()
      MH.run(function(m)
        m:start("c", { script = false })
        m:start("a", { script = CHAT, peers = { "c" } })
        m:start("b", { script = CHAT, peers = { "c" } })
        m:wait_converged(20, { "a", "b", "c" })
        m:kill("c")
        local zb = join(m, "b", "Zed")
        local t0 = os.time()
        MH.wait_until(function() return os.time() > t0 end, "the next second", 3)
        -- The page joins as Zed on a and says so; then the link returns.
        local page = H.sh("node " .. H.q(H.ROOT .. "/spec/e2e/chat_mesh.js") .. " --lose-name=Zed "
          .. H.q("http://127.0.0.1:" .. m:port_of("a") .. "/"))
        local function output()
          local f = io.open(page.base .. ".out")
          local s = f and f:read("a") or ""
          if f then f:close() end
          return s
        end
        local function ended()
          local f = io.open(page.base .. ".rc")
          if f then f:close() end
          return f ~= nil
        end
        MH.wait_until(function() return output() == "joined\n" or ended() end, "the page to join", 30)
        if output() ~= "joined\n" then
          local _, out, err = page:wait(5)
          error("chat_mesh.js --lose-name ended before it joined:\n" .. out .. err)
        end
        m:start("c", { script = false })
        local rc, out, err = page:wait(45)
        assert.are.equal(0, rc, "chat_mesh.js --lose-name failed:\n" .. out .. err)
        assert.are.equal("joined\nchat_mesh: OK\n", out)
        -- b's Zed saw the page join under its new name, and nothing of the lost one.
        assert.are.same({ type = "joined", name = "Zed2", count = 2 }, recv(zb))
        zb:close_wait()
      end, { timeout = 90 })
    end)
  end)
end)
