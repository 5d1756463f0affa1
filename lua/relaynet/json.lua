-- relaynet.json: JSON for the mesh and JSON-RPC.
--
-- Decoding uses lua-cjson (fast, with a nesting limit) and then turns every
-- integral float within +-2^53 back into a Lua integer: Debian's lua-cjson
-- decodes 1 as 1.0, which would turn ids and counters into floats.
--
-- Encoding is done here rather than by cjson, whose 2.1.0 release prints at
-- most 14 significant digits (2^53 would come out as 9.007199254741e+15):
-- integers are printed exactly, floats in the shortest form that reads back
-- as the same value.
--
-- decode(s) -> value | nil, message. encode(v) -> string | nil, message.
-- M.null is the JSON null sentinel (cjson.null); an empty Lua table encodes
-- as {} unless it is marked with M.array.

local cjson = require("cjson.safe")

local M = {}

M.null = cjson.null
M.MAX_DEPTH = 32

local array_mt = { __name = "relaynet.json.array" }

--- Marks t as a JSON array (so that an empty table encodes as []).
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

local decoder = cjson.new()
decoder.decode_max_depth(M.MAX_DEPTH)
decoder.decode_invalid_numbers(false)

local TWO53 = 2 ^ 53
local tointeger, mtype = math.tointeger, math.type

local function fix_numbers(v)
  local t = type(v)
  if t == "number" then
    if mtype(v) == "float" and v == v and v >= -TWO53 and v <= TWO53 then
      return tointeger(v) or v
    end
    return v
  elseif t == "table" then
    for k, x in pairs(v) do
      local tx = type(x)
      if tx == "number" or tx == "table" then v[k] = fix_numbers(x) end
    end
  end
  return v
end

function M.decode(s)
  if type(s) ~= "string" then return nil, "expected a string" end
  local v, err = decoder.decode(s)
  if v == nil and err then return nil, err end
  return fix_numbers(v)
end

-- encoding -------------------------------------------------------------------

local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}
for i = 0, 31 do
  local c = string.char(i)
  if not escapes[c] then escapes[c] = string.format("\\u%04x", i) end
end
escapes["\127"] = "\\u007f"

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', escapes) .. '"'
end

local function is_array(t)
  if getmetatable(t) == array_mt then return true, #t end
  local n = #t
  if n == 0 then return next(t) == nil and false, 0 end
  local count = 0
  for k in pairs(t) do
    if mtype(k) ~= "integer" or k < 1 or k > n then return false end
    count = count + 1
  end
  return count == n, n
end

local encode_value

local function encode_table(t, depth, seen)
  if depth > M.MAX_DEPTH then error("nesting deeper than " .. M.MAX_DEPTH, 0) end
  if seen[t] then error("cannot encode a table that contains itself", 0) end
  seen[t] = true
  local out = {}
  local arr, n = is_array(t)
  local s
  if arr or (n == 0 and getmetatable(t) == array_mt) then
    for i = 1, n do out[i] = encode_value(t[i], depth + 1, seen) end
    s = "[" .. table.concat(out, ",") .. "]"
  else
    local keys = {}
    for k in pairs(t) do
      local tk = type(k)
      if tk == "string" then keys[#keys + 1] = k
      elseif tk == "number" then keys[#keys + 1] = k
      else error("cannot encode a table key of type " .. tk, 0) end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for i, k in ipairs(keys) do
      local ks = type(k) == "string" and k or (mtype(k) == "integer" and string.format("%d", k)
        or string.format("%.17g", k))
      out[i] = encode_string(ks) .. ":" .. encode_value(t[k], depth + 1, seen)
    end
    s = "{" .. table.concat(out, ",") .. "}"
  end
  seen[t] = nil
  return s
end

encode_value = function(v, depth, seen)
  local t = type(v)
  if t == "string" then return encode_string(v)
  elseif t == "number" then
    if mtype(v) == "integer" then return string.format("%d", v) end
    if v ~= v or v == math.huge or v == -math.huge then
      error("cannot encode NaN or infinity", 0)
    end
    local i = tointeger(v)
    if i and v >= -TWO53 and v <= TWO53 then return string.format("%d", i) end
    -- the shortest form that reads back as the same float
    for digits = 15, 16 do
      local s = string.format("%." .. digits .. "g", v)
      if tonumber(s) == v then return s end
    end
    return string.format("%.17g", v)
  elseif t == "boolean" then return v and "true" or "false"
  elseif v == nil or v == M.null then return "null"
  elseif t == "table" then return encode_table(v, depth, seen)
  end
  error("cannot encode a value of type " .. t, 0)
end

function M.encode(v)
  local ok, s = pcall(encode_value, v, 0, {})
  if not ok then return nil, s end
  return s
end

return M
