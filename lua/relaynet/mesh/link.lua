-- relaynet.mesh.link: the Link, one object for both directions of a link to
-- a neighbour: hello, ping and pong, message dispatch, the links waiting for
-- hello, and the health loop.
--
-- A Link is { dir = "in" | "out", state = "hello" | "up" | "closed", peer,
-- transport, ... } with the methods send, close, on_message and on_close.
-- Its transport is an adapter (mesh/transport.lua) over an accepted /ws/p2p
-- connection or a dialed client, and both have the same shape:
-- { id (the connection id), send(text) -> true | falsy, close(code, reason) }.
-- Whichever its direction, a link's messages arrive through
-- Link:on_message and its close through Link:on_close, called by the
-- transport once per WebSocket event; neither suspends nor raises. Nothing
-- in this file knows which kind of connection carries a link; the
-- transport's binding() gives the channel binding of a TLS connection
-- (nil without TLS), which the authentication proofs cover.
--
-- Without credentials a link is up once the peer's hello arrived
-- (protocol version 1). With credentials (mesh/auth.lua, version 2) the
-- hello carries a nonce, each end then sends `auth`, a proof over both
-- nonces, both ids and the channel, and the link is up once the peer's
-- proof verifies; until then nothing but hello and auth is accepted.

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local core = require("relaynet.core")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local R = require("relaynet.mesh.routes")
local C = require("relaynet.mesh.calls")
local SV = require("relaynet.mesh.serve")
local A = require("relaynet.mesh.auth")
local U = require("relaynet.mesh.pubsub")
local PR = require("relaynet.mesh.presence")
local log = require("relaynet.log")

local cfg = S.config
local hrtime = core.hrtime
local contains, is_name, now, send, running = W.contains, W.is_name, W.now, W.send, W.running

local L = {}

--- The version a node without credentials speaks in hello; a node with
--- credentials speaks auth.VERSION (2). A peer with another is refused.
L.PROTOCOL_VERSION = 1

local Link = {}
Link.__index = Link
Link.__name = "relaynet.mesh.Link"
L.Link = Link

--- A new link in direction `dir` ("in": accepted, "out": dialed) over
--- `transport` (nil until a dialed connection is up), in state "hello".
--- `addr` is the peer's address of an inbound link, `url` the URL an
--- outbound one dials.
function L.new(dir, transport, addr, url)
  return setmetatable({ dir = dir, state = "hello", opened = now(), transport = transport,
    addr = addr, url = url }, Link)
end

--- Sends text on the link: true when the transport took it; false when the
--- link is closed or the send failed.
function Link:send(text)
  if self.state == "closed" then return false end
  return self.transport.send(text) == true
end

--- Starts the close handshake of the link's connection. Link:on_close
--- follows when the connection is gone.
function Link:close(code, reason)
  self.transport.close(code, reason)
end

local function hello(link)
  local data = { version = L.PROTOCOL_VERSION, node = I.node_id(), features = json.array({ "delta" }) }
  if A.enabled() then
    data.version = A.VERSION
    A.hello_data(link, data)
  end
  send(link, { type = "hello", id = I.new_id(), from = I.node_id(), data = data })
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

-- Where a link goes, for the log: the URL it dialed, or the address it
-- came from.
local function where(link)
  if link.dir == "out" then return tostring(link.url) end
  return "from " .. tostring(link.addr)
end

-- An up link is gone (`why`: the close code and reason, or what ended it):
-- its routes, then the calls through it.
local function link_down(link, why)
  if S.links[link.peer] ~= link then return end
  S.links[link.peer] = nil
  S.stats.links_down = S.stats.links_down + 1
  log.info("mesh link down: %s (%s, %s): %s", tostring(link.peer), link.dir, where(link), tostring(why))
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
  log.info("mesh link up: %s (%s, %s)", from, link.dir, where(link))
  R.send_table(link, nil)
end

