-- relaynet.mesh.calls: the calling and relaying side of server calls
-- (remote_call, relaying, responses, calls lost with a link) and
-- route_message payloads. The served side is mesh/serve.lua.
--
-- One road for traffic not addressed to this node: on_call and
-- on_route_message check their envelope, then relay() drops loops,
-- delivers what is for this node (serve.serve_call, deliver_message), and
-- hands the rest to forward(). Every server_response this node originates
-- (answers, refusals, and ELINKLOST for calls relayed over a link that went
-- down) is built by wire.respond. Nothing here suspends except the callers
-- of remote_call.

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local R = require("relaynet.mesh.routes")
local SV = require("relaynet.mesh.serve")
local metrics = require("relaynet.metrics")
local core = require("relaynet.core")
local hrtime = core.hrtime

local cfg = S.config
local is_name, now, fail = W.is_name, W.now, W.fail
local encode_envelope, send_text = W.encode_envelope, W.send_text
local respond, reply, call_key = W.respond, W.reply, I.call_key

local C = {}

--- The error codes a call can fail with; a remote error carrying any other
--- code is reported as EREMOTE.
C.ERROR_CODES = {
  ETIMEDOUT = true, ENOROUTE = true, ENOSERVER = true, ENOMETHOD = true, EREMOTE = true,
  ELINKLOST = true, ETTL = true, EINVAL = true, ECANCELED = true, EBUSY = true, EACCES = true,
}
local ERROR_CODES = C.ERROR_CODES

-- forwards -------------------------------------------------------------------------

local mesh_scan, mesh_splice_call = core.mesh_scan, core.mesh_splice_call
local JSON_DEPTH = json.MAX_DEPTH
local scan = {} -- core.mesh_scan's result, reused: read before anything else runs

-- Forgets a relayed call (answered, expired, refused by a dead link).
local function drop_forward(key, f)
  if S.forwards[key] ~= f then return end
  S.forwards[key] = nil
  S.n_forwards = S.n_forwards - 1
  local l = f.link
  l.n_forwards = l.n_forwards - 1
end

--- Forgets forwards whose call is past its deadline plus cfg.forward_slack
--- (its caller has given up; a late response is dropped as unknown). Called
--- about once a second by the health loop.
function C.expire_forwards(t)
  local slack = cfg.forward_slack
  for key, f in pairs(S.forwards) do
    if f.deadline + slack < t then
      drop_forward(key, f)
      S.stats.forwards_expired = S.stats.forwards_expired + 1
    end
  end
end

