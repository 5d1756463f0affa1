-- spec/fuzz_regressions_spec.lua: replays fuzz/regressions/ through the
-- normal build (docs/FUZZING.md).
--
-- fuzz/regressions/<harness>/ keeps every input that ever made a fuzz
-- harness fail. Here each one goes through the same entry point as in its
-- harness, but with relaynet.core as `make build` makes it and no
-- sanitizer: the process must survive and every error must be a clean one
-- (nil plus a message, or a JSON-RPC error response), never a raise.
--   json_decode, json_roundtrip: relaynet.json decode (and encode back);
--   http_request: http.parse_args/match/static_path and jsonrpc.handle;
--   ws_receive: the fragments sent as real frames to a real server socket
--   (fuzz/replay_ws.py), which must keep answering afterwards.

local H = require("helper")
local rn = require("relaynet")
local json = require("relaynet.json")
local http = require("relaynet.http")
local jsonrpc = require("relaynet.jsonrpc")

local DIR = H.ROOT .. "/fuzz/regressions"

local function files(harness)
  local list = {}
  local p = io.popen("find " .. H.q(DIR .. "/" .. harness) .. " -type f 2>/dev/null | sort")
  for line in p:lines() do list[#list + 1] = line end
  p:close()
  return list
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Runs fn in a fresh coroutine, as the runtime runs handlers (a small stack
-- that the decoder has to grow: the issue 8 crash needed that).
local function in_coroutine(fn, ...)
  return coroutine.wrap(function(...) return pcall(fn, ...) end)(...)
end

describe("fuzz regressions", function()
  it("holds the issue 8 decoder crash input", function()
    local list = files("json_decode")
    local found = false
    for _, f in ipairs(list) do
      if f:find("issue8", 1, true) then found = true end
    end
    assert.is_true(found, "fuzz/regressions/json_decode/issue8-* is missing")
  end)

  it("json_decode: every input decodes to a value or a clean error", function()
    for _, f in ipairs(files("json_decode")) do
      local text = slurp(f)
      local ok, v, err = in_coroutine(json.decode, text)
      assert(ok, f .. ": decode raised: " .. tostring(v))
      if v == nil then assert(type(err) == "string", f .. ": no error message") end
    end
  end)

  it("json_roundtrip: decode, encode and decode again agree", function()
    for _, f in ipairs(files("json_roundtrip")) do
      local ok, v = in_coroutine(json.decode, slurp(f))
      assert(ok, f .. ": decode raised")
      if v ~= nil then
        local e1 = assert(json.encode(v), f .. ": encode failed")
        local v2 = assert(json.decode(e1), f .. ": the encoding does not decode")
        assert.equal(e1, json.encode(v2), f)
      end
    end
  end)

  it("http_request: the router and JSON-RPC answer cleanly", function()
    local saved = jsonrpc.mesh
    jsonrpc.mesh = {
      node_id = function() return "regress" end,
      remote_call = function(_, _, _, args) return { args = args } end,
      status = function() return {} end, registry = function() return {} end,
      peers = function() return json.array() end, routes = function() return {} end,
    }
    local routes = http.new_routes()
    http.add_route(routes, "POST", "/rpc", function() end)
    local ok, err = pcall(function()
      for _, f in ipairs(files("http_request")) do
        local data = slurp(f)
        local path, query, body = data:sub(2):match("^([^\n]*)\n?([^\n]*)\n?(.*)$")
        local t = http.parse_args((query or "") .. "\0")
        assert(type(t) == "table", f)
        http.match(routes, "POST", path or "/")
        if path and path:sub(1, 8) == "/static/" then
          local p = http.static_path("/srv/www", "/static/", path)
          assert(p == nil or (p:sub(1, 9) == "/srv/www/" and not p:find("/%.%./")), f)
        end
        local handled, out = in_coroutine(jsonrpc.handle, body or "", nil)
        assert(handled, f .. ": jsonrpc.handle raised: " .. tostring(out))
        assert(out == nil or json.decode(out), f .. ": the response is not JSON")
      end
    end)
    jsonrpc.mesh = saved
    assert(ok, err)
  end)

  it("ws_receive: a real server survives every fragment sequence", function()
    local list = files("ws_receive")
    if #list == 0 then return end
    H.run(function()
      local srv = H.listen()
      srv:on("message", function(id, msg, bin) srv:ws_send(id, msg, bin) end)
      for _, f in ipairs(list) do
        local rc, out, err = H.sh(H.PY .. " " .. H.q(H.ROOT .. "/fuzz/replay_ws.py") .. " 127.0.0.1 "
          .. srv.port .. " " .. H.q(f)):wait(30)
        assert(rc == 0, f .. ": " .. tostring(out) .. tostring(err))
      end
      -- Still serving: a fresh connection gets its message back. (The
      -- replays end with a close frame right behind their last fragment,
      -- so their own messages are not echoed: nothing may follow the
      -- close reply.)
      local c = assert(rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/"))
      assert(c:send("still here"))
      assert.equal("still here", (c:receive(5)))
      c:close_wait()
      srv:close()
    end, { timeout = 120 })
  end)
end)
