-- spec/external_clients_spec.lua: relaynet's server against python3-websockets
-- (spec/support/py_client.py), a client implementation nobody here wrote.

local H = require("helper")
local rn = require("relaynet")
local json = require("relaynet.json")

local PYC = H.ROOT .. "/spec/support/py_client.py"

-- Starts py_client.py in the background: a handle whose :result(timeout)
-- waits for it and returns the decoded JSON line.
local function py(mode, url, ...)
  local args = { H.PY, H.q(PYC), mode, H.q(url) }
  for _, a in ipairs({ ... }) do args[#args + 1] = H.q(a) end
  local h = H.sh(table.concat(args, " "))
  return {
    result = function(_, timeout)
      local rc, out, err = h:wait(timeout or 60)
      assert(rc == 0, "py_client " .. mode .. " exited with " .. tostring(rc) .. ": " .. err)
      local line = out:match("[^\n]+")
      local res, derr = json.decode(line or "")
      assert(type(res) == "table",
        "py_client " .. mode .. " printed no JSON (" .. tostring(derr) .. "): " .. out .. err)
      assert(res.error == nil, "py_client " .. mode .. " failed: " .. tostring(res.error) .. "\n" .. err)
      res.raw = line
      return res
    end,
  }
end

local function url_of(srv) return "ws://127.0.0.1:" .. srv.port .. "/" end

-- Waits (suspending) until pred() is true; `what` names it on timeout.
local function wait_until(pred, what, timeout)
  local deadline = rn.now() + (timeout or 10)
  while not pred() do
    if rn.now() > deadline then error("timed out waiting for " .. what, 2) end
    rn.sleep(0.02)
  end
end

local function echo_server(opts)
  local srv = H.listen(opts)
  srv.seen = {}
  srv:on("message", function(id, data, binary)
    srv.seen[#srv.seen + 1] = { id = id, len = #data, binary = binary, data = #data < 256 and data or nil }
    srv:ws_send(id, data, binary)
  end)
  return srv
end

describe("python3-websockets client", function()
  it("text, binary, NUL bytes and 500 KB messages are echoed exactly", function()
    H.run(function()
      local srv = echo_server()
      local res = py("echo", url_of(srv)):result()
      assert.are.equal(9, #res.cases, res.raw)
      for _, c in ipairs(res.cases) do
        assert(c.ok, "case " .. c.name .. " not echoed exactly: " .. tostring(json.encode(c)))
        assert.are.equal(c.sent_len, c.len)
      end
      assert.are.equal(1000, res.close_code)
      -- the server saw the right message types and sizes
      local byname = {}
      for i, c in ipairs(res.cases) do byname[c.name] = srv.seen[i] end
      assert.is_false(byname["text"].binary)
      assert.is_true(byname["binary"].binary)
      assert.are.equal("a\0b\0\0c", byname["text-nul"].data)
      assert.is_false(byname["text-nul"].binary)
      assert.are.equal(102, byname["binary-nul"].len)
      assert.are.equal(500 * 1024, byname["text-500k"].len)
      assert.are.equal(500 * 1024, byname["binary-500k"].len)
      assert.is_true(byname["binary-500k"].binary)
      assert.are.equal(0, byname["text-empty"].len)
    end)
  end)

  it("a message the client sends in fragments arrives as one message", function()
    H.run(function()
      local srv = echo_server()
      local res = py("fragmented", url_of(srv)):result()
      assert.are.equal(2, #res.cases, res.raw)
      for _, c in ipairs(res.cases) do
        assert(c.ok, "case " .. c.name .. " not echoed whole: " .. tostring(json.encode(c)))
      end
      assert.are.equal("frag-one frag-two ünïcödé frag-€nd", res.cases[1].text)
      -- exactly two messages reached the handler, not one per fragment
      assert.are.equal(2, #srv.seen)
      assert.are.equal("frag-one frag-two ünïcödé frag-€nd", srv.seen[1].data)
      assert.is_false(srv.seen[1].binary)
      assert.are.equal(3 + 70000 + 3, srv.seen[2].len)
      assert.is_true(srv.seen[2].binary)
    end)
  end)

  it("a server-initiated close with 4001 and a reason reaches the client exactly", function()
    H.run(function()
      local srv = H.listen()
      local closed = {}
      srv:on("message", function(id, data)
        if data == "close-me" then
          assert(srv:ws_send(id, "about to close"))
          assert.is_true(rn.WebSocket.close(id, 4001, "bye"))
        end
      end)
      srv:on("close", function(id, code, reason) closed[#closed + 1] = { id, code, reason } end)
      local res = py("wait-close", url_of(srv)):result()
      assert.are.same({ "about to close" }, res.messages)
      assert.are.equal(4001, res.code, res.raw)
      assert.are.equal("bye", res.reason, res.raw)
      wait_until(function() return #closed == 1 end, "the server's close event")
      assert.are.equal(4001, closed[1][2])
      assert.are.equal("bye", closed[1][3])
    end)
  end)

  it("ws_broadcast reaches 3 python clients and returns 3; ws_connections lists them", function()
    H.run(function()
      local srv = H.listen()
      local connected, hellos = {}, {}
      srv:on("connect", function(id) connected[#connected + 1] = id end)
      srv:on("message", function(id, data) hellos[#hellos + 1] = { id = id, data = data } end)
      local client = py("broadcast", url_of(srv), "3")
      wait_until(function() return #hellos == 3 end, "3 hellos")
      local list = srv:ws_connections()
      assert.are.equal(3, #list)
      table.sort(connected)
      local sorted = {}
      for i, id in ipairs(list) do sorted[i] = id end
      table.sort(sorted)
      assert.are.same(connected, sorted)
      assert.are.same(list, rn.WebSocket.connections())
      assert.are.equal(3, srv:ws_broadcast("news for everyone"))
      local res = client:result()
      assert.are.same({ "news for everyone", "news for everyone", "news for everyone" }, res.received)
      wait_until(function() return #srv:ws_connections() == 0 end, "the clients to leave")
    end)
  end)

  it("a slow consumer gets EQUEUEFULL, then close 1008, while another client keeps its echoes", function()
    H.run(function()
      local srv = H.listen({ send_queue = 256 * 1024, send_high_water = 64 * 1024, slow_timeout = 1 })
      local slow_id
      local closed = {}
      srv:on("message", function(id, data, binary)
        if data == "slow-ready" then slow_id = id; return end
        srv:ws_send(id, data, binary)
      end)
      srv:on("close", function(id, code, reason) closed[id] = { code = code, reason = reason } end)

      local flag = os.tmpname()
      os.remove(flag)
      local slow = py("slow", url_of(srv), flag)
      local other = assert(rn.ws_connect(url_of(srv), { timeout = 5 }))
      local n_echo = 0
      local function echo_round()
        n_echo = n_echo + 1
        local m = "echo " .. n_echo
        assert(other:send(m))
        local got, err = other:receive(5)
        assert.are.equal(m, got, "the other client lost its echo: " .. tostring(err))
      end
      echo_round()
      wait_until(function() return slow_id ~= nil end, "the slow client")

      -- flood the client that does not read
      local chunk = string.rep("s", 16 * 1024)
      local last, sent = nil, 0
      for _ = 1, 8192 do -- at most 128 MB: a safety net
        last = table.pack(srv:ws_send(slow_id, chunk))
        if last[1] ~= true then break end
        sent = sent + 1
      end
      assert(sent > 0)
      assert.are.equal(3, last.n, "EQUEUEFULL must be the 3-value error tuple")
      assert.is_nil(last[1])
      assert.are.equal("string", type(last[2]))
      assert.truthy(last[2]:match("^EQUEUEFULL: "), last[2])
      assert.are.equal("EQUEUEFULL", last[3])
      -- the queue is still full: the next send fails the same way
      local again = table.pack(srv:ws_send(slow_id, chunk))
      assert.are.equal(3, again.n)
      assert.is_nil(again[1])
      assert.are.equal("EQUEUEFULL", again[3])

      -- another client is unaffected while the slow one is stuck
      echo_round()
      -- after slow_timeout the server starts closing it with 1008 ...
      wait_until(function()
        local info = rn.WebSocket.info(slow_id)
        return not info or info.state ~= "open"
      end, "the slow consumer to be closed", 15)
      -- ... and the client, reading again, gets that close frame
      local f = assert(io.open(flag, "w"))
      f:close()
      local res = slow:result()
      os.remove(flag)
      assert.is_true(res.flag_seen)
      assert.are.equal(1008, res.code, res.raw)
      assert.are.equal("slow consumer", res.reason, res.raw)
      wait_until(function() return closed[slow_id] ~= nil end, "the server's close event")
      assert.are.equal(1008, closed[slow_id].code)
      assert.are.equal("slow consumer", closed[slow_id].reason)
      for _ = 1, 3 do echo_round() end
      assert.are.equal(1000, (other:close_wait(1000, "", 5)))
    end, { timeout = 60 })
  end)
end)