--- Passes `env` (a server_call when `call`, else a route_message; not for
--- this node, arrived on `link`) one hop on toward env.to. A call that cannot
--- be passed on is answered with the reason (ETTL, ENOROUTE, ETIMEDOUT,
--- EBUSY, EINVAL, ELINKLOST) and a relayed call is remembered in `forwards`
--- until its response; a route_message that cannot be passed on is dropped,
--- counted only.
--- With `text` (the relay fast path, C.relay_text), `env` is the scan of
--- that text (core.mesh_scan: the same routing fields, data.timeout_ms as
--- env.timeout_ms, and the spans to rewrite) and the call goes on as that
--- text with its ttl, timeout_ms, timestamp and route spliced in: the rest
--- of the envelope (the arguments) is neither decoded nor encoded.
local function forward(link, env, call, text)
  local stats, me = S.stats, I.node_id()
  local ttl = math.min(math.tointeger(env.ttl), cfg.max_ttl) - 1
  if ttl <= 0 then
    stats.ttl_expired = stats.ttl_expired + 1
    if call then reply(link, env, nil, "ETTL: hop limit reached at node " .. me, "ETTL") end
    return
  end
  local key
  if call then
    key = call_key(env.from, env.id)
    if S.forwards[key] then
      stats.duplicate_calls = stats.duplicate_calls + 1
      return
    end
  end
  local out, b = R.next_link(env.to)
  if not out or b.next == link.peer then
    stats.no_route = stats.no_route + 1
    if call then
      reply(link, env, nil, "ENOROUTE: no route to node " .. env.to .. " from " .. me, "ENOROUTE")
    end
    return
  end
  local remaining, per_link, tmo
  if call then
    remaining = math.min((text and env.timeout_ms or env.data.timeout_ms) / 1000, cfg.max_timeout)
    if remaining ~= remaining or remaining <= 0 then
      return reply(link, env, nil, "ETIMEDOUT: the call's deadline passed at " .. me, "ETIMEDOUT")
    end
    per_link = link.n_forwards or 0
    if S.n_forwards >= cfg.max_forwards or per_link >= cfg.max_forwards_per_link then
      stats.forwards_refused = stats.forwards_refused + 1
      -- The link's own share is named first: when both are reached, it is
      -- the more specific cause (this link already holds its share).
      local what = per_link >= cfg.max_forwards_per_link and "mesh max_forwards_per_link" or "mesh max_forwards"
      return reply(link, env, nil, string.format("EBUSY: node %s relays too many calls already (%s)",
        me, what), "EBUSY")
    end
    tmo = math.floor(remaining * 1000)
    if not text then env.data.timeout_ms = tmo end
  end
  local eerr
  if text then
    text = mesh_splice_call(text, env, ttl, me, tmo, math.floor(now() * 1000))
  else
    env.ttl = ttl
    env.route[#env.route + 1] = me
    env.timestamp = nil
    text, eerr = encode_envelope(env)
  end
  if not text then
    -- Something decoded that cannot be encoded again: the sender's fault. A
    -- call is answered once; neither is logged per message, except for a
    -- route_message (reported as any unencodable message this node sends).
    if call then
      stats.unencodable = stats.unencodable + 1
      stats.bad_messages = stats.bad_messages + 1
      return reply(link, env, nil, "EINVAL: node " .. me .. " cannot relay the call: " .. tostring(eerr),
        "EINVAL")
    end
    stats.forwarded = stats.forwarded + 1
    if out.state ~= "closed" then
      sched.report("relaynet.mesh: cannot encode a " .. tostring(env.type) .. " message: " .. tostring(eerr))
    end
    return
  end
  if not call then
    stats.forwarded = stats.forwarded + 1
    send_text(out, text)
    return
  end
  local f = { from = link.peer, link = link, to = b.next, deadline = now() + remaining, caller = env.from,
    id = env.id }
  S.forwards[key] = f
  S.n_forwards = S.n_forwards + 1
  link.n_forwards = per_link + 1
  stats.forwarded = stats.forwarded + 1
  if not send_text(out, text) then
    drop_forward(key, f)
    reply(link, env, nil, "ELINKLOST: the link to " .. b.next .. " failed", "ELINKLOST")
  end
end

-- Drops `env` when its route fails W.route_ok (a spoofed call is answered
-- with EINVAL). Delivers it with deliver(link, env) when it is for this
-- node, else forwards it.
local function relay(link, env, call, deliver)
  local ok, why = W.route_ok(link, env)
  if not ok then
    if call and why == "spoofed" then
      reply(link, env, nil, "EINVAL: the route of the call does not start at its sender or does not end at node "
        .. tostring(link.peer), "EINVAL")
    end
    return
  end
  if env.to == I.node_id() then return deliver(link, env) end
  return forward(link, env, call)
end

-- calls this node makes ------------------------------------------------------------

-- A call this node waits for: registered in `calls` (remote ones, under
-- their call id; those count against cfg.max_calls) and in owner.calls when
-- a JSON-RPC connection made it, so that C.cancel_calls can fail it when
-- that connection goes away.
local function add_call(owner, entry, remote)
  if remote then S.n_calls = S.n_calls + 1 end
  entry.remote = remote
  if owner then
    local set = owner.calls
    if not set then set = {}; owner.calls = set end
    set[entry] = true
    entry.owner = owner
  end
end

local function end_call(entry)
  if entry.remote then S.n_calls = S.n_calls - 1 end
  local owner = entry.owner
  if owner then owner.calls[entry] = nil end
end

-- Calls a method of a server exposed on this node, in its own coroutine,
-- waiting at most `timeout` seconds (the caller must be able to wait).
local function call_local(owner, server, method, args, timeout)
  local fn, ferr, fcode = SV.find_method(server, method)
  if not fn then return nil, ferr, fcode end
  local job = { fn = fn, args = args }
  local waiter
  job.on_done = function()
    if waiter then sched.wake(waiter[1], waiter[2], true) end
  end
  sched.go(SV.run_job, job)
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
        return SV.no_answer(server, method, I.node_id(), timeout)
      end
      return nil, err, code
    end
  end
  return SV.job_result(job, server, method)
end

--- True while the mesh is still coming up: within cfg.startup_route_wait
--- seconds of rn.run's start, a configured peer has no link yet or a link
--- is less than a second old (its routes may still be on their way).
function C.starting()
  local t = now()
  if t - S.run_started > cfg.startup_route_wait then return false end
  for _, p in pairs(S.peer_urls) do
    if p.active and not (p.link and p.link.since) then return true end
  end
  for _, link in pairs(S.links) do
    if link.since and t - link.since < 1 then return true end
  end
  return false
end

--- Waits (in 20 ms steps, until `deadline`) while the mesh is starting
--- for a route to `node`: its link and route, or nil. A node's own script
--- may thus call remote_call at top level, before its links are up; calls
--- from JSON-RPC clients never wait here.
function C.route_while_starting(node, deadline)
  while now() < deadline and C.starting() do
    sched.sleep(0.02)
    local link, b = R.next_link(node)
    if link then return link, b end
  end
end

--- Raises (at `level`) when remote_call's arguments have the wrong types.
function C.check_call_args(node, server, method, args, timeout, level)
  if type(node) ~= "string" then error("relaynet.remote_call: node_id must be a string", level) end
  if type(server) ~= "string" then error("relaynet.remote_call: server_name must be a string", level) end
  if type(method) ~= "string" then error("relaynet.remote_call: method must be a string", level) end
  if args ~= nil and type(args) ~= "table" then error("relaynet.remote_call: args must be a table (a list)", level) end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0) then
    error("relaynet.remote_call: timeout must be a positive number of seconds", level)
  end
