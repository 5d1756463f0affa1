-- relaynet.json: JSON for the mesh and JSON-RPC.
--
-- Decoding uses lua-cjson (fast, with a nesting limit) and then turns every
-- integral float within +-2^53 back into a Lua integer: Debian's lua-cjson
-- decodes 1 as 1.0, which would turn ids and counters into floats.
--
-- Encoding is done by relaynet's C core rather than by cjson, whose 2.1.0
-- release prints at most 14 significant digits (2^53 would come out as
-- 9.007199254741e+15): integers are printed exactly, floats in the shortest
-- form that reads back as the same value.
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

local find, match, sub, byte, format = string.find, string.match, string.sub, string.byte, string.format

-- cjson decodes [] and {} to the same empty table. A raw 0xFF byte cannot
-- occur in valid UTF-8 text, so this marker cannot collide with input.
local EMPTY = "\255relaynet.json:empty-array"
local EMPTY_JSON = '["' .. EMPTY .. '"]'

-- One pass over the text's tokens: rejects raw control characters inside
-- strings (strict JSON) and rewrites each empty array `[ ]` as EMPTY_JSON so
-- it can be told from `{}` after decoding. Returns the text to decode and
-- whether it rewrote anything, or nil, message.
local function prescan(text)
  -- The common case, checked by two scans in C: no control character at all
  -- (so none inside a string) and nothing that looks like an empty array.
  if not find(text, "[%z\1-\31]") and not find(text, "%[[ \t\n\r]*%]") then
    return text, false
  end
  local parts, np, last = nil, 0, 1
  local pos = 1
  while true do
    local s = find(text, '["%[]', pos)
    if not s then break end
    if byte(text, s) == 34 then -- a string: find its end
      local p = s + 1
      while true do
        p = match(text, '^[^"\\%z\1-\31]*()', p)
        local b = p and byte(text, p)
        if b == 34 then break
        elseif b == 92 then p = p + 2
        elseif b == nil then p = nil; break -- unterminated: cjson reports it
        else return nil, format("raw control character in a string at character %d", p) end
      end
      if not p then break end
      pos = p + 1
    else
      local e = match(text, "^[ \t\n\r]*%]()", s + 1)
      if e then
        parts = parts or {}
        parts[np + 1] = sub(text, last, s - 1)
        parts[np + 2] = EMPTY_JSON
        np = np + 2
        last = e
        pos = e
      else
        pos = s + 1
      end
    end
  end
  if not parts then return text, false end
  parts[np + 1] = sub(text, last)
  return table.concat(parts), true
end

local decoder = cjson.new()
decoder.decode_max_depth(M.MAX_DEPTH)
decoder.decode_invalid_numbers(false)

local TWO53 = 2 ^ 53
local tointeger, mtype = math.tointeger, math.type

-- Turns integral floats back into integers and the empty-array markers into
-- json.array tables.
local function fix(v)
  local t = type(v)
  if t == "number" then
    if mtype(v) == "float" and v == v and v >= -TWO53 and v <= TWO53 then
      return tointeger(v) or v
    end
    return v
  elseif t == "table" then
    if v[1] == EMPTY and v[2] == nil then return M.array() end
    for k, x in pairs(v) do
      local tx = type(x)
      if tx == "number" or tx == "table" then v[k] = fix(x) end
    end
  end
  return v
end

--- Decodes strict JSON text (UTF-8, no raw control characters in strings,
--- at most MAX_DEPTH levels): value | nil, message. Empty arrays come back
--- as json.array tables, so they encode as [] again.
function M.decode(s)
  if type(s) ~= "string" then return nil, "expected a string" end
  if not utf8.len(s) then return nil, "the text is not valid UTF-8" end
  local src, rewritten = prescan(s)
  if not src then return nil, rewritten end
  local v, err = decoder.decode(src)
  if v == nil and err then
    if rewritten then -- report positions in the text as sent
      local _, oerr = decoder.decode(s)
      err = oerr or err
    end
    return nil, err
  end
  return fix(v)
end

-- encoding -------------------------------------------------------------------

-- The encoder is C (relaynet.core.json_encode, csrc/rn_json.c): the mesh
-- encodes every envelope it sends or forwards, and in Lua that cost more than
-- the rest of a hop. Output: integers exact, integral floats within +-2^53
-- as integers, other floats in the shortest form that reads back as the same
-- value, object keys sorted, control characters and DEL escaped; errors
-- (nil, message) for NaN, infinities, cycles, nesting deeper than MAX_DEPTH,
-- and values or keys JSON cannot hold.
local json_encode = require("relaynet.core").json_encode

function M.encode(v)
  return json_encode(v, M.null, array_mt, M.MAX_DEPTH)
end

return M
