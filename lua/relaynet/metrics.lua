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
--    mesh); relaynet.rpc registers them, with the route.
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
