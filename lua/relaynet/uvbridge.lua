-- relaynet.uvbridge: luv (the libuv binding for Lua, Debian's lua-luv) on
-- relaynet's event loop, so that a script can use luv's files, processes,
-- DNS and timers beside relaynet's servers (README, "Using luv beside
-- relaynet").
--
-- luv keeps a libuv loop of its own; relaynet runs it from inside its loop,
-- the standard way to nest one libuv loop in another (core.nest_loop,
-- rn_loop.c): relaynet watches luv's backend fd, and before each time it
-- would block it runs luv's loop once without blocking (uv.run("nowait")),
-- then blocks at most until luv's next timer. Contract:
--  * luv's callbacks run on the main thread, outside relaynet's coroutines.
--    They may call what does not wait (ws_send, broadcast, rn.spawn,
--    rn.stop, rn.after); something that waits raises there, so they start
--    a coroutine with rn.spawn for it. rn.luv_wait is the other way round:
--    a relaynet coroutine waits for one luv callback.
--  * An error raised in a luv callback is reported through rn.on_error
--    ("luv callback: ..." with its traceback) and the loop goes on; luv's
--    own handler would print it and exit the process.
--  * rn.run keeps running while luv's loop is alive (an active, referenced
--    handle or a request in flight: uv.loop_alive()); handle:unref() lets a
--    handle live on without holding the run. rn.stop() closes no luv handle:
--    whoever opened one closes it. A handle left open stays in luv's loop
--    and goes on at the next rn.run.
--  * Scripts must not call uv.run themselves while relaynet runs.

local core = require("relaynet.core")
local sched = require("relaynet.sched")

local M = {}

local uv = nil -- the luv module, once M.luv() wired it into the loop

local function report(msg)
  sched.report("luv callback: " .. tostring(msg))
end

-- core.poll's step: runs luv's ready callbacks, then returns how long
-- relaynet may block: 0 when a callback made relaynet work ready or luv's
-- loop has just run out of work (the run may be over: relaynet.runtime
-- decides on the next turn), else the nearer of relaynet's next timer and
-- luv's (-1: neither has one).
local function step()
  local was_alive = uv.loop_alive()
  uv.run("nowait")
  local ms = sched.next_timeout()
  if ms == 0 then return 0 end
  if not uv.loop_alive() then return was_alive and 0 or ms end
  local t = uv.backend_timeout()
  if t >= 0 and (ms < 0 or t < ms) then ms = t end
  return ms
end

--- rn.luv() -> the luv module, wired into relaynet's loop (the first call
--- does the wiring; later calls return the same module). Raises when luv
--- is not installed.
function M.luv()
  if uv then return uv end
  local ok, mod = pcall(require, "luv")
  if not ok then
    error("relaynet.luv: the luv module is not installed (Debian: apt-get install lua-luv; " ..
      "LuaRocks: luarocks install luv): " .. tostring(mod):match("^[^\n]*"), 2)
  end
  local done, err = core.luv_hook(package.searchpath("luv", package.cpath), report)
  if not done then error("relaynet.luv: " .. err, 2) end
  core.nest_loop(mod.backend_fd(), step)
  uv = mod
  return uv
end

--- rn.luv_wait(fn, ...) -> the callback's arguments
--- Calls fn(..., callback), a luv function that takes its callback last
--- (uv.fs_open, uv.fs_read, uv.getaddrinfo, ...), and suspends the calling
--- coroutine until luv calls the callback; returns what the callback got
--- (err first for luv's file and DNS functions). When fn fails at once
--- (luv returns nil, message, name and will not call back), returns that
--- message, as an err-first callback would. Must run in a relaynet
--- coroutine (a handler, rn.run's function, rn.spawn).
function M.wait(fn, ...)
  if not uv then M.luv() end
  if not sched.can_wait() then
    error("relaynet.luv_wait suspends the calling coroutine, so it must run inside the relaynet " ..
      "runtime (a handler, rn.run's function or rn.spawn), not in a luv callback", 2)
  end
  local co = coroutine.running()
  local n = select("#", ...)
  local args = table.pack(...)
  local wait_id, early = nil, nil
  args[n + 1] = function(...)
    if wait_id then
      sched.wake(co, wait_id, ...)
    elseif not early then
      early = table.pack(...) -- called back before the wait began
    end
  end
  local started, msg = fn(table.unpack(args, 1, n + 1))
  if early then return table.unpack(early, 1, early.n) end
  if started == nil and msg ~= nil then return msg end
  return sched.wait("rn.luv_wait", nil, function(_, id) wait_id = id end)
end

--- True while rn.luv() has wired luv in and luv's loop is alive: the run
--- goes on (relaynet.runtime asks before it decides to end).
function M.alive()
  return uv ~= nil and uv.loop_alive()
end

return M
