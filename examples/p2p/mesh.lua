-- Starts a small mesh of counter nodes, waits until every node has a route to
-- every other, makes remote calls across it with JSON-RPC over HTTP (curl),
-- prints them, and stops the nodes.
--
--   lua5.4 examples/p2p/mesh.lua TOPOLOGY [N] [BASEPORT] [--keep]
--
--   TOPOLOGY  star (node1 is the hub), line, ring, full
--   N         number of nodes (default 4; ring needs 3 or more)
--   BASEPORT  node1 listens on BASEPORT, node2 on BASEPORT+1, ... (default 9101)
--   --keep    leave the nodes running until Enter is pressed (to try curl by hand)
--
-- Every node is `bin/relaynet examples/p2p/counter_server.lua --port P
-- --host 127.0.0.1 --node-id nodeI --add-peer ...` on 127.0.0.1; its output
-- goes to a log file whose path is printed. Needs curl. Ctrl-C stops the
-- nodes as well.

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/../.."
-- From a source checkout, use its lua/ and build/ (examples/checkout.lua).
(loadfile(here .. "/../checkout.lua") or load(""))()
local json = require("relaynet.json") -- exact integers (needs only relaynet.core)

local RELAYNET = root .. "/bin/relaynet"
local COUNTER = here .. "/counter_server.lua"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function usage(msg)
  if msg then io.stderr:write("mesh.lua: ", msg, "\n") end
  io.stderr:write("usage: lua5.4 examples/p2p/mesh.lua star|line|ring|full [N] [BASEPORT] [--keep]\n")
  os.exit(2)
end

-- arguments ---------------------------------------------------------------------