end

--- Calls server.method on `node` (this node included) on behalf of `owner`
--- (nil, or a table standing for a client connection) and waits for the
--- result: result | nil, msg, code. With cfg.max_calls calls to other nodes
--- already waiting it fails at once with EBUSY; arguments JSON cannot hold
--- fail with EINVAL before anything is sent.
function C.call(owner, node, server, method, args, timeout)
  timeout = math.min(timeout or cfg.default_timeout, cfg.max_timeout)
  args = args or {}
  local me = I.node_id()
  if node == me then
    -- A call on this node holds no more than the method's own coroutine:
    -- it is not counted against max_calls.
    if not sched.can_wait() then sched.wait("rn.remote_call") end -- raises the explanation
    return call_local(owner, server, method, args, timeout)
  end
  if S.n_calls >= cfg.max_calls then
    S.stats.calls_refused = S.stats.calls_refused + 1
    return fail("EBUSY", "node %s already waits for %d remote calls (mesh max_calls)", me, S.n_calls)
  end
  local link, b = R.next_link(node)
  if not link and not owner and sched.can_wait() then
    link, b = C.route_while_starting(node, now() + math.min(timeout, cfg.startup_route_wait))
  end
  if not link then
    S.stats.no_route = S.stats.no_route + 1
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
  local id = I.new_id()
  local text, eerr = encode_envelope({
    type = "server_call", id = id, from = me, to = node, ttl = cfg.max_ttl,
    route = { me },
    data = { server = server, method = method, args = list, timeout_ms = math.floor(timeout * 1000) },
  })
  if not text then
    S.stats.unencodable = S.stats.unencodable + 1
    for i = 1, n do -- name the argument JSON cannot hold
      local ok, aerr = json.encode(list[i])
      if not ok then
        return fail("EINVAL", "argument %d of %s.%s cannot be sent: %s", i, server, method, tostring(aerr))
      end
    end
    return fail("EINVAL", "the arguments of %s.%s cannot be sent: %s", server, method, tostring(eerr))
  end
  if not sched.can_wait() then sched.wait("rn.remote_call") end -- raises the explanation
  if not send_text(link, text) then
    return fail("ELINKLOST", "the link to %s failed while sending the call", b.next)
  end
  local entry = { first_hop = b.next, node = node }
  S.calls[id] = entry
  add_call(owner, entry, true)
  S.stats.calls_sent = S.stats.calls_sent + 1
  local ok, a, c = sched.wait("rn.remote_call", timeout, function(co, wid)
    entry.co, entry.wid = co, wid
  end)
  S.calls[id] = nil
  end_call(entry)
  if ok == true then return a end
  if ok == false then return nil, a, c end
  if c == "ETIMEDOUT" then
    return SV.no_answer(server, method, node, timeout)
  end
  return nil, a, c
