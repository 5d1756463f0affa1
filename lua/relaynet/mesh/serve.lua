-- relaynet.mesh.serve: the served side of calls. Runs the methods of the
-- servers exposed on this node (for calls from other nodes and for
-- remote_call to this node itself), answers calls from other nodes, and
-- remembers their ids to drop duplicates.
--
-- A method runs in a coroutine of its own (sched.go). Nothing here suspends:
-- a method that suspends is answered from its own coroutine when it ends,
-- or at its call's deadline by a timer.

local sched = require("relaynet.sched")
local json = require("relaynet.json")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local A = require("relaynet.mesh.auth")

local cfg = S.config
local now, fail, reply, call_key = W.now, W.fail, W.reply, I.call_key

local V = {}

--- Internal servers (name -> methods), found by calls like exposed ones
--- (access rules apply) but never advertised: mesh/history.lua's
--- "$history".
V.internal = {}

-- running methods ------------------------------------------------------------------

--- The ETIMEDOUT a call gets when server.method on `node` did not answer.
function V.no_answer(server, method, node, timeout)
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

--- The function behind server.method on this node: fn | nil, msg, code.
function V.find_method(server, method)
  local methods = S.exposed[server] or V.internal[server]
  if not methods then
    return fail("ENOSERVER", "no server '%s' on node %s", server, I.node_id())
  end
  local fn = methods[method]
  if type(fn) ~= "function" or method:sub(1, 1) == "_" then
    return fail("ENOMETHOD", "server '%s' on node %s has no method '%s'", server, I.node_id(), method)
  end
  return fn
end

local function call_unpacked(fn, args, n)
  return fn(table.unpack(args, 1, n))
end

--- Runs job.fn(table.unpack(job.args)) (in a coroutine of its own, started
--- by sched.go) and stores xpcall's packed results in job.res; then calls
--- job.on_done() if someone waits for it.
function V.run_job(job)
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

--- The outcome of a finished job: result | nil, msg, "EREMOTE".
function V.job_result(job, server, method)
  local done = job.res
  if not done[1] then
    local msg = tostring(done[2])
    sched.report("relaynet.mesh: " .. server .. "." .. method .. " raised: " .. msg)
    msg = msg:match("^([^\n]*)") or msg
    return fail("EREMOTE", "%s.%s on node %s raised: %s", server, method, I.node_id(), msg)
  end
  return pack_results(done, 2)
end

-- serving calls from other nodes, with dedup ------------------------------------------
--
-- Served call ids, for dropping duplicates: call_key(caller, call id) ->
-- expiry time (the call's own timeout plus a second; a copy arriving later
-- finds its caller gone). Two generations of tables: new ids go into
-- `dedup_new`; when it holds half of cfg.max_dedup ids, or is older than
-- cfg.dedup_window, it becomes `dedup_old` and the previous old generation is
-- dropped whole. So memory stays under max_dedup ids at any call rate, and
-- nothing is ever deleted key by key (a Lua table that is full of deleted
-- keys rehashes on every insert).

local function rotate_dedup(t, evicting)
  if evicting then
    for _, expiry in pairs(S.dedup_old) do
      if expiry >= t then S.stats.dedup_evicted = S.stats.dedup_evicted + 1 end
    end
  end
  S.dedup_old, S.dedup_old_n = S.dedup_new, S.dedup_new_n
  S.dedup_new, S.dedup_new_n, S.dedup_born = {}, 0, t
end

--- Starts a new dedup generation when the current one is dedup_window old
--- (called by the health loop).
function V.age_dedup(t)
  if t - S.dedup_born >= cfg.dedup_window then rotate_dedup(t, false) end
end

local function seen_call(key, t)
  local expiry = S.dedup_new[key] or S.dedup_old[key]
  return expiry ~= nil and expiry >= t
end

local function remember_call(key, keep, t)
  if S.dedup_new_n >= cfg.max_dedup // 2 then rotate_dedup(t, true) end
  S.dedup_new[key] = t + keep
  S.dedup_new_n = S.dedup_new_n + 1
end

--- A server_call for this node, arrived on `link`: dropped when its id was
--- served already, else answered (at once, or when its method ends, or with
--- ETIMEDOUT at its deadline) or refused (EACCES when the access rules do
--- not let its caller call that method, checked before anything says
--- whether the server exists; ETIMEDOUT, EBUSY, ENOSERVER, ENOMETHOD).
function V.serve_call(link, env)
  local stats = S.stats
  local data = env.data
  local key = call_key(env.from, env.id)
  local t = now()
  if seen_call(key, t) then
    stats.duplicate_calls = stats.duplicate_calls + 1
    return
  end
  local remaining = (tonumber(data.timeout_ms) or 0) / 1000
  remember_call(key, math.min(math.max(remaining, 0) + 1, cfg.dedup_window), t)
  if not A.allowed(env.from, data.server, data.method) then
    stats.calls_denied = stats.calls_denied + 1
    return reply(link, env, nil, string.format("EACCES: node %s may not call %s.%s on node %s", env.from,
      data.server, data.method, I.node_id()), "EACCES")
  end
  if remaining <= 0 then
    return reply(link, env, nil, "ETIMEDOUT: the call's deadline passed before it reached " .. I.node_id(),
      "ETIMEDOUT")
  end
  if S.n_served >= cfg.max_served then
    stats.served_refused = stats.served_refused + 1
    return reply(link, env, nil, string.format("EBUSY: node %s is already serving %d calls (mesh max_served)",
      I.node_id(), S.n_served), "EBUSY")
  end
  remaining = math.min(remaining, cfg.max_timeout)
  stats.calls_served = stats.calls_served + 1
  local server, method = data.server, data.method
  local fn, ferr, fcode = V.find_method(server, method)
  if not fn then return reply(link, env, nil, ferr, fcode) end
  -- Run the method in a coroutine of its own. Most methods return without
  -- suspending: then the reply goes out at once, with no coroutine or timer
  -- left waiting for it. One that suspends is answered when it finishes, or
  -- with ETIMEDOUT at the call's deadline, whichever comes first; until then
  -- it counts against cfg.max_served.
  local job = { fn = fn, args = data.args }
  sched.go(V.run_job, job)
  if job.res then
    return reply(link, env, V.job_result(job, server, method))
  end
  S.n_served = S.n_served + 1
  local timer
  job.on_done = function()
    if job.replied then return end
    job.replied = true
    S.n_served = S.n_served - 1
    timer.cancel()
    reply(link, env, V.job_result(job, server, method))
  end
  timer = sched.after(remaining, function()
    if job.replied then return end
    job.replied = true
    S.n_served = S.n_served - 1
    reply(link, env, V.no_answer(server, method, I.node_id(), remaining))
  end)
end

return V