-- The peer `from` is who it says (its hello, and with credentials its
-- proof, checked): the link comes up unless another link to `from` is
-- kept instead. An authenticated link is never replaced by one that proved
-- another key for the same id (auth_impostor, 4403).
local function establish(link, from)
  local stats = S.stats
  local mine = I.node_id()
  local existing = S.links[from]
  if existing then
    if existing.peer_pub and existing.peer_pub ~= link.peer_pub then
      stats.hello_rejected = stats.hello_rejected + 1
      link.refused = from
      A.refuse(link, A.UNTRUSTED, "node " .. from .. " is linked already, with another key", "auth_impostor")
      return
    end
    -- Two links to one peer (both dialed at once, or a reconnect racing an
    -- old link): both ends keep the link dialed by the smaller node id.
    local preferred = mine < from and mine or from
    local function dialer(l) return l.dir == "out" and mine or from end
    if dialer(link) == preferred and dialer(existing) ~= preferred then
      existing.replaced = true
      link_down(existing, "replaced by the preferred link")
      existing:close(4409, "replaced by the preferred link")
    else
      stats.hello_rejected = stats.hello_rejected + 1
      link.refused = from
      link:close(4409, "duplicate link to " .. from)
      return
    end
  end
  if A.enabled() then stats.auth_ok = stats.auth_ok + 1 end
  link_up(link, from)
end

local function on_hello(link, env)
  local stats = S.stats
  local from, data = env.from, env.data
  if link.state == "up" or link.claim then
    stats.hello_rejected = stats.hello_rejected + 1
    return
  end
  local authed = A.enabled()
  if is_name(from, 64) then link.hello_from = from end -- for the log of a refusal
  if not is_name(from, 64) or type(data) ~= "table" then
    stats.hello_rejected = stats.hello_rejected + 1
    if authed then return A.refuse(link, A.MALFORMED, "bad hello", "auth_malformed") end
    link:close(4400, "bad hello")
    return
  end
  local version = data.version
  if authed and version == L.PROTOCOL_VERSION then
    stats.hello_rejected = stats.hello_rejected + 1
    return A.refuse(link, A.REQUIRED, "this node requires authentication (protocol version 2); the peer speaks "
      .. "version 1", "auth_required")
  elseif not authed and version == A.VERSION then
    stats.hello_rejected = stats.hello_rejected + 1
    return A.refuse(link, A.REQUIRED, "the peer requires authentication (protocol version 2); this node has no "
      .. "mesh credentials", "auth_required")
  elseif version ~= (authed and A.VERSION or L.PROTOCOL_VERSION) then
    stats.hello_rejected = stats.hello_rejected + 1
    link:close(4400, "unsupported protocol version " .. tostring(version))
    return
  end
  local mine = I.node_id()
  if from == mine then
    stats.hello_rejected = stats.hello_rejected + 1
    link.refused = "self"
    link:close(4400, "cannot link to myself")
    return
  end
  -- A peer that lists "delta" gets change adverts; others the full table.
  link.delta = type(data.features) == "table" and contains(data.features, "delta")
  if not authed then return establish(link, from) end
  local ok, code, reason, counter = A.check_hello(link, from, data)
  if not ok then
    stats.hello_rejected = stats.hello_rejected + 1
    return A.refuse(link, code, reason, counter)
  end
  send(link, { type = "auth", id = I.new_id(), from = mine, to = from, data = A.proof(link) })
end

-- auth: the peer's proof (protocol version 2). Out of turn (before its
-- hello) the link is closed with 4425; on a link that is up it is ignored
-- and counted; on a node without credentials it is an unknown type.
local function on_auth(link, env)
  local stats = S.stats
  if not A.enabled() then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if link.state == "up" or link.authed then
    stats.hello_rejected = stats.hello_rejected + 1
    return
  end
  if not link.claim then
    return A.refuse(link, A.EARLY, "auth before hello", "auth_early")
  end
  local ok, code, reason, counter = A.check_proof(link, env.data)
  if not ok then return A.refuse(link, code, reason, counter) end
  link.authed = true
  return establish(link, link.claim)
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
  hello = on_hello, auth = on_auth, ping = on_ping, pong = on_pong,
  registry_sync = R.on_advert, route_request = R.on_route_request,
  server_call = C.on_call, server_response = C.on_response, route_message = C.on_route_message,
  publish = U.on_publish, presence = PR.on_message,
}

