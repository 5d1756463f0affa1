-- relaynet.mesh.history: history and recovery for pub/sub topics (README
-- "Pub/sub", "History and recovery"; PROTOCOL.md "History and recovery").
--
-- Opt-in per topic pattern on the publishing node: rn.history(pattern,
-- {size = N, ttl = T}) makes every topic matching `pattern` keep a stream
-- here, on the publishing side: the last N messages published from this
-- node to it, none older than T seconds. Each message of a stream has an
-- offset (1, 2, 3, ... per topic, contiguous) and the stream has an epoch,
-- a random name chosen when the stream is created. A new process starts
-- every stream afresh, and a stream dropped whole (all its messages expired,
-- or its pattern withdrawn) gets a new epoch when it is created again, so
-- an (epoch, offset) pair names one message of one stream and an offset
-- from an old stream is never taken for one of the new.
--
-- pubsub.lua asks record() for the position of every publish it makes and
-- sends it with the message (data.epoch, data.offset); subscribers get it
-- as `pos`. rn.recover asks the publisher for what followed an offset with
-- a call to the internal server "$history" (method "recover"), which is
-- served by serve.lua like an exposed server (access rules apply) but is
-- not advertised: it is in serve.internal, not in state.exposed.
--
-- Bounds, all in state.config: max_history_size messages per topic,
-- max_history_bytes over all streams (the oldest messages of the node go
-- first, whatever their topic), max_history_topics streams,
-- max_history_patterns patterns, and max_recover / max_recover_bytes per
-- recover answer. Expiry needs no timer per message: a stream is trimmed
-- when it is published to or read, and every stream with a ttl is swept
-- at most once per second, on the next publish, recover or status.

local json = require("relaynet.json")
local sched = require("relaynet.sched")
local core = require("relaynet.core")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local P = require("relaynet.mesh.pubsub_match")
local C = require("relaynet.mesh.calls")
local SV = require("relaynet.mesh.serve")

local cfg = S.config
local now, fail = W.now, W.fail

local HI = {}

-- The bounds (documented in README.md, "History and recovery"). They live
-- in state.config with the other mesh tunables; they are set here so that
-- this file holds everything about history.
local DEFAULTS = {
  max_history_size = 1000,       -- messages one topic keeps at most (also the size when none is given)
  max_history_bytes = 16777216,  -- bytes of messages all streams keep together; past it the oldest go
  max_history_topics = 1024,     -- topics with a stream; a new topic past it is published without history
  max_history_patterns = 256,    -- rn.history patterns; past it: ELIMIT
  max_recover = 1000,            -- messages one recover answer carries at most (list.more says more follow)
  max_recover_bytes = 262144,    -- bytes of messages (JSON-encoded) one recover answer carries (one always fits)
}
for k, v in pairs(DEFAULTS) do
  if cfg[k] == nil then cfg[k] = v end
end

-- Counters, shown in mesh_status().stats with the prefix "history_" (the
-- status copies them; they persist across runs, as the streams do).
local stats = {
  stored = 0,          -- messages recorded
  trimmed = 0,         -- dropped for the size of their topic
  expired = 0,         -- dropped for their age (ttl)
  evicted = 0,         -- dropped for max_history_bytes
  topics_refused = 0,  -- publishes without history because max_history_topics streams exist
  recovers = 0,        -- recover requests answered here (served)
  recovered = 0,       -- messages in those answers
  resyncs = 0,         -- recover requests answered ERESYNC here
  held_dropped = 0,    -- live frames dropped while a WebSocket subscription recovered
  topics = 0,          -- streams now
  messages = 0,        -- messages kept now
  bytes = 0,           -- bytes of messages kept now
}
HI.stats = stats

-- patterns: the list of { pattern, size, ttl } in the order given.
local patterns = {}

-- streams[topic] = { topic, epoch, last (offset of the newest message ever
-- recorded), size, ttl, q (entries q[head..tail], oldest first; the
-- indices are kept because q has a hole at its start), head, tail,
-- touched (time of the last record) }. An entry is { offset, t, text, js, bytes, stream,
-- dead }; its message is `text` (a string message) or `js` (JSON text).
local streams, n_streams = {}, 0

