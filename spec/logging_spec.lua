-- spec/logging_spec.lua: relaynet.log (rn.log) in real node processes.
--
-- Each node is a Lua process started from a small script written here: it
-- sets the log level and the access log as the relaynet command does, and
-- serves an echo on a free port (0) that it names in its "listening on"
-- line. The tests read the nodes' stderr: the listening line, access
-- lines for an HTTP request and a WebSocket connection, mesh links coming
-- up and going down between two nodes, failed dials (rate-limited), and
-- silence at level error. The relaynet command's --log-level is checked
-- the same way.

local H = require("helper")
local rn = require("relaynet")
local MH = require("mesh_harness")

local STAMP = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"

-- The node script: arg = level, access (1/0), node id or "-", dial log
-- interval (seconds), peer URLs...; it listens on $RN_PORT (default: a free
-- port).
local NODE = [[
local rn = require("relaynet")
rn.log.set_level(arg[1])
rn.log.set_access(arg[2] == "1")
if arg[3] ~= "-" then rn.set_node_id(arg[3]) end
require("relaynet.mesh.transport").DIAL_LOG_INTERVAL = tonumber(arg[4])
rn.mesh_config.backoff_min, rn.mesh_config.backoff_max = 0.02, 0.05
rn.mesh_config.connect_timeout = 1
rn.run(function()
  local srv = assert(rn.HttpServer.listen { port = tonumber(os.getenv("RN_PORT") or "0"), host = "127.0.0.1" })
  srv:route("GET", "/hello", function() return "hello\n" end)
  srv:on("message", function(id, m) srv:ws_send(id, m) end)
  for i = 5, #arg do rn.add_peer(arg[i]) end
end)
]]

local script_path
local function script()
  if not script_path then
    script_path = os.tmpname()
    local f = assert(io.open(script_path, "w"))
    f:write(NODE)
    f:close()
  end
  return script_path
end

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- Starts a node; returns { h = H.sh handle, err() = its stderr so far }.
local function start(level, access, id, dial_interval, peers, port)
  local cmd = (port and ("RN_PORT=" .. port .. " ") or "") .. "exec " .. MH.LUA .. " " .. H.q(script()) .. " " ..
    level .. " " .. (access and "1" or "0") .. " " .. (id or "-") .. " " .. tostring(dial_interval or 30)
  for _, p in ipairs(peers or {}) do cmd = cmd .. " " .. H.q(p) end
  local h = H.sh(cmd)
  local node = { h = h }
  function node.err() return slurp(h.base .. ".err") end
  return node
end

-- Waits until the node's stderr matches `pattern`; returns the captures.
local function wait_for(node, pattern, what, timeout)
  local caps
  MH.wait_until(function()
    caps = table.pack(node.err():match(pattern))
    return caps[1] ~= nil
  end, what, timeout or 15, function() return node.err() end)
  return table.unpack(caps, 1, caps.n)
end

-- The port a node (level info or debug) said it listens on.
local function port_of(node)
  return tonumber(wait_for(node, "INFO listening on http://127%.0%.0%.1:(%d+)\n", "the listening line"))
end

-- SIGTERM, then the node's whole stderr.
local function stop(node)
  os.execute("pkill -TERM -P " .. node.h.pid .. " >/dev/null 2>&1")
  local _, _, err = node.h:wait(20)
  return err
end

