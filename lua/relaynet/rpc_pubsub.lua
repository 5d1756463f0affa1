-- relaynet.rpc_pubsub: pub/sub for JSON-RPC clients (README "Pub/sub",
-- "JSON-RPC subscriptions"). Loading this module adds three methods to
-- relaynet.jsonrpc (jsonrpc.methods) and a close hook (jsonrpc.close_hooks);
-- relaynet.rpc loads it.
--
--   subscribe    params {topic} or [topic]; WebSocket /rpc only. The topic
--                is a pattern as for rn.subscribe (wildcards allowed). The
--                result is a subscription id, a string unique on its
--                connection ("s1", "s2", ...). Each matching publish then
--                arrives as the notification
--                {"jsonrpc":"2.0","method":"subscription","params":
--                 {"subscription":ID,"topic":TOPIC,"result":MSG}}
--                where MSG is the published string or JSON value, its
--                JSON text as the mesh carries it, never decoded (when the
--                topic keeps history, params also carry the message's
--                "epoch" and "offset", as server:subscribe's frames do).
--                A notification the connection's send queue cannot take is
--                dropped (counted as notifications_dropped), so delivery
--                stays at most once. A publish on the same connection that
--                matches its own subscriptions notifies them before its
--                answer is sent.
--   unsubscribe  params {subscription} or [subscription]: true when it ended
--                that subscription, false when the id was issued on this
--                connection but has ended already; an id never issued on
--                this connection is -32602.
--   publish      params {topic, message} or [topic, message], over HTTP and
--                WebSocket: rn.publish(topic, message); the result is the
--                number of nodes it was sent to. `message` may be any JSON
--                value (null included) and must be present.
--
-- Bounds, each refused with a JSON-RPC error and counted in M.stats (shown
-- by the mesh's status as rpc_pubsub_<name>, and on GET /metrics):
--   * mesh_config.max_subscriptions_per_connection subscriptions per
--     WebSocket connection, and the node's max_subscriptions and
--     max_patterns: -32010, data.code "ELIMIT" (subscriptions_refused);
--   * mesh_config.max_publish_rate publishes per second with a burst of
--     max_publish_burst, a token bucket per WebSocket connection and per
--     peer address for HTTP requests (an HTTP request is a connection of
--     its own, so its address is what is left to count by): -32010, data.code
--     "ELIMIT" (publishes_refused). Either set to 0 turns the bound off.
-- Malformed params (a topic that is missing, not a string, malformed, too
-- long or, for publish, with a wildcard; a message that is missing, too
-- large or cannot be sent) are -32602 with data.code "EINVAL".
--
-- Every error object carries data = { code = CODE, message = TEXT }, TEXT
-- being "CODE: why" as the Lua API words it.

local json = require("relaynet.json")
local sched = require("relaynet.sched")
local conn = require("relaynet.conn")
local jsonrpc = require("relaynet.jsonrpc")
local metrics = require("relaynet.metrics")
local P = require("relaynet.mesh.pubsub_match")

local M = {}

local E = jsonrpc.ERRORS
local format, sub = string.format, string.sub
local NULL = json.null
local ARRAY_MT = getmetatable(json.array({}))

--- Counters, shown by the mesh's status as rpc_pubsub_<name> and on
--- GET /metrics (relaynet_rpc_pubsub_*).
M.stats = {
  subscriptions = 0,          -- JSON-RPC subscriptions active now (a gauge)
  subscribes = 0,             -- subscriptions made
  subscriptions_refused = 0,  -- subscribes refused with ELIMIT
  publishes = 0,              -- publishes made through JSON-RPC
  publishes_refused = 0,      -- publishes refused by the publish-rate bound
  notifications = 0,          -- notifications queued on connections
  notifications_dropped = 0,  -- notifications a send queue could not take
}
local stats = M.stats

--- Peer addresses whose HTTP publishes have a token bucket at most; past
--- it the full buckets are forgotten, and when none is full all of them.
M.MAX_ADDRESSES = 4096

local function get_mesh()
  return jsonrpc.mesh or require("relaynet.mesh")
end

-- errors ------------------------------------------------------------------------

local function failure(rpc_code, code, why)
  local text = code .. ": " .. why
  local message = rpc_code == E.INVALID_PARAMS and "Invalid params: " .. why or text
  return false, { code = rpc_code, message = message, data = { code = code, message = text } }
end

local function invalid(fmt, ...)
  return failure(E.INVALID_PARAMS, "EINVAL", format(fmt, ...))
end

local function limit(fmt, ...)
  return failure(E.ELIMIT, "ELIMIT", format(fmt, ...))
end

local function ws_only(name)
  return false, { code = E.METHOD_NOT_FOUND,
    message = "Method not found: " .. name .. " is only available on a WebSocket connection to /rpc" }
end

-- params ------------------------------------------------------------------------

local function is_array(t)
  return type(t) == "table" and (t[1] ~= nil or getmetatable(t) == ARRAY_MT)
end

-- Reads `params` (an array in the order of `names`, an object with those
-- members, or nil) into a table: p | nil, error object. An unknown member,
-- or more array entries than names, is an error.
-- `s` (valid UTF-8) for an error message: longer than 64 bytes, it is cut
-- after its 60th character and "..." added; one of at most 60 characters
-- (at most 240 bytes) is kept whole.
local function shorten(s)
  if #s <= 64 then return s end
  local at = utf8.offset(s, 61)
  if not at then return s end
  return sub(s, 1, at - 1) .. "..."
end

local function read_params(method, params, names)
  local p = {}
  if params == nil then return p end
  if is_array(params) then
    if #params > #names then
      return nil, select(2, invalid("%s takes at most %d params, got %d", method, #names, #params))
    end
    for i, name in ipairs(names) do p[name] = params[i] end
    return p
  end
  local known = {}
  for _, name in ipairs(names) do known[name] = true end
  for k, v in pairs(params) do
    if not known[k] then
      -- a decoded key is valid UTF-8 already; long keys are cut for the message
      return nil, select(2, invalid("unknown param '%s'", shorten(tostring(k))))
    end
    p[k] = v
  end
  return p
end

local function topic_param(method, p)
  local topic = p.topic
  if topic == nil or topic == NULL then return nil, select(2, invalid("%s needs a 'topic'", method)) end
  if type(topic) ~= "string" then
    return nil, select(2, invalid("'topic' must be a string, got %s", type(topic) == "table" and
      (is_array(topic) and "an array" or "an object") or type(topic)))
  end
  return topic
end

-- the connection's state ----------------------------------------------------------
--
-- ctx.owner is the table relaynet.rpc keeps per WebSocket connection (an
-- HTTP request gets a fresh one from jsonrpc.handle). This module keeps its
-- fields there: ps_subs (id -> mesh handle), ps_n (how many), ps_next (the
-- last id number issued), ps_bucket (the publish token bucket) and
-- ps_closed (set by the close hook).

local function ws_rec(ctx)
  if ctx.transport ~= "ws" then return nil end
  local rec = conn.by_id[ctx.peer]
  if rec and not rec.closed then return rec end
  return nil
end

-- Token buckets: { tokens, at }. Returns true when one token was taken.
local function take(bucket, rate, burst, now)
  local tokens = bucket.tokens + (now - bucket.at) * rate
  if tokens > burst then tokens = burst end
  bucket.at = now
  if tokens < 1 then
    bucket.tokens = tokens
    return false
  end
  bucket.tokens = tokens - 1
  return true
end

local by_addr, n_addr = {}, 0 -- peer address -> bucket (HTTP publishers)

local function addr_bucket(addr, rate, burst, now)
  local b = by_addr[addr]
  if b then return b end
  if n_addr >= M.MAX_ADDRESSES then
    for a, x in pairs(by_addr) do
      if x.tokens + (now - x.at) * rate >= burst then by_addr[a], n_addr = nil, n_addr - 1 end
    end
    if n_addr >= M.MAX_ADDRESSES then by_addr, n_addr = {}, 0 end
  end
  b = { tokens = burst, at = now }
  by_addr[addr] = b
  n_addr = n_addr + 1
  return b
end

-- True when the publish-rate bound lets this publish through; false, why.
local function rate_ok(ctx, cfg)
  local rate, burst = cfg.max_publish_rate, cfg.max_publish_burst
  if not rate or rate <= 0 or not burst or burst <= 0 then return true end
  local now = sched.now()
  local owner, b, who = ctx.owner
  if ctx.transport == "ws" then
    b = owner.ps_bucket
    if not b then b = { tokens = burst, at = now }; owner.ps_bucket = b end
    who = "this connection"
  else
    b = addr_bucket(tostring(ctx.addr), rate, burst, now)
    who = "address " .. tostring(ctx.addr)
  end
  if take(b, rate, burst, now) then return true end
  return false, format("%s publishes faster than %g per second (mesh_config.max_publish_rate, burst %g)",
    who, rate, burst)
end

-- notifications -------------------------------------------------------------------
--
-- The mesh calls a WebSocket subscription's frame function with the
-- message's JSON text (mesh/pubsub.lua) and, with history
-- (mesh/history.lua), its epoch and offset; the notification is built from
-- those: {"jsonrpc":"2.0","method":"subscription","params":{"subscription":
-- ID,"topic":T,"result":M[,"epoch":E,"offset":N]}}.

-- The frame function of subscription `id` on connection `rec`: called
-- directly by the mesh, it must neither suspend nor raise.
local function notifier(rec, id)
  local start = '{"jsonrpc":"2.0","method":"subscription","params":{"subscription":' .. json.encode(id)
  return function(_, topic, _, epoch, offset, mjs)
    if rec.closed then return end
    local pos = epoch and (',"epoch":' .. json.encode(epoch) .. ',"offset":' .. offset) or ""
    local ok = conn.send_raw(rec, start .. ',"topic":' .. json.encode(topic) .. ',"result":' .. mjs .. pos .. "}}")
    if ok then
      stats.notifications = stats.notifications + 1
    else
      stats.notifications_dropped = stats.notifications_dropped + 1
    end
  end
end

-- methods -----------------------------------------------------------------------

local SUBSCRIBE_PARAMS = { "topic" }
local UNSUBSCRIBE_PARAMS = { "subscription" }
local PUBLISH_PARAMS = { "topic", "message" }

local function subscribe(params, ctx)
  local rec = ws_rec(ctx)
  if ctx.transport ~= "ws" then return ws_only("subscribe") end
  local p, perr = read_params("subscribe", params, SUBSCRIBE_PARAMS)
  if not p then return false, perr end
  local topic, terr = topic_param("subscribe", p)
  if not topic then return false, terr end
  local ok, why = P.check_pattern(topic)
  if not ok then return invalid("%s", why) end
  local owner = ctx.owner
  if not rec or owner.ps_closed then
    return failure(E.ECANCELED, "ECANCELED", "the connection is closed")
  end
  local mesh = get_mesh()
  local max = mesh.config.max_subscriptions_per_connection
  local n = owner.ps_n or 0
  if n >= max then
    stats.subscriptions_refused = stats.subscriptions_refused + 1
    return limit("connection %s has %d subscriptions already (mesh_config.max_subscriptions_per_connection)",
      rec.id, n)
  end
  local num = (owner.ps_next or 0) + 1
  local id = "s" .. num
  local h, msg, code = mesh.subscribe_frames(topic, notifier(rec, id), "subscribe")
  if not h then
    if code == "ELIMIT" then stats.subscriptions_refused = stats.subscriptions_refused + 1 end
    msg = tostring(msg)
    code = code or "EINVAL"
    local text = msg:match("^[%u%d_]+: (.*)$") or msg
    if code == "ELIMIT" then return limit("%s", text) end
    return failure(E[code] or E.INTERNAL_ERROR, code, text)
  end
  owner.ps_next = num
  owner.ps_n = n + 1
  local subs = owner.ps_subs
  if not subs then subs = {}; owner.ps_subs = subs end
  subs[id] = h
  stats.subscriptions = stats.subscriptions + 1
  stats.subscribes = stats.subscribes + 1
  return true, id
end

local function unsubscribe(params, ctx)
  if ctx.transport ~= "ws" then return ws_only("unsubscribe") end
  local p, perr = read_params("unsubscribe", params, UNSUBSCRIBE_PARAMS)
  if not p then return false, perr end
  local id = p.subscription
  if id == nil or id == NULL then return invalid("unsubscribe needs a 'subscription'") end
  if type(id) ~= "string" then return invalid("'subscription' must be a string (the id subscribe returned)") end
  local owner = ctx.owner
  local subs = owner.ps_subs
  local h = subs and subs[id]
  if h then
    subs[id] = nil
    owner.ps_n = owner.ps_n - 1
    stats.subscriptions = stats.subscriptions - 1
    h:unsubscribe()
    return true, true
  end
  local num = math.tointeger(tonumber(id:match("^s([1-9]%d*)$")))
  if num and num <= (owner.ps_next or 0) then return true, false end
  return invalid("no subscription '%s' on this connection", shorten(id))
end

local function publish(params, ctx)
  local p, perr = read_params("publish", params, PUBLISH_PARAMS)
  if not p then return false, perr end
  local topic, terr = topic_param("publish", p)
  if not topic then return false, terr end
  local good, bad = P.check_topic(topic)
  if not good then return invalid("%s", bad) end
  if p.message == nil then return invalid("publish needs a 'message' (any JSON value, null included)") end
  local mesh = get_mesh()
  local allowed, rwhy = rate_ok(ctx, mesh.config)
  if not allowed then
    stats.publishes_refused = stats.publishes_refused + 1
    return limit("%s", rwhy)
  end
  local n, msg, code = mesh.publish(topic, p.message)
  if not n then
    msg = tostring(msg)
    code = code or "EINVAL"
    local text = msg:match("^[%u%d_]+: (.*)$") or msg
    if code == "EINVAL" then return invalid("%s", text) end
    return failure(E[code] or E.INTERNAL_ERROR, code, text)
  end
  stats.publishes = stats.publishes + 1
  return true, n
end

jsonrpc.methods.subscribe = subscribe
jsonrpc.methods.unsubscribe = unsubscribe
jsonrpc.methods.publish = publish

--- Ends the subscriptions of connection `owner` (its ctx.owner); called by
--- jsonrpc.close when the connection has closed. Returns how many.
function M.close(owner)
  owner.ps_closed = true
  local subs = owner.ps_subs
  if not subs then return 0 end
  owner.ps_subs = nil
  local n = 0
  for _, h in pairs(subs) do
    h:unsubscribe()
    n = n + 1
  end
  owner.ps_n = 0
  stats.subscriptions = stats.subscriptions - n
  return n
end

jsonrpc.close_hooks[#jsonrpc.close_hooks + 1] = M.close

--- Forgets the HTTP publishers' buckets (tests).
function M.reset_rates()
  by_addr, n_addr = {}, 0
end

local mesh = get_mesh()
if mesh.add_counters then mesh.add_counters("rpc_pubsub_", stats) end

metrics.collector(function(page)
  page:gauge("relaynet_rpc_pubsub_subscriptions", "JSON-RPC subscriptions open now.", stats.subscriptions)
  page:counter("relaynet_rpc_pubsub_refused_total",
    "JSON-RPC subscribes and publishes refused by a bound (ELIMIT, -32010), by kind.",
    { { { { "kind", "subscribe" } }, stats.subscriptions_refused },
      { { { "kind", "publish" } }, stats.publishes_refused } })
  page:counter("relaynet_rpc_pubsub_notifications_total",
    "JSON-RPC subscription notifications queued (sent) and dropped on a full send queue (dropped).",
    { { { { "outcome", "sent" } }, stats.notifications },
      { { { "outcome", "dropped" } }, stats.notifications_dropped } })
  page:counter("relaynet_rpc_pubsub_publishes_total", "Publishes made through JSON-RPC.", stats.publishes)
end)

return M
