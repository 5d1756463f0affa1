-- relaynet.sched: the coroutine scheduler. Every wait and every timeout in
-- relaynet goes through M.wait / M.wake here, and nowhere else.
--
-- Contract:
--  * Coroutines created by M.spawn / M.go are "owned" by the runtime. Only
--    they may call a suspending primitive; anything else gets a clear error.
--  * A waiting coroutine is anchored in `waiting` until it is woken, so it
--    cannot be collected while a C event may still refer to it.
--  * Each wait has an id. M.wake(co, id, ...) resumes the coroutine only if it
--    is still suspended in that same wait, so a stale wake-up (a timer that
--    lost the race, a late event) is ignored.
--  * A bare coroutine.yield() inside an owned coroutine is treated as "let
--    others run": the coroutine is resumed again on the next turn.

local core = require("relaynet.core")

local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_running, co_status = coroutine.running, coroutine.status
local traceback = debug.traceback

local M = {}

local WAIT = setmetatable({}, { __name = "relaynet.wait" })
local IDLE = setmetatable({}, { __name = "relaynet.idle" })
local owned = setmetatable({}, { __mode = "k" }) -- co -> label
local waiting = {}  -- co -> wait id (anchors the coroutine)
local wait_timer = {} -- co -> timer entry
local next_wait = 1

-- ready queue: coroutines to resume (with packed args) on the next turn
local ready, ready_head, ready_tail = {}, 1, 0

-- timers: a binary min-heap of entries { at, seq, co, id, fn, pos }
local heap, heap_n, timer_seq = {}, 0, 0

local function default_on_error(msg)
  io.stderr:write("relaynet: ", tostring(msg), "\n")
end
M.on_error = default_on_error

function M.report(msg)
  local ok, err = pcall(M.on_error, msg)
  if not ok then
    default_on_error("error in on_error hook: " .. tostring(err) .. "\noriginal error: " .. tostring(msg))
  end
end

-- heap -----------------------------------------------------------------------

local function less(a, b)
  if a.at ~= b.at then return a.at < b.at end
  return a.seq < b.seq
end

local function swap(i, j)
  heap[i], heap[j] = heap[j], heap[i]
  heap[i].pos, heap[j].pos = i, j
end

local function sift_up(i)
  while i > 1 do
    local p = i // 2
    if less(heap[i], heap[p]) then swap(i, p); i = p else break end
  end
end

local function sift_down(i)
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= heap_n and less(heap[l], heap[m]) then m = l end
    if r <= heap_n and less(heap[r], heap[m]) then m = r end
    if m == i then return end
    swap(i, m); i = m
  end
end

local function timer_add(at, e)
  timer_seq = timer_seq + 1
  e.at, e.seq = at, timer_seq
  heap_n = heap_n + 1
  heap[heap_n] = e
  e.pos = heap_n
  sift_up(heap_n)
  return e
end

local function timer_remove(e)
  local i = e.pos
  if not i or heap[i] ~= e then return end
  e.pos = nil
  if i == heap_n then
    heap[heap_n] = nil; heap_n = heap_n - 1
    return
  end
  heap[i] = heap[heap_n]; heap[i].pos = i
  heap[heap_n] = nil; heap_n = heap_n - 1
  sift_up(i); sift_down(i)
end

M.now = core.now

-- resuming -------------------------------------------------------------------

-- Handler coroutines come from a small pool: a handler per message is the
-- common case, and reusing a coroutine saves creating one. A worker runs
-- fn with n (at most four) arguments, yields IDLE and waits for its next
-- job; M.go packs more into a closure, so nothing on this path forwards
-- varargs. A handler that raises kills its coroutine: the error
-- is reported with the dead coroutine's traceback and the coroutine is not
-- pooled.
--
-- owned[co] is true, or, while a labeled handler (M.handle) is suspended,
-- the label its errors are reported under.
local pool, pool_n, POOL_MAX = {}, 0, 64

local function worker(fn, n, a, b, c, d)
  while true do
    -- exactly n arguments, so a handler sees select("#", ...) as given
    if n == 3 then fn(a, b, c)
    elseif n == 2 then fn(a, b)
    elseif n == 1 then fn(a)
    elseif n == 0 then fn()
    else fn(a, b, c, d) end
    fn, n, a, b, c, d = co_yield(IDLE)
  end
end

local function take_worker()
  if pool_n > 0 then
    local co = pool[pool_n]
    pool[pool_n] = nil
    pool_n = pool_n - 1
    return co
  end
  local co = co_create(worker)
  owned[co] = true
  return co
end

local function finish(co, ok, r)
  if not ok then
    local label = owned[co]
    owned[co] = nil
    waiting[co] = nil
    local msg = traceback(co, tostring(r))
    M.report(type(label) == "string" and label .. ": " .. msg or msg)
  elseif r == IDLE then
    if pool_n < POOL_MAX then
      owned[co] = true
      pool_n = pool_n + 1
      pool[pool_n] = co
    else
      owned[co] = nil
    end
  elseif co_status(co) == "dead" then
    owned[co] = nil
  elseif r ~= WAIT then
    -- a bare yield: run it again on the next turn
    ready_tail = ready_tail + 1
    ready[ready_tail] = { co }
  end
end

local function resume(co, ...)
  return finish(co, co_resume(co, ...))
end
M.resume = resume

--- Runs fn(...) in an owned coroutine right now (until it first waits).
--- The coroutine may come from the pool of finished handlers.
function M.go(fn, ...)
  local co = take_worker()
  local n = select("#", ...)
  if n <= 4 then
    resume(co, fn, n, ...)
  else
    local args = table.pack(...)
    resume(co, function() return fn(table.unpack(args, 1, n)) end, 0)
  end
  return co
