-- Installing relaynet as a user would: the rockspec describes the tree;
-- `make dist` builds a source rock that `luarocks install` builds with no
-- network into a fresh tree; `luarocks make` and `make install PREFIX=...`
-- install too. In each case the installed `relaynet` command works from
-- another directory without LUA_PATH or `luarocks path`: it prints its
-- version, loads relaynet from its own installation, and runs a copy of the
-- installed echo example, which a WebSocket client talks to.

local rn = require("relaynet")
local H = require("helper")

local ROCKSPEC = H.ROOT .. "/relaynet-0.1.0-1.rockspec"
local VERSION_LINE = "^relaynet 0%.1%.0 %(libwebsockets 4%.1%.6, libuv [%d.]+, Lua 5%.4%)\n$"

-- A shell prefix that runs a command in /tmp with none of the Lua path
-- variables the Makefile exports (they point into the checkout).
local CLEAN = "cd /tmp && unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 && "

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. H.q(d)))
  return d
end

local function rm(path)
  H.sh("rm -rf " .. H.q(path)):wait(60)
end

-- A TCP port nobody listens on at the moment.
local function free_port()
  local rc, out = H.sh(H.PY .. [[ -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0));]] ..
    [[ print(s.getsockname()[1])']]):wait(30)
  assert.equal(0, rc)
  return assert(math.tointeger(tonumber(out)))
end

-- Checks the installed command `cmd` (an absolute path): --version from
-- /tmp, that relaynet and relaynet.core load from the installation (their
-- files start with `lua_prefix` and `lib_prefix`), and that a copy of
-- `examples_dir`/echo.lua, run from /tmp, echoes a WebSocket message.
local function check_command(cmd, lua_prefix, lib_prefix, examples_dir)
  local rc, out, err = H.sh(CLEAN .. H.q(cmd) .. " --version"):wait(60)
  assert.equal(0, rc, err)
  assert.matches(VERSION_LINE, out)

  rc, out, err = H.sh(CLEAN .. H.q(cmd) .. [[ -e 'print(package.searchpath("relaynet", package.path));]] ..
    [[ print(package.searchpath("relaynet.core", package.cpath))']]):wait(60)
  assert.equal(0, rc, err)
  assert.equal(lua_prefix .. "/relaynet/init.lua\n" .. lib_prefix .. "/relaynet/core.so\n", out)

  -- The examples, copied out of the installation; echo.lua runs from /tmp.
  local dir = tmpdir()
  assert(os.execute("cp -R " .. H.q(examples_dir) .. " " .. H.q(dir .. "/examples")))
  local port = free_port()
  local pidfile = dir .. "/pid"
  local server = H.sh(CLEAN .. "{ " .. H.q(cmd) .. " " .. H.q(dir .. "/examples/echo.lua") .. " " .. port ..
    " & echo $! >" .. H.q(pidfile) .. "; wait $!; }")
  local c, cerr
  local deadline = rn.now() + 30
  repeat
    c, cerr = rn.ws_connect("ws://127.0.0.1:" .. port .. "/", { timeout = 2 })
    if not c then rn.sleep(0.2) end
    -- The command exited (status file written): the example failed to start.
    local gone = io.open(server.base .. ".rc")
    if gone then gone:close() end
  until c or gone or rn.now() > deadline
  if not c then
    os.execute("kill -TERM $(cat " .. H.q(pidfile) .. ") 2>/dev/null")
    local src, sout, serr = server:wait(30)
    error(string.format("the installed echo example did not accept a WebSocket (%s); it exited %s:\n%s%s",
      tostring(cerr), tostring(src), sout, serr))
  end
  assert(c:send("hello from outside"))
  local msg, binary = c:receive(10)
  assert.equal("hello from outside", msg)
  assert.is_false(binary)
  c:close_wait()
  -- SIGTERM: the command shuts down cleanly, exit status 0.
  local f = assert(io.open(pidfile))
  local pid = assert(math.tointeger(tonumber(f:read("l"))))
  f:close()
  assert(os.execute("kill -TERM " .. pid))
  local src, sout, serr = server:wait(30)
  assert.matches("echo server on ws://", sout, 1, true)
  assert.not_matches("traceback", serr, 1, true)
  assert.equal(0, src, serr)
  rm(dir)
end

describe("the rockspec", function()
  it("lists every module under lua/, every C source and every outside dependency", function()
    local p = io.popen("cd " .. H.q(H.ROOT) .. " && lua5.4 spec/support/check_rockspec.lua " ..
      H.q(ROCKSPEC) .. " 2>&1")
    local out = p:read("a")
    local ok = p:close()
    assert.equal("", out)
    assert.is_true(ok)
  end)
end)

describe("make dist", function()
  it("builds a source rock that luarocks installs offline into a fresh tree", function()
    -- make dist packs HEAD with git archive: an unpacked release has no git.
    if not os.execute("git -C " .. H.q(H.ROOT) .. " rev-parse --verify -q HEAD >/dev/null 2>&1") then
      pending("not a git checkout: make dist needs one")
      return
    end
    H.run(function()
      local rc, out, err = H.sh("cd " .. H.q(H.ROOT) .. " && make --no-print-directory dist"):wait(120)
      assert.equal(0, rc, out .. err)
      local rock = H.ROOT .. "/build/dist/relaynet-0.1.0-1.src.rock"
      rc, out = H.sh("unzip -Z1 " .. H.q(rock)):wait(30)
      assert.equal(0, rc)
      assert.equal("relaynet-0.1.0-1.rockspec\nrelaynet-0.1.0.tar.gz\n", out)

      -- No network: a namespace without one when unshare can make it (root),
      -- else proxies that refuse every connection.
      local offline = "http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 " ..
        "HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 "
      if H.sh("unshare -n true"):wait(30) == 0 then offline = "unshare -n " end
      local tree = tmpdir()
      rc, out, err = H.sh(CLEAN .. offline .. "luarocks --lua-version 5.4 --tree " .. H.q(tree) ..
        " install " .. H.q(rock)):wait(300)
      assert.equal(0, rc, out .. err)
      assert.matches("relaynet 0.1.0-1 is now installed in " .. tree, out, 1, true)
      assert.not_matches("Fetching", out .. err, 1, true)

      local rockdir = tree .. "/lib/luarocks/rocks-5.4/relaynet/0.1.0-1"
      rc, out = H.sh(CLEAN .. "luarocks --lua-version 5.4 --tree " .. H.q(tree) ..
        " show --rock-dir relaynet"):wait(60)
      assert.equal(0, rc)
      assert.equal(rockdir .. "\n", out)
      check_command(tree .. "/bin/relaynet", tree .. "/share/lua/5.4", tree .. "/lib/lua/5.4",
        rockdir .. "/examples")
      rm(tree)
    end, { timeout = 420 })
  end)
end)

describe("luarocks make", function()
  it("installs relaynet.core, the Lua modules and the relaynet command", function()
    H.run(function()
      local tree = tmpdir()
      -- --deps-mode=none: LuaRocks 3.8 then writes a bin/relaynet wrapper that
      -- adds no path for a --tree outside its configured trees, so the
      -- command has to find its tree by itself.
      local build = H.sh(string.format(
        "cd %s && luarocks --lua-version 5.4 --tree %s make --deps-mode=none %s && rm -rf csrc/*.o relaynet",
        H.q(H.ROOT), H.q(tree), H.q(ROCKSPEC)))
      local rc, out, err = build:wait(300)
      assert.equal(0, rc, out .. err)
      -- A script outside the repository, with only the tree's paths: a
      -- server that echoes and a client of it (errors end the run too).
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
local rn = require("relaynet")
local srv = assert(rn.HttpServer.listen{port = 0, host = "127.0.0.1"})
srv:route("GET", "/", function() return "installed ok" end)
srv:on("message", function(id, msg) srv:ws_send(id, msg) end)
local body = "none"
rn.spawn(function()
  local c, err = rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/")
  if c then
    c:send("ws ok")
    body = c:receive(5) or "no echo"
    c:close_wait()
  else
    body = tostring(err)
  end
  rn.stop()
end)
rn.run()
print(package.searchpath("relaynet", package.path), body)
]])
      f:close()
      local env = CLEAN .. string.format("eval \"$(luarocks --lua-version 5.4 --tree %s path)\" && ", H.q(tree))
      rc, out, err = H.sh(env .. "lua5.4 " .. H.q(script)):wait(60)
      assert.equal(0, rc, err)
      assert.equal("", err)
      assert.equal(tree .. "/share/lua/5.4/relaynet/init.lua\tws ok\n", out)
      os.remove(script)
      check_command(tree .. "/bin/relaynet", tree .. "/share/lua/5.4", tree .. "/lib/lua/5.4",
        tree .. "/lib/luarocks/rocks-5.4/relaynet/0.1.0-1/examples")
      rm(tree)
    end, { timeout = 420 })
  end)
end)

describe("make install PREFIX=...", function()
  it("installs a command that finds its modules from any directory", function()
    H.run(function()
      local prefix = tmpdir()
      -- -o build: the core is already built (make busted built it); the
      -- spec must not rebuild it under other specs' feet.
      local rc, out, err = H.sh("cd " .. H.q(H.ROOT) .. " && make --no-print-directory -o build install PREFIX=" ..
        H.q(prefix)):wait(120)
      assert.equal(0, rc, out .. err)
      check_command(prefix .. "/bin/relaynet", prefix .. "/share/lua/5.4", prefix .. "/lib/lua/5.4",
        prefix .. "/share/relaynet/examples")
      -- The examples need no checkout either: chat.lua serves its page from
      -- next to itself.
      local f = io.open(prefix .. "/share/relaynet/examples/chat/index.html")
      assert.truthy(f)
      f:close()
      rc, out, err = H.sh("cd " .. H.q(H.ROOT) .. " && make -s --no-print-directory uninstall PREFIX=" ..
        H.q(prefix) .. " && find " .. H.q(prefix) .. " -type f"):wait(60)
      assert.equal(0, rc, err)
      assert.equal("", out)
      rm(prefix)

      -- DESTDIR stages the files; the command names PREFIX, not DESTDIR.
      local dest = tmpdir()
      rc, out, err = H.sh("cd " .. H.q(H.ROOT) .. " && make --no-print-directory -o build install " ..
        "PREFIX=/opt/relaynet-spec DESTDIR=" .. H.q(dest)):wait(120)
      assert.equal(0, rc, out .. err)
      f = assert(io.open(dest .. "/opt/relaynet-spec/bin/relaynet"))
      local text = f:read("a")
      f:close()
      assert.matches('\n  local INSTALL_PREFIX = "/opt/relaynet-spec"', text, 1, true)
      rm(dest)
    end, { timeout = 300 })
  end)
end)
