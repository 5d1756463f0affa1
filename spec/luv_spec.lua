-- luv beside relaynet (relaynet.uvbridge, examples/luv.lua): luv's files,
-- DNS, processes and timers run on relaynet's loop; an error in a luv
-- callback is reported and the server goes on; rn.run waits for luv's work
-- and leaves no handle open, in relaynet's loop or in luv's.
--
-- lua-luv is a test dependency (Makefile TEST_PKGS): without it these
-- specs fail, they are not skipped.

local rn = require("relaynet")
local H = require("helper")

local has_luv, luv_or_err = pcall(require, "luv")
local example = dofile(H.ROOT .. "/examples/luv.lua")

local function need_luv()
  assert(has_luv, "lua-luv is not installed (apt-get install lua-luv; `make test-deps` installs it): "
    .. tostring(luv_or_err))
  return rn.luv()
end

-- The handles in luv's loop (closing ones included).
local function luv_handles(uv)
  local n = 0
  uv.walk(function() n = n + 1 end)
  return n
end

local function start()
  local srv = assert(example.start(0, "127.0.0.1"))
  return srv, "http://127.0.0.1:" .. srv.port, "ws://127.0.0.1:" .. srv.port .. "/run"
end

-- Reads /run's answers up to the exit (or an error); returns the output,
-- the exit code and the error.
local function collect(c, program)
  local out = {}
  while true do
    local msg = assert(c:receive(10), "no answer from /run for " .. program)
    local m = assert(rn.json.decode(msg))
    if m.out then out[#out + 1] = m.out end
    if m.exit or m.error then return table.concat(out), m.exit, m.error end
  end
end

-- Runs `program` over /run: collect's results.
local function run_program(c, program)
  assert(c:send(program))
  return collect(c, program)
end

describe("luv beside relaynet", function()
  it("needs lua-luv (a test dependency)", function()
    need_luv()
  end)

  it("rn.luv() returns the luv module, the same on every call", function()
    local uv = need_luv()
    assert.are.equal(require("luv"), uv)
    assert.are.equal(uv, rn.luv())
  end)

  describe("examples/luv.lua", function()
    it("serves a file read with uv.fs_*, 404 and 400 as it should", function()
      need_luv()
      H.run(function()
        local _, base = start()
        local f = assert(io.open(H.ROOT .. "/examples/luv.lua", "rb"))
        local want = f:read("a")
        f:close()
        local status, body = H.curl(H.q(base .. "/file?name=luv.lua"))
        assert.are.equal(200, status)
        assert.is_true(body == want, "the file came back changed")
        status, body = H.curl(H.q(base .. "/file?name=no-such-file"))
        assert.are.equal(404, status)
        assert.are.equal("no such file\n", body)
        status = H.curl(H.q(base .. "/file?name=../README.md"))
        assert.are.equal(400, status)
      end)
    end)

    it("resolves a name with uv.getaddrinfo", function()
      need_luv()
      H.run(function()
        local _, base = start()
        local status, body = H.curl(H.q(base .. "/resolve?host=localhost"))
        assert.are.equal(200, status)
        local res = assert(rn.json.decode(body))
        assert.are.equal("localhost", res.host)
        local loopback = false
        for _, a in ipairs(res.addresses) do
          if a == "127.0.0.1" or a == "::1" then loopback = true end
        end
        assert.is_true(loopback, "no loopback address in " .. body)
      end)
    end)

    it("streams a child process's output over a WebSocket, then its exit code", function()
      local uv = need_luv()
      H.run(function()
        local _, _, ws = start()
        local c = assert(rn.ws_connect(ws))
        local t0 = rn.now()
        local out, code = run_program(c, "count")
        assert.are.equal("1\n2\n3\n", out)
        assert.are.equal(0, code)
        assert.is_true(rn.now() - t0 >= 0.15, "the program sleeps 0.2 s in all")
        out, code = run_program(c, "date")
        assert.are.equal(0, code)
        assert.matches("UTC", out)
        local _, _, err = run_program(c, "rm")
        assert.are.equal("unknown program: rm", err)
        c:close_wait()
      end)
      -- every process and pipe handle was closed
      assert.is_false(uv.loop_alive())
      assert.are.equal(0, luv_handles(uv))
    end)

    it("serves HTTP while a child process runs", function()
      need_luv()
      H.run(function()
        local _, base, ws = start()
        local c = assert(rn.ws_connect(ws))
        assert(c:send("count"))
        local t0 = rn.now()
        local status = H.curl(H.q(base .. "/file?name=luv.lua"))
        assert.are.equal(200, status)
        local out, code = collect(c, "count")
        assert.are.equal("1\n2\n3\n", out)
        assert.are.equal(0, code)
        assert.is_true(rn.now() - t0 >= 0.15, "the program sleeps 0.2 s in all")
        c:close_wait()
      end)
    end)
  end)

  it("reports an error raised in a luv callback and keeps serving", function()
    local uv = need_luv()
    local errors = H.run(function()
      local _, base = start()
      local t = uv.new_timer()
      local fired = false
      t:start(10, 0, function()
        fired = true
        t:close()
        error("luv callback boom")
      end)
      while not fired do rn.sleep(0.01) end
      local status = H.curl(H.q(base .. "/file?name=luv.lua"))
      assert.are.equal(200, status)
      -- and luv's loop goes on as well
      local err, st = rn.luv_wait(uv.fs_stat, H.ROOT .. "/examples/luv.lua")
      assert.is_nil(err)
      assert.is_true(st.size > 0)
    end, { allow_errors = true })
    assert.are.equal(1, #errors)
    assert.matches("^luv callback: .*luv callback boom", errors[1])
    assert.matches("stack traceback", errors[1])
  end)

  it("lets luv callbacks start relaynet coroutines, and says why they cannot wait themselves", function()
    local uv = need_luv()
    local got
    local errors = H.run(function()
      local t = uv.new_timer()
      local done = false
      t:start(10, 0, function()
        t:close()
        rn.spawn(function()
          rn.sleep(0.01) -- a spawned coroutine may wait
          got = "spawned and waited"
          done = true
        end)
        rn.sleep(0.01) -- a luv callback may not
      end)
      while not done do rn.sleep(0.01) end
    end, { allow_errors = true })
    assert.are.equal("spawned and waited", got)
    assert.are.equal(1, #errors)
    assert.matches("^luv callback: .*rn.sleep suspends the calling coroutine", errors[1])
  end)

  it("rn.luv_wait returns luv's message when the call fails at once", function()
    local uv = need_luv()
    H.run(function()
      local err = rn.luv_wait(uv.fs_open, "/nonexistent/relaynet", "r", 0)
      assert.matches("^ENOENT", err)
      local ok, msg = pcall(rn.luv_wait, uv.fs_close, "not a file descriptor")
      assert.is_false(ok) -- luv raises for a wrong argument type, as called directly
      assert.is_string(msg)
    end)
  end)

  it("keeps rn.run going while luv has work, then returns with no handle open", function()
    local uv = need_luv()
    local order = {}
    local t0 = rn.now()
    local ok, err = rn.run(function()
      -- nothing of relaynet's is left once this function returns
      uv.fs_stat(H.ROOT .. "/examples/luv.lua", function(serr, st)
        order[#order + 1] = "stat " .. tostring(serr == nil and st.size > 0)
      end)
      local t = uv.new_timer()
      t:start(150, 0, function()
        order[#order + 1] = "timer"
        t:close()
      end)
    end)
    assert.is_true(ok, err)
    assert.same({ "stat true", "timer" }, order)
    assert.is_true(rn.now() - t0 >= 0.14, "rn.run returned before luv's timer")
    assert.is_false(uv.loop_alive())
    assert.are.equal(0, luv_handles(uv))
  end)

  it("does not wait for an unreferenced luv handle, and rn.stop closes none", function()
    local uv = need_luv()
    local t = uv.new_timer()
    local ok, err = rn.run(function()
      t:start(60000, 0, function() end)
      t:unref()
    end)
    assert.is_true(ok, err)
    assert.is_true(t:is_active(), "the timer is the script's to close")
    local t2 = uv.new_timer()
    local t0 = rn.now()
    ok, err = rn.run(function()
      t2:start(60000, 0, function() end)
      rn.after(0.05, rn.stop)
    end)
    assert.is_true(ok, err)
    assert.is_true(rn.now() - t0 < 5, "rn.stop did not end the run")
    assert.is_true(t2:is_active())
    t:close()
    t2:close()
    -- the closes finish on luv's next turn: the next run's, or uv.run's
    assert.is_true(rn.run(function() end))
    assert.are.equal(0, luv_handles(uv))
  end)

  it("runs as a script under lua5.4 and the relaynet command", function()
    need_luv()
    H.run(function()
      local rnc = H.q(H.ROOT .. "/bin/relaynet")
      for _, cmd in ipairs({ "lua5.4 %s %d", rnc .. " %s %d", rnc .. " %s --port %d" }) do
        local port = math.random(20000, 40000)
        local proc = H.sh("exec " .. cmd:format(H.q(H.ROOT .. "/examples/luv.lua"), port))
        local status, body
        for _ = 1, 100 do
          status, body = H.curl(H.q("http://127.0.0.1:" .. port .. "/resolve?host=localhost"))
          if status then break end
          rn.sleep(0.05)
        end
        proc:kill()
        assert.are.equal(200, status, cmd .. ": " .. tostring(body))
        assert.matches('"host":"localhost"', body)
      end
    end, { timeout = 40 })
  end)
end)
