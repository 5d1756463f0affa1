-- relaynet.sched driven in-process, without the event loop: spawn, the
-- ready queue, wait/wake with ids, timers on a fake clock, handler errors
-- and the pool. Each test ends with sched.reset(), as a run does.

local sched = require("relaynet.sched")

describe("sched", function()
  local clock, real_now, real_on_error, reported

  before_each(function()
    clock = 100
    real_now = sched.now
    sched.now = function() return clock end
    real_on_error = sched.on_error
    reported = {}
    sched.on_error = function(msg) reported[#reported + 1] = msg end
  end)

  after_each(function()
    sched.cancel_all("ECANCELED: test over", "ECANCELED")
    sched.reset()
    sched.now = real_now
    sched.on_error = real_on_error
  end)

  it("runs a spawned coroutine on the next turn, with its arguments", function()
    local got
    sched.spawn(function(a, b, ...) got = { a, b, select("#", ...) } end, 1, nil, nil)
    assert.is_nil(got)
    assert.equal(1, sched.pending())
    assert.equal(0, sched.next_timeout())
    sched.run_ready()
    assert.same({ 1, nil, 1 }, got)
    assert.equal(0, sched.pending())
    assert.equal(-1, sched.next_timeout())
  end)

  it("refuses to spawn a non-function", function()
    assert.has_error(function() sched.spawn(42) end)
  end)

  it("wakes a waiter with the values given, once, and only for its wait id", function()
    local co, wid, got
    sched.spawn(function()
      got = { sched.wait("test", nil, function(c, id) co, wid = c, id end) }
    end)
    sched.run_ready()
    assert.equal(1, sched.waiting_count())
    assert.is_false(sched.wake(co, wid + 1, "stale"))
    assert.is_true(sched.wake(co, wid, "a", "b"))
    assert.same({ "a", "b" }, got)
    assert.is_false(sched.wake(co, wid, "again"))
    assert.equal(0, sched.waiting_count())
  end)

  it("times a wait out by the clock", function()
    local got
    sched.spawn(function() got = { sched.wait("the test wait", 2) } end)
    sched.run_ready()
    assert.equal(2000, sched.next_timeout())
    clock = clock + 1.5
    sched.run_ready()
    assert.is_nil(got)
    assert.equal(500, sched.next_timeout())
    clock = clock + 0.5
    sched.run_ready()
    assert.is_nil(got[1])
    assert.equal("ETIMEDOUT: the test wait timed out after 2 s", got[2])
    assert.equal("ETIMEDOUT", got[3])
  end)

  it("runs timers in time order, and not a canceled one", function()
    local order = {}
    sched.after(3, function() order[#order + 1] = "c" end)
    sched.after(1, function() order[#order + 1] = "a" end)
    local t = sched.after(2, function() order[#order + 1] = "x" end)
    sched.after(2, function() order[#order + 1] = "b" end)
    t.cancel()
    clock = clock + 10
    sched.run_ready()
    assert.same({ "a", "b", "c" }, order)
  end)

  it("sleep suspends until the clock passes", function()
    local woke = false
    sched.spawn(function() sched.sleep(1); woke = true end)
    sched.run_ready()
    assert.is_false(woke)
    clock = clock + 1
    sched.run_ready()
    assert.is_true(woke)
    assert.has_error(function() sched.sleep(-1) end)
  end)

  it("refuses to wait outside an owned coroutine", function()
    assert.is_false(sched.can_wait())
    assert.has_error(function() sched.wait("outside") end)
    local inside
    sched.spawn(function() inside = sched.can_wait() end)
    sched.run_ready()
    assert.is_true(inside)
  end)

  it("reports a handler error with its label and keeps going", function()
    sched.handle("message handler for ", "c7", function() error("boom") end, 0)
    assert.equal(1, #reported)
    assert.matches("^message handler for c7: .*boom", reported[1])
    local n
    sched.handle("x", "y", function(...) n = select("#", ...) end, 2, "a", nil)
    assert.equal(2, n)
  end)

  it("reports a handler that fails after suspending with its label", function()
    local co, wid
    sched.handle("close handler for ", "c9", function()
      sched.wait("w", nil, function(c, id) co, wid = c, id end)
      error("late")
    end, 0)
    assert.equal(0, #reported)
    sched.wake(co, wid)
    assert.equal(1, #reported)
    assert.matches("^close handler for c9: .*late", reported[1])
  end)

  it("resumes a bare yield on the next turn", function()
    local steps = {}
    sched.spawn(function()
      steps[#steps + 1] = 1
      coroutine.yield()
      steps[#steps + 1] = 2
    end)
    sched.run_ready()
    assert.same({ 1 }, steps)
    sched.run_ready()
    assert.same({ 1, 2 }, steps)
  end)

  it("cancel_all wakes every waiter with the given error", function()
    local got = {}
    for i = 1, 3 do
      sched.spawn(function() got[i] = { sched.wait("w" .. i) } end)
    end
    sched.run_ready()
    assert.equal(3, sched.waiting_count())
    sched.cancel_all("ECANCELED: stop", "ECANCELED")
    for i = 1, 3 do assert.same({ nil, "ECANCELED: stop", "ECANCELED" }, got[i]) end
  end)

  it("a failing on_error hook falls back to stderr and does not raise", function()
    sched.on_error = function() error("hook broke") end
    local written = {}
    local stderr = io.stderr
    io.stderr = { write = function(self, ...) -- luacheck: ignore 122
      for _, s in ipairs({ ... }) do written[#written + 1] = s end
      return self
    end }
    local ok = pcall(sched.report, "original")
    io.stderr = stderr -- luacheck: ignore 122
    assert.is_true(ok)
    local text = table.concat(written)
    assert.matches("error in on_error hook: .*hook broke", text)
    assert.matches("original error: original", text)
  end)
end)
