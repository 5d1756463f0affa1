-- relaynet.mesh.link: links to neighbours, both directions: hello, ping and
-- pong, message dispatch, the health loop, accepting inbound links and
-- dialing the configured peers.
--
-- A link is a table { dir = "in" | "out", state = "hello" | "up" | "closed",
-- peer, send(text), close(code, reason), ... }. An inbound one is made by
-- L.accept with the facade's send and close functions; an outbound one by
-- the maintainer of a configured peer around a relaynet client. Both get
-- their messages through L.on_link_message and their close through
-- L.on_link_close, which never suspend.

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local core = require("relaynet.core")
local client = require("relaynet.client")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local R = require("relaynet.mesh.routes")
local C = require("relaynet.mesh.calls")
local SV = require("relaynet.mesh.serve")

local cfg = S.config
local hrtime = core.hrtime
local contains, is_name, now, send, running = W.contains, W.is_name, W.now, W.send, W.running

local L = {}

--- The version this node speaks in hello; a peer with another is refused.
L.PROTOCOL_VERSION = 1

local function hello(link)
  send(link, { type = "hello", id = I.new_id(), from = I.node_id(),
    data = { version = L.PROTOCOL_VERSION, node = I.node_id(), features = json.array({ "delta" }) } })
end

-- Links waiting for hello: pending_links[link] = true; n_pending and
-- pending_by_addr[address] count them (inbound ones per peer address).
local function add_pending(link)
  S.pending_links[link] = true
  S.n_pending = S.n_pending + 1
  local a = link.addr
  if a then S.pending_by_addr[a] = (S.pending_by_addr[a] or 0) + 1 end
end

local function unpend(link)
  if not S.pending_links[link] then return end
  S.pending_links[link] = nil
  S.n_pending = S.n_pending - 1
  local a = link.addr
  if a then
    local n = S.pending_by_addr[a] - 1
    S.pending_by_addr[a] = n > 0 and n or nil
  end
end

-- An up link is gone: its routes, then the calls through it.
local function link_down(link)
  if S.links[link.peer] ~= link then return end
  S.links[link.peer] = nil
  S.stats.links_down = S.stats.links_down + 1
  -- Routing state first: the callers woken by link_lost run at once and
  -- must see the routes as they are now.
  R.drop_neighbour(link.peer)
  C.link_lost(link.peer)
end

local function link_up(link, from)
  link.peer = from
  link.state = "up"
  link.since = now()
  link.last_seen = now()
  S.links[from] = link
  unpend(link)
  S.stats.links_up = S.stats.links_up + 1
  R.send_table(link, nil)
end

local function on_hello(link, env)
  local stats = S.stats
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
  if data.version ~= L.PROTOCOL_VERSION then
    stats.hello_rejected = stats.hello_rejected + 1
    link.close(4400, "unsupported protocol version " .. tostring(data.version))
    return
  end
  local mine = I.node_id()
  if from == mine then
    stats.hello_rejected = stats.hello_rejected + 1
    link.refused = "self"
    link.close(4400, "cannot link to myself")
    return
  end
  -- A peer that lists "delta" gets change adverts; others the full table.
  link.delta = type(data.features) == "table" and contains(data.features, "delta")
  local existing = S.links[from]
  if existing then
    -- Two links to one peer (both dialed at once, or a reconnect racing an
    -- old link): both ends keep the link dialed by the smaller node id.
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
  send(link, { type = "pong", id = env.id, from = I.node_id(), to = link.peer, data = env.data })
end

local function on_pong(link, env)
  if link.ping_id and env.id == link.ping_id and link.ping_hr then
    link.rtt = hrtime() - link.ping_hr
    link.ping_id = nil
  end
end

local HANDLERS = {
  hello = on_hello, ping = on_ping, pong = on_pong,
  registry_sync = R.on_advert, route_request = R.on_route_request,
  server_call = C.on_call, server_response = C.on_response, route_message = C.on_route_message,
}

