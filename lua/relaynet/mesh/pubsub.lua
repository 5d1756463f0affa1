-- relaynet.mesh.pubsub: topics across the mesh (README "Pub/sub",
-- PROTOCOL.md "Pub/sub").
--
-- Interest: every node advertises the distinct patterns of its
-- subscriptions (state.my_topics) as the `topics` of its own route entry
-- (mesh/routes.lua), with the entry's seq, so interest travels, is replaced
-- and is withdrawn exactly as routes are: when a link goes down, the
-- interest learned over it goes with its routes. In key mode the patterns
-- are part of the signed entry text (mesh/auth.lua).
--
-- A publish: the publisher matches the topic against the patterns of every
-- destination (S.best[dest].topics), groups the matching destinations by
-- next hop and sends one `publish` message per next hop, listing its
-- destinations in data.nodes. Each relay delivers to itself when it is
-- listed, regroups the rest by its own next hop and passes them on, so the
-- message follows the route tree and reaches each node once; nodes without
-- interest get nothing. The message travels as `data.text` (a string
-- message) or `data.json` (the JSON text of any other value), so a relay
-- never decodes or re-encodes the message's structure.
--
-- Order: a publisher numbers its publishes (data.seq, one counter per
-- process, with data.run naming the process run); a receiver remembers the
-- last (run, seq) per publisher and drops anything not newer, so delivery
-- is at most once and in order per publisher (hence per publisher and
-- topic). A message that takes a faster new path after a route change can
-- make the older one behind it be dropped.
--
-- Subscribers: a Lua function fn(message, topic, from, pos) runs in a
-- coroutine of its own (sched.handle: now, until it first waits), once per
-- matching subscription; a WebSocket subscription (server:subscribe) gets
-- the text frame {"topic":T,"from":NODE,"message":M}, built once per message
-- per node and queued on the connection directly. With history
-- (mesh/history.lua) the publisher numbers the message in its topic's
-- stream: data.epoch and data.offset travel with it, pos is {node, epoch,
-- offset} and the frame gets "epoch" and "offset".

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local R = require("relaynet.mesh.routes")
local P = require("relaynet.mesh.pubsub_match")
local HI = require("relaynet.mesh.history")

local cfg = S.config
local contains, is_name, fail = W.contains, W.is_name, W.fail

local U = {}

-- Subscriptions (persistent across runs, like exposed servers):
-- subs[pattern] = { [handle] = true }, n_by[pattern] its size, n_subs all.
local subs, n_by, n_subs = {}, {}, 0
-- box_sets[pattern]: its subscriptions split for delivery (box_set below).
local box_sets = {}

-- This process's publisher identity: run names it, seq numbers its publishes.
local run, pub_seq = nil, 0

local Handle = {}
Handle.__index = Handle
Handle.__name = "relaynet.Subscription"

