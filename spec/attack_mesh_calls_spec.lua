-- spec/attack_mesh_calls_spec.lua: issue 8's call floods, rebuilt against
-- real node processes (spec/support/mesh_harness.lua).
--
-- The attackers run in this test process and speak the wire protocols by
-- hand over real sockets: JSON-RPC over WebSocket (/rpc) and the mesh
-- protocol (/ws/p2p). "A node that never answers" is a fake mesh peer (a
-- raw /ws/p2p link from this process) that says hello, advertises a
-- `counter` server, answers pings so that its link stays up, and swallows
-- every server_call it is sent.
--
-- While an attack runs the specs check that the node survives, that its RSS
-- stays under baseline + 64 MiB, that legitimate requests on other
-- connections keep being answered, and that the attacker gets the documented
-- error (EBUSY: JSON-RPC -32008 with data.code "EBUSY", or a server_response
-- whose error.code is "EBUSY"). Afterwards the state is gone and RSS is
-- back near its baseline.

local rn = require("relaynet")
local H = require("helper")
local MH = require("mesh_harness")
local json = require("relaynet.json")

local WIDE_RPC = H.ROOT .. "/spec/support/counter_wide_rpc.lua"
local RSS_BOUND_KIB = 64 * 1024   -- growth allowed while the attack runs
local RSS_AFTER_KIB = 8 * 1024    -- growth still allowed once it is over

local function rss_kib(m, id)
  local pid = assert(m:pid(id), "no pid for node " .. id)
  local f = assert(io.open("/proc/" .. pid .. "/status"))
  local s = f:read("a")
  f:close()
  local kib = assert(tonumber(s:match("VmRSS:%s*(%d+)")), "no VmRSS")
  return kib
end

-- Waits until node id's RSS is back within RSS_AFTER_KIB of `base`; returns it.
local function rss_back(m, id, base, peak)
  local after
  MH.wait_until(function()
    after = rss_kib(m, id)
    return after - base < RSS_AFTER_KIB
  end, id .. "'s RSS to come back near its baseline", 30,
    function() return string.format("base %d KiB, peak %d KiB, now %d KiB", base, peak, after) end)
  return after
end

local function stats_of(m, id)
  local st = assert(m:status(id), "no /status from " .. id)
  return st.stats
end

local function has_route(m, from, to)
  local st = m:status(from)
  if not st then return false end
  for _, r in ipairs(st.routes) do
    if r.node == to then return true end
  end
  return false
end

-- A raw mesh link to node `to` that has said hello as `id` and answers
-- pings; every other decoded message goes to on_msg(v, text).
local function raw_link(m, to, id, on_msg)
  local c = assert(rn.ws_connect(m:url(to), { timeout = 5, on_message = function(msg, _, client)
    local v = json.decode(msg)
    if type(v) ~= "table" then return end
    if v.type == "ping" then
      client:send(assert(json.encode({ type = "pong", id = v.id, from = id, to = v.from })))
    else
      on_msg(v, msg)
    end
  end }))
  assert(c:send(assert(json.encode({ type = "hello", id = id .. "-hello", from = id,
    data = { version = 1, node = id } }))))
  return c
end

-- A fake mesh node `id` on a raw link to node `to` that never answers a call.
local function sink(m, to, id)
  local self = { calls = 0 }
  self.c = raw_link(m, to, id, function(v)
    if v.type == "server_call" then self.calls = self.calls + 1 end
  end)
  assert(self.c:send(assert(json.encode({ type = "registry_sync", id = id .. "-advert", from = id, to = to,
    data = { seq = 1, routes = { { path = { id }, seq = 1, servers = json.array({ "counter" }) } } } }))))
  MH.wait_until(function() return has_route(m, to, id) end, to .. " to route to " .. id, 10)
  return self
end

