/*
 * relaynet core: the error convention every file uses.
 */
#include "rn.h"

#include <stdarg.h>

/* Errors: operational failures return nil, "CODE: message", "CODE" (misuse
 * raises instead, with luaL_argerror or luaL_error). */
int rn__fail(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  lua_pushstring(L, code);
  lua_pushliteral(L, ": ");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 3);
  lua_pushstring(L, code);
  return 3;
}