-- Rebuilds state.my_topics (sorted distinct patterns) and advertises it.
local function topics_changed()
  local list = {}
  for p in pairs(subs) do list[#list + 1] = p end
  table.sort(list)
  S.my_topics = list
  R.own_changed()
end

--- Ends the subscription: no message reaches it afterwards. Returns true,
--- or false when it had already ended.
function Handle:unsubscribe()
  if not self.active then return false end
  self.active = false
  -- A member of the topic's presence (mesh/presence.lua) leaves with it.
  if self.presence then U.presence_ended(self) end
  local p = self.pattern
  local set = subs[p]
  set[self] = nil
  box_sets[p] = nil
  n_subs = n_subs - 1
  n_by[p] = n_by[p] - 1
  if n_by[p] == 0 then
    subs[p], n_by[p] = nil, nil
    topics_changed()
  end
  return true
end

function Handle:__tostring()
  return "relaynet.Subscription " .. self.pattern .. (self.active and "" or " (ended)")
end

--- Subscribes fn to `pattern` (wildcards allowed): a handle | nil, msg,
--- "ELIMIT" past max_subscriptions, or past max_patterns for a new distinct
--- pattern (both counted in stats.pubsub_refused). `raw`: fn(frame, topic,
--- from) gets the WebSocket text frame instead of the decoded message, and
--- is called directly: it must neither suspend nor raise.
--- Raises (at `level`) on a malformed pattern or a missing function.
function U.subscribe(pattern, fn, raw, level, what)
  level = (level or 1) + 1
  what = what or "relaynet.subscribe"
  local ok, why = P.check_pattern(pattern)
  if not ok then error(what .. ": EINVAL: " .. why, level) end
  if type(fn) ~= "function" then error(what .. ": expected a function", level) end
  if n_subs >= cfg.max_subscriptions then
    S.stats.pubsub_refused = S.stats.pubsub_refused + 1
    return fail("ELIMIT", "node %s has %d subscriptions already (mesh_config.max_subscriptions)", I.node_id(),
      n_subs)
  end
  local new = subs[pattern] == nil
  if new and #S.my_topics >= cfg.max_patterns then
    S.stats.pubsub_refused = S.stats.pubsub_refused + 1
    return fail("ELIMIT", "node %s subscribes to %d distinct patterns already (mesh_config.max_patterns)",
      I.node_id(), #S.my_topics)
  end
  local h = setmetatable({ pattern = pattern, fn = fn, raw = raw or false, active = true }, Handle)
  if new then subs[pattern], n_by[pattern] = {}, 0 end
  subs[pattern][h] = true
  box_sets[pattern] = nil
  n_by[pattern] = n_by[pattern] + 1
  n_subs = n_subs + 1
  if new then topics_changed() end
  return h
end

--- The number of subscriptions on this node.
function U.count() return n_subs end

local LABEL = "subscriber of "
local conn_send_many = require("relaynet.core").conn_send_many

-- The subscriptions of a pattern split for delivery: the connections of
-- plain server:subscribe subscriptions (handles with a `box`, set by
-- relaynet.server), whose frame goes to all of them in one
-- core.conn_send_many with one shared buffer, and the other handles. Built
-- on first use, dropped whenever the pattern's subscriptions change
-- (box_sets, declared with subs).

local function box_set(p)
  local c = box_sets[p]
  if c then return c end
  c = { boxes = {}, n = 0, other = {} }
  for h in pairs(subs[p]) do
    if h.raw and h.box then
      c.n = c.n + 1
      c.boxes[c.n] = h.box
    else
      c.other[#c.other + 1] = h
    end
  end
  box_sets[p] = c
  return c
end

-- The WebSocket text frame of a message for topic `topic` from node `from`
-- (mjs: the message's JSON text), with its history position when it has
-- one (README "Pub/sub").
local function frame_of(topic, from, mjs, epoch, offset)
  return '{"topic":' .. json.encode(topic) .. ',"from":' .. json.encode(from) .. ',"message":' .. mjs
    .. (epoch and (',"epoch":' .. json.encode(epoch) .. ',"offset":' .. offset) or '') .. '}'
end

-- The value of JSON text `js`: true, value | false when it is not exactly
-- one JSON value (counted in stats.bad_messages).
local function decode_message(js)
  local v, err = json.decode(js)
  if v == nil and err then
    S.stats.bad_messages = S.stats.bad_messages + 1
    return false
  end
  return true, v
end

-- Delivers one message to this node's matching subscriptions. `t` is the
-- topic's token list; `text` (a string message) or `js` (the JSON text of
-- another value) is the message; `epoch` and `offset` its position in the
-- publisher's history (mesh/history.lua), nil without history. `remote`:
-- `js` came from another node and is decoded before anything is delivered,
-- so that text that is not exactly one JSON value (which could close the
-- message early and add members of its own to a frame or a JSON-RPC
-- notification) reaches no subscriber (stats.bad_messages). Returns true
-- when a subscription matched.
local function deliver_local(topic, t, from, text, js, epoch, offset, remote)
  local list, sets
  local mine = S.my_topics
  for i = 1, #mine do
    local p = mine[i]
    if P.match_tokens(p, t) then
      list = list or {}
      local c = box_set(p)
      local other = c.other
      for j = 1, #other do list[#list + 1] = other[j] end
      if c.n > 0 then
        sets = sets or {}
        sets[#sets + 1] = c
      end
    end
  end
  if not list then return false end
  local value, frame, pos, mjs
  local stats = S.stats
  if remote and js then
    local ok, v = decode_message(js)
    if not ok then return true end
    value = v
  end
  if sets then
    -- the connections of plain server:subscribe subscriptions, at once
    mjs = js or json.encode(text)
    frame = frame_of(topic, from, mjs, epoch, offset)
    for k = 1, #sets do
      local c = sets[k]
      conn_send_many(frame, c.boxes, c.n)
      stats.pubsub_delivered = stats.pubsub_delivered + c.n
    end
  end
  for i = 1, #list do
    local h = list[i]
    if h.active then
      if h.raw then
        if not frame then
          mjs = js or json.encode(text)
          frame = frame_of(topic, from, mjs, epoch, offset)
        end
        -- A frame function is relaynet's own (server:subscribe, JSON-RPC
        -- subscribe): it neither suspends nor raises, so it runs without a
        -- coroutine of its own. It also gets the message's JSON text, so a
        -- notification of another shape needs no parsing of the frame.
        h.fn(frame, topic, from, epoch, offset, mjs)
      else
        if value == nil then
          if text then
            value = text
          else
            local ok, v = decode_message(js)
            if not ok then return true end
            value = v
          end
        end
        -- JSON null arrives as nil; pos (shared by the subscribers) is
        -- passed only with history.
        if epoch and not pos then pos = { node = from, epoch = epoch, offset = offset } end
        sched.handle(LABEL, h.pattern, h.fn, pos and 4 or 3, value ~= json.null and value or nil, topic, from, pos)
      end
      stats.pubsub_delivered = stats.pubsub_delivered + 1
    end
  end
  return true
end

-- Sends `env` (a publish; data.nodes is replaced) to each group of
-- destinations: groups[next hop] = list of node ids. Returns how many
-- messages went out.
local function send_groups(env, groups)
  local n = 0
  for hop, nodes in pairs(groups) do
    env.data.nodes = nodes
    local text = W.encode_envelope(env)
    if text and W.send_text(S.links[hop], text) then n = n + 1 end
  end
  return n
end

--- Publishes `msg` (a string, or a value JSON can hold; nil is null) to
--- `topic` (no wildcards): returns the number of nodes it was sent to,
--- this node included when it has a matching subscription | nil, "EINVAL:
--- ...", "EINVAL" for a message JSON cannot hold, larger than
--- max_publish_bytes or not valid UTF-8. Raises on a malformed topic.
function U.publish(topic, msg, level)
  level = (level or 1) + 1
  local t, why = P.check_topic(topic)
  if not t then error("relaynet.publish: EINVAL: " .. why, level) end
  local text, js
  if type(msg) == "string" then
    text = msg
  else
    if msg == nil then msg = json.null end
    local err
    js, err = json.encode(msg)
    if not js then
      return fail("EINVAL", "the message for topic %s cannot be encoded as JSON: %s", topic, tostring(err))
    end
  end
  local size = #(text or js)
  if size > cfg.max_publish_bytes then
    S.stats.pubsub_refused = S.stats.pubsub_refused + 1
    return fail("EINVAL", "the message for topic %s is %d bytes, at most %d (mesh_config.max_publish_bytes)",
      topic, size, cfg.max_publish_bytes)
  end
  -- Links and WebSocket subscribers carry text frames: a string that is
  -- not UTF-8 would make the receiving end close the connection (1007).
  if not utf8.len(text or js) then
    return fail("EINVAL", "the message for topic %s is not valid UTF-8 (%s)", topic,
      text and "a string message is sent as text" or "a string inside it")
  end
  local stats = S.stats
  stats.pubsub_published = stats.pubsub_published + 1
  local epoch, offset = HI.record(topic, t, text, js)
  local me = I.node_id()
  local groups, count = nil, 0
  local links = S.links
  for dest, b in pairs(S.best) do
    local tp = b.topics
    if tp and P.any_match(tp, t) then
      if links[b.next] then
        groups = groups or {}
        local g = groups[b.next]
        if not g then g = json.array(); groups[b.next] = g end
        g[#g + 1] = dest
        count = count + 1
      else
        stats.pubsub_no_route = stats.pubsub_no_route + 1
      end
    end
  end
  if groups then
    if not run then run = I.new_id() end
    pub_seq = pub_seq + 1
    local env = { type = "publish", id = I.new_id(), from = me, ttl = cfg.max_ttl, route = { me },
      data = { topic = topic, run = run, seq = pub_seq, text = text, json = js, epoch = epoch, offset = offset } }
    stats.pubsub_sent = stats.pubsub_sent + send_groups(env, groups)
  end
  if #S.my_topics > 0 and deliver_local(topic, t, me, text, js, epoch, offset) then count = count + 1 end
  return count
end

-- True when data.seq of publisher `from` is newer than what was delivered
-- here; remembers it. The table is bounded: past max_destinations
-- publishers it is emptied (a message older than one already delivered
-- could then slip through once).
local function in_order(from, data)
  local last = S.pub_last[from]
  if last then
    if last.run == data.run then
      if data.seq <= last.seq then return false end
    end
  else
    if S.n_pub_last >= cfg.max_destinations then S.pub_last, S.n_pub_last = {}, 0 end
    last = {}
    S.pub_last[from] = last
    S.n_pub_last = S.n_pub_last + 1
  end
  last.run, last.seq = data.run, data.seq
  return true
end

local function valid(env)
  local d = env.data
  if not (is_name(env.id) and is_name(env.from, 64) and math.type(env.ttl) == "integer"
      and type(env.route) == "table" and type(d) == "table") then
    return false
  end
  if type(d.topic) ~= "string" or #d.topic > cfg.max_topic_length or not is_name(d.run)
    or math.type(d.seq) ~= "integer" or type(d.nodes) ~= "table" or #d.nodes < 1
    or #d.nodes > cfg.max_destinations then
    return false
  end
  local has_text, has_json = type(d.text) == "string", type(d.json) == "string"
  if has_text == has_json or (d.text ~= nil and not has_text) or (d.json ~= nil and not has_json) then
    return false
  end
  -- A position (history) is an epoch name with an integer offset, or absent.
  if (d.epoch ~= nil or d.offset ~= nil) and not (is_name(d.epoch, 64) and math.type(d.offset) == "integer") then
    return false
  end
  return true
end

--- publish, arrived on `link`: dropped when malformed (stats.bad_messages),
--- when this node is on its route already (dropped_loops), or when its route
--- does not start at its sender or end at the neighbour it came from
--- (spoofed_messages). Otherwise the listed nodes other than this one are
--- passed on, grouped by next hop (stats.pubsub_relayed; a node with no
--- route, or one only back where the message came from: pubsub_no_route),
--- and when this node is listed the message is delivered here, in order.
-- The destinations `nodes` of a publish that arrived on `link` along
-- `route`, regrouped by this node's next hop: returns here (this node is
-- listed) and groups[next hop] = list of node ids, nil when none. With
-- `ttl` (the hop count left after this node) at 0 or below, every other
-- destination counts in stats.ttl_expired; one with no route, or one only
-- back along the route, in pubsub_no_route. Shared by on_publish and
-- relay_text, so both roads count alike.
local function regroup(link, nodes, route, ttl, me)
  local stats = S.stats
  local here, groups = false, nil
  local links, best = S.links, S.best
  local seen = {}
  for i = 1, #nodes do
    local n = nodes[i]
    if n == me then
      here = true
    elseif type(n) == "string" and not seen[n] then
      seen[n] = true
      if ttl <= 0 then
        stats.ttl_expired = stats.ttl_expired + 1
      else
        local b = best[n]
        if b and links[b.next] and b.next ~= link.peer and not contains(route, b.next) then
          groups = groups or {}
          local g = groups[b.next]
          if not g then g = json.array(); groups[b.next] = g end
          g[#g + 1] = n
        else
          stats.pubsub_no_route = stats.pubsub_no_route + 1
        end
      end
    end
  end
  return here, groups
end

function U.on_publish(link, env)
  local stats = S.stats
  if not valid(env) then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if not W.route_ok(link, env) then return end
  local me = I.node_id()
  local route = env.route
  local data = env.data
  local ttl = math.min(env.ttl, cfg.max_ttl) - 1
  local here, groups = regroup(link, data.nodes, route, ttl, me)
  if groups then
    env.ttl = ttl
    route[#route + 1] = me
    env.timestamp = nil
    stats.pubsub_relayed = stats.pubsub_relayed + send_groups(env, groups)
  end
  if not here then return end
  stats.pubsub_received = stats.pubsub_received + 1
  if not in_order(env.from, data) then
    stats.pubsub_out_of_order = stats.pubsub_out_of_order + 1
    return
  end
  local t = P.check_topic(data.topic)
  if not t or not deliver_local(data.topic, t, env.from, data.text, data.json, data.epoch, data.offset, true) then
    stats.pubsub_no_interest = stats.pubsub_no_interest + 1
  end
end

local mesh_splice_publish = require("relaynet.core").mesh_splice_publish

--- A publish this node only relays, from its text (the relay fast path;
--- docs/DESIGN.md "Relaying without decoding"): `sc` is core.mesh_scan's
--- reading of `text` (result 3: the shape valid() checks, this node not in
--- data.nodes; sc.nodes and sc.route the lists, sc.topic_len the topic's
--- bytes). It does what on_publish does with such a message, in the same
--- order and with the same counters, and passes each group on as `text`
--- with its data.nodes, ttl, route and timestamp spliced in: the message
--- (data.text or data.json) goes on byte for byte. Returns false, having
--- done nothing, when a bound of mesh_config fails (the decoding road then
--- counts the message as malformed), true otherwise.
function U.relay_text(link, sc, text)
  local nodes = sc.nodes
  if sc.topic_len > cfg.max_topic_length or #nodes > cfg.max_destinations then return false end
  local stats = S.stats
  -- W.route_ok's checks, in its order
  if sc.has_me then
    stats.dropped_loops = stats.dropped_loops + 1
    return true
  end
  if not sc.route_ends then
    stats.spoofed_messages = stats.spoofed_messages + 1
    return true
  end
  local me = I.node_id()
  local ttl = math.min(sc.ttl, cfg.max_ttl) - 1
  local _, groups = regroup(link, nodes, sc.route, ttl, me)
  if groups then
    -- one timestamp for all groups, as send_groups stamps the envelope once
    local n, ts, links = 0, math.floor(W.now() * 1000), S.links
    for hop, g in pairs(groups) do
      if W.send_text(links[hop], mesh_splice_publish(text, sc, ttl, me, g, ts)) then n = n + 1 end
    end
    stats.pubsub_relayed = stats.pubsub_relayed + n
  end
  return true
end

--- Figures for mesh_status().stats: subscriptions on this node, distinct
--- patterns it advertises, patterns held from other nodes' routes.
function U.status(s)
  s.subscriptions = n_subs
  s.subscription_patterns = #S.my_topics
  s.interest_entries = S.n_topics
end

return U
