-- spec/mesh_spec.lua: the peer mesh with real node processes.
--
-- Every node is a `bin/relaynet` process on a free loopback port, most of
-- them running examples/p2p/counter_server.lua (spec/support/mesh_harness.lua). The
-- test process joins the mesh as node "tester" and calls rn.remote_call
-- itself; JSON-RPC goes through curl. The only time measurements tell a
-- prompt failure from one at the timeout ("well before the timeout").

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local json = require("relaynet.json")

local function ids(prefix, n)
  local t = {}
  for i = 1, n do t[i] = prefix .. i end
  return t
end

-- remote_call that must succeed.
local function call(node, server, method, args, timeout)
  local res, err, code = rn.remote_call(node, server, method, args or {}, timeout or 5)
  assert(err == nil, string.format("%s.%s on %s failed: %s (%s)", server, method, node,
    tostring(err), tostring(code)))
  return res
end

-- remote_call that must fail with `want`: returns the message and the
-- seconds it took.
local function call_fails(want, node, server, method, args, timeout)
  local t0 = rn.now()
  local res, err, code = rn.remote_call(node, server, method, args or {}, timeout or 5)
  local took = rn.now() - t0
  assert(res == nil and err ~= nil, string.format("%s.%s on %s: expected %s, got result %s",
    server, method, node, want, tostring(res)))
  assert.equal(want, code, err)
  assert.equal(want, err:match("^(E%u+):"), err)
  return err, took
end

local function route_to(node)
  for _, r in ipairs(rn.routes()) do
    if r.node == node then return r end
  end
end

local function peer(list, id)
  for _, p in ipairs(list) do
    if p.id == id then return p end
  end
end

-- Every entry of `list` (registry) for server `server`: { node = entry }.
local function registry_of(list, server)
  local t, n = {}, 0
  for _, e in ipairs(list) do
    if e.server == server then
      assert(t[e.node] == nil, "registry lists " .. server .. " on " .. e.node .. " twice")
      t[e.node] = e
      n = n + 1
    end
  end
  return t, n
end

local function stats_of(m, id)
  local st = assert(m:status(id), "no /status from " .. id)
  return st.stats
end

-- Stops every node with SIGTERM and checks they all shut down cleanly.
local function stop_all_clean(m)
  local codes = m:stop_all()
  for id, rc in pairs(codes) do
    assert(rc == 0, "node " .. id .. " exited with " .. tostring(rc) .. " after SIGTERM:\n" .. m:logs())
  end
end

