-- spec/attack_codec_spec.lua: crafted JSON that used to corrupt the heap.
--
-- A JSON string of more than LUAL_BUFFERSIZE bytes that holds an escape and
-- ends in a decode error, nested a few objects deep, made the decoder pop a
-- grown luaL_Buffer's to-be-closed box with lua_pop (Lua 5.4.4 then set the
-- stack top from a stale pointer: "malloc(): invalid next size"). One POST
-- /rpc of ~1.2 KB killed any relaynet server. The first test decodes the
-- whole family in-process (a crash fails the run); the second sends it to a
-- real examples/echo.lua process over HTTP and WebSocket /rpc and checks
-- that it answers -32700 every time and keeps serving.

local H = require("helper")
local rn = require("relaynet")
local json = require("relaynet.json")
local harness = require("mesh_harness")

local ECHO = H.ROOT .. "/examples/echo.lua"

-- `depth` nested objects around a string of `slen` bytes with one valid
-- escape, ending in the invalid escape \x.
local function crafted(depth, slen)
  local s = string.rep("a", slen) .. "\\n" .. string.rep("b", 10) .. "\\x"
  return string.rep('{"k":', depth) .. '"' .. s .. '"' .. string.rep("}", depth)
end

describe("hostile JSON", function()
  it("decodes every crafted text to a positioned error without corrupting memory", function()
    for depth = 1, 31 do
      for _, slen in ipairs({ 900, 1100, 1500, 3000, 9000 }) do
        local text = crafted(depth, slen)
        -- Inside a coroutine, whose small stack is what the decoder grows.
        local ok, v, err = coroutine.wrap(function() return pcall(json.decode, text) end)()
        assert.is_true(ok)
        assert.is_nil(v)
        local at = 5 * depth + 1 + slen + 2 + 10 + 1
        assert.equal("invalid escape in a string at character " .. at, err)
      end
    end
    -- The other error paths of a grown buffer: raw control character,
    -- bad \u, unpaired surrogate, unterminated string.
    local long = string.rep("z", 2000) .. "\\t"
    for _, tail in ipairs({ "\1", "\\u12G4", "\\ud800x", "\\udc00", "" }) do
      local text = string.rep("[", 20) .. '"' .. long .. tail
      local ok, v, err = coroutine.wrap(function() return pcall(json.decode, text) end)()
      assert.is_true(ok)
      assert.is_nil(v)
      assert.is_string(err)
    end
  end)

  it("answers a real server's /rpc with -32700 every time and keeps serving", function()
    H.run(function()
      local port = harness.free_ports(1)[1]
      local server = H.sh("exec lua5.4 " .. H.q(ECHO) .. " " .. port)
      local ok, err = pcall(function()
        local deadline = rn.now() + 20
        while not H.curl("http://127.0.0.1:" .. port .. "/") do
          assert(rn.now() < deadline, "echo server did not start")
          rn.sleep(0.1)
        end
        local bodies = {}
        for depth = 6, 14 do bodies[#bodies + 1] = crafted(depth, 1100) end
        local file = os.tmpname()
        local f = assert(io.open(file, "wb"))
        f:write(json.encode(json.array(bodies)))
        f:close()
        local py = table.concat({
          "import json, sys, http.client, asyncio, websockets",
          "bodies = json.load(open(sys.argv[2]))",
          "port = int(sys.argv[1])",
          "codes = []",
          "c = http.client.HTTPConnection('127.0.0.1', port, timeout=20)",
          "for b in bodies:",
          "    c.request('POST', '/rpc', body=b.encode(), headers={'Content-Type': 'application/json'})",
          "    r = c.getresponse()",
          "    codes.append(json.loads(r.read())['error']['code'])",
          "async def ws():",
          "    async with websockets.connect('ws://127.0.0.1:%d/rpc' % port) as w:",
          "        for b in bodies:",
          "            await w.send(b)",
          "            codes.append(json.loads(await asyncio.wait_for(w.recv(), 20))['error']['code'])",
          "asyncio.run(ws())",
          "print(json.dumps(codes))",
        }, "\n")
        local rc, out, perr = H.sh(H.PY .. " -c " .. H.q(py) .. " " .. port .. " " .. H.q(file)):wait(90)
        os.remove(file)
        assert.equal(0, rc, perr)
        local codes = json.decode(out)
        assert.equal(2 * #bodies, #codes)
        for _, code in ipairs(codes) do assert.equal(-32700, code) end
        local status = H.curl("http://127.0.0.1:" .. port .. "/")
        assert.equal(200, status)
      end)
      server:kill()
      assert(ok, err)
    end, { timeout = 150 })
  end)
end)
