-- WebSocket upgrades on paths nothing answers are refused with 404 (a dial
-- to the wrong path fails visibly), while mounted paths (/ws/p2p, /rpc),
-- servers with a handler and servers opened with websocket = true accept.

local rn = require("relaynet")
local H = require("helper")

-- The status line and body a WebSocket upgrade to `path` gets (curl).
local function upgrade(port, path)
  local rc, out = H.sh("curl -s -i -m 2 -H 'Connection: Upgrade' -H 'Upgrade: websocket' " ..
    "-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' " ..
    H.q("http://127.0.0.1:" .. port .. path)):wait(15)
  -- curl ends with 28 (timeout) on a 101: it waits for more
  assert(rc == 0 or rc == 28, "curl exited " .. tostring(rc))
  return out:match("^(HTTP/1%.1 %d+[^\r\n]*)"), out:match("\r\n\r\n(.*)$")
end

local function listen(opts)
  opts.port, opts.host = 0, "127.0.0.1"
  return assert(rn.HttpServer.listen(opts))
end

describe("WebSocket upgrade paths", function()
  it("a server with no handler answers 404 on paths with no endpoint, and serves its mounts", function()
    H.run(function()
      local srv = listen {}
      local status, body = upgrade(srv.port, "/")
      assert.equal("HTTP/1.1 404 Not Found", status)
      assert.truthy(body:find("no WebSocket endpoint at this path", 1, true), body)
      assert.equal("HTTP/1.1 404 Not Found", (upgrade(srv.port, "/ws/p2p/extra")))
      assert.equal("HTTP/1.1 101 Switching Protocols", (upgrade(srv.port, "/ws/p2p")))
      assert.equal("HTTP/1.1 101 Switching Protocols", (upgrade(srv.port, "/rpc")))
      -- relaynet's own client gets an error, not a silent connection
      local c, err, code = rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/chat", { timeout = 5 })
      assert.is_nil(c)
      assert.equal("ECONNREFUSED", code, err)
      assert.equal("ECONNREFUSED: cannot connect to ws://127.0.0.1:" .. srv.port .. "/chat: " ..
        "the server answered HTTP 404 instead of upgrading to WebSocket", err)
      -- HTTP on those paths is unchanged: a route-less path is still 404
      assert.equal(404, (H.curl("http://127.0.0.1:" .. srv.port .. "/chat")))
    end)
  end)

  it("accepts every path once a connect, message or close handler is set", function()
    H.run(function()
      for _, event in ipairs({ "connect", "message", "close" }) do
        local srv = listen {}
        assert.equal("HTTP/1.1 404 Not Found", (upgrade(srv.port, "/any")))
        srv:on(event, function() end)
        assert.equal("HTTP/1.1 101 Switching Protocols", (upgrade(srv.port, "/any")), event)
        srv:close()
      end
    end)
  end)

  it("a mesh-less server has no mounts; websocket = true and false decide at once", function()
    H.run(function()
      local plain = listen { mesh = false }
      assert.equal("HTTP/1.1 404 Not Found", (upgrade(plain.port, "/ws/p2p")))
      assert.equal("HTTP/1.1 404 Not Found", (upgrade(plain.port, "/")))
      local push = listen { websocket = true } -- pushes with ws_broadcast, sets no handler
      assert.equal("HTTP/1.1 101 Switching Protocols", (upgrade(push.port, "/feed")))
      local none = listen { websocket = false }
      none:on("message", function() end)
      assert.equal("HTTP/1.1 404 Not Found", (upgrade(none.port, "/")))
      assert.equal("HTTP/1.1 404 Not Found", (upgrade(none.port, "/ws/p2p")))
    end)
  end)
end)