end

-- Every call that returns (a result or an error; not one that raised for
-- misuse) is counted by outcome with its latency (relaynet.metrics).
do
  local call = C.call
  local function done(t0, ok, ...)
    if ok == nil then metrics.call_done(select(2, ...), hrtime() - t0) else metrics.call_done(nil, hrtime() - t0) end
    return ok, ...
  end
  function C.call(...)
    return done(hrtime(), call(...))
  end
end

--- Fails every call of `owner` still waiting with ECANCELED (its client
--- connection closed). Returns how many.
function C.cancel_calls(owner)
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
  S.stats.calls_canceled = S.stats.calls_canceled + n
  -- many coroutines just became garbage: let the health loop collect it
  -- and give the memory back while the node is idle
  if n >= 64 then S.gc_due = true end
  return n
end

-- messages on links ---------------------------------------------------------------

local function valid_call(env)
  local d = env.data
  return is_name(env.id) and is_name(env.from, 64) and is_name(env.to, 64)
    and math.type(env.ttl) == "integer" and type(env.route) == "table" and #env.route <= cfg.max_ttl * 2
    and type(d) == "table" and is_name(d.server) and is_name(d.method)
    and type(d.args) == "table" and type(d.timeout_ms) == "number"
end

--- server_call: served here, or relayed one hop on.
function C.on_call(link, env)
  if not valid_call(env) then
    S.stats.bad_messages = S.stats.bad_messages + 1
    if is_name(env.id) and is_name(env.from, 64) then
      reply(link, env, nil, "EINVAL: malformed server_call", "EINVAL")
    end
    return
  end
  return relay(link, env, true, SV.serve_call)
end

-- A server_response for node `to` (answering its call `reply_to`) that this
-- node relayed: passed on toward the caller as the text it came as (never
-- encoded again), when it came from the hop the call was forwarded to.
local function pass_response(link, to, reply_to, text)
  local key = call_key(to, reply_to)
  local f = S.forwards[key]
  if not f or f.to ~= link.peer then
    S.stats.unknown_replies = S.stats.unknown_replies + 1
    return
  end
  drop_forward(key, f)
  send_text(S.links[f.from], text)
end

--- server_response: wakes the caller waiting on this node, or passes the
--- text on unchanged toward the caller when this node relayed the call.
function C.on_response(link, env, text)
  local stats = S.stats
  if not is_name(env.reply_to) or not is_name(env.to, 64) or type(env.data) ~= "table" then
    stats.bad_messages = stats.bad_messages + 1
    return
  end
  if env.to == I.node_id() then
    local c = S.calls[env.reply_to]
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
  return pass_response(link, env.to, env.reply_to, text)
end

