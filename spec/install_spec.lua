-- `luarocks make` installs a working module and command into a tree, and a
-- script outside the repository can require it.

local H = require("helper")

describe("luarocks make", function()
  it("installs relaynet.core, the Lua modules and the relaynet command", function()
    H.run(function()
      local tree = os.tmpname()
      os.remove(tree)
      local rockspec = H.ROOT .. "/relaynet-0.1.0-1.rockspec"
      local build = H.sh(string.format(
        "cd %s && luarocks --lua-version 5.4 --tree %s make --deps-mode=none %s && rm -rf csrc/*.o relaynet",
        H.q(H.ROOT), H.q(tree), H.q(rockspec)))
      local rc, out, err = build:wait(240)
      assert.equal(0, rc, out .. err)
      -- a script outside the repository, with only the tree's paths
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write([[
local rn = require("relaynet")
local srv = assert(rn.HttpServer.listen{port = 0, host = "127.0.0.1"})
srv:route("GET", "/", function() return "installed ok" end)
local body = "none"
rn.spawn(function()
  local c = assert(rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/"))
  c:close_wait()
  body = "ws ok"
  rn.stop()
end)
rn.run()
print(package.searchpath("relaynet", package.path), body)
]])
      f:close()
      local env = string.format("cd /tmp && unset LUA_PATH_5_4 LUA_CPATH_5_4 && " ..
        "eval \"$(luarocks --lua-version 5.4 --tree %s path)\" && ", H.q(tree))
      rc, out, err = H.sh(env .. "lua5.4 " .. H.q(script)):wait(60)
      assert.equal(0, rc, err)
      assert.equal("", err)
      assert.equal(tree .. "/share/lua/5.4/relaynet/init.lua\tws ok\n", out)
      rc, out = H.sh(env .. H.q(tree .. "/bin/relaynet") .. " --version"):wait(60)
      assert.equal(0, rc)
      assert.matches("^relaynet 0%.1%.0 %(libwebsockets 4%.1%.6, libuv [%d.]+, Lua 5%.4%)\n$", out)
      os.remove(script)
      H.sh("rm -rf " .. H.q(tree)):wait(30)
    end, { timeout = 300 })
  end)
end)
