-- spec/protocol_spec.lua: every protocol limit, proven over real sockets with
-- a raw-socket probe (spec/support/probe.py) that nobody in relaynet wrote the
-- framing for. Each test starts its own echo server, runs one probe, asserts
-- the exact RFC 6455 / HTTP outcome, and then proves the server still serves
-- a fresh client (WebSocket echo round trip and a plain HTTP GET).

local H = require("helper")
local rn = require("relaynet")
local json = require("relaynet.json")

local PROBE = H.ROOT .. "/spec/support/probe.py"
local MAX_MESSAGE = 1024
local MAX_BODY = 1024

-- Runs one probe against `port`: the decoded JSON line.
local function probe(port, name, extra, timeout)
  local cmd = string.format("%s %s %s --port %d %s", H.PY, H.q(PROBE), name, port, extra or "")
  local rc, out, err = H.sh(cmd):wait(timeout or 30)
  assert(rc == 0, "probe " .. name .. " exited with " .. tostring(rc) .. ": " .. err)
  local line = out:match("[^\n]+")
  local res, derr = json.decode(line or "")
  assert(type(res) == "table", "probe " .. name .. " printed no JSON (" .. tostring(derr) .. "): " .. out .. err)
  res.raw = line
  return res
end

-- An echo server with small limits; `opts` overrides them.
local function echo_server(opts)
  local o = { max_message = MAX_MESSAGE, max_body = MAX_BODY }
  for k, v in pairs(opts or {}) do o[k] = v end
  local srv = H.listen(o)
  srv:on("message", function(id, data, binary) srv:ws_send(id, data, binary) end)
  srv:route("GET", "/", function() return 200, "home\n" end)
  srv:route("POST", "/", function(req) return 200, "got " .. #req.body .. "\n" end)
  srv.closes = {}
  srv:on("close", function(id, code, reason)
    srv.closes[#srv.closes + 1] = { id = id, code = code, reason = reason }
  end)
  return srv
end

-- Proves the server still serves others: a fresh WebSocket client gets its
-- echo, and a plain HTTP GET is answered. Raises with `context` on failure.
-- With `origin` (servers with an allowlist) the fresh client is the probe's
-- "echo" run sending that Origin, since rn.ws_connect's origin option is
-- tested separately below.
local function assert_serves(srv, context, origin)
  if origin then
    local r = probe(srv.port, "echo", "--timeout 5 --origin " .. H.q(origin))
    assert.are.equal(101, r.status, "after " .. context .. ": fresh client refused: " .. r.raw)
    assert.are.equal("hello probe", r.messages[1] and r.messages[1].text, "after " .. context .. ": " .. r.raw)
    assert.are.equal(1000, r.code, "after " .. context .. ": " .. r.raw)
  else
    local url = "ws://127.0.0.1:" .. srv.port .. "/"
    local c, err = rn.ws_connect(url, { timeout = 5 })
    assert(c, "after " .. context .. ": fresh client cannot connect: " .. tostring(err))
    local payload = "still serving after " .. context
    assert(c:send(payload))
    local msg, e2 = c:receive(5)
    assert.are.equal(payload, msg, "after " .. context .. ": no echo (" .. tostring(e2) .. ")")
    local code = c:close_wait(1000, "done", 5)
    assert.are.equal(1000, code)
  end
  local r = probe(srv.port, "http-get", "--timeout 5")
  assert.are.equal(200, r.status, "after " .. context .. ": HTTP GET failed: " .. r.raw)
  assert.are.equal("home\n", r.body)
end

-- Runs probe `name` against a fresh echo server, then the liveness check,
-- then hands the probe's result to `check(r, srv)`.
local function with_probe(name, extra, check, opts)
  H.run(function()
    local srv = echo_server(opts)
    local r = probe(srv.port, name, extra or "--timeout 5")
    local origin = opts and opts.origins and opts.origins[1]
    local alive, alive_err = pcall(assert_serves, srv, name .. " " .. (extra or ""), origin)
    check(r, srv)
    assert(alive, alive_err)
  end, { timeout = 40 })
end

-- A probe that must end with the server's close frame carrying `code`.
local function expect_close(name, code, extra, opts)
  with_probe(name, extra, function(r)
    assert.are.equal("close", r.result, "probe result: " .. r.raw)
    assert.are.equal(code, r.code, "close code: " .. r.raw)
  end, opts)
end

describe("WebSocket framing errors are answered with close 1002", function()
  it("baseline: a well-formed message is echoed and 1000 is echoed", function()
    with_probe("echo", nil, function(r)
      assert.are.equal("close", r.result, r.raw)
      assert.are.equal(1000, r.code)
      assert.are.equal(1, #r.messages)
      assert.are.equal("hello probe", r.messages[1].text)
      assert.are.equal(1, r.messages[1].opcode)
    end)
  end)

  it("unmasked client frame: KNOWN DEVIATION, accepted (README, Known limitations)", function()
    -- RFC 6455 5.1 says a server MUST close the connection on an unmasked
    -- frame. libwebsockets 4.1.6 does not check the mask bit and exposes no
    -- way to see it, so the frame is processed. This pins today's behaviour:
    -- if it changes, the README must change with it.
    with_probe("unmasked", nil, function(r)
      assert.are.equal(1, #r.messages, r.raw)
      assert.are.equal("not masked", r.messages[1].text)
      assert.are.equal("timeout", r.result, r.raw)
    end)
  end)

  it("reserved data opcode 3 -> 1002", function() expect_close("opcode-3", 1002) end)
  it("reserved control opcode 0xB -> 1002", function() expect_close("opcode-b", 1002) end)
  it("RSV1 set without a negotiated extension -> 1002", function() expect_close("rsv1", 1002) end)
  it("control frame with a 126-byte payload -> 1002", function()
    -- RFC 6455 5.5: control frames carry at most 125 bytes. libwebsockets
    -- 4.1.6 gives up on the frame without a close reason; relaynet adds
    -- 1002 before lws decides how to close (spec/conformance_spec.lua).
    with_probe("control-126", nil, function(r, srv)
      assert.are.equal("close", r.result, r.raw)
      assert.are.equal(1002, r.code, r.raw)
      assert.are.equal(0, #r.messages, r.raw)
      local deadline = rn.now() + 5
      while #srv.closes == 0 and rn.now() < deadline do rn.sleep(0.01) end
      assert.are.equal(1002, srv.closes[1] and srv.closes[1].code)
    end)
  end)
  it("fragmented ping (FIN=0 on a control frame) -> 1002", function() expect_close("fragmented-ping", 1002) end)

  it("nothing after the peer's close frame is delivered (a late fragment or message)", function()
    with_probe("data-after-close", "--timeout 5", function(r)
      assert.are.equal("close", r.result, r.raw)
      assert.are.equal(1000, r.code, r.raw)
      assert.are.same({}, r.messages, r.raw)
    end)
  end)
  it("continuation frame without a started message -> 1002", function()
    expect_close("continuation-first", 1002)
  end)
  it("new text frame while a fragmented message is open -> 1002", function()
    expect_close("text-during-fragment", 1002)
  end)
end)

describe("close frames", function()
  it("a close frame with a 1-byte payload -> 1002", function() expect_close("close-1byte", 1002) end)

  for _, code in ipairs({ 999, 1005, 1006, 1016, 2999, 5000 }) do
    it("invalid close code " .. code .. " -> 1002", function()
      expect_close("close-code", 1002, "--timeout 5 --code " .. code)
    end)
  end

  for _, code in ipairs({ 1000, 1001, 1008, 1011, 3000, 4999 }) do
    it("valid close code " .. code .. " is echoed and reported to the close handler", function()
      with_probe("close-code", "--timeout 5 --code " .. code, function(r, srv)
        assert.are.equal("close", r.result, r.raw)
        assert.are.equal(code, r.code, r.raw)
        -- the server's close handler saw the peer's code and reason (the
        -- probe's connection is the first one to close)
        local seen = srv.closes[1]
        assert(seen, "close handler not called")
        assert.are.equal(code, seen.code)
        assert.are.equal("probe", seen.reason)
      end)
    end)
  end

  -- Self-consistency: every code relaynet's own close() lets an application
  -- send must reach a relaynet server intact (today close() accepts 1012 and
  -- 1013, which lws 4.1.6 rewrites to 1002 on receipt).
  it("every close code relaynet's close() accepts reaches a relaynet server intact", function()
    H.run(function()
      local srv = echo_server()
      local url = "ws://127.0.0.1:" .. srv.port .. "/"
      local got, accepted = {}, {}
      for _, code in ipairs({ 1000, 1001, 1008, 1011, 1012, 1013, 1014, 3000, 4999 }) do
        local c = assert(rn.ws_connect(url, { timeout = 5 }))
        local before = #srv.closes
        local ok = pcall(c.close, c, code, "r" .. code)
        if ok then accepted[#accepted + 1] = code end
        c:close_wait(1000, "", 5) -- waits for the close started above, or closes with 1000
        local deadline = rn.now() + 5
        while #srv.closes == before and rn.now() < deadline do rn.sleep(0.01) end
        if ok then
          local seen = srv.closes[#srv.closes]
          got[#got + 1] = seen and (seen.code .. " " .. seen.reason) or "none"
        end
      end
      local want = {}
      for i, code in ipairs(accepted) do want[i] = code .. " r" .. code end
      assert.are.same(want, got)
    end)
  end)

  it("invalid UTF-8 in a close reason -> 1007", function() expect_close("close-reason-utf8", 1007) end)
end)

describe("UTF-8 validation of text messages -> 1007", function()
  it("invalid byte in a single frame", function() expect_close("utf8-single", 1007) end)
  it("invalid sequence split across fragments", function() expect_close("utf8-fragmented", 1007) end)
  it("message ending inside a multi-byte sequence", function()
    expect_close("utf8-fragmented-final-incomplete", 1007)
  end)
  it("overlong encoding (C0 AF)", function() expect_close("utf8-overlong", 1007) end)
  it("UTF-16 surrogate (ED A0 80)", function() expect_close("utf8-surrogate", 1007) end)
  it("code point above U+10FFFF (F4 90 80 80)", function() expect_close("utf8-above-max", 1007) end)

  it("a valid message fragmented inside multi-byte sequences is echoed intact", function()
    with_probe("fragmented-utf8-valid", nil, function(r)
      assert.are.equal("close", r.result, r.raw)
      assert.are.equal(1000, r.code)
      assert.are.equal(1, #r.messages, r.raw)
      assert.are.equal(1, r.messages[1].opcode)
      assert.are.equal(r.expected_text, r.messages[1].text)
      assert.are.equal("héllo wörld € 𝄞 done", r.messages[1].text)
    end)
  end)
end)

describe("max_message -> 1009", function()
  it("a message of exactly max_message bytes is echoed", function()
    with_probe("big-ok", "--timeout 5 --size " .. MAX_MESSAGE, function(r)
      assert.are.equal("close", r.result, r.raw)
      assert.are.equal(1000, r.code)
      assert.are.equal(1, #r.messages)
      assert.are.equal(MAX_MESSAGE, r.messages[1].len)
    end)
  end)

  it("one frame declaring 4 GiB (payload streamed) -> 1009", function()
    expect_close("too-big-frame", 1009, "--timeout 10 --size " .. 64 * MAX_MESSAGE)
  end)

  it("many small fragments adding up past max_message -> 1009", function()
    expect_close("too-big-fragments", 1009, "--timeout 10 --size " .. 64 * MAX_MESSAGE)
  end)
end)

describe("handshakes", function()
  local ORIGINS = { origins = { "http://ok.example" } }

  it("an allowed Origin is upgraded", function()
    with_probe("hs-upgrade", "--timeout 5 --origin http://ok.example", function(r)
      assert.are.equal(101, r.status, r.raw)
      assert.are.equal(1000, r.code)
    end, ORIGINS)
  end)

  it("accepts the Upgrade token in any case (Upgrade: WebSocket)", function()
    with_probe("hs-upgrade-capital", "--timeout 5", function(r)
      assert.are.equal(101, r.status, r.raw)
      assert.are.equal(1000, r.code, r.raw)
    end)
  end)

  it("a wrong Origin with an allowlist -> HTTP 403", function()
    H.run(function()
      local srv = echo_server(ORIGINS)
      local r = probe(srv.port, "hs-upgrade", "--timeout 5 --origin http://evil.example")
      assert.are.equal("http", r.result, r.raw)
      assert.are.equal(403, r.status, r.raw)
      r = probe(srv.port, "hs-upgrade", "--timeout 5")
      assert.are.equal(403, r.status, "no Origin at all: " .. r.raw)
      assert_serves(srv, "wrong origin", "http://ok.example")
    end)
  end)

  it("rn.ws_connect's origin option reaches the server verbatim", function()
    H.run(function()
      local srv = echo_server(ORIGINS)
      local c, err = rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/", { timeout = 5, origin = "http://ok.example" })
      assert(c, "refused with origin = http://ok.example: " .. tostring(err))
      assert(c:send("with origin"))
      assert.are.equal("with origin", (c:receive(5)))
      assert.are.equal(1000, (c:close_wait(1000, "", 5)))
    end)
  end)

  it("missing Sec-WebSocket-Key -> HTTP 400", function()
    -- RFC 6455 4.2.1/4.2.2: a malformed handshake gets an HTTP error such as 400.
    with_probe("hs-no-key", nil, function(r)
      assert.are.equal("http", r.result, "no HTTP answer at all: " .. r.raw)
      assert.are.equal(400, r.status, r.raw)
    end)
  end)

  it("unsupported Sec-WebSocket-Version (12) -> HTTP 426/400 advertising version 13", function()
    -- RFC 6455 4.2.2: abort the handshake with an HTTP error code (such as
    -- 426) and a Sec-WebSocket-Version header listing the supported versions.
    with_probe("hs-bad-version", nil, function(r)
      assert.are.equal("http", r.result, "the handshake was accepted: " .. r.raw)
      assert(r.status == 426 or r.status == 400, "status: " .. r.raw)
      assert.are.equal("13", r.headers["sec-websocket-version"], r.raw)
    end)
  end)

  it("missing Sec-WebSocket-Version -> HTTP 400", function()
    with_probe("hs-no-version", nil, function(r)
      assert.are.equal("http", r.result, "the handshake was accepted: " .. r.raw)
      assert.are.equal(400, r.status, r.raw)
    end)
  end)

  it("an upgrade past max_connections -> HTTP 503, and a freed slot is usable", function()
    H.run(function()
      local srv = echo_server({ max_connections = 2 })
      local url = "ws://127.0.0.1:" .. srv.port .. "/"
      local a = assert(rn.ws_connect(url, { timeout = 5 }))
      local b = assert(rn.ws_connect(url, { timeout = 5 }))
      local r = probe(srv.port, "hs-upgrade", "--timeout 5")
      assert.are.equal("http", r.result, r.raw)
      assert.are.equal(503, r.status, r.raw)
      -- the two admitted clients are unaffected
      assert(a:send("a")); assert.are.equal("a", (a:receive(5)))
      assert(b:send("b")); assert.are.equal("b", (b:receive(5)))
      assert.are.equal(1000, (a:close_wait(1000, "", 5)))
      local deadline = rn.now() + 5
      while srv:connection_count() > 1 and rn.now() < deadline do rn.sleep(0.02) end
      assert.are.equal(1, srv:connection_count())
      assert_serves(srv, "max_connections")
      b:close_wait()
    end)
  end)
end)

describe("keepalive", function()
  it("a client that never answers pings is hung up after pong_timeout", function()
    H.run(function()
      local srv = echo_server({ ping_interval = 1, pong_timeout = 2 })
      -- the probe's own 15 s timeout is only a safety net
      local r = probe(srv.port, "no-pong", "--timeout 15")
      assert(r.pings >= 1, "the server never pinged: " .. r.raw)
      assert(r.result == "eof" or r.result == "close", "not hung up: " .. r.raw)
      local deadline = rn.now() + 5
      while #srv.closes == 0 and rn.now() < deadline do rn.sleep(0.02) end
      assert.are.equal(1, #srv.closes)
      assert.are.equal(1006, srv.closes[1].code)
      assert_serves(srv, "no-pong")
    end, { timeout = 40 })
  end)

  it("a client that answers pings stays connected", function()
    H.run(function()
      local srv = echo_server({ ping_interval = 1, pong_timeout = 2 })
      -- "hold" answers pings and ends with "timeout" when nobody hung up
      local r = probe(srv.port, "hold", "--timeout 5")
      assert.are.equal("timeout", r.result, r.raw)
      assert(r.pings >= 2, "pings: " .. r.raw)
      assert_serves(srv, "hold")
    end, { timeout = 40 })
  end)
end)

describe("HTTP limits (raw requests)", function()
  local function expect_status(name, status, extra, check)
    with_probe(name, extra or "--timeout 5", function(r)
      assert.are.equal("http", r.result, r.raw)
      assert.are.equal(status, r.status, r.raw)
      if check then check(r) end
    end)
  end

  it("a body of exactly max_body is accepted", function()
    expect_status("http-body-ok", 200, "--timeout 5 --size " .. MAX_BODY, function(r)
      assert.are.equal("got " .. MAX_BODY .. "\n", r.body)
    end)
  end)
  it("a body over max_body -> 413", function()
    expect_status("http-body-too-big", 413, "--timeout 5 --size " .. (MAX_BODY + 1))
  end)
  it("a chunked request body -> 411", function() expect_status("http-chunked", 411) end)
  it("an unknown path -> 404", function() expect_status("http-unknown-path", 404) end)
  it("a wrong method -> 405 with Allow", function()
    expect_status("http-wrong-method", 405, nil, function(r)
      assert.are.equal("GET, POST", r.headers.allow)
    end)
  end)
  it("a non-numeric Content-Length -> 400", function() expect_status("http-bad-content-length", 400) end)
  it("a negative Content-Length -> 400", function() expect_status("http-negative-content-length", 400) end)
  it("a Content-Length with a sign (+5) -> 400", function() expect_status("http-plus-content-length", 400) end)
  -- RFC 9110 asks for a 4xx (431) here; libwebsockets 4.1.6 drops the
  -- connection inside its header parser, before relaynet sees the request.
  -- KNOWN DEVIATION (README, Known limitations): pinned, and the server must
  -- keep serving others.
  local function expect_dropped(name)
    with_probe(name, "--timeout 5", function(r)
      assert.are.equal("eof", r.result, r.raw)
      assert.is_nil(r.status, r.raw)
    end)
  end
  it("request headers over 8 KB in total: KNOWN DEVIATION, dropped", function()
    expect_dropped("http-big-headers")
  end)
  it("a single header value over 8 KB: KNOWN DEVIATION, dropped", function()
    expect_dropped("http-big-header-value")
  end)
end)