describe("mesh topologies", function()
  it("line of 4: calls over 1, 2, 3 and 4 hops return the right results", function()
    MH.run(function(m)
      local line = ids("n", 4)
      m:start_topology("line", line)
      m:join({ "n1" })
      m:wait_converged()

      -- routes: tester - n1 - n2 - n3 - n4
      for i, id in ipairs(line) do
        local r = assert(route_to(id), "no route to " .. id)
        assert.equal(i, r.hops)
        assert.equal("n1", r.next_hop)
        local want = { "tester" }
        for k = 1, i do want[#want + 1] = line[k] end
        assert.same(want, r.path)
      end

      for i, id in ipairs(line) do
        assert.equal(id, call(id, "counter", "whoami"))
        assert.equal(i, call(id, "counter", "increment", { i }))
        assert.equal(i + 1, call(id, "counter", "increment"))
        assert.equal(i + 1, call(id, "counter", "get"))
      end
      -- results: none -> nil, one -> the value, several -> an array
      assert.same({ "a", 2, true, { x = 1 } }, call("n4", "counter", "echo", { "a", 2, true, { x = 1 } }))
      assert.equal("solo", call("n4", "counter", "echo", { "solo" }))
      local none, err = rn.remote_call("n4", "counter", "echo", {}, 5)
      assert.is_nil(none)
      assert.is_nil(err)
      assert.equal(0, call("n3", "counter", "reset"))
      assert.equal(0, call("n3", "counter", "get"))
      -- integers stay integers across 4 hops
      assert.equal(math.tointeger(2 ^ 53), call("n4", "counter", "echo", { math.tointeger(2 ^ 53) }))
      assert.equal("integer", math.type(call("n4", "counter", "get")))

      -- errors from 3 hops away
      call_fails("ENOSERVER", "n3", "nosuch", "get")
      call_fails("ENOMETHOD", "n3", "counter", "nosuch")
      local msg = call_fails("EREMOTE", "n3", "counter", "increment", { "not a number" })
      assert.truthy(msg:find("n must be an integer", 1, true), msg)

      -- the registry: counter on every node, once, with its distance
      local reg, n = registry_of(rn.registry(), "counter")
      assert.equal(4, n)
      for i, id in ipairs(line) do
        assert.equal(i, reg[id].hops)
        assert.is_false(reg[id]["local"])
      end
      -- a middle node forwarded, the ends did not
      assert.is_true(stats_of(m, "n2").forwarded > 0)
      assert.equal(0, stats_of(m, "n4").forwarded)
      assert.equal(0, rn.mesh_status().stats.pending_calls)
      stop_all_clean(m)
    end)
  end)

  it("star: leaves reach each other through a bare relay hub", function()
    MH.run(function(m)
      local star = { "hub", "s1", "s2", "s3", "s4" }
      -- the hub runs no script: relaynet --port --node-id only
      m:start_topology("star", star, { scripts = { hub = false } })
      m:join({ "s1" })
      m:wait_converged()
      -- tester -> s1 -> hub -> sN
      for _, id in ipairs({ "s2", "s3", "s4" }) do
        local r = assert(route_to(id))
        assert.same({ "tester", "s1", "hub", id }, r.path)
        assert.equal(id, call(id, "counter", "whoami"))
        assert.equal(1, call(id, "counter", "increment"))
      end
      -- the hub serves nothing itself but knows every leaf's counter
      call_fails("ENOSERVER", "hub", "counter", "get")
      local status, list = m:get("hub", "/registry")
      assert.equal(200, status)
      local reg, n = registry_of(list, "counter")
      assert.equal(4, n)
      for _, id in ipairs({ "s1", "s2", "s3", "s4" }) do assert.equal(1, reg[id].hops) end
      local hub = assert(m:status("hub"))
      assert.equal(4, #hub.peers)
      assert.same({}, hub.servers)
      -- a leaf's view: other leaves are two hops away, via the hub
      local s3 = assert(m:status("s3"))
      for _, r in ipairs(s3.routes) do
        assert.equal("hub", r.next_hop)
        if r.node == "tester" then assert.equal(3, r.hops)
        elseif r.node ~= "hub" then assert.equal(2, r.hops, r.node) end
      end
      stop_all_clean(m)
    end)
  end)

  it("full mesh of 4: one link per pair, every call one hop", function()
    MH.run(function(m)
      local full = ids("f", 4)
      m:start_topology("full", full)
      m:join(full)
      m:wait_converged()
      local st = m:statuses(full)
      for _, id in ipairs(full) do
        local s = assert(st[id], "no status from " .. id)
        assert.equal(4, #s.peers, id) -- three nodes and the tester
        for _, r in ipairs(s.routes) do
          assert.equal(1, r.hops)
          assert.equal(r.node, r.next_hop)
        end
        -- no link was ever dropped or duplicated while the mesh formed
        assert.equal(0, s.stats.links_down, id)
      end
      for _, id in ipairs(full) do
        assert.equal(1, route_to(id).hops)
        assert.equal(id, call(id, "counter", "whoami"))
        assert.equal(7, call(id, "counter", "increment", { 7 }))
      end
      assert.equal(4, #rn.peers())
      stop_all_clean(m)
    end)
  end)

  it("ring with cycles: every call executes exactly once", function()
    MH.run(function(m)
      local ring = ids("r", 5)
      m:start_topology("ring", ring)
      m:join({ "r1", "r3" }) -- more cycles: tester-r1-r2-r3-tester
      m:wait_converged()
      local registry, n = registry_of(rn.registry(), "counter")
      assert.equal(5, n)
      assert.equal(2, registry.r2.hops)
      -- 8 concurrent increments per node, 40 in flight at once
      local PER = 8
      local done, failures, sums = 0, {}, {}
      for _, id in ipairs(ring) do
        sums[id] = 0
        for _ = 1, PER do
          rn.spawn(function()
            local v, err = rn.remote_call(id, "counter", "increment", { 1 }, 10)
            if v then sums[id] = sums[id] + v else failures[#failures + 1] = id .. ": " .. tostring(err) end
            done = done + 1
          end)
        end
      end
      MH.wait_until(function() return done == PER * #ring end, "40 calls", 20)
      assert.same({}, failures)
      local st = m:statuses(ring)
      for _, id in ipairs(ring) do
        -- the results were 1..PER in some order: each increment ran once
        assert.equal(PER * (PER + 1) // 2, sums[id], id)
        assert.equal(PER, call(id, "counter", "get"), id)
        assert.equal(PER, st[id].stats.calls_served, id)
        assert.equal(0, st[id].stats.duplicate_calls, id)
      end
      stop_all_clean(m)
    end)
  end)
end)

describe("mesh failures", function()
  it("a node killed mid-call fails the call at once with ELINKLOST; after a restart calls work again", function()
    MH.run(function(m)
      m:start_topology("line", { "k1", "k2", "k3" })
      m:join({ "k1" })
      m:wait_converged()
      assert.equal(1, call("k3", "counter", "increment"))
      -- k2 itself calls k3 before it is killed (see the restart below)
      assert.equal(2, m:call_via("k2", "k3", "counter", "increment", {}, 5))

      local result
      rn.spawn(function()
        local t0 = rn.now()
        local res, err, code = rn.remote_call("k3", "counter", "slow", { 5 }, 10)
        result = { res = res, err = err, code = code, took = rn.now() - t0 }
      end)
      -- wait until the call is running on k3 (k2 forwards it)
      MH.wait_until(function()
        local s = m:status("k2")
        return s and s.stats.forwarded_in_flight == 1
      end, "the call to pass k2")
      local rc = m:kill("k2") -- SIGKILL: k2 vanishes without closing anything
      assert.equal(137, rc)
      MH.wait_until(function() return result end, "the slow call to fail", 12)
      assert.is_nil(result.res)
      assert.equal("ELINKLOST", result.code, result.err)
      assert.is_true(result.took < 5, "ELINKLOST only after " .. result.took .. " s (timeout 10 s)")
      assert.equal(0, rn.mesh_status().stats.pending_calls)
      -- k3 is unreachable now: fails at once
      MH.wait_until(function() return route_to("k3") == nil end, "the route to k3 to go")
      local _, took = call_fails("ENOROUTE", "k3", "counter", "get", {}, 10)
      assert.is_true(took < 5)

      -- the same node comes back on the same port: k1 and k3 relink by themselves
      m:restart("k2")
      m:wait_converged(20)
      assert.equal(3, call("k3", "counter", "increment"))
      -- The restarted k2 numbers its calls from 1 again: k3, which remembers
      -- k2's earlier call ids for its dedup window, must not take the new
      -- calls for duplicates (ids carry a per-process random part).
      assert.equal(4, m:call_via("k2", "k3", "counter", "increment", {}, 5))
      assert.equal(0, m:status("k3").stats.duplicate_calls)
      assert.equal("k2", call("k2", "counter", "whoami"))
      assert.equal(0, call("k2", "counter", "get")) -- a fresh process
      stop_all_clean(m)
    end)
  end)

  it("a node restarted under the same id: its first calls are not taken for duplicates", function()
    MH.run(function(m)
      m:start_topology("line", { "d1" })
      m:wait_converged()
      -- Two short-lived processes, one after the other, both node "dd": each
      -- makes the same messages in the same order, so without a per-process
      -- part in message ids the second one's call would repeat the first
      -- one's id, and d1 would drop it as a duplicate (within its dedup window).
      local script = 'local rn = require("relaynet")\n'
        .. 'for _ = 1, 500 do if #rn.routes() > 0 then break end rn.sleep(0.01) end\n'
        .. 'print(rn.remote_call("d1", "counter", "increment", {1}, 3))\n'
        .. 'rn.stop()'
      for i = 1, 2 do
        local rc, out, err = H.sh("bin/relaynet -e " .. H.q(script) .. " --node-id dd --add-peer "
          .. H.q(m:url("d1"))):wait(20)
        assert.equal(0, rc, err)
        assert.equal(tostring(i), out:match("^(%S+)"), out .. err)
      end
      assert.equal(0, m:status("d1").stats.duplicate_calls)
    end)
  end)

  it("the target killed mid-call: the hop before it answers ELINKLOST", function()
    MH.run(function(m)
      m:start_topology("line", { "t1", "t2" })
      m:join({ "t1" })
      m:wait_converged()
      local result
      rn.spawn(function()
        local t0 = rn.now()
        local res, err, code = rn.remote_call("t2", "counter", "slow", { 5 }, 10)
        result = { res = res, err = err, code = code, took = rn.now() - t0 }
      end)
      MH.wait_until(function()
        local s = m:status("t2")
        return s and s.stats.calls_served == 1
      end, "the call to reach t2")
      m:kill("t2")
      MH.wait_until(function() return result end, "the slow call to fail", 12)
      assert.equal("ELINKLOST", result.code, result.err)
      assert.is_true(result.took < 5, "ELINKLOST only after " .. result.took .. " s (timeout 10 s)")
      MH.wait_until(function()
        local s = m:status("t1")
        return s and s.stats.forwarded_in_flight == 0
      end, "t1 to forget the forwarded call")
      -- and this process's own first hop dying: t1 itself, during t1.slow
      result = nil
      rn.spawn(function()
        local t0 = rn.now()
        local res, err, code = rn.remote_call("t1", "counter", "slow", { 5 }, 10)
        result = { res = res, err = err, code = code, took = rn.now() - t0 }
      end)
      MH.wait_until(function() return rn.mesh_status().stats.pending_calls == 1 end, "the call to t1 to go out")
      rn.sleep(0.2)
      m:kill("t1")
      MH.wait_until(function() return result end, "the slow call to t1 to fail", 12)
      assert.equal("ELINKLOST", result.code, result.err)
      assert.is_true(result.took < 5, "ELINKLOST only after " .. result.took .. " s (timeout 10 s)")
      assert.equal(0, rn.mesh_status().stats.pending_calls)
      stop_all_clean(m)
    end)
  end)

  it("an unknown node fails at once with ENOROUTE", function()
    MH.run(function(m)
      m:start_topology("line", { "u1", "u2" })
      m:join({ "u1" })
      m:wait_converged()
      local _, msg, took
      msg, took = call_fails("ENOROUTE", "no-such-node", "counter", "get", {}, 10)
      assert.truthy(msg:find("no-such-node", 1, true), msg)
      assert.is_true(took < 5, "ENOROUTE after " .. took .. " s")
      -- a node that left cleanly is unreachable at once, too
      assert.equal(0, m:stop("u2"))
      MH.wait_until(function() return route_to("u2") == nil end, "the route to u2 to go")
      _, took = call_fails("ENOROUTE", "u2", "counter", "get", {}, 10)
      assert.is_true(took < 5)
      assert.equal(0, rn.mesh_status().stats.pending_calls)
      stop_all_clean(m)
    end)
  end)

  it("a call past its timeout fails with ETIMEDOUT and leaves nothing behind", function()
    MH.run(function(m)
      m:start_topology("line", { "w1", "w2" })
      m:join({ "w1" })
      m:wait_converged()
      local msg = call_fails("ETIMEDOUT", "w2", "counter", "slow", { 3 }, 1)
      assert.truthy(msg:find("w2", 1, true), msg)
      assert.equal(0, rn.mesh_status().stats.pending_calls)
      -- the relay and the target drop their bookkeeping too
      MH.wait_until(function()
        local s = m:status("w1")
        return s and s.stats.forwarded_in_flight == 0 and s.stats.pending_calls == 0
      end, "w1 to forget the timed-out call", 10)
      -- the link is fine: the next call works
      assert.equal("done", call("w2", "counter", "slow", { 0 }))
      assert.equal(0, rn.mesh_status().stats.pending_calls)
      stop_all_clean(m)
    end)
  end)

  it("two nodes that dial each other end up with exactly one link", function()
    MH.run(function(m)
      m:port_of("d1")
      m:port_of("d2")
      m:start("d1", { peers = { "d2" }, wait = false })
      m:start("d2", { peers = { "d1" }, wait = false })
      m:wait_up("d1")
      m:wait_up("d2")
      m:wait_converged()
      rn.sleep(1.5) -- several redial attempts would have happened by now
      local st = m:statuses({ "d1", "d2" })
      -- the link dialed by the smaller id (d1) is the one kept
      assert.equal(1, #st.d1.peers)
      assert.equal(1, #st.d2.peers)
      assert.equal("d2", st.d1.peers[1].id)
      assert.equal("out", st.d1.peers[1].direction)
      assert.equal("d1", st.d2.peers[1].id)
      assert.equal("in", st.d2.peers[1].direction)
      for _, id in ipairs({ "d1", "d2" }) do
        local s = st[id].stats
        assert.equal(1, s.links_up - s.links_down, id .. " has " .. (s.links_up - s.links_down) .. " links up")
      end
      -- and it stays that way
      rn.sleep(1)
      local again = m:statuses({ "d1", "d2" })
      assert.equal(st.d1.peers[1].since, again.d1.peers[1].since)
      assert.equal(st.d2.peers[1].since, again.d2.peers[1].since)
      stop_all_clean(m)
    end)
  end)

  it("remembers served call ids within a bound, at any call rate", function()
    MH.run(function(m)
      local saved = rn.mesh_config.max_dedup
      rn.mesh_config.max_dedup = 8
      local ok, err = pcall(function()
        local served = 0
        rn.expose("tally", { bump = function() served = served + 1; return served end })
        m:join({}, { listen = true })
        m:start("q1", { peers = { "tester" } })
        m:wait_converged()
        for i = 1, 20 do
          assert.equal(i, m:call_via("q1", "tester", "tally", "bump", {}, 5))
        end
        local st = rn.mesh_status().stats
        assert.equal(8, st.dedup_entries)
        assert.equal(12, st.dedup_evicted)
        assert.equal(0, st.duplicate_calls)
        assert.equal(20, st.calls_served)
        rn.unexpose("tally")
      end)
      rn.mesh_config.max_dedup = saved
      assert(ok, err)
      stop_all_clean(m)
    end)
  end)

  it("peers() shows direction and rtt", function()
    MH.run(function(m)
      m:join({}, { listen = true })
      m:start("p1")
      m:start("p2", { peers = { "tester" } }) -- p2 dials this process
      m:join({ "p1" }, { listen = true })      -- this process dials p1
      m:wait_converged()
      local p
      MH.wait_until(function()
        local list = rn.peers()
        local a, b = peer(list, "p1"), peer(list, "p2")
        if #list == 2 and a and b and a.rtt and b.rtt then p = { p1 = a, p2 = b }; return true end
      end, "both links to have an rtt", 10)
      assert.equal("out", p.p1.direction)
      assert.equal(m:url("p1"), p.p1.url)
      assert.equal("in", p.p2.direction)
      for _, e in pairs(p) do
        assert.equal("number", type(e.rtt))
        assert.is_true(e.rtt >= 0 and e.rtt < 5)
        assert.equal("number", type(e.since))
      end
      -- and the other side sees the opposite direction
      local status, list = m:get("p1", "/peers")
      assert.equal(200, status)
      assert.equal("in", peer(list, "tester").direction)
      status, list = m:get("p2", "/peers")
      assert.equal(200, status)
      assert.equal("out", peer(list, "tester").direction)
      -- remove_peer drops the link for good (p1 never dials us back)
      assert.is_true(rn.remove_peer(m:url("p1")))
      MH.wait_until(function() return peer(rn.peers(), "p1") == nil end, "the link to p1 to go")
      MH.wait_until(function() return route_to("p1") == nil end, "the route to p1 to go")
      rn.sleep(1)
      assert.is_nil(peer(rn.peers(), "p1"))
      assert.is_nil(route_to("p1"))
      assert.truthy(peer(rn.peers(), "p2"))
      stop_all_clean(m)
    end)
  end)
end)

describe("JSON-RPC over HTTP", function()
  it("remote_call from one node's /rpc reaches a node 3 hops away", function()
    MH.run(function(m)
      local line = ids("j", 4)
      m:start_topology("line", line)
      m:wait_converged()
      for i = 2, 4 do
        assert.equal(line[i], m:call_via("j1", line[i], "counter", "whoami", {}))
        assert.equal(10 * i, m:call_via("j1", line[i], "counter", "increment", { 10 * i }))
      end
      assert.same({ 1, "two" }, m:call_via("j1", "j4", "counter", "echo", { 1, "two" }))
      -- errors carry the relaynet code in error.data.code
      local res = assert(m:rpc("j1", "remote_call", { node_id = "nowhere", server_name = "counter",
        method = "get", args = json.array(), timeout = 5 }))
      assert.is_table(res.error, json.encode(res))
      assert.equal(-32001, res.error.code)
      assert.equal("ENOROUTE", res.error.data.code)
      local _, _, code = m:call_via("j1", "j4", "counter", "slow", { 3 }, 1)
      assert.equal("ETIMEDOUT", code)
      -- the array form of params, local "server.method", p2p.peer.getStatus
      res = assert(m:rpc("j2", "remote_call", { "j4", "counter", "get", json.array(), 5 }))
      assert.equal(40, res.result, json.encode(res))
      res = assert(m:rpc("j4", "counter.increment", { 2 }))
      assert.equal(42, res.result, json.encode(res))
      res = assert(m:rpc("j3", "p2p.peer.getStatus", json.array()))
      assert.equal("j3", res.result.node_id, json.encode(res))
      stop_all_clean(m)
    end)
  end)
end)

describe("bad mesh input", function()
  -- A raw WebSocket to b1's /ws/p2p that speaks the wire protocol by hand.
  local function raw_link(m, id)
    local c = m:raw(id)
    local self = { c = c, inbox = {} }
    function self.send(v)
      local text = type(v) == "string" and v or assert(json.encode(v))
      assert(c:send(text))
    end
    -- next message matching pred (others are kept aside)
    function self.expect(pred, what, timeout)
      local deadline = rn.now() + (timeout or 5)
      while true do
        local left = deadline - rn.now()
        if left <= 0 then error("raw link: no " .. what, 2) end
        local msg, err = c:receive(left)
        if not msg then error("raw link: no " .. what .. ": " .. tostring(err), 2) end
        local v = json.decode(msg)
        if type(v) == "table" and pred(v) then return v end
        self.inbox[#self.inbox + 1] = v
      end
    end
    return self
  end

  -- Waits until b1's counters have grown by `want` (a table of deltas) from
  -- `before`; returns the new stats.
  local function wait_stats(m, id, before, want)
    local got
    MH.wait_until(function()
      got = stats_of(m, id)
      for k, d in pairs(want) do
        if got[k] - before[k] < d then return false end
      end
      return true
    end, id .. " counters " .. json.encode(want), 10, function() return json.encode(got) end)
    for k, d in pairs(want) do
      assert.equal(d, got[k] - before[k], k)
    end
    return got
  end

  -- b1 - b2 with this process joined at b1, plus a raw link to b1 that has
  -- said hello as node "evil" (unless hello == false).
  local function setup(m, hello)
    m:start_topology("line", { "b1", "b2" })
    m:join({ "b1" })
    m:wait_converged()
    local raw = raw_link(m, "b1")
    local h = raw.expect(function(v) return v.type == "hello" end, "hello from b1")
    assert.equal("b1", h.from)
    if hello ~= false then
      raw.send({ type = "hello", id = "evil-1", from = "evil", data = { version = 1, node = "evil" } })
      raw.expect(function(v) return v.type == "registry_sync" end, "advert from b1")
    end
    return raw, stats_of(m, "b1")
  end

  local function answer(raw, id, what)
    return raw.expect(function(v) return v.type == "server_response" and v.reply_to == id end, what)
  end

  -- b1 still works normally: the raw link is open, calls through b1 work,
  -- and the counters hold what the raw link legitimately did.
  local function still_serving(m, raw, b1_count, b2_count)
    assert.is_true(raw.c:is_open())
    assert.equal(b1_count, call("b1", "counter", "get"))
    assert.equal(b2_count, call("b2", "counter", "get"))
    assert.equal(b2_count + 1, call("b2", "counter", "increment"))
    raw.c:close_wait(1000, "bye")
    stop_all_clean(m)
  end

  it("garbage and messages before hello are dropped and counted; so is a flood of 200 hellos", function()
    MH.run(function(m)
      local raw, before = setup(m, false)
      raw.send("this is not json")
      raw.send("[1,2,3]")
      raw.send('{"type":42}')
      raw.send('{"type":"no-such-type"}')
      raw.send({ type = "server_call", id = "evil-0", from = "evil", to = "b2", ttl = 3, route = { "evil" },
        data = { server = "counter", method = "increment", args = json.array(), timeout_ms = 1000 } })
      assert(raw.c:send("\0\1binary", true))
      before = wait_stats(m, "b1", before, { bad_messages = 6 })

      -- a real hello: the link comes up and b1 advertises its routes to us
      raw.send({ type = "hello", id = "evil-1", from = "evil", data = { version = 1, node = "evil" } })
      raw.expect(function(v) return v.type == "registry_sync" end, "advert from b1")
      -- 200 more hellos on the same link: ignored and counted
      for i = 1, 200 do
        raw.send({ type = "hello", id = "evil-h" .. i, from = "evil" .. i, data = { version = 1, node = "evil" .. i } })
      end
      wait_stats(m, "b1", before, { hello_rejected = 200, bad_messages = 0 })
      -- once it advertises itself, "evil" is a node like any other, reachable
      -- from here through b1
      raw.send({ type = "registry_sync", id = "evil-2", from = "evil", to = "b1", data = { seq = 1, routes = {
        { path = { "evil" }, seq = 1, servers = json.array() } } } })
      MH.wait_until(function() return route_to("evil") end, "a route to evil")
      assert.equal(2, route_to("evil").hops)
      still_serving(m, raw, 0, 0)
    end)
  end)

  it("malformed envelopes and forged TTLs are dropped or answered, never executed wrongly", function()
    MH.run(function(m)
      local raw, before = setup(m)
      raw.send({ type = "server_call" })
      raw.send({ type = "server_call", id = 5, from = "evil", to = "b2" })
      raw.send({ type = "registry_sync", from = "evil", data = "nope" })
      raw.send({ type = "server_response", from = "evil", data = {} }) -- no reply_to
      before = wait_stats(m, "b1", before, { bad_messages = 4 })
      -- a TTL that is not an integer: 1e300
      raw.send({ type = "server_call", id = "evil-2", from = "evil", to = "b2", ttl = 1e300, route = { "evil" },
        data = { server = "counter", method = "increment", args = { 1 }, timeout_ms = 1000 } })
      assert.equal("EINVAL", answer(raw, "evil-2", "EINVAL for ttl 1e300").data.error.code)
      before = wait_stats(m, "b1", before, { bad_messages = 1, forwarded = 0 })
      -- a forged huge TTL is clamped to the hop limit, not trusted: the call
      -- is served once
      raw.send({ type = "server_call", id = "evil-4", from = "evil", to = "b2", ttl = 1000000,
        route = { "evil" }, data = { server = "counter", method = "increment", args = { 5 }, timeout_ms = 3000 } })
      local r4 = answer(raw, "evil-4", "answer to the huge-TTL call")
      assert.equal(5, r4.data.result, json.encode(r4))
      -- a TTL that runs out at b1 gets ETTL and goes no further
      raw.send({ type = "server_call", id = "evil-5", from = "evil", to = "b2", ttl = 1, route = { "evil" },
        data = { server = "counter", method = "increment", args = { 100 }, timeout_ms = 3000 } })
      assert.equal("ETTL", answer(raw, "evil-5", "ETTL answer").data.error.code)
      before = wait_stats(m, "b1", before, { ttl_expired = 1, forwarded = 1 })
      -- a TTL given as a string is malformed
      raw.send({ type = "server_call", id = "evil-3", from = "evil", to = "b2", ttl = "16", route = { "evil" },
        data = { server = "counter", method = "increment", args = { 1000 }, timeout_ms = 1000 } })
      local r3 = answer(raw, "evil-3", "an answer to the string-TTL call")
      assert.is_table(r3.data.error, "a call with ttl \"16\" was executed: " .. json.encode(r3))
      assert.equal("EINVAL", r3.data.error.code)
      wait_stats(m, "b1", before, { bad_messages = 1, forwarded = 0 })
      still_serving(m, raw, 0, 5)
    end)
  end)

  it("routes containing the receiver, unknown replies and duplicate calls are dropped and counted", function()
    MH.run(function(m)
      local raw, before = setup(m)
      -- routes that contain the receiver: a call and an advert entry
      raw.send({ type = "server_call", id = "evil-6", from = "evil", to = "b2", ttl = 5, route = { "evil", "b1" },
        data = { server = "counter", method = "increment", args = { 1000 }, timeout_ms = 3000 } })
      raw.send({ type = "registry_sync", id = "evil-7", from = "evil", to = "b1", data = { seq = 1, routes = {
        { path = { "evil" }, seq = 1, servers = {} },
        { path = { "evil", "b1", "b2" }, seq = 1, servers = {} } } } })
      before = wait_stats(m, "b1", before, { dropped_loops = 2, forwarded = 0 })
      -- replies nobody asked for: one for b1 itself, one to pass through it
      raw.send({ type = "server_response", id = "evil-8", reply_to = "b1-999999", from = "evil", to = "b1",
        data = { result = 1 } })
      raw.send({ type = "server_response", id = "evil-9", reply_to = "tester-999999", from = "evil", to = "tester",
        data = { result = 1 } })
      before = wait_stats(m, "b1", before, { unknown_replies = 2 })
      assert.equal(0, rn.mesh_status().stats.unknown_replies) -- nothing reached this node
      -- the same call delivered twice runs once, here and two hops away
      local dup = { type = "server_call", id = "evil-10", from = "evil", to = "b1", ttl = 5, route = { "evil" },
        data = { server = "counter", method = "increment", args = { 1 }, timeout_ms = 3000 } }
      raw.send(dup)
      raw.send(dup)
      assert.equal(1, answer(raw, "evil-10", "answer to the duplicated call").data.result)
      before = wait_stats(m, "b1", before, { duplicate_calls = 1 })
      -- two hops away the copy is dropped by b1 (the call is in flight) or,
      -- should the answer already have passed, by b2 (it ran that call)
      local b2_before = stats_of(m, "b2")
      dup.id, dup.to = "evil-11", "b2"
      raw.send(dup)
      raw.send(dup)
      assert.equal(1, answer(raw, "evil-11", "answer to the duplicated call to b2").data.result)
      MH.wait_until(function()
        local d = stats_of(m, "b1").duplicate_calls - before.duplicate_calls
          + stats_of(m, "b2").duplicate_calls - b2_before.duplicate_calls
        return d >= 1
      end, "the copy to be dropped")
      rn.sleep(0.2)
      assert.equal(1, stats_of(m, "b1").duplicate_calls - before.duplicate_calls
        + stats_of(m, "b2").duplicate_calls - b2_before.duplicate_calls)
      assert.equal(1, stats_of(m, "b2").calls_served - b2_before.calls_served)
      still_serving(m, raw, 1, 1)
    end)
  end)

  it("refuses bad hellos: wrong version, its own id, an impersonated peer; --disable-registry refuses links",
    function()
    MH.run(function(m)
      m:start_topology("line", { "v1", "v2" })
      m:start("off", { args = { "--disable-registry" } })
      m:join({ "v1" })
      m:wait_converged()
      local function closed_with(hello_msg)
        local c = m:raw("v1")
        if hello_msg then assert(c:send(json.encode(hello_msg))) end
        MH.wait_until(function() return not c:is_open() end, "v1 to close the link")
        return c.close_code, c.close_reason
      end
      local code = closed_with({ type = "hello", from = "x", data = { version = 99, node = "x" } })
      assert.equal(4400, code)
      code = closed_with({ type = "hello", from = "v1", data = { version = 1, node = "v1" } })
      assert.equal(4400, code)
      -- v2 already has the link v2 dialed; a second "v2" is refused
      code = closed_with({ type = "hello", from = "v2", data = { version = 1, node = "v2" } })
      assert.equal(4409, code)
      assert.equal("v2", call("v2", "counter", "whoami"))
      -- a node without the mesh refuses /ws/p2p
      local c = m:raw("off")
      MH.wait_until(function() return not c:is_open() end, "the mesh-less node to close")
      assert.equal(4404, c.close_code)
      local st = assert(m:status("off"))
      assert.is_false(st.enabled)
      stop_all_clean(m)
    end)
  end)

  it("a flood of 200 links that never say hello does not stop the node", function()
    MH.run(function(m)
      m:start_topology("line", { "h1", "h2" })
      m:join({ "h1" })
      m:wait_converged()
      local clients, refused = {}, 0
      for i = 1, 200 do
        local c = rn.ws_connect(m:url("h1"), { timeout = 5 })
        if c then clients[#clients + 1] = c else refused = refused + 1 end
        if i % 20 == 0 then rn.sleep(0) end
      end
      -- at most 64 wait for hello; the rest are closed with 1013
      MH.wait_until(function()
        local s = stats_of(m, "h1")
        return s.links_refused + refused >= 200 - 64 and s.pending_links <= 64
      end, "h1 to refuse the surplus links", 10)
      assert.equal(2, call("h2", "counter", "increment", { 2 }))
      for _, c in ipairs(clients) do c:close() end
      MH.wait_until(function() return stats_of(m, "h1").pending_links == 0 end, "pending links to go")
      stop_all_clean(m)
    end)
  end)
end)

describe("calls on this node", function()
  it("a bad args.n cannot lose the reply: EREMOTE, or the list's own length", function()
    H.run(function()
      rn.expose("argc", { count = function(...) return select("#", ...) end })
      assert.equal(2, rn.remote_call(rn.node_id(), "argc", "count", { 1, 2, n = "x" }, 2))
      assert.equal(3, rn.remote_call(rn.node_id(), "argc", "count", { n = 3 }, 2))
      local r, err, code = rn.remote_call(rn.node_id(), "argc", "count", { n = 1 << 40 }, 2)
      assert.is_nil(r)
      assert.equal("EREMOTE", code)
      assert.matches("too many results to unpack", err, 1, true)
      rn.unexpose("argc")
    end, { allow_errors = true })
  end)
end)

describe("examples/p2p", function()
  it("mesh.lua starts a ring, makes JSON-RPC calls across it and stops the nodes", function()
    MH.run(function()
      local base = MH.free_port_range(3)
      local rc, out, err = H.sh(MH.LUA .. " " .. H.q(H.ROOT .. "/examples/p2p/mesh.lua") .. " ring 3 " .. base)
        :wait(60)
      assert.equal(0, rc, out .. err)
      assert.truthy(out:find("routes converged", 1, true), out)
      assert.truthy(out:find('"result":"node3"', 1, true) or out:find('"result":"node2"', 1, true), out)
      assert.truthy(out:find('"data":{"code":"ENOROUTE"}', 1, true), out)
      assert.truthy(out:find('"result":"done"', 1, true), out)
      -- every node is gone
      for i = 0, 2 do
        local status = H.curl("http://127.0.0.1:" .. (base + i) .. "/status", 5)
        assert.is_nil(status)
      end
      -- As a user runs it from a checkout, without the Makefile's Lua paths,
      -- it finds lua/ and build/ itself.
      rc, out, err = H.sh("env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 lua5.4 " ..
        H.q(H.ROOT .. "/examples/p2p/mesh.lua") .. " --help"):wait(10)
      assert.equal(2, rc, out .. err)
      assert.equal("usage: lua5.4 examples/p2p/mesh.lua star|line|ring|full [N] [BASEPORT] [--keep]\n", err)
    end)
  end)

  it("call.lua joins the mesh for one call", function()
    MH.run(function(m)
      m:start_topology("line", { "c1", "c2" })
      m:wait_converged()
      local cmd = H.q(MH.RELAYNET) .. " " .. H.q(H.ROOT .. "/examples/p2p/call.lua")
      local rc, out, err = H.sh(cmd .. " c2 increment 4 --add-peer " .. H.q(m:url("c1"))):wait(30)
      assert.equal(0, rc, err)
      assert.equal("4\n", out)
      assert.truthy(err:find("> c1 > c2", 1, true), err)
      rc, out, err = H.sh(cmd .. " c2 echo a 1 --add-peer " .. H.q(m:url("c1"))):wait(30)
      assert.equal(0, rc, err)
      assert.equal('["a",1]\n', out)
      rc, out, err = H.sh(cmd .. " nowhere get --add-peer " .. H.q(m:url("c1"))):wait(30)
      assert.equal(1, rc)
      assert.equal("", out)
      assert.truthy(err:find("ENOROUTE", 1, true), err)
      stop_all_clean(m)
    end)
  end)
end)
