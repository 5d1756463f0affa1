-- spec/presence_spec.lua: presence across the mesh (README "Presence").
--
-- The unit part checks the API, its errors and bounds in this process. The
-- mesh part runs real node processes (spec/support/mesh_harness.lua) with
-- spec/support/presence_node.lua, which is a member of "room.1" from its
-- start (id "s1", info {name = node id}) and exposes server "pr" to join,
-- leave, list and watch; the test process joins as node "tester".

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local json = require("relaynet.json")

local NODE = H.ROOT .. "/spec/support/presence_node.lua"

-- The mesh of the running test (MH.run sets it).
local mesh

-- pr.method(args) on `node`, through that node's own JSON-RPC endpoint (so
-- it reaches a node the tester has no route to); it must succeed.
local function call(node, method, args)
  local res, err, code = mesh:call_via(node, node, "pr", method, args or {}, 8)
  assert(err == nil, string.format("pr.%s on %s failed: %s (%s)", method, node, tostring(err), tostring(code)))
  return res
end

-- A member list as "node/id=name" strings, in the list's order.
local function names(list)
  local out = {}
  for i, m in ipairs(list) do
    local info = m.info
    out[i] = m.node .. "/" .. m.id .. "=" .. (type(info) == "table" and tostring(info.name) or tostring(info))
  end
  return table.concat(out, " ")
end

-- Events as "event node/id reason" strings.
local function evs(list)
  local out = {}
  for i, e in ipairs(list) do
    out[i] = e.event .. " " .. e.node .. "/" .. e.id .. (e.reason and (" " .. e.reason) or "")
  end
  return out
end

-- Waits until node `node`'s rn.presence("room.1") reads `want` (names()).
local function wait_list(node, want, timeout, topic)
  local last
  MH.wait_until(function()
    local l = call(node, "list", { topic or "room.1", 3 })
    if l.error then last = l.error; return false end
    last = names(l)
    return last == want
  end, string.format("%s to list %q", node, want), timeout or 15, function() return "last: " .. tostring(last) end)
end

-- Waits until node `node` has seen exactly the events `want` (any order
-- among those given as a set: the list is compared sorted).
local function wait_events(node, want, timeout, topic)
  table.sort(want)
  local last
  MH.wait_until(function()
    local got = evs(call(node, "events", { topic or "room.1" }))
    table.sort(got)
    last = table.concat(got, "; ")
    return last == table.concat(want, "; ")
  end, string.format("%s to see events %q", node, table.concat(want, "; ")), timeout or 15,
    function() return "last: " .. tostring(last) end)
end