-- A raw mesh link that has said hello as `id` and records the answers to
-- its calls: self.busy counts server_responses with error code EBUSY,
-- self.other the other answers, self.why the EBUSY messages seen (a set).
local function evil_link(m, to, id)
  local self = { busy = 0, other = 0, answers = 0, why = {} }
  self.c = raw_link(m, to, id, function(v, msg)
    if v.type ~= "server_response" then return end
    self.answers = self.answers + 1
    local e = type(v.data) == "table" and v.data.error
    if type(e) == "table" and e.code == "EBUSY" then
      self.busy = self.busy + 1
      self.why[(e.message:gsub("%d+", "N"))] = true
    else
      self.other = self.other + 1
      self.last_other = msg
    end
  end)
  MH.wait_until(function()
    for _, p in ipairs((m:status(to) or { peers = {} }).peers) do
      if p.id == id then return true end
    end
  end, to .. " to take " .. id .. " as a peer", 10)
  return self
end

-- A WebSocket JSON-RPC client on node `id`'s /rpc that counts the entries of
-- the batch responses it gets: self.busy (EBUSY entries), self.other.
local function rpc_ws(m, id)
  local self = { messages = 0, busy = 0, other = 0, why = {} }
  local url = m:http(id):gsub("^http", "ws") .. "/rpc"
  self.c = assert(rn.ws_connect(url, { timeout = 5, on_message = function(msg)
    self.messages = self.messages + 1
    local v = json.decode(msg)
    if type(v) ~= "table" then self.other = self.other + 1; return end
    if v.jsonrpc then v = { v } end
    for _, r in ipairs(v) do
      local e = r.error
      if type(e) == "table" and e.code == -32008 and type(e.data) == "table" and e.data.code == "EBUSY" then
        self.busy = self.busy + 1
        self.why[(e.message:gsub("%d+", "N"))] = true
      else
        self.other = self.other + 1
        self.last_other = json.encode(r)
      end
    end
  end }))
  return self
end

-- A batch of 100 remote_calls to node `to` (timeout 300 s) as text.
local function batch_text(to, first_id)
  local parts = {}
  for i = 0, 99 do
    parts[#parts + 1] = string.format(
      '{"jsonrpc":"2.0","id":%d,"method":"remote_call","params":["%s","counter","increment",[],300]}',
      first_id + i, to)
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- remote_call through node `via` over HTTP /rpc that must succeed.
local function rpc_ok(m, via, node, method, args)
  local res, err, code = m:call_via(via, node, "counter", method, args or {}, 10)
  assert(err == nil, string.format("legitimate call %s on %s via %s failed: %s (%s)", method, node, via,
    tostring(err), tostring(code)))
  return res
end

