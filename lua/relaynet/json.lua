-- relaynet.json: the JSON codec of relaynet (rn.json), also used by the mesh
-- and JSON-RPC.
--
-- Both directions are C (relaynet.core, csrc/rn_json.c): the mesh decodes and
-- encodes every envelope it receives, forwards or sends, and in Lua (or in
-- Debian's lua-cjson 2.1.0 plus the fix-ups it needs) that cost more than all
-- the rest of a hop.
--
-- Decoding is strict (RFC 8259): UTF-8 text, no raw control characters in
-- strings, the JSON number grammar only, at most MAX_DEPTH levels. Integers
-- that fit in 64 bits decode as Lua integers (cjson would give floats and
-- lose digits past 2^53), and so do integral floats within +-2^53 (1.0, 3e2).
-- Empty arrays decode as json.array tables, so [] and {} stay apart.
--
-- decode(s) -> value | nil, message ("... at character N").
-- encode(v) -> string | nil, message.
-- Neither raises on bad input: text that is not JSON and values JSON cannot
-- hold are operational failures, returned as nil, message.
-- M.null is the JSON null sentinel: decode gives it for null, encode writes
-- it as null. It is a function (compare it with ==, never call it): the C
-- codec takes the sentinel from its caller and matches it by identity among
-- the values that are not tables, strings, numbers or booleans, and a
-- function is such a value that plain Lua can make. An empty Lua table
-- encodes as {} unless it is marked with M.array. Tables are encoded by what
-- they hold themselves: metamethods (__index, __pairs, __len) are not
-- consulted. Nesting is capped at 63 levels whatever MAX_DEPTH says.

local core = require("relaynet.core")

local M = {}

--- The JSON null sentinel (a unique value, never nil, so it survives in tables).
function M.null() end
M.MAX_DEPTH = 32

local array_mt = { __name = "relaynet.json.array" }

--- Marks t as a JSON array (so that an empty table encodes as []).
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

local json_decode, json_encode = core.json_decode, core.json_encode

--- Decodes strict JSON text: value | nil, message.
function M.decode(s)
  if type(s) ~= "string" then return nil, "expected a string" end
  return json_decode(s, M.null, array_mt, M.MAX_DEPTH)
end

-- encoding -------------------------------------------------------------------

-- The encoder is C (relaynet.core.json_encode, csrc/rn_json.c): the mesh
-- encodes every envelope it sends or forwards, and in Lua that cost more than
-- the rest of a hop. Output: integers exact, integral floats within +-2^53
-- as integers, other floats in the shortest form that reads back as the same
-- value, object keys sorted, control characters and DEL escaped; errors
-- (nil, message) for NaN, infinities, cycles, nesting deeper than MAX_DEPTH,
-- and values or keys JSON cannot hold.
function M.encode(v)
  return json_encode(v, M.null, array_mt, M.MAX_DEPTH)
end

return M
