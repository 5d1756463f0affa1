-- Graceful shutdown of a real process: SIGTERM/SIGINT close every WebSocket
-- with 1001, finish in-flight HTTP responses, free everything, exit 0.

local rn = require("relaynet")
local H = require("helper")

local SERVER = [[
local rn = require("relaynet")
local srv = assert(rn.HttpServer.listen{port = 0, host = "127.0.0.1"})
srv:route("GET", "/slow", function() rn.sleep(0.5); return 200, "slow done" end)
srv:on("message", function(id, msg) srv:ws_send(id, msg) end)
local f = assert(io.open(arg[1], "w"))
f:write(srv.port)
f:close()
]]

local function start(signal)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. H.q(dir))
  local script, portfile = dir .. "/server.lua", dir .. "/port"
  local f = assert(io.open(script, "w"))
  f:write(SERVER)
  f:close()
  -- --log-level warn: the spec reads stderr for errors and tracebacks only
  local proc = H.sh(H.q(H.ROOT .. "/bin/relaynet") .. " " .. H.q(script) .. " " .. H.q(portfile) ..
    " --log-level warn")
  local port
  for _ = 1, 200 do
    local p = io.open(portfile)
    if p then port = tonumber(p:read("a")); p:close() end
    if port then break end
    rn.sleep(0.02)
  end
  assert(port, "server did not start")
  return proc, port, function()
    -- only the Lua process, not the sh wrapper that records the exit code
    os.execute("pkill -" .. signal .. " -f " .. H.q("^lua5.4 .*bin/relaynet " .. script))
  end, dir
end

local PY_CLIENT = [[
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        print("ready", flush=True)
        open(sys.argv[2], "w").close()
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as e:
            print(e.code, e.reason)
asyncio.run(main())
]]

for _, signal in ipairs({ "TERM", "INT" }) do
  describe("SIG" .. signal, function()
    it("closes WebSockets with 1001, finishes in-flight HTTP and exits 0", function()
      H.run(function()
        local proc, port, kill, dir = start(signal)
        local py = dir .. "/client.py"
        local f = assert(io.open(py, "w"))
        f:write(PY_CLIENT)
        f:close()
        local ready = dir .. "/ready"
        local client = H.sh(H.PY .. " " .. H.q(py) .. " ws://127.0.0.1:" .. port .. "/ " .. H.q(ready))
        for _ = 1, 500 do
          local r = io.open(ready)
          if r then r:close(); break end
          rn.sleep(0.02)
        end
        local slow = H.sh("curl -s -S -m 10 http://127.0.0.1:" .. port .. "/slow")
        rn.sleep(0.2) -- /slow is now inside its handler
        kill()
        local rc, out, err = client:wait(20)
        assert.equal(0, rc, err)
        assert.equal("ready\n1001 server closing\n", out)
        rc, out, err = slow:wait(20)
        assert.equal(0, rc, err)
        assert.equal("slow done", out)
        rc, out, err = proc:wait(20)
        assert.equal(0, rc, err)
        assert.equal("", out)
        assert.equal("", err)
        os.execute("rm -rf " .. H.q(dir))
      end, { timeout = 60 })
    end)
  end)
end
