-- spec/jsonrpc_spec.lua: JSON-RPC 2.0 (relaynet.jsonrpc) over POST /rpc and
-- WebSocket /rpc of a plain mesh-enabled server, driven by clients nobody
-- here wrote: curl, python3 http.client and python3-websockets
-- (spec/support/rpc_client.py). Every response is compared byte for byte.
-- The last block runs real node processes (bin/relaynet) for remote_call.

local H = require("helper")
local rn = require("relaynet")
local json = require("relaynet.json")
local jsonrpc = require("relaynet.jsonrpc")

local RPC_CLIENT = H.ROOT .. "/spec/support/rpc_client.py"
local RELAYNET = H.ROOT .. "/bin/relaynet"
local NODE = "rpc-t1" -- this process's node id in these tests

-- helpers -----------------------------------------------------------------------

local function tmpfile(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

local function http_url(srv) return "http://127.0.0.1:" .. srv.port .. "/rpc" end
local function ws_url(srv) return "ws://127.0.0.1:" .. srv.port .. "/rpc" end

-- Runs rpc_client.py; returns its decoded JSON line.
local function py(mode, url, cases)
  local file = tmpfile(assert(json.encode(json.array(cases))))
  local rc, out, err = H.sh(table.concat({ H.PY, H.q(RPC_CLIENT), mode, H.q(url), H.q(file) }, " ")):wait(90)
  os.remove(file)
  assert(rc == 0, "rpc_client " .. mode .. " exited with " .. tostring(rc) .. ": " .. err)
  local line = out:match("[^\n]+")
  local res, derr = json.decode(line or "")
  assert(type(res) == "table", "rpc_client " .. mode .. " printed no JSON (" .. tostring(derr) .. "): " .. out .. err)
  assert(res.error == nil, "rpc_client " .. mode .. " failed: " .. tostring(res.error) .. "\n" .. err)
  return res
end

-- POSTs body with curl: status, content type, body.
local function curl_post(url, body)
  local file = tmpfile(body)
  local rc, out, err = H.sh("curl -s -S -m 30 -X POST -H 'Content-Type: application/json' --data-binary @" ..
    H.q(file) .. " -w '\\n%{content_type}\\n%{http_code}' " .. H.q(url)):wait(40)
  os.remove(file)
  assert(rc == 0, "curl failed: " .. err)
  local resp, ctype, status = out:match("^(.*)\n([^\n]*)\n(%d+)$")
  return tonumber(status), ctype, resp
end

-- Expected response texts. `id` and `result` are JSON texts.
local function R(id, result)
  return '{"jsonrpc":"2.0","id":' .. id .. ',"result":' .. result .. "}"
end

local function E(id, code, message, data)
  return '{"jsonrpc":"2.0","id":' .. id .. ',"error":{"code":' .. code .. ',"message":' ..
    assert(json.encode(message)) .. (data and (',"data":' .. data) or "") .. "}}"
end

-- A mesh error as the mesh reports it: the code string goes to error.data.code.
local function ME(id, code, name, message)
  return E(id, code, message, '{"code":"' .. name .. '"}')
end

-- -32601 for a server.method call this node cannot serve: data says why.
local function NF(id, method, name, message)
  return E(id, -32601, "Method not found: " .. method,
    '{"code":"' .. name .. '","message":' .. assert(json.encode(message)) .. '}')
end

local function batch(list) return "[" .. table.concat(list, ",") .. "]" end

local function call(id, method, params)
  return '{"jsonrpc":"2.0",' .. (id and ('"id":' .. id .. ",") or "") .. '"method":"' .. method .. '"' ..
    (params and (',"params":' .. params) or "") .. "}"
end

local function notify(method, params) return call(nil, method, params) end

local function show(s) return string.format("%q", s) end

--- Sends every case over three clients, in order, and compares each response
--- with case.expect (nil: no response at all, i.e. HTTP 204 with an empty
--- body and no WebSocket message). case.only = "curl" sends it with curl
--- only (texts that are not valid UTF-8 cannot go in a WebSocket text
--- message), case.only = "ws" over WebSocket only. A case list should start
--- by resetting the state it depends on.
local function check_cases(srv, cases)
  local py_cases, ws_steps, py_index, ws_index = {}, {}, {}, {}
  for i, c in ipairs(cases) do
    if c.only == nil then
      py_cases[#py_cases + 1] = c.send
      py_index[#py_index + 1] = i
    end
    if c.only == nil or c.only == "ws" then
      ws_steps[#ws_steps + 1] = { send = c.send, expect = c.expect and 1 or 0 }
      ws_index[#ws_index + 1] = i
    end
  end
  -- python3 http.client, one keep-alive connection
  local res = py("http", http_url(srv), py_cases)
  for k, r in ipairs(res.results) do
    local c = cases[py_index[k]]
    local what = "http.client: " .. (c.name or show(c.send))
    if c.expect then
      assert.are.equal(200, r.status, what)
      assert.are.equal("application/json", r.content_type, what)
      assert.are.equal(c.expect, r.body, what)
    else
      assert.are.equal(204, r.status, what)
      assert.are.equal("", r.body, what)
    end
  end
  assert.are.equal(#py_cases, #res.results)
  -- python3-websockets, one connection
  res = py("ws", ws_url(srv), ws_steps)
  for k, got in ipairs(res.results) do
    local c = cases[ws_index[k]]
    local what = "websocket: " .. (c.name or show(c.send))
    if c.expect then
      assert.are.same({ c.expect }, got, what)
    else
      assert.are.same({}, got, what)
    end
  end
  assert.are.equal(#ws_steps, #res.results)
  assert.are.same({}, res.extra, "websocket: messages nobody asked for")
  -- curl, one process per request
  for _, c in ipairs(cases) do
    if c.only ~= "ws" then
      local what = "curl: " .. (c.name or show(c.send))
      local status, ctype, body = curl_post(http_url(srv), c.send)
      if c.expect then
        assert.are.equal(200, status, what)
        assert.are.equal("application/json", ctype, what)
        assert.are.equal(c.expect, body, what)
      else
        assert.are.equal(204, status, what)
        assert.are.equal("", body, what)
      end
    end
  end
end

-- Servers exposed on this node by the tests; withdrawn by `finally`.
local counter_value = 0
local gate_open = false

local LOCAL_SERVERS = {
  counter = {
    increment = function(n)
      if n == nil then n = 1 end
      if math.type(n) ~= "integer" then error("increment: n must be an integer", 0) end
      counter_value = counter_value + n
      return counter_value
    end,
    get = function() return counter_value end,
    reset = function() counter_value = 0; return 0 end,
  },
  echo = {
    same = function(...) return ... end,        -- one value -> it, several -> an array
    none = function() end,                        -- no value -> null
    count = function(...) return select("#", ...) end,
  },
  thrower = {
    fail = function() error("kaboom", 0) end,
    fail_here = function() error("kaboom with a position") end,
  },
  sleeper = {
    nap = function(s) rn.sleep(s); return "rested" end,
  },
  gate = {
    close = function() gate_open = false; return false end,
    open = function() gate_open = true; return true end,
    wait = function()
      for _ = 1, 500 do
        if gate_open then return "opened" end
        rn.sleep(0.01)
      end
      return "still closed"
    end,
  },
  bad = {
    fn = function() return print end,
    nan = function() return 0 / 0 end,
    utf8 = function() return "caf\233" end,
    cycle = function() local t = {}; t.self = t; return t end,
  },
}

local function expose_local()
  rn.set_node_id(NODE)
  for name, methods in pairs(LOCAL_SERVERS) do rn.expose(name, methods) end
  finally(function()
    for name in pairs(LOCAL_SERVERS) do rn.unexpose(name) end
  end)
end

-- Errors reported through rn.on_error must all match one of `patterns`.
local function only_reported(errors, patterns)
  for _, e in ipairs(errors) do
    local known = false
    for _, p in ipairs(patterns) do
      if e:find(p, 1, true) then known = true end
    end
    assert(known, "unexpected error reported: " .. e)
  end
end

-- this node -----------------------------------------------------------------------

describe("JSON-RPC 2.0 on this node", function()
  it("exports the limits and the error codes", function()
    assert.are.same({ max_request = 1024 * 1024, max_batch = 100, max_depth = 32,
      max_calls_per_connection = 256, max_calls_per_address = 512 }, jsonrpc.LIMITS)
    assert.are.same({
      PARSE_ERROR = -32700, INVALID_REQUEST = -32600, METHOD_NOT_FOUND = -32601,
      INVALID_PARAMS = -32602, INTERNAL_ERROR = -32603,
      ETIMEDOUT = -32000, ENOROUTE = -32001, ENOSERVER = -32002, ENOMETHOD = -32003,
      EREMOTE = -32004, ELINKLOST = -32005, ETTL = -32006, ECANCELED = -32007, EBUSY = -32008,
      EACCES = -32009, ELIMIT = -32010,
      EINVAL = -32602,
    }, jsonrpc.ERRORS)
  end)

  it("calls servers exposed here as \"server.method\" and echoes every kind of id exactly", function()
    expose_local()
    H.run(function()
      local srv = H.listen {}
      check_cases(srv, {
        { send = call(0, "counter.reset"), expect = R(0, 0) },
        { name = "array params", send = call(1, "counter.increment", "[5]"), expect = R(1, 5) },
        { name = "no params", send = call(2, "counter.increment"), expect = R(2, 6) },
        { name = "empty array params", send = call(3, "counter.increment", "[]"), expect = R(3, 7) },
        { name = "string id", send = call('"abc-1"', "counter.get"), expect = R('"abc-1"', 7) },
        { name = "string id with escapes", send = call('"q\\"\\\\\\u00e9\\n"', "counter.get"),
          expect = R('"q\\"\\\\\195\169\\n"', 7) },
        { name = "integer id 1 stays 1", send = call("1", "counter.get"), expect = R("1", 7) },
        { name = "large integer id", send = call("9007199254740991", "counter.get"),
          expect = R("9007199254740991", 7) },
        { name = "negative id", send = call("-42", "counter.get"), expect = R("-42", 7) },
        { name = "fractional id", send = call("1.5", "counter.get"), expect = R("1.5", 7) },
        { name = "null id", send = call("null", "counter.get"), expect = R("null", 7) },
        -- 1.0 and 1 are the same JSON number; relaynet.json reads it as the integer 1
        { name = "1.0 id", send = call("1.0", "counter.get"), expect = R("1", 7) },
        { name = "an object in an array is one argument", send = call(4, "echo.same", '[{"a":1,"b":[true,null]}]'),
          expect = R(4, '{"a":1,"b":[true,null]}') },
        { name = "[] and {} are told apart", send = call(5, "echo.same", "[[],{},[[]],{\"e\":[ ]}]"),
          expect = R(5, '[[],{},[[]],{"e":[]}]') },
        { name = "[{}] params", send = call(6, "echo.count", "[{}]"), expect = R(6, 1) },
        { name = "[] params", send = call(7, "echo.count", "[]"), expect = R(7, 0) },
        { name = "null arguments", send = call(8, "echo.count", "[null,null]"), expect = R(8, 2) },
        { name = "no result is null", send = call(9, "echo.none"), expect = R(9, "null") },
        { name = "several results are an array", send = call(10, "echo.same", '[1,"two",3.25]'),
          expect = R(10, '[1,"two",3.25]') },
        { name = "exact integers in results", send = call(11, "echo.same", "[9007199254740991,-9007199254740991]"),
          expect = R(11, "[9007199254740991,-9007199254740991]") },
        { name = "unicode", send = call(12, "echo.same", '["h\195\169llo \240\157\132\158","\\ud834\\udd1e"]'),
          expect = R(12, '["h\195\169llo \240\157\132\158","\240\157\132\158"]') },
        { name = "extra members are ignored", send = '{"jsonrpc":"2.0","id":13,"method":"counter.get","x":1}',
          expect = R(13, 7) },
        { name = "member order does not matter", send = '{"params":[1],"method":"counter.increment","id":14,' ..
          '"jsonrpc":"2.0"}', expect = R(14, 8) },
        { name = "whitespace", send = ' \n{ "jsonrpc" : "2.0" ,\t"id" : 15 , "method" : "counter.get" }\r\n ',
          expect = R(15, 8) },
      })
    end)
  end)

  it("p2p.peer.getStatus, p2p.registry, p2p.peers and p2p.routes", function()
    expose_local()
    H.run(function()
      local srv = H.listen {}
      check_cases(srv, {
        { send = call(1, "p2p.peers"), expect = R(1, "[]") },
        { send = call(2, "p2p.routes"), expect = R(2, "[]") },
        { send = call(3, "p2p.peers", "[]"), expect = R(3, "[]") },
        { send = call(4, "p2p.routes", "{}"), expect = R(4, "[]") },
        { send = call(5, "p2p.peers", "[1]"), expect = E(5, -32602, "Invalid params: p2p.peers takes no params") },
        { send = call(6, "p2p.registry", '{"a":1}'),
          expect = E(6, -32602, "Invalid params: p2p.registry takes no params") },
        { send = call(7, "p2p.peer.getStatus", "[0]"),
          expect = E(7, -32602, "Invalid params: p2p.peer.getStatus takes no params") },
      })
      local res = py("http", http_url(srv), { call(1, "p2p.registry"), call(2, "p2p.peer.getStatus") }).results
      local registry = json.decode(res[1].body)
      assert.are.equal("2.0", registry.jsonrpc)
      assert.are.equal(1, registry.id)
      local names = {}
      for _, e in ipairs(registry.result) do
        assert.are.equal(NODE, e.node)
        assert.are.equal(0, e.hops)
        assert.is_true(e["local"])
        names[#names + 1] = e.server
      end
      assert.are.same({ "bad", "counter", "echo", "gate", "sleeper", "thrower" }, names)
      local status = json.decode(res[2].body)
      assert.are.equal(2, status.id)
      assert.are.equal(NODE, status.result.node_id)
      assert.is_true(status.result.enabled)
      assert.are.same({ "bad", "counter", "echo", "gate", "sleeper", "thrower" }, status.result.servers)
      assert.are.same({}, status.result.peers)
      assert.are.equal("number", type(status.result.stats.calls_served))
      -- the status as GET /status has it (minus the clock)
      local rc, out = H.sh("curl -s -S -m 10 " .. H.q("http://127.0.0.1:" .. srv.port .. "/status")):wait(15)
      assert.are.equal(0, rc)
      local direct = json.decode(out)
      assert.are.equal(NODE, direct.node_id)
      assert.are.same(status.result.servers, direct.servers)
    end)
  end)

  it("answers -32700 for text that is not JSON", function()
    H.run(function()
      local srv = H.listen {}
      local deep32 = string.rep("[", 32) .. string.rep("]", 32)
      local deep33 = string.rep("[", 33) .. string.rep("]", 33)
      check_cases(srv, {
        { name = "empty", send = "", only = "ws", -- over HTTP: the next test
          expect = E("null", -32700, "Parse error: expected a value but the text ended at character 1") },
        { name = "truncated", send = '{"jsonrpc":"2.0","id":1,"method":"echo.same"',
          expect = E("null", -32700, "Parse error: expected ',' or '}' at character 45") },
        { name = "a bare word", send = "hello",
          expect = E("null", -32700, "Parse error: expected a value at character 1") },
        { name = "trailing garbage", send = call(1, "echo.none") .. "x",
          expect = E("null", -32700, "Parse error: unexpected text after the value at character 46") },
        { name = "two values", send = call(1, "echo.none") .. call(2, "echo.none"),
          expect = E("null", -32700, "Parse error: unexpected text after the value at character 46") },
        { name = "trailing comma", send = '{"jsonrpc":"2.0","id":1,"method":"echo.none",}',
          expect = E("null", -32700, "Parse error: expected a string key at character 46") },
        { name = "single quotes", send = "{'jsonrpc':'2.0'}",
          expect = E("null", -32700,
            "Parse error: expected a string key at character 2") },
        { name = "NaN", send = call(1, "echo.same", "[NaN]"),
          expect = E("null", -32700, "Parse error: expected a value at character 56") },
        { name = "lone surrogate", send = call(1, "echo.same", '["\\ud800"]'),
          expect = E("null", -32700,
            "Parse error: unpaired surrogate in a \\u escape at character 57") },
        { name = "raw control character in a string", send = '{"jsonrpc":"2.0","id":"a\1b","method":"echo.none"}',
          expect = E("null", -32700, "Parse error: raw control character in a string at character 25") },
        { name = "raw newline in a string", send = '{"jsonrpc":"2.0","id":"a\nb","method":"echo.none"}',
          expect = E("null", -32700, "Parse error: raw control character in a string at character 25") },
        { name = "the id of a broken text is unknown", send = '{"jsonrpc":"2.0","id":7,"method":"x.y",,}',
          expect = E("null", -32700, "Parse error: expected a string key at character 40") },
        { name = "nesting of 32 levels is fine", send = deep32,
          expect = batch({ E("null", -32600, "Invalid Request: expected a request object") }) },
        { name = "nesting of 33 levels", send = deep33,
          expect = E("null", -32700, "Parse error: nesting deeper than 32 levels") },
        { name = "too deep inside params", send = call(1, "echo.same", string.rep("[", 32) .. string.rep("]", 32)),
          expect = E("null", -32700, "Parse error: nesting deeper than 32 levels") },
        { name = "not valid UTF-8", send = call('"caf\233"', "echo.none"), only = "curl",
          expect = E("null", -32700, "Parse error: the text is not valid UTF-8") },
        { name = "overlong UTF-8", send = call('"\192\175"', "echo.none"), only = "curl",
          expect = E("null", -32700, "Parse error: the text is not valid UTF-8") },
      })
    end)
  end)

  -- A POST with an empty body (Content-Length: 0) currently reaches the
  -- route handler twice (csrc/rn_server.c readies it in rn__http_begin and
  -- again at LWS_CALLBACK_HTTP_BODY_COMPLETION); the second answer raises
  -- "this request was already answered", which H.run reports.
  it("answers -32700 to an empty HTTP body, once", function()
    H.run(function()
      local srv = H.listen {}
      local empty = E("null", -32700, "Parse error: expected a value but the text ended at character 1")
      local status, ctype, body = curl_post(http_url(srv), "")
      assert.are.equal(200, status)
      assert.are.equal("application/json", ctype)
      assert.are.equal(empty, body)
      local res = py("http", http_url(srv), { "", call(1, "p2p.peers") }).results
      assert.are.same({ status = 200, content_type = "application/json", length = #empty, body = empty }, res[1])
      assert.are.equal(R(1, "[]"), res[2].body)
    end)
  end)

  it("answers -32600 for invalid requests, with the id when it is valid", function()
    H.run(function()
      local srv = H.listen {}
      local BAD_OBJECT = "Invalid Request: expected a request object"
      local BAD_VERSION = 'Invalid Request: \'jsonrpc\' must be "2.0"'
      local BAD_METHOD = "Invalid Request: 'method' must be a string"
      local BAD_PARAMS = "Invalid Request: 'params' must be an array or an object"
      local BAD_ID = "Invalid Request: 'id' must be a string, a number or null"
      check_cases(srv, {
        { send = "1", expect = E("null", -32600, BAD_OBJECT) },
        { send = '"text"', expect = E("null", -32600, BAD_OBJECT) },
        { send = "null", expect = E("null", -32600, BAD_OBJECT) },
        { send = "true", expect = E("null", -32600, BAD_OBJECT) },
        { send = "{}", expect = E("null", -32600, BAD_VERSION) },
        { send = "[]", expect = E("null", -32600, "Invalid Request: empty batch") },
        { send = " [ \n ] ", expect = E("null", -32600, "Invalid Request: empty batch") },
        { send = '{"id":1,"method":"echo.none"}', expect = E(1, -32600, BAD_VERSION) },
        { send = '{"jsonrpc":"1.0","id":2,"method":"echo.none"}', expect = E(2, -32600, BAD_VERSION) },
        { send = '{"jsonrpc":2.0,"id":3,"method":"echo.none"}', expect = E(3, -32600, BAD_VERSION) },
        { send = '{"jsonrpc":"2.0 ","id":4,"method":"echo.none"}', expect = E(4, -32600, BAD_VERSION) },
        { send = '{"jsonrpc":"2.0","id":"m"}', expect = E('"m"', -32600, BAD_METHOD) },
        { send = '{"jsonrpc":"2.0","id":5,"method":5}', expect = E(5, -32600, BAD_METHOD) },
        { send = '{"jsonrpc":"2.0","id":6,"method":null}', expect = E(6, -32600, BAD_METHOD) },
        { send = call(7, "echo.none", '"bar"'), expect = E(7, -32600, BAD_PARAMS) },
        { send = call(8, "echo.none", "5"), expect = E(8, -32600, BAD_PARAMS) },
        { send = call(9, "echo.none", "null"), expect = E(9, -32600, BAD_PARAMS) },
        { send = call(10, "echo.none", "false"), expect = E(10, -32600, BAD_PARAMS) },
        { send = call("true", "echo.none"), expect = E("null", -32600, BAD_ID) },
        { send = call("{}", "echo.none"), expect = E("null", -32600, BAD_ID) },
        { send = call("[1]", "echo.none"), expect = E("null", -32600, BAD_ID) },
        { name = "an id beyond the double range", send = call("1e400", "echo.none"),
          expect = E("null", -32700, "Parse error: number out of range at character 23") },
        -- an invalid request is answered even without an id (spec examples)
        { send = '{"jsonrpc":"2.0","method":1,"params":"bar"}', expect = E("null", -32600, BAD_METHOD) },
        { send = '{"jsonrpc":"1.0","method":"echo.none"}', expect = E("null", -32600, BAD_VERSION) },
        { send = '{"jsonrpc":"2.0","method":"echo.none","params":7}', expect = E("null", -32600, BAD_PARAMS) },
      })
    end)
  end)

  it("answers -32601, -32602 and the mesh errors of local calls", function()
    expose_local()
    local errors = H.run(function()
      local srv = H.listen {}
      local q = function(s) return '"' .. s .. '"' end
      local NODE_ID = "Invalid params: 'node_id' must be a non-empty string"
      local SERVER = "Invalid params: 'server_name' must be a non-empty string"
      local METHOD = "Invalid params: 'method' must be a non-empty string"
      local ARGS = "Invalid params: 'args' must be an array"
      local TIMEOUT = "Invalid params: 'timeout' must be a positive number of seconds"
      check_cases(srv, {
        -- -32601
        { send = call(1, "nosuchmethod"), expect = E(1, -32601, "Method not found: nosuchmethod") },
        { send = call(2, "rpc.discover"), expect = E(2, -32601, "Method not found: rpc.discover") },
        { send = call(3, "p2p.nothing"), expect = E(3, -32601, "Method not found: p2p.nothing") },
        { send = call(4, ".get"), expect = E(4, -32601, "Method not found: .get") },
        { send = call(5, "counter."), expect = E(5, -32601, "Method not found: counter.") },
        { send = call(6, ""), expect = E(6, -32601, "Method not found: ") },
        { send = call(7, "Remote_call"), expect = E(7, -32601, "Method not found: Remote_call") },
        -- remote_call to this node, by name and by position
        { send = call(10, "remote_call",
            '{"node_id":"' .. NODE .. '","server_name":"echo","method":"same","args":[7]}'),
          expect = R(10, 7) },
        { send = call(11, "remote_call", '["' .. NODE .. '","echo","same",[7,"x"]]'), expect = R(11, '[7,"x"]') },
        { send = call(12, "remote_call", '["' .. NODE .. '","echo","count",null,5]'), expect = R(12, 0) },
        { send = call(13, "remote_call", '["' .. NODE .. '","echo","count",[],0.5]'), expect = R(13, 0) },
        { send = call(14, "remote_call", '{"node_id":"' .. NODE .. '","server_name":"echo","method":"count",' ..
          '"args":null,"timeout":null}'), expect = R(14, 0) },
        -- -32602: each param checked before the mesh sees it
        { send = call(20, "remote_call"), expect = E(20, -32602, NODE_ID) },
        { send = call(21, "remote_call", "{}"), expect = E(21, -32602, NODE_ID) },
        { send = call(22, "remote_call", "[]"), expect = E(22, -32602, NODE_ID) },
        { send = call(23, "remote_call", '[5,"echo","same"]'), expect = E(23, -32602, NODE_ID) },
        { send = call(24, "remote_call", '["","echo","same"]'), expect = E(24, -32602, NODE_ID) },
        { send = call(25, "remote_call", '["n",null,"same"]'), expect = E(25, -32602, SERVER) },
        { send = call(26, "remote_call", '{"node_id":"n","server_name":["echo"],"method":"same"}'),
          expect = E(26, -32602, SERVER) },
        { send = call(27, "remote_call", '["n","echo"]'), expect = E(27, -32602, METHOD) },
        { send = call(28, "remote_call", '["n","echo",true]'), expect = E(28, -32602, METHOD) },
        { send = call(29, "remote_call", '["n","echo","same","x"]'), expect = E(29, -32602, ARGS) },
        { send = call(30, "remote_call", '["n","echo","same",{}]'), expect = E(30, -32602, ARGS) },
        { send = call(31, "remote_call", '["n","echo","same",{"1":2}]'), expect = E(31, -32602, ARGS) },
        { send = call(32, "remote_call", '["n","echo","same",5]'), expect = E(32, -32602, ARGS) },
        { send = call(33, "remote_call", '["n","echo","same",[],0]'), expect = E(33, -32602, TIMEOUT) },
        { send = call(34, "remote_call", '["n","echo","same",[],-1]'), expect = E(34, -32602, TIMEOUT) },
        { send = call(35, "remote_call", '["n","echo","same",[],"5"]'), expect = E(35, -32602, TIMEOUT) },
        { send = call(36, "remote_call", '["n","echo","same",[],1e400]'),
          expect = E("null", -32700, "Parse error: number out of range at character 80") },
        { send = call(37, "remote_call", '["n","echo","same",[],1,"extra"]'),
          expect = E(37, -32602, "Invalid params: remote_call takes at most 5 params, got 6") },
        { send = call(38, "remote_call", '{"node_id":"n","server":"echo","method":"same"}'),
          expect = E(38, -32602, "Invalid params: unknown param 'server'") },
        -- mesh errors of calls on this node
        -- a server or method this node does not have: -32601, and which in data
        { send = call(40, "nothere.get"),
          expect = NF(40, "nothere.get", "ENOSERVER", "ENOSERVER: no server 'nothere' on node " .. NODE) },
        { send = call(41, "counter.nothere"),
          expect = NF(41, "counter.nothere", "ENOMETHOD", "ENOMETHOD: server 'counter' on node " .. NODE ..
            " has no method 'nothere'") },
        { send = call(42, "counter._private"),
          expect = NF(42, "counter._private", "ENOMETHOD", "ENOMETHOD: server 'counter' on node " .. NODE ..
            " has no method '_private'") },
        { send = call(48, "nope.nothing", "[]"),
          expect = NF(48, "nope.nothing", "ENOSERVER", "ENOSERVER: no server 'nope' on node " .. NODE) },
        -- named params: a Lua method's parameters have no names
        { send = call(49, "counter.increment", '{"n":5}'),
          expect = E(49, -32602, "Invalid params: counter.increment takes its params by position (a JSON array), " ..
            "not by name") },
        { send = call(50, "echo.count", "{}"),
          expect = E(50, -32602, "Invalid params: echo.count takes its params by position (a JSON array), " ..
            "not by name") },
        { send = call(43, "thrower.fail"),
          expect = ME(43, -32004, "EREMOTE", "EREMOTE: thrower.fail on node " .. NODE .. " raised: kaboom") },
        { send = call(44, "counter.increment", '["x"]'),
          expect = ME(44, -32004, "EREMOTE", "EREMOTE: counter.increment on node " .. NODE ..
            " raised: increment: n must be an integer") },
        { send = call(45, "remote_call", '["' .. NODE .. '","sleeper","nap",[2],0.05]'),
          expect = ME(45, -32000, "ETIMEDOUT", "ETIMEDOUT: sleeper.nap on node " .. NODE ..
            " did not answer within 0.05 s") },
        { send = call(46, "remote_call", '{"node_id":"nowhere","server_name":"echo","method":"same"}'),
          expect = ME(46, -32001, "ENOROUTE", "ENOROUTE: no route to node nowhere") },
        { send = call(47, "remote_call", '["' .. NODE .. '","nothere","x"]'),
          expect = ME(47, -32002, "ENOSERVER", "ENOSERVER: no server 'nothere' on node " .. NODE) },
        { send = call(q "s", "remote_call", '["' .. NODE .. '","thrower","fail"]'),
          expect = ME(q "s", -32004, "EREMOTE", "EREMOTE: thrower.fail on node " .. NODE .. " raised: kaboom") },
      })
      -- a raise with a position: the message still comes along
      local res = py("http", http_url(srv), { call(1, "thrower.fail_here") }).results
      local e = json.decode(res[1].body).error
      assert.are.equal(-32004, e.code)
      assert.are.same({ code = "EREMOTE" }, e.data)
      local prefix = "EREMOTE: thrower.fail_here on node " .. NODE .. " raised: "
      assert.are.equal(prefix, e.message:sub(1, #prefix))
      assert.truthy(e.message:sub(#prefix + 1):find("^%S*jsonrpc_spec%.lua:%d+: kaboom with a position$"), e.message)
    end, { allow_errors = true })
    only_reported(errors, { "thrower.fail raised", "thrower.fail_here raised", "counter.increment raised" })
    assert.is_true(#errors > 0)
  end)

  it("answers -32603 without a traceback when a result cannot be sent or the mesh raises", function()
    expose_local()
    local real = require("relaynet.mesh")
    jsonrpc.mesh = setmetatable({
      remote_call = function(node, server, method, args, timeout)
        if server == "inject" and method == "raise" then error("the mesh broke") end
        return real.remote_call(node, server, method, args, timeout)
      end,
    }, { __index = real })
    finally(function() jsonrpc.mesh = nil end)
    local errors = H.run(function()
      local srv = H.listen {}
      local UNENCODABLE = "Internal error: the result cannot be encoded as JSON"
      check_cases(srv, {
        { send = call(1, "bad.fn"), expect = E(1, -32603, UNENCODABLE) },
        { send = call(2, "bad.nan"), expect = E(2, -32603, UNENCODABLE) },
        { send = call(3, "bad.utf8"), expect = E(3, -32603, UNENCODABLE) },
        { send = call(4, "bad.cycle"), expect = E(4, -32603, UNENCODABLE) },
        { send = call(5, "inject.raise"), expect = E(5, -32603, "Internal error") },
        { send = batch({ call(6, "inject.raise"), call(7, "echo.same", "[7]") }),
          expect = batch({ E(6, -32603, "Internal error"), R(7, 7) }) },
      })
    end, { allow_errors = true })
    only_reported(errors, { "jsonrpc: method bad.fn: the result cannot be encoded as JSON",
      "jsonrpc: method bad.nan: the result cannot be encoded as JSON",
      "jsonrpc: method bad.utf8: the result cannot be encoded as JSON",
      "jsonrpc: method bad.cycle: the result cannot be encoded as JSON",
      "jsonrpc: method inject.raise: " })
    local raised = 0
    for _, e in ipairs(errors) do
      if e:find("jsonrpc: method inject.raise: ", 1, true) then
        raised = raised + 1
        assert.truthy(e:find("the mesh broke", 1, true))
        assert.truthy(e:find("stack traceback", 1, true)) -- the log has it, the response not
      end
    end
    assert.are.equal(3 * 2, raised) -- two per client
  end)

  it("shares max_calls_per_address over every connection of one address", function()
    local limits = jsonrpc.LIMITS
    local saved_conn, saved_addr = limits.max_calls_per_connection, limits.max_calls_per_address
    limits.max_calls_per_connection, limits.max_calls_per_address = 3, 5
    local release = false
    jsonrpc.mesh = setmetatable({
      remote_call = function()
        while not release do rn.sleep(0.02) end
        return "done"
      end,
    }, { __index = require("relaynet.mesh") })
    finally(function()
      jsonrpc.mesh = nil
      limits.max_calls_per_connection, limits.max_calls_per_address = saved_conn, saved_addr
    end)
    H.run(function()
      local function rc(id) return call(id, "remote_call", '["far","s","m",[],30]') end
      local outs, done = {}, 0
      -- Three connections of 10.0.0.1 send three calls each, one at a time,
      -- and one connection of 10.0.0.2 sends two: 10.0.0.1 gets 5 slots.
      local clients = {
        { addr = "10.0.0.1", owner = { n = 0 } }, { addr = "10.0.0.1", owner = { n = 0 } },
        { addr = "10.0.0.1", owner = { n = 0 } }, { addr = "10.0.0.2", owner = { n = 0 } },
      }
      local id = 0
      for k, c in ipairs(clients) do
        for _ = 1, (k == 4 and 2 or 3) do
          id = id + 1
          local my = id
          rn.spawn(function()
            outs[my] = jsonrpc.handle(rc(my), { transport = "ws", owner = c.owner, addr = c.addr })
            done = done + 1
          end)
          rn.sleep(0.01)
        end
      end
      rn.sleep(0.2)
      local busy = {}
      for i = 1, 11 do
        if outs[i] then busy[#busy + 1] = i end
      end
      -- calls 6..9 of 10.0.0.1 were refused at once; 10.0.0.2's two wait
      assert.are.same({ 6, 7, 8, 9 }, busy)
      for _, i in ipairs(busy) do
        assert.are.equal(ME(i, -32008, "EBUSY",
          "EBUSY: address 10.0.0.1 already has 5 calls in flight (max_calls_per_address)"), outs[i])
      end
      release = true
      while done < 11 do rn.sleep(0.02) end
      for _, i in ipairs({ 1, 2, 3, 4, 5, 10, 11 }) do assert.are.equal(R(i, '"done"'), outs[i]) end
      -- the slots are free again
      local again = jsonrpc.handle(rc(12), { transport = "http", owner = { n = 0 }, addr = "10.0.0.1" })
      assert.are.equal(R(12, '"done"'), again)
    end)
  end)

  it("maps every mesh error code to its JSON-RPC code", function()
    expose_local()
    local real = require("relaynet.mesh")
    jsonrpc.mesh = setmetatable({
      remote_call = function(node, server, method, args, timeout)
        if server == "inject" then return nil, method .. ": injected failure", method end
        if server == "inject_nocode" then return nil, method .. ": the code only in the message" end
        return real.remote_call(node, server, method, args, timeout)
      end,
    }, { __index = real })
    finally(function() jsonrpc.mesh = nil end)
    H.run(function()
      local srv = H.listen {}
      local cases = {}
      local codes = { ETIMEDOUT = -32000, ENOROUTE = -32001, ENOSERVER = -32002, ENOMETHOD = -32003,
        EREMOTE = -32004, ELINKLOST = -32005, ETTL = -32006, ECANCELED = -32007, EBUSY = -32008,
        EINVAL = -32602 }
      for name, code in pairs(codes) do
        -- a call on this node that finds no server or method is -32601
        local direct = ME('"' .. name .. '"', code, name, name .. ": injected failure")
        if name == "ENOSERVER" or name == "ENOMETHOD" then
          direct = NF('"' .. name .. '"', "inject." .. name, name, name .. ": injected failure")
        end
        cases[#cases + 1] = { send = call('"' .. name .. '"', "inject." .. name), expect = direct }
        cases[#cases + 1] = { send = call(1, "remote_call", '["n9","inject","' .. name .. '"]'),
          expect = ME(1, code, name, name .. ": injected failure") }
      end
      table.sort(cases, function(a, b) return a.send < b.send end)
      cases[#cases + 1] = { name = "a code with no JSON-RPC code", send = call(2, "inject.EWHATEVER"),
        expect = ME(2, -32603, "EWHATEVER", "EWHATEVER: injected failure") }
      cases[#cases + 1] = { name = "the code taken from the message", send = call(3, "inject_nocode.ETTL"),
        expect = ME(3, -32006, "ETTL", "ETTL: the code only in the message") }
      check_cases(srv, cases)
    end)
  end)

  it("never answers notifications, even failing ones, and still runs them", function()
    expose_local()
    local errors = H.run(function()
      local srv = H.listen {}
      check_cases(srv, {
        { send = call(0, "counter.reset"), expect = R(0, 0) },
        { name = "a valid notification", send = notify("counter.increment", "[10]") },
        { name = "an unknown method", send = notify("nosuchmethod") },
        { name = "a reserved method", send = notify("rpc.x") },
        { name = "bad params", send = notify("remote_call", '["n"]') },
        { name = "p2p with params", send = notify("p2p.peers", "[1]") },
        { name = "unknown server", send = notify("nothere.x") },
        { name = "unknown method", send = notify("counter.nothere") },
        { name = "a method that raises", send = notify("thrower.fail") },
        { name = "no route", send = notify("remote_call", '["nowhere","echo","same"]') },
        { name = "an unencodable result", send = notify("bad.fn") },
        { name = "a batch of notifications", send = batch({ notify("counter.increment", "[1]"),
          notify("nosuchmethod"), notify("thrower.fail"), notify("counter.increment", "[2]") }) },
        { name = "the notifications ran", send = call(1, "counter.get"), expect = R(1, 13) },
        { name = "a batch of one notification", send = batch({ notify("counter.reset") }) },
        { send = call(2, "counter.get"), expect = R(2, 0) },
      })
    end, { allow_errors = true })
    only_reported(errors, { "thrower.fail raised", "jsonrpc: method bad.fn: the result cannot be encoded" })
  end)

  it("answers batches in request order, running the requests concurrently", function()
    expose_local()
    local errors = H.run(function()
      local srv = H.listen {}
      local hundred, hundred_out, hundred_one = {}, {}, {}
      for i = 1, 100 do
        hundred[i] = call(i, "echo.same", "[" .. i .. "]")
        hundred_out[i] = R(i, i)
      end
      for i = 1, 101 do hundred_one[i] = call(i, "echo.none") end
      check_cases(srv, {
        { send = call(0, "counter.reset"), expect = R(0, 0) },
        { name = "mixed", send = batch({
            call(1, "counter.increment", "[2]"),
            notify("counter.increment", "[3]"),
            '{"foo":"boo"}',
            call(2, "nosuchmethod"),
            "5",
            call('"x"', "remote_call", '["n"]'),
            notify("nosuchmethod"),
            '{"jsonrpc":"2.0","id":3,"method":7}',
            call(4, "thrower.fail"),
            call(5, "p2p.peers"),
            "[]",
            call(6, "echo.same", '["last"]'),
          }),
          expect = batch({
            R(1, 2),
            E("null", -32600, 'Invalid Request: \'jsonrpc\' must be "2.0"'),
            E(2, -32601, "Method not found: nosuchmethod"),
            E("null", -32600, "Invalid Request: expected a request object"),
            E('"x"', -32602, "Invalid params: 'server_name' must be a non-empty string"),
            E(3, -32600, "Invalid Request: 'method' must be a string"),
            ME(4, -32004, "EREMOTE", "EREMOTE: thrower.fail on node " .. NODE .. " raised: kaboom"),
            R(5, "[]"),
            E("null", -32600, "Invalid Request: expected a request object"),
            R(6, '"last"'),
          }) },
        { name = "the notification in the batch ran", send = call(7, "counter.get"), expect = R(7, 5) },
        { name = "spec example: [1,2,3]", send = "[1,2,3]", expect = batch({
            E("null", -32600, "Invalid Request: expected a request object"),
            E("null", -32600, "Invalid Request: expected a request object"),
            E("null", -32600, "Invalid Request: expected a request object") }) },
        { name = "spec example: [1]", send = "[1]",
          expect = batch({ E("null", -32600, "Invalid Request: expected a request object") }) },
        { name = "only notifications: nothing", send = batch({ notify("counter.get"), notify("nosuchmethod") }) },
        { name = "one request", send = batch({ call(8, "counter.get") }), expect = batch({ R(8, 5) }) },
        { name = "duplicate ids are answered each", send = batch({ call(9, "counter.get"), call(9, "echo.none") }),
          expect = batch({ R(9, 5), R(9, "null") }) },
        -- gate.wait returns "opened" only if gate.open runs while it waits:
        -- a serialized batch would answer "still closed" after 5 s
        { send = call(10, "gate.close"), expect = R(10, "false") },
        { name = "concurrent", send = batch({ call(11, "gate.wait"), call(12, "echo.none"), call(13, "gate.open") }),
          expect = batch({ R(11, '"opened"'), R(12, "null"), R(13, "true") }) },
        { name = "a slow request first keeps its place", send = batch({
            call(14, "sleeper.nap", "[0.2]"), call(15, "echo.same", "[15]"), call(16, "remote_call",
              '["' .. NODE .. '","sleeper","nap",[0.1]]') }),
          expect = batch({ R(14, '"rested"'), R(15, 15), R(16, '"rested"') }) },
        { name = "100 requests", send = batch(hundred), expect = batch(hundred_out) },
        { name = "101 requests", send = batch(hundred_one),
          expect = E("null", -32600, "Invalid Request: a batch of 101 requests, more than 100") },
        { name = "a nested batch is one invalid request", send = batch({ batch({ call(1, "echo.none") }) }),
          expect = batch({ E("null", -32600, "Invalid Request: expected a request object") }) },
      })
    end, { allow_errors = true })
    only_reported(errors, { "thrower.fail raised" })
  end)

  it("enforces max_request and max_depth (and the server's max_body)", function()
    expose_local()
    local saved = {}
    for k, v in pairs(jsonrpc.LIMITS) do saved[k] = v end
    finally(function()
      for k, v in pairs(saved) do jsonrpc.LIMITS[k] = v end
    end)
    H.run(function()
      local srv = H.listen {}
      local function sized(n, id)
        local s = call(id, "echo.same", '["' .. "x" .. '"]')
        return s:sub(1, -2) .. string.rep(" ", n - #s) .. "}"
      end
      jsonrpc.LIMITS.max_request = 300
      jsonrpc.LIMITS.max_depth = 4
      assert.are.equal(300, #sized(300, 1))
      check_cases(srv, {
        { name = "max_request bytes", send = sized(300, 1), expect = R(1, '"x"') },
        { name = "one byte more", send = sized(301, 2),
          expect = E("null", -32600, "Invalid Request: the request has 301 bytes, more than 300") },
        { name = "a batch over max_request", send = batch({ sized(150, 3), sized(150, 4) }),
          expect = E("null", -32600, "Invalid Request: the request has 303 bytes, more than 300") },
        { name = "max_depth levels", send = call(5, "echo.same", "[[[1]]]"), expect = R(5, "[[1]]") },
        { name = "one level more", send = call(6, "echo.same", "[[[[1]]]]"),
          expect = E("null", -32700, "Parse error: nesting deeper than 4 levels") },
        { name = "an empty array counts as a level", send = call(7, "echo.same", "[[[[]]]]"),
          expect = E("null", -32700, "Parse error: nesting deeper than 4 levels") },
        { name = "so does an empty object", send = call(8, "echo.same", "[[[{}]]]"),
          expect = E("null", -32700, "Parse error: nesting deeper than 4 levels") },
      })
      jsonrpc.LIMITS.max_request = saved.max_request
      jsonrpc.LIMITS.max_depth = saved.max_depth
      -- the defaults: 32 levels, 1 MiB (HTTP bodies above it are refused
      -- with 413 by the server's max_body before JSON-RPC sees them)
      local deep = call(9, "echo.same", string.rep("[", 31) .. "1" .. string.rep("]", 31))
      local big = call(10, "echo.count", "[" .. string.rep('"' .. string.rep("y", 98) .. '",', 10000) .. "1]")
      check_cases(srv, {
        { name = "32 levels", send = deep, expect = R(9, string.rep("[", 30) .. "1" .. string.rep("]", 30)) },
        { name = "a 1 MB request", send = big, expect = R(10, 10001) },
      })
      assert.is_true(#big > 1000000 and #big < 1024 * 1024)
      local status = curl_post(http_url(srv), call(11, "echo.none", '["' .. string.rep("z", 1024 * 1024) .. '"]'))
      assert.are.equal(413, status)
      -- handle() itself refuses text over max_request (WebSocket messages
      -- over 1 MiB are already refused by max_message with close 1009)
      local over = call(12, "echo.none", '["' .. string.rep("z", 1024 * 1024) .. '"]')
      assert.are.equal(E("null", -32600, "Invalid Request: the request has " .. #over .. " bytes, more than 1048576"),
        jsonrpc.handle(over))
    end)
  end)

  it("handle() refuses a non-string and runs outside WebSocket/HTTP handlers too", function()
    expose_local()
    local ok, err = pcall(jsonrpc.handle, nil)
    assert.is_false(ok)
    assert.truthy(err:find("relaynet.jsonrpc.handle: expected the request text as a string, got nil", 1, true))
    H.run(function()
      assert.are.equal(R(1, 3), jsonrpc.handle(call(1, "echo.count", "[1,2,3]"), { transport = "test" }))
      assert.is_nil(jsonrpc.handle(notify("echo.none")))
      assert.are.equal(batch({ R(1, '"rested"'), R(2, 0) }),
        jsonrpc.handle(batch({ call(1, "sleeper.nap", "[0.01]"), call(2, "echo.count") })))
    end)
  end)
end)

-- real nodes ----------------------------------------------------------------------------

-- A node process: bin/relaynet -e NODE_CODE --port 0 --node-id ID --add-peer URL
-- It exposes `remote` and writes "<port> <pid>" to the file given as arg[1].
local NODE_CODE = [[
local rn = require("relaynet")
rn.expose("remote", {
  whoami = function() return rn.node_id() end,
  add = function(a, b) return a + b end,
  fail = function() error("remote kaboom", 0) end,
  slow = function(s) rn.sleep(s); return "slept" end,
  echo = function(...) return ... end,
  die = function() os.exit(9) end,
})
local f = assert(io.open("/proc/self/stat"))
local pid = f:read("a"):match("^(%d+)")
f:close()
local out = assert(io.open(arg[1] .. ".tmp", "w"))
out:write(rn.server().port, " ", pid)
out:close()
os.rename(arg[1] .. ".tmp", arg[1])
]]

local function wait_until(pred, what, timeout)
  local deadline = rn.now() + (timeout or 15)
  while true do
    local v = pred()
    if v then return v end
    if rn.now() > deadline then error("timed out waiting for " .. what, 2) end
    rn.sleep(0.05)
  end
end

local started = {} -- pids to kill when a test ends

local function start_node(id, peer_port)
  local portfile = os.tmpname()
  os.remove(portfile)
  local cmd = table.concat({ "exec", H.q(RELAYNET), "-e", H.q(NODE_CODE), "--port", "0", "--host", "127.0.0.1",
    "--node-id", id, "--add-peer", H.q("ws://127.0.0.1:" .. peer_port .. "/ws/p2p"), H.q(portfile) }, " ")
  local proc = H.sh(cmd)
  local info = wait_until(function()
    local f = io.open(portfile)
    if not f then return nil end
    local s = f:read("a")
    f:close()
    local port, pid = s:match("^(%d+) (%d+)$")
    return port and { port = tonumber(port), pid = tonumber(pid) }
  end, "node " .. id .. " to start")
  os.remove(portfile)
  info.id, info.proc = id, proc
  started[#started + 1] = info.pid
  return info
end

local function kill_started()
  for _, pid in ipairs(started) do os.execute("kill -9 " .. pid .. " >/dev/null 2>&1") end
  started = {}
end

-- SIGTERM, then wait for a clean exit.
local function stop_node(node)
  os.execute("kill -TERM " .. node.pid)
  local rc, _, err = node.proc:wait(15)
  assert.are.equal(0, rc, "node " .. node.id .. " exit status; stderr: " .. err)
end

local function knows_server(node, server)
  for _, e in ipairs(rn.registry()) do
    if e.node == node and e.server == server then return true end
  end
  return false
end

describe("JSON-RPC 2.0 remote_call across real nodes", function()
  it("reaches a second node, and reports ENOROUTE, ENOSERVER, ENOMETHOD, EREMOTE, ETIMEDOUT", function()
    expose_local()
    finally(kill_started)
    local errors = H.run(function()
      local srv = H.listen {}
      local n2 = start_node("n2", srv.port)
      wait_until(function() return knows_server("n2", "remote") end, "n2's servers in the registry")
      local function rc(id, params) return call(id, "remote_call", params) end
      check_cases(srv, {
        { send = call(0, "counter.reset"), expect = R(0, 0) },
        { send = rc(1, '{"node_id":"n2","server_name":"remote","method":"whoami"}'), expect = R(1, '"n2"') },
        { send = rc(2, '["n2","remote","add",[2,40]]'), expect = R(2, 42) },
        { send = rc(3, '["n2","remote","add",[9007199254740990,1],5]'), expect = R(3, 9007199254740991) },
        { send = rc(4, '{"node_id":"n2","server_name":"remote","method":"echo","args":[{},"\\u00e9",null,1.5,[1]],' ..
          '"timeout":5}'), expect = R(4, '[{},"\195\169",null,1.5,[1]]') },
        { send = rc('"id-\\u00e9"', '["n2","remote","echo",[]]'), expect = R('"id-\195\169"', "null") },
        { send = rc(5, '["n3","remote","whoami"]'),
          expect = ME(5, -32001, "ENOROUTE", "ENOROUTE: no route to node n3") },
        { send = rc(6, '["n2","nothere","x"]'),
          expect = ME(6, -32002, "ENOSERVER", "ENOSERVER: no server 'nothere' on node n2") },
        { send = rc(7, '["n2","remote","nothere"]'),
          expect = ME(7, -32003, "ENOMETHOD", "ENOMETHOD: server 'remote' on node n2 has no method 'nothere'") },
        { send = rc(8, '["n2","remote","fail"]'),
          expect = ME(8, -32004, "EREMOTE", "EREMOTE: remote.fail on node n2 raised: remote kaboom") },
        { send = rc(10, '["n2","remote","slow",[3],0.2]'),
          expect = ME(10, -32000, "ETIMEDOUT", "ETIMEDOUT: remote.slow on node n2 did not answer within 0.2 s") },
        { name = "a server of n2 is not on this node", send = call(11, "remote.whoami"),
          expect = NF(11, "remote.whoami", "ENOSERVER", "ENOSERVER: no server 'remote' on node " .. NODE) },
        { name = "a batch across nodes", send = batch({
            rc(12, '["n2","remote","slow",[0.2]]'),
            call(13, "counter.increment", "[4]"),
            rc(14, '["' .. NODE .. '","counter","increment",[1]]'),
            rc(15, '["n2","remote","whoami"]'),
            notify("remote_call", '["n2","remote","fail"]'),
            rc(16, '["nowhere","remote","whoami"]'),
          }),
          expect = batch({ R(12, '"slept"'), R(13, 4), R(14, 5), R(15, '"n2"'),
            ME(16, -32001, "ENOROUTE", "ENOROUTE: no route to node nowhere") }) },
        { name = "the local counter", send = rc(17, '["' .. NODE .. '","counter","get"]'), expect = R(17, 5) },
      })
      -- the mesh views: n2 is a direct peer
      local res = py("http", http_url(srv), { call(1, "p2p.peers"), call(2, "p2p.routes"), call(3, "p2p.registry") })
      local peers = json.decode(res.results[1].body).result
      assert.are.equal(1, #peers)
      assert.are.equal("n2", peers[1].id)
      assert.are.equal("in", peers[1].direction)
      local routes = json.decode(res.results[2].body).result
      assert.are.same({ { node = "n2", next_hop = "n2", hops = 1, path = { NODE, "n2" } } }, routes)
      local registry = json.decode(res.results[3].body).result
      local remote
      for _, e in ipairs(registry) do
        if e.server == "remote" then remote = e end
      end
      assert.are.same({ server = "remote", node = "n2", hops = 1, ["local"] = false }, remote)
      stop_node(n2)
    end, { allow_errors = true, timeout = 90 })
    only_reported(errors, { "thrower.fail raised" })
  end)

  it("reports ETTL and ELINKLOST on a line of three nodes", function()
    expose_local()
    finally(kill_started)
    local real = require("relaynet.mesh")
    local cfg = real.config
    local saved_ttl = cfg.max_ttl
    -- ETTL needs a call that runs out of hops: this node sends the call with
    -- a hop budget of 1 (its max_ttl), so n2 must refuse to forward it to n3.
    -- The budget goes back up as soon as the call is on its way.
    jsonrpc.mesh = setmetatable({
      remote_call = function(node, server, method, args, timeout)
        if method == "whoami_ttl1" then
          cfg.max_ttl = 1
          rn.spawn(function() cfg.max_ttl = saved_ttl end)
          method = "whoami"
        end
        return real.remote_call(node, server, method, args, timeout)
      end,
    }, { __index = real })
    finally(function()
      jsonrpc.mesh = nil
      cfg.max_ttl = saved_ttl
    end)
    H.run(function()
      local srv = H.listen {}
      local n2 = start_node("n2", srv.port)
      local n3 = start_node("n3", n2.port)
      wait_until(function() return knows_server("n3", "remote") and knows_server("n2", "remote") end,
        "n2 and n3 in the registry")
      local function rc(id, params) return call(id, "remote_call", params) end
      check_cases(srv, {
        { send = rc(1, '["n3","remote","whoami"]'), expect = R(1, '"n3"') },
        { send = rc(2, '["n3","remote","whoami_ttl1"]'),
          expect = ME(2, -32006, "ETTL", "ETTL: hop limit reached at node n2") },
        { send = rc(3, '["n3","remote","fail"]'),
          expect = ME(3, -32004, "EREMOTE", "EREMOTE: remote.fail on node n3 raised: remote kaboom") },
      })
      local routes = json.decode(py("http", http_url(srv), { call(1, "p2p.routes") }).results[1].body).result
      assert.are.same({
        { node = "n2", next_hop = "n2", hops = 1, path = { NODE, "n2" } },
        { node = "n3", next_hop = "n2", hops = 2, path = { NODE, "n2", "n3" } },
      }, routes)
      -- n3 exits in the middle of the call: n2 reports the lost link at once
      local status, ctype, body = curl_post(http_url(srv), rc(4, '["n3","remote","die",[],60]'))
      assert.are.equal(200, status)
      assert.are.equal("application/json", ctype)
      assert.are.equal(ME(4, -32005, "ELINKLOST", "ELINKLOST: the link from n2 to n3 went down during the call"), body)
      local rc3 = n3.proc:wait(15)
      assert.are.equal(9, rc3)
      -- n2 exits in the middle of a call over WebSocket: this node sees it
      local res = py("ws", ws_url(srv), { { send = rc(5, '["n2","remote","die",[],60]') } })
      assert.are.same({ ME(5, -32005, "ELINKLOST", "ELINKLOST: the link to n2 went down while calling node n2") },
        res.results[1])
      assert.are.equal(9, (n2.proc:wait(15)))
      -- and then there is no route any more
      assert.are.equal(ME(6, -32001, "ENOROUTE", "ENOROUTE: no route to node n2"),
        jsonrpc.handle(rc(6, '["n2","remote","whoami"]')))
    end, { timeout = 90 })
  end)
end)
