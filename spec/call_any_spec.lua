-- spec/call_any_spec.lua: load-balanced calls (README "Load-balanced
-- calls"; lua/relaynet/mesh/balance.lua).
--
-- The unit part checks the pick in this process. The mesh part runs three
-- node processes n1, n2, n3 (linked to each other) that all expose server
-- "work" (spec/support/balance_node.lua, which counts what ran on its node);
-- the test process joins all three as node "tester" and calls with
-- rn.call_any. No assertion depends on wall-clock time: every wait has a
-- deadline and polls for a state.

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local B = require("relaynet.mesh.balance")

local NODE = H.ROOT .. "/spec/support/balance_node.lua"
local IDS = { "n1", "n2", "n3" }

-- remote_call to one node that must succeed.
local function call(node, method, args)
  local res, err, code = rn.remote_call(node, "work", method, args or {}, 5)
  assert(err == nil, string.format("work.%s on %s failed: %s (%s)", method, node, tostring(err), tostring(code)))
  return res
end

-- How many times `tag` ran on each of `ids`: { id = n }, and the sum.
local function ran(ids, tag)
  local per, sum = {}, 0
  for _, id in ipairs(ids) do
    per[id] = call(id, "ran", { tag })
    sum = sum + per[id]
  end
  return per, sum
end

-- The node of `ids` where `tag` ran (waits for exactly one).
local function wait_ran(ids, tag)
  local where
  MH.wait_until(function()
    local per, sum = ran(ids, tag)
    if sum ~= 1 then return false end
    for id, n in pairs(per) do
      if n == 1 then where = id end
    end
    return true
  end, tag .. " to run on one node", 10)
  return where
end

local function stat(key) return rn.mesh_status().stats[key] end

-- Starts the three nodes, joins them and waits until the tester has a route
-- to every one of them carrying server "work".
local function start(m)
  m:start_topology("full", IDS, { script = NODE })
  m:join(IDS)
  m:wait_converged()
  MH.wait_until(function() return #B.candidates("work", {}) == 3 end, "three nodes exposing work", 10)
end

describe("call_any: the pick", function()
  it("prefers fewest in flight, then the lowest RTT within the slack, rotating among equals", function()
    local slack = rn.mesh_config.balance_rtt_slack
    local function picks(list, n)
      local got = {}
      for _ = 1, n do
        local copy = {}
        for i, c in ipairs(list) do copy[i] = { node = c.node, rtt = c.rtt } end
        local node = B.pick("unit", copy)
        got[node] = (got[node] or 0) + 1
      end
      return got
    end
    -- a is slower than b by more than the slack; c has no RTT yet
    local got = picks({ { node = "a", rtt = 0.001 + slack * 2 }, { node = "b", rtt = 0.001 }, { node = "c" } }, 10)
    assert.is_nil(got.a)
    assert.equal(5, got.b)
    assert.equal(5, got.c)
    -- within the slack every node takes its turn
    got = picks({ { node = "a", rtt = 0.001 + slack / 2 }, { node = "b", rtt = 0.001 }, { node = "c", rtt = 0 } }, 9)
    assert.same({ a = 3, b = 3, c = 3 }, got)
  end)

  it("raises on misuse", function()
    H.run(function()
      local function raises(fn, want)
        local ok, err = pcall(fn)
        assert.is_false(ok)
        assert.truthy(tostring(err):find(want, 1, true), tostring(err))
      end
      raises(function() rn.call_any(nil, "hit") end, "relaynet.call_any: server_name must be a string")
      raises(function() rn.call_any("work", 5) end, "relaynet.call_any: method must be a string")
      raises(function() rn.call_any("work", "hit", "x") end, "relaynet.call_any: args must be a table (a list)")
      raises(function() rn.call_any("work", "hit", {}, 0) end,
        "relaynet.call_any: timeout must be a positive number of seconds")
      raises(function() rn.remote_call("*", "work", "hit", {}, -1) end,
        "relaynet.remote_call: timeout must be a positive number of seconds")
      -- outside a coroutine of the runtime it cannot wait
      local ok, err = pcall(coroutine.wrap(function() return rn.call_any("work", "hit") end))
      assert.is_false(ok)
      assert.truthy(tostring(err):find("rn.call_any", 1, true), err)
    end)
  end)
end)

describe("call_any across three nodes", function()
  it("spreads calls, prefers the node with fewest in flight, fails over only on refusals", function()
    MH.run(function(m)
      start(m)
      -- The counters count since the process started: compare differences.
      local p0, f0, n0 = stat("call_any_picks"), stat("call_any_failovers"), stat("call_any_no_server")
      -- With every node idle, calls take turns: 30 calls, 10 on each.
      local got = {}
      for _ = 1, 30 do
        local node, err = rn.call_any("work", "hit", {}, 5)
        assert(node, err)
        got[node] = (got[node] or 0) + 1
      end
      for _, id in ipairs(IDS) do
        -- balanced within a reasonable bound (an RTT sample taken while the
        -- machine is busy may leave one node out for a few picks)
        assert(got[id] and got[id] >= 5, "uneven spread: " .. require("relaynet.json").encode(got))
        assert.equal(got[id], call(id, "hits"))
      end
      assert.equal(30, stat("call_any_picks") - p0)
      assert.equal(0, stat("call_any_failovers") - f0)

      -- remote_call("*", ...) is call_any: three idle calls, three nodes.
      local seen = {}
      for _ = 1, 3 do
        local node, err = rn.remote_call("*", "work", "hit", {}, 5)
        assert(node, err)
        seen[node] = true
      end
      assert.truthy(seen.n1 and seen.n2 and seen.n3)

      -- A node with a call in flight gets none of the next ones.
      local held
      rn.spawn(function() held = { rn.call_any("work", "hold", { "h1", 20 }, 20) } end)
      local busy = wait_ran(IDS, "h1")
      local before = {}
      for _, id in ipairs(IDS) do before[id] = call(id, "hits") end
      for _ = 1, 6 do assert(rn.call_any("work", "hit", {}, 5)) end
      for _, id in ipairs(IDS) do
        local n = call(id, "hits") - before[id]
        if id == busy then assert.equal(0, n) else assert.equal(3, n) end
      end
      call(busy, "release", { "h1" })
      MH.wait_until(function() return held end, "the held call to return", 10)
      assert.equal(busy, held[1])

      -- A raised error is not retried: the method ran once.
      local res, err, code = rn.call_any("work", "boom", { "b1" }, 5)
      assert.is_nil(res)
      assert.equal("EREMOTE", code)
      assert.truthy(err:find("boom on n", 1, true), err)
      local _, sum = ran(IDS, "b1")
      assert.equal(1, sum)

      -- A timeout is not retried: the method ran once.
      res, err, code = rn.call_any("work", "hold", { "t1", 10 }, 0.3)
      assert.is_nil(res)
      assert.equal("ETIMEDOUT", code, err)
      _, sum = ran(IDS, "t1")
      assert.equal(1, sum)
      for _, id in ipairs(IDS) do call(id, "release", { "t1" }) end
      assert.equal(0, stat("call_any_failovers") - f0)

      -- A node that refuses before running (EBUSY: max_served 0) is failed
      -- over: every call succeeds, none ran there. A mesh message sets the
      -- bound back (a call would be refused).
      local h1 = call("n1", "hits")
      call("n1", "set", { "max_served", 0 })
      for _ = 1, 6 do
        local node, e = rn.call_any("work", "hit", {}, 5)
        assert(node, e)
        assert.are_not.equal("n1", node)
      end
      assert(rn.send_message("n1", { key = "max_served", value = 4096 }))
      MH.wait_until(function()
        return rn.remote_call("n1", "work", "hits", {}, 5) ~= nil
      end, "n1 to serve again", 10)
      assert.equal(h1, call("n1", "hits"))
      assert.truthy(stat("call_any_failovers") - f0 >= 1)

      -- Nobody exposes it: ENOSERVER, from call_any and remote_call("*").
      res, err, code = rn.call_any("nobody", "x", {}, 1)
      assert.is_nil(res)
      assert.equal("ENOSERVER", code)
      assert.truthy(err:find("^ENOSERVER: no node exposes server 'nobody'"), err)
      res, err, code = rn.remote_call("*", "nobody", "x")
      assert.is_nil(res)
      assert.equal("ENOSERVER", code, err)
      assert.equal(2, stat("call_any_no_server") - n0)

      -- Every node refuses (ENOMETHOD): the last error, with the count.
      res, err, code = rn.call_any("work", "nosuch", {}, 5)
      assert.is_nil(res)
      assert.equal("ENOMETHOD", code)
      assert.truthy(err:find("(call_any tried 3 nodes exposing 'work')", 1, true), err)
      -- max_failovers bounds the nodes tried.
      rn.mesh_config.max_failovers = 1
      res, err, code = rn.call_any("work", "nosuch", {}, 5)
      rn.mesh_config.max_failovers = 2
      assert.is_nil(res)
      assert.equal("ENOMETHOD", code)
      assert.truthy(err:find("(call_any tried 2 nodes exposing 'work')", 1, true), err)

      -- JSON-RPC remote_call with node_id "*" on n1: n1 and the others.
      seen = {}
      for _ = 1, 3 do
        local node, e = m:call_via("n1", "*", "work", "hit", {}, 5)
        assert(node, e)
        seen[node] = true
      end
      assert.truthy(seen.n1 and seen.n2 and seen.n3)
    end, { timeout = 120 })
  end)

  it("fails over when the node running the call is killed, and it runs once on a live node", function()
    MH.run(function(m)
      start(m)
      local p0, f0 = stat("call_any_picks"), stat("call_any_failovers")
      local out
      rn.spawn(function() out = { rn.call_any("work", "hold", { "k1", 20 }, 20) } end)
      local first = wait_ran(IDS, "k1")
      m:kill(first)
      local live = {}
      for _, id in ipairs(IDS) do
        if id ~= first then live[#live + 1] = id end
      end
      -- The call moves to one live node (after the route to the dead one
      -- is gone) and waits there.
      local second = wait_ran(live, "k1")
      assert.is_nil(out)
      for _, id in ipairs(live) do call(id, "release", { "k1" }) end
      MH.wait_until(function() return out end, "the failed-over call to return", 10)
      assert.equal(second, out[1], tostring(out[2]))
      local _, sum = ran(live, "k1")
      assert.equal(1, sum)
      assert.equal(1, stat("call_any_failovers") - f0)
      assert.equal(2, stat("call_any_picks") - p0)
    end, { timeout = 90 })
  end)
  it("fails over when a relay reports the lost target (ELINKLOST), once the route is gone", function()
    MH.run(function(m)
      -- r is a bare relay; n1..n3 each link to r only, and so does the tester.
      m:start_topology("star", { "r", "n1", "n2", "n3" }, { scripts = { r = false }, script = NODE })
      m:join({ "r" })
      m:wait_converged()
      MH.wait_until(function() return #B.candidates("work", {}) == 3 end, "three nodes exposing work", 10)
      local f0, k0 = stat("call_any_failovers"), stat("call_any_kept_linklost")
      local out
      rn.spawn(function() out = { rn.call_any("work", "hold", { "r1", 20 }, 20) } end)
      local first = wait_ran(IDS, "r1")
      m:kill(first)
      local live = {}
      for _, id in ipairs(IDS) do
        if id ~= first then live[#live + 1] = id end
      end
      local second = wait_ran(live, "r1")
      for _, id in ipairs(live) do call(id, "release", { "r1" }) end
      MH.wait_until(function() return out end, "the failed-over call to return", 10)
      assert.equal(second, out[1], tostring(out[2]))
      assert.equal(1, stat("call_any_failovers") - f0)
      assert.equal(0, stat("call_any_kept_linklost") - k0)
    end, { timeout = 90 })
  end)

  it("does not fail over when the lost link's node is still reachable (it may be running the call)", function()
    MH.run(function(m)
      start(m)
      local f0, k0 = stat("call_any_failovers"), stat("call_any_kept_linklost")
      local out
      rn.spawn(function() out = { rn.call_any("work", "hold", { "c1", 20 }, 20) } end)
      local first = wait_ran(IDS, "c1")
      -- The tester drops its own link to that node; the node lives on and
      -- stays reachable through the other two.
      rn.remove_peer(m:url(first))
      MH.wait_until(function() return out end, "the call to fail", 10)
      assert.is_nil(out[1])
      assert.equal("ELINKLOST", out[3], tostring(out[2]))
      assert.equal(0, stat("call_any_failovers") - f0)
      assert.equal(1, stat("call_any_kept_linklost") - k0)
      local _, sum = ran(IDS, "c1")
      assert.equal(1, sum)
      call(first, "release", { "c1" })
    end, { timeout = 90 })
  end)
  it("does not fail over with max_failovers = 0", function()
    MH.run(function(m)
      start(m)
      local f0 = stat("call_any_failovers")
      rn.mesh_config.max_failovers = 0
      local out
      rn.spawn(function() out = { rn.call_any("work", "hold", { "z1", 20 }, 20) } end)
      local first = wait_ran(IDS, "z1")
      m:kill(first)
      MH.wait_until(function() return out end, "the call to fail", 10)
      rn.mesh_config.max_failovers = 2
      assert.is_nil(out[1])
      assert.equal("ELINKLOST", out[3], tostring(out[2]))
      assert.equal(0, stat("call_any_failovers") - f0)
    end, { timeout = 90 })
  end)
end)
