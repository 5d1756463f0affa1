-- relaynet.mesh: the peer-to-peer mesh. Nodes link over WebSocket
-- (/ws/p2p), learn routes with a path-vector protocol, and forward
-- server calls hop by hop. docs/PROTOCOL.md describes the wire protocol.
--
-- Contract with the rest of relaynet:
--  * init.lua hands inbound /ws/p2p connections to M.accept(rec), then
--    their messages to M.on_link_message(link, text, binary) and their close
--    to M.on_link_close(link, code, reason). Those never suspend.
--  * Everything that waits goes through relaynet.sched (remote_call waits
--    for its response or its timeout; link maintainers wait for closes).
--  * Per-run state (links, routes, calls in flight) is dropped by M.reset()
--    when rn.run() ends; the node id, exposed servers and configured peers
--    persist.

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local hrtime = require("relaynet.core").hrtime

local M = {}

M.PROTOCOL_VERSION = 1

--- Tunables (seconds unless noted). Documented in README.md.
M.config = {
  ping_interval = 5,      -- mesh ping on every link
  link_timeout = 15,      -- a link silent this long is dropped
  hello_timeout = 5,      -- an accepted link must say hello within this
  advert_interval = 10,   -- a route_request is answered at most this often per link
  advert_delay = 0.02,    -- triggered adverts are batched this long
  max_ttl = 16,           -- hops; also the longest accepted path
  default_timeout = 10,   -- remote_call timeout when none is given
  max_timeout = 300,      -- the longest timeout a call may carry
  backoff_min = 0.2,      -- reconnect backoff start
  backoff_max = 5,        -- reconnect backoff cap
  connect_timeout = 5,    -- dialing a peer
  max_pending_links = 64, -- accepted links still waiting for hello
  max_routes = 4096,      -- entries accepted in one advert
  max_servers = 256,      -- server names per node in an advert
  -- Routing and link bounds (counts unless noted; README "limits"). Past a
  -- bound what is over is dropped and counted in mesh_status().stats; an
  -- advert refused whole or a link refused gets a close code (PROTOCOL.md).
  max_links = 128,              -- links up or waiting for hello; an inbound link past it: close 4503
  max_pending_per_address = 16, -- inbound links from one address waiting for hello; past it: close 4429
  max_advert_bytes = 524288,    -- bytes of one advert message; more: refused whole, close 4413
  max_routes_per_link = 4096,   -- destinations held from one neighbour; new ones past it dropped
  max_destinations = 8192,      -- distinct destinations held; new ones past it dropped
  max_route_entries = 16384,    -- routes held over all neighbours; new ones past it dropped
  max_registry_entries = 16384, -- server names held over all routes; names past it dropped
  advert_min_interval = 0.25,   -- seconds; at most one change advert per link this often
  dedup_window = 300,     -- at most this many seconds a served call id is remembered
  max_dedup = 65536,      -- served call ids remembered at most (oldest half forgotten first)
  -- Calls in flight (counts, not seconds). Past each bound the call is
  -- refused at once with EBUSY; nothing waits for a free slot.
  max_calls = 2048,            -- remote calls this node waits for at once (all callers)
  max_served = 4096,           -- served calls that suspended and have not answered yet
  max_forwards = 8192,         -- relayed calls awaiting their response, whole node
  max_forwards_per_link = 2048, -- relayed calls awaiting their response, per incoming link
  forward_slack = 2,           -- a forward is forgotten this long after the call's own deadline
  -- An accepted link may receive this many times its server's ws_msg_rate
  -- and ws_byte_rate (and bursts): one link carries many callers' calls.
  link_rate_scale = 64,
}

local cfg = M.config

local function rn()
  return package.loaded["relaynet"] or require("relaynet")
end

-- identity -------------------------------------------------------------------

local node_id

local function random_hex(n)
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(n) or nil
  if f then f:close() end
  if not bytes then
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    bytes = table.concat(t)
  end
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function M.node_id()
  if not node_id then node_id = "node-" .. random_hex(4) end
  return node_id
end

local links = {} -- forward declaration for set_node_id

function M.set_node_id(id)
  if type(id) ~= "string" or not id:match("^[%w][%w%-_.:]*$") or #id > 64 then
    error("relaynet.set_node_id: a node id is 1-64 characters of letters, digits, '-', '_', '.', ':'", 2)
  end
  if next(links) then error("relaynet.set_node_id: cannot change the node id while links are up", 2) end
  node_id = id
end

-- persistent configuration ---------------------------------------------------------

local exposed = {}   -- server name -> methods table
local peer_urls = {} -- url -> peer record { url, active }
local enabled = true
local message_handler

M.enabled = function() return enabled end

function M.disable()
  enabled = false
end

-- per-run state -------------------------------------------------------------------

local pending_links = {} -- link -> true, before hello
local rib = {}           -- neighbour id -> { [dest] = { path, seq, servers } }
local best = {}          -- dest -> { next, path, seq, servers }
local calls = {}         -- call id -> { co, wid, first_hop, node, owner }
-- Relayed calls awaiting their response: call_key(caller, call id) ->
-- { from, to, deadline, caller }. n_calls, n_forwards and n_served count
-- remote calls waited for, forwards and suspended served calls (kept as
-- counters: the caps are checked on every call).
local forwards = {}
local n_calls, n_forwards, n_served = 0, 0, 0
-- Served call ids, for dropping duplicates: call_key(caller, call id) ->
-- expiry time (the call's own timeout plus a second; a copy arriving later
-- finds its caller gone). Two generations of tables: new ids go into
-- `dedup_new`; when it holds half of cfg.max_dedup ids, or is older than
-- cfg.dedup_window, it becomes `dedup_old` and the previous old generation is
-- dropped whole. So memory stays under max_dedup ids at any call rate, and
-- nothing is ever deleted key by key (a Lua table that is full of deleted
-- keys rehashes on every insert).
local dedup_new, dedup_old, dedup_new_n, dedup_old_n, dedup_born = {}, {}, 0, 0, 0
local my_seq = 1
local next_id = 0
local advert_timer, health_started = nil, false
local started_at = os.time()

local stats
local function zero_stats()
  stats = {
    bad_messages = 0, dropped_loops = 0, unknown_replies = 0, hello_rejected = 0,
    ttl_expired = 0, duplicate_calls = 0, no_route = 0, calls_sent = 0, calls_served = 0,
    forwarded = 0, links_up = 0, links_down = 0, links_refused = 0, dedup_evicted = 0,
    adverts_sent = 0, adverts_refused = 0, routes_dropped = 0, servers_dropped = 0,
    route_requests_limited = 0, links_refused_address = 0,
    calls_refused = 0, served_refused = 0, forwards_refused = 0, forwards_expired = 0,
    calls_canceled = 0, unencodable = 0,
  }
end
zero_stats()

