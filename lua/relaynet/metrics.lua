-- relaynet.metrics: the counters relaynet keeps for GET /metrics, and the
-- Prometheus text exposition format (version 0.0.4) they are rendered in.
--
-- Two kinds of source feed the page:
--  * counters and histograms kept here, updated where events finish:
--    HTTP requests by status (relaynet.server), remote calls by outcome and
--    their latency (relaynet.mesh.calls);
--  * collectors, functions registered with M.collector(fn) that read the
--    other layers' own state when the page is built (connections, traffic,
--    queued bytes and refusals from the core, links and routes from the
--    mesh, and through page:mesh_families the pub/sub, presence, history
--    and call_any figures of mesh_status().stats, listed in
--    M.MESH_FAMILIES); relaynet.rpc registers them, with the route.
--
-- Every label has a fixed, bounded set of values: a value outside its set
-- is counted as "other", so a peer cannot grow this module's memory.
--
-- This module requires nothing of relaynet, so the mesh may require it.

local M = {}

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

-- HTTP requests answered by Lua, by status (100..599; others are "other").
local http_status = {}

--- Counts one HTTP response with `status`.
function M.http_request(status)
  local key = "other"
  if math.type(status) == "integer" and status >= 100 and status <= 599 then key = status end
  http_status[key] = (http_status[key] or 0) + 1
end

--- A copy of the HTTP counts: status (integer or "other") -> count.
function M.http_counts()
  local t = {}
  for k, v in pairs(http_status) do t[k] = v end
  return t
end

-- Remote calls (rn.remote_call and JSON-RPC calls through the mesh), by
-- outcome: "ok" or the error code; codes outside OUTCOMES are "other".
M.OUTCOMES = {
  ok = true, ETIMEDOUT = true, ENOROUTE = true, ENOSERVER = true, ENOMETHOD = true, EREMOTE = true,
  ELINKLOST = true, ETTL = true, EINVAL = true, ECANCELED = true, EBUSY = true, EACCES = true,
}
local calls = {}

--- The upper bounds (seconds) of the call latency histogram's buckets.
M.CALL_BUCKETS = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }
local NB = #M.CALL_BUCKETS
local call_hist = { sum = 0, count = 0 }
for i = 1, NB do call_hist[i] = 0 end

--- Counts one finished remote call: `code` nil for a result, else its
--- error code; `seconds` from the call to its answer.
function M.call_done(code, seconds)
  local key = code or "ok"
  if not M.OUTCOMES[key] then key = "other" end
  calls[key] = (calls[key] or 0) + 1
  call_hist.count = call_hist.count + 1
  call_hist.sum = call_hist.sum + seconds
  local b = M.CALL_BUCKETS
  for i = 1, NB do
    if seconds <= b[i] then call_hist[i] = call_hist[i] + 1; break end
  end
end

