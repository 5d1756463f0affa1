-- Route selection of relaynet.mesh.routes, driven in-process: adverts from
-- links over fake transports (tables with send and close), no sockets and no
-- event loop.
-- relaynet is not running here, so no advert is scheduled; what the tables
-- hold is read through the mesh's views and status.

local mesh = require("relaynet.mesh")
local routes = require("relaynet.mesh.routes")
local L = require("relaynet.mesh.link")
local json = require("relaynet.json")

local cfg = mesh.config

-- A link that is up to neighbour `peer`, recording what is sent on it.
local function fake_link(peer, delta)
  local link = L.new("in", nil, nil, nil)
  link.peer, link.state, link.delta, link.sent = peer, "up", delta ~= false, {}
  link.transport = {
    id = "fake-" .. peer,
    send = function(text) link.sent[#link.sent + 1] = json.decode(text); return true end,
    close = function(code, reason) link.closed = { code, reason } end,
  }
  return link
end

-- An advert from link.peer: routes given as { path, seq, servers } lists.
local function advert(link, list, opts)
  opts = opts or {}
  local rs = {}
  for i, r in ipairs(list) do
    rs[i] = { path = r[1], seq = r[2] or 1, servers = r[3] or {} }
  end
  local data = { routes = rs, full = opts.full, withdraw = opts.withdraw }
  routes.on_advert(link, { type = "registry_sync", from = link.peer, data = data }, opts.text)
end

-- dest -> "next_hop:hops" for every selected route.
local function table_of()
  local t = {}
  for _, r in ipairs(mesh.routes()) do t[r.node] = r.next_hop .. ":" .. r.hops end
  return t
end

local function stat(name) return mesh.status().stats[name] end

describe("relaynet.mesh.routes (unit)", function()
  local saved, saved_id
  before_each(function()
    mesh.reset()
    saved_id = mesh.node_id()
    mesh.set_node_id("me")
    saved = {}
    for k, v in pairs(cfg) do saved[k] = v end
  end)
  after_each(function()
    for k, v in pairs(saved) do cfg[k] = v end
    mesh.reset()
    mesh.set_node_id(saved_id)
  end)

  it("selects the fewest hops, then the lowest next-hop id", function()
    local a, b = fake_link("a"), fake_link("b")
    advert(b, { { { "b" } }, { { "b", "y" } }, { { "b", "x", "z" } } })
    advert(a, { { { "a" } }, { { "a", "c", "y" } }, { { "a", "w", "z" } } })
    assert.same({ a = "a:1", b = "b:1", y = "b:2", z = "a:3" }, table_of())
    -- a change advert withdrawing z from a: b's route is the only one left
    advert(a, {}, { full = false, withdraw = { "z" } })
    assert.equal("b:3", table_of().z)
  end)

  it("takes the server list from the freshest candidate", function()
    local a, b = fake_link("a"), fake_link("b")
    advert(a, { { { "a" } }, { { "a", "x" }, 1, { "old" } } })
    advert(b, { { { "b" } }, { { "b", "c", "x" }, 2, { "new" } } })
    assert.equal("a:2", table_of().x) -- the shortest route is still used
    local names = {}
    for _, e in ipairs(mesh.registry()) do
      if e.node == "x" then names[#names + 1] = e.server end
    end
    assert.same({ "new" }, names)
  end)

  it("treats a route through this node as a withdrawal and drops bad paths", function()
    local a = fake_link("a")
    advert(a, { { { "a" } }, { { "a", "x" } } })
    assert.equal("a:2", table_of().x)
    advert(a, { { { "a", "me", "x" } }, { { "q", "x" } } }, { full = false })
    assert.is_nil(table_of().x)
    assert.equal(1, stat("dropped_loops"))
    assert.equal(1, stat("bad_messages"))
  end)

  it("replaces a neighbour's routes with a full advert and forgets them when it goes", function()
    local a, b = fake_link("a"), fake_link("b")
    advert(a, { { { "a" } }, { { "a", "x" } }, { { "a", "y" } } })
    advert(b, { { { "b" } }, { { "b", "c", "x" } } })
    advert(a, { { { "a" } }, { { "a", "y" } } }) -- full: x is gone from a
    assert.equal("b:3", table_of().x)
    routes.drop_neighbour("b")
    assert.same({ a = "a:1", y = "a:2" }, table_of())
    assert.equal(2, mesh.status().stats.route_entries)
  end)

  it("drops routes past max_routes_per_link and refuses an advert past max_routes", function()
    cfg.max_routes_per_link = 2
    local a = fake_link("a")
    advert(a, { { { "a" } }, { { "a", "x" } }, { { "a", "y" } } })
    assert.equal(1, stat("routes_dropped"))
    assert.equal(2, stat("route_entries"))
    cfg.max_routes = 2
    advert(a, { { { "a" } }, { { "a", "x" } }, { { "a", "y" } } })
    assert.same(4413, a.closed[1])
    assert.equal(1, stat("adverts_refused"))
  end)

  it("sends a full table in parts, never back through the neighbour", function()
    local a, b = fake_link("a"), fake_link("b")
    advert(a, { { { "a" } }, { { "a", "x" } }, { { "a", "y" } } })
    cfg.max_routes = 4 -- at most 2 routes per message
    routes.send_table(b, nil)
    local got, fulls = {}, {}
    for _, m in ipairs(b.sent) do
      assert.equal("registry_sync", m.type)
      fulls[#fulls + 1] = m.data.full
      for _, r in ipairs(m.data.routes) do got[r.path[#r.path]] = #r.path end
    end
    assert.same({ me = 1, a = 2, x = 3, y = 3 }, got)
    assert.same({ true, false }, fulls)
    routes.send_table(a, nil)
    assert.equal(1, #a.sent)
    assert.same({ { "me" } }, { a.sent[1].data.routes[1].path })
    assert.equal(1, #a.sent[1].data.routes)
  end)
end)
