-- relaynet remote_call benchmark: mesh nodes and the Lua caller that drives
-- them (bench/run.py starts every process; see docs/BENCHMARKS.md).
--
--   relaynet bench/peers/rn_rpc_bench.lua node --port P --node-id ID [--add-peer URL]
--       a mesh node exposing server `bench` with echo(x) -> x. Every node of
--       a chain runs this (relays too, so all of them carry the same state).
--
--   lua5.4 bench/peers/rn_rpc_bench.lua caller --peer URL --target ID --hops H [common]
--       joins the mesh through one link to URL (ws://host:port/ws/p2p),
--       waits until it has a route of H hops to node ID (hops as in
--       rn.routes(): 1 = direct link) and a first call succeeds, then keeps
--       --conc calls of rn.remote_call(ID, "bench", "echo", {payload}) in
--       flight (one per coroutine, each calls again as soon as its answer
--       is back).
--
--   lua5.4 bench/peers/rn_rpc_bench.lua echo-caller --url ws://host:port/ [common]
--       the floor: --conc coroutines, each with its own rn.ws_connect client
--       to an echo server, loop client:send(payload) + client:receive().
--
--   common: --conc N (16) --size BYTES (16) --duration S (3) --warmup S (1)
--           --timeout S (5, per call) --server-pids PID,PID,... --roles NAME,...
--           --ready-timeout S (20) --clk-tck N (100, USER_HZ of /proc/PID/stat)
--           --count N (0: off): instead of warm-up and duration, make exactly
--           N calls (after the first one that proves the route) and exit
--           once all are answered; bench/callgrind_mesh.sh uses it so that
--           the instructions of two counts can be subtracted.
--
-- The callers print one JSON line with loadgen's keys (msgs, msgs_per_s,
-- lat_p50_us, lat_p99_us, lat_max_us, seconds, client_cpu_s, server_cpu_s,
-- server_cpu_pct, server_hwm_kb, errors) plus lat_mean_us, per-node CPU and
-- memory (`nodes`, in --server-pids order), the error codes seen
-- (`error_codes`), the first error message and errors_measured (those inside
-- the measured window). msgs counts the calls that completed inside the
-- window; their latencies are the percentiles. Every call that fails or
-- returns something other than the payload counts as an error, warm-up
-- included; a caller that cannot get ready prints {"error": ...} and exits 1.
local rn = require("relaynet")