local function keys(set)
  local t = {}
  for k in pairs(set) do t[#t + 1] = k end
  table.sort(t)
  return table.concat(t, " | ")
end

describe("attack: remote calls in flight", function()
  it("2,000 WebSocket /rpc batches of 100 calls to a node that never answers stay bounded", function()
    MH.run(function(m)
      -- a1 lifts the per-address share (every client here is 127.0.0.1) so
      -- that the node-wide max_calls is what holds; the next test keeps it.
      m:start_topology("line", { "a1", "b1" }, { scripts = { a1 = WIDE_RPC } })
      m:join({ "a1" })
      m:wait_converged()
      local sk = sink(m, "a1", "sink")
      local base = rss_kib(m, "a1")
      local peak = base
      local legit = 0
      -- 20 connections, one after the other, each sends 100 batches of 100
      -- remote_calls to the sink: 200,000 calls in 2,000 messages.
      local conns = {}
      local per_conn = 256 -- max_calls_per_connection (default)
      local node_cap = 2048 -- mesh max_calls (default)
      local seq = 0
      for k = 1, 20 do
        local a = rpc_ws(m, "a1")
        conns[k] = a
        local sent = 0
        for _ = 1, 100 do
          assert(a.c:send(batch_text("sink", seq)))
          seq = seq + 100
          sent = sent + 1
          if sent % 25 == 0 then
            -- At most 3 messages of a connection can still wait (256 calls
            -- in flight are 2 whole batches and part of a third); every
            -- other batch is answered at once.
            MH.wait_until(function() return a.messages >= sent - 3 end,
              string.format("connection %d: answers to %d batches (got %d)", k, sent, a.messages), 60)
            peak = math.max(peak, rss_kib(m, "a1"))
          end
        end
        -- a legitimate caller on another connection is still answered: a
        -- call relayed by a1 to b1, and a local call over HTTP /rpc
        legit = legit + 1
        assert.equal(legit, rn.remote_call("b1", "counter", "increment", {}, 10))
        assert.equal(0, rpc_ok(m, "a1", "a1", "get"))
      end
      local st = stats_of(m, "a1")
      peak = math.max(peak, rss_kib(m, "a1"))
      -- the node cap held: 8 connections of 256 calls fill it
      assert.equal(node_cap, st.pending_calls)
      MH.wait_until(function() return sk.calls == node_cap end, "the sink to get " .. node_cap .. " calls", 20)
      -- Connections 1-8 hold 256 calls each (2 whole batches and 56 of a
      -- third, whose response waits for them): the other 97 batches are
      -- all EBUSY. Connections 9-20 find the node full: all 100 are EBUSY.
      local full = node_cap // per_conn
      for k, a in ipairs(conns) do
        local want = k <= full and 9700 or 10000
        MH.wait_until(function() return a.busy + a.other >= want end,
          "connection " .. k .. " to get its EBUSY answers", 30)
        assert.equal(want, a.busy, "EBUSY answers on connection " .. k)
        assert.equal(0, a.other, a.last_other)
        assert.equal(k <= full and 97 or 100, a.messages)
      end
      local why = keys(conns[1].why)
      assert.truthy(why:find("EBUSY: this connection already has N calls in flight (max_calls_per_connection)",
        1, true), why)
      why = keys(conns[20].why)
      assert.truthy(why:find("EBUSY: node aN already waits for N remote calls (mesh max_calls)", 1, true), why)
      assert.equal(full * (10000 - per_conn), st.rpc_calls_refused)
      assert.equal((20 - full) * 10000, st.calls_refused)
      assert(peak - base < RSS_BOUND_KIB, string.format("RSS grew by %d KiB (base %d KiB)", peak - base, base))
      -- the attacker leaves: its calls still waiting are canceled at once
      for _, a in ipairs(conns) do a.c:close_wait(1000, "bye") end
      MH.wait_until(function() return stats_of(m, "a1").pending_calls == 0 end, "a1 to drop the calls", 20)
      assert.equal(node_cap, stats_of(m, "a1").calls_canceled)
      assert.equal(legit + 1, rn.remote_call("b1", "counter", "increment", {}, 10))
      local after = rss_back(m, "a1", base, peak)
      print(string.format("\n  /rpc flood: RSS base %d KiB, peak %d KiB (+%d), after %d KiB",
        base, peak, peak - base, after))
      sk.c:close_wait(1000, "bye")
    end, { timeout = 240 })
  end)

  it("one address gets at most max_calls_per_address of the node's calls, however many connections", function()
    MH.run(function(m)
      m:start_topology("line", { "a1", "b1" })
      m:join({ "a1" })
      m:wait_converged()
      local sk = sink(m, "a1", "sink")
      local per_conn, per_addr = 256, 512 -- the defaults
      -- 6 connections of 127.0.0.1, 3 batches of 100 calls each to the sink
      local conns, seq = {}, 0
      for k = 1, 6 do
        local a = rpc_ws(m, "a1")
        conns[k] = a
        for _ = 1, 3 do
          assert(a.c:send(batch_text("sink", seq)))
          seq = seq + 100
        end
        if k <= per_addr // per_conn then
          -- 2 whole batches and 56 of a third wait (the third's answer
          -- waits for its 56): nothing comes back yet
          MH.wait_until(function() return sk.calls == k * per_conn end,
            "the sink to get the calls of connection " .. k, 30)
        else -- the address is full: all three batches are EBUSY at once
          MH.wait_until(function() return a.messages == 3 end,
            "connection " .. k .. " to get its EBUSY answers", 30)
        end
      end
      MH.wait_until(function() return sk.calls == per_addr end, "the sink to get " .. per_addr .. " calls", 20)
      local st = stats_of(m, "a1")
      assert.equal(per_addr, st.pending_calls)
      assert.equal(0, st.calls_refused) -- the node-wide max_calls was never reached
      for k = 3, 6 do
        assert.equal(300, conns[k].busy)
        local why = keys(conns[k].why)
        assert.equal("EBUSY: address N.N.N.N already has N calls in flight (max_calls_per_address)", why)
      end
      -- this node's own servers stay callable from the same address, and a
      -- relayed call keeps working
      assert.equal(0, rpc_ok(m, "a1", "a1", "get"))
      assert.equal(1, rn.remote_call("b1", "counter", "increment", {}, 10))
      for _, a in ipairs(conns) do a.c:close_wait(1000, "bye") end
      MH.wait_until(function() return stats_of(m, "a1").pending_calls == 0 end, "a1 to drop the calls", 20)
      sk.c:close_wait(1000, "bye")
    end, { timeout = 120 })
  end)

  it("a batch larger than the connection's free slots answers the excess at once", function()
    MH.run(function(m)
      m:start("a1")
      local sk = sink(m, "a1", "sink")
      local err0 = m:stderr("a1")
      local a = rpc_ws(m, "a1")
      -- 2 batches fill 200 of the 256 slots; the third gets 56 slots and 44
      -- immediate EBUSY; its response waits for the 56, but a fourth batch
      -- (all EBUSY) is answered at once, before the third
      for i = 0, 3 do assert(a.c:send(batch_text("sink", i * 100))) end
      MH.wait_until(function() return a.messages == 1 end, "the answer to the fourth batch", 10)
      assert.equal(100, a.busy)
      assert.equal(256, stats_of(m, "a1").pending_calls)
      MH.wait_until(function() return sk.calls == 256 end, "256 calls at the sink", 10)
      a.c:close_wait(1000, "bye")
      MH.wait_until(function() return stats_of(m, "a1").pending_calls == 0 end, "a1 to drop the calls", 10)
      -- the canceled batches were not sent to a closed connection: nothing
      -- was logged
      assert.equal(err0, m:stderr("a1"))
      sk.c:close_wait(1000, "bye")
    end, { timeout = 60 })
  end)
end)

describe("attack: relayed calls in flight", function()
  it("200,000 server_calls relayed toward a node that never answers: forwards capped, EBUSY back", function()
    MH.run(function(m)
      m:start_topology("line", { "a1", "b1" })
      m:wait_up("b1")
      MH.wait_until(function() return has_route(m, "a1", "b1") end, "a1 to route to b1", 10)
      local sk = sink(m, "a1", "sink")
      local base = rss_kib(m, "a1")
      local peak = base
      local per_link, node_cap = 2048, 8192 -- max_forwards_per_link, max_forwards (defaults)
      -- Each link sends PER calls as fast as a1 reads them (this client
      -- keeps at most 256 KiB queued). An accepted link may receive
      -- link_rate_scale (64) times ws_msg_rate, so the rate limit does not
      -- close it before the forward caps matter.
      local PER = 40000
      local function flood(e, k)
        local fmt = '{"type":"server_call","id":"e' .. k .. '-%d","from":"evil' .. k .. '","to":"sink",' ..
          '"ttl":8,"route":["evil' .. k .. '"],"data":{"server":"counter","method":"increment",' ..
          '"args":[],"timeout_ms":300000}}'
        local sent = 0
        while sent < PER do
          if e.c:info().queued < 256 * 1024 then
            for _ = 1, math.min(200, PER - sent) do
              sent = sent + 1
              assert(e.c:send(string.format(fmt, sent)))
            end
          end
          rn.sleep(0.005)
        end
        e.done = true
      end
      local legit = 0
      -- Runs the floods of `list` at once; meanwhile samples a1's RSS and
      -- has a legitimate client call b1 through a1 (over HTTP /rpc).
      local function attack(list)
        for k, e in pairs(list) do rn.spawn(flood, e, k) end
        local last_legit = rn.now()
        MH.wait_until(function()
          peak = math.max(peak, rss_kib(m, "a1"))
          if rn.now() - last_legit > 2 then
            legit = legit + 1
            assert.equal(legit, rpc_ok(m, "a1", "b1", "increment"))
            last_legit = rn.now()
          end
          for _, e in pairs(list) do
            if not e.done then return false end
          end
          return true
        end, "the floods to end", 120)
      end
      local t0 = rn.now()
      -- links 1-4 together fill the node: 2048 forwards each (their per-link
      -- cap) are exactly max_forwards; then link 5 finds the node full
      local evil = {}
      for k = 1, 4 do evil[k] = evil_link(m, "a1", "evil" .. k) end
      attack(evil)
      evil[5] = evil_link(m, "a1", "evil5")
      attack({ [5] = evil[5] })
      local took = rn.now() - t0
      local total = 5 * PER
      local held = { per_link, per_link, per_link, per_link, 0 }
      for k, e in ipairs(evil) do
        MH.wait_until(function() return e.answers >= PER - held[k] end, "evil" .. k .. "'s answers", 30)
        assert.equal(PER - held[k], e.busy, "EBUSY answers on evil" .. k)
        assert.equal(0, e.other, e.last_other)
        assert.is_true(e.c:is_open())
      end
      legit = legit + 1
      assert.equal(legit, rpc_ok(m, "a1", "b1", "increment"))
      assert.truthy(keys(evil[1].why):find("(mesh max_forwards_per_link)", 1, true), keys(evil[1].why))
      assert.truthy(keys(evil[5].why):find("(mesh max_forwards)", 1, true), keys(evil[5].why))
      local st = stats_of(m, "a1")
      peak = math.max(peak, rss_kib(m, "a1"))
      assert.equal(node_cap, st.forwarded_in_flight)
      assert.equal(total - node_cap, st.forwards_refused)
      MH.wait_until(function() return sk.calls == node_cap end, "the sink to get " .. node_cap .. " calls", 20)
      assert(peak - base < RSS_BOUND_KIB, string.format("RSS grew by %d KiB (base %d KiB)", peak - base, base))
      -- the attackers leave: the forwards they were owed are dropped
      for _, e in ipairs(evil) do e.c:close_wait(1000, "bye") end
      MH.wait_until(function() return stats_of(m, "a1").forwarded_in_flight == 0 end,
        "a1 to drop the forwards", 20)
      -- forwards live for the call's own timeout (plus forward_slack, 2 s),
      -- not for max_timeout
      local e = evil_link(m, "a1", "evil9")
      local before = stats_of(m, "a1")
      for i = 1, 200 do
        assert(e.c:send(string.format('{"type":"server_call","id":"short-%d","from":"evil9","to":"sink",' ..
          '"ttl":8,"route":["evil9"],"data":{"server":"counter","method":"get","args":[],"timeout_ms":1500}}', i)))
      end
      MH.wait_until(function() return stats_of(m, "a1").forwarded_in_flight == 200 end, "200 forwards", 10)
      local t1 = rn.now()
      MH.wait_until(function() return stats_of(m, "a1").forwarded_in_flight == 0 end,
        "the short forwards to expire", 15)
      local gone = rn.now() - t1
      assert.equal(200, stats_of(m, "a1").forwards_expired - before.forwards_expired)
      assert(gone < 10, "short forwards lived " .. gone .. " s")
      assert.equal(legit + 1, rpc_ok(m, "a1", "b1", "increment"))
      local after = rss_back(m, "a1", base, peak)
      print(string.format("\n  relay flood: %d calls in %.1f s; RSS base %d KiB, peak %d KiB (+%d), after %d KiB",
        total, took, base, peak, peak - base, after))
      e.c:close_wait(1000, "bye")
      sk.c:close_wait(1000, "bye")
    end, { timeout = 240 })
  end)

  it("served calls that suspend are bounded per node: EBUSY past max_served", function()
    MH.run(function(m)
      local saved = rn.mesh_config.max_served
      rn.mesh_config.max_served = 50
      local ok, err = pcall(function()
        rn.expose("hold", { wait = function()
          rn.sleep(5)
          return "released"
        end })
        m:join({}, { listen = true })
        m:start("q1", { peers = { "tester" } })
        m:wait_converged()
        local parts = {}
        for i = 1, 80 do
          parts[i] = string.format(
            '{"jsonrpc":"2.0","id":%d,"method":"remote_call","params":["tester","hold","wait",[],3]}', i)
        end
        local res = assert(m:rpc_raw("q1", "[" .. table.concat(parts, ",") .. "]", 30))
        local busy, timedout = 0, 0
        for _, r in ipairs(res) do
          local code = r.error and r.error.data and r.error.data.code
          if code == "EBUSY" then
            busy = busy + 1
            assert.truthy(r.error.message:find("(mesh max_served)", 1, true), r.error.message)
            assert.equal(-32008, r.error.code)
          elseif code == "ETIMEDOUT" then
            timedout = timedout + 1
          end
        end
        assert.equal(30, busy)
        assert.equal(50, timedout)
        assert.equal(30, rn.mesh_status().stats.served_refused)
        MH.wait_until(function() return rn.mesh_status().stats.served_in_flight == 0 end,
          "the served calls to time out", 10)
        rn.unexpose("hold")
      end)
      rn.mesh_config.max_served = saved
      assert(ok, err)
    end, { timeout = 60 })
  end)
end)

describe("attack: numbers", function()
  -- POST /rpc with a raw body: the raw response text.
  local function post(m, id, body)
    local status, out = H.curl("-X POST -H 'content-type: application/json' --data-binary "
      .. H.q(body) .. " " .. H.q(m:http(id) .. "/rpc"), 30)
    assert.equal(200, status, out)
    return out
  end

  it("JSON-RPC ids are echoed exactly whatever their size; non-finite numbers never look like ELINKLOST",
    function()
      MH.run(function(m)
        m:start_topology("line", { "a1", "b1" })
        m:join({ "a1" })
        m:wait_converged()
        for _, id in ipairs({ "18446744073709551616", "9223372036854775808", "-9223372036854775809",
          "9223372036854775807", "-9223372036854775808", "123456789012345678901234567890",
          "12345678901234567e3", "9007199254740993", "-1.5E+300" }) do
          local out = post(m, "a1", '{"jsonrpc":"2.0","id":' .. id .. ',"method":"counter.get"}')
          assert.equal('{"jsonrpc":"2.0","id":' .. id .. ',"result":0}', out)
          -- in a batch, with the id member not first and a nested "id" in params
          out = post(m, "a1", '[{"method":"counter.echo","params":[{"id":1}],"id" : ' .. id ..
            ',"jsonrpc":"2.0"},{"jsonrpc":"2.0","id":' .. id .. ',"method":"nope.x"}]')
          local first = '{"jsonrpc":"2.0","id":' .. id .. ',"result":{"id":1}}'
          assert.equal(first, out:sub(2, #first + 1), out)
          assert.truthy(out:find(',{"jsonrpc":"2.0","id":' .. id .. ',"error":', 1, true), out)
          -- also over a relayed remote_call
          out = post(m, "a1", '{"jsonrpc":"2.0","id":' .. id ..
            ',"method":"remote_call","params":["b1","counter","whoami"]}')
          assert.equal('{"jsonrpc":"2.0","id":' .. id .. ',"result":"b1"}', out)
        end
        -- numbers beyond the double range are refused when decoding: a parse
        -- error, never an ELINKLOST from a call that could not be relayed
        local out = post(m, "a1",
          '{"jsonrpc":"2.0","id":1,"method":"remote_call","params":["b1","counter","echo",[1e400]]}')
        local v = json.decode(out)
        assert.equal(-32700, v.error.code, out)
        -- the Lua API: arguments JSON cannot hold fail with EINVAL, at once,
        -- and nothing is logged
        local before = rn.mesh_status().stats
        local cases = {
          { { math.huge }, "argument 1 of counter.echo cannot be sent: cannot encode NaN or infinity" },
          { { 1, -math.huge }, "argument 2 of counter.echo cannot be sent: cannot encode NaN or infinity" },
          { { 0 / 0 }, "argument 1 of counter.echo cannot be sent: cannot encode NaN or infinity" },
          { { "a", "b", print }, "argument 3 of counter.echo cannot be sent: cannot encode a value of type function" },
          { { { x = { math.huge } } }, "argument 1 of counter.echo cannot be sent: cannot encode NaN or infinity" },
        }
        for _, case in ipairs(cases) do
          local res, err, code = rn.remote_call("b1", "counter", "echo", case[1], 5)
          assert.is_nil(res)
          assert.equal("EINVAL", code, err)
          assert.equal("EINVAL: " .. case[2], err)
        end
        local after = rn.mesh_status().stats
        assert.equal(5, after.unencodable - before.unencodable)
        assert.equal(before.calls_sent, after.calls_sent)
        -- a relay that gets 100 calls carrying 1e400 drops them as bad
        -- messages without a log line per message
        local e = evil_link(m, "a1", "evil")
        local st0 = stats_of(m, "a1")
        local err0 = m:stderr("a1")
        for i = 1, 100 do
          assert(e.c:send('{"type":"server_call","id":"inf-' .. i .. '","from":"evil","to":"b1","ttl":8,' ..
            '"route":["evil"],"data":{"server":"counter","method":"echo","args":[1e400],"timeout_ms":5000}}'))
        end
        MH.wait_until(function() return stats_of(m, "a1").bad_messages - st0.bad_messages >= 100 end,
          "a1 to drop 100 bad calls", 10)
        assert.equal(100, stats_of(m, "a1").bad_messages - st0.bad_messages)
        assert.equal(0, e.other)
        assert.equal(err0, m:stderr("a1"))
        -- the counter refuses to wrap at 2^63 (and at -2^63)
        assert.equal(math.maxinteger, rn.remote_call("b1", "counter", "increment", { math.maxinteger }, 5))
        local res, err, code = rn.remote_call("b1", "counter", "increment", { 1 }, 5)
        assert.is_nil(res)
        assert.equal("EREMOTE", code)
        assert.truthy(err:find("would overflow", 1, true), err)
        assert.equal(math.maxinteger, rn.remote_call("b1", "counter", "get", {}, 5))
        assert.equal('{"jsonrpc":"2.0","id":1,"result":9223372036854775807}',
          post(m, "a1", '{"jsonrpc":"2.0","id":1,"method":"remote_call","params":["b1","counter","get"]}'))
        assert.equal(0, rn.remote_call("b1", "counter", "reset", {}, 5))
        assert.equal(math.mininteger, rn.remote_call("b1", "counter", "increment", { math.mininteger }, 5))
        res, err = rn.remote_call("b1", "counter", "increment", { -1 }, 5)
        assert.is_nil(res)
        assert.truthy(err:find("would overflow", 1, true), err)
        e.c:close_wait(1000, "bye")
      end, { timeout = 90 })
    end)
end)