-- Mesh figures ------------------------------------------------------------------
--
-- The pub/sub, presence, history and load-balanced call figures the mesh
-- shows in mesh_status().stats, as families. Each entry is
-- { name, kind, help, key } for one sample read from stats[key], or
-- { name, kind, help, label = L, { value, key }, ... } for one sample per
-- value of label L. A key the stats do not hold gives no sample. The
-- counters count from the start of the process (pubsub_* from the start of
-- the run); the gauges are sizes now.
M.MESH_FAMILIES = {
  -- pub/sub (README "Pub/sub")
  { "relaynet_pubsub_publishes_total", "counter", "Publishes made on this node (rn.publish, JSON-RPC).",
    "pubsub_published" },
  { "relaynet_pubsub_messages_total", "counter",
    "Pub/sub messages this node sent as publisher (one per next hop), relayed for others, and received "
      .. "for itself.",
    label = "event", { "sent", "pubsub_sent" }, { "relayed", "pubsub_relayed" }, { "received", "pubsub_received" } },
  { "relaynet_pubsub_deliveries_total", "counter", "Messages handed to subscribers here, one per subscription.",
    "pubsub_delivered" },
  { "relaynet_pubsub_dropped_total", "counter",
    "Pub/sub messages dropped: destinations without a route (no_route), received with no matching "
      .. "subscription (no_interest), not newer than the last from their publisher (out_of_order).",
    label = "reason", { "no_route", "pubsub_no_route" }, { "no_interest", "pubsub_no_interest" },
    { "out_of_order", "pubsub_out_of_order" } },
  { "relaynet_pubsub_refused_total", "counter", "Subscribes and publishes refused: ELIMIT and oversized messages.",
    "pubsub_refused" },
  { "relaynet_pubsub_interest_dropped_total", "counter",
    "Subscription patterns from route entries not held (max_patterns, max_interest_entries).", "topics_dropped" },
  { "relaynet_pubsub_subscriptions", "gauge", "Subscriptions on this node (Lua and WebSocket).", "subscriptions" },
  { "relaynet_pubsub_subscription_patterns", "gauge", "Distinct patterns this node subscribes to (advertised).",
    "subscription_patterns" },
  { "relaynet_pubsub_interest_entries", "gauge", "Subscription patterns held from other nodes' route entries.",
    "interest_entries" },
  -- presence (README "Presence")
  { "relaynet_presence_messages_total", "counter",
    "Presence messages this node sent, relayed for others, and received for itself.",
    label = "event", { "sent", "presence_sent" }, { "relayed", "presence_relayed" },
    { "received", "presence_received" } },
  { "relaynet_presence_changes_total", "counter", "Joins and leaves of this node's own members.",
    label = "change", { "join", "presence_joins" }, { "leave", "presence_leaves" } },
  { "relaynet_presence_stale_total", "counter", "Presence changes and snapshots dropped as not newer than held.",
    "presence_stale" },
  { "relaynet_presence_resyncs_total", "counter", "Presence snapshots asked again after a gap.", "presence_resyncs" },
  { "relaynet_presence_dropped_total", "counter", "Other nodes' members not held (max_presence_entries).",
    "presence_dropped" },
  { "relaynet_presence_refused_total", "counter",
    "Presence refusals: EINVAL and ELIMIT answers to calls (call), watch registrations past "
      .. "max_presence_watchers (watcher).",
    label = "kind", { "call", "presence_refused" }, { "watcher", "presence_watchers_refused" } },
  { "relaynet_presence_nodes_lost_total", "counter", "Views of a topic on a node dropped as the node became "
    .. "unreachable.", "presence_nodes_lost" },
  { "relaynet_presence_timeouts_total", "counter", "rn.presence calls that timed out.", "presence_timeouts" },
  { "relaynet_presence_members", "gauge", "Members on this node, all topics.", "presence_members" },
  { "relaynet_presence_cached_members", "gauge", "Other nodes' members held here.", "presence_cached" },
  { "relaynet_presence_watchers", "gauge", "Watch registrations (topic, watching node) held here.",
    "presence_watchers" },
  { "relaynet_presence_handlers", "gauge", "rn.on_presence handlers on this node.", "presence_handlers" },
  -- history (README "History and recovery")
  { "relaynet_history_stored_total", "counter", "Published messages recorded in a history stream.",
    "history_stored" },
  { "relaynet_history_dropped_total", "counter",
    "History messages dropped for their topic's size (trimmed), their age (expired), or max_history_bytes "
      .. "(evicted).",
    label = "reason", { "trimmed", "history_trimmed" }, { "expired", "history_expired" },
    { "evicted", "history_evicted" } },
  { "relaynet_history_topics_refused_total", "counter", "Publishes kept nowhere as max_history_topics streams "
    .. "existed.", "history_topics_refused" },
  { "relaynet_history_recovers_total", "counter", "Recover requests answered here, ERESYNC answers included.",
    "history_recovers" },
  { "relaynet_history_resyncs_total", "counter", "Recover requests answered ERESYNC here.", "history_resyncs" },
  { "relaynet_history_recovered_messages_total", "counter", "Messages in the recover answers sent from here.",
    "history_recovered" },
  { "relaynet_history_held_dropped_total", "counter", "Live frames dropped while a WebSocket subscription "
    .. "recovered (max_recover).", "history_held_dropped" },
  { "relaynet_history_topics", "gauge", "History streams kept on this node.", "history_topics" },
  { "relaynet_history_messages", "gauge", "History messages kept on this node.", "history_messages" },
  { "relaynet_history_bytes", "gauge", "Bytes of the history messages kept (with their topics).", "history_bytes" },
  -- load-balanced calls (README "Load-balanced calls")
  { "relaynet_call_any_calls_total", "counter", "rn.call_any calls made on this node.", "call_any_calls" },
  { "relaynet_call_any_picks_total", "counter", "Nodes picked by call_any, one per attempt.", "call_any_picks" },
  { "relaynet_call_any_failovers_total", "counter", "call_any attempts after the first.", "call_any_failovers" },
  { "relaynet_call_any_no_server_total", "counter", "call_any calls that found no node exposing the server.",
    "call_any_no_server" },
  { "relaynet_call_any_kept_linklost_total", "counter",
    "call_any ELINKLOST failures not failed over because the node stayed reachable.", "call_any_kept_linklost" },
}

