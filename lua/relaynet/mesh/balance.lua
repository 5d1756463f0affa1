-- relaynet.mesh.balance: load-balanced calls, NATS queue-group semantics
-- for the registry (README, "Load-balanced calls"). `call_any(server, ...)`
-- (also `remote_call("*", server, ...)`) runs server.method on one of the
-- nodes that expose `server`, this node included, and fails over to another
-- one only when the call provably did not run, or can no longer answer,
-- on the first.
--
-- Picking: route entries carry each node's server names (state.best[dest]
-- .servers), so the candidates are this node (when it exposes the server)
-- and every destination whose entry names it and whose first link is up.
-- Among them the pick is
--  1. the fewest call_any calls in flight from this node to that node;
--  2. among those, the lowest estimated RTT: 0 for this node, else the RTT
--     of the first link's last ping times the hop count (links measure only
--     their own RTT). Estimates within cfg.balance_rtt_slack of the lowest
--     count as equal, as does a link that has no RTT yet;
--  3. among equals, round robin per server name, in node id order.
--
-- Failing over (the guarantee README states): a failed attempt is tried on
-- another node (never one tried already in this call), within the same
-- overall deadline and at most cfg.max_failovers times, only when
--  * the attempt was refused before its method could run: ENOROUTE, ETTL,
--    EBUSY (from another node; this node's own max_calls is returned at
--    once), ENOSERVER, ENOMETHOD, EACCES. Neither a relay nor a target
--    sends these after a method started;
--  * or it failed with ELINKLOST and the node it was sent to then has no
--    route from this node at all: the route is gone at once or within
--    cfg.failover_route_wait seconds (waiting no later than the deadline).
--    A node still reachable may still be running the call, so then the
--    ELINKLOST is returned. When the route is gone, the first attempt can
--    never answer: its response would have to come back over the links
--    that went down (responses retrace the call's path, and the waiting
--    entries along it were dropped with those links).
-- Never after ETIMEDOUT, EREMOTE (the method raised), ECANCELED, EINVAL, or
-- a result: an answer means the node ran it. Nothing here suspends except
-- the caller, in calls.call and in the waits above.

local sched = require("relaynet.sched")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local C = require("relaynet.mesh.calls")

local cfg = S.config
local now, fail = W.now, W.fail

local B = {}

--- Counters, shown in mesh_status().stats with the prefix "call_any_"
--- (counted since the process started): calls made, nodes picked (one per
--- attempt), failovers (attempts after the first), calls that found no node
--- exposing the server, and ELINKLOST failures not failed over because the
--- node stayed reachable.
B.stats = { calls = 0, picks = 0, failovers = 0, no_server = 0, kept_linklost = 0 }
S.counters["call_any_"] = B.stats

-- Codes with which a node refuses a call before its method runs.
local REFUSED = { ENOROUTE = true, ETTL = true, EBUSY = true, ENOSERVER = true, ENOMETHOD = true, EACCES = true }

