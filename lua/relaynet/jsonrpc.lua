-- relaynet.jsonrpc: a strict JSON-RPC 2.0 server (https://www.jsonrpc.org/specification)
-- in front of the peer mesh.
--
--   local jsonrpc = require("relaynet.jsonrpc")
--   local out = jsonrpc.handle(text, ctx)   -- response text, or nil: send nothing
--
-- handle() runs inside a runtime coroutine: methods call the mesh, which may
-- suspend. Requests of a batch run concurrently (one coroutine each) and the
-- responses keep the order of the requests. `ctx` (optional) describes the
-- transport, e.g. { transport = "http" } or { transport = "ws", peer = ... }.
--
-- Methods:
--   remote_call          params {node_id, server_name, method, args, timeout}
--                        or [node_id, server_name, method, args, timeout]
--   <server>.<method>    a server exposed on this node (split at the first dot);
--                        args = params (array), {params} (object) or {}
--   p2p.peer.getStatus, p2p.registry, p2p.peers, p2p.routes
--   Names starting with "rpc." or "p2p." are reserved: -32601 unless listed.
--   M.methods[name]      methods other modules add: subscribe, unsubscribe
--                        and publish (relaynet.rpc_pubsub)
--
-- Strictness (relaynet.json parses the text): it must be valid UTF-8 without
-- raw control characters inside strings; `[]` and `{}` are told apart (an
-- empty array is marked with json.array); ids must be strings, finite numbers
-- or null and are echoed with the same value: integers as integers, other
-- numbers in the shortest form that reads back as the same double, and
-- numbers of magnitude 2^53 or more that are not 64-bit integers (which a
-- double cannot hold exactly) as the very text the request carried. An invalid
-- request whose id is valid gets that id back; otherwise the id is null.
-- Members a request object does not define are ignored.
--
-- Calls in flight: at most LIMITS.max_calls_per_connection mesh calls
-- (remote_call and <server>.<method>) wait at once per client connection
-- (`ctx.owner`, a table the transport keeps per WebSocket connection; an
-- HTTP request is its own connection, so a batch of 100 counts 100). A call
-- past it fails at once with EBUSY (-32008, data.code "EBUSY"): a batch
-- larger than what is left answers its excess entries with EBUSY without
-- waiting for anything. The mesh's own per-node bound (mesh max_calls)
-- answers EBUSY the same way. M.close(ctx.owner) fails a closed
-- connection's calls still waiting with ECANCELED.
--
-- All the connections and requests of one peer address (`ctx.addr`, the
-- socket's address as the transport saw it) share at most
-- LIMITS.max_calls_per_address calls in flight to other nodes, so one client
-- cannot take every slot of the node-wide bound (mesh max_calls, which also
-- counts only calls to other nodes) by opening more connections. Calls to
-- this node's own servers are bounded by the mesh's max_served instead.

local json = require("relaynet.json")
local sched = require("relaynet.sched")

local M = {}

M.LIMITS = {
  max_request = 1024 * 1024, -- bytes of request text
  max_batch = 100,           -- requests in one batch
  max_depth = 32,            -- nesting of arrays/objects (at most json.MAX_DEPTH)
  max_calls_per_connection = 256, -- mesh calls waiting at once per client connection
  max_calls_per_address = 512,    -- calls to other nodes waiting at once per peer address
}

-- address -> calls in flight from it (entries go when they reach 0)
local calls_by_addr = {}

--- Counters, shown by the mesh's status (GET /status) as rpc_<name>.
M.stats = {
  calls_refused = 0, -- calls answered EBUSY: their connection or address had its maximum waiting
}

M.ERRORS = {
  PARSE_ERROR = -32700,
  INVALID_REQUEST = -32600,
  METHOD_NOT_FOUND = -32601,
  INVALID_PARAMS = -32602,
  INTERNAL_ERROR = -32603,
  -- mesh error codes (returned as error.data.code)
  ETIMEDOUT = -32000,
  ENOROUTE = -32001,
  ENOSERVER = -32002,
  ENOMETHOD = -32003,
  EREMOTE = -32004,
  ELINKLOST = -32005,
  ETTL = -32006,
  ECANCELED = -32007,
  EBUSY = -32008,   -- too many calls in flight (per connection or per node)
  EACCES = -32009,  -- the access rules of the called node refuse the caller (rn.mesh_access)
  ELIMIT = -32010,  -- a pub/sub bound: subscriptions per connection or node, publish rate
  EINVAL = -32602,
}
local E = M.ERRORS

--- The mesh module used by the methods; nil means require("relaynet.mesh")
--- on first use. Tests may set it to a stand-in.
M.mesh = nil

local function get_mesh()
  return M.mesh or require("relaynet.mesh")
end

--- Methods other modules add (relaynet.rpc_pubsub): name -> fn(params,
--- ctx) returning true, result | false, error object ({code, message,
--- data}); run like the built-in ones. A name listed here takes precedence
--- over a "server.method" call, never over a built-in method.
M.methods = {}

--- Functions M.close(owner) runs, in order, with the closed connection's
--- owner table: the added methods' per-connection state goes with it.
M.close_hooks = {}

local find, match, sub, format = string.find, string.match, string.sub, string.format
local concat = table.concat
local ulen = utf8.len
local NULL = json.null
local ARRAY_MT = getmetatable(json.array({}))

-- errors ----------------------------------------------------------------------

local function err(code, message, data)
  return { code = code, message = message, data = data }
end

local function invalid_request(why)
  return err(E.INVALID_REQUEST, "Invalid Request: " .. why)
end

local function invalid_params(why)
  return err(E.INVALID_PARAMS, "Invalid params: " .. why)
end

-- Replaces every byte that is not part of valid UTF-8 with "?".
local function valid_utf8(s)
  if ulen(s) then return s end
  local out, pos = {}, 1
  while true do
    local n, bad = ulen(s, pos)
    if n then out[#out + 1] = sub(s, pos); break end
    out[#out + 1] = sub(s, pos, bad - 1) .. "?"
    pos = bad + 1
    if pos > #s then break end
  end
  return concat(out)
end

-- Maps a mesh failure (nil, "CODE: message", "CODE") to an error object.
local function mesh_error(msg, code)
  msg = tostring(msg)
  code = code or match(msg, "^(E[%u%d_]+):")
  local rpc = code and E[code]
  if not rpc or not match(code, "^E") then rpc = E.INTERNAL_ERROR end
  return err(rpc, valid_utf8(msg), code and { code = code } or nil)
end

-- parsing ---------------------------------------------------------------------

-- Checks the nesting depth against a limit lower than the decoder's own.
-- Returns the value, or nil when it nests deeper than max_depth.
local function check_depth(v, depth, max_depth)
  if type(v) ~= "table" then return v end
  if depth > max_depth then return nil end
  for _, x in pairs(v) do
    if type(x) == "table" and check_depth(x, depth + 1, max_depth) == nil then return nil end
  end
  return v
end

local function parse_error(why)
  return err(E.PARSE_ERROR, "Parse error: " .. why)
end

-- Decodes the request text: value | nil, error object.
local function parse(text)
  local max_depth = math.min(M.LIMITS.max_depth, json.MAX_DEPTH)
  local v, derr = json.decode(text)
  if v == nil then
    derr = tostring(derr)
    if find(derr, "nesting deeper than", 1, true) then
      return nil, parse_error(format("nesting deeper than %d levels", max_depth))
    end
    return nil, parse_error(derr)
  end
  if max_depth < json.MAX_DEPTH then
    v = check_depth(v, 1, max_depth)
    if v == nil then return nil, parse_error(format("nesting deeper than %d levels", max_depth)) end
  end
  return v
end

local function is_array(t)
  return type(t) == "table" and (t[1] ~= nil or getmetatable(t) == ARRAY_MT)
end

-- raw ids -----------------------------------------------------------------------
--
-- The decoder gives a float for every number that is not a 64-bit integer.
-- At magnitudes of 2^53 and more a float no longer holds every integer, so
-- writing it back would change the id for a client that reads numbers
-- exactly (2^64 would come back as 1.8446744073709552e+19). For such ids
-- the request text is scanned again (it is valid JSON: the decoder accepted
-- it) for the raw text of the top-level "id" member, and that text is
-- echoed. Smaller floats are echoed by value (1.0 as 1, 1.50 as 1.5).

-- The index just past the JSON string that starts (with its quote) at i.
local function skip_string(s, i)
  local j = i + 1
  while true do
    local k = find(s, '["\\]', j)
    if not k then return nil end
    if sub(s, k, k) == '"' then return k + 1 end
    j = k + 2
  end
end

local function skip_ws(s, i)
  return find(s, "[^ \t\r\n]", i) or #s + 1
end

-- The index just past the JSON value that starts at i.
local function skip_value(s, i)
  local c = sub(s, i, i)
  if c == '"' then return skip_string(s, i) end
  if c == "{" or c == "[" then
    local depth, j = 0, i
    while true do
      local k = find(s, '[%[%]{}"]', j)
      if not k then return nil end
      local ch = sub(s, k, k)
      if ch == '"' then
        j = skip_string(s, k)
        if not j then return nil end
      else
        depth = (ch == "[" or ch == "{") and depth + 1 or depth - 1
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  local _, e = find(s, "^[%w%.%+%-]+", i) -- a number, true, false or null
  return e and e + 1
end

-- The raw text of the "id" member of the object that starts at i (the last
-- one, as the decoder keeps the last of duplicate keys), when it is a
-- number; and the index just past the object.
local function raw_object_id(s, i)
  local raw
  local j = skip_ws(s, i + 1)
  if sub(s, j, j) == "}" then return nil, j + 1 end
  while sub(s, j, j) == '"' do
    local ke = skip_string(s, j)
    if not ke then return nil end
    local key = sub(s, j + 1, ke - 2)
    if find(key, "\\", 1, true) then key = json.decode(sub(s, j, ke - 1)) end
    j = skip_ws(s, skip_ws(s, ke) + 1) -- past the colon
    local ve = skip_value(s, j)
    if not ve then return nil end
    if key == "id" then
      raw = find(s, "^[%-%d]", j) and sub(s, j, ve - 1) or nil
    end
    j = skip_ws(s, ve)
    local c = sub(s, j, j)
    if c == "}" then return raw, j + 1 end
    if c ~= "," then return nil end
    j = skip_ws(s, j + 1)
  end
  return nil
end

-- Raw id texts of the request (batch = false) or of each request of the
-- batch: { [index] = text } (index 1 for a single request).
local function raw_ids(s, batch)
  local out = {}
  local j = skip_ws(s, 1)
  if not batch then
    if sub(s, j, j) == "{" then out[1] = raw_object_id(s, j) end
    return out
  end
  j = skip_ws(s, j + 1) -- past the "["
  local n = 0
  while j <= #s do
    n = n + 1
    local e
    if sub(s, j, j) == "{" then
      out[n], e = raw_object_id(s, j)
    else
      e = skip_value(s, j)
    end
    if not e then break end
    j = skip_ws(s, e)
    if sub(s, j, j) ~= "," then break end
    j = skip_ws(s, j + 1)
  end
  return out
end

-- Replaces the float id of a checked request with its raw text, when the
-- text reads back as the same number.
local RAW_ID_MT = { __name = "relaynet.jsonrpc.raw_id" }

local function use_raw_id(req, raw)
  if raw and tonumber(raw) == req.id then req.id = setmetatable({ raw = raw }, RAW_ID_MT) end
end

local function needs_raw_id(r)
  if type(r) ~= "table" then return false end
  local id = r.id
  return math.type(id) == "float" and (id >= 2 ^ 53 or id <= -2 ^ 53)
end

local function is_object(t)
  return type(t) == "table" and t[1] == nil and getmetatable(t) ~= ARRAY_MT
end

local function is_empty(t)
  return type(t) == "table" and next(t) == nil
end

-- Validates one request object. Returns a request record:
-- { id, has_id, method, params } or { id, error } (always answered).
local function check_request(r)
  if not is_object(r) then return { error = invalid_request("expected a request object") } end
  local id, has_id = r.id, r.id ~= nil
  if has_id then
    local t = type(id)
    local ok = t == "string" or id == NULL
      or (t == "number" and id == id and id ~= math.huge and id ~= -math.huge)
    if not ok then return { error = invalid_request("'id' must be a string, a number or null") } end
  end
  if r.jsonrpc ~= "2.0" then return { id = id, error = invalid_request("'jsonrpc' must be \"2.0\"") } end
  if type(r.method) ~= "string" then return { id = id, error = invalid_request("'method' must be a string") } end
  local params = r.params
  if params ~= nil and type(params) ~= "table" then
    return { id = id, error = invalid_request("'params' must be an array or an object") }
  end
  return { id = id, has_id = has_id, method = r.method, params = params }
end

-- methods -----------------------------------------------------------------------

local function is_name(v) return type(v) == "string" and v ~= "" end

local REMOTE_CALL_PARAMS = { "node_id", "server_name", "method", "args", "timeout" }

-- remote_call params -> node_id, server, method, args, timeout | nil, error
local function remote_call_params(params)
  local p = {}
  if params == nil then
    p = {}
  elseif is_array(params) then
    if #params > #REMOTE_CALL_PARAMS then
      return nil, invalid_params(format("remote_call takes at most %d params, got %d",
        #REMOTE_CALL_PARAMS, #params))
    end
    for i, name in ipairs(REMOTE_CALL_PARAMS) do p[name] = params[i] end
  else
    local known = {}
    for _, name in ipairs(REMOTE_CALL_PARAMS) do known[name] = true end
    for k, v in pairs(params) do
      if not known[k] then return nil, invalid_params(format("unknown param '%s'", valid_utf8(tostring(k)))) end
      p[k] = v
    end
  end
  if not is_name(p.node_id) then return nil, invalid_params("'node_id' must be a non-empty string") end
  if not is_name(p.server_name) then return nil, invalid_params("'server_name' must be a non-empty string") end
  if not is_name(p.method) then return nil, invalid_params("'method' must be a non-empty string") end
  local args = p.args
  if args == NULL then args = nil end
  if args ~= nil and not is_array(args) then return nil, invalid_params("'args' must be an array") end
  local timeout = p.timeout
  if timeout == NULL then timeout = nil end
  if timeout ~= nil and not (type(timeout) == "number" and timeout > 0 and timeout ~= math.huge) then
    return nil, invalid_params("'timeout' must be a positive number of seconds")
  end
  return p.node_id, p.server_name, p.method, args or json.array({}), timeout
end

-- Calls the mesh on behalf of ctx.owner (the client connection): ok,
-- result | false, error object. Refused with EBUSY when the connection
-- already has max_calls_per_connection calls waiting.
local function call_mesh(ctx, node_id, server, method, args, timeout)
  local owner = ctx.owner
  local limit = M.LIMITS.max_calls_per_connection
  if owner.n >= limit then
    M.stats.calls_refused = M.stats.calls_refused + 1
    return false, mesh_error(format("EBUSY: this connection already has %d calls in flight " ..
      "(max_calls_per_connection)", owner.n), "EBUSY")
  end
  local mesh = get_mesh()
  local addr = node_id ~= mesh.node_id() and ctx.addr or nil
  local from_addr = addr and calls_by_addr[addr] or 0
  if addr and from_addr >= M.LIMITS.max_calls_per_address then
    M.stats.calls_refused = M.stats.calls_refused + 1
    return false, mesh_error(format("EBUSY: address %s already has %d calls in flight " ..
      "(max_calls_per_address)", addr, from_addr), "EBUSY")
  end
  owner.n = owner.n + 1
  if addr then calls_by_addr[addr] = from_addr + 1 end
  local ok, result, msg, code
  local owned_call = rawget(mesh, "owned_call")
  if owned_call then
    ok, result, msg, code = pcall(owned_call, owner, node_id, server, method, args, timeout)
  else -- a stand-in mesh (tests) that may replace remote_call
    ok, result, msg, code = pcall(mesh.remote_call, node_id, server, method, args, timeout)
  end
  owner.n = owner.n - 1
  if addr then
    local left = calls_by_addr[addr] - 1
    calls_by_addr[addr] = left > 0 and left or nil
  end
  if not ok then error(result, 0) end
  if result == nil and msg ~= nil then return false, mesh_error(msg, code) end
  return true, result
end

local function no_params(name, fn)
  return function(params)
    if params ~= nil and not is_empty(params) then
      return false, invalid_params(name .. " takes no params")
    end
    return true, fn(get_mesh())
  end
end

local BUILTIN = {
  remote_call = function(params, ctx)
    local node_id, server, method, args, timeout = remote_call_params(params)
    if not node_id then return false, server end
    return call_mesh(ctx, node_id, server, method, args, timeout)
  end,
  ["p2p.peer.getStatus"] = no_params("p2p.peer.getStatus", function(mesh) return mesh.status() end),
  ["p2p.registry"] = no_params("p2p.registry", function(mesh) return mesh.registry() end),
  ["p2p.peers"] = no_params("p2p.peers", function(mesh) return mesh.peers() end),
  ["p2p.routes"] = no_params("p2p.routes", function(mesh) return mesh.routes() end),
}

local function method_not_found(name)
  return err(E.METHOD_NOT_FOUND, "Method not found: " .. valid_utf8(name))
end

-- Runs one valid request: ok, result | false, error object.
local function execute(req, ctx)
  local name = req.method
  local builtin = BUILTIN[name] or M.methods[name]
  if builtin then return builtin(req.params, ctx) end
  if find(name, "^rpc%.") or find(name, "^p2p%.") then return false, method_not_found(name) end
  local server, method = match(name, "^([^.]+)%.(.+)$")
  if not server then return false, method_not_found(name) end
  local params, args = req.params
  if params == nil then args = json.array({})
  elseif is_array(params) then args = params
  else
    -- A Lua method's parameters have no names to match an object against.
    return false, invalid_params(valid_utf8(name) .. " takes its params by position (a JSON array), not by name")
  end
  local ok, value = call_mesh(ctx, get_mesh().node_id(), server, method, args, nil)
  -- No such server or method on this node: the JSON-RPC method does not
  -- exist (-32601); data.code still says which of the two.
  local code = not ok and value.data and value.data.code
  if code == "ENOSERVER" or code == "ENOMETHOD" then
    local e = method_not_found(name)
    e.data = { code = code, message = value.message }
    return false, e
  end
  return ok, value
end

-- Runs a request, turning a raise into an internal error.
local function run(req, ctx)
  local ok, good, value = xpcall(execute, debug.traceback, req, ctx)
  if ok then return good, value end
  sched.report("jsonrpc: method " .. tostring(req.method) .. ": " .. tostring(good))
  return false, err(E.INTERNAL_ERROR, "Internal error")
end

-- responses ---------------------------------------------------------------------

local function encode_id(id)
  if id == nil then return "null" end
  if getmetatable(id) == RAW_ID_MT then return id.raw end
  return assert(json.encode(id)) -- a string, a finite number or null: always encodable
end

local function encode_error(id, e)
  local s = '{"jsonrpc":"2.0","id":' .. encode_id(id) .. ',"error":{"code":' .. format("%d", e.code) ..
    ',"message":' .. assert(json.encode(valid_utf8(e.message)))
  if e.data ~= nil then
    local data = json.encode(e.data)
    if data and ulen(data) then s = s .. ',"data":' .. data end
  end
  return s .. "}}"
end

local function encode_result(id, method, value)
  local s, eerr = json.encode(value)
  if s and not ulen(s) then s, eerr = nil, "a string in it is not valid UTF-8" end
  if not s then
    sched.report("jsonrpc: method " .. tostring(method) .. ": the result cannot be encoded as JSON: " ..
      tostring(eerr))
    return encode_error(id, err(E.INTERNAL_ERROR, "Internal error: the result cannot be encoded as JSON"))
  end
  return '{"jsonrpc":"2.0","id":' .. encode_id(id) .. ',"result":' .. s .. "}"
end

-- Runs one checked request: the response text, or nil for a notification.
local function respond(req, ctx)
  if req.error then return encode_error(req.id, req.error) end
  local ok, value = run(req, ctx)
  if not req.has_id then return nil end
  if ok then return encode_result(req.id, req.method, value) end
  return encode_error(req.id, value)
end

local function canceled_error(id)
  return encode_error(id, err(E.ECANCELED, "ECANCELED: the batch was canceled", { code = "ECANCELED" }))
end

-- Runs the checked requests of a batch concurrently; returns the responses
-- in request order (nil for notifications).
local function run_batch(reqs, ctx)
  local n = #reqs
  local out = {}
  if not sched.can_wait() then -- outside the runtime nothing can suspend
    for i = 1, n do out[i] = respond(reqs[i], ctx) end
    return out, n
  end
  local pending, waiter, done = 0, nil, {}
  for i = 1, n do
    local req = reqs[i]
    if req.error then
      out[i], done[i] = encode_error(req.id, req.error), true
    else
      pending = pending + 1
      sched.go(function()
        local ok, resp = pcall(respond, req, ctx)
        if not ok then
          sched.report("jsonrpc: " .. tostring(resp))
          resp = req.has_id and encode_error(req.id, err(E.INTERNAL_ERROR, "Internal error")) or nil
        end
        out[i], done[i] = resp, true
        pending = pending - 1
        if pending == 0 and waiter then
          local w = waiter
          waiter = nil
          sched.wake(w[1], w[2])
        end
      end)
    end
  end
  if pending > 0 then
    sched.wait("jsonrpc batch", nil, function(co, id) waiter = { co, id } end)
    waiter = nil
    for i = 1, n do -- woken early (the loop is stopping): answer what is left
      if not done[i] and reqs[i].has_id then out[i] = canceled_error(reqs[i].id) end
    end
  end
  return out, n
end

--- Handles one JSON-RPC text (a request or a batch). Returns the response
--- text, or nil when nothing must be sent (notifications only).
function M.handle(text, ctx)
  if type(text) ~= "string" then
    error("relaynet.jsonrpc.handle: expected the request text as a string, got " .. type(text), 2)
  end
  local limits = M.LIMITS
  if #text > limits.max_request then
    return encode_error(nil, invalid_request(format("the request has %d bytes, more than %d",
      #text, limits.max_request)))
  end
  local v, perr = parse(text)
  if v == nil then return encode_error(nil, perr) end
  -- Calls in flight are counted per client connection: the transport's
  -- ctx.owner, else this text alone (an HTTP request).
  if not (ctx and ctx.owner) then
    ctx = setmetatable({ owner = { n = 0 } }, { __index = ctx })
  end
  if not is_array(v) then
    local req = check_request(v)
    if needs_raw_id(v) and req.id == v.id then use_raw_id(req, raw_ids(text, false)[1]) end
    return respond(req, ctx)
  end
  local n = #v
  if n == 0 then return encode_error(nil, invalid_request("empty batch")) end
  if n > limits.max_batch then
    return encode_error(nil, invalid_request(format("a batch of %d requests, more than %d", n, limits.max_batch)))
  end
  local reqs, raw = {}, nil
  for i = 1, n do
    local req = check_request(v[i])
    if needs_raw_id(v[i]) and req.id == v[i].id then
      raw = raw or raw_ids(text, true)
      use_raw_id(req, raw[i])
    end
    reqs[i] = req
  end
  local out = run_batch(reqs, ctx)
  local list = {}
  for i = 1, n do
    if out[i] then list[#list + 1] = out[i] end
  end
  if #list == 0 then return nil end
  return "[" .. concat(list, ",") .. "]"
end

--- Fails the calls still waiting for client connection `owner` (the
--- ctx.owner it passed to handle) with ECANCELED, and runs M.close_hooks
--- for it: call it when the connection has closed. Returns how many calls.
function M.close(owner)
  if owner then
    for _, hook in ipairs(M.close_hooks) do hook(owner) end
  end
  local mesh = get_mesh()
  if owner and mesh.cancel_calls then return mesh.cancel_calls(owner) end
  return 0
end

return M
