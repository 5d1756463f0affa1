-- relaynet.log: leveled logging (the facade's rn.log).
--
-- A record is one line on stderr: an ISO-8601 UTC time with milliseconds,
-- the level, the text:
--
--   2026-12-03T00:49:29.123Z INFO listening on http://0.0.0.0:8080
--
-- Levels, from the most to the least severe: error, warn, info, debug. A
-- record is written when its level is at or above the threshold's
-- severity. A library must not chatter, so the threshold starts at "warn"
-- and the access log (one line per HTTP request and per WebSocket
-- connection, at level info) starts off; the relaynet command sets both
-- from its options (--log-level, default info; the access log on).
--
-- libwebsockets' own log goes to stderr in the same format from the C core
-- (csrc/rn_log.c), held to the same threshold, which set_level passes on:
-- lws errors and warnings are WARN lines, its notices DEBUG lines.
--
-- This module requires nothing but the core, so every other module may
-- require it. The fields below are read on every log call and are the
-- cheap test a caller makes before building an expensive record:
--   M.enabled[name]  true when records of that level are written;
--   M.access_on      true when the access log is on (and info is enabled).

local core = require("relaynet.core")

local M = {}

local SEVERITY = { error = 1, warn = 2, info = 3, debug = 4 }
local LABEL = { "ERROR", "WARN", "INFO", "DEBUG" }

local threshold = 2
local access = false
local stamp = core.log_stamp

--- enabled[level name] is true when records of that level are written.
M.enabled = {}
M.access_on = false

-- The writer of whole lines (without the newline); nil: stderr.
local writer = nil

local function refresh()
  for name, n in pairs(SEVERITY) do M.enabled[name] = n <= threshold end
  M.access_on = access and threshold >= SEVERITY.info
end

-- One record: control characters (a newline in a peer's path, say) are
-- replaced so that a record stays one line.
local function emit(n, fmt, ...)
  local text = fmt
  if select("#", ...) > 0 then text = string.format(fmt, ...) end
  text = tostring(text):gsub("[%c]", "?")
  local line = stamp() .. " " .. LABEL[n] .. " " .. text
  if writer then
    writer(line, LABEL[n]:lower())
  else
    io.stderr:write(line .. "\n")
  end
end

--- rn.log.error(fmt, ...), warn, info, debug: writes one record when its
--- level is enabled. With arguments the text is string.format(fmt, ...);
--- without, fmt is the text as it is.
function M.error(fmt, ...) if threshold >= 1 then emit(1, fmt, ...) end end
function M.warn(fmt, ...) if threshold >= 2 then emit(2, fmt, ...) end end
function M.info(fmt, ...) if threshold >= 3 then emit(3, fmt, ...) end end
function M.debug(fmt, ...) if threshold >= 4 then emit(4, fmt, ...) end end

--- Writes an access-log record (level info) when the access log is on.
function M.access(fmt, ...)
  if M.access_on then emit(3, fmt, ...) end
end

--- Sets the threshold: "error", "warn", "info" or "debug". Raises on any
--- other name. libwebsockets' log follows it.
function M.set_level(name)
  local n = SEVERITY[name]
  if not n then
    error("relaynet.log.set_level: unknown level " .. tostring(name) .. " (error, warn, info or debug)", 2)
  end
  threshold = n
  core.log_level(n)
  refresh()
end

--- The threshold's name.
function M.level()
  for name, n in pairs(SEVERITY) do
    if n == threshold then return name end
  end
end

--- Turns the access log on (true) or off (false). Its records are at level
--- info: a threshold of warn or error silences them.
function M.set_access(on)
  access = on and true or false
  refresh()
end

--- The access log's switch (true: on), whatever the threshold.
function M.access_enabled()
  return access
end

--- Sends every record to fn(line, level) instead of stderr (line: the whole
--- record without a newline; level: its name); nil restores stderr. For
--- tests and for programs with a log of their own. libwebsockets' lines
--- still go to stderr.
function M.set_writer(fn)
  if fn ~= nil and type(fn) ~= "function" then error("relaynet.log.set_writer: expected a function or nil", 2) end
  writer = fn
end

refresh()

return M