-- Decodes a message of `link` and hands it to its handler; anything
-- malformed or out of turn is counted in stats.bad_messages and dropped.
-- With credentials, a link that is not up yet accepts hello and auth only:
-- anything else closes it (4425; 4400 for what is not an envelope).
local function receive(link, text, binary)
  local stats = S.stats
  if link.closing then return end
  link.last_seen = now()
  local early = link.state ~= "up" and A.enabled()
  if binary then
    if early then return A.refuse(link, A.EARLY, "a binary frame before authentication", "auth_early") end
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  -- Calls, responses and publishes this node only relays go on from their
  -- text (calls.relay_text, pubsub.relay_text); everything else is decoded.
  if link.state == "up" and C.relay_text(link, text, U.relay_text) then return end
  local env = json.decode(text)
  if type(env) ~= "table" or type(env.type) ~= "string" then
    if early then return A.refuse(link, A.MALFORMED, "not a mesh envelope", "auth_malformed") end
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  local h = HANDLERS[env.type]
  if early and env.type ~= "hello" and env.type ~= "auth" then
    return A.refuse(link, A.EARLY, "only hello and auth before authentication", "auth_early")
  end
  if not h then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if link.state ~= "up" and env.type ~= "hello" and env.type ~= "auth" then
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

-- The link's WebSocket is gone: the link is closed, and its routes and calls
-- are dropped when it was up; a maintainer waiting on it is woken.
local function closed(link, code, reason)
  unpend(link)
  local was_up = link.state == "up"
  -- A dialed link the peer refused in the handshake: counted and logged
  -- (version 1 nodes log only a peer that requires authentication).
  if not was_up and not link.closing and link.dir == "out" and A.CODES[code] and link.refused ~= "self"
    and (A.enabled() or code == A.REQUIRED) then
    link.refusal_logged = true
    A.refused_by_peer(link, code, reason)
  end
  link.state = "closed"
  link.close_code, link.close_reason = code, reason
  if was_up then link_down(link, tostring(code) .. (reason and reason ~= "" and (" " .. tostring(reason)) or "")) end
  local w = link.waiter
  if w then link.waiter = nil; sched.wake(w[1], w[2], true) end
end

-- An error in the mesh's handling of a link event is a bug here: it is
-- reported, and the link and the loop carry on.
local function report(link, err)
  sched.report("mesh link " .. tostring(link.transport and link.transport.id) .. ": " .. tostring(err))
end

--- The one delivery road of both directions: a text (or binary) message
--- arrived on the link's connection. Never raises.
function Link:on_message(text, binary)
  local ok, err = xpcall(receive, debug.traceback, self, text, binary)
  if not ok then report(self, err) end
end

--- The link's connection closed with `code` and `reason`. Never raises.
function Link:on_close(code, reason)
  local ok, err = xpcall(closed, debug.traceback, self, code, reason)
  if not ok then report(self, err) end
end

-- health: pings, silent links, expired bookkeeping ------------------------------------

local function health()
  while running() do
    local t = now()
    for _, link in pairs(S.links) do
      if t - (link.last_seen or t) > cfg.link_timeout then
        link:close(4408, "link timeout")
        link.state = "closed"
        link_down(link, "link timeout (silent for " .. cfg.link_timeout .. " s)")
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
        S.stats.hello_timeouts = S.stats.hello_timeouts + 1
        link:close(4408, link.claim and "no auth in time" or "no hello")
      end
    end
    -- In key mode, expired route entries go and this node's own is signed
    -- again; checked every 5 s, or every tenth of entry_ttl when that is
    -- shorter (never later than a fifth of the half it has left).
    if A.signing() and t - S.entries_checked >= math.min(5, cfg.entry_ttl / 10) then
      S.entries_checked = t
      R.expire_entries(os.time())
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

--- Starts the health loop when links or peers need it (and it is not
--- running, and relaynet is).
function L.ensure_health()
  if S.health_started or not running() then return end
  S.health_started = true
  sched.spawn(health)
end

--- A link whose transport is up starts waiting for hello, and says its own.
function L.open(link)
  add_pending(link)
  L.ensure_health()
  hello(link)
end

--- An inbound link over `transport`, from address `addr` (nil: not counted
--- per address). Refused (its connection closed with 4503 or 4429, the link
--- returned closed) past max_pending_links, max_links or the address's
--- share of max_pending_per_address; else opened. Returns the link.
function L.accept(transport, addr)
  local stats = S.stats
  local link = L.new("in", transport, addr, nil)
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
    link:close(4429, "too many links waiting for hello from " .. addr)
    link.state = "closed"
    return link
  end
  if refused then
    stats.links_refused = stats.links_refused + 1
    link:close(4503, refused)
    link.state = "closed"
    return link
  end
  L.open(link)
  return link
end

--- Marks every link closed (relaynet.run() has ended; their sockets are
--- gone); the caller then resets the per-run state.
function L.close_all()
  for link in pairs(S.pending_links) do link.state = "closed" end
  for _, link in pairs(S.links) do link.state = "closed" end
end

return L