--- The relay fast path, for a text that arrived on `link` while it is up.
--- core.mesh_scan (csrc/rn_jsonscan.c) reads the envelope without decoding
--- it and vouches for a server_call or server_response that is not for
--- this node and passes the shape checks of on_call (valid_call) or
--- on_response; such a text is relayed as on_call and on_response would
--- (the same checks, counters and answers, in the same order), the call
--- with its routing fields spliced into its text. Returns true when it
--- handled the text; false when the text takes the decoding road
--- (link.lua's receive): anything for this node, of another type,
--- malformed or unusual (an escape in a routing field, a field twice, a
--- ttl written as 16.0), so that road still counts and answers all of that
--- as it always did. A publish this node only relays (mesh_scan's 3) goes
--- to `relay_publish` (pubsub.relay_text, passed by link.lua: pubsub.lua
--- cannot be required here), whose result is returned.
function C.relay_text(link, text, relay_publish)
  local sc = scan
  local kind = mesh_scan(text, sc, I.node_id(), link.peer, JSON_DEPTH)
  if kind == 1 then
    if sc.nroute > cfg.max_ttl * 2 then return false end
    if sc.has_me then
      S.stats.dropped_loops = S.stats.dropped_loops + 1
      return true
    end
    if not sc.route_ends then
      S.stats.spoofed_messages = S.stats.spoofed_messages + 1
      reply(link, sc, nil, "EINVAL: the route of the call does not start at its sender or does not end at node "
        .. tostring(link.peer), "EINVAL")
      return true
    end
    forward(link, sc, true, text)
    return true
  elseif kind == 2 then
    pass_response(link, sc.to, sc.reply_to, text)
    return true
  elseif kind == 3 then
    return relay_publish(link, sc, text)
  end
  return false
end

-- route_message: a payload delivered to a node's message handler -------------------

--- Sends `payload` to `node`'s message handler: true | nil, msg, "ENOROUTE".
--- To this node it runs the handler in a coroutine of its own.
function C.send_message(node, payload)
  local me = I.node_id()
  if node == me then
    if S.message_handler then sched.go(S.message_handler, node, payload) end
    return true
  end
  local link = R.next_link(node)
  if not link then return fail("ENOROUTE", "no route to node %s", node) end
  W.send(link, { type = "route_message", id = I.new_id(), from = me, to = node, ttl = cfg.max_ttl,
    route = { me }, data = { payload = payload == nil and json.null or payload } })
  return true
end

local function deliver_message(_, env)
  local payload = env.data.payload
  if payload == json.null then payload = nil end
  if S.message_handler then
    sched.go(function()
      local ok, err = xpcall(S.message_handler, debug.traceback, env.from, payload)
      if not ok then sched.report("mesh message handler: " .. tostring(err)) end
    end)
  end
end

--- route_message: delivered to the handler here, or relayed one hop on.
function C.on_route_message(link, env)
  if not is_name(env.id) or not is_name(env.from, 64) or not is_name(env.to, 64)
    or math.type(env.ttl) ~= "integer" or type(env.route) ~= "table" or type(env.data) ~= "table" then
    S.stats.bad_messages = S.stats.bad_messages + 1
    return
  end
  return relay(link, env, false, deliver_message)
end

-- a link went down ------------------------------------------------------------------

--- The link to `peer` went down (its routes are already dropped): calls
--- relayed through it are answered with ELINKLOST toward their callers,
--- forwards owed to it are forgotten, and the calls of this node whose
--- first hop it was fail now, not at their timeout.
function C.link_lost(peer)
  local dropped = 0
  for key, f in pairs(S.forwards) do
    if f.to == peer then
      drop_forward(key, f)
      dropped = dropped + 1
      local back = S.links[f.from]
      if back then
        respond(back, f.id, f.caller, nil, "ELINKLOST: the link from " .. I.node_id() ..
          " to " .. peer .. " went down during the call", "ELINKLOST")
      end
    elseif f.from == peer then
      drop_forward(key, f)
      dropped = dropped + 1
    end
  end
  if dropped >= 256 then S.gc_due = true end
  local lost = {}
  for id, c in pairs(S.calls) do
    if c.first_hop == peer and c.co then
      S.calls[id] = nil
      lost[#lost + 1] = c
    end
  end
  for _, c in ipairs(lost) do
    sched.wake(c.co, c.wid, false,
      string.format("ELINKLOST: the link to %s went down while calling node %s", peer, c.node), "ELINKLOST")
  end
end

return C