-- a monotonic clock with sub-microsecond resolution (relaynet.core.hrtime);
-- rn.now() (the loop's millisecond clock) only if that ever disappears
local hrtime, clock_name
do
  local ok, core = pcall(require, "relaynet.core")
  if ok and type(core) == "table" and type(core.hrtime) == "function" then
    hrtime, clock_name = core.hrtime, "relaynet.core.hrtime"
  else
    hrtime, clock_name = rn.now, "rn.now (ms resolution)"
  end
end

local mode = arg and arg[1]

if mode == "node" then
  -- under the relaynet command: the server (--port), node id and peers exist
  if not rn.running() then
    io.stderr:write("rn_rpc_bench: node mode runs under the relaynet command:\n",
      "  relaynet bench/peers/rn_rpc_bench.lua node --port P --node-id ID [--add-peer URL]\n")
    os.exit(2)
  end
  rn.expose("bench", { echo = function(x) return x end })
  print("rn_rpc_bench node " .. rn.node_id() .. " ready")
  io.stdout:flush()
  return
end

if mode ~= "caller" and mode ~= "echo-caller" then
  io.stderr:write("usage: lua5.4 rn_rpc_bench.lua caller|echo-caller [options] (see the file's header)\n")
  os.exit(2)
end

local opt = { conc = 16, size = 16, duration = 3, warmup = 1, timeout = 5, ready_timeout = 20,
  hops = 1, pids = {}, roles = {}, clk_tck = 100, count = 0 }
do
  local i = 2
  while arg[i] do
    local k, v = arg[i]:gsub("^%-%-?", ""), arg[i + 1]
    if v == nil then
      io.stderr:write("rn_rpc_bench: " .. arg[i] .. " needs a value\n")
      os.exit(2)
    end
    if k == "conc" or k == "size" or k == "hops" or k == "count" then opt[k] = math.tointeger(tonumber(v))
    elseif k == "duration" or k == "warmup" or k == "timeout" then opt[k] = tonumber(v)
    elseif k == "ready-timeout" then opt.ready_timeout = tonumber(v)
    elseif k == "clk-tck" then opt.clk_tck = tonumber(v)
    elseif k == "peer" or k == "target" or k == "url" or k == "node-id" then opt[k] = v
    elseif k == "server-pids" then
      for p in v:gmatch("%d+") do opt.pids[#opt.pids + 1] = tonumber(p) end
    elseif k == "roles" then
      for r in v:gmatch("[^,]+") do opt.roles[#opt.roles + 1] = r end
    else
      io.stderr:write("rn_rpc_bench: unknown option " .. arg[i] .. "\n")
      os.exit(2)
    end
    i = i + 2
  end
  for _, k in ipairs({ "conc", "size", "duration", "warmup", "timeout", "hops", "count" }) do
    if not opt[k] or opt[k] < 0 then
      io.stderr:write("rn_rpc_bench: bad --" .. k .. "\n")
      os.exit(2)
    end
  end
  if mode == "caller" and not (opt.peer and opt.target) then
    io.stderr:write("rn_rpc_bench: caller needs --peer URL and --target NODE\n")
    os.exit(2)
  end
  if mode == "echo-caller" and not opt.url then
    io.stderr:write("rn_rpc_bench: echo-caller needs --url ws://host:port/\n")
    os.exit(2)
  end
end

-- /proc readings ------------------------------------------------------------------


-- utime + stime of a process in seconds (every thread), or nil
local function proc_cpu(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  local rest = s:match("^.*%)%s+(.*)$") -- the command name may hold spaces
  if not rest then return nil end
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  -- after the name: state(1) ... utime is field 14 of the line, 12 here
  local ut, st = tonumber(fields[12]), tonumber(fields[13])
  if not ut or not st then return nil end
  return (ut + st) / opt.clk_tck
end

local function proc_kb(pid, key)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match(key .. ":%s*(%d+)"))
end

local function nodes_cpu()
  local t = {}
  for i, pid in ipairs(opt.pids) do t[i] = proc_cpu(pid) end
  return t
end

-- the measurement ------------------------------------------------------------------

local payload = string.rep("x", opt.size)
local lat = {}           -- latencies (seconds) of the calls completed inside the window
local done = 0           -- calls completed inside the window
local errors, errors_measured = 0, 0
local error_codes = {}
local first_error
local m0, m1             -- the measured window (hrtime)
local stop = false

local function count_error(code, msg)
  errors = errors + 1
  local t = hrtime()
  if m0 and t >= m0 and t < (m1 or math.huge) then errors_measured = errors_measured + 1 end
  code = code or "?"
  error_codes[code] = (error_codes[code] or 0) + 1
  if not first_error then first_error = tostring(msg) end
end

local issued = 0         -- calls started (--count mode)

-- one round trip; `once(payload)` returns the answer or nil, msg, code
local function worker(once)
  while not stop do
    if opt.count > 0 then
      if issued >= opt.count then break end
      issued = issued + 1
    end
    local t0 = hrtime()
    local r, msg, code = once(payload)
    local t1 = hrtime()
    if r ~= payload then
      if r == nil then
        count_error(code, msg)
      else
        count_error("EMISMATCH", "answer differs from the payload: " .. tostring(r):sub(1, 60))
      end
      -- a failure that comes back at once (ENOROUTE, ECLOSED) must not spin
      if t1 - t0 < 0.001 then rn.sleep(0.01) end
    elseif m0 and t1 >= m0 and t1 < (m1 or math.huge) then -- completed inside the window
      done = done + 1
      lat[#lat + 1] = t1 - t0
    end
  end
end

local function pct(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.floor(p * (#sorted - 1) + 0.5) + 1] * 1e6
end

local function round(x, d)
  local m = 10 ^ (d or 1)
  return math.floor(x * m + 0.5) / m
end

local function fail_ready(msg)
  print(rn.json.encode({ mode = mode, error = msg }))
  io.stdout:flush()
  os.exit(1)
end

-- runs `conc` workers, measures, prints the JSON line, exits
local function measure(once, extra)
  local running = opt.conc
  for _ = 1, opt.conc do
    rn.spawn(function()
      local ok, err = pcall(worker, once)
      if not ok then count_error("ELUA", err) end
      running = running - 1
    end)
  end
  local c0, sc0
  if opt.count > 0 then
    -- exactly opt.count calls: the window is all of them
    c0, sc0 = os.clock(), nodes_cpu()
    m0 = hrtime()
    while running > 0 do rn.sleep(0.005) end
    m1 = hrtime() + 1e-9
  else
    rn.sleep(opt.warmup)
    c0, sc0 = os.clock(), nodes_cpu()
    m0 = hrtime()
    rn.sleep(opt.duration)
    m1 = hrtime()
  end
  local c1, sc1 = os.clock(), nodes_cpu()
  stop = true
  -- let the calls in flight finish (at most one per worker, each bounded
  -- by its timeout) so their errors are counted too
  local t_end = rn.now() + opt.timeout + 1
  while running > 0 and rn.now() < t_end do rn.sleep(0.01) end
  if running > 0 then count_error("EHUNG", running .. " calls still pending after the run") end
  local secs = m1 - m0
  table.sort(lat)
  local sum = 0
  for i = 1, #lat do sum = sum + lat[i] end
  local res = {
    mode = mode, conns = opt.conc, inflight = 1, size = opt.size,
    msgs = done, msgs_per_s = round(done / secs), mb_per_s = round(done * opt.size / secs / 1e6, 2),
    lat_p50_us = round(pct(lat, 0.5)), lat_p99_us = round(pct(lat, 0.99)),
    lat_max_us = round(#lat > 0 and lat[#lat] * 1e6 or 0), lat_mean_us = round(#lat > 0 and sum / #lat * 1e6 or 0),
    seconds = round(secs, 3), client_cpu_s = round(c1 - c0, 3),
    errors = errors, errors_measured = errors_measured, error_codes = error_codes,
    first_error = first_error, clock = clock_name, unfinished = running,
  }
  -- the nodes' CPU over the measured window, summed and per node
  local total, nodes, hwm = 0, {}, 0
  for i, pid in ipairs(opt.pids) do
    local a, b = sc0[i], sc1[i]
    local n = { pid = pid, role = opt.roles[i] or ("node" .. i) }
    if a and b then
      n.cpu_s = round(b - a, 3)
      total = total + (b - a)
    end
    n.hwm_kb = proc_kb(pid, "VmHWM")
    n.rss_kb = proc_kb(pid, "VmRSS")
    hwm = math.max(hwm, n.hwm_kb or 0)
    nodes[i] = n
  end
  if #opt.pids > 0 then
    res.server_cpu_s = round(total, 3)
    res.server_cpu_pct = round(100 * total / secs)
    res.server_hwm_kb = hwm -- the largest node
    res.nodes = nodes
  end
  for k, v in pairs(extra) do res[k] = v end
  print(rn.json.encode(res))
  io.stdout:flush()
  os.exit(0)
end

-- modes --------------------------------------------------------------------------------

local function caller()
  rn.set_node_id(opt["node-id"] or "bench-caller")
  rn.add_peer(opt.peer)
  local t_ready = rn.now() + opt.ready_timeout
  -- a route of the expected length ...
  local hops
  while true do
    for _, r in ipairs(rn.routes()) do
      if r.node == opt.target then hops = r.hops end
    end
    if hops == opt.hops then break end
    if rn.now() > t_ready then
      fail_ready(string.format("no %d-hop route to %s within %g s (routes: %s)", opt.hops, opt.target,
        opt.ready_timeout, rn.json.encode(rn.routes())))
    end
    rn.sleep(0.02)
  end
  -- ... and a first call that succeeds
  local r, msg
  repeat
    r, msg = rn.remote_call(opt.target, "bench", "echo", { payload }, opt.timeout)
    if r == payload then break end
    if rn.now() > t_ready then fail_ready("first call failed: " .. tostring(msg)) end
    rn.sleep(0.05)
  until false
  local target, timeout = opt.target, opt.timeout
  measure(function(p)
    return rn.remote_call(target, "bench", "echo", { p }, timeout)
  end, { route_hops = hops, target = target, route = (function()
    for _, rt in ipairs(rn.routes()) do
      if rt.node == target then return rt.path end
    end
  end)() })
end

local function echo_caller()
  -- one connection per coroutine, one message in flight on each
  local clients = {}
  for i = 1, opt.conc do
    local c, err = rn.ws_connect(opt.url, { timeout = opt.ready_timeout })
    if not c then fail_ready("ws_connect " .. opt.url .. ": " .. tostring(err)) end
    clients[i] = c
  end
  local mine = {} -- coroutine -> its client
  local timeout = opt.timeout
  measure(function(p)
    -- each worker takes a client of its own the first time and keeps it
    local co = coroutine.running()
    local c = mine[co]
    if not c then
      c = table.remove(clients)
      mine[co] = c
    end
    local ok, err, code = c:send(p)
    if not ok then return nil, err, code end
    return c:receive(timeout)
  end, {})
end

rn.main(mode == "caller" and caller or echo_caller)
