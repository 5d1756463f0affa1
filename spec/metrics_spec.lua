-- spec/metrics_spec.lua: GET /metrics, the Prometheus text page of a
-- mesh-enabled server.
--
-- curl reads the page of a server in this process; the values must move
-- with WebSocket traffic, HTTP requests and remote calls, a link to a node
-- process (bin/relaynet) shows its RTT and route. /metrics is protected
-- like the other mesh views: 403 to a non-loopback address (this host's
-- own address on another interface is one, as far as the socket says) and,
-- with a bearer token, 401 without it.

local H = require("helper")
local rn = require("relaynet")
local MH = require("mesh_harness")

-- Parses a page: samples["name{labels}"] = value, and the TYPE of each
-- family. Every line must be a comment, a sample or empty.
local function parse(text)
  local samples, types = {}, {}
  for line in text:gmatch("([^\n]*)\n") do
    if line:match("^# TYPE ") then
      local name, kind = line:match("^# TYPE (%S+) (%S+)$")
      assert.truthy(name, line)
      types[name] = kind
    elseif line:match("^# HELP ") or line == "" then -- luacheck: ignore 542
    else
      local key, value = line:match("^([%w_]+%b{}) (%S+)$")
      if not key then key, value = line:match("^([%w_]+) (%S+)$") end
      assert.truthy(key, "not a sample line: " .. line)
      samples[key] = assert(tonumber(value), line)
    end
  end
  return samples, types
end

local function metrics(port, header)
  local status, body = H.curl((header and ("-H " .. H.q(header) .. " ") or "") ..
    H.q("http://127.0.0.1:" .. port .. "/metrics"))
  assert.equal(200, status, body)
  return parse(body)
end

-- This host's first non-loopback IPv4 address.
local function outside_address()
  local p = io.popen("hostname -I 2>/dev/null")
  local out = p:read("a") or ""
  p:close()
  for a in out:gmatch("%S+") do
    if a:match("^%d+%.%d+%.%d+%.%d+$") and not a:match("^127%.") then return a end
  end
end

