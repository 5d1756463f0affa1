-- Real traffic through every part of relaynet, then a clean shutdown; run
-- under valgrind by spec/valgrind_spec.lua (and `make valgrind`). Exits 0
-- only when everything was answered and no uv handle was left open.
local rn = require("relaynet")

local ok_count = 0
rn.on_error(function(msg) io.stderr:write("handler error: ", msg, "\n"); os.exit(3) end)

local done, err = rn.run(function()
  local srv = assert(rn.HttpServer.listen { port = 0, host = "127.0.0.1", max_message = 64 * 1024 })
  srv:route("GET", "/hello", function(req) return 200, "hi " .. (req.query.name or "?") end)
  srv:route("POST", "/echo", function(req) return 200, req.body, { ["x-len"] = tostring(#req.body) } end)
  srv:on("message", function(id, msg, binary)
    if msg == "broadcast" then srv:ws_broadcast("all:" .. id) else srv:ws_send(id, msg, binary) end
  end)
  local url = "ws://127.0.0.1:" .. srv.port .. "/"
  -- HTTP through curl in the background while WebSocket traffic runs
  local marker = os.tmpname()
  os.execute(string.format("(for i in 1 2 3 4 5; do curl -s 'http://127.0.0.1:%d/hello?name=v'; " ..
    "curl -s -d 'body' http://127.0.0.1:%d/echo; curl -s http://127.0.0.1:%d/missing; done > %s.out; " ..
    "mv %s.out %s.done) &", srv.port, srv.port, srv.port, marker, marker, marker))
  local clients = {}
  for i = 1, 5 do clients[i] = assert(rn.ws_connect(url)) end
  for round = 1, 20 do
    for i, c in ipairs(clients) do
      local msg = string.rep(string.char(65 + i), round * 100)
      assert(c:send(msg, round % 2 == 0))
      local got, gerr = c:receive(5)
      assert(got == msg, string.format("round %d client %d: %s", round, i, tostring(gerr)))
      ok_count = ok_count + 1
    end
  end
  assert(clients[1]:send("broadcast"))
  for _, c in ipairs(clients) do assert(c:receive(5):match("^all:c%d+$")) end
  -- an oversized message gets 1009 and the connection is freed
  assert(clients[2]:send(string.rep("x", 70000)))
  local m, e = clients[2]:receive(5)
  assert(m == nil and e:match("1009"), e)
  -- a client that leaves without a close handshake
  clients[3]._rec.box:close()
  -- the server closes one with a code
  rn.WebSocket.close(srv:ws_connections()[1], 4000, "bye")
  local deadline = rn.now() + 20
  while rn.now() < deadline do
    local f = io.open(marker .. ".done")
    if f then
      local body = f:read("a")
      f:close()
      os.remove(marker .. ".done")
      os.remove(marker)
      local _, n = body:gsub("hi v", "")
      assert(n == 5, body)
      break
    end
    rn.sleep(0.05)
  end
  assert(rn.now() < deadline, "curl did not finish")
  -- leave two clients open: rn.stop() must close them with 1001
  rn.stop()
end)
assert(done, err)
print("traffic ok", ok_count)