end

--- The event path: runs fn with n (0..4) of a, b, c, d in a pooled coroutine right now. An
--- error is reported as "<what><id>: error" with its traceback; the label
--- string is only built when the handler suspends or fails.
function M.handle(what, id, fn, n, a, b, c, d)
  local co
  if pool_n > 0 then -- take_worker, inlined on this path
    co = pool[pool_n]
    pool[pool_n] = nil
    pool_n = pool_n - 1
  else
    co = co_create(worker)
    owned[co] = true
  end
  local ok, r = co_resume(co, fn, n, a, b, c, d)
  if ok and r == IDLE then
    if pool_n < POOL_MAX then
      pool_n = pool_n + 1
      pool[pool_n] = co
    else
      owned[co] = nil
    end
    return
  end
  owned[co] = what .. id
  finish(co, ok, r)
end

--- Creates an owned coroutine that starts on the next turn of the loop.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("relaynet.spawn: expected a function, got " .. type(fn), 2)
  end
  local co = co_create(fn)
  owned[co] = true
  ready_tail = ready_tail + 1
  ready[ready_tail] = table.pack(co, ...)
  return co
end

-- waiting --------------------------------------------------------------------

local function check_wake(co, id, what, got, ...)
  if got ~= id then
    waiting[co] = nil
    local t = wait_timer[co]
    if t then timer_remove(t); wait_timer[co] = nil end
    error("relaynet: a coroutine waiting in " .. what ..
      " was resumed by something other than the relaynet runtime", 3)
  end
  return ...
end

--- Suspends the calling owned coroutine until M.wake(co, id, ...) is called
--- or `timeout` seconds pass (then returns nil, "ETIMEDOUT: ...", "ETIMEDOUT").
--- `register(co, id)` is called before suspending, so the caller can record
--- who to wake. Returns what the waker passed.
function M.wait(what, timeout, register)
  local co, main = co_running()
  if main or not owned[co] then
    error("relaynet: " .. what .. " suspends the calling coroutine, so it must run inside " ..
      "the relaynet runtime: call it from rn.run(function() ... end), from a function " ..
      "started with rn.spawn, or from a route or WebSocket handler", 3)
  end
  local id = next_wait
  next_wait = id + 1
  waiting[co] = id
  if timeout then
    wait_timer[co] = timer_add(M.now() + timeout, { co = co, id = id, what = what, timeout = timeout })
  end
  if register then register(co, id) end
  return check_wake(co, id, what, co_yield(WAIT))
end

--- Wakes `co` if it is still in wait `id`. Returns true when it was.
function M.wake(co, id, ...)
  if waiting[co] ~= id then return false end
  waiting[co] = nil
  local t = wait_timer[co]
  if t then timer_remove(t); wait_timer[co] = nil end
  resume(co, id, ...)
  return true
end

--- True when the calling code may suspend (runs in an owned coroutine).
function M.can_wait()
  local co, main = co_running()
  return not main and owned[co] ~= nil
end

function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds < 0 then
    error("relaynet.sleep: expected a non-negative number of seconds", 2)
  end
  M.wait("rn.sleep", seconds)
  return true
end

--- Calls fn() after `seconds` (in a new coroutine). Returns a handle with
--- :cancel().
function M.after(seconds, fn)
  local e = timer_add(M.now() + seconds, { fn = fn })
  return { cancel = function() timer_remove(e) end }
end

-- the loop's side -----------------------------------------------------------

--- Runs every ready coroutine and every expired timer once.
function M.run_ready()
  local now
  if heap_n > 0 then
    now = M.now()
    while heap_n > 0 and heap[1].at <= now do
      local e = heap[1]
      timer_remove(e)
      if e.fn then
        M.go(e.fn)
      else
        wait_timer[e.co] = nil
        M.wake(e.co, e.id, nil,
          string.format("ETIMEDOUT: %s timed out after %g s", e.what, e.timeout), "ETIMEDOUT")
      end
    end
  end
  local head, tail = ready_head, ready_tail
  ready_head = tail + 1
  for i = head, tail do
    local r = ready[i]
    ready[i] = nil
    resume(r[1], table.unpack(r, 2, r.n or 1))
  end
  if ready_head > ready_tail then
    ready_head, ready_tail = 1, 0
  end
end

--- Milliseconds until the next timer: 0 when something is ready, -1 when
--- nothing is scheduled.
function M.next_timeout()
  if ready_tail >= ready_head then return 0 end
  if heap_n == 0 then return -1 end
  local ms = math.ceil((heap[1].at - M.now()) * 1000)
  if ms < 0 then return 0 end
  return ms
end

function M.pending()
  return (ready_tail - ready_head + 1) + heap_n
end

--- Forgets everything (after the loop has shut down).
function M.reset()
  waiting, wait_timer = {}, {}
  pool, pool_n = {}, 0
  ready, ready_head, ready_tail = {}, 1, 0
  heap, heap_n = {}, 0
end

--- Wakes every waiting coroutine with nil, msg, code (used at shutdown).
function M.cancel_all(msg, code)
  local list = {}
  for co, id in pairs(waiting) do list[#list + 1] = { co, id } end
  for _, w in ipairs(list) do M.wake(w[1], w[2], nil, msg, code) end
end

function M.waiting_count()
  local n = 0
  for _ in pairs(waiting) do n = n + 1 end
  return n
end

return M