-- call_any calls in flight from this node, per node id. Every increment is
-- matched by a decrement when its attempt returns (a call always returns:
-- the loop's end wakes every waiter), so the table holds only nodes with
-- calls in flight.
local inflight = {}

-- Round-robin turn per server name; wiped whole when it holds more than
-- MAX_TURNS names (only names some node exposed get one).
local turns, n_turns = {}, 0
local MAX_TURNS = 1024

--- The nodes that expose `server` now, except those in `exclude`: a list
--- of { node, rtt } (rtt the estimate, nil when unknown).
function B.candidates(server, exclude)
  local list = {}
  local me = I.node_id()
  if S.exposed[server] and not exclude[me] then list[1] = { node = me, rtt = 0 } end
  local links = S.links
  for dest, b in pairs(S.best) do
    local link = links[b.next]
    if link and not exclude[dest] then
      local servers = b.servers
      for i = 1, #servers do
        if servers[i] == server then
          list[#list + 1] = { node = dest, rtt = link.rtt and link.rtt * #b.path }
          break
        end
      end
    end
  end
  return list
end

local function by_node(a, b) return a.node < b.node end

--- Picks one of `list` (non-empty) for a call to `server`, as above.
function B.pick(server, list)
  local fewest = math.huge
  for _, c in ipairs(list) do
    c.n = inflight[c.node] or 0
    if c.n < fewest then fewest = c.n end
  end
  local low = math.huge
  for _, c in ipairs(list) do
    if c.n == fewest and c.rtt and c.rtt < low then low = c.rtt end
  end
  local limit = low + cfg.balance_rtt_slack
  local equal = {}
  for _, c in ipairs(list) do
    if c.n == fewest and (not c.rtt or c.rtt <= limit) then equal[#equal + 1] = c end
  end
  table.sort(equal, by_node)
  local turn = turns[server]
  if not turn then
    if n_turns >= MAX_TURNS then turns, n_turns = {}, 0 end
    n_turns = n_turns + 1
    turn = 0
  end
  turns[server] = turn + 1
  return equal[turn % #equal + 1].node
end

-- After an ELINKLOST from `node`: true when this node has no route to it,
-- now or within failover_route_wait seconds (20 ms steps, never past
-- `deadline`).
local function gone(node, deadline)
  local until_t = math.min(deadline, now() + cfg.failover_route_wait)
  while S.best[node] do
    local left = until_t - now()
    if left <= 0 then return false end
    sched.sleep(math.min(0.02, left))
  end
  return true
end

local function attempt(owner, node, server, method, args, timeout)
  inflight[node] = (inflight[node] or 0) + 1
  local ok, res, msg, code = pcall(C.call, owner, node, server, method, args, timeout)
  local left = inflight[node] - 1
  inflight[node] = left > 0 and left or nil
  if not ok then error(res, 0) end
  return res, msg, code
end

--- Checks call_any's arguments; raises at `level` (misuse).
function B.check_args(server, method, args, timeout, level)
  if type(server) ~= "string" then error("relaynet.call_any: server_name must be a string", level) end
  if type(method) ~= "string" then error("relaynet.call_any: method must be a string", level) end
  if args ~= nil and type(args) ~= "table" then error("relaynet.call_any: args must be a table (a list)", level) end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0) then
    error("relaynet.call_any: timeout must be a positive number of seconds", level)
  end
end

--- call_any on behalf of `owner` (nil, or a table standing for a client
--- connection, as in calls.call): result | nil, msg, code. ENOSERVER when no
--- node exposes `server`; after failovers, the last attempt's error with
--- the number of nodes tried added to its message.
function B.call(owner, server, method, args, timeout)
  if not sched.can_wait() then sched.wait("rn.call_any") end -- raises the explanation
  timeout = math.min(timeout or cfg.default_timeout, cfg.max_timeout)
  local deadline = now() + timeout
  local stats = B.stats
  stats.calls = stats.calls + 1
  local me = I.node_id()
  local exclude, tried = {}, 0
  local msg, code
  while true do
    local list = B.candidates(server, exclude)
    if #list == 0 and tried == 0 and not owner then
      -- A script's call while the mesh is still coming up waits for a node
      -- that exposes the server, as remote_call waits for a route.
      local until_t = math.min(deadline, now() + cfg.startup_route_wait)
      while #list == 0 and now() < until_t and C.starting() do
        sched.sleep(0.02)
        list = B.candidates(server, exclude)
      end
    end
    if #list == 0 then
      if tried == 0 then
        stats.no_server = stats.no_server + 1
        return fail("ENOSERVER", "no node exposes server '%s' (call_any from node %s)", server, me)
      end
      break
    end
    local node = B.pick(server, list)
    tried = tried + 1
    stats.picks = stats.picks + 1
    if tried > 1 then stats.failovers = stats.failovers + 1 end
    -- calls.call refuses past max_calls before it sends anything; that
    -- EBUSY is this node's own and would be the same on every other node.
    local busy_here = node ~= me and S.n_calls >= cfg.max_calls
    local res
    res, msg, code = attempt(owner, node, server, method, args, deadline - now())
    if msg == nil then return res end
    exclude[node] = true
    local again = false
    if not busy_here and tried <= cfg.max_failovers then
      if REFUSED[code] then
        again = true
      elseif code == "ELINKLOST" then
        again = gone(node, deadline)
        if not again then stats.kept_linklost = stats.kept_linklost + 1 end
      end
    end
    if not again or now() >= deadline then
      if tried == 1 then return nil, msg, code end
      break
    end
  end
  return nil, string.format("%s (call_any tried %d node%s exposing '%s')", msg, tried, tried == 1 and "" or "s",
    server), code
end

return B
