/* libFuzzer harness: core.json_decode (csrc/rn_json.c) on arbitrary bytes.
 *
 * Contract checked: for any input the decoder returns either one value, or
 * nil and a string message; it never crashes, never trips ASan/UBSan, and
 * leaves the Lua stack balanced. Every input is decoded twice: with the
 * default depth (32, what relaynet.json uses) and with the hard cap (63). */
#include <stdint.h>
#include <string.h>
#include "fuzz_lua.h"

static lua_State *L;
static int decode_ref;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const int depths[2] = {32, 1000};
  int i;
  if (!L) {
    L = rn_fuzz_state(
      "local core = require('relaynet.core')\n"
      "local null, array_mt = JSON_NULL, {__name = 'relaynet.json.array'}\n"
      "local decode = core.json_decode\n"
      "return function(s, depth)\n"
      "  local v, err = decode(s, null, array_mt, depth)\n"
      "  if v == nil then assert(type(err) == 'string', 'no message') end\n"
      "  return v, err\n"
      "end\n", 1);
    decode_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  for (i = 0; i < 2; i++) {
    /* A fresh coroutine per call, as the runtime runs handlers: its stack
     * starts at the minimum size, so stack reallocations inside the decoder
     * happen at the same input positions on every run. */
    lua_State *co = lua_newthread(L);
    lua_rawgeti(co, LUA_REGISTRYINDEX, decode_ref);
    lua_pushlstring(co, (const char *)data, size);
    lua_pushinteger(co, depths[i]);
    if (lua_pcall(co, 2, 2, 0) != LUA_OK)
      rn_fuzz_die(co, "json_decode");
    lua_pop(L, 1);
  }
  /* A full collection now and then, so freed boxes and strings are reused
   * (and use-after-free shows) instead of piling up. */
  {
    static unsigned n;
    if (++n % 64 == 0)
      lua_gc(L, LUA_GCCOLLECT);
  }
  return 0;
}
