-- spec/conformance_spec.lua: RFC 6455 conformance of the WebSocket server as
-- a conformance suite sees it (issue 11). Raw frames come from
-- spec/support/conformance.py, which records every frame the server sends in
-- the order it arrives; python3-websockets drives the cases a real client
-- meets. The server is examples/echo.lua's (its start()), with its default
-- limits (max_message 1 MiB, rx_buffer 1 KiB). Every test then proves that
-- the server still serves a fresh client.

local H = require("helper")
local rn = require("relaynet")
local json = require("relaynet.json")

local TOOL = H.ROOT .. "/spec/support/conformance.py"
local echo = dofile(H.ROOT .. "/examples/echo.lua")

-- The 4-byte UTF-8 message conformance.py sends (its UTF8_4).
local UTF8_4 = "\u{1D11E} a \u{1F600} b \u{10348}\u{1F680}"

local function hex(s)
  return (s:gsub(".", function(ch) return string.format("%02x", ch:byte()) end))
end

-- Runs one conformance.py probe against `port`: the decoded JSON line.
local function probe(port, name, extra, timeout)
  local cmd = string.format("%s %s %s --port %d %s", H.PY, H.q(TOOL), name, port, extra or "")
  local rc, out, err = H.sh(cmd):wait(timeout or 30)
  assert(rc == 0, "conformance.py " .. name .. " exited with " .. tostring(rc) .. ": " .. err)
  local line = out:match("[^\n]+")
  local res, derr = json.decode(line or "")
  assert(type(res) == "table",
    "conformance.py " .. name .. " printed no JSON (" .. tostring(derr) .. "): " .. out .. err)
  assert(res.result ~= "error", "conformance.py " .. name .. " failed: " .. tostring(res.error))
  res.raw = line
  return res
end

-- The server's frames as short strings, in order: "pong:<payload>",
-- "text:<text>", "close:<code>", "eof".
local function seq(r)
  local out = {}
  for i, e in ipairs(r.events) do
    if e.kind == "pong" or e.kind == "ping" then
      local p = e.hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
      out[i] = e.kind .. ":" .. p
    elseif e.kind == "text" then
      out[i] = "text:" .. (e.hex == hex(UTF8_4) and "UTF8_4" or e.text)
    elseif e.kind == "close" then
      out[i] = "close:" .. tostring(e.code)
    else
      out[i] = e.kind
    end
  end
  return out
end

