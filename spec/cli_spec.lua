-- The relaynet command (lua/relaynet/cli.lua) as a user types it: usage
-- errors, --port=N, the examples' ports, the relaynet design's verbatim
-- three-node commands (-add-peer http://..., counter_server), the peer
-- address forms, and a script that calls remote_call at top level.

local rn = require("relaynet")
local json = require("relaynet.json")
local H = require("helper")
local MH = require("mesh_harness")

local RELAYNET = H.q(H.ROOT .. "/bin/relaynet")
local COUNTER = H.q(H.ROOT .. "/examples/p2p/counter_server.lua")
local ECHO = H.q(H.ROOT .. "/examples/echo.lua")

-- Waits until `url` answers an HTTP GET: its status and body.
local function wait_http(url, what)
  local status, body
  MH.wait_until(function()
    status, body = H.curl(H.q(url))
    return status ~= nil
  end, what or url, 15)
  return status, body
end

-- The TCP ports listened on by the process that listens on `port` (ss),
-- sorted.
local function ports_of_listener(port)
  local _, out = H.sh("ss -Hltnp"):wait(10)
  local pid
  for line in out:gmatch("[^\n]+") do
    if line:match("^%S+%s+%d+%s+%d+%s+%S-:" .. port .. "%s") then pid = line:match("pid=(%d+),") end
  end
  assert(pid, "no process listens on " .. port .. ":\n" .. out)
  local ports = {}
  for line in out:gmatch("[^\n]+") do
    if line:find("pid=" .. pid .. ",", 1, true) then
      ports[#ports + 1] = tonumber(line:match("^%S+%s+%d+%s+%d+%s+%S-:(%d+)%s"))
    end
  end
  table.sort(ports)
  return ports
end

-- Starts `cmd` with H.sh; after_each kills it when the test ends, even
-- when it fails.
local started = {}
local function start(cmd)
  local h = H.sh(cmd)
  started[#started + 1] = h
  return h
end

local function rpc(port, body)
  local status, out = H.curl("-H 'content-type: application/json' -d " .. H.q(body) ..
    " http://127.0.0.1:" .. port .. "/rpc")
  assert.equal(200, status, out)
  return json.decode(out)
end

describe("the relaynet command", function()
  after_each(function()
    for _, h in ipairs(started) do h:kill() end
    started = {}
  end)

  it("answers a usage error with one line on stderr and exit status 2", function()
    H.run(function()
      local cert = H.ROOT .. "/examples/echo.lua" -- any readable file
      local open_token = os.tmpname() -- a token file others may read
      local f = assert(io.open(open_token, "w"))
      f:write("a-token-of-enough-bytes\n")
      f:close()
      assert(os.execute("chmod 644 " .. H.q(open_token)))
      local cases = {
        { "", "usage: relaynet [options] SCRIPT.lua [script arguments...] (relaynet --help lists the options)" },
        { "--port abc x.lua", 'relaynet: --port: expected a port number 0..65535, got "abc"' },
        { "--port=70000 x.lua", 'relaynet: --port: expected a port number 0..65535, got "70000"' },
        { "-port -1 x.lua", 'relaynet: -port: expected a port number 0..65535, got "-1"' },
        { "--port", "relaynet: --port needs a value" },
        { "--bogus x.lua", "relaynet: unknown option --bogus (relaynet --help lists them)" },
        { "--server=yes", "relaynet: --server takes no value" },
        { "--add-peer ftp://h:1", "relaynet: --add-peer: not a peer address: ftp://h:1 " ..
          "(the scheme must be ws, wss, http or https)" },
        { "--add-peer nohost", "relaynet: --add-peer: not a peer address: nohost " ..
          "(expected ws://HOST:PORT/PATH, http://HOST:PORT or HOST:PORT)" },
        { "--add-peer ws://h:99999", "relaynet: --add-peer: not a peer address: ws://h:99999 " ..
          "(the port must be 1..65535)" },
        { "--log-level loud -e 1", 'relaynet: --log-level: expected error, warn, info or debug, got "loud"' },
        { "--tls-cert /nonexistent/c.pem",
          "relaynet: --tls-cert: cannot read /nonexistent/c.pem: No such file or directory" },
        { "--tls-ca /tmp -e 1", "relaynet: --tls-ca: cannot read /tmp: Is a directory" },
        { "/tmp", "relaynet: cannot open script /tmp: Is a directory" },
        { "--tls-cert " .. H.q(cert) .. " -e 1", "relaynet: --tls-cert and --tls-key go together" },
        { "/nonexistent/script.lua", "relaynet: cannot open script /nonexistent/script.lua" },
        { "keygen", "usage: relaynet keygen FILE" },
        { "--rpc-token " .. H.q(open_token) .. " -e 1",
          "relaynet: --rpc-token: the secret file " .. open_token .. " may be read by others (chmod 600 it)" },
      }
      for _, case in ipairs(cases) do
        local rc, out, err = H.sh("cd / && exec lua5.4 " .. RELAYNET .. " " .. case[1]):wait(15)
        assert.equal(2, rc, case[1] .. ": " .. err)
        assert.equal("", out, case[1])
        assert.equal(case[2] .. "\n", err, case[1])
      end
      os.remove(open_token)
      local rc, out, err = H.sh("cd / && RELAYNET_LIMITS=foo=1 exec lua5.4 " .. RELAYNET .. " -e 'print(1)'"):wait(15)
      assert.equal(2, rc, err)
      assert.equal("", out)
      assert.equal("relaynet: RELAYNET_LIMITS: unknown limit 'foo'\n", err)
    end, { timeout = 60 })
  end)

  it("runs a script written for lua5.4, which ends with rn.run(), unchanged", function()
    H.run(function()
      local code = 'local rn = require("relaynet"); print(rn.run(function(a) print("in", a) end, 7)); print("after")'
      local rc, out, err = H.sh("cd / && exec lua5.4 " .. RELAYNET .. " --log-level warn -e " .. H.q(code)):wait(15)
      assert.equal(0, rc, err)
      assert.equal("true\nafter\nin\t7\n", out)
      assert.equal("", err)
    end, { timeout = 30 })
  end)

  it("says what --host takes when it cannot listen there", function()
    H.run(function()
      local rc, out, err = H.sh("cd / && exec lua5.4 " .. RELAYNET .. " --host localhost --port 0"):wait(15)
      assert.equal(1, rc, err)
      assert.equal("", out)
      assert.truthy(err:find("relaynet: ELISTEN: cannot listen on localhost:0 (host must be an IP address " ..
        "or a network interface name)\n", 1, true), err)
      assert.falsy(err:find("traceback", 1, true), err)
    end, { timeout = 30 })
  end)

  it("serves an example on --port=N, or on its positional port, and starts no second server", function()
    H.run(function()
      local ports = MH.free_ports(2)
      for i, form in ipairs({ "--port=" .. ports[1], tostring(ports[2]) }) do
        local port = ports[i]
        start("exec lua5.4 " .. RELAYNET .. " " .. ECHO .. " " .. form .. " --log-level warn")
        local status, body = wait_http("http://127.0.0.1:" .. port .. "/", "the echo on " .. port)
        assert.equal(200, status)
        assert.truthy(body:find("relaynet echo server", 1, true), body)
        local c = assert(rn.ws_connect("ws://127.0.0.1:" .. port .. "/"))
        assert(c:send("hello"))
        assert.equal("hello", (c:receive(5)))
        c:close()
        -- one server: the echo's port is the only one the process listens on
        assert.same({ port }, ports_of_listener(port))
        -- and it is a mesh node too (the command's server is the echo's)
        assert.equal(200, (H.curl("http://127.0.0.1:" .. port .. "/status")))
      end
    end, { timeout = 60 })
  end)

  it("runs the relaynet design's three-node commands as written", function()
    H.run(function()
      local p = MH.free_ports(3)
      -- ./relay script -server -port 8081 -node-id node2 -add-peer http://localhost:8080
      local cmds = {
        "-server -port " .. p[1] .. " -node-id node1",
        "-server -port " .. p[2] .. " -node-id node2 -add-peer http://localhost:" .. p[1],
        "-server -port " .. p[3] .. " -node-id node3 -add-peer localhost:" .. p[2],
      }
      for _, c in ipairs(cmds) do
        start("exec lua5.4 " .. RELAYNET .. " " .. COUNTER .. " " .. c .. " -log-level warn")
      end
      -- node1 learns a route to node3, through node2
      MH.wait_until(function()
        local status, body = H.curl("http://127.0.0.1:" .. p[1] .. "/routes")
        return status == 200 and body:find('"node":"node3"', 1, true) ~= nil
      end, "node1 to learn node3", 15)
      -- the design's call format, with its server name
      local res = rpc(p[1], '{"jsonrpc":"2.0","id":1,"method":"remote_call","params":' ..
        '{"node_id":"node3","server_name":"counter_server","method":"increment","args":[5]}}')
      assert.same({ jsonrpc = "2.0", id = 1, result = 5 }, res)
      -- counter and counter_server are the same methods
      res = rpc(p[1], '{"jsonrpc":"2.0","id":2,"method":"remote_call","params":' ..
        '{"node_id":"node3","server_name":"counter","method":"get","args":[]}}')
      assert.same({ jsonrpc = "2.0", id = 2, result = 5 }, res)
      -- ws:// without a path links over /ws/p2p too
      local q = MH.free_ports(1)[1]
      start("exec lua5.4 " .. RELAYNET .. " " .. COUNTER .. " --port " .. q ..
        " --node-id node4 --add-peer ws://127.0.0.1:" .. p[3] .. " --log-level warn")
      MH.wait_until(function()
        local status, body = H.curl("http://127.0.0.1:" .. q .. "/peers")
        return status == 200 and body:find('"id":"node3"', 1, true) ~= nil
      end, "node4 to link to node3", 15)
    end, { timeout = 90 })
  end)

  it("lets a script call remote_call at top level while its links come up", function()
    H.run(function()
      local port = MH.free_ports(1)[1]
      start("exec lua5.4 " .. RELAYNET .. " " .. COUNTER .. " --port " .. port ..
        " --node-id far --log-level warn")
      wait_http("http://127.0.0.1:" .. port .. "/status", "node far")
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      -- README, "From Lua, inside a node", as a whole script
      f:write([[
local rn = require("relaynet")
local n, err = rn.remote_call("far", "counter", "increment", {5})
print(n, err)
print(rn.wait_route("nowhere", 0.1))
rn.stop()
]])
      f:close()
      local rc, out, err = H.sh("cd / && exec lua5.4 " .. RELAYNET .. " " .. H.q(script) ..
        " --add-peer 127.0.0.1:" .. port .. " --log-level warn"):wait(30)
      os.remove(script)
      assert.equal(0, rc, err)
      assert.equal("5\tnil\nnil\tETIMEDOUT: no route to node nowhere within 0.1 s\tETIMEDOUT\n", out)
      assert.equal("", err)
    end, { timeout = 60 })
  end)
end)
