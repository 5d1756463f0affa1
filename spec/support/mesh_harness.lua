-- spec/support/mesh_harness.lua: real mesh nodes for the specs.
--
-- Each node is a separate `bin/relaynet` process (by default running
-- examples/p2p/counter_server.lua) started with --port/--node-id/--add-peer on
-- a free loopback port. Everything that waits (process exit, HTTP polls)
-- goes through H.sh, so the test's own loop keeps running: the test process
-- itself can be a mesh node (M:join) and call rn.remote_call directly.
--
--   local MH = require("mesh_harness")
--   MH.run(function(m)
--     m:start_topology("line", { "n1", "n2", "n3" })
--     m:join({ "n1" })               -- this process becomes node "tester"
--     m:wait_converged()
--     assert.equal(1, rn.remote_call("n3", "counter", "increment", {}))
--   end, { timeout = 60 })
--
-- MH.run always kills every process it started, also when the test fails or
-- times out: SIGTERM first, then SIGKILL, then `pkill -f` on a marker that is
-- unique to this harness instance (it is the processes' argv[0]).
--
-- TLS: set m.tls = { cert =, key =, ca = } (spec/support/tls_files.lua)
-- before starting nodes: every node then serves https/wss with that
-- certificate (--tls-cert, --tls-key, --tls-ca), links over wss://localhost,
-- and the harness's curl calls trust that CA.

local rn = require("relaynet")
local H = require("helper")
local json = require("relaynet.json")

local M = {}

M.RELAYNET = H.ROOT .. "/bin/relaynet"
M.COUNTER = H.ROOT .. "/examples/p2p/counter_server.lua"
M.LUA = "lua5.4"

local Mesh = {}
Mesh.__index = Mesh

local instance_seq = 0

local function now() return rn.now() end

--- Waits (suspending) until pred() returns a truthy value, which it returns.
--- On timeout raises "timed out waiting for <what>" plus describe() if given.
function M.wait_until(pred, what, timeout, describe)
  local deadline = now() + (timeout or 10)
  while true do
    local v = pred()
    if v then return v end
    if now() > deadline then
      local extra = describe and ("\n" .. tostring(describe())) or ""
      error("timed out after " .. (timeout or 10) .. " s waiting for " .. what .. extra, 2)
    end
    rn.sleep(0.05)
  end
end

--- n free TCP ports on 127.0.0.1 (bound to port 0 at the same time by python3).
function M.free_ports(n)
  local py = "import socket\nss=[]\nfor _ in range(" .. n .. "):\n" ..
    "    s=socket.socket(); s.bind(('127.0.0.1',0)); ss.append(s)\n" ..
    "print(' '.join(str(s.getsockname()[1]) for s in ss))\n"
  local rc, out, err = H.sh(H.PY .. " -c " .. H.q(py)):wait(15)
  assert(rc == 0, "free_ports: " .. tostring(err))
  local ports = {}
  for p in out:gmatch("%d+") do ports[#ports + 1] = tonumber(p) end
  assert(#ports == n, "free_ports: got " .. out)
  return ports
end

--- A base port p such that p .. p+n-1 are all free on 127.0.0.1 right now.
function M.free_port_range(n)
  local py = "import socket, random\n" ..
    "for _ in range(200):\n" ..
    "    p = random.randint(20000, 60000 - " .. n .. ")\n" ..
    "    ss = []\n" ..
    "    try:\n" ..
    "        for i in range(" .. n .. "):\n" ..
    "            s = socket.socket(); ss.append(s); s.bind(('127.0.0.1', p + i))\n" ..
    "        print(p); break\n" ..
    "    except OSError:\n" ..
    "        pass\n" ..
    "    finally:\n" ..
    "        for s in ss: s.close()\n"
  local rc, out, err = H.sh(H.PY .. " -c " .. H.q(py)):wait(15)
  local base = rc == 0 and tonumber(out:match("%d+"))
  assert(base, "free_port_range: " .. tostring(out) .. tostring(err))
  return base
end

local function slurp(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function tail(s, lines)
  if not s or s == "" then return "" end
  local all = {}
  for l in s:gmatch("[^\n]*") do all[#all + 1] = l end
  local from = math.max(1, #all - lines)
  return table.concat(all, "\n", from)
end

--- Which node ids `hops` from `from` should have, given undirected edges:
--- a breadth-first search. Returns { node = hops }.
function M.shortest_hops(edges, from)
  local adj = {}
  for _, e in ipairs(edges) do
    adj[e[1]] = adj[e[1]] or {}
    adj[e[2]] = adj[e[2]] or {}
    adj[e[1]][e[2]] = true
    adj[e[2]][e[1]] = true
  end
  local dist, queue, head = { [from] = 0 }, { from }, 1
  while queue[head] do
    local x = queue[head]
    head = head + 1
    for y in pairs(adj[x] or {}) do
      if not dist[y] then
        dist[y] = dist[x] + 1
        queue[#queue + 1] = y
      end
    end
  end
  dist[from] = nil
  return dist
end

--- The dial list of a topology over `ids`: { {dialer, target}, ... }.
---  star: every other node dials ids[1]; line: ids[i] dials ids[i-1];
---  ring: a line plus ids[1] dialing ids[#ids]; full: ids[i] dials every ids[j], j < i.
function M.topology(kind, ids)
  local edges = {}
  if kind == "star" then
    for i = 2, #ids do edges[#edges + 1] = { ids[i], ids[1] } end
  elseif kind == "line" or kind == "ring" then
    for i = 2, #ids do edges[#edges + 1] = { ids[i], ids[i - 1] } end
    if kind == "ring" and #ids > 2 then edges[#edges + 1] = { ids[1], ids[#ids] } end
  elseif kind == "full" then
    for i = 2, #ids do
      for j = 1, i - 1 do edges[#edges + 1] = { ids[i], ids[j] } end
    end
  else
    error("unknown topology " .. tostring(kind), 2)
  end
  return edges
end

function M.new()
  instance_seq = instance_seq + 1
  local marker = string.format("rnmesh-%d-%d-%d", os.time() % 100000, math.random(1, 1e6), instance_seq)
  return setmetatable({
    marker = marker,
    nodes = {},      -- id -> { id, port, peers = {ids}, args, handle, pid, starts }
    order = {},      -- ids in start order
    edges = {},      -- { {dialer, target} } between node ids (including the tester)
    tester = nil,    -- this process's node id once joined
    joined = {},     -- urls this process added with rn.add_peer
    ports = {},      -- pool of free ports
  }, Mesh)
end

--- Reserves a port for node `id` (nodes keep their port across restarts).
function Mesh:port_of(id)
  local node = self.nodes[id]
  if node then return node.port end
  if #self.ports == 0 then self.ports = M.free_ports(8) end
  local node_port = table.remove(self.ports)
  self.nodes[id] = { id = id, port = node_port, peers = {}, starts = 0 }
  return node_port
end

function Mesh:url(id)
  if id == self.tester and self.tester_port then
    return "ws://127.0.0.1:" .. self.tester_port .. "/ws/p2p"
  end
  if self.tls then return "wss://localhost:" .. self:port_of(id) .. "/ws/p2p" end
  return "ws://127.0.0.1:" .. self:port_of(id) .. "/ws/p2p"
end

function Mesh:http(id)
  if self.tls then return "https://localhost:" .. self:port_of(id) end
  return "http://127.0.0.1:" .. self:port_of(id)
end

-- curl's options for this mesh: trust the test CA under TLS.
function Mesh:curl_opts()
  if self.tls then return "--cacert " .. H.q(self.tls.ca) .. " " end
  return ""
end

local function argv0(self, id) return self.marker .. "-" .. id end

--- Starts node `id`. opts: peers = {ids or ws:// urls} to dial, script =
--- path | false (false: a bare relay node without a script), args = {extra
--- CLI arguments}, wait = false to not wait until /status answers.
function Mesh:start(id, opts)
  opts = opts or {}
  local port = self:port_of(id)
  local node = self.nodes[id]
  assert(not node.handle or node.exited, "node " .. id .. " is already running")
  if not node.starts or node.starts == 0 then
    self.order[#self.order + 1] = id
    node.peers = opts.peers or {}
    node.script = opts.script
    if node.script == nil then node.script = M.COUNTER end
    node.args = opts.args or {}
    for _, p in ipairs(node.peers) do
      if not p:match("^wss?://") then self.edges[#self.edges + 1] = { id, p } end
    end
  end
  local argv = { "exec", "-a", H.q(argv0(self, id)), M.LUA, H.q(M.RELAYNET) }
  if node.script then argv[#argv + 1] = H.q(node.script) end
  -- Nodes log warnings and errors only (no info lines, no access log), so
  -- that a spec can tell from stderr that an attack left no trace; a node's
  -- own args may ask for another --log-level (the last one given wins).
  for _, a in ipairs({ "--port", tostring(port), "--host", "127.0.0.1", "--node-id", id, "--log-level", "warn" }) do
    argv[#argv + 1] = H.q(a)
  end
  for _, p in ipairs(node.peers) do
    argv[#argv + 1] = "--add-peer"
    argv[#argv + 1] = H.q(p:match("^wss?://") and p or self:url(p))
  end
  if self.tls then
    for _, a in ipairs({ "--tls-cert", self.tls.cert, "--tls-key", self.tls.key, "--tls-ca", self.tls.ca }) do
      argv[#argv + 1] = H.q(a)
    end
  end
  for _, a in ipairs(node.args) do argv[#argv + 1] = H.q(a) end
  local cmd = "exec bash -c " .. H.q(table.concat(argv, " "))
  node.cmd = table.concat(argv, " ", 4):gsub("'", "")
  node.handle = H.sh(cmd)
  node.exited = false
  node.rc = nil
  node.pid = nil
  node.starts = node.starts + 1
  if opts.wait ~= false then self:wait_up(id) end
  return node
end

--- The OS pid of node `id`'s relaynet process (nil when it is not running).
function Mesh:pid(id)
  local node = self.nodes[id]
  if not node or node.exited then return nil end
  local p = io.popen("pgrep -f " .. H.q("^" .. argv0(self, id) .. " ") .. " 2>/dev/null")
  local pid = tonumber(p:read("l") or "")
  p:close()
  node.pid = pid or node.pid
  return pid
end

--- True when node `id`'s process has exited (without reaping its output).
function Mesh:exited(id)
  local node = self.nodes[id]
  if not node or not node.handle then return true end
  if node.exited then return true end
  local f = io.open(node.handle.base .. ".rc")
  if f then f:close(); return true end
  return false
end

--- Node `id`'s stderr so far (or of its last run).
function Mesh:stderr(id)
  local node = self.nodes[id]
  if not node then return "" end
  if node.exited then return node.err or "" end
  return slurp(node.handle.base .. ".err") or ""
end

function Mesh:stdout(id)
  local node = self.nodes[id]
  if not node then return "" end
  if node.exited then return node.out or "" end
  return slurp(node.handle.base .. ".out") or ""
end

--- Recent stderr of every node, for failure messages.
function Mesh:logs(lines)
  local parts = {}
  for _, id in ipairs(self.order) do
    local node = self.nodes[id]
    local state = node.exited and ("exited " .. tostring(node.rc)) or (self:exited(id) and "exited" or "running")
    parts[#parts + 1] = string.format("--- %s (port %d, %s): %s\n%s", id, node.port, state,
      node.cmd or "", tail(self:stderr(id) .. self:stdout(id), lines or 15))
  end
  return table.concat(parts, "\n")
end

--- GET path on node `id`: status, decoded JSON (or raw body).
function Mesh:get(id, path)
  local status, body = H.curl(self:curl_opts() .. H.q(self:http(id) .. path), 15)
  if not status then return nil, body end
  local v = json.decode(body)
  if v == nil then return status, body end
  return status, v
end

--- mesh_status of node `id` via GET /status (nil when it does not answer).
function Mesh:status(id)
  local status, v = self:get(id, "/status")
  if status == 200 and type(v) == "table" then return v end
  return nil
end

--- Waits until node `id` answers GET /status (fails early if it exited).
function Mesh:wait_up(id, timeout)
  M.wait_until(function()
    if self:exited(id) then
      error("node " .. id .. " exited during startup:\n" .. self:logs(30), 0)
    end
    return self:status(id) ~= nil
  end, "node " .. id .. " to answer GET /status", timeout or 15, function() return self:logs() end)
end

--- Sends `signal` (TERM, INT, KILL) to node `id`'s process and waits until
--- it has exited: returns its exit code (0 after a clean shutdown, 137 for
--- SIGKILL), stdout and stderr.
function Mesh:signal(id, signal, timeout)
  local node = assert(self.nodes[id], "unknown node " .. tostring(id))
  if node.exited then return node.rc, node.out, node.err end
  local pid = self:pid(id)
  if pid then os.execute("kill -" .. signal .. " " .. pid .. " 2>/dev/null") end
  local ok, rc, out, err = pcall(node.handle.wait, node.handle, timeout or 15)
  if not ok then -- did not exit in time: force it
    os.execute("pkill -KILL -f " .. H.q("^" .. argv0(self, id) .. " ") .. " 2>/dev/null")
    rc, out, err = node.handle:wait(5)
  end
  node.exited, node.rc, node.out, node.err = true, rc, out, err
  return rc, out, err
end

--- SIGTERM: graceful shutdown; returns exit code, stdout, stderr.
function Mesh:stop(id, timeout) return self:signal(id, "TERM", timeout) end

--- SIGKILL: the node dies at once (its sockets are reset by the kernel).
function Mesh:kill(id) return self:signal(id, "KILL", 10) end

--- Starts a stopped or killed node again, same id, port and peers.
function Mesh:restart(id, opts)
  local node = assert(self.nodes[id], "unknown node " .. tostring(id))
  if not node.exited then self:stop(id) end
  return self:start(id, opts)
end

--- Starts `ids` as topology `kind` (see M.topology). opts.script and
--- opts.args apply to every node; opts.scripts = {id = path|false} per node.
function Mesh:start_topology(kind, ids, opts)
  opts = opts or {}
  local peers = {}
  for _, id in ipairs(ids) do peers[id] = {} end
  for _, e in ipairs(M.topology(kind, ids)) do table.insert(peers[e[1]], e[2]) end
  for _, id in ipairs(ids) do self:port_of(id) end
  for _, id in ipairs(ids) do
    local script = opts.script
    if opts.scripts and opts.scripts[id] ~= nil then script = opts.scripts[id] end
    self:start(id, { peers = peers[id], script = script, args = opts.args, wait = false })
  end
  for _, id in ipairs(ids) do self:wait_up(id) end
end

--- Makes this test process a mesh node: sets its node id (opts.id, default
--- "tester") and dials `ids`. opts.listen = true also starts a server (so
--- nodes can dial this process at m:url(m.tester)).
function Mesh:join(ids, opts)
  opts = opts or {}
  self.tester = opts.id or self.tester or "tester"
  if rn.node_id() ~= self.tester then rn.set_node_id(self.tester) end
  if opts.listen and not self.tester_server then
    self.tester_server = H.listen()
    self.tester_port = self.tester_server.port
  end
  for _, id in ipairs(ids or {}) do
    local url = self:url(id)
    rn.add_peer(url)
    self.joined[#self.joined + 1] = url
    self.edges[#self.edges + 1] = { self.tester, id }
  end
end

--- Adds an edge the harness should expect in route checks (for peers added
--- by hand).
function Mesh:expect_edge(a, b)
  self.edges[#self.edges + 1] = { a, b }
end

local function live_edges(self)
  local edges = {}
  for _, e in ipairs(self.edges) do
    local ok = true
    for _, x in ipairs(e) do
      if x ~= self.tester and (not self.nodes[x] or self:exited(x)) then ok = false end
    end
    if ok then edges[#edges + 1] = e end
  end
  return edges
end

--- The routes a node reports, as { node = hops } (own node left out).
local function hops_of(routes, self_id)
  local t = {}
  for _, r in ipairs(routes or {}) do
    if type(r) == "table" and r.node and r.node ~= self_id then t[r.node] = r.hops end
  end
  return t
end

--- GET /status of several nodes at once (curl in parallel): { id = status }.
function Mesh:statuses(ids)
  local handles = {}
  for _, id in ipairs(ids) do
    if id ~= self.tester then
      handles[id] = H.sh("curl -s -S -m 10 " .. self:curl_opts() .. H.q(self:http(id) .. "/status"))
    end
  end
  local out = {}
  for id, h in pairs(handles) do
    local rc, body = h:wait(15)
    local v = rc == 0 and json.decode(body) or nil
    if type(v) == "table" then out[id] = v end
  end
  return out
end

--- Routes of node `id` (the tester's from rn.routes(), others from /status).
function Mesh:routes_of(id, status)
  if id == self.tester then return rn.routes() end
  local st = status
  if st == nil then st = self:status(id) end
  return st and st.routes
end

--- Compares what node `id` reports with the shortest hop counts over the
--- live edges. Returns true, or false and a description of the difference.
function Mesh:routes_match(id, status)
  local want = M.shortest_hops(live_edges(self), id)
  local routes = self:routes_of(id, status)
  if not routes then return false, id .. ": no /status" end
  local have = hops_of(routes, id)
  local diffs = {}
  for node, hops in pairs(want) do
    if have[node] ~= hops then
      diffs[#diffs + 1] = string.format("%s->%s: want %d hops, have %s", id, node, hops, tostring(have[node]))
    end
  end
  for node, hops in pairs(have) do
    if want[node] == nil then
      diffs[#diffs + 1] = string.format("%s->%s: unexpected route (%s hops)", id, node, tostring(hops))
    end
  end
  if #diffs > 0 then
    table.sort(diffs)
    return false, table.concat(diffs, "; ")
  end
  return true
end

--- Waits until every running node (and the tester, if joined) has exactly
--- the shortest routes the live edges give: every reachable node, the right
--- hop count, no route to a dead node.
function Mesh:wait_converged(timeout, ids)
  if not ids then
    ids = {}
    for _, id in ipairs(self.order) do
      if not self:exited(id) then ids[#ids + 1] = id end
    end
    if self.tester then ids[#ids + 1] = self.tester end
  end
  local last = {}
  M.wait_until(function()
    local all = true
    local st = self:statuses(ids)
    for _, id in ipairs(ids) do
      local ok, why = self:routes_match(id, st[id] or false)
      last[id] = why
      if not ok then all = false end
    end
    return all
  end, "routes to converge", timeout or 20, function()
    local why = {}
    for _, id in ipairs(ids) do
      if last[id] then why[#why + 1] = last[id] end
    end
    return table.concat(why, "\n") .. "\n" .. self:logs()
  end)
end

--- Waits until this process has a direct, established link to node `id`.
function Mesh:wait_peer(id, timeout)
  return M.wait_until(function()
    for _, p in ipairs(rn.peers()) do
      if p.id == id then return p end
    end
  end, "a link to " .. id, timeout or 10, function() return self:logs() end)
end

--- Posts a JSON-RPC 2.0 request to node `id`'s /rpc (through curl): returns
--- the decoded response table, or nil and a description.
function Mesh:rpc(id, method, params, rpc_id)
  local req = { jsonrpc = "2.0", id = rpc_id or 1, method = method, params = params }
  local body = assert(json.encode(req))
  return self:rpc_raw(id, body)
end

--- Posts a raw body to node `id`'s /rpc: decoded response, HTTP status.
function Mesh:rpc_raw(id, body, timeout)
  local status, out = H.curl(self:curl_opts() .. "-X POST -H 'content-type: application/json' --data-binary "
    .. H.q(body) .. " " .. H.q(self:http(id) .. "/rpc"), timeout or 30)
  if not status then return nil, "curl failed: " .. tostring(out) end
  local v = json.decode(out)
  if type(v) ~= "table" then return nil, "HTTP " .. status .. ": " .. tostring(out) end
  return v, status
end

--- remote_call through node `from`'s JSON-RPC endpoint: result, or nil,
--- error message, error code string (ENOROUTE, ...) when it failed.
function Mesh:call_via(from, node_id, server, method, args, timeout)
  local params = { node_id = node_id, server_name = server, method = method,
    args = json.array(args or {}), timeout = timeout }
  local res, err = self:rpc(from, "remote_call", params)
  if not res then return nil, err, "EHTTP" end
  if res.error then
    local e = res.error
    local msg = type(e) == "table" and tostring(e.message) or tostring(e)
    local code = type(e) == "table" and type(e.data) == "table" and e.data.code
      or msg:match("^(E%u+)") or tostring(type(e) == "table" and e.code)
    return nil, msg, code
  end
  if res.result == json.null then return nil end
  return res.result
end

--- A raw WebSocket to node `id`'s /ws/p2p (our own client, no mesh logic).
function Mesh:raw(id, opts)
  opts = opts or { timeout = 5 }
  if self.tls and opts.ca == nil then opts.ca = self.tls.ca end
  return assert(rn.ws_connect(self:url(id), opts))
end

--- Stops every node: SIGTERM to all at once, then waits; anything left after
--- `grace` seconds gets SIGKILL. Returns { id = exit code } for the nodes it
--- stopped (nodes that had already exited are left out).
function Mesh:stop_all(grace)
  for _, url in ipairs(self.joined) do pcall(rn.remove_peer, url) end
  self.joined = {}
  for _, id in ipairs(self.order) do
    local pid = self:pid(id)
    if pid then os.execute("kill -TERM " .. pid .. " 2>/dev/null") end
  end
  local codes = {}
  for _, id in ipairs(self.order) do
    local node = self.nodes[id]
    if not node.exited and node.handle then
      local ok, rc, out, err = pcall(node.handle.wait, node.handle, grace or 10)
      if not ok then
        os.execute("pkill -KILL -f " .. H.q("^" .. argv0(self, id) .. " ") .. " 2>/dev/null")
        ok, rc, out, err = pcall(node.handle.wait, node.handle, 5)
        if not ok then rc = "did not exit" end
      end
      node.exited, node.rc, node.out, node.err = true, rc, out, err
      codes[id] = rc
    end
  end
  if self.tester_server then pcall(self.tester_server.close, self.tester_server) end
  return codes
end

--- Last resort (outside the loop too): SIGKILL everything with our marker,
--- then remove the output files of nodes nobody waited for. The pattern is
--- written "[r]nmesh-..." so that it does not match the shell running pkill.
function Mesh:kill_everything()
  local pattern = "[" .. self.marker:sub(1, 1) .. "]" .. self.marker:sub(2)
  os.execute("pkill -KILL -f " .. H.q(pattern) .. " >/dev/null 2>&1")
  local leftover = {}
  for _, id in ipairs(self.order) do
    local node = self.nodes[id]
    if node.handle and not node.exited then leftover[#leftover + 1] = node.handle.base end
  end
  if #leftover > 0 then
    os.execute("sleep 0.2")
    for _, base in ipairs(leftover) do
      for _, ext in ipairs({ ".out", ".err", ".rc", ".rc.tmp" }) do os.remove(base .. ext) end
    end
  end
end

--- Runs fn(mesh) inside H.run (opts go to H.run; timeout defaults to 60 s)
--- and always cleans up: graceful stop of every node inside the loop, then
--- SIGKILL by marker whatever happened. On failure the nodes' recent stderr
--- is appended to the error.
function M.run(fn, opts)
  opts = opts or {}
  opts.timeout = opts.timeout or 60
  local m = M.new()
  local ok, err = pcall(H.run, function()
    local fok, ferr = xpcall(fn, function(e)
      return debug.traceback(tostring(e), 2)
    end, m)
    local codes = m:stop_all()
    if not fok then
      error(tostring(ferr) .. "\n\nnode logs:\n" .. m:logs(25), 0)
    end
    m.exit_codes = codes
  end, opts)
  if not ok and not tostring(err):find("\nnode logs:\n", 1, true) then
    err = tostring(err) .. "\n\nnode logs:\n" .. m:logs(25) -- e.g. the test timed out
  end
  -- the loop may have stopped before stop_all ran: forget our peers anyway
  for _, url in ipairs(m.joined) do pcall(rn.remove_peer, url) end
  m:kill_everything()
  if not ok then error(err, 0) end
  return m
end

return M