-- All live entries in the order they were recorded, for max_history_bytes:
-- gq[ghead..gtail]; an entry dropped from its stream first is marked dead
-- and skipped here; the list is rebuilt when mostly dead.
local gq, ghead, gtail, gdead = {}, 1, 0, 0

local last_sweep = -math.huge

-- The first offset a stream still holds (last + 1 when it holds none).
local function first_offset(s)
  local e = s.q[s.head]
  return e and e.offset or s.last + 1
end

-- Drops the oldest entry of stream `s`, counted under `why`.
local function drop_front(s, why)
  local q, h = s.q, s.head
  local e = q[h]
  q[h] = nil
  s.head = h + 1
  e.dead = true
  gdead = gdead + 1
  stats[why] = stats[why] + 1
  stats.messages = stats.messages - 1
  stats.bytes = stats.bytes - e.bytes
  if s.head > 64 and s.head > s.tail // 2 then
    local nq, j = {}, 0
    for i = s.head, s.tail do j = j + 1; nq[j] = q[i] end
    s.q, s.head, s.tail = nq, 1, j
  end
end

local function drop_stream(s, why)
  while s.q[s.head] do drop_front(s, why) end
  streams[s.topic] = nil
  n_streams = n_streams - 1
  stats.topics = n_streams
end

-- Trims stream `s` at time `t`: to its size, and of entries older than its
-- ttl. A stream with a ttl that holds nothing and was not recorded to for
-- a ttl is dropped whole (its next record starts a new epoch). Returns
-- false when it was dropped.
local function trim(s, t)
  local size = math.min(s.size or cfg.max_history_size, cfg.max_history_size)
  while s.last - first_offset(s) + 1 > size do drop_front(s, "trimmed") end
  local ttl = s.ttl
  if ttl then
    local q = s.q
    local e = q[s.head]
    while e and t - e.t >= ttl do
      drop_front(s, "expired")
      e = q[s.head]
    end
    if not e and t - s.touched >= ttl then
      drop_stream(s, "expired")
      return false
    end
  end
  return true
end

