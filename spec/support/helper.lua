-- spec/support/helper.lua: shared test helpers (require("helper"): the
-- Makefile puts spec/support/ on LUA_PATH).
--
-- H.run(fn, timeout) runs fn inside rn.run with a hard test timeout, collects
-- handler errors reported through rn.on_error, rethrows the first failure
-- with the coroutine's traceback, and fails when shutdown leaves uv handles
-- open. H.sh(cmd) runs an external program without blocking the loop.

local rn = require("relaynet")

local H = {}

H.PY = "/usr/bin/python3" -- Debian's python3, where python3-websockets lives
H.ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/support/helper%.lua$")) or "."

--- Runs fn() in the relaynet loop. Errors inside fn (or reported by handlers
--- unless allow_errors) fail the test. Returns the list of reported errors.
function H.run(fn, opts)
  opts = opts or {}
  local timeout = opts.timeout or 20
  local errors = {}
  local failure
  rn.on_error(function(msg) errors[#errors + 1] = msg end)
  local timer_fired = false
  local ok, serr = rn.run(function()
    local guard = rn.after(timeout, function()
      timer_fired = true
      failure = failure or ("test timed out after " .. timeout .. " s")
      rn.stop()
    end)
    local co = coroutine.running()
    local ok, err = xpcall(fn, function(e) return debug.traceback(co, tostring(e), 2) end)
    if not ok then failure = failure or err end
    guard.cancel()
    rn.stop()
  end)
  rn.on_error(nil)
  if failure then error(failure, 0) end
  if not ok then error("shutdown: " .. tostring(serr), 0) end
  if not opts.allow_errors and #errors > 0 then
    error("handler error reported: " .. errors[1], 0)
  end
  assert(not timer_fired)
  return errors
end

--- Shell-quotes a string.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local tmpdir = os.getenv("TMPDIR") or "/tmp"
local seq = 0

--- Starts `cmd` in the background (via sh) and returns a handle whose
--- :wait(timeout) suspends the calling coroutine until the command exits:
--- exit code, stdout, stderr. :kill() ends it.
function H.sh(cmd)
  seq = seq + 1
  local base = string.format("%s/rn-spec-%d-%d-%d", tmpdir, os.time(), math.random(1, 1e9), seq)
  local script = string.format("(%s) >%s.out 2>%s.err; echo $? >%s.rc.tmp; mv %s.rc.tmp %s.rc",
    cmd, base, base, base, base, base)
  local launcher = "sh -c " .. H.q(script) .. " >/dev/null 2>&1 & echo $!"
  local p = io.popen(launcher)
  local pid = tonumber(p:read("l"))
  p:close()
  local h = { base = base, pid = pid }
  function h.wait(_, timeout)
    local deadline = rn.now() + (timeout or 30)
    while true do
      local f = io.open(base .. ".rc")
      if f then
        local rc = tonumber(f:read("l"))
        f:close()
        local function slurp(ext)
          local g = io.open(base .. ext)
          local s = g and g:read("a") or ""
          if g then g:close() end
          os.remove(base .. ext)
          return s
        end
        os.remove(base .. ".rc")
        return rc, slurp(".out"), slurp(".err")
      end
      if rn.now() > deadline then
        h:kill()
        error("command did not finish within " .. (timeout or 30) .. " s: " .. cmd, 2)
      end
      rn.sleep(0.02)
    end
  end
  function h.kill()
    if pid then os.execute("pkill -P " .. pid .. " >/dev/null 2>&1; kill " .. pid .. " >/dev/null 2>&1") end
  end
  return h
end


--- The records of a relaynet log text (stderr of a process the relaynet
--- command runs): a list of { level = "INFO", text = ... }. Raises on a
--- line that is not a log record (a traceback, a stray message).
function H.log_records(text)
  local list = {}
  for line in text:gmatch("[^\n]+") do
    local level, rest = line:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ (%u+) (.*)$")
    if not level then error("not a log record: " .. line, 2) end
    list[#list + 1] = { level = level, text = rest }
  end
  return list
end

--- Asserts that `text` holds INFO log records only (no warning, error or
--- traceback) and returns their texts.
function H.assert_info_only(text)
  local texts = {}
  for _, r in ipairs(H.log_records(text)) do
    if r.level ~= "INFO" then error("a " .. r.level .. " record: " .. r.text, 2) end
    texts[#texts + 1] = r.text
  end
  return texts
end

--- Runs curl in the background: status, body.
function H.curl(args, timeout)
  local rc, out, err = H.sh("curl -s -S -m 10 -w '\\n%{http_code}' " .. args):wait(timeout or 15)
  if rc ~= 0 then return nil, err end
  local body, status = out:match("^(.*)\n(%d+)$")
  return tonumber(status), body
end

--- Starts a server on a free loopback port with the given options. Unless
--- opts.websocket says otherwise it accepts WebSocket upgrades on every
--- path at once (websocket = true), as many specs push to connections of a
--- server that sets no handler; spec/upgrade_paths_spec.lua covers the
--- default.
function H.listen(opts)
  opts = opts or {}
  opts.port = opts.port or 0
  opts.host = opts.host or "127.0.0.1"
  if opts.websocket == nil then opts.websocket = true end
  return assert(rn.HttpServer.listen(opts))
end

return H
