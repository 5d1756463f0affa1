-- relaynet.mesh.presence: who is subscribed to a topic across the mesh
-- (README "Presence", PROTOCOL.md "Presence", DESIGN.md "Presence").
--
-- Members: a subscription made with presence info (rn.subscribe(topic, fn,
-- { presence = info }), server:subscribe(conn_id, topic, { presence = info }))
-- is a member of its exact topic on this node until the subscription ends.
-- Each node owns its own members only: mine[topic] = { ver, n, members }.
-- Every change (a join or a leave) takes the next value of one counter of
-- this process (`clock`); a change message carries the topic's previous
-- version (`prev`) and the new one (`ver`), with `run` naming the process,
-- so a receiver can tell a change that follows what it holds (prev <= its
-- version < ver), one it has seen (ver <= its version) and a gap (prev >
-- its version: it asks again). A snapshot carries the whole list and the
-- clock at the time it was taken.
--
-- Watching: a node with an rn.on_presence handler for a topic (or with an
-- rn.presence fetch for it) asks every node whose route entry lists that
-- exact topic among its subscription patterns (S.best[dest].topics; a
-- member's subscription puts it there) with a `watch` (a `query` for a
-- one-off fetch). The node asked answers with a snapshot and, for a watch,
-- keeps the asker in watchers[topic] and sends it every later change.
-- Deltas and snapshots of a node are only ever taken as that node's own
-- members: the node is env.from, checked like every routed message
-- (route starts at from, ends at the neighbour it came from).
--
-- Routes: routes.lua calls R.on_best(dest) when the selected route to dest
-- changes; that is handled on the next loop turn (flush): a destination that
-- is gone takes its members from the caches (leaves with reason "node
-- lost"), and its watch registrations here are kept for PR.GONE seconds
-- with a snapshot owed; one that appears, or whose next hop changed, is
-- sent what it is owed and is watched (again) for every watched topic it
-- lists, and the snapshot it answers brings its members back as joins.
--
-- Events: fn(event, member) runs in a coroutine of its own (sched.handle)
-- for every change of this node's view of the topic after fn was
-- registered: "join" and "leave" (member.reason "unsubscribed", "closed" or
-- "node lost"). The view starts with what the node already holds; rn.presence
-- gives it.
--
-- Local members and on_presence handlers persist across runs like
-- subscriptions; caches, watch registrations and fetches are per run (they
-- are dropped when mesh/state.lua's reset() replaces S.links).

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local R = require("relaynet.mesh.routes")
local U = require("relaynet.mesh.pubsub")
local P = require("relaynet.mesh.pubsub_match")

local cfg = S.config
local contains, is_name, now, fail = W.contains, W.is_name, W.now, W.fail

local PR = {}

--- The presence bounds and the fetch timeout, added to mesh_config (README,
--- "Presence"). Counts unless noted.
PR.DEFAULTS = {
  max_presence_members = 1000,  -- members of one topic on this node; past it: ELIMIT
  max_presence_info_bytes = 512, -- bytes of one member's info once encoded; more: EINVAL
  max_presence_entries = 16384, -- other nodes' members held here (all watched topics); past it dropped
  max_presence_watchers = 4096, -- (topic, node) watch registrations held here; past it refused
  max_presence_handlers = 1024, -- rn.on_presence handlers on this node; past it: ELIMIT
  max_presence_queries = 256,   -- rn.presence fetches in flight on this node; past it: ELIMIT
  presence_timeout = 5,         -- seconds: rn.presence's default timeout
}
for k, v in pairs(PR.DEFAULTS) do
  if cfg[k] == nil then cfg[k] = v end
end

-- Counters, shown in mesh_status().stats as presence_<name>.
local stats = {
  sent = 0,             -- presence messages this node sent (any op)
  received = 0,         -- presence messages for this node
  relayed = 0,          -- presence messages passed on for others
  joins = 0, leaves = 0, -- changes of this node's own members
  stale = 0,            -- deltas and snapshots dropped as not newer than what is held
  resyncs = 0,          -- snapshots asked again after a gap
  dropped = 0,          -- other nodes' members not held (max_presence_entries)
  refused = 0,          -- EINVAL and ELIMIT answers of subscribe, on_presence, presence
  watchers_refused = 0, -- watch registrations refused (max_presence_watchers)
  nodes_lost = 0,       -- (topic, node) views dropped because the node became unreachable
  timeouts = 0,         -- rn.presence calls that timed out
  unrouted = 0,         -- state, join and leave messages dropped: no route to their node
}
PR.stats = stats

-- Persistent state --------------------------------------------------------------

local run                 -- names this process's versions (I.new_id() on first use)
local clock = 0           -- the version counter, one for all topics
local floor = 0           -- every version of a forgotten empty topic record is at most this
local mine = {}           -- topic -> { ver, n, members = { [id] = { id, info } } }
local n_mine, n_empty = 0, 0 -- members here; topic records with no member left
local MAX_EMPTY = 1024    -- empty records kept (their version) before they are forgotten
local lua_ids = 0         -- numbers the members of Lua subscriptions ("s1", "s2", ...)
local watched = {}        -- topic -> { [handle] = true } (on_presence handlers)
local n_watched = {}      -- topic -> number of handlers
local n_handlers = 0

-- Per-run state -----------------------------------------------------------------
--
-- cache[topic][node] = { run, ver, members = { [id] = member }, n } is the
-- view of a watched topic's members on another node; n_cache counts the
-- members held. pending[topic][node] = the time a watch was sent that has
-- no snapshot yet. waiters[topic] = { {co, wid}, ... } are rn.presence
-- calls waiting for those. watchers[topic][node] = true: nodes that watch
-- a topic of this node (n_watchers counts them). queries[qid] = a fetch in
-- flight. known[dest] = the next hop of dest when it was last handled.
-- owed[node][topic] = true (a watch) or a query id: a snapshot or change
-- for `node` that found no route to it (a route is often learned a moment
-- later on one side than the other); the snapshot goes out when the route
-- appears. retry: the timer that sends again the watches left unanswered.
-- gone[node] = since when `node` has had no route (its registrations go
-- after PR.GONE seconds; sweep is that timer).
local st

local function fresh_state()
  return { links = S.links, cache = {}, n_cache = 0, pending = {}, waiters = {}, watchers = {}, n_watchers = 0,
    queries = {}, n_queries = 0, known = {}, changed = {}, timer = nil, owed = {}, n_owed = 0, retry = nil,
    gone = {}, sweep = nil }
end
st = fresh_state()

local sweep -- the timer function that forgets long-unreachable watchers (below)

-- The per-run state, emptied when the mesh's per-run state was reset.
local function state()
  if st.links ~= S.links then st = fresh_state() end
  return st
end

-- The wire ------------------------------------------------------------------------

-- Sends presence message `data` to node `to` over its route: true when a
-- link took it.
local function send(to, data)
  local link = R.next_link(to)
  if not link then return false end
  local me = I.node_id()
  local ok = W.send(link, { type = "presence", id = I.new_id(), from = me, to = to, ttl = cfg.max_ttl,
    route = { me }, data = data })
  if ok then stats.sent = stats.sent + 1 end
  return ok
end

local function my_run()
  if not run then run = I.new_id() end
  return run
end

-- The member list of topic record `rec` (nil: none) as sent in a snapshot.
local function member_list(rec)
  local list = json.array()
  if rec then
    for _, m in pairs(rec.members) do list[#list + 1] = { id = m.id, info = m.info } end
  end
  return list
end

local function snapshot(topic, q)
  return { op = "state", topic = topic, run = my_run(), ver = clock, members = member_list(mine[topic]), q = q }
end

-- Events ---------------------------------------------------------------------------

local LABEL = "presence handler of "

-- Runs the on_presence handlers of `topic` for one change.
local function fire(topic, event, member)
  local set = watched[topic]
  if not set then return end
  local list = {}
  for h in pairs(set) do list[#list + 1] = h end
  for i = 1, #list do
    local h = list[i]
    if h.active then sched.handle(LABEL, topic, h.fn, 2, event, member) end
  end
end

local function member_of(node, m, reason)
  return { node = node, id = m.id, info = m.info, reason = reason }
end

-- This node's members ---------------------------------------------------------------

-- Remembers that `node` is owed a snapshot of `topic` (q: for that query,
-- true: for its watch), at most max_presence_watchers of them.
local function owe(node, topic, q)
  local s = state()
  local o = s.owed[node]
  if not (o and o[topic] ~= nil) then
    if s.n_owed >= cfg.max_presence_watchers then return end
    s.n_owed = s.n_owed + 1
  end
  if not o then o = {}; s.owed[node] = o end
  o[topic] = q or true
end

-- Sends a change of `topic` to the nodes that watch it here; one that
-- finds no route is owed a snapshot instead.
local function tell_watchers(topic, data)
  local set = state().watchers[topic]
  if not set then return end
  for node in pairs(set) do
    if not send(node, data) then owe(node, topic) end
  end
end

-- Forgets every empty topic record once there are more than MAX_EMPTY: a
-- record made afterwards starts from `floor`, so a watcher that missed
-- nothing still follows on and one that did asks again.
local function trim_empty()
  if n_empty <= MAX_EMPTY then return end
  for topic, rec in pairs(mine) do
    if rec.n == 0 then mine[topic] = nil end
  end
  n_empty = 0
  floor = clock
end

--- Subscribes with presence: `pattern` must be an exact topic (a wildcard
--- raises EINVAL at `level`), `info` any value JSON can hold of at most
--- max_presence_info_bytes once encoded (else nil, "EINVAL: ...", "EINVAL").
--- `id` is the member's id (nil: "s" and a number). Then the subscription
--- is made as pubsub.subscribe makes it (fn, raw, what), and it is a member
--- of the topic until it ends. Returns its handle | nil, msg, code (ELIMIT
--- past max_presence_members or the subscription bounds).
function PR.subscribe(pattern, fn, info, raw, level, what, id)
  level = (level or 1) + 1
  what = what or "relaynet.subscribe"
  local ok, why = P.check_pattern(pattern)
  if not ok then error(what .. ": EINVAL: " .. why, level) end
  if not P.check_topic(pattern) then
    error(what .. ": EINVAL: presence needs an exact topic, not the pattern '" .. pattern .. "'", level)
  end
  if type(fn) ~= "function" then error(what .. ": expected a function", level) end
  local js, err = json.encode(info)
  if not js then
    stats.refused = stats.refused + 1
    return fail("EINVAL", "the presence info for topic %s cannot be encoded as JSON: %s", pattern, tostring(err))
  end
  if #js > cfg.max_presence_info_bytes then
    stats.refused = stats.refused + 1
    return fail("EINVAL", "the presence info for topic %s is %d bytes, at most %d "
      .. "(mesh_config.max_presence_info_bytes)", pattern, #js, cfg.max_presence_info_bytes)
  end
  if not utf8.len(js) then
    stats.refused = stats.refused + 1
    return fail("EINVAL", "the presence info for topic %s holds a string that is not valid UTF-8", pattern)
  end
  local rec = mine[pattern]
  if rec and rec.n >= cfg.max_presence_members then
    stats.refused = stats.refused + 1
    return fail("ELIMIT", "topic %s has %d members on node %s already (mesh_config.max_presence_members)", pattern,
      rec.n, I.node_id())
  end
  local h, e2, code = U.subscribe(pattern, fn, raw, level, what)
  if not h then return nil, e2, code end
  if not id then
    lua_ids = lua_ids + 1
    id = "s" .. lua_ids
  end
  if not rec then
    rec = { ver = floor, n = 0, members = {} }
    mine[pattern] = rec
  elseif rec.n == 0 then
    n_empty = n_empty - 1
  end
  local m = { id = id, info = json.decode(js) }
  if m.info == json.null then m.info = nil end
  rec.members[id] = m
  rec.n = rec.n + 1
  n_mine = n_mine + 1
  clock = clock + 1
  local prev = rec.ver
  rec.ver = clock
  h.presence = m
  stats.joins = stats.joins + 1
  tell_watchers(pattern, { op = "join", topic = pattern, run = my_run(), ver = clock, prev = prev, id = id,
    info = m.info })
  fire(pattern, "join", member_of(I.node_id(), m))
  return h
end

-- pubsub.lua calls this when a subscription with presence ends (h.presence
-- is its member; h.leave_reason says why, "unsubscribed" when unset).
function U.presence_ended(h)
  local m, topic = h.presence, h.pattern
  h.presence = nil
  local rec = mine[topic]
  if not rec or rec.members[m.id] ~= m then return end
  local reason = h.leave_reason or "unsubscribed"
  rec.members[m.id] = nil
  rec.n = rec.n - 1
  n_mine = n_mine - 1
  clock = clock + 1
  local prev = rec.ver
  rec.ver = clock
  stats.leaves = stats.leaves + 1
  if rec.n == 0 then
    n_empty = n_empty + 1
    trim_empty()
  end
  tell_watchers(topic, { op = "leave", topic = topic, run = my_run(), ver = clock, prev = prev, id = m.id,
    reason = reason })
  fire(topic, "leave", member_of(I.node_id(), m, reason))
end

-- Watching other nodes -------------------------------------------------------------------

-- The nodes whose route entry lists `topic` exactly.
local function candidates(topic)
  local list = {}
  for dest, b in pairs(S.best) do
    local tp = b.topics
    if tp and contains(tp, topic) then list[#list + 1] = dest end
  end
  return list
end

local RETRY = 2 -- seconds a watch waits for its snapshot before it is sent again

local watch

-- Sends again the watches unanswered for RETRY seconds (a message lost on a
-- route that changed, or an answer that found no route back); runs while
-- any is pending.
local function retry()
  local s = state()
  s.retry = nil
  local t, again = now(), {}
  for topic, p in pairs(s.pending) do
    for node, sent in pairs(p) do
      if t - sent >= RETRY then again[#again + 1] = { topic, node } end
    end
  end
  for _, a in ipairs(again) do
    if watched[a[1]] and S.best[a[2]] then watch(a[1], a[2]) end
  end
  if next(s.pending) and W.running() then s.retry = sched.after(RETRY, retry) end
end

-- Asks `node` for a snapshot of `topic` and to send its changes (watch).
function watch(topic, node)
  local s = state()
  local e = s.cache[topic] and s.cache[topic][node]
  if send(node, { op = "watch", topic = topic, run = e and e.run, ver = e and e.ver }) then
    local p = s.pending[topic]
    if not p then p = {}; s.pending[topic] = p end
    p[node] = now()
    if not s.retry and W.running() then s.retry = sched.after(RETRY, retry) end
  end
end

-- Wakes the rn.presence calls waiting for `topic` when no snapshot of it
-- is pending any more.
local function check_waiters(topic)
  local s = state()
  local p = s.pending[topic]
  if p and next(p) then return end
  s.pending[topic] = nil
  local ws = s.waiters[topic]
  if not ws then return end
  s.waiters[topic] = nil
  for i = 1, #ws do sched.wake(ws[i][1], ws[i][2], true) end
end

-- Drops the view of `node`'s members of `topic`, with a leave event for
-- each (reason).
local function drop_view(topic, node, reason)
  local s = state()
  local c = s.cache[topic]
  local e = c and c[node]
  if not e then return end
  c[node] = nil
  if next(c) == nil then s.cache[topic] = nil end
  s.n_cache = s.n_cache - e.n
  for _, m in pairs(e.members) do fire(topic, "leave", member_of(node, m, reason)) end
end

-- A snapshot's member list, checked: { [id] = { id, info } }, count.
local function read_members(list)
  local out, n = {}, 0
  if type(list) ~= "table" then return nil end
  for i = 1, math.min(#list, cfg.max_presence_members) do
    local m = list[i]
    if type(m) == "table" and is_name(m.id) and not out[m.id] then
      local info = m.info
      if info == json.null then info = nil end
      out[m.id] = { id = m.id, info = info }
      n = n + 1
    end
  end
  return out, n
end

-- Applies a snapshot of `node`'s members of watched `topic`.
local function apply_state(topic, node, data)
  local s = state()
  local c = s.cache[topic]
  local e = c and c[node]
  if e and e.run == data.run and data.ver <= e.ver then
    stats.stale = stats.stale + 1
    return
  end
  local members = read_members(data.members)
  if not members then
    S.stats.bad_messages = S.stats.bad_messages + 1
    return
  end
  local restarted = e and e.run ~= data.run
  local old = e and e.members or {}
  if not c then c = {}; s.cache[topic] = c end
  local ne = { run = data.run, ver = data.ver, members = {}, n = 0 }
  if e then s.n_cache = s.n_cache - e.n end
  c[node] = ne
  -- Leaves first, then joins, each in id order.
  local gone, came = {}, {}
  for id in pairs(old) do if not members[id] then gone[#gone + 1] = id end end
  for id in pairs(members) do
    if old[id] then
      ne.members[id] = old[id]
      ne.n = ne.n + 1
      s.n_cache = s.n_cache + 1
    else
      came[#came + 1] = id
    end
  end
  table.sort(gone)
  table.sort(came)
  for _, id in ipairs(gone) do
    fire(topic, "leave", member_of(node, old[id], restarted and "node lost" or "unsubscribed"))
  end
  for _, id in ipairs(came) do
    if s.n_cache >= cfg.max_presence_entries then
      stats.dropped = stats.dropped + 1
    else
      local m = members[id]
      ne.members[id] = m
      ne.n = ne.n + 1
      s.n_cache = s.n_cache + 1
      fire(topic, "join", member_of(node, m))
    end
  end
end

-- Asks `node` again after a gap in its changes of `topic` (not while a
-- watch sent less than 2 s ago is unanswered).
local function resync(topic, node)
  local p = state().pending[topic]
  local t = p and p[node]
  if t and now() - t < 2 then return end
  stats.resyncs = stats.resyncs + 1
  watch(topic, node)
end

-- Applies a join or leave of `node`'s member of watched `topic`.
local function apply_delta(topic, node, data)
  local s = state()
  local c = s.cache[topic]
  local e = c and c[node]
  if e and e.run ~= data.run then
    -- The node runs anew: its old members are gone. A change that starts
    -- from nothing (prev 0) follows on from that; any other needs a snapshot.
    if data.prev ~= 0 then return resync(topic, node) end
    drop_view(topic, node, "node lost")
    c, e = s.cache[topic], nil
  end
  local ver = e and e.ver or 0
  if data.ver <= ver then
    stats.stale = stats.stale + 1
    return
  end
  if data.prev > ver then return resync(topic, node) end
  if not e then
    if not c then c = {}; s.cache[topic] = c end
    e = { run = data.run, ver = 0, members = {}, n = 0 }
    c[node] = e
  end
  e.ver = data.ver
  local id = data.id
  if data.op == "join" then
    if e.members[id] then return end
    if s.n_cache >= cfg.max_presence_entries then
      stats.dropped = stats.dropped + 1
      return
    end
    local info = data.info
    if info == json.null then info = nil end
    local m = { id = id, info = info }
    e.members[id] = m
    e.n = e.n + 1
    s.n_cache = s.n_cache + 1
    fire(topic, "join", member_of(node, m))
  else
    local m = e.members[id]
    if not m then return end
    e.members[id] = nil
    e.n = e.n - 1
    s.n_cache = s.n_cache - 1
    local reason = data.reason
    if reason ~= "closed" then reason = "unsubscribed" end
    fire(topic, "leave", member_of(node, m, reason))
  end
end

-- Route changes ----------------------------------------------------------------------

--- Seconds the watch registrations of an unreachable node are kept.
PR.GONE = 60

-- Registers `node` as a watcher of `topic` here (at most
-- max_presence_watchers registrations; past it presence_watchers_refused).
local function register(node, topic)
  local s = state()
  local set = s.watchers[topic]
  if set and set[node] then return end
  if s.n_watchers >= cfg.max_presence_watchers then
    stats.watchers_refused = stats.watchers_refused + 1
    return
  end
  if not set then set = {}; s.watchers[topic] = set end
  set[node] = true
  s.n_watchers = s.n_watchers + 1
end

-- Forgets a node's watch registrations and owed snapshots.
local function forget_watcher(dest)
  local s = state()
  local o = s.owed[dest]
  if o then
    for _ in pairs(o) do s.n_owed = s.n_owed - 1 end
    s.owed[dest] = nil
  end
  for topic, set in pairs(s.watchers) do
    if set[dest] then
      set[dest] = nil
      s.n_watchers = s.n_watchers - 1
      if next(set) == nil then s.watchers[topic] = nil end
    end
  end
end

-- Forgets the watch registrations of the nodes unreachable for GONE
-- seconds; runs while any node is unreachable.
function sweep()
  local s = state()
  s.sweep = nil
  local t = now()
  for dest, since in pairs(s.gone) do
    if S.best[dest] then
      s.gone[dest] = nil
    elseif t - since >= PR.GONE then
      s.gone[dest] = nil
      forget_watcher(dest)
    end
  end
  if next(s.gone) and W.running() then s.sweep = sched.after(PR.GONE / 4, sweep) end
end
PR._sweep = sweep -- for the unit spec

-- Handles the destinations whose selected route changed (see the top).
local function flush()
  local s = state()
  s.timer = nil
  local changed = s.changed
  s.changed = {}
  for dest in pairs(changed) do
    local b = S.best[dest]
    if not b then
      s.known[dest] = nil
      -- dest's watch registrations stay for PR.GONE seconds, each owed a
      -- snapshot: if dest comes back in time (also when its own route to
      -- this node never went), it gets the members as they are by then.
      for topic, set in pairs(s.watchers) do
        if set[dest] then owe(dest, topic) end
      end
      s.gone[dest] = now()
      if not s.sweep and W.running() then s.sweep = sched.after(PR.GONE, sweep) end
      local topics = {}
      for topic, c in pairs(s.cache) do if c[dest] then topics[#topics + 1] = topic end end
      table.sort(topics)
      for _, topic in ipairs(topics) do
        stats.nodes_lost = stats.nodes_lost + 1
        drop_view(topic, dest, "node lost")
      end
      for topic, p in pairs(s.pending) do
        if p[dest] then
          p[dest] = nil
          check_waiters(topic)
        end
      end
      for _, q in pairs(s.queries) do
        if q.pending[dest] then
          q.pending[dest] = nil
          if next(q.pending) == nil then sched.wake(q.co, q.wid, true) end
        end
      end
    else
      local moved = s.known[dest] ~= b.next
      s.known[dest] = b.next
      s.gone[dest] = nil
      local o = s.owed[dest]
      if o then
        s.owed[dest] = nil
        for topic, q in pairs(o) do
          s.n_owed = s.n_owed - 1
          -- A watch that came before the route registers now.
          if q == true then register(dest, topic) end
          send(dest, snapshot(topic, q ~= true and q or nil))
        end
      end
      local tp = b.topics
      if tp then
        for topic in pairs(watched) do
          if contains(tp, topic) then
            local c = s.cache[topic]
            local p = s.pending[topic]
            if moved or not ((c and c[dest]) or (p and p[dest])) then watch(topic, dest) end
          end
        end
      end
    end
  end
end

--- routes.lua calls this when the selected route to `dest` changed (added,
--- replaced or removed). The change is handled on the next turn of the loop
--- (at once when relaynet is not running), never inside route processing.
function R.on_best(dest)
  local s = state()
  s.changed[dest] = true
  if not W.running() then return flush() end
  if not s.timer then s.timer = sched.after(0, flush) end
end

-- Messages ---------------------------------------------------------------------------

local function on_watch(from, data, query)
  local s = state()
  local topic = data.topic
  local q = query and data.q or nil
  if not S.best[from] then
    -- No route to the asker (yet: a route is often learned a moment later
    -- on one side than the other; or never: a name a neighbour made up).
    -- Nothing is registered: the snapshot is owed, and a watch registers
    -- when the route appears (flush). An asker that gets no route within
    -- PR.GONE seconds is forgotten (sweep).
    owe(from, topic, q)
    if s.owed[from] and not s.gone[from] then
      s.gone[from] = now()
      if not s.sweep and W.running() then s.sweep = sched.after(PR.GONE, sweep) end
    end
    return
  end
  if not query then register(from, topic) end
  if not send(from, snapshot(topic, q)) then owe(from, topic, q) end
end

local function on_unwatch(from, data)
  local s = state()
  local set = s.watchers[data.topic]
  if set and set[from] then
    set[from] = nil
    s.n_watchers = s.n_watchers - 1
    if next(set) == nil then s.watchers[data.topic] = nil end
  end
end

local function on_state(from, data)
  local s = state()
  if type(data.members) ~= "table" then
    S.stats.bad_messages = S.stats.bad_messages + 1
    return
  end
  if data.q ~= nil then
    local q = s.queries[data.q]
    if not q or not q.pending[from] or q.topic ~= data.topic then return end
    q.pending[from] = nil
    q.results[from] = read_members(data.members) or {}
    if next(q.pending) == nil then sched.wake(q.co, q.wid, true) end
    return
  end
  if not watched[data.topic] then return end
  apply_state(data.topic, from, data)
  local p = s.pending[data.topic]
  if p and p[from] then
    p[from] = nil
    check_waiters(data.topic)
  end
end

local function on_delta(from, data)
  if not watched[data.topic] then
    -- A change for a topic this node no longer watches: the sender missed
    -- the unwatch.
    send(from, { op = "unwatch", topic = data.topic })
    return
  end
  if not is_name(data.id) or math.type(data.prev) ~= "integer" then
    S.stats.bad_messages = S.stats.bad_messages + 1
    return
  end
  apply_delta(data.topic, from, data)
end

local OPS = { watch = true, query = true, unwatch = true, state = true, join = true, leave = true }

-- The message of a presence envelope is well formed (the fields every op
-- has).
local function valid(env)
  local d = env.data
  if not (is_name(env.id) and is_name(env.from, 64) and is_name(env.to, 64) and math.type(env.ttl) == "integer"
      and type(env.route) == "table" and type(d) == "table" and OPS[d.op]) then
    return false
  end
  if type(d.topic) ~= "string" or #d.topic > cfg.max_topic_length then return false end
  if d.op == "state" or d.op == "join" or d.op == "leave" then
    if not is_name(d.run) or math.type(d.ver) ~= "integer" then return false end
  end
  if d.q ~= nil and not is_name(d.q) then return false end
  return true
end

--- presence, arrived on `link`: dropped when malformed (stats.bad_messages),
--- when this node is on its route already (dropped_loops) or when its route
--- does not start at its sender and end at the neighbour it came from
--- (spoofed_messages); passed one hop on when it is for another node
--- (presence_relayed; no route: no_route; hop limit: ttl_expired); else
--- handled here as a message of env.from about env.from's own members.
function PR.on_message(link, env)
  local ss = S.stats
  if not valid(env) then
    ss.bad_messages = ss.bad_messages + 1
    return
  end
  if not W.route_ok(link, env) then return end
  local me = I.node_id()
  local route = env.route
  if env.to ~= me then
    local ttl = math.min(env.ttl, cfg.max_ttl) - 1
    if ttl <= 0 then
      ss.ttl_expired = ss.ttl_expired + 1
      return
    end
    local out, b = R.next_link(env.to)
    if not out or b.next == link.peer then
      ss.no_route = ss.no_route + 1
      return
    end
    env.ttl = ttl
    route[#route + 1] = me
    env.timestamp = nil
    local text = W.encode_envelope(env)
    if text and W.send_text(out, text) then stats.relayed = stats.relayed + 1 end
    return
  end
  stats.received = stats.received + 1
  local data, from = env.data, env.from
  local op = data.op
  -- A view is only held of a node with a route here: its loss (R.on_best)
  -- is what drops the view again, and a neighbour cannot make up members
  -- of nodes that do not exist (each would stay held for good).
  if (op == "join" or op == "leave" or (op == "state" and data.q == nil)) and not S.best[from] then
    stats.unrouted = stats.unrouted + 1
    return
  end
  if op == "watch" then
    on_watch(from, data, false)
  elseif op == "query" then
    if data.q == nil then
      ss.bad_messages = ss.bad_messages + 1
      return
    end
    on_watch(from, data, true)
  elseif op == "unwatch" then
    on_unwatch(from, data)
  elseif op == "state" then
    on_state(from, data)
  else
    on_delta(from, data)
  end
end

-- The API ---------------------------------------------------------------------------

local Handle = {}
Handle.__index = Handle
Handle.__name = "relaynet.PresenceHandler"

--- Ends the handler: no event reaches it afterwards. The last handler of a
--- topic ends the watch: the nodes watched are told, the view is dropped
--- (without events). Returns true, or false when it had ended.
function Handle:unsubscribe()
  if not self.active then return false end
  self.active = false
  local topic = self.topic
  watched[topic][self] = nil
  n_watched[topic] = n_watched[topic] - 1
  n_handlers = n_handlers - 1
  if n_watched[topic] > 0 then return true end
  watched[topic], n_watched[topic] = nil, nil
  local s = state()
  local nodes = {}
  for node in pairs(s.cache[topic] or {}) do nodes[node] = true end
  for node in pairs(s.pending[topic] or {}) do nodes[node] = true end
  for node in pairs(nodes) do send(node, { op = "unwatch", topic = topic }) end
  local c = s.cache[topic]
  if c then
    for _, e in pairs(c) do s.n_cache = s.n_cache - e.n end
    s.cache[topic] = nil
  end
  s.pending[topic] = nil
  check_waiters(topic)
  return true
end

function Handle:__tostring()
  return "relaynet.PresenceHandler " .. self.topic .. (self.active and "" or " (ended)")
end

-- Checks an exact topic argument (raises EINVAL at `level`).
local function check_topic(topic, what, level)
  local ok, why = P.check_topic(topic)
  if not ok then error(what .. ": EINVAL: " .. why, level + 1) end
end

--- on_presence(topic, fn(event, member)) -> handle | nil, msg, "ELIMIT"
--- (past max_presence_handlers). Raises on a malformed topic (a pattern
--- with wildcards included) or a missing function.
function PR.on_presence(topic, fn, level)
  level = (level or 1) + 1
  check_topic(topic, "relaynet.on_presence", level)
  if type(fn) ~= "function" then error("relaynet.on_presence: expected a function", level) end
  if n_handlers >= cfg.max_presence_handlers then
    stats.refused = stats.refused + 1
    return fail("ELIMIT", "node %s has %d presence handlers already (mesh_config.max_presence_handlers)",
      I.node_id(), n_handlers)
  end
  local h = setmetatable({ topic = topic, fn = fn, active = true }, Handle)
  local first = watched[topic] == nil
  if first then watched[topic], n_watched[topic] = {}, 0 end
  watched[topic][h] = true
  n_watched[topic] = n_watched[topic] + 1
  n_handlers = n_handlers + 1
  if first then
    for _, dest in ipairs(candidates(topic)) do watch(topic, dest) end
  end
  return h
end

-- The members of `topic` on this node, added to `list`.
local function add_mine(list, topic)
  local rec = mine[topic]
  if not rec then return end
  local me = I.node_id()
  for _, m in pairs(rec.members) do list[#list + 1] = member_of(me, m) end
end

local function sorted(list)
  table.sort(list, function(a, b)
    if a.node ~= b.node then return a.node < b.node end
    return a.id < b.id
  end)
  return list
end

local function names(set)
  local l = {}
  for k in pairs(set) do l[#l + 1] = k end
  table.sort(l)
  return table.concat(l, ", ")
end

--- presence(topic [, timeout]) -> list of { node, id, info } (sorted by
--- node, then id) | nil, msg, code. A watched topic (an on_presence handler
--- here) is answered from the view held, after waiting for the snapshots
--- still pending; another topic is fetched from every node whose route
--- entry lists it (a `query`), waiting at most `timeout` seconds (default
--- mesh_config.presence_timeout): ETIMEDOUT names the nodes that did not
--- answer. When nothing has to be waited for (the view is complete, or no
--- other node lists the topic) it answers at once, also outside a
--- coroutine; outside a coroutine it fails with EAGAIN when it would have
--- to wait. ELIMIT past max_presence_queries fetches in flight. Raises on a
--- malformed topic or timeout.
function PR.presence(topic, timeout, level)
  level = (level or 1) + 1
  check_topic(topic, "relaynet.presence", level)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    error("relaynet.presence: timeout must be a non-negative number of seconds", level)
  end
  timeout = timeout or cfg.presence_timeout
  local s = state()
  if watched[topic] then
    local p = s.pending[topic]
    if p and next(p) then
      if not sched.can_wait() then
        return fail("EAGAIN", "the presence of topic %s is still being fetched from node(s) %s", topic, names(p))
      end
      local ws = s.waiters[topic]
      if not ws then ws = {}; s.waiters[topic] = ws end
      local w
      local ok, err, code = sched.wait("relaynet.presence", timeout, function(co, wid)
        w = { co, wid }
        ws[#ws + 1] = w
      end)
      if not ok then
        -- A wait that timed out (or was cancelled) leaves the list: with a
        -- node that never answers, the list would otherwise only grow.
        for i = #ws, 1, -1 do
          if ws[i] == w then table.remove(ws, i) end
        end
        if #ws == 0 and state().waiters[topic] == ws then state().waiters[topic] = nil end
        if code == "ETIMEDOUT" then
          stats.timeouts = stats.timeouts + 1
          p = state().pending[topic]
          return fail("ETIMEDOUT", "no presence snapshot of topic %s from node(s) %s within %g s", topic,
            p and names(p) or "?", timeout)
        end
        return nil, err, code
      end
    end
    local list = json.array()
    add_mine(list, topic)
    for node, e in pairs(state().cache[topic] or {}) do
      for _, m in pairs(e.members) do list[#list + 1] = member_of(node, m) end
    end
    return sorted(list)
  end
  local nodes = candidates(topic)
  if #nodes == 0 then
    local list = json.array()
    add_mine(list, topic)
    return sorted(list)
  end
  if not sched.can_wait() then
    return fail("EAGAIN", "the presence of topic %s has to be fetched from node(s) %s: call rn.presence in a coroutine",
      topic, table.concat(nodes, ", "))
  end
  if s.n_queries >= cfg.max_presence_queries then
    stats.refused = stats.refused + 1
    return fail("ELIMIT", "node %s has %d presence fetches in flight already (mesh_config.max_presence_queries)",
      I.node_id(), s.n_queries)
  end
  local qid = I.new_id()
  local q = { topic = topic, pending = {}, results = {} }
  for _, node in ipairs(nodes) do
    if send(node, { op = "query", topic = topic, q = qid }) then q.pending[node] = true end
  end
  if next(q.pending) then
    s.queries[qid] = q
    s.n_queries = s.n_queries + 1
    local ok, err, code = sched.wait("relaynet.presence", timeout, function(co, wid) q.co, q.wid = co, wid end)
    if s.queries[qid] then
      s.queries[qid] = nil
      s.n_queries = s.n_queries - 1
    end
    if not ok then
      if code == "ETIMEDOUT" then
        stats.timeouts = stats.timeouts + 1
        return fail("ETIMEDOUT", "no presence answer for topic %s from node(s) %s within %g s", topic,
          names(q.pending), timeout)
      end
      return nil, err, code
    end
  end
  local list = json.array()
  add_mine(list, topic)
  for node, members in pairs(q.results) do
    for _, m in pairs(members) do list[#list + 1] = member_of(node, m) end
  end
  return sorted(list)
end

--- Figures for mesh_status().stats: the counters above as presence_<name>,
--- and presence_members (members here), presence_cached (other nodes'
--- members held), presence_watchers (watch registrations held here),
--- presence_handlers (on_presence handlers here), presence_waiting
--- (rn.presence calls waiting now).
function PR.status(out)
  for k, v in pairs(stats) do out["presence_" .. k] = v end
  local s = state()
  local waiting = s.n_queries
  for _, ws in pairs(s.waiters) do waiting = waiting + #ws end
  out.presence_waiting = waiting
  out.presence_members = n_mine
  out.presence_cached = s.n_cache
  out.presence_watchers = s.n_watchers
  out.presence_handlers = n_handlers
end

return PR
