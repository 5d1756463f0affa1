-- relaynet.mesh.transport: the mesh's edge with the rest of relaynet, and
-- the only mesh file that knows connections. It mounts /ws/p2p on
-- mesh-enabled servers (inbound links), dials the configured peers
-- (outbound links), and gives each Link (mesh/link.lua) its transport: an
-- adapter of one shape over either kind of connection,
--   { id = connection id, send(text) -> true | falsy, close(code, reason),
--     binding() -> the TLS exporter value (32 bytes, equal at both ends) | nil }.
-- Each WebSocket event of a link's connection reaches the mesh here once:
-- a message goes to link:on_message, the close to link:on_close.

local sched = require("relaynet.sched")
local conn = require("relaynet.conn")
local client = require("relaynet.client")
local S = require("relaynet.mesh.state")
local W = require("relaynet.mesh.wire")
local L = require("relaynet.mesh.link")
local log = require("relaynet.log")

local cfg = S.config
local running = W.running

local T = {}

-- The transport of an accepted connection: send and close reach its C box
-- with no frame in between (conn.link_io builds them).
local function accepted(rec)
  local send, close = conn.link_io(rec)
  return { id = rec.id, send = send, close = close, binding = function() return conn.tls_binding(rec) end }
end

-- The transport of a dialed client.
local function dialed(cl)
  return {
    id = cl.id,
    send = function(text) return cl:send(text) end,
    close = function(code, reason) cl:close(code, reason) end,
    binding = function() return conn.tls_binding(cl._rec) end,
  }
end

-- inbound links: the /ws/p2p endpoint ---------------------------------------------

-- The connection is internal (not counted against the server's user
-- limits) and may receive link_rate_scale times its rates: one link
-- carries many callers' calls. rec.link is its Link (nil when the mesh is
-- disabled or accepting raised: the connection is closing then).
local ENDPOINT = {
  on_open = function(rec, info)
    conn.set_internal(rec, cfg.link_rate_scale)
    if not S.enabled then
      conn.close(rec, 4404, "the mesh is disabled on this node")
      return
    end
    local ok, link = xpcall(L.accept, debug.traceback, accepted(rec), info.peer)
    if not ok then
      sched.report("mesh accept on " .. rec.id .. ": " .. tostring(link))
      conn.close(rec, 1011, "internal error")
      return
    end
    rec.link = link
  end,
  on_message = function(rec, data, binary)
    local link = rec.link
    if link then link:on_message(data, binary) end
  end,
  on_close = function(rec, code, reason)
    local link = rec.link
    if link then link:on_close(code, reason) end
  end,
}

--- Mounts /ws/p2p (relaynet.server.mount; mounting again replaces the same
--- entry). relaynet.server requires relaynet.mesh when it loads (listen
--- reads mesh.config.insecure_mesh), so the mesh cannot require it at load
--- time: mesh.start() calls this when a run starts, before the runtime
--- polls for the first event, so before any connection can open.
function T.mount()
  require("relaynet.server").mount("/ws/p2p", ENDPOINT)
end

-- outbound links: the configured peers ----------------------------------------------

--- A failed dial of a peer is logged at warn, at most once per this many
--- seconds per peer URL; the failures in between are counted on the peer
--- record and the count goes into the next line.
T.DIAL_LOG_INTERVAL = 30

local function dial_failed(p, err)
  local t = W.now()
  local last = p.dial_logged
  if last and t - last < T.DIAL_LOG_INTERVAL then
    p.dial_suppressed = (p.dial_suppressed or 0) + 1
    return
  end
  local n = p.dial_suppressed or 0
  p.dial_logged, p.dial_suppressed = t, 0
  log.warn("mesh: cannot dial peer %s: %s%s", p.url, tostring(err),
    n > 0 and string.format(" (%d more failed dials since the last line)", n) or "")
end

-- Dials peer record `p` while it is active and relaynet runs: one link at a
-- time, redialed with jittered exponential backoff after it closes.
local function maintain(p)
  local backoff = cfg.backoff_min
  while p.active and running() do
    -- The link exists before the dial (its hello timeout counts from here),
    -- so the client's callbacks can name it; its transport is set once the
    -- connection is up, before any message can arrive.
    local link = L.new("out", nil, nil, p.url)
    local cl, derr = client.ws_connect(p.url, {
      timeout = cfg.connect_timeout,
      on_message = function(msg, binary) link:on_message(msg, binary) end,
      on_close = function(code, reason) link:on_close(code, reason) end,
    })
    if cl then
      link.transport = dialed(cl)
      p.link = link
      L.open(link)
      if link.state ~= "closed" then
        sched.wait("mesh link " .. p.url, nil, function(co, wid) link.waiter = { co, wid } end)
      end
      p.link = nil
      if link.since then backoff = cfg.backoff_min end
      -- A link that never came up and that nobody logged yet (not refused
      -- as a duplicate or as itself, nor by authentication) is a failed
      -- dial too: a peer with the mesh disabled, full, or mute.
      if not link.since and not link.refused and not link.refusal_logged and not link.closing
        and p.active and running() then
        dial_failed(p, string.format("the link closed before it was up: %s %s", tostring(link.close_code),
          tostring(link.close_reason or "")))
      end
      -- refused as a duplicate: the existing link serves; dial again only
      -- once it is gone
      local dup = link.refused
      if dup and dup ~= "self" then
        while p.active and S.links[dup] and running() do sched.sleep(1) end
      end
    elseif p.active and running() then
      dial_failed(p, derr)
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
function T.start_peer(p)
  if p.running or not running() or not S.enabled then return end
  p.running = true
  sched.spawn(maintain, p)
end

--- Forgets the peers' maintainers (relaynet.run() has ended).
function T.forget_peers()
  for _, p in pairs(S.peer_urls) do p.running = false; p.link = nil end
end

return T
