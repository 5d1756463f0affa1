/* libFuzzer harness: encode(decode(x)) round trip through core.json_decode
 * and core.json_encode (csrc/rn_json.c).
 *
 * For every input that decodes: v1 = decode(x); e1 = encode(v1) must succeed
 * (whatever the decoder accepts, the encoder can write: no infinities, no
 * depth it refuses); v2 = decode(e1) must succeed and be deeply equal to v1
 * (same types, math.type included except for integral floats beyond
 * +-2^53, which are written without a fraction and read back as integers
 * when they fit in 64 bits; same keys, same array marker, the null
 * sentinel in the same places); e2 = encode(v2) must be byte-equal to e1.
 * A violation aborts with the input's encodings: a finding. */
#include <stdint.h>
#include <string.h>
#include "fuzz_lua.h"

static lua_State *L;
static int check_ref;

static const char setup[] =
  "local core = require('relaynet.core')\n"
  "local null, array_mt = JSON_NULL, {__name = 'relaynet.json.array'}\n"
  "local decode, encode = core.json_decode, core.json_encode\n"
  "local D = 32\n"
  "local function same(a, b, path)\n"
  "  if type(a) ~= type(b) then return false, path .. ': ' .. type(a) .. ' vs ' .. type(b) end\n"
  "  if type(a) == 'number' then\n"
  "    -- An integral float beyond +-2^53 is written without a fraction and\n"
  "    -- reads back as an integer when it fits in 64 bits (documented in\n"
  "    -- relaynet/json.lua): same value, another math.type.\n"
  "    local big = math.abs(a) >= 2^53 and a == math.floor(a)\n"
  "    if math.type(a) ~= math.type(b) and not big then return false, path .. ': ' .. math.type(a) .. ' vs ' .. math.type(b) end\n"
  "    if a ~= b then return false, path .. ': ' .. string.format('%.17g vs %.17g', a, b) end\n"
  "    if a == 0 and math.type(a) == 'float' and (1 / a) ~= (1 / b) then return false, path .. ': signed zero' end\n"
  "    return true\n"
  "  end\n"
  "  if type(a) ~= 'table' then\n"
  "    if a == b then return true end\n"
  "    return false, path .. ': ' .. tostring(a) .. ' vs ' .. tostring(b)\n"
  "  end\n"
  "  if (getmetatable(a) == array_mt) ~= (getmetatable(b) == array_mt) then return false, path .. ': array marker' end\n"
  "  for k, va in next, a do\n"
  "    local ok, why = same(va, rawget(b, k), path .. '.' .. tostring(k))\n"
  "    if not ok then return false, why end\n"
  "  end\n"
  "  for k in next, b do\n"
  "    if rawget(a, k) == nil then return false, path .. '.' .. tostring(k) .. ': only in the second' end\n"
  "  end\n"
  "  return true\n"
  "end\n"
  "return function(x)\n"
  "  local v1 = decode(x, null, array_mt, D)\n"
  "  if v1 == nil then return end\n"
  "  local e1, err = encode(v1, null, array_mt, D)\n"
  "  if not e1 then error('encode(decode(x)) failed: ' .. tostring(err)) end\n"
  "  local v2, err2 = decode(e1, null, array_mt, D)\n"
  "  if v2 == nil then error('decode(encode(v)) failed: ' .. tostring(err2) .. ' on ' .. e1) end\n"
  "  local ok, why = same(v1, v2, '$')\n"
  "  if not ok then error('decode(encode(v)) differs at ' .. why .. ' (' .. e1 .. ')') end\n"
  "  local e2 = encode(v2, null, array_mt, D)\n"
  "  if e2 ~= e1 then error('encode is not stable: ' .. e1 .. ' then ' .. tostring(e2)) end\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *co;
  if (!L) {
    L = rn_fuzz_state(setup, 1);
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  co = lua_newthread(L); /* a fresh, minimal stack per input (see json_decode.c) */
  lua_rawgeti(co, LUA_REGISTRYINDEX, check_ref);
  lua_pushlstring(co, (const char *)data, size);
  if (lua_pcall(co, 1, 0, 0) != LUA_OK)
    rn_fuzz_die(co, "json_roundtrip");
  lua_pop(L, 1);
  {
    static unsigned n;
    if (++n % 64 == 0)
      lua_gc(L, LUA_GCCOLLECT);
  }
  return 0;
}
