-- spec/protected_mode_spec.lua: the mesh routes answer loopback peers only.
--
-- A real node process (bin/relaynet --port) listens on every interface. A
-- client inside a network namespace made for this test (a veth pair,
-- 10.213.<n>.1 on this side, 10.213.<n>.2 inside) is a non-loopback peer:
-- it gets 403 with the explanation for /rpc, /status, /peers, /routes,
-- /registry and the /ws/p2p upgrade, while loopback clients are served and
-- the node's other routes stay open to everyone. --insecure-mesh lifts it
-- (with a warning on stderr); --no-mesh mounts no mesh routes at all.
--
-- Making the namespace needs root (CAP_NET_ADMIN), which CI and the dev
-- machines have; where it cannot be made, the tests say so and fail.

local H = require("helper")
local rn = require("relaynet")
local harness = require("mesh_harness")

local RELAYNET = H.ROOT .. "/bin/relaynet"
local NS = "rnpm" .. (tonumber(tostring(os.time()):sub(-4)) or 0) % 200
local SUBNET = "10.213." .. math.random(1, 250)
local HOST_IP, NS_IP = SUBNET .. ".1", SUBNET .. ".2"

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  return ok == true
end

local function make_netns()
  sh("ip netns del " .. NS)
  sh("ip link del " .. NS .. "h")
  assert(sh("ip netns add " .. NS), "cannot create a network namespace (needs root)")
  assert(sh("ip link add " .. NS .. "h type veth peer name " .. NS .. "n"))
  assert(sh("ip link set " .. NS .. "n netns " .. NS))
  assert(sh("ip addr add " .. HOST_IP .. "/30 dev " .. NS .. "h"))
  assert(sh("ip link set " .. NS .. "h up"))
  assert(sh("ip netns exec " .. NS .. " ip addr add " .. NS_IP .. "/30 dev " .. NS .. "n"))
  assert(sh("ip netns exec " .. NS .. " ip link set " .. NS .. "n up"))
  assert(sh("ip netns exec " .. NS .. " ip link set lo up"))
end

local function drop_netns()
  sh("ip link del " .. NS .. "h")
  sh("ip netns del " .. NS)
end

-- curl from inside the namespace (remote = true) or from loopback, with an
-- optional extra header line.
local function get(url, remote, method, header)
  local prefix = remote and ("ip netns exec " .. NS .. " ") or ""
  local hdr = header and ("-H " .. H.q(header) .. " ") or ""
  local m = method and ("-X " .. method .. " -H 'Content-Type: application/json' --data-binary " ..
    H.q('{"jsonrpc":"2.0","id":1,"method":"p2p.peers"}') .. " ") or ""
  local rc, out, err = H.sh(prefix .. "curl -s -S -m 10 " .. hdr .. m .. "-w '\\n%{http_code}' " .. H.q(url)):wait(20)
  assert(rc == 0, "curl failed: " .. tostring(err))
  local body, status = out:match("^(.*)\n(%d+)$")
  return tonumber(status), body
end

-- A WebSocket upgrade from inside the namespace with python3-websockets:
-- the HTTP status it was refused with, or "open".
local function ws_upgrade(url, remote, token)
  local py = table.concat({
    "import asyncio, sys, websockets",
    "async def main():",
    "    h = {'Authorization': 'Bearer ' + sys.argv[2]} if len(sys.argv) > 2 else {}",
    "    try:",
    "        async with websockets.connect(sys.argv[1], open_timeout=10, extra_headers=h):",
    "            print('open')",
    "    except websockets.exceptions.InvalidStatusCode as e:",
    "        print(e.status_code)",
    "asyncio.run(main())",
  }, "\n")
  local prefix = remote and ("ip netns exec " .. NS .. " ") or ""
  local rc, out, err = H.sh(prefix .. H.PY .. " -c " .. H.q(py) .. " " .. H.q(url) ..
    (token and (" " .. H.q(token)) or "")):wait(30)
  assert(rc == 0, "python websockets failed: " .. tostring(err))
  return out:match("%S+")