describe("presence (unit)", function()
  it("lists local members, fires events and gives clear errors", function()
    -- outside a coroutine (and before rn.run) it answers from what it holds
    local h0 = assert(rn.subscribe("room.o", function() end, { presence = true }))
    assert.same({ { node = rn.node_id(), id = h0.presence.id, info = true } }, rn.presence("room.o"))
    assert.is_true(h0:unsubscribe())
    assert.same({}, rn.presence("room.o"))
    H.run(function()
      local me = rn.node_id()
      local got = {}
      local w = assert(rn.on_presence("room.u", function(event, m)
        got[#got + 1] = { event, m.node, m.id, m.info, m.reason }
      end))
      assert.equal("relaynet.PresenceHandler", getmetatable(w).__name)
      assert.same({}, rn.presence("room.u"))
      local a = assert(rn.subscribe("room.u", function() end, { presence = { name = "ann" } }))
      local b = assert(rn.subscribe("room.u", function() end, { presence = "bob" }))
      local plain = assert(rn.subscribe("room.u", function() end))
      local ida, idb = a.presence.id, b.presence.id
      local list = rn.presence("room.u")
      assert.same({ { node = me, id = ida, info = { name = "ann" } }, { node = me, id = idb, info = "bob" } }, list)
      assert.is_true(a:unsubscribe())
      assert.same({ { node = me, id = idb, info = "bob" } }, rn.presence("room.u"))
      assert.same({
        { "join", me, ida, { name = "ann" } },
        { "join", me, idb, "bob" },
        { "leave", me, ida, { name = "ann" }, "unsubscribed" },
      }, got)

      -- misuse raises
      local ok, err = pcall(rn.subscribe, "room.*", function() end, { presence = 1 })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("EINVAL: presence needs an exact topic", 1, true), err)
      ok, err = pcall(rn.subscribe, "room.u", function() end, "not a table")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("options must be a table", 1, true), err)
      ok, err = pcall(rn.presence, "room.*")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("EINVAL", 1, true), err)
      ok, err = pcall(rn.presence, "room.u", -1)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("timeout", 1, true), err)
      ok, err = pcall(rn.on_presence, "room.>", function() end)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("wildcard", 1, true), err)
      ok, err = pcall(rn.on_presence, "room.u", nil)
      assert.is_false(ok)
      assert.truthy(tostring(err):find("expected a function", 1, true), err)

      -- info that cannot be sent
      local cfg = rn.mesh_config
      local refused0 = rn.mesh_status().stats.presence_refused
      local r, msg, code = rn.subscribe("room.u", function() end, { presence = string.rep("x", 600) })
      assert.is_nil(r)
      assert.equal("EINVAL", code)
      assert.truthy(msg:find("max_presence_info_bytes", 1, true), msg)
      r, msg, code = rn.subscribe("room.u", function() end, { presence = { f = function() end } })
      assert.is_nil(r)
      assert.equal("EINVAL", code)
      assert.truthy(msg:find("cannot be encoded as JSON", 1, true), msg)
      r, msg, code = rn.subscribe("room.u", function() end, { presence = "\xff" })
      assert.is_nil(r)
      assert.equal("EINVAL", code)
      assert.truthy(msg:find("UTF-8", 1, true), msg)

      -- bounds: members per topic, handlers
      local old_m, old_h = cfg.max_presence_members, cfg.max_presence_handlers
      cfg.max_presence_members = 2
      local c = assert(rn.subscribe("room.u", function() end, { presence = "carl" }))
      r, msg, code = rn.subscribe("room.u", function() end, { presence = "dora" })
      assert.is_nil(r)
      assert.equal("ELIMIT", code)
      assert.truthy(msg:find("max_presence_members", 1, true), msg)
      cfg.max_presence_handlers = 1
      r, msg, code = rn.on_presence("room.v", function() end)
      assert.is_nil(r)
      assert.equal("ELIMIT", code)
      assert.truthy(msg:find("max_presence_handlers", 1, true), msg)
      cfg.max_presence_members, cfg.max_presence_handlers = old_m, old_h
      local st = rn.mesh_status().stats
      assert.equal(refused0 + 5, st.presence_refused)
      assert.equal(2, st.presence_members)
      assert.equal(1, st.presence_handlers)

      assert.is_true(w:unsubscribe())
      assert.is_false(w:unsubscribe())
      local n = #got
      assert.is_true(b:unsubscribe())
      assert.is_true(c:unsubscribe())
      assert.is_true(plain:unsubscribe())
      assert.equal(n, #got)
      assert.same({}, rn.presence("room.u"))
      assert.equal(0, rn.mesh_status().stats.presence_members)
    end, { timeout = 10 })
  end)
end)

