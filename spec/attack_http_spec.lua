-- spec/attack_http_spec.lua: the HTTP and WebSocket bounds under attack, with
-- real processes over real sockets.
--
-- The server is examples/echo.lua's, started with its default limits by
-- spec/support/limits_server.lua (which adds GET /limits-stats). The attacker
-- is spec/support/attack_http.py; it attacks from 127.0.0.1 while a legitimate
-- client bound to 127.0.0.2 (loopback too, but another source address)
-- keeps asking for answers, and it samples the server's RSS. Every attack
-- is bounded in count and time. Asserted for each attack: the process
-- survives, RSS stays under baseline + 64 MiB (slow readers: + 96 MiB, see
-- there) and ends within 16 MiB of the baseline, the legitimate client is
-- always answered, the attacker gets the documented refusal, and the server
-- counts it.

local H = require("helper")
local rn = require("relaynet")
local json = require("relaynet.json")
local harness = require("mesh_harness")

local SERVER = H.ROOT .. "/spec/support/limits_server.lua"
local ATTACK = H.ROOT .. "/spec/support/attack_http.py"
local PER_IP = rn.DEFAULT_LIMITS.max_connections_per_ip

-- Starts the server on a free port and returns its sh handle and process
-- id. Retries on another port when the first one was taken meanwhile (the
-- specs of other processes pick free ports too).
local function start_server(pidfile)
  local last_err
  for _ = 1, 3 do
    local port = harness.free_ports(1)[1]
    -- The flood needs more descriptors than the common 1024 default.
    local server = H.sh("ulimit -n 8192 2>/dev/null; exec lua5.4 " .. H.q(SERVER) .. " " .. port ..
      " " .. H.q(pidfile))
    local deadline = rn.now() + 20
    while rn.now() < deadline do
      local f = io.open(pidfile)
      local pid = f and tonumber(f:read("l"))
      if f then f:close() end
      if pid then return server, port, pid end
      local done = io.open(server.base .. ".rc")
      if done then -- it exited: say why
        done:close()
        local _, out, err = server:wait(1)
        last_err = out .. err
        break
      end
      rn.sleep(0.1)
    end
    server:kill()
    last_err = last_err or "no pid file within 20 s"
  end
  error("the server did not start: " .. last_err)
end

-- Starts the server, runs the attacker in `mode` against it and returns the
-- attacker's JSON report.
local function attack(mode, n, timeout)
  local report
  H.run(function()
    local pidfile = os.tmpname()
    os.remove(pidfile)
    local server, port, pid = start_server(pidfile)
    local ok, err = pcall(function()
      assert(H.curl("http://127.0.0.1:" .. port .. "/"))
      local rc, out, perr = H.sh(H.PY .. " " .. H.q(ATTACK) .. " " .. mode .. " " .. port .. " " .. pid ..
        " " .. (n or 0)):wait(timeout)
      assert(rc == 0, "attacker failed: " .. tostring(perr))
      report = assert(json.decode(out))
    end)
    server:kill()
    os.remove(pidfile)
    assert(ok, err)
  end, { timeout = timeout + 90 })
  return report
end

-- Under `make test-asan` the server carries the ASan runtime, whose
-- quarantine keeps freed blocks mapped (up to 256 MiB): RSS does not come
-- back down there, so only the peak is checked.
local ASAN = (os.getenv("LD_PRELOAD") or ""):find("asan") ~= nil

local function assert_memory(r)
  assert.is_true(r.server_alive, "the server died")
  assert.is_true(r.max_rss_kb < r.base_rss_kb + 64 * 1024,
    ("RSS %d KiB over baseline %d KiB + 64 MiB"):format(r.max_rss_kb, r.base_rss_kb))
  if not ASAN then
    assert.is_true(r.after_rss_kb < r.base_rss_kb + 16 * 1024,
      ("RSS %d KiB after the attack, baseline %d KiB"):format(r.after_rss_kb, r.base_rss_kb))
  end
end