describe("GET /metrics", function()
  it("is Prometheus text whose values move with traffic, requests and calls", function()
    H.run(function()
      local srv = H.listen({})
      srv:on("message", function(id, m) srv:ws_send(id, m) end)
      rn.expose("mx", { twice = function(n) return 2 * n end, fail = function() error("no") end })
      local rc, hdr = H.sh("curl -s -S -o /dev/null -D - " ..
        H.q("http://127.0.0.1:" .. srv.port .. "/metrics")):wait(15)
      assert.equal(0, rc)
      assert.truthy(hdr:lower():find("content-type: text/plain; version=0.0.4", 1, true), hdr)
      local s0, types = metrics(srv.port)
      assert.equal("gauge", types.relaynet_websocket_connections)
      assert.equal("counter", types.relaynet_websocket_messages_total)
      assert.equal("counter", types.relaynet_http_requests_total)
      assert.equal("histogram", types.relaynet_remote_call_duration_seconds)
      assert.equal("gauge", types.relaynet_mesh_link_rtt_seconds)
      assert.equal("gauge", types.relaynet_mesh_routes)
      assert.equal("gauge", types.relaynet_queued_bytes)
      assert.equal("counter", types.relaynet_slow_consumer_closes_total)
      assert.truthy(s0['relaynet_http_requests_total{status="200"}'] >= 1)

      -- WebSocket traffic: 5 messages of 10 bytes each way (the client is
      -- in this process too: both ends count)
      local c = assert(rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/echo"))
      for _ = 1, 5 do
        assert(c:send("0123456789"))
        assert.equal("0123456789", c:receive(5))
      end
      local s1 = metrics(srv.port)
      assert.equal(1, s1['relaynet_websocket_connections{direction="in"}'])
      assert.equal(1, s1['relaynet_websocket_connections{direction="out"}'])
      local key_in, key_out = 'relaynet_websocket_messages_total{direction="in"}',
        'relaynet_websocket_messages_total{direction="out"}'
      assert.equal(s0[key_in] + 10, s1[key_in])
      assert.equal(s0[key_out] + 10, s1[key_out])
      assert.equal(s0['relaynet_websocket_bytes_total{direction="in"}'] + 100,
        s1['relaynet_websocket_bytes_total{direction="in"}'])
      assert.equal(0, s1.relaynet_queued_bytes)
      -- the same counts per connection, per server and for the process
      local wi = rn.WebSocket.info(srv:ws_connections()[1])
      assert.same({ 5, 5, 50, 50 }, { wi.messages_in, wi.messages_out, wi.bytes_in, wi.bytes_out })
      local ss = srv:stats()
      assert.same({ 5, 5, 50, 50 }, { ss.messages_in, ss.messages_out, ss.bytes_in, ss.bytes_out })
      assert.equal(s1[key_in], rn.stats().traffic.messages_in)
      c:close_wait(1000, "bye")

      -- HTTP by status
      assert.equal(404, (H.curl(H.q("http://127.0.0.1:" .. srv.port .. "/missing"))))
      local s2 = metrics(srv.port)
      assert.equal((s1['relaynet_http_requests_total{status="404"}'] or 0) + 1,
        s2['relaynet_http_requests_total{status="404"}'])
      assert.equal(s1['relaynet_http_requests_total{status="200"}'] + 1,
        s2['relaynet_http_requests_total{status="200"}'])
      assert.equal(0, s2['relaynet_websocket_connections{direction="in"}'])

      -- remote calls by outcome, and their latency
      assert.equal(42, rn.remote_call(rn.node_id(), "mx", "twice", { 21 }))
      assert.equal(8, rn.remote_call(rn.node_id(), "mx", "twice", { 4 }))
      local _, _, code = rn.remote_call("nobody-here", "mx", "twice", { 1 }, 0.2)
      assert.equal("ENOROUTE", code)
      _, _, code = rn.remote_call(rn.node_id(), "mx", "nothing", {})
      local s3 = metrics(srv.port)
      local function calls(s, outcome) return s['relaynet_remote_calls_total{outcome="' .. outcome .. '"}'] or 0 end
      assert.equal(calls(s2, "ok") + 2, calls(s3, "ok"))
      assert.equal(calls(s2, "ENOROUTE") + 1, calls(s3, "ENOROUTE"))
      assert.equal(calls(s2, code) + 1, calls(s3, code))
      local n0 = s2.relaynet_remote_call_duration_seconds_count
      assert.equal(n0 + 4, s3.relaynet_remote_call_duration_seconds_count)
      assert.equal(s3.relaynet_remote_call_duration_seconds_count,
        s3['relaynet_remote_call_duration_seconds_bucket{le="+Inf"}'])
      -- the buckets are cumulative
      local prev = 0
      for _, b in ipairs({ "0.001", "0.01", "0.1", "1", "10", "30", "+Inf" }) do
        local v = s3['relaynet_remote_call_duration_seconds_bucket{le="' .. b .. '"}']
        assert.truthy(v and v >= prev, b)
        prev = v
      end
      assert.truthy(s3.relaynet_remote_call_duration_seconds_sum >= 0)
      rn.unexpose("mx")
      srv:close()
    end, { timeout = 60 })
  end)

  it("shows a link's RTT and the routes it brings", function()
    H.run(function()
      rn.mesh_config.ping_interval = 0.2
      local srv = H.listen({})
      local node = H.sh("exec " .. MH.LUA .. " " .. H.q(H.ROOT .. "/bin/relaynet") .. " --port 0 --host 127.0.0.1 " ..
        "--node-id metrics-peer --log-level warn --add-peer " ..
        H.q("ws://127.0.0.1:" .. srv.port .. "/ws/p2p"))
      local ok, err = pcall(function()
        local key = 'relaynet_mesh_link_rtt_seconds{peer="metrics-peer",direction="in"}'
        local s
        MH.wait_until(function()
          s = metrics(srv.port)
          return s[key] ~= nil
        end, "the link's RTT on /metrics", 20)
        assert.truthy(s[key] > 0 and s[key] < 5, tostring(s[key]))
        assert.equal(1, s.relaynet_mesh_links)
        assert.truthy(s.relaynet_mesh_routes >= 1)
        assert.truthy(s.relaynet_mesh_route_entries >= 1)
        -- the link is a WebSocket like any other
        assert.truthy(s['relaynet_websocket_connections{direction="in"}'] >= 1)
      end)
      os.execute("pkill -TERM -P " .. node.pid .. " >/dev/null 2>&1")
      node:wait(20)
      rn.mesh_config.ping_interval = 5
      srv:close()
      assert(ok, err)
    end, { timeout = 60 })
  end)

  it("counts pub/sub, presence, history and call_any traffic between two nodes", function()
    H.run(function()
      local srv = H.listen({})
      local port = MH.free_ports(1)[1]
      local node = H.sh("exec " .. MH.LUA .. " " .. H.q(H.ROOT .. "/bin/relaynet") .. " " ..
        H.q(H.ROOT .. "/spec/support/pubsub_node.lua") .. " --port " .. port .. " --host 127.0.0.1 " ..
        "--node-id metrics-ps --log-level warn --add-peer " .. H.q("ws://127.0.0.1:" .. srv.port .. "/ws/p2p"))
      local handle, watch
      local ok, err = pcall(function()
        local function call(method, args)
          local res, e, code = rn.remote_call("metrics-ps", "ps", method, args, 5)
          assert(e == nil, method .. ": " .. tostring(e) .. " " .. tostring(code))
          return res
        end
        local function topics_of(routes, id)
          for _, r in ipairs(routes) do
            if r.node == id then return table.concat(r.topics or {}, ",") end
          end
        end
        assert(rn.wait_route("metrics-ps", 20))
        MH.wait_until(function()
          for _, r in ipairs(rn.registry()) do
            if r.server == "ps" and r.node == "metrics-ps" then return true end
          end
        end, "server ps of the node in the registry", 10)
        -- the node process counts from zero; this one from before the traffic
        local t0 = metrics(srv.port)

        -- the node subscribes; this node publishes three messages to it
        assert.is_true(call("subscribe", { "mx.n.>" }))
        MH.wait_until(function() return topics_of(rn.routes(), "metrics-ps") == "mx.n.>" end,
          "the node's pattern in its route", 10)
        for i = 1, 3 do assert.equal(1, rn.publish("mx.n.a", "m" .. i)) end
        MH.wait_until(function() return #call("received", { "mx.n.>" }) == 3 end, "3 deliveries on the node", 10)

        -- this node subscribes as a presence member and watches the topic;
        -- the node publishes two messages to it
        local got = 0
        handle = assert(rn.subscribe("mx.t", function() got = got + 1 end, { presence = { name = "t" } }))
        watch = assert(rn.on_presence("mx.t", function() end))
        MH.wait_until(function()
          local status, body = H.curl(H.q("http://127.0.0.1:" .. port .. "/routes"))
          return status == 200 and topics_of(rn.json.decode(body), rn.node_id()) == "mx.t"
        end, "this node's pattern in the node's route", 10)
        call("publish", { "mx.t", "hi", 2 })
        MH.wait_until(function() return got == 2 end, "2 deliveries here", 10)

        -- a history topic that keeps 2 of 3 messages, and a recover of them
        assert(rn.history("mx.h.*", { size = 2 }))
        for i = 1, 3 do assert.equal(0, rn.publish("mx.h.a", "h" .. i)) end
        local list = assert(rn.recover("mx.h.a", rn.node_id(), nil, nil))
        assert.equal(2, #list)

        -- a load-balanced call (to the node, the only one exposing ps)
        assert.equal(3, #assert(rn.call_any("ps", "received", { "mx.n.>" }, 5)))
        local t1 = metrics(srv.port)
        local n1 = metrics(port)
        local function d(key) return t1[key] - t0[key] end

        -- pub/sub, both sides
        assert.equal(6, d("relaynet_pubsub_publishes_total"))
        assert.equal(3, d('relaynet_pubsub_messages_total{event="sent"}'))
        assert.equal(2, d('relaynet_pubsub_messages_total{event="received"}'))
        assert.equal(0, d('relaynet_pubsub_messages_total{event="relayed"}'))
        assert.equal(2, d("relaynet_pubsub_deliveries_total"))
        assert.equal(1, d("relaynet_pubsub_subscriptions"))
        assert.equal(1, d("relaynet_pubsub_subscription_patterns"))
        assert.equal(1, d("relaynet_pubsub_interest_entries"))
        local want_node = {
          relaynet_pubsub_publishes_total = 2,
          ['relaynet_pubsub_messages_total{event="sent"}'] = 2,
          ['relaynet_pubsub_messages_total{event="relayed"}'] = 0,
          ['relaynet_pubsub_messages_total{event="received"}'] = 3,
          relaynet_pubsub_deliveries_total = 3,
          ['relaynet_pubsub_dropped_total{reason="no_route"}'] = 0,
          ['relaynet_pubsub_dropped_total{reason="no_interest"}'] = 0,
          ['relaynet_pubsub_dropped_total{reason="out_of_order"}'] = 0,
          relaynet_pubsub_refused_total = 0,
          relaynet_pubsub_interest_dropped_total = 0,
          relaynet_pubsub_subscriptions = 1,
          relaynet_pubsub_subscription_patterns = 1,
          relaynet_pubsub_interest_entries = t1.relaynet_pubsub_subscription_patterns,
          ['relaynet_presence_changes_total{change="join"}'] = 0,
          relaynet_presence_members = 0,
          relaynet_history_stored_total = 0,
          relaynet_call_any_calls_total = 0,
        }
        for key, v in pairs(want_node) do assert.equal(v, n1[key], key) end

        -- presence here
        assert.equal(1, d('relaynet_presence_changes_total{change="join"}'))
        assert.equal(0, d('relaynet_presence_changes_total{change="leave"}'))
        assert.equal(1, d("relaynet_presence_members"))
        assert.equal(1, d("relaynet_presence_handlers"))
        assert.equal(0, d('relaynet_presence_refused_total{kind="call"}'))

        -- history here: 3 stored, 1 trimmed, 2 kept and recovered
        assert.equal(3, d("relaynet_history_stored_total"))
        assert.equal(1, d('relaynet_history_dropped_total{reason="trimmed"}'))
        assert.equal(0, d('relaynet_history_dropped_total{reason="expired"}'))
        assert.equal(1, d("relaynet_history_topics"))
        assert.equal(2, d("relaynet_history_messages"))
        assert.equal(2 * #"h1" + 2 * #"mx.h.a", d("relaynet_history_bytes"))
        assert.equal(1, d("relaynet_history_recovers_total"))
        assert.equal(2, d("relaynet_history_recovered_messages_total"))
        assert.equal(0, d("relaynet_history_resyncs_total"))

        -- call_any here: one call, one pick, no failover
        assert.equal(1, d("relaynet_call_any_calls_total"))
        assert.equal(1, d("relaynet_call_any_picks_total"))
        assert.equal(0, d("relaynet_call_any_failovers_total"))
        assert.equal(0, d("relaynet_call_any_no_server_total"))
      end)
      if watch then watch:unsubscribe() end
      if handle then handle:unsubscribe() end
      rn.history("mx.h.*", false)
      os.execute("pkill -TERM -P " .. node.pid .. " >/dev/null 2>&1")
      node:wait(20)
      srv:close()
      assert(ok, err)
    end, { timeout = 90 })
  end)

  it("is protected like the other views: 403 to another address, 401 without the token", function()
    H.run(function()
      local addr = outside_address()
      assert(addr, "this host has no non-loopback IPv4 address to ask from")
      local guarded = H.listen({ host = "0.0.0.0" })
      local before = rn.stats().limits.protected_refused
      local status, body = H.curl("--interface " .. addr .. " " .. H.q("http://" .. addr .. ":" .. guarded.port ..
        "/metrics"))
      assert.equal(403, status, body)
      assert.truthy(body:find("protected mode", 1, true), body)
      assert.equal(200, (H.curl(H.q("http://127.0.0.1:" .. guarded.port .. "/metrics"))))
      -- the core's refusal is counted among the 403 answers
      local s = metrics(guarded.port)
      assert.equal(before + 1, s['relaynet_refusals_total{reason="protected_refused"}'])
      assert.truthy(s['relaynet_http_requests_total{status="403"}'] >= 1)

      local token = "metrics-" .. string.rep("t", 16)
      local tokened = H.listen({ host = "0.0.0.0", rpc_token = token })
      local auth = "Authorization: Bearer " .. token
      assert.equal(401, (H.curl(H.q("http://127.0.0.1:" .. tokened.port .. "/metrics"))))
      assert.equal(401, (H.curl("-H " .. H.q("Authorization: Bearer wrong-" .. token) .. " " ..
        H.q("http://127.0.0.1:" .. tokened.port .. "/metrics"))))
      -- with the token, every address is served
      assert.equal(200, (H.curl("-H " .. H.q(auth) .. " --interface " .. addr .. " " ..
        H.q("http://" .. addr .. ":" .. tokened.port .. "/metrics"))))
      metrics(tokened.port, auth)

      -- a server without the mesh has no /metrics
      local plain = H.listen({ mesh = false })
      assert.equal(404, (H.curl(H.q("http://127.0.0.1:" .. plain.port .. "/metrics"))))
      guarded:close()
      tokened:close()
      plain:close()
    end, { timeout = 60 })
  end)
end)
