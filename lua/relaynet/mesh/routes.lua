-- relaynet.mesh.routes: the routing table, adverts and the server registry.
--
-- Routing state (in mesh/state.lua) is kept so that an advert costs work in
-- proportion to what it changed, never to (links x table):
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
-- (server names held in those routes). A route may also carry `topics`,
-- its destination's subscription patterns (mesh/pubsub.lua), with the same
-- seq as its servers; n_topics counts the patterns held.
--
-- Nothing here opens a socket or suspends: a link is a Link (mesh/link.lua)
-- of which this file reads `peer`, `state` and `delta` and calls send(text)
-- and close(code, reason), so these functions can be driven in-process over
-- a fake transport (spec/mesh_routes_unit_spec.lua).

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local A = require("relaynet.mesh.auth")

local cfg = S.config
local contains, is_name, now = W.contains, W.is_name, W.now

local R = {}

--- The names of the servers exposed on this node, sorted.
function R.local_servers()
  local names = {}
  for name in pairs(S.exposed) do names[#names + 1] = name end
  table.sort(names)
  return names
end

--- The link toward `dest` and the selected route: link, route | nil, route
--- (a route whose next hop has no link up) | nil.
function R.next_link(dest)
  local b = S.best[dest]
  return b and S.links[b.next], b
end

-- This node's own route entry, signed when it has a key (auth.sign_own).
local function own_route()
  local r = { path = { I.node_id() }, seq = S.my_seq, servers = json.array(R.local_servers()) }
  local mine = S.my_topics
  if #mine > 0 then r.topics = json.array(table.move(mine, 1, #mine, 1, {})) end
  if A.signing() then A.sign_own(r) end
  return r
end

-- True when route b may be advertised to neighbour `peer`: never back
-- through it, never with it on the path, never longer than max_ttl.
local function advertisable(b, peer)
  return b.next ~= peer and #b.path + 1 <= cfg.max_ttl and not contains(b.path, peer)
end

-- The route this node advertises for best route b: its path behind this
-- node, and the destination's seq, servers and (key mode) exp, sig and pub
-- exactly as the destination signed them.
local function route_of(b)
  local path = { I.node_id() }
  for i = 1, #b.path do path[i + 1] = b.path[i] end
  local topics = b.topics
  if topics and #topics > 0 then topics = json.array(topics) else topics = nil end
  return { path = path, seq = b.seq, servers = json.array(b.servers), topics = topics, exp = b.exp, sig = b.sig,
    pub = b.pub }
end

-- An estimate of a route's encoded size, to split adverts without encoding
-- them twice.
local function route_bytes(r)
  local n = r.sig and 200 or 40
  for i = 1, #r.path do n = n + #r.path[i] + 3 end
  for i = 1, #r.servers do n = n + #r.servers[i] + 3 end
  local topics = r.topics
  if topics then for i = 1, #topics do n = n + #topics[i] + 3 end end
  return n
end

--- Sends `link` routes: the full table when `dests` is nil, else the routes
--- of the destinations in the set `dests` (withdrawals for those it should
--- no longer use through us). Messages are split to stay well inside the
--- receiver's max_routes and max_advert_bytes; only the first part of a full
--- table says full = true (the later parts add to it). A peer without the
--- "delta" feature gets one message of at most max_routes / 2 routes.
function R.send_table(link, dests)
  local full = dests == nil
  local max_n = math.max(1, cfg.max_routes // 2)
  local max_b = math.max(1024, cfg.max_advert_bytes // 2)
  local routes, withdraw, n, bytes = json.array(), json.array(), 0, 0
  local function flush()
    local data = { seq = S.my_seq, full = full, routes = routes }
    if #withdraw > 0 then data.withdraw = withdraw end
    W.send(link, { type = "registry_sync", id = I.new_id(), from = I.node_id(), to = link.peer, data = data })
    S.stats.adverts_sent = S.stats.adverts_sent + 1
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
  local me = I.node_id()
  local best = S.best
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

local function send_adverts()
  S.advert_timer = nil
  S.last_flush = now()
  local d = S.dirty
  if next(d) == nil then return end
  S.dirty = {}
  local t = now()
  for _, link in pairs(S.links) do
    -- Peers that did not announce "delta" in their hello get the full table
    -- (a version 1 receiver replaces its table with every advert), at most
    -- once every advert_interval: changes in between wait for the health
    -- loop (full_due), so a flood of small changes cannot make this node
    -- send whole tables to them at the change rate.
    if link.delta then
      R.send_table(link, d)
    elseif t - (link.full_sent or -math.huge) >= cfg.advert_interval then
      R.send_table(link, nil)
    else
      link.full_due = true
    end
  end
end

--- Schedules an advert of the dirty destinations: batches changes for
--- advert_delay and keeps adverts at least advert_min_interval apart, so a
--- flood of changes coalesces. Does nothing while relaynet is not running.
function R.schedule_advert()
  if S.advert_timer or not W.running() then return end
  local wait = math.max(cfg.advert_delay, S.last_flush + cfg.advert_min_interval - now())
  S.advert_timer = sched.after(wait, send_adverts)
end

--- Marks this node's own route changed (a server exposed or withdrawn):
--- a new sequence number, advertised soon.
function R.own_changed()
  S.my_seq = S.my_seq + 1
  S.dirty[I.node_id()] = true
  R.schedule_advert()
end

-- True when entry a is fresher than entry b: a higher seq, or (the same
-- seq signed again) a later expiry.
local function fresher(a, b)
  return a.seq > b.seq or (a.seq == b.seq and (a.exp or 0) > (b.exp or 0))
end

--- Selects the best route to `dest` from its candidates: fewest hops, then
--- the lowest next-hop id; the server list (with its seq and, in key mode,
--- its signature) comes from the freshest candidate. Marks dest dirty when
--- the selection changed, and then calls R.on_best(dest) when it is set
--- (mesh/presence.lua sets it).
function R.select_route(dest)
  local set = S.cands[dest]
  local rib = S.rib
  local pick, pick_peer, fresh
  if set then
    for peer in pairs(set) do
      local e = rib[peer][dest]
      local hops = #e.path
      if not pick or hops < #pick.path or (hops == #pick.path and peer < pick_peer) then
        pick, pick_peer = e, peer
      end
      if not fresh or fresher(e, fresh) then fresh = e end
    end
  end
  local best = S.best
  local old = best[dest]
  if not pick then
    if old then
      best[dest] = nil
      S.dirty[dest] = true
      if R.on_best then R.on_best(dest) end -- presence (mesh/presence.lua)
    end
    return
  end
  local src = fresher(fresh, pick) and fresh or pick
  if old and old.next == pick_peer and old.path == pick.path and old.seq == src.seq and old.servers == src.servers
    and old.topics == src.topics and old.exp == src.exp then
    return
  end
  best[dest] = { next = pick_peer, path = pick.path, seq = src.seq, servers = src.servers, topics = src.topics,
    exp = src.exp, sig = src.sig, pub = src.pub }
  S.dirty[dest] = true
  if R.on_best then R.on_best(dest) end
end

-- True when a new route from `peer` to `dest` would pass a bound
-- (max_routes_per_link, max_route_entries, max_destinations).
local function over_bounds(peer, dest)
  return S.rib_n[peer] >= cfg.max_routes_per_link or S.n_entries >= cfg.max_route_entries
    or (not S.cands[dest] and S.n_dests >= cfg.max_destinations)
end

--- Stores (e) or removes (e == nil) neighbour `peer`'s route to `dest` in
--- `tbl` (rib[peer]), within the bounds: a new route past a bound is dropped
--- (stats.routes_dropped), server names past max_registry_entries are
--- dropped (stats.servers_dropped). Returns true when the table changed.
function R.put_route(peer, tbl, dest, e)
  local old = tbl[dest]
  if old then
    S.n_names = S.n_names - #old.servers
    if old.topics then S.n_topics = S.n_topics - #old.topics end
    if not e then
      tbl[dest] = nil
      S.rib_n[peer] = S.rib_n[peer] - 1
      S.n_entries = S.n_entries - 1
      local set = S.cands[dest]
      set[peer] = nil
      if next(set) == nil then S.cands[dest] = nil; S.n_dests = S.n_dests - 1 end
      return true
    end
  else
    if not e then return false end
    if over_bounds(peer, dest) then
      S.stats.routes_dropped = S.stats.routes_dropped + 1
      return false
    end
    local set = S.cands[dest]
    if not set then
      set = {}
      S.cands[dest] = set
      S.n_dests = S.n_dests + 1
    end
    set[peer] = true
    S.rib_n[peer] = S.rib_n[peer] + 1
    S.n_entries = S.n_entries + 1
  end
  local servers = e.servers
  local room = cfg.max_registry_entries - S.n_names
  if #servers > room then
    room = math.max(room, 0)
    S.stats.servers_dropped = S.stats.servers_dropped + #servers - room
    for i = #servers, room + 1, -1 do servers[i] = nil end
  end
  S.n_names = S.n_names + #servers
  local topics = e.topics
  if topics then
    room = cfg.max_interest_entries - S.n_topics
    if #topics > room then
      room = math.max(room, 0)
      S.stats.topics_dropped = S.stats.topics_dropped + #topics - room
      for i = #topics, room + 1, -1 do topics[i] = nil end
    end
    S.n_topics = S.n_topics + #topics
  end
  tbl[dest] = e
  return true
end

--- Drops every route entry whose signed expiry is before Unix time `t`
--- (stats.entries_expired), and marks this node's own entry for a new
--- signature when half of its time is gone. The health loop calls it every
--- few seconds in key mode.
function R.expire_entries(t)
  local touched = {}
  for peer, tbl in pairs(S.rib) do
    for dest, e in pairs(tbl) do
      if e.exp and e.exp < t then
        touched[dest] = true
        S.stats.entries_expired = S.stats.entries_expired + 1
        -- Removing the current key during pairs() is allowed in Lua.
        R.put_route(peer, tbl, dest, nil)
      end
    end
  end
  for dest in pairs(touched) do R.select_route(dest) end
  if A.own_stale(t) then S.dirty[I.node_id()] = true end
  if next(S.dirty) then R.schedule_advert() end
end

--- Forgets every route learned from `peer` (its link went down) and
--- re-selects the destinations it offered.
function R.drop_neighbour(peer)
  local tbl = S.rib[peer]
  if not tbl then return end
  if S.rib_n[peer] >= 256 then S.gc_due = true end
  local touched = {}
  for dest in pairs(tbl) do
    R.put_route(peer, tbl, dest, nil)
    touched[dest] = true
  end
  S.rib[peer], S.rib_n[peer] = nil, nil
  for dest in pairs(touched) do R.select_route(dest) end
  if next(S.dirty) then R.schedule_advert() end
end

local function valid_path(path, first)
  if type(path) ~= "table" or #path < 1 or #path > cfg.max_ttl then return false end
  for i = 1, #path do
    if not is_name(path[i], 64) then return false end
  end
  return path[1] == first
end

local NONE = {}

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

--- registry_sync: a full table (data.full absent or true: it replaces what
--- this neighbour advertised) or a change (data.full == false: routes added
--- or changed, data.withdraw the destinations withdrawn). An advert with
--- more than max_routes entries or more than max_advert_bytes bytes is
--- refused whole: the link is closed with 4413. `text` is the message as
--- received (nil: its size is not checked). In key mode every entry must
--- carry its destination's valid, unexpired signature (auth.check_entry);
--- one that does not is dropped, counted, logged (rate-limited) and
--- withdraws what this neighbour advertised for that destination.
function R.on_advert(link, env, text)
  local stats = S.stats
  local data = env.data
  if type(data) ~= "table" or type(data.routes) ~= "table"
    or (data.withdraw ~= nil and type(data.withdraw) ~= "table") then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  local nr = #data.routes + (data.withdraw and #data.withdraw or 0)
  if nr > cfg.max_routes or (text and #text > cfg.max_advert_bytes) then
    stats.adverts_refused = stats.adverts_refused + 1
    link:close(4413, string.format("advert too large (%d routes, %d bytes; at most %d routes, %d bytes)",
      nr, text and #text or 0, cfg.max_routes, cfg.max_advert_bytes))
    return
  end
  local peer, me = link.peer, I.node_id()
  local tbl = S.rib[peer]
  if not tbl then
    tbl = {}
    S.rib[peer], S.rib_n[peer] = tbl, 0
  end
  local full = data.full ~= false
  local seen = full and {} or nil
  local touched = {}
  local signed = A.signing()
  local wall = signed and os.time()
  for _, r in ipairs(data.routes) do
    if type(r) ~= "table" or not valid_path(r.path, peer) then
      stats.bad_messages = stats.bad_messages + 1
    else
      local dest = r.path[#r.path]
      if contains(r.path, me) then
        -- The neighbour's route now runs through us: a withdrawal.
        stats.dropped_loops = stats.dropped_loops + 1
        if R.put_route(peer, tbl, dest, nil) then touched[dest] = true end
      else
        local old = tbl[dest]
        if not old and over_bounds(peer, dest) then
          -- Past a bound (as in put_route), checked before any work.
          if seen then seen[dest] = true end
          stats.routes_dropped = stats.routes_dropped + 1
          goto next_route
        end
        if signed then
          local why, detail = A.check_entry(dest, r, wall)
          if why then
            stats[why] = stats[why] + 1
            A.log("entries from " .. peer, string.format("dropped route entries from %s (%s): the entry of %s: %s",
              peer, why, dest, detail))
            if R.put_route(peer, tbl, dest, nil) then touched[dest] = true end
            goto next_route
          end
        end
        if seen then seen[dest] = true end
        local servers = {}
        if type(r.servers) == "table" then
          for i = 1, math.min(#r.servers, cfg.max_servers) do
            if is_name(r.servers[i]) then servers[#servers + 1] = r.servers[i] end
          end
        end
        -- Subscription patterns (mesh/pubsub.lua): at most max_patterns,
        -- each a string of at most max_topic_length bytes (the syntax is
        -- checked when a publish matches against it; a bad one matches
        -- nothing).
        local topics
        if type(r.topics) == "table" and #r.topics > 0 then
          topics = {}
          local rt, maxlen = r.topics, cfg.max_topic_length
          for i = 1, #rt do
            if #topics >= cfg.max_patterns then
              stats.topics_dropped = stats.topics_dropped + #rt - i + 1
              break
            end
            if is_name(rt[i], maxlen) then topics[#topics + 1] = rt[i] end
          end
          if #topics == 0 then topics = nil end
        end
        local seq = math.type(r.seq) == "integer" and r.seq or 0
        local exp = signed and r.exp or nil
        if not (old and old.seq == seq and old.exp == exp and same_list(old.path, r.path)
            and same_list(old.servers, servers) and same_list(old.topics or NONE, topics or NONE)) then
          local e = { path = r.path, seq = seq, servers = servers, topics = topics }
          if signed then
            -- Kept as signed, to be passed on unchanged.
            e.exp, e.sig = exp, r.sig
            if type(r.pub) == "string" and #r.pub <= 64 then e.pub = r.pub end
          end
          if R.put_route(peer, tbl, dest, e) then
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
        R.put_route(peer, tbl, dest, nil)
        touched[dest] = true
      end
    end
  elseif data.withdraw then
    for _, dest in ipairs(data.withdraw) do
      if type(dest) == "string" and tbl[dest] then
        R.put_route(peer, tbl, dest, nil)
        touched[dest] = true
      end
    end
  end
  for dest in pairs(touched) do
    if dest ~= me then R.select_route(dest) end
  end
  if next(S.dirty) then R.schedule_advert() end
end

--- route_request: the neighbour asks for the full table. Answered at most
--- once per link every advert_interval seconds; requests in between are
--- dropped and counted (stats.route_requests_limited).
function R.on_route_request(link)
  local t = now()
  if link.full_sent and t - link.full_sent < cfg.advert_interval then
    S.stats.route_requests_limited = S.stats.route_requests_limited + 1
    return
  end
  R.send_table(link, nil)
end

return R