-- Message ids: node id, a random per-process prefix, a counter. The prefix
-- matters: a node restarted under the same id starts its counter again, and
-- without it its first calls would repeat ids that peers still remember in
-- their dedup window (they would drop them as duplicates).
local id_prefix

local function new_id()
  next_id = next_id + 1
  if not id_prefix then id_prefix = "-" .. random_hex(4) .. "-" end
  return M.node_id() .. id_prefix .. next_id
end

local function now() return sched.now() end

local function contains(list, x)
  for i = 1, #list do if list[i] == x then return true end end
  return false
end

local function local_servers()
  local names = {}
  for name in pairs(exposed) do names[#names + 1] = name end
  table.sort(names)
  return names
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function is_name(s, max)
  return type(s) == "string" and #s > 0 and #s <= (max or 128)
end

-- sending ---------------------------------------------------------------------------

local function send(link, env)
  if not link or link.state == "closed" then return false end
  env.timestamp = env.timestamp or math.floor(now() * 1000)
  local text, err = json.encode(env)
  if not text then
    sched.report("relaynet.mesh: cannot encode a " .. tostring(env.type) .. " message: " .. tostring(err))
    return false
  end
  local ok = link.send(text)
  return ok == true
end

-- routing ---------------------------------------------------------------------------
--
-- Routing state is kept so that an advert costs work in proportion to what
-- it changed, never to (links x table):
--  * rib[neighbour][dest] is the route that neighbour advertised;
--  * cands[dest] is the set of neighbours offering a route to dest, so a
--    changed destination is re-selected over its own candidates only;
--  * best[dest] is the selected route, and `dirty` the destinations whose
--    selection changed since the last advert. The next advert (at most one
--    per link every advert_min_interval) carries only those: changed routes
--    and withdrawals. The full table goes out when a link comes up and on a
--    route_request (at most once per link every advert_interval).
-- Counters keep the bounds cheap to check: rib_n[neighbour] (its routes),
-- n_dests (#cands), n_entries (routes over all neighbours) and n_names
-- (server names held in those routes).

local function own_route()
  return { path = { M.node_id() }, seq = my_seq, servers = json.array(local_servers()) }
end

-- True when route b may be advertised to neighbour `peer`: never back
-- through it, never with it on the path, never longer than max_ttl.
local function advertisable(b, peer)
  return b.next ~= peer and #b.path + 1 <= cfg.max_ttl and not contains(b.path, peer)
end

local function route_of(b)
  local path = { M.node_id() }
  for i = 1, #b.path do path[i + 1] = b.path[i] end
  return { path = path, seq = b.seq, servers = json.array(b.servers) }
end

-- An estimate of a route's encoded size, to split adverts without encoding
-- them twice.
local function route_bytes(r)
  local n = 40
  for i = 1, #r.path do n = n + #r.path[i] + 3 end
  for i = 1, #r.servers do n = n + #r.servers[i] + 3 end
  return n
end

-- Sends `link` routes: the full table when `dests` is nil, else the routes
-- of the destinations in the set `dests` (withdrawals for those it should
-- no longer use through us). Messages are split to stay well inside the
-- receiver's max_routes and max_advert_bytes; only the first part of a full
-- table says full = true (the later parts add to it). A peer without the
-- "delta" feature gets one message of at most max_routes / 2 routes.
local function send_table(link, dests)
  local full = dests == nil
  local max_n = math.max(1, cfg.max_routes // 2)
  local max_b = math.max(1024, cfg.max_advert_bytes // 2)
  local routes, withdraw, n, bytes = json.array(), json.array(), 0, 0
  local function flush()
    local data = { seq = my_seq, full = full, routes = routes }
    if #withdraw > 0 then data.withdraw = withdraw end
    send(link, { type = "registry_sync", id = new_id(), from = M.node_id(), to = link.peer, data = data })
    stats.adverts_sent = stats.adverts_sent + 1
    full = false
    routes, withdraw, n, bytes = json.array(), json.array(), 0, 0
  end
  local function add(r, dest)
    local size = r and route_bytes(r) or #dest + 3
    if n > 0 and (n + 1 > max_n or bytes + size > max_b) then
      -- A peer without "delta" replaces its table with every message: it
      -- gets one, and what does not fit is left out.
      if not link.delta then return end
      flush()
    end
    if r then routes[#routes + 1] = r else withdraw[#withdraw + 1] = dest end
    n, bytes = n + 1, bytes + size
  end
  local me = M.node_id()
  if full then
    add(own_route())
    for _, b in pairs(best) do
      if advertisable(b, link.peer) then add(route_of(b)) end
    end
    link.full_sent = now()
    link.full_due = nil
  else
    for dest in pairs(dests) do
      local b = best[dest]
      if dest == me then
        add(own_route())
      elseif b and advertisable(b, link.peer) then
        add(route_of(b))
      else
        add(nil, dest)
      end
    end
  end
  if n > 0 or full then flush() end
end

local dirty = {}        -- dest -> true: its best route changed since the last advert
local last_flush = -math.huge

local function send_adverts()
  advert_timer = nil
  last_flush = now()
  local d = dirty
  if next(d) == nil then return end
  dirty = {}
  local t = now()
  for _, link in pairs(links) do
    -- Peers that did not announce "delta" in their hello get the full table
    -- (a version 1 receiver replaces its table with every advert), at most
    -- once every advert_interval: changes in between wait for the health
    -- loop (full_due), so a flood of small changes cannot make this node
    -- send whole tables to them at the change rate.
    if link.delta then
      send_table(link, d)
    elseif t - (link.full_sent or -math.huge) >= cfg.advert_interval then
      send_table(link, nil)
    else
      link.full_due = true
    end
  end
end

-- Batches changes for advert_delay and keeps adverts at least
-- advert_min_interval apart, so a flood of changes coalesces.
local function schedule_advert()
  if advert_timer or not rn().running() then return end
  local wait = math.max(cfg.advert_delay, last_flush + cfg.advert_min_interval - now())
  advert_timer = sched.after(wait, send_adverts)
end

local cands = {}        -- dest -> { [neighbour] = true }
local rib_n = {}        -- neighbour -> routes held from it
local n_dests, n_entries, n_names = 0, 0, 0

--- Selects the best route to `dest` from its candidates: fewest hops, then
--- the lowest next-hop id; the server list comes from the freshest (highest
--- seq) candidate. Marks dest dirty when the selection changed.
local function select_route(dest)
  local set = cands[dest]
  local pick, pick_peer, fresh
  if set then
    for peer in pairs(set) do
      local e = rib[peer][dest]
      local hops = #e.path
      if not pick or hops < #pick.path or (hops == #pick.path and peer < pick_peer) then
        pick, pick_peer = e, peer
      end
      if not fresh or e.seq > fresh.seq then fresh = e end
    end
  end
  local old = best[dest]
  if not pick then
    if old then best[dest] = nil; dirty[dest] = true end
    return
  end
  local seq, servers = pick.seq, pick.servers
  if fresh.seq > seq then seq, servers = fresh.seq, fresh.servers end
  if old and old.next == pick_peer and old.path == pick.path and old.seq == seq and old.servers == servers then
    return
  end
  best[dest] = { next = pick_peer, path = pick.path, seq = seq, servers = servers }
  dirty[dest] = true
end

-- Stores (e) or removes (e == nil) neighbour `peer`'s route to `dest`,
-- within the bounds: a new route past max_routes_per_link, max_route_entries
-- or max_destinations is dropped (stats.routes_dropped), server names past
-- max_registry_entries are dropped (stats.servers_dropped). Returns true
-- when the table changed.
local function put_route(peer, tbl, dest, e)
  local old = tbl[dest]
  if old then
    n_names = n_names - #old.servers
    if not e then
      tbl[dest] = nil
      rib_n[peer] = rib_n[peer] - 1
      n_entries = n_entries - 1
      local set = cands[dest]
      set[peer] = nil
      if next(set) == nil then cands[dest] = nil; n_dests = n_dests - 1 end
      return true
    end
  else
    if not e then return false end
    if rib_n[peer] >= cfg.max_routes_per_link or n_entries >= cfg.max_route_entries then
      stats.routes_dropped = stats.routes_dropped + 1
      return false
    end
    local set = cands[dest]
    if not set then
      if n_dests >= cfg.max_destinations then
        stats.routes_dropped = stats.routes_dropped + 1
        return false
      end
      set = {}
      cands[dest] = set
      n_dests = n_dests + 1
    end
    set[peer] = true
    rib_n[peer] = rib_n[peer] + 1
    n_entries = n_entries + 1
  end
  local servers = e.servers
  local room = cfg.max_registry_entries - n_names
  if #servers > room then
    room = math.max(room, 0)
    stats.servers_dropped = stats.servers_dropped + #servers - room
    for i = #servers, room + 1, -1 do servers[i] = nil end
  end
  n_names = n_names + #servers
  tbl[dest] = e
  return true
end

-- Set when much state was dropped at once (a link that held many routes or
-- calls went down): the health loop then runs one full garbage collection
-- and core.trim_memory(), so an idle node gives the memory back instead of
-- waiting for allocations to drive the collector.
local gc_due = false

-- Forgets every route learned from `peer` (its link went down) and
-- re-selects the destinations it offered.
local function drop_neighbour(peer)
  local tbl = rib[peer]
  if not tbl then return end
  if rib_n[peer] >= 256 then gc_due = true end
  local touched = {}
  for dest in pairs(tbl) do
    put_route(peer, tbl, dest, nil)
    touched[dest] = true
  end
  rib[peer], rib_n[peer] = nil, nil
  for dest in pairs(touched) do select_route(dest) end
  if next(dirty) then schedule_advert() end
end

local function valid_path(path, first)
  if type(path) ~= "table" or #path < 1 or #path > cfg.max_ttl then return false end
  for i = 1, #path do
    if not is_name(path[i], 64) then return false end
  end
  return path[1] == first
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

--- registry_sync: a full table (data.full absent or true: it replaces what
--- this neighbour advertised) or a change (data.full == false: routes added
--- or changed, data.withdraw the destinations withdrawn). An advert with
--- more than max_routes entries or more than max_advert_bytes bytes is
--- refused whole: the link is closed with 4413.
local function on_advert(link, env, text)
  local data = env.data
  if type(data) ~= "table" or type(data.routes) ~= "table"
    or (data.withdraw ~= nil and type(data.withdraw) ~= "table") then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  local nr = #data.routes + (data.withdraw and #data.withdraw or 0)
  if nr > cfg.max_routes or (text and #text > cfg.max_advert_bytes) then
    stats.adverts_refused = stats.adverts_refused + 1
    link.close(4413, string.format("advert too large (%d routes, %d bytes; at most %d routes, %d bytes)",
      nr, text and #text or 0, cfg.max_routes, cfg.max_advert_bytes))
    return
  end
  local peer, me = link.peer, M.node_id()
  local tbl = rib[peer]
  if not tbl then
    tbl = {}
    rib[peer], rib_n[peer] = tbl, 0
  end
  local full = data.full ~= false
  local seen = full and {} or nil
  local touched = {}
  for _, r in ipairs(data.routes) do
    if type(r) ~= "table" or not valid_path(r.path, peer) then
      stats.bad_messages = stats.bad_messages + 1
    else
      local dest = r.path[#r.path]
      if contains(r.path, me) then
        -- The neighbour's route now runs through us: a withdrawal.
        stats.dropped_loops = stats.dropped_loops + 1
        if put_route(peer, tbl, dest, nil) then touched[dest] = true end
      else
        if seen then seen[dest] = true end
        local old = tbl[dest]
        if not old and (rib_n[peer] >= cfg.max_routes_per_link or n_entries >= cfg.max_route_entries
            or (not cands[dest] and n_dests >= cfg.max_destinations)) then
          -- Past a bound (as in put_route), checked before any work.
          stats.routes_dropped = stats.routes_dropped + 1
          goto next_route
        end
        local servers = {}
        if type(r.servers) == "table" then
          for i = 1, math.min(#r.servers, cfg.max_servers) do
            if is_name(r.servers[i]) then servers[#servers + 1] = r.servers[i] end
          end
        end
        local seq = math.type(r.seq) == "integer" and r.seq or 0
        if not (old and old.seq == seq and same_list(old.path, r.path) and same_list(old.servers, servers)) then
          if put_route(peer, tbl, dest, { path = r.path, seq = seq, servers = servers }) then
            touched[dest] = true
          end
        end
      end
    end
    ::next_route::
  end
  if full then
    for dest in pairs(tbl) do
      if not seen[dest] then
        put_route(peer, tbl, dest, nil)
        touched[dest] = true
      end
    end
  elseif data.withdraw then
    for _, dest in ipairs(data.withdraw) do
      if type(dest) == "string" and tbl[dest] then
        put_route(peer, tbl, dest, nil)
        touched[dest] = true
      end
    end
  end
  for dest in pairs(touched) do
    if dest ~= me then select_route(dest) end
  end
  if next(dirty) then schedule_advert() end
end

--- route_request: the neighbour asks for the full table. Answered at most
--- once per link every advert_interval seconds; requests in between are
--- dropped and counted (stats.route_requests_limited).
local function on_route_request(link)
  local t = now()
  if link.full_sent and t - link.full_sent < cfg.advert_interval then
    stats.route_requests_limited = stats.route_requests_limited + 1
    return
  end
  send_table(link, nil)
end

-- calls -----------------------------------------------------------------------------

local ERROR_CODES = {
  ETIMEDOUT = true, ENOROUTE = true, ENOSERVER = true, ENOMETHOD = true, EREMOTE = true,
  ELINKLOST = true, ETTL = true, EINVAL = true, ECANCELED = true, EBUSY = true,
}
M.ERROR_CODES = ERROR_CODES

local function fail(code, fmt, ...)
  return nil, code .. ": " .. string.format(fmt, ...), code
end

-- The key of a call in the forward and dedup tables: the caller's node id
-- and its call id, length-prefixed so that no two (caller, id) pairs give
-- the same key whatever bytes they contain.
local function call_key(caller, id)
  return #caller .. ":" .. caller .. id
end

-- Encodes an envelope for sending: text | nil, message. Never logs: a value
-- that cannot be encoded is the caller's problem, answered as such.
local function encode_envelope(env)
  env.timestamp = env.timestamp or math.floor(now() * 1000)
  return json.encode(env)
end

local function send_text(link, text)
  if not link or link.state == "closed" then return false end
  return link.send(text) == true
end

-- Forgets a relayed call (answered, expired, refused by a dead link).
local function drop_forward(key, f)
  if forwards[key] ~= f then return end
  forwards[key] = nil
  n_forwards = n_forwards - 1
  local l = f.link
  l.n_forwards = l.n_forwards - 1
end

-- Forgets forwards whose call is past its deadline plus cfg.forward_slack
-- (its caller has given up; a late response is dropped as unknown). Called
-- about once a second by the health loop.
local function expire_forwards(t)
  local slack = cfg.forward_slack
  for key, f in pairs(forwards) do
    if f.deadline + slack < t then
      drop_forward(key, f)
      stats.forwards_expired = stats.forwards_expired + 1
    end
  end
end

-- The ETIMEDOUT a call gets when server.method on `node` did not answer.
local function no_answer(server, method, node, timeout)
  return fail("ETIMEDOUT", "%s.%s on node %s did not answer within %g s", server, method, node, timeout)
end

local function pack_results(res, first)
  local n = res.n - first + 1
  if n <= 0 then return nil end
  if n == 1 then return res[first] end
  local out = json.array()
  for i = first, res.n do
    local v = res[i]
    if v == nil then v = json.null end
    out[#out + 1] = v
  end
  return out
end

-- The function behind server.method on this node: fn | nil, msg, code.
local function find_method(server, method)
  local methods = exposed[server]
  if not methods then
    return fail("ENOSERVER", "no server '%s' on node %s", server, M.node_id())
  end
  local fn = methods[method]
  if type(fn) ~= "function" or method:sub(1, 1) == "_" then
    return fail("ENOMETHOD", "server '%s' on node %s has no method '%s'", server, M.node_id(), method)
  end
  return fn
end

-- Runs job.fn(table.unpack(job.args)) (in a coroutine of its own, started by
-- sched.go) and stores xpcall's packed results in job.res; then calls
-- job.on_done() if someone waits for it.
local function call_unpacked(fn, args, n)
  return fn(table.unpack(args, 1, n))
end

local function run_job(job)
  local args = job.args
  -- args.n only counts when it is an integer (a remote caller may send
  -- {"n": "x"}); the unpacking itself runs inside the xpcall, so even an
  -- impossible count comes back as EREMOTE rather than a lost reply.
  local n = args.n
  if math.type(n) ~= "integer" then n = #args end
  job.res = table.pack(xpcall(call_unpacked, debug.traceback, job.fn, args, n))
  local on_done = job.on_done
  if on_done then on_done() end
end

-- The outcome of a finished job: result | nil, msg, "EREMOTE".
local function job_result(job, server, method)
  local done = job.res
  if not done[1] then
    local msg = tostring(done[2])
    sched.report("relaynet.mesh: " .. server .. "." .. method .. " raised: " .. msg)
    msg = msg:match("^([^\n]*)") or msg
    return fail("EREMOTE", "%s.%s on node %s raised: %s", server, method, M.node_id(), msg)
  end
  return pack_results(done, 2)
end

-- A call this node waits for: registered in `calls` (remote ones, under
-- their call id; those count against cfg.max_calls) and in owner.calls when
-- a JSON-RPC connection made it, so that M.cancel_calls can fail it when
-- that connection goes away.
local function add_call(owner, entry, remote)
  if remote then n_calls = n_calls + 1 end
  entry.remote = remote
  if owner then
    local set = owner.calls
    if not set then set = {}; owner.calls = set end
    set[entry] = true
    entry.owner = owner
  end
end

local function end_call(entry)
  if entry.remote then n_calls = n_calls - 1 end
  local owner = entry.owner
  if owner then owner.calls[entry] = nil end
end

--- Calls a method of a server exposed on this node, in its own coroutine,
--- waiting at most `timeout` seconds (the caller must be able to wait).
local function call_local(owner, server, method, args, timeout)
  local fn, ferr, fcode = find_method(server, method)
  if not fn then return nil, ferr, fcode end
  local job = { fn = fn, args = args }
  local waiter
  job.on_done = function()
    if waiter then sched.wake(waiter[1], waiter[2], true) end
  end
  sched.go(run_job, job)
  if not job.res then
    local entry = {}
    add_call(owner, entry, false)
    local ok, err, code = sched.wait("remote_call " .. server .. "." .. method, timeout, function(co, wid)
      waiter = { co, wid }
      entry.co, entry.wid = co, wid
    end)
    waiter = nil
    end_call(entry)
    if not ok then
      if code == "ETIMEDOUT" then
        return no_answer(server, method, M.node_id(), timeout)
      end
      return nil, err, code
    end
  end
  return job_result(job, server, method)
end

local function check_call_args(node, server, method, args, timeout, level)
  if type(node) ~= "string" then error("relaynet.remote_call: node_id must be a string", level) end
  if type(server) ~= "string" then error("relaynet.remote_call: server_name must be a string", level) end
  if type(method) ~= "string" then error("relaynet.remote_call: method must be a string", level) end
  if args ~= nil and type(args) ~= "table" then error("relaynet.remote_call: args must be a table (a list)", level) end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0) then
    error("relaynet.remote_call: timeout must be a positive number of seconds", level)
  end
end

local function do_call(owner, node, server, method, args, timeout)
  timeout = math.min(timeout or cfg.default_timeout, cfg.max_timeout)
  args = args or {}
  if node == M.node_id() then
    -- A call on this node holds no more than the method's own coroutine:
    -- it is not counted against max_calls.
    if not sched.can_wait() then sched.wait("rn.remote_call") end -- raises the explanation
    return call_local(owner, server, method, args, timeout)
  end
  if n_calls >= cfg.max_calls then
    stats.calls_refused = stats.calls_refused + 1
    return fail("EBUSY", "node %s already waits for %d remote calls (mesh max_calls)", M.node_id(), n_calls)
  end
  local b = best[node]
  local link = b and links[b.next]
  if not link then
    stats.no_route = stats.no_route + 1
    return fail("ENOROUTE", "no route to node %s", node)
  end
  local list = json.array()
  local n = args.n
  if math.type(n) ~= "integer" then n = #args end
  for i = 1, n do
    local v = args[i]
    if v == nil then v = json.null end
    list[i] = v
  end
  local id = new_id()
  local text, eerr = encode_envelope({
    type = "server_call", id = id, from = M.node_id(), to = node, ttl = cfg.max_ttl,
    route = { M.node_id() },
    data = { server = server, method = method, args = list, timeout_ms = math.floor(timeout * 1000) },
  })
  if not text then
    stats.unencodable = stats.unencodable + 1
    return fail("EINVAL", "the arguments of %s.%s cannot be sent: %s", server, method, tostring(eerr))
  end
  if not sched.can_wait() then sched.wait("rn.remote_call") end -- raises the explanation
  if not send_text(link, text) then
    return fail("ELINKLOST", "the link to %s failed while sending the call", b.next)
  end
  local entry = { first_hop = b.next, node = node }
  calls[id] = entry
  add_call(owner, entry, true)
  stats.calls_sent = stats.calls_sent + 1
  local ok, a, c = sched.wait("rn.remote_call", timeout, function(co, wid)
    entry.co, entry.wid = co, wid
  end)
  calls[id] = nil
  end_call(entry)
  if ok == true then return a end
  if ok == false then return nil, a, c end
  if c == "ETIMEDOUT" then
    return no_answer(server, method, node, timeout)
  end
  return nil, a, c
end

--- remote_call(node_id, server_name, method, args, timeout) -> result | nil, msg, code
--- With cfg.max_calls calls to other nodes already waiting on this node it
--- fails at once with EBUSY; arguments JSON cannot hold (functions, NaN,
--- infinities, cycles) fail with EINVAL before anything is sent.
function M.remote_call(node, server, method, args, timeout)
  check_call_args(node, server, method, args, timeout, 3)
  return do_call(nil, node, server, method, args, timeout)
end

--- remote_call on behalf of a client connection (JSON-RPC): `owner` is a
--- table that stands for the connection; M.cancel_calls(owner) fails its
--- calls still waiting with ECANCELED.
function M.owned_call(owner, node, server, method, args, timeout)
  check_call_args(node, server, method, args, timeout, 3)
  if type(owner) ~= "table" then error("relaynet.mesh.owned_call: owner must be a table", 2) end
  return do_call(owner, node, server, method, args, timeout)
end

--- Fails every call of `owner` still waiting with ECANCELED (its client
--- connection closed). Returns how many.
function M.cancel_calls(owner)
  local set = owner and owner.calls
  if not set then return 0 end
  local list = {}
  for entry in pairs(set) do list[#list + 1] = entry end
  local n = 0
  for _, entry in ipairs(list) do
    if entry.co and sched.wake(entry.co, entry.wid, false,
        "ECANCELED: the client connection that made the call closed", "ECANCELED") then
      n = n + 1
    end
  end
  stats.calls_canceled = stats.calls_canceled + n
  -- many coroutines just became garbage: let the health loop collect it
  -- and give the memory back while the node is idle
  if n >= 64 then gc_due = true end
  return n
end

-- Answers `call` (a server_call envelope) on `link`. A result JSON cannot
-- hold is answered with EREMOTE saying so (the caller learns at once rather
-- than at its timeout).
local function reply(link, call, result, err, code)
  local data
  if err then
    data = { error = { code = code or "EREMOTE", message = err } }
  else
    data = { result = result == nil and json.null or result }
  end
  local env = {
    type = "server_response", id = new_id(), reply_to = call.id, from = M.node_id(),
    to = call.from, ttl = cfg.max_ttl, data = data,
  }
  local text, eerr = encode_envelope(env)
  if not text then
    stats.unencodable = stats.unencodable + 1
    env.data = { error = { code = "EREMOTE", message = "EREMOTE: the answer of node " .. M.node_id() ..
      " cannot be encoded as JSON: " .. tostring(eerr) } }
    text = encode_envelope(env)
  end
  if text then send_text(link, text) end
end

local function rotate_dedup(t, evicting)
  if evicting then
    for _, expiry in pairs(dedup_old) do
      if expiry >= t then stats.dedup_evicted = stats.dedup_evicted + 1 end
    end
  end
  dedup_old, dedup_old_n = dedup_new, dedup_new_n
  dedup_new, dedup_new_n, dedup_born = {}, 0, t
end

local function seen_call(key, t)
  local expiry = dedup_new[key] or dedup_old[key]
  return expiry ~= nil and expiry >= t
end

local function remember_call(key, keep, t)
  if dedup_new_n >= cfg.max_dedup // 2 then rotate_dedup(t, true) end
  dedup_new[key] = t + keep
  dedup_new_n = dedup_new_n + 1
end

local function serve_call(link, env)
  local data = env.data
  local key = call_key(env.from, env.id)
  local t = now()
  if seen_call(key, t) then
    stats.duplicate_calls = stats.duplicate_calls + 1
    return
  end
  local remaining = (tonumber(data.timeout_ms) or 0) / 1000
  remember_call(key, math.min(math.max(remaining, 0) + 1, cfg.dedup_window), t)
  if remaining <= 0 then
    return reply(link, env, nil, "ETIMEDOUT: the call's deadline passed before it reached " .. M.node_id(),
      "ETIMEDOUT")
  end
  if n_served >= cfg.max_served then
    stats.served_refused = stats.served_refused + 1
    return reply(link, env, nil, string.format("EBUSY: node %s is already serving %d calls (mesh max_served)",
      M.node_id(), n_served), "EBUSY")
  end
  remaining = math.min(remaining, cfg.max_timeout)
  stats.calls_served = stats.calls_served + 1
  local server, method = data.server, data.method
  local fn, ferr, fcode = find_method(server, method)
  if not fn then return reply(link, env, nil, ferr, fcode) end
  -- Run the method in a coroutine of its own. Most methods return without
  -- suspending: then the reply goes out at once, with no coroutine or timer
  -- left waiting for it. One that suspends is answered when it finishes, or
  -- with ETIMEDOUT at the call's deadline, whichever comes first; until then
  -- it counts against cfg.max_served.
  local job = { fn = fn, args = data.args }
  sched.go(run_job, job)
  if job.res then
    return reply(link, env, job_result(job, server, method))
  end
  n_served = n_served + 1
  local timer
  job.on_done = function()
    if job.replied then return end
    job.replied = true
    n_served = n_served - 1
    timer.cancel()
    reply(link, env, job_result(job, server, method))
  end
  timer = sched.after(remaining, function()
    if job.replied then return end
    job.replied = true
    n_served = n_served - 1
    reply(link, env, no_answer(server, method, M.node_id(), remaining))
  end)
end

local function valid_call(env)
  local d = env.data
  return is_name(env.id) and is_name(env.from, 64) and is_name(env.to, 64)
    and math.type(env.ttl) == "integer" and type(env.route) == "table" and #env.route <= cfg.max_ttl * 2
    and type(d) == "table" and is_name(d.server) and is_name(d.method)
    and type(d.args) == "table" and type(d.timeout_ms) == "number"
end

local function on_call(link, env)
  if not valid_call(env) then
    stats.bad_messages = stats.bad_messages + 1
    if is_name(env.id) and is_name(env.from, 64) then
      reply(link, env, nil, "EINVAL: malformed server_call", "EINVAL")
    end
    return
  end
  if contains(env.route, M.node_id()) then
    stats.dropped_loops = stats.dropped_loops + 1
    return
  end
  if env.to == M.node_id() then return serve_call(link, env) end
  local ttl = math.min(math.tointeger(env.ttl), cfg.max_ttl) - 1
  if ttl <= 0 then
    stats.ttl_expired = stats.ttl_expired + 1
    return reply(link, env, nil, "ETTL: hop limit reached at node " .. M.node_id(), "ETTL")
  end
  local key = call_key(env.from, env.id)
  if forwards[key] then
    stats.duplicate_calls = stats.duplicate_calls + 1
    return
  end
  local b = best[env.to]
  local out = b and links[b.next]
  if not out or b.next == link.peer then
    stats.no_route = stats.no_route + 1
    return reply(link, env, nil, "ENOROUTE: no route to node " .. env.to .. " from " .. M.node_id(), "ENOROUTE")
  end
  local remaining = math.min(env.data.timeout_ms / 1000, cfg.max_timeout)
  if remaining ~= remaining or remaining <= 0 then
    return reply(link, env, nil, "ETIMEDOUT: the call's deadline passed at " .. M.node_id(), "ETIMEDOUT")
  end
  local per_link = link.n_forwards or 0
  if n_forwards >= cfg.max_forwards or per_link >= cfg.max_forwards_per_link then
    stats.forwards_refused = stats.forwards_refused + 1
    -- The link's own share is named first: when both are reached, it is
    -- the more specific cause (this link already holds its share).
    local what = per_link >= cfg.max_forwards_per_link and "mesh max_forwards_per_link" or "mesh max_forwards"
    return reply(link, env, nil, string.format("EBUSY: node %s relays too many calls already (%s)",
      M.node_id(), what), "EBUSY")
  end
  env.ttl = ttl
  env.route[#env.route + 1] = M.node_id()
  env.data.timeout_ms = math.floor(remaining * 1000)
  env.timestamp = nil
  local text, eerr = encode_envelope(env)
  if not text then
    -- Something decoded that cannot be encoded again: the sender's fault,
    -- answered once, never logged per message.
    stats.unencodable = stats.unencodable + 1
    stats.bad_messages = stats.bad_messages + 1
    return reply(link, env, nil, "EINVAL: node " .. M.node_id() .. " cannot relay the call: " .. tostring(eerr),
      "EINVAL")
  end
  local f = { from = link.peer, link = link, to = b.next, deadline = now() + remaining, caller = env.from,
    id = env.id }
  forwards[key] = f
  n_forwards = n_forwards + 1
  link.n_forwards = per_link + 1
  stats.forwarded = stats.forwarded + 1
  if not send_text(out, text) then
    drop_forward(key, f)
    reply(link, env, nil, "ELINKLOST: the link to " .. b.next .. " failed", "ELINKLOST")
  end
end

local function on_response(link, env, text)
  if not is_name(env.reply_to) or not is_name(env.to, 64) or type(env.data) ~= "table" then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if env.to == M.node_id() then
    local c = calls[env.reply_to]
    if not c or not c.co or c.first_hop ~= link.peer then
      stats.unknown_replies = stats.unknown_replies + 1
      return
    end
    local e = env.data.error
    if type(e) == "table" then
      local code = ERROR_CODES[e.code] and e.code or "EREMOTE"
      local msg = type(e.message) == "string" and e.message or (code .. ": remote error")
      sched.wake(c.co, c.wid, false, msg, code)
    else
      local r = env.data.result
      if r == json.null then r = nil end
      sched.wake(c.co, c.wid, true, r)
    end
    return
  end
  local key = call_key(env.to, env.reply_to)
  local f = forwards[key]
  if not f or f.to ~= link.peer then
    stats.unknown_replies = stats.unknown_replies + 1
    return
  end
  drop_forward(key, f)
  -- A response travels unchanged: pass on the text as it came, rather than
  -- encoding the decoded envelope again.
  send_text(links[f.from], text)
end

-- route_message: a payload delivered to a node's message handler --------------------

function M.on_message(fn)
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.on_mesh_message: expected a function", 2) end
  message_handler = fn
end

function M.send_message(node, payload)
  if type(node) ~= "string" then error("relaynet.send_message: node_id must be a string", 2) end
  if node == M.node_id() then
    if message_handler then sched.go(message_handler, node, payload) end
    return true
  end
  local b = best[node]
  local link = b and links[b.next]
  if not link then return fail("ENOROUTE", "no route to node %s", node) end
  send(link, { type = "route_message", id = new_id(), from = M.node_id(), to = node, ttl = cfg.max_ttl,
    route = { M.node_id() }, data = { payload = payload == nil and json.null or payload } })
  return true
end

local function on_route_message(link, env)
  if not is_name(env.id) or not is_name(env.from, 64) or not is_name(env.to, 64)
    or math.type(env.ttl) ~= "integer" or type(env.route) ~= "table" or type(env.data) ~= "table" then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if contains(env.route, M.node_id()) then
    stats.dropped_loops = stats.dropped_loops + 1
    return
  end
  if env.to == M.node_id() then
    local payload = env.data.payload
    if payload == json.null then payload = nil end
    if message_handler then
      sched.go(function()
        local ok, err = xpcall(message_handler, debug.traceback, env.from, payload)
        if not ok then sched.report("mesh message handler: " .. tostring(err)) end
      end)
    end
    return
  end
  local ttl = math.min(math.tointeger(env.ttl), cfg.max_ttl) - 1
  if ttl <= 0 then stats.ttl_expired = stats.ttl_expired + 1; return end
  local b = best[env.to]
  local out = b and links[b.next]
  if not out or b.next == link.peer then stats.no_route = stats.no_route + 1; return end
  env.ttl = ttl
  env.route[#env.route + 1] = M.node_id()
  env.timestamp = nil
  stats.forwarded = stats.forwarded + 1
  send(out, env)
end

-- links -----------------------------------------------------------------------------

local function hello(link)
  send(link, { type = "hello", id = new_id(), from = M.node_id(),
    data = { version = M.PROTOCOL_VERSION, node = M.node_id(), features = json.array({ "delta" }) } })
end

-- Links waiting for hello: pending_links[link] = true; n_pending and
-- pending_by_addr[address] count them (inbound ones per peer address).
local n_pending, pending_by_addr = 0, {}

local function add_pending(link)
  pending_links[link] = true
  n_pending = n_pending + 1
  local a = link.addr
  if a then pending_by_addr[a] = (pending_by_addr[a] or 0) + 1 end
end

local function unpend(link)
  if not pending_links[link] then return end
  pending_links[link] = nil
  n_pending = n_pending - 1
  local a = link.addr
  if a then
    local n = pending_by_addr[a] - 1
    pending_by_addr[a] = n > 0 and n or nil
  end
end

local function link_down(link)
  if links[link.peer] ~= link then return end
  links[link.peer] = nil
  stats.links_down = stats.links_down + 1
  local peer = link.peer
  -- Routing state first: the callers woken below run at once and must see
  -- the routes as they are now.
  drop_neighbour(peer)
  -- calls forwarded through it get an error back; replies owed to it are moot
  local dropped = 0
  for key, f in pairs(forwards) do
    if f.to == peer then
      drop_forward(key, f)
      dropped = dropped + 1
      local back = links[f.from]
      if back then
        send(back, { type = "server_response", id = new_id(), reply_to = f.id, from = M.node_id(),
          to = f.caller, ttl = cfg.max_ttl,
          data = { error = { code = "ELINKLOST", message = "ELINKLOST: the link from " .. M.node_id() ..
            " to " .. peer .. " went down during the call" } } })
      end
    elseif f.from == peer then
      drop_forward(key, f)
      dropped = dropped + 1
    end
  end
  if dropped >= 256 then gc_due = true end
  -- calls waiting on this first hop fail now, not at their timeout
  local lost = {}
  for id, c in pairs(calls) do
    if c.first_hop == peer and c.co then
      calls[id] = nil
      lost[#lost + 1] = c
    end
  end
  for _, c in ipairs(lost) do
    sched.wake(c.co, c.wid, false,
      string.format("ELINKLOST: the link to %s went down while calling node %s", peer, c.node), "ELINKLOST")
  end
end

local function link_up(link, from)
  link.peer = from
  link.state = "up"
  link.since = now()
  link.last_seen = now()
  links[from] = link
  unpend(link)
  stats.links_up = stats.links_up + 1
  send_table(link, nil)
end

local function on_hello(link, env)
  local from, data = env.from, env.data
  if link.state == "up" then
    stats.hello_rejected = stats.hello_rejected + 1
    return
  end
  if not is_name(from, 64) or type(data) ~= "table" then
    stats.hello_rejected = stats.hello_rejected + 1
    link.close(4400, "bad hello")
    return
  end
  if data.version ~= M.PROTOCOL_VERSION then
    stats.hello_rejected = stats.hello_rejected + 1
    link.close(4400, "unsupported protocol version " .. tostring(data.version))
    return
  end
  if from == M.node_id() then
    stats.hello_rejected = stats.hello_rejected + 1
    link.refused = "self"
    link.close(4400, "cannot link to myself")
    return
  end
  -- A peer that lists "delta" gets change adverts; others the full table.
  link.delta = type(data.features) == "table" and contains(data.features, "delta")
  local existing = links[from]
  if existing then
    -- Two links to one peer (both dialed at once, or a reconnect racing an
    -- old link): both ends keep the link dialed by the smaller node id.
    local mine = M.node_id()
    local preferred = mine < from and mine or from
    local function dialer(l) return l.dir == "out" and mine or from end
    if dialer(link) == preferred and dialer(existing) ~= preferred then
      existing.replaced = true
      link_down(existing)
      existing.close(4409, "replaced by the preferred link")
    else
      stats.hello_rejected = stats.hello_rejected + 1
      link.refused = from
      link.close(4409, "duplicate link to " .. from)
      return
    end
  end
  link_up(link, from)
end

local function on_ping(link, env)
  send(link, { type = "pong", id = env.id, from = M.node_id(), to = link.peer, data = env.data })
end

local function on_pong(link, env)
  if link.ping_id and env.id == link.ping_id and link.ping_hr then
    link.rtt = hrtime() - link.ping_hr
    link.ping_id = nil
  end
end

local HANDLERS = {
  hello = on_hello, ping = on_ping, pong = on_pong, registry_sync = on_advert, route_request = on_route_request,
  server_call = on_call, server_response = on_response, route_message = on_route_message,
}

--- A message arrived on a link (inbound or outbound).
function M.on_link_message(link, text, binary)
  link.last_seen = now()
  if binary then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  local env = json.decode(text)
  if type(env) ~= "table" or type(env.type) ~= "string" then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  local h = HANDLERS[env.type]
  if not h then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if link.state ~= "up" and env.type ~= "hello" then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if link.state == "up" and env.type ~= "hello" and env.type ~= "ping" and env.type ~= "pong"
    and env.from ~= nil and type(env.from) ~= "string" then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  h(link, env, text)
end

--- A link's WebSocket is gone.
function M.on_link_close(link, code, reason)
  unpend(link)
  local was_up = link.state == "up"
  link.state = "closed"
  link.close_code, link.close_reason = code, reason
  if was_up then link_down(link) end
  local w = link.waiter
  if w then link.waiter = nil; sched.wake(w[1], w[2], true) end
end

-- health: pings, silent links, expired bookkeeping ------------------------------------

local function health()
  while rn().running() do
    local t = now()
    for _, link in pairs(links) do
      if t - (link.last_seen or t) > cfg.link_timeout then
        link.close(4408, "link timeout")
        link.state = "closed"
        link_down(link)
      elseif t - (link.ping_sent or 0) >= cfg.ping_interval then
        link.ping_id = new_id()
        link.ping_sent = t
        link.ping_hr = hrtime()
        send(link, { type = "ping", id = link.ping_id, from = M.node_id(), to = link.peer })
      end
    end
    for link in pairs(pending_links) do
      if t - link.opened > cfg.hello_timeout then
        unpend(link)
        link.close(4408, "no hello")
      end
    end
    expire_forwards(t)
    if t - dedup_born >= cfg.dedup_window then rotate_dedup(t, false) end
    if gc_due then
      gc_due = false
      collectgarbage("collect")
      local core = require("relaynet.core")
      if core.trim_memory then core.trim_memory() end
    end
    for _, link in pairs(links) do
      if link.full_due and t - link.full_sent >= cfg.advert_interval then
        link.full_due = nil
        send_table(link, nil)
      end
    end
    sched.sleep(math.min(cfg.ping_interval, 1))
  end
  health_started = false
end

local function ensure_health()
  if health_started or not rn().running() then return end
  health_started = true
  sched.spawn(health)
end

--- Hands an accepted /ws/p2p connection to the mesh. Returns the link.
--- `addr` is the peer's address (for the per-address share of the links
--- waiting for hello; nil: not counted per address).
function M.accept(send_fn, close_fn, addr)
  local link = { dir = "in", state = "hello", opened = now(), send = send_fn, close = close_fn, addr = addr }
  local refused
  if n_pending >= cfg.max_pending_links then
    refused = "too many links waiting for hello"
  elseif count(links) + n_pending >= cfg.max_links then
    refused = "too many links"
  elseif addr and (pending_by_addr[addr] or 0) >= cfg.max_pending_per_address then
    -- links_refused counts every refused link, links_refused_address those
    -- refused for their address's share.
    stats.links_refused = stats.links_refused + 1
    stats.links_refused_address = stats.links_refused_address + 1
    close_fn(4429, "too many links waiting for hello from " .. addr)
    link.state = "closed"
    return link
  end
  if refused then
    stats.links_refused = stats.links_refused + 1
    close_fn(4503, refused)
    link.state = "closed"
    return link
  end
  add_pending(link)
  ensure_health()
  hello(link)
  return link
end

-- outbound peers -------------------------------------------------------------------------

local function maintain(p)
  local backoff = cfg.backoff_min
  while p.active and rn().running() do
    local link = { dir = "out", url = p.url, state = "hello", opened = now() }
    local client = rn().ws_connect(p.url, {
      timeout = cfg.connect_timeout,
      on_message = function(msg, binary) M.on_link_message(link, msg, binary) end,
      on_close = function(code, reason) M.on_link_close(link, code, reason) end,
    })
    if client then
      link.send = function(t) return client:send(t) end
      link.close = function(c, r) client:close(c, r) end
      p.client = client
      add_pending(link)
      ensure_health()
      hello(link)
      if link.state ~= "closed" then
        sched.wait("mesh link " .. p.url, nil, function(co, wid) link.waiter = { co, wid } end)
      end
      p.client = nil
      if link.since then backoff = cfg.backoff_min end
      -- refused as a duplicate: the existing link serves; dial again only
      -- once it is gone
      local dup = link.refused
      if dup and dup ~= "self" then
        while p.active and links[dup] and rn().running() do sched.sleep(1) end
      end
    end
    if not (p.active and rn().running()) then break end
    local jitter = 0.5 + math.random() -- 50% .. 150%
    sched.sleep(backoff * jitter)
    backoff = math.min(backoff * 2, cfg.backoff_max)
  end
  p.running = false
end

local function start_peer(p)
  if p.running or not rn().running() or not enabled then return end
  p.running = true
  sched.spawn(maintain, p)
end

function M.add_peer(url)
  if type(url) ~= "string" or not url:match("^wss?://") then
    error("relaynet.add_peer: expected a ws:// URL", 2)
  end
  local p = peer_urls[url]
  if not p then
    p = { url = url, active = true }
    peer_urls[url] = p
  end
  p.active = true
  start_peer(p)
  return true
end

function M.remove_peer(url)
  local p = peer_urls[url]
  if not p then return false end
  p.active = false
  peer_urls[url] = nil
  if p.client then p.client:close(1000, "peer removed") end
  return true
end

--- Called when rn.run() starts: dials the configured peers.
function M.start()
  started_at = os.time()
  for _, p in pairs(peer_urls) do start_peer(p) end
  if next(peer_urls) then ensure_health() end
end

--- Called when rn.run() has ended: forgets links, routes and calls.
function M.reset()
  for link in pairs(pending_links) do link.state = "closed" end
  for _, link in pairs(links) do link.state = "closed" end
  links, pending_links, rib, best = {}, {}, {}, {}
  cands, rib_n, dirty, last_flush = {}, {}, {}, -math.huge
  n_dests, n_entries, n_names, n_pending, pending_by_addr = 0, 0, 0, 0, {}
  calls, forwards = {}, {}
  n_calls, n_forwards, n_served = 0, 0, 0
  dedup_new, dedup_old, dedup_new_n, dedup_old_n, dedup_born = {}, {}, 0, 0, now()
  advert_timer, health_started = nil, false
  for _, p in pairs(peer_urls) do p.running = false; p.client = nil end
  zero_stats()
end

-- servers -------------------------------------------------------------------------------

function M.expose(name, methods)
  if not is_name(name) or name:find("[%s%.]") then
    error("relaynet.expose: a server name is 1-128 characters without spaces or dots", 2)
  end
  if type(methods) ~= "table" then error("relaynet.expose: methods must be a table", 2) end
  exposed[name] = methods
  my_seq = my_seq + 1
  dirty[M.node_id()] = true
  schedule_advert()
  return true
end

function M.unexpose(name)
  if not exposed[name] then return false end
  exposed[name] = nil
  my_seq = my_seq + 1
  dirty[M.node_id()] = true
  schedule_advert()
  return true
end

-- views ---------------------------------------------------------------------------------

function M.peers()
  local list = json.array()
  for id, link in pairs(links) do
    list[#list + 1] = { id = id, url = link.url, direction = link.dir, rtt = link.rtt, since = link.since }
  end
  table.sort(list, function(a, b) return a.id < b.id end)
  return list
end

function M.routes()
  local list = json.array()
  for dest, b in pairs(best) do
    local path = { M.node_id() }
    for i = 1, #b.path do path[i + 1] = b.path[i] end
    list[#list + 1] = { node = dest, next_hop = b.next, hops = #b.path, path = path }
  end
  table.sort(list, function(a, b) return a.node < b.node end)
  return list
end

function M.registry()
  local list = json.array()
  for _, name in ipairs(local_servers()) do
    list[#list + 1] = { server = name, node = M.node_id(), hops = 0, ["local"] = true }
  end
  for dest, b in pairs(best) do
    for _, name in ipairs(b.servers) do
      list[#list + 1] = { server = name, node = dest, hops = #b.path, ["local"] = false }
    end
  end
  table.sort(list, function(a, b)
    if a.server ~= b.server then return a.server < b.server end
    return a.node < b.node
  end)
  return list
end

function M.status()
  local s = {}
  for k, v in pairs(stats) do s[k] = v end
  s.pending_calls = n_calls
  s.forwarded_in_flight = n_forwards
  s.served_in_flight = n_served
  -- JSON-RPC's own counters (per-connection caps), once it is in use
  local rpc = package.loaded["relaynet.jsonrpc"]
  if type(rpc) == "table" and type(rpc.stats) == "table" then
    for k, v in pairs(rpc.stats) do s["rpc_" .. k] = v end
  end
  s.pending_links = n_pending
  s.links = count(links)
  s.route_entries, s.destinations, s.registry_entries = n_entries, n_dests, n_names
  s.dedup_entries = dedup_new_n + dedup_old_n
  return {
    node_id = M.node_id(),
    version = M.PROTOCOL_VERSION,
    enabled = enabled,
    uptime = os.time() - started_at,
    servers = json.array(local_servers()),
    peers = M.peers(),
    routes = M.routes(),
    stats = s,
  }
end

return M