-- examples/echo.lua's server on a free port; srv.closes records what its
-- close handler sees.
local function start_echo()
  local srv = assert(echo.start(0, "127.0.0.1"))
  srv.closes = {}
  srv:on("close", function(id, code, reason)
    srv.closes[#srv.closes + 1] = { id = id, code = code, reason = reason }
  end)
  return srv
end

-- Waits (up to 5 s) for the close handler to have run n times.
local function closes(srv, n)
  local deadline = rn.now() + 5
  while #srv.closes < n and rn.now() < deadline do rn.sleep(0.01) end
  return srv.closes
end

-- A fresh client still gets its echo and closes cleanly.
local function assert_serves(srv, context)
  local c, err = rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/", { timeout = 5 })
  assert(c, "after " .. context .. ": a fresh client cannot connect: " .. tostring(err))
  assert(c:send("still serving"))
  local msg, e2 = c:receive(5)
  assert.are.equal("still serving", msg, "after " .. context .. ": no echo (" .. tostring(e2) .. ")")
  assert.are.equal(1000, c:close_wait(1000, "done", 5))
end

-- Runs probe `name` against a fresh echo server, then check(r, srv), then
-- the liveness check.
local function with_probe(name, extra, check)
  H.run(function()
    local srv = start_echo()
    local r = probe(srv.port, name, extra)
    check(r, srv)
    assert_serves(srv, name .. " " .. (extra or ""))
  end, { timeout = 40 })
end

describe("a ping between the fragments of a message", function()
  -- RFC 6455 5.4/5.5.2: control frames may come between fragments and are
  -- answered as soon as practical; the pong answers a ping that came before
  -- the message was complete, so it goes out before the echo.
  local cases = {
    { "ping-between-fragments", "one TCP write", "text:Hello, fragmented world" },
    { "ping-between-fragments-split", "a TCP write per frame", "text:Hello, fragmented world" },
    { "big-fragments-with-ping", "fragments larger than rx_buffer",
      "text:" .. string.rep("a", 3000) .. string.rep("b", 3000) },
  }
  for _, case in ipairs(cases) do
    it("is answered (pong) before the echoed message: " .. case[2], function()
      with_probe(case[1], "--timeout 5", function(r)
        assert.are.same({ "pong:ping-1", case[3], "close:1000", "eof" }, seq(r), r.raw)
        assert.is_true(r.handshake, r.raw)
      end)
    end)
  end

  it("two pings, one after a pause: both pongs come before the echo", function()
    with_probe("pings-between-fragments", "--timeout 5", function(r)
      assert.are.same({ "pong:ping-1", "pong:ping-2", "text:frag1 frag2 frag3 frag4 frag5", "close:1000", "eof" },
        seq(r), r.raw)
      -- the first pong did not wait for the rest of the message (0.3 s later)
      assert(r.events[1].t < 0.25, "the first pong waited for the message: " .. r.raw)
    end)
  end)

  it("KNOWN DEVIATION: a ping then a whole message in one read may be answered after the echo", function()
    -- libwebsockets 4.1.6 answers pings itself and tells the protocol
    -- nothing about them (README, Known limitations); relaynet holds its
    -- replies back only after a message that arrived in several frames.
    -- What is pinned: both come back and the closing handshake completes.
    for _, name in ipairs({ "ping-then-message", "message-ping-message" }) do
      with_probe(name, "--timeout 5", function(r)
        local s = seq(r)
        local pongs, texts = 0, 0
        for _, x in ipairs(s) do
          if x == "pong:ping-1" then pongs = pongs + 1 end
          if x:match("^text:") then texts = texts + 1 end
        end
        assert.are.equal(1, pongs, r.raw)
        assert.are.equal(name == "ping-then-message" and 1 or 2, texts, r.raw)
        assert.are.same({ "close:1000", "eof" }, { s[#s - 1], s[#s] }, r.raw)
      end)
    end
  end)
end)

describe("frame lengths", function()
  local HUGE = "9223372036854775807" -- 2^63 - 1
  it("a frame announcing 2^63-1 bytes gets close 1009 at its first piece", function()
    with_probe("huge-length", "--timeout 5 --length " .. HUGE .. " --send-bytes 65536", function(r, srv)
      assert.are.equal(1009, r.close_code, r.raw)
      assert(r.close_t < 1, "close 1009 came late: " .. r.raw)
      -- refused at the first piece of payload, not after max_message
      assert(r.sent <= 4096, "the server read " .. r.sent .. " bytes first: " .. r.raw)
      assert.are.equal(1009, closes(srv, 1)[1].code)
    end)
  end)

  it("a frame announcing more than max_message (2 MB) gets close 1009 at once", function()
    with_probe("huge-length", "--timeout 5 --length 2000000 --send-bytes 65536", function(r, srv)
      assert.are.equal(1009, r.close_code, r.raw)
      assert(r.close_t < 1, "close 1009 came late: " .. r.raw)
      assert(r.sent <= 4096, "the server read " .. r.sent .. " bytes first: " .. r.raw)
      assert.are.equal(1009, closes(srv, 1)[1].code)
    end)
  end)

  it("a header announcing 2^63-1 bytes and one byte of payload: close 1009 at once", function()
    with_probe("huge-length", "--timeout 5 --length " .. HUGE .. " --send-bytes 1", function(r, srv)
      assert.are.equal(1009, r.close_code, r.raw)
      assert(r.close_t < 1, "close 1009 came late: " .. r.raw)
      assert.are.equal(1009, closes(srv, 1)[1].code)
    end)
  end)

  it("KNOWN DEVIATION: a header announcing 2^63-1 bytes with no payload yet is not answered", function()
    -- libwebsockets 4.1.6 parses the header and calls the protocol only with
    -- payload bytes: until the first one arrives nothing can refuse the
    -- frame (README, Known limitations).
    with_probe("huge-length", "--timeout 1 --length " .. HUGE .. " --send-bytes 0", function(r)
      assert.are.equal(json.null, r.close_code, r.raw)
      assert.are.equal("timeout", r.result, r.raw)
    end)
  end)

  it("a 64-bit length with the top bit set gets close 1002 at once", function()
    with_probe("huge-length", "--timeout 5 --length 9223372036854775808", function(r, srv)
      assert.are.equal(1002, r.close_code, r.raw)
      assert(r.close_t < 1, "close 1002 came late: " .. r.raw)
      assert.are.equal(1002, closes(srv, 1)[1].code)
    end)
  end)

  it("the top bit set, with payload bytes after the header: close 1002 at once", function()
    with_probe("huge-length", "--timeout 2 --length 18446744073709551615 --send-bytes 100", function(r, srv)
      assert.are.equal(1002, r.close_code, r.raw)
      assert(r.close_t < 1, "close 1002 came late: " .. r.raw)
      assert.are.equal(1002, closes(srv, 1)[1].code)
    end)
  end)

  it("a control frame announcing more than 125 bytes gets close 1002", function()
    with_probe("control-extended-length", "--timeout 2", function(r, srv)
      assert.are.equal(1002, r.close_code, r.raw)
      assert(r.close_t < 1, "close 1002 came late: " .. r.raw)
      assert.are.equal(1002, closes(srv, 1)[1].code)
    end)
  end)

  it("python3-websockets sending 2 MB gets close 1009", function()
    with_probe("ws-too-big", "--timeout 5 --length 2000000", function(r)
      assert.are.equal(1009, r.code, r.raw)
      assert(r.after_s < 2, "close 1009 came late: " .. r.raw)
    end)
  end)
end)

describe("the closing handshake after a valid 4-byte UTF-8 message", function()
  local splits = {
    none = "one frame, one write",
    frames = "a fragment per code point",
    mid = "fragments cutting code points",
    bytes = "one frame, a TCP write per byte",
    ["frames-bytes"] = "fragments cutting code points, a TCP write per byte",
    octets = "a fragment per byte",
    ["octets-writes"] = "a fragment per byte, a TCP write each",
  }
  local names = {}
  for k in pairs(splits) do names[#names + 1] = k end
  table.sort(names)

  for _, split in ipairs(names) do
    it("echoes it and completes: " .. splits[split], function()
      with_probe("utf8-4byte", "--timeout 5 --split " .. split, function(r, srv)
        assert.are.same({ "text:UTF8_4", "close:1000", "eof" }, seq(r), r.raw)
        assert.is_true(r.handshake, r.raw)
        assert(r.close_t < 1, "the close reply came late: " .. r.raw)
        assert.are.equal(1000, closes(srv, 1)[1].code)
      end)
    end)

    it("completes when the close follows without waiting for the echo: " .. splits[split], function()
      with_probe("utf8-4byte-close-race", "--timeout 5 --split " .. split, function(r)
        local s = seq(r)
        -- the echo may come (before the close frame) or not; nothing after
        if #s == 3 then
          assert.are.equal("text:UTF8_4", s[1], r.raw)
          table.remove(s, 1)
        end
        assert.are.same({ "close:1000", "eof" }, s, r.raw)
        assert.is_true(r.handshake, r.raw)
        assert(r.close_t < 1, "the close reply came late: " .. r.raw)
      end)
    end)
  end

  it("completes when the message and the close frame share one write", function()
    with_probe("utf8-4byte-close-together", "--timeout 5", function(r)
      local s = seq(r)
      if #s == 3 then table.remove(s, 1) end
      assert.are.same({ "close:1000", "eof" }, s, r.raw)
      assert.is_true(r.handshake, r.raw)
    end)
  end)

  it("completes when the close arrives while the server is still writing large echoes", function()
    -- Four messages of about 1 MB from a client with a 4 KiB receive buffer
    -- that reads nothing until it has sent its close frame: the close
    -- arrives while libwebsockets holds part of an echo, and lws 4.1.6
    -- answers a close it parses then by dropping the socket without a close
    -- frame. relaynet stops reading while lws holds a partial write.
    with_probe("close-while-writing", "--timeout 15", function(r)
      local s = seq(r)
      assert(#s >= 2, r.raw)
      assert.are.same({ "close:1000", "eof" }, { s[#s - 1], s[#s] }, r.raw)
      for i = 1, #s - 2 do assert.are.equal("text", s[i]:match("^text"), r.raw) end
      assert.is_true(r.handshake, r.raw)
    end)
  end)

  it("python3-websockets: echoed whole and fragmented, each closed with 1000 at once", function()
    with_probe("ws-utf8", "--timeout 5", function(r)
      assert.are.equal(4, #r.runs, r.raw)
      for _, run in ipairs(r.runs) do
        assert.is_true(run.echo_ok, r.raw)
        assert.are.equal(1000, run.code, r.raw)
        assert(run.close_s < 1, "closing took " .. run.close_s .. " s: " .. r.raw)
      end
    end)
  end)
end)
