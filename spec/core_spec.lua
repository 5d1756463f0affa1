-- Runtime and API specs over real sockets with relaynet's own client.

local rn = require("relaynet")
local H = require("helper")

local function echo_server(opts)
  local srv = H.listen(opts)
  srv:on("message", function(id, msg, binary) srv:ws_send(id, msg, binary) end)
  return srv
end

local function url(srv, path)
  return "ws://127.0.0.1:" .. srv.port .. (path or "/")
end

describe("the runtime", function()
  it("runs the main function in a coroutine and returns when nothing is left", function()
    local order = {}
    assert.is_true(rn.run(function(a, b)
      order[#order + 1] = a .. b
      rn.spawn(function(x)
        rn.sleep(0.02)
        order[#order + 1] = x
      end, "spawned")
      rn.sleep(0.01)
      order[#order + 1] = "main"
    end, "ar", "gs"))
    assert.same({ "args", "main", "spawned" }, order)
  end)

  it("rn.sleep suspends only the caller", function()
    local ticks = 0
    H.run(function()
      rn.spawn(function()
        for _ = 1, 5 do ticks = ticks + 1; rn.sleep(0) end
      end)
      rn.sleep(0.05)
      assert.equal(5, ticks)
    end)
  end)

  it("conn_send_many raises on a list entry that is not a connection", function()
    H.run(function()
      local core = require("relaynet.core")
      H.listen() -- the core's loop is set up with the first server
      assert.has_error(function() core.conn_send_many("x", { "nope" }, 1) end,
        "conn_send_many: entry 1 of the list is not a connection")
    end)
  end)

  it("gives random bytes from the CSPRNG, and raises on a bad count", function()
    local a, b = rn.random_bytes(16), rn.random_bytes(16)
    assert.equal(16, #a)
    assert.equal(1024, #rn.random_bytes(1024))
    assert.are_not.equal(a, b)
    assert.has_error(function() rn.random_bytes(0) end)
    assert.has_error(function() rn.random_bytes(1025) end)
    assert.has_error(function() rn.random_bytes("x") end)
  end)

  it("refuses to suspend outside the runtime with an explanation", function()
    local ok, err = pcall(rn.sleep, 0.01)
    assert.is_false(ok)
    assert.matches("rn.sleep suspends the calling coroutine, so it must run inside the relaynet runtime", err, 1, true)
    H.run(function()
      local co = coroutine.create(function() return rn.sleep(0.01) end)
      local ok2, err2 = coroutine.resume(co)
      assert.is_false(ok2)
      assert.matches("call it from rn.run(function() ... end)", err2, 1, true)
    end)
  end)

  it("raises on misuse: bad argument types", function()
    assert.has_error(function() rn.spawn(42) end, "relaynet.spawn: expected a function, got number")
    H.run(function()
      assert.has_error(function() rn.sleep(-1) end, "relaynet.sleep: expected a non-negative number of seconds")
      local srv = H.listen()
      assert.has_error(function() srv:on("nope", print) end,
        "relaynet.on: event must be 'connect', 'message' or 'close'")
      assert.has_error(function() srv:ws_send("c1", {}) end,
        "relaynet.ws_send: message must be a string, got table")
      assert.has_error(function() rn.HttpServer.ws_send("server_0", "c1", "x") end,
        "relaynet.ws_send: unknown server server_0")
      assert.has_error(function() srv:route("FETCH", "/", print) end)
    end)
  end)

  it("a bare coroutine.yield in a handler is not mistaken for a wait", function()
    H.run(function()
      local srv = H.listen()
      srv:on("message", function(id, msg)
        coroutine.yield()
        coroutine.yield("anything")
        srv:ws_send(id, "after yields: " .. msg)
      end)
      local c = assert(rn.ws_connect(url(srv)))
      assert(c:send("x"))
      assert.equal("after yields: x", c:receive(5))
      c:close_wait()
    end)
  end)

  it("reports handler errors with a traceback and keeps serving", function()
    local errors = H.run(function()
      local srv = H.listen()
      srv:on("message", function(id, msg)
        if msg == "boom" then error("handler exploded") end
        srv:ws_send(id, msg)
      end)
      local a = assert(rn.ws_connect(url(srv)))
      local b = assert(rn.ws_connect(url(srv)))
      assert(a:send("boom"))
      assert(b:send("still here"))
      assert.equal("still here", b:receive(5))
      assert(a:send("me too"))
      assert.equal("me too", a:receive(5))
      a:close_wait(); b:close_wait()
    end, { allow_errors = true })
    assert.equal(1, #errors)
    assert.matches("message handler for c%d+: .*handler exploded", errors[1])
    assert.matches("stack traceback", errors[1], 1, true)
  end)

  it("labels errors of handlers that raise after suspending, and reuses no dead coroutine", function()
    local errors = H.run(function()
      local srv = H.listen()
      srv:on("message", function(id, msg)
        rn.sleep(0.01)
        if msg == "late boom" then error("exploded after a wait") end
        srv:ws_send(id, "ok " .. msg)
      end)
      local c = assert(rn.ws_connect(url(srv)))
      assert(c:send("late boom"))
      for i = 1, 3 do
        assert(c:send(tostring(i)))
        assert.equal("ok " .. i, c:receive(5))
      end
      c:close_wait()
    end, { allow_errors = true })
    assert.equal(1, #errors)
    assert.matches("^message handler for c%d+: .*exploded after a wait", errors[1])
    assert.matches("stack traceback", errors[1], 1, true)
  end)

  it("raises on a message that is not a string, on open connections too", function()
    H.run(function()
      local srv = H.listen()
      local opened = {}
      srv:on("connect", function(id) opened[#opened + 1] = id end)
      local c = assert(rn.ws_connect(url(srv)))
      while #opened == 0 do rn.sleep(0.01) end
      local id = opened[1]
      assert.has_error(function() srv:ws_send(id, {}) end,
        "relaynet.ws_send: message must be a string, got table")
      assert.has_error(function() srv:ws_send(id, nil) end,
        "relaynet.ws_send: message must be a string, got nil")
      assert.has_error(function() rn.WebSocket.send(id, true) end,
        "relaynet.WebSocket.send: message must be a string, got boolean")
      assert.has_error(function() c:send(print) end,
        "relaynet.client:send: message must be a string, got function")
      -- numbers are sent as their string form, as before
      assert.is_true(srv:ws_send(id, 42))
      assert.equal("42", c:receive(5))
      c:close_wait()
      local ok, err, code = c:send("after close")
      assert.is_nil(ok)
      assert.matches("^ECLOSED: connection c%d+ is closed$", err)
      assert.equal("ECLOSED", code)
    end)
  end)

  it("gives handlers exactly their arguments", function()
    H.run(function()
      local srv = H.listen()
      local counts = {}
      srv:on("connect", function(...) counts.connect = select("#", ...) end)
      srv:on("message", function(...) counts.message = select("#", ...); srv:ws_send((...), "ok") end)
      srv:on("close", function(...) counts.close = select("#", ...) end)
      local c = assert(rn.ws_connect(url(srv)))
      assert(c:send("x"))
      assert.equal("ok", c:receive(5))
      c:close_wait()
      while not counts.close do rn.sleep(0.01) end
      local later
      rn.after(0, function(...) later = select("#", ...) end)
      while not later do rn.sleep(0.01) end
      assert.same({ connect = 2, message = 3, close = 3 }, counts)
      assert.equal(0, later)
    end)
  end)

  it("times out waits with ETIMEDOUT", function()
    H.run(function()
      local srv = echo_server()
      local c = assert(rn.ws_connect(url(srv)))
      local msg, err, code = c:receive(0.05)
      assert.is_nil(msg)
      assert.equal("ETIMEDOUT: client:receive timed out after 0.05 s", err)
      assert.equal("ETIMEDOUT", code)
      c:close_wait()
    end)
  end)
end)

describe("HttpServer", function()
  it("listens on a free port with a predictable id", function()
    H.run(function()
      local srv = H.listen()
      assert.is_true(srv.port > 0)
      assert.equal("server_" .. srv.port, srv.id)
      assert.equal("relaynet.HttpServer " .. srv.id, tostring(srv))
    end)
  end)

  it("names an IPv4 peer of a server on every interface as a.b.c.d", function()
    H.run(function()
      -- An all-interfaces listener sees IPv4 peers as IPv4-mapped IPv6
      -- addresses; info() and the access log show the plain form.
      local srv = H.listen { host = "::" }
      local peer
      srv:on("connect", function(id) peer = rn.WebSocket.info(id).peer end)
      local c = assert(rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/"))
      local deadline = rn.now() + 5
      while not peer and rn.now() < deadline do rn.sleep(0.01) end
      assert.equal("127.0.0.1", peer)
      c:close()
    end)
  end)

  it("listen(port, websocket) accepts a plain port number", function()
    H.run(function()
      local free_port = [[ -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])']]
      local rc, out = H.sh(H.PY .. free_port):wait(10)
      assert.equal(0, rc)
      local port = assert(math.tointeger(tonumber(out)))
      local srv, err = rn.HttpServer.listen(port, true)
      assert(srv, err)
      assert.equal(port, srv.port)
    end)
  end)

  it("returns EADDRINUSE when the port is taken", function()
    H.run(function()
      local srv = H.listen()
      local s2, err, code = rn.HttpServer.listen { port = srv.port, host = "127.0.0.1" }
      assert.is_nil(s2)
      assert.equal("EADDRINUSE: port " .. srv.port .. " is already in use", err)
      assert.equal("EADDRINUSE", code)
    end)
  end)

  it("runs connect, message and close handlers with conn ids", function()
    local seen = {}
    H.run(function()
      local srv = H.listen()
      srv:on("connect", function(id, info)
        seen[#seen + 1] = "connect " .. id .. " " .. info.path
      end)
      srv:on("message", function(id, msg, binary)
        seen[#seen + 1] = "message " .. id .. " " .. msg .. " " .. tostring(binary)
        srv:ws_send(id, "ok")
      end)
      srv:on("close", function(id, code, reason)
        seen[#seen + 1] = "close " .. id .. " " .. code .. " " .. reason
      end)
      local c = assert(rn.ws_connect(url(srv, "/room/1?x=y")))
      assert(c:send("hi"))
      assert.equal("ok", c:receive(5))
      local id = srv:ws_connections()[1]
      c:close_wait(4000, "done")
      rn.sleep(0.05)
      assert.same({
        "connect " .. id .. " /room/1",
        "message " .. id .. " hi false",
        "close " .. id .. " 4000 done",
      }, seen)
    end)
  end)

  it("ws_send works as a method and as a function; unknown ids fail cleanly", function()
    H.run(function()
      local srv = H.listen()
      local c = assert(rn.ws_connect(url(srv)))
      rn.sleep(0.02)
      local id = srv:ws_connections()[1]
      assert.is_string(id)
      assert.is_true(srv:ws_send(id, "one"))
      assert.is_true(rn.HttpServer.ws_send(srv.id, id, "two"))
      assert.is_true(rn.WebSocket.send(id, "three"))
      assert.equal("one", c:receive(5))
      assert.equal("two", c:receive(5))
      assert.equal("three", c:receive(5))
      local ok, err, code = srv:ws_send("c999999", "x")
      assert.is_nil(ok)
      assert.equal("ENOTCONN: no open connection c999999 on " .. srv.id, err)
      assert.equal("ENOTCONN", code)
      ok, err, code = rn.WebSocket.send("nope", "x")
      assert.same({ nil, "ENOTCONN: no open connection nope", "ENOTCONN" }, { ok, err, code })
      c:close_wait()
    end)
  end)

  it("carries text and binary messages with embedded zeros", function()
    H.run(function()
      local srv = echo_server()
      local c = assert(rn.ws_connect(url(srv)))
      local bin = "\0\1\2\255\0end"
      assert(c:send(bin, true))
      local m, binary = c:receive(5)
      assert.equal(bin, m)
      assert.is_true(binary)
      assert(c:send("text\0with zero"))
      m, binary = c:receive(5)
      assert.equal("text\0with zero", m)
      assert.is_false(binary)
      local big = string.rep("0123456789", 50000)
      assert(c:send(big))
      assert.equal(big, c:receive(5))
      c:close_wait()
    end)
  end)

  it("ws_broadcast returns how many connections got the message", function()
    H.run(function()
      local a_srv, b_srv = H.listen(), H.listen()
      local clients = {}
      for i = 1, 3 do clients[i] = assert(rn.ws_connect(url(a_srv))) end
      local other = assert(rn.ws_connect(url(b_srv)))
      rn.sleep(0.05)
      assert.equal(3, #a_srv:ws_connections())
      assert.equal(3, rn.HttpServer.ws_broadcast(a_srv.id, "to a"))
      for i = 1, 3 do assert.equal("to a", clients[i]:receive(5)) end
      assert.equal(4, rn.WebSocket.broadcast("to all"))
      for i = 1, 3 do assert.equal("to all", clients[i]:receive(5)) end
      assert.equal("to all", other:receive(5))
      assert.equal(4, rn.WebSocket.connection_count())
      assert.equal(4, #rn.WebSocket.connections())
      local _, err, code = other:receive(0.05)
      assert.equal("ETIMEDOUT", code, err)
      -- except: everyone but the sender
      local first = a_srv:ws_connections()[1]
      assert.equal(2, a_srv:ws_broadcast("not you", false, first))
      for _, c in ipairs(clients) do c:close_wait() end
      other:close_wait()
      rn.sleep(0.05)
      assert.equal(0, rn.WebSocket.connection_count())
      assert.equal(0, a_srv:ws_broadcast("nobody"))
    end)
  end)

  it("WebSocket.close sends a real close frame with the code and reason", function()
    H.run(function()
      local srv = H.listen()
      local c = assert(rn.ws_connect(url(srv)))
      rn.sleep(0.02)
      local id = srv:ws_connections()[1]
      assert.is_true(rn.WebSocket.close(id, 4001, "kicked"))
      local m, err, code = c:receive(5)
      assert.is_nil(m)
      assert.equal("ECLOSED", code)
      assert.equal("ECLOSED: connection closed (4001 kicked)", err)
      assert.equal(4001, c.close_code)
      assert.equal("kicked", c.close_reason)
      assert.has_error(function() rn.WebSocket.close(id, 1005) end)
      -- Misuse raises even for a connection that is gone.
      assert.has_error(function() rn.WebSocket.close("no-such-conn", 1005) end,
        "relaynet.WebSocket.close: close code must be 1000, 1001, 1008, 1011 or 3000-4999")
      assert.has_error(function() rn.WebSocket.close("no-such-conn", 1000, ("x"):rep(124)) end,
        "relaynet.WebSocket.close: reason must be a string of at most 123 bytes")
      assert.same({ nil, "ENOTCONN: no open connection no-such-conn", "ENOTCONN" },
        { rn.WebSocket.close("no-such-conn", 1000) })
    end)
  end)

  it("ws_send_async waits while the queue is over its high-water mark", function()
    H.run(function()
      local srv = H.listen { send_queue = 256 * 1024, send_high_water = 64 * 1024 }
      local c = assert(rn.ws_connect(url(srv), { max_queued = 1 }))
      rn.sleep(0.02)
      local id = srv:ws_connections()[1]
      -- 400 x 64 KiB is far more than loopback socket buffers hold
      local chunk = string.rep("x", 64 * 1024)
      local sent, suspended, done = 0, false, false
      rn.spawn(function()
        for i = 1, 400 do
          local before = rn.now()
          assert.is_true(srv:ws_send_async(id, i .. ":" .. chunk))
          if rn.now() > before then suspended = true end
          sent = i
        end
        done = true
      end)
      rn.sleep(0.2)
      -- the client reads nothing yet: the sender must be parked, not done
      assert.is_false(done)
      assert.is_true(sent < 400)
      local qbytes = rn.WebSocket.info(id).queued
      assert.is_true(qbytes <= 256 * 1024)
      for i = 1, 400 do
        local m = assert(c:receive(5))
        assert.equal(i .. ":" .. chunk, m)
      end
      assert.is_true(done)
      assert.is_true(suspended)
      c:close_wait()
    end)
  end)

  it("ws_send fails with EQUEUEFULL past the send queue bound", function()
    H.run(function()
      local srv = H.listen { send_queue = 32 * 1024, send_high_water = 8 * 1024 }
      local c = assert(rn.ws_connect(url(srv), { max_queued = 1 }))
      rn.sleep(0.02)
      local id = srv:ws_connections()[1]
      local chunk = string.rep("y", 16 * 1024)
      local ok, err, code
      for _ = 1, 1000 do
        ok, err, code = srv:ws_send(id, chunk)
        if not ok then break end
      end
      assert.is_nil(ok)
      assert.equal("EQUEUEFULL", code)
      assert.matches("^EQUEUEFULL: send queue of connection c%d+ is full %(%d+ bytes queued, limit 32768%)$", err)
      c:close()
    end)
  end)

  it("max_buffered bounds the bytes a server holds for all its connections", function()
    H.run(function()
      local BUDGET = 256 * 1024
      local srv = H.listen { max_buffered = BUDGET }
      local before = rn.stats().limits.buffer_send_refusals
      -- Two clients that read nothing: whatever the sockets do not take is
      -- held by the server.
      local c1 = assert(rn.ws_connect(url(srv), { max_queued = 1 }))
      local c2 = assert(rn.ws_connect(url(srv), { max_queued = 1 }))
      rn.sleep(0.05)
      local ids = srv:ws_connections()
      assert.equal(2, #ids)
      -- 20 KiB: larger than what may still go out directly past the budget.
      local chunk = string.rep("b", 20 * 1024)
      local ok, err, code
      for i = 1, 2000 do
        ok, err, code = srv:ws_send(ids[i % 2 + 1], chunk)
        if not ok then break end
      end
      assert.is_nil(ok)
      assert.equal("EQUEUEFULL", code)
      assert.matches("^EQUEUEFULL: server send buffers are full: max_buffered %(%d+ bytes held, " ..
        "limit 262144%); connection c%d+ not queued$", err)
      local st = srv:stats()
      local queued = rn.WebSocket.info(ids[1]).queued + rn.WebSocket.info(ids[2]).queued
      -- Neither queue reached send_queue (4 MiB): the budget refused.
      assert.is_true(queued > 0)
      assert.is_true(st.buffered >= queued and st.buffered <= BUDGET,
        ("buffered %d, queued %d"):format(st.buffered, queued))
      assert.is_true(st.buffered > BUDGET - 2 * #chunk)
      assert.is_true(st.buffer_send_refusals >= 1)
      -- Broadcast skips both, and counts them.
      assert.equal(0, srv:ws_broadcast(chunk))
      assert.equal(st.buffer_send_refusals + 2, srv:stats().buffer_send_refusals)
      assert.equal(before + st.buffer_send_refusals + 2, rn.stats().limits.buffer_send_refusals)
      -- Queues under send_high_water are never evicted.
      assert.equal(0, srv:stats().buffer_evictions)
      -- Closing gives every byte back.
      c1._rec.box:close()
      c2._rec.box:close()
      local deadline = rn.now() + 15
      while srv:stats().websockets > 0 and rn.now() < deadline do rn.sleep(0.05) end
      assert.equal(0, srv:stats().websockets)
      assert.equal(0, srv:stats().buffered)
    end)
  end)

  it("past max_buffered a queue over send_high_water is evicted as a slow consumer", function()
    H.run(function()
      local srv = H.listen { max_buffered = 512 * 1024, send_high_water = 64 * 1024 }
      local slow = assert(rn.ws_connect(url(srv), { max_queued = 1 }))
      rn.sleep(0.05)
      local sid = srv:ws_connections()[1]
      local other = assert(rn.ws_connect(url(srv), { max_queued = 1 }))
      rn.sleep(0.05)
      local oid
      for _, id in ipairs(srv:ws_connections()) do if id ~= sid then oid = id end end
      local chunk = string.rep("e", 32 * 1024)
      -- The slow one queues more than its high-water mark (what the socket
      -- does not take) ...
      for _ = 1, 1000 do
        if rn.WebSocket.info(sid).queued > 320 * 1024 then break end
        assert(srv:ws_send(sid, chunk))
      end
      assert.is_true(rn.WebSocket.info(sid).queued > 320 * 1024)
      -- ... so once the other one's sends reach the budget, the slow one
      -- (the largest queue over its high-water mark) is evicted and they
      -- still fit.
      for _ = 1, 1000 do
        if srv:stats().buffer_evictions > 0 then break end
        assert(srv:ws_send(oid, chunk))
      end
      assert.equal(1, srv:stats().buffer_evictions)
      assert.equal(0, srv:stats().buffer_send_refusals)
      local m, err, code = slow:receive(10)
      while m do m, err, code = slow:receive(10) end
      assert.equal("ECLOSED", code)
      assert.matches("1008 slow consumer", err)
      other._rec.box:close()
      local deadline = rn.now() + 15
      while srv:stats().websockets > 0 and rn.now() < deadline do rn.sleep(0.05) end
      assert.equal(0, srv:stats().buffered)
    end)
  end)

  it("past max_buffered a growing message closes with 1008 and a growing body gets 503", function()
    H.run(function()
      local srv = echo_server { max_buffered = 64 * 1024 }
      srv:route("POST", "/up", function(req) return 200, "got " .. #req.body end)
      local c = assert(rn.ws_connect(url(srv)))
      assert(c:send(string.rep("s", 48 * 1024)))
      assert.equal(48 * 1024, #c:receive(5))
      -- A reassembly buffer doubles: 64 KiB is the budget, 128 KiB is not.
      assert(c:send(string.rep("s", 80 * 1024)))
      local m, err, code = c:receive(5)
      assert.is_nil(m)
      assert.equal("ECLOSED", code)
      assert.equal("ECLOSED: connection closed (1008 server receive buffers full)", err)
      assert.equal(1, srv:stats().buffer_rx_closes)
      local f = os.tmpname()
      local h = assert(io.open(f, "wb"))
      h:write(string.rep("p", 48 * 1024))
      h:close()
      assert.equal(200, (H.curl("--data-binary @" .. H.q(f) .. " http://127.0.0.1:" .. srv.port .. "/up")))
      h = assert(io.open(f, "wb"))
      h:write(string.rep("p", 80 * 1024))
      h:close()
      assert.equal(503, (H.curl("--data-binary @" .. H.q(f) .. " http://127.0.0.1:" .. srv.port .. "/up")))
      os.remove(f)
      assert.equal(1, srv:stats().buffer_body_refusals)
      collectgarbage()
      collectgarbage()
      rn.sleep(0.2)
      assert.equal(0, srv:stats().buffered)
    end)
  end)

  it("ws_send_async fails with ECLOSED when the connection goes first", function()
    H.run(function()
      local srv = H.listen { send_queue = 64 * 1024, send_high_water = 16 * 1024 }
      local c = assert(rn.ws_connect(url(srv), { max_queued = 1 }))
      rn.sleep(0.02)
      local id = srv:ws_connections()[1]
      local result
      rn.spawn(function()
        local chunk = string.rep("z", 8000)
        for _ = 1, 1000 do
          local ok, err, code = srv:ws_send_async(id, chunk)
          if not ok then result = { ok, err, code }; return end
        end
      end)
      rn.sleep(0.1)
      assert.is_nil(result)
      rn.WebSocket.close(id, 1000, "bye")
      -- our close cannot go out while the client reads nothing; the client
      -- side gives up and drops the TCP connection
      c._rec.box:close()
      local deadline = rn.now() + 10
      while not result and rn.now() < deadline do rn.sleep(0.02) end
      assert.is_table(result)
      assert.is_nil(result[1])
      assert.equal("ECLOSED", result[3])
      assert.matches("^ECLOSED: ", result[2])
    end)
  end)

  it("closes connections whose message exceeds max_message with 1009", function()
    H.run(function()
      local srv = echo_server { max_message = 1000 }
      local c = assert(rn.ws_connect(url(srv)))
      assert(c:send(string.rep("a", 1000)))
      assert.equal(1000, #c:receive(5))
      assert(c:send(string.rep("a", 1001)))
      local m, err, code = c:receive(5)
      assert.is_nil(m)
      assert.equal("ECLOSED", code)
      assert.equal("ECLOSED: connection closed (1009 message too big)", err)
      local d = assert(rn.ws_connect(url(srv)))
      assert(d:send("still serving"))
      assert.equal("still serving", d:receive(5))
      d:close_wait()
    end)
  end)

  it("refuses connections past max_connections", function()
    H.run(function()
      local srv = echo_server { max_connections = 2 }
      local a = assert(rn.ws_connect(url(srv)))
      local b = assert(rn.ws_connect(url(srv)))
      local c, err, code = rn.ws_connect(url(srv))
      assert.is_nil(c)
      assert.equal("ECONNREFUSED", code)
      -- lws's client reports the refusal (HTTP 503, proven by the raw probes)
      assert.equal("ECONNREFUSED: cannot connect to " .. url(srv) ..
        ": the server answered HTTP 503 instead of upgrading to WebSocket", err)
      a:close_wait()
      rn.sleep(0.05)
      local d = assert(rn.ws_connect(url(srv)))
      assert(d:send("in"))
      assert.equal("in", d:receive(5))
      b:close_wait(); d:close_wait()
    end)
  end)

  it("server:close() says goodbye with 1001", function()
    H.run(function()
      local srv = echo_server()
      local c = assert(rn.ws_connect(url(srv)))
      rn.sleep(0.02)
      assert.is_false(srv:is_closed())
      assert.is_true(srv:close())
      assert.is_true(srv:is_closed())
      local _, err = c:receive(5)
      assert.equal("ECLOSED: connection closed (1001 server closing)", err)
      assert.equal(0, srv:ws_broadcast("x")) -- reaches no one, as ws_send fails without raising
      assert.has_error(function() srv:ws_connections() end,
        "relaynet.ws_connections: server " .. srv.id .. " is closed")
    end)
  end)
end)

describe("the WebSocket client", function()
  it("fails fast on a refused port", function()
    H.run(function()
      local probe = H.listen()
      local port = probe.port
      probe:close()
      rn.sleep(0.05)
      local c, err, code = rn.ws_connect("ws://127.0.0.1:" .. port .. "/")
      assert.is_nil(c)
      assert.equal("ECONNREFUSED", code)
      assert.matches("^ECONNREFUSED: cannot connect to ws://127.0.0.1:" .. port .. "/", err)
    end)
  end)

  it("resolves host names without blocking the loop", function()
    H.run(function()
      local srv = echo_server()
      local c = assert(rn.ws_connect("ws://localhost:" .. srv.port .. "/"))
      assert(c:send("via localhost"))
      assert.equal("via localhost", c:receive(5))
      c:close_wait()
    end)
  end)

  it("rejects bad URLs with clear codes; wss to a closed port is refused", function()
    H.run(function()
      assert.same({ nil, "EINVAL: not a ws:// or wss:// URL: http://x", "EINVAL" }, { rn.ws_connect("http://x") })
      local c, err, code = rn.ws_connect("wss://127.0.0.1:1/")
      assert.is_nil(c)
      assert.are.equal("ECONNREFUSED", code, err)
    end)
  end)

  it("delivers to an on_message handler instead of receive()", function()
    H.run(function()
      local srv = echo_server()
      local got = {}
      local c = assert(rn.ws_connect(url(srv), {
        on_message = function(msg, binary) got[#got + 1] = msg .. ":" .. tostring(binary) end,
      }))
      assert(c:send("a")); assert(c:send("b", true))
      rn.sleep(0.1)
      assert.same({ "a:false", "b:true" }, got)
      c:close_wait()
    end)
  end)
end)

describe("hostile-input bounds (in process)", function()
  it("parses the new limits: 0 or false switch a bound off, bad values raise", function()
    H.run(function()
      for _, k in ipairs({ "body_timeout", "body_min_rate", "max_connections_per_ip", "ws_msg_rate",
        "ws_msg_burst", "ws_byte_rate", "ws_byte_burst" }) do
        assert.is_number(rn.DEFAULT_LIMITS[k], k)
      end
      assert.truthy(H.listen { ws_msg_rate = false, ws_byte_rate = 0, max_connections_per_ip = false,
        body_timeout = false, body_min_rate = 0 })
      assert.has_error(function() H.listen { ws_msg_rate = -1 } end,
        "limit 'ws_msg_rate' must be a non-negative integer")
      assert.has_error(function() H.listen { body_timeout = "soon" } end,
        "limit 'body_timeout' must be a non-negative number")
      assert.has_error(function() H.listen { ws_msg_burst = false } end,
        "limit 'ws_msg_burst' must be a non-negative integer")
    end)
  end)

  it("refuses TCP connections past max_connections_per_ip and counts them", function()
    H.run(function()
      local before = rn.stats().limits.conn_refused_per_ip
      local srv = echo_server { max_connections_per_ip = 2 }
      local a = assert(rn.ws_connect(url(srv)))
      local b = assert(rn.ws_connect(url(srv)))
      local c, _, code = rn.ws_connect(url(srv))
      assert.is_nil(c)
      assert.truthy(code)
      local st = srv:stats()
      assert.equal(1, st.conn_refused_per_ip)
      assert.equal(2, st.tcp_connections)
      assert.equal(before + 1, rn.stats().limits.conn_refused_per_ip)
      a:close_wait()
      rn.sleep(0.1)
      assert.equal(1, srv:stats().tcp_connections)
      local d = assert(rn.ws_connect(url(srv)))
      assert(d:send("in"))
      assert.equal("in", d:receive(5))
      b:close_wait(); d:close_wait()
      -- switched off: no share, nothing counted
      local off = echo_server { max_connections_per_ip = 0 }
      local conns = {}
      for i = 1, 4 do conns[i] = assert(rn.ws_connect(url(off))) end
      assert.equal(0, off:stats().tcp_connections)
      for i = 1, 4 do conns[i]:close_wait() end
    end)
  end)

  it("closes a WebSocket over its message rate with 1008, and not when switched off", function()
    H.run(function()
      local srv = echo_server { ws_msg_rate = 10, ws_msg_burst = 5 }
      local c = assert(rn.ws_connect(url(srv)))
      for i = 1, 20 do c:send("m" .. i) end
      local err
      for _ = 1, 21 do
        local m, e = c:receive(5)
        if not m then err = e; break end
      end
      assert.equal("ECLOSED: connection closed (1008 message rate limit exceeded)", err)
      assert.equal(1, srv:stats().ws_rate_closes)
      local free = echo_server { ws_msg_rate = false, ws_byte_rate = false }
      local f = assert(rn.ws_connect(url(free)))
      for i = 1, 3000 do f:send("m" .. i) end
      for i = 1, 3000 do assert.equal("m" .. i, f:receive(5)) end
      assert.equal(0, free:stats().ws_rate_closes)
      f:close_wait()
    end)
  end)

  it("lets an accepted mesh link receive link_rate_scale times the message rate", function()
    H.run(function()
      local srv = echo_server { ws_msg_rate = 10, ws_msg_burst = 5 }
      -- 200 messages at once: over 5 for a plain connection, under 5 * 64
      -- for a link (the mesh drops them as bad messages and keeps the link).
      local link = assert(rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/ws/p2p"))
      for i = 1, 200 do link:send("junk " .. i) end
      local plain = assert(rn.ws_connect(url(srv)))
      for i = 1, 200 do plain:send("m" .. i) end
      local err
      for _ = 1, 201 do
        local m, e = plain:receive(5)
        if not m then err = e; break end
      end
      assert.equal("ECLOSED: connection closed (1008 message rate limit exceeded)", err)
      assert.equal(1, srv:stats().ws_rate_closes)
      -- the link got the node's hello and stays open (no 1008)
      local hello = assert(link:receive(5))
      assert.truthy(hello:find('"type":"hello"', 1, true), hello)
      local m, e = link:receive(0.3)
      assert.is_nil(m)
      assert.truthy(e:find("^ETIMEDOUT"), e)
      assert.is_true(link:is_open())
      link:close_wait()
    end)
  end)

  it("answers a body slower than body_min_rate with 408", function()
    H.run(function()
      local srv = H.listen { body_timeout = 3 }
      srv:route("POST", "/up", function(req) return 200, "got " .. #req.body end)
      local py = "import socket,time\n" ..
        "s=socket.create_connection(('127.0.0.1'," .. srv.port .. "))\n" ..
        "s.sendall(b'POST /up HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100000\\r\\n\\r\\n')\n" ..
        "s.settimeout(0.5)\n" ..
        "t=time.time()\n" ..
        "while time.time()-t<15:\n" ..
        "  try:\n" ..
        "    r=s.recv(100)\n" ..
        "    print(r.split(b'\\r\\n')[0].decode() if r else 'EOF'); break\n" ..
        "  except socket.timeout:\n" ..
        "    s.send(b'a')\n"
      local rc, out = H.sh(H.PY .. " -c " .. H.q(py)):wait(30)
      assert.equal(0, rc)
      assert.equal("HTTP/1.1 408 Request Timeout\n", out)
      assert.equal(1, srv:stats().http_body_timeouts)
      -- a body that arrives in time is served, in pieces grown as it comes
      local status, body = H.curl("-X POST --data-binary @" .. H.q(H.ROOT .. "/README.md") ..
        " http://127.0.0.1:" .. srv.port .. "/up")
      assert.equal(200, status)
      local f = assert(io.open(H.ROOT .. "/README.md", "rb"))
      local n = #f:read("a")
      f:close()
      assert.equal("got " .. n, body)
    end)
  end)
end)
