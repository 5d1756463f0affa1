-- examples/echo.lua: started in-process, checked with relaynet's own client
-- and with node's `ws` (spec/e2e/ws_echo_client.js); also run as a script.

local rn = require("relaynet")
local H = require("helper")

local echo = dofile(H.ROOT .. "/examples/echo.lua")

local function start()
  local srv = assert(echo.start(0, "127.0.0.1"))
  return srv, "ws://127.0.0.1:" .. srv.port .. "/"
end

-- 200 KB of every byte value, zeros included.
local function big_binary()
  local t = {}
  for i = 0, 200 * 1024 - 1 do t[#t + 1] = string.char((i * 7 + (i >> 8)) & 0xff) end
  return table.concat(t)
end

describe("examples/echo.lua", function()
  it("returns a start function when loaded as a file", function()
    assert.is_function(echo.start)
  end)

  it("echoes text and binary messages with their type over relaynet's client", function()
    H.run(function()
      local _, url = start()
      local c = assert(rn.ws_connect(url))
      local cases = {
        { "hello relaynet", false },
        { "a\0b \u{2713} \u{1F680}", false },
        { "", false },
        { "\0\1\2\0\0\255\0", true },
        { big_binary(), true },
        { string.rep("x", 200 * 1024 - 3) .. "end", false },
      }
      for i, case in ipairs(cases) do
        assert(c:send(case[1], case[2]))
        local msg, binary = c:receive(5)
        assert.is_string(msg, "message " .. i .. " was not echoed: " .. tostring(binary))
        assert.are.equal(#case[1], #msg, "length of message " .. i)
        assert.is_true(msg == case[1], "content of message " .. i)
        assert.are.equal(case[2], binary, "type of message " .. i)
      end
      local code, reason = c:close_wait(1000, "bye")
      assert.are.equal(1000, code)
      assert.are.equal("bye", reason)
    end)
  end)

  it("keeps the order of many messages sent without waiting", function()
    H.run(function()
      local _, url = start()
      local c = assert(rn.ws_connect(url))
      for i = 1, 200 do assert(c:send("m" .. i, i % 2 == 0)) end
      for i = 1, 200 do
        local msg, binary = c:receive(5)
        assert.are.equal("m" .. i, msg)
        assert.are.equal(i % 2 == 0, binary)
      end
      c:close_wait()
    end)
  end)

  it("echoes to node's ws client (spec/e2e/ws_echo_client.js)", function()
    H.run(function()
      local _, url = start()
      local rc, out, err = H.sh("node " .. H.q(H.ROOT .. "/spec/e2e/ws_echo_client.js") .. " " .. H.q(url)):wait(30)
      assert.are.equal(0, rc, "node client failed:\n" .. out .. err)
      assert.are.equal("ws_echo_client: OK (6 messages echoed)\n", out)
      assert.are.equal("", err)
    end, { timeout = 40 })
  end)

  it("answers GET / with connection instructions", function()
    H.run(function()
      local srv = start()
      local status, body = H.curl(H.q("http://127.0.0.1:" .. srv.port .. "/"))
      assert.are.equal(200, status)
      assert.are.equal("relaynet echo server: open a WebSocket to ws://<host>:" .. srv.port .. "/\n", body)
    end)
  end)

  it("as a script, rejects a bad port argument with usage and exit code 2", function()
    H.run(function()
      for _, bad in ipairs({ "notaport", "99999", "-1" }) do
        local rc, out, err = H.sh("lua5.4 " .. H.q(H.ROOT .. "/examples/echo.lua") .. " " .. bad):wait(10)
        assert.are.equal(2, rc, bad)
        assert.are.equal("", out, bad)
        assert.are.equal("usage: relaynet examples/echo.lua [PORT] [--port N] [relaynet options]\n", err, bad)
      end
    end)
  end)

  it("as a script, exits 1 with the reason when the port is taken", function()
    H.run(function()
      local srv = start()
      local rc, out, err = H.sh("lua5.4 " .. H.q(H.ROOT .. "/examples/echo.lua") .. " " .. srv.port):wait(10)
      assert.are.equal(1, rc)
      assert.are.equal("", out)
      assert.are.equal("echo: EADDRINUSE: port " .. srv.port .. " is already in use\n", err)
    end)
  end)
end)