local function count(s, plain)
  local n, i = 0, 1
  while true do
    local a, b = s:find(plain, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

describe("logging", function()
  teardown(function() if script_path then os.remove(script_path) end end)

  it("says where it listens, and logs every HTTP request and WebSocket connection", function()
    H.run(function()
      local node = start("info", true)
      local ok, err = pcall(function()
        local port = port_of(node)
        assert.truthy(node.err():match("^" .. STAMP .. " INFO listening on http://127%.0%.0%.1:" .. port .. "\n"),
          node.err())
        assert.equal(200, (H.curl("http://127.0.0.1:" .. port .. "/hello")))
        assert.equal(404, (H.curl("http://127.0.0.1:" .. port .. "/missing%20thing")))
        local line = wait_for(node, "(" .. STAMP .. " INFO access http [^\n]*path=/hello [^\n]*)\n",
          "the access line of GET /hello")
        assert.truthy(line:find(" peer=127.0.0.1 method=GET path=/hello status=200 bytes=6 ms=", 1, true), line)
        assert.truthy(line:match("ms=%d+%.%d+$"), line)
        -- the path as it arrived, one field: no space in it
        wait_for(node, "INFO access http peer=127%.0%.0%.1 method=GET path=/missing%%20thing status=404 ",
          "the access line of the 404")
        local c = assert(rn.ws_connect("ws://127.0.0.1:" .. port .. "/echo"))
        for i = 1, 3 do
          assert(c:send("m" .. i))
          assert.equal("m" .. i, c:receive(5))
        end
        assert(c:close_wait(1000, "bye"))
        local ws = wait_for(node, "(" .. STAMP .. " INFO access ws [^\n]*)\n", "the WebSocket's access line")
        assert.truthy(ws:match(" peer=127%.0%.0%.1 path=/echo ms=%d+%.%d in=3 out=3 code=1000$"), ws)
      end)
      local err_text = stop(node)
      assert(ok, tostring(err) .. "\n" .. err_text)
      -- every line is a record: time, level, text
      for line in err_text:gmatch("[^\n]+") do
        assert.truthy(line:match("^" .. STAMP .. " [A-Z]+ "), line)
      end
    end, { timeout = 60 })
  end)

  it("logs mesh links coming up and going down, on both ends", function()
    H.run(function()
      local a = start("info", false, "log-a")
      local b
      local ok, err = pcall(function()
        local port = port_of(a)
        local url = "ws://127.0.0.1:" .. port .. "/ws/p2p"
        b = start("info", false, "log-b", 30, { url })
        wait_for(b, "INFO mesh link up: log%-a %(out, " .. url:gsub("%p", "%%%0") .. "%)\n", "b's link up")
        wait_for(a, "INFO mesh link up: log%-b %(in, from 127%.0%.0%.1%)\n", "a's link up")
        stop(b)
        b = nil
        wait_for(a, "INFO mesh link down: log%-b %(in, from 127%.0%.0%.1%): 1001[^\n]*\n", "a's link down")
      end)
      local logs = (b and stop(b) or "") .. stop(a)
      assert(ok, tostring(err) .. "\n" .. logs)
    end, { timeout = 60 })
  end)

  it("logs failed dials at most once per interval per peer, with the count of the others", function()
    H.run(function()
      local dead = "ws://127.0.0.1:" .. MH.free_ports(1)[1] .. "/ws/p2p"
      -- a 1 s interval (the default is 30 s) and a 20-50 ms backoff:
      -- dozens of failed dials in 3.5 s
      local node = start("warn", false, "log-d", 1, { dead })
      rn.sleep(3.5)
      local err_text = stop(node)
      local n = count(err_text, "WARN mesh: cannot dial peer " .. dead .. ": ECONNREFUSED")
      assert.truthy(n >= 2 and n <= 5, err_text)
      local more = tonumber(err_text:match("%((%d+) more failed dials since the last line%)"))
      assert.truthy(more and more >= 3, err_text)
      -- at level warn: no info lines
      assert.falsy(err_text:find(" INFO ", 1, true), err_text)
    end, { timeout = 60 })
  end)

  it("logs a dial the peer closes before the link is up (its mesh is off) as a failed dial", function()
    H.run(function()
      local port = MH.free_ports(1)[1]
      local off = H.sh("exec " .. MH.LUA .. " " .. H.q(H.ROOT .. "/bin/relaynet") .. " --port " .. port ..
        " --host 127.0.0.1 --disable-registry --log-level warn")
      local node
      local ok, err = pcall(function()
        MH.wait_until(function() return H.curl("http://127.0.0.1:" .. port .. "/nothing") ~= nil end,
          "the node without a mesh to answer", 15)
        node = start("warn", false, "log-f", 30, { "ws://127.0.0.1:" .. port .. "/ws/p2p" })
        wait_for(node, "WARN mesh: cannot dial peer ws://127%.0%.0%.1:" .. port .. "/ws/p2p: the link closed " ..
          "before it was up: 4404 the mesh is disabled on this node\n", "the failed dial's line")
      end)
      local logs = (node and stop(node) or "")
      os.execute("pkill -TERM -P " .. off.pid .. " >/dev/null 2>&1")
      off:wait(20)
      assert(ok, tostring(err) .. "\n" .. logs)
    end, { timeout = 60 })
  end)

  it("is silent below the level set: error silences info, the access log and warnings", function()
    H.run(function()
      local dead = "ws://127.0.0.1:" .. MH.free_ports(1)[1] .. "/ws/p2p"
      local port = MH.free_ports(1)[1]
      local node = start("error", true, "log-e", 30, { dead }, port)
      MH.wait_until(function() return H.curl("http://127.0.0.1:" .. port .. "/hello") ~= nil end,
        "the node to answer", 15)
      assert.equal(200, (H.curl("http://127.0.0.1:" .. port .. "/hello")))
      rn.sleep(0.5)
      local err_text = stop(node)
      assert.equal("", err_text)
    end, { timeout = 60 })
  end)

  it("the relaynet command: --log-level error is silent, info (the default) logs with the access log", function()
    H.run(function()
      local port = MH.free_ports(1)[1]
      local relaynet = H.ROOT .. "/bin/relaynet"
      local function run_node(extra)
        local h = H.sh("exec " .. MH.LUA .. " " .. H.q(relaynet) .. " --port " .. port .. " --host 127.0.0.1 " ..
          extra)
        MH.wait_until(function() return H.curl("http://127.0.0.1:" .. port .. "/nothing") ~= nil end,
          "the node to answer", 15)
        assert.equal(404, (H.curl("http://127.0.0.1:" .. port .. "/nothing")))
        os.execute("pkill -TERM -P " .. h.pid .. " >/dev/null 2>&1")
        local _, _, err = h:wait(20)
        return err
      end
      local quiet = run_node("--log-level error")
      assert.equal("", quiet)
      local chatty = run_node("")
      assert.truthy(chatty:find("INFO listening on http://127.0.0.1:" .. port, 1, true), chatty)
      assert.truthy(chatty:find("INFO access http peer=127.0.0.1 method=GET path=/nothing status=404", 1, true),
        chatty)
    end, { timeout = 60 })
  end)
end)