--- A message arrived on a link (inbound or outbound). Decodes it and hands
--- it to its handler; anything malformed or out of turn is counted in
--- stats.bad_messages and dropped.
function L.on_link_message(link, text, binary)
  local stats = S.stats
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

--- A link's WebSocket is gone: the link is closed, and its routes and calls
--- are dropped when it was up; a maintainer waiting on it is woken.
function L.on_link_close(link, code, reason)
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
  while running() do
    local t = now()
    for _, link in pairs(S.links) do
      if t - (link.last_seen or t) > cfg.link_timeout then
        link.close(4408, "link timeout")
        link.state = "closed"
        link_down(link)
      elseif t - (link.ping_sent or 0) >= cfg.ping_interval then
        link.ping_id = I.new_id()
        link.ping_sent = t
        link.ping_hr = hrtime()
        send(link, { type = "ping", id = link.ping_id, from = I.node_id(), to = link.peer })
      end
    end
    for link in pairs(S.pending_links) do
      if t - link.opened > cfg.hello_timeout then
        unpend(link)
        link.close(4408, "no hello")
      end
    end
    C.expire_forwards(t)
    SV.age_dedup(t)
    if S.gc_due then
      S.gc_due = false
      collectgarbage("collect")
      if core.trim_memory then core.trim_memory() end
    end
    for _, link in pairs(S.links) do
      if link.full_due and t - link.full_sent >= cfg.advert_interval then
        link.full_due = nil
        R.send_table(link, nil)
      end
    end
    sched.sleep(math.min(cfg.ping_interval, 1))
  end
  S.health_started = false
end

local function ensure_health()
  if S.health_started or not running() then return end
  S.health_started = true
  sched.spawn(health)
end

--- Starts the health loop when links or peers need it (and it is not running).
L.ensure_health = ensure_health

--- Hands an accepted /ws/p2p connection to the mesh. Returns the link.
--- `addr` is the peer's address (for the per-address share of the links
--- waiting for hello; nil: not counted per address).
function L.accept(send_fn, close_fn, addr)
  local stats = S.stats
  local link = { dir = "in", state = "hello", opened = now(), send = send_fn, close = close_fn, addr = addr }
  local refused
  if S.n_pending >= cfg.max_pending_links then
    refused = "too many links waiting for hello"
  elseif W.count(S.links) + S.n_pending >= cfg.max_links then
    refused = "too many links"
  elseif addr and (S.pending_by_addr[addr] or 0) >= cfg.max_pending_per_address then
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

-- Dials peer record `p` while it is active and relaynet runs: one link at a
-- time, redialed with jittered exponential backoff after it closes.
local function maintain(p)
  local backoff = cfg.backoff_min
  while p.active and running() do
    local link = { dir = "out", url = p.url, state = "hello", opened = now() }
    local cl = client.ws_connect(p.url, {
      timeout = cfg.connect_timeout,
      on_message = function(msg, binary) L.on_link_message(link, msg, binary) end,
      on_close = function(code, reason) L.on_link_close(link, code, reason) end,
    })
    if cl then
      link.send = function(t) return cl:send(t) end
      link.close = function(c, r) cl:close(c, r) end
      p.client = cl
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
        while p.active and S.links[dup] and running() do sched.sleep(1) end
      end
    end
    if not (p.active and running()) then break end
    local jitter = 0.5 + math.random() -- 50% .. 150%
    sched.sleep(backoff * jitter)
    backoff = math.min(backoff * 2, cfg.backoff_max)
  end
  p.running = false
end

--- Starts the maintainer of peer record `p` unless it runs already, relaynet
--- is not running or the mesh is disabled.
function L.start_peer(p)
  if p.running or not running() or not S.enabled then return end
  p.running = true
  sched.spawn(maintain, p)
end

--- Marks every link closed (relaynet.run() has ended; their sockets are
--- gone) and forgets the peers' maintainers; the caller then resets the
--- per-run state.
function L.close_all()
  for link in pairs(S.pending_links) do link.state = "closed" end
  for _, link in pairs(S.links) do link.state = "closed" end
  for _, p in pairs(S.peer_urls) do p.running = false; p.client = nil end
end

return L