end

local function start_node(port, extra)
  local proc = H.sh("exec " .. H.q(RELAYNET) .. " --port " .. port .. " --host 0.0.0.0 --node-id pm1 " ..
    (extra or ""))
  local deadline = rn.now() + 30
  while not H.curl("http://127.0.0.1:" .. port .. "/nothing-here") do
    if rn.now() > deadline then
      os.execute("pkill -TERM -P " .. proc.pid .. " >/dev/null 2>&1")
      local rc, out, err = proc:wait(15)
      error("node did not start (exit " .. tostring(rc) .. "): " .. out .. err)
    end
    rn.sleep(0.1)
  end
  return proc
end

-- SIGTERM to the node (the child of H.sh's shell), then its stderr.
local function stop_node(proc)
  os.execute("pkill -TERM -P " .. proc.pid .. " >/dev/null 2>&1")
  local _, _, err = proc:wait(15)
  return err
end

describe("protected mode", function()
  setup(make_netns)
  teardown(drop_netns)

  it("answers the mesh routes to loopback only, 403 with an explanation elsewhere", function()
    H.run(function()
      local port = harness.free_ports(1)[1]
      local node = start_node(port)
      local ok, err = pcall(function()
        local remote = "http://" .. HOST_IP .. ":" .. port
        local here = "http://127.0.0.1:" .. port
        for _, path in ipairs({ "/status", "/peers", "/routes", "/registry" }) do
          local status, body = get(remote .. path, true)
          assert.equal(403, status, path)
          assert.truthy(body:find("protected mode", 1, true), body)
          assert.truthy(body:find("--insecure-mesh", 1, true), body)
          assert.equal(200, (get(here .. path, false)), path)
        end
        local status, body = get(remote .. "/rpc", true, "POST")
        assert.equal(403, status)
        assert.truthy(body:find("protected mode", 1, true))
        assert.equal(200, (get(here .. "/rpc", false, "POST")))
        -- a query string does not get around it
        assert.equal(403, (get(remote .. "/status?x=1", true)))
        -- the node's other paths stay open to everyone (404: no such route)
        assert.equal(404, (get(remote .. "/nothing-here", true)))
        -- WebSocket upgrades to /ws/p2p and /rpc
        assert.equal("403", ws_upgrade("ws://" .. HOST_IP .. ":" .. port .. "/ws/p2p", true))
        assert.equal("403", ws_upgrade("ws://" .. HOST_IP .. ":" .. port .. "/rpc", true))
        assert.equal("open", ws_upgrade("ws://127.0.0.1:" .. port .. "/rpc", false))
      end)
      stop_node(node)
      assert(ok, err)
    end, { timeout = 120 })
  end)

  it("--insecure-mesh serves every address and warns at start", function()
    H.run(function()
      local port = harness.free_ports(1)[1]
      local node = start_node(port, "--insecure-mesh")
      local ok, err = pcall(function()
        local remote = "http://" .. HOST_IP .. ":" .. port
        assert.equal(200, (get(remote .. "/status", true)))
        assert.equal(200, (get(remote .. "/rpc", true, "POST")))
        assert.equal("open", ws_upgrade("ws://" .. HOST_IP .. ":" .. port .. "/rpc", true))
      end)
      local stderr = stop_node(node)
      assert(ok, err)
      assert.truthy(stderr:find("WARNING: server .* serves the mesh"), stderr)
    end, { timeout = 120 })
  end)

  it("--rpc-token serves JSON-RPC and the views to every address with the token, 401 without", function()
    H.run(function()
      local port = harness.free_ports(1)[1]
      local token = "tok-" .. string.rep("x", 20)
      local tfile = os.tmpname()
      local f = assert(io.open(tfile, "w"))
      f:write(token .. "\n")
      f:close()
      local node = start_node(port, "--rpc-token " .. H.q(tfile))
      local ok, err = pcall(function()
        local auth = "Authorization: Bearer " .. token
        local bases = { { "http://" .. HOST_IP .. ":" .. port, true }, { "http://127.0.0.1:" .. port, false } }
        for _, base in ipairs(bases) do
          local url, remote = base[1], base[2]
          local status, body = get(url .. "/status", remote)
          assert.equal(401, status, url)
          assert.truthy(body:find("Authorization: Bearer <token>", 1, true), body)
          assert.equal(401, (get(url .. "/status", remote, nil, "Authorization: Bearer wrong-" .. token)))
          assert.equal(200, (get(url .. "/status", remote, nil, auth)))
          assert.equal(401, (get(url .. "/rpc", remote, "POST")))
          assert.equal(200, (get(url .. "/rpc", remote, "POST", auth)))
        end
        local ws = "ws://" .. HOST_IP .. ":" .. port .. "/rpc"
        assert.equal("401", ws_upgrade(ws, true))
        assert.equal("open", ws_upgrade(ws, true, token))
        -- the mesh link stays loopback-only: the token is not a mesh credential
        assert.equal("403", ws_upgrade("ws://" .. HOST_IP .. ":" .. port .. "/ws/p2p", true))
      end)
      stop_node(node)
      os.remove(tfile)
      assert(ok, err)
    end, { timeout = 120 })
  end)

  it("--node-key serves /ws/p2p to every address (links authenticate); JSON-RPC stays loopback", function()
    H.run(function()
      local port = harness.free_ports(1)[1]
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -m 700 " .. H.q(dir)))
      local rc, out, err = H.sh(H.q(RELAYNET) .. " keygen " .. H.q(dir .. "/n.key")):wait(20)
      assert.equal(0, rc, err)
      assert.truthy(out:match("^k%x+ [%w+/=]+\n$"), out)
      local node = start_node(port, "--node-key " .. H.q(dir .. "/n.key"))
      local ok, perr = pcall(function()
        assert.equal("open", ws_upgrade("ws://" .. HOST_IP .. ":" .. port .. "/ws/p2p", true))
        assert.equal("403", ws_upgrade("ws://" .. HOST_IP .. ":" .. port .. "/rpc", true))
        assert.equal(403, (get("http://" .. HOST_IP .. ":" .. port .. "/status", true)))
      end)
      stop_node(node)
      os.execute("rm -rf " .. H.q(dir))
      assert(ok, perr)
    end, { timeout = 120 })
  end)

  it("--no-mesh mounts no mesh routes", function()
    H.run(function()
      local port = harness.free_ports(1)[1]
      local node = start_node(port, "--no-mesh")
      local ok, err = pcall(function()
        assert.equal(404, (get("http://127.0.0.1:" .. port .. "/status", false)))
        assert.equal(404, (get("http://" .. HOST_IP .. ":" .. port .. "/status", true)))
      end)
      stop_node(node)
      assert(ok, err)
    end, { timeout = 120 })
  end)

  it("lets a script's own server turn protection off per server", function()
    H.run(function()
      local open = H.listen({ host = "0.0.0.0", insecure_mesh = true })
      local plain = H.listen({ host = "0.0.0.0", mesh = false })
      local guarded = H.listen({ host = "0.0.0.0" })
      assert.equal(200, (get("http://" .. HOST_IP .. ":" .. open.port .. "/peers", true)))
      assert.equal(404, (get("http://" .. HOST_IP .. ":" .. plain.port .. "/peers", true)))
      local before = rn.stats().limits.protected_refused
      assert.equal(403, (get("http://" .. HOST_IP .. ":" .. guarded.port .. "/peers", true)))
      assert.equal(1, guarded:stats().protected_refused)
      assert.equal(0, open:stats().protected_refused)
      assert.equal(before + 1, rn.stats().limits.protected_refused)
      open:close()
      plain:close()
      guarded:close()
    end, { timeout = 60 })
  end)
end)