local positional, keep = {}, false
for _, a in ipairs(arg or {}) do
  if a == "--keep" or a == "-keep" then keep = true
  elseif a == "-h" or a == "--help" then usage()
  else positional[#positional + 1] = a end
end
local kind = positional[1]
local n = math.tointeger(tonumber(positional[2] or "4"))
local baseport = math.tointeger(tonumber(positional[3] or "9101"))
if not kind then usage() end
if not ({ star = true, line = true, ring = true, full = true })[kind] then usage("unknown topology " .. kind) end
if not n or n < 2 or n > 50 then usage("N must be 2..50") end
if kind == "ring" and n < 3 then usage("a ring needs at least 3 nodes") end
if not baseport or baseport < 1024 or baseport + n - 1 > 65535 then usage("bad BASEPORT") end

-- the topology: who dials whom ----------------------------------------------------

local ids, port, dials = {}, {}, {}
for i = 1, n do
  ids[i] = "node" .. i
  port[ids[i]] = baseport + i - 1
  dials[ids[i]] = {}
end
local edges = {}
local function edge(a, b)
  table.insert(dials[a], b)
  edges[#edges + 1] = { a, b }
end
if kind == "star" then
  for i = 2, n do edge(ids[i], ids[1]) end
elseif kind == "line" or kind == "ring" then
  for i = 2, n do edge(ids[i], ids[i - 1]) end
  if kind == "ring" then edge(ids[1], ids[n]) end
else
  for i = 2, n do
    for j = 1, i - 1 do edge(ids[i], ids[j]) end
  end
end

-- shortest hop counts: what converged routes must show
local function bfs(from)
  local adj = {}
  for _, e in ipairs(edges) do
    adj[e[1]] = adj[e[1]] or {}
    adj[e[2]] = adj[e[2]] or {}
    table.insert(adj[e[1]], e[2])
    table.insert(adj[e[2]], e[1])
  end
  local dist, queue, head = { [from] = 0 }, { from }, 1
  while queue[head] do
    local x = queue[head]
    head = head + 1
    for _, y in ipairs(adj[x] or {}) do
      if not dist[y] then dist[y] = dist[x] + 1; queue[#queue + 1] = y end
    end
  end
  return dist
end

-- helpers --------------------------------------------------------------------------

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok, how, code = p:close()
  if how == "signal" then error("interrupted", 0) end
  return out, ok and 0 or code
end

local function sleep(s)
  local ok, how = os.execute("sleep " .. s)
  if not ok and how == "signal" then error("interrupted", 0) end
end

local function http_get(id, path)
  local out = sh("curl -s -m 5 " .. q("http://127.0.0.1:" .. port[id] .. path) .. " 2>/dev/null")
  return json.decode(out)
end

local rpc_seq = 0
local function rpc(id, method, params)
  rpc_seq = rpc_seq + 1
  local body = assert(json.encode({ jsonrpc = "2.0", id = rpc_seq, method = method, params = params }))
  print(string.format("\n$ curl -s http://127.0.0.1:%d/rpc -d '%s'", port[id], body))
  local out = sh("curl -s -m 30 -H 'content-type: application/json' --data-binary " .. q(body) .. " " ..
    q("http://127.0.0.1:" .. port[id] .. "/rpc"))
  print(out)
  return json.decode(out)
end

local function alive(pid)
  local _, code = sh("kill -0 " .. pid .. " 2>/dev/null")
  return code == 0
end

-- nodes ------------------------------------------------------------------------------

local logdir = sh("mktemp -d /tmp/relaynet-mesh-XXXXXX"):gsub("%s+$", "")
local pids = {}

local function start(id)
  local cmd = { q(RELAYNET), q(COUNTER), "--port", port[id], "--host", "127.0.0.1", "--node-id", id }
  for _, peer in ipairs(dials[id]) do
    cmd[#cmd + 1] = "--add-peer"
    cmd[#cmd + 1] = "ws://127.0.0.1:" .. port[peer] .. "/ws/p2p"
  end
  local line = table.concat(cmd, " ")
  local out = sh(line .. " >" .. q(logdir .. "/" .. id .. ".log") .. " 2>&1 & echo $!")
  pids[id] = tonumber(out:match("%d+"))
  print(string.format("  %-7s port %d  pid %-7d %s", id, port[id], pids[id] or -1,
    #dials[id] > 0 and ("dials " .. table.concat(dials[id], ", ")) or ""))
end

local function stop_all()
  local left = {}
  for _, id in ipairs(ids) do
    if pids[id] and alive(pids[id]) then
      os.execute("kill -TERM " .. pids[id] .. " 2>/dev/null")
      left[#left + 1] = id
    end
  end
  for _ = 1, 100 do
    local any = false
    for _, id in ipairs(left) do
      if alive(pids[id]) then any = true end
    end
    if not any then break end
    os.execute("sleep 0.1")
  end
  for _, id in ipairs(left) do
    if alive(pids[id]) then
      os.execute("kill -KILL " .. pids[id] .. " 2>/dev/null")
      print("  " .. id .. " did not stop: killed")
    end
  end
end

local function wait_converged(timeout)
  local deadline = os.time() + timeout
  local why
  while os.time() <= deadline do
    why = nil
    for _, id in ipairs(ids) do
      local st = http_get(id, "/status")
      if type(st) ~= "table" then
        why = id .. " does not answer GET /status yet"
      else
        local want, have = bfs(id), {}
        for _, r in ipairs(st.routes or {}) do have[r.node] = r.hops end
        for other, hops in pairs(want) do
          if other ~= id and have[other] ~= hops then
            why = string.format("%s: route to %s is %s hops, want %d", id, other, tostring(have[other]), hops)
          end
        end
      end
      if why then break end
    end
    if not why then return true end
    sleep(0.2)
  end
  return false, why
end

local function main()
  for _, id in ipairs(ids) do
    local _, code = sh("curl -s -m 1 -o /dev/null http://127.0.0.1:" .. port[id] .. "/ 2>/dev/null")
    if code == 0 then error("port " .. port[id] .. " is in use: choose another BASEPORT", 0) end
  end
  print(string.format("starting a %s of %d nodes (logs in %s)", kind, n, logdir))
  for _, id in ipairs(ids) do start(id) end

  local ok, why = wait_converged(30)
  if not ok then error("routes did not converge: " .. tostring(why), 0) end
  print("\nroutes converged:")
  for _, id in ipairs(ids) do
    local st = http_get(id, "/status")
    local parts = {}
    for _, r in ipairs(st.routes) do parts[#parts + 1] = table.concat(r.path, ">") end
    local peers = {}
    for _, p in ipairs(st.peers) do peers[#peers + 1] = p.id .. "(" .. p.direction .. ")" end
    print(string.format("  %-7s peers %-40s routes %s", id, table.concat(peers, " "), table.concat(parts, "  ")))
  end

  -- the two nodes farthest apart (the first such pair)
  local from, far, best = ids[1], ids[2], 0
  for _, a in ipairs(ids) do
    local dist = bfs(a)
    for _, b in ipairs(ids) do
      if dist[b] > best then from, far, best = a, b, dist[b] end
    end
  end
  print(string.format("\nremote calls (%s -> %s is %d hop%s):", from, far, best, best == 1 and "" or "s"))
  local function remote(caller, to, method, args)
    return rpc(caller, "remote_call", { node_id = to, server_name = "counter", method = method,
      args = json.array(args or {}), timeout = 5 })
  end
  local r = remote(from, far, "whoami")
  if not (r and r.result == far) then error("whoami on " .. far .. " did not answer " .. far, 0) end
  remote(from, far, "increment", { 5 })
  remote(far, from, "increment", { 1 })
  remote(from, far, "echo", { "hello", 42, { nested = true } })
  for _, id in ipairs(ids) do remote(from, id, "increment") end
  remote(from, far, "get")
  rpc(far, "counter.get", json.array())
  remote(from, "nowhere", "get")     -- ENOROUTE
  remote(from, far, "nosuch")        -- ENOMETHOD
  remote(from, far, "slow", { 2 })   -- waits 2 s
  return true
end

local ok, err = pcall(main)
if not ok then io.stderr:write("\nmesh.lua: ", tostring(err), "\n") end
if ok and keep then
  print("\nthe nodes keep running; try for example:")
  print(string.format("  curl -s http://127.0.0.1:%d/status", port[ids[1]]))
  print("press Enter to stop them")
  pcall(io.read)
end
print("\nstopping the nodes")
stop_all()
if ok then
  os.execute("rm -rf " .. q(logdir))
else
  io.stderr:write("node logs kept in " .. logdir .. "\n")
  for _, id in ipairs(ids) do
    local f = io.open(logdir .. "/" .. id .. ".log")
    if f then
      local s = f:read("a")
      f:close()
      if s ~= "" then io.stderr:write("--- " .. id .. ":\n" .. s) end
    end
  end
end
os.exit(ok and 0 or 1)