describe("HTTP and WebSocket bounds under attack", function()
  it("defaults apply to loopback and are documented in rn.DEFAULT_LIMITS", function()
    local d = rn.DEFAULT_LIMITS
    assert.equal(30, d.body_timeout)
    assert.equal(1024, d.body_min_rate)
    assert.equal(256, d.max_connections_per_ip)
    assert.equal(1000, d.ws_msg_rate)
    assert.equal(2000, d.ws_msg_burst)
    assert.equal(4 * 1024 * 1024, d.ws_byte_rate)
    assert.equal(8 * 1024 * 1024, d.ws_byte_burst)
    assert.equal(64 * 1024 * 1024, d.max_buffered)
  end)

  it("slow POST bodies from one address: 408 after the grace, the rest refused at accept", function()
    local n = PER_IP + 144
    local r = attack("slowpost", n, 90)
    assert_memory(r)
    -- Every connection the server took got 408 Request Timeout; the
    -- others were closed at accept (the per-address share was full).
    assert.same({ ["408"] = PER_IP }, r.statuses)
    assert.equal(n - PER_IP, r.closed_silently)
    assert.equal(0, r.unresolved)
    -- A body of 1 byte per 2 s is far under body_min_rate: refused once the
    -- 5 s grace is over, well before body_timeout.
    assert.is_true(r.first_answer_s >= 4 and r.last_answer_s < 25)
    assert.is_true(r.legit_ok >= 2)
    assert.equal(0, r.legit_fail)
    assert.equal(200, r.legit_after)
    assert.equal(PER_IP, r.stats.server.http_body_timeouts)
    assert.equal(n - PER_IP, r.stats.server.conn_refused_per_ip)
    assert.equal(r.stats.server.http_body_timeouts, r.stats.total.http_body_timeouts)
  end)

  it("a connection flood from one address: its share is capped, other addresses are served", function()
    local n = 3000
    local r = attack("flood", n, 120)
    assert_memory(r)
    assert.equal(n, r.connected)
    assert.equal(PER_IP, r.open_after_2s)
    assert.equal("closed", r.attacker_extra)
    assert.is_true(r.legit_ok >= 4)
    assert.equal(0, r.legit_fail)
    -- Idle connections hit the header deadline (lws, 10 s) and free the slots.
    assert.equal(0, r.open_after_deadline)
    assert.equal(200, r.attacker_after)
    -- The 2,744 refused at once and the attacker's extra connection.
    assert.equal(n - PER_IP + 1, r.stats.server.conn_refused_per_ip)
  end)

  it("a WebSocket message flood and a byte flood are closed with 1008", function()
    local r = attack("wsflood", 0, 90)
    assert_memory(r)
    local msgs, bytes = r.attacks[1], r.attacks[2]
    assert.equal(1008, msgs.code)
    assert.equal("message rate limit exceeded", msgs.reason)
    -- The burst (2,000 messages) and more were accepted first.
    assert.is_true(msgs.sent >= 2000)
    assert.equal(1008, bytes.code)
    assert.equal("byte rate limit exceeded", bytes.reason)
    assert.is_true(r.legit_ok >= 5)
    assert.equal(0, r.legit_fail)
    assert.equal(2, r.stats.server.ws_rate_closes)
  end)

  it("slow readers: echoes nobody reads stay within max_buffered", function()
    -- 100 WebSockets that never read keep sending 512 KiB messages to the
    -- echo server: without a server-wide budget each could hold a 4 MiB send
    -- queue and a 1 MiB reassembly buffer (RSS grew past 280 MiB in 7 s).
    local n = 100
    local budget = rn.DEFAULT_LIMITS.max_buffered
    assert.equal(64 * 1024 * 1024, budget)
    local r = attack("slowread", n, 120)
    assert.is_true(r.server_alive, "the server died")
    assert.equal(n, r.opened)
    -- The bound: the 64 MiB budget, plus at most 16 KiB per connection that
    -- may still go out directly past it, plus 32 MiB for what the budget
    -- does not count: the message in hand (the event's copy, the Lua string,
    -- the echo being written), lws's and the kernel's per-socket state,
    -- allocator slack.
    -- Under ASan its quarantine keeps the freed 512 KiB buffers mapped, so
    -- RSS is checked without it; the count the budget keeps is checked in
    -- both.
    assert.is_true(r.max_buffered_seen <= budget + n * 16384,
      ("buffered %d past the budget"):format(r.max_buffered_seen))
    if not ASAN then
      assert.is_true(r.max_rss_kb < r.base_rss_kb + 64 * 1024 + 32 * 1024,
        ("RSS %d KiB over baseline %d KiB + 96 MiB"):format(r.max_rss_kb, r.base_rss_kb))
      assert.is_true(r.after_rss_kb < r.base_rss_kb + 16 * 1024,
        ("RSS %d KiB after the attack, baseline %d KiB"):format(r.after_rss_kb, r.base_rss_kb))
    end
    -- The budget was reached and refused: sends refused, receivers closed
    -- with 1008 "server receive buffers full" or slow consumers evicted with
    -- 1008 "slow consumer" (the attacker reads nothing, so the counters and
    -- its failed writes are what it gets; core_spec checks the close frames).
    local st = r.stats.server
    assert.is_true(st.buffer_send_refusals + st.buffer_rx_closes + st.buffer_evictions > 0)
    assert.is_true(r.send_errors > 0)
    assert.equal(st.buffer_rx_closes, r.stats.total.buffer_rx_closes)
    -- Everything was given back once the attackers were gone.
    assert.equal(0, st.buffered)
    assert.is_true(r.legit_ok >= 5)
    assert.equal(0, r.legit_fail)
  end)
end)