-- Trims every stream with a ttl, at most once a second.
local function sweep(t)
  if t - last_sweep < 1 then return end
  last_sweep = t
  local list = {}
  for _, s in pairs(streams) do
    if s.ttl then list[#list + 1] = s end
  end
  for i = 1, #list do trim(list[i], t) end
end

-- Evicts the node's oldest entries while all history holds more than
-- max_history_bytes.
local function enforce_bytes()
  local max = cfg.max_history_bytes
  while stats.bytes > max and ghead <= gtail do
    local e = gq[ghead]
    gq[ghead] = nil
    ghead = ghead + 1
    if e.dead then
      gdead = gdead - 1
    else
      local s = e.stream
      -- The oldest live entry of the node is the oldest of its stream.
      drop_front(s, "evicted")
      gdead = gdead - 1
    end
  end
  local live = gtail - ghead + 1 - gdead
  if gdead > 64 and gdead > live then
    local nq, j = {}, 0
    for i = ghead, gtail do
      local e = gq[i]
      if not e.dead then j = j + 1; nq[j] = e end
    end
    gq, ghead, gtail, gdead = nq, 1, j, 0
  end
end

-- The size and ttl a topic gets from the patterns that match it (the
-- largest of each; nil ttl: no age limit), or nil when none matches.
local function settings(t)
  local size, ttl, any = nil, nil, false
  for i = 1, #patterns do
    local p = patterns[i]
    if P.match_tokens(p.pattern, t) then
      if any then
        size = (size and p.size) and math.max(size, p.size) or nil
        ttl = (ttl and p.ttl) and math.max(ttl, p.ttl) or nil
      else
        size, ttl, any = p.size, p.ttl, true
      end
    end
  end
  return any, size, ttl
end

-- A random epoch: 12 base64 characters (72 bits) from the CSPRNG.
local function new_epoch()
  return (core.b64encode(core.random(9)):gsub("[+/]", { ["+"] = "-", ["/"] = "_" }))
end

--- The position of a message published from this node to `topic` (token
--- list `t`), recorded in the topic's stream: epoch, offset | nil when the
--- topic has no history (no pattern matches it, or max_history_topics
--- streams exist already: stats.history_topics_refused). `text` or `js` is
--- the message as it travels (a string, or the JSON text of another value).
function HI.record(topic, t, text, js)
  if #patterns == 0 then return nil end
  local tnow = now()
  sweep(tnow)
  local s = streams[topic]
  if s and not trim(s, tnow) then s = nil end
  if not s then
    local any, size, ttl = settings(t)
    if not any then return nil end
    if n_streams >= cfg.max_history_topics then
      stats.topics_refused = stats.topics_refused + 1
      return nil
    end
    s = { topic = topic, epoch = new_epoch(), last = 0, size = size, ttl = ttl, q = {}, head = 1, tail = 0,
      touched = tnow }
    streams[topic] = s
    n_streams = n_streams + 1
    stats.topics = n_streams
  end
  local offset = s.last + 1
  s.last = offset
  s.touched = tnow
  local e = { offset = offset, t = tnow, text = text, js = js, bytes = #(text or js) + #topic, stream = s }
  s.tail = s.tail + 1
  s.q[s.tail] = e
  gtail = gtail + 1
  gq[gtail] = e
  stats.stored = stats.stored + 1
  stats.messages = stats.messages + 1
  stats.bytes = stats.bytes + e.bytes
  trim(s, tnow)
  enforce_bytes()
  return s.epoch, offset
end

--- rn.history(pattern, {size = N, ttl = T}): topics matching `pattern`
--- published from this node keep their last N messages (at most
--- max_history_size; the default), none older than T seconds (no age
--- limit without a ttl). Given again for the same pattern, it replaces the
--- settings; `false` withdraws the pattern. Existing streams take the new
--- settings at once; a stream no pattern matches any more is dropped.
--- Returns true | nil, msg, "ELIMIT" (size above max_history_size, or
--- max_history_patterns patterns). Raises (EINVAL) on a malformed pattern
--- or options.
function HI.configure(pattern, opts, level)
  level = (level or 1) + 1
  local ok, why = P.check_pattern(pattern)
  if not ok then error("relaynet.history: EINVAL: " .. why, level) end
  local size, ttl
  if opts ~= false then
    if type(opts) ~= "table" then error("relaynet.history: EINVAL: expected an options table or false", level) end
    size, ttl = opts.size, opts.ttl
    if size ~= nil and (math.type(size) ~= "integer" or size < 1) then
      error("relaynet.history: EINVAL: size must be a positive integer", level)
    end
    if ttl ~= nil and (type(ttl) ~= "number" or ttl ~= ttl or ttl <= 0 or ttl == math.huge) then
      error("relaynet.history: EINVAL: ttl must be a positive number of seconds", level)
    end
    if size == nil and ttl == nil then
      error("relaynet.history: EINVAL: give a size, a ttl or both", level)
    end
    if size and size > cfg.max_history_size then
      return fail("ELIMIT", "a history of %d messages per topic is more than mesh_config.max_history_size (%d)",
        size, cfg.max_history_size)
    end
  end
  local idx
  for i = 1, #patterns do
    if patterns[i].pattern == pattern then idx = i end
  end
  if opts == false then
    if not idx then return true end
    table.remove(patterns, idx)
  elseif idx then
    patterns[idx].size, patterns[idx].ttl = size, ttl
  else
    if #patterns >= cfg.max_history_patterns then
      return fail("ELIMIT", "node %s keeps history for %d patterns already (mesh_config.max_history_patterns)",
        I.node_id(), #patterns)
    end
    patterns[#patterns + 1] = { pattern = pattern, size = size, ttl = ttl }
  end
  -- Existing streams take the settings of the patterns that match them now.
  local list = {}
  for _, s in pairs(streams) do list[#list + 1] = s end
  local tnow = now()
  for _, s in ipairs(list) do
    local any, ssize, sttl = settings(P.check_topic(s.topic))
    if any then
      s.size, s.ttl = ssize, sttl
      trim(s, tnow)
    else
      drop_stream(s, "trimmed")
    end
  end
  enforce_bytes()
  return true
end

--- The patterns given to rn.history: a list of { pattern, size, ttl }.
function HI.patterns()
  local out = {}
  for i, p in ipairs(patterns) do out[i] = { pattern = p.pattern, size = p.size, ttl = p.ttl } end
  return out
end

-- the publisher's side of recover ---------------------------------------------------

local function answer_error(code, fmt, ...)
  if code == "ERESYNC" then stats.resyncs = stats.resyncs + 1 end
  return { code = code, message = code .. ": " .. string.format(fmt, ...) }
end

--- Answers a recover request for `topic` (from this node's streams): the
--- table { epoch, messages = [{offset, text | json}...], more } with the
--- messages after `offset` (all kept ones when `epoch` is nil), or
--- { code, message } with code ERESYNC (another epoch, an offset too old or
--- ahead of the stream), ENOHISTORY (no pattern covers the topic) or
--- EINVAL (a malformed request).
function HI.serve_recover(topic, epoch, offset)
  if epoch == json.null then epoch = nil end
  if offset == json.null then offset = nil end
  local t = type(topic) == "string" and P.check_topic(topic)
  if not t or (epoch ~= nil and not W.is_name(epoch, 64)) or (offset ~= nil and
      (math.type(offset) ~= "integer" or offset < 0)) then
    return { code = "EINVAL", message = "EINVAL: malformed recover request" }
  end
  stats.recovers = stats.recovers + 1
  local me = I.node_id()
  local tnow = now()
  sweep(tnow)
  local s = streams[topic]
  if s and not trim(s, tnow) then s = nil end
  if not s then
    if not settings(t) then
      return answer_error("ENOHISTORY", "node %s keeps no history for topic %s", me, topic)
    end
    if epoch ~= nil then
      return answer_error("ERESYNC", "epoch %s of topic %s is gone: node %s holds no messages of it (resync)",
        epoch, topic, me)
    end
    return { messages = json.array() }
  end
  local first = first_offset(s)
  if epoch == nil then
    offset = first - 1
  elseif epoch ~= s.epoch then
    return answer_error("ERESYNC", "epoch %s of topic %s is gone: node %s is at epoch %s (resync)",
      epoch, topic, me, s.epoch)
  elseif (offset or 0) > s.last then
    return answer_error("ERESYNC", "offset %d of topic %s is ahead of node %s's last offset %d (resync)",
      offset, topic, me, s.last)
  elseif (offset or 0) + 1 < first then
    return answer_error("ERESYNC", "offset %d of topic %s is too old: node %s keeps offsets %d to %d (resync)",
      offset or 0, topic, me, first, s.last)
  end
  offset = offset or 0
  local list = json.array()
  local q, i = s.q, s.head + (offset + 1 - first)
  local max, max_bytes, bytes = cfg.max_recover, cfg.max_recover_bytes, 0
  -- The answer's size is counted as it travels: each message JSON-encoded
  -- as a string (escapes can make it up to six times its own size), so
  -- that an answer stays well inside a link's max_message.
  local e = q[i]
  while e and #list < max do
    local size = #json.encode(e.text or e.js)
    if #list > 0 and bytes + size > max_bytes then break end
    bytes = bytes + size
    list[#list + 1] = { offset = e.offset, text = e.text, json = e.js }
    i = i + 1
    e = q[i]
  end
  stats.recovered = stats.recovered + #list
  return { epoch = s.epoch, messages = list, more = e ~= nil or nil }
end

-- The internal server the recovering node calls (serve.lua runs it).
SV.internal["$history"] = {
  recover = function(topic, epoch, offset) return HI.serve_recover(topic, epoch, offset) end,
}

-- the recovering side ---------------------------------------------------------------

-- Checks the answer `r` of serve_recover (from the wire) to a request for
-- what follows (`epoch`, `offset`): r | nil, msg, code. The answer must be
-- what serve_recover gives: the asked epoch (any, when none was asked),
-- offsets that go on one by one from the asked one, and JSON texts that
-- are exactly one JSON value (each decoded into m.value), so that a
-- publisher that answers otherwise can neither keep a recovery going
-- round in circles nor add members of its own to the frames built from it.
local function checked(r, topic, epoch, offset)
  local bad = "a malformed recover answer for topic %s"
  if type(r) ~= "table" then return fail("EINVAL", bad, topic) end
  if r.code ~= nil then
    local code = type(r.code) == "string" and r.code:match("^E%u+$") or "EINVAL"
    local msg = type(r.message) == "string" and r.message or (code .. ": recover failed")
    return nil, msg, code
  end
  local msgs = r.messages
  if type(msgs) ~= "table" or (r.epoch ~= nil and not W.is_name(r.epoch, 64)) then
    return fail("EINVAL", bad, topic)
  end
  if #msgs > 0 and (r.epoch == nil or (epoch ~= nil and r.epoch ~= epoch)) then
    return fail("EINVAL", bad .. ": messages of another epoch", topic)
  end
  local prev = epoch ~= nil and offset or nil
  for i = 1, #msgs do
    local m = msgs[i]
    if type(m) ~= "table" or math.type(m.offset) ~= "integer"
        or (type(m.text) == "string") == (type(m.json) == "string") then
      return fail("EINVAL", bad, topic)
    end
    if (prev and m.offset ~= prev + 1) or m.offset < 1 then
      return fail("EINVAL", bad .. ": offset %d where %s was due", topic, m.offset,
        prev and tostring(prev + 1) or "one of at least 1")
    end
    prev = m.offset
    if m.json then
      local v, err = json.decode(m.json)
      if v == nil and err then return fail("EINVAL", bad .. ": a message that is not JSON", topic) end
      m.value = v
    end
  end
  return r
end

-- Asks `node` for the messages of `topic` after (epoch, offset): its
-- checked answer { epoch, messages = [{offset, text | json}], more } | nil,
-- msg, code. Suspends unless `node` is this node.
local function fetch(topic, node, epoch, offset, timeout)
  if node == I.node_id() then return checked(HI.serve_recover(topic, epoch, offset), topic, epoch, offset) end
  local r, err, code = C.call(nil, node, "$history", "recover",
    { topic, epoch == nil and json.null or epoch, offset == nil and json.null or offset, n = 3 }, timeout)
  if err then
    if code == "ENOSERVER" or code == "ENOMETHOD" then
      return fail("ENOHISTORY", "node %s keeps no history (it has no $history server)", node)
    end
    return nil, err, code
  end
  return checked(r, topic, epoch, offset)
end

-- Raises (at `level`) unless the arguments name a position to recover from.
local function check_position(what, topic, node, epoch, offset, level)
  local ok, why = P.check_topic(topic)
  if not ok then error(what .. ": EINVAL: " .. tostring(why), level) end
  if not I.valid_id(node) then error(what .. ": from_node must be a node id string", level) end
  if epoch ~= nil and not W.is_name(epoch, 64) then
    error(what .. ": epoch must be a string (as in pos.epoch) or nil", level)
  end
  if offset ~= nil and (math.type(offset) ~= "integer" or offset < 0) then
    error(what .. ": offset must be a non-negative integer", level)
  end
  if epoch ~= nil and offset == nil then error(what .. ": an epoch needs an offset", level) end
end

--- rn.recover(topic, from_node, epoch, offset [, timeout]): the messages
--- that node `from_node` published to `topic` after `offset` of `epoch`,
--- in order: a list of { message, offset, topic }, with list.epoch (the
--- stream's epoch) and list.more (true when the answer was cut at
--- max_recover or max_recover_bytes: recover again from the last offset).
--- With `epoch` nil every message kept is returned. Operational failures:
--- nil, msg, code with ERESYNC (another epoch, an offset older than what is
--- kept or ahead of it), ENOHISTORY (that node keeps no history for the
--- topic), or remote_call's ENOROUTE, ETIMEDOUT, ELINKLOST, EBUSY, EACCES.
--- Raises on misuse. Suspends unless from_node is this node.
function HI.recover(topic, node, epoch, offset, timeout, level)
  level = (level or 1) + 1
  check_position("relaynet.recover", topic, node, epoch, offset, level + 1)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0) then
    error("relaynet.recover: timeout must be a positive number of seconds", level)
  end
  local r, err, code = fetch(topic, node, epoch, offset, timeout)
  if not r then return nil, err, code end
  local msgs, list = r.messages, {}
  for i = 1, #msgs do
    local m = msgs[i]
    local v = m.text
    if v == nil then
      v = m.value
      if v == json.null then v = nil end
    end
    list[i] = { message = v, offset = m.offset, topic = topic }
  end
  list.epoch = r.epoch
  list.more = r.more == true or nil
  return list
end

--- For server:subscribe(conn_id, topic, {recover = {node, epoch, offset}}):
--- returns fn, start. fn(frame, topic, from, epoch, offset) is the
--- subscription's frame function: it hands frames to send(frame), but
--- holds them (at most max_recover; more are dropped and counted in
--- stats.history_held_dropped) until recovery has ended. start() runs the
--- recovery in a coroutine of its own: the messages `pos.node` published to
--- `topic` after pos.offset of pos.epoch go to send() first, as frames like
--- the live ones (with "epoch" and "offset"), answer after answer while
--- `more` says so and send() does not return false (false: the connection
--- is gone, and so is the recovery); a failure goes as one frame
--- {"topic":T,"from":NODE,"error":"CODE: ...","code":CODE}. Then the held
--- frames follow, less those from pos.node's stream that were recovered
--- already. Raises
--- (EINVAL, at `level`) when `pos` does not name a position or `topic` has
--- wildcards.
function HI.recover_frames(topic, pos, send, level)
  level = (level or 1) + 1
  local what = "relaynet.subscribe: recover"
  if type(pos) ~= "table" then error(what .. ": EINVAL: expected {node = , epoch = , offset = }", level) end
  check_position(what, topic, pos.node, pos.epoch, pos.offset, level + 1)
  local node, epoch, last = pos.node, pos.epoch, pos.offset
  local held, n_held, recovering = {}, 0, true
  local function fn(frame, _, from, e, o)
    if not recovering then return send(frame) end
    if n_held >= cfg.max_recover then
      stats.held_dropped = stats.held_dropped + 1
      return
    end
    n_held = n_held + 1
    held[n_held] = { frame, from, e, o }
  end
  local function run()
    local head = '{"topic":' .. json.encode(topic) .. ',"from":' .. json.encode(node) .. ','
    while true do
      local r, err, code = fetch(topic, node, epoch, last)
      if not r then
        send(head .. '"error":' .. json.encode(err) .. ',"code":' .. json.encode(code) .. '}')
        break
      end
      local msgs = r.messages
      epoch = r.epoch or epoch
      local gone = false
      for i = 1, #msgs do
        local m = msgs[i]
        last = m.offset
        gone = send(head .. '"message":' .. (m.json or json.encode(m.text)) .. ',"epoch":' .. json.encode(epoch)
          .. ',"offset":' .. m.offset .. '}') == false
      end
      -- The connection is gone: nobody is left to recover for.
      if gone or not r.more or #msgs == 0 then break end
    end
    recovering = false
    for i = 1, n_held do
      local h = held[i]
      -- The client has everything of that epoch up to `last` now.
      if not (h[2] == node and h[3] ~= nil and h[3] == epoch and h[4] <= (last or 0)) then send(h[1]) end
    end
    held = nil
  end
  local function start() sched.go(run) end
  return fn, start
end

--- Drops every stream and pattern and zeroes the counters (for unit specs).
function HI.clear()
  patterns = {}
  for _, s in pairs(streams) do drop_stream(s, "trimmed") end
  gq, ghead, gtail, gdead = {}, 1, 0, 0
  last_sweep = -math.huge
  for k in pairs(stats) do stats[k] = 0 end
end

--- Sweeps expired messages (called when the status is built).
function HI.status()
  sweep(now())
end

return HI