describe("presence versions and routes (unit, fake links)", function()
  local mesh_m = require("relaynet.mesh")
  local routes = require("relaynet.mesh.routes")
  local L = require("relaynet.mesh.link")
  local PR = require("relaynet.mesh.presence")
  local cfg = mesh_m.config
  local saved, saved_id
  local handles = {} -- handlers and subscriptions a test made, ended after it
  local function keep(h) handles[#handles + 1] = h; return h end

  local function fake_link(peer)
    local link = L.new("in", nil, nil, nil)
    link.peer, link.state, link.delta, link.sent = peer, "up", true, {}
    link.transport = {
      id = "fake-" .. peer,
      send = function(text) link.sent[#link.sent + 1] = json.decode(text); return true end,
      close = function() end,
    }
    require("relaynet.mesh.state").links[peer] = link
    return link
  end

  local function advert(link, list, opts)
    opts = opts or {}
    local rs = {}
    for i, r in ipairs(list) do rs[i] = { path = r[1], seq = r[3] or 1, servers = {}, topics = r[2] } end
    routes.on_advert(link, { type = "registry_sync", from = link.peer,
      data = { routes = rs, full = opts.full, withdraw = opts.withdraw } })
  end

  -- The presence messages sent on `link` since the last call, as "op to topic".
  local function sent(link)
    local out = {}
    for _, m in ipairs(link.sent) do
      if m.type == "presence" then out[#out + 1] = m.data.op .. " " .. m.to .. " " .. m.data.topic end
    end
    link.sent = {}
    table.sort(out)
    return out
  end

  -- A presence message from `from` (over `route`, default {from}) arriving on `link`.
  local function msg(link, from, data, route)
    PR.on_message(link, { type = "presence", id = from .. "-" .. math.random(1e9), from = from, to = "me",
      ttl = 16, route = route or { from }, data = data })
  end

  local function stat(name) return mesh_m.status().stats[name] end

  before_each(function()
    mesh_m.reset()
    saved_id = mesh_m.node_id()
    mesh_m.set_node_id("me")
    saved = {}
    for k, v in pairs(cfg) do saved[k] = v end
  end)
  after_each(function()
    for _, h in ipairs(handles) do h:unsubscribe() end
    handles = {}
    for k, v in pairs(saved) do cfg[k] = v end
    mesh_m.reset()
    mesh_m.set_node_id(saved_id)
  end)

  it("applies what follows on, drops what is older, asks again after a gap", function()
    local a = fake_link("a")
    advert(a, { { { "a" }, { "room.1" } }, { { "a", "x" }, { "chat.*", "room.1" } }, { { "a", "y" }, { "room.2" } } })
    local ev = {}
    local w = keep(assert(rn.on_presence("room.1", function(event, m)
      ev[#ev + 1] = event .. " " .. m.node .. "/" .. m.id .. (m.reason and (" " .. m.reason) or "")
    end)))
    -- the nodes listing room.1 exactly are watched; y (room.2) is not
    assert.same({ "watch a room.1", "watch x room.1" }, sent(a))
    local relayed0 = stat("presence_received")
    msg(a, "x", { op = "state", topic = "room.1", run = "r1", ver = 5, members = { { id = "m1", info = 1 } } },
      { "x", "a" })
    assert.same({ "join x/m1" }, ev)
    -- a change that follows on
    msg(a, "x", { op = "join", topic = "room.1", run = "r1", prev = 3, ver = 7, id = "m2", info = "two" },
      { "x", "a" })
    assert.same({ "join x/m1", "join x/m2" }, ev)
    -- older than held: dropped (a change and a snapshot)
    msg(a, "x", { op = "leave", topic = "room.1", run = "r1", prev = 2, ver = 4, id = "m1", reason = "closed" },
      { "x", "a" })
    msg(a, "x", { op = "state", topic = "room.1", run = "r1", ver = 6, members = {} }, { "x", "a" })
    assert.equal(2, stat("presence_stale"))
    assert.equal(2, #ev)
    -- a gap: asked again, and the snapshot then settles it
    msg(a, "x", { op = "leave", topic = "room.1", run = "r1", prev = 9, ver = 10, id = "m1", reason = "closed" },
      { "x", "a" })
    assert.equal(2, #ev)
    assert.equal(1, stat("presence_resyncs"))
    assert.same({ "watch x room.1" }, sent(a))
    msg(a, "x", { op = "state", topic = "room.1", run = "r1", ver = 10,
      members = { { id = "m2", info = "two" }, { id = "m3" } } }, { "x", "a" })
    assert.same({ "join x/m1", "join x/m2", "leave x/m1 unsubscribed", "join x/m3" }, ev)
    -- a still owes its snapshot: outside a coroutine that is EAGAIN
    local r, err, code = rn.presence("room.1")
    assert.is_nil(r)
    assert.equal("EAGAIN", code)
    assert.truthy(err:find("node(s) a", 1, true), err)
    msg(a, "a", { op = "state", topic = "room.1", run = "ra", ver = 1, members = {} })
    local list = rn.presence("room.1")
    assert.same({ { node = "x", id = "m2", info = "two" }, { node = "x", id = "m3" } }, list)
    -- a leave "closed"
    msg(a, "x", { op = "leave", topic = "room.1", run = "r1", prev = 10, ver = 11, id = "m3", reason = "closed" },
      { "x", "a" })
    assert.equal("leave x/m3 closed", ev[#ev])
    -- a node speaks only for itself: a route that does not start at from
    -- or end at the link's peer is dropped
    local spoofed0 = stat("spoofed_messages")
    msg(a, "x", { op = "join", topic = "room.1", run = "r1", prev = 11, ver = 12, id = "evil" }, { "a" })
    msg(a, "x", { op = "join", topic = "room.1", run = "r1", prev = 11, ver = 12, id = "evil" }, { "x", "q" })
    assert.equal(spoofed0 + 2, stat("spoofed_messages"))
    -- malformed: no version, unknown op
    local bad0 = stat("bad_messages")
    msg(a, "x", { op = "join", topic = "room.1", run = "r1", id = "m9" }, { "x", "a" })
    msg(a, "x", { op = "shout", topic = "room.1" }, { "x", "a" })
    assert.equal(bad0 + 2, stat("bad_messages"))
    -- a new run of x starting from nothing replaces the old one
    msg(a, "x", { op = "join", topic = "room.1", run = "r2", prev = 0, ver = 1, id = "n1" }, { "x", "a" })
    assert.same({ "leave x/m2 node lost", "join x/n1" }, { ev[#ev - 1], ev[#ev] })
    assert.truthy(stat("presence_received") > relayed0)
    -- the route to x goes: its members leave "node lost"; back: watched again
    advert(a, { { { "a" }, { "room.1" } } }, { full = true })
    assert.equal("leave x/n1 node lost", ev[#ev])
    assert.same({}, rn.presence("room.1"))
    assert.equal(1, stat("presence_nodes_lost"))
    sent(a)
    advert(a, { { { "a", "x" }, { "room.1" }, 2 } }, { full = false })
    assert.same({ "watch x room.1" }, sent(a))
    -- the last handler ends the watch: the nodes are told
    assert.is_true(w:unsubscribe())
    assert.same({ "unwatch a room.1", "unwatch x room.1" }, sent(a))
    -- a change for a topic no longer watched is answered with unwatch
    msg(a, "x", { op = "join", topic = "room.1", run = "r2", prev = 1, ver = 2, id = "n2" }, { "x", "a" })
    assert.same({ "unwatch x room.1" }, sent(a))
  end)

  it("answers watches and queries, sends changes to watchers, bounds them", function()
    local a = fake_link("a")
    advert(a, { { { "a" } }, { { "a", "x" } }, { { "a", "y" } } })
    local h = keep(assert(rn.subscribe("room.9", function() end, { presence = { name = "me" } })))
    local id = h.presence.id
    msg(a, "x", { op = "watch", topic = "room.9" }, { "x", "a" })
    local out = a.sent
    a.sent = {}
    assert.equal(1, #out)
    local st = out[1]
    assert.equal("x", st.to)
    assert.equal("state", st.data.op)
    assert.same({ { id = id, info = { name = "me" } } }, st.data.members)
    -- a query is answered with its id and registers nothing
    msg(a, "y", { op = "query", topic = "room.9", q = "q1" }, { "y", "a" })
    out = a.sent
    a.sent = {}
    assert.equal("q1", out[1].data.q)
    assert.equal(1, stat("presence_watchers"))
    -- a leave goes to the watcher x only, with the versions that chain on
    assert.is_true(h:unsubscribe())
    out = a.sent
    a.sent = {}
    assert.equal(1, #out)
    assert.equal("x", out[1].to)
    assert.equal("leave", out[1].data.op)
    assert.equal("unsubscribed", out[1].data.reason)
    assert.equal(st.data.ver, out[1].data.prev)
    assert.equal(st.data.ver + 1, out[1].data.ver)
    -- the bound on watch registrations
    cfg.max_presence_watchers = 1
    msg(a, "y", { op = "watch", topic = "room.9" }, { "y", "a" })
    assert.equal(1, stat("presence_watchers_refused"))
    assert.equal(1, stat("presence_watchers"))
    -- unwatch
    msg(a, "x", { op = "unwatch", topic = "room.9" }, { "x", "a" })
    assert.equal(0, stat("presence_watchers"))
    msg(a, "y", { op = "watch", topic = "room.9" }, { "y", "a" })
    assert.equal(1, stat("presence_watchers"))
    a.sent = {}
    -- a watcher whose route goes keeps its registration for a while and is
    -- owed a snapshot: a change meanwhile finds no route, and the snapshot
    -- goes out when the route is back
    advert(a, { { { "a" } } }, { full = true })
    assert.equal(1, stat("presence_watchers"))
    local h2 = keep(assert(rn.subscribe("room.9", function() end, { presence = "again" })))
    assert.same({}, a.sent)
    advert(a, { { { "a", "y" }, nil, 2 } }, { full = false })
    out = a.sent
    a.sent = {}
    assert.equal(1, #out)
    assert.equal("y", out[1].to)
    assert.equal("state", out[1].data.op)
    assert.same({ { id = h2.presence.id, info = "again" } }, out[1].data.members)
    -- unreachable for longer than PR.GONE: forgotten
    advert(a, { { { "a" } } }, { full = true })
    local gone = PR.GONE
    PR.GONE = 0
    PR._sweep()
    PR.GONE = gone
    assert.equal(0, stat("presence_watchers"))
  end)

  it("fetches a topic it does not watch: answers, partial answers, timeouts", function()
    H.run(function()
      local a = fake_link("a")
      advert(a, { { { "a" } }, { { "a", "x" }, { "room.5" } }, { { "a", "y" }, { "room.5" } } })
      -- x and y answer: the lists are merged, this node's own member too
      local mine = keep(assert(rn.subscribe("room.5", function() end, { presence = "local" })))
      rn.after(0.05, function()
        local qs = {}
        for _, m in ipairs(a.sent) do
          if m.type == "presence" and m.data.op == "query" then qs[m.to] = m.data.q end
        end
        a.sent = {}
        msg(a, "x", { op = "state", topic = "room.5", run = "rx", ver = 2, q = qs.x,
          members = { { id = "m1", info = "x1" } } }, { "x", "a" })
        -- an answer to another query id, or from a node not asked, is dropped
        msg(a, "y", { op = "state", topic = "room.5", run = "ry", ver = 1, q = "other",
          members = { { id = "bad" } } }, { "y", "a" })
        msg(a, "y", { op = "state", topic = "room.5", run = "ry", ver = 1, q = qs.y,
          members = { { id = "m2", info = "y1" } } }, { "y", "a" })
      end)
      local list, err = rn.presence("room.5", 3)
      assert(list, err)
      assert.same({
        { node = "me", id = mine.presence.id, info = "local" },
        { node = "x", id = "m1", info = "x1" },
        { node = "y", id = "m2", info = "y1" },
      }, list)
      -- no answer from y: ETIMEDOUT names it
      rn.after(0.05, function()
        for _, m in ipairs(a.sent) do
          if m.type == "presence" and m.to == "x" then
            msg(a, "x", { op = "state", topic = "room.5", run = "rx", ver = 2, q = m.data.q, members = {} },
              { "x", "a" })
          end
        end
        a.sent = {}
      end)
      local t0 = rn.now()
      local r, e2, code = rn.presence("room.5", 0.3)
      assert.is_nil(r)
      assert.equal("ETIMEDOUT", code)
      assert.truthy(e2:find("from node(s) y within 0.3 s", 1, true), e2)
      assert.truthy(rn.now() - t0 >= 0.29)
      -- a node whose route goes while it is asked is no longer waited for
      rn.after(0.05, function()
        advert(a, { { { "a" } }, { { "a", "x" }, { "room.5" } } }, { full = true })
      end)
      rn.after(0.1, function()
        for _, m in ipairs(a.sent) do
          if m.type == "presence" and m.to == "x" then
            msg(a, "x", { op = "state", topic = "room.5", run = "rx", ver = 2, q = m.data.q, members = {} },
              { "x", "a" })
          end
        end
      end)
      a.sent = {}
      list = assert(rn.presence("room.5", 3))
      assert.same({ { node = "me", id = mine.presence.id, info = "local" } }, list)
      -- the bound on fetches in flight
      cfg.max_presence_queries = 0
      r, e2, code = rn.presence("room.5", 1)
      assert.is_nil(r)
      assert.equal("ELIMIT", code)
      assert.truthy(e2:find("max_presence_queries", 1, true), e2)
      cfg.max_presence_queries = 256
    end, { timeout = 10 })
  end)

  it("bounds the members held from other nodes", function()
    local a = fake_link("a")
    advert(a, { { { "a" }, { "room.1" } } })
    -- outside a coroutine, a topic that has to be fetched is EAGAIN
    local r, err, code = rn.presence("room.1")
    assert.is_nil(r)
    assert.equal("EAGAIN", code)
    assert.truthy(err:find("call rn.presence in a coroutine", 1, true), err)
    cfg.max_presence_entries = 2
    local w = keep(assert(rn.on_presence("room.1", function() end)))
    msg(a, "a", { op = "state", topic = "room.1", run = "r1", ver = 3,
      members = { { id = "m1" }, { id = "m2" }, { id = "m3" } } })
    assert.equal(1, stat("presence_dropped"))
    assert.equal(2, stat("presence_cached"))
    assert.equal(2, #rn.presence("room.1"))
    w:unsubscribe()
    assert.equal(0, stat("presence_cached"))
  end)
end)

describe("presence across the mesh", function()
  it("lists members of three nodes, with joins and leaves, closes and lost nodes", function()
    MH.run(function(m)
      mesh = m
      -- a line: p1 - p2 - p3; the tester dials p1
      m:start_topology("line", { "p1", "p2", "p3" }, { script = NODE })
      m:join({ "p1" })
      m:wait_converged(20)
      local all = "p1/s1=p1 p2/s1=p2 p3/s1=p3"
      for _, id in ipairs({ "p1", "p2", "p3" }) do wait_list(id, all) end
      -- the tester has no member: it fetches (a query) and lists all three
      MH.wait_until(function()
        local l = rn.presence("room.1", 3)
        return l and names(l) == all
      end, "the tester to list " .. all)

      -- p3 and the tester watch; the tester's view fills from snapshots
      assert.is_true(call("p3", "watch", { "room.1" }))
      local seen = {}
      local w = assert(rn.on_presence("room.1", function(event, mb)
        seen[#seen + 1] = event .. " " .. mb.node .. "/" .. mb.id .. (mb.reason and (" " .. mb.reason) or "")
      end))
      MH.wait_until(function() return #seen == 3 end, "the tester's first three joins")
      table.sort(seen)
      assert.same({ "join p1/s1", "join p2/s1", "join p3/s1" }, seen)
      assert.equal(all, names(assert(rn.presence("room.1"))))
      wait_list("p3", all)
      wait_events("p3", { "join p1/s1", "join p2/s1" })
      call("p3", "clear")
      seen = {}

      -- a join and a leave on p1 are seen two hops away, in order
      local id = call("p1", "join", { "room.1", { name = "extra" } })
      assert.equal("s2", id)
      wait_events("p3", { "join p1/s2" })
      assert.is_true(call("p1", "leave", { id }))
      MH.wait_until(function() return #evs(call("p3", "events", { "room.1" })) == 2 end, "p3's 2 events")
      assert.same({ "join p1/s2", "leave p1/s2 unsubscribed" }, evs(call("p3", "events", { "room.1" })))
      MH.wait_until(function() return #seen == 2 end, "the tester's 2 events")
      assert.same({ "join p1/s2", "leave p1/s2 unsubscribed" }, seen)
      call("p3", "clear")
      seen = {}

      -- a WebSocket client on p2 with presence leaves "closed" when it closes
      local c = assert(rn.ws_connect("ws://127.0.0.1:" .. m:port_of("p2") .. "/", { timeout = 5 }))
      assert(c:send('sub room.1 {"name":"web"}'))
      local ack = json.decode(assert(c:receive(5)))
      assert.is_true(ack.ok)
      local cid = ack.id
      wait_events("p3", { "join p2/" .. cid })
      wait_list("p1", "p1/s1=p1 p2/" .. cid .. "=web p2/s1=p2 p3/s1=p3")
      assert(c:send("sub room.* 1"))
      ack = json.decode(assert(c:receive(5)))
      assert.is_false(ack.ok)
      assert.truthy(ack.error:find("EINVAL: presence needs an exact topic", 1, true), ack.error)
      c:close()
      wait_events("p3", { "join p2/" .. cid, "leave p2/" .. cid .. " closed" })
      MH.wait_until(function() return #seen == 2 end, "the tester's 2 events")
      assert.same({ "join p2/" .. cid, "leave p2/" .. cid .. " closed" }, seen)
      wait_list("p1", all)
      call("p3", "clear")
      seen = {}

      -- p2 stops: p3 loses p1 and p2 ("node lost"); the tester loses p2 and p3
      local lost0 = rn.mesh_status().stats.presence_nodes_lost
      m:stop("p2")
      wait_events("p3", { "leave p1/s1 node lost", "leave p2/s1 node lost" }, 20)
      wait_list("p3", "p3/s1=p3")
      MH.wait_until(function() return #seen == 2 end, "the tester's 2 leaves")
      table.sort(seen)
      assert.same({ "leave p2/s1 node lost", "leave p3/s1 node lost" }, seen)
      assert.equal("p1/s1=p1", names(assert(rn.presence("room.1"))))
      call("p3", "clear")
      seen = {}

      -- p2 comes back (a new run, its member s1 again): every member rejoins
      m:restart("p2")
      m:wait_converged(20)
      wait_events("p3", { "join p1/s1", "join p2/s1" }, 20)
      MH.wait_until(function() return #seen == 2 end, "the tester's 2 joins", 20)
      table.sort(seen)
      assert.same({ "join p2/s1", "join p3/s1" }, seen)
      for _, n in ipairs({ "p1", "p2", "p3" }) do wait_list(n, all) end
      assert.equal(all, names(assert(rn.presence("room.1"))))
      local st = rn.mesh_status().stats
      assert.equal(lost0 + 2, st.presence_nodes_lost)
      w:unsubscribe()
    end, { timeout = 150 })
  end)

  it("drops a killed node's members on the others and takes them back (triangle)", function()
    MH.run(function(m)
      mesh = m
      m:start_topology("full", { "p1", "p2", "p3" }, { script = NODE })
      m:wait_converged(20)
      local all = "p1/s1=p1 p2/s1=p2 p3/s1=p3"
      for _, id in ipairs({ "p1", "p2" }) do
        assert.is_true(call(id, "watch", { "room.1" }))
        wait_list(id, all)
      end
      wait_events("p1", { "join p2/s1", "join p3/s1" })
      wait_events("p2", { "join p1/s1", "join p3/s1" })
      assert.equal("s2", call("p3", "join", { "room.1", { name = "second" } }))
      wait_list("p1", all .. " p3/s2=second")
      call("p1", "clear")
      call("p2", "clear")

      -- SIGKILL: no goodbye; the links drop and so do p3's members
      m:kill("p3")
      wait_events("p1", { "leave p3/s1 node lost", "leave p3/s2 node lost" }, 30)
      wait_events("p2", { "leave p3/s1 node lost", "leave p3/s2 node lost" }, 30)
      wait_list("p1", "p1/s1=p1 p2/s1=p2")
      call("p1", "clear")
      call("p2", "clear")

      -- back as a new process: its start-up member joins everywhere
      m:restart("p3")
      wait_events("p1", { "join p3/s1" }, 30)
      wait_events("p2", { "join p3/s1" }, 30)
      for _, id in ipairs({ "p1", "p2", "p3" }) do wait_list(id, all) end
      local st = assert(m:status("p1")).stats
      assert.equal(1, st.presence_nodes_lost)
      assert.equal(0, st.presence_dropped)
    end, { timeout = 120 })
  end)
end)