-- rendering --------------------------------------------------------------------

local function num(v)
  if math.type(v) == "integer" then return string.format("%d", v) end
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  return string.format("%.9g", v)
end

local function esc(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- A page being built: out is the list of lines.
local Page = {}
Page.__index = Page

--- Adds a metric family: `kind` "counter" or "gauge", `samples` either a
--- number (one sample without labels) or a list of { labels, value } where
--- labels is a list of { name, value } pairs.
function Page:family(name, kind, help, samples)
  local out = self.out
  out[#out + 1] = "# HELP " .. name .. " " .. help
  out[#out + 1] = "# TYPE " .. name .. " " .. kind
  if type(samples) == "number" then
    out[#out + 1] = name .. " " .. num(samples)
    return
  end
  for _, s in ipairs(samples) do
    local parts = {}
    for i, l in ipairs(s[1]) do parts[i] = l[1] .. '="' .. esc(l[2]) .. '"' end
    local lbl = #parts > 0 and ("{" .. table.concat(parts, ",") .. "}") or ""
    out[#out + 1] = name .. lbl .. " " .. num(s[2])
  end
end

function Page:counter(name, help, samples) self:family(name, "counter", help, samples) end
function Page:gauge(name, help, samples) self:family(name, "gauge", help, samples) end

--- Adds the families of M.MESH_FAMILIES, read from `stats` (the table of
--- mesh_status().stats).
function Page:mesh_families(stats)
  for _, f in ipairs(M.MESH_FAMILIES) do
    local samples
    if f.label then
      samples = {}
      for i = 4, #f do
        local lv = f[i]
        local v = stats[lv[2]]
        if v ~= nil then samples[#samples + 1] = { { { f.label, lv[1] } }, v } end
      end
    else
      samples = stats[f[4]]
    end
    if samples ~= nil then self:family(f[1], f[2], f[3], samples) end
  end
end

local collectors = {}

--- Registers fn(page), called for every page, in order of registration:
--- it adds families with page:counter(name, help, samples) and
--- page:gauge(...).
function M.collector(fn)
  collectors[#collectors + 1] = fn
end

-- The families kept in this module.
local function own(page)
  local keys, list = {}, {}
  for k in pairs(calls) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, code in ipairs(keys) do list[i] = { { { "outcome", code } }, calls[code] } end
  page:counter("relaynet_remote_calls_total",
    "Remote calls this node made (rn.remote_call, JSON-RPC), by outcome: ok or the error code.", list)
  local out = page.out
  local name = "relaynet_remote_call_duration_seconds"
  out[#out + 1] = "# HELP " .. name .. " Time from a remote call to its answer or failure."
  out[#out + 1] = "# TYPE " .. name .. " histogram"
  local cum = 0
  for i = 1, NB do
    cum = cum + call_hist[i]
    out[#out + 1] = name .. '_bucket{le="' .. num(M.CALL_BUCKETS[i] + 0.0) .. '"} ' .. num(cum)
  end
  out[#out + 1] = name .. '_bucket{le="+Inf"} ' .. num(call_hist.count)
  out[#out + 1] = name .. "_sum " .. num(call_hist.sum + 0.0)
  out[#out + 1] = name .. "_count " .. num(call_hist.count)
end

--- The page: every collector's families, then this module's, as text.
function M.render()
  local page = setmetatable({ out = {} }, Page)
  for _, fn in ipairs(collectors) do fn(page) end
  own(page)
  page.out[#page.out + 1] = ""
  return table.concat(page.out, "\n")
end

return M
